//! Key refresh and resharing as an I/O-free core: no network, no clock, no task. The
//! driver ([`super`]) sends what a round returns and hands in what arrived; every check of
//! an incoming message is made here, at the top of the method that takes it.
//!
//! A reshare moves a key from its current holders (`old`, generation g) to a new set
//! (`new`, generation g + 1) under the same group key and threshold; a refresh is the
//! reshare whose new set is the old one. It is the verifiable secret *redistribution* of
//! Desmedt–Jajodia with Feldman commitments (as Wong, Wang and Wing make it verifiable),
//! built from `frost-core`'s own pieces (Lagrange coefficients, share evaluation, VSS
//! verification, commitment sums, the public key package from a commitment):
//!
//! - `t` current holders, the *helpers* (kept holders first), each deal their share of the
//!   key weighted by its Lagrange coefficient over the helpers, `λᵢ·sᵢ`, as a fresh random
//!   polynomial of degree `t - 1` evaluated at every new holder, with a commitment to its
//!   coefficients.
//! - Each new holder checks every dealt share against its dealer's commitment and that the
//!   commitment's constant term is `λᵢ·Yᵢ`, the dealer's verifying share of the current
//!   generation, weighted: a helper can only deal its true share. The sum of the dealt shares
//!   is the new share; the sum of the commitments gives every new holder's verifying share
//!   and the group key, which must be the current one.
//!
//! The new polynomial is fresh: shares of the old generation (a dropped holder's, a leaked
//! one) do not combine with shares of the new one, and a holder that joins learns only its
//! share of the new polynomial, which is useless unless the new generation is activated. (A
//! repair of the joining holders' shares from the current polynomial followed by a refresh,
//! frost-core's `repairable` and `refresh`, would hand a joining holder a share of the
//! *current* generation before the refresh, which it could keep when it aborts.) The
//! threshold cannot change.
//!
//! The rounds are types, each consumed by the step that ends it: [`Round1::start`] (every
//! old participant's digest of its generation; each helper's dealt shares and commitment,
//! and the current public key package for holders that join) → [`Round1::receive`] from
//! every other participant → [`Round1::confirm`] (every check, the new share, the
//! confirmation digest) → [`Confirming::receive`] from every new holder →
//! [`Confirming::finish`].
//!
//! The confirmation is a digest over the key id, scheme, threshold, the generation made, both
//! holder sets, the current generation's digest, the new public key package and the key's
//! metadata. A dropped old holder takes part only as a helper (when fewer than the threshold
//! stay); it then checks at the end that every new holder confirmed the same digest, which
//! lets it retire its share.

use std::collections::{BTreeMap, BTreeSet};

use frost_core::keys::{
    CoefficientCommitment, KeyPackage, PublicKeyPackage, SecretShare, SigningShare,
    VerifiableSecretSharingCommitment,
};
use frost_core::{self as frost, Field, Group, Identifier};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use super::super::digest::Fields;
use super::super::frost_identifier;
use super::super::scheme::{self, Scheme, Suite};
use super::super::session::{SessionError, join_peers};

/// Domain of the confirmation digest.
const CONFIRM_DOMAIN: &[u8] = b"p2p-mpc reshare confirmation v2";
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
        if self.new.len() > 255 || self.old.len() > 255 {
            return Err("a key has at most 255 holders".into());
        }
        if self.generation == 0 || self.generation == u64::MAX {
            return Err(format!(
                "generation {} cannot be made by a reshare",
                self.generation
            ));
        }
        Ok(())
    }

    /// Everyone who takes part, sorted: the new holders and the helpers. A dropped holder
    /// takes part only as a helper (when fewer than the threshold stay); the others are
    /// told afterwards (the driver's retire notice).
    pub fn participants(&self) -> Vec<PeerId> {
        let all: BTreeSet<PeerId> = self.new.iter().chain(&self.helpers()).copied().collect();
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

    /// The `threshold` old holders that deal the new shares: kept holders first (they take
    /// part anyway), then dropped ones, each group in peer id order.
    pub fn helpers(&self) -> Vec<PeerId> {
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
    /// From an old holder: its digest of the current generation (key, metadata and public
    /// key package).
    #[serde(default)]
    pub old_key: Option<[u8; 32]>,
    /// Helper → new holder: the recipient's share of the helper's weighted share.
    #[serde(default)]
    pub share: Option<Vec<u8>>,
    /// Helper → new holder: the commitment to the helper's polynomial (`t` coefficients).
    #[serde(default)]
    pub commitment: Option<Vec<u8>>,
    /// Helper → joining holder: the current public key package.
    #[serde(default)]
    pub old_public_key_package: Option<Vec<u8>>,
}

/// Messages for single peers: (recipient, message).
pub type Outgoing<M> = Vec<(PeerId, M)>;

/// What an old holder names in round 1 (and a joining holder checks the public key package
/// it is sent against): the key id, the generation made, the key's metadata and the current
/// public key package, under their own domain.
fn old_key_digest(spec: &ReshareSpec, package: &[u8]) -> [u8; 32] {
    Fields::new(OLD_KEY_DOMAIN)
        .field(spec.key_id.as_bytes())
        .raw(&spec.generation.to_be_bytes())
        .raw(&spec.metadata_digest)
        .field(package)
        .finish()
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
    /// Identifiers of every old and new holder.
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

    fn helper_ids(&self) -> BTreeSet<Identifier<C>> {
        self.helpers.iter().map(|p| self.id(p)).collect()
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

/// A helper's Lagrange coefficient over the helpers, at zero.
fn lambda<C: Suite>(
    helpers: &BTreeSet<Identifier<C>>,
    id: Identifier<C>,
) -> Result<frost::Scalar<C>, SessionError> {
    frost::compute_lagrange_coefficient(helpers, None, id)
        .map_err(|e| SessionError::failed(format!("Lagrange coefficient: {e}")))
}

/// What one helper deals: its polynomial's value at each new holder, and the commitment.
struct Dealt<C: Suite> {
    shares: BTreeMap<PeerId, SigningShare<C>>,
    commitment: VerifiableSecretSharingCommitment<C>,
}

/// A helper's dealing: a random polynomial of degree `t - 1` whose constant term is `λ·s`
/// (its share weighted by its Lagrange coefficient over the helpers), evaluated at every new
/// holder, and the commitment to its coefficients.
fn deal<C: Suite>(common: &Common<C>, share: &KeyPackage<C>) -> Result<Dealt<C>, SessionError> {
    let lambda = lambda(&common.helper_ids(), *share.identifier())?;
    let mut coefficients = vec![lambda * share.signing_share().to_scalar()];
    for _ in 1..common.spec.threshold {
        coefficients.push(<<C::Group as Group>::Field as Field>::random(
            &mut rand_core::OsRng,
        ));
    }
    let commitment = VerifiableSecretSharingCommitment::new(
        coefficients
            .iter()
            .map(|c| CoefficientCommitment::new(C::Group::generator() * *c))
            .collect(),
    );
    let shares = common
        .spec
        .new
        .iter()
        .map(|p| {
            (
                *p,
                SigningShare::from_coefficients(&coefficients, common.id(p)),
            )
        })
        .collect();
    Ok(Dealt { shares, commitment })
}

/// Round 1: this node's messages sent, the others' as they come.
pub struct Round1<C: Suite> {
    common: Common<C>,
    /// This node's share of the current generation (old holders).
    old: Option<scheme::Share<C>>,
    old_digest: Option<[u8; 32]>,
    /// What this helper dealt itself, when it is a new holder too.
    own: Option<(SigningShare<C>, VerifiableSecretSharingCommitment<C>)>,
    received: BTreeMap<PeerId, Round1Message>,
    /// Every old participant's digest of its generation.
    old_digests: BTreeMap<PeerId, [u8; 32]>,
    /// Each helper's dealt share for this node and its commitment.
    dealt: BTreeMap<PeerId, (SigningShare<C>, VerifiableSecretSharingCommitment<C>)>,
    /// The current public key package as each helper sent it (joining holders).
    old_packages: BTreeMap<PeerId, Vec<u8>>,
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
        // Identifiers of every old and new holder (the old ones name the current verifying
        // shares, also of holders that take no part).
        let everyone: BTreeSet<PeerId> = spec.old.iter().chain(&spec.new).copied().collect();
        let mut ids = BTreeMap::new();
        let mut id_of = BTreeMap::new();
        for p in &everyone {
            let id = frost_identifier(p).map_err(SessionError::failed)?;
            ids.insert(id, *p);
            id_of.insert(*p, id);
        }
        if ids.len() != everyone.len() {
            return Err(SessionError::failed("two holders share an identifier"));
        }
        if !participants.contains(&local) {
            return Err(SessionError::failed(format!(
                "this node ({local}) takes no part in the reshare"
            )));
        }
        let helpers = spec.helpers();
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
            id_of,
        };
        common.me = common.roles(&local);
        let me = common.me;
        let (old_digest, old_bytes) = match (&old, me.old) {
            (Some(share), true) => {
                let package = &share.public_key_package;
                if package.min_signers() != Some(common.spec.threshold) {
                    return Err(SessionError::failed(format!(
                        "this node's share of key {} is not of threshold {}",
                        common.spec.key_id, common.spec.threshold
                    )));
                }
                let held: Vec<Identifier<C>> = package.verifying_shares().keys().copied().collect();
                let mut expected: Vec<Identifier<C>> =
                    common.spec.old.iter().map(|p| common.id(p)).collect();
                expected.sort();
                if held != expected || *share.key_package.identifier() != common.id(&local) {
                    return Err(SessionError::failed(format!(
                        "this node's share of key {} is not one of the current holders' generation",
                        common.spec.key_id
                    )));
                }
                let bytes = package
                    .serialize()
                    .map_err(|e| SessionError::failed(format!("public key package: {e}")))?;
                (Some(old_key_digest(&common.spec, &bytes)), Some(bytes))
            }
            (None, false) => (None, None),
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
        let dealt = match (&old, me.helper) {
            (Some(share), true) => Some(deal(&common, &share.key_package)?),
            _ => None,
        };
        let commitment_bytes = match &dealt {
            Some(d) => Some(
                d.commitment
                    .serialize_whole()
                    .map_err(|e| SessionError::failed(format!("commitment: {e}")))?,
            ),
            None => None,
        };
        let mut outgoing = Vec::new();
        for peer in common.others() {
            let them = common.roles(&peer);
            let mut message = Round1Message {
                old_key: old_digest,
                ..Default::default()
            };
            if let Some(d) = dealt.as_ref().filter(|_| them.new) {
                message.share = Some(d.shares[&peer].serialize());
                message.commitment = commitment_bytes.clone();
            }
            if me.helper && them.joining {
                message.old_public_key_package = old_bytes.clone();
            }
            outgoing.push((peer, message));
        }
        let own = dealt
            .filter(|_| me.new)
            .map(|d| (d.shares[&local], d.commitment));
        let mut old_digests = BTreeMap::new();
        if let Some(d) = old_digest {
            old_digests.insert(local, d);
        }
        let round = Self {
            common,
            old,
            old_digest,
            own,
            received: BTreeMap::new(),
            old_digests,
            dealt: BTreeMap::new(),
            old_packages: BTreeMap::new(),
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
    /// old holder whose generation digest differs from this node's, a share or commitment
    /// that does not decode or a commitment of another threshold, a second, different
    /// message. (Whether a dealt share is right is checked by [`Round1::confirm`].)
    pub fn receive(&mut self, from: PeerId, message: &Round1Message) -> Result<(), SessionError> {
        let them = self.common.check_sender(&from, "reshare round-1 message")?;
        let me = self.common.me;
        let c = &self.common;
        c.check_part(
            from,
            "generation digest",
            message.old_key.is_some(),
            them.old,
        )?;
        let deals = them.helper && me.new;
        c.check_part(from, "dealt share", message.share.is_some(), deals)?;
        c.check_part(from, "commitment", message.commitment.is_some(), deals)?;
        c.check_part(
            from,
            "public key package",
            message.old_public_key_package.is_some(),
            them.helper && me.joining,
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
        let dealt = match (&message.share, &message.commitment) {
            (Some(share), Some(commitment)) => {
                let share = SigningShare::<C>::deserialize(share).map_err(|e| {
                    SessionError::blame(
                        vec![from],
                        format!("participant {from} sent a malformed dealt share: {e}"),
                    )
                })?;
                let commitment = VerifiableSecretSharingCommitment::<C>::deserialize_whole(
                    commitment,
                )
                .map_err(|e| {
                    SessionError::blame(
                        vec![from],
                        format!("participant {from} sent a malformed commitment: {e}"),
                    )
                })?;
                if commitment.coefficients().len() != usize::from(c.spec.threshold) {
                    return Err(SessionError::blame(
                        vec![from],
                        format!(
                            "participant {from} dealt a polynomial for another threshold than {}",
                            c.spec.threshold
                        ),
                    ));
                }
                Some((share, commitment))
            }
            _ => None,
        };
        if !take_once(&mut self.received, from, message.clone(), "reshare round-1")? {
            return Ok(());
        }
        if let Some(d) = message.old_key {
            self.old_digests.insert(from, d);
        }
        if let Some(d) = dealt {
            self.dealt.insert(from, d);
        }
        if let Some(bytes) = &message.old_public_key_package {
            self.old_packages.insert(from, bytes.clone());
        }
        Ok(())
    }

    /// Once every round-1 message arrived: checks that every old participant holds the
    /// same generation, and for a new holder each helper's dealing (the share against the
    /// commitment, the commitment's constant term against the helper's weighted verifying
    /// share); then the new share and public key package. Returns the round and, for a new
    /// holder, the confirmation digest to send to every other participant.
    pub fn confirm(self) -> Result<(Confirming<C>, Option<[u8; 32]>), SessionError> {
        let c = &self.common;
        c.incomplete(&self.received, &c.others(), "round 1")?;
        let digests: BTreeSet<&[u8; 32]> = self.old_digests.values().collect();
        let old_digest = match digests.into_iter().collect::<Vec<_>>()[..] {
            [d] => *d,
            _ => {
                return Err(SessionError::failed(format!(
                    "the current holders of key {} hold different public key packages or metadata: they are not at one generation",
                    c.spec.key_id
                )));
            }
        };
        let me = c.me;
        let mut output = None;
        let mut mine = None;
        if me.new {
            let old_public = match &self.old {
                Some(share) => share.public_key_package.clone(),
                None => {
                    for (helper, bytes) in &self.old_packages {
                        if old_key_digest(&c.spec, bytes) != old_digest {
                            return Err(SessionError::blame(
                                vec![*helper],
                                format!(
                                    "participant {helper} sent a public key package other than the one every current holder named"
                                ),
                            ));
                        }
                    }
                    let bytes = self.old_packages.values().next().ok_or_else(|| {
                        SessionError::failed("no helper sent the current public key package")
                    })?;
                    scheme::decode(bytes, PublicKeyPackage::<C>::deserialize).map_err(|e| {
                        SessionError::failed(format!("the current public key package: {e:?}"))
                    })?
                }
            };
            let threshold = c.spec.threshold;
            if old_public.min_signers() != Some(threshold) {
                return Err(SessionError::failed(format!(
                    "the current public key package is not of threshold {threshold}"
                )));
            }
            let helper_ids = c.helper_ids();
            let my_id = c.id(&c.local);
            let mut dealt: BTreeMap<
                PeerId,
                &(SigningShare<C>, VerifiableSecretSharingCommitment<C>),
            > = self.dealt.iter().map(|(p, d)| (*p, d)).collect();
            if let Some(own) = &self.own {
                dealt.insert(c.local, own);
            }
            let mut sum = <<C::Group as Group>::Field as Field>::zero();
            let mut commitments = Vec::new();
            for helper in &c.helpers {
                let (share, commitment) = dealt.get(helper).ok_or_else(|| {
                    SessionError::failed(format!("no dealing from helper {helper}"))
                })?;
                let id = c.id(helper);
                let verifying = old_public.verifying_shares().get(&id).ok_or_else(|| {
                    SessionError::failed(format!(
                        "helper {helper} has no verifying share in the current public key package"
                    ))
                })?;
                let weighted = verifying.to_element() * lambda(&helper_ids, id)?;
                if commitment.coefficients()[0].value() != weighted {
                    return Err(SessionError::blame(
                        vec![*helper],
                        format!(
                            "participant {helper} dealt a polynomial whose constant term is not its own weighted share"
                        ),
                    ));
                }
                let check = SecretShare::new(my_id, *share, (*commitment).clone());
                if check.verify().is_err() {
                    return Err(SessionError::blame(
                        vec![*helper],
                        format!(
                            "participant {helper} dealt a share that does not match its commitment"
                        ),
                    ));
                }
                sum = sum + share.to_scalar();
                commitments.push((*commitment).clone());
            }
            let refs: Vec<&VerifiableSecretSharingCommitment<C>> = commitments.iter().collect();
            let group = frost::keys::sum_commitments(&refs)
                .map_err(|e| SessionError::failed(format!("summing the commitments: {e}")))?;
            let new_ids: BTreeSet<Identifier<C>> = c.spec.new.iter().map(|p| c.id(p)).collect();
            let public_key_package = PublicKeyPackage::from_commitment(&new_ids, &group)
                .map_err(|e| SessionError::failed(format!("the new public key package: {e}")))?;
            if public_key_package.verifying_key() != old_public.verifying_key() {
                return Err(SessionError::failed(
                    "the dealt shares are of another group key",
                ));
            }
            let signing_share = SigningShare::new(sum);
            let verifying_share = public_key_package.verifying_shares()[&my_id];
            let key_package = KeyPackage::new(
                my_id,
                signing_share,
                verifying_share,
                *public_key_package.verifying_key(),
                threshold,
            );
            let d = confirmation_digest(&c.spec, &old_digest, &public_key_package)?;
            mine = Some(d);
            output = Some(scheme::Share {
                key_package,
                public_key_package,
            });
        }
        let confirming = Confirming {
            common: self.common,
            mine,
            output,
            confirmed: BTreeMap::new(),
        };
        Ok((confirming, mine))
    }
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
    let mut fields = Fields::new(CONFIRM_DOMAIN)
        .field(spec.key_id.as_bytes())
        .field(spec.scheme.name().as_bytes())
        .raw(&spec.threshold.to_be_bytes())
        .raw(&spec.generation.to_be_bytes());
    for set in [&spec.old, &spec.new] {
        fields = fields.peers(set);
    }
    Ok(fields
        .raw(old_digest)
        .field(&package)
        .raw(&spec.metadata_digest)
        .finish())
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
    /// `tamper1`/`tamper2` had their way with it (sender, recipient, message). A participant
    /// stops at its first error.
    fn run<C: Suite>(
        spec: &ReshareSpec,
        shares: &BTreeMap<PeerId, scheme::Share<C>>,
        tamper1: impl Fn(PeerId, PeerId, &mut Round1Message),
        tamper2: impl Fn(PeerId, PeerId, &mut [u8; 32]),
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
        let mut c = BTreeMap::new();
        let mut sent2 = Vec::new();
        for (p, round) in r1 {
            match round.confirm() {
                Ok((round, digest)) => {
                    c.insert(p, round);
                    if let Some(d) = digest {
                        sent2.extend(all.iter().filter(|q| **q != p).map(|q| (p, *q, d)));
                    }
                }
                Err(e) => {
                    errors.insert(p, e);
                }
            }
        }
        for (from, to, mut d) in sent2 {
            tamper2(from, to, &mut d);
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
        run(spec, shares, |_, _, _| {}, |_, _, _| {})
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
        assert_eq!(spec.helpers(), holders[..2].to_vec());
        assert!(spec.joining().is_empty());
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
        assert_eq!(
            spec.participants(),
            kept,
            "enough stay: the dropped take no part"
        );
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
    fn a_helper_that_deals_a_wrong_share_or_another_constant_is_blamed() {
        let holders = peers(3);
        let old = key::<Ed>(2, &holders);
        let joining = peers(1)[0];
        let new_set = sorted(holders.iter().copied().chain([joining]).collect());
        let spec = spec::<Ed>(2, &holders, &new_set);
        let cheat = spec.helpers()[0];
        // A share that is a valid scalar but not the one the commitment implies.
        let results = run(
            &spec,
            &old,
            |from, to, m| {
                if from == cheat && to == joining {
                    let mut share = m.share.clone().unwrap();
                    share[0] ^= 1;
                    m.share = Some(share);
                }
            },
            |_, _, _| {},
        );
        blames(&results, &joining, &cheat, "does not match its commitment");
        // A consistent dealing of another secret (a fresh polynomial, its own commitment).
        let (_, other) = Round1::<Ed>::start(
            spec.clone(),
            cheat,
            Some(key::<Ed>(2, &holders)[&cheat].clone()),
        )
        .unwrap();
        let other: BTreeMap<PeerId, Round1Message> = other.into_iter().collect();
        let results = run(
            &spec,
            &old,
            |from, to, m| {
                if from == cheat && to == joining {
                    m.share = other[&joining].share.clone();
                    m.commitment = other[&joining].commitment.clone();
                }
            },
            |_, _, _| {},
        );
        blames(&results, &joining, &cheat, "not its own weighted share");
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
        );
        blames(&results, &holders[0], &liar, "another generation");
        assert!(error(&results, &joining).contains("not at one generation"));
        let helper = spec.helpers()[1];
        let other = key::<Ed>(2, &holders);
        let results = run(
            &spec,
            &old,
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
    fn a_different_confirmation_is_blamed() {
        let holders = peers(3);
        let old = key::<Ed>(2, &holders);
        let spec = spec::<Ed>(2, &holders, &holders);
        let cheat = holders[1];
        let results = run(
            &spec,
            &old,
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
        let helper = spec.helpers()[0];
        let (mut round, _) = Round1::<Ed>::start(spec.clone(), joining, None).unwrap();
        let (_, out) =
            Round1::<Ed>::start(spec.clone(), helper, Some(old[&helper].clone())).unwrap();
        let to_joining = out.iter().find(|(to, _)| *to == joining).unwrap().1.clone();
        assert!(to_joining.share.is_some() && to_joining.old_public_key_package.is_some());
        let stranger = PeerId::random();
        assert_eq!(
            round.receive(stranger, &to_joining).unwrap_err().blamed(),
            [stranger]
        );
        let mut bare = to_joining.clone();
        bare.commitment = None;
        let e = round.receive(helper, &bare).unwrap_err();
        assert!(e.to_string().contains("left out the commitment"), "{e}");
        let mut extra = to_joining.clone();
        extra.old_key = None;
        let e = round.receive(helper, &extra).unwrap_err();
        assert!(
            e.to_string().contains("left out the generation digest"),
            "{e}"
        );
        let mut garbage = to_joining.clone();
        garbage.commitment = Some(b"garbage".to_vec());
        assert!(
            round
                .receive(helper, &garbage)
                .unwrap_err()
                .to_string()
                .contains("malformed")
        );
        let mut short = to_joining.clone();
        let commitment = short.commitment.clone().unwrap();
        short.commitment = Some(commitment[..commitment.len() / 2].to_vec());
        assert!(round.receive(helper, &short).unwrap_err().blamed() == [helper]);
        assert!(round.received.is_empty(), "nothing refused was kept");
        round.receive(helper, &to_joining).unwrap();
        round.receive(helper, &to_joining).unwrap();
        let (_, again) = Round1::<Ed>::start(spec, helper, Some(old[&helper].clone())).unwrap();
        let second = again.into_iter().find(|(to, _)| *to == joining).unwrap().1;
        assert!(
            round
                .receive(helper, &second)
                .unwrap_err()
                .to_string()
                .contains("two different")
        );
        assert!(
            round.confirm().is_err(),
            "confirmed before every message arrived"
        );
    }
}
