//! Registered gateways: list and show them with their connection, version (and whether an
//! update is available or held against the desired version), certificate expiry, application
//! counts by health and sync, relay lag and last health check; delete (revoke) one, closing its
//! live session at once; run a health check now.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;

use super::applications::{ensure_gateway, failure};
use super::{ApiError, ApiResult, ApiState, rfc3339};
use crate::hub::fleet::{Counts, UpdateState, counts, update_state};
use crate::hub::health::run_health_check;
use crate::hub::sessions::close_with;
use crate::hub::store::GatewayRecord;
use crate::wire::ErrorCode;
use crate::wire::proto::{hub_message, rejected};

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
}

fn gateway_view(state: &ApiState, g: GatewayRecord, desired: Option<&str>) -> GatewayView {
    let live = state.hub.sessions.get(&g.id);
    let last_seen = live
        .as_ref()
        .map(|s| s.last_seen.load(std::sync::atomic::Ordering::Relaxed))
        .or(g.last_seen_at);
    let version = live.as_ref().map(|s| s.version.clone()).unwrap_or(g.version);
    let (application_count, applications) = state
        .hub
        .entities
        .with(&g.id, |e| (e.map(|e| e.apps.len()).unwrap_or(0), counts(e)));
    GatewayView {
        connected: live.is_some(),
        last_seen_at: rfc3339(last_seen),
        update: update_state(&version, desired),
        relay_lag_seconds: state.hub.fleet.lag(&g.id),
        applications,
        version,
        protocol_version: live.as_ref().map(|s| s.protocol_version).unwrap_or(g.protocol_version),
        certificate_expires_at: rfc3339(g.certificate_expires_at),
        registered_at: rfc3339(Some(g.created_at)),
        application_count,
        health: state.hub.health.get(&g.id),
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
    let items: Vec<GatewayView> = state
        .hub
        .store
        .gateways()
        .await?
        .into_iter()
        .map(|g| gateway_view(&state, g, desired.as_deref()))
        .collect();
    Ok(Json(serde_json::json!({ "items": items })))
}

pub(super) async fn get_gateway(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<GatewayView>> {
    let desired = desired_version(&state).await?;
    match state.hub.store.gateway(id.clone()).await? {
        Some(g) => Ok(Json(gateway_view(&state, g, desired.as_deref()))),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, format!("no gateway {id}"))),
    }
}

pub(super) async fn delete_gateway(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    if !state.hub.store.delete_gateway(id.clone()).await? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no gateway {id}")));
    }
    state.hub.entities.forget(&id);
    state.hub.feed.gateway_deleted(&id).await;
    if let Some(session) = state.hub.sessions.take(&id) {
        let text = format!("gateway {id} was deleted at the hub; register again with a new token");
        close_with(
            &session,
            hub_message::Body::Rejected(crate::wire::proto::Rejected {
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

/// `POST /api/v1/gateways/{id}/health-check`: health-check a gateway now.
pub(super) async fn health_check(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    ensure_gateway(&state, &id).await?;
    run_health_check(&state.hub, &id).await.map(Json).map_err(failure)
}
