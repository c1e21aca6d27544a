//! Connections that hyper serves: HTTP/2 (with prior knowledge, or by
//! ALPN), and HTTP/1.1 over TLS, under the same timeouts and limits as the
//! proxy's own HTTP/1.1 server.

use std::convert::Infallible;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::head::MAX_FIELDS;
use super::request_body::{ClientBody, ClientBodyError};
use super::shutdown::OpenConnection;
use super::{Connection, Settings};
use crate::h1::common::MAX_HEAD;
use crate::h2;
use crate::metrics::Limit;

/// Hands the connection to hyper's HTTP/2 server (see [`serve_hyper`]);
/// what was read so far is read again first.
pub(super) async fn serve_h2<H, F, B>(conn: Connection, handler: H, open: OpenConnection)
where
    H: Fn(Request<ClientBody>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Data: Send,
    B::Error: Into<ClientBodyError> + std::fmt::Display,
{
    let Connection {
        stream,
        inbox,
        settings,
        ..
    } = conn;
    let Ok(stream) = Arc::try_unwrap(stream) else {
        return;
    };
    let io = TokioIo::new(Prefixed {
        prefix: Bytes::copy_from_slice(inbox.buffered()),
        stream,
    });
    serve_hyper(
        io,
        Protocol::Http2,
        handler,
        open,
        (settings, Instant::now()),
    )
    .await;
}

/// Which of hyper's servers serves a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// HTTP/1.1 (and 1.0), where the proxy's own server cannot go: over
    /// TLS.
    Http1,
    Http2,
}

/// Serves one connection with hyper until it closes. Every request goes to
/// `handler`, its body under the body timeout.
///
/// hyper bounds HTTP/2's streams, header lists and keep-alive pings, and
/// HTTP/1.1's heads: as many bytes and fields as the proxy's own server
/// allows. The connection closes gracefully, as at shutdown, when no
/// request has been open for the idle timeout (HTTP/2's), or, in HTTP/1.1,
/// when no request head has come within the head timeout (of `started` for
/// the first, as the proxy's own server counts it from the accept, and of
/// the last response after). It closes at once when a response has waited for the client past the
/// send timeout (that client reads no GOAWAY). An idle HTTP/2 close that
/// the client does not acknowledge is cut after the keep-alive timeout; an
/// HTTP/1.1 one, which hyper makes at once unless a head is half read,
/// after [`H1_CLOSE_GRACE`].
pub(crate) async fn serve_hyper<I, H, F, B>(
    io: I,
    protocol: Protocol,
    handler: H,
    open: OpenConnection,
    (settings, started): (Settings, Instant),
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    H: Fn(Request<ClientBody>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Data: Send,
    B::Error: Into<ClientBodyError> + std::fmt::Display,
{
    let handler = Arc::new(handler);
    let watch = h2::Watch::since(started);
    let (body_timeout, metrics) = (settings.body_timeout, settings.metrics.clone());
    let watched = watch.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let stream = h2::Stream::open(&watched);
        let metrics = metrics.clone();
        let answer = (*handler)(req.map(|body| ClientBody::hyper(body, body_timeout, metrics)));
        async move {
            let response = answer.await;
            Ok::<_, Infallible>(response.map(|body| h2::Watched::new(body, stream)))
        }
    });
    let limits = settings.h2;
    match protocol {
        Protocol::Http2 => {
            let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(limits.keepalive_interval)
                .keep_alive_timeout(limits.keepalive_timeout)
                .max_header_list_size(limits.max_header_list_size)
                .max_concurrent_streams(limits.max_concurrent_streams)
                .serve_connection(io, service);
            let graceful = hyper::server::conn::http2::Connection::graceful_shutdown;
            let idle = (limits.idle_timeout, limits.keepalive_timeout);
            watch_served(served, graceful, &watch, idle, open, &settings).await;
        }
        Protocol::Http1 => {
            let grace = settings.head_timeout.min(H1_CLOSE_GRACE);
            // hyper's own head timeout, which drops the connection without
            // a TLS close_notify, only backs up the graceful close.
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(settings.head_timeout + grace)
                .max_buf_size(MAX_HEAD)
                .max_header_size(MAX_HEAD)
                .max_headers(MAX_FIELDS)
                .keep_alive(true)
                .half_close(false)
                .serve_connection(io, service);
            let graceful = hyper::server::conn::http1::Connection::graceful_shutdown;
            let idle = (settings.head_timeout, grace);
            watch_served(served, graceful, &watch, idle, open, &settings).await;
        }
    }
}

/// How long an HTTP/1.1 connection that hyper serves may take to close
/// once its idle close has begun (at most the head timeout): hyper closes
/// an idle one at once, and waits for a head begun and not finished, which
/// must not hold the connection much past the head timeout.
const H1_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Drives a connection that hyper serves (see [`serve_hyper`]) until it
/// ends, is idle past `idle_timeout` (then given `close_bound` to close),
/// or stalls past the send timeout; `graceful` starts its graceful close,
/// at shutdown and when idle.
async fn watch_served<C>(
    served: C,
    graceful: fn(Pin<&mut C>),
    watch: &h2::Watch,
    (idle_timeout, close_bound): (Duration, Duration),
    open: OpenConnection,
    settings: &Settings,
) where
    C: Future<Output = hyper::Result<()>>,
{
    let shutdown = open.0.clone();
    let mut served = pin!(served);
    let stop = shutdown.stop.notified();
    let mut stop = pin!(stop);
    stop.as_mut().enable();
    let mut stopping = false;
    if shutdown.is_stopping() {
        graceful(served.as_mut());
        stopping = true;
    }
    let tick = (settings.send_timeout / 2).max(Duration::from_millis(5));
    let mut stall = pin!(tokio::time::sleep(tick));
    // The idle timer, then, once the idle close has begun, its bound.
    let mut idle = pin!(tokio::time::sleep(idle_timeout));
    let mut closing = false;
    let result = loop {
        tokio::select! {
            result = served.as_mut() => break result,
            () = stop.as_mut(), if !stopping => {
                stopping = true;
                graceful(served.as_mut());
            }
            () = idle.as_mut() => match watch.idle_deadline(idle_timeout) {
                _ if closing => break Ok(()),
                Some(deadline) if deadline <= Instant::now() => {
                    tracing::debug!("connection idle past the idle timeout; closing");
                    closing = true;
                    if !stopping {
                        graceful(served.as_mut());
                    }
                    idle.as_mut().reset(Instant::now() + close_bound);
                }
                Some(deadline) => idle.as_mut().reset(deadline),
                None => idle.as_mut().reset(Instant::now() + idle_timeout),
            },
            () = stall.as_mut() => {
                if watch.tick() {
                    tracing::debug!("a response waited past the send timeout; closing");
                    settings.metrics.limit_reached(Limit::SendTimeout);
                    break Ok(());
                }
                stall.as_mut().reset(Instant::now() + tick);
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection served by hyper closed with an error");
    }
    drop(open);
}

/// A stream with bytes already read from it in front.
struct Prefixed {
    prefix: Bytes,
    stream: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
