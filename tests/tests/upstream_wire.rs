//! The proxy's HTTP/1.1 client against an upstream scripted byte by byte:
//! framing (length, chunked with trailers, until close, no body), interim
//! responses, malformed answers, and when an upstream connection is kept.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pkce_proxy::config::{Config, RawSettings};
use pkce_proxy::server::{Running, start};
use tests::ReadyFrames;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the scripted upstream saw: each request's raw bytes, and how many
/// connections it accepted.
#[derive(Default)]
struct Seen {
    requests: Vec<Vec<u8>>,
    connections: usize,
}

/// An upstream that answers the n-th request (over all connections) with
/// `answers[n]`: the raw bytes to write, and whether to close afterwards.
async fn scripted(answers: Vec<(&'static [u8], bool)>) -> (SocketAddr, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let answers = Arc::new(Mutex::new(VecDeque::from(answers)));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            record.lock().unwrap().connections += 1;
            let (record, answers) = (record.clone(), answers.clone());
            tokio::spawn(async move {
                let mut stream = stream;
                let mut buf = Vec::new();
                loop {
                    let Some(request) = read_request(&mut stream, &mut buf).await else {
                        return;
                    };
                    record.lock().unwrap().requests.push(request);
                    let Some((answer, close)) = answers.lock().unwrap().pop_front() else {
                        return;
                    };
                    if stream.write_all(answer).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one whole request (head and body, by its framing) off `stream`.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if !fill(stream, buf).await {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map(|v| v.trim().parse::<usize>().unwrap());
    let mut end = head_end;
    if head.contains("transfer-encoding: chunked") {
        loop {
            let line_end = loop {
                if let Some(i) = find(&buf[end..], b"\r\n") {
                    break end + i;
                }
                if !fill(stream, buf).await {
                    return None;
                }
            };
            let line = String::from_utf8_lossy(&buf[end..line_end]).to_string();
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).unwrap();
            end = line_end + 2;
            if size == 0 {
                // Trailers, up to an empty line.
                loop {
                    let line_end = loop {
                        if let Some(i) = find(&buf[end..], b"\r\n") {
                            break end + i;
                        }
                        if !fill(stream, buf).await {
                            return None;
                        }
                    };
                    let empty = line_end == end;
                    end = line_end + 2;
                    if empty {
                        break;
                    }
                }
                break;
            }
            while buf.len() < end + size + 2 {
                if !fill(stream, buf).await {
                    return None;
                }
            }
            end += size + 2;
        }
    } else if let Some(n) = length {
        while buf.len() < head_end + n {
            if !fill(stream, buf).await {
                return None;
            }
        }
        end = head_end + n;
    }
    let request = buf[..end].to_vec();
    buf.drain(..end);
    Some(request)
}

async fn proxy(upstream: SocketAddr) -> Running {
    let settings = RawSettings {
        upstream: Some(format!("http://{upstream}")),
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        response_timeout: Some("3".into()),
        ..RawSettings::default()
    };
    start(Config::resolve(&settings).unwrap()).await.unwrap()
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn empty() -> TestBody {
    Full::new(Bytes::new()).map_err(|e| match e {}).boxed()
}

async fn get(
    proxy: &Running,
    method: Method,
    path: &str,
) -> (StatusCode, HeaderMap, Result<Bytes, String>) {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", proxy.addr))
        .body(empty())
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client().request(req))
        .await
        .expect("the proxy answers in time")
        .unwrap();
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string());
    (parts.status, parts.headers, body)
}

#[tokio::test]
async fn a_body_delimited_by_close_is_passed_whole_and_the_connection_not_reused() {
    let (up, seen) = scripted(vec![
        (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end",
            true,
        ),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false),
    ])
    .await;
    let proxy = proxy(up).await;
    let (status, _, body) = get(&proxy, Method::GET, "/a").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.unwrap(), "until the end");
    let (_, _, body) = get(&proxy, Method::GET, "/b").await;
    assert_eq!(body.unwrap(), "ok");
    assert_eq!(seen.lock().unwrap().connections, 2);
    proxy.shutdown().await;
}

#[tokio::test]
async fn bodiless_answers_keep_the_connection_but_a_head_retires_it() {
    let (up, seen) = scripted(vec![
        // HEAD: the length describes the GET's body, which is not sent.
        (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false),
        (b"HTTP/1.1 204 No Content\r\n\r\n", false),
        (b"HTTP/1.1 304 Not Modified\r\netag: \"x\"\r\n\r\n", false),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", false),
    ])
    .await;
    let proxy = proxy(up).await;
    let (status, headers, body) = get(&proxy, Method::HEAD, "/h").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_LENGTH], "5");
    assert_eq!(body.unwrap(), "");
    let (status, _, body) = get(&proxy, Method::GET, "/n").await;
    assert_eq!(
        (status, body.unwrap()),
        (StatusCode::NO_CONTENT, Bytes::new())
    );
    let (status, _, _) = get(&proxy, Method::GET, "/m").await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    let (_, _, body) = get(&proxy, Method::GET, "/g").await;
    assert_eq!(body.unwrap(), "hello");
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    // The HEAD retired its connection (a naive server writes the GET's
    // body after the head, late); 204 and 304 kept theirs.
    assert_eq!(
        seen.connections, 2,
        "one connection for the HEAD, one for the rest"
    );
    assert!(seen.requests[0].starts_with(b"HEAD /h HTTP/1.1\r\n"));
    assert!(
        lower(&seen.requests[0]).contains("connection: close\r\n"),
        "the upstream is told"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn interim_answers_are_skipped() {
    let (up, _) = scripted(vec![(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 4\r\n\r\ndone",
        false,
    )])
    .await;
    let proxy = proxy(up).await;
    let (status, _, body) = get(&proxy, Method::GET, "/x").await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body.unwrap(), "done");
    proxy.shutdown().await;
}

#[tokio::test]
async fn chunked_answers_with_extensions_and_filtered_trailers() {
    let (up, seen) = scripted(vec![
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: content-digest\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\ncontent-digest: sha-256=:ZHVtbXk=:\r\nx-sum: 42\r\nset-cookie: sid=1\r\ncontent-length: 99\r\nlocation: /elsewhere\r\nServer-Timing: db;dur=5\r\n\r\n",
            false,
        ),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false),
    ])
    .await;
    let proxy = proxy(up).await;
    let req = Request::get(format!("http://{}/c", proxy.addr))
        .header(header::TE, "trailers")
        .body(empty())
        .unwrap();
    let collected = client()
        .request(req)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap();
    // Only fields defined for trailers and harmless there are passed on.
    let trailers = collected.trailers().unwrap();
    assert_eq!(trailers["content-digest"], "sha-256=:ZHVtbXk=:");
    assert_eq!(trailers["server-timing"], "db;dur=5");
    assert_eq!(trailers.len(), 2, "{trailers:?}");
    assert_eq!(collected.to_bytes(), "hello world");
    let (_, _, body) = get(&proxy, Method::GET, "/d").await;
    assert_eq!(body.unwrap(), "ok");
    assert_eq!(seen.lock().unwrap().connections, 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_http_1_0_answer_is_not_reused() {
    let (up, seen) = scripted(vec![
        (b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", false),
        (
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
            false,
        ),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false),
    ])
    .await;
    let proxy = proxy(up).await;
    for path in ["/1", "/2", "/3"] {
        let (status, headers, body) = get(&proxy, Method::GET, path).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            !headers.contains_key(header::CONNECTION) || headers[header::CONNECTION] != "close"
        );
        assert_eq!(body.unwrap(), "ok");
    }
    assert_eq!(seen.lock().unwrap().connections, 3);
    proxy.shutdown().await;
}

#[tokio::test]
async fn malformed_answers_get_502() {
    let answers: [&'static [u8]; 9] = [
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
        // No transfer coding in HTTP/1.0 (RFC 9112 §6.1).
        b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\ntransfer-encoding: gzip\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        // Past the signed 64-bit range.
        b"HTTP/1.1 200 OK\r\ncontent-length: 9223372036854775808\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: 18446744073709551615\r\n\r\nok",
        b"NOT HTTP AT ALL\r\n\r\n",
        b"HTTP/1.1 2000 Odd\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\n\r\n",
    ];
    for answer in answers {
        let (up, _) = scripted(vec![(answer, false)]).await;
        let proxy = proxy(up).await;
        let (status, _, _) = get(&proxy, Method::GET, "/bad").await;
        assert_eq!(
            status,
            StatusCode::BAD_GATEWAY,
            "{}",
            String::from_utf8_lossy(answer)
        );
        proxy.shutdown().await;
    }
}

#[tokio::test]
async fn a_head_too_large_gets_502() {
    let mut answer = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..3000 {
        answer.extend_from_slice(format!("x-filler-{i}: {}\r\n", "v".repeat(20)).as_bytes());
    }
    answer.extend_from_slice(b"content-length: 0\r\n\r\n");
    let (up, _) = scripted(vec![(answer.leak(), false)]).await;
    let proxy = proxy(up).await;
    let (status, _, _) = get(&proxy, Method::GET, "/big").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_upstream_that_closes_mid_body_fails_the_body() {
    let (up, _) = scripted(vec![(
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",
        true,
    )])
    .await;
    let proxy = proxy(up).await;
    let req = Request::get(format!("http://{}/cut", proxy.addr))
        .body(empty())
        .unwrap();
    // The client sees an error: on the response, or on its body.
    let outcome = match client().request(req).await {
        Ok(response) => response
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    assert!(
        outcome.is_err(),
        "a short body must not look complete: {outcome:?}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn request_bodies_are_framed_by_the_proxy() {
    let (up, seen) = scripted(vec![
        (b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na", false),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nb", false),
    ])
    .await;
    let proxy = proxy(up).await;
    // A body of known length goes with Content-Length.
    let req = Request::post(format!("http://{}/len", proxy.addr))
        .body(
            Full::new(Bytes::from_static(b"0123456789"))
                .map_err(|e| match e {})
                .boxed(),
        )
        .unwrap();
    let response = client().request(req).await.unwrap();
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "a"
    );
    // A streamed body, with trailers, goes chunked.
    let frames = ReadyFrames(VecDeque::from([
        Frame::data(Bytes::from_static(b"part one, ")),
        Frame::data(Bytes::from_static(b"part two")),
        Frame::trailers({
            let mut t = HeaderMap::new();
            t.insert("x-digest", "d1".parse().unwrap());
            t.insert("host", "evil.example".parse().unwrap());
            t.insert("authorization", "Basic YTpi".parse().unwrap());
            t.insert("content-length", "5".parse().unwrap());
            t.insert("transfer-encoding", "chunked".parse().unwrap());
            t
        }),
    ]));
    let req = Request::post(format!("http://{}/chunked", proxy.addr))
        .header(
            header::TRAILER,
            "x-digest, host, authorization, content-length, transfer-encoding",
        )
        .body(frames.map_err(|e| match e {}).boxed())
        .unwrap();
    let response = client().request(req).await.unwrap();
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "b"
    );
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    // Each request had a body: each retired its connection (I1).
    assert_eq!(seen.connections, 2);
    let first = String::from_utf8_lossy(&seen.requests[0]).to_ascii_lowercase();
    assert!(first.contains("connection: close\r\n"), "{first}");
    assert!(first.contains("content-length: 10\r\n"), "{first}");
    assert!(!first.contains("transfer-encoding"), "{first}");
    assert!(first.ends_with("\r\n\r\n0123456789"), "{first}");
    let second = String::from_utf8_lossy(&seen.requests[1]).to_ascii_lowercase();
    assert!(
        second.contains("transfer-encoding: chunked\r\n"),
        "{second}"
    );
    assert!(!second.contains("content-length:"), "{second}");
    assert!(second.contains("part one, "), "{second}");
    assert!(second.contains("part two"), "{second}");
    // Request trailers are dropped, as nginx drops them.
    assert!(second.ends_with("part two\r\n0\r\n\r\n"), "{second}");
    assert!(
        !second.contains("x-digest: d1") && !second.contains("evil.example"),
        "{second}"
    );
    proxy.shutdown().await;
}

/// Sends `method path` with `body` through `client`, which keeps its
/// connection to the proxy from one request to the next.
async fn send_with(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, TestBody>,
    proxy: &Running,
    method: Method,
    path: &str,
    body: TestBody,
) -> (StatusCode, Bytes) {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", proxy.addr))
        .body(body)
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("the proxy answers in time")
        .unwrap();
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

/// The upstream reads the second request on its connection and closes it
/// unanswered, as a server whose idle timeout fired just then would.
fn closes_the_reused_connection() -> Vec<(&'static [u8], bool)> {
    vec![
        (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst", false),
        (b"", true),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nagain", false),
    ]
}

#[tokio::test]
async fn a_request_the_upstream_dropped_on_a_reused_connection_is_sent_again() {
    let (up, seen) = scripted(closes_the_reused_connection()).await;
    let proxy = proxy(up).await;
    let client = client();
    let first = send_with(&client, &proxy, Method::GET, "/a", empty()).await;
    assert_eq!(first, (StatusCode::OK, Bytes::from("first")));
    let second = send_with(&client, &proxy, Method::GET, "/b?x=1", empty()).await;
    assert_eq!(second, (StatusCode::OK, Bytes::from("again")));
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(seen.connections, 2, "a new connection for the second try");
    assert_eq!(seen.requests.len(), 3);
    assert!(seen.requests[1].starts_with(b"GET /b?x=1 HTTP/1.1\r\n"));
    assert_eq!(seen.requests[1], seen.requests[2], "the same request again");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_request_with_a_body_is_not_sent_again() {
    let (up, seen) = scripted(closes_the_reused_connection()).await;
    let proxy = proxy(up).await;
    let client = client();
    let first = send_with(&client, &proxy, Method::GET, "/a", empty()).await;
    assert_eq!(first.0, StatusCode::OK);
    let body = Full::new(Bytes::from_static(b"once"))
        .map_err(|e| match e {})
        .boxed();
    let (status, _) = send_with(&client, &proxy, Method::POST, "/b", body).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!((seen.connections, seen.requests.len()), (1, 2));
    proxy.shutdown().await;
}

fn h2_client() -> Client<hyper_util::client::legacy::connect::HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

fn body(data: &'static [u8]) -> TestBody {
    Full::new(Bytes::from_static(data))
        .map_err(|e| match e {})
        .boxed()
}

/// `n` answers "ok", none closing.
fn oks(n: usize) -> Vec<(&'static [u8], bool)> {
    vec![(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false); n]
}

fn lower(request: &[u8]) -> String {
    String::from_utf8_lossy(request).to_ascii_lowercase()
}

/// Reads up to the end of a head; returns its Content-Length.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, usize)> {
    let end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if !fill(stream, buf).await {
            return None;
        }
    };
    let head = lower(&buf[..end]);
    buf.drain(..end);
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    Some((head, length))
}

/// Sends raw `request` bytes to the proxy on a new connection and reads
/// one answer (framed by its Content-Length): its head, and its body.
async fn raw(proxy: &Running, request: &[u8]) -> (String, String) {
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let (head, length) = read_head(&mut s, &mut buf).await.expect("an answer");
    while buf.len() < length {
        assert!(fill(&mut s, &mut buf).await, "the answer was cut short");
    }
    (head, String::from_utf8_lossy(&buf[..length]).into_owned())
}

#[tokio::test]
async fn a_connection_header_naming_a_checked_field_is_refused() {
    let (up, seen) = scripted(oks(4)).await;
    let proxy = proxy(up).await;
    let basic = "authorization: Basic YXBwOnNlY3JldA==\r\n";
    let form = "content-type: application/x-www-form-urlencoded\r\n";
    let cases = [
        format!(
            "POST /token HTTP/1.1\r\nhost: x\r\nconnection: Authorization\r\n{basic}{form}content-length: 40\r\n\r\ngrant_type=refresh_token&refresh_token=x"
        ),
        "GET /page HTTP/1.1\r\nhost: x\r\nconnection: keep-alive, HOST\r\n\r\n".to_owned(),
        "GET /page HTTP/1.1\r\nhost: x\r\nconnection: keep-alive\r\nconnection: x-a , cookie\r\ncookie: s=1\r\n\r\n".to_owned(),
        format!(
            "POST /token HTTP/1.1\r\nhost: x\r\nconnection: content-type\r\n{form}content-length: 40\r\n\r\ngrant_type=refresh_token&refresh_token=x"
        ),
        "POST /x HTTP/1.1\r\nhost: x\r\nconnection: Content-Length\r\ncontent-length: 2\r\n\r\nab".to_owned(),
        "POST /x HTTP/1.1\r\nhost: x\r\nconnection: transfer-encoding\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n".to_owned(),
    ];
    for request in &cases {
        let (head, body) = raw(&proxy, request.as_bytes()).await;
        assert!(
            head.starts_with("http/1.1 400 bad request\r\n"),
            "{request}: {head}"
        );
        assert!(
            body.starts_with("the Connection header must not name"),
            "{body}"
        );
        assert_eq!(body.find('\n'), Some(body.len() - 1), "one line: {body}");
    }
    assert!(
        seen.lock().unwrap().requests.is_empty(),
        "the upstream saw a refused request"
    );
    // Another name goes, with the field it names, before the layer: the
    // layer reads Accept for its error format, and sees none.
    let (head, _) = raw(
        &proxy,
        b"GET /authorize?client_id=app HTTP/1.1\r\nhost: x\r\nconnection: accept\r\naccept: application/json\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("http/1.1 400 "), "{head}");
    assert!(head.contains("content-type: text/html"), "{head}");
    let (head, _) = raw(
        &proxy,
        b"GET /page HTTP/1.1\r\nhost: x\r\nconnection: x-foo\r\nx-foo: 1\r\nx-bar: 2\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let forwarded = lower(&seen.requests[0]);
    assert!(forwarded.starts_with("get /page "), "{forwarded}");
    assert!(!forwarded.contains("x-foo"), "{forwarded}");
    assert!(!forwarded.contains("connection"), "{forwarded}");
    assert!(forwarded.contains("x-bar: 2\r\n"), "{forwarded}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn http2_bodies_on_methods_without_one_are_refused() {
    let (up, seen) = scripted(oks(4)).await;
    let proxy = proxy(up).await;
    let client = h2_client();
    for method in [
        Method::GET,
        Method::HEAD,
        Method::DELETE,
        Method::OPTIONS,
        Method::TRACE,
    ] {
        let (status, answer) = send_with(
            &client,
            &proxy,
            method.clone(),
            "/x",
            body(b"GET /smuggled HTTP/1.1\r\n\r\n"),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method}");
        if method != Method::HEAD {
            assert_eq!(
                answer,
                format!("a {method} request must not have a body\n")
                    .replace("a OPTIONS", "an OPTIONS"),
                "{method}"
            );
        }
    }
    assert!(seen.lock().unwrap().requests.is_empty());
    // Without a body they pass.
    for method in [Method::GET, Method::DELETE] {
        let (status, _) = send_with(&client, &proxy, method.clone(), "/x", empty()).await;
        assert_eq!(status, StatusCode::OK, "{method}");
    }
    assert_eq!(seen.lock().unwrap().requests.len(), 2);
    proxy.shutdown().await;
}

/// A client of each protocol: HTTP/1.1, and HTTP/2 with prior knowledge.
fn clients() -> [(
    &'static str,
    Client<hyper_util::client::legacy::connect::HttpConnector, TestBody>,
); 2] {
    [("HTTP/1.1", client()), ("HTTP/2", h2_client())]
}

async fn proxy_with(upstream: SocketAddr, edit: impl FnOnce(&mut RawSettings)) -> Running {
    let mut settings = RawSettings {
        upstream: Some(format!("http://{upstream}")),
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        response_timeout: Some("3".into()),
        ..RawSettings::default()
    };
    edit(&mut settings);
    start(Config::resolve(&settings).unwrap()).await.unwrap()
}

#[tokio::test]
async fn a_request_with_a_body_retires_its_upstream_connection() {
    for (protocol, client) in clients() {
        let (up, seen) = scripted(oks(4)).await;
        let proxy = proxy(up).await;
        let sent = send_with(&client, &proxy, Method::POST, "/upload", body(b"data")).await;
        assert_eq!(sent, (StatusCode::OK, Bytes::from("ok")), "{protocol}");
        for path in ["/next", "/again", "/third"] {
            let got = send_with(&client, &proxy, Method::GET, path, empty()).await;
            assert_eq!(got.0, StatusCode::OK, "{protocol}");
        }
        let seen = std::mem::take(&mut *seen.lock().unwrap());
        let first = lower(&seen.requests[0]);
        assert!(first.starts_with("post /upload "), "{protocol}: {first}");
        assert!(
            first.contains("connection: close\r\n"),
            "{protocol}: {first}"
        );
        assert!(first.ends_with("\r\n\r\ndata"), "{protocol}: {first}");
        for later in &seen.requests[1..] {
            assert!(!lower(later).contains("connection:"), "{protocol}");
        }
        // The GETs went on one new connection, and kept it.
        assert_eq!(seen.connections, 2, "{protocol}");
        proxy.shutdown().await;
    }
}

fn token_body(data: &'static [u8]) -> (Request<TestBody>, &'static [u8]) {
    let req = Request::post("/token")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body(data))
        .unwrap();
    (req, data)
}

/// Sends `req` (a path only) to the proxy through `client`.
async fn send_request(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, TestBody>,
    proxy: &Running,
    mut req: Request<TestBody>,
) -> (StatusCode, Bytes) {
    *req.uri_mut() = format!("http://{}{}", proxy.addr, req.uri())
        .parse()
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("the proxy answers in time")
        .unwrap();
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

/// A checked token body reaches the upstream with every byte outside
/// visible ASCII percent-encoded: whatever an upstream leaves of it unread
/// can neither end a line nor split a request line, so the connection is
/// kept (and the parameters are the same to a form parser).
#[tokio::test]
async fn a_checked_token_body_reaches_the_upstream_inert_and_keeps_the_connection() {
    let cases: [(&'static [u8], &'static [u8]); 5] = [
        (
            b"grant_type=refresh_token&refresh_token=rt-1.x_y~z%20&client_id=app",
            b"grant_type=refresh_token&refresh_token=rt-1.x_y~z%20&client_id=app",
        ),
        (
            b"grant_type=refresh_token&refresh_token=a b",
            b"grant_type=refresh_token&refresh_token=a%20b",
        ),
        (
            b"grant_type=refresh_token&refresh_token=a\r\nb",
            b"grant_type=refresh_token&refresh_token=a%0D%0Ab",
        ),
        (
            b"grant_type=refresh_token&refresh_token=a\nb",
            b"grant_type=refresh_token&refresh_token=a%0Ab",
        ),
        // U+0400: 0xD0 0x80, obs-text a loose server may take for anything.
        (
            "grant_type=refresh_token&refresh_token=a\u{400}".as_bytes(),
            b"grant_type=refresh_token&refresh_token=a%D0%80",
        ),
    ];
    for (protocol, client) in clients() {
        for (data, forwarded) in cases {
            let (up, seen) = scripted(oks(2)).await;
            let proxy = proxy(up).await;
            let (req, data) = token_body(data);
            let shown = String::from_utf8_lossy(data).escape_debug().to_string();
            let answer = send_request(&client, &proxy, req).await;
            assert_eq!(answer.0, StatusCode::OK, "{protocol} {shown}: {answer:?}");
            let next = send_with(&client, &proxy, Method::GET, "/next", empty()).await;
            assert_eq!(next.0, StatusCode::OK);
            let seen = std::mem::take(&mut *seen.lock().unwrap());
            assert!(seen.requests[0].ends_with(forwarded), "{protocol} {shown}");
            assert!(
                lower(&seen.requests[0])
                    .contains(&format!("content-length: {}\r\n", forwarded.len())),
                "{protocol} {shown}"
            );
            assert!(
                !lower(&seen.requests[0]).contains("connection: close\r\n"),
                "{protocol} {shown}"
            );
            assert_eq!(seen.connections, 1, "{protocol} {shown}");
            proxy.shutdown().await;
        }
    }
}

/// How much a connection can hold that its peer does not read: this
/// machine's largest send buffer, with room to spare.
fn more_than_socket_buffers() -> usize {
    let wmem_max = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse::<usize>().ok())
        .unwrap_or(4 << 20);
    wmem_max + (2 << 20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_before_the_request_was_written_retires_the_connection() {
    // An upstream that reads little at a time, and answers each request as
    // soon as its head is in: the head and a first byte, then, a moment
    // later and having read the body, the last byte.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(16).unwrap();
    let up = listener.local_addr().unwrap();
    let connections = Arc::new(Mutex::new(0usize));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            *counted.lock().unwrap() += 1;
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some((_, length)) = read_head(&mut stream, &mut buf).await {
                    if stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\no")
                        .await
                        .is_err()
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    while buf.len() < length {
                        if !fill(&mut stream, &mut buf).await {
                            return;
                        }
                    }
                    buf.drain(..length);
                    if stream.write_all(b"k").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let size = more_than_socket_buffers();
    let proxy = proxy_with(up, |s| s.max_token_body = Some((2 * size).to_string())).await;
    let client = client();
    // A clean token body, which would keep its connection, but too large
    // to be written before the answer comes.
    let mut data = b"grant_type=refresh_token&refresh_token=".to_vec();
    data.resize(size, b'a');
    let req = Request::post("/token")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(data)).map_err(|e| match e {}).boxed())
        .unwrap();
    let answer = send_request(&client, &proxy, req).await;
    assert_eq!(answer, (StatusCode::OK, Bytes::from("ok")));
    let next = send_with(&client, &proxy, Method::GET, "/next", empty()).await;
    assert_eq!(next, (StatusCode::OK, Bytes::from("ok")));
    assert_eq!(*connections.lock().unwrap(), 2);
    proxy.shutdown().await;
}

/// A loose upstream: it reads request heads only, never a body, so a body
/// is read as the requests it holds. Each answer, a moment after its
/// request, echoes the request's `x-tag` (header and body). Returns the
/// tags it answered, and how many connections it accepted.
async fn ignores_bodies() -> (SocketAddr, Arc<Mutex<(Vec<String>, usize)>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new((Vec::new(), 0usize)));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            record.lock().unwrap().1 += 1;
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some((head, _)) = read_head(&mut stream, &mut buf).await {
                    let tag = head
                        .lines()
                        .find_map(|l| l.strip_prefix("x-tag: "))
                        .unwrap_or("none")
                        .trim()
                        .to_owned();
                    record.lock().unwrap().0.push(tag.clone());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nx-tag-echo: {tag}\r\ncontent-length: {}\r\n\r\n{tag}",
                        tag.len()
                    );
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

fn tagged(method: Method, path: &str, tag: &str, data: &'static [u8]) -> Request<TestBody> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("x-tag", tag)
        .body(body(data))
        .unwrap()
}

#[tokio::test]
async fn a_body_the_upstream_ignores_never_becomes_a_request() {
    const SMUGGLED: &[u8] = b"POST /token HTTP/1.1\r\nhost: x\r\nx-tag: smuggled\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 29\r\n\r\ngrant_type=authorization_code";
    for (protocol, client) in clients() {
        let (up, seen) = ignores_bodies().await;
        let proxy = proxy(up).await;
        let first = send_request(
            &client,
            &proxy,
            tagged(Method::POST, "/upload", "a1", SMUGGLED),
        )
        .await;
        assert_eq!(first, (StatusCode::OK, Bytes::from("a1")), "{protocol}");
        // At once, on the same client connection, and from another client.
        let next = send_request(&client, &proxy, tagged(Method::GET, "/next", "a2", b"")).await;
        assert_eq!(next, (StatusCode::OK, Bytes::from("a2")), "{protocol}");
        let other = send_request(
            &self::client(),
            &proxy,
            tagged(Method::GET, "/b", "b1", b""),
        )
        .await;
        assert_eq!(other, (StatusCode::OK, Bytes::from("b1")), "{protocol}");
        let again = send_request(&client, &proxy, tagged(Method::GET, "/again", "a3", b"")).await;
        assert_eq!(again, (StatusCode::OK, Bytes::from("a3")), "{protocol}");
        let (tags, connections) = std::mem::take(&mut *seen.lock().unwrap());
        // The upstream did read the body as a request, on a connection
        // that the proxy closed after its one answer.
        assert!(
            tags.contains(&"smuggled".to_owned()),
            "{protocol}: {tags:?}"
        );
        assert!(connections >= 2, "{protocol}");
        proxy.shutdown().await;
    }
}

/// An upstream that answers the first request on each connection and
/// closes the connection on any later one unanswered, as one whose idle
/// timeout fires just as a request comes would. Records each request's
/// line, and counts connections.
async fn answers_once_per_connection() -> (SocketAddr, Arc<Mutex<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            record.lock().unwrap().connections += 1;
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut first = true;
                while let Some(request) = read_request(&mut stream, &mut buf).await {
                    record.lock().unwrap().requests.push(request);
                    if !first {
                        return;
                    }
                    first = false;
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_request_is_sent_again_once_and_only_when_safe() {
    const POOLED: usize = 20;
    for (protocol, client) in clients() {
        let (up, seen) = answers_once_per_connection().await;
        let proxy = proxy(up).await;
        // Twenty client connections at once, each with its own upstream
        // connection, which goes to the shared pool when it closes.
        let mut streams = Vec::new();
        for _ in 0..POOLED {
            let mut s = TcpStream::connect(proxy.addr).await.unwrap();
            s.write_all(b"GET /warm HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            streams.push(s);
        }
        for s in &mut streams {
            let mut got = Vec::new();
            while !got.ends_with(b"\r\n\r\nok") {
                assert!(fill(s, &mut got).await, "{protocol}");
            }
        }
        drop(streams);
        // Time for the proxy to see them close and pool their connections.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(seen.lock().unwrap().connections, POOLED, "{protocol}");
        let sent_as = |line: &[u8]| {
            seen.lock()
                .unwrap()
                .requests
                .iter()
                .filter(|r| r.starts_with(line))
                .count()
        };
        // Not idempotent: sent once, on a pooled connection that the
        // upstream closed; the proxy answers 502 rather than send it again.
        for (method, line) in [
            (Method::POST, &b"POST /once "[..]),
            (Method::PATCH, b"PATCH /once "),
        ] {
            let (status, _) = send_with(&client, &proxy, method, "/once", empty()).await;
            assert_eq!(status, StatusCode::BAD_GATEWAY, "{protocol}");
            assert_eq!(sent_as(line), 1, "{protocol}");
        }
        // Idempotent: once more, on a new connection, and answered there.
        for (method, line) in [
            (Method::GET, &b"GET /twice "[..]),
            (Method::DELETE, b"DELETE /twice "),
        ] {
            let (status, _) = send_with(&client, &proxy, method, "/twice", empty()).await;
            assert_eq!(status, StatusCode::OK, "{protocol}");
            assert_eq!(sent_as(line), 2, "{protocol}");
        }
        assert_eq!(seen.lock().unwrap().connections, POOLED + 2, "{protocol}");
        proxy.shutdown().await;
    }
}

/// The admin listener's `/metrics` text.
async fn metrics(proxy: &Running) -> String {
    let mut s = TcpStream::connect(proxy.admin_addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    text
}

/// An upstream that records, for each connection, the bytes it received
/// before the proxy closed it; `answer` is written once a request head is
/// in (and the connection is then read to its end).
async fn watching(answer: &'static [u8]) -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closed = Arc::new(Mutex::new(Vec::new()));
    let record = closed.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut answered = false;
                while fill(&mut stream, &mut buf).await {
                    if !answered && find(&buf, b"\r\n\r\n").is_some() && !answer.is_empty() {
                        answered = true;
                        let _ = stream.write_all(answer).await;
                    }
                }
                record.lock().unwrap().push(buf);
            });
        }
    });
    (addr, closed)
}

/// Reads what the proxy sends until it closes the connection (or five
/// seconds pass: then `None`).
async fn until_closed(s: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let read = async { while fill(s, &mut got).await {} };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .ok()
        .map(|()| String::from_utf8_lossy(&got).into_owned())
}

const CHUNKED_POST: &str = "POST /upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";

/// A chunked body that breaks: read ahead whole (the default for small
/// bodies), no upstream connection is ever opened; streamed (a read-ahead
/// buffer of one byte), the upstream connection that took the start of the
/// request is closed, never kept for another. Either way the client gets
/// the same 400, counted as its fault.
#[tokio::test]
async fn a_malformed_chunked_request_body_is_the_clients_fault() {
    let cases = [
        // A chunk size past the signed 64-bit range, and past 64 bits.
        "5\r\nhello\r\n8000000000000000\r\nx",
        "5\r\nhello\r\n10000000000000000\r\nx",
        // A bare CR, and a bare LF, in an extension.
        "5\r\nhello\r\n3;a\rb\r\nabc\r\n0\r\n\r\n",
        "5\r\nhello\r\n3;a\nb\r\nabc\r\n0\r\n\r\n",
        // More data than the chunk announced.
        "5\r\nhello\r\n3\r\nabcdef\r\n0\r\n\r\n",
    ];
    for streamed in [false, true] {
        let (up, closed) = watching(b"").await;
        let proxy = proxy_with(up, |s| {
            if streamed {
                s.request_buffer = Some("1".into());
            }
        })
        .await;
        for (i, body) in cases.iter().enumerate() {
            let mut s = TcpStream::connect(proxy.addr).await.unwrap();
            s.write_all(format!("{CHUNKED_POST}{body}").as_bytes())
                .await
                .unwrap();
            let got = until_closed(&mut s).await.expect("the connection closes");
            assert!(
                got.starts_with("HTTP/1.1 400 Bad Request\r\n"),
                "{streamed} {body:?}: {got}"
            );
            assert!(got.contains("connection: close\r\n"), "{body:?}: {got}");
            assert!(
                got.ends_with("\r\n\r\nthe request body is malformed or was cut short\n"),
                "{streamed} {body:?}: {got}"
            );
            if streamed {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
                while closed.lock().unwrap().len() <= i {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{body:?}: not closed"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        if !streamed {
            // Give a wrongly opened connection time to show.
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(
                closed.lock().unwrap().is_empty(),
                "a broken body read ahead reached the upstream"
            );
        }
        let text = metrics(&proxy).await;
        assert!(
            text.contains(&format!(
                "pkce_proxy_rejections_total{{reason=\"body_unreadable\"}} {}",
                cases.len()
            )),
            "{streamed}: {text}"
        );
        assert!(
            !text.contains("pkce_proxy_upstream_failures_total{"),
            "counted as the upstream's failure: {text}"
        );
        proxy.shutdown().await;
    }
}

#[tokio::test]
async fn a_request_body_that_breaks_after_the_answer_began_closes_both_connections() {
    // The upstream answers as soon as the head is in, with half a body.
    let (up, closed) = watching(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 10\r\n\r\nhello",
    )
    .await;
    // A body that streams: one past the read-ahead buffer.
    let proxy = proxy_with(up, |s| s.request_buffer = Some("4".into())).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(format!("{CHUNKED_POST}5\r\nhello\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let began = async {
        while find(&buf, b"hello").is_none() {
            assert!(fill(&mut s, &mut buf).await, "the answer began");
        }
    };
    tokio::time::timeout(Duration::from_secs(5), began)
        .await
        .expect("the answer began");
    s.write_all(b"zz\r\n").await.unwrap();
    let rest = until_closed(&mut s)
        .await
        .expect("the client connection closes mid-answer");
    let got = String::from_utf8_lossy(&buf).into_owned() + &rest;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(got.ends_with("\r\n\r\nhello"), "the answer is cut: {got}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while closed.lock().unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upstream connection is closed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.shutdown().await;
}

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

/// A head with `n` fields besides `content-length: 2`, and the body "ok".
fn head_with_fields(n: usize) -> &'static [u8] {
    let mut answer = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..n {
        answer.extend_from_slice(format!("x-f{i}: v\r\n").as_bytes());
    }
    answer.extend_from_slice(b"content-length: 2\r\n\r\nok");
    answer.leak()
}

#[tokio::test]
async fn a_response_past_the_field_limit_gets_a_502_whose_log_names_the_limit() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // 128 fields are taken; 129 are not.
    let (up, _) = scripted(vec![
        (head_with_fields(127), false),
        (head_with_fields(128), false),
    ])
    .await;
    let proxy = proxy(up).await;
    let (head, body) = raw(&proxy, b"GET /many HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert_eq!(body, "ok");
    let (head, body) = raw(&proxy, b"GET /too-many HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(head.starts_with("http/1.1 502 bad gateway\r\n"), "{head}");
    assert_eq!(
        body,
        "502 Bad Gateway: the upstream server sent an invalid response\n"
    );
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = logs
        .lines()
        .find(|l| l.contains("upstream request failed"))
        .unwrap_or_else(|| panic!("no failure logged:\n{logs}"));
    assert!(
        line.contains("the response head has more than 128 header fields")
            && line.contains("invalid_response"),
        "{line}"
    );
    let text = metrics(&proxy).await;
    assert!(
        text.contains("pkce_proxy_upstream_failures_total{kind=\"invalid_response\"} 1"),
        "{text}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn hosts_and_paths_that_name_something_else_never_reach_the_upstream() {
    let (up, seen) = scripted(oks(4)).await;
    let proxy = proxy(up).await;
    for (request, why) in [
        (
            "GET /x HTTP/1.1\r\nhost: a b\r\n\r\n",
            "invalid Host: a host name",
        ),
        (
            "GET /x HTTP/1.1\r\nhost: attacker@login.example\r\n\r\n",
            "invalid Host: a host name",
        ),
        (
            "GET /token%00 HTTP/1.1\r\nhost: x\r\n\r\n",
            "a control character in the request path",
        ),
        (
            "GET /token%0a HTTP/1.1\r\nhost: x\r\n\r\n",
            "a control character in the request path",
        ),
        (
            "GET /authorize%09 HTTP/1.1\r\nhost: x\r\n\r\n",
            "a control character in the request path",
        ),
        (
            "GET /%c0%ae%c0%ae/token HTTP/1.1\r\nhost: x\r\n\r\n",
            "the request path is not UTF-8 once decoded",
        ),
    ] {
        let (head, body) = raw(&proxy, request.as_bytes()).await;
        assert!(
            head.starts_with("http/1.1 400 bad request\r\n"),
            "{request}: {head}"
        );
        assert!(body.starts_with(why), "{request}: {body}");
    }
    // HTTP/2: the path, and a Host that is not the :authority.
    let client = h2_client();
    for (path, host) in [
        ("/token%00", None),
        ("/x", Some("a b")),
        ("/x", Some("other.example")),
    ] {
        let mut req = Request::get(format!("http://{}{path}", proxy.addr));
        if let Some(host) = host {
            req = req.header(header::HOST, host);
        }
        let response = client.request(req.body(empty()).unwrap()).await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "{path} {host:?}"
        );
    }
    assert!(
        seen.lock().unwrap().requests.is_empty(),
        "the upstream saw a refused request"
    );
    proxy.shutdown().await;
}
