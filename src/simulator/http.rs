//! The simulator's HTTP surface: one handler that routes like argocd-server's grpc-gateway mux,
//! so root paths, escaped segments, the 415 rule and error shapes stay under our control.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::{RecordedRequest, SimHandle, TokenSpec, WatchMsg, now_rfc3339};

pub(super) fn router(sim: SimHandle) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(sim)
}

type Query = Vec<(String, String)>;

fn q_all(q: &Query, key: &str) -> Vec<String> {
    q.iter().filter(|(k, _)| k == key).map(|(_, v)| v.clone()).collect()
}

fn q_one<'a>(q: &'a Query, key: &str) -> Option<&'a str> {
    q.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// grpc-gateway's unary error: `{"error","code","message"}` with the mapped HTTP status.
fn grpc_error(status: u16, message: &str) -> Response {
    let code = match status {
        400 => 3,
        401 => 16,
        403 => 7,
        404 => 5,
        409 => 10,
        503 => 14,
        504 => 4,
        _ => 13,
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        axum::Json(json!({"error": message, "code": code, "message": message})),
    )
        .into_response()
}

fn json_ok(v: Value) -> Response {
    axum::Json(v).into_response()
}

fn project_of(app: &Value) -> String {
    match app["spec"]["project"].as_str() {
        Some(p) if !p.is_empty() => p.to_owned(),
        _ => "default".to_owned(),
    }
}

async fn handle(State(sim): State<SimHandle>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 4 * 1024 * 1024).await.unwrap_or_default();
    let raw_path = parts.uri.path().to_owned();
    let query_str = parts.uri.query().unwrap_or("").to_owned();
    let mut headers = BTreeMap::new();
    for (k, v) in &parts.headers {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        headers
            .entry(k.as_str().to_owned())
            .and_modify(|e: &mut String| {
                e.push_str(", ");
                e.push_str(&v);
            })
            .or_insert(v);
    }
    let latency = {
        let mut st = sim.lock();
        st.requests.push(RecordedRequest {
            method: parts.method.to_string(),
            path: raw_path.clone(),
            query: query_str.clone(),
            version: format!("{:?}", parts.version),
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        st.faults.latency
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if raw_path == "/healthz" {
        return "ok\n".into_response();
    }
    let root = sim.root();
    let Some(path) = raw_path.strip_prefix(&root).filter(|p| p.starts_with('/')) else {
        return (StatusCode::NOT_FOUND, "404 page not found\n").into_response();
    };
    if path.starts_with("/api/") && parts.method != Method::GET {
        // argocd-server compares the whole header value, so a charset parameter is refused too.
        let ct = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if ct != "application/json" {
            return (StatusCode::UNSUPPORTED_MEDIA_TYPE, "Invalid content type").into_response();
        }
    }
    {
        let mut st = sim.lock();
        if let Some(rule) = st
            .faults
            .fail
            .iter_mut()
            .find(|r| r.remaining > 0 && path.contains(&r.path_contains))
        {
            rule.remaining -= 1;
            let status = rule.status;
            return grpc_error(status, "injected failure");
        }
        if let Some((needle, size)) = st.faults.oversized_body.clone()
            && path.contains(&needle)
        {
            st.faults.oversized_body = None;
            let mut s = String::with_capacity(size + 64);
            s.push_str(r#"{"metadata":{},"items":[],"padding":""#);
            s.extend(std::iter::repeat_n('x', size));
            s.push_str("\"}");
            return ([(header::CONTENT_TYPE, "application/json")], s).into_response();
        }
    }
    let segs: Vec<String> = path.trim_start_matches('/').split('/').map(percent_decode).collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let query: Query = url::form_urlencoded::parse(query_str.as_bytes()).into_owned().collect();
    let method = parts.method.clone();
    match (method, segs.as_slice()) {
        (Method::GET, ["api", "version"]) => version(&sim, &parts.headers),
        (Method::GET, ["api", "v1", "session", "userinfo"]) => userinfo(&sim, &parts.headers),
        (Method::GET, ["api", "v1", "account", "can-i", resource, action, sub @ ..]) => {
            with_auth(&sim, &parts.headers, |t| can_i(t, resource, action, sub))
        }
        (Method::GET, ["api", "v1", "applications"]) => match sim.auth(&parts.headers) {
            // Printing a large list takes a while; the runtime's other work must not wait.
            Ok(t) => {
                let (sim, query) = (sim.clone(), query.clone());
                tokio::task::spawn_blocking(move || list(&sim, &t, &query))
                    .await
                    .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
            }
            Err(r) => *r,
        },
        (Method::GET, ["api", "v1", "stream", "applications"]) => match sim.auth(&parts.headers) {
            Ok(t) => watch(&sim, t, &query, &parts.headers).await,
            Err(r) => *r,
        },
        (Method::GET, ["api", "v1", "applications", name]) => {
            with_auth(&sim, &parts.headers, |t| get_app(&sim, &t, name, &query))
        }
        (Method::POST, ["api", "v1", "applications", name, "sync"]) => {
            with_auth(&sim, &parts.headers, |t| sync(&sim, &t, name, &body))
        }
        (Method::POST, ["api", "v1", "applications", name, "rollback"]) => {
            with_auth(&sim, &parts.headers, |t| rollback(&sim, &t, name, &body))
        }
        (Method::DELETE, ["api", "v1", "applications", name, "operation"]) => {
            with_auth(&sim, &parts.headers, |t| terminate(&sim, &t, name, &query))
        }
        (
            Method::GET,
            [
                "api",
                "v1",
                "applications",
                name,
                tail @ ("resource-tree" | "managed-resources" | "events"),
            ],
        ) => with_auth(&sim, &parts.headers, |t| app_detail(&sim, &t, name, tail, &query)),
        (Method::GET, ["api", "v1", "applications", name, "logs"]) => {
            with_auth(&sim, &parts.headers, |t| logs(&sim, &t, name, &query))
        }
        (Method::GET, ["api", "v1", "clusters"]) => with_auth(&sim, &parts.headers, |t| clusters(&sim, &t)),
        (Method::POST, ["api", "v1", "session"]) => session_create(&sim, &body),
        (Method::GET, ["api", "v1", "applicationsets"]) if sim.inner.options.applicationsets => {
            with_auth(&sim, &parts.headers, |t| list_appsets(&sim, &t, &query))
        }
        (Method::GET, ["api", "v1", "stream", "applicationsets"]) if sim.has_appset_stream() => {
            match sim.auth(&parts.headers) {
                Ok(t) => watch_appsets(&sim, t, &query, &parts.headers).await,
                Err(r) => *r,
            }
        }
        (Method::GET, ["api", "v1", "projects"]) => with_auth(&sim, &parts.headers, |t| list_projects(&sim, &t)),
        (_, ["api", ..]) => grpc_error(404, "Not Found"),
        _ => (StatusCode::NOT_FOUND, "404 page not found\n").into_response(),
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn with_auth(sim: &SimHandle, headers: &HeaderMap, f: impl FnOnce(TokenSpec) -> Response) -> Response {
    match sim.auth(headers) {
        Ok(t) => f(t),
        Err(r) => *r,
    }
}

impl SimHandle {
    fn bearer(headers: &HeaderMap) -> Option<String> {
        let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let t = v.strip_prefix("Bearer ")?;
        // argocd-server only accepts a bearer value with three dot-separated parts.
        (t.split('.').count() == 3).then(|| t.to_owned())
    }

    fn token(&self, headers: &HeaderMap) -> Result<TokenSpec, &'static str> {
        let Some(t) = Self::bearer(headers) else {
            return Err("no session information");
        };
        match self.lock().tokens.get(&t) {
            None => Err("invalid session: token signature is invalid"),
            Some(spec) if spec.expired() => Err("invalid session: token has invalid claims: token is expired"),
            Some(spec) => Ok(spec.clone()),
        }
    }

    fn auth(&self, headers: &HeaderMap) -> Result<TokenSpec, Box<Response>> {
        self.token(headers).map_err(|m| Box::new(grpc_error(401, m)))
    }
}

fn version(sim: &SimHandle, headers: &HeaderMap) -> Response {
    let v = &sim.inner.options.version;
    if sim.token(headers).is_err() {
        return json_ok(json!({"Version": v}));
    }
    json_ok(json!({
        "Version": v, "BuildDate": "2026-08-22T00:00:00Z", "GitCommit": "37ee0097cf851bc2dd7665fc081bbce61a7e836e",
        "GitTag": v, "GitTreeState": "clean", "GoVersion": "go1.25.0", "Compiler": "gc", "Platform": "linux/amd64",
        "KustomizeVersion": "v5.7.0", "HelmVersion": "v3.18.4", "KubectlVersion": "v0.33.1", "JsonnetVersion": "v0.21.0"
    }))
}

fn userinfo(sim: &SimHandle, headers: &HeaderMap) -> Response {
    match sim.token(headers) {
        Ok(t) => json_ok(json!({"loggedIn": true, "username": t.account_name(), "iss": "argocd", "groups": []})),
        Err(_) => json_ok(json!({"loggedIn": false})),
    }
}

const RESOURCES: [&str; 12] = [
    "clusters",
    "projects",
    "applications",
    "applicationsets",
    "repositories",
    "write-repositories",
    "certificates",
    "accounts",
    "gpgkeys",
    "logs",
    "exec",
    "extensions",
];
const ACTIONS: [&str; 9] = [
    "get", "create", "update", "delete", "sync", "override", "action", "invoke", "rollback",
];

fn can_i(t: TokenSpec, resource: &str, action: &str, sub: &[&str]) -> Response {
    if !RESOURCES.contains(&resource) {
        return grpc_error(400, &format!("unknown resource: {resource}"));
    }
    if !ACTIONS.contains(&action) {
        return grpc_error(400, &format!("unknown action: {action}"));
    }
    let action = if action == "rollback" { "sync" } else { action };
    let mut yes = t.can(resource, action);
    if yes && matches!(resource, "applications" | "logs") && t.projects.is_some() {
        yes = sub.first().is_some_and(|p| t.sees_project(p));
    }
    json_ok(json!({"value": if yes { "yes" } else { "no" }}))
}

/// Whether `app` passes the list/watch filters and the token's visibility.
fn admits(t: &TokenSpec, app: &Value, q: &Query, with_repo: bool) -> bool {
    let project = project_of(app);
    if !(t.can("applications", "get") && t.sees_project(&project)) {
        return false;
    }
    let mut projects = q_all(q, "projects");
    projects.extend(q_all(q, "project"));
    if !projects.is_empty() && !projects.contains(&project) {
        return false;
    }
    if let Some(ns) = q_one(q, "appNamespace")
        && app["metadata"]["namespace"].as_str() != Some(ns)
    {
        return false;
    }
    if let Some(n) = q_one(q, "name")
        && app["metadata"]["name"].as_str() != Some(n)
    {
        return false;
    }
    if with_repo
        && let Some(repo) = q_one(q, "repo")
        && app["spec"]["source"]["repoURL"].as_str() != Some(repo)
    {
        return false;
    }
    match q_one(q, "selector") {
        Some(sel) => selector_matches(sel, &app["metadata"]["labels"]),
        None => true,
    }
}

/// The equality-based subset of Kubernetes label selectors: `k=v`, `k==v`, `k!=v`, `k`, `!k`.
fn selector_matches(sel: &str, labels: &Value) -> bool {
    sel.split(',').map(str::trim).filter(|s| !s.is_empty()).all(|term| {
        let get = |k: &str| labels.get(k.trim()).and_then(|v| v.as_str());
        if let Some((k, v)) = term.split_once("!=") {
            get(k) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            get(k) == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            get(k).is_none()
        } else {
            get(term).is_some()
        }
    })
}

fn list(sim: &SimHandle, t: &TokenSpec, q: &Query) -> Response {
    // Only handles to the objects are taken under the lock: printing a list of 10,000
    // real-sized applications takes a fraction of a second, and changes made meanwhile (the
    // benches' churn) must not wait for it.
    let (mut items, extra, rv, truncate) = {
        let mut st = sim.lock();
        let items: Vec<Arc<Value>> = st.apps.values().filter(|a| admits(t, a, q, true)).cloned().collect();
        let extra = st.faults.extra_list_items.clone();
        let truncate = st.faults.truncated_lists > 0;
        if truncate {
            st.faults.truncated_lists -= 1;
        }
        (items, extra, st.rv, truncate)
    };
    // By name, as argocd-server answers; injected extra items come last.
    fn name(v: &Value) -> &str {
        v["metadata"]["name"].as_str().unwrap_or("")
    }
    items.sort_by(|a, b| name(a).cmp(name(b)));
    // Printed item by item from the stored objects (no copy of the list is made); the fields
    // in the order a `Value` prints them.
    let mut body: Vec<u8> = Vec::with_capacity(items.len() * 1024 + 64);
    body.extend_from_slice(br#"{"items":["#);
    let mut first = true;
    let mut printed = Ok(());
    for app in &items {
        if !std::mem::take(&mut first) {
            body.push(b',');
        }
        printed = printed.and_then(|()| serde_json::to_writer(&mut body, &sim.presented(app, true)));
    }
    for item in &extra {
        if !std::mem::take(&mut first) {
            body.push(b',');
        }
        printed = printed.and_then(|()| serde_json::to_writer(&mut body, item));
    }
    body.extend_from_slice(format!(r#"],"metadata":{{"resourceVersion":"{rv}"}}}}"#).as_bytes());
    drop(items);
    if printed.is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    if truncate {
        body.truncate(body.len() / 2);
    }
    let answer = Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    for change in sim.take_after_list() {
        change(sim);
    }
    answer
}

/// Finds an app the way Get does: without `project`, missing or invisible is 403; with it, 404.
fn find_app(sim: &SimHandle, t: &TokenSpec, name: &str, q: &Query) -> Result<Value, Box<Response>> {
    let ns = q_one(q, "appNamespace")
        .unwrap_or(&sim.inner.options.namespace)
        .to_owned();
    let want_project = q_one(q, "project").map(str::to_owned);
    let st = sim.lock();
    let app = st.apps.get(&(ns, name.to_owned())).map(|a| Value::clone(a));
    drop(st);
    let visible = app
        .as_ref()
        .filter(|a| t.can("applications", "get") && t.sees_project(&project_of(a)))
        .filter(|a| want_project.as_ref().is_none_or(|p| *p == project_of(a)));
    match (visible, want_project) {
        (Some(a), _) => Ok(a.clone()),
        (None, Some(_)) => Err(Box::new(grpc_error(
            404,
            &format!("applications.argoproj.io \"{name}\" not found"),
        ))),
        (None, None) => Err(Box::new(grpc_error(403, "permission denied"))),
    }
}

fn get_app(sim: &SimHandle, t: &TokenSpec, name: &str, q: &Query) -> Response {
    let app = match find_app(sim, t, name, q) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    if q_one(q, "refresh").is_some() {
        let ns = app["metadata"]["namespace"].as_str().unwrap_or_default().to_owned();
        if !sim.refresh_app(&ns, name) {
            sim.touch(&ns, name);
        }
        if let Some(a) = sim.app(&ns, name) {
            return json_ok(a);
        }
    }
    json_ok(sim.present(&app, false))
}

fn denied(t: &TokenSpec, resource: &str, action: &str, object: &str) -> Response {
    grpc_error(
        403,
        &format!(
            "permission denied: {resource}, {action}, {object}, sub: {}, iat: {}",
            t.account_name(),
            now_rfc3339()
        ),
    )
}

fn sync(sim: &SimHandle, t: &TokenSpec, name: &str, body: &Bytes) -> Response {
    let req: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return grpc_error(400, &format!("invalid request body: {e}")),
    };
    let mut q: Query = Vec::new();
    if let Some(ns) = req["appNamespace"].as_str() {
        q.push(("appNamespace".into(), ns.into()));
    }
    if let Some(p) = req["project"].as_str() {
        q.push(("project".into(), p.into()));
    }
    let app = match find_app(sim, t, name, &q) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let project = project_of(&app);
    if !t.can("applications", "sync") {
        return denied(t, "applications", "sync", &format!("{project}/{name}"));
    }
    let ns = app["metadata"]["namespace"].as_str().unwrap_or_default().to_owned();
    let key = (ns.clone(), name.to_owned());
    if sim.is_simulated(&ns, name) {
        let mut st = sim.lock();
        let started = super::gitops::sync_simulated(&mut st, &key, &req, json!({"username": t.account_name()}));
        if let Err((status, message)) = started {
            return grpc_error(status, &message);
        }
        sim.modified_locked(&mut st, &key);
        drop(st);
        return match sim.app(&ns, name) {
            Some(a) => json_ok(a),
            None => grpc_error(404, &format!("applications.argoproj.io \"{name}\" not found")),
        };
    }
    if app.get("operation").is_some_and(|o| !o.is_null()) {
        return grpc_error(400, "another operation is already in progress");
    }
    let mut op_sync =
        json!({"prune": req["prune"].as_bool().unwrap_or(false), "dryRun": req["dryRun"].as_bool().unwrap_or(false)});
    for k in ["revision", "revisions", "sourcePositions", "resources"] {
        if let Some(v) = req.get(k).filter(|v| !v.is_null()) {
            op_sync[k] = v.clone();
        }
    }
    let operation = json!({"sync": op_sync, "initiatedBy": {"username": t.account_name()}});
    sim.modify_app(&ns, name, |a| {
        a["operation"] = operation.clone();
        a["status"]["operationState"] =
            json!({"operation": operation, "phase": "Running", "message": "", "startedAt": now_rfc3339()});
    });
    sim.run_sync(&ns, name);
    match sim.app(&ns, name) {
        Some(a) => json_ok(a),
        None => grpc_error(404, &format!("applications.argoproj.io \"{name}\" not found")),
    }
}

/// The app a body-carrying call names (`appNamespace`, `project` in the body, like Argo CD's
/// request messages), after the same visibility rules as Get.
fn find_app_from_body(sim: &SimHandle, t: &TokenSpec, name: &str, req: &Value) -> Result<Value, Box<Response>> {
    let mut q: Query = Vec::new();
    if let Some(ns) = req["appNamespace"].as_str() {
        q.push(("appNamespace".into(), ns.into()));
    }
    if let Some(p) = req["project"].as_str() {
        q.push(("project".into(), p.into()));
    }
    find_app(sim, t, name, &q)
}

/// `POST /api/v1/applications/{name}/rollback`: Argo CD checks `sync` (rollback is mapped to
/// it by default), refuses apps with automated sync and unknown history ids, then syncs to the
/// history entry's revision.
fn rollback(sim: &SimHandle, t: &TokenSpec, name: &str, body: &Bytes) -> Response {
    let req: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return grpc_error(400, &format!("invalid request body: {e}")),
    };
    let app = match find_app_from_body(sim, t, name, &req) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    if !t.can("applications", "sync") {
        return denied(t, "applications", "sync", &format!("{}/{name}", project_of(&app)));
    }
    let id = req["id"]
        .as_i64()
        .or_else(|| req["id"].as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0);
    let ns = app["metadata"]["namespace"].as_str().unwrap_or_default().to_owned();
    let key = (ns.clone(), name.to_owned());
    let initiated_by = json!({"username": t.account_name()});
    let mut st = sim.lock();
    let started = if st.repos.contains_key(&key) {
        super::gitops::rollback_simulated(&mut st, &key, id, &req, initiated_by)
    } else {
        // A plain application: the operation is recorded and left running.
        super::gitops::rollback_checks(&app, id).and_then(|entry| {
            if app.get("operation").is_some_and(|o| !o.is_null()) {
                return Err((400, "another operation is already in progress".into()));
            }
            let mut sync = json!({"prune": req["prune"].as_bool().unwrap_or(false),
                "dryRun": req["dryRun"].as_bool().unwrap_or(false), "syncStrategy": {"apply": {}}});
            for k in ["revision", "revisions", "source", "sources"] {
                if !entry[k].is_null() {
                    sync[k] = entry[k].clone();
                }
            }
            let operation = json!({"sync": sync, "initiatedBy": initiated_by});
            if let Some(a) = st.apps.get_mut(&key).map(Arc::make_mut) {
                a["operation"] = operation.clone();
                a["status"]["operationState"] =
                    json!({"operation": operation, "phase": "Running", "message": "", "startedAt": now_rfc3339()});
            }
            Ok(())
        })
    };
    if let Err((status, message)) = started {
        return grpc_error(status, &message);
    }
    sim.modified_locked(&mut st, &key);
    drop(st);
    match sim.app(&ns, name) {
        Some(a) => json_ok(a),
        None => grpc_error(404, &format!("applications.argoproj.io \"{name}\" not found")),
    }
}

/// `DELETE /api/v1/applications/{name}/operation`: needs `sync`; marks the running operation
/// Terminating (the controller ends it), or refuses when none runs.
fn terminate(sim: &SimHandle, t: &TokenSpec, name: &str, q: &Query) -> Response {
    let app = match find_app(sim, t, name, q) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    if !t.can("applications", "sync") {
        return denied(t, "applications", "sync", &format!("{}/{name}", project_of(&app)));
    }
    let ns = app["metadata"]["namespace"].as_str().unwrap_or_default().to_owned();
    let key = (ns, name.to_owned());
    let mut st = sim.lock();
    let result = match st.apps.get_mut(&key).map(Arc::make_mut) {
        Some(a) => super::gitops::terminate(a),
        None => Err((404, format!("applications.argoproj.io \"{name}\" not found"))),
    };
    if let Err((status, message)) = result {
        return grpc_error(status, &message);
    }
    sim.modified_locked(&mut st, &key);
    json_ok(json!({}))
}

fn app_detail(sim: &SimHandle, t: &TokenSpec, name: &str, what: &str, q: &Query) -> Response {
    let app = match find_app(sim, t, name, q) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    if what == "managed-resources" {
        let key = (
            app["metadata"]["namespace"].as_str().unwrap_or_default().to_owned(),
            name.to_owned(),
        );
        let st = sim.lock();
        if let Some(repo) = st.repos.get(&key) {
            return json_ok(super::gitops::managed_simulated(&app, repo));
        }
    }
    let app = sim.present(&app, false);
    let resources = app["status"]["resources"].as_array().cloned().unwrap_or_default();
    let ns = app["metadata"]["namespace"].clone();
    match what {
        "resource-tree" => {
            let nodes: Vec<Value> = resources
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    json!({"group": r["group"], "version": r["version"], "kind": r["kind"],
                       "namespace": r["namespace"], "name": r["name"], "uid": format!("uid-{i}"),
                       "resourceVersion": "1", "health": r["health"], "createdAt": "2026-01-05T09:00:00Z"})
                })
                .collect();
            json_ok(json!({"nodes": nodes, "orphanedNodes": null, "hosts": null}))
        }
        "managed-resources" => {
            let items: Vec<Value> = resources
                .iter()
                .map(|r| {
                    let state = json!({"apiVersion": r["version"], "kind": r["kind"],
                        "metadata": {"name": r["name"], "namespace": r["namespace"]}})
                    .to_string();
                    json!({"group": r["group"], "kind": r["kind"], "namespace": r["namespace"], "name": r["name"],
                       "targetState": state, "liveState": state, "normalizedLiveState": state,
                       "predictedLiveState": state, "hook": false, "modified": false})
                })
                .collect();
            json_ok(json!({"items": items}))
        }
        _ => {
            let (kind, obj_name, obj_ns) = match q_one(q, "resourceName") {
                Some(r) => (
                    "Pod".to_owned(),
                    json!(r),
                    json!(q_one(q, "resourceNamespace").unwrap_or("")),
                ),
                None => ("Application".to_owned(), json!(name), ns.clone()),
            };
            let items = vec![json!({
                "metadata": {"name": format!("{name}.1"), "namespace": ns, "creationTimestamp": "2026-01-05T09:00:00Z"},
                "involvedObject": {"kind": kind, "name": obj_name, "namespace": obj_ns},
                "reason": "ResourceUpdated", "message": "Updated sync status:  -> Synced",
                "source": {"component": "argocd-application-controller"},
                "firstTimestamp": "2026-01-05T09:00:00Z", "lastTimestamp": "2026-01-05T09:01:00Z",
                "count": 1, "type": "Normal"
            })];
            json_ok(json!({"metadata": {"resourceVersion": "1"}, "items": items}))
        }
    }
}

fn logs(sim: &SimHandle, t: &TokenSpec, name: &str, q: &Query) -> Response {
    let app = match find_app(sim, t, name, q) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    // Argo CD 3.0 enforces the `logs` RBAC resource; 2.x only needed applications get.
    if sim.major() >= 3 && !t.can("logs", "get") {
        return denied(t, "logs", "get", &format!("{}/{name}", project_of(&app)));
    }
    let pod = q_one(q, "podName").unwrap_or("guestbook-ui-0").to_owned();
    let total = 20usize;
    let tail = q_one(q, "tailLines")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(total)
        .min(total);
    let mut out = String::new();
    for i in (total - tail)..total {
        let line = json!({"result": {"content": format!("{pod} log line {i}"), "timeStamp": "2026-01-05T09:00:00Z",
            "timeStampStr": "2026-01-05T09:00:00.000000000Z", "podName": pod}});
        out.push_str(&line.to_string());
        out.push('\n');
    }
    out.push_str(
        &json!({"result": {"content": "", "timeStampStr": "", "last": true, "podName": pod, "timeStamp": null}})
            .to_string(),
    );
    out.push('\n');
    ([(header::CONTENT_TYPE, "application/json")], out).into_response()
}

fn clusters(sim: &SimHandle, t: &TokenSpec) -> Response {
    let st = sim.lock();
    let items: Vec<Value> = if t.can("clusters", "get") {
        st.clusters
            .iter()
            .map(|c| {
                let mut c = c.clone();
                let n = st
                    .apps
                    .values()
                    .filter(|a| a["spec"]["destination"]["server"] == c["server"])
                    .count();
                c["info"]["applicationsCount"] = json!(n);
                c
            })
            .collect()
    } else {
        Vec::new()
    };
    json_ok(json!({"metadata": {}, "items": items}))
}

/// `POST /api/v1/session` (`SessionCreateRequest`: username, password) → `{"token"}`.
fn session_create(sim: &SimHandle, body: &Bytes) -> Response {
    let req: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return grpc_error(400, &format!("invalid request body: {e}")),
    };
    let (user, password) = (
        req["username"].as_str().unwrap_or_default(),
        req["password"].as_str().unwrap_or_default(),
    );
    match sim.login(user, password) {
        Some(token) => json_ok(json!({ "token": token })),
        // argocd-server's session service answers Unauthenticated.
        None => grpc_error(401, "Invalid username or password"),
    }
}

fn appset_project(a: &Value) -> String {
    match a["spec"]["template"]["spec"]["project"].as_str() {
        Some(p) if !p.is_empty() => p.to_owned(),
        _ => "default".to_owned(),
    }
}

/// Whether `a` passes the ApplicationSet list/watch filters and the token's visibility
/// (Argo CD drops what the caller may not get, silently).
fn admits_appset(t: &TokenSpec, a: &Value, q: &Query, ns_key: &str) -> bool {
    let project = appset_project(a);
    if !(t.can("applicationsets", "get") && t.sees_project(&project)) {
        return false;
    }
    let projects = q_all(q, "projects");
    if !projects.is_empty() && !projects.contains(&project) {
        return false;
    }
    if let Some(ns) = q_one(q, ns_key)
        && a["metadata"]["namespace"].as_str() != Some(ns)
    {
        return false;
    }
    match q_one(q, "selector") {
        Some(sel) => selector_matches(sel, &a["metadata"]["labels"]),
        None => true,
    }
}

fn list_appsets(sim: &SimHandle, t: &TokenSpec, q: &Query) -> Response {
    let st = sim.lock();
    let items: Vec<Value> = st
        .appsets
        .values()
        .filter(|a| admits_appset(t, a, q, "appsetNamespace"))
        .cloned()
        .collect();
    json_ok(json!({"metadata": {"resourceVersion": st.rv.to_string()}, "items": items}))
}

fn list_projects(sim: &SimHandle, t: &TokenSpec) -> Response {
    let st = sim.lock();
    let items: Vec<Value> = if t.can("projects", "get") {
        st.projects.values().cloned().collect()
    } else {
        vec![]
    };
    json_ok(json!({"metadata": {"resourceVersion": st.rv.to_string()}, "items": items}))
}

/// `GET /api/v1/stream/applicationsets` (Argo CD 3.4+): like the application watch, events
/// `{"result":{"type","applicationSet"}}` from `resourceVersion` on.
async fn watch_appsets(sim: &SimHandle, t: TokenSpec, q: &Query, headers: &HeaderMap) -> Response {
    let sse = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) == Some("text/event-stream");
    let since: Option<u64> = q_one(q, "resourceVersion").and_then(|v| v.parse().ok());
    let (initial, mut rx, generation) = {
        let st = sim.lock();
        let rx = sim.inner.appset_events.subscribe();
        let initial: Vec<Value> = if since.is_none() {
            st.appsets
                .values()
                .filter(|a| admits_appset(&t, a, q, "appSetNamespace"))
                .cloned()
                .collect()
        } else {
            vec![]
        };
        (initial, rx, st.generation.clone())
    };
    let (tx, body_rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(256);
    let sim2 = sim.clone();
    let q = q.clone();
    tokio::spawn(async move {
        let sim = sim2;
        for a in initial {
            let line = json!({"result": {"type": "ADDED", "applicationSet": a}}).to_string();
            if tx.send(Ok(stream_frame(sse, &line))).await.is_err() {
                return;
            }
        }
        let mut keepalive = tokio::time::interval(sim.inner.options.sse_keepalive);
        keepalive.tick().await;
        loop {
            tokio::select! {
                _ = generation.cancel.cancelled() => {
                    let _ = tx.send(Err(std::io::Error::other("watch cut by the simulator"))).await;
                    return;
                }
                _ = sim.inner.cancel.cancelled() => return,
                _ = tx.closed() => return,
                _ = keepalive.tick(), if sse => {
                    if tx.send(Ok(Bytes::from_static(b":\n"))).await.is_err() {
                        return;
                    }
                }
                msg = rx.recv() => {
                    let msg = match msg {
                        Ok(m) => m,
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    let a: &Value = &msg.app;
                    let rv: u64 = a["metadata"]["resourceVersion"].as_str().and_then(|v| v.parse().ok()).unwrap_or(0);
                    if since.is_some_and(|s| rv < s) || !admits_appset(&t, a, &q, "appSetNamespace") {
                        continue;
                    }
                    let line = json!({"result": {"type": msg.kind, "applicationSet": a}}).to_string();
                    if tx.send(Ok(stream_frame(sse, &line))).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut body_rx = body_rx;
    let first = body_rx.recv().await;
    let body = futures_util::stream::iter(first).chain(ReceiverStream::new(body_rx));
    let content_type = if sse { "text/event-stream" } else { "application/json" };
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn stream_frame(sse: bool, payload: &str) -> Bytes {
    if sse {
        // argoproj/pkg wraps as "data: %s \n\n" and grpc-gateway appends its "\n" delimiter.
        Bytes::from(format!("data: {payload} \n\n\n"))
    } else {
        Bytes::from(format!("{payload}\n"))
    }
}

async fn watch(sim: &SimHandle, t: TokenSpec, q: &Query, headers: &HeaderMap) -> Response {
    let sse = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) == Some("text/event-stream");
    let since: Option<u64> = q_one(q, "resourceVersion").and_then(|v| v.parse().ok());
    let (initial, mut rx, generation) = {
        let st = sim.lock();
        // Subscribe under the lock so no change falls between the initial events and the stream.
        let rx = sim.inner.events.subscribe();
        let initial: Vec<Arc<Value>> = if since.is_none() || q_one(q, "name").is_some() {
            st.apps.values().filter(|a| admits(&t, a, q, false)).cloned().collect()
        } else {
            Vec::new()
        };
        (initial, rx, st.generation.clone())
    };
    let (tx, body_rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(256);
    let sim2 = sim.clone();
    let q = q.clone();
    tokio::spawn(async move {
        let sim = sim2;
        for app in initial {
            let line = watch_line(&sim, "ADDED", &app);
            if tx.send(Ok(stream_frame(sse, &line))).await.is_err() {
                return;
            }
        }
        let mut keepalive = tokio::time::interval(sim.inner.options.sse_keepalive);
        keepalive.tick().await;
        loop {
            tokio::select! {
                _ = generation.cancel.cancelled() => {
                    let err = generation.error.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    match err {
                        Some((code, message)) => {
                            let status = StatusCode::from_u16(code).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
                            let chunk = json!({"error": {"grpc_code": 14, "http_code": code, "message": message, "http_status": status}});
                            let _ = tx.send(Ok(stream_frame(sse, &chunk.to_string()))).await;
                        }
                        None => {
                            let _ = tx.send(Err(std::io::Error::other("watch cut by the simulator"))).await;
                        }
                    }
                    return;
                }
                _ = sim.inner.cancel.cancelled() => return,
                _ = tx.closed() => return,
                _ = keepalive.tick(), if sse => {
                    if sim.watches_frozen() {
                        continue;
                    }
                    if tx.send(Ok(Bytes::from_static(b":\n"))).await.is_err() {
                        return;
                    }
                }
                msg = rx.recv() => {
                    let msg: WatchMsg = match msg {
                        Ok(m) => m,
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(dropped = n, "simulator watch subscriber lagged; events dropped");
                            continue;
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    };
                    if let Some(frame) = watch_frame(&sim, &t, &q, since, &msg, sse)
                        && tx.send(Ok(frame)).await.is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    // grpc-gateway writes the response headers with the first message, so a quiet watch sends
    // no headers at all until something happens; clients must not time out waiting for them.
    let mut body_rx = body_rx;
    let first = body_rx.recv().await;
    let body = futures_util::stream::iter(first).chain(ReceiverStream::new(body_rx));
    let content_type = if sse { "text/event-stream" } else { "application/json" };
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header("X-Content-Type-Options", "nosniff")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The bytes one broadcast event becomes on one watch, or None when filtered out.
fn watch_frame(
    sim: &SimHandle,
    t: &TokenSpec,
    q: &Query,
    since: Option<u64>,
    msg: &WatchMsg,
    sse: bool,
) -> Option<Bytes> {
    let app: &Arc<Value> = &msg.app;
    if !admits(t, app, q, false) {
        return None;
    }
    let rv: u64 = app["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if since.is_some_and(|s| rv < s) {
        return None;
    }
    let mut st = sim.lock();
    if st.faults.stalled || st.faults.frozen {
        return None;
    }
    if st.faults.malformed_lines > 0 {
        st.faults.malformed_lines -= 1;
        return Some(stream_frame(
            sse,
            r#"{"result":{"type":"MODIFIED","application":{"metadata":"#,
        ));
    }
    if let Some(size) = st.faults.oversized_line.take() {
        let mut line = String::with_capacity(size + 1);
        line.extend(std::iter::repeat_n('x', size));
        return Some(stream_frame(sse, &line));
    }
    drop(st);
    Some(stream_frame(sse, &watch_line(sim, msg.kind, app)))
}

/// One watch event's JSON, printed from the stored object.
fn watch_line(sim: &SimHandle, kind: &str, app: &Value) -> String {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        result: Event<'a>,
    }
    #[derive(serde::Serialize)]
    struct Event<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        application: super::objects::Presented<'a>,
    }
    let line = Line {
        result: Event {
            kind,
            application: sim.presented(app, false),
        },
    };
    serde_json::to_string(&line).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let labels = json!({"team": "a", "tier": "web"});
        assert!(selector_matches("team=a", &labels));
        assert!(selector_matches("team==a,tier", &labels));
        assert!(!selector_matches("team!=a", &labels));
        assert!(selector_matches("!missing", &labels));
        assert!(!selector_matches("missing", &labels));
    }
}
