//! `argocd-gateway demo`: the whole system in one process for a first look — a hub with its
//! own data directory, the Argo CD simulator with applications that keep changing, and a
//! gateway registered to that hub, connected over real TLS gRPC exactly as in a cluster.
//!
//! Its ports differ from `hub serve`'s and `run`'s defaults, so the demo and a quickstart hub
//! and gateway can run side by side. It prints what to try as `export` lines once and short
//! commands after them. On Ctrl-C the gateway says goodbye first, then the hub stops.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::hub::{self, ServeArgs};
use crate::shutdown::Tree;
use crate::simulator::churn::{LEFT_ALONE, churn};

/// Flags of `argocd-gateway demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where the demo keeps its hub data, the gateway identity and the simulator token.
    #[arg(long, default_value = "./demo-data")]
    pub data_dir: PathBuf,
    /// How many simulated Argo CD applications.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    pub apps: u32,
    /// The hub's HTTP API and status page (not `hub serve`'s 8080, so both can run).
    #[arg(long, default_value = "127.0.0.1:8088")]
    pub http_addr: SocketAddr,
    /// The hub's gRPC listener the gateway dials (not `hub serve`'s 8443).
    #[arg(long, default_value = "127.0.0.1:8444")]
    pub grpc_addr: SocketAddr,
    /// The gateway's admin server, /healthz, /readyz, /metrics (not `run`'s 9090).
    #[arg(long, default_value = "127.0.0.1:9091")]
    pub admin_addr: SocketAddr,
    /// The simulated Argo CD's address (default: a free port).
    #[arg(long)]
    pub sim_addr: Option<SocketAddr>,
    /// Mean time between simulated changes (0 = no changes). app-00001 and app-00003 are left
    /// alone, for you to sync.
    #[arg(long, default_value = "2s", value_parser = crate::util::parse_duration)]
    pub change_every: Duration,
    /// How long each step of a sync you ask for takes in the simulated Argo CD.
    #[arg(long, default_value = "1s", value_parser = crate::util::parse_duration)]
    pub sync_step: Duration,
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

    let started =
        crate::simulator::command::start(args.sim_addr, args.apps as usize, &args.data_dir, false, args.sync_step)
            .await;
    let crate::simulator::command::Started { sim, token_file, .. } = match started {
        Ok(s) => s,
        Err(e) => {
            hub.shutdown().await;
            return Err(e);
        }
    };

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
    print_banner(&args, &api, &admin_token_path, &gateway_id, &sim.url());

    tree.spawn(churn(
        sim.clone(),
        args.apps as usize,
        args.change_every,
        tree.token().clone(),
    ));

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

/// The banner: where things are, then the environment once (`export …`) and short commands
/// to paste. tests/demo.rs runs these lines as printed.
fn print_banner(args: &DemoArgs, api: &str, admin_token_path: &Path, gateway_id: &str, sim_url: &str) {
    let token = crate::util::absolute(admin_token_path);
    let bin = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "argocd-gateway".into());
    let sync_app = format!("app-{:05}", LEFT_ALONE[0]);
    let multi_app = format!("app-{:05}", LEFT_ALONE[1]);
    let mut tries = vec![
        "$B hub gateways".to_owned(),
        "$B hub apps".to_owned(),
        format!("$B hub app $GW argocd/{sync_app}"),
        format!("$B hub sync $GW argocd/{sync_app} --revision {DEMO_REVISION}"),
        format!(
            "$B hub wait $GW argocd/{sync_app} --revision {} --timeout 60s",
            &DEMO_REVISION[..7]
        ),
    ];
    if args.apps as usize > LEFT_ALONE[1] {
        tries.push(format!(
            "$B hub sync $GW argocd/{multi_app} --revision {DEMO_REVISION} --source 1"
        ));
    }
    tries.push("$B hub health $GW -o yaml".to_owned());
    println!(
        "\nargocd-gateway demo is running: a hub, a simulated Argo CD ({sim_url}) with {apps} \
         applications that change every ~{every}, and gateway {gateway_id} connected to the hub.\n\n\
         status page:       {api}/  (log in with the token in {token})\n\
         hub API:           {api}\n\
         gateway metrics:   http://{admin}/metrics\n\n\
         Try, in another terminal (paste the exports once):\n\n\
         export ARGOCD_GATEWAY_HUB_API={api}\n\
         export ARGOCD_GATEWAY_ADMIN_TOKEN_FILE={token}\n\
         export GW={gateway_id}\n\
         export B={bin}\n\n\
         {tries}\n\n\
         {sync_app} and {multi_app} are left alone by the simulated churn: a sync you ask for runs \
         to the revision you give, and `wait` exits 0 once it is Synced and Healthy there.\n\
         Ctrl-C stops everything; the hub data and the gateway identity stay in {dir}.\n",
        apps = args.apps,
        every = humantime::format_duration(args.change_every),
        admin = args.admin_addr,
        token = token.display(),
        tries = tries.join("\n"),
        dir = args.data_dir.display(),
    );
}

/// The commit the banner's sync example deploys (any 40-hex revision works).
const DEMO_REVISION: &str = "4f7c2a9e1b3d5f60718293a4b5c6d7e8f9012345";
