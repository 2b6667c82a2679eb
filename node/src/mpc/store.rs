//! Key shares on disk: one file per key under `<data-dir>/keys/`.
//!
//! Every write is atomic: a temp file (mode 0600) is written and fsynced, renamed over the
//! target, and the directory is fsynced, so a node killed at any instant restarts with each
//! key whole or absent. Leftover temp files (a write cut short) are removed at start.
//!
//! A new key is first written as `<id>.pending.json`, invisible to signing, and becomes
//! `<id>.key.json` only when the coordinator confirmed that every participant stored its
//! share. A pending key whose confirmation does not come is removed when its DKG session
//! ends, and any pending file found at start is removed, never loaded: its session died
//! with the process.
//!
//! A reshare (or refresh) stages the key's next generation as `<id>.next.json` beside the
//! active `<id>.key.json`. Signing goes on with the active generation until every new holder
//! said it staged its share; then the key file is replaced atomically by the new generation
//! (keeping the policy in force) and the staged file removed, and a holder the reshare
//! dropped removes its key file. A staged generation
//! survives a restart (unlike a pending key): the holders may have activated it meanwhile,
//! which the node asks them at start (see [`reshare`](super::reshare)). A staged file of a
//! generation that is not newer than the active one is removed at start.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

/// Version of the key file format this node writes and reads.
pub const KEY_FILE_FORMAT: u32 = 1;
const KEY_FILE_SUFFIX: &str = ".key.json";
const PENDING_SUFFIX: &str = ".pending.json";
const STAGED_SUFFIX: &str = ".next.json";

/// A failure reading or writing key shares.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create key directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write key file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key {0} already exists")]
    Exists(String),
    #[error("cannot encode key {key_id}: {message}")]
    Encode { key_id: String, message: String },
    #[error("the key store task failed: {0}")]
    Task(String),
}

/// What `GET /v1/keys` shows of a key: public metadata only.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyInfo {
    pub key_id: String,
    /// The signature scheme (FROST ciphersuite) the key was made with.
    pub scheme: super::scheme::Scheme,
    /// The group public key (32 bytes, hex) that signatures verify under: a standard
    /// Ed25519 public key, or for `secp256k1-tr` the x-only Taproot output key Q (BIP340).
    pub public_key: String,
    /// `secp256k1-tr` only: the x-only internal key P before the BIP341 tweak
    /// (Q = lift_x(x(P)) + H_TapTweak(x(P))·G), hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_key: Option<String>,
    pub threshold: u16,
    /// Every participant's peer id, sorted.
    pub participants: Vec<String>,
    /// Always `active`: a key is visible only after every participant confirmed it.
    pub status: String,
    /// The peer that coordinated the DKG (keys made before this field existed: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// Who may have the key sign; every holder stores the same one (the DKG agreed on it)
    /// and checks it. Keys made before policies existed load as `legacy-open`.
    #[serde(default = "super::policy::SigningPolicy::legacy_open")]
    pub policy: super::policy::SigningPolicy,
    /// The version of `policy`: 0 for the policy the key was made with, one more per
    /// committed change.
    #[serde(default)]
    pub policy_version: u64,
    /// The generation of the shares: 0 for the key the DKG made, one more per refresh or
    /// reshare. `participants` are this generation's holders.
    #[serde(default)]
    pub generation: u64,
    /// Seconds since the Unix epoch when this generation became active here (0: a key made
    /// before generations existed; its `created_at` then).
    #[serde(default)]
    pub generated_at: u64,
}

/// Now, in seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl KeyInfo {
    /// The version and digest of the policy in force.
    pub fn policy_stamp(&self) -> super::policy::PolicyStamp {
        self.policy.stamp(self.policy_version)
    }
}

/// A holder's vote for one change, kept while it lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredVote {
    pub version: u64,
    pub digest: [u8; 32],
    /// Unix milliseconds after which the vote lapses.
    pub until_ms: u64,
}

/// The on-disk form of one key share.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    format: u32,
    #[serde(flatten)]
    info: KeyInfo,
    /// frost `KeyPackage` (holds the secret share), hex.
    key_package: String,
    /// frost `PublicKeyPackage`, hex.
    public_key_package: String,
    /// The last committed changes of the policy, oldest first (what a holder that missed
    /// them fetches from this one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    policy_changes: Vec<super::policy::PolicyChangeRecord>,
    /// This holder's live vote for a change of the policy (kept across restarts: a holder
    /// votes for one change per version while a vote lives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vote: Option<StoredVote>,
    /// The reshare that made this generation (none for the DKG's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reshare: Option<ReshareRecord>,
}

/// What a generation remembers of the reshare that made it: enough for a holder with it
/// staged to ask the other new holders, after a restart, whether they have it too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReshareRecord {
    /// The confirmation digest every new holder confirmed (hex).
    pub digest: String,
    /// Everyone who took part (new holders and helpers), sorted.
    pub participants: Vec<String>,
    /// The session of the reshare (hex).
    #[serde(default)]
    pub session: String,
    /// Confirmation digests of earlier generations this node staged (and signed a notice
    /// for) that a later reshare replaced before they were decided: it never signs that it
    /// did not stage them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub superseded: Vec<String>,
    /// Once active: every new holder's signed notice that it staged this generation (what
    /// convinces a holder that missed the last notices, or a dropped holder).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificate: Vec<super::policy::NodeSignature>,
}

/// A key this node holds a share of, decoded and ready to sign with.
pub struct StoredKey {
    pub info: KeyInfo,
    /// The secret share and the public parts, of the key's scheme.
    pub share: super::scheme::KeyShare,
    /// The last committed changes of the policy (at most
    /// [`MAX_POLICY_HISTORY`](super::policy::MAX_POLICY_HISTORY)), oldest first.
    pub policy_changes: Vec<super::policy::PolicyChangeRecord>,
    /// This holder's last vote for a change of the policy, as kept on disk.
    pub vote: Option<StoredVote>,
    /// The reshare that made this generation (none for the DKG's).
    pub reshare: Option<ReshareRecord>,
}

/// The key shares of this node: an in-memory map backed by one file per key.
#[derive(Clone)]
pub struct KeyShareStore {
    dir: PathBuf,
    keys: Arc<RwLock<HashMap<String, Arc<StoredKey>>>>,
    /// Generations staged by a reshare, not yet active (each with its `reshare` record).
    staged: Arc<RwLock<HashMap<String, Arc<StoredKey>>>>,
}

/// What [`KeyShareStore::open`] found besides valid keys.
#[derive(Debug, Default)]
pub struct OpenReport {
    pub loaded: usize,
    /// Temp files of interrupted writes, removed.
    pub removed_temp_files: Vec<PathBuf>,
    /// Keys whose DKG never completed (pending at the last stop), removed.
    pub removed_pending: Vec<PathBuf>,
    /// Staged generations kept (a reshare that had not finished at the last stop).
    pub staged: usize,
    /// Staged generations no newer than the active one, removed.
    pub removed_stale: Vec<PathBuf>,
    /// Files that could not be read (left in place), with the reason.
    pub unreadable: Vec<(PathBuf, String)>,
}

impl KeyShareStore {
    /// Opens (creating it if needed) the key directory under `data_dir` and loads every key.
    pub fn open(data_dir: &Path) -> Result<(Self, OpenReport), StoreError> {
        let dir = data_dir.join("keys");
        let state =
            crate::atomic_file::open_state_dir(&dir).map_err(|source| StoreError::CreateDir {
                path: dir.clone(),
                source,
            })?;
        let mut report = OpenReport {
            removed_temp_files: state.removed_temp_files,
            ..Default::default()
        };
        let mut keys = HashMap::new();
        let mut staged_files = Vec::new();
        for (path, name) in state.files {
            if name.ends_with(STAGED_SUFFIX) {
                staged_files.push(path);
                continue;
            }
            if name.ends_with(PENDING_SUFFIX) {
                crate::atomic_file::remove(std::slice::from_ref(&path)).map_err(|source| {
                    StoreError::Write {
                        path: path.clone(),
                        source,
                    }
                })?;
                report.removed_pending.push(path);
                continue;
            }
            if !name.ends_with(KEY_FILE_SUFFIX) {
                continue;
            }
            match read_key_file(&path) {
                Ok(key) => {
                    keys.insert(key.info.key_id.clone(), Arc::new(key));
                }
                Err(reason) => report.unreadable.push((path, reason)),
            }
        }
        let mut staged = HashMap::new();
        for path in staged_files {
            match read_key_file(&path) {
                Ok(key) if key.reshare.is_some() => {
                    let newer = keys
                        .get(&key.info.key_id)
                        .is_none_or(|active| key.info.generation > active.info.generation);
                    if newer {
                        staged.insert(key.info.key_id.clone(), Arc::new(key));
                    } else {
                        crate::atomic_file::remove(std::slice::from_ref(&path)).map_err(
                            |source| StoreError::Write {
                                path: path.clone(),
                                source,
                            },
                        )?;
                        report.removed_stale.push(path);
                    }
                }
                Ok(_) => report
                    .unreadable
                    .push((path, "a staged file without its reshare record".into())),
                Err(reason) => report.unreadable.push((path, reason)),
            }
        }
        report.loaded = keys.len();
        report.staged = staged.len();
        Ok((
            Self {
                dir,
                keys: Arc::new(RwLock::new(keys)),
                staged: Arc::new(RwLock::new(staged)),
            },
            report,
        ))
    }

    /// The directory holding the key files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A key by id.
    pub fn get(&self, key_id: &str) -> Option<Arc<StoredKey>> {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key_id)
            .cloned()
    }

    /// Whether a key with this id exists.
    pub fn contains(&self, key_id: &str) -> bool {
        self.get(key_id).is_some()
    }

    /// Metadata of every key, sorted by creation time then id.
    pub fn list(&self) -> Vec<KeyInfo> {
        let mut list: Vec<KeyInfo> = self
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|k| k.info.clone())
            .collect();
        list.sort_by(|a, b| (a.created_at, &a.key_id).cmp(&(b.created_at, &b.key_id)));
        list
    }

    /// How many keys held here were created by `peer` (its DKGs in flight not counted; the
    /// per-peer session cap bounds those).
    pub fn count_created_by(&self, peer: &str) -> usize {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|k| k.info.created_by.as_deref() == Some(peer))
            .count()
    }

    /// Writes a new key atomically and makes it visible. Refuses to replace a key.
    pub async fn insert(&self, key: StoredKey) -> Result<Arc<StoredKey>, StoreError> {
        if self.contains(&key.info.key_id) {
            return Err(StoreError::Exists(key.info.key_id.clone()));
        }
        self.write(key, crate::atomic_file::Existing::Keep).await
    }

    fn pending_path(&self, key_id: &str) -> PathBuf {
        self.dir.join(format!("{key_id}{PENDING_SUFFIX}"))
    }

    /// Writes a new key as pending: durable, but not visible and not loaded at restart.
    pub async fn insert_pending(&self, key: &StoredKey) -> Result<(), StoreError> {
        let key_id = key.info.key_id.clone();
        if self.contains(&key_id) {
            return Err(StoreError::Exists(key_id));
        }
        let bytes = encode(key)?;
        let path = self.pending_path(&key_id);
        let existing = crate::atomic_file::Existing::Keep;
        tokio::task::spawn_blocking(move || write_atomically(&path, &bytes, existing))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Makes a pending key a key: renamed into place, then visible.
    pub async fn activate(&self, key: StoredKey) -> Result<Arc<StoredKey>, StoreError> {
        let key_id = key.info.key_id.clone();
        let from = self.pending_path(&key_id);
        let to = self.dir.join(format!("{key_id}{KEY_FILE_SUFFIX}"));
        tokio::task::spawn_blocking(move || {
            crate::atomic_file::promote(&from, &to)
                .map_err(|source| StoreError::Write { path: to, source })
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        Ok(self.make_visible(key_id, key))
    }

    /// Puts a key whose file is in place into the in-memory map, where signing finds it.
    fn make_visible(&self, key_id: String, key: StoredKey) -> Arc<StoredKey> {
        let key = Arc::new(key);
        self.keys
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key_id, key.clone());
        key
    }

    /// Removes a pending key (its DKG did not complete).
    pub async fn discard_pending(&self, key_id: &str) -> Result<(), StoreError> {
        remove_files(vec![self.pending_path(key_id)]).await
    }

    fn key_path(&self, key_id: &str) -> PathBuf {
        self.dir.join(format!("{key_id}{KEY_FILE_SUFFIX}"))
    }

    fn staged_path(&self, key_id: &str) -> PathBuf {
        self.dir.join(format!("{key_id}{STAGED_SUFFIX}"))
    }

    /// The generation of `key_id` staged here, if any.
    pub fn staged(&self, key_id: &str) -> Option<Arc<StoredKey>> {
        self.staged
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key_id)
            .cloned()
    }

    /// Every staged generation.
    pub fn all_staged(&self) -> Vec<Arc<StoredKey>> {
        self.staged
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Writes `key`, a new generation made by a reshare (its `reshare` record set), as
    /// staged (replacing an earlier staged one): durable, kept across restarts, not used for
    /// signing until [`promote_staged`](Self::promote_staged).
    pub async fn stage(&self, key: StoredKey) -> Result<(), StoreError> {
        let key_id = key.info.key_id.clone();
        if key_id.is_empty() || !key_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::Encode {
                key_id,
                message: "a key id is hex digits".into(),
            });
        }
        if key.reshare.is_none() {
            return Err(StoreError::Encode {
                key_id,
                message: "a staged generation needs its reshare record".into(),
            });
        }
        let bytes = encode(&key)?;
        let path = self.staged_path(&key_id);
        tokio::task::spawn_blocking(move || {
            write_atomically(&path, &bytes, crate::atomic_file::Existing::Replace)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        self.staged
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key_id, Arc::new(key));
        Ok(())
    }

    /// Makes the staged generation of `key_id` the active one: the key file is replaced
    /// atomically by the new share and holder set, keeping the policy (and its history and
    /// this holder's vote) that is in force now, then the staged file is removed. The
    /// previous generation's share is gone. (A crash between the two leaves a staged file of
    /// the active generation, removed at start.) The caller holds the key-write lock.
    pub async fn promote_staged(
        &self,
        key_id: &str,
        certificate: Vec<super::policy::NodeSignature>,
    ) -> Result<Arc<StoredKey>, StoreError> {
        let staged = self
            .staged(key_id)
            .ok_or_else(|| StoreError::Task(format!("no staged generation of key {key_id}")))?;
        let mut info = staged.info.clone();
        info.generated_at = unix_now();
        // The policy in force is the active generation's when it is the one this staged
        // generation replaces (a policy change may have been committed meanwhile); an older
        // one (this node rejoins after it was dropped) has nothing to keep.
        let predecessor = self
            .get(key_id)
            .filter(|active| active.info.generation + 1 == staged.info.generation);
        let (policy_changes, vote) = match predecessor {
            Some(active) => {
                info.policy = active.info.policy.clone();
                info.policy_version = active.info.policy_version;
                (active.policy_changes.clone(), active.vote)
            }
            None => (staged.policy_changes.clone(), staged.vote),
        };
        let key = StoredKey {
            info,
            share: staged.share.clone(),
            policy_changes,
            vote,
            reshare: staged.reshare.clone().map(|mut r| {
                r.certificate = certificate;
                r
            }),
        };
        let key = self
            .write(key, crate::atomic_file::Existing::Replace)
            .await?;
        self.discard_staged(key_id).await?;
        Ok(key)
    }

    /// Removes the staged generation of `key_id`, if any (a reshare of the active one
    /// replaces it).
    pub async fn discard_staged(&self, key_id: &str) -> Result<(), StoreError> {
        remove_files(vec![self.staged_path(key_id)]).await?;
        self.staged
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key_id);
        Ok(())
    }

    /// Removes this node's share of `key_id` for good, active and staged (a reshare dropped
    /// this holder and every new holder has its share).
    pub async fn retire(&self, key_id: &str) -> Result<(), StoreError> {
        remove_files(vec![self.key_path(key_id), self.staged_path(key_id)]).await?;
        self.staged
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key_id);
        self.keys
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key_id);
        Ok(())
    }

    /// Makes `record` the policy of a key held here and keeps it in the key's history (the
    /// key file is rewritten atomically; the share is unchanged). The caller checked the
    /// record against the policy in force and holds the engine's policy write lock.
    pub async fn apply_policy_change(
        &self,
        key_id: &str,
        record: super::policy::PolicyChangeRecord,
    ) -> Result<Arc<StoredKey>, StoreError> {
        let old = self
            .get(key_id)
            .ok_or_else(|| StoreError::Task(format!("no key {key_id}")))?;
        let mut info = old.info.clone();
        info.policy = record.policy.clone();
        info.policy_version = record.version;
        let mut policy_changes = old.policy_changes.clone();
        policy_changes.push(record);
        let excess = policy_changes
            .len()
            .saturating_sub(super::policy::MAX_POLICY_HISTORY);
        policy_changes.drain(..excess);
        let key = StoredKey {
            info,
            share: old.share.clone(),
            policy_changes,
            vote: None,
            reshare: old.reshare.clone(),
        };
        self.write(key, crate::atomic_file::Existing::Replace).await
    }

    /// Keeps `vote` in key `key_id`'s file (the caller orders this with the other policy
    /// writes of the key).
    pub async fn record_vote(
        &self,
        key_id: &str,
        vote: StoredVote,
    ) -> Result<Arc<StoredKey>, StoreError> {
        let old = self
            .get(key_id)
            .ok_or_else(|| StoreError::Task(format!("no key {key_id}")))?;
        let key = StoredKey {
            info: old.info.clone(),
            share: old.share.clone(),
            policy_changes: old.policy_changes.clone(),
            vote: Some(vote),
            reshare: old.reshare.clone(),
        };
        self.write(key, crate::atomic_file::Existing::Replace).await
    }

    async fn write(
        &self,
        key: StoredKey,
        existing: crate::atomic_file::Existing,
    ) -> Result<Arc<StoredKey>, StoreError> {
        let key_id = key.info.key_id.clone();
        let bytes = encode(&key)?;
        let path = self.dir.join(format!("{key_id}{KEY_FILE_SUFFIX}"));
        tokio::task::spawn_blocking(move || write_atomically(&path, &bytes, existing))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        Ok(self.make_visible(key_id, key))
    }
}

/// Gives legacy-open key `key_id` under `data_dir` the open policy `policy` (fixed, or
/// changeable by its admins), rewriting its key file atomically. Offline: the node that owns
/// `data_dir` must be stopped. Returns the key file's path. The error says what is wrong.
pub fn convert_legacy(
    data_dir: &Path,
    key_id: &str,
    policy: &super::policy::SigningPolicy,
) -> Result<PathBuf, String> {
    if key_id.is_empty() || !key_id.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("`{key_id}` is not a key id (hex digits)"));
    }
    let policy = policy.normalized()?;
    if !policy.open {
        return Err(
            "a legacy key is converted to an open policy (fixed, or with admins who may approve a change later); it then takes other policies through `keys set-policy`"
                .into(),
        );
    }
    let path = data_dir
        .join("keys")
        .join(format!("{key_id}{KEY_FILE_SUFFIX}"));
    let bytes = fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut file: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not a key file: {e}", path.display()))?;
    let info = file
        .as_object_mut()
        .ok_or_else(|| format!("{} is not a key file (no JSON object)", path.display()))?;
    if info.contains_key("policy") {
        return Err(format!(
            "key {key_id} has a signing policy already ({}): only legacy-open keys are converted; change a policy with `keys set-policy`",
            path.display()
        ));
    }
    info.insert(
        "policy".into(),
        serde_json::to_value(&policy).map_err(|e| e.to_string())?,
    );
    let out = serde_json::to_vec_pretty(&file).map_err(|e| e.to_string())?;
    // The whole file must still load as a key before it replaces the old one.
    let parsed: KeyFile = serde_json::from_slice(&out)
        .map_err(|e| format!("{}: the converted file does not load: {e}", path.display()))?;
    if parsed.info.key_id != key_id {
        return Err(format!(
            "{} holds key {}, not {key_id}",
            path.display(),
            parsed.info.key_id
        ));
    }
    write_atomically(&path, &out, crate::atomic_file::Existing::Replace)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

/// The key file of a key.
fn encode(key: &StoredKey) -> Result<Vec<u8>, StoreError> {
    let key_id = &key.info.key_id;
    let (key_package, public_key_package) =
        key.share.encode().map_err(|message| StoreError::Encode {
            key_id: key_id.clone(),
            message,
        })?;
    let file = KeyFile {
        format: KEY_FILE_FORMAT,
        info: key.info.clone(),
        key_package: hex::encode(key_package),
        public_key_package: hex::encode(public_key_package),
        policy_changes: key.policy_changes.clone(),
        vote: key.vote,
        reshare: key.reshare.clone(),
    };
    serde_json::to_vec_pretty(&file).map_err(|e| StoreError::Encode {
        key_id: key_id.clone(),
        message: e.to_string(),
    })
}

fn read_key_file(path: &Path) -> Result<StoredKey, String> {
    let bytes = fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let file: KeyFile =
        serde_json::from_slice(&bytes).map_err(|e| format!("not a key file: {e}"))?;
    if file.format != KEY_FILE_FORMAT {
        return Err(format!(
            "key file format {} is not supported (this node reads format {KEY_FILE_FORMAT})",
            file.format
        ));
    }
    let decode = |what: &str, s: &str| hex::decode(s).map_err(|e| format!("{what}: bad hex: {e}"));
    let share = super::scheme::KeyShare::decode(
        file.info.scheme,
        &decode("key_package", &file.key_package)?,
        &decode("public_key_package", &file.public_key_package)?,
    )?;
    // The metadata must describe the share: an address or threshold shown from a file that
    // does not match its share would point at a key nobody can use.
    if hex::encode(share.group_key()?) != file.info.public_key {
        return Err(format!(
            "public_key {} is not the group key of the share in the file",
            file.info.public_key
        ));
    }
    if share.min_signers() != file.info.threshold {
        return Err(format!(
            "threshold {} is not the share's ({})",
            file.info.threshold,
            share.min_signers()
        ));
    }
    Ok(StoredKey {
        info: file.info,
        share,
        policy_changes: file.policy_changes,
        vote: file.vote,
        reshare: file.reshare,
    })
}

/// Removes key files durably, off the runtime's threads (a missing one is not an error).
async fn remove_files(paths: Vec<PathBuf>) -> Result<(), StoreError> {
    tokio::task::spawn_blocking(move || {
        crate::atomic_file::remove(&paths).map_err(|source| StoreError::Write {
            path: paths.first().cloned().unwrap_or_default(),
            source,
        })
    })
    .await
    .map_err(|e| StoreError::Task(e.to_string()))?
}

/// Writes a key file atomically.
fn write_atomically(
    path: &Path,
    bytes: &[u8],
    existing: crate::atomic_file::Existing,
) -> Result<(), StoreError> {
    crate::atomic_file::write(path, bytes, existing).map_err(|source| StoreError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dealer_key(key_id: &str) -> StoredKey {
        let (_, shares) = crate::mpc::scheme::testing::dealt::<frost_ed25519::Ed25519Sha512>(2, 3);
        let share = shares.into_iter().next().unwrap();
        StoredKey {
            info: KeyInfo {
                key_id: key_id.into(),
                scheme: crate::mpc::scheme::Scheme::Ed25519,
                public_key: hex::encode(share.group_key().unwrap()),
                internal_key: None,
                threshold: 2,
                participants: vec!["a".into(), "b".into(), "c".into()],
                status: "active".into(),
                created_by: Some("coordinator".into()),
                created_at: 1,
                policy: crate::mpc::policy::SigningPolicy::open(),
                policy_version: 0,
                generation: 0,
                generated_at: 1,
            },
            share: crate::mpc::scheme::KeyShare::Ed25519(share),
            policy_changes: vec![],
            vote: None,
            reshare: None,
        }
    }

    #[tokio::test]
    async fn keys_survive_reopen_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = KeyShareStore::open(dir.path()).unwrap();
        store.insert(dealer_key("k1")).await.unwrap();
        assert!(matches!(
            store.insert(dealer_key("k1")).await,
            Err(StoreError::Exists(_))
        ));
        let path = store.dir().join("k1.key.json");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (reopened, report) = KeyShareStore::open(dir.path()).unwrap();
        assert_eq!(report.loaded, 1);
        let k = reopened.get("k1").unwrap();
        assert_eq!(k.info, store.get("k1").unwrap().info);
    }

    #[tokio::test]
    async fn a_vote_survives_a_restart_until_a_change_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = KeyShareStore::open(dir.path()).unwrap();
        store.insert(dealer_key("k1")).await.unwrap();
        let vote = StoredVote {
            version: 1,
            digest: [7; 32],
            until_ms: 42,
        };
        store.record_vote("k1", vote).await.unwrap();
        let (reopened, _) = KeyShareStore::open(dir.path()).unwrap();
        assert_eq!(reopened.get("k1").unwrap().vote, Some(vote));
        let record = crate::mpc::policy::PolicyChangeRecord {
            version: 1,
            policy: crate::mpc::policy::SigningPolicy::open(),
            approvals: vec![],
            votes: vec![],
        };
        reopened.apply_policy_change("k1", record).await.unwrap();
        let (again, _) = KeyShareStore::open(dir.path()).unwrap();
        let k = again.get("k1").unwrap();
        assert_eq!((k.vote, k.info.policy_version), (None, 1));
    }

    #[tokio::test]
    async fn temp_files_are_removed_and_torn_files_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = KeyShareStore::open(dir.path()).unwrap();
        fs::write(store.dir().join(".k2.key.json.tmp-99"), b"{half").unwrap();
        fs::write(store.dir().join("k3.key.json"), b"{half").unwrap();
        let (reopened, report) = KeyShareStore::open(dir.path()).unwrap();
        assert_eq!(report.removed_temp_files.len(), 1);
        assert_eq!(report.unreadable.len(), 1);
        assert!(reopened.list().is_empty());
    }

    #[tokio::test]
    async fn pending_keys_are_invisible_until_activated_and_never_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = KeyShareStore::open(dir.path()).unwrap();
        store.insert_pending(&dealer_key("p1")).await.unwrap();
        store.insert_pending(&dealer_key("p2")).await.unwrap();
        assert!(store.get("p1").is_none() && store.list().is_empty());
        store.activate(dealer_key("p1")).await.unwrap();
        assert!(store.get("p1").is_some());
        assert_eq!(store.count_created_by("coordinator"), 1);
        assert_eq!(store.count_created_by("someone else"), 0);
        assert!(store.dir().join("p1.key.json").exists());
        assert!(!store.dir().join("p1.pending.json").exists());
        // p2 never completed: gone at restart, and p1 is loaded.
        let (reopened, report) = KeyShareStore::open(dir.path()).unwrap();
        assert_eq!(
            report.removed_pending,
            vec![store.dir().join("p2.pending.json")]
        );
        assert!(!store.dir().join("p2.pending.json").exists());
        assert!(reopened.get("p2").is_none() && reopened.get("p1").is_some());
        store.insert_pending(&dealer_key("p3")).await.unwrap();
        store.discard_pending("p3").await.unwrap();
        assert!(!store.dir().join("p3.pending.json").exists());
    }

    #[tokio::test]
    async fn a_key_file_of_one_scheme_is_not_loaded_as_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = KeyShareStore::open(dir.path()).unwrap();
        let (_, shares) =
            crate::mpc::scheme::testing::dealt::<frost_secp256k1_tr::Secp256K1Sha256TR>(2, 3);
        let mut key = dealer_key("tr");
        key.info.scheme = crate::mpc::scheme::Scheme::Secp256k1Tr;
        key.info.public_key = hex::encode(shares[0].group_key().unwrap());
        key.share = crate::mpc::scheme::KeyShare::Secp256k1Tr(shares[0].clone());
        store.insert(key).await.unwrap();
        store.insert(dealer_key("ed")).await.unwrap();
        assert_eq!(KeyShareStore::open(dir.path()).unwrap().1.loaded, 2);
        // Each file now names the other scheme.
        for (id, from, to) in [
            ("tr", "secp256k1-tr", "ed25519"),
            ("ed", "ed25519", "secp256k1-tr"),
        ] {
            let path = store.dir().join(format!("{id}.key.json"));
            let text = fs::read_to_string(&path).unwrap();
            let swapped = text.replace(
                &format!("\"scheme\": \"{from}\""),
                &format!("\"scheme\": \"{to}\""),
            );
            assert_ne!(swapped, text);
            fs::write(&path, swapped).unwrap();
        }
        let (reopened, report) = KeyShareStore::open(dir.path()).unwrap();
        assert!(reopened.list().is_empty());
        let mut reasons: Vec<&str> = report.unreadable.iter().map(|(_, r)| r.as_str()).collect();
        reasons.sort();
        assert_eq!(
            reasons,
            [
                "the share is of scheme ed25519 but the file says secp256k1-tr; refused",
                "the share is of scheme secp256k1-tr but the file says ed25519; refused",
            ]
        );
    }

    #[tokio::test]
    async fn a_key_file_whose_public_key_or_threshold_is_not_its_share_is_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = KeyShareStore::open(dir.path()).unwrap();
        let mut other_key = dealer_key("pk");
        other_key.info.public_key = dealer_key("x").info.public_key;
        store.insert(other_key).await.unwrap();
        let mut other_threshold = dealer_key("t");
        other_threshold.info.threshold = 3;
        store.insert(other_threshold).await.unwrap();
        let (reopened, report) = KeyShareStore::open(dir.path()).unwrap();
        assert!(reopened.list().is_empty());
        let reasons: Vec<&str> = report.unreadable.iter().map(|(_, r)| r.as_str()).collect();
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("is not the group key of the share"))
                && reasons
                    .iter()
                    .any(|r| r == &"threshold 3 is not the share's (2)"),
            "{reasons:?}"
        );
    }

    #[test]
    fn key_info_never_holds_secret_fields() {
        let info = serde_json::to_value(dealer_key("k").info).unwrap();
        for field in ["key_package", "signing_share", "secret"] {
            assert!(info.get(field).is_none());
        }
    }

    #[tokio::test]
    async fn a_staged_generation_survives_a_restart_until_promoted_and_a_retired_key_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = KeyShareStore::open(dir.path()).unwrap();
        store.insert(dealer_key("0a1b")).await.unwrap();
        let mut next = dealer_key("0a1b");
        next.info.generation = 1;
        next.info.participants = vec!["a".into(), "b".into(), "d".into()];
        let reshare = ReshareRecord {
            digest: "00".repeat(32),
            participants: vec!["a".into(), "b".into(), "c".into(), "d".into()],
            session: "00".repeat(16),
            superseded: vec![],
            certificate: vec![],
        };
        assert!(
            store.stage(dealer_key("0a1b")).await.is_err(),
            "no reshare record"
        );
        next.reshare = Some(reshare.clone());
        store.stage(next).await.unwrap();
        assert_eq!(
            store.get("0a1b").unwrap().info.generation,
            0,
            "signing keeps generation 0"
        );
        let (reopened, report) = KeyShareStore::open(dir.path()).unwrap();
        assert_eq!((report.loaded, report.staged), (1, 1));
        let staged = reopened.staged("0a1b").unwrap();
        assert_eq!(staged.reshare.as_ref(), Some(&reshare));
        assert_eq!(staged.info.generation, 1);
        let active = reopened.promote_staged("0a1b", vec![]).await.unwrap();
        assert_eq!(active.info.generation, 1);
        assert!(reopened.staged("0a1b").is_none());
        let (reopened, report) = KeyShareStore::open(dir.path()).unwrap();
        assert_eq!((report.loaded, report.staged), (1, 0));
        assert_eq!(reopened.get("0a1b").unwrap().info.participants[2], "d");
        // A staged file no newer than the active generation is stale: removed at start.
        let mut stale = dealer_key("0a1b");
        stale.info.generation = 1;
        stale.reshare = Some(reshare);
        reopened.stage(stale).await.unwrap();
        let (reopened, report) = KeyShareStore::open(dir.path()).unwrap();
        assert_eq!(report.removed_stale.len(), 1);
        assert!(reopened.staged("0a1b").is_none());
        reopened.retire("0a1b").await.unwrap();
        assert!(reopened.get("0a1b").is_none());
        let (_, report) = KeyShareStore::open(dir.path()).unwrap();
        assert_eq!(report.loaded, 0);
    }
}
