//! The upstream connection's response head parser
//! (`upstream::parse_head_with`). Input: a byte choosing the request's
//! method, then the bytes the upstream sent.
#![no_main]

use http::{Method, StatusCode, Version, header};
use libfuzzer_sys::fuzz_target;
use pkce_proxy::fuzzing::{
    BodyFraming, RESPONSE_FIELDS, ResponseHead, TOO_MANY_RESPONSE_FIELDS, parse_response_head,
};

const METHODS: [Method; 4] = [Method::GET, Method::POST, Method::HEAD, Method::PUT];

fn same(a: &ResponseHead, b: &ResponseHead) -> bool {
    match (a, b) {
        (ResponseHead::Partial, ResponseHead::Partial) => true,
        (ResponseHead::Malformed(x), ResponseHead::Malformed(y)) => x == y,
        (
            ResponseHead::Parsed {
                len,
                status,
                version,
                headers,
                framing,
                keep_alive,
            },
            ResponseHead::Parsed {
                len: l2,
                status: s2,
                version: v2,
                headers: h2,
                framing: f2,
                keep_alive: k2,
            },
        ) => {
            len == l2
                && status == s2
                && version == v2
                && headers == h2
                && framing == f2
                && keep_alive == k2
        }
        _ => false,
    }
}

fuzz_target!(|input: &[u8]| {
    let [choice, data @ ..] = input else {
        return;
    };
    let method = &METHODS[usize::from(choice % 4)];
    let (few, most) = RESPONSE_FIELDS;
    let head = parse_response_head(data, method, most);
    // A connection tries a few fields first: that reading is the same,
    // unless it ran out of room.
    match parse_response_head(data, method, few) {
        ResponseHead::Malformed(why) if why == TOO_MANY_RESPONSE_FIELDS => {}
        first => assert!(same(&first, &head), "{first:?}\n{head:?}"),
    }
    let ResponseHead::Parsed {
        len,
        status,
        version,
        headers,
        framing,
        keep_alive,
    } = &head
    else {
        return;
    };
    let len = *len;
    assert!(len > 0 && len <= data.len());
    assert!(same(
        &parse_response_head(&data[..len], method, most),
        &head
    ));
    assert!(matches!(
        parse_response_head(&data[..len - 1], method, most),
        ResponseHead::Partial
    ));
    let bodiless = *method == Method::HEAD
        || status.is_informational()
        || *status == StatusCode::NO_CONTENT
        || *status == StatusCode::NOT_MODIFIED;
    if bodiless {
        assert_eq!(*framing, BodyFraming::None);
    }
    let coded = headers.contains_key(header::TRANSFER_ENCODING);
    if coded && !bodiless {
        // A length never goes on beside a transfer coding.
        assert!(!headers.contains_key(header::CONTENT_LENGTH));
        assert!(matches!(
            framing,
            BodyFraming::Chunked | BodyFraming::UntilClose
        ));
    }
    if let BodyFraming::Length(n) = framing {
        assert!(*n > 0);
    }
    if *keep_alive {
        assert_eq!(*version, Version::HTTP_11);
        assert_ne!(*framing, BodyFraming::UntilClose);
    }
    assert!(!matches!(framing, BodyFraming::Other));
});
