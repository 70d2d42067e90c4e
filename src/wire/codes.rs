//! Wire-level conventions beyond the protobuf messages: protocol versions, the machine-readable
//! codes the hub attaches to refusals (so the gateway reacts to a code, never to message text),
//! and the names of request kinds and request-error codes used in metrics and logs.

use super::proto::{request, request_error};

/// The protocol version this build speaks.
///
/// 3 added ApplicationSets and projects as entity kinds, the gateway's transport in its hello,
/// and the WebSocket transport; 2 added chunked answers and, later, the set digest (a
/// capability, [`super::entity::CAP_SET_DIGEST`], so 2s with and without it work together).
pub const PROTOCOL_VERSION: u32 = 3;

/// The oldest protocol version this build still accepts (the current and the previous one).
pub const MIN_PROTOCOL_VERSION: u32 = if PROTOCOL_VERSION > 1 { PROTOCOL_VERSION - 1 } else { 1 };

/// Metadata key carrying a [`ErrorCode`] on a refused call.
pub const ERROR_CODE_KEY: &str = "x-argocd-gateway-error";

/// Metadata key carrying, on an [`ErrorCode::Overloaded`] refusal, how long to wait (ms).
pub const RETRY_AFTER_KEY: &str = "x-argocd-gateway-retry-after-ms";

/// Hub capability: answers may arrive in pieces (`Response.more`).
pub const CAP_CHUNKED_ANSWERS: &str = "chunked-answers";

/// Gateway capability: terminate, rollback, evaluate, and syncs with resources, force and
/// options. A gateway without it would ignore a sync's resource list and sync everything, so
/// the hub sends these only to gateways that name it.
pub const CAP_DEPLOY_ACTIONS: &str = "deploy-actions";

/// Capability (hub and gateway): ApplicationSets travel as entities of their own kind.
pub const CAP_APPLICATION_SETS: &str = "applicationsets";

/// Capability (hub and gateway): AppProjects travel as entities of their own kind.
pub const CAP_PROJECTS: &str = "projects";

/// Hub capability: the gRPC port also takes the tunnel inside a WebSocket (HTTP/1.1 upgrade on
/// [`crate::wire::websocket::PATH`]).
pub const CAP_WEBSOCKET: &str = "websocket";

/// What a hub speaking `protocol` offers (a hub pinned to an older version offers what that
/// version did, so version skew can be tested with one build).
pub fn hub_capabilities(protocol: u32) -> Vec<String> {
    let mut caps = vec![];
    if protocol >= 2 {
        caps.extend([CAP_CHUNKED_ANSWERS, super::entity::CAP_SET_DIGEST]);
    }
    if protocol >= 3 {
        caps.extend([CAP_APPLICATION_SETS, CAP_PROJECTS, CAP_WEBSOCKET]);
    }
    caps.into_iter().map(str::to_owned).collect()
}

/// What a gateway speaking `protocol` tells the hub it does.
pub fn gateway_capabilities(protocol: u32) -> Vec<String> {
    let mut caps = vec![super::entity::CAP_SET_DIGEST];
    if protocol >= 3 {
        caps.extend([CAP_APPLICATION_SETS, CAP_PROJECTS, CAP_DEPLOY_ACTIONS]);
    }
    caps.into_iter().map(str::to_owned).collect()
}

/// Checks a pinned protocol version (`--protocol-version`): the current or the previous one.
pub fn parse_pinned_protocol(text: &str) -> Result<u32, String> {
    let v: u32 = text.trim().parse().map_err(|_| format!("{text:?} is not a number"))?;
    if protocol_supported(v) {
        Ok(v)
    } else {
        Err(format!(
            "this build speaks protocol versions {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}"
        ))
    }
}

/// The largest gRPC message either side decodes. Senders stay well below it: relay messages
/// aim at 1 MiB, entities above the gateway's `--max-entity-bytes` travel as a stub, and
/// answers above 1 MiB travel in pieces.
pub const MAX_DECODED_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The size of one piece of a chunked answer.
pub const ANSWER_PIECE_BYTES: usize = 1024 * 1024;

/// Why the hub refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The registration token does not exist (never did, revoked, or mistyped).
    TokenUnknown,
    /// The registration token is past its expiry.
    TokenExpired,
    /// The registration token was already used.
    TokenUsed,
    /// The gateway was deleted at the hub.
    Revoked,
    /// The certificate is not one the hub issued to this gateway.
    UnknownCertificate,
    /// The identity assertion is missing, malformed, expired or replayed.
    BadAssertion,
    /// The gateway's protocol version is not supported.
    UnsupportedProtocol,
    /// The certificate expired, or was retired by a renewal: the identity must register again.
    IdentityExpired,
    /// A TLS hub needs the gateway's client certificate on this call.
    CertificateRequired,
    /// This identity is already connected from another instance (a copied identity Secret).
    IdentityCopied,
    /// The hub is busy accepting other sessions; retry after the delay in [`RETRY_AFTER_KEY`].
    Overloaded,
}

impl ErrorCode {
    /// The code as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TokenUnknown => "token-unknown",
            Self::TokenExpired => "token-expired",
            Self::TokenUsed => "token-used",
            Self::Revoked => "revoked",
            Self::UnknownCertificate => "unknown-certificate",
            Self::BadAssertion => "bad-assertion",
            Self::UnsupportedProtocol => "unsupported-protocol",
            Self::IdentityExpired => "identity-expired",
            Self::CertificateRequired => "certificate-required",
            Self::IdentityCopied => "identity-copied",
            Self::Overloaded => "overloaded",
        }
    }

    /// Parses a wire code.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::TokenUnknown,
            Self::TokenExpired,
            Self::TokenUsed,
            Self::Revoked,
            Self::UnknownCertificate,
            Self::BadAssertion,
            Self::UnsupportedProtocol,
            Self::IdentityExpired,
            Self::CertificateRequired,
            Self::IdentityCopied,
            Self::Overloaded,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }

    /// Reads the code attached to a refused call, if any.
    pub fn from_status(status: &tonic::Status) -> Option<Self> {
        status
            .metadata()
            .get(ERROR_CODE_KEY)
            .and_then(|v| v.to_str().ok())
            .and_then(Self::parse)
    }

    /// The delay an [`ErrorCode::Overloaded`] refusal asks for.
    pub fn retry_after(status: &tonic::Status) -> Option<std::time::Duration> {
        status
            .metadata()
            .get(RETRY_AFTER_KEY)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(std::time::Duration::from_millis)
    }

    /// A status with this code attached.
    pub fn status(self, code: tonic::Code, message: impl Into<String>) -> tonic::Status {
        let mut status = tonic::Status::new(code, message);
        status.metadata_mut().insert(
            ERROR_CODE_KEY,
            tonic::metadata::MetadataValue::from_static(self.as_str()),
        );
        status
    }
}

/// True when the hub accepts this protocol version.
pub fn protocol_supported(version: u32) -> bool {
    (MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version)
}

/// A request kind's name, for metrics and logs.
pub fn request_name(kind: &request::Kind) -> &'static str {
    use request::Kind;
    match kind {
        Kind::HealthCheck(_) => "health_check",
        Kind::Get(_) => "get",
        Kind::Sync(_) => "sync",
        Kind::Refresh(_) => "refresh",
        Kind::ResourceTree(_) => "resource_tree",
        Kind::ManagedResources(_) => "managed_resources",
        Kind::Events(_) => "events",
        Kind::Logs(_) => "logs",
        Kind::TerminateOperation(_) => "terminate_operation",
        Kind::Rollback(_) => "rollback",
        Kind::Evaluate(_) => "evaluate",
    }
}

/// A request error code's name, for metrics.
pub fn error_code_name(code: i32) -> &'static str {
    use request_error::Code;
    match Code::try_from(code).unwrap_or(Code::Unspecified) {
        Code::NotFound => "not_found",
        Code::PermissionDenied => "permission_denied",
        Code::Unavailable => "unavailable",
        Code::Timeout => "timeout",
        Code::Invalid => "invalid",
        Code::Unsupported => "unsupported",
        Code::TooLarge => "too_large",
        Code::Internal | Code::Unspecified => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_status() {
        let s = ErrorCode::TokenUsed.status(tonic::Code::PermissionDenied, "used");
        assert_eq!(ErrorCode::from_status(&s), Some(ErrorCode::TokenUsed));
        assert_eq!(ErrorCode::from_status(&tonic::Status::internal("x")), None);
        assert!(
            protocol_supported(PROTOCOL_VERSION) && !protocol_supported(0) && !protocol_supported(PROTOCOL_VERSION + 1)
        );
    }
}
