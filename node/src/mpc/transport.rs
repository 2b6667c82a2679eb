//! What the MPC engine needs of the network, as a small trait the network service
//! implements: send one message to a peer and wait for its acknowledgement, list the peers
//! that speak the MPC protocol, and hand in what arrives ([`InboundMpc`]). The engine never
//! sees libp2p's swarm or the network's commands; the network depends on `mpc` (for the wire
//! format and these types), never the other way round.

use futures::future::BoxFuture;
use libp2p::PeerId;
use tokio::sync::oneshot;

use super::wire::{MpcAck, MpcMessage};

/// The engine's way to the other nodes.
pub trait Transport: Send + Sync + 'static {
    /// Sends `message` to `peer`; returns once the peer acknowledged it (or did not).
    fn send_mpc(
        &self,
        peer: PeerId,
        message: MpcMessage,
    ) -> BoxFuture<'_, Result<(), MpcSendError>>;

    /// The connected peers that speak the MPC protocol.
    fn mpc_peers(&self) -> BoxFuture<'_, Result<Vec<PeerId>, TransportError>>;
}

/// The transport itself failed (it stopped, or did not answer in time).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct TransportError(pub String);

/// An MPC message received from a peer, to be routed by the session layer. The router
/// answers on `ack`; the transport sends that answer back to the peer.
#[derive(Debug)]
pub struct InboundMpc {
    pub peer: PeerId,
    pub message: MpcMessage,
    /// Its encoded size in bytes.
    pub size: usize,
    pub ack: oneshot::Sender<MpcAck>,
}

/// Why an MPC message did not reach its session at the peer.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum MpcSendError {
    #[error("peer {peer} is unreachable: {message}")]
    Unreachable { peer: PeerId, message: String },
    #[error("peer {peer} refused the message: {reason}")]
    Rejected { peer: PeerId, reason: String },
    /// The key's policy, as that holder holds it, refuses the request.
    #[error("peer {peer} refused the request ({rule}): {reason}")]
    Refused {
        peer: PeerId,
        rule: String,
        reason: String,
    },
    /// The peer is busy (a queue or cap is full); the message may be sent again.
    #[error("peer {peer} is busy: {reason}")]
    Busy { peer: PeerId, reason: String },
    /// The session is over on the peer's side.
    #[error("peer {peer} refused the message: {reason}")]
    Finished { peer: PeerId, reason: String },
    #[error(transparent)]
    Transport(#[from] TransportError),
}
