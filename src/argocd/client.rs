//! The Argo CD REST client: one `reqwest` HTTP/1.1 client, bearer tokens from files, capped
//! bodies and stream lines, retries with backoff for transient failures, classified errors.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::io::StreamReader;
use url::Url;

use super::config::{ArgoCdConfig, AuthSource, TlsMode};
use super::error::{ArgoCdError, Permission};
use super::model::{
    self, AppKey, Cluster, DecodedApp, DecodedList, ListItem, StreamChunk, WatchEvent, WatchEventType,
    decode_application, decode_stream_chunk,
};
use super::session::Session;
use super::split::{ListSplitter, Piece};
use super::token::{Claims, LoadedToken, TokenStore};
use super::transport;
use crate::util::Backoff;

/// How unary GET calls are retried on 5xx, connection failures and timeouts.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Total attempts (1 = no retry).
    pub attempts: u32,
    /// First backoff ceiling.
    pub base: Duration,
    /// Largest backoff ceiling.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 3,
            base: Duration::from_millis(200),
            max: Duration::from_secs(5),
        }
    }
}

/// A cheap-to-clone Argo CD client.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    config: ArgoCdConfig,
    tokens: TokenStore,
    /// The login session when the credential is a username and password.
    session: Option<Session>,
    retry: RetryPolicy,
    metrics: std::sync::OnceLock<super::metrics::ArgoCdMetrics>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.inner.config.base_url.as_str())
            .field("tls", &self.inner.config.tls)
            .field("auth", self.inner.tokens.source())
            .finish()
    }
}

/// An application reference for calls on one app: its key and, when known, its project (which
/// selects the project token and is passed as `project`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppRef {
    /// Namespace and name.
    pub key: AppKey,
    /// AppProject, if known.
    pub project: Option<String>,
}

impl AppRef {
    /// A reference without a project.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            key: AppKey::new(namespace, name),
            project: None,
        }
    }

    /// The same reference with a project.
    pub fn with_project(mut self, project: impl Into<String>) -> Self {
        self.project = Some(project.into());
        self
    }
}

/// Filters of an application list or watch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppQuery {
    /// Project whose token serves the call (project tokens); also added to `projects`.
    pub scope: Option<String>,
    /// Projects (`projects=`, repeated).
    pub projects: Vec<String>,
    /// Label selector.
    pub selector: Option<String>,
    /// One app namespace (`appNamespace=`).
    pub app_namespace: Option<String>,
    /// One app name (`name=`).
    pub name: Option<String>,
}

impl AppQuery {
    /// The list query the configuration's filters ask for, served by `scope`'s token. Argo CD
    /// filters by one app namespace only; several are filtered after listing.
    pub fn configured(config: &super::config::ArgoCdConfig, scope: Option<String>) -> Self {
        Self {
            scope,
            projects: config.projects.clone(),
            selector: config.selector.clone(),
            app_namespace: match config.app_namespaces.as_slice() {
                [one] => Some(one.clone()),
                _ => None,
            },
            name: None,
        }
    }
}

/// Refresh mode of a get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refresh {
    /// Re-compare with the cached manifests.
    Normal,
    /// Also regenerate manifests.
    Hard,
}

/// One resource to sync selectively.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncResource {
    /// API group.
    pub group: String,
    /// Kind.
    pub kind: String,
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
}

/// Options of a sync.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncRequest {
    /// Revision to sync to (single source).
    pub revision: Option<String>,
    /// Revisions to sync to (multi-source), applied to `source_positions`.
    pub revisions: Vec<String>,
    /// 1-based source positions for `revisions`.
    pub source_positions: Vec<i64>,
    /// Prune resources no longer in Git.
    pub prune: bool,
    /// Only simulate.
    pub dry_run: bool,
    /// Only these resources (empty: all).
    pub resources: Vec<SyncResource>,
    /// `kubectl apply --force` (Argo CD's `strategy.apply.force`).
    pub force: bool,
    /// Sync options of this sync, e.g. `Validate=false` (Argo CD's `syncOptions.items`).
    pub sync_options: Vec<String>,
}

/// Options of a rollback to a history entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RollbackRequest {
    /// The history id (`status.history[].id`).
    pub id: i64,
    /// Prune resources not in that revision.
    pub prune: bool,
    /// Only simulate.
    pub dry_run: bool,
}

/// One resource, for events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceRef {
    /// Namespace of the resource.
    pub namespace: String,
    /// Name of the resource.
    pub name: String,
    /// UID, if known.
    pub uid: Option<String>,
}

/// Bounds and selection of a log read (no follow).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogsRequest {
    /// Pod name.
    pub pod_name: String,
    /// Container (empty: the default container).
    pub container: Option<String>,
    /// Namespace of the pod.
    pub namespace: Option<String>,
    /// Lines from the end.
    pub tail_lines: u32,
    /// Stop after this many bytes of content.
    pub max_bytes: usize,
    /// Logs of the previous container instance.
    pub previous: bool,
}

impl Default for LogsRequest {
    fn default() -> Self {
        Self {
            pod_name: String::new(),
            container: None,
            namespace: None,
            tail_lines: 100,
            max_bytes: 1024 * 1024,
            previous: false,
        }
    }
}

/// The largest `tail_lines` a log request may ask for.
pub const MAX_TAIL_LINES: u32 = 10_000;

/// `/api/version` (PascalCase keys; unauthenticated callers get only `Version`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct VersionInfo {
    /// e.g. `v3.5.1` or `v3.6.0+abc1234`.
    pub version: String,
    /// Build date.
    pub build_date: String,
    /// Git commit.
    pub git_commit: String,
    /// Go version.
    pub go_version: String,
    /// Platform.
    pub platform: String,
}

impl VersionInfo {
    /// The major version (2 or 3), if the version string parses.
    pub fn major(&self) -> Option<u64> {
        self.version
            .trim_start_matches('v')
            .split(['.', '+', '-'])
            .next()?
            .parse()
            .ok()
    }
}

/// `/api/v1/session/userinfo`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UserInfo {
    /// Whether the token was accepted.
    pub logged_in: bool,
    /// RBAC subject (account name).
    pub username: String,
    /// Issuer.
    pub iss: String,
    /// Groups.
    #[serde(deserialize_with = "null_vec")]
    pub groups: Vec<String>,
}

fn null_vec<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// A stream of application watch events; ends when the server ends the stream.
pub type AppWatch = Pin<Box<dyn Stream<Item = Result<WatchEvent, ArgoCdError>> + Send>>;

/// Tells, from an application's raw JSON in a watch event, whether the receiver already holds
/// exactly these bytes (`None`: not decoded) or not (`Some(fingerprint)` of the bytes, carried
/// with the decoded event so the receiver can recognise them next time).
pub type HeldCheck = Arc<dyn Fn(&[u8]) -> Option<u64> + Send + Sync>;

/// One item of an application watch read with [`Client::watch_applications_held`].
// The event is moved once, into the view; a box would add an allocation per change to make
// the rare `Held` smaller (the plain watch carries `WatchEvent` by value too).
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum WatchItem {
    /// An event, decoded, with the fingerprint [`HeldCheck`] gave its application's JSON (0
    /// when the line could not be read apart first).
    Event {
        /// The event.
        event: WatchEvent,
        /// The fingerprint of the application's raw JSON.
        raw: u64,
    },
    /// An added or modified application the receiver holds byte for byte, not decoded: what
    /// Argo CD 3.x replays of every application after each list.
    Held,
}

/// A stream of [`WatchItem`]s; ends when the server ends the stream.
pub type AppWatchHeld = Pin<Box<dyn Stream<Item = Result<WatchItem, ArgoCdError>> + Send>>;

/// A stream of ApplicationSet watch events; ends when the server ends the stream.
pub type AppSetWatch = Pin<Box<dyn Stream<Item = Result<model::AppSetWatchEvent, ArgoCdError>> + Send>>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Post,
    Delete,
}

struct Call<'a> {
    method: Method,
    segments: Vec<&'a str>,
    query: Vec<(&'static str, String)>,
    body: Option<serde_json::Value>,
    /// Project whose token serves the call.
    scope: Option<&'a str>,
    permission: &'static Permission,
    what: String,
    /// Deadline for the response headers and body; `None` for streams (headers only).
    stream: bool,
    retry: bool,
}

impl Client {
    /// A client for a validated configuration (no I/O happens here).
    pub fn new(config: ArgoCdConfig) -> Result<Self, ArgoCdError> {
        Self::with_retry(config, RetryPolicy::default())
    }

    /// A client with an explicit retry policy.
    pub fn with_retry(config: ArgoCdConfig, retry: RetryPolicy) -> Result<Self, ArgoCdError> {
        match &config.tls {
            TlsMode::Insecure => tracing::warn!(
                server = %config.base_url,
                "Argo CD TLS certificate and host name are NOT verified (--argocd-insecure)"
            ),
            TlsMode::Plaintext => tracing::warn!(
                server = %config.base_url,
                "Argo CD is reached WITHOUT TLS (--argocd-plaintext)"
            ),
            TlsMode::Verify { .. } => {}
        }
        let http = transport::http_client(&config)?;
        let tokens = TokenStore::new(config.auth.clone());
        let session = match &config.auth {
            AuthSource::Login {
                username,
                password_file,
            } => Some(Session::new(username.clone(), password_file.clone())),
            _ => None,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                config,
                tokens,
                session,
                retry,
                metrics: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Records request latency and outcomes into `metrics` from now on (the daemon's admin
    /// server exposes them); only the first call takes effect.
    pub fn set_metrics(&self, metrics: super::metrics::ArgoCdMetrics) {
        let _ = self.inner.metrics.set(metrics);
    }

    /// The configuration.
    pub fn config(&self) -> &ArgoCdConfig {
        &self.inner.config
    }

    /// The claims of the token that serves `project` (None: unscoped calls). With a login, the
    /// current session's (the account as subject until the first login).
    pub fn token_claims(&self, project: Option<&str>) -> Result<Claims, ArgoCdError> {
        if let Some(session) = &self.inner.session {
            return Ok(session.last().map(|t| t.claims).unwrap_or_else(|| Claims {
                subject: Some(format!("{}:login", session.username())),
                ..Claims::default()
            }));
        }
        Ok(self.inner.tokens.token_for(project)?.claims)
    }

    /// The login session, when the credential is a username and password.
    pub fn session(&self) -> Option<&Session> {
        self.inner.session.as_ref()
    }

    /// The bearer token for a call scoped to `scope`; with a username and password, the current
    /// session token, logging in first when there is none or it is about to expire.
    async fn bearer(&self, scope: Option<&str>) -> Result<LoadedToken, ArgoCdError> {
        let Some(session) = &self.inner.session else {
            return Ok(self.inner.tokens.token_for(scope)?);
        };
        if let Some(t) = session.current() {
            return Ok(t);
        }
        let _one_at_a_time = session.lock().await;
        if let Some(t) = session.current() {
            return Ok(t);
        }
        self.login(session).await
    }

    /// `POST /api/v1/session` with the username and password; keeps the token in memory.
    async fn login(&self, session: &Session) -> Result<LoadedToken, ArgoCdError> {
        let password = session.password()?;
        let mut url = self.inner.config.base_url.clone();
        if let Ok(mut segs) = url.path_segments_mut() {
            segs.pop_if_empty().extend(["api", "v1", "session"]);
        }
        let body = serde_json::json!({"username": session.username(), "password": password.expose()});
        let bytes = serde_json::to_vec(&body).map_err(|e| model::DecodeError {
            what: "login request".into(),
            reason: e.to_string(),
        })?;
        let timeout = self.inner.config.request_timeout;
        let req = self
            .inner
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(bytes)
            .timeout(timeout);
        let started = std::time::Instant::now();
        let sent = tokio::time::timeout(timeout, req.send()).await;
        if let Some(m) = self.inner.metrics.get() {
            let status = match &sent {
                Ok(Ok(r)) => r.status().as_u16().to_string(),
                Ok(Err(_)) => "error".to_owned(),
                Err(_) => "timeout".to_owned(),
            };
            m.observe(
                "POST",
                &super::metrics::endpoint(&["api", "v1", "session"]),
                &status,
                started.elapsed().as_secs_f64(),
            );
        }
        let resp = match sent {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(self.classify(&e, "log in")),
            Err(_) => {
                return Err(ArgoCdError::Timeout {
                    what: "log in".into(),
                    seconds: timeout.as_secs_f64(),
                });
            }
        };
        let status = resp.status();
        let body = self.read_body(resp).await?;
        if !status.is_success() {
            let message = error_message(&body);
            return Err(match status.as_u16() {
                s @ (400 | 401 | 403 | 404) => ArgoCdError::LoginFailed {
                    username: session.username().to_owned(),
                    status: s,
                    message,
                },
                s if s >= 500 => ArgoCdError::Unavailable {
                    url: self.inner.config.base_url.to_string(),
                    status: Some(s),
                    message,
                },
                s => ArgoCdError::Rejected { status: s, message },
            });
        }
        #[derive(Deserialize)]
        struct Answer {
            #[serde(default)]
            token: String,
        }
        let answer: Answer = serde_json::from_slice(&body).map_err(|e| model::DecodeError {
            what: "login answer".into(),
            reason: e.to_string(),
        })?;
        if answer.token.is_empty() {
            return Err(ArgoCdError::LoginFailed {
                username: session.username().to_owned(),
                status: status.as_u16(),
                message: "the answer carries no token".into(),
            });
        }
        let loaded = session.store(&answer.token);
        tracing::info!(
            account = session.username(),
            expires_at = ?loaded.claims.expires_at,
            "logged in to Argo CD"
        );
        Ok(loaded)
    }

    /// The token scopes the view lists with: `[None]` for one account token, one per project
    /// token file otherwise (limited to `projects` when that filter is set).
    pub fn scopes(&self, projects: &[String]) -> Result<Vec<Option<String>>, ArgoCdError> {
        match self.inner.tokens.source() {
            AuthSource::TokenFile(_) | AuthSource::Login { .. } => Ok(vec![None]),
            AuthSource::ProjectTokensDir(_) => {
                let names = self.inner.tokens.project_token_names()?;
                Ok(names
                    .into_iter()
                    .filter(|n| projects.is_empty() || projects.contains(n))
                    .map(Some)
                    .collect())
            }
        }
    }

    /// `GET /api/version`.
    pub async fn version(&self) -> Result<VersionInfo, ArgoCdError> {
        self.unary_json(Call {
            method: Method::Get,
            segments: vec!["api", "version"],
            query: vec![],
            body: None,
            scope: None,
            permission: &Permission::APPS_GET,
            what: "version".into(),
            stream: false,
            retry: true,
        })
        .await
    }

    /// `GET /api/v1/session/userinfo`.
    pub async fn userinfo(&self) -> Result<UserInfo, ArgoCdError> {
        self.userinfo_for(None).await
    }

    /// `GET /api/v1/session/userinfo` with the token of `project`.
    pub async fn userinfo_for(&self, project: Option<&str>) -> Result<UserInfo, ArgoCdError> {
        self.unary_json(Call {
            method: Method::Get,
            segments: vec!["api", "v1", "session", "userinfo"],
            query: vec![],
            body: None,
            scope: project,
            permission: &Permission::APPS_GET,
            what: "userinfo".into(),
            stream: false,
            retry: true,
        })
        .await
    }

    /// `GET /api/v1/account/can-i/{resource}/{action}/{subresource…}`; `subresource` is given as
    /// path segments (e.g. `["default", "*"]`), each URL-encoded.
    pub async fn can_i(
        &self,
        scope: Option<&str>,
        resource: &str,
        action: &str,
        subresource: &[&str],
    ) -> Result<bool, ArgoCdError> {
        #[derive(Deserialize)]
        struct CanI {
            #[serde(default)]
            value: String,
        }
        let mut segments = vec!["api", "v1", "account", "can-i", resource, action];
        segments.extend_from_slice(subresource);
        let r: CanI = self
            .unary_json(Call {
                method: Method::Get,
                segments,
                query: vec![],
                body: None,
                scope,
                permission: &Permission::APPS_GET,
                what: format!("can-i {resource} {action}"),
                stream: false,
                retry: true,
            })
            .await?;
        Ok(r.value == "yes")
    }

    fn app_query(q: &AppQuery) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let mut projects = q.projects.clone();
        if let Some(s) = &q.scope
            && !projects.contains(s)
        {
            projects.push(s.clone());
        }
        for p in projects {
            out.push(("projects", p));
        }
        if let Some(s) = &q.selector {
            out.push(("selector", s.clone()));
        }
        if let Some(ns) = &q.app_namespace {
            out.push(("appNamespace", ns.clone()));
        }
        if let Some(n) = &q.name {
            out.push(("name", n.clone()));
        }
        out
    }

    /// `GET /api/v1/applications`: items decoded one by one, broken ones skipped and logged.
    pub async fn list_applications(&self, q: &AppQuery) -> Result<DecodedList<DecodedApp>, ArgoCdError> {
        let mut list = DecodedList::default();
        list.resource_version = self.list_applications_into(q, &mut list).await?;
        Ok(list)
    }

    /// `GET /api/v1/applications`, each item handed to `sink` as soon as it has arrived and been
    /// decoded, so a list is never held whole; returns the list's resourceVersion once all of
    /// it has been read.
    pub async fn list_applications_into(
        &self,
        q: &AppQuery,
        sink: &mut (dyn ListSink<DecodedApp> + Send),
    ) -> Result<String, ArgoCdError> {
        self.list_streamed::<model::Applications>(
            Call {
                method: Method::Get,
                segments: vec!["api", "v1", "applications"],
                query: Self::app_query(q),
                body: None,
                scope: q.scope.as_deref(),
                permission: &Permission::APPS_GET,
                what: "list applications".into(),
                stream: false,
                retry: true,
            },
            sink,
        )
        .await
    }

    /// `GET /api/v1/stream/applications` from `resource_version` (None: every app is first
    /// reported as ADDED). Accepts NDJSON and server-sent-event framing.
    pub async fn watch_applications(
        &self,
        q: &AppQuery,
        resource_version: Option<&str>,
    ) -> Result<AppWatch, ArgoCdError> {
        let lines = self.app_watch_lines(q, resource_version).await?;
        let stream = lines.filter_map(|line| async move {
            let line = match line {
                Ok(l) => l,
                Err(e) => return Some(Err(e)),
            };
            Some(decode_app_watch_line(&line))
        });
        Ok(Box::pin(stream))
    }

    /// [`Client::watch_applications`] that asks `held`, before decoding an added or modified
    /// application, whether the receiver already holds its JSON byte for byte, and then does not
    /// decode it. Argo CD 3.x replays every application after each list (the view watches it
    /// without a resourceVersion); nearly all of them are unchanged, and a decode costs about
    /// ten times the look.
    pub async fn watch_applications_held(
        &self,
        q: &AppQuery,
        resource_version: Option<&str>,
        held: HeldCheck,
    ) -> Result<AppWatchHeld, ArgoCdError> {
        let lines = self.app_watch_lines(q, resource_version).await?;
        let stream = lines.filter_map(move |line| {
            let held = held.clone();
            async move {
                let line = match line {
                    Ok(l) => l,
                    Err(e) => return Some(Err(e)),
                };
                let mut raw = 0;
                if let Some((kind, application)) = model::peek_watch_line(&line)
                    && matches!(kind, WatchEventType::Added | WatchEventType::Modified)
                {
                    match held(application.as_bytes()) {
                        None => return Some(Ok(WatchItem::Held)),
                        Some(fingerprint) => raw = fingerprint,
                    }
                    if let Some(event) = model::decode_watch_application(kind, application) {
                        return Some(Ok(WatchItem::Event { event, raw }));
                    }
                }
                Some(decode_app_watch_line(&line).map(|event| WatchItem::Event { event, raw }))
            }
        });
        Ok(Box::pin(stream))
    }

    /// The lines of `GET /api/v1/stream/applications`.
    async fn app_watch_lines(
        &self,
        q: &AppQuery,
        resource_version: Option<&str>,
    ) -> Result<impl Stream<Item = Result<String, ArgoCdError>> + Send + 'static, ArgoCdError> {
        let mut query = Self::app_query(q);
        if let Some(rv) = resource_version.filter(|rv| !rv.is_empty()) {
            query.push(("resourceVersion", rv.to_owned()));
        }
        let resp = self
            .send(&Call {
                method: Method::Get,
                segments: vec!["api", "v1", "stream", "applications"],
                query,
                body: None,
                scope: q.scope.as_deref(),
                permission: &Permission::APPS_GET,
                what: "watch applications".into(),
                stream: true,
                retry: true,
            })
            .await?;
        Ok(self.lines(resp))
    }

    fn app_call_query(app: &AppRef) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        if !app.key.namespace.is_empty() {
            q.push(("appNamespace", app.key.namespace.clone()));
        }
        if let Some(p) = &app.project {
            q.push(("project", p.clone()));
        }
        q
    }

    /// `GET /api/v1/applications/{name}`, optionally with `refresh=normal|hard`.
    pub async fn get_application(&self, app: &AppRef, refresh: Option<Refresh>) -> Result<DecodedApp, ArgoCdError> {
        let mut query = Self::app_call_query(app);
        if let Some(r) = refresh {
            query.push((
                "refresh",
                match r {
                    Refresh::Normal => "normal",
                    Refresh::Hard => "hard",
                }
                .into(),
            ));
        }
        let bytes = self
            .unary_bytes(Call {
                method: Method::Get,
                segments: vec!["api", "v1", "applications", &app.key.name],
                query,
                body: None,
                scope: app.project.as_deref(),
                permission: &Permission::APPS_GET,
                what: format!("get application {}", app.key),
                stream: false,
                retry: true,
            })
            .await?;
        app_from_body(&bytes)
    }

    /// `POST /api/v1/applications/{name}/sync`; returns the app with its operation set.
    pub async fn sync_application(&self, app: &AppRef, req: &SyncRequest) -> Result<DecodedApp, ArgoCdError> {
        let mut body = serde_json::json!({
            "name": app.key.name,
            "prune": req.prune,
            "dryRun": req.dry_run,
        });
        if !app.key.namespace.is_empty() {
            body["appNamespace"] = app.key.namespace.clone().into();
        }
        if let Some(p) = &app.project {
            body["project"] = p.clone().into();
        }
        if let Some(r) = &req.revision {
            body["revision"] = r.clone().into();
        }
        if !req.revisions.is_empty() {
            body["revisions"] = serde_json::json!(req.revisions);
            body["sourcePositions"] = serde_json::json!(req.source_positions);
        }
        if !req.resources.is_empty() {
            body["resources"] = serde_json::json!(req.resources);
        }
        if req.force {
            body["strategy"] = serde_json::json!({"apply": {"force": true}});
        }
        if !req.sync_options.is_empty() {
            body["syncOptions"] = serde_json::json!({"items": req.sync_options});
        }
        let bytes = self
            .unary_bytes(Call {
                method: Method::Post,
                segments: vec!["api", "v1", "applications", &app.key.name, "sync"],
                query: vec![],
                body: Some(body),
                scope: app.project.as_deref(),
                permission: &Permission::APPS_SYNC,
                what: format!("sync application {}", app.key),
                stream: false,
                // A sync is not idempotent enough to resend blindly after a 5xx.
                retry: false,
            })
            .await?;
        app_from_body(&bytes)
    }

    /// `DELETE /api/v1/applications/{name}/operation`: ends the running operation (Argo CD
    /// checks `applications, sync`).
    pub async fn terminate_operation(&self, app: &AppRef) -> Result<serde_json::Value, ArgoCdError> {
        self.unary_json(Call {
            method: Method::Delete,
            segments: vec!["api", "v1", "applications", &app.key.name, "operation"],
            query: Self::app_call_query(app),
            body: None,
            scope: app.project.as_deref(),
            permission: &Permission::APPS_SYNC,
            what: format!("terminate the operation of application {}", app.key),
            stream: false,
            retry: false,
        })
        .await
    }

    /// `POST /api/v1/applications/{name}/rollback`: syncs to the revision of a history entry;
    /// returns the app with its operation set.
    pub async fn rollback_application(&self, app: &AppRef, req: &RollbackRequest) -> Result<DecodedApp, ArgoCdError> {
        let mut body = serde_json::json!({
            "name": app.key.name,
            "id": req.id,
            "prune": req.prune,
            "dryRun": req.dry_run,
        });
        if !app.key.namespace.is_empty() {
            body["appNamespace"] = app.key.namespace.clone().into();
        }
        if let Some(p) = &app.project {
            body["project"] = p.clone().into();
        }
        let bytes = self
            .unary_bytes(Call {
                method: Method::Post,
                segments: vec!["api", "v1", "applications", &app.key.name, "rollback"],
                query: vec![],
                body: Some(body),
                scope: app.project.as_deref(),
                // Argo CD maps rollback to sync unless server.rbac.rollback.enforce.enable is
                // set; its 403 message names which one it checked (see `send`).
                permission: &Permission::APPS_SYNC,
                what: format!("roll back application {} to history id {}", app.key, req.id),
                stream: false,
                retry: false,
            })
            .await?;
        app_from_body(&bytes)
    }

    async fn app_json(
        &self,
        app: &AppRef,
        tail: &str,
        extra: Vec<(&'static str, String)>,
    ) -> Result<serde_json::Value, ArgoCdError> {
        let mut query = Self::app_call_query(app);
        query.extend(extra);
        self.unary_json(Call {
            method: Method::Get,
            segments: vec!["api", "v1", "applications", &app.key.name, tail],
            query,
            body: None,
            scope: app.project.as_deref(),
            permission: &Permission::APPS_GET,
            what: format!("{tail} of {}", app.key),
            stream: false,
            retry: true,
        })
        .await
    }

    /// `GET /api/v1/applications/{name}/resource-tree`, as raw JSON.
    pub async fn resource_tree(&self, app: &AppRef) -> Result<serde_json::Value, ArgoCdError> {
        self.app_json(app, "resource-tree", vec![]).await
    }

    /// `GET /api/v1/applications/{name}/managed-resources`, as raw JSON.
    pub async fn managed_resources(&self, app: &AppRef) -> Result<serde_json::Value, ArgoCdError> {
        self.app_json(app, "managed-resources", vec![]).await
    }

    /// `GET /api/v1/applications/{name}/events` for the app or one of its resources, as raw JSON.
    pub async fn events(&self, app: &AppRef, resource: Option<&ResourceRef>) -> Result<serde_json::Value, ArgoCdError> {
        let mut extra = Vec::new();
        if let Some(r) = resource {
            extra.push(("resourceNamespace", r.namespace.clone()));
            extra.push(("resourceName", r.name.clone()));
            if let Some(uid) = &r.uid {
                extra.push(("resourceUID", uid.clone()));
            }
        }
        self.app_json(app, "events", extra).await
    }

    /// `GET /api/v1/applications/{name}/logs` without follow: the log entries (`result` objects)
    /// as a JSON array, bounded by `tail_lines` and `max_bytes` of content.
    pub async fn logs(&self, app: &AppRef, req: &LogsRequest) -> Result<serde_json::Value, ArgoCdError> {
        let tail = req.tail_lines.clamp(1, MAX_TAIL_LINES);
        let mut query = Self::app_call_query(app);
        query.push(("podName", req.pod_name.clone()));
        if let Some(c) = &req.container {
            query.push(("container", c.clone()));
        }
        if let Some(ns) = &req.namespace {
            query.push(("namespace", ns.clone()));
        }
        query.push(("tailLines", tail.to_string()));
        query.push(("follow", "false".into()));
        if req.previous {
            query.push(("previous", "true".into()));
        }
        let call = Call {
            method: Method::Get,
            segments: vec!["api", "v1", "applications", &app.key.name, "logs"],
            query,
            body: None,
            scope: app.project.as_deref(),
            permission: &Permission::LOGS_GET,
            what: format!("logs of {}", app.key),
            stream: true,
            retry: true,
        };
        let timeout = self.inner.config.request_timeout;
        let what = call.what.clone();
        let collect = async {
            let resp = self.send(&call).await?;
            let mut lines = std::pin::pin!(self.lines(resp));
            let mut out = Vec::new();
            let mut bytes = 0usize;
            while let Some(line) = lines.next().await {
                let line = line?;
                let chunk = decode_stream_chunk(&line, |raw| {
                    serde_json::from_str::<serde_json::Value>(raw).map_err(|e| model::DecodeError {
                        what: "log entry".into(),
                        reason: e.to_string(),
                    })
                })?;
                let entry = match chunk {
                    StreamChunk::Result(v) => v,
                    StreamChunk::Error(e) => return Err(stream_error(e)),
                };
                let last = entry.get("last").and_then(|v| v.as_bool()).unwrap_or(false);
                let content_len = entry.get("content").and_then(|v| v.as_str()).map_or(0, str::len);
                if !(last && content_len == 0) {
                    bytes += content_len;
                    if bytes > req.max_bytes || out.len() >= tail as usize {
                        break;
                    }
                    out.push(entry);
                }
                if last {
                    break;
                }
            }
            Ok(serde_json::Value::Array(out))
        };
        match tokio::time::timeout(timeout, collect).await {
            Ok(r) => r,
            Err(_) => Err(ArgoCdError::Timeout {
                what,
                seconds: timeout.as_secs_f64(),
            }),
        }
    }

    /// `GET /api/v1/clusters` (unscoped token).
    pub async fn list_clusters(&self) -> Result<DecodedList<Cluster>, ArgoCdError> {
        let mut list = DecodedList::default();
        list.resource_version = self
            .list_streamed::<model::Clusters>(
                Call {
                    method: Method::Get,
                    segments: vec!["api", "v1", "clusters"],
                    query: vec![],
                    body: None,
                    scope: None,
                    permission: &Permission::CLUSTERS_GET,
                    what: "list clusters".into(),
                    stream: false,
                    retry: true,
                },
                &mut list,
            )
            .await?;
        Ok(list)
    }

    fn appset_query(&self, namespace_key: &'static str) -> Vec<(&'static str, String)> {
        let config = &self.inner.config;
        let mut out: Vec<(&'static str, String)> = config.projects.iter().map(|p| ("projects", p.clone())).collect();
        if let [one] = config.app_namespaces.as_slice() {
            out.push((namespace_key, one.clone()));
        }
        out
    }

    /// `GET /api/v1/applicationsets` (unscoped token), items decoded one by one. An Argo CD
    /// without the endpoint answers [`ArgoCdError::NotFound`].
    pub async fn list_applicationsets(&self) -> Result<DecodedList<model::DecodedAppSet>, ArgoCdError> {
        let mut list = DecodedList::default();
        list.resource_version = self
            .list_streamed::<model::AppSets>(
                Call {
                    method: Method::Get,
                    segments: vec!["api", "v1", "applicationsets"],
                    query: self.appset_query("appsetNamespace"),
                    body: None,
                    scope: None,
                    permission: &Permission::APPSETS_GET,
                    what: "list applicationsets".into(),
                    stream: false,
                    retry: true,
                },
                &mut list,
            )
            .await?;
        Ok(list)
    }

    /// `GET /api/v1/stream/applicationsets` from `resource_version` (Argo CD 3.4 and later; an
    /// older one answers [`ArgoCdError::NotFound`]).
    pub async fn watch_applicationsets(&self, resource_version: Option<&str>) -> Result<AppSetWatch, ArgoCdError> {
        let mut query = self.appset_query("appSetNamespace");
        if let Some(rv) = resource_version.filter(|rv| !rv.is_empty()) {
            query.push(("resourceVersion", rv.to_owned()));
        }
        let resp = self
            .send(&Call {
                method: Method::Get,
                segments: vec!["api", "v1", "stream", "applicationsets"],
                query,
                body: None,
                scope: None,
                permission: &Permission::APPSETS_GET,
                what: "watch applicationsets".into(),
                stream: true,
                retry: true,
            })
            .await?;
        let stream = self.lines(resp).filter_map(|line| async move {
            let line = match line {
                Ok(l) => l,
                Err(e) => return Some(Err(e)),
            };
            match decode_stream_chunk(&line, model::decode_appset_watch_result) {
                Ok(StreamChunk::Result(ev)) => Some(Ok(ev)),
                Ok(StreamChunk::Error(e)) => Some(Err(stream_error(e))),
                Err(e) => Some(Err(ArgoCdError::Decode(e))),
            }
        });
        Ok(Box::pin(stream))
    }

    /// `GET /api/v1/projects` (unscoped token).
    pub async fn list_projects(&self) -> Result<DecodedList<model::Project>, ArgoCdError> {
        let mut list = DecodedList::default();
        list.resource_version = self
            .list_streamed::<model::Projects>(
                Call {
                    method: Method::Get,
                    segments: vec!["api", "v1", "projects"],
                    query: vec![],
                    body: None,
                    scope: None,
                    permission: &Permission::PROJECTS_GET,
                    what: "list projects".into(),
                    stream: false,
                    retry: true,
                },
                &mut list,
            )
            .await?;
        Ok(list)
    }

    // -----------------------------------------------------------------------------------------

    fn url(&self, call: &Call<'_>) -> Url {
        let mut url = self.inner.config.base_url.clone();
        if let Ok(mut segs) = url.path_segments_mut() {
            segs.pop_if_empty().extend(call.segments.iter());
        }
        if !call.query.is_empty() {
            let mut qp = url.query_pairs_mut();
            for (k, v) in &call.query {
                qp.append_pair(k, v);
            }
        }
        url
    }

    async fn unary_json<T: serde::de::DeserializeOwned>(&self, call: Call<'_>) -> Result<T, ArgoCdError> {
        let what = call.what.clone();
        let bytes = self.unary_bytes(call).await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            ArgoCdError::Decode(model::DecodeError {
                what,
                reason: e.to_string(),
            })
        })
    }

    /// Runs one attempt of `call` per try, under the request deadline, retrying transient
    /// failures of retryable calls with backoff.
    async fn retrying<T, Fut>(&self, call: &Call<'_>, mut once: impl FnMut() -> Fut) -> Result<T, ArgoCdError>
    where
        Fut: std::future::Future<Output = Result<T, ArgoCdError>>,
    {
        let mut retry = Retry::new(&self.inner.retry);
        loop {
            let result = self.within_deadline(call, once()).await;
            match result {
                Err(e) if retry.again(call, &e) => retry.wait().await,
                other => return other,
            }
        }
    }

    /// Bounds one attempt by the request timeout.
    async fn within_deadline<T>(
        &self,
        call: &Call<'_>,
        attempt: impl std::future::Future<Output = Result<T, ArgoCdError>>,
    ) -> Result<T, ArgoCdError> {
        let timeout = self.inner.config.request_timeout;
        match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(ArgoCdError::Timeout {
                what: call.what.clone(),
                seconds: timeout.as_secs_f64(),
            }),
        }
    }

    /// A unary call with body cap, deadline and retries.
    async fn unary_bytes(&self, call: Call<'_>) -> Result<Vec<u8>, ArgoCdError> {
        self.retrying(&call, || async {
            let resp = self.send(&call).await?;
            self.read_body(resp).await
        })
        .await
    }

    /// A list call whose items are decoded and handed to `sink` while the body arrives, with
    /// the body cap, deadline and retries of a unary call (`sink` is told when an attempt
    /// starts over). Returns the list's resourceVersion.
    async fn list_streamed<K: model::ListKind>(
        &self,
        call: Call<'_>,
        sink: &mut (dyn ListSink<K::Item> + Send),
    ) -> Result<String, ArgoCdError> {
        let mut retry = Retry::new(&self.inner.retry);
        loop {
            let result = self.within_deadline(&call, self.read_list::<K>(&call, sink)).await;
            match result {
                Err(e) if retry.again(&call, &e) => {
                    retry.wait().await;
                    sink.restart();
                }
                other => return other,
            }
        }
    }

    /// One attempt of [`Client::list_streamed`]: each chunk of the body goes through the list
    /// splitter and each complete item is decoded from its bytes at once.
    async fn read_list<K: model::ListKind>(
        &self,
        call: &Call<'_>,
        sink: &mut (dyn ListSink<K::Item> + Send),
    ) -> Result<String, ArgoCdError> {
        let mut resp = self.send(call).await?;
        let limit = self.inner.config.max_body_bytes;
        if resp.content_length().is_some_and(|n| n > limit) {
            return Err(ArgoCdError::BodyTooLarge { limit });
        }
        let mut splitter = ListSplitter::new(usize::try_from(limit).unwrap_or(usize::MAX));
        let broken = |e: crate::argocd::split::SplitError| {
            ArgoCdError::Decode(model::DecodeError {
                what: format!("{} list", K::WHAT),
                reason: e.to_string(),
            })
        };
        let (mut resource_version, mut index, mut read) = (String::new(), 0usize, 0u64);
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => return Err(self.classify(&e, "read response")),
            };
            read += chunk.len() as u64;
            if read > limit {
                return Err(ArgoCdError::BodyTooLarge { limit });
            }
            splitter
                .feed(&chunk, &mut |piece| match piece {
                    Piece::Meta(raw) => resource_version = model::decode_list_meta(raw),
                    Piece::Item(raw) => {
                        if !sink.known(raw) {
                            sink.item(model::decode_list_item::<K>(raw, index));
                        }
                        index += 1;
                    }
                })
                .map_err(broken)?;
        }
        splitter.finish().map_err(broken)?;
        Ok(resource_version)
    }

    async fn read_body(&self, mut resp: reqwest::Response) -> Result<Vec<u8>, ArgoCdError> {
        let limit = self.inner.config.max_body_bytes;
        if resp.content_length().is_some_and(|n| n > limit) {
            return Err(ArgoCdError::BodyTooLarge { limit });
        }
        let mut buf = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if (buf.len() + chunk.len()) as u64 > limit {
                        return Err(ArgoCdError::BodyTooLarge { limit });
                    }
                    buf.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(buf),
                Err(e) => return Err(self.classify(&e, "read response")),
            }
        }
    }

    fn classify(&self, e: &reqwest::Error, what: &str) -> ArgoCdError {
        let url = self.inner.config.base_url.as_str();
        let mut err = transport::classify_reqwest(url, what, self.inner.config.request_timeout, e);
        if !self.inner.config.uses_tls()
            && matches!(err, ArgoCdError::Unavailable { .. })
            && transport::is_http_parse_error(e)
        {
            err = ArgoCdError::PlaintextAgainstTls {
                url: url.to_owned(),
                detail: "the server answered with bytes that are not HTTP, as a TLS server does".into(),
            };
        }
        err
    }

    /// Sends one request and maps a non-2xx status to its error; returns the response for the
    /// body. With a login, a 401 ends the session and the call is made once more after logging
    /// in again.
    async fn send(&self, call: &Call<'_>) -> Result<reqwest::Response, ArgoCdError> {
        let token = self.bearer(call.scope).await?;
        let Some(session) = &self.inner.session else {
            return self.send_with(call, token).await;
        };
        match self.send_with(call, token.clone()).await {
            Err(ArgoCdError::Unauthorized { message, .. }) => {
                tracing::info!(account = session.username(), reason = %message, "Argo CD refused the session token; logging in again");
                session.invalidate(&token.token);
                let fresh = self.bearer(call.scope).await?;
                match self.send_with(call, fresh).await {
                    Err(ArgoCdError::Unauthorized { message, .. }) => Err(ArgoCdError::SessionRejected {
                        username: session.username().to_owned(),
                        message,
                    }),
                    other => other,
                }
            }
            other => other,
        }
    }

    async fn send_with(&self, call: &Call<'_>, token: LoadedToken) -> Result<reqwest::Response, ArgoCdError> {
        let url = self.url(call);
        let mut req = match call.method {
            Method::Get => self.inner.http.get(url),
            Method::Post => self.inner.http.post(url),
            Method::Delete => self.inner.http.delete(url),
        };
        req = req.bearer_auth(token.token.expose());
        if call.stream {
            // Server-sent events: argocd-server then writes a keepalive every 15 s, which lets a
            // silent, dead stream be told from a quiet one (NDJSON streams carry none).
            req = req.header(reqwest::header::ACCEPT, "text/event-stream");
        } else {
            req = req.timeout(self.inner.config.request_timeout);
        }
        if let Some(body) = &call.body {
            // Exactly this value: argocd-server answers 415 to anything else, even with a charset.
            let bytes = serde_json::to_vec(body).map_err(|e| model::DecodeError {
                what: "request body".into(),
                reason: e.to_string(),
            })?;
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes);
        } else if call.method != Method::Get {
            // argocd-server checks the content type of every non-GET call, bodiless or not.
            req = req.header(reqwest::header::CONTENT_TYPE, "application/json");
        }
        let timeout = self.inner.config.request_timeout;
        // argocd-server sends a watch's response headers only with its first event, so a quiet
        // watch legitimately waits here; streams are bounded by their caller (the view's resync
        // deadline, the log read's deadline) and by the connect timeout.
        let started = std::time::Instant::now();
        let sent = if call.stream {
            Ok(req.send().await)
        } else {
            tokio::time::timeout(timeout, req.send()).await
        };
        if let Some(m) = self.inner.metrics.get() {
            let status = match &sent {
                Ok(Ok(r)) => r.status().as_u16().to_string(),
                Ok(Err(_)) => "error".to_owned(),
                Err(_) => "timeout".to_owned(),
            };
            let method = match call.method {
                Method::Get => "GET",
                Method::Post => "POST",
                Method::Delete => "DELETE",
            };
            m.observe(
                method,
                &super::metrics::endpoint(&call.segments),
                &status,
                started.elapsed().as_secs_f64(),
            );
        }
        let resp = match sent {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(self.classify(&e, &call.what)),
            Err(_) => {
                return Err(ArgoCdError::Timeout {
                    what: call.what.clone(),
                    seconds: timeout.as_secs_f64(),
                });
            }
        };
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let base = self.inner.config.base_url.as_str().to_owned();
        if status.is_redirection() {
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            if location.starts_with("https://") && !self.inner.config.uses_tls() {
                return Err(ArgoCdError::PlaintextAgainstTls {
                    url: base,
                    detail: format!("it answered {} redirecting to {location}", status.as_u16()),
                });
            }
            return Err(ArgoCdError::Rejected {
                status: status.as_u16(),
                message: format!("unexpected redirect to {location}; check the server URL and root path"),
            });
        }
        // Error bodies are small; cap them independently of the configured body limit.
        let mut body = Vec::new();
        let mut resp = resp;
        while let Ok(Some(chunk)) = resp.chunk().await {
            body.extend_from_slice(&chunk);
            if body.len() > 64 * 1024 {
                break;
            }
        }
        let message = error_message(&body);
        Err(match status.as_u16() {
            401 => ArgoCdError::Unauthorized {
                message,
                subject: token.claims.subject.clone(),
                expires_at: token.claims.expires_at,
            },
            403 => {
                // With server.rbac.rollback.enforce.enable Argo CD checks `rollback`, not `sync`,
                // and says so in its message.
                let permission =
                    if call.permission == &Permission::APPS_SYNC && message.contains("applications, rollback") {
                        &Permission::APPS_ROLLBACK
                    } else {
                        call.permission
                    };
                ArgoCdError::PermissionDenied {
                    what: call.what.clone(),
                    policy_line: permission.policy_line(&token.claims.account().unwrap_or_else(|| "<account>".into())),
                    message,
                }
            }
            404 => ArgoCdError::NotFound { message },
            415 => ArgoCdError::UnsupportedMediaType { message },
            400 if !self.inner.config.uses_tls() && message.contains("HTTP request to an HTTPS server") => {
                ArgoCdError::PlaintextAgainstTls {
                    url: base,
                    detail: message,
                }
            }
            s if s >= 500 => ArgoCdError::Unavailable {
                url: base,
                status: Some(s),
                message,
            },
            s => ArgoCdError::Rejected { status: s, message },
        })
    }

    /// Splits a streaming body into lines (capped), dropping SSE comments and `data:` prefixes.
    /// A stream silent for `--argocd-watch-idle-timeout` (three missed keepalives by default)
    /// ends with [`ArgoCdError::Stalled`].
    fn lines(&self, resp: reqwest::Response) -> impl Stream<Item = Result<String, ArgoCdError>> + Send + 'static {
        let max = self.inner.config.max_line_bytes;
        let stall = self.inner.config.watch_idle_timeout;
        let this = self.clone();
        let body = resp.bytes_stream().map(|r| r.map_err(std::io::Error::other));
        let framed = FramedRead::new(StreamReader::new(body), LinesCodec::new_with_max_length(max));
        // After an error the codec would resynchronise at the next newline; a stream that broke
        // once is not trusted further, so it ends right after reporting the first error.
        futures_util::stream::unfold(Some(framed), move |state| {
            let this = this.clone();
            async move {
                let mut framed = state?;
                loop {
                    let Ok(next) = tokio::time::timeout(stall, framed.next()).await else {
                        return Some((
                            Err(ArgoCdError::Stalled {
                                seconds: stall.as_secs(),
                            }),
                            None,
                        ));
                    };
                    match next? {
                        Ok(line) => {
                            if let Some(payload) = model::stream_payload(&line) {
                                return Some((Ok(payload.to_owned()), Some(framed)));
                            }
                        }
                        Err(LinesCodecError::MaxLineLengthExceeded) => {
                            return Some((Err(ArgoCdError::LineTooLong { limit: max }), None));
                        }
                        Err(LinesCodecError::Io(e)) => return Some((Err(this.classify_io(&e)), None)),
                    }
                }
            }
        })
    }

    fn classify_io(&self, e: &std::io::Error) -> ArgoCdError {
        if let Some(inner) = e.get_ref()
            && let Some(re) = inner.downcast_ref::<reqwest::Error>()
        {
            return self.classify(re, "read stream");
        }
        ArgoCdError::Unavailable {
            url: self.inner.config.base_url.to_string(),
            status: None,
            message: format!("stream broke: {e}"),
        }
    }
}

/// Decodes one application from a response body (Get and Sync answer with the object).
fn app_from_body(bytes: &[u8]) -> Result<DecodedApp, ArgoCdError> {
    let text = std::str::from_utf8(bytes).map_err(|e| model::DecodeError {
        what: "application".into(),
        reason: e.to_string(),
    })?;
    Ok(decode_application(text)?)
}

/// Receives a list's items as they arrive.
pub trait ListSink<T> {
    /// Offered an item's raw JSON before it is decoded: true when the sink already holds
    /// exactly these bytes, so decoding them again would change nothing (then no
    /// [`ListSink::item`] follows for them). By default nothing is known.
    fn known(&mut self, _raw: &[u8]) -> bool {
        false
    }
    /// One item, decoded or skipped.
    fn item(&mut self, item: ListItem<T>);
    /// The list is being read again from the start (a retry after a transient failure): what
    /// came before may come again.
    fn restart(&mut self);
}

impl<T> ListSink<T> for DecodedList<T> {
    fn item(&mut self, item: ListItem<T>) {
        match item {
            ListItem::Decoded(t) => self.items.push(t),
            ListItem::Skipped(s) => self.skipped.push(s),
        }
    }

    fn restart(&mut self) {
        self.items.clear();
        self.skipped.clear();
    }
}

/// The retry policy of one call in progress.
struct Retry<'a> {
    policy: &'a RetryPolicy,
    backoff: Backoff,
    attempt: u32,
    delay: Duration,
}

impl<'a> Retry<'a> {
    fn new(policy: &'a RetryPolicy) -> Self {
        Self {
            policy,
            backoff: Backoff::new(policy.base, policy.max),
            attempt: 1,
            delay: Duration::ZERO,
        }
    }

    /// Whether `e` is worth another attempt, which is then counted.
    fn again(&mut self, call: &Call<'_>, e: &ArgoCdError) -> bool {
        if !(call.retry && self.attempt < self.policy.attempts && is_transient(e)) {
            return false;
        }
        self.delay = self.backoff.next_delay();
        tracing::debug!(call = %call.what, attempt = self.attempt, error = %e, delay = %humantime::format_duration(self.delay), "retrying Argo CD call");
        self.attempt += 1;
        true
    }

    async fn wait(&self) {
        tokio::time::sleep(self.delay).await;
    }
}

fn is_transient(e: &ArgoCdError) -> bool {
    matches!(e, ArgoCdError::Unavailable { .. } | ArgoCdError::Timeout { .. })
}

/// One application watch line as an event, or the error Argo CD sent in its place.
fn decode_app_watch_line(line: &str) -> Result<WatchEvent, ArgoCdError> {
    match model::decode_watch_line(line) {
        Ok(StreamChunk::Result(ev)) => Ok(ev),
        Ok(StreamChunk::Error(e)) => Err(stream_error(e)),
        Err(e) => Err(ArgoCdError::Decode(e)),
    }
}

fn stream_error(e: model::StreamError) -> ArgoCdError {
    ArgoCdError::Stream {
        http_code: e.http_code,
        message: e.message,
    }
}

/// The message of an Argo CD error body (`{"error","code","message"}`), or the text itself.
fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Body {
        #[serde(default)]
        message: Option<String>,
        #[serde(default)]
        error: Option<serde_json::Value>,
    }
    if let Ok(b) = serde_json::from_slice::<Body>(body) {
        if let Some(m) = b.message.filter(|m| !m.is_empty()) {
            return m;
        }
        match b.error {
            Some(serde_json::Value::String(s)) => return s,
            Some(serde_json::Value::Object(o)) => {
                if let Some(m) = o.get("message").and_then(|m| m.as_str()) {
                    return m.to_owned();
                }
            }
            _ => {}
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let mut end = text.len().min(512);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_and_ndjson_lines() {
        assert_eq!(model::stream_payload(r#"{"result":{}}"#), Some(r#"{"result":{}}"#));
        assert_eq!(
            model::stream_payload(r#"data: {"result":{}} "#),
            Some(r#"{"result":{}}"#)
        );
        assert_eq!(model::stream_payload(":"), None);
        assert_eq!(model::stream_payload(""), None);
        assert_eq!(model::stream_payload("event: x"), None);
    }

    #[test]
    fn error_bodies() {
        assert_eq!(
            error_message(br#"{"error":"permission denied","code":7,"message":"permission denied"}"#),
            "permission denied"
        );
        assert_eq!(error_message(b"Invalid content type"), "Invalid content type");
        assert_eq!(
            error_message(br#"{"error":{"grpc_code":16,"http_code":401,"message":"no session information"}}"#),
            "no session information"
        );
    }

    #[test]
    fn version_major() {
        let v = |s: &str| VersionInfo {
            version: s.into(),
            ..Default::default()
        };
        assert_eq!(v("v3.5.1").major(), Some(3));
        assert_eq!(v("v2.14.7+abc").major(), Some(2));
        assert_eq!(v("").major(), None);
    }
}
