//! Forwarding to the upstream: the proxy headers, the upstream connections,
//! and 502/504 answers when the upstream fails.
//!
//! The upstream is reached over HTTP/1.1 connections of the proxy's own
//! (see `upstream`), plain or TLS, driven by the request that uses them,
//! that stay with the client connection that opened them: a request takes
//! an idle one of its own connection's, and gives it back when the response
//! body has been read, so the hot path takes no shared lock and spawns no
//! task. When a client connection closes, its idle upstream connections go
//! to a shared pool that new client connections draw from. An HTTPS
//! upstream gets the same engine, framing, limits and retries: only the
//! bytes are encrypted (rustls, TLS 1.2 and 1.3, ALPN `http/1.1`).
//!
//! Upstream connections are bounded: in all (idle ones
//! included: each holds a `Slot` while it is open), and per client
//! connection (each request holds a share of its client connection's, in
//! its `Home`, until its upstream connection is back). Taking and giving
//! back are atomics. A request that finds a bound reached waits for a
//! connection within the connect timeout, and takes an idle one that
//! another client connection keeps if it must; past the wait it gets 503,
//! never having been sent.
//!
//! An upstream connection is reused after a request only when
//! `reusable_after` says so: a body that a loose upstream leaves unread
//! is read as the next request, so a request with a body retires its
//! connection (`Connection: close`), except a checked token body of
//! visible ASCII, which cannot end a line. A request that a reused
//! connection lost goes again at most once, on a new connection, and only
//! when that is safe (see `upstream`).
//!
//! A request may carry a [`ForwardProgress`] (the layer adds one to a token
//! request whose code it redeemed): it is marked not sent when the request
//! is taken, sent right before it goes on a connection, and unanswered when the proxy answers 502 or 504 itself after
//! that, so that the layer restores the code only when the upstream cannot
//! have redeemed it (I6). A request that waits for a connection is not
//! sent until it has one.
//!
//! The parts: `rewrite` (the request as the upstream gets it), `pool` (the
//! upstream connections), `wait` (a request at a bound), `service` (the
//! `Service` and its future, retries included) and `errors` (the proxy's
//! own answers).

mod errors;
mod pool;
mod rewrite;
mod service;
mod wait;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use http_body_util::{Either, Full};
use tower_pkce::ForwardProgress;

use crate::config::{Config, Upstream};
use crate::gate::Gate;
pub use crate::h1::client::{UpstreamBody, UpstreamBodyError};
pub use crate::h1::server::{ClientBody, ClientBodyError};
use crate::metrics::Metrics;
use crate::trusted_proxies::TrustedProxies;

pub(crate) use errors::client_body_refusal;
use pool::{ClientConnection, Pool, sweep_idle};
pub(crate) use rewrite::{
    connection_names_checked_field, remove_hop_by_hop, underscore_aliases_a_field,
};
pub use service::ResponseFuture;

/// The body of a forwarded response: the upstream's, streamed, or the
/// proxy's own error.
pub type ProxyBody = Either<UpstreamBody, Full<Bytes>>;

/// How a client connection reached the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientScheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

/// Sends requests to the upstream.
///
/// The server makes one per client connection with
/// [`for_connection`](Self::for_connection); its clones share that
/// connection's upstream connections.
#[derive(Clone)]
pub struct Forwarder {
    shared: Arc<Shared>,
    conn: Arc<ClientConnection>,
}

struct Shared {
    pool: Pool,
    upstream: Upstream,
    /// The upstream's authority, the `Host` of a request that has none.
    upstream_host: Option<HeaderValue>,
    response_timeout: Duration,
    trusted_proxies: TrustedProxies,
    metrics: Arc<Metrics>,
    /// Every upstream connection open holds one of these.
    open: Arc<Gate>,
    /// How many upstream connections one client connection's requests use
    /// at once, at most.
    per_client: usize,
    /// How long a request waits for an upstream connection when a bound is
    /// reached (the connect timeout).
    wait: Duration,
    /// Requests waiting for an upstream connection.
    waiting: AtomicUsize,
}

/// Marks `progress`, when the request carries one.
fn mark(progress: Option<&ForwardProgress>, step: fn(&ForwardProgress)) {
    if let Some(progress) = progress {
        step(progress);
    }
}

impl Forwarder {
    /// A forwarder for `config`, not bound to a client connection.
    ///
    /// # Errors
    ///
    /// When the TLS client cannot be set up (its files went bad since the
    /// settings were checked).
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Self, String> {
        let upstream = config.upstream.clone();
        let limits = &config.limits;
        let open = Arc::new(Gate::new(limits.max_upstream_connections));
        let shared = Arc::new(Shared {
            pool: Pool::new(&upstream, config)?,
            upstream_host: HeaderValue::from_str(upstream.authority.as_str()).ok(),
            upstream,
            response_timeout: config.response_timeout,
            trusted_proxies: config.trusted_proxies.clone(),
            metrics,
            open,
            per_client: limits.max_upstream_connections_per_client,
            wait: config.connect_timeout,
            waiting: AtomicUsize::new(0),
        });
        sweep_idle(&shared);
        Ok(Self {
            conn: ClientConnection::new(&shared, None, false, ClientScheme::Http),
            shared,
        })
    }

    /// A forwarder for one client connection from `peer` over `scheme`:
    /// it sets `X-Forwarded-For` to the peer's address (after the list the
    /// peer sent, when it is a trusted proxy and `may_vouch`) and
    /// `X-Forwarded-Proto` to `scheme` (unless such a proxy sent one), and
    /// keeps the upstream connections it opens for that client
    /// connection's next requests.
    pub fn for_connection(&self, peer: SocketAddr, may_vouch: bool, scheme: ClientScheme) -> Self {
        let ip = peer.ip().to_canonical();
        Self {
            shared: self.shared.clone(),
            conn: ClientConnection::new(
                &self.shared,
                HeaderValue::try_from(ip.to_string()).ok(),
                may_vouch && self.shared.trusted_proxies.contains(ip),
                scheme,
            ),
        }
    }

    /// The upstream connections open, the idle ones in the shared pool,
    /// and the requests waiting for one.
    pub(crate) fn load(&self) -> (usize, usize, usize) {
        let shared = &self.shared;
        let waiting = shared.waiting.load(Ordering::SeqCst);
        (shared.open.taken(), shared.pool.idle_count(), waiting)
    }
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("upstream", &self.shared.upstream)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
