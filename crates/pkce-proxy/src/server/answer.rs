//! A request handed to the PKCE layer and on to the forwarder, its body
//! read first when it has not all come, and the `Answer` future that
//! records the response in the metrics; 400 for a refused request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{Either, Full};
use pin_project_lite::pin_project;
use tower::{Service, ServiceExt};
use tower_pkce::{Endpoint, Pkce, Rejection, ResponseBody};

use crate::forward::{ClientBody, Forwarder, ProxyBody};
use crate::h1;
use crate::metrics::Metrics;
use crate::store::ProxyStore;

use super::screen::Refused;
use super::text;

pub(super) type ProxyService = Pkce<Forwarder, ProxyStore>;
pub(super) type ProxyFuture = <ProxyService as Service<Request<ClientBody>>>::Future;
pub(super) type ProxyResponse = Response<ResponseBody<ProxyBody>>;
/// What a client receives: the layer's answer, or the screen's refusal.
pub(super) type ClientResponse = Response<Either<ResponseBody<ProxyBody>, Full<Bytes>>>;

/// The answer to a request the screen refused: 400, one line of text. With
/// `close`, the connection closes after it, as `http1` closes one whose
/// head it refused.
pub(super) fn refusal(
    refused: Refused,
    endpoint: Endpoint,
    metrics: Arc<Metrics>,
    close: bool,
) -> Answer {
    let Refused(why, rejection) = refused;
    tracing::info!(endpoint = endpoint.as_str(), why, "request refused");
    let mut response = text(
        StatusCode::BAD_REQUEST,
        "text/plain; charset=utf-8",
        format!("{why}\n"),
    );
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    if let Some(rejection) = rejection {
        response.extensions_mut().insert(rejection);
    }
    if close {
        response
            .headers_mut()
            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    }
    Answer {
        state: AnswerState::Refused {
            response: Some(response),
        },
        metrics,
        endpoint,
        bodiless: false,
    }
}

/// The answer to a request whose body has not all arrived: the body is
/// read first, up to `limit` bytes (see [`ClientBody::buffered`]), so that
/// a slow client holds no upstream connection while it sends a small body,
/// and only then does the request go to the layer and on to the upstream.
/// A body that pauses past the body timeout gets 408, one that fails 400.
/// Cold: most bodies come with their head, and keeping this out of the
/// request closure leaves the layer's call inlined there.
#[cold]
#[inline(never)]
pub(super) fn buffer_then_handle(
    mut pkce: ProxyService,
    metrics: Arc<Metrics>,
    endpoint: Endpoint,
    req: Request<ClientBody>,
    (limit, budget): (usize, Arc<h1::server::Budget>),
) -> Answer {
    let (parts, body) = req.into_parts();
    let future = Box::pin(async move {
        match body.buffered(limit, &budget).await {
            Ok(body) => {
                let req = Request::from_parts(parts, body);
                match pkce.ready().await {
                    Ok(ready) => match ready.call(req).await {
                        Ok(response) => response.map(Either::Left),
                        Err(never) => match never {},
                    },
                    Err(never) => match never {},
                }
            }
            Err(e) => body_failed(&*e, endpoint).map(Either::Right),
        }
    });
    Answer {
        state: AnswerState::Buffering { future },
        metrics,
        endpoint,
        bodiless: false,
    }
}

/// The answer to a request whose body could not be read: 408 when it
/// paused past the body timeout, else 400. Either way the connection
/// closes after it (HTTP/1.1; the body is unread), or the stream ends
/// (HTTP/2).
pub(super) fn body_failed(
    e: &(dyn std::error::Error + 'static),
    endpoint: Endpoint,
) -> Response<Full<Bytes>> {
    if !h1::server::is_body_timeout(e) {
        // The error names a framing fault, never a value of the request.
        tracing::info!(endpoint = endpoint.as_str(), error = %e, "request body failed");
        return crate::forward::client_body_refusal(endpoint);
    }
    tracing::info!(
        endpoint = endpoint.as_str(),
        "request body paused past the body timeout"
    );
    let mut response = text(
        StatusCode::REQUEST_TIMEOUT,
        "text/plain; charset=utf-8",
        "the request body paused for too long\n".to_string(),
    );
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    response
}

/// The service readied and called at once, so that the request goes
/// straight into the call and is never held in a future of its own. The
/// forwarder is always ready; a service that is not gets the request from a
/// boxed future once it is.
pub(super) fn handle(
    mut pkce: ProxyService,
    metrics: Arc<Metrics>,
    endpoint: Endpoint,
    req: Request<ClientBody>,
) -> Answer {
    let state = match pkce.poll_ready(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(())) => AnswerState::Called {
            future: pkce.call(req),
        },
        Poll::Ready(Err(never)) => match never {},
        Poll::Pending => AnswerState::Waiting {
            future: Box::pin(async move {
                match pkce.ready().await {
                    Ok(ready) => match ready.call(req).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    },
                    Err(never) => match never {},
                }
            }),
        },
    };
    Answer {
        state,
        metrics,
        endpoint,
        bodiless: false,
    }
}

pin_project! {
    /// One request's answer: the PKCE layer's future, and the metrics that
    /// record the response once it is ready.
    pub(super) struct Answer {
        #[pin]
        state: AnswerState,
        metrics: Arc<Metrics>,
        endpoint: Endpoint,
        // The answer to a HEAD request over HTTP/2, whose body hyper would
        // send (HTTP/1.1 leaves it out in `http1`).
        pub(super) bodiless: bool,
    }
}

pin_project! {
    #[project = AnswerProj]
    enum AnswerState {
        Called { #[pin] future: ProxyFuture },
        Waiting { future: Pin<Box<dyn Future<Output = ProxyResponse> + Send>> },
        Buffering { future: Pin<Box<dyn Future<Output = ClientResponse> + Send>> },
        Refused { response: Option<Response<Full<Bytes>>> },
    }
}

impl Future for Answer {
    type Output = ClientResponse;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ClientResponse> {
        let this = self.project();
        let response = match this.state.project() {
            AnswerProj::Called { future } => match ready!(future.poll(cx)) {
                Ok(response) => response.map(Either::Left),
                Err(never) => match never {},
            },
            AnswerProj::Waiting { future } => ready!(future.as_mut().poll(cx)).map(Either::Left),
            AnswerProj::Buffering { future } => ready!(future.as_mut().poll(cx)),
            // Polled again after its answer: an empty 400 rather than a panic.
            AnswerProj::Refused { response } => response
                .take()
                .unwrap_or_else(|| {
                    let mut r = Response::new(Full::default());
                    *r.status_mut() = StatusCode::BAD_REQUEST;
                    r
                })
                .map(Either::Right),
        };
        this.metrics.request(
            *this.endpoint,
            response.status(),
            response.extensions().get::<Rejection>().copied(),
        );
        if *this.bodiless {
            return Poll::Ready(response.map(|_| Either::Right(Full::default())));
        }
        Poll::Ready(response)
    }
}
