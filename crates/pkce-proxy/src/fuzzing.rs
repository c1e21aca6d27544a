//! Entry points for the fuzz targets in `fuzz/` at the repository root,
//! built only with the `fuzzing` feature, and not part of the API: thin
//! wrappers over the HTTP/1.1 engine's parsers, which are crate-private.
//! Nothing here checks anything of its own; the targets assert the
//! properties.
//!
//! A body is read by the engine's own reader (`body::read_frame`), which
//! reads from a socket: [`BodyReader`] hands it the bytes over a loopback
//! connection, in the pieces the caller chooses, so that every state of
//! the reader can be entered with a message cut anywhere.

use std::future::poll_fn;
use std::io::{self, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderMap;
use http::{Method, Request, StatusCode, Version};
use http_body::Frame;

use crate::h1::body::{self, Framing};
use crate::h1::socket::{Copies, Inbox, WireError};

/// How a message's body is delimited, as its head says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    None,
    /// This many bytes.
    Length(u64),
    /// Chunked.
    Chunked,
    /// Until the peer closes (responses only).
    UntilClose,
    /// A state in the middle of a body; a head never gives one.
    Other,
}

impl From<Framing> for BodyFraming {
    fn from(framing: Framing) -> Self {
        match framing {
            Framing::Done => Self::None,
            Framing::Length(n) => Self::Length(n),
            Framing::ChunkSize => Self::Chunked,
            Framing::UntilClose => Self::UntilClose,
            Framing::ChunkData(_) | Framing::ChunkEnd | Framing::Trailers => Self::Other,
        }
    }
}

/// What the client connection makes of a request head.
#[derive(Debug)]
pub enum RequestHead {
    /// More bytes are needed.
    Partial,
    /// Answered with `status` and the connection closed.
    Refused {
        /// The answer's status.
        status: StatusCode,
        /// Why.
        why: &'static str,
    },
    /// A request to serve.
    Parsed {
        /// The head's length in bytes.
        len: usize,
        /// The request, without its body.
        request: Box<Request<()>>,
        /// How its body is delimited.
        framing: BodyFraming,
        /// Whether the connection may serve another request after it.
        keep_alive: bool,
        /// Whether the client waits for `100 Continue`.
        expect_continue: bool,
        /// Whether the client takes trailers.
        trailers_ok: bool,
    },
}

/// Parses a request head at the front of `buffered`.
pub fn parse_request_head(buffered: &[u8]) -> RequestHead {
    crate::h1::server::fuzzing::parse_request_head(buffered)
}

/// Whether `bytes` holds a head's blank line, by the test a client
/// connection makes before it parses a head that came in pieces again.
pub fn ends_head(bytes: &[u8]) -> bool {
    crate::h1::server::fuzzing::ends_head(bytes)
}

/// What an upstream connection makes of a response head.
#[derive(Debug)]
pub enum ResponseHead {
    /// More bytes are needed.
    Partial,
    /// The upstream broke HTTP/1.1: why.
    Malformed(String),
    /// A response to hand on.
    Parsed {
        /// The head's length in bytes.
        len: usize,
        /// Its status.
        status: StatusCode,
        /// Its version.
        version: Version,
        /// Its fields, as handed on.
        headers: HeaderMap,
        /// How its body is delimited.
        framing: BodyFraming,
        /// Whether the connection may serve another request after it.
        keep_alive: bool,
    },
}

/// How many header fields an upstream connection tries first, and the
/// most it takes.
pub const RESPONSE_FIELDS: (usize, usize) = crate::h1::client::fuzzing::FIELDS;

/// Why a response head is refused when it has more fields than the room
/// given ([`ResponseHead::Malformed`]).
pub const TOO_MANY_RESPONSE_FIELDS: &str = crate::h1::client::fuzzing::TOO_MANY_FIELDS;

/// Parses a response head to a `method` request at the front of
/// `buffered`, into room for `fields` header fields.
pub fn parse_response_head(buffered: &[u8], method: &Method, fields: usize) -> ResponseHead {
    crate::h1::client::fuzzing::parse_response_head(buffered, method, fields)
}

/// Parses a chunk-size line: the bytes it takes and the size, or `None`
/// when it is not all there.
///
/// # Errors
///
/// Why the line is refused.
pub fn parse_chunk_size(buffered: &[u8]) -> Result<Option<(usize, u64)>, &'static str> {
    body::parse_chunk_size(buffered)
}

/// Whether a `Host` or `:authority` value is one the proxy forwards.
pub fn check_host(value: &[u8]) -> bool {
    crate::target::check_host(value)
}

/// Checks a request path (without its query).
///
/// # Errors
///
/// Why the path is refused.
pub fn check_path(path: &[u8]) -> Result<(), &'static str> {
    crate::target::check_path(path)
}

/// A `Content-Length` value.
pub fn parse_length(value: &[u8]) -> Option<u64> {
    body::parse_length(value)
}

/// How reading a body ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyEnd {
    /// The body is complete.
    Complete,
    /// The message broke HTTP/1.1: why.
    Malformed(&'static str),
    /// The peer closed before the body ended.
    Closed,
    /// Reading failed.
    Io(String),
}

/// A body as the engine's reader read it.
#[derive(Debug)]
pub struct BodyRead {
    /// The data frames, joined.
    pub data: Vec<u8>,
    /// How many data frames there were.
    pub frames: usize,
    /// The trailer section, if one came.
    pub trailers: Option<HeaderMap>,
    /// How it ended.
    pub end: BodyEnd,
    /// The bytes after where the reader stopped, in order: what it holds
    /// unread, what the socket still held, and the pieces never sent.
    pub rest: Vec<u8>,
}

/// The largest piece written to the socket at once: the loopback
/// connection's buffers take it whole, so a write never waits for the
/// reader.
const PIECE: usize = 16 * 1024;

/// Drives the engine's body reader over loopback connections.
#[derive(Debug)]
pub struct BodyReader {
    runtime: tokio::runtime::Runtime,
    listener: TcpListener,
}

impl BodyReader {
    /// A reader with its own single-threaded runtime and loopback
    /// listener.
    ///
    /// # Errors
    ///
    /// When either cannot be made.
    pub fn new() -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        Ok(Self { runtime, listener })
    }

    /// Reads a body framed as `framing` from a fresh connection, on which
    /// `pieces` are sent one at a time, each only once the reader waits
    /// for more (empty pieces are skipped); after the last, the connection
    /// is closed.
    ///
    /// # Errors
    ///
    /// When the loopback connection cannot be made or written to.
    pub fn read(&self, framing: BodyFraming, pieces: &[&[u8]]) -> io::Result<BodyRead> {
        let mut framing = match framing {
            BodyFraming::None | BodyFraming::Other => Framing::Done,
            BodyFraming::Length(n) => Framing::length(n),
            BodyFraming::Chunked => Framing::ChunkSize,
            BodyFraming::UntilClose => Framing::UntilClose,
        };
        let mut pieces = pieces
            .iter()
            .flat_map(|p| p.chunks(PIECE))
            .filter(|p| !p.is_empty());
        let mut client = TcpStream::connect(self.listener.local_addr()?)?;
        let (server, _) = self.listener.accept()?;
        // Closed with a reset, so that no connection waits in TIME_WAIT:
        // a run opens thousands a second.
        for end in [&client, &server] {
            socket2::SockRef::from(end).set_linger(Some(Duration::ZERO))?;
        }
        server.set_nonblocking(true)?;
        let _entered = self.runtime.enter();
        let mut stream = tokio::net::TcpStream::from_std(server)?;
        self.runtime.block_on(async {
            let mut inbox = Inbox::default();
            let mut copies = Copies::default();
            let mut read = BodyRead {
                data: Vec::new(),
                frames: 0,
                trailers: None,
                end: BodyEnd::Complete,
                rest: Vec::new(),
            };
            let mut closed = false;
            loop {
                let polled = poll_fn(|cx| {
                    Poll::Ready(body::read_frame(
                        &mut inbox,
                        &mut copies,
                        &mut &stream,
                        &mut framing,
                        cx,
                    ))
                })
                .await;
                match polled {
                    Poll::Ready(Ok(Some(frame))) => note(&mut read, frame),
                    Poll::Ready(Ok(None)) => break,
                    Poll::Ready(Err(e)) => {
                        read.end = match e {
                            WireError::Malformed(why) => BodyEnd::Malformed(why),
                            WireError::Closed => BodyEnd::Closed,
                            WireError::Io(e) => BodyEnd::Io(e.to_string()),
                        };
                        break;
                    }
                    Poll::Pending if closed => {
                        // The stream has ended and the reader still waits.
                        read.end = BodyEnd::Io("the reader waits past the end".into());
                        break;
                    }
                    Poll::Pending => {
                        match pieces.next() {
                            Some(piece) => client.write_all(piece)?,
                            None => {
                                client.shutdown(Shutdown::Write)?;
                                closed = true;
                            }
                        }
                        stream.readable().await?;
                    }
                }
            }
            read.rest.extend_from_slice(inbox.buffered());
            if !closed {
                client.shutdown(Shutdown::Write)?;
            }
            tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut read.rest).await?;
            for piece in pieces {
                read.rest.extend_from_slice(piece);
            }
            Ok(read)
        })
    }
}

fn note(read: &mut BodyRead, frame: Frame<Bytes>) {
    match frame.into_data() {
        Ok(data) => {
            read.frames += 1;
            read.data.extend_from_slice(&data);
        }
        Err(frame) => {
            if let Ok(trailers) = frame.into_trailers() {
                read.trailers = Some(trailers);
            }
        }
    }
}

/// What the PROXY protocol reader made of a connection's first bytes.
#[derive(Debug)]
pub struct ProxyHeaderRead {
    /// The client it names (`Some`), the balancer itself (`None`), or why
    /// the header was refused.
    pub source: Result<Option<std::net::SocketAddr>, &'static str>,
    /// What the connection held after the reader stopped.
    pub rest: Vec<u8>,
}

/// A version 1 line as the PROXY protocol reader takes it, CR LF included:
/// the client it names, the balancer (`None`), or why it is refused.
///
/// # Errors
///
/// The reason the line is refused.
pub fn parse_proxy_v1(line: &[u8]) -> Result<Option<std::net::SocketAddr>, &'static str> {
    source(crate::proxy_protocol::parse_v1(line))
}

fn source(
    parsed: Result<crate::proxy_protocol::Source, crate::proxy_protocol::Refused>,
) -> Result<Option<std::net::SocketAddr>, &'static str> {
    match parsed {
        Ok(crate::proxy_protocol::Source::Client(addr)) => Ok(Some(addr)),
        Ok(crate::proxy_protocol::Source::Balancer) => Ok(None),
        Err(crate::proxy_protocol::Refused(why)) => Err(why),
    }
}

impl BodyReader {
    /// Reads a PROXY protocol header from a fresh connection on which
    /// `pieces` are sent one at a time, each once the reader waits for
    /// more; after the last, the connection is closed. Then reads what
    /// the connection still holds.
    ///
    /// # Errors
    ///
    /// When the loopback connection cannot be made or written to.
    pub fn read_proxy_header(&self, pieces: &[&[u8]]) -> io::Result<ProxyHeaderRead> {
        let mut pieces = pieces.iter().filter(|p| !p.is_empty());
        let mut client = TcpStream::connect(self.listener.local_addr()?)?;
        let (server, _) = self.listener.accept()?;
        for end in [&client, &server] {
            socket2::SockRef::from(end).set_linger(Some(Duration::ZERO))?;
        }
        server.set_nonblocking(true)?;
        let _entered = self.runtime.enter();
        let mut stream = tokio::net::TcpStream::from_std(server)?;
        self.runtime.block_on(async {
            let mut closed = false;
            // Polls after the close that found the reader still waiting:
            // the end of the stream reaches it after a turn or two of the
            // runtime, never after many.
            let mut stalled = 0;
            let parsed = {
                let mut reading = std::pin::pin!(crate::proxy_protocol::read_header(&mut stream));
                loop {
                    match poll_fn(|cx| Poll::Ready(reading.as_mut().poll(cx))).await {
                        Poll::Ready(parsed) => break parsed,
                        Poll::Pending if closed => {
                            stalled += 1;
                            if stalled > 64 {
                                break Err(crate::proxy_protocol::Refused("waits past the end"));
                            }
                            tokio::task::yield_now().await;
                        }
                        Poll::Pending => {
                            match pieces.next() {
                                Some(piece) => client.write_all(piece)?,
                                None => {
                                    client.shutdown(Shutdown::Write)?;
                                    closed = true;
                                }
                            }
                            tokio::task::yield_now().await;
                        }
                    }
                }
            };
            if !closed {
                for piece in pieces {
                    client.write_all(piece)?;
                }
                client.shutdown(Shutdown::Write)?;
            }
            let mut rest = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut rest).await?;
            Ok(ProxyHeaderRead {
                source: source(parsed),
                rest,
            })
        })
    }
}
