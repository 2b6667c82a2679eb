//! The node config of a member, `node.yml`, and the cluster roster, `cluster-members` (the
//! peer id of every member, one a line). Both live in the member's own Secret beside its
//! identity key (`member_secret`), so whoever cannot read keys cannot change who is a member
//! or how a node runs. The nodes re-read the roster while they run, so scaling the cluster
//! changes who they admit without a restart.

use serde_json::{Value, json};

use super::ClusterNames;
use crate::crd::MpcCluster;
use crate::keys::{ClusterKeys, KeyError};

/// The file name of the node config in a member's Secret.
pub const CONFIG_FILE: &str = "node.yml";
/// The file name of the cluster roster in a member's Secret.
pub const MEMBERS_FILE: &str = "cluster-members";
/// The file name of the identity key in a member's Secret.
pub const KEY_FILE: &str = "identity.key";
/// Where the pods mount their Secret.
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
    if let Some(quic) = spec.network.quic_port {
        m.insert("quic_port".into(), json!(quic));
    }
    m.insert("topics".into(), json!(spec.network.topics));
    if !spec.network.topic_rules.is_empty() {
        let mut rules = serde_json::Map::new();
        for (i, (topic, rule)) in spec.network.topic_rules.iter().enumerate() {
            let mut r = serde_json::Map::new();
            if let Some(max) = rule.max_bytes {
                r.insert("max_bytes".into(), json!(max));
            }
            if let Some(ct) = rule.content_type {
                r.insert("content_type".into(), json!(ct.to_node().as_str()));
            }
            if rule.schema.is_some() {
                // Beside node.yml in the member's Secret; the node reads it relative to its config.
                r.insert("schema".into(), json!(schema_file_name(i)));
            }
            rules.insert(topic.clone(), Value::Object(r));
        }
        m.insert("topic_rules".into(), Value::Object(rules));
    }
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
    m.insert(
        "identity_key_path".into(),
        json!(format!("{CONFIG_DIR}/{KEY_FILE}")),
    );
    m.insert(
        "api_token_file".into(),
        json!(format!(
            "{}/{}",
            super::api_token::TOKEN_DIR,
            super::api_token::TOKEN_KEY
        )),
    );
    m.insert("enable_jaeger".into(), json!(spec.tracing.jaeger.enabled));
    m.insert("jaeger_host".into(), json!(spec.tracing.jaeger.host));
    m.insert("jaeger_port".into(), json!(spec.tracing.jaeger.port));
    m
}

/// The Secret file name of the schema of the `i`th topic rule (in topic order).
pub fn schema_file_name(i: usize) -> String {
    format!("topic-schema-{i}.json")
}

/// The schema files of the topic rules: (file name, JSON text).
pub fn schema_files(mc: &MpcCluster) -> Vec<(String, String)> {
    mc.spec
        .network
        .topic_rules
        .values()
        .enumerate()
        .filter_map(|(i, r)| Some((schema_file_name(i), r.schema.clone()?)))
        .collect()
}

/// The peer id of member `i`, if it has a key.
pub fn member_peer(
    names: &ClusterNames,
    keys: &ClusterKeys,
    i: i32,
) -> Result<Option<libp2p::PeerId>, KeyError> {
    keys.peer_id(i, &names.member(i), &names.member_secret(i))
}

/// The bootnodes of member `i`: members `0..i`, each by its pod's stable DNS name and peer id.
pub fn bootnodes_of(
    names: &ClusterNames,
    keys: &ClusterKeys,
    port: i32,
    i: i32,
) -> Result<Vec<String>, KeyError> {
    let mut out = Vec::new();
    for j in 0..i {
        if let Some(peer) = member_peer(names, keys, j)? {
            out.push(pod_multiaddr(names, &names.pod(j), port, &peer.to_string()));
        }
    }
    Ok(out)
}

/// The node config file text of member `i`.
pub fn node_config(
    mc: &MpcCluster,
    names: &ClusterNames,
    keys: &ClusterKeys,
    i: i32,
) -> Result<String, KeyError> {
    let mut config = shared_settings(mc);
    config.insert(
        "bootnodes".into(),
        json!(bootnodes_of(names, keys, mc.spec.network.port, i)?),
    );
    let body =
        serde_yaml::to_string(&Value::Object(config)).expect("JSON values serialize to YAML");
    Ok(format!(
        "# Written by the p2p-mpc operator for member {i} of MpcCluster {}/{}; edits are overwritten.\n{body}",
        names.namespace, names.name
    ))
}

/// The roster file text: the peer id of every member of `0..replicas` that has a key.
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
        if let Some(peer) = member_peer(names, keys, i)? {
            text.push_str(&format!("{peer}\n"));
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::resources::test_support::cluster;

    #[test]
    fn member_i_gets_the_members_before_it_as_bootnodes() {
        let mc = cluster("net", 4);
        let names = ClusterNames::of(&mc, "cluster.local");
        let mut keys = ClusterKeys::default();
        keys.ensure(4);
        for i in 0..4 {
            // The node's own loader reads it, and member i gets exactly members 0..i-1.
            let text = node_config(&mc, &names, &keys, i).unwrap();
            let file =
                p2p_mpc_node::config::FileConfig::parse(Path::new("node.yml"), &text).unwrap();
            let boots = file.bootnodes.unwrap();
            assert_eq!(boots.len(), i as usize);
            for (j, b) in boots.iter().enumerate() {
                let peer = member_peer(&names, &keys, j as i32).unwrap().unwrap();
                assert_eq!(
                    b,
                    &format!(
                        "/dns4/net-{j}-0.net-headless.ns1.svc.cluster.local/tcp/4001/p2p/{peer}"
                    )
                );
                p2p_mpc_node::values::parse_peer_multiaddr(b).unwrap();
            }
            assert_eq!(file.network_port, Some(4001));
            assert_eq!(file.data_dir.unwrap(), Path::new(DATA_DIR));
            assert_eq!(
                file.identity_key_path.unwrap(),
                Path::new(CONFIG_DIR).join(KEY_FILE)
            );
            assert!(file.pods.is_none());
            assert_eq!(
                file.api_token_file.unwrap(),
                Path::new("/var/run/p2p-mpc/api/token")
            );
        }
    }

    #[test]
    fn the_roster_lists_every_member_and_the_config_points_at_it() {
        let mc = cluster("net", 3);
        let names = ClusterNames::of(&mc, "cluster.local");
        let mut keys = ClusterKeys::default();
        keys.ensure(5);
        let members =
            p2p_mpc_node::roster::parse_members(&members_file(&mc, &names, &keys).unwrap())
                .unwrap();
        // Keys kept from an earlier, larger size are not members.
        let expected: std::collections::BTreeSet<_> = (0..3)
            .map(|i| member_peer(&names, &keys, i).unwrap().unwrap())
            .collect();
        assert_eq!(members, expected);
        let text = node_config(&mc, &names, &keys, 0).unwrap();
        let file = p2p_mpc_node::config::FileConfig::parse(Path::new("node.yml"), &text).unwrap();
        assert_eq!(
            file.cluster_members_file.unwrap(),
            Path::new(CONFIG_DIR).join(MEMBERS_FILE)
        );
    }

    #[test]
    fn cluster_domain_is_used() {
        let mc = cluster("net", 2);
        let names = ClusterNames::of(&mc, "corp.example");
        let mut keys = ClusterKeys::default();
        keys.ensure(2);
        let b = bootnodes_of(&names, &keys, 4001, 1).unwrap();
        assert!(b[0].starts_with("/dns4/net-0-0.net-headless.ns1.svc.corp.example/tcp/4001/p2p/"));
    }

    #[test]
    fn topic_rules_are_checked_and_reach_the_node_with_their_schema_files() {
        use crate::crd::{TopicContentType, TopicRuleSpec};
        let mut mc = cluster("net", 1);
        mc.spec.network.topics = vec!["chat".into(), "readings".into()];
        mc.spec.network.topic_rules.insert(
            "readings".into(),
            TopicRuleSpec {
                max_bytes: Some(512),
                content_type: Some(TopicContentType::Json),
                schema: Some(r#"{"type": "object", "required": ["value"]}"#.into()),
            },
        );
        mc.spec.network.check_topic_rules().unwrap();
        let names = ClusterNames::of(&mc, "cluster.local");
        let mut keys = ClusterKeys::default();
        keys.ensure(1);
        // The node's own loader takes the config and the schema file written beside it.
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join(CONFIG_FILE);
        std::fs::write(&config, node_config(&mc, &names, &keys, 0).unwrap()).unwrap();
        let files = schema_files(&mc);
        assert_eq!(files.len(), 1);
        for (name, text) in &files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let file = p2p_mpc_node::config::FileConfig::load(&config).unwrap();
        let spec = &file.topic_rules.unwrap()["readings"];
        assert_eq!(spec.max_bytes, Some(512));
        let rule =
            p2p_mpc_node::network::topic_rules::TopicRule::load(spec, dir.path(), 1 << 20).unwrap();
        assert!(rule.check(br#"{"value": 1}"#).is_ok());
        assert_eq!(rule.check(br#"{"v": 1}"#).unwrap_err().reason, "schema");
        // A schema change changes the pods' config hash (they restart to read it).
        let before = crate::resources::statefulset::config_hash(&mc);
        mc.spec
            .network
            .topic_rules
            .get_mut("readings")
            .unwrap()
            .schema = Some("{}".into());
        assert_ne!(before, crate::resources::statefulset::config_hash(&mc));

        // What the nodes would refuse is reported by the operator, naming the rule.
        let refused = |rule: TopicRuleSpec, topic: &str| {
            let mut mc = cluster("net", 1);
            mc.spec.network.topics = vec!["chat".into()];
            mc.spec.network.topic_rules.insert(topic.into(), rule);
            mc.spec.network.check_topic_rules().unwrap_err()
        };
        let json = |schema: &str| TopicRuleSpec {
            content_type: Some(TopicContentType::Json),
            schema: Some(schema.into()),
            ..Default::default()
        };
        let e = refused(TopicRuleSpec::default(), "other");
        assert!(
            e.contains(r#"topicRules["other"]"#) && e.contains("not in spec.network.topics"),
            "{e}"
        );
        let e = refused(json("{nope"), "chat");
        assert!(
            e.contains(r#"topicRules["chat"].schema is not JSON"#),
            "{e}"
        );
        let e = refused(json(r#"{"type": 5}"#), "chat");
        assert!(e.contains("not a valid JSON Schema"), "{e}");
        let e = refused(json(r#"{"$ref": "https://example.com/x.json"}"#), "chat");
        assert!(e.contains("self-contained"), "{e}");
        let e = refused(
            TopicRuleSpec {
                schema: Some("{}".into()),
                ..Default::default()
            },
            "chat",
        );
        assert!(e.contains("json or cbor, not text"), "{e}");
    }
}
