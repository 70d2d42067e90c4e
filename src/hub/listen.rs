//! The gRPC listener's front door, before any gateway is authenticated: TLS is done here (not
//! inside tonic) so a connection gets one deadline for its TLS handshake and another for its
//! first HTTP/2 bytes, connections still in that phase are capped, and a connection without a
//! client certificate (only registration needs none) lives a bounded time. Each refusal is
//! counted by reason. Connections that pass go to tonic, with the TLS session intact so the
//! services see the peer certificate.
//!
//! The same port takes the tunnel inside a WebSocket (protocol 3; see
//! [`crate::wire::websocket`]): a TLS client that negotiated `http/1.1`, or a plaintext one whose
//! first byte starts an HTTP/1.1 request, is upgraded here, within the handshake deadline, and
//! the byte stream inside goes to the same tonic server as any other connection, still
//! carrying its TLS session, so client certificates, assertions and every limit apply alike.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Sleep;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::limits::Limits;
use super::metrics::{HubMetrics, ReasonLabel};
use crate::shutdown::Tree;

/// A TCP connection with the deadlines of its first moments.
pub struct Guarded {
    inner: TcpStream,
    /// Until the first bytes after the TLS handshake (the HTTP/2 preface): the connection is
    /// closed if it sends nothing by then.
    first_bytes: Option<Pin<Box<Sleep>>>,
    /// For connections without a client certificate: their end of life.
    max_age: Option<Pin<Box<Sleep>>>,
    /// Held while the connection is in its handshake phase (the cap on such connections).
    pending: Option<OwnedSemaphorePermit>,
    armed: bool,
    metrics: HubMetrics,
}

impl Guarded {
    fn new(inner: TcpStream, pending: OwnedSemaphorePermit, metrics: HubMetrics) -> Self {
        Self {
            inner,
            first_bytes: None,
            max_age: None,
            pending: Some(pending),
            armed: false,
            metrics,
        }
    }

    /// Starts the wait for the first HTTP/2 bytes.
    fn arm(&mut self, within: Duration) {
        self.first_bytes = Some(Box::pin(tokio::time::sleep(within)));
        self.armed = true;
    }

    fn limit_age(&mut self, ttl: Duration) {
        self.max_age = Some(Box::pin(tokio::time::sleep(ttl)));
    }

    fn refuse(&self, reason: &'static str) -> io::Error {
        self.metrics
            .connections_refused
            .get_or_create(&ReasonLabel { reason: reason.into() })
            .inc();
        io::Error::new(io::ErrorKind::TimedOut, reason)
    }

    fn check_deadlines(&mut self, cx: &mut Context<'_>) -> Result<(), io::Error> {
        if let Some(age) = self.max_age.as_mut()
            && age.as_mut().poll(cx).is_ready()
        {
            tracing::debug!("closing a connection without a client certificate at its end of life");
            return Err(self.refuse("anonymous_connection_ttl"));
        }
        if let Some(first) = self.first_bytes.as_mut()
            && first.as_mut().poll(cx).is_ready()
        {
            tracing::debug!("closing a connection that sent no HTTP/2 preface in time");
            return Err(self.refuse("preface_timeout"));
        }
        Ok(())
    }
}

impl AsyncRead for Guarded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if self.armed && buf.filled().len() > before {
                    // The client spoke after its handshake: it leaves the pending phase.
                    self.first_bytes = None;
                    self.pending = None;
                    self.armed = false;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.check_deadlines(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check_deadlines(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check_deadlines(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for Guarded {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// A stream with bytes already read from it put back in front.
pub struct Rewind<S> {
    prefix: Vec<u8>,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = buf.remaining().min(self.prefix.len());
            let rest = self.prefix.split_off(n);
            buf.put_slice(&self.prefix);
            self.prefix = rest;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A connection as tonic gets it: HTTP/2 directly, or HTTP/2 inside a WebSocket.
pub enum HubConn<S> {
    /// gRPC over HTTP/2.
    Direct(Rewind<S>),
    /// The same, inside a WebSocket.
    WebSocket(Box<crate::wire::websocket::WsIo<Rewind<S>>>),
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for HubConn<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Direct(s) => Pin::new(s).poll_read(cx, buf),
            Self::WebSocket(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for HubConn<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Direct(s) => Pin::new(s).poll_write(cx, buf),
            Self::WebSocket(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Direct(s) => Pin::new(s).poll_flush(cx),
            Self::WebSocket(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Direct(s) => Pin::new(s).poll_shutdown(cx),
            Self::WebSocket(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl<S: Connected + AsyncRead + AsyncWrite + Unpin> Connected for HubConn<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match self {
            Self::Direct(s) => s.inner.connect_info(),
            Self::WebSocket(s) => s.get_ref().inner.connect_info(),
        }
    }
}

/// Upgrades an HTTP/1.1 connection to the tunnel's WebSocket, or leaves an HTTP/2 one as it is.
/// `sniff`: decide by the first byte (an HTTP/1.1 request starts with `G`; HTTP/2 with `P`);
/// otherwise the connection is known to be HTTP/1.1 (TLS negotiated it).
async fn maybe_upgrade<S>(mut conn: S, sniff: bool, limits: &Limits, metrics: &HubMetrics) -> io::Result<HubConn<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut prefix = vec![];
    if sniff {
        let mut first = [0u8; 1];
        let n = conn.read(&mut first).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before speaking"));
        }
        prefix.push(first[0]);
        if first[0] != b'G' {
            return Ok(HubConn::Direct(Rewind { prefix, inner: conn }));
        }
    }
    let stream = Rewind { prefix, inner: conn };
    // tungstenite's handshake callback returns its (large) error response by value.
    #[allow(clippy::result_large_err)]
    let check = |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                 mut resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
        use tokio_tungstenite::tungstenite::handshake::server::ErrorResponse;
        let refuse = |status: u16, text: &str| -> ErrorResponse {
            let mut r = ErrorResponse::new(Some(text.to_owned()));
            *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_REQUEST);
            r
        };
        if req.uri().path() != crate::wire::websocket::PATH {
            return Err(refuse(404, "this port serves the argocd-gateway tunnel only"));
        }
        let offered = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == crate::wire::websocket::SUBPROTOCOL);
        if !offered {
            return Err(refuse(400, "the tunnel's WebSocket subprotocol is missing"));
        }
        resp.headers_mut().insert(
            "sec-websocket-protocol",
            http::HeaderValue::from_static(crate::wire::websocket::SUBPROTOCOL),
        );
        Ok(resp)
    };
    let upgrade =
        tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(crate::wire::websocket::config()));
    match tokio::time::timeout(limits.handshake_timeout, upgrade).await {
        Ok(Ok(ws)) => {
            metrics.websocket_sessions.inc();
            Ok(HubConn::WebSocket(Box::new(crate::wire::websocket::WsIo::new(ws))))
        }
        Ok(Err(e)) => {
            metrics
                .connections_refused
                .get_or_create(&ReasonLabel {
                    reason: "websocket_upgrade".into(),
                })
                .inc();
            Err(io::Error::other(format!("WebSocket upgrade refused: {e}")))
        }
        Err(_) => {
            metrics
                .connections_refused
                .get_or_create(&ReasonLabel {
                    reason: "handshake_timeout".into(),
                })
                .inc();
            Err(io::Error::new(io::ErrorKind::TimedOut, "WebSocket upgrade timed out"))
        }
    }
}

/// The connections of a plaintext hub (TLS ends at a proxy in front of it); with `websocket`,
/// HTTP/1.1 connections are upgraded to the tunnel's WebSocket.
pub fn plaintext(
    tree: &Tree,
    listener: TcpListener,
    limits: &Limits,
    metrics: HubMetrics,
    websocket: bool,
) -> ReceiverStream<io::Result<HubConn<Guarded>>> {
    accept(tree, listener, limits, metrics.clone(), move |mut conn, limits| {
        let metrics = metrics.clone();
        async move {
            conn.arm(limits.handshake_timeout);
            if !websocket {
                return Ok(HubConn::Direct(Rewind {
                    prefix: vec![],
                    inner: conn,
                }));
            }
            maybe_upgrade(conn, true, &limits, &metrics).await
        }
    })
}

/// The connections of a hub that terminates TLS with `config` (which requests, but does not
/// demand, client certificates: registration has none yet). With `bound_anonymous`, a
/// connection without a client certificate lives at most `--anonymous-connection-ttl`.
pub fn tls(
    tree: &Tree,
    listener: TcpListener,
    limits: &Limits,
    metrics: HubMetrics,
    config: Arc<rustls::ServerConfig>,
    bound_anonymous: bool,
    websocket: bool,
) -> ReceiverStream<io::Result<HubConn<tokio_rustls::server::TlsStream<Guarded>>>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    accept(tree, listener, limits, metrics.clone(), move |conn, limits| {
        let acceptor = acceptor.clone();
        let metrics = metrics.clone();
        async move {
            let refused = |reason: &'static str| {
                metrics
                    .connections_refused
                    .get_or_create(&ReasonLabel { reason: reason.into() })
                    .inc();
            };
            let mut tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(conn)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    refused("tls_error");
                    return Err(e);
                }
                Err(_) => {
                    refused("handshake_timeout");
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"));
                }
            };
            let anonymous = tls.get_ref().1.peer_certificates().is_none_or(<[_]>::is_empty);
            // A client may send its first HTTP/2 bytes with its last handshake flight; rustls
            // then holds them already and the connection has spoken.
            let spoke = tls
                .get_mut()
                .1
                .process_new_packets()
                .is_ok_and(|state| state.plaintext_bytes_to_read() > 0);
            let guarded = tls.get_mut().0;
            if spoke {
                guarded.pending = None;
            } else {
                guarded.arm(limits.handshake_timeout);
            }
            if anonymous && bound_anonymous {
                guarded.limit_age(limits.anonymous_connection_ttl);
            }
            let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            match alpn.as_deref() {
                Some(b"h2") => Ok(HubConn::Direct(Rewind {
                    prefix: vec![],
                    inner: tls,
                })),
                _ if !websocket => Ok(HubConn::Direct(Rewind {
                    prefix: vec![],
                    inner: tls,
                })),
                Some(b"http/1.1") => maybe_upgrade(tls, false, &limits, &metrics).await,
                _ => maybe_upgrade(tls, true, &limits, &metrics).await,
            }
        }
    })
}

/// Accepts connections, caps those in their first moments, and runs `prepare` (the TLS
/// handshake) for each concurrently; ready connections come out of the returned stream.
fn accept<T, F, Fut>(
    tree: &Tree,
    listener: TcpListener,
    limits: &Limits,
    metrics: HubMetrics,
    prepare: F,
) -> ReceiverStream<io::Result<T>>
where
    T: Send + 'static,
    F: Fn(Guarded, Limits) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<T>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    let mut listener = tree.guard("hub gRPC listener", listener);
    let pending = Arc::new(Semaphore::new(limits.max_pending_connections.max(1)));
    let limits = limits.clone();
    let stop = tree.token().clone();
    let tasks = tree.clone();
    tree.spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = stop.cancelled() => return,
                c = listener.next() => c,
            };
            let Ok(permit) = pending.clone().try_acquire_owned() else {
                metrics
                    .connections_refused
                    .get_or_create(&ReasonLabel {
                        reason: "pending_limit".into(),
                    })
                    .inc();
                tracing::warn!(%peer, max = limits.max_pending_connections, "too many gRPC connections still in their handshake; closing a new one (flag --max-pending-connections)");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let conn = Guarded::new(tcp, permit, metrics.clone());
            let ready = prepare(conn, limits.clone());
            let tx = tx.clone();
            tasks.spawn(async move {
                match ready.await {
                    Ok(conn) => {
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Err(e) => tracing::debug!(%peer, error = %e, "dropped a connection before it spoke HTTP/2"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
