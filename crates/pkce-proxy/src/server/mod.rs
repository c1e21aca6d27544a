//! The listeners, shut down gracefully: the proxy's client connections,
//! served by `http1` (HTTP/1.1 of its own, HTTP/2 through hyper), or with
//! TLS by `https` (hyper for both), and the admin endpoints, served with
//! hyper-util's auto builder.
//!
//! Every client request is screened before the PKCE layer sees it (see
//! `screen`), on both protocols: `CONNECT`, a body on a method that has
//! none, and a `Connection` header naming a field the checks or the framing
//! depend on get 400; the hop-by-hop fields are removed, so that the layer
//! checks exactly the request the upstream receives (I5).
//!
//! The parts: `start` (binding and wiring it all), `accept` (the listeners'
//! accept loops and drains), `screen` (what is refused before the layer),
//! `answer` (a request handed to the layer, its body read first when it
//! has not all come, and the `Answer` future), `admin` (`/healthz`,
//! `/readyz`, `/metrics`) and `signals` (running until a signal).

mod accept;
mod admin;
mod answer;
mod screen;
mod signals;
mod start;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;

pub(crate) use accept::serve;
pub use signals::run;
pub use start::{Running, StartError, TLS_CHECK_INTERVAL, start};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A small response with a body and its content type.
pub(crate) fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}
