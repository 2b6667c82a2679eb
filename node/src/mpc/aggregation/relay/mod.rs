//! Relaying client reports: the driver of [`core`]. A report posted to a node is checked,
//! queued for its task, and relayed in that node's next relay session for the task, together
//! with the reports queued meanwhile (a batch; a lone report is a batch of one and waits for
//! nothing). The relay queue of each task is owned here, not by the stored task. Under load
//! this turns four messages per owner per report into four per owner per batch; each report
//! is still judged on its own: a bad one is refused (with its owner's reason) and the others
//! are taken.
//!
//! This module does the I/O the core leaves out: sends and deadlines, opening shares with
//! the node's HPKE key (off the async threads), report id reservations and the persisted
//! share sum of the task.

pub mod core;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use futures::future::join_all;
use libp2p::PeerId;
use tracing::{Instrument, info};

use self::core::{Decision, Judged, Owner, Refusal, Relay, Sealed, SealedShares, TaskShape};
use super::shares::Field;
use super::store::TaskEntry;
use super::validity::Verifying;
use super::{AggError, Report, ReportAccepted, SealedShare, is_hex_id};
use crate::mpc::chunks::pieces;
use crate::mpc::session::{SessionError, SessionInbox};
use crate::mpc::wire::{BatchShare, Blob, Body, Protocol, SessionId, VerifierSet};
use crate::mpc::{InviteRefusal, MpcEngine, unreachable_error};

/// Sealed-share bytes per owner in one batch (the session layer caps a message at 256 KiB; a
/// batch holds at least one report, so one share of [`core::MAX_INLINE_SHARE`] must fit too).
const BATCH_BYTES: usize = 200 * 1024;

/// Reports of one task waiting for relay on this node at most; one more is refused as busy.
/// (The API's concurrency cap bounds them too, each waiting report holding a request.)
pub const MAX_QUEUED_REPORTS: usize = 2 * core::MAX_BATCH;

/// How one report of a batch ended, or the relay session (its id) that failed.
pub type ReportOutcome = Result<Judged, (SessionId, SessionError)>;

/// A report waiting to be relayed, and who waits for its outcome.
pub struct RelayJob {
    pub report_id: String,
    pub shares: SealedShares,
    pub done: tokio::sync::oneshot::Sender<ReportOutcome>,
}

/// The relay queues of this node's tasks: the reports posted here, waiting for the task's
/// relay loop (at most one runs per task).
#[derive(Default)]
pub struct RelayQueues {
    tasks: std::sync::Mutex<HashMap<String, TaskQueue>>,
}

#[derive(Default)]
struct TaskQueue {
    jobs: VecDeque<RelayJob>,
    /// Whether a relay loop runs for the task.
    running: bool,
}

impl RelayQueues {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TaskQueue>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `job` for `task_id` unless [`MAX_QUEUED_REPORTS`] wait there already (the job
    /// is given back). `Ok(true)`: no loop runs for the task; the caller starts one.
    fn push(&self, task_id: &str, job: RelayJob) -> Result<bool, RelayJob> {
        let mut tasks = self.lock();
        let queue = tasks.entry(task_id.to_string()).or_default();
        if queue.jobs.len() >= MAX_QUEUED_REPORTS {
            return Err(job);
        }
        queue.jobs.push_back(job);
        Ok(!std::mem::replace(&mut queue.running, true))
    }

    /// The next batch of `task_id`: up to [`core::MAX_BATCH`] reports and [`BATCH_BYTES`] of
    /// sealed shares per owner, at least one report (and exactly one of a task whose shares
    /// are streamed). Empty: the queue is empty and the loop must end; the task's entry is
    /// gone under the same lock, so the next report starts a new loop.
    /// `commit_extra`: bytes each report adds to the commit message besides its share (a
    /// validated task's verifier shares of every participant).
    fn next_batch(&self, task_id: &str, streamed: bool, commit_extra: usize) -> Vec<RelayJob> {
        let mut tasks = self.lock();
        let Some(queue) = tasks.get_mut(task_id) else {
            return Vec::new();
        };
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        while let Some(job) = queue.jobs.front() {
            let size = job
                .shares
                .iter()
                .map(|s| {
                    let signature = s.signed.as_ref().map_or(0, |(_, sig)| sig.len() + 8);
                    s.enc.len() + s.ct.len() + job.report_id.len() + signature + 16
                })
                .max()
                .unwrap_or(0)
                + commit_extra;
            let full = streamed || batch.len() >= core::MAX_BATCH || bytes + size > BATCH_BYTES;
            if !batch.is_empty() && full {
                break;
            }
            bytes += size;
            batch.extend(queue.jobs.pop_front());
        }
        if batch.is_empty() {
            tasks.remove(task_id);
        }
        batch
    }

    /// A loop that ended without emptying its queue (a panic): the next report starts one.
    fn stopped(&self, task_id: &str) {
        if let Some(queue) = self.lock().get_mut(task_id) {
            queue.running = false;
        }
    }
}

/// Decodes a client's sealed shares of task `shape`: one per participant, base64, each of
/// the task's sealed share size; in participant order.
pub(super) fn decode_report(shape: &TaskShape, report: &Report) -> Result<SealedShares, AggError> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let task_id = &shape.task_id;
    if !is_hex_id(&report.report_id) {
        return Err(AggError::new(
            400,
            "invalid_report",
            format!(
                "`{}` is not a report id: use 32 random lowercase hex digits",
                report.report_id
            ),
        ));
    }
    let signed_by: Option<u16> = match (shape.clients.is_empty(), &report.client) {
        (true, _) => None,
        (false, None) => {
            return Err(AggError::new(
                403,
                "unsigned_report",
                format!(
                    "task {task_id} takes only reports signed by one of its clients (`client` and a `signature` on every share)"
                ),
            ));
        }
        (false, Some(client)) => {
            let position = shape
                .clients
                .iter()
                .position(|c| c.eq_ignore_ascii_case(client))
                .ok_or_else(|| {
                    AggError::new(
                        403,
                        "unknown_client",
                        format!(
                            "client `{}` is not one of the {} clients of task {task_id}",
                            crate::log_limit::echo(client),
                            shape.clients.len()
                        ),
                    )
                })?;
            Some(position as u16)
        }
    };
    let n = shape.participants.len();
    let by_peer: HashMap<&str, &SealedShare> = report
        .shares
        .iter()
        .map(|s| (s.peer_id.as_str(), s))
        .collect();
    let sealed_bytes = shape.sealed_bytes();
    let mut decoded = Vec::with_capacity(n);
    for peer in &shape.participants {
        let p = peer.to_string();
        let (Some(s), true) = (by_peer.get(p.as_str()), report.shares.len() == n) else {
            return Err(AggError::new(
                400,
                "wrong_share_count",
                format!(
                    "task {task_id} has {n} participants; the report must carry exactly one sealed share for each (got {})",
                    report.shares.len()
                ),
            ));
        };
        let field = |name: &str, value: &str| {
            b64.decode(value).map_err(|e| {
                AggError::new(
                    400,
                    "invalid_report",
                    format!("share for {p}: `{name}` is not base64: {e}"),
                )
            })
        };
        let enc = field("enc", &s.enc)?;
        // An X25519 encapsulated key; empty only under the test-only `plaintext-shares`
        // fault (a node without it refuses such a share when it opens it).
        if !enc.is_empty() && enc.len() != super::encryption::ENCAPPED_KEY_BYTES {
            return Err(AggError::new(
                400,
                "bad_ciphertext",
                format!(
                    "share for {p}: `enc` is {} bytes; an X25519 encapsulated key is {}",
                    enc.len(),
                    super::encryption::ENCAPPED_KEY_BYTES
                ),
            ));
        }
        let ct = field("ciphertext", &s.ciphertext)?;
        if ct.len() != sealed_bytes {
            let what = match &shape.validator {
                Some(_) => "a Prio3 report share (with its proof share)".to_string(),
                None => format!("a share of the {} values", shape.length),
            };
            return Err(AggError::new(
                400,
                "wrong_length",
                format!(
                    "the share for {p} is {} bytes; {what} of task {task_id} is {sealed_bytes} bytes sealed",
                    ct.len(),
                ),
            ));
        }
        let signed = match signed_by {
            None => None,
            Some(index) => {
                let sig = s
                    .signature
                    .as_deref()
                    .and_then(|h| hex::decode(h).ok())
                    .filter(|b| b.len() == 64)
                    .ok_or_else(|| {
                        AggError::new(
                            403,
                            "unsigned_report",
                            format!(
                                "the share for {p} carries no client signature (128 hex digits)"
                            ),
                        )
                    })?;
                Some((index, sig))
            }
        };
        decoded.push(Sealed {
            owner: *peer,
            enc,
            ct,
            signed,
        });
    }
    Ok(decoded)
}

/// Stops a relay loop's queue when the loop dies without ending normally.
struct LoopGuard<'a> {
    queues: &'a RelayQueues,
    task_id: &'a str,
    armed: bool,
}

impl Drop for LoopGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.queues.stopped(self.task_id);
        }
    }
}

impl MpcEngine {
    /// Takes a client's report: queues it for the task's next relay batch, which relays each
    /// sealed share to its owner and commits the report only when every reachable owner
    /// accepted it (and at least t + 1 did).
    pub async fn submit_report(
        &self,
        task_id: &str,
        report: Report,
    ) -> Result<ReportAccepted, AggError> {
        let result = self.submit_report_inner(task_id, report).await;
        match &result {
            Ok(_) => self.count_report("accepted"),
            Err(e) => self.count_report(e.code),
        }
        result
    }

    async fn submit_report_inner(
        &self,
        task_id: &str,
        report: Report,
    ) -> Result<ReportAccepted, AggError> {
        let (task, shape) = self.task_and_shape(task_id)?;
        let shares = decode_report(&shape, &report)?;
        let (done, outcome) = tokio::sync::oneshot::channel();
        let job = RelayJob {
            report_id: report.report_id.clone(),
            shares,
            done,
        };
        match self.agg().relays.push(task_id, job) {
            Err(_) => {
                return Err(AggError::new(
                    503,
                    "busy",
                    format!(
                        "{MAX_QUEUED_REPORTS} reports of task {task_id} wait for relay on this node already; send this one again later"
                    ),
                ));
            }
            Ok(true) => {
                let engine = self.clone();
                tokio::spawn(async move { engine.relay_loop(task, shape).await }.in_current_span());
            }
            Ok(false) => {}
        }
        let outcome = outcome
            .await
            .map_err(|_| AggError::internal("the relay of this report was interrupted"))?;
        match outcome {
            Ok(Ok(accepted_by)) => Ok(ReportAccepted {
                task_id: task_id.to_string(),
                report_id: report.report_id,
                accepted_by: accepted_by.iter().map(ToString::to_string).collect(),
            }),
            Ok(Err((code, message))) => Err(AggError::from_verdict(&code, message)),
            Err((session, e)) => Err(AggError::session(session, e)),
        }
    }

    /// Relays batches of the task's queued reports until its queue is empty.
    async fn relay_loop(&self, task: Arc<TaskEntry>, shape: TaskShape) {
        let queues = &self.agg().relays;
        let mut guard = LoopGuard {
            queues,
            task_id: &shape.task_id,
            armed: true,
        };
        loop {
            let commit_extra = shape
                .validator
                .as_ref()
                .map_or(0, |v| v.verifier_bytes() * shape.participants.len());
            let batch = queues.next_batch(&shape.task_id, shape.streamed(), commit_extra);
            if batch.is_empty() {
                guard.armed = false;
                return;
            }
            self.relay_batch(&task, &shape, batch).await;
        }
    }

    /// Runs one relay session for `jobs` and answers each of them.
    async fn relay_batch(&self, task: &Arc<TaskEntry>, shape: &TaskShape, jobs: Vec<RelayJob>) {
        let owners: Vec<PeerId> = shape.others();
        let session = SessionId::random();
        let count = jobs.len();
        let mut reports = Vec::with_capacity(count);
        let mut waiting = Vec::with_capacity(count);
        for job in jobs {
            reports.push((job.report_id, job.shares));
            waiting.push(job.done);
        }
        let outcomes: Vec<ReportOutcome> =
            match self
                .inner
                .router
                .open(session, Protocol::AggReport, owners.clone())
            {
                Err(e) => vec![Err((session, e)); count],
                Ok(inbox) => {
                    let run = self.relay_session(inbox, task.clone(), shape.clone(), reports);
                    match self
                        .run_session(Protocol::AggReport, "relay", session, owners, run)
                        .await
                    {
                        Ok(per_report) => per_report.into_iter().map(Ok).collect(),
                        Err(e) => vec![Err((session, e)); count],
                    }
                }
            };
        for (done, outcome) in waiting.into_iter().zip(outcomes) {
            let _ = done.send(outcome);
        }
    }

    /// The relay's side of one batch: invites (and streamed shares) out, this node's shares
    /// opened meanwhile, verdicts in, a commit flag per report out, confirmations in.
    async fn relay_session(
        &self,
        mut inbox: SessionInbox,
        task: Arc<TaskEntry>,
        shape: TaskShape,
        reports: Vec<(String, SealedShares)>,
    ) -> Result<Vec<Judged>, SessionError> {
        let session = inbox.session();
        let task_id = shape.task_id.clone();
        let report_ids: Vec<String> = reports.iter().map(|(id, _)| id.clone()).collect();
        let (mut relay, invites, own) = Relay::start(shape.clone(), reports)?;
        let sends = invites.into_iter().map(|(owner, invite)| {
            let body = Body::AggBatchInvite {
                task_id: task_id.clone(),
                shares: invite.shares,
                streamed: invite.streamed.is_some(),
            };
            async move {
                let mut sent = self.send(owner, session, body).await;
                if let (Ok(()), Some(bytes)) = (&sent, invite.streamed) {
                    sent = self.send_share_chunks(owner, session, bytes).await;
                }
                (owner, sent)
            }
        });
        let opens = report_ids
            .iter()
            .zip(own)
            .map(|(id, sealed)| self.open_share(&task, &shape, id, sealed));
        let (sent, opened) = futures::join!(join_all(sends), join_all(opens));
        relay.unreachable(sent.into_iter().filter_map(|(peer, result)| {
            let e = result.err()?;
            info!(peer = %peer, error = %e, "share owner unreachable");
            Some(peer)
        }));
        let release = |opened: &[Result<OpenedShare, Refusal>]| {
            for (id, o) in report_ids.iter().zip(opened) {
                if o.is_ok() {
                    task.release(id);
                }
            }
        };
        let timeout = self.inner.round_timeout;
        let awaited = relay.awaited();
        let verdicts = inbox
            .collect_each(
                "aggregation batch verdict",
                &awaited,
                timeout,
                |b| match b {
                    Body::AggBatchVerdict {
                        rejected,
                        batch,
                        verifiers,
                    } => Some((rejected.clone(), *batch, verifiers.clone())),
                    _ => None,
                },
                |from, (rejected, batch, verifiers)| {
                    relay.receive_with_verifiers(from, rejected, *batch, verifiers.clone())
                },
            )
            .await;
        let local: Vec<Result<(), Refusal>> = opened
            .iter()
            .map(|o| o.as_ref().map(|_| ()).map_err(Clone::clone))
            .collect();
        // A validated task: every participant's verifier share of each report, this node's
        // own among them (taken before the core judges the batch).
        let verifier_sets: Vec<Option<Vec<Vec<u8>>>> = opened
            .iter()
            .enumerate()
            .map(|(i, o)| match o {
                Ok((Opened::Proven(_, own), _)) => relay.verifier_set(i, own),
                _ => None,
            })
            .collect();
        let (mut committing, mut commits, mut outcomes) =
            match verdicts.and_then(|()| relay.judge(&local, task.current_batch())) {
                Ok(judged) => judged,
                Err(e) => {
                    release(&opened);
                    return Err(e);
                }
            };
        // Each report every owner took is decided here from all verifier shares: an invalid
        // proof drops it everywhere, and each owner decides again for itself on commit.
        let (mut outputs, decided) =
            decide_proofs(&task, &report_ids, &shape, opened, &verifier_sets, &commits).await;
        let mut burned = vec![false; commits.len()];
        for (i, d) in decided.into_iter().enumerate() {
            if let Some(refusal) = d {
                if self.inner.faults.skip_proof_check {
                    // The test fault of a compromised relay: commit it all the same.
                    if let Some((share, _)) = outputs[i].as_mut() {
                        *share = vec![Field::from(0u64); shape.length as usize];
                    }
                    continue;
                }
                self.count_share(&refusal.0);
                burned[i] = is_proof_refusal(&refusal.0);
                commits[i] = false;
                outcomes[i] = Err(refusal);
            }
        }
        let verifiers: Vec<VerifierSet> = if shape.validator.is_some() {
            verifier_sets
                .iter()
                .zip(&commits)
                .map(|(set, commit)| match (set, commit) {
                    (Some(set), true) => {
                        VerifierSet(set.iter().map(|s| Blob(s.clone().into())).collect())
                    }
                    _ => VerifierSet::default(),
                })
                .collect()
        } else {
            Vec::new()
        };
        let commit_to = committing.commit_to();
        let failures = self
            .broadcast(
                &commit_to,
                session,
                &Body::AggBatchCommit {
                    commits: commits.clone(),
                    batch: committing.batch(),
                    verifiers,
                },
            )
            .await;
        // This node's shares: committed together (one state write), or released.
        let mut to_store = Vec::new();
        for (((id, o), commit), burned) in report_ids.iter().zip(outputs).zip(&commits).zip(burned)
        {
            match o {
                Some(opened) if *commit => to_store.push((id, opened)),
                Some(_) if burned => task.burn(id),
                Some(_) => task.release(id),
                None => {}
            }
        }
        store_shares(&task, &to_store, committing.batch()).await?;
        if !failures.is_empty() {
            return Err(inbox.explain_failures(failures, "the batch commit").await);
        }
        inbox
            .collect_each(
                "aggregation batch stored",
                &commit_to,
                timeout,
                |b| matches!(b, Body::AggBatchStored).then_some(()),
                |from, ()| committing.receive_stored(from),
            )
            .await?;
        let taken = commits.iter().filter(|c| **c).count();
        info!(%task_id, reports = commits.len(), taken, "report batch relayed");
        Ok(outcomes)
    }

    /// Streams a sealed share to its owner in chunk messages (see [`crate::mpc::chunks`]).
    async fn send_share_chunks(
        &self,
        peer: PeerId,
        session: SessionId,
        bytes: bytes::Bytes,
    ) -> Result<(), crate::mpc::transport::MpcSendError> {
        self.send_chunked(peer, session, pieces(bytes), |index, data| Body::AggChunk {
            index,
            data,
        })
        .await
    }

    /// Answers a batch invite: the core checks it, then this node receives, opens and
    /// judges its shares, and stores or drops each as the relay decides.
    pub(in crate::mpc) fn join_aggregation_batch(
        &self,
        session: SessionId,
        from: PeerId,
        task_id: String,
        shares: Vec<BatchShare>,
        streamed: bool,
    ) -> Result<(), InviteRefusal> {
        let Some(task) = self.agg().store.get(&task_id) else {
            self.count_share("unknown_task");
            return Err(InviteRefusal::Other(format!(
                "no aggregation task `{task_id}` on this node"
            )));
        };
        let shape = TaskShape::of_task(&task, self.inner.local).map_err(InviteRefusal::Other)?;
        let owner = Owner::invited(shape, from, shares, streamed).map_err(InviteRefusal::Other)?;
        self.spawn_participant(
            Protocol::AggReport,
            session,
            vec![from],
            move |engine, inbox| async move { engine.run_owner(inbox, from, task, owner).await },
        )
    }

    async fn run_owner(
        &self,
        mut inbox: SessionInbox,
        from: PeerId,
        task: Arc<TaskEntry>,
        mut owner: Owner,
    ) -> Result<(), SessionError> {
        let session = inbox.session();
        let timeout = self.inner.round_timeout;
        while owner.waits_for_chunks() {
            // Each chunk must come within a round deadline of the previous one.
            let deadline = tokio::time::Instant::now() + timeout;
            let (peer, (index, data)) = inbox
                .next_of("aggregation chunk", &[from], deadline, |b| match b {
                    Body::AggChunk { index, data } => Some((*index, data.0.clone())),
                    _ => None,
                })
                .await?;
            owner.receive_chunk(peer, index, &data)?;
        }
        let shape = owner.shape().clone();
        let (judging, list) = owner.shares()?;
        let opened: Vec<Result<OpenedShare, Refusal>> =
            join_all(list.into_iter().map(|(id, sealed)| {
                let (task, shape) = (&task, &shape);
                async move { self.open_share(task, shape, &id, sealed).await }
            }))
            .await;
        for (code, _) in opened.iter().filter_map(|o| o.as_ref().err()) {
            self.count_share(code);
        }
        let verdicts: Vec<Result<(), Refusal>> = opened
            .iter()
            .map(|o| o.as_ref().map(|_| ()).map_err(Clone::clone))
            .collect();
        let own_verifiers: Vec<Vec<u8>> = opened
            .iter()
            .map(|o| match o {
                Ok((Opened::Proven(_, v), _)) => v.clone(),
                _ => Vec::new(),
            })
            .collect();
        let verifiers: Vec<Blob> = if shape.validator.is_some() {
            own_verifiers
                .iter()
                .map(|v| Blob(v.clone().into()))
                .collect()
        } else {
            Vec::new()
        };
        let batch = task.current_batch();
        let (awaiting, rejected) = judging.verdicts(&verdicts, batch);
        let report_ids = awaiting.report_ids().to_vec();
        let release_all = || {
            for (id, o) in report_ids.iter().zip(&opened) {
                if o.is_ok() {
                    task.release(id);
                }
            }
        };
        if let Err(e) = self
            .send(
                from,
                session,
                Body::AggBatchVerdict {
                    rejected,
                    batch,
                    verifiers,
                },
            )
            .await
        {
            release_all();
            return Err(unreachable_error(vec![(from, e)], "the batch verdict"));
        }
        let decisions = inbox
            .collect("aggregation batch commit", &[from], timeout, |b| match b {
                Body::AggBatchCommit {
                    commits,
                    batch,
                    verifiers,
                } => Some((commits.clone(), *batch, verifiers.clone())),
                _ => None,
            })
            .await
            .and_then(|mut c| {
                let (commits, batch, verifiers) = c.remove(&from).unwrap_or_default();
                let sets: Vec<Vec<Blob>> = verifiers.into_iter().map(|s| s.0).collect();
                core::check_committed_verifiers(&shape, from, &commits, &sets, &own_verifiers)?;
                awaiting
                    .receive_commit(from, &commits, batch)
                    .map(|d| (d, batch, sets))
            });
        let (decisions, batch, sets) = match decisions {
            Ok(d) => d,
            Err(e) => {
                release_all();
                return Err(e);
            }
        };
        // A validated task: this node decides every committed report's proof itself.
        let committed: Vec<bool> = decisions.iter().map(|d| *d == Decision::Store).collect();
        let sets: Vec<Option<Vec<Vec<u8>>>> = sets
            .into_iter()
            .map(|s| (!s.is_empty()).then(|| s.iter().map(|b| b.0.to_vec()).collect()))
            .collect();
        let (outputs, decided) =
            decide_proofs(&task, &report_ids, &shape, opened, &sets, &committed).await;
        let mut to_store = Vec::new();
        for (((id, o), decision), refused) in
            report_ids.iter().zip(outputs).zip(decisions).zip(decided)
        {
            match (decision, o, refused) {
                (Decision::Store, Some(_), Some((code, message))) => {
                    if is_proof_refusal(&code) {
                        task.burn(id);
                    } else {
                        task.release(id);
                    }
                    self.count_share(&code);
                    tracing::warn!(%from, report_id = %id, %message, "the relay committed a report whose validity proof does not hold here; not added");
                }
                (Decision::Store, Some(opened), None) => to_store.push((id, opened)),
                (Decision::Drop, _, _) => {
                    task.release(id);
                    self.count_share("dropped");
                }
                _ => {}
            }
        }
        store_shares(&task, &to_store, batch).await?;
        for _ in &to_store {
            self.count_share("accepted");
        }
        self.send(from, session, Body::AggBatchStored)
            .await
            .map_err(|e| unreachable_error(vec![(from, e)], "the storage confirmation"))
    }

    /// Checks and opens one sealed share for this node: the client's signature when the
    /// task names clients ([`core::check_client`]), then [`open_reserved`], decrypting off
    /// the async threads. Returns the share and the client it counts under.
    async fn open_share(
        &self,
        task: &Arc<TaskEntry>,
        shape: &TaskShape,
        report_id: &str,
        sealed: Sealed,
    ) -> Result<OpenedShare, Refusal> {
        let client = core::check_client(
            shape,
            report_id,
            &sealed.enc,
            &sealed.ct,
            sealed.signed.as_ref(),
        )?;
        let Sealed {
            enc,
            ct: ciphertext,
            ..
        } = sealed;
        let engine = self.clone();
        let (task_id, length, id) = (shape.task_id.clone(), shape.length, report_id.to_string());
        let proving = match (&task.validation, shape.local_index()) {
            (Some((v, key)), Some(index)) => Some((v.clone(), *key, index)),
            (Some(_), None) => {
                return Err((
                    "internal".into(),
                    "this node is not a participant of the task".into(),
                ));
            }
            (None, _) => None,
        };
        open_reserved(task, report_id, move || match proving {
            None => core::open_sealed(
                &engine.agg().key,
                &task_id,
                length,
                &id,
                &enc,
                &ciphertext,
                engine.inner.faults.plaintext_shares,
            )
            .map(Opened::Raw),
            Some((validator, key, index)) => {
                let plain = core::open_plain(&engine.agg().key, &task_id, &id, &enc, &ciphertext)?;
                let (state, verifier) = validator.start(&key, &task_id, &id, index, &plain)?;
                Ok(Opened::Proven(state, verifier))
            }
        })
        .await
        .map(|share| (share, client))
    }
}

/// What opening a share of this node gave: a raw task's share vector, or a validated task's
/// verification state and verifier share (the output share comes once the proof is decided).
enum Opened {
    Raw(Vec<Field>),
    Proven(Verifying, Vec<u8>),
}

/// An opened share of this node and the client it counts under (none: an open task).
type OpenedShare = (Opened, Option<String>);

/// A share ready to store: the vector to add and the client it counts under.
type StoredShare = (Vec<Field>, Option<String>);

/// Turns the opened shares of a batch into what to store, given each report's commit flag
/// and (for a validated task) the verifier shares of every participant: a raw share as it
/// is; a proven one only if its proof holds ([`Validator::finish`], run off the async
/// threads), else the refusal. `None` where nothing was opened.
/// If the check itself fails (its thread panicked), every report of the batch is refused and
/// the ids of `report_ids` reserved here are released.
#[allow(clippy::type_complexity)]
async fn decide_proofs(
    task: &TaskEntry,
    report_ids: &[String],
    shape: &TaskShape,
    opened: Vec<Result<OpenedShare, Refusal>>,
    sets: &[Option<Vec<Vec<u8>>>],
    commits: &[bool],
) -> (Vec<Option<StoredShare>>, Vec<Option<Refusal>>) {
    let validator = shape.validator.clone();
    let raw = validator.is_none();
    let task_id = shape.task_id.clone();
    let count = opened.len();
    let reserved: Vec<bool> = opened.iter().map(Result::is_ok).collect();
    let sets = sets.to_vec();
    let commits = commits.to_vec();
    let work = move || {
        let mut outputs = Vec::with_capacity(opened.len());
        let mut refused = Vec::with_capacity(opened.len());
        for (i, o) in opened.into_iter().enumerate() {
            let (share, client) = match o {
                Err(_) => {
                    outputs.push(None);
                    refused.push(None);
                    continue;
                }
                Ok(x) => x,
            };
            match share {
                Opened::Raw(v) => {
                    outputs.push(Some((v, client)));
                    refused.push(None);
                }
                Opened::Proven(state, _) => {
                    let committed = commits.get(i).copied().unwrap_or(false);
                    let set = sets.get(i).and_then(Option::as_ref);
                    match (&validator, committed, set) {
                        (Some(v), true, Some(set)) => match v.finish(&task_id, state, set) {
                            Ok(output) => {
                                outputs.push(Some((output, client)));
                                refused.push(None);
                            }
                            Err(r) => {
                                outputs.push(Some((Vec::new(), client)));
                                refused.push(Some(r));
                            }
                        },
                        // Not committed: nothing to decide; the caller releases it.
                        _ => {
                            outputs.push(Some((Vec::new(), client)));
                            refused.push(None);
                        }
                    }
                }
            }
        }
        (outputs, refused)
    };
    // A raw task has nothing to decide: its shares pass through here, no thread hop.
    if raw {
        return work();
    }
    match tokio::task::spawn_blocking(work).await {
        Ok(decided) => decided,
        // The check itself failed: every report of the batch is refused, none stored.
        Err(e) => {
            for (id, reserved) in report_ids.iter().zip(reserved) {
                if reserved {
                    task.release(id);
                }
            }
            let refusal = (
                "internal".to_string(),
                format!("deciding report proofs: {e}"),
            );
            (vec![None; count], vec![Some(refusal); count])
        }
    }
}

/// Adds this node's shares of a relay batch to task batch `batch` (written together, one
/// group commit); the id of a share that was not stored is released. Fails if any was not.
async fn store_shares(
    task: &TaskEntry,
    shares: &[(&String, StoredShare)],
    batch: u64,
) -> Result<(), SessionError> {
    let stored = join_all(
        shares
            .iter()
            .map(|(id, (share, client))| task.commit(id, share, batch, client.clone())),
    )
    .await;
    for ((id, _), result) in shares.iter().zip(&stored) {
        if result.is_err() {
            task.release(id);
        }
    }
    match stored.into_iter().find_map(Result::err) {
        Some(e) => Err(SessionError::failed(format!(
            "cannot store the share sum: {e}"
        ))),
        None => Ok(()),
    }
}

/// Opens one share of `report_id` with `open` (run off the async threads) unless the report
/// id is taken (accepted, or being accepted): a replayed report id is refused before
/// anything is decrypted. On success the id stays reserved (for the task batch this node
/// takes reports into, or a later one) until the share is committed or released.
pub(super) async fn open_reserved<T: Send + 'static>(
    task: &TaskEntry,
    report_id: &str,
    open: impl FnOnce() -> Result<T, Refusal> + Send + 'static,
) -> Result<T, Refusal> {
    if !task.reserve(report_id) {
        return Err((
            "duplicate_report".into(),
            format!("report {report_id} was submitted already (a replayed report id is refused)"),
        ));
    }
    let opened = tokio::task::spawn_blocking(open)
        .await
        .map_err(|e| ("internal".to_string(), e.to_string()))
        .and_then(|r| r);
    match &opened {
        Err((code, _)) if is_proof_refusal(code) => task.burn(report_id),
        Err(_) => task.release(report_id),
        Ok(_) => {}
    }
    opened
}

/// Whether a refusal is a validated report's own fault (its share or proof): its id stays
/// used ([`TaskEntry::burn`]).
fn is_proof_refusal(code: &str) -> bool {
    code == "invalid_report" || code == "malformed_report"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(i: usize) -> RelayJob {
        RelayJob {
            report_id: format!("r{i}"),
            shares: vec![],
            done: tokio::sync::oneshot::channel().0,
        }
    }

    #[test]
    fn the_relay_queue_of_a_task_is_bounded() {
        let queues = RelayQueues::default();
        assert_eq!(queues.push("t", job(0)).ok(), Some(true));
        for i in 1..MAX_QUEUED_REPORTS {
            assert_eq!(queues.push("t", job(i)).ok(), Some(false));
        }
        let refused = queues.push("t", job(MAX_QUEUED_REPORTS)).err().unwrap();
        assert_eq!(refused.report_id, format!("r{MAX_QUEUED_REPORTS}"));
        // Another task has its own queue.
        assert_eq!(queues.push("u", job(0)).ok(), Some(true));
        // Once the relay takes a batch, reports are queued again.
        assert_eq!(queues.next_batch("t", false, 0).len(), core::MAX_BATCH);
        assert_eq!(queues.push("t", job(0)).ok(), Some(false));
    }

    #[test]
    fn an_emptied_queue_ends_its_loop_and_the_next_report_starts_one() {
        let queues = RelayQueues::default();
        assert_eq!(queues.push("t", job(0)).ok(), Some(true));
        assert_eq!(queues.push("t", job(1)).ok(), Some(false));
        // A task with streamed shares goes one report at a time.
        assert_eq!(queues.next_batch("t", true, 0).len(), 1);
        assert_eq!(queues.next_batch("t", true, 0).len(), 1);
        assert!(queues.next_batch("t", true, 0).is_empty());
        assert_eq!(queues.push("t", job(2)).ok(), Some(true));
        // A loop that died leaves its jobs for the next one.
        queues.stopped("t");
        assert_eq!(queues.push("t", job(3)).ok(), Some(true));
        assert_eq!(queues.next_batch("t", false, 0).len(), 2);
    }
}
