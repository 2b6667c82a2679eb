//! The NetworkPolicy of a cluster's pods: the p2p ports admit only the cluster's own pods,
//! the API port `api.allowFrom` (default: the namespace), the metrics port
//! `metrics.allowFrom` (default: the namespace `monitoring` and the cluster's own).

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{ClusterNames, child_meta, selector_labels};
use crate::crd::MpcCluster;

/// The namespace whose pods may scrape metrics by default (kube-prometheus-stack's usual one).
pub const DEFAULT_METRICS_NAMESPACE: &str = "monitoring";

fn ports(numbers: &[i32]) -> Option<Vec<NetworkPolicyPort>> {
    with_protocol(numbers, "TCP")
}

fn with_protocol(numbers: &[i32], protocol: &str) -> Option<Vec<NetworkPolicyPort>> {
    Some(
        numbers
            .iter()
            .map(|p| NetworkPolicyPort {
                port: Some(IntOrString::Int(*p)),
                protocol: Some(protocol.into()),
                ..Default::default()
            })
            .collect(),
    )
}

/// The pods of the policy's namespace with `labels` (all of them when empty). An empty
/// selector is sent as `{}`, as the API server stores it: a `matchLabels: {}` would differ
/// from the stored object and be written again at every reconcile.
fn pods(labels: BTreeMap<String, String>) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: (!labels.is_empty()).then_some(labels),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn namespace_named(name: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                name.to_string(),
            )])),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The NetworkPolicy `<cluster>`.
pub fn build(mc: &MpcCluster, names: &ClusterNames) -> NetworkPolicy {
    let spec = &mc.spec;
    let mut p2p = vec![spec.network.port];
    p2p.extend(spec.network.websocket_port);
    let api_from = spec
        .api
        .allow_from
        .clone()
        .unwrap_or_else(|| vec![pods(BTreeMap::new())]);
    let metrics_from = spec.metrics.allow_from.clone().unwrap_or_else(|| {
        vec![
            namespace_named(DEFAULT_METRICS_NAMESPACE),
            pods(BTreeMap::new()),
        ]
    });
    NetworkPolicy {
        metadata: child_meta(mc, names, names.workload()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&names.name)),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![pods(selector_labels(&names.name))]),
                    ports: {
                        let mut p = ports(&p2p).unwrap_or_default();
                        if let Some(quic) = spec.network.quic_port {
                            p.extend(with_protocol(&[quic], "UDP").unwrap_or_default());
                        }
                        Some(p)
                    },
                },
                NetworkPolicyIngressRule {
                    from: Some(api_from),
                    ports: ports(&[spec.api.port]),
                },
                NetworkPolicyIngressRule {
                    from: Some(metrics_from),
                    ports: ports(&[spec.metrics.port]),
                },
            ]),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::test_support::cluster;

    #[test]
    fn p2p_only_from_the_cluster_api_and_metrics_as_configured() {
        let mut mc = cluster("net", 3);
        let names = ClusterNames::of(&mc, "cluster.local");
        let np = build(&mc, &names);
        let spec = np.spec.unwrap();
        assert_eq!(
            spec.pod_selector.unwrap().match_labels.unwrap(),
            selector_labels("net")
        );
        let rules = spec.ingress.unwrap();
        let with_protocol = |r: &NetworkPolicyIngressRule| -> Vec<(IntOrString, String)> {
            r.ports
                .iter()
                .flatten()
                .filter_map(|p| Some((p.port.clone()?, p.protocol.clone()?)))
                .collect()
        };
        let port_of = |r: &NetworkPolicyIngressRule| -> Vec<IntOrString> {
            with_protocol(r).into_iter().map(|(p, _)| p).collect()
        };
        assert_eq!(
            with_protocol(&rules[0]),
            vec![(IntOrString::Int(4001), "TCP".to_string())]
        );
        assert_eq!(
            rules[0].from.clone().unwrap(),
            vec![pods(selector_labels("net"))]
        );
        assert_eq!(port_of(&rules[1]), vec![IntOrString::Int(8080)]);
        assert_eq!(rules[1].from.clone().unwrap(), vec![pods(BTreeMap::new())]);
        assert_eq!(port_of(&rules[2]), vec![IntOrString::Int(9090)]);
        assert!(
            rules[2]
                .from
                .clone()
                .unwrap()
                .contains(&namespace_named("monitoring"))
        );

        // Configured peers replace the defaults; WebSocket and QUIC ports are p2p ports too,
        // QUIC's over UDP.
        mc.spec.network.websocket_port = Some(4002);
        mc.spec.network.quic_port = Some(4001);
        mc.spec.api.allow_from = Some(vec![namespace_named("clients")]);
        mc.spec.metrics.allow_from = Some(vec![namespace_named("observability")]);
        let rules = build(&mc, &names).spec.unwrap().ingress.unwrap();
        assert_eq!(
            port_of(&rules[0]),
            vec![
                IntOrString::Int(4001),
                IntOrString::Int(4002),
                IntOrString::Int(4001)
            ]
        );
        assert_eq!(
            with_protocol(&rules[0])[2],
            (IntOrString::Int(4001), "UDP".to_string())
        );
        assert_eq!(
            rules[1].from.clone().unwrap(),
            vec![namespace_named("clients")]
        );
        assert_eq!(
            rules[2].from.clone().unwrap(),
            vec![namespace_named("observability")]
        );
    }
}
