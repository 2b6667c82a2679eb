//! Interop with libp2p peers written by others: go-libp2p peers built with the library's
//! defaults (deploy/interop/go-peer, built once into a cache outside the clone by
//! deploy/interop/build.sh), which share nothing with the node but its protocol ids.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
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

/// `go-peer pubsub` on `topic`, publishing `publish` messages; its output lines are
/// collected as they come.
struct GoPubsub {
    peer: GoPeer,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for GoPubsub {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- output of the Go peer ----\n{}",
                self.lines.lock().unwrap().join("\n")
            );
        }
    }
}

impl GoPubsub {
    fn start(bin: &str, node: &NodeProcess, topic: &str, publish: usize) -> GoPubsub {
        let mut child = Command::new(bin)
            .args(["pubsub", "--bootnode", &node.tcp_addr, "--topic", topic])
            .args(["--publish", &publish.to_string(), "--timeout", "60s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("go-peer starts");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let id = line
            .strip_prefix("peer ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("go-peer did not say who it is: {line:?}"))
            .to_string();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        GoPubsub {
            peer: GoPeer { child, id },
            lines,
        }
    }

    /// Waits for a line of the Go peer's output that starts with `prefix`; returns it.
    async fn wait_line(&self, prefix: &str) -> String {
        wait_for(
            &format!("the Go peer to print {prefix:?}"),
            Duration::from_secs(20),
            || async {
                let lines = self.lines.lock().unwrap();
                lines
                    .iter()
                    .find(|l| l.starts_with(prefix))
                    .cloned()
                    .ok_or_else(|| format!("{lines:?}"))
            },
        )
        .await
    }
}

/// A go-libp2p-pubsub peer with its defaults (messages signed by their author, StrictSign
/// validation, message id = author + sequence number) and the node share a topic: each
/// delivers the other's messages, under the same message ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_go_pubsub_peer_and_the_node_gossip_both_ways() {
    let bin = go_peer();
    let dir = tempdir();
    let node = NodeProcess::start("N", dir.path(), &common::args(&["-t", "chat"])).await;
    let go = GoPubsub::start(&bin, &node, "chat", 3);
    let go_id: libp2p::PeerId = go.peer.id.parse().unwrap();

    // The node delivers the Go peer's messages, with the Go peer as their author and the
    // libp2p default id: the author's peer id, then the 8-byte sequence number.
    let author = hex::encode(go_id.to_bytes());
    let received = "libp2p_gossipsub_topic_msg_recv_counts_unfiltered_total";
    wait_for(
        "the node to deliver the Go peer's three messages",
        Duration::from_secs(20),
        || async {
            let body = node.get("/v1/topics/chat/messages").await?;
            let count = body["messages"].as_array().map_or(0, Vec::len);
            if count >= 3 {
                Ok(())
            } else {
                let read = node.metric(received, &[("hash", "chat")]).await;
                Err(format!("{body}; gossipsub read {read} messages"))
            }
        },
    )
    .await;
    for i in 0..3 {
        let m = node.wait_message("chat", &format!("go message {i}")).await;
        assert_eq!(m["source"], go.peer.id.as_str(), "{m}");
        let id = m["message_id"].as_str().unwrap();
        assert!(
            id.len() == author.len() + 16 && id.starts_with(&author),
            "message id {id} is not the author ({author}) and a sequence number"
        );
    }

    // The Go peer receives the node's message, under the id the node gave it.
    let id = node.publish_when_ready("chat", "node message").await;
    let line = go.wait_line(&format!("received {} ", node.peer_id)).await;
    assert_eq!(
        line,
        format!("received {} {id} node message", node.peer_id),
        "the Go peer's view of the node's message"
    );
    let metric = "libp2p_gossipsub_invalid_messages_per_topic_total";
    assert_eq!(node.metric(metric, &[("hash", "chat")]).await, 0.0);
}

/// A peer that writes gossipsub's wire format by hand sends one correctly signed message and
/// three whose signature does not match their data: the first is delivered, the others are
/// refused by gossipsub before the node sees them, never delivered or forwarded, and counted.
/// A minute later, when gossipsub's duplicate cache has forgotten it, it sends the signed
/// message again: the node remembers it and refuses the replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_replayed_gossip_is_refused_and_counted() {
    let bin = go_peer();
    let dir = tempdir();
    let node = NodeProcess::start("N", dir.path(), &common::args(&["-t", "chat"])).await;
    // A second node on the topic: a forwarded forgery would reach it.
    let other = NodeProcess::start(
        "O",
        dir.path(),
        &common::args(&["-t", "chat", "--bootnode", &node.tcp_addr]),
    )
    .await;
    other
        .wait_connected_to(&node.peer_id, Duration::from_secs(20))
        .await;
    let metric = "libp2p_gossipsub_invalid_messages_per_topic_total";
    assert_eq!(node.metric(metric, &[("hash", "chat")]).await, 0.0);

    let args: Vec<String> = ["forge", "--bootnode", &node.tcp_addr, "--topic", "chat"]
        .into_iter()
        .chain(["--count", "3", "--replay-after", "65s"])
        .map(String::from)
        .collect();
    let forger = tokio::task::spawn_blocking(move || Command::new(bin).args(args).output());

    // The signed message went through: the hand-written frames are well formed.
    node.wait_message("chat", "forge valid").await;
    other.wait_message("chat", "forge valid").await;
    wait_for(
        "gossipsub to count the forged messages",
        Duration::from_secs(10),
        || async {
            match node.metric(metric, &[("hash", "chat")]).await {
                3.0 => Ok(()),
                n => Err(format!("{n}")),
            }
        },
    )
    .await;
    for n in [&node, &other] {
        let messages = n.get("/v1/topics/chat/messages").await.unwrap();
        assert!(
            !messages.to_string().to_lowercase().contains("forge bad"),
            "a forged message reached {}: {messages}",
            n.name
        );
    }
    assert_eq!(other.metric(metric, &[("hash", "chat")]).await, 0.0);

    let out = forger.await.unwrap().expect("go-peer runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("sent 1 3") && stdout.contains("replayed"),
        "the forging peer failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replayed = [("topic", "chat"), ("reason", "replayed")];
    let rejected = "p2p_mpc_gossip_messages_rejected_total";
    wait_for(
        "the node to refuse the replay",
        Duration::from_secs(10),
        || async {
            match node.metric(rejected, &replayed).await {
                1.0 => Ok(()),
                n => Err(format!("{n}")),
            }
        },
    )
    .await;
    for n in [&node, &other] {
        let messages = n.get("/v1/topics/chat/messages").await.unwrap();
        let copies = messages.to_string().matches("forge valid").count();
        assert_eq!(copies, 1, "{}: {messages}", n.name);
    }
    assert_eq!(other.metric(rejected, &[("topic", "chat")]).await, 0.0);
}
