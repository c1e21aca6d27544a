//! Compressed pages: a gzip `form_post` page is decoded, rewritten and sent
//! uncompressed; a compressed page without a code passes byte for byte.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::convert::Infallible;
use std::io::Write;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use tests::{Body, Service, delivered, form, get, parse_form, send, token_request};
use tower::util::BoxCloneSyncService;
use tower_pkce::{PkceLayer, RequestBody};

const RFC_VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const RFC_CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn gzip_html(status: StatusCode, page: &str) -> Response<Body> {
    let body = gzip(page.as_bytes());
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .header(header::CONTENT_ENCODING, "gzip")
        .header(header::CONTENT_LENGTH, body.len())
        .header(header::ETAG, "\"v1\"")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// `/authorize` answers with a gzip form_post page that carries the state it
/// was given; `/page` with a gzip page that mentions a handle-like string
/// but holds no code; `/token` accepts anything.
fn server() -> Service {
    let inner = tower::service_fn(|req: Request<RequestBody<Body>>| async move {
        let path = req.uri().path().to_owned();
        let params = parse_form(req.uri().query().unwrap_or(""));
        let response = match path.as_str() {
            "/authorize" => {
                let state = params
                    .iter()
                    .find(|(n, _)| n == "state")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                gzip_html(
                    StatusCode::OK,
                    &format!(
                        "<html><body onload=\"document.forms[0].submit()\"><form method=\"post\" \
                         action=\"https://client.example/cb\"><input type=\"hidden\" name=\"code\" \
                         value=\"gz-code-1\"/><input type=\"hidden\" name=\"state\" value=\"{state}\"/>\
                         </form></body></html>"
                    ),
                )
            }
            "/page" => gzip_html(
                StatusCode::OK,
                "<p>pkce.AAAAAAAAAAAAAAAAAAAAAA is just text</p>",
            ),
            _ => Response::new(Full::new(Bytes::from_static(b"{\"access_token\":\"at\"}"))),
        };
        Ok::<_, Infallible>(response)
    });
    BoxCloneSyncService::new(
        tower::ServiceBuilder::new()
            .layer(PkceLayer::strict())
            .service(inner),
    )
}

#[tokio::test]
async fn gzip_form_post_is_rewritten_uncompressed() {
    let svc = server();
    let query = form(&[
        ("response_type", "code"),
        ("client_id", "client-a"),
        ("redirect_uri", "https://client.example/cb"),
        ("code_challenge", RFC_CHALLENGE),
        ("code_challenge_method", "S256"),
        ("state", "s&1"),
        ("response_mode", "form_post"),
    ]);
    let answer = send(&svc, get(&format!("/authorize?{query}"))).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        answer.headers.get(header::CONTENT_ENCODING).is_none(),
        "{answer:?}"
    );
    assert!(answer.headers.get(header::ETAG).is_none());
    assert_eq!(
        answer
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()),
        Some(answer.body.len().to_string().as_str())
    );
    let (code, state) = delivered(&answer).unwrap();
    assert_eq!(code, "gz-code-1");
    assert_eq!(state.as_deref(), Some("s&1"));
    let ok = send(&svc, token_request(&code, "client-a", Some(RFC_VERIFIER))).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
}

#[tokio::test]
async fn compressed_page_without_code_passes_byte_for_byte() {
    let svc = server();
    let response = tower::ServiceExt::oneshot(svc, get("/page")).await.unwrap();
    assert_eq!(
        response
            .headers()
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok()),
        Some("gzip")
    );
    assert_eq!(
        response
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok()),
        Some("\"v1\"")
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body,
        Bytes::from(gzip(b"<p>pkce.AAAAAAAAAAAAAAAAAAAAAA is just text</p>"))
    );
}

#[tokio::test]
async fn grant_type_spellings_are_all_checked() {
    let svc = server();
    for grant in [
        "Authorization_Code",
        " authorization_code",
        "authorization%5Fcode",
    ] {
        let body = format!("grant_type={grant}&code=never-bound&client_id=client-a");
        let answer = send(&svc, tests::post_form("/token", &body)).await;
        assert_eq!(
            answer.rejection,
            Some(tower_pkce::Rejection::UnboundCode),
            "{grant}"
        );
    }
}
