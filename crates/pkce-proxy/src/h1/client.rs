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
//! `forward::reusable_after` (a request with a body whose leftovers could
//! become a request, a HEAD whose answer may bring a body late), and a
//! request that never allows it tells the upstream `Connection: close`. A request is written again, once, on a new
//! connection only when it never left the proxy or has no body and an
//! idempotent method ([`Exchange::into_retry`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tower_pkce::RequestBody;

use super::body::{
    self as wire, Copies, Framing, Inbox, MAX_HEAD, encode_data, encode_end, encode_field,
};
use super::server::ClientBody;
use crate::gate::Slot;

/// The request body the forwarder sends.
pub(crate) type OutgoingBody = RequestBody<ClientBody>;

/// The most header fields in a response head (hyper's pooled client, for
/// an HTTPS upstream, takes as many).
pub(crate) const MAX_HEADERS: usize = 128;
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
    RequestBody(super::server::ClientBodyError),
}

impl From<wire::WireError> for Http1Error {
    fn from(e: wire::WireError) -> Self {
        match e {
            wire::WireError::Io(e) => Self::Io(e),
            wire::WireError::Closed => Self::Closed,
            wire::WireError::Malformed(why) => Self::Malformed(why),
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

impl wire::Socket for Stream {
    fn poll_read_some(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self {
            Self::Plain(tcp) => wire::poll_read(tcp, cx, buf),
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
            Self::Tls(_) => wire::Socket::poll_read_some(self, &mut cx, &mut probe).is_pending(),
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
            wire::poll_write_kept(&mut self.stream, cx, &self.out, &mut self.written)
        } else {
            wire::poll_write_all(&mut self.stream, cx, &mut self.out, &mut self.written)
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

/// Header fields the proxy sets as the request is written: each replaces
/// the request's own fields of that name, or removes them (`None`). Up to
/// four, kept inline.
#[derive(Debug, Default)]
pub(crate) struct HeaderOverrides {
    fields: [Option<(HeaderName, Option<HeaderValue>)>; 4],
}

impl HeaderOverrides {
    /// Sets `name` to `value`, or removes it for `None`. A fifth name is
    /// not kept: the proxy sets four at most.
    pub(crate) fn set(&mut self, name: HeaderName, value: Option<HeaderValue>) {
        if let Some(slot) = self.fields.iter_mut().find(|f| f.is_none()) {
            *slot = Some((name, value));
        }
    }

    fn iter(&self) -> impl Iterator<Item = &(HeaderName, Option<HeaderValue>)> {
        self.fields.iter().flatten()
    }

    fn replaces(&self, name: &HeaderName) -> bool {
        self.iter().any(|(n, _)| n == name)
    }
}

/// The request as it is written: the rest of its body, and how it is framed.
struct Outgoing {
    body: OutgoingBody,
    chunked: bool,
}

/// How the request body is framed, from its size hint: `Content-Length`
/// when the size is known, `chunked` otherwise. `None`: no body and no
/// `Content-Length` needed.
fn request_length(method: &Method, body: &OutgoingBody, had_length: bool) -> Option<Option<u64>> {
    match body.size_hint().exact() {
        Some(0)
            if !had_length
                && matches!(
                    *method,
                    Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE
                ) =>
        {
            None
        }
        Some(n) => Some(Some(n)),
        None => Some(None),
    }
}

/// Writes the request line and header fields of `parts` into `out`, with
/// the framing header and, when `close`, `Connection: close`; returns how
/// the body is to be written.
fn encode_head(
    out: &mut Vec<u8>,
    parts: &http::request::Parts,
    overrides: &HeaderOverrides,
    body: &OutgoingBody,
    close: bool,
) -> Option<bool> {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    // An absolute target with no path (`http://host?x=1`) keeps a path and
    // query that start at the `?`; its origin form has the path `/`
    // (RFC 9112 §3.2.1, RFC 3986 §6.2.3).
    if !target.starts_with('/') && target != "*" {
        out.push(b'/');
    }
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut had_length = false;
    for (name, value) in &parts.headers {
        // The framing is the proxy's own: the body may have been rewritten.
        if name == header::CONTENT_LENGTH {
            had_length = true;
            continue;
        }
        if name == header::TRANSFER_ENCODING || overrides.replaces(name) {
            continue;
        }
        encode_field(out, name, value);
    }
    for (name, value) in overrides.iter() {
        if let Some(value) = value {
            encode_field(out, name, value);
        }
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    let chunked = match request_length(&parts.method, body, had_length) {
        None => None,
        Some(Some(n)) => {
            wire::encode_content_length(out, n);
            Some(false)
        }
        Some(None) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Some(true)
        }
    };
    out.extend_from_slice(b"\r\n");
    chunked
}

/// Moves the request along: takes what the body has ready, and writes.
/// `Ready(Ok(()))` once the whole request is written; the request is then
/// dropped from `outgoing`.
fn poll_send(
    conn: &mut Connection,
    outgoing: &mut Option<Outgoing>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), Http1Error>> {
    // A request with no body left to stream stays in the buffer once
    // written, so that it can be sent again on another connection.
    let keep = outgoing.is_none();
    loop {
        let mut body_pending = false;
        if let Some(request) = outgoing.as_mut() {
            while conn.out.len() - conn.written < WRITE_BATCH {
                match Pin::new(&mut request.body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => encode_data(&mut conn.out, &data, request.chunked),
                        // Request trailers are dropped (see `WithoutTrailers`).
                        Err(_) => {
                            if request.chunked {
                                encode_end(&mut conn.out, None);
                            }
                            *outgoing = None;
                            break;
                        }
                    },
                    Poll::Ready(None) => {
                        if request.chunked {
                            encode_end(&mut conn.out, None);
                        }
                        *outgoing = None;
                        break;
                    }
                    Poll::Ready(Some(Err(e))) => {
                        return Poll::Ready(Err(Http1Error::RequestBody(e)));
                    }
                    Poll::Pending => {
                        body_pending = true;
                        break;
                    }
                }
            }
        }
        let had_output = conn.written < conn.out.len();
        ready!(conn.poll_flush_out(cx, keep)).map_err(Http1Error::Io)?;
        if outgoing.is_none() {
            return Poll::Ready(Ok(()));
        }
        if body_pending && !had_output {
            return Poll::Pending;
        }
    }
}

/// A response head, and what is needed to read its body.
pub(crate) struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
}

/// Parses a response head at the front of `conn`'s buffer: `None` when more
/// bytes are needed.
fn parse_head(conn: &mut Connection, method: &Method) -> Result<Option<Head>, Http1Error> {
    if conn.inbox.is_empty() {
        return Ok(None);
    }
    // Most heads are small: a short array first, which is cheap to set up.
    let mut few = [httparse::EMPTY_HEADER; FEW_HEADERS];
    let parsed = match parse_head_with(conn.inbox.buffered(), method, &mut few, &mut conn.copies) {
        Err(Http1Error::Malformed(TOO_MANY_HEADERS)) => {
            let mut many = [httparse::EMPTY_HEADER; MAX_HEADERS];
            parse_head_with(conn.inbox.buffered(), method, &mut many, &mut conn.copies)
        }
        parsed => parsed,
    };
    Ok(parsed?.map(|(head, len)| {
        conn.inbox.consume(len);
        head
    }))
}

const FEW_HEADERS: usize = 24;
/// The limits a response head can break, named in the log of its 502.
const TOO_MANY_HEADERS: &str = "the response head has more than 128 header fields";
const HEAD_TOO_LARGE: &str = "the response head is larger than 64 KiB";

/// Parses a head at the front of `buffered` into `fields`; with its length.
fn parse_head_with<'b>(
    buffered: &'b [u8],
    method: &Method,
    fields: &mut [httparse::Header<'b>],
    copies: &mut Copies,
) -> Result<Option<(Head, usize)>, Http1Error> {
    let mut response = httparse::Response::new(fields);
    let len = match response.parse(buffered) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Http1Error::Malformed(TOO_MANY_HEADERS));
        }
        Err(_) => return Err(Http1Error::Malformed("unparsable response head")),
    };
    let status = response
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| Http1Error::Malformed("invalid status code"))?;
    let version = if response.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let head = wire::HeadCopy::new(buffered, len, copies);
    let mut headers = HeaderMap::with_capacity(response.headers.len() + wire::HEADER_ROOM);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut close = false;
    for field in response.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| Http1Error::Malformed("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.share(field.value))
            .map_err(|_| Http1Error::Malformed("invalid header value"))?;
        if name == header::CONTENT_LENGTH {
            let n = wire::parse_length(value.as_bytes())
                .ok_or(Http1Error::Malformed("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(Http1Error::Malformed("conflicting Content-Length values"));
            }
            length = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            transfer_encoding = true;
            // Only the last coding decides: `chunked` must come last.
            chunked = wire::ends_chunked(value.as_bytes());
        } else if name == header::CONNECTION {
            close |= wire::has_token(value.as_bytes(), b"close");
        }
        headers.append(name, value);
    }
    let bodiless = *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless {
        Framing::Done
    } else if transfer_encoding && version == Version::HTTP_10 {
        // RFC 9112 §6.1: HTTP/1.0 has no transfer coding; its framing is
        // faulty whatever the field says (hyper refuses it too).
        return Err(Http1Error::Malformed(
            "Transfer-Encoding in an HTTP/1.0 response",
        ));
    } else if transfer_encoding {
        // The coding replaces any length (RFC 9112 §6.3), and the length
        // must not go on with a body the server re-frames.
        headers.remove(header::CONTENT_LENGTH);
        if chunked {
            Framing::ChunkSize
        } else {
            Framing::UntilClose
        }
    } else if let Some(n) = length {
        Framing::length(n)
    } else {
        Framing::UntilClose
    };
    let keep_alive = version == Version::HTTP_11 && !close && framing != Framing::UntilClose;
    Ok(Some((
        Head {
            status,
            version,
            headers,
            framing,
            keep_alive,
        },
        len,
    )))
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
pub(crate) struct Home(Arc<dyn Keep>);

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
    /// the whole request (see `forward::reusable_after`).
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
    /// (see `forward::reusable_after`).
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

/// The upstream's response body on a connection of the proxy's own, read
/// as it is polled; the rest of the request is written meanwhile.
struct ResponseStream {
    conn: Option<Box<Connection>>,
    outgoing: Option<Outgoing>,
    framing: Framing,
    keep_alive: bool,
    home: Option<Home>,
}

impl ResponseStream {
    /// Gives the connection back once both messages are complete.
    fn release_if_done(&mut self) {
        if self.framing != Framing::Done {
            return;
        }
        let home = self.home.take();
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if self.keep_alive && self.outgoing.is_none() && conn.inbox.is_empty() {
            conn.finish_exchange();
            if let Some(home) = &home {
                home.0.keep(conn);
            }
        }
    }

    fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Http1Error>>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        if self.outgoing.is_some() {
            match poll_send(conn, &mut self.outgoing, cx) {
                Poll::Ready(Ok(())) | Poll::Pending => {}
                // The client's body broke after the answer began: the
                // answer is cut (its client connection closes), and so is
                // this connection, which holds half a request.
                Poll::Ready(Err(e @ Http1Error::RequestBody(_))) => {
                    self.conn = None;
                    self.outgoing = None;
                    self.framing = Framing::Done;
                    return Poll::Ready(Some(Err(e)));
                }
                // The upstream stopped reading; its response may still be
                // whole, but the connection is not used again.
                Poll::Ready(Err(_)) => {
                    self.outgoing = None;
                    self.keep_alive = false;
                }
            }
        }
        match ready!(wire::read_frame(
            &mut conn.inbox,
            &mut conn.copies,
            &mut conn.stream,
            &mut self.framing,
            cx
        )) {
            Ok(frame) => {
                self.release_if_done();
                Poll::Ready(frame.map(Ok))
            }
            Err(e) => {
                self.conn = None;
                self.outgoing = None;
                self.framing = Framing::Done;
                Poll::Ready(Some(Err(e.into())))
            }
        }
    }
}

/// Whether a response trailer field is passed on to the client: only those
/// defined for trailers and harmless there (RFC 9110 §6.5.1): integrity
/// digests (`Content-Digest`, `Repr-Digest`, the older `Digest`),
/// `Server-Timing`, and gRPC's status fields. Everything else is dropped:
/// framing (`Content-Length`, `Transfer-Encoding`), routing and control
/// (`Host`, `Location`, `Refresh`, `Cache-Control`, `Set-Cookie`, ...),
/// authentication, content coding and type, hop-by-hop fields, and any
/// field the proxy does not know, which a client merging trailers into the
/// header section might act on. The PKCE layer reads a response's header
/// section for a code; a trailer it never read must not deliver one.
/// `ETag` is dropped too: no definition lets a cache merge it from a
/// trailer, so a validator there is at best ignored.
fn allowed_trailer(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "content-digest"
            | "repr-digest"
            | "digest"
            | "server-timing"
            | "grpc-status"
            | "grpc-message"
            | "grpc-status-details-bin"
    )
}

/// `frame`, with only the trailer fields the client may have.
fn filter_trailers(frame: Frame<Bytes>) -> Frame<Bytes> {
    match frame.into_trailers() {
        Ok(trailers) if trailers.keys().all(allowed_trailer) => Frame::trailers(trailers),
        Ok(trailers) => {
            let mut kept = HeaderMap::new();
            for (name, value) in &trailers {
                if allowed_trailer(name) {
                    kept.append(name, value.clone());
                }
            }
            Frame::trailers(kept)
        }
        Err(frame) => frame,
    }
}

/// A response body from the upstream, read from its connection by whoever
/// polls it.
pub struct UpstreamBody(ResponseStream);

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody").finish_non_exhaustive()
    }
}

/// An error while the upstream's response body was read.
pub type UpstreamBodyError = Box<dyn std::error::Error + Send + Sync>;

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
        let frame = ready!(self.get_mut().0.poll_body(cx));
        Poll::Ready(frame.map(|f| f.map(filter_trailers).map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.0.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.0.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
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

    #[test]
    fn the_limits_a_head_breaks_are_named_as_they_are() {
        assert!(TOO_MANY_HEADERS.contains(&format!(" {MAX_HEADERS} ")));
        assert!(HEAD_TOO_LARGE.contains(&format!(" {} KiB", MAX_HEAD / 1024)));
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            head.extend_from_slice(format!("x-f{i}: v\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        let mut copies = Copies::default();
        let mut many = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let parsed = parse_head_with(&head, &Method::GET, &mut many, &mut copies);
        assert!(
            matches!(parsed, Err(Http1Error::Malformed(why)) if why == TOO_MANY_HEADERS),
            "{:?}",
            parsed.err()
        );
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
