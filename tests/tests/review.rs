//! Hostile review of `tower-pkce` (branch wt-review, after 05c848e): each test
//! states an invariant of DESIGN.md and a shape of request or response that
//! breaks it. A failing test is a finding; its message names the shape.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use tests::{Body, Service, form, get, post_form, send};
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;
use tower_pkce::store::{MemoryStore, Store};
use tower_pkce::{PkceLayer, Rejection, RequestBody, Requirement};

/// The victim's challenge (RFC 7636 appendix B); the attacker never has
/// its verifier.
const VICTIM_CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

fn attacker_pair() -> (String, String) {
    let v = tower_pkce::CodeVerifier::generate();
    let c = tower_pkce::CodeChallenge::from_verifier(&v, tower_pkce::ChallengeMethod::S256);
    (v.secret().to_owned(), c.as_str().to_owned())
}

fn pkce_query(redirect_uri: &str, challenge: &str, extra: &[(&str, &str)]) -> String {
    let mut pairs = vec![
        ("response_type", "code"),
        ("client_id", "client-a"),
        ("redirect_uri", redirect_uri),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
        ("state", "mine"),
    ];
    pairs.extend_from_slice(extra);
    form(&pairs)
}

/// An upstream made of one function of the request (parts and body text).
type Reply = dyn Fn(&http::request::Parts, &str) -> Response<Full<Bytes>> + Send + Sync;

fn behind<St: Store>(layer: PkceLayer<St>, reply: Arc<Reply>) -> Service {
    let upstream = tower::service_fn(move |req: Request<RequestBody<Body>>| {
        let reply = reply.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let body = String::from_utf8_lossy(&body).into_owned();
            Ok::<_, Infallible>(reply(&parts, &body))
        }
    });
    BoxCloneSyncService::new(tower::ServiceBuilder::new().layer(layer).service(upstream))
}

fn param(query: &str, name: &str) -> Option<String> {
    tests::parse_form(query)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
}

fn state_of(parts: &http::request::Parts) -> String {
    param(parts.uri.query().unwrap_or_default(), "state").unwrap_or_default()
}

fn json(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

fn redirect(location: &[u8]) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::FOUND)
        .header(
            header::LOCATION,
            http::HeaderValue::from_bytes(location).unwrap(),
        )
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn page(content_types: &[&str], body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    for ct in content_types {
        r.headers_mut()
            .append(header::CONTENT_TYPE, ct.parse().unwrap());
    }
    r
}

fn form_post(state: &str) -> String {
    format!(
        "<html><body onload=\"document.forms[0].submit()\">\
         <form method=\"post\" action=\"https://client.example/cb\">\
         <input type=\"hidden\" name=\"code\" value=\"c1\"/>\
         <input type=\"hidden\" name=\"state\" value=\"{state}\"/></form></body></html>"
    )
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// What an upstream answers an authorization request with, from the
/// `state` it was sent.
type Shape = fn(&str) -> Response<Full<Bytes>>;

/// Invariant I2 in optional mode: the victim's PKCE authorization is
/// answered with `shape`, which hands the code `c1` to a browser. Returns
/// a description when the answer reached the client with the code unbound
/// and `c1` was then redeemable without a verifier.
async fn leaks_unbound(shape: Shape) -> Option<String> {
    let store = MemoryStore::new();
    let redeemed = Arc::new(Mutex::new(0usize));
    let seen = redeemed.clone();
    let svc = behind(
        PkceLayer::strict()
            .requirement(Requirement::Optional)
            .store(store.clone()),
        Arc::new(move |parts, body| {
            if parts.uri.path() == "/token" {
                if param(body, "code").as_deref() == Some("c1") {
                    *seen.lock().unwrap() += 1;
                    return json(StatusCode::OK, r#"{"access_token":"at"}"#);
                }
                return json(StatusCode::BAD_REQUEST, r#"{"error":"invalid_grant"}"#);
            }
            shape(&state_of(parts))
        }),
    );
    let answer = send(
        &svc,
        get(&format!(
            "/authorize?{}",
            pkce_query("https://client.example/cb", VICTIM_CHALLENGE, &[])
        )),
    )
    .await;
    let bindings = store.stats().await.unwrap().bindings;
    if answer.rejection.is_some() || bindings > 0 {
        return None;
    }
    // The attacker intercepted c1; they have no verifier.
    let token = send(
        &svc,
        post_form(
            "/token",
            &form(&[
                ("grant_type", "authorization_code"),
                ("code", "c1"),
                ("client_id", "client-a"),
                ("redirect_uri", "https://client.example/cb"),
            ]),
        ),
    )
    .await;
    (token.status == StatusCode::OK && *redeemed.lock().unwrap() == 1).then(|| {
        format!(
            "answer {} passed with bindings=0, then c1 redeemed without a verifier",
            answer.status
        )
    })
}

async fn assert_no_leak(shapes: &[(&str, Shape)]) {
    let mut leaks = Vec::new();
    for (name, shape) in shapes {
        if let Some(why) = leaks_unbound(*shape).await {
            leaks.push(format!("{name}: {why}"));
        }
    }
    assert!(
        leaks.is_empty(),
        "I2 broken, {} of {} shapes leak a code unbound:\n  {}",
        leaks.len(),
        shapes.len(),
        leaks.join("\n  ")
    );
}

// ---------------------------------------------------------------------------
// I5: names a Rack 2 (Rails, Doorkeeper) or qs (Express `extended: true`)
// server reads as `code` / `grant_type` that the token checks do not.
// ---------------------------------------------------------------------------

/// A Rack 2 reading of one `name`: `\A[\[\]]*([^\[\]]+)\]*` with nothing
/// after it (Rack::QueryParser#normalize_params, rack 2.2), which is what
/// qs 6 also does for `[name]`.
fn rack2_key(name: &str) -> Option<&str> {
    let inner = name.trim_start_matches(['[', ']']);
    let end = inner.find(['[', ']']).unwrap_or(inner.len());
    let (key, after) = inner.split_at(end);
    (!key.is_empty() && after.trim_start_matches(']').is_empty()).then_some(key)
}

fn rack2_params(input: &str, into: &mut HashMap<String, String>) {
    for (n, v) in tests::parse_form(&input.replace(';', "&")) {
        if let Some(k) = rack2_key(&n) {
            into.insert(k.to_owned(), v);
        }
    }
}

/// A Rails-like legacy server: `/authorize` redirects with a fresh code;
/// `/token` reads `request_parameters.merge(query_parameters)` the Rack 2
/// way and redeems any code it issued, once. Returns the codes it redeemed.
fn rails_like(layer: PkceLayer) -> (Service, Arc<Mutex<Vec<String>>>) {
    let issued = Arc::new(Mutex::new(HashMap::<String, bool>::new()));
    let redeemed = Arc::new(Mutex::new(Vec::new()));
    let seen = redeemed.clone();
    let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let svc = behind(
        layer,
        Arc::new(move |parts, body| {
            let query = parts.uri.query().unwrap_or_default();
            match parts.uri.path() {
                "/authorize" => {
                    let code = format!(
                        "code-{}",
                        n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                    );
                    issued.lock().unwrap().insert(code.clone(), false);
                    let uri = param(query, "redirect_uri").unwrap();
                    let state = tests::encode(&state_of(parts));
                    redirect(format!("{uri}?code={code}&state={state}").as_bytes())
                }
                "/token" => {
                    let mut params = HashMap::new();
                    rack2_params(body, &mut params);
                    rack2_params(query, &mut params);
                    let grant = params.get("grant_type").map(String::as_str);
                    let code = params.get("code").cloned().unwrap_or_default();
                    let mut issued = issued.lock().unwrap();
                    match (grant, issued.get_mut(&code)) {
                        (Some("authorization_code"), Some(used @ false)) => {
                            *used = true;
                            seen.lock().unwrap().push(code);
                            json(StatusCode::OK, r#"{"access_token":"at"}"#)
                        }
                        _ => json(StatusCode::BAD_REQUEST, r#"{"error":"invalid_grant"}"#),
                    }
                }
                _ => json(StatusCode::NOT_FOUND, "{}"),
            }
        }),
    );
    (svc, redeemed)
}

async fn code_for(svc: &Service, challenge: &str) -> String {
    let answer = send(
        svc,
        get(&format!(
            "/authorize?{}",
            pkce_query("https://client.example/cb", challenge, &[])
        )),
    )
    .await;
    let (code, state) = tests::delivered(&answer).unwrap_or_else(|| panic!("{answer:?}"));
    assert_eq!(state.as_deref(), Some("mine"));
    code
}

/// I5 (and I2 in required mode): the victim's code is bound to the victim's
/// challenge; the attacker holds the code and no verifier. Bracketed names
/// are folded by neither the body checks nor the query check, and Rack 2 /
/// qs read them as the bare name.
#[tokio::test]
async fn i5_bracketed_names_smuggle_a_victims_code_past_the_token_checks() {
    let mut broken = Vec::new();
    for variant in ["other grant in body", "query over body", "qs spelling"] {
        let (svc, redeemed) = rails_like(PkceLayer::strict());
        let victim = code_for(&svc, VICTIM_CHALLENGE).await;
        // Control: the plain spelling without the verifier is refused.
        let plain = send(&svc, tests::token_request(&victim, "client-a", None)).await;
        assert_eq!(plain.rejection, Some(Rejection::VerifierMissing));
        let request = match variant {
            // The layer sees refresh_token and no code: passed unchecked.
            "other grant in body" => post_form(
                "/token",
                &format!(
                    "grant_type=refresh_token&refresh_token=x&client_id=client-a\
                     &[grant_type]=authorization_code&[code]={victim}"
                ),
            ),
            // The attacker redeems their own bound code with their own
            // verifier; Rails' params take the query's `code` over the body's.
            "query over body" => {
                let (verifier, challenge) = attacker_pair();
                let mine = code_for(&svc, &challenge).await;
                post_form(
                    &format!("/token?[code]={victim}"),
                    &form(&[
                        ("grant_type", "authorization_code"),
                        ("code", &mine),
                        ("code_verifier", &verifier),
                        ("client_id", "client-a"),
                        ("redirect_uri", "https://client.example/cb"),
                    ]),
                )
            }
            // qs keeps `GRANT_TYPE` apart and reads `[grant_type]` as
            // grant_type; the layer folds GRANT_TYPE to grant_type.
            _ => post_form(
                "/token",
                &format!(
                    "GRANT_TYPE=refresh_token&[grant_type]=authorization_code\
                     &[code]={victim}&client_id=client-a"
                ),
            ),
        };
        let answer = send(&svc, request).await;
        if redeemed.lock().unwrap().contains(&victim) {
            broken.push(format!(
                "{variant}: {} {} -> upstream redeemed the victim's code",
                answer.status, answer.body
            ));
        }
    }
    assert!(
        broken.is_empty(),
        "I5 broken, a bound code redeemed without its verifier (strict mode):\n  {}",
        broken.join("\n  ")
    );
}

// ---------------------------------------------------------------------------
// I4: a continuation may carry a redirect_uri or client_id the upstream reads
// under a name the layer does not.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn i4_a_bracketed_redirect_uri_or_client_id_rides_a_continuation() {
    let forwarded = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = forwarded.clone();
    let svc = behind(
        PkceLayer::strict(),
        Arc::new(move |parts, _| {
            let state = state_of(parts);
            seen.lock()
                .unwrap()
                .push(parts.uri.query().unwrap_or_default().to_owned());
            page(
                &["text/html"],
                format!(
                    "<form method=post action=/authorize>\
                     <input type=hidden name=state value=\"{state}\"><button>Allow</button></form>"
                ),
            )
        }),
    );
    let consent = send(
        &svc,
        get(&format!(
            "/authorize?{}",
            pkce_query("https://client.example/cb", VICTIM_CHALLENGE, &[])
        )),
    )
    .await;
    let at = consent
        .body
        .find("pkce.")
        .unwrap_or_else(|| panic!("{consent:?}"));
    let handle = consent.body[at..at + 27].to_owned();
    let mut broken = Vec::new();
    for extra in [
        "[redirect_uri]=https%3A%2F%2Fevil.example%2Fcb",
        "redirect_uri]=https%3A%2F%2Fevil.example%2Fcb",
        "[client_id]=client-b",
    ] {
        let answer = send(&svc, get(&format!("/authorize?state={handle}&{extra}"))).await;
        let refused = matches!(
            answer.rejection,
            Some(Rejection::ContinuationMismatch | Rejection::MalformedParameters)
        );
        if !refused || forwarded.lock().unwrap().iter().any(|q| q.contains(extra)) {
            broken.push(format!(
                "{extra}: {} {:?}, forwarded={}",
                answer.status,
                answer.rejection,
                forwarded.lock().unwrap().iter().any(|q| q.contains(extra))
            ));
        }
    }
    assert!(
        broken.is_empty(),
        "I4 broken, continuations forwarded with another redirect_uri/client_id a Rack 2 upstream reads:\n  {}",
        broken.join("\n  ")
    );
}

// ---------------------------------------------------------------------------
// I3: a delivery that a browser sends elsewhere than the redirect_uri.
// ---------------------------------------------------------------------------

/// The recorded redirect_uri is a prefix of the Location ending at `&`,
/// which does not end an authority (or a path) for a browser.
#[tokio::test]
async fn i3_an_ampersand_prefix_passes_for_the_redirect_uri() {
    let mut broken = Vec::new();
    for (redirect_uri, target) in [
        // WHATWG URL: host evil.example, user `client.example&`.
        (
            "https://client.example",
            "https://client.example&@evil.example/",
        ),
        // Path /evil on the client's host: not the registered endpoint.
        (
            "https://client.example/cb",
            "https://client.example/cb&/../evil",
        ),
    ] {
        let store = MemoryStore::new();
        let svc = behind(
            PkceLayer::strict().store(store.clone()),
            Arc::new(move |parts, _| {
                redirect(format!("{target}?code=c1&state={}", state_of(parts)).as_bytes())
            }),
        );
        let answer = send(
            &svc,
            get(&format!(
                "/authorize?{}",
                pkce_query(redirect_uri, VICTIM_CHALLENGE, &[])
            )),
        )
        .await;
        if answer.rejection != Some(Rejection::ForeignDelivery) {
            broken.push(format!(
                "redirect_uri {redirect_uri}: {} Location {:?}, bindings {}",
                answer.status,
                answer.location(),
                store.stats().await.unwrap().bindings
            ));
        }
    }
    assert!(
        broken.is_empty(),
        "I3 broken, the client's state restored into a delivery to another target:\n  {}",
        broken.join("\n  ")
    );
}

/// An unclosed `<form>` earlier on the page: a browser ignores the nested
/// `<form>` start tag, so the inputs belong to the first form and post to
/// its action; the scanner reads them as the second form's.
#[tokio::test]
async fn i3_an_unclosed_form_takes_the_delivery_elsewhere() {
    let store = MemoryStore::new();
    let svc = behind(
        PkceLayer::strict().store(store.clone()),
        Arc::new(|parts, _| {
            page(
                &["text/html"],
                format!(
                    "<div class=search><form action=\"/search\"><input name=q></div>{}",
                    form_post(&state_of(parts))
                ),
            )
        }),
    );
    let answer = send(
        &svc,
        get(&format!(
            "/authorize?{}",
            pkce_query("https://client.example/cb", VICTIM_CHALLENGE, &[])
        )),
    )
    .await;
    assert!(
        answer.rejection.is_some(),
        "I3 broken: the state was restored ({}) and c1 bound (bindings {}) in a page whose inputs post to /search",
        answer.body.contains("value=\"mine\""),
        store.stats().await.unwrap().bindings
    );
}

// ---------------------------------------------------------------------------
// Laundering: a value the attacker chose, echoed by the upstream beside the
// attacker's handle, is bound to the attacker's challenge.
// ---------------------------------------------------------------------------

/// A server that echoes every authorization parameter into its consent form
/// (as the project's own LegacyServer does), with an absolute action built
/// from its issuer; a JSON API hands out a code outside the front channel,
/// which required mode promises to keep unredeemable.
fn echoing(store: MemoryStore) -> (Service, Arc<Mutex<Vec<String>>>) {
    let redeemed = Arc::new(Mutex::new(Vec::new()));
    let seen = redeemed.clone();
    let svc = behind(
        PkceLayer::strict().store(store),
        Arc::new(move |parts, body| match parts.uri.path() {
            "/api/code" => json(StatusCode::OK, r#"{"code":"out-of-band-code"}"#),
            "/token" => {
                let code = param(body, "code").unwrap_or_default();
                seen.lock().unwrap().push(code);
                json(StatusCode::OK, r#"{"access_token":"at"}"#)
            }
            _ => {
                let mut fields = String::new();
                for (n, v) in tests::parse_form(parts.uri.query().unwrap_or_default()) {
                    fields.push_str(&format!(
                        "<input type=\"hidden\" name=\"{n}\" value=\"{v}\">"
                    ));
                }
                page(
                    &["text/html"],
                    format!(
                        "<form method=\"post\" action=\"https://as.example/authorize\">{fields}\
                         <button name=\"consent\" value=\"yes\">Allow</button></form>"
                    ),
                )
            }
        }),
    );
    (svc, redeemed)
}

#[tokio::test]
async fn laundering_an_echoed_code_is_bound_to_the_attackers_challenge() {
    let mut broken = Vec::new();
    for variant in [
        "redirect_uri = the consent action",
        "no redirect_uri, Host differs",
    ] {
        let store = MemoryStore::new();
        let (svc, redeemed) = echoing(store.clone());
        let code = "out-of-band-code";
        let _ = send(&svc, get("/api/code")).await;
        let before = send(
            &svc,
            post_form(
                "/token",
                &form(&[
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("client_id", "client-a"),
                ]),
            ),
        )
        .await;
        assert_eq!(
            before.rejection,
            Some(Rejection::UnboundCode),
            "fail closed"
        );
        let (verifier, challenge) = attacker_pair();
        let mut pairs = vec![
            ("response_type", "code"),
            ("client_id", "client-a"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("code", code),
        ];
        let mut req = if variant.starts_with("redirect_uri") {
            pairs.push(("redirect_uri", "https://as.example/authorize"));
            get(&format!("/authorize?{}", form(&pairs)))
        } else {
            let mut r = get(&format!("/authorize?{}", form(&pairs)));
            r.headers_mut()
                .insert(header::HOST, "as.example:443".parse().unwrap());
            r
        };
        req.headers_mut()
            .insert(header::ACCEPT, "text/html".parse().unwrap());
        let consent = send(&svc, req).await;
        let mut token = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("client_id", "client-a"),
            ("code_verifier", verifier.as_str()),
        ];
        if variant.starts_with("redirect_uri") {
            token.push(("redirect_uri", "https://as.example/authorize"));
        }
        let answer = send(&svc, post_form("/token", &form(&token))).await;
        if redeemed.lock().unwrap().iter().any(|c| c == code) {
            broken.push(format!(
                "{variant}: consent {} {:?}; token {} -> upstream redeemed the out-of-band code",
                consent.status, consent.rejection, answer.status
            ));
        }
    }
    assert!(
        broken.is_empty(),
        "laundering: an echoed value bound to the attacker's challenge:\n  {}",
        broken.join("\n  ")
    );
}

// ---------------------------------------------------------------------------
// I2 in optional mode: responses that hand a browser the code beside the
// handle and pass through unbound.
// ---------------------------------------------------------------------------

fn utf16le(text: &str, bom: bool) -> Vec<u8> {
    let mut out = if bom { vec![0xff, 0xfe] } else { Vec::new() };
    out.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
    out
}

/// Pages a browser renders as HTML that the layer does not read as HTML.
/// Fetch's "extract a MIME type" takes the last valid type of a combined
/// Content-Type; Chromium and the MIME Sniffing standard sniff a missing,
/// unparsable, `unknown/unknown`, `application/unknown` or `*/*` type;
/// an XHTML document served as XML keeps working forms and scripts; a
/// page in UTF-16 (named by its charset, or by a BOM, which wins over the
/// charset in the HTML encoding sniffing algorithm) holds no ASCII `pkce`.
#[tokio::test]
async fn i2_pages_a_browser_renders_as_html_are_not_read() {
    assert_no_leak(&[
        ("two Content-Type fields", |s| {
            page(&["text/plain", "text/html"], form_post(s))
        }),
        ("Content-Type list", |s| {
            page(&["text/plain, text/html"], form_post(s))
        }),
        ("Content-Type: html", |s| page(&["html"], form_post(s))),
        ("Content-Type: unknown/unknown", |s| {
            page(&["unknown/unknown"], form_post(s))
        }),
        ("Content-Type: application/unknown", |s| {
            page(&["application/unknown"], form_post(s))
        }),
        ("Content-Type: */*", |s| page(&["*/*"], form_post(s))),
        ("UTF-16LE, charset in the type", |s| {
            page(
                &["text/html; charset=utf-16le"],
                utf16le(&form_post(s), false),
            )
        }),
        ("UTF-16LE, BOM over charset=utf-8", |s| {
            page(&["text/html; charset=utf-8"], utf16le(&form_post(s), true))
        }),
        ("XHTML as text/xml", |s| {
            page(
                &["text/xml"],
                format!(
                    "<html xmlns=\"http://www.w3.org/1999/xhtml\">{}</html>",
                    form_post(s)
                        .trim_start_matches("<html>")
                        .trim_end_matches("</html>")
                ),
            )
        }),
    ])
    .await;
}

/// Compressed pages the layer cannot decode pass unread, while a browser
/// decodes them: Chromium's GzipSourceStream skips the gzip footer without
/// checking it and ignores bytes after it ("matches the behavior of other
/// browsers"); several Content-Encoding fields combine into one list.
#[tokio::test]
async fn i2_compressed_pages_the_layer_cannot_decode_pass_unread() {
    fn coded(coding: &[&str], body: Vec<u8>) -> Response<Full<Bytes>> {
        let mut r = page(&["text/html"], body);
        for c in coding {
            r.headers_mut()
                .append(header::CONTENT_ENCODING, c.parse().unwrap());
        }
        r
    }
    assert_no_leak(&[
        ("gzip + trailing bytes", |s| {
            let mut body = gzip(form_post(s).as_bytes());
            body.extend_from_slice(b"\r\n\r\n");
            coded(&["gzip"], body)
        }),
        ("gzip with a wrong CRC", |s| {
            let mut body = gzip(form_post(s).as_bytes());
            let n = body.len();
            body[n - 8] ^= 0xff;
            coded(&["gzip"], body)
        }),
        ("two Content-Encoding fields", |s| {
            coded(&["gzip", "gzip"], gzip(&gzip(form_post(s).as_bytes())))
        }),
        ("decodes past the scan bound", |s| {
            let padded = format!("{}<!--{}-->", form_post(s), " ".repeat(300 * 1024));
            coded(&["gzip"], gzip(padded.as_bytes()))
        }),
    ])
    .await;
}

/// The small scanner's comments are not a browser's: `<!--` inside a
/// script or an attribute value opens none, `--!>` and `<!-->` close one.
/// The form inside what the scanner skips carries `name=code` but never
/// `code=`, so the page is read as a carrier.
#[tokio::test]
async fn i2_comment_differentials_hide_a_form_post() {
    assert_no_leak(&[
        ("<!-- in a script string", |s| {
            page(
                &["text/html"],
                format!(
                    "<script>var open = \"<!--\";</script>{}<!-- page footer -->",
                    form_post(s)
                ),
            )
        }),
        ("<!-- in an attribute", |s| {
            page(
                &["text/html"],
                format!("<img alt=\"<!--\">{}<p title=\"-->\">", form_post(s)),
            )
        }),
        ("--!> closes a comment", |s| {
            page(
                &["text/html"],
                format!("<!-- x --!>{}<!-- y -->", form_post(s)),
            )
        }),
        ("<!--> is an empty comment", |s| {
            page(&["text/html"], format!("<!-->{}<!-- y -->", form_post(s)))
        }),
    ])
    .await;
}

/// Controls other than `<input>` submit a `code` that the scanner never
/// reads (and that a page writes without `code=`).
#[tokio::test]
async fn i2_controls_other_than_input_submit_a_code_unread() {
    fn with(control: &str, state: &str) -> Response<Full<Bytes>> {
        page(
            &["text/html"],
            format!(
                "<body onload=\"document.forms[0].requestSubmit(document.getElementById('go'))\">\
                 <form method=post action=\"https://client.example/cb\">{control}\
                 <input type=hidden name=state value=\"{state}\"><button id=go>go</button></form>"
            ),
        )
    }
    assert_no_leak(&[
        ("textarea", |s| {
            with("<textarea name=code hidden>c1</textarea>", s)
        }),
        ("select", |s| {
            with("<select name=code hidden><option>c1</option></select>", s)
        }),
        ("button", |s| {
            page(
                &["text/html"],
                format!(
                    "<body onload=\"document.getElementById('go').click()\">\
                     <form method=post action=\"https://client.example/cb\">\
                     <input type=hidden name=state value=\"{s}\">\
                     <button id=go name=code value=c1>go</button></form>"
                ),
            )
        }),
    ])
    .await;
}

/// Browsers remove every ASCII tab and newline from a URL (WHATWG URL
/// parser), and a `Location` field may hold a tab; PHP ends a parameter
/// name at NUL.
#[tokio::test]
async fn i2_location_spellings_a_client_reads_as_code() {
    assert_no_leak(&[
        ("tab in the name", |s| {
            redirect(format!("https://client.example/cb?co\tde=c1&state={s}").as_bytes())
        }),
        ("NUL after the name (PHP)", |s| {
            redirect(format!("https://client.example/cb?code%00=c1&state={s}").as_bytes())
        }),
    ])
    .await;
}

/// An uncompressed page over the scan bound is "cut off mid-body when the
/// handle comes late": the code before the handle has already left.
#[tokio::test]
async fn i2_a_page_over_the_bound_sends_its_code_before_the_cut() {
    let store = MemoryStore::new();
    let layer = PkceLayer::strict()
        .requirement(Requirement::Optional)
        .html_scan_limit(4096)
        .store(store.clone());
    let upstream = tower::service_fn(|req: Request<RequestBody<Body>>| async move {
        let (parts, _) = req.into_parts();
        let state = state_of(&parts);
        let frames = [
            "<form method=post action=\"https://client.example/cb\">\
             <input type=hidden name=code value=c1>"
                .to_owned(),
            " ".repeat(8192),
            format!("<input type=hidden name=state value=\"{state}\"></form>"),
        ];
        let mut r = Response::new(tests::ReadyFrames::data(frames.map(Bytes::from)));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, "text/html".parse().unwrap());
        Ok::<_, Infallible>(r)
    });
    let svc = tower::ServiceBuilder::new().layer(layer).service(upstream);
    let response = svc
        .oneshot(get(&format!(
            "/authorize?{}",
            pkce_query("https://client.example/cb", VICTIM_CHALLENGE, &[])
        )))
        .await
        .unwrap();
    let mut body = response.into_body();
    let mut received = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => received.extend_from_slice(f.data_ref().map_or(&b""[..], |d| d)),
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&received);
    assert!(
        !text.contains("value=c1"),
        "I2 broken: the client received the code c1 ({} bytes) before the cut, bindings {}",
        received.len(),
        store.stats().await.unwrap().bindings
    );
}

// ---------------------------------------------------------------------------
// Cost of one response.
// ---------------------------------------------------------------------------

/// `html::unescape` searches the rest of the value for `;` at every `&`:
/// quadratic in a value of `&`s (an upstream that echoes a parameter
/// without escaping `&`).
#[tokio::test]
async fn a_page_of_ampersands_is_read_whole() {
    // Each `&` of an attribute once looked for its `;` to the end of the
    // value: a page of them took seconds. The bound on that search is in
    // `html::unescape`; this checks such a page is still read right.
    let amps: &'static str = Box::leak("&".repeat(200 * 1024).into_boxed_str());
    let svc = behind(
        PkceLayer::strict(),
        Arc::new(move |parts, _| {
            page(
                &["text/html"],
                format!(
                    "<form method=post action=\"https://client.example/cb\">\
                     <input type=hidden name=code value=c1>\
                     <input type=hidden name=state value=\"{}\">\
                     <input type=hidden name=note value=\"{amps};\"></form>",
                    state_of(parts)
                ),
            )
        }),
    );
    let answer = send(
        &svc,
        get(&format!(
            "/authorize?{}",
            pkce_query("https://client.example/cb", VICTIM_CHALLENGE, &[])
        )),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
}

// ---------------------------------------------------------------------------
// I5: a token body that reads as a refresh grant as a form and as a code
// grant as JSON.
// ---------------------------------------------------------------------------

/// A server that reads a token body as JSON when it looks like JSON (PHP's
/// `json_decode(file_get_contents('php://input'))` and the like), or when
/// its last Content-Type says so, and as a form otherwise.
#[tokio::test]
async fn i5_a_token_body_that_is_also_json_passes_unchecked() {
    let mut broken = Vec::new();
    for variant in ["JSON sniffed", "second Content-Type"] {
        let issued = Arc::new(Mutex::new(Vec::<String>::new()));
        let redeemed = Arc::new(Mutex::new(Vec::<String>::new()));
        let (i, r) = (issued.clone(), redeemed.clone());
        let svc = behind(
            PkceLayer::strict(),
            Arc::new(move |parts, body| match parts.uri.path() {
                "/authorize" => {
                    let code = format!("code-{}", i.lock().unwrap().len());
                    i.lock().unwrap().push(code.clone());
                    redirect(
                        format!(
                            "https://client.example/cb?code={code}&state={}",
                            state_of(parts)
                        )
                        .as_bytes(),
                    )
                }
                _ => {
                    let last_ct = parts
                        .headers
                        .get_all(header::CONTENT_TYPE)
                        .iter()
                        .next_back()
                        .map(|v| v.to_str().unwrap_or_default().to_owned())
                        .unwrap_or_default();
                    let (grant, code) = if body.starts_with('{') || last_ct.contains("json") {
                        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
                        let get = |k: &str| v.get(k).and_then(|s| s.as_str()).map(str::to_owned);
                        (get("grant_type"), get("code"))
                    } else {
                        (param(body, "grant_type"), param(body, "code"))
                    };
                    match (grant.as_deref(), code) {
                        (Some("authorization_code"), Some(code))
                            if i.lock().unwrap().contains(&code) =>
                        {
                            r.lock().unwrap().push(code);
                            json(StatusCode::OK, r#"{"access_token":"at"}"#)
                        }
                        _ => json(StatusCode::BAD_REQUEST, r#"{"error":"invalid_grant"}"#),
                    }
                }
            }),
        );
        let victim = code_for(&svc, VICTIM_CHALLENGE).await;
        let body = format!(
            "{{\"grant_type\":\"authorization_code\",\"code\":\"{victim}\",\
             \"client_id\":\"client-a\",\"x\":\"&grant_type=refresh_token&y=\"}}"
        );
        let mut req = post_form("/token", &body);
        if variant == "second Content-Type" {
            req.headers_mut()
                .append(header::CONTENT_TYPE, "application/json".parse().unwrap());
        }
        let answer = send(&svc, req).await;
        if redeemed.lock().unwrap().contains(&victim) {
            broken.push(format!("{variant}: {} {}", answer.status, answer.body));
        }
    }
    assert!(
        broken.is_empty(),
        "I5 broken, the victim's bound code redeemed without its verifier:\n  {}",
        broken.join("\n  ")
    );
}

/// Control: the harness of `leaks_unbound` sees the ordinary deliveries
/// bound (so its failures above are the layer's).
#[tokio::test]
async fn control_ordinary_deliveries_do_not_leak() {
    assert_no_leak(&[
        ("form_post", |s| page(&["text/html"], form_post(s))),
        ("no Content-Type", |s| page(&[], form_post(s))),
        ("gzip", |s| {
            let mut r = page(&["text/html"], gzip(form_post(s).as_bytes()));
            r.headers_mut()
                .insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
            r
        }),
        ("redirect", |s| {
            redirect(format!("https://client.example/cb?code=c1&state={s}").as_bytes())
        }),
        ("fragment", |s| {
            redirect(format!("https://client.example/cb#code=c1&state={s}").as_bytes())
        }),
        ("CODE in a Location", |s| {
            redirect(format!("https://client.example/cb?CODE=c1&state={s}").as_bytes())
        }),
        ("+code (PHP trims)", |s| {
            redirect(format!("https://client.example/cb?+code=c1&state={s}").as_bytes())
        }),
        ("meta refresh", |s| {
            page(
                &["text/html"],
                format!("<meta http-equiv=refresh content=\"0;url=https://client.example/cb?c%6Fde=c1&amp;state={s}\">"),
            )
        }),
        ("over the bound, uncompressed", |s| {
            page(&["text/html"], format!("{}{}", form_post(s), " ".repeat(300 * 1024)))
        }),
    ])
    .await;
}

/// I2 hardening: on the answer to the transaction's own authorization
/// request, a code without the handle can only be this transaction's (the
/// upstream dropped or mangled the state), yet it passes unbound.
#[tokio::test]
async fn i2_a_code_on_the_authorize_answer_without_its_handle_passes() {
    assert_no_leak(&[
        ("state dropped", |_| {
            redirect(b"https://client.example/cb?code=c1")
        }),
        ("state cut to 20 bytes", |s| {
            redirect(format!("https://client.example/cb?code=c1&state={}", &s[..20]).as_bytes())
        }),
    ])
    .await;
}

/// No panic from any response bytes: pages and Locations made of the
/// scanners' own tokens, at random.
#[tokio::test]
async fn held_random_pages_and_locations_do_not_panic() {
    const TOKENS: &[&str] = &[
        "<form",
        "<input",
        "</form",
        "<!--",
        "-->",
        "--!>",
        " name=",
        " value=",
        " action=",
        " form=",
        "formaction",
        "code",
        "state",
        "error",
        "=",
        "\"",
        "'",
        ">",
        "/",
        " ",
        "&",
        "&amp;",
        "&#",
        "&#x",
        ";",
        "%",
        "%2",
        "%2E",
        "%25",
        "+",
        "?",
        "#",
        "@",
        "\\",
        ":",
        "https://client.example/cb",
        "pkce.",
        "AAAAAAAAAAAAAAAAAAAAAA",
        "c1",
        "\t",
        "\u{e9}",
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut cases = Vec::new();
    for _ in 0..4000 {
        let len = (next() % 40) as usize;
        let text: String = (0..len)
            .map(|_| TOKENS[(next() % TOKENS.len() as u64) as usize])
            .collect();
        cases.push(text);
    }
    let cases = Arc::new(cases);
    let at = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (c, a) = (cases.clone(), at.clone());
    let svc = behind(
        PkceLayer::strict(),
        Arc::new(move |parts, _| {
            let i = a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let text = c[i / 2].replace("pkce.AAAAAAAAAAAAAAAAAAAAAA", &state_of(parts));
            if i % 2 == 0 {
                page(&["text/html"], text)
            } else {
                match http::HeaderValue::from_bytes(text.as_bytes()) {
                    Ok(v) => {
                        let mut r = redirect(b"/");
                        r.headers_mut().insert(header::LOCATION, v);
                        r
                    }
                    Err(_) => redirect(b"/"),
                }
            }
        }),
    );
    for _ in 0..cases.len() * 2 {
        let _ = send(
            &svc,
            get(&format!(
                "/authorize?{}",
                pkce_query("https://client.example/cb", VICTIM_CHALLENGE, &[])
            )),
        )
        .await;
    }
}

/// I1/I5: an OPTIONS request without a body passes the token path for CORS
/// preflight, query string and all. A server that does not route by method
/// and reads parameters from the query string (PHP's `$_REQUEST` in a
/// `token.php`) redeems the code it names.
#[tokio::test]
async fn i5_an_options_request_carries_token_parameters_in_its_query() {
    let (svc, redeemed) = {
        let issued = Arc::new(Mutex::new(Vec::<String>::new()));
        let redeemed = Arc::new(Mutex::new(Vec::<String>::new()));
        let (i, r) = (issued.clone(), redeemed.clone());
        let svc = behind(
            PkceLayer::strict(),
            Arc::new(move |parts, body| {
                let query = parts.uri.query().unwrap_or_default();
                if parts.uri.path() == "/authorize" {
                    let code = format!("code-{}", i.lock().unwrap().len());
                    i.lock().unwrap().push(code.clone());
                    return redirect(
                        format!(
                            "https://client.example/cb?code={code}&state={}",
                            state_of(parts)
                        )
                        .as_bytes(),
                    );
                }
                let request = format!("{query}&{body}");
                match (
                    param(&request, "grant_type").as_deref(),
                    param(&request, "code"),
                ) {
                    (Some("authorization_code"), Some(code))
                        if i.lock().unwrap().contains(&code) =>
                    {
                        r.lock().unwrap().push(code);
                        json(StatusCode::OK, r#"{"access_token":"at"}"#)
                    }
                    _ => json(StatusCode::BAD_REQUEST, r#"{"error":"invalid_request"}"#),
                }
            }),
        );
        (svc, redeemed)
    };
    let victim = code_for(&svc, VICTIM_CHALLENGE).await;
    let answer = send(
        &svc,
        Request::options(format!(
            "/token?grant_type=authorization_code&code={victim}&client_id=client-a"
        ))
        .header(header::ORIGIN, "https://client.example")
        .body(Full::new(Bytes::new()))
        .unwrap(),
    )
    .await;
    assert!(
        !redeemed.lock().unwrap().contains(&victim),
        "I5 broken: OPTIONS /token?grant_type=authorization_code&code=… reached the upstream unchecked ({} {}), the victim's code redeemed",
        answer.status,
        answer.body
    );
}

/// The chain in required mode: the victim's code leaves unbound in a shape
/// of `i2_pages_a_browser_renders_as_html_are_not_read` (fail closed: the
/// victim's own token request is refused), the attacker who intercepted it
/// launders it onto their own challenge through the echoing consent page,
/// and redeems it with their own verifier.
#[tokio::test]
async fn chain_required_mode_leak_then_launder_redeems_the_victims_code() {
    let redeemed = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = redeemed.clone();
    let svc = behind(
        PkceLayer::strict(),
        Arc::new(move |parts, body| {
            let query = parts.uri.query().unwrap_or_default();
            if parts.uri.path() == "/token" {
                if param(body, "code").as_deref() == Some("c1") {
                    seen.lock().unwrap().push("c1".into());
                    return json(StatusCode::OK, r#"{"access_token":"victims-token"}"#);
                }
                return json(StatusCode::BAD_REQUEST, r#"{"error":"invalid_grant"}"#);
            }
            if param(query, "code").is_some() {
                let mut fields = String::new();
                for (n, v) in tests::parse_form(query) {
                    fields.push_str(&format!("<input type=hidden name=\"{n}\" value=\"{v}\">"));
                }
                return page(
                    &["text/html"],
                    format!(
                        "<form method=post action=\"https://as.example/authorize\">{fields}</form>"
                    ),
                );
            }
            page(&["text/plain", "text/html"], form_post(&state_of(parts)))
        }),
    );
    // The victim signs in; the browser posts c1 with the handle.
    let victim = send(
        &svc,
        get(&format!(
            "/authorize?{}",
            pkce_query("https://client.example/cb", VICTIM_CHALLENGE, &[])
        )),
    )
    .await;
    assert!(victim.body.contains("value=\"c1\""), "{victim:?}");
    let refused = send(&svc, tests::token_request("c1", "client-a", None)).await;
    assert!(
        refused.rejection.is_some(),
        "fail closed so far: {refused:?}"
    );
    // The attacker launders c1 onto their own challenge and redeems it.
    let (verifier, challenge) = attacker_pair();
    let _ = send(
        &svc,
        get(&format!(
            "/authorize?{}",
            form(&[
                ("response_type", "code"),
                ("client_id", "client-a"),
                ("redirect_uri", "https://as.example/authorize"),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
                ("code", "c1"),
            ])
        )),
    )
    .await;
    let answer = send(
        &svc,
        post_form(
            "/token",
            &form(&[
                ("grant_type", "authorization_code"),
                ("code", "c1"),
                ("client_id", "client-a"),
                ("redirect_uri", "https://as.example/authorize"),
                ("code_verifier", &verifier),
            ]),
        ),
    )
    .await;
    assert!(
        redeemed.lock().unwrap().is_empty(),
        "required mode bypassed: the attacker redeemed the victim's code c1: {} {}",
        answer.status,
        answer.body
    );
}

/// Held: a value the attacker puts in the redirect_uri itself is never the
/// delivery's code (the targets end before the delivery's parameters), and
/// a second code beside the upstream's is withheld.
#[tokio::test]
async fn held_a_code_inside_the_redirect_uri_is_not_laundered() {
    for (extra, want) in [
        ("&error=access_denied", Rejection::ForeignDelivery),
        ("&code=real", Rejection::UncertainDelivery),
    ] {
        let store = MemoryStore::new();
        let extra: &'static str = extra;
        let svc = behind(
            PkceLayer::strict().store(store.clone()),
            Arc::new(move |parts, _| {
                let uri = param(parts.uri.query().unwrap_or_default(), "redirect_uri").unwrap();
                redirect(format!("{uri}{extra}&state={}", state_of(parts)).as_bytes())
            }),
        );
        let (_, challenge) = attacker_pair();
        let answer = send(
            &svc,
            get(&format!(
                "/authorize?{}",
                pkce_query("https://client.example/cb?code=chosen", &challenge, &[])
            )),
        )
        .await;
        assert_eq!(answer.rejection, Some(want), "{extra}: {answer:?}");
        assert_eq!(store.stats().await.unwrap().bindings, 0);
    }
}
