//! Policy change as an I/O-free core: no network, no clock, no task. The driver
//! ([`super`]) delivers what arrived (and the time, where a vote's life matters) and sends
//! what the core returns; every check of an incoming message is made here.
//!
//! A change of a key's policy is named by a [`Change`]: the key, the stamp (version and
//! digest) of the policy it replaces and the digest of the new one. A holder that prepares a
//! change **signs a vote** for it with its node identity key ([`PolicyVote`], under
//! [`VOTE_DOMAIN`]); a [`PolicyChangeRecord`] is committed only when it carries the votes of
//! [`commit_quorum`] distinct holders of the key (its certificate), and every holder checks
//! that certificate ([`verify_committed`]) before it applies a record, whoever sent it, as a
//! commit or in a catch-up. So a change that never gathered a quorum cannot be applied
//! anywhere, even by a compromised holder that kept its client approvals.
//!
//! The steps are types, each consumed by the step that ends it:
//!
//! - a holder: [`Voter::prepare`] (needs the admission's [`Admitted`] token, so the
//!   approvals' request ids are on disk before the vote exists) → [`Voter::commit`], which
//!   takes the voter by value;
//! - the coordinator: [`ChangeCoordinator::start`] (its own vote, from the token too) →
//!   [`ChangeCoordinator::prepared`] until a quorum voted → [`ChangeCoordinator::commit`]
//!   (by value), the certified record.
//!
//! [`VoteBook`] is a holder's memory of its votes: one change per key and version while a
//! vote lives.

use std::collections::{BTreeMap, HashMap, HashSet};

use libp2p::PeerId;
use libp2p::identity::Keypair;

use super::super::admission::Admitted;
use super::super::policy::{
    self, Authorization, PolicyChangeRecord, Refusal, SigningPolicy, refuse,
};
pub use super::super::policy::{Change, PolicyVote, VOTE_DOMAIN};
use super::super::session::SessionError;
use super::super::store::KeyInfo;
pub use super::super::store::StoredVote;
use super::super::wire::{Blob, Body, SessionId};

/// How many of `holders` (the coordinator included) must vote for a change of a
/// `threshold`-of-`holders` key before it commits (see [`super`]).
pub fn commit_quorum(holders: usize, threshold: usize) -> usize {
    let after_commit = holders.saturating_sub(threshold) + 1;
    after_commit.max(holders / 2 + 1).min(holders)
}

/// Checks that `votes` are valid votes for `change` of at least `quorum` distinct holders
/// among `holders` (the certificate of a committed change).
pub fn check_certificate(
    change: &Change,
    votes: &[PolicyVote],
    holders: &[PeerId],
    quorum: usize,
) -> Result<(), Refusal> {
    let uncertified = |why: String| {
        refuse(
            "uncertified_change",
            format!(
                "the change of key {} to policy version {} {why}",
                change.key_id,
                change.version()
            ),
        )
    };
    if votes.len() > holders.len() {
        return Err(uncertified(format!(
            "carries {} votes; the key has {} holders",
            votes.len(),
            holders.len()
        )));
    }
    let mut voters = HashSet::new();
    for vote in votes {
        let holder = vote
            .verify(change)
            .map_err(|e| uncertified(format!(": {e}")))?;
        if !holders.contains(&holder) {
            return Err(uncertified(format!(
                "carries the vote of {holder}, which does not hold the key"
            )));
        }
        if !voters.insert(holder) {
            return Err(uncertified(format!("carries two votes of {holder}")));
        }
    }
    if voters.len() < quorum {
        return Err(uncertified(format!(
            "carries the votes of {} holders; it commits with {quorum} of the {}",
            voters.len(),
            holders.len()
        )));
    }
    Ok(())
}

/// Whether `record` may be applied to `key` as held here: it is the next version, the
/// change approvers of the policy in force approved it (no expiry or replay check: it was
/// admitted when it was prepared), and a quorum of the key's holders voted for it.
pub fn verify_committed(
    key: &KeyInfo,
    holders: &[PeerId],
    record: &PolicyChangeRecord,
) -> Result<(), Refusal> {
    policy::verify_change_record(&key.policy, key.policy_version, &key.key_id, record)?;
    let change = Change {
        key_id: key.key_id.clone(),
        current: key.policy_stamp(),
        digest: record.policy.digest(),
    };
    let quorum = commit_quorum(holders.len(), usize::from(key.threshold));
    check_certificate(&change, &record.votes, holders, quorum)
}

/// A change prepared by its coordinator, collecting the holders' votes.
pub struct ChangeCoordinator {
    change: Change,
    record: PolicyChangeRecord,
    holders: Vec<PeerId>,
    local: PeerId,
    quorum: usize,
    votes: BTreeMap<PeerId, PolicyVote>,
}

impl ChangeCoordinator {
    /// Starts an admitted change of `key` (held by `holders`) to `policy`: this node's own
    /// vote is the first.
    pub fn start(
        admitted: Admitted,
        identity: &Keypair,
        key: &KeyInfo,
        holders: Vec<PeerId>,
        policy: SigningPolicy,
        approvals: Vec<Authorization>,
    ) -> Result<Self, SessionError> {
        drop(admitted);
        let local = identity.public().to_peer_id();
        if !holders.contains(&local) {
            return Err(SessionError::failed(format!(
                "this node does not hold key {}",
                key.key_id
            )));
        }
        let change = Change {
            key_id: key.key_id.clone(),
            current: key.policy_stamp(),
            digest: policy.digest(),
        };
        let own = PolicyVote::sign(identity, &change).map_err(SessionError::failed)?;
        let quorum = commit_quorum(holders.len(), usize::from(key.threshold));
        let record = PolicyChangeRecord {
            version: change.version(),
            policy,
            approvals,
            votes: Vec::new(),
        };
        Ok(Self {
            change,
            record,
            holders,
            local,
            quorum,
            votes: BTreeMap::from([(local, own)]),
        })
    }

    /// The change.
    pub fn change(&self) -> &Change {
        &self.change
    }

    /// How many holders, this node included, must vote before the change commits.
    pub fn quorum(&self) -> usize {
        self.quorum
    }

    /// The message that asks the other holders to prepare the change.
    pub fn prepare(&self) -> Body {
        Body::PolicyPrepare {
            key_id: self.change.key_id.clone(),
            current: self.change.current,
            policy: Blob(self.record.policy.to_bytes().into()),
            authorizations: self.record.approvals.clone(),
        }
    }

    /// Whether a quorum voted.
    pub fn certified(&self) -> bool {
        self.votes.len() >= self.quorum
    }

    /// Takes `from`'s vote. Refused and blamed: a peer that is not another holder of the
    /// key, a vote that is not `from`'s valid vote for this very change (a vote for another
    /// policy or version included), and a second, different vote. `Ok(true)`: a quorum
    /// voted.
    pub fn prepared(&mut self, from: PeerId, vote: &PolicyVote) -> Result<bool, SessionError> {
        if from == self.local || !self.holders.contains(&from) {
            return Err(SessionError::blame(
                vec![from],
                format!("peer {from} is not a holder asked to prepare this change"),
            ));
        }
        match vote.verify(&self.change) {
            Ok(holder) if holder == from => {}
            Ok(holder) => {
                return Err(SessionError::blame(
                    vec![from],
                    format!("holder {from} sent the vote of {holder} as its own"),
                ));
            }
            Err(e) => {
                return Err(SessionError::blame(
                    vec![from],
                    format!("holder {from} prepared something else: {e}"),
                ));
            }
        }
        // Votes are deterministic signatures (Ed25519), so the same vote twice is a resend.
        match self.votes.get(&from) {
            Some(previous) if previous == vote => {}
            Some(_) => {
                return Err(SessionError::blame(
                    vec![from],
                    format!("holder {from} sent two different votes"),
                ));
            }
            None => {
                self.votes.insert(from, vote.clone());
            }
        }
        Ok(self.certified())
    }

    /// The committed record: the change with the quorum's votes. Consumes the coordinator.
    pub fn commit(self) -> Result<PolicyChangeRecord, SessionError> {
        if !self.certified() {
            return Err(SessionError::failed(format!(
                "the change commits with {} votes, {} arrived",
                self.quorum,
                self.votes.len()
            )));
        }
        let mut record = self.record;
        record.votes = self.votes.into_values().collect();
        Ok(record)
    }
}

/// A holder that voted for a change and waits for its commit.
pub struct Voter {
    coordinator: PeerId,
    change: Change,
}

impl Voter {
    /// Votes for an admitted `change` prepared by `coordinator`; returns the voter and the
    /// vote to send back.
    pub fn prepare(
        admitted: Admitted,
        identity: &Keypair,
        coordinator: PeerId,
        change: Change,
    ) -> Result<(Self, PolicyVote), SessionError> {
        drop(admitted);
        let vote = PolicyVote::sign(identity, &change).map_err(SessionError::failed)?;
        Ok((
            Self {
                coordinator,
                change,
            },
            vote,
        ))
    }

    /// Takes the commit from `from`: it must be the coordinator's, of the change this holder
    /// voted for. The certificate is checked where the record is applied
    /// ([`verify_committed`]).
    pub fn commit(
        self,
        from: PeerId,
        record: PolicyChangeRecord,
    ) -> Result<PolicyChangeRecord, SessionError> {
        let coordinator = self.coordinator;
        if from != coordinator {
            return Err(SessionError::blame(
                vec![from],
                format!("peer {from} is not the coordinator of this change"),
            ));
        }
        if record.version != self.change.version() || record.policy.digest() != self.change.digest {
            return Err(SessionError::blame(
                vec![coordinator],
                format!("coordinator {coordinator} committed another change than it prepared"),
            ));
        }
        Ok(record)
    }
}

#[derive(Debug, Clone, Copy)]
struct Vote {
    stored: StoredVote,
    /// The session that cast it (none for a vote reloaded from disk).
    session: Option<SessionId>,
    /// Whether the signed vote left this node (then only a lapse or a commit ends it).
    sent: bool,
}

/// A holder's votes: at most one change per key and version while a vote lives.
#[derive(Default)]
pub struct VoteBook {
    votes: HashMap<String, Vote>,
}

impl VoteBook {
    /// Takes back votes kept on disk (a restarted holder votes as it did before).
    pub fn restore(&mut self, key_id: &str, stored: StoredVote, now_ms: u64) {
        if stored.until_ms > now_ms {
            self.votes.insert(
                key_id.to_string(),
                Vote {
                    stored,
                    session: None,
                    sent: true,
                },
            );
        }
    }

    /// Votes for the change of `key_id` to `version` with `digest` in `session`, unless a
    /// live vote for another change to that version stands; the vote lives until `until_ms`.
    pub fn vote(
        &mut self,
        key_id: &str,
        version: u64,
        digest: [u8; 32],
        session: SessionId,
        now_ms: u64,
        until_ms: u64,
    ) -> Result<StoredVote, Refusal> {
        self.votes.retain(|_, v| v.stored.until_ms > now_ms);
        let mut sent = false;
        if let Some(v) = self.votes.get(key_id)
            && v.stored.version == version
        {
            if v.stored.digest != digest {
                let by = v
                    .session
                    .map(|s| format!("session {s}"))
                    .unwrap_or_else(|| "before this node restarted".into());
                return Err(refuse(
                    "policy_change_conflict",
                    format!(
                        "another change of key {key_id} to policy version {version} is being committed ({by}); try again once it is done"
                    ),
                ));
            }
            sent = v.sent;
        }
        let stored = StoredVote {
            version,
            digest,
            until_ms,
        };
        self.votes.insert(
            key_id.to_string(),
            Vote {
                stored,
                session: Some(session),
                sent,
            },
        );
        Ok(stored)
    }

    /// Marks the vote of `session` for `key_id` as sent: from now on only a lapse or a
    /// commit ends it.
    pub fn sent(&mut self, key_id: &str, session: SessionId) {
        if let Some(v) = self.votes.get_mut(key_id)
            && v.session == Some(session)
        {
            v.sent = true;
        }
    }

    /// Drops the vote of `session` for `key_id`, if it still stands and never left this node.
    pub fn release(&mut self, key_id: &str, session: SessionId) {
        if self
            .votes
            .get(key_id)
            .is_some_and(|v| v.session == Some(session) && !v.sent)
        {
            self.votes.remove(key_id);
        }
    }

    /// Drops every vote for `key_id` up to `version` (a change to it was applied).
    pub fn settled(&mut self, key_id: &str, version: u64) {
        if self
            .votes
            .get(key_id)
            .is_some_and(|v| v.stored.version <= version)
        {
            self.votes.remove(key_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::admission::tests::admitted;
    use super::super::super::policy::tests::{client, policy};
    use super::*;

    #[test]
    fn the_commit_quorum_outnumbers_the_old_policy_and_any_other_quorum() {
        for n in 2..=20 {
            for t in 2..=n {
                let q = commit_quorum(n, t);
                assert!(q <= n, "{t}-of-{n}");
                // After a commit, fewer than t holders keep the old version.
                assert!(n - q < t, "{t}-of-{n}: quorum {q}");
                // Two quorums always share a holder.
                assert!(2 * q > n, "{t}-of-{n}: quorum {q}");
                // And no quorum is larger than it must be for both.
                assert_eq!(q, (n - t + 1).max(n / 2 + 1), "{t}-of-{n}");
            }
        }
        // A 2-of-3 or 3-of-5 key changes its policy with one holder down.
        assert_eq!(commit_quorum(3, 2), 2);
        assert_eq!(commit_quorum(5, 3), 3);
    }

    #[test]
    fn a_holder_votes_for_one_change_per_version_until_it_lapses_or_settles() {
        let mut book = VoteBook::default();
        let (s1, s2) = (SessionId::random(), SessionId::random());
        let (now, until) = (1_000, 61_000);
        book.vote("k", 1, [1; 32], s1, now, until).unwrap();
        // The same change from another coordinator is no conflict.
        book.vote("k", 1, [1; 32], s2, now, until).unwrap();
        let refused = book.vote("k", 1, [2; 32], s1, now, until).unwrap_err();
        assert_eq!(refused.rule, "policy_change_conflict");
        // Another key is independent.
        book.vote("other", 1, [2; 32], s1, now, until).unwrap();
        // Released by its session only (s2 holds it now).
        book.release("k", s1);
        assert!(book.vote("k", 1, [2; 32], s1, now, until).is_err());
        book.release("k", s2);
        book.vote("k", 1, [2; 32], s1, now, until).unwrap();
        // Once sent, a vote is not released: only a lapse or a commit ends it.
        book.sent("k", s1);
        book.release("k", s1);
        assert!(book.vote("k", 1, [3; 32], s2, now, until).is_err());
        // A second session of the same change keeps it sent.
        book.vote("k", 1, [2; 32], s2, now, until).unwrap();
        book.release("k", s2);
        assert!(book.vote("k", 1, [3; 32], s2, now, until).is_err());
        // Settled by an applied change of that version.
        book.settled("k", 1);
        book.vote("k", 2, [3; 32], s1, now, until).unwrap();
        // A vote lapses.
        book.vote("lapse", 1, [1; 32], s1, now, now).unwrap();
        book.vote("lapse", 1, [2; 32], s2, now, until).unwrap();
        // A restored vote is sent, and lapses too.
        let stored = StoredVote {
            version: 4,
            digest: [4; 32],
            until_ms: until,
        };
        book.restore("r", stored, now);
        assert!(book.vote("r", 4, [5; 32], s1, now, until).is_err());
        book.release("r", s1);
        assert!(book.vote("r", 4, [5; 32], s1, now, until).is_err());
        assert!(book.vote("r", 4, [5; 32], s1, until, until + 1).is_ok());
        book.restore("gone", stored, until);
        assert!(book.vote("gone", 4, [5; 32], s1, now, until).is_ok());
    }

    /// A 3-of-5 key's holders (identities), its info and a change of its policy approved by
    /// its one client.
    struct Fixture {
        holders: Vec<Keypair>,
        peers: Vec<PeerId>,
        key: KeyInfo,
        new_policy: SigningPolicy,
        approvals: Vec<Authorization>,
    }

    fn fixture() -> Fixture {
        let holders: Vec<Keypair> = (0..5).map(|_| Keypair::generate_ed25519()).collect();
        let peers: Vec<PeerId> = holders.iter().map(|k| k.public().to_peer_id()).collect();
        let alice = client();
        let bob = client();
        let old = policy(&[&alice], 1);
        let new_policy = policy(&[&bob], 1);
        let key = KeyInfo {
            key_id: "k".into(),
            scheme: crate::mpc::scheme::Scheme::Ed25519,
            public_key: String::new(),
            internal_key: None,
            threshold: 3,
            participants: peers.iter().map(ToString::to_string).collect(),
            status: "active".into(),
            created_by: None,
            created_at: 0,
            policy: old.clone(),
            policy_version: 0,
            generation: 0,
            generated_at: 0,
        };
        let approvals = vec![policy::approve_change(
            &alice,
            "k",
            old.stamp(0),
            &new_policy,
            policy::now() + 60,
        )];
        Fixture {
            holders,
            peers,
            key,
            new_policy,
            approvals,
        }
    }

    /// The change of the fixture, started by its first holder.
    fn coordinator_of(f: &Fixture) -> ChangeCoordinator {
        ChangeCoordinator::start(
            admitted(),
            &f.holders[0],
            &f.key,
            f.peers.clone(),
            f.new_policy.clone(),
            f.approvals.clone(),
        )
        .unwrap()
    }

    fn change_of(f: &Fixture) -> Change {
        Change {
            key_id: "k".into(),
            current: f.key.policy_stamp(),
            digest: f.new_policy.digest(),
        }
    }

    #[test]
    fn a_change_commits_with_a_quorum_of_votes_and_every_holder_verifies_the_certificate() {
        let f = fixture();
        let mut coordinator = coordinator_of(&f);
        assert_eq!(coordinator.quorum(), 3);
        assert!(!coordinator.certified());
        let mut voters = Vec::new();
        for (i, identity) in f.holders.iter().enumerate().skip(1).take(2) {
            let (voter, vote) =
                Voter::prepare(admitted(), identity, f.peers[0], change_of(&f)).unwrap();
            let done = coordinator.prepared(f.peers[i], &vote).unwrap();
            // A resend of the same vote is harmless.
            assert_eq!(coordinator.prepared(f.peers[i], &vote).unwrap(), done);
            voters.push(voter);
        }
        assert!(coordinator.certified());
        let record = coordinator.commit().unwrap();
        assert_eq!(record.version, 1);
        assert_eq!(record.votes.len(), 3);
        for voter in voters {
            let taken = voter.commit(f.peers[0], record.clone()).unwrap();
            verify_committed(&f.key, &f.peers, &taken).unwrap();
        }
        // Every holder, also those that did not vote, accepts the certified record.
        verify_committed(&f.key, &f.peers, &record).unwrap();
        // And a holder already at version 1 does not.
        let mut later = f.key.clone();
        later.policy = f.new_policy.clone();
        later.policy_version = 1;
        let refused = verify_committed(&later, &f.peers, &record).unwrap_err();
        assert_eq!(refused.rule, "policy_version_mismatch");
    }

    #[test]
    fn a_record_without_a_quorum_of_valid_votes_is_refused() {
        let f = fixture();
        let change = change_of(&f);
        let votes: Vec<PolicyVote> = f
            .holders
            .iter()
            .map(|k| PolicyVote::sign(k, &change).unwrap())
            .collect();
        let record = |votes: Vec<PolicyVote>| PolicyChangeRecord {
            version: 1,
            policy: f.new_policy.clone(),
            approvals: f.approvals.clone(),
            votes,
        };
        let refused = |votes: Vec<PolicyVote>| {
            let r = verify_committed(&f.key, &f.peers, &record(votes)).unwrap_err();
            assert_eq!(r.rule, "uncertified_change", "{}", r.detail);
            r.detail
        };
        verify_committed(&f.key, &f.peers, &record(votes[..3].to_vec())).unwrap();
        // The client approvals alone (a change that never gathered a quorum).
        assert!(refused(vec![]).contains("votes of 0 holders"));
        assert!(refused(votes[..2].to_vec()).contains("votes of 2 holders"));
        // One holder's vote twice is one vote.
        let twice = vec![votes[0].clone(), votes[1].clone(), votes[0].clone()];
        assert!(refused(twice).contains("two votes"));
        // A stranger's vote does not count.
        let stranger = Keypair::generate_ed25519();
        let mut with_stranger = votes[..2].to_vec();
        with_stranger.push(PolicyVote::sign(&stranger, &change).unwrap());
        assert!(refused(with_stranger).contains("does not hold the key"));
        // A vote for another change (another policy, or from another version) does not count.
        let other = Change {
            digest: [9; 32],
            ..change.clone()
        };
        let mut mixed = votes[..2].to_vec();
        mixed.push(PolicyVote::sign(&f.holders[2], &other).unwrap());
        assert!(refused(mixed).contains("not for this change"));
        // A vote under another holder's name, or with its key swapped, does not count.
        let mut forged = votes[..3].to_vec();
        forged[2].holder = f.peers[3].to_string();
        assert!(refused(forged).contains("public key of another peer"));
        let mut swapped = votes[..3].to_vec();
        swapped[2].public_key = votes[3].public_key.clone();
        swapped[2].holder = f.peers[3].to_string();
        assert!(refused(swapped).contains("not for this change"));
        // Garbage is refused, not a panic.
        let mut garbage = votes[..3].to_vec();
        garbage[1].public_key = "zz".into();
        assert!(refused(garbage).contains("malformed public key"));
        let mut long = votes[..3].to_vec();
        long[1].signature = "00".repeat(1000);
        assert!(refused(long).contains("too long"));
        // More votes than holders.
        let mut many = votes.clone();
        many.push(votes[0].clone());
        assert!(refused(many).contains("5 holders"));
    }

    #[test]
    fn the_coordinator_blames_votes_that_are_not_for_its_change() {
        let f = fixture();
        let mut coordinator = coordinator_of(&f);
        let change = change_of(&f);
        let blamed = |r: Result<bool, SessionError>, who: PeerId| match r {
            Err(e) => assert!(e.blamed().contains(&who), "{e}"),
            Ok(_) => panic!("accepted"),
        };
        // From a stranger, or from itself.
        let stranger = Keypair::generate_ed25519();
        let v = PolicyVote::sign(&stranger, &change).unwrap();
        blamed(
            coordinator.prepared(stranger.public().to_peer_id(), &v),
            stranger.public().to_peer_id(),
        );
        let own = PolicyVote::sign(&f.holders[0], &change).unwrap();
        blamed(coordinator.prepared(f.peers[0], &own), f.peers[0]);
        // Another holder's vote passed off as its own.
        let v2 = PolicyVote::sign(&f.holders[2], &change).unwrap();
        blamed(coordinator.prepared(f.peers[1], &v2), f.peers[1]);
        // A vote for another policy.
        let other = Change {
            digest: [7; 32],
            ..change.clone()
        };
        let v1 = PolicyVote::sign(&f.holders[1], &other).unwrap();
        blamed(coordinator.prepared(f.peers[1], &v1), f.peers[1]);
        // Not enough votes: no record.
        assert!(coordinator.commit().is_err());
    }

    #[test]
    fn a_voter_takes_only_its_coordinators_commit_of_its_change() {
        let f = fixture();
        let change = change_of(&f);
        let record = PolicyChangeRecord {
            version: 1,
            policy: f.new_policy.clone(),
            approvals: f.approvals.clone(),
            votes: vec![],
        };
        let voter = || {
            Voter::prepare(admitted(), &f.holders[1], f.peers[0], change.clone())
                .unwrap()
                .0
        };
        let err = voter().commit(f.peers[2], record.clone()).unwrap_err();
        assert!(err.blamed().contains(&f.peers[2]), "{err}");
        let mut other = record.clone();
        other.policy = policy(&[&client()], 1);
        let err = voter().commit(f.peers[0], other).unwrap_err();
        assert!(err.blamed().contains(&f.peers[0]), "{err}");
        let mut later = record.clone();
        later.version = 2;
        assert!(voter().commit(f.peers[0], later).is_err());
        assert_eq!(voter().commit(f.peers[0], record.clone()).unwrap(), record);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Random and mutated votes to the coordinator and to the certificate check: no
        /// panic, the coordinator holds at most one vote per holder, and whatever it commits
        /// is a certificate every holder accepts.
        #[test]
        fn random_and_mutated_votes_never_panic_and_state_stays_bounded(
            ops in proptest::collection::vec(
                (0u8..4, 0usize..7, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80), proptest::prelude::any::<u16>()),
                1..30,
            )
        ) {
            let f = fixture();
            let change = change_of(&f);
            let mut coordinator = coordinator_of(&f);
            let real: Vec<PolicyVote> = f
                .holders
                .iter()
                .map(|k| PolicyVote::sign(k, &change).unwrap())
                .collect();
            let mut seen = Vec::new();
            for (kind, from, random, flip) in &ops {
                let from_peer = if *from < 5 { f.peers[*from] } else { PeerId::random() };
                let mut vote = real[*from % 5].clone();
                // kind 0: a real vote; 1: random hex in one field; 2: one hex digit changed;
                // 3: a random holder name.
                let field = usize::from(*flip) % 3;
                let text = hex::encode(random);
                match kind {
                    1 => match field {
                        0 => vote.holder = text,
                        1 => vote.public_key = text,
                        _ => vote.signature = text,
                    },
                    2 => {
                        let s = if field == 1 { &mut vote.public_key } else { &mut vote.signature };
                        let at = usize::from(*flip) % s.len();
                        let digit = if &s[at..=at] == "0" { "1" } else { "0" };
                        s.replace_range(at..=at, digit);
                    }
                    3 => vote.holder = PeerId::random().to_string(),
                    _ => {}
                }
                let _ = check_certificate(&change, &[vote.clone()], &f.peers, 1);
                if coordinator.prepared(from_peer, &vote).is_ok() {
                    seen.push(from_peer);
                }
                proptest::prop_assert!(coordinator.votes.len() <= f.peers.len());
            }
            for peer in &seen {
                proptest::prop_assert!(coordinator.votes.contains_key(peer));
            }
            if coordinator.certified() {
                let record = coordinator.commit().unwrap();
                proptest::prop_assert!(verify_committed(&f.key, &f.peers, &record).is_ok());
            }
        }
    }
}
