//! Key refresh and resharing as an I/O-free core: no network, no clock, no task. The
//! driver ([`super`]) sends what a round returns and hands in what arrived; every check of
//! an incoming message is made here, at the top of the method that takes it.
//!
//! A reshare moves a key from its current holders (`old`, generation g) to a new set
//! (`new`, generation g + 1) under the same group key and threshold. A refresh is the
//! reshare whose new set is the old one. It is built from two procedures of `frost-core`,
//! nothing of our own:
//!
//! - **Repair** (`keys::repairable`, the repairable threshold scheme of Laing and Stinson):
//!   `t` old holders, the *helpers*, give each joining holder the share of the current
//!   polynomial at its identifier. Each helper splits its Lagrange-weighted share into random
//!   deltas, one per helper; each helper sums the deltas it got into a sigma for the joining
//!   holder; the joining holder sums the sigmas. No helper learns another's share, and the
//!   joining holder learns only its own. It checks its share against the verifying share that
//!   the old public key package implies at its identifier (interpolated in the group), so a
//!   helper that sent a wrong value is caught before anything is stored.
//! - **Refresh** (`keys::refresh`, a DKG of polynomials with constant term zero): every new
//!   holder adds a fresh sharing of zero to its share. The group key stays; every share
//!   changes; old holders left out get no part of the new polynomial, so their old shares do
//!   not combine with new ones. The threshold cannot change (frost-core refuses it, and no
//!   sound way of ours exists).
//!
//! The rounds are types, each consumed by the step that ends it:
//! [`Round1::start`] (deltas between helpers, refresh part 1 among new holders, every old
//! holder's digest of its public key package) → [`Round1::receive`] from every other
//! participant → [`Round1::round2`] (sigmas and the old public key package to joining holders,
//! refresh part 2 among new holders) → [`Round2::receive`] → [`Round2::confirm`] (repaired
//! share checked, refreshed share derived, the confirmation digest) → [`Confirming::receive`]
//! from every new holder → [`Confirming::finish`].
//!
//! The confirmation is a digest over the key id, scheme, threshold, the generation made, both
//! holder sets, the old and the new public key package and the signing policy. An old holder
//! that is dropped takes part (as a helper when needed) and, at the end, only checks that
//! every new holder confirmed the same digest: that is what lets it retire its share.

use std::collections::{BTreeMap, BTreeSet};

use frost_core::keys::repairable::{self, Delta, Sigma};
use frost_core::keys::{PublicKeyPackage, VerifyingShare};
use frost_core::{self as frost, Group, Identifier};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::super::scheme::{self, Scheme, Suite};
use super::super::session::{SessionError, join_peers};
use super::super::{frost_error, frost_identifier};

/// Domain of the confirmation digest.
const CONFIRM_DOMAIN: &[u8] = b"p2p-mpc reshare confirmation v1";
/// Domain of an old holder's digest of the generation it holds.
const OLD_KEY_DOMAIN: &[u8] = b"p2p-mpc reshare current generation v1";

/// What every participant of one reshare agrees on before it starts.
#[derive(Debug, Clone)]
pub struct ReshareSpec {
    pub key_id: String,
    pub scheme: Scheme,
    pub threshold: u16,
    /// The holders of the current generation, sorted.
    pub old: Vec<PeerId>,
    /// The holders of the generation made, sorted.
    pub new: Vec<PeerId>,
    /// The generation made: the current one plus one.
    pub generation: u64,
    /// Digest of what every holder stores of the key besides its share (group key, policy
    /// and its version; the driver's `KeyMetadata`).
    pub metadata_digest: [u8; 32],
}

/// Checks that `peers` is sorted and unique; `what` names it in the error.
fn sorted_unique(peers: &[PeerId], what: &str) -> Result<(), String> {
    if peers.windows(2).all(|w| w[0] < w[1]) {
        Ok(())
    } else {
        Err(format!("the {what} are not sorted and unique"))
    }
}

impl ReshareSpec {
    /// Checks the sets and the threshold; the error says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        sorted_unique(&self.old, "current holders")?;
        sorted_unique(&self.new, "new holders")?;
        let t = usize::from(self.threshold);
        if self.threshold < 2 {
            return Err(format!("threshold {} is below 2", self.threshold));
        }
        if self.old.len() < t {
            return Err(format!(
                "the key has {} holders, fewer than its threshold {t}",
                self.old.len()
            ));
        }
        if self.new.len() < t {
            return Err(format!(
                "{} new holders are fewer than the key's threshold {t}: a threshold key cannot be moved to fewer holders than its threshold (and resharing cannot change the threshold)",
                self.new.len()
            ));
        }
        if self.new.len() > 255 {
            return Err(format!(
                "{} new holders are too many (at most 255)",
                self.new.len()
            ));
        }
        if self.generation == 0 {
            return Err("a reshare makes generation 1 or later".into());
        }
        Ok(())
    }

    /// Everyone who takes part: the old and the new holders, sorted.
    pub fn participants(&self) -> Vec<PeerId> {
        let all: BTreeSet<PeerId> = self.old.iter().chain(&self.new).copied().collect();
        all.into_iter().collect()
    }

    /// The new holders that hold no share yet.
    pub fn joining(&self) -> Vec<PeerId> {
        self.new
            .iter()
            .filter(|p| !self.old.contains(p))
            .copied()
            .collect()
    }

    /// The old holders left out.
    pub fn dropped(&self) -> Vec<PeerId> {
        self.old
            .iter()
            .filter(|p| !self.new.contains(p))
            .copied()
            .collect()
    }

    /// The `threshold` old holders that repair the joining holders' shares: kept holders
    /// first (they take part anyway), then dropped ones, each group in peer id order. Empty
    /// when nobody joins.
    pub fn helpers(&self) -> Vec<PeerId> {
        if self.joining().is_empty() {
            return vec![];
        }
        let kept = self.old.iter().filter(|p| self.new.contains(p));
        let dropped = self.old.iter().filter(|p| !self.new.contains(p));
        kept.chain(dropped)
            .take(usize::from(self.threshold))
            .copied()
            .collect()
    }
}

/// Round 1, from one participant to another; each part is present exactly when both
/// sender and recipient have the role it belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Round1Message {
    /// From an old holder: the SHA-256 of its public key package (the generation it holds).
    #[serde(default)]
    pub old_key: Option<[u8; 32]>,
    /// Helper → helper: for each joining holder (peer id), this recipient's repair delta.
    #[serde(default, deserialize_with = "super::super::wire::peer_list")]
    pub deltas: Vec<(String, Vec<u8>)>,
    /// New holder → new holder: the refresh part-1 package.
    #[serde(default)]
    pub package: Option<Vec<u8>>,
}

/// Round 2, from one participant to another (see [`Round1Message`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Round2Message {
    /// Helper → joining holder: its sigma.
    #[serde(default)]
    pub sigma: Option<Vec<u8>>,
    /// Helper → joining holder: the current public key package.
    #[serde(default)]
    pub old_public_key_package: Option<Vec<u8>>,
    /// New holder → new holder: the refresh part-2 package.
    #[serde(default)]
    pub package: Option<Vec<u8>>,
}

/// Messages for single peers: (recipient, message).
pub type Outgoing<M> = Vec<(PeerId, M)>;

/// What an old holder names in round 1 (and a joining holder checks the public key package
/// it is sent against): the key id, the generation made, the key's metadata and the current
/// public key package, under their own domain.
fn old_key_digest(spec: &ReshareSpec, package: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(OLD_KEY_DOMAIN);
    h.update((spec.key_id.len() as u64).to_be_bytes());
    h.update(spec.key_id.as_bytes());
    h.update(spec.generation.to_be_bytes());
    h.update(spec.metadata_digest);
    h.update((package.len() as u64).to_be_bytes());
    h.update(package);
    h.finalize().into()
}

/// What this node is in the reshare.
#[derive(Debug, Clone, Copy)]
struct Roles {
    old: bool,
    new: bool,
    helper: bool,
    joining: bool,
}

/// The parts of a reshare that every round carries.
struct Common<C: Suite> {
    spec: ReshareSpec,
    local: PeerId,
    me: Roles,
    participants: Vec<PeerId>,
    helpers: Vec<PeerId>,
    joining: Vec<PeerId>,
    ids: BTreeMap<Identifier<C>, PeerId>,
    id_of: BTreeMap<PeerId, Identifier<C>>,
}

impl<C: Suite> Common<C> {
    fn roles(&self, peer: &PeerId) -> Roles {
        let old = self.spec.old.contains(peer);
        let new = self.spec.new.contains(peer);
        Roles {
            old,
            new,
            helper: self.helpers.contains(peer),
            joining: new && !old,
        }
    }

    fn others(&self) -> Vec<PeerId> {
        self.participants
            .iter()
            .filter(|p| **p != self.local)
            .copied()
            .collect()
    }

    /// The new holders other than this node.
    fn other_new(&self) -> Vec<PeerId> {
        self.spec
            .new
            .iter()
            .filter(|p| **p != self.local)
            .copied()
            .collect()
    }

    /// Refuses a message from this node itself or from a peer outside the reshare.
    fn check_sender(&self, from: &PeerId, what: &str) -> Result<Roles, SessionError> {
        if *from == self.local || !self.participants.contains(from) {
            return Err(SessionError::blame(
                vec![*from],
                format!("peer {from} is not another participant of this reshare and sent a {what}"),
            ));
        }
        Ok(self.roles(from))
    }

    /// Blames `from` for a message whose part `part` is present when it must not be, or
    /// missing when it must be there.
    fn check_part(
        &self,
        from: PeerId,
        part: &str,
        present: bool,
        expected: bool,
    ) -> Result<(), SessionError> {
        if present == expected {
            return Ok(());
        }
        let state = if present {
            "has no business sending"
        } else {
            "left out"
        };
        Err(SessionError::blame(
            vec![from],
            format!("participant {from} {state} the {part} in its reshare message"),
        ))
    }

    fn id(&self, peer: &PeerId) -> Identifier<C> {
        self.id_of[peer]
    }

    fn incomplete<T>(
        &self,
        got: &BTreeMap<PeerId, T>,
        from: &[PeerId],
        what: &str,
    ) -> Result<(), SessionError> {
        let missing: Vec<PeerId> = from
            .iter()
            .filter(|p| !got.contains_key(p))
            .copied()
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(SessionError::failed(format!(
                "the reshare {what} is not complete: missing {}",
                join_peers(&missing)
            )))
        }
    }
}

/// Takes `value` from `from` into `got` once; the same value again is a no-op, a different
/// one is equivocation.
fn take_once<T: PartialEq>(
    got: &mut BTreeMap<PeerId, T>,
    from: PeerId,
    value: T,
    what: &str,
) -> Result<bool, SessionError> {
    match got.get(&from) {
        Some(previous) if *previous == value => Ok(false),
        Some(_) => Err(SessionError::blame(
            vec![from],
            format!("participant {from} sent two different {what} messages"),
        )),
        None => {
            got.insert(from, value);
            Ok(true)
        }
    }
}

/// The verifying share that `package` implies at `id`: the verifying shares of `threshold`
/// holders interpolated at `id` in the group (Lagrange coefficients from frost-core).
fn verifying_share_at<C: Suite>(
    package: &PublicKeyPackage<C>,
    threshold: u16,
    id: Identifier<C>,
) -> Result<VerifyingShare<C>, SessionError> {
    if let Some(share) = package.verifying_shares().get(&id) {
        return Ok(*share);
    }
    let basis: BTreeSet<Identifier<C>> = package
        .verifying_shares()
        .keys()
        .take(usize::from(threshold))
        .copied()
        .collect();
    if basis.len() < usize::from(threshold) {
        return Err(SessionError::failed(
            "the public key package has fewer verifying shares than the threshold",
        ));
    }
    let mut sum = <C::Group as Group>::identity();
    for i in &basis {
        let lambda = frost::compute_lagrange_coefficient(&basis, Some(id), *i)
            .map_err(|e| SessionError::failed(format!("interpolating a verifying share: {e}")))?;
        sum = sum + package.verifying_shares()[i].to_element() * lambda;
    }
    Ok(VerifyingShare::new(sum))
}

/// Round 1: this node's messages sent, the others' as they come.
pub struct Round1<C: Suite> {
    common: Common<C>,
    /// This node's share of the current generation (old holders).
    old: Option<scheme::Share<C>>,
    old_digest: Option<[u8; 32]>,
    /// The deltas this helper made for itself, per joining holder.
    own_deltas: BTreeMap<PeerId, Delta<C>>,
    secret: Option<frost::keys::dkg::round1::SecretPackage<C>>,
    received: BTreeMap<PeerId, Round1Message>,
    /// Every old holder's digest of its public key package.
    old_digests: BTreeMap<PeerId, [u8; 32]>,
    /// Deltas received per joining holder, per helper.
    deltas: BTreeMap<PeerId, BTreeMap<PeerId, Delta<C>>>,
    packages: BTreeMap<Identifier<C>, frost::keys::dkg::round1::Package<C>>,
}

impl<C: Suite> Round1<C> {
    /// Starts a reshare on `local`, with its share of the current generation if it is an
    /// old holder. Returns the round and a message for every other participant.
    pub fn start(
        spec: ReshareSpec,
        local: PeerId,
        old: Option<scheme::Share<C>>,
    ) -> Result<(Self, Outgoing<Round1Message>), SessionError> {
        if spec.scheme != C::SCHEME {
            return Err(SessionError::failed(format!(
                "a {} reshare cannot run with the {} ciphersuite",
                spec.scheme,
                C::SCHEME
            )));
        }
        spec.check().map_err(SessionError::failed)?;
        let participants = spec.participants();
        let mut ids = BTreeMap::new();
        let mut id_of = BTreeMap::new();
        for p in &participants {
            let id = frost_identifier(p).map_err(SessionError::failed)?;
            ids.insert(id, *p);
            id_of.insert(*p, id);
        }
        if ids.len() != participants.len() {
            return Err(SessionError::failed("two participants share an identifier"));
        }
        if !participants.contains(&local) {
            return Err(SessionError::failed(format!(
                "this node ({local}) takes no part in the reshare"
            )));
        }
        let helpers = spec.helpers();
        let joining = spec.joining();
        let mut common = Common {
            me: Roles {
                old: false,
                new: false,
                helper: false,
                joining: false,
            },
            spec,
            local,
            participants,
            helpers,
            joining,
            ids,
            id_of,
        };
        common.me = common.roles(&local);
        let me = common.me;
        let old_digest = match (&old, me.old) {
            (Some(share), true) => {
                let package = &share.public_key_package;
                if package.min_signers() != Some(common.spec.threshold) {
                    return Err(SessionError::failed(format!(
                        "this node's share of key {} is not of threshold {}",
                        common.spec.key_id, common.spec.threshold
                    )));
                }
                let held: Vec<Identifier<C>> = package.verifying_shares().keys().copied().collect();
                let expected: Vec<Identifier<C>> = {
                    let mut ids: Vec<_> = common.spec.old.iter().map(|p| common.id(p)).collect();
                    ids.sort();
                    ids
                };
                if held != expected || *share.key_package.identifier() != common.id(&local) {
                    return Err(SessionError::failed(format!(
                        "this node's share of key {} is not one of the current holders' generation",
                        common.spec.key_id
                    )));
                }
                let bytes = package
                    .serialize()
                    .map_err(|e| SessionError::failed(format!("public key package: {e}")))?;
                Some(old_key_digest(&common.spec, &bytes))
            }
            (None, false) => None,
            (Some(_), false) => {
                return Err(SessionError::failed(
                    "a share was handed to a node that is not a current holder",
                ));
            }
            (None, true) => {
                return Err(SessionError::failed(format!(
                    "this node holds no share of key {} but is named a current holder",
                    common.spec.key_id
                )));
            }
        };

        // Repair: split this helper's weighted share into one delta per helper, for each
        // joining holder.
        let mut deltas_for: BTreeMap<PeerId, BTreeMap<Identifier<C>, Delta<C>>> = BTreeMap::new();
        if me.helper {
            let share = old
                .as_ref()
                .map(|s| &s.key_package)
                .ok_or_else(|| SessionError::failed("a helper without a share"))?;
            let helper_ids: Vec<Identifier<C>> =
                common.helpers.iter().map(|p| common.id(p)).collect();
            for j in &common.joining {
                let deltas = repairable::repair_share_part1(
                    &helper_ids,
                    share,
                    &mut rand_core::OsRng,
                    common.id(j),
                )
                .map_err(|e| SessionError::failed(format!("repair part 1: {e}")))?;
                deltas_for.insert(*j, deltas);
            }
        }
        // Refresh part 1 among the new holders.
        let (secret, package) = if me.new {
            let n = common.spec.new.len() as u16;
            let (secret, package) = frost::keys::refresh::refresh_dkg_part1(
                common.id(&local),
                n,
                common.spec.threshold,
                rand_core::OsRng,
            )
            .map_err(|e| SessionError::failed(format!("refresh part 1: {e}")))?;
            let bytes = package
                .serialize()
                .map_err(|e| SessionError::failed(format!("refresh part 1: {e}")))?;
            (Some(secret), Some(bytes))
        } else {
            (None, None)
        };

        let mut own_deltas = BTreeMap::new();
        let my_id = common.id(&local);
        for (j, deltas) in &deltas_for {
            own_deltas.insert(*j, deltas[&my_id]);
        }
        let mut outgoing = Vec::new();
        for peer in common.others() {
            let them = common.roles(&peer);
            let mut message = Round1Message {
                old_key: old_digest,
                ..Default::default()
            };
            if me.helper && them.helper {
                let id = common.id(&peer);
                message.deltas = deltas_for
                    .iter()
                    .map(|(j, deltas)| (j.to_string(), deltas[&id].serialize()))
                    .collect();
            }
            if me.new && them.new {
                message.package = package.clone();
            }
            outgoing.push((peer, message));
        }
        let mut old_digests = BTreeMap::new();
        if let Some(d) = old_digest {
            old_digests.insert(local, d);
        }
        let round = Self {
            common,
            old,
            old_digest,
            own_deltas,
            secret,
            received: BTreeMap::new(),
            old_digests,
            deltas: BTreeMap::new(),
            packages: BTreeMap::new(),
        };
        Ok((round, outgoing))
    }

    /// The other participants, sorted.
    pub fn others(&self) -> Vec<PeerId> {
        self.common.others()
    }

    /// The participants whose round-1 message has not arrived.
    pub fn missing(&self) -> Vec<PeerId> {
        self.others()
            .into_iter()
            .filter(|p| !self.received.contains_key(p))
            .collect()
    }

    /// Takes `from`'s round-1 message. Refused (blamed): this node itself or a stranger, a
    /// part that the sender's and this node's roles do not call for (or one missing), an
    /// old holder whose public key package differs from this node's, deltas that do not name
    /// every joining holder once or are not scalars, a refresh package that is not one or is
    /// of another threshold, a second, different message.
    pub fn receive(&mut self, from: PeerId, message: &Round1Message) -> Result<(), SessionError> {
        let them = self.common.check_sender(&from, "reshare round-1 message")?;
        let me = self.common.me;
        let c = &self.common;
        c.check_part(from, "old key digest", message.old_key.is_some(), them.old)?;
        let want_deltas = me.helper && them.helper;
        c.check_part(
            from,
            "repair deltas",
            !message.deltas.is_empty(),
            want_deltas,
        )?;
        c.check_part(
            from,
            "refresh package",
            message.package.is_some(),
            me.new && them.new,
        )?;
        if let (Some(theirs), Some(mine)) = (message.old_key, self.old_digest)
            && theirs != mine
        {
            return Err(SessionError::blame(
                vec![from],
                format!(
                    "participant {from} holds another generation, public key package or metadata (policy, group key) of key {} than this node",
                    c.spec.key_id
                ),
            ));
        }
        let mut deltas = BTreeMap::new();
        if want_deltas {
            for (peer, bytes) in &message.deltas {
                let joining = peer
                    .parse::<PeerId>()
                    .ok()
                    .filter(|p| c.joining.contains(p));
                let delta = Delta::<C>::deserialize(bytes).ok();
                match (joining, delta) {
                    (Some(j), Some(d)) if !deltas.contains_key(&j) => {
                        deltas.insert(j, d);
                    }
                    _ => {
                        return Err(SessionError::blame(
                            vec![from],
                            format!(
                                "participant {from} sent a repair delta for `{peer}` that is malformed, for no joining holder or twice"
                            ),
                        ));
                    }
                }
            }
            if deltas.len() != c.joining.len() {
                return Err(SessionError::blame(
                    vec![from],
                    format!("participant {from} left out repair deltas"),
                ));
            }
        }
        let package = match &message.package {
            Some(bytes) => {
                let package =
                    scheme::decode(bytes, frost::keys::dkg::round1::Package::<C>::deserialize)
                        .map_err(|e| SessionError::undecodable::<C>(from, "refresh package", e))?;
                let coefficients = package.commitment().serialize().map(|c| c.len()).ok();
                if coefficients != Some(usize::from(c.spec.threshold) - 1) {
                    return Err(SessionError::blame(
                        vec![from],
                        format!(
                            "participant {from} sent a refresh package for another threshold than {}",
                            c.spec.threshold
                        ),
                    ));
                }
                Some(package)
            }
            None => None,
        };
        if !take_once(&mut self.received, from, message.clone(), "reshare round-1")? {
            return Ok(());
        }
        if let Some(d) = message.old_key {
            self.old_digests.insert(from, d);
        }
        for (j, d) in deltas {
            self.deltas.entry(j).or_default().insert(from, d);
        }
        if let Some(p) = package {
            self.packages.insert(self.common.id(&from), p);
        }
        Ok(())
    }

    /// Once every round-1 message arrived: checks that every old holder holds the same
    /// generation, then makes this node's round-2 messages: a sigma (with the current public
    /// key package) for each joining holder from each helper, and the refresh part-2
    /// packages among the new holders.
    pub fn round2(self) -> Result<(Round2<C>, Outgoing<Round2Message>), SessionError> {
        let c = &self.common;
        c.incomplete(&self.received, &c.others(), "round 1")?;
        let digests: BTreeSet<&[u8; 32]> = self.old_digests.values().collect();
        if digests.len() != 1 {
            return Err(SessionError::failed(format!(
                "the current holders of key {} hold different public key packages or metadata: they are not at one generation",
                c.spec.key_id
            )));
        }
        let me = c.me;
        let mut sigmas: BTreeMap<PeerId, Sigma<C>> = BTreeMap::new();
        if me.helper {
            for j in &c.joining {
                let mut deltas: Vec<Delta<C>> = self
                    .deltas
                    .get(j)
                    .map(|d| d.values().copied().collect())
                    .unwrap_or_default();
                deltas.push(self.own_deltas[j]);
                sigmas.insert(*j, repairable::repair_share_part2(&deltas));
            }
        }
        let (secret, refresh_out) = match self.secret {
            Some(secret) => {
                let (secret, out) = frost::keys::refresh::refresh_dkg_part2(secret, &self.packages)
                    .map_err(|e| frost_error(e, &c.ids, "refresh part 2"))?;
                (Some(secret), out)
            }
            None => (None, BTreeMap::new()),
        };
        let old_package = match (&self.old, me.helper) {
            (Some(share), true) => Some(
                share
                    .public_key_package
                    .serialize()
                    .map_err(|e| SessionError::failed(format!("public key package: {e}")))?,
            ),
            _ => None,
        };
        let mut outgoing = Vec::new();
        for peer in c.others() {
            let them = c.roles(&peer);
            let mut message = Round2Message::default();
            if me.helper && them.joining {
                message.sigma = Some(sigmas[&peer].serialize());
                message.old_public_key_package = old_package.clone();
            }
            if me.new && them.new {
                let package = refresh_out.get(&c.id(&peer)).ok_or_else(|| {
                    SessionError::failed("refresh part 2 made no package for a new holder")
                })?;
                message.package = Some(
                    package
                        .serialize()
                        .map_err(|e| SessionError::failed(format!("refresh part 2: {e}")))?,
                );
            }
            outgoing.push((peer, message));
        }
        let old_digest = **digests.iter().next().expect("one digest");
        let round = Round2 {
            common: self.common,
            old: self.old,
            old_digest,
            secret,
            round1: self.packages,
            received: BTreeMap::new(),
            sigmas: BTreeMap::new(),
            old_packages: BTreeMap::new(),
            packages: BTreeMap::new(),
        };
        Ok((round, outgoing))
    }
}

/// Round 2: sigmas for a joining holder, refresh packages for a new holder.
pub struct Round2<C: Suite> {
    common: Common<C>,
    old: Option<scheme::Share<C>>,
    /// The digest of the current public key package every old holder named.
    old_digest: [u8; 32],
    secret: Option<frost::keys::dkg::round2::SecretPackage<C>>,
    round1: BTreeMap<Identifier<C>, frost::keys::dkg::round1::Package<C>>,
    received: BTreeMap<PeerId, Round2Message>,
    sigmas: BTreeMap<PeerId, Sigma<C>>,
    old_packages: BTreeMap<PeerId, Vec<u8>>,
    packages: BTreeMap<Identifier<C>, frost::keys::dkg::round2::Package<C>>,
}

impl<C: Suite> Round2<C> {
    /// The participants whose round-2 message has not arrived.
    pub fn missing(&self) -> Vec<PeerId> {
        self.common
            .others()
            .into_iter()
            .filter(|p| !self.received.contains_key(p))
            .collect()
    }

    /// Takes `from`'s round-2 message. Refused (blamed): this node itself or a stranger, a
    /// part the roles do not call for (or one missing), a sigma that is not a scalar, a
    /// public key package other than the one every old holder named, a refresh package that
    /// is not one, a second, different message. (Whether a sigma or a refresh share is right
    /// is checked by [`Round2::confirm`].)
    pub fn receive(&mut self, from: PeerId, message: &Round2Message) -> Result<(), SessionError> {
        let them = self.common.check_sender(&from, "reshare round-2 message")?;
        let me = self.common.me;
        let c = &self.common;
        let repairs = them.helper && me.joining;
        c.check_part(from, "sigma", message.sigma.is_some(), repairs)?;
        c.check_part(
            from,
            "public key package",
            message.old_public_key_package.is_some(),
            repairs,
        )?;
        c.check_part(
            from,
            "refresh package",
            message.package.is_some(),
            me.new && them.new,
        )?;
        let sigma = match &message.sigma {
            Some(bytes) => Some(Sigma::<C>::deserialize(bytes).map_err(|e| {
                SessionError::blame(
                    vec![from],
                    format!("participant {from} sent a malformed sigma: {e}"),
                )
            })?),
            None => None,
        };
        if let Some(bytes) = &message.old_public_key_package
            && old_key_digest(&self.common.spec, bytes) != self.old_digest
        {
            return Err(SessionError::blame(
                vec![from],
                format!(
                    "participant {from} sent a public key package other than the one every current holder named"
                ),
            ));
        }
        let package = match &message.package {
            Some(bytes) => Some(
                scheme::decode(bytes, frost::keys::dkg::round2::Package::<C>::deserialize)
                    .map_err(|e| SessionError::undecodable::<C>(from, "refresh package", e))?,
            ),
            None => None,
        };
        if !take_once(&mut self.received, from, message.clone(), "reshare round-2")? {
            return Ok(());
        }
        if let Some(s) = sigma {
            self.sigmas.insert(from, s);
        }
        if let Some(bytes) = &message.old_public_key_package {
            self.old_packages.insert(from, bytes.clone());
        }
        if let Some(p) = package {
            self.packages.insert(self.common.id(&from), p);
        }
        Ok(())
    }

    /// Once every round-2 message arrived: a joining holder sums its sigmas and checks the
    /// share against the current public key package; a new holder adds the refresh shares
    /// (each checked against its sender's commitment). Returns the round and, for a new
    /// holder, the confirmation digest to send to every other participant.
    pub fn confirm(self) -> Result<(Confirming<C>, Option<[u8; 32]>), SessionError> {
        let c = &self.common;
        c.incomplete(&self.received, &c.others(), "round 2")?;
        let me = c.me;
        let old_public = match &self.old {
            Some(share) => share.public_key_package.clone(),
            None if me.joining => {
                let bytes = self.old_packages.values().next().ok_or_else(|| {
                    SessionError::failed("no helper sent the current public key package")
                })?;
                scheme::decode(bytes, PublicKeyPackage::<C>::deserialize).map_err(|e| {
                    SessionError::failed(format!("the current public key package: {e:?}"))
                })?
            }
            None => {
                return Err(SessionError::failed(
                    "a participant that is neither an old nor a new holder",
                ));
            }
        };
        let threshold = c.spec.threshold;
        if old_public.min_signers() != Some(threshold) {
            return Err(SessionError::failed(format!(
                "the current public key package is not of threshold {threshold}"
            )));
        }
        // The current package, extended by the verifying share it implies at each joining
        // holder's identifier: what refresh adds the new holders' zero shares to.
        let mut shares = old_public.verifying_shares().clone();
        for j in &c.joining {
            let id = c.id(j);
            shares.insert(id, verifying_share_at(&old_public, threshold, id)?);
        }
        let extended = PublicKeyPackage::new(shares, *old_public.verifying_key(), Some(threshold));

        let mut output = None;
        let mut digest = None;
        if me.new {
            let current = match &self.old {
                Some(share) => share.key_package.clone(),
                None => {
                    let sigmas: Vec<Sigma<C>> = self.sigmas.values().copied().collect();
                    let repaired =
                        repairable::repair_share_part3(&sigmas, c.id(&c.local), &old_public)
                            .map_err(|e| SessionError::failed(format!("repair part 3: {e}")))?;
                    if repaired.verifying_share() != &extended.verifying_shares()[&c.id(&c.local)] {
                        return Err(SessionError::failed(format!(
                            "the repaired share does not match the key's public key package: one of the helpers ({}) sent a wrong repair value",
                            join_peers(&c.helpers)
                        )));
                    }
                    repaired
                }
            };
            let secret = self
                .secret
                .as_ref()
                .ok_or_else(|| SessionError::failed("a new holder without refresh state"))?;
            check_refresh_shares(c, &self.round1, &self.packages)?;
            let (key_package, public_key_package) = frost::keys::refresh::refresh_dkg_shares(
                secret,
                &self.round1,
                &self.packages,
                extended,
                current,
            )
            .map_err(|e| frost_error(e, &c.ids, "refresh"))?;
            if public_key_package.verifying_key() != old_public.verifying_key() {
                return Err(SessionError::failed("the refresh changed the group key"));
            }
            let d = confirmation_digest(&c.spec, &self.old_digest, &public_key_package)?;
            digest = Some(d);
            output = Some(scheme::Share {
                key_package,
                public_key_package,
            });
        }
        let confirming = Confirming {
            common: self.common,
            mine: digest,
            output,
            confirmed: BTreeMap::new(),
        };
        Ok((confirming, digest))
    }
}

/// Checks each refresh share this node received against its sender's commitment (a
/// sharing of zero: the commitment to the constant term is the identity), blaming the
/// sender of a wrong one. frost-core's `refresh_dkg_shares` makes the same check but does not
/// say whose share failed.
fn check_refresh_shares<C: Suite>(
    c: &Common<C>,
    round1: &BTreeMap<Identifier<C>, frost::keys::dkg::round1::Package<C>>,
    round2: &BTreeMap<Identifier<C>, frost::keys::dkg::round2::Package<C>>,
) -> Result<(), SessionError> {
    use frost::keys::{CoefficientCommitment, SecretShare, VerifiableSecretSharingCommitment};
    for (id, package) in round2 {
        let sender = c.ids[id];
        let commitment = round1
            .get(id)
            .ok_or_else(|| SessionError::failed(format!("no refresh commitment from {sender}")))?;
        let coefficients =
            std::iter::once(CoefficientCommitment::new(<C::Group as Group>::identity()))
                .chain(commitment.commitment().coefficients().iter().copied())
                .collect();
        let share = SecretShare::new(
            c.id(&c.local),
            *package.signing_share(),
            VerifiableSecretSharingCommitment::new(coefficients),
        );
        if share.verify().is_err() {
            return Err(SessionError::blame(
                vec![sender],
                format!(
                    "participant {sender} sent a refresh share that does not match its commitment"
                ),
            ));
        }
    }
    Ok(())
}

/// The digest each new holder confirms (see the module's documentation).
fn confirmation_digest<C: Suite>(
    spec: &ReshareSpec,
    old_digest: &[u8; 32],
    package: &PublicKeyPackage<C>,
) -> Result<[u8; 32], SessionError> {
    let package = package
        .serialize()
        .map_err(|e| SessionError::failed(format!("public key package: {e}")))?;
    let mut h = Sha256::new();
    h.update(CONFIRM_DOMAIN);
    h.update((spec.key_id.len() as u64).to_be_bytes());
    h.update(spec.key_id.as_bytes());
    let scheme = spec.scheme.name();
    h.update((scheme.len() as u64).to_be_bytes());
    h.update(scheme.as_bytes());
    h.update(spec.threshold.to_be_bytes());
    h.update(spec.generation.to_be_bytes());
    for set in [&spec.old, &spec.new] {
        h.update((set.len() as u64).to_be_bytes());
        for p in set {
            let bytes = p.to_bytes();
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(&bytes);
        }
    }
    h.update(old_digest);
    h.update((package.len() as u64).to_be_bytes());
    h.update(&package);
    h.update(spec.metadata_digest);
    Ok(h.finalize().into())
}

/// The confirmation round: every new holder must confirm the same digest.
pub struct Confirming<C: Suite> {
    common: Common<C>,
    mine: Option<[u8; 32]>,
    output: Option<scheme::Share<C>>,
    confirmed: BTreeMap<PeerId, [u8; 32]>,
}

/// How a reshare ended for this node.
pub enum ReshareOutput<C: Suite> {
    /// A new holder: its share of the new generation.
    Holder {
        share: scheme::Share<C>,
        digest: [u8; 32],
    },
    /// A dropped holder: every new holder confirmed the new generation.
    Retired { digest: [u8; 32] },
}

impl<C: Suite> Confirming<C> {
    /// The new holders whose confirmation has not arrived.
    pub fn missing(&self) -> Vec<PeerId> {
        self.common
            .other_new()
            .into_iter()
            .filter(|p| !self.confirmed.contains_key(p))
            .collect()
    }

    /// Takes `from`'s confirmation. Refused (blamed): this node itself, a stranger or a
    /// participant that is not a new holder; for a new holder, a digest other than its own
    /// (another generation, holder set, public key package or policy); a second, different
    /// confirmation.
    pub fn receive(&mut self, from: PeerId, digest: &[u8; 32]) -> Result<(), SessionError> {
        let them = self.common.check_sender(&from, "reshare confirmation")?;
        if !them.new {
            return Err(SessionError::blame(
                vec![from],
                format!("participant {from} is not a new holder and sent a reshare confirmation"),
            ));
        }
        if let Some(mine) = &self.mine
            && mine != digest
        {
            return Err(SessionError::blame(
                vec![from],
                format!(
                    "participant {from} derived another public key package or holds another generation, holder set or signing policy; the reshare is abandoned"
                ),
            ));
        }
        take_once(&mut self.confirmed, from, *digest, "reshare confirmation").map(|_| ())
    }

    /// Once every other new holder confirmed: the new share, or for a dropped holder the
    /// confirmation that it may retire its share (every new holder confirmed one digest).
    pub fn finish(self) -> Result<ReshareOutput<C>, SessionError> {
        let missing = self.missing();
        if !missing.is_empty() {
            return Err(SessionError::failed(format!(
                "the reshare confirmation is not complete: missing {}",
                join_peers(&missing)
            )));
        }
        match (self.output, self.mine) {
            (Some(share), Some(digest)) => Ok(ReshareOutput::Holder { share, digest }),
            _ => {
                let digests: BTreeSet<&[u8; 32]> = self.confirmed.values().collect();
                match digests.into_iter().collect::<Vec<_>>()[..] {
                    [digest] => Ok(ReshareOutput::Retired { digest: *digest }),
                    _ => Err(SessionError::failed(
                        "the new holders confirmed different public key packages; the reshare is abandoned",
                    )),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::dkg::core::testing::dkg;
    use super::super::super::scheme::testing::for_each_suite;
    use super::*;
    use frost_ed25519::Ed25519Sha512 as Ed;

    fn peers(n: usize) -> Vec<PeerId> {
        let mut peers: Vec<PeerId> = (0..n).map(|_| PeerId::random()).collect();
        peers.sort();
        peers
    }

    fn sorted(mut peers: Vec<PeerId>) -> Vec<PeerId> {
        peers.sort();
        peers
    }

    /// A `t`-of-`peers` key made by the DKG core: each holder's share.
    fn key<C: Suite>(t: u16, peers: &[PeerId]) -> BTreeMap<PeerId, scheme::Share<C>> {
        peers
            .iter()
            .copied()
            .zip(dkg::<C>(t, peers).into_iter().map(|o| o.share))
            .collect()
    }

    fn spec<C: Suite>(t: u16, old: &[PeerId], new: &[PeerId]) -> ReshareSpec {
        ReshareSpec {
            key_id: "k1".into(),
            scheme: C::SCHEME,
            threshold: t,
            old: old.to_vec(),
            new: new.to_vec(),
            generation: 1,
            metadata_digest: [7; 32],
        }
    }

    type Results<C> = BTreeMap<PeerId, Result<ReshareOutput<C>, SessionError>>;

    /// Runs a reshare among every participant of `spec`, delivering every message after
    /// `tamper1`/`tamper2`/`tamper3` had their way with it (sender, recipient, message). A
    /// participant stops at its first error.
    fn run<C: Suite>(
        spec: &ReshareSpec,
        shares: &BTreeMap<PeerId, scheme::Share<C>>,
        tamper1: impl Fn(PeerId, PeerId, &mut Round1Message),
        tamper2: impl Fn(PeerId, PeerId, &mut Round2Message),
        tamper3: impl Fn(PeerId, PeerId, &mut [u8; 32]),
    ) -> Results<C> {
        let all = spec.participants();
        let mut errors: BTreeMap<PeerId, SessionError> = BTreeMap::new();
        let mut r1 = BTreeMap::new();
        let mut sent1 = Vec::new();
        for p in &all {
            let old = spec.old.contains(p).then(|| shares[p].clone());
            let (round, out) = Round1::<C>::start(spec.clone(), *p, old).unwrap();
            r1.insert(*p, round);
            sent1.extend(out.into_iter().map(|(to, m)| (*p, to, m)));
        }
        for (from, to, mut m) in sent1 {
            tamper1(from, to, &mut m);
            if let Some(round) = r1.get_mut(&to)
                && let Err(e) = round.receive(from, &m)
            {
                errors.entry(to).or_insert(e);
                r1.remove(&to);
            }
        }
        let mut r2 = BTreeMap::new();
        let mut sent2 = Vec::new();
        for (p, round) in r1 {
            match round.round2() {
                Ok((round, out)) => {
                    r2.insert(p, round);
                    sent2.extend(out.into_iter().map(|(to, m)| (p, to, m)));
                }
                Err(e) => {
                    errors.insert(p, e);
                }
            }
        }
        for (from, to, mut m) in sent2 {
            tamper2(from, to, &mut m);
            if let Some(round) = r2.get_mut(&to)
                && let Err(e) = round.receive(from, &m)
            {
                errors.entry(to).or_insert(e);
                r2.remove(&to);
            }
        }
        let mut c = BTreeMap::new();
        let mut sent3 = Vec::new();
        for (p, round) in r2 {
            match round.confirm() {
                Ok((round, digest)) => {
                    c.insert(p, round);
                    if let Some(d) = digest {
                        sent3.extend(all.iter().filter(|q| **q != p).map(|q| (p, *q, d)));
                    }
                }
                Err(e) => {
                    errors.insert(p, e);
                }
            }
        }
        for (from, to, mut d) in sent3 {
            tamper3(from, to, &mut d);
            if let Some(round) = c.get_mut(&to)
                && let Err(e) = round.receive(from, &d)
            {
                errors.entry(to).or_insert(e);
                c.remove(&to);
            }
        }
        let mut results: Results<C> = errors.into_iter().map(|(p, e)| (p, Err(e))).collect();
        for (p, round) in c {
            results.insert(p, round.finish());
        }
        results
    }

    fn honest<C: Suite>(
        spec: &ReshareSpec,
        shares: &BTreeMap<PeerId, scheme::Share<C>>,
    ) -> Results<C> {
        run(spec, shares, |_, _, _| {}, |_, _, _| {}, |_, _, _| {})
    }

    /// The new holders' shares; panics unless every new holder got one and every dropped
    /// holder retired, all on one digest.
    fn new_shares<C: Suite>(
        spec: &ReshareSpec,
        results: Results<C>,
    ) -> BTreeMap<PeerId, scheme::Share<C>> {
        let mut shares = BTreeMap::new();
        let mut digests = BTreeSet::new();
        for (p, result) in results {
            match result {
                Ok(ReshareOutput::Holder { share, digest }) => {
                    assert!(spec.new.contains(&p));
                    digests.insert(digest);
                    shares.insert(p, share);
                }
                Ok(ReshareOutput::Retired { digest }) => {
                    assert!(spec.dropped().contains(&p));
                    digests.insert(digest);
                }
                Err(e) => panic!("{p} failed: {e}"),
            }
        }
        assert_eq!(digests.len(), 1, "one confirmation digest for everyone");
        assert_eq!(shares.keys().copied().collect::<Vec<_>>(), spec.new);
        shares
    }

    /// Signs with `signers`' key packages and aggregates under `package`; the signature is
    /// checked under the group key.
    fn sign<C: Suite>(
        signers: &[&scheme::Share<C>],
        package: &PublicKeyPackage<C>,
    ) -> Result<(), String> {
        let mut nonces = BTreeMap::new();
        let mut commitments = BTreeMap::new();
        for s in signers {
            let id = *s.key_package.identifier();
            let (n, c) =
                frost::round1::commit::<C, _>(s.key_package.signing_share(), &mut rand_core::OsRng);
            nonces.insert(id, n);
            commitments.insert(id, c);
        }
        let signing = frost::SigningPackage::<C>::new(commitments, b"after a reshare");
        let mut shares = BTreeMap::new();
        for s in signers {
            let id = *s.key_package.identifier();
            let share = frost::round2::sign(&signing, &nonces[&id], &s.key_package)
                .map_err(|e| e.to_string())?;
            shares.insert(id, share);
        }
        let signature = frost::aggregate(&signing, &shares, package).map_err(|e| e.to_string())?;
        package
            .verifying_key()
            .verify(b"after a reshare", &signature)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_refresh_keeps_the_group_key_changes_every_share_and_signs() {
        for_each_suite!(refresh);
    }

    fn refresh<C: Suite>() {
        let holders = peers(3);
        let old = key::<C>(2, &holders);
        let spec = spec::<C>(2, &holders, &holders);
        assert!(spec.helpers().is_empty() && spec.joining().is_empty());
        let new = new_shares(&spec, honest(&spec, &old));
        let group = old[&holders[0]].public_key_package.verifying_key();
        for p in &holders {
            assert_eq!(new[p].public_key_package.verifying_key(), group);
            assert_ne!(
                new[p].key_package.signing_share(),
                old[p].key_package.signing_share(),
                "every share changes"
            );
        }
        let package = &new[&holders[0]].public_key_package;
        for pair in [[0, 1], [0, 2], [1, 2]] {
            sign(&[&new[&holders[pair[0]]], &new[&holders[pair[1]]]], package).unwrap();
        }
        // An old share does not combine with a new one, under either package.
        assert!(sign(&[&old[&holders[0]], &new[&holders[1]]], package).is_err());
        let old_package = &old[&holders[0]].public_key_package;
        assert!(sign(&[&old[&holders[0]], &new[&holders[1]]], old_package).is_err());
    }

    #[test]
    fn a_reshare_to_more_holders_signs_with_old_and_new_holders_under_the_same_key() {
        for_each_suite!(grow);
    }

    fn grow<C: Suite>() {
        let holders = peers(3);
        let old = key::<C>(2, &holders);
        let joining = peers(2);
        let new_set = sorted(holders.iter().chain(&joining).copied().collect());
        let spec = spec::<C>(2, &holders, &new_set);
        assert_eq!(spec.helpers(), holders[..2].to_vec());
        let new = new_shares(&spec, honest(&spec, &old));
        let package = &new[&joining[0]].public_key_package;
        assert_eq!(
            package.verifying_key(),
            old[&holders[0]].public_key_package.verifying_key()
        );
        assert_eq!(package.verifying_shares().len(), 5);
        for i in 0..5 {
            for j in i + 1..5 {
                sign(&[&new[&new_set[i]], &new[&new_set[j]]], package)
                    .unwrap_or_else(|e| panic!("holders {i} and {j}: {e}"));
            }
        }
    }

    #[test]
    fn a_reshare_that_drops_holders_retires_them_and_their_shares_do_not_combine() {
        for_each_suite!(shrink);
    }

    fn shrink<C: Suite>() {
        let holders = peers(5);
        let old = key::<C>(2, &holders);
        let kept = vec![holders[0], holders[2], holders[4]];
        let spec = spec::<C>(2, &holders, &kept);
        assert_eq!(spec.dropped(), vec![holders[1], holders[3]]);
        let new = new_shares(&spec, honest(&spec, &old));
        let package = &new[&kept[0]].public_key_package;
        assert_eq!(package.verifying_shares().len(), 3);
        sign(&[&new[&kept[0]], &new[&kept[1]]], package).unwrap();
        sign(&[&new[&kept[1]], &new[&kept[2]]], package).unwrap();
        // A dropped holder's share with a new one: refused under the new package, and no
        // valid signature under the old one either.
        for dropped in spec.dropped() {
            for k in &kept {
                assert!(sign(&[&old[&dropped], &new[k]], package).is_err());
                assert!(
                    sign(
                        &[&old[&dropped], &new[k]],
                        &old[&dropped].public_key_package
                    )
                    .is_err()
                );
            }
        }
    }

    #[test]
    fn dropped_holders_help_when_too_few_holders_stay() {
        for_each_suite!(replace);
    }

    fn replace<C: Suite>() {
        let holders = peers(4);
        let old = key::<C>(3, &holders);
        let joining = peers(2);
        let new_set = sorted(vec![holders[3], joining[0], joining[1]]);
        let spec = spec::<C>(3, &holders, &new_set);
        assert_eq!(
            spec.helpers(),
            vec![holders[3], holders[0], holders[1]],
            "the kept holder first, then dropped ones"
        );
        let new = new_shares(&spec, honest(&spec, &old));
        let package = &new[&new_set[0]].public_key_package;
        let all: Vec<&scheme::Share<C>> = new.values().collect();
        sign(&all, package).unwrap();
    }

    #[test]
    fn fewer_new_holders_than_the_threshold_are_refused() {
        let holders = peers(3);
        let small = spec::<Ed>(2, &holders, &holders[..1]);
        assert!(
            small
                .check()
                .unwrap_err()
                .contains("fewer than the key's threshold")
        );
        let old = key::<Ed>(2, &holders);
        assert!(Round1::<Ed>::start(small, holders[0], Some(old[&holders[0]].clone())).is_err());
        let unsorted = ReshareSpec {
            new: vec![holders[2], holders[1]],
            ..spec::<Ed>(2, &holders, &holders)
        };
        assert!(unsorted.check().unwrap_err().contains("sorted"));
    }

    fn error<C: Suite>(results: &Results<C>, p: &PeerId) -> String {
        match &results[p] {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{p} finished"),
        }
    }

    fn blames<C: Suite>(results: &Results<C>, p: &PeerId, culprit: &PeerId, text: &str) {
        match &results[p] {
            Err(e) => {
                assert_eq!(e.blamed(), [*culprit], "{e}");
                assert!(e.to_string().contains(text), "{e}");
            }
            Ok(_) => panic!("{p} finished; expected blame of {culprit} ({text})"),
        }
    }

    #[test]
    fn a_wrong_repair_value_is_caught_by_the_joining_holder() {
        let holders = peers(3);
        let old = key::<Ed>(2, &holders);
        let joining = peers(1)[0];
        let new_set = sorted(holders.iter().copied().chain([joining]).collect());
        let spec = spec::<Ed>(2, &holders, &new_set);
        let helper = spec.helpers()[0];
        // A helper's delta to another helper, changed.
        let results = run(
            &spec,
            &old,
            |from, _, m| {
                if from == helper && !m.deltas.is_empty() {
                    m.deltas[0].1 = Delta::<Ed>::deserialize(&[3; 32]).unwrap().serialize();
                }
            },
            |_, _, _| {},
            |_, _, _| {},
        );
        assert!(error(&results, &joining).contains("wrong repair value"));
        // A helper's sigma, changed.
        let results = run(
            &spec,
            &old,
            |_, _, _| {},
            |from, _, m| {
                if from == helper && m.sigma.is_some() {
                    m.sigma = Some(Sigma::<Ed>::deserialize(&[5; 32]).unwrap().serialize());
                }
            },
            |_, _, _| {},
        );
        assert!(error(&results, &joining).contains("wrong repair value"));
        // Without the joining holder's confirmation nobody else finishes either.
        assert!(results.values().all(|r| r.is_err()));
    }

    #[test]
    fn holders_at_another_generation_or_with_another_package_are_blamed() {
        let holders = peers(3);
        let old = key::<Ed>(2, &holders);
        let joining = peers(1)[0];
        let new_set = sorted(holders.iter().copied().chain([joining]).collect());
        let spec = spec::<Ed>(2, &holders, &new_set);
        let liar = holders[2];
        let results = run(
            &spec,
            &old,
            |from, _, m| {
                if from == liar {
                    m.old_key = Some([1; 32]);
                }
            },
            |_, _, _| {},
            |_, _, _| {},
        );
        blames(&results, &holders[0], &liar, "another generation");
        assert!(error(&results, &joining).contains("not at one generation"));
        let helper = spec.helpers()[1];
        let other = key::<Ed>(2, &holders);
        let results = run(
            &spec,
            &old,
            |_, _, _| {},
            |from, _, m| {
                if from == helper && m.old_public_key_package.is_some() {
                    m.old_public_key_package =
                        Some(other[&helper].public_key_package.serialize().unwrap());
                }
            },
            |_, _, _| {},
        );
        blames(
            &results,
            &joining,
            &helper,
            "other than the one every current holder named",
        );
    }

    #[test]
    fn a_wrong_refresh_share_or_confirmation_is_blamed() {
        let holders = peers(3);
        let old = key::<Ed>(2, &holders);
        let spec = spec::<Ed>(2, &holders, &holders);
        let cheat = holders[1];
        // A share that is a valid scalar but not the one the cheat's commitment implies
        // (its lowest byte, where the scalar is little-endian, changed).
        let results = run(
            &spec,
            &old,
            |_, _, _| {},
            |from, to, m| {
                if from == cheat && to == holders[0] {
                    let mut other = m.package.clone().unwrap();
                    let at = other.len() - 32;
                    other[at] ^= 1;
                    m.package = Some(other);
                }
            },
            |_, _, _| {},
        );
        assert_eq!(
            results[&holders[0]].as_ref().err().unwrap().blamed(),
            [cheat]
        );
        let results = run(
            &spec,
            &old,
            |_, _, _| {},
            |_, _, _| {},
            |from, to, d| {
                if from == cheat && to == holders[2] {
                    d[0] ^= 1;
                }
            },
        );
        blames(&results, &holders[2], &cheat, "another public key package");
    }

    #[test]
    fn parts_the_roles_do_not_call_for_and_strangers_are_refused() {
        let holders = peers(3);
        let old = key::<Ed>(2, &holders);
        let joining = peers(1)[0];
        let new_set = sorted(holders.iter().copied().chain([joining]).collect());
        let spec = spec::<Ed>(2, &holders, &new_set);
        let (mut round, _) = Round1::<Ed>::start(spec.clone(), joining, None).unwrap();
        let (_, out) =
            Round1::<Ed>::start(spec.clone(), holders[0], Some(old[&holders[0]].clone())).unwrap();
        let to_joining = out.iter().find(|(to, _)| *to == joining).unwrap().1.clone();
        let to_helper = out
            .iter()
            .find(|(to, _)| *to == holders[1])
            .unwrap()
            .1
            .clone();
        assert!(!to_helper.deltas.is_empty() && to_joining.deltas.is_empty());
        let stranger = PeerId::random();
        assert_eq!(
            round.receive(stranger, &to_joining).unwrap_err().blamed(),
            [stranger]
        );
        // Deltas meant for a helper, sent to the joining holder.
        let e = round.receive(holders[0], &to_helper).unwrap_err();
        assert!(e.to_string().contains("has no business"), "{e}");
        let mut bare = to_joining.clone();
        bare.package = None;
        let e = round.receive(holders[0], &bare).unwrap_err();
        assert!(
            e.to_string().contains("left out the refresh package"),
            "{e}"
        );
        let mut garbage = to_joining.clone();
        garbage.package = Some(b"garbage".to_vec());
        assert!(
            round
                .receive(holders[0], &garbage)
                .unwrap_err()
                .to_string()
                .contains("malformed")
        );
        assert!(round.received.is_empty(), "nothing refused was kept");
        round.receive(holders[0], &to_joining).unwrap();
        round.receive(holders[0], &to_joining).unwrap();
        let (_, again) =
            Round1::<Ed>::start(spec, holders[0], Some(old[&holders[0]].clone())).unwrap();
        let second = again.into_iter().find(|(to, _)| *to == joining).unwrap().1;
        assert!(
            round
                .receive(holders[0], &second)
                .unwrap_err()
                .to_string()
                .contains("two different")
        );
        assert_eq!(round.missing(), vec![holders[1], holders[2]]);
        assert!(
            round.round2().is_err(),
            "round 2 before every message arrived"
        );
    }
}
