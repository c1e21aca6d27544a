//! What both sides of the engine share about a message's head: its size
//! bound, the field tokens that decide its framing and keep-alive, and how
//! a field line is written.

use http::header::{HeaderName, HeaderValue};

/// The largest head (or trailer section) taken from a peer.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Room for header fields that the PKCE layer sets on a parsed message
/// (`Location`, `Content-Length`, `Accept-Encoding`). A map built for
/// exactly the fields it holds grows on its next insert, even one that
/// replaces a field.
pub(crate) const HEADER_ROOM: usize = 2;

/// Whether a comma-separated header value lists `token` (case-insensitive).
pub(crate) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Whether the last transfer coding in a `Transfer-Encoding` value is
/// `chunked`: only then is the message's end known (RFC 9112 §6.3).
pub(crate) fn ends_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Appends one header (or trailer) field line.
pub(crate) fn encode_field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codings() {
        assert!(ends_chunked(b"chunked"));
        assert!(ends_chunked(b"gzip, Chunked "));
        assert!(!ends_chunked(b"chunked, gzip"));
        assert!(!ends_chunked(b"identity"));
        assert!(has_token(b"keep-alive, Close", b"close"));
        assert!(!has_token(b"closed", b"close"));
    }
}
