//! `/v1/keys`: distributed key generation, key metadata and threshold signing.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::Instrument;

use super::body::{self, Limited};
use super::{ApiError, ApiState, parse_body};
use crate::mpc::dkg::DkgRequest;
use crate::mpc::policy::{Authorization, SigningPolicy};
use crate::mpc::scheme::{BitcoinNetwork, Scheme, p2tr_address};
use crate::mpc::session::SessionError;
use crate::mpc::sign::SignResponse;
use crate::mpc::store::KeyInfo;
use crate::mpc::{MpcError, parse_peers};

/// Largest message `POST /v1/keys/{id}/sign` accepts, in bytes.
pub const MAX_SIGN_MESSAGE: usize = 64 * 1024;

/// Body of `POST /v1/keys`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// The signature scheme's name (see [`Scheme`]); default `ed25519`. An unknown name is
    /// refused with the list of known ones.
    #[serde(default = "default_scheme")]
    pub scheme: String,
    pub threshold: u16,
    /// Peer ids; default: the cluster roster's members (without a roster: this node and
    /// every connected peer that speaks MPC).
    #[serde(default)]
    pub participants: Option<Vec<String>>,
    /// Who may have the key sign; required.
    #[serde(default)]
    pub policy: Option<SigningPolicy>,
}

/// The error for a key request without a policy: it shows both forms.
pub const POLICY_REQUIRED: &str = "`policy` is required: {\"clients\": [\"<Ed25519 public key, hex>\", ...], \"approvals\": K} (optional rules: \"max_message_bytes\", \"message_prefix\" (hex), \"max_signatures_per_minute\"), or {\"open\": true} to let anyone who can call a holder's API sign";

fn default_scheme() -> String {
    Scheme::default().name().into()
}

/// Body of `POST /v1/keys/{key_id}/policy`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRequest {
    /// The new policy.
    pub policy: SigningPolicy,
    /// Approvals of the change under the current policy: client signatures under the change
    /// domain over the key id and both policies' digests
    /// ([`crate::mpc::policy::Approves::PolicyChange`]).
    #[serde(default)]
    pub authorizations: Vec<Authorization>,
}

/// Body of `POST /v1/keys/{key_id}/refresh`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// Client approvals of the refresh (none for a `roster` key): signatures under the
    /// reshare domain over the key id, the next generation and the current holder set
    /// ([`crate::mpc::policy::Approves::Reshare`]).
    #[serde(default)]
    pub authorizations: Vec<Authorization>,
}

/// Body of `POST /v1/keys/{key_id}/reshare`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReshareRequest {
    /// The new holders' peer ids (old ones kept, new ones added, missing ones dropped).
    pub holders: Vec<String>,
    /// Client approvals, as for a refresh but over the new holder set.
    #[serde(default)]
    pub authorizations: Vec<Authorization>,
}

/// Body of `POST /v1/keys/{key_id}/sign`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    /// The message, hex.
    pub message: String,
    /// Client approvals of this request (none for an `open` key).
    #[serde(default)]
    pub authorizations: Vec<Authorization>,
}

impl From<MpcError> for ApiError {
    fn from(e: MpcError) -> Self {
        match &e {
            MpcError::BadRequest(_) => ApiError::bad_request("invalid_request", e.to_string()),
            MpcError::UnknownKey(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_key", e.to_string())
            }
            MpcError::UnknownFile(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_file", e.to_string())
            }
            MpcError::Session {
                error:
                    SessionError::Refused {
                        rule, refused_by, ..
                    },
                ..
            } => {
                let mut error = refusal_error(rule, e.to_string());
                error.refused_by = refused_by.iter().map(ToString::to_string).collect();
                error
            }
            MpcError::Session { error, .. } => {
                let code = if error.blamed().is_empty() {
                    "session_failed"
                } else {
                    "session_aborted"
                };
                ApiError::new(StatusCode::BAD_GATEWAY, code, e.to_string())
            }
            MpcError::Unauthorized(refusal) => refusal_error(refusal.rule, e.to_string()),
            MpcError::Limit(_) => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "limit_reached",
                e.to_string(),
            ),
            MpcError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            MpcError::Internal(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            }
        }
    }
}

/// A refusal by `rule`: 403 `unauthorized`, or 409 `conflict` for a rule that means "not
/// now" (another policy version, another change in progress).
fn refusal_error(rule: &'static str, message: String) -> ApiError {
    let (status, code) = if crate::mpc::policy::CONFLICT_RULES.contains(&rule) {
        (StatusCode::CONFLICT, "conflict")
    } else {
        (StatusCode::FORBIDDEN, "unauthorized")
    };
    ApiError::new(status, code, message).with_rule(rule)
}

pub(super) async fn create(
    State(state): State<ApiState>,
    Limited(body): Limited<{ body::CREATE_KEY }>,
) -> Result<(StatusCode, Json<KeyInfo>), ApiError> {
    let req: CreateKeyRequest = parse_body(&body)?;
    let policy = req
        .policy
        .ok_or_else(|| ApiError::bad_request("invalid_request", POLICY_REQUIRED))?
        .normalized()
        .map_err(|m| ApiError::bad_request("invalid_request", format!("policy: {m}")))?;
    let scheme =
        Scheme::parse(&req.scheme).map_err(|m| ApiError::bad_request("invalid_request", m))?;
    let participants = match req.participants {
        Some(list) => {
            parse_peers(&list).map_err(|m| ApiError::bad_request("invalid_request", m))?
        }
        None => state.mpc.default_participants().await?,
    };
    // The session runs in its own task: a client that hangs up does not cut a DKG short
    // half-way (the other participants would only time out).
    let mpc = state.mpc.clone();
    let request = DkgRequest {
        scheme,
        threshold: req.threshold,
        participants,
        policy,
    };
    let info = tokio::spawn(async move { mpc.create_key(request).await }.in_current_span())
        .await
        .map_err(|e| MpcError::Internal(format!("the DKG task failed: {e}")))??;
    Ok((StatusCode::CREATED, Json(info)))
}

pub(super) async fn list(State(state): State<ApiState>) -> Json<serde_json::Value> {
    Json(json!({ "keys": state.mpc.keys() }))
}

/// The query of `GET /v1/keys/{key_id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyQuery {
    /// A Bitcoin network (`bitcoin`, `testnet`, `signet`, `regtest`): the answer then has the
    /// P2TR address of a `secp256k1-tr` key on it.
    pub network: Option<String>,
}

/// Key metadata, with the P2TR address when a network was asked for.
#[derive(Debug, Serialize)]
pub struct KeyView {
    #[serde(flatten)]
    pub info: KeyInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<&'static str>,
    /// bech32m, segwit version 1, witness program `public_key` (the output key, as is).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

pub(super) async fn get_key(
    State(state): State<ApiState>,
    Path(key_id): Path<String>,
    query: Result<Query<KeyQuery>, QueryRejection>,
) -> Result<Json<KeyView>, ApiError> {
    let Query(query) = query.map_err(|e| {
        ApiError::bad_request(
            "invalid_request",
            format!("query: {} (the only parameter is `network`)", e.body_text()),
        )
    })?;
    let info = state.mpc.key(&key_id).ok_or(MpcError::UnknownKey(key_id))?;
    let Some(network) = query.network else {
        return Ok(Json(KeyView {
            info,
            network: None,
            address: None,
        }));
    };
    let network =
        BitcoinNetwork::parse(&network).map_err(|m| ApiError::bad_request("invalid_request", m))?;
    if info.scheme != Scheme::Secp256k1Tr {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!(
                "key {} is an {} key; only {} keys have a Bitcoin address",
                info.key_id,
                info.scheme,
                Scheme::Secp256k1Tr
            ),
        ));
    }
    let output_key = hex::decode(&info.public_key)
        .map_err(|e| MpcError::Internal(format!("the stored public key is not hex: {e}")))?;
    let address = p2tr_address(&output_key, network).map_err(MpcError::Internal)?;
    Ok(Json(KeyView {
        info,
        network: Some(network.name()),
        address: Some(address),
    }))
}

pub(super) async fn sign(
    State(state): State<ApiState>,
    Path(key_id): Path<String>,
    Limited(body): Limited<{ body::SIGN }>,
) -> Result<Json<SignResponse>, ApiError> {
    let req: SignRequest = parse_body(&body)?;
    let message = hex::decode(req.message.trim()).map_err(|e| {
        ApiError::bad_request("invalid_request", format!("`message` must be hex: {e}"))
    })?;
    if message.len() > MAX_SIGN_MESSAGE {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!(
                "the message is {} bytes; at most {MAX_SIGN_MESSAGE} can be signed",
                message.len()
            ),
        ));
    }
    if state.mpc.key(&key_id).is_none() {
        return Err(MpcError::UnknownKey(key_id).into());
    }
    let mpc = state.mpc.clone();
    check_authorization_count(&req.authorizations)?;
    let authorizations = req.authorizations;
    let answer = tokio::spawn(
        async move { mpc.sign(&key_id, message, authorizations).await }.in_current_span(),
    )
    .await
    .map_err(|e| MpcError::Internal(format!("the signing task failed: {e}")))??;
    Ok(Json(answer))
}

pub(super) async fn refresh(
    State(state): State<ApiState>,
    Path(key_id): Path<String>,
    Limited(body): Limited<{ body::RESHARE }>,
) -> Result<Json<KeyInfo>, ApiError> {
    let req: RefreshRequest = parse_body(&body)?;
    reshare_with(state, key_id, None, req.authorizations).await
}

pub(super) async fn reshare(
    State(state): State<ApiState>,
    Path(key_id): Path<String>,
    Limited(body): Limited<{ body::RESHARE }>,
) -> Result<Json<KeyInfo>, ApiError> {
    let req: ReshareRequest = parse_body(&body)?;
    if req.holders.len() > crate::mpc::wire::MAX_PEERS {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!(
                "{} holders; at most {} are taken",
                req.holders.len(),
                crate::mpc::wire::MAX_PEERS
            ),
        ));
    }
    let holders = parse_peers(&req.holders)
        .map_err(|m| ApiError::bad_request("invalid_request", format!("holders: {m}")))?;
    reshare_with(state, key_id, Some(holders), req.authorizations).await
}

/// Runs a refresh (`holders` none) or reshare of `key_id` from this node.
async fn reshare_with(
    state: ApiState,
    key_id: String,
    holders: Option<Vec<libp2p::PeerId>>,
    authorizations: Vec<Authorization>,
) -> Result<Json<KeyInfo>, ApiError> {
    check_authorization_count(&authorizations)?;
    if state.mpc.key(&key_id).is_none() {
        return Err(MpcError::UnknownKey(key_id).into());
    }
    let mpc = state.mpc.clone();
    let answer = tokio::spawn(
        async move { mpc.reshare_key(&key_id, holders, authorizations).await }.in_current_span(),
    )
    .await
    .map_err(|e| MpcError::Internal(format!("the reshare task failed: {e}")))??;
    Ok(Json(answer))
}

/// A request carries at most one authorization per client a policy may list.
fn check_authorization_count(authorizations: &[Authorization]) -> Result<(), ApiError> {
    let max = crate::mpc::policy::MAX_CLIENTS;
    if authorizations.len() > max {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!(
                "{} authorizations; at most {max} are taken",
                authorizations.len()
            ),
        ));
    }
    Ok(())
}

pub(super) async fn set_policy(
    State(state): State<ApiState>,
    Path(key_id): Path<String>,
    Limited(body): Limited<{ body::SET_POLICY }>,
) -> Result<Json<crate::mpc::policy_change::PolicyChangeResponse>, ApiError> {
    let req: PolicyRequest = parse_body(&body)?;
    check_authorization_count(&req.authorizations)?;
    if state.mpc.key(&key_id).is_none() {
        return Err(MpcError::UnknownKey(key_id).into());
    }
    let mpc = state.mpc.clone();
    let answer = tokio::spawn(
        async move {
            mpc.change_policy(&key_id, req.policy, req.authorizations)
                .await
        }
        .in_current_span(),
    )
    .await
    .map_err(|e| MpcError::Internal(format!("the policy change task failed: {e}")))??;
    Ok(Json(answer))
}
