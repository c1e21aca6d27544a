//! A client's request body, as the handler sees it: read from the
//! connection as it is polled (with `100 Continue` sent when it is first
//! read), whole in memory, or from hyper; under the body timeout, and with
//! its errors marked as the client's.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::read_ahead::Held;
use crate::h1::body::{self, Framing};
use crate::h1::socket::{Copies, Inbox, WireError};
use crate::metrics::{Limit, Metrics};

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The body of a client's request: read from the connection as it is
/// polled, or already whole, or from hyper (HTTP/2, and HTTP/1.1 over
/// TLS), or what the proxy
/// read of it ahead and then the rest (see `ClientBody::buffered`). A
/// body is moved with its request several times, so what only some bodies
/// need is boxed.
pub struct ClientBody(pub(super) BodyKind);

pub(super) enum BodyKind {
    Full(Option<Bytes>),
    Stream(Arc<Mutex<Inbound>>),
    Hyper(Box<HyperBody>),
    Ahead(Box<(ReadAhead, BodyKind)>),
}

/// A body from hyper's server, under the body timeout.
pub(super) struct HyperBody {
    body: Incoming,
    timer: ReadTimer,
}

/// What was read of a body before it went on: its data goes first and
/// its trailers (of a body read whole) last; it holds its share of the
/// read-ahead budget until its data is out.
pub(super) struct ReadAhead {
    pub(super) data: Option<Bytes>,
    pub(super) trailers: Option<HeaderMap>,
    pub(super) held: Option<Held>,
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

    /// Whether hyper, not the proxy's own server, parsed the request (see
    /// [`serve_hyper`](super::serve_hyper)): its head was not checked here.
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
}

/// The body timeout: a request body that goes longer than `timeout`
/// without a byte while it is being read fails. Armed only when a read
/// finds nothing, so a body that keeps coming never reads the clock.
pub(super) struct ReadTimer {
    timeout: Duration,
    deadline: Option<Instant>,
    sleep: Option<Pin<Box<Sleep>>>,
    metrics: Arc<Metrics>,
}

impl ReadTimer {
    pub(super) fn new(timeout: Duration, metrics: Arc<Metrics>) -> Self {
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
pub(super) struct Inbound {
    /// `None` once the connection has let go of the body (see `detach`).
    pub(super) stream: Option<Arc<TcpStream>>,
    pub(super) inbox: Inbox,
    pub(super) copies: Copies,
    pub(super) framing: Framing,
    /// How much of `100 Continue` is written, while it is owed.
    pub(super) interim: Option<usize>,
    /// The final response has started: no interim response may follow.
    pub(super) answered: bool,
    pub(super) failed: bool,
    /// Who waits for more of the body: woken when the connection lets go.
    pub(super) waker: Option<std::task::Waker>,
    pub(super) timer: ReadTimer,
}

pub(super) fn lock(inbound: &Mutex<Inbound>) -> MutexGuard<'_, Inbound> {
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
        body::read_frame(
            &mut self.inbox,
            &mut self.copies,
            &mut &*stream,
            &mut self.framing,
            cx,
        )
        .map(|frame| frame.transpose())
    }

    pub(super) fn is_complete(&self) -> bool {
        self.framing == Framing::Done && !self.failed
    }

    /// The final response starts: what is owed of an interim response
    /// already begun must go out first, whole (an interim response cut
    /// short would corrupt the final one), and none may start after.
    pub(super) fn answer(&mut self, out: &mut Vec<u8>) {
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
    pub(super) fn detach(&mut self) {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
