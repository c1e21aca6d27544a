//! One behaviour for every backend: the store conformance suite.
//!
//! Each function checks one property of a [`Store`] and panics when the
//! backend breaks it. [`store_conformance_tests!`](crate::store_conformance_tests)
//! turns them into one `#[tokio::test]` each:
//!
//! ```ignore
//! tower_pkce::store_conformance_tests!(|capacity, mark_ttl| async move {
//!     MemoryStore::builder()
//!         .capacity(capacity)
//!         .mark_ttl(mark_ttl)
//!         .build()
//! });
//! ```
//!
//! The factory receives the capacity bound and the mark lifetime the check
//! needs, and must return an empty store. Checks that wait for expiry sleep
//! for about a second, and those that wait for a mark to end for three.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::future::Future;
use std::time::Duration;

use super::{
    Challenge, CodeBinding, PendingAuthorization, Redemption, Store, StoreError, StoreKey,
    fingerprint,
};
use crate::pkce::ChallengeMethod;

/// A capacity large enough that no check reaches it unless it means to.
pub const ROOMY: usize = 10_000;
const TTL: Duration = Duration::from_secs(60);
const SHORT_TTL: Duration = Duration::from_millis(300);
/// Past [`SHORT_TTL`], and well within [`MARK_TTL`].
const PAST_SHORT_TTL: Duration = Duration::from_millis(1200);
/// The mark lifetime every check's store is made with.
pub const MARK_TTL: Duration = Duration::from_secs(2);
/// Past [`MARK_TTL`], counted from the binding.
const PAST_MARK_TTL: Duration = Duration::from_millis(3000);
/// A binding TTL longer than [`PAST_MARK_TTL`].
const LONGER_THAN_MARK: Duration = Duration::from_secs(4);

/// A key unique to this run, so that suites on a shared backend do not meet.
pub fn fresh_key() -> StoreKey {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("random key");
    StoreKey::from_bytes(bytes)
}

pub fn sample_pending(state: Option<&str>) -> PendingAuthorization {
    PendingAuthorization {
        challenge: Some(Challenge {
            method: ChallengeMethod::S256,
            digest: [7; 32],
        }),
        client: fingerprint("client-a"),
        redirect_uri: Some(fingerprint("https://client.example/cb")),
        state: state.map(Into::into),
    }
}

pub fn sample_binding() -> CodeBinding {
    sample_pending(None).binding()
}

/// Binds `key` for `ttl` and redeems it: a spent binding.
async fn bind_and_redeem<S: Store>(store: &S, key: &StoreKey, ttl: Duration) {
    store
        .insert_binding(key, sample_binding(), ttl)
        .await
        .unwrap();
    assert!(matches!(
        store.redeem(key).await.unwrap(),
        Redemption::Redeemed(_)
    ));
}

/// A pending write at the capacity bound, where `pending` are the pending
/// records the store holds: refused with [`StoreError::Full`] (`None`), or
/// admitted by evicting exactly one of them, never a binding (`Some`).
/// `pending` follows: the evicted record leaves it, the new one joins it.
async fn write_at_bound<S: Store>(store: &S, pending: &mut Vec<StoreKey>) -> Option<StoreKey> {
    let key = fresh_key();
    match store
        .insert_pending(&key, sample_pending(None), TTL, None)
        .await
    {
        Err(StoreError::Full) => None,
        Ok(()) => {
            let mut gone = Vec::new();
            for k in pending.iter() {
                if store.get_pending(k).await.unwrap().is_none() {
                    gone.push(*k);
                }
            }
            assert_eq!(gone.len(), 1, "one pending record makes room");
            assert!(store.get_pending(&key).await.unwrap().is_some());
            pending.retain(|k| !gone.contains(k));
            pending.push(key);
            gone.first().copied()
        }
        Err(e) => panic!("{e:?}"),
    }
}

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

/// Generates one `#[tokio::test]` per conformance check for a backend.
///
/// The argument is a factory `Fn(usize, Duration) -> impl Future<Output = S>`
/// that makes an empty store with the given capacity and mark lifetime. The
/// calling crate needs `tokio` with the `macros` and `rt-multi-thread`
/// features.
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:expr) => {
        $crate::store_conformance_tests!(@each $make;
            pending_round_trip, pending_without_state_or_challenge,
            get_pending_reads_without_taking, get_pending_never_returns_an_expired_record,
            pending_conflict,
            unknown_keys, families_are_separate, binding_single_use, binding_restore,
            binding_without_challenge, binding_conflict, admitted_binding_round_trip,
            admission_is_bounded_by_capacity, admission_hint_refuses_only_a_full_store,
            pending_expires, binding_expires, a_mark_never_ends_before_its_binding,
            restore_keeps_the_binding_own_expiry, restore_needs_a_spent_code,
            spent_binding_expires, marks_hold_no_room,
            capacity_bounds_new_authorizations, capacity_recovers_after_expiry,
            concurrent_redeem_has_one_winner, concurrent_take_pending_has_one_winner,
            stats_count_both_families);
    };
    (@each $make:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                $crate::store::conformance::$check($make).await;
            }
        )*
    };
}
