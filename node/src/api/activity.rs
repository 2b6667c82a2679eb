//! What the node did lately, for the dashboard: `GET /v1/sessions` (the last MPC sessions)
//! and `GET /v1/activity` (counts per interval over the last minutes, sampled from the
//! node's own metrics by a background task).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use prometheus::core::Collector;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiState};
use crate::metrics::NodeMetrics;
use crate::mpc::activity::{FAILURES_KEPT, SESSIONS_KEPT, SessionRecord};
use crate::mpc::metrics::MpcMetrics;

/// How often the activity is sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// Samples kept: ten minutes.
pub const SAMPLES_KEPT: usize = 120;

/// What happened on this node in one interval.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sample {
    /// End of the interval, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Length of the interval in seconds.
    pub seconds: f64,
    /// Signatures this node coordinated.
    pub signatures: u64,
    /// MPC sessions that completed here (every protocol and role).
    pub sessions_completed: u64,
    /// MPC sessions that failed, were aborted or refused here.
    pub sessions_failed: u64,
    /// Mean duration of the completed sessions, in milliseconds (absent when none completed).
    pub session_ms_mean: Option<f64>,
    /// Gossip messages published here or received and accepted, by topic.
    pub messages: BTreeMap<String, u64>,
}

/// The running totals a sample is the difference of.
#[derive(Debug, Clone, Default, PartialEq)]
struct Totals {
    signatures: u64,
    sessions_completed: u64,
    sessions_failed: u64,
    completed_seconds: f64,
    completed_count: u64,
    messages: BTreeMap<String, u64>,
}

/// The sampled series: the last [`SAMPLES_KEPT`] samples.
pub struct Activity {
    node: Arc<NodeMetrics>,
    mpc: MpcMetrics,
    state: Mutex<SeriesState>,
}

struct SeriesState {
    last: Totals,
    /// Monotonic: a step of the wall clock does not change an interval's length.
    last_at: Instant,
    samples: VecDeque<Sample>,
}

impl Activity {
    /// A series over `node`'s and `mpc`'s metrics, starting from their current totals.
    pub fn new(node: Arc<NodeMetrics>, mpc: MpcMetrics) -> Self {
        let last = totals(&node, &mpc);
        Self {
            node,
            mpc,
            state: Mutex::new(SeriesState {
                last,
                last_at: Instant::now(),
                samples: VecDeque::new(),
            }),
        }
    }

    /// Takes one sample: what the metrics counted since the last one.
    pub fn sample(&self) {
        let now = totals(&self.node, &self.mpc);
        let at = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let seconds = at.duration_since(state.last_at).as_secs_f64();
        let sample = difference(&state.last, &now, SystemTime::now(), seconds);
        state.last = now;
        state.last_at = at;
        if state.samples.len() == SAMPLES_KEPT {
            state.samples.pop_front();
        }
        state.samples.push_back(sample);
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.samples.iter().cloned().collect()
    }

    /// Samples every [`SAMPLE_INTERVAL`] until the node stops.
    pub async fn run(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            self.sample();
        }
    }
}

fn difference(before: &Totals, now: &Totals, at: SystemTime, seconds: f64) -> Sample {
    let completed = now.completed_count.saturating_sub(before.completed_count);
    Sample {
        at_ms: at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64,
        seconds,
        signatures: now.signatures.saturating_sub(before.signatures),
        sessions_completed: now
            .sessions_completed
            .saturating_sub(before.sessions_completed),
        sessions_failed: now.sessions_failed.saturating_sub(before.sessions_failed),
        session_ms_mean: (completed > 0).then(|| {
            (now.completed_seconds - before.completed_seconds).max(0.0) * 1000.0 / completed as f64
        }),
        messages: now
            .messages
            .iter()
            .map(|(topic, n)| {
                let was = before.messages.get(topic).copied().unwrap_or(0);
                (topic.clone(), n.saturating_sub(was))
            })
            .collect(),
    }
}

/// The sum of a counter family's children whose labels pass `keep`.
fn counter_sum(
    family: &impl Collector,
    keep: impl Fn(&[prometheus::proto::LabelPair]) -> bool,
) -> u64 {
    family
        .collect()
        .iter()
        .flat_map(|mf| mf.get_metric())
        .filter(|m| keep(m.get_label()))
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

fn label<'a>(labels: &'a [prometheus::proto::LabelPair], name: &str) -> Option<&'a str> {
    labels.iter().find(|l| l.name() == name).map(|l| l.value())
}

fn totals(node: &NodeMetrics, mpc: &MpcMetrics) -> Totals {
    let mut messages = BTreeMap::new();
    for family in [&node.gossip_published, &node.gossip_received] {
        for mf in family.collect() {
            for m in mf.get_metric() {
                if let Some(topic) = label(m.get_label(), "topic") {
                    *messages.entry(topic.to_string()).or_insert(0) +=
                        m.get_counter().get_value() as u64;
                }
            }
        }
    }
    let (mut completed_seconds, mut completed_count) = (0.0, 0);
    for mf in mpc.session_duration_seconds.collect() {
        for m in mf.get_metric() {
            if label(m.get_label(), "outcome") == Some("completed") {
                completed_seconds += m.get_histogram().get_sample_sum();
                completed_count += m.get_histogram().get_sample_count();
            }
        }
    }
    Totals {
        signatures: counter_sum(&mpc.signatures, |_| true),
        sessions_completed: counter_sum(&mpc.sessions_completed, |_| true),
        sessions_failed: counter_sum(&mpc.sessions_failed, |_| true),
        completed_seconds,
        completed_count,
        messages,
    }
}

/// The query of `GET /v1/sessions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsQuery {
    /// At most this many records (default and largest: every record kept).
    pub limit: Option<usize>,
}

/// `GET /v1/sessions`: the last MPC sessions run here, newest first.
pub(super) async fn sessions(
    State(state): State<ApiState>,
    query: Result<Query<SessionsQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(query) = query.map_err(|e| {
        ApiError::bad_request("invalid_query", format!("invalid query: {}", e.body_text()))
    })?;
    let limit = query.limit.unwrap_or(SESSIONS_KEPT + FAILURES_KEPT);
    if limit == 0 {
        return Err(ApiError::bad_request(
            "invalid_query",
            "`limit` must be at least 1",
        ));
    }
    let records = state.mpc.recent_sessions(limit);
    let answer = SessionsResponse {
        kept: SESSIONS_KEPT,
        failures_kept: FAILURES_KEPT,
        sessions: records.iter().map(|r| &**r).collect(),
    };
    Ok(Json(serde_json::to_value(answer).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            e.to_string(),
        )
    })?))
}

/// Answer of `GET /v1/sessions`.
#[derive(Debug, Serialize)]
pub struct SessionsResponse<'a> {
    /// How many records of the last sessions the node keeps.
    pub kept: usize,
    /// How many records of failed sessions it keeps beyond those.
    pub failures_kept: usize,
    pub sessions: Vec<&'a SessionRecord>,
}

/// Answer of `GET /v1/activity`.
#[derive(Debug, Serialize)]
pub struct ActivityResponse {
    pub interval_seconds: u64,
    /// Oldest first; at most ten minutes of them.
    pub samples: Vec<Sample>,
}

/// `GET /v1/activity`: counts per interval over the last minutes.
pub(super) async fn activity(State(state): State<ApiState>) -> Json<ActivityResponse> {
    Json(ActivityResponse {
        interval_seconds: SAMPLE_INTERVAL.as_secs(),
        samples: state.activity.samples(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> (Arc<NodeMetrics>, MpcMetrics) {
        let node = Arc::new(NodeMetrics::new(
            prometheus_client::registry::Registry::default(),
        ));
        let mpc = MpcMetrics::new(&prometheus::Registry::new());
        (node, mpc)
    }

    #[test]
    fn a_sample_counts_what_happened_since_the_last_one() {
        let (node, mpc) = metrics();
        // Counted before the series started: not in any sample.
        mpc.signatures.with_label_values(&["presigned"]).inc_by(7);
        node.gossip_received.with_label_values(&["chat"]).inc_by(3);
        let activity = Activity::new(node.clone(), mpc.clone());

        mpc.signatures.with_label_values(&["presigned"]).inc_by(2);
        mpc.signatures.with_label_values(&["two_round"]).inc();
        mpc.sessions_completed
            .with_label_values(&["sign"])
            .inc_by(3);
        mpc.sessions_failed
            .with_label_values(&["dkg", "aborted"])
            .inc();
        for seconds in [0.002, 0.004] {
            mpc.session_duration_seconds
                .with_label_values(&["sign", "completed"])
                .observe(seconds);
        }
        // A failed session's time is not in the mean of completed ones.
        mpc.session_duration_seconds
            .with_label_values(&["dkg", "aborted"])
            .observe(9.0);
        node.gossip_received.with_label_values(&["chat"]).inc_by(5);
        node.gossip_published.with_label_values(&["chat"]).inc();
        node.gossip_published.with_label_values(&["news"]).inc_by(4);
        activity.sample();
        let s = &activity.samples()[0];
        assert_eq!(s.signatures, 3);
        assert_eq!(s.sessions_completed, 3);
        assert_eq!(s.sessions_failed, 1);
        assert!((s.session_ms_mean.unwrap() - 3.0).abs() < 1e-9, "{s:?}");
        assert_eq!(s.messages["chat"], 6);
        assert_eq!(s.messages["news"], 4);

        // Nothing happened: zeros, and no mean.
        activity.sample();
        let s = &activity.samples()[1];
        assert_eq!((s.signatures, s.sessions_completed), (0, 0));
        assert_eq!(s.session_ms_mean, None);
        assert_eq!(s.messages["chat"], 0);
    }

    #[test]
    fn the_series_keeps_ten_minutes() {
        let (node, mpc) = metrics();
        let activity = Activity::new(node, mpc.clone());
        for i in 0..SAMPLES_KEPT + 3 {
            mpc.signatures
                .with_label_values(&["presigned"])
                .inc_by(i as u64);
            activity.sample();
        }
        let samples = activity.samples();
        assert_eq!(samples.len(), SAMPLES_KEPT);
        assert_eq!(samples[0].signatures, 3);
        assert_eq!(
            samples.last().unwrap().signatures,
            (SAMPLES_KEPT + 2) as u64
        );
    }
}
