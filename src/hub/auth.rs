//! How the hub authenticates a gateway's call: the signed assertion in the request metadata,
//! checked against a certificate the hub issued to that gateway, for the call's purpose, once
//! (nonces are kept in the database, so a replay is refused across hub restarts too).
//!
//! Where the hub terminates TLS itself, the call must also come with that certificate as the
//! TLS client certificate: a captured assertion alone is worth nothing. Assertion-only
//! authentication is accepted only when TLS ends before the hub (`--plaintext`, or
//! `--assertion-only` for a proxy that re-encrypts). A certificate a renewal replaced stops
//! working after a short grace; an expired or retired one gets a typed `identity-expired`.

use tonic::{Request, Status};

use super::state::HubState;
use crate::certs::CertInfo;
use crate::tls::Fingerprint;
use crate::wire::ErrorCode;
use crate::wire::assertion::{self, Purpose};

impl HubState {
    /// Authenticates a gateway call; returns its id.
    pub async fn authenticate<T>(&self, request: &Request<T>, purpose: Purpose) -> Result<String, Status> {
        let bad = |msg: &str| ErrorCode::BadAssertion.status(tonic::Code::Unauthenticated, msg);
        let token = request
            .metadata()
            .get(assertion::METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| bad("missing identity assertion"))?;
        let claims = assertion::peek(token).map_err(|e| bad(&e.to_string()))?;
        match request
            .peer_certs()
            .and_then(|certs| certs.first().map(|leaf| Fingerprint::of(leaf)))
        {
            Some(leaf) if leaf.hex() != claims.fp => {
                return Err(bad("the identity assertion does not match the client certificate"));
            }
            Some(_) => {}
            None if self.require_client_cert => {
                return Err(ErrorCode::CertificateRequired.status(
                    tonic::Code::Unauthenticated,
                    "this hub terminates TLS and requires the gateway's client certificate; if a proxy terminates TLS in front of the hub, run the hub with --assertion-only (or --plaintext behind it)",
                ));
            }
            None => {}
        }
        let Some(cert) = self
            .store
            .certificate(claims.fp.clone())
            .await
            .map_err(Self::internal)?
        else {
            return Err(match self.store.gateway(claims.gid.clone()).await.map_err(Self::internal)? {
                Some(_) => ErrorCode::UnknownCertificate
                    .status(tonic::Code::Unauthenticated, "this certificate was not issued to this gateway by this hub"),
                None => ErrorCode::Revoked.status(
                    tonic::Code::PermissionDenied,
                    format!("gateway {} is not registered at this hub (it was deleted); register again with a new token", claims.gid),
                ),
            });
        };
        let now = jiff::Timestamp::now().as_second();
        if cert.gateway_id != claims.gid {
            return Err(bad("the identity assertion names another gateway"));
        }
        if cert.not_after < now {
            return Err(ErrorCode::IdentityExpired.status(
                tonic::Code::Unauthenticated,
                format!(
                    "the certificate of gateway {} expired at {}",
                    cert.gateway_id,
                    jiff::Timestamp::from_second(cert.not_after).unwrap_or_default()
                ),
            ));
        }
        if let Some(retired) = cert.retire_after
            && retired < now
        {
            return Err(ErrorCode::IdentityExpired.status(
                tonic::Code::Unauthenticated,
                format!(
                    "this certificate of gateway {} was replaced by a renewal and retired at {}",
                    cert.gateway_id,
                    jiff::Timestamp::from_second(retired).unwrap_or_default()
                ),
            ));
        }
        let info = CertInfo {
            not_before: jiff::Timestamp::UNIX_EPOCH,
            not_after: jiff::Timestamp::from_second(cert.not_after).unwrap_or(jiff::Timestamp::UNIX_EPOCH),
            common_name: cert.gateway_id.clone(),
            fingerprint: Fingerprint::parse(&cert.fingerprint, "stored").map_err(Self::internal)?,
            public_key: cert.public_key.clone(),
        };
        let claims = assertion::verify(token, &info, purpose, now).map_err(|e| bad(&e.to_string()))?;
        // Kept until the assertion could no longer pass the time check anyway.
        let keep_until = claims.exp + assertion::MAX_SKEW.as_secs() as i64;
        if !self
            .store
            .use_nonce(claims.jti.clone(), keep_until, now)
            .await
            .map_err(Self::internal)?
        {
            return Err(bad(&assertion::AssertionError::Replayed.to_string()));
        }
        Ok(claims.gid)
    }
}
