//! A deliberately hostile legacy authorization server, for `attacks.rs`
//! and `review_wire.rs`. Beyond its defaults, knobs add looser behaviours:
//! a router and form parser that take `/authorize`'s form body for any
//! method, the body winning (Rack's `form_data?` and `GET.merge(POST)`,
//! Express's `app.all` with `urlencoded()`), a token endpoint that reads
//! parameters the way PHP's `$_REQUEST` does with `variables_order =
//! "EGPCS"` (query, then body, then cookies, the last one winning), a HEAD
//! answer whose body (the GET body, which naive servers write for HEAD
//! too) goes out some time after its head, header names read with `_` as
//! `-` (CGI-style variables), and unwanted bodies read and dropped after
//! the answer instead of parsed as the next request. A path `/echo`
//! answers the decoded query as its `text/plain` body.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The `iss` the server puts in its redirects (RFC 9207).
pub(crate) const ISS: &str = "https%3A%2F%2Fhostile.example";
/// How far the proxy scans an HTML page for a code.
pub(crate) const SCAN_BOUND: usize = 256 * 1024;

/// How the authorization endpoint issues a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// `/authorize` answers with the code at once.
    Direct,
    /// `/authorize` answers a login page whose form posts a server-side
    /// transaction id (and the `state`) to `/login`, which issues the code.
    Login,
    /// `/authorize` answers a consent page that echoes every request
    /// parameter as a hidden input, in a form posting back to `/authorize`;
    /// that POST, with `consent=yes`, issues the code.
    Consent,
}

/// How a code is handed out. `R` is the `redirect_uri` the server was
/// given, `C` the code, `S` the `state` exactly as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// `Location: R?code=C&state=S&iss=I`.
    Query,
    /// `Location: R#code=C&state=S&iss=I`.
    Fragment,
    /// An auto-submitting HTML form, action `R`, hidden `code` and `state`.
    FormPost,
    /// `Location: R?code=C&state=S&iss=I` with `R` written in latin-1: a
    /// non-ASCII character of the `redirect_uri` is one raw byte (0xE9 for
    /// `é`), which is not UTF-8.
    Latin1,
    /// `Location: R#?code=C&state=S`.
    HashQuery,
    /// `Location: R?code=C&code=C2&state=S`.
    TwoCodes,
    /// `Location: R?code=C&state=S#code=C2`.
    QueryAndFragment,
    /// `Location: R?code=C;state=S`.
    Semicolon,
    /// `Location: R?code=C&state=S&state=other`.
    TwoStates,
    /// A form_post page with two hidden `code` inputs.
    FormPostTwoCodes,
    /// A form_post page padded past the scan bound, the form first.
    PaddedFormPostStart,
    /// A form_post page padded past the scan bound, the form last.
    PaddedFormPostEnd,
    /// `<meta http-equiv="refresh" content="0;url=R?code=C&amp;state=S">`.
    MetaRefresh,
    /// `<script>window.location = "R?code=C&state=S"</script>`.
    JsRedirect,
    /// A form_post page sent with `Content-Encoding: zstd`, its bytes not
    /// compressed at all (no proxy can decode it).
    Zstd,
    /// `Location: T?code=C&state=S` for a target `T` that is not `R`.
    Foreign(String),
    /// `Location: R?code=C&state=S'` with `S'` percent-encoded (`pkce%2E..`).
    EncodedState,
    /// `Location: R?code=C&STATE=S`.
    UpperState,
    /// `Location: R?Code=C&state=S`.
    UpperCode,
    /// `Location: R?code=C&state=S#state=S`.
    StateInQueryAndFragment,
    /// `Location: R?code=C#state=S`.
    StateOnlyInFragment,
    /// A form_post page whose form posts to the given action, not `R`.
    FormPostTo(String),
    /// `200 OK` with `Location: R?code=C&state=S` and a small page.
    OkWithLocation,
    /// `200 OK` with `Refresh: 0;url=R?code=C&state=S` and a small page.
    RefreshHeader,
    /// `Location: R?code=C&state=H'` where `H'` is shaped like a handle but
    /// was never minted (a server that mixed up its sign-ins).
    UnknownHandle,
}

/// A failure of the token endpoint, taken once per token request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenFault {
    /// Answer this status without redeeming the code.
    Status(u16),
    /// Redeem the code, then wait this long before answering.
    AnswerAfter(Duration),
    /// Redeem the code, then close the connection without answering.
    CloseWithoutAnswer,
}

/// What the server does; a test may change it between requests.
#[derive(Debug, Clone)]
pub(crate) struct Knobs {
    pub(crate) flow: Flow,
    pub(crate) delivery: Delivery,
    /// The status of a redirect that delivers a code.
    pub(crate) redirect_status: u16,
    /// Whether a POST to `/authorize` has its form body read.
    pub(crate) authorize_reads_body: bool,
    /// Whether `/token` without `Authorization` answers 401 without reading
    /// its body.
    pub(crate) token_body_needs_authorization: bool,
    /// Failures for the next token requests, first first.
    pub(crate) token_faults: VecDeque<TokenFault>,
    /// Answer as an HTTP/1.0 server: `HTTP/1.0` status lines, no
    /// `Content-Length`, the connection closed after each answer.
    pub http10: bool,
    /// `/authorize` reads a form body for any method, not only POST.
    pub(crate) authorize_body_any_method: bool,
    /// `/token` reads parameters from the query, the body and the
    /// `Cookie` header, in that order, the last one winning (PHP's
    /// `$_REQUEST` with `variables_order = "EGPCS"`).
    pub(crate) token_reads_cookies: bool,
    /// A HEAD request's answer: the head at once, then after this long the
    /// body a GET would have had.
    pub(crate) head_body_after: Option<Duration>,
    /// Header names are read with `_` as `-` (`Content_Length` is
    /// `Content-Length`), as servers that map headers to CGI-style
    /// variables (`HTTP_CONTENT_LENGTH`) do.
    pub(crate) fold_underscores: bool,
    /// A body the server does not want is read and thrown away after the
    /// answer, instead of being parsed as the next request.
    pub(crate) drain_unread_bodies: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            flow: Flow::Direct,
            delivery: Delivery::Query,
            redirect_status: 302,
            authorize_reads_body: true,
            token_body_needs_authorization: false,
            token_faults: VecDeque::new(),
            http10: false,
            authorize_body_any_method: false,
            token_reads_cookies: false,
            head_body_after: None,
            fold_underscores: false,
            drain_unread_bodies: false,
        }
    }
}

/// A request the server parsed.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    /// Which accepted connection it came on, from 0.
    pub(crate) conn: usize,
    pub(crate) method: String,
    /// The request-target as it arrived.
    pub(crate) target: String,
    pub(crate) version: String,
    /// Names in lower case, values as they arrived.
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    /// The body, when the server read it.
    pub(crate) body: Option<Vec<u8>>,
    /// Parsed out of bytes that were the body of the request before it.
    pub(crate) from_body: bool,
    pub(crate) test_id: Option<String>,
    /// The status answered, once the answer was written.
    pub(crate) answered: Option<u16>,
}

impl Seen {
    /// The first value of a header.
    pub(crate) fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The path as the server routes it.
    pub(crate) fn route(&self) -> String {
        route(&self.target)
    }
}

/// A code the server issued.
#[derive(Debug, Clone)]
pub(crate) struct Issued {
    pub(crate) code: String,
    pub(crate) client_id: Option<String>,
    /// `state`, decoded, as the server received it.
    pub(crate) state: Option<String>,
    pub(crate) redirect_uri: Option<String>,
    pub(crate) delivery: Delivery,
    /// The `x-test-id` of the request whose answer carried the code.
    pub(crate) test_id: Option<String>,
    /// The `Location` the server wrote, byte for byte.
    pub(crate) location: Option<Vec<u8>>,
    /// The page the server wrote.
    pub(crate) page: Option<Vec<u8>>,
    pub(crate) redeemed: bool,
}

/// A token request the server received.
#[derive(Debug, Clone)]
pub(crate) struct TokenSeen {
    /// Its index in [`Log::requests`].
    pub(crate) request: usize,
    pub(crate) test_id: Option<String>,
    pub(crate) from_body: bool,
    /// Body then query parameters, decoded, in order.
    pub(crate) params: Vec<(String, String)>,
    /// The parameters as the server reads them (the query wins).
    pub(crate) code: Option<String>,
    pub(crate) grant_type: Option<String>,
    pub(crate) had_verifier: bool,
    pub(crate) answered: Option<u16>,
    /// The access token it issued, if any.
    pub(crate) access_token: Option<String>,
}

/// Everything the server saw and did.
#[derive(Debug, Default)]
pub(crate) struct Log {
    pub(crate) requests: Vec<Seen>,
    pub(crate) issued: Vec<Issued>,
    pub(crate) tokens: Vec<TokenSeen>,
    /// Login transactions: id to the authorization request's parameters.
    logins: HashMap<String, Vec<Param>>,
}

impl Log {
    /// The requests that carried this `x-test-id`.
    pub(crate) fn with_id(&self, id: &str) -> Vec<&Seen> {
        self.requests
            .iter()
            .filter(|s| s.test_id.as_deref() == Some(id))
            .collect()
    }

    /// The token requests that carried this code, as the server read it.
    pub(crate) fn tokens_for(&self, code: &str) -> Vec<&TokenSeen> {
        self.tokens
            .iter()
            .filter(|t| t.code.as_deref() == Some(code))
            .collect()
    }

    /// The last code issued.
    pub(crate) fn last_issued(&self) -> Option<&Issued> {
        self.issued.last()
    }

    /// A short account of the requests, for failure messages.
    pub(crate) fn summary(&self) -> String {
        let mut out = String::new();
        for (i, s) in self.requests.iter().enumerate() {
            out.push_str(&format!(
                "\n    #{i} conn {} {} {} id={} from_body={} body={} -> {}",
                s.conn,
                s.method,
                s.target,
                s.test_id.as_deref().unwrap_or("-"),
                s.from_body,
                s.body
                    .as_ref()
                    .map_or("unread".into(), |b| format!("{:?}", show(b, 120))),
                s.answered.map_or("unanswered".into(), |a| a.to_string()),
            ));
        }
        if out.is_empty() {
            out.push_str(" (nothing)");
        }
        out
    }
}

/// Bytes as text for a message, cut at `max` characters.
pub(crate) fn show(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.chars().count() > max {
        format!("{}…", text.chars().take(max).collect::<String>())
    } else {
        text.into_owned()
    }
}

struct Inner {
    knobs: Mutex<Knobs>,
    log: Mutex<Log>,
    connections: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running hostile server.
pub(crate) struct Hostile {
    pub(crate) addr: SocketAddr,
    inner: Arc<Inner>,
    dark: watch::Sender<bool>,
}

impl std::fmt::Debug for Hostile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hostile({})", self.addr)
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        let _ = self.dark.send_replace(true);
    }
}

impl Hostile {
    /// Starts a server on a free loopback port.
    pub(crate) async fn start(knobs: Knobs) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Inner {
            knobs: Mutex::new(knobs),
            log: Mutex::new(Log::default()),
            connections: AtomicUsize::new(0),
        });
        let (dark, _) = watch::channel(false);
        tokio::spawn(accept(listener, inner.clone(), dark.subscribe()));
        Self { addr, inner, dark }
    }

    /// Changes what the server does from the next request on.
    pub(crate) fn set(&self, change: impl FnOnce(&mut Knobs)) {
        change(&mut lock(&self.inner.knobs));
    }

    /// What the server does now.
    pub(crate) fn knobs(&self) -> Knobs {
        lock(&self.inner.knobs).clone()
    }

    /// What the server saw so far.
    pub(crate) fn log(&self) -> MutexGuard<'_, Log> {
        lock(&self.inner.log)
    }

    /// Stops listening and closes every connection: the server is
    /// unreachable until [`come_back`](Self::come_back).
    pub(crate) async fn go_dark(&self) {
        self.dark.send_replace(true);
        // Let the connections see it and their closes reach the peer.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// Listens again on the same port.
    pub(crate) async fn come_back(&self) {
        self.dark.send_replace(false);
        let listener = TcpListener::bind(self.addr).await.unwrap();
        tokio::spawn(accept(listener, self.inner.clone(), self.dark.subscribe()));
    }
}

async fn accept(listener: TcpListener, inner: Arc<Inner>, dark: watch::Receiver<bool>) {
    let mut stop = dark.clone();
    loop {
        tokio::select! {
            _ = stop.wait_for(|d| *d) => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { return };
                let id = inner.connections.fetch_add(1, Ordering::SeqCst);
                let conn = Connection {
                    stream,
                    inner: inner.clone(),
                    id,
                    buf: Vec::new(),
                    offset: 0,
                    body_until: 0,
                    next_from_body: false,
                    dark: dark.clone(),
                };
                tokio::spawn(conn.serve());
            }
        }
    }
}

/// One parameter: its name and value decoded, and the value as it arrived.
#[derive(Debug, Clone)]
struct Param {
    name: String,
    value: String,
    raw: String,
}

/// Decodes a form leniently, the way a legacy server does: `&` only, `+`
/// for space, a bad escape kept as it is.
fn params(input: &str) -> Vec<Param> {
    input
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            Param {
                name: decode(n),
                value: decode(v),
                raw: v.to_owned(),
            }
        })
        .collect()
}

/// Percent-decodes leniently.
pub(crate) fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => match bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(v) => {
                    out.push(v);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn first<'a>(params: &'a [Param], name: &str) -> Option<&'a Param> {
    params.iter().find(|p| p.name == name)
}

fn last<'a>(params: &'a [Param], name: &str) -> Option<&'a Param> {
    params.iter().rev().find(|p| p.name == name)
}

/// How the server routes a request-target: path only, percent-decoded,
/// `;params` and dot segments removed, repeated and trailing slashes
/// dropped, lower case. Loose, like many real routers.
pub(crate) fn route(target: &str) -> String {
    let path = target.split(['?', '#']).next().unwrap_or("");
    let path = decode(path);
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        let segment = segment.split(';').next().unwrap_or("");
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    format!("/{}", segments.join("/")).to_ascii_lowercase()
}

fn random() -> String {
    tower_pkce::CodeVerifier::generate().secret()[..32].to_owned()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

/// What the server answers, and what it does around the answer.
struct Answer {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    then: Then,
}

enum Then {
    Answer,
    AnswerAfter(Duration),
    Vanish,
}

impl Answer {
    fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: vec![("Content-Type".into(), content_type.as_bytes().to_vec())],
            body: body.into(),
            then: Then::Answer,
        }
    }

    fn json(status: u16, value: &serde_json::Value) -> Self {
        let mut a = Self::new(status, "application/json", value.to_string());
        a.headers
            .push(("Cache-Control".into(), b"no-store".to_vec()));
        a
    }

    fn redirect(status: u16, location: Vec<u8>) -> Self {
        let mut a = Self::new(status, "text/plain", Vec::new());
        a.headers.push(("Location".into(), location));
        a
    }

    fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

struct Head {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, Vec<u8>)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers.iter().any(|(n, v)| {
            n == name
                && String::from_utf8_lossy(v)
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    }
}

/// Parses a request head loosely: any whitespace between the three parts
/// of the request line, fields split at the first colon, values kept as
/// raw bytes.
fn parse_head(bytes: &[u8]) -> Option<Head> {
    let mut lines = bytes
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = String::from_utf8_lossy(lines.next()?).into_owned();
    let mut parts = request_line.split_whitespace();
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if !version.starts_with("HTTP/") || parts.next().is_some() {
        return None;
    }
    let mut headers = Vec::new();
    for line in lines {
        let colon = line.iter().position(|&b| b == b':')?;
        let name = String::from_utf8_lossy(&line[..colon])
            .trim()
            .to_ascii_lowercase();
        headers.push((name, line[colon + 1..].trim_ascii().to_vec()));
    }
    Some(Head {
        method: method.to_owned(),
        target: target.to_owned(),
        version: version.to_owned(),
        headers,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

enum Framing {
    None,
    Length(usize),
    Chunked,
}

struct Connection {
    stream: TcpStream,
    inner: Arc<Inner>,
    id: usize,
    buf: Vec<u8>,
    /// The stream offset of `buf[0]`.
    offset: usize,
    /// Bytes before this stream offset were a body the server did not read.
    body_until: usize,
    /// The next request follows a chunked body the server did not read.
    next_from_body: bool,
    dark: watch::Receiver<bool>,
}

impl Connection {
    /// Reads more bytes; false at the end of the stream or when the server
    /// goes dark.
    async fn more(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        tokio::select! {
            _ = self.dark.wait_for(|d| *d) => false,
            read = self.stream.read(&mut chunk) => match read {
                Ok(0) | Err(_) => false,
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    true
                }
            }
        }
    }

    fn consume(&mut self, n: usize) -> Vec<u8> {
        self.offset += n;
        self.buf.drain(..n).collect()
    }

    async fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let mut line = self.consume(i + 2);
                line.truncate(i);
                return Some(line);
            }
            if !self.more().await {
                return None;
            }
        }
    }

    async fn exactly(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.more().await {
                return None;
            }
        }
        Some(self.consume(n))
    }

    async fn read_body(&mut self, framing: &Framing) -> Option<Vec<u8>> {
        match framing {
            Framing::None => Some(Vec::new()),
            Framing::Length(n) => self.exactly(*n).await,
            Framing::Chunked => {
                let mut body = Vec::new();
                loop {
                    let line = self.line().await?;
                    let line = String::from_utf8_lossy(&line);
                    let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
                    if size == 0 {
                        // Trailer fields, up to the empty line.
                        while !self.line().await?.is_empty() {}
                        return Some(body);
                    }
                    body.extend(self.exactly(size).await?);
                    self.line().await?;
                }
            }
        }
    }

    async fn serve(mut self) {
        loop {
            // Blank lines before a request line are skipped (RFC 9112 §2.2).
            let head_end = loop {
                let blank = self
                    .buf
                    .iter()
                    .take_while(|b| matches!(b, b'\r' | b'\n'))
                    .count();
                self.consume(blank);
                if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                    break i;
                }
                if !self.more().await {
                    return;
                }
            };
            let from_body =
                self.offset < self.body_until || std::mem::take(&mut self.next_from_body);
            let head_bytes = self.consume(head_end + 4);
            let Some(head) = parse_head(&head_bytes[..head_end]) else {
                let answer = Answer::new(400, "text/plain", "bad request\n");
                let _ = self.write(&answer, "?", None, true, None).await;
                return;
            };
            let mut head = head;
            if lock(&self.inner.knobs).fold_underscores {
                for (name, _) in &mut head.headers {
                    *name = name.replace('_', "-");
                }
            }
            let framing = if head.has_token("transfer-encoding", "chunked") {
                Framing::Chunked
            } else if let Some(v) = head.get("content-length") {
                let digits: String = String::from_utf8_lossy(v)
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                Framing::Length(digits.parse().unwrap_or(0))
            } else {
                Framing::None
            };
            let path = route(&head.target);
            let knobs = lock(&self.inner.knobs).clone();
            let reads_body = match (head.method.as_str(), path.as_str()) {
                ("POST", "/token") => {
                    !knobs.token_body_needs_authorization || head.get("authorization").is_some()
                }
                ("POST", "/login") => true,
                ("POST", "/authorize") => knobs.authorize_reads_body,
                (_, "/authorize") => {
                    knobs.authorize_body_any_method && !matches!(framing, Framing::None)
                }
                _ => false,
            };
            let body = if reads_body {
                match self.read_body(&framing).await {
                    Some(b) => Some(b),
                    None => return,
                }
            } else if knobs.drain_unread_bodies {
                None
            } else {
                match framing {
                    Framing::Length(n) if n > 0 => self.body_until = self.offset + n,
                    Framing::Chunked => self.next_from_body = true,
                    _ => {}
                }
                None
            };
            let test_id = head
                .get("x-test-id")
                .map(|v| String::from_utf8_lossy(v).into_owned());
            let index = {
                let mut log = lock(&self.inner.log);
                log.requests.push(Seen {
                    conn: self.id,
                    method: head.method.clone(),
                    target: head.target.clone(),
                    version: head.version.clone(),
                    headers: head.headers.clone(),
                    body: body.clone(),
                    from_body,
                    test_id: test_id.clone(),
                    answered: None,
                });
                log.requests.len() - 1
            };
            let answer = self.answer(&head, &path, body.as_deref(), index, &knobs);
            let close = knobs.http10
                || head.has_token("connection", "close")
                || (head.version == "HTTP/1.0" && !head.has_token("connection", "keep-alive"));
            match answer.then {
                Then::Vanish => return,
                Then::AnswerAfter(wait) => {
                    tokio::select! {
                        _ = self.dark.wait_for(|d| *d) => return,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
                Then::Answer => {}
            }
            if self
                .write(
                    &answer,
                    &head.target,
                    test_id.as_deref(),
                    close,
                    knobs.head_body_after.filter(|_| head.method == "HEAD"),
                )
                .await
                .is_err()
            {
                return;
            }
            {
                let mut log = lock(&self.inner.log);
                if let Some(seen) = log.requests.get_mut(index) {
                    seen.answered = Some(answer.status);
                }
                if let Some(t) = log.tokens.iter_mut().find(|t| t.request == index) {
                    t.answered = Some(answer.status);
                }
            }
            if close {
                let _ = self.stream.shutdown().await;
                return;
            }
            if knobs.drain_unread_bodies
                && !reads_body
                && let Framing::Length(n) = framing
                && self.exactly(n).await.is_none()
            {
                return;
            }
        }
    }

    async fn write(
        &mut self,
        answer: &Answer,
        target: &str,
        test_id: Option<&str>,
        close: bool,
        late_body: Option<Duration>,
    ) -> std::io::Result<()> {
        let http10 = lock(&self.inner.knobs).http10;
        let mut out = Vec::new();
        out.extend_from_slice(
            format!(
                "HTTP/1.{} {} {}\r\n",
                if http10 { 0 } else { 1 },
                answer.status,
                reason(answer.status)
            )
            .as_bytes(),
        );
        let mut field = |name: &str, value: &[u8]| {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        };
        field("x-served", target.as_bytes());
        if let Some(id) = test_id {
            field("x-test-id", id.as_bytes());
        }
        for (n, v) in &answer.headers {
            field(n, v);
        }
        if !http10 {
            field("Content-Length", answer.body.len().to_string().as_bytes());
        }
        if close && !http10 {
            field("Connection", b"close");
        }
        out.extend_from_slice(b"\r\n");
        if let Some(wait) = late_body {
            self.stream.write_all(&out).await?;
            self.stream.flush().await?;
            tokio::time::sleep(wait).await;
            out.clear();
        }
        out.extend_from_slice(&answer.body);
        self.stream.write_all(&out).await?;
        self.stream.flush().await
    }

    fn answer(
        &mut self,
        head: &Head,
        path: &str,
        body: Option<&[u8]>,
        index: usize,
        knobs: &Knobs,
    ) -> Answer {
        let query = head.target.split_once('?').map_or("", |(_, q)| q);
        let query = query.split('#').next().unwrap_or("");
        let test_id = head
            .get("x-test-id")
            .map(|v| String::from_utf8_lossy(v).into_owned());
        match (head.method.as_str(), path) {
            (_, "/authorize") => {
                let mut all = params(query);
                if let Some(body) = body {
                    let form = params(&String::from_utf8_lossy(body));
                    if knobs.authorize_body_any_method {
                        // Rack's `params`: `GET.merge(POST)`, the body wins.
                        let mut merged = form;
                        merged.extend(all);
                        all = merged;
                    } else {
                        all.extend(form);
                    }
                }
                match knobs.flow {
                    Flow::Direct => self.deliver(&all, test_id, knobs),
                    Flow::Login => self.login_page(all),
                    Flow::Consent => {
                        if first(&all, "consent").is_some_and(|c| c.value == "yes") {
                            self.deliver(&all, test_id, knobs)
                        } else {
                            consent_page(&all)
                        }
                    }
                }
            }
            ("POST", "/login") => {
                let form = params(&String::from_utf8_lossy(body.unwrap_or_default()));
                let txn = first(&form, "txn").map(|p| p.value.clone());
                let found = txn.and_then(|t| lock(&self.inner.log).logins.remove(&t));
                match found {
                    Some(all) => self.deliver(&all, test_id, knobs),
                    None => Answer::new(400, "text/plain", "unknown sign-in\n"),
                }
            }
            ("POST", "/token") => match body {
                None => Answer::json(401, &serde_json::json!({"error": "invalid_client"}))
                    .header("WWW-Authenticate", "Basic realm=\"hostile\""),
                Some(body) => self.token(head, query, body, index),
            },
            (_, "/other") => Answer::new(200, "text/plain", "other\n"),
            (_, "/echo") => Answer::new(200, "text/plain", decode(query)),
            _ => Answer::new(404, "text/plain", "not found\n"),
        }
    }

    fn login_page(&self, all: Vec<Param>) -> Answer {
        let txn = random();
        let state = first(&all, "state").map_or(String::new(), |s| {
            format!(
                "<input type=\"hidden\" name=\"state\" value=\"{}\">",
                escape(&s.value)
            )
        });
        lock(&self.inner.log).logins.insert(txn.clone(), all);
        Answer::new(
            200,
            "text/html; charset=utf-8",
            format!(
                "<!doctype html><html><head><title>Sign in</title></head><body>\
                 <h1>Sign in</h1><form method=\"post\" action=\"/login\">\
                 <input type=\"hidden\" name=\"txn\" value=\"{txn}\">{state}\
                 <label>User <input name=\"username\"></label>\
                 <button>Sign in</button></form></body></html>\n"
            ),
        )
    }

    fn token(&self, head: &Head, query: &str, body: &[u8], index: usize) -> Answer {
        let mut all = params(&String::from_utf8_lossy(body));
        all.extend(params(query));
        if lock(&self.inner.knobs).token_reads_cookies {
            for cookie in head.headers.iter().filter(|(n, _)| n == "cookie") {
                let text = String::from_utf8_lossy(&cookie.1).into_owned();
                all.extend(params(&text.replace("; ", "&").replace(';', "&")));
            }
        }
        let code = last(&all, "code").map(|p| p.value.clone());
        let grant_type = last(&all, "grant_type").map(|p| p.value.clone());
        let fault = lock(&self.inner.knobs).token_faults.pop_front();
        let mut log = lock(&self.inner.log);
        let from_body = log.requests.get(index).is_some_and(|s| s.from_body);
        let mut seen = TokenSeen {
            request: index,
            test_id: head
                .get("x-test-id")
                .map(|v| String::from_utf8_lossy(v).into_owned()),
            from_body,
            params: all
                .iter()
                .map(|p| (p.name.clone(), p.value.clone()))
                .collect(),
            code: code.clone(),
            grant_type: grant_type.clone(),
            had_verifier: last(&all, "code_verifier").is_some(),
            answered: None,
            access_token: None,
        };
        if let Some(TokenFault::Status(status)) = fault {
            log.tokens.push(seen);
            return Answer::json(status, &serde_json::json!({"error": "server_error"}));
        }
        let answer = match grant_type.as_deref() {
            Some("authorization_code") => {
                let issued = log
                    .issued
                    .iter_mut()
                    .find(|i| Some(&i.code) == code.as_ref() && !i.redeemed);
                match issued {
                    Some(issued) => {
                        issued.redeemed = true;
                        let token = format!("at-{}", random());
                        seen.access_token = Some(token.clone());
                        Answer::json(
                            200,
                            &serde_json::json!({
                                "access_token": token,
                                "token_type": "Bearer",
                                "expires_in": 3600,
                                "refresh_token": format!("rt-{}", random()),
                            }),
                        )
                    }
                    None => Answer::json(400, &serde_json::json!({"error": "invalid_grant"})),
                }
            }
            Some("refresh_token") => {
                let token = format!("at-{}", random());
                seen.access_token = Some(token.clone());
                Answer::json(
                    200,
                    &serde_json::json!({"access_token": token, "token_type": "Bearer"}),
                )
            }
            _ => Answer::json(400, &serde_json::json!({"error": "unsupported_grant_type"})),
        };
        log.tokens.push(seen);
        match fault {
            Some(TokenFault::AnswerAfter(wait)) => Answer {
                then: Then::AnswerAfter(wait),
                ..answer
            },
            Some(TokenFault::CloseWithoutAnswer) => Answer {
                then: Then::Vanish,
                ..answer
            },
            _ => answer,
        }
    }

    /// Issues a code for the authorization request `all` and hands it out
    /// as the knobs say.
    fn deliver(&self, all: &[Param], test_id: Option<String>, knobs: &Knobs) -> Answer {
        let code = format!("C-{}", random());
        let code2 = format!("C2-{}", random());
        let r = first(all, "redirect_uri").map_or(String::new(), |p| p.value.clone());
        let state = first(all, "state");
        let s = state.map_or(String::new(), |p| p.raw.clone());
        let sv = state.map_or(String::new(), |p| p.value.clone());
        let join = if r.contains('?') { '&' } else { '?' };
        let form = |action: &str, codes: &[&str]| {
            let mut inputs = String::new();
            for c in codes {
                inputs.push_str(&format!(
                    "<input type=\"hidden\" name=\"code\" value=\"{c}\"/>"
                ));
            }
            if state.is_some() {
                inputs.push_str(&format!(
                    "<input type=\"hidden\" name=\"state\" value=\"{}\"/>",
                    escape(&sv)
                ));
            }
            inputs.push_str(
                "<input type=\"hidden\" name=\"iss\" value=\"https://hostile.example\"/>",
            );
            format!(
                "<!doctype html><html><head><title>Submit</title></head>\
                 <body onload=\"document.forms[0].submit()\">\
                 <form method=\"post\" action=\"{}\">{inputs}\
                 <noscript><button>Continue</button></noscript></form></body></html>\n",
                escape(action)
            )
        };
        let page = |html: String| Answer::new(200, "text/html; charset=utf-8", html);
        let redirect =
            |location: String| Answer::redirect(knobs.redirect_status, location.into_bytes());
        let mut second = false;
        let answer = match &knobs.delivery {
            Delivery::Query => redirect(format!("{r}{join}code={code}&state={s}&iss={ISS}")),
            Delivery::Fragment => redirect(format!("{r}#code={code}&state={s}&iss={ISS}")),
            Delivery::FormPost => page(form(&r, &[&code])),
            Delivery::Latin1 => {
                let mut location: Vec<u8> = r
                    .chars()
                    .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
                    .collect();
                location
                    .extend_from_slice(format!("{join}code={code}&state={s}&iss={ISS}").as_bytes());
                Answer::redirect(knobs.redirect_status, location)
            }
            Delivery::HashQuery => redirect(format!("{r}#?code={code}&state={s}")),
            Delivery::TwoCodes => {
                second = true;
                redirect(format!("{r}{join}code={code}&code={code2}&state={s}"))
            }
            Delivery::QueryAndFragment => {
                second = true;
                redirect(format!("{r}{join}code={code}&state={s}#code={code2}"))
            }
            Delivery::Semicolon => redirect(format!("{r}{join}code={code};state={s}")),
            Delivery::TwoStates => redirect(format!("{r}{join}code={code}&state={s}&state=other")),
            Delivery::FormPostTwoCodes => {
                second = true;
                page(form(&r, &[&code, &code2]))
            }
            Delivery::PaddedFormPostStart => {
                let mut html = form(&r, &[&code]);
                html.push_str(&padding());
                page(html)
            }
            Delivery::PaddedFormPostEnd => page(format!("{}{}", padding(), form(&r, &[&code]))),
            Delivery::MetaRefresh => page(format!(
                "<!doctype html><html><head><meta http-equiv=\"refresh\" \
                 content=\"0;url={}{join}code={code}&amp;state={}\"></head>\
                 <body>Redirecting</body></html>\n",
                escape(&r),
                escape(&s)
            )),
            Delivery::JsRedirect => page(format!(
                "<!doctype html><html><head><script>\
                 window.location = \"{r}{join}code={code}&state={s}\";\
                 </script></head><body>Redirecting</body></html>\n"
            )),
            Delivery::Zstd => page(form(&r, &[&code])).header("Content-Encoding", "zstd"),
            Delivery::Foreign(target) => {
                let join = if target.contains('?') { '&' } else { '?' };
                redirect(format!("{target}{join}code={code}&state={s}&iss={ISS}"))
            }
            Delivery::EncodedState => {
                let encoded = s.replace('.', "%2E").replace('-', "%2D");
                redirect(format!("{r}{join}code={code}&state={encoded}&iss={ISS}"))
            }
            Delivery::UpperState => redirect(format!("{r}{join}code={code}&STATE={s}")),
            Delivery::UpperCode => redirect(format!("{r}{join}Code={code}&state={s}")),
            Delivery::StateInQueryAndFragment => {
                redirect(format!("{r}{join}code={code}&state={s}#state={s}"))
            }
            Delivery::StateOnlyInFragment => redirect(format!("{r}{join}code={code}#state={s}")),
            Delivery::FormPostTo(action) => page(form(action, &[&code])),
            Delivery::OkWithLocation => page(
                "<!doctype html><html><body>Continue to the application.</body></html>\n".into(),
            )
            .header("Location", format!("{r}{join}code={code}&state={s}")),
            Delivery::RefreshHeader => page(
                "<!doctype html><html><body>Continue to the application.</body></html>\n".into(),
            )
            .header("Refresh", format!("0;url={r}{join}code={code}&state={s}")),
            Delivery::UnknownHandle => redirect(format!(
                "{r}{join}code={code}&state=pkce.{}&iss={ISS}",
                &random()[..22]
            )),
        };
        let location = answer
            .headers
            .iter()
            .find(|(n, _)| n == "Location")
            .map(|(_, v)| v.clone());
        let mut log = lock(&self.inner.log);
        for c in std::iter::once(&code).chain(second.then_some(&code2)) {
            log.issued.push(Issued {
                code: c.clone(),
                client_id: first(all, "client_id").map(|p| p.value.clone()),
                state: state.map(|p| p.value.clone()),
                redirect_uri: first(all, "redirect_uri").map(|p| p.value.clone()),
                delivery: knobs.delivery.clone(),
                test_id: test_id.clone(),
                location: location.clone(),
                page: (!answer.body.is_empty()).then(|| answer.body.clone()),
                redeemed: false,
            });
        }
        answer
    }
}

/// Past the proxy's scan bound, in a hidden element.
fn padding() -> String {
    format!(
        "<div hidden>{}</div>",
        "lorem ipsum dolor sit amet ".repeat(SCAN_BOUND / 20)
    )
}

/// A consent page that echoes every parameter back as a hidden input, in a
/// form that posts to `/authorize`.
fn consent_page(all: &[Param]) -> Answer {
    let mut inputs = String::new();
    for p in all {
        inputs.push_str(&format!(
            "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
            escape(&p.name),
            escape(&p.value)
        ));
    }
    Answer::new(
        200,
        "text/html; charset=utf-8",
        format!(
            "<!doctype html><html><head><title>Allow access?</title></head><body>\
             <h1>Allow access?</h1><form method=\"post\" action=\"/authorize\">{inputs}\
             <input type=\"hidden\" name=\"consent\" value=\"yes\">\
             <button>Allow</button></form></body></html>\n"
        ),
    )
}
