//! The store the proxy was configured with: in memory, or Redis.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;

use tower_pkce::Source;
use tower_pkce::store::{
    CodeBinding, MemoryStore, PendingAuthorization, Redemption, RedisStore, RedisTls, Store,
    StoreError, StoreKey, StorePressure, StoreStats,
};

use crate::config::{Config, RedisTlsFiles, StoreSetting};

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
    /// runtime, for one), or a TLS file that can no longer be read.
    pub fn from_config(config: &Config) -> Result<Self, StoreError> {
        Ok(match &config.store {
            StoreSetting::Memory => Self::Memory(
                MemoryStore::builder()
                    .capacity(config.max_entries)
                    .max_pending_per_source(config.max_pending_per_source)
                    .build(),
            ),
            StoreSetting::Redis {
                url,
                prefix,
                timeout,
                tls,
            } => {
                let mut builder = RedisStore::builder(url.as_str())
                    .prefix(prefix.as_str())
                    .capacity(config.max_entries)
                    .max_pending_per_source(config.max_pending_per_source)
                    .timeout(*timeout);
                if let Some(tls) = tls {
                    builder = builder.tls(redis_tls(tls)?);
                }
                Self::Redis(builder.build()?)
            }
        })
    }
}

/// The PEM text of the files [`Config::resolve`] checked.
fn redis_tls(files: &RedisTlsFiles) -> Result<RedisTls, StoreError> {
    let read = |setting: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            StoreError::Unavailable(
                format!("--{setting}: {}: cannot read it ({e})", path.display()).into(),
            )
        })
    };
    let mut tls = RedisTls::new();
    if let Some(ca) = &files.ca {
        tls = tls.root_certificates(read("redis-ca", ca)?);
    }
    if let Some((cert, key)) = &files.client {
        tls = tls.client_identity(
            read("redis-client-cert", cert)?,
            read("redis-client-key", key)?,
        );
    }
    Ok(tls)
}

pin_project! {
    /// A call to the configured store. The Redis future is boxed: it is
    /// large, and every caller's future would otherwise carry its size for
    /// the memory store too, and copy it at every move. One allocation is
    /// nothing beside a round trip to Redis.
    #[project = CallProj]
    enum StoreCall<M, R> {
        /// The memory store's future, which is ready at once.
        Memory {
            #[pin]
            future: M,
        },
        /// Redis's future.
        Redis { future: Pin<Box<R>> },
    }
}

impl<T, M: Future<Output = T>, R: Future<Output = T>> Future for StoreCall<M, R> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match self.project() {
            CallProj::Memory { future } => future.poll(cx),
            CallProj::Redis { future } => future.as_mut().poll(cx),
        }
    }
}

macro_rules! each {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            ProxyStore::Memory($store) => StoreCall::Memory { future: $call },
            ProxyStore::Redis($store) => StoreCall::Redis {
                future: Box::pin($call),
            },
        }
    };
}

impl Store for ProxyStore {
    fn insert_pending(
        &self,
        key: &StoreKey,
        record: PendingAuthorization,
        ttl: Duration,
        source: Option<Source>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        each!(self, s => s.insert_pending(key, record, ttl, source))
    }

    fn get_pending(
        &self,
        key: &StoreKey,
    ) -> impl Future<Output = Result<Option<PendingAuthorization>, StoreError>> + Send {
        each!(self, s => s.get_pending(key))
    }

    fn take_pending(
        &self,
        key: &StoreKey,
    ) -> impl Future<Output = Result<Option<PendingAuthorization>, StoreError>> + Send {
        each!(self, s => s.take_pending(key))
    }

    fn insert_binding(
        &self,
        key: &StoreKey,
        binding: CodeBinding,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        each!(self, s => s.insert_binding(key, binding, ttl))
    }

    fn admit_binding(
        &self,
        key: &StoreKey,
        binding: CodeBinding,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        each!(self, s => s.admit_binding(key, binding, ttl))
    }

    fn redeem(
        &self,
        key: &StoreKey,
    ) -> impl Future<Output = Result<Redemption, StoreError>> + Send {
        each!(self, s => s.redeem(key))
    }

    fn restore(
        &self,
        key: &StoreKey,
        binding: CodeBinding,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        each!(self, s => s.restore(key, binding))
    }

    fn stats(&self) -> impl Future<Output = Result<StoreStats, StoreError>> + Send {
        each!(self, s => s.stats())
    }

    fn admission_hint(&self, source: Option<Source>) -> Result<(), StoreError> {
        match self {
            Self::Memory(s) => s.admission_hint(source),
            Self::Redis(s) => s.admission_hint(source),
        }
    }

    fn pressure(&self) -> StorePressure {
        match self {
            Self::Memory(s) => s.pressure(),
            Self::Redis(s) => s.pressure(),
        }
    }

    fn start_maintenance(&self) {
        match self {
            Self::Memory(s) => s.start_maintenance(),
            Self::Redis(s) => s.start_maintenance(),
        }
    }
}
