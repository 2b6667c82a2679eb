//! Changing a key's signing policy (`POST /v1/keys/{id}/policy`): versioned, voted on,
//! committed on a quorum with a certificate, and caught up by the holders that missed it.
//! This file is the driver (sends, deadlines, persistence, catch-up); every check of a
//! protocol message is in the I/O-free [`core`].
//!
//! Every key's policy has a version (0 at creation). A change from version `v` is approved
//! by the clients over the stamp of `v` (version and digest) and the new policy's digest, and
//! runs in two rounds:
//!
//! 1. **Prepare.** The coordinator votes for the change itself, admits the approvals and asks
//!    every other holder to do the same ([`Body::PolicyPrepare`]). A holder checks the
//!    approvals under its own copy of the policy, refuses when its version is not `v`
//!    (`policy_version_mismatch`) or when it already voted for another change to `v + 1`
//!    (`policy_change_conflict`), keeps its vote on disk, and answers
//!    [`Body::PolicyPrepared`] with the vote signed by its node identity key. A vote lives
//!    for three rounds (across restarts); one that never left the holder is dropped at once
//!    when the change fails.
//! 2. **Commit.** Once [`commit_quorum`] holders (the coordinator included) voted, the
//!    coordinator applies the change and sends it to every other holder as a
//!    [`PolicyChangeRecord`] carrying the quorum's votes ([`Body::PolicyCommit`]); each
//!    checks the record against its own policy and checks the votes
//!    ([`core::verify_committed`]) before it applies it, and answers
//!    [`Body::PolicyCommitted`].
//!
//! The quorum is `max(n - t + 1, ⌊n/2⌋ + 1)` of the `n` holders of a `t`-of-`n` key:
//! - after a commit at most `t - 1` holders still hold the old version, and a holder refuses
//!   a signing invitation that names another version than its own, so the old policy can no
//!   longer gather `t` signers: a revoked client gets no signature;
//! - any two quorums share a holder, and an honest holder votes for one change per version
//!   while its vote lives, so two concurrent changes cannot both commit;
//! - a change (a revocation above all) commits while up to `min(t - 1, ⌈n/2⌉ - 1)` holders
//!   are down or refuse: one rogue holder cannot veto it (for `t ≥ 2`, `n ≥ 3`);
//! - a record applies only with the votes of a quorum, so a change that never committed (it
//!   lost a conflict, or its clients gave up) cannot be applied later by a holder that kept
//!   its approvals.
//!
//! A holder that missed a commit catches up from its peers ([`Body::PolicySyncRequest`]):
//! at start, and whenever an invitation shows it is behind (or, on the coordinator, when a
//! holder refuses with `policy_version_mismatch`). It takes each record only through the same
//! check, so a peer can delay it but never make it apply a policy the clients did not
//! approve and a quorum did not vote for, and never a downgrade. Key files keep the last
//! [`MAX_POLICY_HISTORY`](super::policy::MAX_POLICY_HISTORY) changes.

pub mod core;

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use tracing::{Instrument, debug, info, warn};

pub use self::core::commit_quorum;
use self::core::{Change, ChangeCoordinator, StoredVote, VoteBook, Voter};
use super::admission::PendingAdmission;
use super::policy::{
    Authorization, PolicyChangeRecord, PolicyStamp, Refusal, SigningPolicy, refuse,
};
use super::session::{SessionError, SessionInbox};
use super::store::{KeyShareStore, StoredKey};
use super::wire::{Body, MAX_MESSAGE_BYTES, Protocol, SessionId};
use super::{InviteRefusal, MpcEngine, MpcError, parse_peers, unreachable_error};
use crate::mpc::transport::MpcSendError;

/// Rounds a holder's vote for a prepared change lasts without a commit.
const VOTE_ROUNDS: u32 = 3;
/// Most records one sync answer carries; fewer when they would fill more than half a
/// message (a record holds a policy, its approvals and its votes).
const SYNC_BATCH: usize = 4;
/// Most sync requests of one catch-up.
const SYNC_ROUNDS: usize = 16;

/// The answer of a committed policy change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyChangeResponse {
    pub key_id: String,
    /// The policy now in force.
    pub policy: SigningPolicy,
    /// Its version.
    pub policy_version: u64,
    pub session_id: String,
    /// Holders that applied the change (this node included), sorted.
    pub committed_on: Vec<String>,
    /// Holders that did not confirm it in time: they refuse signing with the old policy
    /// (`policy_version_mismatch`) until they have caught up, which they do by themselves.
    pub lagging: Vec<String>,
}

/// Unix milliseconds now.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// This node's votes for prepared changes, the lock that orders its policy writes, and the
/// keys it is catching up.
#[derive(Default)]
pub(crate) struct PolicyState {
    votes: Mutex<VoteBook>,
    write: tokio::sync::Mutex<()>,
    syncing: Mutex<HashSet<String>>,
}

impl PolicyState {
    /// The state of a node whose keys are in `store`: the live votes kept in the key files
    /// stand again.
    pub(crate) fn restore(store: &KeyShareStore) -> Self {
        let state = Self::default();
        let now = now_ms();
        {
            let mut book = state.book();
            for key in store.list() {
                if let Some(vote) = store.get(&key.key_id).and_then(|k| k.vote) {
                    book.restore(&key.key_id, vote, now);
                }
            }
        }
        state
    }

    /// The order of a key file's rewrites (policy changes, votes, a new generation): held
    /// across a read-modify-write of the file.
    pub(crate) async fn key_writes(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.write.lock().await
    }

    fn book(&self) -> std::sync::MutexGuard<'_, VoteBook> {
        self.votes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn vote(
        &self,
        key_id: &str,
        version: u64,
        digest: [u8; 32],
        session: SessionId,
        ttl: Duration,
    ) -> Result<StoredVote, Refusal> {
        let now = now_ms();
        let until = now.saturating_add(ttl.as_millis() as u64);
        self.book()
            .vote(key_id, version, digest, session, now, until)
    }

    fn release(&self, key_id: &str, session: SessionId) {
        self.book().release(key_id, session);
    }

    fn settled(&self, key_id: &str, version: u64) {
        self.book().settled(key_id, version);
    }
}

/// The refusal of a request checked against `theirs` by a node that holds `ours`.
pub(crate) fn version_mismatch(key_id: &str, theirs: PolicyStamp, ours: PolicyStamp) -> Refusal {
    let note = if theirs.version > ours.version {
        "; this holder is catching up"
    } else {
        ""
    };
    refuse(
        "policy_version_mismatch",
        format!(
            "key {key_id}: the request was checked against policy {theirs}, this holder has {ours} in force{note}"
        ),
    )
}

impl MpcEngine {
    fn vote_ttl(&self) -> Duration {
        self.inner.round_timeout * VOTE_ROUNDS
    }

    /// Replaces key `key_id`'s policy with `new_policy` on every holder.
    pub async fn change_policy(
        &self,
        key_id: &str,
        new_policy: SigningPolicy,
        authorizations: Vec<Authorization>,
    ) -> Result<PolicyChangeResponse, MpcError> {
        let key = self
            .inner
            .store
            .get(key_id)
            .ok_or_else(|| MpcError::UnknownKey(key_id.to_string()))?;
        let new_policy = new_policy
            .normalized()
            .map_err(|m| MpcError::BadRequest(format!("policy: {m}")))?;
        let current = key.info.policy_stamp();
        if new_policy.digest() == current.digest {
            return Err(MpcError::BadRequest(format!(
                "key {key_id} has this policy in force already ({current})"
            )));
        }
        let session = SessionId::random();
        let state = &self.inner.policy;
        // The coordinator's own vote leaves this node only inside the committed record.
        state.vote(
            key_id,
            current.version + 1,
            new_policy.digest(),
            session,
            self.vote_ttl(),
        )?;
        let result = self
            .coordinate_policy_change(key, new_policy, authorizations, session)
            .await;
        state.release(key_id, session);
        result
    }

    async fn coordinate_policy_change(
        &self,
        key: std::sync::Arc<StoredKey>,
        new_policy: SigningPolicy,
        authorizations: Vec<Authorization>,
        session: SessionId,
    ) -> Result<PolicyChangeResponse, MpcError> {
        let key_id = key.info.key_id.clone();
        let current = key.info.policy_stamp();
        // The approvals' request ids are on disk before any holder is asked.
        let admitted = self
            .admit_policy_change(&key.info, &new_policy, &authorizations)?
            .persist()
            .await?;
        let local = self.inner.local;
        let holders = parse_peers(&key.info.participants).map_err(MpcError::Internal)?;
        let others: Vec<PeerId> = holders.iter().filter(|p| **p != local).copied().collect();
        let uncertified = PolicyChangeRecord {
            version: current.version + 1,
            policy: new_policy.clone(),
            approvals: authorizations.clone(),
            votes: vec![],
        };
        let mut core = ChangeCoordinator::start(
            admitted,
            &self.inner.aggregation.identity,
            &key.info,
            holders,
            new_policy.clone(),
            authorizations,
        )
        .map_err(|error| MpcError::Session { session, error })?;
        let quorum = core.quorum();
        let mut inbox = self
            .inner
            .router
            .open(session, Protocol::PolicyChange, others.clone())
            .map_err(|error| MpcError::Session { session, error })?;
        let engine = self.clone();
        let others2 = others.clone();
        let timeout = self.inner.round_timeout;
        let id = key_id.clone();
        let run = async move {
            let others = others2;
            if engine.inner.faults.commit_without_quorum {
                return engine
                    .commit_without_quorum(&others, session, id.clone(), uncertified)
                    .await;
            }
            let failures = engine.broadcast(&others, session, &core.prepare()).await;
            engine.catch_up_from_refusers(&id, &failures);
            let reached: Vec<PeerId> = others
                .iter()
                .filter(|p| !failures.iter().any(|(f, _)| f == *p))
                .copied()
                .collect();
            if reached.len() + 1 < quorum {
                if let Some(refused) = SessionError::refused_by_holders(&failures) {
                    return Err(refused);
                }
                return Err(inbox
                    .explain_failures(failures, &format!(
                            "the policy change (it commits once {quorum} of the {} holders voted for it)",
                            others.len() + 1
                        ),
                    )
                    .await);
            }
            let deadline = tokio::time::Instant::now() + timeout;
            let mut pending = reached;
            while !core.certified() {
                let (peer, vote) = inbox
                    .next_of("policy prepared", &pending, deadline, |b| match b {
                        Body::PolicyPrepared { vote } => Some(vote.clone()),
                        _ => None,
                    })
                    .await?;
                pending.retain(|p| *p != peer);
                core.prepared(peer, &vote)?;
            }
            // A quorum voted: the change is committed, here first, then everywhere.
            let record = core.commit()?;
            match engine
                .apply_policy_record(&id, record.clone(), "coordinator")
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    return Err(SessionError::failed(format!(
                        "key {id}: another change to policy version {} was applied here meanwhile",
                        record.version
                    )));
                }
                Err(r) => {
                    return Err(SessionError::failed(format!(
                        "cannot apply the change here: {r}"
                    )));
                }
            }
            let commit = Body::PolicyCommit {
                key_id: id.clone(),
                record: record.clone(),
            };
            let failures = engine.broadcast(&others, session, &commit).await;
            let delivered: Vec<PeerId> = others
                .iter()
                .filter(|p| !failures.iter().any(|(f, _)| f == *p))
                .copied()
                .collect();
            let confirmed = await_committed(&mut inbox, &delivered, record.version, timeout).await;
            Ok(confirmed)
        };
        let confirmed = self
            .run_session(
                Protocol::PolicyChange,
                "coordinator",
                session,
                others.clone(),
                run,
            )
            .await
            .map_err(|error| MpcError::Session { session, error })?;
        let mut committed_on: Vec<String> = confirmed
            .iter()
            .chain([&local])
            .map(ToString::to_string)
            .collect();
        committed_on.sort();
        let mut lagging: Vec<String> = others
            .iter()
            .filter(|p| !confirmed.contains(p))
            .map(ToString::to_string)
            .collect();
        lagging.sort();
        if !lagging.is_empty() {
            warn!(%key_id, lagging = %lagging.join(","), "policy change committed; these holders did not confirm it and will catch up");
        }
        Ok(PolicyChangeResponse {
            key_id,
            policy: new_policy,
            policy_version: current.version + 1,
            session_id: session.to_string(),
            committed_on,
            lagging,
        })
    }

    /// Test-only (`commit-without-quorum`, a compromised holder): sends the client-approved
    /// change to every other holder as committed, with no vote, without asking anyone to
    /// prepare it. The honest holders must refuse it (`uncertified_change`).
    async fn commit_without_quorum(
        &self,
        others: &[PeerId],
        session: SessionId,
        key_id: String,
        record: PolicyChangeRecord,
    ) -> Result<Vec<PeerId>, SessionError> {
        let commit = Body::PolicyCommit { key_id, record };
        let refused = self.broadcast(others, session, &commit).await;
        info!(
            holders = others.len(),
            refused = refused.len(),
            "test fault: sent a commit no quorum voted for"
        );
        Err(
            SessionError::refused_by_holders(&refused).unwrap_or_else(|| {
                SessionError::failed("test fault: a commit no quorum voted for was accepted")
            }),
        )
    }

    /// Answers a prepare from `coordinator`: votes for the change, admits its approvals
    /// under this holder's own copy of the policy, then (in its own task) makes their request
    /// ids and the vote durable, sends the signed vote and waits for the commit.
    pub(super) fn join_policy_prepare(
        &self,
        session: SessionId,
        coordinator: PeerId,
        key_id: String,
        current: PolicyStamp,
        policy_bytes: &[u8],
        authorizations: Vec<Authorization>,
    ) -> Result<(), InviteRefusal> {
        let local = self.inner.local;
        let new_policy = SigningPolicy::from_bytes(policy_bytes)?;
        let state = &self.inner.policy;
        // The key must be held here and shared with the coordinator before a vote is
        // recorded for it; the gate below checks the version and the approvals. The vote
        // comes first, so that a change refused for a conflict does not spend its approvals.
        self.key_shared_with(&key_id, coordinator)?;
        let vote = state
            .vote(
                &key_id,
                current.version + 1,
                new_policy.digest(),
                session,
                self.vote_ttl(),
            )
            .map_err(|refusal| InviteRefusal::Policy {
                peer: local,
                refusal,
            })?;
        let pending = match self.admit_policy_change_invite(
            coordinator,
            &key_id,
            current,
            &new_policy,
            &authorizations,
        ) {
            Ok((_, pending)) => pending,
            Err(e) => {
                state.release(&key_id, session);
                return Err(e);
            }
        };
        let change = Change {
            key_id: key_id.clone(),
            current,
            digest: new_policy.digest(),
        };
        let id = key_id.clone();
        let spawned = self.spawn_participant(
            Protocol::PolicyChange,
            session,
            vec![coordinator],
            move |engine, inbox| async move {
                let result = engine
                    .prepare_and_wait(inbox, coordinator, change, vote, pending)
                    .await;
                engine.inner.policy.release(&key_id, session);
                result
            },
        );
        if spawned.is_err() {
            // The vote was not sent: it goes with the refusal.
            state.release(&id, session);
        }
        spawned
    }

    async fn prepare_and_wait(
        &self,
        mut inbox: SessionInbox,
        coordinator: PeerId,
        change: Change,
        vote: StoredVote,
        pending: PendingAdmission,
    ) -> Result<(), SessionError> {
        let local = self.inner.local;
        let session = inbox.session();
        // The approvals' request ids are on disk before this holder votes aloud, and so is
        // the vote (a restarted holder does not vote for another change to this version).
        let admitted = pending
            .persist()
            .await
            .map_err(|r| SessionError::failed(format!("peer {local}: {r}")))?;
        self.keep_vote(&change.key_id, vote)
            .await
            .map_err(|e| SessionError::failed(format!("peer {local}: {e}")))?;
        let (voter, signed) = Voter::prepare(
            admitted,
            &self.inner.aggregation.identity,
            coordinator,
            change.clone(),
        )?;
        self.inner.policy.book().sent(&change.key_id, session);
        self.send(coordinator, session, Body::PolicyPrepared { vote: signed })
            .await
            .map_err(|e| unreachable_error(vec![(coordinator, e)], "the prepared vote"))?;
        let (from, record) = inbox
            .next_of(
                "policy commit",
                &[coordinator],
                tokio::time::Instant::now() + self.vote_ttl(),
                |b| match b {
                    Body::PolicyCommit { record, .. } => Some(record.clone()),
                    _ => None,
                },
            )
            .await?;
        let record = voter.commit(from, record)?;
        self.commit_here(&inbox, coordinator, &change.key_id, record)
            .await
    }

    /// Keeps this holder's vote for a change of `key_id` in the key's file, in order with
    /// the other policy writes of the key (a vote for a version that is in force already is
    /// not kept).
    async fn keep_vote(&self, key_id: &str, vote: StoredVote) -> Result<(), String> {
        let _write = self.inner.policy.write.lock().await;
        let key = self
            .inner
            .store
            .get(key_id)
            .ok_or_else(|| format!("no key {key_id} here"))?;
        if key.info.policy_version >= vote.version {
            return Err(format!(
                "key {key_id} is at policy version {} already",
                key.info.policy_version
            ));
        }
        self.inner
            .store
            .record_vote(key_id, vote)
            .await
            .map(|_| ())
            .map_err(|e| format!("cannot keep the vote: {e}"))
    }

    /// Applies a commit from `coordinator` (catching up first if this holder is more than
    /// one version behind) and confirms it.
    async fn commit_here(
        &self,
        inbox: &SessionInbox,
        coordinator: PeerId,
        key_id: &str,
        record: PolicyChangeRecord,
    ) -> Result<(), SessionError> {
        let version = record.version;
        let behind = self
            .inner
            .store
            .get(key_id)
            .is_some_and(|k| k.info.policy_version + 1 < version);
        if behind {
            self.catch_up_policy(key_id, coordinator)
                .await
                .map_err(SessionError::failed)?;
        }
        match self.apply_policy_record(key_id, record, "commit").await {
            Ok(_) => {}
            Err(r) => {
                return Err(SessionError::blame(
                    vec![coordinator],
                    format!(
                        "coordinator {coordinator} committed a change this holder refuses: {r}"
                    ),
                ));
            }
        }
        let now_at = self
            .inner
            .store
            .get(key_id)
            .map(|k| k.info.policy_version)
            .unwrap_or_default();
        self.send(
            coordinator,
            inbox.session(),
            Body::PolicyCommitted { version: now_at },
        )
        .await
        .map_err(|e| unreachable_error(vec![(coordinator, e)], "the commit confirmation"))
    }

    /// Answers a commit sent as an invitation (this holder did not prepare it: it refused,
    /// was busy or was down when it was prepared). A record this holder refuses (its
    /// certificate or approvals do not verify here) is refused at once, with the rule.
    pub(super) fn join_policy_commit(
        &self,
        session: SessionId,
        coordinator: PeerId,
        key_id: String,
        record: PolicyChangeRecord,
    ) -> Result<(), InviteRefusal> {
        let key = self.key_shared_with(&key_id, coordinator)?;
        if record.version == key.info.policy_version + 1 {
            let holders = parse_peers(&key.info.participants).map_err(InviteRefusal::Other)?;
            if let Err(refusal) = core::verify_committed(&key.info, &holders, &record) {
                if let Some(suppressed) = crate::log_limit::allow("policy_commit_refused") {
                    warn!(%coordinator, key_id = %crate::log_limit::echo(&key_id), rule = refusal.rule, suppressed, "policy commit refused");
                }
                return Err(InviteRefusal::Policy {
                    peer: self.inner.local,
                    refusal,
                });
            }
        }
        self.spawn_participant(
            Protocol::PolicyChange,
            session,
            vec![coordinator],
            move |engine, inbox| async move {
                engine
                    .commit_here(&inbox, coordinator, &key_id, record)
                    .await
            },
        )
    }

    /// Applies `record` if it is the next change of the policy in force here and its
    /// approvals verify under it. `Ok(false)`: this node is at that version or later already.
    pub(crate) async fn apply_policy_record(
        &self,
        key_id: &str,
        record: PolicyChangeRecord,
        via: &'static str,
    ) -> Result<bool, Refusal> {
        let _write = self.inner.policy.write.lock().await;
        let key = self
            .inner
            .store
            .get(key_id)
            .ok_or_else(|| refuse("internal", format!("no key {key_id} here")))?;
        let ours = key.info.policy_stamp();
        if record.version <= ours.version {
            if record.version == ours.version && record.policy.digest() != ours.digest {
                warn!(%key_id, version = record.version, "a peer holds another policy at the version in force here");
            }
            return Ok(false);
        }
        let holders = parse_peers(&key.info.participants).map_err(|e| refuse("internal", e))?;
        core::verify_committed(&key.info, &holders, &record)?;
        let version = record.version;
        self.inner
            .store
            .apply_policy_change(key_id, record)
            .await
            .map_err(|e| refuse("internal", e.to_string()))?;
        self.inner.policy.settled(key_id, version);
        self.inner
            .metrics
            .policy_changes
            .with_label_values(&[via])
            .inc();
        info!(%key_id, from = ours.version, to = version, via, "signing policy changed");
        Ok(true)
    }

    /// The refusal of a request checked against `theirs`; when `theirs` is newer, this node
    /// starts catching up from `from`.
    pub(crate) fn policy_mismatch(
        &self,
        key_id: &str,
        from: PeerId,
        theirs: PolicyStamp,
        ours: PolicyStamp,
    ) -> Refusal {
        if theirs.version > ours.version {
            self.spawn_policy_catch_up(key_id.to_string(), vec![from]);
        }
        version_mismatch(key_id, theirs, ours)
    }

    /// Catches up from the holders that refused a request with `policy_version_mismatch`
    /// (this coordinator may be the one behind; if it is not, they send nothing).
    pub(crate) fn catch_up_from_refusers(&self, key_id: &str, failures: &[(PeerId, MpcSendError)]) {
        let refusers: Vec<PeerId> = failures
            .iter()
            .filter(|(_, e)| {
                matches!(e, MpcSendError::Refused { rule, .. } if rule == "policy_version_mismatch")
            })
            .map(|(p, _)| *p)
            .collect();
        if !refusers.is_empty() {
            self.spawn_policy_catch_up(key_id.to_string(), refusers);
        }
    }

    /// Catches up key `key_id`'s policy from the first of `peers` that answers, in the
    /// background; one catch-up per key at a time.
    pub(crate) fn spawn_policy_catch_up(&self, key_id: String, peers: Vec<PeerId>) {
        {
            let mut syncing = self
                .inner
                .policy
                .syncing
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !syncing.insert(key_id.clone()) {
                return;
            }
        }
        let engine = self.clone();
        tokio::spawn(
            async move {
                for peer in peers {
                    match engine.catch_up_policy(&key_id, peer).await {
                        Ok(_) => break,
                        Err(e) => debug!(%key_id, %peer, error = %e, "policy catch-up failed"),
                    }
                }
                engine
                    .inner
                    .policy
                    .syncing
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key_id);
            }
            .in_current_span(),
        );
    }

    /// Fetches and applies the committed changes of key `key_id`'s policy that `peer` holds
    /// beyond this node's version. Returns how many were applied.
    pub(crate) async fn catch_up_policy(
        &self,
        key_id: &str,
        peer: PeerId,
    ) -> Result<usize, String> {
        let mut applied = 0;
        for _ in 0..SYNC_ROUNDS {
            let ours = self
                .inner
                .store
                .get(key_id)
                .ok_or_else(|| format!("no key {key_id} here"))?
                .info
                .policy_version;
            let session = SessionId::random();
            let mut inbox = self
                .inner
                .router
                .open(session, Protocol::PolicyChange, [peer])
                .map_err(|e| e.to_string())?;
            let request = Body::PolicySyncRequest {
                key_id: key_id.to_string(),
                after_version: ours,
            };
            let answer = match self.send(peer, session, request).await {
                Ok(()) => inbox
                    .collect(
                        "policy sync records",
                        &[peer],
                        self.inner.round_timeout,
                        |b| match b {
                            Body::PolicySyncRecords { records } => Some(records.clone()),
                            _ => None,
                        },
                    )
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            self.inner.router.close(session);
            let records = answer?.into_values().next().unwrap_or_default();
            if records.is_empty() {
                break;
            }
            let mut progressed = false;
            for record in records {
                let version = record.version;
                match self.apply_policy_record(key_id, record, "catch_up").await {
                    Ok(true) => {
                        applied += 1;
                        progressed = true;
                    }
                    Ok(false) => {}
                    Err(r) => {
                        return Err(format!(
                            "peer {peer} sent a change of key {key_id} to version {version} that does not verify here: {r}"
                        ));
                    }
                }
            }
            if !progressed {
                break;
            }
        }
        if applied > 0 {
            info!(%key_id, %peer, applied, "caught up on the key's signing policy");
        }
        Ok(applied)
    }

    /// Answers a sync request from `peer`, a holder of the key: the next committed changes
    /// after `after_version` that this node keeps.
    pub(super) fn answer_policy_sync(
        &self,
        session: SessionId,
        peer: PeerId,
        key_id: &str,
        after_version: u64,
    ) -> Result<(), InviteRefusal> {
        let key = self.key_shared_with(key_id, peer)?;
        // The first record always goes (a record fits a message: its lists are bounded);
        // more only while the answer stays within half a message (JSON is longer than the
        // CBOR on the wire, so this errs on the safe side).
        let mut records: Vec<PolicyChangeRecord> = Vec::new();
        let mut bytes = 0;
        for r in key
            .policy_changes
            .iter()
            .filter(|r| r.version > after_version)
            .take(SYNC_BATCH)
        {
            bytes += serde_json::to_vec(r)
                .map(|b| b.len())
                .unwrap_or(usize::MAX / 2);
            if !records.is_empty() && bytes as u64 > MAX_MESSAGE_BYTES / 2 {
                break;
            }
            records.push(r.clone());
        }
        if records
            .first()
            .is_some_and(|r| r.version > after_version + 1)
        {
            warn!(%key_id, %peer, after_version, oldest = records[0].version, "a holder asks for policy changes older than this node keeps");
        }
        let engine = self.clone();
        tokio::spawn(
            async move {
                if let Err(e) = engine
                    .send(peer, session, Body::PolicySyncRecords { records })
                    .await
                {
                    debug!(%peer, error = %e, "cannot answer a policy sync request");
                }
            }
            .in_current_span(),
        );
        Ok(())
    }

    /// Catches up every key's policy from its other holders, once, in the background: a
    /// holder that was down while a change was committed learns of it before anyone asks.
    pub fn catch_up_policies_at_start(&self, delay: Duration) {
        if self.inner.faults.no_policy_catch_up_at_start {
            warn!("test fault: no policy catch-up at start");
            return;
        }
        let engine = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let local = engine.inner.local;
            for key in engine.keys() {
                if key.policy.legacy {
                    continue;
                }
                let Ok(holders) = parse_peers(&key.participants) else {
                    continue;
                };
                for peer in holders.into_iter().filter(|p| *p != local) {
                    match engine.catch_up_policy(&key.key_id, peer).await {
                        Ok(_) => break,
                        Err(e) => {
                            debug!(key_id = %key.key_id, %peer, error = %e, "policy catch-up at start failed")
                        }
                    }
                }
            }
        });
    }
}

/// Waits up to `timeout` for `from` to confirm the commit of `version`; returns who did.
async fn await_committed(
    inbox: &mut SessionInbox,
    from: &[PeerId],
    version: u64,
    timeout: Duration,
) -> Vec<PeerId> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut confirmed = Vec::new();
    let mut pending: Vec<PeerId> = from.to_vec();
    while !pending.is_empty() {
        match inbox
            .next_of("policy committed", &pending, deadline, |b| match b {
                Body::PolicyCommitted { version } => Some(*version),
                _ => None,
            })
            .await
        {
            Ok((peer, at)) => {
                pending.retain(|p| *p != peer);
                if at >= version {
                    confirmed.push(peer);
                }
            }
            Err(_) => break,
        }
    }
    confirmed
}
