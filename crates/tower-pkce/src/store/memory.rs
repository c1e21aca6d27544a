//! The in-memory store: sharded maps with a TTL and a shared capacity.
//!
//! A spent code is kept until its TTL ends, so that it keeps being refused,
//! but all it needs for that is its key and its expiry. Spent codes
//! therefore live in a map of their own, whose entries are a fifth the size
//! of a live binding's: a busy server spends most of the codes it binds,
//! and those fill memory, and every growth of the map, at that size.

use std::future::{Future, ready};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use super::{
    CodeBinding, PendingAuthorization, Redemption, Store, StoreError, StoreKey, StoreStats,
};

/// Time is kept in sixteenths of a second since the store was made: a `u32`
/// then lasts eight years, and a record costs four bytes for its expiry.
const TICKS_PER_SECOND: u64 = 16;

/// The default number of records (both families together).
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

struct Timed<T> {
    value: T,
    expires: u32,
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
        // The maps hash a key by its first eight bytes; the segment comes
        // from its last byte, which is independent of them.
        let [.., last] = *key.as_bytes();
        &self.maps[usize::from(last) % SEGMENTS]
    }

    fn len(&self) -> usize {
        self.maps.iter().map(DashMap::len).sum()
    }

    /// Removes the records of segment `index` whose expiry (read by
    /// `expires`) is not after `now`, and returns how many there were.
    fn remove_expired(&self, index: usize, now: u32, expires: impl Fn(&V) -> u32) -> usize {
        let mut removed = 0;
        if let Some(map) = self.maps.get(index) {
            map.retain(|_, record| {
                let keep = expires(record) > now;
                removed += usize::from(!keep);
                keep
            });
        }
        removed
    }
}

struct Inner {
    pending: Segments<Timed<PendingAuthorization>>,
    /// Live bindings.
    bindings: Segments<Timed<CodeBinding>>,
    /// Spent bindings: the expiry each had. A key is in `bindings` or here,
    /// never in both; every change that moves one holds the `bindings`
    /// shard's lock, and takes `spent`'s inside it, never the other way.
    spent: Segments<u32>,
    capacity: usize,
    len: AtomicUsize,
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

    /// Removes the expired records of segment `index` of every family.
    fn sweep_segment(&self, index: usize) -> usize {
        let now = self.now();
        let removed = self.pending.remove_expired(index, now, |r| r.expires)
            + self.bindings.remove_expired(index, now, |r| r.expires)
            + self.spent.remove_expired(index, now, |&expires| expires);
        self.release(removed);
        removed
    }

    fn reserve(&self) -> bool {
        self.len
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .is_ok()
    }
}

/// The embedded store: records live in this process's memory, in sharded
/// maps ([`dashmap`]), so it serves one replica. Use a shared backend when
/// several replicas serve one authorization server.
///
/// Expired records are never returned. They are also swept by a background
/// task that the layer starts when it is built inside a Tokio runtime (or
/// that you start with [`MemoryStore::spawn_sweeper`]), and by an inline
/// sweep when the store finds itself full.
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
    sweep_period: Duration,
}

impl MemoryStoreBuilder {
    /// The most records (pending and bindings together) the store holds.
    /// Default: 1,000,000. A capacity of 0 refuses every authorization.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
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
                bindings: Segments::new(),
                spent: Segments::new(),
                capacity: self.capacity,
                len: AtomicUsize::new(0),
                epoch: Instant::now(),
                sweep_period: self.sweep_period,
                sweeper_started: AtomicBool::new(false),
                last_sweep: AtomicU64::new(0),
            }),
        }
    }
}

impl MemoryStore {
    /// A store with the default capacity and sweep period.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Settings for a store.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder {
            capacity: DEFAULT_CAPACITY,
            sweep_period: DEFAULT_SWEEP_PERIOD,
        }
    }

    /// The capacity bound.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// Removes every expired record now, and returns how many there were.
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
    ) -> Result<(), StoreError> {
        self.reserve()?;
        let inner = &self.inner;
        let now = inner.now();
        let timed = Timed {
            value: record,
            expires: Inner::expiry(now, ttl),
        };
        match inner.pending.of(key).entry(*key) {
            Entry::Occupied(mut e) if e.get().expires <= now => {
                // Replacing an expired record frees the room it held.
                e.insert(timed);
                inner.release(1);
                Ok(())
            }
            Entry::Occupied(_) => {
                inner.release(1);
                Err(StoreError::Conflict)
            }
            Entry::Vacant(e) => {
                e.insert(timed);
                Ok(())
            }
        }
    }

    fn take_pending_now(&self, key: &StoreKey) -> Option<PendingAuthorization> {
        let inner = &self.inner;
        let now = inner.now();
        let (_, record) = inner.pending.of(key).remove(key)?;
        inner.release(1);
        (record.expires > now).then_some(record.value)
    }

    fn insert_binding_now(
        &self,
        key: &StoreKey,
        binding: CodeBinding,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        if self.put_binding(key, binding, ttl)? == Room::New {
            self.inner.len.fetch_add(1, Ordering::AcqRel);
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

    /// Takes one record's room under the capacity bound, sweeping first
    /// when the store finds itself full.
    fn reserve(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        if inner.reserve() {
            return Ok(());
        }
        self.sweep_if_stale();
        if inner.reserve() {
            Ok(())
        } else {
            Err(StoreError::Full)
        }
    }

    /// Writes a binding unless the code is bound (live or spent), and says
    /// whether it took new room or the room of an expired record.
    fn put_binding(
        &self,
        key: &StoreKey,
        binding: CodeBinding,
        ttl: Duration,
    ) -> Result<Room, StoreError> {
        let inner = &self.inner;
        let now = inner.now();
        let timed = Timed {
            value: binding,
            expires: Inner::expiry(now, ttl),
        };
        match inner.bindings.of(key).entry(*key) {
            Entry::Occupied(mut e) if e.get().expires <= now => {
                e.insert(timed);
                Ok(Room::Reused)
            }
            Entry::Occupied(_) => Err(StoreError::Conflict),
            Entry::Vacant(e) => {
                // A spent code may not be bound afresh: it would become
                // redeemable a second time. An expired one frees its room.
                if let Entry::Occupied(spent) = inner.spent.of(key).entry(*key) {
                    if *spent.get() > now {
                        return Err(StoreError::Conflict);
                    }
                    spent.remove();
                    e.insert(timed);
                    return Ok(Room::Reused);
                }
                e.insert(timed);
                Ok(Room::New)
            }
        }
    }

    fn redeem_now(&self, key: &StoreKey) -> Redemption {
        let inner = &self.inner;
        let now = inner.now();
        match inner.bindings.of(key).entry(*key) {
            Entry::Occupied(e) if e.get().expires > now => {
                let expires = e.get().expires;
                inner.spent.of(key).insert(*key, expires);
                Redemption::Redeemed(e.remove().value)
            }
            Entry::Occupied(_) => Redemption::Missing,
            Entry::Vacant(_) => match inner.spent.of(key).get(key) {
                Some(expires) if *expires > now => Redemption::Spent,
                _ => Redemption::Missing,
            },
        }
    }

    fn restore_now(&self, key: &StoreKey, binding: CodeBinding) {
        let inner = &self.inner;
        let now = inner.now();
        if let Entry::Vacant(e) = inner.bindings.of(key).entry(*key)
            && let Some((_, expires)) = inner
                .spent
                .of(key)
                .remove_if(key, |_, expires| *expires > now)
        {
            e.insert(Timed {
                value: binding,
                expires,
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
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        ready(self.insert_pending_now(key, record, ttl))
    }

    fn contains_pending(
        &self,
        key: &StoreKey,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let now = self.inner.now();
        ready(Ok(self
            .inner
            .pending
            .of(key)
            .get(key)
            .is_some_and(|r| r.expires > now)))
    }

    fn get_pending(
        &self,
        key: &StoreKey,
    ) -> impl Future<Output = Result<Option<PendingAuthorization>, StoreError>> + Send {
        let now = self.inner.now();
        let record = self
            .inner
            .pending
            .of(key)
            .get(key)
            .and_then(|r| (r.expires > now).then(|| r.value.clone()));
        ready(Ok(record))
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
        ready(Ok(StoreStats {
            pending: self.inner.pending.len() as u64,
            bindings: (self.inner.bindings.len() + self.inner.spent.len()) as u64,
        }))
    }

    fn admission_hint(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        if inner.len.load(Ordering::Acquire) < inner.capacity {
            return Ok(());
        }
        self.sweep_if_stale();
        if inner.len.load(Ordering::Acquire) < inner.capacity {
            Ok(())
        } else {
            Err(StoreError::Full)
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
    const LONG: Duration = Duration::from_secs(3600);
    /// Longer than the shortest lifetime a record gets (two ticks).
    const AFTER_SHORT: Duration = Duration::from_millis(250);

    #[test]
    fn the_admission_hint_knows_when_the_store_is_full() {
        let store = MemoryStore::builder().capacity(2).build();
        assert!(store.admission_hint().is_ok());
        store
            .insert_pending_now(&key("p", 0), pending(), LONG)
            .unwrap();
        assert!(store.admission_hint().is_ok());
        store
            .admit_binding_now(&key("b", 0), binding(), LONG)
            .unwrap();
        assert!(matches!(store.admission_hint(), Err(StoreError::Full)));
        // Failed admissions give their room back.
        assert!(matches!(
            store.admit_binding_now(&key("b", 0), binding(), LONG),
            Err(StoreError::Full)
        ));
        assert!(store.take_pending_now(&key("p", 0)).is_some());
        assert!(store.admission_hint().is_ok());
        assert!(matches!(
            store.admit_binding_now(&key("b", 0), binding(), LONG),
            Err(StoreError::Conflict)
        ));
        assert!(store.admission_hint().is_ok());
        assert_eq!(store.inner.len.load(Ordering::Acquire), 1);
    }

    #[test]
    fn an_admitted_binding_takes_the_room_of_an_expired_one() {
        let store = MemoryStore::builder().capacity(2).build();
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
                .insert_pending_now(&key("pending-short", i), pending(), SHORT)
                .unwrap();
            store
                .insert_pending_now(&key("pending-long", i), pending(), LONG)
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

    fn assert_only_long_lived_remain(store: &MemoryStore, count: usize) {
        let inner = &store.inner;
        assert_eq!(inner.pending.len(), count);
        assert_eq!(inner.bindings.len(), count);
        assert_eq!(inner.spent.len(), count);
        assert_eq!(inner.len.load(Ordering::Acquire), 3 * count);
        for i in 0..count {
            assert!(store.take_pending_now(&key("pending-long", i)).is_some());
            assert!(matches!(
                store.redeem_now(&key("live-long", i)),
                Redemption::Redeemed(_)
            ));
            assert_eq!(store.redeem_now(&key("spent-long", i)), Redemption::Spent);
        }
    }

    #[test]
    fn sweep_removes_the_expired_records_of_every_segment_and_frees_their_room() {
        let count = SEGMENTS * 4;
        let store = MemoryStore::builder().capacity(6 * count).build();
        fill(&store, count);
        assert_eq!(store.inner.len.load(Ordering::Acquire), 6 * count);
        assert!(matches!(
            store.insert_pending_now(&key("extra", 0), pending(), LONG),
            Err(StoreError::Full)
        ));
        std::thread::sleep(AFTER_SHORT);
        assert_eq!(store.sweep(), 3 * count);
        assert_only_long_lived_remain(&store, count);
        // The room the expired records held is free again.
        for i in 0..3 * count {
            store
                .insert_pending_now(&key("extra", i), pending(), LONG)
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
}
