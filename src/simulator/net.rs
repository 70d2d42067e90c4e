//! The simulator's listener: plaintext, or TLS with a self-signed CA. Like argocd-server's cmux,
//! a TLS port answers plain HTTP with a 307 redirect to https.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

/// A self-signed CA and a server certificate it issued for `localhost` and `127.0.0.1`.
pub struct SimCerts {
    /// The CA certificate (PEM), what a client adds with `--trust-ca`.
    pub ca_pem: String,
    /// The server certificate chain (DER).
    pub chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// The server key (DER).
    pub key: rustls_pki_types::PrivateKeyDer<'static>,
}

impl SimCerts {
    /// Makes a fresh CA and server certificate.
    pub fn generate() -> Result<Self, rcgen::Error> {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "argocd-simulator CA");
        ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let ca_key = rcgen::KeyPair::generate()?;
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;
        let mut leaf_params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        leaf_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "argocd-server");
        leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = rcgen::KeyPair::generate()?;
        let leaf = leaf_params.signed_by(&leaf_key, &ca)?;
        let ca_der = ca.as_ref().der().clone();
        Ok(Self {
            ca_pem: ca.as_ref().pem(),
            chain: vec![leaf.der().clone(), ca_der],
            key: rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        })
    }

    /// A given certificate chain and key (PEM); the first certificate is also what clients trust.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> std::io::Result<Self> {
        let chain =
            crate::tls::parse_certs_pem(cert_pem.as_bytes(), "simulator certificate").map_err(std::io::Error::other)?;
        let key = crate::tls::parse_key_pem(key_pem.as_bytes(), "simulator key").map_err(std::io::Error::other)?;
        if chain.is_empty() {
            return Err(std::io::Error::other("no certificate in the simulator certificate PEM"));
        }
        Ok(Self {
            ca_pem: cert_pem.to_owned(),
            chain,
            key,
        })
    }

    fn acceptor(&self) -> Result<TlsAcceptor, rustls::Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// A connection handed to axum: plaintext or TLS.
pub type SimIo = Either<TcpStream, TlsStream<TcpStream>>;

/// An axum listener fed by the accept task, so slow TLS handshakes never block accepting.
pub struct SimListener {
    rx: mpsc::Receiver<(SimIo, SocketAddr)>,
    local: SocketAddr,
}

impl axum::serve::Listener for SimListener {
    type Io = SimIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept task ended (shutdown): never yield another connection.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Binds `127.0.0.1:0` and starts accepting; `certs` selects TLS.
pub async fn listen(
    addr: SocketAddr,
    certs: Option<&SimCerts>,
    cancel: CancellationToken,
) -> std::io::Result<(SimListener, SocketAddr)> {
    let tcp = TcpListener::bind(addr).await?;
    let local = tcp.local_addr()?;
    let acceptor = match certs {
        Some(c) => Some(c.acceptor().map_err(std::io::Error::other)?),
        None => None,
    };
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                _ = cancel.cancelled() => return,
                r = tcp.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(error = %e, "simulator accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let tx = tx.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match acceptor {
                    None => {
                        let _ = tx.send((Either::Left(stream), peer)).await;
                    }
                    Some(acceptor) => {
                        let mut first = [0u8; 1];
                        let peeked = tokio::time::timeout(Duration::from_secs(10), stream.peek(&mut first)).await;
                        if !matches!(peeked, Ok(Ok(1))) {
                            return;
                        }
                        // 0x16 is a TLS handshake record; anything else is treated as plain HTTP,
                        // which argocd-server redirects to https.
                        if first[0] != 0x16 {
                            redirect_plain_http(stream, local).await;
                            return;
                        }
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => {
                                let _ = tx.send((Either::Right(tls), peer)).await;
                            }
                            Ok(Err(e)) => tracing::debug!(error = %e, "simulator TLS handshake failed"),
                            Err(_) => tracing::debug!("simulator TLS handshake timed out"),
                        }
                    }
                }
            });
        }
    });
    Ok((SimListener { rx, local }, local))
}

/// Answers one plaintext request on the TLS port with `307` to the https URL, like cmux's
/// redirect server in argocd-server.
async fn redirect_plain_http(mut stream: TcpStream, local: SocketAddr) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let location = format!("https://{local}{path}");
    let body = format!("<a href=\"{location}\">Temporary Redirect</a>.\n");
    let resp = format!(
        "HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes()).await;
    let _ = stream.shutdown().await;
}
