//! The hub API over relayed state and requests forwarded to gateways: list and filter
//! applications (per gateway or across all), show one (as relayed, or live from Argo CD), list
//! clusters, and forward syncs (optionally of a resource subset, forced, with sync options),
//! refreshes, terminations, rollbacks and reads (tree, managed resources, events, logs).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::selector::{AppFilter, Matcher};
use super::{ApiError, ApiState};
use crate::hub::requests::{REQUEST_DEADLINE, RequestFailure, forward};
use crate::wire::codes::CAP_DEPLOY_ACTIONS;
use crate::wire::item::{Application, Cluster};
use crate::wire::proto::{self, request};

/// The API's typed error for a failed request to a gateway.
pub(super) fn failure(e: RequestFailure) -> ApiError {
    let (status, code) = match &e {
        RequestFailure::Disconnected { .. } => (StatusCode::SERVICE_UNAVAILABLE, "gateway_disconnected"),
        RequestFailure::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        RequestFailure::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
        RequestFailure::PermissionDenied { .. } => (StatusCode::FORBIDDEN, "permission_denied"),
        RequestFailure::Unavailable(_) => (StatusCode::BAD_GATEWAY, "argocd_unavailable"),
        RequestFailure::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
        RequestFailure::Unsupported(_) => (StatusCode::NOT_IMPLEMENTED, "unsupported"),
        RequestFailure::TooLarge(_) => (StatusCode::BAD_GATEWAY, "answer_too_large"),
        RequestFailure::Internal(_) | RequestFailure::BadAnswer(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "gateway_error")
        }
    };
    let mut body = json!({ "error": e.to_string(), "code": code });
    if let RequestFailure::PermissionDenied { missing_policy, .. } = &e
        && !missing_policy.is_empty()
    {
        body["missingPolicy"] = json!(missing_policy);
    }
    ApiError::with_body(status, body)
}

/// An item as served: its JSON plus the gateway it came from and whether that gateway is away.
pub(super) fn decorate<T: serde::Serialize>(item: &T, gateway_id: &str, stale: bool) -> Value {
    let mut v = serde_json::to_value(item).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("gatewayId".into(), json!(gateway_id));
        o.insert("stale".into(), json!(stale));
    }
    v
}

fn known_gateway(state: &ApiState, id: &str) -> bool {
    state.hub.is_connected(id) || state.hub.entities.with(id, |g| g.is_some())
}

/// 404 unless the hub knows this gateway.
pub(super) async fn ensure_gateway(state: &ApiState, id: &str) -> Result<(), ApiError> {
    if known_gateway(state, id) || state.hub.store.gateway(id.to_owned()).await?.is_some() {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, format!("no gateway {id}")))
    }
}

/// Paging, sorting and shape of the application lists (the filters are [`AppFilter`]).
#[derive(Debug, Default, Deserialize)]
pub(super) struct ListQuery {
    /// Only this gateway's applications (the all-gateways list).
    gateway: Option<String>,
    /// Page size; without it every match is answered.
    limit: Option<usize>,
    /// Matches to skip before the page.
    offset: Option<usize>,
    /// `name` (default: gateway, namespace, name), `namespace`, `gateway`, `project`, `health`
    /// (worst first), `sync` (OutOfSync first), `operation`, `reconciledAt`; `-` in front
    /// reverses.
    sort: Option<String>,
    /// `full` (default) or `summary` (without resources and images).
    view: Option<String>,
    /// Also answer the projects and gateways present, for filter choices.
    facets: Option<bool>,
}

/// Whether `view` asks for summaries (`summary`) rather than full items (`full`, the default).
pub(super) fn summary_view(view: Option<&str>) -> Result<bool, ApiError> {
    match view {
        None | Some("full") => Ok(false),
        Some("summary") => Ok(true),
        Some(other) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("view must be full or summary, not {other:?}"),
        )),
    }
}

/// The largest page.
pub const MAX_PAGE: usize = 5000;

/// How to order a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SortKey {
    Gateway,
    Name,
    Namespace,
    Project,
    Health,
    Sync,
    Operation,
    ReconciledAt,
}

fn health_rank(app: &Application) -> u8 {
    use crate::wire::item::HealthStatusCode::*;
    match app.health.status {
        Degraded => 0,
        Missing => 1,
        Unknown => 2,
        Progressing => 3,
        Suspended => 4,
        Other(_) => 5,
        Healthy => 6,
        Empty => 7,
    }
}

fn sync_rank(app: &Application) -> u8 {
    use crate::wire::item::SyncStatusCode::*;
    match app.sync.status {
        OutOfSync => 0,
        Unknown => 1,
        Other(_) => 2,
        Synced => 3,
        Empty => 4,
    }
}

fn parse_sort(sort: Option<&str>) -> Result<(SortKey, bool), ApiError> {
    let s = sort.map(str::trim).unwrap_or("");
    let (desc, key) = match s.strip_prefix('-') {
        Some(k) => (true, k),
        None => (false, s),
    };
    let key = match key {
        "" | "gateway" => SortKey::Gateway,
        "name" => SortKey::Name,
        "namespace" => SortKey::Namespace,
        "project" => SortKey::Project,
        "health" => SortKey::Health,
        "sync" => SortKey::Sync,
        "operation" => SortKey::Operation,
        "reconciledAt" => SortKey::ReconciledAt,
        other => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "cannot sort by {other:?}; use name, namespace, gateway, project, health, sync, operation or reconciledAt (- in front reverses)"
                ),
            ));
        }
    };
    Ok((key, desc))
}

type Listed = (String, bool, Arc<Application>);

fn sort_listed(items: &mut [Listed], key: SortKey, desc: bool) {
    let tie = |a: &Listed, b: &Listed| (&a.0, &a.2.namespace, &a.2.name).cmp(&(&b.0, &b.2.namespace, &b.2.name));
    items.sort_by(|a, b| {
        let (x, y) = (&a.2, &b.2);
        let primary = match key {
            SortKey::Gateway => std::cmp::Ordering::Equal,
            SortKey::Name => (&x.name, &x.namespace).cmp(&(&y.name, &y.namespace)),
            SortKey::Namespace => x.namespace.cmp(&y.namespace),
            SortKey::Project => x.project.cmp(&y.project),
            SortKey::Health => health_rank(x).cmp(&health_rank(y)),
            SortKey::Sync => sync_rank(x).cmp(&sync_rank(y)),
            SortKey::Operation => {
                let phase = |a: &Application| {
                    a.operation
                        .as_ref()
                        .map(|o| o.phase.as_str().to_owned())
                        .unwrap_or_default()
                };
                phase(x).cmp(&phase(y))
            }
            SortKey::ReconciledAt => x.reconciled_at.cmp(&y.reconciled_at),
        };
        let o = primary.then_with(|| tie(a, b));
        if desc { o.reverse() } else { o }
    });
}

/// Lists applications of one gateway or all, filtered, sorted and (with `limit`) paged.
async fn list(
    state: &ApiState,
    gateway: Option<String>,
    filter: &AppFilter,
    raw: &[(String, String)],
    q: &ListQuery,
) -> Result<Json<Value>, ApiError> {
    let m = Matcher::new(filter, raw)?;
    let (key, desc) = parse_sort(q.sort.as_deref())?;
    let summary = summary_view(q.view.as_deref())?;
    if q.limit.is_some_and(|l| l == 0 || l > MAX_PAGE) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("limit must be between 1 and {MAX_PAGE}"),
        ));
    }
    // Read before the state: an event at or below this id is already in the answer, so a client
    // that follows the feed from here may see a change twice but never misses one.
    let last_event_id = state.hub.feed.bounds().await?.last;
    let gateway = gateway.filter(|g| !g.is_empty());
    let (mut matched, facets): (Vec<Listed>, Option<Value>) = state.hub.entities.with_all(|all| {
        let matched = all
            .iter()
            .filter(|(gw, _)| gateway.as_ref().is_none_or(|g| g == *gw))
            .flat_map(|(gw, g)| {
                let stale = !state.hub.is_connected(gw);
                g.apps
                    .values()
                    .filter(|s| m.matches(&s.item))
                    .map(move |s| (gw.clone(), stale, s.item.clone()))
            })
            .collect();
        let facets = q.facets.unwrap_or(false).then(|| {
            let projects: std::collections::BTreeSet<&str> = all
                .values()
                .flat_map(|g| g.apps.values().map(|s| s.item.project.as_str()))
                .collect();
            let mut gateways: Vec<&String> = all.keys().collect();
            gateways.sort();
            json!({ "projects": projects, "gateways": gateways })
        });
        (matched, facets)
    });
    sort_listed(&mut matched, key, desc);
    let total = matched.len();
    let offset = q.offset.unwrap_or(0).min(total);
    let end = q.limit.map_or(total, |l| (offset + l).min(total));
    let items: Vec<Value> = matched[offset..end]
        .iter()
        .map(|(gw, stale, app)| {
            let v = decorate(app.as_ref(), gw, *stale);
            if summary { crate::hub::feed::summarize(v) } else { v }
        })
        .collect();
    let mut body = json!({ "items": items, "total": total, "lastEventId": last_event_id });
    if let Some(limit) = q.limit {
        body["offset"] = json!(offset);
        body["limit"] = json!(limit);
    }
    if let Some(f) = facets {
        body["facets"] = f;
    }
    Ok(Json(body))
}

pub(super) async fn list_gateway(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    Query(filter): Query<AppFilter>,
    Query(q): Query<ListQuery>,
    Query(raw): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    ensure_gateway(&state, &id).await?;
    list(&state, Some(id), &filter, &raw, &q).await
}

pub(super) async fn list_all(
    State(state): State<Arc<ApiState>>,
    Query(filter): Query<AppFilter>,
    Query(q): Query<ListQuery>,
    Query(raw): Query<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    list(&state, q.gateway.clone(), &filter, &raw, &q).await
}

fn app_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The relayed state of one application.
pub(super) fn stored_app(state: &ApiState, id: &str, namespace: &str, name: &str) -> Option<Arc<Application>> {
    state.hub.entities.app(id, &app_key(namespace, name))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GetQuery {
    /// `normal` or `hard`: ask Argo CD through the gateway (and have it refresh) instead of
    /// answering from the relayed state.
    refresh: Option<String>,
}

pub(super) async fn get_app(
    State(state): State<Arc<ApiState>>,
    Path((id, namespace, name)): Path<(String, String, String)>,
    Query(query): Query<GetQuery>,
) -> Result<Json<Value>, ApiError> {
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
    let stale = !state.hub.is_connected(&id);
    stored_app(&state, &id, &namespace, &name)
        .map(|a| Json(decorate(a.as_ref(), &id, stale)))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("gateway {id} has no application {namespace}/{name}"),
            )
        })
}

pub(super) async fn clusters(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    ensure_gateway(&state, &id).await?;
    let stale = !state.hub.is_connected(&id);
    let items: Vec<Value> = state.hub.entities.with(&id, |g| {
        g.map(|g| {
            g.clusters
                .values()
                .map(|s| decorate::<Cluster>(s.item.as_ref(), &id, stale))
                .collect()
        })
        .unwrap_or_default()
    });
    Ok(Json(json!({ "items": items })))
}

/// 501 unless the gateway, when connected, named `deploy-actions` in its hello: an older
/// gateway cannot terminate or roll back, and would sync everything instead of a subset.
pub(super) fn require_deploy_actions(state: &ApiState, id: &str, what: &str) -> Result<(), ApiError> {
    match state.hub.sessions.get(id) {
        Some(s) if !s.can(CAP_DEPLOY_ACTIONS) => Err(ApiError::with_body(
            StatusCode::NOT_IMPLEMENTED,
            json!({
                "error": format!(
                    "gateway {id} runs version {}, which cannot {what}: upgrade it (argocd-gateway hub desired-version set, or Helm image.tag)",
                    s.version
                ),
                "code": "unsupported",
            }),
        )),
        _ => Ok(()),
    }
}

/// Forwards a request about one application, naming it with the project the hub knows (so the
/// gateway can pick a project token), and maps a failure to the API's typed error.
pub(super) async fn forward_app(
    state: &ApiState,
    id: &str,
    namespace: &str,
    name: &str,
    kind: impl FnOnce(proto::AppRef) -> request::Kind,
) -> Result<Value, ApiError> {
    let app = app_ref(state, id, namespace, name);
    forward(&state.hub, id, kind(app), REQUEST_DEADLINE)
        .await
        .map_err(failure)
}

fn app_ref(state: &ApiState, id: &str, namespace: &str, name: &str) -> proto::AppRef {
    let project = stored_app(state, id, namespace, name)
        .map(|a| a.project.clone())
        .unwrap_or_default();
    proto::AppRef {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        project,
    }
}

/// One resource of a selective sync.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct SyncResourceBody {
    #[serde(default)]
    group: String,
    kind: String,
    #[serde(default)]
    namespace: String,
    name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct SyncBody {
    revision: Option<String>,
    revisions: Option<Vec<String>>,
    /// 1-based source positions the `revisions` apply to.
    source_positions: Option<Vec<i64>>,
    prune: Option<bool>,
    dry_run: Option<bool>,
    /// `kubectl apply --force`.
    force: Option<bool>,
    /// Only these resources.
    resources: Option<Vec<SyncResourceBody>>,
    /// Sync options, e.g. `Validate=false`.
    sync_options: Option<Vec<String>>,
}

impl SyncBody {
    /// A sync to `revision` (or the app's target revision), nothing else.
    pub(super) fn to_revision(
        revision: Option<String>,
        revisions: Option<Vec<String>>,
        positions: Option<Vec<i64>>,
    ) -> Self {
        Self {
            revision,
            revisions,
            source_positions: positions,
            ..Self::default()
        }
    }

    /// Whether it asks for more than a gateway without `deploy-actions` can do.
    fn needs_deploy_actions(&self) -> bool {
        self.force == Some(true)
            || self.resources.as_ref().is_some_and(|r| !r.is_empty())
            || self.sync_options.as_ref().is_some_and(|o| !o.is_empty())
            || self.source_positions.as_ref().is_some_and(|p| !p.is_empty())
    }

    /// The wire request.
    pub(super) fn into_request(self, app: proto::AppRef) -> Result<proto::SyncRequest, ApiError> {
        let bad = |m: String| ApiError::with_body(StatusCode::BAD_REQUEST, json!({"error": m, "code": "invalid"}));
        let revisions = self.revisions.unwrap_or_default();
        let positions = self.source_positions.unwrap_or_default();
        if !positions.is_empty() && positions.len() != revisions.len() {
            return Err(bad(format!(
                "sourcePositions has {} entries but revisions has {}: give one 1-based position per revision",
                positions.len(),
                revisions.len()
            )));
        }
        if positions.iter().any(|p| *p < 1) {
            return Err(bad("sourcePositions are 1-based".into()));
        }
        let resources = self.resources.unwrap_or_default();
        if let Some(r) = resources.iter().find(|r| r.kind.is_empty() || r.name.is_empty()) {
            return Err(bad(format!("each resource needs kind and name: {r:?}")));
        }
        Ok(proto::SyncRequest {
            app: Some(app),
            revision: self.revision.unwrap_or_default(),
            revisions,
            prune: self.prune.unwrap_or(false),
            dry_run: self.dry_run.unwrap_or(false),
            resources: resources
                .into_iter()
                .map(|r| proto::SyncResource {
                    group: r.group,
                    kind: r.kind,
                    namespace: r.namespace,
                    name: r.name,
                })
                .collect(),
            force: self.force.unwrap_or(false),
            sync_options: self.sync_options.unwrap_or_default(),
            source_positions: positions,
        })
    }
}

/// Forwards a sync; the wait's trigger uses it too.
pub(super) async fn forward_sync(
    state: &ApiState,
    id: &str,
    namespace: &str,
    name: &str,
    body: SyncBody,
) -> Result<Value, ApiError> {
    if body.needs_deploy_actions() {
        require_deploy_actions(state, id, "sync a subset of resources, force, or pass sync options")?;
    }
    // One revision for several sources is ambiguous: Argo CD would apply it to a source the
    // caller did not choose. The caller names the source by giving one revision per source.
    if body.revision.as_deref().is_some_and(|r| !r.is_empty())
        && let Some(app) = stored_app(state, id, namespace, name)
        && app.sources.len() > 1
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "{} has {} sources: give \"revisions\" with one revision per source instead of \"revision\" (the CLI: hub sync --revision REV --source POSITION|NAME)",
                app_key(namespace, name),
                app.sources.len()
            ),
        ));
    }
    let request = body.into_request(app_ref(state, id, namespace, name))?;
    tracing::info!(gateway_id = %id, app = %app_key(namespace, name), revision = %request.revision, resources = request.resources.len(), "sync requested");
    forward(&state.hub, id, request::Kind::Sync(request), REQUEST_DEADLINE)
        .await
        .map_err(failure)
}

pub(super) async fn sync(
    State(state): State<Arc<ApiState>>,
    Path((id, namespace, name)): Path<(String, String, String)>,
    body: Option<Json<SyncBody>>,
) -> Result<Json<Value>, ApiError> {
    ensure_gateway(&state, &id).await?;
    let b = body.map(|Json(b)| b).unwrap_or_default();
    forward_sync(&state, &id, &namespace, &name, b).await.map(Json)
}

/// `DELETE …/operation`: ends the running operation through Argo CD.
pub(super) async fn terminate(
    State(state): State<Arc<ApiState>>,
    Path((id, namespace, name)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    ensure_gateway(&state, &id).await?;
    require_deploy_actions(&state, &id, "terminate an operation")?;
    tracing::info!(gateway_id = %id, app = %app_key(&namespace, &name), "operation termination requested");
    forward_app(&state, &id, &namespace, &name, request::Kind::TerminateOperation)
        .await
        .map(Json)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RollbackBody {
    /// The history id to go back to.
    id: i64,
    prune: Option<bool>,
    dry_run: Option<bool>,
}

/// `POST …/rollback {"id"}`: syncs to the revision of a history entry through Argo CD.
pub(super) async fn rollback(
    State(state): State<Arc<ApiState>>,
    Path((id, namespace, name)): Path<(String, String, String)>,
    Json(body): Json<RollbackBody>,
) -> Result<Json<Value>, ApiError> {
    ensure_gateway(&state, &id).await?;
    require_deploy_actions(&state, &id, "roll back")?;
    tracing::info!(gateway_id = %id, app = %app_key(&namespace, &name), history_id = body.id, "rollback requested");
    forward_app(&state, &id, &namespace, &name, |app| {
        request::Kind::Rollback(proto::RollbackRequest {
            app: Some(app),
            id: body.id,
            prune: body.prune.unwrap_or(false),
            dry_run: body.dry_run.unwrap_or(false),
        })
    })
    .await
    .map(Json)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RefreshBody {
    hard: Option<bool>,
}

pub(super) async fn refresh(
    State(state): State<Arc<ApiState>>,
    Path((id, namespace, name)): Path<(String, String, String)>,
    body: Option<Json<RefreshBody>>,
) -> Result<Json<Value>, ApiError> {
    ensure_gateway(&state, &id).await?;
    let hard = body.and_then(|Json(b)| b.hard).unwrap_or(false);
    forward_app(&state, &id, &namespace, &name, |app| {
        request::Kind::Refresh(proto::RefreshRequest { app: Some(app), hard })
    })
    .await
    .map(Json)
}

pub(super) async fn resource_tree(
    State(state): State<Arc<ApiState>>,
    Path((id, namespace, name)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    ensure_gateway(&state, &id).await?;
    forward_app(&state, &id, &namespace, &name, request::Kind::ResourceTree)
        .await
        .map(Json)
}

pub(super) async fn managed_resources(
    State(state): State<Arc<ApiState>>,
    Path((id, namespace, name)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    ensure_gateway(&state, &id).await?;
    forward_app(&state, &id, &namespace, &name, request::Kind::ManagedResources)
        .await
        .map(Json)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct EventsQuery {
    resource_namespace: Option<String>,
    resource_name: Option<String>,
    resource_uid: Option<String>,
}

pub(super) async fn events(
    State(state): State<Arc<ApiState>>,
    Path((id, namespace, name)): Path<(String, String, String)>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Value>, ApiError> {
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
pub(super) struct LogsQuery {
    pod_name: Option<String>,
    container: Option<String>,
    tail_lines: Option<u32>,
}

pub(super) async fn logs(
    State(state): State<Arc<ApiState>>,
    Path((id, namespace, name)): Path<(String, String, String)>,
    Query(q): Query<LogsQuery>,
) -> Result<Json<Value>, ApiError> {
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
