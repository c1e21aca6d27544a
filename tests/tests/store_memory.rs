//! The store conformance suite against `MemoryStore`.
#![allow(missing_docs)]

use tower_pkce::store::MemoryStore;

tower_pkce::store_conformance_tests!(|capacity| async move {
    MemoryStore::builder().capacity(capacity).build()
});
