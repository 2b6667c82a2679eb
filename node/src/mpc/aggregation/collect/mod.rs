//! Opening the sum of a task: the driver of [`core`]. The collector asks every participant
//! for its report set, the core chooses the set t + 1 of them hold and who opens it, the
//! chosen stream their share sums here in chunks, and the sum is interpolated off the async
//! threads. This module does the I/O the core leaves out: sends, deadlines, the task's
//! snapshot and its persisted "opened" mark.

pub mod core;

use std::sync::Arc;

use libp2p::PeerId;
use tracing::info;

use self::core::{Collector, Open, Participant, ReportSet};
use super::relay::core::TaskShape;
use super::shares;
use super::store::TaskEntry;
use super::{AggError, CollectResult};
use crate::mpc::chunks::pieces;
use crate::mpc::session::{SessionError, SessionInbox};
use crate::mpc::wire::{Body, Protocol, SessionId};
use crate::mpc::{InviteRefusal, MpcEngine, unreachable_error};

fn open_body(open: Open) -> Body {
    Body::AggOpen {
        digest: open.digest,
        send_sum: open.send_sum,
    }
}

impl MpcEngine {
    /// Opens the sum of a task: agrees with t + 1 participants on the report set, gathers
    /// their share sums and interpolates.
    pub async fn collect_aggregation(&self, task_id: &str) -> Result<CollectResult, AggError> {
        let (task, shape) = self.task_and_shape(task_id)?;
        let others: Vec<PeerId> = shape.others();
        let session = SessionId::random();
        let inbox = self
            .inner
            .router
            .open(session, Protocol::AggCollect, others.clone())
            .map_err(|e| AggError::session(session, e))?;
        let engine = self.clone();
        let run = async move { engine.run_collect(inbox, task, shape).await };
        self.run_session(Protocol::AggCollect, "collector", session, others, run)
            .await
            .map_err(|e| AggError::session(session, e))?
    }

    async fn run_collect(
        &self,
        mut inbox: SessionInbox,
        task: Arc<TaskEntry>,
        shape: TaskShape,
    ) -> Result<Result<CollectResult, AggError>, SessionError> {
        let session = inbox.session();
        let task_id = shape.task_id.clone();
        let snapshot = task.snapshot().await;
        let own = ReportSet {
            digest: snapshot.digest,
            count: snapshot.count,
        };
        let (mut collector, others) = Collector::start(shape, task.info.params.min_reports, own);
        let invite = Body::AggCollectInvite {
            task_id: task_id.clone(),
        };
        let failures = self.broadcast(&others, session, &invite).await;
        collector.unreachable(failures.into_iter().map(|(p, _)| p));
        let timeout = self.inner.round_timeout;
        let awaited = collector.awaited();
        inbox
            .collect_each(
                "aggregation report set",
                &awaited,
                timeout,
                |b| match b {
                    Body::AggReportSet { digest, count } => Some(ReportSet {
                        digest: *digest,
                        count: *count,
                    }),
                    _ => None,
                },
                |from, set| collector.receive_set(from, *set),
            )
            .await?;
        let (requests, opening) = collector.choose(self.inner.faults.collect_ignores_min_reports);
        let (chosen, not_chosen): (Vec<_>, Vec<_>) =
            requests.into_iter().partition(|(_, open)| open.send_sum);
        let not_chosen: Vec<(PeerId, Body)> = not_chosen
            .into_iter()
            .map(|(p, open)| (p, open_body(open)))
            .collect();
        let _ = futures::future::join_all(
            not_chosen
                .into_iter()
                .map(|(p, body)| self.send(p, session, body)),
        )
        .await;
        let mut opening = match opening {
            Ok(opening) => opening,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let messages = chosen
            .into_iter()
            .map(|(p, open)| (p, open_body(open)))
            .collect();
        self.send_round(&mut inbox, messages, "the open request")
            .await?;
        while !opening.awaited().is_empty() {
            // Each chunk must come within a round deadline of the previous one.
            let deadline = tokio::time::Instant::now() + timeout;
            let awaited = opening.awaited();
            let (peer, (index, data)) = inbox
                .next_of("aggregation chunk", &awaited, deadline, |b| match b {
                    Body::AggChunk { index, data } => Some((*index, data.0.clone())),
                    _ => None,
                })
                .await?;
            opening.receive_chunk(peer, index, &data)?;
        }
        let own_sum = if opening.local_opens() {
            task.mark_opened(opening.set().digest)
                .await
                .map_err(|e| SessionError::failed(e.to_string()))?;
            Some(snapshot.share_sum)
        } else {
            None
        };
        let opened = opening.finish(own_sum)?;
        let points = opened.points;
        let sum = tokio::task::spawn_blocking(move || shares::reconstruct(&points))
            .await
            .map_err(|e| SessionError::failed(e.to_string()))?
            .map_err(|e| SessionError::failed(e.to_string()))?;
        info!(%task_id, reports = opened.set.count, "aggregate opened");
        Ok(Ok(CollectResult {
            task_id,
            sum: shares::to_integers(&sum),
            reports: opened.set.count,
            report_set_digest: hex::encode(opened.set.digest),
            opened_by: opened.opened_by.iter().map(ToString::to_string).collect(),
        }))
    }

    /// Answers a collect invitation: reports its report set, then opens when chosen.
    pub(in crate::mpc) fn join_aggregation_collect(
        &self,
        session: SessionId,
        from: PeerId,
        task_id: String,
    ) -> Result<(), InviteRefusal> {
        let Some(task) = self.agg().store.get(&task_id) else {
            return Err(InviteRefusal::Other(format!(
                "no aggregation task `{task_id}` on this node"
            )));
        };
        if from == self.inner.local || !task.info.params.participants.contains(&from.to_string()) {
            return Err(InviteRefusal::Other(format!(
                "peer {from} is not another participant of task {task_id}"
            )));
        }
        self.spawn_participant(
            Protocol::AggCollect,
            session,
            vec![from],
            move |engine, inbox| async move {
                engine.run_collect_participant(inbox, from, task).await
            },
        )
    }

    async fn run_collect_participant(
        &self,
        mut inbox: SessionInbox,
        from: PeerId,
        task: Arc<TaskEntry>,
    ) -> Result<(), SessionError> {
        let session = inbox.session();
        let snapshot = task.snapshot().await;
        let params = &task.info.params;
        let participant = Participant::start(
            from,
            params.task_id.clone(),
            params.min_reports,
            ReportSet {
                digest: snapshot.digest,
                count: snapshot.count,
            },
        );
        let set = Body::AggReportSet {
            digest: snapshot.digest,
            count: snapshot.count,
        };
        self.send(from, session, set)
            .await
            .map_err(|e| unreachable_error(vec![(from, e)], "the report set"))?;
        let timeout = self.inner.round_timeout;
        let open = inbox
            .collect("aggregation open", &[from], timeout, |b| match b {
                Body::AggOpen { digest, send_sum } => Some(Open {
                    digest: *digest,
                    send_sum: *send_sum,
                }),
                _ => None,
            })
            .await?;
        let Some(digest) = participant.receive_open(from, open[&from])? else {
            return Ok(());
        };
        task.mark_opened(digest)
            .await
            .map_err(|e| SessionError::failed(e.to_string()))?;
        let bytes = shares::encode(&snapshot.share_sum);
        self.send_chunked(from, session, pieces(bytes.into()), |index, data| {
            Body::AggChunk { index, data }
        })
        .await
        .map_err(|e| unreachable_error(vec![(from, e)], "the share sum"))?;
        info!(task_id = %params.task_id, reports = snapshot.count, "share sum opened");
        Ok(())
    }
}
