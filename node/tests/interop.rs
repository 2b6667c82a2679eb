//! Interop with libp2p peers written by others: go-libp2p peers built with the library's
//! defaults (deploy/interop/go-peer, built once into a cache outside the clone by
//! deploy/interop/build.sh), which share nothing with the node but its protocol ids.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{NodeProcess, tempdir, wait_for};

/// The go-peer binary, built (or found in its cache) by deploy/interop/build.sh.
fn go_peer() -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/interop/build.sh");
    let out = Command::new("bash")
        .arg(script)
        .stderr(Stdio::inherit())
        .output()
        .expect("bash runs deploy/interop/build.sh");
    assert!(out.status.success(), "deploy/interop/build.sh failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .expect("build.sh prints the binary")
        .to_string()
}

/// A running go-peer; killed when dropped.
struct GoPeer {
    child: Child,
    id: String,
}

impl Drop for GoPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `go-peer dht` under the protocol prefix `prefix` with `node` as its only bootnode;
/// returns once it printed its id.
fn serve_dht(bin: &str, node: &NodeProcess, prefix: &str) -> GoPeer {
    let mut child = Command::new(bin)
        .args(["dht", "--bootnode", &node.tcp_addr, "--prefix", prefix])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("go-peer starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let id = line
        .strip_prefix("peer ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("go-peer did not say who it is: {line:?}"))
        .to_string();
    GoPeer { child, id }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_go_dht_peers_find_each_other_through_a_node() {
    let bin = go_peer();
    let dir = tempdir();
    let node = NodeProcess::start("N", dir.path(), &[]).await;

    // A go-kad-dht peer with go-libp2p's default identify (no protocol version) joins through
    // the node; the node routes to it because it speaks the node's Kademlia protocol.
    let a = serve_dht(&bin, &node, "/p2p-mpc");
    // One of another network (another Kademlia protocol id), connected to the node as well.
    let other = serve_dht(&bin, &node, "/other");
    wait_identified(&node, &a.id).await;
    wait_identified(&node, &other.id).await;

    // A second one, with the node as its only bootnode, finds the first through the DHT...
    let out = find(&bin, &node, &a.id, "20s").await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("found {}", a.id)),
        "the second Go peer did not find the first through the node:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ...and not the peer of the other network, which the node keeps out of its routing.
    let out = find(&bin, &node, &other.id, "4s").await;
    assert!(
        !out.status.success(),
        "a peer of another network was routed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Waits until `node` has identified the peer `id` (its agent version is known).
async fn wait_identified(node: &NodeProcess, id: &str) {
    wait_for(
        "the node to identify the Go peer",
        Duration::from_secs(20),
        || async {
            let peers = node.get("/v1/peers").await?;
            let agent = peers["peers"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["peer_id"] == id)
                .map(|p| p["agent_version"].clone());
            match agent {
                Some(v) if v.is_string() => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

/// Runs `go-peer dht --find target` with `node` as its only bootnode.
async fn find(bin: &str, node: &NodeProcess, target: &str, timeout: &str) -> std::process::Output {
    let args: Vec<String> = [
        "dht",
        "--bootnode",
        &node.tcp_addr,
        "--find",
        target,
        "--timeout",
        timeout,
    ]
    .map(String::from)
    .to_vec();
    let bin = bin.to_string();
    tokio::task::spawn_blocking(move || Command::new(bin).args(args).output())
        .await
        .unwrap()
        .expect("go-peer runs")
}

/// A go-libp2p-pubsub peer with its defaults signs its messages (StrictSign). The node runs
/// gossipsub without author signatures (its own signed envelope is inside the payload), so
/// gossipsub refuses those messages before the node sees them: they are never delivered, and
/// gossipsub's own metrics, registered in the node's registry, count them per topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_of_a_default_go_pubsub_peer_is_refused_by_gossipsub_and_counted() {
    let bin = go_peer();
    let dir = tempdir();
    let node = NodeProcess::start("N", dir.path(), &common::args(&["-t", "chat"])).await;
    let metric = "libp2p_gossipsub_invalid_messages_per_topic_total";
    assert_eq!(node.metric(metric, &[("hash", "chat")]).await, 0.0);

    let args: Vec<String> = [
        "pubsub",
        "--bootnode",
        &node.tcp_addr,
        "--topic",
        "chat",
        "--publish",
        "3",
        "--timeout",
        "6s",
    ]
    .map(String::from)
    .to_vec();
    let out = tokio::task::spawn_blocking(move || Command::new(bin).args(args).output())
        .await
        .unwrap()
        .expect("go-peer runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("published go message 2"),
        "the Go peer did not publish:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "gossipsub to count the Go peer's messages",
        Duration::from_secs(10),
        || async {
            let n = node.metric(metric, &[("hash", "chat")]).await;
            if n >= 3.0 {
                Ok(())
            } else {
                Err(format!("{n}"))
            }
        },
    )
    .await;
    let messages = node.get("/v1/topics/chat/messages").await.unwrap();
    assert!(
        !messages.to_string().contains("go message"),
        "a message gossipsub refused reached the node: {messages}"
    );
}
