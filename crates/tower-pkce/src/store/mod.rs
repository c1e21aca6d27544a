//! Where the middleware keeps its records, behind the [`Store`] trait.
//!
//! There are two families of records:
//!
//! - a [`PendingAuthorization`] is written when the upstream answers an
//!   authorization request that passed the policy without completing it (a
//!   login page), under the key of the transaction handle that replaces the
//!   client's `state`;
//! - a [`CodeBinding`] is written when the upstream issues a code for that
//!   handle, under the key of the code, and is redeemed once at the token
//!   endpoint. A code issued on the answer to the authorization request
//!   itself is bound at once ([`Store::admit_binding`]), with no pending
//!   record before it.
//!
//! Keys are [`StoreKey`]s, truncated SHA-256 digests of the handle or code, so
//! a dump of the store holds no live code. Both families expire after a TTL
//! and share one capacity bound.
//!
//! A store also remembers that a code was bound (a *mark*) for longer than
//! its binding: for the store's mark lifetime ([`DEFAULT_MARK_TTL`] unless
//! set), counted from when the code was bound, and never less than the
//! binding's own TTL. While the mark lives, the code cannot be bound again,
//! and a token request for it is answered [`Redemption::Spent`] or
//! [`Redemption::Expired`], never [`Redemption::Missing`]: in optional mode a
//! code once bound to a challenge never becomes redeemable without its
//! verifier because its binding ran out (invariant I2). Marks do not count
//! toward the capacity bound that admits new authorizations.
//!
//! # Under pressure
//!
//! A store may bound how many pending authorizations one [`Source`] holds
//! (a per-source quota, answered [`StoreError::SourceQuota`]), and may make
//! room for a new record at its capacity bound by evicting the oldest
//! pending authorization. A code binding is never evicted: a pending record
//! never takes a binding's room, and a binding that needs room may evict a
//! pending record. [`MemoryStore`] and `RedisStore` do both (the quota is
//! off unless set; `RedisStore` counts it in Redis, across replicas); the
//! trait's default is neither: a full store refuses.
//!
//! A user whose pending authorization was evicted (or expired) finds, at
//! their next step, that their sign-in is unknown: the continuation, or the
//! response that carries their code, is answered with
//! [`Rejection::TransactionExpired`](crate::Rejection::TransactionExpired),
//! a page saying the sign-in took too long and must be started again; a
//! code issued for it is withheld, never handed out unbound.
//!
//! [`MemoryStore`] is the embedded default. `RedisStore` (feature
//! `redis-store`) shares records between replicas. Other backends implement
//! [`Store`] and prove themselves with the conformance suite in
//! `store::conformance` (feature `conformance`). A program that chooses its
//! backend at run time holds an [`Either`] of two stores.

use std::fmt;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use crate::Source;
use crate::pkce::ChallengeMethod;

mod either;
pub use either::Either;

#[cfg(feature = "memory-store")]
mod memory;
#[cfg(feature = "memory-store")]
pub use memory::{DEFAULT_CAPACITY, DEFAULT_SWEEP_PERIOD, MemoryStore, MemoryStoreBuilder};

#[cfg(feature = "redis-store")]
mod redis;
#[cfg(feature = "redis-store")]
pub use redis::{
    DEFAULT_REDIS_CAPACITY, DEFAULT_REDIS_PREFIX, DEFAULT_REDIS_TIMEOUT, RedisStore,
    RedisStoreBuilder, RedisTls, check_settings as check_redis_settings,
};

#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;

#[cfg(all(feature = "fuzzing", feature = "redis-store"))]
pub(crate) use redis::fuzzing as redis_fuzzing;

/// The default mark lifetime: how long a store remembers that a code was
/// bound, counted from its binding (see the [module docs](self)).
pub const DEFAULT_MARK_TTL: Duration = Duration::from_secs(3600);

/// The key of a record: the first 128 bits of the SHA-256 digest of a
/// transaction handle or an authorization code.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct StoreKey([u8; 16]);

impl StoreKey {
    /// The key for a secret (a handle or a code).
    pub fn of(secret: &str) -> Self {
        Self(fingerprint(secret))
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// A key from its bytes, as a backend reads it back.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }
}

impl Hash for StoreKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // The key is already a uniform digest; its first eight bytes are a
        // hash as good as any a hasher could compute.
        let mut head = [0u8; 8];
        head.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(head));
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A digest prefix is no secret, and it lets logs correlate records.
        write!(f, "StoreKey(")?;
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

/// A 128-bit digest of a value that only needs comparing for equality later
/// (a `client_id`, a `redirect_uri`).
pub type Fingerprint = [u8; 16];

/// The first 128 bits of the SHA-256 digest of `value`.
pub fn fingerprint(value: impl AsRef<[u8]>) -> Fingerprint {
    let digest = crate::pkce::sha256(value.as_ref());
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// A recorded `code_challenge`: its method and the 32-byte digest a verifier
/// must hash to (see [`CodeChallenge::digest`](crate::CodeChallenge::digest)).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Challenge {
    /// The method the client asked for.
    pub method: ChallengeMethod,
    /// The digest a verifier is compared against.
    pub digest: [u8; 32],
}

impl fmt::Debug for Challenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Challenge")
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

/// An authorization request that passed the policy and waits for the upstream
/// to issue a code.
#[derive(Clone, PartialEq, Eq)]
pub struct PendingAuthorization {
    /// The challenge, or `None` when the policy let the client go without one.
    pub challenge: Option<Challenge>,
    /// The fingerprint of the request's `client_id`.
    pub client: Fingerprint,
    /// The fingerprint of the request's `redirect_uri`, if it had one.
    pub redirect_uri: Option<Fingerprint>,
    /// The client's own `state`, to be put back on the response, or `None`
    /// when the client sent none.
    pub state: Option<Box<str>>,
}

impl PendingAuthorization {
    /// The binding this authorization becomes once a code is issued.
    pub fn binding(&self) -> CodeBinding {
        CodeBinding {
            challenge: self.challenge,
            client: self.client,
            redirect_uri: self.redirect_uri,
            failures: 0,
        }
    }
}

impl fmt::Debug for PendingAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingAuthorization")
            .field("challenge", &self.challenge)
            .field("has_state", &self.state.is_some())
            .finish_non_exhaustive()
    }
}

/// What an issued authorization code is bound to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CodeBinding {
    /// The challenge the token request's verifier must match, or `None` when
    /// the code was issued without PKCE (optional mode).
    pub challenge: Option<Challenge>,
    /// The fingerprint of the `client_id` the code was issued to.
    pub client: Fingerprint,
    /// The fingerprint of the authorization request's `redirect_uri`.
    pub redirect_uri: Option<Fingerprint>,
    /// How many token requests for this code failed a check so far.
    pub failures: u8,
}

impl fmt::Debug for CodeBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CodeBinding")
            .field("challenge", &self.challenge)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

/// The outcome of [`Store::redeem`].
///
/// Only [`Missing`](Self::Missing) lets a token request go on without a
/// verifier (in optional mode); the store answers it only when it holds
/// neither a binding nor a live mark for the code.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Redemption {
    /// The binding was live and is now spent; the caller holds it.
    Redeemed(CodeBinding),
    /// The code was bound and has been redeemed (or burned: redeemed and
    /// not restored), and its mark is live.
    Spent,
    /// The code was bound, its binding's TTL ended without a redemption,
    /// and its mark is live.
    Expired,
    /// Neither a binding nor a live mark exists for the code: it was never
    /// bound, or bound longer ago than the mark lifetime (or, in a
    /// [`MemoryStore`] at its mark bound, its mark was dropped; see
    /// [`MemoryStoreBuilder::mark_capacity`]).
    Missing,
}

/// How many records a store holds. A backend that sweeps expired records
/// (`MemoryStore`) counts them until it does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Pending authorizations.
    pub pending: u64,
    /// Code bindings whose TTL has not ended: live ones, and spent ones,
    /// which keep their room until their TTL ends. With the pending
    /// authorizations, these are the records the capacity bound counts.
    pub bindings: u64,
    /// Marks of codes whose binding's TTL has ended (spent or not), which
    /// do not count toward the capacity bound; `None` when the backend does
    /// not count them (`RedisStore` keeps no index of its marks).
    pub marks: Option<u64>,
}

/// What a store did under pressure, since it was made: see
/// [`Store::pressure`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorePressure {
    /// Pending authorizations evicted to make room for new records.
    pub evicted: u64,
    /// Distinct sources that hold their whole quota of pending
    /// authorizations now, whose new authorizations are refused.
    pub sources_at_quota: u64,
}

/// Why a store operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// The capacity bound is reached: new authorizations must wait.
    Full,
    /// The source of a new pending authorization holds as many as the store
    /// allows one source; others are still admitted.
    SourceQuota,
    /// A record already exists under the key.
    Conflict,
    /// The backend could not be reached or answered with an error. The
    /// middleware fails closed: it answers 503 and forwards nothing.
    Unavailable(Box<dyn std::error::Error + Send + Sync>),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full => f.write_str("the store is full"),
            Self::SourceQuota => {
                f.write_str("the source holds its quota of pending authorizations")
            }
            Self::Conflict => f.write_str("a record already exists under this key"),
            Self::Unavailable(e) => write!(f, "the store is unavailable: {e}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Unavailable(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}

/// Storage for pending authorizations and code bindings.
///
/// Every operation is atomic with respect to the others on the same key, and
/// every operation may fail: the middleware answers a failure with 503 and
/// never forwards an unchecked token request.
///
/// Records expire after the TTL they were written with; an expired record is
/// never returned, whether or not it was swept yet.
pub trait Store: Clone + Send + Sync + 'static {
    /// Writes a pending authorization unless one exists under `key`, on
    /// behalf of `source` (the client that asked, when the layer knows it).
    ///
    /// A store with a per-source quota counts the record against `source`
    /// until it is taken, expires or is evicted; a `None` source counts
    /// against no quota. At the capacity bound, a store may evict the
    /// oldest pending authorization to make room, never a binding.
    ///
    /// # Errors
    ///
    /// [`StoreError::SourceQuota`] when `source` holds its quota,
    /// [`StoreError::Full`] when the capacity bound is reached and no room
    /// can be made, [`StoreError::Conflict`] when `key` is taken, or
    /// [`StoreError::Unavailable`].
    fn insert_pending(
        &self,
        key: &StoreKey,
        record: PendingAuthorization,
        ttl: Duration,
        source: Option<Source>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The live pending authorization under `key`, without removing it.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`].
    fn get_pending(
        &self,
        key: &StoreKey,
    ) -> impl Future<Output = Result<Option<PendingAuthorization>, StoreError>> + Send;

    /// Removes and returns the pending authorization under `key`. Of several
    /// concurrent calls, at most one gets the record.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`].
    fn take_pending(
        &self,
        key: &StoreKey,
    ) -> impl Future<Output = Result<Option<PendingAuthorization>, StoreError>> + Send;

    /// Binds a code for `ttl`, and marks it bound for the store's mark
    /// lifetime or `ttl`, whichever is longer. Bindings are admitted even at
    /// the capacity bound, because each one replaces the pending
    /// authorization it came from; marks are never a reason to refuse one.
    ///
    /// # Errors
    ///
    /// [`StoreError::Conflict`] when the code is bound already: its binding
    /// is live or its mark is (a code is bound once, ever, within the mark
    /// lifetime), or [`StoreError::Unavailable`].
    fn insert_binding(
        &self,
        key: &StoreKey,
        binding: CodeBinding,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Binds a code for which no pending authorization holds room: the
    /// upstream issued it on the response to the authorization request
    /// itself, so the middleware never wrote the pending record. The binding
    /// takes new room, and is admitted under the capacity bound exactly as
    /// [`insert_pending`](Store::insert_pending) is (evicting a pending
    /// authorization if the store evicts), with no per-source quota.
    ///
    /// # Errors
    ///
    /// [`StoreError::Full`] when the capacity bound is reached (nothing is
    /// written), [`StoreError::Conflict`] when the code is bound already
    /// (its binding or its mark is live), or [`StoreError::Unavailable`].
    fn admit_binding(
        &self,
        key: &StoreKey,
        binding: CodeBinding,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Atomically marks a live binding spent and returns it. Of several
    /// concurrent calls, at most one gets [`Redemption::Redeemed`].
    ///
    /// Otherwise the answer says what the store remembers of the code:
    /// [`Redemption::Spent`] when it was redeemed and its mark lives,
    /// [`Redemption::Expired`] when its binding's TTL ended unredeemed and
    /// its mark lives (an expired binding is read as its mark, whether or
    /// not it was swept yet), and [`Redemption::Missing`] only when there is
    /// neither a live binding nor a live mark.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`].
    fn redeem(&self, key: &StoreKey)
    -> impl Future<Output = Result<Redemption, StoreError>> + Send;

    /// Makes a spent binding live again until its own expiry: the end of the
    /// TTL it was bound with, not its mark's. Does nothing once that expiry
    /// has passed, or when the code is not spent.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`].
    fn restore(
        &self,
        key: &StoreKey,
        binding: CodeBinding,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// How many records the store holds.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`].
    fn stats(&self) -> impl Future<Output = Result<StoreStats, StoreError>> + Send;

    /// Whether the store can tell, without a round trip, that it would
    /// refuse a new authorization from `source` now:
    /// [`StoreError::SourceQuota`] when `source` holds its quota,
    /// [`StoreError::Full`] at its capacity bound with nothing to evict, or
    /// [`StoreError::Unavailable`] when its backend failed a moment ago. The middleware then refuses before the upstream sees the
    /// request. The default cannot tell and says `Ok`: the answer that
    /// counts is always that of [`insert_pending`](Store::insert_pending) or
    /// [`admit_binding`](Store::admit_binding), made after the upstream's
    /// answer and before it reaches the client.
    ///
    /// # Errors
    ///
    /// The refusal the store expects.
    fn admission_hint(&self, source: Option<Source>) -> Result<(), StoreError> {
        let _ = source;
        Ok(())
    }

    /// What the store did under pressure: evictions, and sources held
    /// back at their quota. The default, for a store that does neither,
    /// is zero.
    fn pressure(&self) -> StorePressure {
        StorePressure::default()
    }

    /// Starts any background maintenance the backend needs (for example the
    /// sweep of expired records), if it is not running yet. Called by the
    /// layer; it must not panic outside a Tokio runtime.
    fn start_maintenance(&self) {}
}
