//! Argo CD connection flags and their validated form. Validation happens before any I/O and every
//! error names both the flag and the Helm value to change.

use std::path::PathBuf;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use url::Url;

use crate::util::parse_duration;

/// Flags for reaching Argo CD (each also settable as `ARGOCD_GATEWAY_<FLAG>`).
#[derive(Debug, Clone, clap::Args)]
pub struct ArgoCdArgs {
    /// Argo CD server: https://host[:port][/root], http://… (with --argocd-plaintext), grpc://host[:port] or host[:port]
    /// (Helm gateway.argocd.serverUrl).
    #[arg(
        long = "argocd-server",
        env = "ARGOCD_GATEWAY_ARGOCD_SERVER",
        default_value = "https://argocd-server.argocd.svc.cluster.local"
    )]
    pub argocd_server: String,
    /// Use TLS without verifying the certificate or host name (Argo CD's self-signed default;
    /// Helm gateway.argocd.insecure).
    #[arg(long = "argocd-insecure", env = "ARGOCD_GATEWAY_ARGOCD_INSECURE")]
    pub argocd_insecure: bool,
    /// Talk to Argo CD without TLS (server runs --insecure, or TLS ends at a load balancer;
    /// Helm gateway.argocd.plaintext).
    #[arg(long = "argocd-plaintext", env = "ARGOCD_GATEWAY_ARGOCD_PLAINTEXT")]
    pub argocd_plaintext: bool,
    /// File holding the Argo CD account token (JWT); re-read when it changes (Helm
    /// gateway.argocd.authenticationToken or authenticationTokenSecretName, mounted as a file).
    #[arg(long = "argocd-token-file", env = "ARGOCD_GATEWAY_ARGOCD_TOKEN_FILE")]
    pub argocd_token_file: Option<PathBuf>,
    /// Directory with one token file per AppProject, plus `_unscoped` for calls no project scopes
    /// (Helm gateway.argocd.projectAuthentication or projectAuthenticationSecretName).
    #[arg(long = "argocd-project-tokens-dir", env = "ARGOCD_GATEWAY_ARGOCD_PROJECT_TOKENS_DIR")]
    pub argocd_project_tokens_dir: Option<PathBuf>,
    /// A local Argo CD account to log in as (`POST /api/v1/session`), for installations that
    /// allow no API keys; needs --argocd-password-file (Helm gateway.argocd.username).
    #[arg(long = "argocd-username", env = "ARGOCD_GATEWAY_ARGOCD_USERNAME")]
    pub argocd_username: Option<String>,
    /// File holding the password of --argocd-username; read at every login, never logged (Helm
    /// gateway.argocd.passwordSecretName, mounted as a file).
    #[arg(long = "argocd-password-file", env = "ARGOCD_GATEWAY_ARGOCD_PASSWORD_FILE")]
    pub argocd_password_file: Option<PathBuf>,
    /// Watch applications (`--watch=false` polls instead, for proxies that cut long responses;
    /// Helm gateway.argocd.watch).
    #[arg(
        long = "watch",
        env = "ARGOCD_GATEWAY_WATCH",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub watch: bool,
    /// List interval in poll-only mode (Helm gateway.argocd.pollInterval).
    #[arg(long = "poll-interval", env = "ARGOCD_GATEWAY_POLL_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Full re-list interval while watching, as Argo CD drops watch events under load (Helm
    /// gateway.argocd.resyncInterval).
    #[arg(long = "resync-interval", env = "ARGOCD_GATEWAY_RESYNC_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub resync_interval: Duration,
    /// Cluster list interval (Helm gateway.argocd.clusterInterval).
    #[arg(long = "cluster-interval", env = "ARGOCD_GATEWAY_CLUSTER_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub cluster_interval: Duration,
    /// Only applications matching this label selector, Kubernetes syntax (Helm
    /// gateway.argocd.selector).
    #[arg(long = "selector", env = "ARGOCD_GATEWAY_SELECTOR")]
    pub selector: Option<String>,
    /// Only applications of these projects, repeatable (Helm gateway.argocd.projects).
    #[arg(long = "project", env = "ARGOCD_GATEWAY_PROJECT", value_delimiter = ',')]
    pub project: Vec<String>,
    /// Only applications in these namespaces, repeatable (Helm gateway.argocd.applicationNamespaces).
    #[arg(long = "app-namespace", env = "ARGOCD_GATEWAY_APP_NAMESPACE", value_delimiter = ',')]
    pub app_namespace: Vec<String>,
    /// Deadline of one Argo CD request, not of a watch stream (Helm gateway.argocd.requestTimeout).
    #[arg(long = "argocd-request-timeout", env = "ARGOCD_GATEWAY_ARGOCD_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub argocd_request_timeout: Duration,
    /// Largest accepted Argo CD response body, in bytes (Helm gateway.argocd.maxBodyBytes).
    #[arg(long = "argocd-max-body-bytes", env = "ARGOCD_GATEWAY_ARGOCD_MAX_BODY_BYTES", default_value_t = 512 * 1024 * 1024)]
    pub argocd_max_body_bytes: u64,
    /// Largest accepted line of a watch or log stream, in bytes (Helm gateway.argocd.maxLineBytes).
    #[arg(long = "argocd-max-line-bytes", env = "ARGOCD_GATEWAY_ARGOCD_MAX_LINE_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub argocd_max_line_bytes: usize,
    /// A watch silent for this long (no event, no keepalive; Argo CD sends one every 15 s) is
    /// taken for dead and re-opened after a re-list.
    #[arg(long = "argocd-watch-idle-timeout", env = "ARGOCD_GATEWAY_ARGOCD_WATCH_IDLE_TIMEOUT", default_value = "45s", value_parser = parse_duration)]
    pub argocd_watch_idle_timeout: Duration,
}

/// How the client secures the connection to Argo CD.
#[derive(Clone, PartialEq)]
pub enum TlsMode {
    /// Verify the chain and host name against system roots plus these extra CAs.
    Verify {
        /// Extra trust anchors from `--trust-ca`.
        extra_roots: Vec<CertificateDer<'static>>,
    },
    /// TLS without any certificate or host-name verification.
    Insecure,
    /// No TLS.
    Plaintext,
}

impl std::fmt::Debug for TlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsMode::Verify { extra_roots } => write!(f, "Verify({} extra CAs)", extra_roots.len()),
            TlsMode::Insecure => f.write_str("Insecure"),
            TlsMode::Plaintext => f.write_str("Plaintext"),
        }
    }
}

/// Where bearer tokens come from.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthSource {
    /// One account token in a file.
    TokenFile(PathBuf),
    /// One token file per project, `_unscoped` for calls no project scopes.
    ProjectTokensDir(PathBuf),
    /// A local account's username and password file: the gateway logs in and keeps the session
    /// token in memory only.
    Login {
        /// The account.
        username: String,
        /// The password file.
        password_file: PathBuf,
    },
}

/// Validated Argo CD settings.
#[derive(Debug, Clone)]
pub struct ArgoCdConfig {
    /// Base URL including the root path, always ending in `/`.
    pub base_url: Url,
    /// TLS mode.
    pub tls: TlsMode,
    /// Token source.
    pub auth: AuthSource,
    /// Watch (true) or poll only (false).
    pub watch: bool,
    /// Poll interval when not watching.
    pub poll_interval: Duration,
    /// Full re-list interval while watching.
    pub resync_interval: Duration,
    /// Cluster list interval (Helm gateway.argocd.clusterInterval).
    pub cluster_interval: Duration,
    /// Label selector filter.
    pub selector: Option<String>,
    /// Project filter (empty: all).
    pub projects: Vec<String>,
    /// App namespace filter (empty: all).
    pub app_namespaces: Vec<String>,
    /// Deadline of one unary request.
    pub request_timeout: Duration,
    /// Response body cap.
    pub max_body_bytes: u64,
    /// Stream line cap.
    pub max_line_bytes: usize,
    /// Silence after which a stream is taken for dead.
    pub watch_idle_timeout: Duration,
}

/// A configuration error; the message names the flag and the Helm value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The server URL could not be parsed.
    #[error(
        "invalid Argo CD server {value:?}: {reason} (flag --argocd-server, Helm gateway.argocd.serverUrl); use https://host[:port][/root], http://host[:port] with --argocd-plaintext, grpc://host[:port] or host[:port]"
    )]
    BadUrl {
        /// The value given.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// `http://` without plaintext.
    #[error(
        "Argo CD server {value:?} is http:// but plaintext is off: set --argocd-plaintext (Helm gateway.argocd.plaintext=true) or use https://"
    )]
    HttpWithoutPlaintext {
        /// The value given.
        value: String,
    },
    /// Insecure and plaintext both set.
    #[error(
        "--argocd-insecure and --argocd-plaintext are mutually exclusive (Helm gateway.argocd.insecure and gateway.argocd.plaintext): insecure is TLS without verification, plaintext is no TLS; set only one"
    )]
    InsecureAndPlaintext,
    /// No token source.
    #[error(
        "no Argo CD credentials configured: set --argocd-token-file (Helm gateway.argocd.authenticationToken or authenticationTokenSecretName), --argocd-project-tokens-dir (Helm gateway.argocd.projectAuthentication or projectAuthenticationSecretName), or --argocd-username with --argocd-password-file (Helm gateway.argocd.username and gateway.argocd.passwordSecretName)"
    )]
    NoToken,
    /// More than one credential kind.
    #[error(
        "{given} are mutually exclusive: the gateway uses exactly one kind of Argo CD credential: --argocd-token-file (Helm gateway.argocd.authenticationToken), --argocd-project-tokens-dir (Helm gateway.argocd.projectAuthentication) or --argocd-username with --argocd-password-file (Helm gateway.argocd.username and gateway.argocd.passwordSecretName); set only one"
    )]
    TwoTokenSources {
        /// The flags that were given.
        given: String,
    },
    /// A username without a password file, or the other way round.
    #[error(
        "--argocd-username and --argocd-password-file go together (Helm gateway.argocd.username and gateway.argocd.passwordSecretName); {missing} is missing"
    )]
    IncompleteLogin {
        /// The flag that is missing.
        missing: &'static str,
    },
    /// A numeric or duration limit of zero.
    #[error("{flag} must be greater than zero (Helm {helm})")]
    Zero {
        /// The flag.
        flag: &'static str,
        /// The Helm value.
        helm: &'static str,
    },
}

impl ArgoCdConfig {
    /// Validates the flags; `trust` holds the certificates loaded from `--trust-ca`.
    pub fn from_args(args: &ArgoCdArgs, trust: Vec<CertificateDer<'static>>) -> Result<Self, ConfigError> {
        if args.argocd_insecure && args.argocd_plaintext {
            return Err(ConfigError::InsecureAndPlaintext);
        }
        let base_url = parse_server_url(&args.argocd_server, args.argocd_plaintext)?;
        let tls = if args.argocd_plaintext {
            TlsMode::Plaintext
        } else if args.argocd_insecure {
            TlsMode::Insecure
        } else {
            TlsMode::Verify { extra_roots: trust }
        };
        let username = args.argocd_username.as_deref().map(str::trim).filter(|u| !u.is_empty());
        let login = username.is_some() || args.argocd_password_file.is_some();
        let given: Vec<&str> = [
            (args.argocd_token_file.is_some(), "--argocd-token-file"),
            (args.argocd_project_tokens_dir.is_some(), "--argocd-project-tokens-dir"),
            (login, "--argocd-username/--argocd-password-file"),
        ]
        .into_iter()
        .filter_map(|(set, flag)| set.then_some(flag))
        .collect();
        if given.len() > 1 {
            return Err(ConfigError::TwoTokenSources {
                given: given.join(" and "),
            });
        }
        let auth = match (&args.argocd_token_file, &args.argocd_project_tokens_dir) {
            (Some(f), _) => AuthSource::TokenFile(f.clone()),
            (_, Some(d)) => AuthSource::ProjectTokensDir(d.clone()),
            (None, None) => match (username, &args.argocd_password_file) {
                (Some(u), Some(p)) => AuthSource::Login {
                    username: u.to_owned(),
                    password_file: p.clone(),
                },
                (Some(_), None) => {
                    return Err(ConfigError::IncompleteLogin {
                        missing: "--argocd-password-file",
                    });
                }
                (None, Some(_)) => {
                    return Err(ConfigError::IncompleteLogin {
                        missing: "--argocd-username",
                    });
                }
                (None, None) => return Err(ConfigError::NoToken),
            },
        };
        let nonzero = |d: Duration, flag, helm| {
            if d.is_zero() {
                Err(ConfigError::Zero { flag, helm })
            } else {
                Ok(d)
            }
        };
        let poll_interval = nonzero(args.poll_interval, "--poll-interval", "gateway.argocd.pollInterval")?;
        let resync_interval = nonzero(
            args.resync_interval,
            "--resync-interval",
            "gateway.argocd.resyncInterval",
        )?;
        let cluster_interval = nonzero(
            args.cluster_interval,
            "--cluster-interval",
            "gateway.argocd.clusterInterval",
        )?;
        let watch_idle_timeout = nonzero(
            args.argocd_watch_idle_timeout,
            "--argocd-watch-idle-timeout",
            "gateway.argocd.watchIdleTimeout",
        )?;
        let request_timeout = nonzero(
            args.argocd_request_timeout,
            "--argocd-request-timeout",
            "gateway.argocd.requestTimeout",
        )?;
        if args.argocd_max_body_bytes == 0 {
            return Err(ConfigError::Zero {
                flag: "--argocd-max-body-bytes",
                helm: "gateway.argocd.maxBodyBytes",
            });
        }
        if args.argocd_max_line_bytes == 0 {
            return Err(ConfigError::Zero {
                flag: "--argocd-max-line-bytes",
                helm: "gateway.argocd.maxLineBytes",
            });
        }
        let clean = |v: &[String]| -> Vec<String> {
            v.iter()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        };
        Ok(Self {
            base_url,
            tls,
            auth,
            watch: args.watch,
            poll_interval,
            resync_interval,
            cluster_interval,
            selector: args.selector.clone().filter(|s| !s.trim().is_empty()),
            projects: clean(&args.project),
            app_namespaces: clean(&args.app_namespace),
            request_timeout,
            max_body_bytes: args.argocd_max_body_bytes,
            max_line_bytes: args.argocd_max_line_bytes,
            watch_idle_timeout,
        })
    }

    /// Whether the connection uses TLS.
    pub fn uses_tls(&self) -> bool {
        !matches!(self.tls, TlsMode::Plaintext)
    }
}

/// Normalises the accepted URL forms to `http(s)://host:port/root/`.
pub fn parse_server_url(value: &str, plaintext: bool) -> Result<Url, ConfigError> {
    let bad = |reason: &str| ConfigError::BadUrl {
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let v = value.trim();
    if v.is_empty() {
        return Err(bad("empty"));
    }
    let (scheme, rest) = match v.split_once("://") {
        Some((s, rest)) => (s.to_ascii_lowercase(), rest),
        None => (String::new(), v),
    };
    let target_scheme = match scheme.as_str() {
        "https" => {
            if plaintext {
                // An https:// URL with plaintext would silently drop TLS; honour the explicit flag
                // but say so through the URL we actually use.
                "http"
            } else {
                "https"
            }
        }
        "http" => {
            if !plaintext {
                return Err(ConfigError::HttpWithoutPlaintext {
                    value: value.to_owned(),
                });
            }
            "http"
        }
        "grpc" | "" => {
            if plaintext {
                "http"
            } else {
                "https"
            }
        }
        other => return Err(bad(&format!("unsupported scheme {other}://"))),
    };
    let mut url = Url::parse(&format!("{target_scheme}://{rest}")).map_err(|e| bad(&e.to_string()))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("a query or fragment is not allowed"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("credentials in the URL are not allowed; use --argocd-token-file"));
    }
    let path = url.path().trim_end_matches('/').to_owned();
    url.set_path(&format!("{path}/"));
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: ArgoCdArgs,
    }

    fn args(extra: &[&str]) -> ArgoCdArgs {
        let mut v = vec!["t", "--argocd-token-file", "/t"];
        v.extend_from_slice(extra);
        T::try_parse_from(v).unwrap().a
    }

    #[test]
    fn url_forms() {
        let u = |v, p| parse_server_url(v, p).map(|u| u.to_string());
        assert_eq!(u("argocd:8080", false).unwrap(), "https://argocd:8080/");
        assert_eq!(u("grpc://argocd", false).unwrap(), "https://argocd/");
        assert_eq!(u("grpc://argocd", true).unwrap(), "http://argocd/");
        assert_eq!(u("https://h/argo-cd/", false).unwrap(), "https://h/argo-cd/");
        assert_eq!(u("http://h:80/root", true).unwrap(), "http://h/root/");
        assert!(matches!(
            parse_server_url("http://h", false),
            Err(ConfigError::HttpWithoutPlaintext { .. })
        ));
        assert!(matches!(
            parse_server_url("ftp://h", false),
            Err(ConfigError::BadUrl { .. })
        ));
    }

    #[test]
    fn flag_rules() {
        let c = ArgoCdConfig::from_args(&args(&[]), vec![]).unwrap();
        assert!(c.watch && c.uses_tls());
        assert_eq!(c.resync_interval, Duration::from_secs(300));
        assert!(
            !ArgoCdConfig::from_args(&args(&["--watch=false"]), vec![])
                .unwrap()
                .watch
        );
        let e = ArgoCdConfig::from_args(&args(&["--argocd-insecure", "--argocd-plaintext"]), vec![]).unwrap_err();
        assert_eq!(e, ConfigError::InsecureAndPlaintext);
        assert!(e.to_string().contains("gateway.argocd.plaintext"));
        let e = ArgoCdConfig::from_args(&args(&["--argocd-server", "http://x"]), vec![]).unwrap_err();
        assert!(e.to_string().contains("gateway.argocd.plaintext=true"));
        let mut none = args(&[]);
        none.argocd_token_file = None;
        assert_eq!(
            ArgoCdConfig::from_args(&none, vec![]).unwrap_err(),
            ConfigError::NoToken
        );
        let e = ArgoCdConfig::from_args(&args(&["--argocd-username", "bot"]), vec![]).unwrap_err();
        assert!(matches!(e, ConfigError::TwoTokenSources { .. }), "{e}");
        assert!(e.to_string().contains("gateway.argocd.passwordSecretName"));
        let mut login = args(&["--argocd-username", "bot", "--argocd-password-file", "/p"]);
        login.argocd_token_file = None;
        assert!(matches!(
            ArgoCdConfig::from_args(&login, vec![]).unwrap().auth,
            AuthSource::Login { ref username, .. } if username == "bot"
        ));
        login.argocd_password_file = None;
        let e = ArgoCdConfig::from_args(&login, vec![]).unwrap_err();
        assert!(e.to_string().contains("--argocd-password-file is missing"), "{e}");
    }
}
