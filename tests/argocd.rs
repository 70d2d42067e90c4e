//! Integration tests of the Argo CD client, its view, the simulator and `check`, in one binary to
//! keep link time down. Everything runs against real HTTP (and real TLS) on `127.0.0.1:0`.

#[path = "argocd/common.rs"]
mod common;

#[path = "argocd/model.rs"]
mod model;

#[path = "argocd/client.rs"]
mod client;

#[path = "argocd/view.rs"]
mod view;

#[path = "argocd/check.rs"]
mod check;

#[path = "argocd/sets.rs"]
mod sets;
