//! Prometheus metrics, served on the admin listener.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tower_pkce::{Endpoint, Rejection};

const ENDPOINTS: [Endpoint; 4] = [
    Endpoint::Authorize,
    Endpoint::Token,
    Endpoint::Metadata,
    Endpoint::Other,
];
const OUTCOMES: [&str; 5] = ["rejected", "5xx", "4xx", "3xx", "2xx"];

fn endpoint_index(endpoint: Endpoint) -> usize {
    match endpoint {
        Endpoint::Authorize => 0,
        Endpoint::Token => 1,
        Endpoint::Metadata => 2,
        // `Endpoint` is non-exhaustive: one it may add is counted as other.
        _ => 3,
    }
}

/// A limit that acted: a connection closed or refused, or a request
/// answered 503, because a bound was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// `--max-connections`: a new client connection was closed at once.
    Connections,
    /// `--max-upstream-connections`: a request waited for an upstream
    /// connection in vain.
    UpstreamConnections,
    /// `--max-upstream-connections-per-client`: the same, for the client
    /// connection's own share.
    UpstreamConnectionsPerClient,
    /// `--head-timeout`, with part of a head received.
    HeadTimeout,
    /// `--body-timeout`.
    BodyTimeout,
    /// `--send-timeout`.
    SendTimeout,
    /// `--request-buffer-total`: a body streamed instead of being read
    /// ahead.
    RequestBufferTotal,
}

impl Limit {
    const ALL: [Self; 7] = [
        Self::Connections,
        Self::UpstreamConnections,
        Self::UpstreamConnectionsPerClient,
        Self::HeadTimeout,
        Self::BodyTimeout,
        Self::SendTimeout,
        Self::RequestBufferTotal,
    ];

    /// The `limit` label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Connections => "connections",
            Self::UpstreamConnections => "upstream_connections",
            Self::UpstreamConnectionsPerClient => "upstream_connections_per_client",
            Self::HeadTimeout => "head_timeout",
            Self::BodyTimeout => "body_timeout",
            Self::SendTimeout => "send_timeout",
            Self::RequestBufferTotal => "request_buffer_total",
        }
    }
}

/// What the gauges show: read from the proxy's own counters when
/// `/metrics` is asked for, so that serving costs nothing more.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Load {
    /// Client connections open.
    pub(crate) client_connections: usize,
    /// Upstream connections open, idle ones included.
    pub(crate) upstream_connections: usize,
    /// Idle upstream connections in the shared pool.
    pub(crate) upstream_idle: usize,
    /// Requests waiting for an upstream connection.
    pub(crate) upstream_waiting: usize,
    /// Bytes of request bodies read ahead and held.
    pub(crate) request_buffer_bytes: usize,
}

/// The proxy's metrics.
///
/// The series counted on every request are looked up once, at start:
/// a label lookup hashes the label values under a lock.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    rejections: IntCounterVec,
    entries: IntGaugeVec,
    /// Pending authorizations the store evicted, as it counts them; the
    /// lock keeps two scrapes from adding the same evictions twice.
    evictions: std::sync::Mutex<IntCounter>,
    sources_at_quota: IntGauge,
    upstream_failures: IntCounterVec,
    /// By endpoint, then outcome (as in `OUTCOMES`).
    requests: [[IntCounter; 5]; 4],
    /// By endpoint.
    upstream_latency: [Histogram; 4],
    /// By limit (as in `Limit::ALL`).
    limits_reached: [IntCounter; 7],
    client_connections: IntGauge,
    upstream_connections: IntGauge,
    upstream_idle: IntGauge,
    upstream_waiting: IntGauge,
    request_buffer_bytes: IntGauge,
    proxy_protocol_refused: IntCounter,
    /// Reloads of the listener's certificate: taken, then failed.
    tls_reloads: [IntCounter; 2],
}

impl Metrics {
    /// Registers every metric.
    ///
    /// # Errors
    ///
    /// When a metric cannot be registered (a programming error: names are
    /// fixed).
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "pkce_proxy_requests_total",
                "Requests answered, by route and outcome.",
            ),
            &["route", "outcome"],
        )?;
        let rejections = IntCounterVec::new(
            Opts::new(
                "pkce_proxy_rejections_total",
                "Requests the proxy refused itself, by reason.",
            ),
            &["reason"],
        )?;
        let entries = IntGaugeVec::new(
            Opts::new(
                "pkce_proxy_store_entries",
                "Live records in the store: pending authorizations and code bindings.",
            ),
            &["family"],
        )?;
        let evictions = IntCounter::new(
            "pkce_proxy_store_evictions_total",
            "Pending authorizations evicted from the full store to make room for new sign-ins (Redis: by this replica).",
        )?;
        let sources_at_quota = IntGauge::new(
            "pkce_proxy_sources_at_quota",
            "Client addresses (IPv6: /64s) holding their whole --max-pending-per-source quota now, whose new authorizations get 429 (Redis: those this replica refused in the last minute).",
        )?;
        let upstream_latency = HistogramVec::new(
            HistogramOpts::new(
                "pkce_proxy_upstream_duration_seconds",
                "Time until the upstream's response headers, by route.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["route"],
        )?;
        let upstream_failures = IntCounterVec::new(
            Opts::new(
                "pkce_proxy_upstream_failures_total",
                "Upstream requests that failed, by kind (unreachable, timeout).",
            ),
            &["kind"],
        )?;
        let limits_reached = IntCounterVec::new(
            Opts::new(
                "pkce_proxy_limit_reached_total",
                "Times a limit acted: a connection refused or closed, or a request answered 503.",
            ),
            &["limit"],
        )?;
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let gauge = IntGauge::new(name, help)?;
            registry.register(Box::new(gauge.clone()))?;
            Ok(gauge)
        };
        let client_connections =
            gauge("pkce_proxy_client_connections", "Client connections open.")?;
        let upstream_connections = gauge(
            "pkce_proxy_upstream_connections",
            "Upstream connections open, idle ones included.",
        )?;
        let upstream_idle = gauge(
            "pkce_proxy_upstream_idle_connections",
            "Idle upstream connections in the shared pool.",
        )?;
        let upstream_waiting = gauge(
            "pkce_proxy_upstream_waiting_requests",
            "Requests waiting for an upstream connection.",
        )?;
        let request_buffer_bytes = gauge(
            "pkce_proxy_request_buffer_bytes",
            "Bytes of request bodies read ahead and held in memory.",
        )?;
        let proxy_protocol_refused = IntCounter::new(
            "pkce_proxy_proxy_protocol_refused_total",
            "Connections from trusted proxies closed for a missing or malformed PROXY protocol header.",
        )?;
        registry.register(Box::new(proxy_protocol_refused.clone()))?;
        let tls_reloads = IntCounterVec::new(
            Opts::new(
                "pkce_proxy_tls_reloads_total",
                "Changes to the listener's certificate files: taken (ok), or refused and the previous certificate kept (failed).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(tls_reloads.clone()))?;
        registry.register(Box::new(limits_reached.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(rejections.clone()))?;
        registry.register(Box::new(entries.clone()))?;
        registry.register(Box::new(evictions.clone()))?;
        registry.register(Box::new(sources_at_quota.clone()))?;
        registry.register(Box::new(upstream_latency.clone()))?;
        registry.register(Box::new(upstream_failures.clone()))?;
        let latency = |e: Endpoint| upstream_latency.with_label_values(&[e.as_str()]);
        let counters = |e: Endpoint| OUTCOMES.map(|o| requests.with_label_values(&[e.as_str(), o]));
        Ok(Self {
            registry,
            rejections,
            entries,
            evictions: std::sync::Mutex::new(evictions),
            sources_at_quota,
            upstream_failures,
            requests: ENDPOINTS.map(counters),
            upstream_latency: ENDPOINTS.map(latency),
            limits_reached: Limit::ALL.map(|l| limits_reached.with_label_values(&[l.as_str()])),
            client_connections,
            upstream_connections,
            upstream_idle,
            upstream_waiting,
            request_buffer_bytes,
            proxy_protocol_refused,
            tls_reloads: ["ok", "failed"].map(|r| tls_reloads.with_label_values(&[r])),
        })
    }

    /// Counts a change to the listener's certificate files, taken or not.
    pub(crate) fn tls_reload(&self, ok: bool) {
        self.tls_reloads[usize::from(!ok)].inc();
    }

    /// Counts a connection closed for its PROXY protocol header.
    pub(crate) fn proxy_protocol_refused(&self) {
        self.proxy_protocol_refused.inc();
    }

    /// Counts an answered request.
    pub fn request(
        &self,
        endpoint: Endpoint,
        status: http::StatusCode,
        rejection: Option<Rejection>,
    ) {
        let outcome = match rejection {
            Some(_) => 0,
            None if status.is_server_error() => 1,
            None if status.is_client_error() => 2,
            None if status.is_redirection() => 3,
            None => 4,
        };
        if let Some(counter) = self.requests[endpoint_index(endpoint)].get(outcome) {
            counter.inc();
        }
        if let Some(rejection) = rejection {
            self.rejections
                .with_label_values(&[rejection.as_str()])
                .inc();
        }
    }

    pub(crate) fn observe_upstream(&self, endpoint: Endpoint, elapsed: Duration) {
        self.upstream_latency[endpoint_index(endpoint)].observe(elapsed.as_secs_f64());
    }

    pub(crate) fn upstream_failure(&self, kind: &str) {
        self.upstream_failures.with_label_values(&[kind]).inc();
    }

    /// Counts a limit that acted.
    pub(crate) fn limit_reached(&self, limit: Limit) {
        if let Some(counter) = self.limits_reached.get(limit as usize) {
            counter.inc();
        }
    }

    /// Sets the connection gauges.
    pub(crate) fn set_load(&self, load: Load) {
        let clamp = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.client_connections.set(clamp(load.client_connections));
        self.upstream_connections
            .set(clamp(load.upstream_connections));
        self.upstream_idle.set(clamp(load.upstream_idle));
        self.upstream_waiting.set(clamp(load.upstream_waiting));
        self.request_buffer_bytes
            .set(clamp(load.request_buffer_bytes));
    }

    /// Sets the store gauges.
    pub fn set_entries(&self, pending: u64, bindings: u64) {
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.entries
            .with_label_values(&["pending"])
            .set(clamp(pending));
        self.entries
            .with_label_values(&["bindings"])
            .set(clamp(bindings));
    }

    /// Sets what the store did under pressure: its count of evictions
    /// since it was made, and the sources at their quota now.
    pub fn set_pressure(&self, evicted: u64, sources_at_quota: u64) {
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let evictions = self
            .evictions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        evictions.inc_by(evicted.saturating_sub(evictions.get()));
        self.sources_at_quota.set(clamp(sources_at_quota));
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "metrics could not be encoded");
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters() {
        let m = Metrics::new().unwrap();
        m.request(
            Endpoint::Token,
            http::StatusCode::BAD_REQUEST,
            Some(Rejection::VerifierMismatch),
        );
        m.request(Endpoint::Other, http::StatusCode::OK, None);
        m.set_entries(3, 4);
        m.set_pressure(5, 2);
        m.set_pressure(7, 1);
        m.request(
            Endpoint::Authorize,
            http::StatusCode::TOO_MANY_REQUESTS,
            Some(Rejection::SourceQuota),
        );
        m.observe_upstream(Endpoint::Token, Duration::from_millis(3));
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains("pkce_proxy_requests_total{outcome=\"rejected\",route=\"token\"} 1"),
            "{text}"
        );
        assert!(text.contains("pkce_proxy_rejections_total{reason=\"verifier_mismatch\"} 1"));
        assert!(text.contains("pkce_proxy_store_entries{family=\"bindings\"} 4"));
        assert!(
            text.contains("pkce_proxy_store_evictions_total 7"),
            "{text}"
        );
        assert!(text.contains("pkce_proxy_sources_at_quota 1"), "{text}");
        assert!(text.contains("pkce_proxy_rejections_total{reason=\"source_quota\"} 1"));
        assert!(text.contains("pkce_proxy_upstream_duration_seconds_count{route=\"token\"} 1"));
    }

    #[test]
    fn every_limit_is_shown_from_the_start() {
        let m = Metrics::new().unwrap();
        m.limit_reached(Limit::BodyTimeout);
        m.tls_reload(false);
        m.set_load(Load {
            client_connections: 7,
            upstream_connections: 3,
            upstream_idle: 1,
            upstream_waiting: 2,
            request_buffer_bytes: 5,
        });
        let text = String::from_utf8(m.render()).unwrap();
        for limit in Limit::ALL {
            let count = u8::from(limit == Limit::BodyTimeout);
            let line = format!(
                "pkce_proxy_limit_reached_total{{limit=\"{}\"}} {count}",
                limit.as_str()
            );
            assert!(text.contains(&line), "{line} in {text}");
        }
        for line in [
            "pkce_proxy_tls_reloads_total{result=\"ok\"} 0",
            "pkce_proxy_tls_reloads_total{result=\"failed\"} 1",
            "pkce_proxy_client_connections 7",
            "pkce_proxy_upstream_connections 3",
            "pkce_proxy_upstream_idle_connections 1",
            "pkce_proxy_upstream_waiting_requests 2",
            "pkce_proxy_request_buffer_bytes 5",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
