//! ApplicationSets and AppProjects as relayed by gateways of protocol 3: lists across gateways
//! or of one, and one ApplicationSet with the applications it owns. An ApplicationSet links to
//! its applications (those its status lists, and those whose owner reference names it) and each
//! application item names its ApplicationSet (`applicationSet`), so both directions are one
//! lookup away.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::applications::{decorate, ensure_gateway};
use super::{ApiError, ApiState};
use crate::hub::entities::GatewayEntities;
use crate::wire::item::{Application, ApplicationSet, Project};

/// Filters of the lists.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    /// Only this gateway's.
    gateway: Option<String>,
    /// Only ApplicationSets whose template deploys to this project (ApplicationSets), or only
    /// this project (projects).
    project: Option<String>,
}

/// The applications of a gateway an ApplicationSet owns: those its status lists and those whose
/// owner reference names it, each once, as `{namespace, name, health, sync, known}` (`known`:
/// the gateway relays the application itself).
fn owned_applications(g: &GatewayEntities, a: &ApplicationSet) -> Vec<Value> {
    let mut out: BTreeMap<String, Value> = BTreeMap::new();
    for r in &a.resources {
        let key = format!("{}/{}", r.namespace, r.name);
        out.insert(
            key,
            json!({
                "namespace": r.namespace,
                "name": r.name,
                "sync": r.status,
                "health": r.health.as_ref().map(|h| h.status.clone()),
                "known": false,
            }),
        );
    }
    let linked = g
        .apps
        .iter()
        .filter(|(_, s)| s.item.application_set.as_deref() == Some(a.name.as_str()) && s.item.namespace == a.namespace);
    let listed = a
        .resources
        .iter()
        .filter_map(|r| g.apps.get_key_value(&format!("{}/{}", r.namespace, r.name)));
    for (key, s) in linked.chain(listed) {
        let app: &Application = &s.item;
        out.insert(
            key.clone(),
            json!({
                "namespace": app.namespace,
                "name": app.name,
                "sync": app.sync.status,
                "health": app.health.status,
                "known": true,
            }),
        );
    }
    out.into_values().collect()
}

fn appset_json(g: &GatewayEntities, a: &ApplicationSet, gateway_id: &str, stale: bool) -> Value {
    let mut v = decorate(a, gateway_id, stale);
    v["applications"] = Value::Array(owned_applications(g, a));
    v
}

/// The items `item` makes of each selected gateway's entities, gateways in id order, as a list
/// answer.
fn list_over<F>(state: &ApiState, gateway: Option<&str>, item: F) -> Value
where
    F: Fn(&GatewayEntities, &str, bool) -> Vec<Value>,
{
    let items: Vec<Value> = state.hub.entities.with_all(|all| {
        let mut gws: Vec<&String> = all.keys().filter(|gw| gateway.is_none_or(|g| g == *gw)).collect();
        gws.sort();
        gws.into_iter()
            .flat_map(|gw| item(&all[gw], gw, state.hub.sessions.get(gw).is_none()))
            .collect()
    });
    json!({ "total": items.len(), "items": items })
}

fn list_appsets(state: &ApiState, gateway: Option<&str>, q: &ListQuery) -> Value {
    list_over(state, gateway, |g, gw, stale| {
        g.appsets
            .values()
            .filter(|s| q.project.as_deref().is_none_or(|p| s.item.project == p))
            .map(|s| appset_json(g, &s.item, gw, stale))
            .collect()
    })
}

/// `GET /api/v1/applicationsets`.
pub(super) async fn list_all(State(state): State<Arc<ApiState>>, Query(q): Query<ListQuery>) -> Json<Value> {
    let gateway = q.gateway.clone().filter(|g| !g.is_empty());
    Json(list_appsets(&state, gateway.as_deref(), &q))
}

/// `GET /api/v1/gateways/{id}/applicationsets`.
pub(super) async fn list_gateway(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    ensure_gateway(&state, &id).await?;
    Ok(Json(list_appsets(&state, Some(&id), &q)))
}

/// `GET /api/v1/gateways/{id}/applicationsets/{namespace}/{name}`.
pub(super) async fn get_appset(
    State(state): State<Arc<ApiState>>,
    Path((id, namespace, name)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    ensure_gateway(&state, &id).await?;
    let stale = state.hub.sessions.get(&id).is_none();
    let key = format!("{namespace}/{name}");
    state
        .hub
        .entities
        .with(&id, |g| {
            let g = g?;
            g.appsets.get(&key).map(|s| appset_json(g, &s.item, &id, stale))
        })
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("gateway {id} has no ApplicationSet {namespace}/{name}"),
            )
        })
}

fn project_json(g: &GatewayEntities, p: &Project, gateway_id: &str, stale: bool) -> Value {
    let mut v = decorate(p, gateway_id, stale);
    v["applicationCount"] = json!(g.apps.values().filter(|s| s.item.project == p.name).count());
    v
}

fn list_projects(state: &ApiState, gateway: Option<&str>, q: &ListQuery) -> Value {
    list_over(state, gateway, |g, gw, stale| {
        g.projects
            .values()
            .filter(|s| q.project.as_deref().is_none_or(|p| s.item.name == p))
            .map(|s| project_json(g, &s.item, gw, stale))
            .collect()
    })
}

/// `GET /api/v1/projects`.
pub(super) async fn list_all_projects(State(state): State<Arc<ApiState>>, Query(q): Query<ListQuery>) -> Json<Value> {
    let gateway = q.gateway.clone().filter(|g| !g.is_empty());
    Json(list_projects(&state, gateway.as_deref(), &q))
}

/// `GET /api/v1/gateways/{id}/projects`.
pub(super) async fn list_gateway_projects(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    ensure_gateway(&state, &id).await?;
    Ok(Json(list_projects(&state, Some(&id), &q)))
}

/// `GET /api/v1/gateways/{id}/projects/{name}`.
pub(super) async fn get_project(
    State(state): State<Arc<ApiState>>,
    Path((id, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    ensure_gateway(&state, &id).await?;
    let stale = state.hub.sessions.get(&id).is_none();
    state
        .hub
        .entities
        .with(&id, |g| {
            let g = g?;
            g.projects.get(&name).map(|s| project_json(g, &s.item, &id, stale))
        })
        .map(Json)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("gateway {id} has no project {name}")))
}
