//! [`ForwardProgress`]: how far a token request got on its way to the
//! upstream, so that a redeemed binding is restored only when the upstream
//! certainly did not redeem the code (invariant I6 of the security model).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

/// How far a request got, as the service behind the layer reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Progress {
    /// The service said nothing: the layer judges by the answer alone.
    Unknown,
    /// No byte of the request has reached the upstream.
    NotSent,
    /// Bytes of the request may have reached the upstream.
    Sent,
    /// The request may have reached the upstream, and the service gave up
    /// before its answer came (a timeout, a lost connection): the upstream
    /// may have acted on it.
    Unanswered,
}

/// A report, shared between the layer and the service behind it, of how far
/// a token request got on its way to the upstream.
///
/// The layer puts one into the extensions of every token request whose
/// code it redeemed. A service that forwards requests (a reverse proxy)
/// should mark it: [`not_sent`](Self::not_sent) when it takes the request,
/// [`sent`](Self::sent) before the first byte leaves, and
/// [`unanswered`](Self::unanswered) when it gives up on a request it sent.
/// The binding is then put back for a retry only when the upstream
/// certainly did not see the code: nothing was sent, or the upstream itself
/// answered with a 5xx. A service that marks nothing is judged by its
/// answer: a 5xx restores the binding, an error or a cancelled request does
/// not, since the upstream may have redeemed the code.
///
/// ```
/// use tower_pkce::{ForwardProgress, Progress};
///
/// let progress = ForwardProgress::default();
/// progress.not_sent();
/// progress.sent();
/// assert_eq!(progress.get(), Progress::Sent);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ForwardProgress(Arc<AtomicU8>);

const UNKNOWN: u8 = 0;
const NOT_SENT: u8 = 1;
const SENT: u8 = 2;
const UNANSWERED: u8 = 3;

impl ForwardProgress {
    /// The service has the request and has sent nothing of it.
    pub fn not_sent(&self) {
        self.0.store(NOT_SENT, Ordering::Release);
    }

    /// Bytes of the request may reach the upstream from now on.
    pub fn sent(&self) {
        self.0.store(SENT, Ordering::Release);
    }

    /// The service gave up on a request it may have sent, without the
    /// upstream's answer. A request that never left stays
    /// [`Progress::NotSent`].
    pub fn unanswered(&self) {
        let _ = self
            .0
            .compare_exchange(SENT, UNANSWERED, Ordering::AcqRel, Ordering::Acquire);
        let _ = self
            .0
            .compare_exchange(UNKNOWN, UNANSWERED, Ordering::AcqRel, Ordering::Acquire);
    }

    /// What the service reported.
    pub fn get(&self) -> Progress {
        match self.0.load(Ordering::Acquire) {
            NOT_SENT => Progress::NotSent,
            SENT => Progress::Sent,
            UNANSWERED => Progress::Unanswered,
            _ => Progress::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unanswered_never_hides_a_request_that_was_not_sent() {
        let p = ForwardProgress::default();
        assert_eq!(p.get(), Progress::Unknown);
        p.unanswered();
        assert_eq!(p.get(), Progress::Unanswered);
        let p = ForwardProgress::default();
        p.not_sent();
        p.unanswered();
        assert_eq!(p.get(), Progress::NotSent);
        p.sent();
        p.unanswered();
        assert_eq!(p.get(), Progress::Unanswered);
        let clone = p.clone();
        clone.not_sent();
        assert_eq!(p.get(), Progress::NotSent, "clones share the report");
    }
}
