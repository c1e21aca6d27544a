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

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tower_pkce::{Endpoint, ForwardProgress, Rejection, RequestBody};
use tower_service::Service;

use crate::config::{Config, Upstream};
use crate::gate::{self, Gate, Slot};
use crate::h1::client::{
    Connection, Exchange, HeaderOverrides, Home, Http1Error, Keep, Prepared, Retry, Reuse, Stream,
};
pub use crate::h1::client::{UpstreamBody, UpstreamBodyError};
pub use crate::h1::server::{ClientBody, ClientBodyError};
use crate::metrics::{Limit, Metrics};
use crate::trusted_proxies::TrustedProxies;

/// The body of a forwarded response: the upstream's, streamed, or the
/// proxy's own error.
pub type ProxyBody = Either<UpstreamBody, Full<Bytes>>;

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded. `Trailer` is
/// end to end: it announces the trailers that follow. A `static`, so that
/// it is built once and not at every use.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Whether `name` is in [`HOP_BY_HOP`] or is `Transfer-Encoding`: a match
/// on the (lower-case) name, cheaper than comparing with each in turn.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "upgrade"
            | "transfer-encoding"
    )
}

/// The fields the PKCE checks or the message's framing depend on: a
/// `Connection` header that names one is refused (see
/// [`connection_names_checked_field`]).
const CHECKED_FIELDS: [&[u8]; 6] = [
    b"authorization",
    b"host",
    b"content-type",
    b"content-length",
    b"transfer-encoding",
    b"cookie",
];

/// The names a `Connection` field lists (RFC 9110 §7.6.1), trimmed: over
/// every `Connection` field, since the list may be split across several.
fn connection_names(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|name| !name.is_empty())
}

/// Whether a `Connection` field names a field that the checks or the
/// framing depend on (in any letter case). Removing such a field, as hop
/// by hop, would forward a request other than the one checked (I5), and
/// no honest client asks for it: the request is refused instead.
pub(crate) fn connection_names_checked_field(headers: &HeaderMap) -> bool {
    connection_names(headers).any(|name| {
        CHECKED_FIELDS
            .iter()
            .any(|checked| name.eq_ignore_ascii_case(checked))
    })
}

/// Fields a server that reads `_` as `-` in names (CGI's `HTTP_*`
/// variables, PHP, some Rack servers) would take a `Content_Length` or an
/// `X_Forwarded_For` for: the framing, the hop-by-hop fields, what the
/// checks read and what the proxy sets.
const UNDERSCORE_ALIASED: [&[u8]; 18] = [
    b"content-length",
    b"transfer-encoding",
    b"host",
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"upgrade",
    b"expect",
    b"authorization",
    b"proxy-authorization",
    b"cookie",
    b"content-type",
    b"content-encoding",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
];

/// Whether a field's name, with `_` read as `-`, is one of
/// [`UNDERSCORE_ALIASED`]: the request is refused, as nginx drops such
/// names by default, since the upstream may read it as that field while the
/// proxy read it as another.
pub(crate) fn underscore_aliases_a_field(headers: &HeaderMap) -> bool {
    headers.keys().any(|name| {
        let name = name.as_str().as_bytes();
        name.contains(&b'_')
            && UNDERSCORE_ALIASED.iter().any(|aliased| {
                aliased.len() == name.len()
                    && aliased
                        .iter()
                        .zip(name)
                        .all(|(&a, &n)| a == n || (a == b'-' && n == b'_'))
            })
    })
}

/// Removes hop-by-hop headers, including those named in `Connection`, and
/// keeps `TE: trailers`.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names, then nothing to do.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    // Only the names of fields present are copied out: the usual
    // `Connection: keep-alive` or `close` costs no allocation.
    let named: Vec<HeaderName> = connection_names(headers)
        .filter(|name| std::str::from_utf8(name).is_ok_and(|name| headers.contains_key(name)))
        .filter_map(|name| HeaderName::from_bytes(name).ok())
        .collect();
    // `TE: trailers` says the client takes trailers; it is passed on so that
    // the upstream sends them.
    let trailers_ok = headers
        .get(header::TE)
        .is_some_and(|te| te.as_bytes().trim_ascii().eq_ignore_ascii_case(b"trailers"));
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    if trailers_ok {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    // A transfer coding overrides any length (RFC 9112 §6.3); the message
    // is framed again on the other side, by its size or as chunked.
    if headers.remove(header::TRANSFER_ENCODING).is_some() {
        headers.remove(header::CONTENT_LENGTH);
    }
}

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

/// The idle connections of one client connection, boxed: a connection
/// moves between the pool, a request and its response as one pointer.
type IdleList = Mutex<Vec<Box<Connection>>>;

/// Connections to the upstream, idle, that no client connection holds, and
/// a way to reach those that client connections hold.
struct Pool {
    host: String,
    port: u16,
    /// For an HTTPS upstream: the TLS client and the name its certificate
    /// must carry.
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
    idle: Mutex<Vec<(Box<Connection>, Instant)>>,
    max_idle: usize,
    idle_timeout: Duration,
    /// Each client connection's idle list, by its number: when every
    /// upstream connection allowed is open, a request takes an idle one
    /// that another client connection keeps (see [`Pool::steal`]).
    held: Mutex<HashMap<u64, Arc<IdleList>>>,
    next_id: AtomicU64,
}

/// What one client connection keeps: its peer's address, ready to be an
/// `X-Forwarded-For` value, its idle upstream connections, and its
/// requests' shares of upstream connections.
struct ClientConnection {
    client_ip: Option<HeaderValue>,
    /// How the client reached the proxy: `X-Forwarded-Proto`, unless a
    /// trusted proxy sent one.
    proto: HeaderValue,
    /// Whether the peer is a trusted proxy, whose `X-Forwarded-*` fields
    /// are kept.
    trusted: bool,
    idle: Arc<IdleList>,
    shared: Option<Arc<Shared>>,
    /// A response timer that outlives its request, lent to the next one.
    timer: Mutex<Option<Pin<Box<Sleep>>>>,
    /// One taken by each request from when it is routed until its
    /// upstream connection is back (see [`Home`]).
    shares: Gate,
    /// Its number in the pool's `held`.
    id: u64,
}

impl ClientConnection {
    /// A client connection's state, with its idle list reachable from the
    /// pool.
    fn new(
        shared: &Arc<Shared>,
        client_ip: Option<HeaderValue>,
        trusted: bool,
        scheme: ClientScheme,
    ) -> Arc<Self> {
        let idle = Arc::new(Mutex::new(Vec::new()));
        let id = shared.pool.hold(&idle);
        Arc::new(Self {
            client_ip,
            proto: HeaderValue::from_static(match scheme {
                ClientScheme::Http => "http",
                ClientScheme::Https => "https",
            }),
            trusted,
            idle,
            shared: Some(shared.clone()),
            timer: Mutex::new(None),
            shares: Gate::new(shared.per_client),
            id,
        })
    }

    /// A share of this connection's upstream connections, unless its
    /// requests use them all.
    fn try_share(self: &Arc<Self>) -> Option<Home> {
        self.shares.try_take().then(|| Home::new(self.clone()))
    }

    /// The pool, with the count of upstream connections.
    fn pool(&self) -> Option<(&Pool, &Gate)> {
        let shared = self.shared.as_deref()?;
        Some((&shared.pool, &shared.open))
    }

    fn checkout(&self) -> Option<Box<Connection>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(mut conn) = idle.pop() {
            if conn.is_usable() {
                return Some(conn);
            }
        }
        None
    }

    /// A timer that fires at `deadline`: the connection's own when no other
    /// request holds it, else a new one. Moving a registered timer's
    /// deadline later costs an atomic store, where a new timer is an
    /// insertion into the runtime's wheel and a removal after.
    fn response_timer(&self, deadline: tokio::time::Instant) -> Pin<Box<Sleep>> {
        let lent = self
            .timer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match lent {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    /// Keeps `timer` for the next request, unless another one came back
    /// first. A request that is dropped half-way drops its timer instead.
    fn give_back(&self, timer: Pin<Box<Sleep>>) {
        let mut slot = self.timer.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(timer);
        }
    }
}

impl Keep for ClientConnection {
    fn keep(&self, conn: Box<Connection>) {
        // While requests wait for an upstream connection, an idle one goes
        // where any of them can take it.
        if let Some((pool, open)) = self.pool()
            && open.waiting() > 0
        {
            pool.put(conn, open);
            return;
        }
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
    }

    fn release(&self) {
        self.shares.give_back();
    }
}

impl Drop for ClientConnection {
    fn drop(&mut self) {
        let Some((pool, open)) = self.pool() else {
            return;
        };
        pool.let_go(self.id);
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(PoisonError::into_inner));
        for conn in idle {
            pool.put(conn, open);
        }
    }
}

/// Where a request's upstream connection comes from, once it has waited.
enum Source {
    /// An idle connection.
    Idle(Box<Connection>),
    /// A place for a new one.
    New(Slot),
}

impl Pool {
    fn new(upstream: &Upstream, config: &Config) -> Result<Self, String> {
        let (host, port) = upstream.host_port();
        let tls = match &config.upstream_tls {
            Some(tls) => {
                let name = tls.server_name.as_deref().unwrap_or(host.as_str());
                let name = ServerName::try_from(name.to_owned())
                    .map_err(|_| format!("{name:?} is not a name a certificate can carry"))?;
                Some((tokio_rustls::TlsConnector::from(tls.client_config()?), name))
            }
            None => None,
        };
        Ok(Self {
            host,
            port,
            tls,
            connect_timeout: config.connect_timeout,
            idle: Mutex::new(Vec::new()),
            max_idle: config.limits.max_idle_upstream_connections,
            idle_timeout: config.limits.upstream_idle_timeout,
            held: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        })
    }

    fn checkout(&self) -> Option<Box<Connection>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some((mut conn, since)) = idle.pop() {
            if since.elapsed() < self.idle_timeout && conn.is_usable() {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps `conn` idle in the shared pool, unless the pool is full or
    /// the connection unusable (then it closes); either way one waiting
    /// request is told.
    fn put(&self, mut conn: Box<Connection>, open: &Gate) {
        if conn.is_usable() {
            let now = Instant::now();
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < self.max_idle {
                idle.push((conn, now));
            }
        }
        open.wake();
    }

    /// The idle connections in the shared pool.
    fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Closes the idle connections that have waited past the idle timeout
    /// or that the upstream closed.
    fn sweep(&self) {
        let timeout = self.idle_timeout;
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain_mut(|(conn, since)| since.elapsed() < timeout && conn.is_usable());
    }

    /// Registers a client connection's idle list; its number.
    fn hold(&self, idle: &Arc<IdleList>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, idle.clone());
        id
    }

    fn let_go(&self, id: u64) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }

    /// An idle connection that some client connection keeps for its next
    /// request: taken when every upstream connection allowed is open, so
    /// that connections idle with clients that are silent cannot keep the
    /// others waiting. Only a request that waits pays for the search.
    fn steal(&self) -> Option<Box<Connection>> {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        for idle in held.values() {
            let mut idle = idle.lock().unwrap_or_else(PoisonError::into_inner);
            while let Some(mut conn) = idle.pop() {
                if conn.is_usable() {
                    return Some(conn);
                }
            }
        }
        None
    }

    /// A new connection to the upstream, holding `slot`, in a future of
    /// its own: a request waits for it in its state, and most requests
    /// never do.
    fn connect(
        &self,
        slot: Slot,
    ) -> Pin<Box<dyn Future<Output = Result<Box<Connection>, UpstreamError>> + Send>> {
        let (host, port, timeout) = (self.host.clone(), self.port, self.connect_timeout);
        let tls = self.tls.clone();
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            let stream =
                tokio::time::timeout_at(deadline, TcpStream::connect((host.as_str(), port)))
                    .await
                    .map_err(|_| UpstreamError::ConnectTimeout)?
                    .map_err(UpstreamError::Connect)?;
            let _ = stream.set_nodelay(true);
            let Some((connector, name)) = tls else {
                return Ok(Connection::new(Stream::Plain(stream), slot));
            };
            let tls = tokio::time::timeout_at(deadline, connector.connect(name, stream))
                .await
                .map_err(|_| UpstreamError::ConnectTimeout)?
                .map_err(UpstreamError::Handshake)?;
            Ok(Connection::new(Stream::Tls(Box::new(tls)), slot))
        })
    }

    /// A request that has its share of `client`'s upstream connections on
    /// an idle connection of `client`'s or of the pool's, else on a new
    /// one, else, at the upstream bound, waiting for one. `prepare` writes
    /// the request into the buffer it is given: the idle connection's,
    /// which keeps its allocation from request to request, or a new one.
    fn route(
        &self,
        shared: &Arc<Shared>,
        client: &Arc<ClientConnection>,
        progress: Option<&ForwardProgress>,
        prepare: impl FnOnce(Vec<u8>) -> Prepared,
    ) -> Step {
        if let Some(mut upstream) = client.checkout().or_else(|| self.checkout()) {
            let request = prepare(upstream.take_buffer());
            mark(progress, ForwardProgress::sent);
            return Step::Exchanging {
                exchange: request.send_on(upstream),
                reused: true,
            };
        }
        let request = prepare(Vec::with_capacity(1024));
        match Slot::take(&shared.open) {
            Some(slot) => Step::Connecting(Box::new(Connecting {
                connect: self.connect(slot),
                request,
            })),
            None => Step::Waiting(wait_for_connection(
                shared.clone(),
                client.clone(),
                Pending::Shared(request),
            )),
        }
    }
}

/// A request not yet written: it is, once it has a share of its client
/// connection's upstream connections.
struct Outbound {
    req: Request<RequestBody<ClientBody>>,
    overrides: HeaderOverrides,
    reuse: Reuse,
}

impl Outbound {
    fn prepare(self, buf: Vec<u8>, home: Home) -> Prepared {
        Prepared::new(buf, self.req, &self.overrides, home, self.reuse)
    }
}

/// What a request that waits for an upstream connection has.
enum Pending {
    /// Not yet a share of its client connection's.
    Unshared(Box<Outbound>),
    /// A share, but no connection.
    Shared(Prepared),
    /// A share, and it must go on a new connection: it is sent again after
    /// a reused one failed.
    Again(Prepared),
}

type Waiting = Pin<Box<dyn Future<Output = Result<(Prepared, Source), UpstreamError>> + Send>>;

/// Waits, within the connect timeout, for what `pending` lacks: a share of
/// `client`'s upstream connections, then an idle connection or room for a
/// new one (an idle one that another client connection keeps, when every
/// one allowed is open). Cold, and kept out of line: only a request that
/// meets a bound comes here.
#[cold]
#[inline(never)]
fn wait_for_connection(
    shared: Arc<Shared>,
    client: Arc<ClientConnection>,
    pending: Pending,
) -> Waiting {
    Box::pin(async move {
        let _waiting = gate::Waiter::count(&shared.waiting);
        let deadline = tokio::time::Instant::now() + shared.wait;
        let open = &shared.open;
        let request = match pending {
            Pending::Shared(request) => request,
            Pending::Unshared(outbound) => {
                let home = client
                    .shares
                    .wait_for(deadline, || client.try_share())
                    .await
                    .ok_or(UpstreamError::Limit(Limit::UpstreamConnectionsPerClient))?;
                outbound.prepare(Vec::with_capacity(1024), home)
            }
            Pending::Again(request) => {
                let slot = open
                    .wait_for(deadline, || Slot::take(open))
                    .await
                    .ok_or(UpstreamError::Limit(Limit::UpstreamConnections))?;
                return Ok((request, Source::New(slot)));
            }
        };
        let pool = &shared.pool;
        let source = open
            .wait_for(deadline, || {
                client
                    .checkout()
                    .or_else(|| pool.checkout())
                    .map(Source::Idle)
                    .or_else(|| Slot::take(open).map(Source::New))
                    .or_else(|| pool.steal().map(Source::Idle))
            })
            .await
            .ok_or(UpstreamError::Limit(Limit::UpstreamConnections))?;
        Ok((request, source))
    })
}

/// Why a request did not get the upstream's response.
#[derive(Debug)]
enum UpstreamError {
    Connect(std::io::Error),
    ConnectTimeout,
    /// The TLS handshake failed: the upstream's certificate was refused,
    /// or it refused the proxy's.
    Handshake(std::io::Error),
    Exchange(Http1Error),
    /// No upstream connection came free within the wait.
    Limit(Limit),
}

impl UpstreamError {
    /// Whether the request certainly did not reach the upstream: no
    /// connection came free. (A request is marked sent only once it has a
    /// connection, TLS handshake done.)
    fn nothing_sent(&self) -> bool {
        matches!(self, Self::Limit(_))
    }

    /// The bound that kept the request from an upstream connection, if one
    /// did.
    fn limit(&self) -> Option<Limit> {
        match self {
            Self::Limit(limit) => Some(*limit),
            _ => None,
        }
    }

    /// Whether the client's request body failed (a framing error, or the
    /// client went away) while the request was sent: the client's fault.
    fn client_body_failed(&self) -> bool {
        matches!(self, Self::Exchange(Http1Error::RequestBody(_)))
    }

    /// Whether the upstream answered with something that is not HTTP/1.1
    /// the proxy takes (malformed, or past a limit).
    fn invalid_response(&self) -> bool {
        matches!(self, Self::Exchange(Http1Error::Malformed(_)))
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "cannot connect: {e}"),
            Self::ConnectTimeout => f.write_str("connect timed out"),
            Self::Handshake(e) => write!(f, "TLS handshake failed: {e}"),
            Self::Exchange(e) => write!(f, "{e}"),
            Self::Limit(_) => f.write_str("no upstream connection came free in time"),
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect(e) | Self::Handshake(e) => Some(e),
            Self::ConnectTimeout | Self::Limit(_) => None,
            Self::Exchange(e) => std::error::Error::source(e),
        }
    }
}

/// Whether the upstream connection that `body`'s request goes on may serve
/// another request after it (I1), for both transports; when not, the
/// upstream is told `Connection: close` and the connection is closed after
/// the response.
///
/// A legacy upstream may answer without reading a body (on a path that
/// takes none, or after an early error). What it left unread is then read
/// as the start of the next request on the connection, and a body is the
/// client's to write: it can hold a whole request, one the proxy never
/// checked (a `POST /token` with a stolen code). So a request with a body
/// retires its connection, except a token request whose body the PKCE
/// layer read whole and checked and whose every byte is visible ASCII
/// (0x21..=0x7E, which the layer makes of every body it checked): that one
/// keeps it only after a 2xx answer, since an upstream that redeemed or
/// refreshed read the whole request, while one that refused early may have
/// left the body to spoil the next request's first line. An answer to HEAD
/// retires its connection too: a naive server writes the GET body after it,
/// late, where the next request's answer would be read.
pub(crate) fn reusable_after<B>(endpoint: Endpoint, req: &Request<RequestBody<B>>) -> Reuse
where
    B: http_body::Body<Data = Bytes>,
{
    use http_body::Body as _;
    if req.method() == http::Method::HEAD {
        return Reuse::Never;
    }
    let body = req.body();
    if body.is_end_stream() || body.size_hint().exact() == Some(0) {
        return Reuse::Clean;
    }
    let checked = endpoint == Endpoint::Token
        && body
            .as_buffered()
            .is_some_and(|data| data.iter().all(|b| matches!(b, 0x21..=0x7e)));
    if checked {
        Reuse::Succeeded
    } else {
        Reuse::Never
    }
}

/// Closes the shared pool's idle connections past the idle timeout, a few
/// times per timeout, for as long as the forwarder lives. Without a
/// runtime (a forwarder built outside one) they are closed when a request
/// meets them instead.
fn sweep_idle(shared: &Arc<Shared>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let pool = &shared.pool;
    let every = (pool.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(10));
    let shared = Arc::downgrade(shared);
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            shared.pool.sweep();
        }
    });
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

    /// The request target as the upstream takes it: origin form (path and
    /// query), under the upstream's base path.
    fn upstream_uri(&self, uri: &Uri) -> Option<Uri> {
        let upstream = &self.shared.upstream;
        if upstream.base_path.is_empty()
            && let Some(pq) = uri.path_and_query()
        {
            return Some(Uri::from(pq.clone()));
        }
        let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let mut pq = String::with_capacity(upstream.base_path.len() + path_and_query.len());
        pq.push_str(&upstream.base_path);
        pq.push_str(path_and_query);
        Uri::try_from(pq).ok()
    }

    /// The proxy's own header fields for `req`: `Host` when it has none,
    /// and the `X-Forwarded-*` fields, which replace the client's unless
    /// the client is trusted.
    fn forwarded_headers(&self, req: &Request<RequestBody<ClientBody>>) -> HeaderOverrides {
        let headers = req.headers();
        let mut overrides = HeaderOverrides::default();
        let host = headers.get(header::HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        if !headers.contains_key(header::HOST) {
            // HTTP/2 carries the host in :authority; HTTP/1.1 upstreams need Host.
            if let Some(host) = host.as_ref().or(self.shared.upstream_host.as_ref()) {
                overrides.set(header::HOST, Some(host.clone()));
            }
        }
        let trusted = self.conn.trusted;
        let client = self.conn.client_ip.as_ref();
        let forwarded_for = match (client, trusted, headers.get(&X_FORWARDED_FOR)) {
            (Some(ip), true, Some(prior)) => {
                let mut joined = Vec::with_capacity(prior.len() + 2 + ip.len());
                joined.extend_from_slice(prior.as_bytes());
                joined.extend_from_slice(b", ");
                joined.extend_from_slice(ip.as_bytes());
                HeaderValue::from_bytes(&joined).ok()
            }
            (Some(ip), _, _) => Some(ip.clone()),
            (None, _, _) => None,
        };
        if forwarded_for.is_some() || !trusted {
            overrides.set(X_FORWARDED_FOR, forwarded_for);
        }
        if !(trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
            overrides.set(X_FORWARDED_PROTO, Some(self.conn.proto.clone()));
        }
        if !(trusted && headers.contains_key(&X_FORWARDED_HOST)) {
            overrides.set(X_FORWARDED_HOST, host);
        }
        overrides
    }
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("upstream", &self.shared.upstream)
            .finish_non_exhaustive()
    }
}

/// The proxy's own answer when the upstream fails: JSON at the token
/// endpoint (RFC 6749 §5.2 shape), plain text elsewhere.
pub(crate) fn upstream_error(status: StatusCode, endpoint: Endpoint) -> Response<ProxyBody> {
    if status == StatusCode::GATEWAY_TIMEOUT {
        proxy_error(
            status,
            endpoint,
            "the authorization server did not answer in time",
            "504 Gateway Timeout: the upstream server did not answer in time\n",
        )
    } else if status == StatusCode::SERVICE_UNAVAILABLE {
        proxy_error(
            status,
            endpoint,
            "the proxy is at its bound of connections to the authorization server",
            "503 Service Unavailable: every connection to the upstream server allowed is in use\n",
        )
    } else {
        proxy_error(
            status,
            endpoint,
            "the authorization server cannot be reached",
            "502 Bad Gateway: the upstream server cannot be reached\n",
        )
    }
}

/// The proxy's 502 when the upstream's answer is malformed or past a limit
/// (the log says which).
fn invalid_response(endpoint: Endpoint) -> Response<ProxyBody> {
    proxy_error(
        StatusCode::BAD_GATEWAY,
        endpoint,
        "the authorization server sent an invalid response",
        "502 Bad Gateway: the upstream server sent an invalid response\n",
    )
}

fn proxy_error(
    status: StatusCode,
    endpoint: Endpoint,
    description: &'static str,
    text: &'static str,
) -> Response<ProxyBody> {
    let (content_type, body) = if endpoint == Endpoint::Token {
        (
            "application/json",
            Bytes::from(
                serde_json::json!({
                    "error": "temporarily_unavailable",
                    "error_description": description,
                })
                .to_string(),
            ),
        )
    } else {
        (
            "text/plain; charset=utf-8",
            Bytes::from_static(text.as_bytes()),
        )
    };
    let mut response = Response::new(Either::Right(Full::new(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// The proxy's answer when the client's request body broke while it was
/// forwarded, before any response began: 400, counted as a refusal
/// (`body_unreadable`), never as an upstream failure.
fn client_body_error(endpoint: Endpoint) -> Response<ProxyBody> {
    client_body_refusal(endpoint).map(Either::Right)
}

/// The 400 for a client's request body that is malformed or cut short,
/// whether it broke while it was read ahead or while it was forwarded: the
/// token endpoint answers in RFC 6749 §5.2's JSON, the others in text.
pub(crate) fn client_body_refusal(endpoint: Endpoint) -> Response<Full<Bytes>> {
    const WHY: &str = "the request body is malformed or was cut short";
    let (content_type, body) = if endpoint == Endpoint::Token {
        (
            "application/json",
            Bytes::from(
                serde_json::json!({"error": "invalid_request", "error_description": WHY})
                    .to_string(),
            ),
        )
    } else {
        ("text/plain; charset=utf-8", Bytes::from(format!("{WHY}\n")))
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response.extensions_mut().insert(Rejection::BodyUnreadable);
    response
}

impl Service<Request<RequestBody<ClientBody>>> for Forwarder {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<RequestBody<ClientBody>>) -> ResponseFuture {
        // The PKCE layer classified the request and put the endpoint here:
        // errors at the token endpoint are JSON, and upstream latency is
        // recorded by endpoint.
        let endpoint = req
            .extensions()
            .get::<Endpoint>()
            .copied()
            .unwrap_or(Endpoint::Other);
        let progress = req.extensions().get::<ForwardProgress>().cloned();
        mark(progress.as_ref(), ForwardProgress::not_sent);
        let Some(uri) = self.upstream_uri(req.uri()) else {
            return ResponseFuture::ready(upstream_error(StatusCode::BAD_GATEWAY, endpoint));
        };
        let reuse = reusable_after(endpoint, &req);
        let overrides = self.forwarded_headers(&req);
        remove_hop_by_hop(req.headers_mut());
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        let started = tokio::time::Instant::now();
        let timer = self
            .conn
            .response_timer(started + self.shared.response_timeout);
        let step = match self.conn.try_share() {
            Some(home) => {
                self.shared
                    .pool
                    .route(&self.shared, &self.conn, progress.as_ref(), |buf| {
                        Prepared::new(buf, req, &overrides, home, reuse)
                    })
            }
            None => Step::Waiting(wait_for_connection(
                self.shared.clone(),
                self.conn.clone(),
                Pending::Unshared(Box::new(Outbound {
                    req,
                    overrides,
                    reuse,
                })),
            )),
        };
        ResponseFuture(State::Forwarding(Forwarding {
            step,
            timer: Some(timer),
            started,
            shared: self.shared.clone(),
            conn: self.conn.clone(),
            endpoint,
            progress,
        }))
    }
}

/// The future a [`Forwarder`] returns: the upstream's response, or the
/// proxy's own 502 or 504.
pub struct ResponseFuture(State);

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

enum State {
    /// An answer known at once.
    Ready(Option<Response<ProxyBody>>),
    Forwarding(Forwarding),
}

/// A request on its way to the upstream, and its response timer.
struct Forwarding {
    step: Step,
    timer: Option<Pin<Box<Sleep>>>,
    started: tokio::time::Instant,
    shared: Arc<Shared>,
    conn: Arc<ClientConnection>,
    endpoint: Endpoint,
    /// The layer's report of how far the request got, when it asked.
    progress: Option<ForwardProgress>,
}

enum Step {
    /// Waiting for a share of the client connection's upstream
    /// connections, or for one of them, because a bound is reached.
    Waiting(Waiting),
    /// Waiting for a new connection, with the request ready for it.
    Connecting(Box<Connecting>),
    /// On a connection of the proxy's own; `reused` when it served a
    /// request before, so that it may have been closed meanwhile.
    Exchanging { exchange: Exchange, reused: bool },
    /// The answer is out.
    Done,
}

struct Connecting {
    connect: Pin<Box<dyn Future<Output = Result<Box<Connection>, UpstreamError>> + Send>>,
    request: Prepared,
}

impl ResponseFuture {
    fn ready(response: Response<ProxyBody>) -> Self {
        Self(State::Ready(Some(response)))
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().0 {
            // Polled again after its answer: a 502 rather than a panic.
            State::Ready(response) => Poll::Ready(Ok(response
                .take()
                .unwrap_or_else(|| upstream_error(StatusCode::BAD_GATEWAY, Endpoint::Other)))),
            State::Forwarding(forwarding) => forwarding.poll(cx).map(Ok),
        }
    }
}

impl Forwarding {
    /// The upstream's answer, or `None` once the response timer fires. The
    /// exchange is polled first: an answer that is ready never registers
    /// the timer.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Response<ProxyBody>> {
        let outcome = match self.poll_upstream(cx) {
            Poll::Ready(result) => Some(result),
            Poll::Pending => {
                let fired = self
                    .timer
                    .as_mut()
                    .is_none_or(|timer| timer.as_mut().poll(cx).is_ready());
                if !fired {
                    return Poll::Pending;
                }
                None
            }
        };
        Poll::Ready(self.finish(outcome))
    }

    fn poll_upstream(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Response<UpstreamBody>, UpstreamError>> {
        loop {
            match &mut self.step {
                Step::Exchanging { exchange, .. } => {
                    let result = ready!(exchange.poll_head(cx));
                    let Step::Exchanging { exchange, reused } =
                        std::mem::replace(&mut self.step, Step::Done)
                    else {
                        return Poll::Ready(Err(UpstreamError::Exchange(Http1Error::Closed)));
                    };
                    let e = match result {
                        Ok(head) => return Poll::Ready(Ok(exchange.into_response(head))),
                        Err(e) => e,
                    };
                    // A reused connection may have been closed by the
                    // upstream just as the request went out. A request that
                    // is safe to send again goes once more, on a new
                    // connection: never from one pooled connection to the
                    // next, each of which may have received it.
                    let again = if reused {
                        exchange.into_retry(&e)
                    } else {
                        None
                    };
                    match again {
                        Some(Retry { request, unsent }) => {
                            if unsent {
                                mark(self.progress.as_ref(), ForwardProgress::not_sent);
                            }
                            self.step = match Slot::take(&self.shared.open) {
                                Some(slot) => Step::Connecting(Box::new(Connecting {
                                    connect: self.shared.pool.connect(slot),
                                    request,
                                })),
                                None => Step::Waiting(wait_for_connection(
                                    self.shared.clone(),
                                    self.conn.clone(),
                                    Pending::Again(request),
                                )),
                            };
                        }
                        None => return Poll::Ready(Err(UpstreamError::Exchange(e))),
                    }
                }
                Step::Waiting(waiting) => {
                    let (request, source) = ready!(waiting.as_mut().poll(cx))?;
                    self.step = match source {
                        Source::Idle(upstream) => {
                            mark(self.progress.as_ref(), ForwardProgress::sent);
                            Step::Exchanging {
                                exchange: request.send_on(upstream),
                                reused: true,
                            }
                        }
                        Source::New(slot) => Step::Connecting(Box::new(Connecting {
                            connect: self.shared.pool.connect(slot),
                            request,
                        })),
                    };
                }
                Step::Connecting(connecting) => {
                    let connected = ready!(connecting.connect.as_mut().poll(cx));
                    let Step::Connecting(connecting) =
                        std::mem::replace(&mut self.step, Step::Done)
                    else {
                        return Poll::Ready(Err(UpstreamError::Exchange(Http1Error::Closed)));
                    };
                    let connected = connected?;
                    mark(self.progress.as_ref(), ForwardProgress::sent);
                    self.step = Step::Exchanging {
                        exchange: connecting.request.send_on(connected),
                        reused: false,
                    };
                }
                Step::Done => {
                    return Poll::Ready(Err(UpstreamError::Exchange(Http1Error::Closed)));
                }
            }
        }
    }

    /// The response for `outcome` (`None`: the timer fired), with the timer
    /// given back and the upstream's latency recorded.
    fn finish(
        &mut self,
        outcome: Option<Result<Response<UpstreamBody>, UpstreamError>>,
    ) -> Response<ProxyBody> {
        if let Some(timer) = self.timer.take() {
            self.conn.give_back(timer);
        }
        let endpoint = self.endpoint;
        let metrics = &self.shared.metrics;
        metrics.observe_upstream(endpoint, self.started.elapsed());
        match outcome {
            Some(Ok(response)) => {
                let mut response = response.map(Either::Left);
                remove_hop_by_hop(response.headers_mut());
                response
            }
            Some(Err(e)) if crate::h1::server::is_body_timeout(&e) => {
                // Part of the request may have reached the upstream.
                mark(self.progress.as_ref(), ForwardProgress::unanswered);
                tracing::info!(
                    endpoint = endpoint.as_str(),
                    "the request body paused past the body timeout while it was forwarded"
                );
                let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(
                    b"the request body paused for too long\n",
                ))));
                *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                response
            }
            Some(Err(e)) if e.limit().is_some() => {
                mark(self.progress.as_ref(), ForwardProgress::not_sent);
                let limit = e.limit().unwrap_or(Limit::UpstreamConnections);
                let (setting, max) = match limit {
                    Limit::UpstreamConnectionsPerClient => (
                        "--max-upstream-connections-per-client",
                        self.shared.per_client,
                    ),
                    _ => ("--max-upstream-connections", self.shared.open.max()),
                };
                tracing::warn!(
                    endpoint = endpoint.as_str(),
                    setting,
                    max,
                    waited = ?self.shared.wait,
                    "no upstream connection came free in time: answered 503"
                );
                metrics.limit_reached(limit);
                upstream_error(StatusCode::SERVICE_UNAVAILABLE, endpoint)
            }
            Some(Err(e)) => {
                // `unanswered` leaves a request that was never sent as it is.
                if e.nothing_sent() {
                    mark(self.progress.as_ref(), ForwardProgress::not_sent);
                } else {
                    mark(self.progress.as_ref(), ForwardProgress::unanswered);
                }
                if e.client_body_failed() {
                    tracing::info!(
                        endpoint = endpoint.as_str(),
                        error = %e,
                        "request refused: the client's request body is malformed or cut short"
                    );
                    return client_body_error(endpoint);
                }
                let invalid = e.invalid_response();
                let kind = if invalid {
                    "invalid_response"
                } else {
                    "unreachable"
                };
                tracing::warn!(
                    endpoint = endpoint.as_str(),
                    kind,
                    error = %e,
                    source = ?std::error::Error::source(&e).map(ToString::to_string),
                    "upstream request failed"
                );
                metrics.upstream_failure(kind);
                if invalid {
                    invalid_response(endpoint)
                } else {
                    upstream_error(StatusCode::BAD_GATEWAY, endpoint)
                }
            }
            None => {
                mark(self.progress.as_ref(), ForwardProgress::unanswered);
                let timeout = self.shared.response_timeout;
                tracing::warn!(endpoint = endpoint.as_str(), ?timeout, "upstream timed out");
                metrics.upstream_failure("timeout");
                upstream_error(StatusCode::GATEWAY_TIMEOUT, endpoint)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn underscore_spellings_of_the_fields_that_matter_are_found() {
        for (name, aliased) in [
            ("content_length", true),
            ("x_forwarded_for", true),
            ("transfer_encoding", true),
            ("x_custom_field", false),
            ("content-length", false),
            ("contentlength", false),
            ("content_length_x", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("1"));
            assert_eq!(underscore_aliases_a_field(&h), aliased, "{name}");
        }
    }

    #[test]
    fn the_quick_check_knows_every_hop_by_hop_header() {
        for name in HOP_BY_HOP.iter().chain([&header::TRANSFER_ENCODING]) {
            assert!(is_hop_by_hop(name), "{name}");
        }
        assert!(!is_hop_by_hop(&header::TRAILER));
        assert!(!is_hop_by_hop(&header::HOST));
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-custom"),
        );
        h.insert("x-custom", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers, deflate"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("100"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn hop_by_hop_names_are_read_across_fields_and_cases() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        h.append(
            header::CONNECTION,
            HeaderValue::from_static(" X-One ,,x-two"),
        );
        h.insert("x-one", HeaderValue::from_static("1"));
        h.insert("x-two", HeaderValue::from_static("2"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::HOST, HeaderValue::from_static("h"));
        assert!(!connection_names_checked_field(&h));
        remove_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["host", "te"], "{h:?}");
        assert_eq!(h[header::TE], "trailers");
    }

    #[test]
    fn a_connection_header_naming_a_checked_field_is_found() {
        for (values, found) in [
            (&["authorization"][..], true),
            (&["keep-alive, HOST"], true),
            (&["x-a", " Content-Type "], true),
            (&["content-length"], true),
            (&["close,transfer-encoding"], true),
            (&["Cookie"], true),
            (&["keep-alive", "close, x-foo"], false),
            (&["hosts, authorization-x"], false),
            (&[""], false),
        ] {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::CONNECTION, HeaderValue::from_static(v));
            }
            assert_eq!(connection_names_checked_field(&h), found, "{values:?}");
        }
        assert!(!connection_names_checked_field(&HeaderMap::new()));
    }

    #[test]
    fn error_bodies() {
        let r = upstream_error(StatusCode::GATEWAY_TIMEOUT, Endpoint::Token);
        assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let r = upstream_error(StatusCode::BAD_GATEWAY, Endpoint::Other);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
    }

    /// The service behind the layer in these tests: it hands the request on
    /// to the forwarder with a progress report in it, as the layer does for
    /// a token request whose code it redeemed, after checking that the
    /// layer told the forwarder the endpoint the test expects.
    #[derive(Clone)]
    struct Reported {
        forwarder: Forwarder,
        progress: ForwardProgress,
        endpoint: Endpoint,
    }

    impl Service<Request<RequestBody<ClientBody>>> for Reported {
        type Response = Response<ProxyBody>;
        type Error = Infallible;
        type Future = ResponseFuture;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, mut req: Request<RequestBody<ClientBody>>) -> ResponseFuture {
            req.extensions_mut().insert(self.progress.clone());
            assert_eq!(req.extensions().get::<Endpoint>(), Some(&self.endpoint));
            self.forwarder.call(req)
        }
    }

    type Harness = tower_pkce::Pkce<Reported, tower_pkce::store::MemoryStore>;

    /// The PKCE layer in front of a forwarder to `upstream` (0.3 s response
    /// timeout), through a TLS front (see `tls_front`) when `tls`.
    fn harness(upstream: &str, tls: bool) -> Harness {
        harness_with(
            crate::config::RawSettings {
                upstream: Some(upstream.to_owned()),
                response_timeout: Some("0.3".into()),
                ..Default::default()
            },
            tls,
        )
    }

    fn harness_with(settings: crate::config::RawSettings, tls: bool) -> Harness {
        clients(settings, tls).pop().unwrap()
    }

    /// Harnesses for two client connections of one forwarder.
    fn clients(mut settings: crate::config::RawSettings, tls: bool) -> Vec<Harness> {
        use tower::Layer;
        if tls {
            let upstream = settings.upstream.take().unwrap();
            settings.upstream = Some(match upstream.strip_prefix("http://") {
                Some(plain) => tls_front(plain, &test_pki().server),
                None => upstream,
            });
            settings.upstream_ca = Some(test_pki().ca.display().to_string());
        }
        let config = Config::resolve(&settings).unwrap();
        let metrics = Arc::new(Metrics::new().unwrap());
        let base = Forwarder::new(&config, metrics).unwrap();
        (1..=2)
            .map(|port| {
                tower_pkce::PkceLayer::strict().layer(Reported {
                    forwarder: base.for_connection(
                        ([127, 0, 0, 1], port).into(),
                        true,
                        ClientScheme::Http,
                    ),
                    progress: ForwardProgress::default(),
                    endpoint: Endpoint::Other,
                })
            })
            .collect()
    }

    /// Sends `req` through `harness` as a request for `endpoint`, with a
    /// fresh progress report: the answer's status and body, and the report.
    async fn send(
        harness: &mut Harness,
        endpoint: Endpoint,
        req: Request<ClientBody>,
    ) -> (StatusCode, Bytes, tower_pkce::Progress) {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let progress = ForwardProgress::default();
        harness.get_mut().progress = progress.clone();
        harness.get_mut().endpoint = endpoint;
        let sent = harness.clone().oneshot(req);
        let response = tokio::time::timeout(Duration::from_secs(5), sent)
            .await
            .unwrap()
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, body, progress.get())
    }

    fn get(path: &str) -> Request<ClientBody> {
        Request::get(path)
            .header(header::HOST, "proxy.test")
            .body(ClientBody::empty())
            .unwrap()
    }

    fn post(path: &str, data: &'static [u8]) -> Request<ClientBody> {
        Request::post(path)
            .header(header::HOST, "proxy.test")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::CONTENT_LENGTH, data.len())
            .body(ClientBody::full(Bytes::from_static(data)))
            .unwrap()
    }

    /// Forwards `GET /page` to `upstream` with a report in it: the status
    /// answered, and the progress reported.
    async fn forward_reported(upstream: &str, tls: bool) -> (StatusCode, tower_pkce::Progress) {
        let mut harness = harness(upstream, tls);
        let (status, _, progress) = send(&mut harness, Endpoint::Other, get("/page")).await;
        (status, progress)
    }

    /// An upstream that reads a request head, then does `then` with the
    /// connection.
    async fn upstream<F, Fut>(then: F) -> String
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                tokio::spawn(then(stream));
            }
        });
        format!("http://{addr}")
    }

    /// A private authority, written to a file, and a server configuration
    /// with a certificate it issued for 127.0.0.1.
    struct TestPki {
        ca: std::path::PathBuf,
        server: Arc<rustls::ServerConfig>,
        /// A certificate for 127.0.0.1 from an authority nobody trusts.
        stranger: Arc<rustls::ServerConfig>,
    }

    fn test_pki() -> &'static TestPki {
        static PKI: std::sync::OnceLock<TestPki> = std::sync::OnceLock::new();
        PKI.get_or_init(|| {
            let (ca, server) = authority_and_server();
            let (_, stranger) = authority_and_server();
            let path = std::env::temp_dir().join(format!(
                "pkce-proxy-forward-test-ca-{}.pem",
                std::process::id()
            ));
            std::fs::write(&path, ca).unwrap();
            TestPki {
                ca: path,
                server,
                stranger,
            }
        })
    }

    /// An authority's certificate (PEM), and a server configuration with a
    /// certificate it issued for 127.0.0.1.
    fn authority_and_server() -> (String, Arc<rustls::ServerConfig>) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(params, ca_key);
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let server = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        (ca.pem(), Arc::new(server))
    }

    /// A TLS front for the plain-HTTP upstream at `plain` (host:port): it
    /// takes TLS with `config` and relays the bytes both ways, one
    /// connection to the upstream per connection it takes, so that the
    /// upstream sees the proxy's requests, and the proxy the upstream's
    /// answers and closes, as they were. Its `https://` URL.
    fn tls_front(plain: &str, config: &Arc<rustls::ServerConfig>) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
        let plain = plain.to_owned();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, plain) = (acceptor.clone(), plain.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let Ok(mut upstream) = TcpStream::connect(plain.as_str()).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
                });
            }
        });
        format!("https://{addr}")
    }

    fn closed_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[tokio::test]
    async fn progress_is_reported_as_far_as_the_request_got() {
        use tokio::io::AsyncWriteExt;
        use tower_pkce::Progress;

        for tls in [false, true] {
            let scheme = if tls { "https" } else { "http" };
            let refused = format!("{scheme}://127.0.0.1:{}", closed_port());
            assert_eq!(
                forward_reported(&refused, tls).await,
                (StatusCode::BAD_GATEWAY, Progress::NotSent),
                "connect refused, tls: {tls}"
            );
            let silent = upstream(|stream| async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                drop(stream);
            })
            .await;
            assert_eq!(
                forward_reported(&silent, tls).await,
                (StatusCode::GATEWAY_TIMEOUT, Progress::Unanswered),
                "read, never answered, tls: {tls}"
            );
            let closing = upstream(|stream| async move { drop(stream) }).await;
            assert_eq!(
                forward_reported(&closing, tls).await,
                (StatusCode::BAD_GATEWAY, Progress::Unanswered),
                "read, closed unanswered, tls: {tls}"
            );
            let answering = upstream(|mut stream| async move {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            })
            .await;
            assert_eq!(
                forward_reported(&answering, tls).await,
                (StatusCode::OK, Progress::Sent),
                "answered, tls: {tls}"
            );
        }
        let answering = upstream(|mut stream| async move {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
        })
        .await;
        let stranger = tls_front(&answering["http://".len()..], &test_pki().stranger);
        assert_eq!(
            forward_reported(&stranger, true).await,
            (StatusCode::BAD_GATEWAY, Progress::NotSent),
            "a certificate the authority did not issue"
        );
    }

    /// Plain and TLS alike, a second request waits for the client
    /// connection's share, or for the one upstream connection allowed, and
    /// gets 503 when none comes free, reported never sent.
    #[tokio::test]
    async fn plain_and_tls_keep_to_the_upstream_bounds() {
        use tokio::io::AsyncWriteExt;
        use tower_pkce::Progress;

        let slow = upstream(|mut stream| async move {
            tokio::time::sleep(Duration::from_millis(800)).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        })
        .await;
        for (bound, value, tls) in [
            (
                "per client",
                ("max_upstream_connections_per_client", "1"),
                false,
            ),
            ("in all", ("max_upstream_connections", "1"), false),
            (
                "per client",
                ("max_upstream_connections_per_client", "1"),
                true,
            ),
            ("in all", ("max_upstream_connections", "1"), true),
        ] {
            let mut settings = crate::config::RawSettings {
                upstream: Some(slow.clone()),
                connect_timeout: Some("0.2".into()),
                ..Default::default()
            };
            match value.0 {
                "max_upstream_connections" => {
                    settings.max_upstream_connections = Some(value.1.into())
                }
                _ => settings.max_upstream_connections_per_client = Some(value.1.into()),
            }
            // Per client: both requests on one client connection; in all,
            // one on each of two.
            let mut harnesses = clients(settings, tls);
            let mut second = harnesses.pop().unwrap();
            let mut first = match bound {
                "per client" => second.clone(),
                _ => harnesses.pop().unwrap(),
            };
            let first =
                tokio::spawn(async move { send(&mut first, Endpoint::Other, get("/first")).await });
            tokio::time::sleep(Duration::from_millis(200)).await;
            let (status, _, progress) = send(&mut second, Endpoint::Other, get("/second")).await;
            assert_eq!(
                (status, progress),
                (StatusCode::SERVICE_UNAVAILABLE, Progress::NotSent),
                "{bound}, tls: {tls}"
            );
            let (status, body, _) = first.await.unwrap();
            assert_eq!(
                (status, &body[..]),
                (StatusCode::OK, &b"ok"[..]),
                "{bound}, tls: {tls}"
            );
        }
    }

    /// A request that waits for the one upstream connection allowed is
    /// reported sent only once it has it, and goes on the connection the
    /// first request gives back (another client connection's), on both
    /// transports.
    #[tokio::test]
    async fn a_request_that_waited_is_sent_on_the_connection_that_came_free() {
        use tower_pkce::Progress;

        let (up, seen) = recording_after(Duration::from_millis(400)).await;
        for tls in [false, true] {
            let mut harnesses = clients(
                crate::config::RawSettings {
                    upstream: Some(up.clone()),
                    max_upstream_connections: Some("1".into()),
                    connect_timeout: Some("5".into()),
                    ..Default::default()
                },
                tls,
            );
            let mut second = harnesses.pop().unwrap();
            let mut first = harnesses.pop().unwrap();
            let first =
                tokio::spawn(async move { send(&mut first, Endpoint::Other, get("/first")).await });
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (status, _, progress) = send(&mut second, Endpoint::Other, get("/second")).await;
            assert_eq!(
                (status, progress),
                (StatusCode::OK, Progress::Sent),
                "{tls}"
            );
            let (status, _, progress) = first.await.unwrap();
            assert_eq!(
                (status, progress),
                (StatusCode::OK, Progress::Sent),
                "{tls}"
            );
        }
        // One connection for each transport.
        assert_eq!(seen.lock().unwrap().0, 2);
    }

    /// [`recording`], answering after `delay`.
    async fn recording_after(
        delay: Duration,
    ) -> (String, Arc<Mutex<(usize, Vec<(String, bool)>)>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new((0, Vec::new())));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                record.lock().unwrap().0 += 1;
                let service = hyper::service::service_fn(
                    move |_: Request<hyper::body::Incoming>| async move {
                        tokio::time::sleep(delay).await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        (format!("http://{addr}"), seen)
    }

    /// An upstream (hyper's server) that answers "ok" after reading each
    /// body; records how many connections it accepted and, for each request,
    /// its path and whether it asked to close the connection.
    async fn recording() -> (String, Arc<Mutex<(usize, Vec<(String, bool)>)>>) {
        use http_body_util::BodyExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new((0, Vec::new())));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                record.lock().unwrap().0 += 1;
                let record = record.clone();
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let record = record.clone();
                        async move {
                            let close = req
                                .headers()
                                .get(header::CONNECTION)
                                .is_some_and(|v| v == "close");
                            let path = req.uri().path().to_owned();
                            let _ = req.into_body().collect().await;
                            record.lock().unwrap().1.push((path, close));
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                        }
                    });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        (format!("http://{addr}"), seen)
    }

    /// An absolute target without a path reaches the upstream with the
    /// path `/`, not as `GET ?x=1`, which no server can read.
    #[tokio::test]
    async fn an_absolute_target_without_a_path_goes_upstream_with_slash() {
        let (up, seen) = recording().await;
        let mut harness = harness(&up, false);
        for target in ["http://proxy.test?x=1", "http://proxy.test", "/p?q=1"] {
            let (status, _, _) = send(&mut harness, Endpoint::Other, get(target)).await;
            assert_eq!(status, StatusCode::OK, "{target}");
        }
        let paths: Vec<String> = seen
            .lock()
            .unwrap()
            .1
            .iter()
            .map(|(p, _)| p.clone())
            .collect();
        assert_eq!(paths, ["/", "/", "/p"]);
    }

    #[tokio::test]
    async fn a_body_retires_the_connection_plain_or_tls() {
        for tls in [false, true] {
            let (up, seen) = recording().await;
            let mut harness = harness(&up, tls);
            let requests = [
                (Endpoint::Other, post("/upload", b"data")),
                (Endpoint::Other, get("/next")),
                (Endpoint::Other, get("/again")),
                (
                    Endpoint::Token,
                    post("/token", b"grant_type=refresh_token&refresh_token=r1"),
                ),
                (Endpoint::Other, get("/after-token")),
                // A raw space reaches the upstream percent-encoded (the
                // layer makes a checked body inert): the connection stays.
                (
                    Endpoint::Token,
                    post("/token", b"grant_type=refresh_token&refresh_token=r 2"),
                ),
                (Endpoint::Other, get("/last")),
            ];
            for (endpoint, req) in requests {
                let (status, body, _) = send(&mut harness, endpoint, req).await;
                assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]), "{tls}");
            }
            let (connections, requests) = std::mem::take(&mut *seen.lock().unwrap());
            let closed: Vec<(&str, bool)> =
                requests.iter().map(|(p, c)| (p.as_str(), *c)).collect();
            // A checked token body keeps its connection after a 2xx.
            let token = false;
            assert_eq!(
                closed,
                [
                    ("/upload", true),
                    ("/next", false),
                    ("/again", false),
                    ("/token", token),
                    ("/after-token", false),
                    ("/token", token),
                    ("/last", false),
                ],
                "tls: {tls}"
            );
            assert_eq!(connections, 2, "tls: {tls}");
        }
    }

    /// Serves client connections with the proxy's HTTP/1.1 engine, each
    /// request through `harness`.
    async fn client_side(harness: Harness) -> SocketAddr {
        use tower::ServiceExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Arc::new(crate::h1::server::Shutdown::default());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let harness = harness.clone();
                let handler = move |req: Request<ClientBody>| {
                    let harness = harness.clone();
                    async move { harness.oneshot(req).await.unwrap() }
                };
                tokio::spawn(crate::h1::server::serve_connection(
                    stream,
                    handler,
                    shutdown.enter(),
                    crate::h1::server::Settings::for_tests(Duration::from_secs(5)),
                ));
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_malformed_request_body_gets_400_on_both_transports() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for tls in [false, true] {
            let (up, seen) = recording().await;
            let addr = client_side(harness(&up, tls)).await;
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n3;a\rb\r\nabc\r\n0\r\n\r\n")
                .await
                .unwrap();
            let mut got = String::new();
            tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut got))
                .await
                .unwrap()
                .unwrap();
            assert!(
                got.starts_with("HTTP/1.1 400 Bad Request\r\n"),
                "tls: {tls}: {got}"
            );
            assert!(
                got.ends_with("\r\n\r\nthe request body is malformed or was cut short\n"),
                "tls: {tls}: {got}"
            );
            // The upstream never saw the request whole.
            assert!(seen.lock().unwrap().1.is_empty(), "tls: {tls}");
        }
    }

    #[tokio::test]
    async fn a_length_past_the_signed_range_is_an_invalid_response_on_both_transports() {
        use tokio::io::AsyncWriteExt;
        for tls in [false, true] {
            for length in ["9223372036854775808", "18446744073709551613", "2, 2"] {
                let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {length}\r\n\r\nok");
                let up = upstream(move |mut stream| {
                    let answer = answer.clone();
                    async move {
                        let _ = stream.write_all(answer.as_bytes()).await;
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                })
                .await;
                let mut harness = harness(&up, tls);
                let (status, body, _) = send(&mut harness, Endpoint::Other, get("/big")).await;
                assert_eq!(status, StatusCode::BAD_GATEWAY, "{length}, tls: {tls}");
                assert_eq!(
                    &body[..],
                    b"502 Bad Gateway: the upstream server sent an invalid response\n",
                    "{length}, tls: {tls}"
                );
            }
        }
    }

    #[tokio::test]
    async fn request_trailers_are_dropped_on_both_transports() {
        use http_body_util::BodyExt;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // An upstream (hyper's server) that answers with the trailers it read.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let collected = req.into_body().collect().await.unwrap();
                        let trailers = format!("{:?}", collected.trailers());
                        let body = format!(
                            "{}|{trailers}",
                            String::from_utf8_lossy(&collected.to_bytes())
                        );
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                    });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        for tls in [false, true] {
            let addr = client_side(harness(&up, tls)).await;
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntrailer: x-digest, host, authorization\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n0\r\nx-digest: d1\r\nhost: evil.example\r\nauthorization: Basic YTpi\r\n\r\n")
                .await
                .unwrap();
            let mut got = String::new();
            tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut got))
                .await
                .unwrap()
                .unwrap();
            assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "tls: {tls}: {got}");
            assert!(got.ends_with("\r\n\r\nhello|None"), "tls: {tls}: {got}");
        }
    }
}
