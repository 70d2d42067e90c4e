//! Every call the gateway makes to the hub, and only those: how to reach and trust it
//! ([`config`], [`trust`]), dialing one step at a time with errors that name the fix and the
//! CONNECT proxy ([`dial`]), registration and certificate renewal ([`register`]),
//! deregistration and the preflight report ([`deregister`]), the desired-version query of
//! `self-update` ([`version`]) and opening the tunnel stream
//! ([`open_tunnel`]). Calls made as the registered gateway carry the signed identity assertion,
//! attached in one place: [`authenticated`].
//!
//! The session that runs over the tunnel, and the reconnect loop around it, live in
//! [`crate::tunnel`].

pub mod config;
pub mod deregister;
pub mod dial;
pub mod register;
pub mod trust;
pub mod version;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

pub use config::{
    ConfigError, HubConfig, HubConfigError, HubEndpoint, Transport, TransportMemory, UplinkArgs, UplinkConfig,
};
pub use dial::{DialError, Dialer};

use crate::certs::CertError;
use crate::identity::Identity;
use crate::wire::assertion::{self, AssertionError, Purpose};
use crate::wire::proto::{GatewayMessage, HubMessage, tunnel_client::TunnelClient};

/// Why a call as the registered gateway could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The stored certificate or key cannot be read.
    #[error("the stored gateway identity is unusable: {0}; register the gateway again")]
    Identity(#[source] CertError),
    /// Signing the assertion failed.
    #[error("cannot sign the identity assertion: {0}")]
    Sign(#[source] AssertionError),
    /// The assertion does not fit in gRPC metadata (cannot happen with our encoding).
    #[error("the identity assertion is not valid gRPC metadata")]
    Metadata,
}

/// Wraps `message` in a request that carries a fresh assertion for `purpose`, signed with the
/// gateway's key: the one place the gateway proves who it is beyond mutual TLS.
pub fn authenticated<T>(identity: &Identity, purpose: Purpose, message: T) -> Result<tonic::Request<T>, AuthError> {
    let cert = identity.cert_info().map_err(AuthError::Identity)?;
    let key = identity.key().map_err(AuthError::Identity)?;
    let token = assertion::sign(
        &key,
        &identity.gateway_id,
        &cert,
        purpose,
        jiff::Timestamp::now().as_second(),
    )
    .map_err(AuthError::Sign)?;
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert(assertion::METADATA_KEY, token.parse().map_err(|_| AuthError::Metadata)?);
    Ok(request)
}

/// Why the tunnel stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The call could not be prepared.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The hub refused or failed the call.
    #[error("the hub refused the tunnel: {}: {}", .0.code(), .0.message())]
    Refused(#[source] tonic::Status),
}

/// Opens the tunnel stream on `channel` as `identity`; `outbound` carries the gateway's
/// messages, the first of which must be its hello.
pub async fn open_tunnel(
    channel: tonic::transport::Channel,
    identity: &Identity,
    outbound: mpsc::Receiver<GatewayMessage>,
) -> Result<tonic::Streaming<HubMessage>, OpenError> {
    let request = authenticated(identity, Purpose::Tunnel, ReceiverStream::new(outbound))?;
    TunnelClient::new(channel)
        .max_decoding_message_size(crate::wire::codes::MAX_DECODED_MESSAGE_BYTES)
        .max_encoding_message_size(crate::wire::codes::MAX_DECODED_MESSAGE_BYTES)
        .open(request)
        .await
        .map(tonic::Response::into_inner)
        .map_err(OpenError::Refused)
}
