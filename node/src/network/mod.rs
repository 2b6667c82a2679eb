//! The libp2p network service.
//!
//! One task ([`NetworkService::run`]) owns the `Swarm`. The rest of the node talks to it
//! through a cloneable [`NetworkClient`] (commands with a oneshot reply) and receives
//! [`NetworkEvent`]s on a bounded channel. Nothing locks the swarm.

pub mod behaviour;
pub mod bootnodes;
pub mod door;
pub mod mpc_codec;
pub mod replay;
mod service;
pub mod topic_rules;

use std::time::Duration;

use futures::future::BoxFuture;
use libp2p::{Multiaddr, PeerId};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

pub use service::{NetworkService, NetworkSettings, StartError};

pub use crate::mpc::transport::{InboundMpc, MpcSendError};
use crate::mpc::transport::{Transport, TransportError};
use crate::mpc::wire::{MpcAck, MpcMessage};

/// How long a caller waits for an MPC message to be acknowledged (the request-response
/// timeout is 10 s; this covers the trip through the network task on top of it).
const MPC_SEND_TIMEOUT: Duration = Duration::from_secs(12);

/// How long a caller waits for the network task to answer a command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// A gossip message received (and accepted) on a topic.
#[derive(Debug, Clone)]
pub struct GossipMessage {
    pub topic: String,
    /// The message's author (signed).
    pub source: Option<PeerId>,
    /// Hex message id.
    pub id: String,
    pub data: Vec<u8>,
}

/// What the network service reports to the rest of the node.
#[derive(Debug, Clone)]
pub enum NetworkEvent {
    /// A gossip message passed validation.
    Message(GossipMessage),
    /// First connection to a peer.
    PeerConnected(PeerId),
    /// Last connection to a peer closed.
    PeerDisconnected(PeerId),
}

/// A snapshot of the node's network state.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkStatus {
    pub peer_id: String,
    /// Listen addresses, each ending in `/p2p/<peer id>`.
    pub listen_addrs: Vec<String>,
    pub connected_peers: usize,
    pub topics: Vec<String>,
}

/// A connected peer.
#[derive(Debug, Clone, Serialize)]
pub struct PeerInfo {
    pub peer_id: String,
    /// Remote addresses of our connections to it.
    pub connected_addrs: Vec<String>,
    /// Addresses it says it listens on (identify).
    pub listen_addrs: Vec<String>,
    /// Its agent version (identify), once known.
    pub agent_version: Option<String>,
    /// Topics it is subscribed to, as far as we share them.
    pub topics: Vec<String>,
    /// Round-trip time of the last ping answered on a connection to it, in milliseconds
    /// (pings go every 15 s; absent until the first answer).
    pub rtt_ms: Option<f64>,
}

/// Why a publish failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PublishError {
    #[error("message is {size} bytes, over the limit of {limit} bytes (--max-message-size)")]
    TooLarge { size: usize, limit: usize },
    #[error("no connected peer is subscribed to topic `{0}` yet")]
    NoPeers(String),
    #[error("the same message was already published")]
    Duplicate,
    #[error("the message breaks the rule of topic `{topic}` ({reason}): {detail}")]
    BreaksRule {
        topic: String,
        reason: &'static str,
        detail: String,
    },
    #[error("publish failed: {0}")]
    Other(String),
}

/// A failure talking to the network task.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum NetworkError {
    #[error("the network service has stopped")]
    Stopped,
    #[error("the network service did not answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// Commands sent to the network task.
pub(crate) enum Command {
    Publish {
        topic: String,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<String, PublishError>>,
    },
    Status {
        reply: oneshot::Sender<NetworkStatus>,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerInfo>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
    SendMpc {
        peer: PeerId,
        message: mpc_codec::RawMpc,
        reply: oneshot::Sender<Result<MpcAck, String>>,
    },
    MpcPeers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
}

/// A cloneable handle to the network task.
#[derive(Clone)]
pub struct NetworkClient {
    tx: mpsc::Sender<Command>,
}

impl NetworkClient {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetworkError> {
        let (reply, rx) = oneshot::channel();
        let call = async {
            self.tx
                .send(make(reply))
                .await
                .map_err(|_| NetworkError::Stopped)?;
            rx.await.map_err(|_| NetworkError::Stopped)
        };
        tokio::time::timeout(COMMAND_TIMEOUT, call)
            .await
            .map_err(|_| NetworkError::Timeout(COMMAND_TIMEOUT))?
    }

    /// Publishes `data` on `topic`; returns the hex message id.
    pub async fn publish(&self, topic: &str, data: Vec<u8>) -> Result<String, NetworkError> {
        let topic = topic.to_string();
        Ok(self
            .ask(|reply| Command::Publish { topic, data, reply })
            .await??)
    }

    /// The node's network status.
    pub async fn status(&self) -> Result<NetworkStatus, NetworkError> {
        self.ask(|reply| Command::Status { reply }).await
    }

    /// Connected peers.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, NetworkError> {
        self.ask(|reply| Command::Peers { reply }).await
    }

    /// Sends an MPC message to `peer` and waits for its acknowledgement.
    pub async fn send_mpc(&self, peer: PeerId, message: MpcMessage) -> Result<(), MpcSendError> {
        self.send_mpc_raw(peer, crate::mpc::wire::encode(&message))
            .await
    }

    /// Sends already encoded bytes as an MPC message (tests use it to send what an honest
    /// node never would) and waits for the acknowledgement.
    pub async fn send_mpc_raw(&self, peer: PeerId, bytes: Vec<u8>) -> Result<(), MpcSendError> {
        let message = mpc_codec::RawMpc(bytes);
        let (reply, rx) = oneshot::channel();
        let call = async {
            self.tx
                .send(Command::SendMpc {
                    peer,
                    message,
                    reply,
                })
                .await
                .map_err(|_| NetworkError::Stopped)?;
            rx.await.map_err(|_| NetworkError::Stopped)
        };
        match tokio::time::timeout(MPC_SEND_TIMEOUT, call).await {
            Err(_) => Err(MpcSendError::Unreachable {
                peer,
                message: format!("no acknowledgement within {MPC_SEND_TIMEOUT:?}"),
            }),
            Ok(Err(e)) => Err(TransportError::from(e).into()),
            Ok(Ok(Err(message))) => Err(MpcSendError::Unreachable { peer, message }),
            Ok(Ok(Ok(MpcAck::Accepted))) => Ok(()),
            Ok(Ok(Ok(MpcAck::Rejected(reason)))) => Err(MpcSendError::Rejected { peer, reason }),
            Ok(Ok(Ok(MpcAck::Refused { rule, reason }))) => {
                Err(MpcSendError::Refused { peer, rule, reason })
            }
            Ok(Ok(Ok(MpcAck::Busy(reason)))) => Err(MpcSendError::Busy { peer, reason }),
            Ok(Ok(Ok(MpcAck::Finished(reason)))) => Err(MpcSendError::Finished { peer, reason }),
        }
    }

    /// Connected peers that announced the MPC protocol (identify).
    pub async fn mpc_peers(&self) -> Result<Vec<PeerId>, NetworkError> {
        self.ask(|reply| Command::MpcPeers { reply }).await
    }

    /// Stops listening, closes connections and ends the network task.
    pub async fn shutdown(&self) -> Result<(), NetworkError> {
        self.ask(|reply| Command::Shutdown { reply }).await
    }
}

impl From<NetworkError> for TransportError {
    fn from(e: NetworkError) -> Self {
        TransportError(e.to_string())
    }
}

/// The MPC engine's transport is this network.
impl Transport for NetworkClient {
    fn send_mpc(
        &self,
        peer: PeerId,
        message: MpcMessage,
    ) -> BoxFuture<'_, Result<(), MpcSendError>> {
        Box::pin(NetworkClient::send_mpc(self, peer, message))
    }

    fn mpc_peers(&self) -> BoxFuture<'_, Result<Vec<PeerId>, TransportError>> {
        Box::pin(async move { Ok(NetworkClient::mpc_peers(self).await?) })
    }
}

/// Appends `/p2p/<peer>` to an address unless it already ends in one.
pub fn with_peer_id(addr: &Multiaddr, peer: PeerId) -> Multiaddr {
    match addr.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(_)) => addr.clone(),
        _ => addr.clone().with(libp2p::multiaddr::Protocol::P2p(peer)),
    }
}

/// Starts a network service of its own for `key` on an ephemeral loopback port that dials
/// `peer` (a `/ip4/…/p2p/…` address) and nothing else, with no roster: a peer that tools,
/// tests and benchmarks drive from their own process (it can send what an honest node never
/// would, through [`NetworkClient::send_mpc_raw`]). The service runs on the current runtime.
pub async fn dial_peer(
    key: libp2p::identity::Keypair,
    peer: &str,
    topics: &[&str],
    max_message_size: usize,
) -> Result<NetworkClient, String> {
    start_peer(key, peer, topics, max_message_size, false).await
}

/// Like [`dial_peer`], but the peer takes every MPC message sent to it (answers `Accepted`
/// and drops it), as a member that joins sessions and then stays silent would: the sessions
/// it is invited to stay open until their deadlines.
pub async fn dial_silent_member(
    key: libp2p::identity::Keypair,
    peer: &str,
    max_message_size: usize,
) -> Result<NetworkClient, String> {
    start_peer(key, peer, &[], max_message_size, true).await
}

async fn start_peer(
    key: libp2p::identity::Keypair,
    peer: &str,
    topics: &[&str],
    max_message_size: usize,
    accept_mpc: bool,
) -> Result<NetworkClient, String> {
    use crate::metrics::{NodeMetrics, Readiness};
    use std::sync::Arc;
    let (peer_id, addr) = crate::values::parse_peer_multiaddr(peer)?;
    let settings = NetworkSettings {
        listen_address: std::net::Ipv4Addr::LOCALHOST.into(),
        network_port: 0,
        ws_port: None,
        quic_port: None,
        topics: topics.iter().map(|t| t.to_string()).collect(),
        // It publishes and takes any bytes on its topics (what an honest node never would).
        topic_rules: topic_rules::TopicRules::new(
            topics
                .iter()
                .map(|t| {
                    let rule = topic_rules::TopicRule::compile(
                        None,
                        Some(topic_rules::ContentType::Bytes),
                        None,
                        max_message_size,
                    )?;
                    Ok((t.to_string(), rule))
                })
                .collect::<Result<_, String>>()?,
        ),
        bootnodes: vec![crate::values::PeerAddr { peer_id, addr }],
        seed_nodes: vec![],
        max_connections: 16,
        max_message_size,
        roster: None,
        max_reading_bytes: u64::from(mpc_codec::DEFAULT_MAX_READING_MIB) << 20,
    };
    let (mut service, client, _events) = NetworkService::start(
        key,
        settings,
        Default::default(),
        |r| Arc::new(NodeMetrics::new(r)),
        Arc::new(Readiness::default()),
    )
    .await
    .map_err(|e| e.to_string())?;
    if accept_mpc {
        let mut inbound = service.take_mpc_inbound(64);
        tokio::spawn(async move {
            while let Some(m) = inbound.recv().await {
                let _ = m.ack.send(MpcAck::Accepted);
            }
        });
    }
    tokio::spawn(service.run());
    Ok(client)
}
