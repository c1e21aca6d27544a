//! The admin endpoints: `/healthz`, `/readyz` (the store and the upstream
//! reachable) and `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tower_pkce::store::Store;

use crate::config::Upstream;
use crate::forward::Forwarder;
use crate::h1;
use crate::metrics::{Load, Metrics};
use crate::store::ProxyStore;

use super::text;

/// The admin endpoints' state.
pub(super) struct Admin {
    pub(super) upstream: Upstream,
    pub(super) store: ProxyStore,
    pub(super) metrics: Arc<Metrics>,
    /// The client connections, counted.
    pub(super) connections: Arc<h1::server::Shutdown>,
    /// The upstream connections, counted.
    pub(super) forwarder: Forwarder,
    /// The request bodies read ahead, counted.
    pub(super) buffered: Arc<h1::server::Budget>,
}

impl Admin {
    pub(super) async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        const PLAIN: &str = "text/plain; charset=utf-8";
        match req.uri().path() {
            "/healthz" => text(StatusCode::OK, PLAIN, "ok\n"),
            "/readyz" => match self.readiness().await {
                Ok(()) => text(StatusCode::OK, PLAIN, "ready\n"),
                Err(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    PLAIN,
                    format!("not ready: {why}\n"),
                ),
            },
            "/metrics" => {
                if let Ok(stats) = self.store.stats().await {
                    self.metrics.set_entries(stats.pending, stats.bindings);
                }
                let pressure = self.store.pressure();
                self.metrics
                    .set_pressure(pressure.evicted, pressure.sources_at_quota);
                let (upstream_connections, upstream_idle, upstream_waiting) = self.forwarder.load();
                self.metrics.set_load(Load {
                    client_connections: self.connections.open_connections(),
                    upstream_connections,
                    upstream_idle,
                    upstream_waiting,
                    request_buffer_bytes: self.buffered.used(),
                });
                text(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.metrics.render(),
                )
            }
            _ => text(
                StatusCode::NOT_FOUND,
                PLAIN,
                "not found: try /healthz, /readyz or /metrics\n",
            ),
        }
    }

    async fn readiness(&self) -> Result<(), String> {
        self.store
            .stats()
            .await
            .map_err(|e| format!("store: {e}"))?;
        let (host, port) = self.upstream.host_port();
        match tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("upstream unreachable: {e}")),
            Err(_) => Err("upstream did not accept a connection within 2 s".to_owned()),
        }
    }
}
