//! Health checks of gateways: on demand (`POST …/health-check`) and periodically for every
//! connected gateway; the last result per gateway is kept for the gateway listing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::requests::{REQUEST_DEADLINE, RequestFailure, forward};
use super::state::HubState;
use crate::wire::proto::{self, request};

/// The last health check result of each gateway.
#[derive(Debug, Default)]
pub struct HealthResults(Mutex<HashMap<String, Value>>);

impl HealthResults {
    /// The last result of a gateway, if any.
    pub fn get(&self, gateway_id: &str) -> Option<Value> {
        self.0.lock().ok().and_then(|h| h.get(gateway_id).cloned())
    }

    /// Records a gateway's last result (a check run here, or one another replica ran).
    pub fn record(&self, gateway_id: &str, result: Value) {
        if let Ok(mut h) = self.0.lock() {
            h.insert(gateway_id.to_owned(), result);
        }
    }
}

/// Runs a health check and records the result for the gateway listing.
pub async fn run_health_check(state: &HubState, id: &str) -> Result<Value, RequestFailure> {
    let mut result = forward(
        state,
        id,
        request::Kind::HealthCheck(proto::HealthCheckRequest {}),
        REQUEST_DEADLINE,
    )
    .await?;
    if let Some(rtt) = state.connection(id).and_then(|c| c.rtt_ms)
        && let Some(o) = result.as_object_mut()
    {
        o.insert("hubRoundTripMillis".into(), json!(rtt));
    }
    let checked_at = crate::util::rfc3339_now();
    if let Some(o) = result.as_object_mut() {
        o.insert("checkedAt".into(), json!(checked_at));
    }
    state.health.record(id, result.clone());
    super::lifecycle::on_health(state, id, &result).await;
    state.feed.health_checked(id, &result).await;
    Ok(result)
}

/// Health-checks every connected gateway every `interval`.
pub async fn periodic_health_checks(state: std::sync::Arc<HubState>, interval: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (id, _) in state.sessions.all() {
            if let Err(e) = run_health_check(&state, &id).await {
                tracing::warn!(gateway_id = %id, error = %e, "periodic health check failed");
            }
        }
    }
}
