//! Writing a request to the upstream: its head, with the proxy's own
//! framing and the header fields it sets, then its body as the body has it
//! ready.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Method;
use http::header::{self, HeaderName, HeaderValue};
use http_body::Body;

use super::{Connection, Http1Error, OutgoingBody, WRITE_BATCH};
use crate::h1::body::{encode_content_length, encode_data, encode_end};
use crate::h1::common::encode_field;

/// Header fields the proxy sets as the request is written: each replaces
/// the request's own fields of that name, or removes them (`None`). Up to
/// four, kept inline.
#[derive(Debug, Default)]
pub(crate) struct HeaderOverrides {
    fields: [Option<(HeaderName, Option<HeaderValue>)>; 4],
}

impl HeaderOverrides {
    /// Sets `name` to `value`, or removes it for `None`. A fifth name is
    /// not kept: the proxy sets four at most.
    pub(crate) fn set(&mut self, name: HeaderName, value: Option<HeaderValue>) {
        if let Some(slot) = self.fields.iter_mut().find(|f| f.is_none()) {
            *slot = Some((name, value));
        }
    }

    fn iter(&self) -> impl Iterator<Item = &(HeaderName, Option<HeaderValue>)> {
        self.fields.iter().flatten()
    }

    fn replaces(&self, name: &HeaderName) -> bool {
        self.iter().any(|(n, _)| n == name)
    }
}

/// The request as it is written: the rest of its body, and how it is framed.
pub(super) struct Outgoing {
    pub(super) body: OutgoingBody,
    pub(super) chunked: bool,
}

/// How the request body is framed, from its size hint: `Content-Length`
/// when the size is known, `chunked` otherwise. `None`: no body and no
/// `Content-Length` needed.
fn request_length(method: &Method, body: &OutgoingBody, had_length: bool) -> Option<Option<u64>> {
    match body.size_hint().exact() {
        Some(0)
            if !had_length
                && matches!(
                    *method,
                    Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE
                ) =>
        {
            None
        }
        Some(n) => Some(Some(n)),
        None => Some(None),
    }
}

/// Writes the request line and header fields of `parts` into `out`, with
/// the framing header and, when `close`, `Connection: close`; returns how
/// the body is to be written.
pub(super) fn encode_head(
    out: &mut Vec<u8>,
    parts: &http::request::Parts,
    overrides: &HeaderOverrides,
    body: &OutgoingBody,
    close: bool,
) -> Option<bool> {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    // An absolute target with no path (`http://host?x=1`) keeps a path and
    // query that start at the `?`; its origin form has the path `/`
    // (RFC 9112 §3.2.1, RFC 3986 §6.2.3).
    if !target.starts_with('/') && target != "*" {
        out.push(b'/');
    }
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut had_length = false;
    for (name, value) in &parts.headers {
        // The framing is the proxy's own: the body may have been rewritten.
        if name == header::CONTENT_LENGTH {
            had_length = true;
            continue;
        }
        if name == header::TRANSFER_ENCODING || overrides.replaces(name) {
            continue;
        }
        encode_field(out, name, value);
    }
    for (name, value) in overrides.iter() {
        if let Some(value) = value {
            encode_field(out, name, value);
        }
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    let chunked = match request_length(&parts.method, body, had_length) {
        None => None,
        Some(Some(n)) => {
            encode_content_length(out, n);
            Some(false)
        }
        Some(None) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Some(true)
        }
    };
    out.extend_from_slice(b"\r\n");
    chunked
}

/// Moves the request along: takes what the body has ready, and writes.
/// `Ready(Ok(()))` once the whole request is written; the request is then
/// dropped from `outgoing`.
pub(super) fn poll_send(
    conn: &mut Connection,
    outgoing: &mut Option<Outgoing>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), Http1Error>> {
    // A request with no body left to stream stays in the buffer once
    // written, so that it can be sent again on another connection.
    let keep = outgoing.is_none();
    loop {
        let mut body_pending = false;
        if let Some(request) = outgoing.as_mut() {
            while conn.out.len() - conn.written < WRITE_BATCH {
                match Pin::new(&mut request.body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => encode_data(&mut conn.out, &data, request.chunked),
                        // Request trailers are dropped (see `WithoutTrailers`).
                        Err(_) => {
                            if request.chunked {
                                encode_end(&mut conn.out, None);
                            }
                            *outgoing = None;
                            break;
                        }
                    },
                    Poll::Ready(None) => {
                        if request.chunked {
                            encode_end(&mut conn.out, None);
                        }
                        *outgoing = None;
                        break;
                    }
                    Poll::Ready(Some(Err(e))) => {
                        return Poll::Ready(Err(Http1Error::RequestBody(e)));
                    }
                    Poll::Pending => {
                        body_pending = true;
                        break;
                    }
                }
            }
        }
        let had_output = conn.written < conn.out.len();
        ready!(conn.poll_flush_out(cx, keep)).map_err(Http1Error::Io)?;
        if outgoing.is_none() {
            return Poll::Ready(Ok(()));
        }
        if body_pending && !had_output {
            return Poll::Pending;
        }
    }
}
