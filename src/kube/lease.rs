//! Leader election with a `coordination.k8s.io/v1` Lease, so that of several replicas exactly
//! one relays to the hub while the others stand by warm.
//!
//! The rules are client-go's, kept small:
//! - Acquiring or renewing is a read followed by a write carrying the read's `resourceVersion`;
//!   a concurrent writer makes ours fail with 409 Conflict, so two replicas can never both
//!   believe they won the same round.
//! - A Lease held by another replica counts as expired only when its record has not changed for
//!   a whole lease duration *as measured on our own clock* from when we first saw that record.
//!   Comparing the holder's `renewTime` with our wall clock would let clock skew between nodes
//!   shorten the lease.
//! - The leader demotes itself when it has not renewed for the renew deadline (10 s) — for
//!   instance because it cannot reach the API server — which is shorter than the lease duration
//!   (15 s) the others wait before taking over, so two leaders never overlap.
//! - On shutdown the leader clears the holder, so a standby takes over at its next retry
//!   instead of after a lease duration.
//!
//! Leadership is published as a `watch::Receiver<bool>`; every transition is logged and counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Leader-election flags.
#[derive(Debug, Clone, clap::Args)]
pub struct LeaderArgs {
    /// Elect one active replica with a coordination.k8s.io Lease; the others stand by (Helm:
    /// on when replicaCount > 1).
    #[arg(long, env = "ARGOCD_GATEWAY_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Name of the Lease (Helm: the release's full name).
    #[arg(long, env = "ARGOCD_GATEWAY_LEASE_NAME", default_value = "argocd-gateway")]
    pub lease_name: String,
    /// Namespace of the Lease; the chart sets POD_NAMESPACE from the downward API.
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// This replica's name in the Lease; the chart sets POD_NAME from the downward API (default:
    /// the host name).
    #[arg(long, env = "POD_NAME")]
    pub lease_holder: Option<String>,
    /// How long a Lease stays valid after its last renewal; standbys take over after this.
    #[arg(long, env = "ARGOCD_GATEWAY_LEASE_DURATION", default_value = "15s", value_parser = crate::util::parse_duration)]
    pub lease_duration: Duration,
    /// The leader gives up leadership when it could not renew for this long.
    #[arg(long, env = "ARGOCD_GATEWAY_LEASE_RENEW_DEADLINE", default_value = "10s", value_parser = crate::util::parse_duration)]
    pub lease_renew_deadline: Duration,
    /// How often the leader renews and standbys retry.
    #[arg(long, env = "ARGOCD_GATEWAY_LEASE_RETRY_PERIOD", default_value = "2s", value_parser = crate::util::parse_duration)]
    pub lease_retry_period: Duration,
}

/// A leader-election setting that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum LeaseConfigError {
    /// No namespace for the Lease.
    #[error(
        "--leader-elect needs the pod's namespace: set POD_NAMESPACE (the chart sets it from the downward API) or --lease-namespace"
    )]
    NoNamespace,
    /// The Lease name or namespace is not a valid Kubernetes name.
    #[error("invalid Lease {what} {value:?}: use lowercase letters, digits and '-' (flag {flag})")]
    BadName {
        /// Which name.
        what: &'static str,
        /// The value.
        value: String,
        /// The flag that set it.
        flag: &'static str,
    },
    /// No holder identity.
    #[error("--leader-elect needs a name for this replica: set POD_NAME or --lease-holder")]
    NoHolder,
    /// The durations do not nest.
    #[error(
        "leader-election timing must satisfy lease duration ({lease:?}) > renew deadline ({renew:?}) > retry period ({retry:?}) > 0, with a lease duration of at least 1s (flags --lease-duration, --lease-renew-deadline, --lease-retry-period)"
    )]
    Timing {
        /// --lease-duration.
        lease: Duration,
        /// --lease-renew-deadline.
        renew: Duration,
        /// --lease-retry-period.
        retry: Duration,
    },
}

/// Validated leader-election settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity in `holderIdentity`.
    pub holder: String,
    /// Validity of a renewal (written as whole seconds).
    pub lease_duration: Duration,
    /// Demote when not renewed for this long.
    pub renew_deadline: Duration,
    /// Interval between attempts.
    pub retry_period: Duration,
}

impl LeaderArgs {
    /// Validates the flags before any I/O; `None` when leader election is off.
    pub fn validate(&self) -> Result<Option<LeaseConfig>, LeaseConfigError> {
        if !self.leader_elect {
            return Ok(None);
        }
        let nonempty = |v: &Option<String>| v.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned);
        let namespace = nonempty(&self.lease_namespace).ok_or(LeaseConfigError::NoNamespace)?;
        if !valid_name(&namespace) {
            return Err(LeaseConfigError::BadName {
                what: "namespace",
                value: namespace,
                flag: "--lease-namespace / POD_NAMESPACE",
            });
        }
        let name = self.lease_name.trim().to_owned();
        if !valid_name(&name) {
            return Err(LeaseConfigError::BadName {
                what: "name",
                value: name,
                flag: "--lease-name",
            });
        }
        let holder = nonempty(&self.lease_holder)
            .or_else(|| {
                let h = gethostname::gethostname().to_string_lossy().trim().to_owned();
                (!h.is_empty()).then_some(h)
            })
            .ok_or(LeaseConfigError::NoHolder)?;
        let (lease, renew, retry) = (self.lease_duration, self.lease_renew_deadline, self.lease_retry_period);
        if !(lease > renew && renew > retry && !retry.is_zero() && lease >= Duration::from_secs(1)) {
            return Err(LeaseConfigError::Timing { lease, renew, retry });
        }
        Ok(Some(LeaseConfig {
            namespace,
            name,
            holder,
            lease_duration: lease,
            renew_deadline: renew,
            retry_period: retry,
        }))
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Leadership counters, for the admin server's metrics.
#[derive(Debug, Default)]
pub struct LeaderStats {
    transitions: AtomicU64,
    leader: AtomicBool,
}

impl LeaderStats {
    /// How many times this replica became or stopped being the leader.
    pub fn transitions(&self) -> u64 {
        self.transitions.load(Ordering::Relaxed)
    }

    /// Whether this replica leads now.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }
}

/// A spawned elector.
#[derive(Debug)]
pub struct LeaderHandle {
    /// True while this replica is the leader.
    pub leader: watch::Receiver<bool>,
    /// Transition counter and current state.
    pub stats: Arc<LeaderStats>,
    /// The elector task; it ends after releasing the Lease once its shutdown token is cancelled.
    pub task: tokio::task::JoinHandle<()>,
}

/// The outcome of one acquire-or-renew round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    /// We hold the Lease now.
    Held,
    /// Another replica holds a Lease that has not expired.
    HeldByOther,
    /// Our write lost a race; the next round will tell who won.
    Conflict,
}

/// The record we last saw and when it changed on our clock.
#[derive(Debug, Clone)]
struct Observed {
    resource_version: String,
    at: Instant,
}

/// Acquires and renews one Lease for this replica.
pub struct LeaderElector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    tx: watch::Sender<bool>,
    stats: Arc<LeaderStats>,
    observed: Option<Observed>,
    last_error: Option<String>,
}

impl LeaderElector {
    /// An elector for `cfg`, not yet running; leadership starts as false.
    pub fn new(client: kube::Client, cfg: LeaseConfig) -> Self {
        let api = Api::namespaced(client, &cfg.namespace);
        Self {
            api,
            cfg,
            tx: watch::Sender::new(false),
            stats: Arc::new(LeaderStats::default()),
            observed: None,
            last_error: None,
        }
    }

    /// Follows leadership: true while this replica leads.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    /// The counters.
    pub fn stats(&self) -> Arc<LeaderStats> {
        self.stats.clone()
    }

    /// Runs the elector on its own task. Cancel `shutdown` once whatever the leader runs has
    /// stopped (the tunnel has said goodbye): the elector then publishes `false`, releases the
    /// Lease and the task ends.
    pub fn spawn(self, shutdown: CancellationToken) -> LeaderHandle {
        let leader = self.subscribe();
        let stats = self.stats();
        let task = tokio::spawn(self.run(shutdown));
        LeaderHandle { leader, stats, task }
    }

    /// Acquires, renews and, on shutdown, releases the Lease. API errors are retried every
    /// retry period; they never end the loop.
    pub async fn run(mut self, shutdown: CancellationToken) {
        tracing::info!(
            lease = %format!("{}/{}", self.cfg.namespace, self.cfg.name),
            holder = %self.cfg.holder,
            "leader election started"
        );
        // When the current leadership began being backed by a successful write: the start of
        // the last successful renewal, so the deadline is conservative.
        let mut renewed_at: Option<Instant> = None;
        loop {
            let started = Instant::now();
            if let Some(at) = renewed_at {
                let budget = (at + self.cfg.renew_deadline).saturating_duration_since(started);
                if budget.is_zero() {
                    self.set_leader(false, "the renew deadline passed without a successful renewal");
                    renewed_at = None;
                    continue;
                }
                let round = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    r = tokio::time::timeout(budget, self.round()) => r,
                };
                match round {
                    Ok(Ok(Round::Held)) => renewed_at = Some(started),
                    Ok(Ok(Round::HeldByOther)) => {
                        self.set_leader(false, "another replica holds the Lease");
                        renewed_at = None;
                    }
                    Ok(Ok(Round::Conflict)) => tracing::debug!("Lease renewal lost a write race; retrying"),
                    Ok(Err(e)) => self.note_error(&e),
                    Err(_) => {
                        self.set_leader(false, "the API server did not answer before the renew deadline");
                        renewed_at = None;
                    }
                }
            } else {
                let round = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    r = tokio::time::timeout(self.cfg.renew_deadline, self.round()) => r,
                };
                match round {
                    Ok(Ok(Round::Held)) => {
                        renewed_at = Some(started);
                        self.set_leader(true, "acquired the Lease");
                    }
                    Ok(Ok(Round::HeldByOther | Round::Conflict)) => {}
                    Ok(Err(e)) => self.note_error(&e),
                    Err(_) => self.note_error_text("the API server did not answer".into()),
                }
            }
            let mut pause = crate::util::jitter(self.cfg.retry_period, self.cfg.retry_period.mul_f32(1.2));
            if let Some(at) = renewed_at {
                // Wake up exactly at the deadline rather than up to a retry period after it.
                pause = pause.min((at + self.cfg.renew_deadline).saturating_duration_since(Instant::now()));
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        if renewed_at.is_some() || *self.tx.borrow() {
            self.set_leader(false, "shutting down");
            match tokio::time::timeout(self.cfg.renew_deadline, self.release()).await {
                Ok(Ok(true)) => tracing::info!("released the Lease; a standby can take over at once"),
                Ok(Ok(false)) => tracing::info!("the Lease was no longer ours; nothing to release"),
                Ok(Err(e)) => {
                    tracing::warn!(error = %crate::kube::describe(&e), "could not release the Lease; a standby takes over when it expires")
                }
                Err(_) => tracing::warn!(
                    "the API server did not answer the Lease release; a standby takes over when it expires"
                ),
            }
        }
        tracing::info!("leader election stopped");
    }

    fn set_leader(&mut self, leader: bool, why: &str) {
        if *self.tx.borrow() == leader {
            return;
        }
        self.tx.send_replace(leader);
        self.stats.leader.store(leader, Ordering::Relaxed);
        let n = self.stats.transitions.fetch_add(1, Ordering::Relaxed) + 1;
        if leader {
            tracing::info!(holder = %self.cfg.holder, transitions = n, reason = why, "became the leader");
        } else {
            tracing::warn!(holder = %self.cfg.holder, transitions = n, reason = why, "no longer the leader");
        }
    }

    fn note_error(&mut self, e: &kube::Error) {
        self.note_error_text(crate::kube::describe(e));
    }

    /// Logs a failed round at warn when the reason changes, so an outage is reported once
    /// rather than every retry period.
    fn note_error_text(&mut self, text: String) {
        if self.last_error.as_ref() != Some(&text) {
            tracing::warn!(lease = %self.cfg.name, error = %text, "leader election could not reach the Lease");
            self.last_error = Some(text);
        } else {
            tracing::debug!(lease = %self.cfg.name, error = %text, "leader election round failed");
        }
    }

    fn observe(&mut self, lease: &Lease, now: Instant) {
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        if self.observed.as_ref().map(|o| &o.resource_version) != Some(&rv) {
            self.observed = Some(Observed {
                resource_version: rv,
                at: now,
            });
        }
    }

    fn duration_secs(&self) -> i32 {
        i32::try_from(self.cfg.lease_duration.as_secs_f64().ceil() as u64).unwrap_or(i32::MAX)
    }

    /// One acquire-or-renew round: read, decide, write with the read's resourceVersion.
    async fn round(&mut self) -> Result<Round, kube::Error> {
        let now = Instant::now();
        let wall = MicroTime(jiff::Timestamp::now());
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.cfg.holder.clone()),
                    lease_duration_seconds: Some(self.duration_secs()),
                    acquire_time: Some(wall.clone()),
                    renew_time: Some(wall),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created, now);
                    Ok(Round::Held)
                }
                Err(e) if crate::kube::is_status(&e, 409) => Ok(Round::Conflict),
                Err(e) => Err(e),
            };
        };
        self.observe(&lease, now);
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        let ours = holder == Some(self.cfg.holder.as_str());
        if !ours && holder.is_some() {
            let their_duration = spec
                .lease_duration_seconds
                .filter(|s| *s > 0)
                .map(|s| Duration::from_secs(s as u64))
                .unwrap_or(self.cfg.lease_duration);
            let seen = self.observed.as_ref().map(|o| o.at).unwrap_or(now);
            if seen + their_duration > now {
                return Ok(Round::HeldByOther);
            }
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.cfg.holder.clone()),
            lease_duration_seconds: Some(self.duration_secs()),
            acquire_time: if ours {
                spec.acquire_time.clone()
            } else {
                Some(wall.clone())
            },
            renew_time: Some(wall),
            lease_transitions: Some(if ours {
                transitions
            } else {
                transitions.saturating_add(1)
            }),
            ..spec
        });
        match self.api.replace(&self.cfg.name, &PostParams::default(), &lease).await {
            Ok(written) => {
                self.observe(&written, now);
                self.last_error = None;
                Ok(Round::Held)
            }
            Err(e) if crate::kube::is_status(&e, 409) => Ok(Round::Conflict),
            Err(e) => Err(e),
        }
    }

    /// Clears the holder if it is still us; `Ok(false)` when someone else holds it by now.
    async fn release(&mut self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            return Ok(false);
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.cfg.holder.as_str()) {
            return Ok(false);
        }
        spec.holder_identity = None;
        // One second, as client-go does: anyone who still reads the old duration waits briefly.
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        lease.spec = Some(spec);
        match self.api.replace(&self.cfg.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(e) if crate::kube::is_status(&e, 409) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> LeaderArgs {
        LeaderArgs {
            leader_elect: true,
            lease_name: "argocd-gateway".into(),
            lease_namespace: Some("argocd".into()),
            lease_holder: Some("pod-a".into()),
            lease_duration: Duration::from_secs(15),
            lease_renew_deadline: Duration::from_secs(10),
            lease_retry_period: Duration::from_secs(2),
        }
    }

    #[test]
    fn validation() {
        let cfg = args().validate().unwrap().unwrap();
        assert_eq!((cfg.namespace.as_str(), cfg.holder.as_str()), ("argocd", "pod-a"));
        assert!(
            LeaderArgs {
                leader_elect: false,
                ..args()
            }
            .validate()
            .unwrap()
            .is_none()
        );
        let no_ns = LeaderArgs {
            lease_namespace: None,
            ..args()
        };
        assert!(no_ns.validate().unwrap_err().to_string().contains("POD_NAMESPACE"));
        let bad_timing = LeaderArgs {
            lease_renew_deadline: Duration::from_secs(15),
            ..args()
        };
        assert!(
            bad_timing
                .validate()
                .unwrap_err()
                .to_string()
                .contains("--lease-renew-deadline")
        );
        let bad_name = LeaderArgs {
            lease_name: "Gateway".into(),
            ..args()
        };
        assert!(matches!(bad_name.validate(), Err(LeaseConfigError::BadName { .. })));
        let host = LeaderArgs {
            lease_holder: None,
            ..args()
        };
        assert!(!host.validate().unwrap().unwrap().holder.is_empty());
    }
}
