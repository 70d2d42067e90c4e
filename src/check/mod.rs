//! `argocd-gateway check`: the preflight a user runs when something is wrong. Each step is a
//! [`CheckRow`] (name, ok/warn/fail, detail, fix); the rows print as a table and any failure
//! makes the exit code non-zero. The Argo CD rows come from [`argocd_rows`]; other parts of the
//! product append their own rows to the same [`Report`].

use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::argocd::token::{EXPIRY_WARNING, UNSCOPED};
use crate::argocd::transport::{AcceptAnyCertificate, classify_tls};
use crate::argocd::{AppQuery, ArgoCdArgs, ArgoCdConfig, ArgoCdError, AuthSource, Client, Permission, TlsMode};
use crate::tls::TrustArgs;

/// Flags of `check`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// Argo CD connection.
    #[command(flatten)]
    pub argocd: ArgoCdArgs,
    /// Extra trusted CAs.
    #[command(flatten)]
    pub trust: TrustArgs,
    /// Hub connection (checked when --hub-url is given).
    #[command(flatten)]
    pub hub: crate::tunnel::config::HubArgs,
    /// Where the gateway keeps its identity.
    #[command(flatten)]
    pub identity: crate::tunnel::IdentityArgs,
}

/// Outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but worth attention.
    Warn,
    /// Broken; the exit code will be non-zero.
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

/// One row of the check table.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CheckRow {
    /// What was checked.
    pub name: String,
    /// Outcome.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to change, when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The rows of a check run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Rows in order.
    pub rows: Vec<CheckRow>,
}

impl Report {
    /// Adds a row.
    pub fn push(&mut self, name: impl Into<String>, status: Status, detail: impl Into<String>, fix: Option<String>) {
        self.rows.push(CheckRow {
            name: name.into(),
            status,
            detail: detail.into(),
            fix,
        });
    }

    /// Whether any row failed.
    pub fn failed(&self) -> bool {
        self.rows.iter().any(|r| r.status == Status::Fail)
    }

    /// The table as text.
    pub fn render(&self) -> String {
        let w = self.rows.iter().map(|r| r.name.len()).max().unwrap_or(5).max(5);
        let mut out = String::new();
        let _ = writeln!(out, "{:<w$}  {:<7}DETAIL", "CHECK", "STATUS");
        for r in &self.rows {
            let _ = writeln!(out, "{:<w$}  {:<7}{}", r.name, r.status.label(), r.detail);
            if let Some(fix) = &r.fix {
                let _ = writeln!(out, "{:<w$}  {:<7}fix: {}", "", "", fix);
            }
        }
        let summary = if self.failed() { "check FAILED" } else { "check passed" };
        let _ = writeln!(out, "{summary}");
        out
    }
}

/// Runs the checks, prints the table, and returns exit code 1 on any failure.
pub async fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let mut report = Report::default();
    argocd_rows(&args.argocd, &args.trust, &mut report).await;
    hub_rows(&args, &mut report).await;
    print!("{}", report.render());
    Ok(if report.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The hub rows: configuration, registration state (the identity store) and reachability with
/// the stored identity (DNS, TCP, proxy, TLS and HTTP/2, each diagnosed by the dialer).
pub async fn hub_rows(args: &CheckArgs, report: &mut Report) {
    if args.hub.hub_url.is_none() {
        report.push(
            "hub",
            Status::Warn,
            "not checked: no hub URL",
            Some("pass --hub-url (Helm gateway.hub.address) to check the hub too".into()),
        );
        return;
    }
    let cfg = match args.hub.validate() {
        Ok(c) => c,
        Err(e) => {
            report.push("hub configuration", Status::Fail, e.to_string(), None);
            return;
        }
    };
    let roots = match args.trust.load() {
        Ok(r) => r,
        Err(e) => {
            report.push("hub configuration", Status::Fail, e.to_string(), None);
            return;
        }
    };
    let identity = match args.identity.location() {
        Err(e) => {
            report.push("registration", Status::Fail, e.to_string(), None);
            None
        }
        Ok(location) => {
            let store = location.open();
            match store.load().await {
                Ok(Some(id)) => {
                    let expiry = id
                        .cert_info()
                        .map(|i| format!("certificate expires {}", i.not_after))
                        .unwrap_or_else(|e| format!("certificate unreadable: {e}"));
                    report.push(
                        "registration",
                        Status::Ok,
                        format!(
                            "registered as {} ({}) in {}; {expiry}",
                            id.gateway_id,
                            id.name,
                            store.describe()
                        ),
                        None,
                    );
                    Some(id)
                }
                Ok(None) => {
                    report.push(
                        "registration",
                        Status::Warn,
                        format!("not registered yet: no identity in {}", store.describe()),
                        Some(
                            "the first run registers with a one-hour token: --registration-token-file (Helm registration.token)"
                                .into(),
                        ),
                    );
                    None
                }
                Err(e) => {
                    report.push("registration", Status::Fail, e.to_string(), None);
                    None
                }
            }
        }
    };
    let dialer = match crate::tunnel::dial::Dialer::new(&cfg, &roots, identity.as_ref()) {
        Ok(d) => d,
        Err(e) => {
            report.push("hub connection", Status::Fail, e.to_string(), None);
            return;
        }
    };
    match dialer.connect().await {
        Ok(_) => report.push(
            "hub connection",
            Status::Ok,
            format!(
                "reachable at {} ({}){}",
                dialer.endpoint().url(),
                if cfg.endpoint.plaintext {
                    "plaintext"
                } else {
                    "TLS verified, HTTP/2"
                },
                if identity.is_some() {
                    " with the gateway certificate"
                } else {
                    ""
                }
            ),
            None,
        ),
        Err(e) => report.push("hub connection", Status::Fail, e.to_string(), None),
    }
}

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

/// A verifier that records the presented chain before delegating.
#[derive(Debug)]
struct Capture {
    inner: Arc<dyn ServerCertVerifier>,
    chain: Mutex<Vec<CertificateDer<'static>>>,
}

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
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

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
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
        TlsMode::Verify { extra_roots } => {
            let system = crate::tls::system_roots();
            let roots = crate::tls::root_store(system.iter().chain(extra_roots.iter()));
            match rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()
            {
                Ok(v) => v,
                Err(e) => {
                    return (
                        Status::Fail,
                        format!("no usable trust anchors: {e}"),
                        Some("add the Argo CD CA with --trust-ca (Helm gateway.serverCertificates)".into()),
                    );
                }
            }
        }
        _ => Arc::new(AcceptAnyCertificate(provider.clone())),
    };
    let capture = Arc::new(Capture {
        inner,
        chain: Mutex::new(Vec::new()),
    });
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
    let chain = capture.chain.lock().map(|c| c.clone()).unwrap_or_default();
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
                (
                    Status::Ok,
                    format!("{version}, verified; chain {}", describe_chain(&chain)),
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
        Err(e @ ArgoCdError::Token(crate::argocd::token::TokenError::NoProjectToken { .. })) if scope.is_none() => {
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
        let q = AppQuery {
            scope: scope.clone(),
            projects: config.projects.clone(),
            selector: config.selector.clone(),
            app_namespace: match config.app_namespaces.as_slice() {
                [one] => Some(one.clone()),
                _ => None,
            },
            name: None,
        };
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
}
