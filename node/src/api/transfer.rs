//! `POST /v1/peers/{peer_id}/transfer`: a transfer test to a connected peer.

use axum::Json;
use axum::extract::{Path, State};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::body::{self, Limited};
use super::{ApiError, ApiState, parse_body};
use crate::mpc::transfer::TransferResult;

/// Body of `POST /v1/peers/{peer_id}/transfer`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    /// How many throwaway bytes to send (1 to 1 GiB).
    pub bytes: u64,
}

pub(super) async fn transfer(
    State(state): State<ApiState>,
    Path(peer_id): Path<String>,
    Limited(body): Limited<{ body::TRANSFER }>,
) -> Result<Json<TransferResult>, ApiError> {
    let peer: PeerId = peer_id.parse().map_err(|e| {
        ApiError::bad_request(
            "invalid_peer_id",
            format!("`{peer_id}` is not a peer id: {e}"),
        )
    })?;
    let req: TransferRequest = parse_body(&body)?;
    let mpc = state.mpc.clone();
    let result =
        tokio::spawn(async move { mpc.transfer_test(peer, req.bytes).await }.in_current_span())
            .await
            .map_err(|e| {
                ApiError::new(
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("the transfer task failed: {e}"),
                )
            })??;
    Ok(Json(result))
}
