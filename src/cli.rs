//! Command-line definitions and dispatch. Every flag can also be set through an
//! `ARGOCD_GATEWAY_<FLAG>` environment variable, which is how the Helm chart passes settings.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Print the version and the wire protocol version.
    Version,
    /// Preflight: configuration, DNS, TCP, TLS, Argo CD version, token and permissions.
    Check(Box<crate::check::CheckArgs>),
}

/// Runs the parsed command and maps its outcome to a process exit code.
pub async fn dispatch(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Version => {
            println!("argocd-gateway {}", crate::VERSION);
            ExitCode::SUCCESS
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
