//! Opening the sum of a task as an I/O-free core: no network, no clock, no task, no disk.
//! The driver ([`super`]) sends what a step returns, hands in what arrived, and reads and
//! marks the task state; every check of an incoming message is made here.
//!
//! The collector: [`Collector::start`] (whom to ask for their report sets) →
//! [`Collector::receive_set`] from every participant reached → [`Collector::choose`]: the
//! largest report set that t + 1 participants hold identically, refused below
//! `min_reports`; t + 1 of its holders are chosen to open, this node first when it is one →
//! [`Opening::receive_chunk`] until every chosen participant's share sum is in →
//! [`Opening::finish`] (the points to interpolate).
//!
//! A participant: [`Participant::start`] (its report set, a snapshot) →
//! [`Participant::receive_open`]: it sends its share sum only for the set it announced, and
//! only when that set has `min_reports` reports: every participant enforces the minimum
//! batch size itself, so a collector that skips the check learns nothing from an honest one.

use std::collections::BTreeMap;

use libp2p::PeerId;

use super::super::AggError;
use super::super::answers::Answers;
use super::super::relay::core::TaskShape;
use super::super::shares::{self, ELEMENT_BYTES, Field};
use crate::mpc::chunks::ChunkAssembly;
use crate::mpc::session::{SessionError, join_peers};

/// A participant's report set: the digest of its sorted report ids and how many there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReportSet {
    pub digest: [u8; 32],
    pub count: u64,
}

/// The open request for one participant: send the share sum of the set with this digest
/// (`send_sum`), or nothing (not chosen, or the collect was refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open {
    pub digest: [u8; 32],
    pub send_sum: bool,
}

impl Open {
    const NOTHING: Open = Open {
        digest: [0; 32],
        send_sum: false,
    };
}

/// The collector, asking for report sets.
pub struct Collector {
    shape: TaskShape,
    min_reports: u64,
    own: ReportSet,
    sets: Answers<ReportSet>,
}

impl Collector {
    /// Starts a collect of task `shape` (which needs `min_reports`) whose own report set is
    /// `own`; returns the participants to ask.
    pub fn start(shape: TaskShape, min_reports: u64, own: ReportSet) -> (Self, Vec<PeerId>) {
        let others = shape.others();
        let collector = Self {
            sets: Answers::new(others.iter().copied()),
            shape,
            min_reports,
            own,
        };
        (collector, others)
    }

    /// Participants that could not be asked: they give no report set.
    pub fn unreachable(&mut self, peers: impl IntoIterator<Item = PeerId>) {
        self.sets.unreachable(peers);
    }

    /// The participants whose report sets are still to come.
    pub fn awaited(&self) -> Vec<PeerId> {
        self.sets.awaited()
    }

    /// Takes a participant's report set.
    pub fn receive_set(&mut self, from: PeerId, set: ReportSet) -> Result<(), SessionError> {
        self.sets.take(from, set, "report sets")
    }

    /// Chooses the set to open and its openers. Returns the open request for every
    /// participant that answered (the chosen ones send their sums; the others nothing) and
    /// the opening, or why the sum cannot be opened (then every request says nothing).
    /// `ignore_min_reports` is the test fault of a collector that skips the check.
    pub fn choose(
        self,
        ignore_min_reports: bool,
    ) -> (Vec<(PeerId, Open)>, Result<Opening, AggError>) {
        let t = usize::from(self.shape.threshold);
        let local = self.shape.local;
        let answered: Vec<PeerId> = self.sets.got().keys().copied().collect();
        let nothing = |peers: &[PeerId]| peers.iter().map(|p| (*p, Open::NOTHING)).collect();
        let mut groups: BTreeMap<ReportSet, Vec<PeerId>> = BTreeMap::new();
        groups.entry(self.own).or_default().push(local);
        for (p, set) in self.sets.got() {
            groups.entry(*set).or_default().push(*p);
        }
        let best = groups
            .iter()
            .filter(|(_, members)| members.len() > t)
            .max_by_key(|(set, members)| (set.count, members.len()));
        let Some((set, members)) = best else {
            let summary: Vec<String> = groups
                .iter()
                .map(|(s, m)| format!("{} node(s) hold {} reports", m.len(), s.count))
                .collect();
            let error = if answered.len() < t {
                AggError::new(
                    503,
                    "not_enough_participants",
                    format!(
                        "only {} of {} participants answered; t + 1 = {} are needed to open the sum (unreachable: {})",
                        answered.len() + 1,
                        self.shape.participants.len(),
                        t + 1,
                        join_peers(self.sets.unreached())
                    ),
                )
            } else {
                AggError::new(
                    409,
                    "no_agreed_report_set",
                    format!(
                        "no t + 1 = {} participants hold the same set of reports ({}); the sum cannot be opened consistently",
                        t + 1,
                        summary.join("; ")
                    ),
                )
            };
            return (nothing(&answered), Err(error));
        };
        if set.count < self.min_reports && !ignore_min_reports {
            let error = AggError::new(
                409,
                "not_enough_reports",
                format!(
                    "collect refused: {} reports are in (accepted by at least t + 1 = {} nodes), task {} needs min_reports = {}",
                    set.count,
                    t + 1,
                    self.shape.task_id,
                    self.min_reports
                ),
            );
            return (nothing(&answered), Err(error));
        }
        // t + 1 openers from the agreeing group, this node first when it is one of them.
        let mut chosen: Vec<PeerId> = Vec::with_capacity(t + 1);
        if members.contains(&local) {
            chosen.push(local);
        }
        for m in members {
            if chosen.len() > t {
                break;
            }
            if *m != local {
                chosen.push(*m);
            }
        }
        let requests = answered
            .iter()
            .map(|p| {
                let open = if chosen.contains(p) {
                    Open {
                        digest: set.digest,
                        send_sum: true,
                    }
                } else {
                    Open::NOTHING
                };
                (*p, open)
            })
            .collect();
        let sum_bytes = self.shape.length as usize * ELEMENT_BYTES;
        let pending = chosen
            .iter()
            .filter(|p| **p != local)
            .map(|p| (*p, ChunkAssembly::new(sum_bytes, true)))
            .collect();
        let opening = Opening {
            shape: self.shape,
            set: *set,
            chosen,
            pending,
            sums: BTreeMap::new(),
        };
        (requests, Ok(opening))
    }
}

/// The collector, receiving the chosen participants' share sums.
pub struct Opening {
    shape: TaskShape,
    set: ReportSet,
    chosen: Vec<PeerId>,
    pending: BTreeMap<PeerId, ChunkAssembly>,
    sums: BTreeMap<PeerId, Vec<u8>>,
}

/// An opened sum: the points to interpolate (participant index, share sum) and what they
/// cover.
pub struct Opened {
    pub points: Vec<(usize, Vec<Field>)>,
    pub set: ReportSet,
    /// The participants whose share sums were combined, sorted.
    pub opened_by: Vec<PeerId>,
}

impl Opening {
    /// The report set being opened.
    pub fn set(&self) -> ReportSet {
        self.set
    }

    /// Whether this node is one of the openers (its own share sum is needed).
    pub fn local_opens(&self) -> bool {
        self.chosen.contains(&self.shape.local)
    }

    /// The chosen participants whose share sums are still coming in.
    pub fn awaited(&self) -> Vec<PeerId> {
        self.pending.keys().copied().collect()
    }

    /// The chosen remote participants (those sent an open request with `send_sum`).
    pub fn remote_chosen(&self) -> Vec<PeerId> {
        self.chosen
            .iter()
            .filter(|p| **p != self.shape.local)
            .copied()
            .collect()
    }

    /// Takes one chunk of a chosen participant's share sum.
    pub fn receive_chunk(
        &mut self,
        from: PeerId,
        index: u32,
        data: &[u8],
    ) -> Result<(), SessionError> {
        let Some(assembly) = self.pending.get_mut(&from) else {
            return Err(SessionError::blame(
                vec![from],
                format!("peer {from} sent a share sum it was not asked for"),
            ));
        };
        let complete = assembly.accept(index, data).map_err(|e| {
            SessionError::blame(
                vec![from],
                format!("participant {from} sent a bad chunk: {e}"),
            )
        })?;
        if complete && let Some(done) = self.pending.remove(&from) {
            self.sums
                .insert(from, done.into_bytes().unwrap_or_default());
        }
        Ok(())
    }

    /// The points to interpolate, once every chosen participant's sum is in; `own` is this
    /// node's share sum of the set (when it opens).
    pub fn finish(self, own: Option<Vec<Field>>) -> Result<Opened, SessionError> {
        if !self.pending.is_empty() {
            let missing = self.awaited();
            return Err(SessionError::blame(
                missing.clone(),
                format!("no share sum from {}", join_peers(&missing)),
            ));
        }
        let length = self.shape.length as usize;
        let mut own = own;
        let mut points = Vec::with_capacity(self.chosen.len());
        for p in &self.chosen {
            let index = self
                .shape
                .participants
                .iter()
                .position(|q| q == p)
                .unwrap_or(0);
            let sum = if *p == self.shape.local {
                own.take()
                    .ok_or_else(|| SessionError::failed("this node's own share sum is missing"))?
            } else {
                shares::decode(&self.sums[p], length).map_err(|e| {
                    SessionError::blame(
                        vec![*p],
                        format!("participant {p} sent a malformed share sum: {e}"),
                    )
                })?
            };
            points.push((index, sum));
        }
        let mut opened_by = self.chosen;
        opened_by.sort();
        Ok(Opened {
            points,
            set: self.set,
            opened_by,
        })
    }
}

/// A participant asked for its report set, waiting for the collector's open request.
pub struct Participant {
    collector: PeerId,
    task_id: String,
    min_reports: u64,
    set: ReportSet,
}

impl Participant {
    /// Answers a collect invitation from `collector` with this node's report set `set`.
    pub fn start(collector: PeerId, task_id: String, min_reports: u64, set: ReportSet) -> Self {
        Self {
            collector,
            task_id,
            min_reports,
            set,
        }
    }

    /// Takes the collector's open request: `Ok(Some(digest))` when this node sends its share
    /// sum of the set with that digest (the one it announced), `Ok(None)` when it was not
    /// chosen. A request for another set, or for a set under `min_reports`, is refused.
    pub fn receive_open(self, from: PeerId, open: Open) -> Result<Option<[u8; 32]>, SessionError> {
        if from != self.collector {
            return Err(SessionError::blame(
                vec![from],
                format!(
                    "peer {from} sent an open request of a collect by {}",
                    self.collector
                ),
            ));
        }
        if !open.send_sum {
            return Ok(None);
        }
        if open.digest != self.set.digest {
            return Err(SessionError::failed(
                "asked to open a report set this node did not announce",
            ));
        }
        if self.set.count < self.min_reports {
            return Err(SessionError::blame(
                vec![from],
                format!(
                    "collector {from} asked for the share sum of {} report(s) of task {}, which needs min_reports = {}; refused",
                    self.set.count, self.task_id, self.min_reports
                ),
            ));
        }
        Ok(Some(self.set.digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn peers(n: usize) -> Vec<PeerId> {
        let mut peers: Vec<PeerId> = (0..n).map(|_| PeerId::random()).collect();
        peers.sort();
        peers
    }

    fn shape(participants: &[PeerId], local: usize, threshold: u16) -> TaskShape {
        TaskShape {
            task_id: "ab".repeat(16),
            participants: participants.to_vec(),
            threshold,
            length: 2,
            local: participants[local],
        }
    }

    fn set(byte: u8, count: u64) -> ReportSet {
        ReportSet {
            digest: [byte; 32],
            count,
        }
    }

    #[test]
    fn a_collector_takes_one_report_set_from_each_participant_it_asked() {
        let p = peers(4);
        let stranger = PeerId::random();
        let (mut c, ask) = Collector::start(shape(&p, 0, 1), 1, set(1, 5));
        assert_eq!(ask, [p[1], p[2], p[3]]);
        c.unreachable([p[3]]);
        assert_eq!(c.awaited(), [p[1], p[2]]);
        assert_eq!(
            c.receive_set(stranger, set(1, 5)).unwrap_err().blamed(),
            [stranger]
        );
        assert_eq!(c.receive_set(p[3], set(1, 5)).unwrap_err().blamed(), [p[3]]);
        c.receive_set(p[1], set(1, 5)).unwrap();
        c.receive_set(p[1], set(1, 5)).unwrap();
        let e = c.receive_set(p[1], set(2, 5)).unwrap_err();
        assert!(e.reason().contains("two different"), "{e}");
        assert_eq!(c.awaited(), [p[2]]);
    }

    #[test]
    fn the_largest_set_that_t_plus_one_hold_is_opened_by_t_plus_one_of_them() {
        let p = peers(5);
        // t = 2: the larger set of the collector and p1 (2 holders) cannot be opened; the
        // smaller one of p2, p3 and p4 can.
        let (mut c, _) = Collector::start(shape(&p, 0, 2), 1, set(1, 5));
        c.receive_set(p[1], set(1, 5)).unwrap();
        for peer in &p[2..] {
            c.receive_set(*peer, set(2, 4)).unwrap();
        }
        let (requests, opening) = c.choose(false);
        let mut opening = opening.unwrap();
        let send: Vec<PeerId> = requests
            .iter()
            .filter(|(_, o)| o.send_sum)
            .map(|(p, _)| *p)
            .collect();
        assert_eq!(send, [p[2], p[3], p[4]]);
        assert!(
            requests
                .iter()
                .all(|(_, o)| !o.send_sum || o.digest == [2; 32])
        );
        assert!(!opening.local_opens());
        assert_eq!(opening.set(), set(2, 4));
        assert_eq!(opening.remote_chosen(), send);
        // Sums come from the chosen only, whole and well formed.
        assert_eq!(
            opening
                .receive_chunk(p[1], 0, &[0; 16])
                .unwrap_err()
                .blamed(),
            [p[1]]
        );
        assert!(
            opening
                .receive_chunk(p[2], 0, &[0; 15])
                .unwrap_err()
                .reason()
                .contains("must hold 16")
        );
        let sum = |v: u64| shares::encode(&shares::to_field(&[v, v]).unwrap());
        opening.receive_chunk(p[2], 0, &sum(1)).unwrap();
        opening.receive_chunk(p[3], 0, &sum(2)).unwrap();
        assert_eq!(opening.awaited(), [p[4]]);
        opening.receive_chunk(p[4], 0, &[0xff; 16]).unwrap();
        let e = opening.finish(None).err().unwrap();
        assert_eq!(e.blamed(), [p[4]]);
        assert!(e.reason().contains("malformed share sum"), "{e}");
    }

    #[test]
    fn this_node_opens_first_when_it_holds_the_set() {
        let p = peers(4);
        let (mut c, _) = Collector::start(shape(&p, 2, 1), 1, set(1, 3));
        for peer in [p[0], p[1], p[3]] {
            c.receive_set(peer, set(1, 3)).unwrap();
        }
        let (requests, opening) = c.choose(false);
        let opening = opening.unwrap();
        assert!(opening.local_opens());
        assert_eq!(opening.remote_chosen(), [p[0]]);
        assert_eq!(requests.iter().filter(|(_, o)| o.send_sum).count(), 1);
        // Its own sum is needed.
        let mut opening = opening;
        opening.receive_chunk(p[0], 0, &[0; 16]).unwrap();
        assert!(
            opening
                .finish(None)
                .err()
                .unwrap()
                .reason()
                .contains("own share sum")
        );
    }

    #[test]
    fn a_collect_without_an_agreed_set_or_enough_reports_opens_nothing() {
        let p = peers(4);
        let (mut c, _) = Collector::start(shape(&p, 0, 1), 1, set(1, 3));
        for (i, peer) in p[1..].iter().enumerate() {
            c.receive_set(*peer, set(i as u8 + 2, 3)).unwrap();
        }
        let (requests, opening) = c.choose(false);
        assert_eq!(opening.err().unwrap().code, "no_agreed_report_set");
        assert!(requests.iter().all(|(_, o)| *o == Open::NOTHING));
        assert_eq!(requests.len(), 3);

        let (mut c, _) = Collector::start(shape(&p, 0, 2), 1, set(1, 3));
        c.unreachable([p[2], p[3]]);
        c.receive_set(p[1], set(1, 3)).unwrap();
        let e = c.choose(false).1.err().unwrap();
        assert_eq!((e.status, e.code), (503, "not_enough_participants"));
        assert!(e.message.contains(&p[2].to_string()), "{e}");

        let (mut c, _) = Collector::start(shape(&p, 0, 1), 4, set(1, 3));
        c.receive_set(p[1], set(1, 3)).unwrap();
        let (requests, opening) = c.choose(false);
        assert_eq!(opening.err().unwrap().code, "not_enough_reports");
        assert!(requests.iter().all(|(_, o)| !o.send_sum));
    }

    #[test]
    fn a_participant_opens_only_the_set_it_announced_and_only_at_min_reports() {
        let p = peers(3);
        let start = |count| Participant::start(p[0], "t".into(), 3, set(1, count));
        let open = |byte| Open {
            digest: [byte; 32],
            send_sum: true,
        };
        assert_eq!(
            start(3).receive_open(p[1], open(1)).unwrap_err().blamed(),
            [p[1]]
        );
        assert_eq!(start(3).receive_open(p[0], Open::NOTHING).unwrap(), None);
        assert!(
            start(3)
                .receive_open(p[0], open(2))
                .unwrap_err()
                .reason()
                .contains("did not announce")
        );
        let e = start(2).receive_open(p[0], open(1)).unwrap_err();
        assert_eq!(e.blamed(), [p[0]]);
        assert!(e.reason().contains("min_reports = 3"), "{e}");
        assert_eq!(start(3).receive_open(p[0], open(1)).unwrap(), Some([1; 32]));
    }

    proptest! {
        #[test]
        fn any_report_sets_choose_a_set_held_by_t_plus_one_or_nothing(
            t in 1u16..4,
            answers in proptest::collection::vec((0usize..7, 0u8..3), 0..12),
            min_reports in 1u64..4,
        ) {
            let p = peers(6);
            let (mut c, _) = Collector::start(shape(&p, 0, t), min_reports, set(0, 2));
            let mut held: BTreeMap<PeerId, ReportSet> = BTreeMap::new();
            held.insert(p[0], set(0, 2));
            for (who, byte) in answers {
                let peer = p.get(who).copied().unwrap_or_else(PeerId::random);
                // A digest stands for one set: its count follows from it.
                let s = set(byte, u64::from(byte) + 2);
                if c.receive_set(peer, s).is_ok() {
                    held.insert(peer, s);
                }
            }
            let (requests, opening) = c.choose(false);
            if let Ok(opening) = opening {
                let s = opening.set();
                let holders = held.values().filter(|h| **h == s).count();
                prop_assert!(holders > usize::from(t));
                prop_assert!(s.count >= min_reports);
                let chosen = opening.remote_chosen().len() + usize::from(opening.local_opens());
                prop_assert_eq!(chosen, usize::from(t) + 1);
                prop_assert!(requests.iter().all(|(peer, o)| !o.send_sum || held[peer] == s));
            } else {
                prop_assert!(requests.iter().all(|(_, o)| !o.send_sum));
            }
        }
    }
}
