//! The store conformance suite against `RedisStore` and a real
//! `redis-server`, each check under a key prefix of its own.
#![allow(clippy::panic, missing_docs)]

use tests::redis::{RedisServer, fresh_prefix};
use tower_pkce::store::RedisStore;

tower_pkce::store_conformance_tests!(|capacity| async move {
    RedisStore::builder(RedisServer::shared().url())
        .prefix(fresh_prefix())
        .capacity(capacity)
        .build()
        .unwrap_or_else(|e| panic!("RedisStore: {e}"))
});
