//! The node's HPKE key pair for client shares (RFC 9180: DHKEM(X25519, HKDF-SHA256),
//! HKDF-SHA256, ChaCha20-Poly1305, base mode, from the `hpke` crate), kept under
//! `<data-dir>/aggregation/hpke.key` apart from the libp2p identity, and the signature by the
//! identity key that binds the public key to the node's peer id.

use std::path::{Path, PathBuf};

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use libp2p::PeerId;
use libp2p::identity::{Keypair, PublicKey};

type Kem = X25519HkdfSha256;

/// HPKE `info` of every share encryption.
pub const HPKE_INFO: &[u8] = b"p2p-mpc aggregation share v1";
/// Prefix of the message the identity key signs.
const BINDING_DOMAIN: &[u8] = b"p2p-mpc aggregation hpke key v1\0";

/// The associated data of a share: task id and report id, so a ciphertext cannot be moved to
/// another task or report.
pub fn associated_data(task_id: &str, report_id: &str) -> Vec<u8> {
    format!("p2p-mpc/aggregation/{task_id}/{report_id}").into_bytes()
}

/// What the identity key signs: the domain, the peer id and the HPKE public key.
pub fn binding_message(peer: &PeerId, hpke_public_key: &[u8]) -> Vec<u8> {
    let mut m = BINDING_DOMAIN.to_vec();
    m.extend_from_slice(&peer.to_bytes());
    m.extend_from_slice(hpke_public_key);
    m
}

/// A node's HPKE key pair.
pub struct EncryptionKey {
    private: <Kem as hpke::Kem>::PrivateKey,
    public: Vec<u8>,
}

impl EncryptionKey {
    /// Loads `<dir>/hpke.key`, or generates and writes it (mode 0600, atomically).
    pub fn load_or_create(dir: &Path) -> Result<Self, String> {
        let path: PathBuf = dir.join("hpke.key");
        if path.exists() {
            let bytes = std::fs::read(&path)
                .map_err(|e| format!("cannot read HPKE key {}: {e}", path.display()))?;
            let private = <Kem as hpke::Kem>::PrivateKey::from_bytes(&bytes).map_err(|e| {
                format!(
                    "HPKE key {} is not a 32-byte X25519 private key: {e:?}",
                    path.display()
                )
            })?;
            let public = Kem::sk_to_pk(&private).to_bytes().to_vec();
            return Ok(Self { private, public });
        }
        let (private, public) = Kem::gen_keypair();
        super::store::replace_atomically(&path, &private.to_bytes())
            .map_err(|e| format!("cannot write HPKE key {}: {e}", path.display()))?;
        Ok(Self {
            private,
            public: public.to_bytes().to_vec(),
        })
    }

    /// The public key (32 bytes).
    pub fn public_key(&self) -> &[u8] {
        &self.public
    }

    /// A fresh key pair that lives in memory only (a client's key for one request).
    pub fn ephemeral() -> Self {
        let (private, public) = Kem::gen_keypair();
        Self {
            private,
            public: public.to_bytes().to_vec(),
        }
    }

    /// Opens a share sealed to this key.
    pub fn open(
        &self,
        encapped_key: &[u8],
        ciphertext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, String> {
        self.open_with(HPKE_INFO, encapped_key, ciphertext, aad)
            .map_err(|e| format!("{e}: the share was not sealed to this node's key for this task and report, or it was altered"))
    }

    /// Opens what was sealed to this key under HPKE `info` (the use it was sealed for).
    pub fn open_with(
        &self,
        info: &[u8],
        encapped_key: &[u8],
        ciphertext: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, String> {
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(encapped_key)
            .map_err(|e| format!("the encapsulated key is malformed: {e:?}"))?;
        hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, Kem>(
            &OpModeR::Base,
            &self.private,
            &enc,
            info,
            ciphertext,
            aad,
        )
        .map_err(|e| format!("decryption failed ({e:?})"))
    }
}

/// Bytes of an encapsulated key (X25519).
pub const ENCAPPED_KEY_BYTES: usize = 32;

/// Seals `plaintext` to `public_key`; returns (encapsulated key, ciphertext).
pub fn seal(public_key: &[u8], plaintext: &[u8], aad: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
    seal_with(HPKE_INFO, public_key, plaintext, aad)
}

/// Seals `plaintext` to `public_key` under HPKE `info`; returns (encapsulated key,
/// ciphertext).
pub fn seal_with(
    info: &[u8],
    public_key: &[u8],
    plaintext: &[u8],
    aad: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), String> {
    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(public_key)
        .map_err(|e| format!("not an X25519 public key: {e:?}"))?;
    let (enc, ct) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, Kem>(
        &OpModeS::Base,
        &pk,
        info,
        plaintext,
        aad,
    )
    .map_err(|e| format!("HPKE seal failed: {e:?}"))?;
    Ok((enc.to_bytes().to_vec(), ct))
}

/// Signs the binding of `hpke_public_key` to this node's peer id.
pub fn sign_binding(identity: &Keypair, hpke_public_key: &[u8]) -> Result<Vec<u8>, String> {
    let peer = identity.public().to_peer_id();
    identity
        .sign(&binding_message(&peer, hpke_public_key))
        .map_err(|e| format!("cannot sign the HPKE key: {e}"))
}

/// Checks that `identity_public_key` (protobuf) belongs to `peer` and signed `hpke_public_key`.
pub fn verify_binding(
    peer: &PeerId,
    identity_public_key: &[u8],
    hpke_public_key: &[u8],
    signature: &[u8],
) -> Result<(), String> {
    let key = PublicKey::try_decode_protobuf(identity_public_key)
        .map_err(|e| format!("participant {peer}: the identity key is malformed: {e}"))?;
    if key.to_peer_id() != *peer {
        return Err(format!(
            "participant {peer}: the identity key belongs to {}, not to this peer",
            key.to_peer_id()
        ));
    }
    if !key.verify(&binding_message(peer, hpke_public_key), signature) {
        return Err(format!(
            "participant {peer}: the signature over its HPKE key does not verify"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_binding() {
        let dir = tempfile::tempdir().unwrap();
        let key = EncryptionKey::load_or_create(dir.path()).unwrap();
        let again = EncryptionKey::load_or_create(dir.path()).unwrap();
        assert_eq!(key.public_key(), again.public_key());
        let aad = associated_data("t", "r");
        let (enc, ct) = seal(key.public_key(), b"share", &aad).unwrap();
        assert_eq!(key.open(&enc, &ct, &aad).unwrap(), b"share");
        assert!(key.open(&enc, &ct, &associated_data("t", "other")).is_err());
        let id = Keypair::generate_ed25519();
        let peer = id.public().to_peer_id();
        let sig = sign_binding(&id, key.public_key()).unwrap();
        let pk = id.public().encode_protobuf();
        verify_binding(&peer, &pk, key.public_key(), &sig).unwrap();
        assert!(verify_binding(&peer, &pk, &[0; 32], &sig).is_err());
        let other = Keypair::generate_ed25519().public().to_peer_id();
        assert!(verify_binding(&other, &pk, key.public_key(), &sig).is_err());
    }
}
