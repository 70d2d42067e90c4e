//! The `hub …` client commands as a script uses them: the binary run as a process against a
//! real hub, gateway and simulated Argo CD (in this process), checking exit codes, `-o
//! table|json|yaml`, a `wait` longer than an ordinary call may take, and syncs of single- and
//! multi-source applications to a revision.

#[path = "support/ports.rs"]
mod ports;
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use argocd_gateway::daemon::{DaemonArgs, DaemonError};
use argocd_gateway::hub::{self, Hub, ServeArgs};
use argocd_gateway::simulator::{SimHandle, SimOptions, SimTls, Simulator, TokenSpec};
use clap::Parser;
use ports::free_port;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_argocd-gateway");

#[derive(Parser)]
struct RunCli {
    #[command(flatten)]
    args: DaemonArgs,
}

/// A hub, a simulated Argo CD whose syncs run like the controller's, and a connected gateway.
struct Env {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    hub: Hub,
    sim: SimHandle,
    gateway_id: String,
    stop: CancellationToken,
    gateway: JoinHandle<Result<(), DaemonError>>,
}

impl Env {
    async fn start() -> Env {
        argocd_gateway::tls::install_crypto_provider();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let grpc = free_port();
        let hub = hub::start(ServeArgs {
            hostnames: vec!["localhost".into(), "127.0.0.1".into()],
            grpc_addr: format!("127.0.0.1:{grpc}").parse().unwrap(),
            http_addr: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            health_check_interval: Duration::from_secs(3600),
            ..ServeArgs::new(dir.join("hub"))
        })
        .await
        .expect("hub starts");
        let sim = Simulator::start(SimOptions {
            tls: SimTls::Plaintext,
            sync_step: Some(Duration::from_millis(300)),
            ..Default::default()
        })
        .await
        .unwrap();
        sim.add_synthetic_apps(5);
        std::fs::write(dir.join("argocd-token"), sim.add_token(TokenSpec::account("gateway"))).unwrap();
        let mut env = Env {
            _tmp: tmp,
            dir,
            hub,
            sim,
            gateway_id: String::new(),
            stop: CancellationToken::new(),
            gateway: tokio::spawn(async { Ok(()) }),
        };
        let tok = env.json(&["token", "create", "--name", "cli"]).await;
        let cli = RunCli::try_parse_from([
            "run".to_owned(),
            "--hub-url".into(),
            format!("https://localhost:{grpc}"),
            "--hub-ca-fingerprint".into(),
            tok["caFingerprint"].as_str().unwrap().into(),
            "--registration-token".into(),
            tok["token"].as_str().unwrap().into(),
            "--identity".into(),
            format!("file:{}", env.dir.join("identity.json").display()),
            "--argocd-server".into(),
            env.sim.url(),
            "--argocd-plaintext".into(),
            "--argocd-token-file".into(),
            env.dir.join("argocd-token").display().to_string(),
            "--admin-addr".into(),
            format!("127.0.0.1:{}", free_port()),
        ])
        .expect("flags parse");
        env.gateway = tokio::spawn(argocd_gateway::daemon::run(cli.args, env.stop.clone()));
        let started = Instant::now();
        env.gateway_id = loop {
            let list = env.json(&["gateways"]).await;
            if list["items"][0]["connected"] == json!(true)
                && env.json(&["apps"]).await["items"].as_array().map(Vec::len) == Some(5)
            {
                break list["items"][0]["id"].as_str().unwrap().to_owned();
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the gateway did not connect: {list}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        env
    }

    /// Runs `argocd-gateway hub ARGS` against this hub, as a script would.
    async fn hub(&self, args: &[&str]) -> Output {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.arg("hub")
            .args(args)
            .env("ARGOCD_GATEWAY_HUB_API", format!("http://{}", self.hub.http_addr))
            .env("ARGOCD_GATEWAY_ADMIN_TOKEN_FILE", &self.hub.admin_token_path)
            .env("NO_COLOR", "1")
            .current_dir(&self.dir)
            .kill_on_drop(true);
        cmd.output().await.unwrap()
    }

    /// `hub ARGS -o json`, which must succeed, parsed.
    async fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.hub(&all).await;
        assert!(out.status.success(), "hub {args:?}: {}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("hub {args:?} -o json: {e}\n{}", text(&out)))
    }

    async fn stop(self) {
        self.stop.cancel();
        let ended = tokio::time::timeout(Duration::from_secs(15), self.gateway).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "gateway stops cleanly: {ended:?}");
        self.hub.shutdown().await;
        self.sim.shutdown();
    }
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

/// The headline case of the issue: the CLI's ordinary 60 s call limit no longer cuts a wait
/// short. The application turns healthy after 70 s; `wait --timeout 90s` sees it and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_longer_than_a_minute_succeeds_when_the_app_turns_healthy() {
    let env = Env::start().await;
    let gw = env.gateway_id.clone();
    env.sim
        .set_health("argocd", "app-00002", "Progressing", "Waiting for rollout to finish");
    let sim = env.sim.clone();
    let healthy_at = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(70)).await;
        sim.set_health("argocd", "app-00002", "Healthy", "");
        Instant::now()
    });
    let started = Instant::now();
    let out = env.hub(&["wait", &gw, "argocd/app-00002", "--timeout", "90s"]).await;
    let ended = Instant::now();
    let healthy_at = healthy_at.await.unwrap();
    assert_eq!(code(&out), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("result: Deployed"),
        "{}",
        text(&out)
    );
    // It waited for the application, not for a fixed time.
    assert!(ended >= healthy_at && started.elapsed() >= Duration::from_secs(70));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_are_the_documented_ones() {
    let env = Env::start().await;
    let gw = env.gateway_id.clone();

    // --help documents them.
    let help = env.hub(&["--help"]).await;
    assert_eq!(code(&help), Some(0));
    let help_text = String::from_utf8_lossy(&help.stdout).into_owned();
    for line in [
        "0    done",
        "1    `wait`: Failed or Overwritten",
        "2    `wait`",
        "3    the hub answered",
        "4    the hub API could not",
        "64   usage",
    ] {
        assert!(help_text.contains(line), "hub --help lacks {line:?}:\n{help_text}");
    }
    let wait_help = String::from_utf8_lossy(&env.hub(&["wait", "--help"]).await.stdout).into_owned();
    assert!(
        wait_help.contains("Exit codes:") && wait_help.contains("2    `wait`"),
        "{wait_help}"
    );

    // 2: the timeout passes first.
    env.sim.set_health("argocd", "app-00000", "Progressing", "");
    let out = env.hub(&["wait", &gw, "argocd/app-00000", "--timeout", "2s"]).await;
    assert_eq!(code(&out), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("result: Timeout"),
        "{}",
        text(&out)
    );

    // 1: the application's operation failed.
    env.sim.set_sync_status("argocd", "app-00000", "OutOfSync");
    env.sim.set_operation_phase("argocd", "app-00000", "Failed");
    let out = env.hub(&["wait", &gw, "argocd/app-00000", "--timeout", "30s"]).await;
    assert_eq!(code(&out), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("result: Failed"),
        "{}",
        text(&out)
    );

    // 0: Deployed (Synced and Healthy, no operation running).
    let out = env.hub(&["wait", &gw, "argocd/app-00001", "--timeout", "30s"]).await;
    assert_eq!(code(&out), Some(0), "{}", text(&out));

    // 3: the hub answered with an error (an unknown gateway).
    let out = env.hub(&["app", "gw-unknown", "argocd/app-00001"]).await;
    assert_eq!(code(&out), Some(3), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"), "{}", text(&out));

    // 4: nothing listens at --hub-api.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let out = env.hub(&["apps", "--hub-api", &closed]).await;
    assert_eq!(code(&out), Some(4), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--hub-api"),
        "{}",
        text(&out)
    );

    // 64: a wrong command line, a malformed application, an unreadable token file.
    for args in [
        vec!["apps", "--no-such-flag"],
        vec!["wait", &gw, "app-without-namespace"],
        vec!["apps", "--admin-token-file", "/nonexistent/admin-token"],
    ] {
        let out = env.hub(&args).await;
        assert_eq!(code(&out), Some(64), "hub {args:?}: {}", text(&out));
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_prints_table_json_and_yaml() {
    let env = Env::start().await;
    let gw = env.gateway_id.clone();
    let commands: Vec<Vec<&str>> = vec![
        vec!["gateways"],
        vec!["gateway", "show", &gw],
        vec!["apps"],
        vec!["app", &gw, "argocd/app-00001"],
        vec!["health", &gw],
        vec!["token", "list"],
        vec!["api-token", "list"],
        vec!["desired-version", "get"],
        vec!["timeline", &gw, "argocd/app-00001"],
        vec!["wait", &gw, "argocd/app-00001", "--timeout", "10s"],
    ];
    for args in commands {
        let json_out = env.hub(&[args.as_slice(), &["-o", "json"]].concat()).await;
        assert!(json_out.status.success(), "{args:?} -o json: {}", text(&json_out));
        let as_json: Value = serde_json::from_slice(&json_out.stdout)
            .unwrap_or_else(|e| panic!("{args:?} -o json is JSON: {e}\n{}", text(&json_out)));
        let yaml_out = env.hub(&[args.as_slice(), &["-o", "yaml"]].concat()).await;
        assert!(yaml_out.status.success(), "{args:?} -o yaml: {}", text(&yaml_out));
        let as_yaml: Value = serde_norway::from_slice(&yaml_out.stdout)
            .unwrap_or_else(|e| panic!("{args:?} -o yaml is YAML: {e}\n{}", text(&yaml_out)));
        // The same answer in both (health and wait answers carry times that move; compare keys).
        match (&as_json, &as_yaml) {
            (Value::Object(a), Value::Object(b)) => {
                assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "{args:?}")
            }
            (a, b) => assert_eq!(a, b, "{args:?}"),
        }
        let table = env.hub(&[args.as_slice(), &["-o", "table"]].concat()).await;
        assert!(table.status.success(), "{args:?} -o table: {}", text(&table));
        let table = String::from_utf8_lossy(&table.stdout).into_owned();
        assert!(
            serde_json::from_str::<Value>(&table).is_err() && !table.trim().is_empty(),
            "{args:?} -o table prints for people, not JSON:\n{table}"
        );
    }
    // The tables people read say what matters.
    let app = String::from_utf8_lossy(&env.hub(&["app", &gw, "argocd/app-00001"]).await.stdout).into_owned();
    for want in [
        "application:",
        "argocd/app-00001",
        "sync:",
        "Synced",
        "health:",
        "Healthy",
        "KIND",
    ] {
        assert!(app.contains(want), "hub app lacks {want:?}:\n{app}");
    }
    let health = String::from_utf8_lossy(&env.hub(&["health", &gw]).await.stdout).into_owned();
    for want in ["status:", "Healthy", "CHECK", "token can sync applications", "OK"] {
        assert!(health.contains(want), "hub health lacks {want:?}:\n{health}");
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_to_a_revision_then_wait_for_it_single_and_multi_source() {
    let env = Env::start().await;
    let gw = env.gateway_id.clone();
    let commit = "0123456789abcdef0123456789abcdef01234567";

    let out = env.hub(&["sync", &gw, "argocd/app-00001", "--revision", commit]).await;
    assert_eq!(code(&out), Some(0), "{}", text(&out));
    let out = env
        .hub(&[
            "wait",
            &gw,
            "argocd/app-00001",
            "--revision",
            &commit[..7],
            "--timeout",
            "60s",
        ])
        .await;
    assert_eq!(code(&out), Some(0), "{}", text(&out));
    let app = env.json(&["app", &gw, "argocd/app-00001"]).await;
    assert_eq!(app["sync"]["revision"], commit, "{app}");
    assert_eq!(app["health"]["status"], "Healthy", "{app}");

    // app-00003 has two sources: a bare --revision is refused before anything is sent.
    let before = env.sim.requests().iter().filter(|r| r.path.ends_with("/sync")).count();
    let out = env.hub(&["sync", &gw, "argocd/app-00003", "--revision", commit]).await;
    assert_eq!(code(&out), Some(64), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("2 sources") && err.contains("--source"), "{err}");
    assert_eq!(
        env.sim.requests().iter().filter(|r| r.path.ends_with("/sync")).count(),
        before
    );
    // The API refuses it too, for scripts that call it directly.
    let admin = std::fs::read_to_string(&env.hub.admin_token_path).unwrap();
    let refused = reqwest::Client::new()
        .post(format!(
            "http://{}/api/v1/gateways/{gw}/applications/argocd/app-00003/sync",
            env.hub.http_addr
        ))
        .bearer_auth(admin.trim())
        .json(&json!({ "revision": commit }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 400);
    let answer: Value = refused.json().await.unwrap();
    assert!(answer["error"].as_str().unwrap().contains("2 sources"), "{answer}");
    assert_eq!(
        env.sim.requests().iter().filter(|r| r.path.ends_with("/sync")).count(),
        before
    );
    // A source that does not exist is named as such.
    let out = env
        .hub(&["sync", &gw, "argocd/app-00003", "--revision", commit, "--source", "7"])
        .await;
    assert_eq!(code(&out), Some(64), "{}", text(&out));

    // Named by its ref: that source lands at the revision; the other syncs to its
    // targetRevision, which resolves to the commit it was at.
    let other = env.json(&["app", &gw, "argocd/app-00003"]).await["sync"]["revisions"][0].clone();
    let out = env
        .hub(&[
            "sync",
            &gw,
            "argocd/app-00003",
            "--revision",
            commit,
            "--source",
            "values",
        ])
        .await;
    assert_eq!(code(&out), Some(0), "{}", text(&out));
    let sent = env
        .sim
        .requests()
        .into_iter()
        .rfind(|r| r.path == "/api/v1/applications/app-00003/sync")
        .unwrap();
    let body: Value = serde_json::from_str(&sent.body).unwrap();
    assert_eq!(body["revisions"], json!(["HEAD", commit]), "{body}");
    let out = env
        .hub(&[
            "wait",
            &gw,
            "argocd/app-00003",
            "--revision",
            commit,
            "--timeout",
            "60s",
        ])
        .await;
    assert_eq!(code(&out), Some(0), "{}", text(&out));
    let app = env.json(&["app", &gw, "argocd/app-00003"]).await;
    assert_eq!(app["sync"]["revisions"], json!([other, commit]), "{app}");
    // By position too.
    let out = env
        .hub(&[
            "sync",
            &gw,
            "argocd/app-00003",
            "--revision",
            &commit[..12],
            "--source",
            "1",
        ])
        .await;
    assert_eq!(code(&out), Some(0), "{}", text(&out));
    let out = env
        .hub(&[
            "wait",
            &gw,
            "argocd/app-00003",
            "--revision",
            &commit[..12],
            // Both sources are now at revisions with this prefix: the wait names its source.
            "--source-position",
            "1",
            "--timeout",
            "60s",
        ])
        .await;
    assert_eq!(code(&out), Some(0), "{}", text(&out));
    env.stop().await;
}
