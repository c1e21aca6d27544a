//! What this replica saw of recent refusals (Redis failed, was full, or a
//! source held its quota), so that the admission hint refuses without a
//! round trip.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::unavailable;
use crate::Source;
use crate::store::StoreError;

/// How long new authorizations are refused without asking Redis after an
/// operation failed or an admission found the store full.
pub(super) const HINT_WINDOW_MILLIS: u64 = 1000;

/// What recent operations told of Redis, for [`Store::admission_hint`]:
/// that it failed, or that it was full.
#[derive(Debug, Default)]
pub(super) struct Refusals {
    pub(super) failed: Refusal,
    pub(super) full: Refusal,
}

impl Refusals {
    pub(super) fn check(&self, now: u64) -> Result<(), StoreError> {
        if !self.failed.admits(now) {
            return Err(unavailable("Redis failed a moment ago"));
        }
        if !self.full.admits(now) {
            return Err(StoreError::Full);
        }
        Ok(())
    }
}

/// When a refusal was last noted, in milliseconds after the store was made,
/// plus one; 0 when it no longer holds.
///
/// For [`HINT_WINDOW_MILLIS`] after it, new authorizations are refused
/// without asking Redis. Then one of them, the first to claim the next
/// window, asks; the others are refused until its answer clears the
/// refusal, or until that window lapses too (its request may have been
/// dropped). So service resumes by itself, and an outage lets one request
/// a second through to the upstream.
#[derive(Debug, Default)]
pub(super) struct Refusal(AtomicU64);

impl Refusal {
    pub(super) fn note(&self, now: u64) {
        self.0.store(now.saturating_add(1), Ordering::Relaxed);
    }

    pub(super) fn clear(&self) {
        if self.0.load(Ordering::Relaxed) != 0 {
            self.0.store(0, Ordering::Relaxed);
        }
    }

    pub(super) fn admits(&self, now: u64) -> bool {
        let since = self.0.load(Ordering::Relaxed);
        if since == 0 {
            return true;
        }
        let stamp = now.saturating_add(1);
        if stamp.saturating_sub(since) < HINT_WINDOW_MILLIS {
            return false;
        }
        self.0
            .compare_exchange(since, stamp, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }
}

/// How long a source refused for its quota is refused without asking Redis.
pub(super) const QUOTA_HINT_MILLIS: u64 = 1000;
/// How long a source refused for its quota counts in
/// [`Store::pressure`].
pub(super) const QUOTA_SEEN_MILLIS: u64 = 60_000;
/// The most sources a replica remembers refusing for their quota. Past it,
/// sources refused anew are not remembered until older ones lapse: the
/// hint lets their requests ask Redis, which refuses them.
pub(super) const QUOTA_REFUSALS_KEPT: usize = 4096;

/// The sources this replica refused for their quota, and when it last did,
/// in milliseconds after the store was made.
#[derive(Debug, Default)]
pub(super) struct QuotaRefusals {
    /// Whether the map may hold anything, so that the hint takes no lock
    /// while no source is refused.
    any: std::sync::atomic::AtomicBool,
    seen: Mutex<std::collections::HashMap<Source, u64>>,
}

impl QuotaRefusals {
    fn seen(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<Source, u64>> {
        match self.seen.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub(super) fn note(&self, source: Source, now: u64) {
        let mut seen = self.seen();
        if seen.len() >= QUOTA_REFUSALS_KEPT && !seen.contains_key(&source) {
            seen.retain(|_, at| now.saturating_sub(*at) < QUOTA_SEEN_MILLIS);
            if seen.len() >= QUOTA_REFUSALS_KEPT {
                return;
            }
        }
        seen.insert(source, now);
        self.any.store(true, Ordering::Release);
    }

    pub(super) fn refused_lately(&self, source: Source, now: u64) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        self.seen()
            .get(&source)
            .is_some_and(|at| now.saturating_sub(*at) < QUOTA_HINT_MILLIS)
    }

    /// The sources refused within the last minute; forgets older ones.
    pub(super) fn recent(&self, now: u64) -> u64 {
        let mut seen = self.seen();
        seen.retain(|_, at| now.saturating_sub(*at) < QUOTA_SEEN_MILLIS);
        if seen.is_empty() {
            self.any.store(false, Ordering::Release);
        }
        seen.len() as u64
    }
}
