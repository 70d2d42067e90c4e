//! The hub's gRPC side: registration and renewal, the tunnel stream, and how a gateway is
//! authenticated — by its client certificate when TLS reaches the hub, and always by the signed
//! assertion, which also works when a proxy terminates TLS in front of the hub.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use super::sessions::{LiveSession, Sessions, close_with};
use super::store::{CertRecord, GatewayRecord, NewGateway, Store, TokenCheck};
use crate::identity::assertion::{self, Purpose};
use crate::identity::certs::{CertAuthority, CertInfo};
use crate::proto::registration_server::Registration;
use crate::proto::tunnel_server::Tunnel;
use crate::proto::{
    Ack, GatewayMessage, HubMessage, Pong, RegisterRequest, RegisterResponse, Rejected, RenewRequest, RenewResponse,
    Welcome, gateway_message, hub_message, rejected,
};
use crate::tls::Fingerprint;
use crate::tunnel::wire::{self, ErrorCode};

/// Labels naming a message or request kind.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct KindLabel {
    /// The kind.
    pub kind: String,
}

/// The hub's metrics.
#[derive(Debug, Clone)]
pub struct HubMetrics {
    /// Gateways with a live session (set at scrape time).
    pub connected: prometheus_client::metrics::gauge::Gauge,
    /// Messages received from gateways, by kind.
    pub messages: prometheus_client::metrics::family::Family<KindLabel, prometheus_client::metrics::counter::Counter>,
    /// Requests to gateways, seconds, by kind.
    pub request_seconds:
        prometheus_client::metrics::family::Family<KindLabel, prometheus_client::metrics::histogram::Histogram>,
}

impl Default for HubMetrics {
    fn default() -> Self {
        Self {
            connected: Default::default(),
            messages: Default::default(),
            request_seconds: prometheus_client::metrics::family::Family::new_with_constructor(|| {
                prometheus_client::metrics::histogram::Histogram::new(
                    prometheus_client::metrics::histogram::exponential_buckets(0.002, 2.0, 14),
                )
            }),
        }
    }
}

impl HubMetrics {
    /// Registers the metrics.
    pub fn register(&self, r: &mut prometheus_client::registry::Registry) {
        r.register(
            "argocd_gateway_hub_gateways_connected",
            "Gateways with a live session",
            self.connected.clone(),
        );
        r.register(
            "argocd_gateway_hub_messages_received",
            "Messages received from gateways, by kind",
            self.messages.clone(),
        );
        r.register_with_unit(
            "argocd_gateway_hub_request_duration",
            "Requests forwarded to gateways, by kind",
            prometheus_client::registry::Unit::Seconds,
            self.request_seconds.clone(),
        );
    }
}

fn message_kind(m: &GatewayMessage) -> &'static str {
    match &m.body {
        Some(gateway_message::Body::Hello(_)) => "hello",
        Some(gateway_message::Body::Ping(_)) => "ping",
        Some(gateway_message::Body::Pong(_)) => "pong",
        Some(gateway_message::Body::Goodbye(_)) => "goodbye",
        Some(gateway_message::Body::Snapshot(_)) => "snapshot",
        Some(gateway_message::Body::Delta(_)) => "delta",
        Some(gateway_message::Body::Response(_)) => "response",
        None => "empty",
    }
}

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
    pub entities: Arc<super::state::EntityState>,
    /// Client certificate lifetime.
    pub client_cert_ttl: Duration,
    /// Seen assertion nonces and their expiry.
    replay: Mutex<HashMap<String, i64>>,
    /// Session reader tasks.
    pub tasks: TaskTracker,
}

impl HubState {
    /// New state.
    pub fn new(
        store: Store,
        ca: CertAuthority,
        client_cert_ttl: Duration,
        entities: Arc<super::state::EntityState>,
    ) -> Self {
        Self {
            metrics: HubMetrics::default(),
            store,
            ca: Arc::new(ca),
            sessions: Sessions::default(),
            entities,
            client_cert_ttl,
            replay: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
        }
    }

    fn internal(e: impl std::fmt::Display) -> Status {
        tracing::error!(error = %e, "hub internal error");
        Status::internal("hub internal error")
    }

    /// Authenticates a gateway call; returns its id.
    pub async fn authenticate<T>(&self, request: &Request<T>, purpose: Purpose) -> Result<String, Status> {
        let bad = |msg: &str| ErrorCode::BadAssertion.status(tonic::Code::Unauthenticated, msg);
        let token = request
            .metadata()
            .get(assertion::METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| bad("missing identity assertion"))?;
        let claims = assertion::peek(token).map_err(|e| bad(&e.to_string()))?;
        if let Some(certs) = request.peer_certs()
            && let Some(leaf) = certs.first()
            && Fingerprint::of(leaf).hex() != claims.fp
        {
            return Err(bad("the identity assertion does not match the client certificate"));
        }
        let Some(cert) = self
            .store
            .certificate(claims.fp.clone())
            .await
            .map_err(Self::internal)?
        else {
            return Err(match self.store.gateway(claims.gid.clone()).await.map_err(Self::internal)? {
                Some(_) => ErrorCode::UnknownCertificate
                    .status(tonic::Code::Unauthenticated, "this certificate was not issued to this gateway by this hub"),
                None => ErrorCode::Revoked.status(
                    tonic::Code::PermissionDenied,
                    format!("gateway {} is not registered at this hub (it was deleted); register again with a new token", claims.gid),
                ),
            });
        };
        let now = jiff::Timestamp::now().as_second();
        if cert.gateway_id != claims.gid {
            return Err(bad("the identity assertion names another gateway"));
        }
        if cert.not_after < now {
            return Err(ErrorCode::UnknownCertificate
                .status(tonic::Code::Unauthenticated, "the gateway certificate has expired"));
        }
        let info = CertInfo {
            not_before: jiff::Timestamp::UNIX_EPOCH,
            not_after: jiff::Timestamp::from_second(cert.not_after).unwrap_or(jiff::Timestamp::UNIX_EPOCH),
            common_name: cert.gateway_id.clone(),
            fingerprint: Fingerprint::parse(&cert.fingerprint, "stored").map_err(Self::internal)?,
            public_key: cert.public_key.clone(),
        };
        let claims = assertion::verify(token, &info, purpose, now).map_err(|e| bad(&e.to_string()))?;
        {
            let mut seen = self.replay.lock().map_err(Self::internal)?;
            if seen.len() > 4096 {
                let horizon = now - assertion::MAX_SKEW.as_secs() as i64;
                seen.retain(|_, exp| *exp >= horizon);
            }
            if seen.insert(claims.jti.clone(), claims.exp).is_some() {
                return Err(bad(&assertion::AssertionError::Replayed.to_string()));
            }
        }
        Ok(claims.gid)
    }
}

/// The registration service.
#[derive(Clone)]
pub struct RegistrationService {
    /// Shared state.
    pub state: Arc<HubState>,
}

fn new_gateway_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 8];
    rand::rng().fill_bytes(&mut b);
    format!("gw-{}", hex::encode(b))
}

/// Splits `<id>.<secret>` and hashes the secret.
pub fn token_parts(token: &str) -> Option<(String, Vec<u8>)> {
    let (id, secret) = token.trim().split_once('.')?;
    if id.is_empty() || secret.is_empty() {
        return None;
    }
    Some((id.to_owned(), Sha256::digest(secret.as_bytes()).to_vec()))
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<RegisterResponse>, Status> {
        let req = request.into_inner();
        let unknown = || ErrorCode::TokenUnknown.status(tonic::Code::Unauthenticated, "unknown registration token");
        let (token_id, hash) = token_parts(&req.token).ok_or_else(unknown)?;
        let gateway_id = new_gateway_id();
        let issued = self
            .state
            .ca
            .sign_client_csr(&req.csr_pem, &gateway_id, self.state.client_cert_ttl)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let now = jiff::Timestamp::now().as_second();
        let (gid, info, req_name, req_envs) = (
            gateway_id.clone(),
            issued.info.clone(),
            req.name.clone(),
            req.environments.clone(),
        );
        let web_url = req.argocd_web_url.clone();
        let version = req.gateway_version.clone();
        let (check, created) = self
            .state
            .store
            .register_with_token(token_id.clone(), hash, now, move |token_name, token_envs| {
                let name = [req_name.as_str(), token_name, gid.as_str()]
                    .into_iter()
                    .find(|s| !s.is_empty())
                    .unwrap_or_default();
                Ok(NewGateway {
                    gateway: GatewayRecord {
                        id: gid.clone(),
                        name: name.to_owned(),
                        environments: if req_envs.is_empty() {
                            token_envs.to_vec()
                        } else {
                            req_envs
                        },
                        argocd_web_url: web_url,
                        created_at: now,
                        last_seen_at: Some(now),
                        version,
                        protocol_version: 0,
                        certificate_expires_at: Some(info.not_after.as_second()),
                    },
                    cert: CertRecord {
                        fingerprint: info.fingerprint.hex().to_owned(),
                        gateway_id: gid,
                        public_key: info.public_key.clone(),
                        not_after: info.not_after.as_second(),
                    },
                })
            })
            .await
            .map_err(HubState::internal)?;
        match (check, created) {
            (TokenCheck::Consumed { .. }, Some(new)) => {
                tracing::info!(gateway_id = %new.gateway.id, name = %new.gateway.name, token_id = %token_id, "gateway registered");
                Ok(Response::new(RegisterResponse {
                    gateway_id: new.gateway.id,
                    certificate_pem: issued.pem,
                    ca_bundle_pem: self.state.ca.cert_pem().to_owned(),
                    name: new.gateway.name,
                    environments: new.gateway.environments,
                }))
            }
            (TokenCheck::Expired, _) => {
                Err(ErrorCode::TokenExpired.status(tonic::Code::Unauthenticated, "the registration token has expired"))
            }
            (TokenCheck::Used, _) => {
                Err(ErrorCode::TokenUsed
                    .status(tonic::Code::PermissionDenied, "the registration token was already used"))
            }
            _ => Err(unknown()),
        }
    }

    async fn renew(&self, request: Request<RenewRequest>) -> Result<Response<RenewResponse>, Status> {
        let gateway_id = self.state.authenticate(&request, Purpose::Renew).await?;
        let req = request.into_inner();
        let issued = self
            .state
            .ca
            .sign_client_csr(&req.csr_pem, &gateway_id, self.state.client_cert_ttl)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.state
            .store
            .add_certificate(CertRecord {
                fingerprint: issued.info.fingerprint.hex().to_owned(),
                gateway_id: gateway_id.clone(),
                public_key: issued.info.public_key.clone(),
                not_after: issued.info.not_after.as_second(),
            })
            .await
            .map_err(HubState::internal)?;
        tracing::info!(gateway_id = %gateway_id, not_after = %issued.info.not_after, "renewed a gateway certificate");
        Ok(Response::new(RenewResponse {
            certificate_pem: issued.pem,
            ca_bundle_pem: self.state.ca.cert_pem().to_owned(),
        }))
    }

    async fn get_desired_version(
        &self,
        request: Request<crate::proto::GetDesiredVersionRequest>,
    ) -> Result<Response<crate::proto::GetDesiredVersionResponse>, Status> {
        super::version::desired_version_rpc(&self.state, request).await
    }
}

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
        let ping = crate::proto::Ping {
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
    }
    let _ = state
        .store
        .record_seen(gateway_id, jiff::Timestamp::now().as_second())
        .await;
}
