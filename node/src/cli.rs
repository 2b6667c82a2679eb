//! Command-line interface of the `p2p-mpc` binary (clap).
//!
//! The node's own flags are [`NodeArgs`], which the config module owns (it layers them over
//! the config file); this module adds the subcommands and their flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::NodeArgs;
use crate::values::parse_topic;

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
    /// The vault: files sealed and shared so that no single node can read them (put, get, delete, list), through a running node's API.
    Vault {
        #[command(subcommand)]
        command: VaultCommand,
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
    /// Who may move the key to other holders or refresh it: `approvals` (the clients, or an open key's admins, who may change the policy; the default) or `roster` (a request that moves it to exactly the cluster roster's members, as the operator does when a cluster scales).
    #[arg(long, value_name = "RULE", value_parser = ["approvals", "roster"])]
    pub reshare: Option<String>,
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
        /// The signature scheme: `ed25519` (standard Ed25519 signatures) or `secp256k1-tr` (BIP340 Schnorr signatures under a Taproot output key).
        #[arg(long, value_name = "SCHEME", default_value = "ed25519", value_parser = crate::mpc::scheme::Scheme::parse)]
        scheme: crate::mpc::scheme::Scheme,
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
    /// Show one key (GET /v1/keys/{key_id}): scheme, threshold, participants, public key (for `secp256k1-tr` also the internal key), status and policy.
    Show {
        /// The key id.
        #[arg(value_name = "KEY_ID")]
        key_id: String,
        /// Also show the key's P2TR address on this Bitcoin network: `bitcoin`, `testnet`, `signet` or `regtest` (`secp256k1-tr` keys only).
        #[arg(long, value_name = "NETWORK", value_parser = crate::mpc::scheme::BitcoinNetwork::parse)]
        network: Option<crate::mpc::scheme::BitcoinNetwork>,
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
    /// Refresh a key's shares on its holders (POST /v1/keys/{key_id}/refresh): same group key, new shares; a share that leaked before is useless with the new ones.
    Refresh {
        /// The key id.
        #[arg(value_name = "KEY_ID")]
        key_id: String,
        #[command(flatten)]
        authorize: AuthorizeArgs,
        #[command(flatten)]
        api: ApiClientArgs,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Move a key to another holder set (POST /v1/keys/{key_id}/reshare): same group key and threshold; new holders get shares, dropped holders delete theirs.
    Reshare {
        /// The key id.
        #[arg(value_name = "KEY_ID")]
        key_id: String,
        /// The new holders' peer ids (repeatable or comma-separated): kept holders, new ones; those left out are dropped.
        #[arg(
            long = "holders",
            value_delimiter = ',',
            value_name = "PEER_ID",
            required = true
        )]
        holders: Vec<String>,
        #[command(flatten)]
        authorize: AuthorizeArgs,
        #[command(flatten)]
        api: ApiClientArgs,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
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

/// The input type of a new aggregation task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InputKind {
    Raw,
    Count,
    Sum,
    Histogram,
}

/// `p2p-mpc aggregate ...`: secure-sum tasks through a node's API.
#[derive(Debug, Subcommand)]
pub enum AggregateCommand {
    /// Create a secure-sum task on the participants (POST /v1/aggregations).
    Create {
        /// What a report holds: `raw` (vectors of field elements, Shamir-shared, unvalidated), or a type whose every report carries a Prio3 validity proof the participants check: `count` (0 or 1), `sum` (0 to 2^bits - 1; --bits), `histogram` (a bucket index; --buckets).
        #[arg(long = "type", value_enum, default_value_t = InputKind::Raw, value_name = "TYPE")]
        input: InputKind,
        /// Bits of a `sum` value (1 to 32).
        #[arg(long, value_name = "B", required_if_eq("input", "sum"))]
        bits: Option<u8>,
        /// Buckets of a `histogram` (2 to 1000).
        #[arg(long, value_name = "N", required_if_eq("input", "histogram"))]
        buckets: Option<u32>,
        /// Any T + 1 participants open the sum; any T of them learn nothing of an input (at least 1, below the number of participants). Required for `raw`; a validated type opens only with all n participants (T = n - 1, the default).
        #[arg(long, value_name = "T", required_if_eq("input", "raw"))]
        threshold: Option<u16>,
        /// Length of every input vector. Required for `raw`; a validated type's is its own (1, or the buckets).
        #[arg(long, value_name = "L", required_if_eq("input", "raw"))]
        length: Option<u32>,
        /// Reports needed before the sum can be collected.
        #[arg(long, value_name = "M")]
        min_reports: u64,
        /// Participant peer ids (repeatable or comma-separated); default: the node's cluster roster (without one: the node and its connected MPC peers).
        #[arg(long = "participants", value_delimiter = ',', value_name = "PEER_ID")]
        participants: Vec<String>,
        /// A client public key (hex, as `p2p-mpc client keygen` prints; repeatable): the task then takes only reports signed by a listed client, and counts each client once per batch towards --min-reports. Default: any report.
        #[arg(long = "client", value_name = "PUBLIC_KEY")]
        clients: Vec<String>,
        /// A collector public key (hex; repeatable): the task then opens a batch only for a collect signed by a listed collector, which every participant checks. Default: anyone with API access may collect.
        #[arg(long = "collector", value_name = "PUBLIC_KEY")]
        collectors: Vec<String>,
        #[command(flatten)]
        api: ApiClientArgs,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Share a private vector among the task's nodes: checks their signed keys, splits it into shares (Shamir, or Prio3 with a validity proof for a validated task), seals each share to its node with HPKE and posts the bundle (POST /v1/aggregations/{id}/reports).
    Submit {
        /// The task id.
        #[arg(long, value_name = "TASK_ID")]
        task: String,
        /// The values, comma-separated integers from 0 to 18446744069414584320 (a validated task takes one: the count, the sum's value or the histogram's bucket).
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
        /// A peer id this client trusts (repeatable or comma-separated): every participant of the task must be one of these or of --members, else nothing is sent.
        #[arg(long = "member", value_delimiter = ',', value_name = "PEER_ID")]
        member: Vec<String>,
        /// A file of the peer ids this client trusts (separated by newlines, spaces or commas; `#` comments), e.g. a cluster's members file or `kubectl get mpc NAME -o jsonpath='{.status.peers.*.peerId}'`.
        #[arg(long = "members", env = "P2P_MPC_MEMBERS_FILE", value_name = "FILE")]
        members: Option<PathBuf>,
        /// Refuse a task whose threshold t is below this (t + 1 colluding participants can read every input).
        #[arg(long, env = "P2P_MPC_MIN_THRESHOLD", value_name = "T")]
        min_threshold: Option<u16>,
        /// Client key file (as `p2p-mpc client keygen` writes) to sign the report with; a task that names clients takes only signed reports.
        #[arg(long, env = "P2P_MPC_CLIENT_KEY", value_name = "FILE")]
        client_key: Option<PathBuf>,
        #[command(flatten)]
        api: ApiClientArgs,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Reveal the sum of one batch once enough reports are in (POST /v1/aggregations/{id}/collect).
    Collect {
        /// The task id.
        #[arg(long, value_name = "TASK_ID")]
        task: String,
        /// The batch to open (default: the lowest batch a collect froze that this node has not
        /// seen opened, else the batch the node takes reports into).
        #[arg(long, value_name = "N")]
        batch: Option<u64>,
        /// Collector key file (as `p2p-mpc client keygen` writes) to sign the collect with, for a task that names collectors; the authorization is good for this node, this batch, one use and 5 minutes.
        #[arg(long, env = "P2P_MPC_COLLECTOR_KEY", value_name = "FILE")]
        client_key: Option<PathBuf>,
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

/// Subcommands of `p2p-mpc vault`.
#[derive(Debug, Subcommand)]
pub enum VaultCommand {
    /// Store a file: sealed here with a fresh key (ChaCha20-Poly1305), the key shared THRESHOLD-of-n to the holders (each share sealed to its holder), the ciphertext erasure-coded THRESHOLD-of-n across them (PUT /v1/vault/{name}).
    Put {
        /// The file's name in the vault (1 to 128 of `A-Z a-z 0-9 . _ -`).
        #[arg(value_name = "NAME")]
        name: String,
        /// The file to store (read as it is sent; any size).
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// Holders whose fragments and key shares rebuild the file (and the fewest that must stay up).
        #[arg(long, value_name = "T")]
        threshold: u16,
        /// A client public key (hex, as `p2p-mpc client keygen` prints; repeatable, at least one): who may get or delete the file.
        #[arg(long = "client", value_name = "PUBLIC_KEY", required = true)]
        clients: Vec<String>,
        /// Approvals of distinct listed clients that a get or delete needs (default 1).
        #[arg(long, value_name = "K")]
        approvals: Option<u16>,
        /// Holder peer ids, in order (repeatable or comma-separated; the node at --api must be one). Default: the peers of --member/--members. Your key shares are sealed to exactly these peers' keys, each signed by its peer.
        #[arg(long = "holders", value_delimiter = ',', value_name = "PEER_ID")]
        holders: Vec<String>,
        /// A peer id this client trusts (repeatable or comma-separated): every holder must be one of these or of --members.
        #[arg(long = "member", value_delimiter = ',', value_name = "PEER_ID")]
        member: Vec<String>,
        /// A file of the peer ids this client trusts (newlines, spaces or commas; `#` comments), e.g. the cluster's members file.
        #[arg(long = "members", env = "P2P_MPC_MEMBERS_FILE", value_name = "FILE")]
        members: Option<PathBuf>,
        #[command(flatten)]
        api: ApiClientArgs,
    },
    /// Get a file back: the holders release their key shares sealed to a key made for this request, under the approvals of the given client keys; the file is rebuilt, checked and opened here (GET /v1/vault/{name}).
    Get {
        /// The file's name.
        #[arg(value_name = "NAME")]
        name: String,
        /// A client key file (repeatable): each signs an approval of this request.
        #[arg(long = "client-key", value_name = "FILE", required = true)]
        client_keys: Vec<PathBuf>,
        /// Where to write the file (written to FILE.part, mode 0600, renamed when complete and checked; refuses to overwrite).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// A peer id this client trusts (repeatable or comma-separated): every holder of the file, and every signer of a released share, must be one of these or of --members.
        #[arg(long = "member", value_delimiter = ',', value_name = "PEER_ID")]
        member: Vec<String>,
        /// A file of the peer ids this client trusts (newlines, spaces or commas; `#` comments). --member or --members is required.
        #[arg(long = "members", env = "P2P_MPC_MEMBERS_FILE", value_name = "FILE")]
        members: Option<PathBuf>,
        /// The file id `vault put` printed: the node must serve exactly that file.
        #[arg(long, value_name = "HEX")]
        file_id: Option<String>,
        #[command(flatten)]
        api: ApiClientArgs,
    },
    /// Delete a file on every holder, under the approvals of the given client keys (DELETE /v1/vault/{name}).
    Delete {
        /// The file's name.
        #[arg(value_name = "NAME")]
        name: String,
        /// A client key file (repeatable).
        #[arg(long = "client-key", value_name = "FILE", required = true)]
        client_keys: Vec<PathBuf>,
        #[command(flatten)]
        api: ApiClientArgs,
    },
    /// List the files the node holds (GET /v1/vault).
    List {
        #[command(flatten)]
        api: ApiClientArgs,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
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
    /// CA certificate(s) (PEM) that an https:// API's certificate must chain to (the only
    /// ones trusted; needed for an https:// API).
    #[arg(long, env = "P2P_MPC_API_CA", value_name = "FILE")]
    pub api_ca: Option<PathBuf>,
}
