//! Bytes per live code binding in a `MemoryStore`: the growth of the
//! resident set over 1,000,000 bindings.
//!
//! `cargo run --release -p benches --bin binding_memory [COUNT]`

use std::time::{Duration, Instant};

use benches::{binding, key, ready, rss_bytes};
use tower_pkce::store::{MemoryStore, Store};

fn main() {
    let count: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let store = MemoryStore::builder().capacity(usize::MAX).build();
    // Keys are made before measuring, so only the store's growth counts.
    let keys: Vec<_> = (0..count).map(key).collect();
    let before = rss_bytes().unwrap_or(0);
    let started = Instant::now();
    for k in &keys {
        if ready(store.insert_binding(k, binding(), Duration::from_secs(600))).is_err() {
            eprintln!("insert failed");
            std::process::exit(1);
        }
    }
    let elapsed = started.elapsed();
    let after = rss_bytes().unwrap_or(0);
    let stats = ready(store.stats()).unwrap_or_default();
    let grown = after.saturating_sub(before);
    println!("bindings:            {}", stats.bindings);
    println!("rss growth:          {:.1} MiB", grown as f64 / 1048576.0);
    println!("bytes per binding:   {:.1}", grown as f64 / count as f64);
    println!(
        "insert time:         {:.0} ns per binding",
        elapsed.as_nanos() as f64 / count as f64
    );
}
