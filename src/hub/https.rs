//! TLS for the hub's HTTP listener (API and status page): `--http-tls-cert/--http-tls-key`, or
//! `--http-tls` with the hub's own server certificate (its CA's, for the `--hostname` names).
//! The bounded HTTP server (`crate::serve`) runs the handshakes, each in its connection's task,
//! inside the connection cap and the header deadline.

use std::sync::Arc;

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
