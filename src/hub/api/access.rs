//! Who may do what. Every `/api/v1` route passes [`authorize`] before any handler or body
//! parsing runs: it finds the caller's credential, checks its role against the route's
//! ([`required_role`]) and, for the status page's cookie sessions, the anti-CSRF protection of
//! every state-changing request.
//!
//! Roles, each including the one before:
//! - `viewer`: read everything but tokens, follow the change feed, `wait` (one application or
//!   `/api/v1/wait`; one that refreshes or syncs needs `operator`);
//! - `operator`: plus sync, refresh, health checks and every other action on an application
//!   (terminate, rollback: any state-changing request under `…/applications/{ns}/{name}/`);
//! - `admin`: plus registration tokens, gateways (delete), the desired version and API tokens.
//!   A route not classified below needs `admin`: a new route is closed until someone opens it.
//!
//! Credentials:
//! - the hub's admin token (the `admin-token` file in the data directory) is `admin`;
//! - API tokens (`agw_<id>.<secret>`) are created, listed and revoked by an admin through
//!   `/api/v1/api-tokens` (`hub api-token …`), shown once, stored as a SHA-256 hash;
//! - the status page logs in with either (`POST /api/v1/login`) and gets an HttpOnly,
//!   SameSite=Strict cookie (Secure under TLS). A cookie-authenticated request that changes
//!   anything must carry the session's `X-CSRF-Token` and must not come from another origin.
//!   Bearer-token calls need no CSRF token: browsers never add that header on their own.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{ApiError, ApiResult, ApiState, rfc3339};
use crate::hub::store::{ApiTokenRecord, WebSessionRecord};
use crate::util::constant_time_eq;

/// What a credential may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read, follow the feed, wait.
    Viewer,
    /// Plus actions on applications and health checks.
    Operator,
    /// Plus registration tokens, gateways, the desired version and API tokens.
    Admin,
}

impl Role {
    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }

    /// A role by name.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "viewer" => Some(Self::Viewer),
            "operator" => Some(Self::Operator),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

/// The role a route needs, by method and route template (`/api/v1/gateways/{id}/…`).
pub fn required_role(method: &Method, route: &str) -> Role {
    const APPS: &str = "/api/v1/gateways/{id}/applications/";
    if route.starts_with("/api/v1/registration-tokens") || route.starts_with("/api/v1/api-tokens") {
        return Role::Admin;
    }
    if matches!(*method, Method::GET | Method::HEAD) {
        return Role::Viewer;
    }
    // `wait` (of one application or many) only reads, however long — a wait that refreshes or
    // syncs is checked for the operator role by its handler; logging out concerns only the
    // caller.
    if route.ends_with("/wait") || route == "/api/v1/logout" {
        return Role::Viewer;
    }
    if route.starts_with(APPS) || route == "/api/v1/gateways/{id}/health-check" {
        return Role::Operator;
    }
    Role::Admin
}

/// Who is calling.
#[derive(Clone)]
pub struct Principal {
    /// The role.
    pub role: Role,
    /// The credential's name (`admin`, or the API token's name).
    pub name: String,
    /// The credential: an API token id, or `admin:<hash prefix>` for the admin token.
    pub credential: String,
    /// For a page session: the hash of its cookie and its anti-CSRF token.
    pub session: Option<(Vec<u8>, String)>,
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The session's anti-CSRF token is a secret of the browser's.
        f.debug_struct("Principal")
            .field("role", &self.role)
            .field("name", &self.name)
            .field("credential", &self.credential)
            .field("session", &self.session.is_some())
            .finish()
    }
}

/// The prefix of API tokens, so they are recognisable (in logs that leaked one, in secret
/// scanners) and never taken for a registration token.
pub const API_TOKEN_PREFIX: &str = "agw_";
/// The page session cookie.
pub const SESSION_COOKIE: &str = "agw_session";
/// The header a page session's state-changing requests must carry.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// API tokens are used at most this often recorded as used.
const TOUCH_EVERY: i64 = 60;
/// Longest API token lifetime accepted.
pub const MAX_API_TOKEN_TTL: Duration = Duration::from_secs(5 * 365 * 24 * 3600);

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn sha256(data: &[u8]) -> Vec<u8> {
    Sha256::digest(data).to_vec()
}

/// The admin token as a credential id: a short hash, so sessions opened with an admin token
/// that has since been replaced stop working.
fn admin_credential(state: &ApiState) -> String {
    format!(
        "admin:{}",
        &hex::encode(sha256(state.admin_token.expose().as_bytes()))[..16]
    )
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::with_body(
        StatusCode::UNAUTHORIZED,
        serde_json::json!({ "error": message, "code": "unauthorized" }),
    )
}

/// The principal of a bearer token: the admin token, or an API token that exists and has not
/// expired.
async fn from_token(state: &ApiState, token: &str) -> ApiResult<Principal> {
    let token = token.trim();
    if constant_time_eq(token.as_bytes(), state.admin_token.expose().as_bytes()) {
        return Ok(Principal {
            role: Role::Admin,
            name: "admin".into(),
            credential: admin_credential(state),
            session: None,
        });
    }
    let invalid = || unauthorized("invalid token: use the hub's admin token or an API token (hub api-token create)");
    let Some((id, secret)) = token.strip_prefix(API_TOKEN_PREFIX).and_then(|t| t.split_once('.')) else {
        return Err(invalid());
    };
    if id.is_empty() || secret.is_empty() {
        return Err(invalid());
    }
    let Some((record, hash)) = state.hub.store.api_token(id.to_owned()).await? else {
        return Err(invalid());
    };
    if !constant_time_eq(&hash, &sha256(secret.as_bytes())) {
        return Err(invalid());
    }
    let now = now();
    if record.expires_at.is_some_and(|e| e <= now) {
        return Err(unauthorized(&format!(
            "API token {} ({}) expired at {}; an admin can create a new one with `hub api-token create`",
            record.id,
            record.name,
            rfc3339(record.expires_at).unwrap_or_default()
        )));
    }
    let Some(role) = Role::parse(&record.role) else {
        tracing::error!(token_id = %record.id, role = %record.role, "API token with an unknown role");
        return Err(invalid());
    };
    if record.last_used_at.is_none_or(|t| now - t >= TOUCH_EVERY)
        && let Err(e) = state.hub.store.touch_api_token(record.id.clone(), now).await
    {
        tracing::warn!(error = %e, "cannot record an API token's use");
    }
    Ok(Principal {
        role,
        name: record.name,
        credential: record.id,
        session: None,
    })
}

/// The value of one cookie.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// The principal of a page session cookie, if it names a live session.
async fn from_session(state: &ApiState, value: &str) -> ApiResult<Option<Principal>> {
    let id_hash = sha256(value.as_bytes());
    let Some(s) = state.hub.store.web_session(id_hash.clone(), now()).await? else {
        return Ok(None);
    };
    if s.credential.starts_with("admin:") && s.credential != admin_credential(state) {
        return Ok(None);
    }
    let Some(role) = Role::parse(&s.role) else {
        return Ok(None);
    };
    Ok(Some(Principal {
        role,
        name: s.name,
        credential: s.credential,
        session: Some((id_hash, s.csrf)),
    }))
}

/// Whether the request's own origin headers say it comes from this hub's pages (or from no
/// page at all). Browsers send `Sec-Fetch-Site` and, on state-changing requests, `Origin`.
fn same_origin(headers: &HeaderMap, secure: bool) -> Result<(), &'static str> {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return Err("the request comes from another site or origin");
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
        let scheme = if secure || forwarded_https(headers) {
            "https"
        } else {
            "http"
        };
        if origin != format!("{scheme}://{host}") {
            return Err("the request's Origin is not this hub");
        }
    }
    Ok(())
}

fn forbidden(message: String, code: &str) -> ApiError {
    ApiError::with_body(
        StatusCode::FORBIDDEN,
        serde_json::json!({ "error": message, "code": code }),
    )
}

/// Finds the caller: a bearer token, else a page session (with its CSRF check on
/// state-changing requests).
async fn principal(state: &ApiState, method: &Method, headers: &HeaderMap) -> ApiResult<Principal> {
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        let token = auth
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <token>`"))?;
        return from_token(state, token).await;
    }
    let Some(value) = cookie(headers, SESSION_COOKIE) else {
        return Err(unauthorized(
            "missing token: send Authorization: Bearer <token> (the hub's admin-token file or an API token), or log in on the status page",
        ));
    };
    let Some(p) = from_session(state, value).await? else {
        return Err(unauthorized("the status-page session has ended; log in again"));
    };
    if !matches!(*method, Method::GET | Method::HEAD) {
        let csrf = p.session.as_ref().map(|(_, c)| c.as_str()).unwrap_or_default();
        let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
        if sent.is_empty() || !constant_time_eq(sent.as_bytes(), csrf.as_bytes()) {
            return Err(forbidden(
                "a state-changing request with a session cookie must carry the session's X-CSRF-Token header (the status page sends it)".into(),
                "csrf",
            ));
        }
        same_origin(headers, state.secure_cookies).map_err(|why| forbidden(format!("{why}; refused"), "csrf"))?;
    }
    Ok(p)
}

/// The authorization layer of every `/api/v1` route: the caller's credential and role, before
/// anything else. State-changing requests are logged with who made them.
pub async fn authorize(State(state): State<Arc<ApiState>>, mut request: Request, next: Next) -> Response {
    let p = match principal(&state, request.method(), request.headers()).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    let route = route.as_str();
    let method = request.method().clone();
    let needed = required_role(&method, route);
    if p.role < needed {
        return ApiError::with_body(
            StatusCode::FORBIDDEN,
            serde_json::json!({
                "error": format!("{} ({}) may not {method} {route}: it needs the {} role", p.name, p.role.as_str(), needed.as_str()),
                "code": "forbidden",
                "role": p.role.as_str(),
                "requiredRole": needed.as_str(),
            }),
        )
        .into_response();
    }
    if !matches!(method, Method::GET | Method::HEAD) {
        tracing::info!(who = %p.name, role = p.role.as_str(), method = %method, path = %request.uri().path(), "API request");
    }
    request.extensions_mut().insert(p);
    next.run(request).await
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct LoginBody {
    token: crate::secret::Secret,
}

/// Whether a proxy in front says the browser came over HTTPS.
fn forwarded_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

/// The session cookie; `Secure` when the browser reached the hub over HTTPS (the hub's own TLS,
/// or a proxy's that says so).
fn session_cookie(state: &ApiState, headers: &HeaderMap, value: &str, max_age: i64) -> HeaderValue {
    let secure = if state.secure_cookies || forwarded_https(headers) {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("agw_session=; Path=/; Max-Age=0"))
}

/// `POST /api/v1/login` `{"token"}`: opens a status-page session with the admin token or an
/// API token; answers the role and the session's anti-CSRF token and sets the cookie.
pub(super) async fn login(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Result<Json<LoginBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Response> {
    // A login from another site would put the victim's browser in the attacker's session.
    same_origin(&headers, state.secure_cookies).map_err(|why| forbidden(format!("{why}; login refused"), "csrf"))?;
    let Json(body) = body.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("expected {{\"token\": \"…\"}} as JSON: {}", e.body_text()),
        )
    })?;
    let p = match from_token(&state, body.token.expose()).await {
        Ok(p) => p,
        Err(e) => {
            tracing::info!("status-page login refused");
            return Err(e);
        }
    };
    let now = now();
    let mut expires_at = now + state.session_ttl.as_secs() as i64;
    if !p.credential.starts_with("admin:")
        && let Some((record, _)) = state.hub.store.api_token(p.credential.clone()).await?
        && let Some(e) = record.expires_at
    {
        expires_at = expires_at.min(e);
    }
    let value = crate::hub::pki::random_token(32);
    let csrf = crate::hub::pki::random_token(24);
    state
        .hub
        .store
        .insert_web_session(WebSessionRecord {
            id_hash: sha256(value.as_bytes()),
            credential: p.credential.clone(),
            name: p.name.clone(),
            role: p.role.as_str().to_owned(),
            csrf: csrf.clone(),
            created_at: now,
            expires_at,
        })
        .await?;
    tracing::info!(who = %p.name, role = p.role.as_str(), "status-page login");
    let mut resp = Json(serde_json::json!({
        "name": p.name,
        "role": p.role.as_str(),
        "csrfToken": csrf,
        "expiresAt": rfc3339(Some(expires_at)),
    }))
    .into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie(&state, &headers, &value, expires_at - now),
    );
    Ok(resp)
}

/// `POST /api/v1/logout`: ends the caller's page session and clears the cookie.
pub(super) async fn logout(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::Extension(p): axum::Extension<Principal>,
) -> ApiResult<Response> {
    if let Some((id_hash, _)) = p.session {
        state.hub.store.delete_web_session(id_hash).await?;
        tracing::info!(who = %p.name, "status-page logout");
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, session_cookie(&state, &headers, "", 0));
    Ok(resp)
}

/// `GET /api/v1/session`: who the caller is, and for a page session its anti-CSRF token.
pub(super) async fn session(axum::Extension(p): axum::Extension<Principal>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "name": p.name,
        "role": p.role.as_str(),
        "via": if p.session.is_some() { "session" } else { "token" },
        "csrfToken": p.session.map(|(_, c)| c),
        "hubVersion": crate::VERSION,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct CreateApiToken {
    name: String,
    role: String,
    ttl_seconds: Option<u64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ApiTokenView {
    id: String,
    name: String,
    role: String,
    created_at: Option<String>,
    expires_at: Option<String>,
    last_used_at: Option<String>,
    state: &'static str,
}

fn token_view(r: ApiTokenRecord, now: i64) -> ApiTokenView {
    ApiTokenView {
        state: if r.expires_at.is_some_and(|e| e <= now) {
            "expired"
        } else {
            "active"
        },
        created_at: rfc3339(Some(r.created_at)),
        expires_at: rfc3339(r.expires_at),
        last_used_at: rfc3339(r.last_used_at),
        id: r.id,
        name: r.name,
        role: r.role,
    }
}

/// `POST /api/v1/api-tokens` `{"name", "role", "ttlSeconds"?}`: a new token, shown once.
pub(super) async fn create_api_token(
    State(state): State<Arc<ApiState>>,
    body: Result<Json<CreateApiToken>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Response> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let Json(req) = body.map_err(|e| {
        bad(format!(
            "expected {{\"name\": \"ci\", \"role\": \"viewer|operator|admin\", \"ttlSeconds\"?: N}}: {}",
            e.body_text()
        ))
    })?;
    let name = req.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(bad("name must be 1 to 100 printable characters".into()));
    }
    let role = Role::parse(&req.role)
        .ok_or_else(|| bad(format!("role must be viewer, operator or admin, not {:?}", req.role)))?;
    let now = now();
    let expires_at = match req.ttl_seconds {
        None => None,
        Some(t) if t == 0 || t > MAX_API_TOKEN_TTL.as_secs() => {
            return Err(bad(format!(
                "ttlSeconds must be between 1 and {} (5 years), or left out for a token that does not expire",
                MAX_API_TOKEN_TTL.as_secs()
            )));
        }
        Some(t) => Some(now + t as i64),
    };
    let id = crate::hub::pki::random_token(9);
    let secret = crate::hub::pki::random_token(32);
    let record = ApiTokenRecord {
        id: id.clone(),
        name: name.clone(),
        role: role.as_str().to_owned(),
        created_at: now,
        expires_at,
        last_used_at: None,
    };
    state
        .hub
        .store
        .insert_api_token(record.clone(), sha256(secret.as_bytes()))
        .await?;
    tracing::info!(token_id = %id, name = %name, role = role.as_str(), "created an API token");
    let mut v = serde_json::to_value(token_view(record, now)).unwrap_or_default();
    v["token"] = format!("{API_TOKEN_PREFIX}{id}.{secret}").into();
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

/// `GET /api/v1/api-tokens`: every API token (never a secret).
pub(super) async fn list_api_tokens(State(state): State<Arc<ApiState>>) -> ApiResult<Json<serde_json::Value>> {
    let now = now();
    let items: Vec<ApiTokenView> = state
        .hub
        .store
        .api_tokens()
        .await?
        .into_iter()
        .map(|r| token_view(r, now))
        .collect();
    Ok(Json(serde_json::json!({ "items": items })))
}

/// `DELETE /api/v1/api-tokens/{id}`: revokes a token and ends the page sessions opened with it.
pub(super) async fn delete_api_token(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    if state.hub.store.delete_api_token(id.clone()).await? {
        tracing::info!(token_id = %id, "revoked an API token");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, format!("no API token {id}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_by_route() {
        const APP: &str = "/api/v1/gateways/{id}/applications/{namespace}/{name}";
        let cases = [
            (Method::GET, "/api/v1/gateways", Role::Viewer),
            (Method::GET, "/api/v1/events", Role::Viewer),
            (Method::GET, &format!("{APP}/logs"), Role::Viewer),
            (Method::GET, &format!("{APP}/timeline"), Role::Viewer),
            (Method::POST, &format!("{APP}/wait"), Role::Viewer),
            (Method::POST, "/api/v1/wait", Role::Viewer),
            (Method::POST, "/api/v1/logout", Role::Viewer),
            (Method::POST, &format!("{APP}/sync"), Role::Operator),
            (Method::POST, &format!("{APP}/refresh"), Role::Operator),
            (Method::POST, &format!("{APP}/rollback"), Role::Operator),
            (Method::DELETE, &format!("{APP}/operation"), Role::Operator),
            (Method::POST, "/api/v1/gateways/{id}/health-check", Role::Operator),
            (Method::GET, "/api/v1/registration-tokens", Role::Admin),
            (Method::POST, "/api/v1/registration-tokens", Role::Admin),
            (Method::GET, "/api/v1/api-tokens", Role::Admin),
            (Method::DELETE, "/api/v1/api-tokens/{id}", Role::Admin),
            (Method::DELETE, "/api/v1/gateways/{id}", Role::Admin),
            (Method::PUT, "/api/v1/desired-version", Role::Admin),
            (Method::GET, "/api/v1/desired-version", Role::Viewer),
            (Method::POST, "/api/v1/something-new", Role::Admin),
        ];
        for (m, route, want) in cases {
            assert_eq!(required_role(&m, route), want, "{m} {route}");
        }
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        assert_eq!(Role::parse(" Operator "), Some(Role::Operator));
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn cookies_and_origins() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; agw_session=xyz ; b=2"));
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "c"), None);

        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(same_origin(&h, false).is_ok());
        h.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:8080"));
        assert!(same_origin(&h, false).is_ok());
        assert!(same_origin(&h, true).is_err());
        h.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:9000"));
        assert!(same_origin(&h, false).is_err());
        let mut h = HeaderMap::new();
        h.insert("sec-fetch-site", HeaderValue::from_static("same-site"));
        assert!(same_origin(&h, false).is_err());
    }
}
