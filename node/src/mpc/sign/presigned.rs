//! The driver of presignatures ([`super::pool`]): refills in the background, the holder's
//! side of a presigned signature, and what a disconnection forgets.
//!
//! Who may do what:
//! - Only a holder of the key may ask another holder for presignatures of it, and what it
//!   gets are commitments: they sign nothing. The asking holder costs the other at most its
//!   own `presign_pool_size` nonces per key kept (a new epoch replaces the old ones, at most
//!   once a second) and `MAX_HELD_PER_COORDINATOR` in all; a signing package larger than
//!   the key's holders allow is refused before it is decoded.
//! - A presigned signing request passes the same admission as an invitation (the key's
//!   policy as this holder holds it, request ids on disk) before its nonce signs; the nonce
//!   leaves the pool as soon as a request names it, so it signs at most once.
//! - A stranger never gets this far (the roster is checked before a message is decoded),
//!   and a presignature made for one coordinator cannot be used by another.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use libp2p::PeerId;
use tracing::debug;

use super::core::{Signer, commitments_for, package_fits};
use super::pool::{self, Commitments, HeldNonces, Refill};
use crate::mpc::admission::KeyVersion;
use crate::mpc::policy::Authorization;
use crate::mpc::session::SessionError;
use crate::mpc::store::StoredKey;
use crate::mpc::wire::{Body, PoolEpoch, Protocol, SessionId};
use crate::mpc::{InviteRefusal, MpcEngine, unreachable_error};

/// How many presignatures this node keeps, from config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresignSettings {
    /// Commitments kept per key and holder as coordinator, and nonces kept per key and
    /// coordinator as holder; 0 turns presigning off (every signature takes two rounds).
    pub pool_size: usize,
    /// A coordinator refills a holder's pool when it has fewer than this many left.
    pub low_water: usize,
}

impl Default for PresignSettings {
    fn default() -> Self {
        Self {
            pool_size: 16,
            low_water: 8,
        }
    }
}

/// This node's presignatures, both roles.
#[derive(Default)]
pub(crate) struct Presignatures {
    pub(crate) settings: PresignSettings,
    /// As a holder: nonces made for coordinators.
    held: Mutex<HeldNonces>,
    /// As a coordinator: the holders' commitments.
    pools: Mutex<Commitments>,
}

impl Presignatures {
    pub(crate) fn new(settings: PresignSettings) -> Self {
        Self {
            settings,
            ..Self::default()
        }
    }
}

/// A presigned signing request as a holder receives it.
pub(crate) struct PresignedRequest {
    pub key_id: String,
    pub message: Vec<u8>,
    pub authorizations: Vec<Authorization>,
    pub version: KeyVersion,
    pub epoch: PoolEpoch,
    pub package: Vec<u8>,
}

impl MpcEngine {
    /// As a coordinator: whether `needed` presignatures of `key_id` might be here (a cheap
    /// test before asking which holders are connected).
    pub(super) fn presigned_available(&self, key_id: &str, needed: usize) -> bool {
        let presign = &self.inner.presign;
        presign.settings.pool_size > 0
            && needed > 0
            && presign.pools.lock().expect("presign pools").len(key_id) >= needed
    }

    /// As a coordinator: one presignature of each of `needed` holders of `key_id`, in the
    /// order of `candidates`, or `None` when not enough holders have one (the signature
    /// then takes two rounds).
    pub(super) fn take_presigned(
        &self,
        key_id: &str,
        candidates: &[PeerId],
        needed: usize,
    ) -> Option<Vec<(PeerId, PoolEpoch, Vec<u8>)>> {
        let presign = &self.inner.presign;
        if presign.settings.pool_size == 0 || needed == 0 {
            return None;
        }
        let mut pools = presign.pools.lock().expect("presign pools");
        let taken = pools.take_signers(key_id, candidates, needed);
        self.count_pool(&pools, key_id);
        taken
    }

    /// As a coordinator: forgets `holder`'s presignatures of `key_id` (it refused one, or
    /// could not be reached with one).
    pub(super) fn forget_presigned(&self, key_id: &str, holder: &PeerId) {
        let mut pools = self.inner.presign.pools.lock().expect("presign pools");
        pools.forget(key_id, holder);
        self.count_pool(&pools, key_id);
    }

    fn count_pool(&self, pools: &Commitments, key_id: &str) {
        self.inner
            .metrics
            .presignatures
            .with_label_values(&[key_id])
            .set(pools.len(key_id) as i64);
    }

    /// A peer disconnected: the nonces made for it and its commitments are dropped (after a
    /// restart it has neither; a reconnection starts new pools).
    pub fn peer_disconnected(&self, peer: &PeerId) {
        let presign = &self.inner.presign;
        let mut held = presign.held.lock().expect("held nonces");
        held.forget_peer(peer);
        self.inner
            .metrics
            .presign_nonces_held
            .set(held.total() as i64);
        drop(held);
        let mut pools = presign.pools.lock().expect("presign pools");
        pools.forget_peer(peer);
        for key in self.inner.store.list() {
            self.count_pool(&pools, &key.key_id);
        }
    }

    /// As a coordinator, after a signature with `key`: asks each of `holders` whose pool is
    /// below the low-water mark for more, in the background.
    pub(super) fn refill_presignatures(&self, key: &Arc<StoredKey>, holders: &[PeerId]) {
        let settings = self.inner.presign.settings;
        let refills = self
            .inner
            .presign
            .pools
            .lock()
            .expect("presign pools")
            .refills(
                &key.info.key_id,
                holders,
                settings.low_water,
                settings.pool_size,
            );
        for refill in refills {
            let (engine, key) = (self.clone(), key.clone());
            tokio::spawn(async move {
                let session = SessionId::random();
                let holder = refill.holder;
                let run = engine.refill(&key, &refill, session);
                let got = engine
                    .run_session(Protocol::Presign, "coordinator", session, vec![holder], run)
                    .await;
                let key_id = &key.info.key_id;
                let mut pools = engine.inner.presign.pools.lock().expect("presign pools");
                match got {
                    Ok(commitments) if !commitments.is_empty() => {
                        pools.filled(
                            key_id,
                            holder,
                            refill.epoch,
                            commitments,
                            settings.pool_size,
                        );
                    }
                    // None: the holder's pool for this node is full of nonces this node
                    // does not know of (an answer lost); the next refill starts over.
                    Ok(_) => pools.refill_failed(key_id, &holder, refill.epoch),
                    Err(e) => {
                        debug!(%holder, %key_id, error = %e, "no presignatures from this holder this time");
                        pools.refill_failed(key_id, &holder, refill.epoch);
                    }
                }
                engine.count_pool(&pools, key_id);
            });
        }
    }

    /// One refill: asks the holder and checks its answer.
    async fn refill(
        &self,
        key: &StoredKey,
        refill: &Refill,
        session: SessionId,
    ) -> Result<Vec<Vec<u8>>, SessionError> {
        let holder = refill.holder;
        let mut inbox = self
            .inner
            .router
            .open(session, Protocol::Presign, [holder])?;
        let request = Body::PresignRequest {
            key_id: key.info.key_id.clone(),
            epoch: refill.epoch,
            count: u16::try_from(refill.count).unwrap_or(u16::MAX),
        };
        self.send(holder, session, request)
            .await
            .map_err(|e| unreachable_error(vec![(holder, e)], "the presign request"))?;
        let epoch = refill.epoch;
        let answer = inbox
            .collect(
                "presign commitments",
                &[holder],
                self.inner.round_timeout,
                |b| match b {
                    Body::PresignCommitments {
                        epoch: theirs,
                        commitments,
                    } if *theirs == epoch => Some(commitments.clone()),
                    _ => None,
                },
            )
            .await?;
        let items = answer.into_values().next().unwrap_or_default();
        crate::with_suite!(key.share.scheme(), C => pool::decode_commitments::<C>(&items, refill.count))
            .map_err(|e| {
                SessionError::blame(
                    vec![holder],
                    format!("peer {holder} answered a presign request with {e}"),
                )
            })
    }

    /// As a holder: answers `coordinator`'s request for `count` presignatures of `key_id`.
    pub(in crate::mpc) fn answer_presign_request(
        &self,
        session: SessionId,
        coordinator: PeerId,
        key_id: String,
        epoch: PoolEpoch,
        count: u16,
    ) -> Result<(), InviteRefusal> {
        let cap = self.inner.presign.settings.pool_size;
        if cap == 0 {
            return Err(InviteRefusal::Other(format!(
                "peer {} makes no presignatures (presign_pool_size is 0)",
                self.inner.local
            )));
        }
        let key = self.key_shared_with(&key_id, coordinator)?;
        // How many: decided here, cheaply; the nonces are made in the session's task, and
        // kept if they still fit.
        let started = Instant::now();
        let count = self.inner.presign.held.lock().expect("held nonces").room(
            &key_id,
            coordinator,
            epoch,
            usize::from(count),
            cap,
            started,
        )?;
        self.spawn_participant(
            Protocol::Presign,
            session,
            vec![coordinator],
            move |engine, _inbox| async move {
                let made = crate::with_share!(&key.share, share => pool::make(share, count))
                    .map_err(SessionError::failed)?;
                let kept = {
                    let mut held = engine.inner.presign.held.lock().expect("held nonces");
                    let kept = held.keep(&key_id, coordinator, epoch, made, cap, started);
                    if engine.inner.faults.forget_presignatures {
                        held.forget_peer(&coordinator);
                    }
                    engine
                        .inner
                        .metrics
                        .presign_nonces_held
                        .set(held.total() as i64);
                    kept
                };
                engine
                    .send(
                        coordinator,
                        session,
                        Body::PresignCommitments {
                            epoch,
                            commitments: kept,
                        },
                    )
                    .await
                    .map_err(|e| {
                        unreachable_error(vec![(coordinator, e)], "the presign commitments")
                    })
            },
        )
    }

    /// As a holder: signs a presigned request from `coordinator` in one round. The nonces the
    /// package names leave the pool first (whatever happens next), then the request is
    /// admitted as an invitation would be, and only then do they sign.
    pub(in crate::mpc) fn join_presigned(
        &self,
        session: SessionId,
        coordinator: PeerId,
        request: PresignedRequest,
    ) -> Result<(), InviteRefusal> {
        let local = self.inner.local;
        let PresignedRequest {
            key_id,
            message,
            authorizations,
            version,
            epoch,
            package,
        } = request;
        let key = self.key_shared_with(&key_id, coordinator)?;
        if !package_fits(package.len(), key.info.participants.len(), message.len()) {
            return Err(InviteRefusal::Other(format!(
                "a signing package of {} bytes is too large for key {key_id} ({} holders)",
                package.len(),
                key.info.participants.len()
            )));
        }
        let own = crate::with_suite!(key.share.scheme(), C => commitments_for::<C>(&package, &local, coordinator))
            .map_err(|e| InviteRefusal::Other(e.to_string()))?;
        let nonces = {
            let mut held = self.inner.presign.held.lock().expect("held nonces");
            let nonces = held.take(&key_id, coordinator, epoch, &own);
            self.inner.metrics.presign_nonces_held.set(held.total() as i64);
            nonces
        }
        .ok_or_else(|| {
            InviteRefusal::NoPresignature(format!(
                "peer {local} holds no such presignature of key {key_id} for {coordinator} (used, or dropped by a restart or disconnection)"
            ))
        })?;
        let (key, admission) =
            self.admit_sign_invite(coordinator, &key_id, version, &message, &authorizations)?;
        if self.inner.faults.front_run_signing {
            self.front_run(key_id.clone(), message.clone(), authorizations);
        }
        self.spawn_participant(Protocol::Sign, session, vec![coordinator], move |engine, _inbox| async move {
            // The request ids are on disk before the presignature signs anything.
            let admitted = engine.admitted_in_force(admission, &key_id, version.stamp).await?;
            let share = crate::with_share!(&key.share, share => {
                let nonces = scheme_nonces(nonces, share)?;
                let signer = Signer::presigned(admitted, nonces, share, &local, coordinator, message)?;
                engine.record_nonce(&signer.commitments());
                signer.round2(&package)
            });
            engine.inner.router.close(session);
            let share = engine.corrupt_if_asked(share?);
            engine
                .send(coordinator, session, Body::SignShare { share })
                .await
                .map_err(|e| unreachable_error(vec![(coordinator, e)], "the signature share"))
        })
    }

    /// Test-only (`P2P_MPC_TEST_NONCE_LOG`): appends the commitments of nonces this node
    /// signs with, one line each, so that a test can check no nonce signs twice.
    pub(super) fn record_nonce(&self, commitments: &[u8]) {
        let Some(path) = &self.inner.faults.nonce_log else {
            return;
        };
        let line = format!("{} {}\n", self.inner.local, hex::encode(commitments));
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "test: cannot record a nonce");
        }
    }
}

/// The nonces of `share`'s ciphersuite inside `nonces` (they were made with this key, so
/// another scheme's would be a bug here).
fn scheme_nonces<C: crate::mpc::scheme::Suite>(
    nonces: crate::mpc::scheme::AnyNonces,
    _share: &crate::mpc::scheme::Share<C>,
) -> Result<frost_core::round1::SigningNonces<C>, SessionError> {
    C::nonces(nonces).ok_or_else(|| {
        SessionError::failed(format!(
            "presigned nonces of another scheme than {}",
            C::SCHEME
        ))
    })
}
