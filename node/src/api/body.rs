//! Request bodies, each read up to the largest legal request of its route.
//!
//! A body is buffered only after the bearer token was checked, and never past its route's
//! limit: a `Content-Length` over the limit is answered at once, and a chunked body is cut
//! off where it crosses it. The limits follow from the protocol's own bounds (most
//! participants, clients and authorizations, longest message and vector), with room for
//! JSON syntax and whitespace around every element; nothing is sized "large enough".

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};

use super::ApiError;
use crate::mpc::policy::{MAX_CLIENTS, MAX_PREFIX_BYTES};

/// Room for the fixed fields of a body (names, numbers, braces, whitespace).
const FIXED: usize = 4 * 1024;
/// Room for the quotes, comma and whitespace around one list element.
const ELEMENT: usize = 64;
/// The longest peer id in text (base58 of an identity multihash of an Ed25519 key is 52).
const PEER_ID: usize = 64 + ELEMENT;
/// One client key in a policy: 64 hex digits.
const CLIENT_KEY: usize = 64 + ELEMENT;
/// One authorization: client key, request id, expiry and signature with their field names
/// (about 300 bytes compact).
const AUTHORIZATION: usize = 320 + ELEMENT;
/// A policy at its largest: every client listed, the longest prefix (hex) and every rule.
const POLICY: usize = FIXED + MAX_CLIENTS * CLIENT_KEY + 2 * MAX_PREFIX_BYTES;

/// `POST /v1/keys`: the most participants a DKG takes and the largest policy.
pub const CREATE_KEY: usize = FIXED + crate::mpc::wire::MAX_PEERS * PEER_ID + POLICY;
/// `POST /v1/keys/{id}/sign`: the longest message (hex) and an authorization per client.
pub const SIGN: usize = FIXED + 2 * super::keys::MAX_SIGN_MESSAGE + MAX_CLIENTS * AUTHORIZATION;
/// `POST /v1/keys/{id}/policy`: the largest policy and an approval per client.
pub const SET_POLICY: usize = FIXED + POLICY + MAX_CLIENTS * AUTHORIZATION;
/// `POST /v1/keys/{id}/reshare` (and `/refresh`): the most holders and an approval per
/// client.
pub const RESHARE: usize =
    FIXED + crate::mpc::wire::MAX_PEERS * PEER_ID + MAX_CLIENTS * AUTHORIZATION;
/// `POST /v1/aggregations`: the most participants a task takes.
pub const CREATE_AGGREGATION: usize = FIXED + crate::mpc::aggregation::MAX_PARTICIPANTS * PEER_ID;
/// `POST /v1/peers/{id}/transfer`: one number.
pub const TRANSFER: usize = FIXED;
/// `DELETE /v1/vault/{name}`: a file id and up to 64 approvals.
pub const VAULT_DELETE: usize = FIXED + MAX_CLIENTS * AUTHORIZATION;
/// `POST /v1/aggregations/{id}/collect`: at most a batch number.
pub const COLLECT: usize = FIXED;
/// Routes that read no body.
pub const NONE: usize = FIXED;

/// `POST /v1/topics/{topic}/messages`: `data` is a JSON string of up to `max_message_size`
/// bytes, each of which may be written as a six-byte `\u00XX` escape.
pub fn publish(max_message_size: usize) -> usize {
    FIXED + 6 * max_message_size
}

/// `POST /v1/aggregations/{id}/reports` for a task of `participants` and vector `length`
/// (the shape of a report is the aggregation's: see [`report_json_bytes`]).
pub use crate::mpc::aggregation::report_json_bytes as report;

/// A body of at most `MAX` bytes; a longer one is answered with `413 body_too_large`.
pub struct Limited<const MAX: usize>(pub Bytes);

impl<S: Send + Sync, const MAX: usize> FromRequest<S> for Limited<MAX> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        read(&parts.headers, body, MAX).await.map(Self)
    }
}

fn too_large(limit: usize, declared: Option<u64>) -> ApiError {
    let size = match declared {
        Some(n) => format!("is {n} bytes"),
        None => format!("is over {limit} bytes"),
    };
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!(
            "the request body {size}; this route accepts at most {limit} bytes (the largest legal request)"
        ),
    )
}

/// Reads a body of at most `limit` bytes.
pub async fn read(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit, declared));
    }
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => Ok(bytes),
        Err(e) => {
            let over = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.into_inner().is::<http_body_util::LengthLimitError>();
            if over {
                Err(too_large(limit, None))
            } else {
                Err(ApiError::bad_request(
                    "invalid_body",
                    "the request body could not be read to its end",
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_cover_the_largest_legal_requests() {
        // A sign request with the longest message and every client's authorization.
        let auth = serde_json::json!({
            "client": "ab".repeat(32), "request_id": "cd".repeat(16),
            "expires_at": u64::MAX, "signature": "ef".repeat(64),
        });
        let sign = serde_json::to_vec_pretty(&serde_json::json!({
            "message": "00".repeat(super::super::keys::MAX_SIGN_MESSAGE),
            "authorizations": vec![auth.clone(); MAX_CLIENTS],
        }))
        .unwrap();
        assert!(sign.len() <= SIGN, "{} > {SIGN}", sign.len());
        const { assert!(SIGN < 256 * 1024, "the sign limit stays under 256 KiB") };

        let peer = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
            .to_string();
        let policy = serde_json::json!({
            "clients": vec!["ab".repeat(32); MAX_CLIENTS], "approvals": MAX_CLIENTS,
            "max_message_bytes": u32::MAX, "message_prefix": "aa".repeat(MAX_PREFIX_BYTES),
            "max_signatures_per_minute": u32::MAX,
        });
        let create = serde_json::to_vec_pretty(&serde_json::json!({
            "scheme": "ed25519", "threshold": 255,
            "participants": vec![peer.clone(); crate::mpc::wire::MAX_PEERS],
            "policy": policy,
        }))
        .unwrap();
        assert!(
            create.len() <= CREATE_KEY,
            "{} > {CREATE_KEY}",
            create.len()
        );
        let change = serde_json::to_vec_pretty(&serde_json::json!({
            "policy": policy, "authorizations": vec![auth; MAX_CLIENTS],
        }))
        .unwrap();
        assert!(
            change.len() <= SET_POLICY,
            "{} > {SET_POLICY}",
            change.len()
        );

        // A report of 3 shares of a vector of 1000 (a sealed share has exactly these sizes).
        use base64::Engine as _;
        let b64 = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![7u8; n]);
        let length = 1000u32;
        let share = crate::mpc::aggregation::SealedShare {
            peer_id: peer,
            enc: b64(32),
            ciphertext: b64(8 * length as usize + crate::mpc::aggregation::TAG_BYTES),
            signature: Some("cd".repeat(64)),
        };
        let body = serde_json::to_vec_pretty(&crate::mpc::aggregation::Report {
            report_id: "ab".repeat(16),
            shares: vec![share; 3],
            client: Some("ef".repeat(32)),
        })
        .unwrap();
        let limit = report(3, length);
        assert!(body.len() <= limit, "{} > {limit}", body.len());
        assert!(
            limit < body.len() + FIXED + 3 * 4 * ELEMENT,
            "{limit} is loose"
        );
    }
}
