//! The forwarder as a `Service`, and its `ResponseFuture`: a request
//! routed onto an upstream connection, connected, sent again once when a
//! reused connection lost it, and answered, or timed out.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use tokio::time::Sleep;
use tower_pkce::{Endpoint, ForwardProgress, RequestBody};
use tower_service::Service;

use super::errors::{UpstreamError, client_body_error, invalid_response, upstream_error};
use super::pool::{ClientConnection, Source};
use super::rewrite::{remove_hop_by_hop, reusable_after};
use super::wait::{Outbound, Pending, Waiting, wait_for_connection};
use super::{ClientBody, Forwarder, ProxyBody, Shared, mark};
use crate::gate::Slot;
use crate::h1::client::{Connection, Exchange, Http1Error, Prepared, Retry, UpstreamBody};
use crate::metrics::Limit;

impl Service<Request<RequestBody<ClientBody>>> for Forwarder {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<RequestBody<ClientBody>>) -> ResponseFuture {
        // The PKCE layer classified the request and put the endpoint here:
        // errors at the token endpoint are JSON, and upstream latency is
        // recorded by endpoint.
        let endpoint = req
            .extensions()
            .get::<Endpoint>()
            .copied()
            .unwrap_or(Endpoint::Other);
        let progress = req.extensions().get::<ForwardProgress>().cloned();
        mark(progress.as_ref(), ForwardProgress::not_sent);
        let Some(uri) = self.upstream_uri(req.uri()) else {
            return ResponseFuture::ready(upstream_error(StatusCode::BAD_GATEWAY, endpoint));
        };
        let reuse = reusable_after(endpoint, &req);
        let overrides = self.forwarded_headers(&req);
        remove_hop_by_hop(req.headers_mut());
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        let started = tokio::time::Instant::now();
        let timer = self
            .conn
            .response_timer(started + self.shared.response_timeout);
        let step = match self.conn.try_share() {
            Some(home) => {
                self.shared
                    .pool
                    .route(&self.shared, &self.conn, progress.as_ref(), |buf| {
                        Prepared::new(buf, req, &overrides, home, reuse)
                    })
            }
            None => Step::Waiting(wait_for_connection(
                self.shared.clone(),
                self.conn.clone(),
                Pending::Unshared(Box::new(Outbound {
                    req,
                    overrides,
                    reuse,
                })),
            )),
        };
        ResponseFuture(State::Forwarding(Forwarding {
            step,
            timer: Some(timer),
            started,
            shared: self.shared.clone(),
            conn: self.conn.clone(),
            endpoint,
            progress,
        }))
    }
}

/// The future a [`Forwarder`] returns: the upstream's response, or the
/// proxy's own 502 or 504.
pub struct ResponseFuture(State);

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

pub(super) enum State {
    /// An answer known at once.
    Ready(Option<Response<ProxyBody>>),
    Forwarding(Forwarding),
}

/// A request on its way to the upstream, and its response timer.
pub(super) struct Forwarding {
    step: Step,
    timer: Option<Pin<Box<Sleep>>>,
    started: tokio::time::Instant,
    shared: Arc<Shared>,
    conn: Arc<ClientConnection>,
    endpoint: Endpoint,
    /// The layer's report of how far the request got, when it asked.
    progress: Option<ForwardProgress>,
}

pub(super) enum Step {
    /// Waiting for a share of the client connection's upstream
    /// connections, or for one of them, because a bound is reached.
    Waiting(Waiting),
    /// Waiting for a new connection, with the request ready for it.
    Connecting(Box<Connecting>),
    /// On a connection of the proxy's own; `reused` when it served a
    /// request before, so that it may have been closed meanwhile.
    Exchanging { exchange: Exchange, reused: bool },
    /// The answer is out.
    Done,
}

pub(super) struct Connecting {
    pub(super) connect:
        Pin<Box<dyn Future<Output = Result<Box<Connection>, UpstreamError>> + Send>>,
    pub(super) request: Prepared,
}

impl ResponseFuture {
    fn ready(response: Response<ProxyBody>) -> Self {
        Self(State::Ready(Some(response)))
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().0 {
            // Polled again after its answer: a 502 rather than a panic.
            State::Ready(response) => Poll::Ready(Ok(response
                .take()
                .unwrap_or_else(|| upstream_error(StatusCode::BAD_GATEWAY, Endpoint::Other)))),
            State::Forwarding(forwarding) => forwarding.poll(cx).map(Ok),
        }
    }
}

impl Forwarding {
    /// The upstream's answer, or `None` once the response timer fires. The
    /// exchange is polled first: an answer that is ready never registers
    /// the timer.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Response<ProxyBody>> {
        let outcome = match self.poll_upstream(cx) {
            Poll::Ready(result) => Some(result),
            Poll::Pending => {
                let fired = self
                    .timer
                    .as_mut()
                    .is_none_or(|timer| timer.as_mut().poll(cx).is_ready());
                if !fired {
                    return Poll::Pending;
                }
                None
            }
        };
        Poll::Ready(self.finish(outcome))
    }

    fn poll_upstream(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Response<UpstreamBody>, UpstreamError>> {
        loop {
            match &mut self.step {
                Step::Exchanging { exchange, .. } => {
                    let result = ready!(exchange.poll_head(cx));
                    let Step::Exchanging { exchange, reused } =
                        std::mem::replace(&mut self.step, Step::Done)
                    else {
                        return Poll::Ready(Err(UpstreamError::Exchange(Http1Error::Closed)));
                    };
                    let e = match result {
                        Ok(head) => return Poll::Ready(Ok(exchange.into_response(head))),
                        Err(e) => e,
                    };
                    // A reused connection may have been closed by the
                    // upstream just as the request went out. A request that
                    // is safe to send again goes once more, on a new
                    // connection: never from one pooled connection to the
                    // next, each of which may have received it.
                    let again = if reused {
                        exchange.into_retry(&e)
                    } else {
                        None
                    };
                    match again {
                        Some(Retry { request, unsent }) => {
                            if unsent {
                                mark(self.progress.as_ref(), ForwardProgress::not_sent);
                            }
                            self.step = match Slot::take(&self.shared.open) {
                                Some(slot) => Step::Connecting(Box::new(Connecting {
                                    connect: self.shared.pool.connect(slot),
                                    request,
                                })),
                                None => Step::Waiting(wait_for_connection(
                                    self.shared.clone(),
                                    self.conn.clone(),
                                    Pending::Again(request),
                                )),
                            };
                        }
                        None => return Poll::Ready(Err(UpstreamError::Exchange(e))),
                    }
                }
                Step::Waiting(waiting) => {
                    let (request, source) = ready!(waiting.as_mut().poll(cx))?;
                    self.step = match source {
                        Source::Idle(upstream) => {
                            mark(self.progress.as_ref(), ForwardProgress::sent);
                            Step::Exchanging {
                                exchange: request.send_on(upstream),
                                reused: true,
                            }
                        }
                        Source::New(slot) => Step::Connecting(Box::new(Connecting {
                            connect: self.shared.pool.connect(slot),
                            request,
                        })),
                    };
                }
                Step::Connecting(connecting) => {
                    let connected = ready!(connecting.connect.as_mut().poll(cx));
                    let Step::Connecting(connecting) =
                        std::mem::replace(&mut self.step, Step::Done)
                    else {
                        return Poll::Ready(Err(UpstreamError::Exchange(Http1Error::Closed)));
                    };
                    let connected = connected?;
                    mark(self.progress.as_ref(), ForwardProgress::sent);
                    self.step = Step::Exchanging {
                        exchange: connecting.request.send_on(connected),
                        reused: false,
                    };
                }
                Step::Done => {
                    return Poll::Ready(Err(UpstreamError::Exchange(Http1Error::Closed)));
                }
            }
        }
    }

    /// The response for `outcome` (`None`: the timer fired), with the timer
    /// given back and the upstream's latency recorded.
    fn finish(
        &mut self,
        outcome: Option<Result<Response<UpstreamBody>, UpstreamError>>,
    ) -> Response<ProxyBody> {
        if let Some(timer) = self.timer.take() {
            self.conn.give_back(timer);
        }
        let endpoint = self.endpoint;
        let metrics = &self.shared.metrics;
        metrics.observe_upstream(endpoint, self.started.elapsed());
        match outcome {
            Some(Ok(response)) => {
                let mut response = response.map(Either::Left);
                remove_hop_by_hop(response.headers_mut());
                response
            }
            Some(Err(e)) if crate::h1::server::is_body_timeout(&e) => {
                // Part of the request may have reached the upstream.
                mark(self.progress.as_ref(), ForwardProgress::unanswered);
                tracing::info!(
                    endpoint = endpoint.as_str(),
                    "the request body paused past the body timeout while it was forwarded"
                );
                let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(
                    b"the request body paused for too long\n",
                ))));
                *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                response
            }
            Some(Err(e)) if e.limit().is_some() => {
                mark(self.progress.as_ref(), ForwardProgress::not_sent);
                let limit = e.limit().unwrap_or(Limit::UpstreamConnections);
                let (setting, max) = match limit {
                    Limit::UpstreamConnectionsPerClient => (
                        "--max-upstream-connections-per-client",
                        self.shared.per_client,
                    ),
                    _ => ("--max-upstream-connections", self.shared.open.max()),
                };
                tracing::warn!(
                    endpoint = endpoint.as_str(),
                    setting,
                    max,
                    waited = ?self.shared.wait,
                    "no upstream connection came free in time: answered 503"
                );
                metrics.limit_reached(limit);
                upstream_error(StatusCode::SERVICE_UNAVAILABLE, endpoint)
            }
            Some(Err(e)) => {
                // `unanswered` leaves a request that was never sent as it is.
                if e.nothing_sent() {
                    mark(self.progress.as_ref(), ForwardProgress::not_sent);
                } else {
                    mark(self.progress.as_ref(), ForwardProgress::unanswered);
                }
                if e.client_body_failed() {
                    tracing::info!(
                        endpoint = endpoint.as_str(),
                        error = %e,
                        "request refused: the client's request body is malformed or cut short"
                    );
                    return client_body_error(endpoint);
                }
                let invalid = e.invalid_response();
                let kind = if invalid {
                    "invalid_response"
                } else {
                    "unreachable"
                };
                tracing::warn!(
                    endpoint = endpoint.as_str(),
                    kind,
                    error = %e,
                    source = ?std::error::Error::source(&e).map(ToString::to_string),
                    "upstream request failed"
                );
                metrics.upstream_failure(kind);
                if invalid {
                    invalid_response(endpoint)
                } else {
                    upstream_error(StatusCode::BAD_GATEWAY, endpoint)
                }
            }
            None => {
                mark(self.progress.as_ref(), ForwardProgress::unanswered);
                let timeout = self.shared.response_timeout;
                tracing::warn!(endpoint = endpoint.as_str(), ?timeout, "upstream timed out");
                metrics.upstream_failure("timeout");
                upstream_error(StatusCode::GATEWAY_TIMEOUT, endpoint)
            }
        }
    }
}
