//! Command-line definitions and dispatch. Every flag can also be set through an
//! `ARGOCD_GATEWAY_<FLAG>` environment variable, which is how the Helm chart passes settings.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::telemetry::LogArgs;

/// Exit code for configuration errors (EX_USAGE), reported before any port is bound.
pub const EXIT_CONFIG: u8 = 64;

/// The `argocd-gateway` command line.
#[derive(Debug, Parser)]
#[command(
    name = "argocd-gateway",
    version,
    about = "Relays Argo CD state to a central hub over an outbound-only gRPC tunnel"
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: register if needed, then keep a session with the hub.
    Run(Box<crate::daemon::DaemonArgs>),
    /// Register with the hub using a registration token and store the identity, then exit.
    Register(Box<RegisterArgs>),
    /// Move this gateway's Deployment and CronJob to the hub's desired version, upward within
    /// the same major version, and roll back if the rollout fails (run by the self-update
    /// CronJob); --dry-run prints the plan.
    SelfUpdate(Box<crate::kube::self_update::SelfUpdateArgs>),
    /// The central server and its API clients.
    #[command(subcommand)]
    Hub(Box<crate::hub::cli::HubCommand>),
    /// Print the version and the wire protocol version.
    Version,
    /// Preflight: configuration, DNS, TCP, TLS, Argo CD version, token and permissions.
    Check(Box<crate::check::CheckArgs>),
    /// Try the whole system on one machine: a hub, a simulated Argo CD whose applications keep
    /// changing, and a gateway connected to the hub.
    Demo(Box<crate::demo::DemoArgs>),
}

/// Flags of `argocd-gateway register`.
#[derive(Debug, Clone, clap::Args)]
pub struct RegisterArgs {
    #[command(flatten)]
    pub hub: crate::tunnel::config::HubArgs,
    #[command(flatten)]
    pub trust: crate::tls::TrustArgs,
    #[command(flatten)]
    pub identity: crate::tunnel::IdentityArgs,
    #[command(flatten)]
    pub registration: crate::identity::register::RegistrationArgs,
}

/// Cancels `token` on SIGTERM or SIGINT; a second signal exits at once.
pub fn install_signal_handlers(token: CancellationToken) {
    tokio::spawn(async move {
        let mut count = 0;
        loop {
            wait_for_signal().await;
            count += 1;
            if count == 1 {
                tracing::info!("shutdown requested; draining (send the signal again to abort)");
                token.cancel();
            } else {
                tracing::warn!("second signal: aborting");
                std::process::exit(130);
            }
        }
    });
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn config_error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("configuration error: {e}");
    ExitCode::from(EXIT_CONFIG)
}

/// Writes the reason a long-running command failed where Kubernetes shows it.
fn termination_message(msg: &str) {
    let path = std::path::Path::new("/dev/termination-log");
    if path.exists() {
        let _ = std::fs::write(path, msg);
    }
}

/// Runs the parsed command and maps its outcome to a process exit code.
pub async fn dispatch(cli: Cli) -> ExitCode {
    let shutdown = CancellationToken::new();
    match cli.command {
        Command::Version => {
            println!(
                "argocd-gateway {} (protocol {}, accepts {}..={})",
                crate::VERSION,
                crate::tunnel::wire::PROTOCOL_VERSION,
                crate::tunnel::wire::MIN_PROTOCOL_VERSION,
                crate::tunnel::wire::PROTOCOL_VERSION
            );
            ExitCode::SUCCESS
        }
        Command::Run(args) => {
            install_signal_handlers(shutdown.clone());
            match crate::daemon::run(*args, shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(crate::daemon::DaemonError::Config(e)) => config_error(format!("{e:#}")),
                Err(e) => {
                    tracing::error!(error = %e, "gateway stopped");
                    eprintln!("error: {e}");
                    termination_message(&e.to_string());
                    ExitCode::FAILURE
                }
            }
        }
        Command::Register(args) => {
            let (hub, roots, location) = match (args.hub.validate(), args.trust.load(), args.identity.location()) {
                (Ok(h), Ok(r), Ok(l)) => (h, r, l),
                (Err(e), _, _) => return config_error(e),
                (_, Err(e), _) => return config_error(e),
                (_, _, Err(e)) => return config_error(e),
            };
            let store = location.open();
            match store.load().await {
                Ok(Some(id)) => {
                    println!(
                        "already registered as {} ({}) in {}",
                        id.gateway_id,
                        id.name,
                        store.describe()
                    );
                    return ExitCode::SUCCESS;
                }
                Ok(None) => {}
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            }
            match crate::identity::register::register(&hub, &roots, store.as_ref(), &args.registration).await {
                Ok(id) => {
                    println!(
                        "registered as {} ({}); identity stored in {}",
                        id.gateway_id,
                        id.name,
                        store.describe()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    termination_message(&e.to_string());
                    ExitCode::FAILURE
                }
            }
        }
        Command::SelfUpdate(args) => {
            use crate::kube::self_update::{Applied, SelfUpdateError, run};
            match run(&args).await {
                Ok(Applied::Updated { version }) => {
                    println!("updated to {version}; the rollout is complete");
                    ExitCode::SUCCESS
                }
                Ok(Applied::Nothing) => ExitCode::SUCCESS,
                Err(SelfUpdateError::Config(e)) => config_error(e),
                Err(e) => {
                    tracing::error!(error = %e, "self-update failed");
                    eprintln!("error: {e}");
                    termination_message(&e.to_string());
                    ExitCode::FAILURE
                }
            }
        }
        Command::Hub(cmd) => {
            if matches!(*cmd, crate::hub::cli::HubCommand::Serve(_)) {
                install_signal_handlers(shutdown.clone());
            }
            match crate::hub::cli::run(*cmd, shutdown).await {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo(args) => {
            install_signal_handlers(shutdown.clone());
            match crate::demo::run(*args, shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check(args) => match crate::check::run(*args).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// The grace period a drained process gets before tasks are abandoned.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
