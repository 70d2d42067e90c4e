//! Ingest: what one list of 10,000 real-sized applications costs the gateway, through the real
//! path — the Argo CD client reading the HTTP body over loopback into the converging view — for
//! the first list (everything new) and for unchanged re-lists (everything compared, nothing
//! sent), printed against two parses of the very same bytes: into a `serde_json::Value` and into
//! `IgnoredAny` (the floor: JSON read, nothing kept). Figures, never assertions.
//!
//! The view runs alone on one thread (a current-thread runtime) and that thread's CPU time is
//! what is counted: HTTP, splitting, decoding and comparing; the simulator serving the list runs
//! on other threads and is not counted.
//!
//! `cargo bench --bench ingest` (optionally `-- APPS`, default 10000).

mod support;

use std::hint::black_box;
use std::time::Duration;

use argocd_gateway::argocd::{ArgoCdArgs, ArgoCdConfig, Client, View, ViewOptions};
use argocd_gateway::simulator::{SimOptions, SimTls, Simulator, TokenSpec};
use clap::Parser;
use support::thread_cpu;

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    argocd: ArgoCdArgs,
}

/// Unchanged re-lists measured after the first list.
const RELISTS: usize = 3;

fn best_cpu(runs: usize, mut f: impl FnMut()) -> Duration {
    (0..runs)
        .map(|_| {
            let t = thread_cpu();
            f();
            thread_cpu() - t
        })
        .min()
        .unwrap_or_default()
}

fn main() {
    let apps: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(10_000);
    argocd_gateway::tls::install_crypto_provider();
    let sim_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let sim = sim_rt
        .block_on(Simulator::start(SimOptions {
            tls: SimTls::Plaintext,
            ..Default::default()
        }))
        .expect("simulator");
    let fixtures = support::fixtures();
    for i in 0..apps {
        sim.upsert_app(support::real_sized_app(&fixtures, i, "argocd", 14));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, sim.add_token(TokenSpec::account("gateway"))).expect("token");

    // The exact bytes the gateway reads.
    let token = std::fs::read_to_string(&token_file).expect("token");
    let bytes = sim_rt.block_on(async {
        reqwest::Client::new()
            .get(format!("{}/api/v1/applications", sim.url()))
            .bearer_auth(token.trim())
            .send()
            .await
            .expect("list")
            .bytes()
            .await
            .expect("list body")
    });
    println!(
        "list of {apps} applications: {:.1} MiB, {:.1} KB each",
        bytes.len() as f64 / (1024.0 * 1024.0),
        bytes.len() as f64 / apps as f64 / 1000.0
    );
    let value = best_cpu(3, || {
        let v: serde_json::Value = serde_json::from_slice(black_box(&bytes)).expect("JSON");
        black_box(v);
    });
    let ignored = best_cpu(3, || {
        let v: serde::de::IgnoredAny = serde_json::from_slice(black_box(&bytes)).expect("JSON");
        black_box(v);
    });

    // The gateway's view, polling (each poll is a full list), on a thread of its own.
    let flags = Flags::try_parse_from([
        "ingest",
        "--argocd-server",
        &sim.url(),
        "--argocd-plaintext",
        "--argocd-token-file",
        &token_file.display().to_string(),
        "--watch=false",
        "--poll-interval",
        "1s",
        "--cluster-interval",
        "1h",
    ])
    .expect("flags");
    let config = ArgoCdConfig::from_args(&flags.argocd, vec![]).expect("config");
    let sim_seen = sim.clone();
    let lists = std::thread::spawn(move || {
        let sim = sim_seen;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let cancel = tokio_util::sync::CancellationToken::new();
            let start = thread_cpu();
            let view = View::spawn(
                Client::new(config).expect("client"),
                ViewOptions::default(),
                cancel.clone(),
            );
            // A list is done when the next one is asked for: the view polls again only a poll
            // interval after it has applied a list. Counting the simulator's application list
            // requests keeps the other loops' polls (clusters, ApplicationSets, projects), which
            // also move the view's status, out of the marks.
            // The log is emptied after each look: copying a log that grows by 10,000 full-object
            // GETs every 20 ms would itself cost this thread more than a list. (A request logged
            // between the two calls would be missed; that is two lock acquisitions apart.)
            let mut logged = 0;
            let mut app_lists = || {
                logged += sim
                    .requests()
                    .iter()
                    .filter(|r| r.method == "GET" && r.path == "/api/v1/applications")
                    .count();
                sim.clear_requests();
                logged
            };
            let status = view.status_watch();
            let mut marks = vec![];
            let mut seen = 0;
            while marks.len() < RELISTS + 1 {
                let now = app_lists();
                if now > seen {
                    seen = now;
                    // Request n started: list n - 1 is done. Before the view holds every
                    // application (its first list, and the full objects it fetches for list
                    // items without per-resource health) a new request marks nothing: the
                    // first list is everything until then.
                    let synced = status.borrow().apps_synced && view.application_count() == apps;
                    if synced {
                        marks.push(thread_cpu());
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            assert_eq!(view.application_count(), apps, "every application is in the view");
            cancel.cancel();
            view.stopped().await;
            let mut spans = vec![marks[0] - start];
            spans.extend(marks.windows(2).map(|w| w[1] - w[0]));
            spans
        })
    })
    .join()
    .expect("view thread");
    let first = lists[0];
    let relist = lists[1..].iter().min().copied().unwrap_or_default();
    let ratio = |d: Duration, base: Duration| d.as_secs_f64() / base.as_secs_f64();
    println!("serde_json::Value parse    : {:>7.3} s", value.as_secs_f64());
    println!("IgnoredAny parse           : {:>7.3} s", ignored.as_secs_f64());
    println!(
        "gateway, first list        : {:>7.3} s   {:.2}x Value, {:.1}x IgnoredAny",
        first.as_secs_f64(),
        ratio(first, value),
        ratio(first, ignored)
    );
    println!(
        "gateway, unchanged re-list : {:>7.3} s   {:.2}x Value (target <= 0.5), {:.1}x IgnoredAny (target <= 4)  [best of {RELISTS}]",
        relist.as_secs_f64(),
        ratio(relist, value),
        ratio(relist, ignored)
    );
    sim.shutdown();
}
