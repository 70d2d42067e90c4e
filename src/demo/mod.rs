//! `argocd-gateway demo`: the whole system in one process for a first look — a hub with its
//! own data directory, the Argo CD simulator with applications that keep changing, and a
//! gateway registered to that hub, connected over real TLS gRPC exactly as in a cluster.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::hub::{self, ServeArgs};
use crate::shutdown::Tree;
use crate::simulator::{SimHandle, SimOptions, SimTls, Simulator, TokenSpec};

/// Flags of `argocd-gateway demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where the demo keeps its hub data, the gateway identity and the simulator token.
    #[arg(long, default_value = "./demo-data")]
    pub data_dir: PathBuf,
    /// How many simulated Argo CD applications.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    pub apps: u32,
    /// The hub's HTTP API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// The hub's gRPC listener the gateway dials.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub grpc_addr: SocketAddr,
    /// The gateway's admin server (/healthz, /readyz, /metrics).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin_addr: SocketAddr,
    /// Mean time between simulated changes (0 = no changes).
    #[arg(long, default_value = "2s", value_parser = crate::util::parse_duration)]
    pub change_every: Duration,
}

/// The gateway's flags, parsed like the command line so the demo runs `run` exactly as a user
/// would.
#[derive(Parser)]
struct GatewayCli {
    #[command(flatten)]
    args: crate::daemon::DaemonArgs,
}

/// Runs the demo until `shutdown`.
pub async fn run(args: DemoArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    crate::tls::install_crypto_provider();
    std::fs::create_dir_all(&args.data_dir).with_context(|| {
        format!(
            "cannot create the demo data directory {} (flag --data-dir)",
            args.data_dir.display()
        )
    })?;
    let hub_dir = args.data_dir.join("hub");
    let hub = hub::start(ServeArgs {
        hostnames: vec!["localhost".into(), "127.0.0.1".into()],
        grpc_addr: args.grpc_addr,
        http_addr: args.http_addr,
        ..ServeArgs::new(hub_dir.clone())
    })
    .await
    .context("the demo hub could not start (flags --grpc-addr / --http-addr choose other ports)")?;
    let api = format!("http://{}", hub.http_addr);
    let admin_token_path = hub.admin_token_path.clone();

    let sim = Simulator::start(SimOptions {
        tls: SimTls::Plaintext,
        ..SimOptions::default()
    })
    .await
    .context("the Argo CD simulator could not start")?;
    sim.add_synthetic_apps(args.apps as usize);
    let token_file = args.data_dir.join("argocd-token");
    write_private(&token_file, &sim.add_token(TokenSpec::account("gateway")))?;

    let identity = args.data_dir.join("gateway-identity.json");
    let mut gateway_flags: Vec<String> = vec![
        "run".into(),
        "--hub-url".into(),
        format!("https://localhost:{}", hub.grpc_addr.port()),
        "--identity".into(),
        format!("file:{}", identity.display()),
        "--argocd-server".into(),
        sim.url(),
        "--argocd-plaintext".into(),
        "--argocd-token-file".into(),
        token_file.display().to_string(),
        "--admin-addr".into(),
        args.admin_addr.to_string(),
        "--name".into(),
        "demo".into(),
        "--environment".into(),
        "demo".into(),
    ];
    if !identity.exists() {
        let token = registration_token(&api, &admin_token_path).await?;
        gateway_flags.extend([
            "--registration-token".into(),
            token.0,
            "--hub-ca-fingerprint".into(),
            token.1,
        ]);
    }
    let cli = GatewayCli::try_parse_from(&gateway_flags).context("demo gateway flags")?;
    // The demo's own tree: the gateway (a child token, so its failure is the demo's failure and
    // not a drain) and the churn. The hub has a tree of its own.
    let tree = Tree::with_token(shutdown.child_token());
    let gateway_stop = tree.token().child_token();
    tree.spawn_critical("demo gateway", crate::daemon::run(cli.args, gateway_stop));

    let gateway_id = tokio::select! {
        r = wait_for_gateway(&api, &admin_token_path, args.apps) => r,
        f = tree.failed() => Err(anyhow::Error::new(f)),
    };
    let gateway_id = match gateway_id {
        Ok(id) => id,
        Err(e) => {
            tree.shutdown(crate::cli::SHUTDOWN_GRACE).await;
            hub.shutdown().await;
            sim.shutdown();
            return Err(e);
        }
    };
    print_banner(&args, &api, &admin_token_path, &gateway_id);

    if !args.change_every.is_zero() {
        tree.spawn(churn(
            sim.clone(),
            args.apps as usize,
            args.change_every,
            tree.token().clone(),
        ));
    }

    let failure = tokio::select! {
        _ = tree.token().cancelled() => tree.failure(),
        f = hub.failed() => Some(f),
    };
    // The gateway says goodbye while its hub still listens; then the hub drains.
    tree.shutdown(crate::cli::SHUTDOWN_GRACE).await;
    hub.shutdown().await;
    sim.shutdown();
    match failure.or_else(|| tree.failure()) {
        Some(f) => Err(anyhow::Error::new(f)),
        None => Ok(()),
    }
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut f = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn admin_token(path: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the hub admin token {}", path.display()))?
        .trim()
        .to_owned())
}

/// Creates a registration token through the hub's API, as an operator would; returns the
/// token and the CA fingerprint.
async fn registration_token(api: &str, admin_token_path: &Path) -> anyhow::Result<(String, String)> {
    let resp = reqwest::Client::new()
        .post(format!("{api}/api/v1/registration-tokens"))
        .bearer_auth(admin_token(admin_token_path)?)
        .json(&serde_json::json!({"name": "demo", "environments": ["demo"]}))
        .send()
        .await
        .context("the demo hub's API did not answer")?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.context("the hub's token answer")?;
    if !status.is_success() {
        anyhow::bail!("the hub refused to create a registration token ({status}): {body}");
    }
    let field = |k: &str| {
        body[k]
            .as_str()
            .map(str::to_owned)
            .context("the hub's token answer lacks a field")
    };
    Ok((field("token")?, field("caFingerprint")?))
}

/// Waits until the gateway is connected and the hub holds all `apps` applications, so the
/// commands the banner prints show them at once.
async fn wait_for_gateway(api: &str, admin_token_path: &Path, apps: u32) -> anyhow::Result<String> {
    let client = reqwest::Client::new();
    let token = admin_token(admin_token_path)?;
    for _ in 0..300 {
        let listed: Option<serde_json::Value> = match client
            .get(format!("{api}/api/v1/gateways"))
            .bearer_auth(&token)
            .send()
            .await
        {
            Ok(r) => r.json().await.ok(),
            Err(_) => None,
        };
        let connected = listed.as_ref().and_then(|l| {
            l["items"]
                .as_array()?
                .iter()
                .find(|g| {
                    g["connected"] == serde_json::Value::Bool(true)
                        && g["applicationCount"].as_u64().is_some_and(|n| n >= u64::from(apps))
                })
                .and_then(|g| g["id"].as_str().map(str::to_owned))
        });
        if let Some(id) = connected {
            return Ok(id);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!(
        "the demo gateway did not connect to the demo hub and relay its applications within 30 s; see the log above"
    )
}

fn print_banner(args: &DemoArgs, api: &str, admin_token_path: &Path, gateway_id: &str) {
    let token = admin_token_path.display();
    let common = format!("--hub-api {api} --admin-token-file {token}");
    println!(
        "\nargocd-gateway demo is running: a hub, a simulated Argo CD with {apps} applications that \
         change every ~{every:?}, and gateway {gateway_id} connected to the hub.\n\n\
         status page:       {api}/  (log in with the token in {token})\n\
         hub API:           {api}\n\
         admin token file:  {token}\n\
         gateway metrics:   http://{admin}/metrics\n\n\
         Try, in another terminal (with B=target/debug/argocd-gateway):\n\n  \
         $B hub apps {common}\n  \
         $B hub app {common} {gateway_id} argocd/app-00001\n  \
         $B hub wait {common} {gateway_id} argocd/app-00002 --timeout 30s\n\n\
         Ctrl-C stops everything; the hub data and the gateway identity stay in {dir}.\n",
        apps = args.apps,
        every = args.change_every,
        admin = args.admin_addr,
        dir = args.data_dir.display(),
    );
}

/// Keeps the simulated applications moving the way a busy Argo CD does: a new commit makes an
/// app OutOfSync, a sync runs, the rollout progresses and ends Healthy (now and then Degraded).
async fn churn(sim: SimHandle, apps: usize, every: Duration, stop: CancellationToken) {
    let ns = sim.options().namespace.clone();
    // Rollouts in progress; they end with the churn.
    let mut rollouts = tokio::task::JoinSet::new();
    loop {
        while rollouts.try_join_next().is_some() {}
        let (pause, i, roll) = {
            let mut rng = rand::rng();
            let jitter = rng.random_range(0.5..1.5);
            (
                every.mul_f64(jitter),
                rng.random_range(0..apps),
                rng.random_range(0..10u32),
            )
        };
        tokio::select! {
            _ = stop.cancelled() => {
                rollouts.abort_all();
                return;
            }
            _ = tokio::time::sleep(pause) => {}
        }
        let name = format!("app-{i:05}");
        let commit = format!("{:040x}", rand::rng().random::<u128>());
        sim.set_sync_status(&ns, &name, "OutOfSync");
        let step = every.mul_f64(0.4).min(Duration::from_secs(2));
        let sim = sim.clone();
        let ns = ns.clone();
        rollouts.spawn(async move {
            sim.set_operation_phase(&ns, &name, "Running");
            tokio::time::sleep(step).await;
            sim.set_revision(&ns, &name, &commit);
            sim.set_sync_status(&ns, &name, "Synced");
            sim.set_health(&ns, &name, "Progressing", "Waiting for rollout to finish");
            tokio::time::sleep(step).await;
            if roll == 0 {
                sim.set_operation_phase(&ns, &name, "Failed");
                sim.set_health(&ns, &name, "Degraded", "Deployment exceeded its progress deadline");
            } else {
                sim.set_operation_phase(&ns, &name, "Succeeded");
                sim.set_health(&ns, &name, "Healthy", "");
            }
        });
    }
}
