//! Runs a node: binds the servers, starts the network, serves until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use libp2p::identity::Keypair;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::api::{self, ApiState, messages::MessageLog};
use crate::config::NodeConfig;
use crate::metrics::{self, NodeMetrics, Readiness};
use crate::mpc::faults::Faults;
use crate::mpc::metrics::MpcMetrics;
use crate::mpc::store::KeyShareStore;
use crate::mpc::{self as mpc_mod, MpcEngine};
use crate::network::{GossipMessage, NetworkClient, NetworkEvent, NetworkService, NetworkSettings};
use crate::roster::Roster;

/// How long after start a node asks its peers for policy changes it missed (the bootnodes
/// are dialed by then).
const POLICY_CATCH_UP_DELAY: Duration = Duration::from_secs(2);

/// A failure while starting or running the node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot bind the {what} on {addr}: {source} (choose another port or address)")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Network(#[from] crate::network::StartError),
    #[error(transparent)]
    KeyStore(#[from] crate::mpc::store::StoreError),
    #[error("{0}")]
    Faults(String),
    #[error("aggregation state: {0}")]
    Aggregation(String),
    #[error("cluster roster: {0}")]
    Roster(String),
    #[error("signing request ids: {0}")]
    Policy(String),
    #[error("vault: {0}")]
    Vault(String),
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { what, addr, source })
}

/// Resolves when the process gets SIGINT or SIGTERM.
pub async fn termination_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => info!("SIGINT received; shutting down"),
                    _ = term.recv() => info!("SIGTERM received; shutting down"),
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the node");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Gossip messages kept for the starter's reader ([`NodeIo::messages`]) while it lags.
const NODE_IO_MESSAGES: usize = 1024;

/// What [`run`] hands to whoever started the node once the network runs: the `run`
/// subcommand uses it for chat on stdin/stdout (`commands::chat`).
pub struct NodeIo {
    /// To publish gossip.
    pub network: NetworkClient,
    /// The topics joined at start.
    pub topics: Vec<String>,
    /// Every gossip message received and accepted; when the reader lags more than 1024
    /// behind, newer messages are not queued for it (the API's message log still has them).
    pub messages: mpsc::Receiver<GossipMessage>,
}

/// Runs the node until `stop` resolves, then shuts it down in order. `attach` is called
/// once, when the network runs, with the node's [`NodeIo`].
pub async fn run(
    config: NodeConfig,
    key: Keypair,
    stop: impl std::future::Future<Output = ()>,
    attach: impl FnOnce(NodeIo),
) -> Result<(), NodeError> {
    let peer_id = key.public().to_peer_id();
    std::fs::create_dir_all(&config.data_dir).map_err(|source| NodeError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;

    let (key_store, report) = KeyShareStore::open(&config.data_dir)?;
    for path in &report.removed_temp_files {
        info!(path = %path.display(), "removed the temp file of an interrupted key write");
    }
    for (path, reason) in &report.unreadable {
        warn!(path = %path.display(), %reason, "key file ignored");
    }
    for path in &report.removed_pending {
        warn!(path = %path.display(), "removed a key share whose DKG never completed");
    }
    for path in &report.removed_stale {
        info!(path = %path.display(), "removed a staged generation that is active already");
    }
    info!(keys = report.loaded, staged = report.staged, dir = %key_store.dir().display(), "key shares loaded");
    let (vault, vault_opened) =
        crate::mpc::vault::store::VaultStore::open(&config.data_dir).map_err(NodeError::Vault)?;
    for path in &vault_opened.removed {
        info!(path = %path.display(), "removed a vault put that never prepared");
    }
    info!(
        files = vault_opened.files,
        prepared = vault_opened.prepared.len(),
        "vault files loaded"
    );
    let legacy: Vec<String> = key_store
        .list()
        .into_iter()
        .filter(|k| k.policy.legacy)
        .map(|k| k.key_id)
        .collect();
    if !legacy.is_empty() {
        warn!(
            count = legacy.len(),
            keys = %legacy.iter().take(10).cloned().collect::<Vec<_>>().join(","),
            "keys stored before signing policies existed load as legacy-open: they sign for any API caller and their policy cannot be changed until converted on every holder (p2p-mpc keys convert-legacy)"
        );
    }
    let faults = Faults::from_env().map_err(NodeError::Faults)?;
    if faults.any() {
        warn!(
            ?faults,
            "TEST FAULTS ARE ON: this node misbehaves on purpose"
        );
    }
    let round_timeout = crate::mpc::faults::round_timeout_from_env()
        .map_err(NodeError::Faults)?
        .unwrap_or(config.mpc_round_timeout);

    let api_listener = bind(
        "HTTP API",
        SocketAddr::new(config.api_address, config.api_port),
    )
    .await?;
    let metrics_listener = bind(
        "metrics server",
        SocketAddr::new(config.metrics_address, config.metrics_port),
    )
    .await?;

    let replay_guard =
        crate::mpc::replay_guard::ReplayGuard::open(&config.data_dir).map_err(NodeError::Policy)?;
    let roster = Arc::new(
        Roster::new(
            peer_id,
            config.cluster_members.iter().copied(),
            config.cluster_members_file.clone(),
        )
        .map_err(NodeError::Roster)?,
    );
    match roster.status() {
        None => warn!(
            "no cluster roster (--cluster-member / cluster_members_file): any peer that connects may open MPC sessions here and be enrolled in keys and aggregation tasks"
        ),
        Some(s) => {
            info!(members = s.size, member = s.member, file = ?s.file, "cluster roster loaded");
            if !s.member {
                warn!(%peer_id, "this node is not in its own cluster roster; other members will refuse its messages");
            }
        }
    }
    let roster_task = tokio::spawn(roster.clone().watch());

    let readiness = Arc::new(Readiness::default());
    let settings = NetworkSettings {
        listen_address: config.listen_address,
        network_port: config.network_port,
        ws_port: config.ws_port,
        quic_port: config.quic_port,
        topics: config.topics.clone(),
        topic_rules: config.topic_rules.clone(),
        bootnodes: config.bootnodes.clone(),
        seed_nodes: config.seed_nodes.clone(),
        max_connections: config.max_connections,
        max_message_size: config.max_message_size,
        roster: Some(roster.clone()),
        max_reading_bytes: u64::from(config.mpc_max_reading_mib) << 20,
    };
    let (aggregation_store, opened) = crate::mpc::aggregation::store::AggregationStore::open(
        &config.data_dir,
        &peer_id.to_string(),
    )
    .map_err(|e| NodeError::Aggregation(e.to_string()))?;
    for (path, reason) in &opened.unreadable {
        warn!(path = %path.display(), %reason, "aggregation task file ignored");
    }
    for path in &opened.removed_pending {
        warn!(path = %path.display(), "removed an aggregation task whose creation never completed");
    }
    let hpke_key =
        crate::mpc::aggregation::encryption::EncryptionKey::load_or_create(aggregation_store.dir())
            .map_err(NodeError::Aggregation)?;
    let aggregation = crate::mpc::aggregation::Aggregation {
        collect_requests: Default::default(),
        store: aggregation_store,
        relays: Default::default(),
        key: hpke_key,
        identity: key.clone(),
    };
    let (mut service, network, mut events) = NetworkService::start(
        key,
        settings,
        prometheus_client::registry::Registry::default(),
        |libp2p_registry| Arc::new(NodeMetrics::new(libp2p_registry)),
        readiness.clone(),
    )
    .await?;
    let node_metrics = service.metrics();
    let mpc_inbound = service.take_mpc_inbound(mpc_mod::INBOUND_CAPACITY);
    let network_task = tokio::spawn(service.run());
    let mpc = MpcEngine::new(
        peer_id,
        Arc::new(network.clone()),
        key_store,
        MpcMetrics::new(node_metrics.registry()),
        aggregation,
        crate::mpc::EngineSettings {
            faults,
            round_timeout,
            roster,
            max_sessions_per_peer: config.mpc_max_sessions_per_peer,
            max_keys_per_creator: config.mpc_max_keys_per_creator,
            max_tasks_per_creator: config.mpc_max_tasks_per_creator,
            held_budgets: config.mpc_held_budgets,
            replay_guard,
            presign: config.presign,
            vault,
        },
    );
    let router_task = tokio::spawn(mpc.clone().run_router(mpc_inbound));
    // A holder that was down while a key's policy changed learns of it from its peers.
    mpc.catch_up_policies_at_start(POLICY_CATCH_UP_DELAY);
    mpc.resolve_staged_at_start();
    mpc.resolve_vault_at_start(vault_opened.prepared);
    mpc.start_vault_repair();

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let message_log = Arc::new(MessageLog::new(config.topic_rules.clone()));
    let log = message_log.clone();
    let events_mpc = mpc.clone();
    let (messages_tx, messages) = mpsc::channel(NODE_IO_MESSAGES);
    let events_task = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                NetworkEvent::Message(msg) => {
                    log.push(&msg);
                    let _ = messages_tx.try_send(msg);
                }
                NetworkEvent::PeerConnected(p) => tracing::debug!(peer = %p, "peer connected"),
                NetworkEvent::PeerDisconnected(p) => {
                    tracing::debug!(peer = %p, "peer disconnected");
                    // Presignatures made for it or by it are gone with its connection.
                    events_mpc.peer_disconnected(&p);
                }
            }
        }
    });
    attach(NodeIo {
        network: network.clone(),
        topics: config.topics.clone(),
        messages,
    });

    let api_addr = api_listener.local_addr().ok();
    let metrics_addr = metrics_listener.local_addr().ok();
    let activity = Arc::new(api::activity::Activity::new(
        node_metrics.clone(),
        mpc.metrics().clone(),
    ));
    let activity_task = tokio::spawn(activity.clone().run());
    let state = ApiState {
        activity,
        started: std::time::Instant::now(),
        network: network.clone(),
        messages: message_log,
        metrics: node_metrics.clone(),
        token: config.api_token.clone(),
        max_message_size: config.max_message_size,
        topic_rules: config.topic_rules.clone(),
        mpc,
        in_flight: Arc::new(tokio::sync::Semaphore::new(
            config.api_max_concurrent_requests,
        )),
    };
    let api_tls = config.api_tls.as_ref().map(|t| t.config.clone());
    let api_task = tokio::spawn(api::serve(
        api_listener,
        state,
        api_tls,
        stopped(stop_rx.clone()),
    ));
    let metrics_task = tokio::spawn(metrics::serve(
        metrics_listener,
        node_metrics,
        readiness,
        stopped(stop_rx.clone()),
    ));
    if let Some(addr) = api_addr {
        let scheme = if config.api_tls.is_some() {
            "https"
        } else {
            "http"
        };
        info!(%addr, scheme, auth = config.api_token.is_some(), "HTTP API listening");
    }
    if let Some(addr) = metrics_addr {
        info!(%addr, "metrics listening");
    }
    info!(%peer_id, topics = ?config.topics, bootnodes = config.bootnodes.len(), "node started");

    stop.await;

    let _ = stop_tx.send(true);
    if let Err(e) = network.shutdown().await {
        warn!(error = %e, "network did not shut down cleanly");
    }
    let grace = Duration::from_secs(3);
    for (name, task) in [("HTTP API", api_task), ("metrics server", metrics_task)] {
        match tokio::time::timeout(grace, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!(error = %e, "{name} stopped with an error"),
            Ok(Err(e)) => warn!(error = %e, "{name} task failed"),
            Err(_) => warn!("{name} did not stop within {grace:?}"),
        }
    }
    let _ = tokio::time::timeout(grace, network_task).await;
    events_task.abort();
    activity_task.abort();
    router_task.abort();
    roster_task.abort();
    info!("node stopped");
    Ok(())
}
