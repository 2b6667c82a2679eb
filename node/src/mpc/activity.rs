//! The last MPC sessions this node took part in, kept in memory for the API and the
//! dashboard (`GET /v1/sessions`). Bounded: the last [`SESSIONS_KEPT`] sessions, and apart
//! from them the last [`FAILURES_KEPT`] that did not complete (so a burst of routine
//! sessions does not push a failure out of sight); each record names at most
//! [`PEERS_KEPT`] peers. Nothing secret is recorded: protocol, role, peers, times, outcome,
//! the error's reason (the same text the session's log line carries) and whom it blamed.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libp2p::PeerId;
use serde::Serialize;

/// Records kept; older ones are dropped.
pub const SESSIONS_KEPT: usize = 200;
/// Records of sessions that did not complete, kept apart.
pub const FAILURES_KEPT: usize = 100;
/// Peers named in one record (in `peers` and in `blamed` each); `peers_total` counts all.
pub const PEERS_KEPT: usize = 32;

/// The longest error reason kept in a record, in bytes.
const REASON_BYTES: usize = 300;

/// One finished session, as this node saw it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SessionRecord {
    pub session: String,
    /// `dkg`, `sign`, `aggregation`, ... (the protocol label of the metrics).
    pub protocol: &'static str,
    /// This node's part: `coordinator`, `participant`, `relay`, `collector`, `sender`,
    /// `receiver`.
    pub role: &'static str,
    /// This node first, then the peers it ran the session with (a participant of a
    /// signature knows only its coordinator); at most [`PEERS_KEPT`].
    pub peers: Vec<String>,
    /// How many peers the session had, this node included.
    pub peers_total: usize,
    /// When it started, in milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    pub duration_ms: f64,
    /// `completed`, `failed`, `aborted` or `refused`.
    pub outcome: &'static str,
    /// Why it did not complete (absent when it did).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The peers the session's error blames, among those it ran with: found by this node,
    /// or claimed by the participant that aborted the session (its error then says
    /// "participant … aborted the session").
    pub blamed: Vec<String>,
    /// Order of recording (= order of ending).
    #[serde(skip)]
    seq: u64,
}

/// How one session ended, for [`SessionLog::record`].
pub struct Ended<'a> {
    pub outcome: &'static str,
    pub error: Option<&'a str>,
    pub blamed: &'a [PeerId],
}

/// The bounded log of recent sessions.
#[derive(Default)]
pub struct SessionLog {
    records: Mutex<Rings>,
}

#[derive(Default)]
struct Rings {
    all: VecDeque<Arc<SessionRecord>>,
    failed: VecDeque<Arc<SessionRecord>>,
    next: u64,
}

fn push(ring: &mut VecDeque<Arc<SessionRecord>>, record: Arc<SessionRecord>, cap: usize) {
    if ring.len() == cap {
        ring.pop_front();
    }
    ring.push_back(record);
}

impl SessionLog {
    /// Records a session that ran for `took` and just ended.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        session: String,
        protocol: &'static str,
        role: &'static str,
        local: PeerId,
        others: &[PeerId],
        took: Duration,
        ended: Ended<'_>,
    ) {
        let started = SystemTime::now()
            .checked_sub(took)
            .unwrap_or(UNIX_EPOCH)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut rings = self.records.lock().unwrap_or_else(|e| e.into_inner());
        rings.next += 1;
        let record = Arc::new(SessionRecord {
            seq: rings.next,
            session,
            protocol,
            role,
            peers: std::iter::once(local)
                .chain(others.iter().copied())
                .take(PEERS_KEPT)
                .map(|p| p.to_string())
                .collect(),
            peers_total: others.len() + 1,
            started_at_ms: started.as_millis() as u64,
            duration_ms: took.as_secs_f64() * 1000.0,
            outcome: ended.outcome,
            error: ended.error.map(|e| shorten(e, REASON_BYTES)),
            // A peer can name anyone in an abort: only those the session ran with are kept.
            blamed: ended
                .blamed
                .iter()
                .filter(|p| others.contains(p))
                .take(PEERS_KEPT)
                .map(ToString::to_string)
                .collect(),
        });
        if record.outcome != "completed" {
            push(&mut rings.failed, record.clone(), FAILURES_KEPT);
        }
        push(&mut rings.all, record, SESSIONS_KEPT);
    }

    /// The records, newest first; at most `limit`. Failed sessions pushed out of the last
    /// [`SESSIONS_KEPT`] are still among them.
    pub fn recent(&self, limit: usize) -> Vec<Arc<SessionRecord>> {
        let mut out: Vec<Arc<SessionRecord>> = {
            let rings = self.records.lock().unwrap_or_else(|e| e.into_inner());
            let kept: std::collections::HashSet<*const SessionRecord> =
                rings.all.iter().map(Arc::as_ptr).collect();
            rings
                .all
                .iter()
                .chain(
                    rings
                        .failed
                        .iter()
                        .filter(|r| !kept.contains(&Arc::as_ptr(r))),
                )
                .cloned()
                .collect()
        };
        out.sort_by_key(|r| std::cmp::Reverse(r.seq));
        out.truncate(limit);
        out
    }
}

impl super::MpcEngine {
    /// The last sessions run here, newest first; at most `limit`.
    pub fn recent_sessions(&self, limit: usize) -> Vec<Arc<SessionRecord>> {
        self.inner.sessions.recent(limit)
    }

    /// The engine's metrics (read by the API's activity sampler).
    pub fn metrics(&self) -> &super::metrics::MpcMetrics {
        &self.inner.metrics
    }
}

/// `text` cut to at most `max` bytes on a character boundary, with `…` when cut.
fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(outcome: &'static str) -> Ended<'static> {
        Ended {
            outcome,
            error: None,
            blamed: &[],
        }
    }

    #[test]
    fn keeps_the_newest_records_first_and_at_most_its_bound() {
        let log = SessionLog::default();
        let local = PeerId::random();
        for i in 0..SESSIONS_KEPT + 5 {
            log.record(
                format!("s{i}"),
                "sign",
                "coordinator",
                local,
                &[],
                Duration::from_millis(3),
                ended("completed"),
            );
        }
        let all = log.recent(usize::MAX);
        assert_eq!(all.len(), SESSIONS_KEPT);
        assert_eq!(all[0].session, format!("s{}", SESSIONS_KEPT + 4));
        assert_eq!(all.last().unwrap().session, "s5");
        assert_eq!(log.recent(3).len(), 3);
    }

    #[test]
    fn a_failure_stays_visible_after_many_routine_sessions_and_names_only_its_peers() {
        let log = SessionLog::default();
        let local = PeerId::random();
        let others: Vec<PeerId> = (0..PEERS_KEPT + 10).map(|_| PeerId::random()).collect();
        let stranger = PeerId::random();
        log.record(
            "bad".into(),
            "frost_dkg",
            "participant",
            local,
            &others,
            Duration::from_millis(5),
            Ended {
                outcome: "aborted",
                error: Some("participant x aborted the session: y"),
                blamed: &[others[1], stranger],
            },
        );
        for i in 0..SESSIONS_KEPT * 2 {
            log.record(
                format!("ok{i}"),
                "agg_report",
                "relay",
                local,
                &others[..1],
                Duration::from_millis(1),
                ended("completed"),
            );
        }
        let all = log.recent(usize::MAX);
        assert_eq!(all.len(), SESSIONS_KEPT + 1);
        let bad = all.last().unwrap();
        assert_eq!(bad.session, "bad");
        // A peer outside the session cannot be blamed through an abort.
        assert_eq!(bad.blamed, [others[1].to_string()]);
        assert_eq!(bad.peers.len(), PEERS_KEPT);
        assert_eq!(bad.peers_total, PEERS_KEPT + 11);
        assert_eq!(all[0].session, format!("ok{}", SESSIONS_KEPT * 2 - 1));
    }

    #[test]
    fn a_failed_session_keeps_its_peers_blame_and_a_bounded_reason() {
        let log = SessionLog::default();
        let (local, a, b) = (PeerId::random(), PeerId::random(), PeerId::random());
        let reason = "é".repeat(400);
        log.record(
            "s".into(),
            "dkg",
            "participant",
            local,
            &[a, b],
            Duration::from_millis(1500),
            Ended {
                outcome: "aborted",
                error: Some(&reason),
                blamed: &[b],
            },
        );
        let r = &log.recent(1)[0];
        assert_eq!(r.peers, [local.to_string(), a.to_string(), b.to_string()]);
        assert_eq!(r.blamed, [b.to_string()]);
        assert_eq!(r.outcome, "aborted");
        assert!((r.duration_ms - 1500.0).abs() < 1e-6);
        let error = r.error.as_deref().unwrap();
        assert!(error.len() <= REASON_BYTES + '…'.len_utf8() && error.ends_with('…'));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(r.started_at_ms <= now - 1400 && r.started_at_ms > now - 60_000);
    }
}
