//! The cluster roster: the peer ids allowed to take part in this node's MPC sessions.
//!
//! Members come from `--cluster-member` / `cluster_members` and from `cluster_members_file`
//! (one peer id a line, `#` comments), which is re-read while the node runs so that an
//! operator-mounted ConfigMap can grow or shrink the cluster without a restart. A node
//! without either has no roster and admits every peer (it warns at start).
//!
//! The network service asks [`Roster::admits`] for every inbound MPC message before it
//! decodes the body; the MPC engine asks [`Roster::check_all`] for every participant list,
//! on the coordinator and on every node that receives an invitation.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use libp2p::PeerId;
use serde::Serialize;
use tracing::{info, warn};

/// How often the members file is re-read.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// The roster of a node, shared by the network service, the MPC engine and the API.
#[derive(Debug)]
pub struct Roster {
    local: PeerId,
    /// Members given as flags or config keys (never change while the node runs).
    fixed: BTreeSet<PeerId>,
    /// The members file, if any.
    file: Option<PathBuf>,
    /// `None`: no roster, every peer is admitted.
    current: RwLock<Option<Arc<BTreeSet<PeerId>>>>,
}

/// What `GET /v1/status` shows of the roster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RosterStatus {
    /// Number of members.
    pub size: usize,
    /// Whether this node is one of them.
    pub member: bool,
    /// The members' peer ids.
    #[serde(default)]
    pub members: Vec<String>,
    /// The members file, if one is read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// Parses a members file: one peer id a line; blank lines and `#` comments are skipped.
/// An error names the line.
pub fn parse_members(text: &str) -> Result<BTreeSet<PeerId>, String> {
    let mut out = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let peer = line
            .parse::<PeerId>()
            .map_err(|e| format!("line {}: `{line}` is not a peer id ({e})", i + 1))?;
        out.insert(peer);
    }
    Ok(out)
}

/// Reads a members file; the error names the file and the line.
pub fn read_members(path: &Path) -> Result<BTreeSet<PeerId>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_members(&text).map_err(|e| format!("{}: {e}", path.display()))
}

impl Roster {
    /// A roster of `fixed` members plus those of `file` (read now; an unreadable or
    /// malformed file is an error). Without members and without a file: no roster.
    pub fn new(
        local: PeerId,
        fixed: impl IntoIterator<Item = PeerId>,
        file: Option<PathBuf>,
    ) -> Result<Self, String> {
        let fixed: BTreeSet<PeerId> = fixed.into_iter().collect();
        let current = match &file {
            None if fixed.is_empty() => None,
            None => Some(Arc::new(fixed.clone())),
            Some(path) => {
                let mut all = read_members(path)?;
                all.extend(fixed.iter().copied());
                Some(Arc::new(all))
            }
        };
        Ok(Self {
            local,
            fixed,
            file,
            current: RwLock::new(current),
        })
    }

    /// A node without a roster: every peer is admitted.
    pub fn open(local: PeerId) -> Self {
        Self {
            local,
            fixed: BTreeSet::new(),
            file: None,
            current: RwLock::new(None),
        }
    }

    fn snapshot(&self) -> Option<Arc<BTreeSet<PeerId>>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether a roster is configured.
    pub fn is_set(&self) -> bool {
        self.snapshot().is_some()
    }

    /// Whether `peer` may send this node MPC messages (always, without a roster).
    pub fn admits(&self, peer: &PeerId) -> bool {
        match self.snapshot() {
            None => true,
            Some(m) => m.contains(peer),
        }
    }

    /// The members, if a roster is configured.
    pub fn members(&self) -> Option<Vec<PeerId>> {
        self.snapshot().map(|m| m.iter().copied().collect())
    }

    /// Refuses a participant list that names a peer outside the roster (never, without one).
    pub fn check_all(&self, participants: &[PeerId]) -> Result<(), String> {
        let Some(members) = self.snapshot() else {
            return Ok(());
        };
        let outside: Vec<String> = participants
            .iter()
            .filter(|p| !members.contains(p))
            .map(ToString::to_string)
            .collect();
        if outside.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "not in the cluster roster ({} members): {}",
                members.len(),
                outside.join(", ")
            ))
        }
    }

    /// The roster as `GET /v1/status` shows it (`None` without a roster).
    pub fn status(&self) -> Option<RosterStatus> {
        self.snapshot().map(|m| RosterStatus {
            size: m.len(),
            member: m.contains(&self.local),
            members: m.iter().map(ToString::to_string).collect(),
            file: self.file.as_ref().map(|p| p.display().to_string()),
        })
    }

    /// Re-reads the members file. A file that cannot be read or parsed leaves the roster as
    /// it was (the error is returned for the log). Returns whether the members changed.
    pub fn reload(&self) -> Result<bool, String> {
        let Some(path) = &self.file else {
            return Ok(false);
        };
        let mut all = read_members(path)?;
        all.extend(self.fixed.iter().copied());
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if current.as_deref() == Some(&all) {
            return Ok(false);
        }
        *current = Some(Arc::new(all));
        Ok(true)
    }

    /// Re-reads the members file every [`RELOAD_INTERVAL`] for as long as the node runs,
    /// logging each change and each failed read (once, until the file is good again).
    pub async fn watch(self: Arc<Self>) {
        if self.file.is_none() {
            return;
        }
        let mut failing = false;
        let mut tick = tokio::time::interval(RELOAD_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let roster = self.clone();
            let result = tokio::task::spawn_blocking(move || roster.reload())
                .await
                .unwrap_or_else(|e| Err(format!("reload task failed: {e}")));
            match result {
                Ok(changed) => {
                    if failing {
                        info!("cluster members file is readable again");
                        failing = false;
                    }
                    if changed {
                        let s = self.status();
                        info!(
                            members = s.as_ref().map_or(0, |s| s.size),
                            member = s.as_ref().is_some_and(|s| s.member),
                            "cluster roster changed"
                        );
                    }
                }
                Err(e) if !failing => {
                    warn!(error = %e, "cluster members file not reloaded; the roster stays as it was");
                    failing = true;
                }
                Err(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        PeerId::random()
    }

    #[test]
    fn no_roster_admits_everyone() {
        let r = Roster::new(peer(), [], None).unwrap();
        assert!(!r.is_set());
        assert!(r.admits(&peer()));
        assert!(r.check_all(&[peer()]).is_ok());
        assert_eq!(r.status(), None);
    }

    #[test]
    fn fixed_members_only() {
        let (me, a, stranger) = (peer(), peer(), peer());
        let r = Roster::new(me, [me, a], None).unwrap();
        assert!(r.admits(&a) && r.admits(&me));
        assert!(!r.admits(&stranger));
        let err = r.check_all(&[me, a, stranger]).unwrap_err();
        assert!(err.contains(&stranger.to_string()), "{err}");
        assert!(!err.contains(&a.to_string()), "{err}");
        assert_eq!(r.status().unwrap().size, 2);
        assert!(r.status().unwrap().member);
    }

    #[test]
    fn file_is_parsed_with_comments_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("members");
        let (me, a, b) = (peer(), peer(), peer());
        std::fs::write(&path, format!("# cluster\n{a}\n\n  {me}  # this node\n")).unwrap();
        let r = Roster::new(me, [], Some(path.clone())).unwrap();
        assert!(r.admits(&a) && !r.admits(&b));
        assert!(!r.reload().unwrap(), "unchanged file");
        std::fs::write(&path, format!("{a}\n{b}\n")).unwrap();
        assert!(r.reload().unwrap());
        assert!(r.admits(&b));
        assert!(!r.status().unwrap().member);
        // A broken file keeps the last good roster.
        std::fs::write(&path, "not-a-peer\n").unwrap();
        let err = r.reload().unwrap_err();
        assert!(
            err.contains("line 1") && err.contains("not-a-peer"),
            "{err}"
        );
        assert!(r.admits(&b));
    }

    #[test]
    fn malformed_file_at_start_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("members");
        std::fs::write(&path, format!("{}\nbogus\n", peer())).unwrap();
        let err = Roster::new(peer(), [], Some(path)).unwrap_err();
        assert!(err.contains("line 2") && err.contains("bogus"), "{err}");
    }
}
