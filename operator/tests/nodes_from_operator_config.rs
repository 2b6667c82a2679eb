//! What the operator writes works: the member Secrets it produced for a 3-member cluster (on
//! the real test API server: each a key, a node config and the roster) are handed to 3 real
//! `p2p-mpc` processes, which form a mesh and exchange a gossip message.
//!
//! The pods' DNS names (`net-i-0.net-headless.<ns>.svc.cluster.local`) are resolved through a
//! hosts file inside a network namespace made for this test (`ip netns`, which bind-mounts
//! /etc/netns/<name>/hosts over /etc/hosts for the processes it runs). Each node gets its own
//! loopback address there, so all three listen on the configured port, as pods would. The only
//! per-process flags say where the files are (a pod mounts them at fixed paths), its listen
//! address, and free ports for the API and metrics, which pods would not share.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::{Client, CustomResourceExt};
use p2p_mpc_operator::crd::MpcCluster;
use p2p_mpc_testenv::{ControlPlane, RunningNode, in_ci, or_skip, wait_for};

mod common;
use common::{DEADLINE, RunningController, install_crd, namespace};
use serde_json::json;

/// The node binary of this workspace (built alongside the operator's tests).
fn node_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/p2p-mpc
    let bin = exe.parent().unwrap().parent().unwrap().join("p2p-mpc");
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "p2p-mpc-node", "--bin", "p2p-mpc"])
            .status()
            .unwrap();
        assert!(status.success(), "building p2p-mpc");
    }
    bin
}

/// A network namespace with a hosts file; removed on drop.
struct NetNs {
    name: String,
}

impl NetNs {
    fn create(hosts: &str) -> Result<Self, String> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("p2pmpc-{}-{nanos}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(|e| format!("ip: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ip netns add: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let ns = NetNs { name };
        let dir = Path::new("/etc/netns").join(&ns.name);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("hosts"), hosts).map_err(|e| e.to_string())?;
        // No DNS server in here: names come from the hosts file only.
        std::fs::write(
            dir.join("resolv.conf"),
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        )
        .map_err(|e| e.to_string())?;
        let up = Command::new("ip")
            .args(["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"])
            .output()
            .map_err(|e| e.to_string())?;
        if !up.status.success() {
            return Err(format!("lo up: {}", String::from_utf8_lossy(&up.stderr)));
        }
        Ok(ns)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&self.name));
    }
}

/// The files of each member's Secret (file name to bytes), the API token, and the namespace.
async fn operator_output(client: &Client) -> (Vec<BTreeMap<String, Vec<u8>>>, String, String) {
    install_crd(client, MpcCluster::crd()).await;
    let ns = namespace(client).await;

    let ctrl = RunningController::start(client);
    let mc: MpcCluster = serde_json::from_value(json!({
        "apiVersion": "p2p-mpc.dev/v1alpha1", "kind": "MpcCluster",
        "metadata": {"name": "net"},
        "spec": {"replicas": 3, "network": {
            "topics": ["mesh", "readings"],
            "topicRules": {"readings": {
                "contentType": "json", "maxBytes": 256,
                "schema": r#"{"type": "object", "required": ["value"]}"#
            }}
        }}
    }))
    .unwrap();
    Api::<MpcCluster>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &mc)
        .await
        .unwrap();

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let members = wait_for("the operator's member Secrets", DEADLINE, || async {
        let mut members = Vec::new();
        for i in 0..3 {
            let s = secrets
                .get_opt(&format!("net-node-{i}"))
                .await
                .map_err(|e| e.to_string())?
                .ok_or(format!("no Secret net-node-{i}"))?;
            let files: BTreeMap<String, Vec<u8>> = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            let roster = String::from_utf8_lossy(files.get("cluster-members").ok_or("no roster")?)
                .lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .count();
            if roster < 3 {
                return Err(format!("net-node-{i} lists {roster} members"));
            }
            members.push(files);
        }
        Ok(members)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let token = secrets
        .get("net-api-token")
        .await
        .unwrap()
        .data
        .unwrap()
        .remove("token")
        .expect("the API token Secret holds `token`");
    ctrl.stop().await;
    (members, String::from_utf8(token.0).unwrap(), ns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_started_from_the_operators_files_form_a_mesh() {
    let Some(plane) = or_skip(ControlPlane::start_or_connect().await) else {
        return;
    };
    let client = plane.client().await.unwrap_or_else(|e| panic!("{e}"));
    let (members, token, ns) = operator_output(&client).await;

    let hosts: String = (0..3)
        .map(|i| {
            format!(
                "127.0.0.{} net-{i}-0.net-headless.{ns}.svc.cluster.local\n",
                i + 2
            )
        })
        .collect();
    let netns = match NetNs::create(&format!("127.0.0.1 localhost\n{hosts}")) {
        Ok(n) => n,
        Err(e) if !in_ci() => {
            eprintln!(
                "\n!!! SKIPPED (not in CI): cannot make a network namespace ({e}); run as root\n"
            );
            return;
        }
        Err(e) => panic!("cannot make a network namespace: {e}"),
    };

    // Each member's files, as its pod mounts them (a directory of its own), and the token.
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("token");
    std::fs::write(&token_path, &token).unwrap();
    let mut files = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let d = dir.path().join(format!("member-{i}"));
        std::fs::create_dir_all(&d).unwrap();
        for (name, bytes) in m {
            std::fs::write(d.join(name), bytes).unwrap();
        }
        // The roster the operator wrote lists the three members' peer ids.
        let roster = p2p_mpc_node::roster::parse_members(
            &std::fs::read_to_string(d.join("cluster-members")).unwrap(),
        )
        .unwrap();
        assert_eq!(roster.len(), 3);
        files.push(d);
    }

    let bin = node_binary();
    let mut nodes = Vec::new();
    for (i, d) in files.iter().enumerate() {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &netns.name])
            .arg(&bin)
            .arg("--config")
            .arg(d.join("node.yml"))
            .arg("--identity-key-path")
            .arg(d.join("identity.key"))
            .arg("--cluster-members-file")
            .arg(d.join("cluster-members"))
            .arg("--api-token-file")
            .arg(&token_path)
            .args(["--listen-address", &format!("127.0.0.{}", i + 2)])
            .args(["--api-port", "0", "--metrics-port", "0"])
            .arg("--data-dir")
            .arg(dir.path().join(format!("data-{i}")))
            .env_remove("RUST_LOG");
        nodes.push(RunningNode::spawn(command, None).unwrap());
    }

    let peer_of = |i: usize| {
        let key =
            libp2p::identity::Keypair::from_protobuf_encoding(&members[i]["identity.key"]).unwrap();
        key.public().to_peer_id().to_string()
    };
    let dump = |nodes: &Vec<RunningNode>| {
        nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("---- net-{i} ----\n{}", n.stderr_lines().join("\n")))
            .collect::<Vec<_>>()
            .join("\n")
    };

    // Every node connects to every other: 1 and 2 through their bootnodes, 1 and 2 to each
    // other through Kademlia.
    wait_for("a full mesh of 3", DEADLINE, || async {
        for (i, n) in nodes.iter().enumerate() {
            let log = n.stderr_lines().join("\n");
            for j in 0..3 {
                if j != i && !log.contains(&format!("connection_established{{peer={}", peer_of(j)))
                {
                    return Err(format!("net-{i} not yet connected to net-{j}"));
                }
            }
        }
        Ok(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", dump(&nodes)));

    // net-2 types a message; net-0 and net-1 print it. It is typed again until it arrives:
    // until the gossip mesh has formed, the node answers "no peer subscribed" on stderr.
    let text = "hello from the operator's config";
    let expected = format!("[mesh] {}: {text}", peer_of(2));
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        nodes[2].type_line(text).unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let arrived = |n: &RunningNode| n.stdout_lines().iter().any(|l| l == &expected);
        if arrived(&nodes[0]) && arrived(&nodes[1]) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "net-0 and net-1 did not print {expected:?} within {DEADLINE:?}\n{}",
            dump(&nodes)
        );
    }

    // The API the operator's config turns on is closed: 401 without the token, 200 with it.
    // (The API listens inside the namespace, so requests go there too.)
    let log = nodes[0].stderr_lines().join("\n");
    let api = log
        .lines()
        .find(|l| l.contains("HTTP API listening"))
        .and_then(|l| l.split("addr=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no API address in the log:\n{log}"))
        .to_string();
    let curl = |auth: Option<&str>| {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &netns.name,
            "curl",
            "-s",
            "-o",
            "/dev/null",
        ])
        .args(["-w", "%{http_code}"]);
        if let Some(token) = auth {
            cmd.args(["-H", &format!("Authorization: Bearer {token}")]);
        }
        let out = cmd.arg(format!("http://{api}/v1/status")).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl(None), "401", "no token");
    assert_eq!(curl(Some("wrong")), "401", "a wrong token");
    assert_eq!(curl(Some(&token)), "200", "the operator's token");

    // The topic rule of the spec is in force on the node, with its schema.
    let out = Command::new("ip")
        .args(["netns", "exec", &netns.name, "curl", "-s"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("http://{api}/v1/topics"))
        .output()
        .unwrap();
    let topics: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let readings = topics["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == "readings")
        .unwrap_or_else(|| panic!("{topics}"))
        .clone();
    assert_eq!(readings["content_type"], "json", "{topics}");
    assert_eq!(readings["max_bytes"], 256, "{topics}");
    assert_eq!(readings["schema"]["required"][0], "value", "{topics}");
    drop(nodes);
    drop(netns);
}
