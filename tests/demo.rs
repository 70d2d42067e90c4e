//! The README's first command: `argocd-gateway demo` brings up a hub, a simulated Argo CD and
//! a connected gateway, and the commands it prints work as printed.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_argocd-gateway");

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

#[test]
fn demo_runs_and_its_printed_commands_list_the_applications() {
    let dir = tempfile::tempdir().unwrap();
    let mut demo = Command::new(BIN)
        .args(["demo", "--apps", "12", "--change-every", "300ms"])
        .args(["--http-addr", &free_addr(), "--grpc-addr", &free_addr()])
        .args(["--admin-addr", &free_addr()])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = demo.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    let mut commands = vec![];
    while commands.len() < 3 {
        let line = rx
            .recv_timeout(Duration::from_secs(60).saturating_sub(started.elapsed()))
            .expect("the demo prints three example commands");
        if let Some(cmd) = line.trim().strip_prefix("$B ") {
            commands.push(cmd.to_owned());
        }
    }
    // `hub apps`, exactly as printed, lists every simulated application.
    let args: Vec<&str> = commands[0].split_whitespace().collect();
    assert_eq!(&args[..2], ["hub", "apps"]);
    let out = Command::new(BIN).args(&args).current_dir(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let apps: Vec<&str> = text.lines().skip(1).filter(|l| l.contains("argocd/app-")).collect();
    assert_eq!(apps.len(), 12, "{text}");
    // `hub app` shows one.
    let args: Vec<&str> = commands[1].split_whitespace().collect();
    let out = Command::new(BIN).args(&args).current_dir(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("app-00001"));

    let _ = Command::new("kill").args(["-INT", &demo.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = demo.try_wait().unwrap() {
            assert!(status.success(), "demo exit {status:?}");
            break;
        }
        if Instant::now() > deadline {
            let _ = demo.kill();
            panic!("the demo did not stop on Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
