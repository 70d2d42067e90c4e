//! Deregistration: the gateway asks the hub, as itself, to remove it (the chart's pre-delete
//! hook on `helm uninstall`), and the reporting of a failed registration preflight, which
//! tells the hub why a token is still unused.

use rustls_pki_types::CertificateDer;

use super::dial::{DialError, Dialer};
use super::{AuthError, HubConfig, authenticated};
use crate::identity::Identity;
use crate::report::{Report, Status};
use crate::secret::Secret;
use crate::wire::ErrorCode;
use crate::wire::assertion::Purpose;
use crate::wire::proto::registration_client::RegistrationClient;
use crate::wire::proto::{DeregisterRequest, PreflightReport, PreflightRow};

/// Why deregistration failed.
#[derive(Debug, thiserror::Error)]
pub enum DeregisterError {
    /// The call could not be prepared.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Could not reach or trust the hub.
    #[error(transparent)]
    Dial(#[from] DialError),
    /// The hub refused.
    #[error("the hub refused to deregister the gateway: {}", .0.message())]
    Refused(#[source] tonic::Status),
}

/// What the hub said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deregistered {
    /// The hub removed the gateway now.
    Removed,
    /// The hub no longer knew it (deleted or removed before).
    AlreadyGone,
}

/// Asks the hub to remove this gateway and close its sessions.
pub async fn deregister(
    hub: &HubConfig,
    extra_roots: &[CertificateDer<'static>],
    identity: &Identity,
    reason: &str,
) -> Result<Deregistered, DeregisterError> {
    let request = authenticated(
        identity,
        Purpose::Deregister,
        DeregisterRequest {
            reason: reason.to_owned(),
        },
    )?;
    let channel = Dialer::new(hub, extra_roots, Some(identity))?.connect().await?;
    match RegistrationClient::new(channel).deregister(request).await {
        Ok(_) => Ok(Deregistered::Removed),
        Err(status) if ErrorCode::from_status(&status) == Some(ErrorCode::Revoked) => Ok(Deregistered::AlreadyGone),
        Err(status) => Err(DeregisterError::Refused(status)),
    }
}

/// Tells the hub (best effort) that the registration preflight failed, with the failed rows,
/// so `hub token status` shows why the token is unused. Returns the hub's refusal, if any: an
/// expired or used token is worth telling the user about too.
pub async fn report_preflight(
    hub: &HubConfig,
    extra_roots: &[CertificateDer<'static>],
    token: &Secret,
    report: &Report,
) -> Result<(), String> {
    let failed = report
        .rows
        .iter()
        .filter(|r| r.status == Status::Fail)
        .map(|r| PreflightRow {
            name: r.name.clone(),
            detail: r.detail.clone(),
            fix: r.fix.clone().unwrap_or_default(),
        })
        .collect();
    let request = PreflightReport {
        token: token.expose().to_owned(),
        failed,
    };
    let dialer = Dialer::new(hub, extra_roots, None).map_err(|e| e.to_string())?;
    let channel = dialer.connect().await.map_err(|e| e.to_string())?;
    RegistrationClient::new(channel)
        .report_preflight(request)
        .await
        .map(|_| ())
        .map_err(|s| s.message().to_owned())
}
