//! TLS for the hub's HTTP listener (API and status page): `--http-tls-cert/--http-tls-key`, or
//! `--http-tls` with the hub's own server certificate (its CA's, for the `--hostname` names).
//!
//! [`TlsListener`] is an `axum::serve` listener: handshakes run concurrently (a slow or silent
//! client cannot hold up the others), each bounded in time, and at most [`MAX_HANDSHAKES`] at
//! once; a failed handshake is logged at debug level and never reaches the router.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::shutdown::GuardedListener;

/// Handshakes in progress at most; further connections wait in the kernel's backlog.
pub const MAX_HANDSHAKES: usize = 256;
/// How long a client has to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why TLS for the HTTP listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source} (flag {flag})")]
    Read {
        /// The file.
        path: String,
        /// The flag that named it.
        flag: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The PEM did not hold what was expected.
    #[error("{0}")]
    Pem(#[from] crate::tls::TlsError),
    /// The certificate and key do not make a server configuration.
    #[error("the HTTP TLS certificate and key do not fit together: {0} (flags --http-tls-cert, --http-tls-key)")]
    Config(#[source] rustls::Error),
}

/// A rustls server configuration from a PEM certificate chain and key; HTTP/1.1 only, like the
/// HTTP server.
pub fn server_config(chain_pem: &[u8], key_pem: &[u8], what: &str) -> Result<Arc<rustls::ServerConfig>, HttpsError> {
    let chain = crate::tls::parse_certs_pem(chain_pem, what)?;
    let key = crate::tls::parse_key_pem(key_pem, what)?;
    let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(HttpsError::Config)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(HttpsError::Config)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Reads `--http-tls-cert` and `--http-tls-key`.
pub fn server_config_from_files(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, HttpsError> {
    let read = |path: &std::path::Path, flag: &'static str| {
        std::fs::read(path).map_err(|source| HttpsError::Read {
            path: path.display().to_string(),
            flag,
            source,
        })
    };
    server_config(
        &read(cert, "--http-tls-cert")?,
        &read(key, "--http-tls-key")?,
        "--http-tls-cert/--http-tls-key",
    )
}

type Handshake = Option<(TlsStream<TcpStream>, SocketAddr)>;

/// A TLS listener for `axum::serve`.
pub struct TlsListener {
    inner: GuardedListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<Handshake>,
}

impl TlsListener {
    /// Wraps a guarded TCP listener.
    pub fn new(inner: GuardedListener, config: Arc<rustls::ServerConfig>) -> Self {
        Self {
            inner,
            acceptor: TlsAcceptor::from(config),
            handshakes: JoinSet::new(),
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let room = self.handshakes.len() < MAX_HANDSHAKES;
            tokio::select! {
                (tcp, addr) = self.inner.next(), if room => {
                    let acceptor = self.acceptor.clone();
                    // Owned by the listener: dropped with it, bounded in number and in time.
                    self.handshakes.spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => Some((tls, addr)),
                            Ok(Err(e)) => {
                                tracing::debug!(peer = %addr, error = %e, "HTTP TLS handshake failed");
                                None
                            }
                            Err(_) => {
                                tracing::debug!(peer = %addr, "HTTP TLS handshake timed out");
                                None
                            }
                        }
                    });
                }
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(conn)) = done {
                        return conn;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        axum::serve::Listener::local_addr(&self.inner)
    }
}
