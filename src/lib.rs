//! argocd-gateway: an outbound-only link from an Argo CD instance to a central hub.
//!
//! The crate is organised by responsibility; each folder has its own module doc. Data flows one
//! way: Argo CD → view → relay → tunnel → hub store → API.
//! - [`wire`]: the protocol both sides share (protobuf, codes, entities, item schema, assertion);
//! - [`argocd`]: the Argo CD REST client, its converging view and its probes (knows nothing of
//!   the hub);
//! - [`relay`]: the view as relayed state (digests, snapshots, deltas) and the answers to hub
//!   requests, mapped onto the Argo CD client;
//! - [`uplink`]: every call the gateway makes to the hub (dial, trust, register, renew, desired
//!   version, tunnel open);
//! - [`tunnel`]: the session with the hub and the reconnect loop;
//! - [`identity`]: keys, certificates and the identity store, with no network;
//! - [`kube`]: the Kubernetes side (identity Secret, Lease leader election, self-update);
//! - [`admin`]: liveness, readiness and Prometheus metrics of the gateway;
//! - [`daemon`], [`check`], [`demo`]: the `run`, `check` and `demo` commands;
//! - [`hub`]: the central server (registration, sessions, store, HTTP API) and its API client;
//! - [`simulator`]: a faithful in-process Argo CD API server for tests, demos and benchmarks;
//! - shared helpers: [`cli`], [`shutdown`], [`serve`], [`tls`], [`certs`], [`report`], [`secret`],
//!   [`telemetry`], [`util`].
// Denied, not forbidden: one audited call into glibc (`util::heap::trim`) allows it locally.
#![deny(unsafe_code)]

pub mod admin;
pub mod argocd;
pub mod certs;
pub mod check;
pub mod cli;
pub mod daemon;
pub mod demo;
pub mod hub;
pub mod identity;
pub mod kube;
pub mod relay;
pub mod report;
pub mod secret;
pub mod serve;
pub mod shutdown;
pub mod simulator;
pub mod telemetry;
pub mod tls;
pub mod tunnel;
pub mod uplink;
pub mod util;
pub mod wire;

/// The version of this build, as in Cargo.toml.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
