//! Opening one batch of a task as an I/O-free core: no network, no clock, no task, no disk.
//! The driver ([`super`]) sends what a step returns, hands in what arrived, freezes, votes
//! and marks the task state, and signs; every check of an incoming message is made here.
//!
//! Why no two report sets of one batch are ever opened (the argument is in
//! ARCHITECTURE.md, "Secure aggregation: one report set per batch"): every participant
//! votes for at most one report set per batch, durably, before it says so; a participant
//! releases its share sum of a batch only against a certificate of [`open_quorum`]`(n, t)`
//! signed votes for that very set; two such quorums share at least t + 1 participants, so at
//! least one that is not compromised, and it voted once. So at most one set per batch ever
//! gets a certificate, and no share sum of any other set of that batch leaves an honest node.
//!
//! The collector: [`Collector::start`] (whom to ask) → [`Collector::receive_answer`] from
//! every participant reached (its report set of the batch, its signed statement that the set
//! is frozen, its vote if it voted) → [`Collector::propose`]: a set that at least t + 1
//! participants froze (proved by their signatures), preferring one already voted for, then
//! the largest → [`Proposing::receive_vote`] → [`Proposing::certify`]: a quorum of votes for
//! the set, and t + 1 of the participants that froze exactly it to open →
//! [`Opening::receive_chunk`] until their share sums are in → [`Opening::finish`].
//!
//! A participant ([`Participant`]): freezes the batch when asked if it holds `min_reports`
//! reports in it ([`Participant::freezes`]); votes for a proposed set only when t + 1
//! signatures prove it frozen, it has `min_reports` reports and no fewer than this node's
//! own set ([`Participant::receive_proposal`]); sends its share sum only of its own frozen
//! set, against a certificate ([`Participant::receive_open`]).

use std::collections::{BTreeMap, BTreeSet};

use libp2p::PeerId;
use libp2p::identity::PublicKey;

use super::super::AggError;
use super::super::answers::Answers;
use super::super::relay::core::TaskShape;
use super::super::shares::{self, ELEMENT_BYTES, Field};
pub use super::super::store::ReportSet;
use super::super::store::TaskInfo;
use crate::mpc::chunks::ChunkAssembly;
use crate::mpc::policy::Authorization;
use crate::mpc::session::{SessionError, join_peers};

const COLLECT_DOMAIN: &[u8] = b"p2p-mpc aggregation collect v1\0";

/// Longest a collect authorization may be valid for (seconds ahead of the clock).
pub const MAX_COLLECT_TTL: u64 = 3600;

/// The bytes a collector signs to open batch `batch` of `task_id` through `coordinator`.
pub fn collect_bytes(
    task_id: &str,
    batch: u64,
    coordinator: &PeerId,
    request_id: &[u8; 16],
    expires_at: u64,
) -> Vec<u8> {
    let peer = coordinator.to_bytes();
    let mut out = Vec::with_capacity(COLLECT_DOMAIN.len() + task_id.len() + peer.len() + 56);
    out.extend_from_slice(COLLECT_DOMAIN);
    out.extend_from_slice(&(task_id.len() as u64).to_be_bytes());
    out.extend_from_slice(task_id.as_bytes());
    out.extend_from_slice(&(peer.len() as u64).to_be_bytes());
    out.extend_from_slice(&peer);
    out.extend_from_slice(&batch.to_be_bytes());
    out.extend_from_slice(request_id);
    out.extend_from_slice(&expires_at.to_be_bytes());
    out
}

/// A collector's authorization to open batch `batch` of `task_id` through `coordinator`
/// (the signing request format of client keys, with its own signed bytes).
pub fn authorize_collect(
    key: &ed25519_dalek::SigningKey,
    task_id: &str,
    batch: u64,
    coordinator: &PeerId,
    expires_at: u64,
) -> Authorization {
    use ed25519_dalek::Signer;
    let mut request_id = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut request_id);
    let bytes = collect_bytes(task_id, batch, coordinator, &request_id, expires_at);
    Authorization {
        client: hex::encode(key.verifying_key().as_bytes()),
        request_id: hex::encode(request_id),
        coordinator: Some(coordinator.to_string()),
        expires_at,
        signature: hex::encode(key.sign(&bytes).to_bytes()),
    }
}

/// Checks that a collect of batch `batch` of `task_id`, run by `coordinator` at `now`, is
/// authorized by one of the task's `collectors` (none: anyone may collect). Every
/// participant checks it before it freezes or answers anything. The error says why not.
pub fn check_collector(
    collectors: &[String],
    task_id: &str,
    batch: u64,
    coordinator: &PeerId,
    authorization: Option<&Authorization>,
    now: u64,
) -> Result<(), String> {
    if collectors.is_empty() {
        return Ok(());
    }
    let Some(auth) = authorization else {
        return Err(format!(
            "task {task_id} opens a batch only for a collect signed by one of its {} collectors",
            collectors.len()
        ));
    };
    if !collectors
        .iter()
        .any(|c| c.eq_ignore_ascii_case(&auth.client))
    {
        return Err(format!(
            "the collect is signed by `{}`, not by a collector of task {task_id}",
            crate::log_limit::echo(&auth.client)
        ));
    }
    if auth.coordinator.as_deref() != Some(coordinator.to_string().as_str()) {
        return Err(format!(
            "the collect authorization names another coordinator than {coordinator}"
        ));
    }
    if auth.expires_at < now {
        return Err(format!(
            "the collect authorization expired at {} (now {now})",
            auth.expires_at
        ));
    }
    if auth.expires_at > now + MAX_COLLECT_TTL + 60 {
        return Err(format!(
            "the collect authorization is valid until {}: more than {MAX_COLLECT_TTL} s ahead",
            auth.expires_at
        ));
    }
    let request_id: [u8; 16] = hex::decode(&auth.request_id)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("the collect authorization's request_id is not 32 hex digits")?;
    let key = crate::mpc::policy::parse_client(&auth.client)?;
    let signature: [u8; 64] = hex::decode(&auth.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("the collect authorization's signature is not 128 hex digits")?;
    let bytes = collect_bytes(task_id, batch, coordinator, &request_id, auth.expires_at);
    key.verify_strict(&bytes, &ed25519_dalek::Signature::from_bytes(&signature))
        .map_err(|_| {
            format!("the collect authorization's signature does not verify for batch {batch} of task {task_id}")
        })
}

/// Participants that must vote for a report set of a batch before any share sum of it is
/// released: ⌈(n + t + 1) / 2⌉, so that two such quorums share at least t + 1 participants.
pub fn open_quorum(n: usize, t: usize) -> usize {
    (n + t + 2) / 2
}

/// What a participant's signature over a report set of a batch says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statement {
    /// "This is my frozen report set of the batch."
    Holds,
    /// "I vote for this report set as the batch's, and for no other."
    Vote,
}

const STATEMENT_DOMAIN: &[u8] = b"p2p-mpc aggregation batch statement v1\0";

/// The bytes a participant signs for `statement` about `set` of `batch` of `task_id`.
pub fn statement_bytes(statement: Statement, task_id: &str, batch: u64, set: ReportSet) -> Vec<u8> {
    let mut out = Vec::with_capacity(STATEMENT_DOMAIN.len() + task_id.len() + 64);
    out.extend_from_slice(STATEMENT_DOMAIN);
    out.push(match statement {
        Statement::Holds => 1,
        Statement::Vote => 2,
    });
    out.extend_from_slice(&(task_id.len() as u64).to_be_bytes());
    out.extend_from_slice(task_id.as_bytes());
    out.extend_from_slice(&batch.to_be_bytes());
    out.extend_from_slice(&set.digest);
    out.extend_from_slice(&set.count.to_be_bytes());
    out
}

/// A participant's signature as it travels in a list: (participant index, signature).
pub type Signed = (u16, Vec<u8>);

/// Who may sign statements about a batch: the participants' identity keys, in participant
/// order, as every participant stored them with the task.
#[derive(Clone)]
pub struct Signers {
    task_id: String,
    batch: u64,
    keys: Vec<PublicKey>,
}

impl Signers {
    /// The signers of batch `batch` of `info`.
    pub fn of(info: &TaskInfo, batch: u64) -> Result<Self, String> {
        let keys = info
            .keys
            .iter()
            .map(|k| {
                hex::decode(&k.identity_public_key)
                    .ok()
                    .and_then(|b| PublicKey::try_decode_protobuf(&b).ok())
                    .ok_or_else(|| format!("the identity key of {} is malformed", k.peer_id))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if keys.len() != info.params.participants.len() {
            return Err("the task does not hold one identity key per participant".into());
        }
        Ok(Self {
            task_id: info.params.task_id.clone(),
            batch,
            keys,
        })
    }

    /// The batch these statements are about.
    pub fn batch(&self) -> u64 {
        self.batch
    }

    /// Whether participant `index` signed `statement` about `set`.
    pub fn verifies(&self, index: usize, statement: Statement, set: ReportSet, sig: &[u8]) -> bool {
        self.keys.get(index).is_some_and(|k| {
            k.verify(
                &statement_bytes(statement, &self.task_id, self.batch, set),
                sig,
            )
        })
    }

    /// Checks a list of signatures of `statement` about `set`: distinct participants, each
    /// valid; returns how many signed. The error says what is wrong.
    pub fn check_list(
        &self,
        statement: Statement,
        set: ReportSet,
        list: &[Signed],
    ) -> Result<usize, String> {
        let mut signers = BTreeSet::new();
        for (index, sig) in list {
            let i = usize::from(*index);
            if !signers.insert(i) {
                return Err(format!("participant #{i} appears twice"));
            }
            if !self.verifies(i, statement, set, sig) {
                return Err(format!(
                    "the signature of participant #{i} does not verify for this set of batch {}",
                    self.batch
                ));
            }
        }
        Ok(signers.len())
    }
}

/// A participant's answer to a collect invite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchAnswer {
    /// Its report set of the batch.
    pub set: ReportSet,
    /// What counts towards `min_reports` in it (distinct clients, or reports of an open
    /// task): a claim, used only to say why nothing can be opened.
    pub clients: u64,
    /// Its signature that `set` is its frozen set (none: not frozen there).
    pub holds: Option<Vec<u8>>,
    /// The set it voted for, with its signature.
    pub vote: Option<(ReportSet, Vec<u8>)>,
}

/// A proposal: the set to vote for, the proof that t + 1 froze it, and its report ids
/// (sorted; they travel in chunks after the proposal, [`ID_BYTES`] each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    pub set: ReportSet,
    pub holds: Vec<Signed>,
    pub ids: Vec<String>,
}

/// Bytes of one report id in an id list: 32 lowercase hex digits.
pub const ID_BYTES: usize = 32;

/// Most reports of a batch that a collect opens (their ids travel in chunks, 32 bytes each:
/// 128 MiB at most).
pub const MAX_OPEN_REPORTS: u64 = 1 << 22;

/// Report ids as they travel: each id's 32 bytes, in order.
pub fn encode_ids<'a>(ids: impl IntoIterator<Item = &'a String>) -> Vec<u8> {
    ids.into_iter().flat_map(|id| id.bytes()).collect()
}

/// Report ids read from the wire for `set`: each 32 bytes (see [`check_ids`]).
pub fn decode_ids(bytes: &[u8], set: ReportSet) -> Result<Vec<String>, String> {
    if bytes.len() as u64 != set.count.saturating_mul(ID_BYTES as u64) {
        return Err(format!(
            "{} bytes of report ids for a set of {} reports",
            bytes.len(),
            set.count
        ));
    }
    let ids = bytes
        .chunks(ID_BYTES)
        .map(|piece| String::from_utf8(piece.to_vec()).map_err(|_| "a report id is not text"))
        .collect::<Result<Vec<String>, _>>()?;
    check_ids(&ids, set)?;
    Ok(ids)
}

/// Checks that `ids` are the report ids of `set`: `set.count` report ids (32 lowercase hex
/// digits), strictly ascending, whose digest is `set.digest`. The error says what is wrong.
pub fn check_ids(ids: &[String], set: ReportSet) -> Result<(), String> {
    if ids.len() as u64 != set.count {
        return Err(format!(
            "{} report ids for a set of {} reports",
            ids.len(),
            set.count
        ));
    }
    if let Some(bad) = ids.iter().find(|id| !super::super::is_hex_id(id)) {
        return Err(format!(
            "`{}` is not a report id (32 lowercase hex digits)",
            bad.escape_debug()
        ));
    }
    if ids.windows(2).any(|w| w[0] >= w[1]) {
        return Err("the report ids are not strictly ascending".into());
    }
    let sorted: BTreeSet<String> = ids.iter().cloned().collect();
    if super::super::store::report_set_digest(&sorted) != set.digest {
        return Err("the report ids do not match the set's digest".into());
    }
    Ok(())
}

/// The open request for one participant: send the share sum of `set` (`send_sum`), or
/// nothing (not chosen, or the collect was refused); `certificate`: the quorum's votes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub set: ReportSet,
    pub send_sum: bool,
    pub certificate: Vec<Signed>,
}

impl Open {
    /// No share sum asked for.
    pub fn nothing() -> Self {
        Open {
            set: ReportSet {
                digest: [0; 32],
                count: 0,
            },
            send_sum: false,
            certificate: Vec::new(),
        }
    }
}

fn index_of(shape: &TaskShape, peer: &PeerId) -> Option<usize> {
    shape.participants.iter().position(|p| p == peer)
}

/// The collector, asking for report sets of one batch.
pub struct Collector {
    shape: TaskShape,
    signers: Signers,
    min_reports: u64,
    own: BatchAnswer,
    answers: Answers<BatchAnswer>,
}

impl Collector {
    /// Starts a collect of the batch `signers` are about, of task `shape` (which needs
    /// `min_reports`), whose own answer is `own`; returns the participants to ask.
    pub fn start(
        shape: TaskShape,
        signers: Signers,
        min_reports: u64,
        own: BatchAnswer,
    ) -> (Self, Vec<PeerId>) {
        let others = shape.others();
        let collector = Self {
            answers: Answers::new(others.iter().copied()),
            shape,
            signers,
            min_reports,
            own,
        };
        (collector, others)
    }

    /// Participants that could not be asked.
    pub fn unreachable(&mut self, peers: impl IntoIterator<Item = PeerId>) {
        self.answers.unreachable(peers);
    }

    /// The participants whose answers are still to come.
    pub fn awaited(&self) -> Vec<PeerId> {
        self.answers.awaited()
    }

    /// Takes a participant's answer; a signature that does not verify is blamed.
    pub fn receive_answer(
        &mut self,
        from: PeerId,
        answer: BatchAnswer,
    ) -> Result<(), SessionError> {
        if let Some(index) = index_of(&self.shape, &from) {
            let bad = |what: &str| {
                SessionError::blame(
                    vec![from],
                    format!(
                        "participant {from} sent {what} that does not verify for batch {}",
                        self.signers.batch()
                    ),
                )
            };
            if let Some(sig) = &answer.holds
                && !self
                    .signers
                    .verifies(index, Statement::Holds, answer.set, sig)
            {
                return Err(bad("a frozen report set"));
            }
            if let Some((set, sig)) = &answer.vote
                && !self.signers.verifies(index, Statement::Vote, *set, sig)
            {
                return Err(bad("a vote"));
            }
        }
        self.answers.take(from, answer, "report sets")
    }

    /// Every answer by participant index, this node's included.
    fn all(&self) -> Vec<(PeerId, usize, &BatchAnswer)> {
        let mut all = vec![(self.shape.local, &self.own)];
        all.extend(self.answers.got().iter().map(|(p, a)| (*p, a)));
        all.into_iter()
            .filter_map(|(p, a)| index_of(&self.shape, &p).map(|i| (p, i, a)))
            .collect()
    }

    /// Chooses the set to propose. Returns the proposal for every participant that answered
    /// and has not voted yet, and the vote round, or why the batch cannot be opened (then
    /// every participant that answered is sent [`Open::nothing`]).
    /// `ignore_min_reports` is the test fault of a collector that skips the check.
    #[allow(clippy::type_complexity)]
    pub fn propose(
        self,
        ignore_min_reports: bool,
    ) -> Result<(Proposal, Vec<PeerId>, Proposing), (Vec<PeerId>, AggError)> {
        let t = usize::from(self.shape.threshold);
        let n = self.shape.participants.len();
        let batch = self.signers.batch();
        let answered: Vec<PeerId> = self.answers.got().keys().copied().collect();
        let mut holders: BTreeMap<ReportSet, Vec<Signed>> = BTreeMap::new();
        let mut votes: BTreeMap<ReportSet, Vec<Signed>> = BTreeMap::new();
        let mut largest = 0;
        for (_, i, a) in self.all() {
            largest = largest.max(a.clients);
            if let Some(sig) = &a.holds {
                holders
                    .entry(a.set)
                    .or_default()
                    .push((i as u16, sig.clone()));
            }
            if let Some((set, sig)) = &a.vote {
                votes.entry(*set).or_default().push((i as u16, sig.clone()));
            }
        }
        if answered.len() + 1 < open_quorum(n, t) && !ignore_min_reports {
            // No quorum can vote now: no proposal, so that no vote is spent on a set that a
            // later collect, with everyone back, might not choose.
            let error = AggError::new(
                503,
                "not_enough_participants",
                format!(
                    "only {} of {n} participants answered; opening batch {batch} needs {} of them (unreachable: {})",
                    answered.len() + 1,
                    open_quorum(n, t),
                    join_peers(self.answers.unreached())
                ),
            );
            return Err((answered, error));
        }
        let vote_count = |set: &ReportSet| votes.get(set).map_or(0, Vec::len);
        let mut best = holders
            .iter()
            .filter(|(set, h)| h.len() > t && set.count >= self.min_reports)
            .max_by_key(|(set, _)| (vote_count(set), set.count, set.digest))
            .map(|(set, proof)| (*set, proof.clone()));
        if ignore_min_reports && best.is_none() {
            // The rogue collector of the test fault proposes the largest set it was told
            // of, proved or not, whatever its size.
            best = self
                .all()
                .iter()
                .map(|(_, _, a)| a.set)
                .max()
                .map(|set| (set, holders.get(&set).cloned().unwrap_or_default()));
        }
        let Some((set, proof)) = best else {
            let groups: Vec<String> = holders
                .iter()
                .map(|(s, h)| format!("{} froze {} reports", h.len(), s.count))
                .collect();
            let error = if largest < self.min_reports {
                AggError::new(
                    409,
                    "not_enough_reports",
                    format!(
                        "collect refused: {largest} reports are in batch {batch} of task {} (at most, on any participant; a task that names clients counts each client once); it needs min_reports = {}",
                        self.shape.task_id, self.min_reports
                    ),
                )
            } else {
                AggError::new(
                    409,
                    "no_agreed_report_set",
                    format!(
                        "no t + 1 = {} participants froze the same report set of batch {batch} with min_reports = {} or more ({}); it cannot be opened consistently",
                        t + 1,
                        self.min_reports,
                        if groups.is_empty() {
                            "none froze it".to_string()
                        } else {
                            groups.join("; ")
                        }
                    ),
                )
            };
            return Err((answered, error));
        };
        let set = &set;
        let proposal = Proposal {
            set: *set,
            holds: proof.iter().take(t + 1).cloned().collect(),
            ids: Vec::new(),
        };
        let ask: Vec<PeerId> = self
            .answers
            .got()
            .iter()
            .filter(|(_, a)| a.vote.is_none())
            .map(|(p, _)| *p)
            .collect();
        let openers: Vec<PeerId> = self
            .all()
            .iter()
            .filter(|(_, _, a)| (a.holds.is_some() || ignore_min_reports) && a.set == *set)
            .map(|(p, _, _)| *p)
            .collect();
        let refusals = self
            .all()
            .iter()
            .filter_map(|(p, _, a)| match &a.vote {
                Some((v, _)) if v != set => Some(format!(
                    "{p} voted for another set of this batch ({} reports)",
                    v.count
                )),
                _ => None,
            })
            .collect();
        let proposing = Proposing {
            votes: Answers::new(ask.iter().copied()),
            certificate: votes.remove(set).unwrap_or_default(),
            refusals,
            set: *set,
            openers,
            answered,
            shape: self.shape,
            signers: self.signers,
        };
        Ok((proposal, ask, proposing))
    }
}

/// The collector, gathering votes for the proposed set.
pub struct Proposing {
    shape: TaskShape,
    signers: Signers,
    set: ReportSet,
    /// The participants that froze exactly the set (they can open it).
    openers: Vec<PeerId>,
    /// Every remote participant that answered the invite.
    answered: Vec<PeerId>,
    votes: Answers<Option<(ReportSet, Vec<u8>)>>,
    certificate: Vec<Signed>,
    refusals: Vec<String>,
}

impl Proposing {
    /// The set being voted on.
    pub fn set(&self) -> ReportSet {
        self.set
    }

    /// The participants that froze exactly the set (they hold its report ids), this node
    /// first when it is one.
    pub fn holders(&self) -> Vec<PeerId> {
        let local = self.shape.local;
        let mut holders: Vec<PeerId> = self
            .openers
            .iter()
            .copied()
            .filter(|p| *p == local)
            .collect();
        holders.extend(self.openers.iter().copied().filter(|p| *p != local));
        holders
    }

    /// Checks the report ids of the set that holder `from` sent; a list that does not match
    /// the set's digest is blamed on it.
    pub fn receive_ids(&self, from: PeerId, bytes: &[u8]) -> Result<Vec<String>, SessionError> {
        decode_ids(bytes, self.set).map_err(|e| {
            SessionError::blame(
                vec![from],
                format!("participant {from} sent the report ids of the set: {e}"),
            )
        })
    }

    /// Participants that could not be sent the proposal.
    pub fn unreachable(&mut self, peers: impl IntoIterator<Item = PeerId>) {
        self.votes.unreachable(peers);
    }

    /// The participants whose votes are still to come.
    pub fn awaited(&self) -> Vec<PeerId> {
        self.votes.awaited()
    }

    /// This node's own vote in force (recorded by the driver).
    pub fn local_vote(&mut self, vote: Option<(ReportSet, Vec<u8>)>, refusal: &str) {
        let local = self.shape.local;
        self.count(local, vote, refusal);
    }

    fn count(&mut self, from: PeerId, vote: Option<(ReportSet, Vec<u8>)>, refusal: &str) {
        match (vote, index_of(&self.shape, &from)) {
            (Some((set, sig)), Some(i)) if set == self.set => {
                if !self.certificate.iter().any(|(j, _)| usize::from(*j) == i) {
                    self.certificate.push((i as u16, sig));
                }
            }
            (Some((set, _)), _) => self.refusals.push(format!(
                "{from} voted for another set of this batch ({} reports)",
                set.count
            )),
            (None, _) => self.refusals.push(format!("{from}: {refusal}")),
        }
    }

    /// Takes a participant's vote in force (or its refusal); a vote that does not verify is
    /// blamed.
    pub fn receive_vote(
        &mut self,
        from: PeerId,
        vote: Option<(ReportSet, Vec<u8>)>,
        refusal: &str,
    ) -> Result<(), SessionError> {
        if let (Some((set, sig)), Some(i)) = (&vote, index_of(&self.shape, &from))
            && !self.signers.verifies(i, Statement::Vote, *set, sig)
        {
            return Err(SessionError::blame(
                vec![from],
                format!(
                    "participant {from} sent a vote that does not verify for batch {}",
                    self.signers.batch()
                ),
            ));
        }
        self.votes.take(from, vote.clone(), "votes")?;
        self.count(from, vote, refusal);
        Ok(())
    }

    /// With a quorum of votes for the set: the open request for every participant that
    /// answered the invite (t + 1 openers among those that froze the set, this node first
    /// when it is one) and the opening; otherwise why the batch cannot be opened now.
    /// `ignore_quorum`: the test fault of a rogue collector that asks for the share sums
    /// with whatever votes it has.
    pub fn certify(self, ignore_quorum: bool) -> (Vec<(PeerId, Open)>, Result<Opening, AggError>) {
        let t = usize::from(self.shape.threshold);
        let n = self.shape.participants.len();
        let quorum = open_quorum(n, t);
        let batch = self.signers.batch();
        let nothing = |peers: &[PeerId]| peers.iter().map(|p| (*p, Open::nothing())).collect();
        if self.certificate.len() < quorum && !ignore_quorum {
            let error = AggError::new(
                503,
                "no_quorum",
                format!(
                    "only {} of the {quorum} participants needed voted for the report set of batch {batch} ({} reports); the votes are kept and a later collect of batch {batch} goes on from them{}{}",
                    self.certificate.len(),
                    self.set.count,
                    if self.votes.unreached().is_empty() {
                        String::new()
                    } else {
                        format!("; unreachable: {}", join_peers(self.votes.unreached()))
                    },
                    if self.refusals.is_empty() {
                        String::new()
                    } else {
                        format!("; {}", self.refusals.join("; "))
                    }
                ),
            );
            return (nothing(&self.answered), Err(error));
        }
        // t + 1 openers give the sum; one more, when there is one, checks them (a wrong
        // share sum from any of them is then caught instead of shifting the sum).
        let local = self.shape.local;
        let mut chosen: Vec<PeerId> = Vec::with_capacity(t + 2);
        if self.openers.contains(&local) {
            chosen.push(local);
        }
        for p in &self.openers {
            if chosen.len() > t + 1 {
                break;
            }
            if *p != local {
                chosen.push(*p);
            }
        }
        if chosen.len() <= t {
            return (
                nothing(&self.answered),
                Err(AggError::new(
                    503,
                    "not_enough_participants",
                    format!(
                        "batch {batch} is certified, but only {} of the participants that froze its set answered; t + 1 = {} must open it",
                        chosen.len(),
                        t + 1
                    ),
                )),
            );
        }
        let mut certificate = self.certificate;
        certificate.sort();
        let requests = self
            .answered
            .iter()
            .map(|p| {
                let open = if chosen.contains(p) {
                    Open {
                        set: self.set,
                        send_sum: true,
                        certificate: certificate.clone(),
                    }
                } else {
                    Open::nothing()
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
            set: self.set,
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
            let index = index_of(&self.shape, p).unwrap_or(0);
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

/// This node's batch as a participant sees it when a message comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub set: ReportSet,
    pub frozen: bool,
    pub vote: Option<ReportSet>,
    /// What counts towards `min_reports` in its set: its distinct clients when the task
    /// names clients (each counts once per batch), else its reports.
    pub clients: u64,
}

/// What a participant answers a proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoteAnswer {
    /// Vote for this set (the driver records it; a vote recorded before stays in force).
    Vote(ReportSet),
    /// The proposal is proved, but this node's batch is not frozen yet: freeze it and ask
    /// again (its set, final then, decides).
    FreezeFirst,
    /// No vote, and why.
    Refuse(String),
}

/// A participant of a collect of one batch: the checks of what the collector sends.
pub struct Participant {
    collector: PeerId,
    shape: TaskShape,
    signers: Signers,
    min_reports: u64,
}

impl Participant {
    /// A participant of a collect by `collector` of the batch `signers` are about.
    pub fn new(collector: PeerId, shape: TaskShape, signers: Signers, min_reports: u64) -> Self {
        Self {
            collector,
            shape,
            signers,
            min_reports,
        }
    }

    /// Whether this node freezes the batch on a collect invite: when it holds `min_reports`
    /// reports in it (a batch under the minimum keeps taking reports, so a collector cannot
    /// cut a task into batches too small to open).
    pub fn freezes(&self, held: &Held) -> bool {
        !held.frozen && held.clients >= self.min_reports
    }

    /// Refuses (and blames) `what` from anyone but the collector.
    pub fn check_sender(&self, from: PeerId, what: &str) -> Result<(), SessionError> {
        if from != self.collector {
            return Err(SessionError::blame(
                vec![from],
                format!("peer {from} sent {what} of a collect by {}", self.collector),
            ));
        }
        Ok(())
    }

    /// Checks a proposal before its report ids are taken in: from the collector, at least
    /// `min_reports` and at most [`MAX_OPEN_REPORTS`] reports, proved by t + 1 signatures
    /// of participants that froze the set. Every failure is blamed on the collector.
    pub fn check_proposal(
        &self,
        from: PeerId,
        set: ReportSet,
        holds: &[Signed],
    ) -> Result<(), SessionError> {
        self.check_sender(from, "a proposal")?;
        let batch = self.signers.batch();
        let t = usize::from(self.shape.threshold);
        if set.count > MAX_OPEN_REPORTS {
            return Err(SessionError::blame(
                vec![from],
                format!(
                    "collector {from} proposed {} reports for batch {batch}; at most {MAX_OPEN_REPORTS} are opened at once",
                    set.count
                ),
            ));
        }
        if set.count < self.min_reports {
            return Err(SessionError::blame(
                vec![from],
                format!(
                    "collector {from} proposed {} report(s) for batch {batch} of task {}, which needs min_reports = {}; refused",
                    set.count, self.shape.task_id, self.min_reports
                ),
            ));
        }
        let proved = self
            .signers
            .check_list(Statement::Holds, set, holds)
            .map_err(|e| {
                SessionError::blame(
                    vec![from],
                    format!("collector {from} proposed a report set of batch {batch}: {e}"),
                )
            })?;
        if proved <= t {
            return Err(SessionError::blame(
                vec![from],
                format!(
                    "collector {from} proposed a report set of batch {batch} that only {proved} participant(s) froze; t + 1 = {} must",
                    t + 1
                ),
            ));
        }
        Ok(())
    }

    /// Takes a proposal with its report ids (this node's batch frozen by then): checked as
    /// [`check_proposal`](Self::check_proposal) says, and its ids must be the set's (else
    /// the collector is blamed); a set smaller than this node's own is refused. The driver's
    /// vote then refuses ids that are in another batch here.
    pub fn receive_proposal(
        &self,
        from: PeerId,
        proposal: &Proposal,
        held: &Held,
    ) -> Result<VoteAnswer, SessionError> {
        self.check_sender(from, "a proposal")?;
        if let Some(vote) = held.vote {
            return Ok(VoteAnswer::Vote(vote));
        }
        self.check_proposal(from, proposal.set, &proposal.holds)?;
        let batch = self.signers.batch();
        check_ids(&proposal.ids, proposal.set).map_err(|e| {
            SessionError::blame(
                vec![from],
                format!("collector {from} proposed a report set of batch {batch}: {e}"),
            )
        })?;
        if !held.frozen {
            return Ok(VoteAnswer::FreezeFirst);
        }
        if held.set.count > proposal.set.count {
            return Ok(VoteAnswer::Refuse(format!(
                "it holds {} reports of batch {batch}, more than the {} proposed",
                held.set.count, proposal.set.count
            )));
        }
        Ok(VoteAnswer::Vote(proposal.set))
    }

    /// Takes the collector's open request: `Ok(Some(set))` when this node sends its share
    /// sum of `set` (its own frozen set, certified by a quorum of votes, with `min_reports`
    /// reports), `Ok(None)` when it was not chosen.
    pub fn receive_open(
        &self,
        from: PeerId,
        open: &Open,
        held: &Held,
    ) -> Result<Option<ReportSet>, SessionError> {
        self.check_sender(from, "an open request")?;
        if !open.send_sum {
            return Ok(None);
        }
        let batch = self.signers.batch();
        let t = usize::from(self.shape.threshold);
        let quorum = open_quorum(self.shape.participants.len(), t);
        let votes = self
            .signers
            .check_list(Statement::Vote, open.set, &open.certificate)
            .map_err(|e| {
                SessionError::blame(
                    vec![from],
                    format!("collector {from} sent a certificate for batch {batch}: {e}"),
                )
            })?;
        if votes < quorum {
            return Err(SessionError::blame(
                vec![from],
                format!(
                    "collector {from} asked for the share sum of batch {batch} with the votes of {votes} participants; {quorum} must vote for a set before it is opened"
                ),
            ));
        }
        if !held.frozen || held.set != open.set {
            return Err(SessionError::failed(format!(
                "asked to open a report set of batch {batch} that this node did not freeze"
            )));
        }
        if held.clients < self.min_reports {
            return Err(SessionError::failed(format!(
                "asked for the share sum of batch {batch}, whose {} reports come from {} distinct clients; min_reports = {} counts each client once",
                held.set.count, held.clients, self.min_reports
            )));
        }
        if open.set.count < self.min_reports {
            return Err(SessionError::blame(
                vec![from],
                format!(
                    "collector {from} asked for the share sum of {} report(s) of batch {batch} of task {}, which needs min_reports = {}; refused",
                    open.set.count, self.shape.task_id, self.min_reports
                ),
            ));
        }
        Ok(Some(open.set))
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::store::{ParticipantKey, TaskParams};
    use super::*;
    use libp2p::identity::Keypair;
    use proptest::prelude::*;

    struct Net {
        keys: Vec<Keypair>,
        peers: Vec<PeerId>,
        info: TaskInfo,
    }

    fn net(n: usize, t: u16) -> Net {
        let mut keys: Vec<Keypair> = (0..n).map(|_| Keypair::generate_ed25519()).collect();
        keys.sort_by_key(|k| k.public().to_peer_id());
        let peers: Vec<PeerId> = keys.iter().map(|k| k.public().to_peer_id()).collect();
        let info = TaskInfo {
            params: TaskParams {
                task_id: "ab".repeat(16),
                participants: peers.iter().map(ToString::to_string).collect(),
                threshold: t,
                length: 2,
                modulus: shares::MODULUS,
                min_reports: 2,
                created_at: 0,
                created_by: None,
                clients: Vec::new(),
                collectors: Vec::new(),
                input: Default::default(),
            },
            keys: keys
                .iter()
                .map(|k| ParticipantKey {
                    peer_id: k.public().to_peer_id().to_string(),
                    identity_public_key: hex::encode(k.public().encode_protobuf()),
                    hpke_public_key: String::new(),
                    signature: String::new(),
                })
                .collect(),
        };
        Net { keys, peers, info }
    }

    impl Net {
        fn shape(&self, local: usize) -> TaskShape {
            TaskShape::of(&self.info, self.peers[local]).unwrap()
        }
        fn signers(&self) -> Signers {
            Signers::of(&self.info, 7).unwrap()
        }
        fn sign(&self, i: usize, statement: Statement, s: ReportSet) -> Vec<u8> {
            self.keys[i]
                .sign(&statement_bytes(statement, &self.info.params.task_id, 7, s))
                .unwrap()
        }
        /// Participant i's answer: it froze `s` (when `frozen`) and maybe voted.
        fn answer(
            &self,
            i: usize,
            s: ReportSet,
            frozen: bool,
            vote: Option<ReportSet>,
        ) -> BatchAnswer {
            BatchAnswer {
                set: s,
                clients: s.count,
                holds: frozen.then(|| self.sign(i, Statement::Holds, s)),
                vote: vote.map(|v| (v, self.sign(i, Statement::Vote, v))),
            }
        }
        fn participant(&self, local: usize, collector: usize) -> Participant {
            Participant::new(self.peers[collector], self.shape(local), self.signers(), 2)
        }
    }

    fn set(byte: u8, count: u64) -> ReportSet {
        ReportSet {
            digest: [byte; 32],
            count,
        }
    }

    /// `count` report ids from `first` on.
    fn ids(first: u32, count: u32) -> Vec<String> {
        (first..first + count)
            .map(|i| format!("{i:032x}"))
            .collect()
    }

    /// The report set of `ids`.
    fn real(ids: &[String]) -> ReportSet {
        let sorted: BTreeSet<String> = ids.iter().cloned().collect();
        ReportSet {
            digest: crate::mpc::aggregation::store::report_set_digest(&sorted),
            count: ids.len() as u64,
        }
    }

    /// A frozen batch holding `s`, with this vote.
    fn frozen(s: ReportSet, vote: Option<ReportSet>) -> Held {
        Held {
            set: s,
            frozen: true,
            vote,
            clients: s.count,
        }
    }

    #[test]
    fn two_quorums_share_t_plus_one_participants() {
        for n in 2..=64usize {
            for t in 1..n {
                let q = open_quorum(n, t);
                assert!(q <= n, "n = {n}, t = {t}");
                assert!(2 * q - n > t, "n = {n}, t = {t}: q = {q}");
                // And no smaller quorum would do.
                assert!(2 * (q - 1) < n + t + 1, "n = {n}, t = {t}");
            }
        }
        assert_eq!(open_quorum(6, 2), 5);
        assert_eq!(open_quorum(3, 1), 3);
        assert_eq!(open_quorum(5, 2), 4);
    }

    #[test]
    fn a_whole_collect_certifies_one_set_and_opens_it_with_t_plus_one_holders() {
        let net = net(6, 2);
        let full = real(&ids(0, 5));
        let partial = real(&ids(0, 4));
        let (mut c, ask) = Collector::start(
            net.shape(0),
            net.signers(),
            2,
            net.answer(0, full, true, None),
        );
        assert_eq!(ask, net.peers[1..]);
        // p5 missed a report: it froze a subset. p4 is not reached.
        for i in 1..4 {
            c.receive_answer(net.peers[i], net.answer(i, full, true, None))
                .unwrap();
        }
        c.receive_answer(net.peers[5], net.answer(5, partial, true, None))
            .unwrap();
        c.unreachable([net.peers[4]]);
        let (mut proposal, ask, mut voting) = c.propose(false).unwrap();
        assert_eq!(proposal.set, full);
        assert_eq!(proposal.holds.len(), 3);
        // The ids come from a holder of the set (this node first), checked against it.
        assert_eq!(voting.holders()[..2], [net.peers[0], net.peers[1]]);
        assert!(!voting.holders().contains(&net.peers[5]));
        let e = voting
            .receive_ids(net.peers[1], &encode_ids(&ids(1, 5)))
            .unwrap_err();
        assert_eq!(e.blamed(), [net.peers[1]]);
        assert!(e.reason().contains("do not match"), "{e}");
        assert!(voting.receive_ids(net.peers[1], &[b'0'; 31]).is_err());
        proposal.ids = voting
            .receive_ids(net.peers[1], &encode_ids(&ids(0, 5)))
            .unwrap();
        assert_eq!(
            ask,
            [net.peers[1], net.peers[2], net.peers[3], net.peers[5]]
        );
        // Every participant checks the proposal and votes.
        let mut votes = Vec::new();
        for i in [1, 2, 3, 5] {
            let held = frozen(if i == 5 { partial } else { full }, None);
            let answer = net
                .participant(i, 0)
                .receive_proposal(net.peers[0], &proposal, &held)
                .unwrap();
            assert_eq!(answer, VoteAnswer::Vote(full), "participant {i}");
            votes.push((i, net.sign(i, Statement::Vote, full)));
        }
        voting.local_vote(Some((full, net.sign(0, Statement::Vote, full))), "");
        for (i, sig) in votes {
            voting
                .receive_vote(net.peers[i], Some((full, sig)), "")
                .unwrap();
        }
        let (requests, opening) = voting.certify(false);
        let mut opening = opening.unwrap();
        assert!(opening.local_opens());
        let chosen: Vec<&(PeerId, Open)> = requests.iter().filter(|(_, o)| o.send_sum).collect();
        assert_eq!(
            chosen.len(),
            3,
            "this node and three more: t + 1, and one to check them"
        );
        // p5 froze another set: it is never chosen to open.
        assert!(chosen.iter().all(|(p, _)| *p != net.peers[5]));
        // A chosen participant checks the certificate and its own set.
        let (peer, open) = chosen[0];
        let i = net.peers.iter().position(|p| p == peer).unwrap();
        let held = frozen(full, Some(full));
        assert_eq!(
            net.participant(i, 0)
                .receive_open(net.peers[0], open, &held)
                .unwrap(),
            Some(full)
        );
        // Share sums come from the chosen only.
        assert_eq!(
            opening
                .receive_chunk(net.peers[5], 0, &[0; 16])
                .unwrap_err()
                .blamed(),
            [net.peers[5]]
        );
        for (p, _) in &chosen {
            let sum = shares::encode(&shares::to_field(&[1, 2]).unwrap());
            opening.receive_chunk(*p, 0, &sum).unwrap();
        }
        let opened = opening
            .finish(Some(shares::to_field(&[1, 2]).unwrap()))
            .unwrap();
        assert_eq!(opened.points.len(), 4);
        assert_eq!(opened.set, full);
    }

    #[test]
    fn a_participant_votes_only_for_a_proved_set_no_smaller_than_its_own() {
        let net = net(4, 1);
        let s_ids = ids(0, 3);
        let s = real(&s_ids);
        let p = net.participant(1, 0);
        let held = frozen(s, None);
        let proof = |who: &[usize], of: &[String]| {
            let set = real(of);
            Proposal {
                set,
                holds: who
                    .iter()
                    .map(|i| (*i as u16, net.sign(*i, Statement::Holds, set)))
                    .collect(),
                ids: of.to_vec(),
            }
        };
        // Not from the collector.
        assert_eq!(
            p.receive_proposal(net.peers[2], &proof(&[0, 2], &s_ids), &held)
                .unwrap_err()
                .blamed(),
            [net.peers[2]]
        );
        // One holder is not t + 1; the same holder twice neither; a forged signature is blamed.
        let e = p
            .receive_proposal(net.peers[0], &proof(&[0], &s_ids), &held)
            .unwrap_err();
        assert!(e.reason().contains("only 1 participant(s) froze"), "{e}");
        let e = p
            .receive_proposal(net.peers[0], &proof(&[0, 0], &s_ids), &held)
            .unwrap_err();
        assert!(e.reason().contains("appears twice"), "{e}");
        let mut forged = proof(&[0, 2], &s_ids);
        forged.holds[1].1 = net.sign(2, Statement::Vote, s);
        let e = p
            .receive_proposal(net.peers[0], &forged, &held)
            .unwrap_err();
        assert!(e.reason().contains("does not verify"), "{e}");
        // A set signed for another batch does not prove this one.
        let other_batch = Signers::of(&net.info, 8).unwrap();
        let q = Participant::new(net.peers[0], net.shape(1), other_batch, 2);
        assert!(
            q.receive_proposal(net.peers[0], &proof(&[0, 2], &s_ids), &held)
                .is_err()
        );
        // Ids that are not the set's: blamed.
        let mut swapped = proof(&[0, 2], &s_ids);
        swapped.ids = ids(1, 3);
        let e = p
            .receive_proposal(net.peers[0], &swapped, &held)
            .unwrap_err();
        assert!(e.reason().contains("do not match the set's digest"), "{e}");
        swapped.ids.pop();
        let e = p
            .receive_proposal(net.peers[0], &swapped, &held)
            .unwrap_err();
        assert!(e.reason().contains("2 report ids for a set of 3"), "{e}");
        // Under min_reports, or over what a collect opens: blamed.
        let e = p
            .receive_proposal(net.peers[0], &proof(&[0, 2], &ids(10, 1)), &held)
            .unwrap_err();
        assert!(e.reason().contains("min_reports = 2"), "{e}");
        let huge = ReportSet {
            digest: [1; 32],
            count: MAX_OPEN_REPORTS + 1,
        };
        let e = p.check_proposal(net.peers[0], huge, &[]).unwrap_err();
        assert!(e.reason().contains("at most"), "{e}");
        // Smaller than its own set: no vote, no blame.
        let smaller = ids(20, 2);
        assert!(matches!(
            p.receive_proposal(net.peers[0], &proof(&[0, 2], &smaller), &held).unwrap(),
            VoteAnswer::Refuse(r) if r.contains("more than the 2 proposed")
        ));
        // Proved, but this node's batch still takes reports: freeze first.
        let thawed = Held {
            frozen: false,
            ..held
        };
        assert_eq!(
            p.receive_proposal(net.peers[0], &proof(&[0, 2], &s_ids), &thawed)
                .unwrap(),
            VoteAnswer::FreezeFirst
        );
        // Proved and large enough: a vote; a vote recorded before stays in force.
        assert_eq!(
            p.receive_proposal(net.peers[0], &proof(&[0, 2], &s_ids), &held)
                .unwrap(),
            VoteAnswer::Vote(s)
        );
        let voted = Held {
            vote: Some(real(&smaller)),
            ..held
        };
        assert_eq!(
            p.receive_proposal(net.peers[0], &proof(&[0, 2], &s_ids), &voted)
                .unwrap(),
            VoteAnswer::Vote(real(&smaller))
        );
    }

    #[test]
    fn a_participant_opens_only_its_own_frozen_set_against_a_quorum_of_votes() {
        let net = net(4, 1);
        let s = set(1, 3);
        let p = net.participant(1, 0);
        let held = frozen(s, Some(s));
        let open = |who: &[usize], of: ReportSet| Open {
            set: of,
            send_sum: true,
            certificate: who
                .iter()
                .map(|i| (*i as u16, net.sign(*i, Statement::Vote, of)))
                .collect(),
        };
        assert_eq!(open_quorum(4, 1), 3);
        assert_eq!(
            p.receive_open(net.peers[0], &Open::nothing(), &held)
                .unwrap(),
            None
        );
        assert_eq!(
            p.receive_open(net.peers[2], &open(&[0, 1, 2], s), &held)
                .unwrap_err()
                .blamed(),
            [net.peers[2]]
        );
        // t + 1 votes are not a quorum.
        let e = p
            .receive_open(net.peers[0], &open(&[0, 1], s), &held)
            .unwrap_err();
        assert!(
            e.reason().contains("votes of 2 participants; 3 must"),
            "{e}"
        );
        // Holds statements are not votes.
        let mut holds = open(&[0, 1, 2], s);
        holds.certificate[2].1 = net.sign(2, Statement::Holds, s);
        assert!(p.receive_open(net.peers[0], &holds, &held).is_err());
        // Another set than its own frozen one, or a batch not frozen: refused.
        let other = set(2, 3);
        let e = p
            .receive_open(net.peers[0], &open(&[0, 1, 2], other), &held)
            .unwrap_err();
        assert!(e.reason().contains("did not freeze"), "{e}");
        let thawed = Held {
            frozen: false,
            ..held
        };
        assert!(
            p.receive_open(net.peers[0], &open(&[0, 1, 2], s), &thawed)
                .is_err()
        );
        // Under min_reports: refused even with a certificate.
        let tiny = set(3, 1);
        let small = frozen(tiny, Some(tiny));
        let e = p
            .receive_open(net.peers[0], &open(&[0, 1, 2], tiny), &small)
            .unwrap_err();
        assert!(e.reason().contains("min_reports = 2"), "{e}");
        assert_eq!(
            p.receive_open(net.peers[0], &open(&[0, 1, 3], s), &held)
                .unwrap(),
            Some(s)
        );
    }

    #[test]
    fn a_collect_without_a_proved_set_or_a_quorum_opens_nothing() {
        let net = net(4, 1);
        // Nobody froze (under min_reports): not enough reports.
        let (mut c, _) = Collector::start(
            net.shape(0),
            net.signers(),
            2,
            net.answer(0, set(1, 1), false, None),
        );
        for i in 1..4 {
            c.receive_answer(net.peers[i], net.answer(i, set(1, 1), false, None))
                .unwrap();
        }
        let (told, e) = c.propose(false).err().unwrap();
        assert_eq!(e.code, "not_enough_reports");
        assert!(e.message.contains("1 reports are in batch 7"), "{e}");
        assert_eq!(told.len(), 3);
        // Every set frozen by one node only: no agreed set.
        let (mut c, _) = Collector::start(
            net.shape(0),
            net.signers(),
            2,
            net.answer(0, set(0, 3), true, None),
        );
        for i in 1..4 {
            c.receive_answer(net.peers[i], net.answer(i, set(i as u8, 3), true, None))
                .unwrap();
        }
        assert_eq!(
            c.propose(false).err().unwrap().1.code,
            "no_agreed_report_set"
        );
        // A bad signature in an answer is blamed.
        let (mut c, _) = Collector::start(
            net.shape(0),
            net.signers(),
            2,
            net.answer(0, set(0, 3), true, None),
        );
        let mut forged = net.answer(1, set(0, 3), true, None);
        forged.holds = Some(net.sign(2, Statement::Holds, set(0, 3)));
        assert_eq!(
            c.receive_answer(net.peers[1], forged).unwrap_err().blamed(),
            [net.peers[1]]
        );
        // Too few votes: no quorum, nothing opened, the reason named.
        let s = set(0, 3);
        let (mut c, _) =
            Collector::start(net.shape(0), net.signers(), 2, net.answer(0, s, true, None));
        c.receive_answer(net.peers[1], net.answer(1, s, true, None))
            .unwrap();
        c.receive_answer(net.peers[2], net.answer(2, s, true, Some(set(9, 4))))
            .unwrap();
        c.unreachable([net.peers[3]]);
        let (_, ask, mut voting) = c.propose(false).unwrap();
        assert_eq!(ask, [net.peers[1]], "p2 voted already");
        voting.local_vote(Some((s, net.sign(0, Statement::Vote, s))), "");
        voting
            .receive_vote(net.peers[1], Some((s, net.sign(1, Statement::Vote, s))), "")
            .unwrap();
        let (requests, opening) = voting.certify(false);
        let e = opening.err().unwrap();
        assert_eq!(e.code, "no_quorum");
        assert!(e.message.contains("only 2 of the 3"), "{e}");
        assert!(e.message.contains("voted for another set"), "{e}");
        assert!(requests.iter().all(|(_, o)| !o.send_sum));
    }

    #[test]
    fn a_collect_goes_on_from_the_votes_of_an_earlier_one() {
        let net = net(4, 1);
        let (a, b) = (set(1, 3), set(2, 3));
        // An earlier collect left votes for `a` on p1 and p2; the larger-count `b` would
        // otherwise win. `a` is proposed again so that the votes add up.
        let (mut c, _) =
            Collector::start(net.shape(0), net.signers(), 2, net.answer(0, a, true, None));
        c.receive_answer(net.peers[1], net.answer(1, a, true, Some(a)))
            .unwrap();
        c.receive_answer(net.peers[2], net.answer(2, b, true, Some(a)))
            .unwrap();
        c.receive_answer(net.peers[3], net.answer(3, b, true, None))
            .unwrap();
        let (proposal, ask, _) = c.propose(false).unwrap();
        assert_eq!(proposal.set, a);
        assert_eq!(ask, [net.peers[3]]);
    }

    #[test]
    fn only_a_listed_collector_opens_a_batch_through_the_node_it_names() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let other = ed25519_dalek::SigningKey::from_bytes(&[4; 32]);
        let collectors = vec![hex::encode(key.verifying_key().as_bytes())];
        let (node, elsewhere) = (PeerId::random(), PeerId::random());
        let now = 1_000_000;
        let task = "ab".repeat(16);
        let check =
            |auth: Option<&Authorization>| check_collector(&collectors, &task, 2, &node, auth, now);
        assert!(
            check_collector(&[], &task, 2, &node, None, now).is_ok(),
            "open task"
        );
        assert!(
            check(None)
                .unwrap_err()
                .contains("signed by one of its 1 collectors")
        );
        let good = authorize_collect(&key, &task, 2, &node, now + 60);
        assert_eq!(check(Some(&good)), Ok(()));
        let e = check(Some(&authorize_collect(&other, &task, 2, &node, now + 60))).unwrap_err();
        assert!(e.contains("not by a collector"), "{e}");
        let e = check(Some(&authorize_collect(
            &key,
            &task,
            2,
            &elsewhere,
            now + 60,
        )))
        .unwrap_err();
        assert!(e.contains("another coordinator"), "{e}");
        let e = check(Some(&authorize_collect(&key, &task, 3, &node, now + 60))).unwrap_err();
        assert!(e.contains("does not verify for batch 2"), "{e}");
        let e = check(Some(&authorize_collect(&key, &task, 2, &node, now - 1))).unwrap_err();
        assert!(e.contains("expired"), "{e}");
        let e = check(Some(&authorize_collect(
            &key,
            &task,
            2,
            &node,
            now + 2 * MAX_COLLECT_TTL,
        )))
        .unwrap_err();
        assert!(e.contains("ahead"), "{e}");
        let mut forged = good.clone();
        forged.expires_at += 1;
        assert!(
            check(Some(&forged))
                .unwrap_err()
                .contains("does not verify")
        );
    }

    proptest! {
        /// Whatever honest participants froze and voted before, and whatever a collector
        /// proposes, no two different sets of one batch get a certificate that an honest
        /// participant accepts, as long as each honest participant votes once.
        #[test]
        fn no_two_sets_of_one_batch_are_certified(
            n in 3usize..8,
            t_pick in 0usize..8,
            // Per participant: which of three sets it votes for (3: none).
            votes in proptest::collection::vec(0u8..4, 8),
            // Compromised participants vote for every set.
            compromised in proptest::collection::vec(proptest::bool::ANY, 8),
        ) {
            let t = 1 + t_pick % (n - 1);
            let net = net(n, t as u16);
            let sets = [set(1, 3), set(2, 3), set(3, 3)];
            let bad: Vec<usize> = (0..n).filter(|i| compromised[*i]).take(t).collect();
            let certified: Vec<ReportSet> = sets
                .iter()
                .copied()
                .filter(|s| {
                    let certificate: Vec<Signed> = (0..n)
                        .filter(|i| bad.contains(i) || sets.get(usize::from(votes[*i])) == Some(s))
                        .map(|i| (i as u16, net.sign(i, Statement::Vote, *s)))
                        .collect();
                    let held = frozen(*s, Some(*s));
                    let honest = (0..n).find(|i| !bad.contains(i)).unwrap();
                    let collector = (honest + 1) % n;
                    let open = Open { set: *s, send_sum: true, certificate };
                    net.participant(honest, collector).receive_open(net.peers[collector], &open, &held).is_ok()
                })
                .collect();
            prop_assert!(certified.len() <= 1, "n = {}, t = {}: {:?}", n, t, certified);
        }
    }
}
