//! The signed envelope of a gossip payload.
//!
//! Gossipsub runs in anonymous mode (no author, sequence number or signature of its own), and
//! every payload travels inside this envelope, signed by its author's identity key:
//!
//! ```text
//! version (1 byte, = 1) | key length (1 byte) | author public key (libp2p protobuf encoding)
//! | nonce (8 bytes, random) | Ed25519 signature (64 bytes) | payload
//! ```
//!
//! The signature covers a domain string, the topic, the author key, the nonce and the
//! payload. Why not gossipsub's own signatures: gossipsub checks a signature on every copy
//! it receives, before it knows the copy is a duplicate, so in a mesh where each node gets a
//! message from several peers it verifies each message several times. The node checks the
//! envelope once per message, after gossipsub dropped the duplicates (the message id is a
//! hash of topic and envelope, so a copy is recognised before any check, and a forged copy
//! has another id and cannot shadow the real one). The random nonce makes a re-sent text a
//! new message.

use std::collections::HashMap;

use libp2p::PeerId;
use libp2p::identity::{Keypair, PublicKey};

/// Format version this node writes and accepts.
pub const VERSION: u8 = 1;
/// What the signature is computed over, first.
const DOMAIN: &[u8] = b"p2p-mpc gossip envelope v1\0";
const SIGNATURE_BYTES: usize = 64;
/// Envelope bytes on top of the payload, for an Ed25519 author key (36-byte protobuf key).
pub const OVERHEAD: usize = 1 + 1 + 36 + 8 + SIGNATURE_BYTES;

/// Why an envelope was refused (the label is used in metrics).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("malformed gossip envelope: {0}")]
    Malformed(&'static str),
    #[error("gossip envelope version {0} is not supported (this node reads version {VERSION})")]
    Version(u8),
    #[error("the author key of the gossip envelope is not a valid public key")]
    BadKey,
    #[error("the gossip envelope signature does not verify")]
    BadSignature,
}

impl EnvelopeError {
    /// Metric label of the refusal.
    pub fn label(&self) -> &'static str {
        match self {
            EnvelopeError::Malformed(_) | EnvelopeError::Version(_) => "malformed_envelope",
            EnvelopeError::BadKey | EnvelopeError::BadSignature => "bad_signature",
        }
    }
}

fn signed_bytes(topic: &str, key: &[u8], nonce: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + topic.len() + key.len() + payload.len() + 20);
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(&(topic.len() as u32).to_be_bytes());
    m.extend_from_slice(topic.as_bytes());
    m.push(key.len() as u8);
    m.extend_from_slice(key);
    m.extend_from_slice(nonce);
    m.extend_from_slice(payload);
    m
}

/// Wraps `payload` for `topic`, signed with `key`.
pub fn seal(key: &Keypair, topic: &str, payload: &[u8]) -> Result<Vec<u8>, String> {
    let public = key.public().encode_protobuf();
    let key_len = u8::try_from(public.len()).map_err(|_| "the identity key is too long")?;
    let mut nonce = [0u8; 8];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    let signature = key
        .sign(&signed_bytes(topic, &public, &nonce, payload))
        .map_err(|e| format!("cannot sign the gossip message: {e}"))?;
    if signature.len() != SIGNATURE_BYTES {
        return Err(format!(
            "the identity key makes {}-byte signatures; gossip needs an Ed25519 key",
            signature.len()
        ));
    }
    let mut out = Vec::with_capacity(2 + public.len() + 8 + SIGNATURE_BYTES + payload.len());
    out.push(VERSION);
    out.push(key_len);
    out.extend_from_slice(&public);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&signature);
    out.extend_from_slice(payload);
    Ok(out)
}

/// The parts of an envelope, not yet verified.
struct Parts<'a> {
    key: &'a [u8],
    nonce: &'a [u8],
    signature: &'a [u8],
    payload: &'a [u8],
}

fn split(envelope: &[u8]) -> Result<Parts<'_>, EnvelopeError> {
    let (&version, rest) = envelope
        .split_first()
        .ok_or(EnvelopeError::Malformed("empty"))?;
    if version != VERSION {
        return Err(EnvelopeError::Version(version));
    }
    let (&key_len, rest) = rest
        .split_first()
        .ok_or(EnvelopeError::Malformed("no key length"))?;
    let key_len = usize::from(key_len);
    if rest.len() < key_len + 8 + SIGNATURE_BYTES {
        return Err(EnvelopeError::Malformed("shorter than its header"));
    }
    let (key, rest) = rest.split_at(key_len);
    let (nonce, rest) = rest.split_at(8);
    let (signature, payload) = rest.split_at(SIGNATURE_BYTES);
    Ok(Parts {
        key,
        nonce,
        signature,
        payload,
    })
}

/// Checks envelopes, remembering the public keys of recent authors (decoding a key costs
/// about as much as a tenth of a verification).
#[derive(Default)]
pub struct EnvelopeChecker {
    keys: HashMap<Vec<u8>, (PublicKey, PeerId)>,
}

/// Authors whose keys are kept decoded.
const KEY_CACHE: usize = 1024;

impl EnvelopeChecker {
    /// Verifies `envelope` for `topic`; returns the author and the payload.
    pub fn open<'a>(
        &mut self,
        topic: &str,
        envelope: &'a [u8],
    ) -> Result<(PeerId, &'a [u8]), EnvelopeError> {
        let parts = split(envelope)?;
        let (public, author) = match self.keys.get(parts.key) {
            Some(k) => k.clone(),
            None => {
                let public =
                    PublicKey::try_decode_protobuf(parts.key).map_err(|_| EnvelopeError::BadKey)?;
                let author = public.to_peer_id();
                if self.keys.len() >= KEY_CACHE {
                    self.keys.clear();
                }
                self.keys
                    .insert(parts.key.to_vec(), (public.clone(), author));
                (public, author)
            }
        };
        let message = signed_bytes(topic, parts.key, parts.nonce, parts.payload);
        if !public.verify(&message, parts.signature) {
            return Err(EnvelopeError::BadSignature);
        }
        Ok((author, parts.payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_payloads_open_with_their_author() {
        let key = Keypair::generate_ed25519();
        let env = seal(&key, "chat", b"hello").unwrap();
        assert_eq!(env.len(), OVERHEAD + 5);
        let mut checker = EnvelopeChecker::default();
        let (author, payload) = checker.open("chat", &env).unwrap();
        assert_eq!(author, key.public().to_peer_id());
        assert_eq!(payload, b"hello");
        // Twice, from the key cache.
        assert!(checker.open("chat", &env).is_ok());
        // The same text sealed again is another envelope (another message id).
        assert_ne!(seal(&key, "chat", b"hello").unwrap(), env);
        // An empty payload is fine.
        let empty = seal(&key, "chat", b"").unwrap();
        assert_eq!(checker.open("chat", &empty).unwrap().1, b"");
    }

    #[test]
    fn tampered_envelopes_are_refused() {
        let key = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let env = seal(&key, "chat", b"pay 10").unwrap();
        let mut checker = EnvelopeChecker::default();
        // Another topic.
        assert_eq!(
            checker.open("other", &env),
            Err(EnvelopeError::BadSignature)
        );
        // A changed payload, nonce or signature.
        for at in [env.len() - 1, 2 + 36, 2 + 36 + 8] {
            let mut bad = env.clone();
            bad[at] ^= 1;
            assert_eq!(
                checker.open("chat", &bad),
                Err(EnvelopeError::BadSignature),
                "byte {at}"
            );
        }
        // Another author's key in place of the signer's.
        let mut swapped = env.clone();
        swapped[2..38].copy_from_slice(&other.public().encode_protobuf());
        assert_eq!(
            checker.open("chat", &swapped),
            Err(EnvelopeError::BadSignature)
        );
        // A key that is not a key.
        let mut junk_key = env.clone();
        junk_key[2..38].fill(0xff);
        assert_eq!(checker.open("chat", &junk_key), Err(EnvelopeError::BadKey));
        // Truncated, empty, wrong version.
        assert!(matches!(
            checker.open("chat", &env[..50]),
            Err(EnvelopeError::Malformed(_))
        ));
        assert!(matches!(
            checker.open("chat", &[]),
            Err(EnvelopeError::Malformed(_))
        ));
        let mut v2 = env.clone();
        v2[0] = 2;
        assert_eq!(checker.open("chat", &v2), Err(EnvelopeError::Version(2)));
        assert_eq!(EnvelopeError::Version(2).label(), "malformed_envelope");
        // Still fine untouched.
        assert!(checker.open("chat", &env).is_ok());
    }
}
