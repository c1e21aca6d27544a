//! HTTP/1.1 to a plain-HTTP upstream, run inside the client connection's
//! own task.
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
//! complete and the upstream spoke HTTP/1.1 without `Connection: close`.

use std::io::{self, Write as _};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tower_pkce::RequestBody;

/// The request body the forwarder sends.
pub(crate) type OutgoingBody = RequestBody<Incoming>;

/// The read buffer's size; a response head may grow it up to [`MAX_HEAD`].
const READ_BUFFER: usize = 8 * 1024;
/// The largest response head (or trailer section) taken from the upstream.
const MAX_HEAD: usize = 64 * 1024;
/// The most header fields in a response head or trailer section.
const MAX_HEADERS: usize = 128;
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
    RequestBody(hyper::Error),
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
            Self::RequestBody(e) => Some(e),
            Self::Closed | Self::Malformed(_) => None,
        }
    }
}

/// An open HTTP/1.1 connection to the upstream, with its buffers.
pub(crate) struct Connection {
    stream: TcpStream,
    /// Zeroed once, so reads need no initialisation; `buf[start..end]` holds
    /// what was read and not yet used.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    out: Vec<u8>,
    written: usize,
}

impl Connection {
    pub(crate) fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: vec![0; READ_BUFFER],
            start: 0,
            end: 0,
            out: Vec::with_capacity(1024),
            written: 0,
        }
    }

    /// Whether an idle connection can take a request: the upstream has not
    /// closed it nor sent anything since its last response. A connection
    /// with no readable event pending needs no system call to tell.
    pub(crate) fn is_usable(&self) -> bool {
        if self.start != self.end {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads more from the upstream; `Ok(0)` at end of stream. Room is made
    /// by moving unread bytes to the front, then by growing up to `limit`.
    fn poll_fill(&mut self, cx: &mut Context<'_>, limit: usize) -> Poll<Result<usize, Http1Error>> {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.buf.len() < limit {
                let grown = (self.buf.len() * 2).min(limit);
                self.buf.resize(grown, 0);
            } else {
                return Poll::Ready(Err(Http1Error::Malformed(
                    "a response line or head is too large",
                )));
            }
        }
        let mut read = ReadBuf::new(&mut self.buf[self.end..]);
        ready!(Pin::new(&mut self.stream).poll_read(cx, &mut read)).map_err(Http1Error::Io)?;
        let n = read.filled().len();
        self.end += n;
        Poll::Ready(Ok(n))
    }

    /// Writes what is in the output buffer.
    fn poll_flush_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.out.len() {
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, &self.out[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.out.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    fn finish_exchange(&mut self) {
        if self.out.capacity() > WRITE_BUFFER_KEPT {
            self.out = Vec::with_capacity(1024);
        }
        if self.buf.len() > READ_BUFFER && self.start == self.end {
            self.buf = vec![0; READ_BUFFER];
            self.start = 0;
            self.end = 0;
        }
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

    /// Applies the overrides to `headers`, for a request that another
    /// client writes.
    pub(crate) fn apply(self, headers: &mut HeaderMap) {
        for (name, value) in self.fields.into_iter().flatten() {
            match value {
                Some(value) => {
                    headers.insert(name, value);
                }
                None => {
                    headers.remove(name);
                }
            }
        }
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
/// the framing header, and returns how the body is to be written.
fn encode_head(
    out: &mut Vec<u8>,
    parts: &http::request::Parts,
    overrides: &HeaderOverrides,
    body: &OutgoingBody,
) -> Option<bool> {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .as_bytes(),
    );
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
    let chunked = match request_length(&parts.method, body, had_length) {
        None => None,
        Some(Some(n)) => {
            let _ = write!(out, "content-length: {n}\r\n");
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

/// Appends one header (or trailer) field line.
fn encode_field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends a data frame to `out` in the request's framing.
fn encode_data(out: &mut Vec<u8>, data: &[u8], chunked: bool) {
    if data.is_empty() {
        return;
    }
    if chunked {
        let _ = write!(out, "{:x}\r\n", data.len());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

/// Appends the end of a chunked body, with its trailers.
fn encode_end(out: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        encode_field(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
}

/// Moves the request along: takes what the body has ready, and writes.
/// `Ready(Ok(()))` once the whole request is written; the request is then
/// dropped from `outgoing`.
fn poll_send(
    conn: &mut Connection,
    outgoing: &mut Option<Outgoing>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), Http1Error>> {
    loop {
        let mut body_pending = false;
        if let Some(request) = outgoing.as_mut() {
            while conn.out.len() - conn.written < WRITE_BATCH {
                match Pin::new(&mut request.body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => encode_data(&mut conn.out, &data, request.chunked),
                        Err(frame) => {
                            if request.chunked {
                                encode_end(&mut conn.out, frame.trailers_ref());
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
        ready!(conn.poll_flush_out(cx)).map_err(Http1Error::Io)?;
        if outgoing.is_none() {
            return Poll::Ready(Ok(()));
        }
        if body_pending && !had_output {
            return Poll::Pending;
        }
    }
}

/// How the rest of the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    /// Chunked: the next thing is a chunk-size line.
    ChunkSize,
    /// Chunked: this many bytes are left in the current chunk.
    ChunkData(u64),
    /// Chunked: the CRLF after a chunk's data.
    ChunkEnd,
    /// Chunked: the trailer section after the last chunk.
    Trailers,
    /// Until the upstream closes the connection.
    UntilClose,
    /// The body is complete.
    Done,
}

/// A response head, and what is needed to read its body.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
}

/// Parses a response head at the front of `conn`'s buffer: `None` when more
/// bytes are needed.
fn parse_head(conn: &mut Connection, method: &Method) -> Result<Option<Head>, Http1Error> {
    if conn.start == conn.end {
        return Ok(None);
    }
    // Most heads are small: a short array first, which is cheap to set up.
    let mut few = [httparse::EMPTY_HEADER; FEW_HEADERS];
    let parsed = match parse_head_with(conn.buffered(), method, &mut few) {
        Err(Http1Error::Malformed(TOO_MANY_HEADERS)) => {
            let mut many = [httparse::EMPTY_HEADER; MAX_HEADERS];
            parse_head_with(conn.buffered(), method, &mut many)
        }
        parsed => parsed,
    };
    Ok(parsed?.map(|(head, len)| {
        conn.consume(len);
        head
    }))
}

const FEW_HEADERS: usize = 24;
const TOO_MANY_HEADERS: &str = "too many header fields";

/// Parses a head at the front of `buffered` into `fields`; with its length.
fn parse_head_with<'b>(
    buffered: &'b [u8],
    method: &Method,
    fields: &mut [httparse::Header<'b>],
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
    // Header values share one copy of the head instead of one each.
    let head = Bytes::copy_from_slice(&buffered[..len]);
    let base = buffered.as_ptr() as usize;
    let mut headers = HeaderMap::with_capacity(response.headers.len());
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut close = false;
    for field in response.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| Http1Error::Malformed("invalid header name"))?;
        let offset = field.value.as_ptr() as usize - base;
        let value = HeaderValue::from_maybe_shared(head.slice(offset..offset + field.value.len()))
            .map_err(|_| Http1Error::Malformed("invalid header value"))?;
        if name == header::CONTENT_LENGTH {
            let n = parse_length(value.as_bytes())?;
            if length.is_some_and(|l| l != n) {
                return Err(Http1Error::Malformed("conflicting Content-Length values"));
            }
            length = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            transfer_encoding = true;
            // Only the last coding decides: `chunked` must come last.
            chunked = value
                .as_bytes()
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == header::CONNECTION {
            close |= value
                .as_bytes()
                .split(|&b| b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
        headers.append(name, value);
    }
    let bodiless = *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless {
        Framing::Done
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
        if n == 0 {
            Framing::Done
        } else {
            Framing::Length(n)
        }
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

fn parse_length(value: &[u8]) -> Result<u64, Http1Error> {
    let invalid = || Http1Error::Malformed("invalid Content-Length");
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(invalid());
    }
    value
        .iter()
        .try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .ok_or_else(invalid)
}

/// Where a connection goes when its exchange ended cleanly.
pub(crate) trait Keep: Send + Sync {
    /// Takes back a connection ready for another request.
    fn keep(&self, conn: Connection);
}

/// One request sent and its response read, on `conn`. On failure, gives
/// the request back when it may be sent again on another connection:
/// nothing of the response arrived and the request had no body to lose.
pub(crate) async fn exchange(
    mut conn: Connection,
    req: Request<OutgoingBody>,
    overrides: &HeaderOverrides,
    home: Arc<dyn Keep>,
) -> Result<Response<UpstreamBody>, (Http1Error, Option<Request<OutgoingBody>>)> {
    let (parts, body) = req.into_parts();
    conn.out.clear();
    conn.written = 0;
    let chunked = encode_head(&mut conn.out, &parts, overrides, &body);
    // A body known to be empty is kept aside, so that the request can be
    // sent again; its end (if chunked) goes out with the head.
    let (mut outgoing, spare) = match chunked {
        Some(chunked) if !body.is_end_stream() => (Some(Outgoing { body, chunked }), None),
        Some(chunked) => {
            if chunked {
                encode_end(&mut conn.out, None);
            }
            (None, Some(body))
        }
        None => (None, Some(body)),
    };
    let mut sent = false;
    let method = &parts.method;
    let head = std::future::poll_fn(|cx| {
        let mut write_error = None;
        if !sent {
            match poll_send(&mut conn, &mut outgoing, cx) {
                Poll::Ready(Ok(())) => sent = true,
                Poll::Ready(Err(e)) => write_error = Some(e),
                Poll::Pending => {}
            }
        }
        loop {
            if let Some(head) = parse_head(&mut conn, method)? {
                if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS
                {
                    continue;
                }
                return Poll::Ready(Ok(head));
            }
            // A write that failed may still leave a response to read.
            if let Some(e) = write_error.take() {
                return Poll::Ready(Err(e));
            }
            ready!(poll_more(&mut conn, cx, MAX_HEAD))?;
        }
    })
    .await;
    let head = match head {
        Ok(head) => head,
        Err(e) => {
            let nothing_received = conn.start == conn.end;
            let again = match spare {
                Some(body)
                    if nothing_received && matches!(e, Http1Error::Io(_) | Http1Error::Closed) =>
                {
                    Some(Request::from_parts(parts, body))
                }
                _ => None,
            };
            return Err((e, again));
        }
    };
    if head.status == StatusCode::SWITCHING_PROTOCOLS {
        return Err((
            Http1Error::Malformed("the upstream switched protocols"),
            None,
        ));
    }
    let mut stream = ResponseStream {
        conn: Some(conn),
        outgoing: if sent { None } else { outgoing },
        framing: head.framing,
        keep_alive: head.keep_alive,
        home: Some(home),
    };
    stream.release_if_done();
    let mut response = Response::new(UpstreamBody(BodyKind::Direct(stream)));
    *response.status_mut() = head.status;
    *response.version_mut() = head.version;
    *response.headers_mut() = head.headers;
    Ok(response)
}

/// The upstream's response body on a connection of the proxy's own, read
/// as it is polled; the rest of the request is written meanwhile.
struct ResponseStream {
    conn: Option<Connection>,
    outgoing: Option<Outgoing>,
    framing: Framing,
    keep_alive: bool,
    home: Option<Arc<dyn Keep>>,
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
        if self.keep_alive && self.outgoing.is_none() && conn.start == conn.end {
            conn.finish_exchange();
            if let Some(home) = home {
                home.keep(conn);
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
                // The upstream stopped reading; its response may still be
                // whole, but the connection is not used again.
                Poll::Ready(Err(_)) => {
                    self.outgoing = None;
                    self.keep_alive = false;
                }
            }
        }
        match ready!(read_frame(conn, &mut self.framing, cx)) {
            Ok(frame) => {
                self.release_if_done();
                Poll::Ready(frame.map(Ok))
            }
            Err(e) => {
                self.conn = None;
                self.outgoing = None;
                self.framing = Framing::Done;
                Poll::Ready(Some(Err(e)))
            }
        }
    }
}

/// Reads more into `conn` for a body that is not complete: the end of the
/// stream is an error there.
fn poll_more(
    conn: &mut Connection,
    cx: &mut Context<'_>,
    limit: usize,
) -> Poll<Result<(), Http1Error>> {
    match ready!(conn.poll_fill(cx, limit))? {
        0 => Poll::Ready(Err(Http1Error::Closed)),
        _ => Poll::Ready(Ok(())),
    }
}

/// The next frame of the body framed as `framing`: `None` at its end.
fn read_frame(
    conn: &mut Connection,
    framing: &mut Framing,
    cx: &mut Context<'_>,
) -> Poll<Result<Option<Frame<Bytes>>, Http1Error>> {
    loop {
        match *framing {
            Framing::Done => return Poll::Ready(Ok(None)),
            Framing::Length(0) => *framing = Framing::Done,
            Framing::Length(left) | Framing::ChunkData(left) => {
                if conn.start == conn.end {
                    ready!(poll_more(conn, cx, READ_BUFFER))?;
                }
                let available = conn.buffered();
                let n = usize::try_from(left).map_or(available.len(), |l| l.min(available.len()));
                let data = Bytes::copy_from_slice(&available[..n]);
                conn.consume(n);
                let left = left - n as u64;
                *framing = match *framing {
                    Framing::Length(_) if left == 0 => Framing::Done,
                    Framing::Length(_) => Framing::Length(left),
                    _ if left == 0 => Framing::ChunkEnd,
                    _ => Framing::ChunkData(left),
                };
                return Poll::Ready(Ok(Some(Frame::data(data))));
            }
            Framing::ChunkSize => match httparse::parse_chunk_size(conn.buffered()) {
                Ok(httparse::Status::Complete((used, size))) => {
                    conn.consume(used);
                    *framing = if size == 0 {
                        Framing::Trailers
                    } else {
                        Framing::ChunkData(size)
                    };
                }
                Ok(httparse::Status::Partial) => ready!(poll_more(conn, cx, READ_BUFFER))?,
                Err(_) => return Poll::Ready(Err(Http1Error::Malformed("invalid chunk size"))),
            },
            Framing::ChunkEnd => {
                let available = conn.buffered();
                if available.len() < 2 {
                    ready!(poll_more(conn, cx, READ_BUFFER))?;
                } else if available.starts_with(b"\r\n") {
                    conn.consume(2);
                    *framing = Framing::ChunkSize;
                } else {
                    return Poll::Ready(Err(Http1Error::Malformed("chunk data too long")));
                }
            }
            Framing::Trailers => {
                let available = conn.buffered();
                if available.starts_with(b"\r\n") {
                    conn.consume(2);
                    *framing = Framing::Done;
                    continue;
                }
                let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                match httparse::parse_headers(available, &mut fields) {
                    Ok(httparse::Status::Complete((used, parsed))) => {
                        let mut trailers = HeaderMap::with_capacity(parsed.len());
                        for field in parsed {
                            let (Ok(name), Ok(value)) = (
                                HeaderName::from_bytes(field.name.as_bytes()),
                                HeaderValue::from_bytes(field.value),
                            ) else {
                                return Poll::Ready(Err(Http1Error::Malformed(
                                    "invalid trailer field",
                                )));
                            };
                            trailers.append(name, value);
                        }
                        conn.consume(used);
                        *framing = Framing::Done;
                        return Poll::Ready(Ok(Some(Frame::trailers(trailers))));
                    }
                    Ok(httparse::Status::Partial) => ready!(poll_more(conn, cx, MAX_HEAD))?,
                    Err(_) => {
                        return Poll::Ready(Err(Http1Error::Malformed("invalid trailer section")));
                    }
                }
            }
            Framing::UntilClose => {
                if conn.start == conn.end && ready!(conn.poll_fill(cx, READ_BUFFER))? == 0 {
                    *framing = Framing::Done;
                    return Poll::Ready(Ok(None));
                }
                let data = Bytes::copy_from_slice(conn.buffered());
                conn.consume(data.len());
                return Poll::Ready(Ok(Some(Frame::data(data))));
            }
        }
    }
}

/// A response body from the upstream: read directly on a plain-HTTP
/// connection, or from hyper's client for an HTTPS upstream.
pub struct UpstreamBody(BodyKind);

enum BodyKind {
    Direct(ResponseStream),
    Pooled(Incoming),
}

impl UpstreamBody {
    /// A body from hyper's pooled client.
    pub(crate) fn pooled(body: Incoming) -> Self {
        Self(BodyKind::Pooled(body))
    }
}

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
        match &mut self.get_mut().0 {
            BodyKind::Direct(stream) => stream.poll_body(cx).map_err(Into::into),
            BodyKind::Pooled(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            BodyKind::Direct(stream) => stream.framing == Framing::Done,
            BodyKind::Pooled(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            BodyKind::Direct(stream) => match stream.framing {
                Framing::Done => SizeHint::with_exact(0),
                Framing::Length(n) => SizeHint::with_exact(n),
                _ => SizeHint::default(),
            },
            BodyKind::Pooled(body) => body.size_hint(),
        }
    }
}
