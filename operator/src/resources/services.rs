//! The headless Service (stable pod DNS names for bootnodes), the metrics Service (what
//! Prometheus scrapes) and the optional client Service of the API.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{ClusterNames, child_meta, selector_labels};
use crate::crd::MpcCluster;

fn port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

/// The headless Service. Not-ready pods are published too, so that a node can resolve its
/// bootnodes before they pass their readiness probe.
pub fn headless(mc: &MpcCluster, names: &ClusterNames) -> Service {
    let mut ports = vec![port("p2p", mc.spec.network.port)];
    if let Some(ws) = mc.spec.network.websocket_port {
        ports.push(port("p2p-ws", ws));
    }
    if let Some(quic) = mc.spec.network.quic_port {
        ports.push(ServicePort {
            protocol: Some("UDP".into()),
            ..port("p2p-quic", quic)
        });
    }
    Service {
        metadata: child_meta(mc, names, names.headless_service()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(&names.name)),
            ports: Some(ports),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Label that marks the metrics Service (what the ServiceMonitor selects).
pub const METRICS_SERVICE_LABEL: (&str, &str) = ("p2p-mpc.dev/service", "metrics");

/// The metrics Service: the metrics port only (unauthenticated, Prometheus' convention).
pub fn metrics(mc: &MpcCluster, names: &ClusterNames) -> Service {
    let mut metadata = child_meta(mc, names, names.metrics_service());
    if let Some(labels) = metadata.labels.as_mut() {
        labels.insert(
            METRICS_SERVICE_LABEL.0.into(),
            METRICS_SERVICE_LABEL.1.into(),
        );
    }
    Service {
        metadata,
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(&names.name)),
            ports: Some(vec![port("metrics", mc.spec.metrics.port)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The client Service of the API (made only when `spec.api.service` is set).
pub fn client(mc: &MpcCluster, names: &ClusterNames) -> Service {
    Service {
        metadata: child_meta(mc, names, names.client_service()),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(&names.name)),
            ports: Some(vec![port("api", mc.spec.api.port)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}
