//! An HTTPS upstream: a private authority, mutual TLS, the name its
//! certificate carries, and the refusals. The upstream is the example
//! legacy server behind a TLS front made here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{Method, StatusCode};
use pkce_proxy::config::{Config, RawSettings};
use pkce_proxy::demo::HttpClient;
use pkce_proxy::demo::legacy::{LegacyServer, encode, parse_form};
use pkce_proxy::server::{Running, start};
use tests::tls::{Authority, Identity};
use tokio::net::{TcpListener, TcpStream};
use tower_pkce::{ChallengeMethod, CodeChallenge, CodeVerifier};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS front for `plain`, presenting `identity`, and asking for a client
/// certificate from `clients` when given. Its port.
async fn tls_front(plain: SocketAddr, identity: &Identity, clients: Option<&Authority>) -> u16 {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match clients {
        Some(authority) => {
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(
                Identity {
                    cert_pem: authority.pem().to_owned(),
                    key_pem: String::new(),
                }
                .chain(),
            );
            assert_eq!(added, 1);
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots.into(),
                provider(),
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(identity.chain(), identity.key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let Ok(mut upstream) = TcpStream::connect(plain).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    port
}

fn settings(upstream: String, extra: &[(&str, &Path)]) -> RawSettings {
    let mut settings = RawSettings {
        upstream: Some(upstream),
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        ..RawSettings::default()
    };
    for (name, value) in extra {
        let value = Some(value.display().to_string());
        match *name {
            "ca" => settings.upstream_ca = value,
            "cert" => settings.upstream_client_cert = value,
            "key" => settings.upstream_client_key = value,
            other => panic!("{other}"),
        }
    }
    settings
}

async fn proxy(settings: RawSettings) -> Running {
    start(Config::resolve(&settings).unwrap()).await.unwrap()
}

fn hidden(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(html[start..end].to_owned())
}

/// Walks a whole flow through the proxy at `proxy` (login page, code,
/// token request with the verifier); the token answer's status. The first
/// answer that is not what the flow expects ends the walk with its status.
async fn flow(proxy: SocketAddr) -> StatusCode {
    let client = HttpClient::default();
    let base = format!("http://{proxy}");
    let verifier = CodeVerifier::generate();
    let challenge = CodeChallenge::from_verifier(&verifier, ChallengeMethod::S256);
    let redirect = encode("https://client.example/cb");
    let page = client
        .send(
            Method::GET,
            &format!(
                "{base}/authorize?response_type=code&client_id=app&redirect_uri={redirect}\
                 &state=s1&code_challenge={}&code_challenge_method=S256",
                challenge.as_str()
            ),
            None,
        )
        .await
        .unwrap();
    let Some(txn) = hidden(&page.body, "txn") else {
        return page.status;
    };
    let login = client
        .send(
            Method::POST,
            &format!("{base}/login"),
            Some(format!("txn={}&username=alice", encode(&txn))),
        )
        .await
        .unwrap();
    let Some(location) = login.location() else {
        return login.status;
    };
    let params = parse_form(location.split_once('?').unwrap().1);
    let code = &params.iter().find(|(k, _)| k == "code").unwrap().1;
    let token = |verifier: &str| {
        format!(
            "grant_type=authorization_code&code={}&client_id=app&redirect_uri={redirect}&code_verifier={verifier}",
            encode(code)
        )
    };
    let wrong = client
        .send(
            Method::POST,
            &format!("{base}/token"),
            Some(token(CodeVerifier::generate().secret())),
        )
        .await
        .unwrap();
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST, "{}", wrong.body);
    let ok = client
        .send(
            Method::POST,
            &format!("{base}/token"),
            Some(token(verifier.secret())),
        )
        .await
        .unwrap();
    ok.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_flow_reaches_an_upstream_with_a_private_authority() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new("private upstream authority");
    let ca = tests::tls::write(dir.path(), "ca.pem", authority.pem());
    let legacy = LegacyServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let port = tls_front(legacy.addr, &authority.server(&["127.0.0.1"]), None).await;
    let proxy = proxy(settings(
        format!("https://127.0.0.1:{port}"),
        &[("ca", &ca)],
    ))
    .await;
    assert_eq!(flow(proxy.addr).await, StatusCode::OK);
    assert_eq!(legacy.counters.token.load(Ordering::SeqCst), 1);
    proxy.shutdown().await;

    // The same upstream, its certificate checked against the system's
    // authorities instead, which never issued it. (A system with none
    // refuses the setting at start.)
    match Config::resolve(&settings(format!("https://127.0.0.1:{port}"), &[])) {
        Ok(config) => {
            let proxy = start(config).await.unwrap();
            assert_eq!(flow(proxy.addr).await, StatusCode::BAD_GATEWAY);
            proxy.shutdown().await;
        }
        Err(e) => assert_eq!(e.setting, "--upstream-ca", "{e}"),
    }
    assert_eq!(legacy.counters.token.load(Ordering::SeqCst), 1);
    legacy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_certificate_the_authority_did_not_sign_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = Authority::new("trusted");
    let other = Authority::new("someone else");
    let ca = tests::tls::write(dir.path(), "ca.pem", trusted.pem());
    let legacy = LegacyServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let port = tls_front(legacy.addr, &other.server(&["127.0.0.1"]), None).await;
    let proxy = proxy(settings(
        format!("https://127.0.0.1:{port}"),
        &[("ca", &ca)],
    ))
    .await;
    assert_eq!(flow(proxy.addr).await, StatusCode::BAD_GATEWAY);
    assert_eq!(
        legacy.counters.authorize.load(Ordering::SeqCst),
        0,
        "a request reached an upstream whose certificate was refused"
    );
    proxy.shutdown().await;

    // Issued by the trusted authority, but for another name.
    let port = tls_front(legacy.addr, &trusted.server(&["login.internal"]), None).await;
    let upstream = format!("https://127.0.0.1:{port}");
    let proxy = self::proxy(settings(upstream.clone(), &[("ca", &ca)])).await;
    assert_eq!(flow(proxy.addr).await, StatusCode::BAD_GATEWAY);
    proxy.shutdown().await;
    // Named with --upstream-server-name, it is the upstream.
    let mut named = settings(upstream, &[("ca", &ca)]);
    named.upstream_server_name = Some("login.internal".into());
    let proxy = self::proxy(named).await;
    assert_eq!(flow(proxy.addr).await, StatusCode::OK);
    proxy.shutdown().await;
    legacy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_presents_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new("mutual");
    let ca = tests::tls::write(dir.path(), "ca.pem", authority.pem());
    let (cert, key) = authority.client("pkce-proxy").write(dir.path(), "client");
    let legacy = LegacyServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let port = tls_front(
        legacy.addr,
        &authority.server(&["127.0.0.1"]),
        Some(&authority),
    )
    .await;
    let upstream = format!("https://127.0.0.1:{port}");

    let proxy = proxy(settings(
        upstream.clone(),
        &[("ca", &ca), ("cert", &cert), ("key", &key)],
    ))
    .await;
    assert_eq!(flow(proxy.addr).await, StatusCode::OK);
    proxy.shutdown().await;

    // Without a certificate, or with one from another authority, the
    // upstream refuses the proxy.
    let stranger = Authority::new("stranger").client("pkce-proxy");
    let (other_cert, other_key) = stranger.write(dir.path(), "stranger");
    for extra in [
        vec![("ca", ca.as_path())],
        vec![
            ("ca", ca.as_path()),
            ("cert", other_cert.as_path()),
            ("key", other_key.as_path()),
        ],
    ] {
        let proxy = self::proxy(settings(upstream.clone(), &extra)).await;
        assert_eq!(flow(proxy.addr).await, StatusCode::BAD_GATEWAY);
        proxy.shutdown().await;
    }
    assert_eq!(legacy.counters.token.load(Ordering::SeqCst), 1);
    legacy.shutdown().await;
}

#[test]
fn bad_files_and_misplaced_settings_name_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new("files");
    let ca = tests::tls::write(dir.path(), "ca.pem", authority.pem());
    let (cert, _) = authority.client("one").write(dir.path(), "one");
    let (_, other_key) = authority.client("two").write(dir.path(), "two");
    let empty = tests::tls::write(dir.path(), "empty.pem", "");
    let missing = dir.path().join("missing.pem");
    let https = "https://127.0.0.1:1".to_owned();
    let cases: Vec<(RawSettings, &str)> = vec![
        (
            settings(https.clone(), &[("ca", &missing)]),
            "--upstream-ca",
        ),
        (settings(https.clone(), &[("ca", &empty)]), "--upstream-ca"),
        (
            settings(https.clone(), &[("ca", &ca), ("cert", &cert)]),
            "--upstream-client-cert",
        ),
        (
            settings(https.clone(), &[("cert", &cert), ("key", &other_key)]),
            "--upstream-client-key",
        ),
        (
            settings(https.clone(), &[("cert", &empty), ("key", &other_key)]),
            "--upstream-client-cert",
        ),
        (
            settings("http://127.0.0.1:1".into(), &[("ca", &ca)]),
            "--upstream-ca",
        ),
    ];
    for (settings, named) in cases {
        let error = Config::resolve(&settings).unwrap_err();
        assert_eq!(error.setting, named, "{error}");
        assert!(!error.to_string().contains('\n'), "{error}");
    }
    let mut named = settings(https, &[("ca", &ca)]);
    named.upstream_server_name = Some("not a name".into());
    assert_eq!(
        Config::resolve(&named).unwrap_err().setting,
        "--upstream-server-name"
    );
}

/// An HTTPS upstream that writes, after its first response on a
/// connection, a second response nobody asked for, in the same TLS
/// record: the first response fills the proxy's read buffer exactly, so
/// the rest waits decrypted inside the TLS session, where the socket's
/// readiness does not show it. That connection must not serve another
/// request, from this client or any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_an_upstream_sends_past_its_response_never_answer_the_next_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new("overrun");
    let ca = tests::tls::write(dir.path(), "ca.pem", authority.pem());
    let identity = authority.server(&["127.0.0.1"]);
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(identity.chain(), identity.key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Each `/first` is answered with the overrun, on whatever connection.
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                loop {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match tls.read(&mut byte).await {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let path = String::from_utf8_lossy(&head)
                        .split(' ')
                        .nth(1)
                        .unwrap_or("")
                        .to_owned();
                    let mut answer = Vec::new();
                    if path == "/first" {
                        // Exactly the proxy's 8 KiB read buffer.
                        let head = "HTTP/1.1 200 OK\r\ncontent-length: ";
                        let body_len = 8192 - head.len() - "4000\r\n\r\n".len();
                        answer.extend_from_slice(format!("{head}{body_len}\r\n\r\n").as_bytes());
                        answer.resize(8192, b'a');
                        answer.extend_from_slice(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nx-poison: yes\r\n\r\nPOISONED",
                        );
                    } else {
                        let body = format!("for {path}");
                        answer.extend_from_slice(
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            )
                            .as_bytes(),
                        );
                    }
                    if tls.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let proxy = proxy(settings(
        format!("https://127.0.0.1:{port}"),
        &[("ca", &ca)],
    ))
    .await;
    let client = HttpClient::default();
    for attempt in 0..5 {
        let base = format!("http://{}", proxy.addr);
        let first = client
            .send(Method::GET, &format!("{base}/first"), None)
            .await
            .unwrap();
        assert_eq!(first.status, StatusCode::OK);
        let head = "HTTP/1.1 200 OK\r\ncontent-length: 8151\r\n\r\n";
        assert_eq!(first.body.len(), 8192 - head.len(), "{attempt}");
        for path in ["/second", "/third"] {
            let next = client
                .send(Method::GET, &format!("{base}{path}"), None)
                .await
                .unwrap();
            assert_eq!(next.body, format!("for {path}"), "attempt {attempt}");
        }
    }
    proxy.shutdown().await;
}
