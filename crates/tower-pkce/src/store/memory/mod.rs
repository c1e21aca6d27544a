//! The in-memory store: sharded maps with a TTL and a shared capacity.
//!
//! A bound code passes through three maps:
//!
//! - `bindings`, while its binding is live;
//! - `spent`, once redeemed and until its binding's TTL ends. It keeps the
//!   room its binding held, and may be restored. All it needs is its key and
//!   two expiries, so its entries are about a quarter the size of a live
//!   binding's: a busy server spends most of the codes it binds, and those
//!   fill memory, and every growth of the map, at that size;
//! - `marks`, once its binding's TTL has ended (spent or not), until its
//!   mark ends. Marks hold no room under `capacity`: they have a bound of
//!   their own, at which the marks that expire soonest are dropped.
//!
//! An expired binding becomes a mark when it is swept, or when a request
//! finds it first.
//!
//! Pending authorizations are also queued by arrival, per segment, so that
//! a full store can evict the oldest of them; each remembers its source,
//! whose count (for the per-source quota) it holds until it is taken,
//! expires or is evicted.

use std::future::{Future, ready};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::{
    CodeBinding, PendingAuthorization, Redemption, Store, StoreError, StoreKey, StorePressure,
    StoreStats,
};
use crate::Source;

mod admission;
mod bindings;
mod builder;
mod pending;
mod segments;
mod sweep;

pub use builder::{DEFAULT_CAPACITY, DEFAULT_SWEEP_PERIOD, MemoryStoreBuilder};

use admission::Arrivals;
use segments::{SEGMENTS, Segments};

/// Time is kept in sixteenths of a second since the store was made: a `u32`
/// then lasts eight years, and a record costs four bytes for its expiry.
const TICKS_PER_SECOND: u64 = 16;

/// A pending authorization.
struct Waiting {
    value: PendingAuthorization,
    expires: u32,
    /// The source it counts against, when the store has a quota.
    source: Option<Source>,
}

/// A live binding.
struct Live {
    value: CodeBinding,
    expires: u32,
    /// When the code stops being remembered as bound; never before
    /// `expires`.
    mark_expires: u32,
}

/// A redeemed code whose binding's TTL has not ended.
#[derive(Clone, Copy)]
struct Spent {
    /// When the binding would have expired: until then the code holds its
    /// room, and may be restored.
    expires: u32,
    mark_expires: u32,
}

/// A code whose binding's TTL has ended.
#[derive(Clone, Copy)]
struct Mark {
    expires: u32,
    /// Redeemed (or burned), rather than left to expire.
    spent: bool,
}

struct Inner {
    pending: Segments<Waiting>,
    /// How many records `pending` holds.
    pending_len: AtomicUsize,
    arrivals: [Mutex<Arrivals>; SEGMENTS],
    /// The most pending authorizations one source may hold.
    quota: Option<usize>,
    /// Pending authorizations by source, when there is a quota; a source
    /// leaves the map when its count falls to zero.
    sources: DashMap<Source, usize>,
    /// Sources whose count is at the quota.
    at_quota: AtomicUsize,
    /// Pending authorizations evicted while live.
    evicted: AtomicU64,
    /// Live bindings.
    bindings: Segments<Live>,
    /// Redeemed codes until their binding's TTL ends. A key is in at most
    /// one of `bindings`, `spent` and `marks`. Locks are taken in that order
    /// and never the other way: a change that binds, redeems or restores a
    /// code holds its `bindings` shard's lock throughout, and the sweep moves
    /// a key on to `marks` while it holds the lock of the map it leaves. So a
    /// reader that holds the `bindings` lock and looks in `spent`, then in
    /// `marks`, always finds a key that is in one of them.
    spent: Segments<Spent>,
    /// Codes whose binding's TTL has ended, until their mark ends; bounded
    /// by `mark_capacity`, not counted in `len`.
    marks: Segments<Mark>,
    capacity: usize,
    /// Pending authorizations, live bindings and spent codes.
    len: AtomicUsize,
    mark_capacity: usize,
    mark_ttl: Duration,
    /// Whether a segment of `marks` is being trimmed.
    trimming: [AtomicBool; SEGMENTS],
    epoch: Instant,
    sweep_period: Duration,
    sweeper_started: AtomicBool,
    last_sweep: AtomicU64,
}

impl Inner {
    fn now(&self) -> u32 {
        let ticks = self.epoch.elapsed().as_millis() as u64 * TICKS_PER_SECOND / 1000;
        u32::try_from(ticks).unwrap_or(u32::MAX)
    }

    /// When a record written at `now` with `ttl` expires.
    fn expiry(now: u32, ttl: Duration) -> u32 {
        let ttl_ticks = (ttl.as_millis() as u64 * TICKS_PER_SECOND).div_ceil(1000);
        // At least one whole tick, so that a record outlives its TTL rather
        // than dying early through rounding.
        let ticks = u64::from(now) + ttl_ticks.max(1) + 1;
        u32::try_from(ticks).unwrap_or(u32::MAX)
    }

    /// A binding written at `now`: live for `ttl`, marked for the mark
    /// lifetime or `ttl`, whichever is longer.
    fn live(&self, now: u32, value: CodeBinding, ttl: Duration) -> Live {
        let expires = Self::expiry(now, ttl);
        Live {
            value,
            expires,
            mark_expires: Self::expiry(now, self.mark_ttl).max(expires),
        }
    }

    fn release(&self, n: usize) {
        if n > 0 {
            self.len.fetch_sub(n, Ordering::AcqRel);
        }
    }
}

/// The embedded store: records live in this process's memory, in sharded
/// maps ([`dashmap`]), so it serves one replica. Use a shared backend when
/// several replicas serve one authorization server.
///
/// Expired records are never returned. They are also swept by a background
/// task that the layer starts when it is built inside a Tokio runtime (or
/// that you start with [`MemoryStore::spawn_sweeper`]), and by an inline
/// sweep when the store finds itself full. The sweep turns a binding whose
/// TTL has ended into a mark (see [`MemoryStoreBuilder::mark_ttl`]).
///
/// Memory is bounded twice: `capacity` bounds the pending authorizations and
/// the bindings (spent ones until their TTL ends), and `mark_capacity` the
/// marks of codes past their binding's TTL, which are much smaller.
///
/// Cloning is cheap and clones share the records.
///
/// ```
/// use tower_pkce::store::MemoryStore;
///
/// let store = MemoryStore::builder().capacity(10_000).build();
/// # let _ = store;
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "memory-store")))]
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("capacity", &self.inner.capacity)
            .field("len", &self.inner.len.load(Ordering::Relaxed))
            .field("mark_capacity", &self.inner.mark_capacity)
            .field("mark_ttl", &self.inner.mark_ttl)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// The capacity bound.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// The per-source quota on pending authorizations, if any.
    pub fn max_pending_per_source(&self) -> Option<usize> {
        self.inner.quota
    }

    /// The bound on marks.
    pub fn mark_capacity(&self) -> usize {
        self.inner.mark_capacity
    }
}

// Every operation is done when it is called, and its future is ready: it
// holds only the answer, so the futures of the middleware that await it
// stay small (an `async fn` would hold its arguments, a whole record, until
// polled).
impl Store for MemoryStore {
    fn insert_pending(
        &self,
        key: &StoreKey,
        record: PendingAuthorization,
        ttl: Duration,
        source: Option<Source>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        ready(self.insert_pending_now(key, record, ttl, source))
    }

    fn get_pending(
        &self,
        key: &StoreKey,
    ) -> impl Future<Output = Result<Option<PendingAuthorization>, StoreError>> + Send {
        ready(Ok(self.get_pending_now(key)))
    }

    fn take_pending(
        &self,
        key: &StoreKey,
    ) -> impl Future<Output = Result<Option<PendingAuthorization>, StoreError>> + Send {
        ready(Ok(self.take_pending_now(key)))
    }

    fn insert_binding(
        &self,
        key: &StoreKey,
        binding: CodeBinding,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        ready(self.insert_binding_now(key, binding, ttl))
    }

    fn admit_binding(
        &self,
        key: &StoreKey,
        binding: CodeBinding,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        ready(self.admit_binding_now(key, binding, ttl))
    }

    fn redeem(
        &self,
        key: &StoreKey,
    ) -> impl Future<Output = Result<Redemption, StoreError>> + Send {
        ready(Ok(self.redeem_now(key)))
    }

    fn restore(
        &self,
        key: &StoreKey,
        binding: CodeBinding,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.restore_now(key, binding);
        ready(Ok(()))
    }

    fn stats(&self) -> impl Future<Output = Result<StoreStats, StoreError>> + Send {
        // Records past their expiry count until they are swept. The counts
        // are the admission counters, not a sum over the segments' maps: a
        // sum read while records are evicted and written elsewhere counts
        // some twice and can pass the capacity that was never passed.
        let inner = &self.inner;
        let held = inner.len.load(Ordering::Acquire);
        let pending = inner.pending_len.load(Ordering::Acquire).min(held);
        ready(Ok(StoreStats {
            pending: pending as u64,
            bindings: (held - pending) as u64,
            marks: Some(self.inner.marks.len() as u64),
        }))
    }

    fn admission_hint(&self, source: Option<Source>) -> Result<(), StoreError> {
        let inner = &self.inner;
        if inner.source_at_quota(source) {
            return Err(StoreError::SourceQuota);
        }
        if inner.len.load(Ordering::Acquire) < inner.capacity {
            return Ok(());
        }
        self.sweep_if_stale();
        // A pending authorization can be evicted for the new one.
        if inner.len.load(Ordering::Acquire) < inner.capacity
            || inner.pending_len.load(Ordering::Acquire) > 0
        {
            Ok(())
        } else {
            Err(StoreError::Full)
        }
    }

    fn pressure(&self) -> StorePressure {
        StorePressure {
            evicted: self.inner.evicted.load(Ordering::Relaxed),
            sources_at_quota: self.inner.at_quota.load(Ordering::Relaxed) as u64,
        }
    }

    fn start_maintenance(&self) {
        if self.inner.sweeper_started.load(Ordering::Acquire) {
            return;
        }
        if tokio::runtime::Handle::try_current().is_ok()
            && self
                .inner
                .sweeper_started
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            drop(self.spawn_sweeper());
        }
    }
}

#[cfg(test)]
mod tests;
