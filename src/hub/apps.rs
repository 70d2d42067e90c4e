//! The hub API over relayed state and gateway actions: list and filter applications (per
//! gateway or across all), show one, list clusters, forward health checks, syncs, refreshes and
//! reads (tree, managed resources, events, logs) to the gateway, and `wait` until an
//! application is Synced and Healthy at a revision — the deployment-verification primitive.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::{ApiError, ApiState, authorize};
use super::requests::RequestFailure;
use crate::proto::{self, request};

/// Deadline for requests forwarded to a gateway.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(30);
/// Longest `wait` accepted.
pub const MAX_WAIT: Duration = Duration::from_secs(6 * 3600);

/// The routes of this module.
pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/api/v1/applications", get(list_all))
        .route("/api/v1/gateways/{id}/applications", get(list_gateway))
        .route("/api/v1/gateways/{id}/applications/{namespace}/{name}", get(get_app))
        .route("/api/v1/gateways/{id}/applications/{namespace}/{name}/sync", post(sync))
        .route(
            "/api/v1/gateways/{id}/applications/{namespace}/{name}/refresh",
            post(refresh),
        )
        .route(
            "/api/v1/gateways/{id}/applications/{namespace}/{name}/resource-tree",
            get(resource_tree),
        )
        .route(
            "/api/v1/gateways/{id}/applications/{namespace}/{name}/managed-resources",
            get(managed_resources),
        )
        .route(
            "/api/v1/gateways/{id}/applications/{namespace}/{name}/events",
            get(events),
        )
        .route("/api/v1/gateways/{id}/applications/{namespace}/{name}/logs", get(logs))
        .route("/api/v1/gateways/{id}/applications/{namespace}/{name}/wait", post(wait))
        .route("/api/v1/gateways/{id}/clusters", get(clusters))
        .route("/api/v1/gateways/{id}/health-check", post(health_check))
}

fn failure(e: RequestFailure) -> ApiError {
    let (status, code) = match &e {
        RequestFailure::Disconnected { .. } => (StatusCode::SERVICE_UNAVAILABLE, "gateway_disconnected"),
        RequestFailure::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        RequestFailure::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
        RequestFailure::PermissionDenied { .. } => (StatusCode::FORBIDDEN, "permission_denied"),
        RequestFailure::Unavailable(_) => (StatusCode::BAD_GATEWAY, "argocd_unavailable"),
        RequestFailure::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
        RequestFailure::Unsupported(_) => (StatusCode::NOT_IMPLEMENTED, "unsupported"),
        RequestFailure::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "gateway_error"),
    };
    let mut body = json!({ "error": e.to_string(), "code": code });
    if let RequestFailure::PermissionDenied { missing_policy, .. } = &e
        && !missing_policy.is_empty()
    {
        body["missingPolicy"] = json!(missing_policy);
    }
    ApiError::with_body(status, body)
}

/// Filters of the application lists.
#[derive(Debug, Default, Deserialize)]
pub struct AppFilter {
    /// Label selector: `k=v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`, comma-separated.
    pub selector: Option<String>,
    /// Health status (case-insensitive).
    pub health: Option<String>,
    /// Sync status (case-insensitive).
    pub sync: Option<String>,
    /// Project.
    pub project: Option<String>,
}

/// One label-selector requirement.
#[derive(Debug, PartialEq)]
enum Req {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    Absent(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// Parses a Kubernetes-style label selector.
fn parse_selector(s: &str) -> Result<Vec<Req>, String> {
    let mut reqs = vec![];
    let mut rest = s.trim();
    while !rest.is_empty() {
        // Split at the next comma that is not inside parentheses.
        let mut depth = 0;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        let part = rest[..end].trim();
        rest = rest.get(end + 1..).unwrap_or("").trim();
        if part.is_empty() {
            continue;
        }
        let set = |key: &str, list: &str| -> Result<(String, Vec<String>), String> {
            let inner = list
                .trim()
                .strip_prefix('(')
                .and_then(|l| l.strip_suffix(')'))
                .ok_or(format!("bad set in {part:?}"))?;
            Ok((
                key.trim().to_owned(),
                inner
                    .split(',')
                    .map(|v| v.trim().to_owned())
                    .filter(|v| !v.is_empty())
                    .collect(),
            ))
        };
        let req = if let Some((k, v)) = part.split_once("!=") {
            Req::Ne(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            Req::Eq(k.trim().into(), v.trim().into())
        } else if let Some((k, l)) = part.split_once(" notin ") {
            let (k, vs) = set(k, l)?;
            Req::NotIn(k, vs)
        } else if let Some((k, l)) = part.split_once(" in ") {
            let (k, vs) = set(k, l)?;
            Req::In(k, vs)
        } else if let Some(k) = part.strip_prefix('!') {
            Req::Absent(k.trim().into())
        } else if part.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c)) {
            Req::Exists(part.into())
        } else {
            return Err(format!("cannot parse selector requirement {part:?}"));
        };
        reqs.push(req);
    }
    Ok(reqs)
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |cur, k| cur.get(*k)).and_then(Value::as_str)
}

struct Matcher {
    selector: Vec<Req>,
    annotations: Vec<(String, String)>,
    health: Option<String>,
    sync: Option<String>,
    project: Option<String>,
}

impl Matcher {
    fn new(filter: &AppFilter, raw_query: &[(String, String)]) -> Result<Self, ApiError> {
        let selector = parse_selector(filter.selector.as_deref().unwrap_or(""))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("selector: {e}")))?;
        let mut annotations = vec![];
        for (k, v) in raw_query {
            if k == "annotation" {
                let (ak, av) = v.split_once('=').ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("annotation filter {v:?} must be key=value"),
                    )
                })?;
                annotations.push((ak.to_owned(), av.to_owned()));
            }
        }
        Ok(Self {
            selector,
            annotations,
            health: filter.health.clone(),
            sync: filter.sync.clone(),
            project: filter.project.clone(),
        })
    }

    fn matches(&self, app: &Value) -> bool {
        let label = |k: &str| app.get("labels").and_then(|l| l.get(k)).and_then(Value::as_str);
        let ok_selector = self.selector.iter().all(|r| match r {
            Req::Eq(k, v) => label(k) == Some(v.as_str()),
            Req::Ne(k, v) => label(k) != Some(v.as_str()),
            Req::Exists(k) => label(k).is_some(),
            Req::Absent(k) => label(k).is_none(),
            Req::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Req::NotIn(k, vs) => label(k).is_none_or(|l| !vs.iter().any(|v| v == l)),
        });
        let ok_annotations = self
            .annotations
            .iter()
            .all(|(k, v)| app.get("annotations").and_then(|a| a.get(k)).and_then(Value::as_str) == Some(v.as_str()));
        let eq_ci = |want: &Option<String>, got: Option<&str>| {
            want.as_ref()
                .is_none_or(|w| got.is_some_and(|g| g.eq_ignore_ascii_case(w)))
        };
        ok_selector
            && ok_annotations
            && eq_ci(&self.health, str_at(app, &["health", "status"]))
            && eq_ci(&self.sync, str_at(app, &["sync", "status"]))
            && self
                .project
                .as_ref()
                .is_none_or(|p| str_at(app, &["project"]).unwrap_or("default") == p)
    }
}

fn decorate(app: &Value, gateway_id: &str, stale: bool) -> Value {
    let mut v = app.clone();
    if let Some(o) = v.as_object_mut() {
        o.insert("gatewayId".into(), json!(gateway_id));
        o.insert("stale".into(), json!(stale));
    }
    v
}

fn known_gateway(state: &ApiState, id: &str) -> bool {
    state.hub.sessions.get(id).is_some() || state.hub.entities.with(id, |g| g.is_some())
}

async fn ensure_gateway(state: &ApiState, id: &str) -> Result<(), ApiError> {
    if known_gateway(state, id) || state.hub.store.gateway(id.to_owned()).await?.is_some() {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, format!("no gateway {id}")))
    }
}

async fn list_gateway(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(filter): Query<AppFilter>,
    Query(raw): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    ensure_gateway(&state, &id).await?;
    let m = Matcher::new(&filter, &raw)?;
    let stale = state.hub.sessions.get(&id).is_none();
    let items: Vec<Value> = state.hub.entities.with(&id, |g| {
        g.map(|g| {
            g.apps
                .values()
                .filter(|s| m.matches(&s.value))
                .map(|s| decorate(&s.value, &id, stale))
                .collect()
        })
        .unwrap_or_default()
    });
    Ok(Json(json!({ "items": items })))
}

async fn list_all(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Query(filter): Query<AppFilter>,
    Query(raw): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    let m = Matcher::new(&filter, &raw)?;
    let mut items: Vec<Value> = state.hub.entities.with_all(|all| {
        all.iter()
            .flat_map(|(gw, g)| {
                let stale = state.hub.sessions.get(gw).is_none();
                g.apps
                    .values()
                    .filter(|s| m.matches(&s.value))
                    .map(move |s| decorate(&s.value, gw, stale))
            })
            .collect()
    });
    items.sort_by(|a, b| {
        let k = |v: &Value| {
            (
                str_at(v, &["gatewayId"]).unwrap_or("").to_owned(),
                str_at(v, &["namespace"]).unwrap_or("").to_owned(),
                str_at(v, &["name"]).unwrap_or("").to_owned(),
            )
        };
        k(a).cmp(&k(b))
    });
    Ok(Json(json!({ "items": items })))
}

fn app_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

fn stored_app(state: &ApiState, id: &str, namespace: &str, name: &str) -> Option<Value> {
    state.hub.entities.with(id, |g| {
        g.and_then(|g| g.apps.get(&app_key(namespace, name)).map(|s| s.value.as_ref().clone()))
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GetQuery {
    /// `normal` or `hard`: ask Argo CD through the gateway (and have it refresh) instead of
    /// answering from the relayed state.
    refresh: Option<String>,
}

async fn get_app(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((id, namespace, name)): Path<(String, String, String)>,
    Query(query): Query<GetQuery>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    ensure_gateway(&state, &id).await?;
    if let Some(refresh) = query.refresh {
        if !matches!(refresh.as_str(), "normal" | "hard") {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("refresh must be normal or hard, not {refresh:?}"),
            ));
        }
        let live = forward_app(&state, &id, &namespace, &name, |app| {
            request::Kind::Get(proto::GetApplicationRequest {
                app: Some(app),
                refresh,
            })
        })
        .await?;
        return Ok(Json(decorate(&live, &id, false)));
    }
    let stale = state.hub.sessions.get(&id).is_none();
    stored_app(&state, &id, &namespace, &name)
        .map(|a| Json(decorate(&a, &id, stale)))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("gateway {id} has no application {namespace}/{name}"),
            )
        })
}

async fn clusters(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    ensure_gateway(&state, &id).await?;
    let stale = state.hub.sessions.get(&id).is_none();
    let items: Vec<Value> = state.hub.entities.with(&id, |g| {
        g.map(|g| g.clusters.values().map(|s| decorate(&s.value, &id, stale)).collect())
            .unwrap_or_default()
    });
    Ok(Json(json!({ "items": items })))
}

/// Sends a request to a connected gateway.
pub async fn forward(
    state: &ApiState,
    id: &str,
    kind: request::Kind,
    deadline: Duration,
) -> Result<Value, RequestFailure> {
    let Some(session) = state.hub.sessions.get(id) else {
        let last_seen = state
            .hub
            .store
            .gateway(id.to_owned())
            .await
            .ok()
            .flatten()
            .and_then(|g| g.last_seen_at)
            .and_then(|s| jiff::Timestamp::from_second(s).ok())
            .map(|t| t.to_string());
        return Err(RequestFailure::Disconnected {
            gateway_id: id.to_owned(),
            last_seen,
        });
    };
    let name = crate::tunnel::request_name(&kind);
    let started = std::time::Instant::now();
    let result = session.broker.call(&session.tx, kind, deadline).await;
    state
        .hub
        .metrics
        .request_seconds
        .get_or_create(&super::grpc::KindLabel { kind: name.to_owned() })
        .observe(started.elapsed().as_secs_f64());
    result
}

/// Forwards a request about one application, naming it with the project the hub knows (so the
/// gateway can pick a project token), and maps a failure to the API's typed error.
async fn forward_app(
    state: &ApiState,
    id: &str,
    namespace: &str,
    name: &str,
    kind: impl FnOnce(proto::AppRef) -> request::Kind,
) -> Result<Value, ApiError> {
    let app = app_ref(state, id, namespace, name);
    forward(state, id, kind(app), REQUEST_DEADLINE).await.map_err(failure)
}

fn app_ref(state: &ApiState, id: &str, namespace: &str, name: &str) -> proto::AppRef {
    let project = stored_app(state, id, namespace, name)
        .and_then(|a| str_at(&a, &["project"]).map(str::to_owned))
        .unwrap_or_default();
    proto::AppRef {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        project,
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SyncBody {
    revision: Option<String>,
    revisions: Option<Vec<String>>,
    prune: Option<bool>,
    dry_run: Option<bool>,
}

async fn sync(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((id, namespace, name)): Path<(String, String, String)>,
    body: Option<Json<SyncBody>>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    ensure_gateway(&state, &id).await?;
    let b = body.map(|Json(b)| b).unwrap_or_default();
    let revision = b.revision.unwrap_or_default();
    tracing::info!(gateway_id = %id, app = %app_key(&namespace, &name), revision = %revision, "sync requested");
    forward_app(&state, &id, &namespace, &name, |app| {
        request::Kind::Sync(proto::SyncRequest {
            app: Some(app),
            revision,
            revisions: b.revisions.unwrap_or_default(),
            prune: b.prune.unwrap_or(false),
            dry_run: b.dry_run.unwrap_or(false),
        })
    })
    .await
    .map(Json)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RefreshBody {
    hard: Option<bool>,
}

async fn refresh(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((id, namespace, name)): Path<(String, String, String)>,
    body: Option<Json<RefreshBody>>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    ensure_gateway(&state, &id).await?;
    let hard = body.and_then(|Json(b)| b.hard).unwrap_or(false);
    forward_app(&state, &id, &namespace, &name, |app| {
        request::Kind::Refresh(proto::RefreshRequest { app: Some(app), hard })
    })
    .await
    .map(Json)
}

async fn resource_tree(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((id, namespace, name)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    ensure_gateway(&state, &id).await?;
    forward_app(&state, &id, &namespace, &name, request::Kind::ResourceTree)
        .await
        .map(Json)
}

async fn managed_resources(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((id, namespace, name)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    ensure_gateway(&state, &id).await?;
    forward_app(&state, &id, &namespace, &name, request::Kind::ManagedResources)
        .await
        .map(Json)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventsQuery {
    resource_namespace: Option<String>,
    resource_name: Option<String>,
    resource_uid: Option<String>,
}

async fn events(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((id, namespace, name)): Path<(String, String, String)>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    ensure_gateway(&state, &id).await?;
    forward_app(&state, &id, &namespace, &name, |app| {
        request::Kind::Events(proto::EventsRequest {
            app: Some(app),
            resource_namespace: q.resource_namespace.unwrap_or_default(),
            resource_name: q.resource_name.unwrap_or_default(),
            resource_uid: q.resource_uid.unwrap_or_default(),
        })
    })
    .await
    .map(Json)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LogsQuery {
    pod_name: Option<String>,
    container: Option<String>,
    tail_lines: Option<u32>,
}

async fn logs(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((id, namespace, name)): Path<(String, String, String)>,
    Query(q): Query<LogsQuery>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    ensure_gateway(&state, &id).await?;
    let Some(pod_name) = q.pod_name.filter(|p| !p.is_empty()) else {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "podName is required"));
    };
    forward_app(&state, &id, &namespace, &name, |app| {
        request::Kind::Logs(proto::LogsRequest {
            app: Some(app),
            pod_name,
            container: q.container.unwrap_or_default(),
            tail_lines: q.tail_lines.unwrap_or(100).clamp(1, 10_000),
        })
    })
    .await
    .map(Json)
}

/// Runs a health check and records the result for the gateway listing.
pub async fn run_health_check(state: &ApiState, id: &str) -> Result<Value, RequestFailure> {
    let mut result = forward(
        state,
        id,
        request::Kind::HealthCheck(proto::HealthCheckRequest {}),
        REQUEST_DEADLINE,
    )
    .await?;
    if let Some(session) = state.hub.sessions.get(id)
        && let Some(o) = result.as_object_mut()
    {
        let rtt = session.rtt_ms.load(std::sync::atomic::Ordering::Relaxed);
        if rtt >= 0 {
            o.insert("hubRoundTripMillis".into(), json!(rtt));
        }
    }
    let checked_at = jiff::Timestamp::now().to_string();
    if let Some(o) = result.as_object_mut() {
        o.insert("checkedAt".into(), json!(checked_at));
    }
    if let Ok(mut h) = state.health.lock() {
        h.insert(id.to_owned(), result.clone());
    }
    Ok(result)
}

async fn health_check(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    ensure_gateway(&state, &id).await?;
    run_health_check(&state, &id).await.map(Json).map_err(failure)
}

/// Health-checks every connected gateway every `interval`.
pub async fn periodic_health_checks(
    state: Arc<ApiState>,
    interval: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (id, _) in state.hub.sessions.all() {
            if let Err(e) = run_health_check(&state, &id).await {
                tracing::warn!(gateway_id = %id, error = %e, "periodic health check failed");
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WaitBody {
    revision: Option<String>,
    timeout_seconds: u64,
}

/// The outcome of `wait` for an application's current state.
pub fn wait_verdict(app: &Value, revision: Option<&str>) -> Option<&'static str> {
    let matches_rev = |single: Option<&str>, many: Option<&Value>| match revision {
        None => true,
        Some(want) => {
            single.is_some_and(|r| !r.is_empty() && r.starts_with(want))
                || many
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().filter_map(Value::as_str).any(|r| r.starts_with(want)))
        }
    };
    let sync_status = str_at(app, &["sync", "status"]);
    let health = str_at(app, &["health", "status"]);
    if sync_status == Some("Synced")
        && health == Some("Healthy")
        && matches_rev(
            str_at(app, &["sync", "revision"]),
            app.get("sync").and_then(|s| s.get("revisions")),
        )
    {
        return Some("Synced");
    }
    if let Some(op) = app.get("operation").filter(|o| !o.is_null())
        && matches!(str_at(op, &["phase"]), Some("Failed" | "Error"))
        && matches_rev(str_at(op, &["revision"]), op.get("revisions"))
    {
        return Some("Failed");
    }
    None
}

async fn wait(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((id, namespace, name)): Path<(String, String, String)>,
    Json(body): Json<WaitBody>,
) -> Result<Json<Value>, ApiError> {
    authorize(&state, &headers)?;
    ensure_gateway(&state, &id).await?;
    let timeout = Duration::from_secs(body.timeout_seconds);
    if timeout.is_zero() || timeout > MAX_WAIT {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("timeoutSeconds must be between 1 and {}", MAX_WAIT.as_secs()),
        ));
    }
    let revision = body.revision.filter(|r| !r.is_empty());
    let mut changes = state.hub.entities.subscribe();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let app = stored_app(&state, &id, &namespace, &name);
        if let Some(a) = &app
            && let Some(verdict) = wait_verdict(a, revision.as_deref())
        {
            return Ok(Json(json!({ "result": verdict, "application": a })));
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                return Ok(Json(json!({ "result": "Timeout", "application": app })));
            }
            r = changes.changed() => {
                if r.is_err() {
                    return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the hub is shutting down"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        assert_eq!(
            parse_selector("team=a, env in (prod, staging),!legacy,tier!=web").unwrap(),
            vec![
                Req::Eq("team".into(), "a".into()),
                Req::In("env".into(), vec!["prod".into(), "staging".into()]),
                Req::Absent("legacy".into()),
                Req::Ne("tier".into(), "web".into()),
            ]
        );
        assert!(parse_selector("a in b").is_err());
        let f = AppFilter {
            selector: Some("env in (prod),team".into()),
            health: Some("healthy".into()),
            ..Default::default()
        };
        let m = Matcher::new(&f, &[("annotation".into(), "owner=me".into())]).unwrap();
        let app = json!({"labels": {"env": "prod", "team": "x"}, "annotations": {"owner": "me"}, "health": {"status": "Healthy"}});
        assert!(m.matches(&app));
        let other = json!({"labels": {"env": "dev", "team": "x"}, "annotations": {"owner": "me"}, "health": {"status": "Healthy"}});
        assert!(!m.matches(&other));
    }

    #[test]
    fn wait_verdicts() {
        let synced = json!({"sync": {"status": "Synced", "revision": "abc123"}, "health": {"status": "Healthy"}, "operation": null});
        assert_eq!(wait_verdict(&synced, Some("abc")), Some("Synced"));
        assert_eq!(wait_verdict(&synced, None), Some("Synced"));
        assert_eq!(wait_verdict(&synced, Some("def")), None);
        let multi =
            json!({"sync": {"status": "Synced", "revisions": ["x1", "def456"]}, "health": {"status": "Healthy"}});
        assert_eq!(wait_verdict(&multi, Some("def456")), Some("Synced"));
        let failed = json!({"sync": {"status": "OutOfSync", "revision": "old"}, "health": {"status": "Degraded"},
            "operation": {"phase": "Failed", "revision": "def456"}});
        assert_eq!(wait_verdict(&failed, Some("def")), Some("Failed"));
        assert_eq!(wait_verdict(&failed, Some("zzz")), None);
        let progressing = json!({"sync": {"status": "Synced", "revision": "def"}, "health": {"status": "Progressing"}});
        assert_eq!(wait_verdict(&progressing, Some("def")), None);
    }
}
