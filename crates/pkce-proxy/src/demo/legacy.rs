//! An example legacy authorization server: it knows nothing of PKCE. It
//! shows a login page at `/authorize`, issues the code from `POST /login`
//! (a request that carries none of the original parameters), and delivers
//! it by redirect, fragment or `form_post`. The demo and the end-to-end
//! tests put the proxy in front of it.
//!
//! It is an example, not an authorization server to deploy: any user name
//! signs in.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower_pkce::CodeVerifier;

use crate::server::{serve, text as respond};

/// What the server has seen, for tests and the demo.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests to the authorization endpoint.
    pub authorize: AtomicUsize,
    /// Requests to the token endpoint.
    pub token: AtomicUsize,
    /// Codes issued.
    pub codes_issued: AtomicUsize,
}

#[derive(Debug, Clone)]
struct Transaction {
    client_id: String,
    redirect_uri: String,
    state: Option<String>,
    response_mode: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    transactions: Mutex<HashMap<String, Transaction>>,
    codes: Mutex<HashMap<String, (String, bool)>>,
    refresh_tokens: Mutex<HashMap<String, String>>,
    counters: Arc<Counters>,
}

/// A running example server.
#[derive(Debug)]
pub struct LegacyServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it has seen.
    pub counters: Arc<Counters>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl LegacyServer {
    /// Starts the server on `addr` (port 0 for any free port).
    ///
    /// # Errors
    ///
    /// When the port cannot be bound.
    pub async fn start(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let counters = state.counters.clone();
        let (stop, stop_rx) = watch::channel(false);
        let task = serve(
            listener,
            stop_rx,
            Duration::from_secs(5),
            "legacy",
            move |_| {
                let state = state.clone();
                hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(state.handle(req).await) }
                })
            },
        );
        Ok(Self {
            addr,
            counters,
            stop,
            task,
        })
    }

    /// Stops the server.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Decodes `application/x-www-form-urlencoded` leniently, as a legacy
/// server does.
pub fn parse_form(input: &str) -> Vec<(String, String)> {
    input
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(n), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes everything but unreserved characters.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = respond(status, "application/json", value.to_string());
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

/// A successful token response, with a refresh token when one is issued.
fn issued(refresh_token: Option<String>) -> Response<Full<Bytes>> {
    let mut body = serde_json::json!({
        "access_token": random_token(),
        "token_type": "Bearer",
        "expires_in": 3600,
    });
    if let Some(refresh) = refresh_token {
        body["refresh_token"] = refresh.into();
    }
    json(StatusCode::OK, &body)
}

fn random_token() -> String {
    CodeVerifier::generate().secret().to_owned()
}

impl State {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, 1 << 20).collect().await {
            Ok(collected) => String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
            Err(_) => return respond(StatusCode::PAYLOAD_TOO_LARGE, "text/plain", "too large\n"),
        };
        // Loose routing, like many real servers: case and a trailing slash
        // do not matter.
        let path = parts.uri.path().to_ascii_lowercase();
        let mut params = parse_form(parts.uri.query().unwrap_or(""));
        match path.trim_end_matches('/') {
            "/authorize" => {
                self.counters.authorize.fetch_add(1, Ordering::SeqCst);
                if parts.method == Method::POST {
                    params.extend(parse_form(&body));
                }
                self.authorize(&params)
            }
            "/login" if parts.method == Method::POST => self.login(&parse_form(&body)),
            "/token" if parts.method == Method::POST => {
                self.counters.token.fetch_add(1, Ordering::SeqCst);
                self.token(&parse_form(&body))
            }
            "/.well-known/openid-configuration" | "/.well-known/oauth-authorization-server" => {
                let host = parts
                    .headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("localhost");
                let issuer = format!("http://{host}");
                json(
                    StatusCode::OK,
                    &serde_json::json!({
                        "issuer": issuer,
                        "authorization_endpoint": format!("{issuer}/authorize"),
                        "token_endpoint": format!("{issuer}/token"),
                        "pushed_authorization_request_endpoint": format!("{issuer}/par"),
                        "response_types_supported": ["code"],
                        "response_modes_supported": ["query", "fragment", "form_post"],
                        "grant_types_supported": ["authorization_code", "refresh_token"],
                    }),
                )
            }
            _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
        }
    }

    fn authorize(&self, params: &[(String, String)]) -> Response<Full<Bytes>> {
        let (Some(client_id), Some(redirect_uri)) =
            (param(params, "client_id"), param(params, "redirect_uri"))
        else {
            return respond(
                StatusCode::BAD_REQUEST,
                "text/plain",
                "client_id and redirect_uri are required\n",
            );
        };
        let txn = random_token();
        let transaction = Transaction {
            client_id: client_id.to_owned(),
            redirect_uri: redirect_uri.to_owned(),
            state: param(params, "state").map(str::to_owned),
            response_mode: param(params, "response_mode").map(str::to_owned),
        };
        if let Ok(mut t) = self.transactions.lock() {
            t.insert(txn.clone(), transaction);
        }
        respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            format!(
                "<!doctype html><html><head><title>Sign in</title></head><body>\
                 <h1>Sign in</h1><form method=\"post\" action=\"/login\">\
                 <input type=\"hidden\" name=\"txn\" value=\"{txn}\">\
                 <label>User <input name=\"username\"></label>\
                 <label>Password <input type=\"password\" name=\"password\"></label>\
                 <button>Sign in</button></form></body></html>\n"
            ),
        )
    }

    fn login(&self, form: &[(String, String)]) -> Response<Full<Bytes>> {
        let txn = param(form, "txn").unwrap_or_default();
        let found = self
            .transactions
            .lock()
            .ok()
            .and_then(|mut t| t.remove(txn));
        let Some(t) = found else {
            return respond(StatusCode::BAD_REQUEST, "text/plain", "unknown sign-in\n");
        };
        if param(form, "username").is_none_or(str::is_empty) {
            return respond(
                StatusCode::BAD_REQUEST,
                "text/plain",
                "user name required\n",
            );
        }
        let code = random_token();
        if let Ok(mut codes) = self.codes.lock() {
            codes.insert(code.clone(), (t.client_id.clone(), false));
        }
        self.counters.codes_issued.fetch_add(1, Ordering::SeqCst);
        if t.response_mode.as_deref() == Some("form_post") {
            let state = t.state.as_deref().map_or(String::new(), |s| {
                format!(
                    "<input type=\"hidden\" name=\"state\" value=\"{}\"/>",
                    escape(s)
                )
            });
            return respond(
                StatusCode::OK,
                "text/html; charset=utf-8",
                format!(
                    "<!doctype html><html><head><title>Submit</title></head>\
                     <body onload=\"document.forms[0].submit()\">\
                     <form method=\"post\" action=\"{}\">\
                     <input type=\"hidden\" name=\"code\" value=\"{code}\"/>{state}\
                     <noscript><button>Continue</button></noscript></form></body></html>\n",
                    escape(&t.redirect_uri)
                ),
            );
        }
        let mut query = format!("code={}", encode(&code));
        if let Some(state) = &t.state {
            query.push_str("&state=");
            query.push_str(&encode(state));
        }
        let sep = if t.response_mode.as_deref() == Some("fragment") {
            '#'
        } else if t.redirect_uri.contains('?') {
            '&'
        } else {
            '?'
        };
        let mut r = respond(StatusCode::FOUND, "text/plain", Bytes::new());
        match header::HeaderValue::from_str(&format!("{}{sep}{query}", t.redirect_uri)) {
            Ok(location) => {
                r.headers_mut().insert(header::LOCATION, location);
                r
            }
            Err(_) => respond(StatusCode::BAD_REQUEST, "text/plain", "bad redirect_uri\n"),
        }
    }

    fn token(&self, form: &[(String, String)]) -> Response<Full<Bytes>> {
        let invalid = |error: &str| {
            json(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({ "error": error }),
            )
        };
        match param(form, "grant_type") {
            Some("authorization_code") => {
                let code = param(form, "code").unwrap_or_default();
                let client = {
                    let Ok(mut codes) = self.codes.lock() else {
                        return invalid("server_error");
                    };
                    match codes.get_mut(code) {
                        Some((client, used)) if !*used => {
                            *used = true;
                            client.clone()
                        }
                        _ => return invalid("invalid_grant"),
                    }
                };
                let refresh = random_token();
                if let Ok(mut r) = self.refresh_tokens.lock() {
                    r.insert(refresh.clone(), client);
                }
                issued(Some(refresh))
            }
            Some("refresh_token") => {
                let known = param(form, "refresh_token")
                    .is_some_and(|t| self.refresh_tokens.lock().is_ok_and(|r| r.contains_key(t)));
                if !known {
                    return invalid("invalid_grant");
                }
                issued(None)
            }
            _ => invalid("unsupported_grant_type"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_round_trip() {
        let s = "a b&c=d/é";
        assert_eq!(
            parse_form(&format!("x={}", encode(s))),
            [("x".to_owned(), s.to_owned())]
        );
        assert_eq!(
            parse_form("a=%zz&b"),
            [
                ("a".to_owned(), "%zz".to_owned()),
                ("b".to_owned(), String::new())
            ]
        );
    }
}
