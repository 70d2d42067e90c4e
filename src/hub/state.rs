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
    /// The other replicas, when the hub runs on PostgreSQL (none with SQLite: one process).
    pub cluster: Option<Arc<super::cluster::Cluster>>,
    /// The protocol version this hub speaks (`hub serve --protocol-version`; the previous one
    /// behaves as a hub of that version did, for testing version skew).
    pub protocol_version: u32,
    /// The hub is shutting down: a session that opens now is told to come back later, so none
    /// slips in after the drain went through the live ones.
    pub draining: std::sync::atomic::AtomicBool,
}

/// A gateway's live session as any replica can describe it.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Gateway build version.
    pub version: String,
    /// Protocol version in use.
    pub protocol_version: u32,
    /// Last message from the gateway, Unix seconds (the session's start, for another replica's).
    pub last_seen: i64,
    /// Keepalive round trip, milliseconds; none when unknown here.
    pub rtt_ms: Option<i64>,
    /// The replica holding the session (with PostgreSQL).
    pub replica: Option<String>,
    /// How the session reaches the hub (`h2`, `websocket`); empty when unknown here.
    pub transport: String,
    /// The gateway's capabilities; empty when unknown here (another replica's session).
    pub capabilities: Vec<String>,
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
            cluster: None,
            protocol_version: crate::wire::PROTOCOL_VERSION,
            draining: Default::default(),
        }
    }

    /// The gateway's live session, on this replica or (with replicas) on another one.
    pub fn connection(&self, gateway_id: &str) -> Option<Connection> {
        use std::sync::atomic::Ordering;
        if let Some(s) = self.sessions.get(gateway_id) {
            let rtt = s.rtt_ms.load(Ordering::Relaxed);
            return Some(Connection {
                version: s.version.clone(),
                protocol_version: s.protocol_version,
                last_seen: s.last_seen.load(Ordering::Relaxed),
                rtt_ms: (rtt >= 0).then_some(rtt),
                replica: self.cluster.as_ref().map(|c| c.replica_id.clone()),
                transport: s.transport.clone(),
                capabilities: s.capabilities.clone(),
            });
        }
        let remote = self.cluster.as_ref()?.remote(gateway_id)?;
        Some(Connection {
            version: remote.version,
            protocol_version: remote.protocol_version,
            last_seen: remote.connected_at,
            rtt_ms: None,
            replica: Some(remote.replica_id),
            transport: String::new(),
            capabilities: vec![],
        })
    }

    /// Whether the gateway has a live session anywhere.
    pub fn is_connected(&self, gateway_id: &str) -> bool {
        self.sessions.get(gateway_id).is_some() || self.cluster.as_ref().is_some_and(|c| c.remote(gateway_id).is_some())
    }

    /// Whether this hub can serve: its database answers (and, with replicas, its lease is
    /// current).
    pub async fn ready(&self) -> Result<(), String> {
        if let Some(c) = &self.cluster {
            return if c.is_ready() {
                Ok(())
            } else {
                Err(format!(
                    "this replica has not reached its database ({}) within {:?}",
                    c.store().describe(),
                    super::cluster::LEASE
                ))
            };
        }
        match tokio::time::timeout(Duration::from_secs(5), self.store.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the database did not answer within 5 s".into()),
        }
    }

    /// Logs an internal failure and answers the caller without detail.
    pub fn internal(e: impl std::fmt::Display) -> Status {
        tracing::error!(error = %e, "hub internal error");
        Status::internal("hub internal error")
    }
}
