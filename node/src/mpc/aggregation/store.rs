//! Aggregation tasks on disk, under `<data-dir>/aggregation/`: per task, `<id>.task.json`
//! (parameters and participants' keys, written once) and `<id>.state.json` (per batch: the
//! accepted report ids, this node's running share sum, its vote and what it released;
//! replaced atomically once per group of accepted reports: see [`TaskEntry::commit`]).
//! The share sums are Shamir shares, never a client's plaintext.
//!
//! Batches: a task's reports fall into consecutive batches 0, 1, 2, ... A report is stored
//! in the batch its relay names (never below the batch this node was taking when it
//! reserved the report id). [`TaskEntry::freeze`] closes a batch for good: new reports go
//! to the next one, reports already under way into it are waited for, and from then on its
//! report set never changes (see `collect` for how a frozen batch is opened).
//!
//! A new task's file is first written as `<id>.pending.json` (not loaded, takes no reports)
//! and renamed to `<id>.task.json` once the coordinator confirmed that every participant
//! stored the task. A pending task whose confirmation never comes is removed when its
//! session ends; pending files found at start are removed with their state, never loaded.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::shares::{self, Field};
use super::validity::{InputType, VERIFY_KEY_BYTES, Validator};

const PENDING_SUFFIX: &str = ".pending.json";

/// Version of the task file format.
pub const TASK_FILE_FORMAT: u32 = 1;
/// Version of the state file format this node writes (format 1, one report set per task,
/// is read as batch 0).
pub const STATE_FILE_FORMAT: u32 = 2;

/// The parameters every participant of a task stores identically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskParams {
    pub task_id: String,
    /// Peer ids, sorted; participant `i` holds shares at x = i + 1.
    pub participants: Vec<String>,
    /// Shamir threshold t: t + 1 nodes open the sum, any t learn nothing.
    pub threshold: u16,
    /// Vector length L.
    pub length: u32,
    /// The field modulus (always [`shares::MODULUS`]).
    pub modulus: u64,
    /// Reports needed before the sum may be opened.
    pub min_reports: u64,
    /// Seconds since the Unix epoch, set by the creating node.
    pub created_at: u64,
    /// The peer that coordinated the task's creation (tasks made before this field: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// The clients whose reports the task takes: Ed25519 public keys, hex. Every share of a
    /// report must be signed by one of them, and each counts once per batch towards
    /// `min_reports`. Empty: any report (an open task).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<String>,
    /// The collectors that may open a batch: Ed25519 public keys, hex; every participant
    /// checks a collect's signature before it answers. Empty: anyone may collect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub collectors: Vec<String>,
    /// What a report holds: `raw` (Shamir-shared vectors, unvalidated) or a validated type
    /// whose reports carry a Prio3 validity proof (`count`, `sum`, `histogram`).
    #[serde(default, skip_serializing_if = "is_raw")]
    pub input: InputType,
}

fn is_raw(input: &InputType) -> bool {
    *input == InputType::Raw
}

/// One participant's published encryption key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantKey {
    pub peer_id: String,
    /// libp2p identity public key (protobuf encoding), hex.
    pub identity_public_key: String,
    /// X25519 HPKE public key, hex.
    pub hpke_public_key: String,
    /// Identity-key signature over the HPKE key binding, hex.
    pub signature: String,
}

/// A task as stored and as served by `GET /v1/aggregations/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    #[serde(flatten)]
    pub params: TaskParams,
    /// In participant order.
    pub keys: Vec<ParticipantKey>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskFile {
    format: u32,
    task: TaskInfo,
    /// The Prio3 verify key of a validated task (hex): shared by the participants, never
    /// shown to clients or by the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    verify_key: Option<String>,
}

/// The state file of format 1: one report set per task.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFileV1 {
    #[allow(dead_code)]
    format: u32,
    report_ids: Vec<String>,
    share_sum: String,
    opened: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    format: u32,
    /// The batch new reports go to.
    current: u64,
    batches: Vec<BatchFile>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchFile {
    batch: u64,
    report_ids: Vec<String>,
    /// This node's share sum of the batch, little-endian 8-byte elements, base64.
    share_sum: String,
    /// The report set this node voted to open for this batch: digest (hex) and count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vote: Option<(String, u64)>,
    /// The report ids of that set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    vote_ids: Vec<String>,
    /// Digest (hex) of the report set whose share sum this node released or opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    released: Option<String>,
    /// Whether this node collected (opened) the batch's sum as collector.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    collected: bool,
    /// The client (public key, hex) of each report, for a task that names clients.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    report_clients: BTreeMap<String, String>,
}

/// A failure of the task store.
#[derive(Debug, thiserror::Error)]
pub enum TaskStoreError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

/// A report set: the digest of its sorted report ids and how many there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReportSet {
    pub digest: [u8; 32],
    pub count: u64,
}

/// One batch of a task on this node.
#[derive(Clone)]
pub struct Batch {
    pub report_ids: BTreeSet<String>,
    pub share_sum: Vec<Field>,
    /// The report set this node voted to open for this batch (at most one, ever).
    pub vote: Option<ReportSet>,
    /// The report ids of the set it voted for (no report id is voted for in two batches).
    pub vote_ids: BTreeSet<String>,
    /// The report set whose share sum this node released (or opened, as collector).
    pub released: Option<[u8; 32]>,
    /// Whether this node opened the batch's sum as collector.
    pub collected: bool,
    /// The client of each report (a task that names clients; empty for an open task).
    pub report_clients: BTreeMap<String, String>,
}

impl Batch {
    fn empty(length: usize) -> Self {
        Self {
            report_ids: BTreeSet::new(),
            share_sum: vec![Field::from(0u64); length],
            vote: None,
            vote_ids: BTreeSet::new(),
            released: None,
            collected: false,
            report_clients: BTreeMap::new(),
        }
    }

    /// What counts towards `min_reports`: the distinct clients of a task that names clients
    /// (each counts once per batch), else the reports.
    pub fn clients(&self) -> u64 {
        if self.report_clients.is_empty() {
            self.report_ids.len() as u64
        } else {
            self.report_clients.values().collect::<BTreeSet<_>>().len() as u64
        }
    }

    /// This batch's report set here.
    pub fn set(&self) -> ReportSet {
        ReportSet {
            digest: report_set_digest(&self.report_ids),
            count: self.report_ids.len() as u64,
        }
    }
}

/// The mutable part of a task.
#[derive(Clone)]
pub struct TaskState {
    /// The batch that new reports go to; every batch below it is frozen (or closing).
    pub current: u64,
    /// Batches that hold reports or a vote, by number.
    pub batches: BTreeMap<u64, Batch>,
}

impl TaskState {
    /// Reports accepted here, in every batch.
    pub fn report_count(&self) -> u64 {
        self.batches
            .values()
            .map(|b| b.report_ids.len() as u64)
            .sum()
    }

    /// The batch a collect opens unless told otherwise: the lowest frozen batch holding
    /// reports that this node has not seen opened (a collect of it failed or was never
    /// finished here), else the batch taking reports.
    pub fn default_collect_batch(&self) -> u64 {
        self.batches
            .iter()
            .find(|(n, b)| {
                **n < self.current
                    && !b.report_ids.is_empty()
                    && b.released.is_none()
                    && !b.collected
            })
            .map_or(self.current, |(n, _)| *n)
    }

    /// The batches this node has seen opened (it released its share sum, or collected).
    pub fn opened_batches(&self) -> Vec<u64> {
        self.batches
            .iter()
            .filter(|(_, b)| b.released.is_some() || b.collected)
            .map(|(n, _)| *n)
            .collect()
    }
}

/// A batch as this node holds it, taken under its lock.
#[derive(Clone)]
pub struct Snapshot {
    pub batch: u64,
    pub set: ReportSet,
    /// The report ids of `set`.
    pub report_ids: BTreeSet<String>,
    /// What counts towards `min_reports` (see [`Batch::clients`]).
    pub clients: u64,
    pub share_sum: Vec<Field>,
    /// Frozen: its report set here never changes again.
    pub frozen: bool,
    pub vote: Option<ReportSet>,
    pub released: Option<[u8; 32]>,
}

/// One task held by this node.
pub struct TaskEntry {
    pub info: TaskInfo,
    /// This node's participant index.
    pub index: usize,
    /// A validated task's Prio3 instance and verify key.
    pub validation: Option<(Arc<Validator>, [u8; VERIFY_KEY_BYTES])>,
    /// Held across the state file write so that writes land in order (one per group commit).
    pub state: tokio::sync::Mutex<TaskState>,
    /// Accepted and in-flight report ids, so a replay is refused before it is decrypted.
    seen: Mutex<HashSet<String>>,
    /// Report ids reserved and not yet stored or released, with the batch this node was
    /// taking when it reserved them (the lowest batch they may be stored in).
    in_flight: Mutex<HashMap<String, u64>>,
    /// `state.current`, readable without the lock.
    current: AtomicU64,
    /// Batches below this one take no more reports (frozen, not only closing).
    closed_below: AtomicU64,
    /// Accepted shares waiting for the next state file write (group commit).
    pending: Mutex<Vec<PendingCommit>>,
    state_path: PathBuf,
}

/// One accepted share waiting to be written, and who waits for the outcome.
struct PendingCommit {
    report_id: String,
    batch: u64,
    client: Option<String>,
    share: Vec<Field>,
    done: tokio::sync::oneshot::Sender<Result<u64, String>>,
}

/// Digest of a set of report ids.
pub fn report_set_digest(ids: &BTreeSet<String>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((ids.len() as u64).to_le_bytes());
    for id in ids {
        h.update(id.as_bytes());
        h.update(b"\n");
    }
    h.finalize().into()
}

impl TaskEntry {
    fn new(
        info: TaskInfo,
        index: usize,
        validation: Option<(Arc<Validator>, [u8; VERIFY_KEY_BYTES])>,
        state: TaskState,
        state_path: PathBuf,
    ) -> Self {
        let seen = state
            .batches
            .values()
            .flat_map(|b| b.report_ids.iter().cloned())
            .collect();
        Self {
            index,
            validation,
            seen: Mutex::new(seen),
            in_flight: Mutex::new(HashMap::new()),
            current: AtomicU64::new(state.current),
            // After a start nothing is under way: every batch below the current one is frozen.
            closed_below: AtomicU64::new(state.current),
            pending: Mutex::new(Vec::new()),
            state: tokio::sync::Mutex::new(state),
            state_path,
            info,
        }
    }

    /// The batch new reports go to.
    pub fn current_batch(&self) -> u64 {
        self.current.load(Ordering::SeqCst)
    }

    /// Reserves `report_id` for the current batch (or a later one); false when it was
    /// accepted or is being accepted already.
    pub fn reserve(&self, report_id: &str) -> bool {
        let fresh = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(report_id.to_string());
        if fresh {
            self.in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(report_id.to_string(), self.current_batch());
        }
        fresh
    }

    /// The lowest batch a reserved report may be stored in (`None`: not reserved).
    pub fn reserved_batch(&self, report_id: &str) -> Option<u64> {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(report_id)
            .copied()
    }

    /// Ends a reservation without freeing the report id: a validated task's report refused
    /// for its proof or encoding keeps its id (its Prio3 nonce) used, so the same query point
    /// is never checked twice (until a restart, which forgets refused ids).
    pub fn burn(&self, report_id: &str) {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(report_id);
    }

    /// Releases a reservation that was not committed.
    pub fn release(&self, report_id: &str) {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(report_id);
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(report_id);
    }

    /// Adds an accepted share to the sum of `batch` and persists the state before
    /// returning. Refused when that batch is frozen.
    ///
    /// Group commit: shares that arrive while a write is running are added together and
    /// written once, by whichever caller takes the state lock next; each caller returns once
    /// the write holding its share is durable. One state file write (and fsync) serves many
    /// reports under load, instead of one each.
    pub async fn commit(
        &self,
        report_id: &str,
        share: &[Field],
        batch: u64,
        client: Option<String>,
    ) -> Result<u64, TaskStoreError> {
        let (done, outcome) = tokio::sync::oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(PendingCommit {
                report_id: report_id.to_string(),
                batch,
                client,
                share: share.to_vec(),
                done,
            });
        {
            let mut state = self.state.lock().await;
            let batch =
                std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
            if !batch.is_empty() {
                self.commit_batch(&mut state, batch).await;
            }
        }
        let result = match outcome.await {
            Ok(result) => result.map_err(TaskStoreError::Other),
            Err(_) => Err(TaskStoreError::Other(
                "the write holding this share was interrupted".into(),
            )),
        };
        if result.is_ok() {
            self.in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(report_id);
        }
        result
    }

    /// Adds `batch` to a copy of the state, writes it, and makes it current once durable.
    async fn commit_batch(&self, state: &mut TaskState, batch: Vec<PendingCommit>) {
        let closed_below = self.closed_below.load(Ordering::SeqCst);
        let length = self.info.params.length as usize;
        let mut next = state.clone();
        let mut waiting = Vec::with_capacity(batch.len());
        for p in batch {
            if p.batch < closed_below {
                let _ = p.done.send(Err(format!(
                    "batch {} of this task is frozen (its sum is being or was opened); it takes no more reports",
                    p.batch
                )));
                continue;
            }
            if p.batch > state.current.saturating_add(1) {
                let _ = p.done.send(Err(format!(
                    "batch {} is ahead of this node, which takes reports into batch {} (or the next)",
                    p.batch, state.current
                )));
                continue;
            }
            let target = next
                .batches
                .entry(p.batch)
                .or_insert_with(|| Batch::empty(length));
            match shares::add_assign(&mut target.share_sum, &p.share) {
                Ok(()) => {
                    if let Some(client) = p.client {
                        target.report_clients.insert(p.report_id.clone(), client);
                    }
                    target.report_ids.insert(p.report_id);
                    waiting.push(p.done);
                }
                Err(e) => {
                    let _ = p.done.send(Err(e.to_string()));
                }
            }
        }
        if waiting.is_empty() {
            return;
        }
        match self.persist(&next).await {
            Ok(()) => {
                *state = next;
                let count = state.report_count();
                for done in waiting {
                    let _ = done.send(Ok(count));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for done in waiting {
                    let _ = done.send(Err(message.clone()));
                }
            }
        }
    }

    /// Batch `batch` as held here.
    pub async fn snapshot(&self, batch: u64) -> Snapshot {
        let state = self.state.lock().await;
        self.snapshot_of(&state, batch)
    }

    fn snapshot_of(&self, state: &TaskState, batch: u64) -> Snapshot {
        let empty;
        let b = match state.batches.get(&batch) {
            Some(b) => b,
            None => {
                empty = Batch::empty(self.info.params.length as usize);
                &empty
            }
        };
        Snapshot {
            batch,
            set: b.set(),
            report_ids: b.report_ids.clone(),
            clients: b.clients(),
            share_sum: b.share_sum.clone(),
            frozen: batch < self.closed_below.load(Ordering::SeqCst),
            vote: b.vote,
            released: b.released,
        }
    }

    /// Number of reports accepted here, in every batch.
    pub async fn report_count(&self) -> u64 {
        self.state.lock().await.report_count()
    }

    /// Freezes `batch` (and every batch below it): new reports go to a later batch (durable
    /// before this returns), reports reserved for it or below are waited for until `wait`
    /// (their relay decides; one whose commit comes later is refused), and from then on its
    /// report set here never changes. Returns the frozen batch.
    pub async fn freeze(&self, batch: u64, wait: Duration) -> Result<Snapshot, TaskStoreError> {
        let after = batch
            .checked_add(1)
            .ok_or_else(|| TaskStoreError::Other(format!("batch {batch} is out of range")))?;
        {
            let mut state = self.state.lock().await;
            if state.current <= batch {
                let mut next = state.clone();
                next.current = after;
                self.persist(&next).await?;
                *state = next;
                self.current.store(after, Ordering::SeqCst);
            }
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let under_way = self
                .in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .any(|b| *b <= batch);
            if !under_way || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let state = self.state.lock().await;
        self.closed_below.fetch_max(after, Ordering::SeqCst);
        Ok(self.snapshot_of(&state, batch))
    }

    /// Records this node's vote for `set` (report ids `ids`, checked against its digest by
    /// the caller) as the report set of `batch`, durable before this returns. A node votes
    /// once per batch: the vote in force is returned, which is `set` unless another one was
    /// recorded before. `Ok(Err(why))`: no vote, because a report of `ids` is in another
    /// batch here (held, or in the set voted for there): a report counts in one batch only.
    pub async fn vote(
        &self,
        batch: u64,
        set: ReportSet,
        ids: &[String],
    ) -> Result<Result<ReportSet, String>, TaskStoreError> {
        let mut state = self.state.lock().await;
        if let Some(v) = state.batches.get(&batch).and_then(|b| b.vote) {
            return Ok(Ok(v));
        }
        for (n, b) in state.batches.iter().filter(|(n, _)| **n != batch) {
            if let Some(id) = ids
                .iter()
                .find(|id| b.report_ids.contains(*id) || b.vote_ids.contains(*id))
            {
                return Ok(Err(format!(
                    "report {id} of the proposed set is in batch {n} here (held, or voted for); a report counts in one batch only"
                )));
            }
        }
        let mut next = state.clone();
        let entry = next
            .batches
            .entry(batch)
            .or_insert_with(|| Batch::empty(self.info.params.length as usize));
        entry.vote = Some(set);
        entry.vote_ids = ids.iter().cloned().collect();
        self.persist(&next).await?;
        *state = next;
        Ok(Ok(set))
    }

    /// Records that the share sum of report set `digest` of `batch` is released (durable
    /// before this returns); refuses a different set of the same batch (the difference of
    /// two opened sums would reveal the reports in between).
    pub async fn mark_released(&self, batch: u64, digest: [u8; 32]) -> Result<(), TaskStoreError> {
        let mut state = self.state.lock().await;
        match state.batches.get(&batch).and_then(|b| b.released) {
            Some(d) if d == digest => Ok(()),
            Some(_) => Err(TaskStoreError::Other(format!(
                "this node released the sum of a different report set of batch {batch} already; releasing another would reveal the difference"
            ))),
            None => {
                let mut next = state.clone();
                next.batches
                    .entry(batch)
                    .or_insert_with(|| Batch::empty(self.info.params.length as usize))
                    .released = Some(digest);
                self.persist(&next).await?;
                *state = next;
                Ok(())
            }
        }
    }

    /// Records that this node opened the sum of `batch` as collector.
    pub async fn mark_collected(&self, batch: u64) -> Result<(), TaskStoreError> {
        let mut state = self.state.lock().await;
        if state.batches.get(&batch).is_some_and(|b| b.collected) {
            return Ok(());
        }
        let mut next = state.clone();
        next.batches
            .entry(batch)
            .or_insert_with(|| Batch::empty(self.info.params.length as usize))
            .collected = true;
        self.persist(&next).await?;
        *state = next;
        Ok(())
    }

    /// The batch a collect opens unless told otherwise (see [`TaskState::default_collect_batch`]).
    pub async fn default_collect_batch(&self) -> u64 {
        self.state.lock().await.default_collect_batch()
    }

    async fn persist(&self, state: &TaskState) -> Result<(), TaskStoreError> {
        let file = StateFile {
            format: STATE_FILE_FORMAT,
            current: state.current,
            batches: state
                .batches
                .iter()
                .map(|(n, b)| BatchFile {
                    batch: *n,
                    report_ids: b.report_ids.iter().cloned().collect(),
                    share_sum: B64.encode(shares::encode(&b.share_sum)),
                    vote: b.vote.map(|v| (hex::encode(v.digest), v.count)),
                    vote_ids: b.vote_ids.iter().cloned().collect(),
                    released: b.released.map(hex::encode),
                    collected: b.collected,
                    report_clients: b.report_clients.clone(),
                })
                .collect(),
        };
        let bytes = serde_json::to_vec(&file).map_err(|e| TaskStoreError::Other(e.to_string()))?;
        let path = self.state_path.clone();
        tokio::task::spawn_blocking(move || replace_atomically(&path, &bytes))
            .await
            .map_err(|e| TaskStoreError::Other(format!("the store task failed: {e}")))?
    }
}

/// What [`AggregationStore::open`] found besides valid tasks.
#[derive(Debug, Default)]
pub struct OpenReport {
    /// Task files that could not be loaded (left in place), with the reason.
    pub unreadable: Vec<(PathBuf, String)>,
    /// Tasks whose creation never completed (pending at the last stop), removed.
    pub removed_pending: Vec<PathBuf>,
}

/// The aggregation tasks of this node.
#[derive(Clone)]
pub struct AggregationStore {
    dir: PathBuf,
    tasks: Arc<RwLock<HashMap<String, Arc<TaskEntry>>>>,
}

impl AggregationStore {
    /// Opens `<data_dir>/aggregation/`, loading every task; returns unreadable files too.
    /// Pending tasks (creation never confirmed) are removed.
    pub fn open(data_dir: &Path, local_peer: &str) -> Result<(Self, OpenReport), TaskStoreError> {
        let dir = data_dir.join("aggregation");
        let state = crate::atomic_file::open_state_dir(&dir).map_err(|source| {
            TaskStoreError::CreateDir {
                path: dir.clone(),
                source,
            }
        })?;
        let mut tasks = HashMap::new();
        let mut unreadable = Vec::new();
        let mut removed_pending = Vec::new();
        for (path, name) in state.files {
            if let Some(task_id) = name.strip_suffix(PENDING_SUFFIX) {
                let files = [path.clone(), dir.join(format!("{task_id}.state.json"))];
                crate::atomic_file::remove(&files).map_err(|source| TaskStoreError::Write {
                    path: path.clone(),
                    source,
                })?;
                removed_pending.push(path);
                continue;
            }
            let Some(task_id) = name.strip_suffix(".task.json") else {
                continue;
            };
            match load_task(&dir, task_id, local_peer) {
                Ok(entry) => {
                    tasks.insert(task_id.to_string(), Arc::new(entry));
                }
                Err(reason) => unreadable.push((path, reason)),
            }
        }
        Ok((
            Self {
                dir,
                tasks: Arc::new(RwLock::new(tasks)),
            },
            OpenReport {
                unreadable,
                removed_pending,
            },
        ))
    }

    /// The directory of the task files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A task by id.
    pub fn get(&self, task_id: &str) -> Option<Arc<TaskEntry>> {
        self.tasks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(task_id)
            .cloned()
    }

    /// Every task held here, ordered by task id.
    pub fn list(&self) -> Vec<Arc<TaskEntry>> {
        let tasks = self.tasks.read().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<_> = tasks.values().cloned().collect();
        list.sort_by(|a, b| a.info.params.task_id.cmp(&b.info.params.task_id));
        list
    }

    /// How many tasks held here were created by `peer`.
    pub fn count_created_by(&self, peer: &str) -> usize {
        self.tasks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|t| t.info.params.created_by.as_deref() == Some(peer))
            .count()
    }

    fn pending_path(&self, task_id: &str) -> PathBuf {
        self.dir.join(format!("{task_id}{PENDING_SUFFIX}"))
    }

    /// Stores a new task as pending (state first, then the pending task file); it takes no
    /// reports and is not loaded at restart until [`activate`](Self::activate)d.
    pub async fn insert_pending(
        &self,
        info: TaskInfo,
        index: usize,
        verify_key: Option<[u8; VERIFY_KEY_BYTES]>,
    ) -> Result<TaskEntry, TaskStoreError> {
        let task_id = info.params.task_id.clone();
        if self.get(&task_id).is_some() {
            return Err(TaskStoreError::Other(format!(
                "task {task_id} exists already"
            )));
        }
        let validation = validation_of(&info, verify_key).map_err(TaskStoreError::Other)?;
        let state = TaskState {
            current: 0,
            batches: BTreeMap::new(),
        };
        let state_path = self.dir.join(format!("{task_id}.state.json"));
        let entry = TaskEntry::new(info.clone(), index, validation, state.clone(), state_path);
        entry.persist(&state).await?;
        let bytes = serde_json::to_vec_pretty(&TaskFile {
            format: TASK_FILE_FORMAT,
            task: info,
            verify_key: verify_key.map(hex::encode),
        })
        .map_err(|e| TaskStoreError::Other(e.to_string()))?;
        let path = self.pending_path(&task_id);
        tokio::task::spawn_blocking(move || replace_atomically(&path, &bytes))
            .await
            .map_err(|e| TaskStoreError::Other(format!("the store task failed: {e}")))??;
        Ok(entry)
    }

    /// Makes a pending task a task: its file renamed into place, then visible.
    pub async fn activate(&self, entry: TaskEntry) -> Result<Arc<TaskEntry>, TaskStoreError> {
        let task_id = entry.info.params.task_id.clone();
        let from = self.pending_path(&task_id);
        let to = self.dir.join(format!("{task_id}.task.json"));
        tokio::task::spawn_blocking(move || {
            crate::atomic_file::promote(&from, &to)
                .map_err(|source| TaskStoreError::Write { path: to, source })
        })
        .await
        .map_err(|e| TaskStoreError::Other(format!("the store task failed: {e}")))??;
        let entry = Arc::new(entry);
        self.tasks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(task_id, entry.clone());
        Ok(entry)
    }

    /// Removes a pending task and its state (its creation did not complete).
    pub async fn discard_pending(&self, task_id: &str) -> Result<(), TaskStoreError> {
        let files = vec![
            self.pending_path(task_id),
            self.dir.join(format!("{task_id}.state.json")),
        ];
        tokio::task::spawn_blocking(move || {
            crate::atomic_file::remove(&files).map_err(|source| TaskStoreError::Write {
                path: files[0].clone(),
                source,
            })
        })
        .await
        .map_err(|e| TaskStoreError::Other(format!("the store task failed: {e}")))?
    }

    /// Stores a new task and makes it visible at once (tests and tools).
    #[cfg(test)]
    pub async fn insert(
        &self,
        info: TaskInfo,
        index: usize,
    ) -> Result<Arc<TaskEntry>, TaskStoreError> {
        // A validated task gets a fixed verify key here.
        let key = info
            .params
            .input
            .validated()
            .then_some([9; VERIFY_KEY_BYTES]);
        let entry = self.insert_pending(info, index, key).await?;
        self.activate(entry).await
    }
}

fn load_task(dir: &Path, task_id: &str, local_peer: &str) -> Result<TaskEntry, String> {
    let task_path = dir.join(format!("{task_id}.task.json"));
    let bytes = fs::read(&task_path).map_err(|e| e.to_string())?;
    let file: TaskFile = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    if file.format != TASK_FILE_FORMAT {
        return Err(format!("unsupported format {}", file.format));
    }
    let index = file
        .task
        .params
        .participants
        .iter()
        .position(|p| p == local_peer)
        .ok_or("this node is not a participant of the task")?;
    let state_path = dir.join(format!("{task_id}.state.json"));
    let bytes = fs::read(&state_path).map_err(|e| format!("{}: {e}", state_path.display()))?;
    let state = parse_state(&bytes, file.task.params.length as usize)
        .map_err(|e| format!("{}: {e}", state_path.display()))?;
    let key = match &file.verify_key {
        None => None,
        Some(h) => Some(
            hex::decode(h)
                .ok()
                .and_then(|b| <[u8; VERIFY_KEY_BYTES]>::try_from(b.as_slice()).ok())
                .ok_or("the verify key is not 32 bytes of hex")?,
        ),
    };
    let validation = validation_of(&file.task, key)?;
    Ok(TaskEntry::new(
        file.task, index, validation, state, state_path,
    ))
}

/// The Prio3 instance and verify key of a validated task; a validated task without a key,
/// or a raw task with one, is refused.
#[allow(clippy::type_complexity)]
pub fn validation_of(
    info: &TaskInfo,
    key: Option<[u8; VERIFY_KEY_BYTES]>,
) -> Result<Option<(Arc<Validator>, [u8; VERIFY_KEY_BYTES])>, String> {
    let validator = Validator::new(info.params.input, info.params.participants.len())?;
    match (validator, key) {
        (None, None) => Ok(None),
        (Some(v), Some(k)) => Ok(Some((Arc::new(v), k))),
        (Some(_), None) => Err(format!(
            "task {} is validated ({}) but has no verify key",
            info.params.task_id,
            info.params.input.name()
        )),
        (None, Some(_)) => Err(format!(
            "task {} takes raw reports but came with a verify key",
            info.params.task_id
        )),
    }
}

fn parse_digest(h: &str) -> Result<[u8; 32], String> {
    let b = hex::decode(h).map_err(|e| format!("bad digest: {e}"))?;
    <[u8; 32]>::try_from(b.as_slice()).map_err(|_| "a digest is 32 bytes".to_string())
}

fn parse_sum(b64: &str, length: usize) -> Result<Vec<Field>, String> {
    let raw = B64.decode(b64).map_err(|e| e.to_string())?;
    shares::decode(&raw, length).map_err(|e| e.to_string())
}

/// Reads a state file of either format; format 1 becomes batch 0 (frozen when it was opened).
fn parse_state(bytes: &[u8], length: usize) -> Result<TaskState, String> {
    #[derive(Deserialize)]
    struct Format {
        format: u32,
    }
    let format: Format = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    match format.format {
        1 => {
            let state: StateFileV1 = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
            let report_ids: BTreeSet<String> = state.report_ids.into_iter().collect();
            let opened = state.opened.as_deref().map(parse_digest).transpose()?;
            let mut batch = Batch {
                share_sum: parse_sum(&state.share_sum, length)?,
                vote: None,
                vote_ids: BTreeSet::new(),
                released: opened,
                collected: false,
                report_clients: BTreeMap::new(),
                report_ids,
            };
            if let Some(digest) = opened {
                batch.vote = Some(ReportSet {
                    digest,
                    count: batch.report_ids.len() as u64,
                });
                batch.vote_ids = batch.report_ids.clone();
            }
            Ok(TaskState {
                current: u64::from(opened.is_some()),
                batches: BTreeMap::from([(0, batch)]),
            })
        }
        STATE_FILE_FORMAT => {
            let file: StateFile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
            let mut batches = BTreeMap::new();
            for b in file.batches {
                let vote = match b.vote {
                    Some((d, count)) => Some(ReportSet {
                        digest: parse_digest(&d)?,
                        count,
                    }),
                    None => None,
                };
                let batch = Batch {
                    report_ids: b.report_ids.into_iter().collect(),
                    share_sum: parse_sum(&b.share_sum, length)
                        .map_err(|e| format!("batch {}: {e}", b.batch))?,
                    vote,
                    vote_ids: b.vote_ids.into_iter().collect(),
                    released: b.released.as_deref().map(parse_digest).transpose()?,
                    collected: b.collected,
                    report_clients: b.report_clients,
                };
                if batches.insert(b.batch, batch).is_some() {
                    return Err(format!("batch {} appears twice", b.batch));
                }
            }
            Ok(TaskState {
                current: file.current,
                batches,
            })
        }
        other => Err(format!("unsupported state format {other}")),
    }
}

/// Writes `bytes` to `path`, replacing it atomically (see `crate::atomic_file`).
pub fn replace_atomically(path: &Path, bytes: &[u8]) -> Result<(), TaskStoreError> {
    crate::atomic_file::write(path, bytes, crate::atomic_file::Existing::Replace).map_err(
        |source| TaskStoreError::Write {
            path: path.to_path_buf(),
            source,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task of "me" and "you", t = 1, vectors of `length`.
    fn task_info(task_id: &str, length: u32) -> TaskInfo {
        TaskInfo {
            params: TaskParams {
                task_id: task_id.into(),
                participants: vec!["me".into(), "you".into()],
                threshold: 1,
                length,
                modulus: shares::MODULUS,
                min_reports: 1,
                created_at: 0,
                created_by: Some("me".into()),
                clients: Vec::new(),
                collectors: Vec::new(),
                input: Default::default(),
            },
            keys: vec![],
        }
    }

    #[tokio::test]
    async fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = AggregationStore::open(dir.path(), "me").unwrap();
        let info = task_info("t1", 3);
        let task = store.insert(info.clone(), 0).await.unwrap();
        assert!(task.reserve("r1"));
        assert!(!task.reserve("r1"));
        let share = shares::to_field(&[1, 2, 3]).unwrap();
        task.commit("r1", &share, 0, None).await.unwrap();
        let (again, report) = AggregationStore::open(dir.path(), "me").unwrap();
        assert!(report.unreadable.is_empty(), "{report:?}");
        let task = again.get("t1").unwrap();
        assert_eq!(task.info, info);
        assert!(!task.reserve("r1"), "accepted ids are remembered");
        let snap = task.snapshot(0).await;
        assert_eq!(snap.set.count, 1);
        assert_eq!(shares::to_integers(&snap.share_sum), vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn pending_tasks_take_no_reports_and_are_never_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = AggregationStore::open(dir.path(), "me").unwrap();
        let pending = store
            .insert_pending(task_info("p1", 2), 0, None)
            .await
            .unwrap();
        store
            .insert_pending(task_info("p2", 2), 0, None)
            .await
            .unwrap();
        assert!(store.get("p1").is_none(), "a pending task is not visible");
        assert_eq!(store.count_created_by("me"), 0);
        store.activate(pending).await.unwrap();
        assert!(store.get("p1").is_some());
        assert_eq!(store.count_created_by("me"), 1);
        let (again, report) = AggregationStore::open(dir.path(), "me").unwrap();
        assert_eq!(
            report.removed_pending,
            vec![store.dir().join("p2.pending.json")]
        );
        assert!(!store.dir().join("p2.state.json").exists());
        assert!(again.get("p1").is_some() && again.get("p2").is_none());
        store
            .insert_pending(task_info("p3", 2), 0, None)
            .await
            .unwrap();
        store.discard_pending("p3").await.unwrap();
        assert!(!store.dir().join("p3.pending.json").exists());
        assert!(!store.dir().join("p3.state.json").exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_are_all_durable_and_counted_once() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = AggregationStore::open(dir.path(), "me").unwrap();
        let info = task_info("t2", 2);
        let task = store.insert(info, 0).await.unwrap();
        let commits = (0..64u64).map(|i| {
            let task = task.clone();
            tokio::spawn(async move {
                let share = shares::to_field(&[i, 1]).unwrap();
                task.commit(&format!("r{i}"), &share, 0, None)
                    .await
                    .unwrap()
            })
        });
        let counts: Vec<u64> = futures::future::try_join_all(commits).await.unwrap();
        // Each caller saw a count that includes its own share.
        assert!(counts.iter().all(|c| (1..=64).contains(c)), "{counts:?}");
        assert!(counts.contains(&64));
        // A wrong-length share fails alone.
        let bad = shares::to_field(&[1, 2, 3]).unwrap();
        assert!(task.commit("bad", &bad, 0, None).await.is_err());
        let (again, _) = AggregationStore::open(dir.path(), "me").unwrap();
        let snap = again.get("t2").unwrap().snapshot(0).await;
        assert_eq!(snap.set.count, 64);
        assert_eq!(
            shares::to_integers(&snap.share_sum),
            vec![(0..64).sum::<u64>(), 64]
        );
    }

    #[tokio::test]
    async fn a_frozen_batch_never_changes_and_reports_go_on_in_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = AggregationStore::open(dir.path(), "me").unwrap();
        let task = store.insert(task_info("t3", 2), 0).await.unwrap();
        let share = |v| shares::to_field(&[v, 1]).unwrap();
        assert!(task.reserve("r1"));
        task.commit("r1", &share(5), 0, None).await.unwrap();
        // r2 is reserved while batch 0 takes reports: the freeze waits for it.
        assert!(task.reserve("r2"));
        assert_eq!(task.reserved_batch("r2"), Some(0));
        let freezing = {
            let task = task.clone();
            tokio::spawn(async move { task.freeze(0, Duration::from_secs(10)).await.unwrap() })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!freezing.is_finished(), "the freeze waits for r2");
        assert_eq!(task.current_batch(), 1, "new reports go to batch 1 at once");
        assert!(task.reserve("r3"));
        assert_eq!(task.reserved_batch("r3"), Some(1));
        task.commit("r2", &share(7), 0, None).await.unwrap();
        let frozen = freezing.await.unwrap();
        assert!(frozen.frozen);
        assert_eq!(frozen.set.count, 2);
        assert_eq!(shares::to_integers(&frozen.share_sum), vec![12, 2]);
        // Batch 0 takes nothing more; batch 1 does.
        let e = task.commit("late", &share(1), 0, None).await.unwrap_err();
        assert!(
            e.to_string().contains("batch 0 of this task is frozen"),
            "{e}"
        );
        task.commit("r3", &share(9), 1, None).await.unwrap();
        // One vote and one released set per batch, and both survive a restart.
        let other = ReportSet {
            digest: [9; 32],
            count: 2,
        };
        assert_eq!(task.default_collect_batch().await, 0, "frozen, not opened");
        let ids: Vec<String> = frozen.report_ids.iter().cloned().collect();
        assert_eq!(
            task.vote(0, frozen.set, &ids).await.unwrap(),
            Ok(frozen.set)
        );
        assert_eq!(task.vote(0, other, &[]).await.unwrap(), Ok(frozen.set));
        // No report is voted for in two batches, nor voted for in one and held in another.
        let why = task
            .vote(1, other, &["r2".into()])
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            why.contains("report r2 of the proposed set is in batch 0"),
            "{why}"
        );
        let why = task
            .vote(2, other, &["r3".into()])
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            why.contains("report r3 of the proposed set is in batch 1"),
            "{why}"
        );
        // A batch ahead of the next one takes nothing.
        let e = task.commit("far", &share(1), 9, None).await.unwrap_err();
        assert!(
            e.to_string().contains("batch 9 is ahead of this node"),
            "{e}"
        );
        assert!(
            task.freeze(u64::MAX, Duration::from_millis(1))
                .await
                .is_err()
        );
        task.mark_released(0, frozen.set.digest).await.unwrap();
        task.mark_released(0, frozen.set.digest).await.unwrap();
        assert_eq!(
            task.default_collect_batch().await,
            1,
            "opened: the next one"
        );
        let e = task.mark_released(0, [9; 32]).await.unwrap_err();
        assert!(
            e.to_string().contains("different report set of batch 0"),
            "{e}"
        );
        let (again, _) = AggregationStore::open(dir.path(), "me").unwrap();
        let task = again.get("t3").unwrap();
        assert_eq!(task.current_batch(), 1);
        let b0 = task.snapshot(0).await;
        assert!(b0.frozen);
        assert_eq!(
            (b0.vote, b0.released),
            (Some(frozen.set), Some(frozen.set.digest))
        );
        let b1 = task.snapshot(1).await;
        assert!(!b1.frozen);
        assert_eq!(shares::to_integers(&b1.share_sum), vec![9, 1]);
        assert!(
            !task.reserve("r1") && !task.reserve("r3"),
            "ids of every batch are kept"
        );
        // A freeze does not wait past its deadline for a report that never comes.
        assert!(task.reserve("r4"));
        let start = std::time::Instant::now();
        task.freeze(1, Duration::from_millis(100)).await.unwrap();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(task.commit("r4", &share(1), 1, None).await.is_err());
    }

    #[test]
    fn a_state_file_of_format_1_is_batch_0() {
        let ids = BTreeSet::from(["a".to_string(), "b".to_string()]);
        let digest = report_set_digest(&ids);
        let sum = B64.encode(shares::encode(&shares::to_field(&[4, 2]).unwrap()));
        let open =
            format!(r#"{{"format":1,"report_ids":["a","b"],"share_sum":"{sum}","opened":null}}"#);
        let state = parse_state(open.as_bytes(), 2).unwrap();
        assert_eq!(state.current, 0);
        assert_eq!(state.batches[&0].set().count, 2);
        let opened = format!(
            r#"{{"format":1,"report_ids":["a","b"],"share_sum":"{sum}","opened":"{}"}}"#,
            hex::encode(digest)
        );
        let state = parse_state(opened.as_bytes(), 2).unwrap();
        assert_eq!(state.current, 1, "an opened task's reports go to batch 1");
        assert_eq!(state.batches[&0].released, Some(digest));
        let e = parse_state(br#"{"format":3}"#, 2).err().unwrap();
        assert!(e.contains("unsupported state format 3"), "{e}");
    }
}
