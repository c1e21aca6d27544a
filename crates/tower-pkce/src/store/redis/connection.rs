//! The shared connection to Redis: every operation bounded by the timeout,
//! failures counted, and the connection made afresh when they persist.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{RedisStore, unavailable};
use crate::store::StoreError;

impl RedisStore {
    pub(super) async fn bounded<T>(
        &self,
        op: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let outcome = match tokio::time::timeout(self.inner.timeout, op).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) if is_out_of_memory(&e) => Err(StoreError::Full),
            Ok(Err(e)) => Err(StoreError::Unavailable(Box::new(e))),
            Err(_) => Err(unavailable(&format_args!(
                "no answer from Redis within {:?}",
                self.inner.timeout
            ))),
        };
        match &outcome {
            Err(StoreError::Unavailable(_)) => {
                self.inner.refusals.failed.note(self.millis());
                self.failed();
            }
            _ => {
                if self.inner.failures.load(Ordering::Relaxed) != 0 {
                    self.inner.failures.store(0, Ordering::Relaxed);
                }
                self.inner.refusals.failed.clear();
            }
        }
        outcome
    }

    /// The shared connection.
    pub(super) fn connection(&self) -> ConnectionManager {
        match self.inner.connection.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Counts a failure, and replaces the connection after several in a
    /// row. The connection manager remakes its connection after I/O errors
    /// only; a failure while connecting (a rotated password, a full client
    /// table) or a primary demoted to a read-only replica would otherwise
    /// keep every operation failing until the process restarts.
    pub(super) fn failed(&self) {
        let failures = self.inner.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < FAILURES_BEFORE_RENEWAL {
            return;
        }
        let Ok(mut renewed) = self.inner.renewed.try_lock() else {
            return;
        };
        if renewed.elapsed() < RENEWAL_PERIOD {
            return;
        }
        if let Ok(fresh) = connect(&self.inner.client, self.inner.timeout) {
            match self.inner.connection.write() {
                Ok(mut guard) => *guard = fresh,
                Err(poisoned) => *poisoned.into_inner() = fresh,
            }
            tracing::warn!(failures, "Redis keeps failing; connecting afresh");
        }
        *renewed = Instant::now();
        self.inner.failures.store(0, Ordering::Relaxed);
    }
}

/// A lazy connection: it is made on first use, and remade in the background
/// after I/O errors.
pub(super) fn connect(
    client: &redis::Client,
    timeout: Duration,
) -> Result<ConnectionManager, StoreError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(|e| unavailable(&e))
}

/// After this many failures in a row the connection is replaced.
const FAILURES_BEFORE_RENEWAL: u32 = 3;
/// And at most this often.
const RENEWAL_PERIOD: Duration = Duration::from_secs(1);

pub(super) fn is_out_of_memory(e: &redis::RedisError) -> bool {
    e.code() == Some("OOM")
}
