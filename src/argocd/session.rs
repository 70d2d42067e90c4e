//! Username/password login (`POST /api/v1/session`) for Argo CD installations that allow no API
//! keys: the session token lives in memory only, is renewed before it expires and after Argo CD
//! refuses it, and neither it nor the password is ever logged, shown or written anywhere.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::token::{LoadedToken, TokenError, decode_claims};
use crate::secret::Secret;

/// A session token and when it was obtained.
#[derive(Clone)]
struct Held {
    token: LoadedToken,
    obtained: Instant,
}

/// The login state of one account.
pub struct Session {
    username: String,
    password_file: PathBuf,
    held: std::sync::Mutex<Option<Held>>,
    /// One login at a time: concurrent calls that find no valid token wait for the same login.
    login: tokio::sync::Mutex<()>,
    logins: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("username", &self.username)
            .field("password_file", &self.password_file)
            .finish_non_exhaustive()
    }
}

/// The longest a session is used before its expiry: renewed this much (or a fifth of its
/// lifetime, if shorter) before it ends.
const RENEW_MARGIN: Duration = Duration::from_secs(300);

impl Session {
    /// A session for `username`, whose password is in `password_file`.
    pub fn new(username: String, password_file: PathBuf) -> Self {
        Self {
            username,
            password_file,
            held: std::sync::Mutex::new(None),
            login: tokio::sync::Mutex::new(()),
            logins: Default::default(),
        }
    }

    /// The account.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// How many logins succeeded so far.
    pub fn logins(&self) -> u64 {
        self.logins.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The password, read from its file at every login so a rotated Secret is used at once.
    pub fn password(&self) -> Result<Secret, TokenError> {
        let unreadable = |reason: String| TokenError::PasswordUnreadable {
            path: self.password_file.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&self.password_file).map_err(|e| unreadable(e.to_string()))?;
        // A Secret mounted as a file often ends with a newline that is not part of the password.
        let password = text.trim_end_matches(['\n', '\r']);
        if password.is_empty() {
            return Err(unreadable("the file is empty".into()));
        }
        Ok(Secret::new(password))
    }

    /// The current session token, unless it is missing or due for renewal.
    pub fn current(&self) -> Option<LoadedToken> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner()).clone()?;
        let Some(exp) = held.token.claims.expires_at else {
            return Some(held.token);
        };
        let now = jiff::Timestamp::now();
        let left = exp.duration_since(now);
        if left.is_negative() {
            return None;
        }
        let lifetime =
            exp.duration_since(now) + jiff::SignedDuration::try_from(held.obtained.elapsed()).unwrap_or_default();
        let margin = jiff::SignedDuration::try_from(RENEW_MARGIN)
            .unwrap_or_default()
            .min(lifetime / 5);
        (left > margin).then_some(held.token)
    }

    /// The last session token's claims, valid or not (for reports and metrics).
    pub fn last(&self) -> Option<LoadedToken> {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|h| h.token.clone())
    }

    /// Forgets `token` if it is still the held one (Argo CD refused it).
    pub fn invalidate(&self, token: &Secret) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held.as_ref().is_some_and(|h| h.token.token.expose() == token.expose()) {
            *held = None;
        }
    }

    /// Serialises logins; the caller checks [`Session::current`] again after acquiring it.
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.login.lock().await
    }

    /// Keeps a token Argo CD just issued.
    pub fn store(&self, token: &str) -> LoadedToken {
        let loaded = LoadedToken {
            token: Secret::new(token),
            claims: decode_claims(token),
            path: self.password_file.clone(),
        };
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = Some(Held {
            token: loaded.clone(),
            obtained: Instant::now(),
        });
        self.logins.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        loaded
    }
}
