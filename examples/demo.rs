//! The whole PKCE flow through `tower-pkce`, in one process: a legacy
//! authorization server with a login page (it knows nothing of PKCE), the
//! layer in front of it, and a client that signs in and redeems its code.
//!
//! `cargo run -p examples --example demo`

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};
use tower_pkce::{ChallengeMethod, CodeChallenge, CodeVerifier, PkceLayer, RequestBody};

/// A server that shows a login page at `/authorize` and issues the code
/// from `POST /login`, a request that carries none of the original
/// parameters.
#[derive(Clone, Default)]
struct LegacyServer {
    logins: Arc<Mutex<HashMap<String, (String, String)>>>,
    codes: Arc<Mutex<HashMap<String, bool>>>,
}

fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (n, v) = pair.split_once('=')?;
        (n == name).then(|| v.to_owned())
    })
}

impl LegacyServer {
    async fn handle(
        self,
        req: Request<RequestBody<Full<Bytes>>>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body = String::from_utf8_lossy(&body).into_owned();
        let mut response = Response::new(Full::new(Bytes::new()));
        match path.as_str() {
            "/authorize" => {
                let redirect = param(&query, "redirect_uri").unwrap_or_default();
                let state = param(&query, "state").unwrap_or_default();
                let txn = format!("txn{}", self.logins.lock().map(|l| l.len()).unwrap_or(0));
                if let Ok(mut logins) = self.logins.lock() {
                    logins.insert(txn.clone(), (redirect, state));
                }
                *response.body_mut() = Full::new(Bytes::from(format!(
                    "<form method=post action=/login><input type=hidden name=txn value={txn}></form>"
                )));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    "text/html"
                        .parse()
                        .unwrap_or(header::HeaderValue::from_static("text/html")),
                );
            }
            "/login" => {
                let txn = param(&body, "txn").unwrap_or_default();
                let found = self.logins.lock().ok().and_then(|mut l| l.remove(&txn));
                if let Some((redirect, state)) = found {
                    let code = format!("legacy-code-{txn}");
                    if let Ok(mut codes) = self.codes.lock() {
                        codes.insert(code.clone(), false);
                    }
                    *response.status_mut() = StatusCode::FOUND;
                    let location = format!("{redirect}?code={code}&state={state}");
                    if let Ok(value) = location.parse() {
                        response.headers_mut().insert(header::LOCATION, value);
                    }
                }
            }
            "/token" => {
                let code = param(&body, "code").unwrap_or_default();
                let fresh = self
                    .codes
                    .lock()
                    .ok()
                    .and_then(|mut c| c.insert(code, true))
                    == Some(false);
                let json = if fresh {
                    r#"{"access_token":"2YotnFZFEjr1zCsicMWpAA","token_type":"Bearer"}"#
                } else {
                    *response.status_mut() = StatusCode::BAD_REQUEST;
                    r#"{"error":"invalid_grant"}"#
                };
                *response.body_mut() = Full::new(Bytes::from(json));
            }
            _ => *response.status_mut() = StatusCode::NOT_FOUND,
        }
        Ok(response)
    }
}

fn form_post(uri: &str, body: String) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(Bytes::from(body)));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = uri.parse().unwrap_or_default();
    req.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    req
}

async fn show<S>(
    svc: &mut S,
    req: Request<Full<Bytes>>,
) -> Result<(StatusCode, String, String), BoxError>
where
    S: Service<
            Request<Full<Bytes>>,
            Response = Response<tower_pkce::ResponseBody<Full<Bytes>>>,
            Error = Infallible,
        >,
{
    let response = svc.ready().await?.call(req).await?;
    let status = response.status();
    let location = response
        .headers()
        .get(header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((
        status,
        location,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let server = LegacyServer::default();
    let mut svc = ServiceBuilder::new()
        .layer(PkceLayer::strict())
        .service_fn(move |req| server.clone().handle(req));

    let verifier = CodeVerifier::generate();
    let challenge = CodeChallenge::from_verifier(&verifier, ChallengeMethod::S256);
    println!(
        "1. client made a verifier and its S256 challenge {}",
        challenge.as_str()
    );

    let authorize = format!(
        "/authorize?response_type=code&client_id=demo&redirect_uri=https://client.example/cb&state=xyz&code_challenge={}&code_challenge_method=S256",
        challenge.as_str()
    );
    let (status, _, page) = show(&mut svc, Request::get(&authorize).body(Full::default())?).await?;
    println!("2. GET /authorize -> {status}: challenge recorded, login page shown");
    let txn = page
        .split("value=")
        .nth(1)
        .and_then(|v| v.split('>').next())
        .unwrap_or("")
        .to_owned();

    let (status, location, _) = show(&mut svc, form_post("/login", format!("txn={txn}"))).await?;
    println!("3. POST /login -> {status}: code bound to the challenge, state restored");
    let query = location.split_once('?').map(|(_, q)| q).unwrap_or("");
    let code = param(query, "code").unwrap_or_default();
    println!(
        "   state back at the client: {}",
        param(query, "state").unwrap_or_default()
    );

    let wrong = CodeVerifier::generate();
    let token = |v: &CodeVerifier| {
        format!(
            "grant_type=authorization_code&code={code}&client_id=demo&redirect_uri=https://client.example/cb&code_verifier={}",
            v.secret()
        )
    };
    let (status, _, body) = show(&mut svc, form_post("/token", token(&wrong))).await?;
    println!("4. POST /token with a wrong verifier -> {status} {body}");
    let (status, _, body) = show(&mut svc, form_post("/token", token(&verifier))).await?;
    println!("5. POST /token with the right verifier -> {status} {body}");
    let (status, _, body) = show(&mut svc, form_post("/token", token(&verifier))).await?;
    println!("6. POST /token replayed -> {status} {body}");
    Ok(())
}
