//! The Argo CD probes `check` and the gateway's health check share: configuration, DNS, TCP,
//! TLS (with the presented chain and the fix), version, each token's subject and expiry, the
//! `can-i` permission probes and the application and cluster counts. Each appends rows to a
//! [`Report`], so both commands probe, and report, the same way.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::token::{EXPIRY_WARNING, TokenError, UNSCOPED};
use super::transport::classify_tls;
use super::{AppQuery, ArgoCdArgs, ArgoCdConfig, ArgoCdError, AuthSource, Client, Permission, TlsMode};
use crate::report::{Report, Status};
use crate::tls::{CertCheck, TrustArgs, Verifier};

/// The Argo CD rows: configuration, DNS, TCP, TLS, version, token, permissions, counts.
pub async fn argocd_rows(args: &ArgoCdArgs, trust: &TrustArgs, report: &mut Report) {
    let certs = match trust.load() {
        Ok(c) => c,
        Err(e) => {
            report.push("configuration", Status::Fail, e.to_string(), None);
            return;
        }
    };
    let config = match ArgoCdConfig::from_args(args, certs) {
        Ok(c) => c,
        Err(e) => {
            report.push("configuration", Status::Fail, e.to_string(), None);
            return;
        }
    };
    let mode = match &config.tls {
        TlsMode::Verify { extra_roots } => format!("TLS verified (system roots + {} extra CAs)", extra_roots.len()),
        TlsMode::Insecure => "TLS without verification (--argocd-insecure)".into(),
        TlsMode::Plaintext => "plaintext (--argocd-plaintext)".into(),
    };
    let auth = match &config.auth {
        AuthSource::TokenFile(p) => format!("token file {}", p.display()),
        AuthSource::ProjectTokensDir(p) => format!("project tokens in {}", p.display()),
        AuthSource::Login {
            username,
            password_file,
        } => format!("login as {username} (password in {})", password_file.display()),
    };
    report.push(
        "configuration",
        Status::Ok,
        format!("server {}, {mode}, {auth}", config.base_url),
        None,
    );

    let host = config.base_url.host_str().unwrap_or_default().to_owned();
    let port = config.base_url.port_or_known_default().unwrap_or(443);
    let lookup_host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let addrs: Vec<std::net::SocketAddr> = match tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::lookup_host((lookup_host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(a)) => a.collect(),
        Ok(Err(e)) => {
            report.push(
                "DNS",
                Status::Fail,
                format!("cannot resolve {host}: {e}"),
                Some("check --argocd-server (Helm gateway.argocd.serverUrl)".into()),
            );
            return;
        }
        Err(_) => {
            report.push("DNS", Status::Fail, format!("resolving {host} timed out"), None);
            return;
        }
    };
    let shown: Vec<String> = addrs.iter().take(4).map(|a| a.ip().to_string()).collect();
    report.push(
        "DNS",
        Status::Ok,
        format!("{host} resolves to {}", shown.join(", ")),
        None,
    );

    let Some(addr) = addrs.first().copied() else {
        report.push("TCP", Status::Fail, format!("{host} has no addresses"), None);
        return;
    };
    let tcp = match tokio::time::timeout(config.request_timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            report.push(
                "TCP",
                Status::Fail,
                format!("cannot connect to {addr}: {e}"),
                Some("check the server port and any NetworkPolicy between the gateway and argocd-server".into()),
            );
            return;
        }
        Err(_) => {
            report.push("TCP", Status::Fail, format!("connecting to {addr} timed out"), None);
            return;
        }
    };
    report.push("TCP", Status::Ok, format!("connected to {addr}"), None);

    match &config.tls {
        TlsMode::Plaintext => {
            drop(tcp);
            report.push("TLS", Status::Warn, "not used (--argocd-plaintext)", None);
        }
        mode => {
            let (status, detail, fix) = tls_row(tcp, &host, mode, config.base_url.as_str()).await;
            let stop = status == Status::Fail;
            report.push("TLS", status, detail, fix);
            if stop {
                return;
            }
        }
    }

    let client = match Client::new(config.clone()) {
        Ok(c) => c,
        Err(e) => {
            report.push("client", Status::Fail, e.to_string(), None);
            return;
        }
    };
    if let Some(scopes) = client_rows(&client, &config, report).await {
        count_rows(&client, &config, &scopes, report).await;
    }
}

/// The rows that need only a working client: Argo CD version, then each token scope with its
/// subject, expiry and permissions. Returns the token scopes when at least one token works (for
/// callers that go on to count applications), `None` when nothing more can be checked. Shared by
/// `check` and the hub's health check, so both probe the same way.
pub async fn client_rows(client: &Client, config: &ArgoCdConfig, report: &mut Report) -> Option<Vec<Option<String>>> {
    match client.version().await {
        Ok(v) => report.push(
            "Argo CD version",
            Status::Ok,
            format!("{} (build {})", v.version, v.build_date),
            None,
        ),
        Err(e) => {
            report.push("Argo CD version", Status::Fail, e.to_string(), None);
            return None;
        }
    }

    let mut scopes: Vec<Option<String>> = match client.scopes(&config.projects) {
        Ok(s) => s,
        Err(e) => {
            report.push("token", Status::Fail, e.to_string(), None);
            return None;
        }
    };
    if matches!(config.auth, AuthSource::ProjectTokensDir(_)) {
        scopes.push(None);
    }
    let mut any_token = false;
    for scope in &scopes {
        let label = match scope {
            Some(p) => format!("token [{p}]"),
            None if matches!(config.auth, AuthSource::ProjectTokensDir(_)) => format!("token [{UNSCOPED}]"),
            None => "token".to_owned(),
        };
        if token_rows(client, scope.as_deref(), &label, report).await {
            any_token = true;
            permission_rows(client, scope.as_deref(), &label, report).await;
        }
    }
    any_token.then_some(scopes)
}

/// A certificate check that records the presented chain before delegating.
#[derive(Debug)]
struct Capture {
    inner: Arc<dyn ServerCertVerifier>,
    chain: Mutex<Vec<CertificateDer<'static>>>,
}

impl CertCheck for Capture {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut c) = self.chain.lock() {
            c.push(end_entity.clone().into_owned());
            c.extend(intermediates.iter().map(|i| i.clone().into_owned()));
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }
}

fn describe_chain(chain: &[CertificateDer<'static>]) -> String {
    let parts: Vec<String> = chain
        .iter()
        .map(|der| match x509_parser::parse_x509_certificate(der) {
            Ok((_, c)) => format!(
                "[{}; issuer {}; expires {}; {}]",
                c.subject(),
                c.issuer(),
                c.validity().not_after,
                crate::tls::Fingerprint::of(der)
            ),
            Err(_) => "[unparsable certificate]".to_owned(),
        })
        .collect();
    if parts.is_empty() {
        "no certificate presented".into()
    } else {
        parts.join(" <- ")
    }
}

async fn tls_row(
    tcp: tokio::net::TcpStream,
    host: &str,
    mode: &TlsMode,
    url: &str,
) -> (Status, String, Option<String>) {
    let provider = crate::tls::provider();
    let inner: Arc<dyn ServerCertVerifier> = match mode {
        TlsMode::Verify { extra_roots } => super::transport::verifier(extra_roots),
        _ => crate::tls::accept_any(),
    };
    let capture = Arc::new(Verifier::new(Capture {
        inner,
        chain: Mutex::new(Vec::new()),
    }));
    let config = match rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions() {
        Ok(b) => b
            .dangerous()
            .with_custom_certificate_verifier(capture.clone())
            .with_no_client_auth(),
        Err(e) => return (Status::Fail, format!("cannot configure TLS: {e}"), None),
    };
    let server_name = match ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_owned()) {
        Ok(n) => n,
        Err(e) => return (Status::Fail, format!("invalid TLS server name {host}: {e}"), None),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let result = tokio::time::timeout(Duration::from_secs(10), connector.connect(server_name, tcp)).await;
    let chain = capture.inner().chain.lock().map(|c| c.clone()).unwrap_or_default();
    match result {
        Ok(Ok(stream)) => {
            let version = stream
                .get_ref()
                .1
                .protocol_version()
                .map_or_else(|| "TLS".to_owned(), |v| format!("{v:?}"));
            if matches!(mode, TlsMode::Insecure) {
                (
                    Status::Warn,
                    format!("{version}, certificate NOT verified (--argocd-insecure); chain {}", describe_chain(&chain)),
                    Some(
                        "to verify, add the CA with --trust-ca (Helm gateway.serverCertificates) and unset gateway.argocd.insecure"
                            .into(),
                    ),
                )
            } else {
                let pinned = match (mode, chain.first()) {
                    (TlsMode::Verify { extra_roots }, Some(leaf)) => extra_roots.iter().any(|r| r == leaf),
                    _ => false,
                };
                let how = if pinned {
                    "verified (this exact certificate is in the trust list)"
                } else {
                    "verified"
                };
                (
                    Status::Ok,
                    format!("{version}, {how}; chain {}", describe_chain(&chain)),
                    None,
                )
            }
        }
        Ok(Err(e)) => {
            let classified = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .map(|re| classify_tls(url, re));
            let message = match classified {
                Some(c) => c.to_string(),
                None => format!("TLS handshake failed: {e}"),
            };
            let detail = if chain.is_empty() {
                message
            } else {
                format!("{message}; chain {}", describe_chain(&chain))
            };
            (Status::Fail, detail, None)
        }
        Err(_) => (
            Status::Fail,
            "TLS handshake timed out".into(),
            Some("if the server does not speak TLS, set gateway.argocd.plaintext=true (--argocd-plaintext)".into()),
        ),
    }
}

/// Token claims and acceptance; returns whether the token is usable.
async fn token_rows(client: &Client, scope: Option<&str>, label: &str, report: &mut Report) -> bool {
    let claims = match client.token_claims(scope) {
        Ok(c) => c,
        Err(e @ ArgoCdError::Token(TokenError::NoProjectToken { .. })) if scope.is_none() => {
            report.push(label, Status::Warn, format!("{e}; clusters will not be listed"), None);
            return false;
        }
        Err(e) => {
            report.push(label, Status::Fail, e.to_string(), None);
            return false;
        }
    };
    let subject = claims.subject.clone().unwrap_or_else(|| "unknown (not a JWT?)".into());
    let now = jiff::Timestamp::now();
    let regenerate = "generate a new token (argocd account generate-token --account <account>) and update the Secret (Helm gateway.argocd.authenticationToken)".to_owned();
    let (mut status, expiry, mut fix) = match claims.expires_at {
        None => (Status::Ok, "never expires".to_owned(), None),
        Some(exp) if exp <= now => (Status::Fail, format!("EXPIRED at {exp}"), Some(regenerate.clone())),
        Some(exp) => {
            let soon = jiff::SignedDuration::try_from(EXPIRY_WARNING)
                .ok()
                .and_then(|w| exp.checked_sub(w).ok())
                .is_some_and(|warn_from| now >= warn_from);
            if soon {
                (
                    Status::Warn,
                    format!("expires {exp} (within 7 days)"),
                    Some(regenerate.clone()),
                )
            } else {
                let days = exp.duration_since(now).as_hours() / 24;
                (Status::Ok, format!("expires {exp} (in {days} days)"), None)
            }
        }
    };
    let accepted = match client.userinfo_for(scope).await {
        Ok(u) if u.logged_in => format!("accepted as {}", u.username),
        Ok(_) => {
            status = Status::Fail;
            fix = Some(regenerate);
            "REJECTED by Argo CD (invalid, expired or revoked)".to_owned()
        }
        Err(e) => {
            status = Status::Fail;
            e.to_string()
        }
    };
    let ok = status != Status::Fail;
    report.push(label, status, format!("subject {subject}, {expiry}, {accepted}"), fix);
    ok
}

async fn permission_rows(client: &Client, scope: Option<&str>, label: &str, report: &mut Report) {
    let account = client
        .token_claims(scope)
        .ok()
        .and_then(|c| c.account())
        .unwrap_or_else(|| "<account>".into());
    let app_object: Vec<&str> = match scope {
        Some(p) => vec![p, "*"],
        None => vec!["*", "*"],
    };
    let mut probes: Vec<(&Permission, Vec<&str>, bool, &str)> = vec![
        (
            &Permission::APPS_GET,
            app_object.clone(),
            true,
            "list, watch, get, resource tree, refresh",
        ),
        (&Permission::APPS_SYNC, app_object.clone(), false, "sync requests"),
        (&Permission::LOGS_GET, app_object.clone(), false, "log requests"),
    ];
    if scope.is_none() {
        probes.push((&Permission::CLUSTERS_GET, vec!["*"], true, "cluster list"));
        probes.push((
            &Permission::APPSETS_GET,
            vec!["*", "*"],
            false,
            "ApplicationSets (without it the hub sees none)",
        ));
        probes.push((
            &Permission::PROJECTS_GET,
            vec!["*"],
            false,
            "AppProjects (without it the hub sees none)",
        ));
    }
    for (perm, object, required, purpose) in probes {
        let name = format!("{label} can {} {}", perm.action, perm.resource);
        match client.can_i(scope, perm.resource, perm.action, &object).await {
            Ok(true) => report.push(name, Status::Ok, format!("yes ({purpose})"), None),
            Ok(false) => {
                let mut line = perm.policy_line(&account);
                if let Some(p) = scope {
                    line = line.replace("*/*", &format!("{p}/*"));
                }
                report.push(
                    name,
                    if required { Status::Fail } else { Status::Warn },
                    format!("no ({purpose} will be refused)"),
                    Some(format!("add to argocd-rbac-cm policy.csv: {line}")),
                )
            }
            Err(e) => report.push(name, Status::Fail, e.to_string(), None),
        }
    }
}

async fn count_rows(client: &Client, config: &ArgoCdConfig, scopes: &[Option<String>], report: &mut Report) {
    let mut total = 0usize;
    let mut skipped = 0usize;
    let mut denied = false;
    for scope in scopes.iter().filter(|s| s.is_some() || scopes.len() == 1) {
        let object: Vec<&str> = match scope {
            Some(p) => vec![p.as_str(), "*"],
            None => vec!["*", "*"],
        };
        if let Ok(false) = client.can_i(scope.as_deref(), "applications", "get", &object).await {
            denied = true;
        }
        let q = AppQuery::configured(config, scope.clone());
        match client.list_applications(&q).await {
            Ok(l) => {
                total += l
                    .items
                    .iter()
                    .filter(|d| config.app_namespaces.is_empty() || config.app_namespaces.contains(&d.app.namespace))
                    .count();
                skipped += l.skipped.len();
            }
            Err(e) => {
                report.push("applications", Status::Fail, e.to_string(), None);
                return;
            }
        }
    }
    let mut detail = format!("{total} visible");
    if skipped > 0 {
        detail.push_str(&format!(" ({skipped} could not be decoded and are skipped)"));
    }
    if denied && total == 0 {
        report.push(
            "applications",
            Status::Fail,
            "can see 0 of them: Argo CD returns an empty list because can-i applications get says no",
            Some("grant applications get (see the permission rows above)".into()),
        );
    } else {
        report.push(
            "applications",
            if skipped > 0 { Status::Warn } else { Status::Ok },
            detail,
            None,
        );
    }
    let clusters_denied = matches!(client.can_i(None, "clusters", "get", &["*"]).await, Ok(false));
    match client.list_clusters().await {
        Ok(l) if clusters_denied && l.items.is_empty() => report.push(
            "clusters",
            Status::Fail,
            "can see 0 of them: can-i clusters get says no",
            Some("grant clusters get (see the permission rows above)".into()),
        ),
        Ok(l) => report.push("clusters", Status::Ok, format!("{} visible", l.items.len()), None),
        Err(ArgoCdError::Token(e)) => report.push("clusters", Status::Warn, e.to_string(), None),
        Err(e) => report.push("clusters", Status::Fail, e.to_string(), None),
    }
    optional_rows(client, report).await;
}

/// ApplicationSets and projects: reported, never failing the check (they are optional).
async fn optional_rows(client: &Client, report: &mut Report) {
    let appsets_denied = matches!(
        client.can_i(None, "applicationsets", "get", &["*", "*"]).await,
        Ok(false)
    );
    match client.list_applicationsets().await {
        Ok(l) if appsets_denied && l.items.is_empty() => report.push(
            "applicationsets",
            Status::Warn,
            "can see 0 of them: can-i applicationsets get says no, so the hub sees no ApplicationSets",
            Some("grant applicationsets get (see the permission rows above)".into()),
        ),
        Ok(l) => report.push(
            "applicationsets",
            Status::Ok,
            format!("{} visible", l.items.len()),
            None,
        ),
        Err(ArgoCdError::NotFound { .. }) => report.push(
            "applicationsets",
            Status::Warn,
            "this Argo CD has no ApplicationSet API; ApplicationSets are not relayed",
            None,
        ),
        Err(e) => report.push("applicationsets", Status::Warn, e.to_string(), None),
    }
    match client.list_projects().await {
        Ok(l) => report.push("projects", Status::Ok, format!("{} visible", l.items.len()), None),
        Err(e) => report.push("projects", Status::Warn, e.to_string(), None),
    }
}
