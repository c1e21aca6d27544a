//! The PROXY protocol reader (`proxy_protocol::read_header`), fed over a
//! loopback connection in pieces: it takes exactly the header and not a
//! byte of the stream after it, whatever the cuts, and a v1 line it takes
//! is one the line parser takes alike.
//!
//! Input: a seed for the cuts, then the bytes on the wire.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pkce_proxy::fuzzing::{BodyReader, parse_proxy_v1};
use pkce_proxy_fuzz::pieces;

fn reader() -> &'static BodyReader {
    static READER: OnceLock<BodyReader> = OnceLock::new();
    READER.get_or_init(|| BodyReader::new().expect("a loopback listener"))
}

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

fuzz_target!(|input: &[u8]| {
    let Some((&seed, data)) = input.split_first() else {
        return;
    };
    let read = reader()
        .read_proxy_header(&pieces(seed, data))
        .expect("loopback");
    assert_ne!(read.source, Err("waits past the end"));
    let whole = reader().read_proxy_header(&[data]).expect("loopback");
    assert_eq!(read.source, whole.source, "the cuts changed the reading");
    let Ok(source) = read.source else {
        return;
    };
    assert!(data.ends_with(&read.rest));
    assert_eq!(read.rest, whole.rest);
    let header = &data[..data.len() - read.rest.len()];
    if header.starts_with(b"PROXY ") {
        assert!(header.ends_with(b"\r\n") && header.len() <= 107);
        let first = header.windows(2).position(|w| w == b"\r\n");
        assert_eq!(first, Some(header.len() - 2), "read past the line's end");
        assert_eq!(parse_proxy_v1(header), Ok(source));
    } else {
        assert!(header.starts_with(V2_SIGNATURE));
        let len = usize::from(u16::from_be_bytes([header[14], header[15]]));
        assert_eq!(header.len(), 16 + len);
    }
});
