//! The admin HTTP server (`--admin-addr`, default `0.0.0.0:9090`): `/healthz` for liveness,
//! `/readyz` for readiness, `/metrics` in the Prometheus text format (encoded by
//! [`crate::telemetry::encode`], as the hub's).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::shutdown::Tree;

/// Why the process is or is not ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// Ready to take traffic (or a healthy standby).
    pub ready: bool,
    /// One line per condition, shown in the response body.
    pub reasons: Vec<String>,
}

/// Computes readiness on each probe.
pub type ReadinessFn = Arc<dyn Fn() -> Readiness + Send + Sync>;

/// Called before each scrape to refresh gauges that are read rather than pushed.
pub type RefreshFn = Arc<dyn Fn() + Send + Sync>;

/// State of the admin server.
#[derive(Clone)]
pub struct Admin {
    registry: Arc<Registry>,
    readiness: ReadinessFn,
    refresh: Option<RefreshFn>,
}

impl Admin {
    /// An admin server exposing `registry` and `readiness`.
    pub fn new(registry: Registry, readiness: ReadinessFn, refresh: Option<RefreshFn>) -> Self {
        Self {
            registry: Arc::new(registry),
            readiness,
            refresh,
        }
    }

    /// The routes.
    pub fn router(self) -> Router {
        let metrics_state = self.clone();
        let ready_state = self.clone();
        Router::new()
            // Liveness: the runtime answers. Every long-lived task that ends ends the process,
            // so a live process with a responsive runtime is a working one.
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(move || ready(ready_state.clone())))
            .route("/metrics", get(move || metrics(metrics_state.clone())))
    }

    /// Binds and serves until `tree` drains, as a critical task of it: a server that stops on
    /// its own (its listener failed) ends the process.
    pub async fn serve(self, addr: SocketAddr, tree: &Tree) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        crate::serve::spawn_http(
            tree,
            "admin",
            listener,
            self.router(),
            crate::serve::HttpLimits {
                max_connections: 64,
                ..Default::default()
            },
            Default::default(),
        );
        Ok(bound)
    }
}

async fn ready(admin: Admin) -> Response {
    let r = (admin.readiness)();
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = if r.ready {
        "ready\n".to_owned()
    } else {
        "not ready\n".to_owned()
    };
    for reason in r.reasons {
        body.push_str("- ");
        body.push_str(&reason);
        body.push('\n');
    }
    (status, body).into_response()
}

async fn metrics(admin: Admin) -> Response {
    if let Some(refresh) = &admin.refresh {
        refresh();
    }
    crate::telemetry::encode(&admin.registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn probes_and_metrics() {
        crate::tls::install_crypto_provider();
        let mut registry = Registry::default();
        crate::telemetry::register_build_info(&mut registry);
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = flag.clone();
        let readiness: ReadinessFn = Arc::new(move || Readiness {
            ready: f.load(std::sync::atomic::Ordering::Relaxed),
            reasons: vec!["hub: connected".into()],
        });
        let tree = Tree::new();
        let addr = Admin::new(registry, readiness, None)
            .serve("127.0.0.1:0".parse().unwrap(), &tree)
            .await
            .unwrap();
        let get = |p: &str| reqwest::get(format!("http://{addr}{p}"));
        assert_eq!(get("/healthz").await.unwrap().status(), 200);
        let r = get("/readyz").await.unwrap();
        assert_eq!(r.status(), 503);
        assert!(r.text().await.unwrap().contains("hub: connected"));
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(get("/readyz").await.unwrap().status(), 200);
        let m = get("/metrics").await.unwrap().text().await.unwrap();
        assert!(
            m.contains("argocd_gateway_build_info{version=\"") && m.contains("# EOF"),
            "{m}"
        );
        assert!(tree.shutdown(std::time::Duration::from_secs(5)).await);
        assert_eq!(tree.failure(), None);
    }
}
