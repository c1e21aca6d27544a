//! Availability under a flood of authorization requests (issue 28): one
//! address, then many, send `/authorize` as fast as they can while a
//! legitimate client on another address signs in through the login page;
//! with the memory store, and with two replicas on one Redis.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use pkce_proxy::config::{Config, RawSettings};
use pkce_proxy::demo::legacy::{LegacyServer, encode, parse_form};
use pkce_proxy::server::start;
use tests::redis::{RedisServer, fresh_prefix};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tower_pkce::{ChallengeMethod, CodeChallenge, CodeVerifier};

const CAPACITY: u64 = 2000;
const QUOTA: u64 = 100;
const ATTACK: Duration = Duration::from_secs(6);

/// A keep-alive HTTP/1.1 connection from `from`.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Conn {
    async fn open(from: IpAddr, to: SocketAddr) -> std::io::Result<Self> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(from, 0))?;
        let stream = socket.connect(to).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::new(),
        })
    }

    async fn send(&mut self, method: &str, target: &str, body: Option<&str>) -> Option<Answer> {
        let mut req = format!("{method} {target} HTTP/1.1\r\nHost: proxy\r\n");
        if let Some(body) = body {
            req.push_str(&format!(
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body.unwrap_or(""));
        self.stream.write_all(req.as_bytes()).await.ok()?;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                let total = end + 4 + length;
                while self.buf.len() < total {
                    self.fill().await?;
                }
                let body = String::from_utf8_lossy(&self.buf[end + 4..total]).into_owned();
                self.buf.drain(..total);
                let status = head.get(9..12)?.parse().ok()?;
                return Some(Answer { status, head, body });
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Option<()> {
        let mut chunk = [0u8; 16384];
        let n = self.stream.read(&mut chunk).await.ok()?;
        (n > 0).then(|| self.buf.extend_from_slice(&chunk[..n]))
    }
}

fn hidden(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(html[start..end].to_owned())
}

fn authorize_target(challenge: &str) -> String {
    format!(
        "/authorize?response_type=code&client_id=app&redirect_uri={}&state=s1\
         &code_challenge={challenge}&code_challenge_method=S256",
        encode("https://client.example/cb")
    )
}

/// One whole sign-in from `from`: the login page through `first`, the
/// login through `second`, the token through `first`. Whether it ended with
/// the token.
async fn sign_in(from: IpAddr, first: SocketAddr, second: SocketAddr) -> bool {
    let (Ok(mut conn), Ok(mut other)) = (
        Conn::open(from, first).await,
        Conn::open(from, second).await,
    ) else {
        return false;
    };
    let verifier = CodeVerifier::generate();
    let challenge = CodeChallenge::from_verifier(&verifier, ChallengeMethod::S256);
    let Some(page) = conn
        .send("GET", &authorize_target(challenge.as_str()), None)
        .await
    else {
        return false;
    };
    let Some(txn) = hidden(&page.body, "txn") else {
        eprintln!("sign-in refused at the login page: {}", page.status);
        return false;
    };
    let login = format!("txn={}&username=alice", encode(&txn));
    let Some(login) = other.send("POST", "/login", Some(&login)).await else {
        return false;
    };
    let Some(location) = login.head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("location")
            .then(|| value.trim().to_owned())
    }) else {
        eprintln!("sign-in refused at the login: {}", login.status);
        return false;
    };
    let Some((_, query)) = location.split_once('?') else {
        return false;
    };
    let params = parse_form(query);
    let Some((_, code)) = params.iter().find(|(k, _)| k == "code") else {
        return false;
    };
    let token = format!(
        "grant_type=authorization_code&code={}&client_id=app&redirect_uri={}&code_verifier={}",
        encode(code),
        encode("https://client.example/cb"),
        verifier.secret()
    );
    let Some(token) = conn.send("POST", "/token", Some(&token)).await else {
        return false;
    };
    token.status == 200
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    too_many: AtomicU64,
    unavailable: AtomicU64,
    retry_after: AtomicBool,
}

/// Floods `/authorize` from `sources` in turn, over keep-alive connections,
/// until `stop`.
async fn attack(sources: Vec<IpAddr>, proxy: SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let challenge = CodeChallenge::from_verifier(&CodeVerifier::generate(), ChallengeMethod::S256);
    let target = authorize_target(challenge.as_str());
    let mut next = 0;
    while !stop.load(Ordering::Relaxed) {
        let from = sources[next % sources.len()];
        next += 1;
        let Ok(mut conn) = Conn::open(from, proxy).await else {
            continue;
        };
        // A few hundred requests a connection, then the next address.
        for _ in 0..200 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let Some(answer) = conn.send("GET", &target, None).await else {
                break;
            };
            tally.sent.fetch_add(1, Ordering::Relaxed);
            match answer.status {
                429 => {
                    tally.too_many.fetch_add(1, Ordering::Relaxed);
                    if answer.head.to_ascii_lowercase().contains("retry-after: 10") {
                        tally.retry_after.store(true, Ordering::Relaxed);
                    }
                }
                503 => {
                    tally.unavailable.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    }
}

/// The store's records (pending and bindings) as the admin endpoint shows.
async fn store_records(admin: SocketAddr) -> u64 {
    let Ok(mut conn) = Conn::open([127, 0, 0, 1].into(), admin).await else {
        return 0;
    };
    let Some(metrics) = conn.send("GET", "/metrics", None).await else {
        return 0;
    };
    metrics
        .body
        .lines()
        .filter(|l| l.starts_with("pkce_proxy_store_entries{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn metric(admin: SocketAddr, name: &str) -> u64 {
    let Ok(mut conn) = Conn::open([127, 0, 0, 1].into(), admin).await else {
        return 0;
    };
    let Some(metrics) = conn.send("GET", "/metrics", None).await else {
        return 0;
    };
    metrics
        .body
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// Where the flooded proxies keep their records.
#[derive(Clone, Copy)]
enum Backend {
    /// One proxy, with the memory store.
    Memory,
    /// Two replicas on one Redis, under a prefix of their own.
    Redis,
}

/// The records (pending and bindings) in Redis under `prefix`, counted
/// twice in one script: the keys that hold them, and the live members of
/// the indexes that the capacity counts (spent bindings included).
async fn redis_records(raw: &mut redis::aio::MultiplexedConnection, prefix: &str) -> (u64, u64) {
    redis::Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tag = '{' .. ARGV[1] .. '}'
return {
  #redis.call('KEYS', tag .. ':p:*') + #redis.call('KEYS', tag .. ':b:*'),
  redis.call('ZCOUNT', tag .. ':n:p', '(' .. now, '+inf')
    + redis.call('ZCOUNT', tag .. ':n:b', '(' .. now, '+inf'),
}
",
    )
    .arg(prefix)
    .invoke_async(raw)
    .await
    .unwrap()
}

async fn under_flood(attackers: Vec<IpAddr>, backend: Backend) -> Arc<Tally> {
    let legacy = LegacyServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let prefix = fresh_prefix();
    let (replicas, store) = match backend {
        Backend::Memory => (1, None),
        Backend::Redis => (2, Some(RedisServer::shared().url())),
    };
    let mut running = Vec::new();
    for _ in 0..replicas {
        running.push(
            start(
                Config::resolve(&RawSettings {
                    upstream: Some(format!("http://{}", legacy.addr)),
                    listen: Some("127.0.0.1:0".into()),
                    admin_listen: Some("127.0.0.1:0".into()),
                    max_entries: Some(CAPACITY.to_string()),
                    max_pending_per_source: Some(QUOTA.to_string()),
                    store: store.clone(),
                    redis_prefix: store.is_some().then(|| prefix.clone()),
                    ..RawSettings::default()
                })
                .unwrap(),
            )
            .await
            .unwrap(),
        );
    }
    let proxies: Vec<SocketAddr> = running.iter().map(|r| r.addr).collect();
    let admins: Vec<SocketAddr> = running.iter().map(|r| r.admin_addr).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut attackers_tasks = Vec::new();
    for i in 0..6 {
        let mine: Vec<IpAddr> = attackers.iter().skip(i).step_by(6).copied().collect();
        let mine = if mine.is_empty() {
            attackers.clone()
        } else {
            mine
        };
        attackers_tasks.push(tokio::spawn(attack(
            mine,
            proxies[i % proxies.len()],
            stop.clone(),
            tally.clone(),
        )));
    }
    // The store's records as a replica's admin endpoint shows them and,
    // with Redis, as Redis holds them: the keys and the indexes.
    let peak = Arc::new(AtomicU64::new(0));
    let redis_peak = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let sampler = {
        let (stop, peak, redis_peak) = (stop.clone(), peak.clone(), redis_peak.clone());
        let (admin, store, prefix) = (admins[0], store.clone(), prefix.clone());
        tokio::spawn(async move {
            let mut raw = match &store {
                Some(url) => Some(
                    redis::Client::open(url.as_str())
                        .unwrap()
                        .get_multiplexed_async_connection()
                        .await
                        .unwrap(),
                ),
                None => None,
            };
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(store_records(admin).await, Ordering::Relaxed);
                if let Some(raw) = raw.as_mut() {
                    let (keys, indexed) = redis_records(raw, &prefix).await;
                    redis_peak.0.fetch_max(keys, Ordering::Relaxed);
                    redis_peak.1.fetch_max(indexed, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // Let the flood fill what it can first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let legit: IpAddr = [127, 0, 0, 2].into();
    let (mut attempted, mut succeeded) = (0u32, 0u32);
    let deadline = tokio::time::Instant::now() + ATTACK;
    while tokio::time::Instant::now() < deadline {
        // With two replicas, each sign-in crosses them, starting on each
        // in turn.
        let first = attempted as usize % proxies.len();
        let second = (first + 1) % proxies.len();
        attempted += 1;
        succeeded += u32::from(sign_in(legit, proxies[first], proxies[second]).await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in attackers_tasks {
        task.await.unwrap();
    }
    sampler.await.unwrap();
    let peak = peak.load(Ordering::Relaxed);
    let (keys_peak, indexed_peak) = (
        redis_peak.0.load(Ordering::Relaxed),
        redis_peak.1.load(Ordering::Relaxed),
    );
    let mut evicted = 0;
    for admin in &admins {
        evicted += metric(*admin, "pkce_proxy_store_evictions_total").await;
    }
    eprintln!(
        "{}: legitimate sign-ins: {succeeded}/{attempted}; attack requests: {}, 429: {}, 503: {}; \
         store peak: {peak} of {CAPACITY}{}; evicted: {evicted}",
        match backend {
            Backend::Memory => "memory",
            Backend::Redis => "redis, two replicas",
        },
        tally.sent.load(Ordering::Relaxed),
        tally.too_many.load(Ordering::Relaxed),
        tally.unavailable.load(Ordering::Relaxed),
        match backend {
            Backend::Memory => String::new(),
            Backend::Redis => format!(" (in Redis: {keys_peak} keys, {indexed_peak} indexed)"),
        },
    );
    assert!(attempted >= 10, "{attempted}");
    assert!(
        f64::from(succeeded) >= 0.95 * f64::from(attempted),
        "{succeeded}/{attempted}"
    );
    assert!(peak <= CAPACITY, "{peak}");
    assert!(keys_peak <= CAPACITY, "{keys_peak}");
    assert!(indexed_peak <= CAPACITY, "{indexed_peak}");
    for proxy in running {
        proxy.shutdown().await;
    }
    legacy.shutdown().await;
    tally
}

async fn one_address(backend: Backend) {
    let tally = under_flood(vec![[127, 0, 0, 1].into()], backend).await;
    // The attacker holds its quota and is refused past it, with a hint of
    // when to come back.
    assert!(tally.too_many.load(Ordering::Relaxed) > QUOTA);
    assert!(tally.retry_after.load(Ordering::Relaxed));
    assert_eq!(tally.unavailable.load(Ordering::Relaxed), 0);
}

async fn many_addresses(backend: Backend) {
    let attackers: Vec<IpAddr> = (3..=250).map(|n| IpAddr::from([127, 0, 0, n])).collect();
    let tally = under_flood(attackers, backend).await;
    assert!(tally.sent.load(Ordering::Relaxed) > CAPACITY);
    assert_eq!(tally.unavailable.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_lock_out_the_others() {
    one_address(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_addresses_are_answered_by_eviction() {
    many_addresses(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_lock_out_the_others_across_redis_replicas() {
    one_address(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_addresses_are_answered_by_eviction_across_redis_replicas() {
    many_addresses(Backend::Redis).await;
}
