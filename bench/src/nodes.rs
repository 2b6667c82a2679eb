//! Real `p2p-mpc` processes on loopback for the benchmarks.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use p2p_mpc_testenv::{Expect, RunningNode};
use serde_json::Value;

/// The `p2p-mpc` binary of the same build profile as this benchmark, built if missing; or
/// the one `P2P_MPC_BENCH_NODE` names (to measure another build of the node against this
/// one with the same benchmark, e.g. before and after a change).
pub fn node_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("P2P_MPC_BENCH_NODE") {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("P2P_MPC_BENCH_NODE={}: no such file", bin.display());
        }
        return Ok(bin);
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("benchmark binary has no directory")?;
    let bin = dir.join("p2p-mpc");
    let release = dir.ends_with("release");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // The suite injects test faults (e.g. plaintext shares to measure ingest without HPKE).
    cmd.args([
        "build",
        "-q",
        "-p",
        "p2p-mpc-node",
        "--features",
        "test-faults",
        "--bin",
        "p2p-mpc",
    ]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().context("running cargo build for p2p-mpc")?;
    if !status.success() || !bin.exists() {
        bail!("cannot build {}", bin.display());
    }
    Ok(bin)
}

pub use p2p_mpc_testenv::{LineSink, rss_bytes as rss_of};

/// A node process; killed on drop.
pub struct Node {
    process: RunningNode,
    pub api: String,
    pub peer_id: String,
    pub tcp_addr: String,
    /// The QUIC listen address, when `--quic-port` was given.
    pub quic_addr: Option<String>,
    /// `http://<ip>:<port>` of the metrics server.
    pub metrics: String,
    /// From spawn to the first libp2p listen address in the log.
    pub start_to_listening: Duration,
}

impl Node {
    /// Starts a node with free ports on 127.0.0.1 plus `extra`; stdout lines go to `sink`.
    pub fn start(
        bin: &Path,
        data: &Path,
        extra: &[String],
        sink: LineSink,
    ) -> impl std::future::Future<Output = anyhow::Result<Node>> {
        Self::start_with_env(bin, data, extra, &[], sink)
    }

    /// Like [`start`](Self::start), with extra environment variables.
    pub async fn start_with_env(
        bin: &Path,
        data: &Path,
        extra: &[String],
        env: &[(&str, &str)],
        sink: LineSink,
    ) -> anyhow::Result<Node> {
        let mut command = Command::new(bin);
        command
            .args(p2p_mpc_testenv::loopback_args())
            .args(["--log-level", "warn"])
            .env(
                "RUST_LOG",
                "p2p_mpc_node::node=info,p2p_mpc_node::network::service=info",
            )
            .envs(env.iter().copied())
            .arg("--data-dir")
            .arg(data)
            .args(extra);
        let mut process = RunningNode::spawn(command, Some(sink))
            .with_context(|| format!("starting {}", bin.display()))?;
        let listening = process
            .wait_listening(
                Duration::from_secs(30),
                Expect {
                    metrics: true,
                    quic: extra.iter().any(|a| a == "--quic-port"),
                    ..Expect::default()
                },
            )
            .await
            .map_err(anyhow::Error::msg)?;
        Ok(Node {
            start_to_listening: listening.at - process.spawned_at(),
            process,
            api: listening.api,
            peer_id: listening.peer_id,
            tcp_addr: listening.tcp_addr,
            quic_addr: listening.quic_addr,
            metrics: listening.metrics.unwrap_or_default(),
        })
    }

    /// Resident memory in bytes (Linux /proc).
    pub fn rss_bytes(&self) -> Option<u64> {
        self.process.rss_bytes()
    }

    /// Writes a line on the node's stdin (chat: publishes it on the first topic).
    pub fn type_line(&mut self, line: &str) -> std::io::Result<()> {
        self.process.type_line(line)
    }

    /// Takes the node's stdin, to write to it from another task.
    pub fn take_stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.process.take_stdin()
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        self.process.stderr_lines().join("\n")
    }
}

/// A node's `/metrics` page.
pub async fn metrics_page(http: &reqwest::Client, node: &Node) -> anyhow::Result<String> {
    Ok(http
        .get(format!("{}/metrics", node.metrics))
        .send()
        .await?
        .text()
        .await?)
}

/// Connected peer ids of a node (`GET /v1/peers`).
pub async fn peers(http: &reqwest::Client, node: &Node) -> anyhow::Result<Vec<String>> {
    let v: serde_json::Value = http
        .get(format!("{}/v1/peers", node.api))
        .send()
        .await?
        .json()
        .await?;
    Ok(v["peers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["peer_id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

/// `n` nodes meshed with each other; every node has node 0 as bootnode and finds the others
/// through Kademlia. `env` goes to every node.
pub async fn cluster(
    bin: &Path,
    dir: &Path,
    n: usize,
    env: &[(&str, &str)],
) -> anyhow::Result<Vec<Node>> {
    cluster_of(bin, dir, n, &[], env).await
}

/// Like [`cluster`], with extra arguments for every node.
pub async fn cluster_with_args(
    bin: &Path,
    dir: &Path,
    n: usize,
    args: &[String],
) -> anyhow::Result<Vec<Node>> {
    cluster_of(bin, dir, n, args, &[]).await
}

async fn cluster_of(
    bin: &Path,
    dir: &Path,
    n: usize,
    args: &[String],
    env: &[(&str, &str)],
) -> anyhow::Result<Vec<Node>> {
    cluster_each(bin, dir, n, |_| args.to_vec(), env).await
}

/// Like [`cluster`], with arguments of its own for node `i` (`args_of(i)`).
pub async fn cluster_each(
    bin: &Path,
    dir: &Path,
    n: usize,
    args_of: impl Fn(usize) -> Vec<String>,
    env: &[(&str, &str)],
) -> anyhow::Result<Vec<Node>> {
    let first =
        Node::start_with_env(bin, &dir.join("n0"), &args_of(0), env, Box::new(|_, _| {})).await?;
    let boot = first.tcp_addr.clone();
    let mut nodes = vec![first];
    for i in 1..n {
        let mut extra = args_of(i);
        extra.extend(["--bootnode".to_string(), boot.clone()]);
        nodes.push(
            Node::start_with_env(
                bin,
                &dir.join(format!("n{i}")),
                &extra,
                env,
                Box::new(|_, _| {}),
            )
            .await?,
        );
    }
    wait_mesh(&nodes).await?;
    Ok(nodes)
}

/// Waits until every one of `nodes` is connected to every other.
async fn wait_mesh(nodes: &[Node]) -> anyhow::Result<()> {
    let n = nodes.len();
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60 + 2 * n as u64);
    for node in nodes {
        while peers(&http, node).await?.len() < n - 1 {
            if Instant::now() > deadline {
                bail!("no full mesh of {n} nodes in time");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Two nodes whose one connection runs over QUIC: the second knows only the first's QUIC
/// address.
pub async fn quic_pair(bin: &Path, dir: &Path) -> anyhow::Result<Vec<Node>> {
    let quic = ["--quic-port".to_string(), "0".to_string()];
    let first = Node::start(bin, &dir.join("q0"), &quic, Box::new(|_, _| {})).await?;
    let addr = first
        .quic_addr
        .clone()
        .context("the first node listens on QUIC")?;
    let mut extra = quic.to_vec();
    extra.extend(["--bootnode".to_string(), addr]);
    let second = Node::start(bin, &dir.join("q1"), &extra, Box::new(|_, _| {})).await?;
    let nodes = vec![first, second];
    wait_mesh(&nodes).await?;
    // Every connection between them is QUIC (none over TCP).
    let v: Value = reqwest::Client::new()
        .get(format!("{}/v1/peers", nodes[1].api))
        .send()
        .await?
        .json()
        .await?;
    let addrs: Vec<&str> = v["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["connected_addrs"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    if addrs.is_empty() || addrs.iter().any(|a| !a.contains("/quic-v1")) {
        bail!("the QUIC pair is connected over {addrs:?}");
    }
    Ok(nodes)
}

/// POSTs JSON; an error status is an error that carries the answer.
pub async fn post(http: &reqwest::Client, url: String, body: Value) -> anyhow::Result<Value> {
    let resp = http.post(&url).json(&body).send().await?;
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("{url}: {status}: {v}");
    }
    Ok(v)
}

/// Runs `bench` with the `p2p-mpc` binary and a fresh scratch directory named after `name`,
/// removed afterwards.
pub async fn with_scratch<Fut>(
    name: &str,
    bench: impl FnOnce(PathBuf, PathBuf) -> Fut,
) -> anyhow::Result<Vec<crate::results::Figure>>
where
    Fut: std::future::Future<Output = anyhow::Result<Vec<crate::results::Figure>>>,
{
    let bin = node_binary()?;
    let dir = std::env::temp_dir().join(format!("p2p-mpc-bench-{name}-{}", std::process::id()));
    let out = bench(bin, dir.clone()).await;
    let _ = std::fs::remove_dir_all(&dir);
    out
}
