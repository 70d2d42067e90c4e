//! The gateway's session with the hub and the reconnect loop around it: registration when there
//! is no identity, hello and welcome, keepalive, certificate renewal, relay and hub requests
//! over the stream ([`session`]), and full-jitter backoff, drain hints and revocation between
//! sessions ([`run`]). Every call it makes to the hub goes through [`crate::uplink`].

pub mod session;

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::identity::Identity;
use crate::identity::store::IdentityStore;
use crate::uplink::register::{RegistrationArgs, register};
use crate::uplink::{HubConfig, UplinkArgs, UplinkConfig};
use crate::util::Backoff;
use session::{Ended, SessionCtx};

/// Flags of the tunnel (part of `argocd-gateway run`).
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Hub address, trust and identity location.
    #[command(flatten)]
    pub uplink: UplinkArgs,
    /// How to register when there is no identity yet.
    #[command(flatten)]
    pub registration: RegistrationArgs,
    /// Application-level keepalive interval; 0 turns it off (Helm gateway.hub.keepAlive.intervalSeconds).
    #[arg(long, env = "ARGOCD_GATEWAY_KEEPALIVE_INTERVAL", default_value = "30", value_parser = crate::util::parse_duration)]
    pub keepalive_interval: Duration,
    /// Exit non-zero after this many consecutive unanswered keepalives (Helm
    /// gateway.hub.keepAlive.maxConsecutiveFailures).
    #[arg(long, env = "ARGOCD_GATEWAY_KEEPALIVE_MAX_FAILURES", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub keepalive_max_failures: u32,
    /// Largest answer to a hub request (resource tree, managed resources, logs), in bytes;
    /// larger ones are refused with a typed "too large" error (Helm gateway.hub.maxAnswerBytes).
    #[arg(long, env = "ARGOCD_GATEWAY_MAX_ANSWER_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_answer_bytes: usize,
    /// Largest JSON of one relayed application or cluster, in bytes; a larger one is relayed
    /// as a stub marked "tooLarge" with its size (Helm gateway.hub.maxEntityBytes).
    #[arg(long, env = "ARGOCD_GATEWAY_MAX_ENTITY_BYTES", default_value_t = 3 * 1024 * 1024)]
    pub max_entity_bytes: usize,
    /// Speak this protocol version to the hub (the current one by default; the previous one
    /// behaves as a gateway of that version did: no ApplicationSets, no projects), for testing
    /// version skew.
    #[arg(long, env = "ARGOCD_GATEWAY_PROTOCOL_VERSION", default_value_t = crate::wire::PROTOCOL_VERSION, value_parser = crate::wire::codes::parse_pinned_protocol)]
    pub protocol_version: u32,
}

/// Validated settings of the tunnel.
#[derive(Clone)]
pub struct RunConfig {
    /// Hub endpoint and trust.
    pub hub: HubConfig,
    /// Extra trusted CAs.
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// The identity store.
    pub store: Arc<dyn IdentityStore>,
    /// How to register when no identity exists.
    pub registration: RegistrationArgs,
    /// Keepalive interval (zero = off).
    pub keepalive_interval: Duration,
    /// Consecutive keepalive failures before exiting.
    pub keepalive_max_failures: u32,
    /// Largest answer sent to the hub; larger ones are refused typed.
    pub max_answer_bytes: usize,
    /// First reconnect delay ceiling.
    pub backoff_base: Duration,
    /// Largest reconnect delay ceiling.
    pub backoff_max: Duration,
    /// A session this long resets the backoff.
    pub healthy_after: Duration,
    /// How long to wait for the hub after a goodbye.
    pub drain_grace: Duration,
    /// How soon to retry a failed renewal.
    pub renew_retry: Duration,
    /// The protocol version spoken (`--protocol-version`).
    pub protocol_version: u32,
}

impl RunArgs {
    /// The tunnel's settings from validated uplink settings and the opened identity store.
    pub fn config(&self, uplink: UplinkConfig, store: Arc<dyn IdentityStore>) -> RunConfig {
        RunConfig {
            hub: uplink.hub,
            extra_roots: uplink.extra_roots,
            store,
            registration: self.registration.clone(),
            keepalive_interval: self.keepalive_interval,
            keepalive_max_failures: self.keepalive_max_failures,
            max_answer_bytes: self.max_answer_bytes,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            healthy_after: Duration::from_secs(60),
            drain_grace: Duration::from_secs(5),
            renew_retry: Duration::from_secs(60),
            protocol_version: self.protocol_version,
        }
    }
}

/// The tunnel's observable state, for readiness, metrics and tests.
#[derive(Debug, Clone, Default)]
pub struct TunnelStatus {
    /// A session is established.
    pub connected: bool,
    /// The registered gateway id.
    pub gateway_id: Option<String>,
    /// The current or last session id.
    pub session_id: Option<String>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Reconnect attempts so far.
    pub reconnects: u64,
    /// Consecutive unanswered keepalives.
    pub keepalive_failures: u32,
    /// Last keepalive round trip.
    pub last_rtt: Option<Duration>,
    /// Client certificate expiry.
    pub cert_not_after: Option<jiff::Timestamp>,
    /// The transport of the current or last session (`h2` or `websocket`).
    pub transport: Option<&'static str>,
    /// The hub's capabilities, from its last welcome.
    pub hub_capabilities: Vec<String>,
}

/// Why the tunnel gave up for good.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Keepalive failed too often in a row.
    #[error(
        "the hub did not answer {failures} consecutive keepalives (every {interval:?}); exiting so the gateway is restarted (flags --keepalive-interval / --keepalive-max-failures, Helm gateway.hub.keepAlive.intervalSeconds / maxConsecutiveFailures)"
    )]
    KeepaliveFailed {
        /// Failures counted.
        failures: u32,
        /// The interval.
        interval: Duration,
    },
}

/// Labels of the hub-request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct RequestLabels {
    /// Request kind.
    pub kind: String,
    /// `ok` or the error code.
    pub outcome: String,
}

/// Tunnel metrics, shared with the admin server.
#[derive(Debug, Clone)]
pub struct TunnelMetrics {
    /// 1 while a session is up.
    pub connected: prometheus_client::metrics::gauge::Gauge,
    /// Sessions that ended and were retried.
    pub reconnects: prometheus_client::metrics::counter::Counter,
    /// Argo CD event to hub acknowledgement, seconds.
    pub propagation: prometheus_client::metrics::histogram::Histogram,
    /// Hub requests handled, by kind and outcome.
    pub requests:
        prometheus_client::metrics::family::Family<RequestLabels, prometheus_client::metrics::counter::Counter>,
}

impl Default for TunnelMetrics {
    fn default() -> Self {
        Self {
            connected: Default::default(),
            reconnects: Default::default(),
            propagation: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 14),
            ),
            requests: Default::default(),
        }
    }
}

impl TunnelMetrics {
    /// Registers the metrics.
    pub fn register(&self, r: &mut prometheus_client::registry::Registry) {
        r.register(
            "argocd_gateway_hub_connected",
            "1 while the hub session is up",
            self.connected.clone(),
        );
        r.register(
            "argocd_gateway_hub_reconnects",
            "Hub sessions that ended and were retried",
            self.reconnects.clone(),
        );
        r.register_with_unit(
            "argocd_gateway_propagation",
            "Time from an Argo CD change to the hub's acknowledgement",
            prometheus_client::registry::Unit::Seconds,
            self.propagation.clone(),
        );
        r.register(
            "argocd_gateway_hub_requests",
            "Requests from the hub, by kind and outcome",
            self.requests.clone(),
        );
    }
}

/// What the tunnel carries besides its own session: the relay and the request handler.
#[derive(Default)]
pub struct Attachments {
    /// The state relay.
    pub relay: Option<crate::relay::engine::Relay>,
    /// The request handler.
    pub actions: Option<Arc<dyn crate::relay::actions::Actions>>,
    /// Metrics.
    pub metrics: TunnelMetrics,
}

/// Sleeps unless shutdown comes first; returns false on shutdown.
async fn pause(shutdown: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// Keeps a session with the hub until shutdown: registers when there is no identity, reconnects
/// with full-jitter backoff, follows drain hints, and forgets a revoked identity.
pub async fn run(
    cfg: RunConfig,
    shutdown: CancellationToken,
    status: watch::Sender<TunnelStatus>,
    mut attach: Attachments,
) -> Result<(), RunError> {
    run_with(cfg, shutdown, status, &mut attach).await
}

/// Like [`run`], borrowing the attachments so a caller can run the tunnel again later with
/// the same relay (a leader that was demoted and elected again resumes where it left off).
pub async fn run_with(
    cfg: RunConfig,
    shutdown: CancellationToken,
    status: watch::Sender<TunnelStatus>,
    attach: &mut Attachments,
) -> Result<(), RunError> {
    let mut backoff = Backoff::new(cfg.backoff_base, cfg.backoff_max);
    let mut keepalive_failures = 0u32;
    let mut identity: Option<Identity> = None;
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        let mut id = match identity.take() {
            Some(id) => id,
            None => match acquire_identity(&cfg, &status).await {
                Ok(id) => id,
                Err(delay) => {
                    if !pause(&shutdown, delay).await {
                        return Ok(());
                    }
                    continue;
                }
            },
        };
        status.send_modify(|s| {
            s.gateway_id = Some(id.gateway_id.clone());
            s.cert_not_after = id.cert_info().ok().map(|c| c.not_after);
        });
        let started = Instant::now();
        let ctx = SessionCtx {
            relay: attach.relay.as_mut(),
            actions: attach.actions.clone(),
            metrics: &attach.metrics,
            cfg: &cfg,
            keepalive_failures: &mut keepalive_failures,
            status: &status,
            shutdown: &shutdown,
        };
        let ended = session::run_once(ctx, &mut id).await;
        attach.metrics.connected.set(0);
        attach.metrics.reconnects.inc();
        status.send_modify(|s| {
            s.connected = false;
            s.reconnects += 1;
        });
        let lasted = started.elapsed();
        if lasted >= cfg.healthy_after {
            backoff.reset();
        }
        // How to wait depends on what happened: a hub that is simply not there costs nothing to
        // try again soon; a hub that answered no is given room (exponential backoff); a lost
        // session waits its backoff but comes back as soon as the hub accepts connections again.
        let wait = match ended {
            Ended::Shutdown => {
                tracing::info!("said goodbye to the hub");
                return Ok(());
            }
            Ended::KeepaliveExhausted => {
                return Err(RunError::KeepaliveFailed {
                    failures: keepalive_failures,
                    interval: cfg.keepalive_interval,
                });
            }
            Ended::Drained(after) => {
                backoff.reset();
                identity = Some(id);
                Wait::Fixed(after)
            }
            Ended::RetryAfter(after) => {
                tracing::info!(retry_after = %humantime::format_duration(after), "the hub is busy accepting other sessions; coming back when it asked");
                identity = Some(id);
                Wait::Fixed(after + crate::util::jitter(Duration::ZERO, Duration::from_millis(250)))
            }
            Ended::Revoked(msg) => {
                tracing::error!(
                    gateway_id = %id.gateway_id,
                    hub_said = %msg,
                    store = %cfg.store.describe(),
                    "this gateway was revoked at the hub; its identity is removed. Register again with a new token: `argocd-gateway hub token create`, then set --registration-token-file (Helm registration.token)"
                );
                status.send_modify(|s| s.last_error = Some(format!("revoked by the hub: {msg}")));
                if let Err(e) = cfg.store.remove(&id.gateway_id).await {
                    tracing::error!(error = %e, "could not remove the revoked identity");
                    identity = Some(id);
                }
                // A revoked gateway must not hammer the hub: wait as long as the backoff allows.
                Wait::Fixed(cfg.backoff_max)
            }
            Ended::Expired(msg) => match cfg.store.load().await {
                // Another replica renewed the certificate meanwhile: use the stored one.
                Ok(Some(stored)) if stored.gateway_id == id.gateway_id && stored.cert_pem != id.cert_pem => {
                    tracing::info!(gateway_id = %id.gateway_id, "the certificate was renewed by another replica; using the stored one");
                    identity = Some(stored);
                    Wait::Fixed(crate::util::jitter(Duration::ZERO, cfg.backoff_base))
                }
                _ => {
                    let text = format!(
                        "the identity has expired ({msg}): register again with a new token (`argocd-gateway hub token create`, then Helm registration.token or flag --registration-token-file)"
                    );
                    tracing::error!(gateway_id = %id.gateway_id, store = %cfg.store.describe(), "{text}; the expired identity is removed");
                    if let Err(e) = cfg.store.remove(&id.gateway_id).await {
                        tracing::error!(error = %e, "could not remove the expired identity");
                        identity = Some(id);
                    }
                    status.send_modify(|s| s.last_error = Some(text));
                    Wait::Fixed(cfg.backoff_max)
                }
            },
            Ended::Copied(msg) => {
                record_failure(&status, &format!("the hub refused this gateway: {msg}"), true);
                identity = Some(id);
                Wait::Fixed(backoff.next_delay())
            }
            Ended::DialFailed(e) if e.is_unreachable() => {
                record_failure(&status, &e.to_string(), false);
                identity = Some(id);
                Wait::Fixed(crate::util::jitter(QUICK_RETRY.0, QUICK_RETRY.1))
            }
            Ended::DialFailed(e) => {
                record_failure(&status, &e.to_string(), e.is_config());
                identity = Some(id);
                Wait::Fixed(backoff.next_delay())
            }
            Ended::Downgraded(msg) => {
                tracing::warn!(
                    hub_said = %msg,
                    protocol_version = crate::wire::MIN_PROTOCOL_VERSION,
                    "the hub speaks the previous protocol version; speaking it too (ApplicationSets, projects and the WebSocket transport wait for a hub upgrade)"
                );
                identity = Some(id);
                Wait::Fixed(crate::util::jitter(Duration::ZERO, cfg.backoff_base))
            }
            Ended::Refused(msg) => {
                record_failure(&status, &format!("the hub refused the session: {msg}"), true);
                identity = Some(id);
                Wait::Fixed(backoff.next_delay())
            }
            Ended::Lost(msg) => {
                record_failure(&status, &format!("lost the hub session: {msg}"), false);
                identity = Some(id);
                Wait::UntilBack {
                    at_most: backoff.next_delay(),
                    // A session that broke at once must not turn into a tight loop against a hub
                    // that accepts and drops: only a restart (seen refusing) shortens the wait.
                    early: lasted >= STABLE_SESSION,
                }
            }
        };
        let (at_most, early) = match wait {
            Wait::Fixed(d) => (d, false),
            Wait::UntilBack { at_most, early } => (at_most, early),
        };
        tracing::debug!(wait = %humantime::format_duration(at_most), until_hub_back = early, "reconnecting after a wait");
        let go_on = match wait {
            Wait::Fixed(d) => pause(&shutdown, d).await,
            Wait::UntilBack { at_most, early } => wait_until_back(&cfg, &shutdown, at_most, early).await,
        };
        if !go_on {
            return Ok(());
        }
    }
}

/// The retry delay range after the hub could not be reached at all: cheap for the hub.
const QUICK_RETRY: (Duration, Duration) = (Duration::from_millis(400), Duration::from_millis(1500));

/// The interval between probes of a hub that refuses connections (see [`wait_until_back`]).
const PROBE_WHILE_DOWN: (Duration, Duration) = (Duration::from_millis(200), Duration::from_millis(400));

/// The interval between probes of a hub that accepts while this gateway must still wait.
const PROBE_WHILE_UP: (Duration, Duration) = (Duration::from_millis(700), Duration::from_millis(1300));

/// A session at least this long means the hub accepted and kept it.
const STABLE_SESSION: Duration = Duration::from_secs(5);

/// How to wait before the next attempt.
#[derive(Debug)]
enum Wait {
    /// Exactly this long (jitter included).
    Fixed(Duration),
    /// At most this long, but no longer than until the hub accepts TCP connections again after
    /// being seen down (or at all, when `early`).
    UntilBack {
        /// The backoff's delay.
        at_most: Duration,
        /// Whether an accepting hub ends the wait even if it was not seen down.
        early: bool,
    },
}

/// Waits up to `at_most`, probing the hub's port (a TCP connect costs the hub nothing), and
/// returns as soon as it accepts again after having refused, so a gateway rejoins a restarted
/// hub within a second whatever its backoff grew to. Returns false on shutdown. Through a proxy
/// nothing is probed: the proxy, not the hub, would answer.
///
/// Probes are frequent (every 200–400 ms) while the port refuses: a refused connect is answered
/// by the hub's kernel, not the hub, and how soon a restarted hub's fleet is back is bounded by
/// its slowest prober. A hub that accepts while this gateway must still wait out its backoff is
/// probed about once a second, so a fleet that cannot stay connected does not load it.
async fn wait_until_back(cfg: &RunConfig, shutdown: &CancellationToken, at_most: Duration, early: bool) -> bool {
    let deadline = Instant::now() + at_most;
    if crate::uplink::dial::proxy_configured(&cfg.hub.endpoint) {
        return pause(shutdown, at_most).await;
    }
    let mut seen_down = false;
    // Until a probe found the hub accepting, it is presumed down: the session just ended.
    let mut seen_up = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        let (lo, hi) = if seen_up { PROBE_WHILE_UP } else { PROBE_WHILE_DOWN };
        let step = left.min(crate::util::jitter(lo, hi));
        if !pause(shutdown, step).await {
            return false;
        }
        if Instant::now() >= deadline {
            return true;
        }
        let target = (cfg.hub.endpoint.host.as_str(), cfg.hub.endpoint.port);
        let up = tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(target))
            .await
            .is_ok_and(|r| r.is_ok());
        seen_up = up;
        if !up {
            seen_down = true;
        } else if seen_down || early {
            tracing::debug!("the hub accepts connections again; reconnecting now");
            return true;
        }
    }
}

fn record_failure(status: &watch::Sender<TunnelStatus>, msg: &str, severe: bool) {
    if severe {
        tracing::error!(error = %msg, "hub connection failed");
    } else {
        tracing::warn!(error = %msg, "hub connection failed");
    }
    status.send_modify(|s| s.last_error = Some(msg.to_owned()));
}

/// Loads the stored identity or registers; on failure returns how long to wait.
async fn acquire_identity(cfg: &RunConfig, status: &watch::Sender<TunnelStatus>) -> Result<Identity, Duration> {
    match cfg.store.load().await {
        Ok(Some(id)) => return Ok(id),
        Ok(None) => {}
        Err(e) => {
            record_failure(status, &e.to_string(), true);
            return Err(cfg.backoff_max);
        }
    }
    match register(&cfg.hub, &cfg.extra_roots, cfg.store.as_ref(), &cfg.registration).await {
        Ok(id) => {
            tracing::info!(gateway_id = %id.gateway_id, name = %id.name, store = %cfg.store.describe(), "registered with the hub");
            Ok(id)
        }
        Err(e) => {
            let wait = if e.needs_new_token() {
                cfg.backoff_max
            } else {
                crate::util::jitter(cfg.backoff_base, cfg.backoff_max / 4)
            };
            record_failure(status, &e.to_string(), true);
            Err(wait)
        }
    }
}
