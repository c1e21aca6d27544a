//! The settings of a [`RedisStore`], checked and made into a store.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::Script;

use super::connection::connect;
use super::keys::Keys;
use super::refusals::{QuotaRefusals, Refusals};
use super::scripts::{
    ADMIT_BINDING, INSERT_BINDING, INSERT_PENDING, REDEEM, RESTORE, STATS, TAKE_PENDING,
};
use super::tls::{RedisTls, is_tls, with_crypto_provider};
use super::{Inner, RedisStore, unavailable};
use crate::store::{DEFAULT_MARK_TTL, StoreError};

/// The default number of live records (both families together).
#[cfg_attr(docsrs, doc(cfg(feature = "redis-store")))]
pub const DEFAULT_REDIS_CAPACITY: usize = 1_000_000;
/// The default bound on each Redis operation.
#[cfg_attr(docsrs, doc(cfg(feature = "redis-store")))]
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_secs(1);
/// The default key prefix.
#[cfg_attr(docsrs, doc(cfg(feature = "redis-store")))]
pub const DEFAULT_REDIS_PREFIX: &str = "pkce";

/// Settings for a [`RedisStore`].
#[cfg_attr(docsrs, doc(cfg(feature = "redis-store")))]
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

    /// The most pending authorizations one [`Source`](crate::Source) may
    /// hold at once, counted in Redis across every replica of the prefix.
    /// Default: none, no quota.
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
#[cfg_attr(docsrs, doc(cfg(feature = "redis-store")))]
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
}
