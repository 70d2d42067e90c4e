//! A self-signed certificate made the usual way (`openssl req -x509`, which marks it CA:TRUE)
//! and given to `--trust-ca` is trusted for Argo CD and for the hub, with validity and host
//! name still checked; every other failure reads as a sentence naming the value that fixes it.

use std::path::Path;
use std::time::Duration;

use argocd_gateway::hub::{self, ServeArgs};
use argocd_gateway::simulator::{SimHandle, SimOptions, SimTls, Simulator, TokenSpec};
use serde_json::json;

use crate::harness::{BIN, Output, free_port, output};

/// What `openssl req -x509 -newkey ec -subj /CN=<cn> -addext subjectAltName=…` makes: a
/// self-signed certificate with basicConstraints CA:TRUE. Valid from `from` to `to` days.
fn openssl_style(cn: &str, names: &[&str], from: i64, to: i64) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::days(from);
    params.not_after = now + time::Duration::days(to);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

async fn sim_with(cert: &(String, String)) -> SimHandle {
    let sim = Simulator::start(SimOptions {
        tls: SimTls::SelfSigned,
        certificate: Some(cert.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    sim.add_synthetic_apps(2);
    sim
}

async fn run(args: &[&str], dir: &Path) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(["--log-format", "text"])
        .args(args)
        .current_dir(dir)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("RUST_LOG", "warn");
    for (k, _) in std::env::vars() {
        if k.starts_with("ARGOCD_GATEWAY_") {
            cmd.env_remove(k);
        }
    }
    output(cmd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openssl_style_self_signed_certificate_is_trusted_through_trust_ca() {
    argocd_gateway::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Argo CD and the hub each serve their own self-signed CA:TRUE certificate.
    let argocd_cert = openssl_style("argocd-server", &["127.0.0.1"], -1, 365);
    let hub_cert = openssl_style("hub", &["localhost", "127.0.0.1"], -1, 365);
    let sim = sim_with(&argocd_cert).await;
    let token = sim.add_token(TokenSpec::account("gateway"));
    std::fs::write(d.join("argocd-token"), &token).unwrap();
    let hub_dir = d.join("hub");
    std::fs::create_dir_all(&hub_dir).unwrap();
    std::fs::write(hub_dir.join("server.pem"), &hub_cert.0).unwrap();
    std::fs::write(hub_dir.join("server-key.pem"), &hub_cert.1).unwrap();
    let grpc_port = free_port();
    let hub = hub::start(ServeArgs {
        hostnames: vec!["localhost".into(), "127.0.0.1".into()],
        grpc_addr: format!("127.0.0.1:{grpc_port}").parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        health_check_interval: Duration::from_secs(3600),
        ..ServeArgs::new(hub_dir)
    })
    .await
    .unwrap();
    let admin = std::fs::read_to_string(&hub.admin_token_path).unwrap();
    let created: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{}/api/v1/registration-tokens", hub.http_addr))
        .bearer_auth(admin.trim())
        .json(&json!({"name": "self-signed"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let trust = d.join("trust");
    std::fs::create_dir_all(&trust).unwrap();
    std::fs::write(trust.join("argocd.pem"), &argocd_cert.0).unwrap();
    std::fs::write(trust.join("hub.pem"), &hub_cert.0).unwrap();
    let hub_url = format!("https://localhost:{grpc_port}");
    let trust_s = trust.display().to_string();
    let sim_url = sim.url();
    let common = |server: &str| {
        vec![
            "--argocd-server".to_owned(),
            server.to_owned(),
            "--argocd-token-file".to_owned(),
            "argocd-token".to_owned(),
            "--hub-url".to_owned(),
            hub_url.clone(),
            "--identity".to_owned(),
            "file:identity.json".to_owned(),
        ]
    };

    // Without the certificates in the trust list: a sentence, not webpki's variant name.
    let args = common(&sim_url);
    let mut check: Vec<&str> = vec!["check"];
    check.extend(args.iter().map(String::as_str));
    let out = run(&check, d).await;
    let text = out.text();
    assert_ne!(out.code, Some(0), "{text}");
    assert!(
        text.contains("CA:TRUE") && text.contains("gateway.serverCertificates"),
        "{text}"
    );
    assert!(text.contains("hub certificate is not trusted"), "{text}");
    assert!(!text.contains("CaUsedAsEndEntity"), "{text}");

    // With them: the preflight passes over verified TLS to both, and the gateway registers,
    // trusting the hub through --trust-ca alone (no CA fingerprint).
    let mut register: Vec<&str> = vec!["register", "--trust-ca", &trust_s, "--registration-token"];
    let reg_token = created["token"].as_str().unwrap().to_owned();
    register.push(&reg_token);
    register.extend(args.iter().map(String::as_str));
    let out = run(&register, d).await;
    let text = out.text();
    assert_eq!(out.code, Some(0), "{text}");
    assert!(
        text.contains("verified (this exact certificate is in the trust list)"),
        "{text}"
    );
    assert!(text.contains("TLS verified, HTTP/2"), "{text}");
    assert!(text.contains("registered as gw-"), "{text}");

    // Validity and host name are still checked, and say which value fixes them.
    let wrong_name = openssl_style("argocd-server", &["argocd.example.com"], -1, 365);
    let expired = openssl_style("argocd-server", &["127.0.0.1"], -30, -1);
    std::fs::write(trust.join("wrong-name.pem"), &wrong_name.0).unwrap();
    std::fs::write(trust.join("expired.pem"), &expired.0).unwrap();
    for (cert, needles) in [
        (
            &wrong_name,
            vec!["issued for argocd.example.com and not for", "gateway.argocd.serverUrl"],
        ),
        (&expired, vec!["it expired at", "gateway.argocd.insecure=true"]),
    ] {
        let other = sim_with(cert).await;
        other.add_token(TokenSpec::account("gateway"));
        let args = common(&other.url());
        let mut check: Vec<&str> = vec!["check", "--trust-ca", &trust_s];
        check.extend(args.iter().map(String::as_str));
        let out = run(&check, d).await;
        let text = out.text();
        assert_ne!(out.code, Some(0), "{text}");
        for n in needles {
            assert!(text.contains(n), "{n:?} in\n{text}");
        }
    }
    hub.shutdown().await;
}
