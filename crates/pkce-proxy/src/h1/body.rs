//! HTTP/1.1 message bodies on the wire (RFC 9112), shared by the proxy's
//! two sides: the request bodies it reads from clients, and the response
//! bodies it reads from the upstream. Reading and writing go through a
//! [`Socket`]: `&TcpStream` on the client side, so that a body and its
//! connection can share the socket, and the upstream connection's own
//! stream, plain or TLS.

use std::io::{self, Read as _};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// The read buffer's usual size.
pub(crate) const READ_BUFFER: usize = 8 * 1024;
/// The largest head (or trailer section) taken from a peer.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Room for header fields that the PKCE layer sets on a parsed message
/// (`Location`, `Content-Length`, `Accept-Encoding`). A map built for
/// exactly the fields it holds grows on its next insert, even one that
/// replaces a field.
pub(crate) const HEADER_ROOM: usize = 2;
/// The most fields in a trailer section.
const MAX_TRAILERS: usize = 128;

/// Why a message could not be read.
#[derive(Debug)]
pub(crate) enum WireError {
    /// Reading from the socket failed.
    Io(io::Error),
    /// The peer closed the connection before the message ended.
    Closed,
    /// The message breaks HTTP/1.1.
    Malformed(&'static str),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "{e}"),
            Self::Closed => f.write_str("the connection closed before the message ended"),
            Self::Malformed(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for WireError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            Self::Closed | Self::Malformed(_) => None,
        }
    }
}

/// Bytes read from a socket and not yet used: `buf[start..end]`. The
/// buffer is zeroed once, so reads need no initialisation.
#[derive(Debug)]
pub(crate) struct Inbox {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Default for Inbox {
    fn default() -> Self {
        Self {
            buf: vec![0; READ_BUFFER],
            start: 0,
            end: 0,
        }
    }
}

impl Inbox {
    pub(crate) fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub(crate) fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start >= self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads more from `stream`; `Ok(0)` at end of stream. Room is made by
    /// moving unread bytes to the front, then by growing up to `limit`.
    pub(crate) fn poll_fill(
        &mut self,
        stream: &mut impl Socket,
        cx: &mut Context<'_>,
        limit: usize,
    ) -> Poll<Result<usize, WireError>> {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.buf.len() < limit {
                let grown = (self.buf.len() * 2).clamp(READ_BUFFER, limit.max(READ_BUFFER));
                self.buf.resize(grown, 0);
            } else {
                return Poll::Ready(Err(WireError::Malformed("a head or line is too large")));
            }
        }
        let n =
            ready!(stream.poll_read_some(cx, &mut self.buf[self.end..])).map_err(WireError::Io)?;
        self.end += n;
        Poll::Ready(Ok(n))
    }

    /// Reads more for a message that is not complete: the end of the
    /// stream is an error there.
    pub(crate) fn poll_more(
        &mut self,
        stream: &mut impl Socket,
        cx: &mut Context<'_>,
        limit: usize,
    ) -> Poll<Result<(), WireError>> {
        match ready!(self.poll_fill(stream, cx, limit))? {
            0 => Poll::Ready(Err(WireError::Closed)),
            _ => Poll::Ready(Ok(())),
        }
    }

    /// Takes the buffer, leaving one that allocates nothing until it is
    /// read into.
    pub(crate) fn take(&mut self) -> Self {
        std::mem::replace(
            self,
            Self {
                buf: Vec::new(),
                start: 0,
                end: 0,
            },
        )
    }

    /// Shrinks a buffer that grew for a large head, once it is empty.
    pub(crate) fn shrink(&mut self) {
        if self.buf.len() > READ_BUFFER && self.is_empty() {
            *self = Self::default();
        }
    }
}

/// Whether the readiness events come from epoll or kqueue: a short read
/// then means the receive queue is empty (see [`poll_read`]).
const EDGE_TRIGGERED: bool = cfg!(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly"
));

/// Reads into `buf` from a shared stream.
///
/// A read that returns less than `buf` holds has emptied the socket's
/// receive queue, so the socket's readiness is cleared then, as tokio's own
/// `poll_read` does: the next read waits for the next readiness event
/// instead of costing a system call that finds nothing. (Returning
/// `WouldBlock` from `try_io` is how readiness is cleared; the bytes read
/// are kept aside.)
pub(crate) fn poll_read(
    stream: &TcpStream,
    cx: &mut Context<'_>,
    buf: &mut [u8],
) -> Poll<io::Result<usize>> {
    loop {
        let mut short = None;
        let result = stream.try_io(Interest::READABLE, || {
            let n = (&*socket2::SockRef::from(stream)).read(buf)?;
            // Only where readiness comes from epoll or kqueue, as in tokio.
            if EDGE_TRIGGERED && n > 0 && n < buf.len() {
                short = Some(n);
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        if let Some(n) = short {
            return Poll::Ready(Ok(n));
        }
        match result {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ready!(stream.poll_read_ready(cx))?;
            }
            result => return Poll::Ready(result),
        }
    }
}

/// Writes `out[*written..]` to a shared stream; clears `out` when it is
/// all written.
pub(crate) fn poll_write_all(
    stream: &mut impl Socket,
    cx: &mut Context<'_>,
    out: &mut Vec<u8>,
    written: &mut usize,
) -> Poll<io::Result<()>> {
    ready!(poll_write_kept(stream, cx, out, written))?;
    out.clear();
    *written = 0;
    Poll::Ready(Ok(()))
}

/// Writes `out[*written..]` to `stream`, advancing `written`, and leaves
/// `out` as it is: the bytes stay for the caller to send again.
pub(crate) fn poll_write_kept(
    stream: &mut impl Socket,
    cx: &mut Context<'_>,
    out: &[u8],
    written: &mut usize,
) -> Poll<io::Result<()>> {
    while let Some(rest) = out.get(*written..).filter(|rest| !rest.is_empty()) {
        match ready!(stream.poll_write_some(cx, rest)) {
            Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => *written += n,
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
    stream.poll_flush_written(cx)
}

/// A connection's byte stream as the wire functions read and write it.
pub(crate) trait Socket {
    /// Reads into `buf`; `Ok(0)` at the end of the stream.
    fn poll_read_some(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>>;
    /// Writes from `buf`; how many bytes the stream took.
    fn poll_write_some(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>>;
    /// Sends what the writes so far left buffered in the stream (a TLS
    /// session's records), so that the peer has the whole message.
    fn poll_flush_written(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Socket for &TcpStream {
    fn poll_read_some(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        poll_read(self, cx, buf)
    }

    fn poll_write_some(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            match self.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.poll_write_ready(cx))?;
                }
                result => return Poll::Ready(result),
            }
        }
    }

    fn poll_flush_written(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

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

/// The largest copy a [`Copies`] takes; a larger one has its own allocation.
const COPIES_BLOCK: usize = 4 * 1024;

/// A connection's buffer for the bytes its messages hand on (heads, small
/// bodies). Each copy is cut from one allocation, which is used again once
/// every copy cut from it is dropped: a connection's messages allocate
/// nothing for them, where a copy of its own costs an allocation for the
/// bytes and another for the count of their sharers.
///
/// A copy starts at the front of the allocation whenever nothing holds the
/// earlier ones, which is the usual case (a message is handed on before the
/// next is read). So a connection keeps writing the same few cache lines,
/// rather than walking through the whole block and writing to lines that
/// have long left the cache: with a hundred connections, those misses cost
/// more than the copies themselves.
#[derive(Debug, Default)]
pub(crate) struct Copies(BytesMut);

impl Copies {
    /// `bytes`, copied.
    pub(crate) fn copy(&mut self, bytes: &[u8]) -> Bytes {
        if bytes.len() > COPIES_BLOCK / 2 {
            return Bytes::copy_from_slice(bytes);
        }
        // Back to the front if no copy holds the allocation any more (one
        // atomic load); it never allocates.
        let reclaimed = self.0.try_reclaim(COPIES_BLOCK);
        if !reclaimed && self.0.capacity() < bytes.len() {
            self.0.reserve(COPIES_BLOCK);
        }
        self.0.extend_from_slice(bytes);
        self.0.split().freeze()
    }
}

/// One copy of a parsed head, which the target and header values share
/// instead of one copy each.
pub(crate) struct HeadCopy<'b> {
    buffered: &'b [u8],
    copy: Bytes,
}

impl<'b> HeadCopy<'b> {
    /// Copies the first `len` bytes of `buffered`: the head httparse parsed.
    pub(crate) fn new(buffered: &'b [u8], len: usize, copies: &mut Copies) -> Self {
        Self {
            buffered,
            copy: copies.copy(&buffered[..len]),
        }
    }

    /// The bytes of `part` (a slice httparse took from the head) in the copy.
    pub(crate) fn share(&self, part: &[u8]) -> Bytes {
        let offset = part.as_ptr() as usize - self.buffered.as_ptr() as usize;
        self.copy.slice(offset..offset + part.len())
    }
}

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
    fn copies_share_one_allocation_and_reuse_it() {
        let mut copies = Copies::default();
        let kept = copies.copy(b"kept");
        // Copies held elsewhere keep their bytes while new ones are cut,
        // past the end of the first allocation.
        let later: Vec<Bytes> = (0..64u8).map(|i| copies.copy(&[i; 100])).collect();
        assert_eq!(&kept[..], b"kept");
        for (i, copy) in later.iter().enumerate() {
            assert_eq!(&copy[..], &[i as u8; 100][..]);
        }
        drop((kept, later));
        // Once nothing holds an allocation, copies come from its front
        // again: ten blocks' worth of copies, each dropped before the next,
        // are all cut where the first was.
        let mut copies = Copies::default();
        let start = copies.copy(&[1; 100]).as_ptr() as usize;
        for _ in 0..10 * COPIES_BLOCK / 100 {
            let copy = copies.copy(&[7; 100]);
            assert_eq!(&copy[..], &[7; 100][..]);
            assert_eq!(copy.as_ptr() as usize, start, "not the front of the block");
        }
        // While one is held, the next is cut after it, in the same block.
        let held = copies.copy(&[2; 100]);
        let next = copies.copy(&[3; 100]);
        assert_eq!(held.as_ptr() as usize, start);
        assert_eq!(next.as_ptr() as usize, start + 100);
        assert_eq!((&held[..], &next[..]), (&[2; 100][..], &[3; 100][..]));
        drop((held, next));
        let large = copies.copy(&[9; COPIES_BLOCK]);
        assert_eq!(&large[..], &[9; COPIES_BLOCK][..]);
    }

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
