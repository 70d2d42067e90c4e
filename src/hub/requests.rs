//! Requests from the hub to a gateway over its stream ([`forward`]): each gets an id, a
//! deadline and a permit (bounded concurrency per gateway); the answer, a typed error, or a
//! timeout comes back — never a hang, even when the gateway disconnects mid-request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, oneshot};

use super::metrics::KindLabel;
use super::state::HubState;
use crate::wire::codes::request_name;
use crate::wire::proto::{self, HubMessage, Request, Response, hub_message, request, request_error, response};

/// Deadline for requests forwarded to a gateway.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

/// Requests one gateway may have outstanding at once.
pub const MAX_CONCURRENT: usize = 16;

/// Why a request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RequestFailure {
    /// The gateway has no live session.
    #[error("gateway {gateway_id} is not connected{}", .last_seen.as_ref().map(|t| format!(" (last seen {t})")).unwrap_or_default())]
    Disconnected {
        /// The gateway.
        gateway_id: String,
        /// When it was last seen, RFC 3339.
        last_seen: Option<String>,
    },
    /// No answer before the deadline.
    #[error("the gateway did not answer within {0:?}")]
    Timeout(Duration),
    /// The application or resource does not exist (or is not visible).
    #[error("not found: {0}")]
    NotFound(String),
    /// Argo CD RBAC denied it.
    #[error("permission denied: {message}{}", if .missing_policy.is_empty() || .message.contains(.missing_policy.as_str()) { String::new() } else { format!("; add to Argo CD's policy.csv: {}", .missing_policy) })]
    PermissionDenied {
        /// Argo CD's message.
        message: String,
        /// The policy line to add.
        missing_policy: String,
    },
    /// Argo CD could not be reached or failed.
    #[error("Argo CD unavailable: {0}")]
    Unavailable(String),
    /// The request was invalid.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The gateway does not support this request.
    #[error("unsupported by the gateway: {0}")]
    Unsupported(String),
    /// The answer is larger than the hub or the gateway accepts.
    #[error("the answer is too large: {0}")]
    TooLarge(String),
    /// The gateway's answer is not JSON.
    #[error("the gateway answered invalid JSON: {0}")]
    BadAnswer(#[source] std::sync::Arc<serde_json::Error>),
    /// Anything else.
    #[error("gateway error: {0}")]
    Internal(String),
}

impl RequestFailure {
    /// The gateway's typed error as the protocol carries it (a replica forwarding an answer).
    pub fn to_proto(&self) -> proto::RequestError {
        use request_error::Code;
        let (code, message, missing_policy) = match self {
            Self::NotFound(m) => (Code::NotFound, m.clone(), String::new()),
            Self::PermissionDenied {
                message,
                missing_policy,
            } => (Code::PermissionDenied, message.clone(), missing_policy.clone()),
            Self::Unavailable(m) => (Code::Unavailable, m.clone(), String::new()),
            Self::Invalid(m) => (Code::Invalid, m.clone(), String::new()),
            Self::Unsupported(m) => (Code::Unsupported, m.clone(), String::new()),
            Self::TooLarge(m) => (Code::TooLarge, m.clone(), String::new()),
            other => (Code::Internal, other.to_string(), String::new()),
        };
        proto::RequestError {
            code: code as i32,
            message,
            missing_policy,
        }
    }

    /// Decodes a gateway's typed error.
    pub fn from_proto(e: proto::RequestError) -> Self {
        use request_error::Code;
        match Code::try_from(e.code).unwrap_or(Code::Unspecified) {
            Code::NotFound => Self::NotFound(e.message),
            Code::PermissionDenied => Self::PermissionDenied {
                message: e.message,
                missing_policy: e.missing_policy,
            },
            Code::Unavailable => Self::Unavailable(e.message),
            Code::Timeout => Self::Unavailable(format!("timed out: {}", e.message)),
            Code::Invalid => Self::Invalid(e.message),
            Code::Unsupported => Self::Unsupported(e.message),
            Code::TooLarge => Self::TooLarge(e.message),
            Code::Internal | Code::Unspecified => Self::Internal(e.message),
        }
    }
}

/// A request awaiting its answer, and the pieces of the answer so far.
#[derive(Debug)]
struct Pending {
    done: oneshot::Sender<Response>,
    pieces: Vec<u8>,
}

/// Pending requests of one session.
#[derive(Debug)]
pub struct Broker {
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, Pending>>,
    permits: Semaphore,
    max_answer_bytes: usize,
}

impl Default for Broker {
    fn default() -> Self {
        Self::new(64 * 1024 * 1024)
    }
}

/// Removes the pending entry when the caller gives up (timeout, disconnect, cancelled HTTP call).
struct PendingGuard<'a> {
    broker: &'a Broker,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut p) = self.broker.pending.lock() {
            p.remove(&self.id);
        }
    }
}

fn too_large(id: u64, limit: usize) -> Response {
    Response {
        id,
        result: Some(response::Result::Error(proto::RequestError {
            code: request_error::Code::TooLarge as i32,
            message: format!(
                "the gateway's answer exceeds the hub's limit of {limit} bytes (hub flag --max-answer-bytes)"
            ),
            missing_policy: String::new(),
        })),
        more: false,
    }
}

impl Broker {
    /// A broker that assembles answers of at most `max_answer_bytes`.
    pub fn new(max_answer_bytes: usize) -> Self {
        Self {
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            permits: Semaphore::new(MAX_CONCURRENT),
            max_answer_bytes,
        }
    }

    /// Sends a request on `tx` and waits for its answer until `deadline`.
    pub async fn call(
        &self,
        tx: &tokio::sync::mpsc::Sender<Result<HubMessage, tonic::Status>>,
        kind: request::Kind,
        deadline: Duration,
    ) -> Result<serde_json::Value, RequestFailure> {
        let bytes = self.call_bytes(tx, kind, deadline).await?;
        serde_json::from_slice(&bytes).map_err(|e| RequestFailure::BadAnswer(std::sync::Arc::new(e)))
    }

    /// Like [`Broker::call`], answering the JSON as the gateway sent it (for a replica that
    /// forwards it to the one the caller asked).
    pub async fn call_bytes(
        &self,
        tx: &tokio::sync::mpsc::Sender<Result<HubMessage, tonic::Status>>,
        kind: request::Kind,
        deadline: Duration,
    ) -> Result<Vec<u8>, RequestFailure> {
        let work = async {
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| RequestFailure::Internal("session closed".into()))?;
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let (done, answer) = oneshot::channel();
            self.pending
                .lock()
                .map_err(|_| RequestFailure::Internal("lock".into()))?
                .insert(id, Pending { done, pieces: vec![] });
            let _guard = PendingGuard { broker: self, id };
            let request = Request {
                id,
                deadline_ms: deadline.as_millis().min(u128::from(u32::MAX)) as u32,
                kind: Some(kind),
            };
            tx.send(Ok(HubMessage {
                body: Some(hub_message::Body::Request(request)),
            }))
            .await
            .map_err(|_| RequestFailure::Internal("the gateway session closed".into()))?;
            let response = answer
                .await
                .map_err(|_| RequestFailure::Internal("the gateway session closed before answering".into()))?;
            match response.result {
                Some(response::Result::Json(bytes)) => Ok(bytes),
                Some(response::Result::Error(e)) => Err(RequestFailure::from_proto(e)),
                None => Err(RequestFailure::Internal("empty answer".into())),
            }
        };
        tokio::time::timeout(deadline, work)
            .await
            .unwrap_or(Err(RequestFailure::Timeout(deadline)))
    }

    /// Routes an answer, or a piece of one, to its waiting caller (late answers are dropped).
    /// Pieces are concatenated up to the limit; past it the caller gets a typed error.
    pub fn complete(&self, response: Response) {
        let Ok(mut pending) = self.pending.lock() else { return };
        let id = response.id;
        let Some(entry) = pending.get_mut(&id) else { return };
        let piece = match &response.result {
            Some(response::Result::Json(bytes)) => Some(bytes),
            _ => None,
        };
        if let Some(bytes) = piece
            && (response.more || !entry.pieces.is_empty())
        {
            if entry.pieces.len() + bytes.len() > self.max_answer_bytes {
                if let Some(p) = pending.remove(&id) {
                    let _ = p.done.send(too_large(id, self.max_answer_bytes));
                }
                return;
            }
            entry.pieces.extend_from_slice(bytes);
            if response.more {
                return;
            }
            if let Some(p) = pending.remove(&id) {
                let _ = p.done.send(Response {
                    id,
                    result: Some(response::Result::Json(p.pieces)),
                    more: false,
                });
            }
            return;
        }
        if let Some(p) = pending.remove(&id) {
            let _ = p.done.send(response);
        }
    }

    /// Fails every waiting caller at once, when the session ends.
    pub fn close(&self) {
        if let Ok(mut p) = self.pending.lock() {
            p.clear();
        }
        self.permits.close();
    }
}

/// Sends a request to a connected gateway and waits for its answer until `deadline`.
pub async fn forward(
    state: &HubState,
    id: &str,
    kind: request::Kind,
    deadline: Duration,
) -> Result<serde_json::Value, RequestFailure> {
    let Some(session) = state.sessions.get(id) else {
        // Another replica may hold the session: the request goes there.
        if let Some(cluster) = &state.cluster
            && let Some(remote) = cluster.remote(id)
        {
            let name = request_name(&kind);
            let started = std::time::Instant::now();
            let result = cluster.forward(&remote, kind, deadline).await;
            state
                .metrics
                .request_seconds
                .get_or_create(&KindLabel { kind: name.to_owned() })
                .observe(started.elapsed().as_secs_f64());
            match result {
                Ok(bytes) => {
                    return serde_json::from_slice(&bytes)
                        .map_err(|e| RequestFailure::BadAnswer(std::sync::Arc::new(e)));
                }
                Err(RequestFailure::Disconnected { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let last_seen = state
            .store
            .gateway(id.to_owned())
            .await
            .ok()
            .flatten()
            .and_then(|g| g.last_seen_at)
            .and_then(|s| jiff::Timestamp::from_second(s).ok())
            .map(|t| t.to_string());
        return Err(RequestFailure::Disconnected {
            gateway_id: id.to_owned(),
            last_seen,
        });
    };
    let name = request_name(&kind);
    let started = std::time::Instant::now();
    let result = session.broker.call(&session.tx, kind, deadline).await;
    state
        .metrics
        .request_seconds
        .get_or_create(&KindLabel { kind: name.to_owned() })
        .observe(started.elapsed().as_secs_f64());
    result
}
