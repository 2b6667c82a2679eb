//! Node configuration: a YAML file merged with CLI flags and environment variables.
//!
//! Priority per key: flag or `P2P_MPC_*` variable > config file > built-in default. Every
//! problem is reported as a [`ConfigError`] naming the file, the key and what was expected,
//! before anything is started.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use clap::ArgMatches;
use clap::parser::ValueSource;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

pub mod args;

pub use crate::values::PeerAddr;
pub use args::{DEFAULT_MAX_MESSAGE_SIZE, NodeArgs};

use crate::tracing_config::LogLevel;
use crate::values::{check_max_message_size, parse_peer_multiaddr, parse_topic};

/// A configuration problem; the program exits with code 2 on any of them.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// YAML syntax error, wrong type or unknown key (serde_yaml names key, line and column).
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A key whose value has the right type but is not acceptable.
    #[error("{origin}: key `{key}`: {message}")]
    Invalid {
        origin: Origin,
        key: String,
        message: String,
    },
}

/// Where a value came from, for error messages.
#[derive(Debug, Clone)]
pub enum Origin {
    /// The config file at this path.
    File(PathBuf),
    /// A command-line flag or environment variable.
    CommandLine,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(p) => write!(f, "config file {}", p.display()),
            Origin::CommandLine => write!(f, "command line"),
        }
    }
}

/// The config file's keys; every key is optional and unknown keys are refused.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub network_port: Option<u16>,
    pub listen_address: Option<IpAddr>,
    pub ws_port: Option<u16>,
    pub quic_port: Option<u16>,
    pub topics: Option<Vec<String>>,
    pub bootnodes: Option<Vec<String>>,
    pub seed_nodes: Option<Vec<String>>,
    pub cluster_members: Option<Vec<String>>,
    pub cluster_members_file: Option<PathBuf>,
    pub identity_key_path: Option<PathBuf>,
    pub metrics_port: Option<u16>,
    pub metrics_address: Option<IpAddr>,
    pub log_level: Option<LogLevel>,
    pub enable_jaeger: Option<bool>,
    pub jaeger_host: Option<String>,
    pub jaeger_port: Option<u16>,
    pub json_trace: Option<bool>,
    pub json_trace_file: Option<PathBuf>,
    pub api_port: Option<u16>,
    pub api_address: Option<IpAddr>,
    pub api_token_file: Option<PathBuf>,
    pub api_tls_cert: Option<PathBuf>,
    pub api_tls_key: Option<PathBuf>,
    pub api_max_concurrent_requests: Option<u32>,
    pub data_dir: Option<PathBuf>,
    pub max_connections: Option<u32>,
    pub max_message_size: Option<usize>,
    pub mpc_round_timeout: Option<u64>,
    pub mpc_max_sessions_per_peer: Option<u32>,
    pub mpc_max_keys_per_creator: Option<u32>,
    pub mpc_max_tasks_per_creator: Option<u32>,
    pub mpc_max_held_mib_per_session_peer: Option<u32>,
    pub mpc_max_held_mib_per_peer: Option<u32>,
    pub mpc_max_held_mib: Option<u32>,
    pub mpc_max_reading_mib: Option<u32>,
    pub presign_pool_size: Option<u32>,
    pub presign_low_water: Option<u32>,
    /// Content rules of joined topics, by topic (config file only).
    pub topic_rules: Option<BTreeMap<String, crate::network::topic_rules::TopicRuleSpec>>,
    /// Per-node settings by node name (`--pod-name`), e.g. written by the operator.
    pub pods: Option<BTreeMap<String, PodConfig>>,
}

/// Settings of one named node in the config file's `pods` section.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PodConfig {
    /// This node's bootnodes; they replace the top-level `bootnodes`.
    pub bootnodes: Option<Vec<String>>,
}

impl FileConfig {
    /// Reads and parses a config file. An empty file (or one of only comments) is an empty config.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses config text; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let parse_err = |e: serde_yaml::Error| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(parse_err)?;
        if value.is_null() {
            return Ok(Self::default());
        }
        if !value.is_mapping() {
            return Err(ConfigError::Parse {
                path: path.to_path_buf(),
                message: "expected a mapping of keys to values at the top level".into(),
            });
        }
        serde_yaml::from_str(text).map_err(parse_err)
    }
}

/// The bearer token of the HTTP API. Its `Debug` never shows the token.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl ApiToken {
    /// The secret itself, for comparison with a request's header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

/// The API's TLS setup, loaded from its certificate and key files. Its `Debug` shows the
/// files, never the key.
#[derive(Clone)]
pub struct ApiTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub config: std::sync::Arc<rustls::ServerConfig>,
}

impl fmt::Debug for ApiTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiTls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// The node's resolved configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub config_file: Option<PathBuf>,
    pub network_port: u16,
    pub listen_address: IpAddr,
    pub ws_port: Option<u16>,
    /// UDP port of the QUIC listener; `None`: QUIC is off.
    pub quic_port: Option<u16>,
    pub topics: Vec<String>,
    /// Content rules of the joined topics.
    pub topic_rules: crate::network::topic_rules::TopicRules,
    pub bootnodes: Vec<PeerAddr>,
    pub seed_nodes: Vec<PeerAddr>,
    /// Roster members given as flags or in the config file.
    pub cluster_members: Vec<PeerId>,
    /// File of roster members, re-read while the node runs.
    pub cluster_members_file: Option<PathBuf>,
    pub identity_key_path: Option<PathBuf>,
    pub metrics_port: u16,
    pub metrics_address: IpAddr,
    pub log_level: LogLevel,
    pub enable_jaeger: bool,
    pub jaeger_host: String,
    pub jaeger_port: u16,
    pub json_trace: bool,
    pub json_trace_file: PathBuf,
    pub api_port: u16,
    pub api_address: IpAddr,
    pub api_token_file: Option<PathBuf>,
    pub api_token: Option<ApiToken>,
    /// HTTPS for the API (from `api_tls_cert` and `api_tls_key`); none: plain HTTP.
    pub api_tls: Option<ApiTls>,
    /// Most API requests served at once.
    pub api_max_concurrent_requests: usize,
    pub data_dir: PathBuf,
    pub max_connections: u32,
    pub max_message_size: usize,
    /// Deadline of one MPC round.
    pub mpc_round_timeout: std::time::Duration,
    /// Most sessions one peer's invitations may have running here.
    pub mpc_max_sessions_per_peer: usize,
    /// Most keys held here that one peer created (coordinated).
    pub mpc_max_keys_per_creator: usize,
    /// Most aggregation tasks held here that one peer created.
    pub mpc_max_tasks_per_creator: usize,
    /// Byte budgets of the inbound messages that sessions hold.
    pub mpc_held_budgets: crate::mpc::session::Budgets,
    /// Bound on the MiB of inbound MPC requests being read.
    pub mpc_max_reading_mib: u32,
    /// Presignature pool sizes.
    pub presign: crate::mpc::sign::presigned::PresignSettings,
    /// The node's name in the `pods` section, if given.
    pub pod_name: Option<String>,
}

/// Merges flags (`args`, with `matches` telling where each value came from) over the file over defaults.
pub fn resolve(args: &NodeArgs, matches: &ArgMatches) -> Result<NodeConfig, ConfigError> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let file_origin = args
        .config
        .clone()
        .map(Origin::File)
        .unwrap_or(Origin::CommandLine);
    let from_cli = |id: &str| {
        matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    };

    // A value from the flag when one was given, else the file's, else the flag's default.
    macro_rules! pick {
        ($field:ident) => {
            if from_cli(stringify!($field)) {
                args.$field.clone()
            } else {
                file.$field.clone().unwrap_or_else(|| args.$field.clone())
            }
        };
    }
    // Same for keys without a default (`Option` in both places).
    macro_rules! pick_opt {
        ($field:ident) => {
            if from_cli(stringify!($field)) {
                args.$field.clone()
            } else {
                file.$field.clone().or_else(|| args.$field.clone())
            }
        };
    }

    let invalid = |origin: &Origin, key: String, message: String| ConfigError::Invalid {
        origin: origin.clone(),
        key,
        message,
    };

    let peer_list = |id: &str,
                     key: &str,
                     cli: &[Multiaddr],
                     from_file: &Option<Vec<String>>|
     -> Result<Vec<PeerAddr>, ConfigError> {
        if from_cli(id) || from_file.is_none() {
            return cli
                .iter()
                .map(|a| {
                    parse_peer_multiaddr(&a.to_string())
                        .map(|(peer_id, addr)| PeerAddr { peer_id, addr })
                        .map_err(|m| invalid(&Origin::CommandLine, key.into(), m))
                })
                .collect();
        }
        from_file
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, s)| {
                parse_peer_multiaddr(s)
                    .map(|(peer_id, addr)| PeerAddr { peer_id, addr })
                    .map_err(|m| invalid(&file_origin, format!("{key}[{i}]"), m))
            })
            .collect()
    };

    let topics = if from_cli("topics") {
        args.topics.clone()
    } else {
        let topics = file.topics.clone().unwrap_or_default();
        for (i, t) in topics.iter().enumerate() {
            parse_topic(t).map_err(|m| invalid(&file_origin, format!("topics[{i}]"), m))?;
        }
        topics
    };
    let mut unique = std::collections::HashSet::new();
    let topics: Vec<String> = topics
        .into_iter()
        .filter(|t| unique.insert(t.clone()))
        .collect();

    let pod_entry = match (&args.pod_name, &file.pods) {
        (Some(pod), Some(pods)) if !from_cli("bootnodes") => match pods.get(pod) {
            Some(entry) => Some((pod.clone(), entry.clone())),
            None => {
                let known: Vec<&str> = pods.keys().map(String::as_str).collect();
                return Err(invalid(
                    &file_origin,
                    "pods".into(),
                    format!(
                        "no entry for this node's name `{pod}` (from --pod-name / P2P_MPC_POD_NAME); the file has: {}",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
        },
        _ => None,
    };
    let bootnodes = match &pod_entry {
        Some((pod, entry)) => peer_list(
            "bootnodes",
            &format!("pods.{pod}.bootnodes"),
            &args.bootnodes,
            &Some(entry.bootnodes.clone().unwrap_or_default()),
        )?,
        None => peer_list("bootnodes", "bootnodes", &args.bootnodes, &file.bootnodes)?,
    };
    let seed_nodes = peer_list(
        "seed_nodes",
        "seed_nodes",
        &args.seed_nodes,
        &file.seed_nodes,
    )?;

    let origin_of = |id: &str| {
        if from_cli(id) {
            Origin::CommandLine
        } else {
            file_origin.clone()
        }
    };

    let cluster_members: Vec<PeerId> = match &file.cluster_members {
        Some(list) if !from_cli("cluster_members") => list
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.trim().parse::<PeerId>().map_err(|e| {
                    invalid(
                        &file_origin,
                        format!("cluster_members[{i}]"),
                        format!("`{s}` is not a peer id ({e}); expected e.g. 12D3KooW..."),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
        _ => args.cluster_members.clone(),
    };
    let cluster_members_file: Option<PathBuf> = pick_opt!(cluster_members_file);
    if let Some(path) = &cluster_members_file {
        crate::roster::read_members(path).map_err(|m| {
            invalid(
                &origin_of("cluster_members_file"),
                "cluster_members_file".into(),
                m,
            )
        })?;
    }

    let max_connections: u32 = pick!(max_connections);
    if max_connections == 0 {
        return Err(invalid(
            &origin_of("max_connections"),
            "max_connections".into(),
            "must be at least 1".into(),
        ));
    }
    let max_message_size: usize = pick!(max_message_size);
    check_max_message_size(max_message_size)
        .map_err(|m| invalid(&origin_of("max_message_size"), "max_message_size".into(), m))?;

    // Topic rules live in the config file only; relative schema paths start at its directory.
    let mut topic_rules = BTreeMap::new();
    for (topic, spec) in file.topic_rules.iter().flatten() {
        let key = format!("topic_rules.{topic}");
        if !topics.contains(topic) {
            return Err(invalid(
                &file_origin,
                key,
                format!(
                    "`{topic}` is not a joined topic (joined: {}{}); add it to topics",
                    if topics.is_empty() {
                        "none".to_string()
                    } else {
                        topics.join(", ")
                    },
                    if from_cli("topics") {
                        ", from --topic / P2P_MPC_TOPIC, which replace the file's topics"
                    } else {
                        ""
                    }
                ),
            ));
        }
        let base = args
            .config
            .as_deref()
            .and_then(Path::parent)
            .unwrap_or(Path::new("."));
        let rule = crate::network::topic_rules::TopicRule::load(spec, base, max_message_size)
            .map_err(|m| invalid(&file_origin, key, m))?;
        topic_rules.insert(topic.clone(), rule);
    }
    let topic_rules = crate::network::topic_rules::TopicRules::new(topic_rules);

    let api_max_concurrent_requests: u32 = pick!(api_max_concurrent_requests);
    if !(1..=65536).contains(&api_max_concurrent_requests) {
        return Err(invalid(
            &origin_of("api_max_concurrent_requests"),
            "api_max_concurrent_requests".into(),
            format!("must be from 1 to 65536, not {api_max_concurrent_requests}"),
        ));
    }

    let mpc_round_timeout: u64 = pick!(mpc_round_timeout);
    if !(1..=600).contains(&mpc_round_timeout) {
        return Err(invalid(
            &origin_of("mpc_round_timeout"),
            "mpc_round_timeout".into(),
            format!("must be from 1 to 600 seconds, not {mpc_round_timeout}"),
        ));
    }

    let mpc_max_sessions_per_peer: u32 = pick!(mpc_max_sessions_per_peer);
    if !(1..=4096).contains(&mpc_max_sessions_per_peer) {
        return Err(invalid(
            &origin_of("mpc_max_sessions_per_peer"),
            "mpc_max_sessions_per_peer".into(),
            format!("must be from 1 to 4096, not {mpc_max_sessions_per_peer}"),
        ));
    }

    let mpc_max_keys_per_creator: u32 = pick!(mpc_max_keys_per_creator);
    if !(1..=1_000_000).contains(&mpc_max_keys_per_creator) {
        return Err(invalid(
            &origin_of("mpc_max_keys_per_creator"),
            "mpc_max_keys_per_creator".into(),
            format!("must be from 1 to 1000000, not {mpc_max_keys_per_creator}"),
        ));
    }
    let mpc_max_tasks_per_creator: u32 = pick!(mpc_max_tasks_per_creator);
    if !(1..=100_000).contains(&mpc_max_tasks_per_creator) {
        return Err(invalid(
            &origin_of("mpc_max_tasks_per_creator"),
            "mpc_max_tasks_per_creator".into(),
            format!("must be from 1 to 100000, not {mpc_max_tasks_per_creator}"),
        ));
    }

    let per_session_peer: u32 = pick!(mpc_max_held_mib_per_session_peer);
    let per_peer: u32 = pick!(mpc_max_held_mib_per_peer);
    let held: u32 = pick!(mpc_max_held_mib);
    let reading: u32 = pick!(mpc_max_reading_mib);
    for (key, value, max) in [
        ("mpc_max_held_mib_per_session_peer", per_session_peer, 1024),
        ("mpc_max_held_mib_per_peer", per_peer, 16_384),
        ("mpc_max_held_mib", held, 65_536),
        ("mpc_max_reading_mib", reading, 65_536),
    ] {
        if !(1..=max).contains(&value) {
            return Err(invalid(
                &origin_of(key),
                key.into(),
                format!("must be from 1 to {max} MiB, not {value}"),
            ));
        }
    }
    if per_session_peer > per_peer {
        return Err(invalid(
            &origin_of("mpc_max_held_mib_per_session_peer"),
            "mpc_max_held_mib_per_session_peer".into(),
            format!(
                "must not be more than mpc_max_held_mib_per_peer ({per_peer}), not {per_session_peer}"
            ),
        ));
    }
    if per_peer > held {
        return Err(invalid(
            &origin_of("mpc_max_held_mib_per_peer"),
            "mpc_max_held_mib_per_peer".into(),
            format!("must not be more than mpc_max_held_mib ({held}), not {per_peer}"),
        ));
    }
    let mib = |m: u32| m as usize * 1024 * 1024;
    let mpc_held_budgets = crate::mpc::session::Budgets {
        per_session_peer: mib(per_session_peer),
        per_peer: mib(per_peer),
        total: mib(held),
    };

    let pool_size: u32 = pick!(presign_pool_size);
    let low_water: u32 = pick!(presign_low_water);
    if pool_size > 256 {
        return Err(invalid(
            &origin_of("presign_pool_size"),
            "presign_pool_size".into(),
            format!("must be from 0 to 256, not {pool_size}"),
        ));
    }
    if !(1..=256).contains(&low_water) || (pool_size > 0 && low_water > pool_size) {
        return Err(invalid(
            &origin_of("presign_low_water"),
            "presign_low_water".into(),
            format!("must be from 1 to presign_pool_size ({pool_size}), not {low_water}"),
        ));
    }
    let presign = crate::mpc::sign::presigned::PresignSettings {
        pool_size: pool_size as usize,
        low_water: low_water as usize,
    };

    let jaeger_host: String = pick!(jaeger_host);
    if jaeger_host.trim().is_empty() || jaeger_host.contains(['/', ' ']) {
        return Err(invalid(
            &origin_of("jaeger_host"),
            "jaeger_host".into(),
            format!("`{jaeger_host}` is not a host name or IP address"),
        ));
    }

    let api_token_file: Option<PathBuf> = pick_opt!(api_token_file);
    let api_token = match &api_token_file {
        None => None,
        Some(path) => Some(
            read_token(path)
                .map_err(|m| invalid(&origin_of("api_token_file"), "api_token_file".into(), m))?,
        ),
    };

    let api_tls = match (pick_opt!(api_tls_cert), pick_opt!(api_tls_key)) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            let config = crate::tls::server_config(&cert, &key)
                .map_err(|m| invalid(&origin_of("api_tls_cert"), "api_tls_cert".into(), m))?;
            Some(ApiTls { cert, key, config })
        }
        (Some(_), None) => {
            return Err(invalid(
                &origin_of("api_tls_cert"),
                "api_tls_cert".into(),
                "is set without api_tls_key: HTTPS needs the certificate and its private key"
                    .into(),
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                &origin_of("api_tls_key"),
                "api_tls_key".into(),
                "is set without api_tls_cert: HTTPS needs the certificate and its private key"
                    .into(),
            ));
        }
    };

    Ok(NodeConfig {
        config_file: args.config.clone(),
        network_port: pick!(network_port),
        listen_address: pick!(listen_address),
        ws_port: pick_opt!(ws_port),
        quic_port: pick_opt!(quic_port),
        topics,
        topic_rules,
        bootnodes,
        seed_nodes,
        cluster_members,
        cluster_members_file,
        identity_key_path: pick_opt!(identity_key_path),
        metrics_port: pick!(metrics_port),
        metrics_address: pick!(metrics_address),
        log_level: pick!(log_level),
        enable_jaeger: pick!(enable_jaeger),
        jaeger_host,
        jaeger_port: pick!(jaeger_port),
        json_trace: pick!(json_trace),
        json_trace_file: pick!(json_trace_file),
        api_port: pick!(api_port),
        api_address: pick!(api_address),
        api_token_file,
        api_token,
        api_tls,
        api_max_concurrent_requests: api_max_concurrent_requests as usize,
        data_dir: pick!(data_dir),
        max_connections,
        max_message_size,
        mpc_round_timeout: std::time::Duration::from_secs(mpc_round_timeout),
        mpc_max_sessions_per_peer: mpc_max_sessions_per_peer as usize,
        mpc_max_keys_per_creator: mpc_max_keys_per_creator as usize,
        mpc_max_tasks_per_creator: mpc_max_tasks_per_creator as usize,
        mpc_held_budgets,
        mpc_max_reading_mib: reading,
        presign,
        pod_name: args.pod_name.clone(),
    })
}

/// Reads an API token file: the token is its content without surrounding whitespace.
pub fn read_token(path: &Path) -> Result<ApiToken, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
    parse_token(&text, &format!("token file {}", path.display()))
}

/// A token from `text` (surrounding whitespace ignored); `source` names it in errors.
pub fn parse_token(text: &str, source: &str) -> Result<ApiToken, String> {
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("{source} is empty"));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{source} must hold one token without spaces or line breaks"
        ));
    }
    Ok(ApiToken(token.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    /// The node's flags alone, as the `run` command parses them.
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        node: NodeArgs,
    }

    fn resolve_with(args: &[&str]) -> Result<NodeConfig, ConfigError> {
        let matches = Cli::command()
            .try_get_matches_from(std::iter::once("p2p-mpc").chain(args.iter().copied()))
            .expect("valid flags");
        let cli = Cli::from_arg_matches(&matches).expect("flags parse");
        resolve(&cli.node, &matches)
    }

    fn write_config(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn defaults_without_file() {
        let c = resolve_with(&[]).unwrap();
        assert_eq!(c.network_port, 0);
        assert_eq!(c.metrics_port, 9090);
        assert_eq!(c.api_port, 8080);
        assert_eq!(c.api_address.to_string(), "127.0.0.1");
        assert_eq!(c.log_level, LogLevel::Info);
        assert_eq!(c.jaeger_host, "localhost");
        assert_eq!(c.jaeger_port, 4317);
        assert!(!c.enable_jaeger && !c.json_trace);
        assert_eq!(c.json_trace_file, PathBuf::from("./logs/traces.json"));
        assert_eq!(c.max_message_size, 1024 * 1024);
        assert_eq!(c.mpc_round_timeout, std::time::Duration::from_secs(10));
        assert!(c.topics.is_empty() && c.bootnodes.is_empty() && c.identity_key_path.is_none());
    }

    #[test]
    fn file_overrides_defaults_and_flags_override_file() {
        let f = write_config(
            "network_port: 4001\nmetrics_port: 9191\nlog_level: debug\ntopics: [a, b]\njson_trace: true\nmpc_round_timeout: 45\n",
        );
        let path = f.path().to_str().unwrap();
        let c = resolve_with(&["-c", path]).unwrap();
        assert_eq!(c.network_port, 4001);
        assert_eq!(c.metrics_port, 9191);
        assert_eq!(c.log_level, LogLevel::Debug);
        assert_eq!(c.topics, vec!["a", "b"]);
        assert!(c.json_trace);
        assert_eq!(c.mpc_round_timeout, std::time::Duration::from_secs(45));
        assert_eq!(c.api_port, 8080, "untouched key keeps its default");

        let c = resolve_with(&[
            "-c",
            path,
            "-p",
            "5001",
            "-t",
            "z",
            "-l",
            "warn",
            "--mpc-round-timeout",
            "120",
        ])
        .unwrap();
        assert_eq!(c.mpc_round_timeout, std::time::Duration::from_secs(120));
        assert_eq!(c.network_port, 5001);
        assert_eq!(c.topics, vec!["z"]);
        assert_eq!(c.log_level, LogLevel::Warn);
        assert_eq!(c.metrics_port, 9191, "file still wins over the default");
    }

    #[test]
    fn bootnode_without_peer_id_names_file_and_key() {
        let f = write_config("bootnodes:\n  - /ip4/127.0.0.1/tcp/4001\n");
        let err = resolve_with(&["-c", f.path().to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(err.contains(&f.path().display().to_string()), "{err}");
        assert!(err.contains("bootnodes[0]"), "{err}");
        assert!(err.contains("/p2p/<peer id>"), "{err}");
    }

    #[test]
    fn unknown_key_and_bad_type_are_named() {
        let f = write_config("network_port: 1\nnetwrok_port: 2\n");
        let err = resolve_with(&["-c", f.path().to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("netwrok_port"), "{err}");
        let f = write_config("metrics_port: 70000\n");
        let err = resolve_with(&["-c", f.path().to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("metrics_port") && err.contains("70000"),
            "{err}"
        );
    }

    #[test]
    fn pod_name_selects_its_bootnodes() {
        let a = "/dns4/n-0.n-headless.ns.svc.cluster.local/tcp/4001/p2p/12D3KooWLzVeoBe8Xb4bnRVFzsLuNQhPh9WkZVXqEXHZ1QVDR6VP";
        let f = write_config(&format!(
            "bootnodes: []\npods:\n  n-0: {{}}\n  n-1:\n    bootnodes: [\"{a}\"]\n"
        ));
        let path = f.path().to_str().unwrap();
        let c = resolve_with(&["-c", path, "--pod-name", "n-1"]).unwrap();
        assert_eq!(c.bootnodes.len(), 1);
        assert_eq!(c.bootnodes[0].addr.to_string(), a);
        let c = resolve_with(&["-c", path, "--pod-name", "n-0"]).unwrap();
        assert!(c.bootnodes.is_empty());
        let err = resolve_with(&["-c", path, "--pod-name", "n-7"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`n-7`") && err.contains("n-0, n-1"), "{err}");
        // Without a pod name the section is not consulted.
        assert!(resolve_with(&["-c", path]).unwrap().bootnodes.is_empty());
    }

    #[test]
    fn empty_file_is_empty_config() {
        let f = write_config("# nothing here\n");
        let c = resolve_with(&["-c", f.path().to_str().unwrap()]).unwrap();
        assert_eq!(c.metrics_port, 9090);
    }

    /// `config.example.yml` with every `# key: value` line uncommented.
    fn uncommented_example() -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config.example.yml");
        let text = std::fs::read_to_string(path).expect("config.example.yml at the repo root");
        text.lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("# ")?;
                let key = rest.split(':').next()?;
                (!key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
                    .then(|| rest.to_string())
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn example_config_lists_every_key_with_its_default() {
        let text = uncommented_example();
        let parsed = FileConfig::parse(Path::new("config.example.yml"), &text)
            .unwrap_or_else(|e| panic!("uncommented example must parse: {e}\n{text}"));
        let as_value = serde_yaml::to_value(&parsed).unwrap();
        for (key, value) in as_value.as_mapping().unwrap() {
            // Keys without a default are shown commented with an example value instead.
            let optional = [
                "ws_port",
                "quic_port",
                "identity_key_path",
                "api_token_file",
                "api_tls_cert",
                "api_tls_key",
                "cluster_members_file",
                "topic_rules",
            ];
            let key = key.as_str().unwrap();
            if !optional.contains(&key) {
                assert!(!value.is_null(), "config.example.yml lacks key `{key}`");
            }
        }
        let f = write_config(&text);
        let from_example = resolve_with(&["-c", f.path().to_str().unwrap()]).unwrap();
        let defaults = resolve_with(&[]).unwrap();
        let strip = |c: &NodeConfig| {
            let mut c = c.clone();
            c.config_file = None;
            format!("{c:?}")
        };
        assert_eq!(
            strip(&from_example),
            strip(&defaults),
            "example values are the defaults"
        );
    }

    #[test]
    fn example_config_mentions_optional_keys() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config.example.yml");
        let text = std::fs::read_to_string(path).unwrap();
        for key in [
            "ws_port",
            "quic_port",
            "identity_key_path",
            "api_token_file",
        ] {
            assert!(
                text.contains(&format!("#{key}:")) || text.contains(&format!("# {key}:")),
                "{key}"
            );
        }
    }

    #[test]
    fn token_debug_is_redacted() {
        let t = ApiToken("s3cret".into());
        assert!(!format!("{t:?}").contains("s3cret"));
    }
}
