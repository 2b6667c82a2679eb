//! FROST distributed key generation: parts 1–3 with an echo round after part 1 and a
//! confirmation round after part 3. A key is stored only when every participant confirmed
//! the same group key. The rounds and every check of what arrives are in [`core`]; this
//! module is the driver (invitations, sends, deadlines, storage).

pub mod core;

use std::collections::BTreeSet;

use libp2p::PeerId;
use tracing::{debug, info, warn};

use super::policy::SigningPolicy;
use super::scheme::{Scheme, Suite};
use super::session::{SessionError, SessionInbox};
use super::store::{KeyInfo, StoredKey};
use super::wire::{Blob, Body, Protocol, SessionId};
use super::{MpcEngine, MpcError, frost_identifier, parse_peers, unreachable_error};

/// A DKG request (the body of `POST /v1/keys`, participants resolved).
#[derive(Debug, Clone)]
pub struct DkgRequest {
    /// The signature scheme of the new key.
    pub scheme: Scheme,
    pub threshold: u16,
    /// Every participant, this node included.
    pub participants: Vec<PeerId>,
    /// The key's signing policy (normalized).
    pub policy: SigningPolicy,
}

/// What a `DkgInvite` asks of this node.
pub(super) struct DkgInvitation {
    pub key_id: String,
    pub scheme: Scheme,
    pub threshold: u16,
    pub participants: Vec<String>,
    pub policy: Blob,
}

/// The parameters every participant of one DKG agrees on.
struct DkgParams {
    key_id: String,
    coordinator: PeerId,
    scheme: Scheme,
    threshold: u16,
    /// Sorted, unique, this node included.
    participants: Vec<PeerId>,
    policy: SigningPolicy,
}

/// Checks threshold and participants; returns them sorted.
pub fn check_params(
    local: PeerId,
    threshold: u16,
    participants: &[PeerId],
) -> Result<Vec<PeerId>, String> {
    let mut seen = BTreeSet::new();
    for p in participants {
        if !seen.insert(*p) {
            return Err(format!("participant {p} is listed twice"));
        }
    }
    if !seen.contains(&local) {
        return Err(format!(
            "this node ({local}) must be one of the participants"
        ));
    }
    let n = seen.len();
    if threshold < 2 {
        return Err(format!(
            "threshold {threshold} is too small: it must be at least 2"
        ));
    }
    if usize::from(threshold) > n {
        return Err(format!(
            "threshold {threshold} is larger than the number of participants ({n})"
        ));
    }
    if n > 255 {
        return Err(format!("{n} participants are too many (at most 255)"));
    }
    Ok(seen.into_iter().collect())
}

impl MpcEngine {
    /// Coordinates a DKG among `request.participants` and returns the new key's metadata.
    pub async fn create_key(&self, request: DkgRequest) -> Result<KeyInfo, MpcError> {
        let local = self.inner.local;
        let participants = check_params(local, request.threshold, &request.participants)
            .map_err(MpcError::BadRequest)?;
        self.check_key_cap(&local).map_err(MpcError::Limit)?;
        self.inner
            .roster
            .check_all(&participants)
            .map_err(|m| MpcError::BadRequest(format!("participants {m}")))?;
        let unconnected = self
            .unconnected(&participants)
            .await
            .map_err(|e| MpcError::Internal(e.to_string()))?;
        if let Some(message) = unconnected {
            return Err(MpcError::BadRequest(message));
        }
        let session = SessionId::random();
        let params = DkgParams {
            key_id: SessionId::random().to_string(),
            coordinator: local,
            scheme: request.scheme,
            threshold: request.threshold,
            participants,
            policy: request
                .policy
                .normalized()
                .map_err(|m| MpcError::BadRequest(format!("policy: {m}")))?,
        };
        let others: Vec<PeerId> = params
            .participants
            .iter()
            .filter(|p| **p != local)
            .copied()
            .collect();
        let mut inbox = self
            .inner
            .router
            .open(session, Protocol::Dkg, others.clone())
            .map_err(|error| MpcError::Session { session, error })?;
        let engine = self.clone();
        let invite = Body::DkgInvite {
            key_id: params.key_id.clone(),
            scheme: params.scheme,
            threshold: params.threshold,
            participants: params
                .participants
                .iter()
                .map(ToString::to_string)
                .collect(),
            policy: Blob(params.policy.to_bytes().into()),
        };
        let others2 = others.clone();
        let run = async move {
            engine
                .broadcast_round(&mut inbox, &others2, &invite, "the DKG invitation")
                .await?;
            crate::with_suite!(params.scheme, C => engine.run_dkg::<C>(inbox, params).await)
        };
        self.run_session(Protocol::Dkg, "coordinator", session, others, run)
            .await
            .map_err(|error| MpcError::Session { session, error })
    }

    /// Answers a DKG invitation: checks it and runs the DKG in its own task.
    pub(super) fn join_dkg(
        &self,
        session: SessionId,
        from: PeerId,
        invitation: DkgInvitation,
    ) -> Result<(), String> {
        let DkgInvitation {
            key_id,
            scheme,
            threshold,
            participants,
            policy,
        } = invitation;
        let local = self.inner.local;
        let policy = SigningPolicy::from_bytes(&policy.0)?;
        let peers = parse_peers(&participants)?;
        let participants = check_params(local, threshold, &peers)?;
        if !participants.contains(&from) {
            return Err(format!(
                "the inviting peer {from} is not among the participants"
            ));
        }
        // Every participant checks the list itself: a member that invites a stranger into a
        // key gets no share from anyone.
        self.inner
            .roster
            .check_all(&participants)
            .map_err(|m| format!("participants {m}"))?;
        if key_id.len() != 32 || !key_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("`{key_id}` is not a valid key id"));
        }
        if self.inner.store.contains(&key_id) {
            return Err(format!("key {key_id} exists already"));
        }
        self.check_key_cap(&from)?;
        let others: Vec<PeerId> = participants
            .iter()
            .filter(|p| **p != local)
            .copied()
            .collect();
        let params = DkgParams {
            key_id,
            coordinator: from,
            scheme,
            threshold,
            participants,
            policy,
        };
        self.spawn_participant(
            Protocol::Dkg,
            session,
            others,
            move |engine, inbox| async move {
                crate::with_suite!(params.scheme, C => engine.run_dkg::<C>(inbox, params).await)
                    .map(|_| ())
            },
        )
        .map_err(|e| e.to_string())
    }

    pub(super) fn check_key_cap(&self, creator: &PeerId) -> Result<(), String> {
        let held = self.inner.store.count_created_by(&creator.to_string());
        super::check_creator_cap(
            &self.inner.local,
            creator,
            "keys",
            held,
            self.inner.max_keys_per_creator,
            "mpc_max_keys_per_creator",
        )
    }

    async fn run_dkg<C: Suite>(
        &self,
        mut inbox: SessionInbox,
        params: DkgParams,
    ) -> Result<KeyInfo, SessionError> {
        let session = inbox.session();
        let local = self.inner.local;
        let timeout = self.inner.round_timeout;
        let spec = core::DkgSpec {
            key_id: params.key_id.clone(),
            scheme: params.scheme,
            threshold: params.threshold,
            participants: params.participants.clone(),
            policy_digest: params.policy.digest(),
        };
        info!(key_id = %params.key_id, scheme = %params.scheme, threshold = params.threshold, participants = params.participants.len(), "DKG started");

        // Part 1, broadcast with an echo round.
        let (mut round1, package) = core::Round1::<C>::start(spec, local)?;
        let others = round1.others();
        if self.inner.faults.equivocate_dkg_round1 {
            let messages = self.equivocate_round1::<C>(&others, package, &params)?;
            self.send_round(&mut inbox, messages, "DKG round 1").await?;
        } else {
            let body = Body::DkgRound1 { package };
            self.broadcast_round(&mut inbox, &others, &body, "DKG round 1")
                .await?;
        }
        inbox
            .collect_each(
                "dkg round 1",
                &others,
                timeout,
                |b| match b {
                    Body::DkgRound1 { package } => Some(package.clone()),
                    _ => None,
                },
                |from, package| round1.receive(from, package),
            )
            .await?;
        debug!("DKG round 1 received");

        let (mut echoing, digests) = round1.echo()?;
        let body = Body::DkgEcho { digests };
        self.broadcast_round(&mut inbox, &others, &body, "the DKG echo")
            .await?;
        inbox
            .collect_each(
                "dkg echo",
                &others,
                timeout,
                |b| match b {
                    Body::DkgEcho { digests } => Some(digests.clone()),
                    _ => None,
                },
                |from, digests| echoing.receive(from, digests),
            )
            .await?;

        // Part 2: one package for each other participant.
        let (mut round2, outgoing) = echoing.part2()?;
        let messages = outgoing
            .into_iter()
            .map(|(peer, package)| (peer, Body::DkgRound2 { package }))
            .collect();
        self.send_round(&mut inbox, messages, "DKG round 2").await?;
        inbox
            .collect_each(
                "dkg round 2",
                &others,
                timeout,
                |b| match b {
                    Body::DkgRound2 { package } => Some(package.clone()),
                    _ => None,
                },
                |from, package| round2.receive(from, package),
            )
            .await?;

        // Part 3 and the confirmation: everyone must have derived the same key.
        let (mut confirming, mine) = round2.part3()?;
        let body = Body::DkgConfirm {
            group_key: mine.group_key.clone(),
            package_digest: mine.digest,
        };
        self.broadcast_round(&mut inbox, &others, &body, "the DKG confirmation")
            .await?;
        inbox
            .collect_each(
                "dkg confirmation",
                &others,
                timeout,
                |b| match b {
                    Body::DkgConfirm {
                        group_key,
                        package_digest,
                    } => Some(core::Confirmation {
                        group_key: group_key.clone(),
                        digest: *package_digest,
                    }),
                    _ => None,
                },
                |from, confirmation| confirming.receive(from, confirmation),
            )
            .await?;
        let core::DkgOutput {
            group_key,
            internal_key,
            share,
        } = confirming.finish()?;

        let info = KeyInfo {
            key_id: params.key_id.clone(),
            scheme: params.scheme,
            public_key: hex::encode(&group_key),
            internal_key: internal_key.map(hex::encode),
            threshold: params.threshold,
            participants: params
                .participants
                .iter()
                .map(ToString::to_string)
                .collect(),
            status: "active".into(),
            created_by: Some(params.coordinator.to_string()),
            created_at: super::store::unix_now(),
            policy: params.policy.clone(),
            policy_version: 0,
            generation: 0,
            generated_at: super::store::unix_now(),
        };
        let key = StoredKey {
            info: info.clone(),
            share: C::wrap(share),
            policy_changes: vec![],
            vote: None,
            reshare: None,
        };
        // Stored as pending first: durable, but no one can sign with it until the
        // coordinator confirmed that every participant stored its share. A key that is never
        // confirmed is removed here, not left half-made across the cluster.
        let store = &self.inner.store;
        store
            .insert_pending(&key)
            .await
            .map_err(|e| SessionError::failed(format!("cannot store the key share: {e}")))?;
        let outcome = self
            .confirm_stored(&mut inbox, &params, &others, timeout)
            .await;
        if let Err(e) = outcome {
            if let Err(remove) = store.discard_pending(&params.key_id).await {
                warn!(key_id = %params.key_id, error = %remove, "cannot remove the pending share of a DKG that did not complete");
            }
            return Err(e);
        }
        store
            .activate(key)
            .await
            .map_err(|e| SessionError::failed(format!("cannot store the key share: {e}")))?;
        super::count_keys(store, &self.inner.metrics);
        info!(key_id = %info.key_id, scheme = %info.scheme, public_key = %info.public_key, "DKG completed; key share stored");
        if params.coordinator == local {
            let what = format!("key {}", info.key_id);
            self.announce_active(
                &mut inbox,
                &others,
                &what,
                Body::DkgActive,
                Body::DkgActivated,
                timeout,
            )
            .await;
        } else {
            self.report_active(params.coordinator, session, Body::DkgActivated)
                .await;
        }
        Ok(info)
    }

    /// The storage round: every participant reports its share stored to the coordinator,
    /// which then tells them that the key is active.
    /// Test fault `equivocate-dkg-round1`: a second, different round-1 package for half of
    /// the others, `package` for the rest.
    fn equivocate_round1<C: Suite>(
        &self,
        others: &[PeerId],
        package: Vec<u8>,
        params: &DkgParams,
    ) -> Result<Vec<(PeerId, Body)>, SessionError> {
        let id = frost_identifier::<C>(&self.inner.local).map_err(SessionError::failed)?;
        let n = params.participants.len() as u16;
        let (_, other) = frost_core::keys::dkg::part1(id, n, params.threshold, rand_core::OsRng)
            .map_err(|e| SessionError::failed(format!("DKG part 1: {e}")))?;
        let other = other
            .serialize()
            .map_err(|e| SessionError::failed(format!("DKG part 1: {e}")))?;
        let half = others.len() / 2;
        Ok(others
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let package = if i < half {
                    other.clone()
                } else {
                    package.clone()
                };
                (*p, Body::DkgRound1 { package })
            })
            .collect())
    }

    async fn confirm_stored(
        &self,
        inbox: &mut SessionInbox,
        params: &DkgParams,
        others: &[PeerId],
        timeout: std::time::Duration,
    ) -> Result<(), SessionError> {
        let session = inbox.session();
        if params.coordinator == self.inner.local {
            inbox
                .collect("dkg stored", others, timeout, |b| match b {
                    Body::DkgStored => Some(()),
                    _ => None,
                })
                .await
                .map_err(|e| {
                    SessionError::failed(format!(
                        "not every participant confirmed storing its share of key {}; the key is discarded: {e}",
                        params.key_id
                    ))
                })?;
        } else {
            if self.inner.faults.withhold_dkg_stored {
                debug!(key_id = %params.key_id, "test fault: the storage confirmation is withheld");
            } else {
                self.send(params.coordinator, session, Body::DkgStored)
                    .await
                    .map_err(|e| {
                        unreachable_error(vec![(params.coordinator, e)], "the storage confirmation")
                    })?;
            }
            // The coordinator waits up to a round for the slowest participant first.
            inbox
                .collect("dkg activation", &[params.coordinator], 2 * timeout, |b| {
                    matches!(b, Body::DkgActive).then_some(())
                })
                .await
                .map_err(|e| {
                    SessionError::failed(format!(
                        "the coordinator did not confirm that every participant stored key {}; the share is discarded: {e}",
                        params.key_id
                    ))
                })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_checked() {
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        assert!(check_params(a, 2, &[a, b, c]).is_ok());
        assert!(
            check_params(a, 1, &[a, b])
                .unwrap_err()
                .contains("at least 2")
        );
        assert!(check_params(a, 3, &[a, b]).unwrap_err().contains("larger"));
        assert!(
            check_params(a, 2, &[a, b, b])
                .unwrap_err()
                .contains("twice")
        );
        assert!(
            check_params(a, 2, &[b, c])
                .unwrap_err()
                .contains("must be one")
        );
    }
}
