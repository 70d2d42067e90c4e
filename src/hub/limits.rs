//! Bounds on what the hub holds for anyone: unauthenticated connections on both listeners
//! (handshake and preface deadlines, a cap on connections not yet speaking, header timeouts),
//! and registered gateways (entity count, entity size, state size, answer size, concurrent
//! session opens). Every refusal is counted in a metric and logged.

use std::time::Duration;

/// `hub serve` flags that bound resources.
#[derive(Debug, Clone, clap::Args)]
pub struct Limits {
    /// Applications and clusters one gateway may relay; more are refused (logged and shown on
    /// the gateway).
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_MAX_ENTITIES", default_value_t = 50_000)]
    pub max_entities: usize,
    /// Largest JSON of one relayed application or cluster, in bytes; larger ones are refused.
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_MAX_ENTITY_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_entity_bytes: usize,
    /// Total JSON of one gateway's state, in bytes (also bounds a snapshot in transit).
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_MAX_STATE_BYTES", default_value_t = 512 * 1024 * 1024)]
    pub max_state_bytes: usize,
    /// Largest answer a gateway may send to one request, in bytes, assembled from its pieces.
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_MAX_ANSWER_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_answer_bytes: usize,
    /// Time a new gRPC connection has to finish TLS and to send its first HTTP/2 bytes.
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = crate::util::parse_duration)]
    pub handshake_timeout: Duration,
    /// gRPC connections still in their handshake at once; more are closed at once.
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_MAX_PENDING_CONNECTIONS", default_value_t = 512)]
    pub max_pending_connections: usize,
    /// Longest life of a gRPC connection without a client certificate (registration needs
    /// seconds; tunnels always present a certificate where the hub terminates TLS).
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_ANONYMOUS_CONNECTION_TTL", default_value = "60s", value_parser = crate::util::parse_duration)]
    pub anonymous_connection_ttl: Duration,
    /// Session opens handled at once; gateways beyond it wait up to 2 s for a turn, then are told
    /// how long to wait.
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_MAX_CONCURRENT_OPENS", default_value_t = 256)]
    pub max_concurrent_opens: usize,
    /// Connections to the HTTP listener at once; more are closed at once.
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_MAX_HTTP_CONNECTIONS", default_value_t = 1024)]
    pub max_http_connections: usize,
    /// Time an HTTP client has to send a request's headers, and longest idle keep-alive.
    #[arg(long, env = "ARGOCD_GATEWAY_HUB_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = crate::util::parse_duration)]
    pub http_header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_entities: 50_000,
            max_entity_bytes: 8 * 1024 * 1024,
            max_state_bytes: 512 * 1024 * 1024,
            max_answer_bytes: 64 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            max_pending_connections: 512,
            anonymous_connection_ttl: Duration::from_secs(60),
            max_concurrent_opens: 256,
            max_http_connections: 1024,
            http_header_timeout: Duration::from_secs(10),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        limits: Limits,
    }

    #[test]
    fn defaults_match_the_flags() {
        let parsed = T::try_parse_from(["t"]).unwrap().limits;
        let d = Limits::default();
        assert_eq!(
            (parsed.max_entities, parsed.max_entity_bytes, parsed.max_state_bytes),
            (d.max_entities, d.max_entity_bytes, d.max_state_bytes)
        );
        assert_eq!(parsed.handshake_timeout, d.handshake_timeout);
        assert_eq!(parsed.http_header_timeout, d.http_header_timeout);
        assert_eq!(parsed.max_concurrent_opens, d.max_concurrent_opens);
    }
}
