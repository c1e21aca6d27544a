//! The settings of a [`MemoryStore`] and how it is made from them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::admission::{Arrivals, MIN_COMPACT};
use super::segments::Segments;
use super::{Inner, MemoryStore};
use crate::store::DEFAULT_MARK_TTL;

/// The default number of records (both families together), and of marks.
#[cfg_attr(docsrs, doc(cfg(feature = "memory-store")))]
pub const DEFAULT_CAPACITY: usize = 1_000_000;
/// The default period of the background sweep.
#[cfg_attr(docsrs, doc(cfg(feature = "memory-store")))]
pub const DEFAULT_SWEEP_PERIOD: Duration = Duration::from_secs(30);

/// Settings for a [`MemoryStore`].
#[cfg_attr(docsrs, doc(cfg(feature = "memory-store")))]
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

    /// The most pending authorizations one [`Source`](crate::Source) may
    /// hold at once. Default: none, no quota.
    ///
    /// Past it, that source's new authorizations are refused with
    /// [`StoreError::SourceQuota`](crate::store::StoreError::SourceQuota)
    /// (the layer answers 429) until one of its records is taken (its
    /// sign-in goes on to a code), expires (or is swept: an expired record
    /// counts until the sweep finds it) or is evicted; other sources carry
    /// on. Authorizations without a source (the layer found no
    /// [`Source`](crate::Source) extension on the request) count against no
    /// quota.
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
}
