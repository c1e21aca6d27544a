//! What a request names (`target.rs` in the proxy: check_host and
//! check_path). The first byte picks the check; the rest is the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pkce_proxy::fuzzing::{check_host, check_path};
use tower_pkce::fuzzing::normalize_path;

/// Every valid `%XX` escape decoded, an invalid one kept.
fn decode(input: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                input.get(i + 1).copied().and_then(hex),
                input.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(input[i]);
            i += 1;
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, input)) = data.split_first() else {
        return;
    };
    if which & 1 == 0 {
        if check_host(input) {
            // A host the proxy forwards is a URI authority to `http`, and
            // holds nothing that ends or escapes one.
            let text = std::str::from_utf8(input).expect("ASCII");
            assert!(text.parse::<http::uri::Authority>().is_ok(), "{text:?}");
            assert!(!input.iter().any(|b| b" @/?#\\%\"'<>,;\r\n\t\0".contains(b)));
        }
        return;
    }
    // The proxy checks the path of a target that the `http` crate took.
    let Ok(target) = http::uri::PathAndQuery::try_from(input) else {
        return;
    };
    let input = target.path().as_bytes();
    if check_path(input).is_ok() {
        // However many times a server decodes a path the proxy forwards,
        // it reads no control character and no broken UTF-8, and the PKCE
        // layer's normalisation has nothing left to decode: it reads the
        // path the server reads.
        let mut bytes = input.to_vec();
        loop {
            let text = std::str::from_utf8(&bytes).expect("UTF-8 after decoding");
            assert!(!text.chars().any(|c| c.is_ascii_control()), "{text:?}");
            let next = decode(&bytes);
            if next == bytes {
                break;
            }
            bytes = next;
        }
        let text = target.path();
        let once = normalize_path(text);
        assert_eq!(normalize_path(&once), once, "{text:?}");
    }
});
