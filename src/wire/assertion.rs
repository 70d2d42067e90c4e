//! The per-stream identity assertion: a short-lived statement signed with the gateway's private
//! key. mTLS proves the key only up to the first TLS terminator; when an ingress or load
//! balancer ends TLS in front of the hub, this assertion still does, because it travels inside
//! the request (metadata `x-argocd-gateway-assertion`).
//!
//! Format: `base64url(json claims) "." base64url(ECDSA P-256 SHA-256 DER signature)`, the
//! signature covering the first part's bytes. Claims bind the gateway id, the certificate
//! fingerprint, the purpose (tunnel, renew, version or deregister), a validity window and a nonce that the hub
//! remembers until expiry, so a captured assertion cannot be replayed.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};

use crate::certs::CertInfo;

/// The gRPC metadata key carrying the assertion.
pub const METADATA_KEY: &str = "x-argocd-gateway-assertion";

/// How long an assertion is valid.
pub const LIFETIME: Duration = Duration::from_secs(300);

/// Clock skew tolerated between gateway and hub.
pub const MAX_SKEW: Duration = Duration::from_secs(120);

/// What the assertion is good for; an assertion for one purpose is refused for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    /// Opening the tunnel stream.
    Tunnel,
    /// Renewing the certificate.
    Renew,
    /// Asking for the desired gateway version (`self-update`).
    Version,
    /// Removing the gateway at the hub (the chart's pre-delete hook).
    Deregister,
}

/// The signed claims.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// Gateway id.
    pub gid: String,
    /// SHA-256 of the client certificate whose key signed this (lowercase hex).
    pub fp: String,
    /// Purpose.
    pub aud: Purpose,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds.
    pub exp: i64,
    /// Random nonce, for replay detection.
    pub jti: String,
}

/// Why an assertion was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AssertionError {
    /// Not two base64url parts, or the claims are not JSON.
    #[error("malformed identity assertion")]
    Malformed,
    /// Signed for another purpose.
    #[error("identity assertion is for another purpose")]
    WrongPurpose,
    /// Outside its validity window (or a window longer than allowed).
    #[error("identity assertion expired or not yet valid (check the clocks of gateway and hub)")]
    Expired,
    /// The signature does not verify with the registered certificate's key.
    #[error("identity assertion signature does not match the registered certificate")]
    BadSignature,
    /// Names another gateway or certificate than the one presented.
    #[error("identity assertion names another gateway or certificate")]
    Mismatch,
    /// The nonce was seen before.
    #[error("identity assertion was already used")]
    Replayed,
    /// Signing failed on the gateway.
    #[error("cannot sign identity assertion: {0}")]
    Sign(String),
}

/// Signs an assertion for `purpose` with the gateway's key.
pub fn sign(
    key: &rcgen::KeyPair,
    gateway_id: &str,
    cert: &CertInfo,
    purpose: Purpose,
    now_unix: i64,
) -> Result<String, AssertionError> {
    use rand::RngCore;
    use rcgen::SigningKey;
    let mut nonce = [0u8; 16];
    rand::rng().fill_bytes(&mut nonce);
    let claims = Claims {
        gid: gateway_id.to_owned(),
        fp: cert.fingerprint.hex().to_owned(),
        aud: purpose,
        iat: now_unix,
        exp: now_unix + LIFETIME.as_secs() as i64,
        jti: hex::encode(nonce),
    };
    let body = B64.encode(serde_json::to_vec(&claims).map_err(|e| AssertionError::Sign(e.to_string()))?);
    let sig = key
        .sign(body.as_bytes())
        .map_err(|e| AssertionError::Sign(e.to_string()))?;
    Ok(format!("{body}.{}", B64.encode(sig)))
}

/// Decodes the claims without verifying them, to find the certificate to verify against.
pub fn peek(token: &str) -> Result<Claims, AssertionError> {
    let (body, _) = token.split_once('.').ok_or(AssertionError::Malformed)?;
    let json = B64.decode(body).map_err(|_| AssertionError::Malformed)?;
    serde_json::from_slice(&json).map_err(|_| AssertionError::Malformed)
}

/// Verifies signature, purpose and time window against the registered certificate. Replay
/// detection (the nonce) is the caller's, since it needs state.
pub fn verify(token: &str, cert: &CertInfo, purpose: Purpose, now_unix: i64) -> Result<Claims, AssertionError> {
    let (body, sig) = token.split_once('.').ok_or(AssertionError::Malformed)?;
    let sig = B64.decode(sig).map_err(|_| AssertionError::Malformed)?;
    let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, &cert.public_key);
    key.verify(body.as_bytes(), &sig)
        .map_err(|_| AssertionError::BadSignature)?;
    let claims = peek(token)?;
    if claims.fp != cert.fingerprint.hex() || claims.gid != cert.common_name {
        return Err(AssertionError::Mismatch);
    }
    if claims.aud != purpose {
        return Err(AssertionError::WrongPurpose);
    }
    let skew = MAX_SKEW.as_secs() as i64;
    let too_long = claims.exp - claims.iat > LIFETIME.as_secs() as i64;
    if too_long || claims.iat > now_unix + skew || claims.exp + skew < now_unix {
        return Err(AssertionError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{CertAuthority, csr_pem, generate_key};

    fn setup() -> (rcgen::KeyPair, CertInfo) {
        let (ca, _) = CertAuthority::generate("ca").unwrap();
        let key = generate_key().unwrap();
        let issued = ca
            .sign_client_csr(&csr_pem(&key, "x").unwrap(), "gw-1", Duration::from_secs(3600))
            .unwrap();
        (key, issued.info)
    }

    #[test]
    fn round_trip_and_refusals() {
        let (key, cert) = setup();
        let now = 1_800_000_000;
        let tok = sign(&key, "gw-1", &cert, Purpose::Tunnel, now).unwrap();
        let claims = verify(&tok, &cert, Purpose::Tunnel, now + 10).unwrap();
        assert_eq!(claims.gid, "gw-1");
        assert_eq!(
            verify(&tok, &cert, Purpose::Renew, now),
            Err(AssertionError::WrongPurpose)
        );
        // A version query's assertion cannot open a tunnel or renew a certificate, nor the reverse.
        let version = sign(&key, "gw-1", &cert, Purpose::Version, now).unwrap();
        assert_eq!(
            verify(&version, &cert, Purpose::Version, now).unwrap().aud,
            Purpose::Version
        );
        for other in [Purpose::Tunnel, Purpose::Renew] {
            assert_eq!(verify(&version, &cert, other, now), Err(AssertionError::WrongPurpose));
        }
        assert_eq!(
            verify(&tok, &cert, Purpose::Version, now),
            Err(AssertionError::WrongPurpose)
        );
        assert_eq!(
            verify(&tok, &cert, Purpose::Tunnel, now + 3600),
            Err(AssertionError::Expired)
        );

        // Another key cannot produce an assertion for this certificate.
        let other = generate_key().unwrap();
        let forged = sign(&other, "gw-1", &cert, Purpose::Tunnel, now).unwrap();
        assert_eq!(
            verify(&forged, &cert, Purpose::Tunnel, now),
            Err(AssertionError::BadSignature)
        );

        // Tampering with the claims breaks the signature.
        let (body, sig) = tok.split_once('.').unwrap();
        let mut claims = peek(&tok).unwrap();
        claims.gid = "gw-2".into();
        let tampered = format!("{}.{sig}", B64.encode(serde_json::to_vec(&claims).unwrap()));
        assert_ne!(body, tampered.split_once('.').unwrap().0);
        assert_eq!(
            verify(&tampered, &cert, Purpose::Tunnel, now),
            Err(AssertionError::BadSignature)
        );
        assert_eq!(
            verify("garbage", &cert, Purpose::Tunnel, now),
            Err(AssertionError::Malformed)
        );
    }
}
