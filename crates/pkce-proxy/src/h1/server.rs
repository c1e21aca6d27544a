//! Client connections: HTTP/1.1 served by the proxy itself, HTTP/2 (with
//! prior knowledge) handed to hyper.
//!
//! An HTTP/1.1 connection is one task that reads a request head, calls the
//! handler, and writes the response, then waits for the next head. The
//! request body is read from the same socket by whoever polls it (the
//! upstream client, in the same task), so nothing is spawned and nothing
//! goes through a channel. What the connection does:
//!
//! - Heads: at most [`MAX_HEAD`] bytes (431 beyond) and
//!   [`MAX_FIELDS`](head::MAX_FIELDS) fields, within the head timeout,
//!   which also bounds an idle keep-alive connection. A malformed head gets
//!   400.
//! - Request framing (RFC 9112 §6): `Content-Length`, or `chunked` as the
//!   only transfer coding (501 for others). Both at once, conflicting
//!   lengths, or `Transfer-Encoding` in HTTP/1.0 get 400: each is a way to
//!   smuggle a request past a proxy.
//! - No body where the method has none: a GET, HEAD, DELETE, OPTIONS or
//!   TRACE request with any `Transfer-Encoding` or a `Content-Length` above
//!   zero gets 400 before its body is read (see [`body_refused`]), and
//!   `CONNECT` gets 400: a reverse proxy has no tunnel to offer, and a 405
//!   would owe an `Allow` list of the upstream's methods, which the proxy
//!   does not know.
//! - `Expect: 100-continue`: the interim answer goes out when the body is
//!   first read, never after the final response has started.
//! - Responses: `Content-Length` when the size is known, `chunked`
//!   otherwise (close-delimited for an HTTP/1.0 client), trailers when the
//!   client sent `TE: trailers`, no body after HEAD, 1xx, 204 and 304, and
//!   `Date` when the response has none.
//! - Slow clients: a request body that pauses past the body timeout fails
//!   (on both protocols; see [`ClientBody::buffered`] for the body read
//!   before the request goes on), and a response that the client does not
//!   take for the send timeout closes the connection. Either timer is
//!   armed only when a read or write finds the client not ready.
//! - Keep-alive as RFC 9112 §9.3 has it; the connection closes after a
//!   response whose request body was not read to its end. A closing
//!   connection shuts its write side and reads what the client still sends
//!   for a while (a "lingering close"), so that the client receives the
//!   response instead of a reset.
//! - Shutdown: idle connections close at once, a request in flight gets its
//!   response (with `Connection: close`).
//!
//! The connection loop is here; beside it, `head` parses a request head,
//! `request_body` and `read_ahead` hold the request body, `response`
//! writes the answer, `hyper_conn` serves what hyper serves, and
//! `shutdown` counts the open connections.

mod head;
mod hyper_conn;
mod read_ahead;
mod request_body;
mod response;
mod shutdown;

use std::future::{Future, poll_fn};
use std::io::{self, Write as _};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

pub(crate) use self::head::{CONNECT_REFUSED, body_refused};
use self::head::{Head, Refusal, ends_head, parse_head};
use self::hyper_conn::serve_h2;
pub(crate) use self::hyper_conn::{Protocol, serve_hyper};
pub(crate) use self::read_ahead::Budget;
pub(crate) use self::request_body::is_body_timeout;
use self::request_body::{BodyKind, Inbound, ReadTimer, lock};
pub use self::request_body::{ClientBody, ClientBodyError};
use self::response::{Exchange, encode_date, encode_response_head, encode_status, write_body};
pub(crate) use self::shutdown::{OpenConnection, Shutdown};
use crate::h1::body::Framing;
use crate::h1::common::MAX_HEAD;
use crate::h1::socket::{self, Copies, Inbox, WireError};
pub(crate) use crate::h2::H2Settings;
use crate::metrics::{Limit, Metrics};

/// Response bytes gathered before they are written.
const WRITE_BATCH: usize = 64 * 1024;
/// A write buffer that grew past this is shrunk after its response.
const WRITE_BUFFER_KEPT: usize = 16 * 1024;
/// How long a closing connection reads what the client still sends, at
/// most, and after how long a pause it stops.
const LINGER: Duration = Duration::from_secs(5);
const LINGER_PAUSE: Duration = Duration::from_secs(1);
/// The start of every HTTP/2 connection (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How client connections are served.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// How long a client has to send a request head, counted from when the
    /// connection starts waiting for it; this also closes idle keep-alive
    /// connections.
    pub(crate) head_timeout: Duration,
    /// The longest pause between two reads of a request body.
    pub(crate) body_timeout: Duration,
    /// The longest a response may wait for the client to take more of it.
    pub(crate) send_timeout: Duration,
    /// Where the limits that act are counted.
    pub(crate) metrics: Arc<Metrics>,
    /// For a connection that turns out to be HTTP/2.
    pub(crate) h2: H2Settings,
}

impl Settings {
    /// Settings with this head timeout, for tests; the others at 30 s.
    #[cfg(test)]
    pub(crate) fn for_tests(head_timeout: Duration) -> Self {
        Self {
            head_timeout,
            body_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(30),
            metrics: Arc::new(Metrics::new().unwrap_or_else(|e| unreachable!("{e}"))),
            h2: H2Settings {
                idle_timeout: Duration::from_secs(60),
                keepalive_interval: Duration::from_secs(20),
                keepalive_timeout: Duration::from_secs(20),
                max_header_list_size: 65_536,
                max_concurrent_streams: 100,
            },
        }
    }
}

/// What waiting for a request head ended with.
// Made once per request and moved once: a box would cost more than the size.
#[allow(clippy::large_enum_variant)]
enum Next {
    Request(Head),
    Http2,
    Refuse(Refusal),
    Close,
}

/// One client connection, between requests.
struct Connection {
    stream: Arc<TcpStream>,
    inbox: Inbox,
    copies: Copies,
    out: Vec<u8>,
    written: usize,
    settings: Settings,
    shutdown: Arc<Shutdown>,
    /// Fires at the head timeout; re-armed lazily (see `poll_head`).
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether the shutdown notice will wake this task.
    watching: bool,
    /// How much of a partial head has been searched for its end.
    scanned: usize,
    /// When a response that the client does not read times out, while it
    /// waits (see `poll_flush`), and the timer for it.
    send_deadline: Option<Instant>,
    send_timer: Option<Pin<Box<Sleep>>>,
}

impl Connection {
    /// Waits for the next request head. `first`: an HTTP/2 preface may
    /// come instead.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        stop: Pin<&mut tokio::sync::futures::Notified<'_>>,
        first: bool,
        since: &mut Option<Instant>,
    ) -> Poll<Next> {
        loop {
            let buffered = self.inbox.buffered();
            let n = buffered.len().min(H2_PREFACE.len());
            if first && buffered[..n] == H2_PREFACE[..n] {
                // The start of an HTTP/2 preface, or all of it.
                if n == H2_PREFACE.len() {
                    return Poll::Ready(Next::Http2);
                }
            } else if !buffered.is_empty()
                && (self.scanned == 0 || ends_head(&buffered[self.scanned.saturating_sub(3)..]))
            {
                // A head that came in pieces is parsed again only once its
                // blank line is there: no quadratic work for a slow client.
                match parse_head(buffered, &mut self.copies) {
                    Ok(Some((head, len))) => {
                        self.scanned = 0;
                        self.inbox.consume(len);
                        return Poll::Ready(Next::Request(head));
                    }
                    Ok(None) => self.scanned = buffered.len(),
                    Err(refusal) => return Poll::Ready(Next::Refuse(refusal)),
                }
            } else if !buffered.is_empty() {
                self.scanned = buffered.len();
            }
            if self.inbox.is_empty() && self.shutdown.is_stopping() {
                return Poll::Ready(Next::Close);
            }
            match self.inbox.poll_fill(&mut &*self.stream, cx, MAX_HEAD) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Next::Close),
                Poll::Ready(Ok(_)) => continue,
                Poll::Ready(Err(WireError::Malformed(_))) => {
                    return Poll::Ready(Next::Refuse(Refusal(
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        "the request head is too large",
                    )));
                }
                Poll::Ready(Err(_)) => return Poll::Ready(Next::Close),
                Poll::Pending => {}
            }
            // Nothing to read yet: the shutdown notice and the timer must
            // be able to wake this task.
            if !self.watching {
                self.watching = true;
                if stop.poll(cx).is_ready() && self.inbox.is_empty() {
                    return Poll::Ready(Next::Close);
                }
            }
            let deadline = *since.get_or_insert_with(Instant::now) + self.settings.head_timeout;
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            // One timer per connection: when it fires for an earlier wait,
            // it is moved to this wait's deadline.
            while timer.as_mut().poll(cx).is_ready() {
                if Instant::now() >= deadline {
                    tracing::debug!("no request head within the timeout; closing");
                    // Idle keep-alive connections close this way every day;
                    // a head begun and not finished is what is counted.
                    if !self.inbox.is_empty() {
                        self.settings.metrics.limit_reached(Limit::HeadTimeout);
                    }
                    return Poll::Ready(Next::Close);
                }
                timer.as_mut().reset(deadline);
            }
            return Poll::Pending;
        }
    }

    /// Writes `out` to the client, which has the send timeout to take
    /// more each time its socket is full.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let before = self.written;
        let result =
            socket::poll_write_all(&mut &*self.stream, cx, &mut self.out, &mut self.written);
        if result.is_ready() {
            self.send_deadline = None;
            return result;
        }
        self.poll_send_timeout(cx, before)
    }

    /// A write found the client's socket full, after `before` bytes: the
    /// send timeout runs from the last byte it took. A write that
    /// completes never comes here, nor reads the clock.
    #[cold]
    fn poll_send_timeout(&mut self, cx: &mut Context<'_>, before: usize) -> Poll<io::Result<()>> {
        let deadline = match self.send_deadline {
            Some(deadline) if self.written == before => deadline,
            _ => *self
                .send_deadline
                .insert(Instant::now() + self.settings.send_timeout),
        };
        let timer = self
            .send_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(cx).is_ready() {
            self.settings.metrics.limit_reached(Limit::SendTimeout);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not read the response within the send timeout",
            )));
        }
        Poll::Pending
    }

    async fn flush(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.poll_flush(cx)).await
    }
}

/// Serves one client connection until it closes.
pub(crate) async fn serve_connection<H, F, B>(
    stream: TcpStream,
    handler: H,
    open: OpenConnection,
    settings: Settings,
) where
    H: Fn(Request<ClientBody>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Data: Send,
    B::Error: Into<ClientBodyError> + std::fmt::Display,
{
    let shutdown = open.0.clone();
    let notify = shutdown.clone();
    let mut stop = pin!(notify.stop.notified());
    let mut conn = Connection {
        stream: Arc::new(stream),
        inbox: Inbox::default(),
        copies: Copies::default(),
        out: Vec::with_capacity(1024),
        written: 0,
        settings,
        shutdown,
        timer: None,
        watching: false,
        scanned: 0,
        send_deadline: None,
        send_timer: None,
    };
    let mut first = true;
    // The body of the request being answered, while it is on the wire.
    let mut inbound: Option<Arc<Mutex<Inbound>>> = None;
    let linger = loop {
        let mut since = None;
        let next = poll_fn(|cx| conn.poll_head(cx, stop.as_mut(), first, &mut since)).await;
        let head = match next {
            Next::Request(head) => head,
            Next::Http2 => {
                serve_h2(conn, handler, open).await;
                return;
            }
            Next::Refuse(Refusal(status, why)) => {
                tracing::debug!(%status, why, "refused a request head");
                // The refused head is still in the buffer: an answer to HEAD
                // has no body (RFC 9110 §9.3.2).
                let head = conn.inbox.buffered().starts_with(b"HEAD ");
                refuse(&mut conn, status, why, head).await;
                break true;
            }
            Next::Close => break false,
        };
        first = false;
        let Head {
            request,
            framing,
            keep_alive,
            expect_continue,
            trailers_ok,
        } = head;
        let exchange = Exchange {
            head_request: request.method() == Method::HEAD,
            http10: request.version() == Version::HTTP_10,
            keep_alive,
            trailers_ok,
        };
        let body = match framing {
            Framing::Done => ClientBody::empty(),
            Framing::Length(n) if n <= conn.inbox.buffered().len() as u64 => {
                let n = n as usize;
                let data = conn.copies.copy(&conn.inbox.buffered()[..n]);
                conn.inbox.consume(n);
                ClientBody::full(data)
            }
            framing => {
                let shared = Arc::new(Mutex::new(Inbound {
                    stream: Some(conn.stream.clone()),
                    inbox: conn.inbox.take(),
                    copies: Copies::default(),
                    framing,
                    interim: expect_continue.then_some(0),
                    answered: false,
                    failed: false,
                    waker: None,
                    timer: ReadTimer::new(
                        conn.settings.body_timeout,
                        conn.settings.metrics.clone(),
                    ),
                }));
                inbound = Some(shared.clone());
                ClientBody(BodyKind::Stream(shared))
            }
        };
        let response = handler(request.map(|()| body)).await;
        let (parts, body) = response.into_parts();
        // A request body not read to its end by now may never be: the
        // connection closes after this response, and says so.
        let unread = inbound.as_ref().is_some_and(|inbound| {
            let mut inbound = lock(inbound);
            inbound.answer(&mut conn.out);
            !inbound.is_complete()
        });
        let (outgoing, mut close) = encode_response_head(
            &mut conn.out,
            &parts,
            body.size_hint(),
            &exchange,
            unread || conn.shutdown.is_stopping(),
        );
        drop(parts);
        match write_body(&mut conn, body, outgoing, exchange.trailers_ok).await {
            Ok(whole) => close |= !whole,
            Err(e) => {
                tracing::debug!(error = %e, "writing the response failed");
                break false;
            }
        }
        if let Some(shared) = &inbound {
            let mut body = lock(shared);
            if !body.is_complete() {
                break true;
            }
            conn.inbox = body.inbox.take();
            drop(body);
            inbound = None;
        }
        if close {
            break !conn.inbox.is_empty();
        }
        if conn.out.capacity() > WRITE_BUFFER_KEPT {
            conn.out = Vec::with_capacity(1024);
        }
        conn.inbox.shrink();
    };
    if let Some(shared) = inbound {
        lock(&shared).detach();
    }
    drop(open);
    close(&conn.stream, linger).await;
}

/// Answers a request the connection refuses (without the body, for HEAD),
/// and closes.
async fn refuse(conn: &mut Connection, status: StatusCode, why: &str, head: bool) {
    conn.out.clear();
    conn.written = 0;
    encode_status(&mut conn.out, status);
    encode_date(&mut conn.out);
    let _ = write!(
        conn.out,
        "content-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        why.len() + 1,
    );
    if !head {
        let _ = writeln!(conn.out, "{why}");
    }
    let _ = conn.flush().await;
}

/// Closes the connection: the write side first, then, when `linger` (the
/// client may still be sending), what it sends is read and dropped until
/// it pauses or a few seconds pass, so that closing with unread data does
/// not reset the connection before the client has read the response.
pub(crate) async fn close(stream: &TcpStream, linger: bool) {
    let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
    if !linger {
        return;
    }
    let drain = async {
        let mut scratch = vec![0u8; 16 * 1024];
        loop {
            let read = poll_fn(|cx| socket::poll_read(stream, cx, &mut scratch));
            if !matches!(tokio::time::timeout(LINGER_PAUSE, read).await, Ok(Ok(1..))) {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
