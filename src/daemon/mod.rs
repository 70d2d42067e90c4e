//! `argocd-gateway run`: assembles the daemon. The Argo CD view feeds the relay, the tunnel
//! carries the relay and answers hub requests through the Argo CD actions, and the admin server
//! reports liveness, readiness and metrics for all of them.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::admin::{Admin, Readiness};
use crate::argocd::actions::ArgoActions;
use crate::argocd::metrics::ArgoCdMetrics;
use crate::argocd::{ArgoCdArgs, ArgoCdConfig, Client, View, ViewHandle, ViewOptions};
use crate::relay::engine::{Dirty, Relay};
use crate::relay::source::ViewSource;
use crate::tunnel::{Attachments, RunArgs, TunnelMetrics, TunnelStatus};

/// Flags of `argocd-gateway run`.
#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// Hub, identity, registration and keepalive.
    #[command(flatten)]
    pub tunnel: RunArgs,
    /// Argo CD connection and view.
    #[command(flatten)]
    pub argocd: ArgoCdArgs,
    /// Admin HTTP listener for /healthz, /readyz and /metrics (Helm gateway.admin.port).
    #[arg(long, env = "ARGOCD_GATEWAY_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    pub admin_addr: SocketAddr,
}

/// Why the daemon could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A setting is invalid; nothing was started.
    #[error(transparent)]
    Config(#[from] anyhow::Error),
    /// The admin listener could not be bound.
    #[error("cannot listen on the admin address {addr}: {source} (flag --admin-addr, Helm gateway.admin.port)")]
    Admin {
        /// The address.
        addr: SocketAddr,
        /// The bind error.
        source: std::io::Error,
    },
    /// The tunnel gave up.
    #[error(transparent)]
    Tunnel(#[from] crate::tunnel::RunError),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabels {
    /// `unscoped` or the project a project token serves.
    scope: String,
}

/// Gauges read from the view and the tokens at scrape time.
#[derive(Default, Clone)]
struct ViewGauges {
    applications: Gauge,
    clusters: Gauge,
    token_expiry: Family<ScopeLabels, Gauge>,
}

impl ViewGauges {
    fn register(&self, r: &mut Registry) {
        r.register(
            "argocd_gateway_applications",
            "Argo CD applications the gateway knows",
            self.applications.clone(),
        );
        r.register(
            "argocd_gateway_clusters",
            "Argo CD clusters the gateway knows",
            self.clusters.clone(),
        );
        r.register(
            "argocd_gateway_argocd_token_expiry_timestamp_seconds",
            "Expiry of each Argo CD token (Unix seconds; absent for tokens that never expire)",
            self.token_expiry.clone(),
        );
    }

    fn refresh(&self, view: &ViewHandle, client: &Client) {
        self.applications.set(view.application_count() as i64);
        self.clusters.set(view.clusters().len() as i64);
        let Ok(scopes) = client.scopes(&client.config().projects) else {
            return;
        };
        for scope in scopes {
            if let Ok(claims) = client.token_claims(scope.as_deref())
                && let Some(exp) = claims.expires_at
            {
                self.token_expiry
                    .get_or_create(&ScopeLabels {
                        scope: scope.unwrap_or_else(|| "unscoped".into()),
                    })
                    .set(exp.as_second());
            }
        }
    }
}

/// Why the gateway is or is not ready: connected to the hub and Argo CD's state loaded and
/// current.
fn readiness(status: &TunnelStatus, view: &ViewHandle) -> Readiness {
    let mut reasons = vec![];
    if !status.connected {
        reasons.push(match &status.last_error {
            Some(e) => format!("not connected to the hub: {e}"),
            None => "not connected to the hub yet".to_owned(),
        });
    }
    let v = view.status();
    if !v.apps_synced {
        reasons.push(match &v.last_error {
            Some(e) => format!("Argo CD applications not listed yet: {e}"),
            None => "Argo CD applications not listed yet".to_owned(),
        });
    }
    for (loop_name, e) in &v.failing {
        reasons.push(format!("Argo CD {loop_name} failing: {e}"));
    }
    Readiness {
        ready: reasons.is_empty(),
        reasons,
    }
}

/// Runs the daemon until `shutdown` or until the tunnel gives up for good.
pub async fn run(args: DaemonArgs, shutdown: CancellationToken) -> Result<(), DaemonError> {
    let cfg = args.tunnel.validate().map_err(anyhow::Error::from)?;
    let argocd_config = ArgoCdConfig::from_args(&args.argocd, cfg.extra_roots.clone()).map_err(anyhow::Error::from)?;
    let client = Client::new(argocd_config).map_err(anyhow::Error::from)?;

    let mut registry = Registry::default();
    crate::admin::register_build_info(&mut registry);
    let argocd_metrics = ArgoCdMetrics::default();
    argocd_metrics.register(&mut registry);
    client.set_metrics(argocd_metrics);
    let tunnel_metrics = TunnelMetrics::default();
    tunnel_metrics.register(&mut registry);

    let background = shutdown.child_token();
    let view = View::spawn(
        client.clone(),
        ViewOptions::from_config(client.config()),
        background.clone(),
    );
    let dirty = Arc::new(Dirty::default());
    let source = ViewSource::spawn(view.clone(), dirty.clone(), background.clone());
    let relay = Relay::new(source, dirty);
    relay.counters.register(&mut registry);
    let gauges = ViewGauges::default();
    gauges.register(&mut registry);

    let (status_tx, status_rx) = watch::channel(TunnelStatus::default());
    let ready_view = view.clone();
    let readiness_fn = Arc::new(move || readiness(&status_rx.borrow(), &ready_view));
    let refresh_view = view.clone();
    let refresh_client = client.clone();
    let refresh_fn = Arc::new(move || gauges.refresh(&refresh_view, &refresh_client));
    let admin = Admin::new(registry, readiness_fn, Some(refresh_fn));
    let bound = admin
        .serve(args.admin_addr, background.clone())
        .await
        .map_err(|source| DaemonError::Admin {
            addr: args.admin_addr,
            source,
        })?;
    tracing::info!(addr = %bound, "admin server listening (/healthz, /readyz, /metrics)");

    let actions = Arc::new(ArgoActions::new(client, view));
    let attachments = Attachments {
        relay: Some(relay),
        actions: Some(actions),
        metrics: tunnel_metrics,
    };
    let result = crate::tunnel::run(cfg, shutdown, status_tx, attachments).await;
    background.cancel();
    result.map_err(DaemonError::from)
}
