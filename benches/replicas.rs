//! Hub replicas on one PostgreSQL (a server this bench starts, like the tests): two `hub serve`
//! processes (the release binary) behind a TCP balancer, and
//!
//! 1. a swarm of 1,000 gateways like the hub bench's (`benches/hub.rs`) — real tunnel clients
//!    (`tunnel::run`) with real certificates from real registrations, each relaying 10
//!    real-sized applications (about 11 KB, `support/mod.rs`), all in this process — kill -9
//!    the replica holding the most sessions and print the time until every gateway is connected
//!    again and every one the killed replica held is listed as connected (to the survivor) by
//!    the survivor's API, and how many snapshots were resent (0 when the state digests match);
//! 2. the forwarding overhead: a gateway daemon (against the Argo CD simulator) on replica A;
//!    the same live request (an application read from Argo CD through the gateway) asked of A
//!    directly and of B, which forwards it to A over mutual TLS; p50/p99 of both and the
//!    difference.
//!
//! `cargo bench --bench replicas` (optionally `-- GATEWAYS REQUESTS`, default 1000 and 500).
//! Figures are printed, never asserted; the PostgreSQL server binaries must be installed
//! (`apt-get install postgresql`).

#[path = "../tests/support/balancer.rs"]
mod balancer;
#[path = "../tests/support/ports.rs"]
mod ports;
#[path = "../tests/support/postgres.rs"]
mod postgres;
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use argocd_gateway::relay::engine::{Dirty, Relay, Source};
use argocd_gateway::relay::{Entity, Kind};
use argocd_gateway::simulator::{SimOptions, SimTls, Simulator, TokenSpec};
use argocd_gateway::tunnel::{Attachments, RunArgs, TunnelStatus};
use clap::Parser;
use ports::free_port;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One `hub serve` process.
struct Replica {
    child: Option<Child>,
    grpc: u16,
    http: u16,
}

impl Replica {
    fn start(url: &str, data: &Path, log: PathBuf) -> Replica {
        let (grpc, http, peer) = (free_port(), free_port(), free_port());
        let out = std::fs::File::create(log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_argocd-gateway"))
            .args(["hub", "serve", "--store", url, "--data-dir"])
            .arg(data)
            .args(["--hostname", "localhost,127.0.0.1"])
            .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
            .args(["--http-addr", &format!("127.0.0.1:{http}")])
            .args(["--peer-addr", &format!("127.0.0.1:{peer}")])
            .args(["--health-check-interval", "1h", "--max-concurrent-opens", "256"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("hub serve starts");
        Replica {
            child: Some(child),
            grpc,
            http,
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Api {
    http: reqwest::Client,
    admin: String,
}

impl Api {
    async fn get(&self, port: u16, path: &str) -> Option<Value> {
        let resp = self
            .http
            .get(format!("http://127.0.0.1:{port}{path}"))
            .bearer_auth(&self.admin)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.json().await.ok()
    }

    async fn token(&self, port: u16) -> String {
        let v: Value = self
            .http
            .post(format!("http://127.0.0.1:{port}/api/v1/registration-tokens"))
            .bearer_auth(&self.admin)
            .json(&json!({"name": "bench"}))
            .send()
            .await
            .expect("token request")
            .json()
            .await
            .expect("token answer");
        v["token"].as_str().expect("a token").to_owned()
    }

    async fn ready(&self, port: u16) -> Option<String> {
        let resp = self
            .http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        if resp.status() != 200 {
            return None;
        }
        let text = resp.text().await.ok()?;
        Some(text.trim().trim_start_matches("ready: replica ").to_owned())
    }

    /// Gateway id → the replica holding it, for the connected ones, as replica `port` lists them.
    async fn holders(&self, port: u16) -> std::collections::HashMap<String, String> {
        let mut out = std::collections::HashMap::new();
        let Some(list) = self.get(port, "/api/v1/gateways").await else {
            return out;
        };
        for g in list["items"].as_array().into_iter().flatten() {
            if g["connected"] == json!(true) {
                out.insert(
                    g["id"].as_str().unwrap_or_default().to_owned(),
                    g["replica"].as_str().unwrap_or_default().to_owned(),
                );
            }
        }
        out
    }
}

/// A fixed set of applications (real model JSON, as a gateway relays it).
struct Fixed(Vec<Entity>);

impl Source for Fixed {
    fn entities(&self) -> Vec<Entity> {
        self.0.clone()
    }
    fn get(&self, kind: Kind, key: &str) -> Option<Entity> {
        self.0.iter().find(|e| e.kind == kind && e.key == key).cloned()
    }
}

/// `n` real-sized applications through the gateway's own decoder (the same in every gateway;
/// keys are per gateway at the hub).
fn apps(n: usize) -> Vec<Entity> {
    let fixtures = support::fixtures();
    (0..n)
        .map(|i| {
            let raw = support::real_sized_app(&fixtures, i, "argocd", 14);
            let decoded = argocd_gateway::argocd::model::decode_application(&raw.to_string()).expect("a valid app");
            argocd_gateway::relay::source::app_entity(&decoded.app)
        })
        .collect()
}

#[derive(Parser)]
struct TunnelCli {
    #[command(flatten)]
    args: RunArgs,
}

struct SwarmMember {
    status: watch::Receiver<TunnelStatus>,
    snapshots: prometheus_client::metrics::counter::Counter,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[tokio::main]
async fn main() {
    let argv: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let gateways: usize = argv.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let requests: usize = argv.get(1).and_then(|a| a.parse().ok()).unwrap_or(500);
    raise_fd_limit();
    argocd_gateway::tls::install_crypto_provider();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("replicas bench: {gateways} gateways, {requests} requests, {cores} cores");

    let pg = postgres::Postgres::start();
    let url = pg.create_db("hub");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("hub-files");
    let pki = argocd_gateway::hub::pki::load_or_init(&data, &["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("hub files");
    let fingerprint = pki.ca.fingerprint().hex().to_owned();
    let api = Api {
        http: reqwest::Client::new(),
        admin: pki.admin_token.expose().to_owned(),
    };
    let mut replicas: Vec<Replica> = (0..2)
        .map(|i| Replica::start(&url, &data, dir.path().join(format!("replica-{i}.log"))))
        .collect();
    let mut ids = vec![];
    for r in &replicas {
        let started = Instant::now();
        loop {
            if let Some(id) = api.ready(r.http).await {
                ids.push(id);
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "a replica did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let lb = balancer::Balancer::start(
        replicas
            .iter()
            .map(|r| format!("127.0.0.1:{}", r.grpc).parse::<SocketAddr>().expect("addr"))
            .collect(),
    )
    .await;
    let hub_url = format!("https://localhost:{}", lb.addr.port());

    // ---- 1. The swarm.
    let stop = CancellationToken::new();
    let entities = apps(10);
    let mut swarm = vec![];
    let registering = Instant::now();
    for g in 0..gateways {
        let token = api.token(replicas[g % 2].http).await;
        let identity = format!("file:{}", dir.path().join(format!("gw-{g}.json")).display());
        let cli = TunnelCli::try_parse_from([
            "run",
            "--hub-url",
            &hub_url,
            "--hub-ca-fingerprint",
            &fingerprint,
            "--registration-token",
            &token,
            "--identity",
            &identity,
            "--name",
            &format!("swarm-{g}"),
            "--keepalive-interval",
            "30",
        ])
        .expect("tunnel flags");
        let uplink = cli.args.uplink.validate().expect("uplink config");
        let store = argocd_gateway::cli::open_identity_store(&uplink.identity);
        let cfg = cli.args.config(uplink, store);
        let relay = Relay::new(Arc::new(Fixed(entities.clone())), Arc::new(Dirty::default()));
        let snapshots = relay.counters.snapshots.clone();
        let (tx, rx) = watch::channel(TunnelStatus::default());
        let attach = Attachments {
            relay: Some(relay),
            ..Default::default()
        };
        let stop = stop.clone();
        tokio::spawn(async move {
            let _ = argocd_gateway::tunnel::run(cfg, stop, tx, attach).await;
        });
        swarm.push(SwarmMember { status: rx, snapshots });
    }
    let all_connected = |swarm: &[SwarmMember]| swarm.iter().filter(|m| m.status.borrow().connected).count();
    let started = Instant::now();
    while all_connected(&swarm) < gateways {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "only {} of {gateways} gateways connected",
            all_connected(&swarm)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "swarm: {gateways} gateways registered and connected in {:.1?}",
        registering.elapsed()
    );
    // Settled: every gateway's state stored (its snapshot acknowledged), and every session
    // older than the tunnel's STABLE_SESSION (5 s), as sessions are when a replica dies in
    // production. A session that breaks within 5 s of opening waits out its backoff on purpose
    // (a hub that accepts and drops must not cause a tight loop), which killing 3 s after the
    // connect rush measured instead of the failover.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let holders = api.holders(replicas[0].http).await;
    let on = |id: &str| holders.values().filter(|h| h.as_str() == id).count();
    let victim = if on(&ids[0]) >= on(&ids[1]) { 0 } else { 1 };
    let survivor = 1 - victim;
    let moved: Vec<String> = holders
        .iter()
        .filter(|(_, h)| **h == ids[victim])
        .map(|(g, _)| g.clone())
        .collect();
    let snapshots_before: u64 = swarm.iter().map(|m| m.snapshots.get()).sum();
    let reconnects_before: Vec<u64> = swarm.iter().map(|m| m.status.borrow().reconnects).collect();
    println!(
        "replica {} holds {} gateways, replica {} holds {}; killing the first with SIGKILL",
        ids[victim],
        moved.len(),
        ids[survivor],
        on(&ids[survivor])
    );
    replicas[victim].kill();
    let killed = Instant::now();
    // Every gateway the killed replica held noticed and is connected again.
    let mut gateways_back = None;
    let mut listed_back = None;
    while killed.elapsed() < Duration::from_secs(300) && listed_back.is_none() {
        if gateways_back.is_none() {
            let back = swarm.iter().enumerate().all(|(i, m)| {
                let s = m.status.borrow();
                s.connected
                    && (s.reconnects > reconnects_before[i]
                        || !moved.contains(&s.gateway_id.clone().unwrap_or_default()))
            });
            if back {
                gateways_back = Some(killed.elapsed());
            }
        }
        if gateways_back.is_some() {
            let now = api.holders(replicas[survivor].http).await;
            if moved.iter().all(|g| now.get(g) == Some(&ids[survivor])) {
                listed_back = Some(killed.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let snapshots_after: u64 = swarm.iter().map(|m| m.snapshots.get()).sum();
    match (gateways_back, listed_back) {
        (Some(g), Some(l)) => {
            println!(
                "failover: {} gateways of the killed replica back on the survivor; all {gateways} connected {g:.2?} after the kill, listed connected by the survivor {l:.2?} after (target ≤ 5 s)",
                moved.len()
            );
        }
        _ => println!("failover: NOT all gateways back within 300 s"),
    }
    println!(
        "failover: snapshots resent {} (0 when the state digests match)",
        snapshots_after - snapshots_before
    );
    stop.cancel();
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(swarm);

    // ---- 2. Forwarding overhead, with the survivor as A and a fresh replica as B.
    let a = survivor;
    replicas.push(Replica::start(&url, &data, dir.path().join("replica-2.log")));
    let b = replicas.len() - 1;
    let started = Instant::now();
    while api.ready(replicas[b].http).await.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "replica B did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sim = Simulator::start(SimOptions {
        tls: SimTls::Plaintext,
        ..Default::default()
    })
    .await
    .expect("simulator");
    sim.add_synthetic_apps(20);
    let gw_dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        gw_dir.path().join("argocd-token"),
        sim.add_token(TokenSpec::account("gateway")),
    )
    .expect("token");
    let token = api.token(replicas[a].http).await;
    #[derive(Parser)]
    struct RunCli {
        #[command(flatten)]
        args: argocd_gateway::daemon::DaemonArgs,
    }
    let identity_path = gw_dir.path().join("identity.json");
    let cli = RunCli::try_parse_from([
        "run",
        "--hub-url",
        &format!("https://localhost:{}", replicas[a].grpc),
        "--hub-ca-fingerprint",
        &fingerprint,
        "--registration-token",
        &token,
        "--identity",
        &format!("file:{}", identity_path.display()),
        "--argocd-server",
        &sim.url(),
        "--argocd-plaintext",
        "--argocd-token-file",
        &gw_dir.path().join("argocd-token").display().to_string(),
        "--admin-addr",
        &format!("127.0.0.1:{}", free_port()),
    ])
    .expect("daemon flags");
    let gw_stop = CancellationToken::new();
    let daemon = tokio::spawn(argocd_gateway::daemon::run(cli.args, gw_stop.clone()));
    let started = Instant::now();
    let id = loop {
        let text = std::fs::read_to_string(&identity_path).unwrap_or_default();
        let id = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["gatewayId"].as_str().or(v["gateway_id"].as_str()).map(str::to_owned));
        if let Some(id) = id
            && api.holders(replicas[b].http).await.get(&id) == Some(&ids[a])
        {
            break id;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the gateway did not connect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let path = format!("/api/v1/gateways/{id}/applications/argocd/app-00001?refresh=normal");
    let measure = async |port: u16| {
        for _ in 0..20 {
            api.get(port, &path).await.expect("warm-up answer");
        }
        let mut times = Vec::with_capacity(requests);
        for _ in 0..requests {
            let t = Instant::now();
            api.get(port, &path).await.expect("an answer");
            times.push(t.elapsed());
        }
        times.sort();
        times
    };
    let direct = measure(replicas[a].http).await;
    let forwarded = measure(replicas[b].http).await;
    let (d50, d99) = (percentile(&direct, 0.50), percentile(&direct, 0.99));
    let (f50, f99) = (percentile(&forwarded, 0.50), percentile(&forwarded, 0.99));
    println!("live application read, asked of the replica holding the session: p50 {d50:.2?}, p99 {d99:.2?}");
    println!("the same asked of another replica (forwarded over mutual TLS): p50 {f50:.2?}, p99 {f99:.2?}");
    println!(
        "forwarding overhead: p50 {:.2?}, p99 {:.2?}",
        f50.saturating_sub(d50),
        f99.saturating_sub(d99)
    );
    gw_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), daemon).await;
    drop(replicas);
    drop(pg);
}
