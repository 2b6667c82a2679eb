//! MPC: the session layer, the FROST protocols (DKG and threshold signing, Ed25519) and
//! secure aggregation (Shamir shares sealed with HPKE; only the sum is revealed).
//!
//! [`MpcEngine`] is the node's handle: the HTTP API starts sessions through it, and its router
//! task receives every inbound MPC message from the network service. Each session runs in its
//! own task inside a tracing span carrying the session id, and ends `completed`,
//! `failed(reason)` or `aborted(blamed participants)`; every round has a deadline.

pub mod activity;
pub mod admission;
pub mod aggregation;
pub mod chunks;
pub mod digest;
pub mod dkg;
pub mod driver;
pub mod faults;
pub mod metrics;
pub mod policy;
pub mod policy_change;
pub mod replay_guard;
pub mod reshare;
pub mod scheme;
pub mod session;
pub mod sign;
pub mod store;
pub mod transfer;
pub mod transport;
pub mod vault;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use faults::Faults;
use metrics::MpcMetrics;
use session::{RouteDecision, SessionError, SessionRouter, unreachable_error};
use store::{KeyInfo, KeyShareStore};
use transport::{InboundMpc, Transport, TransportError};
use wire::{Body, MpcAck, MpcMessage, SessionId};

/// Default deadline of one protocol round.
pub const DEFAULT_ROUND_TIMEOUT: Duration = Duration::from_secs(10);
/// Capacity of the network → router channel.
pub const INBOUND_CAPACITY: usize = 4096;

/// An error of an MPC request, mapped to an HTTP status by the API.
#[derive(Debug, thiserror::Error)]
pub enum MpcError {
    /// The request is wrong (400).
    #[error("{0}")]
    BadRequest(String),
    /// No such key here (404).
    #[error("no key `{0}` on this node")]
    UnknownKey(String),
    /// The session ran and did not complete (502).
    #[error("session {session}: {error}")]
    Session {
        session: SessionId,
        error: SessionError,
    },
    /// The key's signing policy refuses the request (403).
    #[error(transparent)]
    Unauthorized(#[from] policy::Refusal),
    /// A cap of this node is reached (429).
    #[error("{0}")]
    Limit(String),
    /// No such vault file here (404).
    #[error("no vault file `{0}` on this node")]
    UnknownFile(String),
    /// Another operation on the same key is running (409).
    #[error("{0}")]
    Conflict(String),
    /// Something local went wrong (500).
    #[error("{0}")]
    Internal(String),
}

/// Why an invitation was refused: by the key's policy (a typed rule, answered as
/// [`MpcAck::Refused`], so the coordinator can tell the caller which rule and who), or for
/// another reason (answered as [`MpcAck::Rejected`]).
#[derive(Debug)]
pub(crate) enum InviteRefusal {
    Policy {
        /// The refusing holder.
        peer: PeerId,
        refusal: policy::Refusal,
    },
    Other(String),
    /// A presigned request names nonces this holder does not keep (used, or dropped by a
    /// restart or disconnection): nothing was reserved, so the coordinator may invite this
    /// holder again in two rounds.
    NoPresignature(String),
}

/// The rule code of [`InviteRefusal::NoPresignature`] on the wire.
pub const NO_PRESIGNATURE: &str = "no_presignature";

impl InviteRefusal {
    fn ack(&self) -> MpcAck {
        match self {
            InviteRefusal::Policy { refusal, .. } => {
                MpcAck::refused(refusal.rule, &self.to_string())
            }
            InviteRefusal::Other(reason) => MpcAck::rejected(reason),
            InviteRefusal::NoPresignature(reason) => MpcAck::refused(NO_PRESIGNATURE, reason),
        }
    }
}

impl std::fmt::Display for InviteRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InviteRefusal::Policy { peer, refusal } => write!(f, "peer {peer}: {refusal}"),
            InviteRefusal::Other(reason) | InviteRefusal::NoPresignature(reason) => {
                f.write_str(reason)
            }
        }
    }
}

impl From<String> for InviteRefusal {
    fn from(reason: String) -> Self {
        InviteRefusal::Other(reason)
    }
}

/// Refuses a new key or task from `creator` once `held` of its `what` are held here
/// (`setting` names the cap). Every participant checks it for itself.
pub(crate) fn check_creator_cap(
    local: &PeerId,
    creator: &PeerId,
    what: &str,
    held: usize,
    cap: usize,
    setting: &str,
) -> Result<(), String> {
    if held < cap {
        return Ok(());
    }
    let who = if creator == local {
        "this node".to_string()
    } else {
        format!("peer {creator}")
    };
    Err(format!(
        "{who} created {held} {what} held on {local} already, the most it takes from one creator ({setting})"
    ))
}

/// Sets the gauge of keys held, per scheme (every scheme shown, 0 when none).
fn count_keys(store: &KeyShareStore, metrics: &MpcMetrics) {
    let keys = store.list();
    for scheme in scheme::Scheme::ALL {
        let held = keys.iter().filter(|k| k.scheme == scheme).count();
        metrics
            .keys
            .with_label_values(&[scheme.name()])
            .set(held as i64);
    }
}

/// The identifier of a participant in FROST, derived from its peer id.
pub fn frost_identifier<C: frost_core::Ciphersuite>(
    peer: &PeerId,
) -> Result<frost_core::Identifier<C>, String> {
    frost_core::Identifier::derive(&peer.to_bytes())
        .map_err(|e| format!("cannot derive a FROST identifier for {peer}: {e}"))
}

/// Parses a list of peer id strings.
pub fn parse_peers(list: &[String]) -> Result<Vec<PeerId>, String> {
    list.iter()
        .map(|s| {
            s.parse::<PeerId>()
                .map_err(|e| format!("`{s}` is not a peer id: {e}"))
        })
        .collect()
}

struct Inner {
    local: PeerId,
    network: Arc<dyn Transport>,
    store: KeyShareStore,
    router: SessionRouter,
    metrics: MpcMetrics,
    faults: Faults,
    round_timeout: Duration,
    aggregation: aggregation::Aggregation,
    transfers: Arc<transfer::InboundTransfers>,
    roster: Arc<crate::roster::Roster>,
    /// Most sessions one peer's invitations may have running here at once.
    max_sessions_per_peer: usize,
    /// Most keys and tasks held here that one peer created.
    max_keys_per_creator: usize,
    max_tasks_per_creator: usize,
    /// Request ids of signing authorizations already used (on disk) and signing rates.
    replay_guard: replay_guard::ReplayGuard,
    /// Votes for prepared policy changes and the order of policy writes.
    policy: policy_change::PolicyState,
    /// Presignatures, as holder and as coordinator.
    presign: sign::presigned::Presignatures,
    /// Reshares running and staged generations being resolved.
    reshare: reshare::ReshareState,
    /// The last sessions run here.
    sessions: activity::SessionLog,
    /// Vault files held here.
    vault: vault::store::VaultStore,
}

/// The node's MPC handle; cheap to clone.
#[derive(Clone)]
pub struct MpcEngine {
    inner: Arc<Inner>,
}

/// How an engine runs and whom it trusts.
pub struct EngineSettings {
    /// Test-only misbehaviour.
    pub faults: Faults,
    /// Deadline of one round.
    pub round_timeout: Duration,
    /// Who may take part in sessions and keys.
    pub roster: Arc<crate::roster::Roster>,
    /// Most sessions one peer's invitations may have running here.
    pub max_sessions_per_peer: usize,
    /// Most keys held here that one peer created.
    pub max_keys_per_creator: usize,
    /// Most aggregation tasks held here that one peer created.
    pub max_tasks_per_creator: usize,
    /// Byte budgets of the inbound messages that sessions hold.
    pub held_budgets: session::Budgets,
    /// Used signing request ids and signing rates.
    pub replay_guard: replay_guard::ReplayGuard,
    /// Presignature pool sizes.
    pub presign: sign::presigned::PresignSettings,
    /// Vault files held here.
    pub vault: vault::store::VaultStore,
}

impl MpcEngine {
    /// A new engine that reaches other nodes through `network` and keeps shares in `store`.
    pub fn new(
        local: PeerId,
        network: Arc<dyn Transport>,
        store: KeyShareStore,
        metrics: MpcMetrics,
        aggregation: aggregation::Aggregation,
        settings: EngineSettings,
    ) -> Self {
        let legacy = store.list().iter().filter(|k| k.policy.legacy).count();
        metrics.legacy_open_keys.set(legacy as i64);
        count_keys(&store, &metrics);
        let policy = policy_change::PolicyState::restore(&store);
        Self {
            inner: Arc::new(Inner {
                local,
                network,
                store,
                router: SessionRouter::with_budgets(metrics.clone(), settings.held_budgets),
                metrics,
                faults: settings.faults,
                round_timeout: settings.round_timeout,
                aggregation,
                transfers: Arc::default(),
                roster: settings.roster,
                max_sessions_per_peer: settings.max_sessions_per_peer,
                max_keys_per_creator: settings.max_keys_per_creator,
                max_tasks_per_creator: settings.max_tasks_per_creator,
                replay_guard: settings.replay_guard,
                policy,
                presign: sign::presigned::Presignatures::new(settings.presign),
                reshare: reshare::ReshareState::default(),
                sessions: activity::SessionLog::default(),
                vault: settings.vault,
            }),
        }
    }

    /// The key `key_id` as held here, when `coordinator` holds a share of it too: the first
    /// check of every invitation to use a key.
    pub(crate) fn key_shared_with(
        &self,
        key_id: &str,
        coordinator: PeerId,
    ) -> Result<Arc<store::StoredKey>, String> {
        let local = self.inner.local;
        let key = self
            .inner
            .store
            .get(key_id)
            .ok_or_else(|| format!("no key `{key_id}` on peer {local}"))?;
        if !key.info.participants.contains(&coordinator.to_string()) {
            return Err(format!(
                "peer {coordinator} does not hold a share of key {key_id}"
            ));
        }
        Ok(key)
    }

    /// The cluster roster this node checks participants against.
    pub fn roster(&self) -> &crate::roster::Roster {
        &self.inner.roster
    }

    /// The default participants of a new key or task: the roster's members, or, without a
    /// roster, this node and every connected peer that speaks MPC.
    pub async fn default_participants(&self) -> Result<Vec<PeerId>, TransportError> {
        if let Some(members) = self.inner.roster.members() {
            let mut all = members;
            if !all.contains(&self.inner.local) {
                all.push(self.inner.local);
            }
            return Ok(all);
        }
        let mut peers = self.inner.network.mpc_peers().await?;
        peers.push(self.inner.local);
        Ok(peers)
    }

    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.inner.local
    }

    /// The key store.
    pub fn store(&self) -> &KeyShareStore {
        &self.inner.store
    }

    /// Metadata of every key held here.
    pub fn keys(&self) -> Vec<KeyInfo> {
        self.inner.store.list()
    }

    /// Metadata of one key.
    pub fn key(&self, key_id: &str) -> Option<KeyInfo> {
        self.inner.store.get(key_id).map(|k| k.info.clone())
    }

    /// Routes inbound MPC messages until the network stops.
    pub async fn run_router(self, mut inbound: mpsc::Receiver<InboundMpc>) {
        while let Some(InboundMpc {
            peer,
            message,
            size,
            ack,
        }) = inbound.recv().await
        {
            if let Some(path) = &self.inner.faults.partition_file
                && faults::partitioned(path, &self.inner.local, &peer)
            {
                let _ = ack.send(MpcAck::rejected("partitioned (test fault)"));
                continue;
            }
            let session = message.session;
            let decision = self.inner.router.route_sized(peer, message, size);
            let answer = match decision {
                RouteDecision::Invite(_)
                    if self.inner.router.invited_by(&peer) >= self.inner.max_sessions_per_peer =>
                {
                    self.inner
                        .metrics
                        .messages_dropped
                        .with_label_values(&["any", "peer_session_cap"])
                        .inc();
                    MpcAck::busy(&format!(
                        "peer {peer} already has {} sessions running here (mpc_max_sessions_per_peer)",
                        self.inner.max_sessions_per_peer
                    ))
                }
                RouteDecision::Invite(message) => match self.accept_invite(peer, message) {
                    Ok(()) => {
                        self.inner.router.mark_invited(session, peer);
                        MpcAck::Accepted
                    }
                    Err(refusal) => {
                        if let Some(suppressed) = crate::log_limit::allow("mpc_invite_refused") {
                            debug!(%session, %peer, reason = %crate::log_limit::echo(&refusal.to_string()), suppressed, "MPC invite refused");
                        }
                        refusal.ack()
                    }
                },
                other => other.ack(),
            };
            let _ = ack.send(answer);
        }
    }

    fn accept_invite(&self, from: PeerId, message: MpcMessage) -> Result<(), InviteRefusal> {
        let session = message.session;
        let other = InviteRefusal::Other;
        match message.body {
            Body::DkgInvite {
                key_id,
                scheme,
                threshold,
                participants,
                policy,
            } => {
                let invitation = dkg::DkgInvitation {
                    key_id,
                    scheme,
                    threshold,
                    participants,
                    policy,
                };
                self.join_dkg(session, from, invitation).map_err(other)
            }
            Body::SignInvite {
                key_id,
                message,
                authorizations,
                policy,
                generation,
            } => {
                let version = admission::KeyVersion {
                    stamp: policy,
                    generation,
                };
                self.join_signing(session, from, key_id, version, message, authorizations)
            }
            Body::SignPresigned {
                key_id,
                message,
                authorizations,
                policy,
                generation,
                epoch,
                signing_package,
            } => {
                let request = sign::presigned::PresignedRequest {
                    key_id,
                    message,
                    authorizations,
                    version: admission::KeyVersion {
                        stamp: policy,
                        generation,
                    },
                    epoch,
                    package: signing_package,
                };
                self.join_presigned(session, from, request)
            }
            Body::PresignRequest {
                key_id,
                epoch,
                count,
            } => self.answer_presign_request(session, from, key_id, epoch, count),
            Body::AggTaskInvite { params } => self.join_aggregation_create(session, from, params),
            Body::AggBatchInvite {
                task_id,
                shares,
                streamed,
            } => self.join_aggregation_batch(session, from, task_id, shares, streamed),
            Body::AggCollectInvite {
                task_id,
                batch,
                authorization,
            } => self.join_aggregation_collect(session, from, task_id, batch, authorization),
            Body::TransferInvite { bytes, chunks } => self
                .join_transfer(session, from, bytes, chunks)
                .map_err(other),
            Body::PolicyPrepare {
                key_id,
                current,
                policy,
                authorizations,
            } => {
                self.join_policy_prepare(session, from, key_id, current, &policy.0, authorizations)
            }
            Body::PolicyCommit { key_id, record } => {
                self.join_policy_commit(session, from, key_id, record)
            }
            Body::PolicySyncRequest {
                key_id,
                after_version,
            } => self.answer_policy_sync(session, from, &key_id, after_version),
            Body::ReshareInvite(invitation) => self.join_reshare(session, from, invitation),
            Body::ReshareStatusRequest {
                key_id,
                generation,
                digest,
                reshare,
                holders,
            } => {
                let made = reshare::Made {
                    key_id,
                    generation,
                    digest,
                    holders: reshare::canonical_set(&holders, "holders").map_err(other)?,
                };
                self.answer_reshare_status(session, from, made, reshare)
            }
            Body::ReshareRetire {
                key_id,
                generation,
                digest,
                holders,
                certificate,
            } => self.join_retire(from, key_id, generation, digest, holders, certificate),
            Body::VaultKeysRequest => self.answer_vault_keys(session, from),
            Body::VaultPutInvite { plan, share } => {
                self.join_vault_put(session, from, &plan.0, share)
            }
            Body::VaultStatusRequest { name, file_id } => {
                self.answer_vault_status(session, from, name, file_id)
            }
            Body::VaultGetInvite {
                name,
                file_id,
                recipient,
                authorizations,
            } => self.join_vault_get(session, from, name, file_id, recipient, authorizations),
            Body::VaultDeleteInvite {
                name,
                file_id,
                authorizations,
            } => self.join_vault_delete(session, from, name, file_id, authorizations),
            Body::VaultListRequest { after } => self.answer_vault_list(session, from, after),
            Body::VaultManifestRequest { name, file_id } => {
                self.answer_vault_manifest(session, from, name, file_id)
            }
            Body::VaultRepairInvite {
                name,
                file_id,
                helpers,
            } => self.join_vault_repair(session, from, name, file_id, helpers),
            body => Err(other(format!(
                "a {} message does not open a session",
                body.kind()
            ))),
        }
    }

    /// The coordinator's last round of a creation session (DKG, aggregation task), run once
    /// its own copy is active: tells the participants that everyone stored their part, then
    /// waits up to `timeout` for each to say it is active too. So the caller's answer means
    /// "usable on every participant", not "usable here and soon elsewhere". A participant
    /// that misses the activation drops its part; that is logged, never an error: the key or
    /// task is active on the others.
    async fn announce_active(
        &self,
        inbox: &mut session::SessionInbox,
        others: &[PeerId],
        what: &str,
        active: Body,
        activated: Body,
        timeout: Duration,
    ) {
        let session = inbox.session();
        let failures = self.broadcast(others, session, &active).await;
        let missed: Vec<PeerId> = failures.iter().map(|(p, _)| *p).collect();
        if !missed.is_empty() {
            warn!(%what, participants = %session::join_peers(&missed), "active here, but these participants did not get the activation and will drop their part");
        }
        let reached: Vec<PeerId> = others
            .iter()
            .filter(|p| !missed.contains(p))
            .copied()
            .collect();
        let expected = std::mem::discriminant(&activated);
        if let Err(e) = inbox
            .collect(activated.kind(), &reached, timeout, |b| {
                (std::mem::discriminant(b) == expected).then_some(())
            })
            .await
        {
            warn!(%what, error = %e, "not every participant reported the activation in time");
        }
    }

    /// A participant's answer to [`announce_active`](Self::announce_active), once its copy
    /// is active (best effort: the coordinator only waits for it).
    async fn report_active(&self, coordinator: PeerId, session: SessionId, body: Body) {
        if let Err(e) = self.send(coordinator, session, body).await {
            warn!(%coordinator, error = %e, "cannot tell the coordinator that the part is active");
        }
    }
}

/// Blames the peers behind FROST's culprits, or fails with the error when there are none.
fn frost_error<C: frost_core::Ciphersuite>(
    e: frost_core::Error<C>,
    ids: &std::collections::BTreeMap<frost_core::Identifier<C>, PeerId>,
    what: &str,
) -> SessionError {
    let culprits: Vec<PeerId> = e
        .culprits()
        .iter()
        .filter_map(|c| ids.get(c).copied())
        .collect();
    if culprits.is_empty() {
        SessionError::failed(format!("{what}: {e}"))
    } else {
        SessionError::blame(
            culprits.clone(),
            format!(
                "{what}: {e} (participant {})",
                session::join_peers(&culprits)
            ),
        )
    }
}
