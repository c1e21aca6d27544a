//! The upstream connections: the shared pool of idle ones, what each
//! client connection keeps for its next requests, and routing a request
//! onto one of them.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::header::HeaderValue;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tower_pkce::ForwardProgress;

use super::errors::UpstreamError;
use super::service::{Connecting, Step};
use super::wait::{Pending, wait_for_connection};
use super::{ClientScheme, Shared, mark};
use crate::config::{Config, Upstream};
use crate::gate::{Gate, Slot};
use crate::h1::client::{Connection, Home, Keep, Prepared, Stream};

/// The idle connections of one client connection, boxed: a connection
/// moves between the pool, a request and its response as one pointer.
pub(super) type IdleList = Mutex<Vec<Box<Connection>>>;

/// Connections to the upstream, idle, that no client connection holds, and
/// a way to reach those that client connections hold.
pub(super) struct Pool {
    host: String,
    port: u16,
    /// For an HTTPS upstream: the TLS client and the name its certificate
    /// must carry.
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
    idle: Mutex<Vec<(Box<Connection>, Instant)>>,
    max_idle: usize,
    idle_timeout: Duration,
    /// Each client connection's idle list, by its number: when every
    /// upstream connection allowed is open, a request takes an idle one
    /// that another client connection keeps (see [`Pool::steal`]).
    held: Mutex<HashMap<u64, Arc<IdleList>>>,
    next_id: AtomicU64,
}

/// What one client connection keeps: its peer's address, ready to be an
/// `X-Forwarded-For` value, its idle upstream connections, and its
/// requests' shares of upstream connections.
pub(super) struct ClientConnection {
    pub(super) client_ip: Option<HeaderValue>,
    /// How the client reached the proxy: `X-Forwarded-Proto`, unless a
    /// trusted proxy sent one.
    pub(super) proto: HeaderValue,
    /// Whether the peer is a trusted proxy, whose `X-Forwarded-*` fields
    /// are kept.
    pub(super) trusted: bool,
    idle: Arc<IdleList>,
    shared: Option<Arc<Shared>>,
    /// A response timer that outlives its request, lent to the next one.
    timer: Mutex<Option<Pin<Box<Sleep>>>>,
    /// One taken by each request from when it is routed until its
    /// upstream connection is back (see [`Home`]).
    pub(super) shares: Gate,
    /// Its number in the pool's `held`.
    id: u64,
}

impl ClientConnection {
    /// A client connection's state, with its idle list reachable from the
    /// pool.
    pub(super) fn new(
        shared: &Arc<Shared>,
        client_ip: Option<HeaderValue>,
        trusted: bool,
        scheme: ClientScheme,
    ) -> Arc<Self> {
        let idle = Arc::new(Mutex::new(Vec::new()));
        let id = shared.pool.hold(&idle);
        Arc::new(Self {
            client_ip,
            proto: HeaderValue::from_static(match scheme {
                ClientScheme::Http => "http",
                ClientScheme::Https => "https",
            }),
            trusted,
            idle,
            shared: Some(shared.clone()),
            timer: Mutex::new(None),
            shares: Gate::new(shared.per_client),
            id,
        })
    }

    /// A share of this connection's upstream connections, unless its
    /// requests use them all.
    pub(super) fn try_share(self: &Arc<Self>) -> Option<Home> {
        self.shares.try_take().then(|| Home::new(self.clone()))
    }

    /// The pool, with the count of upstream connections.
    fn pool(&self) -> Option<(&Pool, &Gate)> {
        let shared = self.shared.as_deref()?;
        Some((&shared.pool, &shared.open))
    }

    pub(super) fn checkout(&self) -> Option<Box<Connection>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(mut conn) = idle.pop() {
            if conn.is_usable() {
                return Some(conn);
            }
        }
        None
    }

    /// A timer that fires at `deadline`: the connection's own when no other
    /// request holds it, else a new one. Moving a registered timer's
    /// deadline later costs an atomic store, where a new timer is an
    /// insertion into the runtime's wheel and a removal after.
    pub(super) fn response_timer(&self, deadline: tokio::time::Instant) -> Pin<Box<Sleep>> {
        let lent = self
            .timer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match lent {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    /// Keeps `timer` for the next request, unless another one came back
    /// first. A request that is dropped half-way drops its timer instead.
    pub(super) fn give_back(&self, timer: Pin<Box<Sleep>>) {
        let mut slot = self.timer.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(timer);
        }
    }
}

impl Keep for ClientConnection {
    fn keep(&self, conn: Box<Connection>) {
        // While requests wait for an upstream connection, an idle one goes
        // where any of them can take it.
        if let Some((pool, open)) = self.pool()
            && open.waiting() > 0
        {
            pool.put(conn, open);
            return;
        }
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
    }

    fn release(&self) {
        self.shares.give_back();
    }
}

impl Drop for ClientConnection {
    fn drop(&mut self) {
        let Some((pool, open)) = self.pool() else {
            return;
        };
        pool.let_go(self.id);
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(PoisonError::into_inner));
        for conn in idle {
            pool.put(conn, open);
        }
    }
}

/// Where a request's upstream connection comes from, once it has waited.
pub(super) enum Source {
    /// An idle connection.
    Idle(Box<Connection>),
    /// A place for a new one.
    New(Slot),
}

impl Pool {
    pub(super) fn new(upstream: &Upstream, config: &Config) -> Result<Self, String> {
        let (host, port) = upstream.host_port();
        let tls = match &config.upstream_tls {
            Some(tls) => {
                let name = tls.server_name.as_deref().unwrap_or(host.as_str());
                let name = ServerName::try_from(name.to_owned())
                    .map_err(|_| format!("{name:?} is not a name a certificate can carry"))?;
                Some((tokio_rustls::TlsConnector::from(tls.client_config()?), name))
            }
            None => None,
        };
        Ok(Self {
            host,
            port,
            tls,
            connect_timeout: config.connect_timeout,
            idle: Mutex::new(Vec::new()),
            max_idle: config.limits.max_idle_upstream_connections,
            idle_timeout: config.limits.upstream_idle_timeout,
            held: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        })
    }

    pub(super) fn checkout(&self) -> Option<Box<Connection>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some((mut conn, since)) = idle.pop() {
            if since.elapsed() < self.idle_timeout && conn.is_usable() {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps `conn` idle in the shared pool, unless the pool is full or
    /// the connection unusable (then it closes); either way one waiting
    /// request is told.
    fn put(&self, mut conn: Box<Connection>, open: &Gate) {
        if conn.is_usable() {
            let now = Instant::now();
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < self.max_idle {
                idle.push((conn, now));
            }
        }
        open.wake();
    }

    /// The idle connections in the shared pool.
    pub(super) fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Closes the idle connections that have waited past the idle timeout
    /// or that the upstream closed.
    fn sweep(&self) {
        let timeout = self.idle_timeout;
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain_mut(|(conn, since)| since.elapsed() < timeout && conn.is_usable());
    }

    /// Registers a client connection's idle list; its number.
    fn hold(&self, idle: &Arc<IdleList>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, idle.clone());
        id
    }

    fn let_go(&self, id: u64) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }

    /// An idle connection that some client connection keeps for its next
    /// request: taken when every upstream connection allowed is open, so
    /// that connections idle with clients that are silent cannot keep the
    /// others waiting. Only a request that waits pays for the search.
    pub(super) fn steal(&self) -> Option<Box<Connection>> {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        for idle in held.values() {
            let mut idle = idle.lock().unwrap_or_else(PoisonError::into_inner);
            while let Some(mut conn) = idle.pop() {
                if conn.is_usable() {
                    return Some(conn);
                }
            }
        }
        None
    }

    /// A new connection to the upstream, holding `slot`, in a future of
    /// its own: a request waits for it in its state, and most requests
    /// never do.
    pub(super) fn connect(
        &self,
        slot: Slot,
    ) -> Pin<Box<dyn Future<Output = Result<Box<Connection>, UpstreamError>> + Send>> {
        let (host, port, timeout) = (self.host.clone(), self.port, self.connect_timeout);
        let tls = self.tls.clone();
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            let stream =
                tokio::time::timeout_at(deadline, TcpStream::connect((host.as_str(), port)))
                    .await
                    .map_err(|_| UpstreamError::ConnectTimeout)?
                    .map_err(UpstreamError::Connect)?;
            let _ = stream.set_nodelay(true);
            let Some((connector, name)) = tls else {
                return Ok(Connection::new(Stream::Plain(stream), slot));
            };
            let tls = tokio::time::timeout_at(deadline, connector.connect(name, stream))
                .await
                .map_err(|_| UpstreamError::ConnectTimeout)?
                .map_err(UpstreamError::Handshake)?;
            Ok(Connection::new(Stream::Tls(Box::new(tls)), slot))
        })
    }

    /// A request that has its share of `client`'s upstream connections on
    /// an idle connection of `client`'s or of the pool's, else on a new
    /// one, else, at the upstream bound, waiting for one. `prepare` writes
    /// the request into the buffer it is given: the idle connection's,
    /// which keeps its allocation from request to request, or a new one.
    pub(super) fn route(
        &self,
        shared: &Arc<Shared>,
        client: &Arc<ClientConnection>,
        progress: Option<&ForwardProgress>,
        prepare: impl FnOnce(Vec<u8>) -> Prepared,
    ) -> Step {
        if let Some(mut upstream) = client.checkout().or_else(|| self.checkout()) {
            let request = prepare(upstream.take_buffer());
            mark(progress, ForwardProgress::sent);
            return Step::Exchanging {
                exchange: request.send_on(upstream),
                reused: true,
            };
        }
        let request = prepare(Vec::with_capacity(1024));
        match Slot::take(&shared.open) {
            Some(slot) => Step::Connecting(Box::new(Connecting {
                connect: self.connect(slot),
                request,
            })),
            None => Step::Waiting(wait_for_connection(
                shared.clone(),
                client.clone(),
                Pending::Shared(request),
            )),
        }
    }
}

/// Closes the shared pool's idle connections past the idle timeout, a few
/// times per timeout, for as long as the forwarder lives. Without a
/// runtime (a forwarder built outside one) they are closed when a request
/// meets them instead.
pub(super) fn sweep_idle(shared: &Arc<Shared>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let pool = &shared.pool;
    let every = (pool.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(10));
    let shared = Arc::downgrade(shared);
    runtime.spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            shared.pool.sweep();
        }
    });
}
