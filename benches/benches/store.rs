//! `MemoryStore` with 1,000,000 live bindings: binding a new code, and
//! redeeming it, next to a lookup of a missing key as a baseline.
#![allow(missing_docs)]

use std::time::Duration;

use benches::{binding, key, ready};
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use tower_pkce::store::{MemoryStore, Redemption, Store, StoreKey};

/// Keys are computed outside the timed loop where it matters; this one is
/// cheap enough (a table lookup) to sit inside it.
fn key_cache(n: u64) -> StoreKey {
    use std::sync::OnceLock;
    static KEYS: OnceLock<Vec<StoreKey>> = OnceLock::new();
    let keys = KEYS.get_or_init(|| (0..LIVE).map(key).collect());
    keys.get(n as usize).copied().unwrap_or_else(|| key(n))
}

const LIVE: u64 = 1_000_000;
const TTL: Duration = Duration::from_secs(3600);

fn store_at_one_million(c: &mut Criterion) {
    let store = MemoryStore::builder().capacity(usize::MAX).build();
    for n in 0..LIVE {
        let _ = ready(store.insert_binding(&key_cache(n), binding(), TTL));
    }
    let mut next = LIVE;
    let mut group = c.benchmark_group("memory_store_1m_live");
    group.bench_function("baseline_redeem_missing", |b| {
        let missing = key(u64::MAX);
        b.iter(|| ready(store.redeem(black_box(&missing))))
    });
    group.bench_function("redeem_then_restore_live", |b| {
        // Cycles over the live bindings, so the map stays at 1M entries.
        let mut n = 0;
        b.iter(|| {
            n = (n + 1) % LIVE;
            let k = key_cache(n);
            let redeemed = ready(store.redeem(&k));
            if let Ok(Redemption::Redeemed(binding)) = redeemed {
                let _ = ready(store.restore(&k, binding));
            }
        })
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
