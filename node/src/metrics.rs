//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` server.
//!
//! Our own metrics live in a `prometheus` registry; libp2p's come from `libp2p-metrics`, which
//! uses `prometheus-client` and writes OpenMetrics. Both are served in one Prometheus text
//! page: the OpenMetrics part is rewritten to the text format (counter families carry their
//! `_total` name, no `# EOF`), and the two registries use disjoint prefixes (`p2p_mpc_`, `libp2p_`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// Metrics of one node.
pub struct NodeMetrics {
    registry: Registry,
    /// libp2p's own metrics (`libp2p-metrics`).
    libp2p_registry: prometheus_client::registry::Registry,
    /// HTTP API requests by route, method and status.
    pub requests_total: IntCounterVec,
    /// HTTP API request duration by route, method and status.
    pub request_duration_seconds: HistogramVec,
    /// Established libp2p connections.
    pub active_connections: IntGauge,
    /// Peers with at least one connection.
    pub connected_peers: IntGauge,
    /// Gossip messages this node published, by topic.
    pub gossip_published: IntCounterVec,
    /// Gossip messages received and accepted, by topic.
    pub gossip_received: IntCounterVec,
    /// Gossip messages received and rejected, by topic and reason.
    pub gossip_rejected: IntCounterVec,
    /// Inbound MPC messages refused by the network service, by reason.
    pub mpc_refused: IntCounterVec,
    /// Connections refused or closed by the door (`network::door`).
    pub connections_refused: IntCounterVec,
}

impl NodeMetrics {
    /// Creates and registers every metric; `libp2p_registry` holds libp2p's, already registered.
    pub fn new(libp2p_registry: prometheus_client::registry::Registry) -> Self {
        let registry = Registry::new();
        let requests_total = IntCounterVec::new(
            Opts::new("p2p_mpc_requests_total", "HTTP API requests handled."),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let request_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "p2p_mpc_request_duration_seconds",
                "HTTP API request duration in seconds.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let active_connections = IntGauge::new(
            "p2p_mpc_active_connections",
            "Established libp2p connections.",
        )
        .expect("valid metric");
        let connected_peers = IntGauge::new(
            "p2p_mpc_connected_peers",
            "Peers with at least one established connection.",
        )
        .expect("valid metric");
        let gossip_published = IntCounterVec::new(
            Opts::new(
                "p2p_mpc_gossip_messages_published_total",
                "Gossip messages published by this node.",
            ),
            &["topic"],
        )
        .expect("valid metric");
        let gossip_received = IntCounterVec::new(
            Opts::new(
                "p2p_mpc_gossip_messages_received_total",
                "Gossip messages received and accepted.",
            ),
            &["topic"],
        )
        .expect("valid metric");
        let gossip_rejected = IntCounterVec::new(
            Opts::new(
                "p2p_mpc_gossip_messages_rejected_total",
                "Gossip messages received and rejected by validation.",
            ),
            &["topic", "reason"],
        )
        .expect("valid metric");
        let mpc_refused = IntCounterVec::new(
            Opts::new(
                "p2p_mpc_mpc_refused_total",
                "Inbound MPC messages refused before they reached a session (not_member: sender outside the cluster roster, not decoded; malformed; version; queue_full).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        for reason in ["not_member", "malformed", "version", "queue_full"] {
            mpc_refused.with_label_values(&[reason]);
        }
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "p2p_mpc_connections_refused_total",
                "Connections refused right after the handshake because the peer is outside the cluster roster (direction: inbound, outbound), and connections closed because their peer left the roster (direction: evicted).",
            ),
            &["direction"],
        )
        .expect("valid metric");
        for direction in ["inbound", "outbound", "evicted"] {
            connections_refused.with_label_values(&[direction]);
        }
        for m in [
            Box::new(requests_total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration_seconds.clone()),
            Box::new(active_connections.clone()),
            Box::new(connected_peers.clone()),
            Box::new(gossip_published.clone()),
            Box::new(gossip_received.clone()),
            Box::new(gossip_rejected.clone()),
            Box::new(mpc_refused.clone()),
            Box::new(connections_refused.clone()),
        ] {
            registry.register(m).expect("metric names are unique");
        }
        Self {
            registry,
            libp2p_registry,
            requests_total,
            request_duration_seconds,
            active_connections,
            connected_peers,
            gossip_published,
            gossip_received,
            gossip_rejected,
            mpc_refused,
            connections_refused,
        }
    }

    /// The registry of the node's own metrics, for other parts of the node (MPC) to register theirs.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The whole metrics page in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding to memory cannot fail");
        let mut page = String::from_utf8(buf).expect("prometheus text is UTF-8");
        let mut openmetrics = String::new();
        if prometheus_client::encoding::text::encode(&mut openmetrics, &self.libp2p_registry)
            .is_ok()
        {
            page.push_str(&openmetrics_to_prometheus_text(&openmetrics));
        }
        page
    }
}

/// Rewrites OpenMetrics text (as `prometheus-client` writes it) into the Prometheus text
/// format 0.0.4: counter families are named with their `_total` suffix, `info` becomes a
/// gauge named `<name>_info`, `unknown` becomes `untyped`, and `# UNIT` / `# EOF` are dropped.
pub fn openmetrics_to_prometheus_text(text: &str) -> String {
    use std::collections::HashMap;
    let mut renamed: HashMap<String, (String, &str)> = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.splitn(2, ' ');
            let (name, kind) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let mapped = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "unknown" => (name.to_string(), "untyped"),
                "gaugehistogram" => (name.to_string(), "histogram"),
                "stateset" => (name.to_string(), "gauge"),
                other => (name.to_string(), other),
            };
            renamed.insert(name.to_string(), (mapped.0, mapped.1));
        }
    }
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap_or("");
            if let Some((new_name, kind)) = renamed.get(name) {
                out.push_str(&format!("# TYPE {new_name} {kind}\n"));
                continue;
            }
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let mut parts = rest.splitn(2, ' ');
            let name = parts.next().unwrap_or("");
            let help = parts.next().unwrap_or("");
            if let Some((new_name, _)) = renamed.get(name) {
                out.push_str(&format!("# HELP {new_name} {help}\n"));
                continue;
            }
        }
        // Exemplars (`... # {labels} value`) are OpenMetrics-only.
        let sample = match line.find(" # {") {
            Some(i) if !line.starts_with('#') => &line[..i],
            _ => line,
        };
        out.push_str(sample);
        out.push('\n');
    }
    out
}

/// What `/readyz` looks at; updated by the network service.
#[derive(Debug, Default)]
pub struct Readiness {
    /// At least one libp2p listener is up.
    pub listening: AtomicBool,
    /// Peers with an established connection.
    pub connected_peers: AtomicUsize,
    /// Whether bootnodes were configured (then readiness needs a peer).
    pub needs_peer: AtomicBool,
}

impl Readiness {
    /// Ready: listening, and connected to a peer when bootnodes are configured.
    pub fn is_ready(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
            && (!self.needs_peer.load(Ordering::Relaxed)
                || self.connected_peers.load(Ordering::Relaxed) > 0)
    }
}

#[derive(Clone)]
struct MetricsState {
    metrics: Arc<NodeMetrics>,
    readiness: Arc<Readiness>,
}

/// The router of the metrics server.
pub fn router(metrics: Arc<NodeMetrics>, readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(readyz))
        .with_state(MetricsState { metrics, readiness })
}

async fn metrics_page(State(s): State<MetricsState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

async fn readyz(State(s): State<MetricsState>) -> impl IntoResponse {
    if s.readiness.is_ready() {
        (StatusCode::OK, "ready\n".to_string())
    } else if !s.readiness.listening.load(Ordering::Relaxed) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: not listening yet\n".to_string(),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no peer connected yet (bootnodes are configured)\n".to_string(),
        )
    }
}

/// Serves the metrics router on an already bound listener until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<NodeMetrics>,
    readiness: Arc<Readiness>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::debug!(?addr, "metrics server running");
    axum::serve(listener, router(metrics, readiness))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_counters_get_total_names() {
        let om = "# HELP libp2p_x Things.\n# TYPE libp2p_x counter\nlibp2p_x_total{a=\"b\"} 3\n# TYPE libp2p_i info\nlibp2p_i_info{v=\"1\"} 1\n# EOF\n";
        let text = openmetrics_to_prometheus_text(om);
        assert!(text.contains("# HELP libp2p_x_total Things.\n"), "{text}");
        assert!(text.contains("# TYPE libp2p_x_total counter\n"), "{text}");
        assert!(text.contains("# TYPE libp2p_i_info gauge\n"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
    }
}
