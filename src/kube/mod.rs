//! The gateway's use of the Kubernetes API, all of it namespaced and limited to objects the
//! chart names: the identity Secret ([`secret_store`]), the leader-election Lease ([`lease`]),
//! and its own Deployment and CronJob for `self-update` ([`self_update`]).
//!
//! Every write carries a precondition (a `resourceVersion`, or a JSON Patch `test` of the old
//! value), so two replicas or a replica and a human never silently overwrite each other.

pub mod lease;
pub mod secret_store;
pub mod self_update;

/// Why no Kubernetes client could be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Neither a kubeconfig nor the in-cluster service account was found or usable.
    #[error(
        "cannot find a Kubernetes API configuration: {0} (in a pod the service account is used; elsewhere set KUBECONFIG)"
    )]
    Config(String),
    /// The configuration was found but a client could not be built from it (bad TLS material).
    #[error("cannot set up the Kubernetes API client: {0}")]
    Build(String),
}

/// A client from the environment: `KUBECONFIG` (or `~/.kube/config`) when present, else the
/// pod's service account.
pub async fn client() -> Result<::kube::Client, ClientError> {
    let config = ::kube::Config::infer()
        .await
        .map_err(|e| ClientError::Config(e.to_string()))?;
    ::kube::Client::try_from(config).map_err(|e| ClientError::Build(e.to_string()))
}

/// True when the API answered with this HTTP status code.
pub fn is_status(err: &::kube::Error, code: u16) -> bool {
    matches!(err, ::kube::Error::Api(s) if s.code == code)
}

/// A one-line account of a Kubernetes API error for messages. The API's own `Status` message
/// names the object and, for 403, the missing permission; it never carries object data.
pub fn describe(err: &::kube::Error) -> String {
    match err {
        ::kube::Error::Api(s) => {
            let hint = match s.code {
                401 => "; the service account token was refused",
                403 => {
                    "; the Role bound to this pod's service account lacks this permission (see the chart's rbac.yaml)"
                }
                _ => "",
            };
            let reason = if s.reason.is_empty() { "" } else { s.reason.as_str() };
            format!("HTTP {} {reason}: {}{hint}", s.code, s.message)
        }
        other => other.to_string(),
    }
}

/// The namespace a pod runs in, from the downward-API variable the chart sets.
pub const NAMESPACE_ENV: &str = "POD_NAMESPACE";

/// The pod name, from the downward-API variable the chart sets.
pub const POD_NAME_ENV: &str = "POD_NAME";
