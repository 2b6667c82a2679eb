//! Signature schemes: which FROST ciphersuite a key was made with.
//!
//! The protocol cores (DKG, signing) are generic over [`Suite`], a frost-core ciphersuite
//! this node knows; a key's share is a [`KeyShare`], one variant per scheme, and a driver
//! picks the core's instance with [`with_share!`](crate::with_share). Nothing of the rounds is
//! written per scheme.

use std::fmt;

use frost_core::Ciphersuite;
use frost_core::VerifyingKey;
use frost_core::keys::{KeyPackage, PublicKeyPackage};
use serde::{Deserialize, Serialize};

/// The signature scheme of a key.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub enum Scheme {
    /// FROST(Ed25519, SHA-512), RFC 9591: standard Ed25519 signatures.
    #[default]
    #[serde(rename = "ed25519")]
    Ed25519,
    /// FROST(secp256k1, SHA-256) with BIP340 Schnorr signatures and a BIP341 Taproot key:
    /// the DKG's group key is already tweaked for an unspendable script path
    /// (Q = lift_x(x(P)) + H_TapTweak(x(P))·G), so signatures verify under the output key Q.
    #[serde(rename = "secp256k1-tr")]
    Secp256k1Tr,
}

impl Scheme {
    /// Every scheme this node can make keys for.
    pub const ALL: [Scheme; 2] = [Scheme::Ed25519, Scheme::Secp256k1Tr];

    /// The name used in the API, the CLI, key files and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Ed25519 => "ed25519",
            Scheme::Secp256k1Tr => "secp256k1-tr",
        }
    }

    /// The names of every known scheme, for error messages.
    pub fn known() -> String {
        Self::ALL.map(Scheme::name).join(", ")
    }

    /// Parses a scheme name; the error lists the known ones.
    pub fn parse(name: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| {
                format!(
                    "unknown signature scheme `{name}` (known: {})",
                    Self::known()
                )
            })
    }
}

impl Scheme {
    /// Verifies `signature` of `message` under `public_key` as key info shows it (an Ed25519
    /// key, or a BIP340 x-only key), as any verifier of the scheme does.
    pub fn verify(self, public_key: &[u8], message: &[u8], signature: &[u8]) -> Result<(), String> {
        crate::with_suite!(self, C => {
            let key = C::verifying_key(public_key)?;
            let signature = frost_core::Signature::<C>::deserialize(signature)
                .map_err(|e| format!("not a {self} signature: {e}"))?;
            key.verify(message, &signature).map_err(|e| e.to_string())
        })
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Scheme {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

/// A Bitcoin network, for the P2TR address of a `secp256k1-tr` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BitcoinNetwork {
    Bitcoin,
    Testnet,
    Signet,
    Regtest,
}

impl BitcoinNetwork {
    /// Every network an address can be asked for.
    pub const ALL: [BitcoinNetwork; 4] = [
        BitcoinNetwork::Bitcoin,
        BitcoinNetwork::Testnet,
        BitcoinNetwork::Signet,
        BitcoinNetwork::Regtest,
    ];

    /// The network's name, as the API takes it.
    pub fn name(self) -> &'static str {
        match self {
            BitcoinNetwork::Bitcoin => "bitcoin",
            BitcoinNetwork::Testnet => "testnet",
            BitcoinNetwork::Signet => "signet",
            BitcoinNetwork::Regtest => "regtest",
        }
    }

    /// Parses a network name; the error lists the known ones.
    pub fn parse(name: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|n| n.name() == name)
            .ok_or_else(|| {
                format!(
                    "unknown Bitcoin network `{name}` (known: {})",
                    Self::ALL.map(BitcoinNetwork::name).join(", ")
                )
            })
    }

    /// The human-readable part of the network's segwit addresses (BIP173; testnet and signet
    /// share theirs).
    fn hrp(self) -> bech32::Hrp {
        match self {
            BitcoinNetwork::Bitcoin => bech32::hrp::BC,
            BitcoinNetwork::Testnet | BitcoinNetwork::Signet => bech32::hrp::TB,
            BitcoinNetwork::Regtest => bech32::hrp::BCRT,
        }
    }
}

/// The P2TR address (segwit version 1, bech32m, BIP350) whose witness program is the x-only
/// output key `output_key`: the key itself, never tweaked again (it already is the Taproot
/// output key of the DKG).
pub fn p2tr_address(output_key: &[u8], network: BitcoinNetwork) -> Result<String, String> {
    if output_key.len() != 32 {
        return Err(format!(
            "a Taproot output key has 32 bytes, not {}",
            output_key.len()
        ));
    }
    bech32::segwit::encode_v1(network.hrp(), output_key)
        .map_err(|e| format!("cannot encode the P2TR address: {e}"))
}

/// A frost-core ciphersuite this node makes keys with.
pub trait Suite: Ciphersuite + Send + Sync + 'static {
    /// The scheme this ciphersuite implements.
    const SCHEME: Scheme;

    /// This ciphersuite's share as a [`KeyShare`].
    fn wrap(share: Share<Self>) -> KeyShare;

    /// The group key as key info shows it and signatures verify under it.
    fn public_key(key: &VerifyingKey<Self>) -> Result<Vec<u8>, String>;

    /// The key before the DKG's post-processing, when the scheme shows it (Taproot's
    /// internal key); `untweaked` is the sum of the participants' commitments.
    fn internal_key(untweaked: &VerifyingKey<Self>) -> Result<Option<Vec<u8>>, String>;

    /// The verifying key of a [`public_key`](Suite::public_key) as key info shows it.
    fn verifying_key(public_key: &[u8]) -> Result<VerifyingKey<Self>, String>;

    /// Signing nonces of this ciphersuite as an [`AnyNonces`], to keep them beside other
    /// schemes' nonces (presignatures).
    fn wrap_nonces(nonces: frost_core::round1::SigningNonces<Self>) -> AnyNonces;

    /// The nonces of this ciphersuite inside `nonces`, if they are of it.
    fn nonces(nonces: AnyNonces) -> Option<frost_core::round1::SigningNonces<Self>>;

    /// Checks that the DKG's group key `output` is what this scheme derives from the
    /// untweaked key package (the sum of everyone's commitments): the same key for Ed25519,
    /// the BIP341 tweak with no script path for Taproot.
    fn check_output_key(
        untweaked: &PublicKeyPackage<Self>,
        output: &VerifyingKey<Self>,
    ) -> Result<(), String>;
}

impl Suite for frost_ed25519::Ed25519Sha512 {
    const SCHEME: Scheme = Scheme::Ed25519;
    fn wrap(share: Share<Self>) -> KeyShare {
        KeyShare::Ed25519(share)
    }
    fn wrap_nonces(nonces: frost_core::round1::SigningNonces<Self>) -> AnyNonces {
        AnyNonces::Ed25519(nonces)
    }
    fn nonces(nonces: AnyNonces) -> Option<frost_core::round1::SigningNonces<Self>> {
        match nonces {
            AnyNonces::Ed25519(n) => Some(n),
            AnyNonces::Secp256k1Tr(_) => None,
        }
    }
    /// The standard 32-byte Ed25519 public key.
    fn public_key(key: &VerifyingKey<Self>) -> Result<Vec<u8>, String> {
        key.serialize().map_err(|e| format!("group key: {e}"))
    }
    fn internal_key(_: &VerifyingKey<Self>) -> Result<Option<Vec<u8>>, String> {
        Ok(None)
    }
    fn verifying_key(public_key: &[u8]) -> Result<VerifyingKey<Self>, String> {
        VerifyingKey::deserialize(public_key).map_err(|e| format!("not an Ed25519 key: {e}"))
    }
    fn check_output_key(
        untweaked: &PublicKeyPackage<Self>,
        output: &VerifyingKey<Self>,
    ) -> Result<(), String> {
        if untweaked.verifying_key() == output {
            Ok(())
        } else {
            Err("the group key is not the sum of the participants' commitments".into())
        }
    }
}

impl Suite for frost_secp256k1_tr::Secp256K1Sha256TR {
    const SCHEME: Scheme = Scheme::Secp256k1Tr;
    fn wrap(share: Share<Self>) -> KeyShare {
        KeyShare::Secp256k1Tr(share)
    }
    fn wrap_nonces(nonces: frost_core::round1::SigningNonces<Self>) -> AnyNonces {
        AnyNonces::Secp256k1Tr(nonces)
    }
    fn nonces(nonces: AnyNonces) -> Option<frost_core::round1::SigningNonces<Self>> {
        match nonces {
            AnyNonces::Secp256k1Tr(n) => Some(n),
            AnyNonces::Ed25519(_) => None,
        }
    }
    /// The x-only output key Q (32 bytes), as BIP340 verifies and a P2TR output holds.
    fn public_key(key: &VerifyingKey<Self>) -> Result<Vec<u8>, String> {
        x_only(key)
    }
    /// The x-only internal key P (32 bytes).
    fn internal_key(untweaked: &VerifyingKey<Self>) -> Result<Option<Vec<u8>>, String> {
        x_only(untweaked).map(Some)
    }
    /// BIP340 reads an x-only key as the point with that x and an even y.
    fn verifying_key(public_key: &[u8]) -> Result<VerifyingKey<Self>, String> {
        if public_key.len() != 32 {
            return Err(format!(
                "an x-only key has 32 bytes, not {}",
                public_key.len()
            ));
        }
        let mut even = vec![0x02];
        even.extend_from_slice(public_key);
        VerifyingKey::deserialize(&even).map_err(|e| format!("not a secp256k1 x-only key: {e}"))
    }
    fn check_output_key(
        untweaked: &PublicKeyPackage<Self>,
        output: &VerifyingKey<Self>,
    ) -> Result<(), String> {
        use frost_secp256k1_tr::keys::Tweak;
        if untweaked.clone().tweak::<&[u8]>(None).verifying_key() == output {
            Ok(())
        } else {
            Err(
                "the group key is not the BIP341 output key of the participants' commitments"
                    .into(),
            )
        }
    }
}

/// The x coordinate of a secp256k1 key (its SEC1 compressed encoding without the parity
/// byte).
fn x_only(key: &VerifyingKey<frost_secp256k1_tr::Secp256K1Sha256TR>) -> Result<Vec<u8>, String> {
    let compressed = key.serialize().map_err(|e| format!("group key: {e}"))?;
    match compressed.as_slice() {
        [0x02 | 0x03, x @ ..] if x.len() == 32 => Ok(x.to_vec()),
        _ => Err("group key: not a compressed secp256k1 point".into()),
    }
}

/// One holder's part of a key of ciphersuite `C`: its secret share and the public parts.
#[derive(Clone)]
pub struct Share<C: Ciphersuite> {
    pub key_package: KeyPackage<C>,
    pub public_key_package: PublicKeyPackage<C>,
}

impl<C: Suite> Share<C> {
    /// The group key as key info shows it ([`Suite::public_key`]).
    pub fn group_key(&self) -> Result<Vec<u8>, String> {
        C::public_key(self.public_key_package.verifying_key())
    }

    /// Verifies `signature` (the ciphersuite's encoding) of `message` under the group key.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), String> {
        let signature = frost_core::Signature::<C>::deserialize(signature)
            .map_err(|e| format!("not a {} signature: {e}", C::SCHEME))?;
        self.public_key_package
            .verifying_key()
            .verify(message, &signature)
            .map_err(|e| format!("the {} signature does not verify: {e}", C::SCHEME))
    }

    fn encode(&self) -> Result<(Vec<u8>, Vec<u8>), String> {
        Ok((
            self.key_package.serialize().map_err(|e| e.to_string())?,
            self.public_key_package
                .serialize()
                .map_err(|e| e.to_string())?,
        ))
    }

    fn decode(key_package: &[u8], public_key_package: &[u8]) -> Result<Self, String> {
        Ok(Self {
            key_package: KeyPackage::deserialize(key_package)
                .map_err(|e| format!("key_package: {e}"))?,
            public_key_package: PublicKeyPackage::deserialize(public_key_package)
                .map_err(|e| format!("public_key_package: {e}"))?,
        })
    }
}

/// Signing nonces of whichever scheme (frost zeroes them when they are dropped).
pub enum AnyNonces {
    Ed25519(frost_core::round1::SigningNonces<frost_ed25519::Ed25519Sha512>),
    Secp256k1Tr(frost_core::round1::SigningNonces<frost_secp256k1_tr::Secp256K1Sha256TR>),
}

/// A holder's share of a key, of whichever scheme the key was made with.
#[derive(Clone)]
pub enum KeyShare {
    Ed25519(Share<frost_ed25519::Ed25519Sha512>),
    Secp256k1Tr(Share<frost_secp256k1_tr::Secp256K1Sha256TR>),
}

/// Runs `$body` with `$share` bound to the [`Share`] inside a [`KeyShare`], whatever its
/// scheme: the body is compiled once per ciphersuite, so generic cores get their instance.
#[macro_export]
macro_rules! with_share {
    ($key_share:expr, $share:ident => $body:expr) => {
        match $key_share {
            $crate::mpc::scheme::KeyShare::Ed25519($share) => $body,
            $crate::mpc::scheme::KeyShare::Secp256k1Tr($share) => $body,
        }
    };
}

/// Runs `$body` with the type `$suite` standing for the ciphersuite of `$scheme`: the body
/// is compiled once per scheme.
#[macro_export]
macro_rules! with_suite {
    ($scheme:expr, $suite:ident => $body:expr) => {
        match $scheme {
            $crate::mpc::scheme::Scheme::Ed25519 => {
                type $suite = frost_ed25519::Ed25519Sha512;
                $body
            }
            $crate::mpc::scheme::Scheme::Secp256k1Tr => {
                type $suite = frost_secp256k1_tr::Secp256K1Sha256TR;
                $body
            }
        }
    };
}

impl KeyShare {
    /// The scheme of the key.
    pub fn scheme(&self) -> Scheme {
        match self {
            KeyShare::Ed25519(_) => Scheme::Ed25519,
            KeyShare::Secp256k1Tr(_) => Scheme::Secp256k1Tr,
        }
    }

    /// The group key as key info shows it.
    pub fn group_key(&self) -> Result<Vec<u8>, String> {
        crate::with_share!(self, s => s.group_key())
    }

    /// How many holders sign (the key's threshold).
    pub fn min_signers(&self) -> u16 {
        crate::with_share!(self, s => *s.key_package.min_signers())
    }

    /// Verifies a signature of `message` under the group key.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), String> {
        crate::with_share!(self, s => s.verify(message, signature))
    }

    /// The frost encodings of the key package (secret) and the public key package.
    pub fn encode(&self) -> Result<(Vec<u8>, Vec<u8>), String> {
        crate::with_share!(self, s => s.encode())
    }

    /// Decodes a share of `scheme` from the frost encodings. A share of another scheme is
    /// refused with an error that names both.
    pub fn decode(
        scheme: Scheme,
        key_package: &[u8],
        public_key_package: &[u8],
    ) -> Result<Self, String> {
        let decoded = match scheme {
            Scheme::Ed25519 => {
                Share::decode(key_package, public_key_package).map(KeyShare::Ed25519)
            }
            Scheme::Secp256k1Tr => {
                Share::decode(key_package, public_key_package).map(KeyShare::Secp256k1Tr)
            }
        };
        decoded.map_err(|e| {
            match Scheme::ALL
                .into_iter()
                .filter(|other| *other != scheme)
                .find(|other| Self::decode(*other, key_package, public_key_package).is_ok())
            {
                Some(other) => {
                    format!("the share is of scheme {other} but the file says {scheme}; refused")
                }
                None => e,
            }
        })
    }
}

/// The leading bytes of every frost message of ciphersuite `C`: the format version and the
/// ciphersuite's id, learnt from frost's own encoding of an empty signing package.
fn header<C: Suite>() -> Vec<u8> {
    frost_core::SigningPackage::<C>::new(std::collections::BTreeMap::new(), &[])
        .serialize()
        .map(|mut b| {
            b.truncate(HEADER_BYTES);
            b
        })
        .unwrap_or_default()
}

/// Bytes of frost's message header (format version, ciphersuite id).
const HEADER_BYTES: usize = 5;

/// The scheme whose frost header `bytes` start with, if any.
pub fn scheme_of(bytes: &[u8]) -> Option<Scheme> {
    static HEADERS: std::sync::OnceLock<Vec<(Scheme, Vec<u8>)>> = std::sync::OnceLock::new();
    let headers = HEADERS.get_or_init(|| {
        Scheme::ALL
            .into_iter()
            .map(|s| (s, crate::with_suite!(s, C => header::<C>())))
            .collect()
    });
    let head = bytes.get(..HEADER_BYTES)?;
    headers
        .iter()
        .find(|(_, header)| header.as_slice() == head)
        .map(|(s, _)| *s)
}

/// Why a protocol message of a session of ciphersuite `C` was not taken.
#[derive(Debug)]
pub enum DecodeError {
    /// A message of another scheme's ciphersuite.
    OtherScheme(Scheme),
    /// Not a message of this kind at all; frost's reason.
    Malformed(String),
}

/// Decodes a frost message of ciphersuite `C` with `decode`; a message of another scheme
/// is refused as [`DecodeError::OtherScheme`].
pub fn decode<C: Suite, T>(
    bytes: &[u8],
    decode: impl FnOnce(&[u8]) -> Result<T, frost_core::Error<C>>,
) -> Result<T, DecodeError> {
    match scheme_of(bytes) {
        Some(other) if other != C::SCHEME => Err(DecodeError::OtherScheme(other)),
        _ => decode(bytes).map_err(|e| DecodeError::Malformed(e.to_string())),
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use libp2p::PeerId;

    use super::{Share, Suite};
    use crate::mpc::frost_identifier;

    /// A t-of-n key of ciphersuite `C` dealt among `n` random peers (FROST identifiers
    /// derived from their ids, as the DKG does).
    pub(crate) fn dealt<C: Suite>(t: u16, n: u16) -> (Vec<PeerId>, Vec<Share<C>>) {
        let peers: Vec<PeerId> = (0..n).map(|_| PeerId::random()).collect();
        let ids: Vec<frost_core::Identifier<C>> =
            peers.iter().map(|p| frost_identifier(p).unwrap()).collect();
        let (shares, public) = frost_core::keys::generate_with_dealer(
            n,
            t,
            frost_core::keys::IdentifierList::Custom(&ids),
            &mut rand_core::OsRng,
        )
        .unwrap();
        let keys = ids
            .iter()
            .map(|id| Share {
                key_package: frost_core::keys::KeyPackage::try_from(shares[id].clone()).unwrap(),
                public_key_package: public.clone(),
            })
            .collect();
        (peers, keys)
    }

    /// Runs the generic test function `$f` once per ciphersuite.
    macro_rules! for_each_suite {
        ($f:ident) => {{
            $f::<frost_ed25519::Ed25519Sha512>();
            $f::<frost_secp256k1_tr::Secp256K1Sha256TR>();
        }};
    }
    pub(crate) use for_each_suite;
}

#[cfg(test)]
mod tests {
    use frost_ed25519::Ed25519Sha512 as Ed;
    use frost_secp256k1_tr::Secp256K1Sha256TR as Tr;
    use libp2p::PeerId;

    use super::testing::dealt;
    use super::*;
    use crate::mpc::admission::tests::admitted;
    use crate::mpc::dkg::core::{DkgSpec, Round1};
    use crate::mpc::session::SessionError;
    use crate::mpc::sign::core::{Coordinator, Signer};

    #[test]
    fn names_parse_and_an_unknown_one_lists_the_known() {
        for s in Scheme::ALL {
            assert_eq!(Scheme::parse(s.name()), Ok(s));
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.name()));
        }
        let e = Scheme::parse("secp256k1").unwrap_err();
        assert!(
            e.contains("`secp256k1`") && e.contains("ed25519, secp256k1-tr"),
            "{e}"
        );
        assert_eq!(scheme_of(&header::<Ed>()), Some(Scheme::Ed25519));
        assert_eq!(scheme_of(&header::<Tr>()), Some(Scheme::Secp256k1Tr));
        assert_eq!(scheme_of(b"\x00abcd"), None);
    }

    /// Asserts a typed refusal of a `got` message in an `expected` session, blaming `from`.
    fn wrong_scheme(result: SessionError, from: PeerId, got: Scheme, expected: Scheme) {
        match &result {
            SessionError::WrongScheme {
                from: f,
                got: g,
                expected: e,
                ..
            } => assert_eq!((*f, *g, *e), (from, got, expected)),
            other => panic!("expected WrongScheme, got {other}"),
        }
        assert_eq!(result.blamed(), [from]);
    }

    /// Holder `i`'s signing round 1 for a signature of `m` coordinated by holder 0.
    fn round1<C: Suite>(keys: &[Share<C>], peers: &[PeerId], i: usize) -> (Signer<C>, Vec<u8>) {
        Signer::round1(admitted(), &keys[i], &peers[i], peers[0], b"m".to_vec()).unwrap()
    }

    /// Holder 0 coordinating a signature of `m`.
    fn coordinate<C: Suite>(keys: &[Share<C>], peers: &[PeerId]) -> Coordinator<C> {
        Coordinator::start(admitted(), &keys[0], peers, peers[0], b"m".to_vec()).unwrap()
    }

    #[test]
    fn a_message_of_one_scheme_in_a_session_of_the_other_is_refused_as_such() {
        // Signing: secp256k1-tr commitments sent to an Ed25519 coordinator, and the reverse.
        let (ed_peers, ed_keys) = dealt::<Ed>(2, 3);
        let (tr_peers, tr_keys) = dealt::<Tr>(2, 3);
        let (_, tr_commitments) = round1(&tr_keys, &tr_peers, 1);
        let (_, ed_commitments) = round1(&ed_keys, &ed_peers, 1);
        let mut ed = coordinate(&ed_keys, &ed_peers);
        let e = ed.commitments(ed_peers[1], &tr_commitments).unwrap_err();
        wrong_scheme(e, ed_peers[1], Scheme::Secp256k1Tr, Scheme::Ed25519);
        let mut tr = coordinate(&tr_keys, &tr_peers);
        let e = tr.commitments(tr_peers[1], &ed_commitments).unwrap_err();
        wrong_scheme(e, tr_peers[1], Scheme::Ed25519, Scheme::Secp256k1Tr);
        assert!(!ed.ready() && !tr.ready(), "nothing was taken");

        // Round 2: a secp256k1-tr signing package to an Ed25519 signer (which blames its
        // coordinator), and a secp256k1-tr signature share to an Ed25519 coordinator. A share
        // is a bare scalar in frost's encoding (no ciphersuite header), so it is refused as
        // malformed or, if it happens to decode, by cheater detection: its sender is blamed
        // either way.
        tr.commitments(tr_peers[1], &tr_commitments).unwrap();
        let (_, tr_package) = tr.round2().unwrap();
        let (ed_signer, ed_c) = round1(&ed_keys, &ed_peers, 2);
        let e = ed_signer.round2(&tr_package).unwrap_err();
        wrong_scheme(e, ed_peers[0], Scheme::Secp256k1Tr, Scheme::Ed25519);
        ed.commitments(ed_peers[2], &ed_c).unwrap();
        let (mut collecting, ed_package) = ed.round2().unwrap();
        let (tr_signer, tr_c) = round1(&tr_keys, &tr_peers, 2);
        let mut tr3 = coordinate(&tr_keys, &tr_peers);
        tr3.commitments(tr_peers[2], &tr_c).unwrap();
        let (_, package3) = tr3.round2().unwrap();
        let tr_share = tr_signer.round2(&package3).unwrap();
        let e = collecting.share(ed_peers[2], &tr_share).unwrap_err();
        assert_eq!(e.blamed(), [ed_peers[2]], "{e}");
        let text = e.to_string();
        assert!(
            text.contains("malformed signature share") || text.contains("Invalid signature share"),
            "{text}"
        );
        assert!(!ed_package.is_empty());

        // DKG: a secp256k1-tr round-1 package in an Ed25519 DKG.
        let mut peers: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        peers.sort();
        let spec = |scheme| DkgSpec {
            key_id: "k".into(),
            scheme,
            threshold: 2,
            participants: peers.clone(),
            policy_digest: [0; 32],
        };
        let (mut ed_dkg, _) = Round1::<Ed>::start(spec(Scheme::Ed25519), peers[0]).unwrap();
        let (_, tr_package) = Round1::<Tr>::start(spec(Scheme::Secp256k1Tr), peers[1]).unwrap();
        let e = ed_dkg.receive(peers[1], &tr_package).unwrap_err();
        wrong_scheme(e, peers[1], Scheme::Secp256k1Tr, Scheme::Ed25519);
        assert_eq!(ed_dkg.missing().len(), 2);
        // A DKG core refuses to start with a spec of another scheme.
        assert!(Round1::<Tr>::start(spec(Scheme::Ed25519), peers[0]).is_err());
    }

    #[test]
    fn a_share_of_one_scheme_does_not_load_as_the_other() {
        let (_, ed) = dealt::<Ed>(2, 3);
        let (_, tr) = dealt::<Tr>(2, 3);
        for (share, other) in [
            (KeyShare::Ed25519(ed[0].clone()), Scheme::Secp256k1Tr),
            (KeyShare::Secp256k1Tr(tr[0].clone()), Scheme::Ed25519),
        ] {
            let (kp, pkp) = share.encode().unwrap();
            let back = KeyShare::decode(share.scheme(), &kp, &pkp).unwrap();
            assert_eq!(back.group_key(), share.group_key());
            let e = KeyShare::decode(other, &kp, &pkp).err().unwrap();
            assert_eq!(
                e,
                format!(
                    "the share is of scheme {} but the file says {other}; refused",
                    share.scheme()
                )
            );
        }
    }

    #[test]
    fn p2tr_addresses_encode_the_output_key_for_each_network() {
        // BIP86's first receiving address (m/86'/0'/0'/0/0): its output key and address.
        let q = hex::decode("a60869f0dbcf1dc659c9cecbaf8050135ea9e8cdc487053f1dc6880949dc684c")
            .unwrap();
        assert_eq!(
            p2tr_address(&q, BitcoinNetwork::Bitcoin).unwrap(),
            "bc1p5cyxnuxmeuwuvkwfem96lqzszd02n6xdcjrs20cac6yqjjwudpxqkedrcr"
        );
        for (network, prefix) in [
            (BitcoinNetwork::Testnet, "tb1p"),
            (BitcoinNetwork::Signet, "tb1p"),
            (BitcoinNetwork::Regtest, "bcrt1p"),
        ] {
            let address = p2tr_address(&q, network).unwrap();
            assert!(address.starts_with(prefix), "{address}");
            let (_, version, program) = bech32::segwit::decode(&address).unwrap();
            assert_eq!((version, program), (bech32::segwit::VERSION_1, q.clone()));
        }
        assert!(p2tr_address(&q[..31], BitcoinNetwork::Bitcoin).is_err());
        assert_eq!(
            BitcoinNetwork::parse("mainnet").unwrap_err(),
            "unknown Bitcoin network `mainnet` (known: bitcoin, testnet, signet, regtest)"
        );
    }

    #[test]
    fn a_taproot_key_shows_x_only_keys_and_its_signatures_are_64_bytes() {
        let (peers, keys) = dealt::<Tr>(2, 3);
        let share = &keys[0];
        assert_eq!(share.group_key().unwrap().len(), 32);
        let mut coordinator =
            Coordinator::start(admitted(), share, &peers, peers[0], b"pay".to_vec()).unwrap();
        let (signer, c) =
            Signer::round1(admitted(), &keys[1], &peers[1], peers[0], b"pay".to_vec()).unwrap();
        coordinator.commitments(peers[1], &c).unwrap();
        let (mut collecting, package) = coordinator.round2().unwrap();
        let s = signer.round2(&package).unwrap();
        let signature = collecting.share(peers[1], &s).unwrap().unwrap();
        assert_eq!(signature.len(), 64);
        share.verify(b"pay", &signature).unwrap();
        assert!(share.verify(b"other", &signature).is_err());
        // From the x-only key alone, as a BIP340 verifier has it.
        let q = share.group_key().unwrap();
        Scheme::Secp256k1Tr.verify(&q, b"pay", &signature).unwrap();
        assert!(
            Scheme::Secp256k1Tr
                .verify(&q, b"other", &signature)
                .is_err()
        );
        assert!(Scheme::Ed25519.verify(&q, b"pay", &signature).is_err());
    }
}
