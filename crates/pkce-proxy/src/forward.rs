//! Forwarding to the upstream: a pooled hyper-util client, the proxy
//! headers, and 502/504 answers when the upstream fails.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower_pkce::{Endpoint, RequestBody};
use tower_service::Service;

use crate::config::{Config, Upstream};
use crate::metrics::Metrics;

/// The body of a forwarded response: the upstream's, streamed, or the
/// proxy's own error.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// The address of the client that sent a request, put into its extensions
/// by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

type HttpsClient = Client<HttpsConnector<HttpConnector>, RequestBody<Incoming>>;

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded. `Trailer` is
/// end to end: it announces the trailers that follow.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes hop-by-hop headers, including those named in `Connection`.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    // `TE: trailers` says the client takes trailers; it is passed on so that
    // the upstream sends them.
    let trailers_ok = headers
        .get(header::TE)
        .is_some_and(|te| te.as_bytes().trim_ascii().eq_ignore_ascii_case(b"trailers"));
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    if trailers_ok {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    headers.remove(header::TRANSFER_ENCODING);
}

/// Sends requests to the upstream.
#[derive(Clone)]
pub struct Forwarder {
    client: HttpsClient,
    upstream: Arc<Upstream>,
    response_timeout: Duration,
    trust_forwarded: bool,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

/// The TLS client configuration: webpki roots, the ring provider.
fn https_connector(connect_timeout: Duration) -> Result<HttpsConnector<HttpConnector>, String> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    Ok(builder
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http))
}

impl Forwarder {
    /// A forwarder for `config`.
    ///
    /// # Errors
    ///
    /// When the TLS client cannot be set up.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Self, String> {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(https_connector(config.connect_timeout)?);
        Ok(Self {
            client,
            upstream: Arc::new(config.upstream.clone()),
            response_timeout: config.response_timeout,
            trust_forwarded: config.trust_forwarded,
            metrics,
        })
    }

    fn upstream_uri(&self, uri: &Uri) -> Option<Uri> {
        let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let mut pq = String::with_capacity(self.upstream.base_path.len() + path_and_query.len());
        pq.push_str(&self.upstream.base_path);
        pq.push_str(path_and_query);
        Uri::builder()
            .scheme(self.upstream.scheme.clone())
            .authority(self.upstream.authority.clone())
            .path_and_query(pq)
            .build()
            .ok()
    }

    fn set_forwarded_headers(&self, req: &mut Request<RequestBody<Incoming>>) {
        let client = req.extensions().get::<ClientAddr>().map(|c| c.0.ip());
        let host = req.headers().get(header::HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let headers = req.headers_mut();
        if let Some(host) = &host
            && !headers.contains_key(header::HOST)
        {
            // HTTP/2 carries the host in :authority; HTTP/1.1 upstreams need Host.
            headers.insert(header::HOST, host.clone());
        }
        let trusted = self.trust_forwarded;
        let forwarded_for = match (client, trusted, headers.get(&X_FORWARDED_FOR)) {
            (Some(ip), true, Some(prior)) => prior
                .to_str()
                .ok()
                .and_then(|p| HeaderValue::from_str(&format!("{p}, {ip}")).ok()),
            (Some(ip), _, _) => HeaderValue::from_str(&ip.to_string()).ok(),
            (None, _, _) => None,
        };
        match forwarded_for {
            Some(v) => {
                headers.insert(X_FORWARDED_FOR, v);
            }
            None if !trusted => {
                headers.remove(X_FORWARDED_FOR);
            }
            None => {}
        }
        if !(trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        }
        if !(trusted && headers.contains_key(&X_FORWARDED_HOST)) {
            match host {
                Some(host) => headers.insert(X_FORWARDED_HOST, host),
                None => headers.remove(X_FORWARDED_HOST),
            };
        }
    }
}

/// The proxy's own answer when the upstream fails: JSON at the token
/// endpoint (RFC 6749 §5.2 shape), plain text elsewhere.
pub(crate) fn upstream_error(status: StatusCode, endpoint: Endpoint) -> Response<ProxyBody> {
    let (content_type, body) = if endpoint == Endpoint::Token {
        let description = if status == StatusCode::GATEWAY_TIMEOUT {
            "the authorization server did not answer in time"
        } else {
            "the authorization server cannot be reached"
        };
        (
            "application/json",
            Bytes::from(
                serde_json::json!({
                    "error": "temporarily_unavailable",
                    "error_description": description,
                })
                .to_string(),
            ),
        )
    } else {
        let text = if status == StatusCode::GATEWAY_TIMEOUT {
            "504 Gateway Timeout: the upstream server did not answer in time\n"
        } else {
            "502 Bad Gateway: the upstream server cannot be reached\n"
        };
        (
            "text/plain; charset=utf-8",
            Bytes::from_static(text.as_bytes()),
        )
    };
    let mut response = Response::new(Either::Right(Full::new(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

impl Service<Request<RequestBody<Incoming>>> for Forwarder {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<RequestBody<Incoming>>) -> Self::Future {
        // The server classified the request; token endpoint errors are JSON.
        let endpoint = req
            .extensions()
            .get::<Endpoint>()
            .copied()
            .unwrap_or(Endpoint::Other);
        let Some(uri) = self.upstream_uri(req.uri()) else {
            return Box::pin(async move { Ok(upstream_error(StatusCode::BAD_GATEWAY, endpoint)) });
        };
        self.set_forwarded_headers(&mut req);
        remove_hop_by_hop(req.headers_mut());
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        let client = self.client.clone();
        let timeout = self.response_timeout;
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let started = Instant::now();
            let result = tokio::time::timeout(timeout, client.request(req)).await;
            metrics.observe_upstream(endpoint, started.elapsed());
            match result {
                Ok(Ok(response)) => {
                    let mut response = response.map(Either::Left);
                    remove_hop_by_hop(response.headers_mut());
                    Ok(response)
                }
                Ok(Err(e)) => {
                    tracing::warn!(
                        endpoint = endpoint.as_str(),
                        error = %e,
                        source = ?std::error::Error::source(&e).map(ToString::to_string),
                        "upstream request failed"
                    );
                    metrics.upstream_failure("unreachable");
                    Ok(upstream_error(StatusCode::BAD_GATEWAY, endpoint))
                }
                Err(_) => {
                    tracing::warn!(endpoint = endpoint.as_str(), ?timeout, "upstream timed out");
                    metrics.upstream_failure("timeout");
                    Ok(upstream_error(StatusCode::GATEWAY_TIMEOUT, endpoint))
                }
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-custom"),
        );
        h.insert("x-custom", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers, deflate"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn error_bodies() {
        let r = upstream_error(StatusCode::GATEWAY_TIMEOUT, Endpoint::Token);
        assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let r = upstream_error(StatusCode::BAD_GATEWAY, Endpoint::Other);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
    }
}
