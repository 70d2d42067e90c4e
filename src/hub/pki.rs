//! The hub's data directory on first start: a CA, a server certificate for the configured host
//! names (re-issued when the names change or it nears expiry), and the admin token. Private
//! material is written with mode 0600.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::certs::{CertAuthority, CertError, CertInfo};
use crate::secret::Secret;
use crate::util::write_private_file_atomic;

/// Errors preparing the data directory.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// File I/O.
    #[error("hub data directory {path}: {source} (flag --data-dir)")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Certificate work.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// Replicas need the files made by `hub init`.
    #[error(
        "{path} is missing: hub replicas on PostgreSQL share the CA, server certificate and admin token from files — create them once with `argocd-gateway hub init --dir {dir}` (in Kubernetes the chart's init Job makes the Secret) and give every replica that directory (flag --data-dir)"
    )]
    Missing {
        /// The missing file.
        path: PathBuf,
        /// The directory.
        dir: PathBuf,
    },
}

/// Everything loaded from the data directory.
pub struct HubPki {
    /// The CA.
    pub ca: CertAuthority,
    /// Server certificate chain (leaf then CA), PEM.
    pub server_chain_pem: String,
    /// Server key, PEM.
    pub server_key_pem: Secret,
    /// Admin token.
    pub admin_token: Secret,
    /// Where the admin token is.
    pub admin_token_path: PathBuf,
}

const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(397 * 24 * 3600);

fn read_opt(path: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn write(path: &Path, data: &str) -> Result<(), PkiError> {
    write_private_file_atomic(path, data.as_bytes()).map_err(|source| PkiError::Io {
        path: path.to_owned(),
        source,
    })
}

/// True when the certificate covers exactly `names` and is not in the last third of its life.
fn server_cert_fits(pem: &str, names: &[String]) -> bool {
    let Ok(der) = crate::certs::first_cert_der(pem) else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else {
        return false;
    };
    let Ok(info) = CertInfo::from_der(&der) else {
        return false;
    };
    if jiff::Timestamp::now() >= info.renew_deadline() {
        return false;
    }
    let mut have: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                        4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(*b).ok()?).to_string()),
                        16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(*b).ok()?).to_string()),
                        _ => None,
                    },
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let mut want: Vec<String> = names.to_vec();
    have.sort();
    want.sort();
    want.dedup();
    have == want
}

/// Loads the data directory, creating what is missing.
pub fn load_or_init(dir: &Path, hostnames: &[String]) -> Result<HubPki, PkiError> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let ca_cert = dir.join("ca.pem");
    let ca_key = dir.join("ca-key.pem");
    let ca = match (read_opt(&ca_cert)?, read_opt(&ca_key)?) {
        (Some(c), Some(k)) => CertAuthority::load(&c, &k)?,
        _ => {
            let (ca, key_pem) = CertAuthority::generate("argocd-gateway hub CA")?;
            write(&ca_key, &key_pem)?;
            write(&ca_cert, ca.cert_pem())?;
            tracing::info!(path = %ca_cert.display(), fingerprint = %ca.fingerprint(), "created the hub CA");
            ca
        }
    };
    let server_cert = dir.join("server.pem");
    let server_key = dir.join("server-key.pem");
    let (leaf_pem, key_pem) = match (read_opt(&server_cert)?, read_opt(&server_key)?) {
        (Some(c), Some(k)) if server_cert_fits(&c, hostnames) => (c, k),
        _ => {
            let (issued, key_pem) = ca.issue_server(hostnames, SERVER_CERT_LIFETIME)?;
            write(&server_key, &key_pem)?;
            write(&server_cert, &issued.pem)?;
            tracing::info!(names = %hostnames.join(","), "issued the hub server certificate");
            (issued.pem, key_pem)
        }
    };
    let admin_token_path = dir.join("admin-token");
    let admin_token = match read_opt(&admin_token_path)? {
        Some(t) if !t.trim().is_empty() => Secret::new(t.trim()),
        _ => {
            let token = random_token(32);
            write(&admin_token_path, &token)?;
            Secret::new(token)
        }
    };
    // The chain ends with the CA so a gateway can match it against the fingerprint it was given.
    let server_chain_pem = format!("{}\n{}", leaf_pem.trim_end(), ca.cert_pem().trim_end());
    Ok(HubPki {
        ca,
        server_chain_pem,
        server_key_pem: Secret::new(key_pem),
        admin_token,
        admin_token_path,
    })
}

/// Loads the files replicas share (see `hub init`), creating and changing nothing: the
/// directory may be a read-only Secret volume, and every replica must use the same CA. A server
/// certificate that does not cover `hostnames` is used as it is, with a warning.
pub fn load_shared(dir: &Path, hostnames: &[String]) -> Result<HubPki, PkiError> {
    let need = |name: &str| -> Result<String, PkiError> {
        let path = dir.join(name);
        read_opt(&path)?.ok_or(PkiError::Missing {
            path,
            dir: dir.to_owned(),
        })
    };
    let ca = CertAuthority::load(&need("ca.pem")?, &need("ca-key.pem")?)?;
    let leaf_pem = need("server.pem")?;
    let key_pem = need("server-key.pem")?;
    if !server_cert_fits(&leaf_pem, hostnames) {
        tracing::warn!(names = ?hostnames, "the shared server certificate does not cover these names (or nears its expiry); create it again with `hub init --hostname …` and restart the replicas");
    }
    let admin_token = need("admin-token")?;
    if admin_token.trim().is_empty() {
        return Err(PkiError::Missing {
            path: dir.join("admin-token"),
            dir: dir.to_owned(),
        });
    }
    let server_chain_pem = format!(
        "{}\n{}",
        first_pem_block(&leaf_pem).trim_end(),
        ca.cert_pem().trim_end()
    );
    Ok(HubPki {
        ca,
        server_chain_pem,
        server_key_pem: Secret::new(key_pem),
        admin_token: Secret::new(admin_token.trim()),
        admin_token_path: dir.join("admin-token"),
    })
}

/// The first PEM block of a file (a server.pem may carry its chain).
fn first_pem_block(pem: &str) -> &str {
    const END: &str = "-----END CERTIFICATE-----";
    match pem.find(END) {
        Some(i) => &pem[..i + END.len()],
        None => pem,
    }
}

/// `bytes` random bytes, base64url without padding, never starting with `-`.
pub fn random_token(bytes: usize) -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    loop {
        rand::rng().fill_bytes(&mut buf);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&buf);
        // A token that starts with '-' reads as a flag in `--registration-token TOKEN` or
        // `--admin-token TOKEN`; drawing again costs nothing and keeps every token pasteable.
        if !token.starts_with('-') {
            return token;
        }
    }
}

/// The default server certificate names: localhost, 127.0.0.1 and this machine's host name.
pub fn default_hostnames() -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    if let Ok(h) = gethostname::gethostname().into_string()
        && !h.is_empty()
        && !names.contains(&h)
    {
        names.push(h);
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_stable_and_reissues_on_name_change() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let a = load_or_init(dir.path(), &names).unwrap();
        let b = load_or_init(dir.path(), &names).unwrap();
        assert_eq!(a.ca.fingerprint(), b.ca.fingerprint());
        assert_eq!(a.server_chain_pem, b.server_chain_pem);
        assert_eq!(a.admin_token, b.admin_token);
        let c = load_or_init(dir.path(), &["hub.example.com".to_owned()]).unwrap();
        assert_eq!(a.ca.fingerprint(), c.ca.fingerprint());
        assert_ne!(a.server_chain_pem, c.server_chain_pem);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in ["ca-key.pem", "server-key.pem", "admin-token"] {
                let mode = std::fs::metadata(dir.path().join(f)).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{f}");
            }
        }
    }

    #[test]
    fn tokens_never_start_like_a_flag() {
        for _ in 0..5000 {
            let t = super::random_token(12);
            assert!(!t.starts_with('-'), "{t}");
            assert_eq!(t.len(), 16);
        }
    }
}
