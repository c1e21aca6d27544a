use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::header::{self, HeaderMap, HeaderValue};
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::head::MAX_FIELDS;
use super::*;

/// A body of ready frames whose size is not known in advance.
struct Frames(VecDeque<Frame<Bytes>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
}

fn frames(data: &[&'static str], trailer: Option<(&'static str, &'static str)>) -> Frames {
    let mut frames: VecDeque<_> = data
        .iter()
        .map(|d| Frame::data(Bytes::from_static(d.as_bytes())))
        .collect();
    if let Some((name, value)) = trailer {
        let mut trailers = HeaderMap::new();
        trailers.insert(name, HeaderValue::from_static(value));
        frames.push_back(Frame::trailers(trailers));
    }
    Frames(frames)
}

/// What the test server answers, by path.
async fn answer(req: Request<ClientBody>) -> Response<Frames> {
    let path = req.uri().path().to_owned();
    let mut response = Response::new(frames(&[], None));
    match path.as_str() {
        "/echo" => {
            let collected = req.into_body().collect().await;
            let Ok(collected) = collected else {
                *response.status_mut() = StatusCode::BAD_REQUEST;
                return response;
            };
            let trailer = collected
                .trailers()
                .and_then(|t| t.get("x-t"))
                .map(|v| v.to_str().unwrap().to_owned());
            let body = collected.to_bytes();
            response = Response::new(Frames(VecDeque::from([Frame::data(body.clone())])));
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, body.len().into());
            if let Some(t) = trailer {
                response
                    .headers_mut()
                    .insert("x-trailer", t.parse().unwrap());
            }
        }
        "/ignore" => *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE,
        "/stream" => response = Response::new(frames(&["ab", "cd"], Some(("x-sum", "9")))),
        "/nocontent" => *response.status_mut() = StatusCode::NO_CONTENT,
        "/overlong" => {
            response = Response::new(frames(&["hello"], None));
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        }
        "/short-trailers" => {
            response = Response::new(frames(&["abc"], Some(("x-sum", "1"))));
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            response = Response::new(frames(&["late"], None));
        }
        _ => {
            response = Response::new(frames(&["ok"], None));
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
        }
    }
    response
}

async fn server(head_timeout: Duration) -> (SocketAddr, Arc<Shutdown>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Arc::new(Shutdown::default());
    let connections = shutdown.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_connection(
                stream,
                answer,
                connections.enter(),
                Settings::for_tests(head_timeout),
            ));
        }
    });
    (addr, shutdown)
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

/// Reads until `want` responses have arrived whole (by Content-Length,
/// chunked or, for `connection: close`, the end of the stream), or the
/// connection closes, or a second passes.
async fn read_for(stream: &mut TcpStream, until: &str) -> String {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(until) {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Sends `request`, then reads as [`read_for`] does.
async fn ask(stream: &mut TcpStream, request: &[u8], until: &str) -> String {
    stream.write_all(request).await.unwrap();
    read_for(stream, until).await
}

/// Whether the server closed the connection (within two seconds).
async fn closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

fn settings() -> Duration {
    Duration::from_secs(30)
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (addr, _) = server(settings()).await;
    let mut s = connect(addr).await;
    let got = ask(&mut s, b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nPOST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nhost: x\r\n\r\n", "\r\n\r\nok\x00").await;
    let answers: Vec<&str> = got.matches("HTTP/1.1 200 OK").collect();
    assert_eq!(answers.len(), 3, "{got}");
    let hello = got.find("hello").unwrap();
    assert!(
        got.find("ok").unwrap() < hello && got.rfind("ok").unwrap() > hello,
        "{got}"
    );
    assert!(got.contains("date: "), "{got}");
    assert!(!got.contains("connection: close"), "{got}");
    // Still open for more.
    assert!(
        ask(&mut s, b"GET /c HTTP/1.1\r\nhost: x\r\n\r\n", "ok")
            .await
            .contains("200 OK")
    );
}

#[tokio::test]
async fn a_chunked_request_body_is_read_with_its_trailers() {
    let (addr, _) = server(settings()).await;
    let mut s = connect(addr).await;
    s.write_all(
        b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let got = ask(
        &mut s,
        b"6\r\n world\r\n0\r\nx-t: tail\r\n\r\n",
        "hello world",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(got.contains("content-length: 11\r\n"), "{got}");
    assert!(got.contains("x-trailer: tail\r\n"), "{got}");
    // The connection is kept: the body was read to its end.
    assert!(
        ask(&mut s, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", "ok")
            .await
            .contains("200 OK")
    );
}

#[tokio::test]
async fn expect_continue_gets_the_interim_answer_when_the_body_is_read() {
    let (addr, _) = server(settings()).await;
    let mut s = connect(addr).await;
    let interim = ask(
        &mut s,
        b"POST /echo HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\n",
        "\r\n\r\n",
    )
    .await;
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
    let got = ask(&mut s, b"ping", "ping").await;
    assert!(
        got.starts_with("HTTP/1.1 200 OK\r\n") && got.ends_with("ping"),
        "{got}"
    );
}

#[tokio::test]
async fn a_body_left_unread_gets_no_interim_answer_and_the_connection_closes() {
    let (addr, _) = server(settings()).await;
    let mut s = connect(addr).await;
    let got = ask(&mut s, b"POST /ignore HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 100000\r\n\r\n", "\r\n\r\n").await;
    assert!(
        got.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
        "{got}"
    );
    assert!(!got.contains("100 Continue"), "{got}");
    assert!(got.contains("connection: close\r\n"), "{got}");
    // The client may send the body anyway: it is read and dropped, and
    // the connection ends with a clean close.
    s.write_all(&vec![b'a'; 100_000]).await.unwrap();
    assert!(closed(&mut s).await);
}

#[tokio::test]
async fn smuggling_shapes_and_bad_heads_are_refused() {
    let (addr, _) = server(settings()).await;
    let cases: [(&[u8], &str); 13] = [
        (b"GET / HTTP/1.1\r\n\r\n", "400"),
        // Past the signed 64-bit range (RFC 9110 §8.6 lets a recipient
        // refuse what it cannot hold; nginx does).
        (
            b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 9223372036854775808\r\n\r\n",
            "400",
        ),
        (
            b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 18446744073709551616\r\n\r\n",
            "400",
        ),
        (b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n", "400"),
        (
            b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
            "400",
        ),
        (
            b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
            "400",
        ),
        (b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: -1\r\n\r\n", "400"),
        (b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 1,1\r\n\r\n", "400"),
        (
            b"POST /echo HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n",
            "400",
        ),
        (
            b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked, identity\r\n\r\n",
            "400",
        ),
        (
            b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            "501",
        ),
        (
            b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
            "400",
        ),
        (b"GET /a b HTTP/1.1\r\nhost: x\r\n\r\n", "400"),
    ];
    for (request, status) in cases {
        let mut s = connect(addr).await;
        let got = ask(&mut s, request, "\n\n").await;
        assert!(
            got.starts_with(&format!("HTTP/1.1 {status} ")),
            "{}: {got}",
            String::from_utf8_lossy(request)
        );
        assert!(got.contains("connection: close\r\n"), "{got}");
        assert!(closed(&mut s).await);
    }
}

/// A server whose handler counts its calls and answers "ok".
async fn counting_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let shutdown = Arc::new(Shutdown::default());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counted = counted.clone();
            let handler = move |_: Request<ClientBody>| {
                counted.fetch_add(1, Ordering::SeqCst);
                async { Response::new(frames(&["ok"], None)) }
            };
            tokio::spawn(serve_connection(
                stream,
                handler,
                shutdown.enter(),
                Settings::for_tests(settings()),
            ));
        }
    });
    (addr, calls)
}

#[tokio::test]
async fn a_body_on_a_method_without_one_is_refused_unread() {
    let (addr, calls) = counting_server().await;
    for method in ["GET", "HEAD", "DELETE", "OPTIONS", "TRACE"] {
        for framing in [
            "content-length: 5\r\n\r\nhello",
            "transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            "transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            "transfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        ] {
            let mut s = connect(addr).await;
            // The body holds a whole request: it must never be read as one.
            let request = format!(
                "{method} /x HTTP/1.1\r\nhost: x\r\n{framing}GET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n"
            );
            let got = ask(&mut s, request.as_bytes(), "\n\n").await;
            assert!(
                got.starts_with("HTTP/1.1 400 Bad Request\r\n"),
                "{method} {framing}: {got}"
            );
            assert!(got.contains("connection: close\r\n"), "{got}");
            let got = got + &read_for(&mut s, "\n\n\n").await;
            if method == "HEAD" {
                // No body after a HEAD, though the length is told.
                assert!(got.ends_with("\r\n\r\n"), "{got}");
            } else {
                assert!(
                    got.ends_with(&format!("{method} request must not have a body\n")),
                    "{got}"
                );
            }
            assert!(closed(&mut s).await, "{method} {framing}");
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the handler was called");
    // A length of zero is no body: served, and the connection kept.
    let mut s = connect(addr).await;
    for method in ["GET", "HEAD", "DELETE", "OPTIONS", "TRACE"] {
        let request = format!("{method} /x HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n");
        let until = if method == "HEAD" { "\r\n\r\n" } else { "ok" };
        let got = ask(&mut s, request.as_bytes(), until).await;
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{method}: {got}");
        assert!(!got.contains("connection: close"), "{method}: {got}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    // A POST may have a body.
    let got = ask(
        &mut s,
        b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi",
        "ok",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert_eq!(calls.load(Ordering::SeqCst), 6);
}

#[tokio::test]
async fn hosts_and_paths_that_name_something_else_are_refused_unserved() {
    use crate::target::{CONTROL_IN_PATH, INVALID_HOST, MALFORMED_ESCAPE, PATH_NOT_UTF8};
    let (addr, calls) = counting_server().await;
    for (request, why) in [
        ("GET / HTTP/1.1\r\nhost: a b\r\n\r\n", INVALID_HOST),
        ("GET / HTTP/1.1\r\nhost: \r\n\r\n", INVALID_HOST),
        ("GET / HTTP/1.1\r\nhost: user@h\r\n\r\n", INVALID_HOST),
        ("GET / HTTP/1.1\r\nhost: h/x\r\n\r\n", INVALID_HOST),
        ("GET / HTTP/1.1\r\nhost: h:99999\r\n\r\n", INVALID_HOST),
        ("GET / HTTP/1.0\r\nhost: h h\r\n\r\n", INVALID_HOST),
        ("GET /token%00 HTTP/1.1\r\nhost: h\r\n\r\n", CONTROL_IN_PATH),
        ("GET /token%09 HTTP/1.1\r\nhost: h\r\n\r\n", CONTROL_IN_PATH),
        ("GET /token%0a HTTP/1.1\r\nhost: h\r\n\r\n", CONTROL_IN_PATH),
        (
            "GET /a/%2500/token HTTP/1.1\r\nhost: h\r\n\r\n",
            CONTROL_IN_PATH,
        ),
        (
            "GET /%c0%ae%c0%ae/token HTTP/1.1\r\nhost: h\r\n\r\n",
            PATH_NOT_UTF8,
        ),
        (
            "GET /token%zz HTTP/1.1\r\nhost: h\r\n\r\n",
            MALFORMED_ESCAPE,
        ),
        (
            "GET http://h/token%00 HTTP/1.1\r\nhost: h\r\n\r\n",
            CONTROL_IN_PATH,
        ),
    ] {
        let mut s = connect(addr).await;
        let got = ask(&mut s, request.as_bytes(), "\n\n").await;
        assert!(
            got.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{request}: {got}"
        );
        assert!(
            got.ends_with(&format!("\r\n\r\n{why}\n")),
            "{request}: {got}"
        );
        assert!(closed(&mut s).await, "{request}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the handler was called");
    // The query is not the path's business, and these are names.
    let mut s = connect(addr).await;
    for request in [
        "GET /a?x=%00%c0 HTTP/1.1\r\nhost: h\r\n\r\n",
        "GET /token%20 HTTP/1.1\r\nhost: login.example.com:8443\r\n\r\n",
        "GET /token%3f HTTP/1.1\r\nhost: [::1]:8080\r\n\r\n",
        "GET /caf%C3%A9 HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n",
    ] {
        let got = ask(&mut s, request.as_bytes(), "ok").await;
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{request}: {got}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn connect_is_refused() {
    let (addr, calls) = counting_server().await;
    for request in [
        &b"CONNECT upstream.example:443 HTTP/1.1\r\nhost: upstream.example:443\r\n\r\n"[..],
        b"CONNECT / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
    ] {
        let mut s = connect(addr).await;
        let got = ask(&mut s, request, "\n\n").await;
        assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got}");
        assert!(got.contains("connection: close\r\n"), "{got}");
        assert!(got.ends_with(&format!("{CONNECT_REFUSED}\n")), "{got}");
        assert!(closed(&mut s).await);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn heads_too_large_or_with_too_many_fields_get_431() {
    let (addr, _) = server(settings()).await;
    let mut s = connect(addr).await;
    let big = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let got = ask(&mut s, big.as_bytes(), "\n\n").await;
    assert!(got.starts_with("HTTP/1.1 431 "), "{got}");

    let mut s = connect(addr).await;
    let mut many = String::from("GET / HTTP/1.1\r\nhost: x\r\n");
    for i in 0..=MAX_FIELDS {
        many.push_str(&format!("x-f{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let got = ask(&mut s, many.as_bytes(), "\n\n").await;
    assert!(got.starts_with("HTTP/1.1 431 "), "{got}");

    // Forty fields are fine: the second, larger parse takes them.
    let mut s = connect(addr).await;
    let mut forty = String::from("GET / HTTP/1.1\r\nhost: x\r\n");
    for i in 0..40 {
        forty.push_str(&format!("x-f{i}: v\r\n"));
    }
    forty.push_str("\r\n");
    assert!(
        ask(&mut s, forty.as_bytes(), "ok")
            .await
            .starts_with("HTTP/1.1 200 OK")
    );
}

#[tokio::test]
async fn the_head_timeout_closes_slow_and_idle_connections() {
    let (addr, _) = server(Duration::from_millis(300)).await;
    // A head that never ends.
    let mut slow = connect(addr).await;
    slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-a: 1\r\n")
        .await
        .unwrap();
    // A connection that answered once and then idles.
    let mut idle = connect(addr).await;
    assert!(
        ask(&mut idle, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", "ok")
            .await
            .contains("200 OK")
    );
    // A busy one: each head comes within the timeout, so it stays.
    let mut busy = connect(addr).await;
    let started = Instant::now();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(
            ask(&mut busy, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", "ok")
                .await
                .contains("200 OK")
        );
    }
    assert!(started.elapsed() > Duration::from_millis(500));
    assert!(closed(&mut slow).await);
    assert!(closed(&mut idle).await);
}

#[tokio::test]
async fn http_1_0_clients_get_keep_alive_only_when_they_ask() {
    let (addr, _) = server(settings()).await;
    let mut s = connect(addr).await;
    let got = ask(&mut s, b"GET / HTTP/1.0\r\n\r\n", "ok").await;
    assert!(got.contains("connection: close\r\n"), "{got}");
    assert!(closed(&mut s).await);

    let mut s = connect(addr).await;
    let got = ask(
        &mut s,
        b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n",
        "ok",
    )
    .await;
    assert!(got.contains("connection: keep-alive\r\n"), "{got}");
    // A body of unknown length ends with the connection for HTTP/1.0.
    let got = ask(
        &mut s,
        b"GET /stream HTTP/1.0\r\nconnection: keep-alive\r\n\r\n",
        "\u{0}",
    )
    .await;
    assert!(got.contains("connection: close\r\n"), "{got}");
    assert!(!got.contains("transfer-encoding"), "{got}");
    assert!(got.ends_with("\r\n\r\nabcd"), "{got}");
}

#[tokio::test]
async fn bodies_are_framed_by_what_is_known() {
    let (addr, _) = server(settings()).await;
    let mut s = connect(addr).await;
    // Unknown length: chunked; trailers only for a client that takes them.
    let got = ask(
        &mut s,
        b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n",
        "0\r\n\r\n",
    )
    .await;
    assert!(got.contains("transfer-encoding: chunked\r\n"), "{got}");
    assert!(
        got.ends_with("\r\n\r\n2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n"),
        "{got}"
    );
    let got = ask(
        &mut s,
        b"GET /stream HTTP/1.1\r\nhost: x\r\nte: trailers\r\n\r\n",
        "x-sum: 9\r\n\r\n",
    )
    .await;
    assert!(got.ends_with("0\r\nx-sum: 9\r\n\r\n"), "{got}");
    // HEAD: the head only, with the length the GET would have.
    let got = ask(&mut s, b"HEAD / HTTP/1.1\r\nhost: x\r\n\r\n", "\r\n\r\n").await;
    assert!(
        got.contains("content-length: 2\r\n") && got.ends_with("\r\n\r\n"),
        "{got}"
    );
    // 204: no body, no length.
    let got = ask(
        &mut s,
        b"GET /nocontent HTTP/1.1\r\nhost: x\r\n\r\n",
        "\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 204 No Content\r\n"), "{got}");
    assert!(
        !got.contains("content-length") && !got.contains("transfer-encoding"),
        "{got}"
    );
    // Still in step: the next answer is whole and alone.
    let got = ask(&mut s, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", "ok").await;
    assert!(
        got.starts_with("HTTP/1.1 200 OK\r\n") && got.ends_with("\r\n\r\nok"),
        "{got}"
    );
}

#[tokio::test]
async fn a_body_longer_than_its_length_is_cut_and_the_connection_closed() {
    let (addr, _) = server(settings()).await;
    let mut s = connect(addr).await;
    let got = ask(
        &mut s,
        b"GET /overlong HTTP/1.1\r\nhost: x\r\n\r\n",
        "\u{0}",
    )
    .await;
    assert!(got.contains("content-length: 3\r\n"), "{got}");
    assert!(got.ends_with("\r\n\r\nhel"), "{got}");
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_lets_busy_ones_finish() {
    let (addr, shutdown) = server(settings()).await;
    let mut idle = connect(addr).await;
    assert!(
        ask(&mut idle, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", "ok")
            .await
            .contains("200 OK")
    );
    let mut busy = connect(addr).await;
    busy.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    shutdown.begin();
    assert!(closed(&mut idle).await);
    let got = read_for(&mut busy, "late").await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
    assert!(got.contains("connection: close\r\n"), "{got}");
    tokio::time::timeout(Duration::from_secs(2), shutdown.drained())
        .await
        .expect("every connection closed");
}

#[tokio::test]
async fn a_lenient_chunk_line_is_refused_and_nothing_is_smuggled() {
    let (addr, _) = server(settings()).await;
    let mut s = connect(addr).await;
    s.write_all(
        b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n2;\nxx\r\n4c\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let got = read_for(&mut s, "\u{0}").await;
    assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got}");
    assert_eq!(got.matches("HTTP/1.1").count(), 1, "{got}");
}

#[tokio::test]
async fn a_bare_lf_in_a_trailer_section_is_refused_and_nothing_is_smuggled() {
    let (addr, _) = server(settings()).await;
    // hyper reads on past these LFs to the next CRLF CRLF, and takes
    // the request after them for trailers: a reader that ends the body
    // at the LF sees one request more.
    for tail in [
        "0\r\n\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n",
        "0\r\nx-t: 1\n\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n",
        "0\r\nx-t: 1\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n",
    ] {
        let mut s = connect(addr).await;
        let request = format!(
            "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n{tail}"
        );
        s.write_all(request.as_bytes()).await.unwrap();
        let got = read_for(&mut s, "\u{0}").await;
        assert!(
            got.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{tail:?}: {got}"
        );
        assert_eq!(got.matches("HTTP/1.1").count(), 1, "{tail:?}: {got}");
    }
}

#[tokio::test]
async fn a_body_shorter_than_its_length_with_trailers_closes_the_connection() {
    let (addr, _) = server(settings()).await;
    let mut s = connect(addr).await;
    let got = ask(
        &mut s,
        b"GET /short-trailers HTTP/1.1\r\nhost: x\r\nte: trailers\r\n\r\n",
        "\u{0}",
    )
    .await;
    assert!(
        got.contains("content-length: 10\r\n") && got.ends_with("\r\n\r\nabc"),
        "{got}"
    );
    assert!(closed(&mut s).await);
}

#[tokio::test]
async fn a_body_read_elsewhere_fails_when_the_connection_lets_go() {
    // The body is read by another task, as hyper's client does for an
    // HTTPS upstream, and outlives the exchange.
    let (verdicts, mut verdict) = tokio::sync::mpsc::unbounded_channel();
    let handler = move |req: Request<ClientBody>| {
        let verdicts = verdicts.clone();
        async move {
            tokio::spawn(async move {
                let _ = verdicts.send(req.into_body().collect().await.is_ok());
            });
            Response::new(frames(&["taken"], None))
        }
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Arc::new(Shutdown::default());
    let open = shutdown.enter();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        serve_connection(stream, handler, open, Settings::for_tests(settings())).await;
    });
    // The body never comes whole: the connection answers and closes,
    // and the reader gets an error rather than waiting on a socket that
    // is gone.
    let mut s = connect(addr).await;
    let got = ask(
        &mut s,
        b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\npart",
        "taken",
    )
    .await;
    assert!(got.contains("connection: close\r\n"), "{got}");
    let read = tokio::time::timeout(Duration::from_secs(2), verdict.recv()).await;
    assert_eq!(read.unwrap(), Some(false));
    tokio::time::timeout(Duration::from_secs(3), shutdown.drained())
        .await
        .expect("the connection closed");
}

/// A body read before the request goes on: whole when it ends within
/// the bound (with its trailers), else the part read and then the rest,
/// which together are the body, with its length still known.
#[tokio::test]
async fn a_buffered_body_is_whole_within_the_bound_and_streams_past_it() {
    let budget = Budget::new(1 << 20, Arc::new(Metrics::new().unwrap()));
    let held = budget.clone();
    let handler = move |req: Request<ClientBody>| {
        let budget = budget.clone();
        async move { buffer_and_tell(req, &budget).await }
    };
    async fn buffer_and_tell(req: Request<ClientBody>, budget: &Arc<Budget>) -> Response<Frames> {
        let body = req.into_body().buffered(8, budget).await.unwrap();
        let (whole, hint) = (body.is_whole(), body.size_hint().exact());
        let collected = body.collect().await.unwrap();
        let trailer = collected.trailers().and_then(|t| t.get("x-t")).cloned();
        let text = format!(
            "{whole} {hint:?} {} {:?}",
            String::from_utf8_lossy(&collected.to_bytes()),
            trailer
        );
        Response::new(Frames(VecDeque::from([Frame::data(Bytes::from(text))])))
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Arc::new(Shutdown::default());
    let connections = shutdown.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_connection(
                stream,
                handler.clone(),
                connections.enter(),
                Settings::for_tests(settings()),
            ));
        }
    });
    let mut s = connect(addr).await;
    s.write_all(b"POST /x HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let got = ask(&mut s, b"0\r\nx-t: 1\r\n\r\n", "\"1\")").await;
    assert!(got.contains("\r\ntrue None abc Some(\"1\")\r\n"), "{got}");
    s.write_all(b"POST /x HTTP/1.1\r\nhost: x\r\ncontent-length: 20\r\n\r\n0123456789")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let got = ask(&mut s, b"abcdefghij", "None").await;
    assert!(
        got.contains("\r\nfalse Some(20) 0123456789abcdefghij None\r\n"),
        "{got}"
    );
    // Handed on, nothing is held.
    assert_eq!(held.used(), 0);
}
