//! Gateway identity, with no network: the key, certificate and hub CA that prove who the gateway
//! is, and the store that keeps them across restarts ([`store`]: the trait and the file store;
//! the Kubernetes Secret store lives with the other Kubernetes code, and which one is used is
//! decided by the composition root, [`crate::cli::open_identity_store`]).
//!
//! The private key is made on the gateway and never leaves it; the hub only ever sees CSRs
//! (registration and renewal are calls to the hub, in [`crate::uplink::register`]).

pub mod store;

use serde::{Deserialize, Serialize};

use crate::certs::{self, CertError, CertInfo};
use crate::secret::Secret;

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
