//! `argocd-gateway hub …`: `serve` runs the hub ([`super::server`]); every other subcommand is
//! a thin client of its HTTP API ([`super::client`]).

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use super::client::commands::{self, ClientCommand};
use super::server::ServeArgs;

/// The hub subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum HubCommand {
    /// Run the hub.
    Serve(ServeArgs),
    /// Create the CA, server certificate and admin token hub replicas share: into a
    /// directory, as a Kubernetes Secret manifest, or as a Kubernetes Secret.
    Init(super::init::InitArgs),
    /// The API client commands.
    #[command(flatten)]
    Client(ClientCommand),
}

/// Runs `hub serve` until `shutdown`, or until one of its critical tasks stops (an error naming
/// it), or an API client command.
pub async fn run(cmd: HubCommand, shutdown: CancellationToken) -> anyhow::Result<ExitCode> {
    match cmd {
        HubCommand::Serve(args) => {
            let hub = super::start(args).await?;
            eprintln!(
                "hub gRPC listening on {} (CA fingerprint {})",
                hub.grpc_addr, hub.ca_fingerprint
            );
            eprintln!("hub API listening on {}", hub.http_url);
            eprintln!(
                "status page: {}/ (log in with the admin token or an API token)",
                hub.http_url
            );
            eprintln!("admin token: {}", hub.admin_token_path.display());
            let failure = tokio::select! {
                _ = shutdown.cancelled() => None,
                f = hub.failed() => Some(f),
            };
            tracing::info!("shutting down: draining gateway sessions");
            hub.shutdown().await;
            match failure {
                None => Ok(ExitCode::SUCCESS),
                Some(f) => Err(anyhow::Error::new(f)),
            }
        }
        HubCommand::Init(args) => {
            let secret = args.create_secret.clone().or(args.print_secret.clone());
            match super::init::run(args).await? {
                super::init::Outcome::Written(dir) => {
                    eprintln!(
                        "hub files in {}: {} (give every replica this directory: --data-dir)",
                        dir.display(),
                        super::init::FILES.join(", ")
                    )
                }
                super::init::Outcome::Printed => {}
                super::init::Outcome::Created => {
                    eprintln!("created Secret {}", secret.unwrap_or_default())
                }
                super::init::Outcome::Kept => {
                    eprintln!("Secret {} exists; kept as it is", secret.unwrap_or_default())
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        // A client command (a long `wait`, `events`) ends at the first Ctrl-C.
        HubCommand::Client(cmd) => tokio::select! {
            r = commands::run(cmd) => r,
            _ = shutdown.cancelled() => Ok(ExitCode::from(crate::cli::EXIT_ABORTED)),
        },
    }
}
