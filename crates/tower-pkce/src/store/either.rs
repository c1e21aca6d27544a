//! [`Either`]: a store that is one of two backends, chosen at run time,
//! with no boxing per call.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;

use super::{
    CodeBinding, PendingAuthorization, Redemption, Store, StoreError, StoreKey, StorePressure,
    StoreStats,
};
use crate::Source;

/// One of two stores, chosen at run time: every operation goes to the one
/// it holds.
///
/// [`Store`] is not object-safe (its operations return `impl Future`), so a
/// program that picks its backend from its configuration cannot hold a
/// `Box<dyn Store>`; it holds an `Either` instead. Each operation's future
/// is the chosen backend's own, in an enum: nothing is boxed. Nest it
/// (`Either<A, Either<B, C>>`) for more than two backends.
///
/// ```
/// # #[cfg(all(feature = "memory-store", feature = "redis-store"))]
/// # mod example {
/// use tower_pkce::PkceLayer;
/// use tower_pkce::store::{Either, MemoryStore, RedisStore, StoreError};
///
/// /// The store a configuration asks for: Redis when it names a server.
/// fn store(redis_url: Option<&str>) -> Result<Either<MemoryStore, RedisStore>, StoreError> {
///     Ok(match redis_url {
///         Some(url) => Either::Right(RedisStore::builder(url).build()?),
///         None => Either::Left(MemoryStore::new()),
///     })
/// }
///
/// fn layer(redis_url: Option<&str>) -> Result<(), StoreError> {
///     let layer = PkceLayer::strict().store(store(redis_url)?);
///     # let _ = layer;
///     Ok(())
/// }
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Either<A, B> {
    /// The first store.
    Left(A),
    /// The second store.
    Right(B),
}

pin_project! {
    /// The future of an operation on an [`Either`]: the chosen store's.
    #[project = EitherFutureProj]
    enum EitherFuture<L, R> {
        Left { #[pin] future: L },
        Right { #[pin] future: R },
    }
}

impl<T, L: Future<Output = T>, R: Future<Output = T>> Future for EitherFuture<L, R> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match self.project() {
            EitherFutureProj::Left { future } => future.poll(cx),
            EitherFutureProj::Right { future } => future.poll(cx),
        }
    }
}

/// Calls the same operation on whichever store `$either` holds, as a future.
macro_rules! each {
    ($either:expr, $store:ident => $call:expr) => {
        match $either {
            Either::Left($store) => EitherFuture::Left { future: $call },
            Either::Right($store) => EitherFuture::Right { future: $call },
        }
    };
}

impl<A: Store, B: Store> Store for Either<A, B> {
    fn insert_pending(
        &self,
        key: &StoreKey,
        record: PendingAuthorization,
        ttl: Duration,
        source: Option<Source>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        each!(self, s => s.insert_pending(key, record, ttl, source))
    }

    fn get_pending(
        &self,
        key: &StoreKey,
    ) -> impl Future<Output = Result<Option<PendingAuthorization>, StoreError>> + Send {
        each!(self, s => s.get_pending(key))
    }

    fn take_pending(
        &self,
        key: &StoreKey,
    ) -> impl Future<Output = Result<Option<PendingAuthorization>, StoreError>> + Send {
        each!(self, s => s.take_pending(key))
    }

    fn insert_binding(
        &self,
        key: &StoreKey,
        binding: CodeBinding,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        each!(self, s => s.insert_binding(key, binding, ttl))
    }

    fn admit_binding(
        &self,
        key: &StoreKey,
        binding: CodeBinding,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        each!(self, s => s.admit_binding(key, binding, ttl))
    }

    fn redeem(
        &self,
        key: &StoreKey,
    ) -> impl Future<Output = Result<Redemption, StoreError>> + Send {
        each!(self, s => s.redeem(key))
    }

    fn restore(
        &self,
        key: &StoreKey,
        binding: CodeBinding,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        each!(self, s => s.restore(key, binding))
    }

    fn stats(&self) -> impl Future<Output = Result<StoreStats, StoreError>> + Send {
        each!(self, s => s.stats())
    }

    fn admission_hint(&self, source: Option<Source>) -> Result<(), StoreError> {
        match self {
            Self::Left(s) => s.admission_hint(source),
            Self::Right(s) => s.admission_hint(source),
        }
    }

    fn pressure(&self) -> StorePressure {
        match self {
            Self::Left(s) => s.pressure(),
            Self::Right(s) => s.pressure(),
        }
    }

    fn start_maintenance(&self) {
        match self {
            Self::Left(s) => s.start_maintenance(),
            Self::Right(s) => s.start_maintenance(),
        }
    }
}

#[cfg(all(test, feature = "memory-store"))]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn store(left: bool, capacity: usize) -> Either<MemoryStore, MemoryStore> {
        let store = MemoryStore::builder().capacity(capacity).build();
        if left {
            Either::Left(store)
        } else {
            Either::Right(store)
        }
    }

    #[tokio::test]
    async fn every_operation_reaches_the_chosen_store() {
        for left in [true, false] {
            let either = store(left, 1);
            let inner = match &either {
                Either::Left(s) | Either::Right(s) => s.clone(),
            };
            let ttl = Duration::from_secs(60);
            let pending = PendingAuthorization {
                challenge: None,
                client: [1; 16],
                redirect_uri: None,
                state: Some("s".into()),
            };
            let key = StoreKey::of("handle");
            either
                .insert_pending(&key, pending.clone(), ttl, None)
                .await
                .unwrap();
            assert_eq!(
                inner.get_pending(&key).await.unwrap(),
                Some(pending.clone())
            );
            assert_eq!(
                either.get_pending(&key).await.unwrap(),
                Some(pending.clone())
            );
            assert!(matches!(
                either.admission_hint(None),
                Ok(()) | Err(StoreError::Full)
            ));
            assert_eq!(either.stats().await.unwrap().pending, 1);
            assert_eq!(
                either.take_pending(&key).await.unwrap(),
                Some(pending.clone())
            );
            assert_eq!(inner.get_pending(&key).await.unwrap(), None);

            let code = StoreKey::of("code");
            let binding = pending.binding();
            either.admit_binding(&code, binding, ttl).await.unwrap();
            assert!(matches!(
                either
                    .admit_binding(&StoreKey::of("other"), binding, ttl)
                    .await,
                Err(StoreError::Full)
            ));
            assert_eq!(
                either.redeem(&code).await.unwrap(),
                Redemption::Redeemed(binding)
            );
            either.restore(&code, binding).await.unwrap();
            assert_eq!(
                inner.redeem(&code).await.unwrap(),
                Redemption::Redeemed(binding)
            );
            either
                .insert_binding(&StoreKey::of("third"), binding, ttl)
                .await
                .unwrap();
            assert_eq!(either.stats().await.unwrap(), inner.stats().await.unwrap());
            assert_eq!(either.pressure(), inner.pressure());
            either.start_maintenance();
        }
    }
}
