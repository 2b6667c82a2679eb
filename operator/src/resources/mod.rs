//! One pure builder per child object: spec in, object out. No cluster needed to test them.

pub mod api_token;
pub mod config;
pub mod member_secret;
pub mod network_policy;
pub mod pdb;
pub mod pvc;
pub mod service_monitor;
pub mod services;
pub mod statefulset;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::crd::MpcCluster;

/// Where a cluster's names and addresses come from.
#[derive(Debug, Clone)]
pub struct ClusterNames {
    pub name: String,
    pub namespace: String,
    /// DNS suffix of the cluster, e.g. `cluster.local`.
    pub cluster_domain: String,
}

impl ClusterNames {
    /// Names of `mc` in a cluster whose domain is `cluster_domain`.
    pub fn of(mc: &MpcCluster, cluster_domain: &str) -> Self {
        Self {
            name: mc.name_any(),
            namespace: mc.namespace().unwrap_or_else(|| "default".into()),
            cluster_domain: cluster_domain.to_string(),
        }
    }
    /// The headless Service giving every pod a stable DNS name.
    pub fn headless_service(&self) -> String {
        format!("{}-headless", self.name)
    }
    /// The client Service of the API (only when `spec.api.service` asks for it).
    pub fn client_service(&self) -> String {
        self.name.clone()
    }
    /// The Service of the metrics port (what the ServiceMonitor selects).
    pub fn metrics_service(&self) -> String {
        format!("{}-metrics", self.name)
    }
    /// The Secret of the API token the operator makes when the spec names none.
    pub fn api_token_secret(&self) -> String {
        format!("{}-api-token", self.name)
    }
    /// The PodDisruptionBudget, NetworkPolicy and ServiceMonitor.
    pub fn workload(&self) -> String {
        self.name.clone()
    }
    /// The StatefulSet of member `i` (one replica).
    pub fn member(&self, i: i32) -> String {
        format!("{}-{i}", self.name)
    }
    /// The pod of member `i`.
    pub fn pod(&self, i: i32) -> String {
        format!("{}-{i}-0", self.name)
    }
    /// The Secret of member `i`: its identity key, its node config and the roster. Only
    /// member `i`'s pod mounts it.
    pub fn member_secret(&self, i: i32) -> String {
        format!("{}-node-{i}", self.name)
    }
    /// The data volume claim of member `i`: the name the one StatefulSet of the earlier
    /// layout gave the claim of ordinal `i`, so an upgraded cluster keeps its key shares.
    pub fn data_claim(&self, i: i32) -> String {
        format!("data-{}-{i}", self.name)
    }
    /// The Secret of every identity key, of the earlier layout (migrated, then deleted).
    pub fn legacy_secret(&self) -> String {
        format!("{}-identity", self.name)
    }
    /// The ConfigMap of node config and roster, of the earlier layout (deleted).
    pub fn legacy_config_map(&self) -> String {
        format!("{}-config", self.name)
    }
    /// The one StatefulSet of every node, of the earlier layout (deleted).
    pub fn legacy_workload(&self) -> String {
        self.name.clone()
    }
    /// The stable DNS name of `pod`.
    pub fn pod_dns(&self, pod: &str) -> String {
        format!(
            "{pod}.{}.{}.svc.{}",
            self.headless_service(),
            self.namespace,
            self.cluster_domain
        )
    }
}

/// Labels that select a cluster's pods.
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "p2p-mpc".to_string()),
        ("app.kubernetes.io/instance".to_string(), name.to_string()),
    ])
}

/// The label that tells the members of a cluster apart (value: the ordinal).
pub const MEMBER_LABEL: &str = "p2p-mpc.dev/member";

/// Labels that select member `i`'s pod.
pub fn member_selector_labels(name: &str, i: i32) -> BTreeMap<String, String> {
    let mut l = selector_labels(name);
    l.insert(MEMBER_LABEL.into(), i.to_string());
    l
}

/// Labels of every child object.
pub fn labels(name: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(name);
    l.insert(
        "app.kubernetes.io/managed-by".into(),
        "p2p-mpc-operator".into(),
    );
    l.insert("app.kubernetes.io/component".into(), "node".into());
    l
}

/// The controller owner reference to `mc`.
pub fn owner(mc: &MpcCluster) -> OwnerReference {
    mc.controller_owner_ref(&())
        .expect("an MpcCluster read from the API has a name and uid")
}

/// Metadata of a child object named `name`.
pub fn child_meta(mc: &MpcCluster, names: &ClusterNames, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(names.namespace.clone()),
        labels: Some(labels(&names.name)),
        owner_references: Some(vec![owner(mc)]),
        ..Default::default()
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use crate::crd::{MpcCluster, MpcClusterSpec};

    /// An MpcCluster as the API server would return it (name, namespace, uid set).
    pub fn cluster(name: &str, replicas: i32) -> MpcCluster {
        let spec: MpcClusterSpec =
            serde_json::from_value(serde_json::json!({ "replicas": replicas })).unwrap();
        let mut mc = MpcCluster::new(name, spec);
        mc.metadata.namespace = Some("ns1".into());
        mc.metadata.uid = Some("0d5c8e34-2f6b-4bd7-9bfb-6a4f3e2b1a00".into());
        mc
    }
}
