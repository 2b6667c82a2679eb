//! SHA-256 over framed fields: the digests that participants of a protocol compare or sign.
//! A domain first, then each variable-length field preceded by its length (big-endian u64),
//! fixed-size values as they are, and peer lists as their count followed by each peer id's
//! binary form as a field, so that no two different inputs frame the same bytes.

use libp2p::PeerId;
use sha2::{Digest, Sha256};

/// A digest being built, field by field.
pub struct Fields(Sha256);

impl Fields {
    /// Starts a digest under `domain` (empty: no domain).
    pub fn new(domain: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(domain);
        Self(h)
    }

    /// A variable-length field: its length, then its bytes.
    pub fn field(mut self, bytes: &[u8]) -> Self {
        self.0.update((bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
        self
    }

    /// A value of fixed size (a number's bytes, a digest), as it is.
    pub fn raw(mut self, bytes: &[u8]) -> Self {
        self.0.update(bytes);
        self
    }

    /// A list of peers: its count, then each peer id's binary form as a field.
    pub fn peers(mut self, peers: &[PeerId]) -> Self {
        self.0.update((peers.len() as u64).to_be_bytes());
        peers.iter().fold(self, |f, p| f.field(&p.to_bytes()))
    }

    pub fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}
