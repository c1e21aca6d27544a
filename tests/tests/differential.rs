//! HTTP/1.1 framing, the proxy's against hyper's: generated and mutated
//! byte streams go to both, and both must read the same messages out of
//! them, or the proxy must refuse for a reason listed below.
//!
//! # Requests
//!
//! Each case is one to three pipelined requests built from parts
//! (methods, targets, `Host` spellings and values, every `Content-Length`
//! and `Transfer-Encoding` combination, chunk sizes with and without
//! leading zeros, extensions, trailers, bodies that miss their length),
//! then, for half the cases, one to three random byte mutations (a byte
//! replaced or inserted from a set of delimiters, deleted, a run
//! duplicated, the stream cut). The stream goes, on a connection of its
//! own whose write side is then shut, to:
//!
//! - the proxy, in process, in front of a hyper server that records each
//!   request it received whole: method, target (path and query), `Host`
//!   and body. The proxy frames a body again (by length or chunked), so
//!   what the framing decided is in the body bytes;
//! - hyper's `server::conn::http1` on a loopback socket, whose service
//!   records the same of each request it read whole.
//!
//! The proxy's log, in which the recording upstream notes each request it
//! took, gives what the proxy did in order: requests forwarded and
//! requests refused. Walked against hyper's list, each request forwarded
//! must be the one hyper read at that point, and each refusal stands for
//! the request hyper read there, if any, and must then give a reason from
//! the table below; what hyper read after a refusal that closed the
//! connection counts against that refusal. A case where the proxy took a
//! request hyper did not, or the two read different requests, fails.
//! Hyper's `Host` is the client's; the proxy gives a request that has none
//! (HTTP/1.0) the upstream's, so a missing `Host` on hyper's side matches
//! any. A case whose target the PKCE layer serves as an endpoint is left
//! out (the layer, not the framing, answers it).
//!
//! # Responses
//!
//! Each case is a response built from parts (status lines, interim
//! answers, the same framing combinations, chunked bodies with trailers,
//! bytes after the message, heads past the field limit), mutated as above,
//! written by a scripted upstream that then closes. It answers a `GET` (or,
//! for one case in eight, a `HEAD`):
//!
//! - through the proxy, read by hyper's client (the proxy's own output is
//!   well formed, so hyper reads what the proxy meant);
//! - directly by hyper's `client::conn::http1` (with the proxy's limit of
//!   128 fields).
//!
//! Both must give the same status, the same body bytes (or both fail the
//! body), and the same trailers once the proxy's trailer filter is applied
//! to hyper's; or the proxy must refuse (its own 502, or a body it cuts)
//! for a reason in the table below.
//!
//! # Deliberate strictness: what the proxy refuses and hyper takes
//!
//! | the proxy's reason (in its log) | side | why |
//! | --- | --- | --- |
//! | `ambiguous or invalid request framing` | request | both `Content-Length` and `Transfer-Encoding`, `Transfer-Encoding` twice or in HTTP/1.0, a coding list (`chunked, chunked`): each is read differently by some server in front or behind (hyper lets `Transfer-Encoding` win) |
//! | `only the chunked transfer coding is supported` | request | `gzip, chunked`: the proxy does not pass on codings it cannot check |
//! | `a request needs exactly one Host header` | request | RFC 9112 §3.2 (hyper takes none or two) |
//! | `invalid Host: ...` | request | a `Host` that is not a host and port (hyper does not look) |
//! | `... request must not have a body` | request | a body on GET, HEAD, DELETE, OPTIONS or TRACE (I1) |
//! | `CONNECT is not served` | request | a reverse proxy has no tunnel |
//! | `the Connection header must not name ...` | request | I5 |
//! | `a control character in the request path`, `the request path is not UTF-8 once decoded`, `malformed percent-encoding in the request path` | request | what a server that decodes the path reads differently |
//! | `invalid Content-Length` | both | a length past 2^63−1; on a response also a list (`5, 5`), which hyper takes when its values agree |
//! | `conflicting Content-Length values` | response | on a response that has no body (1xx, 204, 304, to HEAD), where hyper does not read the field: an upstream that contradicts itself is not trusted with the next response either |
//! | `chunk size too large` | both | a chunk size past 2^63−1 |
//! | `invalid chunk extension` | both | a control character in a chunk extension (hyper takes all but LF) |
//! | `a trailer line must end with CRLF` | both | a bare LF in the trailer section: hyper reads on to the next CRLF CRLF, so a request after `0\r\n\n` or `0\r\nx: y\n\n` is a trailer to hyper and a request to a reader that ends lines at LF (the proxy did, before this test) |
//! | `the upstream switched protocols` | response | a 101 the proxy did not ask for |
//!
//! Limits are set alike (hyper's client takes 128 response fields here, as
//! the proxy does; both take 100 request fields), so heads past them are
//! refused by both.
//!
//! # Disagreements found, and fixed
//!
//! - A bare LF in a chunked body's trailer section, or as its last line
//!   (`0\r\n\n`): the proxy ended the message there and read what followed
//!   as the next request; hyper reads on to the next CRLF CRLF and takes
//!   that request for trailers. Two readers, two different requests: the
//!   proxy now refuses the body (`a trailer line must end with CRLF`).
//! - A `Transfer-Encoding` in an HTTP/1.0 response: the proxy read the body
//!   as chunked, hyper refuses it (RFC 9112 §6.1: faulty framing); the
//!   proxy now answers 502.
//!
//! No case is left where the proxy takes what hyper refuses, or where both
//! take a message and read it differently.
//!
//! The run is deterministic (fixed seeds; case `n` is generated from seed
//! `SEED + n`, so a failure names the case that reproduces it) and takes
//! a few seconds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use pkce_proxy::config::{Config, RawSettings};
use pkce_proxy::server::{Running, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower_pkce::{Endpoint, PkceLayer};

const SEED: u64 = 0x5eed_2026;
const REQUEST_CASES: u64 = 5000;
const RESPONSE_CASES: u64 = 4000;

// ------------------------------------------------------------- generation

/// splitmix64: small, fast, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

const METHODS: &[&str] = &[
    "GET", "GET", "GET", "POST", "POST", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS",
    "FOO", "get", "CONNECT", "TRACE",
];
const TARGETS: &[&str] = &[
    "/",
    "/a",
    "/a",
    "/a/b?x=1&y=2",
    "/p%20q",
    "/%41b",
    "*",
    "http://h.example/x?q=1",
    "/x%00",
    "/x%c0%ae",
    "/%zz",
    "//double",
    "/a;b=c",
    "/x#frag",
    "/q?v=%00",
    "/a/../b",
    "/%2e%2e/c",
    "/caf%C3%A9",
    "/x%2500",
    "/y%3f",
];
const HOSTS: &[&str] = &[
    "h.example",
    "h.example",
    "h.example:8080",
    "127.0.0.1",
    "[::1]:80",
    "H.Example",
    "a b",
    "",
    "user@h",
    "h/x",
    "h:99999",
    "h,i",
];
const HOST_NAMES: &[&str] = &["Host", "host", "HOST", "hOsT"];
const SEPARATORS: &[&str] = &[": ", ": ", ":", ":\t", ":  ", " : "];
const REQUEST_EXTRAS: &[&str] = &[
    "X-A: b",
    "Connection: close",
    "Connection: keep-alive",
    "Expect: 100-continue",
    "Accept: */*",
    "TE: trailers",
    "Cookie: a=b",
    "Connection: x-a\r\nX-A: 1",
    "Connection: host",
    "Upgrade: websocket\r\nConnection: upgrade",
];
const CODINGS: &[&str] = &[
    "chunked",
    "chunked",
    "chunked",
    "Chunked",
    "CHUNKED",
    " chunked",
    "chunked ",
    "gzip, chunked",
    "chunked, chunked",
    "chunked, gzip",
    "identity",
    "gzip",
    "chunked;q=1",
];
const EXTENSIONS: &[&str] = &[";a=b", ";a=\"q\"", " ;x", ";", "; a = b", ";a\x01", "\t;y"];
const REQUEST_TRAILERS: &[&str] = &["X-T: 1", "Host: evil", "Content-Length: 5", "X-T:v"];
const RESPONSE_TRAILERS: &[&str] = &[
    "Content-Digest: sha-256=:x:",
    "Server-Timing: a",
    "Set-Cookie: s=1",
    "X-T: 1",
    "Content-Length: 5",
];
/// What a mutation writes: delimiters, and bytes a parser may stumble on.
const MUTANTS: &[u8] = b"\r\n \t\x00:;0aF%\x7f\x80\xff,\"";

fn data(rng: &mut Rng) -> Vec<u8> {
    const ALPHABET: &[u8] = b"abcdefXYZ0129 =&-\r\n";
    (0..rng.below(40)).map(|_| rng.pick(ALPHABET)).collect()
}

fn hex(rng: &mut Rng, n: usize) -> String {
    let mut size = if rng.chance(50) {
        format!("{n:x}")
    } else {
        format!("{n:X}")
    };
    if rng.chance(10) {
        size.insert_str(0, &"0".repeat(1 + rng.below(20)));
    }
    size
}

/// A chunked body of `data`, with extensions, trailers and (rarely) a size
/// that does not match its data.
fn chunked(rng: &mut Rng, data: &[u8], trailers: &[&str], eol: &str, out: &mut Vec<u8>) {
    let mut rest = data;
    while !rest.is_empty() {
        let n = 1 + rng.below(rest.len());
        let (chunk, after) = rest.split_at(n);
        rest = after;
        let told = if rng.chance(3) {
            n + rng.below(3)
        } else if rng.chance(3) {
            n - 1
        } else {
            n
        };
        out.extend_from_slice(hex(rng, told).as_bytes());
        if rng.chance(15) {
            out.extend_from_slice(rng.pick(EXTENSIONS).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(rng.pick(&["0", "0", "0", "00", "000"]).as_bytes());
    if rng.chance(10) {
        out.extend_from_slice(rng.pick(EXTENSIONS).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    if rng.chance(25) {
        for _ in 0..1 + rng.below(2) {
            out.extend_from_slice(rng.pick(trailers).as_bytes());
            out.extend_from_slice(eol.as_bytes());
        }
    }
    out.extend_from_slice(eol.as_bytes());
}

/// The framing fields of a message and its body, by one of many shapes.
fn framing(
    rng: &mut Rng,
    trailers: &[&str],
    eol: &str,
    fields: &mut Vec<String>,
    body: &mut Vec<u8>,
) {
    let data = data(rng);
    let n = data.len();
    match rng.below(12) {
        0 | 1 => {}
        2..=4 => {
            fields.push(format!("Content-Length: {n}"));
            body.extend_from_slice(&data);
        }
        5 => {
            let value = match rng.below(10) {
                0 => format!("0{n}"),
                1 => format!("+{n}"),
                2 => format!("{n}, {n}"),
                3 => "9223372036854775808".to_owned(),
                4 => "18446744073709551615".to_owned(),
                5 => format!("{n} "),
                6 => "-1".to_owned(),
                7 => format!("{}", n + 1 + rng.below(5)),
                8 => format!("{}", n.saturating_sub(1 + rng.below(5))),
                _ => format!("{n}\r\nContent-Length: {}", n + rng.below(2)),
            };
            fields.push(format!("Content-Length: {value}"));
            body.extend_from_slice(&data);
        }
        6..=8 => {
            fields.push(format!("Transfer-Encoding: {}", rng.pick(CODINGS)));
            chunked(rng, &data, trailers, eol, body);
        }
        9 => {
            fields.push("Transfer-Encoding: gzip".to_owned());
            fields.push("Transfer-Encoding: chunked".to_owned());
            chunked(rng, &data, trailers, eol, body);
        }
        10 => {
            fields.push(format!("Content-Length: {n}"));
            fields.push(format!("Transfer-Encoding: {}", rng.pick(CODINGS)));
            chunked(rng, &data, trailers, eol, body);
        }
        _ => {
            fields.push(format!("Transfer-Encoding: {}", rng.pick(CODINGS)));
            fields.push(format!("Content-Length: {n}"));
            body.extend_from_slice(&data);
        }
    }
}

fn request(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..1 + rng.below(3) {
        let eol = if rng.chance(5) { "\n" } else { "\r\n" };
        let version = if rng.chance(8) {
            "HTTP/1.0"
        } else if rng.chance(2) {
            "HTTP/1.2"
        } else {
            "HTTP/1.1"
        };
        let mut fields = Vec::new();
        if rng.chance(93) {
            let host = if rng.chance(75) {
                "h.example"
            } else {
                rng.pick(HOSTS)
            };
            fields.push(format!(
                "{}{}{host}",
                rng.pick(HOST_NAMES),
                rng.pick(SEPARATORS)
            ));
        }
        if rng.chance(3) {
            fields.push(format!("Host: {}", rng.pick(HOSTS)));
        }
        for _ in 0..rng.below(3) {
            fields.push(rng.pick(REQUEST_EXTRAS).to_owned());
        }
        let mut body = Vec::new();
        framing(rng, REQUEST_TRAILERS, eol, &mut fields, &mut body);
        let at = rng.below(fields.len() + 1);
        if rng.chance(30) {
            fields.insert(at, "X-Padding: p".to_owned());
        }
        let target = if rng.chance(70) {
            "/a"
        } else {
            rng.pick(TARGETS)
        };
        let mut head = format!("{} {target} {version}{eol}", rng.pick(METHODS));
        for field in &fields {
            head.push_str(&field.replace("\r\n", eol));
            head.push_str(eol);
        }
        head.push_str(eol);
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(&body);
    }
    out
}

fn response(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    if rng.chance(8) {
        out.extend_from_slice(rng.pick(&[
            &b"HTTP/1.1 100 Continue\r\n\r\n"[..],
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
        ]));
    }
    let status = if rng.chance(60) {
        "HTTP/1.1 200 OK"
    } else {
        rng.pick(&[
            "HTTP/1.1 200",
            "HTTP/1.0 200 OK",
            "HTTP/1.1 201 Created",
            "HTTP/1.1 204 No Content",
            "HTTP/1.1 304 Not Modified",
            "HTTP/1.1 404 Not Found",
            "HTTP/1.1 500 Internal",
            "HTTP/1.1 299 X",
            "HTTP/1.1 999 X",
            "HTTP/1.1 101 Switching Protocols",
            "http/1.1 200 OK",
            "HTTP/1.1  200 OK",
            "HTTP/1.1 200 OK ",
        ])
    };
    let eol = if rng.chance(5) { "\n" } else { "\r\n" };
    let mut fields = vec!["Content-Type: application/octet-stream".to_owned()];
    for _ in 0..rng.below(3) {
        fields.push(
            rng.pick(&[
                "X-A: b",
                "Connection: close",
                "Connection: keep-alive",
                "Set-Cookie: a=b",
                "Trailer: content-digest",
            ])
            .to_owned(),
        );
    }
    if rng.chance(3) {
        let many = 100 + rng.below(40);
        for i in 0..many {
            fields.push(format!("X-F{i}: v"));
        }
    }
    let mut body = Vec::new();
    framing(rng, RESPONSE_TRAILERS, eol, &mut fields, &mut body);
    out.extend_from_slice(status.as_bytes());
    out.extend_from_slice(eol.as_bytes());
    for field in &fields {
        out.extend_from_slice(field.replace("\r\n", eol).as_bytes());
        out.extend_from_slice(eol.as_bytes());
    }
    out.extend_from_slice(eol.as_bytes());
    out.extend_from_slice(&body);
    if rng.chance(10) {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nextra");
    }
    out
}

/// One to three random byte mutations.
fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(3) {
        if bytes.is_empty() {
            return;
        }
        let at = rng.below(bytes.len());
        match rng.below(6) {
            0 => bytes[at] = rng.pick(MUTANTS),
            1 => bytes.insert(at, rng.pick(MUTANTS)),
            2 => {
                bytes.remove(at);
            }
            3 => {
                let end = (at + 1 + rng.below(8)).min(bytes.len());
                let run = bytes[at..end].to_vec();
                bytes.splice(at..at, run);
            }
            4 => bytes.truncate(at.max(1)),
            _ => {
                bytes.splice(at..at, *b"\r\n");
            }
        }
    }
}

fn show(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

// ------------------------------------------------------------- the logs

/// The proxy's log lines, kept per thread (each test runs the proxy on its
/// own single-threaded runtime).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let sink = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn take(&self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut *self.0.lock().unwrap())).into_owned()
    }
}

/// The reasons of the table in the module's docs: each is a refusal the
/// proxy makes on purpose where hyper reads on.
const DELIBERATE: &[&str] = &[
    "ambiguous or invalid request framing",
    "only the chunked transfer coding is supported",
    "a request needs exactly one Host header",
    "invalid Host: ",
    "request must not have a body",
    "CONNECT is not served",
    "the Connection header must not name",
    "a control character in the request path",
    "the request path is not UTF-8 once decoded",
    "malformed percent-encoding in the request path",
    "invalid Content-Length",
    "conflicting Content-Length values",
    "chunk size too large",
    "invalid chunk extension",
    "a trailer line must end with CRLF",
    "the upstream switched protocols",
];

fn deliberate(log: &str) -> Option<&'static str> {
    DELIBERATE.iter().copied().find(|why| log.contains(why))
}

/// What each side made of the cases: agreements, and the proxy's
/// deliberate refusals by reason; failures are kept whole.
#[derive(Default)]
struct Tally {
    agreed: usize,
    skipped: usize,
    stricter: std::collections::BTreeMap<&'static str, usize>,
    failures: Vec<String>,
}

impl Tally {
    /// Keeps a failing case (the first twelve whole, then a count).
    fn fail(&mut self, case: u64, what: &str, input: &[u8], detail: String, log: &str) {
        if self.failures.len() < 12 {
            self.failures.push(format!(
                "case {case} ({what}):\n  input: {}\n  {detail}\n  log: {}",
                show(input),
                log.lines()
                    .filter(|l| l.contains("pkce"))
                    .collect::<Vec<_>>()
                    .join("\n       ")
            ));
        } else {
            self.failures.push(String::new());
        }
    }

    fn report(&self, what: &str) {
        println!(
            "{what}: {} agreed, {} skipped, {} stricter by design {:?}, {} failed",
            self.agreed,
            self.skipped,
            self.stricter.values().sum::<usize>(),
            self.stricter,
            self.failures.len()
        );
        let shown: Vec<&str> = self
            .failures
            .iter()
            .filter(|f| !f.is_empty())
            .map(String::as_str)
            .collect();
        assert!(
            self.failures.is_empty(),
            "{} {what} cases disagree:\n{}",
            self.failures.len(),
            shown.join("\n")
        );
    }
}

// ------------------------------------------------------------- requests

/// What a server read whole: method, target, `Host`, body.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    method: String,
    target: String,
    host: Option<Vec<u8>>,
    body: Vec<u8>,
}

impl Seen {
    fn agrees_with(&self, hyper: &Seen) -> bool {
        self.method == hyper.method
            && self.target == hyper.target
            && self.body == hyper.body
            && (hyper.host.is_none() || self.host == hyper.host)
    }
}

type Records = Arc<Mutex<Vec<Seen>>>;

/// Records `req` once its body is read whole; answers "ok".
async fn record(
    req: Request<Incoming>,
    records: Records,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().to_string(), |pq| pq.as_str().to_owned());
    let host = req
        .headers()
        .get(http::header::HOST)
        .map(|h| h.as_bytes().to_vec());
    if let Ok(body) = req.into_body().collect().await {
        let mut records = records.lock().unwrap();
        tracing::info!("recorded request #{}", records.len());
        records.push(Seen {
            method,
            target,
            host,
            body: body.to_bytes().to_vec(),
        });
        return Ok(Response::new(Full::new(Bytes::from_static(b"ok"))));
    }
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = http::StatusCode::BAD_REQUEST;
    Ok(response)
}

/// The upstream behind the proxy: hyper's server, recording.
async fn recorder() -> (SocketAddr, Records) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let records: Records = Arc::default();
    let shared = records.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let records = shared.clone();
            let service = hyper::service::service_fn(move |req| record(req, records.clone()));
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (addr, records)
}

async fn proxy(upstream: SocketAddr) -> Running {
    let settings = RawSettings {
        upstream: Some(format!("http://{upstream}")),
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        response_timeout: Some("2".into()),
        ..RawSettings::default()
    };
    start(Config::resolve(&settings).unwrap()).await.unwrap()
}

/// Writes `input` on `stream`, shuts the write side, and reads until the
/// peer closes: `false` if that takes more than a few seconds.
async fn exchange(mut stream: TcpStream, input: &[u8]) -> bool {
    let _ = stream.write_all(input).await;
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let read = async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .is_ok()
}

/// What the proxy did with a connection's requests, in order: from its
/// log, in which the upstream behind it notes each request it recorded.
enum Event<'l> {
    Forwarded(usize),
    Refused(&'l str),
}

fn events(log: &str) -> Vec<Event<'_>> {
    log.lines()
        .filter_map(|line| {
            if let Some(at) = line.find("recorded request #") {
                let n = line[at + "recorded request #".len()..].trim();
                return Some(Event::Forwarded(n.parse().unwrap()));
            }
            (line.contains("request refused")
                || line.contains("refused a request head")
                || line.contains("the client's request body failed")
                || line.contains("request body failed"))
            .then_some(Event::Refused(line))
        })
        .collect()
}

/// Walks the proxy's events against what hyper read: each request the
/// proxy forwarded must be the one hyper read at that point, and each
/// request the proxy refused and hyper read must have been refused for a
/// listed reason (what hyper read after a refusal that closed the
/// connection counts against that refusal). Gives the reasons of the
/// refusals hyper did not share.
fn align(log: &str, ours: &[Seen], theirs: &[Seen]) -> Result<Vec<&'static str>, String> {
    let mut next = 0;
    let mut reasons = Vec::new();
    let mut last_refusal = None;
    for event in events(log) {
        match event {
            Event::Forwarded(n) => {
                let seen = ours.get(n).ok_or("a record went missing")?;
                if !theirs.get(next).is_some_and(|t| seen.agrees_with(t)) {
                    return Err(format!(
                        "the proxy forwarded request {n}, hyper read otherwise"
                    ));
                }
                next += 1;
                last_refusal = None;
            }
            Event::Refused(line) => {
                last_refusal = Some(line);
                if next < theirs.len() {
                    let why = deliberate(line)
                        .ok_or_else(|| format!("hyper read what the proxy refused: {line}"))?;
                    reasons.push(why);
                    next += 1;
                }
            }
        }
    }
    if next < theirs.len() && last_refusal.is_none() {
        return Err("hyper read more, and the proxy refused nothing".to_owned());
    }
    Ok(reasons)
}

/// Whether a target is one the PKCE layer answers itself.
fn endpoint(seen: &[Seen]) -> bool {
    let layer = PkceLayer::strict();
    seen.iter().any(|s| {
        let path = s.target.split('?').next().unwrap_or("");
        layer.endpoint(path) != Endpoint::Other
    })
}

#[tokio::test]
async fn request_framing_agrees_with_hyper() {
    let captured = Captured::default();
    let _guard = captured.install();
    let (up, through_proxy) = recorder().await;
    let proxy = proxy(up).await;
    let hyper_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hyper_addr = hyper_listener.local_addr().unwrap();
    let mut tally = Tally::default();
    for case in 0..REQUEST_CASES {
        let mut rng = Rng(SEED.wrapping_add(case));
        let mut input = request(&mut rng);
        if rng.chance(50) {
            mutate(&mut rng, &mut input);
        }

        // hyper's server, on a connection of its own.
        let client = TcpStream::connect(hyper_addr).await.unwrap();
        let (server, _) = hyper_listener.accept().await.unwrap();
        let by_hyper: Records = Arc::default();
        let records = by_hyper.clone();
        let served = tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| record(req, records.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .half_close(true)
                .serve_connection(TokioIo::new(server), service)
                .await;
        });
        let hyper_done = exchange(client, &input).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), served).await;
        let by_hyper = std::mem::take(&mut *by_hyper.lock().unwrap());

        // The proxy.
        captured.take();
        through_proxy.lock().unwrap().clear();
        let ours_done = exchange(TcpStream::connect(proxy.addr).await.unwrap(), &input).await;
        let log = captured.take();
        let by_proxy = std::mem::take(&mut *through_proxy.lock().unwrap());

        if endpoint(&by_hyper) || endpoint(&by_proxy) {
            tally.skipped += 1;
            continue;
        }
        if !ours_done || !hyper_done {
            tally.fail(
                case,
                "request",
                &input,
                format!("a side did not close: proxy {ours_done}, hyper {hyper_done}"),
                &log,
            );
            continue;
        }
        let detail = || format!("proxy read {by_proxy:?}\n  hyper read {by_hyper:?}");
        match align(&log, &by_proxy, &by_hyper) {
            Ok(reasons) if reasons.is_empty() => tally.agreed += 1,
            Ok(reasons) => {
                for why in reasons {
                    *tally.stricter.entry(why).or_default() += 1;
                }
            }
            Err(why) => tally.fail(
                case,
                "request",
                &input,
                format!("{why}\n  {}", detail()),
                &log,
            ),
        }
    }
    proxy.shutdown().await;
    tally.report("requests");
}

// ------------------------------------------------------------- responses

/// What a client made of a response: the message whole (status, body and
/// trailers), or none (no head, the proxy's own 502, or a body that
/// failed: either way the client has no message it can use).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Failed(&'static str),
    Whole {
        status: u16,
        body: Vec<u8>,
        trailers: Vec<(String, Vec<u8>)>,
    },
}

/// The trailers the proxy passes on (`upstream::allowed_trailer`).
fn allowed_trailer(name: &str) -> bool {
    matches!(
        name,
        "content-digest"
            | "repr-digest"
            | "digest"
            | "server-timing"
            | "grpc-status"
            | "grpc-message"
            | "grpc-status-details-bin"
    )
}

/// The upstream that answers every request with the bytes in `answer`,
/// then closes.
async fn scripted(answer: Arc<Mutex<Vec<u8>>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let bytes = answer.lock().unwrap().clone();
                let _ = stream.write_all(&bytes).await;
                let _ = stream.shutdown().await;
                let drain = async { while matches!(stream.read(&mut buf).await, Ok(1..)) {} };
                let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
            });
        }
    });
    addr
}

/// Asks `addr` for `/r` with hyper's client (at most 128 fields, as the
/// proxy takes); `None` if no answer comes in time.
async fn ask(addr: SocketAddr, head: bool) -> Option<Answer> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_headers(128)
        .handshake::<_, Full<Bytes>>(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(if head { "HEAD" } else { "GET" })
        .uri("/r")
        .header("host", "h.example")
        .header("te", "trailers")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = async {
        let Ok(response) = sender.send_request(req).await else {
            return Answer::Failed("no head");
        };
        let status = response.status().as_u16();
        let Ok(collected) = response.into_body().collect().await else {
            return Answer::Failed("the body failed");
        };
        let trailers = collected
            .trailers()
            .map(|t| {
                t.iter()
                    .filter(|(n, _)| allowed_trailer(n.as_str()))
                    .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        Answer::Whole {
            status,
            body: collected.to_bytes().to_vec(),
            trailers,
        }
    };
    tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .ok()
}

/// The proxy's log lines about an upstream answer it refused or cut.
fn failures(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("upstream request failed") || l.contains("the response body failed"))
        .collect()
}

#[tokio::test]
async fn response_framing_agrees_with_hyper() {
    let captured = Captured::default();
    let _guard = captured.install();
    let answer = Arc::new(Mutex::new(Vec::new()));
    let upstream = scripted(answer.clone()).await;
    let proxy = proxy(upstream).await;
    let mut tally = Tally::default();
    for case in 0..RESPONSE_CASES {
        // Seeds of their own, apart from the requests'.
        let mut rng = Rng(SEED.wrapping_add(1 << 32).wrapping_add(case));
        let mut input = response(&mut rng);
        if rng.chance(50) {
            mutate(&mut rng, &mut input);
        }
        let head = rng.chance(12);
        *answer.lock().unwrap() = input.clone();
        let by_hyper = ask(upstream, head).await;
        captured.take();
        let by_proxy = ask(proxy.addr, head).await;
        let log = captured.take();
        let lines = failures(&log);
        // The proxy's own 502 (which has no body after HEAD): its log says so.
        let by_proxy = match by_proxy {
            Some(Answer::Whole { status: 502, .. })
                if lines.iter().any(|l| l.contains("upstream request failed")) =>
            {
                Some(Answer::Failed("the proxy's 502"))
            }
            answer => answer,
        };
        let (Some(ours), Some(theirs)) = (&by_proxy, &by_hyper) else {
            tally.fail(
                case,
                "response",
                &input,
                format!("no answer in time: proxy {by_proxy:?}, hyper {by_hyper:?}"),
                &log,
            );
            continue;
        };
        let detail = format!("proxy {ours:?}\n  hyper {theirs:?}");
        match (ours, theirs) {
            (Answer::Failed(_), Answer::Failed(_)) => tally.agreed += 1,
            (Answer::Whole { .. }, Answer::Whole { .. }) if ours == theirs => tally.agreed += 1,
            (Answer::Failed(_), Answer::Whole { .. }) => {
                match lines.iter().find_map(|line| deliberate(line)) {
                    Some(why) => *tally.stricter.entry(why).or_default() += 1,
                    None => tally.fail(
                        case,
                        "response",
                        &input,
                        format!("refused for a reason not listed\n  {detail}"),
                        &log,
                    ),
                }
            }
            _ => tally.fail(case, "response", &input, detail, &log),
        }
    }
    proxy.shutdown().await;
    tally.report("responses");
}
