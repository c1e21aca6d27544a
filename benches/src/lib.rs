//! Helpers shared by the benchmarks.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use tower_pkce::ChallengeMethod;
use tower_pkce::store::{Challenge, CodeBinding, StoreKey, fingerprint};

/// Runs a future that completes without waiting, as every `MemoryStore`
/// operation does, so that a benchmark measures the store and not a runtime.
///
/// # Panics
///
/// If the future is not ready at its first poll.
#[allow(clippy::panic)]
pub fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the future was expected to be ready"),
    }
}

/// The key for the `n`th code of a benchmark.
pub fn key(n: u64) -> StoreKey {
    StoreKey::of(&format!("code-{n}"))
}

/// A binding like the ones the middleware writes.
pub fn binding() -> CodeBinding {
    CodeBinding {
        challenge: Some(Challenge {
            method: ChallengeMethod::S256,
            digest: [9; 32],
        }),
        client: fingerprint("client"),
        redirect_uri: Some(fingerprint("https://client.example/cb")),
        failures: 0,
    }
}

/// The resident set size of this process, in bytes, from `/proc/self/statm`.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
