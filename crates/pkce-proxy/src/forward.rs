//! Forwarding to the upstream: the proxy headers, the upstream connections,
//! and 502/504 answers when the upstream fails.
//!
//! A plain-HTTP upstream is reached over HTTP/1.1 connections of the
//! proxy's own (see `upstream`), driven by the request that uses them, that
//! stay with the client connection that opened them: a request takes an
//! idle one of its own connection's, and gives it back when the response
//! body has been read, so the hot path takes no shared lock and spawns no
//! task. When a client connection closes, its idle upstream connections go
//! to a shared pool that new client connections draw from. An HTTPS
//! upstream is reached through hyper-util's pooled client (rustls; HTTP/1.1
//! or HTTP/2 by ALPN).
//!
//! Both transports reuse an upstream connection after a request only when
//! `reusable_after` says so: a body that a loose upstream leaves unread
//! is read as the next request, so a request with a body retires its
//! connection (`Connection: close`), except a checked token body of
//! visible ASCII, which cannot end a line. A request that a reused
//! connection lost goes again at most once, on a new connection, and only
//! when that is safe (see `upstream`).
//!
//! A request may carry a [`ForwardProgress`] (the layer adds one to a token
//! request whose code it redeemed): it is marked not sent when the request
//! is taken, sent right before it goes on a connection (or to hyper's
//! client), and unanswered when the proxy answers 502 or 504 itself after
//! that, so that the layer restores the code only when the upstream cannot
//! have redeemed it (I6).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tower_pkce::{Endpoint, ForwardProgress, RequestBody};
use tower_service::Service;

use crate::config::{Config, Upstream};
pub use crate::http1::{ClientBody, ClientBodyError};
use crate::metrics::Metrics;
use crate::upstream::{Connection, Exchange, HeaderOverrides, Http1Error, Keep, Prepared, Retry};
pub use crate::upstream::{UpstreamBody, UpstreamBodyError};

/// The body of a forwarded response: the upstream's, streamed, or the
/// proxy's own error.
pub type ProxyBody = Either<UpstreamBody, Full<Bytes>>;

type HttpsClient = Client<HttpsConnector<HttpConnector>, RequestBody<ClientBody>>;

/// Idle upstream connections kept in the shared pool, at most.
const MAX_SHARED_IDLE: usize = 1024;
/// How long an idle connection waits in the shared pool before it is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

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

/// Sends requests to the upstream.
///
/// The server makes one per client connection with
/// [`for_connection`](Self::for_connection); its clones share that
/// connection's upstream connections.
#[derive(Clone)]
pub struct Forwarder {
    shared: Arc<Shared>,
    conn: Arc<ClientConnection>,
    endpoint: Endpoint,
}

struct Shared {
    transport: Transport,
    upstream: Upstream,
    /// The upstream's authority, the `Host` of a request that has none.
    upstream_host: Option<HeaderValue>,
    response_timeout: Duration,
    trust_forwarded: bool,
    metrics: Arc<Metrics>,
}

enum Transport {
    Plain(Pool),
    Tls(Box<HttpsClient>),
}

/// Connections to a plain-HTTP upstream, idle, that no client connection
/// holds.
struct Pool {
    host: String,
    port: u16,
    connect_timeout: Duration,
    idle: Mutex<Vec<(Box<Connection>, Instant)>>,
}

/// What one client connection keeps: its peer's address, ready to be an
/// `X-Forwarded-For` value, and its idle upstream connections.
struct ClientConnection {
    client_ip: Option<HeaderValue>,
    #[expect(
        clippy::vec_box,
        reason = "a connection moves between the pool, a request and its response as one pointer"
    )]
    idle: Mutex<Vec<Box<Connection>>>,
    shared: Option<Arc<Shared>>,
    /// A response timer that outlives its request, lent to the next one.
    timer: Mutex<Option<Pin<Box<Sleep>>>>,
}

impl ClientConnection {
    fn checkout(&self) -> Option<Box<Connection>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(conn) = idle.pop() {
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
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
    }
}

impl Drop for ClientConnection {
    fn drop(&mut self) {
        let Some(Transport::Plain(pool)) = self.shared.as_ref().map(|s| &s.transport) else {
            return;
        };
        let idle = std::mem::take(self.idle.get_mut().unwrap_or_else(PoisonError::into_inner));
        if idle.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut shared = pool.idle.lock().unwrap_or_else(PoisonError::into_inner);
        for conn in idle {
            if shared.len() < MAX_SHARED_IDLE && conn.is_usable() {
                shared.push((conn, now));
            }
        }
    }
}

impl Pool {
    fn checkout(&self) -> Option<Box<Connection>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some((conn, since)) = idle.pop() {
            if since.elapsed() < IDLE_TIMEOUT && conn.is_usable() {
                return Some(conn);
            }
        }
        None
    }

    /// A new connection to the upstream, in a future of its own: a request
    /// waits for it in its state, and most requests never do.
    fn connect(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<Box<Connection>, UpstreamError>> + Send>> {
        let (host, port, timeout) = (self.host.clone(), self.port, self.connect_timeout);
        Box::pin(async move {
            let stream = tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), port)))
                .await
                .map_err(|_| UpstreamError::ConnectTimeout)?
                .map_err(UpstreamError::Connect)?;
            let _ = stream.set_nodelay(true);
            Ok(Connection::new(stream))
        })
    }

    /// A request on an idle connection of `client`'s or of the pool's, else
    /// on a new one. `prepare` writes the request into the buffer it is
    /// given: the idle connection's, which keeps its allocation from
    /// request to request, or a new one.
    fn route(
        &self,
        client: &ClientConnection,
        progress: Option<&ForwardProgress>,
        prepare: impl FnOnce(Vec<u8>) -> Prepared,
    ) -> Step {
        match client.checkout().or_else(|| self.checkout()) {
            Some(mut upstream) => {
                let request = prepare(upstream.take_buffer());
                mark(progress, ForwardProgress::sent);
                Step::Exchanging {
                    exchange: request.send_on(upstream),
                    reused: true,
                }
            }
            None => Step::Connecting(Box::new(Connecting {
                connect: self.connect(),
                request: prepare(Vec::with_capacity(1024)),
            })),
        }
    }
}

/// Why a request did not get the upstream's response.
#[derive(Debug)]
enum UpstreamError {
    Connect(std::io::Error),
    ConnectTimeout,
    Exchange(Http1Error),
    Client(hyper_util::client::legacy::Error),
}

impl UpstreamError {
    /// Whether the request certainly did not reach the upstream: hyper's
    /// client could not connect. (The proxy's own connections are marked
    /// sent only once connected.)
    fn nothing_sent(&self) -> bool {
        matches!(self, Self::Client(e) if e.is_connect())
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "cannot connect: {e}"),
            Self::ConnectTimeout => f.write_str("connect timed out"),
            Self::Exchange(e) => write!(f, "{e}"),
            Self::Client(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect(e) => Some(e),
            Self::ConnectTimeout => None,
            Self::Exchange(e) => std::error::Error::source(e),
            Self::Client(e) => std::error::Error::source(e),
        }
    }
}

/// The TLS client configuration: webpki roots, the ring provider.
fn https_connector(connect_timeout: Duration) -> Result<HttpsConnector<HttpConnector>, String> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    Ok(builder
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http))
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
/// (0x21..=0x7E): with no space, CR or LF, what an upstream leaves of it
/// can neither end a line nor split a request line, so it can only spoil
/// the next request's method, never make a request of its own. (The layer
/// forwards a checked body with every other byte percent-encoded, so the
/// last test holds of every body it checked; it is kept here too, so that
/// the rule does not rest on that.)
pub(crate) fn reusable_after<B>(endpoint: Endpoint, body: &RequestBody<B>) -> bool
where
    B: http_body::Body<Data = Bytes>,
{
    use http_body::Body as _;
    if body.is_end_stream() || body.size_hint().exact() == Some(0) {
        return true;
    }
    endpoint == Endpoint::Token
        && body
            .as_buffered()
            .is_some_and(|data| data.iter().all(|b| matches!(b, 0x21..=0x7e)))
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
    /// When the TLS client cannot be set up.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Self, String> {
        let pooled = config.upstream.scheme == http::uri::Scheme::HTTPS;
        Self::with_transport(config, metrics, pooled)
    }

    /// A forwarder through hyper's pooled client when `pooled` (which an
    /// HTTPS upstream needs, and which takes plain HTTP too), else over
    /// connections of the proxy's own.
    fn with_transport(
        config: &Config,
        metrics: Arc<Metrics>,
        pooled: bool,
    ) -> Result<Self, String> {
        let upstream = config.upstream.clone();
        let transport = if pooled {
            Transport::Tls(Box::new(
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(IDLE_TIMEOUT)
                    .build(https_connector(config.connect_timeout)?),
            ))
        } else {
            let (host, port) = upstream.host_port();
            Transport::Plain(Pool {
                host,
                port,
                connect_timeout: config.connect_timeout,
                idle: Mutex::new(Vec::new()),
            })
        };
        let shared = Arc::new(Shared {
            transport,
            upstream_host: HeaderValue::from_str(upstream.authority.as_str()).ok(),
            upstream,
            response_timeout: config.response_timeout,
            trust_forwarded: config.trust_forwarded,
            metrics,
        });
        Ok(Self {
            conn: Arc::new(ClientConnection {
                client_ip: None,
                idle: Mutex::new(Vec::new()),
                shared: Some(shared.clone()),
                timer: Mutex::new(None),
            }),
            shared,
            endpoint: Endpoint::Other,
        })
    }

    /// A forwarder for one client connection from `peer`: it sets
    /// `X-Forwarded-For` to the peer's address, and keeps the upstream
    /// connections it opens for that client connection's next requests.
    pub fn for_connection(&self, peer: SocketAddr) -> Self {
        Self {
            shared: self.shared.clone(),
            conn: Arc::new(ClientConnection {
                client_ip: HeaderValue::try_from(peer.ip().to_string()).ok(),
                idle: Mutex::new(Vec::new()),
                shared: Some(self.shared.clone()),
                timer: Mutex::new(None),
            }),
            endpoint: Endpoint::Other,
        }
    }

    /// Tells the forwarder which endpoint the next request is for, as the
    /// server classified it: errors at the token endpoint are JSON, and
    /// upstream latency is recorded by endpoint.
    pub fn set_endpoint(&mut self, endpoint: Endpoint) {
        self.endpoint = endpoint;
    }

    /// The request target as the upstream takes it: origin form (path and
    /// query) for a plain-HTTP connection, absolute for the pooled client.
    fn upstream_uri(&self, uri: &Uri) -> Option<Uri> {
        let upstream = &self.shared.upstream;
        let absolute = matches!(self.shared.transport, Transport::Tls(_));
        if !absolute
            && upstream.base_path.is_empty()
            && let Some(pq) = uri.path_and_query()
        {
            return Some(Uri::from(pq.clone()));
        }
        let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let mut pq = String::with_capacity(upstream.base_path.len() + path_and_query.len());
        pq.push_str(&upstream.base_path);
        pq.push_str(path_and_query);
        if !absolute {
            return Uri::try_from(pq).ok();
        }
        Uri::builder()
            .scheme(upstream.scheme.clone())
            .authority(upstream.authority.clone())
            .path_and_query(pq)
            .build()
            .ok()
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
        let trusted = self.shared.trust_forwarded;
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
            overrides.set(X_FORWARDED_PROTO, Some(HeaderValue::from_static("http")));
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
    let (content_type, body) = if endpoint == Endpoint::Token {
        let description = if status == StatusCode::GATEWAY_TIMEOUT {
            "the authorization server did not answer in time"
        } else {
            "the authorization server cannot be reached"
        };
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
        let text = if status == StatusCode::GATEWAY_TIMEOUT {
            "504 Gateway Timeout: the upstream server did not answer in time\n"
        } else {
            "502 Bad Gateway: the upstream server cannot be reached\n"
        };
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
        let endpoint = self.endpoint;
        let progress = req.extensions().get::<ForwardProgress>().cloned();
        mark(progress.as_ref(), ForwardProgress::not_sent);
        let Some(uri) = self.upstream_uri(req.uri()) else {
            return ResponseFuture::ready(upstream_error(StatusCode::BAD_GATEWAY, endpoint));
        };
        let retire = !reusable_after(endpoint, req.body());
        let overrides = self.forwarded_headers(&req);
        remove_hop_by_hop(req.headers_mut());
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        let started = tokio::time::Instant::now();
        let timer = self
            .conn
            .response_timer(started + self.shared.response_timeout);
        let step = match &self.shared.transport {
            Transport::Plain(pool) => {
                let home: Arc<dyn Keep> = self.conn.clone();
                pool.route(&self.conn, progress.as_ref(), |buf| {
                    Prepared::new(buf, req, &overrides, home, retire)
                })
            }
            Transport::Tls(client) => {
                overrides.apply(req.headers_mut());
                if retire {
                    // hyper's client does not pool a connection whose
                    // request asked to close it.
                    req.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                mark(progress.as_ref(), ForwardProgress::sent);
                let sending = client.request(req);
                Step::Pooled(Box::pin(async move {
                    sending
                        .await
                        .map(|r| r.map(UpstreamBody::pooled))
                        .map_err(UpstreamError::Client)
                }))
            }
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

type Pooled = Pin<Box<dyn Future<Output = Result<Response<UpstreamBody>, UpstreamError>> + Send>>;

enum Step {
    /// Waiting for a new connection, with the request ready for it.
    Connecting(Box<Connecting>),
    /// On a connection of the proxy's own; `reused` when it served a
    /// request before, so that it may have been closed meanwhile.
    Exchanging { exchange: Exchange, reused: bool },
    /// Through the pooled client (HTTPS).
    Pooled(Pooled),
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
                    match (again, &self.shared.transport) {
                        (Some(Retry { request, unsent }), Transport::Plain(pool)) => {
                            if unsent {
                                mark(self.progress.as_ref(), ForwardProgress::not_sent);
                            }
                            self.step = Step::Connecting(Box::new(Connecting {
                                connect: pool.connect(),
                                request,
                            }));
                        }
                        _ => return Poll::Ready(Err(UpstreamError::Exchange(e))),
                    }
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
                Step::Pooled(sending) => {
                    let result = ready!(sending.as_mut().poll(cx));
                    self.step = Step::Done;
                    return Poll::Ready(result);
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
            Some(Err(e)) if crate::http1::is_body_timeout(&e) => {
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
            Some(Err(e)) => {
                // `unanswered` leaves a request that was never sent as it is.
                if e.nothing_sent() {
                    mark(self.progress.as_ref(), ForwardProgress::not_sent);
                } else {
                    mark(self.progress.as_ref(), ForwardProgress::unanswered);
                }
                tracing::warn!(
                    endpoint = endpoint.as_str(),
                    error = %e,
                    source = ?std::error::Error::source(&e).map(ToString::to_string),
                    "upstream request failed"
                );
                metrics.upstream_failure("unreachable");
                upstream_error(StatusCode::BAD_GATEWAY, endpoint)
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
    /// a token request whose code it redeemed, and tells the forwarder the
    /// endpoint, as the server does.
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
            self.forwarder.set_endpoint(self.endpoint);
            self.forwarder.call(req)
        }
    }

    type Harness = tower_pkce::Pkce<Reported, tower_pkce::store::MemoryStore>;

    /// The PKCE layer in front of a forwarder to `upstream` (0.3 s response
    /// timeout), over hyper's pooled client when `pooled`.
    fn harness(upstream: &str, pooled: bool) -> Harness {
        use tower::Layer;
        let config = Config::resolve(&crate::config::RawSettings {
            upstream: Some(upstream.to_owned()),
            response_timeout: Some("0.3".into()),
            ..Default::default()
        })
        .unwrap();
        let metrics = Arc::new(Metrics::new().unwrap());
        let forwarder = Forwarder::with_transport(&config, metrics, pooled)
            .unwrap()
            .for_connection(([127, 0, 0, 1], 1).into());
        tower_pkce::PkceLayer::strict().layer(Reported {
            forwarder,
            progress: ForwardProgress::default(),
            endpoint: Endpoint::Other,
        })
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
    async fn forward_reported(upstream: &str, pooled: bool) -> (StatusCode, tower_pkce::Progress) {
        let mut harness = harness(upstream, pooled);
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

        for pooled in [false, true] {
            let refused = format!("http://127.0.0.1:{}", closed_port());
            assert_eq!(
                forward_reported(&refused, pooled).await,
                (StatusCode::BAD_GATEWAY, Progress::NotSent),
                "connect refused, pooled: {pooled}"
            );
            let silent = upstream(|stream| async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                drop(stream);
            })
            .await;
            assert_eq!(
                forward_reported(&silent, pooled).await,
                (StatusCode::GATEWAY_TIMEOUT, Progress::Unanswered),
                "read, never answered, pooled: {pooled}"
            );
            let closing = upstream(|stream| async move { drop(stream) }).await;
            assert_eq!(
                forward_reported(&closing, pooled).await,
                (StatusCode::BAD_GATEWAY, Progress::Unanswered),
                "read, closed unanswered, pooled: {pooled}"
            );
            let answering = upstream(|mut stream| async move {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            })
            .await;
            assert_eq!(
                forward_reported(&answering, pooled).await,
                (StatusCode::OK, Progress::Sent),
                "answered, pooled: {pooled}"
            );
        }
        let refused = format!("https://127.0.0.1:{}", closed_port());
        assert_eq!(
            forward_reported(&refused, true).await,
            (StatusCode::BAD_GATEWAY, Progress::NotSent),
            "connect refused, HTTPS"
        );
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

    #[tokio::test]
    async fn a_body_retires_the_connection_on_both_transports() {
        for pooled in [false, true] {
            let (up, seen) = recording().await;
            let mut harness = harness(&up, pooled);
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
                assert_eq!(
                    (status, &body[..]),
                    (StatusCode::OK, &b"ok"[..]),
                    "{pooled}"
                );
                // hyper's client pools a connection once it is idle again.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let (connections, requests) = std::mem::take(&mut *seen.lock().unwrap());
            let closed: Vec<(&str, bool)> =
                requests.iter().map(|(p, c)| (p.as_str(), *c)).collect();
            assert_eq!(
                closed,
                [
                    ("/upload", true),
                    ("/next", false),
                    ("/again", false),
                    ("/token", false),
                    ("/after-token", false),
                    ("/token", false),
                    ("/last", false),
                ],
                "pooled: {pooled}"
            );
            assert_eq!(connections, 2, "pooled: {pooled}");
        }
    }
}
