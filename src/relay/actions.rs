//! Answers the hub's requests by mapping each wire request onto the Argo CD client: the health
//! check (the same probes as `check`, plus the view's counts and state), get, sync (with a
//! resource subset, force and sync options), refresh, terminate, rollback, resource tree,
//! managed resources, the evaluation of a deployment's expectations against them, events and
//! logs. Argo CD failures come back as typed request errors carrying Argo CD's message and, for
//! RBAC denials, the missing policy line.

use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};

use crate::argocd::client::{
    AppRef, Client, LogsRequest, Refresh, ResourceRef, RollbackRequest, SyncRequest, SyncResource,
};
use crate::argocd::error::ArgoCdError;
use crate::argocd::model::{AppKey, Application};
use crate::argocd::view::ViewHandle;
use crate::report::{Report, Status};
use crate::wire::expectation::{self, Evaluation, Expectation};
use crate::wire::proto::{self, request, request_error};

/// Answers the hub's requests; the tunnel runs each with the hub's deadline.
pub trait Actions: Send + Sync {
    /// Handles one request; the answer is JSON. The caller enforces the deadline too.
    fn handle(
        &self,
        kind: request::Kind,
        deadline: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, proto::RequestError>>;
}

/// Largest log content returned per request; well below a relay message so the answer always
/// fits on the stream.
pub const MAX_LOG_BYTES: usize = 512 * 1024;
/// Lines of log returned when the hub asks for none in particular.
pub const DEFAULT_TAIL_LINES: u32 = 100;

/// The gateway's request handler.
#[derive(Clone)]
pub struct ArgoActions {
    client: Client,
    view: ViewHandle,
}

impl ArgoActions {
    /// A handler using `client` for calls and `view` for counts.
    pub fn new(client: Client, view: ViewHandle) -> Self {
        Self { client, view }
    }

    /// The health check of SPEC §4: Argo CD version and reachability, each token's validity and
    /// expiry, the permission probes, and the view's application and cluster counts.
    pub async fn health_check(&self) -> Value {
        let mut report = Report::default();
        let reachable = crate::argocd::probes::client_rows(&self.client, self.client.config(), &mut report)
            .await
            .is_some();
        let status = self.view.status();
        let failing: serde_json::Map<String, Value> = status
            .failing
            .iter()
            .map(|(loop_name, e)| (loop_name.clone(), json!(e.to_string())))
            .collect();
        let overall = if !reachable {
            "Unhealthy"
        } else if report.rows.iter().any(|r| r.status != Status::Ok) || !failing.is_empty() || !status.apps_synced {
            "Degraded"
        } else {
            "Healthy"
        };
        let argocd_version = report
            .rows
            .iter()
            .find(|r| r.name == "Argo CD version" && r.status == Status::Ok)
            .map(|r| r.detail.clone());
        let credential = match &self.client.config().auth {
            crate::argocd::AuthSource::TokenFile(_) => "account token".to_owned(),
            crate::argocd::AuthSource::ProjectTokensDir(_) => "project tokens".to_owned(),
            crate::argocd::AuthSource::Login { username, .. } => format!(
                "login as {username} ({} logins)",
                self.client.session().map_or(0, |s| s.logins())
            ),
        };
        json!({
            "status": overall,
            "gatewayVersion": env!("CARGO_PKG_VERSION"),
            "argocd": {
                "url": self.client.config().base_url.as_str(),
                "reachable": reachable,
                "version": argocd_version,
                "credential": credential,
            },
            "applicationSets": self.view.appsets().len(),
            "projects": self.view.projects().len(),
            "checks": report.rows,
            "applications": self.view.application_count(),
            "clusters": self.view.clusters().len(),
            "view": {
                "applicationsListed": status.apps_synced,
                "clustersListed": status.clusters_synced,
                "applicationSetsListed": status.appsets_synced,
                "applicationSetsNote": status.appsets_note,
                "lastListedAt": status.last_success.map(|t| t.to_string()),
                "failing": failing,
            },
        })
    }

    async fn answer(&self, kind: request::Kind) -> Result<Value, proto::RequestError> {
        let app = target(&kind);
        self.dispatch(kind).await.map_err(|e| match (e, app) {
            (DispatchError::Request(e), _) => e,
            // Without a project, Argo CD answers 403 both for an application the token may
            // not see and for one that does not exist. When the view has never seen the
            // application either, "not found" is the likelier truth; the policy hint stays.
            (DispatchError::Argo(ArgoCdError::PermissionDenied { policy_line, .. }), Some(key)) if self.view.application(&key).is_none() => {
                proto::RequestError {
                    code: request_error::Code::NotFound as i32,
                    message: format!(
                        "application {key} not found: Argo CD knows no such application, or the gateway's token may not see it (then add this RBAC policy line to argocd-rbac-cm: {policy_line})"
                    ),
                    missing_policy: policy_line,
                }
            }
            (DispatchError::Argo(e), _) => to_request_error(e),
        })
    }

    async fn dispatch(&self, kind: request::Kind) -> Result<Value, DispatchError> {
        use request::Kind;
        match kind {
            Kind::HealthCheck(_) => Ok(self.health_check().await),
            Kind::Get(g) => {
                let app = app_ref(g.app)?;
                let refresh = match g.refresh.as_str() {
                    "" => None,
                    "normal" => Some(Refresh::Normal),
                    "hard" => Some(Refresh::Hard),
                    other => {
                        return Err(invalid(format!("refresh must be \"normal\" or \"hard\", not {other:?}")).into());
                    }
                };
                let d = self
                    .client
                    .get_application(&app, refresh)
                    .await
                    .map_err(DispatchError::from)?;
                Ok(model_json(&d.app))
            }
            Kind::Refresh(r) => {
                let app = app_ref(r.app)?;
                let refresh = if r.hard { Refresh::Hard } else { Refresh::Normal };
                let d = self
                    .client
                    .get_application(&app, Some(refresh))
                    .await
                    .map_err(DispatchError::from)?;
                Ok(model_json(&d.app))
            }
            Kind::Sync(s) => {
                let app = app_ref(s.app)?;
                let revision = Some(s.revision).filter(|r| !r.is_empty());
                if revision.is_some() && !s.revisions.is_empty() {
                    return Err(invalid("give either revision or revisions, not both").into());
                }
                let positions = if s.source_positions.is_empty() {
                    (1..=s.revisions.len() as i64).collect()
                } else if s.source_positions.len() == s.revisions.len() && s.source_positions.iter().all(|p| *p >= 1) {
                    s.source_positions
                } else {
                    return Err(invalid("sourcePositions must name one 1-based source position per revision").into());
                };
                let resources = s
                    .resources
                    .into_iter()
                    .map(|r| SyncResource {
                        group: r.group,
                        kind: r.kind,
                        name: r.name,
                        namespace: r.namespace,
                    })
                    .collect::<Vec<_>>();
                if resources.iter().any(|r| r.kind.is_empty() || r.name.is_empty()) {
                    return Err(invalid("each resource of a selective sync needs kind and name").into());
                }
                let req = SyncRequest {
                    revision,
                    revisions: s.revisions,
                    source_positions: positions,
                    prune: s.prune,
                    dry_run: s.dry_run,
                    resources,
                    force: s.force,
                    sync_options: s.sync_options,
                };
                let d = self
                    .client
                    .sync_application(&app, &req)
                    .await
                    .map_err(DispatchError::from)?;
                Ok(model_json(&d.app))
            }
            Kind::TerminateOperation(a) => {
                let app = app_ref(Some(a))?;
                self.client
                    .terminate_operation(&app)
                    .await
                    .map_err(DispatchError::from)?;
                Ok(json!({"terminated": true}))
            }
            Kind::Rollback(r) => {
                let app = app_ref(r.app)?;
                let req = RollbackRequest {
                    id: r.id,
                    prune: r.prune,
                    dry_run: r.dry_run,
                };
                let d = self
                    .client
                    .rollback_application(&app, &req)
                    .await
                    .map_err(DispatchError::from)?;
                Ok(model_json(&d.app))
            }
            Kind::Evaluate(e) => {
                let app = app_ref(e.app)?;
                self.evaluate(&app, e.expectations).await
            }
            Kind::ResourceTree(a) => self
                .client
                .resource_tree(&app_ref(Some(a))?)
                .await
                .map_err(DispatchError::from),
            Kind::ManagedResources(a) => self
                .client
                .managed_resources(&app_ref(Some(a))?)
                .await
                .map_err(DispatchError::from),
            Kind::Events(e) => {
                let app = app_ref(e.app)?;
                let resource = (!e.resource_name.is_empty()).then(|| ResourceRef {
                    namespace: e.resource_namespace,
                    name: e.resource_name,
                    uid: Some(e.resource_uid).filter(|u| !u.is_empty()),
                });
                self.client
                    .events(&app, resource.as_ref())
                    .await
                    .map_err(DispatchError::from)
            }
            Kind::Logs(l) => {
                let app = app_ref(l.app)?;
                if l.pod_name.is_empty() {
                    return Err(invalid("logs need a pod name (podName)").into());
                }
                let req = LogsRequest {
                    pod_name: l.pod_name,
                    container: Some(l.container).filter(|c| !c.is_empty()),
                    namespace: None,
                    tail_lines: if l.tail_lines == 0 {
                        DEFAULT_TAIL_LINES
                    } else {
                        l.tail_lines
                    },
                    max_bytes: MAX_LOG_BYTES,
                    previous: false,
                };
                self.client.logs(&app, &req).await.map_err(DispatchError::from)
            }
        }
    }
}

impl ArgoActions {
    /// Evaluates expectations against the managed resources' target and live manifests. The
    /// revision answered is the one the view holds before and after the read: when the two
    /// differ the read is repeated, so the manifests and the revision belong together.
    async fn evaluate(&self, app: &AppRef, wire: Vec<proto::Expectation>) -> Result<Value, DispatchError> {
        if wire.len() > expectation::MAX_EXPECTATIONS {
            return Err(invalid(format!("at most {} expectations", expectation::MAX_EXPECTATIONS)).into());
        }
        let mut expectations = Vec::with_capacity(wire.len());
        for e in wire {
            let value = serde_json::from_str(&e.value_json)
                .map_err(|err| invalid(format!("expectation value is not JSON: {err}")))?;
            let e = Expectation {
                group: e.group,
                kind: e.kind,
                namespace: e.namespace,
                name: e.name,
                path: e.path,
                value,
            };
            e.validate().map_err(invalid)?;
            expectations.push(e);
        }
        let revisions = || {
            self.view
                .application(&app.key)
                .map(|a| (a.sync.revision.clone(), a.sync.revisions.clone()))
                .unwrap_or_default()
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let before = revisions();
            let managed = self.client.managed_resources(app).await?;
            let after = revisions();
            if before == after || attempt >= 3 {
                let answer = Evaluation {
                    revision: after.0,
                    revisions: after.1,
                    results: expectation::evaluate(&expectations, &managed),
                };
                return Ok(serde_json::to_value(answer).unwrap_or(Value::Null));
            }
        }
    }
}

impl Actions for ArgoActions {
    fn handle(
        &self,
        kind: request::Kind,
        _deadline: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, proto::RequestError>> {
        let this = self.clone();
        async move {
            let value = this.answer(kind).await?;
            serde_json::to_vec(&value).map_err(|e| error(request_error::Code::Internal, e.to_string()))
        }
        .boxed()
    }
}

/// A failure before or from Argo CD, kept apart so Argo CD's can be interpreted in context.
enum DispatchError {
    Argo(ArgoCdError),
    Request(proto::RequestError),
}

impl From<ArgoCdError> for DispatchError {
    fn from(e: ArgoCdError) -> Self {
        Self::Argo(e)
    }
}

impl From<proto::RequestError> for DispatchError {
    fn from(e: proto::RequestError) -> Self {
        Self::Request(e)
    }
}

/// The application a request is about, if any.
fn target(kind: &request::Kind) -> Option<AppKey> {
    use request::Kind;
    let app = match kind {
        Kind::HealthCheck(_) => return None,
        Kind::Get(g) => g.app.as_ref(),
        Kind::Sync(s) => s.app.as_ref(),
        Kind::Refresh(r) => r.app.as_ref(),
        Kind::ResourceTree(a) | Kind::ManagedResources(a) | Kind::TerminateOperation(a) => Some(a),
        Kind::Rollback(r) => r.app.as_ref(),
        Kind::Evaluate(e) => e.app.as_ref(),
        Kind::Events(e) => e.app.as_ref(),
        Kind::Logs(l) => l.app.as_ref(),
    }?;
    Some(AppKey::new(app.namespace.clone(), app.name.clone()))
}

fn model_json(app: &Application) -> Value {
    serde_json::to_value(app).unwrap_or(Value::Null)
}

fn error(code: request_error::Code, message: impl Into<String>) -> proto::RequestError {
    proto::RequestError {
        code: code as i32,
        message: message.into(),
        missing_policy: String::new(),
    }
}

fn invalid(message: impl Into<String>) -> proto::RequestError {
    error(request_error::Code::Invalid, message)
}

fn app_ref(app: Option<proto::AppRef>) -> Result<AppRef, proto::RequestError> {
    let app = app.ok_or_else(|| invalid("the request names no application"))?;
    if app.name.is_empty() {
        return Err(invalid("the request names no application"));
    }
    let r = AppRef::new(app.namespace, app.name);
    Ok(if app.project.is_empty() {
        r
    } else {
        r.with_project(app.project)
    })
}

/// The typed request error for an Argo CD failure, with Argo CD's message.
pub fn to_request_error(e: ArgoCdError) -> proto::RequestError {
    use request_error::Code;
    let code = match &e {
        ArgoCdError::NotFound { .. } => Code::NotFound,
        ArgoCdError::PermissionDenied { policy_line, .. } => {
            return proto::RequestError {
                code: Code::PermissionDenied as i32,
                message: e.to_string(),
                missing_policy: policy_line.clone(),
            };
        }
        ArgoCdError::Unauthorized { .. } | ArgoCdError::LoginFailed { .. } | ArgoCdError::SessionRejected { .. } => {
            Code::PermissionDenied
        }
        ArgoCdError::Timeout { .. } => Code::Timeout,
        ArgoCdError::Rejected { .. } | ArgoCdError::UnsupportedMediaType { .. } => Code::Invalid,
        ArgoCdError::Decode(_) | ArgoCdError::BodyTooLarge { .. } | ArgoCdError::LineTooLong { .. } => Code::Internal,
        _ => Code::Unavailable,
    };
    error(code, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_codes_and_keep_the_policy_line() {
        let denied = to_request_error(ArgoCdError::PermissionDenied {
            what: "sync application argocd/a".into(),
            message: "permission denied".into(),
            policy_line: "p, role:gateway, applications, sync, */*, allow".into(),
        });
        assert_eq!(denied.code, request_error::Code::PermissionDenied as i32);
        assert_eq!(denied.missing_policy, "p, role:gateway, applications, sync, */*, allow");
        let nf = to_request_error(ArgoCdError::NotFound {
            message: "app x not found".into(),
        });
        assert_eq!(nf.code, request_error::Code::NotFound as i32);
        assert!(nf.message.contains("app x not found"));
        let down = to_request_error(ArgoCdError::Unavailable {
            url: "https://argocd".into(),
            status: Some(503),
            message: "503 Service Unavailable".into(),
        });
        assert_eq!(down.code, request_error::Code::Unavailable as i32);
        let slow = to_request_error(ArgoCdError::Timeout {
            what: "get".into(),
            seconds: 1.0,
        });
        assert_eq!(slow.code, request_error::Code::Timeout as i32);
    }

    #[test]
    fn app_refs_need_a_name_and_keep_the_project() {
        assert!(app_ref(None).is_err());
        assert!(
            app_ref(Some(proto::AppRef {
                namespace: "argocd".into(),
                name: String::new(),
                project: String::new()
            }))
            .is_err()
        );
        let r = app_ref(Some(proto::AppRef {
            namespace: "argocd".into(),
            name: "guestbook".into(),
            project: "team-a".into(),
        }))
        .unwrap();
        assert_eq!(r.project.as_deref(), Some("team-a"));
        assert_eq!(r.key.name, "guestbook");
    }
}
