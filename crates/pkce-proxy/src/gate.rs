//! A bounded count that can be waited on: the upstream connections open,
//! or the ones a client connection's requests use.
//!
//! Taking and giving back are an atomic each, with no lock and no
//! allocation, so that the bounds cost the hot path nothing it would
//! notice; only a request that finds the bound reached waits, and only it
//! pays for the waiting.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;
use tokio::time::Instant;

/// At most `max` taken at once.
#[derive(Debug)]
pub(crate) struct Gate {
    taken: AtomicUsize,
    max: usize,
    /// Those waiting in [`Gate::wait_for`].
    waiters: AtomicUsize,
    freed: Notify,
}

impl Gate {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            taken: AtomicUsize::new(0),
            max,
            waiters: AtomicUsize::new(0),
            freed: Notify::new(),
        }
    }

    /// The bound.
    pub(crate) fn max(&self) -> usize {
        self.max
    }

    /// How many are taken now.
    pub(crate) fn taken(&self) -> usize {
        self.taken.load(Ordering::SeqCst)
    }

    /// How many wait now.
    pub(crate) fn waiting(&self) -> usize {
        self.waiters.load(Ordering::SeqCst)
    }

    /// Takes one, unless all `max` are taken.
    pub(crate) fn try_take(&self) -> bool {
        self.taken
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives one back, and tells a waiter.
    pub(crate) fn give_back(&self) {
        self.taken.fetch_sub(1, Ordering::SeqCst);
        self.wake();
    }

    /// Tells a waiter that something it waits for may have come free (one
    /// given back, or something else its attempt takes). A load when no
    /// one waits.
    pub(crate) fn wake(&self) {
        if self.waiting() > 0 {
            self.freed.notify_one();
        }
    }

    /// Calls `attempt` until it succeeds, again each time the gate is told
    /// something came free, and a last time at `deadline`.
    pub(crate) async fn wait_for<T>(
        &self,
        deadline: Instant,
        mut attempt: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        let _waiting = Waiter::count(&self.waiters);
        loop {
            let mut freed = pin!(self.freed.notified());
            // Registered before the attempt: a wake between the two is kept.
            freed.as_mut().enable();
            if let Some(got) = attempt() {
                return Some(got);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return attempt();
            }
        }
    }
}

/// Counts a waiter while it lives, so that one dropped mid-wait (its
/// request given up) is not counted on.
pub(crate) struct Waiter<'a>(&'a AtomicUsize);

impl<'a> Waiter<'a> {
    pub(crate) fn count(waiters: &'a AtomicUsize) -> Self {
        waiters.fetch_add(1, Ordering::SeqCst);
        Self(waiters)
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One taken from a gate, given back when dropped: an upstream connection
/// holds one for as long as it is open.
#[derive(Debug)]
pub(crate) struct Slot(Option<Arc<Gate>>);

impl Slot {
    /// One from `gate`, unless all are taken.
    pub(crate) fn take(gate: &Arc<Gate>) -> Option<Self> {
        gate.try_take().then(|| Self(Some(gate.clone())))
    }

    /// A slot of no gate, for a connection that is not counted.
    #[cfg(test)]
    pub(crate) fn uncounted() -> Self {
        Self(None)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(gate) = self.0.take() {
            gate.give_back();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn at_most_max_are_taken() {
        let gate = Arc::new(Gate::new(2));
        let a = Slot::take(&gate).unwrap();
        let _b = Slot::take(&gate).unwrap();
        assert!(Slot::take(&gate).is_none());
        assert_eq!(gate.taken(), 2);
        drop(a);
        assert_eq!(gate.taken(), 1);
        assert!(Slot::take(&gate).is_some());
    }

    #[tokio::test]
    async fn a_waiter_gets_what_is_given_back_or_gives_up_at_its_deadline() {
        let gate = Arc::new(Gate::new(1));
        let held = Slot::take(&gate).unwrap();
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(10);
                gate.wait_for(deadline, || Slot::take(&gate))
                    .await
                    .is_some()
            })
        };
        while gate.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        drop(held);
        assert!(waiter.await.unwrap());
        assert_eq!(gate.waiting(), 0);

        let _held = Slot::take(&gate).unwrap();
        let deadline = Instant::now() + Duration::from_millis(50);
        assert!(
            gate.wait_for(deadline, || Slot::take(&gate))
                .await
                .is_none()
        );
        assert_eq!(gate.waiting(), 0);
    }

    #[tokio::test]
    async fn a_waiter_dropped_mid_wait_is_not_counted() {
        let gate = Arc::new(Gate::new(1));
        let _held = Slot::take(&gate).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let wait = gate.wait_for(deadline, || Slot::take(&gate));
        assert!(
            tokio::time::timeout(Duration::from_millis(20), wait)
                .await
                .is_err()
        );
        assert_eq!(gate.waiting(), 0);
    }
}
