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

use std::collections::BTreeSet;
use std::time::Duration;

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Most clients a policy may list.
pub const MAX_CLIENTS: usize = 64;
/// Longest `message_prefix`, in bytes.
pub const MAX_PREFIX_BYTES: usize = 1024;
/// How far in the future an authorization may expire.
pub const MAX_AHEAD: Duration = Duration::from_secs(600);
/// Domain separation of the bytes a client signs.
pub const AUTHORIZATION_DOMAIN: &[u8] = b"p2p-mpc sign authorization v1\0";

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
}

/// One client's approval of one signing request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authorization {
    /// The client's Ed25519 public key, hex.
    pub client: String,
    /// 16 random bytes, hex; never accepted twice.
    pub request_id: String,
    /// Unix seconds after which the authorization is refused.
    pub expires_at: u64,
    /// Ed25519 signature over [`authorization_bytes`], hex.
    pub signature: String,
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

/// The bytes a client signs to authorize signing `message` with `key_id`.
pub fn authorization_bytes(
    key_id: &str,
    message: &[u8],
    request_id: &[u8; 16],
    expires_at: u64,
) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(AUTHORIZATION_DOMAIN.len() + key_id.len() + message.len() + 40);
    out.extend_from_slice(AUTHORIZATION_DOMAIN);
    out.extend_from_slice(&(key_id.len() as u64).to_be_bytes());
    out.extend_from_slice(key_id.as_bytes());
    out.extend_from_slice(&(message.len() as u64).to_be_bytes());
    out.extend_from_slice(message);
    out.extend_from_slice(request_id);
    out.extend_from_slice(&expires_at.to_be_bytes());
    out
}

/// Makes an authorization with a client's signing key.
pub fn authorize(
    client: &ed25519_dalek::SigningKey,
    key_id: &str,
    message: &[u8],
    expires_at: u64,
) -> Authorization {
    use ed25519_dalek::Signer;
    let mut request_id = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut request_id);
    let sig = client.sign(&authorization_bytes(
        key_id,
        message,
        &request_id,
        expires_at,
    ));
    Authorization {
        client: hex::encode(client.verifying_key().as_bytes()),
        request_id: hex::encode(request_id),
        expires_at,
        signature: hex::encode(sig.to_bytes()),
    }
}

/// Domain separation of a policy change: clients authorize this "message" (followed by the
/// new policy's canonical JSON) with the key id, like a signing request.
pub const POLICY_CHANGE_DOMAIN: &[u8] = b"p2p-mpc policy change v1\0";

/// The message clients authorize to replace a key's policy with `new_policy`.
pub fn policy_change_message(new_policy: &SigningPolicy) -> Vec<u8> {
    let mut m = POLICY_CHANGE_DOMAIN.to_vec();
    m.extend_from_slice(&new_policy.to_bytes());
    m
}

/// A new random client signing key.
pub fn generate_client_key() -> ed25519_dalek::SigningKey {
    let mut seed = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
    ed25519_dalek::SigningKey::from_bytes(&seed)
}

/// Parses a client public key (32 bytes, hex).
pub fn parse_client(s: &str) -> Result<VerifyingKey, String> {
    let bytes: [u8; 32] = hex::decode(s.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("`{s}` is not an Ed25519 public key (64 hex digits)"))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| format!("`{s}` is not a valid Ed25519 public key"))
}

fn parse_request_id(s: &str) -> Option<[u8; 16]> {
    hex::decode(s).ok()?.try_into().ok()
}

impl SigningPolicy {
    /// The open policy.
    pub fn open() -> Self {
        Self {
            open: true,
            clients: vec![],
            approvals: None,
            max_message_bytes: None,
            message_prefix: None,
            max_signatures_per_minute: None,
        }
    }

    /// Checks the policy and returns it in canonical form (clients lowercase and sorted,
    /// `approvals` set). The error says what is wrong.
    pub fn normalized(&self) -> Result<Self, String> {
        let mut p = self.clone();
        if p.open {
            if !p.clients.is_empty() || p.approvals.is_some() {
                return Err("an open policy takes no `clients` or `approvals`".into());
            }
        } else {
            if p.clients.is_empty() {
                return Err(
                    "a policy needs `clients` (Ed25519 public keys, hex) or `\"open\": true`"
                        .into(),
                );
            }
            if p.clients.len() > MAX_CLIENTS {
                return Err(format!("at most {MAX_CLIENTS} clients"));
            }
            let mut set = BTreeSet::new();
            for c in &p.clients {
                let key = parse_client(c)?;
                if !set.insert(hex::encode(key.as_bytes())) {
                    return Err(format!("client {c} is listed twice"));
                }
            }
            p.clients = set.into_iter().collect();
            let k = p.approvals.unwrap_or(1);
            if k < 1 || usize::from(k) > p.clients.len() {
                return Err(format!(
                    "approvals {k} is out of range: 1 to the number of clients ({})",
                    p.clients.len()
                ));
            }
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

    /// A short label for lists and metrics: `open` or `K-of-N clients`.
    pub fn label(&self) -> String {
        if self.open {
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
        message: &[u8],
        authorizations: &[Authorization],
        now: u64,
        seen: impl Fn(&[u8; 16]) -> bool,
    ) -> Result<Vec<([u8; 16], u64)>, Refusal> {
        if let Some(max) = self.max_message_bytes
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
        if let Some(prefix) = &self.message_prefix {
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
            if a.expires_at <= now {
                return Err(refuse(
                    "expired",
                    format!("the authorization by {client} expired at {}", a.expires_at),
                ));
            }
            if a.expires_at > now + MAX_AHEAD.as_secs() {
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
            let signed = authorization_bytes(key_id, message, &request_id, a.expires_at);
            if key.verify(&signed, &sig).is_err() {
                return Err(refuse(
                    "invalid_signature",
                    format!(
                        "the authorization by {client} does not sign key {key_id} and this message"
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
            max_message_bytes: None,
            message_prefix: None,
            max_signatures_per_minute: None,
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
            authorize(&a, "k1", msg, now + 60),
            authorize(&b, "k1", msg, now + 60),
        ];
        assert_eq!(p.check("k1", msg, &both, now, |_| false).unwrap().len(), 2);
        assert_eq!(
            rule(p.check("k1", msg, &both[..1], now, |_| false)),
            "too_few_approvals"
        );
        // The same client twice is one approval.
        let twice = vec![both[0].clone(), authorize(&a, "k1", msg, now + 60)];
        assert_eq!(
            rule(p.check("k1", msg, &twice, now, |_| false)),
            "too_few_approvals"
        );
        assert_eq!(
            rule(p.check("k2", msg, &both, now, |_| false)),
            "invalid_signature"
        );
        assert_eq!(
            rule(p.check("k1", b"pay 6", &both, now, |_| false)),
            "invalid_signature"
        );
        assert_eq!(
            rule(p.check("k1", msg, &both, now + 61, |_| false)),
            "expired"
        );
        let far = vec![authorize(&a, "k1", msg, now + 601), both[1].clone()];
        assert_eq!(
            rule(p.check("k1", msg, &far, now, |_| false)),
            "expiry_too_far"
        );
        let outsider = vec![authorize(&stranger, "k1", msg, now + 60), both[0].clone()];
        assert_eq!(
            rule(p.check("k1", msg, &outsider, now, |_| false)),
            "unlisted_client"
        );
        assert_eq!(rule(p.check("k1", msg, &both, now, |_| true)), "replayed");
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
        assert!(p.check("k", &[0xab, 1], &[], 0, |_| false).is_ok());
        assert_eq!(
            rule(p.check("k", &[0xab; 5], &[], 0, |_| false)),
            "max_message_bytes"
        );
        assert_eq!(
            rule(p.check("k", &[0xac], &[], 0, |_| false)),
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
