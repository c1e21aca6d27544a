//! The sweep of expired records, inline or in a background task, which
//! turns bindings past their TTL into marks and keeps the marks bounded.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use super::admission::lock;
use super::segments::SEGMENTS;
use super::{Inner, Mark, MemoryStore, TICKS_PER_SECOND};
use crate::store::StoreKey;

/// The fewest marks a segment keeps, whatever the mark bound. Keys spread
/// over the segments unevenly, and in a small store a share of one or two
/// would drop marks while the store holds far fewer than its bound; 1,024
/// marks in all cost a few tens of kilobytes.
pub(super) const MIN_MARK_SHARE: usize = 16;

impl Inner {
    /// Removes every expired record, one segment after the other.
    pub(super) fn sweep(&self) -> usize {
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
    pub(super) fn sweep_segment(&self, index: usize) -> usize {
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
    pub(super) fn mark_share(&self, index: usize) -> usize {
        let share =
            self.mark_capacity / SEGMENTS + usize::from(index < self.mark_capacity % SEGMENTS);
        share.max(MIN_MARK_SHARE)
    }

    /// When segment `index` of `marks` holds more than its share, drops the
    /// marks that expire soonest, down to seven eighths of the share: one
    /// pass over the segment pays for an eighth of a share of new marks.
    pub(super) fn trim_marks(&self, index: usize) {
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
}

impl MemoryStore {
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
    pub(super) fn sweep_if_stale(&self) {
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
}
