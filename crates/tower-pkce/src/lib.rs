//! PKCE ([RFC 7636]) for OAuth 2.0 authorization servers that lack it, as a
//! [Tower] middleware.
//!
//! Put [`PkceLayer`] in front of an authorization server's service and the
//! server gains PKCE without a change:
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode, header};
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_pkce::{PkceLayer, RequestBody};
//!
//! /// A server that knows nothing of PKCE: it hands out a code to anyone.
//! async fn legacy_server(
//!     _: Request<RequestBody<Full<Bytes>>>,
//! ) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
//!     Ok(Response::builder()
//!         .status(StatusCode::FOUND)
//!         .header(header::LOCATION, "https://client.example/cb?code=abc")
//!         .body(Full::default())
//!         .unwrap())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let service = ServiceBuilder::new()
//!     .layer(PkceLayer::strict())
//!     .service(service_fn(legacy_server));
//!
//! // No code_challenge: refused before the server sees the request.
//! let request = Request::get("/authorize?response_type=code&client_id=app")
//!     .body(Full::default())
//!     .unwrap();
//! let response = service.oneshot(request).await.unwrap();
//! assert_eq!(response.status(), StatusCode::BAD_REQUEST);
//! # }
//! ```
//!
//! # What it enforces
//!
//! - At the **authorization endpoint** (every method, every path alias), the
//!   request must carry a valid `code_challenge`; S256 only unless plain is
//!   allowed. The challenge is recorded, and the client's `state` is replaced
//!   by a transaction handle.
//! - On **every response**, wherever the code leaves (a `Location` query or
//!   fragment, a `form_post` page, on this request or a later one after a
//!   login page), the handle is recognised, the code is bound to the
//!   challenge, and the client's own `state` is put back.
//! - At the **token endpoint**, an `authorization_code` grant must present
//!   the `code_verifier` for the code's challenge, from the same client and
//!   `redirect_uri`. The binding is used once. Failures answer RFC 6749 §5.2
//!   JSON and never reach the server.
//! - **Discovery metadata** advertises `code_challenge_methods_supported`.
//!
//! The client side is here too: [`CodeVerifier::generate`] and
//! [`CodeChallenge::from_verifier`].
//!
//! # The flow
//!
//! Each sign-in is a *transaction*, named by a handle the middleware mints
//! and sends upstream in place of the client's `state`. Its record in the
//! [`Store`](store::Store) moves through these states:
//!
//! ```text
//! authorize ─► pending ─► bound ─► spent
//!                            └───► burned
//! ```
//!
//! - **pending**: an authorization request that passes the policy gets a
//!   handle, and the transaction's record (client, `redirect_uri`,
//!   challenge, the client's `state`) is made (`authorize.rs`). It is
//!   written to the store only when the upstream's answer does not complete
//!   the transaction (a login page), before that answer reaches the client
//!   (`bind.rs`). A later authorization request whose `state` is the handle
//!   (a continuation) goes on only if it matches the record.
//! - **bound**: on every response, whatever its path, a code that leaves
//!   beside a handle (in a `Location`, a `Refresh` or a `form_post` page) is
//!   found (`inspect.rs`), its delivery checked to go to the transaction's
//!   own client (`delivery.rs`), the pending record taken and the code bound
//!   to it (`bind.rs`); the client's `state` is put back. A code on the
//!   answer to the authorization request itself is bound at once, with no
//!   pending record written. An error answer takes the pending record and
//!   binds nothing. A response that may hand a code out and cannot be read
//!   with certainty is withheld.
//! - **spent**: at the token endpoint (`token.rs`, with `client_auth.rs`),
//!   an `authorization_code` grant redeems the binding, which leaves it
//!   spent, and must match it: the same client, the same `redirect_uri`,
//!   the verifier for the challenge. A request that passes goes upstream;
//!   when the upstream certainly did not redeem the code (nothing of the
//!   request reached it, as the inner service reports through
//!   [`ForwardProgress`], or it answered with a 5xx), the binding is
//!   restored to bound.
//! - **burned**: a request that fails the checks puts the binding back,
//!   bound, with one more failure counted, until the
//!   [`max_failed_attempts`](PkceLayer::max_failed_attempts)-th failure,
//!   which leaves it spent. A spent or burned code is refused.
//!
//! Pending records and bindings expire after the [`ttl`](PkceLayer::ttl).
//! Discovery metadata is rewritten on its way to the client
//! (`metadata.rs`). The settings, and which endpoint a request is for, are
//! in `policy.rs`; `service.rs` hands each request to its step, and
//! `layer.rs` builds the layer.
//!
//! [RFC 7636]: https://www.rfc-editor.org/rfc/rfc7636
//! [Tower]: https://docs.rs/tower
#![cfg_attr(docsrs, feature(doc_cfg))]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod authorize;
mod bind;
mod body;
mod client_auth;
mod coding;
mod cors;
mod delivery;
mod error;
mod form;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod handle;
mod html;
mod inspect;
mod layer;
mod location;
mod loose;
mod metadata;
mod path;
mod pkce;
mod policy;
mod progress;
#[cfg(test)]
mod properties;
mod request;
mod scan;
mod service;
mod shared;
mod source;
pub mod store;
mod token;

pub use body::{BoxError, RequestBody, ResponseBody};
pub use error::{ConfigError, Rejection, SOURCE_QUOTA_RETRY_AFTER};
pub use layer::PkceLayer;
pub use pkce::{
    ChallengeMethod, CodeChallenge, CodeVerifier, MAX_LEN, MIN_LEN, PkceError, S256_CHALLENGE_LEN,
    s256, verify, verify_digest,
};
pub use policy::{Endpoint, Requirement};
pub use progress::{ForwardProgress, Progress};
pub use service::{Pkce, ResponseFuture};
pub use source::Source;
