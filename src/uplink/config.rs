//! How to reach and trust the hub, as one flag group that `run`, `register`, `check` and
//! `self-update` flatten: the URL forms of SPEC §3, TLS or plaintext, pins, extra trusted CAs,
//! and where the gateway's identity is kept.

use std::time::Duration;

use rustls_pki_types::CertificateDer;

use crate::identity::store::{IdentityLocation, StoreError};
use crate::tls::{Fingerprint, TlsError, TrustArgs};

/// Flags that say how to reach and trust the hub, and where the identity lives.
#[derive(Debug, Clone, clap::Args)]
pub struct UplinkArgs {
    /// Hub gRPC address: https://host:port, grpc://host:port, host:port, or http://host:port
    /// with --hub-plaintext (Helm gateway.hub.serverGrpcUrl).
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_URL")]
    pub hub_url: Option<String>,
    /// Speak plaintext HTTP/2 to the hub, for hubs behind a TLS-terminating proxy on a trusted
    /// network (Helm gateway.hub.plaintext).
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_PLAINTEXT")]
    pub hub_plaintext: bool,
    /// Pin the hub's leaf certificate by SHA-256; with a pin the chain is not checked (Helm
    /// gateway.hub.serverThumbprint).
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_FINGERPRINT")]
    pub hub_fingerprint: Option<String>,
    /// SHA-256 of the hub CA, as printed when the registration token was created; verifies
    /// first contact with a self-signed hub (Helm registration.caFingerprint).
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_CA_FINGERPRINT")]
    pub hub_ca_fingerprint: Option<String>,
    /// How the session reaches the hub: `auto` tries gRPC over HTTP/2 and, when HTTP/2 cannot
    /// get through, falls back once to the same session inside a WebSocket (HTTP/1.1 upgrade);
    /// `h2` or `websocket` use only that one (Helm gateway.hub.transport).
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_TRANSPORT", default_value = "auto", value_enum)]
    pub hub_transport: Transport,
    /// Give up a dial step (DNS, TCP, TLS, HTTP/2) after this long.
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_CONNECT_TIMEOUT", default_value = "10s", value_parser = crate::util::parse_duration)]
    pub hub_connect_timeout: Duration,
    /// Extra trusted CAs, for the hub and for Argo CD.
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Identity store: secret:NAMESPACE/NAME (a Kubernetes Secret) or file:PATH (mode 0600).
    /// Default: secret:$POD_NAMESPACE/argocd-gateway-identity in a cluster, else
    /// file:argocd-gateway-identity.json.
    #[arg(long = "identity", env = "ARGOCD_GATEWAY_IDENTITY")]
    pub identity: Option<String>,
}

/// How the gateway's calls reach the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// HTTP/2, falling back to WebSocket once when HTTP/2 cannot get through.
    Auto,
    /// gRPC over HTTP/2 only.
    H2,
    /// The gRPC session inside a WebSocket (HTTP/1.1 upgrade) only.
    Websocket,
}

impl Transport {
    /// The name as the flag and the hello spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::H2 => "h2",
            Self::Websocket => "websocket",
        }
    }
}

/// What the gateway learned about its hub, shared by every dialer and session of one process:
/// once HTTP/2 failed and the WebSocket worked, later dials go straight to the WebSocket; once
/// the hub refused the current protocol, sessions speak the previous one.
#[derive(Debug, Default)]
pub struct TransportMemory {
    /// `auto` fell back to the WebSocket.
    pub fell_back: std::sync::atomic::AtomicBool,
    /// The hub's last welcome named no "websocket" capability: falling back cannot help.
    pub hub_without_websocket: std::sync::atomic::AtomicBool,
    /// The hub refused this build's protocol version as too new (a hub of the previous
    /// version): sessions speak the previous one.
    pub older_protocol: std::sync::atomic::AtomicBool,
}

/// A configuration error found before any I/O.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Hub settings.
    #[error(transparent)]
    Hub(#[from] HubConfigError),
    /// Trust material.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Identity location.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The validated uplink settings.
#[derive(Debug, Clone)]
pub struct UplinkConfig {
    /// Hub endpoint, pin and first-contact fingerprint.
    pub hub: HubConfig,
    /// Extra trusted CAs from `--trust-ca`.
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Where the identity is kept; the composition root opens the store.
    pub identity: IdentityLocation,
}

/// A configuration error about the hub settings.
#[derive(Debug, thiserror::Error)]
pub enum HubConfigError {
    /// No URL.
    #[error("no hub URL: set --hub-url (Helm gateway.hub.serverGrpcUrl)")]
    MissingUrl,
    /// Unparseable URL.
    #[error("invalid hub URL {url:?}: {reason} (flag --hub-url, Helm gateway.hub.serverGrpcUrl)")]
    BadUrl {
        /// The URL given.
        url: String,
        /// Why it is invalid.
        reason: String,
    },
    /// `http://` without plaintext.
    #[error(
        "hub URL {url:?} is http:// but --hub-plaintext is not set: use https:// for TLS, or set --hub-plaintext (Helm gateway.hub.plaintext=true) if TLS really ends at a proxy in front of the hub"
    )]
    HttpWithoutPlaintext {
        /// The URL given.
        url: String,
    },
    /// `https://` with plaintext.
    #[error(
        "hub URL {url:?} is https:// but --hub-plaintext is set: unset --hub-plaintext (Helm gateway.hub.plaintext=false), or use an http:// URL"
    )]
    HttpsWithPlaintext {
        /// The URL given.
        url: String,
    },
    /// A pin or CA fingerprint with plaintext makes no sense.
    #[error(
        "--hub-fingerprint / --hub-ca-fingerprint cannot apply with --hub-plaintext: there is no certificate to check (Helm gateway.hub.serverThumbprint, registration.caFingerprint, gateway.hub.plaintext)"
    )]
    PinWithPlaintext,
    /// Bad fingerprint text.
    #[error(transparent)]
    Fingerprint(#[from] TlsError),
}

/// Where the hub is, parsed and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubEndpoint {
    /// Host name or IP literal (without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// True for plaintext HTTP/2.
    pub plaintext: bool,
}

impl HubEndpoint {
    /// Parses a hub URL in any of the SPEC §3 forms.
    pub fn parse(url: &str, plaintext: bool) -> Result<Self, HubConfigError> {
        let bad = |reason: &str| HubConfigError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let trimmed = url.trim();
        if trimmed.is_empty() {
            return Err(HubConfigError::MissingUrl);
        }
        let (scheme, rest) = match trimmed.split_once("://") {
            Some((s, r)) => (Some(s.to_ascii_lowercase()), r),
            None => (None, trimmed),
        };
        match scheme.as_deref() {
            None | Some("grpc") | Some("grpcs") => {}
            Some("https") if plaintext => return Err(HubConfigError::HttpsWithPlaintext { url: url.to_owned() }),
            Some("https") => {}
            Some("http") if !plaintext => return Err(HubConfigError::HttpWithoutPlaintext { url: url.to_owned() }),
            Some("http") => {}
            Some(other) => {
                return Err(bad(&format!(
                    "unsupported scheme {other}://; use https://, grpc:// or http://"
                )));
            }
        }
        let authority = rest.trim_end_matches('/');
        if authority.contains('/') {
            return Err(bad("a hub URL takes no path"));
        }
        let parsed = url::Url::parse(&format!("scheme://{authority}")).map_err(|e| bad(&e.to_string()))?;
        let host = match parsed.host() {
            Some(url::Host::Domain(d)) => d.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(bad("no host")),
        };
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(bad("credentials do not belong in the hub URL"));
        }
        let port = parsed.port().unwrap_or(if plaintext { 80 } else { 443 });
        Ok(Self { host, port, plaintext })
    }

    /// `host:port`, with brackets around IPv6 literals.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The canonical URL, for display and for request URIs.
    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.plaintext { "http" } else { "https" },
            self.authority()
        )
    }
}

/// Validated hub settings.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Where to dial.
    pub endpoint: HubEndpoint,
    /// Leaf pin, if any.
    pub pin: Option<Fingerprint>,
    /// CA fingerprint for first contact, if any.
    pub ca_fingerprint: Option<Fingerprint>,
    /// Per-step dial timeout.
    pub connect_timeout: Duration,
    /// The configured transport.
    pub transport: Transport,
    /// What `auto` learned so far (shared by clones).
    pub memory: std::sync::Arc<TransportMemory>,
}

impl UplinkArgs {
    /// Validates every flag and loads the trust material, before any network I/O.
    pub fn validate(&self) -> Result<UplinkConfig, ConfigError> {
        Ok(UplinkConfig {
            hub: self.hub()?,
            extra_roots: self.trust.load()?,
            identity: self.identity_location()?,
        })
    }

    /// Parses the identity location, or picks the default for where the process runs.
    pub fn identity_location(&self) -> Result<IdentityLocation, StoreError> {
        match self.identity.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            Some(s) => s.parse(),
            None => Ok(IdentityLocation::default_from_env()),
        }
    }

    /// Validates the hub flags alone.
    pub fn hub(&self) -> Result<HubConfig, HubConfigError> {
        let url = self.hub_url.as_deref().ok_or(HubConfigError::MissingUrl)?;
        let endpoint = HubEndpoint::parse(url, self.hub_plaintext)?;
        let pin = nonempty(&self.hub_fingerprint)
            .map(|v| Fingerprint::parse(v, "--hub-fingerprint (Helm gateway.hub.serverThumbprint)"))
            .transpose()?;
        let ca_fingerprint = nonempty(&self.hub_ca_fingerprint)
            .map(|v| Fingerprint::parse(v, "--hub-ca-fingerprint (Helm registration.caFingerprint)"))
            .transpose()?;
        if endpoint.plaintext && (pin.is_some() || ca_fingerprint.is_some()) {
            return Err(HubConfigError::PinWithPlaintext);
        }
        Ok(HubConfig {
            endpoint,
            pin,
            ca_fingerprint,
            connect_timeout: self.hub_connect_timeout,
            transport: self.hub_transport,
            memory: Default::default(),
        })
    }
}

fn nonempty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        let ep = |u: &str, p: bool| HubEndpoint::parse(u, p);
        assert_eq!(
            ep("hub.example.com:8443", false).unwrap().url(),
            "https://hub.example.com:8443"
        );
        assert_eq!(ep("grpc://hub:9000", false).unwrap().port, 9000);
        assert_eq!(ep("https://hub", false).unwrap().port, 443);
        assert_eq!(ep("http://hub", true).unwrap().port, 80);
        assert_eq!(ep("[::1]:8443", false).unwrap().authority(), "[::1]:8443");
        assert!(matches!(
            ep("http://hub:80", false),
            Err(HubConfigError::HttpWithoutPlaintext { .. })
        ));
        assert!(matches!(
            ep("https://hub:80", true),
            Err(HubConfigError::HttpsWithPlaintext { .. })
        ));
        assert!(matches!(ep("ftp://hub", false), Err(HubConfigError::BadUrl { .. })));
        assert!(matches!(
            ep("https://hub/path", false),
            Err(HubConfigError::BadUrl { .. })
        ));
        assert!(matches!(ep("", false), Err(HubConfigError::MissingUrl)));
        let msg = ep("http://hub", false).unwrap_err().to_string();
        assert!(msg.contains("--hub-plaintext") && msg.contains("gateway.hub.plaintext"));
    }
}
