//! The flags of a running node, which the command line fills (clap) and [`super::resolve`]
//! layers over the config file. Defaults are declared here so that `--help` shows them;
//! whether a value was typed, came from the environment or is only the default is read back
//! from clap's `ValueSource`, so the config file can sit between flags and defaults.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;
use libp2p::{Multiaddr, PeerId};

use crate::tracing_config::LogLevel;
use crate::values::{parse_max_message_size, parse_peer_multiaddr, parse_topic};

/// Default size limit of one gossip message (1 MiB).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1024 * 1024;

/// Every flag of a running node. Each one can also be set by `P2P_MPC_<FLAG>`.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// YAML config file; flags and environment variables override its keys.
    #[arg(short = 'c', long, env = "P2P_MPC_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// TCP port for libp2p (0 picks a free port).
    #[arg(
        short = 'p',
        long,
        env = "P2P_MPC_NETWORK_PORT",
        default_value_t = 0,
        value_name = "PORT"
    )]
    pub network_port: u16,

    /// Address the libp2p listeners bind to.
    #[arg(
        long,
        env = "P2P_MPC_LISTEN_ADDRESS",
        default_value = "0.0.0.0",
        value_name = "IP"
    )]
    pub listen_address: IpAddr,

    /// Port of an additional WebSocket listener (off unless set; 0 picks a free port).
    #[arg(long, env = "P2P_MPC_WS_PORT", value_name = "PORT")]
    pub ws_port: Option<u16>,

    /// UDP port of a QUIC (v1) listener beside TCP (off unless set; 0 picks a free port).
    #[arg(long, env = "P2P_MPC_QUIC_PORT", value_name = "PORT")]
    pub quic_port: Option<u16>,

    /// Gossipsub topic to join (repeatable; comma-separated in the environment).
    #[arg(short = 't', long = "topic", env = "P2P_MPC_TOPIC", value_delimiter = ',', value_name = "TOPIC", value_parser = parse_topic)]
    pub topics: Vec<String>,

    /// Peer to dial at start and keep connected, as a multiaddr ending in /p2p/<peer id> (repeatable).
    #[arg(long = "bootnode", env = "P2P_MPC_BOOTNODE", value_delimiter = ',', value_name = "MULTIADDR", value_parser = parse_cli_peer_addr)]
    pub bootnodes: Vec<Multiaddr>,

    /// Peer used only to seed Kademlia discovery, not kept connected (repeatable).
    #[arg(long = "seed-node", env = "P2P_MPC_SEED_NODE", value_delimiter = ',', value_name = "MULTIADDR", value_parser = parse_cli_peer_addr)]
    pub seed_nodes: Vec<Multiaddr>,

    /// Peer id of a member of this node's cluster (repeatable): with a roster, only members may send it MPC messages or take part in its keys and tasks.
    #[arg(long = "cluster-member", env = "P2P_MPC_CLUSTER_MEMBER", value_delimiter = ',', value_name = "PEER_ID", value_parser = parse_cli_peer_id)]
    pub cluster_members: Vec<PeerId>,

    /// File of cluster member peer ids, one a line (# comments), added to --cluster-member; re-read while the node runs.
    #[arg(long, env = "P2P_MPC_CLUSTER_MEMBERS_FILE", value_name = "FILE")]
    pub cluster_members_file: Option<PathBuf>,

    /// libp2p key file (protobuf encoding); created with mode 0600 if missing. Without it the key is ephemeral.
    #[arg(long, env = "P2P_MPC_IDENTITY_KEY_PATH", value_name = "FILE")]
    pub identity_key_path: Option<PathBuf>,

    /// Port of /metrics, /healthz and /readyz (0 picks a free port).
    #[arg(
        short = 'm',
        long,
        env = "P2P_MPC_METRICS_PORT",
        default_value_t = 9090,
        value_name = "PORT"
    )]
    pub metrics_port: u16,

    /// Address the metrics server binds to.
    #[arg(
        long,
        env = "P2P_MPC_METRICS_ADDRESS",
        default_value = "0.0.0.0",
        value_name = "IP"
    )]
    pub metrics_address: IpAddr,

    /// Log level (RUST_LOG, when set, refines it).
    #[arg(short = 'l', long, env = "P2P_MPC_LOG_LEVEL", value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,

    /// Export spans over OTLP gRPC to Jaeger.
    #[arg(short = 'j', long, env = "P2P_MPC_ENABLE_JAEGER")]
    pub enable_jaeger: bool,

    /// Host of the OTLP gRPC receiver (Jaeger).
    #[arg(
        long,
        env = "P2P_MPC_JAEGER_HOST",
        default_value = "localhost",
        value_name = "HOST"
    )]
    pub jaeger_host: String,

    /// Port of the OTLP gRPC receiver (Jaeger).
    #[arg(
        long,
        env = "P2P_MPC_JAEGER_PORT",
        default_value_t = 4317,
        value_name = "PORT"
    )]
    pub jaeger_port: u16,

    /// Write spans and events as JSON lines to --json-trace-file.
    #[arg(long, env = "P2P_MPC_JSON_TRACE")]
    pub json_trace: bool,

    /// File the JSON trace is appended to (parent directories are created).
    #[arg(
        long,
        env = "P2P_MPC_JSON_TRACE_FILE",
        default_value = "./logs/traces.json",
        value_name = "FILE"
    )]
    pub json_trace_file: PathBuf,

    /// Port of the HTTP API (0 picks a free port).
    #[arg(
        long,
        env = "P2P_MPC_API_PORT",
        default_value_t = 8080,
        value_name = "PORT"
    )]
    pub api_port: u16,

    /// Address the HTTP API binds to.
    #[arg(
        long,
        env = "P2P_MPC_API_ADDRESS",
        default_value = "127.0.0.1",
        value_name = "IP"
    )]
    pub api_address: IpAddr,

    /// File holding the bearer token every /v1 request must carry.
    #[arg(long, env = "P2P_MPC_API_TOKEN_FILE", value_name = "FILE")]
    pub api_token_file: Option<PathBuf>,

    /// Certificate chain (PEM, leaf first) to serve the HTTP API over HTTPS; needs
    /// --api-tls-key.
    #[arg(long, env = "P2P_MPC_API_TLS_CERT", value_name = "FILE")]
    pub api_tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --api-tls-cert.
    #[arg(long, env = "P2P_MPC_API_TLS_KEY", value_name = "FILE")]
    pub api_tls_key: Option<PathBuf>,

    /// Directory for the node's persistent state (created at start).
    #[arg(
        long,
        env = "P2P_MPC_DATA_DIR",
        default_value = "./data",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,

    /// Maximum number of established connections.
    #[arg(long, env = "P2P_MPC_MAX_CONNECTIONS", default_value_t = 128, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_connections: u32,

    /// Most HTTP API requests served at once; more are answered 503 `overloaded` at once.
    #[arg(long, env = "P2P_MPC_API_MAX_CONCURRENT_REQUESTS", default_value_t = 256, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub api_max_concurrent_requests: u32,

    /// Deadline of one round of an MPC session, in seconds (raise it for large DKGs on slow
    /// machines: every participant of a t-of-n DKG checks n - 1 shares against t commitments).
    #[arg(long, env = "P2P_MPC_MPC_ROUND_TIMEOUT", default_value_t = crate::mpc::DEFAULT_ROUND_TIMEOUT.as_secs(), value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=600))]
    pub mpc_round_timeout: u64,

    /// Most MPC sessions that invitations from one peer may have running on this node at once.
    #[arg(long, env = "P2P_MPC_MPC_MAX_SESSIONS_PER_PEER", default_value_t = 16, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub mpc_max_sessions_per_peer: u32,

    /// Most keys held on this node that one peer created (coordinated), this node included;
    /// further DKG invitations from that peer are refused.
    #[arg(long, env = "P2P_MPC_MPC_MAX_KEYS_PER_CREATOR", default_value_t = 1000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub mpc_max_keys_per_creator: u32,

    /// Most aggregation tasks held on this node that one peer created, this node included;
    /// further task invitations from that peer are refused.
    #[arg(long, env = "P2P_MPC_MPC_MAX_TASKS_PER_CREATOR", default_value_t = 100, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub mpc_max_tasks_per_creator: u32,

    /// Most MiB of one peer's inbound MPC messages that one session may hold (waiting in its
    /// inbox or kept for a later round); more are answered busy.
    #[arg(long, env = "P2P_MPC_MPC_MAX_HELD_MIB_PER_SESSION_PEER", default_value_t = 4, value_name = "MIB",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub mpc_max_held_mib_per_session_peer: u32,

    /// Most MiB of one peer's inbound MPC messages that all sessions may hold together.
    #[arg(long, env = "P2P_MPC_MPC_MAX_HELD_MIB_PER_PEER", default_value_t = 16, value_name = "MIB",
          value_parser = clap::value_parser!(u32).range(1..=16_384))]
    pub mpc_max_held_mib_per_peer: u32,

    /// Most MiB of inbound MPC messages that all sessions may hold together.
    #[arg(long, env = "P2P_MPC_MPC_MAX_HELD_MIB", default_value_t = 128, value_name = "MIB",
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub mpc_max_held_mib: u32,

    /// Most MiB of inbound MPC requests being read (unfinished), from all peers together; a
    /// request that would pass it is dropped while it is read.
    #[arg(long, env = "P2P_MPC_MPC_MAX_READING_MIB", default_value_t = 64, value_name = "MIB",
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub mpc_max_reading_mib: u32,

    /// Presignatures kept per key and holder (signing commitments made ahead of time, in
    /// memory only): a signature this node coordinates takes one round trip while it has
    /// them, two when they ran out. As a holder, the most nonces kept per key for one
    /// coordinator. 0 turns presigning off.
    #[arg(long, env = "P2P_MPC_PRESIGN_POOL_SIZE", default_value_t = 16, value_name = "N",
          value_parser = clap::value_parser!(u32).range(0..=256))]
    pub presign_pool_size: u32,

    /// A holder's pool is refilled (in the background) when it has fewer presignatures
    /// left than this; at most presign_pool_size.
    #[arg(long, env = "P2P_MPC_PRESIGN_LOW_WATER", default_value_t = 8, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub presign_low_water: u32,

    /// Maximum size in bytes of one gossip message.
    #[arg(long, env = "P2P_MPC_MAX_MESSAGE_SIZE", default_value_t = DEFAULT_MAX_MESSAGE_SIZE, value_name = "BYTES",
          value_parser = parse_max_message_size)]
    pub max_message_size: usize,

    /// This node's name in the config file's `pods` section, which then supplies its bootnodes.
    #[arg(long, env = "P2P_MPC_POD_NAME", value_name = "NAME")]
    pub pod_name: Option<String>,
}

fn parse_cli_peer_id(s: &str) -> Result<PeerId, String> {
    s.trim()
        .parse()
        .map_err(|e| format!("`{s}` is not a peer id ({e}); expected e.g. 12D3KooW..."))
}

fn parse_cli_peer_addr(s: &str) -> Result<Multiaddr, String> {
    parse_peer_multiaddr(s).map(|(_, addr)| addr)
}
