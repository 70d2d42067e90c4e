//! Soak: a gateway relays an Argo CD whose applications keep changing while the hub is
//! restarted 100 times (half drained, half stopped abruptly) and Argo CD fails 100 times (watch
//! cut, error chunk, broken list, 503s). At the end the hub's state is compared with the
//! simulator's, by this file's own reading of the raw Argo CD JSON, and the lost and
//! mismatching applications are printed: both must be 0.
//!
//! `cargo bench --bench soak` (optionally `-- ROUNDS APPS`, default 100 and 200).

#[path = "../tests/support/ports.rs"]
mod ports;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use argocd_gateway::hub::{self, Hub, ServeArgs};
use argocd_gateway::simulator::{SimHandle, SimOptions, SimTls, Simulator, TokenSpec};
use clap::Parser;
use ports::free_port;
use rand::Rng;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct RunCli {
    #[command(flatten)]
    args: argocd_gateway::daemon::DaemonArgs,
}

fn serve_args(dir: &std::path::Path, grpc: u16, http: u16) -> ServeArgs {
    ServeArgs {
        hostnames: vec!["localhost".into()],
        grpc_addr: format!("127.0.0.1:{grpc}").parse().expect("addr"),
        http_addr: format!("127.0.0.1:{http}").parse().expect("addr"),
        health_check_interval: Duration::from_secs(3600),
        ..ServeArgs::new(dir)
    }
}

/// What matters of an application, read from the simulator's raw JSON.
fn expected(sim: &SimHandle) -> std::collections::BTreeMap<String, (String, String, String)> {
    sim.apps()
        .iter()
        .map(|a| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            (
                format!("{}/{}", s(&a["metadata"]["namespace"]), s(&a["metadata"]["name"])),
                (
                    s(&a["status"]["health"]["status"]),
                    s(&a["status"]["sync"]["status"]),
                    s(&a["status"]["sync"]["revision"]),
                ),
            )
        })
        .collect()
}

/// The same, as the hub serves it.
async fn at_hub(
    http: &reqwest::Client,
    hub: SocketAddr,
    admin: &str,
) -> Option<std::collections::BTreeMap<String, (String, String, String)>> {
    let v: Value = http
        .get(format!("http://{hub}/api/v1/applications"))
        .bearer_auth(admin)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some(
        v["items"]
            .as_array()?
            .iter()
            .map(|a| {
                let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                (
                    format!("{}/{}", s(&a["namespace"]), s(&a["name"])),
                    (
                        s(&a["health"]["status"]),
                        s(&a["sync"]["status"]),
                        s(&a["sync"]["revision"]),
                    ),
                )
            })
            .collect(),
    )
}

#[tokio::main]
async fn main() {
    let numbers: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let rounds = numbers.first().copied().unwrap_or(100);
    let apps = numbers.get(1).copied().unwrap_or(200);
    argocd_gateway::tls::install_crypto_provider();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let (grpc, http_port) = (free_port(), free_port());
    let mut hub: Option<Hub> = Some(
        hub::start(serve_args(&dir.path().join("hub"), grpc, http_port))
            .await
            .expect("hub"),
    );
    let admin = std::fs::read_to_string(&hub.as_ref().expect("hub").admin_token_path).expect("admin token");
    let admin = admin.trim().to_owned();
    let http = reqwest::Client::new();
    let token: Value = http
        .post(format!("http://127.0.0.1:{http_port}/api/v1/registration-tokens"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"name": "soak"}))
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("token json");
    let sim = Simulator::start(SimOptions {
        tls: SimTls::Plaintext,
        version: "v2.14.7".into(),
        ..SimOptions::default()
    })
    .await
    .expect("simulator");
    sim.add_synthetic_apps(apps);
    std::fs::write(
        dir.path().join("argocd-token"),
        sim.add_token(TokenSpec::account("gateway")),
    )
    .expect("token file");
    let cli = RunCli::try_parse_from([
        "run".to_owned(),
        "--hub-url".into(),
        format!("https://localhost:{grpc}"),
        "--hub-ca-fingerprint".into(),
        token["caFingerprint"].as_str().expect("fingerprint").to_owned(),
        "--registration-token".into(),
        token["token"].as_str().expect("token").to_owned(),
        "--identity".into(),
        format!("file:{}", dir.path().join("identity.json").display()),
        "--argocd-server".into(),
        sim.url(),
        "--argocd-plaintext".into(),
        "--argocd-token-file".into(),
        dir.path().join("argocd-token").display().to_string(),
        "--admin-addr".into(),
        "127.0.0.1:0".into(),
        "--keepalive-interval".into(),
        "2".into(),
    ])
    .expect("flags");
    let stop = CancellationToken::new();
    let gateway = tokio::spawn(argocd_gateway::daemon::run(cli.args, stop.clone()));

    // Changes never stop.
    let churn_stop = CancellationToken::new();
    let churn = {
        let sim = sim.clone();
        let stop = churn_stop.clone();
        tokio::spawn(async move {
            let mut changes = 0u64;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return changes,
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
                let (i, health, rev) = {
                    let mut rng = rand::rng();
                    (
                        rng.random_range(0..apps),
                        ["Healthy", "Progressing", "Degraded"][rng.random_range(0..3)],
                        format!("{:040x}", rng.random::<u128>()),
                    )
                };
                let name = format!("app-{i:05}");
                sim.set_health("argocd", &name, health, "");
                sim.set_revision("argocd", &name, &rev);
                changes += 1;
            }
        })
    };

    let started = Instant::now();
    for round in 0..rounds {
        // A hub restart: drained on even rounds, abrupt on odd ones.
        let h = hub.take().expect("hub running");
        if round % 2 == 0 {
            h.shutdown().await;
        } else {
            h.stop_abruptly().await;
        }
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(0..300))).await;
        hub = Some(
            hub::start(serve_args(&dir.path().join("hub"), grpc, http_port))
                .await
                .expect("hub restarts"),
        );
        // An Argo CD failure.
        match round % 4 {
            0 => sim.disconnect_watches(),
            1 => sim.fail_watches(503, "soak: the watch broke"),
            2 => sim.truncate_lists(1),
            _ => sim.fail_requests("/api/v1/applications", 2, 503),
        }
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(200..800))).await;
        if round % 10 == 9 {
            println!("round {:>3}/{rounds}: {:.0?}", round + 1, started.elapsed());
        }
    }
    let changes = {
        churn_stop.cancel();
        churn.await.expect("churn")
    };
    sim.clear_faults();
    // Settle: the last changes travel, then compare.
    let want = expected(&sim);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut got = None;
    while Instant::now() < deadline {
        got = at_hub(&http, format!("127.0.0.1:{http_port}").parse().expect("addr"), &admin).await;
        if got.as_ref() == Some(&want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let got = got.unwrap_or_default();
    let lost = want.keys().filter(|k| !got.contains_key(*k)).count();
    let mismatching = want
        .iter()
        .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
        .count();
    let extra = got.keys().filter(|k| !want.contains_key(*k)).count();
    println!(
        "soak: {rounds} hub restarts and {rounds} Argo CD failures over {:.0?} with {changes} changes to {apps} applications",
        started.elapsed()
    );
    println!("soak: lost {lost}, mismatching {mismatching}, extra {extra} (target 0, 0, 0)");
    for (k, v) in want
        .iter()
        .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
        .take(5)
    {
        println!("soak: {k}: Argo CD has {v:?}, the hub {:?}", got.get(k));
    }
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), gateway).await;
    if let Some(h) = hub {
        h.shutdown().await;
    }
    sim.shutdown();
    if lost + mismatching + extra > 0 {
        std::process::exit(1);
    }
}
