//! The Prometheus-operator ServiceMonitor (`monitoring.coreos.com/v1`), built as a dynamic
//! object: its CRD may or may not exist in the cluster.

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use super::services::METRICS_SERVICE_LABEL;
use super::{ClusterNames, child_meta, selector_labels};
use crate::crd::MpcCluster;

/// The ServiceMonitor's group, version and kind.
pub fn gvk() -> GroupVersionKind {
    GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor")
}

/// The ServiceMonitor's API resource (for when discovery is not needed).
pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&gvk(), "servicemonitors")
}

/// The ServiceMonitor selecting the metrics Service's `metrics` port.
pub fn build(mc: &MpcCluster, names: &ClusterNames) -> DynamicObject {
    let sm = &mc.spec.metrics.service_monitor;
    let mut meta = child_meta(mc, names, names.workload());
    if let Some(labels) = meta.labels.as_mut() {
        labels.extend(sm.labels.clone());
    }
    let mut selector = selector_labels(&names.name);
    selector.insert(
        METRICS_SERVICE_LABEL.0.into(),
        METRICS_SERVICE_LABEL.1.into(),
    );
    let mut obj = DynamicObject::new(&names.workload(), &api_resource()).within(&names.namespace);
    obj.metadata = meta;
    obj.data = json!({
        "spec": {
            "selector": { "matchLabels": selector },
            "namespaceSelector": { "matchNames": [names.namespace] },
            "endpoints": [{ "port": "metrics", "path": "/metrics", "interval": sm.interval }],
        }
    });
    obj
}
