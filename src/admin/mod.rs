//! The admin HTTP server (`--admin-addr`, default `0.0.0.0:9090`): `/healthz` for liveness,
//! `/readyz` for readiness, `/metrics` in the Prometheus text format. The hub serves its own
//! `/metrics` through the same encoder.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

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

    /// Binds and serves until `shutdown`.
    pub async fn serve(self, addr: SocketAddr, shutdown: CancellationToken) -> std::io::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let app = self.router();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "admin server failed");
            }
        });
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

/// Renders a registry in the Prometheus text format.
pub fn encode(registry: &Registry) -> Response {
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            out,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode metrics: {e}")).into_response(),
    }
}

async fn metrics(admin: Admin) -> Response {
    if let Some(refresh) = &admin.refresh {
        refresh();
    }
    encode(&admin.registry)
}

/// Labels of the build-info metric.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct BuildLabels {
    /// Crate version.
    pub version: String,
    /// Wire protocol version.
    pub protocol: String,
}

/// Registers `argocd_gateway_build_info` (always 1).
pub fn register_build_info(r: &mut Registry) {
    let info: prometheus_client::metrics::family::Family<BuildLabels, prometheus_client::metrics::gauge::Gauge> =
        Default::default();
    info.get_or_create(&BuildLabels {
        version: crate::VERSION.to_owned(),
        protocol: crate::tunnel::wire::PROTOCOL_VERSION.to_string(),
    })
    .set(1);
    r.register("argocd_gateway_build_info", "Build information", info);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn probes_and_metrics() {
        crate::tls::install_crypto_provider();
        let mut registry = Registry::default();
        register_build_info(&mut registry);
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = flag.clone();
        let readiness: ReadinessFn = Arc::new(move || Readiness {
            ready: f.load(std::sync::atomic::Ordering::Relaxed),
            reasons: vec!["hub: connected".into()],
        });
        let stop = CancellationToken::new();
        let addr = Admin::new(registry, readiness, None)
            .serve("127.0.0.1:0".parse().unwrap(), stop.clone())
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
        stop.cancel();
    }
}
