//! `wait`: the deployment-verification primitive. "Tell me when what I committed is running and
//! healthy" — for one application (`POST …/applications/{namespace}/{name}/wait`) or many
//! (`POST /api/v1/wait`: by label selector, annotations, project, gateways or an explicit list,
//! with `expectCount`). Each application gets a verdict ([`crate::hub::verdict`]) recomputed
//! whenever relayed state changes; with expectations, the gateway evaluates them against Argo
//! CD's rendered target and live manifests whenever the application's revision or state moves.
//!
//! The wait ends `Deployed` when every application is, `Failed` as soon as one is `Failed` or
//! `Overwritten`, and `Timeout` at the caller's deadline with every application's last verdict.
//! Optional triggers: `refresh` first (and again every [`REFRESH_AGAIN`] while Argo CD has not
//! seen the revision), and `sync` to the revision for applications without automated sync
//! (skipped, and said so, for the others unless `forceSync`); both need the operator role.
//!
//! Answers: one JSON object at the end, or with `?format=ndjson` (or `sse`, or an `Accept`
//! header asking for either) a stream of lines: `progress` when an application's verdict or
//! message changes, `trigger` for each refresh or sync, `waiting` every [`HEARTBEAT`] with what
//! is still pending, and the final `result`.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use super::access::{Principal, Role};
use super::applications::{SyncBody, ensure_gateway, forward_app, forward_sync, stored_app};
use super::selector::{AppFilter, Matcher};
use super::{ApiError, ApiState};
use crate::hub::verdict::{
    Content, Judgement, Memory, RevisionSpec, SourceRef, Verdict, Want, check_revision, judge, named_sources,
    revision_key, runs_ours,
};
use crate::wire::expectation::{Evaluation, Expectation, MAX_EXPECTATIONS};
use crate::wire::item::{Application, HealthStatusCode, OperationPhase};
use crate::wire::proto::{self, request};

/// Longest `wait` accepted.
pub const MAX_WAIT: Duration = Duration::from_secs(6 * 3600);
/// How long Degraded is tolerated, once nothing runs, when the caller does not say.
pub const DEFAULT_DEGRADED_GRACE: Duration = Duration::from_secs(60);
/// How often a streamed wait prints what it is still waiting for (and proves it is alive).
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// How often a requested refresh is repeated while Argo CD has not seen the revision.
pub const REFRESH_AGAIN: Duration = Duration::from_secs(30);
/// How soon a failed evaluation of the expectations is retried.
const EVAL_RETRY: Duration = Duration::from_secs(5);
/// Most applications one wait follows.
pub const MAX_APPS: usize = 1000;
/// Requests to gateways (evaluations, refreshes, syncs) one wait has in flight at once.
const MAX_IN_FLIGHT: usize = 8;
/// Most pending applications a `waiting` line names.
const WAITING_NAMES: usize = 10;

/// One application named explicitly.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct AppName {
    /// The gateway; optional when the name is unique across gateways.
    gateway_id: Option<String>,
    namespace: String,
    name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct WaitBody {
    // --- which applications (`/api/v1/wait` only)
    selector: Option<String>,
    annotations: Option<Vec<String>>,
    project: Option<String>,
    gateways: Option<Vec<String>>,
    applications: Option<Vec<AppName>>,
    expect_count: Option<usize>,
    // --- what the caller committed
    revision: Option<String>,
    source_position: Option<usize>,
    source_name: Option<String>,
    #[serde(rename = "repoURL")]
    repo_url: Option<String>,
    expectations: Option<Vec<Expectation>>,
    // --- how
    timeout_seconds: u64,
    degraded_grace_seconds: Option<u64>,
    /// `true`/`"normal"` or `"hard"`.
    refresh: Option<Value>,
    sync: Option<bool>,
    force_sync: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct WaitQuery {
    /// `json` (default), `ndjson` or `sse`.
    format: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Ndjson,
    Sse,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::with_body(
        StatusCode::BAD_REQUEST,
        json!({"error": message.into(), "code": "invalid"}),
    )
}

fn format_of(q: &WaitQuery, headers: &HeaderMap) -> Result<Format, ApiError> {
    match q.format.as_deref() {
        Some("json") => return Ok(Format::Json),
        Some("ndjson") => return Ok(Format::Ndjson),
        Some("sse") => return Ok(Format::Sse),
        Some(other) => return Err(bad(format!("format must be json, ndjson or sse, not {other:?}"))),
        None => {}
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    Ok(if accept.contains("application/x-ndjson") {
        Format::Ndjson
    } else if accept.contains("text/event-stream") {
        Format::Sse
    } else {
        Format::Json
    })
}

/// The refresh a wait asks for first.
fn refresh_mode(v: Option<&Value>) -> Result<Option<bool>, ApiError> {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(None),
        Some(Value::Bool(true)) => Ok(Some(false)),
        Some(Value::String(s)) if s == "normal" => Ok(Some(false)),
        Some(Value::String(s)) if s == "hard" => Ok(Some(true)),
        Some(other) => Err(bad(format!(
            "refresh must be true, \"normal\" or \"hard\", not {other}"
        ))),
    }
}

/// The validated plan of a wait, before any application is chosen.
struct Plan {
    want: Want,
    timeout: Duration,
    refresh: Option<bool>,
    sync: bool,
    force_sync: bool,
}

fn plan(body: &WaitBody, principal: &Principal) -> Result<Plan, ApiError> {
    let timeout = Duration::from_secs(body.timeout_seconds);
    if timeout.is_zero() || timeout > MAX_WAIT {
        return Err(bad(format!(
            "timeoutSeconds must be between 1 and {}",
            MAX_WAIT.as_secs()
        )));
    }
    let source = match (&body.source_position, &body.source_name, &body.repo_url) {
        (None, None, None) => SourceRef::Any,
        (Some(p), None, None) => SourceRef::Position(*p),
        (None, Some(n), None) => SourceRef::Name(n.clone()),
        (None, None, Some(u)) => SourceRef::RepoUrl(u.clone()),
        _ => return Err(bad("name the source once: sourcePosition, sourceName or repoURL")),
    };
    let revision = body.revision.clone().filter(|r| !r.is_empty());
    if let Some(r) = &revision {
        check_revision(r).map_err(bad)?;
    } else if source != SourceRef::Any {
        return Err(bad(
            "sourcePosition, sourceName and repoURL name the source of the revision: give revision too",
        ));
    }
    let expectations = body.expectations.clone().unwrap_or_default();
    if expectations.len() > MAX_EXPECTATIONS {
        return Err(bad(format!("at most {MAX_EXPECTATIONS} expectations")));
    }
    for (i, e) in expectations.iter().enumerate() {
        e.validate().map_err(|m| bad(format!("expectations[{i}]: {m}")))?;
    }
    let refresh = refresh_mode(body.refresh.as_ref())?;
    let sync = body.sync.unwrap_or(false);
    let force_sync = body.force_sync.unwrap_or(false);
    if force_sync && !sync {
        return Err(bad("forceSync only applies with sync: true"));
    }
    if (refresh.is_some() || sync) && principal.role < Role::Operator {
        return Err(ApiError::with_body(
            StatusCode::FORBIDDEN,
            json!({
                "error": format!("{} ({}) may wait but not refresh or sync: that needs the operator role", principal.name, principal.role.as_str()),
                "code": "forbidden",
                "role": principal.role.as_str(),
                "requiredRole": "operator",
            }),
        ));
    }
    Ok(Plan {
        want: Want {
            revision: revision.map(|revision| RevisionSpec { revision, source }),
            expectations,
            degraded_grace: body
                .degraded_grace_seconds
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_DEGRADED_GRACE),
        },
        timeout,
        refresh,
        sync,
        force_sync,
    })
}

/// One application the wait follows.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Target {
    gateway_id: String,
    namespace: String,
    name: String,
}

impl Target {
    fn label(&self) -> String {
        format!("{}/{}/{}", self.gateway_id, self.namespace, self.name)
    }
}

/// The applications a `/api/v1/wait` body selects, from the relayed state as it is now.
fn select(state: &ApiState, body: &WaitBody) -> Result<Vec<Target>, ApiError> {
    let gateways: Option<Vec<String>> = body.gateways.clone().filter(|g| !g.is_empty());
    let annotations: Vec<(String, String)> = body
        .annotations
        .iter()
        .flatten()
        .map(|a| ("annotation".to_owned(), a.clone()))
        .collect();
    let filtered = body.selector.is_some() || !annotations.is_empty() || body.project.is_some();
    let in_gateways = |gw: &str| gateways.as_ref().is_none_or(|g| g.iter().any(|x| x == gw));
    if let Some(list) = &body.applications {
        if filtered {
            return Err(bad(
                "give either applications or a selection (selector, annotations, project), not both",
            ));
        }
        let mut out = vec![];
        for a in list {
            match &a.gateway_id {
                Some(g) => out.push(Target {
                    gateway_id: g.clone(),
                    namespace: a.namespace.clone(),
                    name: a.name.clone(),
                }),
                None => {
                    let key = format!("{}/{}", a.namespace, a.name);
                    let found: Vec<String> = state.hub.entities.with_all(|all| {
                        all.iter()
                            .filter(|(gw, g)| in_gateways(gw) && g.apps.contains_key(&key))
                            .map(|(gw, _)| gw.clone())
                            .collect()
                    });
                    match found.as_slice() {
                        [one] => out.push(Target {
                            gateway_id: one.clone(),
                            namespace: a.namespace.clone(),
                            name: a.name.clone(),
                        }),
                        [] => {
                            return Err(ApiError::with_body(
                                StatusCode::NOT_FOUND,
                                json!({"error": format!("no gateway has application {key}; name its gatewayId"), "code": "not_found"}),
                            ));
                        }
                        many => {
                            return Err(bad(format!(
                                "application {key} exists on gateways {}: name its gatewayId",
                                many.join(", ")
                            )));
                        }
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        return Ok(out);
    }
    if !filtered && gateways.is_none() {
        return Err(bad(
            "name the applications to wait for: selector, annotations, project, gateways or applications",
        ));
    }
    let filter = AppFilter {
        selector: body.selector.clone(),
        project: body.project.clone(),
        ..AppFilter::default()
    };
    let matcher = Matcher::new(&filter, &annotations)?;
    let mut out: Vec<Target> = state.hub.entities.with_all(|all| {
        all.iter()
            .filter(|(gw, _)| in_gateways(gw))
            .flat_map(|(gw, g)| {
                g.apps
                    .values()
                    .filter(|s| matcher.matches(&s.item))
                    .map(move |s| Target {
                        gateway_id: gw.clone(),
                        namespace: s.item.namespace.clone(),
                        name: s.item.name.clone(),
                    })
            })
            .collect()
    });
    out.sort();
    Ok(out)
}

/// A line of a streamed wait.
enum Line {
    /// An application's verdict or message changed.
    Progress(Value),
    /// A refresh or sync was made or skipped.
    Trigger(Value),
    /// What is still pending.
    Waiting(Value),
    /// The end.
    Result(Value),
    /// The wait could not go on (the hub shuts down).
    Error(Value),
}

impl Line {
    fn kind(&self) -> &'static str {
        match self {
            Self::Progress(_) => "progress",
            Self::Trigger(_) => "trigger",
            Self::Waiting(_) => "waiting",
            Self::Result(_) => "result",
            Self::Error(_) => "error",
        }
    }

    fn into_value(self) -> Value {
        let kind = self.kind();
        let mut v = match self {
            Self::Progress(v) | Self::Trigger(v) | Self::Waiting(v) | Self::Result(v) | Self::Error(v) => v,
        };
        if let Some(o) = v.as_object_mut() {
            o.insert("type".into(), json!(kind));
        }
        v
    }
}

/// A request to a gateway the wait made, and its outcome.
enum Done {
    Evaluated {
        index: usize,
        state_key: String,
        result: Result<Evaluation, String>,
    },
    Triggered {
        index: usize,
        action: &'static str,
        result: Result<(), String>,
    },
}

/// One followed application.
struct Tracked {
    target: Target,
    memory: Memory,
    degraded_since: Option<Instant>,
    judgement: Option<Judgement>,
    stale: bool,
    /// The state an evaluation was last asked for, and whether it is still running.
    eval_state: Option<String>,
    eval_inflight: bool,
    eval_retry_at: Option<Instant>,
    refresh_inflight: bool,
    last_refresh: Option<Instant>,
    /// The refresh asked for first has not been started yet (at most [`MAX_IN_FLIGHT`]
    /// requests run at once, so a wait of many applications starts them as others finish).
    refresh_first: bool,
    sync_pending: bool,
}

/// The wait itself: a state machine the response stream pulls lines from. Requests to gateways
/// run inside it (no task is spawned), so a caller that goes away ends everything.
struct Waiter {
    state: Arc<ApiState>,
    want: Arc<Want>,
    refresh: Option<bool>,
    force_sync: bool,
    apps: Vec<Tracked>,
    started: Instant,
    deadline: Instant,
    changes: watch::Receiver<u64>,
    in_flight: FuturesUnordered<BoxFuture<'static, Done>>,
    queue: VecDeque<Line>,
    heartbeat: tokio::time::Interval,
    /// The single-application route also answers the application's item.
    single: bool,
    finished: bool,
}

fn now_text() -> String {
    crate::util::rfc3339_now()
}

/// The state an evaluation depends on: Argo CD's revision and the live state's signs.
fn eval_state(app: &Application) -> String {
    let op = app
        .operation
        .as_ref()
        .map(|o| {
            format!(
                "{}@{}",
                o.phase,
                o.finished_at.map(|t| t.to_string()).unwrap_or_default()
            )
        })
        .unwrap_or_default();
    format!("{}|{}|{}|{op}", revision_key(app), app.sync.status, app.health.status)
}

impl Waiter {
    fn new(state: Arc<ApiState>, plan: Plan, targets: Vec<Target>, single: bool) -> Self {
        let now = Instant::now();
        let mut heartbeat = tokio::time::interval_at(now + HEARTBEAT, HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let changes = state.hub.entities.subscribe();
        Self {
            state,
            want: Arc::new(plan.want),
            refresh: plan.refresh,
            force_sync: plan.force_sync,
            apps: targets
                .into_iter()
                .map(|target| Tracked {
                    target,
                    memory: Memory::default(),
                    degraded_since: None,
                    judgement: None,
                    stale: false,
                    eval_state: None,
                    eval_inflight: false,
                    eval_retry_at: None,
                    refresh_inflight: false,
                    last_refresh: None,
                    refresh_first: plan.refresh.is_some(),
                    sync_pending: plan.sync,
                })
                .collect(),
            started: now,
            deadline: now + plan.timeout,
            changes,
            in_flight: FuturesUnordered::new(),
            queue: VecDeque::new(),
            heartbeat,
            single,
            finished: false,
        }
    }

    fn elapsed(&self) -> f64 {
        (self.started.elapsed().as_millis() as f64 / 1000.0 * 10.0).round() / 10.0
    }

    fn app(&self, i: usize) -> Option<Arc<Application>> {
        let t = &self.apps[i].target;
        stored_app(&self.state, &t.gateway_id, &t.namespace, &t.name)
    }

    fn start_refresh(&mut self, i: usize) {
        let hard = self.refresh.unwrap_or(false);
        let t = self.apps[i].target.clone();
        let state = self.state.clone();
        self.apps[i].refresh_inflight = true;
        self.apps[i].refresh_first = false;
        self.apps[i].last_refresh = Some(Instant::now());
        self.in_flight.push(
            async move {
                let result = forward_app(&state, &t.gateway_id, &t.namespace, &t.name, |app| {
                    request::Kind::Refresh(proto::RefreshRequest { app: Some(app), hard })
                })
                .await
                .map(|_| ())
                .map_err(api_error_text);
                Done::Triggered {
                    index: i,
                    action: "refresh",
                    result,
                }
            }
            .boxed(),
        );
    }

    fn start_evaluation(&mut self, i: usize, state_key: String) {
        let t = self.apps[i].target.clone();
        let state = self.state.clone();
        let expectations: Vec<proto::Expectation> = self
            .want
            .expectations
            .iter()
            .map(|e| proto::Expectation {
                group: e.group.clone(),
                kind: e.kind.clone(),
                namespace: e.namespace.clone(),
                name: e.name.clone(),
                path: e.path.clone(),
                value_json: e.value.to_string(),
            })
            .collect();
        self.apps[i].eval_inflight = true;
        self.apps[i].eval_state = Some(state_key.clone());
        self.in_flight.push(
            async move {
                let result =
                    match super::applications::require_deploy_actions(&state, &t.gateway_id, "evaluate expectations") {
                        Err(e) => Err(api_error_text(e)),
                        Ok(()) => forward_app(&state, &t.gateway_id, &t.namespace, &t.name, |app| {
                            request::Kind::Evaluate(proto::EvaluateRequest {
                                app: Some(app),
                                expectations,
                            })
                        })
                        .await
                        .map_err(api_error_text)
                        .and_then(|v| {
                            serde_json::from_value::<Evaluation>(v)
                                .map_err(|e| format!("the gateway's evaluation is unreadable: {e}"))
                        }),
                    };
                Done::Evaluated {
                    index: i,
                    state_key,
                    result,
                }
            }
            .boxed(),
        );
    }

    fn start_sync(&mut self, i: usize, app: &Application) {
        let t = self.apps[i].target.clone();
        let state = self.state.clone();
        let body = match &self.want.revision {
            None => SyncBody::default(),
            Some(spec) => match &spec.source {
                SourceRef::Any if app.sync.revisions.is_empty() => {
                    SyncBody::to_revision(Some(spec.revision.clone()), None, None)
                }
                // Several sources and none named: Argo CD syncs its target revisions.
                SourceRef::Any => SyncBody::default(),
                named => match named_sources(app, named).ok().and_then(|s| s.first().copied()) {
                    Some(0) if app.sync.revisions.is_empty() => {
                        SyncBody::to_revision(Some(spec.revision.clone()), None, None)
                    }
                    Some(p) => SyncBody::to_revision(None, Some(vec![spec.revision.clone()]), Some(vec![p as i64 + 1])),
                    None => SyncBody::default(),
                },
            },
        };
        self.in_flight.push(
            async move {
                let result = forward_sync(&state, &t.gateway_id, &t.namespace, &t.name, body)
                    .await
                    .map(|_| ())
                    .map_err(api_error_text);
                Done::Triggered {
                    index: i,
                    action: "sync",
                    result,
                }
            }
            .boxed(),
        );
    }

    fn target_json(&self, i: usize) -> serde_json::Map<String, Value> {
        let t = &self.apps[i].target;
        let mut o = serde_json::Map::new();
        o.insert("gatewayId".into(), json!(t.gateway_id));
        o.insert("namespace".into(), json!(t.namespace));
        o.insert("name".into(), json!(t.name));
        o
    }

    fn trigger_line(&mut self, i: usize, action: &str, result: &str, message: impl Into<String>) {
        let mut o = self.target_json(i);
        o.insert("at".into(), json!(now_text()));
        o.insert("action".into(), json!(action));
        o.insert("result".into(), json!(result));
        o.insert("message".into(), json!(message.into()));
        self.queue.push_back(Line::Trigger(Value::Object(o)));
    }

    fn judgement_json(&self, i: usize) -> Value {
        let mut o = self.target_json(i);
        let a = &self.apps[i];
        if let Some(j) = &a.judgement
            && let Ok(Value::Object(jv)) = serde_json::to_value(j)
        {
            o.extend(jv);
        }
        o.insert("stale".into(), json!(a.stale));
        Value::Object(o)
    }

    /// Judges every application, queues lines for what changed, starts the requests that are
    /// due and decides whether the wait is over.
    fn step(&mut self) {
        let now = Instant::now();
        for i in 0..self.apps.len() {
            let app = self.app(i);
            // Connected here or, with replicas, to another one (its state is followed from there).
            let stale = !self.state.hub.is_connected(&self.apps[i].target.gateway_id);
            let judgement = match &app {
                None => Judgement {
                    verdict: Verdict::NotYetSeen,
                    missing: vec!["application"],
                    message: format!(
                        "the hub has no application {}/{} on gateway {}",
                        self.apps[i].target.namespace, self.apps[i].target.name, self.apps[i].target.gateway_id
                    ),
                    argocd_revision: String::new(),
                    expectations: vec![],
                },
                Some(a) => {
                    let nothing_runs = a
                        .operation
                        .as_ref()
                        .is_none_or(|o| !matches!(o.phase, OperationPhase::Running | OperationPhase::Terminating));
                    let tracked = &mut self.apps[i];
                    if a.health.status == HealthStatusCode::Degraded && nothing_runs {
                        tracked.degraded_since.get_or_insert(now);
                    } else {
                        tracked.degraded_since = None;
                    }
                    if runs_ours(a, &self.want) {
                        tracked.memory.seen_ours = true;
                    }
                    let degraded_for = tracked.degraded_since.map(|s| now.saturating_duration_since(s));
                    let mut j = judge(a, &self.want, &tracked.memory, degraded_for);
                    // State from a gateway that is away may be old: never call it deployed.
                    if stale && j.verdict == Verdict::Deployed {
                        j.verdict = Verdict::Progressing;
                        j.missing = vec!["gateway"];
                        j.message = format!(
                            "gateway {} is disconnected; its last known state: {}",
                            self.apps[i].target.gateway_id, j.message
                        );
                    }
                    j
                }
            };
            let changed = self.apps[i]
                .judgement
                .as_ref()
                .is_none_or(|old| old.verdict != judgement.verdict || old.message != judgement.message);
            self.apps[i].stale = stale;
            self.apps[i].judgement = Some(judgement);
            if changed {
                let mut v = self.judgement_json(i);
                if let Some(o) = v.as_object_mut() {
                    o.insert("at".into(), json!(now_text()));
                    o.insert("elapsedSeconds".into(), json!(self.elapsed()));
                }
                self.queue.push_back(Line::Progress(v));
            }
            let Some(a) = app else { continue };
            self.schedule(i, &a, now);
        }
        self.decide();
    }

    /// Starts the evaluation, refresh or sync this application is due for.
    fn schedule(&mut self, i: usize, app: &Application, now: Instant) {
        let verdict = self.apps[i].judgement.as_ref().map(|j| j.verdict);
        let busy = self.in_flight.len() >= MAX_IN_FLIGHT;
        if !self.want.expectations.is_empty() && !self.apps[i].eval_inflight && !busy {
            let key = eval_state(app);
            let retry_due = self.apps[i].eval_retry_at.is_some_and(|t| t <= now);
            if self.apps[i].eval_state.as_deref() != Some(key.as_str()) || retry_due {
                self.apps[i].eval_retry_at = None;
                self.start_evaluation(i, key);
            }
        }
        let busy = self.in_flight.len() >= MAX_IN_FLIGHT;
        let again = verdict == Some(Verdict::NotYetSeen)
            && self.apps[i]
                .last_refresh
                .is_none_or(|t| now.duration_since(t) >= REFRESH_AGAIN);
        if self.refresh.is_some() && (self.apps[i].refresh_first || again) && !self.apps[i].refresh_inflight && !busy {
            self.start_refresh(i);
        }
        let busy = self.in_flight.len() >= MAX_IN_FLIGHT;
        // A sync waits for the refresh asked for first: it syncs what Argo CD then sees.
        let refreshing = self.apps[i].refresh_inflight || self.apps[i].refresh_first;
        if self.apps[i].sync_pending && !refreshing && !busy {
            let op_running = app
                .operation
                .as_ref()
                .is_some_and(|o| matches!(o.phase, OperationPhase::Running | OperationPhase::Terminating));
            let automated = app.sync_policy.as_ref().is_some_and(|p| p.automated);
            if verdict == Some(Verdict::Deployed) {
                self.apps[i].sync_pending = false;
                self.trigger_line(i, "sync", "skipped", "already deployed");
            } else if verdict.is_some_and(Verdict::is_failure) {
                self.apps[i].sync_pending = false;
            } else if automated && !self.force_sync {
                self.apps[i].sync_pending = false;
                self.trigger_line(
                    i,
                    "sync",
                    "skipped",
                    "automated sync is on: Argo CD syncs it (forceSync to sync anyway)",
                );
            } else if !op_running {
                // Argo CD refuses a sync while another operation runs: wait for it to end.
                self.apps[i].sync_pending = false;
                self.start_sync(i, app);
            }
        }
    }

    /// Ends the wait when every application is deployed or one failed.
    fn decide(&mut self) {
        if self.finished {
            return;
        }
        let verdicts: Vec<Verdict> = self
            .apps
            .iter()
            .filter_map(|a| a.judgement.as_ref().map(|j| j.verdict))
            .collect();
        let result = if verdicts.iter().any(|v| v.is_failure()) {
            "Failed"
        } else if verdicts.len() == self.apps.len() && verdicts.iter().all(|v| *v == Verdict::Deployed) {
            "Deployed"
        } else {
            return;
        };
        self.finish(result);
    }

    fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for a in &self.apps {
            if let Some(j) = &a.judgement {
                *counts.entry(j.verdict.as_str()).or_default() += 1;
            }
        }
        counts
    }

    fn finish(&mut self, result: &str) {
        self.finished = true;
        let applications: Vec<Value> = (0..self.apps.len()).map(|i| self.judgement_json(i)).collect();
        let mut v = json!({
            "at": now_text(),
            "result": result,
            "elapsedSeconds": self.elapsed(),
            "counts": self.counts(),
            "applications": applications,
        });
        if self.single
            && let Some(app) = self.app(0)
        {
            v["application"] = serde_json::to_value(app.as_ref()).unwrap_or(Value::Null);
        }
        self.queue.push_back(Line::Result(v));
    }

    fn waiting_line(&mut self) {
        let pending: Vec<Value> = (0..self.apps.len())
            .filter(|i| {
                self.apps[*i]
                    .judgement
                    .as_ref()
                    .is_none_or(|j| j.verdict != Verdict::Deployed)
            })
            .take(WAITING_NAMES)
            .map(|i| {
                let mut o = self.target_json(i);
                if let Some(j) = &self.apps[i].judgement {
                    o.insert("verdict".into(), json!(j.verdict.as_str()));
                    o.insert("message".into(), json!(j.message));
                }
                Value::Object(o)
            })
            .collect();
        let remaining = self.deadline.saturating_duration_since(Instant::now()).as_secs();
        self.queue.push_back(Line::Waiting(json!({
            "at": now_text(),
            "elapsedSeconds": self.elapsed(),
            "remainingSeconds": remaining,
            "counts": self.counts(),
            "pending": pending,
        })));
    }

    fn apply(&mut self, done: Done) {
        match done {
            Done::Evaluated {
                index,
                state_key,
                result,
            } => {
                let tracked = &mut self.apps[index];
                tracked.eval_inflight = false;
                tracked.memory.content = Some(match result {
                    Ok(ev) => Content {
                        key: format!("{}|{}", ev.revision, ev.revisions.join(",")),
                        outcomes: Ok(ev.results),
                    },
                    Err(e) => {
                        tracked.eval_retry_at = Some(Instant::now() + EVAL_RETRY);
                        // Attributed to the state it was asked for, so the judgement shows it.
                        let key = state_key.split('|').take(2).collect::<Vec<_>>().join("|");
                        Content { key, outcomes: Err(e) }
                    }
                });
            }
            Done::Triggered { index, action, result } => {
                if action == "refresh" {
                    self.apps[index].refresh_inflight = false;
                }
                match result {
                    Ok(()) => {
                        let message = if action == "sync" {
                            match &self.want.revision {
                                Some(r) => format!("sync to {} started", r.revision),
                                None => "sync started".to_owned(),
                            }
                        } else {
                            "Argo CD refreshed".to_owned()
                        };
                        self.trigger_line(index, action, "ok", message);
                    }
                    Err(e) => self.trigger_line(index, action, "error", e),
                }
            }
        }
    }

    /// The earliest moment a judgement may change without any relayed change: a Degraded
    /// grace running out, an evaluation retry, a repeated refresh.
    fn next_timer(&self) -> Option<Instant> {
        let grace = self.want.degraded_grace;
        self.apps
            .iter()
            .flat_map(|a| {
                let refresh = (self.refresh.is_some()
                    && a.judgement.as_ref().is_some_and(|j| j.verdict == Verdict::NotYetSeen))
                .then(|| a.last_refresh.map(|t| t + REFRESH_AGAIN))
                .flatten();
                [a.degraded_since.map(|s| s + grace), a.eval_retry_at, refresh]
            })
            .flatten()
            .min()
    }

    /// The next line, or None when the wait is over.
    async fn next(&mut self) -> Option<Line> {
        loop {
            if let Some(line) = self.queue.pop_front() {
                return Some(line);
            }
            if self.finished {
                return None;
            }
            self.step();
            if !self.queue.is_empty() {
                continue;
            }
            let timer = self.next_timer();
            let shutdown = self.state.shutdown.clone();
            tokio::select! {
                _ = tokio::time::sleep_until(self.deadline) => {
                    self.step();
                    if !self.finished {
                        self.finish("Timeout");
                    }
                }
                r = self.changes.changed() => {
                    if r.is_err() {
                        self.finished = true;
                        self.queue.push_back(Line::Error(json!({"error": "the hub is shutting down", "code": "unavailable"})));
                    }
                }
                Some(done) = self.in_flight.next(), if !self.in_flight.is_empty() => self.apply(done),
                _ = self.heartbeat.tick() => self.waiting_line(),
                _ = async { match timer { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {}
                _ = shutdown.cancelled() => {
                    self.finished = true;
                    self.queue.push_back(Line::Error(json!({"error": "the hub is shutting down", "code": "unavailable"})));
                }
            }
        }
    }
}

/// An API error's message, for trigger and evaluation lines.
fn api_error_text(e: ApiError) -> String {
    format!("{} ({})", e.message(), e.status().as_u16())
}

/// Runs a wait to its end and answers in the asked format.
async fn respond(state: Arc<ApiState>, plan: Plan, targets: Vec<Target>, single: bool, format: Format) -> Response {
    let waiter = Waiter::new(state, plan, targets, single);
    match format {
        Format::Json => {
            let mut waiter = waiter;
            let mut last = Value::Null;
            while let Some(line) = waiter.next().await {
                match line {
                    Line::Result(v) => last = v,
                    Line::Error(v) => {
                        return (StatusCode::SERVICE_UNAVAILABLE, Json(v)).into_response();
                    }
                    _ => {}
                }
            }
            Json(last).into_response()
        }
        Format::Ndjson => {
            let lines = futures_util::stream::unfold(waiter, |mut w| async move { w.next().await.map(|l| (l, w)) })
                .map(|l| Ok::<_, Infallible>(format!("{}\n", l.into_value())));
            let mut r = Body::from_stream(lines).into_response();
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
            no_buffering(r)
        }
        Format::Sse => {
            let events = futures_util::stream::unfold(waiter, |mut w| async move { w.next().await.map(|l| (l, w)) })
                .map(|l| {
                    let kind = l.kind();
                    Ok::<_, Infallible>(SseEvent::default().event(kind).data(l.into_value().to_string()))
                });
            no_buffering(Sse::new(events).into_response())
        }
    }
}

fn no_buffering(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies such as nginx would otherwise hold the progress lines back.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// `POST …/applications/{namespace}/{name}/wait`.
pub(super) async fn wait_one(
    State(state): State<Arc<ApiState>>,
    axum::Extension(principal): axum::Extension<Principal>,
    Path((id, namespace, name)): Path<(String, String, String)>,
    Query(q): Query<WaitQuery>,
    headers: HeaderMap,
    Json(body): Json<WaitBody>,
) -> Result<Response, ApiError> {
    ensure_gateway(&state, &id).await?;
    let format = format_of(&q, &headers)?;
    if body.selector.is_some()
        || body.annotations.is_some()
        || body.project.is_some()
        || body.gateways.is_some()
        || body.applications.is_some()
        || body.expect_count.is_some()
    {
        return Err(bad(
            "this route waits for the application in its path: select many with POST /api/v1/wait",
        ));
    }
    let plan = plan(&body, &principal)?;
    let target = Target {
        gateway_id: id,
        namespace,
        name,
    };
    Ok(respond(state, plan, vec![target], true, format).await)
}

/// `POST /api/v1/wait`: many applications at once.
pub(super) async fn wait_many(
    State(state): State<Arc<ApiState>>,
    axum::Extension(principal): axum::Extension<Principal>,
    Query(q): Query<WaitQuery>,
    headers: HeaderMap,
    Json(body): Json<WaitBody>,
) -> Result<Response, ApiError> {
    let format = format_of(&q, &headers)?;
    let plan = plan(&body, &principal)?;
    for g in body.gateways.iter().flatten() {
        ensure_gateway(&state, g).await?;
    }
    let targets = select(&state, &body)?;
    let names: Vec<String> = targets.iter().map(Target::label).collect();
    if let Some(want) = body.expect_count
        && want != targets.len()
    {
        return Err(ApiError::with_body(
            StatusCode::CONFLICT,
            json!({
                "error": format!("expected {want} application(s), found {}: {}", targets.len(), if names.is_empty() { "none".to_owned() } else { names.join(", ") }),
                "code": "count_mismatch",
                "expected": want,
                "found": names,
            }),
        ));
    }
    if targets.is_empty() && body.expect_count.is_none() {
        return Err(ApiError::with_body(
            StatusCode::NOT_FOUND,
            json!({"error": "no application matches the selection (expectCount: 0 waits for none)", "code": "not_found"}),
        ));
    }
    if targets.len() > MAX_APPS {
        return Err(bad(format!(
            "{} applications match; one wait follows at most {MAX_APPS}: narrow the selection",
            targets.len()
        )));
    }
    tracing::info!(who = %principal.name, applications = targets.len(), "wait started");
    Ok(respond(state, plan, targets, false, format).await)
}
