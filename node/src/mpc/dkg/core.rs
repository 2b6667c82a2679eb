//! FROST distributed key generation as an I/O-free core: no network, no clock, no task. The
//! driver ([`super`]) sends what a round returns and hands in what arrived; every check of
//! an incoming message is made here, at the top of the method that takes it.
//!
//! The rounds are types, each consumed by the step that ends it:
//! [`Round1::start`] (frost part 1, the package to broadcast) → [`Round1::receive`] from
//! every other participant → [`Round1::echo`] (what this node saw of everyone's package) →
//! [`Echoing::receive`] → [`Echoing::part2`] (equivocation check, frost part 2, one package
//! per participant) → [`Round2::receive`] → [`Round2::part3`] (frost part 3, the
//! confirmation to broadcast) → [`Confirming::receive`] → [`Confirming::finish`] (the key
//! package, once every participant confirmed the same key).
//!
//! The confirmation is a digest over the key id, the threshold, the participants, the
//! public key package (group key and every participant's verifying share) and the signing
//! policy: a key exists only if every participant derived the same group key for the same
//! key id under the same policy.

use std::collections::{BTreeMap, BTreeSet};

use frost_core::{self as frost, Identifier};
use libp2p::PeerId;
use sha2::{Digest, Sha256};

use super::super::digest::Fields;
use super::super::scheme::{self, Scheme, Suite};
use super::super::session::{SessionError, join_peers};
use super::super::{frost_error, frost_identifier};

/// Domain of the confirmation digest.
const CONFIRM_DOMAIN: &[u8] = b"p2p-mpc dkg confirmation v1";

/// What every participant of one DKG agrees on before it starts.
#[derive(Debug, Clone)]
pub struct DkgSpec {
    pub key_id: String,
    /// The signature scheme; a round of another ciphersuite refuses to start.
    pub scheme: Scheme,
    pub threshold: u16,
    /// Sorted, unique, this node included.
    pub participants: Vec<PeerId>,
    /// Digest of the key's signing policy.
    pub policy_digest: [u8; 32],
}

/// A participant's commitment to its secret polynomial (round 1).
type Commitment<C> = frost::keys::VerifiableSecretSharingCommitment<C>;

/// Messages for single peers: (recipient, bytes).
pub type Outgoing = Vec<(PeerId, Vec<u8>)>;

/// A participant's digest of each participant's round-1 package, as sent in the echo.
pub type EchoDigests = Vec<(String, [u8; 32])>;

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The parts of a DKG that every round carries.
struct Common<C: Suite> {
    spec: DkgSpec,
    local: PeerId,
    ids: BTreeMap<Identifier<C>, PeerId>,
    id_of: BTreeMap<PeerId, Identifier<C>>,
}

impl<C: Suite> Common<C> {
    fn others(&self) -> Vec<PeerId> {
        self.spec
            .participants
            .iter()
            .filter(|p| **p != self.local)
            .copied()
            .collect()
    }

    /// Refuses a message from this node itself or from a peer outside the DKG.
    fn check_sender(&self, from: &PeerId, what: &str) -> Result<(), SessionError> {
        if *from == self.local || !self.id_of.contains_key(from) {
            return Err(SessionError::blame(
                vec![*from],
                format!("peer {from} is not another participant of this DKG and sent a {what}"),
            ));
        }
        Ok(())
    }
}

/// Takes `value` from `from` into `got` once; the same value again is a no-op, a different
/// one is equivocation.
fn take_once<T: PartialEq>(
    got: &mut BTreeMap<PeerId, T>,
    from: PeerId,
    value: T,
    what: &str,
) -> Result<(), SessionError> {
    match got.get(&from) {
        Some(previous) if *previous == value => Ok(()),
        Some(_) => Err(SessionError::blame(
            vec![from],
            format!("participant {from} sent two different {what} messages"),
        )),
        None => {
            got.insert(from, value);
            Ok(())
        }
    }
}

fn missing<C: Suite, T>(common: &Common<C>, got: &BTreeMap<PeerId, T>) -> Vec<PeerId> {
    common
        .others()
        .into_iter()
        .filter(|p| !got.contains_key(p))
        .collect()
}

fn complete<C: Suite, T>(
    common: &Common<C>,
    got: &BTreeMap<PeerId, T>,
    what: &str,
) -> Result<(), SessionError> {
    let missing = missing(common, got);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(SessionError::failed(format!(
            "the DKG {what} is not complete: missing {}",
            join_peers(&missing)
        )))
    }
}

/// Part 1: this node's package sent, the others' packages as they come.
pub struct Round1<C: Suite> {
    common: Common<C>,
    secret: frost::keys::dkg::round1::SecretPackage<C>,
    own: Vec<u8>,
    /// This node's own commitment (part of the untweaked group key).
    own_commitment: Commitment<C>,
    received: BTreeMap<PeerId, Vec<u8>>,
    packages: BTreeMap<Identifier<C>, frost::keys::dkg::round1::Package<C>>,
}

impl<C: Suite> Round1<C> {
    /// Starts a DKG on `local`: frost part 1. Returns the round and the package to send to
    /// every other participant.
    pub fn start(spec: DkgSpec, local: PeerId) -> Result<(Self, Vec<u8>), SessionError> {
        if spec.scheme != C::SCHEME {
            return Err(SessionError::failed(format!(
                "a {} DKG cannot run with the {} ciphersuite",
                spec.scheme,
                C::SCHEME
            )));
        }
        let mut ids = BTreeMap::new();
        let mut id_of = BTreeMap::new();
        for p in &spec.participants {
            let id = frost_identifier(p).map_err(SessionError::failed)?;
            ids.insert(id, *p);
            id_of.insert(*p, id);
        }
        if ids.len() != spec.participants.len() {
            return Err(SessionError::failed("the participants are not unique"));
        }
        let Some(my_id) = id_of.get(&local).copied() else {
            return Err(SessionError::failed(format!(
                "this node ({local}) is not a participant of the DKG"
            )));
        };
        let n = spec.participants.len() as u16;
        let (secret, package) = frost::keys::dkg::part1(my_id, n, spec.threshold, rand_core::OsRng)
            .map_err(|e| SessionError::failed(format!("DKG part 1: {e}")))?;
        let own = package
            .serialize()
            .map_err(|e| SessionError::failed(format!("DKG part 1: {e}")))?;
        let round = Self {
            common: Common {
                spec,
                local,
                ids,
                id_of,
            },
            secret,
            own: own.clone(),
            own_commitment: package.commitment().clone(),
            received: BTreeMap::new(),
            packages: BTreeMap::new(),
        };
        Ok((round, own))
    }

    /// The other participants, sorted.
    pub fn others(&self) -> Vec<PeerId> {
        self.common.others()
    }

    /// The participants whose package has not arrived.
    pub fn missing(&self) -> Vec<PeerId> {
        missing(&self.common, &self.received)
    }

    /// Takes `from`'s round-1 package. Refused (blamed): this node itself or a stranger,
    /// bytes that are not a round-1 package, a package for another threshold, a second,
    /// different package.
    pub fn receive(&mut self, from: PeerId, bytes: &[u8]) -> Result<(), SessionError> {
        self.common.check_sender(&from, "DKG round-1 package")?;
        let package = scheme::decode(bytes, frost::keys::dkg::round1::Package::<C>::deserialize)
            .map_err(|e| SessionError::undecodable::<C>(from, "DKG round-1 package", e))?;
        let coefficients = package.commitment().serialize().map(|c| c.len()).ok();
        if coefficients != Some(usize::from(self.common.spec.threshold)) {
            return Err(SessionError::blame(
                vec![from],
                format!(
                    "participant {from} sent a DKG round-1 package for another threshold than {}",
                    self.common.spec.threshold
                ),
            ));
        }
        take_once(&mut self.received, from, bytes.to_vec(), "DKG round-1")?;
        self.packages.insert(self.common.id_of[&from], package);
        Ok(())
    }

    /// Once every package arrived: the echo, a digest of each participant's package as this
    /// node received it (its own included), to send to every other participant.
    pub fn echo(self) -> Result<(Echoing<C>, EchoDigests), SessionError> {
        complete(&self.common, &self.received, "round 1")?;
        let mut view: BTreeMap<PeerId, [u8; 32]> =
            self.received.iter().map(|(p, b)| (*p, sha256(b))).collect();
        view.insert(self.common.local, sha256(&self.own));
        let digests = view.iter().map(|(p, d)| (p.to_string(), *d)).collect();
        let echoing = Echoing {
            common: self.common,
            secret: self.secret,
            own_commitment: self.own_commitment,
            packages: self.packages,
            view,
            echoes: BTreeMap::new(),
        };
        Ok((echoing, digests))
    }
}

/// The echo round: what the others saw of everyone's round-1 package.
pub struct Echoing<C: Suite> {
    common: Common<C>,
    secret: frost::keys::dkg::round1::SecretPackage<C>,
    own_commitment: Commitment<C>,
    packages: BTreeMap<Identifier<C>, frost::keys::dkg::round1::Package<C>>,
    view: BTreeMap<PeerId, [u8; 32]>,
    echoes: BTreeMap<PeerId, BTreeMap<PeerId, [u8; 32]>>,
}

impl<C: Suite> Echoing<C> {
    /// The participants whose echo has not arrived.
    pub fn missing(&self) -> Vec<PeerId> {
        missing(&self.common, &self.echoes)
    }

    /// Takes `from`'s echo. Refused (blamed): this node itself or a stranger, an echo that
    /// does not name every participant exactly once (or names anyone else), a second,
    /// different echo.
    pub fn receive(&mut self, from: PeerId, digests: &EchoDigests) -> Result<(), SessionError> {
        self.common.check_sender(&from, "DKG echo")?;
        let mut echo = BTreeMap::new();
        for (peer, digest) in digests {
            let named = peer
                .parse::<PeerId>()
                .ok()
                .filter(|p| self.common.id_of.contains_key(p));
            let fresh = named.map(|p| echo.insert(p, *digest).is_none());
            if fresh != Some(true) {
                return Err(SessionError::blame(
                    vec![from],
                    format!(
                        "participant {from} sent a DKG echo that names `{peer}` wrongly (unknown or twice)"
                    ),
                ));
            }
        }
        if echo.len() != self.common.spec.participants.len() {
            return Err(SessionError::blame(
                vec![from],
                format!("participant {from} sent an incomplete DKG echo"),
            ));
        }
        take_once(&mut self.echoes, from, echo, "DKG echo")
    }

    /// Once every echo arrived: checks that everyone saw the same package from everyone
    /// (else the sender of differing packages is blamed and the DKG ends), then frost part
    /// 2. Returns the round and the package for each other participant.
    ///
    /// Echoes come over authenticated connections and are only compared by their receiver,
    /// never forwarded, so they need no signature: a participant can only lie about what it
    /// received, which makes the packages look different and ends the DKG; it cannot make
    /// two honest participants accept different packages.
    pub fn part2(self) -> Result<(Round2<C>, Outgoing), SessionError> {
        complete(&self.common, &self.echoes, "echo")?;
        let mut equivocators = Vec::new();
        for (sender, mine) in &self.view {
            if self
                .echoes
                .values()
                .any(|echo| echo.get(sender) != Some(mine))
            {
                equivocators.push(*sender);
            }
        }
        if !equivocators.is_empty() {
            return Err(SessionError::blame(
                equivocators.clone(),
                format!(
                    "participant {} sent different DKG round-1 packages to different participants (echo broadcast mismatch)",
                    join_peers(&equivocators)
                ),
            ));
        }
        let (secret, outgoing) = frost::keys::dkg::part2(self.secret, &self.packages)
            .map_err(|e| frost_error(e, &self.common.ids, "DKG part 2"))?;
        let mut packages = Vec::new();
        for (id, package) in outgoing {
            let Some(peer) = self.common.ids.get(&id).copied() else {
                return Err(SessionError::failed(
                    "DKG part 2 produced an unknown identifier",
                ));
            };
            let bytes = package
                .serialize()
                .map_err(|e| SessionError::failed(format!("DKG part 2: {e}")))?;
            packages.push((peer, bytes));
        }
        let round = Round2 {
            common: self.common,
            secret,
            own_commitment: self.own_commitment,
            round1: self.packages,
            received: BTreeMap::new(),
            packages: BTreeMap::new(),
        };
        Ok((round, packages))
    }
}

/// Part 2: the packages the others made for this node.
pub struct Round2<C: Suite> {
    common: Common<C>,
    secret: frost::keys::dkg::round2::SecretPackage<C>,
    own_commitment: Commitment<C>,
    round1: BTreeMap<Identifier<C>, frost::keys::dkg::round1::Package<C>>,
    received: BTreeMap<PeerId, Vec<u8>>,
    packages: BTreeMap<Identifier<C>, frost::keys::dkg::round2::Package<C>>,
}

impl<C: Suite> Round2<C> {
    /// The participants whose package has not arrived.
    pub fn missing(&self) -> Vec<PeerId> {
        missing(&self.common, &self.received)
    }

    /// Takes `from`'s round-2 package for this node. Refused (blamed): this node itself or
    /// a stranger, bytes that are not a round-2 package, a second, different package.
    /// (Whether the share in it is right is checked by part 3, which names the culprit.)
    pub fn receive(&mut self, from: PeerId, bytes: &[u8]) -> Result<(), SessionError> {
        self.common.check_sender(&from, "DKG round-2 package")?;
        let package = scheme::decode(bytes, frost::keys::dkg::round2::Package::<C>::deserialize)
            .map_err(|e| SessionError::undecodable::<C>(from, "DKG round-2 package", e))?;
        take_once(&mut self.received, from, bytes.to_vec(), "DKG round-2")?;
        self.packages.insert(self.common.id_of[&from], package);
        Ok(())
    }

    /// Once every package arrived: frost part 3 (each share checked against its sender's
    /// commitment). Returns the round and the confirmation to send to every other
    /// participant: the group key and the confirmation digest.
    pub fn part3(self) -> Result<(Confirming<C>, Confirmation), SessionError> {
        complete(&self.common, &self.received, "round 2")?;
        let (key_package, public_key_package) =
            frost::keys::dkg::part3(&self.secret, &self.round1, &self.packages)
                .map_err(|e| frost_error(e, &self.common.ids, "DKG part 3"))?;
        let group_key =
            C::public_key(public_key_package.verifying_key()).map_err(SessionError::failed)?;
        // The group key before the ciphersuite's post-processing: the sum of everyone's
        // commitments (for Taproot, the internal key P of the output key Q).
        let mut commitments: BTreeMap<Identifier<C>, &Commitment<C>> = self
            .round1
            .iter()
            .map(|(id, package)| (*id, package.commitment()))
            .collect();
        commitments.insert(self.common.id_of[&self.common.local], &self.own_commitment);
        let untweaked = frost::keys::PublicKeyPackage::from_dkg_commitments(&commitments)
            .map_err(|e| SessionError::failed(format!("group key: {e}")))?;
        C::check_output_key(&untweaked, public_key_package.verifying_key())
            .map_err(SessionError::failed)?;
        let internal_key =
            C::internal_key(untweaked.verifying_key()).map_err(SessionError::failed)?;
        let digest = confirmation_digest(&self.common.spec, &public_key_package, &internal_key)?;
        let mine = Confirmation { group_key, digest };
        let confirming = Confirming {
            common: self.common,
            mine: mine.clone(),
            internal_key,
            key_package,
            public_key_package,
            confirmed: BTreeSet::new(),
        };
        Ok((confirming, mine))
    }
}

/// What a participant confirms at the end of a DKG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmation {
    /// The group key as key info shows it ([`Suite::public_key`]).
    pub group_key: Vec<u8>,
    /// The confirmation digest (see the module's documentation).
    pub digest: [u8; 32],
}

/// The digest each participant confirms: the key id, the scheme, the threshold, the
/// participants, the public key package and the policy digest, under their own domain.
fn confirmation_digest<C: Suite>(
    spec: &DkgSpec,
    public_key_package: &frost::keys::PublicKeyPackage<C>,
    internal_key: &Option<Vec<u8>>,
) -> Result<[u8; 32], SessionError> {
    let package = public_key_package
        .serialize()
        .map_err(|e| SessionError::failed(format!("public key package: {e}")))?;
    Ok(Fields::new(CONFIRM_DOMAIN)
        .field(spec.key_id.as_bytes())
        .field(spec.scheme.name().as_bytes())
        .raw(&spec.threshold.to_be_bytes())
        .peers(&spec.participants)
        .field(&package)
        .field(internal_key.as_deref().unwrap_or_default())
        .raw(&spec.policy_digest)
        .finish())
}

/// The confirmation round: every other participant must confirm the same key.
pub struct Confirming<C: Suite> {
    common: Common<C>,
    mine: Confirmation,
    internal_key: Option<Vec<u8>>,
    key_package: frost::keys::KeyPackage<C>,
    public_key_package: frost::keys::PublicKeyPackage<C>,
    confirmed: BTreeSet<PeerId>,
}

/// A key that every participant confirmed.
pub struct DkgOutput<C: Suite> {
    /// The group key as key info shows it ([`Suite::public_key`]).
    pub group_key: Vec<u8>,
    /// The untweaked key, for schemes that show it ([`Suite::internal_key`]).
    pub internal_key: Option<Vec<u8>>,
    pub share: scheme::Share<C>,
}

impl<C: Suite> Confirming<C> {
    /// The participants whose confirmation has not arrived.
    pub fn missing(&self) -> Vec<PeerId> {
        self.common
            .others()
            .into_iter()
            .filter(|p| !self.confirmed.contains(p))
            .collect()
    }

    /// Takes `from`'s confirmation. Refused (blamed): this node itself or a stranger, and a
    /// confirmation of another group key, key id, participant set or policy.
    pub fn receive(
        &mut self,
        from: PeerId,
        confirmation: &Confirmation,
    ) -> Result<(), SessionError> {
        self.common.check_sender(&from, "DKG confirmation")?;
        if *confirmation != self.mine {
            return Err(SessionError::blame(
                vec![from],
                format!(
                    "participant {from} derived a different group key or holds a different key id, participant set or signing policy; the key is discarded"
                ),
            ));
        }
        self.confirmed.insert(from);
        Ok(())
    }

    /// Once every other participant confirmed: the key.
    pub fn finish(self) -> Result<DkgOutput<C>, SessionError> {
        let missing = self.missing();
        if !missing.is_empty() {
            return Err(SessionError::failed(format!(
                "the DKG confirmation is not complete: missing {}",
                join_peers(&missing)
            )));
        }
        Ok(DkgOutput {
            group_key: self.mine.group_key,
            internal_key: self.internal_key,
            share: scheme::Share {
                key_package: self.key_package,
                public_key_package: self.public_key_package,
            },
        })
    }
}

/// What other cores' tests build on: a key made by this core.
#[cfg(test)]
pub(crate) mod testing {
    pub(crate) use super::tests::dkg;
}

#[cfg(test)]
mod tests {
    use super::super::super::scheme::testing::for_each_suite;
    use super::*;
    use frost_ed25519::Ed25519Sha512 as Ed;
    use proptest::prelude::*;

    fn spec<C: Suite>(t: u16, peers: &[PeerId], key_id: &str) -> DkgSpec {
        DkgSpec {
            key_id: key_id.into(),
            scheme: C::SCHEME,
            threshold: t,
            participants: peers.to_vec(),
            policy_digest: [7; 32],
        }
    }

    fn peers(n: usize) -> Vec<PeerId> {
        let mut peers: Vec<PeerId> = (0..n).map(|_| PeerId::random()).collect();
        peers.sort();
        peers
    }

    /// Every participant's round 1 started, and the packages each sent.
    fn started<C: Suite>(t: u16, peers: &[PeerId]) -> (Vec<Round1<C>>, Vec<Vec<u8>>) {
        let spec = spec::<C>(t, peers, "k1");
        peers
            .iter()
            .map(|p| Round1::start(spec.clone(), *p).unwrap())
            .unzip()
    }

    /// Every participant past round 1, each having received every package.
    fn echoing<C: Suite>(
        t: u16,
        peers: &[PeerId],
    ) -> (Vec<Echoing<C>>, Vec<EchoDigests>, Vec<Vec<u8>>) {
        let (mut r1, packages) = started::<C>(t, peers);
        for (i, round) in r1.iter_mut().enumerate() {
            for (j, package) in packages.iter().enumerate() {
                if i != j {
                    round.receive(peers[j], package).unwrap();
                }
            }
        }
        let (e, d) = r1.into_iter().map(|r| r.echo().unwrap()).unzip();
        (e, d, packages)
    }

    /// Every participant in round 2, and the packages each made (recipient, bytes).
    fn in_round2<C: Suite>(t: u16, peers: &[PeerId]) -> (Vec<Round2<C>>, Vec<Outgoing>) {
        let (mut e, digests, _) = echoing::<C>(t, peers);
        for (i, round) in e.iter_mut().enumerate() {
            for (j, d) in digests.iter().enumerate() {
                if i != j {
                    round.receive(peers[j], d).unwrap();
                }
            }
        }
        e.into_iter().map(|r| r.part2().unwrap()).unzip()
    }

    fn index(peers: &[PeerId], p: &PeerId) -> usize {
        peers.iter().position(|x| x == p).unwrap()
    }

    fn confirming<C: Suite>(t: u16, peers: &[PeerId]) -> (Vec<Confirming<C>>, Vec<Confirmation>) {
        let (mut r2, out) = in_round2::<C>(t, peers);
        for (j, packages) in out.iter().enumerate() {
            for (to, bytes) in packages {
                r2[index(peers, to)].receive(peers[j], bytes).unwrap();
            }
        }
        r2.into_iter().map(|r| r.part3().unwrap()).unzip()
    }

    pub(crate) fn dkg<C: Suite>(t: u16, peers: &[PeerId]) -> Vec<DkgOutput<C>> {
        let (mut c, mine) = confirming::<C>(t, peers);
        for (i, round) in c.iter_mut().enumerate() {
            for (j, m) in mine.iter().enumerate() {
                if i != j {
                    round.receive(peers[j], m).unwrap();
                }
            }
        }
        c.into_iter().map(|r| r.finish().unwrap()).collect()
    }

    /// Signs with the key packages of the first `t` participants and verifies.
    fn signs<C: Suite>(outputs: &[DkgOutput<C>], t: usize) {
        let signers = &outputs[..t];
        let mut nonces = BTreeMap::new();
        let mut commitments = BTreeMap::new();
        for o in signers {
            let id = *o.share.key_package.identifier();
            let (n, c) = frost::round1::commit::<C, _>(
                o.share.key_package.signing_share(),
                &mut rand_core::OsRng,
            );
            nonces.insert(id, n);
            commitments.insert(id, c);
        }
        let package = frost::SigningPackage::<C>::new(commitments, b"made in memory");
        let shares = signers
            .iter()
            .map(|o| {
                let id = *o.share.key_package.identifier();
                (
                    id,
                    frost::round2::sign(&package, &nonces[&id], &o.share.key_package).unwrap(),
                )
            })
            .collect();
        let signature =
            frost::aggregate(&package, &shares, &outputs[0].share.public_key_package).unwrap();
        outputs[0]
            .share
            .public_key_package
            .verifying_key()
            .verify(b"made in memory", &signature)
            .unwrap();
    }

    #[test]
    fn cores_make_a_3_of_5_and_a_7_of_10_key_that_signs() {
        for_each_suite!(make_and_sign);
    }

    fn make_and_sign<C: Suite>() {
        for (t, n) in [(3u16, 5usize), (7, 10)] {
            let peers = peers(n);
            let outputs = dkg::<C>(t, &peers);
            assert_eq!(outputs.len(), n);
            assert!(
                outputs.iter().all(|o| o.group_key == outputs[0].group_key),
                "every participant derived the same group key ({t} of {n})"
            );
            signs(&outputs, usize::from(t));
        }
    }

    fn blamed(result: Result<(), SessionError>, who: PeerId, text: &str) {
        match result {
            Err(e) => {
                assert_eq!(e.blamed(), [who], "{e}");
                assert!(e.to_string().contains(text), "{e}");
            }
            Ok(()) => panic!("accepted; expected a refusal blaming {who} ({text})"),
        }
    }

    #[test]
    fn round_1_refuses_strangers_garbage_other_thresholds_and_equivocation() {
        let peers = peers(3);
        let (mut r1, packages) = started::<Ed>(2, &peers);
        let stranger = PeerId::random();
        blamed(
            r1[0].receive(stranger, &packages[1]),
            stranger,
            "not another participant",
        );
        blamed(
            r1[0].receive(peers[0], &packages[0]),
            peers[0],
            "not another participant",
        );
        blamed(r1[0].receive(peers[1], b"garbage"), peers[1], "malformed");
        // A package of a 3-of-3 DKG in a 2-of-3 one.
        let (_, other_threshold) =
            Round1::<Ed>::start(spec::<Ed>(3, &peers, "k1"), peers[1]).unwrap();
        blamed(
            r1[0].receive(peers[1], &other_threshold),
            peers[1],
            "another threshold",
        );
        // A round-2 package where a round-1 package belongs.
        let (_, out) = in_round2::<Ed>(2, &peers);
        blamed(r1[0].receive(peers[1], &out[1][0].1), peers[1], "malformed");
        r1[0].receive(peers[1], &packages[1]).unwrap();
        r1[0].receive(peers[1], &packages[1]).unwrap();
        let (_, second) = Round1::<Ed>::start(spec::<Ed>(2, &peers, "k1"), peers[1]).unwrap();
        blamed(r1[0].receive(peers[1], &second), peers[1], "two different");
        assert_eq!(r1[0].missing(), vec![peers[2]]);
        let round = r1.remove(0);
        assert!(
            round.echo().is_err(),
            "an echo before every package arrived"
        );
    }

    #[test]
    fn echoes_expose_a_sender_that_sent_different_packages() {
        let peers = peers(3);
        let (mut e, digests, _) = echoing::<Ed>(2, &peers);
        // Participant 2 reports another package from participant 1 than participant 0 got.
        let (_, other) = Round1::<Ed>::start(spec::<Ed>(2, &peers, "k1"), peers[1]).unwrap();
        let mut lying = digests[2].clone();
        for (p, d) in &mut lying {
            if *p == peers[1].to_string() {
                *d = sha256(&other);
            }
        }
        e[0].receive(peers[1], &digests[1]).unwrap();
        e[0].receive(peers[2], &lying).unwrap();
        let round = e.remove(0);
        match round.part2() {
            Err(err) => {
                assert_eq!(err.blamed(), [peers[1]], "{err}");
                assert!(
                    err.to_string().contains("different DKG round-1 packages"),
                    "{err}"
                );
            }
            Ok(_) => panic!("an echo mismatch went unnoticed"),
        }
    }

    #[test]
    fn echoes_must_name_every_participant_once() {
        let peers = peers(3);
        let (mut e, digests, _) = echoing::<Ed>(2, &peers);
        let from = peers[1];
        let mut short = digests[1].clone();
        short.pop();
        blamed(e[0].receive(from, &short), from, "incomplete");
        let mut twice = digests[1].clone();
        twice.push(twice[0].clone());
        blamed(e[0].receive(from, &twice), from, "twice");
        let mut stranger = digests[1].clone();
        stranger[0].0 = PeerId::random().to_string();
        blamed(e[0].receive(from, &stranger), from, "unknown");
        let mut garbage = digests[1].clone();
        garbage[0].0 = "not a peer id".into();
        blamed(e[0].receive(from, &garbage), from, "unknown");
        e[0].receive(from, &digests[1]).unwrap();
        let mut changed = digests[1].clone();
        changed[0].1 = [0; 32];
        blamed(e[0].receive(from, &changed), from, "two different");
        let outsider = PeerId::random();
        blamed(
            e[0].receive(outsider, &digests[1]),
            outsider,
            "not another participant",
        );
    }

    #[test]
    fn a_wrong_round_2_share_blames_its_sender() {
        let peers = peers(3);
        let (mut r2, out) = in_round2::<Ed>(2, &peers);
        // Participant 1 hands participant 0 the package it made for participant 2.
        let for_2 = out[1]
            .iter()
            .find(|(to, _)| *to == peers[2])
            .unwrap()
            .1
            .clone();
        r2[0].receive(peers[1], &for_2).unwrap();
        let for_0 = out[2]
            .iter()
            .find(|(to, _)| *to == peers[0])
            .unwrap()
            .1
            .clone();
        r2[0].receive(peers[2], &for_0).unwrap();
        blamed(r2[0].receive(peers[2], b"garbage"), peers[2], "malformed");
        let round = r2.remove(0);
        match round.part3() {
            Err(e) => assert_eq!(e.blamed(), [peers[1]], "{e}"),
            Ok(_) => panic!("a share made for another participant was taken"),
        }
    }

    #[test]
    fn a_confirmation_of_another_key_or_key_id_is_refused() {
        let peers = peers(3);
        let (mut c, mine) = confirming::<Ed>(2, &peers);
        let mut other_key = mine[1].clone();
        other_key.group_key[0] ^= 1;
        blamed(
            c[0].receive(peers[1], &other_key),
            peers[1],
            "different group key",
        );
        // The same DKG's package under another key id has another digest.
        let mut other_id = mine[1].clone();
        let spec_other = spec::<Ed>(2, &peers, "k2");
        other_id.digest =
            confirmation_digest(&spec_other, &c[1].public_key_package, &c[1].internal_key).unwrap();
        assert_eq!(
            confirmation_digest(
                &spec::<Ed>(2, &peers, "k1"),
                &c[1].public_key_package,
                &c[1].internal_key
            )
            .unwrap(),
            mine[1].digest
        );
        blamed(c[0].receive(peers[1], &other_id), peers[1], "key id");
        let stranger = PeerId::random();
        blamed(
            c[0].receive(stranger, &mine[1]),
            stranger,
            "not another participant",
        );
        c[0].receive(peers[1], &mine[1]).unwrap();
        assert_eq!(c[0].missing(), vec![peers[2]]);
        let round = c.remove(0);
        assert!(
            round.finish().is_err(),
            "finished without every confirmation"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Random and mutated messages to every round: never a panic, and nothing from a
        /// stranger or a refused message is kept (each round holds at most one message per
        /// other participant).
        #[test]
        fn random_messages_to_every_round_are_refused_without_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            flip in any::<usize>(),
            pick in 0usize..3,
        ) {
            let peers = peers(3);
            let from = if pick == 2 { PeerId::random() } else { peers[1 + pick % 2] };
            let (mut r1, packages) = started::<Ed>(2, &peers);
            let _ = r1[0].receive(from, &bytes);
            let mut mutated = packages[1].clone();
            let at = flip % mutated.len();
            mutated[at] ^= 1 << (flip % 8);
            let _ = r1[0].receive(from, &mutated);
            prop_assert!(r1[0].received.len() <= 1);
            prop_assert!(r1[0].received.keys().all(|p| peers.contains(p)));

            let (mut e, digests, _) = echoing::<Ed>(2, &peers);
            let mut echo = digests[1].clone();
            let at = flip % echo.len();
            echo[at].1[flip % 32] ^= 1;
            let _ = e[0].receive(from, &echo);
            let random: EchoDigests = bytes.chunks(32).map(|c| {
                let mut d = [0; 32];
                d[..c.len()].copy_from_slice(c);
                (String::from_utf8_lossy(c).into_owned(), d)
            }).collect();
            let _ = e[0].receive(from, &random);
            prop_assert!(e[0].echoes.len() <= 1);

            let (mut r2, _) = in_round2::<Ed>(2, &peers);
            let _ = r2[0].receive(from, &bytes);
            prop_assert!(r2[0].received.is_empty());

            let (mut c, mine) = confirming::<Ed>(2, &peers);
            let mut confirmation = mine[1].clone();
            confirmation.digest[flip % 32] ^= 1;
            prop_assert!(c[0].receive(from, &confirmation).is_err());
            prop_assert!(c[0].confirmed.is_empty());
        }
    }
}
