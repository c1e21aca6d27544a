//! Code bindings: bound (in the room of a pending authorization, or in new
//! room), redeemed once, and restored; and the marks they leave behind.

use std::sync::atomic::Ordering;
use std::time::Duration;

use dashmap::mapref::entry::Entry;

use super::segments::segment;
use super::{Live, Mark, MemoryStore, Spent};
use crate::store::{CodeBinding, Redemption, StoreError, StoreKey};

/// Whether a binding took room of its own or an expired record's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Room {
    New,
    Reused,
}

impl MemoryStore {
    pub(super) fn insert_binding_now(
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

    pub(super) fn admit_binding_now(
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

    pub(super) fn redeem_now(&self, key: &StoreKey) -> Redemption {
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

    pub(super) fn restore_now(&self, key: &StoreKey, binding: CodeBinding) {
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
