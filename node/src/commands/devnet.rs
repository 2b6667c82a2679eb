//! `p2p-mpc devnet`: N real node processes on loopback, meshed, with a demo DKG and signature
//! and a demo secure sum.
//!
//! Each node is this same binary started as a child process with free ports; node `i` gets
//! nodes `0..i` as bootnodes, so the mesh is complete from the start. Their logs go to
//! `<dir>/node-<i>.log`. Ctrl-C stops them all (SIGTERM, then SIGKILL after a grace period).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::mpc::scheme::Scheme;
use serde_json::{Value, json};

use crate::api::client::{ApiClient, ClientError};

/// How long the devnet waits for nodes to start and to mesh.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// What `p2p-mpc devnet` was asked for.
#[derive(Debug, Clone)]
pub struct DevnetSettings {
    pub nodes: u16,
    pub threshold: Option<u16>,
    pub dir: Option<PathBuf>,
}

/// A failure of the devnet.
#[derive(Debug, thiserror::Error)]
pub enum DevnetError {
    #[error("devnet: {0}")]
    Setup(String),
    #[error("devnet: node {node} {message} (its log: {log})")]
    Node {
        node: usize,
        message: String,
        log: String,
    },
    #[error("devnet demo: {0}")]
    Demo(String),
}

struct DevnetNode {
    index: usize,
    child: Child,
    log: PathBuf,
    /// What the node printed so far (for addresses).
    lines: Arc<Mutex<Vec<String>>>,
    api: String,
    peer_id: String,
    tcp_addr: String,
}

impl Drop for DevnetNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

fn terminate(nodes: &mut [DevnetNode]) {
    for n in nodes.iter() {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe {
            libc_kill(n.child.id() as i32, 15);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for n in nodes.iter_mut() {
        while Instant::now() < deadline {
            if let Ok(Some(_)) = n.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn field_after(line: &str, key: &str) -> Option<String> {
    let start = line.find(key)? + key.len();
    Some(line[start..].split_whitespace().next()?.to_string())
}

/// Makes (or reuses) every node's identity key and writes their peer ids to a members file,
/// so that each node admits only its devnet peers.
fn write_roster(dir: &std::path::Path, n: usize) -> Result<std::path::PathBuf, DevnetError> {
    let mut text = String::from("# p2p-mpc devnet cluster roster: one peer id a line\n");
    for i in 0..n {
        let data = dir.join(format!("node-{i}"));
        std::fs::create_dir_all(&data)
            .map_err(|e| DevnetError::Setup(format!("cannot create {}: {e}", data.display())))?;
        let (key, _) = crate::identity::load_or_create(Some(&data.join("identity.key")))
            .map_err(|e| DevnetError::Setup(e.to_string()))?;
        text.push_str(&key.public().to_peer_id().to_string());
        text.push('\n');
    }
    let path = dir.join("cluster-members");
    std::fs::write(&path, text)
        .map_err(|e| DevnetError::Setup(format!("cannot write {}: {e}", path.display())))?;
    Ok(path)
}

/// The gossip topic every devnet node joins.
const DEVNET_TOPIC: &str = "devnet";

fn spawn_node(
    index: usize,
    dir: &std::path::Path,
    bootnodes: &[String],
    roster: &std::path::Path,
) -> Result<DevnetNode, DevnetError> {
    let exe = std::env::current_exe()
        .map_err(|e| DevnetError::Setup(format!("cannot find this program's path: {e}")))?;
    let data = dir.join(format!("node-{index}"));
    let log = dir.join(format!("node-{index}.log"));
    let mut cmd = Command::new(exe);
    cmd.args([
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
        "--log-level",
        "info",
        "--topic",
        DEVNET_TOPIC,
    ])
    .arg("--data-dir")
    .arg(&data)
    .arg("--identity-key-path")
    .arg(data.join("identity.key"))
    .arg("--cluster-members-file")
    .arg(roster);
    for b in bootnodes {
        cmd.arg("--bootnode").arg(b);
    }
    let mut child = cmd
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| DevnetError::Setup(format!("cannot start node {index}: {e}")))?;
    let lines = Arc::new(Mutex::new(Vec::new()));
    let mut file = std::fs::File::create(&log)
        .map_err(|e| DevnetError::Setup(format!("cannot create {}: {e}", log.display())))?;
    if let Some(stderr) = child.stderr.take() {
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(file, "{line}");
                let mut l = sink.lock().unwrap_or_else(|e| e.into_inner());
                // Only the start-up lines are needed; keep memory bounded.
                if l.len() < 200 {
                    l.push(line);
                }
            }
        });
    }
    Ok(DevnetNode {
        index,
        child,
        log,
        lines,
        api: String::new(),
        peer_id: String::new(),
        tcp_addr: String::new(),
    })
}

async fn wait_started(node: &mut DevnetNode) -> Result<(), DevnetError> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = node.child.try_wait() {
            return Err(DevnetError::Node {
                node: node.index,
                message: format!("exited at start with {status}"),
                log: node.log.display().to_string(),
            });
        }
        let (api, tcp) = {
            let lines = node.lines.lock().unwrap_or_else(|e| e.into_inner());
            let api = lines
                .iter()
                .find(|l| l.contains("HTTP API listening"))
                .and_then(|l| field_after(l, "addr="));
            let tcp = lines
                .iter()
                .filter(|l| l.contains(" listening address="))
                .filter_map(|l| field_after(l, "address="))
                .find(|a| a.contains("/tcp/") && !a.contains("/ws"));
            (api, tcp)
        };
        if let (Some(api), Some(tcp)) = (api, tcp) {
            node.api = format!("http://{api}");
            node.peer_id = tcp.rsplit('/').next().unwrap_or_default().to_string();
            node.tcp_addr = tcp;
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(DevnetError::Node {
                node: node.index,
                message: format!("did not report its addresses within {START_TIMEOUT:?}"),
                log: node.log.display().to_string(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn client(node: &DevnetNode) -> Result<ApiClient, DevnetError> {
    ApiClient::new(&node.api, None, None).map_err(|e| DevnetError::Setup(e.to_string()))
}

/// Runs the devnet until `stop` resolves.
pub async fn run(
    settings: DevnetSettings,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), DevnetError> {
    let n = usize::from(settings.nodes);
    let threshold = settings.threshold.unwrap_or(settings.nodes / 2 + 1).max(2);
    if threshold > settings.nodes {
        return Err(DevnetError::Setup(format!(
            "--threshold {threshold} is larger than --nodes {}",
            settings.nodes
        )));
    }
    let dir = settings.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("p2p-mpc-devnet-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir)
        .map_err(|e| DevnetError::Setup(format!("cannot create {}: {e}", dir.display())))?;
    println!(
        "p2p-mpc devnet: starting {n} nodes on 127.0.0.1 (data and logs in {})",
        dir.display()
    );

    let roster = write_roster(&dir, n)?;
    println!("  cluster roster: {} ({n} members)", roster.display());
    let mut nodes: Vec<DevnetNode> = Vec::new();
    for i in 0..n {
        let bootnodes: Vec<String> = nodes.iter().map(|x| x.tcp_addr.clone()).collect();
        let mut node = spawn_node(i, &dir, &bootnodes, &roster)?;
        wait_started(&mut node).await?;
        println!("  node {i}: {}  API {}", node.peer_id, node.api);
        nodes.push(node);
    }

    // The client key that the demo key's policy lists: only its holder can have it sign.
    let client_key_path = dir.join("client.key");
    let client_key = if client_key_path.exists() {
        crate::commands::client::read(&client_key_path).map_err(DevnetError::Setup)?
    } else {
        crate::commands::client::generate(&client_key_path).map_err(DevnetError::Setup)?;
        crate::commands::client::read(&client_key_path).map_err(DevnetError::Setup)?
    };
    let client_public = crate::commands::client::public_key(&client_key);
    println!(
        "  client key: {} (public key {client_public})",
        client_key_path.display()
    );

    let result = demo(&nodes, threshold, &client_key).await;
    if let Err(e) = result {
        terminate(&mut nodes);
        return Err(e);
    }

    println!("\nThe devnet is running. Try:");
    let first = &nodes[0].api;
    let last = &nodes[n - 1].api;
    println!("  p2p-mpc status --api {first}");
    println!("  p2p-mpc keys list --api {last}");
    println!(
        "  p2p-mpc keys create --threshold {threshold} --client {client_public} --api {first}"
    );
    println!(
        "  p2p-mpc keys sign <KEY_ID> --message 68656c6c6f --client-key {} --api {last}",
        client_key_path.display()
    );
    println!("  p2p-mpc aggregate create --threshold 1 --length 3 --min-reports 2 --api {first}");
    println!("  p2p-mpc aggregate submit --task <TASK_ID> --values 1,2,3 --api {last}");
    println!("  p2p-mpc aggregate collect --task <TASK_ID> --api {first}");
    println!("  curl -s {first}/v1/peers");
    println!("  p2p-mpc publish {DEVNET_TOPIC} hello --api {first}");
    println!("\nDashboards (open in a browser; every node serves its own):");
    for node in &nodes {
        println!("  {}/  (node {})", node.api, node.index);
    }
    println!(
        "Logs: {}/node-<i>.log. Press Ctrl-C to stop all nodes.",
        dir.display()
    );

    let watch_children = async {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            for node in nodes.iter_mut() {
                if let Ok(Some(status)) = node.child.try_wait() {
                    return (node.index, status, node.log.clone());
                }
            }
        }
    };
    let outcome = tokio::select! {
        _ = stop => None,
        exited = watch_children => Some(exited),
    };
    println!("\nstopping the devnet...");
    terminate(&mut nodes);
    match outcome {
        None => {
            println!("stopped.");
            Ok(())
        }
        Some((index, status, log)) => Err(DevnetError::Node {
            node: index,
            message: format!("exited unexpectedly with {status}"),
            log: log.display().to_string(),
        }),
    }
}

async fn demo(
    nodes: &[DevnetNode],
    threshold: u16,
    client_key: &ed25519_dalek::SigningKey,
) -> Result<(), DevnetError> {
    let n = nodes.len();
    print!("waiting for the mesh ({} connections per node)...", n - 1);
    let _ = std::io::stdout().flush();
    let deadline = Instant::now() + START_TIMEOUT;
    for node in nodes {
        let c = client(node)?;
        loop {
            let peers: Result<Value, ClientError> = c.get("v1/peers").await;
            let count = peers
                .ok()
                .and_then(|p| p["peers"].as_array().map(Vec::len))
                .unwrap_or(0);
            if count + 1 >= n {
                break;
            }
            if Instant::now() > deadline {
                return Err(DevnetError::Node {
                    node: node.index,
                    message: format!("has {count} of {} peers after {START_TIMEOUT:?}", n - 1),
                    log: node.log.display().to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    println!(" meshed.");

    for scheme in Scheme::ALL {
        key_demo(nodes, threshold, scheme, client_key, deadline).await?;
    }
    aggregation_demo(nodes, threshold).await
}

/// Creates a key of `scheme` on node 0 (its policy: the client key approves) and has the
/// last node sign with it; verifies the signature.
async fn key_demo(
    nodes: &[DevnetNode],
    threshold: u16,
    scheme: Scheme,
    client_key: &ed25519_dalek::SigningKey,
    deadline: Instant,
) -> Result<(), DevnetError> {
    let n = nodes.len();
    let participants: Vec<&str> = nodes.iter().map(|x| x.peer_id.as_str()).collect();
    println!("running a distributed key generation ({threshold} of {n}, {scheme}) on node 0...");
    let c0 = client(&nodes[0])?;
    let started = Instant::now();
    let key: Value = loop {
        let policy = json!({ "clients": [crate::commands::client::public_key(client_key)] });
        let body = json!({"scheme": scheme.name(), "threshold": threshold, "participants": participants, "policy": policy});
        match c0.post("v1/keys", &body).await {
            Ok(key) => break key,
            // Peers are known as MPC peers once identify ran; that can lag the connection.
            Err(ClientError::Api {
                status: 400,
                message,
                ..
            }) if message.contains("not connected") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(DevnetError::Demo(format!("the DKG failed: {e}"))),
        }
    };
    let key_id = key["key_id"].as_str().unwrap_or_default().to_string();
    let public_key = key["public_key"].as_str().unwrap_or_default().to_string();
    println!("  key {key_id} created in {:.2?}", started.elapsed());
    match scheme {
        Scheme::Ed25519 => println!("  group public key (Ed25519): {public_key}"),
        Scheme::Secp256k1Tr => {
            // The output key is the address's witness program as it is (never tweaked again).
            let info: Value = c0
                .get(&format!("v1/keys/{key_id}?network=regtest"))
                .await
                .map_err(|e| DevnetError::Demo(format!("key info: {e}")))?;
            println!(
                "  Taproot output key Q (BIP340, x-only): {public_key}\n  internal key P: {}\n  P2TR address (regtest): {}",
                text(&info["internal_key"]),
                text(&info["address"])
            );
        }
    }
    println!("  policy: signatures need an authorization by the client key");

    let message = b"hello from the p2p-mpc devnet";
    let signer = &nodes[n - 1];
    println!(
        "signing \"{}\" on node {}...",
        String::from_utf8_lossy(message),
        signer.index
    );
    let started = Instant::now();
    let coordinator: libp2p::PeerId = signer.peer_id.parse().map_err(|e| {
        DevnetError::Demo(format!(
            "node {}: peer id `{}`: {e}",
            signer.index, signer.peer_id
        ))
    })?;
    let authorization =
        crate::commands::client::authorize(client_key, &key_id, &coordinator, message, 60);
    let answer: Value = client(signer)?
        .post(
            &format!("v1/keys/{key_id}/sign"),
            &json!({ "message": hex::encode(message), "authorizations": [authorization] }),
        )
        .await
        .map_err(|e| DevnetError::Demo(format!("signing failed: {e}")))?;
    let signature = answer["signature"].as_str().unwrap_or_default().to_string();
    verify(scheme, &public_key, message, &signature)?;
    let signers = answer["signers"].as_array().map(Vec::len).unwrap_or(0);
    println!(
        "  {scheme} signature {signature}\n  made by {signers} nodes in {:.2?}, verified against the group public key",
        started.elapsed()
    );
    Ok(())
}

/// A secure sum of three private vectors, each submitted to a different node.
async fn aggregation_demo(nodes: &[DevnetNode], threshold: u16) -> Result<(), DevnetError> {
    use crate::mpc::aggregation::client::{prepare_report, verify_task};
    use crate::mpc::aggregation::store::TaskInfo;
    let n = nodes.len();
    // t + 1 nodes open the sum; keep the same quorum as the demo key.
    let t = threshold.saturating_sub(1).max(1).min(n as u16 - 1);
    let participants: Vec<&str> = nodes.iter().map(|x| x.peer_id.as_str()).collect();
    println!(
        "creating a secure-sum task on node 0 (vectors of 4, any {} of {n} nodes open the sum, 3 reports needed)...",
        t + 1
    );
    let c0 = client(&nodes[0])?;
    let body = json!({"participants": participants, "threshold": t, "length": 4, "min_reports": 3});
    let task: TaskInfo = c0
        .post("v1/aggregations", &body)
        .await
        .map_err(|e| DevnetError::Demo(format!("creating the aggregation task failed: {e}")))?;
    verify_task(&task).map_err(DevnetError::Demo)?;
    let task_id = task.params.task_id.clone();
    let inputs: [[u64; 4]; 3] = [[1, 2, 3, 4], [10, 20, 30, 40], [100, 200, 300, 400]];
    for (i, values) in inputs.iter().enumerate() {
        let node = &nodes[i % n];
        let report = prepare_report(&task, values).map_err(DevnetError::Demo)?;
        let body = serde_json::to_value(&report).map_err(|e| DevnetError::Demo(e.to_string()))?;
        client(node)?
            .post::<Value>(&format!("v1/aggregations/{task_id}/reports"), &body)
            .await
            .map_err(|e| DevnetError::Demo(format!("submitting a report failed: {e}")))?;
        println!(
            "  client {i} sent {values:?}, Shamir-shared and sealed, to node {}",
            node.index
        );
    }
    let answer: Value = c0
        .post(&format!("v1/aggregations/{task_id}/collect"), &json!({}))
        .await
        .map_err(|e| DevnetError::Demo(format!("collecting the sum failed: {e}")))?;
    let sum: Vec<u64> = serde_json::from_value(answer["sum"].clone())
        .map_err(|e| DevnetError::Demo(format!("unexpected collect answer: {e}")))?;
    if sum != [111, 222, 333, 444] {
        return Err(DevnetError::Demo(format!(
            "the sum is {sum:?}, expected [111, 222, 333, 444]"
        )));
    }
    println!("  task {task_id}: sum {sum:?} of 3 reports; the sum matches, no node saw an input");
    validated_count_demo(nodes).await
}

/// A count whose every report is proven to be 0 or 1 (Prio3): four clients, one of which
/// tries to count 5 with a forged report that every node refuses.
async fn validated_count_demo(nodes: &[DevnetNode]) -> Result<(), DevnetError> {
    use crate::mpc::aggregation::client::{prepare_report, prepare_report_with, verify_task};
    use crate::mpc::aggregation::store::TaskInfo;
    let n = nodes.len();
    let participants: Vec<&str> = nodes.iter().map(|x| x.peer_id.as_str()).collect();
    println!(
        "creating a validated count on node 0 (each report proven to be 0 or 1, all {n} nodes open the count, 3 reports needed)..."
    );
    let c0 = client(&nodes[0])?;
    let body = json!({"participants": participants, "input": {"type": "count"}, "min_reports": 3});
    let task: TaskInfo = c0
        .post("v1/aggregations", &body)
        .await
        .map_err(|e| DevnetError::Demo(format!("creating the validated count failed: {e}")))?;
    verify_task(&task).map_err(DevnetError::Demo)?;
    let task_id = task.params.task_id.clone();
    for (i, value) in [1u64, 0, 1].iter().enumerate() {
        let node = &nodes[i % n];
        let report = prepare_report(&task, &[*value]).map_err(DevnetError::Demo)?;
        let body = serde_json::to_value(&report).map_err(|e| DevnetError::Demo(e.to_string()))?;
        client(node)?
            .post::<Value>(&format!("v1/aggregations/{task_id}/reports"), &body)
            .await
            .map_err(|e| DevnetError::Demo(format!("submitting a count failed: {e}")))?;
        println!("  client {i} counted {value}, with a proof that it is 0 or 1");
    }
    // A client that shares 5 behind a proof made for 0.
    let forged = prepare_report_with(&task, &[5], true).map_err(DevnetError::Demo)?;
    let body = serde_json::to_value(&forged).map_err(|e| DevnetError::Demo(e.to_string()))?;
    match client(&nodes[n - 1])?
        .post::<Value>(&format!("v1/aggregations/{task_id}/reports"), &body)
        .await
    {
        Ok(_) => {
            return Err(DevnetError::Demo(
                "a forged count of 5 was taken; every node must refuse it".into(),
            ));
        }
        Err(e) => println!("  client 3 tried to count 5 with a forged proof: refused ({e})"),
    }
    let answer: Value = c0
        .post(&format!("v1/aggregations/{task_id}/collect"), &json!({}))
        .await
        .map_err(|e| DevnetError::Demo(format!("collecting the count failed: {e}")))?;
    let sum: Vec<u64> = serde_json::from_value(answer["sum"].clone())
        .map_err(|e| DevnetError::Demo(format!("unexpected collect answer: {e}")))?;
    if sum != [2] {
        return Err(DevnetError::Demo(format!(
            "the count is {sum:?}, expected [2]"
        )));
    }
    println!(
        "  task {task_id}: count {} of 3 proven reports; the count matches",
        sum[0]
    );
    Ok(())
}

/// Standard verification of the demo signature (Ed25519, or BIP340 under the x-only key).
fn verify(
    scheme: Scheme,
    public_key: &str,
    message: &[u8],
    signature: &str,
) -> Result<(), DevnetError> {
    let bad = |what: &str| DevnetError::Demo(format!("the node returned {what}"));
    let pk = hex::decode(public_key).map_err(|_| bad("a public key that is not hex"))?;
    let sig = hex::decode(signature).map_err(|_| bad("a signature that is not hex"))?;
    scheme
        .verify(&pk, message, &sig)
        .map_err(|e| DevnetError::Demo(format!("the {scheme} signature does not verify: {e}")))
}

/// A JSON string's text, or `?`.
fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("?")
}
