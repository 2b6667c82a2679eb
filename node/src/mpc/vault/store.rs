//! A holder's vault files on disk, crash-safe.
//!
//! ```text
//! <data>/vault/<name>/manifest.json   the manifest (same on every holder)
//! <data>/vault/<name>/share.json      this holder's key share, sealed (HPKE) to this node
//! <data>/vault/<name>/fragments       this holder's fragment of every stripe, in order
//! <data>/vault/.staging/<name>.<session>/   the same, while a put runs
//! ```
//!
//! A put writes into a staging directory: fragments as they come, then (prepare) the
//! manifest and the sealed share, everything fsynced. Commit renames the staging directory
//! to `<name>` and fsyncs the parent: a file is there whole or not at all. A node killed
//! during a put leaves a staging directory, never a file; one without a manifest is removed
//! at start, a prepared one is kept until the other holders say whether the put committed.

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::core::{Manifest, fragment_hash};

const MANIFEST: &str = "manifest.json";
const SHARE: &str = "share.json";
const FRAGMENTS: &str = "fragments";
const STAGING: &str = ".staging";
/// Files being deleted: renamed here first, removed after; purged at every start.
const TRASH: &str = ".trash";

/// A key share sealed with HPKE: to a holder (as stored) or to a client (as returned).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedShare {
    /// The encapsulated key, hex.
    pub enc: String,
    /// The sealed 32-byte share, hex.
    pub ciphertext: String,
}

/// One file held here.
#[derive(Debug, Clone)]
pub struct HeldFile {
    pub manifest: Manifest,
    pub file_id: String,
}

/// The vault directory of a node.
pub struct VaultStore {
    dir: PathBuf,
    /// Names with a put running here.
    busy: Mutex<HashSet<String>>,
}

/// What opening the store found.
#[derive(Debug, Default)]
pub struct Opened {
    pub files: usize,
    /// Staging directories of puts that never prepared: removed.
    pub removed: Vec<PathBuf>,
    /// Prepared puts waiting for their outcome: (name, file id, staging directory).
    pub prepared: Vec<(String, String, PathBuf)>,
}

/// The file name of a staging directory (`<name>.<session>`, the session 32 hex digits).
fn staged_name(dir_name: &str) -> Option<&str> {
    let (name, session) = dir_name.rsplit_once('.')?;
    (session.len() == 32 && session.bytes().all(|b| b.is_ascii_hexdigit())).then_some(name)
}

fn mkdir(path: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    fs::File::open(path)?.sync_all()
}

fn read_manifest(dir: &Path) -> Result<HeldFile, String> {
    let path = dir.join(MANIFEST);
    let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    manifest
        .check()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(HeldFile {
        file_id: manifest.file_id(),
        manifest,
    })
}

impl VaultStore {
    /// Opens `<data_dir>/vault`: removes staging directories of puts that never prepared and
    /// lists the prepared ones.
    pub fn open(data_dir: &Path) -> Result<(Self, Opened), String> {
        let dir = data_dir.join("vault");
        let staging = dir.join(STAGING);
        mkdir(&staging).map_err(|e| format!("cannot create {}: {e}", staging.display()))?;
        let trash = dir.join(TRASH);
        let _ = fs::remove_dir_all(&trash);
        mkdir(&trash).map_err(|e| format!("cannot create {}: {e}", trash.display()))?;
        let mut opened = Opened::default();
        for entry in fs::read_dir(&staging)
            .map_err(|e| format!("{}: {e}", staging.display()))?
            .flatten()
        {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            match read_manifest(&path) {
                Ok(held) if path.join(SHARE).exists() => {
                    if staged_name(&name) == Some(held.manifest.name.as_str()) {
                        opened
                            .prepared
                            .push((held.manifest.name.clone(), held.file_id, path));
                        continue;
                    }
                    let _ = fs::remove_dir_all(&path);
                    opened.removed.push(path);
                }
                _ => {
                    let _ = fs::remove_dir_all(&path);
                    opened.removed.push(path);
                }
            }
        }
        opened.files = fs::read_dir(&dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .count();
        Ok((
            Self {
                dir,
                busy: Mutex::default(),
            },
            opened,
        ))
    }

    fn file_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The file `name`, when this node holds it.
    pub fn get(&self, name: &str) -> Option<HeldFile> {
        let dir = self.file_dir(name);
        dir.is_dir().then(|| read_manifest(&dir).ok()).flatten()
    }

    /// Every file held here, by name.
    pub fn list(&self) -> Vec<HeldFile> {
        let mut out: Vec<HeldFile> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| read_manifest(&e.path()).ok())
            .collect();
        out.sort_by(|a, b| a.manifest.name.cmp(&b.manifest.name));
        out
    }

    /// How many files held here were put through `coordinator`.
    pub fn count_created_by(&self, coordinator: &str) -> usize {
        self.list()
            .iter()
            .filter(|f| f.manifest.coordinator == coordinator)
            .count()
    }

    /// This holder's sealed key share of `name`.
    pub fn sealed_share(&self, name: &str) -> Result<SealedShare, String> {
        let path = self.file_dir(name).join(SHARE);
        let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// This holder's fragment of stripe `stripe` of `name`.
    pub fn read_fragment(&self, held: &HeldFile, stripe: u64) -> Result<Vec<u8>, String> {
        let size = held.manifest.fragment_bytes as u64;
        let path = self.file_dir(&held.manifest.name).join(FRAGMENTS);
        let mut f = fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        f.seek(SeekFrom::Start(stripe * size))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let mut out = vec![0; size as usize];
        f.read_exact(&mut out)
            .map_err(|e| format!("{}: stripe {stripe}: {e}", path.display()))?;
        Ok(out)
    }

    /// Starts a put of `name` in session `session`: refused while the file exists or
    /// another put of it runs here.
    pub fn stage(&self, name: &str, session: &str) -> Result<Staging<'_>, String> {
        if self.file_dir(name).exists() {
            return Err(format!("a file named `{name}` is held here already"));
        }
        let waiting = fs::read_dir(self.dir.join(STAGING))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                staged_name(&e.file_name().to_string_lossy()) == Some(name)
                    && e.path().join(MANIFEST).exists()
            });
        if waiting {
            return Err(format!(
                "an earlier put of `{name}` is prepared here and waits for its outcome"
            ));
        }
        if !self
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string())
        {
            return Err(format!("a put of `{name}` runs here already"));
        }
        let dir = self.dir.join(STAGING).join(format!("{name}.{session}"));
        let opened = mkdir(&dir).and_then(|()| {
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(dir.join(FRAGMENTS))
        });
        match opened {
            Ok(fragments) => Ok(Staging {
                store: self,
                name: name.to_string(),
                dir,
                fragments: Some(fragments),
                hashes: Vec::new(),
                committed: false,
            }),
            Err(e) => {
                self.release(name);
                let _ = fs::remove_dir_all(&dir);
                Err(format!("cannot stage `{name}`: {e}"))
            }
        }
    }

    fn release(&self, name: &str) {
        self.busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// What this node has of a put of file `file_id` named `name` that it does not hold
    /// (committed is answered by the caller): running here, prepared, or nothing.
    pub fn put_state(&self, name: &str, file_id: &str) -> super::PutState {
        let running = self
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(name);
        let prepared = fs::read_dir(self.dir.join(STAGING))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| staged_name(&e.file_name().to_string_lossy()) == Some(name))
            .any(|e| read_manifest(&e.path()).is_ok_and(|h| h.file_id == file_id));
        match (running, prepared) {
            (true, _) => super::PutState::Running,
            (false, true) => super::PutState::Prepared,
            (false, false) => super::PutState::Absent,
        }
    }

    /// Commits a prepared staging directory found at start (another holder committed).
    pub fn commit_prepared(&self, name: &str, staging: &Path) -> Result<(), String> {
        commit_dir(staging, &self.file_dir(name), &self.dir)
    }

    /// Removes `name` if its file id is `file_id`: renamed away first (so it is gone at
    /// once and whole), then deleted.
    pub fn delete(&self, name: &str, file_id: &str) -> Result<bool, String> {
        let Some(held) = self.get(name) else {
            return Ok(false);
        };
        if held.file_id != file_id {
            return Err(format!(
                "`{name}` here is file {}, not {file_id}",
                held.file_id
            ));
        }
        let gone = self.dir.join(TRASH).join(format!(
            "{name}.{}.{}",
            &file_id[..16.min(file_id.len())],
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        ));
        fs::rename(self.file_dir(name), &gone)
            .and_then(|()| sync_dir(&self.dir))
            .map_err(|e| format!("cannot delete `{name}`: {e}"))?;
        let _ = fs::remove_dir_all(&gone);
        Ok(true)
    }
}

fn commit_dir(staging: &Path, target: &Path, parent: &Path) -> Result<(), String> {
    if target.exists() {
        return Err(format!("{} exists already", target.display()));
    }
    fs::rename(staging, target)
        .and_then(|()| sync_dir(parent))
        .map_err(|e| format!("cannot commit {}: {e}", target.display()))
}

/// A put in progress on this holder. Dropped without [`commit`](Self::commit), it removes
/// its staging directory.
pub struct Staging<'a> {
    store: &'a VaultStore,
    name: String,
    dir: PathBuf,
    fragments: Option<fs::File>,
    /// The hash of every fragment appended, in order.
    hashes: Vec<[u8; 32]>,
    committed: bool,
}

impl Staging<'_> {
    /// Stripes received so far.
    pub fn stripes(&self) -> u64 {
        self.hashes.len() as u64
    }

    /// The hashes of the fragments received, in stripe order.
    pub fn hashes(&self) -> &[[u8; 32]] {
        &self.hashes
    }

    /// Appends the fragment of the next stripe.
    pub fn append(&mut self, fragment: &[u8]) -> Result<(), String> {
        let f = self
            .fragments
            .as_mut()
            .ok_or("the put was prepared already")?;
        f.write_all(fragment)
            .map_err(|e| format!("cannot write a fragment of `{}`: {e}", self.name))?;
        self.hashes.push(fragment_hash(fragment));
        Ok(())
    }

    /// Writes the manifest and the sealed share and syncs everything: the put is prepared
    /// and survives a crash (to be committed or dropped by what the other holders say).
    pub fn prepare(&mut self, manifest: &Manifest, share: &SealedShare) -> Result<(), String> {
        let f = self
            .fragments
            .take()
            .ok_or("the put was prepared already")?;
        let io = |e: std::io::Error| format!("cannot prepare `{}`: {e}", self.name);
        f.sync_all().map_err(io)?;
        drop(f);
        for (file, bytes) in [
            (SHARE, serde_json::to_vec(share).expect("encodes")),
            (
                MANIFEST,
                serde_json::to_vec_pretty(manifest).expect("encodes"),
            ),
        ] {
            let mut out = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(self.dir.join(file))
                .map_err(io)?;
            out.write_all(&bytes).map_err(io)?;
            out.sync_all().map_err(io)?;
        }
        sync_dir(&self.dir).map_err(io)
    }

    /// Keeps a prepared put on disk when its session ends without a commit: the directory
    /// stays for [`VaultStore::commit_prepared`] or removal once the holders have spoken.
    pub fn keep(mut self) -> PathBuf {
        self.committed = true;
        self.dir.clone()
    }

    /// Makes the prepared file visible: renames the staging directory into place.
    pub fn commit(mut self) -> Result<(), String> {
        commit_dir(&self.dir, &self.store.file_dir(&self.name), &self.store.dir)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.dir);
        }
        self.store.release(&self.name);
    }
}

/// SHA-256 of bytes, hex (for tests and the manifest's ciphertext hash).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::super::core::{Coding, FileKey, MANIFEST_FORMAT, VaultPolicy};
    use super::*;
    use libp2p::PeerId;

    /// The manifest of a 16-byte file on two holders, both needed.
    fn manifest(name: &str, fragments: &[Vec<u8>], holders: &[PeerId]) -> Manifest {
        let key = FileKey::generate();
        let (_, commitment) = key.split(2, holders).unwrap();
        Manifest {
            format: MANIFEST_FORMAT,
            name: name.into(),
            holders: holders.iter().map(ToString::to_string).collect(),
            threshold: 2,
            policy: VaultPolicy {
                clients: vec!["00".repeat(32)],
                approvals: 1,
            },
            ciphertext_bytes: 16,
            ciphertext_sha256: sha256_hex(b""),
            nonce_prefix: "00".repeat(7),
            commitment: hex::encode(commitment),
            fragment_bytes: fragments[0].len() as u32,
            fragment_hashes: fragments
                .iter()
                .map(|f| hex::encode(fragment_hash(f)))
                .collect(),
            created_at: 1,
            put_id: "00".repeat(16),
            coordinator: holders[0].to_string(),
        }
    }

    fn share() -> SealedShare {
        SealedShare {
            enc: "aa".into(),
            ciphertext: "bb".into(),
        }
    }

    #[test]
    fn a_file_is_visible_only_once_committed_and_a_dropped_put_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (store, opened) = VaultStore::open(dir.path()).unwrap();
        assert_eq!(opened.files, 0);
        let holders = [PeerId::random(), PeerId::random()];
        let coding = Coding::new(2, 2, 64).unwrap();
        let fragments = coding.encode(&[7; 16]).unwrap();
        let fragment = fragments[0].clone();
        let m = manifest("doc", &fragments, &holders);
        m.check().unwrap();

        let mut put = store.stage("doc", &"1".repeat(32)).unwrap();
        assert!(
            store.stage("doc", &"2".repeat(32)).is_err(),
            "one put of a name at a time"
        );
        put.append(&fragment).unwrap();
        assert_eq!(put.hashes()[0], fragment_hash(&fragment));
        put.prepare(&m, &share()).unwrap();
        assert!(store.get("doc").is_none(), "prepared is not yet held");
        put.commit().unwrap();
        let held = store.get("doc").unwrap();
        assert_eq!(held.file_id, m.file_id());
        assert_eq!(store.read_fragment(&held, 0).unwrap(), fragment);
        assert!(store.read_fragment(&held, 1).is_err());
        assert_eq!(store.sealed_share("doc").unwrap(), share());
        assert!(
            store.stage("doc", &"3".repeat(32)).is_err(),
            "the name is taken"
        );
        assert_eq!(store.list().len(), 1);

        // A put dropped before commit leaves nothing.
        let mut other = store.stage("other", &"4".repeat(32)).unwrap();
        other.append(&fragment).unwrap();
        drop(other);
        assert!(store.get("other").is_none());
        assert!(store.stage("other", &"5".repeat(32)).is_ok());

        // Delete needs the right file id.
        assert!(store.delete("doc", &"0".repeat(64)).is_err());
        assert!(store.delete("doc", &held.file_id).unwrap());
        assert!(store.get("doc").is_none());
        assert!(!store.delete("doc", &held.file_id).unwrap());
    }

    #[test]
    fn at_start_unprepared_puts_go_and_prepared_ones_wait() {
        let dir = tempfile::tempdir().unwrap();
        let holders = [PeerId::random(), PeerId::random()];
        let fragment = vec![1u8; 64];
        let m = manifest("kept", &[fragment.clone(), fragment.clone()], &holders);
        {
            let (store, _) = VaultStore::open(dir.path()).unwrap();
            let mut a = store.stage("kept", &"1".repeat(32)).unwrap();
            a.append(&fragment).unwrap();
            a.prepare(&m, &share()).unwrap();
            let mut b = store.stage("lost", &"2".repeat(32)).unwrap();
            b.append(&fragment).unwrap();
            // A crash: neither is committed nor dropped.
            std::mem::forget(a);
            std::mem::forget(b);
        }
        let (store, opened) = VaultStore::open(dir.path()).unwrap();
        assert_eq!(opened.removed.len(), 1);
        assert_eq!(opened.prepared.len(), 1);
        let (name, file_id, staging) = &opened.prepared[0];
        assert_eq!(
            (name.as_str(), file_id.as_str()),
            ("kept", m.file_id().as_str())
        );
        store.commit_prepared(name, staging).unwrap();
        assert_eq!(store.get("kept").unwrap().file_id, m.file_id());
    }
}
