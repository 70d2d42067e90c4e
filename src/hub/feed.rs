//! The fleet change feed: application upserts and deletions, gateway connects, disconnects,
//! deletions and health-check results, each with an id that only ever increases.
//!
//! The places where state changes publish here ([`Feed`]): the entity state after applying a
//! snapshot or delta, the tunnel when a session starts and ends, the health checks, the API when
//! a gateway is deleted. One recorder task ([`Recorder`]) turns them into events and timeline
//! points, writes both in one transaction — the store assigns the ids, so they are durable and
//! increase across restarts — and only then broadcasts the events to live subscribers, in id
//! order. Publishing waits when the recorder falls behind (the channel is bounded), which slows
//! the gateways' acknowledgements instead of losing events or growing memory.
//!
//! The store keeps a bounded backlog (`--feed-backlog` events, `--feed-max-age`); a subscriber
//! resumes from any id still in it ([`Feed::replay`]) and is told plainly when it is not
//! ([`ReplayError::Gone`]). The HTTP endpoint is `api::events`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::store::{FeedBounds, FeedEventRow, NewFeedEvent, Store, StoreError, TimelineRow};
use super::timeline;
use crate::wire::item::Application;

/// How much history the hub keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Change-feed events kept for resuming subscribers.
    pub feed_backlog: u64,
    /// Change-feed events older than this are dropped.
    pub feed_max_age: Duration,
    /// Timeline points kept per application.
    pub timeline_per_app: usize,
    /// Timeline points older than this are dropped.
    pub timeline_max_age: Duration,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            feed_backlog: 100_000,
            feed_max_age: Duration::from_secs(7 * 24 * 3600),
            timeline_per_app: 500,
            timeline_max_age: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// The kinds of events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// An application appeared or changed.
    AppUpserted,
    /// An application was deleted.
    AppDeleted,
    /// A gateway's session started.
    GatewayConnected,
    /// A gateway's session ended.
    GatewayDisconnected,
    /// A health check of a gateway finished.
    GatewayHealth,
    /// A gateway was deleted (revoked) at the hub; its applications are gone with it.
    GatewayDeleted,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 6] = [
        Self::AppUpserted,
        Self::AppDeleted,
        Self::GatewayConnected,
        Self::GatewayDisconnected,
        Self::GatewayHealth,
        Self::GatewayDeleted,
    ];

    /// The `type` (and SSE `event`) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AppUpserted => "application.upserted",
            Self::AppDeleted => "application.deleted",
            Self::GatewayConnected => "gateway.connected",
            Self::GatewayDisconnected => "gateway.disconnected",
            Self::GatewayHealth => "gateway.health",
            Self::GatewayDeleted => "gateway.deleted",
        }
    }

    /// From a `type` name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether the event is about one application.
    pub fn is_application(self) -> bool {
        matches!(self, Self::AppUpserted | Self::AppDeleted)
    }
}

/// A recorded event, as live subscribers receive it.
#[derive(Debug)]
pub struct Event {
    /// Monotonically increasing id.
    pub id: i64,
    /// What happened.
    pub kind: EventKind,
    /// The gateway it concerns.
    pub gateway_id: String,
    /// The event as served (with `id`), the application in full.
    pub full: Arc<str>,
    /// The same with the application summarised (no resources or images), for views that
    /// show many applications.
    pub summary: Arc<str>,
    /// The application after the change (or as last known, for a deletion).
    pub app: Option<Arc<Application>>,
    /// Health and sync status before the change, when the application existed.
    pub previous: Option<(String, String)>,
}

/// One application change seen by the entity state.
#[derive(Debug, Clone)]
pub struct AppChange {
    /// `namespace/name`.
    pub key: String,
    /// The item before (none: new).
    pub before: Option<Arc<Application>>,
    /// The item after (none: deleted).
    pub after: Option<Arc<Application>>,
}

impl Input {
    /// Events it makes at most.
    fn len(&self) -> usize {
        match self {
            Input::Apps { changes, .. } => changes.len(),
            Input::Gateway { .. } => 1,
        }
    }
}

enum Input {
    Apps {
        gateway_id: String,
        at_ms: i64,
        changes: Vec<AppChange>,
    },
    Gateway {
        gateway_id: String,
        at_ms: i64,
        kind: EventKind,
        body: Map<String, Value>,
    },
}

/// Why a subscriber cannot resume.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The events after the id were pruned (or the id was never issued by this hub).
    #[error(
        "event id {since} is no longer in the hub's backlog (it keeps events after {pruned_through}, newest {last}): list the current state again and follow the feed from the newest id"
    )]
    Gone {
        /// The id asked for.
        since: i64,
        /// Everything up to this id is gone.
        pruned_through: i64,
        /// The newest id.
        last: i64,
    },
    /// Reading the backlog failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Queued publications before publishers wait for the recorder.
const QUEUE: usize = 1024;
/// Live events buffered before a slow subscriber has to catch up from the store. The ring
/// keeps every slot filled (each event with its full and summary JSON and the item, about
/// 13 KB for a real-sized application), so 4,096 held some 50 MB on a busy hub; 1,024 is four
/// recorder batches, and a subscriber that falls further behind loses nothing (it replays).
const LIVE_BUFFER: usize = 1024;
/// Publications the recorder writes in one transaction at most.
const BATCH: usize = 256;

/// The feed's publishing and subscribing side; cheap to clone.
#[derive(Clone)]
pub struct Feed {
    tx: mpsc::Sender<Input>,
    live: broadcast::Sender<Arc<Event>>,
    store: Store,
}

/// The task that records and broadcasts what was published.
pub struct Recorder {
    rx: mpsc::Receiver<Input>,
    live: broadcast::Sender<Arc<Event>>,
    store: Store,
    config: HistoryConfig,
    broadcast: bool,
}

/// What [`Feed::broadcast_recorded`] passed on.
#[derive(Debug, Default)]
pub struct Followed {
    /// The newest id passed on (the cursor to follow from).
    pub last: i64,
    /// How many events were read.
    pub events: usize,
    /// The health-check results among them, by gateway.
    pub health: Vec<(String, Value)>,
}

fn now_ms() -> i64 {
    crate::util::unix_ms_now()
}

/// The summary of an application's JSON: the same without the resource list and images (with
/// their count instead), for lists and live views of many applications.
pub fn summarize(mut app: Value) -> Value {
    if let Some(o) = app.as_object_mut() {
        let resources = o.remove("resources");
        let count = resources.as_ref().and_then(Value::as_array).map_or(0, Vec::len);
        o.remove("images");
        o.insert("resourceCount".into(), json!(count));
    }
    app
}

/// [`summarize`] of the feed's application JSON, serialised straight from the typed item: every field but
/// the resources and images, borrowed. The feed writes one of these per change, so it goes
/// through no `Value` (a test keeps its fields equal to [`summarize`]'s).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct AppSummary<'a> {
    namespace: &'a str,
    name: &'a str,
    project: &'a str,
    annotations: &'a crate::wire::item::StrMap,
    labels: &'a crate::wire::item::StrMap,
    sources: &'a [crate::wire::item::Source],
    destination: &'a crate::wire::item::Destination,
    sync: &'a crate::wire::item::SyncState,
    health: &'a crate::wire::item::Health,
    operation: &'a Option<crate::wire::item::Operation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sync_policy: &'a Option<crate::wire::item::SyncPolicy>,
    history: &'a [crate::wire::item::HistoryEntry],
    reconciled_at: &'a Option<jiff::Timestamp>,
    conditions: &'a [crate::wire::item::Condition],
    #[serde(skip_serializing_if = "Option::is_none")]
    application_set: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    undecodable: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    too_large: &'a Option<crate::wire::item::TooLarge>,
    resource_count: usize,
    gateway_id: &'a str,
}

impl<'a> AppSummary<'a> {
    fn of(app: &'a Application, gateway_id: &'a str) -> Self {
        // Destructured, so a field added to the item fails to compile here until it is
        // placed in the summary or left out on purpose.
        let Application {
            namespace,
            name,
            project,
            annotations,
            labels,
            sources,
            destination,
            sync,
            health,
            operation,
            sync_policy,
            history,
            reconciled_at,
            resources,
            images: _,
            conditions,
            application_set,
            undecodable,
            too_large,
        } = app;
        AppSummary {
            namespace,
            name,
            project,
            annotations,
            labels,
            sources,
            destination,
            sync,
            health,
            operation,
            sync_policy,
            history,
            reconciled_at,
            conditions,
            application_set,
            undecodable,
            too_large,
            resource_count: resources.len(),
            gateway_id,
        }
    }
}

/// An application as the feed serves it: the relayed item plus `gatewayId` (`summary`: as
/// [`summarize`] makes it), without a `Value` in between.
fn app_text(app: &Application, gateway_id: &str, summary: bool) -> String {
    let text = if summary {
        serde_json::to_string(&AppSummary::of(app, gateway_id))
    } else {
        serde_json::to_string(app).map(|mut s| {
            // The item is a JSON object: its closing brace makes room for the gateway.
            s.pop();
            s.push_str(",\"gatewayId\":");
            s.push_str(&Value::from(gateway_id).to_string());
            s.push('}');
            s
        })
    };
    // Serialising a struct of strings, numbers and maps into a String cannot fail.
    text.unwrap_or_else(|_| "{}".to_owned())
}

/// An event body (a JSON object's text) with `application` added as JSON text.
fn with_application(mut body: String, app: &str) -> String {
    body.pop();
    if body.len() > 1 {
        body.push(',');
    }
    body.push_str("\"application\":");
    body.push_str(app);
    body.push('}');
    body
}

/// Puts the id first into an event body serialised without one.
fn with_id(id: i64, body: &str) -> Arc<str> {
    match body.strip_prefix('{') {
        Some(rest) if rest.trim_start().starts_with('}') => Arc::from(format!("{{\"id\":{id}}}")),
        Some(rest) => Arc::from(format!("{{\"id\":{id},{rest}")),
        None => Arc::from(body),
    }
}

impl Feed {
    /// A feed over `store` and the recorder that must run for it (see [`Recorder::run`]).
    pub fn new(store: Store, config: HistoryConfig) -> (Feed, Recorder) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        (
            Feed {
                tx,
                live: live.clone(),
                store: store.clone(),
            },
            Recorder {
                rx,
                live,
                store,
                config,
                broadcast: true,
            },
        )
    }

    /// Broadcasts the recorded events after `after` (at most `limit`) to live subscribers, in id
    /// order: with replicas, every replica's events reach every replica's subscribers this way,
    /// once committed (see [`Recorder::followed`]).
    pub async fn broadcast_recorded(&self, after: i64, limit: usize) -> Result<Followed, StoreError> {
        let (rows, _) = self.store.feed_events_after(after, limit).await?;
        let mut followed = Followed {
            last: after,
            events: rows.len(),
            health: vec![],
        };
        for row in rows {
            followed.last = row.id;
            let Some(event) = stored_event(row) else { continue };
            if event.kind == EventKind::GatewayHealth
                && let Some(h) = serde_json::from_str::<Value>(&event.full)
                    .ok()
                    .and_then(|mut v| v.get_mut("health").map(Value::take))
            {
                followed.health.push((event.gateway_id.clone(), h));
            }
            let _ = self.live.send(Arc::new(event));
        }
        Ok(followed)
    }

    async fn publish(&self, input: Input) {
        // Fails only once the recorder has stopped, when the hub is shutting down.
        if self.tx.send(input).await.is_err() {
            tracing::debug!("change feed recorder stopped; event not recorded");
        }
    }

    /// Publishes application changes of a gateway (in the order they were applied).
    pub async fn applications(&self, gateway_id: &str, mut changes: Vec<AppChange>) {
        let at_ms = now_ms();
        // In pieces of at most one batch: a snapshot of 10,000 applications written as one
        // batch held all their event JSON at once (about 100 MB), which glibc then kept.
        while !changes.is_empty() {
            let rest = changes.split_off(changes.len().min(BATCH));
            self.publish(Input::Apps {
                gateway_id: gateway_id.to_owned(),
                at_ms,
                changes: std::mem::replace(&mut changes, rest),
            })
            .await;
        }
    }

    async fn gateway(&self, gateway_id: &str, kind: EventKind, body: Value) {
        let body = match body {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        self.publish(Input::Gateway {
            gateway_id: gateway_id.to_owned(),
            at_ms: now_ms(),
            kind,
            body,
        })
        .await;
    }

    /// A gateway's session started.
    pub async fn gateway_connected(&self, gateway_id: &str, version: &str, protocol_version: u32, session_id: &str) {
        let body =
            json!({"gateway": {"version": version, "protocolVersion": protocol_version, "sessionId": session_id}});
        self.gateway(gateway_id, EventKind::GatewayConnected, body).await;
    }

    /// A gateway's session ended.
    pub async fn gateway_disconnected(&self, gateway_id: &str, reason: &str) {
        self.gateway(gateway_id, EventKind::GatewayDisconnected, json!({ "reason": reason }))
            .await;
    }

    /// A health check of a gateway finished with `result`.
    pub async fn health_checked(&self, gateway_id: &str, result: &Value) {
        self.gateway(gateway_id, EventKind::GatewayHealth, json!({ "health": result }))
            .await;
    }

    /// A gateway was deleted at the hub.
    pub async fn gateway_deleted(&self, gateway_id: &str, reason: &str) {
        self.gateway(gateway_id, EventKind::GatewayDeleted, json!({ "reason": reason }))
            .await;
    }

    /// Live events from now on. Subscribe before reading [`Feed::bounds`] or replaying, so
    /// nothing falls between the two.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.live.subscribe()
    }

    /// What the backlog holds.
    pub async fn bounds(&self) -> Result<FeedBounds, StoreError> {
        self.store.feed_bounds().await
    }

    /// Up to `limit` events after `after` from the backlog, oldest first; [`ReplayError::Gone`]
    /// when events after `after` were pruned or `after` was never issued.
    pub async fn replay(&self, after: i64, limit: usize) -> Result<Vec<Arc<Event>>, ReplayError> {
        let (rows, bounds) = self.store.feed_events_after(after, limit).await?;
        if after < bounds.pruned_through || after > bounds.last {
            return Err(ReplayError::Gone {
                since: after,
                pruned_through: bounds.pruned_through,
                last: bounds.last,
            });
        }
        Ok(rows.into_iter().filter_map(stored_event).map(Arc::new).collect())
    }
}

/// An event read back from the store.
fn stored_event(row: FeedEventRow) -> Option<Event> {
    use serde_json::value::RawValue;
    #[derive(serde::Deserialize)]
    struct Previous {
        #[serde(default)]
        health: String,
        #[serde(default)]
        sync: String,
    }
    let kind = EventKind::parse(&row.event.kind)?;
    // Borrowed raw parts: only the application is decoded, once, into the typed item.
    let parts: std::collections::BTreeMap<String, &RawValue> = serde_json::from_str(&row.event.json).ok()?;
    let app = parts
        .get("application")
        .and_then(|a| serde_json::from_str::<Application>(a.get()).ok())
        .map(Arc::new);
    let previous = parts
        .get("previous")
        .and_then(|p| serde_json::from_str::<Previous>(p.get()).ok())
        .map(|p| (p.health, p.sync));
    let summary = match &app {
        Some(a) if kind.is_application() => {
            // The stored body with its application replaced by the summary, as served live.
            let rest: std::collections::BTreeMap<&str, &RawValue> = parts
                .iter()
                .filter(|(k, _)| *k != "application")
                .map(|(k, v)| (k.as_str(), *v))
                .collect();
            let rest = serde_json::to_string(&rest).ok()?;
            with_id(
                row.id,
                &with_application(rest, &app_text(a, &row.event.gateway_id, true)),
            )
        }
        _ => with_id(row.id, &row.event.json),
    };
    Some(Event {
        id: row.id,
        kind,
        gateway_id: row.event.gateway_id,
        full: with_id(row.id, &row.event.json),
        summary,
        app,
        previous,
    })
}

/// An event before the store gave it an id.
struct Pending {
    stored: NewFeedEvent,
    summary: String,
    kind: EventKind,
    app: Option<Arc<Application>>,
    previous: Option<(String, String)>,
}

fn app_event(gateway_id: &str, at_ms: i64, change: &AppChange, points: &mut Vec<TimelineRow>) -> Option<Pending> {
    let point = timeline::point(
        gateway_id,
        &change.key,
        change.before.as_deref(),
        change.after.as_deref(),
        at_ms,
    );
    let (kind, app) = match (&change.before, &change.after) {
        (_, Some(after)) => (EventKind::AppUpserted, after.clone()),
        (Some(before), None) => (EventKind::AppDeleted, before.clone()),
        (None, None) => return None,
    };
    let mut body = Map::new();
    body.insert("type".into(), json!(kind.as_str()));
    body.insert("at".into(), json!(crate::util::rfc3339_from_ms(at_ms)));
    body.insert("gatewayId".into(), json!(gateway_id));
    body.insert("key".into(), json!(change.key));
    let mut previous = None;
    if kind == EventKind::AppUpserted {
        let changed: Vec<String> = point.as_ref().map(|p| p.changed.clone()).unwrap_or_default();
        body.insert("changed".into(), json!(changed));
        if let Some(before) = &change.before {
            let s = timeline::Status::of(before);
            body.insert(
                "previous".into(),
                json!({"health": s.health, "sync": s.sync, "revision": s.revision, "operationPhase": s.operation_phase}),
            );
            previous = Some((s.health, s.sync));
        }
    }
    let body = Value::Object(body).to_string();
    let full = with_application(body.clone(), &app_text(&app, gateway_id, false));
    let summary = with_application(body, &app_text(&app, gateway_id, true));
    if let Some(p) = point {
        points.push(p);
    }
    Some(Pending {
        stored: NewFeedEvent {
            at_ms,
            kind: kind.as_str().to_owned(),
            gateway_id: gateway_id.to_owned(),
            json: full,
        },
        summary,
        kind,
        app: Some(app),
        previous,
    })
}

fn gateway_event(gateway_id: &str, at_ms: i64, kind: EventKind, extra: Map<String, Value>) -> Pending {
    let mut body = Map::new();
    body.insert("type".into(), json!(kind.as_str()));
    body.insert("at".into(), json!(crate::util::rfc3339_from_ms(at_ms)));
    body.insert("gatewayId".into(), json!(gateway_id));
    body.extend(extra);
    let json = Value::Object(body).to_string();
    Pending {
        stored: NewFeedEvent {
            at_ms,
            kind: kind.as_str().to_owned(),
            gateway_id: gateway_id.to_owned(),
            json: json.clone(),
        },
        summary: json,
        kind,
        app: None,
        previous: None,
    }
}

impl Recorder {
    /// A recorder that only records: what it writes reaches subscribers through
    /// [`Feed::broadcast_recorded`], which follows the store (replicas write the one feed
    /// together, and each broadcasts everyone's events in id order).
    pub fn followed(mut self) -> Self {
        self.broadcast = false;
        self
    }

    /// Records and broadcasts until `stop`; then records what is still queued and returns.
    pub async fn run(mut self, stop: CancellationToken) -> Result<(), std::convert::Infallible> {
        let mut pruned = match self.store.feed_bounds().await {
            Ok(b) => b.pruned_through,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the change feed's bounds; pruning on schedule only");
                0
            }
        };
        let mut prune_tick = tokio::time::interval(Duration::from_secs(60));
        prune_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                biased;
                input = self.rx.recv() => match input {
                    Some(i) => i,
                    None => return Ok(()),
                },
                _ = stop.cancelled() => {
                    let mut rest = vec![];
                    while let Ok(i) = self.rx.try_recv() {
                        rest.push(i);
                    }
                    if !rest.is_empty() {
                        self.record(rest, &stop).await;
                    }
                    return Ok(());
                }
                _ = prune_tick.tick() => {
                    pruned = self.prune().await.unwrap_or(pruned);
                    continue;
                }
            };
            // At most about one batch of events per write (an input holds up to a batch).
            let mut events = first.len();
            let mut batch = vec![first];
            while events < BATCH {
                match self.rx.try_recv() {
                    Ok(i) => {
                        events += i.len();
                        batch.push(i);
                    }
                    Err(_) => break,
                }
            }
            if let Some(last) = self.record(batch, &stop).await
                && last - pruned > (self.config.feed_backlog + self.config.feed_backlog / 10) as i64
            {
                // Keep the backlog bounded under a burst, not only once a minute.
                pruned = self.prune().await.unwrap_or(pruned);
            }
        }
    }

    /// Writes a batch and broadcasts its events; returns the last id. Retries a failing write
    /// until it succeeds or the hub stops: events are not dropped while the disk is full.
    async fn record(&mut self, batch: Vec<Input>, stop: &CancellationToken) -> Option<i64> {
        let mut pending = vec![];
        let mut points = vec![];
        for input in batch {
            match input {
                Input::Apps {
                    gateway_id,
                    at_ms,
                    changes,
                } => pending.extend(
                    changes
                        .iter()
                        .filter_map(|c| app_event(&gateway_id, at_ms, c, &mut points)),
                ),
                Input::Gateway {
                    gateway_id,
                    at_ms,
                    kind,
                    body,
                } => pending.push(gateway_event(&gateway_id, at_ms, kind, body)),
            }
        }
        if pending.is_empty() && points.is_empty() {
            return None;
        }
        // Moved out and shared, so neither the write nor a retry copies the events' JSON.
        let (stored, pending): (Vec<NewFeedEvent>, Vec<Pending>) = pending
            .into_iter()
            .map(|mut p| (std::mem::take(&mut p.stored), p))
            .unzip();
        let stored = Arc::new(stored);
        let points = Arc::new(points);
        let mut failures = 0u32;
        let ids = loop {
            match self
                .store
                .record_history(stored.clone(), points.clone(), self.config.timeline_per_app)
                .await
            {
                Ok(ids) => break ids,
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(60) {
                        tracing::error!(error = %e, attempts = failures, "cannot record change-feed events; retrying (check the disk under --data-dir)");
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        let last = ids.last().copied();
        // Each batch builds and frees its events' JSON: freed heap goes back once the hub is quiet.
        crate::util::heap::churned();
        if !self.broadcast {
            return last;
        }
        for ((p, id), stored) in pending.into_iter().zip(ids).zip(stored.iter()) {
            let event = Event {
                id,
                kind: p.kind,
                gateway_id: stored.gateway_id.clone(),
                full: with_id(id, &stored.json),
                summary: with_id(id, &p.summary),
                app: p.app,
                previous: p.previous,
            };
            // No receiver is fine: nobody is watching.
            let _ = self.live.send(Arc::new(event));
        }
        last
    }

    async fn prune(&self) -> Option<i64> {
        let now = now_ms();
        let feed_cutoff = now - self.config.feed_max_age.as_millis() as i64;
        let timeline_cutoff = now - self.config.timeline_max_age.as_millis() as i64;
        let bounds = match self.store.prune_feed(self.config.feed_backlog, feed_cutoff).await {
            Ok(b) => Some(b.pruned_through),
            Err(e) => {
                tracing::warn!(error = %e, "cannot prune the change feed");
                None
            }
        };
        if let Err(e) = self.store.prune_timeline(timeline_cutoff).await {
            tracing::warn!(error = %e, "cannot prune application timelines");
        }
        bounds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_go_first_and_kinds_round_trip() {
        assert_eq!(&*with_id(7, r#"{"type":"x"}"#), r#"{"id":7,"type":"x"}"#);
        assert_eq!(&*with_id(7, "{}"), r#"{"id":7}"#);
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(EventKind::parse("nope"), None);
    }

    #[test]
    fn summaries_drop_the_heavy_parts() {
        let s =
            summarize(json!({"name": "a", "resources": [{}, {}], "images": ["x"], "health": {"status": "Healthy"}}));
        assert_eq!(
            s,
            json!({"name": "a", "resourceCount": 2, "health": {"status": "Healthy"}})
        );
    }

    /// An application as the feed serves it, by way of `Value`: the reference for [`app_text`].
    fn app_json(app: &Application, gateway_id: &str) -> Value {
        let mut v = serde_json::to_value(app).unwrap();
        v.as_object_mut().unwrap().insert("gatewayId".into(), json!(gateway_id));
        v
    }

    /// An application with every optional part filled, as a gateway relays it.
    fn full_app() -> Application {
        Application {
            name: "guestbook".into(),
            namespace: "argocd".into(),
            project: "default".into(),
            labels: [("team".to_owned(), "a".to_owned())].into_iter().collect(),
            annotations: [("note".to_owned(), "é \"quoted\"".to_owned())].into_iter().collect(),
            sources: vec![Default::default()],
            history: vec![Default::default()],
            conditions: vec![Default::default()],
            reconciled_at: Some(jiff::Timestamp::UNIX_EPOCH),
            resources: vec![Default::default(), Default::default()],
            images: vec!["nginx:1".into()],
            application_set: Some("set".into()),
            undecodable: Some("bad".into()),
            too_large: Some(Default::default()),
            sync_policy: Some(Default::default()),
            operation: Some(Default::default()),
            ..Default::default()
        }
    }

    #[test]
    fn typed_texts_equal_the_value_forms() {
        let app = full_app();
        let full: Value = serde_json::from_str(&app_text(&app, "gw-\"1", false)).unwrap();
        assert_eq!(full, app_json(&app, "gw-\"1"));
        let summary: Value = serde_json::from_str(&app_text(&app, "gw-\"1", true)).unwrap();
        assert_eq!(summary, summarize(app_json(&app, "gw-\"1")));
        assert_eq!(summary["resourceCount"], 2);
        // And with every optional part absent.
        let bare = Application::default();
        let summary: Value = serde_json::from_str(&app_text(&bare, "g", true)).unwrap();
        assert_eq!(summary, summarize(app_json(&bare, "g")));
        assert_eq!(with_application("{}".into(), "1"), r#"{"application":1}"#);
        assert_eq!(with_application(r#"{"a":2}"#.into(), "1"), r#"{"a":2,"application":1}"#);
    }

    #[test]
    fn a_stored_event_replays_as_it_was_served_live() {
        let app = Arc::new(full_app());
        let mut points = vec![];
        let change = AppChange {
            key: "argocd/guestbook".into(),
            before: Some(Arc::new(Application::default())),
            after: Some(app.clone()),
        };
        let p = app_event("gw-1", 5, &change, &mut points).unwrap();
        let row = FeedEventRow {
            id: 9,
            event: p.stored.clone(),
        };
        let replayed = stored_event(row).unwrap();
        let live_full: Value = serde_json::from_str(&with_id(9, &p.stored.json)).unwrap();
        let live_summary: Value = serde_json::from_str(&with_id(9, &p.summary)).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&replayed.full).unwrap(), live_full);
        assert_eq!(serde_json::from_str::<Value>(&replayed.summary).unwrap(), live_summary);
        assert_eq!(live_summary["application"]["resourceCount"], 2);
        assert!(live_summary["application"].get("resources").is_none());
        assert_eq!(live_full["application"]["gatewayId"], "gw-1");
        assert_eq!(replayed.app.as_deref(), Some(&*app));
        assert_eq!(replayed.previous, p.previous);
    }

    #[tokio::test]
    async fn recorded_events_replay_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("hub.db")).unwrap();
        let config = HistoryConfig {
            feed_backlog: 3,
            ..Default::default()
        };
        let (feed, recorder) = Feed::new(store, config);
        let stop = CancellationToken::new();
        let task = tokio::spawn(recorder.run(stop.clone()));
        let mut live = feed.subscribe();
        for i in 0..5 {
            feed.gateway_disconnected("gw-1", &format!("reason {i}")).await;
        }
        let mut ids = vec![];
        for _ in 0..5 {
            let e = tokio::time::timeout(Duration::from_secs(10), live.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(e.kind, EventKind::GatewayDisconnected);
            ids.push(e.id);
        }
        assert!(ids.windows(2).all(|w| w[1] > w[0]), "{ids:?}");
        // The backlog is pruned to its bound (3, plus a tenth of slack before a burst prunes).
        let recorder = Recorder {
            rx: mpsc::channel(1).1,
            live: broadcast::channel(1).0,
            store: feed.store.clone(),
            config,
            broadcast: true,
        };
        let pruned = recorder.prune().await.unwrap();
        assert_eq!(pruned, ids[1]);
        let replayed = feed.replay(ids[1], 10).await.unwrap();
        assert_eq!(replayed.iter().map(|e| e.id).collect::<Vec<_>>(), &ids[2..]);
        assert!(
            replayed[0].full.contains("\"reason\":\"reason 2\""),
            "{}",
            replayed[0].full
        );
        assert!(matches!(feed.replay(ids[0], 10).await, Err(ReplayError::Gone { .. })));
        assert!(matches!(
            feed.replay(ids[4] + 1, 10).await,
            Err(ReplayError::Gone { .. })
        ));
        stop.cancel();
        task.await.unwrap().unwrap();
    }
}
