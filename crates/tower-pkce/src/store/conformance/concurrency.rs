//! Checks of races and counts: one winner among concurrent redemptions and takes, and stats of both families.

use super::*;

pub async fn concurrent_redeem_has_one_winner<S: Store, F: Future<Output = S>>(
    make: impl Fn(usize, Duration) -> F,
) {
    let store = make(ROOMY, MARK_TTL).await;
    let key = fresh_key();
    store
        .insert_binding(&key, sample_binding(), TTL)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let store = store.clone();
        tasks.push(tokio::spawn(
            async move { store.redeem(&key).await.unwrap() },
        ));
    }
    let mut winners = 0;
    for task in tasks {
        match task.await.unwrap() {
            Redemption::Redeemed(_) => winners += 1,
            Redemption::Spent => {}
            Redemption::Expired | Redemption::Missing => {
                panic!("binding vanished during the race")
            }
        }
    }
    assert_eq!(winners, 1);
}

pub async fn concurrent_take_pending_has_one_winner<S: Store, F: Future<Output = S>>(
    make: impl Fn(usize, Duration) -> F,
) {
    let store = make(ROOMY, MARK_TTL).await;
    let key = fresh_key();
    store
        .insert_pending(&key, sample_pending(None), TTL, None)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.take_pending(&key).await.unwrap()
        }));
    }
    let mut winners = 0;
    for task in tasks {
        winners += usize::from(task.await.unwrap().is_some());
    }
    assert_eq!(winners, 1);
}

pub async fn stats_count_both_families<S: Store, F: Future<Output = S>>(
    make: impl Fn(usize, Duration) -> F,
) {
    let store = make(ROOMY, MARK_TTL).await;
    let before = store.stats().await.unwrap();
    store
        .insert_pending(&fresh_key(), sample_pending(None), TTL, None)
        .await
        .unwrap();
    store
        .insert_pending(&fresh_key(), sample_pending(None), TTL, None)
        .await
        .unwrap();
    store
        .insert_binding(&fresh_key(), sample_binding(), TTL)
        .await
        .unwrap();
    let code = fresh_key();
    bind_and_redeem(&store, &code, TTL).await;
    let after = store.stats().await.unwrap();
    assert_eq!(after.pending - before.pending, 2);
    // A spent binding is still counted: it is kept until its TTL ends.
    assert_eq!(after.bindings - before.bindings, 2);
}
