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

/// A failure the connection manager does not recover from by itself (a
/// rotated password makes every reconnection fail with WRONGPASS) must not
/// outlast its cause: the store connects afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_from_a_failure_while_connecting() {
    use std::time::{Duration, Instant};
    use tower_pkce::store::{Store, conformance};

    let server = RedisServer::start_with(&["--requirepass", "old-secret"]);
    let store = RedisStore::builder(server.url_with_password("old-secret"))
        .prefix(fresh_prefix())
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap_or_else(|e| panic!("RedisStore: {e}"));
    store
        .insert_pending(
            &conformance::fresh_key(),
            conformance::sample_pending(None),
            Duration::from_secs(60),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let admin = |password: &'static str| {
        let url = server.url_with_password(password);
        async move {
            redis::Client::open(url)
                .unwrap_or_else(|e| panic!("{e}"))
                .get_multiplexed_async_connection()
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        }
    };
    // Rotate the password and drop every connection: the store's
    // reconnections now fail with WRONGPASS.
    let mut old = admin("old-secret").await;
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "requirepass", "new-secret"])
        .query_async(&mut old)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let _: redis::Value = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal"])
        .query_async(&mut old)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..5 {
        assert!(store.stats().await.is_err(), "the old password still works");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Rotate it back: the store must find its way in again.
    let mut new = admin("new-secret").await;
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "requirepass", "old-secret"])
        .query_async(&mut new)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.stats().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the store did not recover within 10 s of the password being restored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Redis past its `maxmemory` (with `noeviction`) refuses new
/// authorizations as `Full`, and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_refuses_new_authorizations() {
    use std::time::Duration;
    use tower_pkce::store::{Store, StoreError, conformance};

    let server = RedisServer::start_with(&["--maxmemory-policy", "noeviction"]);
    let store = RedisStore::builder(server.url())
        .prefix(fresh_prefix())
        .build()
        .unwrap_or_else(|e| panic!("RedisStore: {e}"));
    let mut raw = redis::Client::open(server.url())
        .unwrap_or_else(|e| panic!("{e}"))
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let admitted = conformance::fresh_key();
    store
        .insert_pending(
            &admitted,
            conformance::sample_pending(None),
            Duration::from_secs(60),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // One byte: every write is now past the bound.
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "maxmemory", "1"])
        .query_async(&mut raw)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let key = conformance::fresh_key();
    let refused = store
        .insert_pending(
            &key,
            conformance::sample_pending(None),
            Duration::from_secs(60),
        )
        .await;
    assert!(matches!(refused, Err(StoreError::Full)), "{refused:?}");
    // For the next second, new authorizations are refused without asking.
    assert!(
        matches!(store.admission_hint(), Err(StoreError::Full)),
        "the hint knows the store is full"
    );
    assert!(!store.contains_pending(&key).await.unwrap_or(true));
    // Reads go on: the flow already admitted is still there.
    assert!(store.contains_pending(&admitted).await.unwrap_or(false));
}
