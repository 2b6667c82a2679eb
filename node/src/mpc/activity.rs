//! The last MPC sessions this node took part in, kept in memory for the API and the
//! dashboard (`GET /v1/sessions`). Bounded: the oldest record goes when the log is full.
//! Nothing secret is recorded: protocol, role, peers, times, outcome, the error's reason
//! (the same text the session's log line carries) and whom it blamed.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libp2p::PeerId;
use serde::Serialize;

/// Records kept; older ones are dropped.
pub const SESSIONS_KEPT: usize = 200;

/// The longest error reason kept in a record, in bytes.
const REASON_BYTES: usize = 300;

/// One finished session, as this node saw it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SessionRecord {
    pub session: String,
    /// `dkg`, `sign`, `aggregation`, ... (the protocol label of the metrics).
    pub protocol: &'static str,
    /// `coordinator` or `participant`.
    pub role: &'static str,
    /// This node first, then the other participants it ran the session with.
    pub peers: Vec<String>,
    /// When it started, in milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    pub duration_ms: f64,
    /// `completed`, `failed`, `aborted` or `refused`.
    pub outcome: &'static str,
    /// Why it did not complete (absent when it did).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The participants this node's side of the session blamed (a claim of this node).
    pub blamed: Vec<String>,
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
    records: Mutex<VecDeque<SessionRecord>>,
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
        let record = SessionRecord {
            session,
            protocol,
            role,
            peers: std::iter::once(local)
                .chain(others.iter().copied())
                .map(|p| p.to_string())
                .collect(),
            started_at_ms: started.as_millis() as u64,
            duration_ms: took.as_secs_f64() * 1000.0,
            outcome: ended.outcome,
            error: ended.error.map(|e| shorten(e, REASON_BYTES)),
            blamed: ended.blamed.iter().map(ToString::to_string).collect(),
        };
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if records.len() == SESSIONS_KEPT {
            records.pop_front();
        }
        records.push_back(record);
    }

    /// The records, newest first; at most `limit`.
    pub fn recent(&self, limit: usize) -> Vec<SessionRecord> {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records.iter().rev().take(limit).cloned().collect()
    }
}

impl super::MpcEngine {
    /// The last sessions run here, newest first; at most `limit`.
    pub fn recent_sessions(&self, limit: usize) -> Vec<SessionRecord> {
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
