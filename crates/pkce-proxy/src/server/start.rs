//! Starting the proxy: the listeners bound, the layer, the forwarder and
//! the admin state wired together, and the per-request closure; the
//! running proxy's handle and the TLS files checked while it runs.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tower::Layer;
use tower_pkce::{Endpoint, PkceLayer, Source};

use crate::config::Config;
use crate::forward::{ClientBody, Forwarder};
use crate::h1;
use crate::metrics::Metrics;
use crate::tls;

use super::accept::{Clients, bind, serve, serve_clients};
use super::admin::Admin;
use super::answer::{ProxyService, buffer_then_handle, handle, refusal};
use super::screen::{forwarded_client, screen};

/// Why the proxy could not start.
#[derive(Debug)]
pub struct StartError(pub(super) String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// A running proxy: its bound addresses, and the handle to stop it.
#[derive(Debug)]
pub struct Running {
    /// Where the proxy listens for clients.
    pub addr: SocketAddr,
    /// Where the admin endpoints are served.
    pub admin_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    pub(super) tls: Option<Arc<tls::Reloader>>,
}

impl Running {
    /// Reads the listener's certificate and key files now, as SIGHUP does,
    /// and serves them to new connections if they changed and are usable
    /// (see [`TLS_CHECK_INTERVAL`]). Without TLS, does nothing.
    pub async fn reload_tls(&self) {
        if let Some(reloader) = self.tls.clone() {
            // On a thread that may block: a file system that hangs must not
            // hold up the task that also waits for SIGTERM.
            if let Err(e) = tokio::task::spawn_blocking(move || reloader.check()).await {
                tracing::error!(error = %e, "reading the TLS certificate files failed");
            }
        }
    }

    /// Stops accepting connections, lets requests in flight finish (up to
    /// the drain timeout), and returns when everything is closed.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "a listener task failed");
            }
        }
    }
}

/// How often the listener's certificate and key files are read to see
/// whether they changed. They are small; reading them costs less than
/// watching them, and works on every file system and with the symbolic
/// links that Kubernetes swaps when it updates a secret.
pub const TLS_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// The soft limit on open files in `/proc/self/limits` text.
pub(super) fn open_files_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Warns when the process may open fewer files than the connection bounds
/// need: past that, accepts and upstream connects fail instead of the
/// limits acting. (Linux only; elsewhere nothing is read.)
pub(super) fn check_open_files(config: &Config) {
    let Some(soft) = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| open_files_limit(&text))
    else {
        return;
    };
    let limits = &config.limits;
    // The listeners, the admin connections, Redis and the like.
    let needed = (limits.max_connections + limits.max_upstream_connections) as u64 + 64;
    if soft < needed {
        tracing::warn!(
            open_files = soft,
            needed,
            "the open files limit is below --max-connections plus \
             --max-upstream-connections: raise it (ulimit -n, systemd's LimitNOFILE) \
             or lower them"
        );
    }
}

/// Binds both listeners and starts serving. Everything in `config` is
/// already valid; what can still fail is binding a port.
///
/// # Errors
///
/// [`StartError`] when a port cannot be bound or the TLS client cannot be
/// set up.
pub async fn start(config: Config) -> Result<Running, StartError> {
    check_open_files(&config);
    if config.trust_forwarded {
        tracing::warn!(
            "--trust-forwarded is deprecated: it keeps the X-Forwarded-* fields of every \
             peer, so any client can say which address and scheme it came from; give \
             --trusted-proxies with the load balancers' addresses instead"
        );
    }
    let metrics = Arc::new(Metrics::new().map_err(|e| StartError(e.to_string()))?);
    let store = crate::store::from_config(&config).map_err(|e| StartError(e.to_string()))?;
    let layer = Arc::new(
        config
            .policy(PkceLayer::with_store(store))
            .map_err(|e| StartError(e.to_string()))?,
    );
    let forwarder = Forwarder::new(&config, metrics.clone()).map_err(StartError)?;
    let tls = config.tls.as_ref().map(|tls| {
        Arc::new(tls::Reloader::new(
            &tls.cert,
            &tls.key,
            tls.loaded.clone(),
            metrics.clone(),
        ))
    });
    let acceptor = tls
        .as_ref()
        .map(|reloader| reloader.server_config().map(TlsAcceptor::from))
        .transpose()
        .map_err(StartError)?;

    let listener = bind("clients", config.listen).await?;
    let admin = bind("admin", config.admin_listen).await?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError(e.to_string()))?;
    let admin_addr = admin.local_addr().map_err(|e| StartError(e.to_string()))?;

    let upstream_load = forwarder.clone();
    let pkce: ProxyService = layer.layer(forwarder);
    let (stop, stop_rx) = watch::channel(false);
    let limits = &config.limits;
    let clients = Clients {
        proxy_protocol: config
            .proxy_protocol
            .then(|| config.trusted_proxies.clone()),
        settings: h1::server::Settings {
            head_timeout: limits.head_timeout,
            body_timeout: limits.body_timeout,
            send_timeout: limits.send_timeout,
            metrics: metrics.clone(),
            h2: h1::server::H2Settings {
                idle_timeout: limits.h2_idle_timeout,
                keepalive_interval: limits.h2_keepalive_interval,
                keepalive_timeout: limits.h2_keepalive_timeout,
                max_header_list_size: limits.h2_max_header_list_size,
                max_concurrent_streams: limits.h2_max_concurrent_streams,
            },
        },
        max_connections: limits.max_connections,
        shutdown: Arc::new(h1::server::Shutdown::default()),
        tls: acceptor,
    };
    let connections = clients.shutdown.clone();
    let request_buffer = limits.request_buffer;
    let budget = h1::server::Budget::new(limits.request_buffer_total, metrics.clone());
    let buffered = budget.clone();
    let proxy_task = {
        let layer = layer.clone();
        let metrics = metrics.clone();
        let trusted = Arc::new(config.trusted_proxies.clone());
        serve_clients(
            listener,
            stop_rx.clone(),
            config.drain_timeout,
            clients,
            move |peer, may_vouch, scheme| {
                // Each client connection gets its own forwarder: it keeps
                // the upstream connections that connection's requests use.
                let mut pkce = pkce.clone();
                let forwarder = pkce.get_ref().for_connection(peer, may_vouch, scheme);
                *pkce.get_mut() = forwarder;
                let layer = layer.clone();
                let metrics = metrics.clone();
                let budget = budget.clone();
                let peer_ip = peer.ip().to_canonical();
                let vouches = may_vouch && trusted.contains(peer_ip);
                let trusted = trusted.clone();
                move |mut req: Request<ClientBody>| {
                    // Classified once: the layer trusts its own mark, and
                    // the forwarder reads the endpoint the layer passes on.
                    let endpoint = layer.classify(&mut req);
                    if endpoint == Endpoint::Authorize {
                        let client = if vouches {
                            forwarded_client(req.headers(), peer_ip, &trusted)
                        } else {
                            peer_ip
                        };
                        req.extensions_mut().insert(Source::new(client));
                    }
                    let h2 = req.version() == http::Version::HTTP_2;
                    let bodiless = req.method() == Method::HEAD && h2;
                    // HTTP/1.1 that hyper serves, over TLS.
                    let close = !h2 && req.body().is_from_hyper();
                    let mut answer = match screen(&mut req) {
                        Ok(()) if req.body().is_unread() => buffer_then_handle(
                            pkce.clone(),
                            metrics.clone(),
                            endpoint,
                            req,
                            (request_buffer, budget.clone()),
                        ),
                        Ok(()) => handle(pkce.clone(), metrics.clone(), endpoint, req),
                        Err(refused) => refusal(refused, endpoint, metrics.clone(), close),
                    };
                    answer.bodiless = bodiless;
                    answer
                }
            },
        )
    };
    let admin_task = {
        let state = Arc::new(Admin {
            upstream: config.upstream.clone(),
            store: layer.get_store().clone(),
            metrics,
            connections,
            forwarder: upstream_load,
            buffered,
        });
        serve(
            admin,
            stop_rx.clone(),
            config.drain_timeout,
            "admin",
            move |_| {
                let state = state.clone();
                hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(state.answer(req).await) }
                })
            },
        )
    };
    let mut tasks = vec![proxy_task, admin_task];
    if let Some(reloader) = &tls {
        tasks.push(tokio::spawn(check_tls_files(reloader.clone(), stop_rx)));
    }
    tracing::info!(
        %addr,
        %admin_addr,
        tls = tls.is_some(),
        upstream = %format_args!("{}://{}", config.upstream.scheme, config.upstream.authority),
        "pkce-proxy listening"
    );
    Ok(Running {
        addr,
        admin_addr,
        stop,
        tasks,
        tls,
    })
}

/// Checks the listener's certificate files every [`TLS_CHECK_INTERVAL`]
/// until `stop` turns true.
pub(super) async fn check_tls_files(reloader: Arc<tls::Reloader>, mut stop: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(TLS_CHECK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once; the files were read at start.
    interval.tick().await;
    loop {
        tokio::select! {
            _ = interval.tick() => {
                let reloader = reloader.clone();
                // A read from a stuck network file system must not hold a
                // worker thread.
                if let Err(e) = tokio::task::spawn_blocking(move || reloader.check()).await {
                    tracing::error!(error = %e, "the TLS certificate check failed");
                }
            }
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_open_files_limit_is_read() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63704                63704                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(open_files_limit(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(open_files_limit(unlimited), None);
        assert_eq!(open_files_limit(""), None);
    }
}
