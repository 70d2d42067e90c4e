//! Classified Argo CD client errors. Callers match on the variant (retry, report, map to a hub
//! error); the messages carry the fix a user needs.

use super::config::ConfigError;
use super::model::DecodeError;
use super::token::TokenError;

/// The Argo CD permission a call needs, rendered as the SPEC §9 policy line when it is missing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permission {
    /// RBAC resource (`applications`, `clusters`, `logs`).
    pub resource: &'static str,
    /// RBAC action (`get`, `sync`).
    pub action: &'static str,
    /// RBAC object pattern of the policy line (`*/*`, `*`).
    pub object: &'static str,
}

impl Permission {
    /// `applications, get` on every project.
    pub const APPS_GET: Permission = Permission {
        resource: "applications",
        action: "get",
        object: "*/*",
    };
    /// `applications, sync` on every project.
    pub const APPS_SYNC: Permission = Permission {
        resource: "applications",
        action: "sync",
        object: "*/*",
    };
    /// `applications, rollback` on every project (checked instead of `sync` when Argo CD's
    /// `server.rbac.rollback.enforce.enable` is set).
    pub const APPS_ROLLBACK: Permission = Permission {
        resource: "applications",
        action: "rollback",
        object: "*/*",
    };
    /// `clusters, get` on every cluster.
    pub const CLUSTERS_GET: Permission = Permission {
        resource: "clusters",
        action: "get",
        object: "*",
    };
    /// `applicationsets, get` on every project.
    pub const APPSETS_GET: Permission = Permission {
        resource: "applicationsets",
        action: "get",
        object: "*/*",
    };
    /// `projects, get` on every project.
    pub const PROJECTS_GET: Permission = Permission {
        resource: "projects",
        action: "get",
        object: "*",
    };
    /// `logs, get` on every project.
    pub const LOGS_GET: Permission = Permission {
        resource: "logs",
        action: "get",
        object: "*/*",
    };

    /// The RBAC policy line granting this permission to `account`.
    pub fn policy_line(&self, account: &str) -> String {
        format!(
            "p, {account}, {}, {}, {}, allow",
            self.resource, self.action, self.object
        )
    }
}

/// An error talking to Argo CD.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ArgoCdError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The token could not be read.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// 401: the token is invalid, expired or revoked.
    #[error(
        "Argo CD rejected the token (401: {message}); token subject {}, expiry {}: generate a new token (argocd account generate-token) and update the Secret (Helm gateway.argocd.authenticationToken)",
        subject.as_deref().unwrap_or("unknown"),
        expires_at.map_or_else(|| "none".to_owned(), |t| t.to_string())
    )]
    Unauthorized {
        /// Argo CD's message.
        message: String,
        /// `sub` of the token sent.
        subject: Option<String>,
        /// `exp` of the token sent.
        expires_at: Option<jiff::Timestamp>,
    },
    /// The username/password login failed (wrong password, unknown or disabled account).
    #[error(
        "Argo CD refused the login of account {username:?} ({status}: {message}): check the password in the file of --argocd-password-file (Helm gateway.argocd.passwordSecretName) and the account name (--argocd-username, Helm gateway.argocd.username); the account needs the login capability (accounts.{username}: login in argocd-cm)"
    )]
    LoginFailed {
        /// The account.
        username: String,
        /// HTTP status.
        status: u16,
        /// Argo CD's message.
        message: String,
    },
    /// A fresh session token was refused too: the account cannot use the API.
    #[error(
        "Argo CD rejected the session of account {username:?} right after logging in (401: {message}); check the account is enabled (--argocd-username, Helm gateway.argocd.username)"
    )]
    SessionRejected {
        /// The account.
        username: String,
        /// Argo CD's message.
        message: String,
    },
    /// 403: Argo CD RBAC denies the call.
    #[error("Argo CD denied {what} (403: {message}); add this RBAC policy line to argocd-rbac-cm: {policy_line}")]
    PermissionDenied {
        /// The call that was denied.
        what: String,
        /// Argo CD's message.
        message: String,
        /// The policy line that grants the missing permission.
        policy_line: String,
    },
    /// 404: the application or object does not exist (or is outside the given project).
    #[error("not found in Argo CD: {message}")]
    NotFound {
        /// Argo CD's message.
        message: String,
    },
    /// 415: Argo CD refused the request's content type.
    #[error(
        "Argo CD refused the content type (415: {message}); requests must carry exactly Content-Type: application/json"
    )]
    UnsupportedMediaType {
        /// Argo CD's message.
        message: String,
    },
    /// 400/409 and other client errors: Argo CD refused the request as given.
    #[error("Argo CD refused the request ({status}: {message})")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// Argo CD's message.
        message: String,
    },
    /// 5xx, or the connection could not be made or broke: worth retrying.
    #[error("Argo CD is unavailable at {url}: {message}")]
    Unavailable {
        /// The base URL.
        url: String,
        /// HTTP status, if a response arrived.
        status: Option<u16>,
        /// What happened.
        message: String,
    },
    /// The request did not finish within its deadline.
    #[error(
        "Argo CD did not answer {what} within {seconds:.1}s (flag --argocd-request-timeout, Helm gateway.argocd.requestTimeout)"
    )]
    Timeout {
        /// The call.
        what: String,
        /// The deadline in seconds.
        seconds: f64,
    },
    /// The server certificate is signed by an authority we do not trust (or is a self-signed
    /// certificate that is not itself in the trust list).
    #[error(
        "the Argo CD certificate at {url} is not trusted: {detail}; add the CA that issued it (for a self-signed certificate, the certificate itself) with --trust-ca (Helm gateway.serverCertificates), or set gateway.argocd.insecure=true (--argocd-insecure)"
    )]
    UnknownAuthority {
        /// The base URL.
        url: String,
        /// What is wrong, as a sentence.
        detail: String,
    },
    /// The server certificate is invalid for another reason (host name, expiry, usage).
    #[error("the Argo CD certificate at {url} is not valid: {detail}; {fix}")]
    BadCertificate {
        /// The base URL.
        url: String,
        /// What is wrong, as a sentence.
        detail: String,
        /// What to change.
        fix: String,
    },
    /// We spoke TLS to a server that answered in plaintext.
    #[error(
        "Argo CD at {url} does not speak TLS ({detail}): set gateway.argocd.plaintext=true (--argocd-plaintext) if the server runs with --insecure or TLS ends at a load balancer"
    )]
    TlsAgainstPlaintext {
        /// The base URL.
        url: String,
        /// The TLS error.
        detail: String,
    },
    /// We spoke plaintext to a server that expects TLS (or redirected us to https).
    #[error(
        "Argo CD at {url} expects TLS ({detail}): unset gateway.argocd.plaintext (--argocd-plaintext) and use an https:// server URL"
    )]
    PlaintextAgainstTls {
        /// The base URL.
        url: String,
        /// What showed it.
        detail: String,
    },
    /// Another TLS failure.
    #[error("TLS with Argo CD at {url} failed: {detail}")]
    Tls {
        /// The base URL.
        url: String,
        /// The TLS error.
        detail: String,
    },
    /// A response body exceeded the configured cap.
    #[error(
        "an Argo CD response exceeded {limit} bytes (flag --argocd-max-body-bytes, Helm gateway.argocd.maxBodyBytes)"
    )]
    BodyTooLarge {
        /// The cap.
        limit: u64,
    },
    /// A stream line exceeded the configured cap.
    #[error(
        "an Argo CD stream line exceeded {limit} bytes (flag --argocd-max-line-bytes, Helm gateway.argocd.maxLineBytes)"
    )]
    LineTooLong {
        /// The cap.
        limit: usize,
    },
    /// A stream sent nothing, not even Argo CD's keepalive, for too long: the connection is
    /// dead or held by something in between.
    #[error(
        "the Argo CD stream stalled: nothing arrived for {seconds} s although Argo CD sends a keepalive every 15 s; reconnecting"
    )]
    Stalled {
        /// The silence allowed.
        seconds: u64,
    },
    /// A response could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The server reported an error inside an open stream.
    #[error("Argo CD ended the stream with an error ({http_code}: {message})")]
    Stream {
        /// HTTP status the error maps to.
        http_code: u16,
        /// Argo CD's message.
        message: String,
    },
}

impl ArgoCdError {
    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ArgoCdError::Unavailable { .. }
                | ArgoCdError::Timeout { .. }
                | ArgoCdError::Stream { .. }
                | ArgoCdError::BodyTooLarge { .. }
                | ArgoCdError::LineTooLong { .. }
                | ArgoCdError::Stalled { .. }
                | ArgoCdError::Decode(_)
        )
    }
}
