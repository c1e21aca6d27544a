//! The Redis store's record codec (`store/redis/codec.rs`: decode_pending,
//! decode_binding, and the reading of the redemption script's answer).
//! Input: a byte choosing what to read, then the bytes Redis returned.
//!
//! The mark values (`b<expiry>`, `s<expiry>`) are read by the Lua scripts
//! inside Redis, never by Rust: they are out of reach here.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_pkce::ChallengeMethod;
use tower_pkce::fuzzing::redis::{
    decode_binding, decode_pending, encode_binding, encode_pending, redemption_bulk, redemption_int,
};
use tower_pkce::store::{Challenge, CodeBinding, PendingAuthorization, Redemption};

fn fingerprint(bytes: &[u8], at: usize) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = bytes.get(at + i).copied().unwrap_or(i as u8);
    }
    out
}

fuzz_target!(|input: &[u8]| {
    let [choice, bytes @ ..] = input else {
        return;
    };
    match choice % 4 {
        0 => {
            // Whatever reads back writes back to the same bytes.
            if let Ok(record) = decode_pending(bytes) {
                assert_eq!(encode_pending(&record), bytes);
            }
        }
        1 => {
            let read = decode_binding(bytes);
            if let Ok(binding) = &read {
                assert_eq!(encode_binding(binding), bytes);
            }
            match (read, redemption_bulk(bytes.to_vec())) {
                (Ok(binding), Ok(Redemption::Redeemed(redeemed))) => assert_eq!(binding, redeemed),
                (Err(_), Err(_)) => {}
                (a, b) => panic!("{a:?} / {b:?}"),
            }
        }
        2 => {
            let mut word = [0u8; 8];
            for (w, b) in word.iter_mut().zip(bytes) {
                *w = *b;
            }
            let answer = i64::from_le_bytes(word);
            let read = redemption_int(answer);
            match answer {
                0 => assert_eq!(read.unwrap(), Redemption::Missing),
                1 => assert_eq!(read.unwrap(), Redemption::Spent),
                2 => assert_eq!(read.unwrap(), Redemption::Expired),
                _ => assert!(read.is_err()),
            }
        }
        _ => {
            // Every record writes to bytes that read back to it.
            let flags = bytes.first().copied().unwrap_or(0);
            let challenge = (flags & 1 != 0).then(|| Challenge {
                method: if flags & 2 != 0 {
                    ChallengeMethod::Plain
                } else {
                    ChallengeMethod::S256
                },
                digest: {
                    let mut d = [0u8; 32];
                    d[..16].copy_from_slice(&fingerprint(bytes, 1));
                    d[16..].copy_from_slice(&fingerprint(bytes, 17));
                    d
                },
            });
            let client = fingerprint(bytes, 33);
            let redirect_uri = (flags & 4 != 0).then(|| fingerprint(bytes, 49));
            let state = (flags & 8 != 0)
                .then(|| String::from_utf8_lossy(bytes.get(65..).unwrap_or_default()).into());
            let pending = PendingAuthorization {
                challenge,
                client,
                redirect_uri,
                state,
            };
            assert_eq!(decode_pending(&encode_pending(&pending)).unwrap(), pending);
            let binding = CodeBinding {
                failures: flags >> 4,
                ..pending.binding()
            };
            assert_eq!(decode_binding(&encode_binding(&binding)).unwrap(), binding);
        }
    }
});
