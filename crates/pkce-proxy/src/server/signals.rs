//! Running until a signal: SIGTERM and SIGINT drain and stop, SIGHUP reads
//! the TLS certificate files again.

use crate::config::Config;

use super::start::{StartError, start};

/// Runs until SIGTERM or SIGINT, then shuts down gracefully. SIGHUP reads
/// the listener's certificate files again.
///
/// # Errors
///
/// [`StartError`] when the proxy cannot start.
pub async fn run(config: Config) -> Result<(), StartError> {
    // Watch the signals before the "listening" line goes out: a SIGTERM sent
    // as soon as it appears must drain, not meet the default disposition.
    let mut signals = Signals::watch();
    let running = start(config).await?;
    while signals.next().await == Signal::Hangup {
        if running.tls.is_some() {
            tracing::info!("SIGHUP: reading the TLS certificate files");
            running.reload_tls().await;
        } else {
            tracing::info!("SIGHUP: no TLS certificate to read again");
        }
    }
    tracing::info!("shutting down: draining requests in flight");
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Signal {
    /// SIGTERM or SIGINT: shut down.
    Stop,
    /// SIGHUP: read the certificate files again.
    Hangup,
}

/// SIGTERM, SIGINT and SIGHUP, watched from the moment this is made (from
/// then on SIGHUP no longer ends the process, as its default would).
pub(super) struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn watch() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let watch = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch {name}");
                    None
                }
            };
            Self {
                term: watch(SignalKind::terminate(), "SIGTERM"),
                int: watch(SignalKind::interrupt(), "SIGINT"),
                hup: watch(SignalKind::hangup(), "SIGHUP"),
            }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    /// The next signal.
    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            async fn next(signal: &mut Option<tokio::signal::unix::Signal>) {
                match signal {
                    Some(s) => {
                        if s.recv().await.is_none() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = next(&mut self.term) => Signal::Stop,
                () = next(&mut self.int) => Signal::Stop,
                () = next(&mut self.hup) => Signal::Hangup,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Stop
        }
    }
}
