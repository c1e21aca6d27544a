//! `pkce-proxy demo`: the example legacy server, the proxy in front of it,
//! and a client that walks a whole flow, all on free loopback ports.

pub mod legacy;

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower_pkce::{ChallengeMethod, CodeChallenge, CodeVerifier};

use crate::config::{Config, RawSettings};

use self::legacy::{LegacyServer, encode, parse_form};

/// A response read whole.
#[derive(Debug)]
pub struct Fetched {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: http::HeaderMap,
    /// The body as text.
    pub body: String,
}

impl Fetched {
    /// The `Location` header.
    pub fn location(&self) -> Option<&str> {
        self.headers.get(header::LOCATION)?.to_str().ok()
    }
}

/// A plain HTTP/1.1 client for loopback.
#[derive(Debug, Clone)]
pub struct HttpClient(Client<HttpConnector, Full<Bytes>>);

impl Default for HttpClient {
    fn default() -> Self {
        Self(Client::builder(TokioExecutor::new()).build_http())
    }
}

impl HttpClient {
    /// Sends `method` to `url` with an optional form body.
    ///
    /// # Errors
    ///
    /// When the request cannot be sent or its body read.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        form: Option<String>,
    ) -> Result<Fetched, String> {
        let mut builder = Request::builder().method(method).uri(url);
        if form.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        let req = builder
            .body(Full::new(Bytes::from(form.unwrap_or_default())))
            .map_err(|e| e.to_string())?;
        let response = self
            .0
            .request(req)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Fetched {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

fn hidden_field(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html.get(start..)?.find('"')? + start;
    Some(html.get(start..end)?.to_owned())
}

fn metric(text: &str, name: &str) -> String {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or("?")
        .to_owned()
}

fn check(ok: bool, what: &str) -> Result<(), String> {
    if ok { Ok(()) } else { Err(what.to_owned()) }
}

/// Runs the demo and prints each step.
///
/// # Errors
///
/// When a step does not behave as PKCE requires.
pub async fn run() -> Result<(), String> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let legacy = LegacyServer::start(loopback)
        .await
        .map_err(|e| format!("cannot start the example server: {e}"))?;
    let config = Config::resolve(&RawSettings {
        upstream: Some(format!("http://{}", legacy.addr)),
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        ..RawSettings::default()
    })
    .map_err(|e| e.to_string())?;
    let proxy = crate::server::start(config)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "legacy server (knows nothing of PKCE) on http://{}",
        legacy.addr
    );
    println!(
        "pkce-proxy in front of it on http://{} (admin http://{})\n",
        proxy.addr, proxy.admin_addr
    );
    let result = walk(proxy.addr, proxy.admin_addr, &legacy).await;
    proxy.shutdown().await;
    legacy.shutdown().await;
    result?;
    println!("\ndemo complete: the code was only redeemable with its verifier");
    Ok(())
}

async fn walk(proxy: SocketAddr, admin: SocketAddr, legacy: &LegacyServer) -> Result<(), String> {
    let client = HttpClient::default();
    let base = format!("http://{proxy}");
    let verifier = CodeVerifier::generate();
    let challenge = CodeChallenge::from_verifier(&verifier, ChallengeMethod::S256);
    let redirect_uri = "https://client.example/callback";

    let query = format!(
        "response_type=code&client_id=demo-app&redirect_uri={}&state=xyz&code_challenge={}&code_challenge_method=S256",
        encode(redirect_uri),
        challenge.as_str()
    );
    let refused = client
        .send(
            Method::GET,
            &format!(
                "{base}/authorize?response_type=code&client_id=demo-app&redirect_uri={}",
                encode(redirect_uri)
            ),
            None,
        )
        .await?;
    println!(
        "0. GET /authorize without code_challenge -> {}: refused by the proxy",
        refused.status
    );
    check(
        refused.status == StatusCode::BAD_REQUEST,
        "a request without PKCE was not refused",
    )?;

    let page = client
        .send(Method::GET, &format!("{base}/authorize?{query}"), None)
        .await?;
    let metrics = client
        .send(Method::GET, &format!("http://{admin}/metrics"), None)
        .await?;
    println!(
        "1. GET /authorize with an S256 challenge -> {}: challenge recorded (pending: {}), the server shows its login page",
        page.status,
        metric(
            &metrics.body,
            "pkce_proxy_store_entries{family=\"pending\"}"
        )
    );
    check(
        page.status == StatusCode::OK,
        "the login page did not appear",
    )?;
    let txn = hidden_field(&page.body, "txn").ok_or("the login page has no txn field")?;

    let login = client
        .send(
            Method::POST,
            &format!("{base}/login"),
            Some(format!(
                "txn={}&username=alice&password=secret",
                encode(&txn)
            )),
        )
        .await?;
    let location = login.location().unwrap_or_default().to_owned();
    let params = parse_form(location.split_once('?').map_or("", |(_, q)| q));
    let get = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let code = get("code").ok_or("no code in the redirect")?;
    let metrics = client
        .send(Method::GET, &format!("http://{admin}/metrics"), None)
        .await?;
    println!(
        "2. POST /login -> {}: the code is bound to the challenge (bindings: {}); state back at the client: {:?}",
        login.status,
        metric(
            &metrics.body,
            "pkce_proxy_store_entries{family=\"bindings\"}"
        ),
        get("state").unwrap_or_default()
    );
    check(
        get("state").as_deref() == Some("xyz"),
        "the client's state did not come back",
    )?;

    let token = |v: &str| {
        format!(
            "grant_type=authorization_code&code={}&client_id=demo-app&redirect_uri={}&code_verifier={v}",
            encode(&code),
            encode(redirect_uri)
        )
    };
    let wrong = CodeVerifier::generate();
    let refused = client
        .send(
            Method::POST,
            &format!("{base}/token"),
            Some(token(wrong.secret())),
        )
        .await?;
    println!(
        "3. POST /token with a wrong verifier -> {} {}",
        refused.status, refused.body
    );
    check(
        refused.status == StatusCode::BAD_REQUEST,
        "a wrong verifier was not refused",
    )?;
    check(
        legacy
            .counters
            .token
            .load(std::sync::atomic::Ordering::SeqCst)
            == 0,
        "the refused request reached the server",
    )?;

    let issued = client
        .send(
            Method::POST,
            &format!("{base}/token"),
            Some(token(verifier.secret())),
        )
        .await?;
    let json: serde_json::Value = serde_json::from_str(&issued.body).unwrap_or_default();
    println!(
        "4. POST /token with the right verifier -> {}: token issued ({})",
        issued.status,
        json.get("token_type")
            .and_then(|t| t.as_str())
            .unwrap_or("?")
    );
    check(
        issued.status == StatusCode::OK,
        "the right verifier was refused",
    )?;

    let replay = client
        .send(
            Method::POST,
            &format!("{base}/token"),
            Some(token(verifier.secret())),
        )
        .await?;
    println!(
        "5. POST /token again (replay) -> {} {}",
        replay.status, replay.body
    );
    check(
        replay.status == StatusCode::BAD_REQUEST,
        "a replayed code was not refused",
    )?;
    println!(
        "   token requests that reached the server: {} of 3",
        legacy
            .counters
            .token
            .load(std::sync::atomic::Ordering::SeqCst)
    );
    Ok(())
}
