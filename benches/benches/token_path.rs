//! The token endpoint through the layer, with `MemoryStore` and with
//! `RedisStore` on a local `redis-server`, next to the same request sent to
//! the inner service alone as a baseline.
//!
//! Each iteration redeems a fresh code, bound outside the timed part, with
//! the right verifier: the path every successful sign-in takes.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use tests::redis::{RedisServer, fresh_prefix};
use tower::{Layer, Service, ServiceExt};
use tower_pkce::store::{
    Challenge, CodeBinding, MemoryStore, RedisStore, Store, StoreKey, fingerprint,
};
use tower_pkce::{ChallengeMethod, CodeChallenge, CodeVerifier, PkceLayer};

const TTL: Duration = Duration::from_secs(600);
const REDIRECT_URI: &str = "https://client.example/cb";

fn token_request(code: &str, verifier: &str) -> Request<Full<Bytes>> {
    let body = format!(
        "grant_type=authorization_code&code={code}&client_id=app&redirect_uri=https%3A%2F%2Fclient.example%2Fcb&code_verifier={verifier}"
    );
    Request::post("/token")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// The upstream: a small JSON answer, as a token endpoint gives.
async fn upstream<B>(_: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(
        br#"{"access_token":"at","token_type":"Bearer"}"#,
    ))))
}

fn binding(verifier: &CodeVerifier) -> CodeBinding {
    let challenge = CodeChallenge::from_verifier(verifier, ChallengeMethod::S256);
    CodeBinding {
        challenge: Some(Challenge {
            method: ChallengeMethod::S256,
            digest: challenge.digest(),
        }),
        client: fingerprint("app"),
        redirect_uri: Some(fingerprint(REDIRECT_URI)),
        failures: 0,
    }
}

fn bench_store<St: Store>(c: &mut Criterion, rt: &tokio::runtime::Runtime, name: &str, store: St) {
    let verifier = CodeVerifier::generate();
    let bound = binding(&verifier);
    let service = PkceLayer::strict()
        .store(store.clone())
        .layer(tower::service_fn(upstream));
    let mut n = 0u64;
    c.bench_function(&format!("token_path/{name}"), |b| {
        b.iter_batched(
            || {
                n += 1;
                let code = format!("bench-{name}-{n}-{}", std::process::id());
                rt.block_on(store.insert_binding(&StoreKey::of(&code), bound, TTL))
                    .unwrap();
                token_request(&code, verifier.secret())
            },
            |req| {
                let response = rt.block_on(service.clone().oneshot(req)).unwrap();
                assert_eq!(response.status(), StatusCode::OK);
            },
            BatchSize::SmallInput,
        )
    });
}

fn token_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let verifier = CodeVerifier::generate();
    let mut bare = tower::service_fn(upstream);
    c.bench_function("token_path/baseline_upstream_alone", |b| {
        b.iter_batched(
            || token_request("bench-baseline", verifier.secret()),
            |req| rt.block_on(bare.call(req)).unwrap(),
            BatchSize::SmallInput,
        )
    });

    bench_store(c, &rt, "memory", MemoryStore::new());

    let redis = RedisServer::start();
    let store = rt.block_on(async {
        RedisStore::builder(redis.url())
            .prefix(fresh_prefix())
            .build()
            .unwrap()
    });
    bench_store(c, &rt, "redis", store);
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = token_path
}
criterion_main!(benches);
