//! A connection's socket and its buffers: the read buffer ([`Inbox`]), the
//! reads and writes that go through a [`Socket`] (`&TcpStream` on the
//! client side, so that a body and its connection can share the socket,
//! and the upstream connection's own stream, plain or TLS), and the copies
//! of what messages hand on ([`Copies`]).

use std::io::{self, Read as _};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// The read buffer's usual size.
pub(crate) const READ_BUFFER: usize = 8 * 1024;

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
}
