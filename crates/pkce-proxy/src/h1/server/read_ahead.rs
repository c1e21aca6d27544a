//! Reading a request body ahead, before the request goes on: whole when it
//! ends within a bound, and held against the budget that all requests'
//! read-ahead bodies share.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::header::HeaderMap;
use http_body::{Body, Frame};

use super::request_body::{BodyKind, ClientBody, ClientBodyError, ReadAhead};
use crate::metrics::{Limit, Metrics};

impl ClientBody {
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
pub(super) struct Held {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
}
