//! Tests of the memory store, its admission, eviction, sweep and marks.

use super::admission::{MIN_COMPACT, lock};
use super::segments::segment;
use super::sweep::MIN_MARK_SHARE;
use super::*;

fn binding() -> CodeBinding {
    CodeBinding {
        challenge: None,
        client: [7; 16],
        redirect_uri: None,
        failures: 0,
    }
}

fn pending() -> PendingAuthorization {
    PendingAuthorization {
        challenge: None,
        client: [7; 16],
        redirect_uri: None,
        state: None,
    }
}

fn key(family: &str, i: usize) -> StoreKey {
    StoreKey::of(&format!("{family}-{i}"))
}

const SHORT: Duration = Duration::from_millis(10);
/// A mark bound no test here reaches unless it means to.
const ROOMY_MARKS: usize = 100 * SEGMENTS;
const LONG: Duration = Duration::from_secs(3600);
/// Longer than the shortest lifetime a record gets (two ticks).
const AFTER_SHORT: Duration = Duration::from_millis(250);

#[test]
fn the_admission_hint_knows_when_the_store_is_full() {
    let store = MemoryStore::builder().capacity(2).build();
    assert!(store.admission_hint(None).is_ok());
    store
        .admit_binding_now(&key("b", 0), binding(), LONG)
        .unwrap();
    store
        .insert_pending_now(&key("p", 0), pending(), LONG, None)
        .unwrap();
    // Full, but a pending authorization can make room.
    assert!(store.admission_hint(None).is_ok());
    store
        .admit_binding_now(&key("b", 1), binding(), LONG)
        .unwrap();
    assert!(store.take_pending_now(&key("p", 0)).is_none());
    // Full of bindings: nothing to evict.
    assert!(matches!(store.admission_hint(None), Err(StoreError::Full)));
    // Failed admissions give their room back.
    assert!(matches!(
        store.admit_binding_now(&key("b", 2), binding(), LONG),
        Err(StoreError::Full)
    ));
    assert!(matches!(
        store.insert_pending_now(&key("p", 1), pending(), LONG, None),
        Err(StoreError::Full)
    ));
    assert!(matches!(
        store.admit_binding_now(&key("b", 0), binding(), LONG),
        Err(StoreError::Full)
    ));
    assert_eq!(store.inner.len.load(Ordering::Acquire), 2);
    assert_eq!(store.inner.pending_len.load(Ordering::Acquire), 0);
}

#[test]
fn an_admitted_binding_takes_the_room_of_an_expired_one() {
    // Without a mark lifetime, a code is forgotten with its binding.
    let store = MemoryStore::builder()
        .capacity(2)
        .mark_ttl(Duration::ZERO)
        .build();
    store
        .admit_binding_now(&key("b", 0), binding(), SHORT)
        .unwrap();
    std::thread::sleep(AFTER_SHORT);
    store
        .admit_binding_now(&key("b", 0), binding(), LONG)
        .unwrap();
    assert_eq!(store.inner.len.load(Ordering::Acquire), 1);
    assert!(matches!(
        store.redeem_now(&key("b", 0)),
        Redemption::Redeemed(_)
    ));
    std::thread::sleep(AFTER_SHORT);
    assert_eq!(store.inner.len.load(Ordering::Acquire), 1);
}

#[test]
fn keys_spread_over_every_segment() {
    let store = MemoryStore::new();
    for i in 0..SEGMENTS * 32 {
        store
            .insert_binding_now(&key("code", i), binding(), LONG)
            .unwrap();
    }
    let sizes: Vec<usize> = store.inner.bindings.maps.iter().map(DashMap::len).collect();
    assert!(sizes.iter().all(|&n| n > 0), "{sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), SEGMENTS * 32);
    assert_eq!(store.inner.bindings.len(), SEGMENTS * 32);
}

/// Live, spent and pending records, short-lived and long-lived, in
/// every segment: `count` of each kind.
fn fill(store: &MemoryStore, count: usize) {
    for i in 0..count {
        store
            .insert_pending_now(&key("pending-short", i), pending(), SHORT, None)
            .unwrap();
        store
            .insert_pending_now(&key("pending-long", i), pending(), LONG, None)
            .unwrap();
        store
            .insert_binding_now(&key("live-short", i), binding(), SHORT)
            .unwrap();
        store
            .insert_binding_now(&key("live-long", i), binding(), LONG)
            .unwrap();
        spend(store, &key("spent-short", i), SHORT);
        spend(store, &key("spent-long", i), LONG);
    }
}

/// Binds `key` for `ttl`, then redeems it.
fn spend(store: &MemoryStore, key: &StoreKey, ttl: Duration) {
    store.insert_binding_now(key, binding(), ttl).unwrap();
    assert!(matches!(store.redeem_now(key), Redemption::Redeemed(_)));
}

/// The long-lived records are all there, and the short-lived bindings
/// are marks.
fn assert_only_long_lived_remain(store: &MemoryStore, count: usize) {
    let inner = &store.inner;
    assert_eq!(inner.pending.len(), count);
    assert_eq!(inner.bindings.len(), count);
    assert_eq!(inner.spent.len(), count);
    assert_eq!(inner.marks.len(), 2 * count);
    assert_eq!(inner.len.load(Ordering::Acquire), 3 * count);
    for i in 0..count {
        assert!(store.take_pending_now(&key("pending-long", i)).is_some());
        assert!(matches!(
            store.redeem_now(&key("live-long", i)),
            Redemption::Redeemed(_)
        ));
        assert_eq!(store.redeem_now(&key("spent-long", i)), Redemption::Spent);
        assert_eq!(store.redeem_now(&key("live-short", i)), Redemption::Expired);
        assert_eq!(store.redeem_now(&key("spent-short", i)), Redemption::Spent);
    }
}

#[test]
fn sweep_removes_the_expired_records_of_every_segment_and_frees_their_room() {
    let count = SEGMENTS * 4;
    let store = MemoryStore::builder().capacity(6 * count).build();
    fill(&store, count);
    assert_eq!(store.inner.len.load(Ordering::Acquire), 6 * count);
    std::thread::sleep(AFTER_SHORT);
    assert_eq!(store.sweep(), 3 * count);
    assert_only_long_lived_remain(&store, count);
    // The room the expired records held is free again.
    for i in 0..3 * count {
        store
            .insert_pending_now(&key("extra", i), pending(), LONG, None)
            .unwrap();
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_background_sweep_visits_every_segment() {
    let count = SEGMENTS * 4;
    let store = MemoryStore::builder()
        .sweep_period(Duration::from_millis(20))
        .build();
    fill(&store, count);
    let sweeper = store.spawn_sweeper();
    tokio::time::sleep(AFTER_SHORT).await;
    // Expiry happened during the sleep; give the sweep time for one
    // full pass after it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.inner.len.load(Ordering::Acquire) != 3 * count
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_only_long_lived_remain(&store, count);
    drop(store);
    sweeper.await.unwrap();
}

/// `count` keys of `family` that fall in segment `index`.
fn keys_in_segment(family: &str, index: usize, count: usize) -> Vec<StoreKey> {
    (0..)
        .map(|i| key(family, i))
        .filter(|k| segment(k) == index)
        .take(count)
        .collect()
}

#[test]
fn the_sweep_turns_expired_bindings_into_marks() {
    let store = MemoryStore::builder()
        .capacity(4)
        .mark_capacity(ROOMY_MARKS)
        .build();
    let (live, spent) = (key("live", 0), key("spent", 0));
    store.insert_binding_now(&live, binding(), SHORT).unwrap();
    spend(&store, &spent, SHORT);
    std::thread::sleep(AFTER_SHORT);
    assert_eq!(store.sweep(), 2);
    let inner = &store.inner;
    assert_eq!(inner.bindings.len() + inner.spent.len(), 0);
    assert_eq!(inner.marks.len(), 2);
    assert_eq!(inner.len.load(Ordering::Acquire), 0);
    let stats = ready_stats(&store);
    assert_eq!((stats.bindings, stats.marks), (0, Some(2)));
    assert_eq!(store.redeem_now(&live), Redemption::Expired);
    assert_eq!(store.redeem_now(&spent), Redemption::Spent);
    assert!(matches!(
        store.insert_binding_now(&live, binding(), LONG),
        Err(StoreError::Conflict)
    ));
    assert!(matches!(
        store.admit_binding_now(&spent, binding(), LONG),
        Err(StoreError::Conflict)
    ));
    // The failed admission gave its room back.
    assert_eq!(inner.len.load(Ordering::Acquire), 0);
    // A second sweep finds nothing more to do.
    assert_eq!(store.sweep(), 0);
    assert_eq!(inner.marks.len(), 2);
}

#[test]
fn a_read_turns_an_expired_binding_into_a_mark() {
    let store = MemoryStore::builder()
        .capacity(4)
        .mark_capacity(ROOMY_MARKS)
        .build();
    let code = key("live", 0);
    store.admit_binding_now(&code, binding(), SHORT).unwrap();
    std::thread::sleep(AFTER_SHORT);
    assert_eq!(store.redeem_now(&code), Redemption::Expired);
    let inner = &store.inner;
    assert_eq!(inner.bindings.len(), 0);
    assert_eq!(inner.marks.len(), 1);
    assert_eq!(inner.len.load(Ordering::Acquire), 0);
    assert_eq!(store.redeem_now(&code), Redemption::Expired);
    // With no mark lifetime, the expired binding is simply gone.
    let forgetful = MemoryStore::builder().mark_ttl(Duration::ZERO).build();
    forgetful
        .insert_binding_now(&code, binding(), SHORT)
        .unwrap();
    std::thread::sleep(AFTER_SHORT);
    assert_eq!(forgetful.redeem_now(&code), Redemption::Missing);
    assert_eq!(forgetful.inner.marks.len(), 0);
    assert_eq!(forgetful.inner.len.load(Ordering::Acquire), 0);
}

#[test]
fn marks_do_not_count_toward_capacity() {
    let store = MemoryStore::builder()
        .capacity(2)
        .mark_capacity(ROOMY_MARKS)
        .build();
    let codes: Vec<StoreKey> = (0..8).map(|i| key("code", i)).collect();
    for code in &codes {
        store.insert_binding_now(code, binding(), SHORT).unwrap();
    }
    assert!(matches!(store.admission_hint(None), Err(StoreError::Full)));
    std::thread::sleep(AFTER_SHORT);
    store.sweep();
    assert_eq!(store.inner.marks.len(), codes.len());
    assert!(store.admission_hint(None).is_ok());
    store
        .insert_pending_now(&key("p", 0), pending(), LONG, None)
        .unwrap();
    store
        .admit_binding_now(&key("b", 0), binding(), LONG)
        .unwrap();
    // Full: the pending authorization makes room, the marks need none.
    store
        .insert_pending_now(&key("p", 1), pending(), LONG, None)
        .unwrap();
    assert!(store.take_pending_now(&key("p", 0)).is_none());
    for code in &codes {
        assert_eq!(store.redeem_now(code), Redemption::Expired);
    }
}

#[test]
fn mark_shares_add_up_to_the_bound() {
    let floor = MIN_MARK_SHARE * SEGMENTS;
    for bound in [floor, floor + 1, floor + 63, 1_000_000, 1_000_037] {
        let store = MemoryStore::builder().mark_capacity(bound).build();
        let shares: usize = (0..SEGMENTS).map(|i| store.inner.mark_share(i)).sum();
        assert_eq!(shares, bound);
    }
    // A small bound keeps the floor in every segment.
    for bound in [0, 1, 64, floor - 1] {
        let store = MemoryStore::builder().mark_capacity(bound).build();
        assert!((0..SEGMENTS).all(|i| store.inner.mark_share(i) == MIN_MARK_SHARE));
    }
    // By default, the capacity.
    let store = MemoryStore::builder().capacity(640).build();
    assert_eq!(store.mark_capacity(), 640);
}

/// The expiries of the marks in segment `index`, sorted.
fn mark_expiries(store: &MemoryStore, index: usize) -> Vec<u32> {
    let mut expiries: Vec<u32> = store.inner.marks.maps[index]
        .iter()
        .map(|m| m.expires)
        .collect();
    expiries.sort_unstable();
    expiries
}

#[test]
fn a_full_segment_drops_the_marks_that_expire_soonest() {
    // A share of 16 marks a segment: past it, a segment keeps 14.
    let store = MemoryStore::builder().mark_capacity(16 * SEGMENTS).build();
    let inner = &store.inner;
    let keys = keys_in_segment("mark", 5, 40);
    // Expiries in a scrambled order, some equal, all in the future.
    let expiry = |i: usize| 10_000 + u32::try_from(i * 7 % 40 / 2).unwrap();
    let mut trims = 0;
    for (i, k) in keys.iter().enumerate() {
        inner.marks.of(k).insert(
            *k,
            Mark {
                expires: expiry(i),
                spent: false,
            },
        );
        let before = mark_expiries(&store, 5);
        inner.trim_marks(5);
        let after = mark_expiries(&store, 5);
        if before.len() <= 16 {
            assert_eq!(after, before);
            continue;
        }
        trims += 1;
        // The soonest go: what is kept is the latest 14 of what was there.
        assert_eq!(after, before[before.len() - 14..].to_vec());
    }
    assert!(trims > 0);
    assert_eq!(inner.marks.len(), inner.marks.maps[5].len());
    // One trim over many marks at once keeps the latest 14 too.
    let once = MemoryStore::builder().mark_capacity(16 * SEGMENTS).build();
    for (i, k) in keys.iter().enumerate() {
        once.inner.marks.of(k).insert(
            *k,
            Mark {
                expires: expiry(i),
                spent: false,
            },
        );
    }
    once.inner.trim_marks(5);
    let mut all: Vec<u32> = (0..keys.len()).map(expiry).collect();
    all.sort_unstable();
    assert_eq!(mark_expiries(&once, 5), all[all.len() - 14..].to_vec());
}

#[test]
fn the_mark_bound_holds_and_never_refuses_a_binding() {
    let share = 2 * MIN_MARK_SHARE;
    let store = MemoryStore::builder()
        .capacity(4)
        .mark_capacity(share * SEGMENTS)
        .build();
    let codes: Vec<StoreKey> = (0..4 * share * SEGMENTS).map(|i| key("code", i)).collect();
    for code in &codes {
        store.insert_binding_now(code, binding(), SHORT).unwrap();
    }
    std::thread::sleep(AFTER_SHORT);
    store.sweep();
    let marks = store.inner.marks.len();
    assert!(marks <= share * SEGMENTS, "{marks}");
    assert!(store.inner.marks.maps.iter().all(|m| m.len() <= share));
    assert!(marks >= share * SEGMENTS * 7 / 8, "{marks}");
    let expired = codes
        .iter()
        .filter(|c| store.redeem_now(c) == Redemption::Expired)
        .count();
    assert_eq!(expired, marks);
    // At the bound, bindings are still admitted, and the codes whose
    // marks were dropped are unknown.
    for i in 0..4 {
        store
            .admit_binding_now(&key("fresh", i), binding(), LONG)
            .unwrap();
    }
    let missing = codes
        .iter()
        .filter(|c| store.redeem_now(c) == Redemption::Missing)
        .count();
    assert_eq!(missing, codes.len() - marks);
}

fn source(last: u8) -> Option<Source> {
    Some(Source::new(std::net::IpAddr::from([192, 0, 2, last])))
}

/// The per-source count the store holds for `source`.
fn held(store: &MemoryStore, source: Option<Source>) -> usize {
    source
        .and_then(|s| store.inner.sources.get(&s).map(|n| *n))
        .unwrap_or(0)
}

#[test]
fn a_source_holds_at_most_its_quota_and_others_carry_on() {
    let store = MemoryStore::builder().max_pending_per_source(3).build();
    let (a, b) = (source(1), source(2));
    for i in 0..3 {
        store
            .insert_pending_now(&key("a", i), pending(), LONG, a)
            .unwrap();
    }
    assert!(matches!(
        store.insert_pending_now(&key("a", 3), pending(), LONG, a),
        Err(StoreError::SourceQuota)
    ));
    assert!(matches!(
        store.admission_hint(a),
        Err(StoreError::SourceQuota)
    ));
    assert_eq!(store.pressure().sources_at_quota, 1);
    // Other sources, and requests of no known source, are not held back.
    assert!(store.admission_hint(b).is_ok());
    store
        .insert_pending_now(&key("b", 0), pending(), LONG, b)
        .unwrap();
    for i in 0..10 {
        store
            .insert_pending_now(&key("unknown", i), pending(), LONG, None)
            .unwrap();
    }
    // The refusal took no room and counted nothing.
    assert_eq!(store.inner.len.load(Ordering::Acquire), 14);
    assert_eq!(held(&store, a), 3);
    // Taking one gives the source room again.
    assert!(store.take_pending_now(&key("a", 0)).is_some());
    assert_eq!(store.pressure().sources_at_quota, 0);
    assert!(store.admission_hint(a).is_ok());
    store
        .insert_pending_now(&key("a", 3), pending(), LONG, a)
        .unwrap();
    // A conflict gives its count back.
    assert!(store.take_pending_now(&key("a", 1)).is_some());
    assert!(matches!(
        store.insert_pending_now(&key("a", 2), pending(), LONG, a),
        Err(StoreError::Conflict)
    ));
    assert_eq!(held(&store, a), 2);
    // Without a quota, sources are not even counted.
    let free = MemoryStore::new();
    for i in 0..10 {
        free.insert_pending_now(&key("a", i), pending(), LONG, a)
            .unwrap();
    }
    assert!(free.inner.sources.is_empty());
}

#[test]
fn a_source_count_is_released_on_take_expiry_and_eviction() {
    let store = MemoryStore::builder()
        .capacity(4)
        .max_pending_per_source(4)
        .build();
    let (a, b) = (source(1), source(2));
    store
        .insert_pending_now(&key("taken", 0), pending(), LONG, a)
        .unwrap();
    store
        .insert_pending_now(&key("expiring", 0), pending(), SHORT, a)
        .unwrap();
    store
        .insert_pending_now(&key("evicted", 0), pending(), LONG, a)
        .unwrap();
    assert_eq!(held(&store, a), 3);
    assert!(store.take_pending_now(&key("taken", 0)).is_some());
    assert_eq!(held(&store, a), 2);
    std::thread::sleep(AFTER_SHORT);
    assert_eq!(store.sweep(), 1);
    assert_eq!(held(&store, a), 1);
    // Full of b's records and a's last: the oldest, a's, is evicted.
    for i in 0..3 {
        std::thread::sleep(Duration::from_millis(70));
        store
            .insert_pending_now(&key("b", i), pending(), LONG, b)
            .unwrap();
    }
    store
        .insert_pending_now(&key("b", 3), pending(), LONG, b)
        .unwrap();
    assert_eq!(held(&store, a), 0);
    assert!(store.inner.sources.get(&a.unwrap()).is_none());
    assert_eq!(held(&store, b), 4);
    assert_eq!(store.pressure().sources_at_quota, 1);
    assert_eq!(store.pressure().evicted, 1);
}

#[test]
fn a_full_store_evicts_the_oldest_pending_authorization() {
    let store = MemoryStore::builder().capacity(4).build();
    // Spread over segments, a tick apart or more, oldest first.
    let keys: Vec<StoreKey> = (0..4).map(|i| key("old", i)).collect();
    for k in &keys {
        store.insert_pending_now(k, pending(), LONG, None).unwrap();
        std::thread::sleep(Duration::from_millis(70));
    }
    // The oldest but one is taken: its queue entry is stale.
    assert!(store.take_pending_now(&keys[1]).is_some());
    store
        .insert_pending_now(&key("fill", 0), pending(), LONG, None)
        .unwrap();
    for (i, gone) in [0, 2, 3].into_iter().enumerate() {
        store
            .insert_pending_now(&key("new", i), pending(), LONG, None)
            .unwrap();
        assert!(store.get_pending_now(&keys[gone]).is_none(), "{gone}");
        for &kept in &[0, 2, 3][i + 1..] {
            assert!(store.get_pending_now(&keys[kept]).is_some(), "{kept}");
        }
    }
    assert_eq!(store.pressure().evicted, 3);
    assert_eq!(store.inner.len.load(Ordering::Acquire), 4);
    assert_eq!(store.inner.pending_len.load(Ordering::Acquire), 4);
}

/// Four threads write pending records into a full store, taking and
/// binding some: once they are done, the maps hold exactly the records
/// counted, within the capacity, and every binding written is there.
#[test]
fn concurrent_writers_never_pass_the_capacity() {
    const CAPACITY: usize = 256;
    let store = MemoryStore::builder().capacity(CAPACITY).build();
    let bound: Vec<Vec<StoreKey>> = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let store = &store;
                scope.spawn(move || {
                    let mut bound = Vec::new();
                    for i in 0..5_000 {
                        let k = key(&format!("w{t}"), i);
                        let source =
                            Some(crate::Source::from(std::net::IpAddr::from([10, 0, t, 1])));
                        if store
                            .insert_pending_now(&k, pending(), LONG, source)
                            .is_err()
                        {
                            continue;
                        }
                        if i % 97 == 0 && store.take_pending_now(&k).is_some() {
                            let code = key(&format!("code{t}"), i);
                            if store.insert_binding_now(&code, binding(), LONG).is_ok() {
                                bound.push(code);
                            }
                        }
                    }
                    bound
                })
            })
            .collect();
        writers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let inner = &store.inner;
    let held = inner.len.load(Ordering::Acquire);
    let in_maps = inner.pending.len() + inner.bindings.len() + inner.spent.len();
    assert_eq!(in_maps, held);
    assert!(held <= CAPACITY, "{held}");
    assert_eq!(
        inner.pending.len(),
        inner.pending_len.load(Ordering::Acquire)
    );
    for code in bound.iter().flatten() {
        assert!(
            inner.bindings.of(code).contains_key(code),
            "a binding was evicted"
        );
    }
    assert!(store.pressure().evicted > 0);
}

#[test]
fn bindings_are_never_evicted_and_may_evict_pending_ones() {
    let store = MemoryStore::builder().capacity(3).build();
    let codes = [key("code", 0), key("code", 1)];
    store.admit_binding_now(&codes[0], binding(), LONG).unwrap();
    // A tick apart or more, so that their age tells them apart.
    for i in 0..2 {
        store
            .insert_pending_now(&key("p", i), pending(), LONG, None)
            .unwrap();
        std::thread::sleep(Duration::from_millis(70));
    }
    // A new pending authorization takes a pending one's room.
    store
        .insert_pending_now(&key("p", 2), pending(), LONG, None)
        .unwrap();
    assert!(store.get_pending_now(&key("p", 0)).is_none());
    // So does a binding admitted at the bound.
    store.admit_binding_now(&codes[1], binding(), LONG).unwrap();
    assert!(store.get_pending_now(&key("p", 1)).is_none());
    // A binding whose pending record's room was taken meanwhile takes
    // it back from another pending record.
    let record = store.take_pending_now(&key("p", 2)).unwrap();
    store
        .insert_pending_now(&key("p", 3), pending(), LONG, None)
        .unwrap();
    store
        .insert_binding_now(&key("code", 2), record.binding(), LONG)
        .unwrap();
    assert!(store.get_pending_now(&key("p", 3)).is_none());
    assert_eq!(store.inner.len.load(Ordering::Acquire), 3);
    // Full of bindings: a pending write is refused, and none goes.
    assert!(matches!(
        store.insert_pending_now(&key("p", 4), pending(), LONG, None),
        Err(StoreError::Full)
    ));
    for code in [codes[0], codes[1], key("code", 2)] {
        assert!(matches!(store.redeem_now(&code), Redemption::Redeemed(_)));
    }
    assert_eq!(store.pressure().evicted, 3);
}

#[test]
fn the_eviction_queue_stays_within_twice_the_records() {
    let store = MemoryStore::new();
    for i in 0..20_000 {
        let k = key("brief", i);
        store.insert_pending_now(&k, pending(), LONG, None).unwrap();
        assert!(store.take_pending_now(&k).is_some());
    }
    let queued: usize = store
        .inner
        .arrivals
        .iter()
        .map(|a| lock(a).queue.len())
        .sum();
    assert!(queued <= SEGMENTS * MIN_COMPACT, "{queued}");
}

fn ready_stats(store: &MemoryStore) -> StoreStats {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::pin!(store.stats()).poll(&mut cx) {
        std::task::Poll::Ready(Ok(stats)) => stats,
        _ => panic!("the memory store's futures are ready"),
    }
}
