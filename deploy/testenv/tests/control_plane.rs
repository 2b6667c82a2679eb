//! A real control plane: CRDs, watches, the StatefulSet controller and the garbage
//! collector all work, and nothing is left running after the handle drops.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};
use p2p_mpc_testenv::{ControlPlane, or_skip, port_open, process_alive, wait_for};
use serde_json::json;

const GROUP: &str = "testenv.p2p-mpc.dev";
/// Generous for a loaded 2-core machine; the steps usually take a few seconds.
const DEADLINE: Duration = Duration::from_secs(90);
/// Two discovery resyncs of the garbage collector plus slack.
const GC_DISCOVERY_DEADLINE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_serves_crds_runs_controllers_and_collects_garbage() {
    let Some(plane) = or_skip(ControlPlane::start_or_connect().await) else {
        return;
    };
    let client = plane.client().await.unwrap_or_else(|e| panic!("{e}"));
    let ns = create_namespace(&client).await;

    // A custom resource type, served and watchable.
    let widgets_resource = install_widget_crd(&client).await;
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &widgets_resource);
    let widget = DynamicObject::new("w1", &widgets_resource).data(json!({ "spec": { "size": 1 } }));
    let widget = widgets
        .create(&PostParams::default(), &widget)
        .await
        .unwrap_or_else(|e| panic!("creating a Widget: {e}"));
    let version = widget
        .resource_version()
        .expect("a created object has a resourceVersion");
    let mut changes = widgets
        .watch(&WatchParams::default().fields("metadata.name=w1"), &version)
        .await
        .unwrap_or_else(|e| panic!("watching Widgets: {e}"))
        .boxed();
    widgets
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "size": 2 } })),
        )
        .await
        .unwrap_or_else(|e| panic!("patching the Widget: {e}"));
    let seen = tokio::time::timeout(DEADLINE, async {
        let mut seen = Vec::new();
        while let Some(event) = changes
            .try_next()
            .await
            .unwrap_or_else(|e| panic!("watch stream: {e}"))
        {
            match event {
                WatchEvent::Modified(obj) if obj.data["spec"]["size"] == 2 => return Ok(()),
                other => seen.push(format!("{other:?}")),
            }
        }
        Err(seen)
    })
    .await;
    match seen {
        Ok(Ok(())) => {}
        Ok(Err(seen)) => panic!("watch ended without a Modified event with size 2; saw {seen:?}"),
        Err(_) => panic!("no Modified event with size 2 within {DEADLINE:?}"),
    }

    // A StatefulSet gets its Pods from the controller-manager (Pending: no scheduler, no kubelet).
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let sts: StatefulSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": { "name": "web" },
        "spec": {
            "replicas": 2,
            "serviceName": "web",
            // Parallel: the default OrderedReady waits for pod 0 to be Ready, which never happens here.
            "podManagementPolicy": "Parallel",
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [{ "name": "c", "image": "example.invalid/never-pulled:1" }] },
            },
        },
    }))
    .expect("StatefulSet JSON");
    statefulsets
        .create(&PostParams::default(), &sts)
        .await
        .unwrap_or_else(|e| panic!("creating the StatefulSet: {e}"));
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let by_label = ListParams::default().labels("app=web");
    wait_for("2 Pods owned by StatefulSet web", DEADLINE, || async {
        let list = pods.list(&by_label).await.map_err(|e| e.to_string())?;
        let owned: Vec<String> = list
            .items
            .iter()
            .filter(|p| {
                p.owner_references()
                    .iter()
                    .any(|o| o.kind == "StatefulSet" && o.name == "web")
            })
            .map(|p| p.name_any())
            .collect();
        if owned.len() == 2 {
            Ok(())
        } else {
            Err(format!("owned pods {owned:?}"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    statefulsets
        .delete("web", &DeleteParams::background())
        .await
        .unwrap_or_else(|e| panic!("deleting the StatefulSet: {e}"));
    wait_for(
        "the StatefulSet's Pods garbage-collected",
        DEADLINE,
        || async {
            let list = pods.list(&by_label).await.map_err(|e| e.to_string())?;
            let names: Vec<String> = list.items.iter().map(|p| p.name_any()).collect();
            if names.is_empty() {
                Ok(())
            } else {
                Err(format!("pods {names:?}"))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    drop(changes);
    drop(client);
    assert_nothing_left_after_drop(plane);
}

/// The garbage collector also collects dependants of a custom resource: what the operator
/// relies on when an MpcCluster is deleted. It learns of a new resource type on its
/// discovery resync (every 30 s in kube-controller-manager), hence the longer deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependants_of_a_custom_resource_are_garbage_collected() {
    let Some(plane) = or_skip(ControlPlane::start_or_connect().await) else {
        return;
    };
    let client = plane.client().await.unwrap_or_else(|e| panic!("{e}"));
    let ns = create_namespace(&client).await;
    let widgets_resource = install_widget_crd(&client).await;
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &widgets_resource);
    let widget = DynamicObject::new("w1", &widgets_resource).data(json!({ "spec": { "size": 1 } }));
    let widget = widgets
        .create(&PostParams::default(), &widget)
        .await
        .unwrap_or_else(|e| panic!("creating a Widget: {e}"));

    // A ConfigMap owned by the Widget.
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let owned_cm: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "owned-by-widget",
            "ownerReferences": [{
                "apiVersion": format!("{GROUP}/v1"),
                "kind": "Widget",
                "name": "w1",
                "uid": widget.uid().expect("a created object has a uid"),
            }],
        },
        "data": { "k": "v" },
    }))
    .expect("ConfigMap JSON");
    configmaps
        .create(&PostParams::default(), &owned_cm)
        .await
        .unwrap_or_else(|e| panic!("creating the owned ConfigMap: {e}"));

    widgets
        .delete("w1", &DeleteParams::background())
        .await
        .unwrap_or_else(|e| panic!("deleting the Widget: {e}"));
    wait_for(
        "the Widget's ConfigMap garbage-collected",
        GC_DISCOVERY_DEADLINE,
        || async {
            match configmaps
                .get_opt("owned-by-widget")
                .await
                .map_err(|e| e.to_string())?
            {
                None => Ok(()),
                Some(cm) => Err(format!(
                    "ConfigMap still there (deletionTimestamp {:?})",
                    cm.metadata.deletion_timestamp
                )),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    drop(client);
    assert_nothing_left_after_drop(plane);
}

/// Drops the control plane and checks that none of its processes, ports or files remain.
fn assert_nothing_left_after_drop(plane: ControlPlane) {
    if !plane.is_owned() {
        return;
    }
    let pids = plane.process_ids();
    let ports = plane.ports();
    assert_eq!(
        pids.len(),
        3,
        "pids of etcd, kube-apiserver, kube-controller-manager: {pids:?}"
    );
    assert_eq!(ports.len(), 4, "ports in endpoints.env: {ports:?}");
    let state_dir = plane.state_dir().map(ToOwned::to_owned);
    drop(plane);
    let alive: Vec<u32> = pids.into_iter().filter(|p| process_alive(*p)).collect();
    assert!(
        alive.is_empty(),
        "processes still running after drop: {alive:?}"
    );
    let open: Vec<u16> = ports.into_iter().filter(|p| port_open(*p)).collect();
    assert!(
        open.is_empty(),
        "ports still accepting connections after drop: {open:?}"
    );
    if let Some(dir) = state_dir {
        assert!(
            !dir.exists(),
            "state directory {} left behind",
            dir.display()
        );
    }
}

/// A fresh namespace (unique, so tests can share a control plane) with its default
/// ServiceAccount in place, which Pods need before they can be created.
async fn create_namespace(client: &Client) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = format!("testenv-{}-{nanos}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(json!({ "metadata": { "name": name } })).expect("Namespace JSON");
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
    wait_for(
        "the namespace's default ServiceAccount",
        DEADLINE,
        || async {
            match accounts
                .get_opt("default")
                .await
                .map_err(|e| e.to_string())?
            {
                Some(_) => Ok(()),
                None => Err("not created yet".into()),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    name
}

/// Applies the Widget CRD and waits until it is established.
async fn install_widget_crd(client: &Client) -> ApiResource {
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": format!("widgets.{GROUP}") },
        "spec": {
            "group": GROUP,
            "names": { "kind": "Widget", "plural": "widgets", "singular": "widget", "listKind": "WidgetList" },
            "scope": "Namespaced",
            "versions": [{
                "name": "v1",
                "served": true,
                "storage": true,
                "subresources": { "status": {} },
                "schema": { "openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": { "type": "object", "properties": {
                            "size": { "type": "integer", "minimum": 0 },
                        }},
                        "status": { "type": "object", "x-kubernetes-preserve-unknown-fields": true },
                    },
                }},
            }],
        },
    }))
    .expect("CRD JSON");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = crd.name_any();
    crds.patch(
        &name,
        &PatchParams::apply("p2p-mpc-testenv").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap_or_else(|e| panic!("applying CRD {name}: {e}"));
    tokio::time::timeout(
        DEADLINE,
        await_condition(crds, &name, conditions::is_crd_established()),
    )
    .await
    .unwrap_or_else(|_| panic!("CRD {name} not established within {DEADLINE:?}"))
    .unwrap_or_else(|e| panic!("waiting for CRD {name}: {e}"));
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, "v1", "Widget"), "widgets")
}
