//! Dialing the hub one step at a time (DNS, TCP, proxy, TLS, HTTP/2) so a failure says which
//! step failed and what to change. DNS is resolved on every dial: a hub that moved is found
//! again without a restart. `HTTPS_PROXY`/`NO_PROXY` are honoured with HTTP CONNECT.
//!
//! Where only HTTP/1.1 gets through (a proxy or load balancer without HTTP/2), the same gRPC
//! connection travels inside a WebSocket ([`crate::wire::websocket`]): TLS offers `http/1.1`,
//! an upgrade request goes to the hub's gRPC port, and HTTP/2 runs over the binary messages.
//! `--hub-transport auto` tries HTTP/2 first and falls back once, remembering it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use super::config::{HubConfig, HubEndpoint, Transport, TransportMemory};
use super::trust::{FailureSlot, HubVerifier, TrustFailure};
use crate::identity::Identity;
use crate::util::error_chain;

/// A dial failure, by step, with the fix in its message.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The host name did not resolve.
    #[error(
        "cannot resolve hub host {host:?}: {source}; check --hub-url (Helm gateway.hub.serverGrpcUrl) and the cluster's DNS"
    )]
    Dns {
        /// The host.
        host: String,
        /// The resolver error.
        source: std::io::Error,
    },
    /// No resolved address accepted a TCP connection.
    #[error(
        "cannot open a TCP connection to the hub at {addr}: {source}; check the hub is running and that egress to it is allowed (flag --hub-url, Helm gateway.hub.serverGrpcUrl)"
    )]
    Tcp {
        /// The address tried last.
        addr: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// The HTTP CONNECT proxy refused or failed.
    #[error(
        "HTTPS proxy {proxy} could not tunnel to the hub: {reason}; check HTTPS_PROXY / NO_PROXY (a proxy that passes only HTTP/1.1 needs --hub-transport websocket, Helm gateway.hub.transport=websocket)"
    )]
    Proxy {
        /// The proxy address.
        proxy: String,
        /// What went wrong.
        reason: String,
    },
    /// The hub's certificate was refused.
    #[error(transparent)]
    Trust(#[from] TrustFailure),
    /// The peer did not answer TLS: most likely a plaintext hub.
    #[error(
        "the hub at {addr} did not answer with TLS (it seems to speak plaintext); if the hub runs with --plaintext or TLS ends at a proxy in front of it, set --hub-plaintext (Helm gateway.hub.plaintext=true) and use an http:// URL"
    )]
    NotTls {
        /// The hub address.
        addr: String,
    },
    /// The TLS handshake failed for another reason.
    #[error("TLS handshake with the hub at {addr} failed: {reason}")]
    Tls {
        /// The hub address.
        addr: String,
        /// rustls' account.
        reason: String,
    },
    /// The peer answered TLS on a plaintext connection.
    #[error(
        "the hub at {addr} answered with TLS but --hub-plaintext is set; unset --hub-plaintext (Helm gateway.hub.plaintext=false) and use an https:// URL"
    )]
    UnexpectedTls {
        /// The hub address.
        addr: String,
    },
    /// TLS worked but HTTP/2 did not.
    #[error(
        "HTTP/2 with the hub at {addr} failed: {reason}; anything between the gateway and the hub must pass HTTP/2 (gRPC), or carry the session over HTTP/1.1 with --hub-transport websocket (Helm gateway.hub.transport=websocket)"
    )]
    Http2 {
        /// The hub address.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// The WebSocket upgrade failed.
    #[error(
        "the WebSocket upgrade with the hub at {addr} failed: {reason}; the hub must speak protocol 3 or later (it then names the \"websocket\" capability) and anything in between must pass WebSocket upgrades (flag --hub-transport, Helm gateway.hub.transport)"
    )]
    WebSocket {
        /// The hub address.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// `auto`: HTTP/2 failed and so did the WebSocket fallback.
    #[error("{h2}; the WebSocket fallback failed too: {websocket}")]
    BothTransports {
        /// The HTTP/2 failure.
        h2: Box<DialError>,
        /// The WebSocket failure.
        websocket: Box<DialError>,
    },
    /// A step took longer than --hub-connect-timeout.
    #[error("timed out during {step} with the hub at {addr} after {timeout:?} (flag --hub-connect-timeout)")]
    Timeout {
        /// The step.
        step: &'static str,
        /// The hub address.
        addr: String,
        /// The limit.
        timeout: Duration,
    },
    /// The client TLS configuration could not be built (bad identity material).
    #[error("cannot set up the hub connection: {0}")]
    Setup(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl DialError {
    /// True when the hub was simply not there (refused, reset or silent TCP): retrying soon
    /// costs it nothing.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Self::Tcp { .. }
                | Self::Timeout {
                    step: "TCP connect",
                    ..
                }
        )
    }

    /// True when the failure is HTTP/2's own (something in between does not pass it), so the
    /// WebSocket transport may get through where HTTP/2 did not.
    pub fn is_http2_blocked(&self) -> bool {
        match self {
            Self::Http2 { .. } | Self::Proxy { .. } | Self::Tls { .. } => true,
            Self::Timeout { step, .. } => step.starts_with("HTTP/2"),
            _ => false,
        }
    }

    /// True when retrying cannot help until the configuration changes.
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            Self::Trust(_) | Self::NotTls { .. } | Self::UnexpectedTls { .. } | Self::Setup(_)
        )
    }
}

/// Opens HTTP/2 channels to the hub with the configured trust and, once registered, the
/// gateway's client certificate.
#[derive(Clone)]
pub struct Dialer {
    endpoint: HubEndpoint,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The same TLS settings offering HTTP/1.1, for the WebSocket transport.
    ws_tls: Option<Arc<rustls::ClientConfig>>,
    failure: FailureSlot,
    timeout: Duration,
    transport: Transport,
    memory: Arc<TransportMemory>,
    /// Whether the last successful dial went through a WebSocket.
    via_websocket: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Dialer {
    /// A dialer for `cfg`, trusting system roots, `extra_roots` and (when given) the identity's
    /// hub CA, and presenting the identity's certificate for mTLS.
    pub fn new(
        cfg: &HubConfig,
        extra_roots: &[CertificateDer<'static>],
        identity: Option<&Identity>,
    ) -> Result<Self, DialError> {
        let failure: FailureSlot = Arc::new(Mutex::new(None));
        let tls = if cfg.endpoint.plaintext {
            None
        } else {
            let mut roots: Vec<CertificateDer<'static>> = crate::tls::system_roots().to_vec();
            roots.extend_from_slice(extra_roots);
            if let Some(id) = identity {
                roots.extend(crate::tls::parse_certs_pem(id.ca_pem.as_bytes(), "stored hub CA").map_err(setup)?);
            }
            let verifier = HubVerifier::new(&roots, cfg.pin.clone(), cfg.ca_fingerprint.clone(), failure.clone())
                .map_err(setup)?;
            let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(setup)?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(crate::tls::Verifier::new(verifier)));
            let mut config = match identity {
                Some(id) => {
                    let chain =
                        crate::tls::parse_certs_pem(id.cert_pem.as_bytes(), "gateway certificate").map_err(setup)?;
                    let key =
                        crate::tls::parse_key_pem(id.key_pem.expose().as_bytes(), "gateway key").map_err(setup)?;
                    builder.with_client_auth_cert(chain, key).map_err(setup)?
                }
                None => builder.with_no_client_auth(),
            };
            config.alpn_protocols = vec![b"h2".to_vec()];
            Some(config)
        };
        let ws_tls = tls.clone().map(|mut c| {
            c.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(c)
        });
        Ok(Self {
            endpoint: cfg.endpoint.clone(),
            tls: tls.map(Arc::new),
            ws_tls,
            failure,
            timeout: cfg.connect_timeout,
            transport: cfg.transport,
            memory: cfg.memory.clone(),
            via_websocket: Default::default(),
        })
    }

    /// The transport the last successful dial used (`h2` or `websocket`).
    pub fn transport_used(&self) -> Transport {
        if self.via_websocket.load(Ordering::Relaxed) {
            Transport::Websocket
        } else {
            Transport::H2
        }
    }

    /// Whether `auto` fell back to the WebSocket in this process.
    pub fn fell_back(&self) -> bool {
        self.memory.fell_back.load(Ordering::Relaxed)
    }

    /// The hub endpoint.
    pub fn endpoint(&self) -> &HubEndpoint {
        &self.endpoint
    }

    /// Dials with the configured transport and completes the HTTP/2 handshake. The channel
    /// re-dials by itself if the connection drops later (with fresh DNS), but sessions open a
    /// new one per attempt.
    pub async fn connect(&self) -> Result<Channel, DialError> {
        let websocket = match self.transport {
            Transport::H2 => false,
            Transport::Websocket => true,
            Transport::Auto => self.memory.fell_back.load(Ordering::Relaxed),
        };
        let result = self.connect_with(websocket).await;
        let result = match result {
            Err(h2) if self.transport == Transport::Auto && !websocket && h2.is_http2_blocked() => {
                if self.memory.hub_without_websocket.load(Ordering::Relaxed) {
                    return Err(h2);
                }
                match self.connect_with(true).await {
                    Ok(c) => {
                        if !self.memory.fell_back.swap(true, Ordering::Relaxed) {
                            tracing::warn!(
                                hub = %self.endpoint.url(),
                                http2_error = %h2,
                                "HTTP/2 to the hub does not get through; using the WebSocket transport from now on (set --hub-transport websocket, Helm gateway.hub.transport=websocket, to skip the HTTP/2 attempt)"
                            );
                        }
                        Ok(c)
                    }
                    Err(ws) => Err(DialError::BothTransports {
                        h2: Box::new(h2),
                        websocket: Box::new(ws),
                    }),
                }
            }
            other => other,
        };
        if result.is_ok() {
            self.via_websocket.store(
                websocket || self.memory.fell_back.load(Ordering::Relaxed) && self.transport == Transport::Auto,
                Ordering::Relaxed,
            );
        }
        result
    }

    async fn connect_with(&self, websocket: bool) -> Result<Channel, DialError> {
        let attempt = Arc::new(Mutex::new(None::<DialError>));
        let sniffed = Arc::new(AtomicU16::new(NOTHING_READ));
        let this = self.clone();
        let (attempt_c, sniffed_c) = (attempt.clone(), sniffed.clone());
        let connector = tower::service_fn(move |_uri: http::Uri| {
            let this = this.clone();
            let attempt = attempt_c.clone();
            let sniffed = sniffed_c.clone();
            async move {
                match this.open_stream(sniffed, websocket).await {
                    Ok(io) => Ok(io),
                    Err(e) => {
                        let msg = e.to_string();
                        if let Ok(mut slot) = attempt.lock() {
                            *slot = Some(e);
                        }
                        Err(std::io::Error::other(msg))
                    }
                }
            }
        });
        let addr = self.endpoint.authority();
        // The connector does TLS itself, so the endpoint URI is http://; the origin makes
        // requests carry the scheme the hub really sees.
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(setup)?
            .origin(self.endpoint.url().parse().map_err(setup)?)
            .user_agent(format!("argocd-gateway/{}", crate::VERSION))
            .map_err(setup)?
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        let step_error = async |reason: String| {
            if let Some(step) = attempt.lock().ok().and_then(|mut s| s.take()) {
                return step;
            }
            if self.endpoint.plaintext && (looks_like_tls(sniffed.load(Ordering::Relaxed)) || self.speaks_tls().await) {
                return DialError::UnexpectedTls { addr: addr.clone() };
            }
            DialError::Http2 {
                addr: addr.clone(),
                reason,
            }
        };
        let channel = match tokio::time::timeout(self.timeout * 4, endpoint.connect_with_connector(connector)).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(e)) => return Err(step_error(error_chain(&e)).await),
            Err(_) => {
                return Err(DialError::Timeout {
                    step: "HTTP/2 handshake",
                    addr,
                    timeout: self.timeout * 4,
                });
            }
        };
        // hyper's handshake does not wait for the server's answer, so a standard gRPC health
        // check proves HTTP/2 and gRPC really work end to end (and that this is a hub).
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let check = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() });
        match tokio::time::timeout(self.timeout, check).await {
            Ok(Ok(_)) => Ok(channel),
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => Err(DialError::Http2 {
                addr,
                reason: "the server speaks gRPC but is not an argocd-gateway hub (no health service)".into(),
            }),
            Ok(Err(status)) => Err(step_error(format!("{}: {}", status.code(), error_chain(&status))).await),
            Err(_) => Err(DialError::Timeout {
                step: "HTTP/2 health check",
                addr,
                timeout: self.timeout,
            }),
        }
    }

    /// After a failed plaintext dial: does the server answer a TLS ClientHello? A TLS server
    /// often just closes on an HTTP/2 preface, so the failed dial alone cannot tell.
    async fn speaks_tls(&self) -> bool {
        let probe = async {
            let tcp = self.direct().await.ok()?;
            let first = Arc::new(AtomicU16::new(NOTHING_READ));
            let sniff = Sniff {
                inner: tcp,
                first: first.clone(),
            };
            let verifier = HubVerifier::new(&[], None, None, Arc::new(Mutex::new(None))).ok()?;
            let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .ok()?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(crate::tls::Verifier::new(verifier)))
                .with_no_client_auth();
            let name = ServerName::try_from(self.endpoint.host.clone()).ok()?;
            // The handshake fails on trust (no roots); only the server's first byte matters.
            let _ = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, sniff)
                .await;
            Some(first.load(Ordering::Relaxed) == 0x16)
        };
        tokio::time::timeout(self.timeout, probe)
            .await
            .ok()
            .flatten()
            .unwrap_or(false)
    }

    async fn open_stream(&self, sniffed: Arc<AtomicU16>, websocket: bool) -> Result<TokioIo<Conn>, DialError> {
        let base = self.open_base(sniffed, websocket).await?;
        if !websocket {
            return Ok(TokioIo::new(tokio_util::either::Either::Left(base)));
        }
        let addr = self.endpoint.authority();
        let scheme = if self.endpoint.plaintext { "ws" } else { "wss" };
        let ws_err = |reason: String| DialError::WebSocket {
            addr: addr.clone(),
            reason,
        };
        let request = http::Request::builder()
            .method("GET")
            .uri(format!("{scheme}://{addr}{}", crate::wire::websocket::PATH))
            .header("Host", &addr)
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header(
                "Sec-WebSocket-Key",
                tokio_tungstenite::tungstenite::handshake::client::generate_key(),
            )
            .header("Sec-WebSocket-Protocol", crate::wire::websocket::SUBPROTOCOL)
            .header("User-Agent", format!("argocd-gateway/{}", crate::VERSION))
            .body(())
            .map_err(|e| ws_err(e.to_string()))?;
        let upgrade =
            tokio_tungstenite::client_async_with_config(request, base, Some(crate::wire::websocket::config()));
        let ws = match tokio::time::timeout(self.timeout, upgrade).await {
            Err(_) => {
                return Err(DialError::Timeout {
                    step: "WebSocket upgrade",
                    addr,
                    timeout: self.timeout,
                });
            }
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
                return Err(ws_err(format!(
                    "the server answered {} instead of switching protocols",
                    resp.status()
                )));
            }
            Ok(Err(e)) => return Err(ws_err(e.to_string())),
            Ok(Ok((ws, _))) => ws,
        };
        Ok(TokioIo::new(tokio_util::either::Either::Right(Box::new(
            crate::wire::websocket::WsIo::new(ws),
        ))))
    }

    async fn open_base(&self, sniffed: Arc<AtomicU16>, websocket: bool) -> Result<Base, DialError> {
        let addr = self.endpoint.authority();
        let tcp = match proxy_for(&self.endpoint) {
            Some(proxy) => self.via_proxy(&proxy).await?,
            None => self.direct().await?,
        };
        let _ = tcp.set_nodelay(true);
        let tcp = Sniff {
            inner: tcp,
            first: sniffed.clone(),
        };
        let tls = if websocket { &self.ws_tls } else { &self.tls };
        let Some(tls) = tls else {
            return Ok(tokio_util::either::Either::Left(tcp));
        };
        let server_name = ServerName::try_from(self.endpoint.host.clone()).map_err(setup)?;
        if let Ok(mut slot) = self.failure.lock() {
            *slot = None;
        }
        let connector = tokio_rustls::TlsConnector::from(tls.clone());
        let handshake = tokio::time::timeout(self.timeout, connector.connect(server_name, tcp)).await;
        let stream = match handshake {
            Err(_) => {
                return Err(DialError::Timeout {
                    step: "TLS handshake",
                    addr,
                    timeout: self.timeout,
                });
            }
            Ok(Err(e)) => {
                if let Some(f) = self.failure.lock().ok().and_then(|mut s| s.take()) {
                    return Err(DialError::Trust(f));
                }
                let first = sniffed.load(Ordering::Relaxed);
                if first != NOTHING_READ && !looks_like_tls(first) {
                    return Err(DialError::NotTls { addr });
                }
                let reason = e.to_string();
                if !websocket && reason.contains("NoApplicationProtocol") {
                    return Err(DialError::Http2 {
                        addr,
                        reason: format!(
                            "the server does not offer HTTP/2 in TLS (ALPN h2): {reason}; is a proxy that only speaks HTTP/1.1 in between?"
                        ),
                    });
                }
                return Err(DialError::Tls { addr, reason });
            }
            Ok(Ok(s)) => s,
        };
        if websocket {
            return Ok(tokio_util::either::Either::Right(Box::new(stream)));
        }
        if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(DialError::Http2 {
                addr,
                reason:
                    "the server did not negotiate HTTP/2 (ALPN h2); is a proxy that only speaks HTTP/1.1 in between?"
                        .into(),
            });
        }
        Ok(tokio_util::either::Either::Right(Box::new(stream)))
    }

    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, DialError> {
        let lookup = tokio::time::timeout(self.timeout, tokio::net::lookup_host((host, port))).await;
        match lookup {
            Err(_) => Err(DialError::Timeout {
                step: "DNS lookup",
                addr: format!("{host}:{port}"),
                timeout: self.timeout,
            }),
            Ok(Err(source)) => Err(DialError::Dns {
                host: host.to_owned(),
                source,
            }),
            Ok(Ok(addrs)) => {
                let addrs: Vec<_> = addrs.collect();
                if addrs.is_empty() {
                    return Err(DialError::Dns {
                        host: host.to_owned(),
                        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"),
                    });
                }
                Ok(addrs)
            }
        }
    }

    async fn tcp_any(&self, addrs: &[SocketAddr]) -> Result<TcpStream, DialError> {
        let mut last = None;
        for addr in addrs {
            match tokio::time::timeout(self.timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => return Ok(s),
                Ok(Err(e)) => {
                    last = Some(DialError::Tcp {
                        addr: addr.to_string(),
                        source: e,
                    })
                }
                Err(_) => {
                    last = Some(DialError::Timeout {
                        step: "TCP connect",
                        addr: addr.to_string(),
                        timeout: self.timeout,
                    })
                }
            }
        }
        Err(last.unwrap_or_else(|| DialError::Tcp {
            addr: self.endpoint.authority(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"),
        }))
    }

    async fn direct(&self) -> Result<TcpStream, DialError> {
        let addrs = self.resolve(&self.endpoint.host, self.endpoint.port).await?;
        self.tcp_any(&addrs).await
    }

    async fn via_proxy(&self, proxy: &ProxyTarget) -> Result<TcpStream, DialError> {
        let proxy_err = |reason: String| DialError::Proxy {
            proxy: format!("{}:{}", proxy.host, proxy.port),
            reason,
        };
        let addrs = self.resolve(&proxy.host, proxy.port).await?;
        let mut tcp = self.tcp_any(&addrs).await?;
        let target = self.endpoint.authority();
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(auth) = &proxy.basic_auth {
            request.push_str(&format!("Proxy-Authorization: Basic {}\r\n", auth.expose()));
        }
        request.push_str("\r\n");
        let exchange = async {
            tcp.write_all(request.as_bytes())
                .await
                .map_err(|e| proxy_err(e.to_string()))?;
            let mut reader = BufReader::new(&mut tcp);
            let mut status = String::new();
            let mut total = 0usize;
            loop {
                let mut line = String::new();
                let n = reader
                    .read_line(&mut line)
                    .await
                    .map_err(|e| proxy_err(e.to_string()))?;
                total += n;
                if n == 0 || total > 16 * 1024 {
                    return Err(proxy_err(
                        "the proxy closed the connection or sent an oversized reply".into(),
                    ));
                }
                if status.is_empty() {
                    status = line.trim().to_owned();
                } else if line == "\r\n" || line == "\n" {
                    break;
                }
            }
            // CONNECT replies carry no body, so nothing of the tunnelled stream is buffered.
            if reader.buffer().is_empty() && status.split_whitespace().nth(1) == Some("200") {
                Ok(())
            } else {
                Err(proxy_err(format!("unexpected reply {status:?}")))
            }
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r.map(|()| tcp),
            Err(_) => Err(DialError::Timeout {
                step: "proxy CONNECT",
                addr: target,
                timeout: self.timeout,
            }),
        }
    }
}

fn setup(e: impl std::error::Error + Send + Sync + 'static) -> DialError {
    DialError::Setup(Box::new(e))
}

/// TCP, or TLS over it.
type Base = tokio_util::either::Either<Sniff<TcpStream>, Box<tokio_rustls::client::TlsStream<Sniff<TcpStream>>>>;

/// What HTTP/2 runs on: the base stream, or a WebSocket over it.
type Conn = tokio_util::either::Either<Base, Box<crate::wire::websocket::WsIo<Base>>>;

const NOTHING_READ: u16 = u16::MAX;

/// TLS records start with 0x16 (handshake) or 0x15 (alert).
fn looks_like_tls(first: u16) -> bool {
    first == 0x16 || first == 0x15
}

/// Remembers the first byte the peer sent, which tells TLS from plaintext HTTP/2 when a
/// handshake fails.
struct Sniff<S> {
    inner: S,
    first: Arc<AtomicU16>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Sniff<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res
            && buf.filled().len() > before
        {
            let byte = u16::from(buf.filled()[before]);
            let _ = self
                .first
                .compare_exchange(NOTHING_READ, byte, Ordering::Relaxed, Ordering::Relaxed);
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Sniff<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// An HTTP CONNECT proxy to use for the hub.
#[derive(Debug, Clone)]
struct ProxyTarget {
    host: String,
    port: u16,
    /// base64 of `user:password`, when the proxy URL carries credentials.
    basic_auth: Option<crate::secret::Secret>,
}

fn env_any(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok())
        .filter(|v| !v.trim().is_empty())
}

/// Whether connections to this endpoint go through an HTTP CONNECT proxy.
pub fn proxy_configured(endpoint: &HubEndpoint) -> bool {
    proxy_for(endpoint).is_some()
}

/// The proxy for this endpoint from `HTTPS_PROXY` (`HTTP_PROXY` for plaintext), unless
/// `NO_PROXY` excludes the host.
fn proxy_for(endpoint: &HubEndpoint) -> Option<ProxyTarget> {
    let raw = if endpoint.plaintext {
        env_any(&["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"])
    } else {
        env_any(&["HTTPS_PROXY", "https_proxy"])
    }?;
    if let Some(no_proxy) = env_any(&["NO_PROXY", "no_proxy"])
        && no_proxy_matches(&no_proxy, &endpoint.host)
    {
        return None;
    }
    let with_scheme = if raw.contains("://") {
        raw.clone()
    } else {
        format!("http://{raw}")
    };
    let url = url::Url::parse(&with_scheme).ok()?;
    let host = url.host_str()?.trim_matches(['[', ']']).to_owned();
    let port = url.port_or_known_default().unwrap_or(3128);
    let basic_auth = (!url.username().is_empty()).then(|| {
        use base64::Engine;
        let creds = format!("{}:{}", url.username(), url.password().unwrap_or(""));
        crate::secret::Secret::new(base64::engine::general_purpose::STANDARD.encode(creds))
    });
    Some(ProxyTarget { host, port, basic_auth })
}

fn no_proxy_matches(no_proxy: &str, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    no_proxy
        .split(',')
        .map(|e| e.trim().to_ascii_lowercase())
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            let entry = entry
                .split(':')
                .next()
                .unwrap_or("")
                .trim_start_matches("*.")
                .trim_start_matches('.');
            host == entry || host.ends_with(&format!(".{entry}"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_proxy_rules() {
        assert!(no_proxy_matches(
            "localhost,.svc.cluster.local",
            "hub.ns.svc.cluster.local"
        ));
        assert!(no_proxy_matches("*", "anything"));
        assert!(no_proxy_matches("example.com:8443", "example.com"));
        assert!(!no_proxy_matches("example.com", "notexample.com"));
    }

    #[test]
    fn tls_first_bytes() {
        assert!(looks_like_tls(0x16) && looks_like_tls(0x15));
        assert!(!looks_like_tls(0x00) && !looks_like_tls(NOTHING_READ));
    }
}
