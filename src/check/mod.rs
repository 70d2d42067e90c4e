//! `argocd-gateway check`: the preflight a user runs when something is wrong. Each step is a
//! row of a [`Report`] (name, ok/warn/fail, detail, fix); the rows print as a table and any
//! failure makes the exit code non-zero. The Argo CD rows come from
//! [`crate::argocd::probes::argocd_rows`]; the hub rows (configuration, registration state,
//! reachability) from [`hub_rows`]. `--bundle` also writes a support bundle ([`bundle`]).

pub mod bundle;

use std::process::ExitCode;

use crate::argocd::ArgoCdArgs;
use crate::argocd::probes::argocd_rows;
pub use crate::report::{CheckRow, Report, Status};
use crate::uplink::{Dialer, UplinkArgs};

/// Flags of `check`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// Argo CD connection.
    #[command(flatten)]
    pub argocd: ArgoCdArgs,
    /// Hub connection (checked when --hub-url is given), trust and identity location.
    #[command(flatten)]
    pub uplink: UplinkArgs,
    /// Also write a support bundle to this file (`-`: to stdout, the table then goes to
    /// stderr): redacted configuration, the check table, metrics, certificate metadata and
    /// expiry, version; it contains no secret.
    #[arg(long)]
    pub bundle: Option<std::path::PathBuf>,
    /// The running gateway's admin server, whose metrics go into the bundle (in the pod: the
    /// same variable `run` reads).
    #[arg(long, env = "ARGOCD_GATEWAY_ADMIN_ADDR", default_value = "127.0.0.1:9090")]
    pub admin_addr: std::net::SocketAddr,
}

/// Runs the checks, prints the table, and returns exit code 1 on any failure.
pub async fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let mut report = Report::default();
    argocd_rows(&args.argocd, &args.uplink.trust, &mut report).await;
    hub_rows(&args, &mut report).await;
    match &args.bundle {
        // `--bundle -`: the bundle on stdout (for `kubectl exec … > bundle.json`: the image has
        // no tar for `kubectl cp`), the table on stderr.
        Some(path) if path.as_os_str() == "-" => {
            eprint!("{}", report.render());
            let bundle = bundle::build(&args, &report).await;
            println!("{}", serde_json::to_string_pretty(&bundle)?);
        }
        Some(path) => {
            print!("{}", report.render());
            match bundle::write(&args, &report, path).await {
                Ok(()) => println!("support bundle written to {} (it contains no secret)", path.display()),
                Err(e) => {
                    eprintln!(
                        "error: cannot write the support bundle {}: {e} (flag --bundle)",
                        path.display()
                    );
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        None => print!("{}", report.render()),
    }
    Ok(if report.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The hub rows: configuration, registration state (the identity store) and reachability with
/// the stored identity (DNS, TCP, proxy, TLS and HTTP/2, each diagnosed by the dialer).
pub async fn hub_rows(args: &CheckArgs, report: &mut Report) {
    uplink_rows(&args.uplink, report).await;
}

/// The hub rows for any command that has the uplink flags (`check`, the registration
/// preflight).
pub async fn uplink_rows(uplink: &UplinkArgs, report: &mut Report) {
    if uplink.hub_url.is_none() {
        report.push(
            "hub",
            Status::Warn,
            "not checked: no hub URL",
            Some("pass --hub-url (Helm gateway.hub.serverGrpcUrl) to check the hub too".into()),
        );
        return;
    }
    let cfg = match uplink.hub() {
        Ok(c) => c,
        Err(e) => {
            report.push("hub configuration", Status::Fail, e.to_string(), None);
            return;
        }
    };
    let roots = match uplink.trust.load() {
        Ok(r) => r,
        Err(e) => {
            report.push("hub configuration", Status::Fail, e.to_string(), None);
            return;
        }
    };
    let identity = match uplink.identity_location() {
        Err(e) => {
            report.push("registration", Status::Fail, e.to_string(), None);
            None
        }
        Ok(location) => {
            let store = crate::cli::open_identity_store(&location);
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
    let dialer = match Dialer::new(&cfg, &roots, identity.as_ref()) {
        Ok(d) => d,
        Err(e) => {
            report.push("hub connection", Status::Fail, e.to_string(), None);
            return;
        }
    };
    match dialer.connect().await {
        Ok(_) => {
            let websocket = dialer.transport_used() == crate::uplink::Transport::Websocket;
            let transport = match (websocket, dialer.fell_back()) {
                (false, _) => "HTTP/2".to_owned(),
                (true, true) => {
                    "inside a WebSocket: HTTP/2 does not get through, so --hub-transport auto fell back".to_owned()
                }
                (true, false) => "inside a WebSocket (--hub-transport websocket)".to_owned(),
            };
            report.push(
                "hub connection",
                // Working, but worth knowing: something between the gateway and the hub does not
                // pass HTTP/2.
                if websocket && dialer.fell_back() {
                    Status::Warn
                } else {
                    Status::Ok
                },
                format!(
                    "reachable at {} ({}, {transport}){}",
                    dialer.endpoint().url(),
                    if cfg.endpoint.plaintext {
                        "plaintext"
                    } else {
                        "TLS verified"
                    },
                    if identity.is_some() {
                        " with the gateway certificate"
                    } else {
                        ""
                    }
                ),
                (websocket && dialer.fell_back()).then(|| {
                    "set --hub-transport websocket (Helm gateway.hub.transport=websocket) to skip the HTTP/2 attempt, or let HTTP/2 through".to_owned()
                }),
            )
        }
        Err(e) => report.push("hub connection", Status::Fail, e.to_string(), None),
    }
}
