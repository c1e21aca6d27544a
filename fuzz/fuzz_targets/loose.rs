//! The loose reading (`loose.rs` decode, count_params, and the handle
//! count it feeds). Input: a byte whose low bit says HTML, then the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_pkce::fuzzing::{count_handles, count_params, loose_decode, name_tokens};

fuzz_target!(|input: &[u8]| {
    let [mode, bytes @ ..] = input else {
        return;
    };
    let html = mode & 1 != 0;
    let decoded = loose_decode(bytes, html);
    // Decoding never grows the text, and never hides a handle a plain
    // reading sees.
    assert!(decoded.len() <= bytes.len());
    assert!(count_handles(&decoded) >= count_handles(bytes));
    assert!(
        !decoded
            .iter()
            .any(|b| matches!(b, b'\t' | b'\r' | b'\n' | 0))
    );
    // The counts that decide whether a page or a Location shows a code.
    let _ = count_params(&decoded, b"code");
    let _ = name_tokens(&decoded, b"code");
});
