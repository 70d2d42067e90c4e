//! Hub replicas on one PostgreSQL database, as processes (`argocd-gateway hub serve --store
//! postgres://…`) sharing the files `hub init` makes, with gateways (in-process daemons, each
//! against its own Argo CD simulator) dialing one replica or a TCP balancer in front of all:
//! requests, waits and logs reach a gateway through whichever replica is asked; revocation on
//! one replica closes the session on another; a token is used once however many replicas race
//! for it; the change feed and the gateway list show the whole fleet from any replica; a
//! replica killed with SIGKILL hands its gateways to the others; a database outage makes the
//! replicas not ready and they recover by themselves.

#[path = "support/balancer.rs"]
mod balancer;
#[path = "support/ports.rs"]
mod ports;
#[path = "support/postgres.rs"]
mod postgres;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use argocd_gateway::daemon::{DaemonArgs, DaemonError};
use argocd_gateway::simulator::{SimHandle, SimOptions, SimTls, Simulator, TokenSpec};
use clap::Parser;
use ports::free_port;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The bound on every wait: generous, for a busy machine; the behaviour is what is asserted.
const WAIT: Duration = Duration::from_secs(30);

/// One `hub serve` process.
struct Replica {
    child: Option<Child>,
    grpc: u16,
    http: u16,
    log: PathBuf,
}

impl Replica {
    /// Starts a replica on `url`, given on the command line or, with `url_file`, in that file
    /// (`--store-file`, as the hub chart mounts it from a Secret).
    fn start(url: &str, url_file: Option<PathBuf>, data: &Path, log: PathBuf) -> Replica {
        let (grpc, http, peer) = (free_port(), free_port(), free_port());
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_argocd-gateway"));
        cmd.args(["hub", "serve"]);
        match url_file {
            Some(file) => {
                std::fs::write(&file, format!("{url}\n")).unwrap();
                cmd.arg("--store-file").arg(file);
            }
            None => {
                cmd.args(["--store", url]);
            }
        }
        let child = cmd
            .arg("--data-dir")
            .arg(data)
            .args([
                "--hostname",
                "localhost,127.0.0.1",
                "--grpc-addr",
                &format!("127.0.0.1:{grpc}"),
                "--http-addr",
                &format!("127.0.0.1:{http}"),
                "--peer-addr",
                &format!("127.0.0.1:{peer}"),
                "--health-check-interval",
                "1h",
            ])
            .env("RUST_LOG", "info")
            .env_remove("ARGOCD_GATEWAY_HUB_STORE")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("hub serve starts");
        Replica {
            child: Some(child),
            grpc,
            http,
            log,
        }
    }

    fn grpc_url(&self) -> String {
        format!("https://localhost:{}", self.grpc)
    }

    fn grpc_addr(&self) -> SocketAddr {
        format!("127.0.0.1:{}", self.grpc).parse().unwrap()
    }

    /// SIGKILL: the process ends without a word to anyone.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the process still runs.
    fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// PostgreSQL, the shared files and the replicas.
struct Fleet {
    replicas: Vec<Replica>,
    admin: String,
    fingerprint: String,
    http: reqwest::Client,
    url: String,
    data: PathBuf,
    dir: tempfile::TempDir,
    pg: postgres::Postgres,
}

impl Fleet {
    async fn start(n: usize) -> Fleet {
        argocd_gateway::tls::install_crypto_provider();
        let pg = postgres::Postgres::start();
        let url = pg.create_db("hub");
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("hub-files");
        // What `hub init` makes, once, for every replica.
        let pki = argocd_gateway::hub::pki::load_or_init(&data, &["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("hub files");
        let mut fleet = Fleet {
            replicas: vec![],
            admin: pki.admin_token.expose().to_owned(),
            fingerprint: pki.ca.fingerprint().hex().to_owned(),
            http: reqwest::Client::new(),
            url,
            data,
            dir,
            pg,
        };
        for _ in 0..n {
            fleet.add_replica().await;
        }
        fleet
    }

    async fn add_replica(&mut self) -> usize {
        let i = self.replicas.len();
        let log = self.dir.path().join(format!("replica-{i}.log"));
        // Every other replica reads the database URL from a file.
        let url_file = (i % 2 == 1).then(|| self.dir.path().join(format!("store-url-{i}")));
        self.replicas.push(Replica::start(&self.url, url_file, &self.data, log));
        let started = Instant::now();
        while !self.ready(i).await {
            if !self.replicas[i].alive() || started.elapsed() > WAIT {
                panic!("replica {i} did not become ready:\n{}", self.replicas[i].log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        i
    }

    async fn ready(&self, i: usize) -> bool {
        let url = format!("http://127.0.0.1:{}/readyz", self.replicas[i].http);
        matches!(self.http.get(url).timeout(Duration::from_secs(5)).send().await, Ok(r) if r.status() == 200)
    }

    async fn api(&self, i: usize, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("http://127.0.0.1:{}{path}", self.replicas[i].http))
            .bearer_auth(&self.admin)
            .timeout(Duration::from_secs(60));
        if let Some(b) = body {
            req = req.json(&b);
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
            }
            Err(e) => (0, Value::String(e.to_string())),
        }
    }

    async fn registration_token(&self, i: usize) -> String {
        let (status, tok) = self
            .api(
                i,
                Method::POST,
                "/api/v1/registration-tokens",
                Some(json!({"name": "replicas"})),
            )
            .await;
        assert_eq!(status, 201, "{tok}");
        tok["token"].as_str().unwrap().to_owned()
    }

    /// The gateway as replica `i` lists it.
    async fn gateway(&self, i: usize, id: &str) -> Value {
        self.api(i, Method::GET, &format!("/api/v1/gateways/{id}"), None)
            .await
            .1
    }

    /// The replica id holding a gateway's session, as replica `i` sees it.
    async fn holder(&self, i: usize, id: &str) -> Option<String> {
        let g = self.gateway(i, id).await;
        (g["connected"] == json!(true)).then(|| g["replica"].as_str().unwrap_or_default().to_owned())
    }

    fn logs(&self) -> String {
        self.replicas
            .iter()
            .enumerate()
            .map(|(i, r)| format!("--- replica {i}\n{}", r.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

async fn wait_for<F, Fut>(what: &str, mut f: F) -> Duration
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

#[derive(Parser)]
struct RunCli {
    #[command(flatten)]
    args: DaemonArgs,
}

/// A gateway daemon with its own Argo CD simulator.
struct Gw {
    sim: SimHandle,
    stop: CancellationToken,
    task: Option<JoinHandle<Result<(), DaemonError>>>,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Gw {
    async fn start(hub_url: &str, token: &str, fingerprint: &str, apps: usize) -> Gw {
        let dir = tempfile::tempdir().unwrap();
        // Syncs run to their end like Argo CD's controller runs them (the operation succeeds
        // and the revision lands, then the rollout turns Healthy): a wait judges operations.
        let sim = Simulator::start(SimOptions {
            tls: SimTls::Plaintext,
            sync_step: Some(Duration::from_millis(300)),
            ..Default::default()
        })
        .await
        .unwrap();
        sim.add_synthetic_apps(apps);
        let argocd_token = sim.add_token(TokenSpec::account("gateway"));
        std::fs::write(dir.path().join("argocd-token"), &argocd_token).unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let identity = format!("file:{}", dir.path().join("identity.json").display());
        let token_file = dir.path().join("argocd-token").display().to_string();
        let admin_s = admin.to_string();
        let cli = RunCli::try_parse_from([
            "run",
            "--hub-url",
            hub_url,
            "--hub-ca-fingerprint",
            fingerprint,
            "--registration-token",
            token,
            "--identity",
            &identity,
            "--argocd-server",
            &sim.url(),
            "--argocd-plaintext",
            "--argocd-token-file",
            &token_file,
            "--admin-addr",
            &admin_s,
            "--keepalive-interval",
            "1",
            "--resync-interval",
            "5m",
        ])
        .expect("flags parse");
        let stop = CancellationToken::new();
        let task = tokio::spawn(argocd_gateway::daemon::run(cli.args, stop.clone()));
        Gw {
            sim,
            stop,
            task: Some(task),
            admin,
            _dir: dir,
            http: reqwest::Client::new(),
        }
    }

    /// One of the gateway's own metrics (0 before it exists).
    async fn metric(&self, name: &str) -> f64 {
        let Ok(resp) = self.http.get(format!("http://{}/metrics", self.admin)).send().await else {
            return 0.0;
        };
        let text = resp.text().await.unwrap_or_default();
        text.lines()
            .find_map(|l| {
                let (n, v) = l.split_once(' ')?;
                (n == name).then(|| v.trim().parse::<f64>().ok()).flatten()
            })
            .unwrap_or(0.0)
    }

    /// Its id, once registered and connected (read from its identity file).
    async fn id(&self) -> String {
        let path = self._dir.path().join("identity.json");
        let started = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(&path)
                && let Ok(v) = serde_json::from_str::<Value>(&text)
                && let Some(g) = v["gatewayId"].as_str().or(v["gateway_id"].as_str())
                && self.metric("argocd_gateway_hub_connected").await == 1.0
            {
                return g.to_owned();
            }
            assert!(started.elapsed() < WAIT, "the gateway did not register and connect");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The applications as the simulator holds them: (namespace/name, health, sync, revision).
    fn expected(&self) -> Vec<(String, String, String, String)> {
        let mut v: Vec<_> = self
            .sim
            .apps()
            .iter()
            .map(|a| {
                (
                    format!(
                        "{}/{}",
                        a["metadata"]["namespace"].as_str().unwrap_or_default(),
                        a["metadata"]["name"].as_str().unwrap_or_default()
                    ),
                    a["status"]["health"]["status"].as_str().unwrap_or_default().to_owned(),
                    a["status"]["sync"]["status"].as_str().unwrap_or_default().to_owned(),
                    a["status"]["sync"]["revision"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        v.sort();
        v
    }

    async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(WAIT, task).await;
        }
    }
}

/// A gateway's applications as replica `i` serves them, in the shape of [`Gw::expected`].
async fn served(fleet: &Fleet, i: usize, id: &str) -> Option<Vec<(String, String, String, String)>> {
    let (status, v) = fleet
        .api(i, Method::GET, &format!("/api/v1/gateways/{id}/applications"), None)
        .await;
    if status != 200 {
        return None;
    }
    let mut items: Vec<_> = v["items"]
        .as_array()?
        .iter()
        .map(|a| {
            (
                format!(
                    "{}/{}",
                    a["namespace"].as_str().unwrap_or_default(),
                    a["name"].as_str().unwrap_or_default()
                ),
                a["health"]["status"].as_str().unwrap_or_default().to_owned(),
                a["sync"]["status"].as_str().unwrap_or_default().to_owned(),
                a["sync"]["revision"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    items.sort();
    Some(items)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waits_logs_and_revocation_reach_a_gateway_on_another_replica() {
    let fleet = Fleet::start(2).await;
    let token = fleet.registration_token(1).await;
    // The gateway dials replica 0 only; everything below is asked of replica 1.
    let gw = Gw::start(&fleet.replicas[0].grpc_url(), &token, &fleet.fingerprint, 4).await;
    let id = gw.id().await;
    let holder0 = fleet.holder(0, &id).await.expect("replica 0 holds the session");
    wait_for("replica 1 shows the gateway connected, held by replica 0", || async {
        fleet.holder(1, &id).await.as_deref() == Some(holder0.as_str())
    })
    .await;
    wait_for(
        "replica 1 serves the gateway's applications as relayed to replica 0",
        || async { served(&fleet, 1, &id).await == Some(gw.expected()) },
    )
    .await;
    let app = format!("/api/v1/gateways/{id}/applications/argocd/app-00001");

    // A sync asked of replica 1 reaches Argo CD through replica 0's session.
    gw.sim.clear_requests();
    let (status, synced) = fleet
        .api(
            1,
            Method::POST,
            &format!("{app}/sync"),
            Some(json!({"revision": "0123abcd"})),
        )
        .await;
    assert_eq!(status, 200, "{synced}\n{}", fleet.logs());
    assert_eq!(synced["name"], "app-00001");
    let reqs = gw.sim.requests();
    let sync = reqs
        .iter()
        .find(|r| r.method == "POST" && r.path == "/api/v1/applications/app-00001/sync")
        .expect("the sync reached Argo CD");
    assert_eq!(
        serde_json::from_str::<Value>(&sync.body).unwrap()["revision"],
        "0123abcd"
    );
    // The sync runs to its end at Argo CD, and replica 1 sees its outcome: the operation
    // Succeeded at the revision asked for, the application Synced and Healthy there.
    wait_for("replica 1 sees the sync it was asked for succeed", || async {
        let (status, a) = fleet.api(1, Method::GET, &app, None).await;
        status == 200
            && a["operation"]["phase"] == "Succeeded"
            && a["sync"]["revision"]
                .as_str()
                .is_some_and(|r| r.starts_with("0123abcd"))
            && a["sync"]["status"] == "Synced"
            && a["health"]["status"] == "Healthy"
    })
    .await;

    // Logs: a streamed answer, in pieces through both replicas.
    let (status, logs) = fleet
        .api(1, Method::GET, &format!("{app}/logs?podName=web-0&tailLines=15"), None)
        .await;
    assert_eq!(status, 200, "{logs}");
    let text = logs.to_string();
    assert!(
        text.contains("web-0 log line 19") && !text.contains("web-0 log line 4\""),
        "{text}"
    );
    // A typed failure travels back typed.
    let (status, err) = fleet
        .api(
            1,
            Method::GET,
            &format!("/api/v1/gateways/{id}/applications/argocd/nope/resource-tree"),
            None,
        )
        .await;
    assert_eq!((status, err["code"].as_str()), (404, Some("not_found")), "{err}");
    // A health check through replica 1.
    let (status, health) = fleet
        .api(1, Method::POST, &format!("/api/v1/gateways/{id}/health-check"), None)
        .await;
    assert_eq!(status, 200, "{health}");

    // Wait on replica 1 while the change is relayed to replica 0, and follow its progress on
    // replica 1's change feed (a streamed answer).
    let feed = fleet
        .http
        .get(format!(
            "http://127.0.0.1:{}/api/v1/events?format=ndjson&types=application.upserted&gateway={id}",
            fleet.replicas[1].http
        ))
        .bearer_auth(&fleet.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), 200);
    // The application is mid-rollout when the wait starts (as a deployment tool sees it).
    gw.sim.set_sync_status("argocd", "app-00001", "OutOfSync");
    gw.sim.set_health("argocd", "app-00001", "Progressing", "");
    let waiting = {
        let path = format!("{app}/wait");
        let fleet = &fleet;
        async move {
            fleet
                .api(
                    1,
                    Method::POST,
                    &path,
                    Some(json!({"revision": "feedbeef", "timeoutSeconds": 60})),
                )
                .await
        }
    };
    let change = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        gw.sim
            .set_revision("argocd", "app-00001", "feedbeef00000000000000000000000000000000");
        gw.sim.set_sync_status("argocd", "app-00001", "Synced");
        gw.sim.set_health("argocd", "app-00001", "Healthy", "");
    };
    let ((status, waited), ()) = tokio::join!(waiting, change);
    assert_eq!(status, 200, "{waited}");
    assert_eq!(waited["result"], "Deployed", "{waited}");
    let progress = read_events(feed, |e| {
        e["key"] == "argocd/app-00001"
            && e["application"]["sync"]["revision"]
                .as_str()
                .is_some_and(|r| r.starts_with("feedbeef"))
    })
    .await;
    assert!(progress.iter().all(|e| e["gatewayId"] == json!(id)), "{progress:#?}");

    // Revoked on replica 1: the session on replica 0 closes at once.
    let reconnects = gw.metric("argocd_gateway_hub_reconnects_total").await;
    let (status, _) = fleet
        .api(1, Method::DELETE, &format!("/api/v1/gateways/{id}"), None)
        .await;
    assert_eq!(status, 204);
    let revoked = Instant::now();
    wait_for("the gateway's session on replica 0 ends", || async {
        gw.metric("argocd_gateway_hub_connected").await == 0.0
            || gw.metric("argocd_gateway_hub_reconnects_total").await > reconnects
    })
    .await;
    let closed_in = revoked.elapsed();
    println!("revocation on replica 1 closed the session on replica 0 in {closed_in:?}");
    assert!(
        closed_in < Duration::from_secs(1),
        "the session closed {closed_in:?} after the revocation\n{}",
        fleet.logs()
    );
    let (status, _) = fleet.api(0, Method::GET, &format!("/api/v1/gateways/{id}"), None).await;
    assert_eq!(status, 404);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_use_a_token_once_and_show_the_whole_fleet() {
    use argocd_gateway::wire::proto::RegisterRequest;
    use argocd_gateway::wire::proto::registration_client::RegistrationClient;
    let fleet = Fleet::start(3).await;

    // 50 registrations with one token, spread over the replicas: exactly one succeeds.
    let token = fleet.registration_token(0).await;
    let ca = std::fs::read_to_string(fleet.data.join("ca.pem")).unwrap();
    let mut calls = vec![];
    for n in 0..50 {
        let endpoint = tonic::transport::Endpoint::from_shared(fleet.replicas[n % 3].grpc_url())
            .unwrap()
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
                    .domain_name("localhost"),
            )
            .unwrap();
        let token = token.clone();
        calls.push(tokio::spawn(async move {
            let channel = endpoint.connect().await.expect("replica reachable");
            let key = argocd_gateway::certs::generate_key().unwrap();
            RegistrationClient::new(channel)
                .register(RegisterRequest {
                    token,
                    csr_pem: argocd_gateway::certs::csr_pem(&key, "x").unwrap(),
                    name: format!("race-{n}"),
                    ..Default::default()
                })
                .await
        }));
    }
    let mut ok = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(_) => ok += 1,
            Err(s) => assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}"),
        }
    }
    assert_eq!(ok, 1, "one token, one registration");

    // One gateway on each replica; the feed of replica 2 shows all three connecting, with
    // unique, increasing ids, and every replica lists all three connected.
    let feed = fleet
        .http
        .get(format!(
            "http://127.0.0.1:{}/api/v1/events?format=ndjson&types=gateway.connected",
            fleet.replicas[2].http
        ))
        .bearer_auth(&fleet.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), 200);
    let mut gws = vec![];
    for i in 0..3 {
        let token = fleet.registration_token(i).await;
        gws.push(Gw::start(&fleet.replicas[i].grpc_url(), &token, &fleet.fingerprint, 3).await);
    }
    let mut ids = vec![];
    for g in &gws {
        ids.push(g.id().await);
    }
    let mut stream = feed.bytes_stream();
    let mut seen: Vec<(i64, String)> = vec![];
    let mut buf = String::new();
    let started = Instant::now();
    while seen.len() < 3 && started.elapsed() < WAIT {
        use futures_util::StreamExt;
        let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_secs(5), stream.next()).await else {
            continue;
        };
        buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(i) = buf.find('\n') {
            let line: String = buf.drain(..=i).collect();
            let v: Value = serde_json::from_str(line.trim()).unwrap();
            if v["type"] == "gateway.connected" {
                seen.push((v["id"].as_i64().unwrap(), v["gatewayId"].as_str().unwrap().to_owned()));
            }
        }
    }
    let mut from: Vec<&str> = seen.iter().map(|(_, g)| g.as_str()).collect();
    from.sort();
    let mut want: Vec<&str> = ids.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(from, want, "replica 2's feed shows every replica's gateway: {seen:?}");
    assert!(seen.windows(2).all(|w| w[1].0 > w[0].0), "ids increase: {seen:?}");
    for i in 0..3 {
        wait_for("every replica lists every gateway connected", || async {
            let (_, list) = fleet.api(i, Method::GET, "/api/v1/gateways", None).await;
            let items = list["items"].as_array().cloned().unwrap_or_default();
            ids.iter().all(|id| {
                items
                    .iter()
                    .any(|g| g["id"] == json!(id) && g["connected"] == json!(true))
            })
        })
        .await;
    }
    // Each replica holds the one that dialed it.
    for (i, id) in ids.iter().enumerate() {
        let holder = fleet.holder(i, id).await.unwrap();
        for j in 0..3 {
            assert_eq!(fleet.holder(j, id).await.as_deref(), Some(holder.as_str()));
        }
    }
    for g in gws {
        g.stop().await;
    }
}

/// Reads an ndjson event stream until an event `done` accepts; returns every event read.
async fn read_events(resp: reqwest::Response, done: impl Fn(&Value) -> bool) -> Vec<Value> {
    use futures_util::StreamExt;
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut seen = vec![];
    let started = Instant::now();
    while started.elapsed() < WAIT {
        let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_secs(5), stream.next()).await else {
            continue;
        };
        buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(i) = buf.find('\n') {
            let line: String = buf.drain(..=i).collect();
            let Ok(v) = serde_json::from_str::<Value>(line.trim()) else {
                continue;
            };
            let finished = done(&v);
            seen.push(v);
            if finished {
                return seen;
            }
        }
    }
    panic!("not within {WAIT:?}: the awaited event; saw {seen:#?}");
}

/// Waits until replica `i` serves exactly the simulator's state of `gw`; on timeout the panic
/// shows both and the replicas' logs.
async fn wait_for_state(fleet: &Fleet, i: usize, gw: &Gw, id: &str, what: &str) {
    let start = Instant::now();
    loop {
        let served = served(fleet, i, id).await;
        let expected = gw.expected();
        if served.as_ref() == Some(&expected) {
            return;
        }
        if start.elapsed() > WAIT {
            let diff: Vec<_> = match &served {
                Some(s) => expected
                    .iter()
                    .filter(|e| !s.contains(e))
                    .map(|e| format!("want {e:?}, served {:?}", s.iter().find(|x| x.0 == e.0)))
                    .collect(),
                None => vec!["nothing served".to_owned()],
            };
            panic!(
                "not within {WAIT:?}: {what} (replica {i}, gateway {id}): {diff:#?}\n{}",
                fleet.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Changes an application of `gw` every few tens of milliseconds until `stop`.
fn keep_changing(sim: SimHandle, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut n = 0u64;
        while !stop.is_cancelled() {
            n += 1;
            let app = format!("app-{:05}", n % 3 + 1);
            sim.set_revision("argocd", &app, &format!("{n:040x}"));
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_hands_its_gateways_over_with_nothing_lost() {
    let mut fleet = Fleet::start(3).await;
    let lb = balancer::Balancer::start(fleet.replicas.iter().map(Replica::grpc_addr).collect()).await;
    let hub_url = format!("https://localhost:{}", lb.addr.port());
    let mut gws = vec![];
    for _ in 0..6 {
        let token = fleet.registration_token(0).await;
        gws.push(Gw::start(&hub_url, &token, &fleet.fingerprint, 5).await);
    }
    let mut ids = vec![];
    for g in &gws {
        ids.push(g.id().await);
    }
    for (g, id) in gws.iter().zip(&ids) {
        wait_for("the hub holds each gateway's state", || async {
            served(&fleet, 0, id).await == Some(g.expected())
        })
        .await;
    }
    // Half the gateways keep changing; the other half stay idle.
    let changing = CancellationToken::new();
    let writers: Vec<_> = gws[..3]
        .iter()
        .map(|g| keep_changing(g.sim.clone(), changing.clone()))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let snapshots_before: Vec<f64> = {
        let mut v = vec![];
        for g in &gws {
            v.push(g.metric("argocd_gateway_relay_snapshots_total").await);
        }
        v
    };
    // Kill the replica that holds the most sessions.
    let mut holders = vec![];
    for id in &ids {
        holders.push(fleet.holder(0, id).await.unwrap_or_default());
    }
    let mut replica_ids = vec![];
    for r in &fleet.replicas {
        let text = fleet
            .http
            .get(format!("http://127.0.0.1:{}/readyz", r.http))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        replica_ids.push(text.trim().trim_start_matches("ready: replica ").to_owned());
    }
    let victim = (0..3)
        .max_by_key(|i| holders.iter().filter(|h| **h == replica_ids[*i]).count())
        .unwrap();
    let moved: Vec<usize> = (0..ids.len()).filter(|g| holders[*g] == replica_ids[victim]).collect();
    assert!(
        !moved.is_empty(),
        "the victim holds a gateway: {holders:?} {replica_ids:?}"
    );
    let survivor = (victim + 1) % 3;
    fleet.replicas[victim].kill();
    let killed = Instant::now();
    wait_for("every gateway is back, on another replica", || async {
        for id in &ids {
            match fleet.holder(survivor, id).await {
                Some(h) if h != replica_ids[victim] => {}
                _ => return false,
            }
        }
        true
    })
    .await;
    let back_in = killed.elapsed();
    println!(
        "{} gateways of the killed replica were back on the others {back_in:?} after SIGKILL",
        moved.len()
    );
    assert!(
        back_in < Duration::from_secs(5),
        "gateways came back {back_in:?} after the kill\n{}",
        fleet.logs()
    );
    changing.cancel();
    for w in writers {
        w.await.unwrap();
    }
    // Nothing lost: every replica left serves exactly the simulators' state.
    for (g, id) in gws.iter().zip(&ids) {
        for i in (0..3).filter(|i| *i != victim) {
            wait_for_state(&fleet, i, g, id, "the hub's state equals the simulator's").await;
        }
    }
    // The idle gateways' state digests matched: no snapshot was sent again.
    for (n, g) in gws.iter().enumerate().skip(3) {
        assert_eq!(
            g.metric("argocd_gateway_relay_snapshots_total").await,
            snapshots_before[n],
            "an idle gateway resent its snapshot"
        );
    }
    for g in gws {
        g.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_makes_replicas_unready_and_they_recover_with_nothing_lost() {
    let mut fleet = Fleet::start(2).await;
    let lb = balancer::Balancer::start(fleet.replicas.iter().map(Replica::grpc_addr).collect()).await;
    let hub_url = format!("https://localhost:{}", lb.addr.port());
    let mut gws = vec![];
    for _ in 0..2 {
        let token = fleet.registration_token(0).await;
        gws.push(Gw::start(&hub_url, &token, &fleet.fingerprint, 5).await);
    }
    let mut ids = vec![];
    for g in &gws {
        ids.push(g.id().await);
    }
    let changing = CancellationToken::new();
    let writers: Vec<_> = gws
        .iter()
        .map(|g| keep_changing(g.sim.clone(), changing.clone()))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut replica_ids = vec![];
    for r in &fleet.replicas {
        let text = fleet
            .http
            .get(format!("http://127.0.0.1:{}/readyz", r.http))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        replica_ids.push(text.trim().trim_start_matches("ready: replica ").to_owned());
    }
    fleet.pg.stop();
    let down = Instant::now();
    for i in 0..2 {
        wait_for("the replica turns not ready", || async { !fleet.ready(i).await }).await;
    }
    // Once a replica cannot confirm where sessions live (a lease after the database went), it
    // shows no other replica's gateway as connected.
    tokio::time::sleep(Duration::from_secs(7).saturating_sub(down.elapsed())).await;
    for (i, own) in replica_ids.iter().enumerate() {
        for id in &ids {
            if let Some(holder) = fleet.holder(i, id).await {
                assert_eq!(
                    &holder, own,
                    "replica {i} shows gateway {id} connected to another replica during the outage"
                );
            }
        }
    }
    // The outage lasts 10 s while the simulators keep changing.
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(down.elapsed())).await;
    for i in 0..2 {
        assert!(
            fleet.replicas[i].alive(),
            "replica {i} crashed:\n{}",
            fleet.replicas[i].log_tail()
        );
    }
    fleet.pg.resume();
    for i in 0..2 {
        wait_for("the replica is ready again", || async { fleet.ready(i).await }).await;
    }
    changing.cancel();
    for w in writers {
        w.await.unwrap();
    }
    for (g, id) in gws.iter().zip(&ids) {
        for i in 0..2 {
            wait_for_state(
                &fleet,
                i,
                g,
                id,
                "after the outage the hub's state equals the simulator's",
            )
            .await;
            wait_for("the gateway is connected again", || async {
                fleet.holder(i, id).await.is_some()
            })
            .await;
        }
    }
    for i in 0..2 {
        assert!(
            fleet.replicas[i].alive(),
            "replica {i} crashed:\n{}",
            fleet.replicas[i].log_tail()
        );
    }
    for g in gws {
        g.stop().await;
    }
}
