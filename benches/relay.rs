//! Relay figures, printed beside their targets (never asserted): the gateway's memory — RSS and
//! peak RSS (VmHWM) — idle, after the first list of 10,000 real-sized applications, after three
//! re-lists and after churn of 10,000 changes; Argo CD change → hub latency (p50/p99) under 500
//! changes/s; and changes per second end to end.
//!
//! The gateway runs as its own process (the built binary, with the container's allocator
//! settings) so its memory is its own; the hub and the Argo CD simulator run in this process.
//! A change counts as arrived when the hub's change feed shows it, which happens after the hub
//! stored it and acknowledged it to the gateway.
//!
//! `cargo bench --bench relay` (optionally `-- APPS RESYNC_SECONDS`, default 10000 and 30).

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argocd_gateway::hub::{self, ServeArgs};
use argocd_gateway::simulator::{SimHandle, SimOptions, SimTls, Simulator, TokenSpec};
use futures_util::StreamExt;
use support::status_mib;

/// RSS and peak RSS now, then the peak is reset for the next phase (where the kernel allows).
fn memory(pid: u32) -> (f64, f64) {
    let now = (status_mib(pid, "VmRSS:"), status_mib(pid, "VmHWM:"));
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    now
}

fn print_memory(what: &str, (rss, peak): (f64, f64), rss_target: f64, peak_target: Option<f64>) {
    let peak_part = match peak_target {
        Some(t) => format!(", peak {peak:6.1} MiB (target <= {t:.0})"),
        None => String::new(),
    };
    println!("gateway RSS {what:<32}: {rss:6.1} MiB (target <= {rss_target:.0}){peak_part}");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Arrival times of changes at the hub, by the health message that marks each.
type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

/// Follows the hub's change feed and records when each marked change arrived.
async fn follow_feed(http: reqwest::Client, api: String, admin: String, arrivals: Arrivals) {
    let resp = http
        .get(format!(
            "{api}/api/v1/events?format=ndjson&view=summary&types=application.upserted"
        ))
        .bearer_auth(admin)
        .send()
        .await
        .expect("change feed");
    let mut body = resp.bytes_stream();
    let mut buf: Vec<u8> = vec![];
    while let Some(Ok(chunk)) = body.next().await {
        let now = Instant::now();
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let Ok(ev) = serde_json::from_slice::<serde_json::Value>(&line) else {
                continue;
            };
            if let Some(m) = ev["application"]["health"]["message"].as_str()
                && m.starts_with("change ")
            {
                arrivals.lock().expect("arrivals").entry(m.to_owned()).or_insert(now);
            }
        }
    }
}

/// Makes `count` changes, `per_second` at most (0: as fast as the simulator takes them), each
/// marked `change <run>-<i>`; returns when each was made.
async fn churn(sim: &SimHandle, apps: usize, run: &str, count: usize, per_second: u32) -> Vec<(String, Instant)> {
    let mut made = Vec::with_capacity(count);
    let mut tick = (per_second > 0).then(|| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second as f64));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    for i in 0..count {
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        // A stride through the applications, so consecutive changes touch different ones.
        let name = format!("app-{:05}", (i * 7919) % apps);
        let mark = format!("change {run}-{i}");
        let status = ["Degraded", "Progressing", "Healthy"][i % 3];
        sim.set_health("argocd", &name, status, &mark);
        made.push((mark, Instant::now()));
    }
    made
}

/// Waits until the hub has seen the last of `made` and nothing more arrives for a second (or
/// `limit` passes); returns the latencies of the changes it saw. Changes to one application in
/// quick succession may be coalesced (the relay sends its latest state, not every step).
async fn arrived(arrivals: &Arrivals, made: &[(String, Instant)], limit: Duration) -> Vec<Duration> {
    let deadline = Instant::now() + limit;
    let seen = || {
        let a = arrivals.lock().expect("arrivals");
        made.iter()
            .filter_map(|(m, t0)| a.get(m).map(|t| t.saturating_duration_since(*t0)))
            .collect::<Vec<_>>()
    };
    let mut last_count = usize::MAX;
    while Instant::now() < deadline {
        let now = seen();
        let last_in = made
            .last()
            .is_none_or(|(m, _)| arrivals.lock().expect("arrivals").contains_key(m));
        if now.len() == made.len() || (last_in && now.len() == last_count) {
            return now;
        }
        last_count = now.len();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    seen()
}

/// The hub's relay-lag histogram (from the gateway seeing a change to the hub receiving its
/// delta) as (upper bound, cumulative count) pairs: it tells a wait at the gateway from one after.
async fn lag_buckets(http: &reqwest::Client, api: &str, admin: &str) -> Vec<(f64, f64)> {
    let text = match http.get(format!("{api}/metrics")).bearer_auth(admin).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    text.lines()
        .filter_map(|l| l.strip_prefix("argocd_gateway_hub_relay_lag_seconds_bucket{le=\""))
        .filter_map(|l| {
            let (le, rest) = l.split_once('"')?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, rest.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

/// The bucket bound under which fraction `p` of the deltas observed between two scrapes fell.
fn lag_quantile(before: &[(f64, f64)], after: &[(f64, f64)], p: f64) -> f64 {
    let count = |v: &[(f64, f64)], le: f64| v.iter().find(|(b, _)| *b == le).map_or(0.0, |(_, c)| *c);
    let total = after.last().map_or(0.0, |(le, c)| c - count(before, *le));
    after
        .iter()
        .find(|(le, c)| total > 0.0 && c - count(before, *le) >= p * total)
        .map_or(f64::NAN, |(le, _)| *le)
}

/// CPU seconds of the gateway process and of this process (the hub, the simulator and the
/// feed reader) since `since`.
fn cpu_since(pid: u32, since: (Duration, Duration)) -> (Duration, Duration) {
    let now = (support::process_cpu(pid), support::process_cpu(std::process::id()));
    (now.0.saturating_sub(since.0), now.1.saturating_sub(since.1))
}

fn print_cpu(what: &str, pid: u32, since: (Duration, Duration), wall: Duration) {
    let (gw, here) = cpu_since(pid, since);
    println!(
        "CPU {what:<41}: gateway {:.2} s, hub + simulator + feed reader {:.2} s, over {:.2} s",
        gw.as_secs_f64(),
        here.as_secs_f64(),
        wall.as_secs_f64()
    );
}

async fn metric(http: &reqwest::Client, admin_addr: std::net::SocketAddr, name_and_labels: &str) -> f64 {
    let text = match http.get(format!("http://{admin_addr}/metrics")).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    text.lines()
        .filter(|l| l.starts_with(name_and_labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::main]
async fn main() {
    let numbers: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let apps = numbers.first().map_or(10_000, |n| *n as usize);
    // The gateway re-lists every 5 minutes by default; the bench re-lists every 30 s so that
    // three re-lists are measured in minutes, and starts the churn right after one so that the
    // churn measures changes in steady state (how many re-lists overlapped it is printed).
    let resync = numbers.get(1).copied().unwrap_or(30);
    argocd_gateway::tls::install_crypto_provider();
    let dir = tempfile::tempdir().expect("temp dir");
    let hub = hub::start(ServeArgs {
        hostnames: vec!["localhost".into()],
        grpc_addr: "127.0.0.1:0".parse().expect("addr"),
        http_addr: "127.0.0.1:0".parse().expect("addr"),
        health_check_interval: Duration::from_secs(3600),
        ..ServeArgs::new(dir.path().join("hub"))
    })
    .await
    .expect("hub");
    let admin = std::fs::read_to_string(&hub.admin_token_path).expect("admin token");
    let admin = admin.trim().to_owned();
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
        .bearer_auth(&admin)
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
        .args(["--resync-interval", &format!("{resync}s")])
        .env("RUST_LOG", "info")
        // As the container image runs it (see Dockerfile).
        .env("MALLOC_ARENA_MAX", "2")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("gateway log file"))
        .kill_on_drop(true)
        .spawn()
        .expect("gateway process");
    let pid = gateway.id().unwrap_or_default();

    let gateway_id = loop {
        let v = async {
            http.get(format!("{api}/api/v1/gateways"))
                .bearer_auth(&admin)
                .send()
                .await
                .ok()?
                .json::<serde_json::Value>()
                .await
                .ok()
        }
        .await;
        if let Some(v) = v
            && v["items"][0]["connected"] == true
        {
            break v["items"][0]["id"].as_str().unwrap_or_default().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    print_memory("idle, connected", memory(pid), 16.0, None);
    println!(
        "  of which anonymous {:.1} MiB, file-backed (the binary's pages) {:.1} MiB",
        status_mib(pid, "RssAnon:"),
        status_mib(pid, "RssFile:")
    );

    let fixtures = support::fixtures();
    let made: Vec<serde_json::Value> = (0..apps)
        .map(|i| support::real_sized_app(&fixtures, i, "argocd", 14))
        .collect();
    // The gateway is watching: the applications reach it as Argo CD's watch events.
    let started = Instant::now();
    for app in made {
        sim.upsert_app(app);
    }
    let count = || async {
        http.get(format!("{api}/api/v1/gateways/{gateway_id}"))
            .bearer_auth(&admin)
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
        "{apps} real-sized applications added → all at the hub: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    print_memory(&format!("with {apps} applications"), memory(pid), 64.0, Some(80.0));

    // Three re-lists: each compares everything and sends nothing.
    let lists = "argocd_gateway_argocd_responses_total{method=\"GET\",endpoint=\"/api/v1/applications\"";
    let before = metric(&http, admin_addr, lists).await;
    while metric(&http, admin_addr, lists).await < before + 3.0 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    print_memory("after three re-lists", memory(pid), 64.0, Some(80.0));

    let arrivals: Arrivals = Arc::default();
    let feed = tokio::spawn(follow_feed(http.clone(), api.clone(), admin.clone(), arrivals.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Churn at 500 changes/s: latency of each change until the hub has it.
    // Right after a re-list, so that the churn measures changes in steady state.
    let lists_before = metric(&http, admin_addr, lists).await;
    while metric(&http, admin_addr, lists).await < lists_before + 1.0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Argo CD 3.x: after the list, the watch replays every application first.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let lists_before = metric(&http, admin_addr, lists).await;
    let cpu0 = (support::process_cpu(pid), support::process_cpu(std::process::id()));
    let lag0 = lag_buckets(&http, &api, &admin).await;
    let t0 = Instant::now();
    let made = churn(&sim, apps, "paced", 10_000, 500).await;
    let mut latencies = arrived(&arrivals, &made, Duration::from_secs(30)).await;
    latencies.sort();
    println!(
        "Argo CD change → hub, 500 changes/s          : p50 {:?}, p99 {:?}, max {:?} ({} of {} seen; the rest coalesced) (target p99 <= 25 ms)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default(),
        latencies.len(),
        made.len()
    );
    println!(
        "  re-lists during the churn: {} (every {resync} s; `-- {apps} SECONDS` to change)",
        metric(&http, admin_addr, lists).await - lists_before
    );
    print_cpu("during churn at 500 changes/s", pid, cpu0, t0.elapsed());
    let lag1 = lag_buckets(&http, &api, &admin).await;
    println!(
        "  of which waiting at the gateway (hub's relay lag): p50 <= {} s, p99 <= {} s",
        lag_quantile(&lag0, &lag1, 0.5),
        lag_quantile(&lag0, &lag1, 0.99)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    print_memory("after churn of 10,000 changes", memory(pid), 64.0, Some(80.0));

    // As fast as the simulator takes changes: how many per second reach the hub.
    let cpu0 = (support::process_cpu(pid), support::process_cpu(std::process::id()));
    let t0 = Instant::now();
    let made = churn(&sim, apps, "burst", 10_000, 0).await;
    let issued = t0.elapsed();
    let seen = arrived(&arrivals, &made, Duration::from_secs(60)).await;
    let last = {
        let a = arrivals.lock().expect("arrivals");
        made.iter().filter_map(|(m, _)| a.get(m)).max().copied()
    };
    let took = last.map_or(Duration::ZERO, |l| l.saturating_duration_since(t0));
    println!(
        "changes end to end                           : {:.0} changes/s (10,000 made in {:.2} s, all at the hub after {:.2} s; {} seen individually)",
        made.len() as f64 / took.as_secs_f64().max(1e-9),
        issued.as_secs_f64(),
        took.as_secs_f64(),
        seen.len()
    );
    print_cpu("during the burst", pid, cpu0, t0.elapsed());
    feed.abort();
    let _ = gateway.kill().await;
    hub.shutdown().await;
    sim.shutdown();
}
