//! What the proxy watches on a client's HTTP/2 connection, which hyper
//! serves: whether any request is open (the idle timeout), and whether a
//! response has waited too long for the client to take it (the send
//! timeout).
//!
//! hyper enforces the rest: the most concurrent streams and the largest
//! header list it advertises, and the keep-alive pings.
//!
//! A response body waits for the client when hyper has not asked it for
//! more since it gave its last frame: hyper asks once the client's flow
//! control window has room and the socket takes the bytes, so a client
//! that withholds its window (RFC 9113 §6.9) or stops reading leaves the
//! body waiting, holding its upstream connection. Each waiting body is
//! counted in the bucket of the tick at which it began to wait; a tick
//! every half send timeout that finds a body in the bucket of three ticks
//! ago closes the connection, so a body that waits between one and one and
//! a half send timeouts ends it. Counting costs two atomics per frame and
//! no lock.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;

/// How HTTP/2 connections are served.
#[derive(Debug, Clone, Copy)]
pub(crate) struct H2Settings {
    /// How long a connection with no request open stays open.
    pub(crate) idle_timeout: Duration,
    /// The interval between keep-alive pings.
    pub(crate) keepalive_interval: Duration,
    /// How long a ping may go unanswered.
    pub(crate) keepalive_timeout: Duration,
    /// The largest header list a client may send.
    pub(crate) max_header_list_size: u32,
    /// The most concurrent streams.
    pub(crate) max_concurrent_streams: u32,
}

/// One connection's open requests and waiting response bodies.
#[derive(Debug)]
pub(crate) struct Watch {
    started: Instant,
    /// Requests open: from their head until their response body is done.
    open: AtomicUsize,
    /// When the last request closed, in nanoseconds since `started`.
    idle_since: AtomicU64,
    tick: AtomicUsize,
    /// Response bodies waiting for the client, by the tick they began at
    /// (modulo 4).
    waiting: [AtomicUsize; 4],
}

impl Watch {
    /// A connection idle since `started`.
    pub(crate) fn since(started: Instant) -> Arc<Self> {
        Arc::new(Self {
            started,
            open: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            tick: AtomicUsize::new(0),
            waiting: Default::default(),
        })
    }

    /// When the connection will have been idle for `timeout`, or `None`
    /// while a request is open.
    pub(crate) fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.open.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let since = Duration::from_nanos(self.idle_since.load(Ordering::SeqCst));
        Some(self.started + since + timeout)
    }

    /// The next tick: whether a response body has waited since three
    /// ticks ago.
    pub(crate) fn tick(&self) -> bool {
        let now = self.tick.fetch_add(1, Ordering::SeqCst).wrapping_add(1);
        self.waiting[now.wrapping_add(1) % 4].load(Ordering::SeqCst) > 0
    }

    fn wait(&self) -> usize {
        let tick = self.tick.load(Ordering::SeqCst);
        self.waiting[tick % 4].fetch_add(1, Ordering::SeqCst);
        tick
    }

    fn stop_waiting(&self, since: usize) {
        self.waiting[since % 4].fetch_sub(1, Ordering::SeqCst);
    }
}

/// One request of a connection, open while it lives.
#[derive(Debug)]
pub(crate) struct Stream {
    watch: Arc<Watch>,
    /// The tick at which its response body began to wait.
    waiting: Option<usize>,
}

impl Stream {
    /// A request of `watch`'s connection opens.
    pub(crate) fn open(watch: &Arc<Watch>) -> Self {
        watch.open.fetch_add(1, Ordering::SeqCst);
        Self {
            watch: watch.clone(),
            waiting: None,
        }
    }

    fn wait(&mut self) {
        if self.waiting.is_none() {
            self.waiting = Some(self.watch.wait());
        }
    }

    fn stop_waiting(&mut self) {
        if let Some(since) = self.waiting.take() {
            self.watch.stop_waiting(since);
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop_waiting();
        let watch = &self.watch;
        if watch.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            let since = u64::try_from(watch.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            watch.idle_since.store(since, Ordering::SeqCst);
        }
    }
}

pin_project! {
    /// A response body on a watched connection: its request stays open
    /// until the body is done, and the body counts as waiting from when
    /// it has a frame out until hyper asks for the next.
    pub(crate) struct Watched<B> {
        #[pin]
        body: B,
        stream: Stream,
    }
}

impl<B: Body> Watched<B> {
    /// `body`, the response of `stream`'s request. A body with something
    /// to send waits from the start: hyper asks for it only once the
    /// client's window has room.
    pub(crate) fn new(body: B, mut stream: Stream) -> Self {
        if !body.is_end_stream() {
            stream.wait();
        }
        Self { body, stream }
    }
}

impl<B: Body<Data = Bytes>> Body for Watched<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        this.stream.stop_waiting();
        let mut body = this.body;
        let frame = ready!(body.as_mut().poll_frame(cx));
        if matches!(&frame, Some(Ok(f)) if f.is_data()) && !body.is_end_stream() {
            this.stream.wait();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::{BodyExt, Full};

    use super::*;

    /// `0` frames of one byte left, each ready at once.
    struct Frames(usize);

    impl Body for Frames {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            if self.0 == 0 {
                return Poll::Ready(None);
            }
            self.0 -= 1;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"y")))))
        }

        fn is_end_stream(&self) -> bool {
            self.0 == 0
        }
    }

    #[test]
    fn a_body_that_waits_three_ticks_is_found_and_one_that_moves_is_not() {
        let watch = Watch::since(Instant::now());
        let waiting = Watched::new(Frames(1), Stream::open(&watch));
        assert!(!watch.tick());
        assert!(!watch.tick());
        assert!(watch.tick(), "waited since the tick before the first");
        drop(waiting);
        assert!(!watch.tick());

        // Asked for more at each tick: never found.
        let mut moving = Watched::new(Frames(5), Stream::open(&watch));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        for _ in 0..5 {
            assert!(!watch.tick());
            let frame = Pin::new(&mut moving).poll_frame(&mut cx);
            assert!(matches!(frame, Poll::Ready(Some(Ok(_)))));
        }
        // Its last frame out, it waits no more.
        assert!(!watch.tick() && !watch.tick() && !watch.tick() && !watch.tick());
    }

    #[tokio::test]
    async fn a_connection_is_idle_once_its_last_request_is_done() {
        let watch = Watch::since(Instant::now());
        let timeout = Duration::from_secs(60);
        assert_eq!(watch.idle_deadline(timeout), Some(watch.started + timeout));
        let stream = Stream::open(&watch);
        let body = Watched::new(Full::new(Bytes::from_static(b"done")), stream);
        assert_eq!(watch.idle_deadline(timeout), None);
        let _ = body.collect().await;
        let deadline = watch.idle_deadline(timeout).unwrap();
        assert!(deadline >= watch.started + timeout);
    }
}
