//! The hub's HTTP JSON API. Every `/api/v1` route needs the admin bearer token, checked by one
//! layer ([`require_admin`]) before any handler or body parsing runs; `/healthz` and `/metrics`
//! are open like any probe or scrape target. Times are RFC 3339; errors are
//! `{"error": "...", "code"?: "..."}` with a fitting status.
//!
//! Files: [`tokens`] (registration tokens), [`install`] (the printed helm command),
//! [`registrations`] (install progress per token, removed gateways), [`gateways`] (gateways,
//! revocation, health check),
//! [`applications`] (relayed state and requests forwarded to gateways), [`wait`]
//! (deployment verification), [`selector`] (list filters), [`version`] (desired gateway
//! version).

pub mod applications;
pub mod gateways;
pub mod install;
pub mod registrations;
pub mod selector;
pub mod tokens;
pub mod version;
pub mod wait;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::state::HubState;
use crate::secret::Secret;

/// What the API needs besides the shared state.
pub struct ApiState {
    /// Shared hub state.
    pub hub: Arc<HubState>,
    /// The admin token.
    pub admin_token: Secret,
    /// The gRPC URL gateways should use, for the helm command.
    pub public_url: String,
    /// True when the hub serves gRPC without TLS (TLS ends at a proxy).
    pub plaintext: bool,
    /// Chart reference for the helm command.
    pub helm_chart: String,
    /// Metrics registry.
    pub registry: prometheus_client::registry::Registry,
}

/// An API error: a status and a JSON body with at least `error`.
#[derive(Debug)]
pub struct ApiError(StatusCode, serde_json::Value);

impl ApiError {
    /// An error with a message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self(status, serde_json::json!({ "error": message.into() }))
    }

    /// An error with a prepared body.
    pub fn with_body(status: StatusCode, body: serde_json::Value) -> Self {
        Self(status, body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl From<super::store::StoreError> for ApiError {
    fn from(e: super::store::StoreError) -> Self {
        tracing::error!(error = %e, "hub API storage error");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "hub storage error")
    }
}

/// A handler's result.
pub type ApiResult<T> = Result<T, ApiError>;

/// Unix seconds as RFC 3339.
pub fn rfc3339(secs: Option<i64>) -> Option<String> {
    secs.and_then(|s| jiff::Timestamp::from_second(s).ok())
        .map(|t| t.to_string())
}

/// Checks the admin bearer token.
fn authorize(state: &ApiState, headers: &HeaderMap) -> ApiResult<()> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(t) if crate::util::constant_time_eq(t.as_bytes(), state.admin_token.expose().as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid admin token")),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing admin token: send Authorization: Bearer <token from the hub's admin-token file>",
        )),
    }
}

/// The authorization layer of every `/api/v1` route: the admin token, before anything else.
pub async fn require_admin(State(state): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    match authorize(&state, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

/// Builds the router.
pub fn router(state: Arc<ApiState>) -> Router {
    const APP: &str = "/api/v1/gateways/{id}/applications/{namespace}/{name}";
    let api = Router::new()
        .route(
            "/api/v1/registration-tokens",
            get(tokens::list_tokens).post(tokens::create_token),
        )
        .route(
            "/api/v1/registration-tokens/{id}",
            get(registrations::token_status).delete(tokens::delete_token),
        )
        .route("/api/v1/gateways", get(gateways::list_gateways))
        .route(
            "/api/v1/gateways/{id}",
            get(gateways::get_gateway).delete(gateways::delete_gateway),
        )
        .route("/api/v1/gateways/{id}/health-check", post(gateways::health_check))
        .route("/api/v1/gateways/{id}/clusters", get(applications::clusters))
        .route("/api/v1/applications", get(applications::list_all))
        .route("/api/v1/gateways/{id}/applications", get(applications::list_gateway))
        .route(APP, get(applications::get_app))
        .route(&format!("{APP}/sync"), post(applications::sync))
        .route(&format!("{APP}/refresh"), post(applications::refresh))
        .route(&format!("{APP}/resource-tree"), get(applications::resource_tree))
        .route(
            &format!("{APP}/managed-resources"),
            get(applications::managed_resources),
        )
        .route(&format!("{APP}/events"), get(applications::events))
        .route(&format!("{APP}/logs"), get(applications::logs))
        .route(&format!("{APP}/wait"), post(wait::wait))
        .route("/api/v1/desired-version", version::routes())
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), require_admin));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .merge(api)
        .with_state(state)
}

/// Prometheus metrics; unauthenticated like any scrape target, and free of secrets.
async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    state.hub.metrics.connected.set(state.hub.sessions.len() as i64);
    crate::telemetry::encode(&state.registry)
}
