//! Parsing the upstream's response head: its limits, and how its body is
//! framed.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

use super::{Connection, Http1Error};
use crate::h1::body::{self, Framing};
use crate::h1::common::{self, HEADER_ROOM};
use crate::h1::socket::{Copies, HeadCopy};

/// The most header fields in a response head (hyper's pooled client, for
/// an HTTPS upstream, takes as many).
pub(crate) const MAX_HEADERS: usize = 128;

/// A response head, and what is needed to read its body.
pub(crate) struct Head {
    pub(super) status: StatusCode,
    pub(super) version: Version,
    pub(super) headers: HeaderMap,
    pub(super) framing: Framing,
    pub(super) keep_alive: bool,
}

/// Parses a response head at the front of `conn`'s buffer: `None` when more
/// bytes are needed.
pub(super) fn parse_head(
    conn: &mut Connection,
    method: &Method,
) -> Result<Option<Head>, Http1Error> {
    if conn.inbox.is_empty() {
        return Ok(None);
    }
    // Most heads are small: a short array first, which is cheap to set up.
    let mut few = [httparse::EMPTY_HEADER; FEW_HEADERS];
    let parsed = match parse_head_with(conn.inbox.buffered(), method, &mut few, &mut conn.copies) {
        Err(Http1Error::Malformed(TOO_MANY_HEADERS)) => {
            let mut many = [httparse::EMPTY_HEADER; MAX_HEADERS];
            parse_head_with(conn.inbox.buffered(), method, &mut many, &mut conn.copies)
        }
        parsed => parsed,
    };
    Ok(parsed?.map(|(head, len)| {
        conn.inbox.consume(len);
        head
    }))
}

pub(super) const FEW_HEADERS: usize = 24;
/// The limits a response head can break, named in the log of its 502.
pub(super) const TOO_MANY_HEADERS: &str = "the response head has more than 128 header fields";
pub(super) const HEAD_TOO_LARGE: &str = "the response head is larger than 64 KiB";

/// Parses a head at the front of `buffered` into `fields`; with its length.
pub(super) fn parse_head_with<'b>(
    buffered: &'b [u8],
    method: &Method,
    fields: &mut [httparse::Header<'b>],
    copies: &mut Copies,
) -> Result<Option<(Head, usize)>, Http1Error> {
    let mut response = httparse::Response::new(fields);
    let len = match response.parse(buffered) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Http1Error::Malformed(TOO_MANY_HEADERS));
        }
        Err(_) => return Err(Http1Error::Malformed("unparsable response head")),
    };
    let status = response
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| Http1Error::Malformed("invalid status code"))?;
    let version = if response.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let head = HeadCopy::new(buffered, len, copies);
    let mut headers = HeaderMap::with_capacity(response.headers.len() + HEADER_ROOM);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut close = false;
    for field in response.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| Http1Error::Malformed("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.share(field.value))
            .map_err(|_| Http1Error::Malformed("invalid header value"))?;
        if name == header::CONTENT_LENGTH {
            let n = body::parse_length(value.as_bytes())
                .ok_or(Http1Error::Malformed("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(Http1Error::Malformed("conflicting Content-Length values"));
            }
            length = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            transfer_encoding = true;
            // Only the last coding decides: `chunked` must come last.
            chunked = common::ends_chunked(value.as_bytes());
        } else if name == header::CONNECTION {
            close |= common::has_token(value.as_bytes(), b"close");
        }
        headers.append(name, value);
    }
    let bodiless = *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless {
        Framing::Done
    } else if transfer_encoding && version == Version::HTTP_10 {
        // RFC 9112 §6.1: HTTP/1.0 has no transfer coding; its framing is
        // faulty whatever the field says (hyper refuses it too).
        return Err(Http1Error::Malformed(
            "Transfer-Encoding in an HTTP/1.0 response",
        ));
    } else if transfer_encoding {
        // The coding replaces any length (RFC 9112 §6.3), and the length
        // must not go on with a body the server re-frames.
        headers.remove(header::CONTENT_LENGTH);
        if chunked {
            Framing::ChunkSize
        } else {
            Framing::UntilClose
        }
    } else if let Some(n) = length {
        Framing::length(n)
    } else {
        Framing::UntilClose
    };
    let keep_alive = version == Version::HTTP_11 && !close && framing != Framing::UntilClose;
    Ok(Some((
        Head {
            status,
            version,
            headers,
            framing,
            keep_alive,
        },
        len,
    )))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::h1::common::MAX_HEAD;

    #[test]
    fn the_limits_a_head_breaks_are_named_as_they_are() {
        assert!(TOO_MANY_HEADERS.contains(&format!(" {MAX_HEADERS} ")));
        assert!(HEAD_TOO_LARGE.contains(&format!(" {} KiB", MAX_HEAD / 1024)));
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            head.extend_from_slice(format!("x-f{i}: v\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        let mut copies = Copies::default();
        let mut many = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let parsed = parse_head_with(&head, &Method::GET, &mut many, &mut copies);
        assert!(
            matches!(parsed, Err(Http1Error::Malformed(why)) if why == TOO_MANY_HEADERS),
            "{:?}",
            parsed.err()
        );
    }
}
