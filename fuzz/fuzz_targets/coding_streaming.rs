//! The streaming decoder that watches a compressed page too large to read
//! whole (`coding.rs` Streaming), fed in pieces. Input: a byte choosing
//! the coding, a seed for the cuts, then the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pkce_proxy_fuzz::pieces;
use tower_pkce::fuzzing::{Streaming, decode_content};

const ENCODINGS: [&str; 4] = ["gzip", "deflate", "br", "x-gzip"];

/// The most a decoder hands on for one piece of at most 1 KiB it is fed
/// (deflate's own ceiling, 1032:1, is about half of it).
const MOST_PER_KIB: usize = 2 << 20;

fuzz_target!(|input: &[u8]| {
    let [choice, seed, body @ ..] = input else {
        return;
    };
    let encoding = ENCODINGS[usize::from(*choice) % ENCODINGS.len()];
    let mut decoder = Streaming::new(encoding).unwrap();
    let mut out = Vec::new();
    let mut failed = false;
    for piece in pieces(*seed, body) {
        let mut handed = 0;
        let fed = decoder.feed(piece, &mut |d: &[u8]| {
            assert!(!d.is_empty());
            handed += d.len();
            out.extend_from_slice(d);
            false
        });
        // A piece of n bytes is fed in slices of 1 KiB at most.
        assert!(handed <= piece.len().div_ceil(1024).max(1) * MOST_PER_KIB);
        if fed.is_err() {
            failed = true;
            break;
        }
    }
    if !failed {
        let mut handed = 0;
        let end = decoder.finish(&mut |d: &[u8]| {
            handed += d.len();
            out.extend_from_slice(d);
            false
        });
        assert!(handed <= MOST_PER_KIB);
        failed = end.is_err();
    }
    // What it decodes whole it decodes alike in pieces.
    if let Ok(whole) = decode_content(encoding, body, 1 << 22)
        && !failed
    {
        assert!(
            out == whole,
            "{} bytes in pieces, {} whole",
            out.len(),
            whole.len()
        );
    }
});
