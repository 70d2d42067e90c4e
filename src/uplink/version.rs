//! The desired-version query of `self-update`: the gateway asks the hub, as the registered
//! gateway, which version it should run. Deciding whether to move is the caller's.

use rustls_pki_types::CertificateDer;
use semver::Version;

use super::dial::{DialError, Dialer};
use super::{AuthError, HubConfig, authenticated};
use crate::identity::Identity;
use crate::wire::assertion::Purpose;
use crate::wire::proto::GetDesiredVersionRequest;
use crate::wire::proto::registration_client::RegistrationClient;

/// Why the desired version could not be learned.
#[derive(Debug, thiserror::Error)]
pub enum VersionQueryError {
    /// The call could not be prepared.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Could not reach or trust the hub.
    #[error(transparent)]
    Dial(#[from] DialError),
    /// The hub refused the query.
    #[error("the hub refused the desired-version query: {}", .0.message())]
    Hub(#[source] tonic::Status),
    /// The hub's answer is not a version.
    #[error(
        "the hub's desired version {value:?} is not a semantic version ({source}); fix it at the hub with `argocd-gateway hub desired-version set X.Y.Z`"
    )]
    NotAVersion {
        /// What the hub sent.
        value: String,
        /// The parse error.
        source: semver::Error,
    },
}

/// Asks the hub, as the registered gateway, for the desired version; `None` when none is set.
pub async fn desired_version(
    hub: &HubConfig,
    extra_roots: &[CertificateDer<'static>],
    identity: &Identity,
    current: &Version,
) -> Result<Option<Version>, VersionQueryError> {
    query_desired_version(hub, extra_roots, identity, current, None).await
}

/// Like [`desired_version`], telling the hub whether (and why) self-update holds back, so the
/// hub shows the gateway's "update held" state; `None` clears it.
pub async fn query_desired_version(
    hub: &HubConfig,
    extra_roots: &[CertificateDer<'static>],
    identity: &Identity,
    current: &Version,
    held: Option<&str>,
) -> Result<Option<Version>, VersionQueryError> {
    let request = authenticated(
        identity,
        Purpose::Version,
        GetDesiredVersionRequest {
            current_version: current.to_string(),
            update_held: held.unwrap_or_default().to_owned(),
        },
    )?;
    let channel = Dialer::new(hub, extra_roots, Some(identity))?.connect().await?;
    let answer = RegistrationClient::new(channel)
        .get_desired_version(request)
        .await
        .map_err(VersionQueryError::Hub)?
        .into_inner()
        .desired_version;
    if answer.trim().is_empty() {
        return Ok(None);
    }
    crate::wire::version::parse(&answer)
        .map(Some)
        .map_err(|source| VersionQueryError::NotAVersion { value: answer, source })
}
