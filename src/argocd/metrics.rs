//! Argo CD request metrics: latency and outcomes per endpoint. Endpoints are path templates
//! (`/api/v1/applications/{name}/sync`), never concrete names, so the series stay few.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of one Argo CD request series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// HTTP method.
    pub method: String,
    /// Path template.
    pub endpoint: String,
}

/// Labels of an outcome series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// HTTP method.
    pub method: String,
    /// Path template.
    pub endpoint: String,
    /// HTTP status code, or `error` when no response arrived, `timeout` when none in time.
    pub status: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.002, 2.0, 14))
}

/// Shared handles; cloning shares the values.
#[derive(Clone)]
pub struct ArgoCdMetrics {
    /// Seconds until the response headers arrived.
    pub latency: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    /// Responses and failures by status.
    pub responses: Family<OutcomeLabels, Counter>,
}

impl Default for ArgoCdMetrics {
    fn default() -> Self {
        Self {
            latency: Family::new_with_constructor(latency_histogram),
            responses: Family::default(),
        }
    }
}

impl std::fmt::Debug for ArgoCdMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ArgoCdMetrics")
    }
}

impl ArgoCdMetrics {
    /// Registers the metrics.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "argocd_gateway_argocd_request_duration_seconds",
            "Argo CD request latency until the response headers, by endpoint",
            self.latency.clone(),
        );
        r.register(
            "argocd_gateway_argocd_responses",
            "Argo CD responses and failures by endpoint and status",
            self.responses.clone(),
        );
    }

    /// Records one request.
    pub fn observe(&self, method: &str, endpoint: &str, status: &str, seconds: f64) {
        self.latency
            .get_or_create(&EndpointLabels {
                method: method.to_owned(),
                endpoint: endpoint.to_owned(),
            })
            .observe(seconds);
        self.responses
            .get_or_create(&OutcomeLabels {
                method: method.to_owned(),
                endpoint: endpoint.to_owned(),
                status: status.to_owned(),
            })
            .inc();
    }
}

/// The path template of a request's segments: application names, can-i arguments and other
/// per-object parts become placeholders.
pub fn endpoint(segments: &[&str]) -> String {
    let mut out = String::new();
    for (i, s) in segments.iter().enumerate() {
        let part = match (segments.get(2).copied(), i) {
            (Some("applications"), 3) => "{name}",
            (Some("account"), 4) => "{resource}",
            (Some("account"), 5) => "{action}",
            (Some("account"), 6..) => "{object}",
            _ => s,
        };
        out.push('/');
        out.push_str(part);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::endpoint;

    #[test]
    fn endpoints_are_templates() {
        assert_eq!(endpoint(&["api", "v1", "applications"]), "/api/v1/applications");
        assert_eq!(
            endpoint(&["api", "v1", "applications", "guestbook", "sync"]),
            "/api/v1/applications/{name}/sync"
        );
        assert_eq!(
            endpoint(&["api", "v1", "account", "can-i", "applications", "get", "*/*"]),
            "/api/v1/account/can-i/{resource}/{action}/{object}"
        );
        assert_eq!(endpoint(&["api", "version"]), "/api/version");
    }
}
