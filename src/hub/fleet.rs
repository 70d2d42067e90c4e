//! The fleet at a glance: per-gateway application counts by health and sync, each gateway's
//! update state against the desired version, relay lag, and the fleet metrics the hub's
//! `/metrics` serves (computed at scrape time from the live state, so they cost nothing between
//! scrapes and never go stale).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use serde::Serialize;

use super::entities::GatewayEntities;
use super::sessions::LiveSession;
use super::state::HubState;
use super::store::GatewayRecord;
use crate::wire::version::{Decision, decide, parse};

/// Fleet-wide bookkeeping kept beside the hub state.
#[derive(Debug)]
pub struct Fleet {
    /// Last relay lag per gateway, seconds.
    lag: Mutex<HashMap<String, f64>>,
    /// Relay lag of every delta, across the fleet.
    pub lag_seconds: Histogram,
    /// Gateway records as of the last scrape (names, certificate expiry).
    gateways: Mutex<Vec<GatewayRecord>>,
    /// Whether to export one series per application (off by default, for cardinality).
    app_metrics: AtomicBool,
}

impl Default for Fleet {
    fn default() -> Self {
        Self {
            lag: Mutex::default(),
            lag_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            gateways: Mutex::default(),
            app_metrics: AtomicBool::new(false),
        }
    }
}

impl Fleet {
    /// Records a delta's relay lag: how long its oldest change waited at the gateway plus half
    /// the session's measured round trip.
    pub fn relay_lag(&self, gateway_id: &str, oldest_change_age_ms: u32, session: &LiveSession) {
        let rtt = session.rtt_ms.load(Ordering::Relaxed).max(0);
        let lag = (f64::from(oldest_change_age_ms) + rtt as f64 / 2.0) / 1000.0;
        self.lag_seconds.observe(lag);
        if let Ok(mut l) = self.lag.lock() {
            l.insert(gateway_id.to_owned(), lag);
        }
    }

    /// The last relay lag of a gateway, seconds.
    pub fn lag(&self, gateway_id: &str) -> Option<f64> {
        self.lag.lock().ok().and_then(|l| l.get(gateway_id).copied())
    }

    /// Turns the per-application series on or off.
    pub fn set_app_metrics(&self, on: bool) {
        self.app_metrics.store(on, Ordering::Relaxed);
    }

    /// Keeps the gateway records the next scrape reports.
    pub fn set_gateways(&self, gateways: Vec<GatewayRecord>) {
        if let Ok(mut g) = self.gateways.lock() {
            *g = gateways;
        }
    }
}

/// A status as a label or key: Argo CD's spelling, `Unknown` when none was reported.
fn status_key(s: &str) -> String {
    if s.is_empty() { "Unknown".into() } else { s.to_owned() }
}

/// Application counts of one gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// By health status.
    pub health: BTreeMap<String, usize>,
    /// By sync status.
    pub sync: BTreeMap<String, usize>,
}

/// Counts a gateway's applications by health and sync status.
pub fn counts(entities: Option<&GatewayEntities>) -> Counts {
    let mut c = Counts::default();
    for s in entities.into_iter().flat_map(|e| e.apps.values()) {
        *c.health.entry(status_key(s.item.health.status.as_str())).or_default() += 1;
        *c.sync.entry(status_key(s.item.sync.status.as_str())).or_default() += 1;
    }
    c
}

/// Where a gateway stands against the desired version, with the rule `self-update` applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateState {
    /// `current`, `available`, `held` or `unknown` (no desired version, or no version known).
    pub state: &'static str,
    /// The desired version, if set.
    pub desired_version: Option<String>,
    /// Why, in a few words.
    pub reason: String,
}

/// The update state of a gateway running `current` when the hub wants `desired`.
pub fn update_state(current: &str, desired: Option<&str>) -> UpdateState {
    let desired_version = desired.map(str::to_owned);
    let unknown = |reason: &str| UpdateState {
        state: "unknown",
        desired_version: desired_version.clone(),
        reason: reason.to_owned(),
    };
    let Some(desired) = desired else {
        return unknown("no desired version is set");
    };
    let Ok(want) = parse(desired) else {
        return unknown("the desired version is not a semantic version");
    };
    let Ok(have) = parse(current) else {
        return unknown("the gateway has not reported a version yet");
    };
    let (state, reason) = match decide(&have, Some(&want)) {
        Decision::UpToDate | Decision::NotSet => ("current", "at the desired version".to_owned()),
        Decision::Upgrade => ("available", format!("self-update moves it to {want}")),
        Decision::RefuseDowngrade => (
            "held",
            format!("runs {have}, newer than {want}; self-update never downgrades"),
        ),
        Decision::RefuseMajor => (
            "held",
            format!("{want} is another major version; it needs `helm upgrade` with the new chart"),
        ),
        Decision::Held => ("held", "held by the gateway".to_owned()),
    };
    UpdateState {
        state,
        desired_version,
        reason,
    }
}

impl UpdateState {
    /// Held because the gateway reported so (`reason`, e.g. a GitOps controller owns its
    /// Deployment).
    pub fn held(desired: Option<&str>, reason: &str) -> Self {
        Self {
            state: "held",
            desired_version: desired.map(str::to_owned),
            reason: reason.to_owned(),
        }
    }
}

/// The fleet metrics, read from the hub state at each scrape.
pub struct FleetCollector {
    /// The hub state.
    pub state: Arc<HubState>,
}

impl std::fmt::Debug for FleetCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetCollector")
    }
}

type Labels = Vec<(&'static str, String)>;

fn gauge_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, f64)],
) -> Result<(), std::fmt::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in rows {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

impl prometheus_client::collector::Collector for FleetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let hub = &self.state;
        let records = hub.fleet.gateways.lock().map(|g| g.clone()).unwrap_or_default();
        let mut info = vec![];
        let mut connected = vec![];
        let mut last_seen = vec![];
        let mut cert = vec![];
        let mut by_health = vec![];
        let mut by_sync = vec![];
        let mut lag = vec![];
        let mut apps = vec![];
        let per_app = hub.fleet.app_metrics.load(Ordering::Relaxed);
        for g in &records {
            let id = || ("gateway_id", g.id.clone());
            let live = hub.connection(&g.id);
            let version = live
                .as_ref()
                .map(|s| s.version.clone())
                .unwrap_or_else(|| g.version.clone());
            info.push((
                vec![
                    id(),
                    ("name", g.name.clone()),
                    ("version", version),
                    ("environments", g.environments.join(",")),
                ],
                1.0,
            ));
            connected.push((vec![id()], if live.is_some() { 1.0 } else { 0.0 }));
            let seen = live
                .as_ref()
                .map(|s| s.last_seen.max(g.last_seen_at.unwrap_or(0)))
                .or(g.last_seen_at);
            if let Some(t) = seen {
                last_seen.push((vec![id()], t as f64));
            }
            if let Some(t) = g.certificate_expires_at {
                cert.push((vec![id()], t as f64));
            }
            if let Some(l) = hub.fleet.lag(&g.id) {
                lag.push((vec![id()], l));
            }
            hub.entities.with(&g.id, |e| {
                let c = counts(e);
                by_health.extend(c.health.into_iter().map(|(h, n)| (vec![id(), ("health", h)], n as f64)));
                by_sync.extend(c.sync.into_iter().map(|(s, n)| (vec![id(), ("sync", s)], n as f64)));
                if per_app {
                    for s in e.into_iter().flat_map(|e| e.apps.values()) {
                        let a = &s.item;
                        apps.push((
                            vec![
                                id(),
                                ("namespace", a.namespace.clone()),
                                ("name", a.name.clone()),
                                ("project", a.project.clone()),
                                ("health", status_key(a.health.status.as_str())),
                                ("sync", status_key(a.sync.status.as_str())),
                            ],
                            1.0,
                        ));
                    }
                }
            });
        }
        gauge_family(
            &mut encoder,
            "argocd_gateway_hub_gateway_info",
            "Registered gateways: name, version and environments (always 1)",
            &info,
        )?;
        gauge_family(
            &mut encoder,
            "argocd_gateway_hub_gateway_connected",
            "1 while the gateway has a live session",
            &connected,
        )?;
        gauge_family(
            &mut encoder,
            "argocd_gateway_hub_gateway_last_seen_timestamp_seconds",
            "When the hub last heard from the gateway, Unix seconds",
            &last_seen,
        )?;
        gauge_family(
            &mut encoder,
            "argocd_gateway_hub_gateway_certificate_expiry_timestamp_seconds",
            "When the gateway's newest client certificate expires, Unix seconds",
            &cert,
        )?;
        gauge_family(
            &mut encoder,
            "argocd_gateway_hub_gateway_applications_by_health",
            "The gateway's applications by health status",
            &by_health,
        )?;
        gauge_family(
            &mut encoder,
            "argocd_gateway_hub_gateway_applications_by_sync",
            "The gateway's applications by sync status",
            &by_sync,
        )?;
        gauge_family(
            &mut encoder,
            "argocd_gateway_hub_gateway_relay_lag_seconds",
            "Relay lag of the gateway's last delta: from the gateway seeing the change in Argo CD to the hub receiving it",
            &lag,
        )?;
        gauge_family(
            &mut encoder,
            "argocd_gateway_hub_application_status",
            "One series per application with its health and sync (hub serve --app-metrics)",
            &apps,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_states() {
        assert_eq!(update_state("1.2.0", Some("1.2.0")).state, "current");
        assert_eq!(update_state("1.2.0", Some("1.3.1")).state, "available");
        let major = update_state("1.2.0", Some("2.0.0"));
        assert_eq!(major.state, "held");
        assert!(major.reason.contains("helm upgrade"), "{major:?}");
        assert_eq!(update_state("1.4.0", Some("1.3.0")).state, "held");
        assert_eq!(update_state("1.2.0", None).state, "unknown");
        assert_eq!(update_state("", Some("1.2.0")).state, "unknown");
    }
}
