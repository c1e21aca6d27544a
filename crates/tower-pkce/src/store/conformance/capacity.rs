//! Checks of the capacity bound: admission, the hint, marks that hold no room, and recovery after expiry.

use super::*;

pub async fn admission_is_bounded_by_capacity<S: Store, F: Future<Output = S>>(
    make: impl Fn(usize, Duration) -> F,
) {
    let store = make(2, MARK_TTL).await;
    assert!(store.admission_hint(None).is_ok());
    let pending = fresh_key();
    store
        .insert_pending(&pending, sample_pending(None), TTL, None)
        .await
        .unwrap();
    let first = fresh_key();
    store
        .admit_binding(&first, sample_binding(), TTL)
        .await
        .unwrap();
    // At the bound, a new authorization is refused or evicts the pending
    // record; never the binding.
    let evicted = write_at_bound(&store, &mut vec![pending]).await;
    assert!(matches!(
        store.redeem(&first).await.unwrap(),
        Redemption::Redeemed(_)
    ));
    // A flow in progress still binds its code.
    let taken = store.take_pending(&pending).await.unwrap();
    let Some(record) = taken else {
        // Evicted for the new authorization, which holds its room now.
        assert!(evicted.is_some());
        return;
    };
    let code = fresh_key();
    store
        .insert_binding(&code, record.binding(), TTL)
        .await
        .unwrap();
    // Full of bindings: nothing is admitted, and a spent code frees no
    // room, since it is kept until it expires.
    assert!(matches!(
        store.redeem(&code).await.unwrap(),
        Redemption::Redeemed(_)
    ));
    let refused = fresh_key();
    let over = store.admit_binding(&refused, sample_binding(), TTL).await;
    assert!(matches!(over, Err(StoreError::Full)), "{over:?}");
    assert_eq!(store.redeem(&refused).await.unwrap(), Redemption::Missing);
    let over = store
        .insert_pending(&fresh_key(), sample_pending(None), TTL, None)
        .await;
    assert!(matches!(over, Err(StoreError::Full)), "{over:?}");
    // A hint may refuse here, or not know; it never refuses with room.
    assert!(matches!(
        store.admission_hint(None),
        Ok(()) | Err(StoreError::Full)
    ));
}

pub async fn admission_hint_refuses_only_a_full_store<S: Store, F: Future<Output = S>>(
    make: impl Fn(usize, Duration) -> F,
) {
    let store = make(1, MARK_TTL).await;
    assert!(store.admission_hint(None).is_ok());
    let key = fresh_key();
    store
        .insert_pending(&key, sample_pending(None), TTL, None)
        .await
        .unwrap();
    assert!(matches!(
        store.admission_hint(None),
        Ok(()) | Err(StoreError::Full)
    ));
    store.take_pending(&key).await.unwrap().unwrap();
    assert!(store.admission_hint(None).is_ok());
    store
        .admit_binding(&fresh_key(), sample_binding(), TTL)
        .await
        .unwrap();
}

pub async fn marks_hold_no_room<S: Store, F: Future<Output = S>>(
    make: impl Fn(usize, Duration) -> F,
) {
    let store = make(2, MARK_TTL).await;
    let started = tokio::time::Instant::now();
    let codes = [fresh_key(), fresh_key()];
    for code in &codes {
        store
            .admit_binding(code, sample_binding(), SHORT_TTL)
            .await
            .unwrap();
    }
    let full = store
        .insert_pending(&fresh_key(), sample_pending(None), TTL, None)
        .await;
    assert!(matches!(full, Err(StoreError::Full)), "{full:?}");
    tokio::time::sleep_until(started + PAST_SHORT_TTL).await;
    store
        .insert_pending(&fresh_key(), sample_pending(None), TTL, None)
        .await
        .unwrap();
    store
        .admit_binding(&fresh_key(), sample_binding(), TTL)
        .await
        .unwrap();
    for code in &codes {
        assert_eq!(store.redeem(code).await.unwrap(), Redemption::Expired);
    }
}

pub async fn capacity_bounds_new_authorizations<S: Store, F: Future<Output = S>>(
    make: impl Fn(usize, Duration) -> F,
) {
    let store = make(4, MARK_TTL).await;
    let mut keys: Vec<StoreKey> = (0..4).map(|_| fresh_key()).collect();
    for key in &keys {
        store
            .insert_pending(key, sample_pending(None), TTL, None)
            .await
            .unwrap();
    }
    write_at_bound(&store, &mut keys).await;

    // A flow in progress goes on at the bound: its pending record becomes a
    // binding, and the binding is redeemed.
    let first = keys.first().copied().unwrap();
    let record = store.take_pending(&first).await.unwrap().unwrap();
    let code = fresh_key();
    store
        .insert_binding(&code, record.binding(), TTL)
        .await
        .unwrap();
    assert!(matches!(
        store.redeem(&code).await.unwrap(),
        Redemption::Redeemed(_)
    ));
    keys.remove(0);
    write_at_bound(&store, &mut keys).await;

    // Taking a pending record frees its room: the next write evicts
    // nothing.
    let second = keys.first().copied().unwrap();
    store.take_pending(&second).await.unwrap().unwrap();
    keys.remove(0);
    store
        .insert_pending(&fresh_key(), sample_pending(None), TTL, None)
        .await
        .unwrap();
    for key in &keys {
        assert!(store.get_pending(key).await.unwrap().is_some());
    }
    assert!(matches!(
        store.redeem(&code).await.unwrap(),
        Redemption::Spent
    ));
}

pub async fn capacity_recovers_after_expiry<S: Store, F: Future<Output = S>>(
    make: impl Fn(usize, Duration) -> F,
) {
    let store = make(2, MARK_TTL).await;
    for _ in 0..2 {
        store
            .insert_pending(&fresh_key(), sample_pending(None), SHORT_TTL, None)
            .await
            .unwrap();
    }
    // Full of pending records: refused, or one is evicted.
    let result = store
        .insert_pending(&fresh_key(), sample_pending(None), SHORT_TTL, None)
        .await;
    assert!(
        matches!(result, Ok(()) | Err(StoreError::Full)),
        "{result:?}"
    );
    tokio::time::sleep(PAST_SHORT_TTL).await;
    store
        .insert_pending(&fresh_key(), sample_pending(None), TTL, None)
        .await
        .unwrap();
}
