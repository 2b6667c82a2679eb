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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{Instrument, debug, info, warn};

use self::core::{ReshareOutput, ReshareSpec};
use super::admission::PendingAdmission;
use super::policy::{Authorization, NodeSignature, Refusal, ReshareRule, SigningPolicy};
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

/// Domain of a new holder's signed notice that it staged its share of a generation.
const STORED_DOMAIN: &[u8] = b"p2p-mpc reshare stored v2\0";
/// Domain of a new holder's signed statement that it never staged (and never will stage)
/// its share of a generation.
const ABORT_DOMAIN: &[u8] = b"p2p-mpc reshare abort v1\0";

/// How often, and how many times, a node asks about its staged generations after a start.
const STAGED_RETRY: std::time::Duration = std::time::Duration::from_secs(2);
const STAGED_ATTEMPTS: usize = 150;

/// What a current holder invites every other participant of a reshare to (`ReshareInvite`):
/// move key `key_id` from the holders `old` (generation `generation - 1`) to `new`, as
/// generation `generation`, under the same group key and threshold (a refresh when `new` is
/// `old`). Carries what a joining holder stores of the key; round 1 binds it.
#[derive(Clone, Serialize, Deserialize)]
pub struct ReshareInvitation {
    pub key_id: String,
    pub scheme: Scheme,
    pub threshold: u16,
    pub generation: u64,
    #[serde(deserialize_with = "super::wire::peer_list")]
    pub old: Vec<String>,
    #[serde(deserialize_with = "super::wire::peer_list")]
    pub new: Vec<String>,
    /// The key's metadata as the inviting holder has it ([`KeyMetadata`]).
    pub metadata: Blob,
    /// Client approvals, for a key whose policy asks for them.
    #[serde(default, deserialize_with = "super::wire::peer_list")]
    pub authorizations: Vec<Authorization>,
}

/// Keys with a reshare running here, and keys whose staged generation is being resolved.
#[derive(Default)]
pub(crate) struct ReshareState {
    /// The session of the reshare each key has running here.
    running: Mutex<HashMap<String, SessionId>>,
    resolving: Mutex<HashSet<String>>,
}

/// Marks a key's reshare running here (in `session`) while it lives.
struct Running<'a> {
    map: &'a Mutex<HashMap<String, SessionId>>,
    key_id: String,
}

impl<'a> Running<'a> {
    fn take(state: &'a ReshareState, key_id: &str, session: SessionId) -> Option<Self> {
        let mut map = state.running.lock().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(key_id) {
            return None;
        }
        map.insert(key_id.to_string(), session);
        Some(Self {
            map: &state.running,
            key_id: key_id.to_string(),
        })
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key_id);
    }
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

/// Why `key` cannot be reshared now: a change of its policy was voted for here and the vote
/// still lives (the change may yet be committed, and the holders that join would not get it).
fn voting(key: &StoredKey) -> Option<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    key.vote.filter(|v| v.until_ms > now).map(|v| {
        format!(
            "a change of the policy of key {} to version {} was voted for here and may still be committed; reshare once it is done",
            key.info.key_id, v.version
        )
    })
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
pub(super) fn canonical_set(list: &[String], what: &str) -> Result<Vec<PeerId>, String> {
    let peers = parse_peers(list)?;
    if !peers.windows(2).all(|w| w[0] < w[1]) {
        return Err(format!("the {what} are not sorted and unique"));
    }
    Ok(peers)
}

impl MpcEngine {
    /// Whether a reshare of `key_id` runs here or its new generation is staged.
    pub(crate) fn reshare_in_progress(&self, key_id: &str) -> bool {
        self.inner.store.staged(key_id).is_some()
            || self
                .inner
                .reshare
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(key_id)
    }

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
        if let Some(why) = voting(&key) {
            return Err(MpcError::Conflict(why));
        }
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
            generation: info.generation.checked_add(1).ok_or_else(|| {
                MpcError::BadRequest(format!("key {key_id} has no generation after this one"))
            })?,
            old,
            new,
            metadata: KeyMetadata::of(info),
        };
        let spec = params.spec();
        spec.check().map_err(MpcError::BadRequest)?;
        let participants = spec.participants();
        if !participants.contains(&local) {
            return Err(MpcError::BadRequest(format!(
                "this node ({local}) is dropped by this reshare and not needed to repair shares: send the request to one of the new holders"
            )));
        }
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
        let unconnected = self
            .unconnected(&participants)
            .await
            .map_err(|e| MpcError::Internal(e.to_string()))?;
        if let Some(message) = unconnected {
            return Err(MpcError::BadRequest(message));
        }
        let session = SessionId::random();
        let _running = Running::take(&self.inner.reshare, key_id, session).ok_or_else(|| {
            MpcError::Conflict(format!("a reshare of key {key_id} is running on this node"))
        })?;
        let _admitted = admission.persist().await?;
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
        let invite = Body::ReshareInvite(ReshareInvitation {
            key_id: key_id.to_string(),
            scheme: params.scheme,
            threshold: params.threshold,
            generation: params.generation,
            old: params.old.iter().map(ToString::to_string).collect(),
            new: params.new.iter().map(ToString::to_string).collect(),
            metadata: Blob(params.metadata.to_bytes().into()),
            authorizations,
        });
        let engine = self.clone();
        let others2 = others.clone();
        let run = async move {
            engine
                .broadcast_round(&mut inbox, &others2, &invite, "the reshare invitation")
                .await?;
            engine.run_reshare(inbox, params).await
        };
        let absent: Vec<PeerId> = spec
            .dropped()
            .into_iter()
            .filter(|p| !participants.contains(p))
            .collect();
        let (info, digest) = self
            .run_session(Protocol::Reshare, "coordinator", session, others, run)
            .await
            .map_err(|error| MpcError::Session { session, error })?;
        self.notify_dropped(&info, digest, absent);
        Ok(info)
    }

    /// Answers a reshare invitation: checks it (as a current holder against its own copy of
    /// the key, as a joining holder against what the invitation says) and runs the reshare
    /// in its own task.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn join_reshare(
        &self,
        session: SessionId,
        from: PeerId,
        invitation: ReshareInvitation,
    ) -> Result<(), InviteRefusal> {
        let ReshareInvitation {
            key_id,
            scheme,
            threshold,
            generation,
            old,
            new,
            metadata,
            authorizations,
        } = invitation;
        let other = InviteRefusal::Other;
        let local = self.inner.local;
        if key_id.len() != 32 || !key_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(other(format!(
                "`{}` is not a valid key id",
                crate::log_limit::echo(&key_id)
            )));
        }
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
            if let Some(why) = voting(&key) {
                return Err(other(why));
            }
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
            // A share of an older generation (this node was dropped before and missed the
            // notice) is replaced; one of the current generation means the inviter and this
            // node disagree on who holds the key.
            if let Some(held) = self.inner.store.get(&key_id)
                && held.info.generation + 1 >= generation
            {
                return Err(other(format!(
                    "this node holds generation {} of key {key_id} but is not named a current holder",
                    held.info.generation
                )));
            }
            // A joining holder counts the key against its creator's cap, as a DKG would;
            // the creator must be a roster member (with a roster), so that naming made-up
            // creators does not lift the cap.
            let creator: PeerId = params
                .metadata
                .created_by
                .as_deref()
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| other(format!("key {key_id} names no creator")))?;
            if !self.inner.roster.admits(&creator) {
                return Err(other(format!(
                    "key {key_id} was created by {creator}, who is not in this node's roster"
                )));
            }
            self.check_key_cap(&creator).map_err(other)?;
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
        let spec_participants = participants.clone();
        if self
            .inner
            .reshare
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&key_id)
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
                let _running =
                    Running::take(&engine.inner.reshare, &key_id, session).ok_or_else(|| {
                        SessionError::failed(format!(
                            "a reshare of key {key_id} is running on this node"
                        ))
                    })?;
                let _admitted = admission
                    .persist()
                    .await
                    .map_err(|r| SessionError::failed(format!("peer {local}: {r}")))?;
                let dropped = params.old.iter().filter(|p| !params.new.contains(p));
                let absent: Vec<PeerId> = dropped
                    .filter(|p| !spec_participants.contains(p))
                    .copied()
                    .collect();
                let coordinator = params.coordinator;
                let (info, digest) = engine.run_reshare(inbox, params).await?;
                // The coordinator tells the dropped holders that took no part; should it
                // fail to, the first new holder does.
                if info.participants.first() == Some(&local.to_string()) && coordinator != local {
                    engine.notify_dropped(&info, digest, absent);
                }
                Ok(())
            },
        )
    }

    /// Runs this node's part with its share of the current generation, if it holds one.
    async fn run_reshare(
        &self,
        inbox: SessionInbox,
        params: ReshareParams,
    ) -> Result<(KeyInfo, [u8; 32]), SessionError> {
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
    ) -> Result<(KeyInfo, [u8; 32]), SessionError> {
        let local = self.inner.local;
        let timeout = self.inner.round_timeout;
        let key_id = params.key_id.clone();
        let spec = params.spec();
        info!(%key_id, coordinator = %params.coordinator, generation = params.generation, old = params.old.len(), new = params.new.len(), "reshare started");
        // A generation staged by an earlier reshare is settled first: activated (then this
        // reshare is of an older generation and ends) or discarded when it can never be
        // activated. Undecided, it stays until this reshare stages its own generation in its
        // place, which needs every old participant to agree on the current generation first
        // (so one holder that keeps a staged generation undecided cannot block reshares).
        if self.inner.store.staged(&key_id).is_some()
            && let Ok(Resolution::Activate(_)) = self.resolve_staged(&key_id).await
        {
            return Err(SessionError::failed(format!(
                "a staged generation of key {key_id} was activated here first; retry with the new generation"
            )));
        }
        // An undecided staged generation is replaced only by a reshare that every one of its
        // holders takes part in: one that activated it would refuse this reshare, instead of
        // being left alone on it.
        if let Some(staged) = self.inner.store.staged(&key_id) {
            let participants = spec.participants();
            let outside: Vec<String> = staged
                .info
                .participants
                .iter()
                .filter(|h| !participants.iter().any(|p| p.to_string() == **h))
                .cloned()
                .collect();
            if !outside.is_empty() {
                return Err(SessionError::failed(format!(
                    "generation {} of key {key_id} is staged here and undecided, and its holders {} take no part in this reshare; settle it first (a refresh of the same holders replaces it)",
                    staged.info.generation,
                    outside.join(", ")
                )));
            }
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

        let (mut confirming, mine) = round1.confirm()?;
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
            generated_at: super::store::unix_now(),
        };
        let digest = match &output {
            ReshareOutput::Holder { digest, .. } | ReshareOutput::Retired { digest } => *digest,
        };
        let made = Made {
            key_id: key_id.clone(),
            generation: params.generation,
            digest,
            holders: params.new.clone(),
        };
        let digest = match output {
            ReshareOutput::Holder { share, digest } => {
                let group = share.group_key().map_err(SessionError::failed)?;
                if hex::encode(&group) != metadata.public_key {
                    return Err(SessionError::failed(format!(
                        "the new shares are of another group key than key {key_id}'s"
                    )));
                }
                // A policy change committed among the current holders since the invitation
                // would not reach the joining holders: this holder stages nothing then.
                if let Some(current) = &current {
                    let now = self.inner.store.get(&key_id).map(|k| k.info.policy_stamp());
                    if now != Some(current.info.policy_stamp()) {
                        return Err(SessionError::failed(format!(
                            "the policy of key {key_id} changed during the reshare; nothing is staged"
                        )));
                    }
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
                        session: inbox.session().to_string(),
                        superseded: vec![],
                        certificate: vec![],
                    }),
                };
                if self.inner.faults.crash_before_reshare_stage {
                    warn!(%key_id, "test fault: exiting before staging the new generation");
                    std::process::exit(9);
                }
                {
                    // Staged only over the generation this reshare started from, and never
                    // forgetting a generation this node signed a notice for.
                    let _write = self.inner.policy.key_writes().await;
                    let active = self.inner.store.get(&key_id);
                    if current.is_some()
                        && active.as_ref().map(|k| k.info.generation + 1) != Some(params.generation)
                    {
                        return Err(SessionError::failed(format!(
                            "key {key_id} moved to another generation during the reshare; nothing is staged"
                        )));
                    }
                    let mut key = key;
                    if let Some(record) = key.reshare.as_mut() {
                        record.superseded = superseded(
                            active.as_deref(),
                            self.inner.store.staged(&key_id).as_deref(),
                        );
                    }
                    self.inner.store.stage(key).await.map_err(|e| {
                        SessionError::failed(format!("cannot stage the new share: {e}"))
                    })?;
                }
                if self.inner.faults.crash_after_reshare_stage {
                    warn!(%key_id, "test fault: exiting after staging the new generation");
                    std::process::exit(9);
                }
                let notice = self
                    .sign_node_statement(&stored_bytes(&made, STORED_DOMAIN))
                    .map_err(SessionError::failed)?;
                let body = Body::ReshareStored { digest, notice };
                // Best effort: a participant that misses it asks later.
                let _ = self
                    .broadcast_round(&mut inbox, &others, &body, "the reshare storage notice")
                    .await;
                digest
            }
            ReshareOutput::Retired { digest } => digest,
        };

        let bytes = stored_bytes(&made, STORED_DOMAIN);
        let mut certificate: BTreeMap<PeerId, NodeSignature> = BTreeMap::new();
        let collected = inbox
            .collect_each(
                "reshare stored",
                &new_others,
                2 * timeout,
                |b| match b {
                    Body::ReshareStored { digest: d, notice } if *d == digest => {
                        Some(notice.clone())
                    }
                    _ => None,
                },
                |from, notice| match notice.verify_bytes(&bytes, "storage notice") {
                    Ok(signer) if signer == from => {
                        certificate.insert(from, notice.clone());
                        Ok(())
                    }
                    _ => Err(SessionError::blame(
                        vec![from],
                        format!("participant {from} sent a storage notice it did not sign"),
                    )),
                },
            )
            .await;
        if let Err(e) = collected {
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
        if params.new.contains(&local) {
            let own = self
                .sign_node_statement(&bytes)
                .map_err(SessionError::failed)?;
            certificate.insert(local, own);
        }
        let certificate: Vec<NodeSignature> = certificate.into_values().collect();
        let _write = self.inner.policy.key_writes().await;
        if params.new.contains(&local) {
            self.inner
                .store
                .promote_staged(&key_id, certificate)
                .await
                .map_err(|e| SessionError::failed(format!("cannot activate the new share: {e}")))?;
            info!(%key_id, generation = params.generation, holders = params.new.len(), "reshare completed; the new generation is active");
        } else {
            // Every new holder gets the certificate before this node deletes anything: none
            // can be left unable to activate what this node retires for.
            drop(_write);
            self.push_certificate(&made, &certificate).await;
            let _write = self.inner.policy.key_writes().await;
            self.inner
                .store
                .retire(&key_id)
                .await
                .map_err(|e| SessionError::failed(format!("cannot remove the old share: {e}")))?;
            info!(%key_id, generation = params.generation, "reshare completed; this node is no longer a holder and removed its share");
        }
        super::count_keys(&self.inner.store, &self.inner.metrics);
        Ok((info, digest))
    }

    /// This node's signature of `bytes` with its identity key.
    fn sign_node_statement(&self, bytes: &[u8]) -> Result<NodeSignature, String> {
        NodeSignature::sign_bytes(&self.inner.aggregation.identity, bytes)
    }

    /// Resolves the staged generation of `key_id` in the background (once at a time): asks
    /// every other new holder about it, and activates it once every new holder's signed
    /// notice is in hand, or discards it once enough of them signed that they never staged it.
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
                    Ok(outcome) => debug!(%key_id, ?outcome, "staged generation asked about"),
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

    /// Asks the other new holders about the staged generation of `key_id` and acts on it:
    /// every new holder's signed notice (or a certificate of them all from one that
    /// activated it) activates it; signed aborts of enough of them (two, or the one other
    /// holder of a pair: at least one honest, and an honest holder signs an abort only for a
    /// generation it never staged and never will) discard it. Otherwise it stays.
    async fn resolve_staged(&self, key_id: &str) -> Result<Resolution, String> {
        let Some(staged) = self.inner.store.staged(key_id) else {
            return Ok(Resolution::Undecided);
        };
        let record = staged
            .reshare
            .clone()
            .ok_or("a staged generation without its reshare record")?;
        let made = Made {
            key_id: key_id.to_string(),
            generation: staged.info.generation,
            digest: record_digest(&record)?,
            holders: parse_peers(&staged.info.participants)?,
        };
        let reshare = SessionId::parse(&record.session)
            .ok_or("a staged generation with a malformed session id")?;
        let survey = self.survey(&made, reshare).await;
        let _write = self.inner.policy.key_writes().await;
        // Still the same staged generation (a reshare may have replaced it meanwhile).
        if self
            .inner
            .store
            .staged(key_id)
            .is_none_or(|s| s.reshare.as_ref() != Some(&record))
        {
            return Ok(Resolution::Undecided);
        }
        let generation = made.generation;
        match survey.outcome() {
            Resolution::Activate(certificate) => {
                self.inner
                    .store
                    .promote_staged(key_id, certificate.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                super::count_keys(&self.inner.store, &self.inner.metrics);
                info!(%key_id, generation, "every new holder has the staged generation; it is active now");
                Ok(Resolution::Activate(certificate))
            }
            Resolution::Discard(why) => {
                self.inner
                    .store
                    .discard_staged(key_id)
                    .await
                    .map_err(|e| e.to_string())?;
                warn!(%key_id, generation, reason = %why, "the staged generation can never be activated; discarded (the current one stays)");
                Ok(Resolution::Discard(why))
            }
            Resolution::Undecided => Ok(Resolution::Undecided),
        }
    }

    /// Asks every other holder of generation `made` about it, all at once and for at most a
    /// round, and gathers their signed notices and aborts.
    async fn survey(&self, made: &Made, reshare: SessionId) -> Survey {
        let local = self.inner.local;
        let mut survey = Survey::new(made);
        if let Ok(own) = self.sign_node_statement(&survey.stored) {
            survey.notices.insert(local, own);
        }
        let asks = made
            .holders
            .iter()
            .filter(|p| **p != local)
            .map(|peer| async move {
                let answer = tokio::time::timeout(
                    self.inner.round_timeout,
                    self.ask_status(*peer, made, reshare),
                )
                .await
                .unwrap_or_else(|_| Err("no answer within a round".into()));
                (*peer, answer)
            });
        for (peer, answer) in futures::future::join_all(asks).await {
            match answer {
                Ok(status) => survey.take(peer, status),
                Err(e) => {
                    debug!(key_id = %made.key_id, %peer, error = %e, "cannot ask a new holder about a staged generation");
                }
            }
        }
        survey
    }

    async fn ask_status(
        &self,
        peer: PeerId,
        made: &Made,
        reshare: SessionId,
    ) -> Result<Status, String> {
        let session = SessionId::random();
        let mut inbox = self
            .inner
            .router
            .open(session, Protocol::Reshare, [peer])
            .map_err(|e| e.to_string())?;
        let request = Body::ReshareStatusRequest {
            key_id: made.key_id.clone(),
            generation: made.generation,
            digest: made.digest,
            reshare,
            holders: made.holders.iter().map(ToString::to_string).collect(),
        };
        let answer = match self.send(peer, session, request).await {
            Ok(()) => inbox
                .collect(
                    "reshare status",
                    &[peer],
                    self.inner.round_timeout,
                    |b| match b {
                        Body::ReshareStatus {
                            notice,
                            certificate,
                            abort,
                            ..
                        } => Some(Status {
                            notice: notice.clone(),
                            certificate: certificate.clone(),
                            abort: abort.clone(),
                        }),
                        _ => None,
                    },
                )
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        self.inner.router.close(session);
        answer?
            .into_values()
            .next()
            .ok_or_else(|| format!("no answer from {peer}"))
    }

    /// Tells the dropped holders that took no part (`absent`) that generation
    /// `info.generation` of the key exists without them, with its certificate, in the
    /// background, best effort.
    fn notify_dropped(&self, info: &KeyInfo, digest: [u8; 32], absent: Vec<PeerId>) {
        if absent.is_empty() {
            return;
        }
        let Some(certificate) = self
            .inner
            .store
            .get(&info.key_id)
            .and_then(|k| k.reshare.clone())
            .filter(|r| r.digest == hex::encode(digest))
            .map(|r| r.certificate)
        else {
            return;
        };
        let engine = self.clone();
        let body = Body::ReshareRetire {
            key_id: info.key_id.clone(),
            generation: info.generation,
            digest,
            holders: info.participants.clone(),
            certificate,
        };
        tokio::spawn(
            async move {
                for peer in absent {
                    if let Err(e) = engine.send(peer, SessionId::random(), body.clone()).await {
                        debug!(%peer, error = %e, "cannot tell a dropped holder to retire its share");
                    }
                }
            }
            .in_current_span(),
        );
    }

    /// Sends the certificate of generation `made` to each of its holders (a holder that has
    /// it staged activates it), each for at most a round, all at once.
    async fn push_certificate(&self, made: &Made, certificate: &[NodeSignature]) {
        let local = self.inner.local;
        let body = Body::ReshareRetire {
            key_id: made.key_id.clone(),
            generation: made.generation,
            digest: made.digest,
            holders: made.holders.iter().map(ToString::to_string).collect(),
            certificate: certificate.to_vec(),
        };
        let sends = made.holders.iter().filter(|h| **h != local).map(|peer| {
            let body = body.clone();
            async move {
                let sent = tokio::time::timeout(
                    self.inner.round_timeout,
                    self.send(*peer, SessionId::random(), body),
                )
                .await;
                if !matches!(sent, Ok(Ok(()))) {
                    debug!(%peer, key_id = %made.key_id, "cannot hand a new holder the certificate");
                }
            }
        });
        futures::future::join_all(sends).await;
    }

    /// The certificate of generation `generation` of `key_id` (every one of `holders`'
    /// notice, signed over exactly that set): a holder that has it staged activates it; a
    /// dropped holder that holds the generation just before, with nothing staged, first hands
    /// it to every new holder and then removes its share. Nobody's word alone makes a node
    /// delete anything: the certificate is checked here.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn join_retire(
        &self,
        from: PeerId,
        key_id: String,
        generation: u64,
        digest: [u8; 32],
        holders: Vec<String>,
        certificate: Vec<NodeSignature>,
    ) -> Result<(), InviteRefusal> {
        let other = InviteRefusal::Other;
        let local = self.inner.local;
        let holders = canonical_set(&holders, "new holders").map_err(other)?;
        let key = self
            .inner
            .store
            .get(&key_id)
            .ok_or_else(|| other(format!("no key `{key_id}` on peer {local}")))?;
        if holders.len() < usize::from(key.info.threshold) {
            return Err(other(format!(
                "peer {from} names a holder set of key {key_id} smaller than its threshold"
            )));
        }
        let made = Made {
            key_id: key_id.clone(),
            generation,
            digest,
            holders,
        };
        check_certificate(&certificate, &made).map_err(other)?;
        let engine = self.clone();
        if made.holders.contains(&local) {
            let staged = self
                .inner
                .store
                .staged(&key_id)
                .filter(|k| record_matches(k, &made));
            if staged.is_none() {
                return Err(other(format!(
                    "peer {local} has no such generation of key {key_id} staged"
                )));
            }
            tokio::spawn(
                async move {
                    let _write = engine.inner.policy.key_writes().await;
                    let still = engine
                        .inner
                        .store
                        .staged(&key_id)
                        .is_some_and(|k| record_matches(&k, &made));
                    if !still {
                        return;
                    }
                    match engine.inner.store.promote_staged(&key_id, certificate).await {
                        Ok(_) => {
                            super::count_keys(&engine.inner.store, &engine.inner.metrics);
                            info!(%key_id, generation, "a certificate of every new holder arrived; the staged generation is active now");
                        }
                        Err(e) => warn!(%key_id, error = %e, "cannot activate the staged generation"),
                    }
                }
                .in_current_span(),
            );
            return Ok(());
        }
        let predecessor = key.info.generation.checked_add(1) == Some(generation)
            && key.info.participants.contains(&local.to_string());
        if !predecessor || self.inner.store.staged(&key_id).is_some() {
            return Err(other(format!(
                "peer {local} holds generation {} of key {key_id} and is not dropped by generation {generation}",
                key.info.generation
            )));
        }
        self.inner
            .roster
            .check_all(&made.holders)
            .map_err(|m| other(format!("holders {m}")))?;
        tokio::spawn(
            async move {
                engine.push_certificate(&made, &certificate).await;
                let _write = engine.inner.policy.key_writes().await;
                let still = engine
                    .inner
                    .store
                    .get(&key_id)
                    .is_some_and(|k| k.info.generation + 1 == generation)
                    && engine.inner.store.staged(&key_id).is_none();
                if !still {
                    return;
                }
                match engine.inner.store.retire(&key_id).await {
                    Ok(()) => {
                        super::count_keys(&engine.inner.store, &engine.inner.metrics);
                        info!(%key_id, generation, "every new holder signed that it has a generation without this node; its share is removed");
                    }
                    Err(e) => warn!(%key_id, error = %e, "cannot remove the share of a key this node was dropped from"),
                }
            }
            .in_current_span(),
        );
        Ok(())
    }

    /// Answers a holder of generation `made` that asks about it: whether the reshare that
    /// made it (session `reshare_session`) still runs here; otherwise this node's signed
    /// notice when it has that generation staged or active (with the certificate when it
    /// activated it), or its signed abort when it has neither: that session is over, so it
    /// will never stage it. Only a holder of that set may ask, and only of a set this node
    /// is in.
    pub(super) fn answer_reshare_status(
        &self,
        session: SessionId,
        peer: PeerId,
        made: Made,
        reshare_session: SessionId,
    ) -> Result<(), InviteRefusal> {
        let local = self.inner.local;
        if !made.holders.contains(&peer) || !made.holders.contains(&local) {
            return Err(InviteRefusal::Other(format!(
                "peer {peer} asks about a holder set of key {} that does not hold both of us",
                made.key_id
            )));
        }
        // Running first: once the session ends, what it staged is on disk.
        let running = self
            .inner
            .reshare
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&made.key_id)
            == Some(&reshare_session);
        let store = &self.inner.store;
        let active = store.get(&made.key_id).filter(|k| record_matches(k, &made));
        let staged = store
            .staged(&made.key_id)
            .filter(|k| record_matches(k, &made));
        let sign = |domain: &[u8]| {
            self.sign_node_statement(&stored_bytes(&made, domain))
                .map_err(InviteRefusal::Other)
        };
        // A generation this node signed a notice for and then replaced gets neither a notice
        // nor an abort: it may be active elsewhere.
        let digest = hex::encode(made.digest);
        let replaced = [store.get(&made.key_id), store.staged(&made.key_id)]
            .iter()
            .flatten()
            .filter_map(|k| k.reshare.as_ref())
            .any(|r| r.superseded.contains(&digest));
        let (notice, abort) = if active.is_some() || staged.is_some() {
            (Some(sign(STORED_DOMAIN)?), None)
        } else if running || replaced {
            (None, None)
        } else {
            (None, Some(sign(ABORT_DOMAIN)?))
        };
        let certificate = active
            .and_then(|k| k.reshare.clone())
            .map(|r| r.certificate)
            .unwrap_or_default();
        let body = Body::ReshareStatus {
            running,
            notice,
            certificate,
            abort,
        };
        let engine = self.clone();
        tokio::spawn(
            async move {
                if let Err(e) = engine.send(peer, session, body).await {
                    debug!(%peer, error = %e, "cannot answer a reshare status request");
                }
            }
            .in_current_span(),
        );
        Ok(())
    }
}

/// A generation a reshare made (or tried to): key, number, confirmation digest and its
/// holders (sorted).
#[derive(Debug, Clone)]
pub(super) struct Made {
    pub key_id: String,
    pub generation: u64,
    pub digest: [u8; 32],
    pub holders: Vec<PeerId>,
}

/// The bytes a new holder signs under `domain` about generation `made`: that it staged its
/// share ([`STORED_DOMAIN`]) or that it never will ([`ABORT_DOMAIN`]). They name the key,
/// the generation, the confirmation digest and the holder set, so a notice counts only for
/// exactly that set.
fn stored_bytes(made: &Made, domain: &[u8]) -> Vec<u8> {
    let key_id = &made.key_id;
    let mut out = Vec::with_capacity(domain.len() + key_id.len() + 80);
    out.extend_from_slice(domain);
    out.extend_from_slice(&(key_id.len() as u64).to_be_bytes());
    out.extend_from_slice(key_id.as_bytes());
    out.extend_from_slice(&made.generation.to_be_bytes());
    out.extend_from_slice(&made.digest);
    out.extend_from_slice(&super::policy::holders_digest(&made.holders));
    out
}

/// Most replaced generations a key file remembers (see [`ReshareRecord::superseded`]).
const MAX_SUPERSEDED: usize = 16;

/// The digests of the generations this node signed notices for and that a new staged
/// generation replaces: those the active and the staged key remember, and the staged one's.
fn superseded(active: Option<&StoredKey>, staged: Option<&StoredKey>) -> Vec<String> {
    let mut list: Vec<String> = [active, staged]
        .into_iter()
        .flatten()
        .filter_map(|k| k.reshare.as_ref())
        .flat_map(|r| r.superseded.iter().cloned())
        .collect();
    if let Some(record) = staged.and_then(|k| k.reshare.as_ref()) {
        list.push(record.digest.clone());
    }
    list.sort();
    list.dedup();
    let excess = list.len().saturating_sub(MAX_SUPERSEDED);
    list.drain(..excess);
    list
}

/// The confirmation digest of a reshare record.
fn record_digest(record: &ReshareRecord) -> Result<[u8; 32], String> {
    hex::decode(&record.digest)
        .ok()
        .and_then(|d| d.try_into().ok())
        .ok_or_else(|| "a reshare record with a malformed digest".to_string())
}

/// Whether `key` is generation `made`: its number, its confirmation digest and its holders.
fn record_matches(key: &StoredKey, made: &Made) -> bool {
    let mut holders: Vec<String> = made.holders.iter().map(ToString::to_string).collect();
    holders.sort();
    let mut ours = key.info.participants.clone();
    ours.sort();
    key.info.generation == made.generation
        && ours == holders
        && key
            .reshare
            .as_ref()
            .is_some_and(|r| r.digest == hex::encode(made.digest))
}

/// Checks that `certificate` holds a notice, signed over exactly `made`, by each of its
/// holders and by nobody else.
fn check_certificate(certificate: &[NodeSignature], made: &Made) -> Result<(), String> {
    let bytes = stored_bytes(made, STORED_DOMAIN);
    let mut signers = BTreeSet::new();
    for notice in certificate {
        let signer = notice.verify_bytes(&bytes, "storage notice")?;
        if !made.holders.contains(&signer) || !signers.insert(signer) {
            return Err(format!(
                "the certificate holds a notice of {signer}, who is not a new holder or signed twice"
            ));
        }
    }
    if signers.len() != made.holders.len() {
        return Err("the certificate lacks some new holder's notice".into());
    }
    Ok(())
}

/// A new holder's answer about a staged generation.
#[derive(PartialEq)]
struct Status {
    notice: Option<NodeSignature>,
    certificate: Vec<NodeSignature>,
    abort: Option<NodeSignature>,
}

/// What the new holders said about a staged generation.
struct Survey {
    made: Made,
    stored: Vec<u8>,
    aborted: Vec<u8>,
    notices: BTreeMap<PeerId, NodeSignature>,
    aborts: BTreeMap<PeerId, NodeSignature>,
}

/// What to do with a staged generation.
#[derive(Debug)]
enum Resolution {
    Activate(Vec<NodeSignature>),
    Discard(String),
    Undecided,
}

impl Survey {
    fn new(made: &Made) -> Self {
        Self {
            made: made.clone(),
            stored: stored_bytes(made, STORED_DOMAIN),
            aborted: stored_bytes(made, ABORT_DOMAIN),
            notices: BTreeMap::new(),
            aborts: BTreeMap::new(),
        }
    }

    /// Takes `peer`'s answer: a certificate of the generation, its notice, or its abort,
    /// each kept only when validly signed (by `peer`, for the notice and the abort).
    fn take(&mut self, peer: PeerId, status: Status) {
        if check_certificate(&status.certificate, &self.made).is_ok() {
            for notice in status.certificate {
                if let Ok(signer) = notice.verify_bytes(&self.stored, "storage notice") {
                    self.notices.insert(signer, notice);
                }
            }
        }
        if let Some(notice) = status.notice
            && notice.verify_bytes(&self.stored, "storage notice").ok() == Some(peer)
        {
            self.notices.insert(peer, notice);
        }
        if let Some(abort) = status.abort
            && abort.verify_bytes(&self.aborted, "abort").ok() == Some(peer)
        {
            self.aborts.insert(peer, abort);
        }
    }

    /// How many aborts discard a generation: two (one of them honest, when one holder may
    /// be compromised), or the one other holder of a pair (which can stop that key anyway).
    fn aborts_needed(&self) -> usize {
        (self.made.holders.len() - 1).clamp(1, 2)
    }

    fn outcome(self) -> Resolution {
        if self
            .made
            .holders
            .iter()
            .all(|h| self.notices.contains_key(h))
        {
            return Resolution::Activate(self.notices.into_values().collect());
        }
        if self.aborts.len() >= self.aborts_needed() {
            let who: Vec<String> = self.aborts.keys().map(ToString::to_string).collect();
            return Resolution::Discard(format!(
                "new holders {} signed that they never staged it",
                who.join(", ")
            ));
        }
        Resolution::Undecided
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::Keypair;

    fn holders(n: usize) -> (Vec<Keypair>, Made) {
        let mut keys: Vec<Keypair> = (0..n).map(|_| Keypair::generate_ed25519()).collect();
        keys.sort_by_key(|k| k.public().to_peer_id());
        let made = Made {
            key_id: "ab".repeat(16),
            generation: 2,
            digest: [9; 32],
            holders: keys.iter().map(|k| k.public().to_peer_id()).collect(),
        };
        (keys, made)
    }

    fn signed(key: &Keypair, made: &Made, domain: &[u8]) -> NodeSignature {
        NodeSignature::sign_bytes(key, &stored_bytes(made, domain)).unwrap()
    }

    fn status(notice: Option<NodeSignature>, abort: Option<NodeSignature>) -> Status {
        Status {
            notice,
            certificate: vec![],
            abort,
        }
    }

    #[test]
    fn a_certificate_counts_only_for_the_holder_set_its_notices_name() {
        let (keys, made) = holders(3);
        let certificate: Vec<NodeSignature> = keys
            .iter()
            .map(|k| signed(k, &made, STORED_DOMAIN))
            .collect();
        check_certificate(&certificate, &made).unwrap();
        // The same notices presented for the set without one holder: refused (what would
        // make that holder retire its share).
        let fewer = Made {
            holders: made.holders[1..].to_vec(),
            ..made.clone()
        };
        assert!(check_certificate(&certificate[1..], &fewer).is_err());
        // Another digest, or a notice missing, or an abort in place of a notice.
        let other = Made {
            digest: [8; 32],
            ..made.clone()
        };
        assert!(check_certificate(&certificate, &other).is_err());
        assert!(check_certificate(&certificate[..2], &made).is_err());
        let mut with_abort = certificate.clone();
        with_abort[0] = signed(&keys[0], &made, ABORT_DOMAIN);
        assert!(check_certificate(&with_abort, &made).is_err());
    }

    #[test]
    fn a_survey_activates_on_every_notice_and_discards_only_on_two_aborts() {
        let (keys, made) = holders(4);
        let peers = made.holders.clone();
        // Every notice: activate.
        let mut survey = Survey::new(&made);
        for (k, p) in keys.iter().zip(&peers) {
            survey.take(*p, status(Some(signed(k, &made, STORED_DOMAIN)), None));
        }
        assert!(matches!(survey.outcome(), Resolution::Activate(c) if c.len() == 4));
        // One abort (a compromised holder's word) is not enough; two are.
        let mut survey = Survey::new(&made);
        survey.take(
            peers[1],
            status(None, Some(signed(&keys[1], &made, ABORT_DOMAIN))),
        );
        survey.take(
            peers[2],
            status(Some(signed(&keys[2], &made, STORED_DOMAIN)), None),
        );
        assert!(matches!(survey.outcome(), Resolution::Undecided));
        let mut survey = Survey::new(&made);
        survey.take(
            peers[1],
            status(None, Some(signed(&keys[1], &made, ABORT_DOMAIN))),
        );
        survey.take(
            peers[3],
            status(None, Some(signed(&keys[3], &made, ABORT_DOMAIN))),
        );
        assert!(matches!(survey.outcome(), Resolution::Discard(_)));
        // An abort signed by someone else than the peer that sent it does not count.
        let mut survey = Survey::new(&made);
        survey.take(
            peers[1],
            status(None, Some(signed(&keys[3], &made, ABORT_DOMAIN))),
        );
        survey.take(
            peers[2],
            status(None, Some(signed(&keys[3], &made, ABORT_DOMAIN))),
        );
        assert!(matches!(survey.outcome(), Resolution::Undecided));
        // A certificate from one holder activates.
        let certificate = keys
            .iter()
            .map(|k| signed(k, &made, STORED_DOMAIN))
            .collect();
        let mut survey = Survey::new(&made);
        survey.take(
            peers[0],
            Status {
                notice: None,
                certificate,
                abort: None,
            },
        );
        assert!(matches!(survey.outcome(), Resolution::Activate(_)));
        // A pair: the one other holder's abort discards.
        let (keys, made) = holders(2);
        let mut survey = Survey::new(&made);
        survey.take(
            made.holders[1],
            status(None, Some(signed(&keys[1], &made, ABORT_DOMAIN))),
        );
        assert!(matches!(survey.outcome(), Resolution::Discard(_)));
    }
}
