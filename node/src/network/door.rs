//! The door: with a cluster roster, only members get a connection.
//!
//! A node with a roster (`--cluster-member`, `cluster_members_file`) refuses every
//! connection, inbound or outbound, whose peer is not a member, right after the handshake
//! that proves the peer id and before any protocol runs on it: a stranger opens no stream,
//! holds no buffer, takes no established-connection slot and is never gossiped with or
//! routed to. A cluster with a roster is closed: its members gossip, discover and compute
//! among themselves, and clients reach it through the HTTP API. When the roster shrinks
//! (the members file is re-read), connections of peers that left it are closed within
//! [`RECHECK`]. Without a roster every peer is let in (the node warns at start).
//!
//! What a stranger can still cost: a TCP connection and a Noise handshake per attempt
//! (refused at its end), or with a QUIC listener a QUIC handshake per spoofable UDP packet,
//! within the cap on pending inbound connections. Established
//! connections are members' only; a member dialing in competes with strangers only for a
//! pending slot, held for one handshake at most, and the node's own dials to members use
//! the separate outbound slots.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    CloseConnection, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};

use crate::roster::Roster;

/// How often the connected peers are checked against the roster again.
pub const RECHECK: Duration = Duration::from_secs(2);

/// The error a refused connection carries.
#[derive(Debug, thiserror::Error)]
#[error("peer {0} is not a member of this node's cluster roster")]
pub struct NotAMember(pub PeerId);

/// What the door tells the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DoorEvent {
    /// A connection of a peer outside the roster was refused (`inbound`: it dialed us).
    Refused { peer: PeerId, inbound: bool },
    /// A peer that left the roster was disconnected.
    Evicted { peer: PeerId },
}

/// Refuses connections of peers outside the roster (see the module documentation).
pub struct Door {
    roster: Option<Arc<Roster>>,
    /// Established connections per peer.
    connected: HashMap<PeerId, usize>,
    events: VecDeque<DoorEvent>,
    close: VecDeque<PeerId>,
    recheck: Option<tokio::time::Interval>,
}

impl Door {
    /// A door for `roster` (`None`: every peer is let in).
    pub fn new(roster: Option<Arc<Roster>>) -> Self {
        Self {
            roster,
            connected: HashMap::new(),
            events: VecDeque::new(),
            close: VecDeque::new(),
            recheck: None,
        }
    }

    fn admits(&self, peer: &PeerId) -> bool {
        self.roster.as_ref().is_none_or(|r| r.admits(peer))
    }

    fn enforce(&mut self, peer: PeerId, inbound: bool) -> Result<(), ConnectionDenied> {
        if self.admits(&peer) {
            return Ok(());
        }
        if self.events.len() < 1024 {
            self.events.push_back(DoorEvent::Refused { peer, inbound });
        }
        Err(ConnectionDenied::new(NotAMember(peer)))
    }
}

impl NetworkBehaviour for Door {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = DoorEvent;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.enforce(peer, true)?;
        Ok(dummy::ConnectionHandler)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: Option<PeerId>,
        _: &[Multiaddr],
        _: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        // A dial to a known stranger is not even attempted; a dial by address alone is
        // checked once the handshake names the peer.
        if let Some(peer) = peer {
            self.enforce(peer, false)?;
        }
        Ok(vec![])
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.enforce(peer, false)?;
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                *self.connected.entry(e.peer_id).or_default() += 1;
            }
            FromSwarm::ConnectionClosed(e) => {
                if let Some(n) = self.connected.get_mut(&e.peer_id) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.connected.remove(&e.peer_id);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        libp2p::core::util::unreachable(event)
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<DoorEvent, THandlerInEvent<Self>>> {
        if let Some(peer) = self.close.pop_front() {
            self.connected.remove(&peer);
            self.events.push_back(DoorEvent::Evicted { peer });
            return Poll::Ready(ToSwarm::CloseConnection {
                peer_id: peer,
                connection: CloseConnection::All,
            });
        }
        if let Some(event) = self.events.pop_front() {
            return Poll::Ready(ToSwarm::GenerateEvent(event));
        }
        if self.roster.is_some() {
            let recheck = self.recheck.get_or_insert_with(|| {
                let mut i = tokio::time::interval(RECHECK);
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                i
            });
            let mut due = false;
            // Polled until pending, so the next tick wakes this behaviour.
            while recheck.poll_tick(cx).is_ready() {
                due = true;
            }
            if due {
                let gone: Vec<PeerId> = self
                    .connected
                    .keys()
                    .filter(|p| !self.admits(p))
                    .copied()
                    .collect();
                if !gone.is_empty() {
                    self.close.extend(gone);
                    cx.waker().wake_by_ref();
                }
            }
        }
        Poll::Pending
    }
}
