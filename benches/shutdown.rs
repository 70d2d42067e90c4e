//! SIGTERM → exit of a connected gateway, through the real binary: a hub and the Argo CD
//! simulator as processes, a gateway registered and relaying, then SIGTERM and the time until
//! the process has exited (goodbye sent, acknowledged by the hub closing the session, tasks
//! drained). Repeated with fresh gateways; prints the median and the worst against the target.
//! `cargo bench --bench shutdown` (ROUNDS=n for more rounds).

#[path = "../tests/support/ports.rs"]
mod ports;
#[path = "../tests/support/procs.rs"]
mod procs;

use std::time::Duration;

/// The target: well under a second on a healthy connection.
const TARGET: Duration = Duration::from_secs(1);

fn main() {
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(7);
    let dir = tempfile::tempdir().unwrap();
    let fleet = procs::Fleet::start(dir.path(), 200);
    let mut took = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let (mut gw, _) = fleet.gateway(&format!("bench-{round}"), &[]);
        // Let the session settle (snapshot acknowledged, first keepalives) as in real life.
        std::thread::sleep(Duration::from_millis(500));
        gw.signal("-TERM");
        let (status, t) = gw.wait_exit(Duration::from_secs(30)).expect("the gateway exits");
        assert!(status.success(), "exit {status:?}\n{}", gw.text());
        took.push(t);
    }
    took.sort();
    let median = took[took.len() / 2];
    let worst = took[took.len() - 1];
    let verdict = |d: Duration| if d < TARGET { "meets" } else { "MISSES" };
    println!("shutdown: SIGTERM -> exit of a connected gateway, {rounds} rounds (200 applications)");
    println!("  median {median:>10.1?}  ({} the {TARGET:?} target)", verdict(median));
    println!("  worst  {worst:>10.1?}  ({} the {TARGET:?} target)", verdict(worst));
    println!("  all    {took:.1?}");
}
