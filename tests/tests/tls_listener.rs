//! The client listener with TLS (`--tls-cert`, `--tls-key`): whole flows
//! over HTTP/1.1 and HTTP/2, plain text on the TLS port, the handshake
//! bound, the checks of a head that hyper parsed, and the certificate
//! replaced while clients keep their connections.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pkce_proxy::config::{Config, RawSettings};
use pkce_proxy::demo::HttpClient;
use pkce_proxy::demo::legacy::{LegacyServer, encode, parse_form};
use pkce_proxy::server::{Running, start};
use rustls_pki_types::ServerName;
use tests::tls::{Authority, Identity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tower_pkce::{ChallengeMethod, CodeChallenge, CodeVerifier};

/// Every wait in these tests is bounded by this.
const BOUND: Duration = Duration::from_secs(10);

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// The listener's certificate files, in a directory of their own.
struct Files {
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    fn of(identity: &Identity) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = identity.write(dir.path(), "listener");
        Self { dir, cert, key }
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn server(authority: &Authority) -> Identity {
    authority.server(&["127.0.0.1", "localhost"])
}

fn settings(upstream: SocketAddr, files: &Files) -> RawSettings {
    RawSettings {
        upstream: Some(format!("http://{upstream}")),
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        tls_cert: Some(files.cert.display().to_string()),
        tls_key: Some(files.key.display().to_string()),
        ..RawSettings::default()
    }
}

async fn proxy(settings: RawSettings) -> Running {
    start(Config::resolve(&settings).unwrap()).await.unwrap()
}

fn alpn(h2: bool) -> &'static [&'static [u8]] {
    if h2 { &[b"h2"] } else { &[b"http/1.1"] }
}

async fn connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(BOUND, TlsConnector::from(config).connect(name, tcp))
        .await
        .unwrap()
}

/// One client connection over TLS, HTTP/1.1 or HTTP/2 as ALPN chose.
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// A response, read whole.
#[derive(Debug)]
struct Fetched {
    status: StatusCode,
    version: http::Version,
    headers: http::HeaderMap,
    body: String,
}

impl Sender {
    async fn open(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> std::io::Result<Self> {
        let tls = connect(addr, config).await?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        Ok(if h2 {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            Self::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Self::H1(send)
        })
    }

    /// `method path` with an optional form body, to host `localhost`.
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        form: Option<String>,
    ) -> Result<Fetched, String> {
        let builder = match self {
            Self::H1(_) => Request::builder()
                .uri(path)
                .header(header::HOST, "localhost"),
            Self::H2(_) => Request::builder().uri(format!("https://localhost{path}")),
        };
        let mut builder = builder.method(method);
        if form.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        let req = builder
            .body(Full::new(Bytes::from(form.unwrap_or_default())))
            .unwrap();
        let sent = async {
            match self {
                Self::H1(send) => {
                    send.ready().await?;
                    send.send_request(req).await
                }
                Self::H2(send) => {
                    send.ready().await?;
                    send.send_request(req).await
                }
            }
        };
        let response = tokio::time::timeout(BOUND, sent)
            .await
            .map_err(|_| "no response in time".to_owned())?
            .map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(BOUND, body.collect())
            .await
            .map_err(|_| "no body in time".to_owned())?
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Fetched {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// An upstream that notes each request's `X-Forwarded-Proto` and passes
/// the request on to `to`, or answers 200 itself without one.
async fn spy(to: Option<SocketAddr>) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let noted = seen.clone();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (noted, client) = (noted.clone(), client.clone());
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (noted, client) = (noted.clone(), client.clone());
                async move {
                    let proto = req
                        .headers()
                        .get("x-forwarded-proto")
                        .map_or("(none)", |v| v.to_str().unwrap_or("(not text)"))
                        .to_owned();
                    noted.lock().unwrap().push(proto);
                    let Some(to) = to else {
                        return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))));
                    };
                    let (mut parts, body) = req.into_parts();
                    let body = body.collect().await.unwrap().to_bytes();
                    let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
                    parts.uri = format!("http://{to}{pq}").parse().unwrap();
                    let response = client
                        .request(Request::from_parts(parts, Full::new(body)))
                        .await
                        .unwrap();
                    let (parts, body) = response.into_parts();
                    let body = body.collect().await.unwrap().to_bytes();
                    Ok(Response::from_parts(parts, Full::new(body)))
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn hidden(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(html[start..end].to_owned())
}

/// A whole flow on one connection: authorize, log in, then a wrong
/// verifier refused before the upstream and the right one accepted.
async fn walk_flow(sender: &mut Sender, legacy: &LegacyServer) {
    let verifier = CodeVerifier::generate();
    let challenge = CodeChallenge::from_verifier(&verifier, ChallengeMethod::S256);
    let query = format!(
        "response_type=code&client_id=app&redirect_uri={}&state=s1&code_challenge={}&code_challenge_method=S256",
        encode("https://client.example/cb"),
        challenge.as_str()
    );
    let page = sender
        .send(Method::GET, &format!("/authorize?{query}"), None)
        .await
        .unwrap();
    assert_eq!(page.status, StatusCode::OK, "{page:?}");
    let txn = hidden(&page.body, "txn").unwrap();
    let login = sender
        .send(
            Method::POST,
            "/login",
            Some(format!("txn={}&username=alice", encode(&txn))),
        )
        .await
        .unwrap();
    let location = login.headers[header::LOCATION].to_str().unwrap();
    let params = parse_form(location.split_once('?').unwrap().1);
    let get = |n: &str| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let code = get("code").unwrap();
    assert_eq!(get("state").as_deref(), Some("s1"));
    let token = |v: &str| {
        format!(
            "grant_type=authorization_code&code={}&client_id=app&redirect_uri={}&code_verifier={v}",
            encode(&code),
            encode("https://client.example/cb")
        )
    };
    let before = legacy.counters.token.load(Ordering::SeqCst);
    let wrong = sender
        .send(
            Method::POST,
            "/token",
            Some(token(CodeVerifier::generate().secret())),
        )
        .await
        .unwrap();
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST, "{wrong:?}");
    assert!(wrong.body.contains("invalid_grant"), "{wrong:?}");
    assert_eq!(legacy.counters.token.load(Ordering::SeqCst), before);
    let ok = sender
        .send(Method::POST, "/token", Some(token(verifier.secret())))
        .await
        .unwrap();
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
    assert!(ok.body.contains("access_token"), "{ok:?}");
    assert_eq!(legacy.counters.token.load(Ordering::SeqCst), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_flows_over_http1_and_h2_with_x_forwarded_proto_https() {
    let legacy = LegacyServer::start(loopback()).await.unwrap();
    let (up, seen) = spy(Some(legacy.addr)).await;
    let authority = Authority::new("flows");
    let files = Files::of(&server(&authority));
    let proxy = proxy(settings(up, &files)).await;
    for (h2, version) in [
        (false, http::Version::HTTP_11),
        (true, http::Version::HTTP_2),
    ] {
        seen.lock().unwrap().clear();
        let mut sender = Sender::open(proxy.addr, authority.client_config(alpn(h2), None))
            .await
            .unwrap();
        let probe = sender.send(Method::GET, "/", None).await.unwrap();
        assert_eq!(probe.version, version);
        walk_flow(&mut sender, &legacy).await;
        let seen = seen.lock().unwrap().clone();
        // The probe, authorize, login, and the right token request: the
        // wrong one never reached the upstream.
        assert_eq!(seen, ["https"; 4], "h2: {h2}");
    }
    // No ALPN at all: HTTP/1.1.
    let mut sender = Sender::open(proxy.addr, authority.client_config(&[], None))
        .await
        .unwrap();
    let fetched = sender.send(Method::GET, "/", None).await.unwrap();
    assert_eq!(fetched.version, http::Version::HTTP_11);
    proxy.shutdown().await;
    legacy.shutdown().await;
}

/// Everything the peer sends until it closes, within the bound. A TLS
/// connection may end without close_notify: hyper drops the connection of
/// a refused CONNECT without shutting it down. The answer is framed by its
/// length all the same.
async fn read_to_end(stream: &mut (impl AsyncReadExt + Unpin)) -> String {
    let mut out = Vec::new();
    let read = tokio::time::timeout(BOUND, stream.read_to_end(&mut out))
        .await
        .expect("the connection was not closed in time");
    match read {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => panic!("{e} after {:?}", String::from_utf8_lossy(&out)),
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn plain_http_on_the_tls_port_gets_400_at_once() {
    let (up, seen) = spy(None).await;
    let files = Files::of(&server(&Authority::new("plain")));
    let proxy = proxy(settings(up, &files)).await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(b"GET /authorize HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_end(&mut tcp).await;
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nthis port speaks TLS: use https://\n"));
    assert!(seen.lock().unwrap().is_empty());
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_handshake_not_done_within_the_head_timeout_is_closed() {
    let (up, _) = spy(None).await;
    let files = Files::of(&server(&Authority::new("slow")));
    let mut settings = settings(up, &files);
    settings.head_timeout = Some("0.3".into());
    let proxy = proxy(settings).await;
    // Nothing sent, then the first byte of a handshake record only.
    for sent in [&b""[..], &[0x16]] {
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        tcp.write_all(sent).await.unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(read_to_end(&mut tcp).await, "");
        assert!(started.elapsed() >= Duration::from_millis(200), "{sent:?}");
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn heads_that_hyper_parsed_are_held_to_the_same_checks() {
    let (up, seen) = spy(None).await;
    let authority = Authority::new("checks");
    let files = Files::of(&server(&authority));
    let proxy = proxy(settings(up, &files)).await;
    let config = authority.client_config(alpn(false), None);
    for (head, why) in [
        (
            "GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "exactly one Host",
        ),
        ("GET /x HTTP/1.1\r\n\r\n", "exactly one Host"),
        ("GET /x HTTP/1.1\r\nHost: a b\r\n\r\n", "host"),
        ("GET /a%00b HTTP/1.1\r\nHost: a\r\n\r\n", "control"),
        (
            "GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
            "must not have a body",
        ),
        (
            "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            "chunked",
        ),
        (
            "GET http://b/x HTTP/1.1\r\nHost: a\r\n\r\n",
            "different hosts",
        ),
        ("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", "CONNECT"),
        (
            "GET /x HTTP/1.1\r\nHost: a\r\nConnection: authorization\r\n\r\n",
            "Connection header",
        ),
    ] {
        let mut tls = connect(proxy.addr, config.clone()).await.unwrap();
        tls.write_all(head.as_bytes()).await.unwrap();
        let answer = read_to_end(&mut tls).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{head:?}: {answer}");
        assert!(
            answer.to_lowercase().contains(&why.to_lowercase()),
            "{head:?}: {answer}"
        );
    }
    assert!(seen.lock().unwrap().is_empty(), "a refused request went on");
    // Too many fields: 431 from hyper.
    let mut tls = connect(proxy.addr, config.clone()).await.unwrap();
    let mut head = String::from("GET /x HTTP/1.1\r\nHost: a\r\n");
    for i in 0..101 {
        head.push_str(&format!("x-{i}: y\r\n"));
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes()).await.unwrap();
    let answer = read_to_end(&mut tls).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    proxy.shutdown().await;
}

/// The `pkce_proxy_tls_reloads_total` counts, ok then failed.
async fn reloads(proxy: &Running) -> (u64, u64) {
    let metrics = HttpClient::default()
        .send(
            Method::GET,
            &format!("http://{}/metrics", proxy.admin_addr),
            None,
        )
        .await
        .unwrap()
        .body;
    let count = |result: &str| {
        let line = format!("pkce_proxy_tls_reloads_total{{result=\"{result}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap_or_else(|| panic!("{line} in {metrics}"))
            .parse::<u64>()
            .unwrap()
    };
    (count("ok"), count("failed"))
}

/// Whether a new connection trusting only `authority` gets through its
/// handshake, and a request answered.
async fn trusted_by(proxy: &Running, authority: &Authority) -> bool {
    match Sender::open(proxy.addr, authority.client_config(alpn(false), None)).await {
        Ok(mut sender) => {
            let fetched = sender.send(Method::GET, "/", None).await.unwrap();
            assert_eq!(fetched.status, StatusCode::OK);
            true
        }
        Err(_) => false,
    }
}

/// Waits, within the bound, until `counter` reaches `n`.
async fn until(counter: &AtomicUsize, n: usize) {
    tokio::time::timeout(BOUND, async {
        while counter.load(Ordering::SeqCst) < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("stuck at {} of {n}", counter.load(Ordering::SeqCst)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_is_replaced_under_load_and_no_connection_drops() {
    let (up, _) = spy(None).await;
    let (old, new) = (Authority::new("old"), Authority::new("new"));
    let files = Files::of(&server(&old));
    let proxy = proxy(settings(up, &files)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut counts = Vec::new();
    let mut clients = Vec::new();
    for i in 0..4 {
        let mut sender = Sender::open(proxy.addr, old.client_config(alpn(i % 2 == 1), None))
            .await
            .unwrap();
        let (stop, count) = (stop.clone(), Arc::new(AtomicUsize::new(0)));
        counts.push(count.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let fetched = sender.send(Method::GET, "/x", None).await?;
                if fetched.status != StatusCode::OK {
                    return Err(format!("{fetched:?}"));
                }
                count.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        }));
    }
    for count in &counts {
        until(count, 3).await;
    }
    server(&new).write(files.dir(), "listener");
    proxy.reload_tls().await;
    assert!(
        trusted_by(&proxy, &new).await,
        "the new certificate is served"
    );
    assert!(!trusted_by(&proxy, &old).await, "the old one is not");
    // The connections made before go on.
    for count in &counts {
        let now = count.load(Ordering::SeqCst);
        until(count, now + 3).await;
    }
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        tokio::time::timeout(BOUND, client)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
    let (ok, _) = reloads(&proxy).await;
    assert!(ok >= 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_half_written_pair_keeps_the_old_certificate_until_it_is_whole() {
    let (up, _) = spy(None).await;
    let (old, new) = (Authority::new("old"), Authority::new("new"));
    let files = Files::of(&server(&old));
    let proxy = proxy(settings(up, &files)).await;
    assert_eq!(reloads(&proxy).await, (0, 0));
    let next = server(&new);
    // The certificate is written, its key not yet.
    std::fs::write(&files.cert, &next.cert_pem).unwrap();
    proxy.reload_tls().await;
    assert!(trusted_by(&proxy, &old).await);
    assert!(!trusted_by(&proxy, &new).await);
    assert_eq!(reloads(&proxy).await, (0, 1));
    // Counted once, not at every check.
    proxy.reload_tls().await;
    assert_eq!(reloads(&proxy).await, (0, 1));
    // A key that is not PEM yet.
    std::fs::write(&files.key, "-----BEGIN PRIVATE KEY-----\nMIIB").unwrap();
    proxy.reload_tls().await;
    assert!(trusted_by(&proxy, &old).await);
    assert_eq!(reloads(&proxy).await, (0, 2));
    std::fs::write(&files.key, &next.key_pem).unwrap();
    proxy.reload_tls().await;
    assert!(trusted_by(&proxy, &new).await);
    assert!(!trusted_by(&proxy, &old).await);
    assert_eq!(reloads(&proxy).await, (1, 2));
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_admin_listener_stays_plain() {
    let (up, _) = spy(None).await;
    let files = Files::of(&server(&Authority::new("admin")));
    let proxy = proxy(settings(up, &files)).await;
    let health = HttpClient::default()
        .send(
            Method::GET,
            &format!("http://{}/healthz", proxy.admin_addr),
            None,
        )
        .await
        .unwrap();
    assert_eq!(health.status, StatusCode::OK);
    proxy.shutdown().await;
}

/// An upstream that answers "finished" after `delay`.
async fn slow(delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service = hyper::service::service_fn(move |_: Request<Incoming>| async move {
                tokio::time::sleep(delay).await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("finished"))))
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_requests_in_flight_and_closes_idle_connections() {
    let up = slow(Duration::from_millis(600)).await;
    let authority = Authority::new("drain");
    let files = Files::of(&server(&authority));
    let proxy = proxy(settings(up, &files)).await;
    let mut in_flight = Vec::new();
    for h2 in [false, true] {
        let mut sender = Sender::open(proxy.addr, authority.client_config(alpn(h2), None))
            .await
            .unwrap();
        in_flight.push(tokio::spawn(async move {
            sender.send(Method::GET, "/slow", None).await
        }));
    }
    let idle = connect(proxy.addr, authority.client_config(alpn(false), None))
        .await
        .unwrap();
    let (_send, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(idle))
        .await
        .unwrap();
    let idle = tokio::spawn(conn);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = tokio::time::Instant::now();
    tokio::time::timeout(BOUND, proxy.shutdown()).await.unwrap();
    // Well within the drain timeout (10 s): nothing was left to cut.
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(started.elapsed() >= Duration::from_millis(250));
    for answer in in_flight {
        let answer = answer.await.unwrap().unwrap();
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (StatusCode::OK, "finished")
        );
    }
    // hyper's client takes a close before its first request for a message
    // cut short.
    let closed = tokio::time::timeout(BOUND, idle)
        .await
        .expect("the idle connection was closed")
        .unwrap();
    assert!(
        closed
            .as_ref()
            .map_or_else(hyper::Error::is_incomplete_message, |()| true),
        "{closed:?}"
    );
}

#[tokio::test]
async fn an_idle_or_stalled_http1_connection_closes_after_the_head_timeout() {
    let (up, _) = spy(None).await;
    let authority = Authority::new("idle");
    let files = Files::of(&server(&authority));
    let mut settings = settings(up, &files);
    settings.head_timeout = Some("0.3".into());
    let proxy = proxy(settings).await;
    let tls = connect(proxy.addr, authority.client_config(alpn(false), None))
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tls))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get("/x")
        .header(header::HOST, "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(BOUND, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    drop(response.into_body().collect().await.unwrap());
    let idle_since = tokio::time::Instant::now();
    tokio::time::timeout(BOUND, conn)
        .await
        .expect("the idle connection was closed")
        .unwrap()
        .unwrap();
    assert!(idle_since.elapsed() >= Duration::from_millis(200));
    // Half a head, then nothing: closed soon after the head timeout too.
    let mut tls = connect(proxy.addr, authority.client_config(alpn(false), None))
        .await
        .unwrap();
    tls.write_all(b"GET /x HTTP/1.1\r\nHo").await.unwrap();
    let started = tokio::time::Instant::now();
    assert_eq!(read_to_end(&mut tls).await, "");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    proxy.shutdown().await;
}

/// An upstream page the layer reads (HTML, where a code may be) that the
/// upstream cuts off mid-body: over HTTP/1.1 on TLS, the client must not
/// get it framed as whole (a `Content-Length` of what came, then a
/// connection kept alive), which would make a partial page look complete.
#[tokio::test]
async fn a_page_the_upstream_cuts_off_is_not_delivered_as_whole() {
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\n\
                          transfer-encoding: chunked\r\n\r\n1a\r\n<html><body>partial page\n\r\n",
                    )
                    .await;
                // Closed without the last chunk.
            });
        }
    });
    let authority = Authority::new("cut");
    let files = Files::of(&server(&authority));
    let proxy = proxy(settings(up, &files)).await;
    let mut tls = connect(proxy.addr, authority.client_config(alpn(false), None))
        .await
        .unwrap();
    tls.write_all(b"GET /page HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let ended = tokio::time::timeout(BOUND, async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection stayed open after a cut body");
    let answer = String::from_utf8_lossy(&out).to_ascii_lowercase();
    let complete = answer.contains("content-length: 26\r\n") || answer.ends_with("\r\n0\r\n\r\n");
    assert!(!complete, "a cut page went out framed as whole: {answer}");
    proxy.shutdown().await;
}
