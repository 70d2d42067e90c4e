//! Hub figures, printed beside their targets (never asserted):
//!
//! 1. **Swarm**: 1,000 gateways — real tunnel clients, each with its own registration, key and
//!    client certificate, many in this process — connect to one hub, which runs as its own
//!    process (the built binary) so its CPU and memory are its own. The hub is killed
//!    (SIGKILL) and started again; printed: the time until every gateway is back and the hub
//!    holds every application again, the snapshots resent meanwhile (target 0: each gateway's
//!    digest matches what the hub kept), the hub's CPU for the reconnection, and its RSS.
//! 2. **Cost per change**: one gateway with 100 applications, then one with 10,000, each
//!    changing 5,000 times at 500 changes/s; printed: the hub's CPU per change in each case (the
//!    target is the same cost whatever the gateway holds) and the hub's RSS after the churn
//!    with 10,000 applications.
//!
//! Applications are real-sized (about 11 KB as argocd-server returns them, see
//! `support/mod.rs`) and travel the real path: Argo CD JSON decoded by the gateway's model,
//! relayed as the gateway relays it, stored and acknowledged by the hub.
//!
//! `cargo bench --bench hub` (optionally `-- GATEWAYS APPS_PER_GATEWAY`, default 1000 and 10).

#[path = "../tests/support/ports.rs"]
mod ports;
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argocd_gateway::argocd::model::decode_application;
use argocd_gateway::identity::store::FileStore;
use argocd_gateway::relay::engine::{Dirty, Relay, RelayCounters, Source};
use argocd_gateway::relay::source::app_entity;
use argocd_gateway::relay::{Entity, EntityKey, Kind};
use argocd_gateway::tunnel::{self, Attachments, RunArgs, TunnelStatus};
use clap::Parser;
use ports::free_port;
use serde_json::{Value, json};
use support::{process_cpu, real_sized_app, status_mib};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Changes per second in the cost-per-change phase (the relay target's rate).
const RATE: u32 = 500;
/// Changes per cost-per-change phase.
const CHANGES: usize = 5_000;

/// A gateway's applications, as the relay reads them: entities made by the gateway's own
/// model from Argo CD JSON.
#[derive(Default)]
struct Apps(Mutex<BTreeMap<EntityKey, Entity>>);

impl Source for Apps {
    fn entities(&self) -> Vec<Entity> {
        self.0.lock().expect("apps").values().cloned().collect()
    }
    fn get(&self, kind: Kind, key: &str) -> Option<Entity> {
        self.0.lock().expect("apps").get(&(kind, key.to_owned())).cloned()
    }
}

impl Apps {
    fn set(&self, e: Entity) {
        self.0.lock().expect("apps").insert((e.kind, e.key.clone()), e);
    }
}

/// The entity of a raw Argo CD application, through the gateway's decoder.
fn entity(raw: &Value) -> Entity {
    let decoded = decode_application(&raw.to_string()).expect("a real-sized application decodes");
    app_entity(&decoded.app)
}

/// The hub, as its own process.
struct HubProcess {
    dir: PathBuf,
    grpc: u16,
    http: u16,
    child: Option<std::process::Child>,
}

impl HubProcess {
    fn start(dir: &Path) -> Self {
        let mut hub = Self {
            dir: dir.to_owned(),
            grpc: free_port(),
            http: free_port(),
            child: None,
        };
        hub.spawn();
        hub
    }

    fn spawn(&mut self) {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_argocd-gateway"))
            .args([
                "hub",
                "serve",
                "--hostname",
                "localhost",
                "--health-check-interval",
                "1h",
            ])
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--grpc-addr", &format!("127.0.0.1:{}", self.grpc)])
            .args(["--http-addr", &format!("127.0.0.1:{}", self.http)])
            .env("RUST_LOG", "error")
            // The container image's allocator setting (Dockerfile), so the RSS is the deployed one.
            .env("MALLOC_ARENA_MAX", "2")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the hub starts");
        self.child = Some(child);
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("hub running").id()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    fn grpc_url(&self) -> String {
        format!("https://localhost:{}", self.grpc)
    }

    fn cpu(&self) -> Duration {
        process_cpu(self.pid())
    }

    fn rss(&self) -> f64 {
        status_mib(self.pid(), "VmRSS:")
    }

    /// Waits until the HTTP API answers, and returns the admin token.
    async fn ready(&self, http: &reqwest::Client) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(admin) = std::fs::read_to_string(self.dir.join("admin-token"))
                && let Ok(r) = http
                    .get(format!("{}/api/v1/gateways", self.api()))
                    .bearer_auth(admin.trim())
                    .send()
                    .await
                && r.status().is_success()
            {
                return admin.trim().to_owned();
            }
            assert!(Instant::now() < deadline, "the hub did not start within 120 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One gateway of the swarm: its tunnel task and what the bench watches of it.
struct Gateway {
    apps: Arc<Apps>,
    dirty: Arc<Dirty>,
    counters: RelayCounters,
    status: watch::Receiver<TunnelStatus>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Parser)]
struct TunnelCli {
    #[command(flatten)]
    args: RunArgs,
}

async fn registration_token(http: &reqwest::Client, hub: &HubProcess, admin: &str, name: &str) -> (String, String) {
    let v: Value = http
        .post(format!("{}/api/v1/registration-tokens", hub.api()))
        .bearer_auth(admin)
        .json(&json!({ "name": name }))
        .send()
        .await
        .expect("token request")
        .json()
        .await
        .expect("token json");
    (
        v["token"].as_str().expect("token").to_owned(),
        v["caFingerprint"].as_str().expect("fingerprint").to_owned(),
    )
}

/// Starts a gateway named `name` relaying `apps`: it registers with a token of its own and
/// keeps its session as `argocd-gateway run` does.
async fn gateway(
    http: &reqwest::Client,
    hub: &HubProcess,
    admin: &str,
    dir: &Path,
    name: &str,
    apps: Arc<Apps>,
    shutdown: &CancellationToken,
) -> Gateway {
    let (token, fingerprint) = registration_token(http, hub, admin, name).await;
    let cli = TunnelCli::try_parse_from([
        "run".to_owned(),
        "--hub-url".into(),
        hub.grpc_url(),
        "--hub-ca-fingerprint".into(),
        fingerprint,
        "--registration-token".into(),
        token,
        "--name".into(),
        name.into(),
        "--identity".into(),
        format!("file:{}", dir.join(format!("{name}.json")).display()),
    ])
    .expect("tunnel flags");
    let uplink = cli.args.uplink.validate().expect("uplink flags");
    let store = Arc::new(FileStore::new(dir.join(format!("{name}.json"))));
    let cfg = cli.args.config(uplink, store);
    let dirty = Arc::new(Dirty::default());
    let relay = Relay::new(apps.clone(), dirty.clone());
    let counters = relay.counters.clone();
    let (status_tx, status) = watch::channel(TunnelStatus::default());
    let attach = Attachments {
        relay: Some(relay),
        ..Attachments::default()
    };
    let shutdown = shutdown.clone();
    let task = tokio::spawn(async move {
        let _ = tunnel::run(cfg, shutdown, status_tx, attach).await;
    });
    Gateway {
        apps,
        dirty,
        counters,
        status,
        task,
    }
}

/// Applications the hub holds, and gateways it lists as connected.
async fn hub_counts(http: &reqwest::Client, hub: &HubProcess, admin: &str) -> Option<(u64, usize)> {
    let v: Value = http
        .get(format!("{}/api/v1/gateways", hub.api()))
        .bearer_auth(admin)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let items = v["items"].as_array()?;
    let apps = items.iter().filter_map(|g| g["applicationCount"].as_u64()).sum();
    let connected = items.iter().filter(|g| g["connected"] == json!(true)).count();
    Some((apps, connected))
}

/// Waits until every gateway is connected and the hub lists every application; returns how
/// long it took, or `None` if that did not happen within `limit`.
async fn all_back(
    http: &reqwest::Client,
    hub: &HubProcess,
    admin: &str,
    swarm: &[Gateway],
    apps: u64,
    limit: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    loop {
        let gateways_connected = swarm.iter().all(|g| g.status.borrow().connected);
        if gateways_connected
            && let Some((held, connected)) = hub_counts(http, hub, admin).await
            && held == apps
            && connected == swarm.len()
        {
            return Some(started.elapsed());
        }
        if started.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// When the first and when the last gateway of the swarm reported its session up, counted from
/// `since` (gives up after 120 s, returning what it saw).
async fn connection_timeline(statuses: Vec<watch::Receiver<TunnelStatus>>, since: Instant) -> (Duration, Duration) {
    let mut first = None;
    while since.elapsed() < Duration::from_secs(120) {
        let connected = statuses.iter().filter(|s| s.borrow().connected).count();
        if connected > 0 && first.is_none() {
            first = Some(since.elapsed());
        }
        if connected == statuses.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (first.unwrap_or_default(), since.elapsed())
}

fn snapshots(swarm: &[Gateway]) -> u64 {
    swarm.iter().map(|g| g.counters.snapshots.get()).sum()
}

fn sent(g: &Gateway) -> u64 {
    g.counters.applications_sent.get()
}

/// Phase 1: the swarm, and a hub restart under it.
async fn swarm_phase(http: &reqwest::Client, dir: &Path, gateways: usize, per_gateway: usize) {
    let fixtures = support::fixtures();
    // The same real-sized applications in every gateway (keys are per gateway at the hub).
    let entities: Vec<Entity> = (0..per_gateway)
        .map(|i| entity(&real_sized_app(&fixtures, i, "argocd", 14)))
        .collect();
    let mut hub = HubProcess::start(&dir.join("hub"));
    let admin = hub.ready(http).await;
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let mut swarm = Vec::with_capacity(gateways);
    for i in 0..gateways {
        let apps = Arc::new(Apps::default());
        for e in &entities {
            apps.set(e.clone());
        }
        swarm.push(gateway(http, &hub, &admin, dir, &format!("gw-{i:04}"), apps, &shutdown).await);
    }
    let total = (gateways * per_gateway) as u64;
    if all_back(http, &hub, &admin, &swarm, total, Duration::from_secs(600))
        .await
        .is_none()
    {
        println!("swarm: not every gateway connected within 600 s; no figures");
        return;
    }
    println!(
        "swarm: {gateways} gateways x {per_gateway} apps registered and relayed in {:.1} s (registration included)",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "hub RSS with {gateways} gateways, {total} apps          : {:6.1} MiB",
        hub.rss()
    );

    let before = snapshots(&swarm);
    hub.kill();
    // Every gateway notices the lost session before the hub comes back.
    let deadline = Instant::now() + Duration::from_secs(60);
    while swarm.iter().any(|g| g.status.borrow().connected) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    hub.spawn();
    let restarted = Instant::now();
    // Where the time goes: the hub's own start, the gateways' return, then consistency.
    let timeline = tokio::spawn(connection_timeline(
        swarm.iter().map(|g| g.status.clone()).collect(),
        restarted,
    ));
    let admin = hub.ready(http).await;
    let ready_after = restarted.elapsed();
    let back = all_back(http, &hub, &admin, &swarm, total, Duration::from_secs(120)).await;
    let cpu = hub.cpu();
    match back {
        Some(_) => println!(
            "{gateways} gateways back and consistent after a hub kill: {:6.2} s (target <= 5)",
            restarted.elapsed().as_secs_f64()
        ),
        None => println!("{gateways} gateways not all back within 120 s of a hub kill"),
    }
    if let Ok((first, all)) = timeline.await {
        println!(
            "  the hub's API answered after {:.2} s; first gateway connected after {:.2} s, all {gateways} after {:.2} s",
            ready_after.as_secs_f64(),
            first.as_secs_f64(),
            all.as_secs_f64()
        );
    }
    println!(
        "snapshots resent after the hub restart          : {:6} (target 0)",
        snapshots(&swarm) - before
    );
    println!(
        "hub CPU from start to all back                  : {:6.2} s",
        cpu.as_secs_f64()
    );
    println!(
        "hub RSS after the restart                       : {:6.1} MiB",
        hub.rss()
    );
    shutdown.cancel();
    for g in swarm {
        let _ = tokio::time::timeout(Duration::from_secs(30), g.task).await;
    }
}

/// Phase 2: the hub's CPU per change with `apps` applications in one gateway; returns it and
/// the hub's RSS after the churn.
async fn cost_per_change(http: &reqwest::Client, dir: &Path, apps: usize) -> (Duration, f64) {
    let fixtures = support::fixtures();
    let raw: Vec<Value> = (0..apps).map(|i| real_sized_app(&fixtures, i, "argocd", 14)).collect();
    let source = Arc::new(Apps::default());
    for r in &raw {
        source.set(entity(r));
    }
    let mut hub = HubProcess::start(&dir.join(format!("hub-{apps}")));
    let admin = hub.ready(http).await;
    let shutdown = CancellationToken::new();
    let gw = gateway(http, &hub, &admin, dir, &format!("churn-{apps}"), source, &shutdown).await;
    let swarm = [gw];
    if all_back(http, &hub, &admin, &swarm, apps as u64, Duration::from_secs(600))
        .await
        .is_none()
    {
        println!("the {apps}-application gateway did not finish its first snapshot within 600 s");
    }
    let gw = &swarm[0];
    // Each change is made ahead of time (a health message that names it), so the bench's own
    // JSON work is not in the measured window; only the relay, the hub and its store are.
    let changes: Vec<Entity> = (0..CHANGES)
        .map(|c| {
            let mut app = raw[(c * 7919) % apps].clone();
            app["status"]["health"]["message"] = json!(format!("change {c}"));
            entity(&app)
        })
        .collect();
    let sent_before = sent(gw);
    let cpu_before = hub.cpu();
    let started = Instant::now();
    for (c, e) in changes.into_iter().enumerate() {
        let key = e.key.clone();
        gw.apps.set(e);
        gw.dirty.mark(Kind::Application, key);
        let due = started + Duration::from_secs_f64((c + 1) as f64 / f64::from(RATE));
        tokio::time::sleep_until(due.into()).await;
    }
    // Everything sent is acknowledged when nothing more goes out for a while.
    let mut last = sent(gw);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = sent(gw);
        if now == last {
            break;
        }
        last = now;
    }
    let relayed = (sent(gw) - sent_before).max(1);
    let cpu = hub.cpu().saturating_sub(cpu_before);
    // Steady state: the hub gives the heap a burst freed back once it has been quiet a second.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = hub.rss();
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        for g in swarm {
            let _ = g.task.await;
        }
    })
    .await;
    hub.kill();
    (cpu / relayed as u32, rss)
}

#[tokio::main]
async fn main() {
    let numbers: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let gateways = numbers.first().copied().unwrap_or(1000);
    let per_gateway = numbers.get(1).copied().unwrap_or(10);
    argocd_gateway::tls::install_crypto_provider();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("hub bench on {cores} cores");
    let dir = tempfile::tempdir().expect("temp dir");
    let http = reqwest::Client::new();

    swarm_phase(&http, dir.path(), gateways, per_gateway).await;

    let (small, _) = cost_per_change(&http, dir.path(), 100).await;
    let (large, rss) = cost_per_change(&http, dir.path(), 10_000).await;
    println!(
        "hub CPU per change, 100 apps per gateway       : {:6.1} us",
        small.as_secs_f64() * 1e6
    );
    println!(
        "hub CPU per change, 10,000 apps per gateway    : {:6.1} us ({:.2}x the 100-app cost; target <= 2x)",
        large.as_secs_f64() * 1e6,
        large.as_secs_f64() / small.as_secs_f64().max(1e-9)
    );
    println!("hub RSS with 10,000 apps after {CHANGES} changes  : {rss:6.1} MiB (target <= 96)");
}
