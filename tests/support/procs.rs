//! A hub, a simulated Argo CD and a gateway as separate processes of the real binary, started
//! the way the README's "Connect a real Argo CD" path starts them (`hub serve`, `simulator`,
//! `hub token create`, `run`), each logging to a file. Shared by tests/shutdown.rs and
//! benches/shutdown.rs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use crate::ports::free_port;
use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_argocd-gateway");

/// A child process whose stderr goes to a file; killed when dropped.
pub struct Proc {
    /// The process.
    pub child: Child,
    /// Its log file.
    pub log: PathBuf,
}

impl Proc {
    /// Starts `BIN args` in `cwd`, logging to `log`, without a terminal and with `env` set.
    pub fn spawn(args: &[&str], cwd: &Path, log: PathBuf, env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log.with_extension("out")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc {
            child: cmd.spawn().unwrap(),
            log,
        }
    }

    /// What it logged so far.
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal (`-TERM`, `-INT`).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the exit, polling every millisecond, for at most `within`; returns the status
    /// and how long it took, or None when it did not end.
    pub fn wait_exit(&mut self, within: Duration) -> Option<(std::process::ExitStatus, Duration)> {
        let started = Instant::now();
        while started.elapsed() < within {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some((status, started.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` every 50 ms until it is true, for at most `within`; panics naming `what`.
pub fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < within, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A hub and a simulator running, in `dir`.
pub struct Fleet {
    /// The working directory (hub-data/, argocd-sim/, logs).
    pub dir: PathBuf,
    /// `hub serve`.
    pub hub: Proc,
    /// `simulator`.
    pub sim: Proc,
    /// The hub's gRPC port.
    pub grpc: u16,
    /// The hub API's URL.
    pub api: String,
    /// The simulator's URL.
    pub sim_url: String,
}

impl Fleet {
    /// Starts `hub serve` and `simulator --apps N` and waits until both answer.
    pub fn start(dir: &Path, apps: usize) -> Fleet {
        let (grpc, http, sim_port) = (free_port(), free_port(), free_port());
        let hub = Proc::spawn(
            &[
                "hub",
                "serve",
                "--grpc-addr",
                &format!("127.0.0.1:{grpc}"),
                "--http-addr",
                &format!("127.0.0.1:{http}"),
            ],
            dir,
            dir.join("hub.log"),
            &[],
        );
        let sim = Proc::spawn(
            &[
                "simulator",
                "--addr",
                &format!("127.0.0.1:{sim_port}"),
                "--apps",
                &apps.to_string(),
            ],
            dir,
            dir.join("sim.log"),
            &[],
        );
        let fleet = Fleet {
            dir: dir.to_owned(),
            hub,
            sim,
            grpc,
            api: format!("http://127.0.0.1:{http}"),
            sim_url: format!("http://127.0.0.1:{sim_port}"),
        };
        wait_until("the hub and the simulator to start", Duration::from_secs(60), || {
            dir.join("hub-data/admin-token").exists()
                && dir.join("argocd-sim/argocd-token").exists()
                && fleet.cli(&["gateways"]).status.success()
        });
        fleet
    }

    /// Runs `BIN hub ARGS` against the hub.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .arg("hub")
            .args(args)
            .env("ARGOCD_GATEWAY_HUB_API", &self.api)
            .env("ARGOCD_GATEWAY_ADMIN_TOKEN_FILE", self.dir.join("hub-data/admin-token"))
            .current_dir(&self.dir)
            .output()
            .unwrap()
    }

    /// `hub ARGS -o json`, parsed.
    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.cli(&[args, &["-o", "json"]].concat());
        assert!(
            out.status.success(),
            "hub {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Registers and starts a gateway named `name` (`run`, logging to `name.log`, `env` set) and
    /// waits until the hub shows it connected with its applications; returns it and its id.
    pub fn gateway(&self, name: &str, env: &[(&str, &str)]) -> (Proc, String) {
        let tok = self.json(&["token", "create", "--name", name]);
        let admin = format!("127.0.0.1:{}", free_port());
        let identity = format!("file:{name}-identity.json");
        let hub_url = format!("https://localhost:{}", self.grpc);
        let gw = Proc::spawn(
            &[
                "run",
                "--hub-url",
                &hub_url,
                "--hub-ca-fingerprint",
                tok["caFingerprint"].as_str().unwrap(),
                "--registration-token",
                tok["token"].as_str().unwrap(),
                "--identity",
                &identity,
                "--argocd-server",
                &self.sim_url,
                "--argocd-plaintext",
                "--argocd-token-file",
                "argocd-sim/argocd-token",
                "--admin-addr",
                &admin,
            ],
            &self.dir,
            self.dir.join(format!("{name}.log")),
            env,
        );
        let mut id = String::new();
        wait_until("the gateway to connect and relay", Duration::from_secs(60), || {
            let list = self.json(&["gateways"]);
            let found = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|g| g["name"] == name && g["connected"] == true && g["applicationCount"].as_u64() > Some(0));
            if let Some(g) = found {
                id = g["id"].as_str().unwrap().to_owned();
            }
            found.is_some()
        });
        (gw, id)
    }

    /// Whether the hub shows gateway `id` connected.
    pub fn connected(&self, id: &str) -> bool {
        self.json(&["gateway", "show", id])["connected"] == true
    }
}
