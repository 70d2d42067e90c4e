//! The converging view against the simulator, including a seeded randomized convergence test.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use argocd_gateway::argocd::model::{HealthStatusCode, decode_application};
use argocd_gateway::argocd::{AppKey, Application, ListFigures, View, ViewEvent, ViewHandle, ViewOptions};
use argocd_gateway::simulator::{SimHandle, SimTls, TokenSpec};
use serde_json::json;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::common::{Env, Mode, eventually, eventually_within, start, within};

fn fast_options() -> ViewOptions {
    ViewOptions {
        retry_base: Duration::from_millis(5),
        retry_max: Duration::from_millis(50),
        ..ViewOptions::default()
    }
}

fn spawn(env: &Env, mode: Mode, extra: &[&str]) -> (ViewHandle, CancellationToken) {
    let cancel = CancellationToken::new();
    let view = View::spawn(env.client(mode, extra), fast_options(), cancel.clone());
    (view, cancel)
}

/// The simulator's state as the model sees it (full objects, as Get returns them).
fn truth(sim: &SimHandle) -> BTreeMap<AppKey, Application> {
    sim.apps()
        .into_iter()
        .map(|v| {
            let a = decode_application(&v.to_string())
                .expect("simulator objects decode")
                .app;
            (a.key(), a)
        })
        .collect()
}

fn seen(view: &ViewHandle) -> BTreeMap<AppKey, Application> {
    view.applications()
        .into_iter()
        .map(|(k, v)| (k, (*v).clone()))
        .collect()
}

fn drain(rx: &mut broadcast::Receiver<ViewEvent>) -> Vec<ViewEvent> {
    let mut out = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        out.push(ev);
    }
    out
}

fn list_count(sim: &SimHandle) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.path == "/api/v1/applications")
        .count()
}

#[tokio::test]
async fn view_syncs_and_emits_only_real_changes() {
    let env = start(SimTls::SelfSigned, "v2.14.7").await;
    env.sim.add_synthetic_apps(5);
    let (view, cancel) = spawn(&env, Mode::VerifyWithCa, &["--resync-interval", "100ms"]);
    within(view.wait_synced()).await;
    assert_eq!(seen(&view), truth(&env.sim));
    let (snap, mut rx) = view.snapshot_and_subscribe();
    assert_eq!(snap.apps.len(), 5);

    env.sim.set_health("argocd", "app-00003", "Degraded", "crashloop");
    eventually("health change seen", || {
        view.application(&AppKey::new("argocd", "app-00003"))
            .is_some_and(|a| a.health.status == HealthStatusCode::Degraded)
    })
    .await;
    let evs = drain(&mut rx);
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert!(matches!(&evs[0], ViewEvent::AppUpsert(a) if a.name == "app-00003" && a.health.message == "crashloop"));

    // Several full re-lists of unchanged state emit nothing.
    let lists = list_count(&env.sim);
    eventually("three more re-lists", || list_count(&env.sim) >= lists + 3).await;
    assert_eq!(drain(&mut rx), vec![], "re-lists of unchanged state emit nothing");
    // And decode nothing again: every item is byte for byte what the view last decoded.
    assert_eq!(view.status().last_app_list, ListFigures { items: 5, unchanged: 5 });

    env.sim.delete_app("argocd", "app-00001");
    eventually("delete seen", || {
        view.application(&AppKey::new("argocd", "app-00001")).is_none()
    })
    .await;
    assert_eq!(
        drain(&mut rx),
        vec![ViewEvent::AppDelete(AppKey::new("argocd", "app-00001"))]
    );
    assert!(view.status().is_healthy());
    cancel.cancel();
    within(view.stopped()).await;
}

#[tokio::test]
async fn three_x_relists_keep_resource_health() {
    let env = start(SimTls::Plaintext, "v3.5.1").await;
    env.sim.add_synthetic_apps(3);
    let (view, cancel) = spawn(&env, Mode::Plaintext, &["--resync-interval", "100ms"]);
    within(view.wait_synced()).await;
    // The list has no resource health; the watch replay right after it brings it.
    eventually("watch replay brings resource health", || seen(&view) == truth(&env.sim)).await;
    let mut rx = view.subscribe();
    // A watch event brings per-resource health that 3.x lists omit.
    env.sim.set_resource_health("argocd", "app-00000", 1, "Progressing");
    let key = AppKey::new("argocd", "app-00000");
    eventually("resource health via watch", || {
        view.application(&key).is_some_and(|a| {
            a.resources[1].health.as_ref().map(|h| h.status.clone()) == Some(HealthStatusCode::Progressing)
        })
    })
    .await;
    let lists = list_count(&env.sim);
    eventually("re-lists", || list_count(&env.sim) >= lists + 3).await;
    let evs = drain(&mut rx);
    assert_eq!(evs.len(), 1, "only the watch change, no flapping on re-list: {evs:?}");
    assert_eq!(seen(&view), truth(&env.sim));
    // Unchanged items are not decoded again, and skipping them keeps the health the list lacks.
    eventually("a re-list that decodes nothing", || {
        view.status().last_app_list == ListFigures { items: 3, unchanged: 3 }
    })
    .await;
    // Nor the replay that follows each list: the watch events are the objects the view last
    // decoded from the watch, byte for byte.
    let held = view.watch_events_held();
    eventually("a replay that decodes nothing", || view.watch_events_held() >= held + 3).await;
    assert_eq!(seen(&view), truth(&env.sim));
    assert_eq!(drain(&mut rx), vec![]);
    // A change after replays were skipped is still seen, and so is its replay after the next list.
    env.sim.set_resource_health("argocd", "app-00002", 0, "Degraded");
    let key = AppKey::new("argocd", "app-00002");
    eventually("resource health change after skipped replays", || {
        view.application(&key).is_some_and(|a| {
            a.resources[0].health.as_ref().map(|h| h.status.clone()) == Some(HealthStatusCode::Degraded)
        })
    })
    .await;
    let lists = list_count(&env.sim);
    eventually("re-lists", || list_count(&env.sim) >= lists + 3).await;
    assert_eq!(seen(&view), truth(&env.sim));
    cancel.cancel();
}

#[tokio::test]
async fn poll_only_mode_never_watches() {
    // 2.x: its lists carry everything, so polling alone reaches the full state.
    let env = start(SimTls::Plaintext, "v2.14.7").await;
    env.sim.add_synthetic_apps(2);
    let (view, cancel) = spawn(&env, Mode::Plaintext, &["--watch=false", "--poll-interval", "50ms"]);
    within(view.wait_synced()).await;
    env.sim.set_sync_status("argocd", "app-00001", "OutOfSync");
    eventually("poll picks up the change", || seen(&view) == truth(&env.sim)).await;
    assert!(env.sim.requests().iter().all(|r| !r.path.contains("/stream/")));
    cancel.cancel();
}

#[tokio::test]
async fn clusters_are_listed_and_diffed() {
    let env = start(SimTls::Plaintext, "v3.5.1").await;
    let (view, cancel) = spawn(&env, Mode::Plaintext, &["--cluster-interval", "50ms"]);
    eventually("clusters listed", || view.status().clusters_synced).await;
    let mut rx = view.subscribe();
    assert_eq!(view.clusters().len(), 1);
    env.sim.upsert_cluster(argocd_gateway::simulator::objects::cluster(
        "https://prod.example:6443",
        "prod",
    ));
    eventually("cluster added", || {
        view.clusters().contains_key("https://prod.example:6443")
    })
    .await;
    env.sim.remove_cluster("https://kubernetes.default.svc");
    eventually("cluster removed", || view.clusters().len() == 1).await;
    let evs = drain(&mut rx);
    assert!(
        matches!(&evs[0], ViewEvent::ClusterUpsert(c) if c.name == "prod"),
        "{evs:?}"
    );
    assert_eq!(
        evs[1],
        ViewEvent::ClusterDelete("https://kubernetes.default.svc".into())
    );
    assert_eq!(evs.len(), 2, "{evs:?}");
    cancel.cancel();
}

#[tokio::test]
async fn filters_and_project_tokens() {
    let env = start(SimTls::Plaintext, "v3.5.1").await;
    env.sim.add_synthetic_apps(9);
    let (view, cancel) = spawn(
        &env,
        Mode::Plaintext,
        &["--project", "team-a,team-b", "--selector", "tier=web"],
    );
    within(view.wait_synced()).await;
    let want: Vec<AppKey> = truth(&env.sim)
        .into_values()
        .filter(|a| a.project != "default" && a.labels.get("tier") == Some("web"))
        .map(|a| a.key())
        .collect();
    assert!(!want.is_empty());
    assert_eq!(view.applications().into_keys().collect::<Vec<_>>(), want);
    cancel.cancel();

    // Project tokens: one loop per project token file, each seeing only its project.
    let dir = env.dir.path().join("projects");
    std::fs::create_dir(&dir).expect("mkdir");
    for p in ["team-a", "team-b"] {
        std::fs::write(dir.join(p), env.sim.add_token(TokenSpec::project(p, "gw"))).expect("write");
    }
    std::fs::write(dir.join("_unscoped"), env.sim.add_token(TokenSpec::account("gw"))).expect("write");
    let url = env.sim.url();
    let args = crate::common::parse_args(&[
        "--argocd-server".into(),
        url,
        "--argocd-plaintext".into(),
        "--argocd-project-tokens-dir".into(),
        dir.display().to_string(),
        "--resync-interval".into(),
        "100ms".into(),
    ]);
    let cfg = argocd_gateway::argocd::ArgoCdConfig::from_args(&args, vec![]).expect("config");
    let opts = ViewOptions {
        retry_base: Duration::from_millis(5),
        ..ViewOptions::default()
    };
    let client = argocd_gateway::argocd::Client::with_retry(cfg, crate::common::fast_retry()).expect("client");
    let cancel = CancellationToken::new();
    let view = View::spawn(client, opts, cancel.clone());
    within(view.wait_synced()).await;
    let want: BTreeMap<AppKey, Application> = truth(&env.sim)
        .into_iter()
        .filter(|(_, a)| a.project != "default")
        .collect();
    eventually("project-scoped views converge", || seen(&view) == want).await;
    // Moving an app between scoped projects: it ends up owned by the other scope.
    env.sim.set_project("argocd", "app-00001", "team-b");
    eventually("moved app seen", || {
        view.application(&AppKey::new("argocd", "app-00001"))
            .is_some_and(|a| a.project == "team-b")
    })
    .await;
    env.sim.set_project("argocd", "app-00002", "default");
    eventually("app moved out of scope disappears", || {
        view.application(&AppKey::new("argocd", "app-00002")).is_none()
    })
    .await;
    cancel.cancel();
}

#[tokio::test]
async fn failures_show_in_status_and_recover() {
    let env = start(SimTls::Plaintext, "v3.5.1").await;
    env.sim.add_synthetic_apps(2);
    env.sim.revoke_token(&env.token);
    let (view, cancel) = spawn(&env, Mode::Plaintext, &["--resync-interval", "100ms"]);
    eventually("401 recorded", || {
        matches!(
            view.status().failing.get("applications"),
            Some(argocd_gateway::argocd::ArgoCdError::Unauthorized { .. })
        )
    })
    .await;
    assert!(!view.has_synced());
    let fresh = env.sim.add_token(TokenSpec::account("gateway"));
    std::fs::write(&env.token_path, fresh).expect("rotate");
    within(view.wait_synced()).await;
    eventually("healthy again", || view.status().is_healthy()).await;
    eventually("converged", || seen(&view) == truth(&env.sim)).await;
    cancel.cancel();
}

/// A small reproducible PRNG (xorshift64*), so failures can be replayed from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

async fn converge_with_seed(seed: u64, version: &str) {
    let env = start(SimTls::Plaintext, version).await;
    env.sim.add_synthetic_apps(8);
    let (view, cancel) = spawn(&env, Mode::Plaintext, &["--resync-interval", "150ms"]);
    within(view.wait_synced()).await;
    let mut rng = Rng(seed);
    let mut next_app = 100usize;
    let healths = [
        "Healthy",
        "Progressing",
        "Degraded",
        "Suspended",
        "Missing",
        "Unknown",
        "Rebooting",
    ];
    let syncs = ["Synced", "OutOfSync", "Unknown"];
    let phases = ["Running", "Succeeded", "Failed", "Error", "Terminating"];
    for step in 0..120 {
        let names: Vec<(String, String)> = env
            .sim
            .apps()
            .iter()
            .map(|a| {
                (
                    a["metadata"]["namespace"].as_str().unwrap_or_default().to_owned(),
                    a["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let pick = |rng: &mut Rng| names.get(rng.below(names.len().max(1) as u64) as usize).cloned();
        match rng.below(16) {
            0 => {
                let mut app = argocd_gateway::simulator::objects::synthetic_app(next_app, "argocd");
                if rng.below(2) == 0 {
                    app["metadata"]["namespace"] = "other-ns".into();
                }
                next_app += 1;
                env.sim.upsert_app(app);
            }
            1 => {
                if let Some((ns, n)) = pick(&mut rng) {
                    env.sim.delete_app(&ns, &n);
                }
            }
            2 | 3 => {
                if let Some((ns, n)) = pick(&mut rng) {
                    let h = healths[rng.below(healths.len() as u64) as usize];
                    env.sim.set_health(&ns, &n, h, &format!("step {step}"));
                }
            }
            4 => {
                if let Some((ns, n)) = pick(&mut rng) {
                    env.sim.set_sync_status(&ns, &n, syncs[rng.below(3) as usize]);
                }
            }
            5 => {
                if let Some((ns, n)) = pick(&mut rng) {
                    env.sim.set_revision(&ns, &n, &format!("{:040x}", rng.next()));
                }
            }
            6 => {
                if let Some((ns, n)) = pick(&mut rng) {
                    env.sim.set_operation_phase(&ns, &n, phases[rng.below(5) as usize]);
                }
            }
            7 => {
                if let Some((ns, n)) = pick(&mut rng) {
                    env.sim
                        .set_resource_health(&ns, &n, rng.below(2) as usize, healths[rng.below(6) as usize]);
                }
            }
            8 => env.sim.drop_watch_events(1 + rng.below(3) as u32),
            9 => env.sim.disconnect_watches(),
            10 => env.sim.malformed_watch_lines(1),
            11 => env.sim.fail_watches(503, "injected"),
            12 => env.sim.stall_watches(rng.below(2) == 0),
            13 => env
                .sim
                .fail_requests("/api/v1/applications", 1 + rng.below(2) as u32, 500),
            14 => {
                if let Some((ns, n)) = pick(&mut rng) {
                    env.sim.touch(&ns, &n);
                }
            }
            _ => tokio::time::sleep(Duration::from_millis(rng.below(30))).await,
        }
        if rng.below(4) == 0 {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(rng.below(5))).await;
        }
    }
    env.sim.clear_faults();
    let want = truth(&env.sim);
    let mut last = BTreeMap::new();
    let converged = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            last = seen(&view);
            if last == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if converged.is_err() {
        let missing: Vec<_> = want.keys().filter(|k| !last.contains_key(*k)).collect();
        let extra: Vec<_> = last.keys().filter(|k| !want.contains_key(*k)).collect();
        let differ: Vec<_> = want
            .iter()
            .filter(|(k, v)| last.get(*k).is_some_and(|l| l != *v))
            .map(|(k, _)| k)
            .collect();
        panic!("seed {seed}: view did not converge; missing {missing:?} extra {extra:?} differ {differ:?}");
    }
    // The last events replayed onto the pre-fault state agree with the view's state too.
    let (snap, _rx) = view.snapshot_and_subscribe();
    let snap: BTreeMap<AppKey, Application> = snap
        .apps
        .into_iter()
        .map(|(k, v)| (k, Arc::unwrap_or_clone(v)))
        .collect();
    assert_eq!(snap, want, "seed {seed}");
    cancel.cancel();
    within(view.stopped()).await;
}

#[tokio::test]
async fn randomized_interleavings_converge() {
    for seed in [0x5EED_0001, 0xC0FF_EE42, 0xDEAD_BEEF_1234] {
        converge_with_seed(seed, "v2.14.7").await;
    }
}

#[tokio::test]
async fn randomized_interleavings_converge_on_3x() {
    // 3.x lists omit per-resource health: dropped resource-health changes must still converge.
    converge_with_seed(0x3333_0003, "v3.5.1").await;
}

#[tokio::test]
async fn polling_three_x_fetches_only_changed_apps_for_resource_health() {
    let env = start(SimTls::Plaintext, "v3.5.1").await;
    env.sim.add_synthetic_apps(4);
    let (view, cancel) = spawn(&env, Mode::Plaintext, &["--watch=false", "--poll-interval", "50ms"]);
    within(view.wait_synced()).await;
    eventually("initial per-resource health fetched", || seen(&view) == truth(&env.sim)).await;
    let gets = |sim: &SimHandle| {
        sim.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.starts_with("/api/v1/applications/"))
            .map(|r| r.path.clone())
            .collect::<Vec<_>>()
    };
    env.sim.clear_requests();
    env.sim.set_resource_health("argocd", "app-00002", 0, "Degraded");
    eventually("changed resource health polled", || seen(&view) == truth(&env.sim)).await;
    let lists = list_count(&env.sim);
    eventually("two more polls", || list_count(&env.sim) >= lists + 2).await;
    let fetched = gets(&env.sim);
    assert!(!fetched.is_empty());
    assert!(
        fetched.iter().all(|p| p == "/api/v1/applications/app-00002"),
        "{fetched:?}"
    );
    assert!(env.sim.requests().iter().all(|r| !r.path.contains("/stream/")));
    cancel.cancel();
}

#[tokio::test]
async fn a_burst_with_dropped_watch_events_converges_without_waiting_for_the_resync() {
    // argocd-server drops events for a watcher that falls behind and keeps the stream open;
    // after a burst the view re-lists on its own instead of waiting for --resync-interval.
    let env = start(SimTls::Plaintext, "v3.5.1").await;
    env.sim.add_synthetic_apps(2);
    let (view, cancel) = spawn(&env, Mode::Plaintext, &["--resync-interval", "10m"]);
    within(view.wait_synced()).await;
    // The watch is live once a change arrives through it.
    env.sim.set_health("argocd", "app-00001", "Degraded", "");
    eventually("the watch delivers", || seen(&view) == truth(&env.sim)).await;
    let lists = list_count(&env.sim);
    env.sim.drop_watch_events(40);
    env.sim.add_synthetic_apps(700);
    eventually("the view holds every app of the burst", || {
        seen(&view) == truth(&env.sim)
    })
    .await;
    assert!(list_count(&env.sim) > lists, "converged by re-listing after the burst");
    cancel.cancel();
}

/// A TCP proxy to `upstream` that hands the client at most `bytes_per_sec` of what the server
/// sends: a gateway that reads its watch slowly (a CPU-throttled pod), seen from the network.
async fn throttled_proxy(upstream: std::net::SocketAddr, bytes_per_sec: usize) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("proxy addr");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    let _ = sw.shutdown().await;
                });
                // Ten slices a second keep the pace smooth.
                let slice = (bytes_per_sec / 10).max(1);
                let mut buf = vec![0u8; slice];
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let _ = cw.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_burst_read_slowly_with_dropped_events_still_converges_without_the_resync() {
    // The same burst as above, but the gateway takes its time reading it (as a pod throttled to
    // its CPU request would): far fewer than 500 events arrive in any one second, yet what
    // arrived since the list is enough to know events may have been dropped.
    let env = start(SimTls::Plaintext, "v3.5.1").await;
    env.sim.add_synthetic_apps(2);
    let sim_addr: std::net::SocketAddr = env
        .sim
        .url()
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("simulator address");
    let proxy = throttled_proxy(sim_addr, 400 * 1024).await;
    let flags = vec![
        "--argocd-server".to_owned(),
        format!("http://{proxy}"),
        "--argocd-plaintext".to_owned(),
        "--argocd-token-file".to_owned(),
        env.token_path.display().to_string(),
        "--resync-interval".to_owned(),
        "10m".to_owned(),
    ];
    let cfg = argocd_gateway::argocd::ArgoCdConfig::from_args(&crate::common::parse_args(&flags), vec![])
        .expect("valid config");
    let options = fast_options();
    let client = argocd_gateway::argocd::Client::with_retry(cfg, crate::common::fast_retry()).expect("client");
    let cancel = CancellationToken::new();
    let view = View::spawn(client, options, cancel.clone());
    within(view.wait_synced()).await;
    env.sim.set_health("argocd", "app-00001", "Degraded", "");
    eventually("the watch delivers", || seen(&view) == truth(&env.sim)).await;
    let lists = list_count(&env.sim);
    env.sim.drop_watch_events(40);
    env.sim.add_synthetic_apps(700);
    // Generous: the throttled link alone needs several seconds for the burst and the re-list.
    eventually_within("the slowly read burst converges", Duration::from_secs(90), || {
        seen(&view) == truth(&env.sim)
    })
    .await;
    assert!(list_count(&env.sim) > lists, "converged by re-listing after the burst");
    cancel.cancel();
}

#[tokio::test]
async fn a_change_made_between_the_list_and_the_watch_is_not_lost() {
    // Argo CD 2.x: the watch resumes from the list's resourceVersion and does not replay what
    // changed between the list and its subscription. The view subscribes first.
    let env = start(SimTls::Plaintext, "v2.14.7").await;
    env.sim.add_synthetic_apps(3);
    let (view, cancel) = spawn(&env, Mode::Plaintext, &["--resync-interval", "10m"]);
    within(view.wait_synced()).await;
    env.sim.set_health("argocd", "app-00000", "Degraded", "");
    eventually("the watch delivers", || seen(&view) == truth(&env.sim)).await;
    for round in 0..3 {
        let message = format!("changed right after list {round}");
        env.sim.after_next_list(move |sim| {
            sim.set_health("argocd", "app-00002", "Progressing", &message);
        });
        // The watch is cut: the view re-lists, and the change lands right after that list.
        env.sim.disconnect_watches();
        eventually("the change made right after the list arrives", || {
            view.application(&AppKey::new("argocd", "app-00002"))
                .is_some_and(|a| a.health.message == format!("changed right after list {round}"))
        })
        .await;
    }
    assert_eq!(seen(&view), truth(&env.sim));
    cancel.cancel();
}

#[tokio::test]
async fn an_application_that_cannot_be_read_keeps_its_last_known_state_marked() {
    let env = start(SimTls::Plaintext, "v2.14.7").await;
    env.sim.add_synthetic_apps(3);
    let (view, cancel) = spawn(&env, Mode::Plaintext, &["--resync-interval", "10m"]);
    within(view.wait_synced()).await;
    let key = AppKey::new("argocd", "app-00001");
    let before = view.application(&key).expect("known");
    // A health of the wrong type: its meaning cannot be read.
    env.sim
        .modify_app("argocd", "app-00001", |a| a["status"]["health"] = json!(42));
    eventually("the application is marked undecodable", || {
        view.application(&key).is_some_and(|a| a.undecodable.is_some())
    })
    .await;
    let marked = view.application(&key).unwrap();
    assert_eq!(marked.health, before.health, "the last known health is kept");
    assert!(
        marked.undecodable.as_deref().unwrap().contains("app-00001"),
        "{marked:?}"
    );
    assert_eq!(view.application_count(), 3, "nothing is dropped");
    // Secondary fields of an odd shape do not make an application undecodable.
    env.sim.modify_app("argocd", "app-00000", |a| {
        a["status"]["conditions"] = json!("not a list");
        a["status"]["summary"] = json!(7);
        a["status"]["sync"] = json!("OutOfSync");
    });
    eventually("a leniently read application is current", || {
        view.application(&AppKey::new("argocd", "app-00000")).is_some_and(|a| {
            a.sync.status == argocd_gateway::argocd::model::SyncStatusCode::OutOfSync && a.undecodable.is_none()
        })
    })
    .await;
    // A new application that cannot be read appears as a marked stub.
    let mut odd = argocd_gateway::simulator::objects::synthetic_app(9, "argocd");
    odd["status"]["health"] = json!([1]);
    env.sim.upsert_app(odd);
    eventually("the unreadable new application is a marked stub", || {
        view.application(&AppKey::new("argocd", "app-00009"))
            .is_some_and(|a| a.undecodable.is_some() && a.project == "default")
    })
    .await;
    // Repaired, it is read again and the mark goes.
    env.sim.modify_app("argocd", "app-00001", |a| {
        a["status"]["health"] = json!({"status": "Healthy"})
    });
    eventually("the repaired application is unmarked", || {
        view.application(&key).is_some_and(|a| a.undecodable.is_none())
    })
    .await;
    cancel.cancel();
}

/// A JSON value nested `depth` arrays deep (built directly: no parser here reads one).
fn nested(depth: usize) -> serde_json::Value {
    let mut v = json!([]);
    for _ in 0..depth {
        v = serde_json::Value::Array(vec![v]);
    }
    v
}

#[tokio::test]
async fn a_list_that_cannot_be_read_changes_nothing() {
    // Polling, so only lists change the view.
    let env = start(SimTls::Plaintext, "v2.14.7").await;
    env.sim.add_synthetic_apps(4);
    let (view, cancel) = spawn(&env, Mode::Plaintext, &["--watch=false", "--poll-interval", "100ms"]);
    within(view.wait_synced()).await;
    // A list whose body is cut off: nothing of it is applied, although an app was deleted.
    env.sim.truncate_lists(3);
    env.sim.delete_app("argocd", "app-00003");
    eventually("the broken lists are reported", || !view.status().failing.is_empty()).await;
    assert_eq!(
        view.application_count(),
        4,
        "a list that cannot be read removes nothing"
    );
    eventually("good lists apply again", || seen(&view) == truth(&env.sim)).await;

    // A list with an object that cannot even be identified (an array nested 300 deep where
    // an application belongs): the others are applied, but nothing is removed.
    env.sim.append_to_lists(vec![nested(300)]);
    env.sim.delete_app("argocd", "app-00002");
    env.sim.set_health("argocd", "app-00000", "Degraded", "still applied");
    eventually("the readable items are applied", || {
        view.application(&AppKey::new("argocd", "app-00000"))
            .is_some_and(|a| a.health.message == "still applied")
    })
    .await;
    let lists = list_count(&env.sim);
    eventually("more lists", || list_count(&env.sim) > lists + 3).await;
    assert!(
        view.application(&AppKey::new("argocd", "app-00002")).is_some(),
        "no application is removed while an object cannot be identified"
    );
    env.sim.clear_faults();
    eventually("the deletion applies once every object reads", || {
        view.application(&AppKey::new("argocd", "app-00002")).is_none()
    })
    .await;
    cancel.cancel();
}

#[tokio::test]
async fn a_watch_that_goes_silent_is_replaced() {
    let env = crate::common::start_with(argocd_gateway::simulator::SimOptions {
        tls: SimTls::Plaintext,
        version: "v2.14.7".into(),
        sse_keepalive: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    env.sim.add_synthetic_apps(2);
    let (view, cancel) = spawn(
        &env,
        Mode::Plaintext,
        &["--resync-interval", "10m", "--argocd-watch-idle-timeout", "1s"],
    );
    within(view.wait_synced()).await;
    let lists = list_count(&env.sim);
    // The connection stays open but nothing comes through, not even keepalives.
    env.sim.freeze_watches(true);
    env.sim.set_health("argocd", "app-00001", "Degraded", "while frozen");
    eventually("the silent watch is noticed", || list_count(&env.sim) > lists).await;
    env.sim.freeze_watches(false);
    eventually("the change made meanwhile arrives", || seen(&view) == truth(&env.sim)).await;
    cancel.cancel();
}

/// A log sink for one test's subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    fn lines_with(&self, needle: &str) -> usize {
        self.text().lines().filter(|l| l.contains(needle)).count()
    }
}

#[test]
fn every_watch_failure_is_logged_once_and_repeats_are_summarised() {
    let logs = Captured::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    // One thread runs everything, so this subscriber sees every line of the view.
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let env = crate::common::start_with(argocd_gateway::simulator::SimOptions {
            tls: SimTls::Plaintext,
            version: "v2.14.7".into(),
            sse_keepalive: Duration::from_millis(100),
            ..Default::default()
        })
        .await;
        env.sim.add_synthetic_apps(2);
        let (view, cancel) = spawn(
            &env,
            Mode::Plaintext,
            &[
                "--resync-interval",
                "10m",
                "--argocd-watch-idle-timeout",
                "1s",
                "--argocd-max-line-bytes",
                "200000",
            ],
        );
        within(view.wait_synced()).await;
        let relisted = |n: usize| {
            let sim = env.sim.clone();
            move || list_count(&sim) > n
        };
        // An error chunk inside the stream.
        let n = list_count(&env.sim);
        env.sim.fail_watches(500, "the watch broke on purpose");
        eventually("re-listed after the error chunk", relisted(n)).await;
        // A malformed line.
        let n = list_count(&env.sim);
        env.sim.malformed_watch_lines(1);
        env.sim.set_health("argocd", "app-00000", "Degraded", "a");
        eventually("re-listed after the malformed line", relisted(n)).await;
        // An oversized line.
        let n = list_count(&env.sim);
        env.sim.oversized_watch_line(300_000);
        env.sim.set_health("argocd", "app-00000", "Healthy", "b");
        eventually("re-listed after the oversized line", relisted(n)).await;
        // A stream that goes silent.
        let n = list_count(&env.sim);
        env.sim.freeze_watches(true);
        eventually("re-listed after the stall", relisted(n)).await;
        env.sim.freeze_watches(false);
        // The same failure five more times in a row.
        for round in 0..5 {
            let n = list_count(&env.sim);
            env.sim
                .fail_watches(500, &format!("the watch broke on purpose again {round}"));
            eventually("re-listed after a repeated error chunk", relisted(n)).await;
        }
        cancel.cancel();
    });
    let text = logs.text();
    assert_eq!(
        logs.lines_with("the watch broke on purpose"),
        1,
        "repeats are not logged each time:\n{text}"
    );
    assert_eq!(logs.lines_with("cannot decode"), 1, "the malformed line:\n{text}");
    assert_eq!(
        logs.lines_with("--argocd-max-line-bytes"),
        1,
        "the oversized line:\n{text}"
    );
    assert_eq!(logs.lines_with("stalled"), 1, "the silent stream:\n{text}");
    assert!(text.lines().all(|l| !l.contains("PRIVATE KEY")));
}
