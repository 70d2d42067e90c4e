//! `GET /api/v1/events`: the fleet change feed as Server-Sent Events, or NDJSON with
//! `?format=ndjson`.
//!
//! Each event has an id that only increases. Without `since` (or `Last-Event-ID`) the stream
//! starts with the next event; with one it first replays every event after that id from the
//! backlog, then continues live, so a client that reconnects with the last id it saw misses
//! nothing. An id older than the backlog (or never issued) answers 410 with the bounds; a
//! client then lists the current state (`GET /api/v1/applications` answers `lastEventId`) and
//! follows from there.
//!
//! Filters: `gateway`, `types` (comma-separated event types) and the application list's filters
//! (`selector`, `annotation=k=v`, `health`, `sync`, `project`, `q`). Application filters select
//! application events whose state after — or before — the change matches, so a watcher of
//! Degraded applications also sees one recover; when any is given, other events are left out.
//! `view=summary` leaves out each application's resources and images.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::applications::summary_view;
use super::selector::{AppFilter, Matcher};
use super::{ApiError, ApiState};
use crate::hub::feed::{Event, EventKind, Feed, ReplayError};

/// Events read from the backlog per query while catching up.
const REPLAY_PAGE: usize = 500;
/// How often an idle stream shows it is alive.
const HEARTBEAT: Duration = Duration::from_secs(15);

#[derive(Debug, Default, Deserialize)]
pub(super) struct EventsQuery {
    /// Resume after this id (like `Last-Event-ID`).
    since: Option<String>,
    /// `sse` (default) or `ndjson`.
    format: Option<String>,
    /// `full` (default) or `summary`.
    view: Option<String>,
    /// Only this gateway's events.
    gateway: Option<String>,
    /// Only these event types, comma-separated.
    types: Option<String>,
}

/// What one subscriber wants.
struct Filter {
    matcher: Matcher,
    gateway: Option<String>,
    types: Option<HashSet<EventKind>>,
    summary: bool,
}

impl Filter {
    fn matches(&self, e: &Event) -> bool {
        if self.gateway.as_ref().is_some_and(|g| g != &e.gateway_id) {
            return false;
        }
        if self.types.as_ref().is_some_and(|t| !t.contains(&e.kind)) {
            return false;
        }
        if self.matcher.is_empty() {
            return true;
        }
        let Some(app) = e.app.as_deref().filter(|_| e.kind.is_application()) else {
            return false;
        };
        self.matcher.matches(app)
            || e.previous
                .as_ref()
                .is_some_and(|(health, sync)| self.matcher.matches_as(app, health, sync))
    }
}

/// What the stream yields.
enum Frame {
    Event(Arc<Event>, bool),
    Heartbeat,
    Gone(String),
}

/// One subscriber's position: replaying from the store until it has caught up, then live.
struct Subscription {
    feed: Feed,
    live: broadcast::Receiver<Arc<Event>>,
    cursor: i64,
    replaying: bool,
    buffer: VecDeque<Arc<Event>>,
    filter: Filter,
    stop: CancellationToken,
    heartbeat: Option<tokio::time::Interval>,
    done: bool,
}

impl Subscription {
    async fn next(&mut self) -> Option<Frame> {
        if self.done {
            return None;
        }
        loop {
            while let Some(e) = self.buffer.pop_front() {
                if self.filter.matches(&e) {
                    return Some(Frame::Event(e, self.filter.summary));
                }
            }
            if self.replaying {
                match self.feed.replay(self.cursor, REPLAY_PAGE).await {
                    Ok(events) => {
                        self.replaying = events.len() == REPLAY_PAGE;
                        if let Some(last) = events.last() {
                            self.cursor = last.id;
                        }
                        self.buffer.extend(events);
                        continue;
                    }
                    Err(e) => {
                        self.done = true;
                        let message = match &e {
                            ReplayError::Gone { .. } => e.to_string(),
                            ReplayError::Store(s) => {
                                tracing::error!(error = %s, "cannot read the change feed's backlog");
                                "the hub cannot read its change-feed backlog; reconnect".to_owned()
                            }
                        };
                        return Some(Frame::Gone(message));
                    }
                }
            }
            let heartbeat = &mut self.heartbeat;
            let tick = async {
                match heartbeat.as_mut() {
                    Some(h) => {
                        h.tick().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = self.stop.cancelled() => return None,
                _ = tick => return Some(Frame::Heartbeat),
                r = self.live.recv() => match r {
                    Ok(e) => {
                        if e.id <= self.cursor {
                            continue;
                        }
                        self.cursor = e.id;
                        self.buffer.push_back(e);
                    }
                    // Too slow for the live buffer: catch up from the store.
                    Err(broadcast::error::RecvError::Lagged(_)) => self.replaying = true,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    }
}

fn parse_since(q: &EventsQuery, headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let raw = q.since.clone().or_else(|| {
        headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    match raw.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(s) => s.parse::<i64>().map(Some).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("since (or Last-Event-ID) must be an event id, not {s:?}"),
            )
        }),
    }
}

fn parse_types(types: Option<&str>) -> Result<Option<HashSet<EventKind>>, ApiError> {
    let Some(types) = types.map(str::trim).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    types
        .split(',')
        .map(|t| {
            EventKind::parse(t.trim()).ok_or_else(|| {
                let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("unknown event type {t:?}; known: {}", known.join(", ")),
                )
            })
        })
        .collect::<Result<HashSet<_>, _>>()
        .map(Some)
}

pub(super) async fn events(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Query(app_filter): Query<AppFilter>,
    Query(q): Query<EventsQuery>,
    Query(raw): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let ndjson = match q.format.as_deref() {
        None | Some("sse") => false,
        Some("ndjson") => true,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("format must be sse or ndjson, not {other:?}"),
            ));
        }
    };
    let summary = summary_view(q.view.as_deref())?;
    let filter = Filter {
        matcher: Matcher::new(&app_filter, &raw)?,
        gateway: q.gateway.clone().filter(|g| !g.is_empty()),
        types: parse_types(q.types.as_deref())?,
        summary,
    };
    let since = parse_since(&q, &headers)?;
    let feed = state.hub.feed.clone();
    // Subscribe before reading the bounds: nothing recorded in between is missed.
    let live = feed.subscribe();
    let bounds = feed.bounds().await?;
    let cursor = match since {
        Some(s) if s < bounds.pruned_through || s > bounds.last => {
            let e = ReplayError::Gone {
                since: s,
                pruned_through: bounds.pruned_through,
                last: bounds.last,
            };
            return Err(ApiError::with_body(
                StatusCode::GONE,
                serde_json::json!({
                    "error": e.to_string(),
                    "code": "gone",
                    "oldestId": bounds.pruned_through + 1,
                    "lastId": bounds.last,
                }),
            ));
        }
        Some(s) => s,
        None => bounds.last,
    };
    let sub = Subscription {
        feed,
        live,
        cursor,
        replaying: cursor < bounds.last,
        buffer: VecDeque::new(),
        filter,
        stop: state.shutdown.clone(),
        heartbeat: ndjson.then(|| {
            let mut i = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        }),
        done: false,
    };
    let frames = futures_util::stream::unfold(sub, |mut sub| async move { sub.next().await.map(|f| (f, sub)) });
    let mut resp = if ndjson {
        let lines = frames.map(|f| {
            let line = match f {
                Frame::Event(e, summary) => format!("{}\n", if summary { &e.summary } else { &e.full }),
                Frame::Heartbeat => format!(
                    "{}\n",
                    serde_json::json!({"type": "heartbeat", "at": crate::util::rfc3339_now()})
                ),
                Frame::Gone(message) => format!(
                    "{}\n",
                    serde_json::json!({"type": "error", "code": "gone", "error": message})
                ),
            };
            Ok::<_, Infallible>(line)
        });
        let mut r = Body::from_stream(lines).into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
        r
    } else {
        let events = frames.map(|f| {
            Ok::<_, Infallible>(match f {
                Frame::Event(e, summary) => SseEvent::default()
                    .id(e.id.to_string())
                    .event(e.kind.as_str())
                    .data(if summary { &*e.summary } else { &*e.full }),
                Frame::Heartbeat => SseEvent::default().comment("heartbeat"),
                Frame::Gone(message) => SseEvent::default()
                    .event("error")
                    .data(serde_json::json!({"code": "gone", "error": message}).to_string()),
            })
        });
        Sse::new(events)
            .keep_alive(KeepAlive::new().interval(HEARTBEAT))
            .into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies such as nginx would otherwise buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}
