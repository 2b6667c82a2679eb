//! `/v1/aggregations`: secure-sum tasks, client reports, and collecting the sum.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::body::{self, Limited};
use super::{ApiError, ApiState, parse_body};
use crate::mpc::aggregation::store::TaskInfo;
use crate::mpc::aggregation::{
    AggError, CollectResult, CreateTask, Report, ReportAccepted, TaskView,
};
use crate::mpc::parse_peers;

/// Body of `POST /v1/aggregations`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAggregationRequest {
    /// Peer ids; default: the cluster roster's members (without a roster: this node and
    /// every connected peer that speaks MPC).
    #[serde(default)]
    pub participants: Option<Vec<String>>,
    /// t: any t + 1 participants open the sum, any t learn nothing. Required for `raw`; a
    /// validated input is n of n (t = n − 1, the default).
    #[serde(default)]
    pub threshold: Option<u16>,
    /// Vector length L. Required for `raw`; a validated input's own (1, or the buckets).
    #[serde(default)]
    pub length: Option<u32>,
    /// What a report holds: `{"type": "raw"}` (the default), `{"type": "count"}`,
    /// `{"type": "sum", "bits": B}` or `{"type": "histogram", "buckets": N}`.
    #[serde(default)]
    pub input: crate::mpc::aggregation::validity::InputType,
    /// Field modulus; only 18446744069414584321 (prio's Field64) is supported.
    #[serde(default)]
    pub modulus: Option<u64>,
    /// Reports needed before the sum may be collected (with `clients`: distinct clients).
    pub min_reports: u64,
    /// Client Ed25519 public keys (hex) whose signed reports the task takes; none: any.
    #[serde(default)]
    pub clients: Vec<String>,
    /// Collector Ed25519 public keys (hex) that may open a batch; none: anyone.
    #[serde(default)]
    pub collectors: Vec<String>,
}

impl From<AggError> for ApiError {
    fn from(e: AggError) -> Self {
        let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError::new(status, e.code, e.message)
    }
}

fn task_failed(e: tokio::task::JoinError) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        format!("the aggregation task failed: {e}"),
    )
}

pub(super) async fn create(
    State(state): State<ApiState>,
    Limited(body): Limited<{ body::CREATE_AGGREGATION }>,
) -> Result<(StatusCode, Json<TaskInfo>), ApiError> {
    let req: CreateAggregationRequest = parse_body(&body)?;
    let participants = match req.participants {
        Some(list) => {
            parse_peers(&list).map_err(|m| ApiError::bad_request("invalid_request", m))?
        }
        None => state.mpc.default_participants().await?,
    };
    let request = CreateTask {
        participants,
        threshold: req.threshold,
        length: req.length,
        input: req.input,
        modulus: req.modulus,
        min_reports: req.min_reports,
        clients: req.clients,
        collectors: req.collectors,
    };
    // Sessions run in their own task so a client hanging up does not cut them short.
    let mpc = state.mpc.clone();
    let info = tokio::spawn(async move { mpc.create_aggregation(request).await }.in_current_span())
        .await
        .map_err(task_failed)??;
    Ok((StatusCode::CREATED, Json(info)))
}

/// `GET /v1/aggregations`: every task held here with its progress.
pub(super) async fn list(State(state): State<ApiState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "tasks": state.mpc.aggregation_tasks().await }))
}

pub(super) async fn get_task(
    State(state): State<ApiState>,
    Path(task_id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    Ok(Json(state.mpc.aggregation_task(&task_id).await?))
}

pub(super) async fn submit(
    State(state): State<ApiState>,
    Path(task_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<ReportAccepted>), ApiError> {
    // The task says how large its largest report is; an unknown task reads no body.
    let (participants, length) = state.mpc.task_shape(&task_id).inspect_err(|_| {
        state.mpc.count_report_outcome("unknown_task");
    })?;
    let limit = body::report(participants, length);
    let body = body::read(&headers, body, limit).await.inspect_err(|_| {
        state.mpc.count_report_outcome("invalid_report");
    })?;
    let report: Report = match parse_body(&body) {
        Ok(r) => r,
        Err(e) => {
            state.mpc.count_report_outcome("invalid_report");
            return Err(ApiError::bad_request("invalid_report", e.message));
        }
    };
    drop(body);
    let mpc = state.mpc.clone();
    let accepted =
        tokio::spawn(async move { mpc.submit_report(&task_id, report).await }.in_current_span())
            .await
            .map_err(task_failed)??;
    Ok((StatusCode::CREATED, Json(accepted)))
}

/// `POST /v1/aggregations/{id}/collect` body (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectRequest {
    /// The batch to open (default: see `TaskState::default_collect_batch`).
    #[serde(default)]
    pub batch: Option<u64>,
    /// A collector's signed authorization, for a task that names collectors.
    #[serde(default)]
    pub authorization: Option<crate::mpc::policy::Authorization>,
}

pub(super) async fn collect(
    State(state): State<ApiState>,
    Path(task_id): Path<String>,
    Limited(body): Limited<{ body::COLLECT }>,
) -> Result<Json<CollectResult>, ApiError> {
    let request: CollectRequest = if body.iter().all(u8::is_ascii_whitespace) {
        CollectRequest::default()
    } else {
        parse_body(&body)?
    };
    let mpc = state.mpc.clone();
    let result = tokio::spawn(
        async move {
            mpc.collect_aggregation(&task_id, request.batch, request.authorization)
                .await
        }
        .in_current_span(),
    )
    .await
    .map_err(task_failed)??;
    Ok(Json(result))
}
