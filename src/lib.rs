//! argocd-gateway: an outbound-only link from an Argo CD instance to a central hub.
//!
//! The crate is organised by responsibility; each folder has its own module doc:
//! - `argocd`: the Argo CD REST client and its converging view of applications and clusters;
//! - `tunnel`: the gateway's connection to the hub (dial, trust, session, keepalive, reconnect);
//! - `identity`: registration, certificates and the identity store;
//! - `relay`: the state cache and deltas sent to the hub;
//! - `hub`: the central server (registration, sessions, HTTP API, store);
//! - [`simulator`]: a faithful in-process Argo CD API server for tests, demos and benchmarks;
//! - [`check`]: the `check` preflight command;
//! - `admin`: liveness, readiness and Prometheus metrics;
//! - `demo`: the whole system in one process (hub, simulated Argo CD, gateway);
//! - `daemon`: `run`, which wires the Argo CD view, the relay, the tunnel and the admin server;
//! - `kube`: the Kubernetes side (identity Secret, Lease leader election, self-update);
//! - [`cli`]: command-line definitions and dispatch.
#![forbid(unsafe_code)]

pub mod admin;
pub mod argocd;
pub mod check;
pub mod cli;
pub mod daemon;
pub mod demo;
pub mod hub;
pub mod identity;
pub mod kube;
pub mod proto;
pub mod relay;
pub mod secret;
pub mod simulator;
pub mod telemetry;
pub mod tls;
pub mod tunnel;
pub mod util;

/// The version of this build, as in Cargo.toml.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
