//! How the gateway decides to trust the hub's certificate.
//!
//! In order: a leaf pin (`--hub-fingerprint`) decides alone when set; otherwise the chain is
//! checked against system roots, `--trust-ca` and the hub CA stored at registration; failing
//! that, on first contact, the chain must contain a CA whose SHA-256 matches the fingerprint
//! printed with the registration token (`--hub-ca-fingerprint`) and the leaf must chain to it,
//! like `kubeadm join --discovery-token-ca-cert-hash`. Whatever refused the hub is recorded so
//! the dialer can explain it precisely instead of surfacing a generic handshake error.

use std::sync::{Arc, Mutex};

use rustls::CertificateError;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use crate::tls::{CertCheck, Fingerprint};

/// Why the hub's certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustFailure {
    /// The leaf does not match `--hub-fingerprint`.
    #[error(
        "hub certificate fingerprint mismatch: pinned {expected}, hub presented {actual} (flag --hub-fingerprint, Helm gateway.hub.serverThumbprint)"
    )]
    PinMismatch {
        /// The pin.
        expected: Fingerprint,
        /// The leaf's fingerprint.
        actual: Fingerprint,
    },
    /// No certificate in the chain matches `--hub-ca-fingerprint`.
    #[error(
        "hub CA fingerprint mismatch: expected {expected}, hub presented {}; check you are talking to the right hub and use the caFingerprint printed with the registration token (flag --hub-ca-fingerprint, Helm registration.caFingerprint)",
        presented_list(.presented)
    )]
    CaFingerprintMismatch {
        /// The expected CA fingerprint.
        expected: Fingerprint,
        /// Fingerprints of every certificate the hub sent.
        presented: Vec<Fingerprint>,
    },
    /// The chain is not trusted and nothing else vouches for it.
    #[error(
        "hub certificate is not trusted ({reason}): pass the CA fingerprint printed with the registration token (flag --hub-ca-fingerprint, Helm registration.caFingerprint), add the hub CA (flag --trust-ca, Helm gateway.serverCertificates), or pin the certificate (flag --hub-fingerprint, Helm gateway.hub.serverThumbprint)"
    )]
    Untrusted {
        /// What webpki said.
        reason: String,
    },
    /// The certificate is trusted but otherwise invalid (name, validity, purpose).
    #[error("hub certificate is invalid: {reason}; {fix}")]
    Invalid {
        /// What is wrong, as a sentence.
        reason: String,
        /// What to change.
        fix: String,
    },
}

impl TrustFailure {
    /// The failure for a chain refused by certificate checks (not by a pin or fingerprint).
    fn from_error(err: &rustls::Error) -> Self {
        use crate::tls::CertProblem;
        let Some(trouble) = crate::tls::diagnose(err) else {
            return Self::Untrusted {
                reason: err.to_string(),
            };
        };
        let fix = match trouble.problem {
            CertProblem::UnknownIssuer | CertProblem::UntrustedSelfSigned => {
                return Self::Untrusted { reason: trouble.what };
            }
            CertProblem::WrongName => {
                "use a host name the certificate names in --hub-url (Helm gateway.hub.serverGrpcUrl), or add this name to the hub's certificate (hub serve --hostname)"
            }
            CertProblem::Expired => {
                "renew the hub's server certificate (hub serve re-issues its own when it nears expiry; restart the hub)"
            }
            CertProblem::NotYetValid => "check the clocks of the gateway's node and of the hub",
            CertProblem::WrongPurpose => "reissue the hub certificate with extendedKeyUsage serverAuth",
            CertProblem::Other => "fix the hub's certificate",
        };
        Self::Invalid {
            reason: trouble.what,
            fix: fix.to_owned(),
        }
    }
}

fn presented_list(fps: &[Fingerprint]) -> String {
    if fps.is_empty() {
        "no CA certificate".into()
    } else {
        fps.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    }
}

/// The slot a verifier writes its refusal into, read by the dialer after a failed handshake.
pub type FailureSlot = Arc<Mutex<Option<TrustFailure>>>;

/// The hub certificate check described in the module doc (wrapped in a [`crate::tls::Verifier`]).
#[derive(Debug)]
pub struct HubVerifier {
    roots: crate::tls::ServerTrust,
    pin: Option<Fingerprint>,
    ca_fingerprint: Option<Fingerprint>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    failure: FailureSlot,
}

impl HubVerifier {
    /// A verifier trusting `roots` (may be empty), with an optional pin and CA fingerprint.
    pub fn new(
        roots: &[CertificateDer<'static>],
        pin: Option<Fingerprint>,
        ca_fingerprint: Option<Fingerprint>,
        failure: FailureSlot,
    ) -> Result<Self, rustls::Error> {
        let provider = crate::tls::provider();
        Ok(Self {
            roots: crate::tls::ServerTrust::new(roots),
            pin,
            ca_fingerprint,
            provider,
            failure,
        })
    }

    fn refuse(&self, failure: TrustFailure) -> rustls::Error {
        if let Ok(mut slot) = self.failure.lock() {
            *slot = Some(failure);
        }
        rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
    }
}

impl CertCheck for HubVerifier {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(pin) = &self.pin {
            let actual = Fingerprint::of(end_entity);
            return if &actual == pin {
                Ok(ServerCertVerified::assertion())
            } else {
                Err(self.refuse(TrustFailure::PinMismatch {
                    expected: pin.clone(),
                    actual,
                }))
            };
        }
        let chain_error = match self
            .roots
            .check(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let Some(expected) = &self.ca_fingerprint else {
            return Err(self.refuse(TrustFailure::from_error(&chain_error)));
        };
        let Some(ca) = intermediates.iter().find(|c| &Fingerprint::of(c) == expected) else {
            let presented = intermediates.iter().map(|c| Fingerprint::of(c)).collect();
            return Err(self.refuse(TrustFailure::CaFingerprintMismatch {
                expected: expected.clone(),
                presented,
            }));
        };
        let anchor = [ca.clone().into_owned()];
        let store = crate::tls::root_store(&anchor);
        let pinned_ca = WebPkiServerVerifier::builder_with_provider(Arc::new(store), self.provider.clone())
            .build()
            .map_err(|e| self.refuse(TrustFailure::Untrusted { reason: e.to_string() }))?;
        pinned_ca
            .verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
            .map_err(|e| self.refuse(TrustFailure::from_error(&e)))
    }
}
