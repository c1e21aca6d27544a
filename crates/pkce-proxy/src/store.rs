//! The store the proxy was configured with: in memory, or Redis.

use std::time::Duration;

use tower_pkce::store::{
    CodeBinding, MemoryStore, PendingAuthorization, Redemption, RedisStore, Store, StoreError,
    StoreKey, StoreStats,
};

use crate::config::{Config, StoreSetting};

/// One of the stores the proxy can run with, chosen by `--store`.
#[derive(Debug, Clone)]
pub enum ProxyStore {
    /// Records in this process.
    Memory(MemoryStore),
    /// Records in Redis, shared between replicas.
    Redis(RedisStore),
}

impl ProxyStore {
    /// The store `config` asks for. Redis is connected lazily, so a Redis
    /// that is down now leaves the proxy up, unready, and failing closed.
    ///
    /// # Errors
    ///
    /// The store's own error when it cannot be set up (outside a Tokio
    /// runtime, for one).
    pub fn from_config(config: &Config) -> Result<Self, StoreError> {
        Ok(match &config.store {
            StoreSetting::Memory => {
                Self::Memory(MemoryStore::builder().capacity(config.max_entries).build())
            }
            StoreSetting::Redis {
                url,
                prefix,
                timeout,
            } => Self::Redis(
                RedisStore::builder(url.as_str())
                    .prefix(prefix.as_str())
                    .capacity(config.max_entries)
                    .timeout(*timeout)
                    .build()?,
            ),
        })
    }
}

/// Calls the configured store. The Redis future is boxed: it is large, and
/// every caller's future would otherwise carry its size for the memory
/// store too, and copy it at every move. One allocation is nothing beside a
/// round trip to Redis.
macro_rules! each {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            ProxyStore::Memory($store) => $call.await,
            ProxyStore::Redis($store) => Box::pin($call).await,
        }
    };
}

impl Store for ProxyStore {
    async fn insert_pending(
        &self,
        key: &StoreKey,
        record: PendingAuthorization,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        each!(self, s => s.insert_pending(key, record, ttl))
    }

    async fn contains_pending(&self, key: &StoreKey) -> Result<bool, StoreError> {
        each!(self, s => s.contains_pending(key))
    }

    async fn take_pending(
        &self,
        key: &StoreKey,
    ) -> Result<Option<PendingAuthorization>, StoreError> {
        each!(self, s => s.take_pending(key))
    }

    async fn insert_binding(
        &self,
        key: &StoreKey,
        binding: CodeBinding,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        each!(self, s => s.insert_binding(key, binding, ttl))
    }

    async fn redeem(&self, key: &StoreKey) -> Result<Redemption, StoreError> {
        each!(self, s => s.redeem(key))
    }

    async fn restore(&self, key: &StoreKey, binding: CodeBinding) -> Result<(), StoreError> {
        each!(self, s => s.restore(key, binding))
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        each!(self, s => s.stats())
    }

    fn start_maintenance(&self) {
        match self {
            Self::Memory(s) => s.start_maintenance(),
            Self::Redis(s) => s.start_maintenance(),
        }
    }
}
