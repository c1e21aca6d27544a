//! Several proxies sharing one real `redis-server`: a flow that crosses
//! replicas, single use across them, failing closed when Redis is down or
//! hangs, recovery without a restart, expiry done by Redis, and Redis over
//! TLS (a private authority, mutual TLS, and a certificate not trusted).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use pkce_proxy::config::{Config, RawSettings};
use pkce_proxy::demo::legacy::{LegacyServer, encode, parse_form};
use pkce_proxy::demo::{Fetched, HttpClient};
use pkce_proxy::server::{Running, start};
use redis::AsyncCommands;
use tests::hidden_field;
use tests::redis::{RedisServer, fresh_prefix};
use tests::tls::{Authority, write};
use tower_pkce::{ChallengeMethod, CodeChallenge, CodeVerifier};

const REDIRECT_URI: &str = "https://client.example/cb";

struct Replicas {
    legacy: LegacyServer,
    proxies: Vec<Running>,
    client: HttpClient,
}

/// Starts the example server and `count` proxies in front of it, all on
/// the Redis at `url` under one `prefix`.
async fn replicas(url: &str, prefix: &str, count: usize, extra: &[(&str, &str)]) -> Replicas {
    let legacy = LegacyServer::start(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let mut proxies = Vec::new();
    for _ in 0..count {
        let mut settings = RawSettings {
            upstream: Some(format!("http://{}", legacy.addr)),
            listen: Some("127.0.0.1:0".into()),
            admin_listen: Some("127.0.0.1:0".into()),
            store: Some(url.to_owned()),
            redis_prefix: Some(prefix.to_owned()),
            redis_timeout: Some("0.5".into()),
            ..RawSettings::default()
        };
        for (name, value) in extra {
            match *name {
                "ttl" => settings.ttl = Some((*value).to_owned()),
                "redis_ca" => settings.redis_ca = Some((*value).to_owned()),
                "redis_client_cert" => settings.redis_client_cert = Some((*value).to_owned()),
                "redis_client_key" => settings.redis_client_key = Some((*value).to_owned()),
                other => panic!("no such test setting {other}"),
            }
        }
        proxies.push(start(Config::resolve(&settings).unwrap()).await.unwrap());
    }
    Replicas {
        legacy,
        proxies,
        client: HttpClient::default(),
    }
}

impl Replicas {
    fn base(&self, replica: usize) -> String {
        format!("http://{}", self.proxies[replica].addr)
    }

    async fn get(&self, replica: usize, path: &str) -> Fetched {
        self.client
            .send(Method::GET, &format!("{}{path}", self.base(replica)), None)
            .await
            .unwrap()
    }

    async fn post(&self, replica: usize, path: &str, form: String) -> Fetched {
        self.client
            .send(
                Method::POST,
                &format!("{}{path}", self.base(replica)),
                Some(form),
            )
            .await
            .unwrap()
    }

    async fn ready(&self, replica: usize) -> StatusCode {
        let admin = format!("http://{}/readyz", self.proxies[replica].admin_addr);
        self.client
            .send(Method::GET, &admin, None)
            .await
            .unwrap()
            .status
    }

    async fn authorize(&self, replica: usize, verifier: &CodeVerifier) -> Fetched {
        let challenge = CodeChallenge::from_verifier(verifier, ChallengeMethod::S256);
        let query = format!(
            "response_type=code&client_id=app&redirect_uri={}&state=s1&code_challenge={}&code_challenge_method=S256",
            encode(REDIRECT_URI),
            challenge.as_str()
        );
        self.get(replica, &format!("/authorize?{query}")).await
    }

    /// The authorization request through `first`, the login through
    /// `second`; returns the code the client receives.
    async fn code(&self, first: usize, second: usize, verifier: &CodeVerifier) -> String {
        let page = self.authorize(first, verifier).await;
        assert_eq!(page.status, StatusCode::OK, "{page:?}");
        let txn = hidden_field(&page.body, "txn").unwrap();
        let login = self
            .post(
                second,
                "/login",
                format!("txn={}&username=alice", encode(&txn)),
            )
            .await;
        assert_eq!(login.status, StatusCode::FOUND, "{login:?}");
        let location = login.location().unwrap();
        let params = parse_form(location.split_once('?').unwrap().1);
        let get = |n: &str| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        assert_eq!(get("state").as_deref(), Some("s1"));
        get("code").unwrap()
    }

    async fn redeem(&self, replica: usize, code: &str, verifier: &str) -> Fetched {
        self.post(
            replica,
            "/token",
            format!(
                "grant_type=authorization_code&code={}&client_id=app&redirect_uri={}&code_verifier={verifier}",
                encode(code),
                encode(REDIRECT_URI)
            ),
        )
        .await
    }

    fn upstream_tokens(&self) -> usize {
        self.legacy.counters.token.load(Ordering::SeqCst)
    }

    async fn shutdown(self) {
        for proxy in self.proxies {
            proxy.shutdown().await;
        }
        self.legacy.shutdown().await;
    }
}

fn error_of(answer: &Fetched) -> String {
    let json: serde_json::Value =
        serde_json::from_str(&answer.body).unwrap_or_else(|e| panic!("not JSON ({e}): {answer:?}"));
    json["error"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_crosses_three_replicas_and_a_replay_is_refused_on_any() {
    let redis = RedisServer::shared();
    let set = replicas(&redis.url(), &fresh_prefix(), 3, &[]).await;
    let verifier = CodeVerifier::generate();
    // /authorize on A, the login on B, /token on C.
    let code = set.code(0, 1, &verifier).await;

    let before = set.upstream_tokens();
    let wrong = set
        .redeem(2, &code, CodeVerifier::generate().secret())
        .await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_of(&wrong), "invalid_grant");
    let missing = set
        .post(
            0,
            "/token",
            format!(
                "grant_type=authorization_code&code={}&client_id=app&redirect_uri={}",
                encode(&code),
                encode(REDIRECT_URI)
            ),
        )
        .await;
    assert_eq!(error_of(&missing), "invalid_grant");
    assert_eq!(
        set.upstream_tokens(),
        before,
        "a refused request was forwarded"
    );

    let ok = set.redeem(2, &code, verifier.secret()).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
    assert_eq!(set.upstream_tokens(), before + 1);

    for replica in 0..3 {
        let replay = set.redeem(replica, &code, verifier.secret()).await;
        assert_eq!(replay.status, StatusCode::BAD_REQUEST, "replica {replica}");
        assert_eq!(error_of(&replay), "invalid_grant");
        assert!(replay.body.contains("already been used"), "{replay:?}");
    }
    assert_eq!(set.upstream_tokens(), before + 1, "a replay was forwarded");
    set.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_redemptions_across_two_replicas_have_one_winner() {
    let redis = RedisServer::shared();
    let set = replicas(&redis.url(), &fresh_prefix(), 2, &[]).await;
    for round in 0..3 {
        let verifier = CodeVerifier::generate();
        let code = set.code(round % 2, (round + 1) % 2, &verifier).await;
        let before = set.upstream_tokens();
        let mut tasks = Vec::new();
        for i in 0..32 {
            let client = set.client.clone();
            let url = format!("{}/token", set.base(i % 2));
            let form = format!(
                "grant_type=authorization_code&code={}&client_id=app&redirect_uri={}&code_verifier={}",
                encode(&code),
                encode(REDIRECT_URI),
                verifier.secret()
            );
            tasks.push(tokio::spawn(async move {
                client.send(Method::POST, &url, Some(form)).await.unwrap()
            }));
        }
        let mut winners = 0;
        for task in tasks {
            let answer = task.await.unwrap();
            match answer.status {
                StatusCode::OK => winners += 1,
                StatusCode::BAD_REQUEST => assert_eq!(error_of(&answer), "invalid_grant"),
                other => panic!("unexpected {other}: {answer:?}"),
            }
        }
        assert_eq!(winners, 1, "round {round}");
        assert_eq!(set.upstream_tokens(), before + 1, "round {round}");
    }
    set.shutdown().await;
}

/// Polls `/readyz` of every replica until it is `want`, for up to 15 s.
async fn wait_ready(set: &Replicas, want: StatusCode) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut all = true;
        for replica in 0..set.proxies.len() {
            all &= set.ready(replica).await == want;
        }
        if all {
            return;
        }
        assert!(Instant::now() < deadline, "replicas did not turn {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every way in is closed while Redis is away: new authorizations, logins
/// that would bind a code, and token requests, none of which is forwarded.
async fn assert_fails_closed(set: &Replicas, code: &str, verifier: &CodeVerifier, txns: &[String]) {
    let before = set.upstream_tokens();
    let authorizations = set.legacy.counters.authorize.load(Ordering::SeqCst);
    for (replica, txn) in txns.iter().enumerate() {
        let started = Instant::now();
        let token = set.redeem(replica, code, verifier.secret()).await;
        assert_eq!(token.status, StatusCode::SERVICE_UNAVAILABLE, "{token:?}");
        assert_eq!(error_of(&token), "temporarily_unavailable");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the token request waited {:?}",
            started.elapsed()
        );
        let authorize = set.authorize(replica, &CodeVerifier::generate()).await;
        assert_eq!(authorize.status, StatusCode::SERVICE_UNAVAILABLE);
        // The upstream issues a code here, but it cannot be bound, so the
        // client does not get it.
        let login = set
            .post(
                replica,
                "/login",
                format!("txn={}&username=alice", encode(txn)),
            )
            .await;
        assert_eq!(login.status, StatusCode::SERVICE_UNAVAILABLE, "{login:?}");
        assert!(login.location().is_none());
    }
    assert_eq!(
        set.upstream_tokens(),
        before,
        "a token request was forwarded unchecked"
    );
    assert_eq!(
        set.legacy.counters.authorize.load(Ordering::SeqCst),
        authorizations,
        "an authorization request was forwarded unrecorded"
    );
    wait_ready(set, StatusCode::SERVICE_UNAVAILABLE).await;
}

/// The transaction of a login page opened through each replica.
async fn login_pages(set: &Replicas) -> Vec<String> {
    let mut txns = Vec::new();
    for replica in 0..set.proxies.len() {
        let page = set.authorize(replica, &CodeVerifier::generate()).await;
        txns.push(hidden_field(&page.body, "txn").unwrap());
    }
    txns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_or_hung_fails_closed_and_service_resumes_without_a_restart() {
    let mut redis = RedisServer::start();
    let set = replicas(&redis.url(), &fresh_prefix(), 2, &[]).await;
    wait_ready(&set, StatusCode::OK).await;

    // Hung: Redis holds its connections open and answers nothing.
    let verifier = CodeVerifier::generate();
    let code = set.code(0, 1, &verifier).await;
    let txns = login_pages(&set).await;
    redis.freeze(true);
    assert_fails_closed(&set, &code, &verifier, &txns).await;
    redis.freeze(false);
    wait_ready(&set, StatusCode::OK).await;
    // A redemption that timed out may still run when Redis wakes: the code
    // is then spent, never redeemable twice. At most one request reaches
    // the upstream, and a further one is refused.
    let before = set.upstream_tokens();
    let after_thaw = set.redeem(1, &code, verifier.secret()).await;
    match after_thaw.status {
        StatusCode::OK => {}
        StatusCode::BAD_REQUEST => assert_eq!(error_of(&after_thaw), "invalid_grant"),
        other => panic!("unexpected {other}: {after_thaw:?}"),
    }
    let again = set.redeem(0, &code, verifier.secret()).await;
    assert_eq!(error_of(&again), "invalid_grant");
    assert!(set.upstream_tokens() <= before + 1);
    // A new flow works on the same proxies.
    let verifier = CodeVerifier::generate();
    let code = set.code(1, 0, &verifier).await;
    let ok = set.redeem(0, &code, verifier.secret()).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");

    // Down: the connection is refused.
    let verifier = CodeVerifier::generate();
    let code = set.code(1, 0, &verifier).await;
    let txns = login_pages(&set).await;
    redis.stop();
    assert_fails_closed(&set, &code, &verifier, &txns).await;

    // Back (empty: this server keeps nothing on disk). The same proxies
    // serve again; the code bound before the loss is unknown now, and
    // unknown codes are refused, never waved through.
    redis.restart();
    wait_ready(&set, StatusCode::OK).await;
    let before = set.upstream_tokens();
    let lost = set.redeem(0, &code, verifier.secret()).await;
    assert_eq!(error_of(&lost), "invalid_grant");
    assert_eq!(set.upstream_tokens(), before);
    let verifier = CodeVerifier::generate();
    let code = set.code(0, 1, &verifier).await;
    let ok = set.redeem(1, &code, verifier.secret()).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
    set.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_expires_the_records() {
    let redis = RedisServer::shared();
    let prefix = fresh_prefix();
    let set = replicas(&redis.url(), &prefix, 2, &[("ttl", "1")]).await;
    let verifier = CodeVerifier::generate();
    let code = set.code(0, 1, &verifier).await;

    let mut raw = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let binding = format!("{{{prefix}}}:b:*");
    let mark = format!("{{{prefix}}}:c:*");
    let bindings: Vec<String> = raw.keys(&binding).await.unwrap();
    let marks: Vec<String> = raw.keys(&mark).await.unwrap();
    assert_eq!(
        (bindings.len(), marks.len()),
        (1, 1),
        "a live binding and its mark: {bindings:?} {marks:?}"
    );
    for key in bindings.iter().chain(&marks) {
        assert!(!key.contains(&code), "a key holds the code itself");
    }
    let left: i64 = raw.pttl(&bindings[0]).await.unwrap();
    assert!(
        (1..=1000).contains(&left),
        "the binding expires in {left} ms"
    );
    // The mark outlives the binding: the default mark lifetime, an hour.
    let left: i64 = raw.pttl(&marks[0]).await.unwrap();
    assert!(
        (1000..=3_600_000).contains(&left),
        "the mark expires in {left} ms"
    );

    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Redis removed the binding itself: no sweep of ours ran. The mark
    // still refuses the code.
    let bindings: Vec<String> = raw.keys(&binding).await.unwrap();
    assert!(bindings.is_empty(), "{bindings:?}");
    let before = set.upstream_tokens();
    let late = set.redeem(1, &code, verifier.secret()).await;
    assert_eq!(error_of(&late), "invalid_grant");
    assert!(late.body.contains("has expired"), "{late:?}");
    assert_eq!(set.upstream_tokens(), before);
    set.shutdown().await;
}

/// A whole flow across two replicas: authorized through the first, the
/// code redeemed through the second, and its replay refused by both.
async fn flow_across_two(set: &Replicas) {
    wait_ready(set, StatusCode::OK).await;
    let verifier = CodeVerifier::generate();
    let code = set.code(0, 1, &verifier).await;
    let before = set.upstream_tokens();
    let ok = set.redeem(1, &code, verifier.secret()).await;
    assert_eq!(ok.status, StatusCode::OK, "{ok:?}");
    for replica in [0, 1] {
        let replay = set.redeem(replica, &code, verifier.secret()).await;
        assert_eq!(replay.status, StatusCode::BAD_REQUEST, "replica {replica}");
        assert!(replay.body.contains("already been used"), "{replay:?}");
    }
    assert_eq!(set.upstream_tokens(), before + 1, "a replay was forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_a_redis_over_tls_that_a_private_authority_signed() {
    let authority = Authority::new("redis test authority");
    let redis = RedisServer::start_tls(&authority, false);
    assert!(redis.url().starts_with("rediss://"));
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", authority.pem());
    let set = replicas(
        &redis.url(),
        &fresh_prefix(),
        2,
        &[("redis_ca", ca.to_str().unwrap())],
    )
    .await;
    flow_across_two(&set).await;
    set.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_a_redis_that_demands_client_certificates() {
    let authority = Authority::new("redis test authority");
    let redis = RedisServer::start_tls(&authority, true);
    let dir = tempfile::tempdir().unwrap();
    let ca = write(dir.path(), "ca.pem", authority.pem());
    let (cert, key) = authority.client("pkce-proxy").write(dir.path(), "client");
    let prefix = fresh_prefix();
    let set = replicas(
        &redis.url(),
        &prefix,
        2,
        &[
            ("redis_ca", ca.to_str().unwrap()),
            ("redis_client_cert", cert.to_str().unwrap()),
            ("redis_client_key", key.to_str().unwrap()),
        ],
    )
    .await;
    flow_across_two(&set).await;
    set.shutdown().await;

    // Without a client certificate, the same Redis lets nothing in.
    let bare = replicas(
        &redis.url(),
        &prefix,
        1,
        &[("redis_ca", ca.to_str().unwrap())],
    )
    .await;
    assert_refused_by_redis(&bare).await;
    bare.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_certificate_the_authority_did_not_sign_fails_closed() {
    let theirs = Authority::new("the authority that signed Redis");
    let redis = RedisServer::start_tls(&theirs, false);
    let dir = tempfile::tempdir().unwrap();
    let ours = write(
        dir.path(),
        "ca.pem",
        Authority::new("another authority").pem(),
    );
    let set = replicas(
        &redis.url(),
        &fresh_prefix(),
        1,
        &[("redis_ca", ours.to_str().unwrap())],
    )
    .await;
    assert_refused_by_redis(&set).await;
    set.shutdown().await;

    // Nor does the system trust a private authority.
    let set = replicas(&redis.url(), &fresh_prefix(), 1, &[]).await;
    assert_refused_by_redis(&set).await;
    set.shutdown().await;
}

/// Replicas whose TLS connection to Redis fails: unready, and the
/// authorization and token endpoints answer 503 without forwarding.
async fn assert_refused_by_redis(set: &Replicas) {
    wait_ready(set, StatusCode::SERVICE_UNAVAILABLE).await;
    let authorizations = set.legacy.counters.authorize.load(Ordering::SeqCst);
    for replica in 0..set.proxies.len() {
        let authorize = set.authorize(replica, &CodeVerifier::generate()).await;
        assert_eq!(
            authorize.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{authorize:?}"
        );
        assert!(
            authorize.body.contains("temporarily_unavailable"),
            "{authorize:?}"
        );
        let verifier = CodeVerifier::generate();
        let token = set.redeem(replica, "some-code", verifier.secret()).await;
        assert_eq!(token.status, StatusCode::SERVICE_UNAVAILABLE, "{token:?}");
        assert_eq!(error_of(&token), "temporarily_unavailable");
    }
    assert_eq!(set.upstream_tokens(), 0, "a token request was forwarded");
    assert_eq!(
        set.legacy.counters.authorize.load(Ordering::SeqCst),
        authorizations,
        "an authorization request was forwarded unrecorded"
    );
}
