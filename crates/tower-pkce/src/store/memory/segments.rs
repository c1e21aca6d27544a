//! The store's maps: each family of records split by key into segments,
//! and the hasher that reads a [`StoreKey`]'s own digest.

use std::hash::{BuildHasher, Hasher};

use dashmap::DashMap;

use crate::store::StoreKey;

/// A hasher for [`StoreKey`], whose `Hash` already writes a uniform `u64`.
#[derive(Default)]
pub(super) struct KeyHasher(u64);

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
pub(super) struct BuildKeyHasher;

impl BuildHasher for BuildKeyHasher {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher::default()
    }
}

/// How many maps each family of records is split into, by key.
///
/// A map stalls the thread that touches it in two ways: when it grows (all
/// its records are moved to a larger table) and when it is swept. Split in
/// segments, each stall moves or visits one segment's records rather than
/// the store's, and the background sweep lets other tasks run between
/// segments. At a million records, one proxy's worst `authorize` latency
/// went from 153 ms to 18 ms (`benches/RESULTS.md`).
pub(super) const SEGMENTS: usize = 64;

/// The locks of each segment: with [`SEGMENTS`], 128 a family, enough for
/// the threads of any likely runtime, and few enough that each table stays
/// large (many small tables fragment the allocator's memory as they grow).
const SHARDS_PER_SEGMENT: usize = 2;

/// The segment that holds `key`'s record, in every family.
pub(super) fn segment(key: &StoreKey) -> usize {
    // The maps hash a key by its first eight bytes; the segment comes from
    // its last byte, which is independent of them.
    let [.., last] = *key.as_bytes();
    usize::from(last) % SEGMENTS
}

/// One family of records, split by key into [`SEGMENTS`] maps.
pub(super) struct Segments<V> {
    pub(super) maps: [DashMap<StoreKey, V, BuildKeyHasher>; SEGMENTS],
}

impl<V> Segments<V> {
    pub(super) fn new() -> Self {
        Self {
            maps: std::array::from_fn(|_| {
                DashMap::with_hasher_and_shard_amount(BuildKeyHasher, SHARDS_PER_SEGMENT)
            }),
        }
    }

    /// The map that holds `key`'s record.
    pub(super) fn of(&self, key: &StoreKey) -> &DashMap<StoreKey, V, BuildKeyHasher> {
        &self.maps[segment(key)]
    }

    pub(super) fn len(&self) -> usize {
        self.maps.iter().map(DashMap::len).sum()
    }

    /// Removes the records of segment `index` whose expiry (read by
    /// `expires`) is not after `now`, showing each to `leaving` while its
    /// shard is still locked, and returns how many there were.
    pub(super) fn remove_expired(
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
