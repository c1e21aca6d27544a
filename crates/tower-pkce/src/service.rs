//! [`Pkce`]: the service that enforces PKCE around an authorization server.
//! It classifies each request and hands it to its step: [`authorize`],
//! [`token`], [`metadata`], or a pass-through whose response is inspected
//! ([`inspect`]).
//!
//! [`authorize`]: crate::authorize
//! [`token`]: crate::token
//! [`metadata`]: crate::metadata
//! [`inspect`]: crate::inspect

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::authorize::authorize;
use crate::body::{RequestBody, ResponseBody};
use crate::error::Rejection;
use crate::inspect::{Asked, BoxFuture, Inspect};
use crate::metadata::discovery;
use crate::path;
use crate::policy::{Classified, Endpoint};
use crate::request::{has_body, restrict_accept_encoding, wants_json};
use crate::shared::Shared;
#[cfg(feature = "memory-store")]
use crate::store::MemoryStore;
use crate::store::Store;
use crate::token::token;

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
#[cfg_attr(docsrs, doc(cfg(feature = "memory-store")))]
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
        shared.start_maintenance();
        let mut req = req;
        // A mark from this layer's own `classify` is trusted; anything else a
        // caller put in the extensions is not: the layer decides.
        let route = match req.extensions_mut().remove::<Classified>() {
            Some(mark) if mark.is_from(&shared.config) => mark.endpoint(),
            _ => shared.config.endpoint(req.uri().path()),
        };
        req.extensions_mut().insert(route);
        let method = req.method().clone();
        match route {
            Endpoint::Other => {
                let asked = Asked::of(req.headers(), req.uri());
                restrict_accept_encoding(req.headers_mut());
                let future = self.inner.call(req.map(RequestBody::inner));
                ResponseFuture::inspect(future, shared, asked)
            }
            Endpoint::Metadata if method == Method::GET || method == Method::HEAD => {
                restrict_accept_encoding(req.headers_mut());
                let inner = self.take_ready();
                ResponseFuture::boxed(discovery(shared, inner, req))
            }
            Endpoint::Metadata => {
                let asked = Asked::of(req.headers(), req.uri());
                let future = self.inner.call(req.map(RequestBody::inner));
                ResponseFuture::inspect(future, shared, asked)
            }
            Endpoint::Authorize => {
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

#[cfg(all(test, feature = "memory-store"))]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http::{Request, Response, StatusCode, header};
    use http_body_util::Full;
    use tower::{Layer, ServiceExt, service_fn};

    use crate::{Endpoint, PkceLayer, RequestBody};

    const ENDPOINT_SEEN: &str = "x-endpoint-seen";

    /// A server that answers with the [`Endpoint`] it found in the
    /// request's extensions, in a header.
    async fn echo_endpoint(
        req: Request<RequestBody<Full<Bytes>>>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let seen = req
            .extensions()
            .get::<Endpoint>()
            .map_or("none", |e| e.as_str());
        Ok(Response::builder()
            .header(header::CONTENT_TYPE, "text/plain")
            .header(ENDPOINT_SEEN, seen)
            .body(Full::default())
            .unwrap())
    }

    async fn send(layer: &PkceLayer, req: Request<Full<Bytes>>) -> Response<()> {
        let service = layer.layer(service_fn(echo_endpoint));
        service.oneshot(req).await.unwrap().map(|_| ())
    }

    fn seen(response: &Response<()>) -> Option<&str> {
        response
            .headers()
            .get(ENDPOINT_SEEN)
            .map(|v| v.to_str().unwrap())
    }

    fn token_request() -> Request<Full<Bytes>> {
        Request::post("/token")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::from(
                "grant_type=authorization_code&code=abc&client_id=app&code_verifier=dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
            ))
            .unwrap()
    }

    #[tokio::test]
    async fn the_inner_service_sees_the_endpoint_of_each_route() {
        let layer = PkceLayer::strict();
        let authorize = Request::get(
            "/authorize?response_type=code&client_id=app&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256",
        );
        let token = Request::post("/token")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        for (request, body, expected) in [
            (authorize, "", "authorize"),
            (token, "grant_type=refresh_token&refresh_token=r", "token"),
            (
                Request::get("/.well-known/oauth-authorization-server"),
                "",
                "metadata",
            ),
            (Request::get("/userinfo"), "", "other"),
        ] {
            let response = send(&layer, request.body(Full::from(body)).unwrap()).await;
            assert_eq!(response.status(), StatusCode::OK, "{expected}");
            assert_eq!(seen(&response), Some(expected));
        }
    }

    #[tokio::test]
    async fn an_endpoint_a_caller_put_in_the_extensions_is_ignored() {
        let layer = PkceLayer::strict();
        let mut request = token_request();
        request.extensions_mut().insert(Endpoint::Other);
        let response = send(&layer, request).await;
        // The token check ran: the code was never bound.
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(seen(&response), None);
    }

    #[tokio::test]
    async fn a_mark_from_other_settings_is_ignored() {
        let layer = PkceLayer::strict();
        let other = PkceLayer::strict().token_path("/oauth/token").unwrap();
        let mut request = token_request();
        assert_eq!(other.classify(&mut request), Endpoint::Other);
        let response = send(&layer, request).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(seen(&response), None);
    }

    #[tokio::test]
    async fn a_mark_from_the_same_settings_is_read_not_made_again() {
        let layer = PkceLayer::strict();
        let mut request = token_request();
        assert_eq!(layer.clone().classify(&mut request), Endpoint::Token);
        let response = send(&layer, request).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        // The mark, not the path, decides: a request whose path changed
        // after it was classified is taken as classified.
        let mut request = Request::get("/userinfo").body(Full::default()).unwrap();
        assert_eq!(layer.classify(&mut request), Endpoint::Other);
        *request.uri_mut() = "/token".parse().unwrap();
        let response = send(&layer, request).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(seen(&response), Some("other"));
    }
}
