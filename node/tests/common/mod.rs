//! Shared helpers of the node's multi-process tests: start real `p2p-mpc` processes on
//! loopback, read their ports back from their logs, talk to their API, poll with deadlines.
#![allow(dead_code)]

pub mod devnet;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use p2p_mpc_testenv::{Expect, RunningNode};
use serde_json::Value;

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_p2p-mpc")
}

/// Polls `f` until it returns `Some`, or panics after `timeout` naming `what` and the last
/// value seen.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match f().await {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A running node process; killed when dropped.
pub struct NodeProcess {
    pub name: String,
    process: RunningNode,
    pub api: String,
    pub metrics: String,
    pub peer_id: String,
    /// The TCP listen address (with /p2p/).
    pub tcp_addr: String,
    /// The WebSocket listen address, when one was asked for.
    pub ws_addr: Option<String>,
    /// The QUIC listen address, when one was asked for (`--quic-port`).
    pub quic_addr: Option<String>,
    pub http: reqwest::Client,
}

/// Arguments every test node gets: loopback only, free ports.
pub fn base_args() -> Vec<String> {
    p2p_mpc_testenv::loopback_args()
}

impl NodeProcess {
    /// Starts a node with `base_args()` plus `extra`, in `dir` (its working directory), and
    /// waits until its API, metrics server and libp2p listener are up.
    pub async fn start(name: &str, dir: &Path, extra: &[String]) -> NodeProcess {
        Self::start_with_env(name, dir, extra, &[]).await
    }

    /// Like [`start`](Self::start), with extra environment variables.
    pub async fn start_with_env(
        name: &str,
        dir: &Path,
        extra: &[String],
        env: &[(&str, &str)],
    ) -> NodeProcess {
        let mut args = Vec::new();
        let base = base_args();
        for pair in base.chunks(2) {
            if !extra.contains(&pair[0]) {
                args.extend(pair.iter().cloned());
            }
        }
        args.extend(extra.iter().cloned());
        args.push("--data-dir".into());
        args.push(dir.join(format!("data-{name}")).display().to_string());
        let mut command = Command::new(bin());
        command
            .args(&args)
            .current_dir(dir)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied());
        let mut process = RunningNode::spawn(command, None).expect("spawn p2p-mpc");
        let expect = Expect {
            metrics: true,
            ws: extra.iter().any(|a| a == "--ws-port"),
            quic: extra.iter().any(|a| a == "--quic-port"),
        };
        let listening = process
            .wait_listening(Duration::from_secs(30), expect)
            .await
            .unwrap_or_else(|e| panic!("node {name}: {e}"));
        NodeProcess {
            name: name.to_string(),
            process,
            api: listening.api,
            metrics: listening.metrics.unwrap_or_default(),
            peer_id: listening.peer_id,
            tcp_addr: listening.tcp_addr,
            ws_addr: listening.ws_addr,
            quic_addr: listening.quic_addr,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.process.stderr_lines()
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.process.stdout_lines()
    }

    /// Types a line on the node's stdin.
    pub fn type_line(&mut self, line: &str) {
        self.process.type_line(line).expect("stdin open");
    }

    pub async fn get(&self, path: &str) -> Result<Value, String> {
        let resp = self
            .http
            .get(format!("{}{path}", self.api))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let body: Value = resp.json().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {body}"));
        }
        Ok(body)
    }

    /// `POST /v1/topics/{topic}/messages`; returns (status, body).
    pub async fn publish(&self, topic: &str, text: &str) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}/v1/topics/{topic}/messages", self.api))
            .json(&serde_json::json!({ "data": text }))
            .send()
            .await
            .expect("API answers");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Publishes, retrying while no peer is subscribed yet (meshes form in a heartbeat or two).
    pub async fn publish_when_ready(&self, topic: &str, text: &str) -> String {
        wait_for(
            &format!("{} to publish on {topic}", self.name),
            Duration::from_secs(20),
            || async {
                match self.publish(topic, text).await {
                    (201, body) => Ok(body["message_id"].as_str().unwrap().to_string()),
                    (status, body) => Err(format!("{status} {body}")),
                }
            },
        )
        .await
    }

    pub async fn connected_peer_ids(&self) -> Result<Vec<String>, String> {
        let peers = self.get("/v1/peers").await?;
        Ok(peers["peers"]
            .as_array()
            .ok_or("no peers array")?
            .iter()
            .map(|p| p["peer_id"].as_str().unwrap_or("").to_string())
            .collect())
    }

    /// Waits until `other` is connected and has identified itself (so the node knows which
    /// protocols it speaks, MPC among them).
    pub async fn wait_connected_to(&self, other: &str, timeout: Duration) {
        wait_for(
            &format!("{} to be connected to {other}", self.name),
            timeout,
            || async {
                let peers = self.get("/v1/peers").await?;
                let identified = peers["peers"].as_array().is_some_and(|list| {
                    list.iter()
                        .any(|p| p["peer_id"] == other && p["agent_version"].is_string())
                });
                if identified {
                    Ok(())
                } else {
                    Err(peers.to_string())
                }
            },
        )
        .await
    }

    /// Waits until a message with `text` on `topic` is in the node's API buffer; returns it.
    pub async fn wait_message(&self, topic: &str, text: &str) -> Value {
        wait_for(
            &format!("{} to receive {text:?} on {topic}", self.name),
            Duration::from_secs(20),
            || async {
                let body = self.get(&format!("/v1/topics/{topic}/messages")).await?;
                body["messages"]
                    .as_array()
                    .and_then(|m| m.iter().find(|m| m["data"] == text).cloned())
                    .ok_or_else(|| body.to_string())
            },
        )
        .await
    }

    pub async fn metrics_page(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.metrics))
            .send()
            .await
            .expect("metrics answer")
            .text()
            .await
            .unwrap()
    }

    /// The sum of metric `name`'s samples with these labels on the node's metrics page.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        p2p_mpc_testenv::metric_sum(&self.metrics_page().await, name, labels)
    }

    /// Sends SIGTERM and waits for the exit status (at most `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.process.terminate(timeout)
    }

    /// Kills the process at once (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Resident memory in bytes.
    pub fn rss_bytes(&self) -> u64 {
        self.process
            .rss_bytes()
            .expect("VmRSS in /proc/<pid>/status")
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.process.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- stderr of node {} ----\n{}",
                self.name,
                self.stderr_lines().join("\n")
            );
        }
    }
}

/// The names of the files directly in `dir` that end with `suffix` (none if `dir` is missing).
pub fn files_ending(dir: &Path, suffix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(suffix))
                .collect()
        })
        .unwrap_or_default()
}

/// A temporary directory for one test.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Owned strings from string slices, for node arguments.
pub fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Starts node A on topic `chat` (plus `extra_a`) and node B with A as its bootnode, and
/// waits until B is connected to A.
pub async fn start_pair(dir: &Path, extra_a: &[&str]) -> (NodeProcess, NodeProcess) {
    let mut a_args = args(&["-t", "chat"]);
    a_args.extend(args(extra_a));
    let a = NodeProcess::start("A", dir, &a_args).await;
    let b = NodeProcess::start("B", dir, &args(&["-t", "chat", "--bootnode", &a.tcp_addr])).await;
    b.wait_connected_to(&a.peer_id, Duration::from_secs(20))
        .await;
    (a, b)
}

/// Verifies a signature of the key `key` (its key info: `scheme`, `public_key`,
/// `internal_key`) with implementations that share no code with ours: ed25519-dalek and
/// Python's `cryptography` for `ed25519`; libsecp256k1 (Python `coincurve`, BIP340) for
/// `secp256k1-tr`, which also checks that the BIP341 tweak of `internal_key`, computed here,
/// is `public_key`.
pub fn verify_everywhere(key: &Value, message: &[u8], signature_hex: &str) {
    let public_key = key["public_key"]
        .as_str()
        .expect("key info has a public key");
    match key["scheme"].as_str() {
        Some("ed25519") => verify_ed25519(public_key, message, signature_hex),
        Some("secp256k1-tr") => {
            let internal = key["internal_key"]
                .as_str()
                .expect("a secp256k1-tr key shows its internal key");
            verify_bip340(public_key, internal, message, signature_hex)
        }
        other => panic!("key of unknown scheme {other:?}: {key}"),
    }
}

/// Verifies many Ed25519 signatures under one key: each with ed25519-dalek (strict), and
/// all of them with Python's `cryptography` in one run (a file of `message signature` hex
/// lines).
pub fn verify_ed25519_many(public_key_hex: &str, signed: &[(Vec<u8>, String)]) {
    use ed25519_dalek::Verifier;
    let pk: [u8; 32] = hex::decode(public_key_hex).unwrap().try_into().unwrap();
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&pk).expect("valid public key");
    let dir = tempdir();
    let file = dir.path().join("signed.txt");
    let mut lines = String::new();
    for (message, signature_hex) in signed {
        let sig: [u8; 64] = hex::decode(signature_hex).unwrap().try_into().unwrap();
        let sig = ed25519_dalek::Signature::from_bytes(&sig);
        vk.verify(message, &sig).expect("ed25519-dalek accepts");
        vk.verify_strict(message, &sig)
            .expect("ed25519-dalek strict verification accepts");
        lines.push_str(&format!("{} {signature_hex}\n", hex::encode(message)));
    }
    std::fs::write(&file, lines).unwrap();
    // A raw string: the loop body's indentation is Python syntax.
    let script = format!(
        r#"import sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
k = Ed25519PublicKey.from_public_bytes(bytes.fromhex(sys.argv[1]))
n = 0
for line in open(sys.argv[2]):
    m, s = line.split()
    k.verify(bytes.fromhex(s), bytes.fromhex(m))
    n += 1
if n != {}: sys.exit('read %d signatures' % n)
print('ok')"#,
        signed.len()
    );
    run_python_check(
        "cryptography",
        &script,
        &[public_key_hex, file.to_str().unwrap()],
    );
}

/// Verifies with ed25519-dalek and with Python's `cryptography`.
fn verify_ed25519(public_key_hex: &str, message: &[u8], signature_hex: &str) {
    use ed25519_dalek::Verifier;
    let pk: [u8; 32] = hex::decode(public_key_hex).unwrap().try_into().unwrap();
    let sig: [u8; 64] = hex::decode(signature_hex).unwrap().try_into().unwrap();
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&pk).expect("valid public key");
    vk.verify(message, &ed25519_dalek::Signature::from_bytes(&sig))
        .expect("ed25519-dalek accepts the signature");
    vk.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&sig))
        .expect("ed25519-dalek strict verification accepts the signature");

    let script = "import sys\n\
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey\n\
Ed25519PublicKey.from_public_bytes(bytes.fromhex(sys.argv[1])).verify(bytes.fromhex(sys.argv[3]), bytes.fromhex(sys.argv[2]))\n\
print('ok')";
    run_python_check(
        "cryptography",
        script,
        &[public_key_hex, &hex::encode(message), signature_hex],
    );
}

/// Verifies a BIP340 signature under the x-only `public_key_hex` with libsecp256k1 and
/// checks that `public_key_hex` is the BIP341 output key of `internal_hex` with no script
/// path: Q = P + int(tagged_hash("TapTweak", P))·G.
fn verify_bip340(public_key_hex: &str, internal_hex: &str, message: &[u8], signature_hex: &str) {
    assert_eq!(hex::decode(public_key_hex).unwrap().len(), 32, "x-only Q");
    assert_eq!(hex::decode(internal_hex).unwrap().len(), 32, "x-only P");
    assert_eq!(
        hex::decode(signature_hex).unwrap().len(),
        64,
        "BIP340 signature"
    );
    let script = "import sys, hashlib\n\
from coincurve import PublicKeyXOnly\n\
q, p, m, s = (bytes.fromhex(a) for a in sys.argv[1:5])\n\
if not PublicKeyXOnly(q).verify(s, m): sys.exit('the BIP340 signature does not verify')\n\
tag = hashlib.sha256(b'TapTweak').digest()\n\
t = hashlib.sha256(tag + tag + p).digest()\n\
tweaked = PublicKeyXOnly(p)\n\
tweaked.tweak_add(t)\n\
if tweaked.format() != q: sys.exit('public_key is not the BIP341 tweak of internal_key')\n\
print('ok')";
    run_python_check(
        "coincurve",
        script,
        &[
            public_key_hex,
            internal_hex,
            &hex::encode(message),
            signature_hex,
        ],
    );
}

/// Runs a Python check that prints `ok`; without python3 or `module`, CI fails and a local
/// run says loudly that it skipped the check.
fn run_python_check(module: &str, script: &str, args: &[&str]) {
    let available = std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        if p2p_mpc_testenv::in_ci() {
            panic!(
                "python3 with `{module}` is needed to verify signatures (CI installs it in .ci/run)"
            );
        }
        eprintln!(
            "!!!! SKIPPING the Python `{module}` check: python3 or the module is missing !!!!"
        );
        return;
    }
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "Python `{module}` rejects the signature: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// POSTs `body` as JSON to `node`'s API; returns the status and the JSON answer (`Null`
/// when the answer is not JSON). Slow operations (a DKG, a collect) get two minutes.
pub async fn post(node: &NodeProcess, path: &str, body: impl serde::Serialize) -> (u16, Value) {
    let resp = node
        .http
        .post(format!("{}{path}", node.api))
        .timeout(Duration::from_secs(120))
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{} answers {path}: {e}", node.name));
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A new identity key written to `<dir>/<name>.key`: its path and its peer id.
pub fn identity(dir: &Path, name: &str) -> (String, libp2p::PeerId) {
    let key = p2p_mpc_node::identity::generate();
    let path = dir.join(format!("{name}.key"));
    p2p_mpc_node::identity::write_new_keypair(&path, &key).unwrap();
    (path.display().to_string(), key.public().to_peer_id())
}

/// A peer run in this test process on the node library's own network service, dialing
/// `victim` (a `/ip4/…/p2p/…` address): it can send what an honest node never would.
pub async fn library_peer(
    key: libp2p::identity::Keypair,
    victim: &str,
    topics: &[&str],
    max_message_size: usize,
) -> p2p_mpc_node::network::NetworkClient {
    p2p_mpc_node::network::dial_peer(key, victim, topics, max_message_size)
        .await
        .expect("the library peer starts")
}
