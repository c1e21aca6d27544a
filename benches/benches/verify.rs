//! The verification path: a presented `code_verifier` against a recorded
//! challenge digest, next to the SHA-256 it is built on as a baseline.
#![allow(missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use sha2::Digest;
use std::hint::black_box;
use tower_pkce::{ChallengeMethod, CodeChallenge, CodeVerifier, s256, verify_digest};

fn verification(c: &mut Criterion) {
    let verifier = CodeVerifier::generate();
    let digest = CodeChallenge::from_verifier(&verifier, ChallengeMethod::S256).digest();
    let secret = verifier.secret().to_owned();
    let wrong = CodeVerifier::generate().secret().to_owned();

    let mut group = c.benchmark_group("verify");
    group.bench_function("baseline_sha256", |b| {
        b.iter(|| sha2::Sha256::digest(black_box(secret.as_bytes())))
    });
    group.bench_function("baseline_sha256_base64url", |b| {
        b.iter(|| s256(black_box(secret.as_bytes())))
    });
    group.bench_function("verify_digest_match", |b| {
        b.iter(|| verify_digest(black_box(&secret), black_box(&digest)))
    });
    group.bench_function("verify_digest_mismatch", |b| {
        b.iter(|| verify_digest(black_box(&wrong), black_box(&digest)))
    });
    group.finish();
}

criterion_group!(benches, verification);
criterion_main!(benches);
