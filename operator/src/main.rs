//! `p2p-mpc-operator`: `run` the controller (default) or print the `crd`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use p2p_mpc_node::node::termination_signal;
use p2p_mpc_node::tracing_config::LogLevel;
use p2p_mpc_node::tracing_config::{self, TracingSettings};
use p2p_mpc_operator::controller::{self, OperatorConfig};
use p2p_mpc_operator::metrics::{OperatorMetrics, health_router, metrics_router};
use tokio::sync::watch;

/// Kubernetes operator for p2p-mpc networks (MpcCluster resources).
#[derive(Debug, Parser)]
#[command(name = "p2p-mpc-operator", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controller (the default).
    Run(RunArgs),
    /// Print the MpcCluster CustomResourceDefinition as YAML.
    Crd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, clap::Args)]
struct RunArgs {
    /// Port of /metrics.
    #[arg(long, env = "P2P_MPC_OPERATOR_METRICS_PORT", default_value_t = 8080)]
    metrics_port: u16,
    /// Port of /healthz and /readyz.
    #[arg(long, env = "P2P_MPC_OPERATOR_HEALTH_PORT", default_value_t = 8081)]
    health_port: u16,
    /// Address both servers bind to.
    #[arg(long, env = "P2P_MPC_OPERATOR_BIND_ADDRESS", default_value = "0.0.0.0")]
    bind_address: std::net::IpAddr,
    /// Log level (RUST_LOG refines it).
    #[arg(long, env = "P2P_MPC_OPERATOR_LOG_LEVEL", value_enum, default_value_t = LogLevel::Info)]
    log_level: LogLevel,
    /// Log format on stderr.
    #[arg(long, env = "P2P_MPC_OPERATOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
    /// Node image for MpcClusters that name none.
    #[arg(long, env = "P2P_MPC_OPERATOR_DEFAULT_IMAGE", default_value = concat!("localhost/p2p-mpc:", env!("CARGO_PKG_VERSION")))]
    default_image: String,
    /// DNS suffix of the cluster, used in the pods' bootnode addresses.
    #[arg(
        long,
        env = "P2P_MPC_OPERATOR_CLUSTER_DOMAIN",
        default_value = "cluster.local"
    )]
    cluster_domain: String,
    /// Export spans over OTLP gRPC to this endpoint (e.g. http://jaeger-collector:4317).
    #[arg(long, env = "P2P_MPC_OPERATOR_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Manage MpcClusters of this namespace only (repeat it, or a comma-separated list);
    /// none: every namespace (the operator then needs a ClusterRole).
    #[arg(
        long = "watch-namespace",
        env = "P2P_MPC_OPERATOR_WATCH_NAMESPACES",
        value_name = "NAMESPACE",
        value_delimiter = ','
    )]
    watch_namespaces: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crd) => {
            print!("{}", p2p_mpc_operator::crd_yaml());
            ExitCode::SUCCESS
        }
        Some(Command::Run(args)) => run(args),
        None => run(cli.run),
    }
}

fn run(args: RunArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let settings = TracingSettings {
            log_level: args.log_level,
            json_trace_file: None,
            otlp_endpoint: args.otlp_endpoint.clone(),
            service_name: "p2p-mpc-operator".into(),
            resource_attributes: vec![],
            json_logs: matches!(args.log_format, LogFormat::Json),
        };
        let guard = match tracing_config::init(&settings) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        let code = match serve(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
        guard.shutdown().await;
        code
    })
}

async fn serve(args: RunArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    // The binary holds two rustls providers (ring, and aws-lc-rs through libp2p's QUIC):
    // rustls picks neither by itself.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default()
        .await
        .context("cannot reach the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    let metrics = Arc::new(OperatorMetrics::new());
    let metrics_addr = SocketAddr::new(args.bind_address, args.metrics_port);
    let health_addr = SocketAddr::new(args.bind_address, args.health_port);
    let metrics_listener = tokio::net::TcpListener::bind(metrics_addr)
        .await
        .with_context(|| format!("cannot bind the metrics server on {metrics_addr}"))?;
    let health_listener = tokio::net::TcpListener::bind(health_addr)
        .await
        .with_context(|| format!("cannot bind the health server on {health_addr}"))?;
    // Report the bound addresses (a port of 0 picks a free one).
    let metrics_addr = metrics_listener.local_addr().unwrap_or(metrics_addr);
    let health_addr = health_listener.local_addr().unwrap_or(health_addr);
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let m = tokio::spawn(
        axum::serve(metrics_listener, metrics_router(metrics.clone()))
            .with_graceful_shutdown(stopped(stop_rx.clone()))
            .into_future(),
    );
    let h = tokio::spawn(
        axum::serve(health_listener, health_router(metrics.clone()))
            .with_graceful_shutdown(stopped(stop_rx.clone()))
            .into_future(),
    );
    let mut watch_namespaces: Vec<String> = args
        .watch_namespaces
        .iter()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect();
    watch_namespaces.sort();
    watch_namespaces.dedup();
    let scope = if watch_namespaces.is_empty() {
        "every namespace".to_string()
    } else {
        watch_namespaces.join(",")
    };
    tracing::info!(%metrics_addr, %health_addr, default_image = %args.default_image, cluster_domain = %args.cluster_domain, namespaces = %scope, "operator starting");
    let config = OperatorConfig {
        default_image: args.default_image,
        cluster_domain: args.cluster_domain,
        watch_namespaces,
        node_api: controller::NodeApi::Dns,
    };
    controller::run(client, config, metrics, termination_signal()).await;
    tracing::info!("controller stopped; shutting down");
    let _ = stop_tx.send(true);
    let _ = m.await;
    let _ = h.await;
    Ok(())
}
