//! A private PostgreSQL server for a test: the Debian `postgresql` server binaries, a temporary
//! data directory (copied from a template made once by `initdb`), a free loopback port, trust
//! authentication, stopped when the value is dropped. As root (CI), the server runs as the
//! `postgres` user. Nothing is skipped: without the binaries the test fails and says how to
//! install them.

#![allow(dead_code)]

use crate::ports::free_port;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// A running (or stopped, for outage tests) PostgreSQL server.
pub struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    /// The port it listens on (kept across restarts).
    pub port: u16,
    running: bool,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The server binaries: `$ARGOCD_GATEWAY_TEST_PG_BIN`, or the newest
/// `/usr/lib/postgresql/<version>/bin` that has `initdb`.
fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("ARGOCD_GATEWAY_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "the PostgreSQL server binaries (initdb, pg_ctl, postgres) are not installed: these tests start their own server. Install them with `apt-get install postgresql` (Debian; CI's .ci/run does), or point ARGOCD_GATEWAY_TEST_PG_BIN at a directory that has them"
        ),
    }
}

/// Runs a server binary, as the `postgres` user when this is root.
fn run(bin: &Path, tool: &str, args: &[&str]) -> std::process::Output {
    let exe = bin.join(tool);
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    cmd.args(args).stdin(Stdio::null());
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()))
}

fn chown_to_postgres(path: &Path) {
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:"])
            .arg(path)
            .status()
            .expect("chown");
        assert!(status.success(), "chown {} to postgres failed", path.display());
    }
}

/// A data directory made by `initdb` once and copied for every server. It is kept between runs
/// (one per server version and user), made under a temporary name and renamed into place, so
/// test processes running at once never see half of one.
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let bin = bin_dir();
        let version = bin
            .parent()
            .and_then(|p| p.file_name())
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_default();
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        let path = std::env::temp_dir().join(format!("argocd-gateway-pg-template-{version}-{uid}"));
        if path.join("data/PG_VERSION").exists() {
            return path.join("data");
        }
        let staging = tempfile::Builder::new()
            .prefix("argocd-gateway-pg-initdb")
            .tempdir()
            .unwrap();
        chown_to_postgres(staging.path());
        let data = staging.path().join("data");
        let out = run(
            &bin,
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "--auth=trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let staged = staging.keep();
        if std::fs::rename(&staged, &path).is_err() {
            // Another process made it meanwhile.
            let _ = std::fs::remove_dir_all(&staged);
        }
        path.join("data")
    })
}

impl Postgres {
    /// Starts a fresh server with an empty `postgres` database.
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::Builder::new().prefix("argocd-gateway-pg").tempdir().unwrap();
        let status = Command::new("cp")
            .arg("-a")
            .arg(template())
            .arg(dir.path().join("data"))
            .status()
            .expect("cp");
        assert!(status.success(), "cannot copy the PostgreSQL template");
        chown_to_postgres(dir.path());
        let mut pg = Postgres {
            bin,
            dir,
            port: free_port(),
            running: false,
        };
        pg.resume();
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").to_string_lossy().into_owned()
    }

    /// The URL of database `db` for the hub's --store.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable", self.port)
    }

    /// Creates database `name` and returns its URL.
    pub fn create_db(&self, name: &str) -> String {
        let port = self.port.to_string();
        let out = run(
            &self.bin,
            "createdb",
            &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", name],
        );
        assert!(
            out.status.success(),
            "createdb {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(name)
    }

    /// Stops the server at once (as a crash or a failover would), keeping its data.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let data = self.data();
        let out = run(&self.bin, "pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
        if !out.status.success() {
            eprintln!("pg_ctl stop: {}", String::from_utf8_lossy(&out.stderr));
        }
        self.running = false;
    }

    /// Starts the stopped server again on the same port and data.
    pub fn resume(&mut self) {
        let data = self.data();
        let sockets = self.dir.path().to_string_lossy().into_owned();
        let log = self.dir.path().join("server.log").to_string_lossy().into_owned();
        let options = format!(
            "-p {} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_connections=300",
            self.port
        );
        let out = run(
            &self.bin,
            "pg_ctl",
            &["-D", &data, "-l", &log, "-o", &options, "-w", "-t", "60", "start"],
        );
        assert!(
            out.status.success(),
            "PostgreSQL did not start: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        self.running = true;
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
