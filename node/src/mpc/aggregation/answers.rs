//! One round of the aggregation cores in which each of some peers owes one answer: who was
//! asked, who could not be (a failed send), and what came. Every answer is checked here
//! for its sender: asked, reachable, and not answering twice.

use std::collections::{BTreeMap, BTreeSet};

use libp2p::PeerId;

use crate::mpc::session::SessionError;

/// The answers of one round, by peer.
pub struct Answers<T> {
    asked: BTreeSet<PeerId>,
    unreachable: Vec<PeerId>,
    got: BTreeMap<PeerId, T>,
}

impl<T: PartialEq> Answers<T> {
    /// A round in which each of `asked` owes one answer.
    pub fn new(asked: impl IntoIterator<Item = PeerId>) -> Self {
        Self {
            asked: asked.into_iter().collect(),
            unreachable: Vec::new(),
            got: BTreeMap::new(),
        }
    }

    /// Peers that could not be asked (the send failed): they owe nothing.
    pub fn unreachable(&mut self, peers: impl IntoIterator<Item = PeerId>) {
        for peer in peers {
            if self.asked.remove(&peer) {
                self.unreachable.push(peer);
            }
        }
    }

    /// The peers that could not be asked.
    pub fn unreached(&self) -> &[PeerId] {
        &self.unreachable
    }

    /// The peers whose answers are still to come.
    pub fn awaited(&self) -> Vec<PeerId> {
        self.asked
            .iter()
            .filter(|p| !self.got.contains_key(p))
            .copied()
            .collect()
    }

    /// Takes `from`'s answer, `what` naming it in errors. A peer that was not asked is
    /// blamed; so is one that answers twice differently (the same answer again is ignored).
    pub fn take(&mut self, from: PeerId, answer: T, what: &str) -> Result<(), SessionError> {
        if !self.asked.contains(&from) {
            return Err(SessionError::blame(
                vec![from],
                format!("peer {from} sent {what} it was not asked for"),
            ));
        }
        match self.got.get(&from) {
            Some(old) if *old != answer => Err(SessionError::blame(
                vec![from],
                format!("participant {from} sent two different {what}"),
            )),
            Some(_) => Ok(()),
            None => {
                self.got.insert(from, answer);
                Ok(())
            }
        }
    }

    /// The answers so far, by peer.
    pub fn got(&self) -> &BTreeMap<PeerId, T> {
        &self.got
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_come_once_from_reachable_peers_that_were_asked() {
        let (a, b, c, d) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        let mut round = Answers::new([a, b, c]);
        round.unreachable([c, d]);
        assert_eq!(round.unreached(), [c]);
        let mut awaited = round.awaited();
        awaited.sort();
        let mut expected = vec![a, b];
        expected.sort();
        assert_eq!(awaited, expected);
        assert_eq!(round.take(c, 1, "sets").unwrap_err().blamed(), [c]);
        assert_eq!(round.take(d, 1, "sets").unwrap_err().blamed(), [d]);
        round.take(a, 1, "sets").unwrap();
        round.take(a, 1, "sets").unwrap();
        let e = round.take(a, 2, "sets").unwrap_err();
        assert!(e.reason().contains("two different sets"), "{e}");
        assert_eq!(round.awaited(), [b]);
        assert_eq!(round.got()[&a], 1);
    }
}
