//! The hub's own Prometheus metrics (served on its HTTP `/metrics` with the build info).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::wire::proto::{GatewayMessage, gateway_message};

/// Labels naming why something was refused.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ReasonLabel {
    /// The reason.
    pub reason: String,
}

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
    /// gRPC connections closed before they spoke HTTP/2, by reason.
    pub connections_refused: Family<ReasonLabel, Counter>,
    /// HTTP connections closed at once because too many were open.
    pub http_connections_refused: Counter,
    /// Session opens and calls refused, by reason (overloaded, copied identity, …).
    pub sessions_refused: Family<ReasonLabel, Counter>,
    /// Relayed entities refused, by reason (limits, invalid JSON).
    pub entities_refused: Family<ReasonLabel, Counter>,
    /// gRPC connections upgraded to the tunnel's WebSocket.
    pub websocket_sessions: Counter,
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
            connections_refused: Default::default(),
            http_connections_refused: Default::default(),
            sessions_refused: Default::default(),
            entities_refused: Default::default(),
            websocket_sessions: Default::default(),
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
        r.register(
            "argocd_gateway_hub_connections_refused",
            "gRPC connections closed before speaking HTTP/2, by reason",
            self.connections_refused.clone(),
        );
        r.register(
            "argocd_gateway_hub_websocket_connections",
            "gRPC connections that came as the tunnel's WebSocket (HTTP/1.1 upgrade)",
            self.websocket_sessions.clone(),
        );
        r.register(
            "argocd_gateway_hub_http_connections_refused",
            "HTTP connections closed because too many were open",
            self.http_connections_refused.clone(),
        );
        r.register(
            "argocd_gateway_hub_sessions_refused",
            "Gateway session opens refused, by reason",
            self.sessions_refused.clone(),
        );
        r.register(
            "argocd_gateway_hub_entities_refused",
            "Relayed entities refused, by reason",
            self.entities_refused.clone(),
        );
    }

    /// Counts a refused session open.
    pub fn session_refused(&self, reason: &str) {
        self.sessions_refused
            .get_or_create(&ReasonLabel { reason: reason.into() })
            .inc();
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
