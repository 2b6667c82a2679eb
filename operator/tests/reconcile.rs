//! The controller against a real kube-apiserver, etcd and kube-controller-manager
//! (deploy/testenv): children, status, scaling, ServiceMonitor discovery, schema
//! validation, garbage collection, no writes after a controller restart, and the migration
//! of a cluster of the earlier layout.

use k8s_openapi::api::apps::v1::StatefulSet;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use p2p_mpc_operator::crd::MpcCluster;
use p2p_mpc_operator::resources::service_monitor;
use p2p_mpc_testenv::wait_for;

mod common;
use common::{
    DEADLINE, RunningController, cluster, install_crd, plane_and_namespace, service_monitor_crd,
};
use serde_json::json;

fn is_controlled_by(obj: &impl Resource, mc: &MpcCluster) -> bool {
    obj.meta().owner_references.iter().flatten().any(|r| {
        r.controller == Some(true)
            && r.kind == "MpcCluster"
            && Some(&r.uid) == mc.metadata.uid.as_ref()
    })
}

async fn get_when<K, F>(api: &Api<K>, name: &str, what: &str, ok: F) -> K
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    F: Fn(&K) -> Result<(), String>,
{
    wait_for(what, DEADLINE, || async {
        match api.get_opt(name).await.map_err(|e| e.to_string())? {
            Some(obj) => ok(&obj).map(|()| obj),
            None => Err(format!("{name} does not exist")),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The bytes of entry `file` of a Secret.
fn entry(secret: &Secret, file: &str) -> Vec<u8> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(file))
        .map(|b| b.0.clone())
        .unwrap_or_else(|| panic!("{} has no {file}", secret.name_any()))
}

fn peer_of_key(bytes: &[u8]) -> String {
    libp2p::identity::Keypair::from_protobuf_encoding(bytes)
        .expect("node key format")
        .public()
        .to_peer_id()
        .to_string()
}

/// Member `i`'s Secret, once it holds a key, a config and a roster of `members` peers.
async fn member_secret(secrets: &Api<Secret>, name: &str, i: i32, members: usize) -> Secret {
    get_when(
        secrets,
        &format!("{name}-node-{i}"),
        &format!("the Secret of member {i} with a roster of {members}"),
        |s| {
            let data = s.data.clone().unwrap_or_default();
            let roster = data
                .get("cluster-members")
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .unwrap_or_default();
            let n = p2p_mpc_node::roster::parse_members(&roster)
                .map(|m| m.len())
                .unwrap_or(0);
            if data.contains_key("identity.key") && data.contains_key("node.yml") && n == members {
                Ok(())
            } else {
                Err(format!("entries {:?}, roster of {n}", data.keys()))
            }
        },
    )
    .await
}

/// The peer ids in a member Secret's roster.
fn roster(secret: &Secret) -> std::collections::BTreeSet<String> {
    let text = String::from_utf8(entry(secret, "cluster-members")).unwrap();
    p2p_mpc_node::roster::parse_members(&text)
        .unwrap()
        .into_iter()
        .map(|p| p.to_string())
        .collect()
}

async fn gone<K>(api: &Api<K>, name: &str) -> Result<bool, String>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Ok(api
        .get_opt(name)
        .await
        .map_err(|e| e.to_string())?
        .is_none_or(|o| o.meta().deletion_timestamp.is_some()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mpc_cluster_lifecycle_against_a_real_api_server() {
    let Some((_plane, client, ns)) = plane_and_namespace().await else {
        return;
    };
    let ctrl = RunningController::start(&client);

    let mcs: Api<MpcCluster> = Api::namespaced(client.clone(), &ns);
    let mc = mcs
        .create(
            &PostParams::default(),
            &cluster(
                "net",
                json!({"replicas": 3, "metrics": {"serviceMonitor": {"enabled": true}}}),
            ),
        )
        .await
        .unwrap();

    // Every member has a Secret of its own (key, config, roster of all three), owned by the
    // cluster; no Secret of all keys, no ConfigMap.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let mut member_secrets = Vec::new();
    for i in 0..3 {
        let s = member_secret(&secrets, "net", i, 3).await;
        assert!(is_controlled_by(&s, &mc));
        member_secrets.push(s);
    }
    let peers: Vec<String> = member_secrets
        .iter()
        .map(|s| peer_of_key(&entry(s, "identity.key")))
        .collect();
    let all: std::collections::BTreeSet<String> = peers.iter().cloned().collect();
    assert_eq!(all.len(), 3, "three distinct identities");
    for s in &member_secrets {
        assert_eq!(roster(s), all, "{} lists every member", s.name_any());
    }
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    assert!(cms.get_opt("net-config").await.unwrap().is_none());
    assert!(secrets.get_opt("net-identity").await.unwrap().is_none());

    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
    let headless = get_when(&svcs, "net-headless", "the headless Service", |_| Ok(())).await;
    assert_eq!(
        headless.spec.as_ref().unwrap().cluster_ip.as_deref(),
        Some("None")
    );
    assert_eq!(
        headless.spec.as_ref().unwrap().publish_not_ready_addresses,
        Some(true)
    );
    let metrics_svc = get_when(&svcs, "net-metrics", "the metrics Service", |_| Ok(())).await;
    assert!(is_controlled_by(&metrics_svc, &mc));
    let metrics_ports: Vec<i32> = metrics_svc
        .spec
        .unwrap()
        .ports
        .unwrap()
        .iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(metrics_ports, vec![9090], "metrics only, never the API");
    assert!(
        svcs.get_opt("net").await.unwrap().is_none(),
        "no Service in front of the API unless spec.api.service asks for one"
    );

    // The API is closed: a random token in a Secret of the cluster's, mounted by every pod.
    let token_secret = get_when(
        &secrets,
        "net-api-token",
        "the API token Secret",
        |_| Ok(()),
    )
    .await;
    assert!(is_controlled_by(&token_secret, &mc));
    let token = String::from_utf8(entry(&token_secret, "token")).unwrap();
    assert!(
        token.len() == 64 && hex::decode(&token).is_ok(),
        "32 random bytes in hex"
    );
    for s in &member_secrets {
        let text = String::from_utf8(entry(s, "node.yml")).unwrap();
        let file = p2p_mpc_node::config::FileConfig::parse(std::path::Path::new("node.yml"), &text)
            .unwrap();
        assert_eq!(
            file.api_token_file.unwrap(),
            std::path::Path::new("/var/run/p2p-mpc/api/token")
        );
    }

    // The NetworkPolicy selects exactly the cluster's pods: p2p from them alone, the API from
    // the namespace, metrics from the monitoring namespace and this one.
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    let np = get_when(&policies, "net", "the NetworkPolicy", |_| Ok(())).await;
    assert!(is_controlled_by(&np, &mc));
    let np = np.spec.unwrap();
    let cluster_pods = BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "p2p-mpc".to_string()),
        ("app.kubernetes.io/instance".to_string(), "net".to_string()),
    ]);
    assert_eq!(np.pod_selector.unwrap().match_labels.unwrap(), cluster_pods);
    let rules = np.ingress.unwrap();
    let rule_ports = |i: usize| -> Vec<String> {
        rules[i]
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let port = p.port.as_ref()?;
                Some(format!("{port:?}/{}", p.protocol.as_deref()?))
            })
            .collect()
    };
    assert_eq!(rule_ports(0), vec!["Int(4001)/TCP"]);
    let p2p_from = rules[0].from.clone().unwrap();
    assert_eq!(p2p_from.len(), 1);
    assert_eq!(
        p2p_from[0]
            .pod_selector
            .clone()
            .unwrap()
            .match_labels
            .unwrap(),
        cluster_pods
    );
    assert!(p2p_from[0].namespace_selector.is_none());
    assert_eq!(rule_ports(1), vec!["Int(8080)/TCP"]);
    assert_eq!(rule_ports(2), vec!["Int(9090)/TCP"]);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    for i in 0..3 {
        let sts = get_when(&sets, &format!("net-{i}"), "a member's StatefulSet", |_| {
            Ok(())
        })
        .await;
        assert!(is_controlled_by(&sts, &mc));
        assert_eq!(sts.spec.replicas, Some(1));
    }
    assert!(sets.get_opt("net").await.unwrap().is_none());
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    let pdb = get_when(&pdbs, "net", "the PodDisruptionBudget", |_| Ok(())).await;
    assert!(is_controlled_by(&pdb, &mc));
    // Data claims are the operator's, kept when the cluster goes (no owner).
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    for i in 0..3 {
        let c = get_when(
            &claims,
            &format!("data-net-{i}"),
            "a member's claim",
            |_| Ok(()),
        )
        .await;
        assert!(c.metadata.owner_references.is_none());
    }

    // The real StatefulSet controller makes the pods (Pending: no kubelet here). Each pod
    // mounts its own Secret and claim and nothing else, and gets no service-account token.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for i in 0..3 {
        let pod = get_when(&pods, &format!("net-{i}-0"), "a member's pod", |_| Ok(())).await;
        let spec = pod.spec.unwrap();
        assert_eq!(spec.automount_service_account_token, Some(false));
        let volumes = spec.volumes.unwrap_or_default();
        let secrets_mounted: Vec<String> = volumes
            .iter()
            .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
            .collect();
        assert_eq!(
            secrets_mounted,
            vec![format!("net-node-{i}"), "net-api-token".to_string()],
            "its own identity and the API token, no other member's key"
        );
        let claims_mounted: Vec<String> = volumes
            .iter()
            .filter_map(|v| Some(v.persistent_volume_claim.as_ref()?.claim_name.clone()))
            .collect();
        assert_eq!(claims_mounted, vec![format!("data-net-{i}")]);
        assert!(
            volumes
                .iter()
                .all(|v| v.projected.is_none() && v.config_map.is_none()),
            "no token, no ConfigMap: {volumes:?}"
        );
    }

    // Status: peers match the members' keys; the missing ServiceMonitor CRD is explained.
    let status_mc = get_when(
        &mcs,
        "net",
        "status with 3 peers and the ServiceMonitor condition",
        |m| {
            let st = m.status.clone().unwrap_or_default();
            let sm = st.conditions.iter().find(|c| c.type_ == "ServiceMonitor");
            if st.peers.len() == 3
                && sm.is_some_and(|c| c.status == "False" && c.reason == "CRDNotInstalled")
            {
                Ok(())
            } else {
                Err(format!("{st:?}"))
            }
        },
    )
    .await;
    let status = status_mc.status.unwrap();
    for (i, peer) in peers.iter().enumerate() {
        let pod = format!("net-{i}-0");
        let p = &status.peers[&pod];
        assert_eq!(&p.peer_id, peer, "status peer of {pod} matches its key");
        assert_eq!(
            p.multiaddr,
            format!("/dns4/{pod}.net-headless.{ns}.svc.cluster.local/tcp/4001/p2p/{peer}")
        );
    }
    assert_eq!(status.observed_generation, status_mc.metadata.generation);
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "False", "no kubelet: no pod is ready");
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("Created")),
        "Events say what was created"
    );

    // A controller restart writes nothing: every resourceVersion stays.
    let snapshot = || async {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(
                secrets
                    .get(&format!("net-node-{i}"))
                    .await
                    .unwrap()
                    .resource_version(),
            );
            v.push(
                sets.get(&format!("net-{i}"))
                    .await
                    .unwrap()
                    .resource_version(),
            );
        }
        v.push(svcs.get("net-headless").await.unwrap().resource_version());
        v.push(svcs.get("net-metrics").await.unwrap().resource_version());
        v.push(
            secrets
                .get("net-api-token")
                .await
                .unwrap()
                .resource_version(),
        );
        v.push(policies.get("net").await.unwrap().resource_version());
        v.push(pdbs.get("net").await.unwrap().resource_version());
        v.push(mcs.get("net").await.unwrap().resource_version());
        v
    };
    // Let the StatefulSets' own status settle first (the controller-manager writes it),
    // and the cluster's status reflect it.
    wait_for(
        "the MpcCluster status to catch up with the StatefulSets",
        DEADLINE,
        || async {
            let mut updated = 0;
            for i in 0..3 {
                let s = sets
                    .get(&format!("net-{i}"))
                    .await
                    .map_err(|e| e.to_string())?;
                let st = s.status.unwrap_or_default();
                if st.observed_generation != s.metadata.generation || st.replicas != 1 {
                    return Err(format!("net-{i} not settled: {st:?}"));
                }
                updated += st.updated_replicas.unwrap_or(0).min(1);
            }
            let want = format!("{updated}/3 nodes updated, 0/3 ready");
            let m = mcs.get("net").await.map_err(|e| e.to_string())?;
            let conditions = m.status.map(|s| s.conditions).unwrap_or_default();
            let degraded = conditions
                .iter()
                .any(|c| c.type_ == "Degraded" && c.status != "False");
            let seen = conditions
                .into_iter()
                .find(|c| c.type_ == "Progressing")
                .map(|c| c.message)
                .unwrap_or_default();
            if seen == want && !degraded {
                Ok(())
            } else {
                Err(format!("want {want:?}, status says {seen:?}"))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let before_restart = snapshot().await;
    let status_before_restart = mcs.get("net").await.unwrap().status;
    ctrl.stop().await;
    let ctrl = RunningController::start(&client);
    wait_for("the new controller to reconcile", DEADLINE, || async {
        if ctrl.reconciliations() >= 1 {
            Ok(())
        } else {
            Err("no reconcile yet".into())
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let after_restart = snapshot().await;
    if after_restart != before_restart {
        let now = mcs.get("net").await.unwrap();
        panic!(
            "a restarted controller wrote something: {before_restart:?} -> {after_restart:?}\nstatus before: {:?}\nstatus after: {:?}",
            status_before_restart, now.status
        );
    }

    // Scale 3 -> 5: keys 0..2 unchanged, every roster lists 5, the new members get the
    // right bootnodes, and the first three members' StatefulSets are not touched (no roll).
    let sets_before: Vec<_> = {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(
                sets.get(&format!("net-{i}"))
                    .await
                    .unwrap()
                    .resource_version(),
            );
        }
        v
    };
    mcs.patch(
        "net",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 5}})),
    )
    .await
    .unwrap();
    let mut peers5 = Vec::new();
    for i in 0..5 {
        let s = member_secret(&secrets, "net", i, 5).await;
        let peer = peer_of_key(&entry(&s, "identity.key"));
        if let Some(before) = peers.get(i as usize) {
            assert_eq!(&peer, before, "the key of member {i} is unchanged");
        }
        peers5.push(peer);
    }
    let s4 = secrets.get("net-node-4").await.unwrap();
    let text = String::from_utf8(entry(&s4, "node.yml")).unwrap();
    let file =
        p2p_mpc_node::config::FileConfig::parse(std::path::Path::new("node.yml"), &text).unwrap();
    let expected: Vec<String> = (0..4)
        .map(|j| {
            format!(
                "/dns4/net-{j}-0.net-headless.{ns}.svc.cluster.local/tcp/4001/p2p/{}",
                peers5[j]
            )
        })
        .collect();
    assert_eq!(file.bootnodes.unwrap(), expected, "bootnodes of member 4");
    get_when(&sets, "net-4", "member 4's StatefulSet", |_| Ok(())).await;
    for (i, before) in sets_before.iter().enumerate() {
        assert_eq!(
            &sets
                .get(&format!("net-{i}"))
                .await
                .unwrap()
                .resource_version(),
            before,
            "scaling up does not touch member {i}'s StatefulSet"
        );
    }

    // Scale 5 -> 2: members 2..4 stop; their keys stay for a later scale-up; rosters shrink.
    mcs.patch(
        "net",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 2}})),
    )
    .await
    .unwrap();
    wait_for("members 2..4 to stop", DEADLINE, || async {
        for i in 2..5 {
            if !gone(&sets, &format!("net-{i}")).await? {
                return Err(format!("net-{i} still runs"));
            }
        }
        Ok(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let s0 = member_secret(&secrets, "net", 0, 2).await;
    assert_eq!(roster(&s0), peers5[..2].iter().cloned().collect());
    let s4 = secrets.get("net-node-4").await.unwrap();
    assert_eq!(peer_of_key(&entry(&s4, "identity.key")), peers5[4]);

    // The API's Service on request, with the API port only; the token stays the same.
    mcs.patch(
        "net",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"api": {"service": true}}})),
    )
    .await
    .unwrap();
    let api_svc = get_when(&svcs, "net", "the API's Service", |_| Ok(())).await;
    let api_ports: Vec<i32> = api_svc
        .spec
        .unwrap()
        .ports
        .unwrap()
        .iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(api_ports, vec![8080]);
    assert_eq!(
        entry(&secrets.get("net-api-token").await.unwrap(), "token"),
        token.as_bytes(),
        "the token is never regenerated"
    );

    // With the ServiceMonitor CRD installed, a ServiceMonitor appears.
    let sm_crd = service_monitor_crd();
    install_crd(&client, sm_crd).await;
    // Nudge a reconcile (the CRD itself is not watched).
    mcs.patch(
        "net",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"test/nudge": "1"}}})),
    )
    .await
    .unwrap();
    let monitors: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &service_monitor::api_resource());
    let sm = get_when(&monitors, "net", "the ServiceMonitor", |_| Ok(())).await;
    assert_eq!(sm.data["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(
        sm.data["spec"]["selector"]["matchLabels"]["p2p-mpc.dev/service"], "metrics",
        "Prometheus scrapes the metrics Service"
    );
    get_when(&mcs, "net", "ServiceMonitor condition True", |m| {
        let ok = m.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "ServiceMonitor" && c.status == "True")
        });
        if ok {
            Ok(())
        } else {
            Err(format!("{:?}", m.status))
        }
    })
    .await;

    // Deleting the cluster garbage-collects its children; the data claims stay.
    mcs.delete("net", &DeleteParams::default()).await.unwrap();
    wait_for("children to be garbage-collected", DEADLINE, || async {
        let mut left = Vec::new();
        for i in 0..5 {
            if !gone(&secrets, &format!("net-node-{i}")).await? {
                left.push(format!("Secret net-node-{i}"));
            }
            if !gone(&sets, &format!("net-{i}")).await? {
                left.push(format!("StatefulSet net-{i}"));
            }
        }
        for name in ["net", "net-metrics"] {
            if !gone(&svcs, name).await? {
                left.push(format!("Service {name}"));
            }
        }
        if !gone(&secrets, "net-api-token").await? {
            left.push("Secret net-api-token".into());
        }
        if !gone(&policies, "net").await? {
            left.push("NetworkPolicy net".into());
        }
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("still present: {left:?}"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    for i in 0..3 {
        assert!(
            claims
                .get_opt(&format!("data-net-{i}"))
                .await
                .unwrap()
                .is_some()
        );
    }
    ctrl.stop().await;
}

/// A cluster made by the earlier layout (one StatefulSet whose template claims `data`, one
/// Secret of every key, the roster in a ConfigMap) is taken over: every member keeps its peer
/// id and its very data volume claim, and the old objects are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_of_the_earlier_layout_is_migrated_with_peer_ids_and_volumes_kept() {
    let Some((_plane, client, ns)) = plane_and_namespace().await else {
        return;
    };
    let mcs: Api<MpcCluster> = Api::namespaced(client.clone(), &ns);
    let mc = mcs
        .create(
            &PostParams::default(),
            &cluster("old", json!({"replicas": 3})),
        )
        .await
        .unwrap();
    let owner = json!([{
        "apiVersion": "p2p-mpc.dev/v1alpha1", "kind": "MpcCluster", "name": "old",
        "uid": mc.metadata.uid, "controller": true, "blockOwnerDeletion": true,
    }]);
    let labels = json!({
        "app.kubernetes.io/name": "p2p-mpc", "app.kubernetes.io/instance": "old",
        "app.kubernetes.io/managed-by": "p2p-mpc-operator", "app.kubernetes.io/component": "node",
    });
    // Keys 0..3: the earlier operator kept the key of a member scaled away (ordinal 3).
    let keys: Vec<Vec<u8>> = (0..4)
        .map(|_| p2p_mpc_node::identity::encode_keypair(&p2p_mpc_node::identity::generate()))
        .collect();
    let mut legacy: Secret = serde_json::from_value(json!({
        "metadata": {"name": "old-identity", "labels": labels, "ownerReferences": owner},
    }))
    .unwrap();
    legacy.data = Some(
        keys.iter()
            .enumerate()
            .map(|(i, k)| (format!("old-{i}.key"), k8s_openapi::ByteString(k.clone())))
            .collect(),
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .create(&PostParams::default(), &legacy)
        .await
        .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "old-config", "labels": labels, "ownerReferences": owner},
            "data": {"node.yml": "network_port: 4001\n", "cluster-members": ""},
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    let selector =
        json!({"app.kubernetes.io/name": "p2p-mpc", "app.kubernetes.io/instance": "old"});
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    sets.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "old", "labels": labels, "ownerReferences": owner},
            "spec": {
                "replicas": 3, "serviceName": "old-headless", "podManagementPolicy": "Parallel",
                "selector": {"matchLabels": selector},
                "template": {"metadata": {"labels": selector}, "spec": {"containers": [{
                    "name": "node", "image": "p2p-mpc:old",
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data", "labels": selector},
                    "spec": {"accessModes": ["ReadWriteOnce"],
                             "resources": {"requests": {"storage": "1Gi"}}}}],
            },
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    // The StatefulSet controller makes the claims of the earlier layout.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let mut uids = Vec::new();
    for i in 0..3 {
        let c = get_when(
            &claims,
            &format!("data-old-{i}"),
            "the earlier layout's claim",
            |_| Ok(()),
        )
        .await;
        uids.push(c.metadata.uid.unwrap());
    }

    let ctrl = RunningController::start(&client);
    wait_for("the earlier layout's objects to go", DEADLINE, || async {
        let mut left = Vec::new();
        if !gone(&sets, "old").await? {
            left.push("StatefulSet old");
        }
        if !gone(&secrets, "old-identity").await? {
            left.push("Secret old-identity");
        }
        if !gone(&cms, "old-config").await? {
            left.push("ConfigMap old-config");
        }
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("still present: {left:?}"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    for (i, key) in keys.iter().enumerate() {
        let s = get_when(
            &secrets,
            &format!("old-node-{i}"),
            "a member's Secret",
            |_| Ok(()),
        )
        .await;
        assert_eq!(&entry(&s, "identity.key"), key, "member {i} keeps its key");
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for (i, uid) in uids.iter().enumerate() {
        let sts = get_when(&sets, &format!("old-{i}"), "a member's StatefulSet", |_| {
            Ok(())
        })
        .await;
        let volumes = sts.spec.template.spec.unwrap().volumes.unwrap();
        assert!(
            volumes.iter().any(|v| v
                .persistent_volume_claim
                .as_ref()
                .is_some_and(|c| c.claim_name == format!("data-old-{i}"))),
            "member {i} mounts the claim it had: {volumes:?}"
        );
        let c = claims.get(&format!("data-old-{i}")).await.unwrap();
        assert_eq!(
            c.metadata.uid.as_ref(),
            Some(uid),
            "the very same claim, not a new one"
        );
        get_when(&pods, &format!("old-{i}-0"), "a member's pod", |_| Ok(())).await;
    }
    assert!(
        claims.get_opt("data-old-3").await.unwrap().is_none(),
        "no claim for a member that is not running"
    );
    let status = get_when(&mcs, "old", "status with 3 peers", |m| {
        let n = m.status.as_ref().map_or(0, |s| s.peers.len());
        if n == 3 {
            Ok(())
        } else {
            Err(format!("{n} peers"))
        }
    })
    .await
    .status
    .unwrap();
    for (i, key) in keys.iter().take(3).enumerate() {
        assert_eq!(
            status.peers[&format!("old-{i}-0")].peer_id,
            peer_of_key(key)
        );
    }
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("Migrating")),
        "an Event says the cluster was migrated"
    );
    ctrl.stop().await;
}

/// `spec.api.tokenSecret` names the user's Secret: a missing or empty one is reported in the
/// status and no pod starts without its token; once it is there, the pods mount it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_secret_of_the_users_is_checked_and_mounted() {
    let Some((_plane, client, ns)) = plane_and_namespace().await else {
        return;
    };
    let ctrl = RunningController::start(&client);
    let mcs: Api<MpcCluster> = Api::namespaced(client.clone(), &ns);
    mcs.create(
        &PostParams::default(),
        &cluster(
            "tok",
            json!({"replicas": 1, "api": {"tokenSecret": "my-token"}, "networkPolicy": {"enabled": false}}),
        ),
    )
    .await
    .unwrap();
    let degraded = |want: &'static str| {
        let mcs = mcs.clone();
        async move {
            get_when(&mcs, "tok", "the Degraded condition", |m| {
                let c = m
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Degraded"));
                match c {
                    Some(c) if c.status == "True" && c.message.contains(want) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            })
            .await
        }
    };
    degraded("spec.api.tokenSecret names Secret my-token, which does not exist").await;
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    assert!(
        sets.get_opt("tok-0").await.unwrap().is_none(),
        "no pod without its token"
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    assert!(secrets.get_opt("tok-api-token").await.unwrap().is_none());
    let mut mine: Secret =
        serde_json::from_value(json!({"metadata": {"name": "my-token"}})).unwrap();
    mine.data = Some(BTreeMap::from([(
        "other".to_string(),
        k8s_openapi::ByteString(b"x".to_vec()),
    )]));
    secrets.create(&PostParams::default(), &mine).await.unwrap();
    degraded("the API token Secret my-token has no key `token`").await;
    secrets
        .patch(
            "my-token",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"token": "a-token-of-the-users"}})),
        )
        .await
        .unwrap();
    let sts = get_when(&sets, "tok-0", "the member's StatefulSet", |_| Ok(())).await;
    let mounted: Vec<String> = sts
        .spec
        .template
        .spec
        .unwrap()
        .volumes
        .unwrap()
        .iter()
        .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
        .collect();
    assert_eq!(
        mounted,
        vec!["tok-node-0".to_string(), "my-token".to_string()]
    );
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    assert!(
        policies.get_opt("tok").await.unwrap().is_none(),
        "networkPolicy.enabled: false makes none"
    );
    ctrl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_are_refused_at_apply_time() {
    let Some((_plane, client, ns)) = plane_and_namespace().await else {
        return;
    };
    let mcs: Api<MpcCluster> = Api::namespaced(client.clone(), &ns);
    // Raw objects, so that the client sends what its own types would refuse.
    let raw: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &kube::api::ApiResource::erase::<MpcCluster>(&()),
    );
    let refused = |spec: serde_json::Value| {
        let raw = raw.clone();
        async move {
            let obj: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "p2p-mpc.dev/v1alpha1",
                "kind": "MpcCluster",
                "metadata": {"name": "bad"},
                "spec": spec.clone(),
            }))
            .unwrap();
            match raw.create(&PostParams::default(), &obj).await {
                Ok(_) => panic!("spec {spec} was accepted"),
                Err(e) => e.to_string(),
            }
        }
    };
    let e = refused(json!({"replicas": 0})).await;
    assert!(e.contains("spec.replicas") && e.contains("1"), "{e}");
    let e = refused(json!({"replicas": 1001})).await;
    assert!(e.contains("spec.replicas") && e.contains("1000"), "{e}");
    let e = refused(json!({"replicas": 1, "network": {"port": 70000}})).await;
    assert!(e.contains("spec.network.port"), "{e}");
    let e = refused(json!({"replicas": 1, "api": {"port": 9090}})).await;
    assert!(e.contains("must be different"), "{e}");
    let e = refused(json!({"replicas": 1, "logLevel": "loud"})).await;
    assert!(e.contains("spec.logLevel"), "{e}");

    // Storage is immutable once created.
    mcs.create(
        &PostParams::default(),
        &cluster("ok", json!({"replicas": 1})),
    )
    .await
    .unwrap();
    let e = mcs
        .patch(
            "ok",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"storage": {"size": "5Gi"}}})),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("storage is immutable"), "{e}");
}
