//! The Argo CD side of the gateway, which knows nothing of the hub: flags and validated
//! configuration ([`config`]), the REST client with classified errors ([`client`], [`error`],
//! [`transport`], [`token`], and [`session`] for username/password logins), the compact model of
//! applications, clusters, ApplicationSets and projects and its decoding ([`model`], with
//! [`syncwindow`] deciding whether a project's sync window is open), the converging view over
//! them ([`view`]), and the probes that `check` and the health check share ([`probes`]).

pub mod client;
pub mod config;
pub mod error;
pub mod metrics;
pub mod model;
pub mod probes;
pub mod session;
pub mod split;
pub mod syncwindow;
pub mod token;
pub mod transport;
pub mod view;

pub use client::{
    AppQuery, AppRef, AppWatch, Client, LogsRequest, Refresh, ResourceRef, RetryPolicy, RollbackRequest, SyncRequest,
    SyncResource, UserInfo, VersionInfo,
};
pub use config::{ArgoCdArgs, ArgoCdConfig, AuthSource, ConfigError, TlsMode};
pub use error::{ArgoCdError, Permission};
pub use model::{AppKey, Application, ApplicationSet, Cluster, Project};
pub use token::Claims;
pub use view::{ListFigures, Snapshot, View, ViewEvent, ViewHandle, ViewOptions, ViewStatus};
