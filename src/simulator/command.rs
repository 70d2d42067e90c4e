//! `argocd-gateway simulator`: the Argo CD simulator on its own, on a chosen address with a
//! chosen number of applications, so a quickstart gateway (or anything that speaks Argo CD's
//! REST API) can point at it when no Argo CD is at hand. It writes an account token to a file,
//! prints its URL and the gateway flags that use it, and runs until Ctrl-C.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::{SimOptions, SimTls, Simulator, TokenSpec};

/// Flags of `argocd-gateway simulator`.
#[derive(Debug, clap::Args)]
pub struct SimulatorArgs {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub addr: SocketAddr,
    /// How many applications (app-00000, …; every seventh is multi-source).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=20_000))]
    pub apps: u32,
    /// Directory for the account token file (`argocd-token`) and, with --tls, the CA (`ca.pem`).
    #[arg(long, default_value = "./argocd-sim")]
    pub data_dir: PathBuf,
    /// Serve HTTPS with a fresh self-signed CA (written to ca.pem) instead of plain HTTP.
    #[arg(long)]
    pub tls: bool,
    /// Mean time between simulated changes; 0 (the default) keeps the applications still.
    #[arg(long, default_value = "0s", value_parser = crate::util::parse_duration)]
    pub change_every: Duration,
    /// How long each step of a sync takes (the operation, then the rollout).
    #[arg(long, default_value = "1s", value_parser = crate::util::parse_duration)]
    pub sync_step: Duration,
}

/// What a started simulator tells its user, also used by the demo.
pub struct Started {
    /// The simulator (stopped by [`super::SimHandle::shutdown`]).
    pub sim: super::SimHandle,
    /// The account token's file.
    pub token_file: PathBuf,
    /// The CA file, with TLS.
    pub ca_file: Option<PathBuf>,
}

/// Starts a simulator with `apps` applications and an account token written to `dir`.
pub async fn start(
    addr: Option<SocketAddr>,
    apps: usize,
    dir: &Path,
    tls: bool,
    sync_step: Duration,
) -> anyhow::Result<Started> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {} (flag --data-dir)", dir.display()))?;
    let sim = Simulator::start(SimOptions {
        tls: if tls { SimTls::SelfSigned } else { SimTls::Plaintext },
        addr,
        sync_step: Some(sync_step),
        ..SimOptions::default()
    })
    .await
    .with_context(|| match addr {
        Some(a) => format!("the Argo CD simulator cannot listen on {a} (flag --addr chooses another)"),
        None => "the Argo CD simulator could not start".into(),
    })?;
    sim.add_synthetic_apps(apps);
    let token_file = dir.join("argocd-token");
    crate::util::write_private_file_atomic(&token_file, sim.add_token(TokenSpec::account("gateway")).as_bytes())
        .with_context(|| format!("cannot write {}", token_file.display()))?;
    let ca_file = match sim.ca_pem() {
        Some(pem) => {
            let path = dir.join("ca.pem");
            std::fs::write(&path, pem).with_context(|| format!("cannot write {}", path.display()))?;
            Some(path)
        }
        None => None,
    };
    Ok(Started {
        sim,
        token_file,
        ca_file,
    })
}

/// Runs the command until `shutdown`.
pub async fn run(args: SimulatorArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Started {
        sim,
        token_file,
        ca_file,
    } = start(
        Some(args.addr),
        args.apps as usize,
        &args.data_dir,
        args.tls,
        args.sync_step,
    )
    .await?;
    let token_file = crate::util::absolute(&token_file);
    let trust = match &ca_file {
        Some(ca) => format!(
            "export ARGOCD_GATEWAY_TRUST_CA={}\n",
            crate::util::absolute(ca).display()
        ),
        None => "export ARGOCD_GATEWAY_ARGOCD_PLAINTEXT=true\n".into(),
    };
    println!(
        "Argo CD simulator listening on {url} with {apps} applications (account \"gateway\": may \
         get and sync applications, get clusters and logs).\n\n\
         argocd server:  {url}\n\
         token file:     {token}\n\n\
         Point a gateway at it (in the shell that runs `argocd-gateway run` or `check`):\n\n\
         export ARGOCD_GATEWAY_ARGOCD_SERVER={url}\n\
         export ARGOCD_GATEWAY_ARGOCD_TOKEN_FILE={token}\n\
         {trust}\n\
         Syncs run like Argo CD's controller runs them ({step} per step). Ctrl-C stops it.",
        url = sim.url(),
        apps = args.apps,
        token = token_file.display(),
        step = humantime::format_duration(args.sync_step),
    );
    let tree = crate::shutdown::Tree::with_token(shutdown.clone());
    tree.spawn(super::churn::churn(
        sim.clone(),
        args.apps as usize,
        args.change_every,
        tree.token().clone(),
    ));
    shutdown.cancelled().await;
    tree.shutdown(Duration::from_secs(1)).await;
    sim.shutdown();
    Ok(())
}
