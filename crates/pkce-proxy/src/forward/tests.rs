//! The forwarder end to end: through the PKCE layer, to upstreams on real
//! sockets, plain and TLS.

#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tokio::net::TcpStream;
use tower_pkce::{Endpoint, ForwardProgress, RequestBody};
use tower_service::Service;

use super::{ClientBody, ClientScheme, Forwarder, ProxyBody, ResponseFuture};
use crate::config::Config;
use crate::metrics::Metrics;

/// The service behind the layer in these tests: it hands the request on
/// to the forwarder with a progress report in it, as the layer does for
/// a token request whose code it redeemed, after checking that the
/// layer told the forwarder the endpoint the test expects.
#[derive(Clone)]
struct Reported {
    forwarder: Forwarder,
    progress: ForwardProgress,
    endpoint: Endpoint,
}

impl Service<Request<RequestBody<ClientBody>>> for Reported {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<RequestBody<ClientBody>>) -> ResponseFuture {
        req.extensions_mut().insert(self.progress.clone());
        assert_eq!(req.extensions().get::<Endpoint>(), Some(&self.endpoint));
        self.forwarder.call(req)
    }
}

type Harness = tower_pkce::Pkce<Reported, tower_pkce::store::MemoryStore>;

/// The PKCE layer in front of a forwarder to `upstream` (0.3 s response
/// timeout), through a TLS front (see `tls_front`) when `tls`.
fn harness(upstream: &str, tls: bool) -> Harness {
    harness_with(
        crate::config::RawSettings {
            upstream: Some(upstream.to_owned()),
            response_timeout: Some("0.3".into()),
            ..Default::default()
        },
        tls,
    )
}

fn harness_with(settings: crate::config::RawSettings, tls: bool) -> Harness {
    clients(settings, tls).pop().unwrap()
}

/// Harnesses for two client connections of one forwarder.
fn clients(mut settings: crate::config::RawSettings, tls: bool) -> Vec<Harness> {
    use tower::Layer;
    if tls {
        let upstream = settings.upstream.take().unwrap();
        settings.upstream = Some(match upstream.strip_prefix("http://") {
            Some(plain) => tls_front(plain, &test_pki().server),
            None => upstream,
        });
        settings.upstream_ca = Some(test_pki().ca.display().to_string());
    }
    let config = Config::resolve(&settings).unwrap();
    let metrics = Arc::new(Metrics::new().unwrap());
    let base = Forwarder::new(&config, metrics).unwrap();
    (1..=2)
        .map(|port| {
            tower_pkce::PkceLayer::strict().layer(Reported {
                forwarder: base.for_connection(
                    ([127, 0, 0, 1], port).into(),
                    true,
                    ClientScheme::Http,
                ),
                progress: ForwardProgress::default(),
                endpoint: Endpoint::Other,
            })
        })
        .collect()
}

/// Sends `req` through `harness` as a request for `endpoint`, with a
/// fresh progress report: the answer's status and body, and the report.
async fn send(
    harness: &mut Harness,
    endpoint: Endpoint,
    req: Request<ClientBody>,
) -> (StatusCode, Bytes, tower_pkce::Progress) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let progress = ForwardProgress::default();
    harness.get_mut().progress = progress.clone();
    harness.get_mut().endpoint = endpoint;
    let sent = harness.clone().oneshot(req);
    let response = tokio::time::timeout(Duration::from_secs(5), sent)
        .await
        .unwrap()
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, body, progress.get())
}

fn get(path: &str) -> Request<ClientBody> {
    Request::get(path)
        .header(header::HOST, "proxy.test")
        .body(ClientBody::empty())
        .unwrap()
}

fn post(path: &str, data: &'static [u8]) -> Request<ClientBody> {
    Request::post(path)
        .header(header::HOST, "proxy.test")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::CONTENT_LENGTH, data.len())
        .body(ClientBody::full(Bytes::from_static(data)))
        .unwrap()
}

/// Forwards `GET /page` to `upstream` with a report in it: the status
/// answered, and the progress reported.
async fn forward_reported(upstream: &str, tls: bool) -> (StatusCode, tower_pkce::Progress) {
    let mut harness = harness(upstream, tls);
    let (status, _, progress) = send(&mut harness, Endpoint::Other, get("/page")).await;
    (status, progress)
}

/// An upstream that reads a request head, then does `then` with the
/// connection.
async fn upstream<F, Fut>(then: F) -> String
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.ends_with(b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            tokio::spawn(then(stream));
        }
    });
    format!("http://{addr}")
}

/// A private authority, written to a file, and a server configuration
/// with a certificate it issued for 127.0.0.1.
struct TestPki {
    ca: std::path::PathBuf,
    server: Arc<rustls::ServerConfig>,
    /// A certificate for 127.0.0.1 from an authority nobody trusts.
    stranger: Arc<rustls::ServerConfig>,
}

fn test_pki() -> &'static TestPki {
    static PKI: std::sync::OnceLock<TestPki> = std::sync::OnceLock::new();
    PKI.get_or_init(|| {
        let (ca, server) = authority_and_server();
        let (_, stranger) = authority_and_server();
        let path = std::env::temp_dir().join(format!(
            "pkce-proxy-forward-test-ca-{}.pem",
            std::process::id()
        ));
        std::fs::write(&path, ca).unwrap();
        TestPki {
            ca: path,
            server,
            stranger,
        }
    })
}

/// An authority's certificate (PEM), and a server configuration with a
/// certificate it issued for 127.0.0.1.
fn authority_and_server() -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(params, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    (ca.pem(), Arc::new(server))
}

/// A TLS front for the plain-HTTP upstream at `plain` (host:port): it
/// takes TLS with `config` and relays the bytes both ways, one
/// connection to the upstream per connection it takes, so that the
/// upstream sees the proxy's requests, and the proxy the upstream's
/// answers and closes, as they were. Its `https://` URL.
fn tls_front(plain: &str, config: &Arc<rustls::ServerConfig>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
    let plain = plain.to_owned();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, plain) = (acceptor.clone(), plain.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let Ok(mut upstream) = TcpStream::connect(plain.as_str()).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    format!("https://{addr}")
}

fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn progress_is_reported_as_far_as_the_request_got() {
    use tokio::io::AsyncWriteExt;
    use tower_pkce::Progress;

    for tls in [false, true] {
        let scheme = if tls { "https" } else { "http" };
        let refused = format!("{scheme}://127.0.0.1:{}", closed_port());
        assert_eq!(
            forward_reported(&refused, tls).await,
            (StatusCode::BAD_GATEWAY, Progress::NotSent),
            "connect refused, tls: {tls}"
        );
        let silent = upstream(|stream| async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            drop(stream);
        })
        .await;
        assert_eq!(
            forward_reported(&silent, tls).await,
            (StatusCode::GATEWAY_TIMEOUT, Progress::Unanswered),
            "read, never answered, tls: {tls}"
        );
        let closing = upstream(|stream| async move { drop(stream) }).await;
        assert_eq!(
            forward_reported(&closing, tls).await,
            (StatusCode::BAD_GATEWAY, Progress::Unanswered),
            "read, closed unanswered, tls: {tls}"
        );
        let answering = upstream(|mut stream| async move {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        })
        .await;
        assert_eq!(
            forward_reported(&answering, tls).await,
            (StatusCode::OK, Progress::Sent),
            "answered, tls: {tls}"
        );
    }
    let answering = upstream(|mut stream| async move {
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await;
    })
    .await;
    let stranger = tls_front(&answering["http://".len()..], &test_pki().stranger);
    assert_eq!(
        forward_reported(&stranger, true).await,
        (StatusCode::BAD_GATEWAY, Progress::NotSent),
        "a certificate the authority did not issue"
    );
}

/// Plain and TLS alike, a second request waits for the client
/// connection's share, or for the one upstream connection allowed, and
/// gets 503 when none comes free, reported never sent.
#[tokio::test]
async fn plain_and_tls_keep_to_the_upstream_bounds() {
    use tokio::io::AsyncWriteExt;
    use tower_pkce::Progress;

    let slow = upstream(|mut stream| async move {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    })
    .await;
    for (bound, value, tls) in [
        (
            "per client",
            ("max_upstream_connections_per_client", "1"),
            false,
        ),
        ("in all", ("max_upstream_connections", "1"), false),
        (
            "per client",
            ("max_upstream_connections_per_client", "1"),
            true,
        ),
        ("in all", ("max_upstream_connections", "1"), true),
    ] {
        let mut settings = crate::config::RawSettings {
            upstream: Some(slow.clone()),
            connect_timeout: Some("0.2".into()),
            ..Default::default()
        };
        match value.0 {
            "max_upstream_connections" => settings.max_upstream_connections = Some(value.1.into()),
            _ => settings.max_upstream_connections_per_client = Some(value.1.into()),
        }
        // Per client: both requests on one client connection; in all,
        // one on each of two.
        let mut harnesses = clients(settings, tls);
        let mut second = harnesses.pop().unwrap();
        let mut first = match bound {
            "per client" => second.clone(),
            _ => harnesses.pop().unwrap(),
        };
        let first =
            tokio::spawn(async move { send(&mut first, Endpoint::Other, get("/first")).await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (status, _, progress) = send(&mut second, Endpoint::Other, get("/second")).await;
        assert_eq!(
            (status, progress),
            (StatusCode::SERVICE_UNAVAILABLE, Progress::NotSent),
            "{bound}, tls: {tls}"
        );
        let (status, body, _) = first.await.unwrap();
        assert_eq!(
            (status, &body[..]),
            (StatusCode::OK, &b"ok"[..]),
            "{bound}, tls: {tls}"
        );
    }
}

/// A request that waits for the one upstream connection allowed is
/// reported sent only once it has it, and goes on the connection the
/// first request gives back (another client connection's), on both
/// transports.
#[tokio::test]
async fn a_request_that_waited_is_sent_on_the_connection_that_came_free() {
    use tower_pkce::Progress;

    let (up, seen) = recording_after(Duration::from_millis(400)).await;
    for tls in [false, true] {
        let mut harnesses = clients(
            crate::config::RawSettings {
                upstream: Some(up.clone()),
                max_upstream_connections: Some("1".into()),
                connect_timeout: Some("5".into()),
                ..Default::default()
            },
            tls,
        );
        let mut second = harnesses.pop().unwrap();
        let mut first = harnesses.pop().unwrap();
        let first =
            tokio::spawn(async move { send(&mut first, Endpoint::Other, get("/first")).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, _, progress) = send(&mut second, Endpoint::Other, get("/second")).await;
        assert_eq!(
            (status, progress),
            (StatusCode::OK, Progress::Sent),
            "{tls}"
        );
        let (status, _, progress) = first.await.unwrap();
        assert_eq!(
            (status, progress),
            (StatusCode::OK, Progress::Sent),
            "{tls}"
        );
    }
    // One connection for each transport.
    assert_eq!(seen.lock().unwrap().0, 2);
}

/// [`recording`], answering after `delay`.
async fn recording_after(delay: Duration) -> (String, Arc<Mutex<(usize, Vec<(String, bool)>)>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new((0, Vec::new())));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            record.lock().unwrap().0 += 1;
            let service =
                hyper::service::service_fn(move |_: Request<hyper::body::Incoming>| async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (format!("http://{addr}"), seen)
}

/// An upstream (hyper's server) that answers "ok" after reading each
/// body; records how many connections it accepted and, for each request,
/// its path and whether it asked to close the connection.
async fn recording() -> (String, Arc<Mutex<(usize, Vec<(String, bool)>)>>) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new((0, Vec::new())));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            record.lock().unwrap().0 += 1;
            let record = record.clone();
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let record = record.clone();
                async move {
                    let close = req
                        .headers()
                        .get(header::CONNECTION)
                        .is_some_and(|v| v == "close");
                    let path = req.uri().path().to_owned();
                    let _ = req.into_body().collect().await;
                    record.lock().unwrap().1.push((path, close));
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (format!("http://{addr}"), seen)
}

/// An absolute target without a path reaches the upstream with the
/// path `/`, not as `GET ?x=1`, which no server can read.
#[tokio::test]
async fn an_absolute_target_without_a_path_goes_upstream_with_slash() {
    let (up, seen) = recording().await;
    let mut harness = harness(&up, false);
    for target in ["http://proxy.test?x=1", "http://proxy.test", "/p?q=1"] {
        let (status, _, _) = send(&mut harness, Endpoint::Other, get(target)).await;
        assert_eq!(status, StatusCode::OK, "{target}");
    }
    let paths: Vec<String> = seen
        .lock()
        .unwrap()
        .1
        .iter()
        .map(|(p, _)| p.clone())
        .collect();
    assert_eq!(paths, ["/", "/", "/p"]);
}

#[tokio::test]
async fn a_body_retires_the_connection_plain_or_tls() {
    for tls in [false, true] {
        let (up, seen) = recording().await;
        let mut harness = harness(&up, tls);
        let requests = [
            (Endpoint::Other, post("/upload", b"data")),
            (Endpoint::Other, get("/next")),
            (Endpoint::Other, get("/again")),
            (
                Endpoint::Token,
                post("/token", b"grant_type=refresh_token&refresh_token=r1"),
            ),
            (Endpoint::Other, get("/after-token")),
            // A raw space reaches the upstream percent-encoded (the
            // layer makes a checked body inert): the connection stays.
            (
                Endpoint::Token,
                post("/token", b"grant_type=refresh_token&refresh_token=r 2"),
            ),
            (Endpoint::Other, get("/last")),
        ];
        for (endpoint, req) in requests {
            let (status, body, _) = send(&mut harness, endpoint, req).await;
            assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]), "{tls}");
        }
        let (connections, requests) = std::mem::take(&mut *seen.lock().unwrap());
        let closed: Vec<(&str, bool)> = requests.iter().map(|(p, c)| (p.as_str(), *c)).collect();
        // A checked token body keeps its connection after a 2xx.
        let token = false;
        assert_eq!(
            closed,
            [
                ("/upload", true),
                ("/next", false),
                ("/again", false),
                ("/token", token),
                ("/after-token", false),
                ("/token", token),
                ("/last", false),
            ],
            "tls: {tls}"
        );
        assert_eq!(connections, 2, "tls: {tls}");
    }
}

/// Serves client connections with the proxy's HTTP/1.1 engine, each
/// request through `harness`.
async fn client_side(harness: Harness) -> SocketAddr {
    use tower::ServiceExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Arc::new(crate::h1::server::Shutdown::default());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let harness = harness.clone();
            let handler = move |req: Request<ClientBody>| {
                let harness = harness.clone();
                async move { harness.oneshot(req).await.unwrap() }
            };
            tokio::spawn(crate::h1::server::serve_connection(
                stream,
                handler,
                shutdown.enter(),
                crate::h1::server::Settings::for_tests(Duration::from_secs(5)),
            ));
        }
    });
    addr
}

#[tokio::test]
async fn a_malformed_request_body_gets_400_on_both_transports() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for tls in [false, true] {
        let (up, seen) = recording().await;
        let addr = client_side(harness(&up, tls)).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n3;a\rb\r\nabc\r\n0\r\n\r\n")
            .await
            .unwrap();
        let mut got = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert!(
            got.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "tls: {tls}: {got}"
        );
        assert!(
            got.ends_with("\r\n\r\nthe request body is malformed or was cut short\n"),
            "tls: {tls}: {got}"
        );
        // The upstream never saw the request whole.
        assert!(seen.lock().unwrap().1.is_empty(), "tls: {tls}");
    }
}

#[tokio::test]
async fn a_length_past_the_signed_range_is_an_invalid_response_on_both_transports() {
    use tokio::io::AsyncWriteExt;
    for tls in [false, true] {
        for length in ["9223372036854775808", "18446744073709551613", "2, 2"] {
            let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {length}\r\n\r\nok");
            let up = upstream(move |mut stream| {
                let answer = answer.clone();
                async move {
                    let _ = stream.write_all(answer.as_bytes()).await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            })
            .await;
            let mut harness = harness(&up, tls);
            let (status, body, _) = send(&mut harness, Endpoint::Other, get("/big")).await;
            assert_eq!(status, StatusCode::BAD_GATEWAY, "{length}, tls: {tls}");
            assert_eq!(
                &body[..],
                b"502 Bad Gateway: the upstream server sent an invalid response\n",
                "{length}, tls: {tls}"
            );
        }
    }
}

#[tokio::test]
async fn request_trailers_are_dropped_on_both_transports() {
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream (hyper's server) that answers with the trailers it read.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service =
                hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let collected = req.into_body().collect().await.unwrap();
                    let trailers = format!("{:?}", collected.trailers());
                    let body = format!(
                        "{}|{trailers}",
                        String::from_utf8_lossy(&collected.to_bytes())
                    );
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    for tls in [false, true] {
        let addr = client_side(harness(&up, tls)).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntrailer: x-digest, host, authorization\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n0\r\nx-digest: d1\r\nhost: evil.example\r\nauthorization: Basic YTpi\r\n\r\n")
            .await
            .unwrap();
        let mut got = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "tls: {tls}: {got}");
        assert!(got.ends_with("\r\n\r\nhello|None"), "tls: {tls}: {got}");
    }
}
