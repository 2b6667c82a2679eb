use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use tempfile::TempDir;

use crate::Error;
use crate::http::{encode_query_value, get, get_json};
use crate::ports::free_ports;
use crate::process::{Component, ready_timeout};
use crate::tools::tool;

/// A Jaeger v2 all-in-one (in-memory storage) receiving OTLP on loopback (or another
/// address of this machine); stopped on drop.
pub struct Jaeger {
    // Field order matters: the process stops before its directory is removed.
    process: Component,
    otlp_host: IpAddr,
    otlp_grpc_port: u16,
    otlp_http_port: u16,
    query_port: u16,
    _dir: TempDir,
}

impl Jaeger {
    /// Starts Jaeger on free loopback ports and waits until it accepts OTLP and answers
    /// queries.
    pub async fn start() -> Result<Self, Error> {
        Self::start_receiving_on(IpAddr::V4(Ipv4Addr::LOCALHOST)).await
    }

    /// Like [`Jaeger::start`], with the OTLP receivers on `host` (an address of this
    /// machine, e.g. the test node's bridge address, so pods can send spans); the query
    /// service stays on loopback.
    pub async fn start_receiving_on(host: IpAddr) -> Result<Self, Error> {
        let binary = tool("jaeger").await?;
        let mut attempt = 1;
        loop {
            match Self::start_once(&binary, host).await {
                Err(StartError::PortTaken(_)) if attempt < 3 => attempt += 1,
                Err(StartError::PortTaken(err)) | Err(StartError::Other(err)) => return Err(err),
                Ok(jaeger) => return Ok(jaeger),
            }
        }
    }

    async fn start_once(binary: &Path, otlp_host: IpAddr) -> Result<Self, StartError> {
        let dir = tempfile::Builder::new()
            .prefix("p2p-mpc-jaeger-")
            .tempdir()
            .map_err(|e| Error::io("creating a directory for jaeger", e))?;
        let ports = free_ports(4)?;
        let (otlp_grpc_port, otlp_http_port, query_port, query_grpc_port) =
            (ports[0], ports[1], ports[2], ports[3]);
        let config = dir.path().join("jaeger.yaml");
        std::fs::write(
            &config,
            jaeger_config(
                otlp_host,
                otlp_grpc_port,
                otlp_http_port,
                query_port,
                query_grpc_port,
            ),
        )
        .map_err(|e| Error::io(format!("writing {}", config.display()), e))?;
        let args = vec![format!("--config=file:{}", config.display())];
        let mut process =
            Component::spawn("jaeger", binary, &args, &dir.path().join("jaeger.log"))?;

        let services_url = format!("http://127.0.0.1:{query_port}/api/services");
        let ready = process
            .wait_ready(ready_timeout(), || {
                let services_url = services_url.clone();
                async move {
                    tokio::net::TcpStream::connect(SocketAddr::new(otlp_host, otlp_grpc_port))
                        .await
                        .map_err(|e| format!("OTLP gRPC port {otlp_grpc_port}: {e}"))?;
                    match get(&services_url, Duration::from_secs(2)).await {
                        Ok((200, _)) => Ok(()),
                        Ok((status, body)) => {
                            Err(format!("{services_url}: status {status}: {body}"))
                        }
                        Err(e) => Err(e.to_string()),
                    }
                }
            })
            .await;
        match ready {
            Ok(()) => Ok(Jaeger {
                process,
                otlp_host,
                otlp_grpc_port,
                otlp_http_port,
                query_port,
                _dir: dir,
            }),
            Err(err) if process.port_was_taken() => Err(StartError::PortTaken(err)),
            Err(err) => Err(StartError::Other(err)),
        }
    }

    /// Where to send OTLP over gRPC, e.g. `http://127.0.0.1:43170`.
    pub fn otlp_grpc_endpoint(&self) -> String {
        format!(
            "http://{}",
            SocketAddr::new(self.otlp_host, self.otlp_grpc_port)
        )
    }

    /// The address and port OTLP over gRPC is received on.
    pub fn otlp_grpc_address(&self) -> SocketAddr {
        SocketAddr::new(self.otlp_host, self.otlp_grpc_port)
    }

    /// Where to send OTLP over HTTP (the base; traces go to `/v1/traces`).
    pub fn otlp_http_endpoint(&self) -> String {
        format!(
            "http://{}",
            SocketAddr::new(self.otlp_host, self.otlp_http_port)
        )
    }

    /// Base URL of the query service (HTTP JSON API, e.g. `/api/traces?service=...`).
    pub fn query_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.query_port)
    }

    /// The process id (to check that nothing is left after drop).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Names of the services Jaeger has received spans from.
    pub async fn services(&self) -> Result<Vec<String>, Error> {
        let url = format!("{}/api/services", self.query_url());
        let body = get_json(&url, Duration::from_secs(5)).await?;
        Ok(body["data"]
            .as_array()
            .map(|names| {
                names
                    .iter()
                    .filter_map(|n| n.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The traces of `service`, as the query API's `data` array (spans carry
    /// `operationName`, `tags`, `references` and `processID` into `processes`).
    pub async fn traces(&self, service: &str) -> Result<Vec<serde_json::Value>, Error> {
        let url = format!(
            "{}/api/traces?service={}&limit=100",
            self.query_url(),
            encode_query_value(service)
        );
        let body = get_json(&url, Duration::from_secs(5)).await?;
        Ok(body["data"].as_array().cloned().unwrap_or_default())
    }
}

enum StartError {
    PortTaken(Error),
    Other(Error),
}

impl From<Error> for StartError {
    fn from(err: Error) -> Self {
        StartError::Other(err)
    }
}

/// The all-in-one pipeline (OTLP in on `otlp_host`, memory storage, query service on
/// loopback), and the collector's own metrics endpoint (port 8888 by default) turned off.
fn jaeger_config(
    otlp_host: IpAddr,
    otlp_grpc: u16,
    otlp_http: u16,
    query_http: u16,
    query_grpc: u16,
) -> String {
    format!(
        r#"service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: info

extensions:
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{query_http}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000

receivers:
  otlp:
    protocols:
      grpc:
        endpoint: {otlp_host}:{otlp_grpc}
      http:
        endpoint: {otlp_host}:{otlp_http}

processors:
  batch:
    timeout: 100ms

exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"#
    )
}
