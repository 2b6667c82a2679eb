//! The Helm chart and the raw manifests: `helm lint`, `helm template` checked by kubeconform
//! against schemas taken from the real API server (plus our CRD's), `helm install` into the
//! test control plane, and `deploy/` applied to it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Client, CustomResourceExt};
use p2p_mpc_operator::crd::MpcCluster;
use p2p_mpc_testenv::{ControlPlane, or_skip, tool, wait_for};

mod common;
use common::{DEADLINE, RunningController, cluster, install_crd, namespace, service_monitor_crd};
use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart() -> PathBuf {
    root().join("charts/p2p-mpc-operator")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Rewrites OpenAPI v2 definitions into JSON Schema as kubeconform reads it: int-or-string
/// and quantities accept strings and numbers, and objects refuse unknown fields (strict).
fn to_json_schema(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.get("format").and_then(Value::as_str) == Some("int-or-string") {
                map.clear();
                map.insert(
                    "oneOf".into(),
                    json!([{"type": "string"}, {"type": "integer"}]),
                );
                return;
            }
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), json!(false));
            }
            for (_, child) in map.iter_mut() {
                to_json_schema(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(to_json_schema),
        _ => {}
    }
}

/// One schema file per kind the API server serves, named for kubeconform's
/// `{{ .ResourceKind }}-{{ .Group }}-{{ .ResourceAPIVersion }}.json` template.
async fn write_schemas(client: &Client, dir: &Path) {
    let req = http::Request::get("/openapi/v2").body(Vec::new()).unwrap();
    let text = client.request_text(req).await.expect("GET /openapi/v2");
    let spec: Value = serde_json::from_str(&text).unwrap();
    let mut defs = spec["definitions"].clone();
    if let Some(q) = defs
        .as_object_mut()
        .unwrap()
        .get_mut("io.k8s.apimachinery.pkg.api.resource.Quantity")
    {
        *q = json!({"oneOf": [{"type": "string"}, {"type": "number"}]});
    }
    to_json_schema(&mut defs);
    for (name, def) in defs.as_object().unwrap() {
        for gvk in def["x-kubernetes-group-version-kind"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let version = gvk["version"].as_str().unwrap();
            // kubeconform's `.Group` of a core kind (`apiVersion: v1`) is the version itself.
            let group = match gvk["group"].as_str().unwrap() {
                "" => version,
                g => g,
            };
            let file = format!(
                "{}-{group}-{version}.json",
                gvk["kind"].as_str().unwrap().to_lowercase()
            );
            let schema = json!({"$ref": format!("#/definitions/{name}"), "definitions": defs});
            std::fs::write(dir.join(file), schema.to_string()).unwrap();
        }
    }
    // Our own kind, from the CRD's schema.
    let crd = MpcCluster::crd();
    let mut schema = serde_json::to_value(
        &crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema,
    )
    .unwrap();
    to_json_schema(&mut schema);
    schema["properties"]["metadata"] = json!({"type": "object"});
    schema["properties"]["apiVersion"] = json!({"type": "string"});
    schema["properties"]["kind"] = json!({"type": "string"});
    std::fs::write(
        dir.join("mpccluster-p2p-mpc.dev-v1alpha1.json"),
        schema.to_string(),
    )
    .unwrap();
}

fn kubeconform(bin: &Path, schemas: &Path, input: &[PathBuf]) -> String {
    run(Command::new(bin)
        .args(["-strict", "-summary", "-verbose", "-schema-location"])
        .arg(format!(
            "{}/{{{{ .ResourceKind }}}}-{{{{ .Group }}}}-{{{{ .ResourceAPIVersion }}}}.json",
            schemas.display()
        ))
        .args(input))
}

/// Applies every document of a multi-document YAML file (server-side apply).
async fn apply_file(client: &Client, path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(doc).unwrap();
        if value.is_null() {
            continue;
        }
        let obj: DynamicObject = serde_yaml::from_value(value).unwrap();
        let types = obj.types.clone().expect("apiVersion and kind");
        let (group, version) = types
            .api_version
            .split_once('/')
            .unwrap_or(("", &types.api_version));
        let gvk = GroupVersionKind::gvk(group, version, &types.kind);
        let (resource, caps) = kube::discovery::pinned_kind(client, &gvk)
            .await
            .unwrap_or_else(|e| panic!("{}: {} is not served: {e}", path.display(), types.kind));
        let api: Api<DynamicObject> = if caps.scope == kube::discovery::Scope::Namespaced {
            Api::namespaced_with(
                client.clone(),
                obj.metadata.namespace.as_deref().unwrap_or("default"),
                &resource,
            )
        } else {
            Api::all_with(client.clone(), &resource)
        };
        let name = obj.metadata.name.clone().unwrap();
        api.patch(
            &name,
            &PatchParams::apply("deploy-test").force(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap_or_else(|e| panic!("{}: applying {} {name}: {e}", path.display(), types.kind));
    }
}

use serde::Deserialize;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_and_manifests_lint_validate_and_install() {
    let Some(plane) = or_skip(ControlPlane::start_or_connect().await) else {
        return;
    };
    let helm = or_skip(tool("helm").await).unwrap();
    let kubeconform_bin = or_skip(tool("kubeconform").await).unwrap();
    let client = plane.client().await.unwrap_or_else(|e| panic!("{e}"));
    let work = tempfile::tempdir().unwrap();
    let helm_env = |c: &mut Command| {
        c.env("KUBECONFIG", plane.kubeconfig())
            .env("HELM_CACHE_HOME", work.path().join("helm/cache"))
            .env("HELM_CONFIG_HOME", work.path().join("helm/config"))
            .env("HELM_DATA_HOME", work.path().join("helm/data"));
    };

    let mut lint = Command::new(&helm);
    lint.args(["lint", "--strict"]).arg(chart());
    helm_env(&mut lint);
    run(&mut lint);

    // Rendered twice: defaults, and with every optional part on.
    let rendered = work.path().join("rendered.yaml");
    let mut template = Command::new(&helm);
    template
        .args([
            "template",
            "t",
            "--include-crds",
            "--namespace",
            "p2p-mpc-system",
        ])
        .arg(chart());
    helm_env(&mut template);
    let defaults = run(&mut template);
    // By default the chart, the raw manifest and the operator name the image that
    // deploy/image/build.sh builds, so a user who built it locally has what the pods ask for.
    let built = format!("localhost/p2p-mpc:{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(
        defaults.matches(&format!("\"{built}\"")).count(),
        2,
        "the operator's image and its default node image are {built}: {defaults}"
    );
    let manifest = std::fs::read_to_string(root().join("deploy/operator.yaml")).unwrap();
    assert_eq!(
        manifest.matches(&built).count(),
        2,
        "deploy/operator.yaml names {built}"
    );
    std::fs::write(&rendered, defaults).unwrap();
    let rendered_all = work.path().join("rendered-all.yaml");
    let mut template = Command::new(&helm);
    template
        .args(["template", "t", "--namespace", "p2p-mpc-system"])
        .args([
            "--set",
            "otlpEndpoint=http://jaeger:4317",
            "--set",
            "nodeSelector.disk=ssd",
            "--set",
            "logFormat=text",
            "--set",
            "image.repository=registry.example/team/p2p-mpc",
            "--set",
            "image.tag=9.9.9",
            "--set",
            "grafanaDashboard.enabled=true",
            "--set",
            "grafanaDashboard.annotations.grafana_folder=p2p-mpc",
        ])
        .arg(chart());
    helm_env(&mut template);
    let all = run(&mut template);
    // The Grafana dashboard ConfigMap carries the sidecar's label and the dashboard, as JSON
    // that parses to the file in the chart.
    assert!(
        !std::fs::read_to_string(&rendered)
            .unwrap()
            .contains("grafana_dashboard"),
        "the dashboard is off by default"
    );
    let dashboard_doc = all
        .split("\n---")
        .find(|d| d.contains("kind: ConfigMap") && d.contains("grafana_dashboard: \"1\""))
        .unwrap_or_else(|| panic!("no dashboard ConfigMap: {all}"));
    let doc: serde_yaml::Value = serde_yaml::from_str(dashboard_doc).unwrap();
    assert_eq!(doc["metadata"]["annotations"]["grafana_folder"], "p2p-mpc");
    let json: serde_json::Value =
        serde_json::from_str(doc["data"]["p2p-mpc.json"].as_str().unwrap()).unwrap();
    let file: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(chart().join("dashboards/p2p-mpc.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json, file);
    assert!(all.contains("P2P_MPC_OPERATOR_OTLP_ENDPOINT"), "{all}");
    assert_eq!(
        all.matches("\"registry.example/team/p2p-mpc:9.9.9\"")
            .count(),
        2,
        "--set image.repository/image.tag name the operator's and the nodes' image: {all}"
    );
    assert!(!all.contains("localhost/p2p-mpc"), "{all}");
    std::fs::write(&rendered_all, all).unwrap();

    // Namespaced RBAC renders valid Roles too.
    let rendered_ns = work.path().join("rendered-ns.yaml");
    let mut template = Command::new(&helm);
    template
        .args(["template", "t", "--namespace", "p2p-mpc-system"])
        .args([
            "--set",
            "rbac.scope=namespace",
            "--set",
            "watchNamespaces={team-a,team-b}",
        ])
        .arg(chart());
    helm_env(&mut template);
    std::fs::write(&rendered_ns, run(&mut template)).unwrap();

    let schemas = work.path().join("schemas");
    std::fs::create_dir_all(&schemas).unwrap();
    write_schemas(&client, &schemas).await;
    let summary = kubeconform(
        &kubeconform_bin,
        &schemas,
        &[
            rendered,
            rendered_all,
            rendered_ns,
            root().join("deploy/operator.yaml"),
            root().join("deploy/crd"),
            root().join("deploy/examples"),
        ],
    );
    assert!(summary.contains("Invalid: 0, Errors: 0"), "{summary}");
    assert!(
        !summary.contains("Valid: 0,"),
        "kubeconform validated nothing: {summary}"
    );
    // The check has teeth: a misspelt field and a wrong type are caught.
    let broken = work.path().join("broken.yaml");
    std::fs::write(
        &broken,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replica: 1\n  selector: {matchLabels: {a: b}}\n  template: {metadata: {labels: {a: b}}, spec: {containers: [{name: c, image: i}]}}\n---\napiVersion: p2p-mpc.dev/v1alpha1\nkind: MpcCluster\nmetadata: {name: y}\nspec: {replicas: many}\n",
    )
    .unwrap();
    let out = Command::new(&kubeconform_bin)
        .args(["-strict", "-summary", "-schema-location"])
        .arg(format!(
            "{}/{{{{ .ResourceKind }}}}-{{{{ .Group }}}}-{{{{ .ResourceAPIVersion }}}}.json",
            schemas.display()
        ))
        .arg(&broken)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && text.contains("Invalid: 2"),
        "{text}"
    );

    // A ServiceMonitor is rendered on request (its CRD is the Prometheus operator's).
    let mut template = Command::new(&helm);
    template
        .args([
            "template",
            "t",
            "--set",
            "serviceMonitor.enabled=true",
            "--set",
            "serviceMonitor.labels.release=kps",
        ])
        .arg(chart());
    helm_env(&mut template);
    let with_sm = run(&mut template);
    assert!(
        with_sm.contains("kind: ServiceMonitor") && with_sm.contains("release: kps"),
        "{with_sm}"
    );

    // helm install into the real API server: the CRD and the operator Deployment appear.
    let mut install = Command::new(&helm);
    install
        .args([
            "install",
            "op",
            "--namespace",
            "p2p-mpc-system",
            "--create-namespace",
            "--timeout",
            "60s",
        ])
        .arg(chart());
    helm_env(&mut install);
    let notes = run(&mut install);
    assert!(
        notes.contains("kubectl get mpc"),
        "NOTES tell what to do next: {notes}"
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "p2p-mpc-system");
    wait_for(
        "the operator Deployment",
        Duration::from_secs(60),
        || async {
            match deployments
                .get_opt("op-p2p-mpc-operator")
                .await
                .map_err(|e| e.to_string())?
            {
                Some(d) => Ok(d),
                None => Err("absent".into()),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    assert!(
        crds.get_opt("mpcclusters.p2p-mpc.dev")
            .await
            .unwrap()
            .is_some()
    );

    // The raw manifests apply too, and the examples are accepted by the CRD.
    apply_file(
        &client,
        &root().join("deploy/crd/mpcclusters.p2p-mpc.dev.yaml"),
    )
    .await;
    apply_file(&client, &root().join("deploy/operator.yaml")).await;
    for example in ["minimal.yaml", "observability.yaml"] {
        apply_file(&client, &root().join("deploy/examples").join(example)).await;
    }
    let mcs: Api<MpcCluster> = Api::namespaced(client.clone(), "default");
    assert_eq!(mcs.get("observed").await.unwrap().spec.replicas, 5);

    // The RBAC of deploy/operator.yaml is enough: a controller acting as its service account
    // reconciles a cluster, ServiceMonitor, status and events included.
    install_crd(&client, service_monitor_crd()).await;
    let as_operator = as_service_account(
        &plane,
        "system:serviceaccount:p2p-mpc-system:p2p-mpc-operator",
    )
    .await;
    let ctrl = RunningController::start(&as_operator);
    let ns = namespace(&client).await;
    let mcs: Api<MpcCluster> = Api::namespaced(client.clone(), &ns);
    mcs.create(
        &kube::api::PostParams::default(),
        &cluster(
            "rbac",
            json!({"replicas": 2, "metrics": {"serviceMonitor": {"enabled": true}}}),
        ),
    )
    .await
    .unwrap();
    reconciled_fully(&mcs, "rbac", 2, Some("ServiceMonitor")).await;
    ctrl.stop().await;
}

/// A client of the test control plane acting as `user` (e.g. a service account).
async fn as_service_account(plane: &ControlPlane, user: &str) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(plane.kubeconfig()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    config.auth_info.impersonate = Some(user.to_string());
    p2p_mpc_testenv::tls_provider();
    Client::try_from(config).unwrap()
}

/// Waits until MpcCluster `name` reports `peers` peers, is not Degraded, and (if named) has
/// condition `also` True: every child was applied with the controller's permissions.
async fn reconciled_fully(mcs: &Api<MpcCluster>, name: &str, peers: usize, also: Option<&str>) {
    wait_for(
        &format!("the operator to reconcile {name} fully"),
        DEADLINE,
        || async {
            let m = mcs.get(name).await.map_err(|e| e.to_string())?;
            let st = m.status.unwrap_or_default();
            let ok = |t: &str, s: &str| st.conditions.iter().any(|c| c.type_ == t && c.status == s);
            if st.peers.len() == peers
                && ok("Degraded", "False")
                && also.is_none_or(|t| ok(t, "True"))
            {
                Ok(())
            } else {
                Err(format!("{st:?}"))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Whether `user` (a service account) may `verb` `resource` of `group` in `namespace` (all
/// namespaces when `None`), as the API server's authorizer answers: what `kubectl auth can-i
/// --as` asks.
async fn can(
    client: &Client,
    user: &str,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
) -> bool {
    use k8s_openapi::api::authorization::v1::SubjectAccessReview;
    let sa_ns = user.split(':').nth(2).unwrap_or_default();
    let review: SubjectAccessReview = serde_json::from_value(json!({
        "spec": {
            "user": user,
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{sa_ns}"), "system:authenticated"],
            "resourceAttributes": {"verb": verb, "group": group, "resource": resource, "namespace": namespace.unwrap_or("")},
        }
    }))
    .unwrap();
    Api::<SubjectAccessReview>::all(client.clone())
        .create(&kube::api::PostParams::default(), &review)
        .await
        .unwrap_or_else(|e| panic!("SubjectAccessReview for {user}: {e}"))
        .status
        .map(|s| s.allowed)
        .unwrap_or(false)
}

/// The rules of a Role or ClusterRole, normalized for comparison.
fn rules_of(obj: &Value) -> Vec<(Vec<String>, Vec<String>, Vec<String>)> {
    let list = |v: &Value| -> Vec<String> {
        let mut l: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(String::from))
            .collect();
        l.sort();
        l
    };
    let mut rules: Vec<_> = obj["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                list(&r["apiGroups"]),
                list(&r["resources"]),
                list(&r["verbs"]),
            )
        })
        .collect();
    rules.sort();
    rules
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_is_least_privilege_cluster_wide_and_per_namespace() {
    let Some(plane) = or_skip(ControlPlane::start_or_connect().await) else {
        return;
    };
    let helm = or_skip(tool("helm").await).unwrap();
    let client = plane.client().await.unwrap_or_else(|e| panic!("{e}"));
    install_crd(&client, MpcCluster::crd()).await;
    let work = tempfile::tempdir().unwrap();
    let helm_cmd = |args: &[&str]| {
        let mut c = Command::new(&helm);
        c.args(args)
            .arg(chart())
            .env("KUBECONFIG", plane.kubeconfig())
            .env("HELM_CACHE_HOME", work.path().join("helm/cache"))
            .env("HELM_CONFIG_HOME", work.path().join("helm/config"))
            .env("HELM_DATA_HOME", work.path().join("helm/data"));
        c
    };

    // Wrong settings are refused with the reason.
    for (set, says) in [
        (
            "rbac.scope=everything",
            "rbac.scope must be cluster or namespace",
        ),
        ("watchNamespaces={a}", "use rbac.scope=namespace"),
    ] {
        let out = helm_cmd(&["template", "t", "--set", set]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{set}: {err}");
    }

    // Namespaced: Roles in the watched namespaces only, the operator told which.
    let watched = namespace(&client).await;
    let other = namespace(&client).await;
    let op_ns = namespace(&client).await;
    let set_watch = format!("watchNamespaces={{{watched}}}");
    let rendered = run(&mut helm_cmd(&[
        "template",
        "t",
        "--set",
        "rbac.scope=namespace",
        "--set",
        &set_watch,
    ]));
    assert!(!rendered.contains("kind: ClusterRole"), "{rendered}");
    assert_eq!(rendered.matches("\nkind: Role\n").count(), 1, "{rendered}");
    assert!(
        rendered.contains("P2P_MPC_OPERATOR_WATCH_NAMESPACES"),
        "{rendered}"
    );
    run(&mut helm_cmd(&[
        "install",
        "nsop",
        "--namespace",
        &op_ns,
        "--skip-crds",
        "--timeout",
        "60s",
        "--set",
        "rbac.scope=namespace",
        "--set",
        &set_watch,
    ]));
    let sa = format!("system:serviceaccount:{op_ns}:nsop-p2p-mpc-operator");
    let w = Some(watched.as_str());
    let o = Some(other.as_str());
    assert!(can(&client, &sa, "get", "", "secrets", w).await);
    assert!(can(&client, &sa, "create", "apps", "statefulsets", w).await);
    assert!(can(&client, &sa, "watch", "p2p-mpc.dev", "mpcclusters", w).await);
    assert!(
        !can(&client, &sa, "get", "", "secrets", o).await,
        "no Secret elsewhere"
    );
    assert!(!can(&client, &sa, "create", "apps", "statefulsets", o).await);
    assert!(!can(&client, &sa, "list", "p2p-mpc.dev", "mpcclusters", None).await);
    assert!(
        !can(&client, &sa, "list", "", "secrets", w).await,
        "Secrets are never listed"
    );

    // The namespaced operator's account is enough to manage a cluster in its namespace.
    let as_operator = as_service_account(&plane, &sa).await;
    let ctrl = RunningController::start_in(&as_operator, &[&watched]);
    let mcs: Api<MpcCluster> = Api::namespaced(client.clone(), &watched);
    mcs.create(
        &kube::api::PostParams::default(),
        &cluster("scoped", json!({"replicas": 2})),
    )
    .await
    .unwrap();
    reconciled_fully(&mcs, "scoped", 2, None).await;
    ctrl.stop().await;

    // Cluster-wide: the same rules in a ClusterRole, and nothing beyond them.
    run(&mut helm_cmd(&[
        "install",
        "cwop",
        "--namespace",
        &op_ns,
        "--skip-crds",
        "--timeout",
        "60s",
    ]));
    let sa = format!("system:serviceaccount:{op_ns}:cwop-p2p-mpc-operator");
    assert!(can(&client, &sa, "get", "", "secrets", o).await);
    assert!(can(&client, &sa, "list", "p2p-mpc.dev", "mpcclusters", None).await);
    for (verb, group, resource) in [
        ("list", "", "secrets"),
        ("watch", "", "secrets"),
        ("update", "", "secrets"),
        ("delete", "", "persistentvolumeclaims"),
        ("patch", "", "persistentvolumeclaims"),
        ("get", "", "pods"),
        ("create", "", "pods/exec"),
        ("list", "", "configmaps"),
        ("patch", "", "configmaps"),
        ("update", "apps", "statefulsets"),
        ("delete", "p2p-mpc.dev", "mpcclusters"),
        ("create", "rbac.authorization.k8s.io", "clusterroles"),
        ("escalate", "rbac.authorization.k8s.io", "roles"),
    ] {
        assert!(
            !can(&client, &sa, verb, group, resource, o).await,
            "the ClusterRole grants {verb} {group}/{resource}"
        );
    }
    let get = |kind: &str, name: &str, ns: Option<&str>| {
        let gvk = GroupVersionKind::gvk("rbac.authorization.k8s.io", "v1", kind);
        let ar = kube::api::ApiResource::from_gvk(&gvk);
        let api: Api<DynamicObject> = match ns {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        let name = name.to_string();
        async move { serde_json::to_value(api.get(&name).await.unwrap().data).unwrap() }
    };
    let cluster_rules = rules_of(&get("ClusterRole", "cwop-p2p-mpc-operator", None).await);
    let role_rules = rules_of(&get("Role", "nsop-p2p-mpc-operator", w).await);
    assert_eq!(
        cluster_rules, role_rules,
        "one list of rules for both scopes"
    );
    // deploy/operator.yaml grants exactly the same.
    let manifest = std::fs::read_to_string(root().join("deploy/operator.yaml")).unwrap();
    let raw_role = manifest
        .split("\n---\n")
        .map(|doc| serde_yaml::from_str::<Value>(doc).unwrap())
        .find(|v| v["kind"] == "ClusterRole")
        .expect("deploy/operator.yaml has a ClusterRole");
    assert_eq!(
        rules_of(&raw_role),
        cluster_rules,
        "deploy/operator.yaml and the chart agree"
    );
}
