//! Creating an aggregation task: invite → accept (each participant's signed HPKE key) →
//! commit (everyone's keys) → stored (pending) → active. The task takes reports only once
//! every participant stored it; a creation that does not complete leaves nothing behind.

use std::collections::BTreeSet;

use libp2p::PeerId;
use tracing::{debug, info, warn};

use super::encryption;
use super::shares;
use super::store::{ParticipantKey, TaskInfo, TaskParams};
use super::validity::VERIFY_KEY_BYTES;
use super::{AggError, CreateTask, check_params, now, sha256};
use crate::mpc::session::{SessionError, SessionInbox};
use crate::mpc::wire::{Body, Protocol, SessionId};
use crate::mpc::{InviteRefusal, MpcEngine, unreachable_error};

impl MpcEngine {
    /// Creates a task on every participant (all store it, or the call fails).
    pub async fn create_aggregation(&self, request: CreateTask) -> Result<TaskInfo, AggError> {
        let local = self.inner.local;
        let mut participants: Vec<String> = request
            .participants
            .iter()
            .map(ToString::to_string)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if participants.len() != request.participants.len() {
            return Err(AggError::bad("a participant is listed twice"));
        }
        participants.sort();
        let n = participants.len();
        let (threshold, length) = if request.input.validated() {
            (
                request
                    .threshold
                    .unwrap_or(u16::try_from(n.saturating_sub(1)).unwrap_or(u16::MAX)),
                request
                    .length
                    .or(request.input.output_len())
                    .unwrap_or_default(),
            )
        } else {
            (
                request.threshold.ok_or_else(|| {
                    AggError::bad("threshold is required for raw input (t + 1 of n open the sum)")
                })?,
                request
                    .length
                    .ok_or_else(|| AggError::bad("length is required for raw input"))?,
            )
        };
        let params = TaskParams {
            task_id: SessionId::random().to_string(),
            participants,
            threshold,
            length,
            modulus: request.modulus.unwrap_or(shares::MODULUS),
            min_reports: request.min_reports,
            created_at: now(),
            created_by: Some(local.to_string()),
            clients: request.clients,
            collectors: request.collectors,
            input: request.input,
        };
        let peers = check_params(local, &params).map_err(AggError::bad)?;
        self.check_task_cap(&local)
            .map_err(|m| AggError::new(429, "limit_reached", m))?;
        self.inner
            .roster
            .check_all(&peers)
            .map_err(|m| AggError::bad(format!("participants {m}")))?;
        let unconnected = self
            .unconnected(&peers)
            .await
            .map_err(|e| AggError::internal(e.to_string()))?;
        if let Some(message) = unconnected {
            return Err(AggError::bad(message));
        }
        let others: Vec<PeerId> = peers.iter().filter(|p| **p != local).copied().collect();
        let session = SessionId::random();
        let mut inbox = self
            .inner
            .router
            .open(session, Protocol::AggCreate, others.clone())
            .map_err(|e| AggError::session(session, e))?;
        let engine = self.clone();
        let others2 = others.clone();
        let run = async move {
            let others = others2;
            let params_bytes =
                serde_json::to_vec(&params).map_err(|e| SessionError::failed(e.to_string()))?;
            let digest = sha256(&params_bytes);
            let invite = Body::AggTaskInvite {
                params: params_bytes,
            };
            engine
                .broadcast_round(&mut inbox, &others, &invite, "the task invitation")
                .await?;
            let timeout = engine.inner.round_timeout;
            let accepts = inbox
                .collect("aggregation task accept", &others, timeout, |b| match b {
                    Body::AggTaskAccept {
                        params_digest,
                        identity_public_key,
                        hpke_public_key,
                        signature,
                    } => Some((
                        *params_digest,
                        identity_public_key.clone(),
                        hpke_public_key.clone(),
                        signature.clone(),
                    )),
                    _ => None,
                })
                .await?;
            let mut keys = Vec::new();
            for peer in &peers {
                let key = if *peer == local {
                    engine.own_key()?
                } else {
                    let (d, id_pk, hpke_pk, sig) = &accepts[peer];
                    if *d != digest {
                        return Err(SessionError::blame(
                            vec![*peer],
                            format!("participant {peer} accepted different task parameters"),
                        ));
                    }
                    encryption::verify_binding(peer, id_pk, hpke_pk, sig)
                        .map_err(|e| SessionError::blame(vec![*peer], e))?;
                    ParticipantKey {
                        peer_id: peer.to_string(),
                        identity_public_key: hex::encode(id_pk),
                        hpke_public_key: hex::encode(hpke_pk),
                        signature: hex::encode(sig),
                    }
                };
                keys.push(key);
            }
            let keys_bytes =
                serde_json::to_vec(&keys).map_err(|e| SessionError::failed(e.to_string()))?;
            // A validated task's verify key: drawn here, sent to the participants inside the
            // commit (the MPC channel is encrypted and authenticated), never to a client.
            let verify_key = params.input.validated().then(|| {
                let mut k = [0u8; VERIFY_KEY_BYTES];
                rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut k);
                k
            });
            let commit = Body::AggTaskCommit {
                keys: keys_bytes,
                verify_key: verify_key.map(|k| k.to_vec()).unwrap_or_default(),
            };
            engine
                .broadcast_round(&mut inbox, &others, &commit, "the task commit")
                .await?;
            let info = TaskInfo { params, keys };
            let index = peers.iter().position(|p| *p == local).unwrap_or(0);
            let store = &engine.agg().store;
            let task_id = info.params.task_id.clone();
            let pending = store
                .insert_pending(info.clone(), index, verify_key)
                .await
                .map_err(|e| SessionError::failed(format!("cannot store the task: {e}")))?;
            let stored = inbox
                .collect("aggregation task stored", &others, timeout, |b| match b {
                    Body::AggTaskStored => Some(()),
                    _ => None,
                })
                .await;
            if let Err(e) = stored {
                engine.discard_pending_task(&task_id).await;
                return Err(SessionError::failed(format!(
                    "not every participant confirmed storing task {task_id}; the task is discarded: {e}"
                )));
            }
            store
                .activate(pending)
                .await
                .map_err(|e| SessionError::failed(format!("cannot store the task: {e}")))?;
            engine
                .announce_active(
                    &mut inbox,
                    &others,
                    &format!("aggregation task {task_id}"),
                    Body::AggTaskActive,
                    Body::AggTaskActivated,
                    timeout,
                )
                .await;
            info!(%task_id, "aggregation task created on every participant");
            Ok(info)
        };
        self.run_session(Protocol::AggCreate, "coordinator", session, others, run)
            .await
            .map_err(|e| AggError::session(session, e))
    }

    pub(crate) fn own_key(&self) -> Result<ParticipantKey, SessionError> {
        let agg = self.agg();
        let sig = encryption::sign_binding(&agg.identity, agg.key.public_key())
            .map_err(SessionError::failed)?;
        Ok(ParticipantKey {
            peer_id: self.inner.local.to_string(),
            identity_public_key: hex::encode(agg.identity.public().encode_protobuf()),
            hpke_public_key: hex::encode(agg.key.public_key()),
            signature: hex::encode(sig),
        })
    }

    /// Every check of a task invitation from `from`: the parameters and their participants
    /// (each one checked here, not only by the coordinator), the creator, the cap.
    fn check_task_invite(
        &self,
        from: PeerId,
        params_bytes: &[u8],
    ) -> Result<(TaskParams, Vec<PeerId>), String> {
        let local = self.inner.local;
        let params: TaskParams = serde_json::from_slice(params_bytes)
            .map_err(|e| format!("malformed task parameters: {e}"))?;
        let peers = check_params(local, &params)?;
        if !peers.contains(&from) {
            return Err(format!(
                "the inviting peer {from} is not among the participants"
            ));
        }
        // Checked by every participant, not only by the coordinator.
        self.inner
            .roster
            .check_all(&peers)
            .map_err(|m| format!("participants {m}"))?;
        if self.agg().store.get(&params.task_id).is_some() {
            return Err(format!("task {} exists already", params.task_id));
        }
        if params.created_by != Some(from.to_string()) {
            return Err(format!(
                "the task names {} as its creator, but {from} sent it",
                params.created_by.as_deref().unwrap_or("no one")
            ));
        }
        self.check_task_cap(&from)?;
        Ok((params, peers))
    }

    /// Answers a task invitation: checks it, then stores the task in its own session.
    pub(in crate::mpc) fn join_aggregation_create(
        &self,
        session: SessionId,
        from: PeerId,
        params_bytes: Vec<u8>,
    ) -> Result<(), InviteRefusal> {
        let (params, peers) = self
            .check_task_invite(from, &params_bytes)
            .map_err(InviteRefusal::Other)?;
        self.spawn_participant(
            Protocol::AggCreate,
            session,
            vec![from],
            move |engine, inbox| async move {
                engine
                    .run_join_create(inbox, from, params, params_bytes, peers)
                    .await
            },
        )
    }

    async fn run_join_create(
        &self,
        mut inbox: SessionInbox,
        from: PeerId,
        params: TaskParams,
        params_bytes: Vec<u8>,
        peers: Vec<PeerId>,
    ) -> Result<(), SessionError> {
        let session = inbox.session();
        let own = self.own_key()?;
        let agg = self.agg();
        let accept = Body::AggTaskAccept {
            params_digest: sha256(&params_bytes),
            identity_public_key: agg.identity.public().encode_protobuf(),
            hpke_public_key: agg.key.public_key().to_vec(),
            signature: hex::decode(&own.signature).unwrap_or_default(),
        };
        self.send(from, session, accept)
            .await
            .map_err(|e| unreachable_error(vec![(from, e)], "the task acceptance"))?;
        let timeout = self.inner.round_timeout;
        let commit = inbox
            .collect("aggregation task commit", &[from], timeout, |b| match b {
                Body::AggTaskCommit { keys, verify_key } => {
                    Some((keys.clone(), verify_key.clone()))
                }
                _ => None,
            })
            .await?;
        let (keys, verify_key) = &commit[&from];
        let verify_key = match (params.input.validated(), verify_key.len()) {
            (false, 0) => None,
            (true, VERIFY_KEY_BYTES) => {
                let mut k = [0u8; VERIFY_KEY_BYTES];
                k.copy_from_slice(verify_key);
                Some(k)
            }
            (validated, len) => {
                return Err(SessionError::blame(
                    vec![from],
                    format!(
                        "the task commit carries a {len}-byte verify key for a {} task",
                        if validated { "validated" } else { "raw" }
                    ),
                ));
            }
        };
        let keys: Vec<ParticipantKey> = serde_json::from_slice(keys)
            .map_err(|e| SessionError::blame(vec![from], format!("malformed task keys: {e}")))?;
        if keys.len() != peers.len()
            || keys
                .iter()
                .zip(&peers)
                .any(|(k, p)| k.peer_id != p.to_string())
        {
            return Err(SessionError::blame(
                vec![from],
                "the task keys do not match the participants",
            ));
        }
        let index = peers
            .iter()
            .position(|p| *p == self.inner.local)
            .unwrap_or(0);
        if keys[index] != own {
            return Err(SessionError::blame(
                vec![from],
                "the task commit does not carry this node's own key",
            ));
        }
        for (k, p) in keys.iter().zip(&peers) {
            let dec = |s: &str| hex::decode(s).unwrap_or_default();
            encryption::verify_binding(
                p,
                &dec(&k.identity_public_key),
                &dec(&k.hpke_public_key),
                &dec(&k.signature),
            )
            .map_err(|e| SessionError::blame(vec![from], e))?;
        }
        let info = TaskInfo { params, keys };
        let task_id = info.params.task_id.clone();
        let pending = agg
            .store
            .insert_pending(info, index, verify_key)
            .await
            .map_err(|e| SessionError::failed(format!("cannot store the task: {e}")))?;
        let activated = async {
            if self.inner.faults.withhold_task_stored {
                debug!(%task_id, "test fault: the storage confirmation is withheld");
            } else {
                self.send(from, session, Body::AggTaskStored)
                    .await
                    .map_err(|e| {
                        unreachable_error(vec![(from, e)], "the storage confirmation")
                    })?;
            }
            // The coordinator waits up to a round for the slowest participant first.
            inbox
                .collect("aggregation task activation", &[from], 2 * timeout, |b| {
                    matches!(b, Body::AggTaskActive).then_some(())
                })
                .await
                .map_err(|e| {
                    SessionError::failed(format!(
                        "the coordinator did not confirm that every participant stored task {task_id}; the task is discarded: {e}"
                    ))
                })
        }
        .await;
        if let Err(e) = activated {
            self.discard_pending_task(&task_id).await;
            return Err(e);
        }
        agg.store
            .activate(pending)
            .await
            .map_err(|e| SessionError::failed(format!("cannot store the task: {e}")))?;
        self.report_active(from, session, Body::AggTaskActivated)
            .await;
        info!(%task_id, "aggregation task stored");
        Ok(())
    }

    async fn discard_pending_task(&self, task_id: &str) {
        if let Err(e) = self.agg().store.discard_pending(task_id).await {
            warn!(%task_id, error = %e, "cannot remove a pending task whose creation did not complete");
        }
    }

    fn check_task_cap(&self, creator: &PeerId) -> Result<(), String> {
        let held = self.agg().store.count_created_by(&creator.to_string());
        crate::mpc::check_creator_cap(
            &self.inner.local,
            creator,
            "aggregation tasks",
            held,
            self.inner.max_tasks_per_creator,
            "mpc_max_tasks_per_creator",
        )
    }
}
