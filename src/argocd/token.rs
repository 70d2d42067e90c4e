//! Bearer tokens: read from files (mounted Secrets) and re-read when the file changes, plus the
//! unverified JWT payload decoding that tells us `sub` and `exp`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use base64::Engine;

use crate::secret::Secret;

use super::config::AuthSource;

/// The file name, in a project tokens directory, of the token for calls no project scopes.
pub const UNSCOPED: &str = "_unscoped";

/// How long before expiry the client starts warning.
pub const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// The claims of an Argo CD JWT that the gateway reads (the signature is not and cannot be checked).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Claims {
    /// Subject, e.g. `gateway:apiKey` or `proj:team-a:ci`.
    pub subject: Option<String>,
    /// Expiry; `None` for a token that never expires.
    pub expires_at: Option<jiff::Timestamp>,
    /// Issuer (`argocd` for local accounts).
    pub issuer: Option<String>,
}

impl Claims {
    /// The RBAC account the subject maps to (`gateway:apiKey` → `gateway`); project tokens keep
    /// their full `proj:<project>:<role>` subject.
    pub fn account(&self) -> Option<String> {
        let sub = self.subject.as_deref()?;
        if sub.starts_with("proj:") {
            return Some(sub.to_owned());
        }
        Some(sub.split(':').next().unwrap_or(sub).to_owned())
    }
}

/// Errors reading a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token file could not be read.
    #[error(
        "cannot read Argo CD token file {path}: {reason} (flag {flag}, Helm gateway.argocd.authenticationToken / projectAuthentication)"
    )]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        reason: String,
        /// The flag that named it.
        flag: &'static str,
    },
    /// The token file is empty.
    #[error("Argo CD token file {path} is empty (flag {flag})")]
    Empty {
        /// The file.
        path: PathBuf,
        /// The flag that named it.
        flag: &'static str,
    },
    /// The password file could not be read.
    #[error(
        "cannot read the Argo CD password file {path}: {reason} (flag --argocd-password-file, Helm gateway.argocd.passwordSecretName)"
    )]
    PasswordUnreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error, or that the file is empty.
        reason: String,
    },
    /// A call was made before a login session exists (internal: the client logs in first).
    #[error("no Argo CD session yet for account {username:?} (flag --argocd-username, Helm gateway.argocd.username)")]
    NoSession {
        /// The account.
        username: String,
    },
    /// No project token and no `_unscoped` token fits the call.
    #[error(
        "no Argo CD token for {scope} in {dir}: add a file named {wanted} (or {UNSCOPED}) to --argocd-project-tokens-dir (Helm gateway.argocd.projectAuthentication)"
    )]
    NoProjectToken {
        /// The tokens directory.
        dir: PathBuf,
        /// What needed a token.
        scope: String,
        /// The file that would serve it.
        wanted: String,
    },
}

/// Decodes the payload of a JWT without verifying it. Returns default claims for anything that is
/// not a three-part JWT with a JSON payload.
pub fn decode_claims(token: &str) -> Claims {
    #[derive(serde::Deserialize)]
    struct Payload {
        sub: Option<String>,
        exp: Option<serde_json::Number>,
        iss: Option<String>,
    }
    let mut parts = token.trim().split('.');
    let (Some(_), Some(payload), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Claims::default();
    };
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let Ok(bytes) = engine.decode(payload.trim_end_matches('=')) else {
        return Claims::default();
    };
    let Ok(p) = serde_json::from_slice::<Payload>(&bytes) else {
        return Claims::default();
    };
    let expires_at = p
        .exp
        .and_then(|n| n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)))
        .and_then(|secs| jiff::Timestamp::from_second(secs).ok());
    Claims {
        subject: p.sub,
        expires_at,
        issuer: p.iss,
    }
}

/// A token as loaded from its file.
#[derive(Clone, Debug)]
pub struct LoadedToken {
    /// The bearer token.
    pub token: Secret,
    /// Its decoded claims.
    pub claims: Claims,
    /// The file it came from.
    pub path: PathBuf,
}

#[derive(Clone, PartialEq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    #[cfg(unix)]
    ino: u64,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    // `metadata` follows symlinks, so a Kubernetes Secret update (an atomic `..data` symlink swap)
    // changes the stamp.
    let m = std::fs::metadata(path)?;
    Ok(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        #[cfg(unix)]
        ino: std::os::unix::fs::MetadataExt::ino(&m),
    })
}

/// Reads tokens from files, caching each until its file changes.
pub struct TokenStore {
    source: AuthSource,
    cache: Mutex<HashMap<PathBuf, (Stamp, LoadedToken)>>,
    warned_expiry: Mutex<HashMap<PathBuf, bool>>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl TokenStore {
    /// A store for the configured source.
    pub fn new(source: AuthSource) -> Self {
        Self {
            source,
            cache: Mutex::new(HashMap::new()),
            warned_expiry: Mutex::new(HashMap::new()),
        }
    }

    /// The configured source.
    pub fn source(&self) -> &AuthSource {
        &self.source
    }

    /// The projects that have their own token file (empty for a single account token).
    pub fn project_token_names(&self) -> Result<Vec<String>, TokenError> {
        let AuthSource::ProjectTokensDir(dir) = &self.source else {
            return Ok(Vec::new());
        };
        let entries = std::fs::read_dir(dir).map_err(|e| TokenError::Unreadable {
            path: dir.clone(),
            reason: e.to_string(),
            flag: "--argocd-project-tokens-dir",
        })?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            // Kubernetes mounts keep bookkeeping entries such as `..data` beside the keys.
            .filter(|n| !n.starts_with('.') && n != UNSCOPED)
            .filter(|n| dir.join(n).is_file())
            .collect();
        names.sort();
        Ok(names)
    }

    /// The token for a call scoped to `project` (None: a call no project scopes).
    pub fn token_for(&self, project: Option<&str>) -> Result<LoadedToken, TokenError> {
        match &self.source {
            AuthSource::Login { username, .. } => Err(TokenError::NoSession {
                username: username.clone(),
            }),
            AuthSource::TokenFile(path) => self.load(path, "--argocd-token-file"),
            AuthSource::ProjectTokensDir(dir) => {
                let flag = "--argocd-project-tokens-dir";
                if let Some(p) = project.filter(|p| is_safe_file_name(p)) {
                    let path = dir.join(p);
                    if path.is_file() {
                        return self.load(&path, flag);
                    }
                }
                let unscoped = dir.join(UNSCOPED);
                if unscoped.is_file() {
                    return self.load(&unscoped, flag);
                }
                Err(TokenError::NoProjectToken {
                    dir: dir.clone(),
                    scope: project.map_or_else(|| "calls no project scopes".to_owned(), |p| format!("project {p}")),
                    wanted: project.unwrap_or(UNSCOPED).to_owned(),
                })
            }
        }
    }

    fn load(&self, path: &Path, flag: &'static str) -> Result<LoadedToken, TokenError> {
        let unreadable = |e: std::io::Error| TokenError::Unreadable {
            path: path.to_owned(),
            reason: e.to_string(),
            flag,
        };
        let st = stamp(path).map_err(unreadable)?;
        let cached = self
            .cache
            .lock()
            .ok()
            .and_then(|cache| cache.get(path).filter(|(s, _)| *s == st).map(|(_, t)| t.clone()));
        if let Some(tok) = cached {
            // Checked on every use: a token that is never rotated still crosses the warning line.
            self.warn_if_expiring(&tok);
            return Ok(tok);
        }
        let text = std::fs::read_to_string(path).map_err(unreadable)?;
        let token = text.trim();
        if token.is_empty() {
            return Err(TokenError::Empty {
                path: path.to_owned(),
                flag,
            });
        }
        let claims = decode_claims(token);
        let loaded = LoadedToken {
            token: Secret::new(token),
            claims,
            path: path.to_owned(),
        };
        self.warn_if_expiring(&loaded);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.contains_key(path) {
                tracing::info!(file = %path.display(), "Argo CD token file changed; using the new token");
            }
            cache.insert(path.to_owned(), (st, loaded.clone()));
        }
        Ok(loaded)
    }

    fn warn_if_expiring(&self, t: &LoadedToken) {
        let Some(exp) = t.claims.expires_at else { return };
        let now = jiff::Timestamp::now();
        let Ok(window) = jiff::SignedDuration::try_from(EXPIRY_WARNING) else {
            return;
        };
        let Ok(warn_from) = exp.checked_sub(window) else { return };
        if now < warn_from {
            return;
        }
        let mut warned = self.warned_expiry.lock().unwrap_or_else(|p| p.into_inner());
        if warned.insert(t.path.clone(), true).is_none() {
            tracing::warn!(
                file = %t.path.display(),
                subject = t.claims.subject.as_deref().unwrap_or("?"),
                expires_at = %exp,
                expired = now >= exp,
                "Argo CD token expires within 7 days; generate a new one (argocd account generate-token) and update the Secret"
            );
        }
    }
}

fn is_safe_file_name(s: &str) -> bool {
    !s.is_empty() && !s.starts_with('.') && !s.contains('/') && !s.contains('\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("{}.{}.sig", e.encode(r#"{"alg":"HS256"}"#), e.encode(payload))
    }

    #[test]
    fn claims() {
        let c = decode_claims(&jwt(r#"{"sub":"gw:apiKey","exp":1700000000,"iss":"argocd"}"#));
        assert_eq!(c.subject.as_deref(), Some("gw:apiKey"));
        assert_eq!(c.account().as_deref(), Some("gw"));
        assert_eq!(c.expires_at.unwrap().as_second(), 1_700_000_000);
        assert_eq!(decode_claims("not-a-jwt"), Claims::default());
        let c = decode_claims(&jwt(r#"{"sub":"proj:a:ci"}"#));
        assert_eq!(c.account().as_deref(), Some("proj:a:ci"));
        assert_eq!(c.expires_at, None);
    }
}
