//! [`Pkce`]: the service that enforces PKCE around an authorization server.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::body::{
    Collected, RequestBody, RequestBodyError, ResponseBody, Watch, collect_bounded,
    collect_request, frames_of,
};
use crate::cors::Origins;
use crate::error::Rejection;
use crate::form::{self, FormError};
use crate::layer::{Config, Endpoint, Requirement};
use crate::path;
use crate::pkce::ChallengeMethod;
use crate::progress::{ForwardProgress, Progress};
#[cfg(feature = "memory-store")]
use crate::store::MemoryStore;
use crate::store::{
    Challenge, CodeBinding, PendingAuthorization, Redemption, Store, StoreError, StoreKey,
    fingerprint,
};
use crate::{Source, coding, handle, html, location, metadata};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What the layer's services share: settings, store, learned CORS origins.
#[derive(Debug)]
pub(crate) struct Shared<St> {
    pub(crate) config: Config,
    pub(crate) store: St,
    pub(crate) origins: Arc<Origins>,
}

/// Enforces PKCE in front of an authorization server. See [`PkceLayer`](crate::PkceLayer).
#[derive(Debug)]
pub struct Pkce<
    S,
    #[cfg(feature = "memory-store")] St = MemoryStore,
    #[cfg(not(feature = "memory-store"))] St,
> {
    inner: S,
    shared: Arc<Shared<St>>,
}

impl<S: Clone, St> Clone for Pkce<S, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

#[cfg(feature = "memory-store")]
impl<S> Pkce<S> {
    /// The strict layer ([`PkceLayer::strict`](crate::PkceLayer::strict)), as a shortcut.
    pub fn layer() -> crate::PkceLayer {
        crate::PkceLayer::strict()
    }
}

impl<S, St> Pkce<S, St> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared<St>>) -> Self {
        Self { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the middleware, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, St, ReqBody, ResBody> Service<Request<ReqBody>> for Pkce<S, St>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: Store,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let shared = self.shared.clone();
        if path::encoded_too_deep(req.uri().path()) {
            let rejection = Rejection::PathEncodedTooDeep;
            tracing::info!(reason = rejection.as_str(), "request rejected");
            let response = rejection.page_response(wants_json(req.headers()));
            return ResponseFuture::rejected(response);
        }
        let route = shared.config.endpoint(req.uri().path());
        let method = req.method().clone();
        match route {
            Endpoint::Other => {
                let asked = Asked::of(req.headers(), req.uri());
                let mut req = req;
                restrict_accept_encoding(req.headers_mut());
                let future = self.inner.call(req.map(RequestBody::inner));
                ResponseFuture::inspect(future, shared, asked)
            }
            Endpoint::Metadata if method == Method::GET || method == Method::HEAD => {
                let mut req = req;
                restrict_accept_encoding(req.headers_mut());
                let inner = self.take_ready();
                ResponseFuture::boxed(metadata(shared, inner, req))
            }
            Endpoint::Metadata => {
                let asked = Asked::of(req.headers(), req.uri());
                let future = self.inner.call(req.map(RequestBody::inner));
                ResponseFuture::inspect(future, shared, asked)
            }
            Endpoint::Authorize => {
                let mut req = req;
                restrict_accept_encoding(req.headers_mut());
                let inner = self.take_ready();
                ResponseFuture::boxed(authorize(shared, inner, req))
            }
            Endpoint::Token
                if method == Method::POST || (method == Method::OPTIONS && !has_body(&req)) =>
            {
                let inner = self.take_ready();
                ResponseFuture::boxed(token(shared, inner, req))
            }
            Endpoint::Token => {
                tracing::info!(
                    endpoint = "token",
                    %method,
                    reason = Rejection::MethodNotAllowed.as_str(),
                    "request rejected"
                );
                let origin = req.headers().get(header::ORIGIN);
                let response = shared.token_rejection(Rejection::MethodNotAllowed, origin);
                ResponseFuture::rejected(response)
            }
        }
    }
}

impl<S: Clone, St> Pkce<S, St> {
    /// The service that `poll_ready` readied, leaving a clone in its place
    /// (see tower's "Be careful when cloning inner services").
    fn take_ready(&mut self) -> S {
        let clone = self.inner.clone();
        std::mem::replace(&mut self.inner, clone)
    }
}

pin_project! {
    /// The future returned by [`Pkce`].
    pub struct ResponseFuture<F, B: Body, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B: Body, E> {
        Inspect {
            #[pin]
            future: F,
            inspector: Option<Arc<dyn Inspect<B>>>,
            asked: Asked,
        },
        Inspecting { future: BoxFuture<Response<ResponseBody<B>>> },
        Boxed { future: BoxFuture<Result<Response<ResponseBody<B>>, E>> },
        Rejected { response: Option<Response<ResponseBody<B>>> },
    }
}

impl<F, B: Body, E> std::fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B: Body, E> ResponseFuture<F, B, E> {
    pub(crate) fn inspect<St: Store>(future: F, shared: Arc<Shared<St>>, asked: Asked) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Send + 'static,
    {
        let inspector: Arc<dyn Inspect<B>> = shared;
        Self {
            kind: Kind::Inspect {
                future,
                inspector: Some(inspector),
                asked,
            },
        }
    }

    pub(crate) fn boxed(
        future: impl Future<Output = Result<Response<ResponseBody<B>>, E>> + Send + 'static,
    ) -> Self {
        Self {
            kind: Kind::Boxed {
                future: Box::pin(future),
            },
        }
    }

    pub(crate) fn rejected(response: Response<Bytes>) -> Self {
        Self {
            kind: Kind::Rejected {
                response: Some(response.map(ResponseBody::full)),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.kind.as_mut().project() {
                KindProj::Inspect {
                    future,
                    inspector,
                    asked,
                } => {
                    let response = ready!(future.poll(cx))?;
                    match inspector.take() {
                        Some(inspector) if inspector.needs_inspection(&response) => {
                            let future = inspector.inspect(response, std::mem::take(asked));
                            this.kind.set(Kind::Inspecting { future });
                        }
                        _ => return Poll::Ready(Ok(response.map(ResponseBody::inner))),
                    }
                }
                KindProj::Inspecting { future } => return future.as_mut().poll(cx).map(Ok),
                KindProj::Boxed { future } => return future.as_mut().poll(cx),
                KindProj::Rejected { response } => {
                    // Polling again after completion is a caller's bug; an
                    // empty 500 is the answer that cannot hurt.
                    let response = response.take().unwrap_or_else(|| {
                        let mut r = Response::new(ResponseBody::full(Bytes::new()));
                        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                        r
                    });
                    return Poll::Ready(Ok(response));
                }
            }
        }
    }
}

/// Looks at every upstream response for a code that leaves with a handle.
trait Inspect<B: Body>: Send + Sync {
    fn needs_inspection(&self, response: &Response<B>) -> bool;
    fn inspect(
        self: Arc<Self>,
        response: Response<B>,
        asked: Asked,
    ) -> BoxFuture<Response<ResponseBody<B>>>;
}

impl<St, B> Inspect<B> for Shared<St>
where
    St: Store,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Send + 'static,
{
    fn needs_inspection(&self, response: &Response<B>) -> bool {
        needs_inspection(response)
    }

    fn inspect(
        self: Arc<Self>,
        response: Response<B>,
        asked: Asked,
    ) -> BoxFuture<Response<ResponseBody<B>>> {
        Box::pin(async move { self.inspect_response(response, asked, None).await })
    }
}

/// Whether a response may hand a code out: a `Location` that may hold a
/// handle, a `Refresh`, or a page. Every response passes here, whatever
/// its path: a path the upstream routes otherwise than the layer reads it
/// could answer with a delivery.
fn needs_inspection<B: Body>(response: &Response<B>) -> bool {
    let headers = response.headers();
    headers
        .get(header::LOCATION)
        .is_some_and(|l| handle::may_contain(l.as_bytes()))
        || headers.contains_key(REFRESH)
        || may_be_html(headers, response.body())
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("json") && !a.contains("text/html"))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether a request body is a form the middleware reads exactly as any
/// upstream would: `application/x-www-form-urlencoded` in UTF-8 (or ASCII),
/// with no content coding. Another charset or a compressed body could hold
/// parameters the upstream sees and the middleware does not.
fn is_form(headers: &HeaderMap) -> bool {
    // Servers differ on which of several fields they read.
    if headers
        .get_all(header::CONTENT_TYPE)
        .iter()
        .nth(1)
        .is_some()
    {
        return false;
    }
    let coded = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"));
    if coded {
        return false;
    }
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    // A header value that passed to_str is visible ASCII, spaces and tabs:
    // the byte-wise trims below trim what str::trim would.
    let mut parts = ct.as_bytes().split(|&b| b == b';');
    let essence = parts.next().unwrap_or_default().trim_ascii();
    if !essence.eq_ignore_ascii_case(b"application/x-www-form-urlencoded") {
        return false;
    }
    parts.all(|param| {
        let (name, value) = match param.iter().position(|&b| b == b'=') {
            Some(eq) => param.split_at(eq),
            None => (param, &b""[..]),
        };
        let value = value.get(1..).unwrap_or_default().trim_ascii();
        // Every quote at either end goes, as str::trim_matches('"') does.
        let start = value.iter().position(|&b| b != b'"').unwrap_or(value.len());
        let end = value
            .iter()
            .rposition(|&b| b != b'"')
            .map_or(start, |i| i + 1);
        let value = value.get(start..end).unwrap_or_default();
        !name.trim_ascii().eq_ignore_ascii_case(b"charset")
            || [&b"utf-8"[..], b"utf8", b"us-ascii"]
                .iter()
                .any(|c| value.eq_ignore_ascii_case(c))
    })
}

/// Narrows `Accept-Encoding` to the codings the middleware can decode, so
/// that a page carrying a code is never compressed past its reach (a
/// `zstd` form_post would leave unbound).
fn restrict_accept_encoding(headers: &mut HeaderMap) {
    const DECODABLE: [&str; 5] = ["gzip", "x-gzip", "deflate", "br", "identity"];
    let Some(value) = headers.get(header::ACCEPT_ENCODING) else {
        return;
    };
    let Ok(text) = value.to_str() else {
        headers.remove(header::ACCEPT_ENCODING);
        return;
    };
    let known = |item: &str| {
        let coding = item.split(';').next().unwrap_or("").trim();
        DECODABLE.iter().any(|d| d.eq_ignore_ascii_case(coding))
    };
    if text.split(',').all(known) {
        return;
    }
    let kept: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|i| known(i))
        .collect();
    let narrowed = if kept.is_empty() {
        "identity".to_owned()
    } else {
        kept.join(", ")
    };
    match HeaderValue::from_str(&narrowed) {
        Ok(v) => headers.insert(header::ACCEPT_ENCODING, v),
        Err(_) => headers.remove(header::ACCEPT_ENCODING),
    };
}

/// Whether a request announces a body. A CORS preflight has none; an
/// OPTIONS request with one is no preflight, and an upstream that does not
/// route by method could read a token request from it.
fn has_body<B: Body>(req: &Request<B>) -> bool {
    announces_body(req.headers(), req.body())
}

fn announces_body<B: Body>(headers: &HeaderMap, body: &B) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || content_length(headers).is_some_and(|n| n > 0)
        || !body.is_end_stream() && body.size_hint().upper() != Some(0)
}

/// Whether `Connection` names a field that the checks or the framing read.
/// A proxy on the way to the upstream removes what `Connection` names, so
/// the upstream would not receive the request that was checked (RFC 9110
/// §7.6.1).
fn connection_names_checked_field(headers: &HeaderMap) -> bool {
    const CHECKED: [&[u8]; 6] = [
        b"authorization",
        b"host",
        b"content-type",
        b"content-length",
        b"transfer-encoding",
        b"cookie",
    ];
    headers.get_all(header::CONNECTION).iter().any(|value| {
        value.as_bytes().split(|&b| b == b',').any(|token| {
            let token = token.trim_ascii();
            CHECKED.iter().any(|f| token.eq_ignore_ascii_case(f))
        })
    })
}

/// A checked form body as it is forwarded: every byte outside visible ASCII
/// percent-encoded, which a form parser reads back to the same parameters,
/// so that no byte of it can start a request line or end a line for a
/// server that leaves the body unread and reads on (invariant I1).
fn inert<B>(body: RequestBody<B>, headers: &mut HeaderMap) -> RequestBody<B> {
    let Some(escaped) = body.as_buffered().and_then(|d| form::escape_unsafe(d)) else {
        return body;
    };
    set_content_length(headers, escaped.len());
    RequestBody::buffered(Bytes::from(escaped))
}

/// Whether a `Cookie` field names a parameter that `checked` says the
/// request is checked by: a server that reads cookies as parameters (PHP's
/// `$_REQUEST` with cookies in `variables_order`, last one winning) would
/// take it over the checked one. Names are read as a form's are (decoded,
/// folded; a bracket starts PHP's array syntax).
fn cookie_names_checked_parameter(headers: &HeaderMap, checked: impl Fn(&str) -> bool) -> bool {
    headers.get_all(header::COOKIE).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b';' || b == b',')
            .any(|pair| {
                let name = pair
                    .split(|&b| b == b'=')
                    .next()
                    .unwrap_or_default()
                    .trim_ascii();
                let name = crate::loose::decode(name, false);
                let name = String::from_utf8_lossy(&name);
                let base = name.split('[').next().unwrap_or_default();
                checked(&form::fold(base))
            })
    })
}

fn is_authorize_param(name: &str) -> bool {
    AUTHORIZE_PARAMS.contains(&name) || name.starts_with("code_challenge")
}

fn set_content_length(headers: &mut HeaderMap, len: usize) {
    headers.remove(header::TRANSFER_ENCODING);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
}

/// Reads a request body up to `limit` bytes.
async fn read_body<B: Body<Data = Bytes>>(
    headers: &HeaderMap,
    body: B,
    limit: usize,
) -> Result<Bytes, Rejection> {
    if content_length(headers).is_some_and(|n| n > limit as u64) {
        return Err(Rejection::BodyTooLarge);
    }
    collect_request(body, limit).await.map_err(|e| match e {
        RequestBodyError::TooLarge => Rejection::BodyTooLarge,
        RequestBodyError::Unreadable => Rejection::BodyUnreadable,
        RequestBodyError::Trailers => Rejection::TrailersNotAllowed,
    })
}

fn form_error(e: FormError) -> Rejection {
    match e {
        FormError::Malformed | FormError::Bracketed | FormError::NotPairs => {
            Rejection::MalformedParameters
        }
        FormError::Repeated(name) => Rejection::RepeatedParameter(name),
    }
}

impl<St: Store> Shared<St> {
    fn token_rejection(
        &self,
        rejection: Rejection,
        origin: Option<&HeaderValue>,
    ) -> Response<Bytes> {
        let mut response = rejection.json_response();
        self.origins
            .apply(&self.config.allowed_origins, origin, response.headers_mut());
        response
    }

    /// Binds the code (if any) to the pending authorization behind `handle`,
    /// and returns the client's original state, when `to_client` finds that
    /// the delivery goes to the transaction's own client (invariant I3).
    /// When `handle` is the one this request minted, its record is
    /// `minted`'s and is taken from there: it was never written to the
    /// store. Either way the transaction is over: a handle delivers once.
    async fn complete_transaction(
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
    async fn record_pending(&self, minted: Minted) -> Result<(), Rejection> {
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

    /// The upstream's answer to any request, with the code it hands out
    /// bound and the client's state put back; for an authorization request
    /// whose transaction goes on (`minted`, not completed by this answer),
    /// its pending record written. What might hand a code out beside a
    /// handle and cannot be read with certainty is withheld (invariant I2).
    /// The response is taken apart before the `async` block, as
    /// [`authorize`] does with the request.
    fn inspect_response<'a, B>(
        &'a self,
        response: Response<B>,
        asked: Asked,
        minted: Option<Minted>,
    ) -> impl Future<Output = Response<ResponseBody<B>>> + 'a
    where
        B: Body<Data = Bytes> + Send + 'static,
    {
        let (parts, body) = response.into_parts();
        async move {
            let mut minted = minted;
            let inspected = self.inspect_parts(parts, body, &asked, &mut minted).await;
            let response = match inspected {
                Ok(response) => response,
                Err(rejection) => return page(rejection, asked.wants_json),
            };
            let Some(own) = minted.take() else {
                return response;
            };
            match self.record_pending(own).await {
                Ok(()) => response,
                Err(rejection) => page(rejection, asked.wants_json),
            }
        }
    }

    async fn inspect_parts<B>(
        &self,
        mut parts: http::response::Parts,
        body: B,
        asked: &Asked,
        minted: &mut Option<Minted>,
    ) -> Result<Response<ResponseBody<B>>, Rejection>
    where
        B: Body<Data = Bytes> + Send + 'static,
    {
        if parts
            .headers
            .get_all(REFRESH)
            .iter()
            .any(|r| hands_out_code(r.as_bytes()))
        {
            return Err(withheld(Rejection::UncertainDelivery, "a Refresh header"));
        }
        let mut locations = parts.headers.get_all(header::LOCATION).iter();
        if locations.next().is_some()
            && locations.next().is_some()
            && parts
                .headers
                .get_all(header::LOCATION)
                .iter()
                .any(|l| handle::may_contain(l.as_bytes()))
        {
            return Err(withheld(Rejection::UncertainDelivery, "several Locations"));
        }
        if let Some(location) = parts.headers.get(header::LOCATION).cloned() {
            let bytes = location.as_bytes();
            match location::scan(bytes) {
                // On the answer to the transaction's own request, a code
                // without its handle (the state dropped or cut short) would
                // leave unbound.
                location::Scan::Clean if minted.is_some() && shows_code(bytes, false) => {
                    return Err(withheld(
                        Rejection::UncertainDelivery,
                        "a code without the transaction's handle",
                    ));
                }
                location::Scan::Clean | location::Scan::Carrier => {}
                location::Scan::Uncertain(why) => {
                    return Err(withheld(Rejection::UncertainDelivery, why));
                }
                location::Scan::Delivery(delivery) => {
                    let hit = &delivery.hit;
                    let to_client = |p: &PendingAuthorization| {
                        reaches_client(
                            p.redirect_uri,
                            location::targets(bytes, &delivery),
                            asked.host.as_ref(),
                        )
                    };
                    let state = self
                        .complete_transaction(&hit.handle, hit.code.as_deref(), to_client, minted)
                        .await?;
                    let restored = location::restore_state(bytes, hit, state.as_deref());
                    let value = HeaderValue::from_bytes(&restored)
                        .map_err(|_| withheld(Rejection::UncertainDelivery, "unwritable"))?;
                    parts.headers.insert(header::LOCATION, value);
                    if parts.status.is_redirection() {
                        // A redirect's body is a hint for clients that do not
                        // follow it, and it holds the code and the handle as
                        // they were: it goes.
                        parts.headers.remove(header::CONTENT_ENCODING);
                        parts.headers.remove(header::ETAG);
                        set_content_length(&mut parts.headers, 0);
                        return Ok(Response::from_parts(
                            parts,
                            ResponseBody::full(Bytes::new()),
                        ));
                    }
                }
            }
        }
        if !may_be_html(&parts.headers, &body) {
            return Ok(Response::from_parts(parts, ResponseBody::inner(body)));
        }
        // Boxed: a page's reading holds much across its awaits, and every
        // request's future would otherwise be that large.
        Box::pin(self.inspect_page(parts, body, asked, minted)).await
    }

    /// [`inspect_parts`](Self::inspect_parts) for a page a browser may
    /// render.
    async fn inspect_page<B>(
        &self,
        mut parts: http::response::Parts,
        body: B,
        asked: &Asked,
        minted: &mut Option<Minted>,
    ) -> Result<Response<ResponseBody<B>>, Rejection>
    where
        B: Body<Data = Bytes> + Send + 'static,
    {
        let limit = self.config.html_scan_limit;
        // Every field: servers and browsers differ on which of several they read.
        let encoding: Vec<String> = parts
            .headers
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
            .filter(|v| !v.is_empty() && !v.eq_ignore_ascii_case("identity"))
            .collect();
        let encoding = (!encoding.is_empty()).then(|| encoding.join(", "));
        let decoder = || match encoding.as_deref() {
            None => Ok(None),
            Some(coding) => coding::Streaming::new(coding).map(Some).ok_or_else(|| {
                withheld(
                    Rejection::UncertainDelivery,
                    "a page in a coding that cannot be read",
                )
            }),
        };
        let (data, trailers) = match collect_bounded(body, limit).await {
            Collected::Complete { data, trailers } => (data, trailers),
            Collected::Over { frames, rest } => {
                let Some(watch) = watched(&frames, decoder()?) else {
                    return Err(withheld(
                        Rejection::UncertainDelivery,
                        "a page larger than the scan bound shows a handle or a code",
                    ));
                };
                return Ok(Response::from_parts(
                    parts,
                    ResponseBody::watched(frames, rest, watch),
                ));
            }
            Collected::Failed { frames, error } => {
                if watched(&frames, decoder()?).is_none() {
                    return Err(withheld(
                        Rejection::UncertainDelivery,
                        "a page that failed half-way shows a handle or a code",
                    ));
                }
                return Ok(Response::from_parts(
                    parts,
                    ResponseBody::replay(frames, Some(error), None),
                ));
            }
        };
        let decoded: Cow<'_, [u8]> = match &encoding {
            None => Cow::Borrowed(&data),
            Some(enc) => match coding::decode_content(enc, &data, limit) {
                Ok(decoded) => Cow::Owned(decoded),
                Err(coding::CodingError::TooLarge) => {
                    // Decoded past the bound: watched as a page that large
                    // would be, and handed on as it came.
                    let mut watch = Watch::new(decoder()?);
                    if watch.sees(&data) || watch.sees_at_end() {
                        return Err(withheld(
                            Rejection::UncertainDelivery,
                            "a page larger than the scan bound shows a handle or a code",
                        ));
                    }
                    return Ok(Response::from_parts(
                        parts,
                        ResponseBody::replay(frames_of(data, trailers), None, None),
                    ));
                }
                Err(e) => {
                    // A browser may render what does not decode here (a
                    // gzip stream with bytes after it, a wrong checksum).
                    tracing::debug!(error = %e, "html response does not decode");
                    return Err(withheld(
                        Rejection::UncertainDelivery,
                        "a page whose coding does not decode",
                    ));
                }
            },
        };
        if let Some(utf8) = utf16_as_utf8(&parts.headers, &decoded) {
            // Read, but not rewritten: a handle in it is withheld.
            if !matches!(html::scan(utf8.as_bytes()), html::Scan::Clean) {
                return Err(withheld(Rejection::UncertainDelivery, "a UTF-16 page"));
            }
            return Ok(Response::from_parts(
                parts,
                ResponseBody::replay(frames_of(data, trailers), None, None),
            ));
        }
        let delivery = match html::scan(&decoded) {
            html::Scan::Clean if minted.is_some() && shows_code(&decoded, true) => {
                return Err(withheld(
                    Rejection::UncertainDelivery,
                    "a code without the transaction's handle",
                ));
            }
            html::Scan::Clean | html::Scan::Carrier => {
                return Ok(Response::from_parts(
                    parts,
                    ResponseBody::replay(frames_of(data, trailers), None, None),
                ));
            }
            html::Scan::Uncertain(why) => {
                return Err(withheld(Rejection::UncertainDelivery, why));
            }
            html::Scan::Delivery(delivery) => delivery,
        };
        let hit = &delivery.hit;
        let action = delivery.action.as_deref().map(str::as_bytes);
        let to_client = |p: &PendingAuthorization| {
            reaches_client(p.redirect_uri, action.into_iter(), asked.host.as_ref())
        };
        let state = self
            .complete_transaction(&hit.handle, hit.code.as_deref(), to_client, minted)
            .await?;
        let page = html::restore_state(&decoded, hit, state.as_deref());
        parts.headers.remove(header::CONTENT_ENCODING);
        parts.headers.remove(header::ETAG);
        set_content_length(&mut parts.headers, page.len());
        Ok(Response::from_parts(
            parts,
            ResponseBody::full(Bytes::from(page)),
        ))
    }
}

/// A watch that has seen `frames`, the start of a page, or `None` when
/// they show a handle or a code.
fn watched(
    frames: &std::collections::VecDeque<Frame<Bytes>>,
    decoder: Option<coding::Streaming>,
) -> Option<Watch> {
    let mut watch = Watch::new(decoder);
    let seen = frames
        .iter()
        .filter_map(Frame::data_ref)
        .any(|d| watch.sees(d));
    (!seen).then_some(watch)
}

/// Whether `bytes` (a `Location`, or a page when `html`) hands a code out,
/// read as the loosest client would.
fn shows_code(bytes: &[u8], html: bool) -> bool {
    let decoded = crate::loose::decode(bytes, html);
    crate::loose::count_params(&decoded, b"code") > 0
        || html && crate::html::name_tokens(&decoded, b"code") > 0
}

/// A page in UTF-16 (by its byte order mark, which a browser heeds over
/// any charset, or by its charset), in UTF-8 for reading; `None` for any
/// other page.
fn utf16_as_utf8(headers: &HeaderMap, page: &[u8]) -> Option<String> {
    let charset_utf16 = headers.get(header::CONTENT_TYPE).is_some_and(|ct| {
        let ct = ct.as_bytes().to_ascii_lowercase();
        [&b"utf-16"[..], b"ucs-2"]
            .iter()
            .any(|c| ct.windows(c.len()).any(|w| w == *c))
    });
    let big_endian = match page {
        [0xfe, 0xff, ..] => true,
        [0xff, 0xfe, ..] => false,
        [0xef, 0xbb, 0xbf, ..] => return None,
        _ if charset_utf16 => headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|ct| ct.as_bytes().to_ascii_lowercase().ends_with(b"be")),
        _ => return None,
    };
    let units = page.chunks_exact(2).map(|pair| match pair {
        [a, b] if big_endian => u16::from_be_bytes([*a, *b]),
        [a, b] => u16::from_le_bytes([*a, *b]),
        _ => 0,
    });
    Some(
        char::decode_utf16(units)
            .map(|c| c.unwrap_or('\u{fffd}'))
            .collect(),
    )
}

/// What the request that a response answers tells its inspection.
#[derive(Debug, Clone, Default)]
pub(crate) struct Asked {
    /// Refusals are JSON.
    wants_json: bool,
    /// The authority the client addressed: a delivery to the client never
    /// goes back to it (see [`reaches_client`]).
    host: Option<HeaderValue>,
}

impl Asked {
    fn of(headers: &HeaderMap, uri: &Uri) -> Self {
        Self {
            wants_json: wants_json(headers),
            host: headers.get(header::HOST).cloned().or_else(|| {
                uri.authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            }),
        }
    }
}

const REFRESH: header::HeaderName = header::HeaderName::from_static("refresh");

/// Whether a header value (a `Refresh`) hands a code out beside a handle.
fn hands_out_code(value: &[u8]) -> bool {
    let decoded = crate::loose::decode(value, false);
    crate::handle::count_in(&decoded) > 0 && crate::loose::count_params(&decoded, b"code") > 0
}

fn withheld(rejection: Rejection, why: &str) -> Rejection {
    tracing::warn!(
        reason = rejection.as_str(),
        why,
        "upstream response may hand out a code unbound; withheld"
    );
    rejection
}

/// Whether a delivery whose targets (`location::targets`, or a form's
/// action) are these goes to the transaction's own client (invariant I3):
/// to the `redirect_uri` it recorded; without one, to a URI that leaves the
/// server the client addressed (a page of the upstream's own, such as a
/// consent form echoing a `code`, is no delivery).
fn reaches_client<'t>(
    recorded: Option<crate::store::Fingerprint>,
    mut targets: impl Iterator<Item = &'t [u8]>,
    host: Option<&HeaderValue>,
) -> bool {
    match recorded {
        Some(uri) => targets.any(|t| {
            crate::store::fingerprint(t) == uri
                || std::str::from_utf8(t).is_err()
                    && crate::store::fingerprint(latin1_to_utf8(t)) == uri
        }),
        None => targets.next().is_some_and(|t| leaves_the_server(t, host)),
    }
}

/// `bytes` read as latin-1, in UTF-8: what an old server that writes its
/// headers in latin-1 made of a `redirect_uri` it received in UTF-8.
fn latin1_to_utf8(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// Whether `target` is an absolute URI (RFC 3986 §4.3) whose authority, if
/// it has one, is not `host`, read as a browser reads it: a special scheme
/// (`https:`) needs no `//`, `\\` stands for `/`, and a default port is
/// no port.
fn leaves_the_server(target: &[u8], host: Option<&HeaderValue>) -> bool {
    let Some(colon) = target.iter().position(|&b| b == b':') else {
        return false;
    };
    let scheme = target.get(..colon).unwrap_or_default();
    let is_scheme = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !is_scheme {
        return false;
    }
    let default_port: Option<&[u8]> = match scheme.to_ascii_lowercase().as_slice() {
        b"http" | b"ws" => Some(b"80"),
        b"https" | b"wss" => Some(b"443"),
        b"ftp" => Some(b"21"),
        b"file" => Some(b""),
        _ => None,
    };
    let rest = target.get(colon + 1..).unwrap_or_default();
    let rest = match default_port {
        Some(_) => {
            let slashes = rest
                .iter()
                .take_while(|&&b| b == b'/' || b == b'\\')
                .count();
            rest.get(slashes..).unwrap_or_default()
        }
        // A scheme of an application's own (`com.example.app:/cb`).
        None => match rest.strip_prefix(b"//") {
            Some(rest) => rest,
            None => return true,
        },
    };
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#' | b'\\'))
        .unwrap_or(rest.len());
    let authority = rest.get(..end).unwrap_or_default();
    let authority = authority.rsplit(|&b| b == b'@').next().unwrap_or(authority);
    if authority.is_empty() {
        return false;
    }
    let same = |host: &HeaderValue| {
        normal_authority(host.as_bytes(), default_port) == normal_authority(authority, default_port)
    };
    !host.is_some_and(same)
}

/// An authority in lower case, without a trailing dot on its host or a
/// port that is the scheme's default.
fn normal_authority(authority: &[u8], default_port: Option<&[u8]>) -> Vec<u8> {
    let lower = authority.to_ascii_lowercase();
    let split = lower.iter().rposition(|&b| b == b':').and_then(|i| {
        let port = lower.get(i + 1..)?;
        let host = lower.get(..i)?;
        (port.iter().all(u8::is_ascii_digit) && !port.contains(&b']')).then_some((host, port))
    });
    let (host, port) = split.unwrap_or((&lower, &[]));
    let mut out = host.strip_suffix(b".").unwrap_or(host).to_vec();
    if !port.is_empty() && Some(port) != default_port {
        out.push(b':');
        out.extend_from_slice(port);
    }
    out
}

/// Whether a response may be a page a browser renders as HTML: anything
/// but one `Content-Type` of a kind a browser never renders so (several
/// fields or a list: a browser takes the last it can read), or no type and
/// a body a browser would sniff.
fn may_be_html<B: Body>(headers: &HeaderMap, body: &B) -> bool {
    let mut types = headers.get_all(header::CONTENT_TYPE).iter();
    let Some(only) = types.next() else {
        return !body.is_end_stream() && body.size_hint().exact() != Some(0);
    };
    types.next().is_some() || !never_rendered(only.as_bytes())
}

/// Whether a `Content-Type` value is of a kind a browser never renders as
/// a page (and never sniffs into one).
fn never_rendered(value: &[u8]) -> bool {
    const NEVER: [&[u8]; 14] = [
        b"application/json",
        b"text/plain",
        b"text/css",
        b"text/csv",
        b"text/javascript",
        b"application/javascript",
        b"application/ecmascript",
        b"application/octet-stream",
        b"application/pdf",
        b"application/zip",
        b"application/gzip",
        b"application/wasm",
        b"application/jwt",
        b"application/x-www-form-urlencoded",
    ];
    if value.contains(&b',') {
        return false;
    }
    let essence = value
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let starts = |prefix: &[u8]| {
        essence
            .get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
    };
    let ends = |suffix: &[u8]| {
        essence
            .len()
            .checked_sub(suffix.len())
            .and_then(|i| essence.get(i..))
            .is_some_and(|s| s.eq_ignore_ascii_case(suffix))
    };
    NEVER.iter().any(|n| essence.eq_ignore_ascii_case(n))
        || ends(b"+json")
        || (starts(b"image/") && !essence.eq_ignore_ascii_case(b"image/svg+xml"))
        || starts(b"audio/")
        || starts(b"video/")
        || starts(b"font/")
}

fn page<B: Body>(rejection: Rejection, wants_json: bool) -> Response<ResponseBody<B>> {
    rejection.page_response(wants_json).map(ResponseBody::full)
}

/// The parameters of an authorization request that the policy reads.
const AUTHORIZE_PARAMS: [&str; 9] = [
    "state",
    "code_challenge",
    "code_challenge_method",
    "client_id",
    "redirect_uri",
    "request_uri",
    "request",
    "code",
    "error",
];
const STATE: usize = 0;
const CHALLENGE: usize = 1;
const METHOD: usize = 2;
const CLIENT_ID: usize = 3;
const REDIRECT_URI: usize = 4;
const REQUEST_URI: usize = 5;
const REQUEST: usize = 6;
const CODE: usize = 7;
const ERROR: usize = 8;
const PKCE_PARAMS: [&str; 2] = ["code_challenge", "code_challenge_method"];

type Params<'a> = [Option<Cow<'a, str>>; 9];
type AuthorizeLayout = form::Layout<9>;

/// Merges query and body parameters; a parameter in both must agree.
fn merge<'a>(query: Params<'a>, body: Option<Params<'a>>) -> Result<Params<'a>, Rejection> {
    let Some(body) = body else { return Ok(query) };
    let mut merged = query;
    for (i, from_body) in body.into_iter().enumerate() {
        let Some(slot) = merged.get_mut(i) else {
            continue;
        };
        match (slot.as_ref(), from_body) {
            (Some(q), Some(b)) if *q != b => {
                let name = AUTHORIZE_PARAMS.get(i).copied().unwrap_or("parameter");
                return Err(Rejection::ConflictingParameter(name));
            }
            (None, Some(b)) => *slot = Some(b),
            _ => {}
        }
    }
    Ok(merged)
}

fn get<'p, 'a>(params: &'p Params<'a>, i: usize) -> Option<&'p str> {
    params.get(i).and_then(|p| p.as_deref())
}

/// Checks the challenge against the policy.
fn challenge_of(
    config: &Config,
    params: &Params<'_>,
    requirement: Requirement,
) -> Result<Option<Challenge>, Rejection> {
    let Some(value) = get(params, CHALLENGE) else {
        if get(params, METHOD).is_some() {
            return Err(Rejection::MethodWithoutChallenge);
        }
        return match requirement {
            Requirement::Required => Err(Rejection::ChallengeRequired),
            Requirement::Optional => Ok(None),
        };
    };
    // RFC 7636 §4.3: a missing method means plain.
    let method = match get(params, METHOD) {
        None => ChallengeMethod::Plain,
        Some(name) => ChallengeMethod::parse(name).map_err(|_| Rejection::UnknownMethod)?,
    };
    if method == ChallengeMethod::Plain && !config.allow_plain {
        return Err(Rejection::PlainNotAllowed);
    }
    let digest =
        crate::pkce::challenge_digest(value, method).map_err(|_| Rejection::MalformedChallenge)?;
    Ok(Some(Challenge { method, digest }))
}

enum Authorized {
    /// Forward the request as it is.
    Forward,
    /// Forward the request with this query and body.
    Rewritten {
        query: Option<String>,
        body: Option<String>,
        minted: Minted,
    },
}

/// The handle an authorization request was given, and the record of its
/// transaction. The record is written only once the upstream's answer shows
/// that the flow goes on (a login page): when the code comes back on that
/// very answer, it is bound at once, with one store write instead of three.
struct Minted {
    handle: handle::Handle,
    record: PendingAuthorization,
    /// Where the request came from, for the store's per-source quota.
    source: Option<Source>,
}

/// What an authorization request needs from the store, decided before
/// the store is asked, so that the parsed parameters are not held while it
/// answers.
enum Plan {
    /// Forward the request as it is.
    Forward,
    /// The state is a handle: forward when its transaction is pending and
    /// the request matches it.
    Continuation(Continuation),
    /// Forward the rewritten request, with a new transaction.
    Record {
        query: Option<String>,
        body: Option<String>,
        minted: Minted,
    },
}

fn plan_authorization(config: &Config, query: &str, body: Option<&str>) -> Result<Plan, Rejection> {
    let form::Placed {
        values: from_query,
        layout: query_layout,
    } = form::collect_placed(query, AUTHORIZE_PARAMS, form::Separators::Ampersand, false)
        .map_err(form_error)?;
    let (from_body, body_layout) = match body
        .map(|b| form::collect_placed(b, AUTHORIZE_PARAMS, form::Separators::Ampersand, true))
    {
        Some(Ok(placed)) => (Some(placed.values), Some(placed.layout)),
        Some(Err(e)) => return Err(form_error(e)),
        None => (None, None),
    };
    let client_in_body = from_body
        .as_ref()
        .is_some_and(|b| b.get(CLIENT_ID).is_some_and(Option::is_some));
    let client_in_query = from_query.get(CLIENT_ID).is_some_and(Option::is_some);
    let state_in_body = from_body
        .as_ref()
        .is_some_and(|b| b.get(STATE).is_some_and(Option::is_some));
    let state_in_query = from_query.get(STATE).is_some_and(Option::is_some);
    let params = merge(from_query, from_body)?;
    // A server that echoes its request into a page beside the handle (a
    // consent form) would hand the value out as if it had issued it.
    if get(&params, CODE).is_some() || get(&params, ERROR).is_some() {
        return Err(Rejection::ResponseParameterInRequest);
    }

    if let Some(state) = get(&params, STATE).filter(|s| handle::is_handle(s)) {
        return continuation(config, state, &params).map(Plan::Continuation);
    }

    let client_id = get(&params, CLIENT_ID);
    let requirement = config.requirement_for(client_id);
    if get(&params, REQUEST_URI).is_some() || get(&params, REQUEST).is_some() {
        return match requirement {
            Requirement::Required => Err(Rejection::RequestObjectUnsupported),
            Requirement::Optional => Ok(Plan::Forward),
        };
    }
    let Some(client_id) = client_id else {
        return Err(Rejection::MissingClientId);
    };
    let challenge = challenge_of(config, &params, requirement)?;

    let handle = handle::mint().map_err(|_| Rejection::StoreUnavailable)?;
    let record = PendingAuthorization {
        challenge,
        client: fingerprint(client_id),
        redirect_uri: get(&params, REDIRECT_URI).map(fingerprint),
        state: get(&params, STATE).map(Into::into),
    };

    let remove: &[&str] = if config.strip_pkce_params {
        &PKCE_PARAMS
    } else {
        &[]
    };
    // The handle goes where the client put its state; without one, beside
    // the client_id, where the upstream reads the request from.
    let no_state = !state_in_query && !state_in_body;
    let put_in_query = state_in_query || (no_state && client_in_query);
    let put_in_body = state_in_body || (no_state && client_in_body);
    let edit = |input: &str, layout: Option<&AuthorizeLayout>, set: bool| {
        // Setting the handle alone is a splice where the state stands,
        // found while reading; anything else is a rewrite.
        if set
            && remove.is_empty()
            && let Some(out) =
                layout.and_then(|l| form::set_placed(input, l, STATE, "state", &handle))
        {
            return Ok(out);
        }
        form::edit(
            input,
            set.then_some(("state", handle.as_str())),
            remove,
            form::Separators::Ampersand,
        )
        .map_err(form_error)
    };
    let query = if put_in_query || !remove.is_empty() {
        Some(edit(query, Some(&query_layout), put_in_query)?)
    } else {
        None
    };
    let body = match body {
        Some(b) if put_in_body || !remove.is_empty() => {
            Some(edit(b, body_layout.as_ref(), put_in_body)?)
        }
        _ => None,
    };
    Ok(Plan::Record {
        query,
        body,
        minted: Minted {
            handle,
            record,
            source: None,
        },
    })
}

/// What a continuation says of its transaction: each of these it carries
/// must be the transaction's (invariant I4).
struct Continuation {
    key: StoreKey,
    client: Option<crate::store::Fingerprint>,
    redirect_uri: Option<crate::store::Fingerprint>,
    challenge: Option<Challenge>,
}

fn continuation(
    config: &Config,
    handle: &str,
    params: &Params<'_>,
) -> Result<Continuation, Rejection> {
    // A request object could name another client or redirect_uri than the
    // parameters that are checked here.
    if get(params, REQUEST_URI).is_some() || get(params, REQUEST).is_some() {
        return Err(Rejection::RequestObjectUnsupported);
    }
    let challenge = match get(params, CHALLENGE) {
        Some(_) => challenge_of(config, params, Requirement::Optional)?,
        None if get(params, METHOD).is_some() => return Err(Rejection::MethodWithoutChallenge),
        None => None,
    };
    Ok(Continuation {
        key: StoreKey::of(handle),
        client: get(params, CLIENT_ID).map(fingerprint),
        redirect_uri: get(params, REDIRECT_URI).map(fingerprint),
        challenge,
    })
}

impl Continuation {
    /// Whether what the continuation carries is its transaction's: the same
    /// client, the same redirect_uri (one where the transaction had none
    /// is not), the same challenge.
    fn matches(&self, pending: &PendingAuthorization) -> bool {
        self.client.is_none_or(|c| c == pending.client)
            && self
                .redirect_uri
                .is_none_or(|r| pending.redirect_uri == Some(r))
            && self.challenge.is_none_or(|c| pending.challenge == Some(c))
    }
}

async fn check_authorization<St: Store>(
    shared: &Shared<St>,
    query: &str,
    body: Option<&str>,
    source: Option<Source>,
) -> Result<Authorized, Rejection> {
    match plan_authorization(&shared.config, query, body)? {
        Plan::Forward => Ok(Authorized::Forward),
        Plan::Continuation(continuation) => {
            match shared.store.get_pending(&continuation.key).await {
                Ok(Some(pending)) if continuation.matches(&pending) => {
                    tracing::debug!(endpoint = "authorize", "continuation forwarded");
                    Ok(Authorized::Forward)
                }
                Ok(Some(_)) => Err(Rejection::ContinuationMismatch),
                Ok(None) => Err(Rejection::TransactionExpired),
                Err(e) => {
                    tracing::error!(error = %e, "store failed while checking a transaction");
                    Err(Rejection::StoreUnavailable)
                }
            }
        }
        Plan::Record {
            query,
            body,
            mut minted,
        } => {
            // A store that can tell it would refuse (the source at its
            // quota, the store full, or its backend failed a moment ago)
            // refuses before the upstream does any work; otherwise the
            // write after the upstream's answer does.
            match shared.store.admission_hint(source) {
                Ok(()) => {}
                Err(StoreError::Full) => return Err(Rejection::StoreFull),
                Err(StoreError::SourceQuota) => return Err(Rejection::SourceQuota),
                Err(e) => {
                    tracing::warn!(error = %e, "store unavailable; authorization refused");
                    return Err(Rejection::StoreUnavailable);
                }
            }
            minted.source = source;
            Ok(Authorized::Rewritten {
                query,
                body,
                minted,
            })
        }
    }
}

fn with_query(uri: &Uri, query: &str) -> Option<Uri> {
    let path = uri.path();
    let mut pq = String::with_capacity(path.len() + 1 + query.len());
    pq.push_str(path);
    if !query.is_empty() {
        pq.push('?');
        pq.push_str(query);
    }
    let mut parts = uri.clone().into_parts();
    // From the String's own buffer: no copy.
    parts.path_and_query = Some(PathAndQuery::from_maybe_shared(Bytes::from(pq)).ok()?);
    Uri::from_parts(parts).ok()
}

/// The request is taken apart before the `async` block, which then holds
/// the parts alone: an `async fn` would hold the whole request as well, in
/// a future that is boxed (copied whole) and polled on every request.
fn authorize<S, St, ReqBody, ResBody>(
    shared: Arc<Shared<St>>,
    mut inner: S,
    req: Request<ReqBody>,
) -> impl Future<Output = Result<Response<ResponseBody<ResBody>>, S::Error>>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
    St: Store,
    ReqBody: Body<Data = Bytes>,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    let asked = Asked::of(req.headers(), req.uri());
    let json = asked.wants_json;
    let (mut parts, body) = req.into_parts();
    async move {
        if connection_names_checked_field(&parts.headers) {
            return Ok(reject_authorize(
                Rejection::ConnectionNamesCheckedField,
                json,
            ));
        }
        if cookie_names_checked_parameter(&parts.headers, is_authorize_param) {
            return Ok(reject_authorize(Rejection::ParameterInCookie, json));
        }
        // Whatever the method: a server that reads a form for any method
        // (or for `post`, a method of its own) would read what was not
        // checked.
        let reads_body = announces_body(&parts.headers, &body);
        let (data, body) = if reads_body {
            match read_body(&parts.headers, body, shared.config.max_authorize_body).await {
                Ok(data) => (Some(data), None),
                Err(rejection) => return Ok(reject_authorize(rejection, json)),
            }
        } else {
            (None, Some(body))
        };
        let form_body = match &data {
            Some(d) if !d.is_empty() => {
                if !is_form(&parts.headers) {
                    return Ok(reject_authorize(Rejection::UnsupportedMediaType, json));
                }
                match std::str::from_utf8(d) {
                    Ok(s) => Some(s),
                    _ => return Ok(reject_authorize(Rejection::MalformedParameters, json)),
                }
            }
            _ => None,
        };
        let query = parts.uri.query().unwrap_or("");
        let source = parts.extensions.get::<Source>().copied();
        let outcome = match check_authorization(&shared, query, form_body, source).await {
            Ok(outcome) => outcome,
            Err(rejection) => return Ok(reject_authorize(rejection, json)),
        };
        let (body, minted) = match outcome {
            Authorized::Forward => match (data, body) {
                (Some(d), _) => (RequestBody::buffered(d), None),
                (None, Some(b)) => (RequestBody::inner(b), None),
                (None, None) => (RequestBody::buffered(Bytes::new()), None),
            },
            Authorized::Rewritten {
                query,
                body: new_body,
                minted,
            } => {
                if let Some(q) = query {
                    match with_query(&parts.uri, &q) {
                        Some(uri) => parts.uri = uri,
                        None => return Ok(reject_authorize(Rejection::MalformedParameters, json)),
                    }
                }
                let body = match (new_body, data, body) {
                    (Some(nb), _, _) => {
                        set_content_length(&mut parts.headers, nb.len());
                        RequestBody::buffered(Bytes::from(nb))
                    }
                    (None, Some(d), _) => RequestBody::buffered(d),
                    (None, None, Some(b)) => RequestBody::inner(b),
                    (None, None, None) => RequestBody::buffered(Bytes::new()),
                };
                (body, Some(minted))
            }
        };
        let body = inert(body, &mut parts.headers);
        let response = inner.call(Request::from_parts(parts, body)).await?;
        Ok(shared.inspect_response(response, asked, minted).await)
    }
}

fn reject_authorize<B: Body>(rejection: Rejection, json: bool) -> Response<ResponseBody<B>> {
    tracing::info!(
        endpoint = "authorize",
        reason = rejection.as_str(),
        "request rejected"
    );
    page(rejection, json)
}

/// The parameters of a token request that the checks read.
const TOKEN_PARAMS: [&str; 6] = [
    "grant_type",
    "code",
    "code_verifier",
    "client_id",
    "redirect_uri",
    "client_assertion",
];
const T_GRANT: usize = 0;
const T_CODE: usize = 1;
const T_VERIFIER: usize = 2;
const T_CLIENT: usize = 3;
const T_REDIRECT: usize = 4;
const T_ASSERTION: usize = 5;
/// Token parameters that a server merging the query into the body (servlet
/// and PHP style) would read from the query string, where they would
/// override what was checked. Names are folded as [`form::name_of`] reads
/// them; `client_assertion` stands for every name that starts with it.
const TOKEN_QUERY_PARAMS: [&str; 6] = [
    "code",
    "code_verifier",
    "grant_type",
    "redirect_uri",
    "client_id",
    "client_assertion",
];

fn is_token_query_param(name: &str) -> bool {
    TOKEN_QUERY_PARAMS.contains(&name) || name.starts_with("client_assertion")
}
/// Token requests are read as a server that also splits on `;` would.
const TOKEN_SEPARATORS: form::Separators = form::Separators::AmpersandOrSemicolon;

/// A token request that passed, and the binding it redeemed (if any), to be
/// restored should the upstream fail.
struct Admitted {
    body: Bytes,
    redeemed: Option<(StoreKey, CodeBinding)>,
    changed: bool,
}

/// The client a token request speaks for: the body's `client_id`, the HTTP
/// Basic user (RFC 6749 §2.3.1), or a client assertion's `sub` (RFC 7523
/// §3). Where more than one is present they must agree.
fn client_of<'p>(
    headers: &HeaderMap,
    params: &'p [Option<Cow<'_, str>>; 6],
) -> Result<Option<Cow<'p, str>>, Rejection> {
    let mut client: Option<Cow<'p, str>> = params
        .get(T_CLIENT)
        .and_then(|c| c.as_deref())
        .map(Cow::Borrowed);
    let mut agree = |other: String| -> Result<(), Rejection> {
        match &client {
            Some(c) if **c != *other => Err(Rejection::ConflictingClient),
            Some(_) => Ok(()),
            None => {
                client = Some(Cow::Owned(other));
                Ok(())
            }
        }
    };
    if let Some(user) = basic_user(headers)? {
        agree(user)?;
    }
    if let Some(assertion) = params.get(T_ASSERTION).and_then(|a| a.as_deref()) {
        agree(assertion_subject(assertion)?)?;
    }
    Ok(client)
}

fn basic_user(headers: &HeaderMap) -> Result<Option<String>, Rejection> {
    use base64::Engine;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| Rejection::MalformedParameters)?
        .trim();
    let Some((scheme, credentials)) = value.split_once(' ') else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let decoded = LENIENT
        .decode(credentials.trim())
        .map_err(|_| Rejection::MalformedParameters)?;
    let decoded = String::from_utf8(decoded).map_err(|_| Rejection::MalformedParameters)?;
    let user = decoded.split_once(':').map_or(decoded.as_str(), |(u, _)| u);
    let user = form::decode(user).map_err(|_| Rejection::MalformedParameters)?;
    Ok(Some(user.into_owned()))
}

/// The `sub` claim of a JWT client assertion, read without verifying the
/// signature: the upstream verifies it, and the proxy only needs to know
/// which client the request claims to be.
fn assertion_subject(assertion: &str) -> Result<String, Rejection> {
    use base64::Engine;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let payload = assertion
        .split('.')
        .nth(1)
        .ok_or(Rejection::MalformedClientAssertion)?;
    let bytes = LENIENT
        .decode(payload)
        .map_err(|_| Rejection::MalformedClientAssertion)?;
    let claims: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| Rejection::MalformedClientAssertion)?;
    claims
        .get("sub")
        .and_then(|s| s.as_str())
        .map(str::to_owned)
        .ok_or(Rejection::MalformedClientAssertion)
}

/// Refuses a token request's query that holds a token parameter, in any
/// spelling a server merging query and body would read.
fn check_token_query(query: Option<&str>) -> Result<(), Rejection> {
    let Some(query) = query else {
        return Ok(());
    };
    for pair in form::raw_pairs(query, TOKEN_SEPARATORS) {
        let name = form::name_of(pair).map_err(|_| Rejection::MalformedParameters)?;
        if is_token_query_param(&name) {
            return Err(Rejection::TokenParametersInQuery);
        }
    }
    Ok(())
}

async fn check_token<St: Store>(
    shared: &Shared<St>,
    headers: &HeaderMap,
    query: Option<&str>,
    data: Bytes,
) -> Result<Admitted, Rejection> {
    let config = &shared.config;
    check_token_query(query)?;
    let text = std::str::from_utf8(&data).map_err(|_| Rejection::MalformedParameters)?;
    let params = form::collect(text, TOKEN_PARAMS, TOKEN_SEPARATORS, true).map_err(form_error)?;
    let param = |i: usize| params.get(i).and_then(|p| p.as_deref());
    // Only grants known to carry no code pass unchecked; a missing grant
    // type, any spelling a lenient upstream could read as
    // authorization_code, or a request with a code is checked.
    let other_grant = param(T_GRANT).is_some_and(|g| config.passes_grant(g));
    if other_grant && param(T_CODE).is_none() {
        return Ok(Admitted {
            body: data.clone(),
            redeemed: None,
            changed: false,
        });
    }
    let code = param(T_CODE)
        .filter(|c| !c.is_empty())
        .ok_or(Rejection::MissingCode)?;
    let client = client_of(headers, &params)?;
    let verifier = param(T_VERIFIER);
    let key = StoreKey::of(code);

    let binding = match shared.store.redeem(&key).await {
        Ok(Redemption::Redeemed(binding)) => binding,
        Ok(Redemption::Spent) => return Err(Rejection::CodeSpent),
        Ok(Redemption::Expired) => return Err(Rejection::CodeExpired),
        Ok(Redemption::Missing) => {
            return match config.requirement_for_unbound(client.as_deref()) {
                Requirement::Required => Err(Rejection::UnboundCode),
                Requirement::Optional => {
                    tracing::debug!(endpoint = "token", "unbound code forwarded (optional mode)");
                    Ok(Admitted {
                        body: data.clone(),
                        redeemed: None,
                        changed: false,
                    })
                }
            };
        }
        Err(e) => {
            tracing::error!(error = %e, "store failed while redeeming a code");
            return Err(Rejection::StoreUnavailable);
        }
    };

    if let Err(rejection) = check_binding(&binding, client.as_deref(), param(T_REDIRECT), verifier)
    {
        let failures = binding.failures.saturating_add(1);
        if failures >= config.max_failed_attempts {
            tracing::warn!(failures, "code burned after repeated failed attempts");
        } else if let Err(e) = shared
            .store
            .restore(
                &key,
                CodeBinding {
                    failures,
                    ..binding
                },
            )
            .await
        {
            tracing::error!(error = %e, "store failed while counting a failed attempt; code stays spent");
        }
        return Err(rejection);
    }

    let (body, changed) = if config.strip_pkce_params && verifier.is_some() {
        match form::edit(text, None, &["code_verifier"], TOKEN_SEPARATORS) {
            Ok(stripped) => (Bytes::from(stripped), true),
            Err(e) => return Err(form_error(e)),
        }
    } else {
        (data.clone(), false)
    };
    tracing::info!(
        endpoint = "token",
        method = binding.challenge.map_or("none", |c| c.method.as_str()),
        "code verified"
    );
    Ok(Admitted {
        body,
        redeemed: Some((key, binding)),
        changed,
    })
}

fn check_binding(
    binding: &CodeBinding,
    client: Option<&str>,
    redirect_uri: Option<&str>,
    verifier: Option<&str>,
) -> Result<(), Rejection> {
    if client.map(fingerprint) != Some(binding.client) {
        return Err(Rejection::ClientMismatch);
    }
    // RFC 6749 §4.1.3: the redirect_uri must match where the authorization
    // request had one.
    if let (Some(uri), Some(recorded)) = (redirect_uri, binding.redirect_uri)
        && fingerprint(uri) != recorded
    {
        return Err(Rejection::RedirectUriMismatch);
    }
    match (&binding.challenge, verifier) {
        (None, None) => Ok(()),
        (None, Some(_)) => Err(Rejection::Downgrade),
        (Some(_), None) => Err(Rejection::VerifierMissing),
        (Some(challenge), Some(verifier)) => {
            if crate::pkce::check_unreserved(verifier).is_err() {
                return Err(Rejection::VerifierMalformed);
            }
            if crate::pkce::verify_digest(verifier, &challenge.digest) {
                Ok(())
            } else {
                Err(Rejection::VerifierMismatch)
            }
        }
    }
}

/// A redeemed binding on its way to the upstream. It goes back to the store
/// only when the upstream certainly did not redeem the code (invariant I6):
/// nothing of the request reached it, or it answered with a 5xx. After a
/// timeout, a lost connection or a cancelled request that may have reached
/// it, the code stays spent: the client starts the sign-in again, and no
/// code is ever forwarded twice.
struct RestoreGuard<St: Store> {
    store: St,
    key: StoreKey,
    binding: Option<CodeBinding>,
    progress: ForwardProgress,
}

impl<St: Store> RestoreGuard<St> {
    /// Settles the binding once the inner service answered (`Some(status)`)
    /// or failed (`None`).
    async fn settle(mut self, status: Option<StatusCode>) {
        let answered_5xx = status.is_some_and(|s| s.is_server_error());
        let unredeemed = match self.progress.get() {
            Progress::NotSent => true,
            Progress::Unanswered => false,
            _ => answered_5xx,
        };
        let Some(binding) = self.binding.take() else {
            return;
        };
        if unredeemed {
            restore_binding(&self.store, &self.key, binding, "upstream did not redeem").await;
        } else if answered_5xx || status.is_none() {
            tracing::warn!(
                "upstream may have redeemed the code before failing; binding stays spent"
            );
        }
    }
}

async fn restore_binding<St: Store>(store: &St, key: &StoreKey, binding: CodeBinding, why: &str) {
    match store.restore(key, binding).await {
        Ok(()) => tracing::warn!(why, "code binding restored for a retry"),
        Err(e) => tracing::error!(error = %e, why, "store failed while restoring a code binding"),
    }
}

impl<St: Store> Drop for RestoreGuard<St> {
    fn drop(&mut self) {
        let Some(binding) = self.binding.take() else {
            return;
        };
        if self.progress.get() != Progress::NotSent {
            tracing::warn!(
                "token request cancelled after it may have reached the upstream; binding stays spent"
            );
            return;
        }
        let store = self.store.clone();
        let key = self.key;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                drop(runtime.spawn(async move {
                    restore_binding(&store, &key, binding, "token request cancelled unsent").await;
                }));
            }
            Err(_) => tracing::error!(
                "token request cancelled outside a runtime; code binding not restored"
            ),
        }
    }
}

/// Takes the request apart before the `async` block, as [`authorize`] does.
fn token<S, St, ReqBody, ResBody>(
    shared: Arc<Shared<St>>,
    mut inner: S,
    req: Request<ReqBody>,
) -> impl Future<Output = Result<Response<ResponseBody<ResBody>>, S::Error>>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
    St: Store,
    ReqBody: Body<Data = Bytes>,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    let origin = req.headers().get(header::ORIGIN).cloned();
    let asked = Asked::of(req.headers(), req.uri());
    let (mut parts, body) = req.into_parts();
    async move {
        let answer = |response: Response<ResBody>| async {
            shared.origins.learn(origin.as_ref(), response.headers());
            if needs_inspection(&response) {
                shared.inspect_response(response, asked, None).await
            } else {
                response.map(ResponseBody::inner)
            }
        };
        let reject = |rejection: Rejection| {
            tracing::info!(
                endpoint = "token",
                reason = rejection.as_str(),
                "request rejected"
            );
            Ok(shared
                .token_rejection(rejection, origin.as_ref())
                .map(ResponseBody::full))
        };
        if parts.method == Method::OPTIONS {
            // A server that does not route by method reads a preflight's
            // query as a token request.
            if let Err(rejection) = check_token_query(parts.uri.query()) {
                return reject(rejection);
            }
            if cookie_names_checked_parameter(&parts.headers, is_token_query_param) {
                return reject(Rejection::ParameterInCookie);
            }
            let request = Request::from_parts(parts, RequestBody::inner(body));
            let response = inner.call(request).await?;
            return Ok(answer(response).await);
        }
        if connection_names_checked_field(&parts.headers) {
            return reject(Rejection::ConnectionNamesCheckedField);
        }
        if cookie_names_checked_parameter(&parts.headers, is_token_query_param) {
            return reject(Rejection::ParameterInCookie);
        }
        if !is_form(&parts.headers) {
            return reject(Rejection::UnsupportedMediaType);
        }
        let data = match read_body(&parts.headers, body, shared.config.max_token_body).await {
            Ok(data) => data,
            Err(rejection) => return reject(rejection),
        };
        let admitted = match check_token(&shared, &parts.headers, parts.uri.query(), data).await {
            Ok(admitted) => admitted,
            Err(rejection) => return reject(rejection),
        };
        if admitted.changed {
            set_content_length(&mut parts.headers, admitted.body.len());
        }
        let guard = admitted.redeemed.map(|(key, binding)| {
            let progress = ForwardProgress::default();
            parts.extensions.insert(progress.clone());
            RestoreGuard {
                store: shared.store.clone(),
                key,
                binding: Some(binding),
                progress,
            }
        });
        let body = inert(RequestBody::buffered(admitted.body), &mut parts.headers);
        let request = Request::from_parts(parts, body);
        let result = inner.call(request).await;
        if let Some(guard) = guard {
            guard
                .settle(result.as_ref().ok().map(Response::status))
                .await;
        }
        Ok(answer(result?).await)
    }
}

async fn metadata<S, St, ReqBody, ResBody>(
    shared: Arc<Shared<St>>,
    mut inner: S,
    req: Request<ReqBody>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
    St: Store,
    ReqBody: Body<Data = Bytes>,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    let is_head = req.method() == Method::HEAD;
    let asked = Asked::of(req.headers(), req.uri());
    let response = inner.call(req.map(RequestBody::inner)).await?;
    if needs_inspection(&response) {
        return Ok(shared.inspect_response(response, asked, None).await);
    }
    let (mut parts, body) = response.into_parts();
    if parts.status != StatusCode::OK {
        return Ok(Response::from_parts(parts, ResponseBody::inner(body)));
    }
    if is_head {
        parts.headers.remove(header::ETAG);
        parts.headers.remove(header::CONTENT_LENGTH);
        return Ok(Response::from_parts(parts, ResponseBody::inner(body)));
    }
    let limit = shared.config.metadata_limit;
    let (data, trailers) = match collect_bounded(body, limit).await {
        Collected::Complete { data, trailers } => (data, trailers),
        Collected::Over { frames, rest } => {
            return Ok(Response::from_parts(
                parts,
                ResponseBody::replay(frames, None, Some(rest)),
            ));
        }
        Collected::Failed { frames, error } => {
            return Ok(Response::from_parts(
                parts,
                ResponseBody::replay(frames, Some(error), None),
            ));
        }
    };
    let decoded = match parts
        .headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
    {
        None => Ok(Cow::Borrowed(&data[..])),
        Some(enc) => coding::decode_content(enc, &data, limit).map(Cow::Owned),
    };
    let rewritten = decoded
        .ok()
        .and_then(|d| metadata::rewrite_metadata(&d, shared.config.methods_supported(), true));
    match rewritten {
        Some(json) => {
            parts.headers.remove(header::CONTENT_ENCODING);
            parts.headers.remove(header::ETAG);
            set_content_length(&mut parts.headers, json.len());
            tracing::debug!("discovery metadata rewritten");
            Ok(Response::from_parts(
                parts,
                ResponseBody::full(Bytes::from(json)),
            ))
        }
        None => Ok(Response::from_parts(
            parts,
            ResponseBody::replay(frames_of(data, trailers), None, None),
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// `is_form` as it was written over `str`, to hold the byte-wise one to.
    fn is_form_by_str(headers: &HeaderMap) -> bool {
        let coded = headers
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"));
        let Some(ct) = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .filter(|_| !coded)
        else {
            return false;
        };
        let mut parts = ct.split(';');
        let essence = parts.next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return false;
        }
        parts.all(|param| {
            let (name, value) = param.split_once('=').unwrap_or((param, ""));
            !name.trim().eq_ignore_ascii_case("charset")
                || matches!(
                    value.trim().trim_matches('"').to_ascii_lowercase().as_str(),
                    "utf-8" | "utf8" | "us-ascii"
                )
        })
    }

    #[test]
    fn a_delivery_reaches_the_client_only_at_its_redirect_uri() {
        let r = crate::store::fingerprint("https://client.example/caf\u{e9}/cb");
        let reaches = |target: &[u8]| reaches_client(Some(r), std::iter::once(target), None);
        assert!(reaches("https://client.example/caf\u{e9}/cb".as_bytes()));
        // An old server's latin-1 of the same URI.
        assert!(reaches(b"https://client.example/caf\xe9/cb"));
        for target in [
            &b"https://client.example/caf%C3%A9/cb"[..],
            b"https://client.example/caf\xe9/cb/",
            b"https://client.example/cafe/cb",
        ] {
            assert!(!reaches(target), "{}", String::from_utf8_lossy(target));
        }
        let host = HeaderValue::from_static("AS.example:8443");
        let leaves = |target: &[u8]| leaves_the_server(target, Some(&host));
        for target in [
            &b"https://client.example/cb"[..],
            b"com.example.app:/cb",
            b"https://as.example:8443@client.example/cb",
            // A browser reads the host `cb` here.
            b"https:///cb",
        ] {
            assert!(leaves(target), "{}", String::from_utf8_lossy(target));
        }
        let default = HeaderValue::from_static("as.example:443");
        for target in [
            &b"https://as.example/authorize"[..],
            b"https:as.example/authorize",
            b"https:\\\\AS.example./authorize",
            b"https://as.example:443/authorize",
        ] {
            assert!(
                !leaves_the_server(target, Some(&default)),
                "{}",
                String::from_utf8_lossy(target)
            );
        }
        assert!(leaves_the_server(b"http://as.example/cb", Some(&default)));
        for target in [
            &b"/cb"[..],
            b"cb?x=a:b",
            b"https://as.example:8443/cb",
            b"HTTPS://AS.EXAMPLE:8443/cb",
            b"https://user@as.example:8443/cb",
            b"https://as.example:8443\\@evil.example/cb",
        ] {
            assert!(!leaves(target), "{}", String::from_utf8_lossy(target));
        }
    }

    #[test]
    fn the_types_a_browser_never_renders_as_a_page() {
        for never in [
            &b"application/json"[..],
            b"Application/JSON; charset=utf-8",
            b"text/plain",
            b"application/problem+json",
            b"image/png",
            b"font/woff2",
        ] {
            assert!(never_rendered(never), "{}", String::from_utf8_lossy(never));
        }
        for may in [
            &b"text/html"[..],
            b"application/xhtml+xml",
            b"text/xml",
            b"image/svg+xml",
            b"text/plain, text/html",
            b"html",
            b"unknown/unknown",
            b"*/*",
            b"",
        ] {
            assert!(!never_rendered(may), "{}", String::from_utf8_lossy(may));
        }
    }

    #[test]
    fn cookies_named_as_checked_parameters_are_found() {
        for (cookie, named) in [
            ("session=abc; code=x", true),
            ("Code=x", true),
            ("c%6Fde=x", true),
            ("code[0]=x", true),
            ("grant.type=authorization_code", true),
            ("client_assertion_type=x", true),
            ("session=abc; theme=dark", false),
            ("qrcode=x", false),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::COOKIE, HeaderValue::from_str(cookie).unwrap());
            assert_eq!(
                cookie_names_checked_parameter(&headers, is_token_query_param),
                named,
                "{cookie}"
            );
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("sid=1; STATE=x"));
        assert!(cookie_names_checked_parameter(&headers, is_authorize_param));
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("code_challenge_method=x"),
        );
        assert!(cookie_names_checked_parameter(&headers, is_authorize_param));
    }

    #[test]
    fn form_content_types() {
        for ct in [
            "application/x-www-form-urlencoded",
            " Application/X-WWW-Form-URLEncoded ",
            "application/x-www-form-urlencoded;charset=UTF-8",
            "application/x-www-form-urlencoded; charset=\"utf8\"",
            "application/x-www-form-urlencoded; charset=\"\"us-ascii\"\"",
            "application/x-www-form-urlencoded; charset=\t\"UTF-8\" ",
            "application/x-www-form-urlencoded; charset",
            "application/x-www-form-urlencoded; charset=",
            "application/x-www-form-urlencoded; charset=latin1",
            "application/x-www-form-urlencoded; charset=utf-8; charset=latin1",
            "application/x-www-form-urlencoded; x=1; CHARSET = utf-8",
            "application/x-www-form-urlencoded; charset=\"utf-8",
            "application/x-www-form-urlencoded;;",
            "application/x-www-form-urlencoded=; a",
            "application/json",
            "multipart/form-data; boundary=x",
            "",
            ";",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            assert_eq!(is_form(&headers), is_form_by_str(&headers), "{ct:?}");
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            assert!(!is_form(&headers), "{ct:?}");
        }
        assert!(!is_form(&HeaderMap::new()));
    }
}
