//! How the hub authenticates a gateway's call: the signed assertion in the request metadata,
//! checked against a certificate the hub issued to that gateway (and against the TLS client
//! certificate when TLS reaches the hub), for the call's purpose, once (replayed nonces are
//! refused). This is what still works when a proxy terminates TLS in front of the hub.

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
        if let Some(certs) = request.peer_certs()
            && let Some(leaf) = certs.first()
            && Fingerprint::of(leaf).hex() != claims.fp
        {
            return Err(bad("the identity assertion does not match the client certificate"));
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
            return Err(ErrorCode::UnknownCertificate
                .status(tonic::Code::Unauthenticated, "the gateway certificate has expired"));
        }
        let info = CertInfo {
            not_before: jiff::Timestamp::UNIX_EPOCH,
            not_after: jiff::Timestamp::from_second(cert.not_after).unwrap_or(jiff::Timestamp::UNIX_EPOCH),
            common_name: cert.gateway_id.clone(),
            fingerprint: Fingerprint::parse(&cert.fingerprint, "stored").map_err(Self::internal)?,
            public_key: cert.public_key.clone(),
        };
        let claims = assertion::verify(token, &info, purpose, now).map_err(|e| bad(&e.to_string()))?;
        {
            let mut seen = self.replay.lock().map_err(Self::internal)?;
            if seen.len() > 4096 {
                let horizon = now - assertion::MAX_SKEW.as_secs() as i64;
                seen.retain(|_, exp| *exp >= horizon);
            }
            if seen.insert(claims.jti.clone(), claims.exp).is_some() {
                return Err(bad(&assertion::AssertionError::Replayed.to_string()));
            }
        }
        Ok(claims.gid)
    }
}
