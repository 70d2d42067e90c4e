//! The state the hub's services share: the database, the issuing CA, the live sessions, the
//! relayed entities, the change feed, the last health checks, the assertion replay guard and the
//! session tasks.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::task::TaskTracker;
use tonic::Status;

use super::entities::EntityState;
use super::feed::Feed;
use super::fleet::Fleet;
use super::health::HealthResults;
use super::limits::Limits;
use super::metrics::HubMetrics;
use super::sessions::Sessions;
use super::store::Store;
use crate::certs::CertAuthority;

/// State shared by the hub's services.
pub struct HubState {
    /// Metrics.
    pub metrics: HubMetrics,
    /// Database.
    pub store: Store,
    /// Issuing CA.
    pub ca: Arc<CertAuthority>,
    /// Live sessions.
    pub sessions: Sessions,
    /// Relayed applications and clusters.
    pub entities: Arc<EntityState>,
    /// The change feed (events and timelines).
    pub feed: Feed,
    /// Fleet bookkeeping (relay lag, metrics).
    pub fleet: Fleet,
    /// Client certificate lifetime.
    pub client_cert_ttl: Duration,
    /// Last health check result per gateway.
    pub health: HealthResults,
    /// Whether gateways must present their client certificate (the hub terminates TLS and
    /// `--assertion-only` is not set).
    pub require_client_cert: bool,
    /// How long a certificate replaced by a renewal stays accepted.
    pub renewal_grace: Duration,
    /// Resource bounds.
    pub limits: Limits,
    /// Session opens in progress (bounded by `--max-concurrent-opens`).
    pub opens: tokio::sync::Semaphore,
    /// Session reader tasks.
    pub tasks: TaskTracker,
    /// Install progress and pending registrations.
    pub lifecycle: super::lifecycle::Lifecycle,
    /// The hub is shutting down: a session that opens now is told to come back later, so none
    /// slips in after the drain went through the live ones.
    pub draining: std::sync::atomic::AtomicBool,
}

impl HubState {
    /// New state.
    pub fn new(
        store: Store,
        ca: CertAuthority,
        client_cert_ttl: Duration,
        entities: Arc<EntityState>,
        feed: Feed,
    ) -> Self {
        Self {
            metrics: HubMetrics::default(),
            store,
            ca: Arc::new(ca),
            sessions: Sessions::default(),
            entities,
            feed,
            fleet: Fleet::default(),
            client_cert_ttl,
            health: HealthResults::default(),
            require_client_cert: false,
            renewal_grace: Duration::from_secs(600),
            limits: Limits::default(),
            opens: tokio::sync::Semaphore::new(Limits::default().max_concurrent_opens),
            tasks: TaskTracker::new(),
            lifecycle: Default::default(),
            draining: Default::default(),
        }
    }

    /// Logs an internal failure and answers the caller without detail.
    pub fn internal(e: impl std::fmt::Display) -> Status {
        tracing::error!(error = %e, "hub internal error");
        Status::internal("hub internal error")
    }
}
