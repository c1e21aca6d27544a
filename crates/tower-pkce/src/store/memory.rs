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

use std::collections::VecDeque;
use std::future::{Future, ready};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use super::{
    CodeBinding, DEFAULT_MARK_TTL, PendingAuthorization, Redemption, Store, StoreError, StoreKey,
    StorePressure, StoreStats,
};
use crate::Source;

/// Time is kept in sixteenths of a second since the store was made: a `u32`
/// then lasts eight years, and a record costs four bytes for its expiry.
const TICKS_PER_SECOND: u64 = 16;

/// The default number of records (both families together), and of marks.
pub const DEFAULT_CAPACITY: usize = 1_000_000;
/// The default period of the background sweep.
pub const DEFAULT_SWEEP_PERIOD: Duration = Duration::from_secs(30);

/// A hasher for [`StoreKey`], whose `Hash` already writes a uniform `u64`.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached if something other than a StoreKey is hashed.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Clone, Copy, Default)]
struct BuildKeyHasher;

impl BuildHasher for BuildKeyHasher {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher::default()
    }
}

/// Whether a binding took room of its own or an expired record's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Room {
    New,
    Reused,
}

/// A pending authorization.
struct Waiting {
    value: PendingAuthorization,
    expires: u32,
    /// The source it counts against, when the store has a quota.
    source: Option<Source>,
}

/// The pending authorizations of one segment in the order they arrived,
/// by key and expiry (which tells a record from a later one under the same
/// key). Records taken or expired stay queued until they reach the front
/// or the queue is compacted.
struct Arrivals {
    queue: VecDeque<(StoreKey, u32)>,
    /// The length at which the queue is next compacted: twice what it kept
    /// the last time, so that each arrival pays for a bounded share of the
    /// work and the queue never holds more than about twice the segment's
    /// records.
    compact_at: usize,
}

/// The shortest queue that is compacted.
const MIN_COMPACT: usize = 64;

/// How many times a write that finds the store full evicts and tries
/// again, as concurrent writes may take the room it made.
const EVICTION_ATTEMPTS: usize = 4;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while an `Arrivals` is locked, and a queue in any
    // state is safe to use: it is only a hint of what to evict.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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

/// How many maps each family of records is split into, by key.
///
/// A map stalls the thread that touches it in two ways: when it grows (all
/// its records are moved to a larger table) and when it is swept. Split in
/// segments, each stall moves or visits one segment's records rather than
/// the store's, and the background sweep lets other tasks run between
/// segments. At a million records, one proxy's worst `authorize` latency
/// went from 153 ms to 18 ms (`benches/RESULTS.md`).
const SEGMENTS: usize = 64;

/// The locks of each segment: with [`SEGMENTS`], 128 a family, enough for
/// the threads of any likely runtime, and few enough that each table stays
/// large (many small tables fragment the allocator's memory as they grow).
const SHARDS_PER_SEGMENT: usize = 2;

/// The segment that holds `key`'s record, in every family.
fn segment(key: &StoreKey) -> usize {
    // The maps hash a key by its first eight bytes; the segment comes from
    // its last byte, which is independent of them.
    let [.., last] = *key.as_bytes();
    usize::from(last) % SEGMENTS
}

/// The fewest marks a segment keeps, whatever the mark bound. Keys spread
/// over the segments unevenly, and in a small store a share of one or two
/// would drop marks while the store holds far fewer than its bound; 1,024
/// marks in all cost a few tens of kilobytes.
const MIN_MARK_SHARE: usize = 16;

/// One family of records, split by key into [`SEGMENTS`] maps.
struct Segments<V> {
    maps: [DashMap<StoreKey, V, BuildKeyHasher>; SEGMENTS],
}

impl<V> Segments<V> {
    fn new() -> Self {
        Self {
            maps: std::array::from_fn(|_| {
                DashMap::with_hasher_and_shard_amount(BuildKeyHasher, SHARDS_PER_SEGMENT)
            }),
        }
    }

    /// The map that holds `key`'s record.
    fn of(&self, key: &StoreKey) -> &DashMap<StoreKey, V, BuildKeyHasher> {
        &self.maps[segment(key)]
    }

    fn len(&self) -> usize {
        self.maps.iter().map(DashMap::len).sum()
    }

    /// Removes the records of segment `index` whose expiry (read by
    /// `expires`) is not after `now`, showing each to `leaving` while its
    /// shard is still locked, and returns how many there were.
    fn remove_expired(
        &self,
        index: usize,
        now: u32,
        expires: impl Fn(&V) -> u32,
        mut leaving: impl FnMut(&StoreKey, &V),
    ) -> usize {
        let mut removed = 0;
        if let Some(map) = self.maps.get(index) {
            map.retain(|key, record| {
                let keep = expires(record) > now;
                if !keep {
                    leaving(key, record);
                    removed += 1;
                }
                keep
            });
        }
        removed
    }
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

    /// Removes every expired record, one segment after the other.
    fn sweep(&self) -> usize {
        self.mark_sweep();
        (0..SEGMENTS).map(|i| self.sweep_segment(i)).sum()
    }

    /// Notes that a sweep starts now (see `MemoryStore::sweep_if_stale`).
    fn mark_sweep(&self) {
        self.last_sweep
            .store(u64::from(self.now()), Ordering::Relaxed);
    }

    /// Removes the expired records of segment `index` of every family; the
    /// bindings and spent codes whose mark lives on become marks.
    fn sweep_segment(&self, index: usize) -> usize {
        let now = self.now();
        let marks = &self.marks;
        // An expired binding, spent or not, leaves its mark behind.
        let mark = |spent: bool| {
            move |key: &StoreKey, expires: u32| {
                if expires > now {
                    marks.of(key).insert(*key, Mark { expires, spent });
                }
            }
        };
        let unspent = mark(false);
        let spent = mark(true);
        let pending = self.pending.remove_expired(
            index,
            now,
            |r| r.expires,
            |_, r| self.release_source(r.source),
        );
        if pending > 0 {
            self.pending_len.fetch_sub(pending, Ordering::AcqRel);
        }
        if let Some(arrivals) = self.arrivals.get(index) {
            let mut arrivals = lock(arrivals);
            while arrivals.queue.front().is_some_and(|&(_, e)| e <= now) {
                arrivals.queue.pop_front();
            }
        }
        let removed = pending
            + self.bindings.remove_expired(
                index,
                now,
                |r| r.expires,
                |key, r| unspent(key, r.mark_expires),
            )
            + self.spent.remove_expired(
                index,
                now,
                |r| r.expires,
                |key, r| spent(key, r.mark_expires),
            );
        self.release(removed);
        let forgotten = marks.remove_expired(index, now, |m| m.expires, |_, _| {});
        self.trim_marks(index);
        removed + forgotten
    }

    /// How many marks segment `index` may hold: the mark bound, split over
    /// the segments, and never fewer than [`MIN_MARK_SHARE`].
    fn mark_share(&self, index: usize) -> usize {
        let share =
            self.mark_capacity / SEGMENTS + usize::from(index < self.mark_capacity % SEGMENTS);
        share.max(MIN_MARK_SHARE)
    }

    /// When segment `index` of `marks` holds more than its share, drops the
    /// marks that expire soonest, down to seven eighths of the share: one
    /// pass over the segment pays for an eighth of a share of new marks.
    fn trim_marks(&self, index: usize) {
        let (Some(map), Some(trimming)) = (self.marks.maps.get(index), self.trimming.get(index))
        else {
            return;
        };
        let share = self.mark_share(index);
        if map.len() <= share
            || trimming
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let keep = share - share / 8;
        let mut expiries: Vec<u32> = map.iter().map(|m| m.expires).collect();
        let excess = expiries.len().saturating_sub(keep);
        if let Some(last) = excess.checked_sub(1) {
            let (_, &mut cut, _) = expiries.select_nth_unstable(last);
            // Marks that expire exactly at `cut` go only as far as the
            // excess needs; marks written since the count are judged by
            // the same cut.
            let below = expiries.iter().filter(|&&e| e < cut).count();
            let mut at_cut = excess - below;
            map.retain(|_, m| {
                if m.expires < cut {
                    false
                } else if m.expires == cut && at_cut > 0 {
                    at_cut -= 1;
                    false
                } else {
                    true
                }
            });
        }
        trimming.store(false, Ordering::Release);
    }

    fn reserve(&self) -> bool {
        self.len
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .is_ok()
    }

    /// Counts a new pending authorization against `source`, unless the
    /// source holds its quota.
    fn count_source(&self, source: Option<Source>) -> Result<(), StoreError> {
        let (Some(source), Some(quota)) = (source, self.quota) else {
            return Ok(());
        };
        if quota == 0 {
            return Err(StoreError::SourceQuota);
        }
        let mut count = self.sources.entry(source).or_insert(0);
        if *count >= quota {
            return Err(StoreError::SourceQuota);
        }
        *count += 1;
        if *count == quota {
            self.at_quota.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Gives back what [`count_source`](Self::count_source) counted.
    fn release_source(&self, source: Option<Source>) {
        let (Some(source), Some(quota)) = (source, self.quota) else {
            return;
        };
        if let Entry::Occupied(mut e) = self.sources.entry(source) {
            let count = e.get_mut();
            if *count == quota {
                self.at_quota.fetch_sub(1, Ordering::Relaxed);
            }
            *count = count.saturating_sub(1);
            if *count == 0 {
                e.remove();
            }
        }
    }

    /// Whether `source` holds its quota.
    fn source_at_quota(&self, source: Option<Source>) -> bool {
        let (Some(source), Some(quota)) = (source, self.quota) else {
            return false;
        };
        quota == 0 || self.sources.get(&source).is_some_and(|n| *n >= quota)
    }

    /// A pending authorization written to segment `index`, queued for
    /// eviction.
    fn arrived(&self, key: &StoreKey, expires: u32) {
        let index = segment(key);
        let (Some(arrivals), Some(map)) = (self.arrivals.get(index), self.pending.maps.get(index))
        else {
            return;
        };
        let mut arrivals = lock(arrivals);
        arrivals.queue.push_back((*key, expires));
        if arrivals.queue.len() >= arrivals.compact_at {
            arrivals
                .queue
                .retain(|(k, e)| map.get(k).is_some_and(|r| r.expires == *e));
            arrivals.compact_at = (2 * arrivals.queue.len()).max(MIN_COMPACT);
        }
    }

    /// Removes the oldest pending authorization (the one that expires
    /// soonest, to a tick, since all share the layer's TTL), and says
    /// whether there was one. It visits the front of every segment's
    /// queue, which only a full store pays for.
    fn evict_oldest(&self) -> bool {
        let oldest = (0..SEGMENTS)
            .filter_map(|index| Some((self.live_front(index)?, index)))
            .min();
        if let Some((_, index)) = oldest
            && self.evict_from(index)
        {
            return true;
        }
        // Taken by a concurrent request since: any will do.
        (0..SEGMENTS).any(|index| self.evict_from(index))
    }

    /// The expiry of the oldest live pending authorization of segment
    /// `index`, dropping the queue's stale front on the way.
    fn live_front(&self, index: usize) -> Option<u32> {
        let (arrivals, map) = (self.arrivals.get(index)?, self.pending.maps.get(index)?);
        let mut arrivals = lock(arrivals);
        while let Some(&(key, expires)) = arrivals.queue.front() {
            if map.get(&key).is_some_and(|r| r.expires == expires) {
                return Some(expires);
            }
            arrivals.queue.pop_front();
        }
        None
    }

    fn evict_from(&self, index: usize) -> bool {
        let (Some(arrivals), Some(map)) = (self.arrivals.get(index), self.pending.maps.get(index))
        else {
            return false;
        };
        let now = self.now();
        let mut arrivals = lock(arrivals);
        while let Some((key, expires)) = arrivals.queue.pop_front() {
            // A key taken since, or written again, is not the record that
            // was queued.
            if let Some((_, record)) = map.remove_if(&key, |_, r| r.expires == expires) {
                drop(arrivals);
                self.release(1);
                self.pending_len.fetch_sub(1, Ordering::AcqRel);
                self.release_source(record.source);
                if record.expires > now {
                    self.evicted.fetch_add(1, Ordering::Relaxed);
                }
                return true;
            }
        }
        false
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

/// Settings for a [`MemoryStore`].
#[derive(Debug, Clone)]
#[must_use]
pub struct MemoryStoreBuilder {
    capacity: usize,
    max_pending_per_source: Option<usize>,
    mark_capacity: Option<usize>,
    mark_ttl: Duration,
    sweep_period: Duration,
}

impl MemoryStoreBuilder {
    /// The most records (pending and bindings together) the store holds.
    /// Default: 1,000,000. A capacity of 0 refuses every authorization.
    /// Marks are not counted here (see
    /// [`mark_capacity`](Self::mark_capacity)).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// How long the store remembers that a code was bound, counted from
    /// its binding; a mark never ends before its binding would have.
    /// Default: [`DEFAULT_MARK_TTL`] (one hour).
    ///
    /// While its mark lives, a code cannot be bound again, and a token
    /// request for it is refused as spent or expired instead of being read
    /// as a code the store never bound, which optional mode forwards
    /// without a verifier. Set it longer than the upstream keeps its codes
    /// redeemable. A zero lifetime keeps each mark only as long as its
    /// binding.
    pub fn mark_ttl(mut self, ttl: Duration) -> Self {
        self.mark_ttl = ttl;
        self
    }

    /// The most marks the store keeps of codes whose binding's TTL has
    /// ended. Default: the [`capacity`](Self::capacity).
    ///
    /// Marks are bounded apart from the capacity, so that a long mark
    /// lifetime never refuses a new authorization, and they never refuse a
    /// binding: at the bound, the store drops the marks that expire soonest.
    /// The bound is kept per segment of the store, a sixty-fourth of it
    /// each but never fewer than 16 (so at least 1,024 marks are kept): a
    /// segment past its share drops the soonest-expiring eighth of it. Keys
    /// spread over the segments a little unevenly, so marks begin to go
    /// when the fullest segment fills, somewhat before the whole bound is
    /// reached. A mark's entry is 24 bytes, a live binding's 92, each with
    /// the map's overhead.
    ///
    /// # Warning
    ///
    /// A dropped mark is a code the store no longer knows. That matters
    /// only for a code older than its binding's TTL (a spent code keeps its
    /// place until then, under the capacity), and only in optional mode,
    /// where such a code is forwarded without a verifier check; with PKCE
    /// required it is refused as unbound. Keep the bound above the number
    /// of codes bound within one mark lifetime.
    pub fn mark_capacity(mut self, capacity: usize) -> Self {
        self.mark_capacity = Some(capacity);
        self
    }

    /// The most pending authorizations one [`Source`] may hold at once.
    /// Default: none, no quota.
    ///
    /// Past it, that source's new authorizations are refused with
    /// [`StoreError::SourceQuota`] (the layer answers 429) until one of its
    /// records is taken (its sign-in goes on to a code), expires (or is
    /// swept: an expired record counts until the sweep finds it) or is
    /// evicted; other sources carry on. Authorizations without a source
    /// (the layer found no [`Source`] extension on the request) count
    /// against no quota.
    ///
    /// Set it well above the sign-ins that the busiest shared address (a
    /// corporate NAT, a carrier-grade NAT) has in progress at once, and
    /// well below the capacity, so that filling the store takes many
    /// addresses. A quota of 0 refuses every authorization that has a
    /// source.
    pub fn max_pending_per_source(mut self, quota: usize) -> Self {
        self.max_pending_per_source = Some(quota);
        self
    }

    /// How often the background sweep removes expired records. Default: 30 s.
    pub fn sweep_period(mut self, period: Duration) -> Self {
        self.sweep_period = period.max(Duration::from_millis(10));
        self
    }

    /// Builds the store.
    pub fn build(self) -> MemoryStore {
        MemoryStore {
            inner: Arc::new(Inner {
                pending: Segments::new(),
                pending_len: AtomicUsize::new(0),
                arrivals: std::array::from_fn(|_| {
                    Mutex::new(Arrivals {
                        queue: VecDeque::new(),
                        compact_at: MIN_COMPACT,
                    })
                }),
                quota: self.max_pending_per_source,
                sources: DashMap::new(),
                at_quota: AtomicUsize::new(0),
                evicted: AtomicU64::new(0),
                bindings: Segments::new(),
                spent: Segments::new(),
                marks: Segments::new(),
                capacity: self.capacity,
                len: AtomicUsize::new(0),
                mark_capacity: self.mark_capacity.unwrap_or(self.capacity),
                mark_ttl: self.mark_ttl,
                trimming: std::array::from_fn(|_| AtomicBool::new(false)),
                epoch: Instant::now(),
                sweep_period: self.sweep_period,
                sweeper_started: AtomicBool::new(false),
                last_sweep: AtomicU64::new(0),
            }),
        }
    }
}

impl MemoryStore {
    /// A store with the default capacity, mark lifetime and sweep period.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Settings for a store.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder {
            capacity: DEFAULT_CAPACITY,
            max_pending_per_source: None,
            mark_capacity: None,
            mark_ttl: DEFAULT_MARK_TTL,
            sweep_period: DEFAULT_SWEEP_PERIOD,
        }
    }

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

    /// Removes every expired record now, and returns how many there were.
    /// A binding or spent code whose mark lives on leaves a mark behind.
    pub fn sweep(&self) -> usize {
        self.inner.sweep()
    }

    /// Spawns the periodic sweep on the current Tokio runtime. The task ends
    /// when the last clone of the store is dropped.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime, as [`tokio::spawn`] does.
    pub fn spawn_sweeper(&self) -> tokio::task::JoinHandle<()> {
        self.inner.sweeper_started.store(true, Ordering::Release);
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let period = self.inner.sweep_period;
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval.tick().await;
            loop {
                interval.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                inner.mark_sweep();
                drop(inner);
                let mut removed = 0;
                for index in 0..SEGMENTS {
                    let Some(inner) = weak.upgrade() else { return };
                    removed += inner.sweep_segment(index);
                    drop(inner);
                    // Requests run between segments: on a single-threaded
                    // runtime this task would otherwise hold the thread for
                    // the whole store.
                    tokio::task::yield_now().await;
                }
                if removed > 0 {
                    tracing::debug!(removed, "swept expired records");
                }
            }
        })
    }

    /// When the store is full, expired records may still hold the room; a
    /// sweep at most once a second finds out without letting a burst of
    /// refused requests each walk the whole map.
    fn sweep_if_stale(&self) {
        let inner = &self.inner;
        let now = u64::from(inner.now());
        let last = inner.last_sweep.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= TICKS_PER_SECOND
            && inner
                .last_sweep
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            inner.sweep();
        }
    }

    fn insert_pending_now(
        &self,
        key: &StoreKey,
        record: PendingAuthorization,
        ttl: Duration,
        source: Option<Source>,
    ) -> Result<(), StoreError> {
        let inner = &self.inner;
        let source = source.filter(|_| inner.quota.is_some());
        inner.count_source(source)?;
        if let Err(e) = self.reserve() {
            inner.release_source(source);
            return Err(e);
        }
        let now = inner.now();
        let expires = Inner::expiry(now, ttl);
        let waiting = Waiting {
            value: record,
            expires,
            source,
        };
        // The source of the expired record replaced, or `None` for a live
        // one in the way.
        let replaced = match inner.pending.of(key).entry(*key) {
            Entry::Occupied(mut e) if e.get().expires <= now => {
                // Replacing an expired record frees the room it held.
                Some(e.insert(waiting).source)
            }
            Entry::Occupied(_) => None,
            Entry::Vacant(e) => {
                e.insert(waiting);
                inner.pending_len.fetch_add(1, Ordering::AcqRel);
                inner.arrived(key, expires);
                return Ok(());
            }
        };
        inner.release(1);
        if let Some(replaced) = replaced {
            inner.release_source(replaced);
            inner.arrived(key, expires);
            Ok(())
        } else {
            inner.release_source(source);
            Err(StoreError::Conflict)
        }
    }

    fn get_pending_now(&self, key: &StoreKey) -> Option<PendingAuthorization> {
        let now = self.inner.now();
        self.inner
            .pending
            .of(key)
            .get(key)
            .and_then(|r| (r.expires > now).then(|| r.value.clone()))
    }

    fn take_pending_now(&self, key: &StoreKey) -> Option<PendingAuthorization> {
        let inner = &self.inner;
        let now = inner.now();
        let (_, record) = inner.pending.of(key).remove(key)?;
        inner.release(1);
        inner.pending_len.fetch_sub(1, Ordering::AcqRel);
        inner.release_source(record.source);
        (record.expires > now).then_some(record.value)
    }

    fn insert_binding_now(
        &self,
        key: &StoreKey,
        binding: CodeBinding,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let inner = &self.inner;
        // The pending record this binding replaces gave its room back a
        // moment ago, and a new one may have taken it since: a pending
        // record then goes, so that the bound holds and the binding stays.
        if self.put_binding(key, binding, ttl)? == Room::New
            && inner.len.fetch_add(1, Ordering::AcqRel) >= inner.capacity
        {
            inner.evict_oldest();
        }
        Ok(())
    }

    fn admit_binding_now(
        &self,
        key: &StoreKey,
        binding: CodeBinding,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.reserve()?;
        let put = self.put_binding(key, binding, ttl);
        if !matches!(put, Ok(Room::New)) {
            self.inner.release(1);
        }
        put.map(drop)
    }

    /// Takes one record's room under the capacity bound. A store that
    /// finds itself full sweeps (at most once a second), then evicts the
    /// oldest pending authorization; never a binding.
    fn reserve(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        if inner.reserve() {
            return Ok(());
        }
        self.sweep_if_stale();
        for _ in 0..EVICTION_ATTEMPTS {
            if inner.reserve() {
                return Ok(());
            }
            if !inner.evict_oldest() {
                break;
            }
        }
        if inner.reserve() {
            Ok(())
        } else {
            Err(StoreError::Full)
        }
    }

    /// Writes a binding unless the code is bound (its binding or its mark
    /// is live), and says whether it took new room or the room of a record
    /// that was over.
    fn put_binding(
        &self,
        key: &StoreKey,
        binding: CodeBinding,
        ttl: Duration,
    ) -> Result<Room, StoreError> {
        let inner = &self.inner;
        let now = inner.now();
        let live = inner.live(now, binding, ttl);
        // A code bound before may not be bound afresh while its mark lives:
        // a spent one would become redeemable a second time, an expired
        // one redeemable at all.
        match inner.bindings.of(key).entry(*key) {
            Entry::Occupied(mut e) if e.get().mark_expires <= now => {
                e.insert(live);
                Ok(Room::Reused)
            }
            Entry::Occupied(_) => Err(StoreError::Conflict),
            Entry::Vacant(e) => {
                if let Entry::Occupied(spent) = inner.spent.of(key).entry(*key) {
                    if spent.get().mark_expires > now {
                        return Err(StoreError::Conflict);
                    }
                    spent.remove();
                    e.insert(live);
                    return Ok(Room::Reused);
                }
                if let Entry::Occupied(mark) = inner.marks.of(key).entry(*key) {
                    if mark.get().expires > now {
                        return Err(StoreError::Conflict);
                    }
                    mark.remove();
                }
                e.insert(live);
                Ok(Room::New)
            }
        }
    }

    fn redeem_now(&self, key: &StoreKey) -> Redemption {
        let inner = &self.inner;
        let now = inner.now();
        match inner.bindings.of(key).entry(*key) {
            Entry::Occupied(e) if e.get().expires > now => {
                let live = e.get();
                let spent = Spent {
                    expires: live.expires,
                    mark_expires: live.mark_expires,
                };
                inner.spent.of(key).insert(*key, spent);
                Redemption::Redeemed(e.remove().value)
            }
            Entry::Occupied(e) => {
                // Expired and not swept yet: it becomes a mark now, written
                // before the binding goes so that no reader finds neither.
                let mark_expires = e.get().mark_expires;
                let marked = mark_expires > now;
                if marked {
                    inner.marks.of(key).insert(
                        *key,
                        Mark {
                            expires: mark_expires,
                            spent: false,
                        },
                    );
                }
                e.remove();
                inner.release(1);
                if !marked {
                    return Redemption::Missing;
                }
                inner.trim_marks(segment(key));
                Redemption::Expired
            }
            Entry::Vacant(_) => {
                if let Some(spent) = inner.spent.of(key).get(key) {
                    return if spent.mark_expires > now {
                        Redemption::Spent
                    } else {
                        Redemption::Missing
                    };
                }
                match inner.marks.of(key).get(key) {
                    Some(mark) if mark.expires > now && mark.spent => Redemption::Spent,
                    Some(mark) if mark.expires > now => Redemption::Expired,
                    _ => Redemption::Missing,
                }
            }
        }
    }

    fn restore_now(&self, key: &StoreKey, binding: CodeBinding) {
        let inner = &self.inner;
        let now = inner.now();
        if let Entry::Vacant(e) = inner.bindings.of(key).entry(*key)
            && let Some((_, spent)) = inner
                .spent
                .of(key)
                .remove_if(key, |_, spent| spent.expires > now)
        {
            e.insert(Live {
                value: binding,
                expires: spent.expires,
                mark_expires: spent.mark_expires,
            });
        }
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
mod tests {
    use super::*;

    fn binding() -> CodeBinding {
        CodeBinding {
            challenge: None,
            client: [7; 16],
            redirect_uri: None,
            failures: 0,
        }
    }

    fn pending() -> PendingAuthorization {
        PendingAuthorization {
            challenge: None,
            client: [7; 16],
            redirect_uri: None,
            state: None,
        }
    }

    fn key(family: &str, i: usize) -> StoreKey {
        StoreKey::of(&format!("{family}-{i}"))
    }

    const SHORT: Duration = Duration::from_millis(10);
    /// A mark bound no test here reaches unless it means to.
    const ROOMY_MARKS: usize = 100 * SEGMENTS;
    const LONG: Duration = Duration::from_secs(3600);
    /// Longer than the shortest lifetime a record gets (two ticks).
    const AFTER_SHORT: Duration = Duration::from_millis(250);

    #[test]
    fn the_admission_hint_knows_when_the_store_is_full() {
        let store = MemoryStore::builder().capacity(2).build();
        assert!(store.admission_hint(None).is_ok());
        store
            .admit_binding_now(&key("b", 0), binding(), LONG)
            .unwrap();
        store
            .insert_pending_now(&key("p", 0), pending(), LONG, None)
            .unwrap();
        // Full, but a pending authorization can make room.
        assert!(store.admission_hint(None).is_ok());
        store
            .admit_binding_now(&key("b", 1), binding(), LONG)
            .unwrap();
        assert!(store.take_pending_now(&key("p", 0)).is_none());
        // Full of bindings: nothing to evict.
        assert!(matches!(store.admission_hint(None), Err(StoreError::Full)));
        // Failed admissions give their room back.
        assert!(matches!(
            store.admit_binding_now(&key("b", 2), binding(), LONG),
            Err(StoreError::Full)
        ));
        assert!(matches!(
            store.insert_pending_now(&key("p", 1), pending(), LONG, None),
            Err(StoreError::Full)
        ));
        assert!(matches!(
            store.admit_binding_now(&key("b", 0), binding(), LONG),
            Err(StoreError::Full)
        ));
        assert_eq!(store.inner.len.load(Ordering::Acquire), 2);
        assert_eq!(store.inner.pending_len.load(Ordering::Acquire), 0);
    }

    #[test]
    fn an_admitted_binding_takes_the_room_of_an_expired_one() {
        // Without a mark lifetime, a code is forgotten with its binding.
        let store = MemoryStore::builder()
            .capacity(2)
            .mark_ttl(Duration::ZERO)
            .build();
        store
            .admit_binding_now(&key("b", 0), binding(), SHORT)
            .unwrap();
        std::thread::sleep(AFTER_SHORT);
        store
            .admit_binding_now(&key("b", 0), binding(), LONG)
            .unwrap();
        assert_eq!(store.inner.len.load(Ordering::Acquire), 1);
        assert!(matches!(
            store.redeem_now(&key("b", 0)),
            Redemption::Redeemed(_)
        ));
        std::thread::sleep(AFTER_SHORT);
        assert_eq!(store.inner.len.load(Ordering::Acquire), 1);
    }

    #[test]
    fn keys_spread_over_every_segment() {
        let store = MemoryStore::new();
        for i in 0..SEGMENTS * 32 {
            store
                .insert_binding_now(&key("code", i), binding(), LONG)
                .unwrap();
        }
        let sizes: Vec<usize> = store.inner.bindings.maps.iter().map(DashMap::len).collect();
        assert!(sizes.iter().all(|&n| n > 0), "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), SEGMENTS * 32);
        assert_eq!(store.inner.bindings.len(), SEGMENTS * 32);
    }

    /// Live, spent and pending records, short-lived and long-lived, in
    /// every segment: `count` of each kind.
    fn fill(store: &MemoryStore, count: usize) {
        for i in 0..count {
            store
                .insert_pending_now(&key("pending-short", i), pending(), SHORT, None)
                .unwrap();
            store
                .insert_pending_now(&key("pending-long", i), pending(), LONG, None)
                .unwrap();
            store
                .insert_binding_now(&key("live-short", i), binding(), SHORT)
                .unwrap();
            store
                .insert_binding_now(&key("live-long", i), binding(), LONG)
                .unwrap();
            spend(store, &key("spent-short", i), SHORT);
            spend(store, &key("spent-long", i), LONG);
        }
    }

    /// Binds `key` for `ttl`, then redeems it.
    fn spend(store: &MemoryStore, key: &StoreKey, ttl: Duration) {
        store.insert_binding_now(key, binding(), ttl).unwrap();
        assert!(matches!(store.redeem_now(key), Redemption::Redeemed(_)));
    }

    /// The long-lived records are all there, and the short-lived bindings
    /// are marks.
    fn assert_only_long_lived_remain(store: &MemoryStore, count: usize) {
        let inner = &store.inner;
        assert_eq!(inner.pending.len(), count);
        assert_eq!(inner.bindings.len(), count);
        assert_eq!(inner.spent.len(), count);
        assert_eq!(inner.marks.len(), 2 * count);
        assert_eq!(inner.len.load(Ordering::Acquire), 3 * count);
        for i in 0..count {
            assert!(store.take_pending_now(&key("pending-long", i)).is_some());
            assert!(matches!(
                store.redeem_now(&key("live-long", i)),
                Redemption::Redeemed(_)
            ));
            assert_eq!(store.redeem_now(&key("spent-long", i)), Redemption::Spent);
            assert_eq!(store.redeem_now(&key("live-short", i)), Redemption::Expired);
            assert_eq!(store.redeem_now(&key("spent-short", i)), Redemption::Spent);
        }
    }

    #[test]
    fn sweep_removes_the_expired_records_of_every_segment_and_frees_their_room() {
        let count = SEGMENTS * 4;
        let store = MemoryStore::builder().capacity(6 * count).build();
        fill(&store, count);
        assert_eq!(store.inner.len.load(Ordering::Acquire), 6 * count);
        std::thread::sleep(AFTER_SHORT);
        assert_eq!(store.sweep(), 3 * count);
        assert_only_long_lived_remain(&store, count);
        // The room the expired records held is free again.
        for i in 0..3 * count {
            store
                .insert_pending_now(&key("extra", i), pending(), LONG, None)
                .unwrap();
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_background_sweep_visits_every_segment() {
        let count = SEGMENTS * 4;
        let store = MemoryStore::builder()
            .sweep_period(Duration::from_millis(20))
            .build();
        fill(&store, count);
        let sweeper = store.spawn_sweeper();
        tokio::time::sleep(AFTER_SHORT).await;
        // Expiry happened during the sleep; give the sweep time for one
        // full pass after it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while store.inner.len.load(Ordering::Acquire) != 3 * count
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_only_long_lived_remain(&store, count);
        drop(store);
        sweeper.await.unwrap();
    }

    /// `count` keys of `family` that fall in segment `index`.
    fn keys_in_segment(family: &str, index: usize, count: usize) -> Vec<StoreKey> {
        (0..)
            .map(|i| key(family, i))
            .filter(|k| segment(k) == index)
            .take(count)
            .collect()
    }

    #[test]
    fn the_sweep_turns_expired_bindings_into_marks() {
        let store = MemoryStore::builder()
            .capacity(4)
            .mark_capacity(ROOMY_MARKS)
            .build();
        let (live, spent) = (key("live", 0), key("spent", 0));
        store.insert_binding_now(&live, binding(), SHORT).unwrap();
        spend(&store, &spent, SHORT);
        std::thread::sleep(AFTER_SHORT);
        assert_eq!(store.sweep(), 2);
        let inner = &store.inner;
        assert_eq!(inner.bindings.len() + inner.spent.len(), 0);
        assert_eq!(inner.marks.len(), 2);
        assert_eq!(inner.len.load(Ordering::Acquire), 0);
        let stats = ready_stats(&store);
        assert_eq!((stats.bindings, stats.marks), (0, Some(2)));
        assert_eq!(store.redeem_now(&live), Redemption::Expired);
        assert_eq!(store.redeem_now(&spent), Redemption::Spent);
        assert!(matches!(
            store.insert_binding_now(&live, binding(), LONG),
            Err(StoreError::Conflict)
        ));
        assert!(matches!(
            store.admit_binding_now(&spent, binding(), LONG),
            Err(StoreError::Conflict)
        ));
        // The failed admission gave its room back.
        assert_eq!(inner.len.load(Ordering::Acquire), 0);
        // A second sweep finds nothing more to do.
        assert_eq!(store.sweep(), 0);
        assert_eq!(inner.marks.len(), 2);
    }

    #[test]
    fn a_read_turns_an_expired_binding_into_a_mark() {
        let store = MemoryStore::builder()
            .capacity(4)
            .mark_capacity(ROOMY_MARKS)
            .build();
        let code = key("live", 0);
        store.admit_binding_now(&code, binding(), SHORT).unwrap();
        std::thread::sleep(AFTER_SHORT);
        assert_eq!(store.redeem_now(&code), Redemption::Expired);
        let inner = &store.inner;
        assert_eq!(inner.bindings.len(), 0);
        assert_eq!(inner.marks.len(), 1);
        assert_eq!(inner.len.load(Ordering::Acquire), 0);
        assert_eq!(store.redeem_now(&code), Redemption::Expired);
        // With no mark lifetime, the expired binding is simply gone.
        let forgetful = MemoryStore::builder().mark_ttl(Duration::ZERO).build();
        forgetful
            .insert_binding_now(&code, binding(), SHORT)
            .unwrap();
        std::thread::sleep(AFTER_SHORT);
        assert_eq!(forgetful.redeem_now(&code), Redemption::Missing);
        assert_eq!(forgetful.inner.marks.len(), 0);
        assert_eq!(forgetful.inner.len.load(Ordering::Acquire), 0);
    }

    #[test]
    fn marks_do_not_count_toward_capacity() {
        let store = MemoryStore::builder()
            .capacity(2)
            .mark_capacity(ROOMY_MARKS)
            .build();
        let codes: Vec<StoreKey> = (0..8).map(|i| key("code", i)).collect();
        for code in &codes {
            store.insert_binding_now(code, binding(), SHORT).unwrap();
        }
        assert!(matches!(store.admission_hint(None), Err(StoreError::Full)));
        std::thread::sleep(AFTER_SHORT);
        store.sweep();
        assert_eq!(store.inner.marks.len(), codes.len());
        assert!(store.admission_hint(None).is_ok());
        store
            .insert_pending_now(&key("p", 0), pending(), LONG, None)
            .unwrap();
        store
            .admit_binding_now(&key("b", 0), binding(), LONG)
            .unwrap();
        // Full: the pending authorization makes room, the marks need none.
        store
            .insert_pending_now(&key("p", 1), pending(), LONG, None)
            .unwrap();
        assert!(store.take_pending_now(&key("p", 0)).is_none());
        for code in &codes {
            assert_eq!(store.redeem_now(code), Redemption::Expired);
        }
    }

    #[test]
    fn mark_shares_add_up_to_the_bound() {
        let floor = MIN_MARK_SHARE * SEGMENTS;
        for bound in [floor, floor + 1, floor + 63, 1_000_000, 1_000_037] {
            let store = MemoryStore::builder().mark_capacity(bound).build();
            let shares: usize = (0..SEGMENTS).map(|i| store.inner.mark_share(i)).sum();
            assert_eq!(shares, bound);
        }
        // A small bound keeps the floor in every segment.
        for bound in [0, 1, 64, floor - 1] {
            let store = MemoryStore::builder().mark_capacity(bound).build();
            assert!((0..SEGMENTS).all(|i| store.inner.mark_share(i) == MIN_MARK_SHARE));
        }
        // By default, the capacity.
        let store = MemoryStore::builder().capacity(640).build();
        assert_eq!(store.mark_capacity(), 640);
    }

    /// The expiries of the marks in segment `index`, sorted.
    fn mark_expiries(store: &MemoryStore, index: usize) -> Vec<u32> {
        let mut expiries: Vec<u32> = store.inner.marks.maps[index]
            .iter()
            .map(|m| m.expires)
            .collect();
        expiries.sort_unstable();
        expiries
    }

    #[test]
    fn a_full_segment_drops_the_marks_that_expire_soonest() {
        // A share of 16 marks a segment: past it, a segment keeps 14.
        let store = MemoryStore::builder().mark_capacity(16 * SEGMENTS).build();
        let inner = &store.inner;
        let keys = keys_in_segment("mark", 5, 40);
        // Expiries in a scrambled order, some equal, all in the future.
        let expiry = |i: usize| 10_000 + u32::try_from(i * 7 % 40 / 2).unwrap();
        let mut trims = 0;
        for (i, k) in keys.iter().enumerate() {
            inner.marks.of(k).insert(
                *k,
                Mark {
                    expires: expiry(i),
                    spent: false,
                },
            );
            let before = mark_expiries(&store, 5);
            inner.trim_marks(5);
            let after = mark_expiries(&store, 5);
            if before.len() <= 16 {
                assert_eq!(after, before);
                continue;
            }
            trims += 1;
            // The soonest go: what is kept is the latest 14 of what was there.
            assert_eq!(after, before[before.len() - 14..].to_vec());
        }
        assert!(trims > 0);
        assert_eq!(inner.marks.len(), inner.marks.maps[5].len());
        // One trim over many marks at once keeps the latest 14 too.
        let once = MemoryStore::builder().mark_capacity(16 * SEGMENTS).build();
        for (i, k) in keys.iter().enumerate() {
            once.inner.marks.of(k).insert(
                *k,
                Mark {
                    expires: expiry(i),
                    spent: false,
                },
            );
        }
        once.inner.trim_marks(5);
        let mut all: Vec<u32> = (0..keys.len()).map(expiry).collect();
        all.sort_unstable();
        assert_eq!(mark_expiries(&once, 5), all[all.len() - 14..].to_vec());
    }

    #[test]
    fn the_mark_bound_holds_and_never_refuses_a_binding() {
        let share = 2 * MIN_MARK_SHARE;
        let store = MemoryStore::builder()
            .capacity(4)
            .mark_capacity(share * SEGMENTS)
            .build();
        let codes: Vec<StoreKey> = (0..4 * share * SEGMENTS).map(|i| key("code", i)).collect();
        for code in &codes {
            store.insert_binding_now(code, binding(), SHORT).unwrap();
        }
        std::thread::sleep(AFTER_SHORT);
        store.sweep();
        let marks = store.inner.marks.len();
        assert!(marks <= share * SEGMENTS, "{marks}");
        assert!(store.inner.marks.maps.iter().all(|m| m.len() <= share));
        assert!(marks >= share * SEGMENTS * 7 / 8, "{marks}");
        let expired = codes
            .iter()
            .filter(|c| store.redeem_now(c) == Redemption::Expired)
            .count();
        assert_eq!(expired, marks);
        // At the bound, bindings are still admitted, and the codes whose
        // marks were dropped are unknown.
        for i in 0..4 {
            store
                .admit_binding_now(&key("fresh", i), binding(), LONG)
                .unwrap();
        }
        let missing = codes
            .iter()
            .filter(|c| store.redeem_now(c) == Redemption::Missing)
            .count();
        assert_eq!(missing, codes.len() - marks);
    }

    fn source(last: u8) -> Option<Source> {
        Some(Source::new(std::net::IpAddr::from([192, 0, 2, last])))
    }

    /// The per-source count the store holds for `source`.
    fn held(store: &MemoryStore, source: Option<Source>) -> usize {
        source
            .and_then(|s| store.inner.sources.get(&s).map(|n| *n))
            .unwrap_or(0)
    }

    #[test]
    fn a_source_holds_at_most_its_quota_and_others_carry_on() {
        let store = MemoryStore::builder().max_pending_per_source(3).build();
        let (a, b) = (source(1), source(2));
        for i in 0..3 {
            store
                .insert_pending_now(&key("a", i), pending(), LONG, a)
                .unwrap();
        }
        assert!(matches!(
            store.insert_pending_now(&key("a", 3), pending(), LONG, a),
            Err(StoreError::SourceQuota)
        ));
        assert!(matches!(
            store.admission_hint(a),
            Err(StoreError::SourceQuota)
        ));
        assert_eq!(store.pressure().sources_at_quota, 1);
        // Other sources, and requests of no known source, are not held back.
        assert!(store.admission_hint(b).is_ok());
        store
            .insert_pending_now(&key("b", 0), pending(), LONG, b)
            .unwrap();
        for i in 0..10 {
            store
                .insert_pending_now(&key("unknown", i), pending(), LONG, None)
                .unwrap();
        }
        // The refusal took no room and counted nothing.
        assert_eq!(store.inner.len.load(Ordering::Acquire), 14);
        assert_eq!(held(&store, a), 3);
        // Taking one gives the source room again.
        assert!(store.take_pending_now(&key("a", 0)).is_some());
        assert_eq!(store.pressure().sources_at_quota, 0);
        assert!(store.admission_hint(a).is_ok());
        store
            .insert_pending_now(&key("a", 3), pending(), LONG, a)
            .unwrap();
        // A conflict gives its count back.
        assert!(store.take_pending_now(&key("a", 1)).is_some());
        assert!(matches!(
            store.insert_pending_now(&key("a", 2), pending(), LONG, a),
            Err(StoreError::Conflict)
        ));
        assert_eq!(held(&store, a), 2);
        // Without a quota, sources are not even counted.
        let free = MemoryStore::new();
        for i in 0..10 {
            free.insert_pending_now(&key("a", i), pending(), LONG, a)
                .unwrap();
        }
        assert!(free.inner.sources.is_empty());
    }

    #[test]
    fn a_source_count_is_released_on_take_expiry_and_eviction() {
        let store = MemoryStore::builder()
            .capacity(4)
            .max_pending_per_source(4)
            .build();
        let (a, b) = (source(1), source(2));
        store
            .insert_pending_now(&key("taken", 0), pending(), LONG, a)
            .unwrap();
        store
            .insert_pending_now(&key("expiring", 0), pending(), SHORT, a)
            .unwrap();
        store
            .insert_pending_now(&key("evicted", 0), pending(), LONG, a)
            .unwrap();
        assert_eq!(held(&store, a), 3);
        assert!(store.take_pending_now(&key("taken", 0)).is_some());
        assert_eq!(held(&store, a), 2);
        std::thread::sleep(AFTER_SHORT);
        assert_eq!(store.sweep(), 1);
        assert_eq!(held(&store, a), 1);
        // Full of b's records and a's last: the oldest, a's, is evicted.
        for i in 0..3 {
            std::thread::sleep(Duration::from_millis(70));
            store
                .insert_pending_now(&key("b", i), pending(), LONG, b)
                .unwrap();
        }
        store
            .insert_pending_now(&key("b", 3), pending(), LONG, b)
            .unwrap();
        assert_eq!(held(&store, a), 0);
        assert!(store.inner.sources.get(&a.unwrap()).is_none());
        assert_eq!(held(&store, b), 4);
        assert_eq!(store.pressure().sources_at_quota, 1);
        assert_eq!(store.pressure().evicted, 1);
    }

    #[test]
    fn a_full_store_evicts_the_oldest_pending_authorization() {
        let store = MemoryStore::builder().capacity(4).build();
        // Spread over segments, a tick apart or more, oldest first.
        let keys: Vec<StoreKey> = (0..4).map(|i| key("old", i)).collect();
        for k in &keys {
            store.insert_pending_now(k, pending(), LONG, None).unwrap();
            std::thread::sleep(Duration::from_millis(70));
        }
        // The oldest but one is taken: its queue entry is stale.
        assert!(store.take_pending_now(&keys[1]).is_some());
        store
            .insert_pending_now(&key("fill", 0), pending(), LONG, None)
            .unwrap();
        for (i, gone) in [0, 2, 3].into_iter().enumerate() {
            store
                .insert_pending_now(&key("new", i), pending(), LONG, None)
                .unwrap();
            assert!(store.get_pending_now(&keys[gone]).is_none(), "{gone}");
            for &kept in &[0, 2, 3][i + 1..] {
                assert!(store.get_pending_now(&keys[kept]).is_some(), "{kept}");
            }
        }
        assert_eq!(store.pressure().evicted, 3);
        assert_eq!(store.inner.len.load(Ordering::Acquire), 4);
        assert_eq!(store.inner.pending_len.load(Ordering::Acquire), 4);
    }

    /// Four threads write pending records into a full store, taking and
    /// binding some: once they are done, the maps hold exactly the records
    /// counted, within the capacity, and every binding written is there.
    #[test]
    fn concurrent_writers_never_pass_the_capacity() {
        const CAPACITY: usize = 256;
        let store = MemoryStore::builder().capacity(CAPACITY).build();
        let bound: Vec<Vec<StoreKey>> = std::thread::scope(|scope| {
            let writers: Vec<_> = (0..4)
                .map(|t| {
                    let store = &store;
                    scope.spawn(move || {
                        let mut bound = Vec::new();
                        for i in 0..5_000 {
                            let k = key(&format!("w{t}"), i);
                            let source =
                                Some(crate::Source::from(std::net::IpAddr::from([10, 0, t, 1])));
                            if store
                                .insert_pending_now(&k, pending(), LONG, source)
                                .is_err()
                            {
                                continue;
                            }
                            if i % 97 == 0 && store.take_pending_now(&k).is_some() {
                                let code = key(&format!("code{t}"), i);
                                if store.insert_binding_now(&code, binding(), LONG).is_ok() {
                                    bound.push(code);
                                }
                            }
                        }
                        bound
                    })
                })
                .collect();
            writers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let inner = &store.inner;
        let held = inner.len.load(Ordering::Acquire);
        let in_maps = inner.pending.len() + inner.bindings.len() + inner.spent.len();
        assert_eq!(in_maps, held);
        assert!(held <= CAPACITY, "{held}");
        assert_eq!(
            inner.pending.len(),
            inner.pending_len.load(Ordering::Acquire)
        );
        for code in bound.iter().flatten() {
            assert!(
                inner.bindings.of(code).contains_key(code),
                "a binding was evicted"
            );
        }
        assert!(store.pressure().evicted > 0);
    }

    #[test]
    fn bindings_are_never_evicted_and_may_evict_pending_ones() {
        let store = MemoryStore::builder().capacity(3).build();
        let codes = [key("code", 0), key("code", 1)];
        store.admit_binding_now(&codes[0], binding(), LONG).unwrap();
        // A tick apart or more, so that their age tells them apart.
        for i in 0..2 {
            store
                .insert_pending_now(&key("p", i), pending(), LONG, None)
                .unwrap();
            std::thread::sleep(Duration::from_millis(70));
        }
        // A new pending authorization takes a pending one's room.
        store
            .insert_pending_now(&key("p", 2), pending(), LONG, None)
            .unwrap();
        assert!(store.get_pending_now(&key("p", 0)).is_none());
        // So does a binding admitted at the bound.
        store.admit_binding_now(&codes[1], binding(), LONG).unwrap();
        assert!(store.get_pending_now(&key("p", 1)).is_none());
        // A binding whose pending record's room was taken meanwhile takes
        // it back from another pending record.
        let record = store.take_pending_now(&key("p", 2)).unwrap();
        store
            .insert_pending_now(&key("p", 3), pending(), LONG, None)
            .unwrap();
        store
            .insert_binding_now(&key("code", 2), record.binding(), LONG)
            .unwrap();
        assert!(store.get_pending_now(&key("p", 3)).is_none());
        assert_eq!(store.inner.len.load(Ordering::Acquire), 3);
        // Full of bindings: a pending write is refused, and none goes.
        assert!(matches!(
            store.insert_pending_now(&key("p", 4), pending(), LONG, None),
            Err(StoreError::Full)
        ));
        for code in [codes[0], codes[1], key("code", 2)] {
            assert!(matches!(store.redeem_now(&code), Redemption::Redeemed(_)));
        }
        assert_eq!(store.pressure().evicted, 3);
    }

    #[test]
    fn the_eviction_queue_stays_within_twice_the_records() {
        let store = MemoryStore::new();
        for i in 0..20_000 {
            let k = key("brief", i);
            store.insert_pending_now(&k, pending(), LONG, None).unwrap();
            assert!(store.take_pending_now(&k).is_some());
        }
        let queued: usize = store
            .inner
            .arrivals
            .iter()
            .map(|a| lock(a).queue.len())
            .sum();
        assert!(queued <= SEGMENTS * MIN_COMPACT, "{queued}");
    }

    fn ready_stats(store: &MemoryStore) -> StoreStats {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match std::pin::pin!(store.stats()).poll(&mut cx) {
            std::task::Poll::Ready(Ok(stats)) => stats,
            _ => panic!("the memory store's futures are ready"),
        }
    }
}
