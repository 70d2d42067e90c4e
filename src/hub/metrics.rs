//! The hub's own Prometheus metrics (served on its HTTP `/metrics` with the build info).

use crate::wire::proto::{GatewayMessage, gateway_message};

/// Labels naming a message or request kind.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct KindLabel {
    /// The kind.
    pub kind: String,
}

/// The hub's metrics.
#[derive(Debug, Clone)]
pub struct HubMetrics {
    /// Gateways with a live session (set at scrape time).
    pub connected: prometheus_client::metrics::gauge::Gauge,
    /// Messages received from gateways, by kind.
    pub messages: prometheus_client::metrics::family::Family<KindLabel, prometheus_client::metrics::counter::Counter>,
    /// Requests to gateways, seconds, by kind.
    pub request_seconds:
        prometheus_client::metrics::family::Family<KindLabel, prometheus_client::metrics::histogram::Histogram>,
}

impl Default for HubMetrics {
    fn default() -> Self {
        Self {
            connected: Default::default(),
            messages: Default::default(),
            request_seconds: prometheus_client::metrics::family::Family::new_with_constructor(|| {
                prometheus_client::metrics::histogram::Histogram::new(
                    prometheus_client::metrics::histogram::exponential_buckets(0.002, 2.0, 14),
                )
            }),
        }
    }
}

impl HubMetrics {
    /// Registers the metrics.
    pub fn register(&self, r: &mut prometheus_client::registry::Registry) {
        r.register(
            "argocd_gateway_hub_gateways_connected",
            "Gateways with a live session",
            self.connected.clone(),
        );
        r.register(
            "argocd_gateway_hub_messages_received",
            "Messages received from gateways, by kind",
            self.messages.clone(),
        );
        r.register_with_unit(
            "argocd_gateway_hub_request_duration",
            "Requests forwarded to gateways, by kind",
            prometheus_client::registry::Unit::Seconds,
            self.request_seconds.clone(),
        );
    }
}

/// A gateway message's kind, for the message counter.
pub fn message_kind(m: &GatewayMessage) -> &'static str {
    match &m.body {
        Some(gateway_message::Body::Hello(_)) => "hello",
        Some(gateway_message::Body::Ping(_)) => "ping",
        Some(gateway_message::Body::Pong(_)) => "pong",
        Some(gateway_message::Body::Goodbye(_)) => "goodbye",
        Some(gateway_message::Body::Snapshot(_)) => "snapshot",
        Some(gateway_message::Body::Delta(_)) => "delta",
        Some(gateway_message::Body::Response(_)) => "response",
        None => "empty",
    }
}
