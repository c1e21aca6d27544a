//! The upstream's response body, read from its connection by whoever polls
//! it, while the rest of the request is written; the connection goes back
//! for reuse once both messages are complete. Only harmless trailer fields
//! are passed on.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName};
use http_body::{Body, Frame, SizeHint};

use super::request::{Outgoing, poll_send};
use super::{Connection, Home, Http1Error};
use crate::h1::body::{self, Framing};

/// The upstream's response body on a connection of the proxy's own, read
/// as it is polled; the rest of the request is written meanwhile.
pub(super) struct ResponseStream {
    pub(super) conn: Option<Box<Connection>>,
    pub(super) outgoing: Option<Outgoing>,
    pub(super) framing: Framing,
    pub(super) keep_alive: bool,
    pub(super) home: Option<Home>,
}

impl ResponseStream {
    /// Gives the connection back once both messages are complete.
    pub(super) fn release_if_done(&mut self) {
        if self.framing != Framing::Done {
            return;
        }
        let home = self.home.take();
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if self.keep_alive && self.outgoing.is_none() && conn.inbox.is_empty() {
            conn.finish_exchange();
            if let Some(home) = &home {
                home.0.keep(conn);
            }
        }
    }

    fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Http1Error>>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(None);
        };
        if self.outgoing.is_some() {
            match poll_send(conn, &mut self.outgoing, cx) {
                Poll::Ready(Ok(())) | Poll::Pending => {}
                // The client's body broke after the answer began: the
                // answer is cut (its client connection closes), and so is
                // this connection, which holds half a request.
                Poll::Ready(Err(e @ Http1Error::RequestBody(_))) => {
                    self.conn = None;
                    self.outgoing = None;
                    self.framing = Framing::Done;
                    return Poll::Ready(Some(Err(e)));
                }
                // The upstream stopped reading; its response may still be
                // whole, but the connection is not used again.
                Poll::Ready(Err(_)) => {
                    self.outgoing = None;
                    self.keep_alive = false;
                }
            }
        }
        match ready!(body::read_frame(
            &mut conn.inbox,
            &mut conn.copies,
            &mut conn.stream,
            &mut self.framing,
            cx
        )) {
            Ok(frame) => {
                self.release_if_done();
                Poll::Ready(frame.map(Ok))
            }
            Err(e) => {
                self.conn = None;
                self.outgoing = None;
                self.framing = Framing::Done;
                Poll::Ready(Some(Err(e.into())))
            }
        }
    }
}

/// Whether a response trailer field is passed on to the client: only those
/// defined for trailers and harmless there (RFC 9110 §6.5.1): integrity
/// digests (`Content-Digest`, `Repr-Digest`, the older `Digest`),
/// `Server-Timing`, and gRPC's status fields. Everything else is dropped:
/// framing (`Content-Length`, `Transfer-Encoding`), routing and control
/// (`Host`, `Location`, `Refresh`, `Cache-Control`, `Set-Cookie`, ...),
/// authentication, content coding and type, hop-by-hop fields, and any
/// field the proxy does not know, which a client merging trailers into the
/// header section might act on. The PKCE layer reads a response's header
/// section for a code; a trailer it never read must not deliver one.
/// `ETag` is dropped too: no definition lets a cache merge it from a
/// trailer, so a validator there is at best ignored.
fn allowed_trailer(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "content-digest"
            | "repr-digest"
            | "digest"
            | "server-timing"
            | "grpc-status"
            | "grpc-message"
            | "grpc-status-details-bin"
    )
}

/// `frame`, with only the trailer fields the client may have.
fn filter_trailers(frame: Frame<Bytes>) -> Frame<Bytes> {
    match frame.into_trailers() {
        Ok(trailers) if trailers.keys().all(allowed_trailer) => Frame::trailers(trailers),
        Ok(trailers) => {
            let mut kept = HeaderMap::new();
            for (name, value) in &trailers {
                if allowed_trailer(name) {
                    kept.append(name, value.clone());
                }
            }
            Frame::trailers(kept)
        }
        Err(frame) => frame,
    }
}

/// A response body from the upstream, read from its connection by whoever
/// polls it.
pub struct UpstreamBody(pub(super) ResponseStream);

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody").finish_non_exhaustive()
    }
}

/// An error while the upstream's response body was read.
pub type UpstreamBodyError = Box<dyn std::error::Error + Send + Sync>;

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
        let frame = ready!(self.get_mut().0.poll_body(cx));
        Poll::Ready(frame.map(|f| f.map(filter_trailers).map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.0.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.0.framing {
            Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}
