//! The registration hook spends the token only when the install can work; a registration that
//! never connects is removed when its token expires; `hub token status --wait` ends non-zero
//! naming the step that failed.

use std::time::Duration;

use argocd_gateway::simulator::{SimTls, TokenSpec};
use serde_json::{Value, json};

use crate::harness::{Env, free_port, output, output_within};

/// A failed preflight: the table in the Job's log, the token unused and the hub saying why.
async fn assert_preflight_refused(env: &Env, argocd_flags: &[&str], token_file: &str, expected: &[&str]) {
    let mut flags = vec!["--name", "refused", "--argocd-token-file", token_file];
    flags.extend_from_slice(argocd_flags);
    let printed = env.token_create(&flags).await;
    let r = env.install(&printed).await;
    let register = env.pod(&r, "Job", "-register");
    let out = env.run_to_end(&register).await;
    let text = out.text();
    assert_ne!(out.code, Some(0), "{text}");
    for needle in [
        "CHECK",
        "STATUS",
        "FAIL",
        "check FAILED",
        "the registration token was NOT used",
    ]
    .iter()
    .chain(expected)
    {
        assert!(text.contains(needle), "{needle:?} in\n{text}");
    }
    assert!(!text.contains("registered as"), "{text}");
    // The hub says so: the token is still active, and its progress names the failed preflight.
    let (_, list) = env.api(reqwest::Method::GET, "/api/v1/registration-tokens").await;
    let listed = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == json!(printed.id))
        .cloned()
        .unwrap();
    assert_eq!(listed["state"], "active", "{listed}");
    assert_eq!(listed["gatewayId"], Value::Null);
    let status = env.token_status(&printed.id).await;
    assert_eq!(status["failed"]["step"], "used", "{status}");
    let message = status["failed"]["message"].as_str().unwrap();
    assert!(
        message.contains("preflight failed") && message.contains("not used"),
        "{message}"
    );
    assert!(expected.iter().all(|e| message.contains(e)), "{message}");
    // No gateway was registered.
    assert!(env.gateways().await.iter().all(|g| g["name"] != "refused"));
    // `hub token status --wait` ends at once, non-zero, naming the step.
    let out = output(env.hub_cli(&["token", "status", &printed.id, "--wait", "--timeout", "30s"])).await;
    assert_eq!(out.code, Some(1), "{}", out.text());
    assert!(out.stderr.contains("install step failed: token used"), "{}", out.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_hook_spends_no_token_when_argocd_is_unreachable_mistyped_or_denies() {
    let env = Env::start(SimTls::Plaintext).await;
    std::fs::write(env.work().join("good-token"), &env.argocd_token).unwrap();
    // Unreachable: nothing listens there.
    let closed = format!("http://127.0.0.1:{}", free_port());
    assert_preflight_refused(
        &env,
        &["--argocd-url", &closed],
        "good-token",
        &["TCP", "cannot connect"],
    )
    .await;
    // Wrong TLS mode: TLS to a plaintext Argo CD.
    let tls_url = env.sim.url().replacen("http://", "https://", 1);
    assert_preflight_refused(
        &env,
        &["--argocd-url", &tls_url],
        "good-token",
        &["does not speak TLS", "gateway.argocd.plaintext=true"],
    )
    .await;
    // A token without `applications get`.
    let denied = env
        .sim
        .add_token(TokenSpec::account("gateway").without("applications", "get"));
    std::fs::write(env.work().join("denied-token"), &denied).unwrap();
    let sim_url = env.sim.url();
    assert_preflight_refused(
        &env,
        &["--argocd-url", &sim_url],
        "denied-token",
        &["can get applications", "p, gateway, applications, get, */*, allow"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_that_never_connects_is_removed_when_its_token_expires() {
    let env = Env::start(SimTls::Plaintext).await;
    std::fs::write(env.work().join("argocd-token"), &env.argocd_token).unwrap();
    let sim_url = env.sim.url();
    let printed = env
        // Long enough for the install and its hook to finish on a busy machine (CI took
        // 24 s once), short enough for the expiry to come within the test.
        .token_create(&["--name", "never", "--ttl", "90s", "--argocd-url", &sim_url])
        .await;
    let r = env.install(&printed).await;
    // The hook registers, and then no gateway ever connects (the Deployment never starts).
    let out = env.run_to_end(&env.pod(&r, "Job", "-register")).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    let pending = env.gateways().await.into_iter().find(|g| g["name"] == "never").unwrap();
    assert_eq!(
        (pending["state"].clone(), pending["connected"].clone()),
        (json!("pending"), json!(false))
    );
    let id = pending["id"].as_str().unwrap().to_owned();
    let status = env.token_status(&printed.id).await;
    let connected = &status["steps"][2];
    assert_eq!(
        (connected["step"].clone(), connected["state"].clone()),
        (json!("connected"), json!("pending"))
    );
    assert!(
        connected["message"]
            .as_str()
            .unwrap()
            .contains("removed if the gateway does not connect"),
        "{status}"
    );

    // `--wait` follows it and ends when the registration is removed at the token's expiry,
    // up to 90 s after the token was made: more than `output`'s usual bound on a quick machine.
    let out = output_within(
        env.hub_cli(&["token", "status", &printed.id, "--wait", "--timeout", "180s"]),
        Duration::from_secs(200),
    )
    .await;
    assert_eq!(out.code, Some(1), "{}", out.text());
    assert!(
        out.stderr.contains("install step failed: gateway connected to the hub"),
        "{}",
        out.text()
    );
    assert!(out.stderr.contains("never connected"), "{}", out.text());
    let removed = env.gateways().await.into_iter().find(|g| g["id"] == json!(id)).unwrap();
    assert_eq!(removed["state"], "removed", "{removed}");
    assert!(
        removed["removedReason"].as_str().unwrap().contains("never connected"),
        "{removed}"
    );
    // Its identity no longer opens a session.
    let out = output(env.hub_cli(&["gateway", "show", &id])).await;
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("was removed at"), "{}", out.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_status_wait_names_a_failing_first_health_check() {
    let env = Env::start(SimTls::Plaintext).await;
    // The account may list clusters but not applications, and the Deployment registers by
    // itself (registration.register=false), so nothing checks before it connects.
    let denied = env
        .sim
        .add_token(TokenSpec::account("gateway").without("applications", "get"));
    std::fs::write(env.work().join("argocd-token"), &denied).unwrap();
    let sim_url = env.sim.url();
    let printed = env
        .token_create(&["--name", "unhealthy", "--argocd-url", &sim_url])
        .await;
    let mut argv = env.shell_helm_argv(&printed.command).await;
    argv.extend(["--set".to_owned(), "registration.register=false".to_owned()]);
    let r = env.render(&argv).await;
    assert!(r.ok, "{:?}", r.error);
    assert!(r.find("Job", &format!("{}-register", r.fullname())).is_none());
    let _run = env.spawn(&env.pod(&r, "Deployment", ""));
    let out = output(env.hub_cli(&["token", "status", &printed.id, "--wait", "--timeout", "180s"])).await;
    assert_eq!(out.code, Some(1), "{}", out.text());
    assert!(
        out.stdout.contains("done     gateway connected to the hub"),
        "{}",
        out.text()
    );
    assert!(
        out.stderr.contains("install step failed: first health check passed"),
        "{}",
        out.text()
    );
    assert!(
        out.stderr.contains("p, gateway, applications, get, */*, allow"),
        "{}",
        out.text()
    );
}
