//! Signing policies: who may have a key sign, checked by every holder for itself.
//!
//! A key is created with a policy, which travels in the DKG invitation and whose digest is
//! part of what the DKG confirmation round agrees on, so every holder stores the same one.
//! A policy is either `open` (anyone who can call a holder's API may sign) or a list of
//! client Ed25519 public keys of which `approvals` must sign each request, with optional
//! rules. A signing request carries [`Authorization`]s; before it commits a nonce, every
//! holder checks them with [`SigningPolicy::check`]: listed clients, valid signatures over
//! a domain-separated encoding of key id, message, request id and expiry, not expired and
//! not too far ahead, request ids never seen before (the
//! [`ReplayGuard`](super::replay_guard::ReplayGuard), kept on disk), and
//! the rules.
//!
//! A policy change is approved under a domain of its own ([`CHANGE_APPROVAL_DOMAIN`]):
//! the client signs the key id, the [`PolicyStamp`] of the policy in force (its version and
//! digest) and the digest of the new one, which gets the next version. A signing
//! authorization can therefore never pass for a change approval, whatever message it signs,
//! and an approval is void once the policy it names was replaced. A committed change is kept
//! as a [`PolicyChangeRecord`]; [`verify_change_record`] checks one against the policy it
//! replaces, which is how a holder that missed a change catches up without trusting the
//! peer that hands it the record.

use std::collections::BTreeSet;
use std::time::Duration;

use ed25519_dalek::{Signature, VerifyingKey};
use libp2p::PeerId;
use libp2p::identity::{Keypair, PublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Most clients a policy may list.
pub const MAX_CLIENTS: usize = 64;
/// Longest `message_prefix`, in bytes.
pub const MAX_PREFIX_BYTES: usize = 1024;
/// How far in the future an authorization may expire.
pub const MAX_AHEAD: Duration = Duration::from_secs(600);
/// Domain separation of the bytes a client signs to authorize a signature.
pub const AUTHORIZATION_DOMAIN: &[u8] = b"p2p-mpc sign authorization v2\0";
/// Domain separation of the bytes a client signs to approve a policy change.
pub const CHANGE_APPROVAL_DOMAIN: &[u8] = b"p2p-mpc policy change approval v2\0";
/// Domain separation of the bytes a client signs to approve a reshare or refresh.
pub const RESHARE_APPROVAL_DOMAIN: &[u8] = b"p2p-mpc reshare approval v1\0";
/// Domain of an approval to release a vault file to the holder of one recipient key.
pub const VAULT_GET_DOMAIN: &[u8] = b"p2p-mpc vault get v1\0";
/// Domain of an approval to delete a vault file.
pub const VAULT_DELETE_DOMAIN: &[u8] = b"p2p-mpc vault delete v1\0";
/// Domain separation of the bytes a holder signs to vote for a policy change (see
/// [`policy_change`](super::policy_change)).
pub const VOTE_DOMAIN: &[u8] = b"p2p-mpc policy change vote v1\0";

/// Most committed changes a key file keeps (what a holder that missed changes can fetch).
pub const MAX_POLICY_HISTORY: usize = 32;

/// Which policy of a key is in force: its version (0 for the policy the key was made with,
/// one more per committed change) and its digest. Signing invitations carry the stamp the
/// coordinator checked; a holder with another one refuses (`policy_version_mismatch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStamp {
    pub version: u64,
    pub digest: [u8; 32],
}

impl std::fmt::Display for PolicyStamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "version {} (digest {})",
            self.version,
            hex::encode(&self.digest[..8])
        )
    }
}

/// A committed policy change: the policy that became version `version`, the approvals
/// that replaced version `version - 1` with it, and the votes of the holders that prepared
/// it (its certificate: a quorum of the key's holders, see
/// [`policy_change::core`](super::policy_change::core)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyChangeRecord {
    pub version: u64,
    pub policy: SigningPolicy,
    #[serde(deserialize_with = "super::wire::peer_list")]
    pub approvals: Vec<Authorization>,
    #[serde(default, deserialize_with = "super::wire::peer_list")]
    pub votes: Vec<PolicyVote>,
}

/// One change of one key's policy: from the policy `current` to the policy with digest
/// `digest`, which becomes version `current.version + 1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key_id: String,
    pub current: PolicyStamp,
    pub digest: [u8; 32],
}

impl Change {
    /// The version the change makes.
    pub fn version(&self) -> u64 {
        self.current.version.saturating_add(1)
    }

    /// The bytes a holder signs to vote for this change.
    fn vote_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(VOTE_DOMAIN.len() + self.key_id.len() + 88);
        out.extend_from_slice(VOTE_DOMAIN);
        out.extend_from_slice(&(self.key_id.len() as u64).to_be_bytes());
        out.extend_from_slice(self.key_id.as_bytes());
        out.extend_from_slice(&self.current.version.to_be_bytes());
        out.extend_from_slice(&self.current.digest);
        out.extend_from_slice(&self.version().to_be_bytes());
        out.extend_from_slice(&self.digest);
        out
    }
}

/// A holder's signed vote for one [`Change`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyVote {
    /// The voting holder's peer id.
    pub holder: String,
    /// Its identity public key (libp2p protobuf encoding), hex.
    pub public_key: String,
    /// Its signature over the change's vote bytes, hex.
    pub signature: String,
}

/// Longest hex field of a vote that is read (an Ed25519 or secp256k1 identity key and its
/// signature fit easily; an RSA key does not, and a node with one cannot vote).
const MAX_VOTE_HEX: usize = 512;

/// A statement signed by a node's identity key: a holder's vote for a policy change, or a
/// new holder's notice that it staged a reshare's share. Same fields, bytes under their own
/// domains.
pub type NodeSignature = PolicyVote;

impl PolicyVote {
    /// `identity`'s vote for `change`.
    pub fn sign(identity: &Keypair, change: &Change) -> Result<Self, String> {
        Self::sign_bytes(identity, &change.vote_bytes())
    }

    /// `identity`'s signature of `bytes`.
    pub fn sign_bytes(identity: &Keypair, bytes: &[u8]) -> Result<Self, String> {
        let signature = identity
            .sign(bytes)
            .map_err(|e| format!("cannot sign: {e}"))?;
        Ok(Self {
            holder: identity.public().to_peer_id().to_string(),
            public_key: hex::encode(identity.public().encode_protobuf()),
            signature: hex::encode(signature),
        })
    }

    /// The node whose valid signature of `bytes` this is; `what` names the statement in
    /// the error.
    pub fn verify_bytes(&self, bytes: &[u8], what: &str) -> Result<PeerId, String> {
        let holder: PeerId = self
            .holder
            .parse()
            .map_err(|_| format!("the signer of the {what} is not a peer id"))?;
        if self.public_key.len() > MAX_VOTE_HEX || self.signature.len() > MAX_VOTE_HEX {
            return Err(format!("the {what} of {holder} is too long"));
        }
        let key = hex::decode(&self.public_key)
            .ok()
            .and_then(|b| PublicKey::try_decode_protobuf(&b).ok())
            .ok_or_else(|| format!("the {what} of {holder} carries a malformed public key"))?;
        if key.to_peer_id() != holder {
            return Err(format!(
                "the {what} of {holder} carries the public key of another peer"
            ));
        }
        let signature = hex::decode(&self.signature)
            .map_err(|_| format!("the {what} of {holder} carries a malformed signature"))?;
        if !key.verify(bytes, &signature) {
            return Err(format!("the {what} of {holder} has a wrong signature"));
        }
        Ok(holder)
    }

    /// The holder whose valid vote for `change` this is; the error says what is wrong.
    pub fn verify(&self, change: &Change) -> Result<PeerId, String> {
        let holder: PeerId = self
            .holder
            .parse()
            .map_err(|_| "the vote's holder is not a peer id".to_string())?;
        if self.public_key.len() > MAX_VOTE_HEX || self.signature.len() > MAX_VOTE_HEX {
            return Err(format!("the vote of {holder} is too long"));
        }
        let key = hex::decode(&self.public_key)
            .ok()
            .and_then(|b| PublicKey::try_decode_protobuf(&b).ok())
            .ok_or_else(|| format!("the vote of {holder} carries a malformed public key"))?;
        if key.to_peer_id() != holder {
            return Err(format!(
                "the vote of {holder} carries the public key of another peer"
            ));
        }
        let signature = hex::decode(&self.signature)
            .map_err(|_| format!("the vote of {holder} carries a malformed signature"))?;
        if !key.verify(&change.vote_bytes(), &signature) {
            return Err(format!(
                "the vote of {holder} is not for this change of key {} to version {}",
                change.key_id,
                change.version()
            ));
        }
        Ok(holder)
    }
}

/// What a client's signature approves.
#[derive(Debug, Clone, Copy)]
pub enum Approves<'a> {
    /// Signing `message` with the key, in a session coordinated by `coordinator`: an
    /// authorization names the one node that may coordinate it, so a holder that received it
    /// as a participant cannot use it for a session of its own.
    Signing {
        message: &'a [u8],
        coordinator: PeerId,
    },
    /// Replacing the policy in force, `current`, with the one whose digest is `new` (it
    /// becomes version `current.version + 1`).
    PolicyChange { current: PolicyStamp, new: [u8; 32] },
    /// Moving the key's shares to a holder set (a refresh: to the same one), made as
    /// generation `generation`; `holders` is [`holders_digest`] of the sorted new set.
    Reshare { generation: u64, holders: [u8; 32] },
    /// Releasing the vault file whose id is `file_id` (the key id is its name): each holder
    /// seals its key share to `recipient`, an X25519 key the client made for this request.
    VaultGet {
        file_id: [u8; 32],
        recipient: [u8; 32],
    },
    /// Deleting the vault file whose id is `file_id` everywhere.
    VaultDelete { file_id: [u8; 32] },
}

/// The digest of a holder set that a reshare approval signs: SHA-256 over the sorted peer
/// ids, each with its length.
pub fn holders_digest(holders: &[PeerId]) -> [u8; 32] {
    let mut sorted = holders.to_vec();
    sorted.sort();
    super::digest::Fields::new(&[]).peers(&sorted).finish()
}

/// Who may have a key moved to another holder set (or refreshed); part of its policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReshareRule {
    /// K approvals of the clients who may change the policy (the default).
    Approvals,
    /// Any request that moves the key to exactly the members of the cluster roster (what
    /// the operator does when a cluster scales); no client approval.
    Roster,
}

impl Approves<'_> {
    /// The bytes a client signs for this, with `key_id`, `request_id` and `expires_at`.
    pub fn signed_bytes(&self, key_id: &str, request_id: &[u8; 16], expires_at: u64) -> Vec<u8> {
        match self {
            Approves::Signing {
                message,
                coordinator,
            } => authorization_bytes(key_id, coordinator, message, request_id, expires_at),
            Approves::PolicyChange { current, new } => {
                let mut out = Vec::with_capacity(CHANGE_APPROVAL_DOMAIN.len() + key_id.len() + 104);
                out.extend_from_slice(CHANGE_APPROVAL_DOMAIN);
                out.extend_from_slice(&(key_id.len() as u64).to_be_bytes());
                out.extend_from_slice(key_id.as_bytes());
                out.extend_from_slice(&current.version.to_be_bytes());
                out.extend_from_slice(&current.digest);
                out.extend_from_slice(new);
                out.extend_from_slice(request_id);
                out.extend_from_slice(&expires_at.to_be_bytes());
                out
            }
            Approves::Reshare {
                generation,
                holders,
            } => {
                let mut out = Vec::with_capacity(RESHARE_APPROVAL_DOMAIN.len() + key_id.len() + 80);
                out.extend_from_slice(RESHARE_APPROVAL_DOMAIN);
                out.extend_from_slice(&(key_id.len() as u64).to_be_bytes());
                out.extend_from_slice(key_id.as_bytes());
                out.extend_from_slice(&generation.to_be_bytes());
                out.extend_from_slice(holders);
                out.extend_from_slice(request_id);
                out.extend_from_slice(&expires_at.to_be_bytes());
                out
            }
            Approves::VaultGet { file_id, recipient } => {
                let mut out = Vec::with_capacity(VAULT_GET_DOMAIN.len() + key_id.len() + 96);
                out.extend_from_slice(VAULT_GET_DOMAIN);
                out.extend_from_slice(&(key_id.len() as u64).to_be_bytes());
                out.extend_from_slice(key_id.as_bytes());
                out.extend_from_slice(file_id);
                out.extend_from_slice(recipient);
                out.extend_from_slice(request_id);
                out.extend_from_slice(&expires_at.to_be_bytes());
                out
            }
            Approves::VaultDelete { file_id } => {
                let mut out = Vec::with_capacity(VAULT_DELETE_DOMAIN.len() + key_id.len() + 64);
                out.extend_from_slice(VAULT_DELETE_DOMAIN);
                out.extend_from_slice(&(key_id.len() as u64).to_be_bytes());
                out.extend_from_slice(key_id.as_bytes());
                out.extend_from_slice(file_id);
                out.extend_from_slice(request_id);
                out.extend_from_slice(&expires_at.to_be_bytes());
                out
            }
        }
    }

    /// What it approves, for a refusal's message.
    fn describe(&self, key_id: &str) -> String {
        match self {
            Approves::Signing { coordinator, .. } => {
                format!("signing this message with key {key_id}, coordinated by {coordinator}")
            }
            Approves::PolicyChange { current, .. } => format!(
                "replacing the policy in force here ({current}) of key {key_id} with this policy"
            ),
            Approves::Reshare { generation, .. } => {
                format!("moving key {key_id} to this holder set as generation {generation}")
            }
            Approves::VaultGet { file_id, .. } => format!(
                "releasing vault file {key_id} ({}) to this recipient key",
                hex::encode(file_id)
            ),
            Approves::VaultDelete { file_id } => {
                format!("deleting vault file {key_id} ({})", hex::encode(file_id))
            }
        }
    }
}

/// A key's signing policy, as `POST /v1/keys` takes it and `GET /v1/keys/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningPolicy {
    /// Anyone who can call a holder's API may sign (no client keys).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub open: bool,
    /// Client Ed25519 public keys (32 bytes, lowercase hex), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<String>,
    /// How many distinct listed clients must authorize each request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals: Option<u16>,
    /// Longest message that may be signed, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message_bytes: Option<u32>,
    /// Every message must start with these bytes (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_prefix: Option<String>,
    /// Most signatures per minute, on each holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_signatures_per_minute: Option<u32>,
    /// Admin clients of an `open` key (Ed25519 public keys, lowercase hex, sorted):
    /// `admin_approvals` of them approve a change of its policy. An open key without admins
    /// keeps its policy for good. (A `clients` policy is changed by its clients.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admins: Vec<String>,
    /// How many distinct admins must approve a change (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_approvals: Option<u16>,
    /// Who may move the key to another holder set or refresh it: `approvals` (absent: K
    /// approvals of those who may change the policy) or `roster` (a request that moves it to
    /// exactly the cluster roster's members, as the operator does on scale).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reshare: Option<ReshareRule>,
    /// Set only on keys stored before policies existed: they sign for any API caller, and
    /// their policy cannot be changed until an operator converts them
    /// (`p2p-mpc keys convert-legacy`). Never accepted in a request.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub legacy: bool,
}

/// One client's approval of one signing request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authorization {
    /// The client's Ed25519 public key, hex.
    pub client: String,
    /// 16 random bytes, hex; never accepted twice.
    pub request_id: String,
    /// For a signing request: the peer id of the only node that may coordinate it. (A
    /// change approval names none.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator: Option<String>,
    /// Unix seconds after which the authorization is refused.
    pub expires_at: u64,
    /// Ed25519 signature over [`authorization_bytes`], hex.
    pub signature: String,
}

/// Every rule a refusal names: the stable codes of the API's 403 `rule` and of a holder's
/// typed refusal on the wire.
pub const RULES: &[&str] = &[
    "legacy_open",
    "policy_fixed",
    "max_message_bytes",
    "message_prefix",
    "unlisted_client",
    "malformed",
    "expired",
    "expiry_too_far",
    "invalid_signature",
    "replayed",
    "wrong_coordinator",
    "too_few_approvals",
    "max_signatures_per_minute",
    "policy_version_mismatch",
    "policy_change_conflict",
    "generation_mismatch",
    "reshare_not_roster",
    "uncertified_change",
    "internal",
];

/// Rules that say "not now" rather than "not allowed": the coordinator and a holder hold
/// different versions of the key's policy, or another change is being committed. The API
/// answers them with 409 instead of 403.
pub const CONFLICT_RULES: &[&str] = &[
    "policy_version_mismatch",
    "policy_change_conflict",
    "generation_mismatch",
];

/// The rule of [`RULES`] called `name` (a peer's refusal names it as text).
pub fn rule_named(name: &str) -> Option<&'static str> {
    RULES.iter().copied().find(|r| *r == name)
}

/// Why a request was refused: the rule (a stable code) and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unauthorized ({rule}): {detail}")]
pub struct Refusal {
    pub rule: &'static str,
    pub detail: String,
}

pub(crate) fn refuse(rule: &'static str, detail: impl Into<String>) -> Refusal {
    Refusal {
        rule,
        detail: detail.into(),
    }
}

/// The bytes a client signs to authorize signing `message` with `key_id` in a session
/// coordinated by `coordinator`.
pub fn authorization_bytes(
    key_id: &str,
    coordinator: &PeerId,
    message: &[u8],
    request_id: &[u8; 16],
    expires_at: u64,
) -> Vec<u8> {
    let peer = coordinator.to_bytes();
    let mut out = Vec::with_capacity(
        AUTHORIZATION_DOMAIN.len() + key_id.len() + peer.len() + message.len() + 48,
    );
    out.extend_from_slice(AUTHORIZATION_DOMAIN);
    out.extend_from_slice(&(key_id.len() as u64).to_be_bytes());
    out.extend_from_slice(key_id.as_bytes());
    out.extend_from_slice(&(peer.len() as u64).to_be_bytes());
    out.extend_from_slice(&peer);
    out.extend_from_slice(&(message.len() as u64).to_be_bytes());
    out.extend_from_slice(message);
    out.extend_from_slice(request_id);
    out.extend_from_slice(&expires_at.to_be_bytes());
    out
}

/// Makes an authorization (or approval) of `what` with a client's signing key.
pub fn approve(
    client: &ed25519_dalek::SigningKey,
    key_id: &str,
    what: Approves<'_>,
    expires_at: u64,
) -> Authorization {
    use ed25519_dalek::Signer;
    let mut request_id = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut request_id);
    let sig = client.sign(&what.signed_bytes(key_id, &request_id, expires_at));
    let coordinator = match what {
        Approves::Signing { coordinator, .. } => Some(coordinator.to_string()),
        Approves::PolicyChange { .. }
        | Approves::Reshare { .. }
        | Approves::VaultGet { .. }
        | Approves::VaultDelete { .. } => None,
    };
    Authorization {
        client: hex::encode(client.verifying_key().as_bytes()),
        request_id: hex::encode(request_id),
        coordinator,
        expires_at,
        signature: hex::encode(sig.to_bytes()),
    }
}

/// Makes an authorization to sign `message` with `key_id` in a session coordinated by
/// `coordinator`.
pub fn authorize(
    client: &ed25519_dalek::SigningKey,
    key_id: &str,
    coordinator: &PeerId,
    message: &[u8],
    expires_at: u64,
) -> Authorization {
    let what = Approves::Signing {
        message,
        coordinator: *coordinator,
    };
    approve(client, key_id, what, expires_at)
}

/// Makes an approval to replace `current` (the stamp of the policy in force) with `new` on
/// `key_id`.
pub fn approve_change(
    client: &ed25519_dalek::SigningKey,
    key_id: &str,
    current: PolicyStamp,
    new: &SigningPolicy,
    expires_at: u64,
) -> Authorization {
    let what = Approves::PolicyChange {
        current,
        new: new.digest(),
    };
    approve(client, key_id, what, expires_at)
}

/// A new random client signing key.
pub fn generate_client_key() -> ed25519_dalek::SigningKey {
    let mut seed = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
    ed25519_dalek::SigningKey::from_bytes(&seed)
}

/// Parses a client public key (32 bytes, hex). Keys of small order (for which signatures
/// can be forged without any secret) and non-canonical encodings of a point are refused.
pub fn parse_client(s: &str) -> Result<VerifyingKey, String> {
    let bytes: [u8; 32] = hex::decode(s.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("`{s}` is not an Ed25519 public key (64 hex digits)"))?;
    let key = VerifyingKey::from_bytes(&bytes)
        .map_err(|_| format!("`{s}` is not a valid Ed25519 public key"))?;
    if key.is_weak() {
        return Err(format!(
            "`{s}` is an Ed25519 key of small order, for which anyone can forge signatures; use a client key made by `p2p-mpc client keygen`"
        ));
    }
    if key.to_bytes() != bytes {
        return Err(format!(
            "`{s}` is not the canonical encoding of its Ed25519 point"
        ));
    }
    Ok(key)
}

fn parse_request_id(s: &str) -> Option<[u8; 16]> {
    hex::decode(s).ok()?.try_into().ok()
}

impl SigningPolicy {
    /// The open policy (without admins: fixed for good).
    pub fn open() -> Self {
        Self {
            open: true,
            clients: vec![],
            approvals: None,
            max_message_bytes: None,
            message_prefix: None,
            max_signatures_per_minute: None,
            admins: vec![],
            admin_approvals: None,
            reshare: None,
            legacy: false,
        }
    }

    /// A policy of K approvals by `clients` only (no message rules, no rate): what a vault
    /// file's get and delete need.
    pub fn clients(clients: Vec<String>, approvals: u16) -> Self {
        Self {
            open: false,
            clients,
            approvals: Some(approvals),
            ..Self::open()
        }
    }

    /// Who may reshare or refresh the key.
    pub fn reshare_rule(&self) -> ReshareRule {
        self.reshare.unwrap_or(ReshareRule::Approvals)
    }

    /// The policy of a key stored before policies existed.
    pub fn legacy_open() -> Self {
        Self {
            legacy: true,
            ..Self::open()
        }
    }

    /// Who approves a change of this policy, as a policy of its own (its clients and
    /// approvals; no message rules, no rate), or why nobody may change it.
    pub fn change_approvers(&self) -> Result<SigningPolicy, Refusal> {
        if self.legacy {
            return Err(refuse(
                "legacy_open",
                "the key was stored before signing policies existed; its policy cannot be changed until an operator converts it on every holder (`p2p-mpc keys convert-legacy`)",
            ));
        }
        let (clients, approvals) = if self.open {
            if self.admins.is_empty() {
                return Err(refuse(
                    "policy_fixed",
                    "the key is open and was created without admins: its policy cannot be changed",
                ));
            }
            (self.admins.clone(), self.admin_approvals)
        } else {
            (self.clients.clone(), self.approvals)
        };
        Ok(SigningPolicy {
            open: false,
            clients,
            approvals: Some(approvals.unwrap_or(1)),
            ..Self::open()
        })
    }

    /// The keys of `list` (named `field` in errors) parsed, deduplicated and sorted, and the
    /// approvals `k` (default 1) checked against their number.
    pub(crate) fn client_set(
        list: &[String],
        field: &str,
        k: Option<u16>,
        k_field: &str,
    ) -> Result<(Vec<String>, u16), String> {
        if list.len() > MAX_CLIENTS {
            return Err(format!("at most {MAX_CLIENTS} {field}"));
        }
        let mut set = BTreeSet::new();
        for c in list {
            let key = parse_client(c)?;
            if !set.insert(hex::encode(key.as_bytes())) {
                return Err(format!("{field}: {c} is listed twice"));
            }
        }
        let k = k.unwrap_or(1);
        if k < 1 || usize::from(k) > set.len() {
            return Err(format!(
                "{k_field} {k} is out of range: 1 to the number of {field} ({})",
                set.len()
            ));
        }
        Ok((set.into_iter().collect(), k))
    }

    /// Checks the policy and returns it in canonical form (clients lowercase and sorted,
    /// `approvals` set). The error says what is wrong.
    pub fn normalized(&self) -> Result<Self, String> {
        let mut p = self.clone();
        if p.legacy {
            return Err(
                "`legacy` marks keys stored before policies existed; no request may set it".into(),
            );
        }
        if p.open {
            if !p.clients.is_empty() || p.approvals.is_some() {
                return Err("an open policy takes no `clients` or `approvals`".into());
            }
            if p.admins.is_empty() {
                if p.admin_approvals.is_some() {
                    return Err("`admin_approvals` needs `admins`".into());
                }
            } else {
                let (admins, k) =
                    Self::client_set(&p.admins, "admins", p.admin_approvals, "admin_approvals")?;
                p.admins = admins;
                p.admin_approvals = Some(k);
            }
        } else {
            if p.clients.is_empty() {
                return Err(
                    "a policy needs `clients` (Ed25519 public keys, hex) or `\"open\": true`"
                        .into(),
                );
            }
            if !p.admins.is_empty() || p.admin_approvals.is_some() {
                return Err(
                    "`admins` are for open keys; a `clients` policy is changed by its clients"
                        .into(),
                );
            }
            let (clients, k) = Self::client_set(&p.clients, "clients", p.approvals, "approvals")?;
            p.clients = clients;
            p.approvals = Some(k);
        }
        if let Some(prefix) = &p.message_prefix {
            let bytes =
                hex::decode(prefix).map_err(|e| format!("`message_prefix` must be hex: {e}"))?;
            if bytes.len() > MAX_PREFIX_BYTES {
                return Err(format!(
                    "`message_prefix` is {} bytes; at most {MAX_PREFIX_BYTES}",
                    bytes.len()
                ));
            }
            p.message_prefix = Some(hex::encode(bytes));
        }
        if p.max_message_bytes == Some(0) {
            return Err("`max_message_bytes` must be at least 1".into());
        }
        if p.max_signatures_per_minute == Some(0) {
            return Err("`max_signatures_per_minute` must be at least 1".into());
        }
        // `approvals` is the default: absent in the canonical form, so the digest of a
        // policy that never named it does not change.
        if p.reshare == Some(ReshareRule::Approvals) {
            p.reshare = None;
        }
        Ok(p)
    }

    /// The canonical encoding (JSON of the normalized policy) that travels in the DKG.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a policy serializes")
    }

    /// Parses and checks a policy received from a peer; it must already be canonical, so
    /// that every holder's digest is the same.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let p: Self =
            serde_json::from_slice(bytes).map_err(|e| format!("malformed signing policy: {e}"))?;
        let n = p.normalized()?;
        if n != p {
            return Err("the signing policy is not in canonical form".into());
        }
        Ok(n)
    }

    /// SHA-256 of [`to_bytes`](Self::to_bytes).
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.to_bytes()).into()
    }

    /// This policy's stamp when in force at `version`.
    pub fn stamp(&self, version: u64) -> PolicyStamp {
        PolicyStamp {
            version,
            digest: self.digest(),
        }
    }

    /// A short label for lists and metrics: `open` or `K-of-N clients`.
    pub fn label(&self) -> String {
        if self.legacy {
            "legacy-open".into()
        } else if self.open {
            "open".into()
        } else {
            format!(
                "{}-of-{} clients",
                self.approvals.unwrap_or(1),
                self.clients.len()
            )
        }
    }

    /// Checks a signing request against the policy at time `now` (unix seconds). Returns the
    /// request ids with their expiries, to be remembered by the caller's
    /// [`ReplayGuard`](super::replay_guard::ReplayGuard)
    /// (which the check consults through `seen`). Rate limits are the caller's.
    pub fn check(
        &self,
        key_id: &str,
        what: Approves<'_>,
        authorizations: &[Authorization],
        now: u64,
        seen: impl Fn(&[u8; 16]) -> bool,
    ) -> Result<Vec<([u8; 16], u64)>, Refusal> {
        // The message rules govern what may be signed, not who may change the policy.
        let message = match what {
            Approves::Signing { message, .. } => message,
            Approves::PolicyChange { .. }
            | Approves::Reshare { .. }
            | Approves::VaultGet { .. }
            | Approves::VaultDelete { .. } => &[],
        };
        let signing = matches!(what, Approves::Signing { .. });
        if let Some(max) = self.max_message_bytes.filter(|_| signing)
            && message.len() > max as usize
        {
            return Err(refuse(
                "max_message_bytes",
                format!(
                    "the message is {} bytes; the policy allows {max}",
                    message.len()
                ),
            ));
        }
        if let Some(prefix) = self.message_prefix.as_ref().filter(|_| signing) {
            let prefix = hex::decode(prefix).unwrap_or_default();
            if !message.starts_with(&prefix) {
                return Err(refuse(
                    "message_prefix",
                    format!("the message does not start with {}", hex::encode(&prefix)),
                ));
            }
        }
        if self.open {
            return Ok(vec![]);
        }
        self.check_approvals(key_id, what, authorizations, Some(now), seen)
    }

    /// The client part of [`check`](Self::check): listed clients, expiry (when `now` is
    /// given), valid signatures of `what`, request ids unseen, K distinct clients.
    fn check_approvals(
        &self,
        key_id: &str,
        what: Approves<'_>,
        authorizations: &[Authorization],
        now: Option<u64>,
        seen: impl Fn(&[u8; 16]) -> bool,
    ) -> Result<Vec<([u8; 16], u64)>, Refusal> {
        let mut approved = BTreeSet::new();
        let mut ids = Vec::new();
        let mut batch_ids = BTreeSet::new();
        for a in authorizations {
            let client = a.client.trim().to_ascii_lowercase();
            if !self.clients.contains(&client) {
                return Err(refuse(
                    "unlisted_client",
                    format!("client {} is not in the key's policy", a.client),
                ));
            }
            let request_id = parse_request_id(&a.request_id).ok_or_else(|| {
                refuse(
                    "malformed",
                    format!("request_id `{}` is not 16 bytes of hex", a.request_id),
                )
            })?;
            if let Some(now) = now
                && a.expires_at <= now
            {
                return Err(refuse(
                    "expired",
                    format!("the authorization by {client} expired at {}", a.expires_at),
                ));
            }
            if let Some(now) = now
                && a.expires_at > now + MAX_AHEAD.as_secs()
            {
                return Err(refuse(
                    "expiry_too_far",
                    format!(
                        "the authorization by {client} expires more than {} s ahead",
                        MAX_AHEAD.as_secs()
                    ),
                ));
            }
            let key = parse_client(&client).map_err(|e| refuse("malformed", e))?;
            let sig = hex::decode(&a.signature)
                .ok()
                .and_then(|b| <[u8; 64]>::try_from(b).ok())
                .map(|b| Signature::from_bytes(&b))
                .ok_or_else(|| refuse("malformed", "signature is not 64 bytes of hex"))?;
            // A signing authorization is checked over the coordinator it names; one that
            // names another coordinator than this session's is refused once its signature
            // shows that the client really made it for that other node.
            let (named, actual) = match what {
                Approves::Signing {
                    message,
                    coordinator,
                } => {
                    let named: PeerId = a
                        .coordinator
                        .as_deref()
                        .ok_or_else(|| {
                            refuse(
                                "malformed",
                                format!("the authorization by {client} names no coordinator (`coordinator`, the peer id of the node that coordinates the request)"),
                            )
                        })?
                        .parse()
                        .map_err(|_| {
                            refuse(
                                "malformed",
                                format!("the authorization by {client}: `coordinator` is not a peer id"),
                            )
                        })?;
                    let what = Approves::Signing {
                        message,
                        coordinator: named,
                    };
                    (what, Some((named, coordinator)))
                }
                Approves::PolicyChange { .. }
                | Approves::Reshare { .. }
                | Approves::VaultGet { .. }
                | Approves::VaultDelete { .. } => {
                    if a.coordinator.is_some() {
                        return Err(refuse(
                            "malformed",
                            format!(
                                "the approval by {client} names a coordinator: that is for signing authorizations"
                            ),
                        ));
                    }
                    (what, None)
                }
            };
            let signed = named.signed_bytes(key_id, &request_id, a.expires_at);
            // Strict: no small-order components, no malleable signatures.
            if key.verify_strict(&signed, &sig).is_err() {
                return Err(refuse(
                    "invalid_signature",
                    format!(
                        "the signature by {client} does not approve {}",
                        named.describe(key_id)
                    ),
                ));
            }
            if let Some((named, actual)) = actual
                && named != actual
            {
                return Err(refuse(
                    "wrong_coordinator",
                    format!(
                        "the authorization by {client} is for a request coordinated by {named}; this one is coordinated by {actual}"
                    ),
                ));
            }
            if seen(&request_id) || !batch_ids.insert(request_id) {
                return Err(refuse(
                    "replayed",
                    format!("request id {} was used before", a.request_id),
                ));
            }
            approved.insert(client);
            ids.push((request_id, a.expires_at));
        }
        let need = usize::from(self.approvals.unwrap_or(1));
        if approved.len() < need {
            return Err(refuse(
                "too_few_approvals",
                format!(
                    "{} distinct client(s) authorized this request; the policy needs {need}",
                    approved.len()
                ),
            ));
        }
        Ok(ids)
    }
}

/// Checks that `record` is the next change of key `key_id`'s policy `current` (in force at
/// `current_version`): the version that follows, a canonical policy, and K distinct change
/// approvers of `current` who approved exactly this replacement. Expiry and replay are not
/// checked: the holders that committed the change checked them when it was made, and a
/// record only ever applies to the one policy its approvals name, so replaying it is
/// harmless. A holder that missed a change takes it through this check, from any peer.
pub fn verify_change_record(
    current: &SigningPolicy,
    current_version: u64,
    key_id: &str,
    record: &PolicyChangeRecord,
) -> Result<(), Refusal> {
    if record.version != current_version.saturating_add(1) {
        return Err(refuse(
            "policy_version_mismatch",
            format!(
                "a change to version {} does not follow version {current_version}, in force here",
                record.version
            ),
        ));
    }
    if record.policy.normalized().as_ref() != Ok(&record.policy) {
        return Err(refuse(
            "malformed",
            "the changed policy is not valid and canonical",
        ));
    }
    let what = Approves::PolicyChange {
        current: current.stamp(current_version),
        new: record.policy.digest(),
    };
    current
        .change_approvers()?
        .check_approvals(key_id, what, &record.approvals, None, |_| false)
        .map(|_| ())
}

/// Unix seconds now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The coordinator of the signing requests in these tests.
    pub(crate) fn coordinator() -> PeerId {
        static C: std::sync::OnceLock<PeerId> = std::sync::OnceLock::new();
        *C.get_or_init(PeerId::random)
    }

    /// Signing `message` through [`coordinator`].
    pub(crate) fn signing(message: &[u8]) -> Approves<'_> {
        Approves::Signing {
            message,
            coordinator: coordinator(),
        }
    }

    #[test]
    fn a_signing_authorization_is_for_the_coordinator_it_names_only() {
        let a = client();
        let p = policy(&[&a], 1);
        let now = 1_000_000;
        let auth = authorize(&a, "k", &coordinator(), b"m", now + 60);
        assert!(
            p.check("k", signing(b"m"), std::slice::from_ref(&auth), now, |_| {
                false
            })
            .is_ok()
        );
        // Used by another node (a holder that received it as a participant): refused by
        // its rule, once the signature shows the client made it for the named node.
        let other = Approves::Signing {
            message: b"m",
            coordinator: PeerId::random(),
        };
        assert_eq!(
            rule(p.check("k", other, std::slice::from_ref(&auth), now, |_| false)),
            "wrong_coordinator"
        );
        // Renamed to the other node: the signature no longer verifies.
        let mut renamed = auth.clone();
        if let Approves::Signing { coordinator, .. } = other {
            renamed.coordinator = Some(coordinator.to_string());
        }
        assert_eq!(
            rule(p.check("k", other, &[renamed], now, |_| false)),
            "invalid_signature"
        );
        // Without a coordinator, or with garbage in its place: malformed.
        for named in [None, Some("not a peer id".to_string())] {
            let mut bad = auth.clone();
            bad.coordinator = named;
            assert_eq!(
                rule(p.check("k", signing(b"m"), &[bad], now, |_| false)),
                "malformed"
            );
        }
        // A change approval names no coordinator.
        let new = policy(&[&client()], 1);
        let mut change = approve_change(&a, "k", p.stamp(0), &new, now + 60);
        assert!(change.coordinator.is_none());
        change.coordinator = Some(coordinator().to_string());
        let what = Approves::PolicyChange {
            current: p.stamp(0),
            new: new.digest(),
        };
        assert_eq!(
            rule(p.check("k", what, &[change], now, |_| false)),
            "malformed"
        );
    }

    #[test]
    fn every_rule_refused_in_this_file_is_a_known_rule() {
        // Every rule named as a literal by a refusal in this file and in the replay guard
        // (their code before the tests).
        for file in [include_str!("policy.rs"), include_str!("replay_guard.rs")] {
            let source = file.split("#[cfg(test)]").next().unwrap();
            for (i, _) in source.match_indices("refuse(") {
                let after = source[i + "refuse(".len()..].trim_start();
                let Some(rest) = after.strip_prefix('"') else {
                    continue;
                };
                let rule = &rest[..rest.find('"').unwrap()];
                assert_eq!(
                    rule_named(rule),
                    Some(rule),
                    "rule `{rule}` is not in RULES"
                );
            }
        }
        assert_eq!(rule_named("nonsense"), None);
    }

    pub(crate) fn client() -> ed25519_dalek::SigningKey {
        generate_client_key()
    }

    pub(crate) fn policy(clients: &[&ed25519_dalek::SigningKey], k: u16) -> SigningPolicy {
        SigningPolicy {
            open: false,
            clients: clients
                .iter()
                .map(|c| hex::encode(c.verifying_key().as_bytes()))
                .collect(),
            approvals: Some(k),
            ..SigningPolicy::open()
        }
        .normalized()
        .unwrap()
    }

    fn rule(r: Result<Vec<([u8; 16], u64)>, Refusal>) -> &'static str {
        r.unwrap_err().rule
    }

    #[test]
    fn valid_authorizations_pass_and_each_rule_is_named() {
        let (a, b, stranger) = (client(), client(), client());
        let p = policy(&[&a, &b], 2);
        let now = 1_000_000;
        let msg = b"pay 5";
        let both = vec![
            authorize(&a, "k1", &coordinator(), msg, now + 60),
            authorize(&b, "k1", &coordinator(), msg, now + 60),
        ];
        assert_eq!(
            p.check("k1", signing(msg), &both, now, |_| false)
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            rule(p.check("k1", signing(msg), &both[..1], now, |_| false)),
            "too_few_approvals"
        );
        // The same client twice is one approval.
        let twice = vec![
            both[0].clone(),
            authorize(&a, "k1", &coordinator(), msg, now + 60),
        ];
        assert_eq!(
            rule(p.check("k1", signing(msg), &twice, now, |_| false)),
            "too_few_approvals"
        );
        assert_eq!(
            rule(p.check("k2", signing(msg), &both, now, |_| false)),
            "invalid_signature"
        );
        assert_eq!(
            rule(p.check("k1", signing(b"pay 6"), &both, now, |_| false)),
            "invalid_signature"
        );
        assert_eq!(
            rule(p.check("k1", signing(msg), &both, now + 61, |_| false)),
            "expired"
        );
        let far = vec![
            authorize(&a, "k1", &coordinator(), msg, now + 601),
            both[1].clone(),
        ];
        assert_eq!(
            rule(p.check("k1", signing(msg), &far, now, |_| false)),
            "expiry_too_far"
        );
        let outsider = vec![
            authorize(&stranger, "k1", &coordinator(), msg, now + 60),
            both[0].clone(),
        ];
        assert_eq!(
            rule(p.check("k1", signing(msg), &outsider, now, |_| false)),
            "unlisted_client"
        );
        assert_eq!(
            rule(p.check("k1", signing(msg), &both, now, |_| true)),
            "replayed"
        );
    }

    #[test]
    fn who_may_change_a_policy() {
        let (a, b) = (client(), client());
        let hexkey = |c: &ed25519_dalek::SigningKey| hex::encode(c.verifying_key().as_bytes());
        // A clients policy: its clients, with its approvals.
        let p = policy(&[&a, &b], 2);
        let approvers = p.change_approvers().unwrap();
        assert_eq!(approvers.clients, p.clients);
        assert_eq!(approvers.approvals, Some(2));
        // An open key without admins: fixed; a legacy key: refused until converted.
        assert_eq!(
            SigningPolicy::open().change_approvers().unwrap_err().rule,
            "policy_fixed"
        );
        let legacy = SigningPolicy::legacy_open();
        assert_eq!(legacy.change_approvers().unwrap_err().rule, "legacy_open");
        assert_eq!(legacy.label(), "legacy-open");
        assert!(legacy.normalized().unwrap_err().contains("legacy"));
        // An open key with admins: K of them.
        let admin = SigningPolicy {
            admins: vec![hexkey(&b), hexkey(&a)],
            admin_approvals: Some(2),
            ..SigningPolicy::open()
        }
        .normalized()
        .unwrap();
        let approvers = admin.change_approvers().unwrap();
        assert!(!approvers.open);
        assert_eq!(approvers.clients.len(), 2);
        assert_eq!(approvers.approvals, Some(2));
        // Admins belong to open keys only, and need a sane K.
        let mut bad = p.clone();
        bad.admins = vec![hexkey(&a)];
        assert!(bad.normalized().unwrap_err().contains("open keys"));
        let mut bad = admin.clone();
        bad.admin_approvals = Some(3);
        assert!(bad.normalized().unwrap_err().contains("admin_approvals 3"));
        let mut bad = SigningPolicy::open();
        bad.admin_approvals = Some(1);
        assert!(bad.normalized().unwrap_err().contains("needs `admins`"));
    }

    #[test]
    fn client_keys_of_small_order_or_non_canonical_are_refused() {
        // The identity point (y = 1) has small order: any signature "verifies" loosely.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        // A non-canonical encoding: y = p + 1 (the identity again), which decodes but is
        // not how the point is written.
        let mut non_canonical = [0xffu8; 32];
        non_canonical[0] = 0xee;
        non_canonical[31] = 0x7f;
        for bad in [identity, non_canonical] {
            let err = parse_client(&hex::encode(bad)).unwrap_err();
            assert!(
                err.contains("small order") || err.contains("canonical"),
                "{err}"
            );
            let mut p = SigningPolicy::open();
            p.open = false;
            p.clients = vec![hex::encode(bad)];
            assert!(p.normalized().is_err(), "a policy listing {bad:?}");
        }
        assert!(parse_client(&hex::encode(client().verifying_key().as_bytes())).is_ok());
    }

    #[test]
    fn signing_authorizations_and_change_approvals_never_stand_for_each_other() {
        let a = client();
        let mut p = policy(&[&a], 1);
        // The holders' rules would let the client sign only "pay …" messages.
        p.message_prefix = Some(hex::encode(b"pay "));
        let p = p.normalized().unwrap();
        let new = policy(&[&client()], 1);
        let now = 1_000_000;
        let change = Approves::PolicyChange {
            current: p.stamp(0),
            new: new.digest(),
        };
        // A signing authorization over any bytes, even the change's own encoding, is no
        // approval of the change.
        let bytes = change.signed_bytes("k", &[0; 16], now + 60);
        for message in [bytes.as_slice(), b"pay 5".as_slice()] {
            let mut signing = vec![authorize(&a, "k", &coordinator(), message, now + 60)];
            // As made, it names a coordinator, which no change approval does; without it,
            // its signature is over other bytes.
            assert_eq!(
                rule(p.check("k", change, &signing, now, |_| false)),
                "malformed"
            );
            signing[0].coordinator = None;
            assert_eq!(
                rule(p.check("k", change, &signing, now, |_| false)),
                "invalid_signature"
            );
        }
        // A change approval is no signing authorization, and it approves only the change
        // from the policy it names.
        let approval = vec![approve_change(&a, "k", p.stamp(0), &new, now + 60)];
        assert_eq!(
            p.check("k", change, &approval, now, |_| false)
                .unwrap()
                .len(),
            1
        );
        let refused = p
            .check("k", signing(b"pay 5"), &approval, now, |_| false)
            .unwrap_err();
        assert_eq!(refused.rule, "malformed", "it names no coordinator");
        let mut named = approval.clone();
        named[0].coordinator = Some(coordinator().to_string());
        let refused = p
            .check("k", signing(b"pay 5"), &named, now, |_| false)
            .unwrap_err();
        assert_eq!(refused.rule, "invalid_signature");
        // Nor a change from another policy, or from the same policy at another version.
        for current in [new.stamp(0), p.stamp(1)] {
            let stale = Approves::PolicyChange {
                current,
                new: new.digest(),
            };
            let refused = p.check("k", stale, &approval, now, |_| false).unwrap_err();
            assert!(refused.detail.contains("policy in force here"), "{refused}");
        }
        // The message rules do not apply to a change.
        assert!(p.check("k", change, &approval, now, |_| false).is_ok());
    }

    #[test]
    fn a_change_record_applies_only_to_the_policy_and_version_it_replaces() {
        let (a, b) = (client(), client());
        let p = policy(&[&a, &b], 2);
        let new = policy(&[&b], 1);
        let now = 1_000_000;
        let approvals = vec![
            approve_change(&a, "k", p.stamp(3), &new, now + 60),
            approve_change(&b, "k", p.stamp(3), &new, now + 60),
        ];
        let record = PolicyChangeRecord {
            version: 4,
            policy: new.clone(),
            approvals: approvals.clone(),
            votes: vec![],
        };
        // Long after the approvals expired: a holder catching up still takes it.
        assert_eq!(verify_change_record(&p, 3, "k", &record), Ok(()));
        // Not from another version, another key, or another policy.
        assert_eq!(
            verify_change_record(&p, 2, "k", &record).unwrap_err().rule,
            "policy_version_mismatch"
        );
        assert_eq!(
            verify_change_record(&p, 3, "other", &record)
                .unwrap_err()
                .rule,
            "invalid_signature"
        );
        assert_eq!(
            verify_change_record(&new, 3, "k", &record)
                .unwrap_err()
                .rule,
            "unlisted_client"
        );
        // Not with fewer approvals than the replaced policy needs, nor another new policy.
        let one = PolicyChangeRecord {
            approvals: approvals[..1].to_vec(),
            ..record.clone()
        };
        assert_eq!(
            verify_change_record(&p, 3, "k", &one).unwrap_err().rule,
            "too_few_approvals"
        );
        let swapped = PolicyChangeRecord {
            policy: policy(&[&a], 1),
            ..record.clone()
        };
        assert_eq!(
            verify_change_record(&p, 3, "k", &swapped).unwrap_err().rule,
            "invalid_signature"
        );
        // A policy that is not canonical (so its digest is not the holders') is refused.
        let mut odd = record.clone();
        odd.policy.approvals = None;
        assert_eq!(
            verify_change_record(&p, 3, "k", &odd).unwrap_err().rule,
            "malformed"
        );
        // An open key without admins never changes, whatever a peer hands over.
        assert_eq!(
            verify_change_record(&SigningPolicy::open(), 3, "k", &record)
                .unwrap_err()
                .rule,
            "policy_fixed"
        );
    }

    #[test]
    fn rules_and_open_policies() {
        let mut p = SigningPolicy::open();
        p.max_message_bytes = Some(4);
        p.message_prefix = Some("AB".into());
        let p = p.normalized().unwrap();
        assert_eq!(p.message_prefix.as_deref(), Some("ab"));
        let mut long = p.clone();
        long.message_prefix = Some("ab".repeat(MAX_PREFIX_BYTES + 1));
        assert!(long.normalized().unwrap_err().contains("at most 1024"));
        assert_eq!(p.label(), "open");
        assert!(p.check("k", signing(&[0xab, 1]), &[], 0, |_| false).is_ok());
        assert_eq!(
            rule(p.check("k", signing(&[0xab; 5]), &[], 0, |_| false)),
            "max_message_bytes"
        );
        assert_eq!(
            rule(p.check("k", signing(&[0xac]), &[], 0, |_| false)),
            "message_prefix"
        );
    }

    #[test]
    fn bad_policies_say_why() {
        let a = client();
        let mut p = policy(&[&a], 1);
        p.approvals = Some(2);
        assert!(p.normalized().unwrap_err().contains("approvals 2"));
        let none = SigningPolicy {
            open: false,
            ..SigningPolicy::open()
        };
        assert!(none.normalized().unwrap_err().contains("\"open\": true"));
        let mut open_with_clients = SigningPolicy::open();
        open_with_clients.clients = vec![hex::encode(a.verifying_key().as_bytes())];
        assert!(open_with_clients.normalized().is_err());
        let mut bad = policy(&[&a], 1);
        bad.clients = vec!["zz".into()];
        assert!(
            bad.normalized()
                .unwrap_err()
                .contains("not an Ed25519 public key")
        );
        // The canonical form round-trips; anything else is refused by peers.
        let good = policy(&[&a], 1);
        assert_eq!(SigningPolicy::from_bytes(&good.to_bytes()).unwrap(), good);
        let mut upper = good.clone();
        upper.clients[0] = upper.clients[0].to_uppercase();
        assert!(SigningPolicy::from_bytes(&serde_json::to_vec(&upper).unwrap()).is_err());
    }
}
