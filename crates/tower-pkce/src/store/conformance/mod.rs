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

mod bindings;
mod capacity;
mod concurrency;
mod expiry;
mod pending;

pub use bindings::*;
pub use capacity::*;
pub use concurrency::*;
pub use expiry::*;
pub use pending::*;

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
