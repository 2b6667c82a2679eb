//! Metrics of the MPC session layer (registered in the node's registry).

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Counters and histograms of MPC sessions and messages.
#[derive(Clone)]
pub struct MpcMetrics {
    /// Sessions started, by protocol and role.
    pub sessions_started: IntCounterVec,
    /// Sessions completed, by protocol.
    pub sessions_completed: IntCounterVec,
    /// Sessions failed or aborted, by protocol and outcome (`failed`, `aborted`).
    pub sessions_failed: IntCounterVec,
    /// Session duration by protocol and outcome.
    pub session_duration_seconds: HistogramVec,
    /// MPC messages by protocol and direction (`sent`, `received`).
    pub messages: IntCounterVec,
    /// Inbound MPC messages dropped, by protocol and reason.
    pub messages_dropped: IntCounterVec,
    /// Client reports taken by this node (as relay), by outcome (`accepted` or the error code).
    pub aggregation_reports: IntCounterVec,
    /// Sealed shares this node checked as owner, by outcome.
    pub aggregation_shares: IntCounterVec,
    /// Signing requests checked against their key's policy, by policy kind (`open`,
    /// `clients`) and outcome (`authorized` or the rule that refused it).
    pub sign_authorizations: IntCounterVec,
    /// Keys held here that were stored before signing policies existed (`legacy-open`).
    pub legacy_open_keys: prometheus::IntGauge,
    /// Keys held here, by signature scheme.
    pub keys: prometheus::IntGaugeVec,
    /// Policy changes applied here, by how (`coordinator`, `commit`, `catch_up`).
    pub policy_changes: IntCounterVec,
    /// Bytes of inbound messages that sessions hold (waiting in inboxes and kept for later
    /// rounds).
    pub held_bytes: prometheus::IntGauge,
    /// Bytes of inbound messages refused for a byte budget, by budget.
    pub held_bytes_refused: IntCounterVec,
    /// Presignatures this node may use as coordinator, by key.
    pub presignatures: prometheus::IntGaugeVec,
    /// Nonces this node made ahead of time for coordinators and keeps in memory.
    pub presign_nonces_held: prometheus::IntGauge,
    /// Signatures this node coordinated, by path (`presigned`: one round trip;
    /// `two_round`).
    pub signatures: IntCounterVec,
}

impl MpcMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let m = Self {
            sessions_started: counter(
                "p2p_mpc_mpc_sessions_started_total",
                "MPC sessions started, by protocol and role.",
                &["protocol", "role"],
            ),
            sessions_completed: counter(
                "p2p_mpc_mpc_sessions_completed_total",
                "MPC sessions completed, by protocol.",
                &["protocol"],
            ),
            sessions_failed: counter(
                "p2p_mpc_mpc_sessions_failed_total",
                "MPC sessions that failed or were aborted, by protocol and outcome.",
                &["protocol", "outcome"],
            ),
            session_duration_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "p2p_mpc_mpc_session_duration_seconds",
                    "MPC session duration in seconds, by protocol and outcome.",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                ]),
                &["protocol", "outcome"],
            )
            .expect("valid metric"),
            messages: counter(
                "p2p_mpc_mpc_messages_total",
                "MPC protocol messages, by protocol and direction.",
                &["protocol", "direction"],
            ),
            messages_dropped: counter(
                "p2p_mpc_mpc_messages_dropped_total",
                "Inbound MPC messages dropped, by protocol and reason.",
                &["protocol", "reason"],
            ),
            aggregation_reports: counter(
                "p2p_mpc_aggregation_reports_total",
                "Client reports taken by this node, by outcome (accepted or the refusal code).",
                &["outcome"],
            ),
            aggregation_shares: counter(
                "p2p_mpc_aggregation_shares_total",
                "Sealed shares this node checked as their owner, by outcome.",
                &["outcome"],
            ),
            sign_authorizations: counter(
                "p2p_mpc_sign_authorizations_total",
                "Signing requests checked against their key's policy on this node, by policy (open, clients) and outcome (authorized or the refusing rule).",
                &["policy", "outcome"],
            ),
            legacy_open_keys: prometheus::IntGauge::new(
                "p2p_mpc_legacy_open_keys",
                "Keys held here that were stored before signing policies existed: they sign for any API caller and their policy cannot be changed until converted (p2p-mpc keys convert-legacy).",
            )
            .expect("valid metric"),
            keys: prometheus::IntGaugeVec::new(
                Opts::new(
                    "p2p_mpc_keys",
                    "Keys this node holds a share of, by signature scheme (ed25519, secp256k1-tr).",
                ),
                &["scheme"],
            )
            .expect("valid metric"),
            policy_changes: counter(
                "p2p_mpc_policy_changes_total",
                "Signing policy changes applied on this node, by how it learned of them: as their coordinator, from a commit, or catching up from a peer.",
                &["via"],
            ),
            held_bytes: prometheus::IntGauge::new(
                "p2p_mpc_mpc_held_bytes",
                "Bytes of inbound MPC messages held by sessions (waiting in their inboxes or kept for later rounds).",
            )
            .expect("valid metric"),
            held_bytes_refused: counter(
                "p2p_mpc_mpc_held_bytes_refused_total",
                "Bytes of inbound MPC messages refused (answered busy) because a byte budget was full: session (one sender in one session), peer (one sender in all sessions), total.",
                &["budget"],
            ),
            presignatures: prometheus::IntGaugeVec::new(
                Opts::new(
                    "p2p_mpc_presignatures",
                    "Presignatures (other holders' signing commitments made ahead of time) this node may use as coordinator, by key.",
                ),
                &["key_id"],
            )
            .expect("valid metric"),
            presign_nonces_held: prometheus::IntGauge::new(
                "p2p_mpc_presign_nonces_held",
                "Signing nonces this node made ahead of time for other coordinators and keeps in memory (never on disk).",
            )
            .expect("valid metric"),
            signatures: counter(
                "p2p_mpc_signatures_total",
                "Signatures this node coordinated, by path: presigned (one round trip) or two_round.",
                &["path"],
            ),
        };
        for budget in ["session", "peer", "total"] {
            m.held_bytes_refused.with_label_values(&[budget]);
        }
        for path in ["presigned", "two_round"] {
            m.signatures.with_label_values(&[path]);
        }
        // Every series a dashboard reads exists from the start (a rate over a series that
        // appears only at its first event misses that event).
        for protocol in super::wire::Protocol::ALL.map(super::wire::Protocol::as_str) {
            m.sessions_completed.with_label_values(&[protocol]);
            for outcome in ["failed", "aborted", "refused"] {
                m.sessions_failed.with_label_values(&[protocol, outcome]);
            }
        }
        for c in [
            Box::new(m.sessions_started.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.sessions_completed.clone()),
            Box::new(m.sessions_failed.clone()),
            Box::new(m.session_duration_seconds.clone()),
            Box::new(m.messages.clone()),
            Box::new(m.messages_dropped.clone()),
            Box::new(m.aggregation_reports.clone()),
            Box::new(m.aggregation_shares.clone()),
            Box::new(m.sign_authorizations.clone()),
            Box::new(m.legacy_open_keys.clone()),
            Box::new(m.keys.clone()),
            Box::new(m.policy_changes.clone()),
            Box::new(m.held_bytes.clone()),
            Box::new(m.held_bytes_refused.clone()),
            Box::new(m.presignatures.clone()),
            Box::new(m.presign_nonces_held.clone()),
            Box::new(m.signatures.clone()),
        ] {
            registry.register(c).expect("MPC metric names are unique");
        }
        m
    }

    /// A registry of their own, for tests.
    pub fn unregistered() -> Self {
        Self::new(&Registry::new())
    }
}
