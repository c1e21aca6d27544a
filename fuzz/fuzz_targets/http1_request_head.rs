//! The client connection's request head parser (`http1::parse_head`) and
//! the test that decides when a head that came in pieces is parsed again
//! (`http1::ends_head`). The input is the bytes a client sent.
#![no_main]

use http::{Method, StatusCode, Version, header};
use libfuzzer_sys::fuzz_target;
use pkce_proxy::fuzzing::{BodyFraming, RequestHead, ends_head, parse_request_head};

fn same(a: &RequestHead, b: &RequestHead) -> bool {
    match (a, b) {
        (RequestHead::Partial, RequestHead::Partial) => true,
        (
            RequestHead::Refused { status, why },
            RequestHead::Refused {
                status: s2,
                why: w2,
            },
        ) => status == s2 && why == w2,
        (
            RequestHead::Parsed {
                len,
                request,
                framing,
                keep_alive,
                expect_continue,
                trailers_ok,
            },
            RequestHead::Parsed {
                len: l2,
                request: r2,
                framing: f2,
                keep_alive: k2,
                expect_continue: e2,
                trailers_ok: t2,
            },
        ) => {
            len == l2
                && request.method() == r2.method()
                && request.uri() == r2.uri()
                && request.version() == r2.version()
                && request.headers() == r2.headers()
                && framing == f2
                && keep_alive == k2
                && expect_continue == e2
                && trailers_ok == t2
        }
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let head = parse_request_head(data);
    let RequestHead::Parsed {
        len,
        request,
        framing,
        keep_alive,
        expect_continue,
        ..
    } = &head
    else {
        if let RequestHead::Refused { status, .. } = head {
            assert!(matches!(
                status,
                StatusCode::BAD_REQUEST
                    | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
                    | StatusCode::NOT_IMPLEMENTED
            ));
        }
        return;
    };
    let len = *len;
    assert!(len > 0 && len <= data.len());
    // The head alone reads as it did with what follows it, and every
    // shorter prefix waits for more: a head that comes in pieces is never
    // refused or read otherwise.
    assert!(same(&parse_request_head(&data[..len]), &head));
    for cut in [len - 1, len / 2] {
        assert!(
            matches!(parse_request_head(&data[..cut]), RequestHead::Partial),
            "prefix {cut} of {len}"
        );
    }
    // A connection parses a head that came in pieces again only once the
    // bytes since its last try (and the three before) show a blank line:
    // the last bytes of every complete head must.
    assert!(ends_head(&data[len.saturating_sub(4)..len]));

    let method = request.method();
    assert_ne!(method, Method::CONNECT);
    if [
        Method::GET,
        Method::HEAD,
        Method::DELETE,
        Method::OPTIONS,
        Method::TRACE,
    ]
    .contains(method)
    {
        assert_eq!(*framing, BodyFraming::None, "a body on {method}");
    }
    let headers = request.headers();
    let hosts = headers.get_all(header::HOST).iter().count();
    let lengths = headers.get_all(header::CONTENT_LENGTH).iter().count();
    let codings = headers.get_all(header::TRANSFER_ENCODING).iter().count();
    match request.version() {
        Version::HTTP_11 => assert_eq!(hosts, 1),
        Version::HTTP_10 => {
            assert!(hosts <= 1);
            assert!(!expect_continue);
            assert_eq!(codings, 0);
        }
        v => panic!("version {v:?}"),
    }
    match *framing {
        BodyFraming::Chunked => assert!(lengths == 0 && codings == 1),
        BodyFraming::Length(n) => {
            assert!(n > 0 && codings == 0);
            for value in headers.get_all(header::CONTENT_LENGTH) {
                assert_eq!(value.to_str().ok().and_then(|v| v.parse().ok()), Some(n));
            }
        }
        BodyFraming::None => assert_eq!(codings, 0),
        other => panic!("a head gave {other:?}"),
    }
    let closes = headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
    });
    if closes {
        assert!(!keep_alive);
    }
});
