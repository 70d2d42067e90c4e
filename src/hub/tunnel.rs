//! The tunnel gRPC service: each gateway's one long-lived stream. Hello and welcome (with the
//! state digest and the hub's capabilities), takeover of an older session of the same instance
//! and refusal of a copied identity, the hub's pings, and the reader that assembles snapshots,
//! applies relayed state, acknowledges it, and routes answers to waiting requests.
//!
//! A session ends whole: whichever side ends it, the reader stops, the outbound half closes with
//! a status that says why, and the gateway learns it at once; the reason is logged at warn.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::entities::{EntityLimits, StateError, Writer};
use super::metrics::{KindLabel, ReasonLabel, message_kind};
use super::sessions::{LiveSession, close_with};
use super::state::HubState;
use crate::wire::assertion::Purpose;
use crate::wire::proto::tunnel_server::Tunnel;
use crate::wire::proto::{
    self, Ack, GatewayMessage, HubMessage, Pong, Rejected, SnapshotChunk, Welcome, gateway_message, hub_message,
    rejected,
};
use crate::wire::{self};

/// The tunnel service.
#[derive(Clone)]
pub struct TunnelService {
    /// Shared state.
    pub state: Arc<HubState>,
}

type Outbound = mpsc::Sender<Result<HubMessage, Status>>;

fn msg(body: hub_message::Body) -> Result<HubMessage, Status> {
    Ok(HubMessage { body: Some(body) })
}

fn rejection(reason: rejected::Reason, message: String) -> hub_message::Body {
    hub_message::Body::Rejected(Rejected {
        reason: reason as i32,
        message,
        retry_after_ms: 0,
    })
}

/// How long a gateway has to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// How often, at most, the last-seen time is written to the database.
const SEEN_PERSIST_INTERVAL: i64 = 30;

/// How long a session open waits for a turn when `--max-concurrent-opens` are in progress,
/// before the gateway is told to come back later.
const OPEN_QUEUE_WAIT: Duration = Duration::from_secs(2);

/// The message a gateway gets when another instance holds its identity.
fn copied_message(gateway_id: &str) -> String {
    format!(
        "gateway {gateway_id} is already connected from another instance: this identity was copied (for example its Secret was copied to another cluster). Each Argo CD needs its own registration: delete the copied identity Secret there, create a token with `argocd-gateway hub token create` and install with it (Helm registration.token)"
    )
}

#[tonic::async_trait]
impl Tunnel for TunnelService {
    type OpenStream = ReceiverStream<Result<HubMessage, Status>>;

    async fn open(&self, request: Request<Streaming<GatewayMessage>>) -> Result<Response<Self::OpenStream>, Status> {
        // A reconnecting herd (after a hub restart) is admitted a bounded number at a time. Those
        // beyond it wait their turn for a moment: refusing at once sent them away for 0.5–3 s
        // each, so 1,000 gateways took 5.5 s to be back where queueing takes 2.6 s. Whoever is
        // still waiting after that is told when to come back, spread out so they do not return
        // together.
        let opening = match self.state.opens.try_acquire() {
            Ok(permit) => Some(permit),
            Err(_) => tokio::time::timeout(OPEN_QUEUE_WAIT, self.state.opens.acquire())
                .await
                .ok()
                .and_then(Result::ok),
        };
        let Some(_opening) = opening else {
            self.state.metrics.session_refused("overloaded");
            let wait = crate::util::jitter(Duration::from_millis(500), Duration::from_millis(3000));
            let mut status = wire::ErrorCode::Overloaded.status(
                tonic::Code::Unavailable,
                "the hub is accepting many sessions at once; come back shortly",
            );
            if let Ok(v) = wait.as_millis().to_string().parse() {
                status.metadata_mut().insert(wire::codes::RETRY_AFTER_KEY, v);
            }
            return Err(status);
        };
        let gateway_id = self.state.authenticate(&request, Purpose::Tunnel).await?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let reply = Response::new(ReceiverStream::new(rx));
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(GatewayMessage {
                body: Some(gateway_message::Body::Hello(h)),
            }))) => h,
            _ => {
                self.state.metrics.session_refused("bad_hello");
                let _ = tx.try_send(msg(rejection(
                    rejected::Reason::BadHello,
                    "the first message must be a hello".into(),
                )));
                return Ok(reply);
            }
        };
        if hello.gateway_id != gateway_id {
            let text = format!(
                "hello names gateway {} but the credentials belong to {gateway_id}",
                hello.gateway_id
            );
            self.state.metrics.session_refused("bad_hello");
            let _ = tx.try_send(msg(rejection(rejected::Reason::BadHello, text)));
            return Ok(reply);
        }
        let speaks = self.state.protocol_version;
        let oldest = speaks.saturating_sub(1).max(1);
        if !(oldest..=speaks).contains(&hello.protocol_version) {
            let which = if hello.protocol_version > speaks {
                "upgrade the hub"
            } else {
                "upgrade the gateway"
            };
            let text = format!(
                "gateway {} speaks protocol version {} but this hub (version {}) accepts {}..={}: {which}",
                gateway_id,
                hello.protocol_version,
                crate::VERSION,
                oldest,
                speaks
            );
            tracing::warn!(gateway_id = %gateway_id, protocol_version = hello.protocol_version, "refused a gateway with an unsupported protocol version");
            self.state.metrics.session_refused("unsupported_protocol");
            let _ = tx.try_send(msg(rejection(rejected::Reason::UnsupportedProtocol, text)));
            return Ok(reply);
        }
        // Replicas of one gateway share its identity and its instance (they take over from
        // each other); another instance with the same identity is a copy and is refused while
        // the first is connected, so the two never replace each other back and forth.
        if let Some(live) = self.state.sessions.get(&gateway_id)
            && !live.instance.is_empty()
            && !hello.instance.is_empty()
            && live.instance != hello.instance
            && !live.cancel.is_cancelled()
        {
            tracing::warn!(gateway_id = %gateway_id, "refused a second instance of a connected gateway: its identity was copied");
            self.state.metrics.session_refused("identity_copied");
            let _ = tx.try_send(msg(rejection(
                rejected::Reason::IdentityCopied,
                copied_message(&gateway_id),
            )));
            return Ok(reply);
        }
        // The set digest when the gateway knows it (this hub always does), else the ordered one.
        let digest_kind = crate::wire::DigestKind::negotiated(&hello.capabilities);
        let now = jiff::Timestamp::now().as_second();
        let session = LiveSession {
            session_id: crate::hub::pki::random_token(9),
            tx: tx.clone(),
            cancel: CancellationToken::new(),
            version: hello.gateway_version.clone(),
            protocol_version: hello.protocol_version,
            last_seen: Arc::new(AtomicI64::new(now)),
            broker: Arc::new(super::requests::Broker::new(self.state.limits.max_answer_bytes)),
            rtt_ms: Arc::new(AtomicI64::new(-1)),
            instance: hello.instance.clone(),
            started_at: now,
            capabilities: hello.capabilities.clone(),
            transport: hello.transport.clone(),
        };
        // With replicas: the session is claimed in the database first (another replica's
        // session of the gateway is closed there), and the state the welcome's digest covers is
        // read from the database, whichever replica stored it.
        if let Some(cluster) = &self.state.cluster {
            let claim = cluster
                .claim(super::postgres::NewSession {
                    gateway_id: gateway_id.clone(),
                    session_id: session.session_id.clone(),
                    replica_id: cluster.replica_id.clone(),
                    instance: hello.instance.clone(),
                    version: hello.gateway_version.clone(),
                    protocol_version: hello.protocol_version,
                    now,
                })
                .await;
            let loaded = match claim {
                Ok(super::postgres::Claim::Owned(_)) => cluster.load_gateway(&self.state, &gateway_id).await,
                Ok(super::postgres::Claim::Copied(other)) => {
                    tracing::warn!(gateway_id = %gateway_id, replica = %other.replica_id, "refused a second instance of a gateway connected to another replica: its identity was copied");
                    self.state.metrics.session_refused("identity_copied");
                    let _ = tx.try_send(msg(rejection(
                        rejected::Reason::IdentityCopied,
                        copied_message(&gateway_id),
                    )));
                    return Ok(reply);
                }
                Ok(super::postgres::Claim::Unknown) => {
                    let text = format!("gateway {gateway_id} was removed at the hub; register again with a new token");
                    let _ = tx.try_send(msg(rejection(rejected::Reason::Revoked, text.clone())));
                    return Err(wire::ErrorCode::Revoked.status(tonic::Code::PermissionDenied, text));
                }
                Err(e) => Err(e),
            };
            if let Err(e) = loaded {
                tracing::warn!(gateway_id = %gateway_id, error = %e, "cannot open a gateway session: the database is unavailable");
                self.state.metrics.session_refused("store_unavailable");
                let _ = cluster.release(&gateway_id, &session.session_id).await;
                let mut status = wire::ErrorCode::Overloaded.status(
                    tonic::Code::Unavailable,
                    "this hub replica cannot reach its database; come back shortly",
                );
                let wait = crate::util::jitter(Duration::from_millis(1000), Duration::from_millis(3000));
                if let Ok(v) = wait.as_millis().to_string().parse() {
                    status.metadata_mut().insert(wire::codes::RETRY_AFTER_KEY, v);
                }
                return Err(status);
            }
        }
        let replaced = self.state.sessions.insert(&gateway_id, session.clone());
        // Checked after the session is in the map: either the drain sees it, or it sees the
        // drain (the flag is set before the drain goes through the sessions).
        if self.state.draining.load(Ordering::SeqCst) {
            self.state.sessions.remove_if_current(&gateway_id, &session.session_id);
            if let Some(cluster) = &self.state.cluster {
                let _ = cluster.release(&gateway_id, &session.session_id).await;
            }
            let _ = tx.try_send(msg(hub_message::Body::Drain(super::server::drain_message())));
            return Ok(reply);
        }
        if let Some(old) = replaced {
            tracing::info!(gateway_id = %gateway_id, old_session = %old.session_id, "a new session replaces the old one");
            close_with(
                &old,
                rejection(
                    rejected::Reason::Replaced,
                    "a newer session of this gateway took over".into(),
                ),
                Status::aborted("replaced by a newer session"),
            )
            .await;
        }
        if let Err(e) = self
            .state
            .store
            .record_hello(
                gateway_id.clone(),
                hello.gateway_version.clone(),
                hello.protocol_version,
                now,
            )
            .await
        {
            tracing::warn!(error = %e, "could not record the gateway's hello");
        }
        let welcome = Welcome {
            session_id: session.session_id.clone(),
            protocol_version: hello.protocol_version,
            hub_version: crate::VERSION.to_owned(),
            state_digest: self.state.entities.digest(&gateway_id, digest_kind).to_vec(),
            capabilities: wire::codes::hub_capabilities(speaks),
        };
        let _ = tx.try_send(msg(hub_message::Body::Welcome(welcome)));
        tracing::info!(gateway_id = %gateway_id, session_id = %session.session_id, version = %hello.gateway_version, protocol_version = hello.protocol_version, transport = %hello.transport, "gateway connected");
        super::lifecycle::on_connected(&self.state, &gateway_id).await;
        self.state
            .feed
            .gateway_connected(
                &gateway_id,
                &hello.gateway_version,
                hello.protocol_version,
                &session.session_id,
            )
            .await;
        self.state.tasks.spawn(measure_round_trips(session.clone()));
        let state = self.state.clone();
        self.state
            .tasks
            .spawn(read_session(state, gateway_id, session, tx, inbound, digest_kind));
        Ok(reply)
    }
}

/// How often the hub pings a gateway to know the round-trip time it reports in health checks.
const HUB_PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(15);

/// Pings the gateway at once and then periodically, until the session ends; the pong updates
/// the session's round-trip time.
async fn measure_round_trips(session: LiveSession) {
    let mut tick = tokio::time::interval(HUB_PING_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = session.cancel.cancelled() => return,
            _ = session.tx.closed() => return,
            _ = tick.tick() => {}
        }
        seq += 1;
        let ping = crate::wire::proto::Ping {
            seq,
            sent_at_unix_ms: crate::util::unix_ms_now(),
        };
        if session.tx.send(msg(hub_message::Body::Ping(ping))).await.is_err() {
            return;
        }
    }
}

/// A complete snapshot: its entities and the digest the gateway computed.
type Complete = (Vec<proto::Entity>, Vec<u8>);

/// A snapshot arriving in chunks. It belongs to its session: a session that ends mid-snapshot
/// takes the chunks with it, and its size is bounded by the gateway state limits.
#[derive(Default)]
struct Assembly {
    entities: Vec<proto::Entity>,
    bytes: usize,
    next_index: u32,
}

impl Assembly {
    /// Adds a chunk; returns the complete snapshot on its last chunk, or why it is refused.
    fn add(&mut self, chunk: SnapshotChunk, limits: &EntityLimits) -> Result<Option<Complete>, String> {
        if chunk.index == 0 {
            *self = Self::default();
        } else if chunk.index != self.next_index {
            return Err(format!(
                "snapshot chunk {} arrived after chunk {}",
                chunk.index,
                self.next_index.saturating_sub(1)
            ));
        }
        self.next_index = chunk.index.saturating_add(1);
        self.bytes += chunk.entities.iter().map(|e| e.json.len() + e.key.len()).sum::<usize>();
        if self.bytes > limits.max_state_bytes {
            return Err(format!(
                "a snapshot over {} bytes (hub flag --max-state-bytes)",
                limits.max_state_bytes
            ));
        }
        if self.entities.len() + chunk.entities.len() > limits.max_entities.saturating_mul(2) {
            return Err(format!(
                "a snapshot of more than {} entities (hub flag --max-entities)",
                limits.max_entities
            ));
        }
        self.entities.extend(chunk.entities);
        if !chunk.last {
            return Ok(None);
        }
        let entities = std::mem::take(&mut self.entities);
        *self = Self::default();
        Ok(Some((entities, chunk.digest)))
    }
}

/// The metric label of an entity refusal.
fn refusal_label(reason: &str) -> &'static str {
    if reason.contains("--max-entity-bytes") {
        "entity_too_large"
    } else if reason.contains("--max-entities") {
        "too_many_entities"
    } else if reason.contains("--max-state-bytes") {
        "state_too_large"
    } else {
        "invalid"
    }
}

/// Why a session ends after its state could not be stored: another replica's session owns the
/// gateway now (not worth a warning), or the store failed until the session ended.
/// Why a session ends when the store refused what it relayed. Unless another session took over
/// (fenced), the gateway is first told to come back shortly: it keeps what was not
/// acknowledged and resends it then, to whichever replica can store it.
fn ended_by_store(tx: &Outbound, what: &str, e: &StateError) -> (String, bool) {
    if !matches!(e, StateError::Store(super::store::StoreError::Fenced(_))) {
        let retry_after = crate::util::jitter(Duration::from_millis(1000), Duration::from_millis(3000));
        let _ = tx.try_send(msg(hub_message::Body::Drain(crate::wire::proto::Drain {
            retry_after_ms: retry_after.as_millis() as u32,
            reason: "this hub replica cannot reach its database".into(),
        })));
    }
    match e {
        StateError::Store(super::store::StoreError::Fenced(_)) => (
            "another session of this gateway took over at another hub replica".into(),
            false,
        ),
        e => (format!("could not store {what}: {e}"), true),
    }
}

/// Reads a gateway's messages until it leaves, is revoked, replaced, the hub drains, or the
/// stream fails; then ends the session on both sides.
async fn read_session(
    state: Arc<HubState>,
    gateway_id: String,
    session: LiveSession,
    tx: Outbound,
    mut inbound: Streaming<GatewayMessage>,
    digest_kind: crate::wire::DigestKind,
) {
    let mut persisted_seen = session.last_seen.load(Ordering::Relaxed);
    let mut limits = EntityLimits::from(&state.limits);
    // A hub reads the kinds its protocol version knows (a pinned older one, only those).
    limits.kinds = wire::kinds_for(&wire::codes::hub_capabilities(state.protocol_version));
    // A write the store refuses is retried for a while (the message stays unacknowledged, so
    // the gateway keeps it); with replicas, only while this session owns the gateway.
    let writer = Writer {
        owner: state.cluster.as_ref().map(|_| session.session_id.as_str()),
        retry_until: Some(&session.cancel),
    };
    let mut snapshot = Assembly::default();
    let refused = |reason: &str| {
        state
            .metrics
            .entities_refused
            .get_or_create(&ReasonLabel {
                reason: refusal_label(reason).into(),
            })
            .inc();
    };
    // Why the session ended, and whether that is worth a warning (a goodbye, a takeover or a
    // hub drain is not).
    let (reason, unexpected): (String, bool) = loop {
        let next = tokio::select! {
            _ = session.cancel.cancelled() => break ("closed by the hub".into(), false),
            m = inbound.message() => m,
        };
        let m = match next {
            Ok(Some(m)) => m,
            Ok(None) => break ("the gateway ended the stream".into(), true),
            Err(e) => break (format!("stream error: {}: {}", e.code(), e.message()), true),
        };
        state
            .metrics
            .messages
            .get_or_create(&KindLabel {
                kind: message_kind(&m).to_owned(),
            })
            .inc();
        let now = jiff::Timestamp::now().as_second();
        session.last_seen.store(now, Ordering::Relaxed);
        if now - persisted_seen >= SEEN_PERSIST_INTERVAL {
            persisted_seen = now;
            let _ = state.store.record_seen(gateway_id.clone(), now).await;
        }
        match m.body {
            Some(gateway_message::Body::Ping(p)) => {
                let pong = Pong {
                    seq: p.seq,
                    ping_sent_at_unix_ms: p.sent_at_unix_ms,
                };
                if tx.send(msg(hub_message::Body::Pong(pong))).await.is_err() {
                    break ("the outbound stream closed".into(), true);
                }
            }
            Some(gateway_message::Body::Goodbye(g)) => {
                tracing::info!(gateway_id = %gateway_id, reason = %g.reason, "gateway said goodbye");
                break ("goodbye".into(), false);
            }
            Some(gateway_message::Body::Snapshot(chunk)) => {
                let seq = chunk.seq;
                let complete = match snapshot.add(chunk, &limits) {
                    Ok(c) => c,
                    // Not acknowledging makes the gateway resend after reconnecting.
                    Err(why) => break (format!("refused {why}"), true),
                };
                let digest = match complete {
                    None => None,
                    Some((entities, digest)) => {
                        match state
                            .entities
                            .apply_snapshot_as(&writer, &gateway_id, entities, &digest, &limits, &refused, digest_kind)
                            .await
                        {
                            Ok(d) => {
                                super::lifecycle::on_state(&state, &gateway_id);
                                Some(d)
                            }
                            Err(e) => break ended_by_store(&tx, "a snapshot", &e),
                        }
                    }
                };
                let ack = Ack {
                    seq,
                    state_digest: digest.map(|d| d.to_vec()).unwrap_or_default(),
                };
                if tx.send(msg(hub_message::Body::Ack(ack))).await.is_err() {
                    break ("the outbound stream closed".into(), true);
                }
            }
            Some(gateway_message::Body::Delta(delta)) => {
                let seq = delta.seq;
                if let Some(age) = delta.oldest_change_age_ms {
                    state.fleet.relay_lag(&gateway_id, age, &session);
                }
                match state
                    .entities
                    .apply_delta_as(&writer, &gateway_id, delta, &limits, &refused, digest_kind)
                    .await
                {
                    Ok(digest) => {
                        super::lifecycle::on_state(&state, &gateway_id);
                        let ack = Ack {
                            seq,
                            state_digest: digest.to_vec(),
                        };
                        if tx.send(msg(hub_message::Body::Ack(ack))).await.is_err() {
                            break ("the outbound stream closed".into(), true);
                        }
                    }
                    Err(e) => break ended_by_store(&tx, "a delta", &e),
                }
            }
            Some(gateway_message::Body::Response(r)) => session.broker.complete(r),
            Some(gateway_message::Body::Pong(p)) => {
                let rtt = crate::util::unix_ms_now().saturating_sub(p.ping_sent_at_unix_ms);
                session.rtt_ms.store(rtt.max(0), Ordering::Relaxed);
            }
            Some(gateway_message::Body::Hello(_)) | None => {}
        }
    };
    // End the session on both sides: the gateway learns why at once and reconnects.
    if unexpected {
        tracing::warn!(gateway_id = %gateway_id, session_id = %session.session_id, reason = %reason, "gateway session ended");
        let _ = tx.try_send(Err(Status::aborted(format!("the hub ended the session: {reason}"))));
    }
    session.broker.close();
    session.cancel.cancel();
    drop(tx);
    if state.sessions.remove_if_current(&gateway_id, &session.session_id) {
        // With replicas, the end is the gateway's only if no other session took it over.
        let owned = match &state.cluster {
            Some(cluster) => cluster.release(&gateway_id, &session.session_id).await,
            None => true,
        };
        tracing::info!(gateway_id = %gateway_id, session_id = %session.session_id, reason = %reason, "gateway disconnected");
        if owned {
            state.feed.gateway_disconnected(&gateway_id, &reason).await;
        }
    }
    let _ = state
        .store
        .record_seen(gateway_id, jiff::Timestamp::now().as_second())
        .await;
}
