//! Opening one batch of a task: the driver of [`core`]. The collector asks every
//! participant to freeze the batch and say which reports it holds in it, proposes the set
//! that t + 1 of them froze, gathers a quorum of votes for it, and the t + 1 chosen stream
//! their share sums here in chunks, against that certificate; the sum is interpolated off
//! the async threads. This module does the I/O the core leaves out: sends, deadlines,
//! signatures, and the task's frozen batches, votes and released marks.

pub mod core;

use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use tracing::info;

use self::core::{
    BatchAnswer, Collector, Held, ID_BYTES, Open, Participant, Proposal, ReportSet, Signed,
    Signers, Statement, VoteAnswer, check_collector, encode_ids, statement_bytes,
};
use super::relay::core::TaskShape;
use super::shares;
use super::store::{Snapshot, TaskEntry};
use super::{AggError, CollectResult};
use crate::mpc::chunks::{ChunkAssembly, pieces};
use crate::mpc::policy::Authorization;
use crate::mpc::session::{SessionError, SessionInbox};
use crate::mpc::wire::{Blob, Body, Protocol, SessionId, SignedSet};
use crate::mpc::{InviteRefusal, MpcEngine, unreachable_error};

fn signed_list(list: &[(u16, Vec<u8>)]) -> Vec<(u16, Blob)> {
    list.iter()
        .map(|(i, s)| (*i, Blob(s.clone().into())))
        .collect()
}

fn unsigned_list(list: &[(u16, Blob)]) -> Vec<(u16, Vec<u8>)> {
    list.iter().map(|(i, s)| (*i, s.0.to_vec())).collect()
}

fn open_body(open: &Open) -> Body {
    Body::AggOpen {
        digest: open.set.digest,
        count: open.set.count,
        send_sum: open.send_sum,
        certificate: signed_list(&open.certificate),
    }
}

fn held(snapshot: &Snapshot) -> Held {
    Held {
        set: snapshot.set,
        frozen: snapshot.frozen,
        vote: snapshot.vote,
        clients: snapshot.clients,
    }
}

fn signed_set(set: ReportSet, signature: Vec<u8>) -> SignedSet {
    SignedSet {
        digest: set.digest,
        count: set.count,
        signature: Blob(signature.into()),
    }
}

fn from_signed(s: &SignedSet) -> (ReportSet, Vec<u8>) {
    (
        ReportSet {
            digest: s.digest,
            count: s.count,
        },
        s.signature.0.to_vec(),
    )
}

/// What a participant waits for after its report set: a request for the ids of its set, a
/// proposal (its ids follow in chunks), or the open request.
#[derive(PartialEq)]
enum Next {
    Ids([u8; 32]),
    Propose(ReportSet, Vec<Signed>),
    Open(Open),
}

impl MpcEngine {
    /// Opens batch `batch` of a task (by default the batch this node takes reports into):
    /// agrees with a quorum of participants on its report set, gathers t + 1 share sums and
    /// interpolates.
    pub async fn collect_aggregation(
        &self,
        task_id: &str,
        batch: Option<u64>,
        authorization: Option<Authorization>,
    ) -> Result<CollectResult, AggError> {
        let (task, shape) = self.task_and_shape(task_id)?;
        let batch = match batch {
            Some(b) => b,
            None => task.default_collect_batch().await,
        };
        // The rogue collector of the test fault skips its own checks; the participants
        // still make them.
        if !self.inner.faults.collect_ignores_min_reports {
            check_collector(
                &task.info.params.collectors,
                task_id,
                batch,
                &self.inner.local,
                authorization.as_ref(),
                crate::mpc::policy::now(),
            )
            .map_err(|m| AggError::new(403, "collector_refused", m))?;
            if let Some(auth) = &authorization {
                self.use_collect_request(auth)?;
            }
        }
        let signers = Signers::of(&task.info, batch).map_err(AggError::internal)?;
        let others: Vec<PeerId> = shape.others();
        let session = SessionId::random();
        let inbox = self
            .inner
            .router
            .open(session, Protocol::AggCollect, others.clone())
            .map_err(|e| AggError::session(session, e))?;
        let engine = self.clone();
        let run = async move {
            engine
                .run_collect(inbox, task, shape, signers, authorization)
                .await
        };
        self.run_session(Protocol::AggCollect, "collector", session, others, run)
            .await
            .map_err(|e| AggError::session(session, e))?
    }

    /// Takes a collect authorization's request id once: a replayed one is refused (it
    /// would hand the sum to whoever replays it). Expired ids are dropped.
    fn use_collect_request(&self, auth: &Authorization) -> Result<(), AggError> {
        const MAX_REMEMBERED: usize = 100_000;
        let now = crate::mpc::policy::now();
        let mut used = self
            .agg()
            .collect_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        used.retain(|_, expires| *expires >= now);
        if used.contains_key(&auth.request_id) {
            return Err(AggError::new(
                409,
                "replayed_collect",
                format!(
                    "collect request {} was used already",
                    crate::log_limit::echo(&auth.request_id)
                ),
            ));
        }
        if used.len() >= MAX_REMEMBERED {
            return Err(AggError::new(
                429,
                "limit_reached",
                "too many collect authorizations are still valid here; retry later",
            ));
        }
        used.insert(auth.request_id.clone(), auth.expires_at);
        Ok(())
    }

    fn sign_statement(
        &self,
        statement: Statement,
        task: &TaskEntry,
        batch: u64,
        set: ReportSet,
    ) -> Result<Vec<u8>, SessionError> {
        let bytes = statement_bytes(statement, &task.info.params.task_id, batch, set);
        self.agg()
            .identity
            .sign(&bytes)
            .map_err(|e| SessionError::failed(format!("cannot sign: {e}")))
    }

    /// How long a freeze waits for reports already under way into the batch.
    fn freeze_wait(&self) -> Duration {
        self.inner.round_timeout / 2
    }

    async fn freeze(&self, task: &TaskEntry, batch: u64) -> Result<Snapshot, SessionError> {
        let frozen = task
            .freeze(batch, self.freeze_wait())
            .await
            .map_err(|e| SessionError::failed(e.to_string()))?;
        info!(task_id = %task.info.params.task_id, batch, reports = frozen.set.count, "batch frozen");
        Ok(frozen)
    }

    /// This node's answer to a collect of `batch`: its batch frozen first when it holds
    /// `min_reports` reports in it, then its set, signed when frozen, and its vote.
    async fn batch_answer(
        &self,
        task: &TaskEntry,
        participant: &Participant,
        batch: u64,
    ) -> Result<BatchAnswer, SessionError> {
        let mut snapshot = task.snapshot(batch).await;
        if participant.freezes(&held(&snapshot)) {
            snapshot = self.freeze(task, batch).await?;
        }
        let holds = if snapshot.frozen {
            Some(self.sign_statement(Statement::Holds, task, batch, snapshot.set)?)
        } else {
            None
        };
        let vote = match snapshot.vote {
            Some(v) => Some((v, self.sign_statement(Statement::Vote, task, batch, v)?)),
            None => None,
        };
        Ok(BatchAnswer {
            set: snapshot.set,
            clients: snapshot.clients,
            holds,
            vote,
        })
    }

    /// This node's vote on `proposal` (freezing its batch first when the proposal is
    /// proved): the vote in force, signed, or why it gives none.
    async fn vote_on(
        &self,
        task: &TaskEntry,
        participant: &Participant,
        collector: PeerId,
        proposal: &Proposal,
        batch: u64,
    ) -> Result<(Option<(ReportSet, Vec<u8>)>, String), SessionError> {
        let mut snapshot = task.snapshot(batch).await;
        let mut answer = participant.receive_proposal(collector, proposal, &held(&snapshot))?;
        if answer == VoteAnswer::FreezeFirst {
            snapshot = self.freeze(task, batch).await?;
            answer = participant.receive_proposal(collector, proposal, &held(&snapshot))?;
        }
        match answer {
            VoteAnswer::Vote(set) => {
                let in_force = task
                    .vote(batch, set, &proposal.ids)
                    .await
                    .map_err(|e| SessionError::failed(e.to_string()))?;
                let in_force = match in_force {
                    Ok(v) => v,
                    Err(why) => return Ok((None, why)),
                };
                let sig = self.sign_statement(Statement::Vote, task, batch, in_force)?;
                Ok((Some((in_force, sig)), String::new()))
            }
            VoteAnswer::Refuse(why) => Ok((None, why)),
            VoteAnswer::FreezeFirst => Err(SessionError::failed(format!(
                "batch {batch} did not freeze"
            ))),
        }
    }

    async fn run_collect(
        &self,
        mut inbox: SessionInbox,
        task: Arc<TaskEntry>,
        shape: TaskShape,
        signers: Signers,
        authorization: Option<Authorization>,
    ) -> Result<Result<CollectResult, AggError>, SessionError> {
        let session = inbox.session();
        let task_id = shape.task_id.clone();
        let batch = signers.batch();
        let local = shape.local;
        let min_reports = task.info.params.min_reports;
        let me = Participant::new(local, shape.clone(), signers.clone(), min_reports);
        let own = self.batch_answer(&task, &me, batch).await?;
        let (mut collector, others) = Collector::start(shape, signers, min_reports, own);
        let invite = Body::AggCollectInvite {
            task_id: task_id.clone(),
            batch,
            authorization,
        };
        let failures = self.broadcast(&others, session, &invite).await;
        for (peer, e) in &failures {
            info!(%peer, error = %e, "participant did not take the collect invite");
        }
        collector.unreachable(failures.into_iter().map(|(p, _)| p));
        let timeout = self.inner.round_timeout;
        let awaited = collector.awaited();
        inbox
            .collect_each(
                "aggregation report set",
                &awaited,
                timeout,
                |b| match b {
                    Body::AggReportSet {
                        digest,
                        count,
                        clients,
                        holds,
                        vote,
                    } => Some(BatchAnswer {
                        set: ReportSet {
                            digest: *digest,
                            count: *count,
                        },
                        clients: *clients,
                        holds: holds.as_ref().map(|h| h.0.to_vec()),
                        vote: vote.as_ref().map(from_signed),
                    }),
                    _ => None,
                },
                |from, answer| collector.receive_answer(from, answer.clone()),
            )
            .await?;
        let (mut proposal, ask, mut voting) =
            match collector.propose(self.inner.faults.collect_ignores_min_reports) {
                Ok(proposed) => proposed,
                Err((answered, refusal)) => {
                    self.tell_nothing(session, &answered).await;
                    return Ok(Err(refusal));
                }
            };
        // The report ids of the set: this node's own when it froze it, else a holder's.
        proposal.ids = match voting.holders().first() {
            Some(p) if *p == local => {
                let own = task.snapshot(batch).await;
                own.report_ids.iter().cloned().collect()
            }
            Some(holder) => {
                let holder = *holder;
                self.send(
                    holder,
                    session,
                    Body::AggIdsRequest {
                        digest: proposal.set.digest,
                    },
                )
                .await
                .map_err(|e| unreachable_error(vec![(holder, e)], "the ids request"))?;
                let bytes = self
                    .receive_ids(&mut inbox, holder, proposal.set.count)
                    .await?;
                voting.receive_ids(holder, &bytes)?
            }
            None => Vec::new(),
        };
        let rogue = self.inner.faults.collect_ignores_min_reports;
        let (own_vote, refusal) = match self.vote_on(&task, &me, local, &proposal, batch).await {
            Ok(vote) => vote,
            // The rogue collector of the test fault goes on past its own checks.
            Err(e) if rogue => (None, e.to_string()),
            Err(e) => return Err(e),
        };
        voting.local_vote(own_vote, &refusal);
        let body = Body::AggPropose {
            digest: proposal.set.digest,
            count: proposal.set.count,
            holds: signed_list(&proposal.holds),
        };
        let failures = self.broadcast(&ask, session, &body).await;
        let ids = bytes::Bytes::from(encode_ids(&proposal.ids));
        let sent: Vec<PeerId> = ask
            .iter()
            .filter(|p| !failures.iter().any(|(f, _)| f == *p))
            .copied()
            .collect();
        let streams = futures::future::join_all(sent.iter().map(|p| {
            self.send_chunked(*p, session, pieces(ids.clone()), |index, data| {
                Body::AggChunk { index, data }
            })
        }))
        .await;
        let unreached = failures.into_iter().map(|(p, _)| p).chain(
            sent.iter()
                .zip(streams)
                .filter(|(_, r)| r.is_err())
                .map(|(p, _)| *p),
        );
        voting.unreachable(unreached.collect::<Vec<_>>());
        let awaited = voting.awaited();
        inbox
            .collect_each(
                "aggregation vote",
                &awaited,
                timeout,
                |b| match b {
                    Body::AggVote { vote, refusal } => {
                        Some((vote.as_ref().map(from_signed), refusal.clone()))
                    }
                    _ => None,
                },
                |from, (vote, refusal)| voting.receive_vote(from, vote.clone(), refusal),
            )
            .await?;
        let (requests, opening) = voting.certify(rogue);
        let (chosen, not_chosen): (Vec<_>, Vec<_>) =
            requests.into_iter().partition(|(_, open)| open.send_sum);
        let _ = futures::future::join_all(
            not_chosen
                .iter()
                .map(|(p, open)| self.send(*p, session, open_body(open))),
        )
        .await;
        let mut opening = match opening {
            Ok(opening) => opening,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let messages = chosen
            .iter()
            .map(|(p, open)| (*p, open_body(open)))
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
            let snapshot = task.snapshot(batch).await;
            if !snapshot.frozen || snapshot.set != opening.set() {
                return Err(SessionError::failed(format!(
                    "this node's batch {batch} is not the set being opened"
                )));
            }
            task.mark_released(batch, opening.set().digest)
                .await
                .map_err(|e| SessionError::failed(e.to_string()))?;
            Some(snapshot.share_sum)
        } else {
            None
        };
        let opened = opening.finish(own_sum)?;
        let points = opened.points;
        let t = usize::from(task.info.params.threshold);
        let n = task.info.params.participants.len();
        let additive = task.validation.is_some();
        let (sum, cross_checked) = tokio::task::spawn_blocking(move || {
            // A validated task's share sums are additive Prio3 shares: all n add up to the
            // sum (there is no spare to cross-check with).
            if additive {
                shares::add_all(&points, n).map(|s| (s, false))
            } else {
                shares::open_checked(&points, t)
            }
        })
        .await
        .map_err(|e| SessionError::failed(e.to_string()))?
        .map_err(|e| SessionError::failed(e.to_string()))?;
        task.mark_collected(batch)
            .await
            .map_err(|e| SessionError::failed(e.to_string()))?;
        info!(%task_id, batch, reports = opened.set.count, "aggregate opened");
        Ok(Ok(CollectResult {
            task_id,
            batch,
            sum: shares::to_integers(&sum),
            reports: opened.set.count,
            report_set_digest: hex::encode(opened.set.digest),
            opened_by: opened.opened_by.iter().map(ToString::to_string).collect(),
            cross_checked,
        }))
    }

    /// Receives `count` report ids in chunks from `from`, each within a round deadline of
    /// the previous one.
    async fn receive_ids(
        &self,
        inbox: &mut SessionInbox,
        from: PeerId,
        count: u64,
    ) -> Result<Vec<u8>, SessionError> {
        let mut assembly = ChunkAssembly::new(count as usize * ID_BYTES, true);
        loop {
            let deadline = tokio::time::Instant::now() + self.inner.round_timeout;
            let (peer, (index, data)) = inbox
                .next_of("aggregation chunk", &[from], deadline, |b| match b {
                    Body::AggChunk { index, data } => Some((*index, data.0.clone())),
                    _ => None,
                })
                .await?;
            let complete = assembly.accept(index, &data).map_err(|e| {
                SessionError::blame(
                    vec![peer],
                    format!("{peer} sent a bad chunk of report ids: {e}"),
                )
            })?;
            if complete {
                return Ok(assembly.into_bytes().unwrap_or_default());
            }
        }
    }

    /// Ends the participants' side of a refused collect.
    async fn tell_nothing(&self, session: SessionId, peers: &[PeerId]) {
        let body = open_body(&Open::nothing());
        let _ =
            futures::future::join_all(peers.iter().map(|p| self.send(*p, session, body.clone())))
                .await;
    }

    /// Answers a collect invitation: freezes the batch (when it holds enough reports),
    /// reports its set, votes on the proposal, and opens when chosen against a certificate.
    pub(in crate::mpc) fn join_aggregation_collect(
        &self,
        session: SessionId,
        from: PeerId,
        task_id: String,
        batch: u64,
        authorization: Option<Authorization>,
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
        check_collector(
            &task.info.params.collectors,
            &task_id,
            batch,
            &from,
            authorization.as_ref(),
            crate::mpc::policy::now(),
        )
        .map_err(|m| {
            info!(%task_id, batch, collector = %from, reason = %m, "collect refused");
            InviteRefusal::Other(m)
        })?;
        let shape = TaskShape::of_task(&task, self.inner.local).map_err(InviteRefusal::Other)?;
        let signers = Signers::of(&task.info, batch).map_err(InviteRefusal::Other)?;
        let participant = Participant::new(from, shape, signers, task.info.params.min_reports);
        self.spawn_participant(
            Protocol::AggCollect,
            session,
            vec![from],
            move |engine, inbox| async move {
                engine
                    .run_collect_participant(inbox, from, task, participant, batch)
                    .await
            },
        )
    }

    async fn run_collect_participant(
        &self,
        mut inbox: SessionInbox,
        from: PeerId,
        task: Arc<TaskEntry>,
        participant: Participant,
        batch: u64,
    ) -> Result<(), SessionError> {
        let session = inbox.session();
        let answer = self.batch_answer(&task, &participant, batch).await?;
        let body = Body::AggReportSet {
            digest: answer.set.digest,
            count: answer.set.count,
            clients: answer.clients,
            holds: answer.holds.map(|h| Blob(h.into())),
            vote: answer.vote.map(|(set, sig)| signed_set(set, sig)),
        };
        self.send(from, session, body)
            .await
            .map_err(|e| unreachable_error(vec![(from, e)], "the report set"))?;
        let timeout = self.inner.round_timeout;
        let (mut proposed, mut ids_sent) = (false, false);
        let open = loop {
            let next = inbox
                .collect("aggregation proposal", &[from], timeout, |b| match b {
                    Body::AggIdsRequest { digest } => Some(Next::Ids(*digest)),
                    Body::AggPropose {
                        digest,
                        count,
                        holds,
                    } => Some(Next::Propose(
                        ReportSet {
                            digest: *digest,
                            count: *count,
                        },
                        unsigned_list(holds),
                    )),
                    Body::AggOpen {
                        digest,
                        count,
                        send_sum,
                        certificate,
                    } => Some(Next::Open(Open {
                        set: ReportSet {
                            digest: *digest,
                            count: *count,
                        },
                        send_sum: *send_sum,
                        certificate: unsigned_list(certificate),
                    })),
                    _ => None,
                })
                .await?
                .remove(&from);
            match next {
                Some(Next::Ids(_) | Next::Propose(..)) if proposed => {
                    return Err(SessionError::blame(
                        vec![from],
                        format!(
                            "collector {from} asked again after its proposal for batch {batch}"
                        ),
                    ));
                }
                Some(Next::Ids(digest)) => {
                    if ids_sent {
                        return Err(SessionError::blame(
                            vec![from],
                            format!(
                                "collector {from} asked twice for the report ids of batch {batch}"
                            ),
                        ));
                    }
                    ids_sent = true;
                    participant.check_sender(from, "a request for report ids")?;
                    let snapshot = task.snapshot(batch).await;
                    if !snapshot.frozen || snapshot.set.digest != digest {
                        return Err(SessionError::failed(format!(
                            "asked for the report ids of a set of batch {batch} that this node did not freeze"
                        )));
                    }
                    let bytes = bytes::Bytes::from(encode_ids(&snapshot.report_ids));
                    self.send_chunked(from, session, pieces(bytes), |index, data| Body::AggChunk {
                        index,
                        data,
                    })
                    .await
                    .map_err(|e| unreachable_error(vec![(from, e)], "the report ids"))?;
                }
                Some(Next::Propose(set, holds)) => {
                    proposed = true;
                    participant.check_proposal(from, set, &holds)?;
                    let bytes = self.receive_ids(&mut inbox, from, set.count).await?;
                    let ids = self::core::decode_ids(&bytes, set).map_err(|e| {
                        SessionError::blame(
                            vec![from],
                            format!("collector {from} sent the report ids of its proposal: {e}"),
                        )
                    })?;
                    let proposal = Proposal { set, holds, ids };
                    let (vote, refusal) = self
                        .vote_on(&task, &participant, from, &proposal, batch)
                        .await?;
                    let body = Body::AggVote {
                        vote: vote.map(|(set, sig)| signed_set(set, sig)),
                        refusal,
                    };
                    self.send(from, session, body)
                        .await
                        .map_err(|e| unreachable_error(vec![(from, e)], "the vote"))?;
                }
                Some(Next::Open(open)) => break open,
                None => return Err(SessionError::failed("no open request")),
            }
        };
        let snapshot = task.snapshot(batch).await;
        let Some(set) = participant.receive_open(from, &open, &held(&snapshot))? else {
            return Ok(());
        };
        task.mark_released(batch, set.digest)
            .await
            .map_err(|e| SessionError::failed(e.to_string()))?;
        let mut sum = snapshot.share_sum;
        if self.inner.faults.wrong_share_sum
            && let Some(first) = sum.first_mut()
        {
            *first += shares::Field::from(1u64);
        }
        let bytes = shares::encode(&sum);
        self.send_chunked(from, session, pieces(bytes.into()), |index, data| {
            Body::AggChunk { index, data }
        })
        .await
        .map_err(|e| unreachable_error(vec![(from, e)], "the share sum"))?;
        info!(task_id = %task.info.params.task_id, batch, reports = set.count, "share sum released");
        Ok(())
    }
}
