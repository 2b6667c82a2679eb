//! The controller against a real kube-apiserver, etcd and kube-controller-manager
//! (deploy/testenv): children, status, scaling, ServiceMonitor discovery, schema
//! validation, garbage collection, and no writes after a controller restart.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{CustomResourceExt, Resource, ResourceExt};
use p2p_mpc_operator::crd::MpcCluster;
use p2p_mpc_operator::resources::service_monitor;
use p2p_mpc_testenv::{ControlPlane, or_skip, wait_for};

mod common;
use common::{DEADLINE, RunningController, cluster, install_crd, namespace, service_monitor_crd};
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

fn key_peer_ids(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            let key =
                libp2p::identity::Keypair::from_protobuf_encoding(&v.0).expect("node key format");
            (
                k.trim_end_matches(".key").to_string(),
                key.public().to_peer_id().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mpc_cluster_lifecycle_against_a_real_api_server() {
    let Some(plane) = or_skip(ControlPlane::start_or_connect().await) else {
        return;
    };
    let client = plane.client().await.unwrap_or_else(|e| panic!("{e}"));
    install_crd(&client, MpcCluster::crd()).await;
    let ns = namespace(&client).await;
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

    // Every child, owned by the cluster.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret = get_when(
        &secrets,
        "net-identity",
        "the identity Secret with 3 keys",
        |s| {
            let n = s.data.as_ref().map_or(0, BTreeMap::len);
            if n == 3 {
                Ok(())
            } else {
                Err(format!("{n} keys"))
            }
        },
    )
    .await;
    assert!(is_controlled_by(&secret, &mc));
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cm = get_when(&cms, "net-config", "the ConfigMap", |_| Ok(())).await;
    assert!(is_controlled_by(&cm, &mc));
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
    let client_svc = get_when(&svcs, "net", "the client Service", |_| Ok(())).await;
    assert!(is_controlled_by(&client_svc, &mc));
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let sts = get_when(&sets, "net", "the StatefulSet", |_| Ok(())).await;
    assert!(is_controlled_by(&sts, &mc));
    assert_eq!(sts.spec.replicas, Some(3));
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    let pdb = get_when(&pdbs, "net", "the PodDisruptionBudget", |_| Ok(())).await;
    assert!(is_controlled_by(&pdb, &mc));

    // The real StatefulSet controller makes the pods (Pending: no kubelet here).
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    wait_for("3 pods from the StatefulSet", DEADLINE, || async {
        let n = pods
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .len();
        if n == 3 {
            Ok(())
        } else {
            Err(format!("{n} pods"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    // Status: peers match the Secret's keys; the missing ServiceMonitor CRD is explained.
    let peers = key_peer_ids(&secret);
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
    for (pod, p) in &status.peers {
        assert_eq!(
            &peers[pod], &p.peer_id,
            "status peer of {pod} matches its key"
        );
        assert!(p.multiaddr.ends_with(&format!("/p2p/{}", p.peer_id)));
        assert!(p.multiaddr.starts_with(&format!(
            "/dns4/{pod}.net-headless.{ns}.svc.cluster.local/tcp/4001"
        )));
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
    let versions = |objs: Vec<Option<String>>| objs;
    let snapshot = || async {
        versions(vec![
            secrets
                .get("net-identity")
                .await
                .unwrap()
                .resource_version(),
            cms.get("net-config").await.unwrap().resource_version(),
            svcs.get("net-headless").await.unwrap().resource_version(),
            svcs.get("net").await.unwrap().resource_version(),
            sets.get("net").await.unwrap().resource_version(),
            pdbs.get("net").await.unwrap().resource_version(),
            mcs.get("net").await.unwrap().resource_version(),
        ])
    };
    // Let the StatefulSet's own status settle first (the controller-manager writes it).
    wait_for("the StatefulSet status to settle", DEADLINE, || async {
        let s = sets.get("net").await.map_err(|e| e.to_string())?;
        let st = s.status.unwrap_or_default();
        if st.observed_generation == s.metadata.generation && st.replicas == 3 {
            Ok(())
        } else {
            Err(format!("{st:?}"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // ... and the cluster's status to reflect it.
    wait_for(
        "the MpcCluster status to catch up with the StatefulSet",
        DEADLINE,
        || async {
            let st = sets
                .get("net")
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default();
            let want = format!(
                "{}/3 nodes updated, {}/3 ready",
                st.updated_replicas.unwrap_or(0),
                st.ready_replicas.unwrap_or(0)
            );
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

    // Scale 3 -> 5: keys 0..2 unchanged, new pods get the right bootnodes, template unchanged.
    let template_before =
        serde_json::to_value(&sets.get("net").await.unwrap().spec.template).unwrap();
    mcs.patch(
        "net",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 5}})),
    )
    .await
    .unwrap();
    let secret5 = get_when(&secrets, "net-identity", "5 keys", |s| {
        let n = s.data.as_ref().map_or(0, BTreeMap::len);
        if n == 5 {
            Ok(())
        } else {
            Err(format!("{n} keys"))
        }
    })
    .await;
    for i in 0..3 {
        let k = format!("net-{i}.key");
        assert_eq!(
            secret5.data.as_ref().unwrap()[&k],
            secret.data.as_ref().unwrap()[&k],
            "{k} unchanged"
        );
    }
    let peers5 = key_peer_ids(&secret5);
    let cm5 = get_when(&cms, "net-config", "config for 5 pods", |c| {
        let text = &c.data.as_ref().unwrap()["node.yml"];
        if text.contains("net-4:") {
            Ok(())
        } else {
            Err(text.clone())
        }
    })
    .await;
    let text = &cm5.data.as_ref().unwrap()["node.yml"];
    let file =
        p2p_mpc_node::config::FileConfig::parse(std::path::Path::new("node.yml"), text).unwrap();
    let pods5 = file.pods.unwrap();
    for i in 0..5 {
        let boots = pods5[&format!("net-{i}")].bootnodes.clone().unwrap();
        let expected: Vec<String> = (0..i)
            .map(|j| {
                format!(
                    "/dns4/net-{j}.net-headless.{ns}.svc.cluster.local/tcp/4001/p2p/{}",
                    peers5[&format!("net-{j}")]
                )
            })
            .collect();
        assert_eq!(boots, expected, "bootnodes of net-{i}");
    }
    let sts5 = get_when(&sets, "net", "5 replicas", |s| {
        if s.spec.replicas == Some(5) {
            Ok(())
        } else {
            Err(format!("{:?}", s.spec.replicas))
        }
    })
    .await;
    assert_eq!(
        serde_json::to_value(&sts5.spec.template).unwrap(),
        template_before,
        "scaling does not roll pods"
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

    // Deleting the cluster garbage-collects its children.
    mcs.delete("net", &DeleteParams::default()).await.unwrap();
    wait_for("children to be garbage-collected", DEADLINE, || async {
        let left = [
            secrets
                .get_opt("net-identity")
                .await
                .map_err(|e| e.to_string())?
                .is_some(),
            cms.get_opt("net-config")
                .await
                .map_err(|e| e.to_string())?
                .is_some(),
            sets.get_opt("net")
                .await
                .map_err(|e| e.to_string())?
                .is_some(),
            svcs.get_opt("net")
                .await
                .map_err(|e| e.to_string())?
                .is_some(),
        ];
        if left.iter().any(|x| *x) {
            Err(format!("still present: {left:?}"))
        } else {
            Ok(())
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    ctrl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_are_refused_at_apply_time() {
    let Some(plane) = or_skip(ControlPlane::start_or_connect().await) else {
        return;
    };
    let client = plane.client().await.unwrap_or_else(|e| panic!("{e}"));
    install_crd(&client, MpcCluster::crd()).await;
    let ns = namespace(&client).await;
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
