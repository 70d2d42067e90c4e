//! An in-process fake of the Kubernetes API server, just big enough for the gateway: namespaced
//! objects of any kind under `/api/v1/...` and `/apis/GROUP/VERSION/...` with GET, POST, PUT
//! and PATCH (JSON Patch and JSON merge patch), and the semantics the gateway relies on:
//!
//! - every write bumps a cluster-wide `resourceVersion`;
//! - POST of an existing name is 409 AlreadyExists;
//! - PUT or PATCH carrying a stale `resourceVersion` is 409 Conflict;
//! - a failed JSON Patch `test` is 422;
//! - a missing object is 404; every error has a `Status` body;
//! - `metadata.generation` moves when `spec` changes, as for Deployments and CronJobs.
//!
//! The fake can be told to answer 503 or to black-hole requests (never answer), to stand in for
//! an unreachable API server, and to fail the next PUTs with a conflict, to force races.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::watch;

/// How the fake answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Normally.
    Normal,
    /// 503 Service Unavailable to everything.
    Unavailable,
    /// Never answers (until the mode changes).
    BlackHole,
}

type Key = (String, String, String);

#[derive(Default)]
struct Inner {
    objects: Mutex<BTreeMap<Key, Value>>,
    resource_version: AtomicU64,
    forced_conflicts: AtomicUsize,
    requests: Mutex<Vec<String>>,
}

/// The fake API server; clones share state.
#[derive(Clone)]
pub struct FakeApi {
    inner: Arc<Inner>,
    mode: Arc<watch::Sender<Mode>>,
}

impl Default for FakeApi {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeApi {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner::default()),
            mode: Arc::new(watch::Sender::new(Mode::Normal)),
        }
    }

    /// The fake as an axum Router.
    pub fn router(&self) -> Router {
        Router::new().fallback(handle).with_state(self.clone())
    }

    /// A kube client talking to the fake in memory (no sockets), so paused tokio time works.
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.router(), "default")
    }

    /// Serves the fake on 127.0.0.1:0; returns the base URL.
    pub async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = self.router();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        format!("http://{addr}")
    }

    pub fn set_mode(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// The next `n` PUTs fail with 409 Conflict, as if someone else wrote first.
    pub fn force_conflicts(&self, n: usize) {
        self.inner.forced_conflicts.store(n, Ordering::SeqCst);
    }

    /// Every request so far, as `METHOD /path`.
    pub fn requests(&self) -> Vec<String> {
        self.inner.requests.lock().unwrap().clone()
    }

    /// The writes (anything but GET) so far.
    pub fn writes(&self) -> Vec<String> {
        self.requests().into_iter().filter(|r| !r.starts_with("GET ")).collect()
    }

    /// Stores `obj` as if created by someone else; returns it with its metadata filled in.
    pub fn insert(&self, prefix: &str, namespace: &str, mut obj: Value) -> Value {
        let name = obj["metadata"]["name"].as_str().unwrap().to_owned();
        obj["metadata"]["namespace"] = json!(namespace);
        obj["metadata"]["uid"] = json!(format!("uid-{name}"));
        obj["metadata"]["generation"] = json!(1);
        obj["metadata"]["resourceVersion"] = json!(self.next_rv());
        self.inner
            .objects
            .lock()
            .unwrap()
            .insert((prefix.to_owned(), namespace.to_owned(), name), obj.clone());
        obj
    }

    pub fn get(&self, prefix: &str, namespace: &str, name: &str) -> Option<Value> {
        self.inner
            .objects
            .lock()
            .unwrap()
            .get(&(prefix.to_owned(), namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Edits a stored object in place (as a controller or a person would), bumping its
    /// resourceVersion; returns false when there is no such object.
    pub fn edit(&self, prefix: &str, namespace: &str, name: &str, f: impl FnOnce(&mut Value)) -> bool {
        let rv = self.next_rv();
        let mut objects = self.inner.objects.lock().unwrap();
        match objects.get_mut(&(prefix.to_owned(), namespace.to_owned(), name.to_owned())) {
            Some(obj) => {
                f(obj);
                obj["metadata"]["resourceVersion"] = json!(rv);
                true
            }
            None => false,
        }
    }

    fn next_rv(&self) -> String {
        (self.inner.resource_version.fetch_add(1, Ordering::SeqCst) + 1).to_string()
    }
}

/// Prefixes naming the collections the gateway uses.
pub const SECRETS: &str = "api/v1/secrets";
pub const LEASES: &str = "apis/coordination.k8s.io/v1/leases";
pub const DEPLOYMENTS: &str = "apis/apps/v1/deployments";
pub const CRONJOBS: &str = "apis/batch/v1/cronjobs";

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    (code, axum::Json(body)).into_response()
}

/// Splits `/api/v1/namespaces/NS/PLURAL[/NAME]` or `/apis/G/V/namespaces/NS/PLURAL[/NAME]`
/// into (collection prefix, namespace, optional name).
fn parse_path(path: &str) -> Option<(String, String, Option<String>)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group_version, rest) = match *parts.first()? {
        "api" => (parts.get(..2)?.join("/"), parts.get(2..)?),
        "apis" => (parts.get(..3)?.join("/"), parts.get(3..)?),
        _ => return None,
    };
    match rest {
        ["namespaces", ns, plural] => Some((format!("{group_version}/{plural}"), ns.to_string(), None)),
        ["namespaces", ns, plural, name] => Some((
            format!("{group_version}/{plural}"),
            ns.to_string(),
            Some(name.to_string()),
        )),
        _ => None,
    }
}

async fn handle(State(api): State<FakeApi>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    api.inner
        .requests
        .lock()
        .unwrap()
        .push(format!("{method} {}", uri.path()));
    let mut mode = api.mode.subscribe();
    loop {
        let current = *mode.borrow_and_update();
        match current {
            Mode::Normal => break,
            Mode::Unavailable => {
                return status(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "fake API server is down".into(),
                );
            }
            Mode::BlackHole => {
                if mode.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }
    let Some((prefix, ns, name)) = parse_path(uri.path()) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the fake has no route {}", uri.path()),
        );
    };
    let plural = prefix.rsplit('/').next().unwrap_or_default().to_owned();
    let not_found = |name: &str| {
        status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{plural} \"{name}\" not found"),
        )
    };
    let parsed = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) => v,
            Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", format!("invalid JSON: {e}")),
        }
    };
    let mut objects = api.inner.objects.lock().unwrap();
    match (method, name) {
        (Method::GET, Some(name)) => match objects.get(&(prefix.clone(), ns.clone(), name.clone())) {
            Some(obj) => (StatusCode::OK, axum::Json(obj.clone())).into_response(),
            None => not_found(&name),
        },
        (Method::POST, None) => {
            let Some(name) = parsed["metadata"]["name"].as_str().map(str::to_owned) else {
                return status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    "metadata.name is required".into(),
                );
            };
            let key = (prefix.clone(), ns.clone(), name.clone());
            if objects.contains_key(&key) {
                return status(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    format!("{plural} \"{name}\" already exists"),
                );
            }
            let mut obj = parsed;
            obj["metadata"]["namespace"] = json!(ns);
            obj["metadata"]["uid"] = json!(format!("uid-{name}"));
            obj["metadata"]["generation"] = json!(1);
            obj["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
            obj["metadata"]["resourceVersion"] = json!(api.next_rv());
            objects.insert(key, obj.clone());
            (StatusCode::CREATED, axum::Json(obj)).into_response()
        }
        (Method::PUT, Some(name)) => {
            let key = (prefix.clone(), ns.clone(), name.clone());
            let Some(old) = objects.get(&key).cloned() else {
                return not_found(&name);
            };
            let sent_rv = parsed["metadata"]["resourceVersion"].as_str().unwrap_or_default();
            let forced = api
                .inner
                .forced_conflicts
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if forced || (!sent_rv.is_empty() && Some(sent_rv) != old["metadata"]["resourceVersion"].as_str()) {
                return conflict(&plural, &name);
            }
            let obj = commit(&api, old, parsed);
            objects.insert(key, obj.clone());
            (StatusCode::OK, axum::Json(obj)).into_response()
        }
        (Method::PATCH, Some(name)) => {
            let key = (prefix.clone(), ns.clone(), name.clone());
            let Some(old) = objects.get(&key).cloned() else {
                return not_found(&name);
            };
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let mut new = old.clone();
            match content_type {
                "application/json-patch+json" => {
                    let ops: json_patch::Patch = match serde_json::from_value(parsed) {
                        Ok(p) => p,
                        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
                    };
                    if let Err(e) = json_patch::patch(&mut new, &ops) {
                        return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e.to_string());
                    }
                }
                "application/merge-patch+json" => json_patch::merge(&mut new, &parsed),
                other => {
                    return status(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "UnsupportedMediaType",
                        format!("the fake does not implement {other}"),
                    );
                }
            }
            let sent_rv = new["metadata"]["resourceVersion"].as_str().unwrap_or_default();
            if sent_rv != old["metadata"]["resourceVersion"].as_str().unwrap_or_default() {
                return conflict(&plural, &name);
            }
            let obj = commit(&api, old, new);
            objects.insert(key, obj.clone());
            (StatusCode::OK, axum::Json(obj)).into_response()
        }
        (m, _) => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("the fake does not implement {m} {}", uri.path()),
        ),
    }
}

fn conflict(plural: &str, name: &str) -> Response {
    status(
        StatusCode::CONFLICT,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {plural} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
        ),
    )
}

/// Applies server-owned metadata to an accepted write: identity fields stay, the
/// resourceVersion moves, and the generation moves when the spec changed.
fn commit(api: &FakeApi, old: Value, mut new: Value) -> Value {
    for field in ["uid", "namespace", "name", "creationTimestamp"] {
        new["metadata"][field] = old["metadata"][field].clone();
    }
    let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
    new["metadata"]["generation"] = json!(if new.get("spec") != old.get("spec") {
        generation + 1
    } else {
        generation
    });
    new["metadata"]["resourceVersion"] = json!(api.next_rv());
    new
}
