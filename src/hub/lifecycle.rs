//! The install lifecycle at the hub: the progress of each registration token (created, used,
//! gateway connected, Argo CD reachable, first state received, first health check passed),
//! registrations that never connect (shown as pending, removed when their token's lifetime
//! ends), removals with their reason, and gateways deregistering themselves.
//!
//! The services call in at a few points: [`on_registered`] after a token was used,
//! [`on_connected`] after a hello (the first one triggers a health check at once),
//! [`on_state`] after relayed state was stored, [`on_health`] with every health check result.
//! [`reap_pending`] is the hub's task that removes expired pending registrations.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::sessions::close_with;
use super::state::HubState;
use super::store::{GatewayRecord, StoreError};
use crate::wire::ErrorCode;
use crate::wire::proto::{hub_message, rejected};

/// Step: the token was created.
pub const CREATED: &str = "created";
/// Step: a gateway registered with the token.
pub const USED: &str = "used";
/// Step: that gateway opened its first session.
pub const CONNECTED: &str = "connected";
/// Step: its first health check reached Argo CD.
pub const ARGOCD_REACHABLE: &str = "argocdReachable";
/// Step: the hub received its first relayed state.
pub const FIRST_STATE: &str = "firstState";
/// Step: a health check passed (no failing probe).
pub const FIRST_HEALTH_CHECK: &str = "firstHealthCheck";

/// Every step in order, with the sentence shown for it.
pub const STEPS: [(&str, &str); 6] = [
    (CREATED, "registration token created"),
    (USED, "token used: the gateway registered"),
    (CONNECTED, "gateway connected to the hub"),
    (ARGOCD_REACHABLE, "Argo CD reachable from the gateway"),
    (FIRST_STATE, "first Argo CD state received"),
    (FIRST_HEALTH_CHECK, "first health check passed"),
];

/// What the lifecycle keeps in memory: gateways whose first state is awaited, and the reaper's
/// wake-up for new registrations.
#[derive(Debug, Default)]
pub struct Lifecycle {
    awaiting_state: Mutex<HashSet<String>>,
    wake_reaper: Notify,
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn log_store_error(what: &str, gateway_id: &str, e: &StoreError) {
    tracing::warn!(gateway_id = %gateway_id, error = %e, "could not record {what}");
}

/// A gateway registered with a token: the step is done, and the reaper learns the new pending
/// registration's deadline.
pub async fn on_registered(state: &HubState, token_id: &str) {
    if let Err(e) = state
        .store
        .record_step(token_id.to_owned(), USED, "done", String::new(), now())
        .await
    {
        log_store_error("the registration step", token_id, &e);
    }
    state.lifecycle.wake_reaper.notify_one();
}

/// A gateway said hello. The first time, the connection step is recorded; while its install
/// is not complete (also after a hub restart), a health check runs at once, so the install's
/// progress does not wait for the periodic one, and its first state is awaited.
pub async fn on_connected(state: &Arc<HubState>, gateway_id: &str) {
    if let Err(e) = state
        .store
        .record_gateway_step(gateway_id.to_owned(), CONNECTED, "done", String::new(), now(), true)
        .await
    {
        log_store_error("the connection step", gateway_id, &e);
        return;
    }
    let steps = match state.store.gateway_steps(gateway_id.to_owned()).await {
        Ok(Some(steps)) => steps,
        Ok(None) => return,
        Err(e) => {
            log_store_error("the registration steps", gateway_id, &e);
            return;
        }
    };
    let done = |step: &str| steps.iter().any(|s| s.step == step && s.state == "done");
    if !done(FIRST_STATE)
        && let Ok(mut awaiting) = state.lifecycle.awaiting_state.lock()
    {
        awaiting.insert(gateway_id.to_owned());
    }
    if done(ARGOCD_REACHABLE) && done(FIRST_HEALTH_CHECK) {
        return;
    }
    let state = state.clone();
    let id = gateway_id.to_owned();
    let tracker = state.tasks.clone();
    tracker.spawn(async move {
        if let Err(e) = super::health::run_health_check(&state, &id).await {
            tracing::info!(gateway_id = %id, error = %e, "first health check could not run");
        }
    });
}

/// Relayed state of a gateway was stored: the first time after its first connection, the
/// step is recorded. Cheap enough to call for every message.
pub fn on_state(state: &Arc<HubState>, gateway_id: &str) {
    let first = state
        .lifecycle
        .awaiting_state
        .lock()
        .map(|mut a| a.remove(gateway_id))
        .unwrap_or(false);
    if first {
        let state = state.clone();
        let id = gateway_id.to_owned();
        let tracker = state.tasks.clone();
        tracker.spawn(async move { record_first_state(&state, &id).await });
    }
}

async fn record_first_state(state: &HubState, gateway_id: &str) {
    if let Err(e) = state
        .store
        .record_gateway_step(gateway_id.to_owned(), FIRST_STATE, "done", String::new(), now(), false)
        .await
    {
        log_store_error("the first-state step", gateway_id, &e);
    }
}

/// The failing rows of a health check result, as one message.
fn failing_rows(result: &Value) -> Vec<String> {
    result
        .get("checks")
        .and_then(Value::as_array)
        .map(|rows| {
            rows.iter()
                .filter(|r| r.get("status").and_then(Value::as_str) == Some("fail"))
                .map(|r| {
                    let name = r.get("name").and_then(Value::as_str).unwrap_or("check");
                    let detail = r.get("detail").and_then(Value::as_str).unwrap_or("");
                    match r.get("fix").and_then(Value::as_str) {
                        Some(fix) => format!("{name}: {detail} (fix: {fix})"),
                        None => format!("{name}: {detail}"),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A health check result: records whether Argo CD was reachable and whether the check passed,
/// until each has passed once. A gateway with nothing to relay (no application, no cluster)
/// sends no state, so its first listing counts as its first state.
pub async fn on_health(state: &HubState, gateway_id: &str, result: &Value) {
    let failing = failing_rows(result);
    let reachable = result.pointer("/argocd/reachable").and_then(Value::as_bool) == Some(true);
    let url = result
        .pointer("/argocd/url")
        .and_then(Value::as_str)
        .unwrap_or("Argo CD");
    let (argocd_state, argocd_message) = if reachable {
        ("done", String::new())
    } else {
        let why = failing
            .first()
            .cloned()
            .unwrap_or_else(|| "the gateway could not reach it".into());
        ("failed", format!("the gateway cannot use Argo CD at {url}: {why}"))
    };
    let passed = reachable && failing.is_empty() && result.get("status").and_then(Value::as_str) != Some("Unhealthy");
    let (health_state, health_message) = if passed {
        ("done", String::new())
    } else if failing.is_empty() {
        ("failed", "the health check reported the gateway unhealthy".to_owned())
    } else {
        ("failed", failing.join("; "))
    };
    let t = now();
    for (step, st, message) in [
        (ARGOCD_REACHABLE, argocd_state, argocd_message),
        (FIRST_HEALTH_CHECK, health_state, health_message),
    ] {
        if let Err(e) = state
            .store
            .record_gateway_step(gateway_id.to_owned(), step, st, message, t, false)
            .await
        {
            log_store_error("a health step", gateway_id, &e);
        }
    }
    let listed = result.pointer("/view/applicationsListed").and_then(Value::as_bool) == Some(true);
    let empty = result.get("applications").and_then(Value::as_u64) == Some(0)
        && result.get("clusters").and_then(Value::as_u64) == Some(0);
    if listed && empty {
        let awaited = state
            .lifecycle
            .awaiting_state
            .lock()
            .map(|mut a| a.remove(gateway_id))
            .unwrap_or(false);
        if awaited {
            record_first_state(state, gateway_id).await;
        }
    }
}

/// Removes a gateway with a reason (kept in the gateway list), forgets its state and closes its
/// live session at once. With `only_pending`, a gateway that has connected meanwhile stays.
pub async fn remove(
    state: &HubState,
    gateway_id: &str,
    reason: String,
    only_pending: bool,
) -> Result<Option<GatewayRecord>, StoreError> {
    let removed = state
        .store
        .remove_gateway(gateway_id.to_owned(), reason.clone(), now(), only_pending)
        .await?;
    if removed.is_none() {
        return Ok(None);
    }
    state.entities.forget(gateway_id);
    state.feed.gateway_deleted(gateway_id, &reason).await;
    if let Some(session) = state.sessions.take(gateway_id) {
        let text = format!("gateway {gateway_id} was removed at the hub ({reason}); register again with a new token");
        close_with(
            &session,
            hub_message::Body::Rejected(crate::wire::proto::Rejected {
                retry_after_ms: 0,
                reason: rejected::Reason::Revoked as i32,
                message: text.clone(),
            }),
            ErrorCode::Revoked.status(tonic::Code::PermissionDenied, text),
        )
        .await;
    }
    tracing::info!(gateway_id = %gateway_id, reason = %reason, "gateway removed and its session closed");
    Ok(removed)
}

/// How long a removed gateway stays in the gateway list.
pub const REMOVALS_KEPT: Duration = Duration::from_secs(30 * 24 * 3600);

/// Removes registrations that never connected once their token's lifetime has ended, waking
/// at the next such deadline (or when a gateway registers), until `stop`; forgets removals
/// older than [`REMOVALS_KEPT`].
pub async fn reap_pending(state: Arc<HubState>, stop: CancellationToken) {
    loop {
        let t = now();
        let mut next = t + 60;
        if let Err(e) = state
            .store
            .prune_removed_gateways(t - REMOVALS_KEPT.as_secs() as i64)
            .await
        {
            tracing::warn!(error = %e, "cannot forget old gateway removals");
        }
        match state.store.pending_gateways().await {
            Ok(pending) => {
                for p in pending {
                    if p.expires_at > t {
                        next = next.min(p.expires_at);
                        continue;
                    }
                    let when = jiff::Timestamp::from_second(p.expires_at)
                        .map(|t| t.to_string())
                        .unwrap_or_default();
                    let reason = format!(
                        "registered but never connected before its registration token expired at {when}; the gateway's Argo CD or hub settings are likely wrong (see `kubectl logs` of the gateway)"
                    );
                    match remove(&state, &p.gateway.id, reason.clone(), true).await {
                        Ok(Some(_)) => {
                            if let Some(token) = p.token_id
                                && let Err(e) = state.store.record_step(token, CONNECTED, "failed", reason, t).await
                            {
                                log_store_error("the removal", &p.gateway.id, &e);
                            }
                        }
                        Ok(None) => {}
                        Err(e) => log_store_error("a pending removal", &p.gateway.id, &e),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list pending registrations"),
        }
        let wait = Duration::from_secs((next - now()).clamp(1, 60) as u64);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = state.lifecycle.wake_reaper.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
