//! Shared helpers: a simulator with a token on disk, argument building, and bounded waits.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use argocd_gateway::argocd::{ArgoCdArgs, ArgoCdConfig, Client, RetryPolicy};
use argocd_gateway::simulator::{SimHandle, SimOptions, SimTls, Simulator, TokenSpec};
use clap::Parser;

/// How the client should reach the simulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Verify with the simulator's CA passed as --trust-ca.
    VerifyWithCa,
    /// Verify without the CA (unknown authority).
    VerifyNoCa,
    /// --argocd-insecure.
    Insecure,
    /// --argocd-plaintext.
    Plaintext,
}

/// A running simulator, a temp dir with the token file (and CA), and the token itself.
pub struct Env {
    pub sim: SimHandle,
    pub dir: tempfile::TempDir,
    pub token: String,
    pub token_path: PathBuf,
    pub ca_path: Option<PathBuf>,
}

pub async fn start(tls: SimTls, version: &str) -> Env {
    start_with(SimOptions {
        tls,
        version: version.into(),
        ..SimOptions::default()
    })
    .await
}

pub async fn start_with(options: SimOptions) -> Env {
    argocd_gateway::tls::install_crypto_provider();
    let sim = within(Simulator::start(options)).await.expect("simulator starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let token = sim.add_token(TokenSpec::account("gateway"));
    let token_path = dir.path().join("token");
    std::fs::write(&token_path, format!("{token}\n")).expect("write token");
    let ca_path = sim.ca_pem().map(|pem| {
        let p = dir.path().join("ca.pem");
        std::fs::write(&p, pem).expect("write ca");
        p
    });
    Env {
        sim,
        dir,
        token,
        token_path,
        ca_path,
    }
}

#[derive(Parser)]
struct Wrap {
    #[command(flatten)]
    a: ArgoCdArgs,
}

/// Parses ArgoCdArgs from flags, as the binary would.
pub fn parse_args(flags: &[String]) -> ArgoCdArgs {
    let mut v = vec!["test".to_owned()];
    v.extend_from_slice(flags);
    Wrap::try_parse_from(v).expect("flags parse").a
}

impl Env {
    /// The flags selecting `mode` (server URL, TLS flags, token file); the CA path is separate.
    pub fn flags(&self, mode: Mode) -> Vec<String> {
        let url = match mode {
            // The plaintext client is pointed at the same host:port with http://.
            Mode::Plaintext => self.sim.url().replacen("https://", "http://", 1),
            _ => self.sim.url(),
        };
        let mut f = vec![
            "--argocd-server".to_owned(),
            url,
            "--argocd-token-file".to_owned(),
            self.token_path.display().to_string(),
        ];
        match mode {
            Mode::Insecure => f.push("--argocd-insecure".into()),
            Mode::Plaintext => f.push("--argocd-plaintext".into()),
            _ => {}
        }
        f
    }

    /// A validated config for `mode` with extra flags.
    pub fn config(&self, mode: Mode, extra: &[&str]) -> ArgoCdConfig {
        let mut flags = self.flags(mode);
        flags.extend(extra.iter().map(|s| s.to_string()));
        let args = parse_args(&flags);
        let trust = match (mode, &self.ca_path) {
            (Mode::VerifyWithCa, Some(p)) => argocd_gateway::tls::load_ca_paths(std::slice::from_ref(p)).expect("ca"),
            _ => vec![],
        };
        ArgoCdConfig::from_args(&args, trust).expect("valid config")
    }

    /// A client with fast retries.
    pub fn client(&self, mode: Mode, extra: &[&str]) -> Client {
        Client::with_retry(self.config(mode, extra), fast_retry()).expect("client")
    }
}

pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        base: Duration::from_millis(5),
        max: Duration::from_millis(20),
    }
}

/// Awaits with a deadline so a missing response fails instead of hanging.
pub async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("operation did not finish within 20s")
}

/// Polls `cond` until true, failing after 20s.
pub async fn eventually(what: &str, cond: impl FnMut() -> bool) {
    eventually_within(what, Duration::from_secs(20), cond).await;
}

/// Polls `cond` until true, failing after `limit`. A costly condition is polled less often (the
/// pause is at least twice what it took), so on a single-threaded test runtime the polling
/// never starves what it waits for.
pub async fn eventually_within(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let t = std::time::Instant::now();
        if cond() {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10).max(t.elapsed() * 2)).await;
    }
}
