//! Serving HTTP with bounds, for the hub's API and the gateway's admin server: a cap on
//! concurrent connections (more are closed at once and counted), a deadline for a request's
//! headers that also closes idle keep-alive connections (slowloris), graceful drain on the
//! shutdown tree, and the listener guarded so a fatal accept error ends the process. With a TLS
//! configuration each connection's handshake runs in its own task, inside the connection cap and
//! the header deadline, so a slow or silent client holds up nobody else.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::shutdown::Tree;

/// Bounds of an HTTP listener.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Connections at once.
    pub max_connections: usize,
    /// Time a client has to send a request's headers; also the longest idle keep-alive.
    pub header_timeout: Duration,
    /// How long a drain waits for requests in flight.
    pub drain_grace: Duration,
    /// Serve HTTPS with this configuration (plain HTTP without).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            drain_grace: Duration::from_secs(5),
            tls: None,
        }
    }
}

/// Serves `router` on `listener` as the critical task `name` of `tree` until it drains.
/// Connections refused for the cap increment `refused`.
pub fn spawn_http(
    tree: &Tree,
    name: &str,
    listener: TcpListener,
    router: axum::Router,
    limits: HttpLimits,
    refused: Counter,
) {
    let mut listener = tree.guard(&format!("{name} listener"), listener);
    let stop = tree.token().clone();
    let conns_tree = tree.clone();
    let server_name = name.to_owned();
    tree.spawn_critical(&format!("{name} server"), async move {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(20)))
            .keep_alive_timeout(Duration::from_secs(20));
        let builder = Arc::new(builder);
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let acceptor = limits.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        loop {
            let (tcp, peer) = tokio::select! {
                _ = stop.cancelled() => break,
                c = listener.next() => c,
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                refused.inc();
                tracing::warn!(server = %server_name, %peer, max = limits.max_connections, "too many HTTP connections; closing a new one");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let service = TowerToHyperService::new(router.clone());
            let Some(acceptor) = acceptor.clone() else {
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service).into_owned();
                let conn = graceful.watch(conn);
                conns_tree.spawn(async move {
                    // A client that is too slow, or goes away, ends only its own connection.
                    let _ = conn.await;
                    drop(slot);
                });
                continue;
            };
            let (builder, watcher, deadline) = (builder.clone(), graceful.watcher(), limits.header_timeout);
            conns_tree.spawn(async move {
                // The handshake has the same deadline as a request's headers.
                let tls = match tokio::time::timeout(deadline, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "HTTP TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "HTTP TLS handshake timed out");
                        return;
                    }
                };
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
                let _ = watcher.watch(conn.into_owned()).await;
                drop(slot);
            });
        }
        if tokio::time::timeout(limits.drain_grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::debug!(server = %server_name, "HTTP connections still open after the drain grace");
        }
        Ok::<(), std::convert::Infallible>(())
    });
}
