//! Relay figures of SPEC §8, printed (never asserted): gateway RSS idle and with many
//! applications, time until a large Argo CD is fully at the hub, and Argo CD change → visible at
//! the hub API latency (p50/p99). The gateway runs as its own process (the built binary) so its
//! memory is its own; the hub and the simulator run in this process.
//!
//! `cargo bench --bench relay` (optionally `-- 10000` for the application count).

use std::time::{Duration, Instant};

use argocd_gateway::hub::{self, ServeArgs};
use argocd_gateway::simulator::{SimOptions, SimTls, Simulator, TokenSpec};

/// A `/proc/<pid>/status` field in MiB.
fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|k| k.parse::<f64>().ok()))
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Resident memory, with its heap (anonymous) and mapped-file (mostly the binary's code) parts.
fn rss(pid: u32) -> String {
    format!(
        "{:6.1} MiB (heap {:.1}, files {:.1})",
        status_mib(pid, "VmRSS:"),
        status_mib(pid, "RssAnon:"),
        status_mib(pid, "RssFile:")
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() {
    let apps: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(10_000);
    argocd_gateway::tls::install_crypto_provider();
    let dir = tempfile::tempdir().expect("temp dir");
    let hub = hub::start(ServeArgs {
        data_dir: dir.path().join("hub"),
        hostnames: vec!["localhost".into()],
        grpc_addr: "127.0.0.1:0".parse().expect("addr"),
        http_addr: "127.0.0.1:0".parse().expect("addr"),
        plaintext: false,
        client_cert_ttl: Duration::from_secs(86400),
        public_url: None,
        helm_chart: "./charts/argocd-gateway".into(),
        http: Default::default(),
        history: Default::default(),
        health_check_interval: Duration::from_secs(3600),
    })
    .await
    .expect("hub");
    let admin = std::fs::read_to_string(&hub.admin_token_path).expect("admin token");
    let admin = admin.trim();
    let api = format!("http://{}", hub.http_addr);
    let http = reqwest::Client::new();
    let sim = Simulator::start(SimOptions {
        tls: SimTls::Plaintext,
        ..Default::default()
    })
    .await
    .expect("simulator");
    let token_file = dir.path().join("argocd-token");
    std::fs::write(&token_file, sim.add_token(TokenSpec::account("gateway"))).expect("token file");
    let reg: serde_json::Value = http
        .post(format!("{api}/api/v1/registration-tokens"))
        .bearer_auth(admin)
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("token json");

    let admin_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    // The gateway's own log, for when a figure looks wrong.
    let log_path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("relay-bench-gateway.log");
    println!("gateway log: {}", log_path.display());
    let mut gateway = tokio::process::Command::new(env!("CARGO_BIN_EXE_argocd-gateway"))
        .args([
            "run",
            "--hub-url",
            &format!("https://localhost:{}", hub.grpc_addr.port()),
        ])
        .args([
            "--hub-ca-fingerprint",
            reg["caFingerprint"].as_str().unwrap_or_default(),
        ])
        .args(["--registration-token", reg["token"].as_str().unwrap_or_default()])
        .arg("--identity")
        .arg(format!("file:{}", dir.path().join("identity.json").display()))
        .args(["--argocd-server", &sim.url(), "--argocd-plaintext"])
        .arg("--argocd-token-file")
        .arg(&token_file)
        .args(["--admin-addr", &admin_addr.to_string()])
        .args(["--log-format", "text"])
        .env("RUST_LOG", "info")
        // As the container image runs it (see Dockerfile).
        .env("MALLOC_ARENA_MAX", "2")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("gateway log file"))
        .kill_on_drop(true)
        .spawn()
        .expect("gateway process");
    let pid = gateway.id().unwrap_or_default();

    let gateways = || async {
        http.get(format!("{api}/api/v1/gateways"))
            .bearer_auth(admin)
            .send()
            .await
            .ok()?
            .json::<serde_json::Value>()
            .await
            .ok()
    };
    let gateway_id = loop {
        if let Some(v) = gateways().await
            && v["items"][0]["connected"] == true
        {
            break v["items"][0]["id"].as_str().unwrap_or_default().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "gateway RSS, connected, no applications : {} (SPEC §8: <= 16 MiB)",
        rss(pid)
    );

    let started = Instant::now();
    sim.add_synthetic_apps(apps);
    let count = || async {
        http.get(format!("{api}/api/v1/gateways/{gateway_id}"))
            .bearer_auth(admin)
            .send()
            .await
            .ok()?
            .json::<serde_json::Value>()
            .await
            .ok()?["applicationCount"]
            .as_u64()
    };
    while count().await != Some(apps as u64) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "{apps} applications added → all at the hub   : {:6.2} s",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "gateway RSS with {apps} applications       : {} (SPEC §8: <= 96 MiB)",
        rss(pid)
    );

    // Change one application at a time and time until the hub API shows it.
    let rounds = 200;
    let mut latencies = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let name = format!("app-{:05}", (i * 37) % apps);
        let message = format!("bench change {i}");
        let path = format!("{api}/api/v1/gateways/{gateway_id}/applications/argocd/{name}");
        let t0 = Instant::now();
        sim.set_health("argocd", &name, "Degraded", &message);
        loop {
            let seen = match http.get(&path).bearer_auth(admin).send().await {
                Ok(r) => r
                    .json::<serde_json::Value>()
                    .await
                    .is_ok_and(|v| v["health"]["message"] == message.as_str()),
                Err(_) => false,
            };
            if seen {
                break;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                println!("change {i} not visible after 10 s");
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        latencies.push(t0.elapsed());
    }
    latencies.sort();
    println!(
        "Argo CD change → visible at the hub API     : p50 {:?}, p99 {:?}, max {:?} over {rounds} changes (SPEC §8: p99 <= 250 ms to the hub ack)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    );
    let _ = gateway.kill().await;
    hub.shutdown().await;
}
