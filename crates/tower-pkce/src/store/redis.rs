//! The Redis store: records shared by every replica that points at the same
//! Redis, with expiry left to Redis.
//!
//! # Layout
//!
//! Every key starts with the prefix in braces (a Redis Cluster hash tag), so
//! that all of a store's keys live in one slot and the scripts below may
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

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};

use super::{
    Challenge, CodeBinding, DEFAULT_MARK_TTL, PendingAuthorization, Redemption, Store, StoreError,
    StoreKey, StorePressure, StoreStats,
};
use crate::Source;
use crate::pkce::ChallengeMethod;

/// The default number of live records (both families together).
pub const DEFAULT_REDIS_CAPACITY: usize = 1_000_000;
/// The default bound on each Redis operation.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_secs(1);
/// The default key prefix.
pub const DEFAULT_REDIS_PREFIX: &str = "pkce";

/// Lua shared by the admission scripts: `NOW` (Redis's clock in ms),
/// `OLDEST` (the pending record that expires first among the live ones, or
/// nil) and `EVICT` (removes a pending record with its index entry, its
/// source entry and its source note).
///
/// `EVICT` touches keys it computes from the tag (`ARGV` holds it) rather
/// than keys given in `KEYS`: Redis allows this, and they share the
/// store's hash tag, so they live in the scripts' own slot, but Redis
/// Cluster does not promise to allow it. The store targets one primary.
macro_rules! lua_helpers {
    () => {
        r"
local function NOW()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function OLDEST(index, now)
  return redis.call('ZRANGEBYSCORE', index, '(' .. now, '+inf', 'LIMIT', 0, 1)[1]
end
local function EVICT(tag, index, member, now)
  local note = tag .. ':ps:' .. member
  local source = redis.call('GET', note)
  if source then
    redis.call('ZREM', source, member)
    redis.call('ZREMRANGEBYSCORE', source, '-inf', now)
    redis.call('DEL', note)
  end
  redis.call('DEL', tag .. ':p:' .. member)
  redis.call('ZREM', index, member)
end
"
    };
}

/// Admits a pending authorization under its source's quota and the
/// capacity bound, evicting the pending record that expires first (the
/// oldest, as every pending record has the same TTL) when the store is
/// full. Bindings are never evicted.
///
/// Everything is read before anything is written: Redis checks `maxmemory`
/// only before a script's first write, so the record itself must be that
/// write, or a full Redis would admit new authorizations while refusing the
/// bindings of flows in progress.
///
/// With a quota, the source's set holds its pending records by expiry, and
/// the note `{tag}:ps:K` names that set, with the record's TTL, so that
/// taking or evicting the record releases its count; a record that simply
/// expires leaves a set entry that the next prune drops.
///
/// KEYS: pending key, pending index, binding index, source note, source
/// set (the last two unused without a quota).
/// ARGV: record, TTL in ms, capacity, index member, tag, quota (negative:
/// none).
/// Returns 0 when full, 1 when the key is taken, 2 when written, 3 when
/// written after evicting a pending record, 4 when the source holds its
/// quota.
const INSERT_PENDING: &str = concat!(
    lua_helpers!(),
    r"
local now = NOW()
local ttl = tonumber(ARGV[2])
local quota = tonumber(ARGV[6])
if quota >= 0 and redis.call('ZCOUNT', KEYS[5], '(' .. now, '+inf') >= quota then
  return 4
end
local live = redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf')
  + redis.call('ZCOUNT', KEYS[3], '(' .. now, '+inf')
local victim = nil
if live >= tonumber(ARGV[3]) then
  victim = OLDEST(KEYS[2], now)
  if not victim then
    return 0
  end
end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ttl) then
  return 1
end
if victim then
  EVICT(ARGV[5], KEYS[2], victim, now)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[4])
if quota >= 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
  redis.call('ZADD', KEYS[5], now + ttl, ARGV[4])
  if redis.call('PTTL', KEYS[5]) < ttl then
    redis.call('PEXPIRE', KEYS[5], ttl)
  end
  redis.call('SET', KEYS[4], KEYS[5], 'PX', ttl)
end
if victim then
  return 3
end
return 2
"
);

/// Binds a code unless its mark lives. A binding is admitted even at the
/// capacity bound (it replaces the pending record it came from), but when
/// another record took that room meanwhile it evicts a pending record, if
/// there is one, to stay within the bound.
///
/// KEYS: mark key, binding key, pending index, binding index.
/// ARGV: record, TTL in ms, member, mark TTL in ms (not below the TTL),
/// capacity, tag.
/// Returns 0 when the code was bound already, 1 when written, 2 when
/// written after evicting a pending record.
const INSERT_BINDING: &str = concat!(
    lua_helpers!(),
    r"
local now = NOW()
local expires = now + tonumber(ARGV[2])
local victim = nil
if redis.call('ZCOUNT', KEYS[3], '(' .. now, '+inf')
    + redis.call('ZCOUNT', KEYS[4], '(' .. now, '+inf') >= tonumber(ARGV[5]) then
  victim = OLDEST(KEYS[3], now)
end
if not redis.call('SET', KEYS[1], string.format('b%d', expires), 'NX', 'PX', ARGV[4]) then
  return 0
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[4], expires, ARGV[3])
if victim then
  EVICT(ARGV[6], KEYS[3], victim, now)
  return 2
end
return 1
"
);

/// Binds a code under the capacity bound, for an authorization that holds
/// no room yet (see [`Store::admit_binding`]), evicting a pending record
/// when the store is full. As in `INSERT_PENDING`, everything is read
/// before anything is written, and the mark is the first write.
///
/// KEYS: mark key, binding key, pending index, binding index.
/// ARGV: record, TTL in ms, capacity, index member, mark TTL in ms (not
/// below the TTL), tag.
/// Returns 0 when full, 1 when the code was bound already, 2 when written,
/// 3 when written after evicting a pending record.
const ADMIT_BINDING: &str = concat!(
    lua_helpers!(),
    r"
local now = NOW()
local live = redis.call('ZCOUNT', KEYS[3], '(' .. now, '+inf')
  + redis.call('ZCOUNT', KEYS[4], '(' .. now, '+inf')
local victim = nil
if live >= tonumber(ARGV[3]) then
  victim = OLDEST(KEYS[3], now)
  if not victim then
    return 0
  end
end
local expires = now + tonumber(ARGV[2])
if not redis.call('SET', KEYS[1], string.format('b%d', expires), 'NX', 'PX', ARGV[5]) then
  return 1
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
if victim then
  EVICT(ARGV[6], KEYS[3], victim, now)
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
redis.call('ZADD', KEYS[4], expires, ARGV[4])
if victim then
  return 3
end
return 2
"
);

/// Takes a pending record, with its index entry and, when its source was
/// counted, its source entry and note; the source set is pruned, so that
/// it goes with its last live record. The set is named by the note, not
/// given in `KEYS` (see `lua_helpers`).
///
/// KEYS: pending key, pending index, source note. ARGV: index member.
/// Returns the record, or nil.
const TAKE_PENDING: &str = r"
local record = redis.call('GETDEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local source = redis.call('GET', KEYS[3])
if source then
  local t = redis.call('TIME')
  redis.call('ZREM', source, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', source, '-inf',
    tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  redis.call('DEL', KEYS[3])
end
return record
";

/// Redeems a code: takes its live binding and marks it spent, or says what
/// its mark remembers. `GETDEL` comes first: as a write, it lets the mark's
/// rewrite through on a Redis past `maxmemory`.
///
/// KEYS: binding key, mark key.
/// Returns the record when the binding was live; otherwise 0 when there is
/// no mark, 1 when the code was spent, 2 when its binding expired.
const REDEEM: &str = r"
local record = redis.call('GETDEL', KEYS[1])
local mark = redis.call('GET', KEYS[2])
if record then
  if mark then
    redis.call('SET', KEYS[2], 's' .. string.sub(mark, 2), 'KEEPTTL')
  end
  return record
end
if not mark then
  return 0
end
if string.sub(mark, 1, 1) == 'b' then
  return 2
end
return 1
";

/// Makes a spent binding live again until the binding's own expiry, read
/// from the mark, and marks it bound again. Does nothing when the code is
/// not spent or that expiry has passed. A mark of the earlier form (`1`,
/// spent as `s` alone) lived exactly as long as its binding: its TTL is
/// what the binding has left.
///
/// KEYS: mark key, binding key. ARGV: record.
/// Returns the binding's remaining lifetime in ms, or 0.
const RESTORE: &str = r"
local mark = redis.call('GET', KEYS[1])
if not mark or string.sub(mark, 1, 1) ~= 's' then
  return 0
end
local expires = string.sub(mark, 2)
local left
if expires == '' then
  left = redis.call('PTTL', KEYS[1])
else
  expires = tonumber(expires)
  if not expires then
    return 0
  end
  local t = redis.call('TIME')
  left = expires - (tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
end
if left <= 0 then
  return 0
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', left)
redis.call('SET', KEYS[1], 'b' .. string.sub(mark, 2), 'KEEPTTL')
return left
";

/// Prunes the indexes and counts them. KEYS: pending index, binding index.
const STATS: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
return { redis.call('ZCARD', KEYS[1]), redis.call('ZCARD', KEYS[2]) }
";

/// A [`Store`] in Redis, shared by every replica that points at the same
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

/// Settings for a [`RedisStore`].
#[derive(Clone)]
#[must_use]
pub struct RedisStoreBuilder {
    url: String,
    prefix: String,
    capacity: usize,
    max_pending_per_source: Option<usize>,
    mark_ttl: Duration,
    timeout: Duration,
    tls: Option<RedisTls>,
}

/// What a `rediss://` store trusts and presents: PEM text, as read from the
/// files an operator gives. Without any, the system's authorities are
/// trusted and no client certificate is sent.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_pkce::store::{RedisStore, RedisTls};
///
/// let tls = RedisTls::new()
///     .root_certificates(std::fs::read("/etc/pkce/redis-ca.pem")?)
///     .client_identity(
///         std::fs::read("/etc/pkce/client.pem")?,
///         std::fs::read("/etc/pkce/client.key")?,
///     );
/// let store = RedisStore::builder("rediss://redis.internal:6380/0")
///     .tls(tls)
///     .build()?;
/// # let _ = store;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
#[must_use]
pub struct RedisTls {
    root_certificates: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTls")
            .field(
                "root_certificates",
                &if self.root_certificates.is_some() {
                    "given"
                } else {
                    "the system's"
                },
            )
            .field(
                "client_key",
                &if self.client.is_some() {
                    "[redacted]"
                } else {
                    "none"
                },
            )
            .finish()
    }
}

impl RedisTls {
    /// The system's authorities, and no client certificate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts the authorities in this PEM bundle (one or more
    /// `CERTIFICATE` items) instead of the system's.
    pub fn root_certificates(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_certificates = Some(pem.into());
        self
    }

    /// Presents this certificate chain (PEM, leaf first) and its private key
    /// (PEM: PKCS#8, PKCS#1 or SEC1) to a Redis that asks for one.
    pub fn client_identity(
        mut self,
        certificate_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.client = Some((certificate_pem.into(), key_pem.into()));
        self
    }

    /// The PEM text for the Redis client, checked to hold what it should:
    /// the client reads no certificate from text that is not PEM, and would
    /// then trust no one, or present nothing, without a word.
    fn certificates(self) -> Result<redis::TlsCertificates, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let has_certificates = |pem: &[u8], what: &str| match CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(certs) if !certs.is_empty() => Ok(()),
            Ok(_) => Err(format!("the {what} hold no CERTIFICATE")),
            Err(_) => Err(format!("the {what} are not valid PEM")),
        };
        if let Some(roots) = &self.root_certificates {
            has_certificates(roots, "root certificates")?;
        }
        if let Some((cert, key)) = &self.client {
            has_certificates(cert, "client certificates")?;
            // The error could quote the key: it is not repeated.
            PrivateKeyDer::from_pem_slice(key)
                .map_err(|_| "the client key holds no usable PRIVATE KEY".to_owned())?;
        }
        Ok(redis::TlsCertificates {
            client_tls: self
                .client
                .map(|(client_cert, client_key)| redis::ClientTlsConfig {
                    client_cert,
                    client_key,
                }),
            root_cert: self.root_certificates,
        })
    }
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a password.
        f.debug_struct("RedisStoreBuilder")
            .field("url", &"[redacted]")
            .field("prefix", &self.prefix)
            .field("capacity", &self.capacity)
            .field("max_pending_per_source", &self.max_pending_per_source)
            .field("mark_ttl", &self.mark_ttl)
            .field("timeout", &self.timeout)
            .field("tls", &self.tls)
            .finish()
    }
}

impl RedisStoreBuilder {
    /// The prefix of every key [default: `pkce`]. Replicas that share
    /// records must share the prefix; different deployments on one Redis
    /// must not.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The most live records, both families together [default: 1,000,000].
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// The most pending authorizations one [`Source`] may hold at once,
    /// counted in Redis across every replica of the prefix. Default: none,
    /// no quota.
    ///
    /// Past it, that source's new authorizations are refused with
    /// [`StoreError::SourceQuota`] (the layer answers 429) until one of its
    /// records is taken, expires or is evicted; other sources carry on.
    /// Authorizations without a source count against no quota, and without
    /// a quota sources are not recorded at all. Replicas of one prefix
    /// should share the setting: each checks its own quota against the
    /// shared count, and a record written without one is not counted.
    ///
    /// Set it well above the sign-ins that the busiest shared address (a
    /// corporate NAT) has in progress at once, and well below the
    /// capacity. A quota of 0 refuses every authorization that has a
    /// source.
    pub fn max_pending_per_source(mut self, quota: usize) -> Self {
        self.max_pending_per_source = Some(quota);
        self
    }

    /// How long Redis keeps the mark that a code was bound, counted from
    /// its binding; a mark never ends before its binding would have
    /// [default: [`DEFAULT_MARK_TTL`], one hour]. While it lives, the code
    /// cannot be bound again and a token request for it is refused as
    /// spent or expired, rather than read as a code never bound (which
    /// optional mode forwards without a verifier). Marks hold no room under
    /// the capacity; each is a small key with a TTL, so plan Redis's
    /// `maxmemory` for the codes bound within one mark lifetime.
    pub fn mark_ttl(mut self, ttl: Duration) -> Self {
        self.mark_ttl = ttl;
        self
    }

    /// The bound on each operation, connecting included [default: 1 s].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The authorities to trust and the client certificate to present, for
    /// a `rediss://` URL [default: the system's authorities, no client
    /// certificate].
    pub fn tls(mut self, tls: RedisTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Makes the store. It connects lazily: a Redis that is down now makes
    /// operations fail with [`StoreError::Unavailable`] until it is up.
    ///
    /// For a `rediss://` URL, when the process has no default rustls
    /// [`CryptoProvider`](rustls::crypto::CryptoProvider) yet, this installs
    /// `ring`'s: the Redis client takes the process's.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] when the URL is not a Redis URL, the
    /// prefix holds `{` or `}`, [`tls`](Self::tls) was given for a URL that
    /// is not `rediss://`, its PEM text holds no certificate or key, or
    /// there is no Tokio runtime to run the connection on.
    pub fn build(self) -> Result<RedisStore, StoreError> {
        check_settings(&self.url, &self.prefix).map_err(|e| unavailable(&e))?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(unavailable(
                "a RedisStore must be built inside a Tokio runtime",
            ));
        }
        let client = redis::Client::open(self.url.as_str()).map_err(|e| unavailable(&e))?;
        let client = match (self.tls, is_tls(&client)) {
            (None, false) => client,
            (Some(_), false) => {
                return Err(unavailable(
                    "TLS settings were given for a Redis URL that is not rediss://",
                ));
            }
            (tls, true) => {
                with_crypto_provider();
                let certificates = tls
                    .unwrap_or_default()
                    .certificates()
                    .map_err(|e| unavailable(&e))?;
                redis::Client::build_with_tls(client.get_connection_info().clone(), certificates)
                    .map_err(|e| unavailable(&e))?
            }
        };
        let connection = connect(&client, self.timeout)?;
        Ok(RedisStore {
            inner: Arc::new(Inner {
                client,
                connection: RwLock::new(connection),
                failures: AtomicU32::new(0),
                renewed: Mutex::new(Instant::now()),
                refusals: Refusals::default(),
                quota_refusals: QuotaRefusals::default(),
                evicted: AtomicU64::new(0),
                epoch: Instant::now(),
                keys: Keys::new(&self.prefix),
                capacity: self.capacity,
                quota: self.max_pending_per_source,
                mark_ttl: self.mark_ttl,
                timeout: self.timeout,
                insert_pending: Script::new(INSERT_PENDING),
                insert_binding: Script::new(INSERT_BINDING),
                admit_binding: Script::new(ADMIT_BINDING),
                take_pending: Script::new(TAKE_PENDING),
                redeem: Script::new(REDEEM),
                restore: Script::new(RESTORE),
                stats: Script::new(STATS),
            }),
        })
    }
}

/// Checks a Redis URL and key prefix without connecting, so that a proxy can
/// refuse bad settings before it binds a port.
///
/// # Errors
///
/// A message saying what is wrong; it never repeats the URL, which may hold
/// a password.
pub fn check_settings(url: &str, prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.contains(['{', '}']) {
        return Err("the key prefix must be non-empty and hold no '{' or '}'".to_owned());
    }
    let client = redis::Client::open(url).map_err(|_| {
        "not a Redis URL: use redis[s]://[user:password@]host[:port][/db]".to_owned()
    })?;
    if let redis::ConnectionAddr::TcpTls { insecure: true, .. } =
        client.get_connection_info().addr()
    {
        return Err(
            "a rediss:// URL with #insecure, which checks no certificate, is refused: \
             give the authority that signed Redis's certificate instead"
                .to_owned(),
        );
    }
    Ok(())
}

fn is_tls(client: &redis::Client) -> bool {
    matches!(
        client.get_connection_info().addr(),
        redis::ConnectionAddr::TcpTls { .. }
    )
}

/// Makes sure the process has a default rustls provider. The Redis client
/// builds its TLS settings with the process's default, which rustls picks by
/// itself only when exactly one provider is compiled in, and panics without.
fn with_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err means another thread installed one first: as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

impl RedisStore {
    /// A builder for a store at `url`: `redis://[user:password@]host:port/db`,
    /// or `rediss://...` for TLS (see [`RedisStoreBuilder::tls`]).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            prefix: DEFAULT_REDIS_PREFIX.to_owned(),
            capacity: DEFAULT_REDIS_CAPACITY,
            max_pending_per_source: None,
            mark_ttl: DEFAULT_MARK_TTL,
            timeout: DEFAULT_REDIS_TIMEOUT,
            tls: None,
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

    async fn bounded<T>(
        &self,
        op: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let outcome = match tokio::time::timeout(self.inner.timeout, op).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) if is_out_of_memory(&e) => Err(StoreError::Full),
            Ok(Err(e)) => Err(StoreError::Unavailable(Box::new(e))),
            Err(_) => Err(unavailable(&format_args!(
                "no answer from Redis within {:?}",
                self.inner.timeout
            ))),
        };
        match &outcome {
            Err(StoreError::Unavailable(_)) => {
                self.inner.refusals.failed.note(self.millis());
                self.failed();
            }
            _ => {
                if self.inner.failures.load(Ordering::Relaxed) != 0 {
                    self.inner.failures.store(0, Ordering::Relaxed);
                }
                self.inner.refusals.failed.clear();
            }
        }
        outcome
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

    /// The shared connection.
    fn connection(&self) -> ConnectionManager {
        match self.inner.connection.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Counts a failure, and replaces the connection after several in a
    /// row. The connection manager remakes its connection after I/O errors
    /// only; a failure while connecting (a rotated password, a full client
    /// table) or a primary demoted to a read-only replica would otherwise
    /// keep every operation failing until the process restarts.
    fn failed(&self) {
        let failures = self.inner.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < FAILURES_BEFORE_RENEWAL {
            return;
        }
        let Ok(mut renewed) = self.inner.renewed.try_lock() else {
            return;
        };
        if renewed.elapsed() < RENEWAL_PERIOD {
            return;
        }
        if let Ok(fresh) = connect(&self.inner.client, self.inner.timeout) {
            match self.inner.connection.write() {
                Ok(mut guard) => *guard = fresh,
                Err(poisoned) => *poisoned.into_inner() = fresh,
            }
            tracing::warn!(failures, "Redis keeps failing; connecting afresh");
        }
        *renewed = Instant::now();
        self.inner.failures.store(0, Ordering::Relaxed);
    }
}

/// A lazy connection: it is made on first use, and remade in the background
/// after I/O errors.
fn connect(client: &redis::Client, timeout: Duration) -> Result<ConnectionManager, StoreError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(|e| unavailable(&e))
}

/// After this many failures in a row the connection is replaced.
const FAILURES_BEFORE_RENEWAL: u32 = 3;
/// And at most this often.
const RENEWAL_PERIOD: Duration = Duration::from_secs(1);
/// How long new authorizations are refused without asking Redis after an
/// operation failed or an admission found the store full.
const HINT_WINDOW_MILLIS: u64 = 1000;

/// What recent operations told of Redis, for [`Store::admission_hint`]:
/// that it failed, or that it was full.
#[derive(Debug, Default)]
struct Refusals {
    failed: Refusal,
    full: Refusal,
}

impl Refusals {
    fn check(&self, now: u64) -> Result<(), StoreError> {
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
struct Refusal(AtomicU64);

impl Refusal {
    fn note(&self, now: u64) {
        self.0.store(now.saturating_add(1), Ordering::Relaxed);
    }

    fn clear(&self) {
        if self.0.load(Ordering::Relaxed) != 0 {
            self.0.store(0, Ordering::Relaxed);
        }
    }

    fn admits(&self, now: u64) -> bool {
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
const QUOTA_HINT_MILLIS: u64 = 1000;
/// How long a source refused for its quota counts in
/// [`Store::pressure`].
const QUOTA_SEEN_MILLIS: u64 = 60_000;
/// The most sources a replica remembers refusing for their quota. Past it,
/// sources refused anew are not remembered until older ones lapse: the
/// hint lets their requests ask Redis, which refuses them.
const QUOTA_REFUSALS_KEPT: usize = 4096;

/// The sources this replica refused for their quota, and when it last did,
/// in milliseconds after the store was made.
#[derive(Debug, Default)]
struct QuotaRefusals {
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

    fn note(&self, source: Source, now: u64) {
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

    fn refused_lately(&self, source: Source, now: u64) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        self.seen()
            .get(&source)
            .is_some_and(|at| now.saturating_sub(*at) < QUOTA_HINT_MILLIS)
    }

    /// The sources refused within the last minute; forgets older ones.
    fn recent(&self, now: u64) -> u64 {
        let mut seen = self.seen();
        seen.retain(|_, at| now.saturating_sub(*at) < QUOTA_SEEN_MILLIS);
        if seen.is_empty() {
            self.any.store(false, Ordering::Release);
        }
        seen.len() as u64
    }
}

fn is_out_of_memory(e: &redis::RedisError) -> bool {
    e.code() == Some("OOM")
}

fn unavailable(why: &(impl fmt::Display + ?Sized)) -> StoreError {
    StoreError::Unavailable(why.to_string().into())
}

/// The key names of one prefix.
#[derive(Clone)]
struct Keys {
    tag: String,
    pending_index: String,
    binding_index: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        let tag = format!("{{{prefix}}}");
        Self {
            pending_index: format!("{tag}:n:p"),
            binding_index: format!("{tag}:n:b"),
            tag,
        }
    }

    /// The key of record `key` in family `family` (`p`, `b` or `c`).
    fn record(&self, family: char, key: &StoreKey) -> String {
        let mut name = String::with_capacity(self.tag.len() + 35);
        name.push_str(&self.tag);
        name.push(':');
        name.push(family);
        name.push(':');
        name.push_str(&member(key));
        name
    }

    /// The note naming the source set of pending record `key`.
    fn source_note(&self, key: &StoreKey) -> String {
        format!("{}:ps:{}", self.tag, member(key))
    }

    /// The set of the pending records of `source`, by expiry.
    fn source_set(&self, source: Source) -> String {
        format!("{}:src:{source}", self.tag)
    }
}

/// A record key's name in an index: 32 lowercase hex digits.
fn member(key: &StoreKey) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(32);
    for &b in key.as_bytes() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    out
}

fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
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

/// Reads the answer of the `REDEEM` script.
fn redemption(answer: redis::Value) -> Result<Redemption, StoreError> {
    match answer {
        redis::Value::BulkString(bytes) => decode_binding(&bytes).map(Redemption::Redeemed),
        redis::Value::Int(0) => Ok(Redemption::Missing),
        redis::Value::Int(1) => Ok(Redemption::Spent),
        redis::Value::Int(2) => Ok(Redemption::Expired),
        _ => Err(corrupt()),
    }
}

// Records are written in a small binary form, versioned by its first byte.
const FORMAT: u8 = 1;
const HAS_CHALLENGE: u8 = 1;
const HAS_REDIRECT_URI: u8 = 2;
const HAS_STATE: u8 = 4;

fn method_byte(method: ChallengeMethod) -> u8 {
    match method {
        ChallengeMethod::S256 => 1,
        ChallengeMethod::Plain => 2,
    }
}

/// Writes the fields a pending authorization and a binding share.
fn encode_common(
    out: &mut Vec<u8>,
    challenge: Option<Challenge>,
    client: &[u8; 16],
    redirect_uri: Option<&[u8; 16]>,
    state: bool,
) {
    let mut flags = 0;
    if challenge.is_some() {
        flags |= HAS_CHALLENGE;
    }
    if redirect_uri.is_some() {
        flags |= HAS_REDIRECT_URI;
    }
    if state {
        flags |= HAS_STATE;
    }
    out.extend_from_slice(&[FORMAT, flags]);
    if let Some(challenge) = challenge {
        out.push(method_byte(challenge.method));
        out.extend_from_slice(&challenge.digest);
    }
    out.extend_from_slice(client);
    if let Some(uri) = redirect_uri {
        out.extend_from_slice(uri);
    }
}

fn encode_pending(record: &PendingAuthorization) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + 33 + 32 + record.state.as_ref().map_or(0, |s| s.len()));
    encode_common(
        &mut out,
        record.challenge,
        &record.client,
        record.redirect_uri.as_ref(),
        record.state.is_some(),
    );
    if let Some(state) = &record.state {
        out.extend_from_slice(state.as_bytes());
    }
    out
}

fn encode_binding(binding: &CodeBinding) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + 33 + 32 + 1);
    encode_common(
        &mut out,
        binding.challenge,
        &binding.client,
        binding.redirect_uri.as_ref(),
        false,
    );
    out.push(binding.failures);
    out
}

/// The shared fields as read back, and the bytes after them.
struct Common<'a> {
    challenge: Option<Challenge>,
    client: [u8; 16],
    redirect_uri: Option<[u8; 16]>,
    has_state: bool,
    rest: &'a [u8],
}

fn corrupt() -> StoreError {
    unavailable("a record in Redis is not in the expected form")
}

fn take<const N: usize>(bytes: &mut &[u8]) -> Result<[u8; N], StoreError> {
    let (head, tail) = bytes.split_first_chunk::<N>().ok_or_else(corrupt)?;
    *bytes = tail;
    Ok(*head)
}

fn decode_common(mut bytes: &[u8]) -> Result<Common<'_>, StoreError> {
    let [format, flags] = take::<2>(&mut bytes)?;
    if format != FORMAT || flags & !(HAS_CHALLENGE | HAS_REDIRECT_URI | HAS_STATE) != 0 {
        return Err(corrupt());
    }
    let challenge = if flags & HAS_CHALLENGE != 0 {
        let [method] = take::<1>(&mut bytes)?;
        let method = match method {
            1 => ChallengeMethod::S256,
            2 => ChallengeMethod::Plain,
            _ => return Err(corrupt()),
        };
        Some(Challenge {
            method,
            digest: take::<32>(&mut bytes)?,
        })
    } else {
        None
    };
    let client = take::<16>(&mut bytes)?;
    let redirect_uri = if flags & HAS_REDIRECT_URI != 0 {
        Some(take::<16>(&mut bytes)?)
    } else {
        None
    };
    Ok(Common {
        challenge,
        client,
        redirect_uri,
        has_state: flags & HAS_STATE != 0,
        rest: bytes,
    })
}

fn decode_pending(bytes: &[u8]) -> Result<PendingAuthorization, StoreError> {
    let common = decode_common(bytes)?;
    let state = if common.has_state {
        let text = std::str::from_utf8(common.rest).map_err(|_| corrupt())?;
        Some(Box::from(text))
    } else if common.rest.is_empty() {
        None
    } else {
        return Err(corrupt());
    };
    Ok(PendingAuthorization {
        challenge: common.challenge,
        client: common.client,
        redirect_uri: common.redirect_uri,
        state,
    })
}

fn decode_binding(bytes: &[u8]) -> Result<CodeBinding, StoreError> {
    let common = decode_common(bytes)?;
    match (common.has_state, common.rest) {
        (false, &[failures]) => Ok(CodeBinding {
            challenge: common.challenge,
            client: common.client,
            redirect_uri: common.redirect_uri,
            failures,
        }),
        _ => Err(corrupt()),
    }
}

#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::store::fingerprint;

    fn pending(state: Option<&str>, challenge: bool, redirect: bool) -> PendingAuthorization {
        PendingAuthorization {
            challenge: challenge.then_some(Challenge {
                method: ChallengeMethod::Plain,
                digest: [9; 32],
            }),
            client: fingerprint("client"),
            redirect_uri: redirect.then(|| fingerprint("https://c.example/cb")),
            state: state.map(Box::from),
        }
    }

    #[test]
    fn a_refusal_holds_for_its_window_then_lets_one_request_ask() {
        let refusal = Refusal::default();
        assert!(refusal.admits(0));
        refusal.note(5_000);
        assert!(!refusal.admits(5_000));
        assert!(!refusal.admits(5_000 + HINT_WINDOW_MILLIS - 1));
        // The window lapsed: the first request asks Redis, the next ones
        // wait for its answer.
        assert!(refusal.admits(5_000 + HINT_WINDOW_MILLIS));
        assert!(!refusal.admits(5_000 + HINT_WINDOW_MILLIS));
        assert!(!refusal.admits(5_000 + 2 * HINT_WINDOW_MILLIS - 1));
        // Its answer was lost: the next window lets another ask.
        assert!(refusal.admits(5_000 + 2 * HINT_WINDOW_MILLIS));
        // A success clears the refusal at once.
        refusal.clear();
        assert!(refusal.admits(5_000 + 2 * HINT_WINDOW_MILLIS));
        assert!(refusal.admits(5_000 + 2 * HINT_WINDOW_MILLIS));
    }

    #[test]
    fn refusals_name_what_refused() {
        let refusals = Refusals::default();
        assert!(refusals.check(0).is_ok());
        refusals.full.note(10);
        assert!(matches!(refusals.check(20), Err(StoreError::Full)));
        refusals.failed.note(30);
        assert!(matches!(
            refusals.check(40),
            Err(StoreError::Unavailable(_))
        ));
        refusals.failed.clear();
        refusals.full.clear();
        assert!(refusals.check(50).is_ok());
    }

    #[test]
    fn records_round_trip() {
        for state in [None, Some(""), Some("xyz &=é")] {
            for challenge in [false, true] {
                for redirect in [false, true] {
                    let record = pending(state, challenge, redirect);
                    let bytes = encode_pending(&record);
                    assert_eq!(decode_pending(&bytes).unwrap(), record);
                    let binding = CodeBinding {
                        failures: 3,
                        ..record.binding()
                    };
                    assert_eq!(decode_binding(&encode_binding(&binding)).unwrap(), binding);
                }
            }
        }
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        let good = encode_binding(&pending(None, true, true).binding());
        for len in 0..good.len() {
            assert!(decode_binding(&good[..len]).is_err(), "prefix of {len}");
        }
        let mut extra = good.clone();
        extra.push(0);
        assert!(decode_binding(&extra).is_err());
        let mut bad_method = good;
        bad_method[2] = 9;
        assert!(decode_binding(&bad_method).is_err());
        assert!(decode_pending(&[2, 0]).is_err());
        assert!(decode_pending(&[FORMAT, 64]).is_err());
    }

    #[test]
    fn redemption_answers_are_read_strictly() {
        let binding = pending(None, true, true).binding();
        let record = redis::Value::BulkString(encode_binding(&binding));
        assert_eq!(redemption(record).unwrap(), Redemption::Redeemed(binding));
        assert_eq!(
            redemption(redis::Value::Int(0)).unwrap(),
            Redemption::Missing
        );
        assert_eq!(redemption(redis::Value::Int(1)).unwrap(), Redemption::Spent);
        assert_eq!(
            redemption(redis::Value::Int(2)).unwrap(),
            Redemption::Expired
        );
        for odd in [
            redis::Value::Int(3),
            redis::Value::Int(-1),
            redis::Value::Nil,
            redis::Value::Okay,
            redis::Value::BulkString(vec![FORMAT]),
            redis::Value::Array(vec![]),
        ] {
            assert!(redemption(odd).is_err());
        }
    }

    #[test]
    fn keys_share_one_hash_tag() {
        let keys = Keys::new("app");
        let key = StoreKey::from_bytes([0xab; 16]);
        assert_eq!(
            keys.record('b', &key),
            "{app}:b:abababababababababababababababab"
        );
        assert_eq!(keys.pending_index, "{app}:n:p");
        assert_eq!(
            keys.source_note(&key),
            "{app}:ps:abababababababababababababababab"
        );
        let v6 = Source::new("2001:db8:1:2::9".parse().unwrap());
        assert_eq!(keys.source_set(v6), "{app}:src:2001:db8:1:2::/64");
    }

    #[test]
    fn quota_refusals_hint_for_a_second_and_count_for_a_minute() {
        let refusals = QuotaRefusals::default();
        let (a, b) = (
            Source::new([192, 0, 2, 1].into()),
            Source::new([192, 0, 2, 2].into()),
        );
        assert!(!refusals.refused_lately(a, 0));
        assert_eq!(refusals.recent(0), 0);
        refusals.note(a, 1_000);
        assert!(refusals.refused_lately(a, 1_000 + QUOTA_HINT_MILLIS - 1));
        assert!(!refusals.refused_lately(b, 1_000));
        assert!(!refusals.refused_lately(a, 1_000 + QUOTA_HINT_MILLIS));
        assert_eq!(refusals.recent(1_000 + QUOTA_SEEN_MILLIS - 1), 1);
        assert_eq!(refusals.recent(1_000 + QUOTA_SEEN_MILLIS), 0);
        // Bounded: past the bound, new sources are not remembered until
        // older ones lapse.
        for n in 0..QUOTA_REFUSALS_KEPT + 10 {
            let ip = std::net::Ipv4Addr::from(u32::try_from(n).unwrap());
            refusals.note(Source::new(ip.into()), 100_000);
        }
        assert_eq!(refusals.recent(100_000), QUOTA_REFUSALS_KEPT as u64);
        refusals.note(a, 100_000 + QUOTA_SEEN_MILLIS);
        assert!(refusals.refused_lately(a, 100_000 + QUOTA_SEEN_MILLIS));
        assert_eq!(refusals.recent(100_000 + QUOTA_SEEN_MILLIS), 1);
    }

    #[test]
    fn bad_settings_are_refused_without_connecting() {
        assert!(check_settings("redis://127.0.0.1:1/0", "pkce").is_ok());
        assert!(check_settings("http://127.0.0.1/", "pkce").is_err());
        assert!(check_settings("redis://127.0.0.1/0", "a{b").is_err());
        assert!(check_settings("redis://127.0.0.1/0", "").is_err());
        assert!(
            RedisStore::builder("redis://127.0.0.1:1/0")
                .build()
                .is_err()
        );
    }

    #[test]
    fn tls_urls_are_accepted_unless_insecure() {
        assert!(check_settings("rediss://127.0.0.1:1/0", "pkce").is_ok());
        assert!(check_settings("rediss://:pw@redis.internal:6380/2", "pkce").is_ok());
        let insecure = check_settings("rediss://:pw@127.0.0.1:1/0#insecure", "pkce").unwrap_err();
        assert!(insecure.contains("#insecure"), "{insecure}");
        assert!(!insecure.contains("pw"), "{insecure}");
    }

    /// Not PEM, as a file of the wrong kind would be.
    const NOT_PEM: &[u8] = b"secret-looking-bytes";
    const A_CERTIFICATE: &[u8] = b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";

    #[tokio::test]
    async fn tls_settings_are_checked_when_built() {
        let refused = |tls: RedisTls, url: &str| {
            let e = RedisStore::builder(url).tls(tls).build().unwrap_err();
            let text = e.to_string();
            assert!(!text.contains("secret-looking"), "{text}");
            text
        };
        let text = refused(RedisTls::new(), "redis://127.0.0.1:1/0");
        assert!(text.contains("rediss://"), "{text}");
        let text = refused(
            RedisTls::new().root_certificates(NOT_PEM),
            "rediss://127.0.0.1:1/0",
        );
        assert!(text.contains("root certificates"), "{text}");
        let text = refused(
            RedisTls::new().client_identity(A_CERTIFICATE, NOT_PEM),
            "rediss://127.0.0.1:1/0",
        );
        assert!(text.contains("client key"), "{text}");
        let text = refused(
            RedisTls::new().client_identity(NOT_PEM, NOT_PEM),
            "rediss://127.0.0.1:1/0",
        );
        assert!(text.contains("client certificates"), "{text}");
        // The system's authorities: nothing to check before connecting.
        assert!(
            RedisStore::builder("rediss://127.0.0.1:1/0")
                .build()
                .is_ok()
        );
    }

    #[test]
    fn tls_keys_are_not_printed() {
        let key = b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n";
        let builder = RedisStore::builder("rediss://:pw@h/0")
            .tls(RedisTls::new().client_identity(A_CERTIFICATE, key.as_slice()));
        let printed = format!("{builder:?}");
        assert!(printed.contains("[redacted]"), "{printed}");
        for secret in ["c2VjcmV0", "PRIVATE", "pw"] {
            assert!(!printed.contains(secret), "{printed}");
        }
    }
}
