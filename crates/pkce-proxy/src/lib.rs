//! `pkce-proxy`: a reverse proxy that puts [`tower_pkce`] in front of an
//! OAuth 2.0 authorization server that lacks PKCE.
//!
//! The binary is a thin shell around [`cli`]; tests start the proxy in
//! process with [`server::start`]:
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use pkce_proxy::config::{Config, RawSettings};
//!
//! let config = Config::resolve(&RawSettings {
//!     upstream: Some("http://127.0.0.1:8080".into()),
//!     listen: Some("127.0.0.1:0".into()),
//!     admin_listen: Some("127.0.0.1:0".into()),
//!     ..RawSettings::default()
//! })?;
//! let running = pkce_proxy::server::start(config).await?;
//! println!("proxy on {}", running.addr);
//! running.shutdown().await;
//! # Ok(()) }
//! ```

pub mod config;
pub mod demo;
pub mod forward;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod gate;
mod h1;
mod h2;
mod https;
pub mod metrics;
pub mod probe;
mod proxy_protocol;
pub mod server;
pub mod store;
mod target;
mod tls;
pub mod trusted_proxies;

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use tower_pkce::{ChallengeMethod, CodeChallenge, CodeVerifier};

use crate::config::{Cli, Command, Config, EXIT_USAGE, LogFormat, RawSettings};

fn usage_error(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("pkce-proxy: {message}");
    ExitCode::from(EXIT_USAGE as u8)
}

/// Parses the command line and runs what it asks for. Invalid settings
/// print one line and give exit code 64, before any socket is bound.
pub fn cli() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = e.print();
                    ExitCode::SUCCESS
                }
                _ => {
                    let text = e.to_string();
                    let first = text.lines().next().unwrap_or("invalid arguments");
                    usage_error(format!(
                        "{} (see --help)",
                        first.trim_start_matches("error: ")
                    ))
                }
            };
        }
    };
    match cli.command {
        Some(Command::Pair) => {
            let verifier = CodeVerifier::generate();
            let challenge = CodeChallenge::from_verifier(&verifier, ChallengeMethod::S256);
            println!("code_verifier={}", verifier.secret());
            println!("code_challenge={}", challenge.as_str());
            println!("code_challenge_method=S256");
            ExitCode::SUCCESS
        }
        Some(Command::Check { settings }) => match Config::resolve(&settings) {
            Ok(config) => {
                print!("{}", config.to_toml());
                ExitCode::SUCCESS
            }
            Err(e) => usage_error(e),
        },
        Some(Command::Demo) => with_runtime(0, async {
            match demo::run().await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("pkce-proxy demo failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }),
        Some(Command::Probe(probe)) => probe.run(),
        None => run_proxy(&cli.settings),
    }
}

fn run_proxy(settings: &RawSettings) -> ExitCode {
    let config = match Config::resolve(settings) {
        Ok(config) => config,
        Err(e) => return usage_error(e),
    };
    init_logging(config.log_format);
    with_runtime(config.runtime_threads(), async move {
        match server::run(config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "pkce-proxy could not start");
                eprintln!("pkce-proxy: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Runs `job` on a Tokio runtime with `threads` workers (0: Tokio's
/// default). One worker gets the single-threaded runtime: a proxy pinned to
/// one CPU then pays for no work stealing or cross-thread wake-ups.
fn with_runtime(threads: usize, job: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    let built = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if threads > 1 {
            builder.worker_threads(threads);
        }
        builder.enable_all().build()
    };
    match built {
        Ok(runtime) => runtime.block_on(job),
        Err(e) => {
            eprintln!("pkce-proxy: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr; `PKCE_PROXY_LOG` (a `tracing` filter such as `debug` or
/// `tower_pkce=debug`) sets the level, `info` by default.
fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("PKCE_PROXY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Err(e) = result {
        eprintln!("pkce-proxy: logging not set up: {e}");
    }
}
