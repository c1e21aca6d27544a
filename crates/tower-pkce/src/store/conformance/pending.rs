//! Checks of pending authorizations: round trips, reads, conflicts, unknown keys, and the two families kept apart.

use super::*;

pub async fn pending_round_trip<S: Store, F: Future<Output = S>>(
    make: impl Fn(usize, Duration) -> F,
) {
    let store = make(ROOMY, MARK_TTL).await;
    let key = fresh_key();
    let record = sample_pending(Some("xyz &=é"));
    store
        .insert_pending(&key, record.clone(), TTL, None)
        .await
        .unwrap();
    assert!(store.get_pending(&key).await.unwrap().is_some());
    assert_eq!(store.take_pending(&key).await.unwrap(), Some(record));
    assert_eq!(store.take_pending(&key).await.unwrap(), None);
    assert!(store.get_pending(&key).await.unwrap().is_none());
}

pub async fn pending_without_state_or_challenge<S: Store, F: Future<Output = S>>(
    make: impl Fn(usize, Duration) -> F,
) {
    let store = make(ROOMY, MARK_TTL).await;
    let key = fresh_key();
    let record = PendingAuthorization {
        challenge: None,
        client: fingerprint("c"),
        redirect_uri: None,
        state: None,
    };
    store
        .insert_pending(&key, record.clone(), TTL, None)
        .await
        .unwrap();
    assert_eq!(store.take_pending(&key).await.unwrap(), Some(record));
}

pub async fn get_pending_reads_without_taking<S: Store, F: Future<Output = S>>(
    make: impl Fn(usize, Duration) -> F,
) {
    let store = make(ROOMY, MARK_TTL).await;
    let full = fresh_key();
    let record = sample_pending(Some("xyz &=é"));
    store
        .insert_pending(&full, record.clone(), TTL, None)
        .await
        .unwrap();
    let bare = fresh_key();
    let bare_record = PendingAuthorization {
        challenge: Some(Challenge {
            method: ChallengeMethod::Plain,
            digest: [3; 32],
        }),
        client: fingerprint("client-b"),
        redirect_uri: None,
        state: None,
    };
    store
        .insert_pending(&bare, bare_record.clone(), TTL, None)
        .await
        .unwrap();
    // Every field comes back, and reading twice takes nothing.
    for _ in 0..2 {
        assert_eq!(
            store.get_pending(&full).await.unwrap().as_ref(),
            Some(&record)
        );
        assert_eq!(
            store.get_pending(&bare).await.unwrap().as_ref(),
            Some(&bare_record)
        );
    }
    assert_eq!(store.take_pending(&full).await.unwrap(), Some(record));
    assert_eq!(store.get_pending(&full).await.unwrap(), None);
    assert_eq!(store.take_pending(&bare).await.unwrap(), Some(bare_record));
    // Absent, or in the other family only.
    assert_eq!(store.get_pending(&fresh_key()).await.unwrap(), None);
    let code = fresh_key();
    store
        .insert_binding(&code, sample_binding(), TTL)
        .await
        .unwrap();
    assert_eq!(store.get_pending(&code).await.unwrap(), None);
}

pub async fn get_pending_never_returns_an_expired_record<S: Store, F: Future<Output = S>>(
    make: impl Fn(usize, Duration) -> F,
) {
    let store = make(ROOMY, MARK_TTL).await;
    let key = fresh_key();
    store
        .insert_pending(&key, sample_pending(Some("s")), SHORT_TTL, None)
        .await
        .unwrap();
    assert_eq!(
        store.get_pending(&key).await.unwrap(),
        Some(sample_pending(Some("s")))
    );
    tokio::time::sleep(PAST_SHORT_TTL).await;
    assert_eq!(store.get_pending(&key).await.unwrap(), None);
    assert_eq!(store.take_pending(&key).await.unwrap(), None);
}

pub async fn pending_conflict<S: Store, F: Future<Output = S>>(
    make: impl Fn(usize, Duration) -> F,
) {
    let store = make(ROOMY, MARK_TTL).await;
    let key = fresh_key();
    store
        .insert_pending(&key, sample_pending(None), TTL, None)
        .await
        .unwrap();
    let second = store
        .insert_pending(&key, sample_pending(Some("other")), TTL, None)
        .await;
    assert!(matches!(second, Err(StoreError::Conflict)), "{second:?}");
    assert_eq!(
        store.take_pending(&key).await.unwrap(),
        Some(sample_pending(None))
    );
}

pub async fn unknown_keys<S: Store, F: Future<Output = S>>(make: impl Fn(usize, Duration) -> F) {
    let store = make(ROOMY, MARK_TTL).await;
    let key = fresh_key();
    assert!(store.get_pending(&key).await.unwrap().is_none());
    assert_eq!(store.take_pending(&key).await.unwrap(), None);
    assert_eq!(store.redeem(&key).await.unwrap(), Redemption::Missing);
    store.restore(&key, sample_binding()).await.unwrap();
    assert_eq!(store.redeem(&key).await.unwrap(), Redemption::Missing);
}

pub async fn families_are_separate<S: Store, F: Future<Output = S>>(
    make: impl Fn(usize, Duration) -> F,
) {
    let store = make(ROOMY, MARK_TTL).await;
    let key = fresh_key();
    store
        .insert_pending(&key, sample_pending(None), TTL, None)
        .await
        .unwrap();
    assert_eq!(store.redeem(&key).await.unwrap(), Redemption::Missing);
    store
        .insert_binding(&key, sample_binding(), TTL)
        .await
        .unwrap();
    assert!(store.get_pending(&key).await.unwrap().is_some());
}
