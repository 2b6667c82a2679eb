//! The test node (`up.sh --with-node`): pods really run under a kubelet, find Services
//! through the cluster DNS and reach the API server through the `kubernetes` Service; the
//! API server reaches the kubelet for logs; no address of the node's ranges leaves the
//! machine; and after the handle drops nothing of it is left.
//!
//! With `P2P_MPC_TEST_IMAGE` (an archive from `deploy/image/build.sh --archive`, or an image
//! reference in podman's storage; CI sets it) the project's own image runs on the node too.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, LogParams, PostParams};
use p2p_mpc_testenv::{ControlPlane, NODE_NAME, in_ci, or_skip, process_alive, wait_for};
use serde_json::json;

/// Generous for a loaded 2-core machine; pods usually run within seconds.
const DEADLINE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_runs_pods_serves_dns_and_services_and_keeps_traffic_on_the_machine() {
    let Some(plane) = or_skip(ControlPlane::start_with_node().await) else {
        return;
    };
    assert!(plane.has_node());
    let client = plane.client().await.unwrap_or_else(|e| panic!("{e}"));
    let state = plane
        .state_dir()
        .expect("an owned control plane")
        .to_path_buf();

    // The kubelet registered the node and it is Ready (runtime and CNI network up).
    let nodes: Api<Node> = Api::all(client.clone());
    wait_for("the test node to be Ready", DEADLINE, || async {
        let node = nodes.get(NODE_NAME).await.map_err(|e| e.to_string())?;
        let ready = node
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if ready {
            Ok(())
        } else {
            Err("not Ready".to_string())
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    // Nothing of the node's address ranges leaves the machine: an unused Service address
    // and a pod address beyond the node's subnet have no route (blackhole), while the
    // node's own subnet is on the bridge; pods may not forward beyond the bridge.
    for unused in ["10.0.0.200", "10.244.9.9"] {
        let (ok, out) = run("ip", &["route", "get", unused]);
        assert!(
            !ok && out.contains("Invalid argument"),
            "`ip route get {unused}` should fail on the blackhole route, it said: {out}"
        );
    }
    let blackholes = run("ip", &["-4", "route", "show", "type", "blackhole"]).1;
    for range in ["10.0.0.0/24", "10.244.0.0/16"] {
        assert!(
            blackholes.contains(range),
            "no blackhole route for {range}: {blackholes}"
        );
    }
    let (ok, out) = run("ip", &["route", "get", "10.244.0.200"]);
    assert!(
        ok && out.contains("dev p2pmpc0"),
        "the node's subnet is not on its bridge: {out}"
    );
    assert!(
        run("iptables", &["-C", "FORWARD", "-j", "P2P-MPC-TESTENV"]).0,
        "the chain that keeps pod traffic on the machine is not hooked into FORWARD"
    );

    // A pod: cluster DNS answers for the `kubernetes` Service, kube-proxy takes the Service
    // address to the API server (which answers a plain HTTP request on its TLS port with
    // 400), and a name outside the cluster gets no answer (nothing is forwarded upstream).
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let script = "nslookup kubernetes.default.svc.cluster.local; \
                  wget -q -O - http://kubernetes.default.svc:443/ 2>&1; \
                  if nslookup example.com >/dev/null 2>&1; then echo upstream-answered; \
                  else echo upstream-refused; fi";
    let logs =
        run_to_completion(&pods, "probe", "localhost/testenv-tools:testenv", &[script]).await;
    assert!(
        logs.contains("Address: 10.0.0.1"),
        "cluster DNS did not resolve kubernetes.default.svc.cluster.local to 10.0.0.1:\n{logs}"
    );
    assert!(
        logs.contains("400 Bad Request"),
        "the `kubernetes` Service did not lead to the API server:\n{logs}"
    );
    assert!(
        logs.contains("upstream-refused") && !logs.contains("upstream-answered"),
        "cluster DNS answered a name outside the cluster:\n{logs}"
    );

    // The project's image, loaded with load-image.sh, runs on the node.
    match std::env::var("P2P_MPC_TEST_IMAGE") {
        Ok(image) => {
            let reference = plane
                .load_image(&image)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let logs = run_to_completion(&pods, "version", &reference, &["--version"]).await;
            let expected = format!("p2p-mpc {}", env!("CARGO_PKG_VERSION"));
            assert_eq!(
                logs.trim(),
                expected,
                "the image's node binary says something else"
            );
        }
        Err(_) if in_ci() => panic!(
            "P2P_MPC_TEST_IMAGE is not set: in CI the project's image must run on the test node \
             (.ci/run builds it and sets the variable)"
        ),
        Err(_) => eprintln!(
            "SKIPPED (not in CI): the project's image on the node; set P2P_MPC_TEST_IMAGE to an \
             archive of deploy/image/build.sh --archive or an image reference"
        ),
    }

    // Dropping the handle stops every component and undoes the node, also with a pod still
    // running (its container, network namespace and volumes must go too).
    create_pod(
        &pods,
        "sleeper",
        "localhost/testenv-tools:testenv",
        &["sleep 3600"],
    )
    .await;
    wait_for("pod sleeper to run", DEADLINE, || async {
        let pod = pods.get("sleeper").await.map_err(|e| e.to_string())?;
        match pod.status.and_then(|s| s.phase).as_deref() {
            Some("Running") => Ok(()),
            other => Err(format!("phase {other:?}")),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let pids = plane.process_ids();
    assert_eq!(
        pids.len(),
        8,
        "expected 8 component processes, got {pids:?}"
    );
    drop(plane);
    for pid in pids {
        assert!(!process_alive(pid), "process {pid} still runs after drop");
    }
    assert!(!state.exists(), "{} still exists", state.display());
    assert!(
        !run("ip", &["link", "show", "p2pmpc0"]).0,
        "the bridge is still there"
    );
    let blackholes = run("ip", &["-4", "route", "show", "type", "blackhole"]).1;
    assert!(
        !blackholes.contains("10.0.0.0/24") && !blackholes.contains("10.244.0.0/16"),
        "blackhole routes left behind: {blackholes}"
    );
    assert!(
        !run("iptables", &["-nL", "P2P-MPC-TESTENV"]).0,
        "the iptables chain is still there"
    );
    let nat = run("iptables", &["-t", "nat", "-S"]).1;
    assert!(
        !nat.contains("KUBE-"),
        "kube-proxy's rules are still there:\n{nat}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let state_str = state.to_string_lossy();
    assert!(
        !mounts.lines().any(|l| l.contains(state_str.as_ref())),
        "mounts under {state_str} left behind"
    );
    assert!(
        !Path::new("/run/p2p-mpc-testenv-node").exists(),
        "the node's owner file is still there"
    );
    let cni_results: Vec<_> = std::fs::read_dir("/var/lib/cni/results")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !cni_results
            .iter()
            .any(|f| f.starts_with("p2p-mpc-testenv-")),
        "CNI results of the node's pods left behind: {cni_results:?}"
    );
    let ps = run("ps", &["-eo", "args"]).1;
    assert!(
        !ps.contains("sleep 3600"),
        "the running pod's process survived:\n{ps}"
    );
}

/// Runs a one-container pod to completion and returns its logs, read through the API
/// server (which reaches the kubelet for them).
async fn run_to_completion(pods: &Api<Pod>, name: &str, image: &str, args: &[&str]) -> String {
    create_pod(pods, name, image, args).await;
    let phase = wait_for(&format!("pod {name} to finish"), DEADLINE, || async {
        let pod = pods.get(name).await.map_err(|e| e.to_string())?;
        let status = pod.status.unwrap_or_default();
        match status.phase.as_deref() {
            Some(phase @ ("Succeeded" | "Failed")) => Ok(phase.to_string()),
            other => Err(format!(
                "phase {other:?}, containers {:?}",
                status
                    .container_statuses
                    .map(|s| s.into_iter().map(|c| c.state).collect::<Vec<_>>())
            )),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let logs = pods
        .logs(name, &LogParams::default())
        .await
        .unwrap_or_else(|e| panic!("logs of pod {name} through the API server: {e}"));
    assert_eq!(phase, "Succeeded", "pod {name} failed; its logs:\n{logs}");
    logs
}

/// Creates a one-container pod of a loaded image, never restarted.
async fn create_pod(pods: &Api<Pod>, name: &str, image: &str, args: &[&str]) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": false,
            "containers": [{
                "name": name,
                "image": image,
                "imagePullPolicy": "Never",
                "args": args,
            }],
        },
    }))
    .expect("a valid Pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("creating pod {name}: {e}"));
}

/// Runs a command; (exit status success, stdout and stderr together).
fn run(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}
