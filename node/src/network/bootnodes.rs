//! Keeps the node connected to its bootnodes: dial at start, re-dial with exponential
//! backoff whenever the last connection to one is lost or a dial fails.

use std::collections::HashMap;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use libp2p::{Multiaddr, PeerId};
use tokio::time::Instant;

use crate::values::PeerAddr;

/// First and largest wait between two dials of the same bootnode.
const MIN_DELAY: Duration = Duration::from_millis(500);
const MAX_DELAY: Duration = Duration::from_secs(30);

struct Bootnode {
    addr: Multiaddr,
    connected: bool,
    /// When the next dial is due (`None`: none scheduled).
    next_dial: Option<Instant>,
    backoff: ExponentialBackoff,
}

/// Tracks every bootnode's connection state and when to dial it next.
pub struct BootnodeDialer {
    nodes: HashMap<PeerId, Bootnode>,
}

fn new_backoff() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(MIN_DELAY)
        .with_max_delay(MAX_DELAY)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

impl BootnodeDialer {
    /// All bootnodes, each due for a dial now.
    pub fn new(bootnodes: &[PeerAddr]) -> Self {
        let now = Instant::now();
        let nodes = bootnodes
            .iter()
            .map(|b| {
                (
                    b.peer_id,
                    Bootnode {
                        addr: b.addr.clone(),
                        connected: false,
                        next_dial: Some(now),
                        backoff: new_backoff(),
                    },
                )
            })
            .collect();
        Self { nodes }
    }

    /// Whether `peer` is one of the bootnodes.
    pub fn is_bootnode(&self, peer: &PeerId) -> bool {
        self.nodes.contains_key(peer)
    }

    /// Bootnodes whose dial is due; each is marked as in progress (no new dial until it fails).
    pub fn take_due(&mut self, now: Instant) -> Vec<(PeerId, Multiaddr)> {
        self.nodes
            .iter_mut()
            .filter(|(_, b)| !b.connected && b.next_dial.is_some_and(|t| t <= now))
            .map(|(peer, b)| {
                b.next_dial = None;
                (*peer, b.addr.clone())
            })
            .collect()
    }

    /// A connection to `peer` is up: forget its backoff.
    pub fn on_connected(&mut self, peer: &PeerId) {
        if let Some(b) = self.nodes.get_mut(peer) {
            b.connected = true;
            b.next_dial = None;
            b.backoff = new_backoff();
        }
    }

    /// The last connection to `peer` closed, or a dial to it failed: schedule the next dial.
    /// Returns the wait, for the log.
    pub fn on_lost(&mut self, peer: &PeerId, now: Instant) -> Option<Duration> {
        let b = self.nodes.get_mut(peer)?;
        b.connected = false;
        if b.next_dial.is_some() {
            return None;
        }
        let delay = b.backoff.next().unwrap_or(MAX_DELAY);
        b.next_dial = Some(now + delay);
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bootnode() -> PeerAddr {
        let peer_id = PeerId::random();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/4001/p2p/{peer_id}")
            .parse()
            .unwrap();
        PeerAddr { peer_id, addr }
    }

    #[test]
    fn dials_at_start_then_backs_off_and_resets() {
        let b = bootnode();
        let mut d = BootnodeDialer::new(std::slice::from_ref(&b));
        let now = Instant::now();
        assert_eq!(d.take_due(now).len(), 1);
        assert!(
            d.take_due(now).is_empty(),
            "a dial in progress is not repeated"
        );

        let first = d.on_lost(&b.peer_id, now).unwrap();
        assert!(d.take_due(now).is_empty(), "not due before the backoff");
        let mut later = now + first;
        assert_eq!(d.take_due(later).len(), 1);
        let second = d.on_lost(&b.peer_id, later).unwrap();
        later += second;
        d.take_due(later);
        let third = d.on_lost(&b.peer_id, later).unwrap();
        assert!(third > first, "backoff grows: {first:?} then {third:?}");
        assert!(third <= MAX_DELAY * 2);

        d.on_connected(&b.peer_id);
        assert!(
            d.take_due(later + MAX_DELAY * 4).is_empty(),
            "connected: no dial"
        );
        let after_reset = d.on_lost(&b.peer_id, later).unwrap();
        assert!(
            after_reset <= MIN_DELAY * 2,
            "backoff reset after a connection: {after_reset:?}"
        );
    }
}
