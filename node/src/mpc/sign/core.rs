//! FROST signing as an I/O-free core: no network, no clock, no task. The driver
//! ([`super`]) delivers what arrived and sends what the core returns; every check of an
//! incoming message is made here, at the top of the method that takes it.
//!
//! The rounds are types, each consumed by the step that ends it:
//!
//! - a holder: [`Signer::round1`] (needs the admission's [`Admitted`] token, so its request
//!   ids are on disk before a nonce exists) → [`Signer::round2`], which takes the signer by
//!   value: its nonces sign once, and a second round 2 does not compile;
//! - the coordinator: [`Coordinator::start`] (its own round 1, from the token too) →
//!   [`Coordinator::commitments`] until enough holders committed → [`Coordinator::round2`]
//!   (by value) → [`Collecting::share`] until every chosen signer answered → the verified
//!   signature.
//!
//! A second round 2 on a signer, spelled out:
//!
//! The cores are generic over the key's ciphersuite ([`Suite`]); a message of another
//! scheme's ciphersuite is refused as [`SessionError::WrongScheme`].
//!
//! ```compile_fail
//! # fn twice(signer: p2p_mpc_node::mpc::sign::core::Signer<frost_ed25519::Ed25519Sha512>, package: &[u8]) {
//! let _ = signer.round2(package);
//! let _ = signer.round2(package); // `signer` was moved by the first round 2
//! # }
//! ```

use std::collections::BTreeMap;

use frost_core::{self as frost, Identifier};
use libp2p::PeerId;

use super::super::admission::{Admitted, round1};
use super::super::scheme::{self, Share, Suite};
use super::super::session::SessionError;
use super::super::{frost_error, frost_identifier};

/// Round 1 done on a holder: its nonces, waiting for the coordinator's signing package.
pub struct Signer<C: Suite> {
    coordinator: PeerId,
    message: Vec<u8>,
    id: Identifier<C>,
    nonces: frost::round1::SigningNonces<C>,
    commitments: frost::round1::SigningCommitments<C>,
    key_package: frost::keys::KeyPackage<C>,
}

impl<C: Suite> Signer<C> {
    /// Commits to a round for an admitted request; returns the signer and the commitments
    /// to send to `coordinator`.
    pub fn round1(
        admitted: Admitted,
        key: &Share<C>,
        local: &PeerId,
        coordinator: PeerId,
        message: Vec<u8>,
    ) -> Result<(Self, Vec<u8>), SessionError> {
        let id = frost_identifier::<C>(local).map_err(SessionError::failed)?;
        let (nonces, commitments) = round1(admitted, key.key_package.signing_share());
        let bytes = commitments
            .serialize()
            .map_err(|e| SessionError::failed(format!("commitments: {e}")))?;
        let signer = Self {
            coordinator,
            message,
            id,
            nonces,
            commitments,
            key_package: key.key_package.clone(),
        };
        Ok((signer, bytes))
    }

    /// A signer for an admitted request from a presignature: `nonces` made ahead of time and
    /// taken out of this holder's pool ([`super::pool::HeldNonces::take`]). Like
    /// [`round1`](Self::round1), it needs the admission's token: a presignature signs nothing
    /// before the request ids are on disk.
    pub fn presigned(
        admitted: Admitted,
        nonces: frost::round1::SigningNonces<C>,
        key: &Share<C>,
        local: &PeerId,
        coordinator: PeerId,
        message: Vec<u8>,
    ) -> Result<Self, SessionError> {
        let Admitted { .. } = admitted;
        let id = frost_identifier::<C>(local).map_err(SessionError::failed)?;
        Ok(Self {
            coordinator,
            message,
            id,
            commitments: *nonces.commitments(),
            nonces,
            key_package: key.key_package.clone(),
        })
    }

    /// This signer's commitments, serialized.
    pub fn commitments(&self) -> Vec<u8> {
        self.commitments.serialize().unwrap_or_default()
    }

    /// Signs the coordinator's package once: it must be for the authorized message and hold
    /// this signer's own commitments. Returns the signature share. The nonces are gone
    /// afterwards, whatever the outcome.
    pub fn round2(self, package: &[u8]) -> Result<Vec<u8>, SessionError> {
        let coordinator = self.coordinator;
        let package = scheme::decode(package, frost::SigningPackage::<C>::deserialize)
            .map_err(|e| SessionError::undecodable::<C>(coordinator, "signing package", e))?;
        if package.message() != self.message.as_slice()
            || package.signing_commitments().get(&self.id) != Some(&self.commitments)
        {
            return Err(SessionError::blame(
                vec![coordinator],
                format!(
                    "coordinator {coordinator} sent a signing package for another message or other commitments; refused"
                ),
            ));
        }
        let share = frost::round2::sign(&package, &self.nonces, &self.key_package)
            .map_err(|e| SessionError::failed(format!("signing round 2: {e}")))?;
        Ok(share.serialize())
    }
}

/// The coordinator's round 1: its own nonces, and the holders' commitments as they come.
pub struct Coordinator<C: Suite> {
    local: PeerId,
    message: Vec<u8>,
    needed: usize,
    /// FROST identifier of every holder of the key.
    ids: BTreeMap<PeerId, Identifier<C>>,
    nonces: frost::round1::SigningNonces<C>,
    own: frost::round1::SigningCommitments<C>,
    commitments: BTreeMap<PeerId, frost::round1::SigningCommitments<C>>,
    key_package: frost::keys::KeyPackage<C>,
    public_key_package: frost::keys::PublicKeyPackage<C>,
}

impl<C: Suite> Coordinator<C> {
    /// Starts coordinating a signature of `message` with `key` by `holders` (this node
    /// among them), for an admitted request: this node's round 1. `t` signers sign, `key`'s
    /// threshold.
    pub fn start(
        admitted: Admitted,
        key: &Share<C>,
        holders: &[PeerId],
        local: PeerId,
        message: Vec<u8>,
    ) -> Result<Self, SessionError> {
        let mut ids = BTreeMap::new();
        for p in holders {
            ids.insert(*p, frost_identifier(p).map_err(SessionError::failed)?);
        }
        if !ids.contains_key(&local) {
            return Err(SessionError::failed(format!(
                "this node ({local}) does not hold the key"
            )));
        }
        let (nonces, own) = round1(admitted, key.key_package.signing_share());
        Ok(Self {
            local,
            message,
            needed: usize::from(*key.key_package.min_signers()).saturating_sub(1),
            ids,
            nonces,
            own,
            commitments: BTreeMap::new(),
            key_package: key.key_package.clone(),
            public_key_package: key.public_key_package.clone(),
        })
    }

    /// This node's own commitments, serialized.
    pub fn own_commitments(&self) -> Vec<u8> {
        self.own.serialize().unwrap_or_default()
    }

    /// How many other holders' commitments round 2 needs.
    pub fn needed(&self) -> usize {
        self.needed
    }

    /// Whether enough holders committed for round 2.
    pub fn ready(&self) -> bool {
        self.commitments.len() >= self.needed
    }

    /// Takes `from`'s commitments. Refused: a peer that does not hold the key, this node
    /// itself, bytes that are not commitments (blamed), a second, different set from the
    /// same holder (equivocation, blamed), and any set once enough are in (`Ok(false)`:
    /// the holder came too late and is not a signer). `Ok(true)`: taken.
    pub fn commitments(&mut self, from: PeerId, bytes: &[u8]) -> Result<bool, SessionError> {
        if from == self.local || !self.ids.contains_key(&from) {
            return Err(SessionError::blame(
                vec![from],
                format!("peer {from} is not a holder invited to sign"),
            ));
        }
        let c = scheme::decode(bytes, frost::round1::SigningCommitments::<C>::deserialize)
            .map_err(|e| SessionError::undecodable::<C>(from, "signing commitments", e))?;
        match self.commitments.get(&from) {
            Some(previous) if *previous == c => return Ok(true),
            Some(_) => {
                return Err(SessionError::blame(
                    vec![from],
                    format!("participant {from} sent two different sign round 1 messages"),
                ));
            }
            None => {}
        }
        if self.ready() {
            return Ok(false);
        }
        self.commitments.insert(from, c);
        Ok(true)
    }

    /// A presigned attempt: the signing package made with one presignature (commitments
    /// made ahead of time) of each holder in `presigned`, which must be exactly as many as
    /// round 2 needs. This node signs nothing yet: [`Presigned::round2`] signs once every
    /// chosen holder took the package, and [`Presigned::abandon`] goes back to two rounds
    /// with this node's nonces unused. On error the coordinator comes back as it was.
    pub fn presigned(
        mut self,
        presigned: &[(PeerId, Vec<u8>)],
    ) -> Result<Presigned<C>, Box<(Self, SessionError)>> {
        let mut taken = Ok(());
        for (peer, commitments) in presigned {
            taken = match self.commitments(*peer, commitments) {
                Ok(true) => Ok(()),
                Ok(false) => Err(SessionError::failed(format!(
                    "{} presignatures for a round that needs {}",
                    presigned.len(),
                    self.needed
                ))),
                Err(e) => Err(e),
            };
            if taken.is_err() {
                break;
            }
        }
        let package = taken.and_then(|()| self.package().map(|(_, bytes)| bytes));
        match package {
            Ok(package) if self.ready() => Ok(Presigned {
                core: self,
                package,
            }),
            Ok(_) => {
                self.commitments.clear();
                let e = SessionError::failed("too few presignatures for round 2");
                Err(Box::new((self, e)))
            }
            Err(e) => {
                self.commitments.clear();
                Err(Box::new((self, e)))
            }
        }
    }

    /// The signing package of this node's and the taken commitments, and its bytes.
    fn package(&self) -> Result<(frost::SigningPackage<C>, Vec<u8>), SessionError> {
        let mut signing_commitments = BTreeMap::new();
        signing_commitments.insert(self.ids[&self.local], self.own);
        for (peer, c) in &self.commitments {
            signing_commitments.insert(self.ids[peer], *c);
        }
        let package = frost::SigningPackage::new(signing_commitments, &self.message);
        let bytes = package
            .serialize()
            .map_err(|e| SessionError::failed(format!("signing package: {e}")))?;
        Ok((package, bytes))
    }

    /// Round 2, once [`ready`](Self::ready): the signing package for the chosen signers
    /// (the holders whose commitments were taken) and this node's own share. Consumes the
    /// round: the coordinator's nonces sign once.
    pub fn round2(self) -> Result<(Collecting<C>, Vec<u8>), SessionError> {
        if !self.ready() {
            return Err(SessionError::failed(format!(
                "round 2 needs {} commitments, {} arrived",
                self.needed,
                self.commitments.len()
            )));
        }
        let (package, bytes) = self.package()?;
        let own = frost::round2::sign(&package, &self.nonces, &self.key_package)
            .map_err(|e| SessionError::failed(format!("signing round 2: {e}")))?;
        let mut shares = BTreeMap::new();
        shares.insert(self.ids[&self.local], own);
        let collecting = Collecting {
            chosen: self.commitments.keys().copied().collect(),
            ids: self.ids,
            package,
            shares,
            received: BTreeMap::new(),
            public_key_package: self.public_key_package,
        };
        Ok((collecting, bytes))
    }
}

/// A presigned attempt on the coordinator: the package is out, this node has not signed it.
pub struct Presigned<C: Suite> {
    core: Coordinator<C>,
    package: Vec<u8>,
}

impl<C: Suite> Presigned<C> {
    /// The signing package to send to the chosen holders.
    pub fn package(&self) -> &[u8] {
        &self.package
    }

    /// This node's own commitments, serialized.
    pub fn own_commitments(&self) -> Vec<u8> {
        self.core.own_commitments()
    }

    /// Every chosen holder took the package: round 2 as [`Coordinator::round2`] (the same
    /// package), this node's nonces signing it once.
    pub fn round2(self) -> Result<(Collecting<C>, Vec<u8>), SessionError> {
        self.core.round2()
    }

    /// Some chosen holder did not take the package: it is given up, and this node, whose
    /// nonces never signed it, goes back to collecting commitments in two rounds.
    pub fn abandon(self) -> Coordinator<C> {
        let mut core = self.core;
        core.commitments.clear();
        core
    }
}

/// Bytes of one signer's entry in an encoded signing package, with room to spare (its
/// identifier and two commitments, each with frost's header).
const PACKAGE_BYTES_PER_SIGNER: usize = 160;

/// Whether a signing package of `len` bytes can be one for a message of `message_len`
/// bytes and at most `holders` signers: checked before decoding one (decoding is a point
/// decompression per commitment), so a package padded with signers that do not exist costs
/// no work.
pub fn package_fits(len: usize, holders: usize, message_len: usize) -> bool {
    len <= 64 + message_len + PACKAGE_BYTES_PER_SIGNER * holders
}

/// The commitments that `package` (a signing package of ciphersuite `C`) holds for the
/// holder `local`, serialized: what a holder looks up in its pool of presignatures. The
/// coordinator is blamed for a package that does not decode or leaves this holder out.
pub fn commitments_for<C: Suite>(
    package: &[u8],
    local: &PeerId,
    coordinator: PeerId,
) -> Result<Vec<u8>, SessionError> {
    let id = frost_identifier::<C>(local).map_err(SessionError::failed)?;
    let package = scheme::decode(package, frost::SigningPackage::<C>::deserialize)
        .map_err(|e| SessionError::undecodable::<C>(coordinator, "signing package", e))?;
    let own = package.signing_commitments().get(&id).ok_or_else(|| {
        SessionError::blame(
            vec![coordinator],
            format!(
                "coordinator {coordinator} sent a signing package without this holder's commitments"
            ),
        )
    })?;
    own.serialize()
        .map_err(|e| SessionError::failed(format!("commitments: {e}")))
}

/// Round 2 on the coordinator: the chosen signers' shares as they come.
pub struct Collecting<C: Suite> {
    chosen: Vec<PeerId>,
    ids: BTreeMap<PeerId, Identifier<C>>,
    package: frost::SigningPackage<C>,
    shares: BTreeMap<Identifier<C>, frost::round2::SignatureShare<C>>,
    received: BTreeMap<PeerId, Vec<u8>>,
    public_key_package: frost::keys::PublicKeyPackage<C>,
}

impl<C: Suite> Collecting<C> {
    /// The signers chosen for round 2 (other than this node), sorted.
    pub fn chosen(&self) -> &[PeerId] {
        &self.chosen
    }

    /// The chosen signers whose share has not arrived.
    pub fn missing(&self) -> Vec<PeerId> {
        self.chosen
            .iter()
            .filter(|p| !self.received.contains_key(p))
            .copied()
            .collect()
    }

    /// Takes `from`'s signature share. Refused: a peer that is not a chosen signer, bytes
    /// that are not a share (blamed), a second, different share (blamed). Once every chosen
    /// signer answered, aggregates with cheater detection and returns the signature (64
    /// bytes), which frost returns only when it verifies against the group key; a wrong
    /// share blames its sender.
    pub fn share(&mut self, from: PeerId, bytes: &[u8]) -> Result<Option<Vec<u8>>, SessionError> {
        if !self.chosen.contains(&from) {
            return Err(SessionError::blame(
                vec![from],
                format!("peer {from} is not a chosen signer of this session"),
            ));
        }
        if let Some(previous) = self.received.get(&from) {
            if previous.as_slice() == bytes {
                return Ok(None);
            }
            return Err(SessionError::blame(
                vec![from],
                format!("participant {from} sent two different sign round 2 share messages"),
            ));
        }
        let share = scheme::decode(bytes, frost::round2::SignatureShare::<C>::deserialize)
            .map_err(|e| SessionError::undecodable::<C>(from, "signature share", e))?;
        self.received.insert(from, bytes.to_vec());
        self.shares.insert(self.ids[&from], share);
        if !self.missing().is_empty() {
            return Ok(None);
        }
        let by_id: BTreeMap<Identifier<C>, PeerId> =
            self.ids.iter().map(|(p, id)| (*id, *p)).collect();
        let signature = frost::aggregate_custom(
            &self.package,
            &self.shares,
            &self.public_key_package,
            frost::CheaterDetection::AllCheaters,
        )
        .map_err(|e| frost_error(e, &by_id, "invalid signature share"))?;
        let bytes = signature
            .serialize()
            .map_err(|e| SessionError::failed(format!("signature: {e}")))?;
        Ok(Some(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::admission::tests::admitted;
    use super::super::super::scheme::testing::{dealt, for_each_suite};
    use super::*;
    use proptest::prelude::*;

    fn verify<C: Suite>(key: &Share<C>, message: &[u8], signature: &[u8]) {
        key.verify(message, signature).unwrap();
    }

    #[test]
    fn three_of_five_signs_among_cores_and_refuses_every_misstep() {
        for_each_suite!(three_of_five);
    }

    fn three_of_five<C: Suite>() {
        let (peers, keys) = dealt::<C>(3, 5);
        let message = b"pay 5".to_vec();
        let mut coordinator =
            Coordinator::start(admitted(), &keys[0], &peers, peers[0], message.clone()).unwrap();
        assert_eq!(coordinator.needed(), 2);
        // Holders 1 to 3 commit; holder 3 is one too many.
        let mut signers = Vec::new();
        let mut first = Vec::new();
        for i in 1..=3 {
            let (signer, bytes) =
                Signer::round1(admitted(), &keys[i], &peers[i], peers[0], message.clone()).unwrap();
            signers.push(signer);
            first.push(bytes);
        }
        // Refused before anything counts: itself, a stranger, garbage.
        for (from, bytes) in [
            (peers[0], first[0].clone()),
            (PeerId::random(), first[0].clone()),
            (peers[1], vec![1, 2, 3]),
        ] {
            let e = coordinator.commitments(from, &bytes).unwrap_err();
            assert_eq!(e.blamed(), &[from]);
        }
        assert!(coordinator.commitments(peers[1], &first[0]).unwrap());
        // The same again is no change; different ones are equivocation.
        assert!(coordinator.commitments(peers[1], &first[0]).unwrap());
        let e = coordinator.commitments(peers[1], &first[1]).unwrap_err();
        assert_eq!(e.blamed(), &[peers[1]]);
        assert!(!coordinator.ready());
        assert!(coordinator.commitments(peers[2], &first[1]).unwrap());
        assert!(coordinator.ready());
        assert!(
            !coordinator.commitments(peers[3], &first[2]).unwrap(),
            "late"
        );

        let (mut collecting, package) = coordinator.round2().unwrap();
        let mut chosen = vec![peers[1], peers[2]];
        chosen.sort();
        assert_eq!(collecting.chosen(), chosen.as_slice());
        let late = signers.pop().unwrap();
        // A holder that was not chosen cannot sign this package (its commitments are not
        // in it): it blames the coordinator and its nonces are gone.
        assert_eq!(late.round2(&package).unwrap_err().blamed(), &[peers[0]]);
        let mut shares: Vec<Vec<u8>> = signers
            .into_iter()
            .map(|s| s.round2(&package).unwrap())
            .collect();
        // A share from someone not chosen, a malformed one: refused, nothing taken.
        assert!(collecting.share(peers[3], &shares[0]).is_err());
        assert_eq!(
            collecting.share(peers[1], &[0; 3]).unwrap_err().blamed(),
            &[peers[1]]
        );
        assert_eq!(collecting.share(peers[1], &shares[0]).unwrap(), None);
        assert_eq!(collecting.missing(), vec![peers[2]]);
        let signature = collecting
            .share(peers[2], &shares.pop().unwrap())
            .unwrap()
            .unwrap();
        verify(&keys[0], &message, &signature);
    }

    #[test]
    fn a_wrong_share_is_named_and_a_package_for_another_message_refused() {
        for_each_suite!(a_wrong_share);
    }

    fn a_wrong_share<C: Suite>() {
        let (peers, keys) = dealt::<C>(2, 3);
        let message = b"m".to_vec();
        let mut coordinator =
            Coordinator::start(admitted(), &keys[0], &peers, peers[0], message.clone()).unwrap();
        let (signer, bytes) =
            Signer::round1(admitted(), &keys[1], &peers[1], peers[0], message.clone()).unwrap();
        coordinator.commitments(peers[1], &bytes).unwrap();
        let (mut collecting, package) = coordinator.round2().unwrap();
        let mut share = signer.round2(&package).unwrap();
        // A bit in the middle of the scalar: the share decodes, and is wrong.
        let middle = share.len() / 2;
        share[middle] ^= 1;
        let e = collecting.share(peers[1], &share).unwrap_err();
        assert_eq!(e.blamed(), &[peers[1]], "{e}");
        // Frost's cheater detection named it: the share decoded and did not verify.
        assert!(e.to_string().contains("Invalid signature share"), "{e}");

        // A signer asked to sign another message than the one it was invited for refuses.
        let (signer, bytes) =
            Signer::round1(admitted(), &keys[2], &peers[2], peers[0], message).unwrap();
        let c = frost::round1::SigningCommitments::<C>::deserialize(&bytes).unwrap();
        let ids = [frost_identifier::<C>(&peers[2]).unwrap()];
        let other = frost::SigningPackage::new(BTreeMap::from([(ids[0], c)]), b"other");
        let e = signer.round2(&other.serialize().unwrap()).unwrap_err();
        assert_eq!(e.blamed(), &[peers[0]]);
    }

    #[test]
    fn presigned_signers_sign_with_nonces_made_ahead_each_once() {
        for_each_suite!(presigned);
    }

    fn presigned<C: Suite>() {
        use super::super::pool::HeldNonces;
        use crate::mpc::wire::PoolEpoch;
        let (peers, keys) = dealt::<C>(3, 4);
        let message = b"pay 7".to_vec();
        let epoch = PoolEpoch::random();
        let mut held: Vec<HeldNonces> = (0..4).map(|_| HeldNonces::default()).collect();
        // Holders 1 and 2 made two presignatures each for coordinator 0, ahead of time.
        let made: Vec<Vec<Vec<u8>>> = (1..3)
            .map(|i| held[i].issue("k", peers[0], epoch, 2, 2, &keys[i]).unwrap())
            .collect();
        let mut coordinator =
            Coordinator::start(admitted(), &keys[0], &peers, peers[0], message.clone()).unwrap();
        assert!(coordinator.commitments(peers[1], &made[0][0]).unwrap());
        assert!(coordinator.commitments(peers[2], &made[1][0]).unwrap());
        let (mut collecting, package) = coordinator.round2().unwrap();
        let mut signature = None;
        for i in 1..3 {
            let own = commitments_for::<C>(&package, &peers[i], peers[0]).unwrap();
            assert_eq!(own, made[i - 1][0]);
            let nonces = C::nonces(held[i].take("k", peers[0], epoch, &own).unwrap()).unwrap();
            assert!(held[i].take("k", peers[0], epoch, &own).is_none(), "once");
            let signer = Signer::presigned(
                admitted(),
                nonces,
                &keys[i],
                &peers[i],
                peers[0],
                message.clone(),
            )
            .unwrap();
            assert_eq!(signer.commitments(), own);
            let share = signer.round2(&package).unwrap();
            signature = collecting.share(peers[i], &share).unwrap();
        }
        verify(&keys[0], &message, &signature.expect("both shares in"));
        // A holder the package leaves out blames the coordinator; so does garbage.
        let e = commitments_for::<C>(&package, &peers[3], peers[0]).unwrap_err();
        assert_eq!(e.blamed(), &[peers[0]]);
        let e = commitments_for::<C>(&[1, 2, 3], &peers[1], peers[0]).unwrap_err();
        assert_eq!(e.blamed(), &[peers[0]]);
        // A presignature spent on a package for another message than the admitted one:
        // refused, the coordinator blamed.
        let second = &made[0][1];
        let nonces = C::nonces(held[1].take("k", peers[0], epoch, second).unwrap()).unwrap();
        let signer =
            Signer::presigned(admitted(), nonces, &keys[1], &peers[1], peers[0], message).unwrap();
        let c = frost::round1::SigningCommitments::<C>::deserialize(second).unwrap();
        let id = frost_identifier::<C>(&peers[1]).unwrap();
        let other = frost::SigningPackage::new(BTreeMap::from([(id, c)]), b"other");
        let e = signer.round2(&other.serialize().unwrap()).unwrap_err();
        assert_eq!(e.blamed(), &[peers[0]]);
    }

    #[test]
    fn real_packages_fit_the_bound_checked_before_decoding() {
        for_each_suite!(fits);
    }

    fn fits<C: Suite>() {
        let (peers, keys) = dealt::<C>(5, 5);
        let message = vec![7u8; 300];
        let mut coordinator =
            Coordinator::start(admitted(), &keys[0], &peers, peers[0], message.clone()).unwrap();
        for i in 1..5 {
            let (_, c) =
                Signer::round1(admitted(), &keys[i], &peers[i], peers[0], message.clone()).unwrap();
            coordinator.commitments(peers[i], &c).unwrap();
        }
        let (_, package) = coordinator.round2().unwrap();
        assert!(
            package_fits(package.len(), 5, message.len()),
            "{}",
            package.len()
        );
        // Five signers' package cannot come from a key of two holders.
        assert!(
            !package_fits(package.len(), 2, message.len()),
            "{}",
            package.len()
        );
    }

    #[test]
    fn an_abandoned_presigned_attempt_goes_on_in_two_rounds_with_unused_nonces() {
        for_each_suite!(abandoned);
    }

    fn abandoned<C: Suite>() {
        use super::super::pool::HeldNonces;
        use crate::mpc::wire::PoolEpoch;
        let (peers, keys) = dealt::<C>(3, 5);
        let message = b"m".to_vec();
        let epoch = PoolEpoch::random();
        let pre: Vec<(PeerId, Vec<u8>)> = (1..4)
            .map(|i| {
                let mut held = HeldNonces::default();
                let c = held.issue("k", peers[0], epoch, 1, 1, &keys[i]).unwrap();
                (peers[i], c[0].clone())
            })
            .collect();
        let coordinator =
            Coordinator::start(admitted(), &keys[0], &peers, peers[0], message.clone()).unwrap();
        let own = coordinator.own_commitments();
        // Too few or too many presignatures: the coordinator comes back untouched.
        let (coordinator, e) = *coordinator.presigned(&pre[..1]).err().unwrap();
        assert!(e.to_string().contains("too few"), "{e}");
        let (coordinator, e) = *coordinator.presigned(&pre).err().unwrap();
        assert!(e.to_string().contains("3 presignatures"), "{e}");
        let attempt = coordinator.presigned(&pre[..2]).ok().unwrap();
        assert_eq!(attempt.own_commitments(), own);
        // Holder 2 did not take the package: given up; the same nonces go on in two rounds
        // with holders 3 and 4.
        let mut coordinator = attempt.abandon();
        assert!(!coordinator.ready());
        let mut signers = Vec::new();
        for i in 3..5 {
            let (s, c) =
                Signer::round1(admitted(), &keys[i], &peers[i], peers[0], message.clone()).unwrap();
            assert!(coordinator.commitments(peers[i], &c).unwrap());
            signers.push((peers[i], s));
        }
        assert_eq!(coordinator.own_commitments(), own);
        let (mut collecting, package) = coordinator.round2().unwrap();
        assert_eq!(collecting.chosen(), {
            let mut c = vec![peers[3], peers[4]];
            c.sort();
            c
        });
        let mut signature = None;
        for (peer, s) in signers {
            signature = collecting
                .share(peer, &s.round2(&package).unwrap())
                .unwrap();
        }
        verify(&keys[0], &message, &signature.unwrap());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Random and mutated messages to every round of the coordinator: no panic, it
        /// takes at most the commitments it needs and one share per chosen signer, and a
        /// signature, if one comes out, verifies.
        #[test]
        fn random_and_mutated_messages_never_panic_and_state_stays_bounded(
            ops in proptest::collection::vec(
                (0u8..3, 0usize..6, proptest::collection::vec(any::<u8>(), 0..80), any::<u16>()),
                1..40,
            )
        ) {
            let (peers, keys) = dealt::<frost_ed25519::Ed25519Sha512>(3, 4);
            let message = b"m".to_vec();
            let mut coordinator =
                Coordinator::start(admitted(), &keys[0], &peers, peers[0], message.clone()).unwrap();
            let honest: Vec<(Signer<frost_ed25519::Ed25519Sha512>, Vec<u8>)> = (1..4)
                .map(|i| Signer::round1(admitted(), &keys[i], &peers[i], peers[0], message.clone()).unwrap())
                .collect();
            let who = |i: usize| if i < 4 { peers[i] } else { PeerId::random() };
            // kind 0: random bytes; 1: a holder's real commitments; 2: the same, one bit flipped.
            let pick = |kind: u8, random: &[u8], flip: u16, real: &[u8]| -> Vec<u8> {
                let mut b = if kind == 0 { random.to_vec() } else { real.to_vec() };
                if kind == 2 && !b.is_empty() {
                    let at = usize::from(flip) % b.len();
                    b[at] ^= 1 << (flip % 8);
                }
                b
            };
            for (kind, from, random, flip) in &ops {
                let real = &honest[usize::from(*flip) % 3].1;
                let _ = coordinator.commitments(who(*from), &pick(*kind, random, *flip, real));
                prop_assert!(coordinator.commitments.len() <= coordinator.needed());
            }
            if coordinator.ready() {
                let (mut collecting, package) = coordinator.round2().unwrap();
                // Each honest signer signs the package if its commitments are in it.
                let shares: Vec<Vec<u8>> = honest
                    .into_iter()
                    .map(|(s, _)| s.round2(&package).unwrap_or_default())
                    .collect();
                for (kind, from, random, flip) in &ops {
                    let real = &shares[usize::from(*flip) % 3];
                    if let Ok(Some(sig)) = collecting.share(who(*from), &pick(*kind, random, *flip, real)) {
                        verify(&keys[0], &message, &sig);
                    }
                    prop_assert!(collecting.received.len() <= collecting.chosen().len());
                }
            }
        }
    }
}
