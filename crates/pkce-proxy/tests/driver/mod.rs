//! Drives the real `pkce-proxy` binary in front of the hostile upstream:
//! spawning it, a raw HTTP/1.1 client that controls every byte, and the
//! assertions every attack test makes ([`World::check`] on each answer,
//! [`World::finish`] on the upstream's log).

#![allow(dead_code)]

use std::collections::HashSet;
use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::hostile::{Hostile, Knobs, Log, decode, route, show};

/// The victim's pair: RFC 7636 Appendix B.
pub(crate) const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
pub(crate) const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
/// The attacker's own verifier (its challenge is [`attacker_challenge`]).
pub(crate) const ATTACKER_VERIFIER: &str = "attackerVerifier-0123456789-abcdefghijklmnop";
pub(crate) const CLIENT: &str = "app";
pub(crate) const REDIRECT: &str = "https://client.example/cb";
/// The client's own `state`: unreserved characters only, so that its
/// encoding is not in question.
pub(crate) const STATE: &str = "client-state-7Q";

pub(crate) fn attacker_challenge() -> String {
    tower_pkce::s256(ATTACKER_VERIFIER)
}

pub(crate) fn enc(s: &str) -> String {
    pkce_proxy::demo::legacy::encode(s)
}

/// Runs `scenario` in the three modes at once.
pub(crate) async fn every_mode<F, Fut>(scenario: F)
where
    F: Fn(Mode) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    tokio::join!(
        scenario(Mode::Required),
        scenario(Mode::Optional),
        scenario(Mode::Strip)
    );
}

/// How long a read waits for the next bytes before it gives up.
pub(crate) const READ_WAIT: Duration = Duration::from_secs(5);

/// The proxy's PKCE settings, the three every attack runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The default: PKCE required, parameters forwarded.
    Required,
    /// `--pkce optional`.
    Optional,
    /// `--strip-pkce-params` (PKCE required, parameters removed upstream).
    Strip,
}

impl Mode {
    pub(crate) const ALL: [Mode; 3] = [Mode::Required, Mode::Optional, Mode::Strip];

    pub(crate) fn args(self) -> &'static [&'static str] {
        match self {
            Mode::Required => &[],
            Mode::Optional => &["--pkce", "optional"],
            Mode::Strip => &["--strip-pkce-params"],
        }
    }

    /// Whether a code the proxy never bound is refused at the token endpoint.
    pub(crate) fn required(self) -> bool {
        self != Mode::Optional
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The proxy binary, killed when dropped.
pub(crate) struct Proxy {
    pub(crate) addr: SocketAddr,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    /// Starts the binary in front of `upstream` and waits for its
    /// `pkce-proxy listening` line.
    pub(crate) fn spawn(upstream: &str, args: &[&str]) -> Self {
        Self::spawn_logging(upstream, "info", args)
    }

    /// [`Proxy::spawn`] with `PKCE_PROXY_LOG` set to `level`.
    pub(crate) fn spawn_logging(upstream: &str, level: &str, args: &[&str]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pkce-proxy"));
        for (key, _) in std::env::vars() {
            if key.starts_with("PKCE_PROXY_") {
                cmd.env_remove(key);
            }
        }
        let mut child = cmd
            .args(["--upstream", upstream])
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--log-format", "json", "--worker-threads", "1"])
            .args(args)
            .env("PKCE_PROXY_LOG", level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let logs = logs.clone();
            // Reads stderr to its end, so that the proxy never blocks on a
            // full pipe, and keeps the lines for failure messages.
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
                        && event["message"] == "pkce-proxy listening"
                        && let Some(addr) = event["addr"].as_str()
                    {
                        let _ = tx.send(addr.to_owned());
                    }
                    lock(&logs).push(line);
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(addr) => addr.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "pkce-proxy {args:?} did not log `pkce-proxy listening` within 10 s: {:?}",
                    lock(&logs)
                );
            }
        };
        Self { addr, child, logs }
    }

    /// Everything the proxy logged so far.
    pub(crate) fn log(&self) -> String {
        lock(&self.logs).join("\n")
    }

    /// The proxy's last `n` log lines.
    pub(crate) fn log_tail(&self, n: usize) -> String {
        let logs = lock(&self.logs);
        logs[logs.len().saturating_sub(n)..].join("\n    ")
    }
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

/// A request body and its framing.
#[derive(Debug, Clone)]
pub(crate) enum Body {
    Empty,
    /// With `Content-Length`.
    Sized(Vec<u8>),
    /// `Transfer-Encoding: chunked`, one chunk, then the trailer section
    /// (field lines, each ending in CRLF).
    Chunked(Vec<u8>, String),
    /// Bytes after the head, with no framing header added.
    Raw(Vec<u8>),
}

/// A request, written byte for byte as the test says. Every request has
/// `Host: proxy.test` and its own `x-test-id`.
#[derive(Debug, Clone)]
pub(crate) struct Req {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) id: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Body,
    /// A token request that carries the right verifier for this code.
    pub(crate) legit_for: Option<String>,
}

impl Req {
    pub(crate) fn new(method: &str, target: &str) -> Self {
        Self {
            method: method.to_owned(),
            target: target.to_owned(),
            id: format!("t{}", NEXT_ID.fetch_add(1, Ordering::SeqCst)),
            headers: Vec::new(),
            body: Body::Empty,
            legit_for: None,
        }
    }

    pub(crate) fn get(target: &str) -> Self {
        Self::new("GET", target)
    }

    /// A POST with a form body.
    pub(crate) fn post(target: &str, form: impl Into<String>) -> Self {
        Self::new("POST", target)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(Body::Sized(form.into().into_bytes()))
    }

    pub(crate) fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub(crate) fn body(mut self, body: Body) -> Self {
        self.body = body;
        self
    }

    pub(crate) fn json(self) -> Self {
        self.header("Accept", "application/json")
    }

    pub(crate) fn legit(mut self, code: &str) -> Self {
        self.legit_for = Some(code.to_owned());
        self
    }

    pub(crate) fn is_head(&self) -> bool {
        self.method.eq_ignore_ascii_case("HEAD")
    }

    pub(crate) fn bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "{} {} HTTP/1.1\r\nHost: proxy.test\r\nx-test-id: {}\r\n",
            self.method, self.target, self.id
        )
        .into_bytes();
        for (n, v) in &self.headers {
            out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        match &self.body {
            Body::Empty => out.extend_from_slice(b"\r\n"),
            Body::Sized(b) => {
                out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", b.len()).as_bytes());
                out.extend_from_slice(b);
            }
            Body::Chunked(b, trailers) => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                out.extend_from_slice(format!("{:x}\r\n", b.len()).as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n0\r\n");
                out.extend_from_slice(trailers.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Body::Raw(b) => {
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(b);
            }
        }
        out
    }

    pub(crate) fn line(&self) -> String {
        format!("{} {} (x-test-id {})", self.method, self.target, self.id)
    }
}

/// An answer as the client received it.
#[derive(Debug, Clone)]
pub(crate) struct Resp {
    pub(crate) status: u16,
    /// Names in lower case, values as received.
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    pub(crate) body: Vec<u8>,
    /// Whether the body ended as its framing said.
    pub(crate) complete: bool,
    /// Every byte received for it.
    pub(crate) raw: Vec<u8>,
}

impl Resp {
    pub(crate) fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    pub(crate) fn header_str(&self, name: &str) -> Option<String> {
        self.header(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub(crate) fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The `error` of a JSON body.
    pub(crate) fn error(&self) -> Option<String> {
        self.json()?["error"].as_str().map(str::to_owned)
    }

    /// The answer in one line, for failure messages.
    pub(crate) fn describe(&self) -> String {
        format!(
            "{}{} x-served={:?} x-test-id={:?} location={:?} body={:?}",
            self.status,
            if self.complete { "" } else { " (cut off)" },
            self.header_str("x-served"),
            self.header_str("x-test-id"),
            self.header("location").map(|l| show(l, 200)),
            show(&self.body, 300)
        )
    }

    /// Whether `needle` appears anywhere in what was received.
    pub(crate) fn contains(&self, needle: &str) -> bool {
        contains(&self.raw, needle.as_bytes())
    }
}

pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Why no answer could be read.
#[derive(Debug)]
pub(crate) enum ReadFail {
    /// The connection ended before any byte of an answer.
    Closed,
    /// No complete head within [`READ_WAIT`].
    Timeout(Vec<u8>),
    /// The connection ended inside a head.
    PartialHead(Vec<u8>),
    /// Not an HTTP/1 head.
    Garbage(Vec<u8>),
}

impl std::fmt::Display for ReadFail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Closed => f.write_str("the connection closed without an answer"),
            Self::Timeout(b) => {
                write!(f, "no answer within {READ_WAIT:?} (got {:?})", show(b, 200))
            }
            Self::PartialHead(b) => {
                write!(f, "the connection closed inside a head: {:?}", show(b, 200))
            }
            Self::Garbage(b) => write!(f, "not an HTTP answer: {:?}", show(b, 200)),
        }
    }
}

/// What a connection does after its answers.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum After {
    /// The peer closed it.
    Closed,
    /// It stayed open (nothing arrived within the wait).
    Open,
    /// More bytes arrived.
    Data(Vec<u8>),
}

/// A client connection that writes raw bytes and reads answers loosely.
pub(crate) struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

enum Fill {
    More,
    Eof,
    Timeout,
}

impl Conn {
    pub(crate) async fn open(addr: SocketAddr) -> Self {
        let stream = tokio::time::timeout(READ_WAIT, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("connecting to {addr} took over {READ_WAIT:?}"))
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    pub(crate) async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        tokio::time::timeout(READ_WAIT, self.stream.write_all(bytes))
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    }

    async fn fill(&mut self, wait: Duration) -> Fill {
        let mut chunk = [0u8; 32 * 1024];
        match tokio::time::timeout(wait, self.stream.read(&mut chunk)).await {
            Err(_) => Fill::Timeout,
            Ok(Ok(0) | Err(_)) => Fill::Eof,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Fill::More
            }
        }
    }

    /// Reads the next final answer (1xx are skipped). A body that does not
    /// end as its framing says is returned with `complete: false`.
    pub(crate) async fn response(&mut self, head_request: bool) -> Result<Resp, ReadFail> {
        loop {
            let end = loop {
                if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                    break i;
                }
                match self.fill(READ_WAIT).await {
                    Fill::More => {}
                    Fill::Eof if self.buf.is_empty() => return Err(ReadFail::Closed),
                    Fill::Eof => return Err(ReadFail::PartialHead(self.buf.clone())),
                    Fill::Timeout => return Err(ReadFail::Timeout(self.buf.clone())),
                }
            };
            let head: Vec<u8> = self.buf.drain(..end + 4).collect();
            let mut lines = head[..end]
                .split(|&b| b == b'\n')
                .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
            let status_line =
                String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
            let status: u16 = match status_line.split(' ').nth(1).and_then(|s| s.parse().ok()) {
                Some(s) if status_line.starts_with("HTTP/1.") => s,
                _ => return Err(ReadFail::Garbage(head)),
            };
            let headers: Vec<(String, Vec<u8>)> = lines
                .filter_map(|l| {
                    let colon = l.iter().position(|&b| b == b':')?;
                    Some((
                        String::from_utf8_lossy(&l[..colon])
                            .trim()
                            .to_ascii_lowercase(),
                        l[colon + 1..].trim_ascii().to_vec(),
                    ))
                })
                .collect();
            if (100..200).contains(&status) && status != 101 {
                continue;
            }
            let get = |name: &str| {
                headers
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| String::from_utf8_lossy(v).to_ascii_lowercase())
            };
            let mut raw = head.clone();
            let (body, complete) = if head_request || status == 204 || status == 304 {
                (Vec::new(), true)
            } else if get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
                self.chunked().await
            } else if let Some(length) = get("content-length") {
                let length: usize = length.trim().parse().unwrap_or(0);
                self.sized(length).await
            } else {
                self.until_close().await
            };
            raw.extend_from_slice(&body);
            return Ok(Resp {
                status,
                headers,
                body,
                complete,
                raw,
            });
        }
    }

    async fn sized(&mut self, length: usize) -> (Vec<u8>, bool) {
        while self.buf.len() < length {
            if !matches!(self.fill(READ_WAIT).await, Fill::More) {
                return (std::mem::take(&mut self.buf), false);
            }
        }
        (self.buf.drain(..length).collect(), true)
    }

    async fn until_close(&mut self) -> (Vec<u8>, bool) {
        loop {
            match self.fill(READ_WAIT).await {
                Fill::More => {}
                Fill::Eof => return (std::mem::take(&mut self.buf), true),
                Fill::Timeout => return (std::mem::take(&mut self.buf), false),
            }
        }
    }

    async fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let mut line: Vec<u8> = self.buf.drain(..i + 2).collect();
                line.truncate(i);
                return Some(line);
            }
            if !matches!(self.fill(READ_WAIT).await, Fill::More) {
                return None;
            }
        }
    }

    async fn chunked(&mut self) -> (Vec<u8>, bool) {
        let mut body = Vec::new();
        loop {
            let Some(line) = self.line().await else {
                body.append(&mut self.buf);
                return (body, false);
            };
            let text = String::from_utf8_lossy(&line);
            let Ok(size) = usize::from_str_radix(text.split(';').next().unwrap_or("").trim(), 16)
            else {
                body.extend_from_slice(&line);
                return (body, false);
            };
            if size == 0 {
                loop {
                    match self.line().await {
                        Some(l) if l.is_empty() => return (body, true),
                        Some(_) => {}
                        None => return (body, false),
                    }
                }
            }
            let (data, done) = self.sized(size).await;
            body.extend_from_slice(&data);
            if !done || self.line().await.is_none() {
                return (body, false);
            }
        }
    }

    /// Whether the peer closes the connection within `wait`.
    pub(crate) async fn after(&mut self, wait: Duration) -> After {
        if !self.buf.is_empty() {
            return After::Data(std::mem::take(&mut self.buf));
        }
        match self.fill(wait).await {
            Fill::Eof => After::Closed,
            Fill::Timeout => After::Open,
            Fill::More => After::Data(std::mem::take(&mut self.buf)),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Every transaction handle (`pkce.` and 22 base64url characters) in
/// `text`.
pub(crate) fn handles(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find("pkce.") {
        let start = from + i;
        let tail = &bytes[start + 5..];
        let n = tail
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
            .count();
        if n == 22 {
            found.push(text[start..start + 27].to_owned());
        }
        from = start + 5;
    }
    found
}

/// Whether `text` names a `code` parameter: `code=` at a parameter's start
/// or a form field named `code`, in any case.
fn names_code(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let at_start = lower.match_indices("code=").any(|(i, _)| {
        i == 0 || !matches!(bytes[i - 1], b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.')
    });
    at_start
        || ["name=\"code\"", "name='code'", "name=code "]
            .iter()
            .any(|n| lower.contains(n))
}

/// Where an answer hands out a handle beside a code, if it does: the
/// handle must never reach a client in a code delivery.
pub(crate) fn handle_beside_code(resp: &Resp) -> Option<String> {
    let mut places: Vec<(&str, String)> = Vec::new();
    for name in ["location", "refresh", "content-location"] {
        if let Some(v) = resp.header(name) {
            // Bytes as latin-1, so that one raw byte is one character.
            let text: String = v.iter().map(|&b| char::from(b)).collect();
            places.push((name, text));
        }
    }
    places.push(("body", String::from_utf8_lossy(&resp.body).into_owned()));
    for (place, text) in places {
        for candidate in [text.clone(), decode(&text.replace("&amp;", "&"))] {
            let found = handles(&candidate);
            if !found.is_empty() && names_code(&candidate) {
                return Some(format!("{place} carries handle {} beside a code", found[0]));
            }
        }
    }
    None
}

#[derive(Default)]
struct Ledger {
    /// Authorization requests the test sent with a `code_challenge`.
    challenged: HashSet<String>,
    /// Token requests (id, code) that carry the right verifier for the code.
    legit: HashSet<(String, String)>,
    /// Every byte any client received.
    received: Vec<u8>,
}

/// One proxy in one mode in front of one hostile upstream, with the
/// record of what the test's clients sent and received.
pub(crate) struct World {
    pub(crate) mode: Mode,
    pub(crate) up: Hostile,
    pub(crate) proxy: Proxy,
    ledger: Mutex<Ledger>,
}

impl World {
    pub(crate) async fn start(mode: Mode, knobs: Knobs, extra: &[&str]) -> Self {
        let up = Hostile::start(knobs).await;
        let mut args: Vec<&str> = mode.args().to_vec();
        args.extend_from_slice(extra);
        let proxy = Proxy::spawn(&format!("http://{}", up.addr), &args);
        Self {
            mode,
            up,
            proxy,
            ledger: Mutex::new(Ledger::default()),
        }
    }

    /// `[mode]`, to start failure messages.
    pub(crate) fn tag(&self) -> String {
        format!("[{:?}]", self.mode)
    }

    /// The proxy's last log lines, for failure messages.
    pub(crate) fn proxy_log(&self) -> String {
        format!(
            "\nthe proxy's last log lines:\n    {}",
            self.proxy.log_tail(4)
        )
    }

    pub(crate) fn log(&self) -> MutexGuard<'_, Log> {
        self.up.log()
    }

    pub(crate) fn set(&self, change: impl FnOnce(&mut Knobs)) {
        self.up.set(change);
    }

    pub(crate) async fn conn(&self) -> Conn {
        Conn::open(self.proxy.addr).await
    }

    /// Records what a request is, before it is sent.
    pub(crate) fn note(&self, req: &Req) {
        let mut ledger = lock(&self.ledger);
        let body = match &req.body {
            Body::Sized(b) | Body::Chunked(b, _) | Body::Raw(b) => b.clone(),
            Body::Empty => Vec::new(),
        };
        if route(&req.target) == "/authorize"
            && (req.target.contains("code_challenge=") || contains(&body, b"code_challenge="))
        {
            ledger.challenged.insert(req.id.clone());
        }
        if let Some(code) = &req.legit_for {
            ledger.legit.insert((req.id.clone(), code.clone()));
        }
    }

    /// The checks every answer gets: it answers the request it was read
    /// for, and it hands out no handle beside a code.
    pub(crate) fn check(&self, req: &Req, resp: &Resp) {
        let served = resp.header_str("x-served");
        let id = resp.header_str("x-test-id");
        if let Some(served) = &served {
            // The proxy rewrites an authorization request's query (its
            // state becomes the handle), never the path nor x-test-id.
            let path = |target: &str| target.split('?').next().unwrap_or("").to_owned();
            let same_path = !req.target.starts_with('/') || path(served) == path(&req.target);
            assert!(
                same_path && id.as_deref() == Some(req.id.as_str()),
                "{} the answer read for {} is the upstream's answer to another request \
                 (x-served {served:?}, x-test-id {id:?}): {}\nupstream saw:{}",
                self.tag(),
                req.line(),
                resp.describe(),
                self.log().summary()
            );
        }
        if let Some(why) = handle_beside_code(resp) {
            panic!(
                "{} the answer to {} hands a transaction handle to the client in a code \
                 delivery ({why}): {}",
                self.tag(),
                req.line(),
                resp.describe()
            );
        }
    }

    /// Sends on a new connection and reads the answer.
    pub(crate) async fn send(&self, req: &Req) -> Resp {
        let mut conn = self.conn().await;
        self.send_on(&mut conn, req).await
    }

    pub(crate) async fn send_on(&self, conn: &mut Conn, req: &Req) -> Resp {
        self.try_send_on(conn, req).await.unwrap_or_else(|e| {
            panic!(
                "{} {}: {e}\nupstream saw:{}",
                self.tag(),
                req.line(),
                self.log().summary()
            )
        })
    }

    pub(crate) async fn try_send_on(&self, conn: &mut Conn, req: &Req) -> Result<Resp, ReadFail> {
        let resp = self.try_send_unchecked(conn, req).await?;
        self.check(req, &resp);
        Ok(resp)
    }

    /// Sends and reads without [`check`](Self::check)ing the answer, for a
    /// test that makes its own, more precise assertions first (and then
    /// calls `check`).
    pub(crate) async fn send_unchecked(&self, req: &Req) -> Resp {
        let mut conn = self.conn().await;
        self.try_send_unchecked(&mut conn, req)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{} {}: {e}\nupstream saw:{}",
                    self.tag(),
                    req.line(),
                    self.log().summary()
                )
            })
    }

    pub(crate) async fn try_send_unchecked(
        &self,
        conn: &mut Conn,
        req: &Req,
    ) -> Result<Resp, ReadFail> {
        self.note(req);
        // A failed write is not the end: an early refusal may be there to
        // read.
        let _ = conn.write(&req.bytes()).await;
        let resp = conn.response(req.is_head()).await?;
        lock(&self.ledger).received.extend_from_slice(&resp.raw);
        Ok(resp)
    }

    /// Writes `reqs` back to back in one write, then reads their answers in
    /// order; stops at the first that cannot be read.
    pub(crate) async fn pipeline(
        &self,
        conn: &mut Conn,
        reqs: &[Req],
    ) -> Vec<Result<Resp, ReadFail>> {
        let mut bytes = Vec::new();
        for r in reqs {
            self.note(r);
            bytes.extend(r.bytes());
        }
        let _ = conn.write(&bytes).await;
        let mut out = Vec::new();
        for r in reqs {
            match conn.response(r.is_head()).await {
                Ok(resp) => {
                    lock(&self.ledger).received.extend_from_slice(&resp.raw);
                    self.check(r, &resp);
                    out.push(Ok(resp));
                }
                Err(e) => {
                    out.push(Err(e));
                    break;
                }
            }
        }
        out
    }

    /// Whether any request with this `x-test-id` reached the upstream.
    pub(crate) fn upstream_saw(&self, id: &str) -> bool {
        !self.log().with_id(id).is_empty()
    }

    /// Asserts that no request with this `x-test-id` reached the upstream.
    pub(crate) fn assert_not_forwarded(&self, req: &Req, resp: &Resp) {
        let log = self.log();
        assert!(
            log.with_id(&req.id).is_empty(),
            "{} {} reached the upstream, which must never see it (the client got {}); \
             upstream saw:{}",
            self.tag(),
            req.line(),
            resp.describe(),
            log.summary()
        );
    }

    /// Whether `needle` appears in anything any client received.
    pub(crate) fn received(&self, needle: &str) -> bool {
        contains(&lock(&self.ledger).received, needle.as_bytes())
    }

    /// The checks on the upstream's log at the end of every test: the
    /// upstream never issued a token for a code issued under a challenge
    /// to a request that did not carry its verifier (a request the
    /// upstream parsed out of another's body aside: the proxy cannot stop a
    /// server misreading bytes it was asked to carry, only keep the answer
    /// from anyone), and no token issued to such a request reached a client.
    pub(crate) fn finish(self) {
        let log = self.up.log();
        let ledger = lock(&self.ledger);
        let mut challenged_handles = HashSet::new();
        for seen in &log.requests {
            if seen.route() == "/authorize"
                && seen
                    .test_id
                    .as_ref()
                    .is_some_and(|id| ledger.challenged.contains(id))
            {
                challenged_handles.extend(handles(&seen.target));
                if let Some(body) = &seen.body {
                    challenged_handles.extend(handles(&String::from_utf8_lossy(body)));
                }
            }
        }
        for token in &log.tokens {
            if let Some(at) = &token.access_token
                && token.from_body
            {
                assert!(
                    !contains(&ledger.received, at.as_bytes()),
                    "{} a token the upstream issued to a request it parsed out of another \
                     request's body (x-test-id {:?}, params {:?}) reached a client; \
                     upstream saw:{}",
                    self.tag(),
                    token.test_id,
                    token.params,
                    log.summary()
                );
            }
            if token.answered != Some(200) || token.from_body {
                continue;
            }
            let Some(code) = &token.code else { continue };
            let Some(issued) = log.issued.iter().find(|i| &i.code == code) else {
                continue;
            };
            let under_challenge = issued
                .state
                .as_ref()
                .is_some_and(|s| handles(s).iter().any(|h| challenged_handles.contains(h)));
            if !under_challenge {
                continue;
            }
            let legit = token
                .test_id
                .as_ref()
                .is_some_and(|id| ledger.legit.contains(&(id.clone(), code.clone())));
            assert!(
                legit,
                "{} the upstream issued a token (200) for code {code}, issued under a \
                 code_challenge, to token request x-test-id {:?} which did not carry the right \
                 code_verifier (params {:?}); upstream saw:{}",
                self.tag(),
                token.test_id,
                token.params,
                log.summary()
            );
        }
    }
}
