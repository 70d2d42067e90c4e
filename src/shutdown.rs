//! One shutdown tree per process (gateway, hub, demo). Every task is spawned through a [`Tree`]
//! and tracked; a long-lived task that must not end (an HTTP or gRPC server, the Argo CD view,
//! the relay source) is *critical*: when it ends while the process is not shutting down, the
//! tree records which one and why, and cancels everything, so the process exits non-zero with a
//! line naming it instead of running on half-dead. Draining starts by cancelling the tree's
//! token, which readiness watches, and ends by waiting for the tracked tasks with a grace.
//!
//! Listeners come wrapped ([`GuardedListener`]): a transient accept failure (a reset, too many
//! open files) is logged and retried, a fatal one (the socket is gone) fails the tree.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Which critical task ended, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{task} stopped unexpectedly: {reason}")]
pub struct TaskFailure {
    /// The task's name, as spawned.
    pub task: String,
    /// What ended it.
    pub reason: String,
}

#[derive(Default)]
struct Inner {
    failure: Mutex<Option<TaskFailure>>,
    failed: Notify,
}

/// The process's task tree; cheap to clone.
#[derive(Clone)]
pub struct Tree {
    token: CancellationToken,
    tracker: TaskTracker,
    inner: Arc<Inner>,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Tree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tree")
            .field("draining", &self.is_draining())
            .field("tasks", &self.tracker.len())
            .finish()
    }
}

impl Tree {
    /// A new tree.
    pub fn new() -> Self {
        Self::with_token(CancellationToken::new())
    }

    /// A tree drained by `token` (a signal handler's, or a parent's child token).
    pub fn with_token(token: CancellationToken) -> Self {
        Self {
            token,
            tracker: TaskTracker::new(),
            inner: Arc::new(Inner::default()),
        }
    }

    /// The token cancelled when draining starts.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Whether draining has started (readiness turns false at once).
    pub fn is_draining(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Starts draining.
    pub fn drain(&self) {
        self.token.cancel();
    }

    /// Spawns a tracked task whose end is normal (a request, a bounded job).
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(fut)
    }

    /// Spawns a tracked task that must run until draining starts. If it ends before (returning
    /// `Ok` or `Err`, or panicking), the tree fails naming `name` and drains.
    pub fn spawn_critical<F, E>(&self, name: &str, fut: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let tree = self.clone();
        let name = name.to_owned();
        let task = self.tracker.spawn(fut);
        self.tracker.spawn(async move {
            let reason = match task.await {
                Ok(Ok(())) => "it returned".to_owned(),
                Ok(Err(e)) => e.to_string(),
                Err(e) if e.is_panic() => "it panicked".to_owned(),
                Err(_) => "it was cancelled".to_owned(),
            };
            if !tree.is_draining() {
                tree.fail(&name, reason);
            }
        });
    }

    /// Records that a critical part failed (the first failure wins) and starts draining.
    pub fn fail(&self, task: &str, reason: impl Into<String>) {
        let failure = TaskFailure {
            task: task.to_owned(),
            reason: reason.into(),
        };
        tracing::error!(task = %failure.task, reason = %failure.reason, "a critical task stopped; shutting down");
        if let Ok(mut slot) = self.inner.failure.lock()
            && slot.is_none()
        {
            *slot = Some(failure);
        }
        self.inner.failed.notify_waiters();
        self.token.cancel();
    }

    /// The failure that ended the tree, if any.
    pub fn failure(&self) -> Option<TaskFailure> {
        self.inner.failure.lock().ok().and_then(|f| f.clone())
    }

    /// Resolves when a critical task fails.
    pub async fn failed(&self) -> TaskFailure {
        loop {
            let notified = self.inner.failed.notified();
            if let Some(f) = self.failure() {
                return f;
            }
            notified.await;
        }
    }

    /// Drains and waits up to `grace` for the tracked tasks; returns whether all ended.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.drain();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait()).await.is_ok()
    }

    /// A listener whose fatal accept errors fail this tree, naming `name`.
    pub fn guard(&self, name: &str, listener: TcpListener) -> GuardedListener {
        GuardedListener {
            listener,
            name: name.to_owned(),
            tree: self.clone(),
        }
    }
}

/// Linux `errno` values of accept failures that come from resource pressure, not from a broken
/// socket: retry after a pause instead of giving up.
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;
const ENOBUFS: i32 = 105;
const ENOMEM: i32 = 12;

/// Whether an accept error is worth retrying.
pub fn accept_error_is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock | TimedOut | OutOfMemory
    ) || matches!(e.raw_os_error(), Some(EMFILE | ENFILE | ENOBUFS | ENOMEM))
}

/// A TCP listener for the process's servers: retries transient accept errors (with a short
/// pause under resource pressure), and fails its [`Tree`] on a fatal one, after which it never
/// yields a connection again (the tree's drain stops the server).
pub struct GuardedListener {
    listener: TcpListener,
    name: String,
    tree: Tree,
}

impl GuardedListener {
    /// Accepts the next connection.
    pub async fn next(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok(c) => return c,
                Err(e) if accept_error_is_transient(&e) => {
                    tracing::warn!(listener = %self.name, error = %e, "accepting a connection failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    self.tree.fail(&self.name, format!("accepting connections failed: {e}"));
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    /// The connections as a stream, for servers that take one (tonic).
    pub fn into_stream(self) -> impl futures_util::Stream<Item = std::io::Result<TcpStream>> + Send + 'static {
        futures_util::stream::unfold(self, |mut l| async move {
            let (io, _) = l.next().await;
            Some((Ok(io), l))
        })
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        self.next().await
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_critical_task_that_ends_fails_the_tree_and_names_itself() {
        let tree = Tree::new();
        tree.spawn_critical("admin server", async { Err::<(), _>("listener closed") });
        let failure = tokio::time::timeout(Duration::from_secs(10), tree.failed())
            .await
            .expect("the failure is reported");
        assert_eq!(failure.task, "admin server");
        assert!(failure.reason.contains("listener closed"));
        assert!(tree.is_draining());
    }

    #[tokio::test]
    async fn a_critical_task_ending_during_drain_is_not_a_failure() {
        let tree = Tree::new();
        let token = tree.token().clone();
        tree.spawn_critical("view", async move {
            token.cancelled().await;
            Ok::<(), String>(())
        });
        assert!(tree.shutdown(Duration::from_secs(10)).await);
        assert_eq!(tree.failure(), None);
    }

    #[test]
    fn accept_errors() {
        assert!(accept_error_is_transient(&std::io::Error::from_raw_os_error(EMFILE)));
        assert!(accept_error_is_transient(&std::io::Error::from(
            std::io::ErrorKind::ConnectionAborted
        )));
        // EINVAL: the listening socket was shut down.
        assert!(!accept_error_is_transient(&std::io::Error::from_raw_os_error(22)));
    }
}
