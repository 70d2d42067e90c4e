//! The hub's HTTP JSON API (admin bearer token): registration tokens and gateways. Times are
//! RFC 3339; errors are `{"error": "..."}` with a fitting status.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::grpc::HubState;
use super::sessions::close_with;
use super::store::{GatewayRecord, TokenRecord};
use crate::proto::{hub_message, rejected};
use crate::secret::Secret;
use crate::tunnel::wire::ErrorCode;

/// The default and largest registration token lifetimes.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Tokens may live at most a day.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

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
    /// Last health check result per gateway.
    pub health: std::sync::Mutex<std::collections::HashMap<String, serde_json::Value>>,
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

type ApiResult<T> = Result<T, ApiError>;

fn rfc3339(secs: Option<i64>) -> Option<String> {
    secs.and_then(|s| jiff::Timestamp::from_second(s).ok())
        .map(|t| t.to_string())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks the admin bearer token.
pub fn authorize(state: &ApiState, headers: &HeaderMap) -> ApiResult<()> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(t) if constant_time_eq(t.as_bytes(), state.admin_token.expose().as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "invalid admin token")),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing admin token: send Authorization: Bearer <token from the hub's admin-token file>",
        )),
    }
}

/// Builds the router.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/api/v1/registration-tokens", get(list_tokens).post(create_token))
        .route("/api/v1/registration-tokens/{id}", axum::routing::delete(delete_token))
        .route("/api/v1/gateways", get(list_gateways))
        .route("/api/v1/gateways/{id}", get(get_gateway).delete(delete_gateway))
        .merge(super::apps::routes())
        .route("/api/v1/desired-version", super::version::routes())
        .with_state(state)
}

/// Prometheus metrics; unauthenticated like any scrape target, and free of secrets.
async fn metrics(State(state): State<Arc<ApiState>>) -> Response {
    state.hub.metrics.connected.set(state.hub.sessions.len() as i64);
    crate::admin::encode(&state.registry)
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateToken {
    ttl_seconds: Option<u64>,
    name: Option<String>,
    environments: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CreatedToken {
    id: String,
    token: String,
    expires_at: String,
    ca_fingerprint: String,
    helm_command: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenView {
    #[serde(flatten)]
    record: TokenRecord,
    created_at: Option<String>,
    expires_at: Option<String>,
    used_at: Option<String>,
    state: &'static str,
}

/// Quotes a value for a POSIX shell.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/=@,{}+".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn helm_command(state: &ApiState, token: &str, fingerprint: &str, name: &str, envs: &[String]) -> String {
    let mut sets = vec![format!("gateway.hub.serverGrpcUrl={}", state.public_url)];
    if state.plaintext {
        sets.push("gateway.hub.plaintext=true".into());
    } else {
        sets.push(format!("registration.caFingerprint={fingerprint}"));
    }
    sets.push(format!("registration.token={token}"));
    if !name.is_empty() {
        sets.push(format!("registration.name={name}"));
    }
    if !envs.is_empty() {
        sets.push(format!("registration.environments={{{}}}", envs.join(",")));
    }
    let mut cmd = format!(
        "helm upgrade --install argocd-gateway {} --namespace argocd",
        shell_quote(&state.helm_chart)
    );
    for s in sets {
        cmd.push_str(" --set ");
        cmd.push_str(&shell_quote(&s));
    }
    cmd
}

async fn create_token(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Option<Json<CreateToken>>,
) -> ApiResult<Response> {
    authorize(&state, &headers)?;
    let req = body.map(|Json(b)| b).unwrap_or_default();
    let ttl = Duration::from_secs(req.ttl_seconds.unwrap_or(DEFAULT_TOKEN_TTL.as_secs()));
    if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "ttlSeconds must be between 1 and {} (24 hours)",
                MAX_TOKEN_TTL.as_secs()
            ),
        ));
    }
    let name = req.name.unwrap_or_default().trim().to_owned();
    let environments: Vec<String> = req
        .environments
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.trim().to_owned())
        .filter(|e| !e.is_empty())
        .collect();
    if environments.iter().any(|e| e.contains(',')) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "environment names cannot contain commas",
        ));
    }
    // 96 bits of id and 256 bits of secret; only the secret's hash is stored.
    let id = super::pki::random_token(12);
    let secret = super::pki::random_token(32);
    let token = format!("{id}.{secret}");
    let (_, hash) =
        super::grpc::token_parts(&token).ok_or(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "token"))?;
    let now = jiff::Timestamp::now().as_second();
    let expires_at = now + ttl.as_secs() as i64;
    let record = TokenRecord {
        id: id.clone(),
        name: name.clone(),
        environments: environments.clone(),
        created_at: now,
        expires_at,
        used_at: None,
        gateway_id: None,
    };
    state.hub.store.insert_token(record, hash).await?;
    let fingerprint = state.hub.ca.fingerprint().to_string();
    tracing::info!(token_id = %id, name = %name, expires_at = ?rfc3339(Some(expires_at)), "created a registration token");
    let created = CreatedToken {
        helm_command: helm_command(&state, &token, &fingerprint, &name, &environments),
        id,
        token,
        expires_at: rfc3339(Some(expires_at)).unwrap_or_default(),
        ca_fingerprint: fingerprint,
    };
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

async fn list_tokens(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> ApiResult<Json<serde_json::Value>> {
    authorize(&state, &headers)?;
    let now = jiff::Timestamp::now().as_second();
    let items: Vec<TokenView> = state
        .hub
        .store
        .list_tokens()
        .await?
        .into_iter()
        .map(|r| TokenView {
            created_at: rfc3339(Some(r.created_at)),
            expires_at: rfc3339(Some(r.expires_at)),
            used_at: rfc3339(r.used_at),
            state: if r.used_at.is_some() {
                "used"
            } else if r.expires_at <= now {
                "expired"
            } else {
                "active"
            },
            record: r,
        })
        .collect();
    Ok(Json(serde_json::json!({ "items": items })))
}

async fn delete_token(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    authorize(&state, &headers)?;
    if state.hub.store.delete_token(id.clone()).await? {
        tracing::info!(token_id = %id, "revoked a registration token");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no registration token {id}"),
        ))
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct GatewayView {
    id: String,
    name: String,
    environments: Vec<String>,
    argocd_web_url: String,
    connected: bool,
    last_seen_at: Option<String>,
    version: String,
    protocol_version: u32,
    certificate_expires_at: Option<String>,
    registered_at: Option<String>,
    application_count: usize,
    health: Option<serde_json::Value>,
}

fn gateway_view(state: &ApiState, g: GatewayRecord) -> GatewayView {
    let live = state.hub.sessions.get(&g.id);
    let last_seen = live
        .as_ref()
        .map(|s| s.last_seen.load(std::sync::atomic::Ordering::Relaxed))
        .or(g.last_seen_at);
    GatewayView {
        connected: live.is_some(),
        last_seen_at: rfc3339(last_seen),
        version: live.as_ref().map(|s| s.version.clone()).unwrap_or(g.version),
        protocol_version: live.as_ref().map(|s| s.protocol_version).unwrap_or(g.protocol_version),
        certificate_expires_at: rfc3339(g.certificate_expires_at),
        registered_at: rfc3339(Some(g.created_at)),
        application_count: state.hub.entities.with(&g.id, |e| e.map(|e| e.apps.len()).unwrap_or(0)),
        health: state.health.lock().ok().and_then(|h| h.get(&g.id).cloned()),
        id: g.id,
        name: g.name,
        environments: g.environments,
        argocd_web_url: g.argocd_web_url,
    }
}

async fn list_gateways(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> ApiResult<Json<serde_json::Value>> {
    authorize(&state, &headers)?;
    let items: Vec<GatewayView> = state
        .hub
        .store
        .gateways()
        .await?
        .into_iter()
        .map(|g| gateway_view(&state, g))
        .collect();
    Ok(Json(serde_json::json!({ "items": items })))
}

async fn get_gateway(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<GatewayView>> {
    authorize(&state, &headers)?;
    match state.hub.store.gateway(id.clone()).await? {
        Some(g) => Ok(Json(gateway_view(&state, g))),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, format!("no gateway {id}"))),
    }
}

async fn delete_gateway(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    authorize(&state, &headers)?;
    if !state.hub.store.delete_gateway(id.clone()).await? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no gateway {id}")));
    }
    state.hub.entities.forget(&id);
    if let Some(session) = state.hub.sessions.take(&id) {
        let text = format!("gateway {id} was deleted at the hub; register again with a new token");
        close_with(
            &session,
            hub_message::Body::Rejected(crate::proto::Rejected {
                reason: rejected::Reason::Revoked as i32,
                message: text.clone(),
            }),
            ErrorCode::Revoked.status(tonic::Code::PermissionDenied, text),
        )
        .await;
    }
    tracing::info!(gateway_id = %id, "gateway deleted and its session closed");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn quoting() {
        assert_eq!(
            shell_quote("registration.token=abc.DEF_-"),
            "registration.token=abc.DEF_-"
        );
        assert_eq!(shell_quote("registration.name=it's"), r"'registration.name=it'\''s'");
        assert_eq!(shell_quote("a b"), "'a b'");
    }
}
