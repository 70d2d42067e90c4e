//! Certificate primitives shared by both sides: ECDSA P-256 keys and CSRs (the gateway's
//! identity), and the hub CA that issues server and client certificates. Built on rcgen (generation, signing) and x509-parser
//! (reading validity and keys back).

use std::time::Duration;

use jiff::Timestamp;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::tls::Fingerprint;

/// Errors making, signing or reading certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused to generate or sign.
    #[error("certificate operation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A certificate could not be parsed.
    #[error("invalid certificate: {0}")]
    Parse(String),
    /// A CSR was malformed, had a bad signature, or used an unsupported key.
    #[error("invalid certificate signing request: {0}")]
    Csr(String),
}

/// The URI name that marks a hub replica's certificate (see [`CertAuthority::issue_replica`]).
pub const REPLICA_URI: &str = "urn:argocd-gateway:hub-replica";

/// Whether a DER certificate carries the hub replica mark.
pub fn is_replica_cert(der: &[u8]) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    cert.subject_alternative_name().ok().flatten().is_some_and(|san| {
        san.value
            .general_names
            .iter()
            .any(|n| matches!(n, x509_parser::extensions::GeneralName::URI(u) if *u == REPLICA_URI))
    })
}

/// What the product needs to know about a certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// Start of validity.
    pub not_before: Timestamp,
    /// End of validity.
    pub not_after: Timestamp,
    /// Subject common name (the gateway id for client certificates).
    pub common_name: String,
    /// SHA-256 of the DER encoding.
    pub fingerprint: Fingerprint,
    /// The raw subject public key (an uncompressed P-256 point for our keys).
    pub public_key: Vec<u8>,
}

impl CertInfo {
    /// Parses a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, CertError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| CertError::Parse(e.to_string()))?;
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_owned();
        let ts = |t: x509_parser::time::ASN1Time| {
            Timestamp::from_second(t.timestamp()).map_err(|e| CertError::Parse(e.to_string()))
        };
        Ok(Self {
            not_before: ts(cert.validity().not_before)?,
            not_after: ts(cert.validity().not_after)?,
            common_name,
            fingerprint: Fingerprint::of(der),
            public_key: cert.public_key().subject_public_key.data.to_vec(),
        })
    }

    /// Parses the first certificate of a PEM document.
    pub fn from_pem(pem: &str) -> Result<Self, CertError> {
        let der = first_cert_der(pem)?;
        Self::from_der(&der)
    }

    /// When to renew: two thirds of the way through the validity period is the deadline, so
    /// renewal is scheduled at 60% to leave room for retries before it.
    pub fn renew_at(&self) -> Timestamp {
        let lifetime = self.not_after.as_second() - self.not_before.as_second();
        let offset = lifetime.max(0) * 6 / 10;
        Timestamp::from_second(self.not_before.as_second() + offset).unwrap_or(self.not_before)
    }

    /// The renewal deadline: two thirds of the lifetime.
    pub fn renew_deadline(&self) -> Timestamp {
        let lifetime = self.not_after.as_second() - self.not_before.as_second();
        Timestamp::from_second(self.not_before.as_second() + lifetime.max(0) * 2 / 3).unwrap_or(self.not_before)
    }
}

/// The DER of the first certificate in a PEM document.
pub fn first_cert_der(pem: &str) -> Result<CertificateDer<'static>, CertError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| CertError::Parse("no CERTIFICATE block in PEM".into()))?
        .map_err(|e| CertError::Parse(e.to_string()))
}

/// A fresh ECDSA P-256 key pair.
pub fn generate_key() -> Result<KeyPair, CertError> {
    Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?)
}

/// Loads a PEM private key.
pub fn load_key(pem: &str) -> Result<KeyPair, CertError> {
    Ok(KeyPair::from_pem(pem)?)
}

/// A CSR (PEM) for `key`; the hub ignores the requested subject and sets its own.
pub fn csr_pem(key: &KeyPair, name: &str) -> Result<String, CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = dn(name);
    Ok(params.serialize_request(key)?.pem()?)
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "argocd-gateway");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn random_serial() -> SerialNumber {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    // A positive, non-zero serial regardless of the random top bit.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

fn offset_time(ts: Timestamp) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(ts.as_second()).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// A certificate the hub CA issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// PEM of the certificate.
    pub pem: String,
    /// Parsed facts about it.
    pub info: CertInfo,
}

/// The hub's certificate authority: signs its own server certificate and gateways' CSRs.
pub struct CertAuthority {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuthority")
            .field("fingerprint", &Fingerprint::of(&self.cert_der).to_string())
            .finish_non_exhaustive()
    }
}

/// Validity of a new CA: ten years, backdated an hour for clock skew.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const BACKDATE: Duration = Duration::from_secs(3600);

impl CertAuthority {
    /// Creates a new self-signed CA; returns it and its private key PEM (to be stored 0600).
    pub fn generate(common_name: &str) -> Result<(Self, String), CertError> {
        let key = generate_key()?;
        let key_pem = key.serialize_pem();
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = Timestamp::now();
        params.not_before = offset_time(now - BACKDATE);
        params.not_after = offset_time(now + CA_LIFETIME);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        let cert_der = cert.der().clone();
        Ok((
            Self {
                cert_pem,
                cert_der,
                issuer: Issuer::new(params, key),
            },
            key_pem,
        ))
    }

    /// Loads a CA from its certificate and key PEM.
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let key = load_key(key_pem)?;
        let cert_der = first_cert_der(cert_pem)?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            cert_der,
            issuer,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// SHA-256 of the CA certificate: what registration tokens carry for first-contact trust.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.cert_der)
    }

    /// Issues a TLS server certificate for `names` (DNS names or IP addresses); returns it and
    /// its private key PEM.
    pub fn issue_server(&self, names: &[String], ttl: Duration) -> Result<(Issued, String), CertError> {
        self.issue_leaf(names, ttl, None)
    }

    /// Issues the certificate a hub replica shows its peers, as server and as client: for
    /// `names` (where peers reach it), marked with [`REPLICA_URI`] so no gateway certificate of
    /// the same CA can pass for a replica.
    pub fn issue_replica(&self, names: &[String], ttl: Duration) -> Result<(Issued, String), CertError> {
        self.issue_leaf(names, ttl, Some(REPLICA_URI))
    }

    fn issue_leaf(
        &self,
        names: &[String],
        ttl: Duration,
        replica: Option<&str>,
    ) -> Result<(Issued, String), CertError> {
        let key = generate_key()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        params.distinguished_name = dn(names.first().map(String::as_str).unwrap_or("argocd-gateway-hub"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if let Some(uri) = replica {
            params.subject_alt_names.push(SanType::URI(uri.to_owned().try_into()?));
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let now = Timestamp::now();
        params.not_before = offset_time(now - BACKDATE);
        params.not_after = offset_time(now + ttl);
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.issuer)?;
        let pem = cert.pem();
        Ok((
            Issued {
                info: CertInfo::from_der(cert.der())?,
                pem,
            },
            key.serialize_pem(),
        ))
    }

    /// Signs a gateway's CSR as a client certificate for `gateway_id`. Only the CSR's public
    /// key is used: subject, names and extensions are set here, never taken from the request.
    pub fn sign_client_csr(&self, csr_pem: &str, gateway_id: &str, ttl: Duration) -> Result<Issued, CertError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| CertError::Csr(e.to_string()))?;
        if csr.public_key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(CertError::Csr("the key must be ECDSA P-256".into()));
        }
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(gateway_id);
        params.subject_alt_names = vec![SanType::URI(
            format!("urn:argocd-gateway:gateway:{gateway_id}").try_into()?,
        )];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let now = Timestamp::now();
        // A small backdate only: client lifetimes can be seconds long in tests.
        params.not_before = offset_time(now - Duration::from_secs(60).min(ttl / 2));
        params.not_after = offset_time(now + ttl);
        params.serial_number = Some(random_serial());
        let signed = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer)?;
        let pem = signed.pem();
        Ok(Issued {
            info: CertInfo::from_der(signed.der())?,
            pem,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_signs_client_csr_with_its_own_subject() {
        let (ca, key_pem) = CertAuthority::generate("test hub CA").unwrap();
        let reloaded = CertAuthority::load(ca.cert_pem(), &key_pem).unwrap();
        assert_eq!(reloaded.fingerprint(), ca.fingerprint());

        let key = generate_key().unwrap();
        let csr = csr_pem(&key, "pretend-to-be-someone-else").unwrap();
        let issued = reloaded
            .sign_client_csr(&csr, "gw-123", Duration::from_secs(3600))
            .unwrap();
        assert_eq!(issued.info.common_name, "gw-123");
        assert_eq!(issued.info.public_key, key.public_key_raw());
        let lifetime = issued.info.not_after.as_second() - issued.info.not_before.as_second();
        assert_eq!(lifetime, 3660);
        assert!(issued.info.renew_at() < issued.info.renew_deadline());
        assert!(issued.info.renew_deadline() < issued.info.not_after);
    }

    #[test]
    fn garbage_csr_is_an_error_not_a_panic() {
        let (ca, _) = CertAuthority::generate("ca").unwrap();
        assert!(matches!(
            ca.sign_client_csr("nope", "gw", Duration::from_secs(60)),
            Err(CertError::Csr(_))
        ));
    }
}
