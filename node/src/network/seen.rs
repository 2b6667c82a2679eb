//! The gossip messages a node has delivered, remembered longer than gossipsub's duplicate
//! cache.
//!
//! A gossip message's id is its author and sequence number (the libp2p default), and the
//! author's signature covers both, so nobody can make a new message out of an old one. What
//! anyone can do is send a recorded message again, unchanged. Gossipsub drops such a copy
//! while the id is in its duplicate cache (`duplicate_cache_time`, 60 s); after that it
//! would be delivered as new. [`Seen`] keeps the ids of the last [`CAPACITY`] delivered
//! messages, however old, so a replay is refused until that many newer messages arrived.
//!
//! Why not a per-author sequence window (accept only numbers above the author's last ones):
//! go-libp2p and rust-libp2p count up from the time they started, but js-libp2p draws every
//! sequence number at random, so a window would refuse about half of a js peer's messages.
//! What lies beyond this memory (a replay after a restart of the node, or after
//! [`CAPACITY`] newer messages) is the application's to refuse, with its own nonce or time
//! in the payload, if a repeated message matters to it.

use std::collections::{HashSet, VecDeque};

/// Delivered message ids remembered (about 100 bytes each with the set's overhead).
pub const CAPACITY: usize = 65_536;

/// A bounded memory of message ids, oldest forgotten first.
pub struct Seen {
    ids: HashSet<Vec<u8>>,
    order: VecDeque<Vec<u8>>,
    capacity: usize,
}

impl Default for Seen {
    fn default() -> Self {
        Self::with_capacity(CAPACITY)
    }
}

impl Seen {
    /// A memory of at most `capacity` ids.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            ids: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Whether `id` was already delivered.
    pub fn contains(&self, id: &[u8]) -> bool {
        self.ids.contains(id)
    }

    /// Records `id` as delivered; `false` if it already was.
    pub fn insert(&mut self, id: &[u8]) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() >= self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        self.ids.insert(id.to_vec());
        self.order.push_back(id.to_vec());
        true
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivered_id_is_refused_until_capacity_newer_ones_arrived() {
        let mut seen = Seen::with_capacity(3);
        assert!(seen.insert(b"a"));
        assert!(!seen.insert(b"a"), "a replay is refused");
        assert!(seen.insert(b"b"));
        assert!(seen.insert(b"c"));
        assert!(seen.contains(b"a"));
        assert_eq!(seen.len(), 3);
        // A fourth id pushes the oldest out: it is no longer recognised.
        assert!(seen.insert(b"d"));
        assert!(!seen.contains(b"a"));
        assert!(seen.contains(b"b") && seen.contains(b"d"));
        assert_eq!(seen.len(), 3);
        assert!(
            seen.insert(b"a"),
            "beyond the memory, the application decides"
        );
    }

    #[test]
    fn the_memory_never_exceeds_its_capacity() {
        let mut seen = Seen::with_capacity(100);
        for i in 0u32..1_000 {
            seen.insert(&i.to_be_bytes());
        }
        assert_eq!(seen.len(), 100);
        assert_eq!(seen.ids.len(), 100);
        assert!(seen.contains(&999u32.to_be_bytes()));
        assert!(!seen.contains(&899u32.to_be_bytes()));
        assert!(
            Seen::with_capacity(0).insert(b"x"),
            "capacity is at least one"
        );
    }
}
