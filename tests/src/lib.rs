//! Shared helpers for the workspace tests: a fake legacy authorization
//! server that knows nothing of PKCE, and a client that walks its flows
//! through the middleware.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

pub mod redis;
pub mod tls;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;
use tower_pkce::store::{
    CodeBinding, PendingAuthorization, Redemption, Store, StoreError, StoreKey, StoreStats,
};
use tower_pkce::{PkceLayer, RequestBody, ResponseBody};

/// How the fake server gets from `/authorize` to issuing a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `/authorize` issues the code at once.
    Direct,
    /// `/authorize` shows a login page; `POST /login` (which carries none of
    /// the original parameters, only a server-side transaction id) issues it.
    LoginPage,
    /// `/authorize` shows a consent page whose hidden fields post every
    /// original parameter (the handle in `state` included) back to
    /// `POST /authorize`, which issues the code.
    Consent,
}

#[derive(Debug, Clone)]
struct IssuedCode {
    client_id: String,
    used: bool,
}

#[derive(Debug, Default)]
pub struct ServerState {
    transactions: Mutex<HashMap<String, Vec<(String, String)>>>,
    codes: Mutex<HashMap<String, IssuedCode>>,
    counter: AtomicUsize,
    /// Token requests that reached the server.
    pub token_requests: AtomicUsize,
    /// Authorization requests (any method) that reached the server.
    pub authorize_requests: AtomicUsize,
    /// The next N token requests are answered 502 without using the code.
    pub fail_next_tokens: AtomicUsize,
    /// The last token request body the server saw.
    pub last_token_body: Mutex<Option<String>>,
    /// The last authorization request query (or form) the server saw.
    pub last_authorize_params: Mutex<Vec<(String, String)>>,
}

/// The fake legacy authorization server.
#[derive(Debug, Clone)]
pub struct LegacyServer {
    pub flavor: Flavor,
    pub state: Arc<ServerState>,
}

pub type Body = Full<Bytes>;
pub type Service = BoxCloneSyncService<Request<Body>, Response<ResponseBody<Body>>, Infallible>;

/// The lenient form codec of the example legacy server: the tests' fake
/// server takes what it gets, as legacy servers do.
pub use pkce_proxy::demo::legacy::{encode, parse_form};

pub fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(n, v)| format!("{}={}", encode(n), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn response(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .unwrap()
}

impl LegacyServer {
    pub fn new(flavor: Flavor) -> Self {
        Self {
            flavor,
            state: Arc::new(ServerState::default()),
        }
    }

    pub fn token_requests(&self) -> usize {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    /// The server behind `layer`, as one boxed service.
    pub fn behind<St: Store>(&self, layer: PkceLayer<St>) -> Service {
        let server = self.clone();
        let inner = tower::service_fn(move |req: Request<RequestBody<Body>>| {
            let server = server.clone();
            async move { Ok::<_, Infallible>(server.handle(req).await) }
        });
        BoxCloneSyncService::new(tower::ServiceBuilder::new().layer(layer).service(inner))
    }

    fn next_id(&self, prefix: &str) -> String {
        let n = self.state.counter.fetch_add(1, Ordering::SeqCst);
        format!("{prefix}-{n}-SplxlOBeZQQYbYS6WxSbIA")
    }

    async fn handle(&self, req: Request<RequestBody<Body>>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let body = String::from_utf8_lossy(&body).into_owned();
        let query = parts.uri.query().unwrap_or("").to_owned();
        // Loose routing, like many real servers: case and a trailing slash
        // do not matter.
        let path = parts.uri.path().to_ascii_lowercase();
        let path = path.trim_end_matches('/');
        match path {
            "/authorize" => {
                self.state.authorize_requests.fetch_add(1, Ordering::SeqCst);
                let mut params = parse_form(&query);
                if parts.method == Method::POST {
                    for (n, v) in parse_form(&body) {
                        if param(&params, &n).is_none() {
                            params.push((n, v));
                        }
                    }
                }
                *self.state.last_authorize_params.lock().unwrap() = params.clone();
                self.authorize(&parts.method, params)
            }
            "/login" => {
                let form = parse_form(&body);
                let txn = param(&form, "txn").unwrap_or_default().to_owned();
                let params = self.state.transactions.lock().unwrap().remove(&txn);
                match params {
                    Some(params) => self.issue(&params),
                    None => response(StatusCode::BAD_REQUEST, "text/plain", "unknown txn"),
                }
            }
            "/token" if parts.method == Method::OPTIONS => {
                // A CORS preflight, answered as a CORS-aware server would.
                let mut r = response(StatusCode::NO_CONTENT, "text/plain", Bytes::new());
                if let Some(origin) = parts.headers.get(header::ORIGIN) {
                    r.headers_mut()
                        .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
                }
                r
            }
            "/token" => self.token(&body),
            p if p.contains("/.well-known/openid-configuration")
                || p.contains("/.well-known/oauth-authorization-server") =>
            {
                response(
                    StatusCode::OK,
                    "application/json",
                    serde_json::json!({
                        "issuer": "https://as.example",
                        "authorization_endpoint": "https://as.example/authorize",
                        "token_endpoint": "https://as.example/token",
                        "code_challenge_methods_supported": ["plain"],
                        "pushed_authorization_request_endpoint": "https://as.example/par",
                        "response_types_supported": ["code"],
                    })
                    .to_string(),
                )
            }
            _ => response(StatusCode::OK, "text/plain", "other"),
        }
    }

    fn authorize(&self, method: &Method, params: Vec<(String, String)>) -> Response<Body> {
        match self.flavor {
            Flavor::Direct => self.issue(&params),
            Flavor::LoginPage => {
                let txn = self.next_id("txn");
                self.state
                    .transactions
                    .lock()
                    .unwrap()
                    .insert(txn.clone(), params);
                response(
                    StatusCode::OK,
                    "text/html; charset=utf-8",
                    format!(
                        "<html><body><form method=\"post\" action=\"/login\">\
                         <input type=\"hidden\" name=\"txn\" value=\"{txn}\">\
                         <input name=\"username\"><input type=\"password\" name=\"password\">\
                         <button>Sign in</button></form></body></html>"
                    ),
                )
            }
            Flavor::Consent => {
                if *method == Method::POST && param(&params, "consent") == Some("yes") {
                    return self.issue(&params);
                }
                let mut fields = String::new();
                for (n, v) in &params {
                    fields.push_str(&format!(
                        "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                        html_escape(n),
                        html_escape(v)
                    ));
                }
                response(
                    StatusCode::OK,
                    "text/html; charset=utf-8",
                    format!(
                        "<html><body><form method=\"post\" action=\"/authorize\">{fields}\
                         <button name=\"consent\" value=\"yes\">Allow</button></form></body></html>"
                    ),
                )
            }
        }
    }

    /// Issues a code and delivers it by the request's `response_mode`.
    fn issue(&self, params: &[(String, String)]) -> Response<Body> {
        let code = self.next_id("code");
        let client_id = param(params, "client_id").unwrap_or_default().to_owned();
        self.state.codes.lock().unwrap().insert(
            code.clone(),
            IssuedCode {
                client_id,
                used: false,
            },
        );
        let redirect_uri = param(params, "redirect_uri").unwrap_or("https://client.example/cb");
        let state = param(params, "state");
        match param(params, "response_mode") {
            Some("form_post") => {
                let state_field = state.map_or(String::new(), |s| {
                    format!(
                        "<input type=\"hidden\" name=\"state\" value=\"{}\"/>",
                        html_escape(s)
                    )
                });
                response(
                    StatusCode::OK,
                    "text/html; charset=utf-8",
                    format!(
                        "<!DOCTYPE html><html><head><title>Submit</title></head><body onload=\"document.forms[0].submit()\">\
                         <form method=\"post\" action=\"{}\"><input type=\"hidden\" name=\"code\" value=\"{code}\"/>{state_field}\
                         <input type=\"hidden\" name=\"iss\" value=\"https://as.example\"/></form></body></html>",
                        html_escape(redirect_uri)
                    ),
                )
            }
            mode => {
                let mut pairs = vec![("code", code.as_str())];
                if let Some(s) = state {
                    pairs.push(("state", s));
                }
                pairs.push(("iss", "https://as.example"));
                let sep = if mode == Some("fragment") { '#' } else { '?' };
                Response::builder()
                    .status(StatusCode::FOUND)
                    .header(
                        header::LOCATION,
                        format!("{redirect_uri}{sep}{}", form(&pairs)),
                    )
                    .body(Full::new(Bytes::new()))
                    .unwrap()
            }
        }
    }

    fn token(&self, body: &str) -> Response<Body> {
        self.state.token_requests.fetch_add(1, Ordering::SeqCst);
        *self.state.last_token_body.lock().unwrap() = Some(body.to_owned());
        if self
            .state
            .fail_next_tokens
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return response(StatusCode::BAD_GATEWAY, "text/plain", "upstream trouble");
        }
        let form = parse_form(body);
        let invalid_grant = || {
            response(
                StatusCode::BAD_REQUEST,
                "application/json",
                r#"{"error":"invalid_grant"}"#,
            )
        };
        match param(&form, "grant_type") {
            Some("authorization_code") => {
                let code = param(&form, "code").unwrap_or_default();
                let mut codes = self.state.codes.lock().unwrap();
                match codes.get_mut(code) {
                    Some(issued) if !issued.used => {
                        issued.used = true;
                        if let Some(c) = param(&form, "client_id")
                            && c != issued.client_id
                        {
                            return invalid_grant();
                        }
                    }
                    _ => return invalid_grant(),
                }
                response(
                    StatusCode::OK,
                    "application/json",
                    r#"{"access_token":"at","token_type":"Bearer","refresh_token":"rt"}"#,
                )
            }
            Some("refresh_token") => response(
                StatusCode::OK,
                "application/json",
                r#"{"access_token":"at2","token_type":"Bearer"}"#,
            ),
            _ => response(
                StatusCode::BAD_REQUEST,
                "application/json",
                r#"{"error":"unsupported_grant_type"}"#,
            ),
        }
    }
}

/// A response read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
    pub rejection: Option<tower_pkce::Rejection>,
}

impl Answer {
    pub fn location(&self) -> Option<&str> {
        self.headers.get(header::LOCATION)?.to_str().ok()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The `error` of an RFC 6749 §5.2 body.
    pub fn error(&self) -> Option<String> {
        self.json().get("error")?.as_str().map(str::to_owned)
    }
}

/// Sends one request through `svc` and reads the answer.
pub async fn send(svc: &Service, req: Request<Body>) -> Answer {
    let response = svc.clone().oneshot(req).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    Answer {
        status: parts.status,
        rejection: parts.extensions.get::<tower_pkce::Rejection>().copied(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Full::new(Bytes::new())).unwrap()
}

pub fn post_form(uri: &str, body: &str) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

/// A token request for `code`.
pub fn token_request(code: &str, client_id: &str, verifier: Option<&str>) -> Request<Body> {
    let mut pairs = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("client_id", client_id),
        ("redirect_uri", "https://client.example/cb"),
    ];
    if let Some(v) = verifier {
        pairs.push(("code_verifier", v));
    }
    post_form("/token", &form(&pairs))
}

/// Extracts `code` and `state` from where the client would receive them:
/// a Location query or fragment, or a form_post page.
pub fn delivered(answer: &Answer) -> Option<(String, Option<String>)> {
    if let Some(loc) = answer.location() {
        let params = match loc.split_once('#') {
            Some((_, frag)) if frag.contains("code=") || frag.contains("error=") => {
                parse_form(frag)
            }
            _ => {
                let query = loc.split_once('?')?.1;
                let query = query.split('#').next().unwrap_or("");
                parse_form(query)
            }
        };
        let code = param(&params, "code")?.to_owned();
        return Some((code, param(&params, "state").map(str::to_owned)));
    }
    let field = |name: &str| -> Option<String> {
        let marker = format!("name=\"{name}\" value=\"");
        let start = answer.body.find(&marker)? + marker.len();
        let end = answer.body[start..].find('"')? + start;
        Some(
            answer.body[start..end]
                .replace("&quot;", "\"")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&#39;", "'")
                .replace("&amp;", "&"),
        )
    };
    Some((field("code")?, field("state")))
}

/// The value of a hidden field in an HTML page.
pub fn hidden_field(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(
        html[start..end]
            .replace("&amp;", "&")
            .replace("&quot;", "\""),
    )
}

/// Walks the flow of `flavor` from an authorization request with `query`
/// (already encoded) to the answer that carries the code.
pub async fn walk(svc: &Service, flavor: Flavor, query: &str) -> Answer {
    let first = send(svc, get(&format!("/authorize?{query}"))).await;
    match flavor {
        Flavor::Direct => first,
        Flavor::LoginPage => {
            if first.status != StatusCode::OK {
                return first;
            }
            let txn = hidden_field(&first.body, "txn").expect("login page has a txn");
            send(
                svc,
                post_form(
                    "/login",
                    &form(&[("txn", &txn), ("username", "alice"), ("password", "pw")]),
                ),
            )
            .await
        }
        Flavor::Consent => {
            if first.status != StatusCode::OK {
                return first;
            }
            // The browser posts every hidden field back, with consent.
            let mut pairs: Vec<(String, String)> = Vec::new();
            let mut rest = first.body.as_str();
            while let Some(i) = rest.find("<input type=\"hidden\" name=\"") {
                rest = &rest[i + "<input type=\"hidden\" name=\"".len()..];
                let name_end = rest.find('"').unwrap();
                let name = rest[..name_end].to_owned();
                let value = hidden_field(&format!("name=\"{}", &rest), &name).unwrap_or_default();
                pairs.push((name, value));
            }
            pairs.push(("consent".into(), "yes".into()));
            let refs: Vec<(&str, &str)> = pairs
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            send(svc, post_form("/authorize", &form(&refs))).await
        }
    }
}

/// A body of frames that are all ready at once, with no known length: a
/// client sends it chunked, as if it streamed.
#[derive(Debug)]
pub struct ReadyFrames(pub std::collections::VecDeque<http_body::Frame<Bytes>>);

impl ReadyFrames {
    /// Data frames, one per chunk.
    pub fn data(chunks: impl IntoIterator<Item = Bytes>) -> Self {
        Self(chunks.into_iter().map(http_body::Frame::data).collect())
    }
}

impl http_body::Body for ReadyFrames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
}

/// A store that cannot tell that it would refuse without asking: it keeps
/// [`Store::admission_hint`]'s default, so the capacity bound is met only
/// when a record is written. With `unavailable` set, writes of new records
/// fail as an unreachable backend's do.
#[derive(Debug, Clone)]
pub struct Unhinted<S> {
    pub inner: S,
    pub unavailable: Arc<std::sync::atomic::AtomicBool>,
}

impl<S> Unhinted<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            unavailable: Arc::default(),
        }
    }

    /// `write`, unless new records are refused: then it is never called
    /// (the memory store writes when called, not when polled).
    fn write<F: Future<Output = Result<(), StoreError>> + Send>(
        &self,
        write: impl FnOnce() -> F,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let write = (!self.unavailable.load(Ordering::SeqCst)).then(write);
        async move {
            match write {
                Some(write) => write.await,
                None => Err(StoreError::Unavailable("the backend is away".into())),
            }
        }
    }
}

impl<S: Store> Store for Unhinted<S> {
    fn insert_pending(
        &self,
        key: &StoreKey,
        record: PendingAuthorization,
        ttl: std::time::Duration,
        source: Option<tower_pkce::Source>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.write(move || self.inner.insert_pending(key, record, ttl, source))
    }

    fn get_pending(
        &self,
        key: &StoreKey,
    ) -> impl Future<Output = Result<Option<PendingAuthorization>, StoreError>> + Send {
        self.inner.get_pending(key)
    }

    fn take_pending(
        &self,
        key: &StoreKey,
    ) -> impl Future<Output = Result<Option<PendingAuthorization>, StoreError>> + Send {
        self.inner.take_pending(key)
    }

    fn insert_binding(
        &self,
        key: &StoreKey,
        binding: CodeBinding,
        ttl: std::time::Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.insert_binding(key, binding, ttl)
    }

    fn admit_binding(
        &self,
        key: &StoreKey,
        binding: CodeBinding,
        ttl: std::time::Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.write(move || self.inner.admit_binding(key, binding, ttl))
    }

    fn redeem(
        &self,
        key: &StoreKey,
    ) -> impl Future<Output = Result<Redemption, StoreError>> + Send {
        self.inner.redeem(key)
    }

    fn restore(
        &self,
        key: &StoreKey,
        binding: CodeBinding,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.restore(key, binding)
    }

    fn stats(&self) -> impl Future<Output = Result<StoreStats, StoreError>> + Send {
        self.inner.stats()
    }
}
