//! Pending authorizations: written under the quota and the capacity bound,
//! read, and taken once.

use std::sync::atomic::Ordering;
use std::time::Duration;

use dashmap::mapref::entry::Entry;

use super::{Inner, MemoryStore, Waiting};
use crate::Source;
use crate::store::{PendingAuthorization, StoreError, StoreKey};

impl MemoryStore {
    pub(super) fn insert_pending_now(
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

    pub(super) fn get_pending_now(&self, key: &StoreKey) -> Option<PendingAuthorization> {
        let now = self.inner.now();
        self.inner
            .pending
            .of(key)
            .get(key)
            .and_then(|r| (r.expires > now).then(|| r.value.clone()))
    }

    pub(super) fn take_pending_now(&self, key: &StoreKey) -> Option<PendingAuthorization> {
        let inner = &self.inner;
        let now = inner.now();
        let (_, record) = inner.pending.of(key).remove(key)?;
        inner.release(1);
        inner.pending_len.fetch_sub(1, Ordering::AcqRel);
        inner.release_source(record.source);
        (record.expires > now).then_some(record.value)
    }
}
