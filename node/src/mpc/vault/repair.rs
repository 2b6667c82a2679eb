//! Repair: a holder that lost vault files (its data directory wiped, its disk replaced)
//! gets them back from the other holders, in the background.
//!
//! Every [`REPAIR_EVERY`] (and shortly after start) a node asks each roster member which
//! files it holds that name this node as a holder ([`Body::VaultListRequest`]). For each one
//! it lacks, it takes the manifest from one of them (checked against its id) and asks
//! `threshold` of them to help ([`Body::VaultRepairInvite`]):
//!
//! - **Its key share**, by frost-core's repairable threshold scheme: each helper splits
//!   `λ·share` into random deltas, one for each helper (sent directly, never through the
//!   node being repaired); each helper sends the sum of what it received (a sigma) to the
//!   node, whose sum of sigmas is its share. No helper learns it; the node checks it against
//!   the manifest's commitment, and stores it sealed to its own HPKE key.
//! - **Its fragments**: the helpers' fragments (each checked against the manifest), from
//!   which Reed-Solomon rebuilds this node's fragment of each stripe, checked against the
//!   manifest too.
//!
//! Then the file is staged, prepared and committed here like a put's. A helper checks that
//! it holds the file and that the asker is one of its holders; a hostile holder can at most
//! make `threshold` holders help it to its own share, which it may have anyway.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use libp2p::PeerId;
use tracing::{Instrument, info, warn};

use super::core::{self, Manifest};
use super::store::{HeldFile, SealedShare};
use super::{PutState, SHARE_INFO, WINDOW, share_aad};
use crate::mpc::aggregation::encryption;
use crate::mpc::session::{SessionError, SessionInbox, unreachable_error};
use crate::mpc::wire::{Blob, Body, Protocol, SessionId};
use crate::mpc::{InviteRefusal, MpcEngine};

/// How often a node looks for files it lost.
pub const REPAIR_EVERY: Duration = Duration::from_secs(60);
/// The first look, after start.
const FIRST_REPAIR_AFTER: Duration = Duration::from_secs(5);
/// Files one list answer names at most (the asker pages with `after`).
pub const LIST_PAGE: usize = 256;

/// The digest of one repair's helper set: session, file id, the holder repaired and the
/// sorted helpers.
fn helper_set_digest(
    session: SessionId,
    file_id: &str,
    repaired: &PeerId,
    helpers: &[PeerId],
) -> [u8; 32] {
    let mut sorted = helpers.to_vec();
    sorted.sort();
    crate::mpc::digest::Fields::new(b"p2p-mpc vault repair helpers v1\0")
        .field(&session.0)
        .field(file_id.as_bytes())
        .field(&repaired.to_bytes())
        .peers(&sorted)
        .finish()
}

/// Most list pages one member is asked for in one round (256 files each).
const MAX_PAGES: usize = 16;

impl MpcEngine {
    /// Starts the background repair loop.
    pub fn start_vault_repair(&self) {
        let engine = self.clone();
        tokio::spawn(
            async move {
                tokio::time::sleep(FIRST_REPAIR_AFTER).await;
                loop {
                    if let Err(e) = engine.repair_round().await {
                        warn!(error = %e, "vault repair round failed");
                    }
                    tokio::time::sleep(REPAIR_EVERY).await;
                }
            }
            .in_current_span(),
        );
    }

    /// One look for files this node should hold and does not, and their repair.
    async fn repair_round(&self) -> Result<(), String> {
        let Some(members) = self.inner.roster.members() else {
            return Ok(());
        };
        let local = self.inner.local;
        let mut reported: BTreeMap<(String, String), BTreeSet<PeerId>> = BTreeMap::new();
        for peer in members.into_iter().filter(|p| *p != local) {
            let mut after: Option<String> = None;
            for _ in 0..MAX_PAGES {
                let page = match self.list_files_naming_me(peer, after.clone()).await {
                    Ok(p) => p,
                    Err(_) => break,
                };
                // A page is names in increasing order after the last one, each a valid name
                // with a file id; anything else ends this member's list for this round.
                let mut last = after.clone();
                let valid = page.len() <= LIST_PAGE
                    && page.iter().all(|(n, id)| {
                        let ok = core::check_name(n).is_ok()
                            && last.as_ref().is_none_or(|l| n > l)
                            && id.len() == 64
                            && id.bytes().all(|b| b.is_ascii_hexdigit());
                        last = Some(n.clone());
                        ok
                    });
                if !valid {
                    warn!(%peer, "a vault list answer out of order or malformed; ignored");
                    break;
                }
                let full = page.len() == LIST_PAGE;
                after = last;
                for file in page {
                    reported.entry(file).or_default().insert(peer);
                }
                if !full {
                    break;
                }
            }
        }
        for ((name, file_id), holders) in reported {
            let holders: Vec<PeerId> = holders.into_iter().collect();
            let held = self.vault().get(&name);
            if held.is_some() || self.vault().put_state(&name, &file_id) != PutState::Absent {
                continue;
            }
            match self.repair_file(&name, &file_id, &holders).await {
                Ok(()) => {
                    info!(%name, %file_id, "vault file repaired: this holder's fragments and key share rebuilt from the others")
                }
                Err(e) => {
                    warn!(%name, %file_id, error = %e, "vault file could not be repaired yet")
                }
            }
        }
        Ok(())
    }

    /// The files `peer` holds that name this node as a holder, after `after` by name.
    async fn list_files_naming_me(
        &self,
        peer: PeerId,
        after: Option<String>,
    ) -> Result<Vec<(String, String)>, SessionError> {
        let session = SessionId::random();
        let mut inbox = self
            .inner
            .router
            .open(session, Protocol::Vault, [peer])
            .map_err(|e| SessionError::failed(e.to_string()))?;
        self.send(peer, session, Body::VaultListRequest { after })
            .await
            .map_err(|e| unreachable_error(vec![(peer, e)], "a list request"))?;
        let got = inbox
            .collect(
                "vault list",
                &[peer],
                self.inner.round_timeout,
                |b| match b {
                    Body::VaultList { files } => Some(files.clone()),
                    _ => None,
                },
            )
            .await?;
        Ok(got.into_values().next().unwrap_or_default())
    }

    /// Rebuilds file `name` here with the help of `reporters` (holders that have it).
    async fn repair_file(
        &self,
        name: &str,
        file_id: &str,
        reporters: &[PeerId],
    ) -> Result<(), String> {
        let local = self.inner.local;
        let manifest = self.fetch_manifest(name, file_id, reporters).await?;
        let holders = manifest.holder_ids()?;
        let me = holders
            .iter()
            .position(|p| *p == local)
            .ok_or("the manifest does not name this node")?;
        let t = manifest.threshold as usize;
        let helpers: Vec<PeerId> = reporters
            .iter()
            .copied()
            .filter(|p| holders.contains(p) && *p != local)
            .take(t)
            .collect();
        if helpers.len() < t {
            return Err(format!(
                "{} holders have it, {t} are needed to rebuild it",
                helpers.len()
            ));
        }
        let session = SessionId::random();
        let inbox = self
            .inner
            .router
            .open(session, Protocol::Vault, helpers.clone())
            .map_err(|e| e.to_string())?;
        let run = self.run_repair(inbox, manifest, file_id.to_string(), me, helpers.clone());
        self.run_session(Protocol::Vault, "repaired", session, helpers, run)
            .await
            .map_err(|e| e.to_string())
    }

    async fn fetch_manifest(
        &self,
        name: &str,
        file_id: &str,
        from: &[PeerId],
    ) -> Result<Manifest, String> {
        let mut last = String::from("no holder answered");
        for peer in from {
            let session = SessionId::random();
            let mut inbox = self
                .inner
                .router
                .open(session, Protocol::Vault, [*peer])
                .map_err(|e| e.to_string())?;
            let ask = Body::VaultManifestRequest {
                name: name.to_string(),
                file_id: file_id.to_string(),
            };
            if let Err(e) = self.send(*peer, session, ask).await {
                last = e.to_string();
                continue;
            }
            let got = inbox
                .collect(
                    "vault manifest",
                    &[*peer],
                    self.inner.round_timeout,
                    |b| match b {
                        Body::VaultManifestAnswer { manifest } => Some(manifest.clone()),
                        _ => None,
                    },
                )
                .await;
            let Ok(got) = got else {
                last = format!("{peer} did not answer");
                continue;
            };
            let bytes = &got[peer].0;
            match serde_json::from_slice::<Manifest>(bytes) {
                Ok(m) if m.check().is_ok() && m.file_id() == file_id && m.name == name => {
                    return Ok(m);
                }
                _ => last = format!("{peer} sent a manifest that is not of file {file_id}"),
            }
        }
        Err(last)
    }

    async fn run_repair(
        &self,
        mut inbox: SessionInbox,
        manifest: Manifest,
        file_id: String,
        me: usize,
        helpers: Vec<PeerId>,
    ) -> Result<(), SessionError> {
        let local = self.inner.local;
        let name = manifest.name.clone();
        let invite = Body::VaultRepairInvite {
            name: name.clone(),
            file_id: file_id.clone(),
            helpers: helpers.iter().map(ToString::to_string).collect(),
        };
        self.broadcast_round(&mut inbox, &helpers, &invite, "the repair request")
            .await?;
        let sigmas = inbox
            .collect(
                "vault repair sigma",
                &helpers,
                self.inner.round_timeout,
                |b| match b {
                    Body::VaultSigma { sigma } => Some(sigma.0.to_vec()),
                    _ => None,
                },
            )
            .await?;
        let holders = manifest.holder_ids().map_err(SessionError::failed)?;
        let commitment =
            hex::decode(&manifest.commitment).map_err(|e| SessionError::failed(e.to_string()))?;
        let share = core::repaired_share(
            &commitment,
            &local,
            &holders,
            &sigmas.into_values().collect::<Vec<_>>(),
        )
        .map_err(|e| SessionError::blame(helpers.clone(), e))?;
        let (enc, ct) = encryption::seal_with(
            SHARE_INFO,
            self.agg().key.public_key(),
            &share,
            &share_aad(&manifest.terms(), &local),
        )
        .map_err(SessionError::failed)?;
        let sealed = SealedShare {
            enc: hex::encode(enc),
            ciphertext: hex::encode(ct),
        };

        let session = inbox.session();
        let mut staging = self
            .vault()
            .stage(&name, &session.to_string())
            .map_err(SessionError::failed)?;
        let coding = manifest.coding().map_err(SessionError::failed)?;
        let total = coding.stripes(manifest.ciphertext_bytes);
        let index: BTreeMap<PeerId, usize> =
            holders.iter().enumerate().map(|(i, p)| (*p, i)).collect();
        let mut start = 0u64;
        while start < total {
            let count = WINDOW.min(total - start);
            let ask = Body::VaultFragmentsRequest {
                from: start,
                count: count as u32,
            };
            self.broadcast_round(&mut inbox, &helpers, &ask, "a fragments request")
                .await?;
            let mut got: BTreeMap<u64, Vec<Option<Vec<u8>>>> = BTreeMap::new();
            let mut left: BTreeMap<PeerId, u64> = helpers.iter().map(|p| (*p, count)).collect();
            // One deadline for the whole window: a helper that trickles cannot stretch it.
            let deadline = tokio::time::Instant::now() + self.inner.round_timeout;
            while !left.is_empty() {
                let waiting: Vec<PeerId> = left.keys().copied().collect();
                let (from, (stripe, data)) = inbox
                    .next_of("vault fragment", &waiting, deadline, |b| match b {
                        Body::VaultFragment { stripe, data } => Some((*stripe, data.clone())),
                        _ => None,
                    })
                    .await?;
                let j = index[&from];
                let good = (start..start + count).contains(&stripe)
                    && manifest.hash_of(stripe, j)
                        == Some(hex::encode(core::fragment_hash(&data.0)).as_str());
                if !good {
                    return Err(SessionError::blame(
                        vec![from],
                        format!("helper {from} sent a fragment that is not the manifest's"),
                    ));
                }
                got.entry(stripe)
                    .or_insert_with(|| vec![None; holders.len()])[j] = Some(data.0.to_vec());
                let n = left.get_mut(&from).expect("waiting");
                *n -= 1;
                if *n == 0 {
                    left.remove(&from);
                }
            }
            for stripe in start..start + count {
                let slots = got.remove(&stripe).unwrap_or_default();
                let mine = coding.rebuild(slots, me).map_err(SessionError::failed)?;
                if manifest.hash_of(stripe, me)
                    != Some(hex::encode(core::fragment_hash(&mine)).as_str())
                {
                    return Err(SessionError::failed(format!(
                        "the rebuilt fragment of stripe {stripe} is not the manifest's"
                    )));
                }
                staging.append(&mine).map_err(SessionError::failed)?;
            }
            start += count;
        }
        let _ = self.broadcast(&helpers, session, &Body::VaultDone).await;
        staging
            .prepare(&manifest, &sealed)
            .map_err(SessionError::failed)?;
        staging.commit().map_err(SessionError::failed)
    }

    /// Answers which files held here name `from` as a holder (by name, after `after`).
    pub(in crate::mpc) fn answer_vault_list(
        &self,
        session: SessionId,
        from: PeerId,
        after: Option<String>,
    ) -> Result<(), InviteRefusal> {
        let asker = from.to_string();
        let engine = self.clone();
        // The scan reads every manifest: off the router, on a blocking thread.
        tokio::spawn(async move {
            let scan = engine.clone();
            let files = tokio::task::spawn_blocking(move || {
                scan.vault()
                    .list()
                    .into_iter()
                    .filter(|f| f.manifest.holders.contains(&asker))
                    .filter(|f| after.as_ref().is_none_or(|a| f.manifest.name > *a))
                    .take(LIST_PAGE)
                    .map(|f| (f.manifest.name, f.file_id))
                    .collect::<Vec<(String, String)>>()
            })
            .await
            .unwrap_or_default();
            let _ = engine.send(from, session, Body::VaultList { files }).await;
        });
        Ok(())
    }

    /// Answers a holder's request for the manifest of a file it holds too.
    pub(in crate::mpc) fn answer_vault_manifest(
        &self,
        session: SessionId,
        from: PeerId,
        name: String,
        file_id: String,
    ) -> Result<(), InviteRefusal> {
        let held = self.held_for(&name, &file_id, &from)?;
        let manifest = Blob(serde_json::to_vec(&held.manifest).expect("encodes").into());
        self.reply(from, session, Body::VaultManifestAnswer { manifest });
        Ok(())
    }

    /// File `name` held here as `file_id`, when `asker` is one of its holders.
    pub(super) fn held_for(
        &self,
        name: &str,
        file_id: &str,
        asker: &PeerId,
    ) -> Result<HeldFile, InviteRefusal> {
        let other = InviteRefusal::Other;
        core::check_name(name).map_err(other)?;
        let held = self
            .vault()
            .get(name)
            .filter(|h| h.file_id == file_id)
            .ok_or_else(|| other(format!("no vault file `{name}` ({file_id}) here")))?;
        if !held.manifest.holders.contains(&asker.to_string()) {
            return Err(other(format!("{asker} does not hold `{name}`")));
        }
        Ok(held)
    }

    /// A helper's side of a repair of `from`'s share and fragments of `name`.
    pub(in crate::mpc) fn join_vault_repair(
        &self,
        session: SessionId,
        from: PeerId,
        name: String,
        file_id: String,
        helpers: Vec<String>,
    ) -> Result<(), InviteRefusal> {
        let other = InviteRefusal::Other;
        let held = self.held_for(&name, &file_id, &from)?;
        let local = self.inner.local;
        let helpers = crate::mpc::parse_peers(&helpers).map_err(other)?;
        let holders = held.manifest.holder_ids().map_err(other)?;
        let distinct: BTreeSet<&PeerId> = helpers.iter().collect();
        if distinct.len() != helpers.len()
            || helpers.len() != held.manifest.threshold as usize
            || !helpers.contains(&local)
            || helpers.contains(&from)
            || helpers.iter().any(|h| !holders.contains(h))
        {
            return Err(other(format!(
                "a repair of `{name}` needs {} distinct holders other than {from} as helpers, this node among them",
                held.manifest.threshold
            )));
        }
        let peers: Vec<PeerId> = helpers
            .iter()
            .copied()
            .filter(|p| *p != local)
            .chain([from])
            .collect();
        self.spawn_participant(Protocol::Vault, session, peers, move |engine, inbox| async move {
            engine.help_repair(inbox, from, held, helpers).await
        })
    }

    async fn help_repair(
        &self,
        mut inbox: SessionInbox,
        from: PeerId,
        held: HeldFile,
        helpers: Vec<PeerId>,
    ) -> Result<(), SessionError> {
        let session = inbox.session();
        let local = self.inner.local;
        let m = &held.manifest;
        let share = self.own_share(&held)?;
        let commitment =
            hex::decode(&m.commitment).map_err(|e| SessionError::failed(e.to_string()))?;
        let deltas = core::repair_deltas(&commitment, &local, &share, &helpers, &from)
            .map_err(SessionError::failed)?;
        let others: Vec<PeerId> = helpers.iter().copied().filter(|p| *p != local).collect();
        // Every helper must have made its deltas for this very set: a holder that gave the
        // helpers different sets would get sigmas of other linear combinations of the
        // shares, enough of which give away the key. A helper sends its sigma only when
        // every other helper's deltas name its own set.
        let set = helper_set_digest(session, &held.file_id, &from, &helpers);
        let mut mine = Vec::new();
        let mut sends = Vec::new();
        for (to, delta) in deltas {
            if to == local {
                mine.push(delta);
            } else {
                sends.push((
                    to,
                    Body::VaultDelta {
                        delta: Blob(delta.into()),
                        helpers: set,
                    },
                ));
            }
        }
        self.send_round(&mut inbox, sends, "a repair delta").await?;
        let received = inbox
            .collect(
                "vault repair delta",
                &others,
                self.inner.round_timeout,
                |b| match b {
                    Body::VaultDelta { delta, helpers } => Some((delta.0.to_vec(), *helpers)),
                    _ => None,
                },
            )
            .await?;
        if let Some((other, _)) = received.iter().find(|(_, (_, s))| *s != set) {
            return Err(SessionError::blame(
                vec![from],
                format!(
                    "helper {other} was asked to repair with another helper set than this node: {from} split the helpers"
                ),
            ));
        }
        mine.extend(received.into_values().map(|(d, _)| d));
        let sigma = core::repair_sigma(&mine).map_err(SessionError::failed)?;
        self.send(
            from,
            session,
            Body::VaultSigma {
                sigma: Blob(sigma.into()),
            },
        )
        .await
        .map_err(|e| unreachable_error(vec![(from, e)], "the repair sigma"))?;
        self.serve_fragments(&mut inbox, from, &held).await
    }
}
