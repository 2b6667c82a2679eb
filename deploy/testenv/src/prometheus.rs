use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;

use crate::Error;
use crate::http::{encode_query_value, get, get_json};
use crate::ports::free_ports;
use crate::process::{Component, ready_timeout};
use crate::tools::tool;

/// A Prometheus server on loopback with a scrape configuration of the test's; stopped on drop.
pub struct Prometheus {
    // Field order matters: the process stops before its directory is removed.
    process: Component,
    port: u16,
    _dir: TempDir,
}

/// One `scrape_configs` entry (YAML) scraping `targets` every `interval` at `/metrics`.
pub fn scrape_config(job: &str, targets: &[SocketAddr], interval: Duration) -> String {
    let targets = targets
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "- job_name: '{job}'\n  scrape_interval: {}ms\n  scrape_timeout: {}ms\n  static_configs:\n    - targets: [{targets}]\n",
        interval.as_millis(),
        interval.as_millis().min(10_000),
    )
}

impl Prometheus {
    /// Starts Prometheus with `scrape_configs` (a YAML list, e.g. from [`scrape_config`])
    /// and waits until it is ready.
    pub async fn start(scrape_configs: &str) -> Result<Self, Error> {
        let binary = prometheus_binary().await?;
        let mut attempt = 1;
        loop {
            match Self::start_once(&binary, scrape_configs).await {
                Ok(prometheus) => return Ok(prometheus),
                Err((_, true)) if attempt < 3 => attempt += 1,
                Err((err, _)) => return Err(err),
            }
        }
    }

    /// Starts Prometheus scraping `targets` (at `/metrics`) every second.
    pub async fn start_scraping(targets: &[SocketAddr]) -> Result<Self, Error> {
        Self::start(&scrape_config("test", targets, Duration::from_secs(1))).await
    }

    /// One start attempt; the flag says whether it failed because its port was taken.
    async fn start_once(binary: &Path, scrape_configs: &str) -> Result<Self, (Error, bool)> {
        let other = |e: Error| (e, false);
        let dir = tempfile::Builder::new()
            .prefix("p2p-mpc-prometheus-")
            .tempdir()
            .map_err(|e| other(Error::io("creating a directory for prometheus", e)))?;
        let config = dir.path().join("prometheus.yml");
        let mut text = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for line in scrape_configs.lines() {
            text.push_str("  ");
            text.push_str(line);
            text.push('\n');
        }
        std::fs::write(&config, text)
            .map_err(|e| other(Error::io(format!("writing {}", config.display()), e)))?;
        let port = free_ports(1).map_err(other)?[0];
        let args = vec![
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
        ];
        let mut process = Component::spawn(
            "prometheus",
            binary,
            &args,
            &dir.path().join("prometheus.log"),
        )
        .map_err(other)?;
        let ready_url = format!("http://127.0.0.1:{port}/-/ready");
        let ready = process
            .wait_ready(ready_timeout(), || {
                let ready_url = ready_url.clone();
                async move {
                    match get(&ready_url, Duration::from_secs(2)).await {
                        Ok((200, _)) => Ok(()),
                        Ok((status, body)) => Err(format!("{ready_url}: status {status}: {body}")),
                        Err(e) => Err(e.to_string()),
                    }
                }
            })
            .await;
        match ready {
            Ok(()) => Ok(Prometheus {
                process,
                port,
                _dir: dir,
            }),
            Err(err) => {
                let taken = process.port_was_taken();
                Err((err, taken))
            }
        }
    }

    /// Base URL, e.g. `http://127.0.0.1:39090`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The process id (to check that nothing is left after drop).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Runs an instant query and returns the `data.result` array.
    pub async fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>, Error> {
        let url = format!(
            "{}/api/v1/query?query={}",
            self.url(),
            encode_query_value(promql)
        );
        let body = get_json(&url, Duration::from_secs(5)).await?;
        if body["status"] != "success" {
            return Err(Error::Http {
                url,
                reason: format!("query did not succeed: {body}"),
            });
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

/// `prometheus` from PATH (Debian's package), else from the bin directory, whose install
/// step installs that package when it is missing.
async fn prometheus_binary() -> Result<PathBuf, Error> {
    tool("prometheus").await
}
