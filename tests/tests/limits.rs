//! Resource limits, each pushed past its bound through the proxy in
//! process: the limit acts, the proxy goes on serving other clients
//! meanwhile, it recovers once the pressure is gone, and `/metrics` counts
//! it. Every wait is bounded; nothing asserts on speed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use pkce_proxy::config::{Config, RawSettings};
use pkce_proxy::server::{Running, start};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The bound on every wait in these tests.
const PATIENCE: Duration = Duration::from_secs(10);

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type UpBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

fn full(body: &'static str) -> UpBody {
    Full::new(Bytes::from_static(body.as_bytes()))
        .map_err(|e| match e {})
        .boxed()
}

/// A response body that never ends.
struct Endless;

impl http_body::Body for Endless {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; 64 * 1024])))))
    }
}

/// What the test upstream saw.
#[derive(Debug, Default)]
struct Seen {
    /// Connections accepted.
    connections: AtomicUsize,
    /// Requests whose head arrived.
    requests: AtomicUsize,
    /// Requests being answered now, and the most at once.
    busy: AtomicUsize,
    most_busy: AtomicUsize,
}

/// An upstream (hyper's HTTP/1.1 server) that answers `GET /slow` after
/// `slow`, `/endless` with a body that never ends, a request with a body
/// with the body's length once it has read it, and anything else with "ok".
async fn upstream(slow: Duration) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let counted = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.connections.fetch_add(1, Ordering::SeqCst);
            let seen = counted.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let seen = seen.clone();
                async move {
                    seen.requests.fetch_add(1, Ordering::SeqCst);
                    let now = seen.busy.fetch_add(1, Ordering::SeqCst) + 1;
                    seen.most_busy.fetch_max(now, Ordering::SeqCst);
                    let response = match req.uri().path() {
                        "/slow" => {
                            tokio::time::sleep(slow).await;
                            Response::new(full("slow"))
                        }
                        "/endless" => Response::new(Endless.boxed()),
                        _ if req.method() == http::Method::POST => {
                            let body = req.into_body().collect().await;
                            let n = body.map(|b| b.to_bytes().len()).unwrap_or(0);
                            Response::new(
                                Full::new(Bytes::from(n.to_string()))
                                    .map_err(|e| match e {})
                                    .boxed(),
                            )
                        }
                        _ => Response::new(full("ok")),
                    };
                    seen.busy.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, Infallible>(response)
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (addr, seen)
}

fn settings(upstream: SocketAddr, extra: &[(&str, &str)]) -> RawSettings {
    let mut s = RawSettings {
        upstream: Some(format!("http://{upstream}")),
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        ..RawSettings::default()
    };
    for (name, value) in extra {
        let value = Some((*value).to_owned());
        match *name {
            "max_connections" => s.max_connections = value,
            "max_upstream_connections" => s.max_upstream_connections = value,
            "max_upstream_connections_per_client" => s.max_upstream_connections_per_client = value,
            "max_idle_upstream_connections" => s.max_idle_upstream_connections = value,
            "upstream_idle_timeout" => s.upstream_idle_timeout = value,
            "head_timeout" => s.head_timeout = value,
            "body_timeout" => s.body_timeout = value,
            "send_timeout" => s.send_timeout = value,
            "request_buffer" => s.request_buffer = value,
            "request_buffer_total" => s.request_buffer_total = value,
            "connect_timeout" => s.connect_timeout = value,
            "h2_idle_timeout" => s.h2_idle_timeout = value,
            "h2_keepalive_interval" => s.h2_keepalive_interval = value,
            "h2_keepalive_timeout" => s.h2_keepalive_timeout = value,
            "h2_max_header_list_size" => s.h2_max_header_list_size = value,
            "h2_max_concurrent_streams" => s.h2_max_concurrent_streams = value,
            other => panic!("no setting {other} in these tests"),
        }
    }
    s
}

async fn proxy(upstream: SocketAddr, extra: &[(&str, &str)]) -> Running {
    start(Config::resolve(&settings(upstream, extra)).unwrap())
        .await
        .unwrap()
}

/// A response read off the wire: its status, head and body.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

/// Reads one response (framed by `Content-Length`, or by the close).
async fn read_answer(stream: &mut TcpStream) -> Option<Answer> {
    let mut buf = Vec::new();
    let read = async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse::<usize>().unwrap());
                if let Some(length) = length
                    && buf.len() >= end + 4 + length
                {
                    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).into();
                    return Some((head, body));
                }
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let body = String::from_utf8_lossy(&buf[end + 4..]).into();
                    return Some((head, body));
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let (head, body) = tokio::time::timeout(PATIENCE, read).await.ok()??;
    let status = head.get(9..12)?.parse().ok()?;
    Some(Answer { status, head, body })
}

/// Sends `request` on `stream` and reads the answer.
async fn ask(stream: &mut TcpStream, request: &str) -> Option<Answer> {
    stream.write_all(request.as_bytes()).await.ok()?;
    read_answer(stream).await
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: proxy.test\r\n\r\n")
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

/// `GET path` on a new connection: the status.
async fn status_of(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = connect(addr).await;
    ask(&mut s, &get(path)).await.map(|a| a.status)
}

/// Whether the peer closes `stream` (after whatever it still sends).
async fn closed(stream: &mut TcpStream) -> bool {
    let drained = async {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(PATIENCE, drained).await.is_ok()
}

/// The proxy's metrics text.
async fn metrics(proxy: &Running) -> String {
    let mut s = connect(proxy.admin_addr).await;
    let answer = ask(
        &mut s,
        "GET /metrics HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    answer.body
}

/// The value of the metric line that starts with `series ` (0 if absent).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

fn limit(name: &str) -> String {
    format!("pkce_proxy_limit_reached_total{{limit=\"{name}\"}}")
}

/// Waits until the metric `series` satisfies `ok`; its last value.
async fn until(proxy: &Running, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let v = value(&metrics(proxy).await, series);
        if ok(v) || tokio::time::Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn every_limit_is_in_the_metrics_from_the_start() {
    let (up, _) = upstream(Duration::ZERO).await;
    let proxy = proxy(up, &[]).await;
    let text = metrics(&proxy).await;
    for name in [
        "connections",
        "upstream_connections",
        "upstream_connections_per_client",
        "head_timeout",
        "body_timeout",
        "send_timeout",
        "request_buffer_total",
    ] {
        assert!(
            text.contains(&format!("{} 0", limit(name))),
            "{name}: {text}"
        );
    }
    for gauge in [
        "pkce_proxy_client_connections",
        "pkce_proxy_upstream_connections",
        "pkce_proxy_upstream_idle_connections",
        "pkce_proxy_upstream_waiting_requests",
        "pkce_proxy_request_buffer_bytes",
    ] {
        assert!(text.contains(&format!("\n{gauge} ")), "{gauge}: {text}");
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn connections_past_the_limit_are_closed_and_the_others_served() {
    let (up, _) = upstream(Duration::ZERO).await;
    let proxy = proxy(up, &[("max_connections", "2")]).await;
    let mut a = connect(proxy.addr).await;
    let mut b = connect(proxy.addr).await;
    assert_eq!(ask(&mut a, &get("/a")).await.unwrap().status, 200);
    assert_eq!(ask(&mut b, &get("/b")).await.unwrap().status, 200);
    // A third is closed at once, unanswered.
    let mut c = connect(proxy.addr).await;
    assert!(ask(&mut c, &get("/c")).await.is_none());
    assert!(closed(&mut c).await);
    // The two open ones are served meanwhile.
    assert_eq!(ask(&mut a, &get("/a2")).await.unwrap().status, 200);
    assert_eq!(ask(&mut b, &get("/b2")).await.unwrap().status, 200);
    let text = metrics(&proxy).await;
    assert_eq!(value(&text, &limit("connections")), 1.0, "{text}");
    assert_eq!(value(&text, "pkce_proxy_client_connections"), 2.0, "{text}");
    // One ends: a new one is served.
    drop(b);
    let open = until(&proxy, "pkce_proxy_client_connections", |v| v < 2.0).await;
    assert_eq!(open, 1.0);
    let mut d = connect(proxy.addr).await;
    assert_eq!(ask(&mut d, &get("/d")).await.unwrap().status, 200);
    assert_eq!(ask(&mut a, &get("/a3")).await.unwrap().status, 200);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_head_that_stops_coming_is_closed_and_counted() {
    let (up, _) = upstream(Duration::ZERO).await;
    let proxy = proxy(up, &[("head_timeout", "0.3")]).await;
    let mut slow = connect(proxy.addr).await;
    slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut idle = connect(proxy.addr).await;
    assert_eq!(status_of(proxy.addr, "/meanwhile").await, Some(200));
    assert!(closed(&mut slow).await);
    assert!(closed(&mut idle).await);
    // The idle connection is not counted: keep-alive connections end so.
    assert_eq!(
        until(&proxy, &limit("head_timeout"), |v| v >= 1.0).await,
        1.0
    );
    assert_eq!(status_of(proxy.addr, "/after").await, Some(200));
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_body_that_stops_coming_gets_408_and_never_reaches_the_upstream() {
    let (up, seen) = upstream(Duration::ZERO).await;
    let proxy = proxy(up, &[("body_timeout", "0.3")]).await;
    for framing in [
        "content-length: 100\r\n\r\n0123456789",
        "transfer-encoding: chunked\r\n\r\na\r\n0123456789\r\n",
    ] {
        let mut slow = connect(proxy.addr).await;
        slow.write_all(format!("POST /upload HTTP/1.1\r\nhost: x\r\n{framing}").as_bytes())
            .await
            .unwrap();
        // Another client is served while this body waits.
        assert_eq!(status_of(proxy.addr, "/meanwhile").await, Some(200));
        let answer = read_answer(&mut slow).await.unwrap();
        assert_eq!(answer.status, 408, "{answer:?}");
        assert!(answer.head.contains("connection: close"), "{answer:?}");
        assert!(closed(&mut slow).await);
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 2, "only the two GETs");
    assert_eq!(value(&metrics(&proxy).await, &limit("body_timeout")), 2.0);
    // A body that keeps coming, in pieces, is not cut.
    let mut s = connect(proxy.addr).await;
    s.write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 30\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        s.write_all(b"0123456789").await.unwrap();
    }
    let answer = read_answer(&mut s).await.unwrap();
    assert_eq!((answer.status, answer.body.as_str()), (200, "30"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_large_body_streams_and_a_pause_in_it_closes_the_connection() {
    let (up, seen) = upstream(Duration::ZERO).await;
    let proxy = proxy(up, &[("body_timeout", "0.3"), ("request_buffer", "1024")]).await;
    let mut s = connect(proxy.addr).await;
    s.write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 10000\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&[b'a'; 3000]).await.unwrap();
    let answer = read_answer(&mut s).await.unwrap();
    assert_eq!(answer.status, 408, "{answer:?}");
    assert!(closed(&mut s).await);
    // Past the buffer, the body went on to the upstream as it came.
    assert_eq!(seen.requests.load(Ordering::SeqCst), 1);
    assert_eq!(value(&metrics(&proxy).await, &limit("body_timeout")), 1.0);
    // The same size, sent without a pause, goes through whole.
    let mut s = connect(proxy.addr).await;
    let mut request = b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 10000\r\n\r\n".to_vec();
    request.extend_from_slice(&[b'a'; 10000]);
    s.write_all(&request).await.unwrap();
    let answer = read_answer(&mut s).await.unwrap();
    assert_eq!((answer.status, answer.body.as_str()), (200, "10000"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_after_the_send_timeout() {
    let (up, _) = upstream(Duration::ZERO).await;
    let proxy = proxy(up, &[("send_timeout", "0.3")]).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(proxy.addr).await.unwrap();
    stalled.write_all(get("/endless").as_bytes()).await.unwrap();
    // It reads nothing; the others are served meanwhile.
    assert_eq!(status_of(proxy.addr, "/meanwhile").await, Some(200));
    assert_eq!(
        until(&proxy, &limit("send_timeout"), |v| v >= 1.0).await,
        1.0
    );
    assert!(closed(&mut stalled).await);
    assert_eq!(status_of(proxy.addr, "/after").await, Some(200));
    proxy.shutdown().await;
}

/// `GET path` on a new connection, in a task of its own.
fn spawn_get(addr: SocketAddr, path: &'static str) -> tokio::task::JoinHandle<Option<Answer>> {
    tokio::spawn(async move {
        let mut s = connect(addr).await;
        ask(&mut s, &get(path)).await
    })
}

/// Waits until `seen` shows `n` requests being answered.
async fn busy(seen: &Seen, n: usize) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while seen.busy.load(Ordering::SeqCst) < n && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen.busy.load(Ordering::SeqCst), n);
}

#[tokio::test]
async fn past_the_upstream_bound_a_request_waits_then_gets_503() {
    let (up, seen) = upstream(Duration::from_millis(1500)).await;
    let proxy = proxy(
        up,
        &[
            ("max_upstream_connections", "2"),
            ("connect_timeout", "0.3"),
        ],
    )
    .await;
    let slow = [
        spawn_get(proxy.addr, "/slow"),
        spawn_get(proxy.addr, "/slow"),
    ];
    busy(&seen, 2).await;
    // Both connections allowed are busy: a third request waits, then 503.
    let mut s = connect(proxy.addr).await;
    let answer = ask(&mut s, &get("/fast")).await.unwrap();
    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(answer.head.contains("retry-after: 1"), "{answer:?}");
    assert!(answer.body.contains("upstream"), "{answer:?}");
    // The proxy goes on answering what it answers itself.
    let mut s = connect(proxy.addr).await;
    let answer = ask(&mut s, &get("/authorize?client_id=app")).await.unwrap();
    assert_eq!(answer.status, 400, "{answer:?}");
    let text = metrics(&proxy).await;
    assert_eq!(value(&text, &limit("upstream_connections")), 1.0, "{text}");
    assert_eq!(
        value(&text, "pkce_proxy_upstream_connections"),
        2.0,
        "{text}"
    );
    for request in slow {
        assert_eq!(request.await.unwrap().unwrap().status, 200);
    }
    // The pressure gone, requests go through again.
    assert_eq!(status_of(proxy.addr, "/fast").await, Some(200));
    assert!(seen.connections.load(Ordering::SeqCst) <= 2);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_request_that_waits_gets_the_connection_that_comes_free() {
    let (up, seen) = upstream(Duration::from_millis(400)).await;
    let proxy = proxy(
        up,
        &[("max_upstream_connections", "1"), ("connect_timeout", "5")],
    )
    .await;
    let first = spawn_get(proxy.addr, "/slow");
    busy(&seen, 1).await;
    let second = spawn_get(proxy.addr, "/fast");
    assert_eq!(
        until(&proxy, "pkce_proxy_upstream_waiting_requests", |v| v >= 1.0).await,
        1.0
    );
    assert_eq!(first.await.unwrap().unwrap().status, 200);
    let answer = second.await.unwrap().unwrap();
    assert_eq!((answer.status, answer.body.as_str()), (200, "ok"));
    // The one connection went from the first client to the second.
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
    let text = metrics(&proxy).await;
    assert_eq!(value(&text, &limit("upstream_connections")), 0.0, "{text}");
    assert_eq!(value(&text, "pkce_proxy_upstream_waiting_requests"), 0.0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn idle_connections_that_silent_clients_keep_are_taken_at_the_bound() {
    let (up, seen) = upstream(Duration::ZERO).await;
    let proxy = proxy(
        up,
        &[
            ("max_upstream_connections", "1"),
            ("connect_timeout", "0.5"),
        ],
    )
    .await;
    // Each client connection keeps the upstream connection it used, and
    // stays open, silent.
    let mut a = connect(proxy.addr).await;
    assert_eq!(ask(&mut a, &get("/a")).await.unwrap().status, 200);
    let mut b = connect(proxy.addr).await;
    assert_eq!(ask(&mut b, &get("/b")).await.unwrap().status, 200);
    assert_eq!(ask(&mut a, &get("/a2")).await.unwrap().status, 200);
    let mut c = connect(proxy.addr).await;
    assert_eq!(ask(&mut c, &get("/c")).await.unwrap().status, 200);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
    let text = metrics(&proxy).await;
    assert_eq!(value(&text, &limit("upstream_connections")), 0.0, "{text}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_slow_small_body_holds_no_upstream_connection() {
    let (up, seen) = upstream(Duration::ZERO).await;
    let proxy = proxy(
        up,
        &[
            ("max_upstream_connections", "1"),
            ("connect_timeout", "0.3"),
        ],
    )
    .await;
    let mut slow = connect(proxy.addr).await;
    slow.write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 20\r\n\r\n0123456789")
        .await
        .unwrap();
    // While that body trickles in, the one upstream connection serves
    // others, for longer than a request would wait for it.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(status_of(proxy.addr, "/meanwhile").await, Some(200));
    }
    slow.write_all(b"0123456789").await.unwrap();
    let answer = read_answer(&mut slow).await.unwrap();
    assert_eq!((answer.status, answer.body.as_str()), (200, "20"));
    assert_eq!(seen.requests.load(Ordering::SeqCst), 4);
    proxy.shutdown().await;
}

#[tokio::test]
async fn past_the_read_ahead_budget_a_body_streams() {
    let (up, _) = upstream(Duration::ZERO).await;
    let proxy = proxy(
        up,
        &[
            ("request_buffer", "16"),
            ("request_buffer_total", "16"),
            ("max_upstream_connections", "1"),
            ("connect_timeout", "0.3"),
        ],
    )
    .await;
    let head = "POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 20\r\n\r\n0123456789";
    // The first body is read ahead, and holds ten of the sixteen bytes.
    let mut first = connect(proxy.addr).await;
    first.write_all(head.as_bytes()).await.unwrap();
    let held = until(&proxy, "pkce_proxy_request_buffer_bytes", |v| v >= 10.0).await;
    assert_eq!(held, 10.0);
    // The second has no room: it streams, holding the one upstream
    // connection while it waits for the rest.
    let mut second = connect(proxy.addr).await;
    second.write_all(head.as_bytes()).await.unwrap();
    assert_eq!(
        until(&proxy, "pkce_proxy_upstream_connections", |v| v >= 1.0).await,
        1.0
    );
    assert_eq!(status_of(proxy.addr, "/fast").await, Some(503));
    let text = metrics(&proxy).await;
    assert_eq!(value(&text, &limit("request_buffer_total")), 1.0, "{text}");
    assert_eq!(
        value(&text, "pkce_proxy_request_buffer_bytes"),
        10.0,
        "{text}"
    );
    for client in [&mut second, &mut first] {
        client.write_all(b"abcdefghij").await.unwrap();
        let answer = read_answer(client).await.unwrap();
        assert_eq!((answer.status, answer.body.as_str()), (200, "20"));
    }
    assert_eq!(
        value(&metrics(&proxy).await, "pkce_proxy_request_buffer_bytes"),
        0.0
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_buffered_body_still_retires_its_upstream_connection() {
    let (up, seen) = upstream(Duration::ZERO).await;
    let proxy = proxy(up, &[]).await;
    let mut s = connect(proxy.addr).await;
    s.write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 20\r\n\r\n0123456789")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(b"0123456789").await.unwrap();
    let answer = read_answer(&mut s).await.unwrap();
    assert_eq!((answer.status, answer.body.as_str()), (200, "20"));
    // Read whole by the proxy or not, a body may hold what a loose
    // upstream would take for a request: its connection is not reused.
    assert_eq!(ask(&mut s, &get("/next")).await.unwrap().status, 200);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 2);
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_shared_pool_keeps_at_most_its_bound_for_at_most_its_timeout() {
    let (up, seen) = upstream(Duration::from_millis(300)).await;
    let proxy = proxy(
        up,
        &[
            ("max_idle_upstream_connections", "1"),
            ("upstream_idle_timeout", "1"),
        ],
    )
    .await;
    // Three client connections use three upstream connections at once,
    // then close: the shared pool keeps one of them.
    let clients = [
        spawn_get(proxy.addr, "/slow"),
        spawn_get(proxy.addr, "/slow"),
        spawn_get(proxy.addr, "/slow"),
    ];
    for client in clients {
        assert_eq!(client.await.unwrap().unwrap().status, 200);
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), 3);
    let open = until(&proxy, "pkce_proxy_upstream_connections", |v| v <= 1.0).await;
    assert_eq!(open, 1.0);
    let text = metrics(&proxy).await;
    assert_eq!(
        value(&text, "pkce_proxy_upstream_idle_connections"),
        1.0,
        "{text}"
    );
    // Past the idle timeout it is closed, with no request to notice.
    let open = until(&proxy, "pkce_proxy_upstream_connections", |v| v == 0.0).await;
    assert_eq!(open, 0.0);
    assert_eq!(
        value(
            &metrics(&proxy).await,
            "pkce_proxy_upstream_idle_connections"
        ),
        0.0
    );
    assert_eq!(status_of(proxy.addr, "/after").await, Some(200));
    proxy.shutdown().await;
}

/// An HTTP/2 client (prior knowledge) of the proxy.
fn h2_client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// `GET path` over `client`, in a task of its own: the status.
fn spawn_h2_get(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    addr: SocketAddr,
    path: &'static str,
) -> tokio::task::JoinHandle<u16> {
    let client = client.clone();
    tokio::spawn(async move {
        let req = Request::get(format!("http://{addr}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = tokio::time::timeout(PATIENCE, client.request(req))
            .await
            .unwrap()
            .unwrap();
        let status = response.status().as_u16();
        let _ = response.into_body().collect().await;
        status
    })
}

#[tokio::test]
async fn an_http2_client_uses_at_most_its_share_of_upstream_connections() {
    let (up, seen) = upstream(Duration::from_millis(200)).await;
    let proxy = proxy(
        up,
        &[
            ("max_upstream_connections_per_client", "2"),
            ("connect_timeout", "5"),
        ],
    )
    .await;
    let client = h2_client();
    let requests: Vec<_> = (0..6)
        .map(|_| spawn_h2_get(&client, proxy.addr, "/slow"))
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 6);
    assert!(seen.most_busy.load(Ordering::SeqCst) <= 2);
    assert!(seen.connections.load(Ordering::SeqCst) <= 2);
    proxy.shutdown().await;

    // Past the wait, the requests beyond the share get 503; other clients
    // are served meanwhile, and the client itself once its share is free.
    let (up, seen) = upstream(Duration::from_millis(1500)).await;
    let proxy = self::proxy(
        up,
        &[
            ("max_upstream_connections_per_client", "1"),
            ("connect_timeout", "0.3"),
        ],
    )
    .await;
    let client = h2_client();
    let requests: Vec<_> = (0..3)
        .map(|_| spawn_h2_get(&client, proxy.addr, "/slow"))
        .collect();
    busy(&seen, 1).await;
    assert_eq!(status_of(proxy.addr, "/meanwhile").await, Some(200));
    let mut statuses = Vec::new();
    for request in requests {
        statuses.push(request.await.unwrap());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 503, 503]);
    assert_eq!(
        value(
            &metrics(&proxy).await,
            &limit("upstream_connections_per_client")
        ),
        2.0
    );
    assert_eq!(
        spawn_h2_get(&client, proxy.addr, "/after").await.unwrap(),
        200
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn pipelined_requests_use_one_upstream_connection() {
    let (up, seen) = upstream(Duration::ZERO).await;
    let proxy = proxy(up, &[("max_upstream_connections_per_client", "1")]).await;
    let mut s = connect(proxy.addr).await;
    let pipelined: String = (0..5).map(|i| get(&format!("/p{i}"))).collect();
    s.write_all(pipelined.as_bytes()).await.unwrap();
    for _ in 0..5 {
        assert_eq!(read_answer(&mut s).await.unwrap().status, 200);
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
    proxy.shutdown().await;
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// The frames the proxy sends on `stream` until it closes it: type, flags
/// and payload of each; `None` if it does not close within the patience.
async fn frames_until_closed(stream: &mut TcpStream) -> Option<Vec<(u8, u8, Vec<u8>)>> {
    let mut bytes = Vec::new();
    let read = async {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(PATIENCE, read).await.ok()?;
    let mut frames = Vec::new();
    let mut rest = &bytes[..];
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        let payload = rest.get(9..9 + len)?.to_vec();
        frames.push((rest[3], rest[4], payload));
        rest = &rest[9 + len..];
    }
    Some(frames)
}

/// The value of `id` in a SETTINGS payload.
fn setting(payload: &[u8], id: u16) -> Option<u32> {
    payload.chunks(6).find_map(|p| {
        (u16::from_be_bytes([p[0], p[1]]) == id)
            .then(|| u32::from_be_bytes([p[2], p[3], p[4], p[5]]))
    })
}

#[tokio::test]
async fn an_http2_connection_with_no_request_open_is_closed_after_the_idle_timeout() {
    let (up, _) = upstream(Duration::from_millis(800)).await;
    let proxy = proxy(
        up,
        &[
            ("h2_idle_timeout", "0.3"),
            ("h2_keepalive_timeout", "0.3"),
            ("h2_max_concurrent_streams", "7"),
            ("h2_max_header_list_size", "4096"),
        ],
    )
    .await;
    // The preface and SETTINGS, then nothing: the GOAWAY goes
    // unacknowledged, and the connection is cut.
    let mut s = connect(proxy.addr).await;
    s.write_all(PREFACE).await.unwrap();
    s.write_all(SETTINGS).await.unwrap();
    let frames = frames_until_closed(&mut s).await.expect("closed");
    let (kind, _, settings) = &frames[0];
    assert_eq!(*kind, 4, "SETTINGS first: {frames:?}");
    assert_eq!(setting(settings, 0x3), Some(7), "MAX_CONCURRENT_STREAMS");
    assert_eq!(setting(settings, 0x6), Some(4096), "MAX_HEADER_LIST_SIZE");
    assert!(
        frames.iter().any(|(kind, ..)| *kind == 7),
        "a GOAWAY: {frames:?}"
    );
    // A request open longer than the idle timeout is not cut.
    let client = h2_client();
    assert_eq!(
        spawn_h2_get(&client, proxy.addr, "/slow").await.unwrap(),
        200
    );
    proxy.shutdown().await;

    // A client that acknowledges the GOAWAY sees its connection closed
    // at once, well within the keep-alive timeout (20 s).
    let proxy = self::proxy(up, &[("h2_idle_timeout", "0.3")]).await;
    let client = h2_client();
    assert_eq!(
        spawn_h2_get(&client, proxy.addr, "/once").await.unwrap(),
        200
    );
    let open = until(&proxy, "pkce_proxy_client_connections", |v| v == 0.0).await;
    assert_eq!(open, 0.0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_http2_client_that_does_not_answer_pings_is_closed() {
    let (up, _) = upstream(Duration::ZERO).await;
    let proxy = proxy(
        up,
        &[
            ("h2_keepalive_interval", "0.2"),
            ("h2_keepalive_timeout", "0.2"),
        ],
    )
    .await;
    let mut s = connect(proxy.addr).await;
    s.write_all(PREFACE).await.unwrap();
    s.write_all(SETTINGS).await.unwrap();
    // Closed long before the idle timeout (60 s), by the unanswered ping.
    let frames = frames_until_closed(&mut s).await.expect("closed");
    assert!(
        frames
            .iter()
            .any(|(kind, flags, _)| *kind == 6 && flags & 1 == 0),
        "a PING: {frames:?}"
    );
    // A client that answers is served.
    let client = h2_client();
    assert_eq!(
        spawn_h2_get(&client, proxy.addr, "/after").await.unwrap(),
        200
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn http2_streams_and_header_lists_are_bounded() {
    let (up, seen) = upstream(Duration::from_millis(200)).await;
    let proxy = proxy(
        up,
        &[
            ("h2_max_concurrent_streams", "2"),
            ("h2_max_header_list_size", "4096"),
        ],
    )
    .await;
    // Once the client has the proxy's SETTINGS, it opens two streams at a
    // time (streams past the bound before that are refused).
    let client = h2_client();
    assert_eq!(
        spawn_h2_get(&client, proxy.addr, "/first").await.unwrap(),
        200
    );
    let requests: Vec<_> = (0..6)
        .map(|_| spawn_h2_get(&client, proxy.addr, "/slow"))
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert!(seen.most_busy.load(Ordering::SeqCst) <= 2);
    let before = seen.requests.load(Ordering::SeqCst);
    let req = Request::get(format!("http://{}/big-head", proxy.addr))
        .header("x-big", "a".repeat(8 * 1024))
        .body(Full::new(Bytes::new()))
        .unwrap();
    // Refused by the proxy (431), or by the client, which read the bound.
    let answered = tokio::time::timeout(PATIENCE, client.request(req))
        .await
        .unwrap();
    if let Ok(response) = answered {
        assert_eq!(response.status(), 431);
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), before);
    assert_eq!(
        spawn_h2_get(&client, proxy.addr, "/after").await.unwrap(),
        200
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_http2_client_that_stops_reading_is_closed_after_the_send_timeout() {
    let (up, _) = upstream(Duration::ZERO).await;
    let proxy = proxy(up, &[("send_timeout", "0.3")]).await;
    let client = h2_client();
    let req = Request::get(format!("http://{}/endless", proxy.addr))
        .body(Full::new(Bytes::new()))
        .unwrap();
    // The head is read, the body never: the client's window fills.
    let response = client.request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(status_of(proxy.addr, "/meanwhile").await, Some(200));
    assert_eq!(
        until(&proxy, &limit("send_timeout"), |v| v >= 1.0).await,
        1.0
    );
    let body = tokio::time::timeout(PATIENCE, response.into_body().collect()).await;
    assert!(body.unwrap().is_err(), "the connection was closed");
    assert_eq!(
        spawn_h2_get(&h2_client(), proxy.addr, "/after")
            .await
            .unwrap(),
        200
    );
    proxy.shutdown().await;
}

/// A request body that sends ten bytes and then nothing, ever.
struct Stalling(bool);

impl http_body::Body for Stalling {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if std::mem::replace(&mut self.0, true) {
            return Poll::Pending;
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"0123456789")))))
    }
}

#[tokio::test]
async fn an_http2_body_that_stops_coming_gets_408() {
    let (up, seen) = upstream(Duration::ZERO).await;
    let proxy = proxy(up, &[("body_timeout", "0.3")]).await;
    let client: hyper_util::client::legacy::Client<_, Stalling> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let req = Request::post(format!("http://{}/upload", proxy.addr))
        .body(Stalling(false))
        .unwrap();
    let response = tokio::time::timeout(PATIENCE, client.request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 408);
    assert_eq!(seen.requests.load(Ordering::SeqCst), 0);
    assert_eq!(value(&metrics(&proxy).await, &limit("body_timeout")), 1.0);
    assert_eq!(
        spawn_h2_get(&h2_client(), proxy.addr, "/after")
            .await
            .unwrap(),
        200
    );
    proxy.shutdown().await;
}
