//! The store conformance suite against `RedisStore` and a real
//! `redis-server`, each check under a key prefix of its own.
#![allow(clippy::panic, missing_docs)]

use tests::redis::{RedisServer, fresh_prefix};
use tower_pkce::store::RedisStore;

tower_pkce::store_conformance_tests!(|capacity, mark_ttl| async move {
    RedisStore::builder(RedisServer::shared().url())
        .prefix(fresh_prefix())
        .capacity(capacity)
        .mark_ttl(mark_ttl)
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
            None,
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
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let code = conformance::fresh_key();
    store
        .insert_binding(
            &code,
            conformance::sample_binding(),
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
            None,
        )
        .await;
    assert!(matches!(refused, Err(StoreError::Full)), "{refused:?}");
    // For the next second, new authorizations are refused without asking.
    assert!(
        matches!(store.admission_hint(None), Err(StoreError::Full)),
        "the hint knows the store is full"
    );
    assert!(store.get_pending(&key).await.is_ok_and(|p| p.is_none()));
    // Reads go on: the flow already admitted is still there.
    assert!(
        store
            .get_pending(&admitted)
            .await
            .is_ok_and(|p| p.is_some())
    );
    // So do redemptions: the script's first write frees memory, and the
    // mark it rewrites then says the code is spent.
    assert!(matches!(
        store.redeem(&code).await,
        Ok(tower_pkce::store::Redemption::Redeemed(_))
    ));
    assert!(matches!(
        store.redeem(&code).await,
        Ok(tower_pkce::store::Redemption::Spent)
    ));
}

/// The layout the module docs describe: the mark holds `b` or `s` and the
/// binding's expiry, outlives the binding, and is in no capacity index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mark_holds_its_state_and_its_binding_expiry() {
    use std::time::Duration;
    use tower_pkce::store::{Redemption, Store, conformance};

    let server = RedisServer::shared();
    let prefix = fresh_prefix();
    let store = RedisStore::builder(server.url())
        .prefix(prefix.as_str())
        .mark_ttl(Duration::from_secs(60))
        .build()
        .unwrap_or_else(|e| panic!("RedisStore: {e}"));
    let mut raw = raw_connection(&server.url()).await;
    let key = conformance::fresh_key();
    let (mark, binding, index) = (
        record(&prefix, 'c', &key),
        record(&prefix, 'b', &key),
        format!("{{{prefix}}}:n:b"),
    );
    store
        .insert_binding(&key, conformance::sample_binding(), Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let value = get(&mut raw, &mark).await;
    let (state, expires) = value.split_at(1);
    assert_eq!(state, "b", "{value}");
    let expires: i64 = expires.parse().unwrap_or_else(|e| panic!("{value}: {e}"));
    let score: Vec<(String, i64)> = query(
        &mut raw,
        redis::cmd("ZRANGE")
            .arg(&index)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES"),
    )
    .await;
    assert_eq!(score.len(), 1, "{score:?}");
    assert_eq!(score[0].1, expires, "the index and the mark agree");
    let binding_left: i64 = query(&mut raw, redis::cmd("PTTL").arg(&binding)).await;
    let mark_left: i64 = query(&mut raw, redis::cmd("PTTL").arg(&mark)).await;
    assert!((1..=5000).contains(&binding_left), "{binding_left}");
    assert!((5001..=60_000).contains(&mark_left), "{mark_left}");

    assert!(matches!(
        store.redeem(&key).await.unwrap_or_else(|e| panic!("{e}")),
        Redemption::Redeemed(_)
    ));
    // Spent, with the same expiry and its TTL kept.
    assert_eq!(get(&mut raw, &mark).await, format!("s{expires}"));
    let kept: i64 = query(&mut raw, redis::cmd("PTTL").arg(&mark)).await;
    assert!((5001..=mark_left).contains(&kept), "{kept}");
    // Marks are not counted: the index holds the one binding it held.
    let counted: i64 = query(&mut raw, redis::cmd("ZCARD").arg(&index)).await;
    assert_eq!(counted, 1);
    let pending: i64 = query(
        &mut raw,
        redis::cmd("EXISTS").arg(format!("{{{prefix}}}:n:p")),
    )
    .await;
    assert_eq!(pending, 0);

    store
        .restore(&key, conformance::sample_binding())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(get(&mut raw, &mark).await, format!("b{expires}"));
    let restored_left: i64 = query(&mut raw, redis::cmd("PTTL").arg(&binding)).await;
    assert!(
        (1..=binding_left).contains(&restored_left),
        "{restored_left}"
    );
}

/// A mark written by an earlier version (`1`, with its binding's TTL) and a
/// mark that is not in either form: both refuse the code, and neither
/// makes a restore outlive the binding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn earlier_and_unreadable_marks_refuse_the_code() {
    use std::time::Duration;
    use tower_pkce::store::{Redemption, Store, conformance};

    let server = RedisServer::shared();
    let prefix = fresh_prefix();
    let store = RedisStore::builder(server.url())
        .prefix(prefix.as_str())
        .build()
        .unwrap_or_else(|e| panic!("RedisStore: {e}"));
    let mut raw = raw_connection(&server.url()).await;

    // Bound by an earlier version: the mark and the binding share a TTL.
    let earlier = conformance::fresh_key();
    let binding = conformance::sample_binding();
    store
        .insert_binding(&earlier, binding, Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (mark, live) = (
        record(&prefix, 'c', &earlier),
        record(&prefix, 'b', &earlier),
    );
    let _: () = query(
        &mut raw,
        redis::cmd("SET").arg(&mark).arg("1").arg("PX").arg(5000),
    )
    .await;
    assert_eq!(
        store
            .redeem(&earlier)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        Redemption::Redeemed(binding)
    );
    assert_eq!(get(&mut raw, &mark).await, "s");
    assert_eq!(
        store
            .redeem(&earlier)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        Redemption::Spent
    );
    store
        .restore(&earlier, binding)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let left: i64 = query(&mut raw, redis::cmd("PTTL").arg(&live)).await;
    assert!((1..=5000).contains(&left), "{left}");
    assert_eq!(
        store
            .redeem(&earlier)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        Redemption::Redeemed(binding)
    );

    // An unreadable expiry: spent, and never restored.
    let odd = conformance::fresh_key();
    let mark = record(&prefix, 'c', &odd);
    let _: () = query(
        &mut raw,
        redis::cmd("SET")
            .arg(&mark)
            .arg("sx1")
            .arg("PX")
            .arg(60_000),
    )
    .await;
    store
        .restore(&odd, binding)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        store.redeem(&odd).await.unwrap_or_else(|e| panic!("{e}")),
        Redemption::Spent
    );
    let _: () = query(
        &mut raw,
        redis::cmd("SET").arg(&mark).arg("?").arg("PX").arg(60_000),
    )
    .await;
    assert_eq!(
        store.redeem(&odd).await.unwrap_or_else(|e| panic!("{e}")),
        Redemption::Spent
    );
    let bound = store
        .insert_binding(&odd, binding, Duration::from_secs(5))
        .await;
    assert!(bound.is_err(), "a marked code was bound again");
}

/// The Redis key of record `key` in `family`.
fn record(prefix: &str, family: char, key: &tower_pkce::store::StoreKey) -> String {
    let hex: String = key.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("{{{prefix}}}:{family}:{hex}")
}

async fn raw_connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap_or_else(|e| panic!("{e}"))
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn query<T: redis::FromRedisValue>(
    raw: &mut redis::aio::MultiplexedConnection,
    cmd: &mut redis::Cmd,
) -> T {
    cmd.query_async(raw).await.unwrap_or_else(|e| panic!("{e}"))
}

async fn get(raw: &mut redis::aio::MultiplexedConnection, key: &str) -> String {
    query(raw, redis::cmd("GET").arg(key)).await
}
