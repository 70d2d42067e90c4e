//! The hub: the central server gateways dial. It issues registration tokens and certificates,
//! keeps gateway identities and their relayed state in SQLite, holds every live tunnel session,
//! forwards requests to gateways, and serves the HTTP API. It imports only [`crate::wire`] and
//! shared helpers, never a gateway part.
//!
//! Files, in the order a request meets them:
//! - [`server`]: `hub serve` — data directory, listeners, services, shutdown; [`listen`]: the
//!   gRPC listener's TLS and its deadlines; [`limits`]: resource bounds;
//! - [`state`]: what the services share; [`pki`]: the data directory's CA, certificate and admin
//!   token; [`store`]: SQLite;
//! - [`auth`]: authenticating a gateway's call; [`registration`] and [`tunnel`]: the two gRPC
//!   services; [`sessions`]: live sessions; [`entities`]: relayed applications and clusters;
//! - [`requests`]: requests forwarded to a gateway; [`health`]: health checks; [`verdict`]: the
//!   deployment verdict of an application, which `wait` computes;
//! - [`lifecycle`]: install progress per registration token, pending registrations and their
//!   removal, gateways deregistering themselves;
//! - [`feed`]: the fleet change feed and its recorder; [`timeline`]: each application's state
//!   transitions; [`fleet`]: per-gateway summaries and the fleet metrics;
//! - [`api`]: the HTTP API; [`page`]: the status page; [`https`]: TLS for the HTTP listener;
//!   [`metrics`]: the hub's metrics;
//! - [`client`]: the `hub token|gateways|apps|…` commands, thin clients of the API;
//!   [`cli`]: the `hub` subcommands.

pub mod api;
pub mod auth;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod entities;
pub mod feed;
pub mod fleet;
pub mod health;
pub mod https;
pub mod init;
pub mod lifecycle;
pub mod limits;
pub mod listen;
pub mod metrics;
pub mod page;
pub mod peer;
pub mod pki;
pub mod postgres;
pub mod registration;
pub mod requests;
pub mod server;
pub mod sessions;
pub mod state;
pub mod store;
pub mod timeline;
pub mod tunnel;
pub mod verdict;

pub use server::{Hub, HubError, ServeArgs, start};
