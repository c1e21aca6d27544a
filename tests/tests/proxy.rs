//! The proxy end to end over loopback sockets: in front of the example
//! legacy server, and in front of upstreams that misbehave.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pkce_proxy::config::{Config, RawSettings};
use pkce_proxy::demo::HttpClient;
use pkce_proxy::demo::legacy::{LegacyServer, encode, parse_form};
use pkce_proxy::server::{Running, start};
use tests::ReadyFrames;
use tokio::net::TcpListener;
use tower_pkce::{ChallengeMethod, CodeChallenge, CodeVerifier};

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn settings(upstream: &str) -> RawSettings {
    RawSettings {
        upstream: Some(upstream.to_owned()),
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        ..RawSettings::default()
    }
}

async fn proxy(settings: RawSettings) -> Running {
    start(Config::resolve(&settings).unwrap()).await.unwrap()
}

/// A one-route upstream built from a closure, on a free port.
async fn upstream<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<UpBody>> + Send + 'static,
{
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type UpBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

fn full(body: impl Into<Bytes>) -> UpBody {
    Full::new(body.into()).map_err(|e| match e {}).boxed()
}

fn challenge_query(verifier: &CodeVerifier, extra: &str) -> String {
    let challenge = CodeChallenge::from_verifier(verifier, ChallengeMethod::S256);
    format!(
        "response_type=code&client_id=app&redirect_uri={}&state=s1&code_challenge={}&code_challenge_method=S256{extra}",
        encode("https://client.example/cb"),
        challenge.as_str()
    )
}

fn hidden(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(html[start..end].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_flow_through_the_legacy_server() {
    let legacy = LegacyServer::start(loopback()).await.unwrap();
    let proxy = proxy(settings(&format!("http://{}", legacy.addr))).await;
    let client = HttpClient::default();
    let base = format!("http://{}", proxy.addr);

    for mode in ["", "&response_mode=form_post"] {
        let verifier = CodeVerifier::generate();
        let page = client
            .send(
                Method::GET,
                &format!("{base}/authorize?{}", challenge_query(&verifier, mode)),
                None,
            )
            .await
            .unwrap();
        assert_eq!(page.status, StatusCode::OK);
        let txn = hidden(&page.body, "txn").unwrap();
        let login = client
            .send(
                Method::POST,
                &format!("{base}/login"),
                Some(format!("txn={}&username=alice", encode(&txn))),
            )
            .await
            .unwrap();
        let (code, state) = if mode.is_empty() {
            let loc = login.location().unwrap();
            let params = parse_form(loc.split_once('?').unwrap().1);
            let get = |n: &str| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
            (get("code").unwrap(), get("state"))
        } else {
            (
                hidden(&login.body, "code").unwrap(),
                hidden(&login.body, "state"),
            )
        };
        assert_eq!(state.as_deref(), Some("s1"), "{mode}");
        let token = |v: &str| {
            format!(
                "grant_type=authorization_code&code={}&client_id=app&redirect_uri={}&code_verifier={v}",
                encode(&code),
                encode("https://client.example/cb")
            )
        };
        let before = legacy.counters.token.load(Ordering::SeqCst);
        let wrong = client
            .send(
                Method::POST,
                &format!("{base}/token"),
                Some(token(CodeVerifier::generate().secret())),
            )
            .await
            .unwrap();
        assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
        assert!(wrong.body.contains("invalid_grant"));
        assert_eq!(
            legacy.counters.token.load(Ordering::SeqCst),
            before,
            "a refused request reached the upstream"
        );
        let ok = client
            .send(
                Method::POST,
                &format!("{base}/token"),
                Some(token(verifier.secret())),
            )
            .await
            .unwrap();
        assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
        assert_eq!(legacy.counters.token.load(Ordering::SeqCst), before + 1);
    }

    // Discovery, through the proxy.
    let meta = client
        .send(
            Method::GET,
            &format!("{base}/.well-known/openid-configuration"),
            None,
        )
        .await
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(&meta.body).unwrap();
    assert_eq!(
        json["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert!(json.get("pushed_authorization_request_endpoint").is_none());

    // Admin endpoints.
    let admin = format!("http://{}", proxy.admin_addr);
    assert_eq!(
        client
            .send(Method::GET, &format!("{admin}/healthz"), None)
            .await
            .unwrap()
            .status,
        StatusCode::OK
    );
    assert_eq!(
        client
            .send(Method::GET, &format!("{admin}/readyz"), None)
            .await
            .unwrap()
            .status,
        StatusCode::OK
    );
    let metrics = client
        .send(Method::GET, &format!("{admin}/metrics"), None)
        .await
        .unwrap();
    assert!(
        metrics
            .body
            .contains("pkce_proxy_rejections_total{reason=\"verifier_mismatch\"} 2"),
        "{}",
        metrics.body
    );
    assert!(
        metrics
            .body
            .contains("pkce_proxy_requests_total{outcome=\"2xx\",route=\"token\"} 2"),
        "{}",
        metrics.body
    );
    assert!(
        metrics
            .body
            .contains("pkce_proxy_upstream_duration_seconds_bucket")
    );
    proxy.shutdown().await;
    legacy.shutdown().await;
}

/// An upstream that answers with the request's header fields and target
/// as a JSON object.
async fn echo_headers() -> SocketAddr {
    upstream(|req: Request<Incoming>| async move {
        let mut seen = serde_json::Map::new();
        for (n, v) in req.headers() {
            seen.insert(n.to_string(), v.to_str().unwrap_or("").into());
        }
        seen.insert("uri".into(), req.uri().to_string().into());
        Response::new(full(serde_json::Value::Object(seen).to_string()))
    })
    .await
}

#[tokio::test]
async fn forwarded_headers_and_host_as_the_upstream_sees_them() {
    let up = echo_headers().await;
    let proxy = proxy(settings(&format!("http://{up}"))).await;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::get(format!(
        "http://{}/userinfo/a%2Fb?x=1&code=abc&y",
        proxy.addr
    ))
    .header(header::HOST, "login.example.com")
    .header("x-forwarded-for", "6.6.6.6")
    .header("x-forwarded-host", "evil.example")
    .header("x-custom", "kept")
    .header(header::CONNECTION, "x-hop")
    .header("x-hop", "dropped")
    .body(Full::new(Bytes::new()))
    .unwrap();
    let response = client.request(req).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["host"], "login.example.com");
    assert_eq!(seen["x-forwarded-host"], "login.example.com");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-custom"], "kept");
    assert!(seen.get("x-hop").is_none());
    assert_eq!(
        seen["uri"], "/userinfo/a%2Fb?x=1&code=abc&y",
        "path and query byte for byte"
    );
    proxy.shutdown().await;
}

/// What the echoing upstream saw of the `X-Forwarded-*` fields, for a
/// request sent from the local address `from`.
async fn forwarded_as_seen(proxy: SocketAddr, from: [u8; 4]) -> serde_json::Value {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_local_address(Some(std::net::Ipv4Addr::from(from).into()));
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let req = Request::get(format!("http://{proxy}/x"))
        .header(header::HOST, "login.example.com")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-host", "public.example")
        .header("x-forwarded-proto", "https")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let body = client
        .request(req)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    serde_json::json!({
        "for": seen["x-forwarded-for"],
        "host": seen["x-forwarded-host"],
        "proto": seen["x-forwarded-proto"],
    })
}

#[tokio::test]
async fn forwarded_fields_are_kept_only_from_trusted_proxies() {
    let up = echo_headers().await;
    let mut trusting = settings(&format!("http://{up}"));
    trusting.trusted_proxies = Some("10.0.0.0/8, 127.0.0.2".into());
    let proxy = proxy(trusting).await;
    let addr = proxy.addr;
    // The load balancer at 127.0.0.2: its fields are kept, and its own
    // address is appended to X-Forwarded-For.
    assert_eq!(
        forwarded_as_seen(addr, [127, 0, 0, 2]).await,
        serde_json::json!({
            "for": "6.6.6.6, 127.0.0.2",
            "host": "public.example",
            "proto": "https",
        })
    );
    // Any other peer, on loopback too: replaced.
    for from in [[127, 0, 0, 1], [127, 0, 0, 3]] {
        let ip = std::net::Ipv4Addr::from(from).to_string();
        assert_eq!(
            forwarded_as_seen(addr, from).await,
            serde_json::json!({
                "for": ip,
                "host": "login.example.com",
                "proto": "http",
            }),
            "{ip}"
        );
    }
    proxy.shutdown().await;

    // The deprecated --trust-forwarded trusts every peer; it cannot be
    // given with --trusted-proxies.
    let mut everyone = settings(&format!("http://{up}"));
    everyone.trust_forwarded = Some("true".into());
    let proxy = self::proxy(everyone).await;
    assert_eq!(
        forwarded_as_seen(proxy.addr, [127, 0, 0, 1]).await["for"],
        "6.6.6.6, 127.0.0.1"
    );
    proxy.shutdown().await;
    let mut both = settings(&format!("http://{up}"));
    both.trust_forwarded = Some("true".into());
    both.trusted_proxies = Some("10.0.0.0/8".into());
    let e = Config::resolve(&both).unwrap_err();
    assert_eq!(e.setting, "--trusted-proxies");
    let mut bad = settings(&format!("http://{up}"));
    bad.trusted_proxies = Some("10.0.0.1/8".into());
    let e = Config::resolve(&bad).unwrap_err();
    assert_eq!(e.setting, "--trusted-proxies");
    assert!(e.message.contains("\"10.0.0.1/8\""), "{e}");
}

/// Sends `prefix` and then a GET carrying the client's own
/// `X-Forwarded-For` from the local address `from`, over a raw connection;
/// the answer's status line and body, or `None` when the proxy closed the
/// connection without one.
async fn raw_get_from(proxy: SocketAddr, from: [u8; 4], prefix: &[u8]) -> Option<(String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    let mut stream = socket.connect(proxy).await.unwrap();
    let mut request = prefix.to_vec();
    request.extend_from_slice(
        b"GET /x HTTP/1.1\r\nHost: login.example.com\r\nX-Forwarded-For: 6.6.6.6\r\n\
          X-Forwarded-Proto: https\r\nConnection: close\r\n\r\n",
    );
    // The proxy may close before it reads everything (a refused header).
    let _ = stream.write_all(&request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_owned(), body.to_owned()))
}

#[tokio::test]
async fn the_proxy_protocol_names_the_client_of_a_trusted_balancer() {
    let up = echo_headers().await;
    let mut balanced = settings(&format!("http://{up}"));
    balanced.trusted_proxies = Some("127.0.0.2".into());
    balanced.proxy_protocol = Some("true".into());
    balanced.head_timeout = Some("1".into());
    let proxy = proxy(balanced).await;
    let seen = |answer: Option<(String, String)>| {
        let (status, body) = answer.expect("an answer");
        assert!(status.contains(" 200 "), "{status}: {body}");
        let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
        (
            seen["x-forwarded-for"].as_str().unwrap().to_owned(),
            seen["x-forwarded-proto"].as_str().unwrap().to_owned(),
        )
    };
    let v1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 8443\r\n";
    // The client the header names is the one in X-Forwarded-For; what the
    // client said of itself is not kept, since the client is not trusted.
    assert_eq!(
        seen(raw_get_from(proxy.addr, [127, 0, 0, 2], v1).await),
        ("203.0.113.7".to_owned(), "http".to_owned())
    );
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x24".to_vec();
    v2.extend_from_slice(
        &"2001:db8::7"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    v2.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    v2.extend_from_slice(&[0x15, 0xb3, 0x20, 0xfb]);
    assert_eq!(
        seen(raw_get_from(proxy.addr, [127, 0, 0, 2], &v2).await),
        ("2001:db8::7".to_owned(), "http".to_owned())
    );
    // LOCAL (a health check): the balancer itself, vouching for nothing.
    let local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
    assert_eq!(
        seen(raw_get_from(proxy.addr, [127, 0, 0, 2], local).await),
        ("127.0.0.2".to_owned(), "http".to_owned())
    );
    // From the balancer, no header or a malformed one: closed unanswered.
    for prefix in [
        &b""[..],
        b"PROXY TCP4 203.0.113.7 127.0.0.1 05555 8443\r\n",
        b"PROXY TCP4 203.0.113.7\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x12\x00\x0c\0\0\0\0\0\0\0\0\0\0\0\0",
    ] {
        assert_eq!(
            raw_get_from(proxy.addr, [127, 0, 0, 2], prefix).await,
            None,
            "{prefix:?}"
        );
    }
    // A header that stops coming: closed at the head timeout (1 s).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from(([127, 0, 0, 2], 0))).unwrap();
        let mut stream = socket.connect(proxy.addr).await.unwrap();
        stream.write_all(b"PROXY TCP4 203.0").await.unwrap();
        let started = Instant::now();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
            .await
            .expect("closed within the head timeout")
            .unwrap();
        assert!(rest.is_empty());
        assert!(started.elapsed() >= Duration::from_millis(900));
    }
    // Any other peer speaks HTTP from its first byte: served as itself,
    // and its PROXY line is a malformed request.
    assert_eq!(
        seen(raw_get_from(proxy.addr, [127, 0, 0, 1], b"").await),
        ("127.0.0.1".to_owned(), "http".to_owned())
    );
    let (status, _) = raw_get_from(proxy.addr, [127, 0, 0, 1], v1).await.unwrap();
    assert!(status.contains(" 400 "), "{status}");
    let metrics = HttpClient::default()
        .send(
            Method::GET,
            &format!("http://{}/metrics", proxy.admin_addr),
            None,
        )
        .await
        .unwrap();
    assert!(
        metrics
            .body
            .contains("pkce_proxy_proxy_protocol_refused_total 5\n"),
        "{}",
        metrics.body
    );
    proxy.shutdown().await;

    // It needs the balancers named.
    let mut unnamed = settings(&format!("http://{up}"));
    unnamed.proxy_protocol = Some("true".into());
    assert_eq!(
        Config::resolve(&unnamed).unwrap_err().setting,
        "--proxy-protocol"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_megabytes_stream_through_both_ways() {
    const SIZE: usize = 5 * 1024 * 1024;
    let up = upstream(|req: Request<Incoming>| async move {
        let trailer = req.headers().get("x-tag").cloned();
        let (_, body) = req.into_parts();
        // Echo the body back as it arrives, with a header of our own.
        let mut response = Response::new(body.map_err(BoxError::from).boxed());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            "application/octet-stream".parse().unwrap(),
        );
        if let Some(t) = trailer {
            response.headers_mut().insert("x-tag-echo", t);
        }
        response
    })
    .await;
    let proxy = proxy(settings(&format!("http://{up}"))).await;
    let body = ReadyFrames::data((0..80).map(|i| Bytes::from(vec![(i % 251) as u8; SIZE / 80])));
    let client: Client<_, ReadyFrames> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::post(format!("http://{}/upload", proxy.addr))
        .header("x-tag", "t-1")
        .body(body)
        .unwrap();
    let response = client.request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-tag-echo"], "t-1");
    let got = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(got.len(), SIZE);
    assert!(
        got.chunks(SIZE / 80)
            .enumerate()
            .all(|(i, c)| c.iter().all(|&b| b == (i % 251) as u8))
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn upstream_down_gets_502_and_slow_gets_504() {
    // A port that was free a moment ago: nothing listens there.
    let closed = TcpListener::bind(loopback())
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = proxy(settings(&format!("http://{closed}"))).await;
    let client = HttpClient::default();
    let other = client
        .send(Method::GET, &format!("http://{}/page", proxy.addr), None)
        .await
        .unwrap();
    assert_eq!(other.status, StatusCode::BAD_GATEWAY);
    assert!(other.body.starts_with("502"), "{}", other.body);
    let token = client
        .send(
            Method::POST,
            &format!("http://{}/token", proxy.addr),
            Some("grant_type=refresh_token&refresh_token=x".into()),
        )
        .await
        .unwrap();
    assert_eq!(token.status, StatusCode::BAD_GATEWAY);
    let json: serde_json::Value = serde_json::from_str(&token.body).unwrap();
    assert_eq!(json["error"], "temporarily_unavailable");
    let ready = client
        .send(
            Method::GET,
            &format!("http://{}/readyz", proxy.admin_addr),
            None,
        )
        .await
        .unwrap();
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    proxy.shutdown().await;

    let slow = upstream(|_req: Request<Incoming>| async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Response::new(full("late"))
    })
    .await;
    let mut s = settings(&format!("http://{slow}"));
    s.response_timeout = Some("0.3".into());
    let proxy = self::proxy(s).await;
    let started = Instant::now();
    let answer = client
        .send(Method::GET, &format!("http://{}/page", proxy.addr), None)
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(3));
    proxy.shutdown().await;
}

/// Sends `GET path` on `stream` and reads the answer's status, with its
/// body (the upstreams here send a length).
async fn get_on(stream: &mut tokio::net::TcpStream, path: &str) -> StatusCode {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("GET {path} HTTP/1.1\r\nHost: proxy.test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + length {
                return head[9..12].parse::<u16>().unwrap().try_into().unwrap();
            }
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the proxy closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Each request on a client connection gets the whole response timeout,
/// counted from its own start: the connection's timer is moved, not kept
/// at an earlier request's deadline, and still fires for a slow one.
#[tokio::test]
async fn every_request_on_a_connection_gets_its_own_response_timeout() {
    let slow = upstream(|req: Request<Incoming>| async move {
        let wait = if req.uri().path() == "/slow" {
            5000
        } else {
            350
        };
        tokio::time::sleep(Duration::from_millis(wait)).await;
        Response::new(full("answer"))
    })
    .await;
    let mut s = settings(&format!("http://{slow}"));
    s.response_timeout = Some("0.6".into());
    let proxy = self::proxy(s).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    // Two answers of 0.35 s each: a deadline left at the first request's
    // start would expire during the second.
    assert_eq!(get_on(&mut stream, "/a").await, StatusCode::OK);
    assert_eq!(get_on(&mut stream, "/b").await, StatusCode::OK);
    let started = Instant::now();
    assert_eq!(
        get_on(&mut stream, "/slow").await,
        StatusCode::GATEWAY_TIMEOUT
    );
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(550), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    assert_eq!(get_on(&mut stream, "/c").await, StatusCode::OK);
    proxy.shutdown().await;
}

#[tokio::test]
async fn two_megabyte_token_body_is_refused_unread() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let up = upstream(move |_req: Request<Incoming>| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            Response::new(full("{}"))
        }
    })
    .await;
    let proxy = proxy(settings(&format!("http://{up}"))).await;
    let client = HttpClient::default();
    let big = format!(
        "grant_type=authorization_code&code=x&pad={}",
        "a".repeat(2 * 1024 * 1024)
    );
    let answer = client
        .send(
            Method::POST,
            &format!("http://{}/token", proxy.addr),
            Some(big),
        )
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    let json: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(json["error"], "invalid_request");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_the_request_in_flight() {
    let up = upstream(|_req: Request<Incoming>| async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        Response::new(full("finished"))
    })
    .await;
    let proxy = proxy(settings(&format!("http://{up}"))).await;
    let addr = proxy.addr;
    let in_flight = tokio::spawn(async move {
        HttpClient::default()
            .send(Method::GET, &format!("http://{addr}/slow"), None)
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    proxy.shutdown().await;
    let answer = in_flight.await.unwrap().unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, "finished");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "shutdown waited for the request"
    );
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_are_served() {
    let legacy = LegacyServer::start(loopback()).await.unwrap();
    let proxy = proxy(settings(&format!("http://{}", legacy.addr))).await;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let verifier = CodeVerifier::generate();
    let req = Request::get(format!(
        "http://{}/authorize?{}",
        proxy.addr,
        challenge_query(&verifier, "")
    ))
    .body(Full::new(Bytes::new()))
    .unwrap();
    let response = client.request(req).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    let req = Request::get(format!(
        "http://{}/authorize?client_id=app&redirect_uri=x",
        proxy.addr
    ))
    .body(Full::new(Bytes::new()))
    .unwrap();
    assert_eq!(
        client.request(req).await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    proxy.shutdown().await;
    legacy.shutdown().await;
}

/// A response body with one data frame and trailers.
struct WithTrailers(Option<Frame<Bytes>>, Option<Frame<Bytes>>);

impl http_body::Body for WithTrailers {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let next = self.0.take().or_else(|| self.1.take());
        std::task::Poll::Ready(next.map(Ok))
    }
}

#[tokio::test]
async fn trailers_defined_for_trailers_pass_through_and_others_go() {
    let up = upstream(|_req: Request<Incoming>| async move {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("content-digest", "sha-256=:abc123=:".parse().unwrap());
        trailers.insert("x-checksum", "abc123".parse().unwrap());
        trailers.insert("set-cookie", "sid=stolen".parse().unwrap());
        trailers.insert("location", "https://evil.example/".parse().unwrap());
        let body = WithTrailers(
            Some(Frame::data(Bytes::from_static(b"payload"))),
            Some(Frame::trailers(trailers)),
        );
        let mut response = Response::new(body.boxed());
        response.headers_mut().insert(
            header::TRAILER,
            "content-digest, x-checksum, set-cookie, location"
                .parse()
                .unwrap(),
        );
        response
    })
    .await;
    let proxy = proxy(settings(&format!("http://{up}"))).await;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::get(format!("http://{}/stream", proxy.addr))
        .header(header::TE, "trailers")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let collected = client
        .request(req)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap();
    let trailers = collected.trailers().unwrap();
    assert_eq!(trailers["content-digest"], "sha-256=:abc123=:");
    assert_eq!(trailers.len(), 1, "{trailers:?}");
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"payload"));
    proxy.shutdown().await;
}

/// An upstream that counts the connections it accepts, and closes each
/// connection after its response when `close` is set.
async fn counting_upstream(close: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| async move {
                    let mut response = Response::new(full("ok"));
                    if close {
                        response
                            .headers_mut()
                            .insert(header::CONNECTION, "close".parse().unwrap());
                    }
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, accepted)
}

/// `n` GET requests in turn on one pooled client connection; each must be
/// answered 200 "ok".
async fn pages(proxy: SocketAddr, n: usize) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    for _ in 0..n {
        let req = Request::get(format!("http://{proxy}/page"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = client.request(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "ok"
        );
    }
}

#[tokio::test]
async fn a_client_connection_keeps_its_upstream_connection() {
    let (up, accepted) = counting_upstream(false).await;
    let proxy = proxy(settings(&format!("http://{up}"))).await;
    pages(proxy.addr, 5).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_upstream_that_closes_its_connections_is_reconnected() {
    let (up, accepted) = counting_upstream(true).await;
    let proxy = proxy(settings(&format!("http://{up}"))).await;
    pages(proxy.addr, 3).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    proxy.shutdown().await;
}
