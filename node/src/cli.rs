//! Command-line interface of the `p2p-mpc` binary (clap).
//!
//! Node flags have their defaults declared here so that `--help` shows them; whether a value
//! was typed, came from the environment or is only the default is read back from clap's
//! `ValueSource`, so the config file can sit between flags and defaults (see `config.rs`).

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use libp2p::{Multiaddr, PeerId};

use crate::values::{parse_max_message_size, parse_peer_multiaddr, parse_topic};

/// Default size limit of one gossip message (1 MiB).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1024 * 1024;

/// `p2p-mpc`: run a node, or talk to one.
#[derive(Debug, Parser)]
#[command(
    name = "p2p-mpc",
    version,
    about = "A peer-to-peer multi-party computation node (libp2p gossipsub, Kademlia, HTTP API).",
    long_about = None,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Flags of the node (used when no subcommand is given).
    #[command(flatten)]
    pub node: NodeArgs,

    /// Subcommand; without one, the command runs a node.
    #[command(subcommand)]
    pub command: Option<Command>,
}

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

    /// Maximum size in bytes of one gossip message.
    #[arg(long, env = "P2P_MPC_MAX_MESSAGE_SIZE", default_value_t = DEFAULT_MAX_MESSAGE_SIZE, value_name = "BYTES",
          value_parser = parse_max_message_size)]
    pub max_message_size: usize,

    /// This node's name in the config file's `pods` section, which then supplies its bootnodes.
    #[arg(long, env = "P2P_MPC_POD_NAME", value_name = "NAME")]
    pub pod_name: Option<String>,
}

/// Log levels accepted by `--log-level` and `log_level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Everything, including per-message detail.
    Trace,
    /// Diagnostic detail.
    Debug,
    /// Normal operation.
    Info,
    /// Problems the node recovers from.
    Warn,
    /// Failures only.
    Error,
}

impl LogLevel {
    /// The level as a `tracing` filter directive.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// Subcommands of `p2p-mpc`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate an Ed25519 identity key file and print its peer id.
    Keygen {
        /// Where to write the key (refuses to overwrite an existing file).
        #[arg(short = 'o', long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print the peer id of an identity key file.
    PeerId {
        /// The key file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Show a running node's status (GET /v1/status).
    Status {
        /// Print the raw JSON answer.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiClientArgs,
    },
    /// Publish a text message on a topic through a running node's API.
    Publish {
        /// Topic to publish on.
        #[arg(value_name = "TOPIC", value_parser = parse_topic)]
        topic: String,
        /// The message text.
        #[arg(value_name = "TEXT")]
        text: String,
        #[command(flatten)]
        api: ApiClientArgs,
    },
    /// Client signing keys: make one, show its public key, authorize a signing request.
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// Threshold keys: create (DKG), list, sign, through a running node's API.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Secure aggregation: create a sum task, submit a private vector, collect the sum, through a running node's API.
    Aggregate {
        #[command(subcommand)]
        command: AggregateCommand,
    },
    /// Start N local nodes on loopback, mesh them, run a demo DKG, signature and secure sum, and keep them running until Ctrl-C.
    Devnet {
        /// Number of nodes.
        #[arg(long, default_value_t = 3, value_name = "N", value_parser = clap::value_parser!(u16).range(2..=32))]
        nodes: u16,
        /// Threshold of the demo key (default: a majority of the nodes).
        #[arg(long, value_name = "T")]
        threshold: Option<u16>,
        /// Directory for the nodes' data, keys and logs (default: a new directory under the system temp dir).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// A key's signing policy on the command line.
#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    /// Public key (hex) of a client that may authorize signatures (repeatable or comma-separated); the key's policy lists these.
    #[arg(
        long = "client",
        value_delimiter = ',',
        value_name = "PUBKEY",
        required_unless_present = "open",
        conflicts_with = "open"
    )]
    pub clients: Vec<String>,
    /// How many distinct clients must authorize each signature (default 1).
    #[arg(long, value_name = "K")]
    pub approvals: Option<u16>,
    /// An open key: anyone who can call a holder's API may have it sign.
    #[arg(long)]
    pub open: bool,
    /// Policy rule: longest message that may be signed, in bytes.
    #[arg(long, value_name = "BYTES")]
    pub max_message_bytes: Option<u32>,
    /// Policy rule: every message must start with these bytes (hex).
    #[arg(long, value_name = "HEX")]
    pub message_prefix: Option<String>,
    /// Policy rule: most signatures per minute on each holder.
    #[arg(long, value_name = "N")]
    pub max_signatures_per_minute: Option<u32>,
    /// With --open: public key (hex) of an admin who may approve changes of the key's policy (repeatable or comma-separated); an open key without admins keeps its policy for good.
    #[arg(
        long = "admin",
        value_delimiter = ',',
        value_name = "PUBKEY",
        requires = "open"
    )]
    pub admins: Vec<String>,
    /// How many distinct admins must approve a policy change (default 1).
    #[arg(long, value_name = "K", requires = "admins")]
    pub admin_approvals: Option<u16>,
}

/// `p2p-mpc client ...`: the Ed25519 keys that API clients authorize signing requests with.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Generate a client key file (mode 0600, refuses to overwrite) and print its public key.
    Keygen {
        /// Where to write the key.
        #[arg(short = 'o', long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print the public key (hex) of a client key file.
    PublicKey {
        /// The key file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Print one authorization (JSON) of signing MESSAGE with KEY_ID, for callers that sign elsewhere.
    Authorize {
        /// The client key file.
        #[arg(long, value_name = "FILE")]
        client_key: PathBuf,
        /// The threshold key's id.
        #[arg(long, value_name = "ID")]
        key_id: String,
        /// The message, hex.
        #[arg(long, value_name = "HEX")]
        message: String,
        /// Peer id of the node the request will be sent to (its `GET /v1/status` shows it): only that node may coordinate it.
        #[arg(long, value_name = "PEER_ID")]
        coordinator: String,
        /// Seconds until the authorization expires (1 to 600).
        #[arg(long, value_name = "SECONDS", default_value_t = 60,
              value_parser = clap::value_parser!(u64).range(1..=600))]
        ttl: u64,
    },
}

/// The client keys that authorize a request under a key's current policy.
#[derive(Debug, Args)]
pub struct AuthorizeArgs {
    /// Client key file authorizing the request under the key's current policy (repeatable, one per approval; none for an open key).
    #[arg(long = "client-key", value_name = "FILE")]
    pub client_keys: Vec<PathBuf>,
    /// Seconds until the authorizations expire (1 to 600).
    #[arg(long, value_name = "SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    pub ttl: u64,
}

/// `p2p-mpc keys ...`: threshold keys through a node's API.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Run a distributed key generation (POST /v1/keys) coordinated by the node.
    Create {
        /// Signatures need this many participants (at least 2).
        #[arg(long, value_name = "T")]
        threshold: u16,
        /// Participant peer ids (repeatable or comma-separated); default: the node's cluster roster (without one: the node and its connected MPC peers).
        #[arg(long = "participants", value_delimiter = ',', value_name = "PEER_ID")]
        participants: Vec<String>,
        #[command(flatten)]
        policy: PolicyArgs,
        #[command(flatten)]
        api: ApiClientArgs,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// List the keys the node holds a share of (GET /v1/keys).
    List {
        #[command(flatten)]
        api: ApiClientArgs,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Replace a key's signing policy (POST /v1/keys/{key_id}/policy), approved by client keys under its current policy.
    SetPolicy {
        /// The key id.
        #[arg(value_name = "KEY_ID")]
        key_id: String,
        #[command(flatten)]
        policy: PolicyArgs,
        #[command(flatten)]
        authorize: AuthorizeArgs,
        #[command(flatten)]
        api: ApiClientArgs,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Give a key stored before signing policies existed (legacy-open) a policy, offline, in a holder's data directory: it stays open, fixed for good or changeable by the admins given. Run it with the node stopped, on every holder, with the same arguments.
    ConvertLegacy {
        /// The key id.
        #[arg(value_name = "KEY_ID")]
        key_id: String,
        /// The holder's data directory (--data-dir of its node).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Public key (hex) of an admin who may approve changes of the key's policy (repeatable or comma-separated); without any, the key's policy is fixed for good.
        #[arg(long = "admin", value_delimiter = ',', value_name = "PUBKEY")]
        admins: Vec<String>,
        /// How many distinct admins must approve a policy change (default 1).
        #[arg(long, value_name = "K", requires = "admins")]
        admin_approvals: Option<u16>,
    },
    /// Sign a message with a key (POST /v1/keys/{key_id}/sign).
    Sign {
        /// The key id.
        #[arg(value_name = "KEY_ID")]
        key_id: String,
        /// The message, hex.
        #[arg(long, value_name = "HEX")]
        message: String,
        #[command(flatten)]
        authorize: AuthorizeArgs,
        #[command(flatten)]
        api: ApiClientArgs,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
}

/// `p2p-mpc aggregate ...`: secure-sum tasks through a node's API.
#[derive(Debug, Subcommand)]
pub enum AggregateCommand {
    /// Create a secure-sum task on the participants (POST /v1/aggregations).
    Create {
        /// Any T + 1 participants open the sum; any T of them learn nothing of an input (at least 1, below the number of participants).
        #[arg(long, value_name = "T")]
        threshold: u16,
        /// Length of every input vector.
        #[arg(long, value_name = "L")]
        length: u32,
        /// Reports needed before the sum can be collected.
        #[arg(long, value_name = "M")]
        min_reports: u64,
        /// Participant peer ids (repeatable or comma-separated); default: the node's cluster roster (without one: the node and its connected MPC peers).
        #[arg(long = "participants", value_delimiter = ',', value_name = "PEER_ID")]
        participants: Vec<String>,
        #[command(flatten)]
        api: ApiClientArgs,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Share a private vector among the task's nodes: checks their signed keys, splits it into Shamir shares, seals each share to its node with HPKE and posts the bundle (POST /v1/aggregations/{id}/reports).
    Submit {
        /// The task id.
        #[arg(long, value_name = "TASK_ID")]
        task: String,
        /// The values, comma-separated integers from 0 to 18446744069414584320.
        #[arg(
            long,
            value_name = "V1,V2,...",
            conflicts_with = "file",
            required_unless_present = "file"
        )]
        values: Option<String>,
        /// A file of values separated by commas, spaces or newlines.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        #[command(flatten)]
        api: ApiClientArgs,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Reveal the sum once enough reports are in (POST /v1/aggregations/{id}/collect).
    Collect {
        /// The task id.
        #[arg(long, value_name = "TASK_ID")]
        task: String,
        #[command(flatten)]
        api: ApiClientArgs,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
}

/// How client subcommands print answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// The node's JSON answer.
    Json,
    /// A readable table.
    Table,
}

/// How the client subcommands reach a node's HTTP API.
#[derive(Debug, Clone, Args)]
pub struct ApiClientArgs {
    /// Base URL of the node's HTTP API.
    #[arg(
        long = "api",
        env = "P2P_MPC_API",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    pub url: String,
    /// File holding the API bearer token.
    #[arg(long, env = "P2P_MPC_API_TOKEN_FILE", value_name = "FILE")]
    pub api_token_file: Option<PathBuf>,
}

fn parse_cli_peer_id(s: &str) -> Result<PeerId, String> {
    s.trim()
        .parse()
        .map_err(|e| format!("`{s}` is not a peer id ({e}); expected e.g. 12D3KooW..."))
}

fn parse_cli_peer_addr(s: &str) -> Result<Multiaddr, String> {
    parse_peer_multiaddr(s).map(|(_, addr)| addr)
}
