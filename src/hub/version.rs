//! The desired gateway version: the hub's operator sets it (`PUT /api/v1/desired-version`, or
//! `argocd-gateway hub desired-version set X`), and each gateway's `self-update` CronJob asks for
//! it over its authenticated gRPC channel (`Registration/GetDesiredVersion`). Gateways decide for
//! themselves whether to move: only upward and within their major version.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{MethodRouter, get};
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use super::api::{ApiError, ApiState, authorize};
use super::grpc::HubState;
use crate::identity::assertion::Purpose;
use crate::proto::{GetDesiredVersionRequest, GetDesiredVersionResponse};

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

/// Parses a version as operators write it: `1.4.2` or `v1.4.2`.
pub fn parse(text: &str) -> Result<semver::Version, semver::Error> {
    let t = text.trim();
    semver::Version::parse(t.strip_prefix('v').unwrap_or(t))
}

async fn get_version(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Result<Json<DesiredVersion>, ApiError> {
    authorize(&state, &headers)?;
    let version = state.hub.store.setting(SETTING_KEY).await?;
    Ok(Json(DesiredVersion { version }))
}

async fn put_version(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Result<Json<DesiredVersion>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<DesiredVersion>, ApiError> {
    authorize(&state, &headers)?;
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

/// `Registration/GetDesiredVersion`: the gateway proves who it is with a version-purpose
/// assertion, so an assertion captured here cannot open a tunnel or renew a certificate.
pub async fn desired_version_rpc(
    state: &HubState,
    request: Request<GetDesiredVersionRequest>,
) -> Result<Response<GetDesiredVersionResponse>, Status> {
    let gateway_id = state.authenticate(&request, Purpose::Version).await?;
    let version = state.store.setting(SETTING_KEY).await.map_err(|e| {
        tracing::error!(error = %e, "hub internal error");
        Status::internal("hub internal error")
    })?;
    tracing::info!(
        gateway_id = %gateway_id,
        current = %request.get_ref().current_version,
        desired = version.as_deref().unwrap_or("-"),
        "gateway asked for the desired version"
    );
    Ok(Response::new(GetDesiredVersionResponse {
        desired_version: version.unwrap_or_default(),
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_with_or_without_v() {
        assert_eq!(super::parse("v1.4.2").unwrap().to_string(), "1.4.2");
        assert_eq!(super::parse(" 2.0.0-rc.1 ").unwrap().to_string(), "2.0.0-rc.1");
        assert!(super::parse("latest").is_err());
        assert!(super::parse("").is_err());
    }
}
