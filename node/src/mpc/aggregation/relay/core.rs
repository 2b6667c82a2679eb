//! Relaying reports as an I/O-free core: no network, no clock, no task, no disk. The driver
//! ([`super`]) sends what a step returns, hands in what arrived, opens shares and writes the
//! task state; every check of an incoming message is made here, at the top of the method
//! that takes it.
//!
//! One path for every report, whatever its size: a relay session carries a batch of reports
//! (a lone report is a batch of one). Each remote owner gets one invite with its sealed share
//! of every report of the batch. A share that fits in a message travels inside the invite; a
//! longer one (a long vector) travels after it in chunks, and then the batch holds that one
//! report only. Whether a task's shares are inline or streamed follows from its vector length
//! alone ([`TaskShape::streamed`]), so relay and owner agree on it without asking.
//!
//! The relay: [`Relay::start`] (the invites, and this node's own shares to open) →
//! [`Relay::receive`] one verdict list from every owner that took its invite →
//! [`Relay::judge`] (per report: refused by anyone, or taken by everyone reachable and by
//! t + 1 at least; a commit flag per report) → [`Committing::receive_stored`] from every
//! owner that answered.
//!
//! An owner: [`Owner::invited`] (every check of the invite) → [`Owner::receive_chunk`] while
//! a streamed share comes in → [`Owner::shares`] (what to open) → [`Judging::verdicts`]
//! (what to answer) → [`AwaitingCommit::receive_commit`] (what to store, what to drop).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use libp2p::PeerId;

use super::super::answers::Answers;
use super::super::encryption::{self, EncryptionKey};
use super::super::shares::{self, Field};
use super::super::store::{TaskEntry, TaskInfo};
use super::super::validity::Validator;
use super::super::{TAG_BYTES, is_hex_id};
use crate::mpc::chunks::{CHUNK_BYTES, ChunkAssembly};
use crate::mpc::parse_peers;
use crate::mpc::session::{SessionError, join_peers};
use crate::mpc::wire::{BatchShare, Blob, MAX_BATCH_ITEMS};

/// Why a share or report was refused: (code, message), as a verdict carries it.
pub type Refusal = (String, String);

/// One owner's sealed share of a report, and the client's signature of it when the task
/// names clients: (the client's index in the task's list, its signature).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub owner: PeerId,
    pub enc: Vec<u8>,
    pub ct: Vec<u8>,
    pub signed: Option<(u16, Vec<u8>)>,
}

/// The sealed shares of one report, one per participant, in participant order.
pub type SealedShares = Vec<Sealed>;

const SHARE_DOMAIN: &[u8] = b"p2p-mpc aggregation share v1\0";

/// The bytes a client signs for the share of report `report_id` of task `task_id` sealed
/// to `owner`: each owner checks the signature of its own share.
pub fn share_signed_bytes(
    task_id: &str,
    report_id: &str,
    owner: &PeerId,
    enc: &[u8],
    ct: &[u8],
) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update((enc.len() as u64).to_be_bytes());
    h.update(enc);
    h.update(ct);
    let owner = owner.to_bytes();
    let mut out =
        Vec::with_capacity(SHARE_DOMAIN.len() + task_id.len() + report_id.len() + owner.len() + 56);
    out.extend_from_slice(SHARE_DOMAIN);
    for part in [task_id.as_bytes(), report_id.as_bytes(), &owner] {
        out.extend_from_slice(&(part.len() as u64).to_be_bytes());
        out.extend_from_slice(part);
    }
    out.extend_from_slice(&h.finalize());
    out
}

/// Checks the client's signature of this node's share of a report of a task that names
/// `clients` (none: an open task, where nothing is checked). Returns the client's key (hex)
/// to count the report under, or why the share is refused.
pub fn check_client(
    shape: &TaskShape,
    report_id: &str,
    enc: &[u8],
    ct: &[u8],
    signed: Option<&(u16, Vec<u8>)>,
) -> Result<Option<String>, Refusal> {
    let clients = &shape.clients;
    if clients.is_empty() {
        return Ok(None);
    }
    let task_id = &shape.task_id;
    let Some((index, signature)) = signed else {
        return Err((
            "unsigned_report".into(),
            format!("task {task_id} takes only reports signed by one of its clients"),
        ));
    };
    let Some(client) = clients.get(usize::from(*index)) else {
        return Err((
            "unknown_client".into(),
            format!(
                "the report names client #{index}; task {task_id} lists {} clients",
                clients.len()
            ),
        ));
    };
    let key =
        crate::mpc::policy::parse_client(client).map_err(|e| ("unknown_client".to_string(), e))?;
    let sig = <[u8; 64]>::try_from(signature.as_slice())
        .map(|b| ed25519_dalek::Signature::from_bytes(&b))
        .map_err(|_| {
            (
                "bad_signature".to_string(),
                "a client signature is 64 bytes".to_string(),
            )
        })?;
    let bytes = share_signed_bytes(task_id, report_id, &shape.local, enc, ct);
    key.verify_strict(&bytes, &sig).map_err(|_| {
        (
            "bad_signature".to_string(),
            format!("the signature of this node's share of report {report_id} by client #{index} does not verify"),
        )
    })?;
    Ok(Some(client.to_ascii_lowercase()))
}

/// Largest sealed share that travels inside an invite; longer ones follow it in chunks.
pub const MAX_INLINE_SHARE: usize = CHUNK_BYTES;

/// Reports in one batch at most.
pub const MAX_BATCH: usize = MAX_BATCH_ITEMS;

/// What relay and owners of one task know of it.
#[derive(Debug, Clone)]
pub struct TaskShape {
    pub task_id: String,
    /// Sorted; participant i holds shares at x = i + 1.
    pub participants: Vec<PeerId>,
    pub threshold: u16,
    pub length: u32,
    /// This node.
    pub local: PeerId,
    /// The task's client keys (hex); empty: an open task.
    pub clients: Vec<String>,
    /// The Prio3 instance of a validated task (its reports carry validity proofs).
    pub validator: Option<std::sync::Arc<Validator>>,
}

impl TaskShape {
    /// The shape of a stored task, seen from `local`.
    pub fn of(info: &TaskInfo, local: PeerId) -> Result<Self, String> {
        let validator =
            Validator::new(info.params.input, info.params.participants.len())?.map(Into::into);
        Self::with_validator(info, local, validator)
    }

    /// The shape of a task this node holds (its Prio3 instance made once, at load).
    pub fn of_task(task: &TaskEntry, local: PeerId) -> Result<Self, String> {
        Self::with_validator(
            &task.info,
            local,
            task.validation.as_ref().map(|(v, _)| v.clone()),
        )
    }

    fn with_validator(
        info: &TaskInfo,
        local: PeerId,
        validator: Option<std::sync::Arc<Validator>>,
    ) -> Result<Self, String> {
        Ok(Self {
            task_id: info.params.task_id.clone(),
            participants: parse_peers(&info.params.participants)?,
            threshold: info.params.threshold,
            length: info.params.length,
            local,
            clients: info.params.clients.clone(),
            validator,
        })
    }

    /// Bytes of one sealed share of this task: the vector, or the (padded) Prio3 share.
    pub fn sealed_bytes(&self) -> usize {
        match &self.validator {
            Some(v) => v.share_bytes() + TAG_BYTES,
            None => self.length as usize * shares::ELEMENT_BYTES + TAG_BYTES,
        }
    }

    /// This node's participant index.
    pub fn local_index(&self) -> Option<usize> {
        self.participants.iter().position(|p| *p == self.local)
    }

    /// Whether this task's shares travel in chunks after the invite (one report per batch)
    /// rather than inside it.
    pub fn streamed(&self) -> bool {
        self.sealed_bytes() > MAX_INLINE_SHARE
    }

    /// Owners that must take a report: t + 1 (every one of a validated task: n of n).
    fn need(&self) -> usize {
        match self.validator {
            Some(_) => self.participants.len(),
            None => usize::from(self.threshold) + 1,
        }
    }

    /// The participants other than this node, in order.
    pub fn others(&self) -> Vec<PeerId> {
        self.participants
            .iter()
            .filter(|p| **p != self.local)
            .copied()
            .collect()
    }
}

/// Opens one sealed share for this node and checks its values (no reservation: the driver
/// keeps report ids). `plaintext_fault`: the test-only fault under which a share with an
/// empty encapsulated key travels unsealed.
pub fn open_sealed(
    key: &EncryptionKey,
    task_id: &str,
    length: u32,
    report_id: &str,
    encapped_key: &[u8],
    ciphertext: &[u8],
    plaintext_fault: bool,
) -> Result<Vec<Field>, Refusal> {
    let plain = if plaintext_fault && encapped_key.is_empty() {
        let body = ciphertext.len().saturating_sub(TAG_BYTES);
        ciphertext[..body].to_vec()
    } else {
        let aad = encryption::associated_data(task_id, report_id);
        key.open(encapped_key, ciphertext, &aad)
            .map_err(|e| ("bad_ciphertext".to_string(), e))?
    };
    shares::decode(&plain, length as usize).map_err(|e| match e {
        shares::ShareError::WrongLength { expected, got } => (
            "wrong_length".to_string(),
            format!("the share holds {got} values; task {task_id} has length {expected}"),
        ),
        shares::ShareError::OutOfField { index, .. } => (
            "value_out_of_field".to_string(),
            format!(
                "share value at position {index} is outside the field (at or above {})",
                shares::MODULUS
            ),
        ),
        other => ("invalid_report".to_string(), other.to_string()),
    })
}

/// Opens one sealed share of a validated task: the plaintext Prio3 report share (its proof
/// is checked by [`Validator::start`] and [`Validator::finish`]).
pub fn open_plain(
    key: &EncryptionKey,
    task_id: &str,
    report_id: &str,
    encapped_key: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, Refusal> {
    let aad = encryption::associated_data(task_id, report_id);
    key.open(encapped_key, ciphertext, &aad)
        .map_err(|e| ("bad_ciphertext".to_string(), e))
}

/// Checks the verifier shares an owner sent with its verdicts on a validated task: one per
/// report of the batch, each as long as the task's verifier shares, and empty exactly for
/// the reports it refused.
pub fn check_verifiers(
    shape: &TaskShape,
    from: PeerId,
    rejected: &[Option<Refusal>],
    verifiers: &[Blob],
) -> Result<(), SessionError> {
    let Some(v) = &shape.validator else {
        return if verifiers.is_empty() {
            Ok(())
        } else {
            Err(SessionError::blame(
                vec![from],
                format!("participant {from} sent verifier shares for a raw task"),
            ))
        };
    };
    if verifiers.len() != rejected.len() {
        return Err(SessionError::blame(
            vec![from],
            format!(
                "participant {from} sent {} verifier shares for {} reports",
                verifiers.len(),
                rejected.len()
            ),
        ));
    }
    for (r, s) in rejected.iter().zip(verifiers) {
        let expected = if r.is_some() { 0 } else { v.verifier_bytes() };
        if s.0.len() != expected {
            return Err(SessionError::blame(
                vec![from],
                format!(
                    "participant {from} sent a {}-byte verifier share; expected {expected}",
                    s.0.len()
                ),
            ));
        }
    }
    Ok(())
}

/// Checks the verifier shares a relay committed with a validated task's reports: for each
/// committed report, one per participant in participant order, this node's own unchanged
/// (`own`: this node's verifier share of each report, empty where it refused); nothing for
/// a report not committed.
pub fn check_committed_verifiers(
    shape: &TaskShape,
    from: PeerId,
    commits: &[bool],
    verifiers: &[Vec<Blob>],
    own: &[Vec<u8>],
) -> Result<(), SessionError> {
    let blame = |m: String| Err(SessionError::blame(vec![from], m));
    let Some(v) = &shape.validator else {
        return if verifiers.is_empty() {
            Ok(())
        } else {
            blame(format!("relay {from} sent verifier shares for a raw task"))
        };
    };
    if verifiers.len() != commits.len() || own.len() != commits.len() {
        return blame(format!(
            "relay {from} sent verifier shares of {} reports for a batch of {}",
            verifiers.len(),
            commits.len()
        ));
    }
    let n = shape.participants.len();
    let index = shape.local_index().unwrap_or(usize::MAX);
    for ((commit, set), mine) in commits.iter().zip(verifiers).zip(own) {
        match commit {
            false if set.is_empty() => {}
            false => {
                return blame(format!(
                    "relay {from} sent verifier shares of a dropped report"
                ));
            }
            true => {
                if set.len() != n || set.iter().any(|s| s.0.len() != v.verifier_bytes()) {
                    return blame(format!(
                        "relay {from} committed a report with {} verifier shares (of the wrong size or count); {n} of {} bytes are needed",
                        set.len(),
                        v.verifier_bytes()
                    ));
                }
                if set.get(index).map(|s| &s.0[..]) != Some(&mine[..]) {
                    return blame(format!(
                        "relay {from} committed a report with another verifier share for this node than the one it sent"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A remote owner's invite: its sealed share of each report (ciphertexts left empty when
/// `streamed`), and the ciphertext to send after it in chunks when streamed.
#[derive(Clone)]
pub struct Invite {
    pub shares: Vec<BatchShare>,
    pub streamed: Option<Bytes>,
}

/// How one report of a batch ended: the owners that took it (sorted), or the refusal.
pub type Judged = Result<Vec<PeerId>, Refusal>;

/// The relay's side of one batch, waiting for the owners' verdicts.
pub struct Relay {
    shape: TaskShape,
    report_ids: Vec<String>,
    /// The remote owners sent an invite, each owing a verdict list and the batch it was
    /// taking when it reserved the reports.
    verdicts: Answers<(Vec<Option<Refusal>>, u64)>,
    /// A validated task's verifier shares, by owner: one per report (empty: refused).
    verifiers: BTreeMap<PeerId, Vec<Blob>>,
}

impl Relay {
    /// Starts a batch of `reports` (report id, sealed shares): the core, an invite for each
    /// remote owner, and this node's own (encapsulated key, ciphertext) of each report.
    #[allow(clippy::type_complexity)]
    pub fn start(
        shape: TaskShape,
        reports: Vec<(String, SealedShares)>,
    ) -> Result<(Self, Vec<(PeerId, Invite)>, Vec<Sealed>), SessionError> {
        let count = reports.len();
        if count == 0 || count > MAX_BATCH {
            return Err(SessionError::failed(format!(
                "a relay batch holds 1 to {MAX_BATCH} reports, not {count}"
            )));
        }
        if shape.streamed() && count > 1 {
            return Err(SessionError::failed(format!(
                "shares of task {} travel in chunks, one report per batch; got {count}",
                shape.task_id
            )));
        }
        let sealed_bytes = shape.sealed_bytes();
        let mut report_ids = Vec::with_capacity(count);
        let mut local = Vec::with_capacity(count);
        let mut per_owner: BTreeMap<PeerId, Vec<BatchShare>> = BTreeMap::new();
        let mut streams: BTreeMap<PeerId, Bytes> = BTreeMap::new();
        for (report_id, sealed) in reports {
            let owners: Vec<PeerId> = sealed.iter().map(|s| s.owner).collect();
            if owners != shape.participants {
                return Err(SessionError::failed(format!(
                    "report {report_id} does not carry one share per participant of task {}, in order",
                    shape.task_id
                )));
            }
            for share in sealed {
                let owner = share.owner;
                if share.ct.len() != sealed_bytes {
                    return Err(SessionError::failed(format!(
                        "the share of report {report_id} for {owner} is {} bytes, not {sealed_bytes}",
                        share.ct.len()
                    )));
                }
                if owner == shape.local {
                    local.push(share);
                    continue;
                }
                let Sealed {
                    enc, ct, signed, ..
                } = share;
                let ciphertext = if shape.streamed() {
                    streams.insert(owner, Bytes::from(ct));
                    Blob(Bytes::new())
                } else {
                    Blob(Bytes::from(ct))
                };
                per_owner.entry(owner).or_default().push(BatchShare {
                    report_id: report_id.clone(),
                    encapped_key: Blob(enc.into()),
                    ciphertext,
                    client: signed.map(|(i, s)| (i, Blob(s.into()))),
                });
            }
            report_ids.push(report_id);
        }
        if local.len() != count {
            return Err(SessionError::failed(format!(
                "this node ({}) is not a participant of task {}",
                shape.local, shape.task_id
            )));
        }
        let invites: Vec<(PeerId, Invite)> = per_owner
            .into_iter()
            .map(|(owner, shares)| {
                let streamed = streams.remove(&owner);
                (owner, Invite { shares, streamed })
            })
            .collect();
        let relay = Self {
            verifiers: BTreeMap::new(),
            verdicts: Answers::new(invites.iter().map(|(p, _)| *p)),
            shape,
            report_ids,
        };
        Ok((relay, invites, local))
    }

    /// Owners that could not be sent their invite: they hold none of these reports and owe
    /// no verdict.
    pub fn unreachable(&mut self, peers: impl IntoIterator<Item = PeerId>) {
        self.verdicts.unreachable(peers);
    }

    /// The owners whose verdicts are still to come.
    pub fn awaited(&self) -> Vec<PeerId> {
        self.verdicts.awaited()
    }

    /// Takes an owner's verdict list: one entry per report of the batch, `None` for a share
    /// it accepted (and holds reserved), or its refusal; and `batch`, the task batch the
    /// owner takes reports into (the commit names a batch no lower).
    pub fn receive(
        &mut self,
        from: PeerId,
        rejected: &[Option<Refusal>],
        batch: u64,
    ) -> Result<(), SessionError> {
        let count = self.report_ids.len();
        if rejected.len() != count {
            return Err(SessionError::blame(
                vec![from],
                format!(
                    "participant {from} answered a batch of {count} reports with {} verdicts",
                    rejected.len()
                ),
            ));
        }
        self.verdicts
            .take(from, (rejected.to_vec(), batch), "verdicts")
    }

    /// Takes an owner's verdicts with the verifier shares of a validated task (checked by
    /// [`check_verifiers`]).
    pub fn receive_with_verifiers(
        &mut self,
        from: PeerId,
        rejected: &[Option<Refusal>],
        batch: u64,
        verifiers: Vec<Blob>,
    ) -> Result<(), SessionError> {
        check_verifiers(&self.shape, from, rejected, &verifiers)?;
        self.receive(from, rejected, batch)?;
        if self.shape.validator.is_some() {
            self.verifiers.insert(from, verifiers);
        }
        Ok(())
    }

    /// The verifier shares of report `i` of the batch in participant order, `own` (this
    /// node's) among them; `None` unless every participant sent one.
    pub fn verifier_set(&self, i: usize, own: &[u8]) -> Option<Vec<Vec<u8>>> {
        self.shape
            .participants
            .iter()
            .map(|p| {
                let share = if *p == self.shape.local {
                    own
                } else {
                    &self.verifiers.get(p)?.get(i)?.0[..]
                };
                (!share.is_empty()).then(|| share.to_vec())
            })
            .collect()
    }

    /// Judges every report once every owner answered, given this node's own verdict on its
    /// share of each (`Ok`: opened and reserved here) and the task batch this node takes
    /// reports into. Returns the commit round (which names the batch the reports go to:
    /// the highest any owner takes, so that none stores them in a batch it froze) and, per
    /// report, whether it is committed and how it ended.
    pub fn judge(
        self,
        local: &[Result<(), Refusal>],
        local_batch: u64,
    ) -> Result<(Committing, Vec<bool>, Vec<Judged>), SessionError> {
        let missing = self.awaited();
        if !missing.is_empty() {
            return Err(SessionError::blame(
                missing.clone(),
                format!("no verdicts from {}", join_peers(&missing)),
            ));
        }
        let count = self.report_ids.len();
        if local.len() != count {
            return Err(SessionError::failed(format!(
                "{} local verdicts for a batch of {count} reports",
                local.len()
            )));
        }
        let need = self.shape.need();
        let mut outcomes = Vec::with_capacity(count);
        for (i, own) in local.iter().enumerate() {
            let (mut accepted, refusal) = judge_report(
                self.shape.local,
                own.as_ref().map(|_| ()),
                self.verdicts
                    .got()
                    .iter()
                    .map(|(p, v)| (*p, v.0[i].as_ref())),
                need,
                self.verdicts.unreached(),
            );
            outcomes.push(match refusal {
                Some(r) => Err(r),
                None => {
                    accepted.sort();
                    Ok(accepted)
                }
            });
        }
        let commits: Vec<bool> = outcomes.iter().map(Result::is_ok).collect();
        let batch = self
            .verdicts
            .got()
            .values()
            .map(|(_, b)| *b)
            .fold(local_batch, u64::max);
        let committing = Committing {
            waiting: self.verdicts.got().keys().copied().collect(),
            batch,
        };
        Ok((committing, commits, outcomes))
    }
}

/// Judges one report from its verdicts: the participants that took it (the local one first),
/// and the refusal if any: the first owner's reason, or too few owners (fewer than `need`).
fn judge_report<'a>(
    local: PeerId,
    local_verdict: Result<(), &Refusal>,
    remote: impl Iterator<Item = (PeerId, Option<&'a Refusal>)>,
    need: usize,
    unreachable: &[PeerId],
) -> (Vec<PeerId>, Option<Refusal>) {
    let mut refusal: Option<Refusal> = None;
    let mut accepted: Vec<PeerId> = Vec::new();
    match local_verdict {
        Ok(()) => accepted.push(local),
        Err(r) => refusal = Some(r.clone()),
    }
    for (peer, verdict) in remote {
        match verdict {
            None => accepted.push(peer),
            Some((code, message)) => {
                if refusal.is_none() {
                    refusal = Some((code.clone(), format!("participant {peer}: {message}")));
                }
            }
        }
    }
    if refusal.is_none() && accepted.len() < need {
        refusal = Some((
            "not_enough_participants".into(),
            format!(
                "only {} participants took the report ({}); t + 1 = {need} must; unreachable: {}",
                accepted.len(),
                join_peers(&accepted),
                join_peers(unreachable)
            ),
        ));
    }
    (accepted, refusal)
}

/// The relay's commit round: the owners that answered confirm they stored their shares.
pub struct Committing {
    waiting: BTreeSet<PeerId>,
    batch: u64,
}

impl Committing {
    /// The task batch the committed reports go to, on every owner.
    pub fn batch(&self) -> u64 {
        self.batch
    }

    /// The owners the commit flags go to (every owner that sent verdicts).
    pub fn commit_to(&self) -> Vec<PeerId> {
        self.waiting.iter().copied().collect()
    }

    /// Takes an owner's confirmation that the committed shares are in its persisted sum.
    pub fn receive_stored(&mut self, from: PeerId) -> Result<(), SessionError> {
        if !self.waiting.remove(&from) {
            return Err(SessionError::blame(
                vec![from],
                format!("peer {from} confirmed storing a batch it was not asked to commit"),
            ));
        }
        Ok(())
    }

    /// Whether every owner confirmed.
    pub fn is_done(&self) -> bool {
        self.waiting.is_empty()
    }
}

/// An owner's side of one batch: the invite checked, the streamed share (if any) coming in.
pub struct Owner {
    shape: TaskShape,
    relay: PeerId,
    shares: Vec<BatchShare>,
    stream: Option<ChunkAssembly>,
}

impl Owner {
    /// Checks a batch invite from `from`. The error says what was wrong with it (the invite
    /// is refused and nothing is kept).
    pub fn invited(
        shape: TaskShape,
        from: PeerId,
        shares: Vec<BatchShare>,
        streamed: bool,
    ) -> Result<Self, String> {
        let task_id = &shape.task_id;
        if from == shape.local || !shape.participants.contains(&from) {
            return Err(format!(
                "peer {from} is not another participant of task {task_id}"
            ));
        }
        if !shape.participants.contains(&shape.local) {
            return Err(format!("this node is not a participant of task {task_id}"));
        }
        if shares.is_empty() || shares.len() > MAX_BATCH {
            return Err(format!(
                "a batch holds 1 to {MAX_BATCH} shares, not {}",
                shares.len()
            ));
        }
        if let Some(bad) = shares.iter().find(|s| !is_hex_id(&s.report_id)) {
            return Err(format!(
                "`{}` is not a report id (32 lowercase hex digits)",
                bad.report_id.escape_debug()
            ));
        }
        let expected = shape.sealed_bytes();
        let stream = if shape.streamed() {
            if !streamed || shares.len() != 1 || !shares[0].ciphertext.0.is_empty() {
                return Err(format!(
                    "a sealed share of task {task_id} is {expected} bytes: it follows its invite in chunks, one report per batch"
                ));
            }
            Some(ChunkAssembly::new(expected, true))
        } else {
            if streamed {
                return Err(format!(
                    "a sealed share of task {task_id} is {expected} bytes: it travels inside the invite, not in chunks"
                ));
            }
            if let Some(bad) = shares.iter().find(|s| s.ciphertext.0.len() != expected) {
                return Err(format!(
                    "a sealed share of task {task_id} is {expected} bytes, not {} (report {})",
                    bad.ciphertext.0.len(),
                    bad.report_id
                ));
            }
            None
        };
        Ok(Self {
            shape,
            relay: from,
            shares,
            stream,
        })
    }

    /// Whether a streamed share is still coming in.
    pub fn waits_for_chunks(&self) -> bool {
        self.stream.is_some()
    }

    /// Takes one chunk of the streamed share; `Ok(true)` once it is complete.
    pub fn receive_chunk(
        &mut self,
        from: PeerId,
        index: u32,
        data: &[u8],
    ) -> Result<bool, SessionError> {
        if from != self.relay {
            return Err(SessionError::blame(
                vec![from],
                format!(
                    "peer {from} sent a chunk of a share relayed by {}",
                    self.relay
                ),
            ));
        }
        let Some(stream) = &mut self.stream else {
            return Err(SessionError::blame(
                vec![from],
                format!("relay {from} sent a chunk, but the shares of this batch came inline"),
            ));
        };
        let complete = stream.accept(index, data).map_err(|e| {
            SessionError::blame(vec![from], format!("relay {from} sent a bad chunk: {e}"))
        })?;
        if complete {
            let bytes = self.stream.take().and_then(ChunkAssembly::into_bytes);
            self.shares[0].ciphertext = Blob(bytes.unwrap_or_default().into());
        }
        Ok(complete)
    }

    /// The shares to open: (report id, encapsulated key, ciphertext), in batch order.
    #[allow(clippy::type_complexity)]
    pub fn shares(self) -> Result<(Judging, Vec<(String, Sealed)>), SessionError> {
        if self.stream.is_some() {
            return Err(SessionError::failed("the streamed share is not complete"));
        }
        let report_ids = self.shares.iter().map(|s| s.report_id.clone()).collect();
        let list = self
            .shares
            .into_iter()
            .map(|s| {
                let sealed = Sealed {
                    owner: self.shape.local,
                    enc: s.encapped_key.0.to_vec(),
                    ct: s.ciphertext.0.to_vec(),
                    signed: s.client.map(|(i, b)| (i, b.0.to_vec())),
                };
                (s.report_id, sealed)
            })
            .collect();
        Ok((
            Judging {
                relay: self.relay,
                report_ids,
            },
            list,
        ))
    }

    /// The task this batch belongs to.
    pub fn shape(&self) -> &TaskShape {
        &self.shape
    }
}

/// An owner with its shares opened, about to answer.
pub struct Judging {
    relay: PeerId,
    report_ids: Vec<String>,
}

impl Judging {
    /// The verdict list to send, from this node's outcome of opening each share (`Ok`:
    /// opened and reserved), and `batch`, the task batch this node reserved them for (the
    /// lowest it will store them in).
    pub fn verdicts(
        self,
        opened: &[Result<(), Refusal>],
        batch: u64,
    ) -> (AwaitingCommit, Vec<Option<Refusal>>) {
        let rejected: Vec<Option<Refusal>> = opened.iter().map(|o| o.clone().err()).collect();
        let accepted = opened.iter().map(Result::is_ok).collect();
        (
            AwaitingCommit {
                relay: self.relay,
                report_ids: self.report_ids,
                accepted,
                batch,
            },
            rejected,
        )
    }
}

/// What an owner does with one share once the relay decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Add it to the persisted sum.
    Store,
    /// Release its reservation: another owner refused the report, or too few took it.
    Drop,
    /// Nothing: this node refused it and holds nothing of it.
    Refused,
}

/// An owner that sent its verdicts, waiting for the relay's commit flags.
pub struct AwaitingCommit {
    relay: PeerId,
    report_ids: Vec<String>,
    accepted: Vec<bool>,
    batch: u64,
}

impl AwaitingCommit {
    /// The batch's report ids, in order.
    pub fn report_ids(&self) -> &[String] {
        &self.report_ids
    }

    /// Takes the relay's commit flags and the task batch they go to; returns what to do
    /// with each share, in batch order. A relay that commits a report this node refused (an
    /// honest one never does: one refusal drops the report everywhere), or into a batch
    /// below the one this node reserved it for, is blamed.
    pub fn receive_commit(
        self,
        from: PeerId,
        commits: &[bool],
        batch: u64,
    ) -> Result<Vec<Decision>, SessionError> {
        if from != self.relay {
            return Err(SessionError::blame(
                vec![from],
                format!(
                    "peer {from} sent commit flags for a batch relayed by {}",
                    self.relay
                ),
            ));
        }
        if commits.len() != self.accepted.len() {
            return Err(SessionError::blame(
                vec![from],
                format!(
                    "relay {from} sent {} commit flags for {} shares",
                    commits.len(),
                    self.accepted.len()
                ),
            ));
        }
        if batch < self.batch && commits.iter().any(|c| *c) {
            return Err(SessionError::blame(
                vec![from],
                format!(
                    "relay {from} committed reports into task batch {batch}; this node took them for batch {} or later",
                    self.batch
                ),
            ));
        }
        if let Some(i) = (0..commits.len()).find(|i| commits[*i] && !self.accepted[*i]) {
            return Err(SessionError::blame(
                vec![from],
                format!(
                    "relay {from} committed report {}, which this node refused",
                    self.report_ids[i]
                ),
            ));
        }
        Ok(self
            .accepted
            .iter()
            .zip(commits)
            .map(|(accepted, commit)| match (accepted, commit) {
                (true, true) => Decision::Store,
                (true, false) => Decision::Drop,
                (false, _) => Decision::Refused,
            })
            .collect())
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

    fn shape(participants: &[PeerId], local: usize, threshold: u16, length: u32) -> TaskShape {
        TaskShape {
            task_id: "ab".repeat(16),
            participants: participants.to_vec(),
            threshold,
            length,
            local: participants[local],
            clients: Vec::new(),
            validator: None,
        }
    }

    fn report_id(i: usize) -> String {
        format!("{i:032x}")
    }

    /// A report of `shape` whose shares are all the right size (contents are not checked here).
    fn report(shape: &TaskShape, i: usize) -> (String, SealedShares) {
        let shares = shape
            .participants
            .iter()
            .map(|p| Sealed {
                owner: *p,
                enc: vec![1; 32],
                ct: vec![i as u8; shape.sealed_bytes()],
                signed: None,
            })
            .collect();
        (report_id(i), shares)
    }

    fn refusal(code: &str) -> Option<Refusal> {
        Some((code.into(), "no".into()))
    }

    fn share(i: usize, len: usize) -> BatchShare {
        BatchShare {
            report_id: report_id(i),
            encapped_key: Blob(vec![1; 32].into()),
            ciphertext: Blob(vec![0; len].into()),
            client: None,
        }
    }

    #[test]
    fn a_relay_invites_every_other_owner_once_with_its_share_of_each_report() {
        let p = peers(4);
        let s = shape(&p, 1, 1, 3);
        let (relay, invites, local) =
            Relay::start(s.clone(), vec![report(&s, 1), report(&s, 2)]).unwrap();
        let owners: Vec<PeerId> = invites.iter().map(|(o, _)| *o).collect();
        assert_eq!(owners, [p[0], p[2], p[3]]);
        for (_, invite) in &invites {
            assert!(invite.streamed.is_none());
            let ids: Vec<&str> = invite.shares.iter().map(|s| s.report_id.as_str()).collect();
            assert_eq!(ids, [report_id(1), report_id(2)]);
            assert_eq!(
                invite.shares[1].ciphertext.0[..],
                vec![2; s.sealed_bytes()][..]
            );
        }
        assert_eq!(local.len(), 2);
        assert_eq!(relay.awaited(), owners);
    }

    #[test]
    fn a_relay_refuses_to_start_a_batch_it_cannot_send() {
        let p = peers(3);
        let s = shape(&p, 0, 1, 3);
        let e = |r: Result<_, SessionError>| r.err().unwrap().reason().to_string();
        assert!(e(Relay::start(s.clone(), vec![])).contains("1 to"));
        let mut wrong_size = report(&s, 1);
        wrong_size.1[2].ct.pop();
        assert!(e(Relay::start(s.clone(), vec![wrong_size])).contains("bytes, not"));
        let mut out_of_order = report(&s, 1);
        out_of_order.1.swap(0, 1);
        assert!(e(Relay::start(s.clone(), vec![out_of_order])).contains("in order"));
        let long = shape(&p, 0, 1, 30_000);
        assert!(long.streamed());
        let two = vec![report(&long, 1), report(&long, 2)];
        assert!(e(Relay::start(long.clone(), two)).contains("one report per batch"));
        let (_, invites, _) = Relay::start(long.clone(), vec![report(&long, 1)]).unwrap();
        for (_, invite) in invites {
            assert!(invite.shares[0].ciphertext.0.is_empty());
            assert_eq!(invite.streamed.unwrap().len(), long.sealed_bytes());
        }
    }

    #[test]
    fn a_relay_takes_one_verdict_list_from_each_owner_it_reached() {
        let p = peers(4);
        let stranger = PeerId::random();
        let s = shape(&p, 0, 1, 3);
        let (mut relay, _, _) =
            Relay::start(s.clone(), vec![report(&s, 1), report(&s, 2)]).unwrap();
        relay.unreachable([p[3], stranger]);
        assert_eq!(relay.awaited(), [p[1], p[2]]);
        let blamed = |r: Result<(), SessionError>| r.unwrap_err().blamed().to_vec();
        assert_eq!(
            blamed(relay.receive(stranger, &[None, None], 0)),
            [stranger]
        );
        assert_eq!(blamed(relay.receive(p[3], &[None, None], 0)), [p[3]]);
        let e = relay.receive(p[1], &[None], 0).unwrap_err();
        assert!(e.reason().contains("2 reports with 1 verdicts"), "{e}");
        relay.receive(p[1], &[None, None], 3).unwrap();
        relay.receive(p[1], &[None, None], 3).unwrap();
        let e = relay.receive(p[1], &[None, refusal("x")], 3).unwrap_err();
        assert!(e.reason().contains("two different verdicts"), "{e}");
        assert_eq!(relay.awaited(), [p[2]]);
        relay
            .receive(p[2], &[None, refusal("bad_ciphertext")], 2)
            .unwrap();
        let (mut committing, commits, outcomes) = relay.judge(&[Ok(()), Ok(())], 1).unwrap();
        assert_eq!(commits, [true, false]);
        // The reports go to the highest task batch any owner takes them into.
        assert_eq!(committing.batch(), 3);
        assert_eq!(outcomes[0], Ok(vec![p[0], p[1], p[2]]));
        let (code, message) = outcomes[1].clone().unwrap_err();
        assert_eq!(code, "bad_ciphertext");
        assert!(message.contains(&p[2].to_string()), "{message}");
        // Commit flags go to every owner that answered; each confirms once.
        assert_eq!(committing.commit_to(), [p[1], p[2]]);
        assert_eq!(
            committing.receive_stored(p[3]).unwrap_err().blamed(),
            [p[3]]
        );
        committing.receive_stored(p[1]).unwrap();
        assert!(committing.receive_stored(p[1]).is_err());
        assert!(!committing.is_done());
        committing.receive_stored(p[2]).unwrap();
        assert!(committing.is_done());
    }

    #[test]
    fn a_report_needs_every_verdict_no_refusal_and_t_plus_one_owners() {
        let p = peers(4);
        let s = shape(&p, 0, 2, 3);
        let (relay, _, _) = Relay::start(s.clone(), vec![report(&s, 1)]).unwrap();
        // Judging before every verdict is in blames those missing.
        let e = relay.judge(&[Ok(())], 0).err().unwrap();
        assert_eq!(e.blamed(), [p[1], p[2], p[3]]);
        // Two owners unreachable: 2 took it, t + 1 = 3 must.
        let (mut relay, _, _) = Relay::start(s.clone(), vec![report(&s, 1)]).unwrap();
        relay.unreachable([p[2], p[3]]);
        relay.receive(p[1], &[None], 0).unwrap();
        let (committing, commits, outcomes) = relay.judge(&[Ok(())], 0).unwrap();
        assert_eq!(commits, [false]);
        assert_eq!(
            outcomes[0].clone().unwrap_err().0,
            "not_enough_participants"
        );
        assert_eq!(committing.commit_to(), [p[1]]);
        // This node's own refusal counts like any owner's.
        let (mut relay, _, _) = Relay::start(s.clone(), vec![report(&s, 1)]).unwrap();
        for peer in &p[1..] {
            relay.receive(*peer, &[None], 0).unwrap();
        }
        let (_, commits, outcomes) = relay
            .judge(&[Err(("duplicate_report".into(), "again".into()))], 0)
            .unwrap();
        assert_eq!(commits, [false]);
        assert_eq!(outcomes[0].clone().unwrap_err().0, "duplicate_report");
    }

    #[test]
    fn an_owner_refuses_an_invite_that_does_not_fit_the_task() {
        let p = peers(3);
        let stranger = PeerId::random();
        let s = shape(&p, 1, 1, 3);
        let len = s.sealed_bytes();
        let invited =
            |from, shares, streamed| Owner::invited(s.clone(), from, shares, streamed).err();
        assert!(
            invited(stranger, vec![share(1, len)], false)
                .unwrap()
                .contains("not another participant")
        );
        assert!(
            invited(p[1], vec![share(1, len)], false)
                .unwrap()
                .contains("not another participant")
        );
        assert!(invited(p[0], vec![], false).unwrap().contains("1 to"));
        let many = (0..=MAX_BATCH).map(|i| share(i, len)).collect();
        assert!(invited(p[0], many, false).unwrap().contains("1 to"));
        let mut bad_id = share(1, len);
        bad_id.report_id = "../x".into();
        assert!(
            invited(p[0], vec![bad_id], false)
                .unwrap()
                .contains("not a report id")
        );
        assert!(
            invited(p[0], vec![share(1, len + 1)], false)
                .unwrap()
                .contains("bytes, not")
        );
        assert!(
            invited(p[0], vec![share(1, len)], true)
                .unwrap()
                .contains("inside the invite")
        );
        assert!(invited(p[0], vec![share(1, len), share(2, len)], false).is_none());
        let long = shape(&p, 1, 1, 30_000);
        let invited = |shares, streamed| Owner::invited(long.clone(), p[0], shares, streamed).err();
        assert!(
            invited(vec![share(1, 0)], false)
                .unwrap()
                .contains("in chunks")
        );
        assert!(
            invited(vec![share(1, long.sealed_bytes())], true)
                .unwrap()
                .contains("in chunks")
        );
        assert!(
            invited(vec![share(1, 0), share(2, 0)], true)
                .unwrap()
                .contains("in chunks")
        );
        assert!(invited(vec![share(1, 0)], true).is_none());
    }

    #[test]
    fn an_owner_takes_chunks_and_commit_flags_from_its_relay_only() {
        let p = peers(3);
        let long = shape(&p, 1, 1, 30_000);
        let mut owner = Owner::invited(long.clone(), p[0], vec![share(7, 0)], true).unwrap();
        let payload: Vec<u8> = (0..long.sealed_bytes()).map(|i| i as u8).collect();
        let pieces: Vec<Bytes> = crate::mpc::chunks::pieces(payload.clone().into()).collect();
        assert_eq!(
            owner
                .receive_chunk(p[2], 0, &pieces[0])
                .unwrap_err()
                .blamed(),
            [p[2]]
        );
        let e = owner.receive_chunk(p[0], 9, &pieces[0]).unwrap_err();
        assert_eq!(e.blamed(), [p[0]]);
        assert!(e.reason().contains("out of range"), "{e}");
        assert!(!owner.receive_chunk(p[0], 1, &pieces[1]).unwrap());
        assert!(
            owner
                .receive_chunk(p[0], 1, &pieces[1])
                .unwrap_err()
                .reason()
                .contains("twice")
        );
        assert!(owner.receive_chunk(p[0], 0, &pieces[0]).unwrap());
        assert!(!owner.waits_for_chunks());
        let (judging, list) = owner.shares().unwrap();
        let expected = Sealed {
            owner: p[1],
            enc: vec![1; 32],
            ct: payload,
            signed: None,
        };
        assert_eq!(list, [(report_id(7), expected)]);
        let (awaiting, rejected) = judging.verdicts(&[Ok(())], 0);
        assert_eq!(rejected, [None]);
        assert_eq!(awaiting.report_ids(), [report_id(7)]);
        // An incomplete stream gives nothing to open.
        let partial = Owner::invited(long.clone(), p[0], vec![share(7, 0)], true).unwrap();
        assert!(partial.shares().is_err());

        let s = shape(&p, 1, 1, 3);
        let len = s.sealed_bytes();
        let mut inline = Owner::invited(
            s.clone(),
            p[0],
            vec![share(1, len), share(2, len), share(3, len)],
            false,
        )
        .unwrap();
        assert!(inline.receive_chunk(p[0], 0, &[0]).is_err());
        let (judging, _) = inline.shares().unwrap();
        let opened = [
            Ok(()),
            Err(("bad_ciphertext".to_string(), "x".to_string())),
            Ok(()),
        ];
        // An owner that took the reports for task batch `reserved`, waiting for the commit.
        let waiting_from = |reserved| {
            let (judging, _) = Owner::invited(
                s.clone(),
                p[0],
                vec![share(1, len), share(2, len), share(3, len)],
                false,
            )
            .unwrap()
            .shares()
            .unwrap();
            judging.verdicts(&opened, reserved).0
        };
        let waiting = || waiting_from(0);
        let (awaiting, rejected) = judging.verdicts(&opened, 0);
        assert_eq!(
            rejected,
            [
                None,
                refusal("bad_ciphertext").map(|(c, _)| (c, "x".into())),
                None
            ]
        );
        assert_eq!(
            awaiting
                .receive_commit(p[2], &[true, false, false], 0)
                .unwrap_err()
                .blamed(),
            [p[2]]
        );
        assert!(
            waiting()
                .receive_commit(p[0], &[true], 0)
                .unwrap_err()
                .reason()
                .contains("1 commit flags for 3")
        );
        let e = waiting()
            .receive_commit(p[0], &[true, true, true], 0)
            .unwrap_err();
        assert!(e.reason().contains("which this node refused"), "{e}");
        assert_eq!(
            waiting()
                .receive_commit(p[0], &[true, false, false], 0)
                .unwrap(),
            [Decision::Store, Decision::Refused, Decision::Drop]
        );
        // Into a later task batch, fine; into one below what this node reserved them for,
        // the relay is blamed (the owner may have frozen it).
        let later = |batch| waiting_from(4).receive_commit(p[0], &[true, false, false], batch);
        assert!(later(5).is_ok());
        let e = later(3).unwrap_err();
        assert_eq!(e.blamed(), [p[0]]);
        assert!(e.reason().contains("batch 4 or later"), "{e}");
    }

    #[test]
    fn an_owner_takes_only_its_own_share_signed_by_a_listed_client() {
        use ed25519_dalek::Signer;
        let p = peers(3);
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let mut s = shape(&p, 1, 1, 3);
        let (enc, ct) = (vec![1u8; 32], vec![2u8; s.sealed_bytes()]);
        let id = report_id(1);
        let sign = |owner: &PeerId| {
            key.sign(&share_signed_bytes(&s.task_id, &id, owner, &enc, &ct))
                .to_bytes()
                .to_vec()
        };
        let mine = (0u16, sign(&p[1]));
        let theirs = (0u16, sign(&p[2]));
        // An open task checks nothing.
        assert_eq!(check_client(&s, &id, &enc, &ct, None), Ok(None));
        s.clients = vec![hex::encode(key.verifying_key().as_bytes())];
        let code = |r: Result<Option<String>, Refusal>| r.unwrap_err().0;
        assert_eq!(
            code(check_client(&s, &id, &enc, &ct, None)),
            "unsigned_report"
        );
        assert_eq!(
            code(check_client(&s, &id, &enc, &ct, Some(&(1, mine.1.clone())))),
            "unknown_client"
        );
        // Another owner's signature, another report, another ciphertext: refused.
        assert_eq!(
            code(check_client(&s, &id, &enc, &ct, Some(&theirs))),
            "bad_signature"
        );
        assert_eq!(
            code(check_client(&s, &report_id(2), &enc, &ct, Some(&mine))),
            "bad_signature"
        );
        let mut other = ct.clone();
        other[0] ^= 1;
        assert_eq!(
            code(check_client(&s, &id, &enc, &other, Some(&mine))),
            "bad_signature"
        );
        assert_eq!(
            code(check_client(&s, &id, &enc, &ct, Some(&(0, vec![0; 10])))),
            "bad_signature"
        );
        assert_eq!(
            check_client(&s, &id, &enc, &ct, Some(&mine)),
            Ok(Some(s.clients[0].clone()))
        );
    }

    proptest! {
        #[test]
        fn any_invite_and_any_verdicts_are_judged_without_panic(
            count in 0usize..6,
            lengths in proptest::collection::vec(0usize..80, 0..6),
            streamed in any::<bool>(),
            from in 0usize..4,
            verdict_lists in proptest::collection::vec((0usize..5, proptest::collection::vec(any::<bool>(), 0..4)), 0..8),
        ) {
            let p = peers(4);
            let s = shape(&p, 0, 1, 3);
            let sender = p.get(from).copied().unwrap_or_else(PeerId::random);
            let shares: Vec<BatchShare> = lengths.iter().take(count).enumerate().map(|(i, l)| share(i, *l)).collect();
            if let Ok(owner) = Owner::invited(s.clone(), sender, shares.clone(), streamed) {
                // Accepted only as the task says: right sizes, from another participant.
                prop_assert!(!streamed && sender != p[0]);
                prop_assert!(shares.iter().all(|b| b.ciphertext.0.len() == s.sealed_bytes()));
                prop_assert!(owner.shares().is_ok());
            }
            let reports: Vec<_> = (0..count.max(1)).map(|i| report(&s, i)).collect();
            let (mut relay, _, _) = Relay::start(s.clone(), reports).unwrap();
            for (who, list) in verdict_lists {
                let peer = p.get(who).copied().unwrap_or_else(PeerId::random);
                let list: Vec<Option<Refusal>> = list.iter().map(|r| r.then(|| ("x".into(), "y".into()))).collect();
                let before = relay.awaited().len();
                let taken = relay.receive(peer, &list, 0).is_ok();
                // An answer is taken once: the same one again changes nothing; a refused
                // one changes nothing either.
                let after = relay.awaited().len();
                prop_assert!(after == before || (taken && after + 1 == before));
            }
            let local = vec![Ok(()); count.max(1)];
            if let Ok((_, commits, outcomes)) = relay.judge(&local, 0) {
                prop_assert_eq!(commits.len(), count.max(1));
                prop_assert!(commits.iter().zip(&outcomes).all(|(c, o)| *c == o.is_ok()));
            }
        }
    }
}
