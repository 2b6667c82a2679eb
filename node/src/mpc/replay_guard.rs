//! The signing-request ids a holder has used, so that no authorization is used twice.
//!
//! Every holder checks a request's authorizations against the key's policy and remembers
//! their request ids until they expire. The check and the reservation happen in memory,
//! under a short lock, on whatever task handles the request (for a holder, the router's
//! loop, which must never wait on a disk). What makes the ids durable is a separate,
//! asynchronous step that the caller awaits before it commits to round 1: an append to
//! `<data-dir>/sign-requests.log` with `fdatasync`, off the async threads. The log is one
//! line per id (`<32 hex digits> <expiry in unix seconds>`), and one line per signing
//! request counted by a key's per-minute rule (`rate <key id> <unix seconds>`), so that a
//! restart resets neither; it is compacted when it opens and whenever it holds more than
//! twice the live entries (plus some slack), from a snapshot taken under the state lock and
//! written without it, so admissions go on while the file is rewritten.
//!
//! A torn last line (a crash in the middle of an append) is ignored: its append never
//! returned, so the request it belonged to was never signed. An append that fails part-way
//! (a full disk) cuts the file back to where it started, or, if even that fails, has the
//! next append rewrite the log from memory first, so a torn line never ends up in the
//! middle. Any other malformed line stops the node with the line's number, since forgetting
//! used ids would reopen replays.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::policy::{self, Approves, Authorization, Refusal, SigningPolicy};

/// The log's file name in the data directory.
pub const LOG_FILE: &str = "sign-requests.log";
/// Lines a log may hold beyond twice the live ids before it is compacted.
const COMPACT_SLACK: usize = 1024;

/// See the module docs. Cheap to clone; clones share the ids and the log.
#[derive(Clone)]
pub struct ReplayGuard {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    state: Mutex<State>,
    /// Serializes appends and compactions; only ever locked on a blocking thread.
    log: Mutex<Log>,
    /// Test-only: the next append writes this many bytes, then fails (a full disk).
    #[cfg(test)]
    short_write: Mutex<Option<usize>>,
    /// Test-only: whether the state lock was free while a compaction wrote the file.
    #[cfg(test)]
    compacted_unlocked: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct State {
    seen: HashMap<[u8; 16], u64>,
    by_expiry: BTreeSet<(u64, [u8; 16])>,
    /// Accepted signing requests by key, for the per-minute rule (unix seconds).
    recent: HashMap<String, VecDeque<u64>>,
}

struct Log {
    file: File,
    lines: usize,
    /// A failed append could not be cut back: the file may end in a torn line, so the next
    /// append rewrites the log from memory first.
    dirty: bool,
}

/// Request ids admitted in memory that are not yet on disk. Await
/// [`persist`](Self::persist) before committing to round 1.
#[must_use = "the request ids are not durable until `persist` returns"]
pub struct Pending {
    guard: ReplayGuard,
    ids: Vec<([u8; 16], u64)>,
    /// The key and time this request counts against the per-minute rule, if it has one.
    rate: Option<(String, u64)>,
}

/// How long a signing request counts against a key's per-minute rule.
const RATE_WINDOW: u64 = 60;

impl State {
    fn forget_expired(&mut self, now: u64) {
        while let Some(&(exp, id)) = self.by_expiry.first() {
            if exp > now {
                break;
            }
            self.by_expiry.pop_first();
            self.seen.remove(&id);
        }
    }

    fn insert(&mut self, id: [u8; 16], exp: u64) {
        if let Some(old) = self.seen.insert(id, exp) {
            self.by_expiry.remove(&(old, id));
        }
        self.by_expiry.insert((exp, id));
    }
}

fn line(id: &[u8; 16], exp: u64) -> String {
    format!("{} {exp}\n", hex::encode(id))
}

fn rate_line(key_id: &str, at: u64) -> String {
    format!("rate {key_id} {at}\n")
}

/// A key id that can stand in a log line (the ids this node makes are 32 hex digits).
fn loggable(key_id: &str) -> bool {
    !key_id.is_empty() && key_id.len() <= 128 && key_id.chars().all(|c| c.is_ascii_graphic())
}

/// One line of the log.
enum Entry {
    Id([u8; 16], u64),
    Rate(String, u64),
}

fn parse_line(text: &str) -> Option<Entry> {
    if let Some(rest) = text.strip_prefix("rate ") {
        let (key, at) = rest.split_once(' ')?;
        return loggable(key).then(|| Some(Entry::Rate(key.to_string(), at.parse().ok()?)))?;
    }
    let (id, exp) = text.split_once(' ')?;
    let id = <[u8; 16]>::try_from(hex::decode(id).ok()?).ok()?;
    Some(Entry::Id(id, exp.parse().ok()?))
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

/// Rewrites the log atomically with the live entries only: ids not expired, requests of the
/// last minute.
fn compact(path: &Path, state: &State, now: u64) -> std::io::Result<(File, usize)> {
    let (text, lines) = live_text(state, now);
    write_compacted(path, &text, lines)
}

/// The live entries as the text of a compacted log, and its number of lines.
fn live_text(state: &State, now: u64) -> (String, usize) {
    let mut text = String::with_capacity(state.seen.len() * 44);
    for (exp, id) in &state.by_expiry {
        text.push_str(&line(id, *exp));
    }
    let mut lines = state.seen.len();
    for (key, times) in &state.recent {
        for at in times.iter().filter(|at| **at + RATE_WINDOW > now) {
            if loggable(key) {
                text.push_str(&rate_line(key, *at));
                lines += 1;
            }
        }
    }
    (text, lines)
}

/// Replaces the log with `text` (`lines` lines) atomically and opens it for appends.
fn write_compacted(path: &Path, text: &str, lines: usize) -> std::io::Result<(File, usize)> {
    crate::atomic_file::write(path, text.as_bytes(), crate::atomic_file::Existing::Replace)?;
    Ok((open_append(path)?, lines))
}

impl ReplayGuard {
    /// Loads the guard of `data_dir` (a missing log is an empty guard; a corrupt one is an
    /// error naming the line) and compacts the log.
    pub fn open(data_dir: &Path) -> Result<Self, String> {
        Self::open_at(data_dir, policy::now())
    }

    fn open_at(data_dir: &Path, now: u64) -> Result<Self, String> {
        let path = data_dir.join(LOG_FILE);
        let mut state = State::default();
        // Lines on disk, and whether anything else (a torn last line) follows them.
        let (mut read, mut torn) = (0, false);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let text = String::from_utf8(bytes)
                    .map_err(|_| format!("{}: the file is not text", path.display()))?;
                let complete = match text.rfind('\n') {
                    Some(end) => &text[..=end],
                    None => "",
                };
                torn = complete.len() < text.len();
                for (n, l) in complete.lines().enumerate() {
                    read = n + 1;
                    match parse_line(l) {
                        Some(Entry::Id(id, exp)) => state.insert(id, exp),
                        Some(Entry::Rate(key, at)) => {
                            if at + RATE_WINDOW > now {
                                state.recent.entry(key).or_default().push_back(at);
                            }
                        }
                        None => {
                            return Err(format!(
                                "{} line {}: expected `<32 hex digits> <unix seconds>` or `rate <key id> <unix seconds>`",
                                path.display(),
                                n + 1
                            ));
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        }
        state.forget_expired(now);
        let live = state.seen.len() + state.recent.values().map(VecDeque::len).sum::<usize>();
        // Rewritten only when it holds more than the live entries.
        let opened = if torn || read > live {
            compact(&path, &state, now)
        } else {
            open_append(&path).map(|file| (file, read))
        };
        let (file, lines) = opened.map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                state: Mutex::new(state),
                log: Mutex::new(Log {
                    file,
                    lines,
                    dirty: false,
                }),
                #[cfg(test)]
                short_write: Mutex::new(None),
                #[cfg(test)]
                compacted_unlocked: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks `authorizations` against `policy` and the rate rule and, when they pass,
    /// reserves their request ids in memory (a second request with the same ids is refused
    /// from now on). No disk I/O: the caller awaits [`Pending::persist`] before round 1.
    pub fn admit(
        &self,
        policy: &SigningPolicy,
        key_id: &str,
        signing: Approves<'_>,
        authorizations: &[Authorization],
        now: u64,
    ) -> Result<Pending, Refusal> {
        debug_assert!(matches!(signing, Approves::Signing { .. }));
        self.admit_inner(policy, key_id, signing, authorizations, now, true)
    }

    /// Checks the approvals of a policy change from `current` to `new_policy`, signed under
    /// the change domain over both digests, by the current policy's change approvers (its
    /// clients, or an open key's admins; none for a fixed or legacy key), with the expiry
    /// and replay rules; the message rules and rate do not apply (they govern what may be
    /// signed, not who may change the policy).
    pub fn admit_change(
        &self,
        current: &SigningPolicy,
        current_version: u64,
        key_id: &str,
        new_policy: &SigningPolicy,
        authorizations: &[Authorization],
        now: u64,
    ) -> Result<Pending, Refusal> {
        let approvers = current.change_approvers()?;
        let change = Approves::PolicyChange {
            current: current.stamp(current_version),
            new: new_policy.digest(),
        };
        self.admit_inner(&approvers, key_id, change, authorizations, now, false)
    }

    /// Checks the approvals of moving `key_id` to the holder set whose
    /// [`holders_digest`](policy::holders_digest) is `holders`, as generation `generation`:
    /// signed under the reshare domain by the policy's change approvers, with the expiry and
    /// replay rules (a `roster` key needs none; its caller checks the holder set instead).
    pub fn admit_reshare(
        &self,
        current: &SigningPolicy,
        key_id: &str,
        generation: u64,
        holders: [u8; 32],
        authorizations: &[Authorization],
        now: u64,
    ) -> Result<Pending, Refusal> {
        let approvers = current.change_approvers()?;
        let reshare = Approves::Reshare {
            generation,
            holders,
        };
        self.admit_inner(&approvers, key_id, reshare, authorizations, now, false)
    }

    /// Checks the approvals of a vault request (`what`: a get or a delete of file `name`)
    /// by `clients`, K of them, with the expiry and replay rules.
    pub fn admit_vault(
        &self,
        clients: &[String],
        approvals: u16,
        name: &str,
        what: Approves<'_>,
        authorizations: &[Authorization],
        now: u64,
    ) -> Result<Pending, Refusal> {
        debug_assert!(matches!(
            what,
            Approves::VaultGet { .. } | Approves::VaultDelete { .. }
        ));
        let policy = SigningPolicy::clients(clients.to_vec(), approvals);
        self.admit_inner(&policy, name, what, authorizations, now, false)
    }

    fn admit_inner(
        &self,
        policy: &SigningPolicy,
        key_id: &str,
        what: Approves<'_>,
        authorizations: &[Authorization],
        now: u64,
        count_rate: bool,
    ) -> Result<Pending, Refusal> {
        let mut state = self.state();
        state.forget_expired(now);
        let ids = policy.check(key_id, what, authorizations, now, |id| {
            state.seen.contains_key(id)
        })?;
        let mut rate = None;
        if let Some(max) = policy.max_signatures_per_minute.filter(|_| count_rate) {
            let recent = state.recent.entry(key_id.to_string()).or_default();
            while recent.front().is_some_and(|t| *t + RATE_WINDOW <= now) {
                recent.pop_front();
            }
            if recent.len() >= max as usize {
                return Err(policy::refuse(
                    "max_signatures_per_minute",
                    format!(
                        "key {key_id} signed {} times in the last minute; the policy allows {max}",
                        recent.len()
                    ),
                ));
            }
            recent.push_back(now);
            rate = loggable(key_id).then(|| (key_id.to_string(), now));
        }
        for (id, exp) in &ids {
            state.insert(*id, *exp);
        }
        Ok(Pending {
            guard: self.clone(),
            ids,
            rate,
        })
    }

    /// Appends `ids` (and the request's `rate` entry) to the log and syncs it; compacts
    /// first when the log has grown.
    fn append(&self, ids: &[([u8; 16], u64)], rate: Option<&(String, u64)>) -> std::io::Result<()> {
        let inner = &self.inner;
        let mut log = inner.log.lock().unwrap_or_else(|e| e.into_inner());
        let live = {
            let state = self.state();
            state.seen.len() + state.recent.values().map(VecDeque::len).sum::<usize>()
        };
        if log.dirty || log.lines > 2 * live + COMPACT_SLACK {
            // The reserved entries are in memory already, so the compacted log holds them too.
            // Only the snapshot is taken under the state lock: the router admits requests
            // while the file is written and synced (appends wait for the log lock, and an
            // entry both in the snapshot and appended after it is only a repeated line).
            let (text, lines) = live_text(&self.state(), policy::now());
            #[cfg(test)]
            inner.compacted_unlocked.store(
                inner.state.try_lock().is_ok(),
                std::sync::atomic::Ordering::SeqCst,
            );
            let (file, lines) = write_compacted(&inner.path, &text, lines)?;
            *log = Log {
                file,
                lines,
                dirty: false,
            };
            return Ok(());
        }
        let mut text: String = ids.iter().map(|(id, exp)| line(id, *exp)).collect();
        if let Some((key, at)) = rate {
            text.push_str(&rate_line(key, *at));
        }
        let start = log.file.metadata()?.len();
        let written = self
            .write(&mut log.file, text.as_bytes())
            .and_then(|()| log.file.sync_data());
        if let Err(e) = written {
            // Cut a partial line off, so that the next append starts on a line of its own.
            let cut = log.file.set_len(start).and_then(|()| log.file.sync_data());
            if cut.is_err() {
                log.dirty = true;
            }
            return Err(e);
        }
        log.lines += ids.len() + usize::from(rate.is_some());
        Ok(())
    }

    fn write(&self, file: &mut File, bytes: &[u8]) -> std::io::Result<()> {
        #[cfg(test)]
        if let Some(n) = self
            .inner
            .short_write
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            file.write_all(&bytes[..n.min(bytes.len())])?;
            return Err(std::io::Error::other("test: no space left on device"));
        }
        file.write_all(bytes)
    }
}

impl Pending {
    /// Makes the reserved ids and the rate entry durable (an open policy without a rate rule
    /// has neither: nothing to do). On failure the request must be refused: after a restart
    /// its ids would be forgotten.
    pub async fn persist(self) -> Result<(), Refusal> {
        if self.ids.is_empty() && self.rate.is_none() {
            return Ok(());
        }
        let Pending { guard, ids, rate } = self;
        let result = tokio::task::spawn_blocking(move || guard.append(&ids, rate.as_ref()))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        result.map_err(|e| policy::refuse("internal", format!("cannot record the request id: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mpc::policy::authorize;
    use crate::mpc::policy::tests::{client, coordinator, policy, signing};

    /// Admits `auth` for key `k` and message `m` and makes it durable.
    async fn admit_persisted(
        guard: &ReplayGuard,
        p: &SigningPolicy,
        auth: &[Authorization],
        now: u64,
    ) {
        guard
            .admit(p, "k", signing(b"m"), auth, now)
            .unwrap()
            .persist()
            .await
            .unwrap();
    }

    /// The rule that refuses `auth` for key `k` and message `m`.
    fn refused(
        guard: &ReplayGuard,
        p: &SigningPolicy,
        auth: &[Authorization],
        now: u64,
    ) -> &'static str {
        guard
            .admit(p, "k", signing(b"m"), auth, now)
            .err()
            .expect("refused")
            .rule
    }

    #[tokio::test]
    async fn ids_survive_a_restart_once_persisted_and_the_rate_is_limited() {
        let dir = tempfile::tempdir().unwrap();
        let a = client();
        let mut p = policy(&[&a], 1);
        p.max_signatures_per_minute = Some(2);
        let now = policy::now();
        let auth = vec![authorize(&a, "k", &coordinator(), b"m", now + 30)];
        let guard = ReplayGuard::open(dir.path()).unwrap();
        admit_persisted(&guard, &p, &auth, now).await;
        // Reserved in memory: refused at once, before any disk write.
        assert_eq!(refused(&guard, &p, &auth, now), "replayed");
        let inode = || {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(dir.path().join(LOG_FILE)).unwrap().ino()
        };
        let before = inode();
        let again = ReplayGuard::open(dir.path()).unwrap();
        assert_eq!(refused(&again, &p, &auth, now), "replayed");
        // A log of live ids only is not rewritten at start.
        assert_eq!(
            inode(),
            before,
            "the log was rewritten though nothing expired"
        );
        let second = vec![authorize(&a, "k", &coordinator(), b"m", now + 30)];
        let third = vec![authorize(&a, "k", &coordinator(), b"m", now + 30)];
        let _ = guard.admit(&p, "k", signing(b"m"), &second, now).unwrap();
        assert_eq!(
            refused(&guard, &p, &third, now + 1),
            "max_signatures_per_minute"
        );
        // A minute later the rate allows it again.
        let later = vec![authorize(&a, "k", &coordinator(), b"m", now + 100)];
        let _ = guard
            .admit(&p, "k", signing(b"m"), &later, now + 61)
            .unwrap();
    }

    #[tokio::test]
    async fn the_per_minute_rule_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let a = client();
        let mut p = policy(&[&a], 1);
        p.max_signatures_per_minute = Some(2);
        let now = policy::now();
        let guard = ReplayGuard::open_at(dir.path(), now).unwrap();
        for _ in 0..2 {
            let auth = vec![authorize(&a, "k", &coordinator(), b"m", now + 30)];
            admit_persisted(&guard, &p, &auth, now).await;
        }
        // An open key with a rate rule has no ids to record, but its rate is recorded too.
        let mut open = SigningPolicy::open();
        open.max_signatures_per_minute = Some(1);
        guard
            .admit(&open, "o", signing(b"m"), &[], now)
            .unwrap()
            .persist()
            .await
            .unwrap();
        drop(guard);
        let text = std::fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
        assert_eq!(
            text.lines().filter(|l| l.starts_with("rate k ")).count(),
            2,
            "{text}"
        );
        // Restarted within the minute: the third signature is still refused.
        let again = ReplayGuard::open_at(dir.path(), now + 10).unwrap();
        let third = vec![authorize(&a, "k", &coordinator(), b"m", now + 40)];
        assert_eq!(
            refused(&again, &p, &third, now + 10),
            "max_signatures_per_minute"
        );
        assert_eq!(
            again
                .admit(&open, "o", signing(b"m"), &[], now + 10)
                .err()
                .unwrap()
                .rule,
            "max_signatures_per_minute"
        );
        drop(again);
        // Restarted a minute later: allowed again, and the old entries are compacted away.
        let later = ReplayGuard::open_at(dir.path(), now + 61).unwrap();
        let fourth = vec![authorize(&a, "k", &coordinator(), b"m", now + 90)];
        admit_persisted(&later, &p, &fourth, now + 61).await;
        let text = std::fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
        assert_eq!(
            text.lines().filter(|l| l.starts_with("rate ")).count(),
            1,
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_torn_last_line_is_ignored_and_a_bad_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let a = client();
        let p = policy(&[&a], 1);
        let now = policy::now();
        let auth = vec![authorize(&a, "k", &coordinator(), b"m", now + 30)];
        let guard = ReplayGuard::open(dir.path()).unwrap();
        admit_persisted(&guard, &p, &auth, now).await;
        drop(guard);
        let path = dir.path().join(LOG_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"0123456789abcdef01").unwrap();
        drop(f);
        let reopened = ReplayGuard::open(dir.path()).unwrap();
        assert_eq!(refused(&reopened, &p, &auth, now), "replayed");
        drop(reopened);
        // Compaction dropped the torn line.
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        std::fs::write(&path, format!("{text}not an id\n")).unwrap();
        let err = ReplayGuard::open(dir.path()).err().unwrap();
        assert!(err.contains("line 2"), "{err}");
    }

    #[tokio::test]
    async fn an_append_cut_short_leaves_no_torn_line_in_the_middle() {
        let dir = tempfile::tempdir().unwrap();
        let a = client();
        let p = policy(&[&a], 1);
        let now = policy::now();
        let auths: Vec<Vec<Authorization>> = (0..3)
            .map(|_| vec![authorize(&a, "k", &coordinator(), b"m", now + 30)])
            .collect();
        let guard = ReplayGuard::open(dir.path()).unwrap();
        admit_persisted(&guard, &p, &auths[0], now).await;
        // The disk fills in the middle of the second append: that request is refused.
        *guard.inner.short_write.lock().unwrap() = Some(10);
        let cut_short = guard
            .admit(&p, "k", signing(b"m"), &auths[1], now)
            .unwrap()
            .persist()
            .await
            .unwrap_err();
        assert_eq!(cut_short.rule, "internal");
        assert!(cut_short.detail.contains("no space left"), "{cut_short}");
        // Space again: the third one is recorded on a line of its own.
        admit_persisted(&guard, &p, &auths[2], now).await;
        drop(guard);
        let text = std::fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
        assert!(text.lines().all(|l| parse_line(l).is_some()), "{text}");
        // The node starts; the used ids stay used, the refused request's were never used.
        let reopened = ReplayGuard::open(dir.path()).unwrap();
        assert_eq!(refused(&reopened, &p, &auths[0], now), "replayed");
        assert_eq!(refused(&reopened, &p, &auths[2], now), "replayed");
        assert!(
            reopened
                .admit(&p, "k", signing(b"m"), &auths[1], now)
                .is_ok()
        );
    }

    #[tokio::test]
    async fn expired_ids_are_forgotten_and_the_log_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let a = client();
        let p = policy(&[&a], 1);
        let start = policy::now();
        let guard = ReplayGuard::open_at(dir.path(), start).unwrap();
        // Many short-lived ids, each persisted as its own append.
        let total = 2 * COMPACT_SLACK + 10;
        for i in 0..total as u64 {
            let now = start + i;
            let auth = vec![authorize(&a, "k", &coordinator(), b"m", now + 1)];
            admit_persisted(&guard, &p, &auth, now).await;
        }
        let lines = std::fs::read_to_string(dir.path().join(LOG_FILE))
            .unwrap()
            .lines()
            .count();
        assert!(lines < total, "the log was never compacted: {lines} lines");
        // The router's admissions were not locked out while the file was written.
        assert!(
            guard
                .inner
                .compacted_unlocked
                .load(std::sync::atomic::Ordering::SeqCst),
            "the state lock was held across the compaction's write"
        );
        assert!(
            guard.state().seen.len() <= 2,
            "expired ids stayed in memory"
        );
        // Reopening later forgets them all and leaves an empty log.
        drop(guard);
        let later = ReplayGuard::open_at(dir.path(), start + total as u64 + 5).unwrap();
        assert!(later.state().seen.is_empty());
        assert_eq!(
            std::fs::read_to_string(dir.path().join(LOG_FILE)).unwrap(),
            ""
        );
    }
}
