//! Binding: a code bound to the pending authorization it answers, and the
//! pending record of a transaction that goes on.

use crate::error::Rejection;
use crate::shared::Shared;
use crate::store::{PendingAuthorization, Store, StoreError, StoreKey};
use crate::{Source, handle};

/// The handle an authorization request was given, and the record of its
/// transaction. The record is written only once the upstream's answer shows
/// that the flow goes on (a login page): when the code comes back on that
/// very answer, it is bound at once, with one store write instead of three.
pub(crate) struct Minted {
    pub(crate) handle: handle::Handle,
    pub(crate) record: PendingAuthorization,
    /// Where the request came from, for the store's per-source quota.
    pub(crate) source: Option<Source>,
}

impl<St: Store> Shared<St> {
    /// Binds the code (if any) to the pending authorization behind `handle`,
    /// and returns the client's original state, when `to_client` finds that
    /// the delivery goes to the transaction's own client (invariant I3).
    /// When `handle` is the one this request minted, its record is
    /// `minted`'s and is taken from there: it was never written to the
    /// store. Either way the transaction is over: a handle delivers once.
    pub(crate) async fn complete_transaction(
        &self,
        handle: &str,
        code: Option<&str>,
        to_client: impl FnOnce(&PendingAuthorization) -> bool,
        minted: &mut Option<Minted>,
    ) -> Result<Option<Box<str>>, Rejection> {
        let own = minted.take_if(|m| m.handle.as_bytes() == handle.as_bytes());
        let (pending, holds_room) = match own {
            Some(own) => (own.record, false),
            None => match self.store.take_pending(&StoreKey::of(handle)).await {
                Ok(Some(pending)) => (pending, true),
                Ok(None) => {
                    tracing::warn!(
                        reason = Rejection::TransactionExpired.as_str(),
                        "upstream answered a transaction that expired; response withheld"
                    );
                    return Err(Rejection::TransactionExpired);
                }
                Err(e) => {
                    tracing::error!(error = %e, "store failed while completing a transaction");
                    return Err(Rejection::StoreUnavailable);
                }
            },
        };
        if !to_client(&pending) {
            tracing::warn!(
                reason = Rejection::ForeignDelivery.as_str(),
                "upstream delivered a transaction's result elsewhere than its redirect_uri; response withheld"
            );
            return Err(Rejection::ForeignDelivery);
        }
        let Some(code) = code else {
            tracing::info!("upstream answered with an error; state restored");
            return Ok(pending.state);
        };
        let binding = pending.binding();
        let key = StoreKey::of(code);
        let ttl = self.config.ttl;
        // A binding takes over the room of the pending record it replaces;
        // one whose record was never written must be admitted.
        let bound = if holds_room {
            self.store.insert_binding(&key, binding, ttl).await
        } else {
            self.store.admit_binding(&key, binding, ttl).await
        };
        match bound {
            Ok(()) => {
                tracing::info!(
                    method = binding.challenge.map_or("none", |c| c.method.as_str()),
                    "code bound"
                );
                Ok(pending.state)
            }
            Err(StoreError::Full) => {
                tracing::warn!(
                    reason = Rejection::StoreFull.as_str(),
                    "store full when binding a code; response withheld"
                );
                Err(Rejection::StoreFull)
            }
            Err(StoreError::Conflict) => {
                tracing::error!(
                    reason = Rejection::CodeReissued.as_str(),
                    "upstream issued a code that is already bound; response withheld"
                );
                Err(Rejection::CodeReissued)
            }
            Err(e) => {
                tracing::error!(error = %e, "store failed while binding a code");
                Err(Rejection::StoreUnavailable)
            }
        }
    }

    /// Writes the pending authorization of a transaction that the upstream's
    /// answer did not complete (a login page, a consent form), before that
    /// answer reaches the client: the requests that go on with the flow find
    /// it, on this replica or another.
    pub(crate) async fn record_pending(&self, minted: Minted) -> Result<(), Rejection> {
        let method = minted
            .record
            .challenge
            .map_or("none", |c| c.method.as_str());
        let key = StoreKey::of(&minted.handle);
        match self
            .store
            .insert_pending(&key, minted.record, self.config.ttl, minted.source)
            .await
        {
            Ok(()) => {
                tracing::info!(endpoint = "authorize", method, "challenge recorded");
                Ok(())
            }
            Err(StoreError::SourceQuota) => {
                tracing::info!(
                    reason = Rejection::SourceQuota.as_str(),
                    "source at its quota when recording an authorization; response withheld"
                );
                Err(Rejection::SourceQuota)
            }
            Err(StoreError::Full) => {
                tracing::warn!(
                    reason = Rejection::StoreFull.as_str(),
                    "store full when recording an authorization; response withheld"
                );
                Err(Rejection::StoreFull)
            }
            Err(e) => {
                tracing::error!(error = %e, "store failed while recording an authorization");
                Err(Rejection::StoreUnavailable)
            }
        }
    }
}
