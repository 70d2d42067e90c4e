//! End to end: the Argo CD simulator → a gateway daemon (`run`, in-process, real TLS gRPC) → a
//! hub → its HTTP API. Expectations are computed from the simulator's raw Argo CD JSON by this
//! file's own mapping, never through the gateway's model types.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use argocd_gateway::daemon::{DaemonArgs, DaemonError};
use argocd_gateway::hub::{self, Hub, ServeArgs};
use argocd_gateway::simulator::{SimHandle, SimOptions, SimTls, Simulator, TokenSpec};
use clap::Parser;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(15);

#[derive(Parser)]
struct RunCli {
    #[command(flatten)]
    args: DaemonArgs,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn serve_args(dir: &Path, grpc_port: u16, http_port: u16) -> ServeArgs {
    ServeArgs {
        data_dir: dir.to_owned(),
        hostnames: vec!["localhost".into(), "127.0.0.1".into()],
        grpc_addr: format!("127.0.0.1:{grpc_port}").parse().unwrap(),
        http_addr: format!("127.0.0.1:{http_port}").parse().unwrap(),
        plaintext: false,
        client_cert_ttl: Duration::from_secs(30 * 24 * 3600),
        public_url: None,
        helm_chart: "./charts/argocd-gateway".into(),
        http: Default::default(),
        history: Default::default(),
        health_check_interval: Duration::from_secs(3600),
    }
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
        argocd_gateway::tls::install_crypto_provider();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let ports = (free_port(), free_port());
        let hub = hub::start(serve_args(&dir.join("hub"), ports.0, ports.1))
            .await
            .expect("hub starts");
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
        self.hub = Some(
            hub::start(serve_args(&self.dir.join("hub"), self.ports.0, self.ports.1))
                .await
                .expect("hub restarts"),
        );
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
async fn wait_returns_synced_failed_and_timeout() {
    let mut env = Env::start(5, "5m").await;
    env.wait_converged().await;

    // Synced: the app moves to the wanted commit while the caller waits.
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
    assert_eq!(done["result"], "Synced", "{done}");
    assert_eq!(done["application"]["sync"]["revision"], commit);

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

    // Timeout: nothing happens.
    let (status, v) = wait_result(&env, "app-00003", json!({"revision": "ffffffff", "timeoutSeconds": 1})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"], "Timeout", "{v}");

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
