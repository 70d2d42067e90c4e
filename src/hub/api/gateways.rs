//! Registered gateways: list and show them with their connection, version (and whether an
//! update is available or held against the desired version), certificate expiry, application
//! counts by health and sync, relay lag, last health check, lifecycle state (connected,
//! disconnected, pending) and the entities the hub refused, plus removed gateways with when and
//! why; delete (revoke) one, closing its live session at once; run a health check now.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;

use super::applications::{ensure_gateway, failure};
use super::{ApiError, ApiResult, ApiState, rfc3339};
use crate::hub::fleet::{Counts, UpdateState, counts, update_state};
use crate::hub::health::run_health_check;
use crate::hub::store::GatewayRecord;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct GatewayView {
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
    applications: Counts,
    update: UpdateState,
    relay_lag_seconds: Option<f64>,
    /// Entities the hub refused from this gateway (limits, invalid items).
    refused: crate::hub::entities::Refusals,
    /// `connected`, `disconnected`, or `pending` (registered, never connected yet).
    state: &'static str,
    /// Why self-update holds back, and since when, as the gateway reported; null when it does
    /// not.
    update_held: Option<serde_json::Value>,
    /// With replicas on PostgreSQL: the hub replica holding the gateway's session.
    #[serde(skip_serializing_if = "Option::is_none")]
    replica: Option<String>,
    /// How the live session reaches the hub (`h2`, `websocket`; empty from older gateways or
    /// when disconnected).
    transport: String,
    /// The live session's gateway capabilities.
    capabilities: Vec<String>,
    /// ApplicationSets relayed.
    application_set_count: usize,
    /// Projects relayed.
    project_count: usize,
}

fn gateway_view(
    state: &ApiState,
    g: GatewayRecord,
    desired: Option<&str>,
    held: Option<&(String, i64)>,
) -> GatewayView {
    let live = state.hub.connection(&g.id);
    let lifecycle_state = if live.is_some() {
        "connected"
    } else if g.protocol_version == 0 {
        "pending"
    } else {
        "disconnected"
    };
    let last_seen = live
        .as_ref()
        .map(|s| s.last_seen.max(g.last_seen_at.unwrap_or(0)))
        .or(g.last_seen_at);
    let version = live.as_ref().map(|s| s.version.clone()).unwrap_or(g.version);
    let (application_count, applications) = state
        .hub
        .entities
        .with(&g.id, |e| (e.map(|e| e.apps.len()).unwrap_or(0), counts(e)));
    let (application_set_count, project_count) = state.hub.entities.with(&g.id, |e| {
        e.map(|e| (e.appsets.len(), e.projects.len())).unwrap_or_default()
    });
    GatewayView {
        connected: live.is_some(),
        last_seen_at: rfc3339(last_seen),
        // A hold the gateway reports (a GitOps controller owns its Deployment) outranks what
        // the versions alone say.
        update: match held {
            Some((reason, _)) => UpdateState::held(desired, reason),
            None => update_state(&version, desired),
        },
        relay_lag_seconds: state.hub.fleet.lag(&g.id),
        applications,
        version,
        protocol_version: live.as_ref().map(|s| s.protocol_version).unwrap_or(g.protocol_version),
        certificate_expires_at: rfc3339(g.certificate_expires_at),
        registered_at: rfc3339(Some(g.created_at)),
        application_count,
        refused: state
            .hub
            .entities
            .with(&g.id, |e| e.map(|e| e.refused.clone()).unwrap_or_default()),
        health: state.hub.health.get(&g.id),
        state: lifecycle_state,
        update_held: held.map(|(reason, since)| serde_json::json!({"reason": reason, "since": rfc3339(Some(*since))})),
        replica: live.as_ref().and_then(|l| l.replica.clone()),
        transport: live.as_ref().map(|s| s.transport.clone()).unwrap_or_default(),
        capabilities: live.as_ref().map(|s| s.capabilities.clone()).unwrap_or_default(),
        application_set_count,
        project_count,
        id: g.id,
        name: g.name,
        environments: g.environments,
        argocd_web_url: g.argocd_web_url,
    }
}

async fn desired_version(state: &ApiState) -> ApiResult<Option<String>> {
    Ok(state.hub.store.setting(super::version::SETTING_KEY).await?)
}

pub(super) async fn list_gateways(State(state): State<Arc<ApiState>>) -> ApiResult<Json<serde_json::Value>> {
    let desired = desired_version(&state).await?;
    let holds = state.hub.store.update_holds().await?;
    let mut items: Vec<serde_json::Value> = state
        .hub
        .store
        .gateways()
        .await?
        .into_iter()
        .map(|g| {
            let held = holds.get(&g.id);
            serde_json::to_value(gateway_view(&state, g, desired.as_deref(), held)).unwrap_or_default()
        })
        .collect();
    // Removed gateways stay listed with when and why, so a gateway that vanished is explained.
    items.extend(super::registrations::removed_views(&state).await?);
    Ok(Json(serde_json::json!({ "items": items })))
}

pub(super) async fn get_gateway(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<GatewayView>> {
    let desired = desired_version(&state).await?;
    match state.hub.store.gateway(id.clone()).await? {
        Some(g) => {
            let holds = state.hub.store.update_holds().await?;
            let held = holds.get(&g.id);
            Ok(Json(gateway_view(&state, g, desired.as_deref(), held)))
        }
        None => Err(super::registrations::not_found_gateway(&state, &id).await),
    }
}

pub(super) async fn delete_gateway(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let reason = "deleted at the hub (hub gateway delete)".to_owned();
    if crate::hub::lifecycle::remove(&state.hub, &id, reason, false)
        .await?
        .is_none()
    {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no gateway {id}")));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/gateways/{id}/health-check`: health-check a gateway now.
pub(super) async fn health_check(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    ensure_gateway(&state, &id).await?;
    run_health_check(&state.hub, &id).await.map(Json).map_err(failure)
}
