//! Secure aggregation: clients Shamir-share vectors over a prime field (threshold t of n
//! nodes), seal share i to node i's HPKE key and post the bundle to any node, which relays
//! each sealed share to its owner; nodes add shares to a persisted running share sum of the
//! task's current batch and reveal only the sum of a batch, after `min_reports` reports,
//! once a quorum of participants voted for the exact set of reports it covers.
//!
//! Three protocols run over the session layer (deadlines, participant checks, buffering,
//! metrics and `mpc_session` spans come from there), each with its own module:
//! - [`create`] (`agg_create`): invite → accept (each participant's signed HPKE key) →
//!   commit (everyone's keys) → stored → active. The task is usable only once every
//!   participant stored it.
//! - [`relay`] (`agg_report`): reports posted to a node go out in batches; each owner gets
//!   its sealed share of every report of the batch (inside the invite, or in chunks after it
//!   for long vectors), decrypts and checks each (verdicts), and only a report that every
//!   reachable owner accepted, and at least t + 1 did, is committed. An I/O-free core
//!   ([`relay::core`]) makes every check and decision.
//! - [`collect`] (`agg_collect`): every reachable participant freezes the batch and
//!   reports its set, signed; the collector proposes a set t + 1 froze, a quorum of
//!   ⌈(n + t + 1) / 2⌉ votes for it (each participant once per batch), and t + 1 that froze
//!   exactly it stream their share sums against that certificate. Its core
//!   ([`collect::core`]) makes every check; no two sets of one batch are ever opened.

mod answers;
pub mod client;
pub mod collect;
pub mod create;
pub mod encryption;
#[cfg(test)]
mod in_memory;
pub mod relay;
pub mod shares;
pub mod store;
pub mod validity;

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use libp2p::PeerId;
use libp2p::identity::Keypair;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::session::SessionError;
use super::wire::SessionId;
use super::{MpcEngine, parse_peers};
use encryption::EncryptionKey;
use store::{AggregationStore, TaskInfo, TaskParams};

/// Longest vector a task may have.
pub const MAX_LENGTH: u32 = 1 << 21;
/// Most participants of a task.
pub const MAX_PARTICIPANTS: usize = 64;
/// Most client keys (and most collector keys) a task names.
pub const MAX_TASK_CLIENTS: usize = 256;
/// Largest report a task may take (participants × sealed share of the vector, base64): the
/// API reads a report body up to its task's size, so this bounds what one request can hold.
pub const MAX_REPORT_BYTES: usize = 512 * 1024 * 1024;
/// HPKE adds this many bytes (the Poly1305 tag) to a share.
pub const TAG_BYTES: usize = 16;

/// The largest JSON body of a [`Report`] of a task of `participants` and vector `length`:
/// per participant its peer id, a 32-byte encapsulated key and a ciphertext of `8 × length`
/// bytes plus the tag, both base64, and a client's signature (hex), with room for field
/// names, quotes and whitespace. The
/// API reads a report body up to this size.
pub fn report_json_bytes(participants: usize, length: u32) -> usize {
    /// Room for the fixed fields (names, braces, whitespace) and around one element.
    const FIXED: usize = 4 * 1024;
    const ELEMENT: usize = 64;
    /// The longest peer id in text (52 characters for an Ed25519 key) and its room.
    const PEER_ID: usize = 64 + ELEMENT;
    /// A client's signature of a share, hex, and its room.
    const SIGNATURE: usize = 128 + ELEMENT;
    let base64 = |n: usize| n.div_ceil(3) * 4;
    let ciphertext = base64(shares::ELEMENT_BYTES * length as usize + TAG_BYTES);
    FIXED + participants * (PEER_ID + base64(32) + ciphertext + SIGNATURE + 3 * ELEMENT)
}

/// This node's aggregation state: its tasks and its HPKE key.
pub struct Aggregation {
    pub store: AggregationStore,
    /// Reports posted to this node, waiting for relay, per task.
    pub relays: relay::RelayQueues,
    pub key: EncryptionKey,
    pub identity: Keypair,
    /// Collect authorizations used through this node: request id → expiry (a replayed one is
    /// refused; entries go once expired).
    pub collect_requests: std::sync::Mutex<std::collections::HashMap<String, u64>>,
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
            "unsigned_report" => (403, "unsigned_report"),
            "unknown_client" => (403, "unknown_client"),
            "bad_signature" => (403, "bad_signature"),
            "not_enough_participants" => (503, "not_enough_participants"),
            "bad_ciphertext" => (400, "bad_ciphertext"),
            "wrong_length" => (400, "wrong_length"),
            "value_out_of_field" => (400, "value_out_of_field"),
            "malformed_report" => (400, "malformed_report"),
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
    /// Required for raw input; validated input: n − 1 when absent (and only that).
    pub threshold: Option<u16>,
    /// Required for raw input; validated input: its own length when absent (and only that).
    pub length: Option<u32>,
    pub input: validity::InputType,
    pub modulus: Option<u64>,
    pub min_reports: u64,
    /// Client public keys (hex); empty: an open task.
    pub clients: Vec<String>,
    /// Collector public keys (hex); empty: anyone may collect.
    pub collectors: Vec<String>,
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
    /// The client's Ed25519 signature of this share (hex), for a task that names clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// Body of `POST /v1/aggregations/{id}/reports`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// 32 hex digits chosen by the client at random.
    pub report_id: String,
    /// One per participant.
    pub shares: Vec<SealedShare>,
    /// The client's Ed25519 public key (hex) that signed every share, for a task that names
    /// clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
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
    /// The batch opened.
    pub batch: u64,
    pub sum: Vec<u64>,
    pub reports: u64,
    /// SHA-256 over the sorted report ids the sum covers, hex.
    pub report_set_digest: String,
    /// The participants whose share sums were combined.
    pub opened_by: Vec<String>,
    /// Whether one more participant's share sum than the t + 1 needed checked the sum (a
    /// wrong share sum would have been caught); false when only t + 1 holders of the set
    /// answered.
    pub cross_checked: bool,
}

/// `GET /v1/aggregations/{id}`: parameters, keys, and what this node holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskView {
    #[serde(flatten)]
    pub task: TaskInfo,
    /// Reports accepted by this node, in every batch.
    pub reports_here: u64,
    /// The batch this node takes new reports into.
    pub current_batch: u64,
    /// Reports accepted by this node in the current batch.
    pub reports_in_current_batch: u64,
    /// The batches this node has seen opened (it released its share sum, or collected).
    pub opened_batches: Vec<u64>,
    /// `open` (any report is taken) or `clients` (only reports signed by a listed client).
    pub access: String,
    /// The batch a collect opens unless told otherwise.
    pub next_collect_batch: u64,
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

pub(crate) fn is_hex_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The share length, in 8-byte elements, that bounds a report of task `p`: the vector length
/// of a raw task, the (padded) Prio3 share of a validated one.
pub fn report_length(p: &TaskParams) -> Result<u32, String> {
    match validity::Validator::new(p.input, p.participants.len())? {
        None => Ok(p.length),
        Some(v) => Ok(v.share_bytes().div_ceil(shares::ELEMENT_BYTES) as u32),
    }
}

/// Checks task parameters on a node that is to hold the task; `Ok` holds the sorted
/// participants.
pub fn check_params(local: PeerId, p: &TaskParams) -> Result<Vec<PeerId>, String> {
    let sorted = check_shape(p)?;
    if !sorted.contains(&local) {
        return Err(format!(
            "this node ({local}) must be one of the participants"
        ));
    }
    Ok(sorted)
}

/// Checks task parameters as anyone can (a client too): participants sorted and unique, 2 to
/// [`MAX_PARTICIPANTS`] of them, 1 <= t < n, length, report size, modulus, `min_reports`,
/// task id. `Ok` holds the participants.
pub fn check_shape(p: &TaskParams) -> Result<Vec<PeerId>, String> {
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
    if p.input.validated() {
        p.input.check()?;
        if n > validity::MAX_VALIDATED_PARTICIPANTS {
            return Err(format!(
                "{n} participants: a validated task ({}) has at most {}",
                p.input.name(),
                validity::MAX_VALIDATED_PARTICIPANTS
            ));
        }
        if usize::from(p.threshold) != n - 1 {
            return Err(format!(
                "threshold {} does not fit a validated task ({}): its reports are Prio3 shares that open only with all {n} participants (t = {}); leave threshold out",
                p.threshold,
                p.input.name(),
                n - 1
            ));
        }
        if Some(p.length) != p.input.output_len() {
            return Err(format!(
                "length {} does not fit input {}: its sum has {} values; leave length out",
                p.length,
                p.input.name(),
                p.input.output_len().unwrap_or(0)
            ));
        }
    }
    let report = report_json_bytes(n, report_length(p)?);
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
    for (what, keys) in [("clients", &p.clients), ("collectors", &p.collectors)] {
        if keys.len() > MAX_TASK_CLIENTS {
            return Err(format!(
                "{} {what}; a task names at most {MAX_TASK_CLIENTS}",
                keys.len()
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, c) in keys.iter().enumerate() {
            crate::mpc::policy::parse_client(c).map_err(|e| format!("{what}[{i}]: {e}"))?;
            if !seen.insert(c.to_ascii_lowercase()) {
                return Err(format!("{what}[{i}]: `{c}` is listed twice"));
            }
        }
    }
    if !is_hex_id(&p.task_id) {
        return Err(format!(
            "`{}` is not a task id (32 lowercase hex digits)",
            p.task_id
        ));
    }
    Ok(sorted)
}

impl MpcEngine {
    pub(super) fn agg(&self) -> &Aggregation {
        &self.inner.aggregation
    }

    /// The task `task_id`, as `GET /v1/aggregations/{id}` shows it.
    pub async fn aggregation_task(&self, task_id: &str) -> Result<TaskView, AggError> {
        let task = self
            .agg()
            .store
            .get(task_id)
            .ok_or_else(|| AggError::unknown_task(task_id))?;
        Ok(Self::task_view(&task).await)
    }

    /// Every task held here, as `GET /v1/aggregations` shows them, ordered by task id.
    pub async fn aggregation_tasks(&self) -> Vec<TaskView> {
        let mut views = Vec::new();
        for task in self.agg().store.list() {
            views.push(Self::task_view(&task).await);
        }
        views
    }

    async fn task_view(task: &store::TaskEntry) -> TaskView {
        let state = task.state.lock().await;
        TaskView {
            task: task.info.clone(),
            reports_here: state.report_count(),
            current_batch: state.current,
            reports_in_current_batch: state
                .batches
                .get(&state.current)
                .map_or(0, |b| b.report_ids.len() as u64),
            opened_batches: state.opened_batches(),
            next_collect_batch: state.default_collect_batch(),
            access: if task.info.params.clients.is_empty() {
                "open".into()
            } else {
                "clients".into()
            },
        }
    }

    /// A task held here and its shape as this node sees it.
    fn task_and_shape(
        &self,
        task_id: &str,
    ) -> Result<(std::sync::Arc<store::TaskEntry>, relay::core::TaskShape), AggError> {
        let task = self
            .agg()
            .store
            .get(task_id)
            .ok_or_else(|| AggError::unknown_task(task_id))?;
        let shape =
            relay::core::TaskShape::of_task(&task, self.inner.local).map_err(AggError::internal)?;
        Ok((task, shape))
    }

    /// The number of participants and the vector length of a task (no lock taken).
    pub fn task_shape(&self, task_id: &str) -> Result<(usize, u32), AggError> {
        let task = self
            .agg()
            .store
            .get(task_id)
            .ok_or_else(|| AggError::unknown_task(task_id))?;
        let p = &task.info.params;
        let length = match &task.validation {
            Some((v, _)) => v.share_bytes().div_ceil(shares::ELEMENT_BYTES) as u32,
            None => p.length,
        };
        Ok((p.participants.len(), length))
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
            clients: Vec::new(),
            collectors: Vec::new(),
            input: Default::default(),
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
