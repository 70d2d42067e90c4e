//! Where the identity lives between restarts: the store trait, the `--identity` location, and
//! the file store (mode 0600, atomically replaced). In a cluster the identity is a Kubernetes
//! Secret, implemented with the other Kubernetes code; the composition root picks which.

use std::path::PathBuf;

use futures_util::future::BoxFuture;

use super::Identity;

/// Errors reading or writing the identity.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be read or written.
    #[error("identity file {path}: {source} (flag --identity)")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The stored identity is not valid JSON of the expected shape.
    #[error("identity in {location} is corrupt: {reason}; delete it and register again with a new token")]
    Corrupt {
        /// Which store.
        location: String,
        /// Why.
        reason: String,
    },
    /// The `--identity` value has an unknown form.
    #[error("invalid --identity {value:?}: expected secret:NAMESPACE/NAME or file:PATH")]
    BadLocation {
        /// The value given.
        value: String,
    },
    /// A Kubernetes API call on the identity Secret failed.
    #[error(
        "identity {location}: {action} failed: {reason} (flag --identity; the chart's Role must allow get, create and update on this Secret)"
    )]
    Kube {
        /// Which store.
        location: String,
        /// The call that failed (connect, get, create, update).
        action: &'static str,
        /// What the API server or the client said.
        reason: String,
    },
}

/// A place that keeps one gateway identity.
pub trait IdentityStore: Send + Sync {
    /// Where the identity is kept, for messages.
    fn describe(&self) -> String;
    /// Which copy of the identity this is: the same for every replica sharing the store,
    /// different for a copy of it elsewhere (see `Hello.instance`); empty when unknown.
    fn instance(&self) -> String {
        String::new()
    }
    /// The stored identity, if any.
    fn load(&self) -> BoxFuture<'_, Result<Option<Identity>, StoreError>>;
    /// Stores a newly registered identity unless one is already there, and returns the identity
    /// that is stored afterwards: when another replica got there first, its identity wins.
    fn create<'a>(&'a self, identity: &'a Identity) -> BoxFuture<'a, Result<Identity, StoreError>>;
    /// Replaces the stored identity, after a certificate renewal.
    fn replace<'a>(&'a self, identity: &'a Identity) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Forgets the identity with this gateway id (after the hub revoked it), leaving any other
    /// identity in place.
    fn remove<'a>(&'a self, gateway_id: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// A parsed `--identity` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityLocation {
    /// `file:PATH`.
    File(PathBuf),
    /// `secret:NAMESPACE/NAME`.
    Secret {
        /// The Secret's namespace.
        namespace: String,
        /// The Secret's name.
        name: String,
    },
}

impl std::str::FromStr for IdentityLocation {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some(("file", path)) if !path.is_empty() => Ok(Self::File(PathBuf::from(path))),
            Some(("secret", rest)) => match rest.split_once('/') {
                Some((ns, name)) if is_dns_label(ns) && is_dns_subdomain(name) => Ok(Self::Secret {
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                }),
                _ => Err(StoreError::BadLocation { value: s.to_owned() }),
            },
            _ => Err(StoreError::BadLocation { value: s.to_owned() }),
        }
    }
}

impl std::fmt::Display for IdentityLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => write!(f, "file:{}", p.display()),
            Self::Secret { namespace, name } => write!(f, "secret:{namespace}/{name}"),
        }
    }
}

impl IdentityLocation {
    /// The default when `--identity` is not given: the Secret `argocd-gateway-identity` in the
    /// pod's namespace when running in a cluster (`KUBERNETES_SERVICE_HOST` and `POD_NAMESPACE`
    /// set), else the file `argocd-gateway-identity.json` in the working directory. The chart
    /// always passes `--identity` explicitly, naming `<fullname>-identity`.
    pub fn default_from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        match (var("KUBERNETES_SERVICE_HOST"), var(NAMESPACE_ENV)) {
            (Some(_), Some(namespace)) if is_dns_label(namespace.trim()) => Self::Secret {
                namespace: namespace.trim().to_owned(),
                name: DEFAULT_SECRET_NAME.to_owned(),
            },
            _ => Self::File(PathBuf::from(DEFAULT_FILE)),
        }
    }
}

/// The pod's namespace, from the downward-API variable the chart sets.
const NAMESPACE_ENV: &str = "POD_NAMESPACE";

/// The identity Secret's name when `--identity` is not given in a cluster.
pub const DEFAULT_SECRET_NAME: &str = "argocd-gateway-identity";
/// The identity file when `--identity` is not given outside a cluster.
pub const DEFAULT_FILE: &str = "argocd-gateway-identity.json";

/// A namespace name: an RFC 1123 label.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A Secret name: an RFC 1123 subdomain.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// An identity kept in a JSON file with mode 0600.
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// A store at `path`.
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    async fn read(&self) -> Result<Option<Identity>, StoreError> {
        let bytes = match tokio::fs::read(&self.path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                location: self.describe(),
                reason: e.to_string(),
            })
    }

    async fn write(&self, identity: &Identity) -> Result<(), StoreError> {
        let data = serde_json::to_vec_pretty(identity).map_err(|e| StoreError::Corrupt {
            location: self.describe(),
            reason: e.to_string(),
        })?;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || crate::util::write_private_file_atomic(&path, &data))
            .await
            .map_err(|e| StoreError::Io {
                path: self.path.clone(),
                source: std::io::Error::other(e),
            })?
            .map_err(|source| StoreError::Io {
                path: self.path.clone(),
                source,
            })
    }
}

impl IdentityStore for FileStore {
    fn describe(&self) -> String {
        format!("file:{}", self.path.display())
    }

    fn instance(&self) -> String {
        // One file on one host: a copy on another host, or in another directory, is another
        // instance. Hashed, so paths and host names are not sent.
        use sha2::{Digest, Sha256};
        let host = gethostname::gethostname();
        let path = std::fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone());
        let mut h = Sha256::new();
        h.update(host.as_encoded_bytes());
        h.update([0]);
        h.update(path.as_os_str().as_encoded_bytes());
        hex::encode(&h.finalize()[..12])
    }

    fn load(&self) -> BoxFuture<'_, Result<Option<Identity>, StoreError>> {
        Box::pin(self.read())
    }

    fn create<'a>(&'a self, identity: &'a Identity) -> BoxFuture<'a, Result<Identity, StoreError>> {
        Box::pin(async move {
            // A file has one writer in practice (one process per file), so check-then-write is
            // enough here; the Secret backend uses resourceVersion preconditions instead.
            if let Some(existing) = self.read().await? {
                return Ok(existing);
            }
            self.write(identity).await?;
            Ok(identity.clone())
        })
    }

    fn replace<'a>(&'a self, identity: &'a Identity) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.write(identity))
    }

    fn remove<'a>(&'a self, gateway_id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            match self.read().await {
                Ok(Some(existing)) if existing.gateway_id != gateway_id => return Ok(()),
                Ok(None) => return Ok(()),
                _ => {}
            }
            match tokio::fs::remove_file(&self.path).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(StoreError::Io {
                    path: self.path.clone(),
                    source,
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn identity(id: &str) -> Identity {
        Identity {
            gateway_id: id.into(),
            name: "n".into(),
            environments: vec!["prod".into()],
            hub_url: "https://hub:8443".into(),
            key_pem: Secret::new("KEY"),
            cert_pem: "CERT".into(),
            ca_pem: "CA".into(),
        }
    }

    #[tokio::test]
    async fn file_store_round_trip_first_writer_wins() {
        let dir = tempfile::tempdir().unwrap();
        let loc: IdentityLocation = format!("file:{}", dir.path().join("id.json").display())
            .parse()
            .unwrap();
        let IdentityLocation::File(path) = loc else {
            panic!("a file location")
        };
        let store = FileStore::new(path);
        assert!(store.load().await.unwrap().is_none());
        assert_eq!(store.create(&identity("gw-1")).await.unwrap().gateway_id, "gw-1");
        assert_eq!(store.create(&identity("gw-2")).await.unwrap().gateway_id, "gw-1");
        store.replace(&identity("gw-3")).await.unwrap();
        assert_eq!(store.load().await.unwrap().unwrap().gateway_id, "gw-3");
        store.remove("gw-1").await.unwrap();
        assert!(
            store.load().await.unwrap().is_some(),
            "another gateway's identity stays"
        );
        store.remove("gw-3").await.unwrap();
        assert!(store.load().await.unwrap().is_none());
        assert!(!format!("{:?}", identity("x")).contains("KEY"));
        assert_eq!(
            "secret:argocd/gw-identity".parse::<IdentityLocation>().unwrap(),
            IdentityLocation::Secret {
                namespace: "argocd".into(),
                name: "gw-identity".into()
            }
        );
        for bad in [
            "secret:ns",
            "secret:/name",
            "secret:Ns/name",
            "secret:ns/a/b",
            "vault:x",
            "file:",
        ] {
            let err = bad.parse::<IdentityLocation>().unwrap_err().to_string();
            assert!(err.contains("secret:NAMESPACE/NAME"), "{bad}: {err}");
        }
    }
}
