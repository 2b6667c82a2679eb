//! Real infrastructure for tests: a Kubernetes control plane (etcd, kube-apiserver,
//! kube-controller-manager), Jaeger and Prometheus, each started on loopback on free ports
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
mod ports;
mod process;
mod prometheus;
mod tools;

pub use control_plane::ControlPlane;
pub use error::Error;
pub use jaeger::Jaeger;
pub use prometheus::{Prometheus, scrape_config};
pub use tools::{bin_dir, promtool, tool};

use std::io::Write;

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
