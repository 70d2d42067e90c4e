//! The tunnel's WebSocket transport, as both sides frame it: for proxies and load balancers that
//! pass only HTTP/1.1, the gateway upgrades an HTTP/1.1 request on the hub's gRPC port to a
//! WebSocket and then runs the very same gRPC session (HTTP/2, its TLS below it, the signed
//! assertion in its metadata) with the HTTP/2 bytes carried as binary messages. [`WsIo`] turns a
//! WebSocket back into the byte stream HTTP/2 expects, on either side.
//!
//! Bounds: a message is at most [`MAX_MESSAGE_BYTES`] either way (the writer cuts larger writes,
//! the reader refuses larger messages), so a hostile peer cannot make either side buffer more.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message};

/// The request path of the upgrade on the hub's gRPC port.
pub const PATH: &str = "/argocd-gateway.v1.Tunnel/websocket";

/// The WebSocket subprotocol both sides name: the payload is an HTTP/2 connection.
pub const SUBPROTOCOL: &str = "argocd-gateway.h2";

/// The largest WebSocket message either side sends or accepts.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// The WebSocket limits both sides apply.
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
}

/// A WebSocket as a byte stream: binary messages in, binary messages out.
pub struct WsIo<S> {
    ws: WebSocketStream<S>,
    pending: Bytes,
    eof: bool,
}

impl<S> WsIo<S> {
    /// Wraps an upgraded WebSocket.
    pub fn new(ws: WebSocketStream<S>) -> Self {
        Self {
            ws,
            pending: Bytes::new(),
            eof: false,
        }
    }

    /// The stream below the WebSocket.
    pub fn get_ref(&self) -> &S
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.ws.get_ref()
    }
}

impl<S> std::fmt::Debug for WsIo<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsIo").field("eof", &self.eof).finish_non_exhaustive()
    }
}

fn io_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        other => io::Error::other(other),
    }
}

fn closed(e: &WsError) -> bool {
    matches!(e, WsError::ConnectionClosed | WsError::AlreadyClosed)
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = buf.remaining().min(self.pending.len());
                let chunk = self.pending.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(b))) => self.pending = b,
                // Control frames are answered by the WebSocket layer itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text message on the tunnel's WebSocket (only binary messages carry it)",
                    )));
                }
                Some(Ok(Message::Close(_))) | None => self.eof = true,
                Some(Err(e)) if closed(&e) => self.eof = true,
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(io_error)?;
        let n = buf.len().min(MAX_MESSAGE_BYTES);
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
            .map_err(io_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(io_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.ws).poll_close(cx)) {
            Err(e) if !closed(&e) => Poll::Ready(Err(io_error(e))),
            _ => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_cross_in_both_directions_and_large_writes_are_cut() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let server = tokio::spawn(async move {
            let ws = tokio_tungstenite::accept_async_with_config(b, Some(config()))
                .await
                .unwrap();
            let mut io = WsIo::new(ws);
            let mut got = vec![0u8; MAX_MESSAGE_BYTES * 2 + 5];
            io.read_exact(&mut got).await.unwrap();
            io.write_all(&got).await.unwrap();
            io.flush().await.unwrap();
        });
        let (ws, _) = tokio_tungstenite::client_async_with_config("ws://hub/x", a, Some(config()))
            .await
            .unwrap();
        let mut io = WsIo::new(ws);
        let data: Vec<u8> = (0..MAX_MESSAGE_BYTES * 2 + 5).map(|i| i as u8).collect();
        io.write_all(&data).await.unwrap();
        io.flush().await.unwrap();
        let mut back = vec![0u8; data.len()];
        io.read_exact(&mut back).await.unwrap();
        assert_eq!(back, data);
        server.await.unwrap();
    }
}
