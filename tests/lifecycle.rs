//! The install lifecycle end to end: the command `hub token create` prints, run by a shell and
//! rendered by the real Helm engine, whose pods run as processes with exactly their arguments
//! and environment against the Argo CD simulator, a hub and a fake Kubernetes API
//! ([`harness`]); the registration preflight that spends no token when the install cannot
//! work; pending registrations that expire; deregistration on uninstall; install progress;
//! trusting a self-signed certificate; and self-update holding when Argo CD manages it.

#[path = "support/ports.rs"]
mod ports;
// Shared with tests/kube.rs; this binary uses part of it.
#[allow(dead_code)]
#[path = "support/fake_api.rs"]
mod fake_api;

#[path = "lifecycle/harness.rs"]
mod harness;

#[path = "lifecycle/install.rs"]
mod install;

#[path = "lifecycle/hooks.rs"]
mod hooks;

#[path = "lifecycle/trust.rs"]
mod trust;

#[path = "lifecycle/hold.rs"]
mod hold;
