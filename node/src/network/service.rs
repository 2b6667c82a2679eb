//! The task that owns the `Swarm`.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::FutureExt;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use libp2p::Transport as _;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{ListenerId, OptionalTransport};
use libp2p::identity::Keypair;
use libp2p::metrics::Recorder;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{DialError, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, gossipsub, identify, kad, noise, tcp, yamux};
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, info, info_span, warn};

use super::behaviour::{self, BehaviourSettings, NodeBehaviour, NodeBehaviourEvent};
use super::bootnodes::BootnodeDialer;
use super::mpc_codec::RawMpc;
use super::replay::Verdict;
use super::{
    Command, GossipMessage, InboundMpc, NetworkClient, NetworkEvent, NetworkStatus, PeerInfo,
    PublishError, with_peer_id,
};
use crate::metrics::{NodeMetrics, Readiness};
use crate::mpc::wire::{self, MPC_PROTOCOL, MpcAck, WIRE_VERSION};
use crate::roster::Roster;
use crate::values::PeerAddr;

/// Refusal reasons given to gossipsub as `Ignore`, not `Reject`: an honest peer may forward
/// such a message in good faith (its own memory of a replay may have expired, or its roster
/// may not have changed yet), so it is not held against the forwarder.
const IGNORED: [&str; 3] = ["replayed", "stale", "author_not_member"];

/// The reasons of [`NetworkService::judge_gossip`] that every topic has (a topic's content
/// rule adds its own).
const GOSSIP_REJECTIONS: [&str; 5] = [
    "no_author",
    "author_not_member",
    "too_large",
    "replayed",
    "stale",
];

/// How long the session router may take to answer an inbound MPC message.
const MPC_ROUTE_TIMEOUT: Duration = Duration::from_secs(5);

type PendingAck = BoxFuture<'static, (ResponseChannel<MpcAck>, MpcAck)>;

/// What the network service is started with.
#[derive(Debug, Clone)]
pub struct NetworkSettings {
    pub listen_address: IpAddr,
    pub network_port: u16,
    pub ws_port: Option<u16>,
    /// UDP port of the QUIC listener; `None`: no QUIC.
    pub quic_port: Option<u16>,
    /// Topics joined at start.
    pub topics: Vec<String>,
    /// What a message on each joined topic must be (`text` without a rule).
    pub topic_rules: super::topic_rules::TopicRules,
    pub bootnodes: Vec<PeerAddr>,
    pub seed_nodes: Vec<PeerAddr>,
    pub max_connections: u32,
    pub max_message_size: usize,
    /// Who may send this node MPC messages; `None` admits every peer.
    pub roster: Option<Arc<Roster>>,
    /// Bound on the bytes of inbound MPC requests being read, on all connections.
    pub max_reading_bytes: u64,
}

/// A failure to start the network.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot build the libp2p transport: {0}")]
    Transport(String),
    #[error("cannot build the libp2p behaviour: {0}")]
    Behaviour(String),
    #[error("cannot listen on {addr}: {message} (choose another port or address)")]
    Listen { addr: Multiaddr, message: String },
    #[error("cannot join topic `{topic}`: {message}")]
    Subscribe { topic: String, message: String },
}

/// Per-peer bookkeeping for `/v1/peers`.
#[derive(Default)]
struct PeerEntry {
    connected_addrs: HashMap<libp2p::swarm::ConnectionId, Multiaddr>,
    listen_addrs: Vec<Multiaddr>,
    agent_version: Option<String>,
    topics: BTreeSet<String>,
    /// It announced `/p2p-mpc/mpc/1` (identify).
    speaks_mpc: bool,
    /// The last ping round trip.
    rtt: Option<Duration>,
}

/// Owns the swarm; see the module docs of `network`.
pub struct NetworkService {
    swarm: Swarm<NodeBehaviour>,
    settings: NetworkSettings,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetworkEvent>,
    metrics: Arc<NodeMetrics>,
    libp2p_metrics: libp2p::metrics::Metrics,
    readiness: Arc<Readiness>,
    dialer: BootnodeDialer,
    peers: HashMap<PeerId, PeerEntry>,
    listen_addrs: Vec<Multiaddr>,
    listeners: Vec<ListenerId>,
    dropped_events: u64,
    /// Where inbound MPC messages go; `None` until the session layer asks for them.
    mpc_inbound: Option<mpsc::Sender<InboundMpc>>,
    /// Outbound MPC messages waiting for their acknowledgement.
    mpc_pending: HashMap<OutboundRequestId, oneshot::Sender<Result<MpcAck, String>>>,
    /// Inbound MPC messages waiting for the router's answer.
    mpc_acks: FuturesUnordered<PendingAck>,
    /// When a refused MPC message was last logged, and how many were not logged since.
    refused_log: (Option<Instant>, u64),
    /// Each author's window of delivered sequence numbers (replays).
    replays: super::replay::Replays,
}

impl NetworkService {
    /// Builds the swarm, starts listening and joins the topics. Returns the service (to be
    /// `run`), a client handle and the event stream.
    pub async fn start(
        key: Keypair,
        settings: NetworkSettings,
        mut libp2p_registry: prometheus_client::registry::Registry,
        build_metrics: impl FnOnce(prometheus_client::registry::Registry) -> Arc<NodeMetrics>,
        readiness: Arc<Readiness>,
    ) -> Result<(Self, NetworkClient, mpsc::Receiver<NetworkEvent>), StartError> {
        let behaviour_settings = BehaviourSettings {
            max_message_size: settings.max_message_size,
            max_connections: settings.max_connections,
            roster: settings.roster.clone(),
            mpc_read_budget: super::mpc_codec::ReadBudget::new(settings.max_reading_bytes),
        };
        let read_budget = behaviour_settings.mpc_read_budget.clone();
        let libp2p_metrics = libp2p::metrics::Metrics::new(&mut libp2p_registry);
        let node_behaviour = behaviour::build(&key, &behaviour_settings, &mut libp2p_registry)
            .map_err(StartError::Behaviour)?;
        let quic_on = settings.quic_port.is_some();
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key.clone())
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| StartError::Transport(e.to_string()))?
            // QUIC only on a node that listens on it: without quic_port it neither listens
            // nor dials over QUIC (peers' QUIC addresses are not dialable from here).
            .with_other_transport(|key| match quic_on {
                true => OptionalTransport::some(
                    libp2p::quic::tokio::Transport::new(libp2p::quic::Config::new(key))
                        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer))),
                ),
                false => OptionalTransport::none(),
            })
            .map_err(|e| StartError::Transport(e.to_string()))?
            .with_dns()
            .map_err(|e| StartError::Transport(e.to_string()))?
            .with_websocket(noise::Config::new, yamux::Config::default)
            .await
            .map_err(|e| StartError::Transport(e.to_string()))?
            .with_bandwidth_metrics(&mut libp2p_registry)
            .with_behaviour(|_| node_behaviour)
            .map_err(|e| StartError::Behaviour(e.to_string()))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        let metrics = build_metrics(libp2p_registry);
        for collector in [
            Box::new(read_budget.reading.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(read_budget.refused.clone()),
        ] {
            metrics
                .registry()
                .register(collector)
                .expect("metric names are unique");
        }

        let ip = match settings.listen_address {
            IpAddr::V4(v4) => Protocol::Ip4(v4),
            IpAddr::V6(v6) => Protocol::Ip6(v6),
        };
        let mut listen = vec![
            Multiaddr::empty()
                .with(ip.clone())
                .with(Protocol::Tcp(settings.network_port)),
        ];
        if let Some(ws) = settings.ws_port {
            listen.push(
                Multiaddr::empty()
                    .with(ip.clone())
                    .with(Protocol::Tcp(ws))
                    .with(Protocol::Ws("/".into())),
            );
        }
        if let Some(quic) = settings.quic_port {
            listen.push(
                Multiaddr::empty()
                    .with(ip)
                    .with(Protocol::Udp(quic))
                    .with(Protocol::QuicV1),
            );
        }
        let mut listeners = Vec::new();
        for addr in listen {
            let id = swarm
                .listen_on(addr.clone())
                .map_err(|e| StartError::Listen {
                    addr,
                    message: e.to_string(),
                })?;
            listeners.push(id);
        }

        for topic in &settings.topics {
            swarm
                .behaviour_mut()
                .gossipsub
                .subscribe(&gossipsub::IdentTopic::new(topic))
                .map_err(|e| StartError::Subscribe {
                    topic: topic.clone(),
                    message: format!("{e:?}"),
                })?;
            // The topic's series exist from the start, at zero.
            metrics.gossip_published.with_label_values(&[topic]);
            metrics.gossip_received.with_label_values(&[topic]);
            for reason in GOSSIP_REJECTIONS {
                metrics.gossip_rejected.with_label_values(&[topic, reason]);
            }
        }

        for node in settings.bootnodes.iter().chain(&settings.seed_nodes) {
            let addr = strip_peer_id(&node.addr);
            swarm
                .behaviour_mut()
                .kademlia
                .add_address(&node.peer_id, addr);
        }
        readiness
            .needs_peer
            .store(!settings.bootnodes.is_empty(), Ordering::Relaxed);

        let dialer = BootnodeDialer::new(&settings.bootnodes);
        let (cmd_tx, cmd_rx) = mpsc::channel(256);
        let (event_tx, event_rx) = mpsc::channel(1024);
        let service = Self {
            swarm,
            settings,
            commands: cmd_rx,
            events: event_tx,
            metrics,
            libp2p_metrics,
            readiness,
            dialer,
            peers: HashMap::new(),
            listen_addrs: Vec::new(),
            listeners,
            dropped_events: 0,
            mpc_inbound: None,
            mpc_pending: HashMap::new(),
            mpc_acks: FuturesUnordered::new(),
            refused_log: (None, 0),
            replays: Default::default(),
        };
        Ok((service, NetworkClient { tx: cmd_tx }, event_rx))
    }

    /// The node's metrics (shared with the HTTP servers).
    pub fn metrics(&self) -> Arc<NodeMetrics> {
        self.metrics.clone()
    }

    /// The stream of inbound MPC messages, for the session layer. Before this is called,
    /// inbound MPC messages are refused. The channel is bounded: when it is full, peers get
    /// a `Rejected` answer and may retry.
    pub fn take_mpc_inbound(&mut self, capacity: usize) -> mpsc::Receiver<InboundMpc> {
        let (tx, rx) = mpsc::channel(capacity);
        self.mpc_inbound = Some(tx);
        rx
    }

    /// The local peer id.
    pub fn local_peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    /// Runs until a `Shutdown` command or until every client handle is dropped.
    pub async fn run(mut self) {
        if !self.settings.seed_nodes.is_empty() || !self.settings.bootnodes.is_empty() {
            let _ = self.swarm.behaviour_mut().kademlia.bootstrap();
        }
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown { reply }) => {
                        self.shutdown().await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(command) => self.handle_command(command),
                    None => {
                        self.shutdown().await;
                        return;
                    }
                },
                event = self.swarm.select_next_some() => self.handle_swarm_event(event),
                Some((channel, ack)) = self.mpc_acks.next(), if !self.mpc_acks.is_empty() => {
                    // The peer may have given up waiting; nothing more to do then.
                    let _ = self.swarm.behaviour_mut().mpc.send_response(channel, ack);
                }
                _ = tick.tick() => self.dial_due_bootnodes(),
            }
        }
    }

    /// Counts a refused inbound MPC message and logs it at debug, at most once a second.
    fn refused(&mut self, peer: &PeerId, reason: &'static str, detail: &str) {
        self.metrics.mpc_refused.with_label_values(&[reason]).inc();
        let now = Instant::now();
        if self
            .refused_log
            .0
            .is_none_or(|last| now.duration_since(last) >= Duration::from_secs(1))
        {
            let suppressed = std::mem::take(&mut self.refused_log.1);
            debug!(%peer, reason, detail, suppressed, "inbound MPC message refused");
            self.refused_log.0 = Some(now);
        } else {
            self.refused_log.1 += 1;
        }
    }

    fn handle_door(&mut self, event: super::door::DoorEvent) {
        use super::door::DoorEvent;
        match event {
            DoorEvent::Refused { peer, inbound } => {
                let direction = if inbound { "inbound" } else { "outbound" };
                self.metrics
                    .connections_refused
                    .with_label_values(&[direction])
                    .inc();
                if let Some(suppressed) = crate::log_limit::allow("connection_refused") {
                    debug!(%peer, direction, suppressed, "connection refused: not a member of the cluster roster");
                }
            }
            DoorEvent::Evicted { peer } => {
                self.metrics
                    .connections_refused
                    .with_label_values(&["evicted"])
                    .inc();
                info!(%peer, "disconnected a peer that left the cluster roster");
            }
        }
    }

    fn handle_mpc(&mut self, event: request_response::Event<RawMpc, MpcAck>) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let refuse = |reason: String| MpcAck::Rejected(reason);
                // Strangers are turned away before a byte of the body is decoded.
                if let Some(roster) = &self.settings.roster
                    && !roster.admits(&peer)
                {
                    self.refused(&peer, "not_member", "");
                    let ack = refuse("not a member of this node's cluster roster".into());
                    let _ = self.swarm.behaviour_mut().mpc.send_response(channel, ack);
                    return;
                }
                let size = request.0.len();
                let request = match wire::decode(&request.0) {
                    Ok(m) => m,
                    Err(e) => {
                        self.refused(&peer, "malformed", &e);
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .mpc
                            .send_response(channel, refuse(e));
                        return;
                    }
                };
                if request.version != WIRE_VERSION {
                    self.refused(&peer, "version", "");
                    let ack = refuse(format!(
                        "MPC message format version {} is not supported (this node speaks {WIRE_VERSION})",
                        request.version
                    ));
                    let _ = self.swarm.behaviour_mut().mpc.send_response(channel, ack);
                    return;
                }
                let Some(inbound) = &self.mpc_inbound else {
                    let ack = refuse("this node does not run MPC sessions".into());
                    let _ = self.swarm.behaviour_mut().mpc.send_response(channel, ack);
                    return;
                };
                let (ack_tx, ack_rx) = oneshot::channel();
                let msg = InboundMpc {
                    peer,
                    message: request,
                    size,
                    ack: ack_tx,
                };
                match inbound.try_send(msg) {
                    Ok(()) => {
                        self.mpc_acks.push(
                            async move {
                                let ack =
                                    match tokio::time::timeout(MPC_ROUTE_TIMEOUT, ack_rx).await {
                                        Ok(Ok(ack)) => ack,
                                        _ => MpcAck::Rejected(
                                            "the session layer did not answer".into(),
                                        ),
                                    };
                                (channel, ack)
                            }
                            .boxed(),
                        );
                    }
                    Err(_) => {
                        self.refused(&peer, "queue_full", "");
                        let ack = MpcAck::busy("the node's MPC queue is full");
                        let _ = self.swarm.behaviour_mut().mpc.send_response(channel, ack);
                    }
                }
            }
            request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(reply) = self.mpc_pending.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(reply) = self.mpc_pending.remove(&request_id) {
                    let _ = reply.send(Err(error.to_string()));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                debug!(%peer, error = %error, "inbound MPC message failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn dial_due_bootnodes(&mut self) {
        for (peer, addr) in self.dialer.take_due(Instant::now()) {
            if self.swarm.is_connected(&peer) {
                self.dialer.on_connected(&peer);
                continue;
            }
            debug!(%peer, %addr, "dialing bootnode");
            let opts = DialOpts::peer_id(peer)
                .addresses(vec![strip_peer_id(&addr)])
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            match self.swarm.dial(opts) {
                Ok(()) => {}
                // Already being dialed (Kademlia's bootstrap, say): its outcome is reported
                // like ours, as a connection or as an outgoing connection error.
                Err(DialError::DialPeerConditionFalse(_)) => {}
                Err(e) => self.bootnode_lost(peer, &format!("dial failed: {e}")),
            }
        }
    }

    fn bootnode_lost(&mut self, peer: PeerId, why: &str) {
        if let Some(wait) = self.dialer.on_lost(&peer, Instant::now()) {
            warn!(%peer, reason = why, retry_in_ms = wait.as_millis() as u64, "bootnode unreachable; will re-dial");
        }
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Publish { topic, data, reply } => {
                let _ = reply.send(self.publish(&topic, data));
            }
            Command::Status { reply } => {
                let peer = self.local_peer_id();
                let _ = reply.send(NetworkStatus {
                    peer_id: peer.to_string(),
                    listen_addrs: self
                        .listen_addrs
                        .iter()
                        .map(|a| with_peer_id(a, peer).to_string())
                        .collect(),
                    connected_peers: self.swarm.connected_peers().count(),
                    topics: self.settings.topics.clone(),
                });
            }
            Command::Peers { reply } => {
                let mut peers: Vec<PeerInfo> = self
                    .peers
                    .iter()
                    .map(|(id, e)| PeerInfo {
                        peer_id: id.to_string(),
                        connected_addrs: e
                            .connected_addrs
                            .values()
                            .map(ToString::to_string)
                            .collect(),
                        listen_addrs: e.listen_addrs.iter().map(ToString::to_string).collect(),
                        agent_version: e.agent_version.clone(),
                        topics: e.topics.iter().cloned().collect(),
                        rtt_ms: e.rtt.map(|d| d.as_secs_f64() * 1000.0),
                    })
                    .collect();
                peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
                let _ = reply.send(peers);
            }
            Command::SendMpc {
                peer,
                message,
                reply,
            } => {
                if peer == self.local_peer_id() {
                    let _ =
                        reply.send(Err("cannot send an MPC message to this node itself".into()));
                    return;
                }
                let id = self.swarm.behaviour_mut().mpc.send_request(&peer, message);
                self.mpc_pending.insert(id, reply);
            }
            Command::MpcPeers { reply } => {
                let mut peers: Vec<PeerId> = self
                    .peers
                    .iter()
                    .filter(|(id, e)| e.speaks_mpc && self.swarm.is_connected(id))
                    .map(|(id, _)| *id)
                    .collect();
                peers.sort();
                let _ = reply.send(peers);
            }
            Command::Shutdown { .. } => unreachable!("handled in run"),
        }
    }

    fn topic_label<'a>(&self, topic: &'a str) -> &'a str {
        if self.settings.topics.iter().any(|t| t == topic) {
            topic
        } else {
            "other"
        }
    }

    fn publish(&mut self, topic: &str, data: Vec<u8>) -> Result<String, PublishError> {
        let span = info_span!("gossip_publish", topic = %topic, bytes = data.len());
        let _entered = span.enter();
        if data.len() > self.settings.max_message_size {
            return Err(PublishError::TooLarge {
                size: data.len(),
                limit: self.settings.max_message_size,
            });
        }
        if self.settings.topics.iter().any(|t| t == topic)
            && let Err(v) = self.settings.topic_rules.check(topic, &data)
        {
            return Err(PublishError::BreaksRule {
                topic: topic.to_string(),
                reason: v.reason,
                detail: v.detail,
            });
        }
        let result = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(gossipsub::IdentTopic::new(topic), data);
        match result {
            Ok(id) => {
                self.metrics
                    .gossip_published
                    .with_label_values(&[self.topic_label(topic)])
                    .inc();
                let id = hex::encode(id.0);
                info!(message_id = %id, "published");
                Ok(id)
            }
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {
                Err(PublishError::NoPeers(topic.to_string()))
            }
            Err(gossipsub::PublishError::Duplicate) => Err(PublishError::Duplicate),
            Err(gossipsub::PublishError::MessageTooLarge) => Err(PublishError::TooLarge {
                size: 0,
                limit: self.settings.max_message_size,
            }),
            Err(e) => Err(PublishError::Other(e.to_string())),
        }
    }

    fn emit(&mut self, event: NetworkEvent) {
        // Never block the swarm on a slow consumer: drop and count instead.
        if self.events.try_send(event).is_err() {
            self.dropped_events += 1;
            if self.dropped_events.is_power_of_two() {
                warn!(
                    dropped = self.dropped_events,
                    "network event queue full; events dropped"
                );
            }
        }
    }

    fn handle_swarm_event(&mut self, event: SwarmEvent<NodeBehaviourEvent>) {
        self.libp2p_metrics.record(&event);
        match event {
            SwarmEvent::Behaviour(NodeBehaviourEvent::Gossipsub(e)) => {
                self.libp2p_metrics.record(&e);
                self.handle_gossip(e);
            }
            SwarmEvent::Behaviour(NodeBehaviourEvent::Identify(e)) => {
                self.libp2p_metrics.record(&e);
                self.handle_identify(e);
            }
            SwarmEvent::Behaviour(NodeBehaviourEvent::Kademlia(e)) => {
                self.libp2p_metrics.record(&e);
                if let kad::Event::RoutingUpdated {
                    peer,
                    is_new_peer: true,
                    ..
                } = &e
                {
                    debug!(%peer, "kademlia: new peer in routing table");
                }
            }
            SwarmEvent::Behaviour(NodeBehaviourEvent::Mpc(e)) => self.handle_mpc(e),
            SwarmEvent::Behaviour(NodeBehaviourEvent::Door(e)) => self.handle_door(e),
            SwarmEvent::Behaviour(NodeBehaviourEvent::Ping(e)) => {
                self.libp2p_metrics.record(&e);
                match &e.result {
                    Ok(rtt) => {
                        if let Some(entry) = self.peers.get_mut(&e.peer) {
                            entry.rtt = Some(*rtt);
                        }
                    }
                    Err(err) => debug!(peer = %e.peer, error = %err, "ping failed"),
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                let full = with_peer_id(&address, self.local_peer_id());
                info!(address = %full, "listening");
                self.listen_addrs.push(address);
                self.readiness.listening.store(true, Ordering::Relaxed);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| a != &address);
                self.readiness
                    .listening
                    .store(!self.listen_addrs.is_empty(), Ordering::Relaxed);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                let addr = endpoint.get_remote_address().clone();
                info_span!("connection_established", peer = %peer_id, remote = %addr, dialer = endpoint.is_dialer())
                    .in_scope(|| info!(connections = num_established.get(), "connection established"));
                self.metrics.active_connections.inc();
                self.peers
                    .entry(peer_id)
                    .or_default()
                    .connected_addrs
                    .insert(connection_id, addr);
                if self.dialer.is_bootnode(&peer_id) {
                    self.dialer.on_connected(&peer_id);
                }
                if num_established.get() == 1 {
                    self.peer_count_changed();
                    self.emit(NetworkEvent::PeerConnected(peer_id));
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => {
                info_span!("connection_closed", peer = %peer_id).in_scope(|| {
                    info!(
                        remaining = num_established,
                        cause = cause
                            .as_ref()
                            .map(ToString::to_string)
                            .unwrap_or_else(|| "closed".into()),
                        "connection closed"
                    )
                });
                self.metrics.active_connections.dec();
                if let Some(entry) = self.peers.get_mut(&peer_id) {
                    entry.connected_addrs.remove(&connection_id);
                }
                if num_established == 0 {
                    self.peers.remove(&peer_id);
                    self.peer_count_changed();
                    self.emit(NetworkEvent::PeerDisconnected(peer_id));
                    if self.dialer.is_bootnode(&peer_id) {
                        self.bootnode_lost(peer_id, "connection closed");
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                if matches!(error, DialError::DialPeerConditionFalse(_)) {
                    return;
                }
                debug!(%peer, error = %error, "outgoing connection failed");
                if self.dialer.is_bootnode(&peer) && !self.swarm.is_connected(&peer) {
                    self.bootnode_lost(peer, &error.to_string());
                }
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                debug!(remote = %send_back_addr, error = %error, "incoming connection failed");
            }
            SwarmEvent::ListenerError { error, .. } => {
                warn!(error = %error, "listener error");
            }
            _ => {}
        }
    }

    fn peer_count_changed(&self) {
        let n = self.swarm.connected_peers().count();
        self.metrics.connected_peers.set(n as i64);
        self.readiness.connected_peers.store(n, Ordering::Relaxed);
    }

    fn handle_identify(&mut self, event: identify::Event) {
        if let identify::Event::Received { peer_id, info, .. } = event {
            // Discovery by capability: a peer that speaks this network's Kademlia protocol is
            // routable through this node, whatever identify's protocol version says (libp2p
            // implementations default to their own string, or none). A peer of another
            // network speaks another Kademlia protocol id and stays out.
            let speaks_kad = info
                .protocols
                .iter()
                .any(|p| p.as_ref() == behaviour::KAD_PROTOCOL);
            if !speaks_kad {
                debug!(peer = %peer_id, protocol = %info.protocol_version, "peer does not speak {}; not added to discovery", behaviour::KAD_PROTOCOL);
            } else if info.listen_addrs.is_empty() {
                debug!(peer = %peer_id, "peer reports no listen address; not added to discovery");
            } else {
                for addr in &info.listen_addrs {
                    self.swarm
                        .behaviour_mut()
                        .kademlia
                        .add_address(&peer_id, strip_peer_id(addr));
                }
            }
            if let Some(entry) = self.peers.get_mut(&peer_id) {
                entry.speaks_mpc = info.protocols.iter().any(|p| p.as_ref() == MPC_PROTOCOL);
                entry.listen_addrs = info.listen_addrs;
                entry.agent_version = Some(info.agent_version);
            }
        }
    }

    fn handle_gossip(&mut self, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => {
                let topic = message.topic.as_str().to_string();
                let label = self.topic_label(&topic).to_string();
                let verdict = self.judge_gossip(&topic, &message);
                let acceptance = match &verdict {
                    Ok(()) => gossipsub::MessageAcceptance::Accept,
                    Err((reason, detail)) => {
                        if let Some(suppressed) = crate::log_limit::allow("gossip_rejected") {
                            let author = message.source.map(|a| a.to_string());
                            warn!(topic = %crate::log_limit::echo(topic.as_str()), source = %propagation_source, author = author.as_deref().unwrap_or("none"), reason, detail = detail.as_deref().unwrap_or(""), bytes = message.data.len(), suppressed, "gossip message rejected");
                        }
                        self.metrics
                            .gossip_rejected
                            .with_label_values(&[label.as_str(), reason])
                            .inc();
                        if IGNORED.contains(reason) {
                            gossipsub::MessageAcceptance::Ignore
                        } else {
                            gossipsub::MessageAcceptance::Reject
                        }
                    }
                };
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
                if verdict.is_ok() {
                    self.metrics
                        .gossip_received
                        .with_label_values(&[&label])
                        .inc();
                    self.emit(NetworkEvent::Message(GossipMessage {
                        topic,
                        source: message.source,
                        id: hex::encode(&message_id.0),
                        data: message.data,
                    }));
                }
            }
            gossipsub::Event::Subscribed { peer_id, topic, .. } => {
                debug!(peer = %peer_id, topic = %topic, "peer joined topic");
                if let Some(entry) = self.peers.get_mut(&peer_id) {
                    entry.topics.insert(topic.to_string());
                }
            }
            gossipsub::Event::Unsubscribed { peer_id, topic } => {
                if let Some(entry) = self.peers.get_mut(&peer_id) {
                    entry.topics.remove(topic.as_str());
                }
            }
            gossipsub::Event::SlowPeer { peer_id, .. } => {
                debug!(peer = %peer_id, "gossipsub: slow peer");
            }
            _ => {}
        }
    }

    /// What the node checks of a gossip message whose signature gossipsub verified: an
    /// author and a sequence number (gossipsub lets an empty sequence number through), an
    /// author of the roster when there is one, the node's size limit, the topic's rule
    /// (only joined topics are delivered here; a topic without a rule takes UTF-8 text), and
    /// last a sequence number not delivered before (recorded once the message passed all
    /// else). The error is the metric's reason and, for a topic rule, its detail.
    fn judge_gossip(
        &mut self,
        topic: &str,
        message: &gossipsub::Message,
    ) -> Result<(), (&'static str, Option<String>)> {
        let (Some(author), Some(seq)) = (message.source, message.sequence_number) else {
            return Err(("no_author", None));
        };
        if let Some(roster) = &self.settings.roster
            && !roster.admits(&author)
        {
            return Err(("author_not_member", None));
        }
        if message.data.len() > self.settings.max_message_size {
            return Err(("too_large", None));
        }
        if self.settings.topics.iter().any(|t| t == topic) {
            self.settings
                .topic_rules
                .check(topic, &message.data)
                .map_err(|v| (v.reason, Some(v.detail)))?;
        }
        match self.replays.admit(author, seq) {
            Verdict::Fresh => Ok(()),
            Verdict::Replayed => Err(("replayed", None)),
            Verdict::Stale => Err(("stale", None)),
        }
    }

    async fn shutdown(&mut self) {
        info!("network: closing listeners and connections");
        for id in self.listeners.drain(..) {
            self.swarm.remove_listener(id);
        }
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in peers {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        // Let the connections close cleanly, but never wait long.
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.swarm.connected_peers().next().is_some() {
            match tokio::time::timeout_at(deadline, self.swarm.select_next_some()).await {
                Ok(event) => self.handle_swarm_event(event),
                Err(_) => break,
            }
        }
    }
}

/// The address without a trailing `/p2p/<peer id>`.
fn strip_peer_id(addr: &Multiaddr) -> Multiaddr {
    let mut a = addr.clone();
    if matches!(a.iter().last(), Some(Protocol::P2p(_))) {
        a.pop();
    }
    a
}
