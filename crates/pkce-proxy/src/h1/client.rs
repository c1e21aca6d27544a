//! HTTP/1.1 to the upstream, over plain TCP or TLS, run inside the client
//! connection's own task.
//!
//! A request is written and its response read by the future that asked for
//! it, and the response body is read by whoever polls it: no task per
//! upstream connection, no channel between the two. The request body keeps
//! streaming while the response comes back, so an upstream that answers
//! before it has read the whole request (or echoes it) is served as with a
//! full-duplex client.
//!
//! Framing follows RFC 9112: `Content-Length` or `chunked` (with trailers)
//! on both sides, and a response delimited by the connection's close. A
//! connection is kept for the next request only when both messages were
//! complete, the whole request was written before the response began, the
//! upstream spoke HTTP/1.1 without `Connection: close`, and the request's
//! [`Reuse`] allows it: the forwarder decides that by
//! `forward::rewrite::reusable_after` (a request with a body whose leftovers could
//! become a request, a HEAD whose answer may bring a body late), and a
//! request that never allows it tells the upstream `Connection: close`. A request is written again, once, on a new
//! connection only when it never left the proxy or has no body and an
//! idempotent method ([`Exchange::into_retry`]).
//!
//! The connection and its exchange are here; beside them, `request`
//! writes the request, `head` parses the response head, and
//! `response_body` reads the body and gives the connection back.

mod head;
mod request;
mod response_body;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};

use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tower_pkce::RequestBody;

use self::head::{HEAD_TOO_LARGE, Head, parse_head};
pub(crate) use self::request::HeaderOverrides;
use self::request::{Outgoing, encode_head, poll_send};
use self::response_body::ResponseStream;
pub use self::response_body::{UpstreamBody, UpstreamBodyError};
use super::server::{ClientBody, ClientBodyError};
use crate::gate::Slot;
use crate::h1::body::encode_end;
use crate::h1::common::MAX_HEAD;
use crate::h1::socket::{self, Copies, Inbox, Socket, WireError};

/// The request body the forwarder sends.
pub(crate) type OutgoingBody = RequestBody<ClientBody>;
/// Request bytes gathered before they are written.
const WRITE_BATCH: usize = 64 * 1024;
/// A write buffer that grew past this is shrunk after its exchange.
const WRITE_BUFFER_KEPT: usize = 16 * 1024;

/// Why an exchange with the upstream failed.
#[derive(Debug)]
pub(crate) enum Http1Error {
    /// Reading from or writing to the upstream failed.
    Io(io::Error),
    /// The upstream closed the connection before its response was complete.
    Closed,
    /// The upstream's response breaks HTTP/1.1.
    Malformed(&'static str),
    /// The client's request body failed while it was being sent.
    RequestBody(ClientBodyError),
}

impl From<WireError> for Http1Error {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Io(e) => Self::Io(e),
            WireError::Closed => Self::Closed,
            WireError::Malformed(why) => Self::Malformed(why),
        }
    }
}

impl std::fmt::Display for Http1Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "upstream connection failed: {e}"),
            Self::Closed => {
                f.write_str("the upstream closed the connection before its response ended")
            }
            Self::Malformed(why) => write!(f, "invalid response from the upstream: {why}"),
            Self::RequestBody(e) => write!(f, "the request body failed: {e}"),
        }
    }
}

impl std::error::Error for Http1Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            Self::RequestBody(e) => Some(&**e),
            Self::Closed | Self::Malformed(_) => None,
        }
    }
}

/// The stream of a connection to the upstream.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Socket for Stream {
    fn poll_read_some(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self {
            Self::Plain(tcp) => socket::poll_read(tcp, cx, buf),
            Self::Tls(tls) => {
                let mut buf = ReadBuf::new(buf);
                ready!(Pin::new(&mut **tls).poll_read(cx, &mut buf))?;
                Poll::Ready(Ok(buf.filled().len()))
            }
        }
    }

    fn poll_write_some(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self {
            Self::Plain(tcp) => (&*tcp).poll_write_some(cx, buf),
            Self::Tls(tls) => Pin::new(&mut **tls).poll_write(cx, buf),
        }
    }

    fn poll_flush_written(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Self::Plain(_) => Poll::Ready(Ok(())),
            Self::Tls(tls) => Pin::new(&mut **tls).poll_flush(cx),
        }
    }
}

impl Stream {
    /// Whether an idle connection's upstream has neither closed it nor
    /// sent anything since its last response. A plain socket with no
    /// readable event pending needs no system call to tell. A TLS session
    /// is always read: bytes the upstream sent past its response may sit
    /// decrypted in rustls, out of the socket, where readiness does not
    /// show them, and would be read as the next request's answer. What the
    /// read consumes that carries no data (a TLS 1.3 session ticket) is
    /// fine to lose.
    fn is_quiet(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = [0u8; 1];
        match self {
            Self::Plain(tcp) => match tcp.poll_read_ready(&mut cx) {
                Poll::Pending => true,
                Poll::Ready(Err(_)) => false,
                Poll::Ready(Ok(())) => {
                    matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
                }
            },
            Self::Tls(_) => Socket::poll_read_some(self, &mut cx, &mut probe).is_pending(),
        }
    }
}

/// An open HTTP/1.1 connection to the upstream, with its buffers.
pub(crate) struct Connection {
    stream: Stream,
    inbox: Inbox,
    copies: Copies,
    out: Vec<u8>,
    written: usize,
    /// The kernel took at least one byte of the current request.
    wrote: bool,
    /// Its place among the upstream connections open, given up when the
    /// connection closes.
    _slot: Slot,
}

impl Connection {
    /// A connection on `stream`, holding `slot`, boxed: it moves from the
    /// pool to a request and on to its response body, a pointer's worth
    /// each time.
    pub(crate) fn new(stream: Stream, slot: Slot) -> Box<Self> {
        Box::new(Self {
            stream,
            inbox: Inbox::default(),
            copies: Copies::default(),
            out: Vec::with_capacity(1024),
            written: 0,
            wrote: false,
            _slot: slot,
        })
    }

    /// The write buffer, for the next request to be written into: a reused
    /// connection keeps its allocation.
    pub(crate) fn take_buffer(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Whether an idle connection can take a request: the upstream has not
    /// closed it nor sent anything since its last response.
    pub(crate) fn is_usable(&mut self) -> bool {
        self.inbox.is_empty() && self.stream.is_quiet()
    }

    /// Reads more for a response that is not complete.
    fn poll_more(&mut self, cx: &mut Context<'_>, limit: usize) -> Poll<Result<(), Http1Error>> {
        self.inbox
            .poll_more(&mut self.stream, cx, limit)
            .map_err(Http1Error::from)
    }

    /// Writes what is in the output buffer, and empties it unless `keep`.
    fn poll_flush_out(&mut self, cx: &mut Context<'_>, keep: bool) -> Poll<io::Result<()>> {
        let (before, pending) = (self.written, self.written < self.out.len());
        let result = if keep {
            socket::poll_write_kept(&mut self.stream, cx, &self.out, &mut self.written)
        } else {
            socket::poll_write_all(&mut self.stream, cx, &mut self.out, &mut self.written)
        };
        // A whole write empties the buffer (`written` back to 0): progress
        // shows in the result then, not in the count. A TLS write that
        // fails may have sent records of what rustls took before it did,
        // and does not say how much: any attempt counts as sent.
        let tls = matches!(self.stream, Stream::Tls(_));
        if pending && (tls || self.written != before || matches!(result, Poll::Ready(Ok(())))) {
            self.wrote = true;
        }
        result
    }

    fn finish_exchange(&mut self) {
        if self.out.capacity() > WRITE_BUFFER_KEPT {
            self.out = Vec::with_capacity(1024);
        }
        self.inbox.shrink();
    }
}

/// Where a connection goes when its exchange ended cleanly.
pub(crate) trait Keep: Send + Sync {
    /// Takes back a connection ready for another request.
    fn keep(&self, conn: Box<Connection>);

    /// The request that held a share of the client connection's upstream
    /// connections is done with it.
    fn release(&self) {}
}

/// A request's claim on its client connection: where its upstream
/// connection goes back, and its share of that client connection's
/// upstream connections, released when the claim is dropped: once the
/// connection is back (or closed), or the request given up.
pub(crate) struct Home(pub(super) Arc<dyn Keep>);

impl Home {
    /// A claim on `keep`, whose share is already taken.
    pub(crate) fn new(keep: Arc<dyn Keep>) -> Self {
        Self(keep)
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// Whether an upstream connection may take another request after this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reuse {
    /// When both messages ended cleanly.
    Clean,
    /// Only after a 2xx answer as well: an upstream that did the work read
    /// the whole request (see `forward::rewrite::reusable_after`).
    Succeeded,
    /// Never: the upstream is told `Connection: close`.
    Never,
}

/// A request encoded for the upstream and not yet on a connection: what
/// goes on a new connection, or again on another one when a reused
/// connection turns out to be closed.
pub(crate) struct Prepared {
    out: Vec<u8>,
    outgoing: Option<Outgoing>,
    method: Method,
    home: Home,
    reuse: Reuse,
}

impl Prepared {
    /// `req` written into `buf`, with `overrides`. `home` takes the
    /// connection back once the exchange is over, when `reuse` allows it
    /// (see `forward::rewrite::reusable_after`).
    pub(crate) fn new(
        mut buf: Vec<u8>,
        req: Request<OutgoingBody>,
        overrides: &HeaderOverrides,
        home: Home,
        reuse: Reuse,
    ) -> Self {
        let (parts, body) = req.into_parts();
        buf.clear();
        let chunked = encode_head(&mut buf, &parts, overrides, &body, reuse == Reuse::Never);
        // A body known to be empty is not kept: the whole request is in
        // the buffer, its end too (if chunked), and can be sent again.
        let outgoing = match chunked {
            Some(chunked) if !body.is_end_stream() => Some(Outgoing { body, chunked }),
            Some(true) => {
                encode_end(&mut buf, None);
                None
            }
            Some(false) | None => None,
        };
        Self {
            out: buf,
            outgoing,
            method: parts.method,
            home,
            reuse,
        }
    }

    /// Starts the exchange on `conn`.
    pub(crate) fn send_on(self, mut conn: Box<Connection>) -> Exchange {
        conn.out = self.out;
        conn.written = 0;
        conn.wrote = false;
        Exchange {
            replayable: self.outgoing.is_none(),
            conn,
            outgoing: self.outgoing,
            sent: false,
            early: false,
            method: self.method,
            home: self.home,
            reuse: self.reuse,
        }
    }
}

/// A request to send again, on a new connection, after the reused one it
/// went on failed.
pub(crate) struct Retry {
    /// The request, as it was to be written.
    pub(crate) request: Prepared,
    /// No byte of it left the proxy.
    pub(crate) unsent: bool,
}

/// Whether a request with `method` and no body may be sent twice with the
/// effect of once (RFC 9110 §9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// One request being sent on a connection of the proxy's own, and its
/// response head being read.
pub(crate) struct Exchange {
    conn: Box<Connection>,
    outgoing: Option<Outgoing>,
    /// The whole request is in the connection's buffer: no body streams.
    replayable: bool,
    sent: bool,
    /// An answer began before the whole request was written.
    early: bool,
    method: Method,
    home: Home,
    reuse: Reuse,
}

impl Exchange {
    /// Writes the request and reads until the response head is complete.
    pub(crate) fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<Head, Http1Error>> {
        let mut write_error = None;
        if !self.sent {
            match poll_send(&mut self.conn, &mut self.outgoing, cx) {
                Poll::Ready(Ok(())) => {
                    self.sent = true;
                    // Part of an answer was read already: it began before
                    // the request was whole.
                    self.early = !self.conn.inbox.is_empty();
                }
                // The client's framing error is the answer, whatever the
                // upstream made of the request cut short (and this
                // connection, holding half a request, is dropped).
                Poll::Ready(Err(e @ Http1Error::RequestBody(_))) => return Poll::Ready(Err(e)),
                Poll::Ready(Err(e)) => write_error = Some(e),
                Poll::Pending => {}
            }
        }
        loop {
            if let Some(head) = parse_head(&mut self.conn, &self.method)? {
                if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS
                {
                    continue;
                }
                if head.status == StatusCode::SWITCHING_PROTOCOLS {
                    return Poll::Ready(Err(Http1Error::Malformed(
                        "the upstream switched protocols",
                    )));
                }
                return Poll::Ready(Ok(head));
            }
            // A write that failed may still leave a response to read.
            if let Some(e) = write_error.take() {
                return Poll::Ready(Err(e));
            }
            ready!(self.conn.poll_more(cx, MAX_HEAD)).map_err(|e| match e {
                Http1Error::Malformed(_) => Http1Error::Malformed(HEAD_TOO_LARGE),
                e => e,
            })?;
        }
    }

    /// The response that `head` starts; its body is read from the
    /// connection as it is polled, and the rest of the request written.
    pub(crate) fn into_response(self, head: Head) -> Response<UpstreamBody> {
        let mut stream = ResponseStream {
            conn: Some(self.conn),
            outgoing: if self.sent { None } else { self.outgoing },
            framing: head.framing,
            // An answer before the whole request was written: the upstream
            // may not read the rest, which would then wait on the
            // connection in front of the next request.
            keep_alive: head.keep_alive
                && self.sent
                && !self.early
                && match self.reuse {
                    Reuse::Clean => true,
                    Reuse::Succeeded => head.status.is_success(),
                    Reuse::Never => false,
                },
            home: Some(self.home),
        };
        stream.release_if_done();
        let mut response = Response::new(UpstreamBody(stream));
        *response.status_mut() = head.status;
        *response.version_mut() = head.version;
        *response.headers_mut() = head.headers;
        response
    }

    /// After `error` on a connection that served a request before (the
    /// upstream may have closed it just then), the request again, for a new
    /// connection: only when nothing of a response arrived, the connection
    /// failed (not the answer's form nor the request's body), and either
    /// no byte of the request was taken by the kernel, or the request has
    /// no body and an idempotent method. Anything else may have been acted
    /// on: a POST sent twice is two POSTs.
    pub(crate) fn into_retry(mut self, error: &Http1Error) -> Option<Retry> {
        if !self.conn.inbox.is_empty() || !matches!(error, Http1Error::Io(_) | Http1Error::Closed) {
            return None;
        }
        let unsent = !self.conn.wrote;
        let idempotent = self.replayable && is_idempotent(&self.method);
        if !(unsent || idempotent) {
            return None;
        }
        // Unsent, the buffer holds all that was taken of the body so far,
        // and `outgoing` the rest; sent, the whole request is in it.
        let request = Prepared {
            out: std::mem::take(&mut self.conn.out),
            outgoing: self.outgoing,
            method: self.method,
            home: self.home,
            reuse: self.reuse,
        };
        Some(Retry { request, unsent })
    }
}

#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::future::poll_fn;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A home that drops what it is given.
    struct Nowhere;

    impl Keep for Nowhere {
        fn keep(&self, _: Box<Connection>) {}
    }

    fn prepared(method: Method) -> Prepared {
        Prepared {
            out: format!("{method} /x HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
                .into_bytes(),
            outgoing: None,
            method,
            home: Home::new(Arc::new(Nowhere)),
            reuse: Reuse::Clean,
        }
    }

    /// The proxy's end of a connection, and the upstream's.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (theirs, _) = listener.accept().await.unwrap();
        (ours, theirs)
    }

    /// Sends `method`'s request on a connection whose upstream end does
    /// `then` first; what the retry rule makes of the failure.
    async fn retry_after<F, Fut>(method: Method, then: F) -> Option<bool>
    where
        F: FnOnce(TcpStream) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let (ours, theirs) = pair().await;
        then(theirs).await;
        let mut exchange =
            prepared(method).send_on(Connection::new(Stream::Plain(ours), Slot::uncounted()));
        let e = poll_fn(|cx| exchange.poll_head(cx))
            .await
            .err()
            .expect("no answer");
        exchange.into_retry(&e).map(|retry| retry.unsent)
    }

    /// The upstream resets the connection before the request comes: no
    /// byte of it can leave.
    async fn reset(theirs: TcpStream) {
        socket2::SockRef::from(&theirs)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(theirs);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// The upstream reads the request, then closes without an answer.
    async fn read_and_close(mut theirs: TcpStream) {
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = theirs.read(&mut buf).await;
        });
    }

    /// The upstream starts an answer, then closes.
    async fn answer_in_part(mut theirs: TcpStream) {
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = theirs.read(&mut buf).await;
            let _ = theirs.write_all(b"HTTP/1.1 200 OK\r\n").await;
        });
    }

    #[tokio::test]
    async fn a_request_is_sent_again_only_when_that_is_safe() {
        // Nothing left the proxy: any request may go again.
        for method in [Method::POST, Method::PATCH, Method::GET] {
            assert_eq!(
                retry_after(method.clone(), reset).await,
                Some(true),
                "{method}"
            );
        }
        // Sent, and dropped unanswered: only an idempotent one goes again.
        for (method, again) in [
            (Method::GET, true),
            (Method::HEAD, true),
            (Method::OPTIONS, true),
            (Method::TRACE, true),
            (Method::PUT, true),
            (Method::DELETE, true),
            (Method::POST, false),
            (Method::PATCH, false),
        ] {
            let retry = retry_after(method.clone(), read_and_close).await;
            assert_eq!(retry, again.then_some(false), "{method}");
        }
        // Part of an answer came: the request was acted on.
        assert_eq!(retry_after(Method::GET, answer_in_part).await, None);
    }
}
