//! The vault's cryptography and coding, without I/O: Krawczyk's "secret sharing made short".
//!
//! - A file is sealed by its **client** with a fresh key: ChaCha20-Poly1305 in the STREAM
//!   construction (`aead::stream`, 64 KiB segments, the last one marked), so a reader detects
//!   any change, reordering or truncation. The key is derived from a random Ed25519 scalar,
//!   which is Shamir-shared t-of-n to the holders with Feldman commitments (frost-core's
//!   dealer split and `SecretShare::verify`), each share sealed with HPKE to its holder.
//! - The **nodes** see only ciphertext: it is cut into stripes of `k × F` bytes, each stripe
//!   Reed-Solomon coded into `n` fragments of `F` bytes (any `k` rebuild it), fragment `j` to
//!   holder `j`; the manifest keeps the SHA-256 of every fragment, so a holder that returns a
//!   wrong one is caught and another holder's fragment is used instead.
//! - Getting a file back: each holder that accepts the request seals its key share to a key
//!   the client made for this request; the client checks each share against the manifest's
//!   commitment (a wrong one is blamed) and rebuilds the key from `t` good ones.
//!
//! Here `k = t`: the threshold that rebuilds the ciphertext rebuilds the key.

use std::collections::BTreeMap;

use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::aead::stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::aead::{KeyInit, generic_array::GenericArray};
use frost_core::keys::{
    IdentifierList, KeyPackage, SecretShare, SigningShare, VerifiableSecretSharingCommitment,
};
use frost_ed25519::Ed25519Sha512;
use libp2p::PeerId;
use reed_solomon_erasure::galois_8::ReedSolomon;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::mpc::frost_identifier;

type Suite = Ed25519Sha512;

/// Plaintext bytes per STREAM segment; each sealed segment is 16 bytes longer.
pub const SEGMENT_BYTES: usize = 64 * 1024;
/// Bytes of a Poly1305 tag.
pub const TAG_BYTES: usize = 16;
/// Bytes of the STREAM nonce prefix (a 12-byte nonce less the 32-bit counter and the flag).
pub const NONCE_PREFIX_BYTES: usize = 7;
/// The most fragments of one file (stripes × holders): its manifest, with one hash each,
/// travels in one MPC message (256 KiB).
pub const MAX_FRAGMENT_HASHES: u64 = 3000;
/// Largest file (sealed bytes), before the fragment count's own bound.
pub const MAX_FILE_BYTES: u64 = 1 << 40;
/// The largest fragment: one MPC message carries one.
pub const MAX_FRAGMENT_BYTES: usize = 192 * 1024;
/// Fragment sizes are a multiple of this.
const FRAGMENT_ALIGN: usize = 64;
/// Most holders of one file (Reed-Solomon over GF(2^8)).
pub const MAX_HOLDERS: usize = 255;
/// The manifest format.
pub const MANIFEST_FORMAT: u32 = 1;

const KEY_DOMAIN: &[u8] = b"p2p-mpc vault file key v1\0";
const FILE_ID_DOMAIN: &[u8] = b"p2p-mpc vault manifest v1\0";

/// Checks a vault file name: 1 to 128 characters of `A-Z a-z 0-9 . _ -`, not starting with
/// a dot.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 {
        return Err(format!(
            "a vault name has 1 to 128 characters; this one has {}",
            name.chars().count()
        ));
    }
    if name.starts_with('.') {
        return Err("a vault name must not start with a dot".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "a vault name may hold only letters, digits, `.`, `_` and `-`; it has {c:?}"
        ));
    }
    Ok(())
}

/// A file's key: a random scalar, Shamir-shared to the holders; the AEAD key is derived
/// from it.
pub struct FileKey {
    scalar: frost_core::SigningKey<Suite>,
}

impl FileKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self {
            scalar: frost_core::SigningKey::new(&mut rand_core::OsRng),
        }
    }

    /// The ChaCha20-Poly1305 key: SHA-256 over a domain and the scalar.
    fn aead(&self) -> ChaCha20Poly1305 {
        let mut h = Sha256::new();
        h.update(KEY_DOMAIN);
        h.update(self.scalar.serialize());
        ChaCha20Poly1305::new(&h.finalize())
    }

    /// Shamir shares (t of the `holders`, in their order), with the Feldman commitment that
    /// every share is checked against (serialized).
    pub fn split(&self, t: u16, holders: &[PeerId]) -> Result<(Vec<[u8; 32]>, Vec<u8>), String> {
        let ids = holders
            .iter()
            .map(frost_identifier::<Suite>)
            .collect::<Result<Vec<_>, _>>()?;
        let (shares, _) = frost_core::keys::split(
            &self.scalar,
            holders.len() as u16,
            t,
            IdentifierList::Custom(&ids),
            &mut rand_core::OsRng,
        )
        .map_err(|e| format!("cannot share the file key {t} of {}: {e}", holders.len()))?;
        let commitment = shares
            .values()
            .next()
            .ok_or("no holder")?
            .commitment()
            .serialize_whole()
            .map_err(|e| format!("cannot encode the commitment: {e}"))?;
        let out = ids
            .iter()
            .map(|id| {
                let bytes = shares[id].signing_share().serialize();
                <[u8; 32]>::try_from(bytes.as_slice()).expect("an Ed25519 scalar is 32 bytes")
            })
            .collect();
        Ok((out, commitment))
    }

    /// A sealer for the file, with a fresh random nonce prefix.
    pub fn sealer(&self) -> Sealer {
        let mut prefix = [0u8; NONCE_PREFIX_BYTES];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut prefix);
        Sealer {
            stream: Some(EncryptorBE32::from_aead(
                self.aead(),
                GenericArray::from_slice(&prefix),
            )),
            prefix,
        }
    }

    /// An opener of a file sealed with this key and `prefix`.
    pub fn opener(&self, prefix: &[u8; NONCE_PREFIX_BYTES]) -> Opener {
        Opener {
            stream: Some(DecryptorBE32::from_aead(
                self.aead(),
                GenericArray::from_slice(prefix),
            )),
        }
    }
}

/// Why a key could not be rebuilt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct RecoverError {
    pub reason: String,
    /// Holders whose share does not match the commitment.
    pub blamed: Vec<PeerId>,
}

/// Rebuilds the file key from holders' shares: each share is checked against the manifest's
/// `commitment` (a share that does not match is blamed and left out); `t` good shares are
/// needed.
pub fn recover(
    commitment: &[u8],
    t: u16,
    shares: &[(PeerId, [u8; 32])],
) -> Result<(FileKey, Vec<PeerId>), RecoverError> {
    let fail = |reason: String, blamed: Vec<PeerId>| RecoverError { reason, blamed };
    let commitment = VerifiableSecretSharingCommitment::<Suite>::deserialize_whole(commitment)
        .map_err(|e| {
            fail(
                format!("the manifest's commitment does not decode: {e}"),
                vec![],
            )
        })?;
    if commitment.coefficients().len() != t as usize {
        return Err(fail(
            format!(
                "the manifest's commitment is of degree {}, not threshold {t} − 1",
                commitment.coefficients().len().saturating_sub(1)
            ),
            vec![],
        ));
    }
    let mut good = BTreeMap::new();
    let mut blamed = Vec::new();
    for (peer, bytes) in shares {
        let checked = frost_identifier::<Suite>(peer).and_then(|id| {
            let share = SigningShare::<Suite>::deserialize(bytes).map_err(|e| e.to_string())?;
            let secret = SecretShare::new(id, share, commitment.clone());
            secret.verify().map_err(|e| e.to_string())?;
            KeyPackage::try_from(secret).map_err(|e| e.to_string())
        });
        match checked {
            Ok(package) => {
                good.insert(*peer, package);
            }
            Err(_) => blamed.push(*peer),
        }
    }
    if good.len() < t as usize {
        return Err(fail(
            format!(
                "{} good key shares, {t} needed{}",
                good.len(),
                if blamed.is_empty() {
                    String::new()
                } else {
                    format!(
                        " ({} did not match the commitment)",
                        crate::mpc::session::join_peers(&blamed)
                    )
                }
            ),
            blamed,
        ));
    }
    let packages: Vec<_> = good.into_values().take(t as usize).collect();
    let scalar = frost_core::keys::reconstruct(&packages)
        .map_err(|e| fail(format!("cannot rebuild the key: {e}"), vec![]))?;
    Ok((FileKey { scalar }, blamed))
}

/// Checks one holder's share against the commitment.
pub fn check_share(commitment: &[u8], holder: &PeerId, share: &[u8; 32]) -> Result<(), String> {
    let commitment = VerifiableSecretSharingCommitment::<Suite>::deserialize_whole(commitment)
        .map_err(|e| format!("the commitment does not decode: {e}"))?;
    let id = frost_identifier::<Suite>(holder)?;
    let share = SigningShare::<Suite>::deserialize(share).map_err(|e| e.to_string())?;
    SecretShare::new(id, share, commitment)
        .verify()
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Repair of a lost key share (frost-core's repairable threshold scheme, Laing–Stinson):
/// helper `helper`'s part-1 values for the other `helpers` (itself included), for
/// `participant`, from its own `share`. Each value alone is uniformly random.
pub fn repair_deltas(
    commitment: &[u8],
    helper: &PeerId,
    share: &[u8; 32],
    helpers: &[PeerId],
    participant: &PeerId,
) -> Result<Vec<(PeerId, Vec<u8>)>, String> {
    let commitment = VerifiableSecretSharingCommitment::<Suite>::deserialize_whole(commitment)
        .map_err(|e| format!("the commitment does not decode: {e}"))?;
    let id = frost_identifier::<Suite>(helper)?;
    let share = SigningShare::<Suite>::deserialize(share).map_err(|e| e.to_string())?;
    let package = KeyPackage::try_from(SecretShare::new(id, share, commitment))
        .map_err(|e| format!("this helper's share does not match the commitment: {e}"))?;
    let ids: BTreeMap<frost_core::Identifier<Suite>, PeerId> = helpers
        .iter()
        .map(|p| frost_identifier::<Suite>(p).map(|i| (i, *p)))
        .collect::<Result<_, _>>()?;
    let list: Vec<_> = ids.keys().copied().collect();
    let deltas = frost_core::keys::repairable::repair_share_part1(
        &list,
        &package,
        &mut rand_core::OsRng,
        frost_identifier::<Suite>(participant)?,
    )
    .map_err(|e| format!("repair part 1: {e}"))?;
    Ok(deltas
        .into_iter()
        .map(|(i, d)| (ids[&i], d.serialize()))
        .collect())
}

/// A helper's part-2 value for the participant: the sum of the deltas it received.
pub fn repair_sigma(deltas: &[Vec<u8>]) -> Result<Vec<u8>, String> {
    let deltas = deltas
        .iter()
        .map(|d| frost_core::keys::repairable::Delta::<Suite>::deserialize(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("a repair delta does not decode: {e}"))?;
    Ok(frost_core::keys::repairable::repair_share_part2(&deltas).serialize())
}

/// The participant's repaired share from the helpers' sigmas, checked against the
/// commitment (a wrong sigma from any helper makes it fail).
pub fn repaired_share(
    commitment: &[u8],
    participant: &PeerId,
    holders: &[PeerId],
    sigmas: &[Vec<u8>],
) -> Result<[u8; 32], String> {
    let parsed = VerifiableSecretSharingCommitment::<Suite>::deserialize_whole(commitment)
        .map_err(|e| format!("the commitment does not decode: {e}"))?;
    let ids = holders
        .iter()
        .map(frost_identifier::<Suite>)
        .collect::<Result<std::collections::BTreeSet<_>, _>>()?;
    let public = frost_core::keys::PublicKeyPackage::from_commitment(&ids, &parsed)
        .map_err(|e| format!("the public key package: {e}"))?;
    let sigmas = sigmas
        .iter()
        .map(|s| frost_core::keys::repairable::Sigma::<Suite>::deserialize(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("a repair sigma does not decode: {e}"))?;
    let package = frost_core::keys::repairable::repair_share_part3(
        &sigmas,
        frost_identifier::<Suite>(participant)?,
        &public,
    )
    .map_err(|e| format!("repair part 3: {e}"))?;
    let share: [u8; 32] = package
        .signing_share()
        .serialize()
        .as_slice()
        .try_into()
        .map_err(|_| "a scalar is 32 bytes".to_string())?;
    check_share(commitment, participant, &share).map_err(|e| {
        format!(
            "the repaired share does not match the commitment (a helper sent a wrong value): {e}"
        )
    })?;
    Ok(share)
}

/// Seals a file segment by segment (every segment but the last is [`SEGMENT_BYTES`]).
pub struct Sealer {
    stream: Option<EncryptorBE32<ChaCha20Poly1305>>,
    prefix: [u8; NONCE_PREFIX_BYTES],
}

impl Sealer {
    /// The nonce prefix, for the manifest.
    pub fn prefix(&self) -> [u8; NONCE_PREFIX_BYTES] {
        self.prefix
    }

    /// Seals the next segment; `last` for the final one (possibly empty), after which
    /// nothing more may be sealed.
    pub fn seal(&mut self, segment: &[u8], last: bool) -> Result<Vec<u8>, String> {
        let stream = self.stream.take().ok_or("the file is sealed already")?;
        if last {
            stream.encrypt_last(segment)
        } else {
            if segment.len() != SEGMENT_BYTES {
                return Err(format!(
                    "a segment before the last is {SEGMENT_BYTES} bytes, not {}",
                    segment.len()
                ));
            }
            let mut stream = stream;
            let out = stream.encrypt_next(segment);
            self.stream = Some(stream);
            out
        }
        .map_err(|_| "the segment cannot be sealed (too many segments)".to_string())
    }
}

/// Opens a sealed file segment by segment.
pub struct Opener {
    stream: Option<DecryptorBE32<ChaCha20Poly1305>>,
}

impl Opener {
    /// Opens the next sealed segment (`last` for the final one).
    pub fn open(&mut self, sealed: &[u8], last: bool) -> Result<Vec<u8>, String> {
        let stream = self
            .stream
            .take()
            .ok_or("the file was opened to its end already")?;
        let bad = |_| {
            "a sealed segment does not open: the ciphertext was altered, reordered or cut, or the key is wrong"
                .to_string()
        };
        if last {
            stream.decrypt_last(sealed).map_err(bad)
        } else {
            let mut stream = stream;
            let out = stream.decrypt_next(sealed).map_err(bad)?;
            self.stream = Some(stream);
            Ok(out)
        }
    }
}

/// Ciphertext bytes of a sealed file of `plaintext` bytes.
pub fn sealed_len(plaintext: u64) -> u64 {
    let segments = plaintext.div_ceil(SEGMENT_BYTES as u64).max(1);
    plaintext + segments * TAG_BYTES as u64
}

/// Plaintext bytes of a sealed file of `sealed` bytes, if that is a possible length.
pub fn plaintext_len(sealed: u64) -> Option<u64> {
    let full = (SEGMENT_BYTES + TAG_BYTES) as u64;
    let segments = sealed.div_ceil(full).max(1);
    let plain = sealed.checked_sub(segments * TAG_BYTES as u64)?;
    (sealed_len(plain) == sealed).then_some(plain)
}

/// Reed-Solomon coding of stripes of `k × fragment_bytes` into `n` fragments.
pub struct Coding {
    k: usize,
    n: usize,
    fragment_bytes: usize,
    rs: Option<ReedSolomon>,
}

impl Coding {
    /// Coding for `k` of `n` holders, fragments of `fragment_bytes`.
    pub fn new(k: usize, n: usize, fragment_bytes: usize) -> Result<Self, String> {
        if k == 0 || k > n || n > MAX_HOLDERS {
            return Err(format!(
                "k-of-n coding needs 1 <= k <= n <= {MAX_HOLDERS}; got {k} of {n}"
            ));
        }
        if fragment_bytes == 0 || fragment_bytes > MAX_FRAGMENT_BYTES {
            return Err(format!(
                "a fragment is 1 to {MAX_FRAGMENT_BYTES} bytes; got {fragment_bytes}"
            ));
        }
        let rs = if n > k {
            Some(ReedSolomon::new(k, n - k).map_err(|e| format!("{e:?}"))?)
        } else {
            None
        };
        Ok(Self {
            k,
            n,
            fragment_bytes,
            rs,
        })
    }

    /// The fragment size for `ciphertext` bytes over `k` holders: a stripe holds the whole
    /// file when it is small, else fragments are as large as one message carries.
    pub fn fragment_bytes_for(ciphertext: u64, k: usize) -> usize {
        let per = ciphertext.div_ceil(k.max(1) as u64).max(1) as usize;
        per.div_ceil(FRAGMENT_ALIGN)
            .saturating_mul(FRAGMENT_ALIGN)
            .min(MAX_FRAGMENT_BYTES)
    }

    /// Bytes of ciphertext in one stripe.
    pub fn stripe_bytes(&self) -> usize {
        self.k * self.fragment_bytes
    }

    /// Stripes of a file of `ciphertext` bytes.
    pub fn stripes(&self, ciphertext: u64) -> u64 {
        ciphertext.div_ceil(self.stripe_bytes() as u64).max(1)
    }

    /// The `n` fragments of one stripe (`data` at most a stripe; zero-padded).
    pub fn encode(&self, data: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        if data.len() > self.stripe_bytes() {
            return Err(format!(
                "a stripe is at most {} bytes; got {}",
                self.stripe_bytes(),
                data.len()
            ));
        }
        let mut shards: Vec<Vec<u8>> = (0..self.n)
            .map(|i| {
                let start = (i * self.fragment_bytes).min(data.len());
                let end = ((i + 1) * self.fragment_bytes).min(data.len());
                let mut s = if i < self.k {
                    data[start..end].to_vec()
                } else {
                    Vec::new()
                };
                s.resize(self.fragment_bytes, 0);
                s
            })
            .collect();
        if let Some(rs) = &self.rs {
            rs.encode(&mut shards).map_err(|e| format!("{e:?}"))?;
        }
        Ok(shards)
    }

    /// Rebuilds holder `j`'s fragment of a stripe from at least `k` others.
    pub fn rebuild(
        &self,
        mut fragments: Vec<Option<Vec<u8>>>,
        j: usize,
    ) -> Result<Vec<u8>, String> {
        if fragments.len() != self.n || j >= self.n {
            return Err(format!(
                "{} fragment slots, not {}",
                fragments.len(),
                self.n
            ));
        }
        if fragments.iter().flatten().count() < self.k {
            return Err(format!("fewer than {} fragments of a stripe", self.k));
        }
        if let Some(f) = fragments[j].take() {
            return Ok(f);
        }
        let rs = self.rs.as_ref().ok_or("a fragment is missing")?;
        rs.reconstruct(&mut fragments)
            .map_err(|e| format!("{e:?}"))?;
        fragments[j].take().ok_or_else(|| "not rebuilt".to_string())
    }

    /// Rebuilds the first `len` bytes of a stripe from at least `k` of its fragments (by
    /// holder index; `None` where missing).
    pub fn decode(
        &self,
        mut fragments: Vec<Option<Vec<u8>>>,
        len: usize,
    ) -> Result<Vec<u8>, String> {
        if fragments.len() != self.n {
            return Err(format!(
                "{} fragment slots, not {}",
                fragments.len(),
                self.n
            ));
        }
        let present = fragments.iter().flatten().count();
        if present < self.k {
            return Err(format!(
                "{present} fragments of a stripe, {} needed",
                self.k
            ));
        }
        if fragments
            .iter()
            .flatten()
            .any(|f| f.len() != self.fragment_bytes)
        {
            return Err("a fragment has the wrong size".into());
        }
        if fragments[..self.k].iter().any(Option::is_none) {
            let rs = self.rs.as_ref().ok_or("a fragment is missing")?;
            rs.reconstruct_data(&mut fragments)
                .map_err(|e| format!("{e:?}"))?;
        }
        let mut out = Vec::with_capacity(self.stripe_bytes());
        for f in fragments.into_iter().take(self.k) {
            out.extend_from_slice(&f.expect("rebuilt"));
        }
        out.truncate(len);
        Ok(out)
    }
}

/// SHA-256 of a fragment.
pub fn fragment_hash(fragment: &[u8]) -> [u8; 32] {
    Sha256::digest(fragment).into()
}

/// About the largest file (MiB) that `k` of `n` holders take (see [`MAX_FRAGMENT_HASHES`]).
pub fn max_file_mib(k: usize, n: usize) -> u64 {
    (MAX_FRAGMENT_HASHES / n.max(1) as u64) * (k * MAX_FRAGMENT_BYTES) as u64 / (1 << 20)
}

/// What a client's sealed key shares are bound to: the file's name, its holders in order,
/// threshold, policy, sealed length, nonce prefix, commitment and a random put id. A
/// coordinator that changes any of them (say, adds its own client to the policy) has
/// shares that do not open.
pub struct Terms<'a> {
    pub name: &'a str,
    pub holders: &'a [String],
    pub threshold: u16,
    pub policy: &'a VaultPolicy,
    pub ciphertext_bytes: u64,
    pub nonce_prefix: &'a str,
    pub commitment: &'a str,
    pub put_id: &'a str,
}

const TERMS_DOMAIN: &[u8] = b"p2p-mpc vault terms v1\0";

/// The digest of a file's [`Terms`].
pub fn terms_digest(t: &Terms<'_>) -> [u8; 32] {
    let mut f = crate::mpc::digest::Fields::new(TERMS_DOMAIN)
        .field(t.name.as_bytes())
        .field(&(t.holders.len() as u64).to_be_bytes());
    for h in t.holders {
        f = f.field(h.as_bytes());
    }
    f = f
        .field(&t.threshold.to_be_bytes())
        .field(&(t.policy.clients.len() as u64).to_be_bytes());
    for c in &t.policy.clients {
        f = f.field(c.as_bytes());
    }
    f.field(&t.policy.approvals.to_be_bytes())
        .field(&t.ciphertext_bytes.to_be_bytes())
        .field(t.nonce_prefix.as_bytes())
        .field(t.commitment.as_bytes())
        .field(t.put_id.as_bytes())
        .finish()
}

/// Who may get or delete a file: K approvals of its listed clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultPolicy {
    /// Ed25519 public keys (hex).
    pub clients: Vec<String>,
    /// Approvals needed (default 1).
    #[serde(default = "one")]
    pub approvals: u16,
}

fn one() -> u16 {
    1
}

/// What every holder keeps of a file besides its fragments and its key share, identical on
/// all of them; its digest is the file's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    /// The holders, in fragment (and key share) order.
    pub holders: Vec<String>,
    /// Fragments and key shares that rebuild the file.
    pub threshold: u16,
    pub policy: VaultPolicy,
    /// Sealed (ciphertext) bytes.
    pub ciphertext_bytes: u64,
    /// SHA-256 of the ciphertext, hex.
    pub ciphertext_sha256: String,
    /// The STREAM nonce prefix, hex.
    pub nonce_prefix: String,
    /// The Feldman commitment of the key shares (frost-core's encoding), hex.
    pub commitment: String,
    pub fragment_bytes: u32,
    /// SHA-256 of every fragment, hex: stripe by stripe, holder by holder.
    pub fragment_hashes: Vec<String>,
    /// Unix seconds.
    pub created_at: u64,
    /// 16 random bytes (hex) the client chose for this put: its shares are bound to it.
    pub put_id: String,
    /// The holder that coordinated the put (counted against its cap on every holder).
    pub coordinator: String,
}

impl Manifest {
    /// The file's id: SHA-256 over a domain and the manifest's JSON, hex.
    pub fn file_id(&self) -> String {
        let json = serde_json::to_vec(self).expect("a manifest encodes");
        let mut h = Sha256::new();
        h.update(FILE_ID_DOMAIN);
        h.update(&json);
        hex::encode(h.finalize())
    }

    /// The holders as peer ids.
    pub fn holder_ids(&self) -> Result<Vec<PeerId>, String> {
        crate::mpc::parse_peers(&self.holders).map_err(|e| format!("manifest holders: {e}"))
    }

    /// The coding of this file.
    pub fn coding(&self) -> Result<Coding, String> {
        Coding::new(
            self.threshold as usize,
            self.holders.len(),
            self.fragment_bytes as usize,
        )
    }

    /// The expected hash of holder `j`'s fragment of stripe `s`.
    pub fn hash_of(&self, stripe: u64, holder: usize) -> Option<&str> {
        let n = self.holders.len() as u64;
        let at = stripe.checked_mul(n)?.checked_add(holder as u64)?;
        self.fragment_hashes
            .get(usize::try_from(at).ok()?)
            .map(String::as_str)
    }

    /// Checks that the manifest is whole: its terms, and one hash for each fragment.
    pub fn check(&self) -> Result<(), String> {
        let expected = self.check_terms()?;
        if self.fragment_hashes.len() as u64 != expected {
            return Err(format!(
                "{} fragment hashes, {expected} expected",
                self.fragment_hashes.len()
            ));
        }
        Ok(())
    }

    /// Checks everything but the hashes themselves (sizes first, nothing allocated by the
    /// claimed size); returns how many fragment hashes the file has.
    pub fn check_terms(&self) -> Result<u64, String> {
        if self.format != MANIFEST_FORMAT {
            return Err(format!(
                "manifest format {} is not {MANIFEST_FORMAT}",
                self.format
            ));
        }
        check_name(&self.name)?;
        let holders = self.holder_ids()?;
        let mut unique = holders.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != holders.len() {
            return Err("a holder is listed twice".into());
        }
        if self.threshold < 2 || self.threshold as usize > holders.len() {
            return Err(format!(
                "threshold {} of {} holders: from 2 (with 1, a single holder could read the file) to the number of holders",
                self.threshold,
                holders.len()
            ));
        }
        if self.ciphertext_bytes > MAX_FILE_BYTES {
            return Err(format!(
                "a vault file is at most {MAX_FILE_BYTES} sealed bytes; this one is {}",
                self.ciphertext_bytes
            ));
        }
        let expected_fragment =
            Coding::fragment_bytes_for(self.ciphertext_bytes, self.threshold as usize);
        if self.fragment_bytes as usize != expected_fragment {
            return Err(format!(
                "fragments of {} bytes; a file of this size has {expected_fragment}",
                self.fragment_bytes
            ));
        }
        let coding = self.coding()?;
        let hashes = coding
            .stripes(self.ciphertext_bytes)
            .checked_mul(holders.len() as u64)
            .filter(|h| *h <= MAX_FRAGMENT_HASHES)
            .ok_or_else(|| {
                format!(
                    "a file of {} sealed bytes on {} holders, {} of them needed, has more than {MAX_FRAGMENT_HASHES} fragments (the manifest travels in one message): at most about {} MiB with this threshold and holder count",
                    self.ciphertext_bytes,
                    holders.len(),
                    self.threshold,
                    max_file_mib(self.threshold as usize, holders.len())
                )
            })?;
        if plaintext_len(self.ciphertext_bytes).is_none() {
            return Err(format!(
                "{} bytes is not the length of a sealed file",
                self.ciphertext_bytes
            ));
        }
        let prefix = hex::decode(&self.nonce_prefix).map_err(|e| format!("nonce prefix: {e}"))?;
        if prefix.len() != NONCE_PREFIX_BYTES {
            return Err("the nonce prefix is not 7 bytes".into());
        }
        let commitment = hex::decode(&self.commitment).map_err(|e| format!("commitment: {e}"))?;
        let parsed = VerifiableSecretSharingCommitment::<Suite>::deserialize_whole(&commitment)
            .map_err(|e| format!("the commitment does not decode: {e}"))?;
        if parsed.coefficients().len() != self.threshold as usize {
            return Err("the commitment's degree does not match the threshold".into());
        }
        if self.policy.approvals < 1 || self.policy.approvals as usize > self.policy.clients.len() {
            return Err(format!(
                "the policy needs 1 to {} approvals; it asks for {}",
                self.policy.clients.len(),
                self.policy.approvals
            ));
        }
        if hex::decode(&self.put_id).map(|b| b.len()) != Ok(16) {
            return Err("the put id is not 16 bytes of hex".into());
        }
        if !holders.iter().any(|h| h.to_string() == self.coordinator) {
            return Err("the coordinator is not one of the holders".into());
        }
        Ok(hashes)
    }

    /// The terms the client's sealed key shares are bound to (see [`terms_digest`]).
    pub fn terms(&self) -> Terms<'_> {
        Terms {
            name: &self.name,
            holders: &self.holders,
            threshold: self.threshold,
            policy: &self.policy,
            ciphertext_bytes: self.ciphertext_bytes,
            nonce_prefix: &self.nonce_prefix,
            commitment: &self.commitment,
            put_id: &self.put_id,
        }
    }

    /// The nonce prefix as bytes (after [`check`](Self::check)).
    pub fn prefix(&self) -> Result<[u8; NONCE_PREFIX_BYTES], String> {
        hex::decode(&self.nonce_prefix)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| "the nonce prefix is not 7 bytes of hex".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(n: usize) -> Vec<PeerId> {
        (0..n).map(|_| PeerId::random()).collect()
    }

    #[test]
    fn names_are_checked() {
        for good in ["a", "report-2026.pdf", "A_b.c-d", &"x".repeat(128)] {
            check_name(good).unwrap();
        }
        for bad in ["", ".hidden", "a/b", "../x", "a b", "é", &"x".repeat(129)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_sealed_file_opens_with_the_rebuilt_key_and_not_when_altered() {
        let holders = peers(5);
        let key = FileKey::generate();
        let (shares, commitment) = key.split(3, &holders).unwrap();
        let data: Vec<u8> = (0..SEGMENT_BYTES * 2 + 100).map(|i| i as u8).collect();
        let mut sealer = key.sealer();
        let prefix = sealer.prefix();
        let mut sealed = Vec::new();
        let segments: Vec<&[u8]> = data.chunks(SEGMENT_BYTES).collect();
        for (i, s) in segments.iter().enumerate() {
            sealed.push(sealer.seal(s, i + 1 == segments.len()).unwrap());
        }
        assert!(sealer.seal(b"more", true).is_err());
        let total: usize = sealed.iter().map(Vec::len).sum();
        assert_eq!(total as u64, sealed_len(data.len() as u64));
        assert_eq!(plaintext_len(total as u64), Some(data.len() as u64));

        // Three holders' shares, one of them wrong: blamed, and a fourth one is used.
        let mut given: Vec<(PeerId, [u8; 32])> = holders
            .iter()
            .copied()
            .zip(shares.iter().copied())
            .collect();
        given[1].1 = given[2].1;
        let (rebuilt, blamed) = recover(&commitment, 3, &given[..4]).unwrap();
        assert_eq!(blamed, [holders[1]]);
        let mut opener = rebuilt.opener(&prefix);
        let mut out = Vec::new();
        for (i, s) in sealed.iter().enumerate() {
            out.extend(opener.open(s, i + 1 == sealed.len()).unwrap());
        }
        assert_eq!(out, data);

        // Too few good shares: refused, the bad one named.
        let e = recover(&commitment, 3, &given[..3]).err().unwrap();
        assert_eq!(e.blamed, [holders[1]]);
        // A share under another holder's name does not match either.
        let swapped = [
            (holders[0], shares[1]),
            (holders[1], shares[0]),
            (holders[2], shares[2]),
        ];
        assert_eq!(
            recover(&commitment, 3, &swapped)
                .err()
                .unwrap()
                .blamed
                .len(),
            2
        );

        // A flipped bit, a dropped segment, a reordering, a cut: none opens.
        let (key, _) = recover(&commitment, 3, &given[2..5]).unwrap();
        let mut flipped = sealed.clone();
        flipped[1][7] ^= 1;
        let attempts: Vec<Vec<Vec<u8>>> = vec![
            flipped,
            vec![sealed[0].clone(), sealed[2].clone()],
            vec![sealed[1].clone(), sealed[0].clone(), sealed[2].clone()],
            vec![sealed[0].clone(), sealed[1].clone()],
        ];
        for attempt in attempts {
            let mut opener = key.opener(&prefix);
            let opened: Result<Vec<_>, _> = attempt
                .iter()
                .enumerate()
                .map(|(i, s)| opener.open(s, i + 1 == attempt.len()))
                .collect();
            assert!(opened.is_err());
        }
        // The wrong key: nothing opens.
        assert!(
            FileKey::generate()
                .opener(&prefix)
                .open(&sealed[0], false)
                .is_err()
        );
    }

    #[test]
    fn an_empty_file_is_one_sealed_segment() {
        let key = FileKey::generate();
        let mut sealer = key.sealer();
        let sealed = sealer.seal(&[], true).unwrap();
        assert_eq!(sealed.len() as u64, sealed_len(0));
        assert_eq!(
            key.opener(&sealer.prefix()).open(&sealed, true).unwrap(),
            b""
        );
        assert_eq!(plaintext_len(1), None);
    }

    #[test]
    fn any_k_fragments_rebuild_a_stripe() {
        let coding = Coding::new(3, 5, 64).unwrap();
        let data: Vec<u8> = (0..150u8).collect();
        let fragments = coding.encode(&data).unwrap();
        assert_eq!(fragments.len(), 5);
        for missing in [[0, 1], [3, 4], [1, 3], [0, 4]] {
            let slots: Vec<Option<Vec<u8>>> = fragments
                .iter()
                .enumerate()
                .map(|(i, f)| (!missing.contains(&i)).then(|| f.clone()))
                .collect();
            assert_eq!(coding.decode(slots, data.len()).unwrap(), data);
        }
        let three_missing: Vec<Option<Vec<u8>>> = fragments
            .iter()
            .enumerate()
            .map(|(i, f)| (i > 2).then(|| f.clone()))
            .collect();
        assert!(coding.decode(three_missing, data.len()).is_err());
        // n = k: no parity, every fragment needed.
        let plain = Coding::new(2, 2, 64).unwrap();
        let f = plain.encode(&data[..100]).unwrap();
        assert_eq!(
            plain
                .decode(f.into_iter().map(Some).collect(), 100)
                .unwrap(),
            data[..100]
        );
        assert!(Coding::new(0, 3, 64).is_err() && Coding::new(4, 3, 64).is_err());
        assert!(coding.encode(&[0; 64 * 3 + 1]).is_err());
    }

    #[test]
    fn a_lost_share_and_fragment_are_rebuilt_by_the_others() {
        let holders = peers(4);
        let key = FileKey::generate();
        let (shares, commitment) = key.split(2, &holders).unwrap();
        // Holder 3 lost its share: holders 0 and 1 help.
        let helpers = [holders[0], holders[1]];
        let mut received: BTreeMap<PeerId, Vec<Vec<u8>>> = BTreeMap::new();
        for (i, h) in helpers.iter().enumerate() {
            for (to, delta) in
                repair_deltas(&commitment, h, &shares[i], &helpers, &holders[3]).unwrap()
            {
                received.entry(to).or_default().push(delta);
            }
        }
        let sigmas: Vec<Vec<u8>> = helpers
            .iter()
            .map(|h| repair_sigma(&received[h]).unwrap())
            .collect();
        let share = repaired_share(&commitment, &holders[3], &holders, &sigmas).unwrap();
        assert_eq!(share, shares[3]);
        // A wrong sigma is caught.
        let mut bad = sigmas.clone();
        bad[0] = repair_sigma(&[received[&helpers[0]][0].clone()]).unwrap();
        assert!(repaired_share(&commitment, &holders[3], &holders, &bad).is_err());
        // A helper whose own share is wrong cannot help.
        assert!(
            repair_deltas(&commitment, &holders[0], &shares[1], &helpers, &holders[3]).is_err()
        );

        let coding = Coding::new(2, 4, 64).unwrap();
        let fragments = coding.encode(&[9u8; 100]).unwrap();
        for lost in 0..4 {
            let slots: Vec<Option<Vec<u8>>> = fragments
                .iter()
                .enumerate()
                .map(|(i, f)| (i != lost && i != (lost + 1) % 4).then(|| f.clone()))
                .collect();
            assert_eq!(coding.rebuild(slots, lost).unwrap(), fragments[lost]);
        }
    }

    #[test]
    fn fragment_sizes_fit_small_files_and_cap_large_ones() {
        assert_eq!(Coding::fragment_bytes_for(100, 2), 64);
        assert_eq!(Coding::fragment_bytes_for(1000, 2), 512);
        assert_eq!(Coding::fragment_bytes_for(100 << 20, 2), MAX_FRAGMENT_BYTES);
        assert_eq!(Coding::fragment_bytes_for(0, 3), 64);
    }
}
