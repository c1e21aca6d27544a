//! Accepting connections: the accept loop both listeners share, the
//! client listener's bound, PROXY protocol and TLS, hyper's server for the
//! admin listener, and the drain at shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::forward::{ClientBody, ClientScheme};
use crate::h1;
use crate::https;
use crate::metrics::Limit;
use crate::proxy_protocol;
use crate::trusted_proxies::TrustedProxies;

use super::BoxError;
use super::start::StartError;

pub(super) async fn bind(what: &str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| StartError(format!("cannot listen for {what} on {addr}: {e}")))
}

/// Hands each connection accepted on `listener` to `connection`, until
/// `stop` turns true; then closes the listener. What both listeners share;
/// each brings its own server.
pub(super) async fn accept_until_stopped(
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
pub(super) async fn drain_within(
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

/// How long a client of the admin listener has to send a request head.
pub(super) const ADMIN_HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// How the client listener serves: its connections' settings, and at most
/// how many it keeps open.
pub(super) struct Clients {
    pub(super) settings: h1::server::Settings,
    pub(super) max_connections: usize,
    /// The peers that send a PROXY protocol header first, when
    /// `--proxy-protocol` is on.
    pub(super) proxy_protocol: Option<TrustedProxies>,
    /// Counts the open connections, and drains them at shutdown.
    pub(super) shutdown: Arc<h1::server::Shutdown>,
    /// Every connection begins with a TLS handshake, when set.
    pub(super) tls: Option<TlsAcceptor>,
}

/// Serves the proxy's clients on `listener` (see `http1`), each connection
/// with the handler `make` builds for its peer, until `stop` turns true;
/// then drains.
///
/// A connection accepted while `max_connections` are open is closed at
/// once: the ones open keep their share, and a client that is turned away
/// learns it at once rather than waiting in the listen queue.
pub(super) fn serve_clients<M, H, F, B>(
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
pub(super) async fn serve_balanced_or_tls<M, H, F, B>(
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
