//! Interop with libp2p peers written by others: go-libp2p and js-libp2p peers built with
//! their libraries' defaults (deploy/interop/go-peer and js-peer, built or installed once
//! into a cache outside the clone by deploy/interop/build.sh), which share nothing with the
//! node but its protocol ids.

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

/// A running peer of another implementation (go-peer or the js peer); killed when dropped.
struct ForeignPeer {
    child: Child,
    id: String,
}

impl Drop for ForeignPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `go-peer dht` under the protocol prefix `prefix` with `node` as its only bootnode;
/// returns once it printed its id.
fn serve_dht(bin: &str, node: &NodeProcess, prefix: &str) -> ForeignPeer {
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
    ForeignPeer { child, id }
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

/// A pubsub peer of another implementation (`go-peer pubsub` or the js peer) on a topic;
/// its output lines are collected as they come.
struct PubsubPeer {
    peer: ForeignPeer,
    what: &'static str,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for PubsubPeer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- output of the {} peer ----\n{}",
                self.what,
                self.lines.lock().unwrap().join("\n")
            );
        }
    }
}

impl PubsubPeer {
    /// `go-peer pubsub` dialing `addr`, publishing `publish` messages on `topic`.
    fn go(bin: &str, addr: &str, topic: &str, publish: usize) -> PubsubPeer {
        let mut command = Command::new(bin);
        command
            .args(["pubsub", "--bootnode", addr, "--topic", topic])
            .args(["--publish", &publish.to_string(), "--timeout", "60s"]);
        Self::start(command, "Go")
    }

    /// The js peer dialing `addr` (TCP or WebSocket), publishing `publish` messages.
    fn js(script: &str, addr: &str, topic: &str, publish: usize) -> PubsubPeer {
        let mut command = Command::new("node");
        command
            .args([script, "--bootnode", addr, "--topic", topic])
            .args(["--publish", &publish.to_string(), "--timeout", "60"]);
        Self::start(command, "js")
    }

    fn start(mut command: Command, what: &'static str) -> PubsubPeer {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("the {what} peer does not start: {e}"));
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let id = line
            .strip_prefix("peer ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("the {what} peer did not say who it is: {line:?}"))
            .to_string();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        PubsubPeer {
            peer: ForeignPeer { child, id },
            what,
            lines,
        }
    }

    /// Waits for a line of the peer's output that starts with `prefix`; returns it.
    async fn wait_line(&self, prefix: &str) -> String {
        wait_for(
            &format!("the {} peer to print {prefix:?}", self.what),
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

/// Waits until `node` delivered `count` messages on `topic` authored by `author` of which
/// the text starts with `prefix`; returns their message ids.
async fn wait_delivered(
    node: &NodeProcess,
    topic: &str,
    prefix: &str,
    count: usize,
    author: &str,
) -> Vec<String> {
    let received = "libp2p_gossipsub_topic_msg_recv_counts_unfiltered_total";
    wait_for(
        &format!("{} to deliver {count} messages {prefix:?}", node.name),
        Duration::from_secs(20),
        || async {
            let body = node.get(&format!("/v1/topics/{topic}/messages")).await?;
            let ours: Vec<&serde_json::Value> = body["messages"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| m["data"].as_str().is_some_and(|d| d.starts_with(prefix)))
                .filter(|m| m["source"] == author)
                .collect();
            if ours.len() >= count {
                Ok(ours
                    .iter()
                    .map(|m| m["message_id"].as_str().unwrap().to_string())
                    .collect())
            } else {
                let read = node.metric(received, &[("hash", topic)]).await;
                Err(format!("{body}; gossipsub read {read} messages"))
            }
        },
    )
    .await
}

/// A go-libp2p-pubsub peer with its defaults (messages signed by their author, StrictSign
/// validation, message id = author + sequence number) and the node share a topic: each
/// delivers the other's messages, under the same message ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_go_pubsub_peer_and_the_node_gossip_both_ways() {
    let bin = go_peer();
    let dir = tempdir();
    let node = NodeProcess::start("N", dir.path(), &common::args(&["-t", "chat"])).await;
    let go = PubsubPeer::go(&bin, &node.tcp_addr, "chat", 3);
    let go_id: libp2p::PeerId = go.peer.id.parse().unwrap();

    // The node delivers the Go peer's messages, with the Go peer as their author and the
    // libp2p default id: the author's peer id, then the 8-byte sequence number.
    let author = hex::encode(go_id.to_bytes());
    let ids = wait_delivered(&node, "chat", "go message ", 3, &go.peer.id).await;
    for id in ids {
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

/// The js peer (deploy/interop/js-peer), installed once by deploy/interop/build.sh.
fn js_peer() -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/interop/build.sh");
    let out = Command::new("bash")
        .args([script, "js"])
        .stderr(Stdio::inherit())
        .output()
        .expect("bash runs deploy/interop/build.sh");
    assert!(out.status.success(), "deploy/interop/build.sh js failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .expect("build.sh prints the script")
        .to_string()
}

/// Two js-libp2p peers with their defaults (gossipsub with StrictSign), one over TCP and one
/// over WebSocket, share a topic with the node: each side delivers the other's messages.
/// js-libp2p's default message id is the author's public key (not its peer id) and the
/// sequence number, so a js peer names the node's message by the node's id without the
/// 2-byte multihash header of the peer id; go's and the node's ids are the peer id's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_js_gossipsub_peers_and_the_node_gossip_both_ways_over_tcp_and_websocket() {
    let script = js_peer();
    let dir = tempdir();
    let node = NodeProcess::start(
        "N",
        dir.path(),
        &common::args(&["-t", "chat", "--ws-port", "0"]),
    )
    .await;
    let ws_addr = node.ws_addr.clone().expect("the node listens on WebSocket");
    let over_tcp = PubsubPeer::js(&script, &node.tcp_addr, "chat", 2);
    let over_ws = PubsubPeer::js(&script, &ws_addr, "chat", 2);

    // The node delivers each js peer's messages, with the js peer as their author.
    for js in [&over_tcp, &over_ws] {
        wait_delivered(&node, "chat", "js message ", 2, &js.peer.id).await;
    }

    // Each js peer receives the node's message.
    let id = node.publish_when_ready("chat", "node message").await;
    let js_id = id
        .strip_prefix("0024")
        .expect("an Ed25519 peer id starts with the identity multihash of 36 bytes");
    for js in [&over_tcp, &over_ws] {
        let line = js.wait_line(&format!("received {} ", node.peer_id)).await;
        assert_eq!(
            line,
            format!("received {} {js_id} node message", node.peer_id),
            "the js peer's view of the node's message"
        );
    }
    let metric = "libp2p_gossipsub_invalid_messages_per_topic_total";
    assert_eq!(node.metric(metric, &[("hash", "chat")]).await, 0.0);
}

/// A peer that writes gossipsub's wire format by hand sends a forgery of its next message
/// (same author and sequence number, other data), that message correctly signed, three
/// whose signature does not match their data, and a correctly signed one whose sequence
/// number lies far below the others. The signed message is delivered: the forgery sent
/// first did not take its id. The forgeries are refused by gossipsub before the node sees
/// them, never delivered or forwarded, and counted; the old number is refused by the node
/// as stale. A minute later, when gossipsub's duplicate cache has forgotten it, the peer
/// sends the signed message again: the node refuses the replay.
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
                4.0 => Ok(()),
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
    let rejected = "p2p_mpc_gossip_messages_rejected_total";
    let stale = [("topic", "chat"), ("reason", "stale")];
    wait_for(
        "the node to refuse the stale message",
        Duration::from_secs(10),
        || async {
            match node.metric(rejected, &stale).await {
                1.0 => Ok(()),
                n => Err(format!("{n}")),
            }
        },
    )
    .await;
    for n in [&node, &other] {
        let messages = n.get("/v1/topics/chat/messages").await.unwrap();
        assert!(
            !messages.to_string().contains("forge stale"),
            "a stale message reached {}: {messages}",
            n.name
        );
    }

    let out = forger.await.unwrap().expect("go-peer runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("sent 1 3") && stdout.contains("replayed"),
        "the forging peer failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replayed = [("topic", "chat"), ("reason", "replayed")];
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
