//! The store the proxy was configured with: in memory, or Redis.

use tower_pkce::store::{Either, MemoryStore, RedisStore, RedisTls, StoreError};

use crate::config::{Config, RedisTlsFiles, StoreSetting};

/// One of the stores the proxy can run with, chosen by `--store`: records
/// in this process ([`Either::Left`]), or in Redis, shared between replicas
/// ([`Either::Right`]).
pub type ProxyStore = Either<MemoryStore, RedisStore>;

/// The store `config` asks for. Redis is connected lazily, so a Redis that
/// is down now leaves the proxy up, unready, and failing closed.
///
/// # Errors
///
/// The store's own error when it cannot be set up (outside a Tokio runtime,
/// for one), or a TLS file that can no longer be read.
pub fn from_config(config: &Config) -> Result<ProxyStore, StoreError> {
    Ok(match &config.store {
        StoreSetting::Memory => Either::Left(
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
            Either::Right(builder.build()?)
        }
    })
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
