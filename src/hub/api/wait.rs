//! `wait`: until an application is Synced and Healthy at a revision, its operation fails, or
//! the caller's timeout passes — the deployment-verification primitive.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::applications::{ensure_gateway, stored_app};
use super::{ApiError, ApiState};
use crate::wire::item::{Application, HealthStatusCode, OperationPhase, SyncStatusCode};

/// Longest `wait` accepted.
pub const MAX_WAIT: Duration = Duration::from_secs(6 * 3600);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct WaitBody {
    revision: Option<String>,
    timeout_seconds: u64,
}

/// The outcome of `wait` for an application's current state.
pub fn wait_verdict(app: &Application, revision: Option<&str>) -> Option<&'static str> {
    let matches_rev = |single: &str, many: &[String]| match revision {
        None => true,
        Some(want) => (!single.is_empty() && single.starts_with(want)) || many.iter().any(|r| r.starts_with(want)),
    };
    if app.sync.status == SyncStatusCode::Synced
        && app.health.status == HealthStatusCode::Healthy
        && matches_rev(&app.sync.revision, &app.sync.revisions)
    {
        return Some("Synced");
    }
    if let Some(op) = &app.operation
        && matches!(op.phase, OperationPhase::Failed | OperationPhase::Error)
        && matches_rev(&op.revision, &op.revisions)
    {
        return Some("Failed");
    }
    None
}

pub(super) async fn wait(
    State(state): State<Arc<ApiState>>,
    Path((id, namespace, name)): Path<(String, String, String)>,
    Json(body): Json<WaitBody>,
) -> Result<Json<Value>, ApiError> {
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
            && let Some(verdict) = wait_verdict(a.as_ref(), revision.as_deref())
        {
            return Ok(Json(json!({ "result": verdict, "application": a.as_ref() })));
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                return Ok(Json(json!({ "result": "Timeout", "application": app.as_deref() })));
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

    fn item(v: Value) -> Application {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn wait_verdicts() {
        let synced = item(
            json!({"sync": {"status": "Synced", "revision": "abc123"}, "health": {"status": "Healthy"}, "operation": null}),
        );
        assert_eq!(wait_verdict(&synced, Some("abc")), Some("Synced"));
        assert_eq!(wait_verdict(&synced, None), Some("Synced"));
        assert_eq!(wait_verdict(&synced, Some("def")), None);
        let multi =
            item(json!({"sync": {"status": "Synced", "revisions": ["x1", "def456"]}, "health": {"status": "Healthy"}}));
        assert_eq!(wait_verdict(&multi, Some("def456")), Some("Synced"));
        let failed = item(
            json!({"sync": {"status": "OutOfSync", "revision": "old"}, "health": {"status": "Degraded"},
            "operation": {"phase": "Failed", "revision": "def456"}}),
        );
        assert_eq!(wait_verdict(&failed, Some("def")), Some("Failed"));
        assert_eq!(wait_verdict(&failed, Some("zzz")), None);
        let progressing =
            item(json!({"sync": {"status": "Synced", "revision": "def"}, "health": {"status": "Progressing"}}));
        assert_eq!(wait_verdict(&progressing, Some("def")), None);
    }
}
