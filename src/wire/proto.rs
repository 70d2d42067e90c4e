//! Generated messages and services of `argocd_gateway.v1` (see `proto/`).
#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("argocd_gateway.v1");
