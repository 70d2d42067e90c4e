//! Reach: ApplicationSets and AppProjects from the Argo CD simulator to the hub's API, a gateway
//! that logs in with a username and password, the tunnel inside a WebSocket through a proxy that
//! speaks only HTTP/1.1, and version skew in both directions (a hub or a gateway pinned to the
//! previous protocol version). In-process hub and gateway over real TLS or plaintext gRPC;
//! expectations come from the simulator's raw JSON, never the gateway's model types.

#[path = "support/ports.rs"]
mod ports;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use argocd_gateway::daemon::{DaemonArgs, DaemonError};
use argocd_gateway::hub::{self, Hub, ServeArgs};
use argocd_gateway::simulator::{SimHandle, SimOptions, SimTls, Simulator, TokenSpec, objects};
use clap::Parser;
use ports::free_port;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A bound for waits: generous, so a busy machine is not a failure.
const WAIT: Duration = Duration::from_secs(20);

#[derive(Parser)]
struct RunCli {
    #[command(flatten)]
    args: DaemonArgs,
}

struct Gateway {
    stop: CancellationToken,
    task: JoinHandle<Result<(), DaemonError>>,
    admin: SocketAddr,
}

/// How a test wants its hub and gateway.
struct Setup {
    /// The hub serves plaintext gRPC (TLS ends in front of it).
    plaintext_hub: bool,
    /// `hub serve --protocol-version`.
    hub_protocol: u32,
    /// Flags added to the gateway's.
    gateway_flags: Vec<String>,
    /// Replaces the hub URL the gateway dials (a proxy in front of the hub).
    hub_url: Option<fn(u16) -> String>,
    /// Argo CD credential: `None` for a token file, else a username whose password file the
    /// harness writes.
    login: Option<&'static str>,
    /// Permissions (resource, action) the gateway's token lacks.
    denied: Vec<(&'static str, &'static str)>,
    /// Simulator options.
    sim: SimOptions,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            plaintext_hub: false,
            hub_protocol: argocd_gateway::wire::PROTOCOL_VERSION,
            gateway_flags: vec![],
            hub_url: None,
            login: None,
            denied: vec![],
            sim: SimOptions {
                tls: SimTls::Plaintext,
                ..Default::default()
            },
        }
    }
}

struct Env {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    hub: Option<Hub>,
    ports: (u16, u16),
    admin_token: String,
    http: reqwest::Client,
    sim: SimHandle,
    registration_token: String,
    fingerprint: String,
    gateway: Option<Gateway>,
    gateway_id: String,
    plaintext_hub: bool,
    hub_protocol: u32,
}

fn serve_args(dir: &Path, ports: (u16, u16), plaintext: bool, protocol: u32) -> ServeArgs {
    ServeArgs {
        hostnames: vec!["localhost".into(), "127.0.0.1".into()],
        grpc_addr: format!("127.0.0.1:{}", ports.0).parse().unwrap(),
        http_addr: format!("127.0.0.1:{}", ports.1).parse().unwrap(),
        health_check_interval: Duration::from_secs(3600),
        plaintext,
        protocol_version: protocol,
        ..ServeArgs::new(dir)
    }
}

impl Env {
    /// Starts a hub and a simulator, and a gateway only when `connect` (else the caller does).
    async fn start(setup: Setup) -> Env {
        argocd_gateway::tls::install_crypto_provider();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let ports = (free_port(), free_port());
        let hub = hub::start(serve_args(
            &dir.join("hub"),
            ports,
            setup.plaintext_hub,
            setup.hub_protocol,
        ))
        .await
        .expect("hub starts");
        let admin_token = std::fs::read_to_string(&hub.admin_token_path)
            .unwrap()
            .trim()
            .to_owned();
        let sim = Simulator::start(setup.sim.clone()).await.unwrap();
        sim.add_synthetic_apps(3);
        let mut env = Env {
            _tmp: tmp,
            dir,
            hub: Some(hub),
            ports,
            admin_token,
            http: reqwest::Client::new(),
            sim,
            registration_token: String::new(),
            fingerprint: String::new(),
            gateway: None,
            gateway_id: String::new(),
            plaintext_hub: setup.plaintext_hub,
            hub_protocol: setup.hub_protocol,
        };
        let (status, tok) = env
            .api_send(
                reqwest::Method::POST,
                "/api/v1/registration-tokens",
                Some(json!({"name": "reach"})),
            )
            .await;
        assert_eq!(status, 201, "{tok}");
        env.registration_token = tok["token"].as_str().unwrap().to_owned();
        env.fingerprint = tok["caFingerprint"].as_str().unwrap().to_owned();
        env
    }

    /// Starts the gateway and waits until the hub shows it connected.
    async fn connect(&mut self, setup: &Setup) {
        let credential: Vec<String> = match setup.login {
            None => {
                let spec = setup
                    .denied
                    .iter()
                    .fold(TokenSpec::account("gateway"), |spec, (resource, action)| {
                        spec.without(resource, action)
                    });
                let token = self.sim.add_token(spec);
                let path = self.dir.join("argocd-token");
                std::fs::write(&path, token).unwrap();
                vec!["--argocd-token-file".into(), path.display().to_string()]
            }
            Some(user) => {
                self.sim.add_account(user, "s3cret-Passw0rd", TokenSpec::account(user));
                let path = self.dir.join("argocd-password");
                std::fs::write(&path, "s3cret-Passw0rd\n").unwrap();
                vec![
                    "--argocd-username".into(),
                    user.into(),
                    "--argocd-password-file".into(),
                    path.display().to_string(),
                ]
            }
        };
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let hub_url = match setup.hub_url {
            Some(f) => f(self.ports.0),
            None if self.plaintext_hub => format!("http://127.0.0.1:{}", self.ports.0),
            None => format!("https://localhost:{}", self.ports.0),
        };
        let mut flags: Vec<String> = vec![
            "run".into(),
            "--hub-url".into(),
            hub_url,
            "--registration-token".into(),
            self.registration_token.clone(),
            "--identity".into(),
            format!("file:{}", self.dir.join("identity.json").display()),
            "--argocd-server".into(),
            self.sim.url(),
            "--argocd-plaintext".into(),
            "--admin-addr".into(),
            admin.to_string(),
            "--keepalive-interval".into(),
            "1".into(),
        ];
        if self.plaintext_hub {
            flags.push("--hub-plaintext".into());
        } else {
            flags.extend(["--hub-ca-fingerprint".into(), self.fingerprint.clone()]);
        }
        flags.extend(credential);
        flags.extend(setup.gateway_flags.iter().cloned());
        let cli = RunCli::try_parse_from(flags).expect("flags parse");
        let stop = CancellationToken::new();
        let task = tokio::spawn(argocd_gateway::daemon::run(cli.args, stop.clone()));
        self.gateway = Some(Gateway { stop, task, admin });
        let started = Instant::now();
        self.gateway_id = loop {
            let (_, list) = self.api("/api/v1/gateways").await;
            if list["items"][0]["connected"] == json!(true) {
                break list["items"][0]["id"].as_str().unwrap().to_owned();
            }
            if let Some(gw) = &self.gateway
                && gw.task.is_finished()
            {
                let gw = self.gateway.take().unwrap();
                panic!("the gateway ended: {:?}", gw.task.await);
            }
            assert!(started.elapsed() < WAIT, "the gateway did not connect: {list}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
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

    async fn restart_hub(&mut self) {
        self.hub.take().expect("hub running").shutdown().await;
        let started = Instant::now();
        self.hub = Some(loop {
            match hub::start(serve_args(
                &self.dir.join("hub"),
                self.ports,
                self.plaintext_hub,
                self.hub_protocol,
            ))
            .await
            {
                Ok(h) => break h,
                Err(e) => {
                    assert!(started.elapsed() < WAIT, "the hub does not restart: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
    }

    async fn api_send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("http://127.0.0.1:{}{path}", self.ports.1))
            .bearer_auth(&self.admin_token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn api(&self, path: &str) -> (u16, Value) {
        self.api_send(reqwest::Method::GET, path, None).await
    }

    fn gw(&self, tail: &str) -> String {
        format!("/api/v1/gateways/{}{tail}", self.gateway_id)
    }

    /// Polls `path` until `cond` holds for the answer; returns it and how long it took.
    async fn until(&self, what: &str, path: &str, cond: impl Fn(u16, &Value) -> bool) -> (Value, Duration) {
        let started = Instant::now();
        loop {
            let (status, body) = self.api(path).await;
            if cond(status, &body) {
                return (body, started.elapsed());
            }
            assert!(
                started.elapsed() < WAIT,
                "timed out waiting for {what}: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A gateway metric's value (0 when absent).
    async fn metric(&self, name: &str) -> f64 {
        let admin = self.gateway.as_ref().expect("gateway running").admin;
        let text = reqwest::get(format!("http://{admin}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

fn fixture(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/argocd")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// The condition of `kind` in an ApplicationSet item, as the hub serves it.
fn condition<'a>(item: &'a Value, kind: &str) -> Option<&'a Value> {
    item["conditions"].as_array()?.iter().find(|c| c["type"] == kind)
}

/// An application the ApplicationSet `appset` generated, owned by it.
fn owned_app(sim: &SimHandle, appset: &str, element: &str) {
    let mut app = objects::synthetic_app(0, "argocd");
    app["metadata"]["name"] = json!(format!("{appset}-{element}"));
    app["metadata"]["ownerReferences"] = objects::appset_owner(appset);
    sim.upsert_app(app);
}

#[tokio::test]
async fn applicationsets_and_projects_reach_the_hub_and_stay_linked() {
    let setup = Setup::default();
    let mut env = Env::start(setup).await;
    env.sim
        .upsert_appset(objects::appset("guestbook", "argocd", &["dev", "prod"], 2));
    owned_app(&env.sim, "guestbook", "dev");
    owned_app(&env.sim, "guestbook", "prod");
    env.sim.upsert_project(fixture("docs__operator-manual__project.json"));
    env.connect(&Setup::default()).await;

    // Created: generators, template, progressive sync, and the applications it owns.
    let path = env.gw("/applicationsets/argocd/guestbook");
    let (item, _) = env.until("the ApplicationSet at the hub", &path, |s, _| s == 200).await;
    assert_eq!(item["generators"], json!([{"kind": "list"}]));
    assert_eq!(item["strategy"], json!({"type": "RollingSync", "steps": 2}));
    assert_eq!(item["template"]["sources"][0]["path"], "guestbook");
    assert_eq!(item["health"]["status"], "Healthy");
    let owned: Vec<(&str, bool)> = item["applications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["name"].as_str().unwrap(), a["known"].as_bool().unwrap()))
        .collect();
    assert_eq!(owned, vec![("guestbook-dev", true), ("guestbook-prod", true)]);
    // ...and back: each application names its ApplicationSet.
    let (app, _) = env
        .until(
            "the owned application",
            &env.gw("/applications/argocd/guestbook-dev"),
            |s, _| s == 200,
        )
        .await;
    assert_eq!(app["applicationSet"], "guestbook");
    let (_, all) = env.api("/api/v1/applicationsets").await;
    assert_eq!(all["total"], 1, "{all}");

    // Projects: the default and the reference project, compact, with sync windows decided.
    let (project, _) = env
        .until("the project at the hub", &env.gw("/projects/my-project"), |s, _| {
            s == 200
        })
        .await;
    assert_eq!(project["description"], "Example Project");
    assert_eq!(project["roles"], json!(["read-only", "ci-role"]));
    assert_eq!(project["destinations"].as_array().unwrap().len(), 2);
    assert_eq!(project["namespaceResourceBlacklist"][0]["kind"], "ResourceQuota");
    let windows = project["syncWindows"].as_array().unwrap();
    assert_eq!(windows.len(), 4);
    assert!(windows.iter().all(|w| w["active"].is_boolean()), "{windows:?}");
    assert!(
        !project.to_string().contains("jwtTokens") && !project.to_string().contains("policies"),
        "role policies and token ids stay in Argo CD: {project}"
    );
    let (_, projects) = env.api("/api/v1/projects").await;
    assert_eq!(projects["total"], 2, "{projects}");

    // Changed: an error condition appears, then clears.
    let sent_before = env.metric("argocd_gateway_relay_applicationsets_sent_total").await;
    env.sim.modify_appset("argocd", "guestbook", |a| {
        a["status"]["conditions"][0] = json!({"type": "ErrorOccurred", "status": "True", "reason": "ApplicationGenerationFromParamsError",
            "message": "found less than two generators, Merge requires two or more", "lastTransitionTime": "2026-03-01T00:00:00Z"});
        a["status"]["health"] = json!({"status": "Degraded", "message": "found less than two generators"});
    });
    let (_, took) = env
        .until("the error condition at the hub", &path, |_, v| {
            condition(v, "ErrorOccurred").is_some_and(|c| c["status"] == "True")
        })
        .await;
    eprintln!("an ApplicationSet error reached the hub in {took:?}");
    env.sim.modify_appset("argocd", "guestbook", |a| {
        a["status"]["conditions"][0]["status"] = json!("False");
        a["status"]["health"] = json!({"status": "Healthy"});
    });
    let (_, took) = env
        .until("the error to clear at the hub", &path, |_, v| {
            condition(v, "ErrorOccurred").is_some_and(|c| c["status"] == "False")
        })
        .await;
    eprintln!("its clearing reached the hub in {took:?}");
    // A change to a noisy field only (a condition's transition time) is never sent.
    let sent = env.metric("argocd_gateway_relay_applicationsets_sent_total").await;
    assert_eq!(sent, sent_before + 2.0, "two significant changes, two upserts");
    env.sim.modify_appset("argocd", "guestbook", |a| {
        a["status"]["conditions"][1]["lastTransitionTime"] = json!("2026-04-01T00:00:00Z");
    });
    env.sim.touch("argocd", "guestbook-dev");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        env.metric("argocd_gateway_relay_applicationsets_sent_total").await,
        sent,
        "a noisy change is not relayed"
    );

    // Persisted across a hub restart, and the reconnect needs no snapshot: the digests agree.
    let snapshots = env.metric("argocd_gateway_relay_snapshots_total").await;
    env.restart_hub().await;
    let (again, _) = env
        .until("the ApplicationSet after a hub restart", &path, |s, _| s == 200)
        .await;
    assert_eq!(again["name"], "guestbook");
    env.until("the gateway back", &env.gw(""), |_, g| g["connected"] == json!(true))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        env.metric("argocd_gateway_relay_snapshots_total").await,
        snapshots,
        "after the hub restart the state digests matched: nothing was resent"
    );
    let (_, gw) = env.api(&env.gw("")).await;
    assert_eq!(gw["applicationSetCount"], 1, "{gw}");
    assert_eq!(gw["transport"], "h2");
    assert!(
        gw["capabilities"]
            .as_array()
            .unwrap()
            .contains(&json!("applicationsets"))
    );
    assert_eq!(gw["refused"]["count"], 0, "{gw}");

    // Deleted.
    env.sim.delete_appset("argocd", "guestbook");
    let (_, took) = env.until("the ApplicationSet gone", &path, |s, _| s == 404).await;
    eprintln!("its deletion reached the hub in {took:?}");
    env.stop_gateway().await;
}

#[tokio::test]
async fn an_argo_cd_before_3_4_is_polled_and_one_without_the_api_is_skipped() {
    // 3.3: no ApplicationSet stream; polled every --poll-interval.
    let setup = Setup {
        gateway_flags: vec!["--poll-interval".into(), "300ms".into()],
        sim: SimOptions {
            tls: SimTls::Plaintext,
            version: "v3.3.2".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut env = Env::start(Setup { ..setup_clone(&setup) }).await;
    env.connect(&setup).await;
    env.sim.upsert_appset(objects::appset("polled", "argocd", &["a"], 0));
    env.until(
        "a polled ApplicationSet",
        &env.gw("/applicationsets/argocd/polled"),
        |s, _| s == 200,
    )
    .await;
    assert!(
        env.sim
            .requests()
            .iter()
            .any(|r| r.path.ends_with("/stream/applicationsets")),
        "the stream was tried once"
    );
    env.stop_gateway().await;

    // No ApplicationSet API at all: applications still relay, ApplicationSets are skipped.
    let setup = Setup {
        sim: SimOptions {
            tls: SimTls::Plaintext,
            applicationsets: false,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut env = Env::start(setup_clone(&setup)).await;
    env.connect(&setup).await;
    env.until("applications", &env.gw("/applications"), |_, v| v["total"] == 3)
        .await;
    let (_, sets) = env.api(&env.gw("/applicationsets")).await;
    assert_eq!(sets["total"], 0);
    let lists = env
        .sim
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/api/v1/applicationsets"))
        .count();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = env
        .sim
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/api/v1/applicationsets"))
        .count();
    assert_eq!((lists, later), (1, 1), "detected once, then skipped");
    env.stop_gateway().await;
}

fn setup_clone(s: &Setup) -> Setup {
    Setup {
        plaintext_hub: s.plaintext_hub,
        hub_protocol: s.hub_protocol,
        gateway_flags: s.gateway_flags.clone(),
        hub_url: s.hub_url,
        login: s.login,
        denied: s.denied.clone(),
        sim: s.sim.clone(),
    }
}

#[tokio::test]
async fn a_gateway_that_logs_in_relays_without_a_gap_across_session_expiry() {
    // Polling, so the gateway calls Argo CD all the time (an open watch outlives its token).
    let setup = Setup {
        login: Some("bot"),
        gateway_flags: vec!["--watch=false".into(), "--poll-interval".into(), "200ms".into()],
        ..Default::default()
    };
    let mut env = Env::start(setup_clone(&setup)).await;
    // Sessions that last seconds: the gateway logs in again before each one ends.
    env.sim.set_session_ttl(Duration::from_secs(3));
    env.connect(&setup).await;
    env.until("applications", &env.gw("/applications"), |_, v| v["total"] == 3)
        .await;
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut n = 0;
    while Instant::now() < deadline {
        n += 1;
        env.sim.set_health(
            "argocd",
            "app-00001",
            if n % 2 == 0 { "Healthy" } else { "Degraded" },
            "",
        );
        let want = if n % 2 == 0 { "Healthy" } else { "Degraded" };
        env.until("each change", &env.gw("/applications/argocd/app-00001"), |_, v| {
            v["health"]["status"] == want
        })
        .await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let logins = env.sim.logins();
    assert!(
        logins >= 3,
        "sessions of 3 s over 8 s need several logins, saw {logins}"
    );
    // Argo CD refuses a session (revoked): the gateway logs in again at once.
    env.sim.revoke_sessions("bot");
    env.sim.set_sync_status("argocd", "app-00002", "OutOfSync");
    env.until(
        "a change after the revocation",
        &env.gw("/applications/argocd/app-00002"),
        |_, v| v["sync"]["status"] == "OutOfSync",
    )
    .await;
    assert!(env.sim.logins() > logins);
    // The health check says how the gateway authenticates and that it works.
    let (_, health) = env
        .api_send(reqwest::Method::POST, &env.gw("/health-check"), None)
        .await;
    assert!(health.to_string().contains("login as bot"), "{health}");
    // The session token and the password never reach the hub's view of the gateway.
    let tokens: Vec<String> = env
        .sim
        .requests()
        .iter()
        .filter_map(|r| r.bearer().map(str::to_owned))
        .collect();
    assert!(!tokens.is_empty());
    let (_, gw) = env.api(&env.gw("")).await;
    for t in &tokens {
        assert!(!gw.to_string().contains(t.as_str()) && !health.to_string().contains(t.as_str()));
    }
    assert!(!health.to_string().contains("s3cret-Passw0rd"));
    env.stop_gateway().await;
}

#[tokio::test]
async fn a_wrong_password_is_a_clear_error_naming_the_setting() {
    argocd_gateway::tls::install_crypto_provider();
    let sim = Simulator::start(SimOptions {
        tls: SimTls::Plaintext,
        ..Default::default()
    })
    .await
    .unwrap();
    sim.add_account("bot", "right", TokenSpec::account("bot"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    std::fs::write(&file, "Not-The-Pw-7731\n").unwrap();
    let args = {
        #[derive(Parser)]
        struct W {
            #[command(flatten)]
            a: argocd_gateway::argocd::ArgoCdArgs,
        }
        W::try_parse_from([
            "t",
            "--argocd-server",
            &sim.url(),
            "--argocd-plaintext",
            "--argocd-username",
            "bot",
            "--argocd-password-file",
            file.to_str().unwrap(),
        ])
        .unwrap()
        .a
    };
    let client =
        argocd_gateway::argocd::Client::new(argocd_gateway::argocd::ArgoCdConfig::from_args(&args, vec![]).unwrap())
            .unwrap();
    let err = client
        .version()
        .await
        .map(|_| ())
        .and(client.userinfo().await.map(|_| ()));
    let err = err.expect_err("a wrong password fails").to_string();
    assert!(
        err.contains("--argocd-password-file")
            && err.contains("gateway.argocd.passwordSecretName")
            && err.contains("gateway.argocd.username"),
        "{err}"
    );
    assert!(
        !err.contains("Not-The-Pw-7731"),
        "the password stays out of the error: {err}"
    );
    // Fixed in the file: the next call logs in.
    std::fs::write(&file, "right").unwrap();
    assert!(client.userinfo().await.unwrap().logged_in);
    assert_eq!(sim.logins(), 1);
}

// ---- the tunnel inside a WebSocket -------------------------------------------------------------

/// A proxy on a free port: each connection's request head (up to its blank line) goes to
/// `handle`, with a counter of what it passed on.
async fn proxy<F, Fut>(handle: F) -> (u16, Arc<AtomicUsize>)
where
    F: Fn(tokio::net::TcpStream, String, Arc<AtomicUsize>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let passed = Arc::new(AtomicUsize::new(0));
    let counter = passed.clone();
    let handle = Arc::new(handle);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let (handle, counter) = (handle.clone(), counter.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                // The HTTP/2 preface ("PRI * HTTP/2.0\r\n\r\n…") ends its first part the same way.
                while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match client.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                handle(client, head, counter).await;
            });
        }
    });
    (port, passed)
}

/// Sends `head` on to `target` and copies bytes both ways; counts the connection.
async fn pass_on(mut client: tokio::net::TcpStream, target: &str, head: &[u8], counter: &AtomicUsize) {
    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
        return;
    };
    counter.fetch_add(1, Ordering::SeqCst);
    if !head.is_empty() && server.write_all(head).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

/// A reverse proxy or load balancer that speaks only HTTP/1.1: it refuses CONNECT and the HTTP/2
/// preface, and passes WebSocket upgrades (and the bytes after them) to the hub's gRPC port.
async fn http1_only_proxy(backend: u16) -> (u16, Arc<AtomicUsize>) {
    proxy(move |mut client, head, counter| async move {
        let lower = head.to_ascii_lowercase();
        let refusal: &[u8] = if head.starts_with("PRI * HTTP/2.0") {
            b"HTTP/1.1 505 HTTP Version Not Supported\r\nConnection: close\r\n\r\n"
        } else if lower.starts_with("connect ") {
            b"HTTP/1.1 405 Method Not Allowed\r\nConnection: close\r\n\r\n"
        } else if !lower.contains("upgrade: websocket") {
            b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n"
        } else {
            return pass_on(client, &format!("127.0.0.1:{backend}"), head.as_bytes(), &counter).await;
        };
        let _ = client.write_all(refusal).await;
    })
    .await
}

static PROXY_PORT: std::sync::Mutex<u16> = std::sync::Mutex::new(0);

fn via_proxy(_hub_port: u16) -> String {
    format!("http://127.0.0.1:{}", PROXY_PORT.lock().unwrap())
}

#[tokio::test]
async fn through_an_http1_only_proxy_auto_and_websocket_connect_and_h2_names_the_fix() {
    let _serial = SERIAL.lock().await;
    for transport in ["h2", "auto", "websocket"] {
        let setup = Setup {
            plaintext_hub: true,
            hub_url: Some(via_proxy),
            gateway_flags: vec!["--hub-transport".into(), transport.into()],
            ..Default::default()
        };
        let mut env = Env::start(setup_clone(&setup)).await;
        let (proxy, upgrades) = http1_only_proxy(env.ports.0).await;
        *PROXY_PORT.lock().unwrap() = proxy;
        if transport == "h2" {
            // Registration already needs the hub: the dial fails with the fix in its message.
            let cfg = argocd_gateway::uplink::HubConfig {
                endpoint: argocd_gateway::uplink::HubEndpoint::parse(&via_proxy(0), true).unwrap(),
                pin: None,
                ca_fingerprint: None,
                connect_timeout: Duration::from_secs(5),
                transport: argocd_gateway::uplink::Transport::H2,
                memory: Default::default(),
            };
            let err = argocd_gateway::uplink::Dialer::new(&cfg, &[], None)
                .unwrap()
                .connect()
                .await
                .expect_err("HTTP/2 does not pass this proxy")
                .to_string();
            assert!(err.contains("gateway.hub.transport=websocket"), "{err}");
            continue;
        }
        env.connect(&setup).await;
        env.until("applications through the proxy", &env.gw("/applications"), |_, v| {
            v["total"] == 3
        })
        .await;
        env.sim
            .set_health("argocd", "app-00000", "Degraded", "through the proxy");
        env.until(
            "a change through the proxy",
            &env.gw("/applications/argocd/app-00000"),
            |_, v| v["health"]["status"] == "Degraded",
        )
        .await;
        // Requests from the hub are answered over the same WebSocket.
        let (_, health) = env
            .api_send(reqwest::Method::POST, &env.gw("/health-check"), None)
            .await;
        assert!(health.is_object(), "{health}");
        let (_, gw) = env.api(&env.gw("")).await;
        assert_eq!(gw["transport"], "websocket", "{gw}");
        assert!(
            upgrades.load(Ordering::SeqCst) >= 2,
            "registration and the tunnel went through the proxy"
        );
        env.stop_gateway().await;
    }
}

/// Tests that share the proxy port run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn the_websocket_keeps_mutual_tls_with_the_gateway_certificate() {
    // A TLS hub that requires the client certificate: over the WebSocket transport the session
    // is authenticated exactly as over HTTP/2.
    let setup = Setup {
        gateway_flags: vec!["--hub-transport".into(), "websocket".into()],
        ..Default::default()
    };
    let mut env = Env::start(setup_clone(&setup)).await;
    env.connect(&setup).await;
    env.until("applications over wss", &env.gw("/applications"), |_, v| {
        v["total"] == 3
    })
    .await;
    let (_, gw) = env.api(&env.gw("")).await;
    assert_eq!(gw["transport"], "websocket");
    // The gateway's certificate renewal and relay keep working after a hub restart.
    env.restart_hub().await;
    env.until("the gateway back over wss", &env.gw(""), |_, g| {
        g["connected"] == json!(true)
    })
    .await;
    let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", env.ports.1))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("argocd_gateway_hub_websocket_connections_total ") && !l.ends_with(" 0")),
        "the hub counted WebSocket connections"
    );
    env.stop_gateway().await;
}

#[derive(Parser)]
struct CheckCli {
    #[command(flatten)]
    args: argocd_gateway::check::CheckArgs,
}

/// The rows `check` prints for these flags (Argo CD rows, then hub rows).
async fn check_rows(flags: Vec<String>) -> Vec<argocd_gateway::check::CheckRow> {
    let cli = CheckCli::try_parse_from(std::iter::once("check".to_owned()).chain(flags)).expect("flags parse");
    let mut report = argocd_gateway::check::Report::default();
    argocd_gateway::argocd::probes::argocd_rows(&cli.args.argocd, &cli.args.uplink.trust, &mut report).await;
    argocd_gateway::check::hub_rows(&cli.args, &mut report).await;
    report.rows
}

fn row<'a>(rows: &'a [argocd_gateway::check::CheckRow], name: &str) -> &'a argocd_gateway::check::CheckRow {
    rows.iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no row {name:?} in {rows:?}"))
}

#[tokio::test]
async fn a_token_without_applicationsets_and_an_http1_path_are_reported_by_the_health_check_and_check() {
    use argocd_gateway::check::Status;
    let _serial = SERIAL.lock().await;
    // The gateway's token may read applications but not ApplicationSets; the hub is behind a
    // proxy that passes only HTTP/1.1.
    let setup = Setup {
        plaintext_hub: true,
        hub_url: Some(via_proxy),
        denied: vec![("applicationsets", "get")],
        ..Default::default()
    };
    let mut env = Env::start(setup_clone(&setup)).await;
    env.sim.upsert_appset(objects::appset("hidden", "argocd", &["a"], 0));
    let (proxy, _) = http1_only_proxy(env.ports.0).await;
    *PROXY_PORT.lock().unwrap() = proxy;
    env.connect(&setup).await;

    // Never a crash: applications relay, ApplicationSets do not, and the gateway stays up.
    env.until(
        "applications without the permission",
        &env.gw("/applications"),
        |_, v| v["total"] == 3,
    )
    .await;
    env.sim.set_health("argocd", "app-00000", "Degraded", "still relaying");
    env.until(
        "a change without the permission",
        &env.gw("/applications/argocd/app-00000"),
        |_, v| v["health"]["status"] == "Degraded",
    )
    .await;
    let (_, sets) = env.api(&env.gw("/applicationsets")).await;
    assert_eq!(sets["total"], 0, "{sets}");
    // The hub's health check names the missing permission and the policy line that grants it.
    let (_, health) = env
        .api_send(reqwest::Method::POST, &env.gw("/health-check"), None)
        .await;
    let checks = health["checks"].as_array().unwrap_or_else(|| panic!("{health}"));
    let denied = checks
        .iter()
        .find(|c| c["name"] == "token can get applicationsets")
        .unwrap_or_else(|| panic!("{health}"));
    assert_eq!(denied["status"], "warn", "{denied}");
    assert!(
        denied
            .to_string()
            .contains("p, gateway, applicationsets, get, */*, allow"),
        "{denied}"
    );
    let (_, gw) = env.api(&env.gw("")).await;
    assert_eq!(gw["connected"], json!(true), "{gw}");
    assert_eq!(gw["transport"], "websocket", "auto fell back through the proxy: {gw}");

    // `check` with the same token and hub path: the same warning, and the fallback said.
    let token_file = env.dir.join("argocd-token");
    let common = |transport: &str| -> Vec<String> {
        vec![
            "--argocd-server".into(),
            env.sim.url(),
            "--argocd-plaintext".into(),
            "--argocd-token-file".into(),
            token_file.display().to_string(),
            "--hub-url".into(),
            via_proxy(0),
            "--hub-plaintext".into(),
            "--hub-transport".into(),
            transport.into(),
            "--identity".into(),
            format!("file:{}", env.dir.join("identity.json").display()),
        ]
    };
    let rows = check_rows(common("auto")).await;
    let denied = row(&rows, "token can get applicationsets");
    assert_eq!(denied.status, Status::Warn, "{rows:?}");
    assert!(
        denied
            .fix
            .as_deref()
            .is_some_and(|f| f.contains("p, gateway, applicationsets, get, */*, allow")),
        "{denied:?}"
    );
    assert_eq!(row(&rows, "token can get applications").status, Status::Ok, "{rows:?}");
    let conn = row(&rows, "hub connection");
    assert_eq!(conn.status, Status::Warn, "{rows:?}");
    assert!(conn.detail.contains("fell back"), "{conn:?}");
    assert!(
        conn.fix
            .as_deref()
            .is_some_and(|f| f.contains("--hub-transport websocket") && f.contains("gateway.hub.transport=websocket")),
        "{conn:?}"
    );
    let rows = check_rows(common("websocket")).await;
    assert_eq!(row(&rows, "hub connection").status, Status::Ok, "{rows:?}");
    let rows = check_rows(common("h2")).await;
    let conn = row(&rows, "hub connection");
    assert_eq!(conn.status, Status::Fail, "{rows:?}");
    assert!(conn.detail.contains("gateway.hub.transport=websocket"), "{conn:?}");
    env.stop_gateway().await;
}

// ---- version skew ------------------------------------------------------------------------------

#[tokio::test]
async fn a_current_gateway_and_a_hub_of_the_previous_protocol_relay_and_answer() {
    let previous = argocd_gateway::wire::PROTOCOL_VERSION - 1;
    let setup = Setup {
        hub_protocol: previous,
        ..Default::default()
    };
    let mut env = Env::start(setup_clone(&setup)).await;
    env.sim.upsert_appset(objects::appset("skew", "argocd", &["a"], 0));
    env.connect(&setup).await;
    env.until("applications at the older hub", &env.gw("/applications"), |_, v| {
        v["total"] == 3
    })
    .await;
    env.sim.set_health("argocd", "app-00001", "Degraded", "skew");
    env.until(
        "a change at the older hub",
        &env.gw("/applications/argocd/app-00001"),
        |_, v| v["health"]["status"] == "Degraded",
    )
    .await;
    // A request the hub sends is answered.
    let (_, health) = env
        .api_send(reqwest::Method::POST, &env.gw("/health-check"), None)
        .await;
    assert!(health.is_object(), "{health}");
    let (_, app) = env.api(&env.gw("/applications/argocd/app-00001?refresh=normal")).await;
    assert_eq!(app["name"], "app-00001", "{app}");
    // The older hub was never sent a kind it cannot read.
    let (_, gw) = env.api(&env.gw("")).await;
    assert_eq!(gw["protocolVersion"], previous, "{gw}");
    assert_eq!(gw["refused"]["count"], 0, "{gw}");
    assert_eq!(gw["applicationSetCount"], 0, "{gw}");
    assert_eq!(env.metric("argocd_gateway_relay_applicationsets_sent_total").await, 0.0);

    // The hub is upgraded: the gateway's next session speaks the current version again, and
    // what the older hub could not read arrives.
    env.hub_protocol = argocd_gateway::wire::PROTOCOL_VERSION;
    env.restart_hub().await;
    let (gw, _) = env
        .until("the gateway on the current protocol", &env.gw(""), |_, g| {
            g["connected"] == json!(true) && g["protocolVersion"] == argocd_gateway::wire::PROTOCOL_VERSION
        })
        .await;
    assert_eq!(gw["refused"]["count"], 0, "{gw}");
    env.until(
        "the ApplicationSet after the hub upgrade",
        &env.gw("/applicationsets/argocd/skew"),
        |s, _| s == 200,
    )
    .await;
    env.stop_gateway().await;
}

#[tokio::test]
async fn a_current_hub_and_a_gateway_of_the_previous_protocol_relay_and_answer() {
    let previous = argocd_gateway::wire::PROTOCOL_VERSION - 1;
    let setup = Setup {
        gateway_flags: vec!["--protocol-version".into(), previous.to_string()],
        ..Default::default()
    };
    let mut env = Env::start(setup_clone(&setup)).await;
    env.sim.upsert_appset(objects::appset("skew", "argocd", &["a"], 0));
    env.connect(&setup).await;
    env.until(
        "applications from the older gateway",
        &env.gw("/applications"),
        |_, v| v["total"] == 3,
    )
    .await;
    env.sim.set_sync_status("argocd", "app-00002", "OutOfSync");
    env.until(
        "a change from the older gateway",
        &env.gw("/applications/argocd/app-00002"),
        |_, v| v["sync"]["status"] == "OutOfSync",
    )
    .await;
    let (_, health) = env
        .api_send(reqwest::Method::POST, &env.gw("/health-check"), None)
        .await;
    assert!(health.is_object(), "{health}");
    let (_, gw) = env.api(&env.gw("")).await;
    assert_eq!(gw["protocolVersion"], previous, "{gw}");
    assert_eq!(
        gw["capabilities"],
        json!([argocd_gateway::wire::CAP_SET_DIGEST]),
        "a gateway of protocol 2 names only the set digest, no entity kind of protocol 3: {gw}"
    );
    assert_eq!(gw["applicationSetCount"], 0, "{gw}");
    assert_eq!(gw["refused"]["count"], 0, "{gw}");
    env.stop_gateway().await;
}

// ---- a gateway process: login, HTTPS_PROXY, WebSocket, and what its debug log holds ---------

/// An HTTP CONNECT proxy (what `HTTPS_PROXY` names): tunnels to the requested port.
async fn connect_proxy() -> (u16, Arc<AtomicUsize>) {
    proxy(|mut client, head, counter| async move {
        let Some(target) = head.strip_prefix("CONNECT ").and_then(|r| r.split_whitespace().next()) else {
            return;
        };
        if client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
        pass_on(client, target, b"", &counter).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_process_logs_in_and_tunnels_through_https_proxy_without_a_secret_in_its_log() {
    let setup = Setup::default();
    let env = Env::start(setup_clone(&setup)).await;
    env.sim
        .add_account("relay-bot", "Pr0cess-Secret-Pw", TokenSpec::account("relay-bot"));
    env.sim.set_session_ttl(Duration::from_secs(3));
    let (proxy, tunnels) = connect_proxy().await;
    let password = env.dir.join("password");
    std::fs::write(&password, "Pr0cess-Secret-Pw\n").unwrap();
    let log_path = env.dir.join("gateway.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_argocd-gateway"))
        .args([
            "run",
            "--hub-url",
            &format!("https://localhost:{}", env.ports.0),
            "--hub-ca-fingerprint",
            &env.fingerprint,
            "--registration-token",
            &env.registration_token,
            "--identity",
            &format!("file:{}", env.dir.join("identity.json").display()),
            "--argocd-server",
            &env.sim.url(),
            "--argocd-plaintext",
            "--argocd-username",
            "relay-bot",
            "--argocd-password-file",
            password.to_str().unwrap(),
            "--watch=false",
            "--poll-interval",
            "200ms",
            "--hub-transport",
            "websocket",
            "--admin-addr",
            "127.0.0.1:0",
            "--log-format",
            "text",
        ])
        .env("HTTPS_PROXY", format!("http://127.0.0.1:{proxy}"))
        .env("NO_PROXY", "")
        .env("RUST_LOG", "debug")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let started = Instant::now();
    let gateway_id = loop {
        let (_, list) = env.api("/api/v1/gateways").await;
        let g = &list["items"][0];
        if g["connected"] == json!(true) && g["applicationCount"] == 3 {
            assert_eq!(g["transport"], "websocket", "{g}");
            break g["id"].as_str().unwrap().to_owned();
        }
        assert!(
            started.elapsed() < WAIT,
            "the gateway process did not connect: {list}\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        tunnels.load(Ordering::SeqCst) >= 2,
        "registration and the tunnel went through the proxy"
    );
    // Long enough for sessions to be renewed, with changes relayed meanwhile.
    for n in 0..3 {
        let status = if n % 2 == 0 { "Degraded" } else { "Healthy" };
        env.sim.set_health("argocd", "app-00002", status, "");
        env.until(
            "a change from the process",
            &format!("/api/v1/gateways/{gateway_id}/applications/argocd/app-00002"),
            |_, v| v["health"]["status"] == status,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    assert!(env.sim.logins() >= 2, "logins {}", env.sim.logins());
    // SIGTERM: goodbye and exit 0.
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the gateway did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(status.success(), "exit {status:?}\n{text}");
    assert!(text.contains("DEBUG"), "logs were captured at debug level");
    assert!(text.contains("logged in to Argo CD"));
    // Neither the password nor any session token the gateway held reached its log.
    let mut secrets = vec!["Pr0cess-Secret-Pw".to_owned()];
    for r in env.sim.requests() {
        if let Some(bearer) = r.bearer() {
            secrets.push(bearer.to_owned());
            secrets.push(bearer.split('.').nth(2).unwrap_or(bearer).to_owned());
        }
    }
    assert!(secrets.len() > 3);
    for s in &secrets {
        assert!(!text.contains(s.as_str()), "a secret reached the gateway's debug log");
    }
}
