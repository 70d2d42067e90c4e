//! A faithful in-process Argo CD API server for tests, the demo and benchmarks.
//!
//! It serves argocd-server's REST contract (see `../shared/argocd/API-NOTES.md`): HTTP/1.1,
//! grpc-gateway error bodies, NDJSON or server-sent-event watch framing, the 415 rule, 401/403
//! semantics, can-i, version and userinfo, 2.x or 3.x list behaviour, ApplicationSets (list, and
//! the watch stream from 3.4 on) and AppProjects, username/password login
//! (`POST /api/v1/session`) with expiring session tokens, an optional root path, over self-signed
//! TLS (plain HTTP on the TLS port gets a 307 like argocd-server's cmux) or plaintext.
//!
//! It stores raw `serde_json::Value` objects and never uses the gateway's model types, so a model
//! bug cannot be mirrored here. [`SimHandle`] mutates state, manages tokens, injects faults and
//! records every request received. Applications added with [`SimHandle::add_simulated_app`] also
//! get a Git history, live objects and sync operations with hooks and waves, stepped by the
//! caller (see `gitops`): they answer sync, terminate, rollback and managed resources as Argo
//! CD's controller would.

pub mod churn;
pub mod command;
mod gitops;
mod http;
pub mod net;
pub mod objects;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Transport of the simulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimTls {
    /// TLS with a fresh self-signed CA (see [`SimHandle::ca_pem`]).
    SelfSigned,
    /// No TLS (argocd-server `--insecure`).
    Plaintext,
}

/// How to start a simulator.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// TLS or plaintext.
    pub tls: SimTls,
    /// Root path (argocd-server `--rootpath`), e.g. `/argo-cd`; empty for none.
    pub root_path: String,
    /// Version reported by `/api/version`; a `v2.` version keeps per-resource health in lists,
    /// `v3.` omits it (Argo CD 3.0 behaviour).
    pub version: String,
    /// The control-plane namespace (default `appNamespace`).
    pub namespace: String,
    /// Interval of SSE keepalive comments.
    pub sse_keepalive: Duration,
    /// With TLS: serve this certificate and key (PEM) instead of a fresh CA-issued one, e.g. a
    /// self-signed certificate as `openssl req -x509` makes it; [`SimHandle::ca_pem`] is then
    /// the certificate itself.
    pub certificate: Option<(String, String)>,
    /// Whether the ApplicationSet API exists (false: an old Argo CD, 404 on
    /// `/api/v1/applicationsets`). Its watch stream exists from version 3.4.
    pub applicationsets: bool,
    /// Where to listen (default `127.0.0.1:0`, a free port).
    pub addr: Option<SocketAddr>,
    /// How long each step of a sync takes: with a value, a sync request runs like Argo CD's
    /// controller runs it (the operation finishes, `sync.revision` becomes the requested
    /// revision, per source for multi-source apps, then the rollout turns Healthy); without,
    /// the operation stays Running until the test moves it ([`SimHandle::set_operation_phase`]).
    pub sync_step: Option<Duration>,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            tls: SimTls::SelfSigned,
            root_path: String::new(),
            version: "v3.5.1".into(),
            namespace: "argocd".into(),
            sse_keepalive: Duration::from_secs(15),
            certificate: None,
            applicationsets: true,
            addr: None,
            sync_step: None,
        }
    }
}

/// What a bearer token may do in the simulator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenSpec {
    /// JWT `sub`, e.g. `gateway:apiKey` or `proj:team-a:ci`.
    pub subject: String,
    /// JWT `exp`; a past value makes the server answer 401.
    pub expires_at: Option<jiff::Timestamp>,
    /// Projects whose apps the token can see (None: all).
    pub projects: Option<BTreeSet<String>>,
    /// Granted `(resource, action)` pairs.
    pub permissions: BTreeSet<(String, String)>,
}

impl TokenSpec {
    /// An account token with the permissions of SPEC §9 (apps get/sync, clusters get, logs get,
    /// applicationsets get, projects get), expiring in 90 days.
    pub fn account(account: &str) -> Self {
        let perms = [
            ("applications", "get"),
            ("applications", "sync"),
            ("clusters", "get"),
            ("logs", "get"),
            ("applicationsets", "get"),
            ("projects", "get"),
        ];
        Self {
            subject: format!("{account}:apiKey"),
            expires_at: jiff::Timestamp::now()
                .checked_add(jiff::SignedDuration::from_hours(90 * 24))
                .ok(),
            projects: None,
            permissions: perms.iter().map(|(r, a)| (r.to_string(), a.to_string())).collect(),
        }
    }

    /// A project-role token (`proj:<project>:<role>`) that sees and syncs only that project.
    pub fn project(project: &str, role: &str) -> Self {
        let mut t = Self::account("unused");
        t.subject = format!("proj:{project}:{role}");
        t.projects = Some([project.to_owned()].into());
        t.permissions.remove(&("clusters".into(), "get".into()));
        t
    }

    /// Removes one permission.
    pub fn without(mut self, resource: &str, action: &str) -> Self {
        self.permissions.remove(&(resource.to_owned(), action.to_owned()));
        self
    }

    /// Sets the expiry (None: never).
    pub fn expires(mut self, at: Option<jiff::Timestamp>) -> Self {
        self.expires_at = at;
        self
    }

    /// The RBAC subject after Argo CD's rewrite (`gateway:apiKey` → `gateway`).
    pub fn account_name(&self) -> String {
        if self.subject.starts_with("proj:") {
            return self.subject.clone();
        }
        self.subject.split(':').next().unwrap_or_default().to_owned()
    }

    fn can(&self, resource: &str, action: &str) -> bool {
        self.permissions.contains(&(resource.to_owned(), action.to_owned()))
    }

    fn sees_project(&self, project: &str) -> bool {
        self.projects.as_ref().is_none_or(|p| p.contains(project))
    }

    fn expired(&self) -> bool {
        self.expires_at.is_some_and(|e| e <= jiff::Timestamp::now())
    }
}

/// A request as it reached the simulator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: String,
    /// Path as received (including any root path).
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// HTTP version, e.g. `HTTP/1.1`.
    pub version: String,
    /// Headers (lowercase names; repeated headers joined with `, `).
    pub headers: BTreeMap<String, String>,
    /// Body as text.
    pub body: String,
}

impl RecordedRequest {
    /// Values of one query parameter, decoded, in order.
    pub fn query_values(&self, key: &str) -> Vec<String> {
        url::form_urlencoded::parse(self.query.as_bytes())
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
            .collect()
    }

    /// The bearer token sent, if any.
    pub fn bearer(&self) -> Option<&str> {
        self.headers.get("authorization")?.strip_prefix("Bearer ")
    }
}

/// A rule failing matching requests with a status.
#[derive(Clone, Debug)]
struct FailRule {
    path_contains: String,
    remaining: u32,
    status: u16,
}

#[derive(Default)]
struct Faults {
    fail: Vec<FailRule>,
    latency: Duration,
    drop_events: u32,
    stalled: bool,
    malformed_lines: u32,
    oversized_line: Option<usize>,
    oversized_body: Option<(String, usize)>,
    frozen: bool,
    after_list: Vec<AfterList>,
    extra_list_items: Vec<Value>,
    truncated_lists: u32,
}

/// A change made right after the next application list is answered.
type AfterList = Box<dyn FnOnce(&SimHandle) + Send>;

#[derive(Clone, Debug)]
struct WatchMsg {
    kind: &'static str,
    app: Arc<Value>,
}

/// A local account that may log in with a password, and what its sessions may do.
#[derive(Clone, Debug)]
struct Account {
    password: String,
    spec: TokenSpec,
}

/// How open watches are told to end.
#[derive(Clone)]
struct WatchGeneration {
    cancel: CancellationToken,
    /// Sent as a stream error chunk before ending, if set when `cancel` fires.
    error: Arc<Mutex<Option<(u16, String)>>>,
}

impl WatchGeneration {
    fn new() -> Self {
        Self {
            cancel: CancellationToken::new(),
            error: Arc::new(Mutex::new(None)),
        }
    }
}

struct State {
    /// Shared with the watch events and lists that carry them, so neither copies an object.
    apps: BTreeMap<(String, String), Arc<Value>>,
    appsets: BTreeMap<(String, String), Value>,
    projects: BTreeMap<String, Value>,
    accounts: HashMap<String, Account>,
    /// Lifetime of session tokens issued at login.
    session_ttl: Duration,
    /// Logins that succeeded.
    logins: u64,
    clusters: Vec<Value>,
    rv: u64,
    tokens: HashMap<String, TokenSpec>,
    requests: Vec<RecordedRequest>,
    faults: Faults,
    generation: WatchGeneration,
    /// Git history, live objects and operations of simulated applications.
    repos: BTreeMap<(String, String), gitops::Repo>,
}

struct Inner {
    options: SimOptions,
    addr: SocketAddr,
    ca_pem: Option<String>,
    state: Mutex<State>,
    events: broadcast::Sender<WatchMsg>,
    appset_events: broadcast::Sender<WatchMsg>,
    cancel: CancellationToken,
    jwt_key: ring::hmac::Key,
}

/// Starts simulators.
pub struct Simulator;

/// Control of a running simulator; cheap to clone. Dropping every clone does not stop it: call
/// [`SimHandle::shutdown`] (tests usually just let their runtime end).
#[derive(Clone)]
pub struct SimHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle")
            .field("url", &self.url())
            .finish_non_exhaustive()
    }
}

impl Simulator {
    /// Starts a simulator on `127.0.0.1:0` with one default cluster and no applications.
    pub async fn start(options: SimOptions) -> std::io::Result<SimHandle> {
        crate::tls::install_crypto_provider();
        let certs = match options.tls {
            SimTls::SelfSigned => Some(match &options.certificate {
                Some((cert, key)) => net::SimCerts::from_pem(cert, key)?,
                None => net::SimCerts::generate().map_err(std::io::Error::other)?,
            }),
            SimTls::Plaintext => None,
        };
        let cancel = CancellationToken::new();
        let bind = options.addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let (listener, addr) = net::listen(bind, certs.as_ref(), cancel.clone()).await?;
        let rng = ring::rand::SystemRandom::new();
        let jwt_key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
            .map_err(|_| std::io::Error::other("cannot generate the simulator's signing key"))?;
        let (events, _) = broadcast::channel(4096);
        let (appset_events, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            addr,
            ca_pem: certs.map(|c| c.ca_pem),
            state: Mutex::new(State {
                apps: BTreeMap::new(),
                appsets: BTreeMap::new(),
                projects: [("default".to_owned(), objects::project("default"))].into(),
                accounts: HashMap::new(),
                session_ttl: Duration::from_secs(24 * 3600),
                logins: 0,
                clusters: vec![objects::cluster("https://kubernetes.default.svc", "in-cluster")],
                rv: 1000,
                tokens: HashMap::new(),
                requests: Vec::new(),
                faults: Faults::default(),
                generation: WatchGeneration::new(),
                repos: BTreeMap::new(),
            }),
            events,
            appset_events,
            cancel: cancel.clone(),
            jwt_key,
            options,
        });
        let router = http::router(SimHandle { inner: inner.clone() });
        tokio::spawn(async move {
            let serve = axum::serve(listener, router);
            tokio::select! {
                _ = cancel.cancelled() => {}
                r = serve => if let Err(e) = r { tracing::warn!(error = %e, "simulator server ended") },
            }
        });
        Ok(SimHandle { inner })
    }
}

/// The controller's side of a finished sync: the requested revisions become the synced ones,
/// the operation ends Succeeded with its result, and the rollout starts.
fn finish_sync(a: &mut Value) {
    let now = now_rfc3339();
    let requested = a["status"]["operationState"]["operation"]["sync"].clone();
    let sync = &mut a["status"]["sync"];
    let multi = sync.get("revisions").is_some_and(Value::is_array);
    // A commit lands as given; a branch, tag or HEAD resolves to the commit the source is at
    // (nothing is pushed to the simulated repositories).
    let land = |slot: &mut Value, revision: &Value| {
        let commit = revision
            .as_str()
            .is_some_and(|r| r.len() >= 7 && r.chars().all(|c| c.is_ascii_hexdigit()));
        if commit || !slot.is_string() {
            *slot = revision.clone();
        }
    };
    if let Some(revision) = requested
        .get("revision")
        .filter(|r| r.as_str().is_some_and(|r| !r.is_empty()))
    {
        if multi {
            if let Some(first) = sync["revisions"].get_mut(0) {
                land(first, revision);
            }
        } else {
            land(&mut sync["revision"], revision);
        }
    }
    if let (true, Some(revisions)) = (multi, requested["revisions"].as_array()) {
        // `sourcePositions` are 1-based; without them the revisions are in source order.
        let positions: Vec<usize> = match requested["sourcePositions"].as_array() {
            Some(p) => p.iter().filter_map(Value::as_u64).map(|p| p as usize).collect(),
            None => (1..=revisions.len()).collect(),
        };
        for (revision, position) in revisions.iter().zip(positions) {
            if let Some(slot) = position.checked_sub(1).and_then(|i| sync["revisions"].get_mut(i)) {
                land(slot, revision);
            }
        }
    }
    sync["status"] = json!("Synced");
    let result = if multi {
        json!({"revisions": sync["revisions"].clone()})
    } else {
        json!({"revision": sync["revision"].clone()})
    };
    let op = &mut a["status"]["operationState"];
    op["phase"] = json!("Succeeded");
    op["message"] = json!("successfully synced (all tasks run)");
    op["finishedAt"] = json!(now);
    op["syncResult"] = result;
    a["status"]["health"] =
        json!({"status": "Progressing", "message": "Waiting for rollout to finish", "lastTransitionTime": now});
    if let Some(o) = a.as_object_mut() {
        o.remove("operation");
    }
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .to_string()
}

impl SimHandle {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The base URL including the root path, e.g. `https://127.0.0.1:41234/argo-cd`.
    pub fn url(&self) -> String {
        let scheme = match self.inner.options.tls {
            SimTls::SelfSigned => "https",
            SimTls::Plaintext => "http",
        };
        format!("{scheme}://{}{}", self.inner.addr, self.root())
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The self-signed CA (PEM) in TLS mode.
    pub fn ca_pem(&self) -> Option<&str> {
        self.inner.ca_pem.as_deref()
    }

    /// The options it was started with.
    pub fn options(&self) -> &SimOptions {
        &self.inner.options
    }

    fn root(&self) -> String {
        let r = self.inner.options.root_path.trim_end_matches('/');
        if r.is_empty() || r.starts_with('/') {
            r.to_owned()
        } else {
            format!("/{r}")
        }
    }

    fn major(&self) -> u64 {
        self.inner
            .options
            .version
            .trim_start_matches('v')
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(3)
    }

    /// Stops accepting connections and ends open watches.
    pub fn shutdown(&self) {
        self.inner.cancel.cancel();
        self.lock().generation.cancel.cancel();
    }

    // ---- tokens -----------------------------------------------------------------------------

    /// Issues a signed JWT with the spec's `sub`/`exp` and registers what it may do.
    pub fn add_token(&self, spec: TokenSpec) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let now = jiff::Timestamp::now().as_second();
        let jti = {
            use rand::Rng;
            format!("{:032x}", rand::rng().random::<u128>())
        };
        let mut claims = json!({"iss": "argocd", "sub": spec.subject, "iat": now, "nbf": now, "jti": jti});
        if let Some(exp) = spec.expires_at {
            claims["exp"] = json!(exp.as_second());
        }
        let signing_input = format!(
            "{}.{}",
            e.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
            e.encode(claims.to_string())
        );
        let sig = ring::hmac::sign(&self.inner.jwt_key, signing_input.as_bytes());
        let token = format!("{signing_input}.{}", e.encode(sig.as_ref()));
        self.lock().tokens.insert(token.clone(), spec);
        token
    }

    /// Revokes a token (the server then answers 401).
    pub fn revoke_token(&self, token: &str) {
        self.lock().tokens.remove(token);
    }

    /// Adds a local account that may log in with `password` (`POST /api/v1/session`); its
    /// sessions may do what `spec` allows (their subject becomes `<username>:login` and their
    /// expiry the session lifetime).
    pub fn add_account(&self, username: &str, password: &str, spec: TokenSpec) {
        self.lock().accounts.insert(
            username.to_owned(),
            Account {
                password: password.to_owned(),
                spec,
            },
        );
    }

    /// Sets the lifetime of session tokens issued from now on.
    pub fn set_session_ttl(&self, ttl: Duration) {
        self.lock().session_ttl = ttl;
    }

    /// Logins that succeeded so far.
    pub fn logins(&self) -> u64 {
        self.lock().logins
    }

    /// Revokes every session token of `username` (Argo CD then answers 401 to them).
    pub fn revoke_sessions(&self, username: &str) {
        let subject = format!("{username}:login");
        self.lock().tokens.retain(|_, spec| spec.subject != subject);
    }

    /// Logs in: a fresh session token, or None for a wrong username or password.
    fn login(&self, username: &str, password: &str) -> Option<String> {
        let (spec, ttl) = {
            let mut st = self.lock();
            let account = st.accounts.get(username).filter(|a| a.password == password)?.clone();
            st.logins += 1;
            (account.spec, st.session_ttl)
        };
        let exp = jiff::Timestamp::now()
            .checked_add(jiff::SignedDuration::try_from(ttl).unwrap_or_default())
            .ok();
        let spec = TokenSpec {
            subject: format!("{username}:login"),
            ..spec
        }
        .expires(exp);
        Some(self.add_token(spec))
    }

    /// Replaces what a token may do.
    pub fn update_token(&self, token: &str, spec: TokenSpec) {
        if let Some(t) = self.lock().tokens.get_mut(token) {
            *t = spec;
        }
    }

    // ---- applications -----------------------------------------------------------------------

    fn bump(&self, st: &mut State, obj: &mut Value) -> u64 {
        st.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        st.rv
    }

    fn broadcast(&self, st: &mut State, kind: &'static str, obj: &Arc<Value>) {
        if st.faults.drop_events > 0 {
            st.faults.drop_events -= 1;
            return;
        }
        let _ = self.inner.events.send(WatchMsg { kind, app: obj.clone() });
    }

    /// Adds or replaces an application object (namespace defaults to the control-plane one).
    pub fn upsert_app(&self, mut app: Value) -> (String, String) {
        if !app["metadata"]["namespace"].is_string() {
            app["metadata"]["namespace"] = json!(self.inner.options.namespace);
        }
        let key = (
            app["metadata"]["namespace"].as_str().unwrap_or_default().to_owned(),
            app["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
        );
        let mut st = self.lock();
        self.bump(&mut st, &mut app);
        let kind = if st.apps.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let app = Arc::new(app);
        self.broadcast(&mut st, kind, &app);
        st.apps.insert(key.clone(), app);
        key
    }

    /// Adds `n` synthetic applications `app-00000…` (see [`objects::synthetic_app`]).
    pub fn add_synthetic_apps(&self, n: usize) {
        let ns = self.inner.options.namespace.clone();
        for i in 0..n {
            self.upsert_app(objects::synthetic_app(i, &ns));
        }
    }

    /// Deletes an application; returns whether it existed.
    pub fn delete_app(&self, namespace: &str, name: &str) -> bool {
        let mut st = self.lock();
        st.repos.remove(&(namespace.to_owned(), name.to_owned()));
        match st.apps.remove(&(namespace.to_owned(), name.to_owned())) {
            Some(app) => {
                let mut app = Arc::unwrap_or_clone(app);
                self.bump(&mut st, &mut app);
                self.broadcast(&mut st, "DELETED", &Arc::new(app));
                true
            }
            None => false,
        }
    }

    /// Emits MODIFIED for an application changed in place under the lock.
    fn modified_locked(&self, st: &mut State, key: &(String, String)) {
        if let Some(app) = st.apps.remove(key) {
            let mut app = Arc::unwrap_or_clone(app);
            self.bump(st, &mut app);
            let app = Arc::new(app);
            self.broadcast(st, "MODIFIED", &app);
            st.apps.insert(key.clone(), app);
        }
    }

    /// Changes an application in place with `f` and emits MODIFIED; false if it does not exist.
    pub fn modify_app(&self, namespace: &str, name: &str, f: impl FnOnce(&mut Value)) -> bool {
        let mut st = self.lock();
        let key = (namespace.to_owned(), name.to_owned());
        let Some(app) = st.apps.remove(&key) else {
            return false;
        };
        // A copy only while an earlier event still holds this version.
        let mut app = Arc::unwrap_or_clone(app);
        f(&mut app);
        self.bump(&mut st, &mut app);
        let app = Arc::new(app);
        self.broadcast(&mut st, "MODIFIED", &app);
        st.apps.insert(key, app);
        true
    }

    /// Sets `status.health`.
    pub fn set_health(&self, namespace: &str, name: &str, status: &str, message: &str) -> bool {
        let (status, message) = (status.to_owned(), message.to_owned());
        self.modify_app(namespace, name, |a| {
            a["status"]["health"] = json!({"status": status, "message": message, "lastTransitionTime": now_rfc3339()});
        })
    }

    /// Sets `status.sync.status`.
    pub fn set_sync_status(&self, namespace: &str, name: &str, status: &str) -> bool {
        let status = status.to_owned();
        self.modify_app(namespace, name, |a| a["status"]["sync"]["status"] = json!(status))
    }

    /// Sets `status.sync.revision` (and the first of `revisions` for multi-source apps).
    pub fn set_revision(&self, namespace: &str, name: &str, revision: &str) -> bool {
        let revision = revision.to_owned();
        self.modify_app(namespace, name, |a| {
            if let Some(Value::Array(revs)) = a["status"]["sync"].get_mut("revisions")
                && let Some(first) = revs.first_mut()
            {
                *first = json!(revision);
                return;
            }
            a["status"]["sync"]["revision"] = json!(revision);
        })
    }

    /// Sets `status.operationState.phase` (finished phases get `finishedAt` and clear `.operation`).
    pub fn set_operation_phase(&self, namespace: &str, name: &str, phase: &str) -> bool {
        let phase = phase.to_owned();
        self.modify_app(namespace, name, |a| {
            let now = now_rfc3339();
            if !a["status"]["operationState"].is_object() {
                a["status"]["operationState"] = json!({"operation": {"sync": {}}, "startedAt": now});
            }
            let op = &mut a["status"]["operationState"];
            op["phase"] = json!(phase);
            if phase == "Running" || phase == "Terminating" {
                if let Some(o) = op.as_object_mut() {
                    o.remove("finishedAt");
                }
                op["message"] = json!("");
            } else {
                op["finishedAt"] = json!(now);
                op["message"] = json!(format!("operation {}", phase.to_lowercase()));
                if let Some(o) = a.as_object_mut() {
                    o.remove("operation");
                }
            }
        })
    }

    /// Runs the sync operation just started on an application the way Argo CD's controller
    /// does, when [`SimOptions::sync_step`] is set: after one step the operation has Succeeded,
    /// `sync.revision` is the requested revision (for a multi-source app, each requested
    /// revision lands at its source position), the app is Synced and its rollout Progressing;
    /// after another step it is Healthy. Ends with the simulator.
    pub(crate) fn run_sync(&self, namespace: &str, name: &str) {
        let Some(step) = self.inner.options.sync_step else {
            return;
        };
        let (sim, ns, name) = (self.clone(), namespace.to_owned(), name.to_owned());
        let cancel = self.inner.cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(step) => {}
            }
            sim.modify_app(&ns, &name, finish_sync);
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::sleep(step) => {
                    sim.set_health(&ns, &name, "Healthy", "");
                }
            }
        });
    }

    /// Sets the health of resource `index` in `status.resources`.
    pub fn set_resource_health(&self, namespace: &str, name: &str, index: usize, status: &str) -> bool {
        let status = status.to_owned();
        self.modify_app(namespace, name, |a| {
            if let Some(r) = a["status"]["resources"].get_mut(index) {
                r["health"] = json!({"status": status});
            }
        })
    }

    /// Sets `spec.project`.
    pub fn set_project(&self, namespace: &str, name: &str, project: &str) -> bool {
        let project = project.to_owned();
        self.modify_app(namespace, name, |a| a["spec"]["project"] = json!(project))
    }

    /// Bumps `status.reconciledAt` only (a noisy change).
    pub fn touch(&self, namespace: &str, name: &str) -> bool {
        self.modify_app(namespace, name, |a| a["status"]["reconciledAt"] = json!(now_rfc3339()))
    }

    /// One application as `GET` returns it (with per-resource health).
    pub fn app(&self, namespace: &str, name: &str) -> Option<Value> {
        let st = self.lock();
        let app = st.apps.get(&(namespace.to_owned(), name.to_owned()))?;
        Some(self.present(app, false))
    }

    /// Every application as `GET` returns it, sorted by namespace/name.
    pub fn apps(&self) -> Vec<Value> {
        let st = self.lock();
        st.apps.values().map(|a| self.present(a, false)).collect()
    }

    /// The current resourceVersion counter.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// A stored object shaped for output as it is serialized, without a copy.
    fn presented<'a>(&self, app: &'a Value, for_list: bool) -> objects::Presented<'a> {
        objects::Presented {
            app,
            v3: self.major() >= 3,
            for_list,
        }
    }

    /// A stored object shaped for output, as a value (for answers that are not printed
    /// straight away); the shape is [`objects::Presented`]'s.
    fn present(&self, app: &Value, for_list: bool) -> Value {
        serde_json::to_value(self.presented(app, for_list)).unwrap_or_else(|_| app.clone())
    }

    // ---- ApplicationSets and projects ---------------------------------------------------------

    fn broadcast_appset(&self, kind: &'static str, obj: &Value) {
        let _ = self.inner.appset_events.send(WatchMsg {
            kind,
            app: Arc::new(obj.clone()),
        });
    }

    /// Adds or replaces an ApplicationSet object (namespace defaults to the control-plane one).
    pub fn upsert_appset(&self, mut appset: Value) -> (String, String) {
        if !appset["metadata"]["namespace"].is_string() {
            appset["metadata"]["namespace"] = json!(self.inner.options.namespace);
        }
        let key = (
            appset["metadata"]["namespace"].as_str().unwrap_or_default().to_owned(),
            appset["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
        );
        let mut st = self.lock();
        self.bump(&mut st, &mut appset);
        let kind = if st.appsets.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.broadcast_appset(kind, &appset);
        st.appsets.insert(key.clone(), appset);
        key
    }

    /// Changes an ApplicationSet in place with `f` and emits MODIFIED; false if it does not exist.
    pub fn modify_appset(&self, namespace: &str, name: &str, f: impl FnOnce(&mut Value)) -> bool {
        let mut st = self.lock();
        let key = (namespace.to_owned(), name.to_owned());
        let Some(mut appset) = st.appsets.remove(&key) else {
            return false;
        };
        f(&mut appset);
        self.bump(&mut st, &mut appset);
        self.broadcast_appset("MODIFIED", &appset);
        st.appsets.insert(key, appset);
        true
    }

    /// Deletes an ApplicationSet; returns whether it existed.
    pub fn delete_appset(&self, namespace: &str, name: &str) -> bool {
        let mut st = self.lock();
        match st.appsets.remove(&(namespace.to_owned(), name.to_owned())) {
            Some(mut a) => {
                self.bump(&mut st, &mut a);
                self.broadcast_appset("DELETED", &a);
                true
            }
            None => false,
        }
    }

    /// Every ApplicationSet object.
    pub fn appsets(&self) -> Vec<Value> {
        self.lock().appsets.values().cloned().collect()
    }

    /// Adds or replaces an AppProject (by `metadata.name`).
    pub fn upsert_project(&self, mut project: Value) {
        if !project["metadata"]["namespace"].is_string() {
            project["metadata"]["namespace"] = json!(self.inner.options.namespace);
        }
        let name = project["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let mut st = self.lock();
        self.bump(&mut st, &mut project);
        st.projects.insert(name, project);
    }

    /// Removes an AppProject.
    pub fn delete_project(&self, name: &str) -> bool {
        self.lock().projects.remove(name).is_some()
    }

    /// Whether this simulated version has the ApplicationSet watch stream (3.4 and later).
    fn has_appset_stream(&self) -> bool {
        let v = self.inner.options.version.trim_start_matches('v');
        let mut parts = v.split(['.', '+', '-']).map(|p| p.parse::<u64>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        self.inner.options.applicationsets && (major, minor) >= (3, 4)
    }

    // ---- clusters ---------------------------------------------------------------------------

    /// Adds or replaces a cluster (by `server`).
    pub fn upsert_cluster(&self, cluster: Value) {
        let mut st = self.lock();
        let server = cluster["server"].clone();
        st.clusters.retain(|c| c["server"] != server);
        st.clusters.push(cluster);
    }

    /// Removes a cluster by server URL.
    pub fn remove_cluster(&self, server: &str) {
        self.lock().clusters.retain(|c| c["server"] != server);
    }

    /// Every cluster object.
    pub fn clusters(&self) -> Vec<Value> {
        self.lock().clusters.clone()
    }

    // ---- faults -----------------------------------------------------------------------------

    /// Fails the next `count` requests whose path contains `path_contains` with `status` and an
    /// Argo CD error body.
    pub fn fail_requests(&self, path_contains: &str, count: u32, status: u16) {
        self.lock().faults.fail.push(FailRule {
            path_contains: path_contains.to_owned(),
            remaining: count,
            status,
        });
    }

    /// Delays every response by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().faults.latency = latency;
    }

    /// Silently drops the next `n` watch events (Argo CD's full-buffer behaviour).
    pub fn drop_watch_events(&self, n: u32) {
        self.lock().faults.drop_events += n;
    }

    /// Cuts every open watch connection abruptly.
    pub fn disconnect_watches(&self) {
        self.end_watches(None);
    }

    /// Ends every open watch with a stream error chunk (`{"error":{…}}`).
    pub fn fail_watches(&self, http_code: u16, message: &str) {
        self.end_watches(Some((http_code, message.to_owned())));
    }

    fn end_watches(&self, error: Option<(u16, String)>) {
        let old = std::mem::replace(&mut self.lock().generation, WatchGeneration::new());
        *old.error.lock().unwrap_or_else(|p| p.into_inner()) = error;
        old.cancel.cancel();
    }

    /// Stalls (true) or resumes (false) open watches: while stalled they stay open but send nothing.
    pub fn stall_watches(&self, stalled: bool) {
        self.lock().faults.stalled = stalled;
    }

    /// Freezes (true) or thaws (false) open watches: while frozen they send nothing at all, not
    /// even keepalives, like a connection a middlebox holds open but no longer forwards.
    pub fn freeze_watches(&self, frozen: bool) {
        self.lock().faults.frozen = frozen;
    }

    /// Runs `change` right after the next application list has been answered: a change made
    /// between a client's list and its watch.
    pub fn after_next_list(&self, change: impl FnOnce(&SimHandle) + Send + 'static) {
        self.lock().faults.after_list.push(Box::new(change));
    }

    /// Adds `items` as they are (any JSON, not necessarily an application) to every application
    /// list until the faults are cleared.
    pub fn append_to_lists(&self, items: Vec<Value>) {
        self.lock().faults.extra_list_items.extend(items);
    }

    /// Cuts the next `n` application list bodies in half: JSON that cannot be read as a whole.
    pub fn truncate_lists(&self, n: u32) {
        self.lock().faults.truncated_lists += n;
    }

    /// Takes the changes waiting for the next list.
    fn take_after_list(&self) -> Vec<AfterList> {
        std::mem::take(&mut self.lock().faults.after_list)
    }

    /// Whether watches are frozen.
    fn watches_frozen(&self) -> bool {
        self.lock().faults.frozen
    }

    /// Replaces the next `n` watch events with malformed JSON lines.
    pub fn malformed_watch_lines(&self, n: u32) {
        self.lock().faults.malformed_lines += n;
    }

    /// Sends the next watch event as a line of `bytes` bytes.
    pub fn oversized_watch_line(&self, bytes: usize) {
        self.lock().faults.oversized_line = Some(bytes);
    }

    /// Answers the next request whose path contains `path_contains` with a body of `bytes` bytes.
    pub fn oversized_body(&self, path_contains: &str, bytes: usize) {
        self.lock().faults.oversized_body = Some((path_contains.to_owned(), bytes));
    }

    /// Clears every fault.
    pub fn clear_faults(&self) {
        self.lock().faults = Faults::default();
    }

    // ---- request log ------------------------------------------------------------------------

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }
}
