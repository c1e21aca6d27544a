//! `MemoryStore` with 1,000,000 live bindings: binding a new code, and
//! redeeming it, next to a lookup of a missing key as a baseline.
#![allow(missing_docs)]

use std::time::Duration;

use benches::{binding, key, ready};
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use tower_pkce::store::{MemoryStore, Store};

const LIVE: u64 = 1_000_000;
const TTL: Duration = Duration::from_secs(3600);

fn store_at_one_million(c: &mut Criterion) {
    let store = MemoryStore::builder().capacity(usize::MAX).build();
    for n in 0..LIVE {
        let _ = ready(store.insert_binding(&key(n), binding(), TTL));
    }
    let mut next = LIVE;
    let mut group = c.benchmark_group("memory_store_1m_live");
    group.bench_function("baseline_redeem_missing", |b| {
        let missing = key(u64::MAX);
        b.iter(|| ready(store.redeem(black_box(&missing))))
    });
    group.bench_function("insert_then_redeem", |b| {
        b.iter_batched(
            || {
                next += 1;
                key(next)
            },
            |k| {
                let _ = ready(store.insert_binding(&k, binding(), TTL));
                ready(store.redeem(&k))
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, store_at_one_million);
criterion_main!(benches);
