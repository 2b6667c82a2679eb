//! Shared helpers of the node's multi-process tests: start real `p2p-mpc` processes on
//! loopback, read their ports back from their logs, talk to their API, poll with deadlines.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    child: Child,
    stdin: Option<ChildStdin>,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
    pub api: String,
    pub metrics: String,
    pub peer_id: String,
    /// The TCP listen address (with /p2p/).
    pub tcp_addr: String,
    /// The WebSocket listen address, when one was asked for.
    pub ws_addr: Option<String>,
    pub http: reqwest::Client,
}

fn collect(reader: impl std::io::Read + Send + 'static, sink: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
}

/// Arguments every test node gets: loopback only, free ports.
pub fn base_args() -> Vec<String> {
    [
        "--listen-address",
        "127.0.0.1",
        "--network-port",
        "0",
        "--api-port",
        "0",
        "--metrics-port",
        "0",
        "--metrics-address",
        "127.0.0.1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
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
        let mut child = Command::new(bin())
            .args(&args)
            .current_dir(dir)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn p2p-mpc");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        collect(child.stderr.take().unwrap(), stderr.clone());
        collect(child.stdout.take().unwrap(), stdout.clone());
        let stdin = child.stdin.take();
        let mut node = NodeProcess {
            name: name.to_string(),
            child,
            stdin,
            stderr,
            stdout,
            api: String::new(),
            metrics: String::new(),
            peer_id: String::new(),
            tcp_addr: String::new(),
            ws_addr: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        };
        let wants_ws = extra.iter().any(|a| a == "--ws-port");
        let (api, metrics, tcp, ws) = wait_for(
            &format!("node {name} to start"),
            Duration::from_secs(30),
            || {
                let lines = node.stderr_lines();
                let exited = node.child.try_wait().ok().flatten();
                async move {
                    if let Some(status) = exited {
                        panic!("node exited early with {status}:\n{}", lines.join("\n"));
                    }
                    let find = |key: &str, field: &str| {
                        lines.iter().find_map(|l| {
                            if !l.contains(key) {
                                return None;
                            }
                            let start = l.find(field)? + field.len();
                            Some(l[start..].split_whitespace().next()?.to_string())
                        })
                    };
                    let api = find("HTTP API listening", "addr=");
                    let metrics = find("metrics listening", "addr=");
                    let tcp = lines
                        .iter()
                        .filter(|l| l.contains(" listening address="))
                        .filter_map(|l| l.split("address=").nth(1))
                        .map(|a| a.split_whitespace().next().unwrap_or("").to_string())
                        .find(|a| !a.contains("/ws"));
                    let ws = lines
                        .iter()
                        .filter(|l| l.contains(" listening address="))
                        .filter_map(|l| l.split("address=").nth(1))
                        .map(|a| a.split_whitespace().next().unwrap_or("").to_string())
                        .find(|a| a.contains("/ws"));
                    match (api, metrics, tcp) {
                        (Some(a), Some(m), Some(t)) if !wants_ws || ws.is_some() => {
                            Ok((a, m, t, ws))
                        }
                        _ => Err(lines.last().cloned().unwrap_or_default()),
                    }
                }
            },
        )
        .await;
        node.api = format!("http://{api}");
        node.metrics = format!("http://{metrics}");
        node.peer_id = tcp.rsplit('/').next().unwrap().to_string();
        node.tcp_addr = tcp;
        node.ws_addr = ws;
        node
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Types a line on the node's stdin.
    pub fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
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

    /// Waits until `other` is connected.
    pub async fn wait_connected_to(&self, other: &str, timeout: Duration) {
        wait_for(
            &format!("{} to be connected to {other}", self.name),
            timeout,
            || async {
                let peers = self.connected_peer_ids().await?;
                if peers.iter().any(|p| p == other) {
                    Ok(())
                } else {
                    Err(format!("{peers:?}"))
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

    /// Sends SIGTERM and waits for the exit status (at most `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe {
            libc_kill(self.child.id() as i32, 15);
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Kills the process at once (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- stderr of node {} ----\n{}",
                self.name,
                self.stderr_lines().join("\n")
            );
        }
    }
}

/// A temporary directory for one test.
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

/// Verifies with ed25519-dalek and with Python's `cryptography`.
pub fn verify_everywhere(public_key_hex: &str, message: &[u8], signature_hex: &str) {
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
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            public_key_hex,
            &hex::encode(message),
            signature_hex,
        ])
        .output();
    let available = std::process::Command::new("python3")
        .args(["-c", "import cryptography"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        if p2p_mpc_testenv::in_ci() {
            panic!(
                "python3 with `cryptography` is needed to verify signatures (CI installs it in .ci/run)"
            );
        }
        eprintln!(
            "!!!! SKIPPING the Python `cryptography` check: python3 or the module is missing !!!!"
        );
        return;
    }
    let out = out.expect("python3 runs");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "Python cryptography rejects the signature: {}",
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
