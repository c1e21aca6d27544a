//! The listeners, shut down gracefully: the proxy's client connections,
//! served by `http1` (HTTP/1.1 of its own, HTTP/2 through hyper), or with
//! TLS by `https` (hyper for both), and the admin endpoints, served with
//! hyper-util's auto builder.
//!
//! Every client request is screened before the PKCE layer sees it (see
//! `screen`), on both protocols: `CONNECT`, a body on a method that has
//! none, and a `Connection` header naming a field the checks or the framing
//! depend on get 400; the hop-by-hop fields are removed, so that the layer
//! checks exactly the request the upstream receives (I5).

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use pin_project_lite::pin_project;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tower::{Layer, Service, ServiceExt};
use tower_pkce::store::Store;
use tower_pkce::{Endpoint, Pkce, PkceLayer, Rejection, ResponseBody, Source};

use crate::config::{Config, Upstream};
use crate::forward::{self, ClientBody, ClientScheme, Forwarder, ProxyBody};
use crate::h1;
use crate::https;
use crate::metrics::{Limit, Load, Metrics};
use crate::proxy_protocol;
use crate::store::ProxyStore;
use crate::tls;
use crate::trusted_proxies::TrustedProxies;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why the proxy could not start.
#[derive(Debug)]
pub struct StartError(String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// A running proxy: its bound addresses, and the handle to stop it.
#[derive(Debug)]
pub struct Running {
    /// Where the proxy listens for clients.
    pub addr: SocketAddr,
    /// Where the admin endpoints are served.
    pub admin_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    tls: Option<Arc<tls::Reloader>>,
}

impl Running {
    /// Reads the listener's certificate and key files now, as SIGHUP does,
    /// and serves them to new connections if they changed and are usable
    /// (see [`TLS_CHECK_INTERVAL`]). Without TLS, does nothing.
    pub async fn reload_tls(&self) {
        if let Some(reloader) = self.tls.clone() {
            // On a thread that may block: a file system that hangs must not
            // hold up the task that also waits for SIGTERM.
            if let Err(e) = tokio::task::spawn_blocking(move || reloader.check()).await {
                tracing::error!(error = %e, "reading the TLS certificate files failed");
            }
        }
    }

    /// Stops accepting connections, lets requests in flight finish (up to
    /// the drain timeout), and returns when everything is closed.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "a listener task failed");
            }
        }
    }
}

async fn bind(what: &str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| StartError(format!("cannot listen for {what} on {addr}: {e}")))
}

/// Hands each connection accepted on `listener` to `connection`, until
/// `stop` turns true; then closes the listener. What both listeners share;
/// each brings its own server.
async fn accept_until_stopped(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    name: &'static str,
    mut connection: impl FnMut(TcpStream, SocketAddr),
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    connection(stream, peer);
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait, then go on.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
    drop(listener);
}

/// Waits for the connections to finish (`drained`), at most `drain`.
async fn drain_within(
    drain: Duration,
    name: &'static str,
    drained: impl std::future::Future<Output = ()>,
) {
    tokio::select! {
        () = drained => tracing::info!(listener = name, "drained"),
        () = tokio::time::sleep(drain) => {
            tracing::warn!(listener = name, ?drain, "drain timed out; closing the remaining connections");
        }
    }
}

/// Serves `listener` with hyper-util's auto (HTTP/1.1 and HTTP/2) builder,
/// each connection with the service `make` builds for its peer, until
/// `stop` turns true; then drains.
pub(crate) fn serve<F, S, B>(
    listener: TcpListener,
    stop: watch::Receiver<bool>,
    drain: Duration,
    name: &'static str,
    make: F,
) -> JoinHandle<()>
where
    F: Fn(SocketAddr) -> S + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    tokio::spawn(async move {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(ADMIN_HEAD_TIMEOUT);
        let graceful = GracefulShutdown::new();
        let watcher = &graceful;
        let connection = move |stream: TcpStream, peer| {
            let conn = builder.serve_connection(TokioIo::new(stream), make(peer));
            let conn = watcher.watch(conn.into_owned());
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection closed with an error");
                }
            });
        };
        accept_until_stopped(listener, stop, name, connection).await;
        drain_within(drain, name, graceful.shutdown()).await;
    })
}

/// How often the listener's certificate and key files are read to see
/// whether they changed. They are small; reading them costs less than
/// watching them, and works on every file system and with the symbolic
/// links that Kubernetes swaps when it updates a secret.
pub const TLS_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// How long a client of the admin listener has to send a request head.
const ADMIN_HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// How the client listener serves: its connections' settings, and at most
/// how many it keeps open.
struct Clients {
    settings: h1::server::Settings,
    max_connections: usize,
    /// The peers that send a PROXY protocol header first, when
    /// `--proxy-protocol` is on.
    proxy_protocol: Option<TrustedProxies>,
    /// Counts the open connections, and drains them at shutdown.
    shutdown: Arc<h1::server::Shutdown>,
    /// Every connection begins with a TLS handshake, when set.
    tls: Option<TlsAcceptor>,
}

/// Serves the proxy's clients on `listener` (see `http1`), each connection
/// with the handler `make` builds for its peer, until `stop` turns true;
/// then drains.
///
/// A connection accepted while `max_connections` are open is closed at
/// once: the ones open keep their share, and a client that is turned away
/// learns it at once rather than waiting in the listen queue.
fn serve_clients<M, H, F, B>(
    listener: TcpListener,
    stop: watch::Receiver<bool>,
    drain: Duration,
    clients: Clients,
    make: M,
) -> JoinHandle<()>
where
    M: Fn(SocketAddr, bool, ClientScheme) -> H + Send + Sync + 'static,
    H: Fn(Request<ClientBody>) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError> + std::fmt::Display,
{
    let Clients {
        settings,
        max_connections,
        proxy_protocol,
        shutdown,
        tls,
    } = clients;
    let make = Arc::new(make);
    tokio::spawn(async move {
        let connections = shutdown.clone();
        let mut full = false;
        let connection = move |stream: TcpStream, peer: SocketAddr| {
            let open = connections.open_connections();
            if open >= max_connections {
                settings.metrics.limit_reached(Limit::Connections);
                // One line when the bound is reached, not one a connection.
                if !full {
                    full = true;
                    tracing::warn!(
                        max_connections,
                        "client connection limit reached: new connections are closed until some end"
                    );
                }
                drop(stream);
                return;
            }
            if full && open < max_connections * 9 / 10 {
                full = false;
                tracing::info!(open, "client connections below the limit again");
            }
            let open = connections.enter();
            let balancer = proxy_protocol
                .as_ref()
                .is_some_and(|from| from.contains(peer.ip().to_canonical()));
            if balancer || tls.is_some() {
                tokio::spawn(serve_balanced_or_tls(
                    (stream, peer, balancer),
                    tls.clone(),
                    make.clone(),
                    open,
                    settings.clone(),
                ));
                return;
            }
            tokio::spawn(h1::server::serve_connection(
                stream,
                make(peer, true, ClientScheme::Http),
                open,
                settings.clone(),
            ));
        };
        accept_until_stopped(listener, stop, "proxy", connection).await;
        shutdown.begin();
        drain_within(drain, "proxy", shutdown.drained()).await;
    })
}

/// A connection from a load balancer that speaks the PROXY protocol
/// (`balancer`), or on a listener with TLS (`tls`), or both. A balancer's
/// header names the client, within the head timeout, or the connection is
/// closed; the balancer vouches for the `X-Forwarded-*` fields only of a
/// client that is itself a trusted proxy. The TLS handshake follows the
/// header.
async fn serve_balanced_or_tls<M, H, F, B>(
    (mut stream, peer, balancer): (TcpStream, SocketAddr, bool),
    tls: Option<TlsAcceptor>,
    make: Arc<M>,
    open: h1::server::OpenConnection,
    settings: h1::server::Settings,
) where
    M: Fn(SocketAddr, bool, ClientScheme) -> H + Send + Sync + 'static,
    H: Fn(Request<ClientBody>) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError> + std::fmt::Display,
{
    let (client, may_vouch) = if balancer {
        let header = tokio::time::timeout(
            settings.head_timeout,
            proxy_protocol::read_header(&mut stream),
        )
        .await;
        match header {
            Ok(Ok(proxy_protocol::Source::Client(client))) => (client, true),
            Ok(Ok(proxy_protocol::Source::Balancer)) => (peer, false),
            Ok(Err(proxy_protocol::Refused(why))) => {
                settings.metrics.proxy_protocol_refused();
                tracing::info!(why, "PROXY protocol header refused; connection closed");
                return;
            }
            Err(_) => {
                settings.metrics.proxy_protocol_refused();
                tracing::info!(
                    "no PROXY protocol header within the head timeout; connection closed"
                );
                return;
            }
        }
    } else {
        (peer, true)
    };
    match tls {
        None => {
            let handler = make(client, may_vouch, ClientScheme::Http);
            h1::server::serve_connection(stream, handler, open, settings).await;
        }
        Some(acceptor) => {
            let make = move || make(client, may_vouch, ClientScheme::Https);
            https::serve_connection(stream, acceptor, make, open, settings).await;
        }
    }
}

type ProxyService = Pkce<Forwarder, ProxyStore>;
type ProxyFuture = <ProxyService as Service<Request<ClientBody>>>::Future;
type ProxyResponse = Response<ResponseBody<ProxyBody>>;
/// What a client receives: the layer's answer, or the screen's refusal.
type ClientResponse = Response<Either<ResponseBody<ProxyBody>, Full<Bytes>>>;

/// A request the screen refuses: its one-line reason, and the layer's name
/// for it when it has one (for the metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Refused(&'static str, Option<Rejection>);

/// Whether a request announces a body: a length above zero, or (with no
/// length) a body not known to be at its end. An HTTP/2 request whose
/// headers did not end the stream counts, even if an empty DATA frame
/// would have ended it.
fn announces_body(headers: &HeaderMap, body: &ClientBody) -> bool {
    use http_body::Body as _;
    let mut zero = false;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        if h1::body::parse_length(value.as_bytes()) != Some(0) {
            return true;
        }
        zero = true;
    }
    !zero && !body.is_end_stream()
}

/// Refuses what must reach neither the PKCE layer nor the upstream, then
/// removes the hop-by-hop fields, before the layer sees the request, so
/// that its checks apply to exactly what is forwarded (I5). HTTP/1.1
/// requests that `http1` parsed were screened for `CONNECT` and bodies
/// already, before their body was read; those that hyper parsed (HTTP/2,
/// and HTTP/1.1 over TLS) are here.
fn screen(req: &mut Request<ClientBody>) -> Result<(), Refused> {
    let method = req.method();
    if method == Method::CONNECT {
        return Err(Refused(h1::server::CONNECT_REFUSED, None));
    }
    if req.version() == http::Version::HTTP_2 || req.body().is_from_hyper() {
        screen_hyper(req).map_err(|why| Refused(why, None))?;
    }
    if let Some(why) = h1::server::body_refused(method)
        && announces_body(req.headers(), req.body())
    {
        return Err(Refused(why, None));
    }
    if forward::underscore_aliases_a_field(req.headers()) {
        return Err(Refused(
            "a header name with '_' that a server may read as Content-Length, Host, Authorization or another field the proxy sets or checks",
            None,
        ));
    }
    if forward::connection_names_checked_field(req.headers()) {
        return Err(Refused(
            "the Connection header must not name Authorization, Host, Content-Type, Content-Length, Transfer-Encoding or Cookie",
            Some(Rejection::ConnectionNamesCheckedField),
        ));
    }
    forward::remove_hop_by_hop(req.headers_mut());
    Ok(())
}

/// What `http1` checks in an HTTP/1.1 head, for a request whose head
/// hyper parsed: the path, the host (`:authority` or an absolute target,
/// and a `Host` field, which must name the same one; RFC 9113 §8.3.1), and
/// `Content-Length`; in HTTP/1.1, exactly one `Host` field (RFC 9112 §3.2)
/// and `chunked` as the only transfer coding (hyper takes any coding list
/// that ends with it, and the proxy decodes none of the others).
///
/// hyper itself refuses conflicting lengths, `Transfer-Encoding` in
/// HTTP/1.0 and a coding list not ending in `chunked`. A request with both
/// `Transfer-Encoding` and `Content-Length`, which `http1` refuses, hyper
/// reads by its coding and closes the connection after; it removes the
/// length before the request comes here.
fn screen_hyper(req: &Request<ClientBody>) -> Result<(), &'static str> {
    crate::target::check_path(req.uri().path().as_bytes())?;
    let h2 = req.version() == http::Version::HTTP_2;
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(if h2 {
            "a request needs at most one Host header"
        } else {
            "a request needs exactly one Host header"
        });
    }
    if host.is_none() && req.version() == http::Version::HTTP_11 {
        return Err("a request needs exactly one Host header");
    }
    let authority = req.uri().authority().map(|a| a.as_str().as_bytes());
    for named in [authority, host.map(http::HeaderValue::as_bytes)]
        .into_iter()
        .flatten()
    {
        if !crate::target::check_host(named) {
            return Err(crate::target::INVALID_HOST);
        }
    }
    if let (Some(authority), Some(host)) = (authority, host)
        && !authority.eq_ignore_ascii_case(host.as_bytes())
    {
        return Err(if h2 {
            "the Host header and :authority name different hosts"
        } else {
            "the Host header and the request target name different hosts"
        });
    }
    let mut codings = req.headers().get_all(header::TRANSFER_ENCODING).iter();
    if let Some(coding) = codings.next()
        && (codings.next().is_some()
            || !coding
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked"))
    {
        return Err("only the chunked transfer coding is supported");
    }
    if req
        .headers()
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .any(|value| h1::body::parse_length(value.as_bytes()).is_none())
    {
        return Err("invalid Content-Length");
    }
    Ok(())
}

/// The answer to a request the screen refused: 400, one line of text. With
/// `close`, the connection closes after it, as `http1` closes one whose
/// head it refused.
fn refusal(refused: Refused, endpoint: Endpoint, metrics: Arc<Metrics>, close: bool) -> Answer {
    let Refused(why, rejection) = refused;
    tracing::info!(endpoint = endpoint.as_str(), why, "request refused");
    let mut response = text(
        StatusCode::BAD_REQUEST,
        "text/plain; charset=utf-8",
        format!("{why}\n"),
    );
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    if let Some(rejection) = rejection {
        response.extensions_mut().insert(rejection);
    }
    if close {
        response
            .headers_mut()
            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    }
    Answer {
        state: AnswerState::Refused {
            response: Some(response),
        },
        metrics,
        endpoint,
        bodiless: false,
    }
}

/// The answer to a request whose body has not all arrived: the body is
/// read first, up to `limit` bytes (see [`ClientBody::buffered`]), so that
/// a slow client holds no upstream connection while it sends a small body,
/// and only then does the request go to the layer and on to the upstream.
/// A body that pauses past the body timeout gets 408, one that fails 400.
/// Cold: most bodies come with their head, and keeping this out of the
/// request closure leaves the layer's call inlined there.
#[cold]
#[inline(never)]
fn buffer_then_handle(
    mut pkce: ProxyService,
    metrics: Arc<Metrics>,
    endpoint: Endpoint,
    req: Request<ClientBody>,
    (limit, budget): (usize, Arc<h1::server::Budget>),
) -> Answer {
    let (parts, body) = req.into_parts();
    let future = Box::pin(async move {
        match body.buffered(limit, &budget).await {
            Ok(body) => {
                let req = Request::from_parts(parts, body);
                match pkce.ready().await {
                    Ok(ready) => match ready.call(req).await {
                        Ok(response) => response.map(Either::Left),
                        Err(never) => match never {},
                    },
                    Err(never) => match never {},
                }
            }
            Err(e) => body_failed(&*e, endpoint).map(Either::Right),
        }
    });
    Answer {
        state: AnswerState::Buffering { future },
        metrics,
        endpoint,
        bodiless: false,
    }
}

/// The answer to a request whose body could not be read: 408 when it
/// paused past the body timeout, else 400. Either way the connection
/// closes after it (HTTP/1.1; the body is unread), or the stream ends
/// (HTTP/2).
fn body_failed(e: &(dyn std::error::Error + 'static), endpoint: Endpoint) -> Response<Full<Bytes>> {
    if !h1::server::is_body_timeout(e) {
        // The error names a framing fault, never a value of the request.
        tracing::info!(endpoint = endpoint.as_str(), error = %e, "request body failed");
        return crate::forward::client_body_refusal(endpoint);
    }
    tracing::info!(
        endpoint = endpoint.as_str(),
        "request body paused past the body timeout"
    );
    let mut response = text(
        StatusCode::REQUEST_TIMEOUT,
        "text/plain; charset=utf-8",
        "the request body paused for too long\n".to_string(),
    );
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    response
}

/// The client behind a trusted proxy: the rightmost address of
/// `X-Forwarded-For` that is not itself a trusted proxy (each proxy appends
/// the address it saw, so what lies left of the first untrusted one was
/// written by the client and proves nothing). Past an entry that is not an
/// address, the last trusted hop reached stands for the client.
fn forwarded_client(headers: &HeaderMap, peer: IpAddr, trusted: &TrustedProxies) -> IpAddr {
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .rev()
        .flat_map(|value| value.as_bytes().rsplit(|&b| b == b','));
    let mut client = peer;
    for hop in hops {
        let Some(ip) = std::str::from_utf8(hop)
            .ok()
            .and_then(|hop| hop.trim().parse::<IpAddr>().ok())
        else {
            break;
        };
        client = ip.to_canonical();
        if !trusted.contains(client) {
            break;
        }
    }
    client
}

/// The service readied and called at once, so that the request goes
/// straight into the call and is never held in a future of its own. The
/// forwarder is always ready; a service that is not gets the request from a
/// boxed future once it is.
fn handle(
    mut pkce: ProxyService,
    metrics: Arc<Metrics>,
    endpoint: Endpoint,
    req: Request<ClientBody>,
) -> Answer {
    let state = match pkce.poll_ready(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(())) => AnswerState::Called {
            future: pkce.call(req),
        },
        Poll::Ready(Err(never)) => match never {},
        Poll::Pending => AnswerState::Waiting {
            future: Box::pin(async move {
                match pkce.ready().await {
                    Ok(ready) => match ready.call(req).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    },
                    Err(never) => match never {},
                }
            }),
        },
    };
    Answer {
        state,
        metrics,
        endpoint,
        bodiless: false,
    }
}

pin_project! {
    /// One request's answer: the PKCE layer's future, and the metrics that
    /// record the response once it is ready.
    struct Answer {
        #[pin]
        state: AnswerState,
        metrics: Arc<Metrics>,
        endpoint: Endpoint,
        // The answer to a HEAD request over HTTP/2, whose body hyper would
        // send (HTTP/1.1 leaves it out in `http1`).
        bodiless: bool,
    }
}

pin_project! {
    #[project = AnswerProj]
    enum AnswerState {
        Called { #[pin] future: ProxyFuture },
        Waiting { future: Pin<Box<dyn Future<Output = ProxyResponse> + Send>> },
        Buffering { future: Pin<Box<dyn Future<Output = ClientResponse> + Send>> },
        Refused { response: Option<Response<Full<Bytes>>> },
    }
}

impl Future for Answer {
    type Output = ClientResponse;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ClientResponse> {
        let this = self.project();
        let response = match this.state.project() {
            AnswerProj::Called { future } => match ready!(future.poll(cx)) {
                Ok(response) => response.map(Either::Left),
                Err(never) => match never {},
            },
            AnswerProj::Waiting { future } => ready!(future.as_mut().poll(cx)).map(Either::Left),
            AnswerProj::Buffering { future } => ready!(future.as_mut().poll(cx)),
            // Polled again after its answer: an empty 400 rather than a panic.
            AnswerProj::Refused { response } => response
                .take()
                .unwrap_or_else(|| {
                    let mut r = Response::new(Full::default());
                    *r.status_mut() = StatusCode::BAD_REQUEST;
                    r
                })
                .map(Either::Right),
        };
        this.metrics.request(
            *this.endpoint,
            response.status(),
            response.extensions().get::<Rejection>().copied(),
        );
        if *this.bodiless {
            return Poll::Ready(response.map(|_| Either::Right(Full::default())));
        }
        Poll::Ready(response)
    }
}

/// The soft limit on open files in `/proc/self/limits` text.
fn open_files_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Warns when the process may open fewer files than the connection bounds
/// need: past that, accepts and upstream connects fail instead of the
/// limits acting. (Linux only; elsewhere nothing is read.)
fn check_open_files(config: &Config) {
    let Some(soft) = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| open_files_limit(&text))
    else {
        return;
    };
    let limits = &config.limits;
    // The listeners, the admin connections, Redis and the like.
    let needed = (limits.max_connections + limits.max_upstream_connections) as u64 + 64;
    if soft < needed {
        tracing::warn!(
            open_files = soft,
            needed,
            "the open files limit is below --max-connections plus \
             --max-upstream-connections: raise it (ulimit -n, systemd's LimitNOFILE) \
             or lower them"
        );
    }
}

/// Binds both listeners and starts serving. Everything in `config` is
/// already valid; what can still fail is binding a port.
///
/// # Errors
///
/// [`StartError`] when a port cannot be bound or the TLS client cannot be
/// set up.
pub async fn start(config: Config) -> Result<Running, StartError> {
    check_open_files(&config);
    if config.trust_forwarded {
        tracing::warn!(
            "--trust-forwarded is deprecated: it keeps the X-Forwarded-* fields of every \
             peer, so any client can say which address and scheme it came from; give \
             --trusted-proxies with the load balancers' addresses instead"
        );
    }
    let metrics = Arc::new(Metrics::new().map_err(|e| StartError(e.to_string()))?);
    let store = crate::store::from_config(&config).map_err(|e| StartError(e.to_string()))?;
    let layer = Arc::new(
        config
            .policy(PkceLayer::with_store(store))
            .map_err(|e| StartError(e.to_string()))?,
    );
    let forwarder = Forwarder::new(&config, metrics.clone()).map_err(StartError)?;
    let tls = config.tls.as_ref().map(|tls| {
        Arc::new(tls::Reloader::new(
            &tls.cert,
            &tls.key,
            tls.loaded.clone(),
            metrics.clone(),
        ))
    });
    let acceptor = tls
        .as_ref()
        .map(|reloader| reloader.server_config().map(TlsAcceptor::from))
        .transpose()
        .map_err(StartError)?;

    let listener = bind("clients", config.listen).await?;
    let admin = bind("admin", config.admin_listen).await?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError(e.to_string()))?;
    let admin_addr = admin.local_addr().map_err(|e| StartError(e.to_string()))?;

    let upstream_load = forwarder.clone();
    let pkce: ProxyService = layer.layer(forwarder);
    let (stop, stop_rx) = watch::channel(false);
    let limits = &config.limits;
    let clients = Clients {
        proxy_protocol: config
            .proxy_protocol
            .then(|| config.trusted_proxies.clone()),
        settings: h1::server::Settings {
            head_timeout: limits.head_timeout,
            body_timeout: limits.body_timeout,
            send_timeout: limits.send_timeout,
            metrics: metrics.clone(),
            h2: h1::server::H2Settings {
                idle_timeout: limits.h2_idle_timeout,
                keepalive_interval: limits.h2_keepalive_interval,
                keepalive_timeout: limits.h2_keepalive_timeout,
                max_header_list_size: limits.h2_max_header_list_size,
                max_concurrent_streams: limits.h2_max_concurrent_streams,
            },
        },
        max_connections: limits.max_connections,
        shutdown: Arc::new(h1::server::Shutdown::default()),
        tls: acceptor,
    };
    let connections = clients.shutdown.clone();
    let request_buffer = limits.request_buffer;
    let budget = h1::server::Budget::new(limits.request_buffer_total, metrics.clone());
    let buffered = budget.clone();
    let proxy_task = {
        let layer = layer.clone();
        let metrics = metrics.clone();
        let trusted = Arc::new(config.trusted_proxies.clone());
        serve_clients(
            listener,
            stop_rx.clone(),
            config.drain_timeout,
            clients,
            move |peer, may_vouch, scheme| {
                // Each client connection gets its own forwarder: it keeps
                // the upstream connections that connection's requests use.
                let mut pkce = pkce.clone();
                let forwarder = pkce.get_ref().for_connection(peer, may_vouch, scheme);
                *pkce.get_mut() = forwarder;
                let layer = layer.clone();
                let metrics = metrics.clone();
                let budget = budget.clone();
                let peer_ip = peer.ip().to_canonical();
                let vouches = may_vouch && trusted.contains(peer_ip);
                let trusted = trusted.clone();
                move |mut req: Request<ClientBody>| {
                    // Classified once: the layer trusts its own mark, and
                    // the forwarder reads the endpoint the layer passes on.
                    let endpoint = layer.classify(&mut req);
                    if endpoint == Endpoint::Authorize {
                        let client = if vouches {
                            forwarded_client(req.headers(), peer_ip, &trusted)
                        } else {
                            peer_ip
                        };
                        req.extensions_mut().insert(Source::new(client));
                    }
                    let h2 = req.version() == http::Version::HTTP_2;
                    let bodiless = req.method() == Method::HEAD && h2;
                    // HTTP/1.1 that hyper serves, over TLS.
                    let close = !h2 && req.body().is_from_hyper();
                    let mut answer = match screen(&mut req) {
                        Ok(()) if req.body().is_unread() => buffer_then_handle(
                            pkce.clone(),
                            metrics.clone(),
                            endpoint,
                            req,
                            (request_buffer, budget.clone()),
                        ),
                        Ok(()) => handle(pkce.clone(), metrics.clone(), endpoint, req),
                        Err(refused) => refusal(refused, endpoint, metrics.clone(), close),
                    };
                    answer.bodiless = bodiless;
                    answer
                }
            },
        )
    };
    let admin_task = {
        let state = Arc::new(Admin {
            upstream: config.upstream.clone(),
            store: layer.get_store().clone(),
            metrics,
            connections,
            forwarder: upstream_load,
            buffered,
        });
        serve(
            admin,
            stop_rx.clone(),
            config.drain_timeout,
            "admin",
            move |_| {
                let state = state.clone();
                hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(state.answer(req).await) }
                })
            },
        )
    };
    let mut tasks = vec![proxy_task, admin_task];
    if let Some(reloader) = &tls {
        tasks.push(tokio::spawn(check_tls_files(reloader.clone(), stop_rx)));
    }
    tracing::info!(
        %addr,
        %admin_addr,
        tls = tls.is_some(),
        upstream = %format_args!("{}://{}", config.upstream.scheme, config.upstream.authority),
        "pkce-proxy listening"
    );
    Ok(Running {
        addr,
        admin_addr,
        stop,
        tasks,
        tls,
    })
}

/// Checks the listener's certificate files every [`TLS_CHECK_INTERVAL`]
/// until `stop` turns true.
async fn check_tls_files(reloader: Arc<tls::Reloader>, mut stop: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(TLS_CHECK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once; the files were read at start.
    interval.tick().await;
    loop {
        tokio::select! {
            _ = interval.tick() => {
                let reloader = reloader.clone();
                // A read from a stuck network file system must not hold a
                // worker thread.
                if let Err(e) = tokio::task::spawn_blocking(move || reloader.check()).await {
                    tracing::error!(error = %e, "the TLS certificate check failed");
                }
            }
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
        }
    }
}

/// Runs until SIGTERM or SIGINT, then shuts down gracefully. SIGHUP reads
/// the listener's certificate files again.
///
/// # Errors
///
/// [`StartError`] when the proxy cannot start.
pub async fn run(config: Config) -> Result<(), StartError> {
    // Watch the signals before the "listening" line goes out: a SIGTERM sent
    // as soon as it appears must drain, not meet the default disposition.
    let mut signals = Signals::watch();
    let running = start(config).await?;
    while signals.next().await == Signal::Hangup {
        if running.tls.is_some() {
            tracing::info!("SIGHUP: reading the TLS certificate files");
            running.reload_tls().await;
        } else {
            tracing::info!("SIGHUP: no TLS certificate to read again");
        }
    }
    tracing::info!("shutting down: draining requests in flight");
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    /// SIGTERM or SIGINT: shut down.
    Stop,
    /// SIGHUP: read the certificate files again.
    Hangup,
}

/// SIGTERM, SIGINT and SIGHUP, watched from the moment this is made (from
/// then on SIGHUP no longer ends the process, as its default would).
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn watch() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let watch = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch {name}");
                    None
                }
            };
            Self {
                term: watch(SignalKind::terminate(), "SIGTERM"),
                int: watch(SignalKind::interrupt(), "SIGINT"),
                hup: watch(SignalKind::hangup(), "SIGHUP"),
            }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    /// The next signal.
    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            async fn next(signal: &mut Option<tokio::signal::unix::Signal>) {
                match signal {
                    Some(s) => {
                        if s.recv().await.is_none() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = next(&mut self.term) => Signal::Stop,
                () = next(&mut self.int) => Signal::Stop,
                () = next(&mut self.hup) => Signal::Hangup,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Stop
        }
    }
}

/// The admin endpoints' state.
struct Admin {
    upstream: Upstream,
    store: ProxyStore,
    metrics: Arc<Metrics>,
    /// The client connections, counted.
    connections: Arc<h1::server::Shutdown>,
    /// The upstream connections, counted.
    forwarder: Forwarder,
    /// The request bodies read ahead, counted.
    buffered: Arc<h1::server::Budget>,
}

/// A small response with a body and its content type.
pub(crate) fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

impl Admin {
    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_rightmost_untrusted_forwarded_address() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let peer: IpAddr = [10, 0, 0, 1].into();
        let client = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append("x-forwarded-for", v.parse().unwrap());
            }
            forwarded_client(&headers, peer, &trusted).to_string()
        };
        assert_eq!(client(&[]), "10.0.0.1");
        assert_eq!(
            client(&["192.0.2.9, 198.51.100.7, 10.1.1.1"]),
            "198.51.100.7"
        );
        assert_eq!(
            client(&["192.0.2.9", "198.51.100.7 , 10.1.1.1"]),
            "198.51.100.7"
        );
        assert_eq!(client(&["10.2.2.2, 10.1.1.1"]), "10.2.2.2");
        assert_eq!(client(&["::ffff:192.0.2.1"]), "192.0.2.1");
        // Garbage stops the walk at the last trusted hop.
        assert_eq!(client(&["192.0.2.9, junk, 10.1.1.1"]), "10.1.1.1");
        assert_eq!(client(&["junk"]), "10.0.0.1");
    }

    fn request(method: Method, fields: &[(&str, &str)], body: ClientBody) -> Request<ClientBody> {
        let mut req = Request::new(body);
        *req.method_mut() = method;
        for (name, value) in fields {
            req.headers_mut().append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_str(value).unwrap(),
            );
        }
        req
    }

    #[test]
    fn the_open_files_limit_is_read() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63704                63704                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(open_files_limit(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(open_files_limit(unlimited), None);
        assert_eq!(open_files_limit(""), None);
    }

    #[test]
    fn connect_and_bodies_where_the_method_has_none_are_refused() {
        let mut connect = request(Method::CONNECT, &[], ClientBody::empty());
        assert_eq!(
            screen(&mut connect),
            Err(Refused(h1::server::CONNECT_REFUSED, None))
        );
        for method in [
            Method::GET,
            Method::HEAD,
            Method::DELETE,
            Method::OPTIONS,
            Method::TRACE,
        ] {
            let why = h1::server::body_refused(&method).unwrap();
            for (fields, body) in [
                (&[("content-length", "5")][..], ClientBody::empty()),
                (&[], ClientBody::full(Bytes::from_static(b"x"))),
                (
                    &[("content-length", "0"), ("content-length", "1")],
                    ClientBody::empty(),
                ),
                (&[("content-length", "zero")], ClientBody::empty()),
            ] {
                let mut req = request(method.clone(), fields, body);
                assert_eq!(
                    screen(&mut req),
                    Err(Refused(why, None)),
                    "{method} {fields:?}"
                );
            }
            for fields in [&[][..], &[("content-length", "0")]] {
                let mut req = request(method.clone(), fields, ClientBody::empty());
                assert_eq!(screen(&mut req), Ok(()), "{method} {fields:?}");
            }
        }
        let mut post = request(
            Method::POST,
            &[("content-length", "1")],
            ClientBody::full(Bytes::from_static(b"x")),
        );
        assert_eq!(screen(&mut post), Ok(()));
    }

    #[test]
    fn http2_requests_are_held_to_what_http1_checks_in_a_head() {
        use crate::target::{CONTROL_IN_PATH, INVALID_HOST, PATH_NOT_UTF8};
        let h2 = |uri: &str, fields: &[(&str, &str)]| {
            let mut req = request(Method::GET, fields, ClientBody::empty());
            *req.version_mut() = http::Version::HTTP_2;
            *req.uri_mut() = uri.parse().unwrap();
            req
        };
        for (mut req, why) in [
            (h2("http://user@h/x", &[]), INVALID_HOST),
            (h2("http://h/x", &[("host", "a b")]), INVALID_HOST),
            (
                h2("http://h/x", &[("host", "h"), ("host", "h")]),
                "a request needs at most one Host header",
            ),
            (
                h2("http://h/x", &[("host", "other")]),
                "the Host header and :authority name different hosts",
            ),
            (h2("http://h/token%00", &[]), CONTROL_IN_PATH),
            (h2("http://h/%c0%ae", &[]), PATH_NOT_UTF8),
            (
                h2("http://h/x", &[("content-length", "9223372036854775808")]),
                "invalid Content-Length",
            ),
        ] {
            assert_eq!(screen(&mut req), Err(Refused(why, None)), "{req:?}");
        }
        for mut req in [
            h2("http://h/x", &[]),
            h2("http://H:8080/x", &[("host", "h:8080")]),
            h2("/x", &[("host", "[::1]")]),
            h2("http://h/token%3f", &[("content-length", "0")]),
        ] {
            assert_eq!(screen(&mut req), Ok(()), "{req:?}");
        }
        // HTTP/1.1 heads were checked by `http1` already.
        let mut req = request(Method::GET, &[("host", "a b")], ClientBody::empty());
        assert_eq!(screen(&mut req), Ok(()));
    }

    #[test]
    fn connection_may_not_name_a_checked_field_and_names_go_before_the_layer() {
        let mut req = request(
            Method::POST,
            &[
                ("connection", "keep-alive"),
                ("connection", "x-a, Authorization"),
            ],
            ClientBody::empty(),
        );
        assert_eq!(
            screen(&mut req).map_err(|Refused(_, rejection)| rejection),
            Err(Some(Rejection::ConnectionNamesCheckedField))
        );
        let mut req = request(
            Method::GET,
            &[
                ("connection", "x-foo, close"),
                ("x-foo", "1"),
                ("te", "trailers"),
                ("keep-alive", "timeout=5"),
                ("host", "h"),
            ],
            ClientBody::empty(),
        );
        assert_eq!(screen(&mut req), Ok(()));
        let left: Vec<&str> = req.headers().keys().map(http::HeaderName::as_str).collect();
        assert_eq!(left, ["host", "te"]);
    }
}
