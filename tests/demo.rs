//! The README's first command and its "Try it in five minutes" path, run as a newcomer runs
//! them: `argocd-gateway demo`, then its printed `export` lines pasted into a shell, then every
//! `$B …` line of that README section as written (and the demo's own suggestions), each checked
//! for what it should show — including a sync to a revision and a `wait` for it. The demo's log,
//! written to a file, carries no terminal escape codes, and Ctrl-C ends it promptly.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_argocd-gateway");

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// The `$B …` lines of the README's "Try it in five minutes" section, in order.
fn readme_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Try it in five minutes"))
        .expect("the README has a \"Try it in five minutes\" section");
    let mut in_block = false;
    let mut commands = vec![];
    for line in section.lines() {
        if line.starts_with("```") {
            in_block = !in_block;
        } else if in_block && line.starts_with("$B ") {
            commands.push(line.to_owned());
        }
    }
    commands
}

/// Runs a pasted line in bash after the demo's `export` lines, as a second terminal would.
fn shell(exports: &str, line: &str, cwd: &std::path::Path) -> Output {
    Command::new("bash")
        .arg("-c")
        .arg(format!("set -o pipefail\n{exports}\n{line}"))
        .current_dir(cwd)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// What each command of the five-minute path must show.
fn check(line: &str, out: &Output, gateway_id: &str, apps: usize) {
    assert!(out.status.success(), "{line}\n{}", text(out));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let words: Vec<&str> = line.split_whitespace().collect();
    match words[2] {
        "gateways" => assert!(
            stdout.contains(gateway_id) && stdout.contains("connected"),
            "{line}\n{stdout}"
        ),
        "apps" => assert_eq!(
            stdout.lines().filter(|l| l.contains("argocd/app-")).count(),
            apps,
            "{line}\n{stdout}"
        ),
        "app" => assert!(
            stdout.contains(words[4]) && stdout.contains("health:"),
            "{line}\n{stdout}"
        ),
        "sync" => assert!(stdout.contains("sync of"), "{line}\n{stdout}"),
        "wait" => {
            assert!(stdout.contains("result: Deployed"), "{line}\n{stdout}");
            if line.contains("&& echo deployed") {
                assert!(stdout.trim_end().ends_with("deployed"), "{line}\n{stdout}");
            }
        }
        "health" => {
            let v: Value = serde_norway::from_str(&stdout).unwrap_or_else(|e| panic!("{line}: YAML: {e}\n{stdout}"));
            assert!(v["status"].is_string() && v["checks"].is_array(), "{line}\n{stdout}");
        }
        "events" => {
            let max: usize = words[words.iter().position(|w| *w == "--max").unwrap() + 1]
                .parse()
                .unwrap();
            assert_eq!(stdout.lines().count(), max, "{line}\n{stdout}");
        }
        other => panic!("the test does not know what `hub {other}` should show; teach it ({line})"),
    }
}

#[test]
fn the_five_minute_path_works_as_written() {
    let readme = readme_commands();
    assert!(
        readme.iter().any(|l| l.contains(" hub sync ")) && readme.iter().any(|l| l.contains(" hub wait ")),
        "the five-minute path syncs and waits: {readme:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("demo.log");
    let apps = 12;
    let mut demo = Command::new(BIN)
        .args(["demo", "--apps", &apps.to_string(), "--change-every", "300ms"])
        .args(["--http-addr", &free_addr(), "--grpc-addr", &free_addr()])
        .args(["--admin-addr", &free_addr()])
        .current_dir(dir.path())
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
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
    let mut exports = vec![];
    let mut suggested = vec![];
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(120).saturating_sub(started.elapsed()))
            .unwrap_or_else(|_| panic!("the demo prints its banner\n{}", std::fs::read_to_string(&log).unwrap()));
        if line.starts_with("export ") {
            exports.push(line);
        } else if line.starts_with("$B ") {
            suggested.push(line);
        } else if line.starts_with("Ctrl-C stops everything") {
            break;
        }
    }
    let names: Vec<&str> = exports
        .iter()
        .filter_map(|e| e.strip_prefix("export ")?.split('=').next())
        .collect();
    assert_eq!(
        names,
        ["ARGOCD_GATEWAY_HUB_API", "ARGOCD_GATEWAY_ADMIN_TOKEN_FILE", "GW", "B"],
        "the demo prints each setting once, as an export"
    );
    // No suggested command repeats the flags the exports set.
    assert!(
        suggested
            .iter()
            .all(|c| !c.contains("--hub-api") && !c.contains("--admin-token-file")),
        "{suggested:?}"
    );
    let gateway_id = exports[2].trim_start_matches("export GW=").to_owned();
    let exports = exports.join("\n");

    // Each README line as written, in order, from another directory (a second terminal).
    let elsewhere = tempfile::tempdir().unwrap();
    for line in &readme {
        let out = shell(&exports, line, elsewhere.path());
        check(line, &out, &gateway_id, apps);
    }
    // The multi-source sync landed on the source it named.
    if let Some(multi) = readme
        .iter()
        .find(|l| l.contains(" hub sync ") && l.contains("--source 1"))
    {
        let words: Vec<&str> = multi.split_whitespace().collect();
        let (app, revision) = (
            words[4],
            words[words.iter().position(|w| *w == "--revision").unwrap() + 1],
        );
        let out = shell(
            &exports,
            &format!("$B hub wait $GW {app} --revision {revision} --timeout 60s -o json"),
            elsewhere.path(),
        );
        assert!(out.status.success(), "{}", text(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["application"]["sync"]["revisions"][0], revision, "{v}");
    }
    // And the demo's own suggestions.
    for line in &suggested {
        let out = shell(&exports, line, elsewhere.path());
        check(line, &out, &gateway_id, apps);
    }

    // Ctrl-C: the gateway says goodbye, then the hub stops; exit 0, promptly.
    let _ = Command::new("kill").args(["-INT", &demo.id().to_string()]).status();
    let signalled = Instant::now();
    let deadline = signalled + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = demo.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = demo.kill();
            panic!("the demo did not stop on Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    eprintln!("the demo stopped {:?} after Ctrl-C", signalled.elapsed());
    assert!(status.success(), "demo exit {status:?}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("said goodbye to the hub"), "{logged}");
    // Written to a file, the log has no colour or other escape codes, and values print as
    // values (no Rust `Some(…)`).
    assert!(!logged.contains('\u{1b}'), "escape codes in a log file:\n{logged}");
    assert!(!logged.contains("Some("), "{logged}");
}
