//! The store conformance suite against `Either`, holding a `MemoryStore`
//! (`left`) and a `RedisStore` on a real `redis-server` (`right`): the
//! adapter forwards every operation, so each side behaves as its backend.
#![allow(clippy::panic, missing_docs)]

use tower_pkce::store::{Either, MemoryStore, RedisStore};

type Store = Either<MemoryStore, RedisStore>;

mod left {
    use super::*;

    tower_pkce::store_conformance_tests!(|capacity, mark_ttl| async move {
        Store::Left(
            MemoryStore::builder()
                .capacity(capacity)
                .mark_ttl(mark_ttl)
                .build(),
        )
    });
}

mod right {
    use super::*;
    use tests::redis::{RedisServer, fresh_prefix};

    tower_pkce::store_conformance_tests!(|capacity, mark_ttl| async move {
        Store::Right(
            RedisStore::builder(RedisServer::shared().url())
                .prefix(fresh_prefix())
                .capacity(capacity)
                .mark_ttl(mark_ttl)
                .build()
                .unwrap_or_else(|e| panic!("RedisStore: {e}")),
        )
    });
}
