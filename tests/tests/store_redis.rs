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

mod under_pressure {
    //! The per-source quota and eviction, with two stores on one prefix
    //! standing for two replicas.
    #![allow(clippy::unwrap_used)]

    use std::net::IpAddr;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use tower_pkce::Source;
    use tower_pkce::store::{Redemption, RedisStore, Store, StoreError, StoreKey, conformance};

    use super::{query, raw_connection, record};
    use tests::redis::{RedisServer, fresh_prefix};

    const LONG: Duration = Duration::from_secs(60);
    const SHORT: Duration = Duration::from_millis(200);

    fn replica(prefix: &str, capacity: usize, quota: Option<usize>) -> RedisStore {
        let mut builder = RedisStore::builder(RedisServer::shared().url())
            .prefix(prefix)
            .capacity(capacity);
        if let Some(quota) = quota {
            builder = builder.max_pending_per_source(quota);
        }
        builder
            .build()
            .unwrap_or_else(|e| panic!("RedisStore: {e}"))
    }

    fn source(n: u8) -> Option<Source> {
        Some(Source::new(IpAddr::from([192, 0, 2, n])))
    }

    async fn insert(
        store: &RedisStore,
        key: &StoreKey,
        ttl: Duration,
        source: Option<Source>,
    ) -> Result<(), StoreError> {
        store
            .insert_pending(key, conformance::sample_pending(None), ttl, source)
            .await
    }

    /// The live records Redis counts against `source`.
    async fn held(prefix: &str, source: Option<Source>) -> u64 {
        let mut raw = raw_connection(&RedisServer::shared().url()).await;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let set = format!("{{{prefix}}}:src:{}", source.unwrap_or_else(|| panic!()));
        query(
            &mut raw,
            redis::cmd("ZCOUNT")
                .arg(set)
                .arg(format!("({now}"))
                .arg("+inf"),
        )
        .await
    }

    async fn exists(key: &str) -> bool {
        let mut raw = raw_connection(&RedisServer::shared().url()).await;
        query::<u64>(&mut raw, redis::cmd("EXISTS").arg(key)).await == 1
    }

    fn note(prefix: &str, key: &StoreKey) -> String {
        record(prefix, 'p', key).replacen(":p:", ":ps:", 1)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_quota_holds_across_replicas_and_others_carry_on() {
        let prefix = fresh_prefix();
        let (one, two) = (
            replica(&prefix, 100, Some(3)),
            replica(&prefix, 100, Some(3)),
        );
        let (a, b) = (source(1), source(2));
        let keys: Vec<StoreKey> = (0..4).map(|_| conformance::fresh_key()).collect();
        insert(&one, &keys[0], LONG, a).await.unwrap();
        insert(&two, &keys[1], LONG, a).await.unwrap();
        insert(&one, &keys[2], LONG, a).await.unwrap();
        for store in [&one, &two] {
            let over = insert(store, &keys[3], LONG, a).await;
            assert!(matches!(over, Err(StoreError::SourceQuota)), "{over:?}");
        }
        // Each replica remembers the refusal it made, and refuses without
        // asking Redis for a moment.
        for store in [&one, &two] {
            assert!(matches!(
                store.admission_hint(a),
                Err(StoreError::SourceQuota)
            ));
            assert_eq!(store.pressure().sources_at_quota, 1);
            assert!(store.admission_hint(b).is_ok());
            assert!(store.admission_hint(None).is_ok());
        }
        // Others, and requests of no known source, carry on.
        insert(&two, &conformance::fresh_key(), LONG, b)
            .await
            .unwrap();
        for _ in 0..5 {
            insert(&one, &conformance::fresh_key(), LONG, None)
                .await
                .unwrap();
        }
        assert_eq!(held(&prefix, a).await, 3);
        // A take through either replica gives the source room again.
        assert!(two.take_pending(&keys[0]).await.unwrap().is_some());
        assert_eq!(held(&prefix, a).await, 2);
        assert!(!exists(&note(&prefix, &keys[0])).await);
        insert(&one, &keys[3], LONG, a).await.unwrap();
        // A conflict counts nothing.
        assert!(matches!(
            insert(&two, &keys[3], LONG, b).await,
            Err(StoreError::Conflict)
        ));
        assert_eq!(held(&prefix, b).await, 1);
        // Once every record is taken, nothing of the source is left.
        for key in &keys[1..] {
            assert!(one.take_pending(key).await.unwrap().is_some());
            assert!(!exists(&note(&prefix, key)).await);
        }
        assert!(!exists(&format!("{{{prefix}}}:src:192.0.2.1")).await);
        // Without a quota, sources are not recorded.
        let free_prefix = fresh_prefix();
        let free = replica(&free_prefix, 100, None);
        let key = conformance::fresh_key();
        insert(&free, &key, LONG, a).await.unwrap();
        assert!(!exists(&note(&free_prefix, &key)).await);
        assert!(!exists(&format!("{{{free_prefix}}}:src:192.0.2.1")).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_source_count_is_released_on_take_expiry_and_eviction() {
        let prefix = fresh_prefix();
        let (one, two) = (replica(&prefix, 4, Some(4)), replica(&prefix, 4, Some(4)));
        let (a, b) = (source(1), source(2));
        let (taken, expiring, evicted) = (
            conformance::fresh_key(),
            conformance::fresh_key(),
            conformance::fresh_key(),
        );
        insert(&one, &taken, LONG, a).await.unwrap();
        insert(&two, &expiring, SHORT, a).await.unwrap();
        insert(&one, &evicted, LONG, a).await.unwrap();
        assert_eq!(held(&prefix, a).await, 3);
        assert!(two.take_pending(&taken).await.unwrap().is_some());
        assert_eq!(held(&prefix, a).await, 2);
        tokio::time::sleep(SHORT * 3).await;
        assert_eq!(held(&prefix, a).await, 1);
        assert!(!exists(&note(&prefix, &expiring)).await);
        // Full of b's records and a's last: the oldest, a's, is evicted.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            insert(&two, &conformance::fresh_key(), LONG, b)
                .await
                .unwrap();
        }
        insert(&one, &conformance::fresh_key(), LONG, b)
            .await
            .unwrap();
        assert!(one.get_pending(&evicted).await.unwrap().is_none());
        assert!(!exists(&note(&prefix, &evicted)).await);
        assert!(!exists(&format!("{{{prefix}}}:src:192.0.2.1")).await);
        assert_eq!(held(&prefix, b).await, 4);
        assert_eq!(one.pressure().evicted + two.pressure().evicted, 1);
        assert_eq!(one.pressure().evicted, 1);
        // b holds its quota, through either replica.
        let over = insert(&two, &conformance::fresh_key(), LONG, b).await;
        assert!(matches!(over, Err(StoreError::SourceQuota)), "{over:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_store_evicts_the_oldest_pending_authorization() {
        let prefix = fresh_prefix();
        let (one, two) = (replica(&prefix, 4, None), replica(&prefix, 4, None));
        let old: Vec<StoreKey> = (0..4).map(|_| conformance::fresh_key()).collect();
        for (i, key) in old.iter().enumerate() {
            let store = if i % 2 == 0 { &one } else { &two };
            insert(store, key, LONG, None).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The oldest but one is taken: its room is free again.
        assert!(two.take_pending(&old[1]).await.unwrap().is_some());
        insert(&one, &conformance::fresh_key(), LONG, None)
            .await
            .unwrap();
        assert_eq!(one.pressure().evicted, 0);
        for (i, gone) in [0, 2, 3].into_iter().enumerate() {
            let store = if i % 2 == 0 { &two } else { &one };
            insert(store, &conformance::fresh_key(), LONG, None)
                .await
                .unwrap();
            assert!(
                one.get_pending(&old[gone]).await.unwrap().is_none(),
                "{gone}"
            );
            assert!(!exists(&record(&prefix, 'p', &old[gone])).await);
            for &kept in &[0, 2, 3][i + 1..] {
                assert!(
                    one.get_pending(&old[kept]).await.unwrap().is_some(),
                    "{kept}"
                );
            }
        }
        assert_eq!(one.pressure().evicted + two.pressure().evicted, 3);
        let stats = one.stats().await.unwrap();
        assert_eq!((stats.pending, stats.bindings), (4, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bindings_are_never_evicted_and_may_evict_pending_ones() {
        let prefix = fresh_prefix();
        let (one, two) = (replica(&prefix, 3, Some(10)), replica(&prefix, 3, Some(10)));
        let a = source(1);
        let binding = conformance::sample_binding;
        let codes: Vec<StoreKey> = (0..3).map(|_| conformance::fresh_key()).collect();
        let pending: Vec<StoreKey> = (0..5).map(|_| conformance::fresh_key()).collect();
        one.admit_binding(&codes[0], binding(), LONG).await.unwrap();
        for key in &pending[..2] {
            insert(&two, key, LONG, a).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A new pending authorization takes a pending one's room.
        insert(&one, &pending[2], LONG, a).await.unwrap();
        assert!(two.get_pending(&pending[0]).await.unwrap().is_none());
        // So does a binding admitted at the bound.
        two.admit_binding(&codes[1], binding(), LONG).await.unwrap();
        assert!(one.get_pending(&pending[1]).await.unwrap().is_none());
        // A binding whose pending record's room was taken meanwhile takes
        // it back from another pending record.
        let record = one.take_pending(&pending[2]).await.unwrap().unwrap();
        insert(&two, &pending[3], LONG, a).await.unwrap();
        one.insert_binding(&codes[2], record.binding(), LONG)
            .await
            .unwrap();
        assert!(two.get_pending(&pending[3]).await.unwrap().is_none());
        assert_eq!(held(&prefix, a).await, 0);
        // Full of bindings: a pending write is refused, and none goes.
        let over = insert(&two, &pending[4], LONG, a).await;
        assert!(matches!(over, Err(StoreError::Full)), "{over:?}");
        let over = one
            .admit_binding(&conformance::fresh_key(), binding(), LONG)
            .await;
        assert!(matches!(over, Err(StoreError::Full)), "{over:?}");
        for code in &codes {
            assert!(matches!(
                two.redeem(code).await.unwrap(),
                Redemption::Redeemed(_)
            ));
        }
        assert_eq!(one.pressure().evicted + two.pressure().evicted, 3);
    }
}
