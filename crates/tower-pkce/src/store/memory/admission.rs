//! Admission under the capacity bound: the per-source quota, the queue of
//! pending authorizations by arrival, and the eviction of the oldest.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard, PoisonError};

use dashmap::mapref::entry::Entry;

use super::segments::{SEGMENTS, segment};
use super::{Inner, MemoryStore};
use crate::Source;
use crate::store::{StoreError, StoreKey};

/// The pending authorizations of one segment in the order they arrived,
/// by key and expiry (which tells a record from a later one under the same
/// key). Records taken or expired stay queued until they reach the front
/// or the queue is compacted.
pub(super) struct Arrivals {
    pub(super) queue: VecDeque<(StoreKey, u32)>,
    /// The length at which the queue is next compacted: twice what it kept
    /// the last time, so that each arrival pays for a bounded share of the
    /// work and the queue never holds more than about twice the segment's
    /// records.
    pub(super) compact_at: usize,
}

/// The shortest queue that is compacted.
pub(super) const MIN_COMPACT: usize = 64;

/// How many times a write that finds the store full evicts and tries
/// again, as concurrent writes may take the room it made.
const EVICTION_ATTEMPTS: usize = 4;

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while an `Arrivals` is locked, and a queue in any
    // state is safe to use: it is only a hint of what to evict.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    pub(super) fn reserve(&self) -> bool {
        self.len
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .is_ok()
    }

    /// Counts a new pending authorization against `source`, unless the
    /// source holds its quota.
    pub(super) fn count_source(&self, source: Option<Source>) -> Result<(), StoreError> {
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
    pub(super) fn release_source(&self, source: Option<Source>) {
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
    pub(super) fn source_at_quota(&self, source: Option<Source>) -> bool {
        let (Some(source), Some(quota)) = (source, self.quota) else {
            return false;
        };
        quota == 0 || self.sources.get(&source).is_some_and(|n| *n >= quota)
    }

    /// A pending authorization written to segment `index`, queued for
    /// eviction.
    pub(super) fn arrived(&self, key: &StoreKey, expires: u32) {
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
    pub(super) fn evict_oldest(&self) -> bool {
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

impl MemoryStore {
    /// Takes one record's room under the capacity bound. A store that
    /// finds itself full sweeps (at most once a second), then evicts the
    /// oldest pending authorization; never a binding.
    pub(super) fn reserve(&self) -> Result<(), StoreError> {
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
}
