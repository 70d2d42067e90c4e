//! Ports for the servers tests and benches start, chosen below the kernel's ephemeral range.
//!
//! Why not "bind port 0, read the port, drop the listener": that port lies in the ephemeral range,
//! where every outgoing connection of a test running in parallel draws its local port, so one can
//! take it before the server binds it (seen on a busy CI machine as `AddrInUse` at hub start).
//! Below that range only explicit binds compete: a counter keeps the tests of one process apart and
//! an offset drawn from the process id keeps concurrent test processes apart. Each candidate is
//! still checked by binding it.

#![allow(dead_code)]

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// Lowest port handed out: above the well-known and most registered service ports.
const LOW: u32 = 10_000;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A local port that is free now and that no other caller in this process has been given.
pub fn free_port() -> u16 {
    let high = ephemeral_low().min(32_768);
    if high <= LOW + 1_000 {
        // A machine whose ephemeral range starts low: fall back to the kernel's choice.
        return kernel_port();
    }
    let span = high - LOW;
    let offset = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (offset + n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() && TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
    kernel_port()
}

/// The first port of the kernel's ephemeral range (Linux), or the IANA default elsewhere.
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(49_152)
}

fn kernel_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
