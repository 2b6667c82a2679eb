//! Aggregation tasks on disk, under `<data-dir>/aggregation/`: per task, `<id>.task.json`
//! (parameters and participants' keys, written once) and `<id>.state.json` (accepted report
//! ids and this node's running share sum, replaced atomically once per group of accepted
//! reports: see [`TaskEntry::commit`]).
//! The share sum is a Shamir share, never a client's plaintext.
//!
//! A new task's file is first written as `<id>.pending.json` (not loaded, takes no reports)
//! and renamed to `<id>.task.json` once the coordinator confirmed that every participant
//! stored the task. A pending task whose confirmation never comes is removed when its
//! session ends; pending files found at start are removed with their state, never loaded.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::shares::{self, Field};

const PENDING_SUFFIX: &str = ".pending.json";

/// Version of the task and state file formats.
pub const TASK_FILE_FORMAT: u32 = 1;

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
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    format: u32,
    report_ids: Vec<String>,
    /// This node's share sum, little-endian 8-byte elements, base64.
    share_sum: String,
    /// Digest of the report set whose sum this node opened, hex.
    opened: Option<String>,
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

/// The mutable part of a task.
#[derive(Clone)]
pub struct TaskState {
    pub report_ids: BTreeSet<String>,
    pub share_sum: Vec<Field>,
    pub opened: Option<[u8; 32]>,
}

/// A snapshot of the reports a node holds, taken under its lock.
#[derive(Clone)]
pub struct Snapshot {
    pub digest: [u8; 32],
    pub count: u64,
    pub share_sum: Vec<Field>,
}

/// One task held by this node.
pub struct TaskEntry {
    pub info: TaskInfo,
    /// This node's participant index.
    pub index: usize,
    /// Held across the state file write so that writes land in order (one per group commit).
    pub state: tokio::sync::Mutex<TaskState>,
    /// Accepted and in-flight report ids, so a replay is refused before it is decrypted.
    seen: Mutex<HashSet<String>>,
    /// Accepted shares waiting for the next state file write (group commit).
    pending: Mutex<Vec<PendingCommit>>,
    state_path: PathBuf,
}

/// One accepted share waiting to be written, and who waits for the outcome.
struct PendingCommit {
    report_id: String,
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
    /// Reserves `report_id`; false when it was accepted or is being accepted already.
    pub fn reserve(&self, report_id: &str) -> bool {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(report_id.to_string())
    }

    /// Releases a reservation that was not committed.
    pub fn release(&self, report_id: &str) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(report_id);
    }

    /// Adds an accepted share to the sum and persists the state before returning.
    ///
    /// Group commit: shares that arrive while a write is running are added together and
    /// written once, by whichever caller takes the state lock next; each caller returns once
    /// the write holding its share is durable. One state file write (and fsync) serves many
    /// reports under load, instead of one each.
    pub async fn commit(&self, report_id: &str, share: &[Field]) -> Result<u64, TaskStoreError> {
        let (done, outcome) = tokio::sync::oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(PendingCommit {
                report_id: report_id.to_string(),
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
        match outcome.await {
            Ok(result) => result.map_err(TaskStoreError::Other),
            Err(_) => Err(TaskStoreError::Other(
                "the write holding this share was interrupted".into(),
            )),
        }
    }

    /// Adds `batch` to a copy of the state, writes it, and makes it current once durable.
    async fn commit_batch(&self, state: &mut TaskState, batch: Vec<PendingCommit>) {
        if state.opened.is_some() {
            for p in batch {
                let _ = p.done.send(Err(
                    "the sum of this task was opened already; no more reports are accepted".into(),
                ));
            }
            return;
        }
        let mut next = state.clone();
        let mut waiting = Vec::with_capacity(batch.len());
        for p in batch {
            match shares::add_assign(&mut next.share_sum, &p.share) {
                Ok(()) => {
                    next.report_ids.insert(p.report_id);
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
                let count = state.report_ids.len() as u64;
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

    /// The current report set and share sum.
    pub async fn snapshot(&self) -> Snapshot {
        let state = self.state.lock().await;
        Snapshot {
            digest: report_set_digest(&state.report_ids),
            count: state.report_ids.len() as u64,
            share_sum: state.share_sum.clone(),
        }
    }

    /// Number of reports accepted here.
    pub async fn report_count(&self) -> u64 {
        self.state.lock().await.report_ids.len() as u64
    }

    /// Records that the sum of report set `digest` is opened; refuses a different set (the
    /// difference of two opened sums would reveal the reports in between).
    pub async fn mark_opened(&self, digest: [u8; 32]) -> Result<(), TaskStoreError> {
        let mut state = self.state.lock().await;
        match state.opened {
            Some(d) if d == digest => Ok(()),
            Some(_) => Err(TaskStoreError::Other(
                "this node opened the sum of a different report set already; opening another would reveal the difference".into(),
            )),
            None => {
                let mut next = state.clone();
                next.opened = Some(digest);
                self.persist(&next).await?;
                *state = next;
                Ok(())
            }
        }
    }

    async fn persist(&self, state: &TaskState) -> Result<(), TaskStoreError> {
        let file = StateFile {
            format: TASK_FILE_FORMAT,
            report_ids: state.report_ids.iter().cloned().collect(),
            share_sum: B64.encode(shares::encode(&state.share_sum)),
            opened: state.opened.map(hex::encode),
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
    ) -> Result<TaskEntry, TaskStoreError> {
        let task_id = info.params.task_id.clone();
        if self.get(&task_id).is_some() {
            return Err(TaskStoreError::Other(format!(
                "task {task_id} exists already"
            )));
        }
        let state = TaskState {
            report_ids: BTreeSet::new(),
            share_sum: vec![Field::from(0u64); info.params.length as usize],
            opened: None,
        };
        let entry = TaskEntry {
            index,
            state: tokio::sync::Mutex::new(state.clone()),
            seen: Mutex::new(HashSet::new()),
            pending: Mutex::new(Vec::new()),
            state_path: self.dir.join(format!("{task_id}.state.json")),
            info: info.clone(),
        };
        entry.persist(&state).await?;
        let bytes = serde_json::to_vec_pretty(&TaskFile {
            format: TASK_FILE_FORMAT,
            task: info,
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
        let entry = self.insert_pending(info, index).await?;
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
    let state: StateFile = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    let raw = B64.decode(&state.share_sum).map_err(|e| e.to_string())?;
    let share_sum =
        shares::decode(&raw, file.task.params.length as usize).map_err(|e| e.to_string())?;
    let opened = match state.opened {
        Some(h) => {
            let b = hex::decode(&h).map_err(|e| e.to_string())?;
            Some(<[u8; 32]>::try_from(b.as_slice()).map_err(|_| "bad opened digest")?)
        }
        None => None,
    };
    let report_ids: BTreeSet<String> = state.report_ids.into_iter().collect();
    Ok(TaskEntry {
        index,
        seen: Mutex::new(report_ids.iter().cloned().collect()),
        pending: Mutex::new(Vec::new()),
        state: tokio::sync::Mutex::new(TaskState {
            report_ids,
            share_sum,
            opened,
        }),
        state_path,
        info: file.task,
    })
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
        task.commit("r1", &share).await.unwrap();
        let (again, report) = AggregationStore::open(dir.path(), "me").unwrap();
        assert!(report.unreadable.is_empty(), "{report:?}");
        let task = again.get("t1").unwrap();
        assert_eq!(task.info, info);
        assert!(!task.reserve("r1"), "accepted ids are remembered");
        let snap = task.snapshot().await;
        assert_eq!(snap.count, 1);
        assert_eq!(shares::to_integers(&snap.share_sum), vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn pending_tasks_take_no_reports_and_are_never_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = AggregationStore::open(dir.path(), "me").unwrap();
        let pending = store.insert_pending(task_info("p1", 2), 0).await.unwrap();
        store.insert_pending(task_info("p2", 2), 0).await.unwrap();
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
        store.insert_pending(task_info("p3", 2), 0).await.unwrap();
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
                task.commit(&format!("r{i}"), &share).await.unwrap()
            })
        });
        let counts: Vec<u64> = futures::future::try_join_all(commits).await.unwrap();
        // Each caller saw a count that includes its own share.
        assert!(counts.iter().all(|c| (1..=64).contains(c)), "{counts:?}");
        assert!(counts.contains(&64));
        // A wrong-length share fails alone.
        let bad = shares::to_field(&[1, 2, 3]).unwrap();
        assert!(task.commit("bad", &bad).await.is_err());
        let (again, _) = AggregationStore::open(dir.path(), "me").unwrap();
        let snap = again.get("t2").unwrap().snapshot().await;
        assert_eq!(snap.count, 64);
        assert_eq!(
            shares::to_integers(&snap.share_sum),
            vec![(0..64).sum::<u64>(), 64]
        );
        // After the sum is opened, commits are refused.
        task.mark_opened(snap.digest).await.unwrap();
        let late = shares::to_field(&[1, 1]).unwrap();
        let err = task.commit("late", &late).await.unwrap_err();
        assert!(err.to_string().contains("opened already"), "{err}");
    }
}
