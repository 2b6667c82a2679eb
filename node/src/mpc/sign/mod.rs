//! FROST threshold signing: the driver of the I/O-free [`core`]. The node asked to sign
//! coordinates: it invites `t - 1` other key holders (replacing at once any it cannot reach,
//! and inviting every holder left when some are slow to answer), takes the first `t - 1`
//! commitments, runs round 2 with them, and aggregates with cheater detection (the frost
//! crate returns the signature only once it verifies against the group key). Holders that
//! answered but were not chosen get `SignDismissed` and drop their nonces. When enough
//! holders have presignatures for this node ([`pool`], [`presigned`]), it sends them the
//! signing package at once instead: one round trip. This file does the sends, deadlines,
//! retries and logs; every check of a protocol message and every FROST step is in [`core`].
//! Nonces live only in memory (a session task's, or a holder's pool) and sign once; a
//! finished session refuses every further message.

pub mod core;
pub mod pool;
pub mod presigned;

use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use std::sync::Arc;

use self::core::{Collecting, Coordinator, Signer};
use super::admission::{Admitted, KeyVersion};
use super::policy::Authorization;
use super::scheme::{Share, Suite};
use super::session::{SessionError, SessionInbox, join_peers};
use super::store::StoredKey;
use super::wire::{Body, PoolEpoch, Protocol, SessionId};
use super::{InviteRefusal, MpcEngine, MpcError, parse_peers, unreachable_error};
use crate::mpc::transport::MpcSendError;

/// What the coordinator of one signature works with.
struct Coordination {
    key: Arc<StoredKey>,
    /// Every holder of the key, this node included.
    holders: Vec<PeerId>,
    /// The holders other than this node.
    others: Vec<PeerId>,
    message: Vec<u8>,
    authorizations: Vec<Authorization>,
    session: SessionId,
}

/// What a presigned attempt sends, and how long it waits for the holders to take it.
struct PresignedAttempt<'a> {
    key: &'a StoredKey,
    message: &'a [u8],
    authorizations: &'a [Authorization],
    session: SessionId,
    wait: std::time::Duration,
}

/// How a presigned attempt ended on the coordinator.
enum Attempt<C: Suite> {
    /// Every chosen holder took the package; this node signed it: collect the shares.
    Signing(Collecting<C>, Vec<(PeerId, Body)>),
    /// Some did not: back to two rounds with this node's unused nonces, without the holders
    /// that `failed` (kept as failures) or `took` the package (a holder that only lacked the
    /// presignature is in neither).
    TwoRounds {
        core: Coordinator<C>,
        failed: Vec<(PeerId, MpcSendError)>,
        took: Vec<PeerId>,
    },
}

/// A holder's signing round 2: signs the coordinator's package once.
type SignRound2 = Box<dyn FnOnce(&[u8]) -> Result<Vec<u8>, SessionError> + Send>;

/// A verified group signature.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignResponse {
    pub key_id: String,
    /// 64 bytes (R || s), hex: a standard Ed25519 signature.
    pub signature: String,
    /// Group public key, hex.
    pub public_key: String,
    /// Peer ids of the participants whose shares made the signature, sorted.
    pub signers: Vec<String>,
    pub session_id: String,
}

impl MpcEngine {
    /// Signs `message` with key `key_id`, coordinating the signers, once the key's policy
    /// accepts `authorizations` here (and then on every signer, each for itself).
    pub async fn sign(
        &self,
        key_id: &str,
        message: Vec<u8>,
        authorizations: Vec<Authorization>,
    ) -> Result<SignResponse, MpcError> {
        let key = self
            .inner
            .store
            .get(key_id)
            .ok_or_else(|| MpcError::UnknownKey(key_id.to_string()))?;
        // The request ids are on disk before round 1 can start: `round1` needs the token.
        let admitted = self
            .admit_signing(&key.info, &message, &authorizations)?
            .persist()
            .await?;
        let local = self.inner.local;
        let holders = parse_peers(&key.info.participants).map_err(MpcError::Internal)?;
        let others: Vec<PeerId> = holders.iter().filter(|p| **p != local).copied().collect();
        let session = SessionId::random();
        let inbox = self
            .inner
            .router
            .open(session, Protocol::Sign, others.clone())
            .map_err(|error| MpcError::Session { session, error })?;
        let engine = self.clone();
        let request = Coordination {
            key: key.clone(),
            holders,
            others: others.clone(),
            message,
            authorizations,
            session,
        };
        let run = async move {
            crate::with_share!(&key.share, share => engine.coordinate(share, admitted, request, inbox).await)
        };
        self.run_session(Protocol::Sign, "coordinator", session, others, run)
            .await
            .map_err(|error| MpcError::Session { session, error })
    }

    /// The coordinator's side of one signature with `share`, the key's share.
    async fn coordinate<C: Suite>(
        &self,
        share: &Share<C>,
        admitted: Admitted,
        request: Coordination,
        mut inbox: SessionInbox,
    ) -> Result<SignResponse, SessionError> {
        let Coordination {
            key,
            holders,
            others,
            message,
            authorizations,
            session,
        } = request;
        let engine = self;
        let local = self.inner.local;
        let timeout = self.inner.round_timeout;
        let mut core = Coordinator::start(admitted, share, &holders, local, message.clone())?;
        // The share's own threshold (the key file's `threshold` is checked against it at load).
        let needed = core.needed();

        // Round 1: invite `needed` holders (where the list starts rotates with the session,
        // spreading the work); a holder that cannot be reached is replaced at once, and when
        // some are slow to answer, every holder left is invited and the first to answer sign.
        let start = usize::from(session.0[0]) % others.len().max(1);
        let mut candidates: std::collections::VecDeque<PeerId> = others[start..]
            .iter()
            .chain(&others[..start])
            .copied()
            .collect();
        // One round trip when enough holders connected now have a presignature for this node
        // (a holder that just went away takes its pool with it), and when, should one of the
        // chosen fail, the holders left out could replace all of them (those that took the
        // package cannot be asked again: they spent the request's ids). With no holder to
        // spare (n = t) every holder signs in either path.
        let spare = others.len().saturating_sub(needed);
        let may_presign = spare == 0 || spare >= needed;
        let presigned = match may_presign && engine.presigned_available(&key.info.key_id, needed) {
            true => {
                let connected = engine.inner.network.mpc_peers().await.unwrap_or_default();
                let in_order: Vec<PeerId> = candidates
                    .iter()
                    .filter(|p| connected.contains(p))
                    .copied()
                    .collect();
                engine.take_presigned(&key.info.key_id, &in_order, needed)
            }
            false => None,
        };
        // Holders that refused the presigned request or did not answer it in time are not
        // invited again (they count as failures); those that took it are not either (they
        // spent their request ids and nonces on a package this node never signed).
        let mut failures: Vec<(PeerId, MpcSendError)> = Vec::new();
        if let Some(presigned) = presigned {
            // With holders to spare, a slow one is left out soon, as in two rounds; with none,
            // it has the whole round.
            let wait = if spare == 0 { timeout } else { timeout / 5 };
            let request = PresignedAttempt {
                key: &key,
                message: &message,
                authorizations: &authorizations,
                session,
                wait,
            };
            let attempt = self.try_presigned(core, presigned, request).await?;
            match attempt {
                Attempt::Signing(collecting, requests) => {
                    let response = self
                        .finish(&mut inbox, collecting, &key, session, requests)
                        .await?;
                    self.signed(&key, &others, "presigned");
                    return Ok(response);
                }
                Attempt::TwoRounds {
                    core: back,
                    failed,
                    took,
                } => {
                    core = back;
                    candidates.retain(|p| !took.contains(p) && !failed.iter().any(|(f, _)| f == p));
                    failures = failed;
                }
            }
        }
        let invite = Body::SignInvite {
            key_id: key.info.key_id.clone(),
            message: message.clone(),
            authorizations,
            policy: key.info.policy_stamp(),
            generation: key.info.generation,
        };
        // Invitations go out in the background: a holder that is slow to acknowledge
        // (or frozen) holds up nobody; one that cannot be reached is reported here.
        let (failed_tx, mut failed_rx) = tokio::sync::mpsc::unbounded_channel();
        let invite_one = |peer: PeerId| {
            let (engine, invite, failed_tx) = (engine.clone(), invite.clone(), failed_tx.clone());
            tokio::spawn(async move {
                if let Err(e) = engine.send(peer, session, invite).await {
                    let _ = failed_tx.send((peer, e));
                }
            });
        };
        let mut waiting: Vec<PeerId> = Vec::new();
        for peer in candidates.drain(..needed.min(candidates.len())) {
            invite_one(peer);
            waiting.push(peer);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let straggler_deadline = tokio::time::Instant::now() + timeout / 5;
        let mut committed: Vec<PeerId> = Vec::new();
        while !core.ready() {
            let pending: Vec<PeerId> = waiting
                .iter()
                .filter(|p| !committed.contains(p))
                .copied()
                .collect();
            if pending.len() + committed.len() < needed {
                // A holder could not be reached: invite the next one in its place.
                if let Some(peer) = candidates.pop_front() {
                    invite_one(peer);
                    waiting.push(peer);
                    continue;
                }
            }
            if pending.len() + committed.len() < needed && pending.is_empty() {
                // Holders that refused by the key's policy are not "unreachable": the
                // caller hears which rule refused and who refused it.
                if let Some(refused) = SessionError::refused_by_holders(&failures) {
                    return Err(refused);
                }
                let missing: Vec<PeerId> = failures.iter().map(|(p, _)| *p).collect();
                return Err(SessionError::blame(
                    missing.clone(),
                    format!(
                        "signing needs {} participants (threshold) but only {} are reachable; unreachable participants: {} ({})",
                        key.info.threshold,
                        others.len() - missing.len() + 1,
                        join_peers(&missing),
                        failures
                            .iter()
                            .map(|(_, e)| e.to_string())
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                ));
            }
            let widen_at = (!candidates.is_empty()).then_some(straggler_deadline.min(deadline));
            let wait_until = widen_at.unwrap_or(deadline);
            tokio::select! {
                next = inbox.next_of("sign round 1", &pending, wait_until, |b| match b {
                    Body::SignCommitments { commitments } => Some(commitments.clone()),
                    _ => None,
                }) => match next {
                    Ok((peer, c)) => {
                        if core.commitments(peer, &c)? {
                            committed.push(peer);
                        }
                    }
                    // Slow holders: invite every holder left as well.
                    Err(_) if widen_at.is_some() && tokio::time::Instant::now() >= wait_until => {
                        for peer in candidates.drain(..) {
                            invite_one(peer);
                            waiting.push(peer);
                        }
                    }
                    // An abort, or the deadline.
                    Err(e) => return Err(e),
                },
                Some((peer, e)) = failed_rx.recv() => {
                    waiting.retain(|p| *p != peer);
                    failures.push((peer, e));
                    engine.catch_up_from_refusers(&key.info.key_id, &failures[failures.len() - 1..]);
                }
            }
        }
        engine.record_nonce(&core.own_commitments());
        let (collecting, package) = core.round2()?;
        let chosen: Vec<PeerId> = collecting.chosen().to_vec();
        // Holders invited but not chosen are told to discard their nonces; their late
        // commitments still reach the session and are ignored there.
        let not_chosen: Vec<PeerId> = waiting
            .iter()
            .filter(|p| !chosen.contains(p))
            .copied()
            .collect();
        if !not_chosen.is_empty() {
            let engine = engine.clone();
            tokio::spawn(async move {
                let _ = engine
                    .broadcast(&not_chosen, session, &Body::SignDismissed)
                    .await;
            });
        }
        let round2 = Body::SignRound2 {
            signing_package: package,
        };
        engine
            .broadcast_round(&mut inbox, &chosen, &round2, "the signing round 2 request")
            .await?;
        let replay = chosen.iter().map(|p| (*p, round2.clone())).collect();
        let response = self
            .finish(&mut inbox, collecting, &key, session, replay)
            .await?;
        self.signed(&key, &others, "two_round");
        Ok(response)
    }

    /// After a signature with `key` made by `path` (`presigned`, `two_round`): counts it and
    /// refills the presignatures of the other holders that run low.
    fn signed(&self, key: &Arc<StoredKey>, others: &[PeerId], path: &str) {
        self.inner
            .metrics
            .signatures
            .with_label_values(&[path])
            .inc();
        self.refill_presignatures(key, others);
    }

    /// A presigned attempt of the coordinator: `presigned` holds one presignature of each of
    /// the holders chosen. The package goes to each; when every one took it (within
    /// `request.wait`), this node signs it too. Otherwise the package is given up (this node
    /// never signed it) and the signature goes on in two rounds; the pools of the holders
    /// that did not take it are forgotten here.
    async fn try_presigned<C: Suite>(
        &self,
        core: Coordinator<C>,
        presigned: Vec<(PeerId, PoolEpoch, Vec<u8>)>,
        request: PresignedAttempt<'_>,
    ) -> Result<Attempt<C>, SessionError> {
        let PresignedAttempt {
            key,
            message,
            authorizations,
            session,
            wait,
        } = request;
        let key_id = &key.info.key_id;
        let sets: Vec<(PeerId, Vec<u8>)> =
            presigned.iter().map(|(p, _, c)| (*p, c.clone())).collect();
        let attempt = match core.presigned(&sets) {
            Ok(attempt) => attempt,
            Err(back) => {
                let (core, e) = *back;
                warn!(%key_id, error = %e, "presignatures not usable; signing in two rounds");
                for (peer, _) in &sets {
                    self.forget_presigned(key_id, peer);
                }
                return Ok(Attempt::TwoRounds {
                    core,
                    failed: Vec::new(),
                    took: Vec::new(),
                });
            }
        };
        let requests: Vec<(PeerId, Body)> = presigned
            .iter()
            .map(|(peer, epoch, _)| {
                let body = Body::SignPresigned {
                    key_id: key_id.clone(),
                    message: message.to_vec(),
                    authorizations: authorizations.to_vec(),
                    policy: key.info.policy_stamp(),
                    generation: key.info.generation,
                    epoch: *epoch,
                    signing_package: attempt.package().to_vec(),
                };
                (*peer, body)
            })
            .collect();
        let sends = requests.iter().map(|(peer, body)| async move {
            match tokio::time::timeout(wait, self.send(*peer, session, body.clone())).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some((*peer, e)),
                Err(_) => Some((
                    *peer,
                    MpcSendError::Unreachable {
                        peer: *peer,
                        message: format!("no answer to the presigned request within {wait:?}"),
                    },
                )),
            }
        });
        let failures: Vec<(PeerId, MpcSendError)> = futures::future::join_all(sends)
            .await
            .into_iter()
            .flatten()
            .collect();
        if failures.is_empty() {
            self.record_nonce(&attempt.own_commitments());
            let (collecting, _) = attempt.round2()?;
            return Ok(Attempt::Signing(collecting, requests));
        }
        for (peer, e) in &failures {
            debug!(%peer, %key_id, error = %e, "presigned request not taken; signing in two rounds");
            self.forget_presigned(key_id, peer);
        }
        self.catch_up_from_refusers(key_id, &failures);
        let took = sets
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| !failures.iter().any(|(f, _)| f == p))
            .collect();
        // A holder that no longer had the presignature reserved nothing: it may be invited
        // in two rounds like any other.
        let failed = failures
            .into_iter()
            .filter(|(_, e)| {
                !matches!(e, MpcSendError::Refused { rule, .. } if rule == crate::mpc::NO_PRESIGNATURE)
            })
            .collect();
        Ok(Attempt::TwoRounds {
            core: attempt.abandon(),
            failed,
            took,
        })
    }

    /// Collects the chosen signers' shares and answers with the verified signature.
    async fn finish<C: Suite>(
        &self,
        inbox: &mut SessionInbox,
        mut collecting: Collecting<C>,
        key: &StoredKey,
        session: SessionId,
        replay: Vec<(PeerId, Body)>,
    ) -> Result<SignResponse, SessionError> {
        let local = self.inner.local;
        let chosen: Vec<PeerId> = collecting.chosen().to_vec();
        let deadline = tokio::time::Instant::now() + self.inner.round_timeout;
        let signature = loop {
            let (peer, share) = inbox
                .next_of(
                    "sign round 2 share",
                    &collecting.missing(),
                    deadline,
                    |b| match b {
                        Body::SignShare { share } => Some(share.clone()),
                        _ => None,
                    },
                )
                .await?;
            if let Some(signature) = collecting.share(peer, &share)? {
                break signature;
            }
        };
        if self.inner.faults.replay_sign_round2 {
            self.replay(replay, session).await;
        }
        let mut signers: Vec<String> = chosen
            .iter()
            .chain([&local])
            .map(ToString::to_string)
            .collect();
        signers.sort();
        info!(key_id = %key.info.key_id, signers = %signers.join(","), "signature made and verified");
        Ok(SignResponse {
            key_id: key.info.key_id.clone(),
            signature: hex::encode(signature),
            public_key: key.info.public_key.clone(),
            signers,
            session_id: session.to_string(),
        })
    }

    /// Answers a signing invitation: commits, and signs once if chosen.
    pub(super) fn join_signing(
        &self,
        session: SessionId,
        coordinator: PeerId,
        key_id: String,
        version: KeyVersion,
        message: Vec<u8>,
        authorizations: Vec<Authorization>,
    ) -> Result<(), InviteRefusal> {
        let local = self.inner.local;
        // This holder's own admission, whatever the coordinator decided.
        let (key, admission) =
            self.admit_sign_invite(coordinator, &key_id, version, &message, &authorizations)?;
        if self.inner.faults.front_run_signing {
            self.front_run(key_id.clone(), message.clone(), authorizations);
        }
        let timeout = self.inner.round_timeout;
        // Only the coordinator may talk to this side of a signing session.
        self.spawn_participant(Protocol::Sign, session, vec![coordinator], move |engine, mut inbox| async move {
                if engine.inner.faults.intrude_signing {
                    engine.intrude(&key.info.participants, coordinator, session).await;
                }
                    // The request ids are on disk before this holder commits to anything.
                    let admitted = engine.admitted_in_force(admission, &key_id, version.stamp).await?;
                    // Round 1 with the key's ciphersuite; round 2 is what the signer does
                    // with the package, whatever the scheme.
                    let (signer, bytes): (SignRound2, Vec<u8>) = crate::with_share!(&key.share, share => {
                        let (signer, bytes) =
                            Signer::round1(admitted, share, &local, coordinator, message)?;
                        let recorder = engine.clone();
                        (Box::new(move |package: &[u8]| {
                            recorder.record_nonce(&signer.commitments());
                            signer.round2(package)
                        }), bytes)
                    });
                    match engine
                        .send(coordinator, session, Body::SignCommitments { commitments: bytes })
                        .await
                    {
                        Ok(()) => {}
                        // The coordinator already has its signers (this holder was too slow).
                        Err(MpcSendError::Rejected { .. } | MpcSendError::Finished { .. }) => {
                            debug!("commitments refused by the coordinator; not a signer this time");
                            return Ok(());
                        }
                        Err(e) => return Err(unreachable_error(vec![(coordinator, e)], "commitments")),
                    }
                    // Chosen signers wait for round 2; the coordinator first delivers every
                    // invitation and collects the others' commitments.
                    let request = inbox
                        .collect("sign round 2 request", &[coordinator], timeout * 3, |b| match b {
                            Body::SignRound2 { signing_package } => Some(Some(signing_package.clone())),
                            Body::SignDismissed => Some(None),
                            _ => None,
                        })
                        .await?;
                    let Some(package) = request.into_values().next().flatten() else {
                        debug!("not chosen as a signer; nonces discarded");
                        return Ok(());
                    };
                    // The nonces are spent by this one round 2, whatever its outcome; from
                    // now on this session refuses every message, a replayed request included.
                    let share = signer(&package);
                    engine.inner.router.close(session);
                    let share = engine.corrupt_if_asked(share?);
                    engine
                        .send(coordinator, session, Body::SignShare { share })
                        .await
                        .map_err(|e| unreachable_error(vec![(coordinator, e)], "the signature share"))?;
                    Ok(())
        })
    }

    /// Test-only (`corrupt-signature-share`): a share that decodes but is wrong (a bit in the
    /// middle of the scalar, far from the bits that could make it non-canonical).
    fn corrupt_if_asked(&self, mut share: Vec<u8>) -> Vec<u8> {
        if self.inner.faults.corrupt_signature_share {
            let middle = share.len() / 2;
            if let Some(b) = share.get_mut(middle) {
                *b ^= 1;
            }
        }
        share
    }

    /// Test-only (`replay-sign-round2`): sends each signer's round-2 request again and logs
    /// each answer.
    async fn replay(&self, requests: Vec<(PeerId, Body)>, session: SessionId) {
        for (peer, request) in requests {
            match self.send(peer, session, request).await {
                Err(
                    MpcSendError::Finished { reason, .. } | MpcSendError::Rejected { reason, .. },
                ) => {
                    info!(%peer, %reason, "test fault: replayed round-2 request refused")
                }
                other => {
                    warn!(%peer, result = ?other, "test fault: replayed round-2 request ACCEPTED")
                }
            }
        }
    }

    /// Test-only (`front-run-signing`): coordinates a signature of its own with the
    /// authorizations this holder received as a participant, and logs how it ended.
    fn front_run(&self, key_id: String, message: Vec<u8>, authorizations: Vec<Authorization>) {
        let engine = self.clone();
        tokio::spawn(async move {
            match engine.sign(&key_id, message, authorizations).await {
                Ok(_) => warn!("test fault: front-running signature SUCCEEDED"),
                Err(e) => info!(error = %e, "test fault: front-running signature refused"),
            }
        });
    }

    /// Test-only (`intrude-signing`): forged messages for `session` to key holders that
    /// are not its participants on their side.
    async fn intrude(&self, holders: &[String], coordinator: PeerId, session: SessionId) {
        let local = self.inner.local;
        let targets: Vec<PeerId> = parse_peers(holders)
            .unwrap_or_default()
            .into_iter()
            .filter(|p| *p != local && *p != coordinator)
            .collect();
        let forged = Body::SignRound2 {
            signing_package: vec![0; 16],
        };
        let refused = self.broadcast(&targets, session, &forged).await;
        info!(
            targets = targets.len(),
            refused = refused.len(),
            "test fault: sent forged signing messages"
        );
    }
}
