//! Command-line definitions, dispatch, and the composition root of the gateway commands. Every
//! flag can also be set through an `ARGOCD_GATEWAY_<FLAG>` environment variable, which is how the
//! Helm chart passes settings.
//!
//! Signals are handled in the main task: the first SIGTERM or SIGINT cancels the command's
//! shutdown token (readiness turns false and the process drains); a second one returns exit code
//! 130 at once.

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::identity::store::{FileStore, IdentityLocation, IdentityStore};
use crate::telemetry::LogArgs;

/// Exit code for configuration errors (EX_USAGE), reported before any port is bound.
pub const EXIT_CONFIG: u8 = 64;

/// Exit code after a second signal aborted the drain.
pub const EXIT_ABORTED: u8 = 130;

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
    /// First runs the preflight of `check` against Argo CD and the hub: when it fails, the
    /// token is not used (the Helm chart's pre-install hook).
    Register(Box<RegisterArgs>),
    /// Remove this gateway at the hub and forget its identity (the Helm chart's pre-delete hook
    /// on `helm uninstall`); exits 0 when there is no identity.
    Deregister(Box<DeregisterArgs>),
    /// Move this gateway's Deployment and CronJob to the hub's desired version, upward within
    /// the same major version, and roll back if the rollout fails (run by the self-update
    /// CronJob); --dry-run prints the plan.
    SelfUpdate(Box<crate::kube::self_update::SelfUpdateArgs>),
    /// The central server and its API clients.
    #[command(subcommand, after_help = crate::hub::client::exit::EXIT_CODES_HELP)]
    Hub(Box<crate::hub::cli::HubCommand>),
    /// Print the version and the wire protocol version.
    Version,
    /// Preflight: configuration, DNS, TCP, TLS, Argo CD version, token and permissions.
    Check(Box<crate::check::CheckArgs>),
    /// Try the whole system on one machine: a hub, a simulated Argo CD whose applications keep
    /// changing, and a gateway connected to the hub.
    Demo(Box<crate::demo::DemoArgs>),
    /// Run the simulated Argo CD on its own (an address, a number of applications, an account
    /// token in a file), for a gateway to point at when no Argo CD is at hand.
    Simulator(Box<crate::simulator::command::SimulatorArgs>),
}

/// Flags of `argocd-gateway register`.
#[derive(Debug, Clone, clap::Args)]
pub struct RegisterArgs {
    /// Hub address, trust and identity location.
    #[command(flatten)]
    pub uplink: crate::uplink::UplinkArgs,
    /// The token and what to register as.
    #[command(flatten)]
    pub registration: crate::uplink::register::RegistrationArgs,
    /// The Argo CD connection the preflight checks, as `run` will use it.
    #[command(flatten)]
    pub argocd: crate::argocd::ArgoCdArgs,
    /// Register without first checking Argo CD and the hub.
    #[arg(long, env = "ARGOCD_GATEWAY_SKIP_PREFLIGHT")]
    pub skip_preflight: bool,
}

/// Flags of `argocd-gateway deregister`.
#[derive(Debug, Clone, clap::Args)]
pub struct DeregisterArgs {
    /// Hub address, trust and identity location.
    #[command(flatten)]
    pub uplink: crate::uplink::UplinkArgs,
    /// Why, for the hub's record of the removal.
    #[arg(long, env = "ARGOCD_GATEWAY_DEREGISTER_REASON", default_value = "helm uninstall")]
    pub reason: String,
}

/// Opens the identity store a location names: the choice between a Kubernetes Secret and a
/// file is made here, so neither `identity` nor `kube` needs to know the other's side.
pub fn open_identity_store(location: &IdentityLocation) -> Arc<dyn IdentityStore> {
    match location {
        IdentityLocation::File(p) => Arc::new(FileStore::new(p.clone())),
        IdentityLocation::Secret { namespace, name } => Arc::new(crate::kube::secret_store::SecretStore::lazy(
            namespace.clone(),
            name.clone(),
        )),
    }
}

impl Cli {
    /// Parses the process's arguments. A wrong command line exits with [`EXIT_CONFIG`] (64),
    /// not clap's 2, which `hub wait` and `hub token status --wait` use for "Timeout"; `--help`
    /// and `--version` exit 0.
    pub fn parse_args() -> Cli {
        Cli::try_parse().unwrap_or_else(|e| {
            let code = if e.use_stderr() { i32::from(EXIT_CONFIG) } else { 0 };
            let _ = e.print();
            std::process::exit(code)
        })
    }
}

/// Runs `work` until it ends; the first signal cancels `shutdown` (the command drains and ends
/// by itself), a second one aborts with [`EXIT_ABORTED`].
pub async fn run_with_signals(shutdown: CancellationToken, work: impl Future<Output = ExitCode>) -> ExitCode {
    let mut work = std::pin::pin!(work);
    let mut signals = Signals::new();
    let mut count = 0;
    loop {
        tokio::select! {
            code = &mut work => return code,
            _ = signals.next() => {
                count += 1;
                if count == 1 {
                    tracing::info!("shutdown requested; draining (send the signal again to abort)");
                    shutdown.cancel();
                } else {
                    tracing::warn!("second signal: aborting");
                    return ExitCode::from(EXIT_ABORTED);
                }
            }
        }
    }
}

/// SIGTERM and SIGINT (Ctrl-C), as one stream of notifications.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        if let (Some(term), Some(int)) = (self.term.as_mut(), self.int.as_mut()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
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

/// Every message of an error's chain, for the one line a failed command prints.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    crate::util::error_chain(e)
}

/// Runs the parsed command and maps its outcome to a process exit code.
pub async fn dispatch(cli: Cli) -> ExitCode {
    let shutdown = CancellationToken::new();
    match cli.command {
        Command::Version => {
            println!(
                "argocd-gateway {} (protocol {}, accepts {}..={})",
                crate::VERSION,
                crate::wire::PROTOCOL_VERSION,
                crate::wire::MIN_PROTOCOL_VERSION,
                crate::wire::PROTOCOL_VERSION
            );
            ExitCode::SUCCESS
        }
        Command::Run(args) => {
            let work = async {
                match crate::daemon::run(*args, shutdown.clone()).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(crate::daemon::DaemonError::Config(e)) => config_error(e),
                    Err(e) => {
                        tracing::error!(error = %e, "gateway stopped");
                        eprintln!("error: {}", chain(&e));
                        termination_message(&e.to_string());
                        ExitCode::FAILURE
                    }
                }
            };
            run_with_signals(shutdown.clone(), work).await
        }
        Command::Register(args) => register(*args).await,
        Command::Deregister(args) => deregister(*args).await,
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
            let serve = matches!(*cmd, crate::hub::cli::HubCommand::Serve(_));
            let work = async {
                match crate::hub::cli::run(*cmd, shutdown.clone()).await {
                    Ok(code) => code,
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        if serve {
                            termination_message(&format!("{e:#}"));
                            ExitCode::FAILURE
                        } else {
                            // The client commands' documented codes (see `hub --help`).
                            crate::hub::client::exit::code_for(&e)
                        }
                    }
                }
            };
            if serve {
                run_with_signals(shutdown.clone(), work).await
            } else {
                work.await
            }
        }
        Command::Demo(args) => {
            let work = async {
                match crate::demo::run(*args, shutdown.clone()).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        ExitCode::FAILURE
                    }
                }
            };
            run_with_signals(shutdown.clone(), work).await
        }
        Command::Simulator(args) => {
            let work = async {
                match crate::simulator::command::run(*args, shutdown.clone()).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        ExitCode::FAILURE
                    }
                }
            };
            run_with_signals(shutdown.clone(), work).await
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

/// `argocd-gateway register`: registers unless an identity exists, then exits.
async fn register(args: RegisterArgs) -> ExitCode {
    let uplink = match args.uplink.validate() {
        Ok(u) => u,
        Err(e) => return config_error(e),
    };
    let store = open_identity_store(&uplink.identity);
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
    if !args.skip_preflight && !preflight(&args, &uplink).await {
        return ExitCode::FAILURE;
    }
    match crate::uplink::register::register(&uplink.hub, &uplink.extra_roots, store.as_ref(), &args.registration).await
    {
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

/// The registration preflight: the probes of `check` against Argo CD and the hub. Prints the
/// table; on failure tells the hub (so `hub token status` says why the token is unused) and
/// returns false.
async fn preflight(args: &RegisterArgs, uplink: &crate::uplink::UplinkConfig) -> bool {
    let mut report = crate::report::Report::default();
    crate::argocd::probes::argocd_rows(&args.argocd, &args.uplink.trust, &mut report).await;
    crate::check::uplink_rows(&args.uplink, &mut report).await;
    match args.registration.token() {
        Ok(Some(_)) => {}
        Ok(None) => report.push(
            "registration token",
            crate::report::Status::Fail,
            "no registration token",
            Some(
                "create one with `argocd-gateway hub token create` and pass it with --registration-token-file (Helm registration.token)"
                    .into(),
            ),
        ),
        Err(e) => report.push("registration token", crate::report::Status::Fail, e.to_string(), None),
    }
    println!("registration preflight\n{}", report.render());
    if !report.failed() {
        return true;
    }
    let mut message = "the preflight failed, so the registration token was NOT used: fix what the rows marked FAIL say and install again (the token stays valid until it expires; `argocd-gateway hub token status` shows this too)".to_owned();
    if let Ok(Some(token)) = args.registration.token()
        && let Err(hub_said) =
            crate::uplink::deregister::report_preflight(&uplink.hub, &uplink.extra_roots, &token, &report).await
    {
        message.push_str(&format!("; the hub could not record it: {hub_said}"));
    }
    eprintln!("error: {message}");
    termination_message(&message);
    false
}

/// `argocd-gateway deregister`: removes the gateway at the hub and forgets its identity.
async fn deregister(args: DeregisterArgs) -> ExitCode {
    use crate::uplink::deregister::{Deregistered, deregister};
    let uplink = match args.uplink.validate() {
        Ok(u) => u,
        Err(e) => return config_error(e),
    };
    let store = open_identity_store(&uplink.identity);
    let identity = match store.load().await {
        Ok(Some(id)) => id,
        Ok(None) => {
            println!("no gateway identity in {}: nothing to deregister", store.describe());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match deregister(&uplink.hub, &uplink.extra_roots, &identity, &args.reason).await {
        Ok(o) => o,
        Err(e) => {
            let message = format!(
                "{e}. Gateway {} stays registered at the hub. To uninstall without deregistering, run `helm uninstall --no-hooks` (then remove it at the hub with `argocd-gateway hub gateway delete {}`) or set registration.keepOnUninstall=true",
                identity.gateway_id, identity.gateway_id
            );
            eprintln!("error: {message}");
            termination_message(&message);
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = store.remove(&identity.gateway_id).await {
        eprintln!(
            "error: gateway {} was removed at the hub, but its identity could not be removed from {}: {e}",
            identity.gateway_id,
            store.describe()
        );
        return ExitCode::FAILURE;
    }
    let how = match outcome {
        Deregistered::Removed => "deregistered",
        Deregistered::AlreadyGone => "the hub had already removed",
    };
    println!(
        "{how} gateway {} ({}); its identity was removed from {}",
        identity.gateway_id,
        identity.name,
        store.describe()
    );
    ExitCode::SUCCESS
}

/// The grace period a drained process gets before tasks are abandoned.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
