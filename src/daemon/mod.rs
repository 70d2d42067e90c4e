//! `argocd-gateway run`: the gateway's composition root. The Argo CD view feeds the relay, the
//! tunnel carries the relay and answers hub requests through the relay's actions, and the admin
//! server reports liveness, readiness and metrics for all of them. Everything runs on one
//! shutdown tree: the view, the relay source, the admin server and the leader elector are
//! critical tasks, and any of them stopping ends the process with an error naming it.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::admin::{Admin, Readiness};
use crate::argocd::metrics::ArgoCdMetrics;
use crate::argocd::{ArgoCdArgs, ArgoCdConfig, Client, View, ViewHandle, ViewOptions};
use crate::kube::lease::{LeaderArgs, LeaderElector, LeaderHandle};
use crate::relay::actions::ArgoActions;
use crate::relay::engine::{Dirty, Relay};
use crate::relay::source::ViewSource;
use crate::shutdown::{TaskFailure, Tree};
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
    /// Admin HTTP listener for /healthz, /readyz and /metrics (Helm metrics.port).
    #[arg(long, env = "ARGOCD_GATEWAY_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    pub admin_addr: SocketAddr,
    /// Leader election among replicas.
    #[command(flatten)]
    pub leader: LeaderArgs,
}

/// A setting that keeps the daemon from starting; nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Hub, trust or identity settings.
    #[error(transparent)]
    Uplink(#[from] crate::uplink::ConfigError),
    /// Leader election settings.
    #[error(transparent)]
    Lease(#[from] crate::kube::lease::LeaseConfigError),
    /// Argo CD settings.
    #[error(transparent)]
    ArgoCd(#[from] crate::argocd::ConfigError),
    /// The Argo CD client could not be built from them.
    #[error(transparent)]
    ArgoCdClient(#[from] crate::argocd::ArgoCdError),
    /// No Kubernetes client for leader election.
    #[error(transparent)]
    Kube(#[from] crate::kube::ClientError),
}

/// Why the daemon could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A setting is invalid; nothing was started.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The admin listener could not be bound.
    #[error("cannot listen on the admin address {addr}: {source} (flag --admin-addr, Helm metrics.port)")]
    Admin {
        /// The address.
        addr: SocketAddr,
        /// The bind error.
        source: std::io::Error,
    },
    /// The tunnel gave up.
    #[error(transparent)]
    Tunnel(#[from] crate::tunnel::RunError),
    /// A critical task stopped while the gateway was running.
    #[error(transparent)]
    TaskEnded(#[from] TaskFailure),
}

/// This replica's view of the election.
#[derive(Clone)]
struct Leadership {
    leader: watch::Receiver<bool>,
    stats: Arc<crate::kube::lease::LeaderStats>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabels {
    /// `unscoped` or the project a project token serves.
    scope: String,
}

/// Gauges read from the view, the tokens and the elector at scrape time.
#[derive(Default, Clone)]
struct ViewGauges {
    applications: Gauge,
    clusters: Gauge,
    undecodable: Gauge,
    token_expiry: Family<ScopeLabels, Gauge>,
    leader: Gauge,
    leader_transitions: Gauge,
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
            "argocd_gateway_undecodable_objects",
            "Applications and clusters whose latest version could not be read (their last known state is relayed, marked)",
            self.undecodable.clone(),
        );
        r.register(
            "argocd_gateway_argocd_token_expiry_timestamp_seconds",
            "Expiry of each Argo CD token (Unix seconds; absent for tokens that never expire)",
            self.token_expiry.clone(),
        );
        r.register(
            "argocd_gateway_leader",
            "1 while this replica relays to the hub (always 1 without --leader-elect)",
            self.leader.clone(),
        );
        r.register(
            "argocd_gateway_leader_transitions",
            "Times this replica became or stopped being the leader",
            self.leader_transitions.clone(),
        );
    }

    fn refresh(&self, view: &ViewHandle, client: &Client, leader: Option<&Leadership>) {
        match leader {
            Some(h) => {
                self.leader.set(i64::from(h.stats.is_leader()));
                self.leader_transitions.set(h.stats.transitions() as i64);
            }
            None => {
                self.leader.set(1);
            }
        }
        self.applications.set(view.application_count() as i64);
        let clusters = view.clusters();
        self.clusters.set(clusters.len() as i64);
        self.undecodable.set(
            (view.undecodable_applications() + clusters.values().filter(|c| c.undecodable.is_some()).count()) as i64,
        );
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

/// Why the gateway is or is not ready: connected to the hub (unless it is a standby) and Argo
/// CD's state loaded and current.
fn readiness(status: &TunnelStatus, view: &ViewHandle, standby: bool, draining: bool) -> Readiness {
    let mut reasons = vec![];
    if draining {
        reasons.push("shutting down".to_owned());
    }
    if !standby && !status.connected {
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
    // ApplicationSets and projects are optional: their failures show in the health check.
    for (loop_name, e) in v
        .failing
        .iter()
        .filter(|(l, _)| !matches!(l.as_str(), "applicationsets" | "projects"))
    {
        reasons.push(format!("Argo CD {loop_name} failing: {e}"));
    }
    Readiness {
        ready: reasons.is_empty(),
        reasons,
    }
}

/// Runs the daemon until `shutdown`, until the tunnel gives up for good, or until a critical
/// task stops (the error names it).
pub async fn run(args: DaemonArgs, shutdown: CancellationToken) -> Result<(), DaemonError> {
    let uplink = args.tunnel.uplink.validate().map_err(ConfigError::from)?;
    let lease = args.leader.validate().map_err(ConfigError::from)?;
    let argocd_config = ArgoCdConfig::from_args(&args.argocd, uplink.extra_roots.clone()).map_err(ConfigError::from)?;
    let client = Client::new(argocd_config).map_err(ConfigError::from)?;
    let store = crate::cli::open_identity_store(&uplink.identity);
    let cfg = args.tunnel.config(uplink, store);
    warn_if_caps_exceed_memory(&args, client.config());
    let tree = Tree::with_token(shutdown.clone());
    // The elector outlives the tunnel so that, on shutdown, the Lease is released only after
    // the goodbye: a standby that takes over at once finds the hub session already closed.
    let elector_stop = CancellationToken::new();
    let leader = match lease {
        None => None,
        Some(lease) => {
            let kube = crate::kube::client().await.map_err(ConfigError::from)?;
            let LeaderHandle { leader, stats, task } = LeaderElector::new(kube, lease).spawn(elector_stop.clone());
            tree.spawn_critical("leader elector", async move { task.await.map_err(|e| e.to_string()) });
            Some(Leadership { leader, stats })
        }
    };

    let mut registry = Registry::default();
    crate::telemetry::register_build_info(&mut registry);
    let argocd_metrics = ArgoCdMetrics::default();
    argocd_metrics.register(&mut registry);
    client.set_metrics(argocd_metrics);
    let tunnel_metrics = TunnelMetrics::default();
    tunnel_metrics.register(&mut registry);

    let view = View::spawn(client.clone(), ViewOptions::default(), tree.token().clone());
    // The view notes each list and change; what decoding freed goes back once it is quiet.
    tree.spawn(crate::util::heap::trim_after_bursts(tree.token().clone()));
    {
        let view = view.clone();
        let stop = tree.token().clone();
        tree.spawn_critical("Argo CD view", async move {
            tokio::select! {
                _ = stop.cancelled() => Ok(()),
                _ = view.stopped() => Err("its loops ended"),
            }
        });
    }
    let dirty = Arc::new(Dirty::default());
    let source = ViewSource::spawn(view.clone(), dirty.clone(), &tree, args.tunnel.max_entity_bytes);
    let relay = Relay::new(source, dirty);
    relay.counters.register(&mut registry);
    let gauges = ViewGauges::default();
    gauges.register(&mut registry);

    let (status_tx, status_rx) = watch::channel(TunnelStatus::default());
    let ready_view = view.clone();
    let ready_leader = leader.clone();
    let ready_tree = tree.clone();
    let readiness_fn = Arc::new(move || {
        let standby = ready_leader.as_ref().is_some_and(|h| !h.stats.is_leader());
        readiness(&status_rx.borrow(), &ready_view, standby, ready_tree.is_draining())
    });
    let refresh_view = view.clone();
    let refresh_client = client.clone();
    let refresh_leader = leader.clone();
    let refresh_fn = Arc::new(move || gauges.refresh(&refresh_view, &refresh_client, refresh_leader.as_ref()));
    let admin = Admin::new(registry, readiness_fn, Some(refresh_fn));
    let bound = admin
        .serve(args.admin_addr, &tree)
        .await
        .map_err(|source| DaemonError::Admin {
            addr: args.admin_addr,
            source,
        })?;
    tracing::info!(addr = %bound, "admin server listening (/healthz, /readyz, /metrics)");

    let actions = Arc::new(ArgoActions::new(client, view));
    let mut attachments = Attachments {
        relay: Some(relay),
        actions: Some(actions),
        metrics: tunnel_metrics,
    };
    let result = match &leader {
        None => crate::tunnel::run_with(cfg, shutdown.clone(), status_tx, &mut attachments).await,
        Some(handle) => lead_when_elected(cfg, &shutdown, status_tx, &mut attachments, handle).await,
    };
    // Drain first, so the elector stopping below is not taken for a failure.
    tree.drain();
    elector_stop.cancel();
    if !tree.shutdown(crate::cli::SHUTDOWN_GRACE).await {
        tracing::warn!("some tasks did not stop within the shutdown grace");
    }
    if let Some(failure) = tree.failure() {
        return Err(DaemonError::TaskEnded(failure));
    }
    result.map_err(DaemonError::from)
}

/// Warns when what the gateway may hold in memory at once (a whole watch line or log line, a
/// whole answer to the hub) is more than half of its container's memory limit: the limit
/// would then be reached before the caps protect it. List bodies are decoded as they stream,
/// so their cap bounds bytes read, not memory.
fn warn_if_caps_exceed_memory(args: &DaemonArgs, argocd: &ArgoCdConfig) {
    let Some(limit) = crate::util::cgroup_memory_limit() else {
        return;
    };
    let held = (argocd.max_line_bytes as u64).saturating_add(args.tunnel.max_answer_bytes as u64);
    if held > limit / 2 {
        tracing::warn!(
            memory_limit = limit,
            max_line_bytes = argocd.max_line_bytes,
            max_answer_bytes = args.tunnel.max_answer_bytes,
            "the gateway may hold a whole stream line and a whole answer in memory, together over half of its memory limit; lower --argocd-max-line-bytes (Helm gateway.argocd.maxLineBytes) or --max-answer-bytes (Helm gateway.hub.maxAnswerBytes), or raise the memory limit (Helm resources.limits.memory)"
        );
    }
}

/// Runs the tunnel only while this replica is the leader; a standby keeps its view warm and
/// waits. Demotion ends the session (with a goodbye) and the replica stands by again.
async fn lead_when_elected(
    cfg: crate::tunnel::RunConfig,
    shutdown: &CancellationToken,
    status_tx: watch::Sender<TunnelStatus>,
    attachments: &mut Attachments,
    handle: &Leadership,
) -> Result<(), crate::tunnel::RunError> {
    let mut leader = handle.leader.clone();
    loop {
        if !*leader.borrow() {
            tracing::info!("standing by: another replica relays to the hub");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            elected = leader.wait_for(|l| *l) => if elected.is_err() { return Ok(()) },
        }
        let term = shutdown.child_token();
        let demoted = {
            let mut leader = leader.clone();
            let term = term.clone();
            tokio::spawn(async move {
                let _ = leader.wait_for(|l| !*l).await;
                term.cancel();
            })
        };
        let result = crate::tunnel::run_with(cfg.clone(), term, status_tx.clone(), attachments).await;
        demoted.abort();
        result?;
        if shutdown.is_cancelled() {
            return Ok(());
        }
        tracing::warn!("lost the leadership; closed the hub session");
    }
}
