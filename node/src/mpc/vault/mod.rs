//! The vault: files that no single node can read, on the roster's members (README, Vault).
//!
//! The client seals the file and shares its key (see [`core`]); the node that takes the
//! upload (the coordinator, one of the holders) cuts the ciphertext into stripes and sends
//! holder `j` its fragment of each, with that holder's sealed key share. The put is two-phase:
//! every holder stages what it gets, checks its fragments against the manifest the
//! coordinator sends at the end and *prepares* (syncs); only when all are prepared does the
//! coordinator tell them to commit. A prepared holder that hears no commit asks the other
//! holders ([`Body::VaultStatusRequest`]) and commits if one of them did, drops the put if
//! none did and none can any more.
//!
//! A get needs K approvals of the file's clients, checked by every holder before it releases
//! anything: each holder seals its key share to the recipient key the approvals name and
//! signs it, then serves its fragments. The coordinator rebuilds the ciphertext from `k`
//! fragments per stripe (a fragment whose hash is not the manifest's is blamed and another
//! holder's is used) and streams it with the sealed shares; only the client can open them.

pub mod core;
pub mod repair;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, info, warn};

use self::core::{Coding, MANIFEST_FORMAT, Manifest, VaultPolicy, check_name, plaintext_len};
use self::store::{HeldFile, SealedShare};
use super::aggregation::encryption;
use super::aggregation::store::ParticipantKey;
use super::digest::Fields;
use super::policy::{Approves, Authorization, NodeSignature, SigningPolicy};
use super::session::{SessionError, SessionInbox, unreachable_error};
use super::wire::{Blob, Body, Protocol, SessionId};
use super::{InviteRefusal, MpcEngine, MpcError};

/// HPKE `info` of a key share sealed by the client to a holder.
pub const SHARE_INFO: &[u8] = b"p2p-mpc vault key share v1";
/// HPKE `info` of a key share a holder releases to a client.
pub const RELEASE_INFO: &[u8] = b"p2p-mpc vault release v1";
const SHARE_AAD_DOMAIN: &[u8] = b"p2p-mpc vault share aad v1\0";
const RELEASE_AAD_DOMAIN: &[u8] = b"p2p-mpc vault release aad v1\0";
const RELEASED_DOMAIN: &[u8] = b"p2p-mpc vault released share v1\0";
/// Stripes a holder takes before it reports progress (and the coordinator sends more).
pub const WINDOW: u64 = 8;
/// How long a prepared holder waits between asking the others what became of a put.
const SURVEY_EVERY: Duration = Duration::from_secs(10);

/// The associated data of holder `holder`'s key share of the file with these terms: a
/// share opens only for exactly the terms the client sealed it for.
pub fn share_aad(terms: &core::Terms<'_>, holder: &PeerId) -> Vec<u8> {
    Fields::new(SHARE_AAD_DOMAIN)
        .field(&core::terms_digest(terms))
        .field(&holder.to_bytes())
        .finish()
        .to_vec()
}

/// The associated data of a share released by `holder` of file `file_id` to `recipient`.
pub fn release_aad(file_id: &str, holder: &PeerId, recipient: &[u8]) -> Vec<u8> {
    Fields::new(RELEASE_AAD_DOMAIN)
        .field(file_id.as_bytes())
        .field(&holder.to_bytes())
        .field(recipient)
        .finish()
        .to_vec()
}

/// What a holder signs when it releases its share.
pub fn released_bytes(file_id: &str, recipient: &[u8], share: &SealedShare) -> Vec<u8> {
    Fields::new(RELEASED_DOMAIN)
        .field(file_id.as_bytes())
        .field(recipient)
        .field(share.enc.as_bytes())
        .field(share.ciphertext.as_bytes())
        .finish()
        .to_vec()
}

/// The JSON header of a put upload (before the ciphertext bytes).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutRequest {
    /// Peer ids, in share order; the coordinator must be one of them.
    pub holders: Vec<String>,
    /// Fragments and key shares that rebuild the file.
    pub threshold: u16,
    pub policy: VaultPolicy,
    pub ciphertext_bytes: u64,
    /// STREAM nonce prefix, hex.
    pub nonce_prefix: String,
    /// Feldman commitment of the key shares, hex.
    pub commitment: String,
    /// 16 random bytes (hex) the client chose for this put.
    pub put_id: String,
    /// Each holder's key share, sealed to its HPKE key (see [`share_aad`]), in holder order.
    pub shares: Vec<SealedShare>,
}

/// What every holder is told of a put before the fragments come.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub name: String,
    pub holders: Vec<String>,
    pub threshold: u16,
    pub policy: VaultPolicy,
    pub ciphertext_bytes: u64,
    pub nonce_prefix: String,
    pub commitment: String,
    pub fragment_bytes: u32,
    pub created_at: u64,
    pub put_id: String,
    /// The holder that coordinates the put.
    pub coordinator: String,
}

impl Plan {
    /// The manifest of this plan with the hashes the put produced.
    pub fn manifest(&self, ciphertext_sha256: String, fragment_hashes: Vec<String>) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            name: self.name.clone(),
            holders: self.holders.clone(),
            threshold: self.threshold,
            policy: self.policy.clone(),
            ciphertext_bytes: self.ciphertext_bytes,
            ciphertext_sha256,
            nonce_prefix: self.nonce_prefix.clone(),
            commitment: self.commitment.clone(),
            fragment_bytes: self.fragment_bytes,
            fragment_hashes,
            created_at: self.created_at,
            put_id: self.put_id.clone(),
            coordinator: self.coordinator.clone(),
        }
    }

    /// Every check of a plan that a holder makes itself: the manifest it will make has
    /// whole terms (sizes first; nothing is allocated by the claimed size), the holders are
    /// distinct roster members, the policy's clients are canonical.
    fn check(&self, engine: &MpcEngine) -> Result<(Coding, Vec<PeerId>), String> {
        let terms = self.manifest(String::new(), Vec::new());
        terms.check_terms()?;
        let coding = terms.coding()?;
        let (clients, k) = SigningPolicy::client_set(
            &self.policy.clients,
            "clients",
            Some(self.policy.approvals),
            "approvals",
        )?;
        if clients != self.policy.clients || k != self.policy.approvals {
            return Err("the policy's clients are not in canonical form".into());
        }
        let holders = super::parse_peers(&self.holders)?;
        for h in &holders {
            if !engine.inner.roster.admits(h) {
                return Err(format!("holder {h} is not a member of the cluster roster"));
            }
        }
        Ok((coding, holders))
    }
}

/// A key share released by one holder to the client: sealed to the recipient key and
/// signed by the holder's identity key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleasedShare {
    pub holder: String,
    pub share: SealedShare,
    pub signature: NodeSignature,
}

/// The JSON header of a get answer (before the ciphertext bytes).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetHeader {
    pub file_id: String,
    pub manifest: Manifest,
    /// The shares released, at least `threshold` of them.
    pub shares: Vec<ReleasedShare>,
    /// Holders that did not release their share, with why.
    pub missing: Vec<(String, String)>,
}

/// The answer of a put.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PutResult {
    pub name: String,
    pub file_id: String,
    pub manifest: Manifest,
    /// Holders that did not confirm the commit (they commit when they learn of it).
    pub unconfirmed: Vec<String>,
}

/// The answer of a delete.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeleteResult {
    pub name: String,
    pub file_id: String,
    pub deleted_on: Vec<String>,
    /// Holders that could not be reached or refused, with why.
    pub not_deleted: Vec<(String, String)>,
}

/// A file as `GET /v1/vault` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileView {
    pub name: String,
    pub file_id: String,
    /// Plaintext bytes.
    pub size: u64,
    pub ciphertext_bytes: u64,
    pub holders: Vec<String>,
    pub threshold: u16,
    pub policy: VaultPolicy,
    pub created_at: u64,
}

impl FileView {
    fn of(held: &HeldFile) -> Self {
        let m = &held.manifest;
        Self {
            name: m.name.clone(),
            file_id: held.file_id.clone(),
            size: plaintext_len(m.ciphertext_bytes).unwrap_or(0),
            ciphertext_bytes: m.ciphertext_bytes,
            holders: m.holders.clone(),
            threshold: m.threshold,
            policy: m.policy.clone(),
            created_at: m.created_at,
        }
    }
}

/// What a holder says of a put it was asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PutState {
    /// It holds the file (committed).
    Committed,
    /// It has the put prepared and will commit it only on another holder's word.
    Prepared,
    /// A put of it is running here: not decided yet.
    Running,
    /// It knows nothing of it.
    Absent,
}

/// A vault request that failed before its answer started.
pub type VaultResult<T> = Result<T, MpcError>;

fn hex32(s: &str, what: &str) -> Result<[u8; 32], String> {
    hex::decode(s)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("`{what}` is not 32 bytes of hex"))
}

/// Ciphertext bytes of a body, as they come, cut into stripes of `stripe` bytes.
struct Stripes<S> {
    body: S,
    buf: Vec<u8>,
    stripe: usize,
    total: u64,
    expected: u64,
    hash: Sha256,
    done: bool,
}

impl<S> Stripes<S>
where
    S: futures::Stream<Item = Result<Bytes, String>> + Unpin,
{
    /// The next stripe's bytes (the last one shorter), or `None` at the end.
    async fn next(&mut self) -> Result<Option<Vec<u8>>, String> {
        use futures::StreamExt;
        if self.done {
            return Ok(None);
        }
        while self.buf.len() < self.stripe {
            match self.body.next().await {
                Some(Ok(chunk)) => {
                    self.total += chunk.len() as u64;
                    if self.total > self.expected {
                        return Err(format!(
                            "the upload holds more than the {} sealed bytes its header announced",
                            self.expected
                        ));
                    }
                    self.hash.update(&chunk);
                    self.buf.extend_from_slice(&chunk);
                }
                Some(Err(e)) => return Err(format!("the upload broke off: {e}")),
                None => break,
            }
        }
        if self.buf.len() < self.stripe {
            if self.total != self.expected {
                return Err(format!(
                    "the upload ended after {} of the {} sealed bytes its header announced",
                    self.total, self.expected
                ));
            }
            self.done = true;
            if self.buf.is_empty() && self.expected > 0 {
                return Ok(None);
            }
        }
        let rest = self.buf.split_off(self.buf.len().min(self.stripe));
        Ok(Some(std::mem::replace(&mut self.buf, rest)))
    }
}

impl MpcEngine {
    fn vault(&self) -> &store::VaultStore {
        &self.inner.vault
    }

    /// The files held here, by name.
    pub fn vault_files(&self) -> Vec<FileView> {
        self.vault().list().iter().map(FileView::of).collect()
    }

    /// The manifest of `name` as held here, with its file id.
    #[allow(clippy::result_large_err)] // the engine's request error, as for every request
    pub fn vault_manifest(&self, name: &str) -> VaultResult<(String, Manifest)> {
        check_name(name).map_err(MpcError::BadRequest)?;
        let held = self
            .vault()
            .get(name)
            .ok_or_else(|| MpcError::UnknownFile(name.to_string()))?;
        Ok((held.file_id, held.manifest))
    }

    /// The holders a put would use by default: the roster's members (this node first).
    #[allow(clippy::result_large_err)] // the engine's request error, as for every request
    fn default_holders(&self) -> VaultResult<Vec<String>> {
        let members = self.inner.roster.members().ok_or_else(|| {
            MpcError::BadRequest(
                "this node has no cluster roster: name the holders (`holders`)".into(),
            )
        })?;
        let local = self.inner.local;
        Ok(std::iter::once(local)
            .chain(members.into_iter().filter(|p| *p != local))
            .map(|p| p.to_string())
            .collect())
    }

    /// The HPKE keys of `holders` (default: the roster's members), each signed by its
    /// holder's identity key, for a client to seal key shares to.
    pub async fn vault_holder_keys(
        &self,
        holders: Option<Vec<String>>,
    ) -> VaultResult<Vec<ParticipantKey>> {
        let holders = match holders {
            Some(h) => h,
            None => self.default_holders()?,
        };
        let peers = super::parse_peers(&holders).map_err(MpcError::BadRequest)?;
        let local = self.inner.local;
        if !peers.contains(&local) {
            return Err(MpcError::BadRequest(format!(
                "the holders must include this node ({local}), which coordinates the put"
            )));
        }
        let others: Vec<PeerId> = peers.iter().copied().filter(|p| *p != local).collect();
        let session = SessionId::random();
        let mut inbox = self
            .inner
            .router
            .open(session, Protocol::Vault, others.clone())
            .map_err(|error| MpcError::Session { session, error })?;
        let run = async {
            self.broadcast_round(
                &mut inbox,
                &others,
                &Body::VaultKeysRequest,
                "the key request",
            )
            .await?;
            let keys = inbox
                .collect(
                    "vault keys",
                    &others,
                    self.inner.round_timeout,
                    |b| match b {
                        Body::VaultKeys { key } => Some(key.clone()),
                        _ => None,
                    },
                )
                .await?;
            let mut out = Vec::new();
            for peer in &peers {
                let key = if *peer == local {
                    self.own_key()?
                } else {
                    keys[peer].clone()
                };
                check_key(peer, &key).map_err(|e| SessionError::blame(vec![*peer], e))?;
                out.push(key);
            }
            Ok(out)
        };
        self.run_session(Protocol::Vault, "coordinator", session, others.clone(), run)
            .await
            .map_err(|error| MpcError::Session { session, error })
    }

    /// Stores file `name`: `request` is the client's header, `body` the sealed bytes.
    pub async fn vault_put<S>(
        &self,
        name: &str,
        request: PutRequest,
        body: S,
    ) -> VaultResult<PutResult>
    where
        S: futures::Stream<Item = Result<Bytes, String>> + Unpin + Send,
    {
        check_name(name).map_err(MpcError::BadRequest)?;
        let local = self.inner.local;
        let bad = MpcError::BadRequest;
        let (clients, approvals) = SigningPolicy::client_set(
            &request.policy.clients,
            "clients",
            Some(request.policy.approvals),
            "approvals",
        )
        .map_err(bad)?;
        if request.shares.len() != request.holders.len() {
            return Err(bad(format!(
                "{} sealed shares for {} holders",
                request.shares.len(),
                request.holders.len()
            )));
        }
        let threshold = request.threshold;
        let plan = Plan {
            name: name.to_string(),
            holders: request.holders.clone(),
            threshold,
            policy: VaultPolicy { clients, approvals },
            ciphertext_bytes: request.ciphertext_bytes,
            nonce_prefix: request.nonce_prefix.clone(),
            commitment: request.commitment.clone(),
            fragment_bytes: Coding::fragment_bytes_for(request.ciphertext_bytes, threshold as usize)
                as u32,
            created_at: super::store::unix_now(),
            put_id: request.put_id.clone(),
            coordinator: local.to_string(),
        };
        let (coding, holders) = plan.check(self).map_err(bad)?;
        let index = holders.iter().position(|p| *p == local).ok_or_else(|| {
            bad(format!(
                "the holders must include this node ({local}), which coordinates the put"
            ))
        })?;
        // The coordinator checks its own share like every holder does.
        check_sealed_share(self, &plan, &request.shares[index]).map_err(bad)?;
        if self.vault().get(name).is_some() {
            return Err(MpcError::Conflict(format!(
                "a file named `{name}` exists already (delete it first)"
            )));
        }
        let others: Vec<PeerId> = holders.iter().copied().filter(|p| *p != local).collect();
        let session = SessionId::random();
        let inbox = self
            .inner
            .router
            .open(session, Protocol::Vault, others.clone())
            .map_err(|error| MpcError::Session { session, error })?;
        let stripes = Stripes {
            body,
            buf: Vec::new(),
            stripe: coding.stripe_bytes(),
            total: 0,
            expected: plan.ciphertext_bytes,
            hash: Sha256::new(),
            done: false,
        };
        let run = self.run_vault_put(inbox, plan, coding, holders, request.shares, stripes);
        let started = std::time::Instant::now();
        let result = self
            .run_session(Protocol::Vault, "coordinator", session, others, run)
            .await
            .map_err(|error| match error {
                SessionError::Failed(reason) if reason.starts_with("upload: ") => {
                    MpcError::BadRequest(reason["upload: ".len()..].to_string())
                }
                error => MpcError::Session { session, error },
            })?;
        info!(name, file_id = %result.file_id, bytes = result.manifest.ciphertext_bytes, seconds = started.elapsed().as_secs_f64(), "vault file stored");
        Ok(result)
    }

    async fn run_vault_put<S>(
        &self,
        mut inbox: SessionInbox,
        plan: Plan,
        coding: Coding,
        holders: Vec<PeerId>,
        shares: Vec<SealedShare>,
        mut stripes: Stripes<S>,
    ) -> Result<PutResult, SessionError>
    where
        S: futures::Stream<Item = Result<Bytes, String>> + Unpin + Send,
    {
        let local = self.inner.local;
        let session = inbox.session();
        let others: Vec<PeerId> = holders.iter().copied().filter(|p| *p != local).collect();
        let plan_json = Blob(serde_json::to_vec(&plan).expect("a plan encodes").into());
        let invites = holders
            .iter()
            .zip(&shares)
            .filter(|(p, _)| **p != local)
            .map(|(p, share)| {
                (
                    *p,
                    Body::VaultPutInvite {
                        plan: plan_json.clone(),
                        share: share.clone(),
                    },
                )
            })
            .collect();
        let mut staging = self
            .vault()
            .stage(&plan.name, &session.to_string())
            .map_err(SessionError::failed)?;
        self.send_round(&mut inbox, invites, "the put invitation")
            .await?;
        inbox
            .collect("vault ready", &others, self.inner.round_timeout, |b| {
                matches!(b, Body::VaultReady).then_some(())
            })
            .await?;
        let own = holders.iter().position(|p| *p == local).expect("a holder");
        let total = coding.stripes(plan.ciphertext_bytes);
        let mut hashes: Vec<[u8; 32]> = Vec::with_capacity((total as usize) * holders.len());
        let mut stripe = 0u64;
        while let Some(data) = stripes
            .next()
            .await
            .map_err(|e| SessionError::failed(format!("upload: {e}")))?
        {
            let fragments = coding.encode(&data).map_err(SessionError::failed)?;
            hashes.extend(fragments.iter().map(|f| core::fragment_hash(f)));
            staging
                .append(&fragments[own])
                .map_err(SessionError::failed)?;
            let sends: Vec<(PeerId, Body)> = holders
                .iter()
                .zip(fragments)
                .filter(|(p, _)| **p != local)
                .map(|(p, f)| {
                    (
                        *p,
                        Body::VaultFragment {
                            stripe,
                            data: Blob(f.into()),
                        },
                    )
                })
                .collect();
            self.send_round(&mut inbox, sends, "a fragment").await?;
            stripe += 1;
            if stripe.is_multiple_of(WINDOW) || stripe == total {
                let want = stripe;
                inbox
                    .collect("vault progress", &others, self.inner.round_timeout, |b| {
                        matches!(b, Body::VaultProgress { stripes } if *stripes == want)
                            .then_some(())
                    })
                    .await?;
            }
        }
        if stripe != total {
            return Err(SessionError::failed(format!(
                "upload: {stripe} stripes instead of {total}"
            )));
        }
        let sha = hex::encode(stripes.hash.finalize_reset());
        let manifest = plan.manifest(sha, hashes.iter().map(hex::encode).collect());
        let file_id = manifest.file_id();
        let manifest_json = Blob(serde_json::to_vec(&manifest).expect("encodes").into());
        self.broadcast_round(
            &mut inbox,
            &others,
            &Body::VaultPrepare {
                manifest: manifest_json,
            },
            "the manifest",
        )
        .await?;
        staging
            .prepare(&manifest, &shares[own])
            .map_err(SessionError::failed)?;
        inbox
            .collect("vault prepared", &others, self.inner.round_timeout, |b| {
                matches!(b, Body::VaultPrepared).then_some(())
            })
            .await?;
        if self.inner.faults.crash_before_vault_commit {
            warn!("test fault crash-before-vault-commit: exiting before the commit");
            std::process::exit(3);
        }
        // Every holder is prepared: the file exists from here on.
        staging.commit().map_err(SessionError::failed)?;
        if self.inner.faults.crash_after_vault_commit {
            warn!("test fault crash-after-vault-commit: exiting before telling the holders");
            std::process::exit(3);
        }
        let failures = self.broadcast(&others, session, &Body::VaultCommit).await;
        let mut unconfirmed: BTreeSet<PeerId> = failures.iter().map(|(p, _)| *p).collect();
        let asked: Vec<PeerId> = others
            .iter()
            .copied()
            .filter(|p| !unconfirmed.contains(p))
            .collect();
        let (confirmed, _) = inbox
            .collect_until("vault committed", &asked, self.inner.round_timeout, |b| {
                matches!(b, Body::VaultCommitted).then_some(())
            })
            .await;
        unconfirmed.extend(asked.iter().filter(|p| !confirmed.contains_key(p)));
        if !unconfirmed.is_empty() {
            warn!(name = %plan.name, unconfirmed = %super::session::join_peers(&unconfirmed.iter().copied().collect::<Vec<_>>()), "vault file committed; some holders did not confirm (they commit when they ask)");
        }
        Ok(PutResult {
            name: plan.name.clone(),
            file_id,
            manifest,
            unconfirmed: unconfirmed.iter().map(ToString::to_string).collect(),
        })
    }

    /// A holder's answer to a put invitation: every check of the plan and of its own sealed
    /// share, then its side of the put in a task.
    pub(super) fn join_vault_put(
        &self,
        session: SessionId,
        from: PeerId,
        plan: &[u8],
        share: SealedShare,
    ) -> Result<(), InviteRefusal> {
        let other = InviteRefusal::Other;
        let plan: Plan =
            serde_json::from_slice(plan).map_err(|e| other(format!("malformed put plan: {e}")))?;
        let (coding, holders) = plan.check(self).map_err(other)?;
        let local = self.inner.local;
        if plan.coordinator != from.to_string() {
            return Err(other(format!(
                "the plan names {} as its coordinator, not {from}",
                plan.coordinator
            )));
        }
        if !holders.contains(&local) || !holders.contains(&from) {
            return Err(other(format!(
                "a put coordinated by {from} must name it and this node ({local}) among the holders"
            )));
        }
        if self.vault().get(&plan.name).is_some() {
            return Err(other(format!(
                "a file named `{}` is held here already",
                plan.name
            )));
        }
        if self.vault().count_created_by(&from.to_string()) >= self.inner.max_keys_per_creator {
            return Err(other(format!(
                "this node holds {} vault files put through {from} (mpc_max_keys_per_creator)",
                self.inner.max_keys_per_creator
            )));
        }
        check_sealed_share(self, &plan, &share).map_err(other)?;
        let own = holders.iter().position(|p| *p == local).expect("checked");
        self.spawn_participant(
            Protocol::Vault,
            session,
            vec![from],
            move |engine, inbox| async move {
                engine
                    .run_vault_put_holder(inbox, from, plan, coding, own, share)
                    .await
            },
        )
    }

    async fn run_vault_put_holder(
        &self,
        mut inbox: SessionInbox,
        from: PeerId,
        plan: Plan,
        coding: Coding,
        own: usize,
        share: SealedShare,
    ) -> Result<(), SessionError> {
        let session = inbox.session();
        let mut staging = self
            .vault()
            .stage(&plan.name, &session.to_string())
            .map_err(SessionError::failed)?;
        let send = |body: Body| async move {
            self.send(from, session, body)
                .await
                .map_err(|e| unreachable_error(vec![(from, e)], "a put answer"))
        };
        send(Body::VaultReady).await?;
        let total = coding.stripes(plan.ciphertext_bytes);
        let size = plan.fragment_bytes as usize;
        while staging.stripes() < total {
            let deadline = tokio::time::Instant::now() + self.inner.round_timeout;
            let expected = staging.stripes();
            let (_, data) = inbox
                .next_of("vault fragment", &[from], deadline, |b| match b {
                    Body::VaultFragment { stripe, data } => Some((*stripe, data.clone())),
                    _ => None,
                })
                .await?;
            let (stripe, data) = data;
            if stripe != expected || data.0.len() != size {
                return Err(SessionError::blame(
                    vec![from],
                    format!(
                        "coordinator {from} sent fragment {stripe} of {} bytes; expected fragment {expected} of {size}",
                        data.0.len()
                    ),
                ));
            }
            staging.append(&data.0).map_err(SessionError::failed)?;
            let got = staging.stripes();
            if got.is_multiple_of(WINDOW) || got == total {
                send(Body::VaultProgress { stripes: got }).await?;
            }
        }
        let deadline = tokio::time::Instant::now() + self.inner.round_timeout;
        let (_, manifest) = inbox
            .next_of("vault prepare", &[from], deadline, |b| match b {
                Body::VaultPrepare { manifest } => Some(manifest.clone()),
                _ => None,
            })
            .await?;
        let manifest: Manifest = serde_json::from_slice(&manifest.0).map_err(|e| {
            SessionError::blame(vec![from], format!("a malformed manifest from {from}: {e}"))
        })?;
        let n = plan.holders.len();
        let mine: Vec<String> = staging.hashes().iter().map(hex::encode).collect();
        let theirs: Vec<&str> = (0..total)
            .filter_map(|s| manifest.hash_of(s, own))
            .collect();
        let same_plan = plan.manifest(
            manifest.ciphertext_sha256.clone(),
            manifest.fragment_hashes.clone(),
        ) == manifest;
        if !same_plan
            || manifest.check().is_err()
            || manifest.fragment_hashes.len() != total as usize * n
            || theirs != mine.iter().map(String::as_str).collect::<Vec<_>>()
        {
            return Err(SessionError::blame(
                vec![from],
                format!(
                    "coordinator {from} sent a manifest that is not the plan's or not of the fragments it sent"
                ),
            ));
        }
        staging
            .prepare(&manifest, &share)
            .map_err(SessionError::failed)?;
        // Prepared: from here on the put is kept until it is committed or the holders agree
        // that nobody committed it. (The coordinator may have taken this answer and
        // committed even when its acknowledgement is lost.)
        let commit = match send(Body::VaultPrepared).await {
            Ok(()) => {
                let deadline = tokio::time::Instant::now() + self.inner.round_timeout;
                inbox
                    .next_of("vault commit", &[from], deadline, |b| {
                        matches!(b, Body::VaultCommit).then_some(())
                    })
                    .await
                    .map(|_| ())
            }
            Err(e) => Err(e),
        };
        match commit {
            Ok(_) => {
                staging.commit().map_err(SessionError::failed)?;
                info!(name = %plan.name, file_id = %manifest.file_id(), "vault file stored");
                let _ = send(Body::VaultCommitted).await;
                Ok(())
            }
            Err(e) => {
                // Prepared: kept until the other holders say what became of the put.
                let dir = staging.keep();
                self.resolve_prepared(plan.name.clone(), manifest.file_id(), dir);
                Err(e)
            }
        }
    }

    /// Settles a prepared put in the background: asks the other holders every
    /// [`SURVEY_EVERY`]; commits when one holds the file, drops it when every other one
    /// has it at most prepared (nobody committed, and nobody will).
    pub(super) fn resolve_prepared(&self, name: String, file_id: String, dir: std::path::PathBuf) {
        let engine = self.clone();
        tokio::spawn(
            async move {
                loop {
                    tokio::time::sleep(SURVEY_EVERY).await;
                    match engine.survey_put(&name, &file_id, &dir).await {
                        Ok(Some(true)) => {
                            match engine.vault().commit_prepared(&name, &dir) {
                                Ok(()) => info!(%name, %file_id, "vault file committed on another holder's word"),
                                Err(e) => warn!(%name, error = %e, "cannot commit a prepared vault file"),
                            }
                            return;
                        }
                        Ok(Some(false)) => {
                            info!(%name, %file_id, "vault put never committed anywhere; dropped");
                            let _ = std::fs::remove_dir_all(&dir);
                            return;
                        }
                        Ok(None) => {}
                        Err(e) => warn!(%name, error = %e, "cannot ask about a prepared vault file"),
                    }
                }
            }
            .in_current_span(),
        );
    }

    /// `Some(true)`: another holder committed; `Some(false)`: none did and none can;
    /// `None`: not known yet.
    async fn survey_put(
        &self,
        name: &str,
        file_id: &str,
        dir: &std::path::Path,
    ) -> Result<Option<bool>, String> {
        let manifest: Manifest = serde_json::from_slice(
            &std::fs::read(dir.join("manifest.json")).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        let local = self.inner.local;
        // The coordinator commits first and only in its session: a prepared put of this
        // node as coordinator was never committed anywhere.
        if manifest.coordinator == local.to_string() {
            return Ok(Some(false));
        }
        let others: Vec<PeerId> = manifest
            .holder_ids()?
            .into_iter()
            .filter(|p| *p != local)
            .collect();
        let session = SessionId::random();
        let mut inbox = self
            .inner
            .router
            .open(session, Protocol::Vault, others.clone())
            .map_err(|e| e.to_string())?;
        let request = Body::VaultStatusRequest {
            name: name.to_string(),
            file_id: file_id.to_string(),
        };
        let failures = self.broadcast(&others, session, &request).await;
        let asked: Vec<PeerId> = others
            .iter()
            .copied()
            .filter(|p| !failures.iter().any(|(f, _)| f == p))
            .collect();
        let (states, _) = inbox
            .collect_until(
                "vault status",
                &asked,
                self.inner.round_timeout,
                |b| match b {
                    Body::VaultStatus { state } => Some(*state),
                    _ => None,
                },
            )
            .await;
        // The coordinator's word decides: it holds the file (committed), or it has not and
        // will not (absent or only prepared: its session is over). Without it, `threshold`
        // holders that hold the file decide for a commit (fewer could be lying members),
        // and every other holder having at most a prepared copy for a drop.
        let coordinator: Option<PeerId> = manifest.coordinator.parse().ok();
        match coordinator.and_then(|c| states.get(&c)) {
            Some(PutState::Committed) => return Ok(Some(true)),
            Some(PutState::Absent | PutState::Prepared) => return Ok(Some(false)),
            Some(PutState::Running) | None => {}
        }
        let committed = states
            .values()
            .filter(|s| **s == PutState::Committed)
            .count();
        if committed >= manifest.threshold as usize {
            return Ok(Some(true));
        }
        let all_answered = states.len() == others.len();
        let none_can = states
            .values()
            .all(|s| matches!(s, PutState::Absent | PutState::Prepared));
        Ok((all_answered && none_can).then_some(false))
    }

    /// Answers whether this node holds (or is putting) file `file_id` named `name`.
    pub(super) fn answer_vault_status(
        &self,
        session: SessionId,
        from: PeerId,
        name: String,
        file_id: String,
    ) -> Result<(), InviteRefusal> {
        check_name(&name).map_err(InviteRefusal::Other)?;
        let state = match self.vault().get(&name) {
            Some(held) if held.file_id == file_id => PutState::Committed,
            _ => self.vault().put_state(&name, &file_id),
        };
        self.reply(from, session, Body::VaultStatus { state });
        Ok(())
    }

    /// Releases file `name` (id `file_id`) to the holder of `recipient` under K approvals
    /// of its clients: the header (the shares the holders released) once enough did, then
    /// the ciphertext through the returned channel.
    pub async fn vault_get(
        &self,
        name: &str,
        file_id: &str,
        recipient: &str,
        authorizations: Vec<Authorization>,
    ) -> VaultResult<(GetHeader, mpsc::Receiver<Result<Bytes, String>>)> {
        check_name(name).map_err(MpcError::BadRequest)?;
        let held = self
            .vault()
            .get(name)
            .ok_or_else(|| MpcError::UnknownFile(name.to_string()))?;
        let id = hex32(file_id, "file_id").map_err(MpcError::BadRequest)?;
        let recipient_key = hex32(recipient, "recipient").map_err(MpcError::BadRequest)?;
        if held.file_id != file_id {
            return Err(MpcError::Conflict(format!(
                "`{name}` here is file {}, not {file_id}",
                held.file_id
            )));
        }
        let m = &held.manifest;
        let what = Approves::VaultGet {
            file_id: id,
            recipient: recipient_key,
        };
        if !self.inner.faults.skip_vault_authorization {
            let pending = self.inner.replay_guard.admit_vault(
                &m.policy.clients,
                m.policy.approvals,
                name,
                what,
                &authorizations,
                super::policy::now(),
            )?;
            pending.persist().await?;
        }
        let holders = m.holder_ids().map_err(MpcError::Internal)?;
        let local = self.inner.local;
        let others: Vec<PeerId> = holders.iter().copied().filter(|p| *p != local).collect();
        let session = SessionId::random();
        let inbox = self
            .inner
            .router
            .open(session, Protocol::Vault, others.clone())
            .map_err(|error| MpcError::Session { session, error })?;
        let (header_tx, header_rx) = oneshot::channel();
        let (data_tx, data_rx) = mpsc::channel(4);
        let engine = self.clone();
        let request = Body::VaultGetInvite {
            name: name.to_string(),
            file_id: file_id.to_string(),
            recipient: Blob(Bytes::copy_from_slice(&recipient_key)),
            authorizations,
        };
        tokio::spawn(
            async move {
                let run =
                    engine.run_vault_get(inbox, held, recipient_key, request, header_tx, data_tx);
                let _ = engine
                    .run_session(Protocol::Vault, "coordinator", session, others, run)
                    .await;
            }
            .in_current_span(),
        );
        match header_rx.await {
            Ok(Ok(header)) => Ok((header, data_rx)),
            Ok(Err(error)) => Err(match error {
                SessionError::Refused { .. } => MpcError::Session { session, error },
                error => MpcError::Session { session, error },
            }),
            Err(_) => Err(MpcError::Internal("the get ended without an answer".into())),
        }
    }

    async fn run_vault_get(
        &self,
        mut inbox: SessionInbox,
        held: HeldFile,
        recipient: [u8; 32],
        request: Body,
        header_tx: oneshot::Sender<Result<GetHeader, SessionError>>,
        data: mpsc::Sender<Result<Bytes, String>>,
    ) -> Result<(), SessionError> {
        let session = inbox.session();
        let local = self.inner.local;
        let m = &held.manifest;
        let holders = m.holder_ids().map_err(SessionError::failed)?;
        let t = m.threshold as usize;
        let others: Vec<PeerId> = holders.iter().copied().filter(|p| *p != local).collect();
        let header = async {
            let failures = self.broadcast(&others, session, &request).await;
            let mut missing: Vec<(String, String)> = failures
                .iter()
                .map(|(p, e)| (p.to_string(), e.to_string()))
                .collect();
            let asked: Vec<PeerId> = others
                .iter()
                .copied()
                .filter(|p| !failures.iter().any(|(f, _)| f == p))
                .collect();
            let (released, silent) = inbox
                .collect_until(
                    "vault released share",
                    &asked,
                    self.inner.round_timeout,
                    |b| match b {
                        Body::VaultReleased { share } => Some(share.clone()),
                        _ => None,
                    },
                )
                .await;
            let mut shares = vec![self.release_share(&held, &recipient)?];
            let mut serving = vec![local];
            for peer in &asked {
                match released.get(peer) {
                    Some(share) if share.holder == peer.to_string() => {
                        shares.push(share.clone());
                        serving.push(*peer);
                    }
                    Some(_) => missing.push((
                        peer.to_string(),
                        "released a share under another holder's name".into(),
                    )),
                    None => missing.push((
                        peer.to_string(),
                        silent
                            .get(peer)
                            .cloned()
                            .unwrap_or_else(|| "no answer".into()),
                    )),
                }
            }
            if shares.len() < t {
                if let Some(refused) = SessionError::refused_by_holders(&failures) {
                    return Err(refused);
                }
                return Err(SessionError::failed(format!(
                    "{} of the {} holders released their key share; {t} are needed ({})",
                    shares.len(),
                    holders.len(),
                    missing
                        .iter()
                        .map(|(p, why)| format!("{p}: {why}"))
                        .collect::<Vec<_>>()
                        .join("; ")
                )));
            }
            Ok((
                GetHeader {
                    file_id: held.file_id.clone(),
                    manifest: held.manifest.clone(),
                    shares,
                    missing,
                },
                serving,
            ))
        }
        .await;
        let serving = match header {
            Ok((header, serving)) => {
                let _ = header_tx.send(Ok(header));
                serving
            }
            Err(e) => {
                let _ = header_tx.send(Err(e.clone()));
                return Err(e);
            }
        };
        let result = self
            .stream_fragments(&mut inbox, &held, &holders, serving, &data)
            .await;
        // Whatever happened, the holders are done.
        let _ = self.broadcast(&others, session, &Body::VaultDone).await;
        if let Err(e) = &result {
            let _ = data.send(Err(e.to_string())).await;
        }
        result
    }

    /// This node's own key share of `held`, opened with its HPKE key (in memory only).
    pub(super) fn own_share(&self, held: &HeldFile) -> Result<[u8; 32], SessionError> {
        let m = &held.manifest;
        let sealed = self
            .vault()
            .sealed_share(&m.name)
            .map_err(SessionError::failed)?;
        let failed = |e: String| SessionError::failed(format!("this holder's own key share: {e}"));
        let enc = hex::decode(&sealed.enc).map_err(|e| failed(e.to_string()))?;
        let ct = hex::decode(&sealed.ciphertext).map_err(|e| failed(e.to_string()))?;
        self.agg()
            .key
            .open_with(
                SHARE_INFO,
                &enc,
                &ct,
                &share_aad(&m.terms(), &self.inner.local),
            )
            .map_err(failed)?
            .as_slice()
            .try_into()
            .map_err(|_| failed("not 32 bytes".into()))
    }

    /// This node's own key share of `held`, opened and sealed again to `recipient`, signed.
    fn release_share(
        &self,
        held: &HeldFile,
        recipient: &[u8],
    ) -> Result<ReleasedShare, SessionError> {
        let agg = self.agg();
        let local = self.inner.local;
        let mut share = self.own_share(held)?;
        if self.inner.faults.corrupt_vault_share {
            // Another valid scalar: the share of a neighbouring point.
            share[0] ^= 1;
        }
        let (enc, ct) = encryption::seal_with(
            RELEASE_INFO,
            recipient,
            &share,
            &release_aad(&held.file_id, &local, recipient),
        )
        .map_err(SessionError::failed)?;
        let share = SealedShare {
            enc: hex::encode(enc),
            ciphertext: hex::encode(ct),
        };
        let signature = NodeSignature::sign_bytes(
            &agg.identity,
            &released_bytes(&held.file_id, recipient, &share),
        )
        .map_err(SessionError::failed)?;
        Ok(ReleasedShare {
            holder: local.to_string(),
            share,
            signature,
        })
    }

    /// Rebuilds the ciphertext stripe by stripe from `k` holders among `serving` (this node
    /// first) and sends it to `data`.
    async fn stream_fragments(
        &self,
        inbox: &mut SessionInbox,
        held: &HeldFile,
        holders: &[PeerId],
        serving: Vec<PeerId>,
        data: &mpsc::Sender<Result<Bytes, String>>,
    ) -> Result<(), SessionError> {
        let session = inbox.session();
        let local = self.inner.local;
        let m = &held.manifest;
        let coding = m.coding().map_err(SessionError::failed)?;
        let k = m.threshold as usize;
        let total = coding.stripes(m.ciphertext_bytes);
        let index = |p: &PeerId| holders.iter().position(|h| h == p).expect("a holder");
        let mut usable: Vec<PeerId> = serving;
        let mut blamed: Vec<PeerId> = Vec::new();
        let mut left = m.ciphertext_bytes;
        let mut batch_start = 0u64;
        while batch_start < total {
            let count = WINDOW.min(total - batch_start);
            // Fragments of this batch by stripe, by holder index.
            let mut got: BTreeMap<u64, BTreeMap<usize, Vec<u8>>> = BTreeMap::new();
            let mut tried: BTreeSet<PeerId> = BTreeSet::new();
            loop {
                let short = (batch_start..batch_start + count)
                    .any(|s| got.get(&s).map_or(0, BTreeMap::len) < k);
                if !short {
                    break;
                }
                let need = (batch_start..batch_start + count)
                    .map(|s| k - got.get(&s).map_or(0, BTreeMap::len).min(k))
                    .max()
                    .unwrap_or(0);
                let sources: Vec<PeerId> = usable
                    .iter()
                    .copied()
                    .filter(|p| !tried.contains(p))
                    .take(need)
                    .collect();
                if sources.len() < need {
                    return Err(SessionError::blame(
                        blamed.clone(),
                        format!(
                            "stripes {batch_start}..{}: fewer than {k} holders returned good fragments",
                            batch_start + count
                        ),
                    ));
                }
                tried.extend(sources.iter().copied());
                let remote: Vec<PeerId> = sources.iter().copied().filter(|p| *p != local).collect();
                let ask = Body::VaultFragmentsRequest {
                    from: batch_start,
                    count: count as u32,
                };
                let failures = self.broadcast(&remote, session, &ask).await;
                for (p, e) in &failures {
                    warn!(peer = %p, error = %e, "vault holder unreachable during a get");
                    usable.retain(|u| u != p);
                }
                if sources.contains(&local) {
                    let j = index(&local);
                    let own: Result<Vec<(u64, Vec<u8>)>, String> = (batch_start
                        ..batch_start + count)
                        .map(|s| {
                            let f = self.vault().read_fragment(held, s)?;
                            let hash = hex::encode(core::fragment_hash(&f));
                            if m.hash_of(s, j) == Some(hash.as_str()) {
                                Ok((s, f))
                            } else {
                                Err(format!("stripe {s}: not the manifest's"))
                            }
                        })
                        .collect();
                    match own {
                        Ok(fragments) => {
                            for (s, f) in fragments {
                                got.entry(s).or_default().insert(j, f);
                            }
                        }
                        Err(e) => {
                            warn!(error = %e, "this holder's own fragments of a vault file are damaged; the other holders' are used");
                            usable.retain(|u| *u != local);
                        }
                    }
                }
                let answering: Vec<PeerId> = remote
                    .iter()
                    .copied()
                    .filter(|p| !failures.iter().any(|(f, _)| f == p))
                    .collect();
                let mut pending: BTreeMap<PeerId, u64> =
                    answering.iter().map(|p| (*p, count)).collect();
                // One deadline for the batch: a holder that trickles is dropped, not waited on.
                let deadline = tokio::time::Instant::now() + self.inner.round_timeout;
                while !pending.is_empty() {
                    let waiting: Vec<PeerId> = pending.keys().copied().collect();
                    let next = inbox
                        .next_of("vault fragment", &waiting, deadline, |b| match b {
                            Body::VaultFragment { stripe, data } => Some((*stripe, data.clone())),
                            _ => None,
                        })
                        .await;
                    let (from, (stripe, fragment)) = match next {
                        Ok(v) => v,
                        Err(_) => {
                            // Those that did not finish are not used again.
                            for p in waiting {
                                warn!(peer = %p, "vault holder sent too few fragments in time");
                                usable.retain(|u| *u != p);
                            }
                            break;
                        }
                    };
                    let j = index(&from);
                    let good = (batch_start..batch_start + count).contains(&stripe)
                        && m.hash_of(stripe, j)
                            == Some(hex::encode(core::fragment_hash(&fragment.0)).as_str());
                    if !good {
                        warn!(peer = %from, stripe, "vault holder returned a fragment that is not the manifest's; blamed");
                        blamed.push(from);
                        usable.retain(|u| *u != from);
                        pending.remove(&from);
                        for s in batch_start..batch_start + count {
                            if let Some(by) = got.get_mut(&s) {
                                by.remove(&j);
                            }
                        }
                        continue;
                    }
                    got.entry(stripe)
                        .or_default()
                        .insert(j, fragment.0.to_vec());
                    if let Some(left) = pending.get_mut(&from) {
                        *left -= 1;
                        if *left == 0 {
                            pending.remove(&from);
                        }
                    }
                }
            }
            for s in batch_start..batch_start + count {
                let mut slots: Vec<Option<Vec<u8>>> = vec![None; holders.len()];
                for (j, f) in got.remove(&s).unwrap_or_default() {
                    slots[j] = Some(f);
                }
                let len = left.min(coding.stripe_bytes() as u64) as usize;
                let stripe = coding.decode(slots, len).map_err(SessionError::failed)?;
                left -= len as u64;
                if data.send(Ok(Bytes::from(stripe))).await.is_err() {
                    return Err(SessionError::failed("the client went away"));
                }
            }
            batch_start += count;
        }
        if !blamed.is_empty() {
            warn!(name = %m.name, blamed = %super::session::join_peers(&blamed), "vault file served around holders with bad fragments");
        }
        Ok(())
    }

    /// A holder's answer to a get: the file and its id, the approvals (checked and made
    /// durable here), then the share and the fragments asked for in a task.
    pub(super) fn join_vault_get(
        &self,
        session: SessionId,
        from: PeerId,
        name: String,
        file_id: String,
        recipient: Blob,
        authorizations: Vec<Authorization>,
    ) -> Result<(), InviteRefusal> {
        let recipient: [u8; 32] = recipient
            .0
            .as_ref()
            .try_into()
            .map_err(|_| InviteRefusal::Other("the recipient key is not 32 bytes".into()))?;
        let (held, pending) =
            self.admit_holder_request(&name, &file_id, from, &authorizations, |file_id| {
                Approves::VaultGet { file_id, recipient }
            })?;
        self.spawn_participant(
            Protocol::Vault,
            session,
            vec![from],
            move |engine, inbox| async move {
                pending
                    .persist()
                    .await
                    .map_err(|r| SessionError::failed(r.to_string()))?;
                engine.serve_vault_get(inbox, from, held, recipient).await
            },
        )
    }

    /// A holder's checks of a get or delete coordinated by `from`: the file is held here as
    /// `file_id`, `from` holds it too, and the approvals of `what` pass this holder's own
    /// copy of the file's policy (their request ids reserved; the caller makes them durable).
    fn admit_holder_request(
        &self,
        name: &str,
        file_id: &str,
        from: PeerId,
        authorizations: &[Authorization],
        what: impl FnOnce([u8; 32]) -> Approves<'static>,
    ) -> Result<(HeldFile, super::replay_guard::Pending), InviteRefusal> {
        let held = self.held_for(name, file_id, &from)?;
        let id = hex32(file_id, "file_id").map_err(InviteRefusal::Other)?;
        let m = &held.manifest;
        let pending = self
            .inner
            .replay_guard
            .admit_vault(
                &m.policy.clients,
                m.policy.approvals,
                name,
                what(id),
                authorizations,
                super::policy::now(),
            )
            .map_err(|refusal| InviteRefusal::Policy {
                peer: self.inner.local,
                refusal,
            })?;
        Ok((held, pending))
    }

    async fn serve_vault_get(
        &self,
        mut inbox: SessionInbox,
        from: PeerId,
        held: HeldFile,
        recipient: [u8; 32],
    ) -> Result<(), SessionError> {
        let session = inbox.session();
        let share = self.release_share(&held, &recipient)?;
        self.send(from, session, Body::VaultReleased { share })
            .await
            .map_err(|e| unreachable_error(vec![(from, e)], "the released share"))?;
        self.serve_fragments(&mut inbox, from, &held).await
    }

    /// Sends `from` the fragments of this holder it asks for (at most [`WINDOW`] stripes a
    /// request) until it says it is done.
    pub(super) async fn serve_fragments(
        &self,
        inbox: &mut SessionInbox,
        from: PeerId,
        held: &HeldFile,
    ) -> Result<(), SessionError> {
        let session = inbox.session();
        let total = held
            .manifest
            .coding()
            .map_err(SessionError::failed)?
            .stripes(held.manifest.ciphertext_bytes);
        loop {
            let deadline = tokio::time::Instant::now() + self.inner.round_timeout * 3;
            let (_, asked) = inbox
                .next_of("vault fragments request", &[from], deadline, |b| match b {
                    Body::VaultFragmentsRequest { from, count } => Some(Some((*from, *count))),
                    Body::VaultDone => Some(None),
                    _ => None,
                })
                .await?;
            let Some((start, count)) = asked else {
                return Ok(());
            };
            let end = start.saturating_add(u64::from(count)).min(total);
            if count as u64 > WINDOW || start >= total {
                return Err(SessionError::blame(
                    vec![from],
                    format!("{from} asked for fragments {start}+{count} of {total}"),
                ));
            }
            for stripe in start..end {
                let fragment = self
                    .vault()
                    .read_fragment(held, stripe)
                    .map_err(SessionError::failed)?;
                self.send(
                    from,
                    session,
                    Body::VaultFragment {
                        stripe,
                        data: Blob(fragment.into()),
                    },
                )
                .await
                .map_err(|e| unreachable_error(vec![(from, e)], "a fragment"))?;
            }
        }
    }

    /// Deletes file `name` (id `file_id`) on every holder, under K approvals of its clients.
    pub async fn vault_delete(
        &self,
        name: &str,
        file_id: &str,
        authorizations: Vec<Authorization>,
    ) -> VaultResult<DeleteResult> {
        check_name(name).map_err(MpcError::BadRequest)?;
        let held = self
            .vault()
            .get(name)
            .ok_or_else(|| MpcError::UnknownFile(name.to_string()))?;
        let id = hex32(file_id, "file_id").map_err(MpcError::BadRequest)?;
        if held.file_id != file_id {
            return Err(MpcError::Conflict(format!(
                "`{name}` here is file {}, not {file_id}",
                held.file_id
            )));
        }
        let m = &held.manifest;
        self.inner
            .replay_guard
            .admit_vault(
                &m.policy.clients,
                m.policy.approvals,
                name,
                Approves::VaultDelete { file_id: id },
                &authorizations,
                super::policy::now(),
            )?
            .persist()
            .await?;
        let local = self.inner.local;
        let others: Vec<PeerId> = m
            .holder_ids()
            .map_err(MpcError::Internal)?
            .into_iter()
            .filter(|p| *p != local)
            .collect();
        self.vault()
            .delete(name, file_id)
            .map_err(MpcError::Internal)?;
        info!(name, file_id, "vault file deleted here");
        let session = SessionId::random();
        let mut inbox = self
            .inner
            .router
            .open(session, Protocol::Vault, others.clone())
            .map_err(|error| MpcError::Session { session, error })?;
        let request = Body::VaultDeleteInvite {
            name: name.to_string(),
            file_id: file_id.to_string(),
            authorizations,
        };
        let run = async {
            let failures = self.broadcast(&others, session, &request).await;
            let mut not_deleted: Vec<(String, String)> = failures
                .iter()
                .map(|(p, e)| (p.to_string(), e.to_string()))
                .collect();
            let asked: Vec<PeerId> = others
                .iter()
                .copied()
                .filter(|p| !failures.iter().any(|(f, _)| f == p))
                .collect();
            let (answers, silent) = inbox
                .collect_until("vault deleted", &asked, self.inner.round_timeout, |b| {
                    matches!(b, Body::VaultDeleted).then_some(())
                })
                .await;
            let mut deleted_on = vec![local.to_string()];
            for p in &asked {
                if answers.contains_key(p) {
                    deleted_on.push(p.to_string());
                } else {
                    not_deleted.push((
                        p.to_string(),
                        silent.get(p).cloned().unwrap_or_else(|| "no answer".into()),
                    ));
                }
            }
            Ok(DeleteResult {
                name: name.to_string(),
                file_id: file_id.to_string(),
                deleted_on,
                not_deleted,
            })
        };
        self.run_session(Protocol::Vault, "coordinator", session, others.clone(), run)
            .await
            .map_err(|error| MpcError::Session { session, error })
    }

    /// A holder's answer to a delete: the approvals, checked and made durable here, then the
    /// deletion.
    pub(super) fn join_vault_delete(
        &self,
        session: SessionId,
        from: PeerId,
        name: String,
        file_id: String,
        authorizations: Vec<Authorization>,
    ) -> Result<(), InviteRefusal> {
        let (_, pending) =
            self.admit_holder_request(&name, &file_id, from, &authorizations, |file_id| {
                Approves::VaultDelete { file_id }
            })?;
        self.spawn_participant(
            Protocol::Vault,
            session,
            vec![from],
            move |engine, _inbox| async move {
                pending
                    .persist()
                    .await
                    .map_err(|r| SessionError::failed(r.to_string()))?;
                engine
                    .vault()
                    .delete(&name, &file_id)
                    .map_err(SessionError::failed)?;
                info!(%name, %file_id, coordinator = %from, "vault file deleted here");
                engine
                    .send(from, session, Body::VaultDeleted)
                    .await
                    .map_err(|e| unreachable_error(vec![(from, e)], "the deletion's answer"))
            },
        )
    }

    /// Answers a request for this holder's HPKE key.
    pub(super) fn answer_vault_keys(
        &self,
        session: SessionId,
        from: PeerId,
    ) -> Result<(), InviteRefusal> {
        let key = self
            .own_key()
            .map_err(|e| InviteRefusal::Other(e.to_string()))?;
        self.reply(from, session, Body::VaultKeys { key });
        Ok(())
    }

    /// Settles the puts that were prepared when the node stopped.
    pub fn resolve_vault_at_start(&self, prepared: Vec<(String, String, std::path::PathBuf)>) {
        for (name, file_id, dir) in prepared {
            info!(%name, %file_id, "a vault put was prepared when the node stopped; asking the other holders");
            self.resolve_prepared(name, file_id, dir);
        }
    }
}

/// Checks that `key` is `peer`'s HPKE key, signed by its identity key.
pub fn check_key(peer: &PeerId, key: &ParticipantKey) -> Result<(), String> {
    if key.peer_id != peer.to_string() {
        return Err(format!("the key of {peer} names {}", key.peer_id));
    }
    let decode = |s: &str, what: &str| {
        hex::decode(s).map_err(|e| format!("the {what} of {peer} is not hex: {e}"))
    };
    encryption::verify_binding(
        peer,
        &decode(&key.identity_public_key, "identity key")?,
        &decode(&key.hpke_public_key, "HPKE key")?,
        &decode(&key.signature, "signature")?,
    )
}

/// Opens this node's sealed share of a put and checks it against the plan's commitment.
fn check_sealed_share(engine: &MpcEngine, plan: &Plan, share: &SealedShare) -> Result<(), String> {
    let local = engine.inner.local;
    let enc = hex::decode(&share.enc).map_err(|e| format!("the sealed share: {e}"))?;
    let ct = hex::decode(&share.ciphertext).map_err(|e| format!("the sealed share: {e}"))?;
    let opened = engine
        .agg()
        .key
        .open_with(
            SHARE_INFO,
            &enc,
            &ct,
            &share_aad(&plan.manifest(String::new(), Vec::new()).terms(), &local),
        )
        .map_err(|e| format!("the key share for {local} does not open with its key for these terms (name, holders, threshold, policy, size, commitment, put id): {e}"))?;
    let bytes: [u8; 32] = opened
        .as_slice()
        .try_into()
        .map_err(|_| "the key share is not 32 bytes".to_string())?;
    let commitment = hex::decode(&plan.commitment).map_err(|e| format!("commitment: {e}"))?;
    core::check_share(&commitment, &local, &bytes)
        .map_err(|e| format!("the key share for {local} does not match the commitment: {e}"))
}
