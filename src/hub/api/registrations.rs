//! The install's progress as the API shows it: `GET /api/v1/registration-tokens/{id}` lists the
//! steps of a registration token (created, used, connected, Argo CD reachable, first state
//! received, first health check passed), each done, pending or failed with the reason; and the
//! removed gateways that the gateway list keeps showing, with when and why.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, ApiState, rfc3339};
use crate::hub::lifecycle::{self, STEPS};
use crate::hub::store::{StepRecord, TokenRecord};

/// One step of a registration, as served.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StepView {
    /// Step name (`created`, `used`, `connected`, `argocdReachable`, `firstState`,
    /// `firstHealthCheck`).
    pub step: &'static str,
    /// What the step means.
    pub title: &'static str,
    /// `done`, `pending` or `failed`.
    pub state: &'static str,
    /// When it was done or failed.
    pub at: Option<String>,
    /// Why it failed, or what it waits for.
    pub message: String,
}

/// The steps of a token from its record and the recorded steps, at `now`.
pub fn steps(token: &TokenRecord, recorded: &[StepRecord], gateway_pending: bool, now: i64) -> Vec<StepView> {
    let find = |name: &str| recorded.iter().find(|r| r.step == name);
    STEPS
        .iter()
        .map(|(step, title)| {
            let mut view = StepView {
                step,
                title,
                state: "pending",
                at: None,
                message: String::new(),
            };
            if let Some(r) = find(step) {
                view.state = if r.state == "done" { "done" } else { "failed" };
                view.at = rfc3339(Some(r.at));
                view.message = r.message.clone();
            }
            match *step {
                lifecycle::CREATED => {
                    view.state = "done";
                    view.at = rfc3339(Some(token.created_at));
                }
                lifecycle::USED => {
                    if let Some(used) = token.used_at {
                        view.state = "done";
                        view.at = rfc3339(Some(used));
                        view.message = String::new();
                    } else if token.expires_at <= now {
                        view.state = "failed";
                        view.at = rfc3339(Some(token.expires_at));
                        let before = if view.message.is_empty() {
                            String::new()
                        } else {
                            format!(" (last attempt: {})", view.message)
                        };
                        view.message = format!(
                            "the token expired before any gateway registered with it{before}; create a new one with `argocd-gateway hub token create`"
                        );
                    } else if view.state == "pending" {
                        view.message = format!(
                            "waiting for the gateway's registration (helm install); the token expires at {}",
                            rfc3339(Some(token.expires_at)).unwrap_or_default()
                        );
                    }
                }
                lifecycle::CONNECTED if view.state == "pending" && gateway_pending => {
                    view.message = format!(
                        "registered, not connected yet; the registration is removed if the gateway does not connect by {}",
                        rfc3339(Some(token.expires_at)).unwrap_or_default()
                    );
                }
                _ => {}
            }
            view
        })
        .collect()
}

/// `GET /api/v1/registration-tokens/{id}`: the token (never its secret) and its steps.
pub(super) async fn token_status(State(state): State<Arc<ApiState>>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let Some(token) = state.hub.store.token(id.clone()).await? else {
        return Err(ApiError::with_body(
            StatusCode::NOT_FOUND,
            json!({"error": format!("no registration token {id}"), "code": "not_found"}),
        ));
    };
    let recorded = state.hub.store.token_steps(id).await?;
    let gateway_pending = match &token.gateway_id {
        Some(g) => state
            .hub
            .store
            .gateway(g.clone())
            .await?
            .is_some_and(|g| g.protocol_version == 0),
        None => false,
    };
    let now = jiff::Timestamp::now().as_second();
    let steps = steps(&token, &recorded, gateway_pending, now);
    let failed = steps
        .iter()
        .find(|s| s.state == "failed")
        .map(|s| json!({"step": s.step, "title": s.title, "message": s.message}));
    let complete = steps.iter().all(|s| s.state == "done");
    Ok(Json(json!({
        "id": token.id,
        "name": token.name,
        "environments": token.environments,
        "gatewayId": token.gateway_id,
        "createdAt": rfc3339(Some(token.created_at)),
        "expiresAt": rfc3339(Some(token.expires_at)),
        "usedAt": rfc3339(token.used_at),
        "complete": complete,
        "failed": failed,
        "steps": steps,
    })))
}

/// Removed gateways as gateway-list items (`state: removed`, `removedAt`, `removedReason`).
pub(super) async fn removed_views(state: &ApiState) -> ApiResult<Vec<Value>> {
    Ok(state
        .hub
        .store
        .removed_gateways()
        .await?
        .into_iter()
        .map(|r| {
            json!({
                "id": r.id,
                "name": r.name,
                "environments": r.environments,
                "connected": false,
                "state": "removed",
                "registeredAt": rfc3339(Some(r.registered_at)),
                "removedAt": rfc3339(Some(r.removed_at)),
                "removedReason": r.reason,
            })
        })
        .collect())
}

/// The 404 for a gateway that is not registered, saying when and why it was removed if it was.
pub(super) async fn not_found_gateway(state: &ApiState, id: &str) -> ApiError {
    let removed = match state.hub.store.removed_gateways().await {
        Ok(list) => list.into_iter().find(|r| r.id == id),
        Err(e) => return e.into(),
    };
    match removed {
        Some(r) => ApiError::with_body(
            StatusCode::NOT_FOUND,
            json!({
                "error": format!(
                    "gateway {id} was removed at {}: {}",
                    rfc3339(Some(r.removed_at)).unwrap_or_default(),
                    r.reason
                ),
                "code": "not_found",
                "removedAt": rfc3339(Some(r.removed_at)),
                "removedReason": r.reason,
            }),
        ),
        None => ApiError::new(StatusCode::NOT_FOUND, format!("no gateway {id}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(used: Option<i64>, expires_at: i64) -> TokenRecord {
        TokenRecord {
            id: "t".into(),
            name: "n".into(),
            environments: vec![],
            created_at: 100,
            expires_at,
            used_at: used,
            gateway_id: used.map(|_| "gw-1".into()),
        }
    }

    fn rec(step: &str, state: &str, message: &str) -> StepRecord {
        StepRecord {
            step: step.into(),
            state: state.into(),
            message: message.into(),
            at: 150,
        }
    }

    #[test]
    fn steps_in_order_with_failures_and_expiry() {
        let fresh = steps(&token(None, 1000), &[], false, 200);
        let names: Vec<&str> = fresh.iter().map(|s| s.step).collect();
        assert_eq!(
            names,
            [
                "created",
                "used",
                "connected",
                "argocdReachable",
                "firstState",
                "firstHealthCheck"
            ]
        );
        assert_eq!(fresh[0].state, "done");
        assert!(fresh[1..].iter().all(|s| s.state == "pending"));
        assert!(fresh[1].message.contains("expires at"));

        // A preflight failure shows on the used step; expiry says so and keeps the reason.
        let preflight = [rec("used", "failed", "the registration preflight failed: TLS")];
        assert_eq!(steps(&token(None, 1000), &preflight, false, 200)[1].state, "failed");
        let expired = steps(&token(None, 1000), &preflight, false, 2000);
        assert_eq!(expired[1].state, "failed");
        assert!(expired[1].message.contains("expired") && expired[1].message.contains("TLS"));

        // Used: done even when a preflight had failed before.
        let used = steps(&token(Some(300), 1000), &preflight, true, 400);
        assert_eq!((used[1].state, used[1].message.as_str()), ("done", ""));
        assert!(used[2].message.contains("removed if the gateway does not connect"));
        let all = [
            rec("connected", "done", ""),
            rec("argocdReachable", "done", ""),
            rec("firstState", "done", ""),
            rec("firstHealthCheck", "failed", "token can get applications: no"),
        ];
        let s = steps(&token(Some(300), 1000), &all, false, 400);
        assert_eq!(s[5].state, "failed");
        assert!(s[..5].iter().all(|s| s.state == "done"));
    }
}
