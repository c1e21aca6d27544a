//! Tests of the Redis store that need no Redis: the codec, the key
//! names, the refusal hints and the settings.

#![allow(clippy::unwrap_used)]

use super::codec::{FORMAT, decode_binding};
use super::refusals::{
    HINT_WINDOW_MILLIS, QUOTA_HINT_MILLIS, QUOTA_REFUSALS_KEPT, QUOTA_SEEN_MILLIS, Refusal,
};
use super::*;
use crate::pkce::ChallengeMethod;
use crate::store::{Challenge, fingerprint};

fn pending(state: Option<&str>, challenge: bool, redirect: bool) -> PendingAuthorization {
    PendingAuthorization {
        challenge: challenge.then_some(Challenge {
            method: ChallengeMethod::Plain,
            digest: [9; 32],
        }),
        client: fingerprint("client"),
        redirect_uri: redirect.then(|| fingerprint("https://c.example/cb")),
        state: state.map(Box::from),
    }
}

#[test]
fn a_refusal_holds_for_its_window_then_lets_one_request_ask() {
    let refusal = Refusal::default();
    assert!(refusal.admits(0));
    refusal.note(5_000);
    assert!(!refusal.admits(5_000));
    assert!(!refusal.admits(5_000 + HINT_WINDOW_MILLIS - 1));
    // The window lapsed: the first request asks Redis, the next ones
    // wait for its answer.
    assert!(refusal.admits(5_000 + HINT_WINDOW_MILLIS));
    assert!(!refusal.admits(5_000 + HINT_WINDOW_MILLIS));
    assert!(!refusal.admits(5_000 + 2 * HINT_WINDOW_MILLIS - 1));
    // Its answer was lost: the next window lets another ask.
    assert!(refusal.admits(5_000 + 2 * HINT_WINDOW_MILLIS));
    // A success clears the refusal at once.
    refusal.clear();
    assert!(refusal.admits(5_000 + 2 * HINT_WINDOW_MILLIS));
    assert!(refusal.admits(5_000 + 2 * HINT_WINDOW_MILLIS));
}

#[test]
fn refusals_name_what_refused() {
    let refusals = Refusals::default();
    assert!(refusals.check(0).is_ok());
    refusals.full.note(10);
    assert!(matches!(refusals.check(20), Err(StoreError::Full)));
    refusals.failed.note(30);
    assert!(matches!(
        refusals.check(40),
        Err(StoreError::Unavailable(_))
    ));
    refusals.failed.clear();
    refusals.full.clear();
    assert!(refusals.check(50).is_ok());
}

#[test]
fn records_round_trip() {
    for state in [None, Some(""), Some("xyz &=é")] {
        for challenge in [false, true] {
            for redirect in [false, true] {
                let record = pending(state, challenge, redirect);
                let bytes = encode_pending(&record);
                assert_eq!(decode_pending(&bytes).unwrap(), record);
                let binding = CodeBinding {
                    failures: 3,
                    ..record.binding()
                };
                assert_eq!(decode_binding(&encode_binding(&binding)).unwrap(), binding);
            }
        }
    }
}

#[test]
fn corrupt_records_are_errors_not_panics() {
    let good = encode_binding(&pending(None, true, true).binding());
    for len in 0..good.len() {
        assert!(decode_binding(&good[..len]).is_err(), "prefix of {len}");
    }
    let mut extra = good.clone();
    extra.push(0);
    assert!(decode_binding(&extra).is_err());
    let mut bad_method = good;
    bad_method[2] = 9;
    assert!(decode_binding(&bad_method).is_err());
    assert!(decode_pending(&[2, 0]).is_err());
    assert!(decode_pending(&[FORMAT, 64]).is_err());
}

#[test]
fn redemption_answers_are_read_strictly() {
    let binding = pending(None, true, true).binding();
    let record = redis::Value::BulkString(encode_binding(&binding));
    assert_eq!(redemption(record).unwrap(), Redemption::Redeemed(binding));
    assert_eq!(
        redemption(redis::Value::Int(0)).unwrap(),
        Redemption::Missing
    );
    assert_eq!(redemption(redis::Value::Int(1)).unwrap(), Redemption::Spent);
    assert_eq!(
        redemption(redis::Value::Int(2)).unwrap(),
        Redemption::Expired
    );
    for odd in [
        redis::Value::Int(3),
        redis::Value::Int(-1),
        redis::Value::Nil,
        redis::Value::Okay,
        redis::Value::BulkString(vec![FORMAT]),
        redis::Value::Array(vec![]),
    ] {
        assert!(redemption(odd).is_err());
    }
}

#[test]
fn keys_share_one_hash_tag() {
    let keys = Keys::new("app");
    let key = StoreKey::from_bytes([0xab; 16]);
    assert_eq!(
        keys.record('b', &key),
        "{app}:b:abababababababababababababababab"
    );
    assert_eq!(keys.pending_index, "{app}:n:p");
    assert_eq!(
        keys.source_note(&key),
        "{app}:ps:abababababababababababababababab"
    );
    let v6 = Source::new("2001:db8:1:2::9".parse().unwrap());
    assert_eq!(keys.source_set(v6), "{app}:src:2001:db8:1:2::/64");
}

#[test]
fn quota_refusals_hint_for_a_second_and_count_for_a_minute() {
    let refusals = QuotaRefusals::default();
    let (a, b) = (
        Source::new([192, 0, 2, 1].into()),
        Source::new([192, 0, 2, 2].into()),
    );
    assert!(!refusals.refused_lately(a, 0));
    assert_eq!(refusals.recent(0), 0);
    refusals.note(a, 1_000);
    assert!(refusals.refused_lately(a, 1_000 + QUOTA_HINT_MILLIS - 1));
    assert!(!refusals.refused_lately(b, 1_000));
    assert!(!refusals.refused_lately(a, 1_000 + QUOTA_HINT_MILLIS));
    assert_eq!(refusals.recent(1_000 + QUOTA_SEEN_MILLIS - 1), 1);
    assert_eq!(refusals.recent(1_000 + QUOTA_SEEN_MILLIS), 0);
    // Bounded: past the bound, new sources are not remembered until
    // older ones lapse.
    for n in 0..QUOTA_REFUSALS_KEPT + 10 {
        let ip = std::net::Ipv4Addr::from(u32::try_from(n).unwrap());
        refusals.note(Source::new(ip.into()), 100_000);
    }
    assert_eq!(refusals.recent(100_000), QUOTA_REFUSALS_KEPT as u64);
    refusals.note(a, 100_000 + QUOTA_SEEN_MILLIS);
    assert!(refusals.refused_lately(a, 100_000 + QUOTA_SEEN_MILLIS));
    assert_eq!(refusals.recent(100_000 + QUOTA_SEEN_MILLIS), 1);
}

#[test]
fn bad_settings_are_refused_without_connecting() {
    assert!(check_settings("redis://127.0.0.1:1/0", "pkce").is_ok());
    assert!(check_settings("http://127.0.0.1/", "pkce").is_err());
    assert!(check_settings("redis://127.0.0.1/0", "a{b").is_err());
    assert!(check_settings("redis://127.0.0.1/0", "").is_err());
    assert!(
        RedisStore::builder("redis://127.0.0.1:1/0")
            .build()
            .is_err()
    );
}

#[test]
fn tls_urls_are_accepted_unless_insecure() {
    assert!(check_settings("rediss://127.0.0.1:1/0", "pkce").is_ok());
    assert!(check_settings("rediss://:pw@redis.internal:6380/2", "pkce").is_ok());
    let insecure = check_settings("rediss://:pw@127.0.0.1:1/0#insecure", "pkce").unwrap_err();
    assert!(insecure.contains("#insecure"), "{insecure}");
    assert!(!insecure.contains("pw"), "{insecure}");
}

/// Not PEM, as a file of the wrong kind would be.
const NOT_PEM: &[u8] = b"secret-looking-bytes";
const A_CERTIFICATE: &[u8] = b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";

#[tokio::test]
async fn tls_settings_are_checked_when_built() {
    let refused = |tls: RedisTls, url: &str| {
        let e = RedisStore::builder(url).tls(tls).build().unwrap_err();
        let text = e.to_string();
        assert!(!text.contains("secret-looking"), "{text}");
        text
    };
    let text = refused(RedisTls::new(), "redis://127.0.0.1:1/0");
    assert!(text.contains("rediss://"), "{text}");
    let text = refused(
        RedisTls::new().root_certificates(NOT_PEM),
        "rediss://127.0.0.1:1/0",
    );
    assert!(text.contains("root certificates"), "{text}");
    let text = refused(
        RedisTls::new().client_identity(A_CERTIFICATE, NOT_PEM),
        "rediss://127.0.0.1:1/0",
    );
    assert!(text.contains("client key"), "{text}");
    let text = refused(
        RedisTls::new().client_identity(NOT_PEM, NOT_PEM),
        "rediss://127.0.0.1:1/0",
    );
    assert!(text.contains("client certificates"), "{text}");
    // The system's authorities: nothing to check before connecting.
    assert!(
        RedisStore::builder("rediss://127.0.0.1:1/0")
            .build()
            .is_ok()
    );
}

#[test]
fn tls_keys_are_not_printed() {
    let key = b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n";
    let builder = RedisStore::builder("rediss://:pw@h/0")
        .tls(RedisTls::new().client_identity(A_CERTIFICATE, key.as_slice()));
    let printed = format!("{builder:?}");
    assert!(printed.contains("[redacted]"), "{printed}");
    for secret in ["c2VjcmV0", "PRIVATE", "pw"] {
        assert!(!printed.contains(secret), "{printed}");
    }
}
