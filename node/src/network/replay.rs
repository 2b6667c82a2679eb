//! Replays of signed gossip: a window of sequence numbers per author.
//!
//! A gossip message's id is its author and sequence number (the libp2p default), and the
//! author's signature covers both, so nobody can make a new message out of an old one. What
//! anyone can do is send a recorded message again, unchanged. Gossipsub drops such a copy
//! while the id is in its duplicate cache (`duplicate_cache_time`, 60 s); after that it
//! would be delivered as new. [`Replays`] keeps, for each author, the highest sequence
//! number delivered and which of the [`WINDOW`] numbers below it were: a number seen before
//! is a replay, and one below the window is stale, however long ago it was sent.
//!
//! This relies on authors counting their sequence numbers up, as the pubsub specification
//! asks ("linearly increasing") and as go-libp2p-pubsub, rust-libp2p and js-libp2p's
//! `@libp2p/gossipsub` do, each starting from the time it started (kubo refuses any number
//! not above the author's highest). A peer that draws its numbers at random, as js-libp2p's
//! earlier `@chainsafe/libp2p-gossipsub` did, sees most of its messages refused as stale.
//!
//! What the window does not cover: the node keeps it in memory, so after a restart the first
//! replayed message of an author is taken as new (and those within the window below it);
//! and without a cluster roster it keeps at most [`MAX_AUTHORS`] authors, forgetting the
//! one heard from least recently, so a flood of new authors makes it forget an author. With
//! a roster, only members' messages get this far, so it never forgets one. An application
//! for which a repeated message matters beyond that puts its own nonce or time in the
//! payload.

use std::collections::HashMap;

use libp2p::PeerId;

/// Sequence numbers below an author's highest that are told apart (out-of-order delivery
/// within this many messages of an author is accepted).
pub const WINDOW: u64 = 1024;
const WORDS: usize = (WINDOW / 64) as usize;
/// Authors remembered at most (about 200 bytes each).
pub const MAX_AUTHORS: usize = 4096;

/// What [`Replays::admit`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not delivered before: now recorded.
    Fresh,
    /// This author's message with this number was delivered before.
    Replayed,
    /// The number is [`WINDOW`] or more below the author's highest.
    Stale,
}

struct Window {
    /// The highest sequence number delivered.
    high: u64,
    /// Bit `n % WINDOW` is set when number `n` (within the window) was delivered.
    bits: [u64; WORDS],
    /// When the author was last heard from (a count of admitted messages).
    last: u64,
}

impl Window {
    fn new(seq: u64) -> Self {
        let mut w = Window {
            high: seq,
            bits: [0; WORDS],
            last: 0,
        };
        w.set(seq);
        w
    }

    fn slot(seq: u64) -> (usize, u64) {
        let at = seq % WINDOW;
        ((at / 64) as usize, 1 << (at % 64))
    }

    fn set(&mut self, seq: u64) {
        let (word, bit) = Self::slot(seq);
        self.bits[word] |= bit;
    }

    fn is_set(&self, seq: u64) -> bool {
        let (word, bit) = Self::slot(seq);
        self.bits[word] & bit != 0
    }

    fn admit(&mut self, seq: u64) -> Verdict {
        if seq > self.high {
            // The numbers the window moves past are free again (their slots now stand for
            // new numbers).
            if seq - self.high >= WINDOW {
                self.bits = [0; WORDS];
            } else {
                for n in self.high + 1..=seq {
                    let (word, bit) = Self::slot(n);
                    self.bits[word] &= !bit;
                }
            }
            self.high = seq;
            self.set(seq);
            Verdict::Fresh
        } else if self.high - seq >= WINDOW {
            Verdict::Stale
        } else if self.is_set(seq) {
            Verdict::Replayed
        } else {
            self.set(seq);
            Verdict::Fresh
        }
    }
}

/// Each author's window.
pub struct Replays {
    authors: HashMap<PeerId, Window>,
    max_authors: usize,
    clock: u64,
}

impl Default for Replays {
    fn default() -> Self {
        Self::with_max_authors(MAX_AUTHORS)
    }
}

impl Replays {
    /// Remembering at most `max_authors` authors.
    pub fn with_max_authors(max_authors: usize) -> Self {
        Self {
            authors: HashMap::new(),
            max_authors: max_authors.max(1),
            clock: 0,
        }
    }

    /// Whether `author`'s message number `seq` is new; records it if it is.
    pub fn admit(&mut self, author: PeerId, seq: u64) -> Verdict {
        self.clock += 1;
        if let Some(window) = self.authors.get_mut(&author) {
            window.last = self.clock;
            return window.admit(seq);
        }
        if self.authors.len() >= self.max_authors
            && let Some(oldest) = self
                .authors
                .iter()
                .min_by_key(|(_, w)| w.last)
                .map(|(a, _)| *a)
        {
            self.authors.remove(&oldest);
        }
        let mut window = Window::new(seq);
        window.last = self.clock;
        self.authors.insert(author, window);
        Verdict::Fresh
    }

    /// Authors remembered.
    pub fn authors(&self) -> usize {
        self.authors.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_is_delivered_once_and_out_of_order_within_the_window() {
        let a = PeerId::random();
        let mut r = Replays::default();
        let base = 1_790_000_000_000_000_000u64;
        assert_eq!(r.admit(a, base + 10), Verdict::Fresh);
        assert_eq!(r.admit(a, base + 10), Verdict::Replayed);
        // Earlier numbers arriving late are new, once.
        assert_eq!(r.admit(a, base + 7), Verdict::Fresh);
        assert_eq!(r.admit(a, base + 7), Verdict::Replayed);
        assert_eq!(r.admit(a, base + 11), Verdict::Fresh);
        // Another author's numbers are its own.
        assert_eq!(r.admit(PeerId::random(), base + 10), Verdict::Fresh);
        // The last number inside the window, and the first below it.
        assert_eq!(r.admit(a, base + 11 - (WINDOW - 1)), Verdict::Fresh);
        assert_eq!(r.admit(a, base + 11 - WINDOW), Verdict::Stale);
        assert_eq!(r.admit(a, 0), Verdict::Stale);
    }

    #[test]
    fn moving_the_window_frees_the_slots_it_passes() {
        let a = PeerId::random();
        let mut r = Replays::default();
        for n in 0..WINDOW {
            assert_eq!(r.admit(a, n), Verdict::Fresh);
        }
        // WINDOW shares slot 0 with number 0: it is new, and 0 is now stale.
        assert_eq!(r.admit(a, WINDOW), Verdict::Fresh);
        assert_eq!(r.admit(a, 0), Verdict::Stale);
        assert_eq!(r.admit(a, 1), Verdict::Replayed);
        // A jump of more than the window forgets everything below.
        assert_eq!(r.admit(a, 10 * WINDOW), Verdict::Fresh);
        assert_eq!(r.admit(a, 10 * WINDOW - 1), Verdict::Fresh);
        assert_eq!(r.admit(a, 10 * WINDOW - 1), Verdict::Replayed);
        assert_eq!(r.admit(a, 9 * WINDOW), Verdict::Stale);
        // Numbers near the top of the range do not overflow.
        assert_eq!(r.admit(a, u64::MAX), Verdict::Fresh);
        assert_eq!(r.admit(a, u64::MAX), Verdict::Replayed);
        assert_eq!(r.admit(a, u64::MAX - 1), Verdict::Fresh);
    }

    #[test]
    fn the_author_heard_from_least_recently_is_forgotten_first() {
        let mut r = Replays::with_max_authors(2);
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        r.admit(a, 5);
        r.admit(b, 5);
        r.admit(a, 6); // a is more recent than b now
        r.admit(c, 5); // b goes
        assert_eq!(r.authors(), 2);
        assert_eq!(r.admit(a, 5), Verdict::Replayed, "a is remembered");
        assert_eq!(r.admit(b, 5), Verdict::Fresh, "b was forgotten");
    }
}
