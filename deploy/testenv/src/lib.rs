//! Real infrastructure for tests: a Kubernetes control plane (etcd, kube-apiserver,
//! kube-controller-manager; optionally a node where pods run: containerd, kubelet,
//! kube-scheduler, kube-proxy, CoreDNS), Jaeger and Prometheus, each started on free ports
//! and stopped when its handle is dropped.
//!
//! The binaries are built from pinned Go modules by `deploy/testenv/install.sh`, which the
//! first start in a process runs by itself (one build at a time, however many tests start
//! at once). A test that cannot get a tool turns the error into a loud skip with
//! [`or_skip`], except in CI (`CI=true`), where it fails.
//!
//! ```no_run
//! # async fn example() {
//! let Some(cluster) = p2p_mpc_testenv::or_skip(p2p_mpc_testenv::ControlPlane::start().await) else {
//!     return;
//! };
//! let client = cluster.client().await.unwrap();
//! # }
//! ```

mod control_plane;
mod error;
mod http;
mod jaeger;
mod node;
mod ports;
mod process;
mod prometheus;
mod tools;

pub use control_plane::{ControlPlane, NODE_IP, NODE_NAME};

/// Makes ring the process's rustls provider (once; later calls change nothing). A workspace
/// build compiles rustls with ring (ours, kube's) and with aws-lc-rs (libp2p's QUIC, through
/// libp2p-tls), and rustls then refuses to pick a default: make this call before any kube
/// client is made.
pub fn tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
pub use error::Error;
pub use jaeger::Jaeger;
pub use node::{
    Expect, LineSink, Listening, RunningNode, loopback_args, metric_samples, metric_sum, rss_bytes,
};
pub use prometheus::{Prometheus, scrape_config};
pub use tools::{bin_dir, promtool, tool};

use std::future::Future;
use std::io::Write;
use std::time::Duration;

/// True when running in CI (`CI=true`), where a missing tool is a failure, never a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Turns [`Error::Unavailable`] into `None` with a loud message on a developer machine;
/// panics on it in CI and on every other error, with the error's full text.
pub fn or_skip<T>(result: Result<T, Error>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(err @ Error::Unavailable { .. }) if !in_ci() => {
            let line = "=".repeat(78);
            // Written to the process's stderr directly: the test harness captures eprintln!,
            // and a skip must be seen.
            let _ = writeln!(
                std::io::stderr(),
                "\n{line}\nSKIPPED (not in CI): {err}\nIn CI (CI=true) this is a failure.\n{line}\n"
            );
            None
        }
        Err(err) => panic!("{err}"),
    }
}

/// Polls `probe` until it returns `Ok`, at most for `timeout`. `Err` carries what was seen,
/// so a failure reads "expected <what> within <timeout>; last seen: <...>".
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_seen = String::from("nothing yet");
    loop {
        match tokio::time::timeout_at(deadline, probe()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(seen)) => last_seen = seen,
            Err(_) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "expected {what} within {timeout:?}; last seen: {last_seen}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// True while process `pid` exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// True while something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port)),
        Duration::from_secs(1),
    )
    .is_ok()
}
