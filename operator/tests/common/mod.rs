//! Shared set-up of the operator's tests against the real API server.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, CustomResourceExt, ResourceExt};
use p2p_mpc_operator::controller::{self, OperatorConfig};
use p2p_mpc_operator::crd::MpcCluster;
use p2p_mpc_operator::metrics::OperatorMetrics;
use p2p_mpc_testenv::{ControlPlane, or_skip};
use serde_json::json;
use tokio::sync::oneshot;

pub const DEADLINE: Duration = Duration::from_secs(90);

pub async fn namespace(client: &Client) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let name = format!("op-{nanos}");
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    name
}

pub async fn install_crd(client: &Client, crd: CustomResourceDefinition) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd.name_any();
    api.patch(
        &name,
        &PatchParams::apply("test").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap_or_else(|e| panic!("installing CRD {name}: {e}"));
    tokio::time::timeout(
        DEADLINE,
        await_condition(api, &name, conditions::is_crd_established()),
    )
    .await
    .unwrap_or_else(|_| panic!("CRD {name} not established within {DEADLINE:?}"))
    .unwrap();
}

/// A running controller, stopped when dropped or by `stop`.
pub struct RunningController {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    pub metrics: Arc<OperatorMetrics>,
}

impl RunningController {
    pub fn start(client: &Client) -> Self {
        Self::start_in(client, &[])
    }

    /// A controller that manages the MpcClusters of `namespaces` only (none: all).
    pub fn start_in(client: &Client, namespaces: &[&str]) -> Self {
        let (tx, rx) = oneshot::channel::<()>();
        let metrics = Arc::new(OperatorMetrics::new());
        let config = OperatorConfig {
            default_image: "p2p-mpc:test".into(),
            cluster_domain: "cluster.local".into(),
            watch_namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
            node_api: controller::NodeApi::Dns,
        };
        let task = tokio::spawn(controller::run(
            client.clone(),
            config,
            metrics.clone(),
            async move {
                let _ = rx.await;
            },
        ));
        Self {
            stop: Some(tx),
            task,
            metrics,
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), &mut self.task).await;
    }

    pub fn reconciliations(&self) -> u64 {
        self.metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with("p2p_mpc_operator_reconciliations_total{result=\"ok\"}"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}

impl Drop for RunningController {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}

/// The test control plane (kept running while the first value lives), a client, the CRD
/// installed and a fresh namespace; `None` when the test is skipped (outside CI only).
pub async fn plane_and_namespace() -> Option<(ControlPlane, Client, String)> {
    let plane = or_skip(ControlPlane::start_or_connect().await)?;
    let client = plane.client().await.unwrap_or_else(|e| panic!("{e}"));
    install_crd(&client, MpcCluster::crd()).await;
    let ns = namespace(&client).await;
    Some((plane, client, ns))
}

pub fn cluster(name: &str, spec: serde_json::Value) -> MpcCluster {
    serde_json::from_value(json!({
        "apiVersion": "p2p-mpc.dev/v1alpha1",
        "kind": "MpcCluster",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

/// A minimal stand-in for the Prometheus operator's ServiceMonitor CRD.
pub fn service_monitor_crd() -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "names": {"kind": "ServiceMonitor", "plural": "servicemonitors", "singular": "servicemonitor", "listKind": "ServiceMonitorList"},
            "scope": "Namespaced",
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]
        }
    }))
    .unwrap()
}
