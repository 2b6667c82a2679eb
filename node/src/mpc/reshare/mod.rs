//! Key refresh and resharing: a key's holders move it to a new holder set (or refresh their
//! shares in place) under the same group key and threshold, as a new *generation* of the
//! key. The rounds and every check of what arrives are in [`core`]; this module is the driver
//! (invitations, admission, sends, deadlines, storage).
//!
//! Who may ask is the key's policy ([`ReshareRule`]): K approvals of its change approvers,
//! signed under a domain of their own over the key id, the generation made and the new holder
//! set; or, for a `roster` key, any request that moves it to exactly the cluster roster's
//! members. Every old and every joining holder checks this itself, and every holder checks
//! that all participants are roster members.
//!
//! The new generation replaces the old one in two steps. After the confirmation round, each
//! new holder *stages* its new share on disk and tells every other participant so
//! (`ReshareStored`). A participant that heard it from every new holder activates the new
//! generation (a dropped holder deletes its share). Until then the old generation stays active
//! everywhere, and signing names the generation it uses (a holder with another one refuses
//! with `generation_mismatch`), so the holders never mix shares of two generations. A holder
//! that misses some `ReshareStored` (a peer died, or itself restarted) keeps the staged
//! generation and asks the new holders later, at start and when a coordinator signs with the
//! newer generation: once every new holder has it staged or active, it activates it too.

pub mod core;

use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;

use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{Instrument, debug, info, warn};

use self::core::{ReshareOutput, ReshareSpec};
use super::admission::PendingAdmission;
use super::policy::{Authorization, Refusal, ReshareRule, SigningPolicy};
use super::scheme::{Scheme, Share, Suite};
use super::session::{SessionError, SessionInbox, join_peers};
use super::store::{KeyInfo, ReshareRecord, StoredKey};
use super::wire::{Blob, Body, Protocol, SessionId};
use super::{InviteRefusal, MpcEngine, MpcError, parse_peers};

/// What a joining holder stores of a key besides its share, as the inviting holder has it;
/// its digest is part of what every old holder names in round 1, so a joining holder stores
/// what the holders hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyMetadata {
    pub public_key: String,
    #[serde(default)]
    pub internal_key: Option<String>,
    pub policy: SigningPolicy,
    pub policy_version: u64,
    #[serde(default)]
    pub created_by: Option<String>,
    pub created_at: u64,
}

impl KeyMetadata {
    fn of(info: &KeyInfo) -> Self {
        Self {
            public_key: info.public_key.clone(),
            internal_key: info.internal_key.clone(),
            policy: info.policy.clone(),
            policy_version: info.policy_version,
            created_by: info.created_by.clone(),
            created_at: info.created_at,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("key metadata serializes")
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let m: Self =
            serde_json::from_slice(bytes).map_err(|e| format!("malformed key metadata: {e}"))?;
        if m.policy.normalized().as_ref() != Ok(&m.policy) {
            return Err("the key's signing policy is not in canonical form".into());
        }
        Ok(m)
    }

    fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.to_bytes()).into()
    }
}

/// How often, and how many times, a node asks about its staged generations after a start.
const STAGED_RETRY: std::time::Duration = std::time::Duration::from_secs(2);
const STAGED_ATTEMPTS: usize = 150;

/// Keys with a reshare running here, and keys whose staged generation is being resolved.
#[derive(Default)]
pub(crate) struct ReshareState {
    running: Mutex<HashSet<String>>,
    resolving: Mutex<HashSet<String>>,
}

/// Marks a key busy in one of [`ReshareState`]'s sets while it lives.
struct Busy<'a> {
    set: &'a Mutex<HashSet<String>>,
    key_id: String,
}

impl<'a> Busy<'a> {
    fn take(set: &'a Mutex<HashSet<String>>, key_id: &str) -> Option<Self> {
        set.lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key_id.to_string())
            .then(|| Self {
                set,
                key_id: key_id.to_string(),
            })
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key_id);
    }
}

/// The parameters every participant of one reshare agrees on.
struct ReshareParams {
    key_id: String,
    coordinator: PeerId,
    scheme: Scheme,
    threshold: u16,
    generation: u64,
    old: Vec<PeerId>,
    new: Vec<PeerId>,
    metadata: KeyMetadata,
}

impl ReshareParams {
    fn spec(&self) -> ReshareSpec {
        ReshareSpec {
            key_id: self.key_id.clone(),
            scheme: self.scheme,
            threshold: self.threshold,
            old: self.old.clone(),
            new: self.new.clone(),
            generation: self.generation,
            metadata_digest: self.metadata.digest(),
        }
    }
}

/// A holder set from a request: unique, sorted.
fn holder_set(peers: &[PeerId]) -> Result<Vec<PeerId>, String> {
    let mut set = BTreeSet::new();
    for p in peers {
        if !set.insert(*p) {
            return Err(format!("holder {p} is listed twice"));
        }
    }
    Ok(set.into_iter().collect())
}

/// A holder set from an invitation: must already be sorted and unique.
fn canonical_set(list: &[String], what: &str) -> Result<Vec<PeerId>, String> {
    let peers = parse_peers(list)?;
    if !peers.windows(2).all(|w| w[0] < w[1]) {
        return Err(format!("the {what} are not sorted and unique"));
    }
    Ok(peers)
}

impl MpcEngine {
    /// Checks who may move `key_id` (policy `policy`) to `new` as generation `generation`:
    /// the key's reshare rule, and every new holder a roster member.
    fn check_reshare(
        &self,
        key_id: &str,
        policy: &SigningPolicy,
        generation: u64,
        new: &[PeerId],
        authorizations: &[Authorization],
    ) -> Result<PendingAdmission, Refusal> {
        match policy.reshare_rule() {
            ReshareRule::Roster => {
                let Some(mut members) = self.inner.roster.members() else {
                    return Err(super::policy::refuse(
                        "reshare_not_roster",
                        format!(
                            "key {key_id} moves only to the cluster roster's members, and this node has no roster"
                        ),
                    ));
                };
                members.sort();
                if members != new {
                    return Err(super::policy::refuse(
                        "reshare_not_roster",
                        format!(
                            "key {key_id} moves only to exactly the cluster roster's members ({}), not to {}",
                            join_peers(&members),
                            join_peers(new)
                        ),
                    ));
                }
                Ok(PendingAdmission::none())
            }
            ReshareRule::Approvals => self
                .inner
                .replay_guard
                .admit_reshare(
                    policy,
                    key_id,
                    generation,
                    super::policy::holders_digest(new),
                    authorizations,
                    super::policy::now(),
                )
                .map(PendingAdmission::of),
        }
    }

    /// Coordinates a reshare of `key_id` to `holders` (a refresh when `None`: the current
    /// holders). Returns the key's metadata at the new generation.
    pub async fn reshare_key(
        &self,
        key_id: &str,
        holders: Option<Vec<PeerId>>,
        authorizations: Vec<Authorization>,
    ) -> Result<KeyInfo, MpcError> {
        let local = self.inner.local;
        let key = self
            .inner
            .store
            .get(key_id)
            .ok_or_else(|| MpcError::UnknownKey(key_id.to_string()))?;
        let info = &key.info;
        let old = holder_set(&parse_peers(&info.participants).map_err(MpcError::Internal)?)
            .map_err(MpcError::Internal)?;
        let new = match holders {
            None => old.clone(),
            Some(list) => holder_set(&list).map_err(MpcError::BadRequest)?,
        };
        let params = ReshareParams {
            key_id: key_id.to_string(),
            coordinator: local,
            scheme: info.scheme,
            threshold: info.threshold,
            generation: info.generation + 1,
            old,
            new,
            metadata: KeyMetadata::of(info),
        };
        let spec = params.spec();
        spec.check().map_err(MpcError::BadRequest)?;
        self.inner
            .roster
            .check_all(&params.new)
            .map_err(|m| MpcError::BadRequest(format!("holders {m}")))?;
        let admission = self.check_reshare(
            key_id,
            &info.policy,
            params.generation,
            &params.new,
            &authorizations,
        )?;
        let participants = spec.participants();
        let unconnected = self
            .unconnected(&participants)
            .await
            .map_err(|e| MpcError::Internal(e.to_string()))?;
        if let Some(message) = unconnected {
            return Err(MpcError::BadRequest(message));
        }
        let _busy = Busy::take(&self.inner.reshare.running, key_id).ok_or_else(|| {
            MpcError::Conflict(format!("a reshare of key {key_id} is running on this node"))
        })?;
        let _admitted = admission.persist().await?;
        let session = SessionId::random();
        let others: Vec<PeerId> = participants
            .iter()
            .filter(|p| **p != local)
            .copied()
            .collect();
        let mut inbox = self
            .inner
            .router
            .open(session, Protocol::Reshare, others.clone())
            .map_err(|error| MpcError::Session { session, error })?;
        let invite = Body::ReshareInvite {
            key_id: key_id.to_string(),
            scheme: params.scheme,
            threshold: params.threshold,
            generation: params.generation,
            old: params.old.iter().map(ToString::to_string).collect(),
            new: params.new.iter().map(ToString::to_string).collect(),
            metadata: Blob(params.metadata.to_bytes().into()),
            authorizations,
        };
        let engine = self.clone();
        let others2 = others.clone();
        let run = async move {
            engine
                .broadcast_round(&mut inbox, &others2, &invite, "the reshare invitation")
                .await?;
            engine.run_reshare(inbox, params).await
        };
        self.run_session(Protocol::Reshare, "coordinator", session, others, run)
            .await
            .map_err(|error| MpcError::Session { session, error })
    }

    /// Answers a reshare invitation: checks it (as a current holder against its own copy of
    /// the key, as a joining holder against what the invitation says) and runs the reshare
    /// in its own task.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn join_reshare(
        &self,
        session: SessionId,
        from: PeerId,
        key_id: String,
        scheme: Scheme,
        threshold: u16,
        generation: u64,
        old: Vec<String>,
        new: Vec<String>,
        metadata: Blob,
        authorizations: Vec<Authorization>,
    ) -> Result<(), InviteRefusal> {
        let other = InviteRefusal::Other;
        let local = self.inner.local;
        let old = canonical_set(&old, "current holders").map_err(other)?;
        let new = canonical_set(&new, "new holders").map_err(other)?;
        let metadata = KeyMetadata::from_bytes(&metadata.0).map_err(other)?;
        if !old.contains(&from) {
            return Err(other(format!(
                "peer {from} invites to a reshare of key {key_id} but is not one of its current holders"
            )));
        }
        let params = ReshareParams {
            key_id: key_id.clone(),
            coordinator: from,
            scheme,
            threshold,
            generation,
            old,
            new,
            metadata,
        };
        let spec = params.spec();
        spec.check().map_err(other)?;
        let participants = spec.participants();
        if !participants.contains(&local) {
            return Err(other(format!(
                "this node ({local}) takes no part in the reshare of key {key_id}"
            )));
        }
        self.inner
            .roster
            .check_all(&participants)
            .map_err(|m| other(format!("participants {m}")))?;
        let policy = if params.old.contains(&local) {
            let key = self.key_shared_with(&key_id, from).map_err(other)?;
            let info = &key.info;
            if info.generation + 1 != generation {
                return Err(InviteRefusal::Policy {
                    peer: local,
                    refusal: super::policy::refuse(
                        "generation_mismatch",
                        format!(
                            "peer {from} makes generation {generation} of key {key_id}, but generation {} is active here",
                            info.generation
                        ),
                    ),
                });
            }
            let ours =
                holder_set(&parse_peers(&info.participants).map_err(other)?).map_err(other)?;
            if ours != params.old
                || info.threshold != threshold
                || info.scheme != scheme
                || KeyMetadata::of(info) != params.metadata
            {
                return Err(other(format!(
                    "peer {from} describes key {key_id} (holders, threshold, scheme, policy or group key) otherwise than this holder has it"
                )));
            }
            info.policy.clone()
        } else {
            if self.inner.store.contains(&key_id) {
                return Err(other(format!(
                    "this node holds key {key_id} already but is not named a current holder"
                )));
            }
            params.metadata.policy.clone()
        };
        let admission = self
            .check_reshare(&key_id, &policy, generation, &params.new, &authorizations)
            .map_err(|refusal| {
                if let Some(suppressed) = crate::log_limit::allow("reshare_refused") {
                    warn!(%from, key_id = %crate::log_limit::echo(&key_id), rule = refusal.rule, suppressed, "reshare refused by the key's policy");
                }
                InviteRefusal::Policy {
                    peer: local,
                    refusal,
                }
            })?;
        let others: Vec<PeerId> = participants
            .iter()
            .filter(|p| **p != local)
            .copied()
            .collect();
        if self
            .inner
            .reshare
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&key_id)
        {
            return Err(other(format!(
                "a reshare of key {key_id} is running on this node"
            )));
        }
        self.spawn_participant(
            Protocol::Reshare,
            session,
            others,
            move |engine, inbox| async move {
                let _busy =
                    Busy::take(&engine.inner.reshare.running, &key_id).ok_or_else(|| {
                        SessionError::failed(format!(
                            "a reshare of key {key_id} is running on this node"
                        ))
                    })?;
                let _admitted = admission
                    .persist()
                    .await
                    .map_err(|r| SessionError::failed(format!("peer {local}: {r}")))?;
                engine.run_reshare(inbox, params).await.map(|_| ())
            },
        )
    }

    /// Runs this node's part with its share of the current generation, if it holds one.
    async fn run_reshare(
        &self,
        inbox: SessionInbox,
        params: ReshareParams,
    ) -> Result<KeyInfo, SessionError> {
        let key = self
            .inner
            .store
            .get(&params.key_id)
            .filter(|_| params.old.contains(&self.inner.local));
        match key {
            Some(key) => {
                crate::with_share!(&key.share, share => self.reshare_rounds(inbox, params, Some(share.clone()), Some(key.clone())).await)
            }
            None => {
                crate::with_suite!(params.scheme, C => self.reshare_rounds::<C>(inbox, params, None, None).await)
            }
        }
    }

    async fn reshare_rounds<C: Suite>(
        &self,
        mut inbox: SessionInbox,
        params: ReshareParams,
        share: Option<Share<C>>,
        current: Option<std::sync::Arc<StoredKey>>,
    ) -> Result<KeyInfo, SessionError> {
        let local = self.inner.local;
        let timeout = self.inner.round_timeout;
        let key_id = params.key_id.clone();
        let spec = params.spec();
        info!(%key_id, coordinator = %params.coordinator, generation = params.generation, old = params.old.len(), new = params.new.len(), "reshare started");
        // A generation staged by an earlier reshare that never completed is replaced.
        if self.inner.store.staged(&key_id).is_some() {
            self.inner
                .store
                .discard_staged(&key_id)
                .await
                .map_err(|e| {
                    SessionError::failed(format!("cannot remove an earlier staged generation: {e}"))
                })?;
        }

        let (mut round1, outgoing) = core::Round1::<C>::start(spec.clone(), local, share)?;
        let others = round1.others();
        let messages = outgoing
            .into_iter()
            .map(|(peer, m)| (peer, Body::ReshareRound1(m)))
            .collect();
        self.send_round(&mut inbox, messages, "reshare round 1")
            .await?;
        inbox
            .collect_each(
                "reshare round 1",
                &others,
                timeout,
                |b| match b {
                    Body::ReshareRound1(m) => Some(m.clone()),
                    _ => None,
                },
                |from, m| round1.receive(from, m),
            )
            .await?;

        let (mut round2, outgoing) = round1.round2()?;
        let messages = outgoing
            .into_iter()
            .map(|(peer, m)| (peer, Body::ReshareRound2(m)))
            .collect();
        self.send_round(&mut inbox, messages, "reshare round 2")
            .await?;
        inbox
            .collect_each(
                "reshare round 2",
                &others,
                timeout,
                |b| match b {
                    Body::ReshareRound2(m) => Some(m.clone()),
                    _ => None,
                },
                |from, m| round2.receive(from, m),
            )
            .await?;

        let (mut confirming, mine) = round2.confirm()?;
        if let Some(digest) = mine {
            let body = Body::ReshareConfirm { digest };
            self.broadcast_round(&mut inbox, &others, &body, "the reshare confirmation")
                .await?;
        }
        let new_others: Vec<PeerId> = params
            .new
            .iter()
            .filter(|p| **p != local)
            .copied()
            .collect();
        inbox
            .collect_each(
                "reshare confirmation",
                &new_others,
                timeout,
                |b| match b {
                    Body::ReshareConfirm { digest } => Some(*digest),
                    _ => None,
                },
                |from, digest| confirming.receive(from, digest),
            )
            .await?;
        let output = confirming.finish()?;

        let participants: Vec<String> = spec
            .participants()
            .iter()
            .map(ToString::to_string)
            .collect();
        let metadata = &params.metadata;
        let info = KeyInfo {
            key_id: key_id.clone(),
            scheme: params.scheme,
            public_key: metadata.public_key.clone(),
            internal_key: metadata.internal_key.clone(),
            threshold: params.threshold,
            participants: params.new.iter().map(ToString::to_string).collect(),
            status: "active".into(),
            created_by: metadata.created_by.clone(),
            created_at: metadata.created_at,
            policy: metadata.policy.clone(),
            policy_version: metadata.policy_version,
            generation: params.generation,
        };
        let digest = match output {
            ReshareOutput::Holder { share, digest } => {
                let group = share.group_key().map_err(SessionError::failed)?;
                if hex::encode(&group) != metadata.public_key {
                    return Err(SessionError::failed(format!(
                        "the new shares are of another group key than key {key_id}'s"
                    )));
                }
                let key = StoredKey {
                    info: info.clone(),
                    share: C::wrap(share),
                    policy_changes: current
                        .as_ref()
                        .map(|k| k.policy_changes.clone())
                        .unwrap_or_default(),
                    vote: None,
                    reshare: Some(ReshareRecord {
                        digest: hex::encode(digest),
                        participants,
                    }),
                };
                if self.inner.faults.crash_before_reshare_stage {
                    warn!(%key_id, "test fault: exiting before staging the new generation");
                    std::process::exit(9);
                }
                self.inner.store.stage(key).await.map_err(|e| {
                    SessionError::failed(format!("cannot stage the new share: {e}"))
                })?;
                if self.inner.faults.crash_after_reshare_stage {
                    warn!(%key_id, "test fault: exiting after staging the new generation");
                    std::process::exit(9);
                }
                let body = Body::ReshareStored { digest };
                // Best effort: a participant that misses it asks later.
                let _ = self
                    .broadcast_round(&mut inbox, &others, &body, "the reshare storage notice")
                    .await;
                digest
            }
            ReshareOutput::Retired { digest } => digest,
        };

        let stored = inbox
            .collect("reshare stored", &new_others, 2 * timeout, |b| match b {
                Body::ReshareStored { digest: d } if *d == digest => Some(()),
                _ => None,
            })
            .await;
        if let Err(e) = stored {
            warn!(%key_id, generation = params.generation, error = %e, "not every new holder said it staged its share: the current generation stays active here until they do");
            if params.new.contains(&local) {
                self.keep_resolving(Some(key_id.clone()));
            }
            return Err(SessionError::failed(format!(
                "generation {} of key {key_id} is confirmed but not every new holder said it stored its share in time; generation {} stays active until they do ({e})",
                params.generation,
                params.generation - 1
            )));
        }
        let _write = self.inner.policy.key_writes().await;
        if params.new.contains(&local) {
            self.inner
                .store
                .promote_staged(&key_id)
                .await
                .map_err(|e| SessionError::failed(format!("cannot activate the new share: {e}")))?;
            info!(%key_id, generation = params.generation, holders = params.new.len(), "reshare completed; the new generation is active");
        } else {
            self.inner
                .store
                .retire(&key_id)
                .await
                .map_err(|e| SessionError::failed(format!("cannot remove the old share: {e}")))?;
            info!(%key_id, generation = params.generation, "reshare completed; this node is no longer a holder and removed its share");
        }
        super::count_keys(&self.inner.store, &self.inner.metrics);
        Ok(info)
    }

    /// Resolves the staged generation of `key_id` in the background (once at a time): asks
    /// every other new holder whether it has it staged or active, and activates it when all
    /// do. Never discards it: only a later reshare of the active generation replaces it.
    pub(crate) fn spawn_staged_resolution(&self, key_id: &str) {
        if self.inner.store.staged(key_id).is_none() {
            return;
        }
        let engine = self.clone();
        let key_id = key_id.to_string();
        tokio::spawn(
            async move {
                let Some(_busy) = Busy::take(&engine.inner.reshare.resolving, &key_id) else {
                    return;
                };
                match engine.resolve_staged(&key_id).await {
                    Ok(true) => {}
                    Ok(false) => debug!(%key_id, "the staged generation stays staged"),
                    Err(e) => debug!(%key_id, error = %e, "cannot resolve the staged generation"),
                }
            }
            .in_current_span(),
        );
    }

    /// At start, in the background: tries to resolve every staged generation (a reshare
    /// that had not finished when the node stopped) every few seconds, for a few minutes,
    /// while the other holders come back. Later, a coordinator that signs with the newer
    /// generation starts a resolution too.
    pub fn resolve_staged_at_start(&self) {
        let staged = self.inner.store.all_staged();
        if staged.is_empty() {
            return;
        }
        info!(
            keys = staged.len(),
            "staged generations found at start; asking their holders whether to activate them"
        );
        self.keep_resolving(None);
    }

    /// Asks about the staged generation of `only` (every key's, when `None`) every few
    /// seconds for a few minutes, in the background, until none is left.
    fn keep_resolving(&self, only: Option<String>) {
        let engine = self.clone();
        tokio::spawn(
            async move {
                for _ in 0..STAGED_ATTEMPTS {
                    tokio::time::sleep(STAGED_RETRY).await;
                    let staged: Vec<String> = engine
                        .inner
                        .store
                        .all_staged()
                        .into_iter()
                        .map(|k| k.info.key_id.clone())
                        .filter(|k| only.as_ref().is_none_or(|o| o == k))
                        .collect();
                    if staged.is_empty() {
                        return;
                    }
                    for key_id in staged {
                        engine.spawn_staged_resolution(&key_id);
                    }
                }
            }
            .in_current_span(),
        );
    }

    async fn resolve_staged(&self, key_id: &str) -> Result<bool, String> {
        let Some(staged) = self.inner.store.staged(key_id) else {
            return Ok(false);
        };
        let record = staged
            .reshare
            .clone()
            .ok_or("a staged generation without its reshare record")?;
        let digest: [u8; 32] = hex::decode(&record.digest)
            .ok()
            .and_then(|d| d.try_into().ok())
            .ok_or("a staged generation with a malformed digest")?;
        let holders = parse_peers(&staged.info.participants)?;
        let local = self.inner.local;
        for peer in holders.iter().filter(|p| **p != local) {
            let session = SessionId::random();
            let mut inbox = self
                .inner
                .router
                .open(session, Protocol::Reshare, [*peer])
                .map_err(|e| e.to_string())?;
            let request = Body::ReshareStatusRequest {
                key_id: key_id.to_string(),
                generation: staged.info.generation,
                digest,
            };
            let answer = match self.send(*peer, session, request).await {
                Ok(()) => inbox
                    .collect(
                        "reshare status",
                        &[*peer],
                        self.inner.round_timeout,
                        |b| match b {
                            Body::ReshareStatus { stored } => Some(*stored),
                            _ => None,
                        },
                    )
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            self.inner.router.close(session);
            if answer?.into_values().next() != Some(true) {
                return Ok(false);
            }
        }
        let _write = self.inner.policy.key_writes().await;
        // Still the same staged generation (a reshare may have replaced it meanwhile).
        if self
            .inner
            .store
            .staged(key_id)
            .is_none_or(|s| s.reshare.as_ref() != Some(&record))
        {
            return Ok(false);
        }
        self.inner
            .store
            .promote_staged(key_id)
            .await
            .map_err(|e| e.to_string())?;
        super::count_keys(&self.inner.store, &self.inner.metrics);
        info!(%key_id, generation = staged.info.generation, "every new holder has the staged generation; it is active now");
        Ok(true)
    }

    /// Answers a new holder that asks whether this node has generation `generation` of
    /// `key_id` (confirmed by `digest`) staged or active. Only the holders of that
    /// generation may ask.
    pub(super) fn answer_reshare_status(
        &self,
        session: SessionId,
        peer: PeerId,
        key_id: &str,
        generation: u64,
        digest: [u8; 32],
    ) -> Result<(), InviteRefusal> {
        let store = &self.inner.store;
        let candidates = [store.get(key_id), store.staged(key_id)];
        let matching = |k: &StoredKey| {
            k.info.generation == generation
                && k.reshare.as_ref().map(|r| r.digest.as_str())
                    == Some(hex::encode(digest).as_str())
        };
        let named = candidates
            .iter()
            .flatten()
            .any(|k| k.info.participants.contains(&peer.to_string()));
        if !named {
            return Err(InviteRefusal::Other(format!(
                "peer {peer} holds no generation of key {key_id} here"
            )));
        }
        let stored = candidates.iter().flatten().any(|k| matching(k));
        let engine = self.clone();
        tokio::spawn(
            async move {
                if let Err(e) = engine
                    .send(peer, session, Body::ReshareStatus { stored })
                    .await
                {
                    debug!(%peer, error = %e, "cannot answer a reshare status request");
                }
            }
            .in_current_span(),
        );
        Ok(())
    }
}
