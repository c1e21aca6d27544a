//! Client connections: HTTP/1.1 served by the proxy itself, HTTP/2 (with
//! prior knowledge) handed to hyper.
//!
//! An HTTP/1.1 connection is one task that reads a request head, calls the
//! handler, and writes the response, then waits for the next head. The
//! request body is read from the same socket by whoever polls it (the
//! upstream client, in the same task), so nothing is spawned and nothing
//! goes through a channel. What the connection does:
//!
//! - Heads: at most [`MAX_HEAD`] bytes (431 beyond) and [`MAX_FIELDS`]
//!   fields, within the head timeout, which also bounds an idle keep-alive
//!   connection. A malformed head gets 400.
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

use std::cell::Cell;
use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io::{self, Write as _};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use super::body::{
    self as wire, Copies, Framing, Inbox, MAX_HEAD, WireError, encode_data, encode_end,
    encode_field,
};
use crate::h2;
pub(crate) use crate::h2::H2Settings;
use crate::metrics::{Limit, Metrics};

/// The most header fields in a request head.
pub(crate) const MAX_FIELDS: usize = 100;
/// Header fields parsed on the first try; a head with more is parsed again.
const FEW_FIELDS: usize = 32;
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
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

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

/// Tells connections to finish, and counts those still open.
#[derive(Debug, Default)]
pub(crate) struct Shutdown {
    stopping: AtomicBool,
    stop: Notify,
    open: AtomicUsize,
    closed: Notify,
}

impl Shutdown {
    /// Asks every connection to finish: idle ones close now, busy ones
    /// after their response.
    pub(crate) fn begin(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop.notify_waiters();
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The connections open now.
    pub(crate) fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Resolves when no connection is open.
    pub(crate) async fn drained(&self) {
        loop {
            let mut closed = pin!(self.closed.notified());
            closed.as_mut().enable();
            if self.open.load(Ordering::SeqCst) == 0 {
                return;
            }
            closed.await;
        }
    }

    /// Counts a connection as open until the guard is dropped: taken at
    /// accept, so that a connection not yet served holds the drain.
    pub(crate) fn enter(self: &Arc<Self>) -> OpenConnection {
        self.open.fetch_add(1, Ordering::SeqCst);
        OpenConnection(self.clone())
    }
}

/// Counts one connection as open while it lives.
#[derive(Debug)]
pub(crate) struct OpenConnection(Arc<Shutdown>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

/// The body of a client's request: read from the connection as it is
/// polled, or already whole, or from hyper (HTTP/2, and HTTP/1.1 over
/// TLS), or what the proxy
/// read of it ahead and then the rest (see `ClientBody::buffered`). A
/// body is moved with its request several times, so what only some bodies
/// need is boxed.
pub struct ClientBody(BodyKind);

enum BodyKind {
    Full(Option<Bytes>),
    Stream(Arc<Mutex<Inbound>>),
    Hyper(Box<HyperBody>),
    Ahead(Box<(ReadAhead, BodyKind)>),
}

/// A body from hyper's server, under the body timeout.
struct HyperBody {
    body: Incoming,
    timer: ReadTimer,
}

/// What was read of a body before it went on: its data goes first and
/// its trailers (of a body read whole) last; it holds its share of the
/// read-ahead budget until its data is out.
struct ReadAhead {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
    held: Option<Held>,
}

/// An error while a client's request body was read.
pub type ClientBodyError = Box<dyn std::error::Error + Send + Sync>;

impl ClientBody {
    /// A body with nothing in it.
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// A body that is already whole.
    pub fn full(data: Bytes) -> Self {
        Self(BodyKind::Full((!data.is_empty()).then_some(data)))
    }

    /// A body that hyper reads, failing when it pauses past `timeout`.
    pub(crate) fn hyper(body: Incoming, timeout: Duration, metrics: Arc<Metrics>) -> Self {
        let timer = ReadTimer::new(timeout, metrics);
        Self(BodyKind::Hyper(Box::new(HyperBody { body, timer })))
    }

    /// Whether hyper, not this module, parsed the request (see
    /// [`serve_hyper`]): its head was not checked here.
    pub(crate) fn is_from_hyper(&self) -> bool {
        matches!(self.0, BodyKind::Hyper(_))
    }

    /// Whether the body is in memory, whole.
    pub(crate) fn is_whole(&self) -> bool {
        match &self.0 {
            BodyKind::Full(_) => true,
            BodyKind::Ahead(ahead) => matches!(ahead.1, BodyKind::Full(_)),
            BodyKind::Stream(_) | BodyKind::Hyper(_) => false,
        }
    }

    /// Whether some of the body is still to be read from the client: the
    /// test is inline for a body in memory, which most are.
    pub(crate) fn is_unread(&self) -> bool {
        !matches!(self.0, BodyKind::Full(_)) && self.is_unread_out_of_line()
    }

    #[inline(never)]
    fn is_unread_out_of_line(&self) -> bool {
        !self.is_whole() && !self.is_end_stream()
    }

    /// Reads the body until it ends or `limit` bytes are exceeded: a body
    /// that ends within the bound comes back whole, in memory; a larger
    /// one as the bytes read so far followed by the rest, still streaming.
    /// What is read takes its share of `budget` until it is handed on; a
    /// body that the budget has no room for streams too. A body that
    /// pauses longer than the body timeout fails.
    ///
    /// # Errors
    ///
    /// The body's own error: it was cut short, malformed or too slow.
    pub(crate) async fn buffered(
        mut self,
        limit: usize,
        budget: &Arc<Budget>,
    ) -> Result<Self, ClientBodyError> {
        let mut gathered = Gathered::default();
        let mut held = Held::new(budget);
        if let Some(n) = self.size_hint().exact() {
            gathered.expect(n, limit);
        }
        loop {
            let frame = poll_fn(|cx| Pin::new(&mut self).poll_frame(cx)).await;
            match frame.transpose()?.map(Frame::into_data) {
                None => return Ok(gathered.whole(None, held)),
                Some(Ok(data)) => {
                    let room = held.grow(data.len());
                    gathered.push(data);
                    if self.is_end_stream() {
                        return Ok(gathered.whole(None, held));
                    }
                    if !room {
                        budget.metrics.limit_reached(Limit::RequestBufferTotal);
                        return Ok(self.after(gathered.take(), held));
                    }
                    if gathered.len() > limit {
                        return Ok(self.after(gathered.take(), held));
                    }
                }
                Some(Err(frame)) => {
                    return Ok(gathered.whole(frame.into_trailers().ok(), held));
                }
            }
        }
    }

    /// This body, with `data` read from it already, held in `held`.
    fn after(self, data: Bytes, held: Held) -> Self {
        let ahead = ReadAhead {
            data: (!data.is_empty()).then_some(data),
            trailers: None,
            held: Some(held),
        };
        Self(BodyKind::Ahead(Box::new((ahead, self.0))))
    }
}

/// The bytes of request bodies read ahead and held in memory, all
/// requests together, and at most how many (`--request-buffer-total`).
#[derive(Debug)]
pub(crate) struct Budget {
    used: AtomicUsize,
    max: usize,
    metrics: Arc<Metrics>,
}

impl Budget {
    pub(crate) fn new(max: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            max,
            metrics,
        })
    }

    /// The bytes held now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }
}

/// One body's share of a [`Budget`], given back when dropped.
struct Held {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Held {
    fn new(budget: &Arc<Budget>) -> Self {
        Self {
            budget: budget.clone(),
            bytes: 0,
        }
    }

    /// Takes `n` more bytes, unless that would pass the budget's bound;
    /// whether it did.
    fn grow(&mut self, n: usize) -> bool {
        let max = self.budget.max;
        let taken = self
            .budget
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(n).filter(|&total| total <= max)
            })
            .is_ok();
        if taken {
            self.bytes += n;
        }
        taken
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

/// The bytes of a body read so far: one chunk as it came, or several
/// copied together.
#[derive(Default)]
struct Gathered {
    first: Option<Bytes>,
    joined: Option<bytes::BytesMut>,
    capacity: usize,
}

impl Gathered {
    /// Room for a body of `n` bytes, when it fits within `limit`.
    fn expect(&mut self, n: u64, limit: usize) {
        self.capacity = usize::try_from(n).map_or(0, |n| if n <= limit { n } else { 0 });
    }

    fn len(&self) -> usize {
        self.joined
            .as_ref()
            .map_or_else(|| self.first.as_ref().map_or(0, Bytes::len), |j| j.len())
    }

    fn push(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        if let Some(joined) = self.joined.as_mut() {
            joined.extend_from_slice(&data);
        } else if let Some(first) = self.first.take() {
            let mut joined =
                bytes::BytesMut::with_capacity(self.capacity.max(first.len() + data.len()));
            joined.extend_from_slice(&first);
            joined.extend_from_slice(&data);
            self.joined = Some(joined);
        } else {
            self.first = Some(data);
        }
    }

    fn take(&mut self) -> Bytes {
        match self.joined.take() {
            Some(joined) => joined.freeze(),
            None => self.first.take().unwrap_or_default(),
        }
    }

    fn whole(mut self, trailers: Option<HeaderMap>, held: Held) -> ClientBody {
        let data = self.take();
        let ahead = ReadAhead {
            data: (!data.is_empty()).then_some(data),
            trailers,
            held: Some(held),
        };
        ClientBody(BodyKind::Ahead(Box::new((ahead, BodyKind::Full(None)))))
    }
}

/// The body timeout: a request body that goes longer than `timeout`
/// without a byte while it is being read fails. Armed only when a read
/// finds nothing, so a body that keeps coming never reads the clock.
struct ReadTimer {
    timeout: Duration,
    deadline: Option<Instant>,
    sleep: Option<Pin<Box<Sleep>>>,
    metrics: Arc<Metrics>,
}

impl ReadTimer {
    fn new(timeout: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            timeout,
            deadline: None,
            sleep: None,
            metrics,
        }
    }

    /// Some of the body came.
    fn progressed(&mut self) {
        self.deadline = None;
    }

    /// Nothing to read: whether the pause has lasted the timeout (then it
    /// is counted), else the task is woken when it will have.
    #[cold]
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = *self
            .deadline
            .get_or_insert_with(|| Instant::now() + self.timeout);
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        let expired = sleep.as_mut().poll(cx).is_ready();
        if expired {
            self.metrics.limit_reached(Limit::BodyTimeout);
        }
        expired
    }
}

/// A request body paused longer than the body timeout.
#[derive(Debug)]
struct BodyTimeout;

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body paused longer than the body timeout")
    }
}

impl std::error::Error for BodyTimeout {}

fn body_timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, BodyTimeout)
}

/// Whether `e`, or an error it wraps, is the body timeout.
pub(crate) fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let ours = |io: &io::Error| io.get_ref().is_some_and(|inner| inner.is::<BodyTimeout>());
    let mut next = Some(e);
    while let Some(e) = next {
        if e.downcast_ref::<io::Error>().is_some_and(ours)
            || matches!(e.downcast_ref::<WireError>(), Some(WireError::Io(io)) if ours(io))
        {
            return true;
        }
        next = e.source();
    }
    false
}

impl std::fmt::Debug for ClientBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBody").finish_non_exhaustive()
    }
}

/// A request body still on the wire, shared by the body and its
/// connection, which takes the read buffer back when the body has ended.
struct Inbound {
    /// `None` once the connection has let go of the body (see `detach`).
    stream: Option<Arc<TcpStream>>,
    inbox: Inbox,
    copies: Copies,
    framing: Framing,
    /// How much of `100 Continue` is written, while it is owed.
    interim: Option<usize>,
    /// The final response has started: no interim response may follow.
    answered: bool,
    failed: bool,
    /// Who waits for more of the body: woken when the connection lets go.
    waker: Option<std::task::Waker>,
    timer: ReadTimer,
}

fn lock(inbound: &Mutex<Inbound>) -> MutexGuard<'_, Inbound> {
    inbound.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why a client's request body could not be read: a framing error, or the
/// client going away. The client's fault, never the upstream's, wherever
/// it surfaces (see [`is_client_body_error`]).
#[derive(Debug)]
struct RequestBodyError(ClientBodyError);

impl std::fmt::Display for RequestBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the client's request body: {}", self.0)
    }
}

impl std::error::Error for RequestBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// Whether `error`, or an error it wraps (hyper's client wraps the body's
/// error in its own), is a client's request body failing.
pub(crate) fn is_client_body_error(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<RequestBodyError>() {
            return true;
        }
        next = e.source();
    }
    false
}

impl Inbound {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, WireError>>> {
        let result = self.poll_frame_inner(cx);
        match &result {
            Poll::Pending => {
                if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    self.waker = Some(cx.waker().clone());
                }
                if self.timer.poll_expired(cx) {
                    self.failed = true;
                    return Poll::Ready(Some(Err(WireError::Io(body_timed_out()))));
                }
            }
            Poll::Ready(Some(Err(_))) => self.failed = true,
            Poll::Ready(_) => self.timer.progressed(),
        }
        result
    }

    fn poll_frame_inner(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, WireError>>> {
        // Once failed, always failed: a body cut short never looks whole.
        if self.failed {
            return Poll::Ready(Some(Err(WireError::Malformed(
                "the request body failed earlier",
            ))));
        }
        let Some(stream) = self.stream.as_deref() else {
            return Poll::Ready(Some(Err(WireError::Closed)));
        };
        if let Some(written) = self.interim.as_mut() {
            if !self.answered {
                while *written < CONTINUE.len() {
                    match stream.try_write(&CONTINUE[*written..]) {
                        Ok(0) => {
                            return Poll::Ready(Some(Err(WireError::Io(
                                io::ErrorKind::WriteZero.into(),
                            ))));
                        }
                        Ok(n) => *written += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            if let Err(e) = ready!(stream.poll_write_ready(cx)) {
                                return Poll::Ready(Some(Err(WireError::Io(e))));
                            }
                        }
                        Err(e) => return Poll::Ready(Some(Err(WireError::Io(e)))),
                    }
                }
            }
            self.interim = None;
        }
        wire::read_frame(
            &mut self.inbox,
            &mut self.copies,
            &mut &*stream,
            &mut self.framing,
            cx,
        )
        .map(|frame| frame.transpose())
    }

    fn is_complete(&self) -> bool {
        self.framing == Framing::Done && !self.failed
    }

    /// The final response starts: what is owed of an interim response
    /// already begun must go out first, whole (an interim response cut
    /// short would corrupt the final one), and none may start after.
    fn answer(&mut self, out: &mut Vec<u8>) {
        self.answered = true;
        if let Some(written) = self.interim.take()
            && written > 0
        {
            out.extend_from_slice(&CONTINUE[written..]);
        }
    }

    /// The connection is done with the socket: whoever still reads this
    /// body (hyper's client, for an HTTPS upstream, in a task of its own)
    /// gets an error instead of reading from a socket the connection
    /// closes, and is woken to see it.
    fn detach(&mut self) {
        self.stream = None;
        if !self.is_complete() {
            self.failed = true;
        }
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        Pin::new(&mut self.get_mut().0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

impl Body for BodyKind {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            BodyKind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            BodyKind::Stream(inbound) => lock(inbound)
                .poll_frame(cx)
                .map_err(|e| RequestBodyError(e.into()).into()),
            BodyKind::Hyper(hyper) => match Pin::new(&mut hyper.body).poll_frame(cx) {
                Poll::Pending if hyper.timer.poll_expired(cx) => {
                    Poll::Ready(Some(Err(RequestBodyError(body_timed_out().into()).into())))
                }
                Poll::Pending => Poll::Pending,
                Poll::Ready(frame) => {
                    hyper.timer.progressed();
                    Poll::Ready(frame.map(|f| f.map_err(|e| RequestBodyError(e.into()).into())))
                }
            },
            BodyKind::Ahead(ahead) => {
                let (ahead, rest) = &mut **ahead;
                if let Some(data) = ahead.data.take() {
                    ahead.held = None;
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                match ready!(Pin::new(rest).poll_frame(cx)) {
                    None => Poll::Ready(ahead.trailers.take().map(|t| Ok(Frame::trailers(t)))),
                    frame => Poll::Ready(frame),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            BodyKind::Full(data) => data.is_none(),
            BodyKind::Stream(inbound) => {
                let inbound = lock(inbound);
                inbound.framing == Framing::Done || inbound.failed
            }
            BodyKind::Hyper(hyper) => hyper.body.is_end_stream(),
            BodyKind::Ahead(ahead) => {
                ahead.0.data.is_none() && ahead.0.trailers.is_none() && ahead.1.is_end_stream()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            BodyKind::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            BodyKind::Stream(inbound) => match lock(inbound).framing {
                Framing::Done => SizeHint::with_exact(0),
                Framing::Length(n) => SizeHint::with_exact(n),
                _ => SizeHint::default(),
            },
            BodyKind::Hyper(hyper) => hyper.body.size_hint(),
            BodyKind::Ahead(ahead) => {
                let (ahead, rest) = &**ahead;
                let rest = rest.size_hint();
                let n = ahead.data.as_ref().map_or(0, |d| d.len() as u64);
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(n));
                // Trailers need a chunked message: the size is then not told.
                if let Some(upper) = rest.upper().filter(|_| ahead.trailers.is_none()) {
                    hint.set_upper(upper.saturating_add(n));
                }
                hint
            }
        }
    }
}

/// A request head, parsed, and what the connection needs to know of it.
struct Head {
    request: Request<()>,
    framing: Framing,
    keep_alive: bool,
    expect_continue: bool,
    trailers_ok: bool,
}

/// A request the connection answers itself, and then closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Refusal(StatusCode, &'static str);

const TOO_MANY_FIELDS: Refusal = Refusal(
    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
    "too many header fields",
);

/// Why `CONNECT` is refused, on both protocols.
pub(crate) const CONNECT_REFUSED: &str = "CONNECT is not served: this is a reverse proxy";

/// Why a request with `method` must not carry a body, or `None` when it
/// may. RFC 9110 gives content on these methods no meaning (TRACE must have
/// none), and an upstream that does not read it takes it for the next
/// request on the connection: a request the proxy never checked (I1).
pub(crate) fn body_refused(method: &Method) -> Option<&'static str> {
    Some(match *method {
        Method::GET => "a GET request must not have a body",
        Method::HEAD => "a HEAD request must not have a body",
        Method::DELETE => "a DELETE request must not have a body",
        Method::OPTIONS => "an OPTIONS request must not have a body",
        Method::TRACE => "a TRACE request must not have a body",
        _ => return None,
    })
}

/// Parses a request head at the front of `buffered`: with its length, or
/// `None` when more bytes are needed.
fn parse_head(buffered: &[u8], copies: &mut Copies) -> Result<Option<(Head, usize)>, Refusal> {
    let mut few = [httparse::EMPTY_HEADER; FEW_FIELDS];
    match parse_head_with(buffered, &mut few, copies) {
        Err(TOO_MANY_FIELDS) => {
            let mut many = [httparse::EMPTY_HEADER; MAX_FIELDS];
            parse_head_with(buffered, &mut many, copies)
        }
        parsed => parsed,
    }
}

fn parse_head_with<'b>(
    buffered: &'b [u8],
    fields: &mut [httparse::Header<'b>],
    copies: &mut Copies,
) -> Result<Option<(Head, usize)>, Refusal> {
    const BAD: StatusCode = StatusCode::BAD_REQUEST;
    let mut parsed = httparse::Request::new(fields);
    let len = match parsed.parse(buffered) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(TOO_MANY_FIELDS),
        Err(_) => return Err(Refusal(BAD, "malformed request head")),
    };
    let (Some(method), Some(target), Some(minor)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(Refusal(BAD, "malformed request head"));
    };
    let method =
        Method::from_bytes(method.as_bytes()).map_err(|_| Refusal(BAD, "invalid method"))?;
    if method == Method::CONNECT {
        return Err(Refusal(BAD, CONNECT_REFUSED));
    }
    let http10 = minor == 0;
    // Header values and the target share one copy of the head.
    let head = wire::HeadCopy::new(buffered, len, copies);
    let uri = Uri::from_maybe_shared(head.share(target.as_bytes()))
        .map_err(|_| Refusal(BAD, "invalid request target"))?;
    crate::target::check_path(uri.path().as_bytes()).map_err(|why| Refusal(BAD, why))?;
    let mut headers = HeaderMap::with_capacity(parsed.headers.len() + wire::HEADER_ROOM);
    let mut length: Option<u64> = None;
    let mut codings = 0;
    let mut chunked = false;
    let mut unsupported_coding = false;
    let mut close = false;
    let mut keep_alive = false;
    let mut expect_continue = false;
    let mut trailers_ok = false;
    let mut hosts = 0;
    for field in parsed.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| Refusal(BAD, "invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.share(field.value))
            .map_err(|_| Refusal(BAD, "invalid header value"))?;
        let bytes = value.as_bytes();
        match name {
            header::CONTENT_LENGTH => {
                let n = wire::parse_length(bytes).ok_or(Refusal(BAD, "invalid Content-Length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(Refusal(BAD, "conflicting Content-Length values"));
                }
                length = Some(n);
            }
            header::TRANSFER_ENCODING => {
                codings += 1;
                chunked = bytes.trim_ascii().eq_ignore_ascii_case(b"chunked");
                unsupported_coding |= !chunked && wire::ends_chunked(bytes);
            }
            header::CONNECTION => {
                close |= wire::has_token(bytes, b"close");
                keep_alive |= wire::has_token(bytes, b"keep-alive");
            }
            header::EXPECT => {
                expect_continue |= bytes.trim_ascii().eq_ignore_ascii_case(b"100-continue");
            }
            header::TE => trailers_ok |= wire::has_token(bytes, b"trailers"),
            header::HOST => {
                hosts += 1;
                if !crate::target::check_host(bytes) {
                    return Err(Refusal(BAD, crate::target::INVALID_HOST));
                }
            }
            _ => {}
        }
        headers.append(name, value);
    }
    // RFC 9112 §3.2: exactly one Host in HTTP/1.1, never two. The proxy
    // and the upstream must not read different hosts from one request.
    if hosts > 1 || (hosts == 0 && !http10) {
        return Err(Refusal(BAD, "a request needs exactly one Host header"));
    }
    if (codings > 0 || length.is_some_and(|n| n > 0))
        && let Some(why) = body_refused(&method)
    {
        return Err(Refusal(BAD, why));
    }
    if unsupported_coding {
        return Err(Refusal(
            StatusCode::NOT_IMPLEMENTED,
            "only the chunked transfer coding is supported",
        ));
    }
    let framing = if codings > 0 {
        if http10 || length.is_some() || codings > 1 || !chunked {
            return Err(Refusal(BAD, "ambiguous or invalid request framing"));
        }
        Framing::ChunkSize
    } else {
        length.map_or(Framing::Done, Framing::length)
    };
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = if http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    *request.headers_mut() = headers;
    Ok(Some((
        Head {
            request,
            framing,
            keep_alive: if http10 { keep_alive && !close } else { !close },
            expect_continue: expect_continue && !http10,
            trailers_ok,
        },
        len,
    )))
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
        let result = wire::poll_write_all(&mut &*self.stream, cx, &mut self.out, &mut self.written);
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

/// Whether `bytes` holds the blank line that ends a head (httparse takes
/// a bare LF as a line end too).
fn ends_head(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().any(|(i, &b)| {
        b == b'\n' && matches!(bytes.get(i + 1..), Some([b'\n', ..] | [b'\r', b'\n', ..]))
    })
}

/// The `Date` value for now, formatted once a second per thread.
fn http_date() -> [u8; 29] {
    thread_local! {
        static CACHED: Cell<(u64, [u8; 29])> = const { Cell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|cached| {
        let (at, value) = cached.get();
        if at == second {
            return value;
        }
        let mut value = [0u8; 29];
        let _ = write!(&mut value[..], "{}", httpdate::HttpDate::from(now));
        cached.set((second, value));
        value
    })
}

fn encode_status(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn encode_date(out: &mut Vec<u8>) {
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(&http_date());
    out.extend_from_slice(b"\r\n");
}

/// How a response body goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outgoing {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    /// Exactly this many bytes.
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client, length unknown).
    UntilClose,
}

/// What the connection knows of the request it answers.
struct Exchange {
    head_request: bool,
    http10: bool,
    keep_alive: bool,
    trailers_ok: bool,
}

/// Writes the response head into `out`; returns how the body goes out and
/// whether the connection closes after it.
fn encode_response_head(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    hint: SizeHint,
    exchange: &Exchange,
    closing: bool,
) -> (Outgoing, bool) {
    let status = parts.status;
    encode_status(out, status);
    let bodiless = exchange.head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    // A HEAD or 304 response keeps the length of the body it stands for.
    let keeps_length = exchange.head_request || status == StatusCode::NOT_MODIFIED;
    let mut declared = None;
    let mut close = !exchange.keep_alive || closing;
    for (name, value) in &parts.headers {
        match *name {
            header::CONTENT_LENGTH if !keeps_length => {
                declared = wire::parse_length(value.as_bytes());
                continue;
            }
            header::TRANSFER_ENCODING => continue,
            header::CONNECTION => {
                close |= wire::has_token(value.as_bytes(), b"close");
                continue;
            }
            _ if name.as_str() == "keep-alive" => continue,
            _ => {}
        }
        encode_field(out, name, value);
    }
    if !parts.headers.contains_key(header::DATE) {
        encode_date(out);
    }
    let outgoing = if bodiless {
        Outgoing::None
    } else {
        match hint.exact().or(declared) {
            Some(n) => {
                wire::encode_content_length(out, n);
                Outgoing::Length(n)
            }
            None if exchange.http10 => {
                close = true;
                Outgoing::UntilClose
            }
            None => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Outgoing::Chunked
            }
        }
    };
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if exchange.http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (outgoing, close)
}

/// Writes `response` after its head is in `conn.out`. `Ok(true)`: the body
/// went out whole, as framed.
async fn write_body<B>(
    conn: &mut Connection,
    body: B,
    outgoing: Outgoing,
    trailers_ok: bool,
) -> io::Result<bool>
where
    B: Body<Data = Bytes>,
    B::Error: Into<ClientBodyError>,
{
    if outgoing == Outgoing::None {
        drop(body);
        conn.flush().await?;
        return Ok(true);
    }
    let mut body = pin!(body);
    let mut left = match outgoing {
        Outgoing::Length(n) => n,
        _ => u64::MAX,
    };
    let mut ended = false;
    let mut whole = true;
    poll_fn(|cx| {
        loop {
            if !ended && conn.out.len() - conn.written < WRITE_BATCH {
                match body.as_mut().poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        match frame.into_data() {
                            Ok(data) => {
                                let mut data = &data[..];
                                if data.len() as u64 > left {
                                    // More than the length said: the rest
                                    // is cut, and the connection closes.
                                    data = &data[..usize::try_from(left).unwrap_or(data.len())];
                                    whole = false;
                                    ended = true;
                                }
                                left -= data.len() as u64;
                                encode_data(&mut conn.out, data, outgoing == Outgoing::Chunked);
                            }
                            Err(frame) => {
                                match outgoing {
                                    Outgoing::Chunked => {
                                        let trailers =
                                            frame.trailers_ref().filter(|_| trailers_ok);
                                        encode_end(&mut conn.out, trailers);
                                    }
                                    Outgoing::Length(_) if left > 0 => whole = false,
                                    _ => {}
                                }
                                ended = true;
                            }
                        }
                        continue;
                    }
                    Poll::Ready(None) => {
                        match outgoing {
                            Outgoing::Chunked => encode_end(&mut conn.out, None),
                            Outgoing::Length(_) if left > 0 => whole = false,
                            _ => {}
                        }
                        ended = true;
                        continue;
                    }
                    Poll::Ready(Some(Err(e))) => {
                        let e: ClientBodyError = e.into();
                        if is_client_body_error(&*e) {
                            // The response had begun: too late for a 400.
                            tracing::info!(error = %e, "the client's request body failed during the response; closing the connection");
                        } else {
                            tracing::debug!(error = %e, "the response body failed; closing the connection");
                        }
                        return Poll::Ready(Err(io::Error::other("the response body failed")));
                    }
                    Poll::Pending if conn.written == conn.out.len() => return Poll::Pending,
                    Poll::Pending => {}
                }
            }
            ready!(conn.poll_flush(cx))?;
            if ended {
                return Poll::Ready(Ok(()));
            }
        }
    })
    .await?;
    Ok(whole)
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
            let read = poll_fn(|cx| wire::poll_read(stream, cx, &mut scratch));
            if !matches!(tokio::time::timeout(LINGER_PAUSE, read).await, Ok(Ok(1..))) {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Hands the connection to hyper's HTTP/2 server (see [`serve_hyper`]);
/// what was read so far is read again first.
async fn serve_h2<H, F, B>(conn: Connection, handler: H, open: OpenConnection)
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
    /// HTTP/1.1 (and 1.0), where this module's own server cannot go: over
    /// TLS.
    Http1,
    Http2,
}

/// Serves one connection with hyper until it closes. Every request goes to
/// `handler`, its body under the body timeout.
///
/// hyper bounds HTTP/2's streams, header lists and keep-alive pings, and
/// HTTP/1.1's heads: as many bytes and fields as this module allows. The
/// connection closes gracefully, as at shutdown, when no request has been
/// open for the idle timeout (HTTP/2's), or, in HTTP/1.1, when no request
/// head has come within the head timeout (of `started` for the first, as
/// this module counts it from the accept, and of the last response after).
/// It closes at once when a response has waited for the client past the
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

#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::VecDeque;
    use std::net::SocketAddr;

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A body of ready frames whose size is not known in advance.
    struct Frames(VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn frames(data: &[&'static str], trailer: Option<(&'static str, &'static str)>) -> Frames {
        let mut frames: VecDeque<_> = data
            .iter()
            .map(|d| Frame::data(Bytes::from_static(d.as_bytes())))
            .collect();
        if let Some((name, value)) = trailer {
            let mut trailers = HeaderMap::new();
            trailers.insert(name, HeaderValue::from_static(value));
            frames.push_back(Frame::trailers(trailers));
        }
        Frames(frames)
    }

    /// What the test server answers, by path.
    async fn answer(req: Request<ClientBody>) -> Response<Frames> {
        let path = req.uri().path().to_owned();
        let mut response = Response::new(frames(&[], None));
        match path.as_str() {
            "/echo" => {
                let collected = req.into_body().collect().await;
                let Ok(collected) = collected else {
                    *response.status_mut() = StatusCode::BAD_REQUEST;
                    return response;
                };
                let trailer = collected
                    .trailers()
                    .and_then(|t| t.get("x-t"))
                    .map(|v| v.to_str().unwrap().to_owned());
                let body = collected.to_bytes();
                response = Response::new(Frames(VecDeque::from([Frame::data(body.clone())])));
                response
                    .headers_mut()
                    .insert(header::CONTENT_LENGTH, body.len().into());
                if let Some(t) = trailer {
                    response
                        .headers_mut()
                        .insert("x-trailer", t.parse().unwrap());
                }
            }
            "/ignore" => *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE,
            "/stream" => response = Response::new(frames(&["ab", "cd"], Some(("x-sum", "9")))),
            "/nocontent" => *response.status_mut() = StatusCode::NO_CONTENT,
            "/overlong" => {
                response = Response::new(frames(&["hello"], None));
                response
                    .headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
            }
            "/short-trailers" => {
                response = Response::new(frames(&["abc"], Some(("x-sum", "1"))));
                response
                    .headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
            }
            "/slow" => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                response = Response::new(frames(&["late"], None));
            }
            _ => {
                response = Response::new(frames(&["ok"], None));
                response
                    .headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
            }
        }
        response
    }

    async fn server(head_timeout: Duration) -> (SocketAddr, Arc<Shutdown>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Arc::new(Shutdown::default());
        let connections = shutdown.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_connection(
                    stream,
                    answer,
                    connections.enter(),
                    Settings::for_tests(head_timeout),
                ));
            }
        });
        (addr, shutdown)
    }

    async fn connect(addr: SocketAddr) -> TcpStream {
        TcpStream::connect(addr).await.unwrap()
    }

    /// Reads until `want` responses have arrived whole (by Content-Length,
    /// chunked or, for `connection: close`, the end of the stream), or the
    /// connection closes, or a second passes.
    async fn read_for(stream: &mut TcpStream, until: &str) -> String {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains(until) {
            match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    /// Sends `request`, then reads as [`read_for`] does.
    async fn ask(stream: &mut TcpStream, request: &[u8], until: &str) -> String {
        stream.write_all(request).await.unwrap();
        read_for(stream, until).await
    }

    /// Whether the server closed the connection (within two seconds).
    async fn closed(stream: &mut TcpStream) -> bool {
        let mut buf = [0u8; 256];
        loop {
            match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }

    fn settings() -> Duration {
        Duration::from_secs(30)
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_on_one_connection() {
        let (addr, _) = server(settings()).await;
        let mut s = connect(addr).await;
        let got = ask(&mut s, b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nPOST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nhost: x\r\n\r\n", "\r\n\r\nok\x00").await;
        let answers: Vec<&str> = got.matches("HTTP/1.1 200 OK").collect();
        assert_eq!(answers.len(), 3, "{got}");
        let hello = got.find("hello").unwrap();
        assert!(
            got.find("ok").unwrap() < hello && got.rfind("ok").unwrap() > hello,
            "{got}"
        );
        assert!(got.contains("date: "), "{got}");
        assert!(!got.contains("connection: close"), "{got}");
        // Still open for more.
        assert!(
            ask(&mut s, b"GET /c HTTP/1.1\r\nhost: x\r\n\r\n", "ok")
                .await
                .contains("200 OK")
        );
    }

    #[tokio::test]
    async fn a_chunked_request_body_is_read_with_its_trailers() {
        let (addr, _) = server(settings()).await;
        let mut s = connect(addr).await;
        s.write_all(
            b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n",
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got = ask(
            &mut s,
            b"6\r\n world\r\n0\r\nx-t: tail\r\n\r\n",
            "hello world",
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(got.contains("content-length: 11\r\n"), "{got}");
        assert!(got.contains("x-trailer: tail\r\n"), "{got}");
        // The connection is kept: the body was read to its end.
        assert!(
            ask(&mut s, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", "ok")
                .await
                .contains("200 OK")
        );
    }

    #[tokio::test]
    async fn expect_continue_gets_the_interim_answer_when_the_body_is_read() {
        let (addr, _) = server(settings()).await;
        let mut s = connect(addr).await;
        let interim = ask(
            &mut s,
            b"POST /echo HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\n",
            "\r\n\r\n",
        )
        .await;
        assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
        let got = ask(&mut s, b"ping", "ping").await;
        assert!(
            got.starts_with("HTTP/1.1 200 OK\r\n") && got.ends_with("ping"),
            "{got}"
        );
    }

    #[tokio::test]
    async fn a_body_left_unread_gets_no_interim_answer_and_the_connection_closes() {
        let (addr, _) = server(settings()).await;
        let mut s = connect(addr).await;
        let got = ask(&mut s, b"POST /ignore HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 100000\r\n\r\n", "\r\n\r\n").await;
        assert!(
            got.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
            "{got}"
        );
        assert!(!got.contains("100 Continue"), "{got}");
        assert!(got.contains("connection: close\r\n"), "{got}");
        // The client may send the body anyway: it is read and dropped, and
        // the connection ends with a clean close.
        s.write_all(&vec![b'a'; 100_000]).await.unwrap();
        assert!(closed(&mut s).await);
    }

    #[tokio::test]
    async fn smuggling_shapes_and_bad_heads_are_refused() {
        let (addr, _) = server(settings()).await;
        let cases: [(&[u8], &str); 13] = [
            (b"GET / HTTP/1.1\r\n\r\n", "400"),
            // Past the signed 64-bit range (RFC 9110 §8.6 lets a recipient
            // refuse what it cannot hold; nginx does).
            (
                b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 9223372036854775808\r\n\r\n",
                "400",
            ),
            (
                b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 18446744073709551616\r\n\r\n",
                "400",
            ),
            (b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n", "400"),
            (
                b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
                "400",
            ),
            (
                b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
                "400",
            ),
            (b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: -1\r\n\r\n", "400"),
            (b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 1,1\r\n\r\n", "400"),
            (
                b"POST /echo HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n",
                "400",
            ),
            (
                b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked, identity\r\n\r\n",
                "400",
            ),
            (
                b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
                "501",
            ),
            (
                b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
                "400",
            ),
            (b"GET /a b HTTP/1.1\r\nhost: x\r\n\r\n", "400"),
        ];
        for (request, status) in cases {
            let mut s = connect(addr).await;
            let got = ask(&mut s, request, "\n\n").await;
            assert!(
                got.starts_with(&format!("HTTP/1.1 {status} ")),
                "{}: {got}",
                String::from_utf8_lossy(request)
            );
            assert!(got.contains("connection: close\r\n"), "{got}");
            assert!(closed(&mut s).await);
        }
    }

    /// A server whose handler counts its calls and answers "ok".
    async fn counting_server() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let shutdown = Arc::new(Shutdown::default());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counted = counted.clone();
                let handler = move |_: Request<ClientBody>| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    async { Response::new(frames(&["ok"], None)) }
                };
                tokio::spawn(serve_connection(
                    stream,
                    handler,
                    shutdown.enter(),
                    Settings::for_tests(settings()),
                ));
            }
        });
        (addr, calls)
    }

    #[tokio::test]
    async fn a_body_on_a_method_without_one_is_refused_unread() {
        let (addr, calls) = counting_server().await;
        for method in ["GET", "HEAD", "DELETE", "OPTIONS", "TRACE"] {
            for framing in [
                "content-length: 5\r\n\r\nhello",
                "transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                "transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
                "transfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            ] {
                let mut s = connect(addr).await;
                // The body holds a whole request: it must never be read as one.
                let request = format!(
                    "{method} /x HTTP/1.1\r\nhost: x\r\n{framing}GET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n"
                );
                let got = ask(&mut s, request.as_bytes(), "\n\n").await;
                assert!(
                    got.starts_with("HTTP/1.1 400 Bad Request\r\n"),
                    "{method} {framing}: {got}"
                );
                assert!(got.contains("connection: close\r\n"), "{got}");
                let got = got + &read_for(&mut s, "\n\n\n").await;
                if method == "HEAD" {
                    // No body after a HEAD, though the length is told.
                    assert!(got.ends_with("\r\n\r\n"), "{got}");
                } else {
                    assert!(
                        got.ends_with(&format!("{method} request must not have a body\n")),
                        "{got}"
                    );
                }
                assert!(closed(&mut s).await, "{method} {framing}");
            }
        }
        assert_eq!(calls.load(Ordering::SeqCst), 0, "the handler was called");
        // A length of zero is no body: served, and the connection kept.
        let mut s = connect(addr).await;
        for method in ["GET", "HEAD", "DELETE", "OPTIONS", "TRACE"] {
            let request = format!("{method} /x HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n");
            let until = if method == "HEAD" { "\r\n\r\n" } else { "ok" };
            let got = ask(&mut s, request.as_bytes(), until).await;
            assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{method}: {got}");
            assert!(!got.contains("connection: close"), "{method}: {got}");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 5);
        // A POST may have a body.
        let got = ask(
            &mut s,
            b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi",
            "ok",
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert_eq!(calls.load(Ordering::SeqCst), 6);
    }

    #[tokio::test]
    async fn hosts_and_paths_that_name_something_else_are_refused_unserved() {
        use crate::target::{CONTROL_IN_PATH, INVALID_HOST, MALFORMED_ESCAPE, PATH_NOT_UTF8};
        let (addr, calls) = counting_server().await;
        for (request, why) in [
            ("GET / HTTP/1.1\r\nhost: a b\r\n\r\n", INVALID_HOST),
            ("GET / HTTP/1.1\r\nhost: \r\n\r\n", INVALID_HOST),
            ("GET / HTTP/1.1\r\nhost: user@h\r\n\r\n", INVALID_HOST),
            ("GET / HTTP/1.1\r\nhost: h/x\r\n\r\n", INVALID_HOST),
            ("GET / HTTP/1.1\r\nhost: h:99999\r\n\r\n", INVALID_HOST),
            ("GET / HTTP/1.0\r\nhost: h h\r\n\r\n", INVALID_HOST),
            ("GET /token%00 HTTP/1.1\r\nhost: h\r\n\r\n", CONTROL_IN_PATH),
            ("GET /token%09 HTTP/1.1\r\nhost: h\r\n\r\n", CONTROL_IN_PATH),
            ("GET /token%0a HTTP/1.1\r\nhost: h\r\n\r\n", CONTROL_IN_PATH),
            (
                "GET /a/%2500/token HTTP/1.1\r\nhost: h\r\n\r\n",
                CONTROL_IN_PATH,
            ),
            (
                "GET /%c0%ae%c0%ae/token HTTP/1.1\r\nhost: h\r\n\r\n",
                PATH_NOT_UTF8,
            ),
            (
                "GET /token%zz HTTP/1.1\r\nhost: h\r\n\r\n",
                MALFORMED_ESCAPE,
            ),
            (
                "GET http://h/token%00 HTTP/1.1\r\nhost: h\r\n\r\n",
                CONTROL_IN_PATH,
            ),
        ] {
            let mut s = connect(addr).await;
            let got = ask(&mut s, request.as_bytes(), "\n\n").await;
            assert!(
                got.starts_with("HTTP/1.1 400 Bad Request\r\n"),
                "{request}: {got}"
            );
            assert!(
                got.ends_with(&format!("\r\n\r\n{why}\n")),
                "{request}: {got}"
            );
            assert!(closed(&mut s).await, "{request}");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 0, "the handler was called");
        // The query is not the path's business, and these are names.
        let mut s = connect(addr).await;
        for request in [
            "GET /a?x=%00%c0 HTTP/1.1\r\nhost: h\r\n\r\n",
            "GET /token%20 HTTP/1.1\r\nhost: login.example.com:8443\r\n\r\n",
            "GET /token%3f HTTP/1.1\r\nhost: [::1]:8080\r\n\r\n",
            "GET /caf%C3%A9 HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n",
        ] {
            let got = ask(&mut s, request.as_bytes(), "ok").await;
            assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{request}: {got}");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn connect_is_refused() {
        let (addr, calls) = counting_server().await;
        for request in [
            &b"CONNECT upstream.example:443 HTTP/1.1\r\nhost: upstream.example:443\r\n\r\n"[..],
            b"CONNECT / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
        ] {
            let mut s = connect(addr).await;
            let got = ask(&mut s, request, "\n\n").await;
            assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got}");
            assert!(got.contains("connection: close\r\n"), "{got}");
            assert!(got.ends_with(&format!("{CONNECT_REFUSED}\n")), "{got}");
            assert!(closed(&mut s).await);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn heads_too_large_or_with_too_many_fields_get_431() {
        let (addr, _) = server(settings()).await;
        let mut s = connect(addr).await;
        let big = format!(
            "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
            "a".repeat(70 * 1024)
        );
        let got = ask(&mut s, big.as_bytes(), "\n\n").await;
        assert!(got.starts_with("HTTP/1.1 431 "), "{got}");

        let mut s = connect(addr).await;
        let mut many = String::from("GET / HTTP/1.1\r\nhost: x\r\n");
        for i in 0..=MAX_FIELDS {
            many.push_str(&format!("x-f{i}: v\r\n"));
        }
        many.push_str("\r\n");
        let got = ask(&mut s, many.as_bytes(), "\n\n").await;
        assert!(got.starts_with("HTTP/1.1 431 "), "{got}");

        // Forty fields are fine: the second, larger parse takes them.
        let mut s = connect(addr).await;
        let mut forty = String::from("GET / HTTP/1.1\r\nhost: x\r\n");
        for i in 0..40 {
            forty.push_str(&format!("x-f{i}: v\r\n"));
        }
        forty.push_str("\r\n");
        assert!(
            ask(&mut s, forty.as_bytes(), "ok")
                .await
                .starts_with("HTTP/1.1 200 OK")
        );
    }

    #[tokio::test]
    async fn the_head_timeout_closes_slow_and_idle_connections() {
        let (addr, _) = server(Duration::from_millis(300)).await;
        // A head that never ends.
        let mut slow = connect(addr).await;
        slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-a: 1\r\n")
            .await
            .unwrap();
        // A connection that answered once and then idles.
        let mut idle = connect(addr).await;
        assert!(
            ask(&mut idle, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", "ok")
                .await
                .contains("200 OK")
        );
        // A busy one: each head comes within the timeout, so it stays.
        let mut busy = connect(addr).await;
        let started = Instant::now();
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            assert!(
                ask(&mut busy, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", "ok")
                    .await
                    .contains("200 OK")
            );
        }
        assert!(started.elapsed() > Duration::from_millis(500));
        assert!(closed(&mut slow).await);
        assert!(closed(&mut idle).await);
    }

    #[tokio::test]
    async fn http_1_0_clients_get_keep_alive_only_when_they_ask() {
        let (addr, _) = server(settings()).await;
        let mut s = connect(addr).await;
        let got = ask(&mut s, b"GET / HTTP/1.0\r\n\r\n", "ok").await;
        assert!(got.contains("connection: close\r\n"), "{got}");
        assert!(closed(&mut s).await);

        let mut s = connect(addr).await;
        let got = ask(
            &mut s,
            b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n",
            "ok",
        )
        .await;
        assert!(got.contains("connection: keep-alive\r\n"), "{got}");
        // A body of unknown length ends with the connection for HTTP/1.0.
        let got = ask(
            &mut s,
            b"GET /stream HTTP/1.0\r\nconnection: keep-alive\r\n\r\n",
            "\u{0}",
        )
        .await;
        assert!(got.contains("connection: close\r\n"), "{got}");
        assert!(!got.contains("transfer-encoding"), "{got}");
        assert!(got.ends_with("\r\n\r\nabcd"), "{got}");
    }

    #[tokio::test]
    async fn bodies_are_framed_by_what_is_known() {
        let (addr, _) = server(settings()).await;
        let mut s = connect(addr).await;
        // Unknown length: chunked; trailers only for a client that takes them.
        let got = ask(
            &mut s,
            b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n",
            "0\r\n\r\n",
        )
        .await;
        assert!(got.contains("transfer-encoding: chunked\r\n"), "{got}");
        assert!(
            got.ends_with("\r\n\r\n2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n"),
            "{got}"
        );
        let got = ask(
            &mut s,
            b"GET /stream HTTP/1.1\r\nhost: x\r\nte: trailers\r\n\r\n",
            "x-sum: 9\r\n\r\n",
        )
        .await;
        assert!(got.ends_with("0\r\nx-sum: 9\r\n\r\n"), "{got}");
        // HEAD: the head only, with the length the GET would have.
        let got = ask(&mut s, b"HEAD / HTTP/1.1\r\nhost: x\r\n\r\n", "\r\n\r\n").await;
        assert!(
            got.contains("content-length: 2\r\n") && got.ends_with("\r\n\r\n"),
            "{got}"
        );
        // 204: no body, no length.
        let got = ask(
            &mut s,
            b"GET /nocontent HTTP/1.1\r\nhost: x\r\n\r\n",
            "\r\n\r\n",
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 204 No Content\r\n"), "{got}");
        assert!(
            !got.contains("content-length") && !got.contains("transfer-encoding"),
            "{got}"
        );
        // Still in step: the next answer is whole and alone.
        let got = ask(&mut s, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", "ok").await;
        assert!(
            got.starts_with("HTTP/1.1 200 OK\r\n") && got.ends_with("\r\n\r\nok"),
            "{got}"
        );
    }

    #[tokio::test]
    async fn a_body_longer_than_its_length_is_cut_and_the_connection_closed() {
        let (addr, _) = server(settings()).await;
        let mut s = connect(addr).await;
        let got = ask(
            &mut s,
            b"GET /overlong HTTP/1.1\r\nhost: x\r\n\r\n",
            "\u{0}",
        )
        .await;
        assert!(got.contains("content-length: 3\r\n"), "{got}");
        assert!(got.ends_with("\r\n\r\nhel"), "{got}");
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections_and_lets_busy_ones_finish() {
        let (addr, shutdown) = server(settings()).await;
        let mut idle = connect(addr).await;
        assert!(
            ask(&mut idle, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", "ok")
                .await
                .contains("200 OK")
        );
        let mut busy = connect(addr).await;
        busy.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        shutdown.begin();
        assert!(closed(&mut idle).await);
        let got = read_for(&mut busy, "late").await;
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(got.contains("connection: close\r\n"), "{got}");
        tokio::time::timeout(Duration::from_secs(2), shutdown.drained())
            .await
            .expect("every connection closed");
    }

    #[tokio::test]
    async fn a_lenient_chunk_line_is_refused_and_nothing_is_smuggled() {
        let (addr, _) = server(settings()).await;
        let mut s = connect(addr).await;
        s.write_all(
            b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n2;\nxx\r\n4c\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n",
        )
        .await
        .unwrap();
        let got = read_for(&mut s, "\u{0}").await;
        assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got}");
        assert_eq!(got.matches("HTTP/1.1").count(), 1, "{got}");
    }

    #[tokio::test]
    async fn a_bare_lf_in_a_trailer_section_is_refused_and_nothing_is_smuggled() {
        let (addr, _) = server(settings()).await;
        // hyper reads on past these LFs to the next CRLF CRLF, and takes
        // the request after them for trailers: a reader that ends the body
        // at the LF sees one request more.
        for tail in [
            "0\r\n\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n",
            "0\r\nx-t: 1\n\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n",
            "0\r\nx-t: 1\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n",
        ] {
            let mut s = connect(addr).await;
            let request = format!(
                "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n{tail}"
            );
            s.write_all(request.as_bytes()).await.unwrap();
            let got = read_for(&mut s, "\u{0}").await;
            assert!(
                got.starts_with("HTTP/1.1 400 Bad Request\r\n"),
                "{tail:?}: {got}"
            );
            assert_eq!(got.matches("HTTP/1.1").count(), 1, "{tail:?}: {got}");
        }
    }

    #[tokio::test]
    async fn a_body_shorter_than_its_length_with_trailers_closes_the_connection() {
        let (addr, _) = server(settings()).await;
        let mut s = connect(addr).await;
        let got = ask(
            &mut s,
            b"GET /short-trailers HTTP/1.1\r\nhost: x\r\nte: trailers\r\n\r\n",
            "\u{0}",
        )
        .await;
        assert!(
            got.contains("content-length: 10\r\n") && got.ends_with("\r\n\r\nabc"),
            "{got}"
        );
        assert!(closed(&mut s).await);
    }

    #[tokio::test]
    async fn a_body_read_elsewhere_fails_when_the_connection_lets_go() {
        // The body is read by another task, as hyper's client does for an
        // HTTPS upstream, and outlives the exchange.
        let (verdicts, mut verdict) = tokio::sync::mpsc::unbounded_channel();
        let handler = move |req: Request<ClientBody>| {
            let verdicts = verdicts.clone();
            async move {
                tokio::spawn(async move {
                    let _ = verdicts.send(req.into_body().collect().await.is_ok());
                });
                Response::new(frames(&["taken"], None))
            }
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Arc::new(Shutdown::default());
        let open = shutdown.enter();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            serve_connection(stream, handler, open, Settings::for_tests(settings())).await;
        });
        // The body never comes whole: the connection answers and closes,
        // and the reader gets an error rather than waiting on a socket that
        // is gone.
        let mut s = connect(addr).await;
        let got = ask(
            &mut s,
            b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\npart",
            "taken",
        )
        .await;
        assert!(got.contains("connection: close\r\n"), "{got}");
        let read = tokio::time::timeout(Duration::from_secs(2), verdict.recv()).await;
        assert_eq!(read.unwrap(), Some(false));
        tokio::time::timeout(Duration::from_secs(3), shutdown.drained())
            .await
            .expect("the connection closed");
    }

    /// A body read before the request goes on: whole when it ends within
    /// the bound (with its trailers), else the part read and then the rest,
    /// which together are the body, with its length still known.
    #[tokio::test]
    async fn a_buffered_body_is_whole_within_the_bound_and_streams_past_it() {
        let budget = Budget::new(1 << 20, Arc::new(Metrics::new().unwrap()));
        let held = budget.clone();
        let handler = move |req: Request<ClientBody>| {
            let budget = budget.clone();
            async move { buffer_and_tell(req, &budget).await }
        };
        async fn buffer_and_tell(
            req: Request<ClientBody>,
            budget: &Arc<Budget>,
        ) -> Response<Frames> {
            let body = req.into_body().buffered(8, budget).await.unwrap();
            let (whole, hint) = (body.is_whole(), body.size_hint().exact());
            let collected = body.collect().await.unwrap();
            let trailer = collected.trailers().and_then(|t| t.get("x-t")).cloned();
            let text = format!(
                "{whole} {hint:?} {} {:?}",
                String::from_utf8_lossy(&collected.to_bytes()),
                trailer
            );
            Response::new(Frames(VecDeque::from([Frame::data(Bytes::from(text))])))
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Arc::new(Shutdown::default());
        let connections = shutdown.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_connection(
                    stream,
                    handler.clone(),
                    connections.enter(),
                    Settings::for_tests(settings()),
                ));
            }
        });
        let mut s = connect(addr).await;
        s.write_all(
            b"POST /x HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n",
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got = ask(&mut s, b"0\r\nx-t: 1\r\n\r\n", "\"1\")").await;
        assert!(got.contains("\r\ntrue None abc Some(\"1\")\r\n"), "{got}");
        s.write_all(b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 20\r\n\r\n0123456789")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got = ask(&mut s, b"abcdefghij", "None").await;
        assert!(
            got.contains("\r\nfalse Some(20) 0123456789abcdefghij None\r\n"),
            "{got}"
        );
        // Handed on, nothing is held.
        assert_eq!(held.used(), 0);
    }

    #[test]
    fn the_read_ahead_budget_is_shared_and_given_back() {
        let budget = Budget::new(10, Arc::new(Metrics::new().unwrap()));
        let mut a = Held::new(&budget);
        let mut b = Held::new(&budget);
        assert!(a.grow(6));
        assert!(!b.grow(5), "past the bound");
        assert!(b.grow(4));
        assert_eq!(budget.used(), 10);
        drop(a);
        assert_eq!(budget.used(), 4);
        assert!(b.grow(6));
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn an_interim_answer_begun_is_finished_before_the_final_one() {
        let mut inbound = Inbound {
            stream: None,
            inbox: Inbox::default(),
            copies: Copies::default(),
            framing: Framing::Length(3),
            interim: Some(10),
            answered: false,
            failed: false,
            waker: None,
            timer: ReadTimer::new(Duration::from_secs(30), Arc::new(Metrics::new().unwrap())),
        };
        let mut out = Vec::new();
        inbound.answer(&mut out);
        assert_eq!(out, &CONTINUE[10..]);
        assert!(inbound.answered && inbound.interim.is_none());
        // Not begun: nothing is owed.
        let mut inbound = Inbound {
            interim: Some(0),
            answered: false,
            ..inbound
        };
        let mut out = Vec::new();
        inbound.answer(&mut out);
        assert!(out.is_empty());
    }
}
