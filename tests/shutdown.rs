//! Stopping is quick and clean: SIGTERM (or Ctrl-C) to a connected gateway ends it as soon as
//! the hub has its goodbye — the bound asserted here is generous so a busy machine cannot fail
//! it; `cargo bench --bench shutdown` prints the real figure against its 1 s target. Its log,
//! written to a file, has no escape codes even with a terminal type set.

#[path = "support/ports.rs"]
mod ports;
#[path = "support/procs.rs"]
mod procs;

use std::time::Duration;

use procs::Fleet;

#[test]
fn sigterm_ends_a_connected_gateway_promptly_with_a_goodbye_and_plain_logs() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(dir.path(), 20);
    // A terminal type and colour forcing of other tools must not colour a log file.
    let (mut gw, id) = fleet.gateway("term", &[("TERM", "xterm-256color"), ("CLICOLOR_FORCE", "1")]);
    assert!(fleet.connected(&id));

    gw.signal("-TERM");
    let (status, took) = gw
        .wait_exit(Duration::from_secs(20))
        .expect("the gateway exits after SIGTERM");
    eprintln!("SIGTERM -> exit of a connected gateway: {took:?}");
    assert!(status.success(), "exit {status:?}\n{}", gw.text());
    assert!(
        took < Duration::from_secs(3),
        "SIGTERM -> exit took {took:?}\n{}",
        gw.text()
    );
    // The hub learnt it from the goodbye, not from a timeout.
    procs::wait_until(
        "the hub to show the gateway disconnected",
        Duration::from_secs(5),
        || !fleet.connected(&id),
    );
    assert!(
        fleet.hub.text().contains("gateway said goodbye"),
        "{}",
        fleet.hub.text()
    );

    let log = gw.text();
    assert!(log.contains("said goodbye to the hub"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in the gateway's log file:\n{log}"
    );
    assert!(
        !fleet.hub.text().contains('\u{1b}'),
        "escape codes in the hub's log file"
    );
    // Values are printed as values, one key=value style, not Rust's Debug.
    assert!(!log.contains("Some("), "{log}");
    let connected = log
        .lines()
        .find(|l| l.contains("connected to hub"))
        .expect("a connect line");
    assert!(connected.contains(&format!("gateway_id={id}")), "{connected}");
}
