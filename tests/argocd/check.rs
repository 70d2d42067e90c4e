//! `argocd-gateway check` run as the real binary against an in-process simulator.

use std::time::Duration;

use argocd_gateway::simulator::{SimTls, TokenSpec};

use crate::common::{Env, Mode, start};

struct Outcome {
    success: bool,
    stdout: String,
}

async fn run_check(env: &Env, mode: Mode, extra: &[&str]) -> Outcome {
    let mut args = vec!["check".to_owned()];
    args.extend(env.flags(mode));
    if let (Mode::VerifyWithCa, Some(ca)) = (mode, &env.ca_path) {
        args.push("--trust-ca".into());
        args.push(ca.display().to_string());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_argocd-gateway"))
        .args(&args)
        .env_remove("ARGOCD_GATEWAY_ARGOCD_SERVER")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), child)
        .await
        .expect("check finished within 30s")
        .expect("check ran");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stdout.contains(&env.token) && !stderr.contains(&env.token),
        "token leaked:\n{stdout}\n{stderr}"
    );
    Outcome {
        success: out.status.success(),
        stdout: format!("{stdout}{stderr}"),
    }
}

fn assert_reports_all(out: &Outcome, version: &str) {
    let s = &out.stdout;
    assert!(out.success, "check should pass:\n{s}");
    assert!(s.contains(version), "version:\n{s}");
    assert!(s.contains("subject gateway:apiKey"), "subject:\n{s}");
    assert!(s.contains("expires 20"), "expiry:\n{s}");
    for perm in [
        "can get applications",
        "can sync applications",
        "can get logs",
        "can get clusters",
    ] {
        assert!(
            s.lines().any(|l| l.contains(perm) && l.contains(" ok ")),
            "{perm}:\n{s}"
        );
    }
    assert!(s.contains("3 visible"), "app count:\n{s}");
    assert!(s.contains("check passed"), "{s}");
}

#[tokio::test]
async fn check_passes_in_each_tls_mode() {
    let tls = start(SimTls::SelfSigned, "v3.5.1").await;
    tls.sim.add_synthetic_apps(3);
    let out = run_check(&tls, Mode::VerifyWithCa, &[]).await;
    assert_reports_all(&out, "v3.5.1");
    assert!(
        out.stdout.contains("verified; chain [CN=argocd-server"),
        "{}",
        out.stdout
    );
    let out = run_check(&tls, Mode::Insecure, &[]).await;
    assert_reports_all(&out, "v3.5.1");
    assert!(out.stdout.contains("NOT verified"), "{}", out.stdout);
    let plain = start(SimTls::Plaintext, "v2.14.7").await;
    plain.sim.add_synthetic_apps(3);
    let out = run_check(&plain, Mode::Plaintext, &[]).await;
    assert_reports_all(&out, "v2.14.7");
}

#[tokio::test]
async fn check_fails_and_says_what_to_change() {
    let env = start(SimTls::SelfSigned, "v3.5.1").await;
    env.sim.add_synthetic_apps(3);

    let out = run_check(&env, Mode::VerifyNoCa, &[]).await;
    assert!(!out.success);
    assert!(out.stdout.contains("gateway.argocd.insecure=true"), "{}", out.stdout);

    let out = run_check(&env, Mode::Plaintext, &[]).await;
    assert!(!out.success);
    assert!(out.stdout.contains("unset gateway.argocd.plaintext"), "{}", out.stdout);

    let plain = start(SimTls::Plaintext, "v3.5.1").await;
    let mut flags = plain.flags(Mode::Plaintext);
    flags.retain(|f| f != "--argocd-plaintext");
    let url_idx = flags.iter().position(|f| f == "--argocd-server").expect("server flag") + 1;
    flags[url_idx] = flags[url_idx].replacen("http://", "https://", 1);
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_argocd-gateway"))
        .arg("check")
        .args(&flags)
        .arg("--argocd-insecure")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), child)
        .await
        .expect("finished")
        .expect("ran");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(text.contains("set gateway.argocd.plaintext=true"), "{text}");

    let out = run_check(&env, Mode::Insecure, &["--argocd-plaintext"]).await;
    assert!(!out.success);
    assert!(out.stdout.contains("mutually exclusive"), "{}", out.stdout);

    // Missing permission: the policy line to add, and "can see 0 of them".
    env.sim
        .update_token(&env.token, TokenSpec::account("gateway").without("applications", "get"));
    let out = run_check(&env, Mode::VerifyWithCa, &[]).await;
    assert!(!out.success);
    assert!(
        out.stdout.contains("p, gateway, applications, get, */*, allow"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("can see 0 of them"), "{}", out.stdout);

    // Bad token.
    env.sim.revoke_token(&env.token);
    let out = run_check(&env, Mode::VerifyWithCa, &[]).await;
    assert!(!out.success);
    assert!(out.stdout.contains("REJECTED"), "{}", out.stdout);
    assert!(out.stdout.contains("generate a new token"), "{}", out.stdout);
}

#[tokio::test]
async fn check_with_project_tokens() {
    let env = start(SimTls::Plaintext, "v3.5.1").await;
    env.sim.add_synthetic_apps(6);
    let dir = env.dir.path().join("projects");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(
        dir.join("team-a"),
        env.sim.add_token(TokenSpec::project("team-a", "gw")),
    )
    .expect("write");
    std::fs::write(dir.join("_unscoped"), env.sim.add_token(TokenSpec::account("gateway"))).expect("write");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_argocd-gateway"))
        .args([
            "check",
            "--argocd-plaintext",
            "--argocd-server",
            &env.sim.url(),
            "--argocd-project-tokens-dir",
        ])
        .arg(&dir)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), child)
        .await
        .expect("finished")
        .expect("ran");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("token [team-a]") && text.contains("subject proj:team-a:gw"),
        "{text}"
    );
    assert!(text.contains("token [_unscoped]"), "{text}");
    assert!(text.contains("2 visible"), "team-a sees its 2 of 6 apps:\n{text}");
}
