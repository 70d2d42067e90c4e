//! Gateway identity: registration with a one-hour token, the certificate and key that prove who
//! the gateway is afterwards, the signed assertion that survives TLS-terminating proxies, and
//! the store that keeps it all across restarts.
//!
//! The private key is made here and never leaves the gateway; the hub only ever sees CSRs.

pub mod assertion;
pub mod certs;
pub mod register;
pub mod store;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;
use certs::{CertError, CertInfo};

/// Everything a registered gateway needs to authenticate to its hub.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    /// The id the hub assigned at registration.
    pub gateway_id: String,
    /// Display name recorded by the hub.
    #[serde(default)]
    pub name: String,
    /// Environments recorded by the hub.
    #[serde(default)]
    pub environments: Vec<String>,
    /// The hub URL used at registration (for diagnostics only).
    #[serde(default)]
    pub hub_url: String,
    /// ECDSA P-256 private key, PEM.
    pub key_pem: Secret,
    /// Client certificate issued by the hub CA, PEM.
    pub cert_pem: String,
    /// The hub CA bundle, PEM.
    pub ca_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("gateway_id", &self.gateway_id)
            .field("name", &self.name)
            .field("environments", &self.environments)
            .field("hub_url", &self.hub_url)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Facts about the client certificate.
    pub fn cert_info(&self) -> Result<CertInfo, CertError> {
        CertInfo::from_pem(&self.cert_pem)
    }

    /// The private key.
    pub fn key(&self) -> Result<rcgen::KeyPair, CertError> {
        certs::load_key(self.key_pem.expose())
    }
}
