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

/// The standard server check, plus the one case Go clients (and so the `argocd` CLI) accept and
/// webpki does not: a server whose own certificate is one of the trusted certificates. A
/// certificate made with `openssl req -x509` is self-signed and marked CA:TRUE, and webpki refuses
/// any CA certificate as an end entity (`CaUsedAsEndEntity`), even one the user trusts by name.
/// Like Go's `crypto/x509`, a leaf that is itself a trust anchor is accepted here when it is
/// valid now and valid for the host name; the handshake still proves the server holds its key.
#[derive(Debug)]
pub struct ServerTrust {
    webpki: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    anchors: std::collections::HashSet<[u8; 32]>,
}

impl ServerTrust {
    /// A check against `roots` (system roots and `--trust-ca`, as the caller chooses).
    pub fn new<'a>(roots: impl IntoIterator<Item = &'a CertificateDer<'static>>) -> Self {
        let mut anchors = std::collections::HashSet::new();
        let mut store = RootCertStore::empty();
        for c in roots {
            anchors.insert(<[u8; 32]>::from(Sha256::digest(c.as_ref())));
            if let Err(e) = store.add(c.clone()) {
                tracing::debug!(error = %e, "skipping unusable trust anchor");
            }
        }
        let webpki = (!store.is_empty())
            .then(|| {
                rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider())
                    .build()
                    .ok()
            })
            .flatten();
        Self { webpki, anchors }
    }

    /// True when `der` is exactly one of the trusted certificates.
    pub fn is_anchor(&self, der: &[u8]) -> bool {
        self.anchors.contains(&<[u8; 32]>::from(Sha256::digest(der)))
    }
}

impl CertCheck for ServerTrust {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chained = match &self.webpki {
            Some(v) => v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now),
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
        };
        match chained {
            Ok(v) => Ok(v),
            Err(e) if self.is_anchor(end_entity) => {
                // Trusted by identity: what remains to check is that it is current and names
                // the host. Any problem with those is the more useful error.
                verify_validity_and_name(end_entity, server_name, now)?;
                tracing::debug!(chain_error = %e, "server certificate is itself trusted");
                Ok(ServerCertVerified::assertion())
            }
            Err(e) => Err(e),
        }
    }
}

/// Validity period and host name of a certificate trusted by identity.
fn verify_validity_and_name(
    der: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> Result<(), rustls::Error> {
    use rustls::CertificateError;
    let bad = |e: CertificateError| rustls::Error::InvalidCertificate(e);
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| bad(CertificateError::BadEncoding))?;
    let now_secs = now.as_secs() as i64;
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    if now_secs < not_before {
        return Err(bad(CertificateError::NotValidYetContext {
            time: now,
            not_before: UnixTime::since_unix_epoch(std::time::Duration::from_secs(not_before.max(0) as u64)),
        }));
    }
    if now_secs > not_after {
        return Err(bad(CertificateError::ExpiredContext {
            time: now,
            not_after: UnixTime::since_unix_epoch(std::time::Duration::from_secs(not_after.max(0) as u64)),
        }));
    }
    let end_entity = webpki::EndEntityCert::try_from(der).map_err(|_| bad(CertificateError::BadEncoding))?;
    match end_entity.verify_is_valid_for_subject_name(server_name) {
        Ok(()) => Ok(()),
        Err(webpki::Error::CertNotValidForName(ctx)) => Err(bad(CertificateError::NotValidForNameContext {
            expected: ctx.expected,
            presented: ctx.presented,
        })),
        Err(_) => Err(bad(CertificateError::NotValidForName)),
    }
}

/// What is wrong with a server certificate, in the terms a fix is chosen by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertProblem {
    /// Signed by an authority that is not trusted (or the signature does not verify).
    UnknownIssuer,
    /// A self-signed CA certificate (`openssl req -x509`) used as the server's own, not trusted.
    UntrustedSelfSigned,
    /// Outside its validity period.
    Expired,
    /// Not valid yet.
    NotYetValid,
    /// Issued for other names than the host dialed.
    WrongName,
    /// Not meant for server authentication.
    WrongPurpose,
    /// Anything else.
    Other,
}

/// A certificate verification failure, translated into a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertTrouble {
    /// The kind of problem.
    pub problem: CertProblem,
    /// What is wrong, as a sentence fragment ("it expired at …").
    pub what: String,
}

/// Translates a certificate error from a handshake into what is wrong; `None` when the error is
/// not about the certificate.
pub fn diagnose(err: &rustls::Error) -> Option<CertTrouble> {
    use rustls::CertificateError as C;
    let rustls::Error::InvalidCertificate(e) = err else {
        return None;
    };
    let (problem, what) = match e {
        C::UnknownIssuer => (
            CertProblem::UnknownIssuer,
            "it is signed by a certificate authority that is not in the trust list".to_owned(),
        ),
        C::BadSignature => (
            CertProblem::UnknownIssuer,
            "its signature does not verify against the trusted authority that seems to have issued it".to_owned(),
        ),
        C::ExpiredContext { time, not_after } => (
            CertProblem::Expired,
            format!("it expired at {} (now {})", unix_time(*not_after), unix_time(*time)),
        ),
        C::Expired => (CertProblem::Expired, "it has expired".to_owned()),
        C::NotValidYetContext { time, not_before } => (
            CertProblem::NotYetValid,
            format!(
                "it is not valid before {} (now {}; check the clocks)",
                unix_time(*not_before),
                unix_time(*time)
            ),
        ),
        C::NotValidYet => (
            CertProblem::NotYetValid,
            "it is not valid yet (check the clocks)".to_owned(),
        ),
        C::NotValidForNameContext { expected, presented } => (
            CertProblem::WrongName,
            if presented.is_empty() {
                format!(
                    "it names no host (no subject alternative names), so it is not valid for {}",
                    expected.to_str()
                )
            } else {
                format!(
                    "it is issued for {} and not for {}",
                    presented.iter().map(|p| presented_name(p)).collect::<Vec<_>>().join(", "),
                    expected.to_str()
                )
            },
        ),
        C::NotValidForName => (
            CertProblem::WrongName,
            "it is not issued for the host name dialed".to_owned(),
        ),
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => (
            CertProblem::WrongPurpose,
            "it is not meant for server authentication (its extended key usage lacks serverAuth)".to_owned(),
        ),
        C::Other(other) if matches!(other.0.downcast_ref::<webpki::Error>(), Some(webpki::Error::CaUsedAsEndEntity)) => (
            CertProblem::UntrustedSelfSigned,
            "it is a CA certificate (CA:TRUE, as `openssl req -x509` makes by default) used as the server's own certificate, and this exact certificate is not in the trust list".to_owned(),
        ),
        other => (CertProblem::Other, format!("it was refused: {other:?}")),
    };
    Some(CertTrouble { problem, what })
}

/// A name as webpki reports it (`DnsName("a.example")`, `IpAddress(V4(Ipv4Addr([10, 0, 0, 1])))`)
/// as a person writes it.
fn presented_name(raw: &str) -> String {
    if let Some(dns) = raw.strip_prefix("DnsName(\"").and_then(|r| r.strip_suffix("\")")) {
        return dns.to_owned();
    }
    if let Some(start) = raw.find("([").map(|i| i + 2)
        && let Some(len) = raw[start..].find(']')
    {
        let parts: Vec<u16> = raw[start..start + len]
            .split(',')
            .filter_map(|p| p.trim().parse().ok())
            .collect();
        if parts.len() == 4 {
            return parts.iter().map(u16::to_string).collect::<Vec<_>>().join(".");
        }
        if parts.len() == 16 {
            let bytes: Vec<u8> = parts.iter().map(|b| *b as u8).collect();
            if let Ok(octets) = <[u8; 16]>::try_from(bytes.as_slice()) {
                return std::net::Ipv6Addr::from(octets).to_string();
            }
        }
    }
    raw.to_owned()
}

fn unix_time(t: UnixTime) -> String {
    jiff::Timestamp::from_second(t.as_secs() as i64)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("{}s after 1970", t.as_secs()))
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
    fn presented_names_read_as_written() {
        assert_eq!(presented_name("DnsName(\"argocd.example.com\")"), "argocd.example.com");
        assert_eq!(presented_name("IpAddress(V4(Ipv4Addr([127, 0, 0, 1])))"), "127.0.0.1");
        assert_eq!(presented_name("Other"), "Other");
    }

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
