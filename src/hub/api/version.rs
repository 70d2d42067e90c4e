//! The desired gateway version: the hub's operator sets it (`PUT /api/v1/desired-version`, or
//! `argocd-gateway hub desired-version set X`), and each gateway's `self-update` CronJob asks for
//! it over its authenticated gRPC channel (`Registration/GetDesiredVersion`, in
//! [`crate::hub::registration`]). Gateways decide for themselves whether to move: only upward and
//! within their major version.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{MethodRouter, get};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiState};
use crate::wire::version::parse;

/// The settings key holding the version.
pub const SETTING_KEY: &str = "desired_gateway_version";

/// `GET` and `PUT /api/v1/desired-version`.
pub fn routes() -> MethodRouter<Arc<ApiState>> {
    get(get_version).put(put_version)
}

/// The API's representation.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DesiredVersion {
    /// A semantic version such as `1.4.2`; `null` when none is set.
    pub version: Option<String>,
}

async fn get_version(State(state): State<Arc<ApiState>>) -> Result<Json<DesiredVersion>, ApiError> {
    let version = state.hub.store.setting(SETTING_KEY).await?;
    Ok(Json(DesiredVersion { version }))
}

async fn put_version(
    State(state): State<Arc<ApiState>>,
    body: Result<Json<DesiredVersion>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<DesiredVersion>, ApiError> {
    let bad = |msg: String| ApiError::new(StatusCode::BAD_REQUEST, msg);
    let Json(body) = body.map_err(|e| bad(format!("expected {{\"version\": \"x.y.z\"}}: {}", e.body_text())))?;
    let text = body.version.unwrap_or_default();
    let version = parse(&text).map_err(|e| bad(format!("{text:?} is not a semantic version such as 1.4.2: {e}")))?;
    let canonical = version.to_string();
    state
        .hub
        .store
        .set_setting(SETTING_KEY, canonical.clone(), jiff::Timestamp::now().as_second())
        .await?;
    tracing::info!(version = %canonical, "desired gateway version set");
    Ok(Json(DesiredVersion {
        version: Some(canonical),
    }))
}
