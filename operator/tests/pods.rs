//! End to end under a real kubelet (the test node of `deploy/testenv/up.sh --with-node`):
//! the project's image (`P2P_MPC_TEST_IMAGE`, built by `deploy/image/build.sh`; CI sets it)
//! loaded into the node, the chart installed with helm (the operator runs as a pod and
//! reaches the API server through the `kubernetes` Service), an MpcCluster of 3 applied:
//! every pod Running and Ready, every node connected to the other two through the
//! bootnodes' DNS names, a DKG and a signature through the API of a pod (port-forward) with
//! the token from the operator's Secret, and refused without it; the signature verified
//! with Python's `cryptography`. Then: a real Prometheus finds the node pods through the
//! metrics Service's label and port (what the ServiceMonitor selects) and scrapes them; the
//! operator's and the nodes' spans arrive in Jaeger; `kubectl logs` shows a node's start-up
//! line; scaling to 4 and back to 3 keeps every peer id and every node's roster follows, and
//! a key whose policy lets the roster move it follows the members (the operator reshares it
//! to the 4, then to the 3 before the fourth pod goes; the same group key signs each time);
//! a deleted pod comes back with its peer id and key share and signs again.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use p2p_mpc_operator::crd::MpcCluster;
use p2p_mpc_testenv::{ControlPlane, Jaeger, NODE_IP, Prometheus, in_ci, or_skip, tool, wait_for};
use serde_json::{Value, json};

mod common;

/// Pods start within seconds here; a loaded 2-core machine gets a wide margin.
const DEADLINE: Duration = Duration::from_secs(240);
const OPERATOR_NS: &str = "p2p-mpc-system";
const NS: &str = "e2e";
const CLUSTER: &str = "demo";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mpc_cluster_of_real_pods_forms_its_network_and_signs() {
    let Some(plane) = or_skip(ControlPlane::start_with_node().await) else {
        return;
    };
    let image = match std::env::var("P2P_MPC_TEST_IMAGE") {
        Ok(image) => image,
        Err(_) if in_ci() => panic!(
            "P2P_MPC_TEST_IMAGE is not set: in CI the operator's pods must run from the \
             project's image (.ci/run builds it and sets the variable)"
        ),
        Err(_) => {
            eprintln!(
                "SKIPPED (not in CI): set P2P_MPC_TEST_IMAGE to an archive of \
                 deploy/image/build.sh --archive, or to an image reference"
            );
            return;
        }
    };
    let reference = plane
        .load_image(&image)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (repository, tag) = reference
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("image reference {reference} has no tag"));
    let client = plane.client().await.unwrap_or_else(|e| panic!("{e}"));
    let kubeconfig = plane.kubeconfig().to_path_buf();
    let kubectl = tool("kubectl").await.unwrap_or_else(|e| panic!("{e}"));

    // Jaeger receiving OTLP on the node's address, where pods reach this machine.
    let jaeger = Jaeger::start_receiving_on(NODE_IP.into())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let otlp = jaeger.otlp_grpc_address();

    // The chart, with the operator as a pod of the image.
    let helm = tool("helm").await.unwrap_or_else(|e| panic!("{e}"));
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/p2p-mpc-operator");
    let out = Command::new(&helm)
        .args(["install", "p2p-mpc-operator"])
        .arg(&chart)
        .args([
            "--namespace",
            OPERATOR_NS,
            "--create-namespace",
            "--kubeconfig",
        ])
        .arg(&kubeconfig)
        .args(["--set", &format!("image.repository={repository}")])
        .args(["--set", &format!("image.tag={tag}")])
        .args(["--set", "logFormat=text"])
        .args(["--set", &format!("otlpEndpoint=http://{otlp}")])
        .output()
        .expect("running helm");
    assert!(
        out.status.success(),
        "helm install failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), OPERATOR_NS);
    let operator_pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NS);
    let ready = wait_for("the operator's pod to be Ready", DEADLINE, || async {
        let d = deployments
            .get("p2p-mpc-operator")
            .await
            .map_err(|e| e.to_string())?;
        match d.status.and_then(|s| s.ready_replicas) {
            Some(1) => Ok(()),
            other => Err(format!("ready replicas {other:?}")),
        }
    })
    .await;
    if let Err(e) = ready {
        panic!("{e}\n{}", pod_report(&operator_pods).await);
    }
    // The chart installed the CRD; the operator (in its pod) watches MpcClusters.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    tokio::time::timeout(
        DEADLINE,
        await_condition(
            crds,
            "mpcclusters.p2p-mpc.dev",
            conditions::is_crd_established(),
        ),
    )
    .await
    .expect("the chart's CRD is established")
    .expect("watching the CRD");

    // An MpcCluster of 3.
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .expect("creating the namespace");
    let clusters: Api<MpcCluster> = Api::namespaced(client.clone(), NS);
    clusters
        .create(
            &PostParams::default(),
            &common::cluster(
                CLUSTER,
                json!({
                    "replicas": 3,
                    "logLevel": "info",
                    "tracing": {"jaeger": {"enabled": true, "host": otlp.ip().to_string(), "port": otlp.port()}},
                }),
            ),
        )
        .await
        .expect("creating the MpcCluster");
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    wait_members_ready(&clusters, &pods, &operator_pods, 3).await;

    // The API token the operator made.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let token_secret = secrets
        .get(&format!("{CLUSTER}-api-token"))
        .await
        .expect("the API token Secret");
    let token = token_secret
        .data
        .and_then(|d| d.get("token").cloned())
        .map(|b| String::from_utf8(b.0).expect("a text token"))
        .expect("a token in the Secret");
    let token = token.trim().to_string();

    // Each node's API through a port-forward (the API server reaches the kubelet for it).
    let forward = |i: usize| {
        let pod = format!("{CLUSTER}-{i}-0");
        PortForward::start(&kubectl, &kubeconfig, NS, &pod, 8080)
    };
    let mut forwards: Vec<PortForward> = (0..3).map(forward).collect();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();

    // Without the token: refused.
    let resp = http
        .get(format!("{}/v1/status", forwards[0].url()))
        .send()
        .await
        .expect("GET /v1/status");
    assert_eq!(resp.status(), 401, "the API answered without the token");

    // Every node is in the roster and connected to the other two, which it found through
    // the bootnodes' DNS names (member i dials members 0..i-1; the rest dial it).
    let mut peer_ids = Vec::new();
    for (i, forward) in forwards.iter().enumerate() {
        let status = wait_roster(&http, &token, forward, i, 3).await;
        peer_ids.push(status["peer_id"].as_str().expect("peer_id").to_string());
    }

    // A DKG among the three pods, then a signature.
    let key: Value = api_post(
        &http,
        &token,
        &format!("{}/v1/keys", forwards[0].url()),
        json!({"threshold": 2, "policy": {"open": true}}),
    )
    .await;
    let key_id = key["key_id"].as_str().expect("key_id").to_string();
    let public_key = key["public_key"].as_str().expect("public_key").to_string();
    assert_eq!(
        key["participants"].as_array().map(Vec::len),
        Some(3),
        "the key's holders are not the three members: {key}"
    );
    let signing = Signing {
        http: &http,
        token: &token,
        key_id: &key_id,
        public_key: &public_key,
    };
    signing
        .sign_and_verify(&forwards[1], b"signed by three pods under a real kubelet")
        .await;
    // A second key that follows the members: the operator reshares it when the cluster
    // scales (its policy lets the roster move it).
    let roster_key: Value = api_post(
        &http,
        &token,
        &format!("{}/v1/keys", forwards[2].url()),
        json!({"threshold": 2, "policy": {"open": true, "reshare": "roster"}}),
    )
    .await;
    let roster_key_id = roster_key["key_id"].as_str().expect("key_id").to_string();
    let roster_public = roster_key["public_key"]
        .as_str()
        .expect("public_key")
        .to_string();
    let follows = Signing {
        http: &http,
        token: &token,
        key_id: &roster_key_id,
        public_key: &roster_public,
    };

    // `kubectl logs` of a node pod shows its start-up line.
    let out = Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["-n", NS, "logs", &format!("{CLUSTER}-0-0")])
        .output()
        .expect("running kubectl logs");
    let logs = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && logs.contains("node started") && logs.contains(&peer_ids[0]),
        "kubectl logs shows no start-up line with the peer id: {logs}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A real Prometheus finds the node pods as the ServiceMonitor does (Services labelled
    // p2p-mpc.dev/service=metrics, port `metrics`) and scrapes each of them.
    let prometheus = Prometheus::start(&node_scrape_config(&kubeconfig))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for("Prometheus scraping the 3 node pods", DEADLINE, || async {
        let up = prometheus
            .query("up{job=\"p2p-mpc-nodes\"} == 1")
            .await
            .map_err(|e| e.to_string())?;
        let mut scraped: Vec<String> = up
            .iter()
            .filter_map(|s| s["metric"]["pod"].as_str().map(String::from))
            .collect();
        scraped.sort();
        let expected: Vec<String> = (0..3).map(|i| format!("{CLUSTER}-{i}-0")).collect();
        if scraped == expected {
            Ok(())
        } else {
            Err(format!("targets up: {scraped:?}"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // What it scraped includes the sessions just run (the DKG and the signature).
    wait_for(
        "the nodes' completed MPC sessions in Prometheus",
        DEADLINE,
        || async {
            let completed = prometheus
                .query("sum(p2p_mpc_mpc_sessions_completed_total{job=\"p2p-mpc-nodes\"}) > 0")
                .await
                .map_err(|e| e.to_string())?;
            if completed.is_empty() {
                Err("no completed session counted".to_string())
            } else {
                Ok(())
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    // The operator's spans (from its pod) and the nodes' spans arrive in Jaeger.
    wait_for(
        "spans of the operator and of the nodes in Jaeger",
        DEADLINE,
        || async {
            let services = jaeger.services().await.map_err(|e| e.to_string())?;
            if services.iter().any(|s| s == "p2p-mpc-operator")
                && services.iter().any(|s| s == "p2p-mpc")
            {
                Ok(())
            } else {
                Err(format!("services {services:?}"))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    // Scale to 4: the new member joins, every roster has 4, nobody's peer id changes.
    scale(&clusters, 4).await;
    wait_members_ready(&clusters, &pods, &operator_pods, 4).await;
    forwards.push(forward(3));
    for (i, forward) in forwards.iter().enumerate() {
        let status = wait_roster(&http, &token, forward, i, 4).await;
        if i < 3 {
            assert_eq!(
                status["peer_id"],
                peer_ids[i].as_str(),
                "member {i} changed its peer id"
            );
        } else {
            peer_ids.push(status["peer_id"].as_str().expect("peer_id").to_string());
        }
    }
    // The roster key moved to the four members, same group key; the new member signs.
    for (i, forward) in forwards.iter().enumerate() {
        wait_key_holders(&http, &token, forward, i, &roster_key_id, 1, &peer_ids).await;
    }
    wait_key_status(&clusters, &roster_key_id, 1, 4).await;
    follows
        .sign_and_verify(&forwards[3], b"signed with the new member after a scale-up")
        .await;
    // And back to 3: the fourth pod goes, the other rosters shrink again.
    scale(&clusters, 3).await;
    drop(forwards.pop());
    wait_for("the fourth member's pod to be gone", DEADLINE, || async {
        match pods.get_opt(&format!("{CLUSTER}-3-0")).await {
            Ok(None) => Ok(()),
            Ok(Some(_)) => Err("still there".to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // The pod went only after the roster key had left it: by now the members hold the next
    // generation already (asked once, not waited for).
    let now = get_json(
        &http,
        &token,
        &format!("{}/v1/keys/{roster_key_id}", forwards[0].url()),
    )
    .await
    .unwrap_or_else(|e| panic!("GET the roster key on member 0: {e}"));
    assert_eq!(
        now["generation"], 2,
        "the fourth member's pod was removed before the roster key moved off it: {now}"
    );
    wait_members_ready(&clusters, &pods, &operator_pods, 3).await;
    for (i, forward) in forwards.iter().enumerate() {
        let status = wait_roster(&http, &token, forward, i, 3).await;
        assert_eq!(
            status["peer_id"],
            peer_ids[i].as_str(),
            "member {i} changed its peer id"
        );
    }
    // The fourth pod went only after the roster key left it: the three hold generation 2.
    peer_ids.truncate(3);
    for (i, forward) in forwards.iter().enumerate() {
        wait_key_holders(&http, &token, forward, i, &roster_key_id, 2, &peer_ids).await;
    }
    wait_key_status(&clusters, &roster_key_id, 2, 3).await;
    follows
        .sign_and_verify(&forwards[0], b"signed by the three after a scale-down")
        .await;

    // A deleted pod comes back with its peer id and its key share, and signs again.
    let victim = format!("{CLUSTER}-1-0");
    let old_uid = pods
        .get(&victim)
        .await
        .expect("member 1's pod")
        .metadata
        .uid;
    pods.delete(&victim, &DeleteParams::default())
        .await
        .expect("deleting member 1's pod");
    wait_for("member 1's pod to come back Ready", DEADLINE, || async {
        let pod = pods.get(&victim).await.map_err(|e| e.to_string())?;
        if pod.metadata.uid != old_uid && pod_ready(&pod) {
            Ok(())
        } else {
            Err("the old pod, or the new one not Ready yet".to_string())
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    forwards[1] = forward(1);
    let status = wait_roster(&http, &token, &forwards[1], 1, 3).await;
    assert_eq!(
        status["peer_id"],
        peer_ids[1].as_str(),
        "member 1 came back with another peer id"
    );
    let key_there = http
        .get(format!("{}/v1/keys/{key_id}", forwards[1].url()))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET the key on member 1");
    assert_eq!(key_there.status(), 200, "member 1 lost its key share");
    signing
        .sign_and_verify(&forwards[1], b"signed again after a pod was replaced")
        .await;

    drop(forwards);
    drop(plane);
}

/// Waits until the MpcCluster reports `n` ready members and `n` of its pods are Ready;
/// panics with every pod's state and logs (and the operator's) otherwise.
async fn wait_members_ready(
    clusters: &Api<MpcCluster>,
    pods: &Api<Pod>,
    operator_pods: &Api<Pod>,
    n: i32,
) {
    let ready = wait_for(
        &format!("{n} member pods Running and Ready"),
        DEADLINE,
        || async {
            let cluster = clusters.get(CLUSTER).await.map_err(|e| e.to_string())?;
            let ready = cluster.status.as_ref().map(|s| s.ready_replicas);
            let list = pods
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let ready_pods = list.items.iter().filter(|p| pod_ready(p)).count();
            if ready == Some(n) && ready_pods == n as usize {
                Ok(())
            } else {
                Err(format!(
                    "status.readyReplicas {ready:?}, {ready_pods} pods Ready"
                ))
            }
        },
    )
    .await;
    if let Err(e) = ready {
        panic!(
            "{e}\n{}\noperator:\n{}",
            pod_report(pods).await,
            pod_report(operator_pods).await
        );
    }
}

/// Waits until member `i` holds generation `generation` of `key_id`, held by exactly
/// `holders`.
async fn wait_key_holders(
    http: &reqwest::Client,
    token: &str,
    forward: &PortForward,
    i: usize,
    key_id: &str,
    generation: u64,
    holders: &[String],
) {
    let url = format!("{}/v1/keys/{key_id}", forward.url());
    let mut expected = holders.to_vec();
    expected.sort();
    wait_for(
        &format!("member {i} to hold generation {generation} of key {key_id}"),
        DEADLINE,
        || async {
            let key = get_json(http, token, &url).await?;
            let mut participants: Vec<String> = key["participants"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_str().map(String::from))
                .collect();
            participants.sort();
            if key["generation"] == generation && participants == expected {
                Ok(())
            } else {
                Err(format!("key {key}"))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Waits until the MpcCluster's status shows `key_id` at `generation` with `holders`.
async fn wait_key_status(
    clusters: &Api<MpcCluster>,
    key_id: &str,
    generation: u64,
    holders: usize,
) {
    wait_for(
        &format!("status.keys to show {key_id} at generation {generation}"),
        DEADLINE,
        || async {
            let cluster = clusters.get(CLUSTER).await.map_err(|e| e.to_string())?;
            let keys = cluster.status.map(|s| s.keys).unwrap_or_default();
            let shown = keys.iter().find(|k| k.key_id == key_id);
            match shown {
                Some(k)
                    if k.generation == generation
                        && k.holders == holders
                        && k.reshare == "roster" =>
                {
                    Ok(())
                }
                _ => Err(format!("status.keys {keys:?}")),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Waits until member `i` (through its port-forward) is in a roster of `size` and connected
/// to the `size - 1` others; returns its status.
async fn wait_roster(
    http: &reqwest::Client,
    token: &str,
    forward: &PortForward,
    i: usize,
    size: u64,
) -> Value {
    let url = format!("{}/v1/status", forward.url());
    wait_for(
        &format!("member {i} in a roster of {size}, connected to the others"),
        DEADLINE,
        || async {
            let status = get_json(http, token, &url).await?;
            let connected = status["connected_peers"].as_u64().unwrap_or(0);
            let roster = &status["roster"];
            if connected + 1 >= size && roster["size"] == size && roster["member"] == true {
                Ok(status)
            } else {
                Err(format!("status {status}"))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

async fn scale(clusters: &Api<MpcCluster>, replicas: i32) {
    clusters
        .patch(
            CLUSTER,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await
        .unwrap_or_else(|e| panic!("scaling to {replicas}: {e}"));
}

/// Prometheus' scrape job for the node pods, found the way the chart's ServiceMonitor
/// finds them: endpoints of Services labelled `p2p-mpc.dev/service: metrics`, port
/// `metrics`, discovered from the API server with the test's kubeconfig.
fn node_scrape_config(kubeconfig: &Path) -> String {
    format!(
        "- job_name: p2p-mpc-nodes
  scrape_interval: 1s
  kubernetes_sd_configs:
  - role: endpoints
    kubeconfig_file: {}
    namespaces:
      names: [{NS}]
  relabel_configs:
  - source_labels: [__meta_kubernetes_service_label_p2p_mpc_dev_service]
    regex: metrics
    action: keep
  - source_labels: [__meta_kubernetes_endpoint_port_name]
    regex: metrics
    action: keep
  - source_labels: [__meta_kubernetes_pod_name]
    target_label: pod
",
        kubeconfig.display()
    )
}

/// Signs through one member's API and checks the signature independently.
struct Signing<'a> {
    http: &'a reqwest::Client,
    token: &'a str,
    key_id: &'a str,
    public_key: &'a str,
}

impl Signing<'_> {
    async fn sign_and_verify(&self, through: &PortForward, message: &[u8]) {
        let message: String = message.iter().map(|b| format!("{b:02x}")).collect();
        let signed: Value = api_post(
            self.http,
            self.token,
            &format!("{}/v1/keys/{}/sign", through.url(), self.key_id),
            json!({"message": message}),
        )
        .await;
        let signature = signed["signature"].as_str().expect("a signature");
        verify_ed25519(self.public_key, signature, &message);
    }
}

/// GET with the token, the answer as JSON.
async fn get_json(http: &reqwest::Client, token: &str, url: &str) -> Result<Value, String> {
    http.get(url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())
}

/// POST with the token; panics with the body unless the answer is a success.
async fn api_post(http: &reqwest::Client, token: &str, url: &str, body: Value) -> Value {
    let resp = http
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    assert!(status.is_success(), "POST {url} answered {status}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {url}: {e}: {text}"))
}

/// Checks an Ed25519 signature with an implementation independent of ours.
fn verify_ed25519(public_key: &str, signature: &str, message: &str) {
    let script = "import sys\n\
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey\n\
        k = Ed25519PublicKey.from_public_bytes(bytes.fromhex(sys.argv[1]))\n\
        k.verify(bytes.fromhex(sys.argv[2]), bytes.fromhex(sys.argv[3]))\n\
        print('valid')\n";
    let out = Command::new("python3")
        .args(["-c", script, public_key, signature, message])
        .output()
        .expect("running python3");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "valid",
        "Python's cryptography rejects the signature: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Each pod's phase, container states and the end of its logs, for a failure message.
async fn pod_report(pods: &Api<Pod>) -> String {
    let mut report = String::new();
    let Ok(list) = pods.list(&ListParams::default()).await else {
        return "(pods could not be listed)".into();
    };
    for pod in list.items {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let status = pod.status.clone().unwrap_or_default();
        report.push_str(&format!(
            "--- pod {name}: phase {:?}, containers {:?}\n",
            status.phase,
            status
                .container_statuses
                .unwrap_or_default()
                .into_iter()
                .map(|c| (c.ready, c.restart_count, c.state))
                .collect::<Vec<_>>()
        ));
        let logs = pods
            .logs(
                &name,
                &LogParams {
                    tail_lines: Some(30),
                    ..LogParams::default()
                },
            )
            .await
            .unwrap_or_else(|e| format!("(no logs: {e})"));
        report.push_str(&logs);
    }
    report
}

/// `kubectl port-forward` to a pod's port on a free local port; stopped on drop.
struct PortForward {
    child: Child,
    local_port: u16,
}

impl PortForward {
    fn start(kubectl: &Path, kubeconfig: &Path, namespace: &str, pod: &str, port: u16) -> Self {
        let mut child = Command::new(kubectl)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["-n", namespace, "port-forward", &format!("pod/{pod}")])
            .arg(format!(":{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("running {}: {e}", kubectl.display()));
        // "Forwarding from 127.0.0.1:41234 -> 8080"
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let local_port = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:")
                        && let Some((p, _)) = rest.split_once(' ')
                    {
                        break p.parse().expect("a port number");
                    }
                }
                _ => {
                    let _ = child.kill();
                    panic!("kubectl port-forward to {pod} ended without forwarding");
                }
            }
        };
        // Keep reading its output, so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, local_port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.local_port)
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
