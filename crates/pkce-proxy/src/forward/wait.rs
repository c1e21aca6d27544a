//! A request that meets a bound: it waits, within the connect timeout, for
//! a share of its client connection's upstream connections, then for one.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::Request;
use tower_pkce::RequestBody;

use super::errors::UpstreamError;
use super::pool::{ClientConnection, Source};
use super::{ClientBody, Shared};
use crate::gate::{self, Slot};
use crate::h1::client::{HeaderOverrides, Home, Prepared, Reuse};
use crate::metrics::Limit;

/// A request not yet written: it is, once it has a share of its client
/// connection's upstream connections.
pub(super) struct Outbound {
    pub(super) req: Request<RequestBody<ClientBody>>,
    pub(super) overrides: HeaderOverrides,
    pub(super) reuse: Reuse,
}

impl Outbound {
    fn prepare(self, buf: Vec<u8>, home: Home) -> Prepared {
        Prepared::new(buf, self.req, &self.overrides, home, self.reuse)
    }
}

/// What a request that waits for an upstream connection has.
pub(super) enum Pending {
    /// Not yet a share of its client connection's.
    Unshared(Box<Outbound>),
    /// A share, but no connection.
    Shared(Prepared),
    /// A share, and it must go on a new connection: it is sent again after
    /// a reused one failed.
    Again(Prepared),
}

pub(super) type Waiting =
    Pin<Box<dyn Future<Output = Result<(Prepared, Source), UpstreamError>> + Send>>;

/// Waits, within the connect timeout, for what `pending` lacks: a share of
/// `client`'s upstream connections, then an idle connection or room for a
/// new one (an idle one that another client connection keeps, when every
/// one allowed is open). Cold, and kept out of line: only a request that
/// meets a bound comes here.
#[cold]
#[inline(never)]
pub(super) fn wait_for_connection(
    shared: Arc<Shared>,
    client: Arc<ClientConnection>,
    pending: Pending,
) -> Waiting {
    Box::pin(async move {
        let _waiting = gate::Waiter::count(&shared.waiting);
        let deadline = tokio::time::Instant::now() + shared.wait;
        let open = &shared.open;
        let request = match pending {
            Pending::Shared(request) => request,
            Pending::Unshared(outbound) => {
                let home = client
                    .shares
                    .wait_for(deadline, || client.try_share())
                    .await
                    .ok_or(UpstreamError::Limit(Limit::UpstreamConnectionsPerClient))?;
                outbound.prepare(Vec::with_capacity(1024), home)
            }
            Pending::Again(request) => {
                let slot = open
                    .wait_for(deadline, || Slot::take(open))
                    .await
                    .ok_or(UpstreamError::Limit(Limit::UpstreamConnections))?;
                return Ok((request, Source::New(slot)));
            }
        };
        let pool = &shared.pool;
        let source = open
            .wait_for(deadline, || {
                client
                    .checkout()
                    .or_else(|| pool.checkout())
                    .map(Source::Idle)
                    .or_else(|| Slot::take(open).map(Source::New))
                    .or_else(|| pool.steal().map(Source::Idle))
            })
            .await
            .ok_or(UpstreamError::Limit(Limit::UpstreamConnections))?;
        Ok((request, source))
    })
}
