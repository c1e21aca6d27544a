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
//! [RFC 7636]: https://www.rfc-editor.org/rfc/rfc7636
//! [Tower]: https://docs.rs/tower
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod coding;
mod cors;
mod error;
mod form;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod handle;
mod html;
mod layer;
mod location;
mod loose;
mod metadata;
mod path;
mod pkce;
mod progress;
#[cfg(test)]
mod properties;
mod scan;
mod service;
mod source;
pub mod store;

pub use body::{BoxError, RequestBody, ResponseBody};
pub use error::{ConfigError, Rejection, SOURCE_QUOTA_RETRY_AFTER};
pub use layer::{Endpoint, PkceLayer, Requirement};
pub use pkce::{
    ChallengeMethod, CodeChallenge, CodeVerifier, MAX_LEN, MIN_LEN, PkceError, S256_CHALLENGE_LEN,
    s256, verify, verify_digest,
};
pub use progress::{ForwardProgress, Progress};
pub use service::{Pkce, ResponseFuture};
pub use source::Source;
