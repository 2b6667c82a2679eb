//! The HTTP API (axum): status, peers, topic messages, keys and aggregations under `/v1`.
//!
//! JSON in and out; every error is `{"error": "...", "code": "..."}` with a fitting status.
//! With a token configured, every `/v1` request needs `Authorization: Bearer <token>`.

pub mod activity;
pub mod aggregations;
pub mod body;
pub mod client;
pub mod dashboard;
pub mod keys;
pub mod messages;
pub mod transfer;
pub mod vault;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use subtle::ConstantTimeEq;
use tracing::Instrument;

use crate::config::ApiToken;
use crate::metrics::NodeMetrics;
use crate::network::{NetworkClient, NetworkError, PublishError};
use crate::values::parse_topic;
use messages::MessageLog;

/// Everything the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub network: NetworkClient,
    pub messages: Arc<MessageLog>,
    pub metrics: Arc<NodeMetrics>,
    pub token: Option<ApiToken>,
    pub max_message_size: usize,
    /// Content rules of the joined topics.
    pub topic_rules: crate::network::topic_rules::TopicRules,
    pub mpc: crate::mpc::MpcEngine,
    /// One permit per request being served (`api_max_concurrent_requests`).
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// Counts per interval over the last minutes (`GET /v1/activity`).
    pub activity: Arc<activity::Activity>,
    /// When the node started (`uptime_seconds` of `GET /v1/status`).
    pub started: Instant,
}

/// An API error: HTTP status, a stable machine-readable code and a message for people.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// For `unauthorized`: the policy rule that refused the request.
    pub rule: Option<&'static str>,
    /// For `unauthorized`: the key holders that refused it (empty: this node did).
    pub refused_by: Vec<String>,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            rule: None,
            refused_by: Vec::new(),
        }
    }

    /// Names the policy rule that refused the request.
    pub(crate) fn with_rule(mut self, rule: &'static str) -> Self {
        self.rule = Some(rule);
        self
    }

    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.message, "code": self.code});
        if let Some(rule) = self.rule {
            body["rule"] = json!(rule);
        }
        if !self.refused_by.is_empty() {
            body["refused_by"] = json!(self.refused_by);
        }
        (self.status, Json(body)).into_response()
    }
}

impl From<NetworkError> for ApiError {
    fn from(e: NetworkError) -> Self {
        match &e {
            NetworkError::Publish(PublishError::TooLarge { .. }) => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "message_too_large",
                e.to_string(),
            ),
            NetworkError::Publish(PublishError::NoPeers(_)) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "no_peers", e.to_string())
            }
            NetworkError::Publish(PublishError::Duplicate) => {
                Self::new(StatusCode::CONFLICT, "duplicate", e.to_string())
            }
            NetworkError::Publish(PublishError::BreaksRule { .. }) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "breaks_topic_rule",
                e.to_string(),
            ),
            NetworkError::Publish(PublishError::Other(_)) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "publish_failed",
                e.to_string(),
            ),
            NetworkError::Stopped | NetworkError::Timeout(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "network_unavailable",
                e.to_string(),
            ),
        }
    }
}

impl From<crate::mpc::transport::TransportError> for ApiError {
    fn from(e: crate::mpc::transport::TransportError) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "network_unavailable",
            e.to_string(),
        )
    }
}

/// Parses a JSON request body, with a message that says what is wrong with it.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_body",
            "the request body is empty; expected a JSON object",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("invalid JSON body: {e}")))
}

/// The route label of a request, passed from the routed layer to the outer one.
#[derive(Clone)]
struct RouteLabel(String);

/// Builds the API router.
pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/peers", get(peers))
        .route("/v1/sessions", get(activity::sessions))
        .route("/v1/activity", get(activity::activity))
        .route(
            "/v1/peers/{peer_id}/transfer",
            axum::routing::post(transfer::transfer),
        )
        .route("/v1/topics", get(topics))
        .route(
            "/v1/topics/{topic}/messages",
            get(topic_messages).post(publish),
        )
        .route("/v1/keys", get(keys::list).post(keys::create))
        .route("/v1/keys/{key_id}", get(keys::get_key))
        .route("/v1/keys/{key_id}/sign", axum::routing::post(keys::sign))
        .route(
            "/v1/keys/{key_id}/policy",
            axum::routing::post(keys::set_policy),
        )
        .route(
            "/v1/keys/{key_id}/refresh",
            axum::routing::post(keys::refresh),
        )
        .route(
            "/v1/keys/{key_id}/reshare",
            axum::routing::post(keys::reshare),
        )
        .route("/v1/holder-keys", get(vault::holder_keys))
        .route("/v1/vault", get(vault::list))
        .route(
            "/v1/vault/{name}",
            get(vault::get).put(vault::put).delete(vault::delete),
        )
        .route("/v1/vault/{name}/manifest", get(vault::manifest))
        .route(
            "/v1/aggregations",
            get(aggregations::list).post(aggregations::create),
        )
        .route("/v1/aggregations/{task_id}", get(aggregations::get_task))
        .route(
            "/v1/aggregations/{task_id}/reports",
            axum::routing::post(aggregations::submit),
        )
        .route(
            "/v1/aggregations/{task_id}/collect",
            axum::routing::post(aggregations::collect),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token))
        .route_layer(middleware::from_fn(label_route));
    let dashboard = Router::new()
        .route("/", get(dashboard::index))
        .route("/dashboard.js", get(dashboard::script))
        .route("/dashboard.css", get(dashboard::style))
        .route_layer(middleware::from_fn(label_route));
    v1.merge(dashboard)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body::NONE))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limit_in_flight,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

async fn label_route(req: Request, next: Next) -> Response {
    let label = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let mut resp = next.run(req).await;
    if let Some(label) = label {
        resp.extensions_mut().insert(RouteLabel(label));
    }
    resp
}

/// Serves at most `api_max_concurrent_requests` requests at once (a permit is held until the
/// response is made, body reading included); one more is answered 503 `overloaded` at once,
/// with `Retry-After: 1`, rather than queued.
async fn limit_in_flight(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let Ok(_permit) = state.in_flight.clone().try_acquire_owned() else {
        let mut resp = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "this node serves as many API requests at once as it takes (api_max_concurrent_requests); retry shortly",
        )
        .into_response();
        resp.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("1"),
        );
        return resp;
    };
    next.run(req).await
}

/// Counts and times every request, inside a span.
async fn observe(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let method = req.method().as_str().to_string();
    let span = tracing::info_span!("http_request", method = %method, path = %req.uri().path(), status = tracing::field::Empty);
    let start = Instant::now();
    let resp = next.run(req).instrument(span.clone()).await;
    let route = resp
        .extensions()
        .get::<RouteLabel>()
        .map(|r| r.0.clone())
        .unwrap_or_else(|| "unmatched".to_string());
    let status = resp.status().as_u16().to_string();
    span.record("status", resp.status().as_u16());
    let labels = [route.as_str(), method.as_str(), status.as_str()];
    state
        .metrics
        .requests_total
        .with_label_values(&labels)
        .inc();
    state
        .metrics
        .request_duration_seconds
        .with_label_values(&labels)
        .observe(start.elapsed().as_secs_f64());
    resp
}

async fn require_token(
    State(state): State<ApiState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let Some(token) = &state.token else {
        // No token: the API is for whoever can reach it, which is meant to be this machine.
        // A web page in a browser of this machine must not act for that page's site.
        if let Err(e) = same_origin_by_address(&headers) {
            return e.into_response();
        }
        return next.run(req).await;
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(p) if bool::from(p.as_bytes().ct_eq(token.expose().as_bytes())) => next.run(req).await,
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the bearer token is not valid",
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this API requires `Authorization: Bearer <token>` (see --api-token-file)",
        )
        .into_response(),
    }
}

/// Without a token, a request must name the node by address (an IP literal or `localhost`
/// in `Host`: a DNS name may be rebound to this address by a web site) and, when a browser
/// sent it (`Origin`), come from a page of the node itself: a site the user visits cannot
/// have the browser sign, publish or read through an open API.
fn same_origin_by_address(headers: &HeaderMap) -> Result<(), ApiError> {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let by_address = name.eq_ignore_ascii_case("localhost")
        || name.parse::<std::net::IpAddr>().is_ok()
        || name.is_empty();
    if !by_address {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "host_not_allowed",
            format!(
                "without an API token (--api-token-file) this API answers only requests addressed to an IP address or localhost, not `{}`",
                crate::log_limit::echo(name)
            ),
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let own = [format!("http://{host}"), format!("https://{host}")];
        if !own.iter().any(|o| o == origin) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "cross_origin",
                "without an API token (--api-token-file) this API does not answer requests of web pages from other origins",
            ));
        }
    }
    Ok(())
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route {} {}", req.method(), req.uri().path()),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

/// `GET /v1/status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatusResponse {
    pub peer_id: String,
    pub listen_addrs: Vec<String>,
    pub connected_peers: usize,
    pub topics: Vec<String>,
    pub version: String,
    /// Seconds since the node started.
    #[serde(default)]
    pub uptime_seconds: u64,
    /// The cluster roster; `null` when the node has none (it then admits every peer).
    pub roster: Option<crate::roster::RosterStatus>,
    /// The content rules of joined topics that have one.
    #[serde(default)]
    pub topic_rules: Vec<crate::network::topic_rules::TopicView>,
}

async fn status(State(state): State<ApiState>) -> Result<Json<StatusResponse>, ApiError> {
    let s = state.network.status().await?;
    Ok(Json(StatusResponse {
        peer_id: s.peer_id,
        listen_addrs: s.listen_addrs,
        connected_peers: s.connected_peers,
        topic_rules: s
            .topics
            .iter()
            .filter(|t| state.topic_rules.get(t).is_some())
            .map(|t| state.topic_rules.view(t))
            .collect(),
        topics: s.topics,
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_seconds: state.started.elapsed().as_secs(),
        roster: state.mpc.roster().status(),
    }))
}

/// `GET /v1/topics`: every joined topic with its content rule.
async fn topics(State(state): State<ApiState>) -> Result<Json<serde_json::Value>, ApiError> {
    let s = state.network.status().await?;
    let views: Vec<_> = s.topics.iter().map(|t| state.topic_rules.view(t)).collect();
    Ok(Json(json!({ "topics": views })))
}

async fn peers(State(state): State<ApiState>) -> Result<Json<serde_json::Value>, ApiError> {
    let peers = state.network.peers().await?;
    Ok(Json(json!({ "peers": peers })))
}

/// Body of `POST /v1/topics/{topic}/messages`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// UTF-8 text to publish.
    #[serde(default)]
    pub data: Option<String>,
    /// Bytes to publish, in standard base64 (for `cbor` and `bytes` topics); instead of `data`.
    #[serde(default)]
    pub data_base64: Option<String>,
}

/// Answer of `POST /v1/topics/{topic}/messages`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PublishResponse {
    pub message_id: String,
}

fn check_topic(topic: &str) -> Result<(), ApiError> {
    parse_topic(topic)
        .map(|_| ())
        .map_err(|m| ApiError::bad_request("invalid_topic", m))
}

async fn publish(
    State(state): State<ApiState>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<PublishResponse>), ApiError> {
    check_topic(&topic)?;
    let body = body::read(&headers, body, body::publish(state.max_message_size)).await?;
    let req: PublishRequest = parse_body(&body)?;
    let data = match (req.data, req.data_base64) {
        (Some(text), None) => text.into_bytes(),
        (None, Some(b64)) => {
            use base64::Engine as _;
            // Nothing longer than a message is decoded.
            let estimate = base64::decoded_len_estimate(b64.len());
            if estimate > state.max_message_size + 3 {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "message_too_large",
                    format!(
                        "`data_base64` holds about {estimate} bytes, over the limit of {} bytes (--max-message-size)",
                        state.max_message_size
                    ),
                ));
            }
            base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| {
                    ApiError::bad_request(
                        "invalid_body",
                        format!("`data_base64` is not standard base64: {e}"),
                    )
                })?
        }
        _ => {
            return Err(ApiError::bad_request(
                "invalid_body",
                "give exactly one of `data` (text) and `data_base64` (bytes)",
            ));
        }
    };
    if data.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_body",
            "the message must not be empty",
        ));
    }
    let message_id = state.network.publish(&topic, data).await?;
    Ok((StatusCode::CREATED, Json(PublishResponse { message_id })))
}

async fn topic_messages(
    State(state): State<ApiState>,
    Path(topic): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_topic(&topic)?;
    Ok(Json(json!({
        "topic": topic,
        "messages": state.messages.recent(&topic),
    })))
}

/// Serves the API on an already bound listener until `shutdown` resolves: over HTTPS with
/// `tls`, else plain HTTP.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match tls {
        Some(config) => {
            axum::serve(
                crate::tls::TlsListener::new(listener, config)?,
                router(state),
            )
            .with_graceful_shutdown(shutdown)
            .await
        }
        None => {
            axum::serve(listener, router(state))
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}
