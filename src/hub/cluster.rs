//! Active/active replicas: any number of `hub serve` processes on one PostgreSQL database behind
//! one address. A gateway's session lives on whichever replica it reached; the others know
//! where, and act on it:
//!
//! - **ownership**: a session is claimed in the database ([`super::postgres::PgStore::claim_session`])
//!   before it is welcomed; a replica's claims count only while its lease is renewed
//!   ([`heartbeat`]), and a takeover (the gateway reconnected elsewhere) closes the old session
//!   wherever it is (`REPLACED`), while fencing refuses the old session's writes;
//! - **forwarding**: a request for a gateway on another replica goes there ([`Cluster::forward`]);
//! - **one view**: replicas hear each other through `LISTEN`/`NOTIFY` ([`listen`]): session
//!   changes, deletions (the session closes within a second wherever it is), relayed state
//!   (followed by revision, [`replicate`]) and change-feed events (broadcast here in id order,
//!   [`tail_feed`]), with periodic sweeps in case a notification was missed;
//! - **faults**: a replica that loses the database turns not ready, keeps relayed state
//!   unacknowledged until it can store it, and shows no other replica's gateway as connected once
//!   its view is older than a lease; replicas that died are swept after a grace period.
//!
//! Only a hub on PostgreSQL has a [`Cluster`]; an embedded SQLite hub is one process and needs
//! none of this.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::peer::Peers;
use super::postgres::{Claim, NewSession, PgStore, SessionRecord, channel};
use super::requests::RequestFailure;
use super::sessions::close_with;
use super::state::HubState;
use crate::wire::proto::{hub_message, rejected, request};

/// How long a replica's claims count without a renewal (the database's clock).
pub const LEASE: Duration = Duration::from_secs(6);
/// How often the lease is renewed and the view of sessions refreshed.
const RENEW: Duration = Duration::from_millis(1500);
/// A replica whose lease ended this long ago is forgotten with its sessions.
const REAP_GRACE: Duration = Duration::from_secs(60);
/// How often the slower sweeps run (dead replicas, missed state, old tombstones).
const SWEEP: Duration = Duration::from_secs(30);
/// Deletion tombstones are kept this long for replicas to follow.
const TOMBSTONE_AGE: Duration = Duration::from_secs(15 * 60);
/// A session younger than this may not be in the view yet (claimed, not yet refreshed).
const SETTLE: i64 = 10;

/// This replica's part in the cluster, shared by its services.
pub struct Cluster {
    /// This replica's id (unique per process start).
    pub replica_id: String,
    /// Where other replicas reach this one.
    pub peer_url: String,
    pg: PgStore,
    started_at: i64,
    /// Live sessions of every replica, as last read.
    view: RwLock<HashMap<String, SessionRecord>>,
    /// When the view and the lease were last confirmed with the database.
    synced: Mutex<Option<Instant>>,
    ready: AtomicBool,
    peers: Peers,
    /// Gateways whose relayed state changed at another replica.
    stale: Mutex<HashSet<String>>,
    replicate_now: Notify,
    feed_now: Notify,
    refresh_now: Notify,
}

impl Cluster {
    /// This replica, reachable by peers at `peer_url`, forwarding through `peers`.
    pub fn new(pg: PgStore, replica_id: String, peer_url: String, peers: Peers) -> Self {
        Self {
            replica_id,
            peer_url,
            pg,
            started_at: jiff::Timestamp::now().as_second(),
            view: RwLock::new(HashMap::new()),
            synced: Mutex::new(None),
            ready: AtomicBool::new(false),
            peers,
            stale: Mutex::new(HashSet::new()),
            replicate_now: Notify::new(),
            feed_now: Notify::new(),
            refresh_now: Notify::new(),
        }
    }

    /// The database.
    pub fn store(&self) -> &PgStore {
        &self.pg
    }

    /// Whether the replica can serve: its lease and view were confirmed within a lease.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.fresh()
    }

    fn fresh(&self) -> bool {
        self.synced
            .lock()
            .ok()
            .and_then(|s| *s)
            .is_some_and(|t| t.elapsed() < LEASE)
    }

    /// The live session of a gateway on any replica, as last read; none once the view is older
    /// than a lease (this replica cannot tell any more, and never shows a stale one).
    pub fn session(&self, gateway_id: &str) -> Option<SessionRecord> {
        if !self.fresh() {
            return None;
        }
        self.view.read().ok()?.get(gateway_id).filter(|s| s.live).cloned()
    }

    /// The live session of a gateway on another replica.
    pub fn remote(&self, gateway_id: &str) -> Option<SessionRecord> {
        self.session(gateway_id).filter(|s| s.replica_id != self.replica_id)
    }

    /// How many gateways are connected across the replicas.
    pub fn connected_count(&self) -> usize {
        if !self.fresh() {
            return 0;
        }
        self.view
            .read()
            .map(|v| v.values().filter(|s| s.live).count())
            .unwrap_or(0)
    }

    /// Forwards a request to the replica holding the gateway's session.
    pub async fn forward(
        &self,
        remote: &SessionRecord,
        kind: request::Kind,
        deadline: Duration,
    ) -> Result<Vec<u8>, RequestFailure> {
        self.peers
            .forward(&remote.peer_url, &remote.gateway_id, kind, deadline)
            .await
    }

    /// Claims a gateway's new session for this replica.
    pub async fn claim(&self, s: NewSession) -> Result<Claim, super::store::StoreError> {
        let claim = self.pg.claim_session(&s).await?;
        if let Claim::Owned(_) = &claim
            && let Ok(mut v) = self.view.write()
        {
            v.insert(
                s.gateway_id.clone(),
                SessionRecord {
                    gateway_id: s.gateway_id,
                    session_id: s.session_id,
                    replica_id: self.replica_id.clone(),
                    peer_url: self.peer_url.clone(),
                    instance: s.instance,
                    version: s.version,
                    protocol_version: s.protocol_version,
                    connected_at: s.now,
                    live: true,
                },
            );
        }
        Ok(claim)
    }

    /// Ends this replica's record of a session; true when it still owned the gateway.
    pub async fn release(&self, gateway_id: &str, session_id: &str) -> bool {
        if let Ok(mut v) = self.view.write()
            && v.get(gateway_id).is_some_and(|s| s.session_id == session_id)
        {
            v.remove(gateway_id);
        }
        match self.pg.release_session(gateway_id, session_id).await {
            Ok(owned) => owned,
            Err(e) => {
                // The heartbeat releases it once the database is back.
                tracing::warn!(gateway_id, error = %e, "cannot record the end of a gateway session");
                false
            }
        }
    }

    /// Loads a gateway's state from the database before its session is welcomed here, so the
    /// digest it gets is of exactly what is stored (whichever replica stored it).
    pub async fn load_gateway(&self, state: &HubState, gateway_id: &str) -> Result<(), super::store::StoreError> {
        let (rows, rev) = self.pg.gateway_entities(gateway_id).await?;
        state.entities.reload(gateway_id, rows, rev);
        Ok(())
    }

    /// Leaves the cluster on a clean shutdown: the sessions this replica held are released at
    /// once (their gateways were told to come back and reach another replica).
    pub async fn leave(&self) {
        match self.pg.drop_replica(&self.replica_id).await {
            Ok(gateways) => {
                tracing::info!(replica = %self.replica_id, sessions = gateways.len(), "left the hub replicas")
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot remove this replica's record; others sweep it after its lease")
            }
        }
    }

    fn mark_stale(&self, gateway_id: String) {
        if let Ok(mut s) = self.stale.lock() {
            s.insert(gateway_id);
        }
        self.replicate_now.notify_one();
    }
}

/// Closes a local session that another session replaced (or whose record is gone).
async fn close_replaced(state: &HubState, gateway_id: &str, session_id: &str, why: &str) {
    let Some(local) = state.sessions.get(gateway_id) else {
        return;
    };
    if local.session_id != session_id {
        return;
    }
    if state.sessions.remove_if_current(gateway_id, session_id) {
        tracing::info!(
            gateway_id,
            session_id,
            why,
            "closing a gateway session another replica took over"
        );
        close_with(
            &local,
            hub_message::Body::Rejected(crate::wire::proto::Rejected {
                reason: rejected::Reason::Replaced as i32,
                message: why.to_owned(),
                retry_after_ms: 0,
            }),
            tonic::Status::aborted(why.to_owned()),
        )
        .await;
    }
}

/// Renews this replica's lease and refreshes its view of every session, every
/// [`RENEW`]; closes local sessions the database says another replica owns; releases records of
/// sessions this replica no longer holds; sweeps dead replicas, missed state and old tombstones.
pub async fn heartbeat(state: Arc<HubState>, cluster: Arc<Cluster>, stop: CancellationToken) {
    let mut failures = 0u32;
    let mut last_sweep = Instant::now() - SWEEP;
    loop {
        match beat(&state, &cluster).await {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(attempts = failures + 1, database = %cluster.pg.describe(), "the database is back; this replica is ready again");
                    // Whatever was missed meanwhile is read again.
                    last_sweep = Instant::now() - SWEEP;
                    cluster.feed_now.notify_one();
                }
                failures = 0;
                cluster.ready.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                failures += 1;
                cluster.ready.store(false, Ordering::Relaxed);
                if failures == 1 || failures.is_multiple_of(20) {
                    tracing::error!(error = %e, database = %cluster.pg.describe(), attempts = failures, "cannot renew this replica's lease; not ready until the database answers (flag --store)");
                }
            }
        }
        if failures == 0 && last_sweep.elapsed() >= SWEEP {
            last_sweep = Instant::now();
            sweep(&state, &cluster).await;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RENEW) => {}
            _ = cluster.refresh_now.notified() => {}
        }
    }
}

async fn beat(state: &HubState, cluster: &Cluster) -> Result<(), super::store::StoreError> {
    cluster
        .pg
        .renew_replica(&cluster.replica_id, &cluster.peer_url, cluster.started_at, LEASE)
        .await?;
    let records = cluster.pg.sessions().await?;
    let now = jiff::Timestamp::now().as_second();
    let view: HashMap<String, SessionRecord> = records.into_iter().map(|s| (s.gateway_id.clone(), s)).collect();
    // Sessions held here that the database gives to another session: close them.
    for (gateway_id, local) in state.sessions.all() {
        let owned = view
            .get(&gateway_id)
            .is_some_and(|s| s.session_id == local.session_id && s.replica_id == cluster.replica_id);
        let age = now - local.started_at;
        if !owned && age >= SETTLE {
            close_replaced(
                state,
                &gateway_id,
                &local.session_id,
                "this session is no longer the gateway's (another hub replica holds it, or its record was swept while the database was away); reconnect",
            )
            .await;
        }
    }
    // Records of this replica whose session ended while the database was away.
    for s in view.values() {
        if s.replica_id == cluster.replica_id
            && now - s.connected_at >= SETTLE
            && state
                .sessions
                .get(&s.gateway_id)
                .is_none_or(|l| l.session_id != s.session_id)
            && cluster.pg.release_session(&s.gateway_id, &s.session_id).await?
        {
            state
                .feed
                .gateway_disconnected(&s.gateway_id, "the session ended while the database was away")
                .await;
        }
    }
    if let Ok(mut v) = cluster.view.write() {
        *v = view;
    }
    if let Ok(mut s) = cluster.synced.lock() {
        *s = Some(Instant::now());
    }
    Ok(())
}

async fn sweep(state: &HubState, cluster: &Cluster) {
    match cluster.pg.reap_replicas(REAP_GRACE).await {
        Ok(gateways) => {
            for g in gateways {
                tracing::info!(gateway_id = %g, "a hub replica stopped without handing over; its gateway's session is gone");
                state.feed.gateway_disconnected(&g, "its hub replica stopped").await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot sweep stopped hub replicas"),
    }
    if let Err(e) = cluster.pg.prune_tombstones(TOMBSTONE_AGE).await {
        tracing::warn!(error = %e, "cannot prune deletion tombstones");
    }
    // State written elsewhere that a missed notification did not bring.
    match cluster.pg.entity_revisions().await {
        Ok(revs) => {
            let held = state.entities.revisions();
            for (g, rev) in revs {
                if held.get(&g).copied().unwrap_or(0) < rev && state.sessions.get(&g).is_none() {
                    cluster.mark_stale(g);
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot compare relayed state with the database"),
    }
}

/// Hears the other replicas (`LISTEN`): session changes, deletions, relayed state and feed
/// events; reconnects after a failure and then catches up on whatever it may have missed.
pub async fn listen(state: Arc<HubState>, cluster: Arc<Cluster>, stop: CancellationToken) {
    let mut failures = 0u32;
    loop {
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            r = listen_once(&state, &cluster, &mut failures) => r,
        };
        if let Err(e) = outcome {
            failures += 1;
            if failures == 1 || failures.is_multiple_of(20) {
                tracing::warn!(error = %e, attempts = failures, "lost the database notifications; reconnecting");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn listen_once(state: &HubState, cluster: &Cluster, failures: &mut u32) -> Result<(), String> {
    let (client, mut connection) = cluster.pg.connect_listener().await.map_err(|e| e.to_string())?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    if tx.send((n.channel().to_owned(), n.payload().to_owned())).is_err() {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Err("the notification connection closed".to_owned())
    };
    let listen = async {
        let sql: String = channel::ALL.iter().map(|c| format!("LISTEN {c};")).collect();
        client.batch_execute(&sql).await.map_err(|e| e.to_string())?;
        if *failures > 0 {
            tracing::info!("hearing the other replicas again");
        }
        *failures = 0;
        // Catch up on anything missed before listening.
        for g in state.entities.revisions().into_keys() {
            cluster.mark_stale(g);
        }
        cluster.refresh_now.notify_one();
        cluster.feed_now.notify_one();
        let mut sweep = tokio::time::interval(SWEEP);
        sweep.tick().await;
        loop {
            let Some((chan, payload)) = rx.recv().await else {
                return Err::<(), String>("the notification connection closed".to_owned());
            };
            notified(state, cluster, &chan, payload).await;
        }
    };
    tokio::select! {
        r = driver => r,
        r = listen => r,
    }
}

async fn notified(state: &HubState, cluster: &Cluster, chan: &str, gateway_id: String) {
    match chan {
        channel::SESSIONS => {
            let record = match cluster.pg.session(&gateway_id).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read a session record; the heartbeat refreshes it");
                    return;
                }
            };
            if let Some(local) = state.sessions.get(&gateway_id)
                && let Some(r) = &record
                && r.session_id != local.session_id
            {
                close_replaced(
                    state,
                    &gateway_id,
                    &local.session_id,
                    "a newer session of this gateway took over at another hub replica",
                )
                .await;
            }
            if let Ok(mut v) = cluster.view.write() {
                match record {
                    Some(r) => v.insert(gateway_id, r),
                    None => v.remove(&gateway_id),
                };
            }
        }
        channel::GATEWAYS => {
            if let Ok(mut v) = cluster.view.write() {
                v.remove(&gateway_id);
            }
            state.entities.forget(&gateway_id);
            if let Some(session) = state.sessions.take(&gateway_id) {
                let text = format!("gateway {gateway_id} was removed at the hub; register again with a new token");
                close_with(
                    &session,
                    hub_message::Body::Rejected(crate::wire::proto::Rejected {
                        retry_after_ms: 0,
                        reason: rejected::Reason::Revoked as i32,
                        message: text.clone(),
                    }),
                    crate::wire::ErrorCode::Revoked.status(tonic::Code::PermissionDenied, text),
                )
                .await;
                tracing::info!(gateway_id = %gateway_id, "gateway removed at another replica; its session here is closed");
            }
        }
        // Another replica stored state of a gateway this one does not hold: follow it.
        channel::ENTITIES if state.sessions.get(&gateway_id).is_none() => cluster.mark_stale(gateway_id),
        channel::FEED => cluster.feed_now.notify_one(),
        _ => {}
    }
}

/// Follows relayed state other replicas stored, for the gateways they hold.
pub async fn replicate(state: Arc<HubState>, cluster: Arc<Cluster>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = cluster.replicate_now.notified() => {}
        }
        let gateways: Vec<String> = cluster
            .stale
            .lock()
            .map(|mut s| s.drain().collect())
            .unwrap_or_default();
        if gateways.is_empty() {
            continue;
        }
        let held = state.entities.revisions();
        let cursors: Vec<(String, i64)> = gateways
            .iter()
            .map(|g| (g.clone(), held.get(g).copied().unwrap_or(0)))
            .collect();
        match cluster.pg.entities_after(&cursors).await {
            Ok(rows) => {
                let mut by_gateway: HashMap<String, Vec<super::entities::Replicated>> = HashMap::new();
                for (g, row) in rows {
                    by_gateway.entry(g).or_default().push(row);
                }
                for (g, rows) in by_gateway {
                    state.entities.replicate(&g, rows);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read relayed state stored by other replicas; retrying");
                for g in gateways {
                    cluster.mark_stale(g);
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// Broadcasts every replica's change-feed events to this replica's subscribers, in id order, as
/// they are committed; keeps the last health check of every gateway from them.
pub async fn tail_feed(state: Arc<HubState>, cluster: Arc<Cluster>, stop: CancellationToken) {
    let mut cursor = loop {
        match state.feed.bounds().await {
            Ok(b) => break b.last,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the change feed's bounds; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    match cluster.pg.last_health_events().await {
        Ok(rows) => {
            for (g, json) in rows {
                if let Some(h) = serde_json::from_str::<serde_json::Value>(&json)
                    .ok()
                    .and_then(|mut v| v.get_mut("health").map(serde_json::Value::take))
                {
                    state.health.record(&g, h);
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the last health checks"),
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = cluster.feed_now.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        loop {
            match state.feed.broadcast_recorded(cursor, 500).await {
                Ok(followed) => {
                    cursor = followed.last;
                    for (g, h) in followed.health {
                        state.health.record(&g, h);
                    }
                    if followed.events < 500 {
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read new change-feed events; retrying");
                    break;
                }
            }
        }
    }
}
