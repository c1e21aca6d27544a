//! The Redis store: records shared by every replica that points at the same
//! Redis, with expiry left to Redis.
//!
//! # Layout
//!
//! Every key starts with the prefix in braces (a Redis Cluster hash tag), so
//! that all of a store's keys live in one slot and the scripts may
//! touch several of them at once. For the prefix `pkce` and a record key `K`
//! (32 hex digits of the truncated SHA-256 digest of a handle or a code):
//!
//! | key | holds | written with |
//! | --- | --- | --- |
//! | `{pkce}:p:K` | a pending authorization | `SET NX PX`, taken with `GETDEL` |
//! | `{pkce}:c:K` | the mark that code `K` was bound: `b` or `s`, then its binding's expiry | `SET NX PX`, for the mark lifetime or the binding's TTL, whichever is longer |
//! | `{pkce}:b:K` | the live binding of code `K` | `SET PX`, redeemed with `GETDEL` |
//! | `{pkce}:n:p`, `{pkce}:n:b` | sorted sets of live records by expiry | `ZADD` |
//! | `{pkce}:src:S` | sorted set of the pending records of source `S` (`192.0.2.7`, `2001:db8::/64`) by expiry, with a quota | `ZADD`, `PEXPIRE` to the longest TTL in it |
//! | `{pkce}:ps:K` | the name of the source set that pending record `K` counts in | `SET PX`, with the record's TTL |
//!
//! The mark's value is `b` (bound) or `s` (spent), followed by the absolute
//! expiry of the binding in milliseconds by Redis's clock (`TIME`), in
//! decimal: `b1767225600000`. Its own TTL is the mark lifetime, so the
//! binding's expiry is kept in the value, where the restore script reads it.
//!
//! A redemption is one script: it takes `b:K` with `GETDEL`, so that of
//! several concurrent ones exactly one gets the record, and turns the mark
//! to `s`, keeping its TTL. Without a live binding, the mark answers:
//! `s` reads [`Redemption::Spent`], `b` (the binding's TTL ended
//! unredeemed) [`Redemption::Expired`], and no mark
//! [`Redemption::Missing`]. While the mark lives the code cannot be bound
//! afresh. A mark written by a version before marks outlived their
//! bindings holds `1`, has its binding's TTL, and reads as spent. Replicas
//! of one prefix should run one version: while an upgrade is under way, a
//! replica of the earlier version gives a binding back after an upstream
//! 5xx for what is left of its mark (up to the mark lifetime) rather than
//! of its binding, and answers [`Redemption::Spent`] for an expired code.
//!
//! The two sorted sets make the capacity bound exact: an authorization is
//! admitted only while fewer than `capacity` records are live, counting
//! spent bindings until their TTL ends, exactly as
//! [`MemoryStore`](super::MemoryStore) does. Marks are in neither set: each
//! binding's entry has the binding's expiry, so a mark that outlives it
//! holds no room. The sets are pruned by expiry on every admission, so
//! Redis's TTLs remain the only clock. Redis's own `maxmemory` (with
//! `noeviction`) is a second, coarser bound, and the only one on marks: an
//! out-of-memory refusal reads as [`StoreError::Full`].
//!
//! # Under pressure
//!
//! With a per-source quota, each source's set counts its live pending
//! records, checked and updated by the script that writes the record, so
//! that the quota holds across replicas exactly as the capacity does.
//! Taking or evicting a record removes its set entry through its note and
//! prunes the set; a record that expires leaves an entry of a past expiry,
//! which is not counted and is pruned by the next of these, and an idle
//! source's set expires with its last record.
//!
//! At the capacity bound, an admission evicts the live pending record with
//! the earliest expiry (the oldest, since pending records share one TTL),
//! in the same script; bindings are never evicted. The scripts that evict
//! reach the evicted record's keys by names they compute from the prefix,
//! not through `KEYS`: Redis runs this, and the names share the store's
//! hash tag, but Redis Cluster does not promise to. The store is meant for
//! one primary (standalone or Sentinel-managed), not a Cluster.
//!
//! # Failure
//!
//! Every operation is bounded by a timeout. An unreachable or slow Redis
//! gives [`StoreError::Unavailable`], which the middleware answers with 503
//! `temporarily_unavailable`; nothing is forwarded unchecked. The connection
//! is re-established in the background, so service resumes by itself when
//! Redis is back.
//!
//! # TLS
//!
//! A `rediss://` URL connects over TLS (rustls, with the `ring`
//! cryptography), checking Redis's certificate against the system's
//! authorities, or against those given with [`RedisStoreBuilder::tls`],
//! which may also give a client certificate for Redis's
//! `tls-auth-clients yes`. A certificate that does not check out fails the
//! connection, so operations fail closed as for an unreachable Redis.
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use super::{
    CodeBinding, PendingAuthorization, Redemption, Store, StoreError, StoreKey, StorePressure,
    StoreStats,
};
use crate::Source;

mod builder;
mod codec;
mod connection;
mod keys;
mod refusals;
mod scripts;
mod tls;

pub use builder::{
    DEFAULT_REDIS_CAPACITY, DEFAULT_REDIS_PREFIX, DEFAULT_REDIS_TIMEOUT, RedisStoreBuilder,
    check_settings,
};
pub use tls::RedisTls;

use codec::{decode_pending, encode_binding, encode_pending, redemption};
use keys::{Keys, member, ttl_millis};
use refusals::{QuotaRefusals, Refusals};

/// server (or Sentinel-managed primary).
///
/// It needs Redis 6.2 or later (`GETDEL`). Cloning is cheap: clones share one
/// multiplexed connection.
///
/// It bounds how many pending authorizations one [`Source`] holds, across
/// every replica (see [`RedisStoreBuilder::max_pending_per_source`]), and at
/// its capacity bound evicts the pending authorization that expires first
/// to admit a new record; it never evicts a binding, and refuses with
/// [`StoreError::Full`] only when every live record is one. The counts live
/// in Redis and are checked and updated in the same script as the write.
/// What [`Store::pressure`] reports is this replica's share: see there.
///
/// ```no_run
/// # async fn run() -> Result<(), tower_pkce::store::StoreError> {
/// use tower_pkce::PkceLayer;
/// use tower_pkce::store::RedisStore;
///
/// let store = RedisStore::builder("redis://127.0.0.1:6379/0")
///     .prefix("pkce")
///     .build()?;
/// let layer = PkceLayer::strict().store(store);
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
#[cfg_attr(docsrs, doc(cfg(feature = "redis-store")))]
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    connection: RwLock<ConnectionManager>,
    /// Operations that failed in a row, and when the connection was last
    /// made afresh.
    failures: AtomicU32,
    renewed: Mutex<Instant>,
    refusals: Refusals,
    quota_refusals: QuotaRefusals,
    evicted: AtomicU64,
    epoch: Instant,
    keys: Keys,
    capacity: usize,
    quota: Option<usize>,
    mark_ttl: Duration,
    timeout: Duration,
    insert_pending: Script,
    insert_binding: Script,
    admit_binding: Script,
    take_pending: Script,
    redeem: Script,
    restore: Script,
    stats: Script,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.keys.tag)
            .field("capacity", &self.inner.capacity)
            .field("max_pending_per_source", &self.inner.quota)
            .field("mark_ttl", &self.inner.mark_ttl)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// The capacity bound.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// The per-source quota on pending authorizations, if any.
    pub fn max_pending_per_source(&self) -> Option<usize> {
        self.inner.quota
    }

    /// Runs an admission script (`INSERT_PENDING`, `ADMIT_BINDING`) and
    /// reads its answer, noted for the hint: 0 full, 1 taken, 2 written,
    /// 3 written after an eviction, 4 the source's quota.
    async fn admit(
        &self,
        invocation: redis::ScriptInvocation<'_>,
        source: Option<Source>,
    ) -> Result<(), StoreError> {
        let mut connection = self.connection();
        let outcome = self.bounded(invocation.invoke_async(&mut connection)).await;
        let outcome = match outcome {
            Ok(0) => Err(StoreError::Full),
            Ok(1) => Err(StoreError::Conflict),
            Ok(2) => Ok(()),
            Ok(3) => {
                self.inner.evicted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Ok(4) => Err(StoreError::SourceQuota),
            Ok(_) => Err(unavailable("an admission script answered out of range")),
            Err(e) => Err(e),
        };
        match &outcome {
            Ok(()) => self.inner.refusals.full.clear(),
            Err(StoreError::Full) => self.inner.refusals.full.note(self.millis()),
            Err(StoreError::SourceQuota) => {
                if let Some(source) = source {
                    self.inner.quota_refusals.note(source, self.millis());
                }
            }
            Err(_) => {}
        }
        outcome
    }

    /// The TTL of the mark of a binding that lives for `ttl`.
    fn mark_millis(&self, ttl: Duration) -> u64 {
        ttl_millis(self.inner.mark_ttl).max(ttl_millis(ttl))
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }
}

fn unavailable(why: &(impl fmt::Display + ?Sized)) -> StoreError {
    StoreError::Unavailable(why.to_string().into())
}

impl Store for RedisStore {
    async fn insert_pending(
        &self,
        key: &StoreKey,
        record: PendingAuthorization,
        ttl: Duration,
        source: Option<Source>,
    ) -> Result<(), StoreError> {
        let keys = &self.inner.keys;
        let counted = source.zip(self.inner.quota);
        let mut invocation = self.inner.insert_pending.prepare_invoke();
        invocation
            .key(keys.record('p', key))
            .key(&keys.pending_index)
            .key(&keys.binding_index)
            .key(keys.source_note(key));
        match counted {
            Some((source, _)) => invocation.key(keys.source_set(source)),
            // Never read: the script touches the source's keys only with a
            // quota.
            None => invocation.key(format!("{}:src:", keys.tag)),
        };
        invocation
            .arg(encode_pending(&record))
            .arg(ttl_millis(ttl))
            .arg(self.inner.capacity)
            .arg(member(key))
            .arg(&keys.tag)
            .arg(counted.map_or(-1, |(_, quota)| i64::try_from(quota).unwrap_or(i64::MAX)));
        self.admit(invocation, source).await
    }

    async fn get_pending(
        &self,
        key: &StoreKey,
    ) -> Result<Option<PendingAuthorization>, StoreError> {
        let mut connection = self.connection();
        let value: Option<Vec<u8>> = self
            .bounded(connection.get(self.inner.keys.record('p', key)))
            .await?;
        value.map(|bytes| decode_pending(&bytes)).transpose()
    }

    async fn take_pending(
        &self,
        key: &StoreKey,
    ) -> Result<Option<PendingAuthorization>, StoreError> {
        let mut connection = self.connection();
        let value: Option<Vec<u8>> = self
            .bounded(
                self.inner
                    .take_pending
                    .key(self.inner.keys.record('p', key))
                    .key(&self.inner.keys.pending_index)
                    .key(self.inner.keys.source_note(key))
                    .arg(member(key))
                    .invoke_async(&mut connection),
            )
            .await?;
        value.map(|bytes| decode_pending(&bytes)).transpose()
    }

    async fn insert_binding(
        &self,
        key: &StoreKey,
        binding: CodeBinding,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut connection = self.connection();
        let written: i64 = self
            .bounded(
                self.inner
                    .insert_binding
                    .key(self.inner.keys.record('c', key))
                    .key(self.inner.keys.record('b', key))
                    .key(&self.inner.keys.pending_index)
                    .key(&self.inner.keys.binding_index)
                    .arg(encode_binding(&binding).as_slice())
                    .arg(ttl_millis(ttl))
                    .arg(member(key))
                    .arg(self.mark_millis(ttl))
                    .arg(self.inner.capacity)
                    .arg(&self.inner.keys.tag)
                    .invoke_async(&mut connection),
            )
            .await?;
        match written {
            0 => Err(StoreError::Conflict),
            2 => {
                self.inner.evicted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn admit_binding(
        &self,
        key: &StoreKey,
        binding: CodeBinding,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let keys = &self.inner.keys;
        let mut invocation = self.inner.admit_binding.prepare_invoke();
        invocation
            .key(keys.record('c', key))
            .key(keys.record('b', key))
            .key(&keys.pending_index)
            .key(&keys.binding_index)
            .arg(encode_binding(&binding))
            .arg(ttl_millis(ttl))
            .arg(self.inner.capacity)
            .arg(member(key))
            .arg(self.mark_millis(ttl))
            .arg(&keys.tag);
        self.admit(invocation, None).await
    }

    /// Refuses without asking Redis while this replica saw `source`
    /// refused for its quota within the last second, and refuses anything
    /// for a second after an operation failed or an admission found the
    /// store full (with nothing to evict), so that neither a source at its
    /// quota, nor a Redis that is away or full, lets new authorizations
    /// reach the upstream only to be refused after its answer. Only what
    /// this replica saw counts: a source at its quota through another
    /// replica is refused by the insert, after the upstream's answer.
    fn admission_hint(&self, source: Option<Source>) -> Result<(), StoreError> {
        let now = self.millis();
        if source.is_some_and(|source| self.inner.quota_refusals.refused_lately(source, now)) {
            return Err(StoreError::SourceQuota);
        }
        self.inner.refusals.check(now)
    }

    /// This replica's share: the pending records its own admissions
    /// evicted, and the distinct sources it refused for their quota within
    /// the last minute (at most 4,096 of them). Summed
    /// over replicas, the evictions are the store's; the sources may be
    /// counted by several replicas each.
    fn pressure(&self) -> StorePressure {
        StorePressure {
            evicted: self.inner.evicted.load(Ordering::Relaxed),
            sources_at_quota: self.inner.quota_refusals.recent(self.millis()),
        }
    }

    async fn redeem(&self, key: &StoreKey) -> Result<Redemption, StoreError> {
        let mut connection = self.connection();
        let answer: redis::Value = self
            .bounded(
                self.inner
                    .redeem
                    .key(self.inner.keys.record('b', key))
                    .key(self.inner.keys.record('c', key))
                    .invoke_async(&mut connection),
            )
            .await?;
        redemption(answer)
    }

    async fn restore(&self, key: &StoreKey, binding: CodeBinding) -> Result<(), StoreError> {
        let mut connection = self.connection();
        let _left: i64 = self
            .bounded(
                self.inner
                    .restore
                    .key(self.inner.keys.record('c', key))
                    .key(self.inner.keys.record('b', key))
                    .arg(encode_binding(&binding).as_slice())
                    .invoke_async(&mut connection),
            )
            .await?;
        Ok(())
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let mut connection = self.connection();
        let (pending, bindings): (u64, u64) = self
            .bounded(
                self.inner
                    .stats
                    .key(&self.inner.keys.pending_index)
                    .key(&self.inner.keys.binding_index)
                    .invoke_async(&mut connection),
            )
            .await?;
        Ok(StoreStats {
            pending,
            bindings,
            marks: None,
        })
    }
}

#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing;

#[cfg(test)]
mod tests;
