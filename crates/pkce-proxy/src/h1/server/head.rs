//! Parsing a request head: the limits on its size, the framing rules that
//! keep a request from being smuggled past the proxy, and the requests the
//! connection refuses itself.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};

use crate::h1::body::{self, Framing};
use crate::h1::common::{self, HEADER_ROOM};
use crate::h1::socket::{Copies, HeadCopy};

/// The most header fields in a request head.
pub(crate) const MAX_FIELDS: usize = 100;
/// Header fields parsed on the first try; a head with more is parsed again.
const FEW_FIELDS: usize = 32;

/// A request head, parsed, and what the connection needs to know of it.
pub(super) struct Head {
    pub(super) request: Request<()>,
    pub(super) framing: Framing,
    pub(super) keep_alive: bool,
    pub(super) expect_continue: bool,
    pub(super) trailers_ok: bool,
}

/// A request the connection answers itself, and then closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Refusal(pub(super) StatusCode, pub(super) &'static str);

const TOO_MANY_FIELDS: Refusal = Refusal(
    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
    "too many header fields",
);

/// Why `CONNECT` is refused, on both protocols.
pub(crate) const CONNECT_REFUSED: &str = "CONNECT is not served: this is a reverse proxy";

/// Why a request with `method` must not carry a body, or `None` when it
/// may. RFC 9110 gives content on these methods no meaning (TRACE must have
/// none), and an upstream that does not read it takes it for the next
/// request on the connection: a request the proxy never checked (I1).
pub(crate) fn body_refused(method: &Method) -> Option<&'static str> {
    Some(match *method {
        Method::GET => "a GET request must not have a body",
        Method::HEAD => "a HEAD request must not have a body",
        Method::DELETE => "a DELETE request must not have a body",
        Method::OPTIONS => "an OPTIONS request must not have a body",
        Method::TRACE => "a TRACE request must not have a body",
        _ => return None,
    })
}

/// Parses a request head at the front of `buffered`: with its length, or
/// `None` when more bytes are needed.
pub(super) fn parse_head(
    buffered: &[u8],
    copies: &mut Copies,
) -> Result<Option<(Head, usize)>, Refusal> {
    let mut few = [httparse::EMPTY_HEADER; FEW_FIELDS];
    match parse_head_with(buffered, &mut few, copies) {
        Err(TOO_MANY_FIELDS) => {
            let mut many = [httparse::EMPTY_HEADER; MAX_FIELDS];
            parse_head_with(buffered, &mut many, copies)
        }
        parsed => parsed,
    }
}

fn parse_head_with<'b>(
    buffered: &'b [u8],
    fields: &mut [httparse::Header<'b>],
    copies: &mut Copies,
) -> Result<Option<(Head, usize)>, Refusal> {
    const BAD: StatusCode = StatusCode::BAD_REQUEST;
    let mut parsed = httparse::Request::new(fields);
    let len = match parsed.parse(buffered) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(TOO_MANY_FIELDS),
        Err(_) => return Err(Refusal(BAD, "malformed request head")),
    };
    let (Some(method), Some(target), Some(minor)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(Refusal(BAD, "malformed request head"));
    };
    let method =
        Method::from_bytes(method.as_bytes()).map_err(|_| Refusal(BAD, "invalid method"))?;
    if method == Method::CONNECT {
        return Err(Refusal(BAD, CONNECT_REFUSED));
    }
    let http10 = minor == 0;
    // Header values and the target share one copy of the head.
    let head = HeadCopy::new(buffered, len, copies);
    let uri = Uri::from_maybe_shared(head.share(target.as_bytes()))
        .map_err(|_| Refusal(BAD, "invalid request target"))?;
    crate::target::check_path(uri.path().as_bytes()).map_err(|why| Refusal(BAD, why))?;
    let mut headers = HeaderMap::with_capacity(parsed.headers.len() + HEADER_ROOM);
    let mut length: Option<u64> = None;
    let mut codings = 0;
    let mut chunked = false;
    let mut unsupported_coding = false;
    let mut close = false;
    let mut keep_alive = false;
    let mut expect_continue = false;
    let mut trailers_ok = false;
    let mut hosts = 0;
    for field in parsed.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| Refusal(BAD, "invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.share(field.value))
            .map_err(|_| Refusal(BAD, "invalid header value"))?;
        let bytes = value.as_bytes();
        match name {
            header::CONTENT_LENGTH => {
                let n = body::parse_length(bytes).ok_or(Refusal(BAD, "invalid Content-Length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(Refusal(BAD, "conflicting Content-Length values"));
                }
                length = Some(n);
            }
            header::TRANSFER_ENCODING => {
                codings += 1;
                chunked = bytes.trim_ascii().eq_ignore_ascii_case(b"chunked");
                unsupported_coding |= !chunked && common::ends_chunked(bytes);
            }
            header::CONNECTION => {
                close |= common::has_token(bytes, b"close");
                keep_alive |= common::has_token(bytes, b"keep-alive");
            }
            header::EXPECT => {
                expect_continue |= bytes.trim_ascii().eq_ignore_ascii_case(b"100-continue");
            }
            header::TE => trailers_ok |= common::has_token(bytes, b"trailers"),
            header::HOST => {
                hosts += 1;
                if !crate::target::check_host(bytes) {
                    return Err(Refusal(BAD, crate::target::INVALID_HOST));
                }
            }
            _ => {}
        }
        headers.append(name, value);
    }
    // RFC 9112 §3.2: exactly one Host in HTTP/1.1, never two. The proxy
    // and the upstream must not read different hosts from one request.
    if hosts > 1 || (hosts == 0 && !http10) {
        return Err(Refusal(BAD, "a request needs exactly one Host header"));
    }
    if (codings > 0 || length.is_some_and(|n| n > 0))
        && let Some(why) = body_refused(&method)
    {
        return Err(Refusal(BAD, why));
    }
    if unsupported_coding {
        return Err(Refusal(
            StatusCode::NOT_IMPLEMENTED,
            "only the chunked transfer coding is supported",
        ));
    }
    let framing = if codings > 0 {
        if http10 || length.is_some() || codings > 1 || !chunked {
            return Err(Refusal(BAD, "ambiguous or invalid request framing"));
        }
        Framing::ChunkSize
    } else {
        length.map_or(Framing::Done, Framing::length)
    };
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = if http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    *request.headers_mut() = headers;
    Ok(Some((
        Head {
            request,
            framing,
            keep_alive: if http10 { keep_alive && !close } else { !close },
            expect_continue: expect_continue && !http10,
            trailers_ok,
        },
        len,
    )))
}

/// Whether `bytes` holds the blank line that ends a head (httparse takes
/// a bare LF as a line end too).
pub(super) fn ends_head(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().any(|(i, &b)| {
        b == b'\n' && matches!(bytes.get(i + 1..), Some([b'\n', ..] | [b'\r', b'\n', ..]))
    })
}
