//! HTTP/1.1 message bodies on the wire (RFC 9112), shared by the proxy's
//! two sides: one reader for every framing ([`read_frame`]), for the
//! request bodies it reads from clients and the response bodies it reads
//! from the upstream, the strict parsers of lengths and chunk-size lines,
//! and the writers of data, chunks and trailers.

use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;

use super::common::{MAX_HEAD, encode_field};
use super::socket::{Copies, Inbox, READ_BUFFER, Socket, WireError};

/// The most fields in a trailer section.
const MAX_TRAILERS: usize = 128;

/// How the rest of a body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// This many bytes are left.
    Length(u64),
    /// Chunked: the next thing is a chunk-size line.
    ChunkSize,
    /// Chunked: this many bytes are left in the current chunk.
    ChunkData(u64),
    /// Chunked: the CRLF after a chunk's data.
    ChunkEnd,
    /// Chunked: the trailer section after the last chunk.
    Trailers,
    /// Until the peer closes the connection (responses only).
    UntilClose,
    /// The body is complete.
    Done,
}

impl Framing {
    /// A body of `n` bytes.
    pub(crate) fn length(n: u64) -> Self {
        if n == 0 { Self::Done } else { Self::Length(n) }
    }
}

/// The next frame of the body framed as `framing`, read from `inbox` and
/// then `stream`, its data copied by `copies`: `None` at its end.
pub(crate) fn read_frame(
    inbox: &mut Inbox,
    copies: &mut Copies,
    stream: &mut impl Socket,
    framing: &mut Framing,
    cx: &mut Context<'_>,
) -> Poll<Result<Option<Frame<Bytes>>, WireError>> {
    loop {
        match *framing {
            Framing::Done => return Poll::Ready(Ok(None)),
            Framing::Length(0) => *framing = Framing::Done,
            Framing::Length(left) | Framing::ChunkData(left) => {
                if inbox.is_empty() {
                    ready!(inbox.poll_more(stream, cx, READ_BUFFER))?;
                }
                let available = inbox.buffered();
                let n = usize::try_from(left).map_or(available.len(), |l| l.min(available.len()));
                let data = copies.copy(&available[..n]);
                inbox.consume(n);
                let left = left - n as u64;
                *framing = match *framing {
                    Framing::Length(_) if left == 0 => Framing::Done,
                    Framing::Length(_) => Framing::Length(left),
                    _ if left == 0 => Framing::ChunkEnd,
                    _ => Framing::ChunkData(left),
                };
                return Poll::Ready(Ok(Some(Frame::data(data))));
            }
            Framing::ChunkSize => match parse_chunk_size(inbox.buffered()) {
                Ok(Some((used, size))) => {
                    inbox.consume(used);
                    *framing = if size == 0 {
                        Framing::Trailers
                    } else {
                        Framing::ChunkData(size)
                    };
                }
                Ok(None) => ready!(inbox.poll_more(stream, cx, READ_BUFFER))?,
                Err(why) => return Poll::Ready(Err(WireError::Malformed(why))),
            },
            Framing::ChunkEnd => {
                let available = inbox.buffered();
                if available.len() < 2 {
                    ready!(inbox.poll_more(stream, cx, READ_BUFFER))?;
                } else if available.starts_with(b"\r\n") {
                    inbox.consume(2);
                    *framing = Framing::ChunkSize;
                } else {
                    return Poll::Ready(Err(WireError::Malformed("chunk data too long")));
                }
            }
            Framing::Trailers => {
                let available = inbox.buffered();
                if available.starts_with(b"\r\n") {
                    inbox.consume(2);
                    *framing = Framing::Done;
                    continue;
                }
                if has_bare_lf(trailer_section(available)) {
                    return Poll::Ready(Err(WireError::Malformed(
                        "a trailer line must end with CRLF",
                    )));
                }
                let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILERS];
                match httparse::parse_headers(available, &mut fields) {
                    Ok(httparse::Status::Complete((used, parsed))) => {
                        let mut trailers = HeaderMap::with_capacity(parsed.len());
                        for field in parsed {
                            let (Ok(name), Ok(value)) = (
                                HeaderName::from_bytes(field.name.as_bytes()),
                                HeaderValue::from_bytes(field.value),
                            ) else {
                                return Poll::Ready(Err(WireError::Malformed(
                                    "invalid trailer field",
                                )));
                            };
                            trailers.append(name, value);
                        }
                        inbox.consume(used);
                        *framing = Framing::Done;
                        return Poll::Ready(Ok(Some(Frame::trailers(trailers))));
                    }
                    Ok(httparse::Status::Partial) => {
                        ready!(inbox.poll_more(stream, cx, MAX_HEAD))?;
                    }
                    Err(_) => {
                        return Poll::Ready(Err(WireError::Malformed("invalid trailer section")));
                    }
                }
            }
            Framing::UntilClose => {
                if inbox.is_empty() && ready!(inbox.poll_fill(stream, cx, READ_BUFFER))? == 0 {
                    *framing = Framing::Done;
                    return Poll::Ready(Ok(None));
                }
                let data = copies.copy(inbox.buffered());
                inbox.consume(data.len());
                return Poll::Ready(Ok(Some(Frame::data(data))));
            }
        }
    }
}

/// The trailer section at the front of `buffered`, up to its blank line,
/// or all of `buffered` while that has not come.
fn trailer_section(buffered: &[u8]) -> &[u8] {
    buffered
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(buffered, |end| &buffered[..end + 4])
}

/// Whether `bytes` has a LF that no CR precedes. A chunked body's lines end
/// with CRLF (RFC 9112 §7.1); a reader that also ends a trailer line, or
/// the body, at a bare LF finds the end of the message where one that does
/// not (hyper, for one) reads on into what follows: a request smuggled in
/// the gap.
fn has_bare_lf(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || bytes[i - 1] != b'\r'))
}

/// The longest chunk-size line taken, extensions included.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// The largest body or chunk length taken: what a signed 64-bit offset
/// holds. Servers that keep lengths in an `off_t` (nginx among them) refuse
/// more, and one that wraps a larger length reads the message differently.
pub(crate) const MAX_LENGTH: u64 = i64::MAX as u64;

/// Parses a chunk-size line (RFC 9112 §7.1) at the front of `buffered`:
/// the bytes it takes and the size, or `None` when the line is not all
/// there yet. Strict, because a lenient reading is a way to smuggle a
/// request past a proxy in front that reads the line differently: at least
/// one hex digit, a size no larger than [`MAX_LENGTH`] (leading zeros
/// allowed), extensions only after `;` (with optional blanks before it),
/// no control characters in them, and the line ends with CRLF, never a
/// bare LF.
pub(crate) fn parse_chunk_size(buffered: &[u8]) -> Result<Option<(usize, u64)>, &'static str> {
    let digits = buffered
        .iter()
        .take_while(|b| b.is_ascii_hexdigit())
        .count();
    if digits == 0 {
        return if buffered.is_empty() {
            Ok(None)
        } else {
            Err("invalid chunk size")
        };
    }
    if digits > MAX_CHUNK_LINE {
        return Err("chunk size line too long");
    }
    let mut size = 0u64;
    for &b in &buffered[..digits] {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => b - b'A' + 10,
        };
        if size > MAX_LENGTH >> 4 {
            return Err("chunk size too large");
        }
        size = (size << 4) | u64::from(digit);
    }
    let rest = &buffered[digits..];
    let Some(cr) = rest.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return if buffered.len() > MAX_CHUNK_LINE {
            Err("chunk size line too long")
        } else {
            Ok(None)
        };
    };
    if digits + cr > MAX_CHUNK_LINE {
        return Err("chunk size line too long");
    }
    let (extensions, end) = rest.split_at(cr);
    let blanks = extensions
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    let extensions = &extensions[blanks..];
    if !(extensions.is_empty() || extensions[0] == b';')
        || extensions
            .iter()
            .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
    {
        return Err("invalid chunk extension");
    }
    match end {
        [b'\r', b'\n', ..] => Ok(Some((digits + cr + 2, size))),
        [b'\r'] => Ok(None),
        _ => Err("a chunk size line must end with CRLF"),
    }
}

/// A `Content-Length` value: digits only (leading zeros allowed), no sign,
/// no list, at most [`MAX_LENGTH`].
pub(crate) fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        let n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        (n <= MAX_LENGTH).then_some(n)
    })
}

/// Appends `n` in `radix` (10 or 16, lower case) without the formatting
/// machinery, which costs more than the rest of a head's encoding.
fn encode_number(out: &mut Vec<u8>, mut n: u64, radix: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    loop {
        at -= 1;
        // Both indices are in range: `at` counts down from 20 at most 20
        // times (u64::MAX has 20 decimal digits), and the digit is < 16.
        if let (Some(slot), Some(&digit)) = (buf.get_mut(at), DIGITS.get((n % radix) as usize)) {
            *slot = digit;
        }
        n /= radix;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(buf.get(at..).unwrap_or_default());
}

/// Appends a `Content-Length` field line.
pub(crate) fn encode_content_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    encode_number(out, n, 10);
    out.extend_from_slice(b"\r\n");
}

/// Appends a data frame, as a chunk when `chunked`.
pub(crate) fn encode_data(out: &mut Vec<u8>, data: &[u8], chunked: bool) {
    if data.is_empty() {
        return;
    }
    if chunked {
        encode_number(out, data.len() as u64, 16);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

/// Appends the end of a chunked body, with its trailers.
pub(crate) fn encode_end(out: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        encode_field(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b"1234"), Some(1234));
        assert_eq!(parse_length(b"0000000000000000000000012"), Some(12));
        assert_eq!(parse_length(b"9223372036854775807"), Some(MAX_LENGTH));
        // Past the signed 64-bit range, which a server keeping lengths in an
        // `off_t` cannot hold.
        for bad in [
            &b"9223372036854775808"[..],
            b"18446744073709551615",
            b"18446744073709551616",
            b"99999999999999999999999",
            b"",
            b"-1",
            b"+1",
            b"1,1",
            b" 1",
            b"0x10",
            b"1 ",
        ] {
            assert_eq!(parse_length(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn chunk_size_lines_are_read_strictly() {
        assert_eq!(parse_chunk_size(b"1a\r\nxx"), Ok(Some((4, 26))));
        assert_eq!(parse_chunk_size(b"0\r\n\r\n"), Ok(Some((3, 0))));
        assert_eq!(parse_chunk_size(b"5 ; name=\"v\"\r\n"), Ok(Some((14, 5))));
        assert_eq!(parse_chunk_size(b"5;a=b"), Ok(None));
        assert_eq!(parse_chunk_size(b"5\r"), Ok(None));
        assert_eq!(parse_chunk_size(b""), Ok(None));
        assert_eq!(
            parse_chunk_size(b"7fffffffffffffff\r\n"),
            Ok(Some((18, MAX_LENGTH)))
        );
        assert_eq!(
            parse_chunk_size(b"000000000000000000000a\r\n"),
            Ok(Some((24, 10)))
        );
        for bad in [
            &b"\r\n"[..],
            b";x\r\n",
            b"2;\nxx\r\n",
            b"2\n",
            b"2x\r\n",
            b"2;a\x00b\r\n",
            b"2\r\r\n",
            b"10000000000000000\r\n",
            b"8000000000000000\r\n",
            b"ffffffffffffffff\r\n",
            b"8000000000000000",
            b"-1\r\n",
        ] {
            assert!(parse_chunk_size(bad).is_err(), "{bad:?}");
        }
        let long = [b"1;".as_slice(), &[b'a'; MAX_CHUNK_LINE]].concat();
        assert!(parse_chunk_size(&long).is_err());
    }

    #[test]
    fn a_trailer_section_ends_only_at_crlf() {
        assert_eq!(
            trailer_section(b"a: 1\r\n\r\nGET / HTTP/1.1"),
            b"a: 1\r\n\r\n"
        );
        assert_eq!(trailer_section(b"a: 1\r\n"), b"a: 1\r\n");
        for bare in [
            &b"\n"[..],
            b"\nGET / HTTP/1.1\r\n\r\n",
            b"a: 1\n\r\n",
            b"a: 1\r\nb: 2\n\n",
        ] {
            assert!(has_bare_lf(trailer_section(bare)), "{bare:?}");
        }
        for clean in [&b"a: 1\r\n\r\n"[..], b"a: 1\r\nb: 2\r\n\r\nX\nY", b"a: 1\r"] {
            assert!(!has_bare_lf(trailer_section(clean)), "{clean:?}");
        }
    }

    #[test]
    fn numbers_are_written_as_format_writes_them() {
        for n in [
            0,
            1,
            9,
            10,
            15,
            16,
            255,
            4096,
            99_999,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            encode_content_length(&mut out, n);
            assert_eq!(out, format!("content-length: {n}\r\n").as_bytes());
            let mut out = Vec::new();
            encode_number(&mut out, n, 16);
            assert_eq!(out, format!("{n:x}").as_bytes());
        }
    }
}
