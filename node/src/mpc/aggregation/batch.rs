//! Relaying reports in batches. Reports posted to one node for one task while that node is
//! already relaying go out together in its next relay session: one invite per owner carries
//! that owner's sealed share of every report in the batch, and the verdict, commit and
//! stored rounds cover them all. Each report is still judged on its own: a bad one is
//! refused (with its owner's reason) and the others are taken. Under load this turns four
//! messages per owner per report into four per owner per batch; a lone report is a batch of
//! one and waits for nothing.
//!
//! Only shares small enough for one message are batched; longer vectors go one report at a
//! time, in chunks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::future::join_all;
use libp2p::PeerId;
use tracing::{Instrument, info};

use super::shares::Field;
use super::store::TaskEntry;
use crate::mpc::session::{SessionError, SessionInbox};
use crate::mpc::wire::{BatchShare, Blob, Body, Protocol, SessionId};
use crate::mpc::{MpcEngine, unreachable_error};

/// Largest sealed share that is batched (bigger ones travel in chunks, one report at a time).
pub const MAX_BATCHED_SHARE: usize = crate::mpc::chunks::CHUNK_BYTES;
/// Sealed-share bytes per owner in one batch (the session layer caps a message at 256 KiB; a
/// batch holds at least one report, so one share of [`MAX_BATCHED_SHARE`] must fit too).
const BATCH_BYTES: usize = 200 * 1024;
/// Reports in one batch at most.
pub const MAX_BATCH: usize = crate::mpc::wire::MAX_BATCH_ITEMS;

/// Reports of one task waiting for relay on this node at most; one more is refused as busy.
/// (The API's concurrency cap bounds them too, each waiting report holding a request.)
pub const MAX_QUEUED_REPORTS: usize = 2 * MAX_BATCH;

/// How one report of a batch ended: the owners that took it, or a refusal (code, message);
/// or the relay session (its id) failed.
pub type ReportOutcome = Result<Result<Vec<PeerId>, (String, String)>, (SessionId, SessionError)>;

/// The sealed shares of one report: (owner, encapsulated key, ciphertext), one per participant.
pub type SealedShares = Vec<(PeerId, Vec<u8>, Vec<u8>)>;
/// A share opened here, or why it was refused (code, message).
type Opened = Result<Vec<Field>, (String, String)>;

/// A report waiting to be relayed, and who waits for its outcome.
pub struct RelayJob {
    pub report_id: String,
    pub shares: SealedShares,
    pub done: tokio::sync::oneshot::Sender<ReportOutcome>,
}

/// Appends `job` to `queue` unless [`MAX_QUEUED_REPORTS`] wait there already.
fn push_bounded(
    queue: &std::sync::Mutex<std::collections::VecDeque<RelayJob>>,
    job: RelayJob,
) -> Result<(), RelayJob> {
    let mut queue = queue.lock().unwrap_or_else(|e| e.into_inner());
    if queue.len() >= MAX_QUEUED_REPORTS {
        return Err(job);
    }
    queue.push_back(job);
    Ok(())
}

impl MpcEngine {
    /// Queues `job` for relay and starts a relay loop for `task` if none runs; gives the job
    /// back when [`MAX_QUEUED_REPORTS`] wait already.
    pub(super) fn enqueue_relay(
        &self,
        task: &Arc<TaskEntry>,
        job: RelayJob,
    ) -> Result<(), RelayJob> {
        push_bounded(&task.relay_queue, job)?;
        if !task.relay_running.swap(true, Ordering::AcqRel) {
            let engine = self.clone();
            let task = task.clone();
            tokio::spawn(async move { engine.relay_loop(task).await }.in_current_span());
        }
        Ok(())
    }

    /// Relays batches of queued reports until the queue is empty.
    async fn relay_loop(&self, task: Arc<TaskEntry>) {
        // Should this task die (a panic), the next report starts a new loop.
        struct Running<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _running = Running(&task.relay_running);
        loop {
            let batch = take_batch(&task);
            if batch.is_empty() {
                task.relay_running.store(false, Ordering::Release);
                // A report queued between the take and the store would wait for nobody.
                let queued = !task
                    .relay_queue
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_empty();
                if queued && !task.relay_running.swap(true, Ordering::AcqRel) {
                    continue;
                }
                // Another loop runs now (or none is needed): leave the flag to it.
                std::mem::forget(_running);
                return;
            }
            self.relay_batch(&task, batch).await;
        }
    }

    /// Runs one relay session for `jobs` and answers each of them.
    async fn relay_batch(&self, task: &Arc<TaskEntry>, jobs: Vec<RelayJob>) {
        let local = self.inner.local;
        let owners: Vec<PeerId> = jobs[0]
            .shares
            .iter()
            .map(|(p, _, _)| *p)
            .filter(|p| *p != local)
            .collect();
        let session = SessionId::random();
        let count = jobs.len();
        let mut report_ids = Vec::with_capacity(count);
        let mut shares = Vec::with_capacity(count);
        let mut waiting = Vec::with_capacity(count);
        for job in jobs {
            report_ids.push(job.report_id);
            shares.push(job.shares);
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
                    let run = self.relay_batch_session(inbox, task.clone(), report_ids, shares);
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

    /// The relay's side of one batch: a verdict per report, a commit decision per report.
    async fn relay_batch_session(
        &self,
        mut inbox: SessionInbox,
        task: Arc<TaskEntry>,
        report_ids: Vec<String>,
        shares: Vec<SealedShares>,
    ) -> Result<Vec<Result<Vec<PeerId>, (String, String)>>, SessionError> {
        let session = inbox.session();
        let local = self.inner.local;
        let task_id = task.info.params.task_id.clone();
        let need = usize::from(task.info.params.threshold) + 1;
        let count = report_ids.len();
        let owners: Vec<PeerId> = shares[0].iter().map(|(p, _, _)| *p).collect();

        // One invite per remote owner with its share of every report; the local shares are
        // opened meanwhile.
        let sends = owners.iter().filter(|p| **p != local).map(|owner| {
            let list: Vec<BatchShare> = report_ids
                .iter()
                .zip(&shares)
                .map(|(id, report)| {
                    let (_, enc, ct) = report
                        .iter()
                        .find(|(p, _, _)| p == owner)
                        .expect("every report has a share for every participant");
                    BatchShare {
                        report_id: id.clone(),
                        encapped_key: Blob(enc.clone().into()),
                        ciphertext: Blob(ct.clone().into()),
                    }
                })
                .collect();
            let invite = Body::AggBatchInvite {
                task_id: task_id.clone(),
                shares: list,
            };
            async move { (*owner, self.send(*owner, session, invite).await) }
        });
        let local_opens = report_ids.iter().zip(&shares).map(|(id, report)| {
            let task = task.clone();
            async move {
                match report.iter().find(|(p, _, _)| *p == local) {
                    Some((_, enc, ct)) => {
                        Some(self.open_share(&task, id, enc.clone(), ct.clone()).await)
                    }
                    None => None,
                }
            }
        });
        let (sent, local_verdicts) = futures::join!(join_all(sends), join_all(local_opens));
        let (reachable, unreachable) = super::split_reachable(sent);
        let release_local = |verdicts: &[Option<Opened>]| {
            for (id, v) in report_ids.iter().zip(verdicts) {
                if let Some(Ok(_)) = v {
                    task.release(id);
                }
            }
        };
        let timeout = self.inner.round_timeout;
        let verdicts = match inbox
            .collect(
                "aggregation batch verdict",
                &reachable,
                timeout,
                |b| match b {
                    Body::AggBatchVerdict { rejected } => Some(rejected.clone()),
                    _ => None,
                },
            )
            .await
        {
            Ok(v) => v,
            Err(e) => {
                release_local(&local_verdicts);
                return Err(e);
            }
        };
        if let Some((peer, _)) = verdicts.iter().find(|(_, v)| v.len() != count) {
            release_local(&local_verdicts);
            return Err(SessionError::blame(
                vec![*peer],
                format!(
                    "participant {peer} answered a batch of {count} reports with a wrong number of verdicts"
                ),
            ));
        }

        // Per report: refused by anyone, or taken by everyone reachable (and t + 1 at least).
        let mut outcomes = Vec::with_capacity(count);
        for i in 0..count {
            let (mut accepted, refusal) = super::judge_report(
                local,
                local_verdicts[i].as_ref().map(|v| v.as_ref().map(|_| ())),
                verdicts.iter().map(|(p, v)| (*p, v[i].as_ref())),
                need,
                &unreachable,
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
        let answered: Vec<PeerId> = verdicts.keys().copied().collect();
        let failures = self
            .broadcast(
                &answered,
                session,
                &Body::AggBatchCommit {
                    commits: commits.clone(),
                },
            )
            .await;
        // The local shares: committed together (one state write), or released.
        let local_commits = report_ids
            .iter()
            .zip(local_verdicts)
            .zip(&commits)
            .filter_map(|((id, v), commit)| match v {
                Some(Ok(share)) if *commit => Some((id.clone(), share)),
                Some(Ok(_)) => {
                    task.release(id);
                    None
                }
                _ => None,
            });
        let stored = join_all(local_commits.map(|(id, share)| {
            let task = task.clone();
            async move { task.commit(&id, &share).await }
        }))
        .await;
        if let Some(Err(e)) = stored.into_iter().find(Result::is_err) {
            return Err(SessionError::failed(format!(
                "cannot store the share sum: {e}"
            )));
        }
        if !failures.is_empty() {
            return Err(inbox.explain_failures(failures, "the batch commit").await);
        }
        inbox
            .collect(
                "aggregation batch stored",
                &answered,
                timeout,
                |b| match b {
                    Body::AggBatchStored => Some(()),
                    _ => None,
                },
            )
            .await?;
        let taken = commits.iter().filter(|c| **c).count();
        info!(%task_id, reports = count, taken, "report batch relayed");
        Ok(outcomes)
    }

    /// Answers a batch invite: checks each share, reports verdicts, commits when told to.
    pub(in crate::mpc) fn join_aggregation_batch(
        &self,
        session: SessionId,
        from: PeerId,
        task_id: String,
        shares: Vec<BatchShare>,
    ) -> Result<(), String> {
        let Some(task) = self.agg().store.get(&task_id) else {
            self.count_share("unknown_task");
            return Err(format!("no aggregation task `{task_id}` on this node"));
        };
        if !task.info.params.participants.contains(&from.to_string()) {
            return Err(format!(
                "peer {from} is not a participant of task {task_id}"
            ));
        }
        let expected =
            task.info.params.length as usize * super::shares::ELEMENT_BYTES + super::TAG_BYTES;
        if shares.is_empty() || shares.len() > MAX_BATCH {
            return Err(format!(
                "a batch holds 1 to {MAX_BATCH} shares, not {}",
                shares.len()
            ));
        }
        if let Some(bad) = shares.iter().find(|s| s.ciphertext.0.len() != expected) {
            return Err(format!(
                "a sealed share of task {task_id} is {expected} bytes, not {} (report {})",
                bad.ciphertext.0.len(),
                bad.report_id
            ));
        }
        let inbox = self
            .inner
            .router
            .open(session, Protocol::AggReport, [from])
            .map_err(|e| e.to_string())?;
        let engine = self.clone();
        tokio::spawn(
            async move {
                let run = engine.run_batch_owner(inbox, from, task, shares);
                let _ = engine
                    .run_session(Protocol::AggReport, "owner", session, vec![from], run)
                    .await;
            }
            .in_current_span(),
        );
        Ok(())
    }

    async fn run_batch_owner(
        &self,
        mut inbox: SessionInbox,
        from: PeerId,
        task: Arc<TaskEntry>,
        shares: Vec<BatchShare>,
    ) -> Result<(), SessionError> {
        let session = inbox.session();
        let timeout = self.inner.round_timeout;
        let opened: Vec<Opened> = join_all(shares.iter().map(|s| {
            self.open_share(
                &task,
                &s.report_id,
                s.encapped_key.0.to_vec(),
                s.ciphertext.0.to_vec(),
            )
        }))
        .await;
        let rejected: Vec<Option<(String, String)>> = opened
            .iter()
            .map(|o| match o {
                Ok(_) => None,
                Err((code, message)) => {
                    self.count_share(code);
                    Some((code.clone(), message.clone()))
                }
            })
            .collect();
        let release_all = |opened: &[Opened]| {
            for (s, o) in shares.iter().zip(opened) {
                if o.is_ok() {
                    task.release(&s.report_id);
                }
            }
        };
        if let Err(e) = self
            .send(from, session, Body::AggBatchVerdict { rejected })
            .await
        {
            release_all(&opened);
            return Err(unreachable_error(vec![(from, e)], "the batch verdict"));
        }
        let commits = match inbox
            .collect("aggregation batch commit", &[from], timeout, |b| match b {
                Body::AggBatchCommit { commits } => Some(commits.clone()),
                _ => None,
            })
            .await
        {
            Ok(mut c) => c.remove(&from).unwrap_or_default(),
            Err(e) => {
                release_all(&opened);
                return Err(e);
            }
        };
        if commits.len() != shares.len() {
            release_all(&opened);
            return Err(SessionError::blame(
                vec![from],
                format!(
                    "peer {from} sent {} commit flags for {} shares",
                    commits.len(),
                    shares.len()
                ),
            ));
        }
        let mut to_store = Vec::new();
        let mut opened_map: BTreeMap<usize, Vec<Field>> = BTreeMap::new();
        for (i, o) in opened.into_iter().enumerate() {
            if let Ok(share) = o {
                opened_map.insert(i, share);
            }
        }
        for (i, share) in opened_map {
            let id = &shares[i].report_id;
            if commits[i] {
                to_store.push((id.clone(), share));
            } else {
                task.release(id);
                self.count_share("dropped");
            }
        }
        let stored = join_all(to_store.iter().map(|(id, share)| task.commit(id, share))).await;
        for ((id, _), result) in to_store.iter().zip(&stored) {
            match result {
                Ok(_) => self.count_share("accepted"),
                Err(_) => task.release(id),
            }
        }
        if let Some(Err(e)) = stored.into_iter().find(Result::is_err) {
            return Err(SessionError::failed(format!(
                "cannot store the share sum: {e}"
            )));
        }
        self.send(from, session, Body::AggBatchStored)
            .await
            .map_err(|e| unreachable_error(vec![(from, e)], "the storage confirmation"))
    }
}

/// Takes queued jobs for one batch: up to [`MAX_BATCH`] reports and [`BATCH_BYTES`] of
/// sealed shares per owner (at least one report).
fn take_batch(task: &TaskEntry) -> Vec<RelayJob> {
    take_batch_from(&task.relay_queue)
}

fn take_batch_from(
    queue: &std::sync::Mutex<std::collections::VecDeque<RelayJob>>,
) -> Vec<RelayJob> {
    let mut queue = queue.lock().unwrap_or_else(|e| e.into_inner());
    let mut batch = Vec::new();
    let mut bytes = 0usize;
    while let Some(job) = queue.front() {
        let size = job
            .shares
            .iter()
            .map(|(_, enc, ct)| enc.len() + ct.len() + job.report_id.len() + 16)
            .max()
            .unwrap_or(0);
        if !batch.is_empty() && (batch.len() >= MAX_BATCH || bytes + size > BATCH_BYTES) {
            break;
        }
        bytes += size;
        batch.extend(queue.pop_front());
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_queue_of_a_task_is_bounded() {
        let queue = std::sync::Mutex::default();
        let job = |i: usize| RelayJob {
            report_id: format!("r{i}"),
            shares: vec![],
            done: tokio::sync::oneshot::channel().0,
        };
        for i in 0..MAX_QUEUED_REPORTS {
            assert!(push_bounded(&queue, job(i)).is_ok());
        }
        let refused = push_bounded(&queue, job(MAX_QUEUED_REPORTS)).unwrap_err();
        assert_eq!(refused.report_id, format!("r{MAX_QUEUED_REPORTS}"));
        // Once the relay takes a batch, reports are queued again.
        assert_eq!(take_batch_from(&queue).len(), MAX_BATCH);
        assert!(push_bounded(&queue, job(0)).is_ok());
    }
}
