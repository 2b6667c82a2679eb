//! Secure aggregation: clients Shamir-share vectors over a prime field (threshold t of n
//! nodes), seal share i to node i's HPKE key and post the bundle to any node, which relays
//! each sealed share to its owner; nodes add shares to a persisted running share sum and
//! reveal only the sum, after `min_reports` reports, once t + 1 nodes agree on the exact
//! set of reports it covers.
//!
//! Three protocols run over the session layer (deadlines, participant checks, buffering,
//! metrics and `mpc_session` spans come from there):
//! - `agg_create`: invite → accept (each participant's signed HPKE key) → commit (everyone's
//!   keys) → stored. The task is usable only once every participant stored it.
//! - `agg_report`: per report, the relay streams each owner its sealed share in chunks
//!   (messages are capped at 256 KiB), owners decrypt and check it (verdict), and only if
//!   every reachable owner accepted and at least t + 1 did does the relay tell them to commit.
//! - `agg_collect`: every reachable participant reports the digest of its report set (a
//!   snapshot); t + 1 participants with the same set, the largest such set, stream their
//!   share sums to the collector, which interpolates the sum.

pub mod batch;
pub mod client;
pub mod encryption;
pub mod shares;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use libp2p::PeerId;
use libp2p::identity::Keypair;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{Instrument, debug, info, warn};

use super::chunks::{ChunkAssembly, pieces};
use super::session::{SessionError, SessionInbox, join_peers};
use super::wire::{Body, Protocol, SessionId};
use super::{MpcEngine, parse_peers, unreachable_error};
use encryption::EncryptionKey;
use shares::Field;
use store::{AggregationStore, ParticipantKey, TaskEntry, TaskInfo, TaskParams};

/// Longest vector a task may have.
pub const MAX_LENGTH: u32 = 1 << 21;
/// Most participants of a task.
pub const MAX_PARTICIPANTS: usize = 64;
/// Largest report a task may take (participants × sealed share of the vector, base64): the
/// API reads a report body up to its task's size, so this bounds what one request can hold.
pub const MAX_REPORT_BYTES: usize = 512 * 1024 * 1024;
/// HPKE adds this many bytes (the Poly1305 tag) to a share.
pub const TAG_BYTES: usize = 16;

/// This node's aggregation state: its tasks and its HPKE key.
pub struct Aggregation {
    pub store: AggregationStore,
    pub key: EncryptionKey,
    pub identity: Keypair,
}

/// An aggregation request that failed, with the HTTP status and code the API answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AggError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl AggError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    fn bad(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request", message)
    }
    fn unknown_task(task_id: &str) -> Self {
        Self::new(
            404,
            "unknown_task",
            format!("no aggregation task `{task_id}` on this node"),
        )
    }
    fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "internal", message)
    }
    fn session(session: SessionId, error: SessionError) -> Self {
        let code = if error.blamed().is_empty() {
            "session_failed"
        } else {
            "session_aborted"
        };
        Self::new(502, code, format!("session {session}: {error}"))
    }
    /// A refused share: (code, message) as sent in a verdict.
    fn from_verdict(code: &str, message: String) -> Self {
        let (status, code) = match code {
            "duplicate_report" => (409, "duplicate_report"),
            "task_collected" => (409, "task_collected"),
            "bad_ciphertext" => (400, "bad_ciphertext"),
            "wrong_length" => (400, "wrong_length"),
            "value_out_of_field" => (400, "value_out_of_field"),
            "unknown_task" => (404, "unknown_task"),
            _ => (400, "invalid_report"),
        };
        Self::new(status, code, message)
    }
}

/// `POST /v1/aggregations`, participants resolved.
#[derive(Debug, Clone)]
pub struct CreateTask {
    pub participants: Vec<PeerId>,
    pub threshold: u16,
    pub length: u32,
    pub modulus: Option<u64>,
    pub min_reports: u64,
}

/// A relay's announcement of one sealed share (the fields of `Body::AggShareInvite`).
pub(super) struct ShareInvite {
    pub task_id: String,
    pub report_id: String,
    pub encapped_key: Vec<u8>,
    pub bytes: u64,
    pub chunks: u32,
}

/// One sealed share of a report, as a client posts it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedShare {
    pub peer_id: String,
    /// HPKE encapsulated key, base64.
    pub enc: String,
    /// HPKE ciphertext of the share, base64.
    pub ciphertext: String,
}

/// Body of `POST /v1/aggregations/{id}/reports`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// 32 hex digits chosen by the client at random.
    pub report_id: String,
    /// One per participant.
    pub shares: Vec<SealedShare>,
}

/// Answer of an accepted report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportAccepted {
    pub task_id: String,
    pub report_id: String,
    pub accepted_by: Vec<String>,
}

/// Answer of a collect.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CollectResult {
    pub task_id: String,
    pub sum: Vec<u64>,
    pub reports: u64,
    /// SHA-256 over the sorted report ids the sum covers, hex.
    pub report_set_digest: String,
    /// The participants whose share sums were combined.
    pub opened_by: Vec<String>,
}

/// `GET /v1/aggregations/{id}`: parameters, keys, and what this node holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskView {
    #[serde(flatten)]
    pub task: TaskInfo,
    /// Reports accepted by this node.
    pub reports_here: u64,
    /// Whether this node has opened its share sum.
    pub opened: bool,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn is_hex_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Checks task parameters; `Ok` holds the sorted participants.
pub fn check_params(local: PeerId, p: &TaskParams) -> Result<Vec<PeerId>, String> {
    let peers = parse_peers(&p.participants)?;
    let mut seen = BTreeSet::new();
    for peer in &peers {
        if !seen.insert(*peer) {
            return Err(format!("participant {peer} is listed twice"));
        }
    }
    let sorted: Vec<PeerId> = seen.into_iter().collect();
    if sorted != peers {
        return Err("participants must be sorted".into());
    }
    if !sorted.contains(&local) {
        return Err(format!(
            "this node ({local}) must be one of the participants"
        ));
    }
    let n = sorted.len();
    if !(2..=MAX_PARTICIPANTS).contains(&n) {
        return Err(format!(
            "{n} participants: a task needs 2 to {MAX_PARTICIPANTS}"
        ));
    }
    if p.threshold < 1 || usize::from(p.threshold) >= n {
        return Err(format!(
            "threshold {} is out of range: with {n} participants it must be 1 to {} (t + 1 participants open the sum; any t learn nothing)",
            p.threshold,
            n - 1
        ));
    }
    if p.length < 1 || p.length > MAX_LENGTH {
        return Err(format!(
            "length {} is out of range: 1 to {MAX_LENGTH}",
            p.length
        ));
    }
    let report = crate::api::body::report(n, p.length);
    if report > MAX_REPORT_BYTES {
        return Err(format!(
            "{n} participants × length {} make reports of {} MiB; at most {} MiB (use fewer participants or a shorter vector)",
            p.length,
            report >> 20,
            MAX_REPORT_BYTES >> 20
        ));
    }
    if p.modulus != shares::MODULUS {
        return Err(format!(
            "modulus {} is not supported: values live in the field of prio's Field64, modulus {} (2^64 - 2^32 + 1)",
            p.modulus,
            shares::MODULUS
        ));
    }
    if p.min_reports < 1 {
        return Err("min_reports must be at least 1".into());
    }
    if !is_hex_id(&p.task_id) {
        return Err(format!(
            "`{}` is not a task id (32 lowercase hex digits)",
            p.task_id
        ));
    }
    Ok(sorted)
}

/// Splits the owners a share was sent to into those that took the message and those that
/// could not be reached (logged).
fn split_reachable(
    sent: impl IntoIterator<Item = (PeerId, Result<(), crate::network::MpcSendError>)>,
) -> (Vec<PeerId>, Vec<PeerId>) {
    let mut reachable = Vec::new();
    let mut unreachable = Vec::new();
    for (peer, result) in sent {
        match result {
            Ok(()) => reachable.push(peer),
            Err(e) => {
                info!(peer = %peer, error = %e, "share owner unreachable");
                unreachable.push(peer);
            }
        }
    }
    (reachable, unreachable)
}

/// Judges one report from its verdicts: the participants that took it (the local one first),
/// and the refusal if any: the first owner's reason, or too few owners (fewer than `need`).
fn judge_report<'a>(
    local: PeerId,
    local_verdict: Option<Result<(), &(String, String)>>,
    remote: impl Iterator<Item = (PeerId, Option<&'a (String, String)>)>,
    need: usize,
    unreachable: &[PeerId],
) -> (Vec<PeerId>, Option<(String, String)>) {
    let mut refusal: Option<(String, String)> = None;
    let mut accepted: Vec<PeerId> = Vec::new();
    match local_verdict {
        Some(Ok(())) => accepted.push(local),
        Some(Err(r)) => refusal = Some(r.clone()),
        None => {}
    }
    for (peer, verdict) in remote {
        match verdict {
            None => accepted.push(peer),
            Some((code, message)) => {
                if refusal.is_none() {
                    refusal = Some((code.clone(), format!("participant {peer}: {message}")));
                }
            }
        }
    }
    if refusal.is_none() && accepted.len() < need {
        refusal = Some((
            "not_enough_participants".into(),
            format!(
                "only {} participants took the report ({}); t + 1 = {need} must; unreachable: {}",
                accepted.len(),
                join_peers(&accepted),
                join_peers(unreachable)
            ),
        ));
    }
    (accepted, refusal)
}

fn chunks_of(len: usize) -> u32 {
    super::chunks::chunks_of(len as u64)
}

impl MpcEngine {
    fn agg(&self) -> &Aggregation {
        &self.inner.aggregation
    }

    /// The task `task_id`, as `GET /v1/aggregations/{id}` shows it.
    pub async fn aggregation_task(&self, task_id: &str) -> Result<TaskView, AggError> {
        let task = self
            .agg()
            .store
            .get(task_id)
            .ok_or_else(|| AggError::unknown_task(task_id))?;
        let state = task.state.lock().await;
        Ok(TaskView {
            task: task.info.clone(),
            reports_here: state.report_ids.len() as u64,
            opened: state.opened.is_some(),
        })
    }

    /// The number of participants and the vector length of a task (no lock taken).
    pub fn task_shape(&self, task_id: &str) -> Result<(usize, u32), AggError> {
        let task = self
            .agg()
            .store
            .get(task_id)
            .ok_or_else(|| AggError::unknown_task(task_id))?;
        let p = &task.info.params;
        Ok((p.participants.len(), p.length))
    }

    /// Counts a client report refused before it reached [`submit_report`](Self::submit_report).
    pub fn count_report_outcome(&self, outcome: &str) {
        self.count_report(outcome)
    }

    fn count_report(&self, outcome: &str) {
        self.inner
            .metrics
            .aggregation_reports
            .with_label_values(&[outcome])
            .inc();
    }

    fn count_share(&self, outcome: &str) {
        self.inner
            .metrics
            .aggregation_shares
            .with_label_values(&[outcome])
            .inc();
    }

    /// Creates a task on every participant (all store it, or the call fails).
    pub async fn create_aggregation(&self, request: CreateTask) -> Result<TaskInfo, AggError> {
        let local = self.inner.local;
        let mut participants: Vec<String> = request
            .participants
            .iter()
            .map(ToString::to_string)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if participants.len() != request.participants.len() {
            return Err(AggError::bad("a participant is listed twice"));
        }
        participants.sort();
        let params = TaskParams {
            task_id: SessionId::random().to_string(),
            participants,
            threshold: request.threshold,
            length: request.length,
            modulus: request.modulus.unwrap_or(shares::MODULUS),
            min_reports: request.min_reports,
            created_at: now(),
            created_by: Some(local.to_string()),
        };
        let peers = check_params(local, &params).map_err(AggError::bad)?;
        self.check_task_cap(&local)
            .map_err(|m| AggError::new(429, "limit_reached", m))?;
        self.inner
            .roster
            .check_all(&peers)
            .map_err(|m| AggError::bad(format!("participants {m}")))?;
        let connected = self
            .inner
            .network
            .mpc_peers()
            .await
            .map_err(|e| AggError::internal(e.to_string()))?;
        let unknown: Vec<PeerId> = peers
            .iter()
            .filter(|p| **p != local && !connected.contains(p))
            .copied()
            .collect();
        if !unknown.is_empty() {
            return Err(AggError::bad(format!(
                "not connected to participant(s) {} over the MPC protocol (check the peer ids and GET /v1/peers)",
                join_peers(&unknown)
            )));
        }
        let others: Vec<PeerId> = peers.iter().filter(|p| **p != local).copied().collect();
        let session = SessionId::random();
        let mut inbox = self
            .inner
            .router
            .open(session, Protocol::AggCreate, others.clone())
            .map_err(|e| AggError::session(session, e))?;
        let engine = self.clone();
        let others2 = others.clone();
        let run = async move {
            let others = others2;
            let params_bytes =
                serde_json::to_vec(&params).map_err(|e| SessionError::failed(e.to_string()))?;
            let digest = sha256(&params_bytes);
            let invite = Body::AggTaskInvite {
                params: params_bytes,
            };
            engine
                .broadcast_round(&mut inbox, &others, &invite, "the task invitation")
                .await?;
            let timeout = engine.inner.round_timeout;
            let accepts = inbox
                .collect("aggregation task accept", &others, timeout, |b| match b {
                    Body::AggTaskAccept {
                        params_digest,
                        identity_public_key,
                        hpke_public_key,
                        signature,
                    } => Some((
                        *params_digest,
                        identity_public_key.clone(),
                        hpke_public_key.clone(),
                        signature.clone(),
                    )),
                    _ => None,
                })
                .await?;
            let mut keys = Vec::new();
            for peer in &peers {
                let key = if *peer == local {
                    engine.own_key()?
                } else {
                    let (d, id_pk, hpke_pk, sig) = &accepts[peer];
                    if *d != digest {
                        return Err(SessionError::blame(
                            vec![*peer],
                            format!("participant {peer} accepted different task parameters"),
                        ));
                    }
                    encryption::verify_binding(peer, id_pk, hpke_pk, sig)
                        .map_err(|e| SessionError::blame(vec![*peer], e))?;
                    ParticipantKey {
                        peer_id: peer.to_string(),
                        identity_public_key: hex::encode(id_pk),
                        hpke_public_key: hex::encode(hpke_pk),
                        signature: hex::encode(sig),
                    }
                };
                keys.push(key);
            }
            let keys_bytes =
                serde_json::to_vec(&keys).map_err(|e| SessionError::failed(e.to_string()))?;
            let commit = Body::AggTaskCommit { keys: keys_bytes };
            engine
                .broadcast_round(&mut inbox, &others, &commit, "the task commit")
                .await?;
            let info = TaskInfo { params, keys };
            let index = peers.iter().position(|p| *p == local).unwrap_or(0);
            let store = &engine.agg().store;
            let task_id = info.params.task_id.clone();
            let pending = store
                .insert_pending(info.clone(), index)
                .await
                .map_err(|e| SessionError::failed(format!("cannot store the task: {e}")))?;
            let stored = inbox
                .collect("aggregation task stored", &others, timeout, |b| match b {
                    Body::AggTaskStored => Some(()),
                    _ => None,
                })
                .await;
            if let Err(e) = stored {
                engine.discard_pending_task(&task_id).await;
                return Err(SessionError::failed(format!(
                    "not every participant confirmed storing task {task_id}; the task is discarded: {e}"
                )));
            }
            store
                .activate(pending)
                .await
                .map_err(|e| SessionError::failed(format!("cannot store the task: {e}")))?;
            engine
                .announce_active(
                    &mut inbox,
                    &others,
                    &format!("aggregation task {task_id}"),
                    Body::AggTaskActive,
                    Body::AggTaskActivated,
                    timeout,
                )
                .await;
            info!(%task_id, "aggregation task created on every participant");
            Ok(info)
        };
        self.run_session(Protocol::AggCreate, "coordinator", session, others, run)
            .await
            .map_err(|e| AggError::session(session, e))
    }

    fn own_key(&self) -> Result<ParticipantKey, SessionError> {
        let agg = self.agg();
        let sig = encryption::sign_binding(&agg.identity, agg.key.public_key())
            .map_err(SessionError::failed)?;
        Ok(ParticipantKey {
            peer_id: self.inner.local.to_string(),
            identity_public_key: hex::encode(agg.identity.public().encode_protobuf()),
            hpke_public_key: hex::encode(agg.key.public_key()),
            signature: hex::encode(sig),
        })
    }

    /// Answers a task invitation.
    pub(super) fn join_aggregation_create(
        &self,
        session: SessionId,
        from: PeerId,
        params_bytes: Vec<u8>,
    ) -> Result<(), String> {
        let local = self.inner.local;
        let params: TaskParams = serde_json::from_slice(&params_bytes)
            .map_err(|e| format!("malformed task parameters: {e}"))?;
        let peers = check_params(local, &params)?;
        if !peers.contains(&from) {
            return Err(format!(
                "the inviting peer {from} is not among the participants"
            ));
        }
        // Checked by every participant, not only by the coordinator.
        self.inner
            .roster
            .check_all(&peers)
            .map_err(|m| format!("participants {m}"))?;
        if self.agg().store.get(&params.task_id).is_some() {
            return Err(format!("task {} exists already", params.task_id));
        }
        if params.created_by != Some(from.to_string()) {
            return Err(format!(
                "the task names {} as its creator, but {from} sent it",
                params.created_by.as_deref().unwrap_or("no one")
            ));
        }
        self.check_task_cap(&from)?;
        let inbox = self
            .inner
            .router
            .open(session, Protocol::AggCreate, [from])
            .map_err(|e| e.to_string())?;
        let engine = self.clone();
        tokio::spawn(
            async move {
                let run = engine.run_join_create(inbox, from, params, params_bytes, peers);
                let _ = engine
                    .run_session(Protocol::AggCreate, "participant", session, vec![from], run)
                    .await;
            }
            .in_current_span(),
        );
        Ok(())
    }

    async fn run_join_create(
        &self,
        mut inbox: SessionInbox,
        from: PeerId,
        params: TaskParams,
        params_bytes: Vec<u8>,
        peers: Vec<PeerId>,
    ) -> Result<(), SessionError> {
        let session = inbox.session();
        let own = self.own_key()?;
        let agg = self.agg();
        let accept = Body::AggTaskAccept {
            params_digest: sha256(&params_bytes),
            identity_public_key: agg.identity.public().encode_protobuf(),
            hpke_public_key: agg.key.public_key().to_vec(),
            signature: hex::decode(&own.signature).unwrap_or_default(),
        };
        self.send(from, session, accept)
            .await
            .map_err(|e| unreachable_error(vec![(from, e)], "the task acceptance"))?;
        let timeout = self.inner.round_timeout;
        let commit = inbox
            .collect("aggregation task commit", &[from], timeout, |b| match b {
                Body::AggTaskCommit { keys } => Some(keys.clone()),
                _ => None,
            })
            .await?;
        let keys: Vec<ParticipantKey> = serde_json::from_slice(&commit[&from])
            .map_err(|e| SessionError::blame(vec![from], format!("malformed task keys: {e}")))?;
        if keys.len() != peers.len()
            || keys
                .iter()
                .zip(&peers)
                .any(|(k, p)| k.peer_id != p.to_string())
        {
            return Err(SessionError::blame(
                vec![from],
                "the task keys do not match the participants",
            ));
        }
        let index = peers
            .iter()
            .position(|p| *p == self.inner.local)
            .unwrap_or(0);
        if keys[index] != own {
            return Err(SessionError::blame(
                vec![from],
                "the task commit does not carry this node's own key",
            ));
        }
        for (k, p) in keys.iter().zip(&peers) {
            let dec = |s: &str| hex::decode(s).unwrap_or_default();
            encryption::verify_binding(
                p,
                &dec(&k.identity_public_key),
                &dec(&k.hpke_public_key),
                &dec(&k.signature),
            )
            .map_err(|e| SessionError::blame(vec![from], e))?;
        }
        let info = TaskInfo { params, keys };
        let task_id = info.params.task_id.clone();
        let pending = agg
            .store
            .insert_pending(info, index)
            .await
            .map_err(|e| SessionError::failed(format!("cannot store the task: {e}")))?;
        let activated = async {
            if self.inner.faults.withhold_task_stored {
                debug!(%task_id, "test fault: the storage confirmation is withheld");
            } else {
                self.send(from, session, Body::AggTaskStored)
                    .await
                    .map_err(|e| {
                        unreachable_error(vec![(from, e)], "the storage confirmation")
                    })?;
            }
            // The coordinator waits up to a round for the slowest participant first.
            inbox
                .collect("aggregation task activation", &[from], 2 * timeout, |b| {
                    matches!(b, Body::AggTaskActive).then_some(())
                })
                .await
                .map_err(|e| {
                    SessionError::failed(format!(
                        "the coordinator did not confirm that every participant stored task {task_id}; the task is discarded: {e}"
                    ))
                })
        }
        .await;
        if let Err(e) = activated {
            self.discard_pending_task(&task_id).await;
            return Err(e);
        }
        agg.store
            .activate(pending)
            .await
            .map_err(|e| SessionError::failed(format!("cannot store the task: {e}")))?;
        self.report_active(from, session, Body::AggTaskActivated)
            .await;
        info!(%task_id, "aggregation task stored");
        Ok(())
    }

    async fn discard_pending_task(&self, task_id: &str) {
        if let Err(e) = self.agg().store.discard_pending(task_id).await {
            warn!(%task_id, error = %e, "cannot remove a pending task whose creation did not complete");
        }
    }

    fn check_task_cap(&self, creator: &PeerId) -> Result<(), String> {
        let held = self.agg().store.count_created_by(&creator.to_string());
        super::check_creator_cap(
            &self.inner.local,
            creator,
            "aggregation tasks",
            held,
            self.inner.max_tasks_per_creator,
            "mpc_max_tasks_per_creator",
        )
    }

    /// Checks and decrypts one sealed share for this node; reserves the report id on success.
    async fn open_share(
        &self,
        task: &Arc<TaskEntry>,
        report_id: &str,
        enc: Vec<u8>,
        ciphertext: Vec<u8>,
    ) -> Result<Vec<Field>, (String, String)> {
        let task_id = task.info.params.task_id.clone();
        if task.state.lock().await.opened.is_some() {
            return Err((
                "task_collected".into(),
                format!("task {task_id} was collected already; it accepts no more reports"),
            ));
        }
        if !task.reserve(report_id) {
            return Err((
                "duplicate_report".into(),
                format!(
                    "report {report_id} was submitted already (a replayed report id is refused)"
                ),
            ));
        }
        let length = task.info.params.length as usize;
        let aad = encryption::associated_data(&task_id, report_id);
        let engine = self.clone();
        let opened = tokio::task::spawn_blocking(move || {
            let plain = if engine.inner.faults.plaintext_shares && enc.is_empty() {
                // Test-only (see faults): the share travels unsealed, tag bytes zero.
                let body = ciphertext.len().saturating_sub(TAG_BYTES);
                ciphertext[..body].to_vec()
            } else {
                engine
                    .agg()
                    .key
                    .open(&enc, &ciphertext, &aad)
                    .map_err(|e| ("bad_ciphertext".to_string(), e))?
            };
            shares::decode(&plain, length).map_err(|e| match e {
                shares::ShareError::WrongLength { expected, got } => (
                    "wrong_length".to_string(),
                    format!("the share holds {got} values; task {task_id} has length {expected}"),
                ),
                shares::ShareError::OutOfField { index, .. } => (
                    "value_out_of_field".to_string(),
                    format!(
                        "share value at position {index} is outside the field (at or above {})",
                        shares::MODULUS
                    ),
                ),
                other => ("invalid_report".to_string(), other.to_string()),
            })
        })
        .await
        .map_err(|e| ("internal".to_string(), e.to_string()))
        .and_then(|r| r);
        if opened.is_err() {
            task.release(report_id);
        }
        opened
    }

    /// Takes a client's report: relays each sealed share to its owner and commits it only
    /// when every reachable owner accepted (and at least t + 1 did).
    pub async fn submit_report(
        &self,
        task_id: &str,
        report: Report,
    ) -> Result<ReportAccepted, AggError> {
        let result = self.submit_report_inner(task_id, report).await;
        match &result {
            Ok(_) => self.count_report("accepted"),
            Err(e) => self.count_report(e.code),
        }
        result
    }

    async fn submit_report_inner(
        &self,
        task_id: &str,
        report: Report,
    ) -> Result<ReportAccepted, AggError> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let task = self
            .agg()
            .store
            .get(task_id)
            .ok_or_else(|| AggError::unknown_task(task_id))?;
        let params = &task.info.params;
        if !is_hex_id(&report.report_id) {
            return Err(AggError::new(
                400,
                "invalid_report",
                format!(
                    "`{}` is not a report id: use 32 random lowercase hex digits",
                    report.report_id
                ),
            ));
        }
        let n = params.participants.len();
        let mut sealed: BTreeMap<&str, &SealedShare> = BTreeMap::new();
        for s in &report.shares {
            sealed.insert(s.peer_id.as_str(), s);
        }
        if report.shares.len() != n
            || params
                .participants
                .iter()
                .any(|p| !sealed.contains_key(p.as_str()))
        {
            return Err(AggError::new(
                400,
                "wrong_share_count",
                format!(
                    "task {task_id} has {n} participants; the report must carry exactly one sealed share for each (got {})",
                    report.shares.len()
                ),
            ));
        }
        let max_ct = params.length as usize * shares::ELEMENT_BYTES + TAG_BYTES;
        let mut decoded: Vec<(PeerId, Vec<u8>, Vec<u8>)> = Vec::new();
        for p in &params.participants {
            let s = sealed[p.as_str()];
            let peer: PeerId = p
                .parse()
                .map_err(|e| AggError::internal(format!("stored peer id {p}: {e}")))?;
            let enc = b64.decode(&s.enc).map_err(|e| {
                AggError::new(
                    400,
                    "invalid_report",
                    format!("share for {p}: `enc` is not base64: {e}"),
                )
            })?;
            let ct = b64.decode(&s.ciphertext).map_err(|e| {
                AggError::new(
                    400,
                    "invalid_report",
                    format!("share for {p}: `ciphertext` is not base64: {e}"),
                )
            })?;
            if ct.len() != max_ct {
                return Err(AggError::new(
                    400,
                    "wrong_length",
                    format!(
                        "the share for {p} is {} bytes; a share of the {} values of task {task_id} is {max_ct} bytes sealed",
                        ct.len(),
                        params.length
                    ),
                ));
            }
            decoded.push((peer, enc, ct));
        }
        if decoded
            .iter()
            .all(|(_, _, ct)| ct.len() <= batch::MAX_BATCHED_SHARE)
        {
            // Small shares go out in the next relay batch of this task.
            let (done, outcome) = tokio::sync::oneshot::channel();
            let queued = self.enqueue_relay(
                &task,
                batch::RelayJob {
                    report_id: report.report_id.clone(),
                    shares: decoded,
                    done,
                },
            );
            if queued.is_err() {
                return Err(AggError::new(
                    503,
                    "busy",
                    format!(
                        "{} reports of task {task_id} wait for relay on this node already; send this one again later",
                        batch::MAX_QUEUED_REPORTS
                    ),
                ));
            }
            let outcome = outcome
                .await
                .map_err(|_| AggError::internal("the relay of this report was interrupted"))?;
            return match outcome {
                Ok(Ok(accepted_by)) => Ok(ReportAccepted {
                    task_id: task_id.to_string(),
                    report_id: report.report_id,
                    accepted_by: accepted_by.iter().map(ToString::to_string).collect(),
                }),
                Ok(Err((code, message))) => Err(AggError::from_verdict(&code, message)),
                Err((session, e)) => Err(AggError::session(session, e)),
            };
        }
        let local = self.inner.local;
        let owners: Vec<PeerId> = decoded
            .iter()
            .map(|(p, _, _)| *p)
            .filter(|p| *p != local)
            .collect();
        let session = SessionId::random();
        let inbox = self
            .inner
            .router
            .open(session, Protocol::AggReport, owners.clone())
            .map_err(|e| AggError::session(session, e))?;
        let engine = self.clone();
        let report_id = report.report_id.clone();
        let task2 = task.clone();
        let run = async move { engine.relay_report(inbox, task2, report_id, decoded).await };
        let outcome = self
            .run_session(Protocol::AggReport, "relay", session, owners, run)
            .await
            .map_err(|e| AggError::session(session, e))?;
        match outcome {
            Ok(accepted_by) => Ok(ReportAccepted {
                task_id: task_id.to_string(),
                report_id: report.report_id,
                accepted_by: accepted_by.iter().map(ToString::to_string).collect(),
            }),
            Err((code, message)) => Err(AggError::from_verdict(&code, message)),
        }
    }

    /// The relay's side of one report. `Ok(Err(..))` is a refusal by an owner.
    async fn relay_report(
        &self,
        mut inbox: SessionInbox,
        task: Arc<TaskEntry>,
        report_id: String,
        shares_in: Vec<(PeerId, Vec<u8>, Vec<u8>)>,
    ) -> Result<Result<Vec<PeerId>, (String, String)>, SessionError> {
        let session = inbox.session();
        let local = self.inner.local;
        let task_id = task.info.params.task_id.clone();
        let need = usize::from(task.info.params.threshold) + 1;
        let mut local_share = None;
        let mut sends = Vec::new();
        for (peer, enc, ct) in shares_in {
            if peer == local {
                local_share = Some((enc, ct));
                continue;
            }
            let task_id = task_id.clone();
            let report_id = report_id.clone();
            sends.push(async move {
                let invite = Body::AggShareInvite {
                    task_id,
                    report_id,
                    encapped_key: enc,
                    bytes: ct.len() as u64,
                    chunks: chunks_of(ct.len()),
                };
                self.send(peer, session, invite)
                    .await
                    .map_err(|e| (peer, e))?;
                self.send_chunks(peer, session, ct.into())
                    .await
                    .map_err(|e| (peer, e))?;
                Ok::<PeerId, (PeerId, crate::network::MpcSendError)>(peer)
            });
        }
        let local_verdict = async {
            match local_share {
                Some((enc, ct)) => Some(self.open_share(&task, &report_id, enc, ct).await),
                None => None,
            }
        };
        let (sent, local_verdict) = futures::join!(join_all(sends), local_verdict);
        let (reachable, unreachable) = split_reachable(sent.into_iter().map(|r| match r {
            Ok(p) => (p, Ok(())),
            Err((p, e)) => (p, Err(e)),
        }));
        let timeout = self.inner.round_timeout;
        let verdicts = match inbox
            .collect(
                "aggregation share verdict",
                &reachable,
                timeout,
                |b| match b {
                    Body::AggShareVerdict { rejected } => Some(rejected.clone()),
                    _ => None,
                },
            )
            .await
        {
            Ok(v) => v,
            Err(e) => {
                if let Some(Ok(_)) = &local_verdict {
                    task.release(&report_id);
                }
                return Err(e);
            }
        };
        let (mut accepted, refusal) = judge_report(
            local,
            local_verdict.as_ref().map(|v| v.as_ref().map(|_| ())),
            verdicts.iter().map(|(p, v)| (*p, v.as_ref())),
            need,
            &unreachable,
        );
        let local_accepted = match local_verdict {
            Some(Ok(share)) => Some(share),
            _ => None,
        };
        let commit = refusal.is_none();
        let remote_accepted: Vec<PeerId> =
            accepted.iter().filter(|p| **p != local).copied().collect();
        let _ = self
            .broadcast(&remote_accepted, session, &Body::AggShareCommit { commit })
            .await;
        if let Some(share) = local_accepted {
            if commit {
                task.commit(&report_id, &share).await.map_err(|e| {
                    SessionError::failed(format!("cannot store the share sum: {e}"))
                })?;
            } else {
                task.release(&report_id);
            }
        }
        if let Some(r) = refusal {
            return Ok(Err(r));
        }
        inbox
            .collect(
                "aggregation share stored",
                &remote_accepted,
                timeout,
                |b| match b {
                    Body::AggShareStored => Some(()),
                    _ => None,
                },
            )
            .await?;
        accepted.sort();
        info!(%task_id, %report_id, owners = accepted.len(), "report accepted");
        Ok(Ok(accepted))
    }

    /// Streams `bytes` to `peer` in chunk messages (see [`super::chunks`]).
    async fn send_chunks(
        &self,
        peer: PeerId,
        session: SessionId,
        bytes: bytes::Bytes,
    ) -> Result<(), crate::network::MpcSendError> {
        self.send_chunked(peer, session, pieces(bytes), |index, data| Body::AggChunk {
            index,
            data,
        })
        .await
    }

    /// Receives chunked payloads of `len` bytes from each of `from`.
    async fn receive_chunks(
        inbox: &mut SessionInbox,
        from: &[PeerId],
        len: usize,
        timeout: std::time::Duration,
    ) -> Result<BTreeMap<PeerId, Vec<u8>>, SessionError> {
        let mut assemblies: BTreeMap<PeerId, ChunkAssembly> = from
            .iter()
            .map(|p| (*p, ChunkAssembly::new(len, true)))
            .collect();
        let mut done = BTreeMap::new();
        let mut pending: Vec<PeerId> = from.to_vec();
        while !pending.is_empty() {
            // Each chunk must come within a round deadline of the previous one.
            let deadline = tokio::time::Instant::now() + timeout;
            let (peer, (index, data)) = inbox
                .next_of("aggregation chunk", &pending, deadline, |b| match b {
                    Body::AggChunk { index, data } => Some((*index, data.0.clone())),
                    _ => None,
                })
                .await?;
            let Some(assembly) = assemblies.get_mut(&peer) else {
                continue;
            };
            match assembly.accept(index, &data) {
                Ok(false) => {}
                Ok(true) => {
                    pending.retain(|p| *p != peer);
                    if let Some(a) = assemblies.remove(&peer) {
                        done.insert(peer, a.into_bytes().unwrap_or_default());
                    }
                }
                Err(e) => {
                    return Err(SessionError::blame(
                        vec![peer],
                        format!("participant {peer} sent a bad chunk: {e}"),
                    ));
                }
            }
        }
        Ok(done)
    }

    /// Answers a relayed share: receives, checks, and commits it when told to.
    pub(super) fn join_aggregation_share(
        &self,
        session: SessionId,
        from: PeerId,
        invite: ShareInvite,
    ) -> Result<(), String> {
        let ShareInvite {
            task_id,
            report_id,
            encapped_key,
            bytes,
            chunks,
        } = invite;
        let Some(task) = self.agg().store.get(&task_id) else {
            self.count_share("unknown_task");
            return Err(format!("no aggregation task `{task_id}` on this node"));
        };
        if !task.info.params.participants.contains(&from.to_string()) {
            return Err(format!(
                "peer {from} is not a participant of task {task_id}"
            ));
        }
        let expected = task.info.params.length as usize * shares::ELEMENT_BYTES + TAG_BYTES;
        if bytes as usize != expected || chunks != chunks_of(expected) {
            return Err(format!(
                "a sealed share of task {task_id} is {expected} bytes in {} chunks, not {bytes} in {chunks}",
                chunks_of(expected)
            ));
        }
        let inbox = self
            .inner
            .router
            .open(session, Protocol::AggReport, [from])
            .map_err(|e| e.to_string())?;
        let engine = self.clone();
        tokio::spawn(
            async move {
                let run =
                    engine.run_share_owner(inbox, from, task, report_id, encapped_key, expected);
                let _ = engine
                    .run_session(Protocol::AggReport, "owner", session, vec![from], run)
                    .await;
            }
            .in_current_span(),
        );
        Ok(())
    }

    async fn run_share_owner(
        &self,
        mut inbox: SessionInbox,
        from: PeerId,
        task: Arc<TaskEntry>,
        report_id: String,
        encapped_key: Vec<u8>,
        len: usize,
    ) -> Result<(), SessionError> {
        let session = inbox.session();
        let timeout = self.inner.round_timeout;
        let mut got = Self::receive_chunks(&mut inbox, &[from], len, timeout).await?;
        let ciphertext = got.remove(&from).unwrap_or_default();
        let verdict = self
            .open_share(&task, &report_id, encapped_key, ciphertext)
            .await;
        let (rejected, share) = match verdict {
            Ok(share) => (None, Some(share)),
            Err((code, message)) => {
                self.count_share(&code);
                info!(%report_id, %code, "share refused");
                (Some((code, message)), None)
            }
        };
        let send = self
            .send(from, session, Body::AggShareVerdict { rejected })
            .await
            .map_err(|e| unreachable_error(vec![(from, e)], "the share verdict"));
        let Some(share) = share else {
            return send;
        };
        if let Err(e) = send {
            task.release(&report_id);
            return Err(e);
        }
        let commit = inbox
            .collect("aggregation share commit", &[from], timeout, |b| match b {
                Body::AggShareCommit { commit } => Some(*commit),
                _ => None,
            })
            .await;
        match commit {
            Ok(c) if c[&from] => {
                task.commit(&report_id, &share).await.map_err(|e| {
                    task.release(&report_id);
                    SessionError::failed(format!("cannot store the share sum: {e}"))
                })?;
                self.count_share("accepted");
                self.send(from, session, Body::AggShareStored)
                    .await
                    .map_err(|e| unreachable_error(vec![(from, e)], "the storage confirmation"))
            }
            Ok(_) => {
                task.release(&report_id);
                self.count_share("dropped");
                Ok(())
            }
            Err(e) => {
                task.release(&report_id);
                Err(e)
            }
        }
    }

    /// Opens the sum of a task: agrees with t + 1 participants on the report set, gathers
    /// their share sums and interpolates.
    pub async fn collect_aggregation(&self, task_id: &str) -> Result<CollectResult, AggError> {
        let task = self
            .agg()
            .store
            .get(task_id)
            .ok_or_else(|| AggError::unknown_task(task_id))?;
        let local = self.inner.local;
        let peers = parse_peers(&task.info.params.participants).map_err(AggError::internal)?;
        let others: Vec<PeerId> = peers.iter().filter(|p| **p != local).copied().collect();
        let session = SessionId::random();
        let inbox = self
            .inner
            .router
            .open(session, Protocol::AggCollect, others.clone())
            .map_err(|e| AggError::session(session, e))?;
        let engine = self.clone();
        let run = async move { engine.run_collect(inbox, task, peers).await };
        self.run_session(Protocol::AggCollect, "collector", session, others, run)
            .await
            .map_err(|e| AggError::session(session, e))?
    }

    async fn run_collect(
        &self,
        mut inbox: SessionInbox,
        task: Arc<TaskEntry>,
        peers: Vec<PeerId>,
    ) -> Result<Result<CollectResult, AggError>, SessionError> {
        let session = inbox.session();
        let local = self.inner.local;
        let params = task.info.params.clone();
        let t = usize::from(params.threshold);
        let others: Vec<PeerId> = peers.iter().filter(|p| **p != local).copied().collect();
        let failures = self
            .broadcast(
                &others,
                session,
                &Body::AggCollectInvite {
                    task_id: params.task_id.clone(),
                },
            )
            .await;
        let reachable: Vec<PeerId> = others
            .iter()
            .filter(|p| !failures.iter().any(|(f, _)| f == *p))
            .copied()
            .collect();
        let timeout = self.inner.round_timeout;
        let sets = inbox
            .collect("aggregation report set", &reachable, timeout, |b| match b {
                Body::AggReportSet { digest, count } => Some((*digest, *count)),
                _ => None,
            })
            .await?;
        let own = task.snapshot().await;
        let mut groups: BTreeMap<([u8; 32], u64), Vec<PeerId>> = BTreeMap::new();
        groups
            .entry((own.digest, own.count))
            .or_default()
            .push(local);
        for (p, (d, c)) in &sets {
            groups.entry((*d, *c)).or_default().push(*p);
        }
        let best = groups
            .iter()
            .filter(|(_, members)| members.len() > t)
            .max_by_key(|((_, count), members)| (*count, members.len()));
        let refuse_all = |engine: &MpcEngine| {
            let engine = engine.clone();
            let reachable = reachable.clone();
            async move {
                let _ = engine
                    .broadcast(
                        &reachable,
                        session,
                        &Body::AggOpen {
                            digest: [0; 32],
                            send_sum: false,
                        },
                    )
                    .await;
            }
        };
        let Some(((digest, count), members)) = best else {
            refuse_all(self).await;
            let answered = sets.len() + 1;
            let summary: Vec<String> = groups
                .iter()
                .map(|((_, c), m)| format!("{} node(s) hold {c} reports", m.len()))
                .collect();
            let error = if answered <= t {
                AggError::new(
                    503,
                    "not_enough_participants",
                    format!(
                        "only {answered} of {} participants answered; t + 1 = {} are needed to open the sum (unreachable: {})",
                        peers.len(),
                        t + 1,
                        join_peers(&failures.iter().map(|(p, _)| *p).collect::<Vec<_>>())
                    ),
                )
            } else {
                AggError::new(
                    409,
                    "no_agreed_report_set",
                    format!(
                        "no t + 1 = {} participants hold the same set of reports ({}); the sum cannot be opened consistently",
                        t + 1,
                        summary.join("; ")
                    ),
                )
            };
            return Ok(Err(error));
        };
        let (digest, count, members) = (*digest, *count, members.clone());
        if count < params.min_reports && !self.inner.faults.collect_ignores_min_reports {
            refuse_all(self).await;
            return Ok(Err(AggError::new(
                409,
                "not_enough_reports",
                format!(
                    "collect refused: {count} reports are in (accepted by at least t + 1 = {} nodes), task {} needs min_reports = {}",
                    t + 1,
                    params.task_id,
                    params.min_reports
                ),
            )));
        }
        // t + 1 openers from the agreeing group, this node first when it is one of them.
        let mut chosen: Vec<PeerId> = Vec::new();
        if members.contains(&local) {
            chosen.push(local);
        }
        for m in &members {
            if chosen.len() > t {
                break;
            }
            if *m != local {
                chosen.push(*m);
            }
        }
        let remote_chosen: Vec<PeerId> = chosen.iter().filter(|p| **p != local).copied().collect();
        let not_chosen: Vec<PeerId> = reachable
            .iter()
            .filter(|p| !remote_chosen.contains(p))
            .copied()
            .collect();
        let _ = self
            .broadcast(
                &not_chosen,
                session,
                &Body::AggOpen {
                    digest,
                    send_sum: false,
                },
            )
            .await;
        let open = Body::AggOpen {
            digest,
            send_sum: true,
        };
        self.broadcast_round(&mut inbox, &remote_chosen, &open, "the open request")
            .await?;
        let len = params.length as usize * shares::ELEMENT_BYTES;
        let received = Self::receive_chunks(&mut inbox, &remote_chosen, len, timeout).await?;
        let mut points: Vec<(usize, Vec<Field>)> = Vec::new();
        for p in &chosen {
            let index = peers.iter().position(|q| q == p).unwrap_or(0);
            let sum = if *p == local {
                task.mark_opened(digest)
                    .await
                    .map_err(|e| SessionError::failed(e.to_string()))?;
                own.share_sum.clone()
            } else {
                shares::decode(&received[p], params.length as usize).map_err(|e| {
                    SessionError::blame(
                        vec![*p],
                        format!("participant {p} sent a malformed share sum: {e}"),
                    )
                })?
            };
            points.push((index, sum));
        }
        let sum = tokio::task::spawn_blocking(move || shares::reconstruct(&points))
            .await
            .map_err(|e| SessionError::failed(e.to_string()))?
            .map_err(|e| SessionError::failed(e.to_string()))?;
        chosen.sort();
        info!(task_id = %params.task_id, reports = count, "aggregate opened");
        Ok(Ok(CollectResult {
            task_id: params.task_id.clone(),
            sum: shares::to_integers(&sum),
            reports: count,
            report_set_digest: hex::encode(digest),
            opened_by: chosen.iter().map(ToString::to_string).collect(),
        }))
    }

    /// Answers a collect invitation: reports its report set, then opens when chosen.
    pub(super) fn join_aggregation_collect(
        &self,
        session: SessionId,
        from: PeerId,
        task_id: String,
    ) -> Result<(), String> {
        let Some(task) = self.agg().store.get(&task_id) else {
            return Err(format!("no aggregation task `{task_id}` on this node"));
        };
        if !task.info.params.participants.contains(&from.to_string()) {
            return Err(format!(
                "peer {from} is not a participant of task {task_id}"
            ));
        }
        let inbox = self
            .inner
            .router
            .open(session, Protocol::AggCollect, [from])
            .map_err(|e| e.to_string())?;
        let engine = self.clone();
        tokio::spawn(
            async move {
                let run = engine.run_collect_participant(inbox, from, task);
                let _ = engine
                    .run_session(
                        Protocol::AggCollect,
                        "participant",
                        session,
                        vec![from],
                        run,
                    )
                    .await;
            }
            .in_current_span(),
        );
        Ok(())
    }

    async fn run_collect_participant(
        &self,
        mut inbox: SessionInbox,
        from: PeerId,
        task: Arc<TaskEntry>,
    ) -> Result<(), SessionError> {
        let session = inbox.session();
        let snapshot = task.snapshot().await;
        self.send(
            from,
            session,
            Body::AggReportSet {
                digest: snapshot.digest,
                count: snapshot.count,
            },
        )
        .await
        .map_err(|e| unreachable_error(vec![(from, e)], "the report set"))?;
        let timeout = self.inner.round_timeout;
        let open = inbox
            .collect("aggregation open", &[from], timeout, |b| match b {
                Body::AggOpen { digest, send_sum } => Some((*digest, *send_sum)),
                _ => None,
            })
            .await?;
        let (digest, send_sum) = open[&from];
        if !send_sum {
            return Ok(());
        }
        if digest != snapshot.digest {
            return Err(SessionError::failed(
                "asked to open a report set this node did not announce",
            ));
        }
        // Every participant enforces the minimum batch size itself before its share sum
        // leaves: a collector that skips the check learns nothing from an honest one.
        let min_reports = task.info.params.min_reports;
        if snapshot.count < min_reports {
            return Err(SessionError::blame(
                vec![from],
                format!(
                    "collector {from} asked for the share sum of {} report(s) of task {}, which needs min_reports = {min_reports}; refused",
                    snapshot.count, task.info.params.task_id
                ),
            ));
        }
        task.mark_opened(digest)
            .await
            .map_err(|e| SessionError::failed(e.to_string()))?;
        let bytes = shares::encode(&snapshot.share_sum);
        self.send_chunks(from, session, bytes.into())
            .await
            .map_err(|e| unreachable_error(vec![(from, e)], "the share sum"))?;
        info!(task_id = %task.info.params.task_id, reports = snapshot.count, "share sum opened");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(n: usize, length: u32) -> (PeerId, TaskParams) {
        let mut peers: Vec<String> = (0..n).map(|_| PeerId::random().to_string()).collect();
        peers.sort();
        let local = peers[0].parse().unwrap();
        let p = TaskParams {
            task_id: "ab".repeat(16),
            participants: peers,
            threshold: 1,
            length,
            modulus: shares::MODULUS,
            min_reports: 1,
            created_at: 0,
            created_by: None,
        };
        (local, p)
    }

    #[test]
    fn reports_are_bounded_by_participants_times_length() {
        let (local, p) = params(3, MAX_LENGTH);
        assert!(check_params(local, &p).is_ok());
        let (local, p) = params(MAX_PARTICIPANTS, MAX_LENGTH);
        let e = check_params(local, &p).unwrap_err();
        assert!(
            e.contains("make reports of 1365 MiB; at most 512 MiB"),
            "{e}"
        );
        let (local, p) = params(MAX_PARTICIPANTS, MAX_LENGTH / 4);
        assert!(check_params(local, &p).is_ok());
    }
}
