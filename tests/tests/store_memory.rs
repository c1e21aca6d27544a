//! The store conformance suite against `MemoryStore`.
#![allow(missing_docs)]

use tower_pkce::store::MemoryStore;

tower_pkce::store_conformance_tests!(|capacity, mark_ttl| async move {
    MemoryStore::builder()
        .capacity(capacity)
        .mark_ttl(mark_ttl)
        .build()
});
