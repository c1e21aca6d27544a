//! The request head parser, for the fuzz targets (the `fuzzing` feature;
//! see `crate::fuzzing`).

use crate::fuzzing::{BodyFraming, RequestHead};
use crate::h1::socket::Copies;

/// Parses a request head at the front of `buffered`, as a client
/// connection does.
pub(crate) fn parse_request_head(buffered: &[u8]) -> RequestHead {
    let mut copies = Copies::default();
    match super::head::parse_head(buffered, &mut copies) {
        Ok(None) => RequestHead::Partial,
        Err(super::head::Refusal(status, why)) => RequestHead::Refused { status, why },
        Ok(Some((head, len))) => RequestHead::Parsed {
            len,
            request: Box::new(head.request),
            framing: BodyFraming::from(head.framing),
            keep_alive: head.keep_alive,
            expect_continue: head.expect_continue,
            trailers_ok: head.trailers_ok,
        },
    }
}

/// Whether `bytes` holds the blank line that ends a head, by the test a
/// connection uses before it parses a head that came in pieces again.
pub(crate) fn ends_head(bytes: &[u8]) -> bool {
    super::head::ends_head(bytes)
}
