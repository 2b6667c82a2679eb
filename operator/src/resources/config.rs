//! The ConfigMap with the node config file, `node.yml`, shared by every pod, and the
//! cluster roster, `cluster-members` (the peer id of every pod, one a line), which the nodes
//! re-read while they run, so that scaling the cluster changes who they admit without a
//! restart.
//!
//! Per-pod settings (bootnodes) sit in its `pods` section; each node picks its own entry by
//! pod name at start (`P2P_MPC_POD_NAME`), so the pod template never changes with the size
//! of the cluster and scaling up does not roll the existing pods.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::{Value, json};

use super::{ClusterNames, child_meta};
use crate::crd::MpcCluster;
use crate::keys::{ClusterKeys, KeyError, pod_name};

/// The file name of the node config inside the ConfigMap.
pub const CONFIG_FILE: &str = "node.yml";
/// The file name of the cluster roster inside the ConfigMap.
pub const MEMBERS_FILE: &str = "cluster-members";
/// Where the pods mount the ConfigMap.
pub const CONFIG_DIR: &str = "/etc/p2p-mpc";
/// Where the pods mount their data volume.
pub const DATA_DIR: &str = "/data";

/// The dialable address of `pod`: `/dns4/<pod dns>/tcp/<port>/p2p/<peer id>`.
pub fn pod_multiaddr(names: &ClusterNames, pod: &str, port: i32, peer_id: &str) -> String {
    format!("/dns4/{}/tcp/{port}/p2p/{peer_id}", names.pod_dns(pod))
}

/// The settings every node shares (everything but the `pods` section).
pub fn shared_settings(mc: &MpcCluster) -> serde_json::Map<String, Value> {
    let spec = &mc.spec;
    let mut m = serde_json::Map::new();
    m.insert("listen_address".into(), json!("0.0.0.0"));
    m.insert("network_port".into(), json!(spec.network.port));
    if let Some(ws) = spec.network.websocket_port {
        m.insert("ws_port".into(), json!(ws));
    }
    m.insert("topics".into(), json!(spec.network.topics));
    m.insert("log_level".into(), json!(spec.log_level.as_str()));
    m.insert("metrics_address".into(), json!("0.0.0.0"));
    m.insert("metrics_port".into(), json!(spec.metrics.port));
    m.insert("api_address".into(), json!("0.0.0.0"));
    m.insert("api_port".into(), json!(spec.api.port));
    m.insert("data_dir".into(), json!(DATA_DIR));
    m.insert(
        "cluster_members_file".into(),
        json!(format!("{CONFIG_DIR}/{MEMBERS_FILE}")),
    );
    m.insert("enable_jaeger".into(), json!(spec.tracing.jaeger.enabled));
    m.insert("jaeger_host".into(), json!(spec.tracing.jaeger.host));
    m.insert("jaeger_port".into(), json!(spec.tracing.jaeger.port));
    m
}

/// The bootnodes of ordinal `i`: pods `0..i`, each by its stable DNS name and peer id.
pub fn bootnodes_of(
    names: &ClusterNames,
    keys: &ClusterKeys,
    port: i32,
    i: i32,
) -> Result<Vec<String>, KeyError> {
    let mut out = Vec::new();
    for j in 0..i {
        let pod = pod_name(&names.name, j);
        if let Some(peer) = keys.peer_id(&pod)? {
            out.push(pod_multiaddr(names, &pod, port, &peer.to_string()));
        }
    }
    Ok(out)
}

/// The node config file text.
pub fn node_config(
    mc: &MpcCluster,
    names: &ClusterNames,
    keys: &ClusterKeys,
) -> Result<String, KeyError> {
    let mut config = shared_settings(mc);
    let mut pods = BTreeMap::new();
    for i in 0..mc.spec.replicas {
        let bootnodes = bootnodes_of(names, keys, mc.spec.network.port, i)?;
        pods.insert(pod_name(&names.name, i), json!({ "bootnodes": bootnodes }));
    }
    config.insert("pods".into(), json!(pods));
    let body =
        serde_yaml::to_string(&Value::Object(config)).expect("JSON values serialize to YAML");
    Ok(format!(
        "# Written by the p2p-mpc operator for MpcCluster {}/{}; edits are overwritten.\n{body}",
        names.namespace, names.name
    ))
}

/// The roster file text: the peer id of every pod of `0..replicas` that has a key.
pub fn members_file(
    mc: &MpcCluster,
    names: &ClusterNames,
    keys: &ClusterKeys,
) -> Result<String, KeyError> {
    let mut text = format!(
        "# The cluster roster of MpcCluster {}/{}, written by the p2p-mpc operator.\n",
        names.namespace, names.name
    );
    for i in 0..mc.spec.replicas {
        if let Some(peer) = keys.peer_id(&pod_name(&names.name, i))? {
            text.push_str(&format!("{peer}\n"));
        }
    }
    Ok(text)
}

/// The ConfigMap.
pub fn build(
    mc: &MpcCluster,
    names: &ClusterNames,
    keys: &ClusterKeys,
) -> Result<ConfigMap, KeyError> {
    Ok(ConfigMap {
        metadata: child_meta(mc, names, names.config_map()),
        data: Some(BTreeMap::from([
            (CONFIG_FILE.to_string(), node_config(mc, names, keys)?),
            (MEMBERS_FILE.to_string(), members_file(mc, names, keys)?),
        ])),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::resources::test_support::cluster;

    #[test]
    fn pod_i_gets_pods_before_it_as_bootnodes() {
        let mc = cluster("net", 4);
        let names = ClusterNames::of(&mc, "cluster.local");
        let mut keys = ClusterKeys::default();
        keys.ensure("net", 4);
        let text = node_config(&mc, &names, &keys).unwrap();

        // The node's own loader reads it, and each pod gets exactly pods 0..i-1.
        let file = p2p_mpc_node::config::FileConfig::parse(Path::new("node.yml"), &text).unwrap();
        let pods = file.pods.unwrap();
        assert_eq!(pods.len(), 4);
        for i in 0..4 {
            let boots = pods[&format!("net-{i}")].bootnodes.clone().unwrap();
            assert_eq!(boots.len(), i as usize);
            for (j, b) in boots.iter().enumerate() {
                let peer = keys.peer_id(&format!("net-{j}")).unwrap().unwrap();
                assert_eq!(
                    b,
                    &format!(
                        "/dns4/net-{j}.net-headless.ns1.svc.cluster.local/tcp/4001/p2p/{peer}"
                    )
                );
                p2p_mpc_node::config::parse_peer_multiaddr(b).unwrap();
            }
        }
        assert_eq!(file.network_port, Some(4001));
        assert_eq!(file.data_dir.unwrap(), Path::new(DATA_DIR));
    }

    #[test]
    fn the_roster_lists_every_pod_and_the_config_points_at_it() {
        let mc = cluster("net", 3);
        let names = ClusterNames::of(&mc, "cluster.local");
        let mut keys = ClusterKeys::default();
        keys.ensure("net", 3);
        let members =
            p2p_mpc_node::roster::parse_members(&members_file(&mc, &names, &keys).unwrap())
                .unwrap();
        let expected: std::collections::BTreeSet<_> = (0..3)
            .map(|i| keys.peer_id(&format!("net-{i}")).unwrap().unwrap())
            .collect();
        assert_eq!(members, expected);
        let text = node_config(&mc, &names, &keys).unwrap();
        let file = p2p_mpc_node::config::FileConfig::parse(Path::new("node.yml"), &text).unwrap();
        assert_eq!(
            file.cluster_members_file.unwrap(),
            Path::new(CONFIG_DIR).join(MEMBERS_FILE)
        );
        let cm = build(&mc, &names, &keys).unwrap();
        assert!(cm.data.unwrap().contains_key(MEMBERS_FILE));
    }

    #[test]
    fn cluster_domain_is_used() {
        let mc = cluster("net", 2);
        let names = ClusterNames::of(&mc, "corp.example");
        let mut keys = ClusterKeys::default();
        keys.ensure("net", 2);
        let b = bootnodes_of(&names, &keys, 4001, 1).unwrap();
        assert!(b[0].starts_with("/dns4/net-0.net-headless.ns1.svc.corp.example/tcp/4001/p2p/"));
    }
}
