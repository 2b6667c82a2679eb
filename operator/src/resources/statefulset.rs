//! The StatefulSet of one member: one pod, which mounts only that member's Secret (its
//! key, config and the roster) and its data volume claim.
//!
//! The template does not depend on the number of members, so scaling does not roll the pods
//! of the others; the roster reaches them through their Secrets.

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, HTTPGetAction, KeyToPath,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    SeccompProfile, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::api_token::{self, TOKEN_DIR, TOKEN_KEY};
use super::config::{CONFIG_DIR, CONFIG_FILE, DATA_DIR, shared_settings};
use super::{ClusterNames, child_meta, labels, member_selector_labels};
use crate::crd::MpcCluster;

/// The user the node runs as (no root).
pub const NODE_UID: i64 = 65532;
/// Annotation with a hash of the shared node settings: a change rolls the pods; the roster
/// (which grows on scale-up) is left out on purpose.
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

fn udp_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        protocol: Some("UDP".into()),
        ..container_port(name, port)
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

/// A hash of the shared settings and the topic schemas (first 16 hex digits of SHA-256), to
/// notice a change.
pub fn config_hash(mc: &MpcCluster) -> String {
    use sha2::Digest;
    let schemas = super::config::schema_files(mc);
    // Without schemas the hash is that of the settings alone, as before schemas existed, so
    // an operator upgrade restarts no pod.
    let text = if schemas.is_empty() {
        serde_json::to_string(&shared_settings(mc))
    } else {
        serde_json::to_string(&(shared_settings(mc), schemas))
    }
    .expect("JSON");
    hex::encode(&sha2::Sha256::digest(text.as_bytes())[..8])
}

/// The StatefulSet of member `i`.
pub fn build(
    mc: &MpcCluster,
    names: &ClusterNames,
    i: i32,
    defaults: &WorkloadDefaults,
) -> StatefulSet {
    let spec = &mc.spec;
    let selector = member_selector_labels(&names.name, i);
    let mut pod_labels = labels(&names.name);
    pod_labels.extend(spec.pod.labels.clone());
    pod_labels.extend(selector.clone());
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
    if let Some(quic) = spec.network.quic_port {
        ports.push(udp_port("p2p-quic", quic));
    }

    let container = Container {
        name: "node".into(),
        image: Some(spec.image.clone().unwrap_or_else(|| defaults.image.clone())),
        image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().to_string()),
        // The config names the key and the roster, all three in the member's Secret.
        args: Some(vec![
            "--config".into(),
            format!("{CONFIG_DIR}/{CONFIG_FILE}"),
        ]),
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
                name: "member".into(),
                mount_path: CONFIG_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: "api-token".into(),
                mount_path: TOKEN_DIR.into(),
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
        // The node never calls the Kubernetes API: no token to steal from its pod.
        automount_service_account_token: Some(false),
        volumes: Some(vec![
            Volume {
                name: "member".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(names.member_secret(i)),
                    default_mode: Some(0o440),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Volume {
                name: "api-token".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(api_token::secret_name(mc, names)),
                    items: Some(vec![KeyToPath {
                        key: TOKEN_KEY.into(),
                        path: TOKEN_KEY.into(),
                        ..Default::default()
                    }]),
                    default_mode: Some(0o440),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Volume {
                name: "data".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: names.data_claim(i),
                    read_only: None,
                }),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };

    let mut metadata = child_meta(mc, names, names.member(i));
    if let Some(labels) = metadata.labels.as_mut() {
        labels.insert(super::MEMBER_LABEL.into(), i.to_string());
    }
    StatefulSet {
        metadata,
        spec: StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(names.headless_service()),
            selector: LabelSelector {
                match_labels: Some(selector),
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
        let sa = build(&a, &names, 1, &defaults());
        let sb = build(&b, &names, 1, &defaults());
        assert_eq!(sa, sb);
        assert_eq!(sb.spec.replicas, Some(1));
    }

    #[test]
    fn a_member_pod_mounts_only_its_own_secret_and_claim_and_no_token() {
        let mut mc = cluster("net", 3);
        mc.spec.network.quic_port = Some(4001);
        let names = ClusterNames::of(&mc, "cluster.local");
        let sts = build(&mc, &names, 2, &defaults());
        assert_eq!(sts.metadata.name.as_deref(), Some("net-2"));
        let spec = sts.spec;
        assert_eq!(spec.service_name.as_deref(), Some("net-headless"));
        let selector = spec.selector.match_labels.clone().unwrap();
        assert_eq!(selector[crate::resources::MEMBER_LABEL], "2");
        assert!(spec.volume_claim_templates.is_none());
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        let volumes = pod.volumes.unwrap();
        let secrets: Vec<_> = volumes
            .iter()
            .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
            .collect();
        assert_eq!(
            secrets,
            vec!["net-node-2".to_string(), "net-api-token".to_string()],
            "its own identity and the API token, nobody else's key"
        );
        let claims: Vec<_> = volumes
            .iter()
            .filter_map(|v| Some(v.persistent_volume_claim.as_ref()?.claim_name.clone()))
            .collect();
        assert_eq!(claims, vec!["data-net-2".to_string()]);
        assert!(
            volumes
                .iter()
                .all(|v| v.config_map.is_none() && v.projected.is_none())
        );
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("p2p-mpc:test"));
        // The p2p port over TCP, and the QUIC port over UDP (the cluster of the test asks for
        // one on the same number).
        let ports: Vec<(String, i32, String)> = c
            .ports
            .iter()
            .flatten()
            .map(|p| {
                let name = p.name.clone().unwrap_or_default();
                (
                    name,
                    p.container_port,
                    p.protocol.clone().unwrap_or_default(),
                )
            })
            .filter(|(name, _, _)| name.starts_with("p2p"))
            .collect();
        assert_eq!(
            ports,
            vec![
                ("p2p".to_string(), 4001, "TCP".to_string()),
                ("p2p-quic".to_string(), 4001, "UDP".to_string())
            ]
        );
        assert_eq!(
            c.args.clone().unwrap(),
            vec![
                "--config".to_string(),
                format!("{CONFIG_DIR}/{CONFIG_FILE}")
            ]
        );
        let sc = c.security_context.clone().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        let probe_path = |p: &Option<Probe>| p.as_ref()?.http_get.as_ref()?.path.clone();
        assert_eq!(probe_path(&c.readiness_probe).as_deref(), Some("/readyz"));
        assert_eq!(probe_path(&c.liveness_probe).as_deref(), Some("/healthz"));
    }
}
