//! Checks of code bindings: single use, restore, conflicts and admission.

use super::*;

pub async fn binding_single_use<S: Store, F: Future<Output = S>>(
    make: impl Fn(usize, Duration) -> F,
) {
    let store = make(ROOMY, MARK_TTL).await;
    let key = fresh_key();
    let binding = sample_binding();
    store.insert_binding(&key, binding, TTL).await.unwrap();
    assert_eq!(
        store.redeem(&key).await.unwrap(),
        Redemption::Redeemed(binding)
    );
    assert_eq!(store.redeem(&key).await.unwrap(), Redemption::Spent);
    assert_eq!(store.redeem(&key).await.unwrap(), Redemption::Spent);
}

pub async fn binding_restore<S: Store, F: Future<Output = S>>(make: impl Fn(usize, Duration) -> F) {
    let store = make(ROOMY, MARK_TTL).await;
    let key = fresh_key();
    let binding = sample_binding();
    store.insert_binding(&key, binding, TTL).await.unwrap();
    assert!(matches!(
        store.redeem(&key).await.unwrap(),
        Redemption::Redeemed(_)
    ));
    let counted = CodeBinding {
        failures: 2,
        ..binding
    };
    store.restore(&key, counted).await.unwrap();
    assert_eq!(
        store.redeem(&key).await.unwrap(),
        Redemption::Redeemed(counted)
    );
}

pub async fn binding_without_challenge<S: Store, F: Future<Output = S>>(
    make: impl Fn(usize, Duration) -> F,
) {
    let store = make(ROOMY, MARK_TTL).await;
    let key = fresh_key();
    let binding = CodeBinding {
        challenge: None,
        client: fingerprint("c"),
        redirect_uri: None,
        failures: 0,
    };
    store.insert_binding(&key, binding, TTL).await.unwrap();
    assert_eq!(
        store.redeem(&key).await.unwrap(),
        Redemption::Redeemed(binding)
    );
}

pub async fn binding_conflict<S: Store, F: Future<Output = S>>(
    make: impl Fn(usize, Duration) -> F,
) {
    let store = make(ROOMY, MARK_TTL).await;
    let key = fresh_key();
    store
        .insert_binding(&key, sample_binding(), TTL)
        .await
        .unwrap();
    let again = store.insert_binding(&key, sample_binding(), TTL).await;
    assert!(matches!(again, Err(StoreError::Conflict)), "{again:?}");
    // A spent code may not be bound afresh either: that would make it
    // redeemable a second time.
    assert!(matches!(
        store.redeem(&key).await.unwrap(),
        Redemption::Redeemed(_)
    ));
    let after_use = store.insert_binding(&key, sample_binding(), TTL).await;
    assert!(
        matches!(after_use, Err(StoreError::Conflict)),
        "{after_use:?}"
    );
    assert_eq!(store.redeem(&key).await.unwrap(), Redemption::Spent);
}

pub async fn admitted_binding_round_trip<S: Store, F: Future<Output = S>>(
    make: impl Fn(usize, Duration) -> F,
) {
    let store = make(ROOMY, MARK_TTL).await;
    let key = fresh_key();
    let before = store.stats().await.unwrap();
    store
        .admit_binding(&key, sample_binding(), TTL)
        .await
        .unwrap();
    let after = store.stats().await.unwrap();
    assert_eq!(after.bindings - before.bindings, 1);
    assert_eq!(after.pending, before.pending);
    // Bound once, whichever way it was written.
    let again = store.admit_binding(&key, sample_binding(), TTL).await;
    assert!(matches!(again, Err(StoreError::Conflict)), "{again:?}");
    let inserted = store.insert_binding(&key, sample_binding(), TTL).await;
    assert!(
        matches!(inserted, Err(StoreError::Conflict)),
        "{inserted:?}"
    );
    assert_eq!(
        store.redeem(&key).await.unwrap(),
        Redemption::Redeemed(sample_binding())
    );
    assert_eq!(store.redeem(&key).await.unwrap(), Redemption::Spent);
    let after_use = store.admit_binding(&key, sample_binding(), TTL).await;
    assert!(
        matches!(after_use, Err(StoreError::Conflict)),
        "{after_use:?}"
    );
    // Nor is a code that insert_binding bound.
    let binding_key = fresh_key();
    store
        .insert_binding(&binding_key, sample_binding(), TTL)
        .await
        .unwrap();
    let over = store
        .admit_binding(&binding_key, sample_binding(), TTL)
        .await;
    assert!(matches!(over, Err(StoreError::Conflict)), "{over:?}");
}
