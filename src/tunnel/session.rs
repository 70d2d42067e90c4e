//! One session with the hub: dial, open the stream with a signed assertion, hello/welcome, then
//! keepalive, certificate renewal and hub messages until the stream ends. The reconnect loop
//! around it lives in [`super::run`].

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{RunConfig, TunnelStatus};
use crate::identity::Identity;
use crate::uplink::dial::{DialError, Dialer};
use crate::uplink::{OpenError, open_tunnel};
use crate::wire::codes::{
    ANSWER_PIECE_BYTES, CAP_CHUNKED_ANSWERS, CAP_WEBSOCKET, error_code_name, gateway_capabilities, request_name,
};
use crate::wire::proto::{GatewayMessage, Goodbye, Hello, Ping, Pong, RequestError, Response, request_error, response};
use crate::wire::proto::{gateway_message, hub_message, rejected};
use crate::wire::{DigestKind, ErrorCode, Kind, MIN_PROTOCOL_VERSION, kinds_for};

/// How a session ended.
#[derive(Debug)]
pub enum Ended {
    /// We shut down and said goodbye.
    Shutdown,
    /// The hub is going away and asked us back after this long.
    Drained(Duration),
    /// The hub no longer knows this gateway.
    Revoked(String),
    /// Keepalive failed too often.
    KeepaliveExhausted,
    /// Could not connect.
    DialFailed(DialError),
    /// The hub refused the session for a reason retrying may fix later (bad assertion, protocol).
    Refused(String),
    /// The certificate expired, or a renewal elsewhere retired it.
    Expired(String),
    /// Another instance holds this identity: it was copied.
    Copied(String),
    /// The hub is busy and asked us to come back after this long.
    RetryAfter(Duration),
    /// The stream broke or closed.
    Lost(String),
    /// The hub refused this protocol version: the next session speaks the previous one.
    Downgraded(String),
}

/// What the session needs from the run loop.
pub struct SessionCtx<'a> {
    /// The state relay, which outlives sessions.
    pub relay: Option<&'a mut crate::relay::engine::Relay>,
    /// Answers hub requests.
    pub actions: Option<Arc<dyn crate::relay::actions::Actions>>,
    /// Where relay and request figures go.
    pub metrics: &'a super::TunnelMetrics,
    /// Settings.
    pub cfg: &'a RunConfig,
    /// Consecutive keepalive failures, kept across sessions.
    pub keepalive_failures: &'a mut u32,
    /// Published state.
    pub status: &'a watch::Sender<TunnelStatus>,
    /// Process shutdown.
    pub shutdown: &'a CancellationToken,
}

fn classify_status(status: &tonic::Status) -> Ended {
    match ErrorCode::from_status(status) {
        Some(ErrorCode::Revoked) => Ended::Revoked(status.message().to_owned()),
        Some(ErrorCode::IdentityExpired) => Ended::Expired(status.message().to_owned()),
        Some(ErrorCode::IdentityCopied) => Ended::Copied(status.message().to_owned()),
        Some(ErrorCode::Overloaded) => {
            Ended::RetryAfter(ErrorCode::retry_after(status).unwrap_or(Duration::from_secs(2)))
        }
        Some(_) => Ended::Refused(status.message().to_owned()),
        None => Ended::Lost(format!("{}: {}", status.code(), status.message())),
    }
}

/// Runs one session. `identity` is updated in place when the certificate is renewed.
pub async fn run_once(mut ctx: SessionCtx<'_>, identity: &mut Identity) -> Ended {
    let cfg = ctx.cfg;
    // An expired certificate fails the TLS handshake with a bare alert; say what it means.
    if let Ok(cert) = identity.cert_info()
        && cert.not_after < jiff::Timestamp::now()
    {
        return Ended::Expired(format!("the gateway certificate expired at {}", cert.not_after));
    }
    let dialer = match Dialer::new(&cfg.hub, &cfg.extra_roots, Some(identity)) {
        Ok(d) => d,
        Err(e) => return Ended::DialFailed(e),
    };
    let channel = tokio::select! {
        _ = ctx.shutdown.cancelled() => return Ended::Shutdown,
        r = dialer.connect() => match r {
            Ok(c) => c,
            Err(e) => return Ended::DialFailed(e),
        },
    };
    let cert = match identity.cert_info() {
        Ok(c) => c,
        Err(e) => return Ended::Refused(format!("stored certificate is unreadable: {e}")),
    };
    let (tx, rx) = mpsc::channel::<GatewayMessage>(64);
    let older = cfg.hub.memory.older_protocol.load(std::sync::atomic::Ordering::Relaxed);
    let protocol = if older {
        cfg.protocol_version.min(MIN_PROTOCOL_VERSION)
    } else {
        cfg.protocol_version
    };
    let transport = dialer.transport_used().name();
    let hello = GatewayMessage {
        body: Some(gateway_message::Body::Hello(Hello {
            gateway_id: identity.gateway_id.clone(),
            gateway_version: crate::VERSION.to_owned(),
            protocol_version: protocol,
            capabilities: gateway_capabilities(protocol),
            instance: cfg.store.instance(),
            // Gateways of protocol 2 did not say.
            transport: if protocol >= 3 {
                transport.to_owned()
            } else {
                String::new()
            },
        })),
    };
    // The channel is fresh and has room: the send cannot fail before the receiver is dropped.
    let _ = tx.send(hello).await;
    let opened = tokio::time::timeout(cfg.hub.connect_timeout, open_tunnel(channel.clone(), identity, rx)).await;
    let mut inbound = match opened {
        Err(_) => return Ended::Lost("the hub did not answer the stream open in time".into()),
        Ok(Err(OpenError::Refused(status))) => return classify_status(&status),
        Ok(Err(OpenError::Auth(e))) => return Ended::Refused(e.to_string()),
        Ok(Ok(inbound)) => inbound,
    };
    let welcome = match tokio::time::timeout(cfg.hub.connect_timeout, inbound.message()).await {
        Err(_) => return Ended::Lost("no welcome from the hub in time".into()),
        Ok(Err(status)) => return classify_status(&status),
        Ok(Ok(None)) => return Ended::Lost("the hub closed the stream before welcoming us".into()),
        Ok(Ok(Some(m))) => m,
    };
    // The hub's state digest, kept until the relay has compared it with a complete local state,
    // and whether the hub takes answers in pieces.
    let (digest, chunked_answers, digest_kind) = match welcome.body {
        Some(hub_message::Body::Welcome(w)) => {
            tracing::info!(
                gateway_id = %identity.gateway_id,
                session_id = %w.session_id,
                protocol_version = w.protocol_version,
                hub = %dialer.endpoint().url(),
                transport,
                "connected to hub"
            );
            ctx.status.send_modify(|s| {
                s.connected = true;
                s.session_id = Some(w.session_id.clone());
                s.last_error = None;
                s.transport = Some(transport);
                s.hub_capabilities = w.capabilities.clone();
            });
            ctx.metrics.connected.set(1);
            // Spoken down for this session only: the next one (after this hub restarts, perhaps
            // upgraded) offers the current version again, and an older hub refuses it once more.
            if older {
                cfg.hub
                    .memory
                    .older_protocol
                    .store(false, std::sync::atomic::Ordering::Relaxed);
            }
            // What later dials may try: a hub that does not take the WebSocket is not offered it.
            cfg.hub.memory.hub_without_websocket.store(
                !w.capabilities.iter().any(|c| c == CAP_WEBSOCKET),
                std::sync::atomic::Ordering::Relaxed,
            );
            // Only the kinds both this gateway's protocol and the hub know are relayed.
            let kinds = if protocol >= 3 {
                kinds_for(&w.capabilities)
            } else {
                vec![Kind::Application, Kind::Cluster]
            };
            if let Some(relay) = ctx.relay.as_deref_mut() {
                relay.set_kinds(kinds);
            }
            let chunked = w.capabilities.iter().any(|c| c == CAP_CHUNKED_ANSWERS);
            (w.state_digest, chunked, DigestKind::negotiated(&w.capabilities))
        }
        // A hub of the previous protocol version refuses this one: speak its version (once).
        Some(hub_message::Body::Rejected(r))
            if r.reason == rejected::Reason::UnsupportedProtocol as i32
                && protocol > MIN_PROTOCOL_VERSION
                && !older =>
        {
            cfg.hub
                .memory
                .older_protocol
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return Ended::Downgraded(r.message);
        }
        Some(hub_message::Body::Rejected(r)) => return rejected(r),
        other => return Ended::Lost(format!("unexpected first message from the hub: {other:?}")),
    };
    let mut hub_digest = Some(digest);

    let keepalive = cfg.keepalive_interval;
    let mut ticker = tokio::time::interval(if keepalive.is_zero() {
        Duration::from_secs(3600)
    } else {
        keepalive
    });
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    let mut outstanding = false;
    let mut renew_at = renewal_instant(&cert);
    let dirty = ctx.relay.as_ref().map(|r| r.dirty().clone());
    let (answers_tx, mut answers) = mpsc::channel::<Response>(64);
    let handlers = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_REQUESTS));
    // Hub requests still running when the session ends are abandoned: the hub has given up too.
    let mut running = tokio::task::JoinSet::new();

    loop {
        if let Some(relay) = ctx.relay.as_deref_mut() {
            // Until the source is complete the relay stays silent; the hub keeps serving what
            // it last stored (marked stale) instead of a half-loaded state.
            if relay.ready()
                && let Some(digest) = hub_digest.take()
            {
                relay.on_welcome(&digest, digest_kind);
            }
            while hub_digest.is_none()
                && let Some(m) = relay.next_delta()
            {
                if tx.send(m).await.is_err() {
                    return Ended::Lost("outbound stream closed".into());
                }
            }
        }
        tokio::select! {
            _ = async { dirty.as_ref().map(|d| d.changed()).expect("guarded").await }, if dirty.is_some() => {}
            Some(answer) = answers.recv() => {
                if tx.send(GatewayMessage { body: Some(gateway_message::Body::Response(answer)) }).await.is_err() {
                    return Ended::Lost("outbound stream closed".into());
                }
            }
            Some(_) = running.join_next(), if !running.is_empty() => {}
            _ = ctx.shutdown.cancelled() => {
                say_goodbye(&tx, &mut inbound, cfg.drain_grace).await;
                return Ended::Shutdown;
            }
            msg = inbound.message() => match msg {
                Ok(Some(m)) => match m.body {
                    Some(hub_message::Body::Ping(p)) => {
                        let pong = Pong { seq: p.seq, ping_sent_at_unix_ms: p.sent_at_unix_ms };
                        if tx.send(GatewayMessage { body: Some(gateway_message::Body::Pong(pong)) }).await.is_err() {
                            return Ended::Lost("outbound stream closed".into());
                        }
                    }
                    Some(hub_message::Body::Pong(p)) => {
                        outstanding = false;
                        *ctx.keepalive_failures = 0;
                        let rtt = Duration::from_millis(crate::util::unix_ms_now().saturating_sub(p.ping_sent_at_unix_ms).max(0) as u64);
                        ctx.status.send_modify(|s| { s.keepalive_failures = 0; s.last_rtt = Some(rtt); });
                    }
                    Some(hub_message::Body::Drain(d)) => {
                        tracing::info!(retry_after_ms = d.retry_after_ms, reason = %d.reason, "hub is draining; reconnecting after its suggested delay");
                        return Ended::Drained(Duration::from_millis(u64::from(d.retry_after_ms)));
                    }
                    Some(hub_message::Body::Rejected(r)) => return rejected(r),
                    Some(hub_message::Body::Ack(a)) => {
                        if let Some(relay) = ctx.relay.as_deref_mut() {
                            for latency in relay.on_ack(a.seq).latencies {
                                ctx.metrics.propagation.observe(latency.as_secs_f64());
                            }
                        }
                    }
                    Some(hub_message::Body::Request(req)) => {
                        let actions = ctx.actions.clone();
                        let answers = answers_tx.clone();
                        let permits = handlers.clone();
                        let requests = ctx.metrics.requests.clone();
                        let sizing = AnswerSizing { chunked: chunked_answers, max_bytes: cfg.max_answer_bytes };
                        running.spawn(async move {
                            let answer = answer_request(actions, permits, req, &requests).await;
                            for piece in sizing.pieces(answer) {
                                if answers.send(piece).await.is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Some(hub_message::Body::Welcome(_)) | None => {}
                },
                Ok(None) => return Ended::Lost("the hub closed the stream".into()),
                Err(status) => return classify_status(&status),
            },
            _ = ticker.tick(), if !keepalive.is_zero() => {
                if outstanding {
                    *ctx.keepalive_failures += 1;
                    let failures = *ctx.keepalive_failures;
                    ctx.status.send_modify(|s| s.keepalive_failures = failures);
                    tracing::warn!(failures, max = cfg.keepalive_max_failures, interval = %humantime::format_duration(keepalive), "no keepalive answer from the hub");
                    if failures >= cfg.keepalive_max_failures {
                        return Ended::KeepaliveExhausted;
                    }
                }
                seq += 1;
                outstanding = true;
                let ping = Ping { seq, sent_at_unix_ms: crate::util::unix_ms_now() };
                if tx.send(GatewayMessage { body: Some(gateway_message::Body::Ping(ping)) }).await.is_err() {
                    return Ended::Lost("outbound stream closed".into());
                }
            }
            _ = tokio::time::sleep_until(renew_at) => {
                match crate::uplink::register::renew(channel.clone(), identity).await {
                    Ok(renewed) => match cfg.store.replace(&renewed).await {
                        Ok(()) => {
                            let info = renewed.cert_info().ok();
                            tracing::info!(gateway_id = %renewed.gateway_id, not_after = %info.as_ref().map(|i| i.not_after.to_string()).unwrap_or_default(), "renewed the gateway certificate");
                            renew_at = info.as_ref().map(renewal_instant).unwrap_or_else(|| retry_soon(cfg));
                            ctx.status.send_modify(|s| s.cert_not_after = info.map(|i| i.not_after));
                            *identity = renewed;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "renewed the certificate but could not store it; will renew again");
                            renew_at = retry_soon(cfg);
                        }
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "certificate renewal failed; retrying");
                        renew_at = retry_soon(cfg);
                    }
                }
            }
        }
    }
}

/// Hub requests handled at once; more wait for a slot (the hub's deadline still applies).
const MAX_CONCURRENT_REQUESTS: usize = 8;

fn request_error(code: request_error::Code, message: impl Into<String>) -> RequestError {
    RequestError {
        code: code as i32,
        message: message.into(),
        missing_policy: String::new(),
    }
}

/// Runs one hub request within its deadline and shapes the answer.
async fn answer_request(
    actions: Option<Arc<dyn crate::relay::actions::Actions>>,
    permits: Arc<tokio::sync::Semaphore>,
    req: crate::wire::proto::Request,
    requests: &prometheus_client::metrics::family::Family<
        super::RequestLabels,
        prometheus_client::metrics::counter::Counter,
    >,
) -> Response {
    let deadline = Duration::from_millis(u64::from(req.deadline_ms.max(1)));
    let kind_name = req.kind.as_ref().map(request_name).unwrap_or("unknown");
    let result = match (actions, req.kind) {
        (None, _) => Err(request_error(
            request_error::Code::Unsupported,
            "this gateway has no Argo CD connection",
        )),
        (_, None) => Err(request_error(
            request_error::Code::Unsupported,
            "unknown request kind (upgrade the gateway)",
        )),
        (Some(actions), Some(kind)) => {
            let work = async {
                let _permit = permits
                    .acquire()
                    .await
                    .map_err(|_| request_error(request_error::Code::Internal, "closing"))?;
                actions.handle(kind, deadline).await
            };
            match tokio::time::timeout(deadline, work).await {
                Ok(r) => r,
                Err(_) => Err(request_error(
                    request_error::Code::Timeout,
                    format!("no answer from Argo CD within {deadline:?}"),
                )),
            }
        }
    };
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => error_code_name(e.code),
    };
    requests
        .get_or_create(&super::RequestLabels {
            kind: kind_name.to_owned(),
            outcome: outcome.to_owned(),
        })
        .inc();
    Response {
        id: req.id,
        result: Some(match result {
            Ok(json) => response::Result::Json(json),
            Err(e) => response::Result::Error(e),
        }),
        more: false,
    }
}

/// How answers travel: in pieces to hubs that take them, whole (up to what any hub decodes) to
/// older ones; never larger than `--max-answer-bytes`, and never in a message the hub would
/// refuse (which would end the session).
#[derive(Debug, Clone, Copy)]
struct AnswerSizing {
    chunked: bool,
    max_bytes: usize,
}

/// The largest answer sent whole to a hub without chunked answers (its decode limit is 4 MiB).
const SINGLE_ANSWER_BYTES: usize = 3 * 1024 * 1024;

impl AnswerSizing {
    fn pieces(self, answer: Response) -> Vec<Response> {
        let id = answer.id;
        let json = match answer.result {
            Some(response::Result::Json(json)) => json,
            _ => return vec![answer],
        };
        let refuse = |message: String| {
            vec![Response {
                id,
                result: Some(response::Result::Error(request_error(
                    request_error::Code::TooLarge,
                    message,
                ))),
                more: false,
            }]
        };
        if json.len() > self.max_bytes {
            return refuse(format!(
                "the answer is {} bytes, over the gateway's limit of {} bytes (flag --max-answer-bytes, Helm gateway.hub.maxAnswerBytes)",
                json.len(),
                self.max_bytes
            ));
        }
        if json.len() <= ANSWER_PIECE_BYTES {
            return vec![Response {
                id,
                result: Some(response::Result::Json(json)),
                more: false,
            }];
        }
        if !self.chunked {
            if json.len() <= SINGLE_ANSWER_BYTES {
                return vec![Response {
                    id,
                    result: Some(response::Result::Json(json)),
                    more: false,
                }];
            }
            return refuse(format!(
                "the answer is {} bytes and this hub takes at most {SINGLE_ANSWER_BYTES} in one piece: upgrade the hub",
                json.len()
            ));
        }
        let count = json.len().div_ceil(ANSWER_PIECE_BYTES);
        json.chunks(ANSWER_PIECE_BYTES)
            .enumerate()
            .map(|(i, piece)| Response {
                id,
                result: Some(response::Result::Json(piece.to_vec())),
                more: i + 1 < count,
            })
            .collect()
    }
}

fn retry_soon(cfg: &RunConfig) -> tokio::time::Instant {
    tokio::time::Instant::now() + crate::util::jitter(cfg.renew_retry / 2, cfg.renew_retry)
}

/// When to renew: at 60% of the lifetime (before the two-thirds deadline), as a monotonic instant.
fn renewal_instant(cert: &crate::certs::CertInfo) -> tokio::time::Instant {
    let secs_until = cert.renew_at().as_second() - jiff::Timestamp::now().as_second();
    tokio::time::Instant::now() + Duration::from_secs(secs_until.max(0) as u64)
}

fn rejected(r: crate::wire::proto::Rejected) -> Ended {
    match rejected::Reason::try_from(r.reason) {
        Ok(rejected::Reason::Revoked) => Ended::Revoked(r.message),
        Ok(rejected::Reason::IdentityCopied) => Ended::Copied(r.message),
        Ok(rejected::Reason::Overloaded) => Ended::RetryAfter(Duration::from_millis(u64::from(r.retry_after_ms))),
        Ok(rejected::Reason::Replaced) => Ended::Lost(format!("another session took over: {}", r.message)),
        _ => Ended::Refused(r.message),
    }
}

/// Sends a goodbye and waits briefly for the hub to close its side, so it records the
/// disconnect at once instead of after a timeout.
async fn say_goodbye(
    tx: &mpsc::Sender<GatewayMessage>,
    inbound: &mut tonic::Streaming<crate::wire::proto::HubMessage>,
    grace: Duration,
) {
    let bye = GatewayMessage {
        body: Some(gateway_message::Body::Goodbye(Goodbye {
            reason: "shutting down".into(),
        })),
    };
    if tx.send(bye).await.is_err() {
        return;
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        match tokio::time::timeout(deadline - Instant::now(), inbound.message()).await {
            Ok(Ok(Some(_))) => continue,
            _ => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(bytes: usize) -> Response {
        Response {
            id: 7,
            result: Some(response::Result::Json(vec![b'x'; bytes])),
            more: false,
        }
    }

    fn error_code(r: &Response) -> Option<i32> {
        match &r.result {
            Some(response::Result::Error(e)) => Some(e.code),
            _ => None,
        }
    }

    #[test]
    fn answers_travel_in_pieces_or_are_refused_typed() {
        let chunked = AnswerSizing {
            chunked: true,
            max_bytes: 8 * 1024 * 1024,
        };
        let pieces = chunked.pieces(answer(ANSWER_PIECE_BYTES * 2 + 10));
        assert_eq!(pieces.len(), 3);
        assert!(pieces[0].more && pieces[1].more && !pieces[2].more);
        assert!(pieces.iter().all(|p| p.id == 7));
        let total: usize = pieces
            .iter()
            .map(|p| match &p.result {
                Some(response::Result::Json(b)) => b.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(total, ANSWER_PIECE_BYTES * 2 + 10);
        assert_eq!(chunked.pieces(answer(10)).len(), 1);

        let over = chunked.pieces(answer(9 * 1024 * 1024));
        assert_eq!(error_code(&over[0]), Some(request_error::Code::TooLarge as i32));
        let Some(response::Result::Error(e)) = &over[0].result else {
            unreachable!()
        };
        assert!(e.message.contains("--max-answer-bytes") && e.message.contains("gateway.hub.maxAnswerBytes"));

        // An older hub takes one piece of at most a few MiB.
        let whole = AnswerSizing {
            chunked: false,
            max_bytes: 64 * 1024 * 1024,
        };
        assert_eq!(whole.pieces(answer(2 * 1024 * 1024)).len(), 1);
        let refused = whole.pieces(answer(5 * 1024 * 1024));
        assert_eq!(error_code(&refused[0]), Some(request_error::Code::TooLarge as i32));
    }
}
