//! Logs and metrics plumbing shared by gateway and hub: `tracing` with JSON (the in-cluster
//! default) or text output and `--debug`; Prometheus text encoding and the build-info metric.
//!
//! Text logs are coloured only when stderr is a terminal and `NO_COLOR` is unset
//! (<https://no-color.org>), so a log file or a pipe never carries escape codes. Fields are
//! logged with their `Display` form (`key=value`, snake_case keys), never Rust's `Debug`.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::registry::Registry;

/// Log output format (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable lines, for terminals.
    Text,
}

/// Logging flags shared by every subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format: json (default in a cluster) or text.
    #[arg(long, env = "ARGOCD_GATEWAY_LOG_FORMAT", value_enum, global = true)]
    pub log_format: Option<LogFormat>,
    /// Log at debug level (Helm gateway.debug).
    #[arg(long, env = "ARGOCD_GATEWAY_DEBUG", global = true)]
    pub debug: bool,
}

/// Installs the global subscriber. Without `--log-format`, JSON is used inside Kubernetes and
/// text elsewhere; `RUST_LOG` overrides the level when set.
pub fn init(args: &LogArgs) {
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let format = args
        .log_format
        .unwrap_or(if in_cluster { LogFormat::Json } else { LogFormat::Text });
    let default_level = if args.debug {
        "argocd_gateway=debug,info"
    } else {
        "info"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        LogFormat::Text => builder.with_target(false).try_init(),
    };
}

/// Whether text logs are coloured: only on a terminal, and never when `NO_COLOR` is set to
/// anything but the empty string.
pub fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Renders a registry in the Prometheus text format.
pub fn encode(registry: &Registry) -> Response {
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            out,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode metrics: {e}")).into_response(),
    }
}

/// Labels of the build-info metric.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct BuildLabels {
    /// Crate version.
    pub version: String,
    /// Wire protocol version.
    pub protocol: String,
}

/// Registers `argocd_gateway_build_info` (always 1).
pub fn register_build_info(r: &mut Registry) {
    let info: prometheus_client::metrics::family::Family<BuildLabels, prometheus_client::metrics::gauge::Gauge> =
        Default::default();
    info.get_or_create(&BuildLabels {
        version: crate::VERSION.to_owned(),
        protocol: crate::wire::PROTOCOL_VERSION.to_string(),
    })
    .set(1);
    r.register("argocd_gateway_build_info", "Build information", info);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))));
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None));
        assert!(!colour(false, Some(OsStr::new("1"))));
    }
}
