//! The tunnel gRPC service: each gateway's one long-lived stream. Hello and welcome (with the
//! state digest), takeover of an older session, the hub's pings, and the reader that applies
//! relayed snapshots and deltas, acknowledges them, and routes answers to waiting requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::metrics::{KindLabel, message_kind};
use super::sessions::{LiveSession, close_with};
use super::state::HubState;
use crate::wire::assertion::Purpose;
use crate::wire::proto::tunnel_server::Tunnel;
use crate::wire::proto::{
    Ack, GatewayMessage, HubMessage, Pong, Rejected, Welcome, gateway_message, hub_message, rejected,
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
    })
}

/// How long a gateway has to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// How often, at most, the last-seen time is written to the database.
const SEEN_PERSIST_INTERVAL: i64 = 30;

#[tonic::async_trait]
impl Tunnel for TunnelService {
    type OpenStream = ReceiverStream<Result<HubMessage, Status>>;

    async fn open(&self, request: Request<Streaming<GatewayMessage>>) -> Result<Response<Self::OpenStream>, Status> {
        let gateway_id = self.state.authenticate(&request, Purpose::Tunnel).await?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let reply = Response::new(ReceiverStream::new(rx));
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(GatewayMessage {
                body: Some(gateway_message::Body::Hello(h)),
            }))) => h,
            _ => {
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
            let _ = tx.try_send(msg(rejection(rejected::Reason::BadHello, text)));
            return Ok(reply);
        }
        if !wire::protocol_supported(hello.protocol_version) {
            let which = if hello.protocol_version > wire::PROTOCOL_VERSION {
                "upgrade the hub"
            } else {
                "upgrade the gateway"
            };
            let text = format!(
                "gateway {} speaks protocol version {} but this hub (version {}) accepts {}..={}: {which}",
                gateway_id,
                hello.protocol_version,
                crate::VERSION,
                wire::MIN_PROTOCOL_VERSION,
                wire::PROTOCOL_VERSION
            );
            tracing::warn!(gateway_id = %gateway_id, protocol_version = hello.protocol_version, "refused a gateway with an unsupported protocol version");
            let _ = tx.try_send(msg(rejection(rejected::Reason::UnsupportedProtocol, text)));
            return Ok(reply);
        }
        let now = jiff::Timestamp::now().as_second();
        let session = LiveSession {
            session_id: crate::hub::pki::random_token(9),
            tx: tx.clone(),
            cancel: CancellationToken::new(),
            version: hello.gateway_version.clone(),
            protocol_version: hello.protocol_version,
            last_seen: Arc::new(AtomicI64::new(now)),
            broker: Arc::new(super::requests::Broker::default()),
            rtt_ms: Arc::new(AtomicI64::new(-1)),
        };
        if let Some(old) = self.state.sessions.insert(&gateway_id, session.clone()) {
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
            state_digest: self.state.entities.digest(&gateway_id).to_vec(),
        };
        let _ = tx.try_send(msg(hub_message::Body::Welcome(welcome)));
        tracing::info!(gateway_id = %gateway_id, session_id = %session.session_id, version = %hello.gateway_version, "gateway connected");
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
            .spawn(read_session(state, gateway_id, session, tx, inbound));
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

/// Reads a gateway's messages until it leaves, is revoked, replaced, or the hub drains.
async fn read_session(
    state: Arc<HubState>,
    gateway_id: String,
    session: LiveSession,
    tx: Outbound,
    mut inbound: Streaming<GatewayMessage>,
) {
    let mut persisted_seen = session.last_seen.load(Ordering::Relaxed);
    let reason = loop {
        let next = tokio::select! {
            _ = session.cancel.cancelled() => break "closed by the hub",
            m = inbound.message() => m,
        };
        let m = match next {
            Ok(Some(m)) => m,
            Ok(None) => break "stream ended",
            Err(e) => {
                tracing::debug!(gateway_id = %gateway_id, error = %e, "gateway stream error");
                break "stream error";
            }
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
                    break "outbound closed";
                }
            }
            Some(gateway_message::Body::Goodbye(g)) => {
                tracing::info!(gateway_id = %gateway_id, reason = %g.reason, "gateway said goodbye");
                break "goodbye";
            }
            Some(gateway_message::Body::Snapshot(chunk)) => {
                let seq = chunk.seq;
                match state.entities.apply_snapshot(&gateway_id, chunk).await {
                    Ok(digest) => {
                        let ack = Ack {
                            seq,
                            state_digest: digest.map(|d| d.to_vec()).unwrap_or_default(),
                        };
                        if tx.send(msg(hub_message::Body::Ack(ack))).await.is_err() {
                            break "outbound closed";
                        }
                    }
                    Err(e) => {
                        // Not acknowledging makes the gateway resend after reconnecting.
                        tracing::error!(gateway_id = %gateway_id, error = %e, "could not store a snapshot; closing the session");
                        break "storage error";
                    }
                }
            }
            Some(gateway_message::Body::Delta(delta)) => {
                let seq = delta.seq;
                if let Some(age) = delta.oldest_change_age_ms {
                    state.fleet.relay_lag(&gateway_id, age, &session);
                }
                match state.entities.apply_delta(&gateway_id, delta).await {
                    Ok(digest) => {
                        let ack = Ack {
                            seq,
                            state_digest: digest.to_vec(),
                        };
                        if tx.send(msg(hub_message::Body::Ack(ack))).await.is_err() {
                            break "outbound closed";
                        }
                    }
                    Err(e) => {
                        tracing::error!(gateway_id = %gateway_id, error = %e, "could not store a delta; closing the session");
                        break "storage error";
                    }
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
    session.broker.close();
    if state.sessions.remove_if_current(&gateway_id, &session.session_id) {
        tracing::info!(gateway_id = %gateway_id, session_id = %session.session_id, reason, "gateway disconnected");
        state.feed.gateway_disconnected(&gateway_id, reason).await;
    }
    let _ = state
        .store
        .record_seen(gateway_id, jiff::Timestamp::now().as_second())
        .await;
}
