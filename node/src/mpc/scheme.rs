//! Signature schemes: which FROST ciphersuite a key was made with.
//!
//! The protocol cores (DKG, signing) are generic over [`Suite`], a frost-core ciphersuite
//! this node knows; a key's share is a [`KeyShare`], one variant per scheme, and a driver
//! picks the core's instance with [`with_share!`](crate::with_share). Nothing of the rounds is
//! written per scheme.

use std::fmt;

use frost_core::Ciphersuite;
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
}

impl Scheme {
    /// Every scheme this node can make keys for.
    pub const ALL: [Scheme; 1] = [Scheme::Ed25519];

    /// The name used in the API, the CLI, key files and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Ed25519 => "ed25519",
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

/// A frost-core ciphersuite this node makes keys with.
pub trait Suite: Ciphersuite + Send + Sync + 'static {
    /// The scheme this ciphersuite implements.
    const SCHEME: Scheme;

    /// This ciphersuite's share as a [`KeyShare`].
    fn wrap(share: Share<Self>) -> KeyShare;
}

impl Suite for frost_ed25519::Ed25519Sha512 {
    const SCHEME: Scheme = Scheme::Ed25519;
    fn wrap(share: Share<Self>) -> KeyShare {
        KeyShare::Ed25519(share)
    }
}

/// One holder's part of a key of ciphersuite `C`: its secret share and the public parts.
#[derive(Clone)]
pub struct Share<C: Ciphersuite> {
    pub key_package: KeyPackage<C>,
    pub public_key_package: PublicKeyPackage<C>,
}

impl<C: Suite> Share<C> {
    /// The group key in the ciphersuite's encoding.
    pub fn group_key(&self) -> Result<Vec<u8>, String> {
        self.public_key_package
            .verifying_key()
            .serialize()
            .map_err(|e| format!("group key: {e}"))
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

/// A holder's share of a key, of whichever scheme the key was made with.
#[derive(Clone)]
pub enum KeyShare {
    Ed25519(Share<frost_ed25519::Ed25519Sha512>),
}

/// Runs `$body` with `$share` bound to the [`Share`] inside a [`KeyShare`], whatever its
/// scheme: the body is compiled once per ciphersuite, so generic cores get their instance.
#[macro_export]
macro_rules! with_share {
    ($key_share:expr, $share:ident => $body:expr) => {
        match $key_share {
            $crate::mpc::scheme::KeyShare::Ed25519($share) => $body,
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
        }
    };
}

impl KeyShare {
    /// The scheme of the key.
    pub fn scheme(&self) -> Scheme {
        match self {
            KeyShare::Ed25519(_) => Scheme::Ed25519,
        }
    }

    /// The group key in the scheme's encoding.
    pub fn group_key(&self) -> Result<Vec<u8>, String> {
        crate::with_share!(self, s => s.group_key())
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
        };
        decoded.map_err(|e| {
            match Scheme::ALL
                .into_iter()
                .filter(|other| *other != scheme)
                .find(|other| Self::decode(*other, key_package, public_key_package).is_ok())
            {
                Some(other) => {
                    format!("the share is a {other} key but the file says scheme {scheme}; refused")
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
    let head = bytes.get(..HEADER_BYTES)?;
    Scheme::ALL.into_iter().find(|s| match s {
        Scheme::Ed25519 => head == header::<frost_ed25519::Ed25519Sha512>().as_slice(),
    })
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
        }};
    }
    pub(crate) use for_each_suite;
}
