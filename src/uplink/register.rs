//! Registration: exchange the one-hour token and a CSR for a gateway identity, once; and
//! certificate renewal over an authenticated channel, with a fresh key each time.

use std::path::PathBuf;

use super::dial::{DialError, Dialer};
use super::{AuthError, HubConfig, authenticated};
use crate::certs::{self, CertError};
use crate::identity::Identity;
use crate::identity::store::{IdentityStore, StoreError};
use crate::secret::Secret;
use crate::wire::ErrorCode;
use crate::wire::assertion::Purpose;
use crate::wire::proto::registration_client::RegistrationClient;
use crate::wire::proto::{RegisterRequest, RenewRequest};

/// Registration flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RegistrationArgs {
    /// The one-hour registration token (prefer --registration-token-file; Helm registration.token).
    #[arg(long, env = "ARGOCD_GATEWAY_REGISTRATION_TOKEN", hide_env_values = true)]
    pub registration_token: Option<Secret>,
    /// File holding the registration token, re-read on every attempt (Helm registration.token or
    /// registration.tokenSecretName).
    #[arg(long, env = "ARGOCD_GATEWAY_REGISTRATION_TOKEN_FILE")]
    pub registration_token_file: Option<PathBuf>,
    /// Gateway name shown at the hub (Helm registration.name).
    #[arg(long = "name", env = "ARGOCD_GATEWAY_NAME")]
    pub name: Option<String>,
    /// Environment this gateway serves, repeatable (Helm registration.environments).
    #[arg(long = "environment", env = "ARGOCD_GATEWAY_ENVIRONMENT", value_delimiter = ',')]
    pub environments: Vec<String>,
    /// Argo CD web UI address to link to from the hub (Helm registration.argocd.webUiUrl).
    #[arg(long, env = "ARGOCD_GATEWAY_ARGOCD_WEB_URL")]
    pub argocd_web_url: Option<String>,
}

/// Why registration failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// No identity and no token.
    #[error(
        "no gateway identity in {store} and no registration token: create one with `argocd-gateway hub token create` and pass it with --registration-token-file (Helm registration.token)"
    )]
    NoToken {
        /// The identity store.
        store: String,
    },
    /// The token file could not be read.
    #[error(
        "cannot read the registration token file {path}: {source} (flag --registration-token-file, Helm registration.token / registration.tokenSecretName)"
    )]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The hub does not know the token.
    #[error(
        "the hub does not know this registration token (mistyped, revoked, or issued by another hub): create a new one with `argocd-gateway hub token create` and set it with --registration-token-file (Helm registration.token)"
    )]
    TokenUnknown,
    /// The token expired.
    #[error(
        "the registration token has expired (tokens last one hour by default): create a new one with `argocd-gateway hub token create` and set it with --registration-token-file (Helm registration.token)"
    )]
    TokenExpired,
    /// The token was used before.
    #[error(
        "the registration token was already used (tokens are single-use): create a new one with `argocd-gateway hub token create` and set it with --registration-token-file (Helm registration.token)"
    )]
    TokenUsed,
    /// Could not reach or trust the hub.
    #[error(transparent)]
    Dial(#[from] DialError),
    /// The hub refused for another reason.
    #[error("the hub refused registration: {}", .0.message())]
    Refused(#[source] tonic::Status),
    /// The hub refused the renewal.
    #[error("the hub refused to renew the certificate: {}", .0.message())]
    RenewRefused(#[source] tonic::Status),
    /// The renewal call could not be prepared.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The hub answered something unusable.
    #[error("the hub's registration answer is unusable: {0}")]
    BadAnswer(String),
    /// Key or certificate handling failed.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// The identity could not be stored.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RegisterError {
    /// True when retrying with the same inputs cannot succeed.
    pub fn needs_new_token(&self) -> bool {
        matches!(
            self,
            Self::NoToken { .. } | Self::TokenUnknown | Self::TokenExpired | Self::TokenUsed
        )
    }
}

impl RegistrationArgs {
    /// The token, read fresh from the file when one is configured, so a rotated Secret is seen.
    pub fn token(&self) -> Result<Option<Secret>, RegisterError> {
        if let Some(path) = &self.registration_token_file {
            return match std::fs::read_to_string(path) {
                Ok(s) if !s.trim().is_empty() => Ok(Some(Secret::new(s.trim()))),
                Ok(_) => Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(RegisterError::TokenFile {
                    path: path.clone(),
                    source,
                }),
            };
        }
        Ok(self.registration_token.clone().filter(|t| !t.is_empty()))
    }
}

/// Registers with the hub and stores the identity. When another replica stored one first, that
/// identity is returned instead.
pub async fn register(
    hub: &HubConfig,
    extra_roots: &[rustls::pki_types::CertificateDer<'static>],
    store: &dyn IdentityStore,
    args: &RegistrationArgs,
) -> Result<Identity, RegisterError> {
    let token = args.token()?.ok_or_else(|| RegisterError::NoToken {
        store: store.describe(),
    })?;
    let key = certs::generate_key()?;
    let name = args.name.clone().unwrap_or_default();
    let csr_pem = certs::csr_pem(&key, if name.is_empty() { "argocd-gateway" } else { &name })?;
    let channel = Dialer::new(hub, extra_roots, None)?.connect().await?;
    let request = RegisterRequest {
        token: token.expose().to_owned(),
        csr_pem,
        name,
        environments: args.environments.clone(),
        argocd_web_url: args.argocd_web_url.clone().unwrap_or_default(),
        gateway_version: crate::VERSION.to_owned(),
    };
    let response = match RegistrationClient::new(channel).register(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            return Err(match ErrorCode::from_status(&status) {
                Some(ErrorCode::TokenUnknown) => RegisterError::TokenUnknown,
                Some(ErrorCode::TokenExpired) => RegisterError::TokenExpired,
                Some(ErrorCode::TokenUsed) => {
                    // Another replica may have won the race with the same single-use token.
                    if let Some(existing) = store.load().await? {
                        return Ok(existing);
                    }
                    RegisterError::TokenUsed
                }
                _ => RegisterError::Refused(status),
            });
        }
    };
    let info = certs::CertInfo::from_pem(&response.certificate_pem)?;
    if info.public_key != key.public_key_raw() || info.common_name != response.gateway_id {
        return Err(RegisterError::BadAnswer(
            "the certificate does not match our key or gateway id".into(),
        ));
    }
    crate::tls::parse_certs_pem(response.ca_bundle_pem.as_bytes(), "hub CA bundle")
        .ok()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| RegisterError::BadAnswer("no CA bundle".into()))?;
    let identity = Identity {
        gateway_id: response.gateway_id,
        name: response.name,
        environments: response.environments,
        hub_url: hub.endpoint.url(),
        key_pem: Secret::new(key.serialize_pem()),
        cert_pem: response.certificate_pem,
        ca_pem: response.ca_bundle_pem,
    };
    Ok(store.create(&identity).await?)
}

/// Renews the certificate over an authenticated channel: a new key, a CSR, and the same
/// identity otherwise. The caller stores the result.
pub async fn renew(channel: tonic::transport::Channel, identity: &Identity) -> Result<Identity, RegisterError> {
    let key = certs::generate_key()?;
    let csr_pem = certs::csr_pem(&key, &identity.gateway_id)?;
    let request = authenticated(identity, Purpose::Renew, RenewRequest { csr_pem })?;
    let response = RegistrationClient::new(channel)
        .renew(request)
        .await
        .map_err(RegisterError::RenewRefused)?
        .into_inner();
    let info = certs::CertInfo::from_pem(&response.certificate_pem)?;
    if info.public_key != key.public_key_raw() || info.common_name != identity.gateway_id {
        return Err(RegisterError::BadAnswer(
            "the renewed certificate does not match our key or gateway id".into(),
        ));
    }
    Ok(Identity {
        key_pem: Secret::new(key.serialize_pem()),
        cert_pem: response.certificate_pem,
        ca_pem: if response.ca_bundle_pem.is_empty() {
            identity.ca_pem.clone()
        } else {
            response.ca_bundle_pem
        },
        ..identity.clone()
    })
}
