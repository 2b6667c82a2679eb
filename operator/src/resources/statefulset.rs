//! The StatefulSet running the nodes.
//!
//! The pod template is the same for every pod and does not depend on the number of
//! replicas: each node reads its own settings (bootnodes, key) by its pod name at start.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecretVolumeSource,
    SecurityContext, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::config::{CONFIG_DIR, CONFIG_FILE, DATA_DIR, shared_settings};
use super::{ClusterNames, child_meta, labels, selector_labels};
use crate::crd::MpcCluster;

/// Where the pods mount the identity Secret.
pub const KEYS_DIR: &str = "/var/run/p2p-mpc/keys";
/// The user the node runs as (no root).
pub const NODE_UID: i64 = 65532;
/// Annotation with a hash of the shared node settings: a change rolls the pods; the
/// per-pod part (which grows on scale-up) is left out on purpose.
pub const CONFIG_HASH_ANNOTATION: &str = "p2p-mpc.dev/config-hash";

/// What the operator decides beyond the spec.
#[derive(Debug, Clone)]
pub struct WorkloadDefaults {
    /// Image used when the spec names none.
    pub image: String,
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("metrics".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

/// A hash of the shared settings (first 16 hex digits of SHA-256), to notice a change.
pub fn config_hash(mc: &MpcCluster) -> String {
    use sha2::Digest;
    let text = serde_json::to_string(&shared_settings(mc)).expect("JSON");
    hex::encode(&sha2::Sha256::digest(text.as_bytes())[..8])
}

/// The StatefulSet.
pub fn build(mc: &MpcCluster, names: &ClusterNames, defaults: &WorkloadDefaults) -> StatefulSet {
    let spec = &mc.spec;
    let mut pod_labels = labels(&names.name);
    pod_labels.extend(spec.pod.labels.clone());
    pod_labels.extend(selector_labels(&names.name));
    let mut annotations = spec.pod.annotations.clone();
    annotations.insert(CONFIG_HASH_ANNOTATION.into(), config_hash(mc));

    let mut ports = vec![
        container_port("p2p", spec.network.port),
        container_port("api", spec.api.port),
        container_port("metrics", spec.metrics.port),
    ];
    if let Some(ws) = spec.network.websocket_port {
        ports.push(container_port("p2p-ws", ws));
    }

    let container = Container {
        name: "node".into(),
        image: Some(spec.image.clone().unwrap_or_else(|| defaults.image.clone())),
        image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().to_string()),
        args: Some(vec![
            "--config".into(),
            format!("{CONFIG_DIR}/{CONFIG_FILE}"),
            "--identity-key-path".into(),
            format!("{KEYS_DIR}/$(P2P_MPC_POD_NAME).key"),
        ]),
        env: Some(vec![EnvVar {
            name: "P2P_MPC_POD_NAME".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ports: Some(ports),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        resources: spec.resources.clone(),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(NODE_UID),
            run_as_group: Some(NODE_UID),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "config".into(),
                mount_path: CONFIG_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: "keys".into(),
                mount_path: KEYS_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: "data".into(),
                mount_path: DATA_DIR.into(),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };

    let pod_spec = PodSpec {
        containers: vec![container],
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            fs_group: Some(NODE_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        node_selector: (!spec.pod.node_selector.is_empty()).then(|| spec.pod.node_selector.clone()),
        tolerations: (!spec.pod.tolerations.is_empty()).then(|| spec.pod.tolerations.clone()),
        affinity: spec.pod.affinity.clone(),
        termination_grace_period_seconds: Some(15),
        volumes: Some(vec![
            Volume {
                name: "config".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: names.config_map(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Volume {
                name: "keys".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(names.secret()),
                    default_mode: Some(0o440),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };

    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".into()),
            labels: Some(selector_labels(&names.name)),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: spec.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    spec.storage.size.clone(),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };

    StatefulSet {
        metadata: child_meta(mc, names, names.workload()),
        spec: StatefulSetSpec {
            replicas: Some(spec.replicas),
            service_name: Some(names.headless_service()),
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&names.name)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some(pod_spec),
            },
            volume_claim_templates: Some(vec![claim]),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::test_support::cluster;

    fn defaults() -> WorkloadDefaults {
        WorkloadDefaults {
            image: "p2p-mpc:test".into(),
        }
    }

    #[test]
    fn template_does_not_depend_on_replicas() {
        let a = cluster("net", 3);
        let b = cluster("net", 5);
        let names = ClusterNames::of(&a, "cluster.local");
        let sa = build(&a, &names, &defaults());
        let sb = build(&b, &names, &defaults());
        assert_eq!(sa.spec.template, sb.spec.template);
        assert_eq!(sb.spec.replicas, Some(5));
    }

    #[test]
    fn node_container_is_locked_down_and_finds_its_key_by_pod_name() {
        let mc = cluster("net", 3);
        let names = ClusterNames::of(&mc, "cluster.local");
        let sts = build(&mc, &names, &defaults());
        let spec = sts.spec;
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        assert_eq!(spec.service_name.as_deref(), Some("net-headless"));
        let pod = spec.template.spec.unwrap();
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("p2p-mpc:test"));
        let args = c.args.clone().unwrap();
        assert!(args.contains(&format!("{KEYS_DIR}/$(P2P_MPC_POD_NAME).key")));
        let sc = c.security_context.clone().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(
            c.readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/readyz")
        );
        assert_eq!(
            c.liveness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/healthz")
        );
        let claim = &spec.volume_claim_templates.unwrap()[0];
        assert_eq!(claim.metadata.name.as_deref(), Some("data"));
    }
}
