//! Shutdown: tells client connections to finish, and counts those still
//! open so that the server can wait for them to drain.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Tells connections to finish, and counts those still open.
#[derive(Debug, Default)]
pub(crate) struct Shutdown {
    stopping: AtomicBool,
    pub(super) stop: Notify,
    open: AtomicUsize,
    closed: Notify,
}

impl Shutdown {
    /// Asks every connection to finish: idle ones close now, busy ones
    /// after their response.
    pub(crate) fn begin(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop.notify_waiters();
    }

    pub(super) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The connections open now.
    pub(crate) fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Resolves when no connection is open.
    pub(crate) async fn drained(&self) {
        loop {
            let mut closed = pin!(self.closed.notified());
            closed.as_mut().enable();
            if self.open.load(Ordering::SeqCst) == 0 {
                return;
            }
            closed.await;
        }
    }

    /// Counts a connection as open until the guard is dropped: taken at
    /// accept, so that a connection not yet served holds the drain.
    pub(crate) fn enter(self: &Arc<Self>) -> OpenConnection {
        self.open.fetch_add(1, Ordering::SeqCst);
        OpenConnection(self.clone())
    }
}

/// Counts one connection as open while it lives.
#[derive(Debug)]
pub(crate) struct OpenConnection(pub(super) Arc<Shutdown>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}
