//! Requests that a lenient upstream reads differently from a strict parser:
//! every one must be checked as a code redemption, or refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use tests::{
    Answer, Body, Flavor, LegacyServer, Service, delivered, form, get, post_form, send,
    token_request, walk,
};
use tower::util::BoxCloneSyncService;
use tower_pkce::{ForwardProgress, PkceLayer, Rejection, RequestBody, Requirement};

const RFC_VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const RFC_CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

fn pkce_query(extra: &[(&str, &str)]) -> String {
    let mut pairs = vec![
        ("response_type", "code"),
        ("client_id", "client-a"),
        ("redirect_uri", "https://client.example/cb"),
        ("code_challenge", RFC_CHALLENGE),
        ("code_challenge_method", "S256"),
    ];
    pairs.extend_from_slice(extra);
    form(&pairs)
}

async fn bound_code(layer: PkceLayer) -> (LegacyServer, Service, String) {
    let server = LegacyServer::new(Flavor::Direct);
    let svc = server.behind(layer);
    let answer = walk(&svc, Flavor::Direct, &pkce_query(&[])).await;
    let (code, _) = delivered(&answer).unwrap();
    (server, svc, code)
}

fn post_with(content_type: &str, extra: Option<(&str, &str)>, body: String) -> Request<Body> {
    let mut b = Request::post("/token").header(header::CONTENT_TYPE, content_type);
    if let Some((n, v)) = extra {
        b = b.header(n, v);
    }
    b.body(Full::new(Bytes::from(body))).unwrap()
}

#[tokio::test]
async fn spellings_a_lenient_upstream_reads_as_a_code_grant_are_checked() {
    let (server, svc, code) =
        bound_code(PkceLayer::strict().max_failed_attempts(50).unwrap()).await;
    let form = "application/x-www-form-urlencoded";
    let bodies = [
        format!("grant.type=authorization_code&code={code}&client_id=client-a"),
        format!("grant+type=authorization_code&code={code}&client_id=client-a"),
        format!("Grant_Type=authorization_code&Code={code}&client_id=client-a"),
        format!("GRANT_TYPE=authorization_code&CODE={code}&CLIENT_ID=client-a"),
        format!("grant_type=authorization_code;code={code};client_id=client-a"),
        format!("grant_type=Authorization_Code&code={code}&client_id=client-a"),
        format!("code={code}&client_id=client-a"),
        format!("grant_type=refresh_token&code={code}&client_id=client-a"),
        format!("grant_type=urn:custom&code={code}&client_id=client-a"),
    ];
    for body in bodies {
        let answer = send(&svc, post_with(form, None, body.clone())).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}: {answer:?}");
        assert!(answer.rejection.is_some(), "{body}");
    }
    // Bodies the proxy cannot read as the upstream would are refused.
    let utf16: String = format!("grant_type=authorization_code&code={code}")
        .chars()
        .map(|c| format!("%00{c}"))
        .collect();
    for (content_type, extra) in [
        ("application/x-www-form-urlencoded; charset=UTF-16BE", None),
        (
            "application/x-www-form-urlencoded; charset=\"iso-8859-1\"",
            None,
        ),
        (form, Some(("content-encoding", "gzip"))),
    ] {
        let answer = send(&svc, post_with(content_type, extra, utf16.clone())).await;
        assert_eq!(
            answer.rejection,
            Some(Rejection::UnsupportedMediaType),
            "{content_type} {extra:?}"
        );
    }
    // Token parameters in the query, in any spelling: whatever a server that
    // merges the query into the body would read over the checked body.
    for query in [
        "Code=x",
        "grant.type=authorization_code",
        "a=1;code=x",
        "code_verifier=x",
        "redirect_uri=https%3A%2F%2Fevil.example%2Fcb",
        "Client_ID=client-b",
        "client_assertion=x.y.z",
        "client_assertion_type=urn%3Ax",
        "client.assertion=x.y.z",
    ] {
        let answer = send(
            &svc,
            post_form(&format!("/token?{query}"), "grant_type=refresh_token"),
        )
        .await;
        assert_eq!(
            answer.rejection,
            Some(Rejection::TokenParametersInQuery),
            "{query}"
        );
    }
    assert_eq!(server.token_requests(), 0);
    // The code is still good for its verifier.
    let ok = send(&svc, token_request(&code, "client-a", Some(RFC_VERIFIER))).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
}

/// A proxy between the layer and the upstream removes what `Connection`
/// names: the upstream would not get the credentials, host or framing that
/// were checked (invariant I5).
#[tokio::test]
async fn a_connection_header_naming_a_checked_field_is_refused() {
    let (server, svc, code) =
        bound_code(PkceLayer::strict().max_failed_attempts(50).unwrap()).await;
    let body = format!(
        "grant_type=authorization_code&code={code}&code_verifier={RFC_VERIFIER}&client_id=client-a"
    );
    for connection in [
        "Authorization",
        "keep-alive, authorization",
        "HOST",
        "content-type",
        "Content-Length",
        "transfer-encoding",
        "cookie",
    ] {
        let req = post_with(
            "application/x-www-form-urlencoded",
            Some(("connection", connection)),
            body.clone(),
        );
        let answer = send(&svc, req).await;
        assert_eq!(
            answer.rejection,
            Some(Rejection::ConnectionNamesCheckedField),
            "{connection}"
        );
        let req = Request::get(format!("/authorize?{}", pkce_query(&[])))
            .header("connection", connection)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let answer = send(&svc, req).await;
        assert_eq!(
            answer.rejection,
            Some(Rejection::ConnectionNamesCheckedField),
            "authorize, {connection}"
        );
    }
    assert_eq!(server.token_requests(), 0);
    // Fields the checks do not read may be named.
    let req = post_with(
        "application/x-www-form-urlencoded",
        Some(("connection", "keep-alive, x-trace")),
        body,
    );
    let ok = send(&svc, req).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
}

/// Trailer fields after a checked body: a server that merges them into the
/// head would read fields the checks never saw.
#[tokio::test]
async fn trailers_on_a_checked_body_are_refused() {
    use tower::{Layer, ServiceExt};
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let inner = tower::service_fn(move |_: Request<RequestBody<tests::ReadyFrames>>| {
        seen.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))) }
    });
    let svc = PkceLayer::strict().layer(inner);
    for (path, body) in [
        (
            "/token",
            "grant_type=refresh_token&refresh_token=rt".to_owned(),
        ),
        ("/authorize", pkce_query(&[])),
    ] {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("client-id", "client-b".parse().unwrap());
        let frames = tests::ReadyFrames(
            [
                http_body::Frame::data(Bytes::from(body)),
                http_body::Frame::trailers(trailers),
            ]
            .into(),
        );
        let req = Request::post(path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(frames)
            .unwrap();
        let answer = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(
            answer.extensions().get::<Rejection>(),
            Some(&Rejection::TrailersNotAllowed),
            "{path}"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0, "nothing was forwarded");
}

#[tokio::test]
async fn standard_and_configured_grants_without_a_code_pass() {
    let server = LegacyServer::new(Flavor::Direct);
    let svc = server.behind(PkceLayer::strict().pass_grant_type("urn:custom"));
    for grant in ["refresh_token", "client_credentials", "urn:custom"] {
        let answer = send(
            &svc,
            post_form("/token", &format!("grant_type={grant}&refresh_token=rt")),
        )
        .await;
        assert_eq!(answer.rejection, None, "{grant}");
    }
    assert_eq!(server.token_requests(), 3);
    let answer = send(&svc, post_form("/token", "grant_type=urn:other")).await;
    assert_eq!(answer.rejection, Some(Rejection::MissingCode));
}

#[tokio::test]
async fn options_with_a_body_is_no_preflight() {
    let (server, svc, code) = bound_code(PkceLayer::strict()).await;
    let req = Request::options("/token")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(format!(
            "grant_type=authorization_code&code={code}"
        ))))
        .unwrap();
    let answer = send(&svc, req).await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(server.token_requests(), 0);
}

#[tokio::test]
async fn redirect_uri_only_at_the_token_request_is_accepted() {
    let server = LegacyServer::new(Flavor::Direct);
    let svc = server.behind(PkceLayer::strict());
    let query = form(&[
        ("response_type", "code"),
        ("client_id", "client-a"),
        ("code_challenge", RFC_CHALLENGE),
        ("code_challenge_method", "S256"),
    ]);
    let (code, _) = delivered(&walk(&svc, Flavor::Direct, &query).await).unwrap();
    let ok = send(&svc, token_request(&code, "client-a", Some(RFC_VERIFIER))).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
}

#[tokio::test]
async fn unknown_client_meets_the_strictest_rule() {
    let server = LegacyServer::new(Flavor::Direct);
    let layer = PkceLayer::strict()
        .requirement(Requirement::Optional)
        .client_requirement("spa", Requirement::Required);
    let svc = server.behind(layer);
    let answer = send(
        &svc,
        post_form("/token", "grant_type=authorization_code&code=unbound"),
    )
    .await;
    assert_eq!(answer.rejection, Some(Rejection::UnboundCode));
    let answer = send(
        &svc,
        post_form(
            "/token",
            "grant_type=authorization_code&code=unbound&client_id=legacy",
        ),
    )
    .await;
    assert_eq!(answer.rejection, None);
}

/// An upstream whose first token request never answers, whose `/authorize`
/// sends the browser to `/resume`, and whose `/resume` issues the code with
/// the handle's dot percent-encoded. It records the `Accept-Encoding` it sees.
#[derive(Clone, Default)]
struct Tricky {
    token_calls: Arc<AtomicUsize>,
    /// What the first token request reports before it hangs: 0 nothing,
    /// 1 not sent, 2 sent.
    first_token_progress: Arc<std::sync::atomic::AtomicU8>,
    last_state: Arc<std::sync::Mutex<String>>,
    accept_encoding: Arc<std::sync::Mutex<Option<String>>>,
}

fn tricky_service(t: Tricky) -> Service {
    let inner = tower::service_fn(move |req: Request<RequestBody<Body>>| {
        let t = t.clone();
        async move {
            *t.accept_encoding.lock().unwrap() = req
                .headers()
                .get(header::ACCEPT_ENCODING)
                .map(|v| v.to_str().unwrap().to_owned());
            let params = tests::parse_form(req.uri().query().unwrap_or(""));
            let mut r = Response::new(Full::new(Bytes::new()));
            match req.uri().path() {
                "/authorize" => {
                    let state = params.iter().find(|(n, _)| n == "state").unwrap().1.clone();
                    *t.last_state.lock().unwrap() = state;
                    *r.status_mut() = StatusCode::SEE_OTHER;
                    r.headers_mut()
                        .insert(header::LOCATION, "/resume".parse().unwrap());
                }
                "/resume" => {
                    let state = t.last_state.lock().unwrap().replace('.', "%2E");
                    *r.status_mut() = StatusCode::FOUND;
                    r.headers_mut().insert(
                        header::LOCATION,
                        format!("https://client.example/cb?code=C1&state={state}")
                            .parse()
                            .unwrap(),
                    );
                }
                "/token" => {
                    if t.token_calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        let progress = req.extensions().get::<ForwardProgress>().unwrap();
                        match t.first_token_progress.load(Ordering::SeqCst) {
                            1 => progress.not_sent(),
                            2 => progress.sent(),
                            _ => {}
                        }
                        std::future::pending::<()>().await;
                    }
                    *r.body_mut() = Full::new(Bytes::from_static(b"{\"access_token\":\"at\"}"));
                }
                _ => {}
            }
            Ok::<_, Infallible>(r)
        }
    });
    BoxCloneSyncService::new(
        tower::ServiceBuilder::new()
            .layer(PkceLayer::strict())
            .service(inner),
    )
}

#[tokio::test]
async fn encoded_handle_on_another_path_is_bound() {
    let t = Tricky::default();
    let svc = tricky_service(t.clone());
    let first = send(
        &svc,
        get(&format!("/authorize?{}", pkce_query(&[("state", "mine")]))),
    )
    .await;
    assert_eq!(first.location(), Some("/resume"));
    let answer = send(&svc, get("/resume")).await;
    assert_eq!(
        answer.location(),
        Some("https://client.example/cb?code=C1&state=mine")
    );
}

/// A token request dropped while the first one hangs: its binding comes
/// back only when the service said nothing of it reached the upstream
/// (invariant I6); otherwise the upstream may have redeemed it.
async fn cancelled_token_request(progress: u8) -> (Answer, usize) {
    let t = Tricky::default();
    t.first_token_progress.store(progress, Ordering::SeqCst);
    let svc = tricky_service(t.clone());
    send(&svc, get(&format!("/authorize?{}", pkce_query(&[])))).await;
    let (code, _) = delivered(&send(&svc, get("/resume")).await).unwrap();
    let hung = tokio::time::timeout(
        Duration::from_millis(100),
        send(&svc, token_request(&code, "client-a", Some(RFC_VERIFIER))),
    )
    .await;
    assert!(hung.is_err(), "the first token request should hang");
    // A restore runs on the runtime after the drop.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let retry = send(&svc, token_request(&code, "client-a", Some(RFC_VERIFIER))).await;
    (retry, t.token_calls.load(Ordering::SeqCst))
}

#[tokio::test]
async fn a_token_request_cancelled_before_it_was_sent_keeps_the_code() {
    let (retry, calls) = cancelled_token_request(1).await;
    assert_eq!(retry.status, StatusCode::OK, "{retry:?}");
    assert_eq!(calls, 2);
}

#[tokio::test]
async fn a_token_request_cancelled_after_it_may_have_been_sent_spends_the_code() {
    for progress in [0, 2] {
        let (retry, calls) = cancelled_token_request(progress).await;
        assert_eq!(
            retry.rejection,
            Some(Rejection::CodeSpent),
            "{progress}: {retry:?}"
        );
        assert_eq!(calls, 1, "{progress}: the code went upstream once");
    }
}

#[tokio::test]
async fn accept_encoding_is_narrowed_to_what_can_be_decoded() {
    let t = Tricky::default();
    let svc = tricky_service(t.clone());
    for (sent, seen) in [
        ("gzip, deflate, br, zstd", Some("gzip, deflate, br")),
        ("zstd", Some("identity")),
        ("gzip;q=1.0, *;q=0.1", Some("gzip;q=1.0")),
        ("gzip, br", Some("gzip, br")),
    ] {
        let req = Request::builder()
            .method(Method::GET)
            .uri("/page")
            .header(header::ACCEPT_ENCODING, sent)
            .body(Full::new(Bytes::new()))
            .unwrap();
        send(&svc, req).await;
        assert_eq!(t.accept_encoding.lock().unwrap().as_deref(), seen, "{sent}");
    }
}

/// How the upstream of [`answering_token`] fails the first token request.
#[derive(Clone, Copy, Debug)]
enum FirstToken {
    /// A 502 that the service made itself, before sending anything.
    GatewayUnsent,
    /// A 504 that the service made itself after sending.
    GatewayUnanswered,
    /// A 503 from the upstream itself, with no progress reported.
    Upstream503,
}

/// The strict layer over a service that issues code `C1` at `/authorize`
/// and fails the first token request as `first` says, then answers 200.
fn answering_token(first: FirstToken, calls: Arc<AtomicUsize>) -> Service {
    let inner = tower::service_fn(move |req: Request<RequestBody<Body>>| {
        let calls = calls.clone();
        async move {
            let mut r = Response::new(Full::new(Bytes::new()));
            if req.uri().path() == "/authorize" {
                let params = tests::parse_form(req.uri().query().unwrap_or(""));
                let state = &params.iter().find(|(n, _)| n == "state").unwrap().1;
                *r.status_mut() = StatusCode::FOUND;
                r.headers_mut().insert(
                    header::LOCATION,
                    format!("https://client.example/cb?code=C1&state={state}")
                        .parse()
                        .unwrap(),
                );
                return Ok(r);
            }
            if calls.fetch_add(1, Ordering::SeqCst) > 0 {
                return Ok(r);
            }
            let progress = req.extensions().get::<ForwardProgress>().unwrap();
            *r.status_mut() = match first {
                FirstToken::GatewayUnsent => {
                    progress.not_sent();
                    StatusCode::BAD_GATEWAY
                }
                FirstToken::GatewayUnanswered => {
                    progress.not_sent();
                    progress.sent();
                    progress.unanswered();
                    StatusCode::GATEWAY_TIMEOUT
                }
                FirstToken::Upstream503 => StatusCode::SERVICE_UNAVAILABLE,
            };
            Ok(r)
        }
    });
    BoxCloneSyncService::new(
        tower::ServiceBuilder::new()
            .layer(PkceLayer::strict())
            .service(inner),
    )
}

/// Invariant I6: a binding comes back only when the upstream certainly did
/// not redeem its code.
#[tokio::test]
async fn a_binding_is_restored_only_when_the_upstream_certainly_did_not_redeem() {
    for (first, restored) in [
        (FirstToken::GatewayUnsent, true),
        (FirstToken::Upstream503, true),
        (FirstToken::GatewayUnanswered, false),
    ] {
        let calls = Arc::new(AtomicUsize::new(0));
        let svc = answering_token(first, calls.clone());
        let (code, _) =
            delivered(&send(&svc, get(&format!("/authorize?{}", pkce_query(&[])))).await).unwrap();
        assert_eq!(code, "C1");
        let failed = send(&svc, token_request(&code, "client-a", Some(RFC_VERIFIER))).await;
        assert!(failed.status.is_server_error(), "{first:?}: {failed:?}");
        let retry = send(&svc, token_request(&code, "client-a", Some(RFC_VERIFIER))).await;
        if restored {
            assert_eq!(retry.status, StatusCode::OK, "{first:?}: {retry:?}");
            assert_eq!(calls.load(Ordering::SeqCst), 2, "{first:?}");
        } else {
            assert_eq!(retry.rejection, Some(Rejection::CodeSpent), "{first:?}");
            assert_eq!(calls.load(Ordering::SeqCst), 1, "{first:?}");
        }
    }
}

#[tokio::test]
async fn a_binding_stays_spent_when_the_service_fails() {
    use tower::ServiceExt;
    let calls = Arc::new(AtomicUsize::new(0));
    let inner_calls = calls.clone();
    let inner = tower::service_fn(move |req: Request<RequestBody<Body>>| {
        let calls = inner_calls.clone();
        async move {
            if req.uri().path() == "/authorize" {
                let params = tests::parse_form(req.uri().query().unwrap_or(""));
                let state = &params.iter().find(|(n, _)| n == "state").unwrap().1;
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = StatusCode::FOUND;
                r.headers_mut().insert(
                    header::LOCATION,
                    format!("https://client.example/cb?code=C1&state={state}")
                        .parse()
                        .unwrap(),
                );
                return Ok(r);
            }
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err(std::io::Error::other("connection lost"));
            }
            Ok(Response::new(Full::new(Bytes::new())))
        }
    });
    let svc = tower::ServiceBuilder::new()
        .layer(PkceLayer::strict())
        .service(inner);
    let first = svc
        .clone()
        .oneshot(get(&format!("/authorize?{}", pkce_query(&[]))))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::FOUND);
    let failed = svc
        .clone()
        .oneshot(token_request("C1", "client-a", Some(RFC_VERIFIER)))
        .await;
    assert!(failed.is_err());
    let retry = svc
        .oneshot(token_request("C1", "client-a", Some(RFC_VERIFIER)))
        .await
        .unwrap();
    assert_eq!(
        retry.extensions().get::<Rejection>(),
        Some(&Rejection::CodeSpent)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// A checked body is forwarded with every byte outside visible ASCII
/// percent-encoded: the same parameters for the upstream, and no line for
/// a server that leaves the body unread and reads on (invariant I1).
#[tokio::test]
async fn checked_bodies_are_forwarded_inert() {
    let (server, svc, code) = bound_code(PkceLayer::strict()).await;
    let body = format!(
        "grant_type=authorization_code&code={code}&code_verifier={RFC_VERIFIER}&client_id=client-a&junk=\r\n\r\nPOST /token HTTP/1.1\r\nx: caf\u{e9}"
    );
    let ok = send(
        &svc,
        post_with("application/x-www-form-urlencoded", None, body),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
    let seen = server
        .state
        .last_token_body
        .lock()
        .unwrap()
        .clone()
        .unwrap();
    assert!(seen.bytes().all(|b| b.is_ascii_graphic()), "{seen:?}");
    assert!(
        seen.ends_with("&junk=%0D%0A%0D%0APOST%20/token%20HTTP/1.1%0D%0Ax:%20caf%C3%A9"),
        "{seen}"
    );
}
