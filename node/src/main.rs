//! `p2p-mpc`: parse the command line, then run a node or a subcommand.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use p2p_mpc_node::api::client::{ApiClient, encode_segment};
use p2p_mpc_node::api::{PublishResponse, StatusResponse};
use p2p_mpc_node::cli::{AggregateCommand, Cli, ClientCommand, Command, KeysCommand, VaultCommand};
use p2p_mpc_node::config::NodeArgs;
use p2p_mpc_node::identity::{self, IdentitySource};
use p2p_mpc_node::tracing_config::{self, TracingSettings};
use p2p_mpc_node::{config, node};

/// Exit code for bad input (config, flags, key files), as clap uses for usage errors.
const EXIT_BAD_INPUT: u8 = 2;

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command {
        None => run_node(&cli.node, &matches),
        Some(command) => run_subcommand(command),
    }
}

fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(code)
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

fn run_node(args: &NodeArgs, matches: &clap::ArgMatches) -> ExitCode {
    let config = match config::resolve(args, matches) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    let (key, source) = match identity::load_or_create(config.identity_key_path.as_deref()) {
        Ok(k) => k,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    // Test-only variables are refused (or parsed) before anything starts.
    if let Err(e) = p2p_mpc_node::mpc::faults::Faults::from_env()
        .and_then(|_| p2p_mpc_node::mpc::faults::round_timeout_from_env())
    {
        return fail(EXIT_BAD_INPUT, e);
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(1, format!("cannot start the async runtime: {e}")),
    };
    let code = rt.block_on(async move {
        let peer_id = key.public().to_peer_id();
        let settings = TracingSettings {
            log_level: config.log_level,
            json_trace_file: config.json_trace.then(|| config.json_trace_file.clone()),
            otlp_endpoint: config
                .enable_jaeger
                .then(|| format!("http://{}:{}", config.jaeger_host, config.jaeger_port)),
            service_name: "p2p-mpc".into(),
            resource_attributes: vec![("p2p_mpc.peer_id".into(), peer_id.to_string())],
            json_logs: false,
        };
        let guard = match tracing_config::init(&settings) {
            Ok(g) => g,
            Err(e) => return fail(EXIT_BAD_INPUT, e),
        };
        match (source, &config.identity_key_path) {
            (IdentitySource::Ephemeral, _) => tracing::info!(
                %peer_id,
                "no --identity-key-path: using an ephemeral identity; the peer id changes at every start"
            ),
            (IdentitySource::Created, Some(p)) => {
                tracing::info!(%peer_id, path = %p.display(), "created a new identity key")
            }
            (_, Some(p)) => tracing::info!(%peer_id, path = %p.display(), "loaded identity key"),
            (_, None) => {}
        }
        if let Some(endpoint) = &settings.otlp_endpoint {
            tracing::info!(%endpoint, "exporting spans over OTLP gRPC");
        }
        let result = node::run(config, key, node::termination_signal(), |io| {
            tokio::spawn(p2p_mpc_node::commands::chat::run(io));
        })
        .await;
        guard.shutdown().await;
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(1, e),
        }
    });
    // The stdin reader sits in a blocking read that never returns while stdin stays open;
    // don't let it hold the exit.
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    code
}

fn run_client(command: ClientCommand) -> Result<(), String> {
    use p2p_mpc_node::commands::client as client_keys;
    match command {
        ClientCommand::Keygen { out } => {
            let public = client_keys::generate(&out)?;
            println!("{public}");
        }
        ClientCommand::PublicKey { file } => {
            println!("{}", client_keys::public_key(&client_keys::read(&file)?));
        }
        ClientCommand::Authorize {
            client_key,
            key_id,
            message,
            coordinator,
            ttl,
        } => {
            let bytes =
                hex::decode(message.trim()).map_err(|e| format!("--message must be hex: {e}"))?;
            let coordinator: libp2p::PeerId = coordinator.trim().parse().map_err(|e| {
                format!(
                    "--coordinator must be a peer id (GET /v1/status of the node shows it): {e}"
                )
            })?;
            let key = client_keys::read(&client_key)?;
            let auth = client_keys::authorize(&key, &key_id, &coordinator, &bytes, ttl);
            println!(
                "{}",
                serde_json::to_string(&auth).map_err(|e| e.to_string())?
            );
        }
    }
    Ok(())
}

fn run_subcommand(command: Command) -> ExitCode {
    match command {
        Command::Keygen { out } => {
            let key = identity::generate();
            match identity::write_new_keypair(&out, &key) {
                Ok(()) => {
                    println!("{}", key.public().to_peer_id());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(1, e),
            }
        }
        Command::PeerId { file } => match identity::read_keypair(&file) {
            Ok(key) => {
                println!("{}", key.public().to_peer_id());
                ExitCode::SUCCESS
            }
            Err(e) => fail(1, e),
        },
        Command::Status { json, api } => client_call(&api, |c| async move {
            let status: serde_json::Value = c.get("v1/status").await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&status).unwrap_or_default()
                );
                return Ok(());
            }
            let s: StatusResponse = serde_json::from_value(status)
                .map_err(|e| p2p_mpc_node::api::client::ClientError::Decode(e.to_string()))?;
            println!("peer id:         {}", s.peer_id);
            println!("version:         {}", s.version);
            println!("connected peers: {}", s.connected_peers);
            println!("topics:          {}", s.topics.join(", "));
            match &s.roster {
                Some(r) => println!(
                    "cluster roster:  {} members{}",
                    r.size,
                    if r.member {
                        ""
                    } else {
                        " (this node is not one)"
                    }
                ),
                None => println!("cluster roster:  none (every peer is admitted)"),
            }
            for addr in &s.listen_addrs {
                println!("listening on:    {addr}");
            }
            Ok(())
        }),
        Command::Client { command } => match run_client(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(1, e),
        },
        Command::Keys {
            command:
                KeysCommand::ConvertLegacy {
                    key_id,
                    data_dir,
                    admins,
                    admin_approvals,
                },
        } => {
            let policy = p2p_mpc_node::mpc::policy::SigningPolicy {
                admins,
                admin_approvals,
                ..p2p_mpc_node::mpc::policy::SigningPolicy::open()
            };
            match p2p_mpc_node::mpc::store::convert_legacy(&data_dir, &key_id, &policy) {
                Ok(path) => {
                    let label = if policy.admins.is_empty() {
                        "open, fixed for good".to_string()
                    } else {
                        format!(
                            "open, changeable by {} of {} admins",
                            policy.admin_approvals.unwrap_or(1),
                            policy.admins.len()
                        )
                    };
                    println!(
                        "key {key_id}: {label} ({}); convert it on every other holder with the same arguments before starting the nodes",
                        path.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(1, e),
            }
        }
        Command::Keys { command } => {
            let api = match &command {
                KeysCommand::Create { api, .. }
                | KeysCommand::List { api, .. }
                | KeysCommand::Show { api, .. }
                | KeysCommand::SetPolicy { api, .. }
                | KeysCommand::Refresh { api, .. }
                | KeysCommand::Reshare { api, .. }
                | KeysCommand::Sign { api, .. } => api.clone(),
                KeysCommand::ConvertLegacy { .. } => unreachable!("handled above"),
            };
            client_call(&api, |c| p2p_mpc_node::commands::keys::run(c, command))
        }
        Command::Aggregate { command } => {
            let api = match &command {
                AggregateCommand::Create { api, .. }
                | AggregateCommand::Submit { api, .. }
                | AggregateCommand::Collect { api, .. } => api.clone(),
            };
            client_call(&api, |c| p2p_mpc_node::commands::aggregate::run(c, command))
        }
        Command::Vault { command } => {
            let api = match &command {
                VaultCommand::Put { api, .. }
                | VaultCommand::Get { api, .. }
                | VaultCommand::Delete { api, .. }
                | VaultCommand::List { api, .. } => api.clone(),
            };
            client_call(&api, |c| p2p_mpc_node::commands::vault::run(c, command))
        }
        Command::Devnet {
            nodes,
            threshold,
            dir,
        } => {
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => return fail(1, format!("cannot start the async runtime: {e}")),
            };
            let settings = p2p_mpc_node::commands::devnet::DevnetSettings {
                nodes,
                threshold,
                dir,
            };
            match rt.block_on(p2p_mpc_node::commands::devnet::run(
                settings,
                node::termination_signal(),
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(1, e),
            }
        }
        Command::Publish { topic, text, api } => client_call(&api, |c| async move {
            let path = format!("v1/topics/{}/messages", encode_segment(&topic));
            let r: PublishResponse = c.post(&path, &serde_json::json!({ "data": text })).await?;
            println!("{}", r.message_id);
            Ok(())
        }),
    }
}

fn client_call<F, Fut>(api: &p2p_mpc_node::cli::ApiClientArgs, f: F) -> ExitCode
where
    F: FnOnce(ApiClient) -> Fut,
    Fut: std::future::Future<Output = Result<(), p2p_mpc_node::api::client::ClientError>>,
{
    let client = match ApiClient::new(
        &api.url,
        api.api_token_file.as_deref(),
        api.api_ca.as_deref(),
    ) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return fail(1, format!("cannot start the async runtime: {e}")),
    };
    match rt.block_on(f(client)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(1, e),
    }
}
