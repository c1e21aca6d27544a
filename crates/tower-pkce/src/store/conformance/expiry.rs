//! Checks of expiry: pending records, bindings, marks, and restores that keep a binding's own expiry.

use super::*;

pub async fn pending_expires<S: Store, F: Future<Output = S>>(make: impl Fn(usize, Duration) -> F) {
    let store = make(ROOMY, MARK_TTL).await;
    let key = fresh_key();
    store
        .insert_pending(&key, sample_pending(None), SHORT_TTL, None)
        .await
        .unwrap();
    assert!(store.get_pending(&key).await.unwrap().is_some());
    tokio::time::sleep(PAST_SHORT_TTL).await;
    assert!(store.get_pending(&key).await.unwrap().is_none());
    assert_eq!(store.take_pending(&key).await.unwrap(), None);
}

pub async fn binding_expires<S: Store, F: Future<Output = S>>(make: impl Fn(usize, Duration) -> F) {
    let store = make(ROOMY, MARK_TTL).await;
    let started = tokio::time::Instant::now();
    let live = fresh_key();
    let spent = fresh_key();
    let admitted = fresh_key();
    store
        .insert_binding(&live, sample_binding(), SHORT_TTL)
        .await
        .unwrap();
    store
        .admit_binding(&admitted, sample_binding(), SHORT_TTL)
        .await
        .unwrap();
    bind_and_redeem(&store, &spent, SHORT_TTL).await;
    tokio::time::sleep_until(started + PAST_SHORT_TTL).await;
    // The bindings are over; their marks say what became of them, however
    // often they are asked.
    for _ in 0..2 {
        assert_eq!(store.redeem(&live).await.unwrap(), Redemption::Expired);
        assert_eq!(store.redeem(&admitted).await.unwrap(), Redemption::Expired);
        assert_eq!(store.redeem(&spent).await.unwrap(), Redemption::Spent);
    }
    // A restore after the binding's own expiry does nothing.
    store.restore(&spent, sample_binding()).await.unwrap();
    store.restore(&live, sample_binding()).await.unwrap();
    assert_eq!(store.redeem(&spent).await.unwrap(), Redemption::Spent);
    assert_eq!(store.redeem(&live).await.unwrap(), Redemption::Expired);
    // A marked code is bound once, whichever way it comes back.
    for key in [&live, &admitted, &spent] {
        let inserted = store.insert_binding(key, sample_binding(), TTL).await;
        assert!(
            matches!(inserted, Err(StoreError::Conflict)),
            "{inserted:?}"
        );
        let admitted = store.admit_binding(key, sample_binding(), TTL).await;
        assert!(
            matches!(admitted, Err(StoreError::Conflict)),
            "{admitted:?}"
        );
    }
    assert_eq!(store.redeem(&live).await.unwrap(), Redemption::Expired);
    assert_eq!(store.redeem(&spent).await.unwrap(), Redemption::Spent);

    tokio::time::sleep_until(started + PAST_MARK_TTL).await;
    for key in [&live, &admitted, &spent] {
        assert_eq!(store.redeem(key).await.unwrap(), Redemption::Missing);
    }
    store.restore(&spent, sample_binding()).await.unwrap();
    assert_eq!(store.redeem(&spent).await.unwrap(), Redemption::Missing);
    // Once its mark has ended, a code is unknown and may be bound again.
    bind_and_redeem(&store, &spent, TTL).await;
    assert_eq!(store.redeem(&spent).await.unwrap(), Redemption::Spent);
    store
        .admit_binding(&live, sample_binding(), TTL)
        .await
        .unwrap();
    assert!(matches!(
        store.redeem(&live).await.unwrap(),
        Redemption::Redeemed(_)
    ));
}

pub async fn a_mark_never_ends_before_its_binding<S: Store, F: Future<Output = S>>(
    make: impl Fn(usize, Duration) -> F,
) {
    let store = make(ROOMY, MARK_TTL).await;
    let started = tokio::time::Instant::now();
    let live = fresh_key();
    let spent = fresh_key();
    store
        .insert_binding(&live, sample_binding(), LONGER_THAN_MARK)
        .await
        .unwrap();
    bind_and_redeem(&store, &spent, LONGER_THAN_MARK).await;
    tokio::time::sleep_until(started + PAST_MARK_TTL).await;
    assert_eq!(store.redeem(&spent).await.unwrap(), Redemption::Spent);
    let again = store.insert_binding(&spent, sample_binding(), TTL).await;
    assert!(matches!(again, Err(StoreError::Conflict)), "{again:?}");
    assert_eq!(
        store.redeem(&live).await.unwrap(),
        Redemption::Redeemed(sample_binding())
    );
}

pub async fn restore_keeps_the_binding_own_expiry<S: Store, F: Future<Output = S>>(
    make: impl Fn(usize, Duration) -> F,
) {
    let store = make(ROOMY, MARK_TTL).await;
    let started = tokio::time::Instant::now();
    let key = fresh_key();
    let binding = sample_binding();
    store
        .insert_binding(&key, binding, SHORT_TTL)
        .await
        .unwrap();
    for failures in 1..=2 {
        assert!(matches!(
            store.redeem(&key).await.unwrap(),
            Redemption::Redeemed(_)
        ));
        store
            .restore(
                &key,
                CodeBinding {
                    failures,
                    ..binding
                },
            )
            .await
            .unwrap();
    }
    // Restored twice, yet it ends when the binding would have, not when
    // its mark does; and it ended unredeemed.
    tokio::time::sleep_until(started + PAST_SHORT_TTL).await;
    assert_eq!(store.redeem(&key).await.unwrap(), Redemption::Expired);
    store.restore(&key, binding).await.unwrap();
    assert_eq!(store.redeem(&key).await.unwrap(), Redemption::Expired);
}

pub async fn restore_needs_a_spent_code<S: Store, F: Future<Output = S>>(
    make: impl Fn(usize, Duration) -> F,
) {
    let store = make(ROOMY, MARK_TTL).await;
    let key = fresh_key();
    let binding = sample_binding();
    store.insert_binding(&key, binding, TTL).await.unwrap();
    // A live binding is not replaced by a restore.
    let other = CodeBinding {
        failures: 3,
        ..binding
    };
    store.restore(&key, other).await.unwrap();
    assert_eq!(
        store.redeem(&key).await.unwrap(),
        Redemption::Redeemed(binding)
    );
    store.restore(&key, other).await.unwrap();
    // Restored once, it is live once.
    store.restore(&key, binding).await.unwrap();
    assert_eq!(
        store.redeem(&key).await.unwrap(),
        Redemption::Redeemed(other)
    );
    assert_eq!(store.redeem(&key).await.unwrap(), Redemption::Spent);
}

pub async fn spent_binding_expires<S: Store, F: Future<Output = S>>(
    make: impl Fn(usize, Duration) -> F,
) {
    let store = make(2, MARK_TTL).await;
    let started = tokio::time::Instant::now();
    let code = fresh_key();
    bind_and_redeem(&store, &code, SHORT_TTL).await;
    let pending = fresh_key();
    store
        .insert_pending(&pending, sample_pending(None), TTL, None)
        .await
        .unwrap();
    // The spent code still holds its room until its TTL ends: a new
    // authorization is refused, or takes the pending record's room.
    write_at_bound(&store, &mut vec![pending]).await;
    tokio::time::sleep_until(started + PAST_SHORT_TTL).await;
    // Its mark holds none.
    store
        .insert_pending(&fresh_key(), sample_pending(None), TTL, None)
        .await
        .unwrap();
    assert_eq!(store.redeem(&code).await.unwrap(), Redemption::Spent);
}
