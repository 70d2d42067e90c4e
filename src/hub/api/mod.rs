//! The hub's HTTP JSON API. Every `/api/v1` route (but the page's login) needs a credential
//! with a role that may use it, checked by one layer ([`access::authorize`]) before any handler
//! or body parsing runs; `/healthz` and `/metrics` are open like any probe or scrape target, and
//! so are the status page's static files ([`crate::hub::page`]). Times are RFC 3339; errors are
//! `{"error": "...", "code"?: "..."}` with a fitting status.
//!
//! Files: [`access`] (roles, API tokens, page sessions and CSRF), [`tokens`] (registration
//! tokens), [`install`] (the printed helm command), [`registrations`] (install progress per
//! token, removed gateways), [`gateways`] (gateways, revocation, health check),
//! [`applications`] (relayed state and requests forwarded to gateways, terminate, rollback),
//! [`appsets`] (ApplicationSets linked to their applications, and projects), [`wait`]
//! (deployment verification of one or many applications), [`selector`] (list and feed
//! filters), [`version`] (desired gateway
//! version), [`events`] (the change feed), [`timeline`] (state timelines).

pub mod access;
pub mod applications;
pub mod appsets;
pub mod events;
pub mod gateways;
pub mod install;
pub mod registrations;
pub mod selector;
pub mod timeline;
pub mod tokens;
pub mod version;
pub mod wait;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
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
    /// Whether the HTTP listener serves TLS: page cookies are then `Secure`.
    pub secure_cookies: bool,
    /// How long a status-page login lasts.
    pub session_ttl: std::time::Duration,
    /// Cancelled when the hub shuts down: long-lived responses (the change feed) end then.
    pub shutdown: tokio_util::sync::CancellationToken,
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

    /// The status it answers with.
    pub fn status(&self) -> StatusCode {
        self.0
    }

    /// Its message.
    pub fn message(&self) -> String {
        self.1
            .get("error")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
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
        .route("/api/v1/applicationsets", get(appsets::list_all))
        .route("/api/v1/gateways/{id}/applicationsets", get(appsets::list_gateway))
        .route(
            "/api/v1/gateways/{id}/applicationsets/{namespace}/{name}",
            get(appsets::get_appset),
        )
        .route("/api/v1/projects", get(appsets::list_all_projects))
        .route("/api/v1/gateways/{id}/projects", get(appsets::list_gateway_projects))
        .route("/api/v1/gateways/{id}/projects/{name}", get(appsets::get_project))
        .route("/api/v1/gateways/{id}/applications", get(applications::list_gateway))
        .route(APP, get(applications::get_app))
        .route(&format!("{APP}/sync"), post(applications::sync))
        .route(&format!("{APP}/refresh"), post(applications::refresh))
        .route(&format!("{APP}/operation"), delete(applications::terminate))
        .route(&format!("{APP}/rollback"), post(applications::rollback))
        .route(&format!("{APP}/resource-tree"), get(applications::resource_tree))
        .route(
            &format!("{APP}/managed-resources"),
            get(applications::managed_resources),
        )
        .route(&format!("{APP}/events"), get(applications::events))
        .route(&format!("{APP}/logs"), get(applications::logs))
        .route(&format!("{APP}/wait"), post(wait::wait_one))
        .route("/api/v1/wait", post(wait::wait_many))
        .route("/api/v1/desired-version", version::routes())
        .route(
            "/api/v1/api-tokens",
            get(access::list_api_tokens).post(access::create_api_token),
        )
        .route("/api/v1/api-tokens/{id}", delete(access::delete_api_token))
        .route("/api/v1/session", get(access::session))
        .route("/api/v1/logout", post(access::logout))
        .route("/api/v1/events", get(events::events))
        .route("/api/v1/gateways/{id}/timeline", get(timeline::gateway_timeline))
        .route(&format!("{APP}/timeline"), get(timeline::app_timeline))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), access::authorize));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route("/api/v1/login", post(access::login))
        .merge(api)
        .merge(crate::hub::page::routes())
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// Headers on every answer: nothing is sniffed into HTML, framed by another site, or told where
/// it came from; scripts and styles load only from the hub itself.
async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(crate::hub::page::CONTENT_SECURITY_POLICY),
    );
    resp
}

/// Readiness: 200 while the hub's database answers (with replicas: while this replica's lease is
/// current), 503 with the reason otherwise — a load balancer then sends gateways and callers to
/// the other replicas. Unauthenticated like `/healthz`, and free of secrets.
async fn ready(State(state): State<Arc<ApiState>>) -> Response {
    match state.hub.ready().await {
        Ok(()) => match &state.hub.cluster {
            Some(c) => (StatusCode::OK, format!("ready: replica {}\n", c.replica_id)).into_response(),
            None => (StatusCode::OK, "ready\n").into_response(),
        },
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")).into_response(),
    }
}

/// Prometheus metrics; unauthenticated like any scrape target, and free of secrets.
async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    state.hub.metrics.connected.set(state.hub.sessions.len() as i64);
    match state.hub.store.gateways().await {
        Ok(g) => state.hub.fleet.set_gateways(g),
        Err(e) => tracing::warn!(error = %e, "cannot read the gateways for the fleet metrics"),
    }
    crate::telemetry::encode(&state.registry)
}
