//! Client connections on a listener with TLS: the handshake, then hyper
//! (see `h1::server::serve_hyper`): HTTP/2 when the client chose `h2` by ALPN,
//! HTTP/1.1 otherwise. The proxy's own HTTP/1.1 server reads and writes
//! the socket itself, so it serves plain connections only.
//!
//! A client that speaks plain HTTP to this port gets a 400 that says so,
//! rather than a handshake failure it cannot read or a wait for the head
//! timeout.

use std::future::Future;
use std::io::Write as _;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::h1::server::{self, ClientBody, ClientBodyError, OpenConnection, Protocol, Settings};
use crate::metrics::Limit;

/// The first byte of every TLS connection: a handshake record (RFC 8446
/// §5.1).
const HANDSHAKE_RECORD: u8 = 0x16;

const PLAINTEXT_REFUSED: &str = "this port speaks TLS: use https://\n";

/// Serves one client connection that should begin with a TLS handshake,
/// until it closes. The handshake must be done within the head timeout;
/// `handler` is made once it is.
pub(crate) async fn serve_connection<M, H, F, B>(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    make: M,
    open: OpenConnection,
    settings: Settings,
) where
    M: FnOnce() -> H,
    H: Fn(Request<ClientBody>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Data: Send,
    B::Error: Into<ClientBodyError> + std::fmt::Display,
{
    let accepted = Instant::now();
    let deadline = accepted + settings.head_timeout;
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Ok(Ok(1..)) => {}
        Ok(Ok(0) | Err(_)) => return,
        Err(_) => {
            tracing::debug!("no TLS handshake within the head timeout; closing");
            return;
        }
    }
    if first[0] != HANDSHAKE_RECORD {
        tracing::debug!("plain text on the TLS listener; answered 400");
        refuse_plaintext(stream, &settings).await;
        return;
    }
    let tls = match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            // rustls names what failed (a protocol version, an alert); it
            // holds nothing secret.
            tracing::debug!(error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            settings.metrics.limit_reached(Limit::HeadTimeout);
            tracing::debug!("TLS handshake not done within the head timeout; closing");
            return;
        }
    };
    let protocol = match tls.get_ref().1.alpn_protocol() {
        Some(b"h2") => Protocol::Http2,
        _ => Protocol::Http1,
    };
    let settings = (settings, accepted);
    server::serve_hyper(TokioIo::new(tls), protocol, make(), open, settings).await;
}

/// Answers 400 in plain HTTP/1.1, then closes, reading what the client
/// still sends for a while so that it gets the answer, not a reset.
async fn refuse_plaintext(mut stream: TcpStream, settings: &Settings) {
    let mut answer = Vec::with_capacity(160);
    let _ = write!(
        answer,
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{PLAINTEXT_REFUSED}",
        PLAINTEXT_REFUSED.len()
    );
    let written = tokio::time::timeout(settings.send_timeout, stream.write_all(&answer)).await;
    server::close(&stream, matches!(written, Ok(Ok(())))).await;
}
