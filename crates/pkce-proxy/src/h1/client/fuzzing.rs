//! The response head parser, for the fuzz targets (the `fuzzing` feature;
//! see `crate::fuzzing`).

use http::Method;

use crate::fuzzing::{BodyFraming, ResponseHead};
use crate::h1::socket::Copies;

/// Parses a response head to a request with `method` at the front of
/// `buffered`, into room for `fields` header fields (the connection tries
/// a few, then the most it takes).
pub(crate) fn parse_response_head(buffered: &[u8], method: &Method, fields: usize) -> ResponseHead {
    let mut copies = Copies::default();
    let mut room = vec![httparse::EMPTY_HEADER; fields];
    match super::head::parse_head_with(buffered, method, &mut room, &mut copies) {
        Ok(None) => ResponseHead::Partial,
        Err(super::Http1Error::Malformed(why)) => ResponseHead::Malformed(why.to_owned()),
        Err(e) => ResponseHead::Malformed(e.to_string()),
        Ok(Some((head, len))) => ResponseHead::Parsed {
            len,
            status: head.status,
            version: head.version,
            headers: head.headers,
            framing: BodyFraming::from(head.framing),
            keep_alive: head.keep_alive,
        },
    }
}

/// How many fields a connection tries first, and the most it takes.
pub(crate) const FIELDS: (usize, usize) = (super::head::FEW_HEADERS, super::head::MAX_HEADERS);

/// Why a head with more fields than the room given is refused: the
/// connection tries again with the most it takes.
pub(crate) const TOO_MANY_FIELDS: &str = super::head::TOO_MANY_HEADERS;
