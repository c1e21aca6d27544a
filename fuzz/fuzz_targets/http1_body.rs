//! The engine's body reader (`wire::read_frame`: content-length, chunked
//! with its trailer section, and until-close framing), fed over a loopback
//! connection in pieces, so that a message cut anywhere reaches every state.
//!
//! Input: a mode byte (framing in its low two bits: chunked twice as often,
//! a length from the two bytes after it, until close), a seed for the cuts,
//! then the bytes on the wire.
#![no_main]

use std::sync::OnceLock;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use pkce_proxy::fuzzing::{BodyEnd, BodyFraming, BodyRead, BodyReader, parse_chunk_size};
use pkce_proxy_fuzz::pieces;

fn reader() -> &'static BodyReader {
    static READER: OnceLock<BodyReader> = OnceLock::new();
    READER.get_or_init(|| BodyReader::new().expect("a loopback listener"))
}

/// A chunked body read the plain way, from bytes all there: its data, its
/// trailers and the bytes after it; `None` when it is cut short, `Err`
/// when it is malformed.
#[allow(clippy::type_complexity)]
fn chunked(mut rest: &[u8]) -> Result<Option<(Vec<u8>, Option<HeaderMap>, &[u8])>, ()> {
    let mut data = Vec::new();
    loop {
        let Some((used, size)) = parse_chunk_size(rest).map_err(|_| ())? else {
            return Ok(None);
        };
        rest = &rest[used..];
        if size == 0 {
            break;
        }
        let size = usize::try_from(size).map_err(|_| ())?;
        if rest.len() < size {
            return Ok(None);
        }
        data.extend_from_slice(&rest[..size]);
        rest = &rest[size..];
        match rest {
            [b'\r', b'\n', tail @ ..] => rest = tail,
            [] | [_] => return Ok(None),
            _ => return Err(()),
        }
    }
    if let Some(tail) = rest.strip_prefix(b"\r\n") {
        return Ok(Some((data, None, tail)));
    }
    // Trailer lines end with CRLF: a bare LF up to the section's end (or in
    // all there is, when it has not come) is refused, where httparse would
    // end a line there (deliberate strictness, see tests/differential.rs).
    let section = rest
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(rest, |end| &rest[..end + 4]);
    if section
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || section[i - 1] != b'\r'))
    {
        return Err(());
    }
    let mut fields = [httparse::EMPTY_HEADER; 128];
    match httparse::parse_headers(rest, &mut fields) {
        Ok(httparse::Status::Complete((used, parsed))) => {
            let mut trailers = HeaderMap::new();
            for field in parsed {
                let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| ())?;
                let value = HeaderValue::from_bytes(field.value).map_err(|_| ())?;
                trailers.append(name, value);
            }
            Ok(Some((data, Some(trailers), &rest[used..])))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(()),
    }
}

/// The same reading: the same bytes, trailers and end. A malformed body is
/// malformed however it arrives, but which fault is seen first may differ
/// (a field without a colon before a bare LF is refused before the LF
/// comes, when it comes later), so the reason is not compared.
fn same(a: &BodyRead, b: &BodyRead) -> bool {
    let ends = match (&a.end, &b.end) {
        (BodyEnd::Malformed(_), BodyEnd::Malformed(_)) => true,
        (x, y) => x == y,
    };
    a.data == b.data && a.trailers == b.trailers && ends && a.rest == b.rest
}

fuzz_target!(|input: &[u8]| {
    let [mode, seed, wire @ ..] = input else {
        return;
    };
    let (framing, wire) = match mode & 3 {
        0 | 1 => (BodyFraming::Chunked, wire),
        2 => match wire {
            [a, b, rest @ ..] => (
                BodyFraming::Length(u64::from(u16::from_le_bytes([*a, *b]))),
                rest,
            ),
            _ => return,
        },
        _ => (BodyFraming::UntilClose, wire),
    };
    let reader = reader();
    let cut = reader.read(framing, &pieces(*seed, wire)).unwrap();
    let whole = reader.read(framing, &[wire]).unwrap();
    // Where the message is cut changes nothing.
    assert!(same(&cut, &whole), "cut: {cut:?}\nwhole: {whole:?}");
    assert!(cut.data.len() <= wire.len());
    if cut.end == BodyEnd::Complete {
        let mut all = cut.data.clone();
        all.extend_from_slice(&cut.rest);
        assert!(all.len() <= wire.len());
    }
    match framing {
        BodyFraming::Length(n) => {
            let n = usize::try_from(n).unwrap();
            if wire.len() >= n {
                assert_eq!(cut.end, BodyEnd::Complete);
                assert_eq!(cut.data, &wire[..n]);
                assert_eq!(cut.rest, &wire[n..]);
            } else {
                assert_eq!(cut.end, BodyEnd::Closed);
                assert_eq!(cut.data, wire);
            }
        }
        BodyFraming::UntilClose => {
            assert_eq!(cut.end, BodyEnd::Complete);
            assert_eq!(cut.data, wire);
            assert!(cut.rest.is_empty());
        }
        _ => match chunked(wire) {
            Ok(Some((data, trailers, rest))) => {
                assert_eq!(cut.end, BodyEnd::Complete, "{cut:?}");
                assert_eq!(cut.data, data);
                assert_eq!(cut.trailers, trailers);
                assert_eq!(cut.rest, rest);
            }
            Ok(None) => assert_ne!(cut.end, BodyEnd::Complete, "{cut:?}"),
            Err(()) => assert!(matches!(cut.end, BodyEnd::Malformed(_)), "{cut:?}"),
        },
    }
});
