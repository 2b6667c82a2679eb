//! The vault routes: `GET /v1/holder-keys`, `GET /v1/vault`, `GET /v1/vault/{name}/manifest`,
//! `PUT /v1/vault/{name}` (a streamed upload), `GET /v1/vault/{name}` (a streamed download
//! under K client approvals), `DELETE /v1/vault/{name}`.
//!
//! Upload and download bodies are framed: a 4-byte big-endian length, that many bytes of
//! JSON (the [`PutRequest`] or the [`GetHeader`]), then the sealed bytes.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiState, parse_body};
use crate::mpc::policy::Authorization;
use crate::mpc::vault::{PutRequest, core::check_name};

/// The largest JSON header of an upload.
pub const MAX_HEADER_BYTES: usize = 1 << 20;
/// The request header that carries a download's approvals: base64 (standard) of the JSON
/// [`GetRequest`].
pub const REQUEST_HEADER: &str = "p2p-mpc-vault-request";
/// The largest [`REQUEST_HEADER`] value.
const MAX_REQUEST_HEADER: usize = 64 * 1024;

/// What a download asks for.
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetRequest {
    pub file_id: String,
    /// The client's X25519 key for this request, hex: the shares are sealed to it.
    pub recipient: String,
    pub authorizations: Vec<Authorization>,
}

/// The body of `DELETE /v1/vault/{name}`.
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteRequest {
    pub file_id: String,
    pub authorizations: Vec<Authorization>,
}

fn checked(name: &str) -> Result<(), ApiError> {
    check_name(name).map_err(|e| ApiError::bad_request("invalid_name", e))
}

/// The query of `GET /v1/holder-keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldersQuery {
    /// Peer ids, comma-separated (default: the roster's members).
    pub holders: Option<String>,
}

/// `GET /v1/holder-keys`: the holders' HPKE keys, each signed by its holder.
pub(super) async fn holder_keys(
    State(state): State<ApiState>,
    Query(query): Query<HoldersQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let holders = query
        .holders
        .map(|h| h.split(',').map(|p| p.trim().to_string()).collect());
    let keys = state.mpc.vault_holder_keys(holders).await?;
    Ok(Json(json!({ "holders": keys })))
}

/// `GET /v1/vault`.
pub(super) async fn list(State(state): State<ApiState>) -> Json<serde_json::Value> {
    Json(json!({ "files": state.mpc.vault_files() }))
}

/// `GET /v1/vault/{name}/manifest`.
pub(super) async fn manifest(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    checked(&name)?;
    let (file_id, manifest) = state.mpc.vault_manifest(&name)?;
    Ok(Json(json!({ "file_id": file_id, "manifest": manifest })))
}

/// Reads the framed JSON header off the front of a body; the rest of the body follows.
async fn split_header(
    body: Body,
) -> Result<
    (
        Vec<u8>,
        impl futures::Stream<Item = Result<Bytes, String>> + Unpin + Send,
    ),
    ApiError,
> {
    let mut stream = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    let bad = |m: String| ApiError::bad_request("invalid_upload", m);
    let mut need = 4usize;
    let mut header_len = None;
    while buf.len() < need {
        match stream.next().await {
            Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
            Some(Err(e)) => return Err(bad(format!("the upload broke off: {e}"))),
            None => {
                return Err(bad(
                    "the upload ended inside its header (a 4-byte length, then JSON)".into(),
                ));
            }
        }
        if header_len.is_none() && buf.len() >= 4 {
            let len = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
            if len == 0 || len > MAX_HEADER_BYTES {
                return Err(bad(format!(
                    "the upload's header is {len} bytes; 1 to {MAX_HEADER_BYTES} are allowed"
                )));
            }
            header_len = Some(len);
            need = 4 + len;
        }
    }
    let rest = buf.split_off(need);
    let header = buf.split_off(4);
    let first = futures::stream::iter((!rest.is_empty()).then(|| Ok(Bytes::from(rest))));
    let tail = stream.map(|r| r.map_err(|e| e.to_string()));
    Ok((header, Box::pin(first.chain(tail))))
}

/// `PUT /v1/vault/{name}`: a framed upload.
pub(super) async fn put(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    body: Body,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    checked(&name)?;
    let (header, rest) = split_header(body).await?;
    let request: PutRequest = serde_json::from_slice(&header).map_err(|e| {
        ApiError::bad_request("invalid_upload", format!("the upload's header: {e}"))
    })?;
    let mpc = state.mpc.clone();
    let result = mpc.vault_put(&name, request, rest).await?;
    Ok((StatusCode::CREATED, Json(json!(result))))
}

/// `GET /v1/vault/{name}`: a framed download, with the approvals in [`REQUEST_HEADER`].
pub(super) async fn get(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    use base64::Engine as _;
    checked(&name)?;
    let raw = headers.get(REQUEST_HEADER).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_request",
            format!(
                "a download needs the `{REQUEST_HEADER}` header (base64 of {{\"file_id\", \"recipient\", \"authorizations\"}}); `p2p-mpc vault get` makes it. The manifest is at GET /v1/vault/{name}/manifest"
            ),
        )
    })?;
    if raw.len() > MAX_REQUEST_HEADER {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("`{REQUEST_HEADER}` is longer than {MAX_REQUEST_HEADER} bytes"),
        ));
    }
    let json = base64::engine::general_purpose::STANDARD
        .decode(raw.as_bytes())
        .map_err(|e| {
            ApiError::bad_request("invalid_request", format!("`{REQUEST_HEADER}`: {e}"))
        })?;
    let request: GetRequest = parse_body(&Bytes::from(json))?;
    let (header, data) = state
        .mpc
        .vault_get(
            &name,
            &request.file_id,
            &request.recipient,
            request.authorizations,
        )
        .await?;
    let header = serde_json::to_vec(&header).expect("a header encodes");
    let mut frame = (header.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&header);
    let first = futures::stream::iter([Ok::<Bytes, std::io::Error>(Bytes::from(frame))]);
    let rest = futures::stream::unfold(data, |mut rx| async move {
        let item = rx.recv().await?;
        Some((item.map_err(std::io::Error::other), rx))
    });
    let mut resp = Body::from_stream(first.chain(rest)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    Ok(resp)
}

/// `DELETE /v1/vault/{name}`.
pub(super) async fn delete(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    checked(&name)?;
    let body = super::body::read(&headers, body, super::body::VAULT_DELETE).await?;
    let request: DeleteRequest = parse_body(&body)?;
    let result = state
        .mpc
        .vault_delete(&name, &request.file_id, request.authorizations)
        .await?;
    Ok(Json(json!(result)))
}
