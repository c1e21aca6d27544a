//! The rules around the flows: policy at the authorization endpoint, path
//! aliases and methods, client binding, downgrade, expiry, capacity, upstream
//! failure, metadata.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::Full;
use tests::{
    Answer, Flavor, LegacyServer, Unhinted, delivered, form, get, post_form, send, token_request,
    walk,
};
use tower_pkce::RequestBody;
use tower_pkce::store::{MemoryStore, Store};
use tower_pkce::{ChallengeMethod, CodeChallenge, CodeVerifier, PkceLayer, Rejection, Requirement};

const RFC_VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const RFC_CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

fn query(extra: &[(&str, &str)]) -> String {
    let mut pairs = vec![
        ("response_type", "code"),
        ("client_id", "client-a"),
        ("redirect_uri", "https://client.example/cb"),
    ];
    pairs.extend_from_slice(extra);
    form(&pairs)
}

fn pkce_query(state: Option<&str>) -> String {
    let mut extra = vec![
        ("code_challenge", RFC_CHALLENGE),
        ("code_challenge_method", "S256"),
    ];
    if let Some(s) = state {
        extra.push(("state", s));
    }
    query(&extra)
}

fn assert_authorize_rejected(answer: &Answer, rejection: Rejection) {
    assert_eq!(answer.rejection, Some(rejection), "{answer:?}");
    assert!(answer.location().is_none(), "an error must never redirect");
}

async fn code_via(
    server: &LegacyServer,
    svc: &tests::Service,
    state: Option<&str>,
) -> (String, Option<String>) {
    let answer = walk(svc, server.flavor, &pkce_query(state)).await;
    delivered(&answer).unwrap_or_else(|| panic!("no code: {answer:?}"))
}

#[tokio::test]
async fn authorization_policy() {
    let server = LegacyServer::new(Flavor::Direct);
    let svc = server.behind(PkceLayer::strict());
    let long = format!("{RFC_CHALLENGE}A");
    let padded = format!("{}=", &RFC_CHALLENGE[..42]);
    let cases: Vec<(Vec<(&str, &str)>, Rejection)> = vec![
        (vec![], Rejection::ChallengeRequired),
        (
            vec![("code_challenge", RFC_CHALLENGE)],
            Rejection::PlainNotAllowed,
        ),
        (
            vec![
                ("code_challenge", RFC_CHALLENGE),
                ("code_challenge_method", "plain"),
            ],
            Rejection::PlainNotAllowed,
        ),
        (
            vec![
                ("code_challenge", RFC_CHALLENGE),
                ("code_challenge_method", "S512"),
            ],
            Rejection::UnknownMethod,
        ),
        (
            vec![
                ("code_challenge", &RFC_CHALLENGE[..42]),
                ("code_challenge_method", "S256"),
            ],
            Rejection::MalformedChallenge,
        ),
        (
            vec![("code_challenge", &long), ("code_challenge_method", "S256")],
            Rejection::MalformedChallenge,
        ),
        (
            vec![
                ("code_challenge", &padded),
                ("code_challenge_method", "S256"),
            ],
            Rejection::MalformedChallenge,
        ),
        (
            vec![("code_challenge_method", "S256")],
            Rejection::MethodWithoutChallenge,
        ),
        (
            vec![("request_uri", "urn:ietf:params:oauth:request_uri:x")],
            Rejection::RequestObjectUnsupported,
        ),
        (
            vec![("request", "eyJ.eyJ.sig")],
            Rejection::RequestObjectUnsupported,
        ),
    ];
    for (extra, rejection) in cases {
        let answer = send(&svc, get(&format!("/authorize?{}", query(&extra)))).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{extra:?}");
        assert_authorize_rejected(&answer, rejection);
        assert!(answer.body.contains("<html"), "a page for browsers");
    }
    // No client_id.
    let answer = send(
        &svc,
        get(&format!(
            "/authorize?code_challenge={RFC_CHALLENGE}&code_challenge_method=S256"
        )),
    )
    .await;
    assert_authorize_rejected(&answer, Rejection::MissingClientId);
    assert_eq!(server.state.authorize_requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn malformed_and_repeated_parameters() {
    let server = LegacyServer::new(Flavor::Direct);
    let svc = server.behind(PkceLayer::strict());
    let base = pkce_query(Some("s"));
    for bad in [
        format!("{base}&state=again"),
        format!("{base}&code_challenge={RFC_CHALLENGE}"),
        format!("{base}&code_challenge_method=S256"),
        format!("{base}&st%61te=again"),
        format!("{base}&x=%zz"),
        format!("{base}&x=%e9"),
        format!("{base}&x=%"),
    ] {
        let answer = send(&svc, get(&format!("/authorize?{bad}"))).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(
            matches!(
                answer.rejection,
                Some(Rejection::RepeatedParameter(_) | Rejection::MalformedParameters)
            ),
            "{bad}: {answer:?}"
        );
    }
    assert_eq!(server.state.authorize_requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn json_error_when_asked() {
    let svc = LegacyServer::new(Flavor::Direct).behind(PkceLayer::strict());
    let req = Request::get(format!("/authorize?{}", query(&[])))
        .header(header::ACCEPT, "application/json")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = send(&svc, req).await;
    assert_eq!(answer.error().as_deref(), Some("invalid_request"));
}

#[tokio::test]
async fn authorization_path_aliases_and_methods_are_checked() {
    let server = LegacyServer::new(Flavor::Direct);
    let svc = server.behind(PkceLayer::strict());
    let q = query(&[]);
    for path in [
        "/authorize",
        "/authorize/",
        "/AUTHORIZE",
        "/Authorize",
        "//authorize",
        "/%61uthorize",
        "/%2Fauthorize",
        "/x/../authorize",
        "/./authorize",
        "/authorize;jsessionid=1",
    ] {
        for method in [Method::GET, Method::HEAD, Method::OPTIONS, Method::DELETE] {
            let req = Request::builder()
                .method(method.clone())
                .uri(format!("{path}?{q}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let answer = send(&svc, req).await;
            assert_eq!(
                answer.rejection,
                Some(Rejection::ChallengeRequired),
                "{method} {path}"
            );
        }
        // POST with the parameters in the body.
        let answer = send(&svc, post_form(path, &q)).await;
        assert_eq!(
            answer.rejection,
            Some(Rejection::ChallengeRequired),
            "POST {path}"
        );
    }
    assert_eq!(server.state.authorize_requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn head_request_code_is_bound_too() {
    let server = LegacyServer::new(Flavor::Direct);
    let svc = server.behind(PkceLayer::strict());
    let req = Request::head(format!("/authorize?{}", pkce_query(Some("s"))))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = send(&svc, req).await;
    let (code, state) = delivered(&answer).unwrap();
    assert_eq!(state.as_deref(), Some("s"));
    let ok = send(&svc, token_request(&code, "client-a", Some(RFC_VERIFIER))).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
}

#[tokio::test]
async fn token_path_aliases_and_methods() {
    let server = LegacyServer::new(Flavor::Direct);
    // Every alias below makes one failed attempt on the same code.
    let svc = server.behind(PkceLayer::strict().max_failed_attempts(20).unwrap());
    let (code, _) = code_via(&server, &svc, None).await;
    let body = form(&[
        ("grant_type", "authorization_code"),
        ("code", &code),
        ("client_id", "client-a"),
    ]);
    for path in [
        "/token/",
        "/TOKEN",
        "/Token",
        "//token",
        "/%74oken",
        "/%2574oken",
        "/%252574oken",
        "/%2Ftoken",
        "/a/../token",
        "/token;x=1",
    ] {
        let answer = send(&svc, post_form(path, &body)).await;
        assert_eq!(answer.rejection, Some(Rejection::VerifierMissing), "{path}");
    }
    for method in [
        Method::GET,
        Method::HEAD,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
    ] {
        let req = Request::builder()
            .method(method.clone())
            .uri(format!("/token?{body}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let answer = send(&svc, req).await;
        assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(answer.rejection, Some(Rejection::MethodNotAllowed));
    }
    // Encoded once more than endpoints are matched on: refused for every
    // method and endpoint, since a server that decodes again could read
    // it as any of them.
    for path in ["/%25252574oken", "/%2525252Fauthorize", "/x/%25252525"] {
        let answer = send(&svc, post_form(path, &body)).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(
            answer.rejection,
            Some(Rejection::PathEncodedTooDeep),
            "{path}"
        );
    }
    // Token parameters in the query string of a POST.
    let answer = send(
        &svc,
        post_form(
            &format!("/token?code={code}"),
            "grant_type=authorization_code",
        ),
    )
    .await;
    assert_eq!(answer.rejection, Some(Rejection::TokenParametersInQuery));
    // OPTIONS passes through for CORS preflight.
    let req = Request::options("/token")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = send(&svc, req).await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    assert_eq!(answer.rejection, None);
    assert_eq!(server.token_requests(), 0);
    // The code still works with its verifier.
    let ok = send(&svc, token_request(&code, "client-a", Some(RFC_VERIFIER))).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
}

#[tokio::test]
async fn token_body_rules() {
    let server = LegacyServer::new(Flavor::Direct);
    let svc = server.behind(PkceLayer::strict().max_token_body(1024));
    let (code, _) = code_via(&server, &svc, None).await;
    let big = format!(
        "grant_type=authorization_code&code={code}&pad={}",
        "x".repeat(2048)
    );
    let answer = send(&svc, post_form("/token", &big)).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer.error().as_deref(), Some("invalid_request"));

    let json = Request::post("/token")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    assert_eq!(
        send(&svc, json).await.rejection,
        Some(Rejection::UnsupportedMediaType)
    );

    let repeated = format!(
        "grant_type=authorization_code&code={code}&code=other&code_verifier={RFC_VERIFIER}"
    );
    assert_eq!(
        send(&svc, post_form("/token", &repeated)).await.rejection,
        Some(Rejection::RepeatedParameter("code"))
    );
    let charset = Request::post("/token")
        .header(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded; charset=UTF-8",
        )
        .body(Full::new(Bytes::from(form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("client_id", "client-a"),
            ("code_verifier", RFC_VERIFIER),
        ]))))
        .unwrap();
    let ok = send(&svc, charset).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
    assert_eq!(server.token_requests(), 1);
}

#[tokio::test]
async fn other_grants_pass_untouched() {
    let server = LegacyServer::new(Flavor::Direct);
    let svc = server.behind(PkceLayer::strict());
    let answer = send(
        &svc,
        post_form("/token", "grant_type=refresh_token&refresh_token=rt"),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        server.state.last_token_body.lock().unwrap().as_deref(),
        Some("grant_type=refresh_token&refresh_token=rt")
    );
}

#[tokio::test]
async fn unbound_code_refused_when_required() {
    let server = LegacyServer::new(Flavor::Direct);
    let svc = server.behind(PkceLayer::strict());
    let answer = send(
        &svc,
        token_request("never-bound", "client-a", Some(RFC_VERIFIER)),
    )
    .await;
    assert_eq!(answer.rejection, Some(Rejection::UnboundCode));
    assert_eq!(server.token_requests(), 0);
}

#[tokio::test]
async fn client_binding() {
    let server = LegacyServer::new(Flavor::Direct);
    let svc = server.behind(PkceLayer::strict());

    // Body client_id of another client.
    let (code, _) = code_via(&server, &svc, None).await;
    let answer = send(&svc, token_request(&code, "client-b", Some(RFC_VERIFIER))).await;
    assert_eq!(answer.rejection, Some(Rejection::ClientMismatch));
    // The failure left the requirement in place; the real client succeeds.
    let ok = send(&svc, token_request(&code, "client-a", Some(RFC_VERIFIER))).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");

    // HTTP Basic, form-encoded user (RFC 6749 §2.3.1).
    let (code, _) = code_via(&server, &svc, None).await;
    let body = form(&[
        ("grant_type", "authorization_code"),
        ("code", &code),
        ("code_verifier", RFC_VERIFIER),
    ]);
    let basic = |user: &str| {
        Request::post("/token")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(
                header::AUTHORIZATION,
                format!("Basic {}", STANDARD.encode(format!("{user}:secret"))),
            )
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap()
    };
    assert_eq!(
        send(&svc, basic("client-b")).await.rejection,
        Some(Rejection::ClientMismatch)
    );
    // Basic and a body client_id that disagree.
    let both = Request::post("/token")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(
            header::AUTHORIZATION,
            format!("Basic {}", STANDARD.encode("client-b:secret")),
        )
        .body(Full::new(Bytes::from(format!("{body}&client_id=client-a"))))
        .unwrap();
    assert_eq!(
        send(&svc, both).await.rejection,
        Some(Rejection::ConflictingClient)
    );
    let ok = send(&svc, basic("client%2Da")).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");

    // client_assertion (private_key_jwt): the sub claim names the client.
    let (code, _) = code_via(&server, &svc, None).await;
    let assertion = |sub: &str| {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256"}"#);
        let claims =
            URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"{sub}","iss":"{sub}","aud":"x"}}"#));
        format!("{header}.{claims}.c2lnbmF0dXJl")
    };
    let with_assertion = |sub: &str| {
        post_form(
            "/token",
            &form(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("code_verifier", RFC_VERIFIER),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", &assertion(sub)),
            ]),
        )
    };
    assert_eq!(
        send(&svc, with_assertion("client-b")).await.rejection,
        Some(Rejection::ClientMismatch)
    );
    let garbage = post_form(
        "/token",
        &form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("client_assertion", "not-a-jwt"),
        ]),
    );
    assert_eq!(
        send(&svc, garbage).await.rejection,
        Some(Rejection::MalformedClientAssertion)
    );
    let ok = send(&svc, with_assertion("client-a")).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
    assert_eq!(server.token_requests(), 3);
}

#[tokio::test]
async fn redirect_uri_binding() {
    let server = LegacyServer::new(Flavor::Direct);
    let svc = server.behind(PkceLayer::strict());
    let (code, _) = code_via(&server, &svc, None).await;
    let other = post_form(
        "/token",
        &form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("client_id", "client-a"),
            ("redirect_uri", "https://evil.example/cb"),
            ("code_verifier", RFC_VERIFIER),
        ]),
    );
    assert_eq!(
        send(&svc, other).await.rejection,
        Some(Rejection::RedirectUriMismatch)
    );
    let ok = send(&svc, token_request(&code, "client-a", Some(RFC_VERIFIER))).await;
    assert_eq!(ok.status, StatusCode::OK);
}

#[tokio::test]
async fn failed_attempts_burn_the_code_but_never_lift_the_requirement() {
    let server = LegacyServer::new(Flavor::Direct);
    let svc = server.behind(PkceLayer::strict().max_failed_attempts(3).unwrap());
    let (code, _) = code_via(&server, &svc, None).await;
    for _ in 0..3 {
        let wrong = CodeVerifier::generate();
        let answer = send(&svc, token_request(&code, "client-a", Some(wrong.secret()))).await;
        assert_eq!(answer.rejection, Some(Rejection::VerifierMismatch));
    }
    // Burned: even the right verifier is refused now, and never forwarded.
    let answer = send(&svc, token_request(&code, "client-a", Some(RFC_VERIFIER))).await;
    assert_eq!(answer.rejection, Some(Rejection::CodeSpent));
    let answer = send(&svc, token_request(&code, "client-a", None)).await;
    assert_eq!(answer.rejection, Some(Rejection::CodeSpent));
    assert_eq!(server.token_requests(), 0);
}

#[tokio::test]
async fn optional_mode_and_downgrade() {
    let server = LegacyServer::new(Flavor::Direct);
    let svc = server.behind(PkceLayer::strict().requirement(Requirement::Optional));

    // A client without PKCE gets its code, and redeems it without a verifier.
    let answer = walk(&svc, Flavor::Direct, &query(&[("state", "s1")])).await;
    let (code, state) = delivered(&answer).unwrap();
    assert_eq!(state.as_deref(), Some("s1"));
    // Downgrade (RFC 9700 §4.8.2): a verifier for a code issued without a challenge.
    let answer = send(&svc, token_request(&code, "client-a", Some(RFC_VERIFIER))).await;
    assert_eq!(answer.rejection, Some(Rejection::Downgrade));
    assert_eq!(server.token_requests(), 0);
    let ok = send(&svc, token_request(&code, "client-a", None)).await;
    assert_eq!(ok.status, StatusCode::OK);

    // A code issued with a challenge still needs its verifier.
    let (code, _) = code_via(&server, &svc, None).await;
    let answer = send(&svc, token_request(&code, "client-a", None)).await;
    assert_eq!(answer.rejection, Some(Rejection::VerifierMissing));
    // A spent code is refused, not forwarded as "unbound".
    let ok = send(&svc, token_request(&code, "client-a", Some(RFC_VERIFIER))).await;
    assert_eq!(ok.status, StatusCode::OK);
    let replay = send(&svc, token_request(&code, "client-a", None)).await;
    assert_eq!(replay.rejection, Some(Rejection::CodeSpent));
    assert_eq!(server.token_requests(), 2);
}

#[tokio::test]
async fn per_client_requirement() {
    let server = LegacyServer::new(Flavor::Direct);
    let layer = PkceLayer::strict().client_requirement("legacy", Requirement::Optional);
    let svc = server.behind(layer);
    let legacy = form(&[("response_type", "code"), ("client_id", "legacy")]);
    let answer = send(&svc, get(&format!("/authorize?{legacy}"))).await;
    assert!(delivered(&answer).is_some(), "{answer:?}");
    let answer = send(&svc, get(&format!("/authorize?{}", query(&[])))).await;
    assert_eq!(answer.rejection, Some(Rejection::ChallengeRequired));
}

#[tokio::test]
async fn client_without_state_gets_none_back() {
    for (flavor, mode) in [
        (Flavor::Direct, None),
        (Flavor::LoginPage, Some("form_post")),
        (Flavor::Direct, Some("fragment")),
    ] {
        let server = LegacyServer::new(flavor);
        let svc = server.behind(PkceLayer::strict());
        let mut extra = vec![
            ("code_challenge", RFC_CHALLENGE),
            ("code_challenge_method", "S256"),
        ];
        if let Some(m) = mode {
            extra.push(("response_mode", m));
        }
        let answer = walk(&svc, flavor, &query(&extra)).await;
        let (code, state) = delivered(&answer).unwrap();
        assert_eq!(
            state, None,
            "{mode:?}: the state the layer added must not reach the client"
        );
        assert!(
            !answer.body.contains("pkce.") && !answer.location().unwrap_or("").contains("pkce.")
        );
        let ok = send(&svc, token_request(&code, "client-a", Some(RFC_VERIFIER))).await;
        assert_eq!(ok.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn location_rewritten_byte_for_byte_except_state() {
    let server = LegacyServer::new(Flavor::Direct);
    let svc = server.behind(PkceLayer::strict());
    let answer = walk(&svc, Flavor::Direct, &pkce_query(Some("abc"))).await;
    let location = answer.location().unwrap();
    let code = delivered(&answer).unwrap().0;
    assert_eq!(
        location,
        format!("https://client.example/cb?code={code}&state=abc&iss=https%3A%2F%2Fas.example")
    );
}

#[tokio::test]
async fn upstream_sees_handle_not_client_state() {
    let server = LegacyServer::new(Flavor::Direct);
    let svc = server.behind(PkceLayer::strict());
    let _ = code_via(&server, &svc, Some("client-secret-state")).await;
    let params = server.state.last_authorize_params.lock().unwrap().clone();
    let state = params
        .iter()
        .find(|(n, _)| n == "state")
        .map(|(_, v)| v.clone())
        .unwrap();
    assert!(state.starts_with("pkce."), "{state}");
    assert!(
        params
            .iter()
            .any(|(n, v)| n == "code_challenge" && v == RFC_CHALLENGE)
    );
}

#[tokio::test]
async fn strip_pkce_params() {
    let server = LegacyServer::new(Flavor::Direct);
    let svc = server.behind(PkceLayer::strict().strip_pkce_params(true));
    let (code, _) = code_via(&server, &svc, Some("s")).await;
    let params = server.state.last_authorize_params.lock().unwrap().clone();
    assert!(
        !params.iter().any(|(n, _)| n.starts_with("code_challenge")),
        "{params:?}"
    );
    let ok = send(&svc, token_request(&code, "client-a", Some(RFC_VERIFIER))).await;
    assert_eq!(ok.status, StatusCode::OK);
    let seen = server
        .state
        .last_token_body
        .lock()
        .unwrap()
        .clone()
        .unwrap();
    assert!(!seen.contains("code_verifier"), "{seen}");
}

#[tokio::test]
async fn unknown_handle_continuation_gets_took_too_long_page() {
    let server = LegacyServer::new(Flavor::Consent);
    let svc = server.behind(PkceLayer::strict());
    let forged = format!(
        "/authorize?{}",
        query(&[("state", "pkce.AAAAAAAAAAAAAAAAAAAAAA")])
    );
    let answer = send(&svc, get(&forged)).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.rejection, Some(Rejection::TransactionExpired));
    assert!(answer.body.contains("took too long"), "{}", answer.body);
    assert_eq!(server.state.authorize_requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn transaction_expires_before_the_code() {
    let server = LegacyServer::new(Flavor::LoginPage);
    let svc = server.behind(PkceLayer::strict().ttl(Duration::from_millis(200)).unwrap());
    let first = send(&svc, get(&format!("/authorize?{}", pkce_query(Some("s"))))).await;
    assert_eq!(first.status, StatusCode::OK);
    let txn = tests::hidden_field(&first.body, "txn").unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let answer = send(&svc, post_form("/login", &form(&[("txn", &txn)]))).await;
    assert_eq!(answer.rejection, Some(Rejection::TransactionExpired));
    assert!(
        answer.location().is_none(),
        "the unredeemable code must not reach the client"
    );
}

#[tokio::test]
async fn binding_expires() {
    let server = LegacyServer::new(Flavor::Direct);
    let svc = server.behind(PkceLayer::strict().ttl(Duration::from_millis(200)).unwrap());
    let (code, _) = code_via(&server, &svc, None).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let answer = send(&svc, token_request(&code, "client-a", Some(RFC_VERIFIER))).await;
    assert_eq!(answer.rejection, Some(Rejection::CodeExpired));
    assert_eq!(server.token_requests(), 0);
}

/// Invariant I2b: in optional mode, a code once bound to a challenge never
/// becomes redeemable without its verifier, even after its binding expired.
#[tokio::test]
async fn an_expired_binding_still_needs_its_verifier_in_optional_mode() {
    let server = LegacyServer::new(Flavor::Direct);
    let svc = server.behind(
        PkceLayer::strict()
            .requirement(Requirement::Optional)
            .ttl(Duration::from_millis(200))
            .unwrap(),
    );
    let (code, _) = code_via(&server, &svc, None).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    for verifier in [
        None,
        Some("wrong-verifier-of-the-right-length-0123456789abc"),
    ] {
        let answer = send(&svc, token_request(&code, "client-a", verifier)).await;
        assert_eq!(
            answer.rejection,
            Some(Rejection::CodeExpired),
            "{verifier:?}"
        );
    }
    assert_eq!(server.token_requests(), 0);
}

/// At capacity, a new authorization takes the room of the oldest pending
/// one, whose user is told the sign-in took too long; a bound code is
/// never evicted, and a store whose room is all bound codes refuses.
#[tokio::test]
async fn capacity_evicts_the_oldest_pending_authorization_and_never_a_bound_code() {
    let server = LegacyServer::new(Flavor::LoginPage);
    let svc = server.behind(PkceLayer::strict().capacity(2));
    let mut txns = Vec::new();
    for _ in 0..2 {
        let page = send(&svc, get(&format!("/authorize?{}", pkce_query(Some("s"))))).await;
        txns.push(tests::hidden_field(&page.body, "txn").unwrap());
        // The store orders pending records by their expiry, to 1/16 s.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let third = send(&svc, get(&format!("/authorize?{}", pkce_query(Some("s"))))).await;
    assert_eq!(third.status, StatusCode::OK, "{third:?}");
    let third = tests::hidden_field(&third.body, "txn").unwrap();
    let evicted = send(&svc, post_form("/login", &form(&[("txn", &txns[0])]))).await;
    assert_eq!(evicted.rejection, Some(Rejection::TransactionExpired));
    assert!(delivered(&evicted).is_none());
    // The others complete; their codes are bound and hold the room.
    let mut codes = Vec::new();
    for txn in [&txns[1], &third] {
        let answer = send(&svc, post_form("/login", &form(&[("txn", txn)]))).await;
        codes.push(delivered(&answer).unwrap().0);
    }
    let full = send(&svc, get(&format!("/authorize?{}", pkce_query(Some("s"))))).await;
    assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(full.rejection, Some(Rejection::StoreFull));
    assert_eq!(
        tower_pkce::Rejection::StoreFull.error_code(),
        "temporarily_unavailable"
    );
    for code in codes {
        let ok = send(&svc, token_request(&code, "client-a", Some(RFC_VERIFIER))).await;
        assert_eq!(ok.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn a_code_on_the_authorize_answer_is_bound_without_a_pending_record() {
    let store = MemoryStore::new();
    let server = LegacyServer::new(Flavor::Direct);
    let svc = server.behind(PkceLayer::strict().store(store.clone()));
    let (code, state) = code_via(&server, &svc, Some("s")).await;
    assert_eq!(state.as_deref(), Some("s"));
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.bindings), (0, 1), "{stats:?}");
    let wrong = send(
        &svc,
        token_request(&code, "client-a", Some(&"x".repeat(43))),
    )
    .await;
    assert_eq!(wrong.rejection, Some(Rejection::VerifierMismatch));
    let ok = send(&svc, token_request(&code, "client-a", Some(RFC_VERIFIER))).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
}

#[tokio::test]
async fn a_login_page_is_answered_only_once_its_transaction_is_recorded() {
    let store = MemoryStore::new();
    let server = LegacyServer::new(Flavor::LoginPage);
    let svc = server.behind(PkceLayer::strict().store(store.clone()));
    let page = send(&svc, get(&format!("/authorize?{}", pkce_query(Some("s"))))).await;
    assert_eq!(page.status, StatusCode::OK);
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.bindings), (1, 0), "{stats:?}");
    let txn = tests::hidden_field(&page.body, "txn").unwrap();
    let answer = send(&svc, post_form("/login", &form(&[("txn", &txn)]))).await;
    let (code, state) = delivered(&answer).unwrap();
    assert_eq!(state.as_deref(), Some("s"));
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.bindings), (0, 1), "{stats:?}");
    let ok = send(&svc, token_request(&code, "client-a", Some(RFC_VERIFIER))).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
}

#[tokio::test]
async fn a_full_store_refuses_before_the_upstream_sees_the_request() {
    let server = LegacyServer::new(Flavor::Direct);
    let svc = server.behind(PkceLayer::strict().capacity(1));
    let (code, _) = code_via(&server, &svc, None).await;
    let full = send(&svc, get(&format!("/authorize?{}", pkce_query(Some("s"))))).await;
    assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(full.rejection, Some(Rejection::StoreFull));
    assert_eq!(server.state.authorize_requests.load(Ordering::SeqCst), 1);
    let ok = send(&svc, token_request(&code, "client-a", Some(RFC_VERIFIER))).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
}

/// A store that finds out it is full only when written to (as Redis does):
/// the refusal comes after the upstream's answer, and neither the code it
/// issued nor its login page reaches the client.
#[tokio::test]
async fn a_store_found_full_after_the_answer_withholds_it() {
    for flavor in [Flavor::Direct, Flavor::LoginPage] {
        let server = LegacyServer::new(flavor);
        let store = Unhinted::new(MemoryStore::builder().capacity(1).build());
        let svc = server.behind(PkceLayer::strict().store(store.clone()));
        // A bound code holds the one room: it is never evicted.
        code_via(&server, &svc, Some("s")).await;
        let before = server.state.authorize_requests.load(Ordering::SeqCst);
        let full = send(&svc, get(&format!("/authorize?{}", pkce_query(Some("s"))))).await;
        assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE, "{flavor:?}");
        assert_eq!(full.rejection, Some(Rejection::StoreFull), "{flavor:?}");
        assert!(full.location().is_none(), "{flavor:?}: {full:?}");
        assert!(!full.body.contains("txn"), "{flavor:?}: {}", full.body);
        assert_eq!(
            server.state.authorize_requests.load(Ordering::SeqCst),
            before + 1
        );
        let stats = store.stats().await.unwrap();
        assert_eq!(stats.pending + stats.bindings, 1, "{flavor:?}: {stats:?}");
    }
}

/// A backend that fails when the upstream has answered: the client gets
/// 503, and neither the code nor the login page.
#[tokio::test]
async fn a_store_failing_after_the_answer_withholds_it() {
    for flavor in [Flavor::Direct, Flavor::LoginPage] {
        let server = LegacyServer::new(flavor);
        let store = Unhinted::new(MemoryStore::new());
        let svc = server.behind(PkceLayer::strict().store(store.clone()));
        store.unavailable.store(true, Ordering::SeqCst);
        let answer = send(&svc, get(&format!("/authorize?{}", pkce_query(Some("s"))))).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{flavor:?}");
        assert_eq!(
            answer.rejection,
            Some(Rejection::StoreUnavailable),
            "{flavor:?}"
        );
        assert!(answer.location().is_none(), "{flavor:?}: {answer:?}");
        assert!(!answer.body.contains("txn"), "{flavor:?}: {}", answer.body);
        assert_eq!(server.state.authorize_requests.load(Ordering::SeqCst), 1);
        let stats = store.stats().await.unwrap();
        assert_eq!(stats.pending + stats.bindings, 0, "{flavor:?}: {stats:?}");
        // Back: the same request goes through.
        store.unavailable.store(false, Ordering::SeqCst);
        let answer = send(&svc, get(&format!("/authorize?{}", pkce_query(Some("s"))))).await;
        assert!(answer.rejection.is_none(), "{flavor:?}: {answer:?}");
    }
}

/// The strict layer over an upstream that answers every request with a
/// 302 to `location(state)`, given the `state` it was sent, encoded.
fn redirecting(store: MemoryStore, location: fn(&str) -> String) -> tests::Service {
    let upstream = tower::service_fn(move |req: Request<RequestBody<Full<Bytes>>>| async move {
        let params = tests::parse_form(req.uri().query().unwrap_or_default());
        let state = params.iter().find(|(n, _)| n == "state").unwrap();
        let location = location(&tests::encode(&state.1));
        Ok::<_, std::convert::Infallible>(
            http::Response::builder()
                .status(StatusCode::FOUND)
                .header(
                    header::LOCATION,
                    http::HeaderValue::from_bytes(location.as_bytes()).unwrap(),
                )
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
    });
    tower::util::BoxCloneSyncService::new(
        tower::ServiceBuilder::new()
            .layer(PkceLayer::strict().store(store))
            .service(upstream),
    )
}

#[tokio::test]
async fn an_error_on_the_authorize_answer_gets_its_state_back_and_stores_nothing() {
    let store = MemoryStore::new();
    let svc = redirecting(store.clone(), |state| {
        format!("https://client.example/cb?error=access_denied&state={state}&iss=x")
    });
    let answer = send(
        &svc,
        get(&format!("/authorize?{}", pkce_query(Some("s 1")))),
    )
    .await;
    assert_eq!(
        answer.location(),
        Some("https://client.example/cb?error=access_denied&state=s%201&iss=x"),
        "{answer:?}"
    );
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.bindings), (0, 0), "{stats:?}");
}

/// A `Location` may carry obs-text (RFC 9110 §5.5): raw UTF-8 or latin-1
/// in a path, from a server that does not percent-encode. Its code is bound
/// all the same (the target is the redirect_uri the client sent,
/// percent-encoded), and the rest of its bytes are kept.
#[tokio::test]
async fn a_location_with_raw_utf8_has_its_code_bound() {
    let store = MemoryStore::new();
    let svc = redirecting(store.clone(), |state| {
        format!("https://client.example/caf\u{e9}/cb?code=c-utf8&state={state}")
    });
    let query = form(&[
        ("response_type", "code"),
        ("client_id", "client-a"),
        ("redirect_uri", "https://client.example/caf\u{e9}/cb"),
        ("code_challenge", RFC_CHALLENGE),
        ("code_challenge_method", "S256"),
        ("state", "s 1"),
    ]);
    let answer = send(&svc, get(&format!("/authorize?{query}"))).await;
    assert_eq!(answer.status, StatusCode::FOUND, "{answer:?}");
    assert_eq!(
        answer.headers[header::LOCATION].as_bytes(),
        "https://client.example/caf\u{e9}/cb?code=c-utf8&state=s%201".as_bytes(),
        "{answer:?}"
    );
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.bindings), (0, 1), "{stats:?}");
}

#[tokio::test]
async fn binding_restored_after_upstream_502() {
    let server = LegacyServer::new(Flavor::Direct);
    let svc = server.behind(PkceLayer::strict());
    let (code, _) = code_via(&server, &svc, None).await;
    server.state.fail_next_tokens.store(1, Ordering::SeqCst);
    let failed = send(&svc, token_request(&code, "client-a", Some(RFC_VERIFIER))).await;
    assert_eq!(failed.status, StatusCode::BAD_GATEWAY);
    let retry = send(&svc, token_request(&code, "client-a", Some(RFC_VERIFIER))).await;
    assert_eq!(retry.status, StatusCode::OK, "{retry:?}");
    assert_eq!(server.token_requests(), 2);
}

#[tokio::test]
async fn metadata_is_truthful_on_any_prefix() {
    let server = LegacyServer::new(Flavor::Direct);
    let svc = server.behind(PkceLayer::strict());
    for path in [
        "/.well-known/openid-configuration",
        "/.well-known/openid-configuration/",
        "/tenant/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
        "/.well-known/oauth-authorization-server/tenant",
        "/.WELL-KNOWN/openid-configuration",
    ] {
        let answer = send(&svc, get(path)).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
        let json = answer.json();
        assert_eq!(
            json["code_challenge_methods_supported"],
            serde_json::json!(["S256"]),
            "{path}"
        );
        assert_eq!(json["issuer"], "https://as.example");
        assert!(json.get("pushed_authorization_request_endpoint").is_none());
        assert_eq!(
            answer
                .headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()),
            Some(answer.body.len().to_string().as_str())
        );
    }
    let plain = LegacyServer::new(Flavor::Direct).behind(PkceLayer::strict().allow_plain(true));
    let answer = send(&plain, get("/.well-known/openid-configuration")).await;
    assert_eq!(
        answer.json()["code_challenge_methods_supported"],
        serde_json::json!(["S256", "plain"])
    );
}

#[tokio::test]
async fn plain_when_allowed() {
    let server = LegacyServer::new(Flavor::Direct);
    let svc = server.behind(PkceLayer::strict().allow_plain(true));
    let verifier = CodeVerifier::generate();
    let challenge = CodeChallenge::from_verifier(&verifier, ChallengeMethod::Plain);
    // No method means plain (RFC 7636 §4.3).
    let answer = send(
        &svc,
        get(&format!(
            "/authorize?{}",
            query(&[("code_challenge", challenge.as_str())])
        )),
    )
    .await;
    let (code, _) = delivered(&answer).unwrap();
    let ok = send(
        &svc,
        token_request(&code, "client-a", Some(verifier.secret())),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
}

#[tokio::test]
async fn rejections_carry_cors_for_known_origins() {
    let server = LegacyServer::new(Flavor::Direct);
    let svc = server.behind(
        PkceLayer::strict()
            .allowed_origin("https://spa.example")
            .unwrap(),
    );
    let req = |origin: &str| {
        Request::post("/token")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ORIGIN, origin)
            .body(Full::new(Bytes::from(
                "grant_type=authorization_code&code=x&client_id=c",
            )))
            .unwrap()
    };
    let answer = send(&svc, req("https://spa.example")).await;
    assert_eq!(answer.error().as_deref(), Some("invalid_grant"));
    assert_eq!(
        answer
            .headers
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .and_then(|v| v.to_str().ok()),
        Some("https://spa.example")
    );
    let answer = send(&svc, req("https://evil.example")).await;
    assert!(
        answer
            .headers
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none()
    );
}

#[tokio::test]
async fn other_paths_pass_untouched() {
    let server = LegacyServer::new(Flavor::Direct);
    let svc = server.behind(PkceLayer::strict());
    let answer = send(&svc, get("/userinfo?code=abc&state=pkce.x")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "other");
    assert_eq!(answer.rejection, None);
}

/// An upstream's answer made from the `state` it was sent.
type Answering = fn(&str) -> http::Response<Full<Bytes>>;

/// The strict layer over an upstream that answers `/authorize` with what
/// `answer` makes of the `state` it was sent (raw, unencoded) and its host;
/// the response carries whatever bytes `answer` gives.
fn answering(store: MemoryStore, answer: Answering) -> tests::Service {
    let upstream = tower::service_fn(move |req: Request<RequestBody<Full<Bytes>>>| async move {
        let params = tests::parse_form(req.uri().query().unwrap_or_default());
        let state = params
            .iter()
            .find(|(n, _)| n == "state")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        Ok::<_, std::convert::Infallible>(answer(&state))
    });
    tower::util::BoxCloneSyncService::new(
        tower::ServiceBuilder::new()
            .layer(PkceLayer::strict().store(store))
            .service(upstream),
    )
}

fn redirect_to(location: &[u8]) -> http::Response<Full<Bytes>> {
    http::Response::builder()
        .status(StatusCode::FOUND)
        .header(
            header::LOCATION,
            http::HeaderValue::from_bytes(location).unwrap(),
        )
        .header(header::CONTENT_TYPE, "text/html")
        .body(Full::new(Bytes::from(format!(
            "<a href=\"{}\">Found</a>",
            String::from_utf8_lossy(location)
        ))))
        .unwrap()
}

fn html_page(page: String) -> http::Response<Full<Bytes>> {
    http::Response::builder()
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .body(Full::new(Bytes::from(page)))
        .unwrap()
}

/// Sends an authorization request through `answering(answer)` and returns
/// the answer and the store's bindings.
async fn authorize_through(answer: Answering) -> (Answer, u64) {
    let store = MemoryStore::new();
    let svc = answering(store.clone(), answer);
    let reply = send(
        &svc,
        get(&format!("/authorize?{}", pkce_query(Some("mine")))),
    )
    .await;
    (reply, store.stats().await.unwrap().bindings)
}

/// Invariant I2: a code beside a handle leaves bound, or not at all. What
/// a loose client could read differently from the strict reading is
/// withheld.
#[tokio::test]
async fn deliveries_that_cannot_be_read_with_certainty_are_withheld() {
    let shapes: [Answering; 13] = [
        |s| redirect_to(format!("https://client.example/cb#?code=c1&state={s}").as_bytes()),
        |s| {
            let mut r =
                redirect_to(format!("https://client.example/cb?code=c1&state={s}").as_bytes());
            r.headers_mut()
                .append(header::LOCATION, "https://evil.example/cb".parse().unwrap());
            r
        },
        |s| redirect_to(format!("https://client.example/cb?code=c1&code=c2&state={s}").as_bytes()),
        |s| redirect_to(format!("https://client.example/cb?code=c1&state={s}#code=c2").as_bytes()),
        |s| redirect_to(format!("https://client.example/cb?code=c1;state={s}").as_bytes()),
        |s| {
            redirect_to(format!("https://client.example/cb?code=c1&state={s}&state={s}").as_bytes())
        },
        |s| redirect_to(format!("https://client.example/cb?code=c1#state={s}").as_bytes()),
        |s| {
            let mut r = html_page(String::new());
            r.headers_mut().insert(
                "refresh",
                format!("0;url=https://client.example/cb?code=c1&state={s}")
                    .parse()
                    .unwrap(),
            );
            r
        },
        |s| {
            html_page(format!(
                "<meta http-equiv=refresh content=\"0;url=https://client.example/cb?code=c1&amp;state={s}\">"
            ))
        },
        |s| {
            html_page(format!(
                "<form method=post action=\"https://client.example/cb\"><input type=hidden name=code value=c1>\
             <input type=hidden name=code value=c2><input type=hidden name=state value=\"{s}\"></form>"
            ))
        },
        |s| {
            html_page(format!(
                "<form method=post action=\"https://client.example/cb\"><input type=hidden name=code value=c1></form>\
             <form><input type=hidden name=state value=\"{s}\"></form>"
            ))
        },
        |s| {
            let mut r = html_page(format!(
                "<form action=\"https://client.example/cb\"><input type=hidden name=code value=c1>\
                 <input type=hidden name=state value=\"{s}\"></form>"
            ));
            r.headers_mut()
                .insert(header::CONTENT_ENCODING, "zstd".parse().unwrap());
            r
        },
        |s| {
            // Past the scan bound, with the handle in the first part.
            let pad = "x".repeat(300 * 1024);
            html_page(format!(
                "<form action=\"https://client.example/cb\"><input type=hidden name=code value=c1>\
                 <input type=hidden name=state value=\"{s}\"></form>{pad}"
            ))
        },
    ];
    for (i, shape) in shapes.into_iter().enumerate() {
        let (answer, bindings) = authorize_through(shape).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_GATEWAY,
            "shape {i}: {answer:?}"
        );
        assert_eq!(
            answer.rejection,
            Some(Rejection::UncertainDelivery),
            "shape {i}"
        );
        assert!(answer.location().is_none(), "shape {i}");
        assert!(!answer.body.contains("c1"), "shape {i}: {}", answer.body);
        assert_eq!(bindings, 0, "shape {i}");
    }
}

/// Invariant I3: a code is bound, and the client's state put back, only in
/// a delivery to the transaction's own redirect_uri.
#[tokio::test]
async fn deliveries_elsewhere_than_the_redirect_uri_are_withheld() {
    let shapes: [Answering; 5] = [
        |s| redirect_to(format!("https://evil.example/cb?code=c1&state={s}").as_bytes()),
        |s| redirect_to(format!("https://client.example/cb/x?code=c1&state={s}").as_bytes()),
        |s| redirect_to(format!("/cb?code=c1&state={s}").as_bytes()),
        // A consent page that echoes a code parameter back to the server.
        |s| {
            html_page(format!(
                "<form method=post action=\"/authorize\"><input type=hidden name=code value=c1>\
             <input type=hidden name=state value=\"{s}\"><button>Allow</button></form>"
            ))
        },
        |s| {
            html_page(format!(
                "<form method=post action=\"https://client.example/cb/\"><input type=hidden name=code value=c1>\
             <input type=hidden name=state value=\"{s}\"></form>"
            ))
        },
    ];
    for (i, shape) in shapes.into_iter().enumerate() {
        let (answer, bindings) = authorize_through(shape).await;
        assert_eq!(
            answer.rejection,
            Some(Rejection::ForeignDelivery),
            "shape {i}: {answer:?}"
        );
        assert!(answer.location().is_none(), "shape {i}");
        assert!(
            !answer.body.contains("mine"),
            "shape {i}: the client's state stays"
        );
        assert_eq!(bindings, 0, "shape {i}");
    }
}

/// The deliveries read with certainty are bound, and only `state` changes.
#[tokio::test]
async fn certain_deliveries_are_bound() {
    let (answer, bindings) = authorize_through(|s| {
        let mut loc = b"https://client.example/cb?code=c1&state=".to_vec();
        loc.extend_from_slice(tests::encode(s).as_bytes());
        loc.extend_from_slice(b"&note=caf\xe9");
        redirect_to(&loc)
    })
    .await;
    assert_eq!(answer.status, StatusCode::FOUND, "{answer:?}");
    assert_eq!(
        answer.headers[header::LOCATION].as_bytes(),
        b"https://client.example/cb?code=c1&state=mine&note=caf\xe9"
    );
    assert!(
        answer.body.is_empty(),
        "a redirect's body, with the handle, goes"
    );
    assert_eq!(bindings, 1);

    let (answer, bindings) = authorize_through(|s| {
        html_page(format!(
            "<body onload=\"document.forms[0].submit()\"><form method=post action=\"https://client.example/cb\">\
             <input type=hidden name=code value=c1><input type=hidden name=state value=\"{s}\"></form></body>"
        ))
    })
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert!(
        answer.body.contains("name=state value=\"mine\""),
        "{}",
        answer.body
    );
    assert_eq!(bindings, 1);
}

/// Without a redirect_uri in the request, a delivery must leave the server
/// the client addressed: a page of the upstream's own is no delivery.
#[tokio::test]
async fn without_a_redirect_uri_a_delivery_must_leave_the_server() {
    let store = MemoryStore::new();
    let svc = answering(store.clone(), |s| {
        redirect_to(format!("https://as.example/cb?code=c1&state={s}").as_bytes())
    });
    let query = form(&[
        ("response_type", "code"),
        ("client_id", "client-a"),
        ("code_challenge", RFC_CHALLENGE),
        ("code_challenge_method", "S256"),
    ]);
    let req = Request::get(format!("/authorize?{query}"))
        .header(header::HOST, "AS.example")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = send(&svc, req).await;
    assert_eq!(
        answer.rejection,
        Some(Rejection::ForeignDelivery),
        "{answer:?}"
    );
    let req = Request::get(format!("/authorize?{query}"))
        .header(header::HOST, "login.example")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = send(&svc, req).await;
    assert_eq!(answer.status, StatusCode::FOUND, "{answer:?}");
    assert_eq!(store.stats().await.unwrap().bindings, 1);
}

/// Invariant I4: a continuation (a request whose `state` is a handle) goes
/// on only with its own transaction's client, redirect_uri and challenge,
/// and only while the transaction has not delivered.
#[tokio::test]
async fn a_continuation_must_match_its_transaction() {
    let server = LegacyServer::new(Flavor::Consent);
    let svc = server.behind(PkceLayer::strict());
    let consent = send(
        &svc,
        get(&format!("/authorize?{}", pkce_query(Some("mine")))),
    )
    .await;
    assert_eq!(consent.status, StatusCode::OK, "{consent:?}");
    let handle = tests::hidden_field(&consent.body, "state").unwrap();
    let other = CodeChallenge::from_verifier(&CodeVerifier::generate(), ChallengeMethod::S256);
    let seen = || server.state.authorize_requests.load(Ordering::SeqCst);
    let before = seen();
    for (case, pairs) in [
        ("another client", vec![("client_id", "client-b")]),
        (
            "another redirect_uri",
            vec![
                ("client_id", "client-a"),
                ("redirect_uri", "https://evil.example/cb"),
            ],
        ),
        (
            "another challenge",
            vec![
                ("code_challenge", other.as_str()),
                ("code_challenge_method", "S256"),
            ],
        ),
    ] {
        let mut pairs = pairs;
        pairs.push(("state", &handle));
        let answer = send(&svc, get(&format!("/authorize?{}", form(&pairs)))).await;
        assert_authorize_rejected(&answer, Rejection::ContinuationMismatch);
        assert_eq!(seen(), before, "{case}: never forwarded");
    }
    let answer = send(
        &svc,
        get(&format!(
            "/authorize?{}",
            form(&[("state", &handle), ("request_uri", "urn:x")])
        )),
    )
    .await;
    assert_authorize_rejected(&answer, Rejection::RequestObjectUnsupported);
    assert_eq!(seen(), before);

    // What the transaction carried, or nothing but the handle, goes on.
    let same = send(
        &svc,
        get(&format!(
            "/authorize?{}",
            query(&[
                ("code_challenge", RFC_CHALLENGE),
                ("code_challenge_method", "S256"),
                ("state", &handle)
            ])
        )),
    )
    .await;
    assert_eq!(same.status, StatusCode::OK, "{same:?}");
    let bare = send(
        &svc,
        get(&format!("/authorize?{}", form(&[("state", &handle)]))),
    )
    .await;
    assert_eq!(bare.status, StatusCode::OK, "{bare:?}");
    assert_eq!(seen(), before + 2);

    // The consent POST delivers the code; the handle is then finished.
    let (code, state) = delivered(
        &send(
            &svc,
            post_form(
                "/authorize",
                &form(&[
                    ("response_type", "code"),
                    ("client_id", "client-a"),
                    ("redirect_uri", "https://client.example/cb"),
                    ("state", &handle),
                    ("consent", "yes"),
                ]),
            ),
        )
        .await,
    )
    .unwrap();
    assert_eq!(state.as_deref(), Some("mine"));
    let again = send(
        &svc,
        get(&format!("/authorize?{}", form(&[("state", &handle)]))),
    )
    .await;
    assert_authorize_rejected(&again, Rejection::TransactionExpired);
    let ok = send(&svc, token_request(&code, "client-a", Some(RFC_VERIFIER))).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
}

/// A transaction without a redirect_uri cannot be given one by a
/// continuation: the upstream would send the code there.
#[tokio::test]
async fn a_continuation_cannot_add_a_redirect_uri() {
    let server = LegacyServer::new(Flavor::Consent);
    let svc = server.behind(PkceLayer::strict());
    let start = form(&[
        ("response_type", "code"),
        ("client_id", "client-a"),
        ("code_challenge", RFC_CHALLENGE),
        ("code_challenge_method", "S256"),
    ]);
    let consent = send(&svc, get(&format!("/authorize?{start}"))).await;
    let handle = tests::hidden_field(&consent.body, "state").unwrap();
    let answer = send(
        &svc,
        get(&format!(
            "/authorize?{}",
            form(&[
                ("client_id", "client-a"),
                ("redirect_uri", "https://evil.example/cb"),
                ("state", &handle)
            ])
        )),
    )
    .await;
    assert_authorize_rejected(&answer, Rejection::ContinuationMismatch);
}

/// Every response is read for a code beside a handle, whatever the path
/// the layer took the request for: a server that routes `/token..;/x` or
/// a metadata path elsewhere could answer with a delivery.
#[tokio::test]
async fn token_and_metadata_answers_are_read_too() {
    let last = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let seen = last.clone();
    let upstream = tower::service_fn(move |req: Request<RequestBody<Full<Bytes>>>| {
        let last = seen.clone();
        async move {
            let params = tests::parse_form(req.uri().query().unwrap_or_default());
            if let Some((_, s)) = params.iter().find(|(n, _)| n == "state") {
                *last.lock().unwrap() = s.clone();
                return Ok::<_, std::convert::Infallible>(html_page(format!(
                    "<form action=/login><input type=hidden name=state value=\"{s}\"></form>"
                )));
            }
            let state = last.lock().unwrap().clone();
            Ok(redirect_to(
                format!("https://client.example/cb?code=c1&state={state}#code=c2").as_bytes(),
            ))
        }
    });
    let svc = tower::util::BoxCloneSyncService::new(
        tower::ServiceBuilder::new()
            .layer(PkceLayer::strict())
            .service(upstream),
    );
    for request in [
        post_form("/token", "grant_type=refresh_token&refresh_token=rt"),
        get("/.well-known/openid-configuration"),
        Request::options("/token")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    ] {
        let login = send(
            &svc,
            get(&format!("/authorize?{}", pkce_query(Some("mine")))),
        )
        .await;
        assert_eq!(login.status, StatusCode::OK, "{login:?}");
        let path = request.uri().path().to_owned();
        let answer = send(&svc, request).await;
        assert_eq!(
            answer.rejection,
            Some(Rejection::UncertainDelivery),
            "{path}: {answer:?}"
        );
        assert!(answer.location().is_none(), "{path}");
    }
}
