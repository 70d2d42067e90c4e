//! TLS plumbing shared by the Argo CD client and the hub tunnel: the one crypto provider, trust
//! roots (system + `--trust-ca`), and SHA-256 certificate fingerprints.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

/// Errors loading certificates or keys.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A `--trust-ca` path could not be read.
    #[error("cannot read trusted CA file {path} (flag --trust-ca, Helm gateway.serverCertificates): {source}")]
    ReadCa {
        /// The file or directory given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A `--trust-ca` file held no PEM certificate.
    #[error("no PEM certificate found in {path} (flag --trust-ca, Helm gateway.serverCertificates)")]
    NoCertificate {
        /// The offending file.
        path: PathBuf,
    },
    /// A PEM document could not be parsed.
    #[error("invalid PEM in {what}: {reason}")]
    Pem {
        /// What was being parsed.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// A fingerprint flag is not a SHA-256 hex digest.
    #[error(
        "invalid fingerprint {value:?} for {setting}: expected a SHA-256 digest as 64 hex digits (optionally 'sha256:' prefixed or colon-separated)"
    )]
    BadFingerprint {
        /// The text given.
        value: String,
        /// The flag and Helm value that carried it.
        setting: &'static str,
    },
}

/// Installs ring as the process-wide rustls provider; safe to call more than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The ring provider, for configs built explicitly.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// How a custom verifier judges a server's certificate chain. Handshake signatures are always
/// checked the standard way by [`Verifier`], so an implementation decides trust only.
pub trait CertCheck: std::fmt::Debug + Send + Sync {
    /// Accepts or refuses the presented chain for `server_name`.
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error>;
}

/// A rustls server verifier made of a [`CertCheck`] and the ring provider's signature checks.
#[derive(Debug)]
pub struct Verifier<C> {
    check: C,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl<C: CertCheck> Verifier<C> {
    /// A verifier deciding trust with `check`.
    pub fn new(check: C) -> Self {
        Self {
            check,
            provider: provider(),
        }
    }

    /// The certificate check.
    pub fn inner(&self) -> &C {
        &self.check
    }
}

impl<C: CertCheck> ServerCertVerifier for Verifier<C> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check
            .check(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Accepts any certificate (handshake signatures are still checked): `--argocd-insecure`, and
/// probes that only want to see what a server presents.
#[derive(Debug, Clone, Copy)]
pub struct AcceptAny;

impl CertCheck for AcceptAny {
    fn check(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
}

/// A verifier that accepts any certificate; see [`AcceptAny`].
pub fn accept_any() -> Arc<Verifier<AcceptAny>> {
    Arc::new(Verifier::new(AcceptAny))
}

/// Trust flags shared by the Argo CD client and the hub connection.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TrustArgs {
    /// Extra trusted CA certificates: a PEM file or a directory of PEM files (repeatable).
    #[arg(long = "trust-ca", env = "ARGOCD_GATEWAY_TRUST_CA", value_delimiter = ',')]
    pub trust_ca: Vec<PathBuf>,
}

impl TrustArgs {
    /// Loads every certificate named by `--trust-ca`.
    pub fn load(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        load_ca_paths(&self.trust_ca)
    }
}

/// Loads PEM certificates from files and directories (non-recursive; files without a
/// certificate in a directory are skipped, an explicitly named file must hold one).
pub fn load_ca_paths(paths: &[PathBuf]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let mut out = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|source| TlsError::ReadCa {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            let mut entries: Vec<_> = std::fs::read_dir(path)
                .map_err(|source| TlsError::ReadCa {
                    path: path.clone(),
                    source,
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            entries.sort();
            for file in entries {
                let bytes = std::fs::read(&file).map_err(|source| TlsError::ReadCa {
                    path: file.clone(),
                    source,
                })?;
                out.extend(parse_certs_pem(&bytes, &file.display().to_string()).unwrap_or_default());
            }
        } else {
            let bytes = std::fs::read(path).map_err(|source| TlsError::ReadCa {
                path: path.clone(),
                source,
            })?;
            let certs = parse_certs_pem(&bytes, &path.display().to_string())?;
            if certs.is_empty() {
                return Err(TlsError::NoCertificate { path: path.clone() });
            }
            out.extend(certs);
        }
    }
    Ok(out)
}

/// Parses every `CERTIFICATE` block of a PEM document.
pub fn parse_certs_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what: what.to_owned(),
            reason: e.to_string(),
        })
}

/// Parses the first private key of a PEM document.
pub fn parse_key_pem(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
        what: what.to_owned(),
        reason: e.to_string(),
    })
}

/// The operating system's trusted roots, read once per process (every dial needs them and the
/// bundle does not change under a running process); unreadable entries are skipped.
pub fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: std::sync::OnceLock<Vec<CertificateDer<'static>>> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let result = rustls_native_certs::load_native_certs();
        for e in &result.errors {
            tracing::debug!(error = %e, "skipping unreadable system root certificate");
        }
        result.certs
    })
}

/// Builds a root store from the given certificates, skipping ones webpki cannot use.
pub fn root_store<'a>(certs: impl IntoIterator<Item = &'a CertificateDer<'static>>) -> RootCertStore {
    let mut store = RootCertStore::empty();
    for c in certs {
        if let Err(e) = store.add(c.clone()) {
            tracing::debug!(error = %e, "skipping unusable trust anchor");
        }
    }
    store
}

/// SHA-256 of a DER certificate, as lowercase hex.
pub fn sha256_hex(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// A SHA-256 certificate fingerprint, displayed as `sha256:<hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fingerprint(String);

impl Fingerprint {
    /// The fingerprint of a DER certificate.
    pub fn of(der: &[u8]) -> Self {
        Self(sha256_hex(der))
    }

    /// Parses `sha256:<hex>`, bare hex, or colon-separated hex (as `openssl x509 -fingerprint`
    /// prints it); `setting` names the flag and Helm value for the error message.
    pub fn parse(value: &str, setting: &'static str) -> Result<Self, TlsError> {
        let v = value.trim();
        let v = v
            .strip_prefix("sha256:")
            .or_else(|| v.strip_prefix("SHA256:"))
            .unwrap_or(v);
        let hexdigits: String = v.chars().filter(|c| *c != ':').collect::<String>().to_ascii_lowercase();
        if hexdigits.len() == 64 && hexdigits.chars().all(|c| c.is_ascii_hexdigit()) {
            Ok(Self(hexdigits))
        } else {
            Err(TlsError::BadFingerprint {
                value: value.to_owned(),
                setting,
            })
        }
    }

    /// The bare lowercase hex digest.
    pub fn hex(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_forms() {
        let hex = "ab".repeat(32);
        let colon = vec!["AB"; 32].join(":");
        for v in [hex.clone(), format!("sha256:{hex}"), colon] {
            assert_eq!(Fingerprint::parse(&v, "--x").unwrap().hex(), hex);
        }
        let err = Fingerprint::parse("abc", "--hub-fingerprint (Helm gateway.hub.serverThumbprint)").unwrap_err();
        assert!(err.to_string().contains("gateway.hub.serverThumbprint"));
    }
}
