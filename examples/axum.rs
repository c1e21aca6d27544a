//! A toy OAuth 2.0 authorization server in axum that knows nothing of PKCE,
//! made PKCE-safe by one layer.
//!
//! Run it with `cargo run -p examples --example axum` (on 127.0.0.1:3000, or
//! the port in `PORT`), then try
//!
//! ```sh
//! curl -i 'http://127.0.0.1:3000/authorize?response_type=code&client_id=app&redirect_uri=https://app.example/cb'
//! ```
//!
//! which the layer refuses (400: no `code_challenge`). The tests below walk
//! a whole sign-in through it: `cargo test -p examples --example axum`.
//!
//! It is a toy: any user name signs in, there is one client, and everything
//! lives in memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{Form, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tower_pkce::PkceLayer;

/// The one registered client, and the one place it may receive codes.
const CLIENT_ID: &str = "app";
const REDIRECT_URI: &str = "https://app.example/cb";

/// The whole app: the server's routes, with PKCE added in front of them.
fn app(server: Arc<AuthServer>) -> Router {
    Router::new()
        .route("/authorize", get(authorize))
        .route("/login", post(login))
        .route("/token", post(token))
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .layer(PkceLayer::strict())
        .with_state(server)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| std::io::Error::other(format!("PORT is not a port: {port:?}")))?,
        Err(_) => 3000,
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    axum::serve(listener, app(AuthServer::new(format!("http://{addr}")))).await
}

/// What the server remembers: sign-ins in progress and codes issued.
#[derive(Debug)]
struct AuthServer {
    issuer: String,
    sign_ins: Mutex<HashMap<String, Grant>>,
    codes: Mutex<HashMap<String, Grant>>,
    token_requests: AtomicUsize,
}

impl AuthServer {
    fn new(issuer: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            issuer: issuer.into(),
            sign_ins: Mutex::default(),
            codes: Mutex::default(),
            token_requests: AtomicUsize::new(0),
        })
    }
}

/// An authorization request, waiting for its user or for its code's
/// exchange.
#[derive(Debug)]
struct Grant {
    client_id: String,
    redirect_uri: String,
    state: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AuthorizeParams {
    response_type: String,
    client_id: String,
    redirect_uri: String,
    state: Option<String>,
}

async fn authorize(
    State(server): State<Arc<AuthServer>>,
    Query(params): Query<AuthorizeParams>,
) -> Result<Response, StatusCode> {
    // Never redirect to an unregistered redirect_uri, not even an error.
    if params.client_id != CLIENT_ID || params.redirect_uri != REDIRECT_URI {
        return Ok((StatusCode::BAD_REQUEST, "unknown client or redirect_uri\n").into_response());
    }
    if params.response_type != "code" {
        let location = format!(
            "{REDIRECT_URI}?error=unsupported_response_type{}",
            state_param(params.state.as_deref())
        );
        return Ok(Redirect::to(&location).into_response());
    }
    let txn = random_token()?;
    let sign_in = Grant {
        client_id: params.client_id,
        redirect_uri: params.redirect_uri,
        state: params.state,
    };
    lock(&server.sign_ins).insert(txn.clone(), sign_in);
    Ok(Html(format!(
        "<!doctype html><title>Sign in</title>\
         <form method=\"post\" action=\"/login\">\
         <input type=\"hidden\" name=\"txn\" value=\"{txn}\">\
         <label>User <input name=\"username\"></label>\
         <label>Password <input type=\"password\" name=\"password\"></label>\
         <button>Sign in</button></form>\n"
    ))
    .into_response())
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    txn: String,
    username: String,
}

async fn login(
    State(server): State<Arc<AuthServer>>,
    Form(form): Form<LoginForm>,
) -> Result<Response, StatusCode> {
    let Some(grant) = lock(&server.sign_ins).remove(&form.txn) else {
        return Ok((StatusCode::BAD_REQUEST, "unknown sign-in\n").into_response());
    };
    if form.username.is_empty() {
        return Ok((StatusCode::BAD_REQUEST, "user name required\n").into_response());
    }
    let code = random_token()?;
    let location = format!(
        "{}?code={code}{}",
        grant.redirect_uri,
        state_param(grant.state.as_deref())
    );
    lock(&server.codes).insert(code, grant);
    Ok(Redirect::to(&location).into_response())
}

#[derive(Debug, Deserialize)]
struct TokenRequest {
    grant_type: String,
    code: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
}

async fn token(
    State(server): State<Arc<AuthServer>>,
    Form(request): Form<TokenRequest>,
) -> Result<Response, StatusCode> {
    server.token_requests.fetch_add(1, Ordering::SeqCst);
    if request.grant_type != "authorization_code" {
        return Ok(token_error("unsupported_grant_type"));
    }
    // Removed on first use, whatever the outcome: a code is good once.
    let grant = request
        .code
        .and_then(|code| lock(&server.codes).remove(&code));
    let Some(grant) = grant else {
        return Ok(token_error("invalid_grant"));
    };
    if request.client_id.as_deref() != Some(&grant.client_id)
        || request.redirect_uri.as_deref() != Some(&grant.redirect_uri)
    {
        return Ok(token_error("invalid_grant"));
    }
    let body = json!({
        "access_token": random_token()?,
        "token_type": "Bearer",
        "expires_in": 3600,
    });
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response())
}

async fn metadata(State(server): State<Arc<AuthServer>>) -> Json<serde_json::Value> {
    let issuer = &server.issuer;
    Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code"],
        "token_endpoint_auth_methods_supported": ["none"],
    }))
}

fn token_error(error: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({ "error": error })),
    )
        .into_response()
}

/// `&state=…`, percent-encoded, or nothing when the client sent none.
fn state_param(state: Option<&str>) -> String {
    let Some(state) = state else {
        return String::new();
    };
    let mut out = String::from("&state=");
    for b in state.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// 128 random bits, hex-encoded: sign-in ids, codes and tokens.
fn random_token() -> Result<String, StatusCode> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps stay consistent even if a handler panicked holding them.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use axum::body::{Body, to_bytes};
    use axum::http::{HeaderMap, Request, Uri};
    use serde_json::Value;
    use tower::ServiceExt;
    use tower_pkce::{ChallengeMethod, CodeChallenge, CodeVerifier};

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    struct Reply {
        status: StatusCode,
        headers: HeaderMap,
        body: String,
    }

    async fn send(
        app: &Router,
        request: Request<Body>,
    ) -> Result<Reply, Box<dyn std::error::Error>> {
        let response = app.clone().oneshot(request).await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = to_bytes(response.into_body(), 1 << 20).await?;
        Ok(Reply {
            status,
            headers,
            body: String::from_utf8(body.to_vec())?,
        })
    }

    fn post_form(uri: &str, form: &str) -> Result<Request<Body>, axum::http::Error> {
        Request::post(uri)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(form.to_owned()))
    }

    fn authorize_uri(challenge: Option<&CodeChallenge>) -> String {
        let mut uri = format!(
            "/authorize?response_type=code&client_id={CLIENT_ID}\
             &redirect_uri=https%3A%2F%2Fapp.example%2Fcb&state=client-state"
        );
        if let Some(challenge) = challenge {
            uri.push_str("&code_challenge_method=S256&code_challenge=");
            uri.push_str(challenge.as_str());
        }
        uri
    }

    /// Signs in with an S256 challenge and returns the code and the `state`
    /// the client gets back.
    async fn sign_in(
        app: &Router,
        challenge: &CodeChallenge,
    ) -> Result<(String, String), Box<dyn std::error::Error>> {
        let page = send(
            app,
            Request::get(authorize_uri(Some(challenge))).body(Body::empty())?,
        )
        .await?;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let txn = page
            .body
            .split_once("name=\"txn\" value=\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(txn, _)| txn.to_owned())
            .ok_or("no txn in the login page")?;

        let login = send(
            app,
            post_form("/login", &format!("txn={txn}&username=alice&password=pw"))?,
        )
        .await?;
        assert_eq!(login.status, StatusCode::SEE_OTHER, "{}", login.body);
        let location: Uri = login
            .headers
            .get(header::LOCATION)
            .ok_or("no Location")?
            .to_str()?
            .parse()?;
        assert!(location.to_string().starts_with(REDIRECT_URI), "{location}");
        let Query(mut params) = Query::<HashMap<String, String>>::try_from_uri(&location)?;
        let code = params.remove("code").ok_or("no code")?;
        let state = params.remove("state").ok_or("no state")?;
        Ok((code, state))
    }

    fn token_request(
        code: &str,
        verifier: &CodeVerifier,
    ) -> Result<Request<Body>, axum::http::Error> {
        post_form(
            "/token",
            &format!(
                "grant_type=authorization_code&code={code}&client_id={CLIENT_ID}\
                 &redirect_uri=https%3A%2F%2Fapp.example%2Fcb&code_verifier={}",
                verifier.secret()
            ),
        )
    }

    #[tokio::test]
    async fn a_code_is_exchanged_only_with_its_verifier() -> TestResult {
        let server = AuthServer::new("http://localhost");
        let app = app(server.clone());
        let verifier = CodeVerifier::generate();
        let challenge = CodeChallenge::from_verifier(&verifier, ChallengeMethod::S256);

        let (code, state) = sign_in(&app, &challenge).await?;
        assert_eq!(
            state, "client-state",
            "the layer puts the client's state back"
        );

        let wrong = send(&app, token_request(&code, &CodeVerifier::generate())?).await?;
        assert_eq!(wrong.status, StatusCode::BAD_REQUEST, "{}", wrong.body);
        let error: Value = serde_json::from_str(&wrong.body)?;
        assert_eq!(error["error"], "invalid_grant");
        assert_eq!(
            server.token_requests.load(Ordering::SeqCst),
            0,
            "a wrong verifier never reaches the token handler"
        );

        let right = send(&app, token_request(&code, &verifier)?).await?;
        assert_eq!(right.status, StatusCode::OK, "{}", right.body);
        let token: Value = serde_json::from_str(&right.body)?;
        assert!(
            token["access_token"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        );
        assert_eq!(token["token_type"], "Bearer");
        assert_eq!(server.token_requests.load(Ordering::SeqCst), 1);

        let again = send(&app, token_request(&code, &verifier)?).await?;
        assert_eq!(again.status, StatusCode::BAD_REQUEST, "a code is good once");
        Ok(())
    }

    #[tokio::test]
    async fn an_authorization_request_without_a_challenge_is_refused() -> TestResult {
        let server = AuthServer::new("http://localhost");
        let app = app(server.clone());
        let reply = send(&app, Request::get(authorize_uri(None)).body(Body::empty())?).await?;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
        assert!(reply.headers.get(header::LOCATION).is_none());
        assert!(lock(&server.sign_ins).is_empty(), "the server never saw it");
        Ok(())
    }

    #[tokio::test]
    async fn metadata_advertises_s256() -> TestResult {
        let app = app(AuthServer::new("http://localhost"));
        let reply = send(
            &app,
            Request::get("/.well-known/oauth-authorization-server").body(Body::empty())?,
        )
        .await?;
        assert_eq!(reply.status, StatusCode::OK);
        let metadata: Value = serde_json::from_str(&reply.body)?;
        assert_eq!(
            metadata["code_challenge_methods_supported"],
            json!(["S256"])
        );
        assert_eq!(metadata["token_endpoint"], "http://localhost/token");
        Ok(())
    }

    #[test]
    fn the_readme_shows_this_app() -> TestResult {
        let source = include_str!("axum.rs");
        let start = source.find("fn app(").ok_or("no fn app")?;
        let end = start + source[start..].find("\n}\n").ok_or("no end of fn app")? + 3;
        assert!(
            include_str!("../README.md").contains(&source[start..end]),
            "README's axum snippet differs from examples/axum.rs's app()"
        );
        Ok(())
    }
}
