//! Writing a response to the client: its head (framing, `Connection`,
//! `Date`) and its body, as the request and the size known allow.

use std::cell::Cell;
use std::future::poll_fn;
use std::io::{self, Write as _};
use std::pin::pin;
use std::task::{Poll, ready};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::StatusCode;
use http::header;
use http_body::{Body, SizeHint};

use super::request_body::{ClientBodyError, is_client_body_error};
use super::{Connection, WRITE_BATCH};
use crate::h1::body::{self, encode_data, encode_end};
use crate::h1::common::{self, encode_field};

/// The `Date` value for now, formatted once a second per thread.
fn http_date() -> [u8; 29] {
    thread_local! {
        static CACHED: Cell<(u64, [u8; 29])> = const { Cell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|cached| {
        let (at, value) = cached.get();
        if at == second {
            return value;
        }
        let mut value = [0u8; 29];
        let _ = write!(&mut value[..], "{}", httpdate::HttpDate::from(now));
        cached.set((second, value));
        value
    })
}

pub(super) fn encode_status(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub(super) fn encode_date(out: &mut Vec<u8>) {
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(&http_date());
    out.extend_from_slice(b"\r\n");
}

/// How a response body goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outgoing {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    /// Exactly this many bytes.
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client, length unknown).
    UntilClose,
}

/// What the connection knows of the request it answers.
pub(super) struct Exchange {
    pub(super) head_request: bool,
    pub(super) http10: bool,
    pub(super) keep_alive: bool,
    pub(super) trailers_ok: bool,
}

/// Writes the response head into `out`; returns how the body goes out and
/// whether the connection closes after it.
pub(super) fn encode_response_head(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    hint: SizeHint,
    exchange: &Exchange,
    closing: bool,
) -> (Outgoing, bool) {
    let status = parts.status;
    encode_status(out, status);
    let bodiless = exchange.head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    // A HEAD or 304 response keeps the length of the body it stands for.
    let keeps_length = exchange.head_request || status == StatusCode::NOT_MODIFIED;
    let mut declared = None;
    let mut close = !exchange.keep_alive || closing;
    for (name, value) in &parts.headers {
        match *name {
            header::CONTENT_LENGTH if !keeps_length => {
                declared = body::parse_length(value.as_bytes());
                continue;
            }
            header::TRANSFER_ENCODING => continue,
            header::CONNECTION => {
                close |= common::has_token(value.as_bytes(), b"close");
                continue;
            }
            _ if name.as_str() == "keep-alive" => continue,
            _ => {}
        }
        encode_field(out, name, value);
    }
    if !parts.headers.contains_key(header::DATE) {
        encode_date(out);
    }
    let outgoing = if bodiless {
        Outgoing::None
    } else {
        match hint.exact().or(declared) {
            Some(n) => {
                body::encode_content_length(out, n);
                Outgoing::Length(n)
            }
            None if exchange.http10 => {
                close = true;
                Outgoing::UntilClose
            }
            None => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Outgoing::Chunked
            }
        }
    };
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if exchange.http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (outgoing, close)
}

/// Writes `response` after its head is in `conn.out`. `Ok(true)`: the body
/// went out whole, as framed.
pub(super) async fn write_body<B>(
    conn: &mut Connection,
    body: B,
    outgoing: Outgoing,
    trailers_ok: bool,
) -> io::Result<bool>
where
    B: Body<Data = Bytes>,
    B::Error: Into<ClientBodyError>,
{
    if outgoing == Outgoing::None {
        drop(body);
        conn.flush().await?;
        return Ok(true);
    }
    let mut body = pin!(body);
    let mut left = match outgoing {
        Outgoing::Length(n) => n,
        _ => u64::MAX,
    };
    let mut ended = false;
    let mut whole = true;
    poll_fn(|cx| {
        loop {
            if !ended && conn.out.len() - conn.written < WRITE_BATCH {
                match body.as_mut().poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        match frame.into_data() {
                            Ok(data) => {
                                let mut data = &data[..];
                                if data.len() as u64 > left {
                                    // More than the length said: the rest
                                    // is cut, and the connection closes.
                                    data = &data[..usize::try_from(left).unwrap_or(data.len())];
                                    whole = false;
                                    ended = true;
                                }
                                left -= data.len() as u64;
                                encode_data(&mut conn.out, data, outgoing == Outgoing::Chunked);
                            }
                            Err(frame) => {
                                match outgoing {
                                    Outgoing::Chunked => {
                                        let trailers =
                                            frame.trailers_ref().filter(|_| trailers_ok);
                                        encode_end(&mut conn.out, trailers);
                                    }
                                    Outgoing::Length(_) if left > 0 => whole = false,
                                    _ => {}
                                }
                                ended = true;
                            }
                        }
                        continue;
                    }
                    Poll::Ready(None) => {
                        match outgoing {
                            Outgoing::Chunked => encode_end(&mut conn.out, None),
                            Outgoing::Length(_) if left > 0 => whole = false,
                            _ => {}
                        }
                        ended = true;
                        continue;
                    }
                    Poll::Ready(Some(Err(e))) => {
                        let e: ClientBodyError = e.into();
                        if is_client_body_error(&*e) {
                            // The response had begun: too late for a 400.
                            tracing::info!(error = %e, "the client's request body failed during the response; closing the connection");
                        } else {
                            tracing::debug!(error = %e, "the response body failed; closing the connection");
                        }
                        return Poll::Ready(Err(io::Error::other("the response body failed")));
                    }
                    Poll::Pending if conn.written == conn.out.len() => return Poll::Pending,
                    Poll::Pending => {}
                }
            }
            ready!(conn.poll_flush(cx))?;
            if ended {
                return Poll::Ready(Ok(()));
            }
        }
    })
    .await?;
    Ok(whole)
}
