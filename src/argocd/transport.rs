//! The HTTP/1.1 transport to Argo CD: rustls configuration per TLS mode, and the mapping of
//! transport failures to errors that name the fix.

use super::config::{ArgoCdConfig, TlsMode};
use super::error::ArgoCdError;

/// Builds the rustls client configuration for a TLS mode (`None` for plaintext).
pub fn rustls_config(mode: &TlsMode) -> Option<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .ok()?;
    let mut config = match mode {
        TlsMode::Plaintext => return None,
        TlsMode::Verify { extra_roots } => builder
            .dangerous()
            .with_custom_certificate_verifier(verifier(extra_roots))
            .with_no_client_auth(),
        TlsMode::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(crate::tls::accept_any())
            .with_no_client_auth(),
    };
    // REST must be HTTP/1.1: argocd-server routes HTTP/2 only to its gRPC server.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Some(config)
}

/// The verifier of TLS mode `Verify`: system roots plus `--trust-ca`, where a certificate in the
/// trust list is also trusted as the server's own (see [`crate::tls::ServerTrust`]).
pub fn verifier(
    extra_roots: &[rustls_pki_types::CertificateDer<'static>],
) -> std::sync::Arc<crate::tls::Verifier<crate::tls::ServerTrust>> {
    let system = crate::tls::system_roots();
    std::sync::Arc::new(crate::tls::Verifier::new(crate::tls::ServerTrust::new(
        system.iter().chain(extra_roots.iter()),
    )))
}

/// Builds the reqwest client for a configuration.
pub fn http_client(config: &ArgoCdConfig) -> Result<reqwest::Client, ArgoCdError> {
    let mut b = reqwest::Client::builder()
        .http1_only()
        .user_agent(format!("argocd-gateway/{}", crate::VERSION))
        // A redirect is how argocd-server answers plaintext on its TLS port; following it would
        // hide the misconfiguration, so it is reported instead.
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(config.request_timeout.min(std::time::Duration::from_secs(10)))
        .pool_idle_timeout(std::time::Duration::from_secs(60));
    if let Some(tls) = rustls_config(&config.tls) {
        b = b.tls_backend_preconfigured(tls);
    }
    b.build().map_err(|e| ArgoCdError::Tls {
        url: config.base_url.to_string(),
        detail: format!("cannot build the HTTP client: {e}"),
    })
}

/// Finds a rustls error in an error's source chain (reqwest wraps it in hyper and io errors).
pub fn find_rustls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        // `io::Error::source` skips the wrapped error itself, so look inside explicitly.
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            if let Some(r) = inner.downcast_ref::<rustls::Error>() {
                return Some(r);
            }
            if let Some(r) = find_rustls_error(inner) {
                return Some(r);
            }
        }
        cur = e.source();
    }
    None
}

/// Maps a rustls error to the error that says what is wrong and names its fix.
pub fn classify_tls(url: &str, err: &rustls::Error) -> ArgoCdError {
    use crate::tls::CertProblem;
    let url = url.to_owned();
    if let Some(trouble) = crate::tls::diagnose(err) {
        let detail = trouble.what;
        let fix = match trouble.problem {
            CertProblem::UnknownIssuer | CertProblem::UntrustedSelfSigned => {
                return ArgoCdError::UnknownAuthority { url, detail };
            }
            CertProblem::Expired => {
                "renew Argo CD's server certificate (the argocd-server-tls Secret), or set gateway.argocd.insecure=true (--argocd-insecure) until it is renewed"
            }
            CertProblem::NotYetValid => {
                "check the clocks of the gateway's node and of the server, or renew the certificate"
            }
            CertProblem::WrongName => {
                "use a host name the certificate names in --argocd-server (Helm gateway.argocd.serverUrl), reissue the certificate for this name, or set gateway.argocd.insecure=true (--argocd-insecure)"
            }
            CertProblem::WrongPurpose => {
                "reissue the certificate with extendedKeyUsage serverAuth, or set gateway.argocd.insecure=true (--argocd-insecure)"
            }
            CertProblem::Other => "fix the certificate, or set gateway.argocd.insecure=true (--argocd-insecure)",
        };
        return ArgoCdError::BadCertificate {
            url,
            detail,
            fix: fix.to_owned(),
        };
    }
    let detail = err.to_string();
    match err {
        // Non-TLS bytes where a TLS record was expected: the server speaks plain HTTP.
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            ArgoCdError::TlsAgainstPlaintext { url, detail }
        }
        _ => ArgoCdError::Tls { url, detail },
    }
}

/// Maps a reqwest error to a classified error.
pub fn classify_reqwest(url: &str, what: &str, timeout: std::time::Duration, err: &reqwest::Error) -> ArgoCdError {
    if let Some(tls) = find_rustls_error(err) {
        return classify_tls(url, tls);
    }
    if err.is_timeout() {
        return ArgoCdError::Timeout {
            what: what.to_owned(),
            seconds: timeout.as_secs_f64(),
        };
    }
    // Chain the sources into one message: reqwest's top-level text alone ("error sending request")
    // does not say why.
    let mut message = err.to_string();
    let mut src = std::error::Error::source(err);
    while let Some(s) = src {
        message.push_str(": ");
        message.push_str(&s.to_string());
        src = s.source();
    }
    ArgoCdError::Unavailable {
        url: url.to_owned(),
        status: None,
        message,
    }
}

/// Whether the response could not be parsed as HTTP (what a plaintext client sees from a TLS server).
pub fn is_http_parse_error(err: &reqwest::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            return h.is_parse() || h.is_parse_status();
        }
        cur = e.source();
    }
    false
}
