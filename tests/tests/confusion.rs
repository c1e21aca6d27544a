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
    Body, Flavor, LegacyServer, Service, delivered, form, get, post_form, send, token_request, walk,
};
use tower::util::BoxCloneSyncService;
use tower_pkce::{PkceLayer, Rejection, RequestBody, Requirement};

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
    // Token parameters in the query, in any spelling.
    for query in ["Code=x", "grant.type=authorization_code", "a=1;code=x"] {
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

#[tokio::test]
async fn cancelled_token_request_keeps_the_code() {
    let t = Tricky::default();
    let svc = tricky_service(t.clone());
    send(&svc, get(&format!("/authorize?{}", pkce_query(&[])))).await;
    let (code, _) = delivered(&send(&svc, get("/resume")).await).unwrap();
    let hung = tokio::time::timeout(
        Duration::from_millis(100),
        send(&svc, token_request(&code, "client-a", Some(RFC_VERIFIER))),
    )
    .await;
    assert!(hung.is_err(), "the first token request should hang");
    // The restore runs on the runtime after the drop.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let retry = send(&svc, token_request(&code, "client-a", Some(RFC_VERIFIER))).await;
    assert_eq!(retry.status, StatusCode::OK, "{retry:?}");
    assert_eq!(t.token_calls.load(Ordering::SeqCst), 2);
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
