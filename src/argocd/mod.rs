//! The Argo CD side of the gateway, which knows nothing of the hub: flags and validated
//! configuration ([`config`]), the REST client with classified errors ([`client`], [`error`],
//! [`transport`], [`token`]), the compact model of applications and clusters and its decoding
//! ([`model`]), the converging view over them ([`view`]), and the probes that `check` and the
//! health check share ([`probes`]).

pub mod client;
pub mod config;
pub mod error;
pub mod metrics;
pub mod model;
pub mod probes;
pub mod split;
pub mod token;
pub mod transport;
pub mod view;

pub use client::{
    AppQuery, AppRef, AppWatch, Client, LogsRequest, Refresh, ResourceRef, RetryPolicy, RollbackRequest, SyncRequest,
    SyncResource, UserInfo, VersionInfo,
};
pub use config::{ArgoCdArgs, ArgoCdConfig, AuthSource, ConfigError, TlsMode};
pub use error::{ArgoCdError, Permission};
pub use model::{AppKey, Application, Cluster};
pub use token::Claims;
pub use view::{Snapshot, View, ViewEvent, ViewHandle, ViewOptions, ViewStatus};
