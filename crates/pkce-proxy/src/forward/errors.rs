//! What goes wrong on the way to the upstream, and the proxy's own answers
//! then: 502, 503 and 504 (JSON at the token endpoint), and 400 for a
//! client's request body that broke.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};
use tower_pkce::{Endpoint, Rejection};

use super::ProxyBody;
use crate::h1::client::Http1Error;
use crate::metrics::Limit;

/// Why a request did not get the upstream's response.
#[derive(Debug)]
pub(super) enum UpstreamError {
    Connect(std::io::Error),
    ConnectTimeout,
    /// The TLS handshake failed: the upstream's certificate was refused,
    /// or it refused the proxy's.
    Handshake(std::io::Error),
    Exchange(Http1Error),
    /// No upstream connection came free within the wait.
    Limit(Limit),
}

impl UpstreamError {
    /// Whether the request certainly did not reach the upstream: no
    /// connection came free. (A request is marked sent only once it has a
    /// connection, TLS handshake done.)
    pub(super) fn nothing_sent(&self) -> bool {
        matches!(self, Self::Limit(_))
    }

    /// The bound that kept the request from an upstream connection, if one
    /// did.
    pub(super) fn limit(&self) -> Option<Limit> {
        match self {
            Self::Limit(limit) => Some(*limit),
            _ => None,
        }
    }

    /// Whether the client's request body failed (a framing error, or the
    /// client went away) while the request was sent: the client's fault.
    pub(super) fn client_body_failed(&self) -> bool {
        matches!(self, Self::Exchange(Http1Error::RequestBody(_)))
    }

    /// Whether the upstream answered with something that is not HTTP/1.1
    /// the proxy takes (malformed, or past a limit).
    pub(super) fn invalid_response(&self) -> bool {
        matches!(self, Self::Exchange(Http1Error::Malformed(_)))
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "cannot connect: {e}"),
            Self::ConnectTimeout => f.write_str("connect timed out"),
            Self::Handshake(e) => write!(f, "TLS handshake failed: {e}"),
            Self::Exchange(e) => write!(f, "{e}"),
            Self::Limit(_) => f.write_str("no upstream connection came free in time"),
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect(e) | Self::Handshake(e) => Some(e),
            Self::ConnectTimeout | Self::Limit(_) => None,
            Self::Exchange(e) => std::error::Error::source(e),
        }
    }
}

/// The proxy's own answer when the upstream fails: JSON at the token
/// endpoint (RFC 6749 §5.2 shape), plain text elsewhere.
pub(crate) fn upstream_error(status: StatusCode, endpoint: Endpoint) -> Response<ProxyBody> {
    if status == StatusCode::GATEWAY_TIMEOUT {
        proxy_error(
            status,
            endpoint,
            "the authorization server did not answer in time",
            "504 Gateway Timeout: the upstream server did not answer in time\n",
        )
    } else if status == StatusCode::SERVICE_UNAVAILABLE {
        proxy_error(
            status,
            endpoint,
            "the proxy is at its bound of connections to the authorization server",
            "503 Service Unavailable: every connection to the upstream server allowed is in use\n",
        )
    } else {
        proxy_error(
            status,
            endpoint,
            "the authorization server cannot be reached",
            "502 Bad Gateway: the upstream server cannot be reached\n",
        )
    }
}

/// The proxy's 502 when the upstream's answer is malformed or past a limit
/// (the log says which).
pub(super) fn invalid_response(endpoint: Endpoint) -> Response<ProxyBody> {
    proxy_error(
        StatusCode::BAD_GATEWAY,
        endpoint,
        "the authorization server sent an invalid response",
        "502 Bad Gateway: the upstream server sent an invalid response\n",
    )
}

pub(super) fn proxy_error(
    status: StatusCode,
    endpoint: Endpoint,
    description: &'static str,
    text: &'static str,
) -> Response<ProxyBody> {
    let (content_type, body) = if endpoint == Endpoint::Token {
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
    if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// The proxy's answer when the client's request body broke while it was
/// forwarded, before any response began: 400, counted as a refusal
/// (`body_unreadable`), never as an upstream failure.
pub(super) fn client_body_error(endpoint: Endpoint) -> Response<ProxyBody> {
    client_body_refusal(endpoint).map(Either::Right)
}

/// The 400 for a client's request body that is malformed or cut short,
/// whether it broke while it was read ahead or while it was forwarded: the
/// token endpoint answers in RFC 6749 §5.2's JSON, the others in text.
pub(crate) fn client_body_refusal(endpoint: Endpoint) -> Response<Full<Bytes>> {
    const WHY: &str = "the request body is malformed or was cut short";
    let (content_type, body) = if endpoint == Endpoint::Token {
        (
            "application/json",
            Bytes::from(
                serde_json::json!({"error": "invalid_request", "error_description": WHY})
                    .to_string(),
            ),
        )
    } else {
        ("text/plain; charset=utf-8", Bytes::from(format!("{WHY}\n")))
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response.extensions_mut().insert(Rejection::BodyUnreadable);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

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
