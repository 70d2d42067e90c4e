//! End to end: the Argo CD simulator → a gateway daemon (`run`, in-process, real TLS gRPC) → a
//! hub → its HTTP API. Expectations are computed from the simulator's raw Argo CD JSON by this
//! file's own mapping, never through the gateway's model types.

#[path = "support/ports.rs"]
mod ports;
#[path = "support/postgres.rs"]
mod postgres;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use argocd_gateway::daemon::{DaemonArgs, DaemonError};
use argocd_gateway::hub::{self, Hub, ServeArgs};
use argocd_gateway::simulator::{SimHandle, SimOptions, SimTls, Simulator, TokenSpec};
use clap::Parser;
use ports::free_port;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

// Generous: each test here also runs on PostgreSQL, so a run holds twice the hubs and gateways
// (the huge application alone takes seconds to parse in a debug build on a busy machine).
const WAIT: Duration = Duration::from_secs(45);

#[derive(Parser)]
struct RunCli {
    #[command(flatten)]
    args: DaemonArgs,
}

fn serve_args(dir: &Path, grpc_port: u16, http_port: u16) -> ServeArgs {
    let mut args = ServeArgs {
        hostnames: vec!["localhost".into(), "127.0.0.1".into()],
        grpc_addr: format!("127.0.0.1:{grpc_port}").parse().unwrap(),
        http_addr: format!("127.0.0.1:{http_port}").parse().unwrap(),
        health_check_interval: Duration::from_secs(3600),
        ..ServeArgs::new(dir)
    };
    on_postgres::store_args(&mut args);
    args
}

struct Gateway {
    stop: CancellationToken,
    task: JoinHandle<Result<(), DaemonError>>,
    admin: SocketAddr,
}

struct Env {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    hub: Option<Hub>,
    ports: (u16, u16),
    admin_token: String,
    http: reqwest::Client,
    sim: SimHandle,
    argocd_token: String,
    registration_token: String,
    fingerprint: String,
    gateway: Option<Gateway>,
    gateway_id: String,
    resync: &'static str,
    tune: fn(&mut ServeArgs),
}

/// Argo CD's Application fixtures from its own test data.
fn fixture_apps() -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/argocd");
    let mut apps = vec![];
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "json") {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            if v["kind"] == "Application" && v["metadata"]["name"].is_string() {
                apps.push(v);
            }
        }
    }
    apps
}

impl Env {
    async fn start(synthetic: usize, resync: &'static str) -> Env {
        Self::start_tuned(synthetic, resync, |_| {}).await
    }

    /// Like `start`, with hub settings changed by `tune` (kept for hub restarts).
    async fn start_tuned(synthetic: usize, resync: &'static str, tune: fn(&mut ServeArgs)) -> Env {
        argocd_gateway::tls::install_crypto_provider();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let ports = (free_port(), free_port());
        let mut args = serve_args(&dir.join("hub"), ports.0, ports.1);
        tune(&mut args);
        let hub = hub::start(args).await.expect("hub starts");
        let admin_token = std::fs::read_to_string(&hub.admin_token_path)
            .unwrap()
            .trim()
            .to_owned();
        let sim = Simulator::start(SimOptions {
            tls: SimTls::Plaintext,
            ..Default::default()
        })
        .await
        .unwrap();
        sim.add_synthetic_apps(synthetic);
        for app in fixture_apps() {
            sim.upsert_app(app);
        }
        let argocd_token = sim.add_token(TokenSpec::account("gateway"));
        std::fs::write(dir.join("argocd-token"), &argocd_token).unwrap();
        let mut env = Env {
            _tmp: tmp,
            dir,
            hub: Some(hub),
            ports,
            admin_token,
            http: reqwest::Client::new(),
            sim,
            argocd_token,
            registration_token: String::new(),
            fingerprint: String::new(),
            gateway: None,
            gateway_id: String::new(),
            resync,
            tune,
        };
        let (status, tok) = env
            .api(
                Method::POST,
                "/api/v1/registration-tokens",
                Some(json!({"name": "e2e"})),
            )
            .await;
        assert_eq!(status, 201, "{tok}");
        env.registration_token = tok["token"].as_str().unwrap().to_owned();
        env.fingerprint = tok["caFingerprint"].as_str().unwrap().to_owned();
        env.start_gateway().await;
        let started = Instant::now();
        env.gateway_id = loop {
            let (_, list) = env.api(Method::GET, "/api/v1/gateways", None).await;
            let g = &list["items"][0];
            if g["connected"] == json!(true) {
                break s(g, &["id"]).to_owned();
            }
            assert!(
                started.elapsed() < WAIT,
                "the gateway did not register and connect: {list}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        env
    }

    fn hub(&self) -> &Hub {
        self.hub.as_ref().expect("hub running")
    }

    async fn start_gateway(&mut self) {
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let hub_url = format!("https://localhost:{}", self.ports.0);
        let identity = format!("file:{}", self.dir.join("identity.json").display());
        let token_file = self.dir.join("argocd-token").display().to_string();
        let admin_s = admin.to_string();
        let cli = RunCli::try_parse_from([
            "run",
            "--hub-url",
            &hub_url,
            "--hub-ca-fingerprint",
            &self.fingerprint,
            "--registration-token",
            &self.registration_token,
            "--identity",
            &identity,
            "--argocd-server",
            &self.sim.url(),
            "--argocd-plaintext",
            "--argocd-token-file",
            &token_file,
            "--admin-addr",
            &admin_s,
            "--keepalive-interval",
            "1",
            "--resync-interval",
            self.resync,
        ])
        .expect("flags parse");
        let stop = CancellationToken::new();
        let task = tokio::spawn(argocd_gateway::daemon::run(cli.args, stop.clone()));
        self.gateway = Some(Gateway { stop, task, admin });
    }

    async fn stop_gateway(&mut self) {
        let gw = self.gateway.take().expect("gateway running");
        gw.stop.cancel();
        let result = tokio::time::timeout(WAIT, gw.task)
            .await
            .expect("gateway stops")
            .unwrap();
        assert!(result.is_ok(), "gateway ended with {result:?}");
    }

    async fn stop_hub(&mut self) {
        self.hub.take().expect("hub running").shutdown().await;
    }

    async fn start_hub(&mut self) {
        let mut args = serve_args(&self.dir.join("hub"), self.ports.0, self.ports.1);
        (self.tune)(&mut args);
        self.hub = Some(hub::start(args).await.expect("hub restarts"));
    }

    async fn api(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("http://{}{path}", self.hub().http_addr))
            .bearer_auth(&self.admin_token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    fn app_path(&self, namespace: &str, name: &str) -> String {
        format!("/api/v1/gateways/{}/applications/{namespace}/{name}", self.gateway_id)
    }

    async fn hub_apps(&self) -> Vec<Value> {
        let (status, v) = self
            .api(
                Method::GET,
                &format!("/api/v1/gateways/{}/applications", self.gateway_id),
                None,
            )
            .await;
        assert_eq!(status, 200, "{v}");
        v["items"].as_array().cloned().unwrap_or_default()
    }

    async fn hub_app(&self, namespace: &str, name: &str) -> Option<Value> {
        let (status, v) = self.api(Method::GET, &self.app_path(namespace, name), None).await;
        (status == 200).then_some(v)
    }

    async fn connected(&self) -> bool {
        let (_, g) = self
            .api(Method::GET, &format!("/api/v1/gateways/{}", self.gateway_id), None)
            .await;
        g["connected"] == json!(true)
    }

    /// The gateway's own metrics, scraped from its admin server.
    async fn metric(&self, name: &str) -> f64 {
        let admin = self.gateway.as_ref().expect("gateway running").admin;
        let text = self
            .http
            .get(format!("http://{admin}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| {
                let (n, v) = l.split_once(' ')?;
                (n == name).then(|| v.trim().parse::<f64>().ok()).flatten()
            })
            .unwrap_or_else(|| panic!("metric {name} not found in:\n{text}"))
    }

    async fn wait_for<F, Fut>(&self, what: &str, mut f: F) -> Duration
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let start = Instant::now();
        while start.elapsed() < WAIT {
            if f().await {
                return start.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("not within {WAIT:?}: {what}");
    }

    async fn wait_converged(&self) {
        let want = self.sim.apps().len();
        self.wait_for("the hub lists every simulated application", || async {
            self.hub_apps().await.len() == want
        })
        .await;
    }
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str().unwrap_or("")
}

fn strings(v: &Value) -> Value {
    json!(v.as_array().cloned().unwrap_or_default())
}

fn map(v: &Value) -> Value {
    json!(v.as_object().cloned().unwrap_or_default())
}

/// What the hub should show for a raw Argo CD Application, written from Argo CD's schema
/// (`../shared/argocd/swagger.json`), independent of the gateway's model.
fn expected(raw: &Value) -> Value {
    let spec = &raw["spec"];
    let status = &raw["status"];
    let sources: Vec<Value> = match spec["sources"].as_array() {
        Some(a) if !a.is_empty() => a.clone(),
        _ if spec["source"].is_object() => vec![spec["source"].clone()],
        _ => vec![],
    };
    let sources: Vec<Value> = sources
        .iter()
        .map(|x| {
            json!({
                "repoURL": s(x, &["repoURL"]), "path": s(x, &["path"]), "chart": s(x, &["chart"]),
                "targetRevision": s(x, &["targetRevision"]), "ref": s(x, &["ref"]), "name": s(x, &["name"]),
            })
        })
        .collect();
    let op = &status["operationState"];
    let operation = if op.is_object() {
        let result = &op["syncResult"];
        let revision = match s(result, &["revision"]) {
            "" => s(op, &["operation", "sync", "revision"]),
            r => r,
        };
        let revisions = if result["revisions"].is_array() {
            strings(&result["revisions"])
        } else {
            strings(&op["operation"]["sync"]["revisions"])
        };
        json!({
            "phase": s(op, &["phase"]), "message": s(op, &["message"]),
            "startedAt": op["startedAt"], "finishedAt": op["finishedAt"],
            "revision": revision, "revisions": revisions,
        })
    } else {
        Value::Null
    };
    let resources: Vec<Value> = status["resources"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| {
            json!({
                "group": s(r, &["group"]), "version": s(r, &["version"]), "kind": s(r, &["kind"]),
                "namespace": s(r, &["namespace"]), "name": s(r, &["name"]), "status": s(r, &["status"]),
                "health": if r["health"].is_object() {
                    json!({"status": s(r, &["health", "status"]), "message": s(r, &["health", "message"])})
                } else { Value::Null },
            })
        })
        .collect();
    json!({
        "namespace": s(raw, &["metadata", "namespace"]),
        "name": s(raw, &["metadata", "name"]),
        "project": match s(spec, &["project"]) { "" => "default", p => p },
        "labels": map(&raw["metadata"]["labels"]),
        "annotations": map(&raw["metadata"]["annotations"]),
        "sources": sources,
        "destination": {
            "server": s(spec, &["destination", "server"]),
            "name": s(spec, &["destination", "name"]),
            "namespace": s(spec, &["destination", "namespace"]),
        },
        "sync": {
            "status": s(status, &["sync", "status"]),
            "revision": s(status, &["sync", "revision"]),
            "revisions": strings(&status["sync"]["revisions"]),
        },
        "health": {"status": s(status, &["health", "status"]), "message": s(status, &["health", "message"])},
        "operation": operation,
        "reconciledAt": status["reconciledAt"],
        "resources": resources,
    })
}

/// Timestamps compare as instants: Argo CD and the model may spell the same one differently.
fn same_time(a: &Value, b: &Value) -> bool {
    match (a.as_str(), b.as_str()) {
        (Some(x), Some(y)) => x.parse::<jiff::Timestamp>().ok() == y.parse::<jiff::Timestamp>().ok(),
        _ => a.is_null() && b.is_null(),
    }
}

fn assert_matches(hub: &Value, raw: &Value) {
    let want = expected(raw);
    let key = format!("{}/{}", want["namespace"], want["name"]);
    for field in [
        "namespace",
        "name",
        "project",
        "labels",
        "annotations",
        "sources",
        "destination",
        "sync",
        "health",
        "resources",
    ] {
        assert_eq!(hub[field], want[field], "{key}: field {field}");
    }
    assert!(
        same_time(&hub["reconciledAt"], &want["reconciledAt"]),
        "{key}: reconciledAt"
    );
    let (h, w) = (&hub["operation"], &want["operation"]);
    assert_eq!(h.is_null(), w.is_null(), "{key}: operation presence");
    if !w.is_null() {
        for field in ["phase", "message", "revision", "revisions"] {
            assert_eq!(h[field], w[field], "{key}: operation.{field}");
        }
        assert!(
            same_time(&h["startedAt"], &w["startedAt"]),
            "{key}: operation.startedAt"
        );
        assert!(
            same_time(&h["finishedAt"], &w["finishedAt"]),
            "{key}: operation.finishedAt"
        );
    }
}

async fn wait_result(env: &Env, app: &str, body: Value) -> (u16, Value) {
    env.api(
        Method::POST,
        &format!("{}/wait", env.app_path("argocd", app)),
        Some(body),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_every_field_live_changes_and_deletions() {
    let env = Env::start(20, "5m").await;
    env.wait_converged().await;

    let hub_apps = env.hub_apps().await;
    for raw in env.sim.apps() {
        let (ns, name) = (s(&raw, &["metadata", "namespace"]), s(&raw, &["metadata", "name"]));
        let hub = hub_apps
            .iter()
            .find(|a| a["namespace"] == ns && a["name"] == name)
            .unwrap_or_else(|| panic!("{ns}/{name} missing at the hub"));
        assert_eq!(hub["gatewayId"], json!(env.gateway_id));
        assert_matches(hub, &raw);
    }
    // Clusters too.
    let (_, clusters) = env
        .api(
            Method::GET,
            &format!("/api/v1/gateways/{}/clusters", env.gateway_id),
            None,
        )
        .await;
    let want: Vec<String> = env
        .sim
        .clusters()
        .iter()
        .map(|c| s(c, &["server"]).to_owned())
        .collect();
    let got: Vec<String> = clusters["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| s(c, &["server"]).to_owned())
        .collect();
    assert_eq!(got, want);

    // A change reaches the hub API as soon as Argo CD reports it.
    env.sim
        .set_health("argocd", "app-00003", "Degraded", "pod crash-looping");
    let took = env
        .wait_for("the health change reaches the hub", || async {
            env.hub_app("argocd", "app-00003")
                .await
                .is_some_and(|a| a["health"]["status"] == "Degraded")
        })
        .await;
    eprintln!("Argo CD change visible at the hub API after {took:?}");
    assert!(took < Duration::from_secs(1), "change took {took:?}");
    assert_matches(
        &env.hub_app("argocd", "app-00003").await.unwrap(),
        &env.sim.app("argocd", "app-00003").unwrap(),
    );
    // Filters work on relayed state.
    let (_, degraded) = env
        .api(
            Method::GET,
            &format!("/api/v1/gateways/{}/applications?health=Degraded", env.gateway_id),
            None,
        )
        .await;
    let names: Vec<&str> = degraded["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| s(a, &["name"]))
        .collect();
    assert!(names.contains(&"app-00003"));

    // Deletion.
    assert!(env.sim.delete_app("argocd", "app-00007"));
    env.wait_for("the deletion reaches the hub", || async {
        env.hub_app("argocd", "app-00007").await.is_none()
    })
    .await;
    assert_eq!(env.hub_apps().await.len(), env.sim.apps().len());

    // A noisy-only change (reconciledAt) is not sent on its own.
    let before = env.metric("argocd_gateway_relay_applications_sent_total").await;
    env.sim.touch("argocd", "app-00001");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.metric("argocd_gateway_relay_applications_sent_total").await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_relist_of_unchanged_state_sends_nothing() {
    let env = Env::start(30, "1s").await;
    env.wait_converged().await;
    // Let the first acknowledgements settle.
    env.wait_for("everything is acknowledged", || async {
        env.metric("argocd_gateway_relay_snapshots_total").await >= 1.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = env.metric("argocd_gateway_relay_applications_sent_total").await;
    let deltas = env.metric("argocd_gateway_relay_deltas_total").await;
    let lists = || {
        env.sim
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path == "/api/v1/applications")
            .count()
    };
    let before = lists();
    env.wait_for("two more full relists", || async { lists() >= before + 2 })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.metric("argocd_gateway_relay_applications_sent_total").await, sent);
    assert_eq!(env.metric("argocd_gateway_relay_deltas_total").await, deltas);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_and_gateway_restarts_lose_nothing_and_skip_the_snapshot() {
    let mut env = Env::start(25, "5m").await;
    env.wait_converged().await;
    assert_eq!(env.metric("argocd_gateway_relay_snapshots_total").await, 1.0);

    // Hub restart: a change made while it is away arrives after it is back, without a snapshot.
    env.stop_hub().await;
    env.sim.set_sync_status("argocd", "app-00002", "OutOfSync");
    env.start_hub().await;
    env.wait_for("the change made while the hub was away arrives", || async {
        env.hub_app("argocd", "app-00002")
            .await
            .is_some_and(|a| a["sync"]["status"] == "OutOfSync")
    })
    .await;
    assert!(env.connected().await);
    assert_eq!(env.metric("argocd_gateway_relay_snapshots_total").await, 1.0);
    assert_eq!(env.hub_apps().await.len(), env.sim.apps().len());

    // Gateway restart: the hub serves the last state, marked stale, meanwhile; a fresh process
    // whose state matches the hub's digest sends neither a snapshot nor any application.
    env.stop_gateway().await;
    env.wait_for("the hub marks the gateway disconnected", || async {
        !env.connected().await
    })
    .await;
    let stale = env.hub_apps().await;
    assert_eq!(stale.len(), env.sim.apps().len());
    assert!(stale.iter().all(|a| a["stale"] == json!(true)));
    env.start_gateway().await;
    env.wait_for("the gateway is back", || async { env.connected().await })
        .await;
    env.wait_for("the hub no longer marks its state stale", || async {
        env.hub_apps().await.iter().all(|a| a["stale"] == json!(false))
    })
    .await;
    // Give the relay time to send anything it (wrongly) would.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.metric("argocd_gateway_relay_snapshots_total").await, 0.0);
    assert_eq!(env.metric("argocd_gateway_relay_applications_sent_total").await, 0.0);

    // A change made while the gateway is away arrives once it is back.
    env.stop_gateway().await;
    env.sim.set_health("argocd", "app-00004", "Progressing", "rolling out");
    env.sim.delete_app("argocd", "app-00005");
    env.start_gateway().await;
    env.wait_for("the changes made while the gateway was away arrive", || async {
        env.hub_app("argocd", "app-00004")
            .await
            .is_some_and(|a| a["health"]["status"] == "Progressing" && a["stale"] == json!(false))
            && env.hub_app("argocd", "app-00005").await.is_none()
    })
    .await;
    for raw in env.sim.apps() {
        let hub = env
            .hub_app(s(&raw, &["metadata", "namespace"]), s(&raw, &["metadata", "name"]))
            .await
            .unwrap();
        assert_matches(&hub, &raw);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_argocd_and_fail_typed() {
    let env = Env::start(5, "5m").await;
    env.wait_converged().await;
    let app = env.app_path("argocd", "app-00001");

    // Sync with the right body.
    env.sim.clear_requests();
    let (status, synced) = env
        .api(
            Method::POST,
            &format!("{app}/sync"),
            Some(json!({"revision": "0123abcd", "prune": true, "dryRun": true})),
        )
        .await;
    assert_eq!(status, 200, "{synced}");
    assert_eq!(synced["name"], "app-00001");
    let reqs = env.sim.requests();
    let sync = reqs
        .iter()
        .find(|r| r.method == "POST" && r.path == "/api/v1/applications/app-00001/sync")
        .expect("sync reached Argo CD");
    let body: Value = serde_json::from_str(&sync.body).unwrap();
    assert_eq!(body["revision"], "0123abcd");
    assert_eq!(body["prune"], true);
    assert_eq!(body["dryRun"], true);
    assert_eq!(body["appNamespace"], "argocd");
    assert_eq!(
        sync.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    assert_eq!(sync.bearer(), Some(env.argocd_token.as_str()));

    // Refresh, hard.
    env.sim.clear_requests();
    let (status, refreshed) = env
        .api(Method::POST, &format!("{app}/refresh"), Some(json!({"hard": true})))
        .await;
    assert_eq!(status, 200, "{refreshed}");
    let reqs = env.sim.requests();
    let get = reqs
        .iter()
        .find(|r| r.method == "GET" && r.path == "/api/v1/applications/app-00001")
        .expect("refresh reached Argo CD");
    assert_eq!(get.query_values("refresh"), vec!["hard"]);

    // Get, refreshed live through the gateway.
    env.sim.clear_requests();
    let (status, live) = env.api(Method::GET, &format!("{app}?refresh=normal"), None).await;
    assert_eq!(status, 200, "{live}");
    assert_eq!(live["name"], "app-00001");
    assert_eq!(live["gatewayId"], json!(env.gateway_id));
    let reqs = env.sim.requests();
    assert!(
        reqs.iter()
            .any(|r| r.path == "/api/v1/applications/app-00001" && r.query_values("refresh") == vec!["normal"]),
        "{reqs:?}"
    );
    let (status, _) = env.api(Method::GET, &format!("{app}?refresh=soft"), None).await;
    assert_eq!(status, 400);

    // Pass-through reads.
    for tail in ["resource-tree", "managed-resources", "events"] {
        let (status, v) = env.api(Method::GET, &format!("{app}/{tail}"), None).await;
        assert_eq!(status, 200, "{tail}: {v}");
        assert!(v.is_object(), "{tail}: {v}");
    }

    // Typed failures: unknown app, missing permission with the policy line.
    let (status, v) = env
        .api(
            Method::GET,
            &format!("{}/resource-tree", env.app_path("argocd", "nope")),
            None,
        )
        .await;
    assert_eq!(status, 404, "{v}");
    assert_eq!(v["code"], "not_found");
    env.sim.update_token(
        &env.argocd_token,
        TokenSpec::account("gateway").without("applications", "sync"),
    );
    let (status, v) = env.api(Method::POST, &format!("{app}/sync"), Some(json!({}))).await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["code"], "permission_denied");
    assert!(
        v["missingPolicy"].as_str().unwrap_or("").contains("applications, sync"),
        "{v}"
    );

    // Health check, on demand, recorded on the gateway object.
    let (status, h) = env
        .api(
            Method::POST,
            &format!("/api/v1/gateways/{}/health-check", env.gateway_id),
            None,
        )
        .await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["applications"], json!(env.sim.apps().len()));
    assert_eq!(h["argocd"]["reachable"], true);
    assert!(h["argocd"]["version"].as_str().unwrap().starts_with("v3.5.1"), "{h}");
    assert!(h["hubRoundTripMillis"].is_number(), "{h}");
    // The sync permission was just taken away: the probes see it.
    assert_eq!(h["status"], "Degraded", "{h}");
    assert!(
        h["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["status"] != "ok" && c["name"].as_str().unwrap_or("").contains("sync")),
        "{h}"
    );
    let (_, g) = env
        .api(Method::GET, &format!("/api/v1/gateways/{}", env.gateway_id), None)
        .await;
    assert_eq!(g["applicationCount"], json!(env.sim.apps().len()));
    assert!(g["health"]["checkedAt"].is_string(), "{g}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_returns_deployed_failed_and_timeout() {
    let mut env = Env::start(5, "5m").await;
    env.wait_converged().await;

    // Deployed: the app moves to the wanted commit while the caller waits.
    env.sim.set_sync_status("argocd", "app-00001", "OutOfSync");
    env.sim.set_health("argocd", "app-00001", "Progressing", "");
    let commit = "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432";
    let waiter = {
        let path = format!("{}/wait", env.app_path("argocd", "app-00001"));
        let req = env
            .http
            .post(format!("http://{}{path}", env.hub().http_addr))
            .bearer_auth(&env.admin_token)
            .json(&json!({"revision": &commit[..10], "timeoutSeconds": 10}));
        tokio::spawn(async move { req.send().await.unwrap().json::<Value>().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.sim.set_revision("argocd", "app-00001", commit);
    env.sim.set_sync_status("argocd", "app-00001", "Synced");
    env.sim.set_health("argocd", "app-00001", "Healthy", "");
    let done = tokio::time::timeout(WAIT, waiter).await.unwrap().unwrap();
    assert_eq!(done["result"], "Deployed", "{done}");
    assert_eq!(done["application"]["sync"]["revision"], commit);
    assert_eq!(done["applications"][0]["verdict"], "Deployed", "{done}");
    // The same as Server-Sent Events, asked for by the Accept header: a progress event with the
    // verdict, then the result, and the stream ends.
    let resp = env
        .http
        .post(format!(
            "http://{}{}/wait",
            env.hub().http_addr,
            env.app_path("argocd", "app-00001")
        ))
        .bearer_auth(&env.admin_token)
        .header("accept", "text/event-stream")
        .json(&json!({"revision": commit, "timeoutSeconds": 60}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers().get("content-type").and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let text = tokio::time::timeout(WAIT, resp.text()).await.unwrap().unwrap();
    let events: Vec<(String, Value)> = text
        .split("\n\n")
        .filter_map(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim_start().to_owned())
            };
            Some((field("event:")?, serde_json::from_str(&field("data:")?).unwrap()))
        })
        .collect();
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["progress", "result"], "{text}");
    assert_eq!(events[0].1["verdict"], "Deployed", "{text}");
    assert_eq!(events[1].1["result"], "Deployed", "{text}");

    // Failed: the sync operation for that revision failed.
    env.sim.set_sync_status("argocd", "app-00002", "OutOfSync");
    env.sim.modify_app("argocd", "app-00002", |a| {
        a["status"]["operationState"]["operation"]["sync"]["revision"] = json!("abc1234def");
        a["status"]["operationState"]["syncResult"]["revision"] = json!("abc1234def");
    });
    env.sim.set_operation_phase("argocd", "app-00002", "Failed");
    let (status, v) = wait_result(&env, "app-00002", json!({"revision": "abc1234", "timeoutSeconds": 10})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"], "Failed", "{v}");
    assert_eq!(v["applications"][0]["verdict"], "Failed", "{v}");
    assert!(
        v["applications"][0]["message"]
            .as_str()
            .unwrap()
            .contains("operation Failed"),
        "{v}"
    );

    // Timeout: nothing happens; the verdict says Argo CD has not seen the revision.
    let (status, v) = wait_result(&env, "app-00003", json!({"revision": "ffffffff", "timeoutSeconds": 1})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"], "Timeout", "{v}");
    assert_eq!(v["applications"][0]["verdict"], "NotYetSeen", "{v}");
    // A prefix too short to name a commit is refused before any waiting.
    let (status, v) = wait_result(&env, "app-00003", json!({"revision": "ffffff", "timeoutSeconds": 600})).await;
    assert_eq!(status, 400, "{v}");
    assert!(s(&v, &["error"]).contains("at least 7"), "{v}");

    // A disconnected gateway: requests fail at once with a clear error, not at the deadline.
    env.stop_gateway().await;
    env.wait_for("the hub marks the gateway disconnected", || async {
        !env.connected().await
    })
    .await;
    let started = Instant::now();
    let (status, v) = env
        .api(
            Method::POST,
            &format!("{}/sync", env.app_path("argocd", "app-00001")),
            Some(json!({})),
        )
        .await;
    let took = started.elapsed();
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["code"], "gateway_disconnected");
    assert!(v["error"].as_str().unwrap().contains(&env.gateway_id), "{v}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[derive(Parser)]
struct CheckCli {
    #[command(flatten)]
    args: argocd_gateway::check::CheckArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_registration_and_hub_reachability() {
    use argocd_gateway::check::{Report, Status, hub_rows};
    let env = Env::start(1, "5m").await;
    let hub_url = format!("https://localhost:{}", env.ports.0);
    let identity = format!("file:{}", env.dir.join("identity.json").display());
    let rows = |flags: Vec<String>| async move {
        let cli = CheckCli::try_parse_from(std::iter::once("check".to_owned()).chain(flags)).unwrap();
        let mut report = Report::default();
        hub_rows(&cli.args, &mut report).await;
        report.rows
    };

    // Registered: the stored identity (and the hub CA in it) is enough.
    let ok = rows(vec!["--hub-url".into(), hub_url.clone(), "--identity".into(), identity]).await;
    let reg = ok.iter().find(|r| r.name == "registration").unwrap();
    assert_eq!(reg.status, Status::Ok, "{ok:?}");
    assert!(reg.detail.contains(&env.gateway_id), "{reg:?}");
    let conn = ok.iter().find(|r| r.name == "hub connection").unwrap();
    assert_eq!(conn.status, Status::Ok, "{ok:?}");

    // Not registered, and a CA fingerprint that does not match: both said plainly.
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let bad = rows(vec![
        "--hub-url".into(),
        hub_url,
        "--hub-ca-fingerprint".into(),
        wrong,
        "--identity".into(),
        format!("file:{}", env.dir.join("none.json").display()),
    ])
    .await;
    let reg = bad.iter().find(|r| r.name == "registration").unwrap();
    assert_eq!(reg.status, Status::Warn, "{bad:?}");
    assert!(reg.fix.as_deref().unwrap_or("").contains("registration.token"));
    let conn = bad.iter().find(|r| r.name == "hub connection").unwrap();
    assert_eq!(conn.status, Status::Fail, "{bad:?}");
    assert!(conn.detail.contains("fingerprint"), "{conn:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_application_travels_as_a_stub_and_its_big_tree_arrives_in_pieces() {
    let env = Env::start(2, "5m").await;
    env.wait_for("the gateway relays", || async { env.hub_apps().await.len() >= 2 })
        .await;
    let reconnects = env.metric("argocd_gateway_hub_reconnects_total").await;
    // Real applications can manage tens of thousands of resources: its compact state is over
    // the gateway's --max-entity-bytes (3 MiB) and its resource tree about 7 MiB.
    let mut huge = argocd_gateway::simulator::objects::synthetic_app(0, "argocd");
    huge["metadata"]["name"] = json!("huge");
    let resources: Vec<Value> = (0..30_000)
        .map(|i| {
            json!({"group": "apps", "version": "v1", "kind": "Deployment", "namespace": "huge-ns",
                   "name": format!("deployment-with-a-long-descriptive-name-{i:06}"), "status": "Synced",
                   "health": {"status": "Healthy"}})
        })
        .collect();
    huge["status"]["resources"] = json!(resources);
    env.sim.upsert_app(huge);
    env.wait_for("the huge application reaches the hub as a stub", || async {
        let (status, app) = env.api(Method::GET, &env.app_path("argocd", "huge"), None).await;
        status == 200 && app["tooLarge"]["bytes"].as_u64().is_some_and(|b| b > 3 * 1024 * 1024)
    })
    .await;
    let (_, stub) = env.api(Method::GET, &env.app_path("argocd", "huge"), None).await;
    assert_eq!(stub["tooLarge"]["limit"], json!(3 * 1024 * 1024), "{stub}");
    assert_eq!(stub["project"], json!("default"));

    let (status, tree) = env
        .api(
            Method::GET,
            &format!("{}/resource-tree", env.app_path("argocd", "huge")),
            None,
        )
        .await;
    assert_eq!(status, 200, "the big tree arrives");
    assert_eq!(tree["nodes"].as_array().map(Vec::len), Some(30_000));
    assert!(tree.to_string().len() > 6 * 1024 * 1024);

    // The session stayed up all along, and keeps working.
    assert_eq!(env.metric("argocd_gateway_hub_reconnects_total").await, reconnects);
    assert_eq!(env.metric("argocd_gateway_hub_connected").await, 1.0);
    env.sim
        .set_health("argocd", "app-00001", "Degraded", "after the big answer");
    env.wait_for("a later change still arrives", || async {
        let (_, a) = env.api(Method::GET, &env.app_path("argocd", "app-00001"), None).await;
        a["health"]["status"] == json!("Degraded")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_that_cannot_be_read_keeps_its_state_at_the_hub_marked() {
    let env = Env::start(3, "5m").await;
    env.wait_converged().await;
    let path = env.app_path("argocd", "app-00001");
    let (_, before) = env.api(Method::GET, &path, None).await;
    env.sim
        .modify_app("argocd", "app-00001", |a| a["status"]["health"] = json!(42));
    env.wait_for("the hub shows the application marked", || async {
        let (_, a) = env.api(Method::GET, &path, None).await;
        a["undecodable"].is_string()
    })
    .await;
    let (_, marked) = env.api(Method::GET, &path, None).await;
    assert_eq!(
        marked["health"], before["health"],
        "the last known state is kept: {marked}"
    );
    assert_eq!(env.hub_apps().await.len(), env.sim.apps().len(), "nothing is deleted");
    assert_eq!(env.metric("argocd_gateway_undecodable_objects").await, 1.0);
    env.sim.modify_app("argocd", "app-00001", |a| {
        a["status"]["health"] = json!({"status": "Healthy"})
    });
    env.wait_for("the mark goes once it reads again", || async {
        let (_, a) = env.api(Method::GET, &path, None).await;
        a.get("undecodable").is_none()
    })
    .await;
}

// ---- The fleet views: change feed, timelines, roles and page sessions, fleet metrics ---------

/// A change-feed stream read as NDJSON.
struct FeedStream {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<Vec<u8>>>,
    buf: Vec<u8>,
}

impl FeedStream {
    async fn open(env: &Env, query: &str) -> FeedStream {
        use futures_util::StreamExt;
        let resp = env
            .http
            .get(format!(
                "http://{}/api/v1/events?format=ndjson&{query}",
                env.hub().http_addr
            ))
            .bearer_auth(&env.admin_token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "events?{query}");
        assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
        FeedStream {
            body: resp.bytes_stream().map(|r| r.map(|b| b.to_vec())).boxed(),
            buf: vec![],
        }
    }

    /// The next event (heartbeats skipped), or None when none comes `within`.
    async fn next(&mut self, within: Duration) -> Option<Value> {
        use futures_util::StreamExt;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let v: Value = serde_json::from_slice(&line).expect("an NDJSON line");
                if v["type"] == "heartbeat" {
                    continue;
                }
                return Some(v);
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.extend_from_slice(&chunk),
                _ => return None,
            }
        }
    }

    async fn take(&mut self, n: usize) -> Vec<Value> {
        let mut out = vec![];
        while out.len() < n {
            match self.next(WAIT).await {
                Some(v) => out.push(v),
                None => panic!("expected {n} events, got {}: {out:?}", out.len()),
            }
        }
        out
    }
}

/// Events as (type, key) pairs.
fn kinds(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| (s(e, &["type"]).to_owned(), s(e, &["key"]).to_owned()))
        .collect()
}

fn ids(events: &[Value]) -> Vec<i64> {
    events.iter().map(|e| e["id"].as_i64().unwrap()).collect()
}

impl Env {
    /// The newest event id, once the feed has recorded everything that happened so far.
    async fn settled_event_id(&self) -> i64 {
        let mut last = -1;
        let mut stable = 0;
        let started = Instant::now();
        loop {
            let (_, v) = self.api(Method::GET, "/api/v1/applications?limit=1", None).await;
            let id = v["lastEventId"].as_i64().expect("lastEventId");
            if id == last {
                stable += 1;
                if stable >= 3 {
                    return id;
                }
            } else {
                stable = 0;
                last = id;
            }
            assert!(started.elapsed() < WAIT, "the change feed never settled");
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let mut req = self
            .http
            .request(method, format!("http://{}{path}", self.hub().http_addr));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
            headers,
        )
    }

    async fn api_token(&self, name: &str, role: &str, ttl: Option<u64>) -> String {
        let mut body = json!({"name": name, "role": role});
        if let Some(t) = ttl {
            body["ttlSeconds"] = json!(t);
        }
        let (status, v) = self.api(Method::POST, "/api/v1/api-tokens", Some(body)).await;
        assert_eq!(status, 201, "{v}");
        let token = s(&v, &["token"]).to_owned();
        assert!(token.starts_with("agw_"), "{v}");
        token
    }

    async fn metrics_text(&self) -> String {
        self.http
            .get(format!("http://{}/metrics", self.hub().http_addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// A metric's value by name and (a subset of) labels, from the Prometheus text format.
fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        if n != name {
            return None;
        }
        let ok = labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        ok.then(|| value.parse().ok()).flatten()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_resumes_with_exactly_the_missed_events_and_filters_apply() {
    let mut env = Env::start(10, "5m").await;
    env.wait_converged().await;
    let start = env.settled_event_id().await;
    assert!(start >= 11, "the first snapshot and the connect are events: {start}");

    // Changes happen while nobody watches.
    env.sim.set_health("argocd", "app-00001", "Degraded", "crash loop");
    env.sim.set_health("argocd", "app-00002", "Progressing", "rolling out");
    env.sim.delete_app("argocd", "app-00003");
    env.sim.set_sync_status("argocd", "app-00004", "OutOfSync");
    env.wait_for("the hub has all four changes", || async {
        env.hub_app("argocd", "app-00004")
            .await
            .is_some_and(|a| a["sync"]["status"] == "OutOfSync")
            && env.hub_app("argocd", "app-00003").await.is_none()
            && env
                .hub_app("argocd", "app-00001")
                .await
                .is_some_and(|a| a["health"]["status"] == "Degraded")
            && env
                .hub_app("argocd", "app-00002")
                .await
                .is_some_and(|a| a["health"]["status"] == "Progressing")
    })
    .await;

    // Resuming from the id before them returns exactly these four, in order, then nothing.
    let mut feed = FeedStream::open(&env, &format!("since={start}")).await;
    let missed = feed.take(4).await;
    assert_eq!(
        kinds(&missed),
        [
            ("application.upserted".into(), "argocd/app-00001".into()),
            ("application.upserted".into(), "argocd/app-00002".into()),
            ("application.deleted".into(), "argocd/app-00003".into()),
            ("application.upserted".into(), "argocd/app-00004".into()),
        ]
    );
    let missed_ids = ids(&missed);
    assert_eq!(missed_ids[0], start + 1, "{missed_ids:?}");
    assert!(missed_ids.windows(2).all(|w| w[1] == w[0] + 1), "{missed_ids:?}");
    assert_eq!(feed.next(Duration::from_millis(500)).await, None, "no extra event");
    let first = &missed[0];
    assert_eq!(first["gatewayId"], json!(env.gateway_id));
    assert_eq!(first["application"]["health"]["status"], "Degraded");
    assert_eq!(first["application"]["health"]["message"], "crash loop");
    assert_eq!(first["previous"]["health"], "Healthy");
    assert_eq!(first["changed"], json!(["health"]));
    assert!(first["application"]["resources"].is_array(), "the full view by default");
    assert_eq!(
        missed[2]["application"]["name"], "app-00003",
        "a deletion carries the last state"
    );

    // The same stream continues live.
    env.sim.set_health("argocd", "app-00005", "Missing", "");
    let live = feed.take(1).await;
    assert_eq!(
        kinds(&live),
        [("application.upserted".into(), "argocd/app-00005".into())]
    );
    assert_eq!(live[0]["id"].as_i64().unwrap(), missed_ids[3] + 1);

    // SSE with Last-Event-ID: the events after the second one.
    let resp = env
        .http
        .get(format!("http://{}/api/v1/events", env.hub().http_addr))
        .bearer_auth(&env.admin_token)
        .header("Last-Event-ID", missed_ids[1].to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut sse = resp.bytes_stream();
    let mut text = String::new();
    let mut frames: Vec<(String, String, Value)> = vec![];
    while frames.len() < 3 {
        use futures_util::StreamExt;
        let chunk = tokio::time::timeout(WAIT, sse.next())
            .await
            .expect("SSE frames arrive")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let frame: String = text.drain(..end + 2).collect();
            let field = |k: &str| {
                frame
                    .lines()
                    .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_owned()))
                    .unwrap_or_default()
            };
            if !field("data:").is_empty() {
                frames.push((
                    field("id:"),
                    field("event:"),
                    serde_json::from_str(&field("data:")).unwrap(),
                ));
            }
        }
    }
    let want: Vec<(String, String)> = [
        (missed_ids[2], "application.deleted"),
        (missed_ids[3], "application.upserted"),
        (missed_ids[3] + 1, "application.upserted"),
    ]
    .iter()
    .map(|(id, t)| (id.to_string(), t.to_string()))
    .collect();
    let got: Vec<(String, String)> = frames.iter().map(|(i, e, _)| (i.clone(), e.clone())).collect();
    assert_eq!(got, want);
    assert_eq!(frames[0].2["id"], json!(missed_ids[2]));

    // Filters, as for the list; an application filter matches the state before or after.
    let from = format!("since={start}");
    let mut f = FeedStream::open(&env, &format!("{from}&health=Degraded")).await;
    assert_eq!(
        kinds(&f.take(1).await),
        [("application.upserted".into(), "argocd/app-00001".into())]
    );
    assert_eq!(f.next(Duration::from_millis(300)).await, None);
    env.sim.set_health("argocd", "app-00001", "Healthy", "");
    let recovered = f.take(1).await;
    assert_eq!(recovered[0]["application"]["health"]["status"], "Healthy");
    assert_eq!(recovered[0]["previous"]["health"], "Degraded");

    let mut f = FeedStream::open(&env, &format!("{from}&types=application.deleted")).await;
    assert_eq!(
        kinds(&f.take(1).await),
        [("application.deleted".into(), "argocd/app-00003".into())]
    );
    assert_eq!(f.next(Duration::from_millis(300)).await, None);

    let mut f = FeedStream::open(&env, &format!("{from}&q=app-00004&view=summary")).await;
    let only = f.take(1).await;
    assert_eq!(
        kinds(&only),
        [("application.upserted".into(), "argocd/app-00004".into())]
    );
    assert!(only[0]["application"].get("resources").is_none(), "summary view");
    assert_eq!(only[0]["application"]["resourceCount"], 2);
    assert_eq!(f.next(Duration::from_millis(300)).await, None);

    // Synthetic apps with an even number are tier=web; the deleted app-00003 is not.
    let mut f = FeedStream::open(&env, &format!("{from}&selector=tier%3Dweb&types=application.upserted")).await;
    let web = f.take(2).await;
    assert_eq!(
        kinds(&web),
        [
            ("application.upserted".into(), "argocd/app-00002".into()),
            ("application.upserted".into(), "argocd/app-00004".into()),
        ]
    );

    let mut f = FeedStream::open(&env, &format!("{from}&gateway=gw-nobody")).await;
    assert_eq!(f.next(Duration::from_millis(500)).await, None);

    // Gateway events: a disconnect and a connect, for a watcher of gateway events only.
    let mut gw = FeedStream::open(&env, "types=gateway.connected,gateway.disconnected").await;
    env.stop_gateway().await;
    let gone = gw.take(1).await;
    assert_eq!(gone[0]["type"], "gateway.disconnected");
    assert_eq!(gone[0]["gatewayId"], json!(env.gateway_id));
    assert_eq!(gone[0]["reason"], "goodbye");
    env.start_gateway().await;
    let back = gw.take(1).await;
    assert_eq!(back[0]["type"], "gateway.connected");
    assert_eq!(back[0]["gateway"]["version"], argocd_gateway::VERSION);

    // Bad requests say what is wrong.
    for (q, needle) in [
        ("since=abc", "event id"),
        ("types=application.exploded", "unknown event type"),
        ("format=xml", "sse or ndjson"),
        ("selector=a%20in%20b", "selector"),
    ] {
        let (status, v) = env.api(Method::GET, &format!("/api/v1/events?{q}"), None).await;
        assert_eq!(status, 400, "{q}: {v}");
        assert!(s(&v, &["error"]).contains(needle), "{q}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_answers_410_for_an_expired_id_and_ids_survive_a_hub_restart() {
    let mut env = Env::start_tuned(3, "5m", |a| a.history.feed_backlog = 5).await;
    env.wait_converged().await;
    for i in 0..12 {
        let status = if i % 2 == 0 { "Progressing" } else { "Healthy" };
        env.sim.set_health("argocd", "app-00001", status, &format!("step {i}"));
        env.wait_for("the change is applied", || async {
            env.hub_app("argocd", "app-00001")
                .await
                .is_some_and(|a| a["health"]["message"] == format!("step {i}"))
        })
        .await;
    }
    let last = env.settled_event_id().await;
    assert!(last >= 16, "{last}");

    // An id whose successors were pruned: 410 with the bounds, by query and by header.
    let (status, v) = env.api(Method::GET, "/api/v1/events?since=1", None).await;
    assert_eq!(status, 410, "{v}");
    assert_eq!(v["code"], "gone");
    assert!(s(&v, &["error"]).contains("no longer in the hub's backlog"), "{v}");
    assert_eq!(v["lastId"], json!(last));
    let oldest = v["oldestId"].as_i64().unwrap();
    assert!(oldest > 2 && oldest <= last - 4, "the backlog keeps about 5: {v}");
    let (status, _, _) = env
        .call(
            Method::GET,
            "/api/v1/events",
            Some(&env.admin_token),
            &[("Last-Event-ID", "1")],
            None,
        )
        .await;
    assert_eq!(status, 410);
    // An id this hub never issued is refused too.
    let (status, v) = env
        .api(Method::GET, &format!("/api/v1/events?since={}", last + 1000), None)
        .await;
    assert_eq!(status, 410, "{v}");

    // An id still in the backlog resumes with what followed it.
    let mut f = FeedStream::open(&env, &format!("since={}", last - 2)).await;
    assert_eq!(ids(&f.take(2).await), [last - 1, last]);

    // Ids keep increasing across a hub restart.
    env.stop_hub().await;
    env.start_hub().await;
    env.wait_for("the gateway is back", || async { env.connected().await })
        .await;
    let mut f = FeedStream::open(&env, &format!("since={last}")).await;
    env.sim.set_health("argocd", "app-00002", "Degraded", "after restart");
    let after: Vec<Value> = {
        let mut out = vec![];
        while let Some(e) = f.next(WAIT).await {
            let done = e["key"] == "argocd/app-00002";
            out.push(e);
            if done {
                break;
            }
        }
        out
    };
    assert!(!after.is_empty());
    assert!(ids(&after).iter().all(|i| *i > last), "{after:?}");
    assert_eq!(
        after.last().unwrap()["application"]["health"]["message"],
        "after restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeline_records_transitions_per_app_and_per_gateway_bounded() {
    let env = Env::start_tuned(5, "5m", |a| a.history.timeline_per_app = 3).await;
    env.wait_converged().await;
    let app_tl = |name: &'static str| {
        let path = format!("{}/timeline", env.app_path("argocd", name));
        let env = &env;
        async move {
            let (status, v) = env.api(Method::GET, &path, None).await;
            assert_eq!(status, 200, "{v}");
            v["items"].as_array().cloned().unwrap_or_default()
        }
    };
    // Timeline points are recorded just after the state is applied.
    env.wait_for("the first point", || async { !app_tl("app-00001").await.is_empty() })
        .await;
    let first = app_tl("app-00001").await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0]["changed"], json!(["first"]));
    assert_eq!(first[0]["health"], "Healthy");
    assert_eq!(first[0]["name"], "app-00001");

    env.sim.set_health("argocd", "app-00001", "Degraded", "OOMKilled");
    env.wait_for("the health point", || async { app_tl("app-00001").await.len() == 2 })
        .await;
    env.sim.touch("argocd", "app-00001");
    env.sim
        .set_revision("argocd", "app-00001", "0123456789abcdef0123456789abcdef01234567");
    env.wait_for("the revision point", || async {
        app_tl("app-00001").await[0]["changed"] == json!(["revision"])
    })
    .await;
    env.sim.set_operation_phase("argocd", "app-00001", "Running");
    env.wait_for("the operation point", || async {
        app_tl("app-00001").await[0]["operationPhase"] == "Running"
    })
    .await;
    let points = app_tl("app-00001").await;
    // Newest first, bounded to 3 per application; the noise-only change made no point.
    let changed: Vec<Value> = points.iter().map(|p| p["changed"].clone()).collect();
    assert_eq!(changed, [json!(["operation"]), json!(["revision"]), json!(["health"])]);
    assert_eq!(points[1]["revision"], "0123456789abcdef0123456789abcdef01234567");
    assert_eq!(points[2]["health"], "Degraded");
    assert_eq!(points[2]["healthMessage"], "OOMKilled");
    assert!(points[0]["at"].as_str().unwrap() >= points[2]["at"].as_str().unwrap());

    // Per gateway: every application's points, newest first, with since and limit.
    let (status, v) = env
        .api(
            Method::GET,
            &format!("/api/v1/gateways/{}/timeline?since=1h", env.gateway_id),
            None,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let items = v["items"].as_array().unwrap();
    let names: std::collections::BTreeSet<&str> = items.iter().map(|p| s(p, &["name"])).collect();
    assert!(names.contains("app-00000") && names.contains("app-00004"), "{names:?}");
    assert_eq!(items[0]["name"], "app-00001");
    let (_, v) = env
        .api(
            Method::GET,
            &format!(
                "/api/v1/gateways/{}/timeline?since=2999-01-01T00:00:00Z",
                env.gateway_id
            ),
            None,
        )
        .await;
    assert_eq!(v["items"], json!([]));
    let (_, v) = env
        .api(
            Method::GET,
            &format!("/api/v1/gateways/{}/timeline?limit=2", env.gateway_id),
            None,
        )
        .await;
    assert_eq!(v["items"].as_array().unwrap().len(), 2);
    let (status, _) = env
        .api(
            Method::GET,
            &format!("/api/v1/gateways/{}/timeline?since=yesterday", env.gateway_id),
            None,
        )
        .await;
    assert_eq!(status, 400);
    // A deleted application keeps its timeline, ending with the deletion.
    env.sim.delete_app("argocd", "app-00002");
    env.wait_for("the deletion point", || async {
        app_tl("app-00002").await[0]["changed"] == json!(["deleted"])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_decide_who_may_do_what() {
    let env = Env::start(3, "5m").await;
    env.wait_converged().await;
    let viewer = env.api_token("dashboards", "viewer", None).await;
    let operator = env.api_token("ci-deploy", "operator", Some(3600)).await;
    let admin = env.api_token("platform", "admin", None).await;
    // APP is a different application per role, so one role's sync is not in another's way.
    let app = "APP";
    let gw = format!("/api/v1/gateways/{}", env.gateway_id);
    let cases: Vec<(Method, String, Option<Value>, [u16; 3])> = vec![
        (Method::GET, "/api/v1/gateways".into(), None, [200, 200, 200]),
        (Method::GET, format!("{app}/timeline"), None, [200, 200, 200]),
        (
            Method::POST,
            format!("{app}/wait"),
            Some(json!({"timeoutSeconds": 1})),
            [200, 200, 200],
        ),
        (
            Method::POST,
            "/api/v1/wait".into(),
            Some(json!({"selector": "tier=web", "timeoutSeconds": 1})),
            [200, 200, 200],
        ),
        // Waiting is a read; a wait that refreshes or syncs is not.
        (
            Method::POST,
            format!("{app}/wait"),
            Some(json!({"timeoutSeconds": 1, "refresh": true})),
            [403, 200, 200],
        ),
        // Argo CD refuses both (nothing runs; automated sync is on), but only operators get there.
        (Method::DELETE, format!("{app}/operation"), None, [403, 400, 400]),
        (
            Method::POST,
            format!("{app}/rollback"),
            Some(json!({"id": 0})),
            [403, 400, 400],
        ),
        (Method::POST, format!("{app}/sync"), Some(json!({})), [403, 200, 200]),
        (Method::POST, format!("{app}/refresh"), Some(json!({})), [403, 200, 200]),
        (Method::POST, format!("{gw}/health-check"), None, [403, 200, 200]),
        (Method::GET, "/api/v1/registration-tokens".into(), None, [403, 403, 200]),
        (Method::GET, "/api/v1/api-tokens".into(), None, [403, 403, 200]),
        (
            Method::PUT,
            "/api/v1/desired-version".into(),
            Some(json!({"version": "0.1.0"})),
            [403, 403, 200],
        ),
    ];
    for (method, path, body, want) in cases {
        for (i, (token, want)) in [(&viewer, want[0]), (&operator, want[1]), (&admin, want[2])]
            .into_iter()
            .enumerate()
        {
            let path = path.replace("APP", &env.app_path("argocd", &format!("app-0000{i}")));
            let (status, v, _) = env.call(method.clone(), &path, Some(token), &[], body.clone()).await;
            assert_eq!(status, want, "{method} {path}: {v}");
            if status == 403 {
                assert_eq!(v["code"], "forbidden", "{v}");
                assert!(s(&v, &["error"]).contains("role"), "{v}");
            }
        }
    }
    let (_, v, _) = env
        .call(
            Method::POST,
            &format!("{}/sync", env.app_path("argocd", "app-00000")),
            Some(&viewer),
            &[],
            Some(json!({})),
        )
        .await;
    assert_eq!(v["role"], "viewer");
    assert_eq!(v["requiredRole"], "operator");

    // Listing shows names, roles and use, never a secret.
    let (_, list) = env.api(Method::GET, "/api/v1/api-tokens", None).await;
    let text = list.to_string();
    assert!(!text.contains(&viewer[4..]) && !text.contains("secret"), "{text}");
    let ci = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ci-deploy")
        .unwrap();
    assert_eq!(ci["role"], "operator");
    assert_eq!(ci["state"], "active");
    assert!(ci["lastUsedAt"].is_string() && ci["expiresAt"].is_string(), "{ci}");

    // Wrong, revoked and expired tokens are refused with a reason.
    let (status, v, _) = env
        .call(Method::GET, "/api/v1/gateways", Some("agw_nope.nope"), &[], None)
        .await;
    assert_eq!(status, 401, "{v}");
    let id = s(ci, &["id"]).to_owned();
    let (status, _) = env.api(Method::DELETE, &format!("/api/v1/api-tokens/{id}"), None).await;
    assert_eq!(status, 204);
    let (status, _, _) = env
        .call(Method::GET, "/api/v1/gateways", Some(&operator), &[], None)
        .await;
    assert_eq!(status, 401);
    let short = env.api_token("short-lived", "viewer", Some(1)).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, v, _) = env.call(Method::GET, "/api/v1/gateways", Some(&short), &[], None).await;
    assert_eq!(status, 401, "{v}");
    assert!(s(&v, &["error"]).contains("expired"), "{v}");
    for bad in [
        json!({"name": "x", "role": "root"}),
        json!({"name": "", "role": "viewer"}),
    ] {
        let (status, _) = env.api(Method::POST, "/api/v1/api-tokens", Some(bad)).await;
        assert_eq!(status, 400);
    }
}

fn session_cookie(headers: &reqwest::header::HeaderMap) -> (String, String) {
    let set = headers
        .get("set-cookie")
        .expect("a session cookie")
        .to_str()
        .unwrap()
        .to_owned();
    let value = set.split(';').next().unwrap().trim().to_owned();
    (value, set)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_sessions_are_protected_against_cross_site_requests() {
    let env = Env::start(3, "5m").await;
    env.wait_converged().await;
    let operator = env.api_token("oncall", "operator", None).await;
    let origin = format!("http://{}", env.hub().http_addr);
    let json_headers = [("Origin", origin.as_str()), ("Sec-Fetch-Site", "same-origin")];

    // Log in: an HttpOnly, SameSite=Strict cookie (not Secure over plain HTTP) and a CSRF token.
    let (status, me, headers) = env
        .call(
            Method::POST,
            "/api/v1/login",
            None,
            &json_headers,
            Some(json!({"token": operator})),
        )
        .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["role"], "operator");
    let csrf = s(&me, &["csrfToken"]).to_owned();
    assert!(csrf.len() >= 24);
    let (cookie, set_cookie) = session_cookie(&headers);
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attr), "{set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "{set_cookie}");
    let (status, who, _) = env
        .call(Method::GET, "/api/v1/session", None, &[("Cookie", &cookie)], None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(who["via"], "session");
    assert_eq!(who["csrfToken"], json!(csrf));

    // State-changing requests with the cookie but without the session's protection are refused
    // and never reach Argo CD.
    let sync = format!("{}/sync", env.app_path("argocd", "app-00001"));
    env.sim.clear_requests();
    let refused: Vec<Vec<(&str, &str)>> = vec![
        vec![("Cookie", &cookie)],
        vec![("Cookie", &cookie), ("X-CSRF-Token", "guessed")],
        vec![
            ("Cookie", &cookie),
            ("X-CSRF-Token", &csrf),
            ("Origin", "http://evil.example"),
        ],
        vec![
            ("Cookie", &cookie),
            ("X-CSRF-Token", &csrf),
            ("Sec-Fetch-Site", "cross-site"),
        ],
    ];
    for headers in &refused {
        let (status, v, _) = env.call(Method::POST, &sync, None, headers, Some(json!({}))).await;
        assert_eq!(status, 403, "{headers:?}: {v}");
        assert_eq!(v["code"], "csrf", "{v}");
    }
    assert!(
        !env.sim.requests().iter().any(|r| r.path.ends_with("/sync")),
        "a refused request reached Argo CD"
    );
    // With it, the same request goes through.
    let (status, v, _) = env
        .call(
            Method::POST,
            &sync,
            None,
            &[("Cookie", &cookie), ("X-CSRF-Token", &csrf), ("Origin", &origin)],
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert!(env.sim.requests().iter().any(|r| r.path.ends_with("/sync")));
    // Reads need no CSRF token; the feed works with the cookie alone.
    let (status, _, _) = env
        .call(Method::GET, "/api/v1/gateways", None, &[("Cookie", &cookie)], None)
        .await;
    assert_eq!(status, 200);

    // A login from another site is refused; so is a bad token.
    let (status, _, _) = env
        .call(
            Method::POST,
            "/api/v1/login",
            None,
            &[("Sec-Fetch-Site", "cross-site")],
            Some(json!({"token": operator})),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _, _) = env
        .call(
            Method::POST,
            "/api/v1/login",
            None,
            &json_headers,
            Some(json!({"token": "nope"})),
        )
        .await;
    assert_eq!(status, 401);

    // Logout ends the session (and needs the CSRF token like any change).
    let (status, _, _) = env
        .call(Method::POST, "/api/v1/logout", None, &[("Cookie", &cookie)], None)
        .await;
    assert_eq!(status, 403);
    let (status, _, headers) = env
        .call(
            Method::POST,
            "/api/v1/logout",
            None,
            &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)],
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert!(session_cookie(&headers).1.contains("Max-Age=0"));
    let (status, _, _) = env
        .call(Method::GET, "/api/v1/session", None, &[("Cookie", &cookie)], None)
        .await;
    assert_eq!(status, 401);

    // Revoking the token ends the sessions opened with it.
    let (_, _, headers) = env
        .call(
            Method::POST,
            "/api/v1/login",
            None,
            &json_headers,
            Some(json!({"token": operator})),
        )
        .await;
    let (cookie, _) = session_cookie(&headers);
    let (_, list) = env.api(Method::GET, "/api/v1/api-tokens", None).await;
    let id = s(&list["items"][0], &["id"]).to_owned();
    env.api(Method::DELETE, &format!("/api/v1/api-tokens/{id}"), None).await;
    let (status, _, _) = env
        .call(Method::GET, "/api/v1/session", None, &[("Cookie", &cookie)], None)
        .await;
    assert_eq!(status, 401);

    // The page itself is open, embedded, and locked down by its headers.
    let resp = env.http.get(format!("{origin}/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let csp = resp.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(resp.headers()["x-frame-options"], "DENY");
    assert!(resp.text().await.unwrap().contains("/assets/app.js"));
    let js = env.http.get(format!("{origin}/assets/app.js")).send().await.unwrap();
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let (status, _, _) = env.call(Method::GET, "/assets/nope.js", None, &[], None).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_metrics_and_gateway_views_count_the_fleet() {
    let mut env = Env::start(6, "5m").await;
    env.wait_converged().await;
    env.sim.set_health("argocd", "app-00001", "Degraded", "");
    env.sim.set_sync_status("argocd", "app-00002", "OutOfSync");
    env.wait_for("the changes arrive", || async {
        env.hub_app("argocd", "app-00002")
            .await
            .is_some_and(|a| a["sync"]["status"] == "OutOfSync")
    })
    .await;
    let total = env.sim.apps().len();
    let count = |field: &'static str, value: &'static str| {
        let env = &env;
        async move {
            let (_, v) = env
                .api(
                    Method::GET,
                    &format!("/api/v1/applications?{field}={value}&limit=1"),
                    None,
                )
                .await;
            v["total"].as_f64().unwrap()
        }
    };
    let (degraded, out_of_sync) = (count("health", "Degraded").await, count("sync", "OutOfSync").await);
    assert!(degraded >= 1.0 && out_of_sync >= 1.0);
    let gw = env.gateway_id.clone();
    let text = env.metrics_text().await;
    let m = |name: &str, labels: &[(&str, &str)]| metric_value(&text, name, labels);
    let id = [("gateway_id", gw.as_str())];
    assert_eq!(m("argocd_gateway_hub_gateway_connected", &id), Some(1.0), "{text}");
    assert_eq!(
        m(
            "argocd_gateway_hub_gateway_applications_by_health",
            &[("gateway_id", &gw), ("health", "Degraded")]
        ),
        Some(degraded)
    );
    let healthy = m(
        "argocd_gateway_hub_gateway_applications_by_health",
        &[("gateway_id", &gw), ("health", "Healthy")],
    )
    .unwrap();
    assert!(healthy >= 5.0 && healthy < total as f64, "{healthy}");
    assert_eq!(
        m(
            "argocd_gateway_hub_gateway_applications_by_sync",
            &[("gateway_id", &gw), ("sync", "OutOfSync")]
        ),
        Some(out_of_sync)
    );
    let expiry = m("argocd_gateway_hub_gateway_certificate_expiry_timestamp_seconds", &id).unwrap();
    let now = jiff::Timestamp::now().as_second() as f64;
    assert!(expiry > now + 29.0 * 86400.0, "{expiry}");
    let seen = m("argocd_gateway_hub_gateway_last_seen_timestamp_seconds", &id).unwrap();
    assert!((now - seen).abs() < 120.0, "{seen}");
    let lag = m("argocd_gateway_hub_gateway_relay_lag_seconds", &id).expect("relay lag after a delta");
    assert!((0.0..60.0).contains(&lag), "{lag}");
    assert!(text.contains("argocd_gateway_hub_relay_lag_seconds_bucket"), "{text}");
    assert!(
        m(
            "argocd_gateway_hub_gateway_info",
            &[("gateway_id", &gw), ("name", "e2e")]
        )
        .is_some()
    );
    assert!(
        !text.contains("argocd_gateway_hub_application_status"),
        "per-application series are off by default"
    );

    // The gateway view: counts, relay lag and update state against the desired version.
    let (_, g) = env.api(Method::GET, &format!("/api/v1/gateways/{gw}"), None).await;
    assert_eq!(g["applications"]["health"]["Degraded"], json!(degraded as u64), "{g}");
    assert_eq!(g["applications"]["sync"]["OutOfSync"], json!(out_of_sync as u64), "{g}");
    assert!(g["relayLagSeconds"].is_number(), "{g}");
    assert_eq!(g["update"]["state"], "unknown");
    for (desired, state) in [("0.9.0", "available"), ("1.0.0", "held"), ("0.0.1", "held")] {
        let (status, _) = env
            .api(
                Method::PUT,
                "/api/v1/desired-version",
                Some(json!({"version": desired})),
            )
            .await;
        assert_eq!(status, 200);
        let (_, g) = env.api(Method::GET, "/api/v1/gateways", None).await;
        assert_eq!(g["items"][0]["update"]["state"], state, "{desired}: {g}");
        assert_eq!(g["items"][0]["update"]["desiredVersion"], desired);
    }

    env.stop_gateway().await;
    env.wait_for("the hub marks the gateway disconnected", || async {
        !env.connected().await
    })
    .await;
    let text = env.metrics_text().await;
    assert_eq!(
        metric_value(&text, "argocd_gateway_hub_gateway_connected", &id),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_application_metrics_when_asked() {
    let env = Env::start_tuned(3, "5m", |a| a.history.app_metrics = true).await;
    env.wait_converged().await;
    let text = env.metrics_text().await;
    for name in ["app-00000", "app-00001", "app-00002"] {
        assert_eq!(
            metric_value(
                &text,
                "argocd_gateway_hub_application_status",
                &[
                    ("gateway_id", &env.gateway_id),
                    ("name", name),
                    ("health", "Healthy"),
                    ("sync", "Synced")
                ]
            ),
            Some(1.0),
            "{name}: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_lists_page_sort_and_search() {
    let env = Env::start(30, "5m").await;
    env.wait_converged().await;
    env.sim.set_health("argocd", "app-00017", "Degraded", "");
    env.wait_for("the change arrives", || async {
        env.hub_app("argocd", "app-00017")
            .await
            .is_some_and(|a| a["health"]["status"] == "Degraded")
    })
    .await;
    let total = env.sim.apps().len();
    let env = &env;
    let list = |q: &'static str| async move {
        let (status, v) = env.api(Method::GET, &format!("/api/v1/applications?{q}"), None).await;
        assert_eq!(status, 200, "{q}: {v}");
        v
    };
    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| s(a, &["name"]).to_owned())
            .collect()
    };
    let page = list("limit=10&offset=0").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 10);
    assert_eq!(page["total"], json!(total));
    assert_eq!((page["offset"].clone(), page["limit"].clone()), (json!(0), json!(10)));
    assert!(page["lastEventId"].as_i64().unwrap() > 0);
    let all = list("").await;
    assert_eq!(all["items"].as_array().unwrap().len(), total, "no limit: everything");
    let last_page = list("limit=10&offset=25").await;
    assert_eq!(last_page["items"].as_array().unwrap().len(), (total - 25).min(10));
    let beyond = list("limit=10&offset=100000").await;
    assert_eq!(beyond["items"], json!([]));
    let mut sorted = names(&all);
    sorted.sort();
    assert_eq!(
        names(&list("sort=-name&limit=1").await),
        [sorted.last().unwrap().clone()]
    );
    assert_eq!(names(&list("sort=name&limit=2").await), sorted[..2].to_vec());
    let degraded = list("health=Degraded&sort=name").await;
    assert!(names(&degraded).contains(&"app-00017".to_owned()));
    let worst = list("sort=health").await;
    let worst_first = names(&worst)[..degraded["total"].as_u64().unwrap() as usize].to_vec();
    assert_eq!(worst_first.len(), names(&degraded).len());
    assert!(
        worst["items"].as_array().unwrap()[..worst_first.len()]
            .iter()
            .all(|a| a["health"]["status"] == "Degraded"),
        "worst first"
    );
    let found = names(&list("q=APP-0001").await);
    assert_eq!(found.len(), 10, "{found:?}");
    assert!(found.iter().all(|n| n.starts_with("app-0001")));
    let summary = list("view=summary&limit=1").await;
    assert!(summary["items"][0].get("resources").is_none());
    assert!(summary["items"][0]["resourceCount"].is_number());
    let facets = list("facets=true&limit=1").await;
    let projects = facets["facets"]["projects"].as_array().unwrap();
    assert!(projects.contains(&json!("team-a")) && projects.contains(&json!("team-b")));
    assert_eq!(facets["facets"]["gateways"], json!([env.gateway_id]));
    let one_gw = env
        .api(
            Method::GET,
            &format!("/api/v1/applications?gateway={}&limit=1", env.gateway_id),
            None,
        )
        .await
        .1;
    assert_eq!(one_gw["total"], json!(total));
    assert_eq!(list("gateway=gw-nobody").await["total"], 0);
    for bad in ["sort=size", "limit=0", "view=tiny"] {
        let (status, _) = env.api(Method::GET, &format!("/api/v1/applications?{bad}"), None).await;
        assert_eq!(status, 400, "{bad}");
    }
}

/// An HTTPS client that trusts only `ca_pem`.
fn https_client(ca_pem: &str) -> reqwest::Client {
    let roots = argocd_gateway::tls::parse_certs_pem(ca_pem.as_bytes(), "test CA").unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(argocd_gateway::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(argocd_gateway::tls::root_store(roots.iter()))
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_listener_serves_tls_with_secure_cookies() {
    argocd_gateway::tls::install_crypto_provider();
    let tmp = tempfile::tempdir().unwrap();
    // A certificate of another CA, given as files.
    let (ca, _) = argocd_gateway::certs::CertAuthority::generate("test web CA").unwrap();
    let (leaf, key) = ca
        .issue_server(&["localhost".into()], Duration::from_secs(3600))
        .unwrap();
    let cert_file = tmp.path().join("web.pem");
    let key_file = tmp.path().join("web-key.pem");
    std::fs::write(&cert_file, format!("{}{}", leaf.pem, ca.cert_pem())).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let mut args = serve_args(&tmp.path().join("hub"), free_port(), free_port());
    args.http.http_tls_cert = Some(cert_file);
    args.http.http_tls_key = Some(key_file);
    let hub = hub::start(args).await.expect("hub starts with HTTPS");
    assert!(hub.http_url.starts_with("https://"), "{}", hub.http_url);
    let client = https_client(ca.cert_pem());
    let base = format!("https://localhost:{}", hub.http_addr.port());
    let resp = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let token = std::fs::read_to_string(&hub.admin_token_path).unwrap();
    let resp = client
        .post(format!("{base}/api/v1/login"))
        .json(&json!({"token": token.trim()}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let set_cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set_cookie.contains("; Secure"), "{set_cookie}");
    // Plain HTTP to the TLS port gets no answer it could misread.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/healthz", hub.http_addr.port()))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    hub.shutdown().await;

    // --http-tls: the hub's own certificate, from its CA, for --hostname names.
    let mut args = serve_args(&tmp.path().join("hub2"), free_port(), free_port());
    args.http.http_tls = true;
    let hub = hub::start(args)
        .await
        .expect("hub starts with its own HTTPS certificate");
    let resp = https_client(&hub.ca_pem)
        .get(format!("https://localhost:{}/", hub.http_addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    hub.shutdown().await;
}

/// The same hub behaviour on PostgreSQL: each test above runs again with the hub's store in a
/// PostgreSQL server started for it (the hub's files made first, as `hub init` does).
mod on_postgres {
    use std::cell::RefCell;

    use super::postgres;

    use argocd_gateway::hub::ServeArgs;

    thread_local! {
        /// The database the hubs of the running test use; none: SQLite.
        static STORE: RefCell<Option<String>> = const { RefCell::new(None) };
    }

    /// Points a hub at the running test's PostgreSQL, when it has one.
    pub(super) fn store_args(args: &mut ServeArgs) {
        let Some(url) = STORE.with(|s| s.borrow().clone()) else {
            return;
        };
        args.store.url = Some(argocd_gateway::secret::Secret::new(url));
        args.store.peer_addr = format!("127.0.0.1:{}", super::free_port()).parse().unwrap();
        argocd_gateway::hub::pki::load_or_init(&args.data_dir, &args.hostnames).expect("hub files");
    }

    /// Runs a test of this file with its hubs on a fresh PostgreSQL server. The test's body runs
    /// on this thread (its runtime's `block_on`), where it reads the store.
    fn run(test: fn()) {
        let pg = postgres::Postgres::start();
        let url = pg.create_db("hub");
        STORE.with(|s| *s.borrow_mut() = Some(url));
        let outcome = std::panic::catch_unwind(test);
        let url = STORE.with(|s| s.borrow_mut().take()).unwrap_or_default();
        if let Err(panic) = outcome {
            drop(pg);
            std::panic::resume_unwind(panic);
        }
        // The hubs did use this database.
        let gateways = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
                tokio::spawn(conn);
                let row = client.query_one("SELECT count(*) FROM gateways", &[]).await.unwrap();
                row.get::<_, i64>(0)
            });
        assert!(gateways > 0, "the test's hub did not keep its gateways in PostgreSQL");
    }

    macro_rules! on_postgres {
        ($($name:ident),* $(,)?) => {
            $(
                #[test]
                fn $name() {
                    run(super::$name);
                }
            )*
        };
    }

    on_postgres!(
        relays_every_field_live_changes_and_deletions,
        a_full_relist_of_unchanged_state_sends_nothing,
        hub_and_gateway_restarts_lose_nothing_and_skip_the_snapshot,
        requests_reach_argocd_and_fail_typed,
        wait_returns_deployed_failed_and_timeout,
        check_reports_registration_and_hub_reachability,
        a_huge_application_travels_as_a_stub_and_its_big_tree_arrives_in_pieces,
        an_application_that_cannot_be_read_keeps_its_state_at_the_hub_marked,
        feed_resumes_with_exactly_the_missed_events_and_filters_apply,
        feed_answers_410_for_an_expired_id_and_ids_survive_a_hub_restart,
        timeline_records_transitions_per_app_and_per_gateway_bounded,
        roles_decide_who_may_do_what,
        page_sessions_are_protected_against_cross_site_requests,
        fleet_metrics_and_gateway_views_count_the_fleet,
        per_application_metrics_when_asked,
        application_lists_page_sort_and_search,
    );
}
// ---- Deployment verification: simulated applications with Git history and operations -----

/// A 40-hex "commit" per number, distinct in its first 7 characters.
fn rev(n: u8) -> String {
    format!("{n:02x}{}", "0123456789abcdef0123456789abcdef012345")
}

/// The manifests the `shop` applications render: a PreSync migration, a ConfigMap and a Service
/// in wave 0, the Deployment in wave 1, a PostSync smoke test.
fn shop_manifests(image: &str, mode: &str) -> Vec<Value> {
    vec![
        json!({"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": "migrate", "annotations": {"argocd.argoproj.io/hook": "PreSync"}}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shop"}, "data": {"mode": mode}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "shop"}, "spec": {"ports": [{"port": 80}]}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "shop", "annotations": {"argocd.argoproj.io/sync-wave": "1"}},
               "spec": {"template": {"spec": {"containers": [{"name": "web", "image": image}]}}}}),
        json!({"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": "smoke", "annotations": {"argocd.argoproj.io/hook": "PostSync"}}}),
    ]
}

/// An Application object for the simulator: one Git source, deploying to namespace `shop`.
fn shop_app(name: &str, automated: bool, labels: Value) -> Value {
    let policy = if automated {
        json!({"automated": {"prune": true}})
    } else {
        json!({"syncOptions": ["CreateNamespace=true"]})
    };
    json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "project": "default",
            "source": {"repoURL": "https://git.example.com/shop.git", "path": "deploy", "targetRevision": "main"},
            "destination": {"server": "https://kubernetes.default.svc", "namespace": "shop"},
            "syncPolicy": policy
        }
    })
}

/// What the shop change sets: the image of container `web`.
fn image_is(image: &str) -> Value {
    json!([{"group": "apps", "kind": "Deployment", "namespace": "shop", "name": "shop",
            "path": "spec.template.spec.containers[name=web].image", "value": image}])
}

/// A wait streamed as NDJSON: its lines are read as the hub sends them and kept.
struct WaitStream {
    rx: tokio::sync::mpsc::UnboundedReceiver<Value>,
    seen: Vec<Value>,
}

impl WaitStream {
    /// Waits for a line matching `f` (bounded), keeping every line read on the way.
    async fn until(&mut self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        if let Some(l) = self.seen.iter().find(|l| f(l)) {
            return l.clone();
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(l)) => {
                    self.seen.push(l.clone());
                    if f(&l) {
                        return l;
                    }
                }
                Ok(None) => panic!("the wait ended before {what}: {:#?}", self.seen),
                Err(_) => panic!("not within {WAIT:?}: {what}; lines so far: {:#?}", self.seen),
            }
        }
    }

    /// The progress line of `app` matching `f`.
    async fn progress(&mut self, app: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        self.until(what, |l| l["type"] == "progress" && l["name"] == app && f(l))
            .await
    }

    async fn result(&mut self) -> Value {
        self.until("the result", |l| l["type"] == "result").await
    }

    /// Reads what has arrived so far without waiting.
    fn drain(&mut self) {
        while let Ok(l) = self.rx.try_recv() {
            self.seen.push(l);
        }
    }

    fn has_result(&mut self) -> bool {
        self.drain();
        self.seen.iter().any(|l| l["type"] == "result")
    }
}

fn message(l: &Value) -> &str {
    l["message"].as_str().unwrap_or("")
}

impl Env {
    /// Starts a streamed wait (NDJSON) and hands its lines over as they arrive.
    async fn stream_wait(&self, path: &str, body: Value, token: Option<&str>) -> WaitStream {
        let resp = self
            .http
            .post(format!("http://{}{path}?format=ndjson", self.hub().http_addr))
            .bearer_auth(token.unwrap_or(&self.admin_token))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
        assert_eq!(
            resp.headers().get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/x-ndjson")
        );
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            use futures_util::StreamExt;
            let mut body = resp.bytes_stream();
            let mut buf = Vec::new();
            while let Some(Ok(chunk)) = body.next().await {
                buf.extend_from_slice(&chunk);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    let v: Value = serde_json::from_slice(&line).expect("each line is JSON");
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        WaitStream { rx, seen: vec![] }
    }

    /// Waits until the hub shows `name` at `revision` with its operation in `phase`.
    async fn hub_shows(&self, name: &str, revision: &str, phase: &str) {
        self.wait_for(
            &format!("the hub shows {name} at {revision} with operation {phase}"),
            || async {
                self.hub_app("argocd", name).await.is_some_and(|a| {
                    (a["sync"]["revision"] == revision
                        || a["sync"]["revisions"]
                            .as_array()
                            .is_some_and(|r| r.iter().any(|x| x == revision)))
                        && a["operation"]["phase"] == phase
                })
            },
        )
        .await;
    }

    /// A non-streamed wait of one application.
    async fn wait_app(&self, name: &str, body: Value) -> Value {
        let (status, v) = wait_result(self, name, body).await;
        assert_eq!(status, 200, "{v}");
        v
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_stays_progressing_through_hooks_and_waves_until_the_operation_ends() {
    let env = Env::start(0, "5m").await;
    env.sim.add_simulated_app(
        shop_app("shop", false, json!({})),
        &[&rev(1)],
        shop_manifests("shop:1", "a"),
    );
    env.hub_shows("shop", &rev(1), "Succeeded").await;
    // The hub relays the sync policy and the history.
    let item = env.hub_app("argocd", "shop").await.unwrap();
    assert_eq!(item["syncPolicy"]["automated"], false, "{item}");
    assert_eq!(item["syncPolicy"]["syncOptions"], json!(["CreateNamespace=true"]));
    assert_eq!(item["history"][0]["id"], 0);
    assert_eq!(item["history"][0]["revision"], rev(1));

    // A commit Argo CD has not seen; the wait refreshes, then syncs (no automated sync here).
    env.sim
        .push_commit("argocd", "shop", 0, &rev(2), Some(shop_manifests("shop:2", "a")));
    env.sim.clear_requests();
    let path = format!("{}/wait", env.app_path("argocd", "shop"));
    let mut w = env
        .stream_wait(
            &path,
            json!({"revision": rev(2), "refresh": true, "sync": true, "timeoutSeconds": 120}),
            None,
        )
        .await;
    w.until("the refresh", |l| {
        l["type"] == "trigger" && l["action"] == "refresh" && l["result"] == "ok"
    })
    .await;
    w.until("the sync", |l| {
        l["type"] == "trigger" && l["action"] == "sync" && l["result"] == "ok"
    })
    .await;
    let reqs = env.sim.requests();
    let sync = reqs
        .iter()
        .find(|r| r.method == "POST" && r.path == "/api/v1/applications/shop/sync")
        .expect("the wait's sync reached Argo CD");
    let body: Value = serde_json::from_str(&sync.body).unwrap();
    assert_eq!(body["revision"], rev(2), "{body}");
    assert!(
        reqs.iter()
            .any(|r| r.path == "/api/v1/applications/shop" && r.query_values("refresh") == vec!["normal"]),
        "{reqs:?}"
    );

    // The operation runs: PreSync hook, wave 0, wave 1, PostSync hook.
    w.progress("shop", "the PreSync hook", |l| {
        message(l).contains("PreSync hook Job/migrate Running")
    })
    .await;
    assert_eq!(env.sim.step_operation("argocd", "shop").as_deref(), Some("Running"));
    w.progress("shop", "wave 0", |l| message(l).contains("(Sync, wave 0)"))
        .await;
    assert_eq!(env.sim.step_operation("argocd", "shop").as_deref(), Some("Running"));
    w.progress("shop", "wave 1", |l| message(l).contains("(Sync, wave 1)"))
        .await;
    assert_eq!(env.sim.step_operation("argocd", "shop").as_deref(), Some("Running"));
    let post = w
        .progress("shop", "the PostSync hook", |l| {
            message(l).contains("PostSync hook Job/smoke Running")
        })
        .await;
    assert_eq!(post["verdict"], "Progressing", "{post}");
    assert_eq!(post["missing"], json!(["operation"]), "{post}");
    // The resources are applied and the application may even look Synced: still not deployed
    // while the PostSync hook runs.
    let item = env.hub_app("argocd", "shop").await.unwrap();
    assert_eq!(item["operation"]["progress"]["syncPhase"], "PostSync", "{item}");
    assert_eq!(
        item["operation"]["progress"]["hooks"][1]["hookType"], "PostSync",
        "{item}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!w.has_result(), "no result while the operation runs: {:#?}", w.seen);

    assert_eq!(env.sim.step_operation("argocd", "shop").as_deref(), Some("Succeeded"));
    let result = w.result().await;
    assert_eq!(result["result"], "Deployed", "{result}");
    let app = &result["applications"][0];
    assert_eq!(app["verdict"], "Deployed", "{result}");
    assert_eq!(app["argocdRevision"], rev(2)[..12], "{result}");
    assert!(message(app).contains("Synced and Healthy"), "{result}");
    assert_eq!(result["application"]["history"][1]["revision"], rev(2), "{result}");
    // The progress lines said what was missing on the way.
    assert!(
        w.seen
            .iter()
            .any(|l| l["type"] == "progress" && l["verdict"] == "NotYetSeen"),
        "{:#?}",
        w.seen
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_hook_fails_the_wait_with_the_hooks_message() {
    let env = Env::start(0, "5m").await;
    env.sim.add_simulated_app(
        shop_app("cart", true, json!({})),
        &[&rev(1)],
        shop_manifests("shop:1", "a"),
    );
    env.hub_shows("cart", &rev(1), "Succeeded").await;
    env.sim
        .push_commit("argocd", "cart", 0, &rev(2), Some(shop_manifests("shop:2", "a")));
    let path = format!("{}/wait", env.app_path("argocd", "cart"));
    // Automated sync: the refresh starts the operation; a sync request would be skipped.
    let mut w = env
        .stream_wait(
            &path,
            json!({"revision": rev(2), "refresh": "hard", "sync": true, "timeoutSeconds": 120}),
            None,
        )
        .await;
    let skipped = w
        .until("the skipped sync", |l| l["type"] == "trigger" && l["action"] == "sync")
        .await;
    assert_eq!(skipped["result"], "skipped", "{skipped}");
    assert!(message(&skipped).contains("automated sync is on"), "{skipped}");
    w.progress("cart", "the operation", |l| l["missing"] == json!(["operation"]))
        .await;
    for _ in 0..3 {
        env.sim.step_operation("argocd", "cart");
    }
    w.progress("cart", "the PostSync hook", |l| {
        message(l).contains("PostSync hook Job/smoke Running")
    })
    .await;
    assert!(
        env.sim
            .fail_hook("argocd", "cart", "smoke", "Job has reached the specified backoff limit")
    );
    let result = w.result().await;
    assert_eq!(result["result"], "Failed", "{result}");
    let app = &result["applications"][0];
    assert_eq!(app["verdict"], "Failed", "{result}");
    assert!(
        message(app).contains("one or more synchronization tasks completed unsuccessfully"),
        "{result}"
    );
    assert!(
        message(app).contains("PostSync hook Job/smoke Failed: Job has reached the specified backoff limit"),
        "{result}"
    );

    // The fix, synced by the wait although automated sync is on: forceSync.
    env.sim
        .push_commit("argocd", "cart", 0, &rev(3), Some(shop_manifests("shop:3", "a")));
    env.sim.clear_requests();
    let mut w = env
        .stream_wait(
            &path,
            json!({"revision": rev(3), "sync": true, "forceSync": true, "timeoutSeconds": 120}),
            None,
        )
        .await;
    w.until("the forced sync", |l| {
        l["type"] == "trigger" && l["action"] == "sync" && l["result"] == "ok"
    })
    .await;
    let reqs = env.sim.requests();
    let sync = reqs
        .iter()
        .find(|r| r.method == "POST" && r.path == "/api/v1/applications/cart/sync")
        .expect("the forced sync reached Argo CD");
    let body: Value = serde_json::from_str(&sync.body).unwrap();
    assert_eq!(body["revision"], rev(3), "{body}");
    assert_eq!(env.sim.run_operation("argocd", "cart").as_deref(), Some("Succeeded"));
    let result = w.result().await;
    assert_eq!(result["result"], "Deployed", "{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_five_scenarios_get_their_verdicts_by_revision_and_by_content() {
    let env = Env::start(0, "5m").await;
    env.sim.add_simulated_app(
        shop_app("web", true, json!({})),
        &[&rev(1)],
        shop_manifests("shop:1", "a"),
    );
    env.hub_shows("web", &rev(1), "Succeeded").await;
    let deploy = |n: u8, image: &'static str, mode: &'static str| {
        let env = &env;
        async move {
            env.sim
                .push_commit("argocd", "web", 0, &rev(n), Some(shop_manifests(image, mode)));
            env.sim.refresh_app("argocd", "web");
            assert_eq!(env.sim.run_operation("argocd", "web").as_deref(), Some("Succeeded"));
            env.hub_shows("web", &rev(n), "Succeeded").await;
        }
    };
    let path = format!("{}/wait", env.app_path("argocd", "web"));

    // (1) Argo CD runs our revision, synced and healthy.
    let v = env
        .wait_app("web", json!({"revision": rev(1), "timeoutSeconds": 60}))
        .await;
    assert_eq!(v["result"], "Deployed", "{v}");

    // (3) Our commit is pushed but Argo CD has not refreshed: not yet seen, with and without
    // expectations (the target of the older revision does not have our image).
    env.sim
        .push_commit("argocd", "web", 0, &rev(2), Some(shop_manifests("shop:2", "a")));
    let mut w = env
        .stream_wait(
            &path,
            json!({"revision": rev(2), "expectations": image_is("shop:2"), "timeoutSeconds": 120}),
            None,
        )
        .await;
    let l = w
        .progress("web", "not yet seen, by content", |l| {
            l["verdict"] == "NotYetSeen" && message(l).contains("does not have our change")
        })
        .await;
    assert_eq!(l["missing"], json!(["refresh"]), "{l}");
    assert_eq!(l["expectations"][0]["target"]["value"], "shop:1", "{l}");
    drop(w);
    let mut w = env
        .stream_wait(&path, json!({"revision": rev(2), "timeoutSeconds": 120}), None)
        .await;
    w.progress("web", "not yet seen, by revision", |l| {
        l["verdict"] == "NotYetSeen" && message(l).contains("revision differs, content not checked")
    })
    .await;
    drop(w);

    // Argo CD deploys it.
    env.sim.refresh_app("argocd", "web");
    assert_eq!(env.sim.run_operation("argocd", "web").as_deref(), Some("Succeeded"));
    env.hub_shows("web", &rev(2), "Succeeded").await;
    let v = env
        .wait_app(
            "web",
            json!({"revision": rev(2), "expectations": image_is("shop:2"), "timeoutSeconds": 60}),
        )
        .await;
    assert_eq!(v["result"], "Deployed", "{v}");
    assert_eq!(v["applications"][0]["expectations"][0]["live"]["met"], true, "{v}");

    // (5) A later, unrelated commit leaves our change in place: deployed, judged by content.
    deploy(3, "shop:2", "b").await;
    let v = env
        .wait_app(
            "web",
            json!({"revision": &rev(2)[..7], "expectations": image_is("shop:2"), "timeoutSeconds": 60}),
        )
        .await;
    assert_eq!(v["result"], "Deployed", "{v}");
    assert!(message(&v["applications"][0]).contains("keeps our change"), "{v}");
    // Without expectations the later revision cannot be judged.
    let mut w = env
        .stream_wait(&path, json!({"revision": rev(2), "timeoutSeconds": 120}), None)
        .await;
    w.progress("web", "revision differs", |l| {
        l["verdict"] == "NotYetSeen" && message(l).contains("revision differs, content not checked")
    })
    .await;
    drop(w);

    // (4) A later commit by someone else overwrites our image: overwritten, at once.
    deploy(4, "shop:3", "b").await;
    let v = env
        .wait_app(
            "web",
            json!({"revision": rev(2), "expectations": image_is("shop:2"), "timeoutSeconds": 600}),
        )
        .await;
    assert_eq!(v["result"], "Failed", "{v}");
    let app = &v["applications"][0];
    assert_eq!(app["verdict"], "Overwritten", "{v}");
    assert!(
        message(app).contains("expected \"shop:2\", target has \"shop:3\""),
        "{v}"
    );
    assert_eq!(app["expectations"][0]["target"]["value"], "shop:3", "{v}");
    // Without expectations, again only "revision differs".
    let mut w = env
        .stream_wait(&path, json!({"revision": rev(2), "timeoutSeconds": 120}), None)
        .await;
    w.progress("web", "revision differs", |l| {
        l["verdict"] == "NotYetSeen" && message(l).contains("revision differs, content not checked")
    })
    .await;
    drop(w);
    // A bad expectation path is refused before waiting.
    let (status, v) = wait_result(
        &env,
        "web",
        json!({"revision": rev(2), "timeoutSeconds": 600,
               "expectations": [{"kind": "Deployment", "name": "shop", "path": "spec..image", "value": "x"}]}),
    )
    .await;
    assert_eq!(status, 400, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_applications_by_label_with_an_expected_count() {
    let env = Env::start(0, "5m").await;
    let shops = ["shop-a", "shop-b", "shop-c"];
    for name in shops {
        env.sim.add_simulated_app(
            shop_app(name, true, json!({"team": "shop"})),
            &[&rev(1)],
            shop_manifests("shop:1", "a"),
        );
    }
    env.sim.add_simulated_app(
        shop_app("other", true, json!({"team": "other"})),
        &[&rev(1)],
        shop_manifests("shop:1", "a"),
    );
    for name in shops {
        env.hub_shows(name, &rev(1), "Succeeded").await;
    }
    env.hub_shows("other", &rev(1), "Succeeded").await;

    // The wrong count fails at once, naming what was found (a long timeout proves no waiting).
    let (status, v) = env
        .api(
            Method::POST,
            "/api/v1/wait",
            Some(json!({"selector": "team=shop", "expectCount": 2, "timeoutSeconds": 3600})),
        )
        .await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["code"], "count_mismatch", "{v}");
    assert_eq!(v["found"].as_array().unwrap().len(), 3, "{v}");
    assert!(s(&v, &["error"]).contains("argocd/shop-b"), "{v}");
    // A viewer may wait but not trigger a refresh.
    let viewer = env.api_token("ci-read", "viewer", None).await;
    let (status, v, _) = env
        .call(
            Method::POST,
            "/api/v1/wait",
            Some(&viewer),
            &[],
            Some(json!({"selector": "team=shop", "refresh": true, "timeoutSeconds": 5})),
        )
        .await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(v["requiredRole"], "operator", "{v}");

    // One commit for the three: pushed, refreshed by the wait, synced by Argo CD.
    for name in shops {
        env.sim
            .push_commit("argocd", name, 0, &rev(2), Some(shop_manifests("shop:2", "a")));
    }
    let mut w = env
        .stream_wait(
            "/api/v1/wait",
            json!({"selector": "team=shop", "expectCount": 3, "revision": rev(2), "refresh": true,
                   "expectations": image_is("shop:2"), "timeoutSeconds": 120}),
            None,
        )
        .await;
    for name in shops {
        w.progress(name, "its operation", |l| l["missing"] == json!(["operation"]))
            .await;
    }
    assert!(!w.has_result(), "{:#?}", w.seen);
    assert!(
        !w.seen.iter().any(|l| l["name"] == "other"),
        "only the selected applications: {:#?}",
        w.seen
    );
    for name in shops {
        assert_eq!(env.sim.run_operation("argocd", name).as_deref(), Some("Succeeded"));
    }
    let result = w.result().await;
    assert_eq!(result["result"], "Deployed", "{result}");
    assert_eq!(result["counts"], json!({"Deployed": 3}), "{result}");
    let names: Vec<&str> = result["applications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, shops);

    // The next commit fails in one application: the whole wait fails, naming it.
    for name in shops {
        env.sim
            .push_commit("argocd", name, 0, &rev(3), Some(shop_manifests("shop:3", "a")));
    }
    let mut w = env
        .stream_wait(
            "/api/v1/wait",
            json!({"applications": [{"namespace": "argocd", "name": "shop-a"},
                                    {"gatewayId": env.gateway_id, "namespace": "argocd", "name": "shop-b"}],
                   "revision": rev(3), "refresh": true, "timeoutSeconds": 120}),
            None,
        )
        .await;
    for name in ["shop-a", "shop-b"] {
        w.progress(name, "its operation", |l| l["missing"] == json!(["operation"]))
            .await;
    }
    assert_eq!(env.sim.run_operation("argocd", "shop-a").as_deref(), Some("Succeeded"));
    for _ in 0..3 {
        env.sim.step_operation("argocd", "shop-b");
    }
    assert!(
        env.sim
            .fail_hook("argocd", "shop-b", "smoke", "smoke test: checkout returned 500")
    );
    let result = w.result().await;
    assert_eq!(result["result"], "Failed", "{result}");
    let b = result["applications"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "shop-b")
        .unwrap();
    assert_eq!(b["verdict"], "Failed", "{result}");
    assert!(message(b).contains("checkout returned 500"), "{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_named_source_of_a_multi_source_application_decides() {
    let env = Env::start(0, "5m").await;
    let app = json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
        "metadata": {"name": "multi"},
        "spec": {
            "project": "default",
            "sources": [
                {"repoURL": "https://git.example.com/chart.git", "path": "chart", "targetRevision": "main", "name": "chart",
                 "helm": {"valueFiles": ["$values/prod.yaml"]}},
                {"repoURL": "https://git.example.com/values.git", "targetRevision": "main", "ref": "values", "name": "values"}
            ],
            "destination": {"server": "https://kubernetes.default.svc", "namespace": "shop"}
        }
    });
    env.sim
        .add_simulated_app(app, &[&rev(0xa1), &rev(0xb1)], shop_manifests("shop:1", "a"));
    env.hub_shows("multi", &rev(0xb1), "Succeeded").await;
    let ok = |extra: Value| {
        let mut body = json!({"revision": rev(0xb1), "timeoutSeconds": 60});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    for named in [
        json!({"sourcePosition": 2}),
        json!({"sourceName": "values"}),
        json!({"repoURL": "https://git.example.com/values"}),
        json!({}),
    ] {
        let v = env.wait_app("multi", ok(named.clone())).await;
        assert_eq!(v["result"], "Deployed", "{named}: {v}");
    }
    // The values commit is not the chart source's revision.
    let v = env
        .wait_app(
            "multi",
            json!({"revision": rev(0xb1), "sourcePosition": 1, "timeoutSeconds": 1}),
        )
        .await;
    assert_eq!(v["result"], "Timeout", "{v}");
    assert_eq!(v["applications"][0]["verdict"], "NotYetSeen", "{v}");
    assert_eq!(v["applications"][0]["argocdRevision"], rev(0xa1)[..12], "{v}");
    // Prefixes: 7 characters match, 6 are refused.
    let v = env
        .wait_app(
            "multi",
            json!({"revision": &rev(0xb1)[..7], "sourcePosition": 2, "timeoutSeconds": 60}),
        )
        .await;
    assert_eq!(v["result"], "Deployed", "{v}");
    let (status, v) = wait_result(
        &env,
        "multi",
        json!({"revision": &rev(0xb1)[..6], "sourcePosition": 2, "timeoutSeconds": 60}),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert!(s(&v, &["error"]).contains("6-character prefix"), "{v}");
    // A source the application does not have.
    let v = env
        .wait_app(
            "multi",
            json!({"revision": rev(0xb1), "sourcePosition": 3, "timeoutSeconds": 60}),
        )
        .await;
    assert_eq!(v["result"], "Failed", "{v}");
    assert!(message(&v["applications"][0]).contains("2 source(s)"), "{v}");

    // A values commit, synced by the wait to that source's revision.
    env.sim.push_commit("argocd", "multi", 1, &rev(0xb2), None);
    env.sim.clear_requests();
    let path = format!("{}/wait", env.app_path("argocd", "multi"));
    let mut w = env
        .stream_wait(
            &path,
            json!({"revision": rev(0xb2), "sourceName": "values", "sync": true, "timeoutSeconds": 120}),
            None,
        )
        .await;
    w.until("the sync", |l| {
        l["type"] == "trigger" && l["action"] == "sync" && l["result"] == "ok"
    })
    .await;
    let reqs = env.sim.requests();
    let sync = reqs
        .iter()
        .find(|r| r.method == "POST" && r.path == "/api/v1/applications/multi/sync")
        .expect("the sync reached Argo CD");
    let body: Value = serde_json::from_str(&sync.body).unwrap();
    assert_eq!(body["revisions"], json!([rev(0xb2)]), "{body}");
    assert_eq!(body["sourcePositions"], json!([2]), "{body}");
    assert_eq!(env.sim.run_operation("argocd", "multi").as_deref(), Some("Succeeded"));
    let result = w.result().await;
    assert_eq!(result["result"], "Deployed", "{result}");
    assert_eq!(
        result["application"]["sync"]["revisions"],
        json!([rev(0xa1), rev(0xb2)]),
        "{result}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_rollback_and_selective_sync_reach_argocd_with_its_bodies() {
    let env = Env::start(0, "5m").await;
    env.sim.add_simulated_app(
        shop_app("shop", false, json!({})),
        &[&rev(1)],
        shop_manifests("shop:1", "a"),
    );
    env.hub_shows("shop", &rev(1), "Succeeded").await;
    let app = env.app_path("argocd", "shop");
    env.sim
        .push_commit("argocd", "shop", 0, &rev(2), Some(shop_manifests("shop:2", "b")));
    env.sim.refresh_app("argocd", "shop");

    // A sync of one resource, forced, with a sync option.
    env.sim.clear_requests();
    let (status, v) = env
        .api(
            Method::POST,
            &format!("{app}/sync"),
            Some(
                json!({"resources": [{"group": "apps", "kind": "Deployment", "namespace": "shop", "name": "shop"}],
                        "force": true, "syncOptions": ["Validate=false"], "prune": true}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let reqs = env.sim.requests();
    let sync = reqs
        .iter()
        .find(|r| r.method == "POST" && r.path == "/api/v1/applications/shop/sync")
        .expect("the sync reached Argo CD");
    let body: Value = serde_json::from_str(&sync.body).unwrap();
    assert_eq!(
        body["resources"],
        json!([{"group": "apps", "kind": "Deployment", "namespace": "shop", "name": "shop"}]),
        "{body}"
    );
    assert_eq!(body["strategy"], json!({"apply": {"force": true}}), "{body}");
    assert_eq!(body["syncOptions"], json!({"items": ["Validate=false"]}), "{body}");
    assert_eq!(body["prune"], true);
    assert_eq!(body["appNamespace"], "argocd");
    assert_eq!(body["project"], "default");
    assert_eq!(env.sim.run_operation("argocd", "shop").as_deref(), Some("Succeeded"));
    // Only the Deployment changed: the ConfigMap still has the old data.
    let live = env.sim.live_objects("argocd", "shop");
    let find = |kind: &str| live.iter().find(|o| o["kind"] == kind).unwrap().clone();
    assert_eq!(
        find("Deployment")["spec"]["template"]["spec"]["containers"][0]["image"],
        "shop:2"
    );
    assert_eq!(find("ConfigMap")["data"]["mode"], "a");
    env.wait_for("the hub shows the second deployment in the history", || async {
        env.hub_app("argocd", "shop")
            .await
            .is_some_and(|a| a["history"].as_array().is_some_and(|h| h.len() == 2))
    })
    .await;
    let item = env.hub_app("argocd", "shop").await.unwrap();
    assert_eq!(item["sync"]["status"], "OutOfSync", "{item}");
    assert_eq!(item["history"][1]["revision"], rev(2), "{item}");
    assert_eq!(item["operation"]["phase"], "Succeeded", "{item}");

    // Terminate the running operation of a full sync.
    let (status, v) = env.api(Method::POST, &format!("{app}/sync"), Some(json!({}))).await;
    assert_eq!(status, 200, "{v}");
    env.sim.clear_requests();
    let (status, v) = env.api(Method::DELETE, &format!("{app}/operation"), None).await;
    assert_eq!(status, 200, "{v}");
    let reqs = env.sim.requests();
    let del = reqs
        .iter()
        .find(|r| r.method == "DELETE" && r.path == "/api/v1/applications/shop/operation")
        .expect("the termination reached Argo CD");
    assert_eq!(del.query_values("appNamespace"), vec!["argocd"]);
    assert_eq!(del.query_values("project"), vec!["default"]);
    assert_eq!(
        del.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    assert_eq!(
        env.sim.app("argocd", "shop").unwrap()["status"]["operationState"]["phase"],
        "Terminating"
    );
    assert_eq!(env.sim.step_operation("argocd", "shop").as_deref(), Some("Failed"));
    env.wait_for("the hub shows the terminated operation", || async {
        env.hub_app("argocd", "shop")
            .await
            .is_some_and(|a| a["operation"]["message"] == "Operation terminated")
    })
    .await;
    // Nothing runs any more: Argo CD's refusal comes back typed.
    let (status, v) = env.api(Method::DELETE, &format!("{app}/operation"), None).await;
    assert_eq!(status, 400, "{v}");
    assert!(s(&v, &["error"]).contains("No operation is in progress"), "{v}");

    // Roll back to the first deployment.
    env.sim.clear_requests();
    let (status, v) = env
        .api(
            Method::POST,
            &format!("{app}/rollback"),
            Some(json!({"id": 0, "prune": true})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let reqs = env.sim.requests();
    let rb = reqs
        .iter()
        .find(|r| r.method == "POST" && r.path == "/api/v1/applications/shop/rollback")
        .expect("the rollback reached Argo CD");
    let body: Value = serde_json::from_str(&rb.body).unwrap();
    assert_eq!(body["id"], 0, "{body}");
    assert_eq!(body["name"], "shop", "{body}");
    assert_eq!(body["prune"], true, "{body}");
    assert_eq!(body["dryRun"], false, "{body}");
    assert_eq!(body["appNamespace"], "argocd", "{body}");
    assert_eq!(env.sim.run_operation("argocd", "shop").as_deref(), Some("Succeeded"));
    let live = env.sim.live_objects("argocd", "shop");
    assert_eq!(
        live.iter().find(|o| o["kind"] == "Deployment").unwrap()["spec"]["template"]["spec"]["containers"][0]["image"],
        "shop:1"
    );
    // Unknown ids and automated applications are refused by Argo CD, typed.
    let (status, v) = env
        .api(Method::POST, &format!("{app}/rollback"), Some(json!({"id": 99})))
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(s(&v, &["error"]).contains("does not have deployment with id 99"), "{v}");
    env.sim.add_simulated_app(
        shop_app("auto", true, json!({})),
        &[&rev(1)],
        shop_manifests("shop:1", "a"),
    );
    env.hub_shows("auto", &rev(1), "Succeeded").await;
    let (status, v) = env
        .api(
            Method::POST,
            &format!("{}/rollback", env.app_path("argocd", "auto")),
            Some(json!({"id": 0})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(s(&v, &["error"]).contains("auto-sync is enabled"), "{v}");

    // Without the sync permission: the policy line to add.
    env.sim.update_token(
        &env.argocd_token,
        TokenSpec::account("gateway").without("applications", "sync"),
    );
    for (method, tail, body) in [
        (Method::DELETE, "operation", None),
        (Method::POST, "rollback", Some(json!({"id": 0}))),
    ] {
        let (status, v) = env.api(method, &format!("{app}/{tail}"), body).await;
        assert_eq!(status, 403, "{tail}: {v}");
        assert_eq!(v["code"], "permission_denied", "{v}");
        assert!(
            s(&v, &["missingPolicy"]).contains("applications, sync, */*"),
            "{tail}: {v}"
        );
    }
}

/// `argocd-gateway hub …` as a CI job runs it, against this environment's hub.
fn hub_cli(env: &Env, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_argocd-gateway"));
    c.arg("hub")
        .args(args)
        .args(["--hub-api", &format!("http://{}", env.hub().http_addr)])
        .args(["--token", &env.admin_token])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    c
}

/// The lines a running `hub wait` prints, read as they come.
struct CliLines {
    rx: tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl CliLines {
    fn follow(child: &mut tokio::process::Child) -> Self {
        use tokio::io::AsyncBufReadExt;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Self { rx, seen: vec![] }
    }

    /// Waits (bounded) for a printed line matching `f`.
    async fn until(&mut self, what: &str, f: impl Fn(&str) -> bool) -> String {
        if let Some(l) = self.seen.iter().find(|l| f(l)) {
            return l.clone();
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(l)) => {
                    self.seen.push(l.clone());
                    if f(&l) {
                        return l;
                    }
                }
                Ok(None) => panic!("hub wait ended before printing {what}: {:#?}", self.seen),
                Err(_) => panic!("hub wait did not print {what} within {WAIT:?}: {:#?}", self.seen),
            }
        }
    }

    /// Everything printed until the end of the output.
    async fn rest(&mut self) -> &[String] {
        while let Ok(Some(l)) = tokio::time::timeout(WAIT, self.rx.recv()).await {
            self.seen.push(l);
        }
        &self.seen
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_wait_prints_progress_and_the_cli_terminates_rolls_back_and_syncs_a_subset() {
    let env = Env::start(0, "5m").await;
    let shops = ["shop-a", "shop-b"];
    for name in shops {
        env.sim.add_simulated_app(
            shop_app(name, true, json!({"team": "shop"})),
            &[&rev(1)],
            shop_manifests("shop:1", "a"),
        );
    }
    env.sim.add_simulated_app(
        shop_app("manual", false, json!({})),
        &[&rev(1)],
        shop_manifests("shop:1", "a"),
    );
    for name in ["shop-a", "shop-b", "manual"] {
        env.hub_shows(name, &rev(1), "Succeeded").await;
    }

    // A wrong count fails at once (exit 1), naming what was found, whatever the timeout.
    let out = hub_cli(
        &env,
        &["wait", "-l", "team=shop", "--expect-count", "3", "--timeout", "1h"],
    )
    .output()
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("expected 3 application(s), found 2"), "{err}");
    assert!(err.contains("argocd/shop-a") && err.contains("argocd/shop-b"), "{err}");

    // A commit for both: `hub wait` refreshes them, prints each step, exits 0 once deployed.
    for name in shops {
        env.sim
            .push_commit("argocd", name, 0, &rev(2), Some(shop_manifests("shop:2", "a")));
    }
    let revision = rev(2);
    let mut child = hub_cli(
        &env,
        &[
            "wait",
            "-l",
            "team=shop",
            "--expect-count",
            "2",
            "--revision",
            &revision,
            "--expect",
            "apps/Deployment/shop/shop:spec.template.spec.containers[name=web].image=shop:2",
            "--refresh",
            "--timeout",
            "2m",
        ],
    )
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let mut out = CliLines::follow(&mut child);
    for name in shops {
        out.until(&format!("{name} refreshed"), |l| {
            l.contains(&format!("argocd/{name}")) && l.contains("refresh ok")
        })
        .await;
        out.until(&format!("{name}'s running operation"), |l| {
            l.contains(&format!("argocd/{name}")) && l.contains("Progressing") && l.contains("operation Running")
        })
        .await;
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "still waiting while the operations run: {:#?}",
        out.seen
    );
    for name in shops {
        assert_eq!(env.sim.run_operation("argocd", name).as_deref(), Some("Succeeded"));
    }
    let status = tokio::time::timeout(WAIT, child.wait()).await.unwrap().unwrap();
    let printed = out.rest().await.join("\n");
    assert_eq!(status.code(), Some(0), "{printed}");
    assert!(printed.contains("result: Deployed (2 application(s)"), "{printed}");
    for name in shops {
        assert!(
            printed
                .lines()
                .any(|l| l.contains(&format!("argocd/{name}")) && l.contains("Deployed") && l.contains(&rev(2)[..12])),
            "{name}: {printed}"
        );
    }

    // One application that never gets there: exit 2 at the timeout, with its verdict.
    let out = hub_cli(
        &env,
        &[
            "wait",
            &env.gateway_id,
            "argocd/manual",
            "--revision",
            &rev(9),
            "--timeout",
            "1s",
        ],
    )
    .output()
    .await
    .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{printed}");
    assert!(printed.contains("NotYetSeen"), "{printed}");
    assert!(printed.contains("result: Timeout"), "{printed}");

    // The actions, through the CLI.
    let manual = ["argocd/manual"];
    let gw = env.gateway_id.as_str();
    env.sim
        .push_commit("argocd", "manual", 0, &rev(2), Some(shop_manifests("shop:2", "b")));
    env.sim.refresh_app("argocd", "manual");
    env.sim.clear_requests();
    let out = hub_cli(
        &env,
        &[
            "sync",
            gw,
            manual[0],
            "--resource",
            "apps/Deployment/shop/shop",
            "--resource",
            "/ConfigMap/shop/shop",
            "--force",
            "--sync-option",
            "Validate=false",
            "--prune",
        ],
    )
    .output()
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reqs = env.sim.requests();
    let sync = reqs
        .iter()
        .find(|r| r.method == "POST" && r.path == "/api/v1/applications/manual/sync")
        .expect("hub sync reached Argo CD");
    let body: Value = serde_json::from_str(&sync.body).unwrap();
    assert_eq!(
        body["resources"],
        json!([{"group": "apps", "kind": "Deployment", "namespace": "shop", "name": "shop"},
               {"group": "", "kind": "ConfigMap", "namespace": "shop", "name": "shop"}]),
        "{body}"
    );
    assert_eq!(body["strategy"], json!({"apply": {"force": true}}), "{body}");
    assert_eq!(body["syncOptions"], json!({"items": ["Validate=false"]}), "{body}");
    assert_eq!(body["prune"], true, "{body}");

    // Terminate the running operation.
    env.sim.clear_requests();
    let out = hub_cli(&env, &["terminate", gw, manual[0]]).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        env.sim
            .requests()
            .iter()
            .any(|r| r.method == "DELETE" && r.path == "/api/v1/applications/manual/operation"),
        "hub terminate reached Argo CD"
    );
    assert_eq!(
        env.sim.app("argocd", "manual").unwrap()["status"]["operationState"]["phase"],
        "Terminating"
    );
    assert_eq!(env.sim.step_operation("argocd", "manual").as_deref(), Some("Failed"));

    // Roll back to history id 0.
    env.sim.clear_requests();
    let out = hub_cli(&env, &["rollback", gw, manual[0], "0", "--prune"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reqs = env.sim.requests();
    let rb = reqs
        .iter()
        .find(|r| r.method == "POST" && r.path == "/api/v1/applications/manual/rollback")
        .expect("hub rollback reached Argo CD");
    let body: Value = serde_json::from_str(&rb.body).unwrap();
    assert_eq!(
        (body["id"].clone(), body["prune"].clone(), body["name"].clone()),
        (json!(0), json!(true), json!("manual")),
        "{body}"
    );
    assert_eq!(env.sim.run_operation("argocd", "manual").as_deref(), Some("Succeeded"));
    // Argo CD's refusal reaches the user as an error and a non-zero exit.
    let out = hub_cli(&env, &["rollback", gw, manual[0], "99"])
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("does not have deployment with id 99"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_of_more_applications_than_requests_in_flight_refreshes_each() {
    // A wait keeps at most 8 requests to gateways in flight; the refreshes of the others start
    // as those finish, and none is forgotten.
    let env = Env::start(0, "5m").await;
    let names: Vec<String> = (0..12).map(|i| format!("fleet-{i:02}")).collect();
    for name in &names {
        env.sim.add_simulated_app(
            shop_app(name, true, json!({"fleet": "big"})),
            &[&rev(1)],
            shop_manifests("shop:1", "a"),
        );
    }
    for name in &names {
        env.hub_shows(name, &rev(1), "Succeeded").await;
        env.sim
            .push_commit("argocd", name, 0, &rev(2), Some(shop_manifests("shop:2", "a")));
    }
    let mut w = env
        .stream_wait(
            "/api/v1/wait",
            json!({"selector": "fleet=big", "expectCount": 12, "revision": rev(2), "refresh": true,
                   "timeoutSeconds": 120}),
            None,
        )
        .await;
    // Each refresh reaches Argo CD, whose automated sync then starts the operation.
    for name in &names {
        w.until(&format!("the refresh of {name}"), |l| {
            l["type"] == "trigger" && l["action"] == "refresh" && l["name"] == name.as_str() && l["result"] == "ok"
        })
        .await;
        w.progress(name, "its operation", |l| l["missing"] == json!(["operation"]))
            .await;
    }
    for name in &names {
        assert_eq!(env.sim.run_operation("argocd", name).as_deref(), Some("Succeeded"));
    }
    let result = w.result().await;
    assert_eq!(result["result"], "Deployed", "{result}");
    assert_eq!(result["counts"], json!({"Deployed": 12}), "{result}");
}
