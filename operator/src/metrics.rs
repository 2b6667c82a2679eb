//! The operator's own metrics and health endpoints.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

/// The error kinds of failed reconciliations (`controller::Error::label`).
pub const ERROR_KINDS: [&str; 3] = ["kube", "keys", "spec"];

/// Reconcile counters and timings.
pub struct OperatorMetrics {
    registry: Registry,
    reconciliations: IntCounterVec,
    errors: IntCounterVec,
    duration: HistogramVec,
    ready: AtomicBool,
}

impl OperatorMetrics {
    /// Creates and registers the metrics.
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconciliations = IntCounterVec::new(
            Opts::new(
                "p2p_mpc_operator_reconciliations_total",
                "Reconciliations by result.",
            ),
            &["result"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "p2p_mpc_operator_reconcile_errors_total",
                "Failed reconciliations by error kind.",
            ),
            &["error"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "p2p_mpc_operator_reconcile_duration_seconds",
                "Reconciliation duration in seconds.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["result"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(reconciliations.clone()))
            .expect("unique");
        registry.register(Box::new(errors.clone())).expect("unique");
        // Every series exists from the start, at zero (dashboards and alerts read rates).
        for result in ["ok", "error"] {
            reconciliations.with_label_values(&[result]);
        }
        for kind in ERROR_KINDS {
            errors.with_label_values(&[kind]);
        }
        registry
            .register(Box::new(duration.clone()))
            .expect("unique");
        Self {
            registry,
            reconciliations,
            errors,
            duration,
            ready: AtomicBool::new(false),
        }
    }

    /// Records one reconciliation; `error` is the error kind of a failed one.
    pub fn observe(&self, took: Duration, error: Option<&str>) {
        let result = if error.is_some() { "error" } else { "ok" };
        self.reconciliations.with_label_values(&[result]).inc();
        self.duration
            .with_label_values(&[result])
            .observe(took.as_secs_f64());
        if let Some(kind) = error {
            self.errors.with_label_values(&[kind]).inc();
        }
    }

    /// Marks the controller as running (or not), for `/readyz`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The metrics page in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding to memory cannot fail");
        String::from_utf8(buf).expect("UTF-8")
    }
}

impl Default for OperatorMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `/metrics`.
pub fn metrics_router(metrics: Arc<OperatorMetrics>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Arc<OperatorMetrics>>| async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    m.encode(),
                )
            }),
        )
        .with_state(metrics)
}

/// `/healthz` and `/readyz`.
pub fn health_router(metrics: Arc<OperatorMetrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route(
            "/readyz",
            get(|State(m): State<Arc<OperatorMetrics>>| async move {
                if m.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready\n").into_response()
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: the controller is not running\n",
                    )
                        .into_response()
                }
            }),
        )
        .with_state(metrics)
}
