//! Settings: command-line flags, environment variables and a TOML file,
//! resolved in that order of precedence and validated in full before any
//! socket is bound.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use http::Uri;
use tower_pkce::store::Store;
use tower_pkce::{PkceLayer, Requirement};

use crate::tls;
use crate::trusted_proxies::TrustedProxies;

/// The exit code for invalid settings (`EX_USAGE` in sysexits.h).
pub const EXIT_USAGE: i32 = 64;

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "pkce-proxy",
    version,
    about = "Adds PKCE (RFC 7636) in front of an OAuth 2.0 authorization server that lacks it",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do; without one, run the proxy.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The proxy's settings.
    #[command(flatten)]
    pub settings: RawSettings,
}

/// The subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Runs a whole flow on loopback: a PKCE-unaware example server, the
    /// proxy in front of it, and a client. Needs no other server.
    Demo,
    /// Prints a fresh code_verifier and its S256 code_challenge.
    Pair,
    /// Resolves and validates the settings (flags, environment, file), prints
    /// them as TOML, and exits.
    Check {
        /// The same settings as the proxy takes.
        #[command(flatten)]
        settings: Box<RawSettings>,
    },
    /// Sends one HTTP/1.1 GET over plain TCP and exits 0 on a 2xx answer,
    /// 1 otherwise: a health check for images without curl.
    Probe(crate::probe::Probe),
}

/// The settings as written on the command line or in the environment:
/// text, to be checked by [`Config::resolve`] so that every bad value gets
/// the same one-line error.
#[derive(Debug, Clone, Default, Args)]
pub struct RawSettings {
    /// The authorization server to protect: http:// or https://, with an
    /// optional path prefix.
    #[arg(long, env = "PKCE_PROXY_UPSTREAM", value_name = "URL")]
    pub upstream: Option<String>,
    /// With an https:// upstream: a PEM bundle of the authorities to trust
    /// for its certificate, instead of the system's.
    #[arg(long, env = "PKCE_PROXY_UPSTREAM_CA", value_name = "FILE")]
    pub upstream_ca: Option<String>,
    /// With an https:// upstream: the certificate chain (PEM) the proxy
    /// presents when the upstream asks for one (mutual TLS).
    #[arg(long, env = "PKCE_PROXY_UPSTREAM_CLIENT_CERT", value_name = "FILE")]
    pub upstream_client_cert: Option<String>,
    /// The private key (PEM) of --upstream-client-cert.
    #[arg(long, env = "PKCE_PROXY_UPSTREAM_CLIENT_KEY", value_name = "FILE")]
    pub upstream_client_key: Option<String>,
    /// With an https:// upstream: the name sent in SNI and that its
    /// certificate must carry, when not the --upstream host.
    #[arg(long, env = "PKCE_PROXY_UPSTREAM_SERVER_NAME", value_name = "NAME")]
    pub upstream_server_name: Option<String>,
    /// Where to listen for clients [default: 127.0.0.1:8443].
    #[arg(long, env = "PKCE_PROXY_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// The upstream's authorization endpoint path [default: /authorize].
    #[arg(long, env = "PKCE_PROXY_AUTHORIZE_PATH", value_name = "PATH")]
    pub authorize_path: Option<String>,
    /// The upstream's token endpoint path [default: /token].
    #[arg(long, env = "PKCE_PROXY_TOKEN_PATH", value_name = "PATH")]
    pub token_path: Option<String>,
    /// Whether every client must use PKCE: required or optional [default: required].
    #[arg(long, env = "PKCE_PROXY_PKCE", value_name = "MODE")]
    pub pkce: Option<String>,
    /// Accept code_challenge_method=plain (RFC 9700 advises against it).
    #[arg(long, env = "PKCE_PROXY_ALLOW_PLAIN", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub allow_plain: Option<String>,
    /// Remove the PKCE parameters before forwarding to the upstream.
    #[arg(long, env = "PKCE_PROXY_STRIP_PKCE_PARAMS", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub strip_pkce_params: Option<String>,
    /// How long, in seconds, a pending authorization or a code binding lives [default: 600].
    #[arg(long, env = "PKCE_PROXY_TTL", value_name = "SECONDS")]
    pub ttl: Option<String>,
    /// The most records kept (pending authorizations and bindings together) [default: 1000000].
    #[arg(long, env = "PKCE_PROXY_MAX_ENTRIES", value_name = "N")]
    pub max_entries: Option<String>,
    /// The most pending authorizations one client address (IPv6: one /64) holds; past it, its new ones get 429 [default: 10000].
    #[arg(long, env = "PKCE_PROXY_MAX_PENDING_PER_SOURCE", value_name = "N")]
    pub max_pending_per_source: Option<String>,
    /// The largest token request body, in bytes; larger ones get 413 [default: 65536].
    #[arg(long, env = "PKCE_PROXY_MAX_TOKEN_BODY", value_name = "BYTES")]
    pub max_token_body: Option<String>,
    /// Where to serve /healthz, /readyz and /metrics [default: 127.0.0.1:9901].
    #[arg(long, env = "PKCE_PROXY_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// Deprecated: trust every peer's X-Forwarded-* headers (use
    /// --trusted-proxies with the load balancers' addresses).
    #[arg(long, env = "PKCE_PROXY_TRUST_FORWARDED", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub trust_forwarded: Option<String>,
    /// Peers whose X-Forwarded-For, -Proto and -Host are kept (and
    /// X-Forwarded-For appended to): comma-separated addresses or CIDR
    /// blocks, such as 10.0.0.0/8,fd00::/8. From any other peer they are
    /// replaced [default: none].
    #[arg(long, env = "PKCE_PROXY_TRUSTED_PROXIES", value_name = "LIST")]
    pub trusted_proxies: Option<String>,
    /// Read a PROXY protocol header (v1 or v2) at the start of every
    /// connection from --trusted-proxies, and take the client's address
    /// from it (a TCP load balancer such as AWS NLB or HAProxy).
    #[arg(long, env = "PKCE_PROXY_PROXY_PROTOCOL", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub proxy_protocol: Option<String>,
    /// The client listener's certificate chain, PEM, leaf first: with
    /// --tls-key, clients connect with TLS (HTTP/2 and HTTP/1.1); the file
    /// is read again when it changes.
    #[arg(long, env = "PKCE_PROXY_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<String>,
    /// The private key of --tls-cert, PEM (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "PKCE_PROXY_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<String>,
    /// A TOML file with any of these settings (keys in snake_case).
    #[arg(long, env = "PKCE_PROXY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format: pretty or json [default: pretty].
    #[arg(long, env = "PKCE_PROXY_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Seconds to wait for a connection to the upstream, new or, at the
    /// connection bounds, one that comes free [default: 5].
    #[arg(long, env = "PKCE_PROXY_CONNECT_TIMEOUT", value_name = "SECONDS")]
    pub connect_timeout: Option<String>,
    /// Seconds to wait for the upstream's response headers [default: 30].
    #[arg(long, env = "PKCE_PROXY_RESPONSE_TIMEOUT", value_name = "SECONDS")]
    pub response_timeout: Option<String>,
    /// Seconds to let requests in flight finish at shutdown [default: 10].
    #[arg(long, env = "PKCE_PROXY_DRAIN_TIMEOUT", value_name = "SECONDS")]
    pub drain_timeout: Option<String>,
    /// Threads that serve requests: a number, or auto for one per CPU this
    /// process may run on; with one, a single-threaded runtime [default: auto].
    #[arg(long, env = "PKCE_PROXY_WORKER_THREADS", value_name = "N")]
    pub worker_threads: Option<String>,
    /// Browser origins allowed to read token endpoint rejections (CORS),
    /// comma-separated.
    #[arg(long, env = "PKCE_PROXY_ALLOWED_ORIGINS", value_name = "ORIGINS")]
    pub allowed_origins: Option<String>,
    /// Where records are kept: memory, or a Redis URL such as
    /// redis://127.0.0.1:6379/0 (rediss:// for TLS) that several replicas
    /// share [default: memory].
    #[arg(long, env = "PKCE_PROXY_STORE", value_name = "STORE")]
    pub store: Option<String>,
    /// The prefix of the Redis keys; replicas that share records share it [default: pkce].
    #[arg(long, env = "PKCE_PROXY_REDIS_PREFIX", value_name = "PREFIX")]
    pub redis_prefix: Option<String>,
    /// Seconds to wait for Redis before failing closed with 503 [default: 1].
    #[arg(long, env = "PKCE_PROXY_REDIS_TIMEOUT", value_name = "SECONDS")]
    pub redis_timeout: Option<String>,
    /// A PEM bundle of the authorities that sign Redis's certificate, trusted
    /// instead of the system's (rediss:// only).
    #[arg(long, env = "PKCE_PROXY_REDIS_CA", value_name = "FILE")]
    pub redis_ca: Option<String>,
    /// A PEM certificate chain to present to Redis, for mutual TLS
    /// (rediss:// only; with --redis-client-key).
    #[arg(long, env = "PKCE_PROXY_REDIS_CLIENT_CERT", value_name = "FILE")]
    pub redis_client_cert: Option<String>,
    /// The PEM private key of --redis-client-cert.
    #[arg(long, env = "PKCE_PROXY_REDIS_CLIENT_KEY", value_name = "FILE")]
    pub redis_client_key: Option<String>,
    /// The most client connections open at once; past it, new ones are
    /// closed as soon as they are accepted [default: 10000].
    #[arg(long, env = "PKCE_PROXY_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<String>,
    /// The most connections to the upstream open at once, idle ones
    /// included [default: 1024].
    #[arg(long, env = "PKCE_PROXY_MAX_UPSTREAM_CONNECTIONS", value_name = "N")]
    pub max_upstream_connections: Option<String>,
    /// The most upstream connections one client connection's requests use
    /// at once [default: 8].
    #[arg(
        long,
        env = "PKCE_PROXY_MAX_UPSTREAM_CONNECTIONS_PER_CLIENT",
        value_name = "N"
    )]
    pub max_upstream_connections_per_client: Option<String>,
    /// The most idle upstream connections kept in the shared pool [default: 1024].
    #[arg(
        long,
        env = "PKCE_PROXY_MAX_IDLE_UPSTREAM_CONNECTIONS",
        value_name = "N"
    )]
    pub max_idle_upstream_connections: Option<String>,
    /// Seconds an idle upstream connection is kept in the shared pool [default: 90].
    #[arg(long, env = "PKCE_PROXY_UPSTREAM_IDLE_TIMEOUT", value_name = "SECONDS")]
    pub upstream_idle_timeout: Option<String>,
    /// Seconds a client has to send a request head; also how long an idle
    /// HTTP/1.1 connection is kept [default: 30].
    #[arg(long, env = "PKCE_PROXY_HEAD_TIMEOUT", value_name = "SECONDS")]
    pub head_timeout: Option<String>,
    /// Seconds a request body may pause between two reads [default: 30].
    #[arg(long, env = "PKCE_PROXY_BODY_TIMEOUT", value_name = "SECONDS")]
    pub body_timeout: Option<String>,
    /// Seconds a response may wait for a client that does not read [default: 30].
    #[arg(long, env = "PKCE_PROXY_SEND_TIMEOUT", value_name = "SECONDS")]
    pub send_timeout: Option<String>,
    /// Request bodies up to this many bytes are read whole before an
    /// upstream connection is chosen; larger ones stream [default: 65536].
    #[arg(long, env = "PKCE_PROXY_REQUEST_BUFFER", value_name = "BYTES")]
    pub request_buffer: Option<String>,
    /// The most bytes of request bodies read ahead at once, all requests
    /// together; past it, a body streams [default: 67108864].
    #[arg(long, env = "PKCE_PROXY_REQUEST_BUFFER_TOTAL", value_name = "BYTES")]
    pub request_buffer_total: Option<String>,
    /// Seconds an HTTP/2 connection with no request open is kept [default: 60].
    #[arg(long, env = "PKCE_PROXY_H2_IDLE_TIMEOUT", value_name = "SECONDS")]
    pub h2_idle_timeout: Option<String>,
    /// Seconds between HTTP/2 PING frames to a silent client [default: 20].
    #[arg(long, env = "PKCE_PROXY_H2_KEEPALIVE_INTERVAL", value_name = "SECONDS")]
    pub h2_keepalive_interval: Option<String>,
    /// Seconds an HTTP/2 client has to answer a PING before the connection
    /// closes [default: 20].
    #[arg(long, env = "PKCE_PROXY_H2_KEEPALIVE_TIMEOUT", value_name = "SECONDS")]
    pub h2_keepalive_timeout: Option<String>,
    /// The largest HTTP/2 header list, in bytes (RFC 9113 §6.5.2) [default: 65536].
    #[arg(long, env = "PKCE_PROXY_H2_MAX_HEADER_LIST_SIZE", value_name = "BYTES")]
    pub h2_max_header_list_size: Option<String>,
    /// The most requests open at once on one HTTP/2 connection [default: 100].
    #[arg(long, env = "PKCE_PROXY_H2_MAX_CONCURRENT_STREAMS", value_name = "N")]
    pub h2_max_concurrent_streams: Option<String>,
}

/// Where the proxy keeps its records.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreSetting {
    /// In this process: one replica only.
    Memory,
    /// In Redis, shared by every replica with the same URL and prefix.
    Redis {
        /// The `redis://` or `rediss://` URL, credentials included.
        url: String,
        /// The key prefix.
        prefix: String,
        /// The bound on each operation.
        timeout: Duration,
        /// For a `rediss://` URL, what to trust and present; `None` for
        /// `redis://`.
        tls: Option<RedisTlsFiles>,
    },
}

/// The files of TLS to Redis, checked when the settings were resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTlsFiles {
    /// `--redis-ca`: the authorities to trust; `None` for the system's.
    pub ca: Option<PathBuf>,
    /// `--redis-client-cert` and `--redis-client-key`, for mutual TLS.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl fmt::Debug for StoreSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory => f.write_str("Memory"),
            Self::Redis {
                url,
                prefix,
                timeout,
                tls,
            } => f
                .debug_struct("Redis")
                .field("url", &redact_url(url))
                .field("prefix", prefix)
                .field("timeout", timeout)
                .field("tls", tls)
                .finish(),
        }
    }
}

/// `url` with any credentials replaced by `***`, for printing: everything
/// between the scheme and the last `@` (a password may hold `/`, `?` or
/// `#`). Without a scheme, any `@` hides the whole text.
pub fn redact_url(url: &str) -> String {
    let Some(at) = url.rfind('@') else {
        return url.to_owned();
    };
    match url.split_once("://") {
        Some((scheme, _)) if scheme.len() < at => format!("{scheme}://***{}", &url[at..]),
        _ => "***".to_owned(),
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// The upstream authorization server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    /// Host and port.
    pub authority: http::uri::Authority,
    /// A path prefix put before every request path (empty for none).
    pub base_path: String,
}

impl Upstream {
    /// The host and port to connect to.
    pub fn host_port(&self) -> (String, u16) {
        let default = if self.scheme == http::uri::Scheme::HTTPS {
            443
        } else {
            80
        };
        let host = self
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        (
            host.to_owned(),
            self.authority.port_u16().unwrap_or(default),
        )
    }
}

/// How the proxy speaks TLS to an https:// upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// The authorities trusted for the upstream's certificate; `None` for
    /// the system's.
    pub ca: Option<PathBuf>,
    /// The certificate chain and the key the proxy presents (mutual TLS).
    pub client_identity: Option<(PathBuf, PathBuf)>,
    /// The name the upstream's certificate must carry, and the SNI, when
    /// not the upstream's host.
    pub server_name: Option<String>,
}

impl UpstreamTls {
    /// The TLS client these settings describe, its files read now.
    pub(crate) fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        let roots = tls::roots("upstream-ca", self.ca.as_deref())?;
        let identity = match &self.client_identity {
            Some((cert, key)) => Some(tls::read_identity(
                ("upstream-client-cert", cert),
                ("upstream-client-key", key),
            )?),
            None => None,
        };
        Ok(Arc::new(tls::client_config(
            roots,
            identity,
            &[b"http/1.1"],
        )?))
    }
}

/// The bounds on what clients and the upstream may hold: connections,
/// timeouts and buffers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Client connections open at once.
    pub max_connections: usize,
    /// Upstream connections open at once, idle ones included.
    pub max_upstream_connections: usize,
    /// Upstream connections one client connection's requests use at once.
    pub max_upstream_connections_per_client: usize,
    /// Idle upstream connections in the shared pool.
    pub max_idle_upstream_connections: usize,
    /// How long an idle upstream connection stays in the shared pool.
    pub upstream_idle_timeout: Duration,
    /// How long a client has to send a request head (and an idle HTTP/1.1
    /// connection stays open).
    pub head_timeout: Duration,
    /// The longest pause between two reads of a request body.
    pub body_timeout: Duration,
    /// The longest a response waits for a client to read it.
    pub send_timeout: Duration,
    /// Request bodies up to this size are read whole before forwarding.
    pub request_buffer: usize,
    /// The bytes of request bodies read ahead at once, all together.
    pub request_buffer_total: usize,
    /// How long an HTTP/2 connection with no request open stays open.
    pub h2_idle_timeout: Duration,
    /// The interval between HTTP/2 keep-alive pings.
    pub h2_keepalive_interval: Duration,
    /// How long a keep-alive ping may go unanswered.
    pub h2_keepalive_timeout: Duration,
    /// The largest HTTP/2 header list a client may send.
    pub h2_max_header_list_size: u32,
    /// The most concurrent streams on one HTTP/2 connection.
    pub h2_max_concurrent_streams: u32,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The authorization server.
    pub upstream: Upstream,
    /// TLS to the upstream, when it is https://.
    pub upstream_tls: Option<UpstreamTls>,
    /// The client listener.
    pub listen: SocketAddr,
    /// The admin listener.
    pub admin_listen: SocketAddr,
    /// The authorization endpoint path.
    pub authorize_path: String,
    /// The token endpoint path.
    pub token_path: String,
    /// PKCE required or optional.
    pub requirement: Requirement,
    /// Accept `plain`.
    pub allow_plain: bool,
    /// Strip PKCE parameters upstream.
    pub strip_pkce_params: bool,
    /// Record lifetime.
    pub ttl: Duration,
    /// Store capacity.
    pub max_entries: usize,
    /// Per-source quota on pending authorizations.
    pub max_pending_per_source: usize,
    /// Token body bound.
    pub max_token_body: usize,
    /// The deprecated `--trust-forwarded` was given (every peer trusted).
    pub trust_forwarded: bool,
    /// The peers whose X-Forwarded-* headers are kept.
    pub trusted_proxies: TrustedProxies,
    /// Trusted peers send a PROXY protocol header first.
    pub proxy_protocol: bool,
    /// TLS on the client listener.
    pub tls: Option<ListenerTls>,
    /// Log format.
    pub log_format: LogFormat,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Upstream response timeout.
    pub response_timeout: Duration,
    /// Shutdown drain bound.
    pub drain_timeout: Duration,
    /// Runtime worker threads; `None` for one per available CPU.
    pub worker_threads: Option<usize>,
    /// CORS origins for rejections.
    pub allowed_origins: Vec<String>,
    /// Where records are kept.
    pub store: StoreSetting,
    /// Connections, timeouts and buffers.
    pub limits: Limits,
}

/// The client listener's certificate and key: the files, and what was
/// read from them at start.
#[derive(Clone)]
pub struct ListenerTls {
    /// The certificate chain, PEM.
    pub cert: PathBuf,
    /// Its private key, PEM.
    pub key: PathBuf,
    pub(crate) loaded: crate::tls::Loaded,
}

impl fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerTls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// A setting that cannot be used. Its `Display` is the one line printed
/// before exiting with [`EXIT_USAGE`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The setting, as its flag name.
    pub setting: String,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    fn new(setting: &str, message: impl Into<String>) -> Self {
        Self {
            setting: setting.to_owned(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid setting {}: {}", self.setting, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The settings a TOML file may hold, by key.
const FILE_KEYS: &[&str] = &[
    "upstream",
    "upstream_ca",
    "upstream_client_cert",
    "upstream_client_key",
    "upstream_server_name",
    "listen",
    "authorize_path",
    "token_path",
    "pkce",
    "allow_plain",
    "strip_pkce_params",
    "ttl",
    "max_entries",
    "max_pending_per_source",
    "max_token_body",
    "admin_listen",
    "trust_forwarded",
    "trusted_proxies",
    "proxy_protocol",
    "tls_cert",
    "tls_key",
    "log_format",
    "connect_timeout",
    "response_timeout",
    "drain_timeout",
    "worker_threads",
    "allowed_origins",
    "store",
    "redis_prefix",
    "redis_timeout",
    "redis_ca",
    "redis_client_cert",
    "redis_client_key",
    "max_connections",
    "max_upstream_connections",
    "max_upstream_connections_per_client",
    "max_idle_upstream_connections",
    "upstream_idle_timeout",
    "head_timeout",
    "body_timeout",
    "send_timeout",
    "request_buffer",
    "request_buffer_total",
    "h2_idle_timeout",
    "h2_keepalive_interval",
    "h2_keepalive_timeout",
    "h2_max_header_list_size",
    "h2_max_concurrent_streams",
];

/// One setting's text from the highest-precedence source that has it.
struct Sources {
    file: toml::Table,
}

impl Sources {
    fn load(path: Option<&PathBuf>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self {
                file: toml::Table::new(),
            });
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new("--config", format!("cannot read {}: {e}", path.display()))
        })?;
        let file: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let first = e.to_string();
            let first = first.lines().next().unwrap_or("").to_owned();
            ConfigError::new(
                "--config",
                format!("{} is not valid TOML: {first}", path.display()),
            )
        })?;
        if let Some(unknown) = file.keys().find(|k| !FILE_KEYS.contains(&k.as_str())) {
            return Err(ConfigError::new(
                "--config",
                format!("unknown key {unknown:?} in {}", path.display()),
            ));
        }
        Ok(Self { file })
    }

    /// The value of `key`: the flag or environment variable (clap has
    /// already ranked those two), else the file, as text.
    fn get(&self, cli: &Option<String>, key: &str) -> Result<Option<String>, ConfigError> {
        if let Some(v) = cli {
            return Ok(Some(v.clone()));
        }
        match self.file.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(toml::Value::Integer(i)) => Ok(Some(i.to_string())),
            Some(toml::Value::Float(f)) => Ok(Some(f.to_string())),
            Some(toml::Value::Boolean(b)) => Ok(Some(b.to_string())),
            Some(toml::Value::Array(items)) => {
                let mut out = Vec::new();
                for item in items {
                    match item {
                        toml::Value::String(s) => out.push(s.clone()),
                        _ => return Err(file_type_error(key, "a list of strings")),
                    }
                }
                Ok(Some(out.join(",")))
            }
            Some(_) => Err(file_type_error(key, "a string, number or boolean")),
        }
    }
}

fn file_type_error(key: &str, want: &str) -> ConfigError {
    ConfigError::new(
        &flag(key),
        format!("the config file's {key} must be {want}"),
    )
}

fn flag(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

/// `--trusted-proxies`, or the deprecated `--trust-forwarded` (every
/// peer); not both.
fn parse_trusted(src: &Sources, raw: &RawSettings) -> Result<(bool, TrustedProxies), ConfigError> {
    let everyone = parse_bool(
        "trust_forwarded",
        src.get(&raw.trust_forwarded, "trust_forwarded")?,
    )?;
    let listed = src
        .get(&raw.trusted_proxies, "trusted_proxies")?
        .map(|list| TrustedProxies::parse(&list))
        .transpose()
        .map_err(|e| ConfigError::new("--trusted-proxies", e))?;
    match (everyone, listed) {
        (true, Some(_)) => Err(ConfigError::new(
            "--trusted-proxies",
            "give it or the deprecated --trust-forwarded, not both",
        )),
        (true, None) => Ok((true, TrustedProxies::all())),
        (false, listed) => Ok((false, listed.unwrap_or_default())),
    }
}

/// `--proxy-protocol`, which needs the balancers that send it named.
fn parse_proxy_protocol(
    src: &Sources,
    raw: &RawSettings,
    trusted: &TrustedProxies,
    everyone: bool,
) -> Result<bool, ConfigError> {
    let on = parse_bool(
        "proxy_protocol",
        src.get(&raw.proxy_protocol, "proxy_protocol")?,
    )?;
    if on && (trusted.is_empty() || everyone) {
        return Err(ConfigError::new(
            "--proxy-protocol",
            "name the load balancers that send it with --trusted-proxies",
        ));
    }
    Ok(on)
}

/// `--tls-cert` and `--tls-key`, both or neither, read and checked to
/// belong together.
fn parse_tls(src: &Sources, raw: &RawSettings) -> Result<Option<ListenerTls>, ConfigError> {
    let cert = src.get(&raw.tls_cert, "tls_cert")?;
    let key = src.get(&raw.tls_key, "tls_key")?;
    let (cert, key) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (PathBuf::from(cert), PathBuf::from(key)),
        (Some(_), None) => {
            return Err(ConfigError::new(
                "--tls-key",
                "is required with --tls-cert: give both or neither",
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                "--tls-cert",
                "is required with --tls-key: give both or neither",
            ));
        }
    };
    let loaded = crate::tls::Loaded::read(&cert, &key).map_err(|line| {
        // The line starts with the setting at fault: `--tls-key: file: why`.
        match line.split_once(": ") {
            Some((setting, why)) if setting.starts_with("--tls-") => ConfigError::new(setting, why),
            _ => ConfigError::new("--tls-cert", line),
        }
    })?;
    Ok(Some(ListenerTls { cert, key, loaded }))
}

fn parse_bool(key: &str, text: Option<String>) -> Result<bool, ConfigError> {
    match text.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => Ok(false),
        Some("true" | "1" | "yes" | "on") => Ok(true),
        Some("false" | "0" | "no" | "off" | "") => Ok(false),
        Some(other) => Err(ConfigError::new(
            &flag(key),
            format!("{other:?} is not true or false"),
        )),
    }
}

/// The default per-source quota on pending authorizations.
///
/// A pending authorization lives from the authorization request until its
/// code is issued (the time a person takes to sign in, seconds to a
/// minute), or until its TTL ends when the sign-in is abandoned. For the
/// busiest shared address (a corporate or carrier-grade NAT) to hold
/// 10,000 at once, it would need about 300 sign-ins a second taking 30 s
/// each, or 17 abandoned every second for ten minutes: far past what one
/// address sees. At the default capacity it is 1% of the store, so filling
/// the store takes a hundred addresses, and eviction answers those.
pub const DEFAULT_MAX_PENDING_PER_SOURCE: usize = 10_000;

fn parse_count(
    key: &str,
    text: Option<String>,
    default: usize,
    min: usize,
) -> Result<usize, ConfigError> {
    let Some(text) = text else { return Ok(default) };
    let n: usize = text
        .trim()
        .parse()
        .map_err(|_| ConfigError::new(&flag(key), format!("{text:?} is not a whole number")))?;
    if n < min {
        return Err(ConfigError::new(
            &flag(key),
            format!("must be at least {min}"),
        ));
    }
    Ok(n)
}

fn parse_seconds(
    key: &str,
    text: Option<String>,
    default: f64,
    min: f64,
) -> Result<Duration, ConfigError> {
    let Some(text) = text else {
        return Ok(Duration::from_secs_f64(default));
    };
    let secs: f64 = text.trim().parse().map_err(|_| {
        ConfigError::new(&flag(key), format!("{text:?} is not a number of seconds"))
    })?;
    if !secs.is_finite() || secs < min || secs > 365.0 * 86_400.0 {
        return Err(ConfigError::new(
            &flag(key),
            format!("must be between {min} and 31536000 seconds"),
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A count between `min` and `max` (`default` when unset).
fn count_within(
    key: &str,
    text: Option<String>,
    default: usize,
    (min, max): (usize, usize),
) -> Result<usize, ConfigError> {
    let n = parse_count(key, text, default, min)?;
    if n > max {
        return Err(ConfigError::new(
            &flag(key),
            format!("must be between {min} and {max}"),
        ));
    }
    Ok(n)
}

/// A number of seconds between `min` and `max` (`default` when unset).
fn seconds_within(
    key: &str,
    text: Option<String>,
    default: f64,
    (min, max): (f64, f64),
) -> Result<Duration, ConfigError> {
    let d = parse_seconds(key, text, default, min)?;
    if d.as_secs_f64() > max {
        return Err(ConfigError::new(
            &flag(key),
            format!("must be between {min} and {max} seconds"),
        ));
    }
    Ok(d)
}

/// The limits' settings. Defaults and bounds, with why:
///
/// - 10,000 client connections: an idle one costs about 13 KiB (its read
///   and write buffers and its task), so 130 MB at the bound, and with the
///   upstream connections it fits the usual 65,536 open files.
/// - 1,024 upstream connections, 8 per client connection: more than the
///   workers of most legacy servers, and a browser opens 6 HTTP/1.1
///   connections to an origin, so an HTTP/2 client loses nothing.
/// - Timeouts between client reads and writes of 30 s, as for the head.
/// - 64 KiB read ahead per request body, the token body's bound too, and
///   64 MiB for all of them together: a thousand such bodies at once.
fn parse_limits(src: &Sources, raw: &RawSettings) -> Result<Limits, ConfigError> {
    const SECONDS: (f64, f64) = (0.001, 3600.0);
    let max_upstream_connections = count_within(
        "max_upstream_connections",
        src.get(&raw.max_upstream_connections, "max_upstream_connections")?,
        1024,
        (1, 65_535),
    )?;
    let per_upstream_total = (1, max_upstream_connections);
    let request_buffer = count_within(
        "request_buffer",
        src.get(&raw.request_buffer, "request_buffer")?,
        65_536,
        (1, 16 << 20),
    )?;
    let seconds = |key: &str, cli: &Option<String>, default: f64| {
        seconds_within(key, src.get(cli, key)?, default, SECONDS)
    };
    let h2_count = |key: &str, cli: &Option<String>, default: usize, bounds: (usize, usize)| {
        count_within(key, src.get(cli, key)?, default, bounds)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
    };
    Ok(Limits {
        max_connections: count_within(
            "max_connections",
            src.get(&raw.max_connections, "max_connections")?,
            10_000,
            (1, 1_000_000),
        )?,
        max_upstream_connections,
        max_upstream_connections_per_client: count_within(
            "max_upstream_connections_per_client",
            src.get(
                &raw.max_upstream_connections_per_client,
                "max_upstream_connections_per_client",
            )?,
            8.min(max_upstream_connections),
            per_upstream_total,
        )?,
        max_idle_upstream_connections: count_within(
            "max_idle_upstream_connections",
            src.get(
                &raw.max_idle_upstream_connections,
                "max_idle_upstream_connections",
            )?,
            1024.min(max_upstream_connections),
            per_upstream_total,
        )?,
        upstream_idle_timeout: seconds("upstream_idle_timeout", &raw.upstream_idle_timeout, 90.0)?,
        head_timeout: seconds("head_timeout", &raw.head_timeout, 30.0)?,
        body_timeout: seconds("body_timeout", &raw.body_timeout, 30.0)?,
        send_timeout: seconds("send_timeout", &raw.send_timeout, 30.0)?,
        request_buffer,
        request_buffer_total: count_within(
            "request_buffer_total",
            src.get(&raw.request_buffer_total, "request_buffer_total")?,
            64 << 20,
            (
                request_buffer,
                usize::try_from(16u64 << 30).unwrap_or(usize::MAX),
            ),
        )?,
        h2_idle_timeout: seconds("h2_idle_timeout", &raw.h2_idle_timeout, 60.0)?,
        h2_keepalive_interval: seconds("h2_keepalive_interval", &raw.h2_keepalive_interval, 20.0)?,
        h2_keepalive_timeout: seconds("h2_keepalive_timeout", &raw.h2_keepalive_timeout, 20.0)?,
        h2_max_header_list_size: h2_count(
            "h2_max_header_list_size",
            &raw.h2_max_header_list_size,
            65_536,
            (1024, 16 << 20),
        )?,
        h2_max_concurrent_streams: h2_count(
            "h2_max_concurrent_streams",
            &raw.h2_max_concurrent_streams,
            100,
            (1, 10_000),
        )?,
    })
}

fn parse_addr(key: &str, text: Option<String>, default: &str) -> Result<SocketAddr, ConfigError> {
    let text = text.unwrap_or_else(|| default.to_owned());
    text.trim().parse().map_err(|_| {
        ConfigError::new(
            &flag(key),
            format!("{text:?} is not an IP address and port, such as 127.0.0.1:8443"),
        )
    })
}

/// A one-line error from `tls` (`--setting: file: why`) as the error of
/// that setting.
fn file_error(line: String) -> ConfigError {
    match line.split_once(": ") {
        Some((setting, why)) if setting.starts_with("--") => ConfigError::new(setting, why),
        _ => ConfigError::new("--upstream", line),
    }
}

/// The upstream's TLS settings, its files read and checked: `None` for a
/// plain-HTTP upstream, which takes none of them.
fn parse_upstream_tls(
    src: &Sources,
    raw: &RawSettings,
    upstream: &Upstream,
) -> Result<Option<UpstreamTls>, ConfigError> {
    let ca = src.get(&raw.upstream_ca, "upstream_ca")?;
    let cert = src.get(&raw.upstream_client_cert, "upstream_client_cert")?;
    let key = src.get(&raw.upstream_client_key, "upstream_client_key")?;
    let name = src.get(&raw.upstream_server_name, "upstream_server_name")?;
    if upstream.scheme != http::uri::Scheme::HTTPS {
        let given = [
            ("--upstream-ca", &ca),
            ("--upstream-client-cert", &cert),
            ("--upstream-client-key", &key),
            ("--upstream-server-name", &name),
        ];
        if let Some((setting, _)) = given.iter().find(|(_, value)| value.is_some()) {
            return Err(ConfigError::new(
                setting,
                "applies only to an https:// --upstream",
            ));
        }
        return Ok(None);
    }
    let client_identity = match (cert, key) {
        (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
        (None, None) => None,
        (Some(_), None) => {
            return Err(ConfigError::new(
                "--upstream-client-cert",
                "needs --upstream-client-key",
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                "--upstream-client-key",
                "needs --upstream-client-cert",
            ));
        }
    };
    if let Some(name) = &name
        && rustls_pki_types::ServerName::try_from(name.as_str()).is_err()
    {
        return Err(ConfigError::new(
            "--upstream-server-name",
            format!("{name:?} is not a DNS name or an IP address"),
        ));
    }
    let tls = UpstreamTls {
        ca: ca.map(PathBuf::from),
        client_identity,
        server_name: name,
    };
    tls.client_config().map_err(file_error)?;
    Ok(Some(tls))
}

fn parse_upstream(text: Option<String>) -> Result<Upstream, ConfigError> {
    let setting = "--upstream";
    let Some(text) = text else {
        return Err(ConfigError::new(
            setting,
            "is required (for example --upstream http://127.0.0.1:8080)",
        ));
    };
    let uri: Uri = text
        .trim()
        .parse()
        .map_err(|_| ConfigError::new(setting, format!("{text:?} is not a URL")))?;
    let scheme = uri.scheme().cloned().ok_or_else(|| {
        ConfigError::new(
            setting,
            format!("{text:?} needs a scheme: http:// or https://"),
        )
    })?;
    if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
        return Err(ConfigError::new(
            setting,
            format!("scheme {scheme} is not supported: use http:// or https://"),
        ));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| ConfigError::new(setting, format!("{text:?} has no host")))?;
    if authority.host().is_empty() {
        return Err(ConfigError::new(setting, format!("{text:?} has no host")));
    }
    if authority.as_str().contains('@') {
        return Err(ConfigError::new(setting, "must not contain credentials"));
    }
    if uri.query().is_some() {
        return Err(ConfigError::new(setting, "must not contain a query"));
    }
    let base_path = uri.path().trim_end_matches('/').to_owned();
    Ok(Upstream {
        scheme,
        authority,
        base_path,
    })
}

fn parse_store(src: &Sources, raw: &RawSettings) -> Result<StoreSetting, ConfigError> {
    let prefix = src.get(&raw.redis_prefix, "redis_prefix")?;
    let timeout = parse_seconds(
        "redis_timeout",
        src.get(&raw.redis_timeout, "redis_timeout")?,
        1.0,
        0.001,
    )?;
    let text = src.get(&raw.store, "store")?;
    let url = text.as_deref().map(str::trim);
    let tls = parse_redis_tls(src, raw, url.is_some_and(|u| u.starts_with("rediss://")))?;
    match url {
        None | Some("memory") => Ok(StoreSetting::Memory),
        Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => {
            let prefix =
                prefix.unwrap_or_else(|| tower_pkce::store::DEFAULT_REDIS_PREFIX.to_owned());
            if prefix.is_empty() || prefix.contains(['{', '}']) {
                return Err(ConfigError::new(
                    "--redis-prefix",
                    "must be non-empty and hold no '{' or '}'",
                ));
            }
            tower_pkce::store::check_redis_settings(url, &prefix).map_err(|e| {
                ConfigError::new("--store", format!("{:?} is {e}", redact_url(url)))
            })?;
            Ok(StoreSetting::Redis {
                url: url.to_owned(),
                prefix,
                timeout,
                tls,
            })
        }
        Some(other) => Err(ConfigError::new(
            "--store",
            format!(
                "{:?} is neither memory nor a redis:// or rediss:// URL",
                redact_url(other)
            ),
        )),
    }
}

/// `--redis-ca`, `--redis-client-cert` and `--redis-client-key`, read and
/// checked now so that a bad file stops the proxy at start: `Some` for a
/// `rediss://` store, and refused for any other.
fn parse_redis_tls(
    src: &Sources,
    raw: &RawSettings,
    rediss: bool,
) -> Result<Option<RedisTlsFiles>, ConfigError> {
    let path = |cli: &Option<String>, key: &str| -> Result<Option<PathBuf>, ConfigError> {
        let text = src.get(cli, key)?;
        if text.is_some() && !rediss {
            return Err(ConfigError::new(
                &flag(key),
                "is for TLS to Redis: give it with a rediss:// --store",
            ));
        }
        Ok(text.map(PathBuf::from))
    };
    let ca = path(&raw.redis_ca, "redis_ca")?;
    let cert = path(&raw.redis_client_cert, "redis_client_cert")?;
    let key = path(&raw.redis_client_key, "redis_client_key")?;
    if !rediss {
        return Ok(None);
    }
    tls::roots("redis-ca", ca.as_deref()).map_err(tls_error)?;
    // The Redis client reads the system's store at every connection, even
    // with --redis-ca, and fails the connection on any error in it.
    if let Some(e) = rustls_native_certs::load_native_certs().errors.first() {
        return Err(ConfigError::new(
            "--store",
            format!(
                "TLS to Redis needs a readable system certificate store, even with \
                 --redis-ca (check SSL_CERT_FILE and SSL_CERT_DIR): {e}"
            ),
        ));
    }
    let client = match (cert, key) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            tls::read_identity(("redis-client-cert", &cert), ("redis-client-key", &key))
                .map_err(tls_error)?;
            Some((cert, key))
        }
        (Some(_), None) => {
            return Err(ConfigError::new(
                "--redis-client-key",
                "is needed with --redis-client-cert",
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                "--redis-client-cert",
                "is needed with --redis-client-key",
            ));
        }
    };
    Ok(Some(RedisTlsFiles { ca, client }))
}

/// A [`tls`] error as a [`ConfigError`]: its line starts with the setting
/// at fault, unless it is about the system's authorities.
fn tls_error(line: String) -> ConfigError {
    match line.split_once(": ") {
        Some((setting, rest)) if setting.starts_with("--") => ConfigError::new(setting, rest),
        _ => ConfigError::new("--redis-ca", line),
    }
}

impl Limits {
    fn to_toml(self) -> String {
        format!(
            "max_connections = {}\nmax_upstream_connections = {}\n\
             max_upstream_connections_per_client = {}\nmax_idle_upstream_connections = {}\n\
             upstream_idle_timeout = {}\nhead_timeout = {}\nbody_timeout = {}\n\
             send_timeout = {}\nrequest_buffer = {}\nrequest_buffer_total = {}\n\
             h2_idle_timeout = {}\n\
             h2_keepalive_interval = {}\nh2_keepalive_timeout = {}\n\
             h2_max_header_list_size = {}\nh2_max_concurrent_streams = {}\n",
            self.max_connections,
            self.max_upstream_connections,
            self.max_upstream_connections_per_client,
            self.max_idle_upstream_connections,
            self.upstream_idle_timeout.as_secs_f64(),
            self.head_timeout.as_secs_f64(),
            self.body_timeout.as_secs_f64(),
            self.send_timeout.as_secs_f64(),
            self.request_buffer,
            self.request_buffer_total,
            self.h2_idle_timeout.as_secs_f64(),
            self.h2_keepalive_interval.as_secs_f64(),
            self.h2_keepalive_timeout.as_secs_f64(),
            self.h2_max_header_list_size,
            self.h2_max_concurrent_streams,
        )
    }
}

impl RedisTlsFiles {
    fn to_toml(&self) -> String {
        let line = |key: &str, path: &PathBuf| format!("{key} = {}\n", toml_path(path));
        let mut out = String::new();
        if let Some(ca) = &self.ca {
            out += &line("redis_ca", ca);
        }
        if let Some((cert, key)) = &self.client {
            out += &line("redis_client_cert", cert);
            out += &line("redis_client_key", key);
        }
        out
    }
}

/// `path` as a TOML string.
fn toml_path(path: &std::path::Path) -> String {
    toml::Value::String(path.to_string_lossy().into_owned()).to_string()
}

impl Config {
    /// Resolves settings from the command line and environment (`raw`) and
    /// the TOML file it names, then validates every one of them.
    ///
    /// # Errors
    ///
    /// The first [`ConfigError`], naming the setting.
    pub fn resolve(raw: &RawSettings) -> Result<Self, ConfigError> {
        let src = Sources::load(raw.config.as_ref())?;
        let (trust_forwarded, trusted_proxies) = parse_trusted(&src, raw)?;
        let upstream = parse_upstream(src.get(&raw.upstream, "upstream")?)?;
        let config = Self {
            upstream_tls: parse_upstream_tls(&src, raw, &upstream)?,
            upstream,
            listen: parse_addr("listen", src.get(&raw.listen, "listen")?, "127.0.0.1:8443")?,
            admin_listen: parse_addr(
                "admin_listen",
                src.get(&raw.admin_listen, "admin_listen")?,
                "127.0.0.1:9901",
            )?,
            authorize_path: src
                .get(&raw.authorize_path, "authorize_path")?
                .unwrap_or_else(|| "/authorize".to_owned()),
            token_path: src
                .get(&raw.token_path, "token_path")?
                .unwrap_or_else(|| "/token".to_owned()),
            requirement: match src.get(&raw.pkce, "pkce")?.as_deref() {
                None | Some("required") => Requirement::Required,
                Some("optional") => Requirement::Optional,
                Some(other) => {
                    return Err(ConfigError::new(
                        "--pkce",
                        format!("{other:?} is not required or optional"),
                    ));
                }
            },
            allow_plain: parse_bool("allow_plain", src.get(&raw.allow_plain, "allow_plain")?)?,
            strip_pkce_params: parse_bool(
                "strip_pkce_params",
                src.get(&raw.strip_pkce_params, "strip_pkce_params")?,
            )?,
            ttl: parse_seconds("ttl", src.get(&raw.ttl, "ttl")?, 600.0, 1.0)?,
            max_entries: parse_count(
                "max_entries",
                src.get(&raw.max_entries, "max_entries")?,
                1_000_000,
                1,
            )?,
            max_pending_per_source: parse_count(
                "max_pending_per_source",
                src.get(&raw.max_pending_per_source, "max_pending_per_source")?,
                DEFAULT_MAX_PENDING_PER_SOURCE,
                1,
            )?,
            max_token_body: parse_count(
                "max_token_body",
                src.get(&raw.max_token_body, "max_token_body")?,
                65_536,
                1,
            )?,
            proxy_protocol: parse_proxy_protocol(&src, raw, &trusted_proxies, trust_forwarded)?,
            tls: parse_tls(&src, raw)?,
            trust_forwarded,
            trusted_proxies,
            log_format: match src.get(&raw.log_format, "log_format")?.as_deref() {
                None | Some("pretty") => LogFormat::Pretty,
                Some("json") => LogFormat::Json,
                Some(other) => {
                    return Err(ConfigError::new(
                        "--log-format",
                        format!("{other:?} is not pretty or json"),
                    ));
                }
            },
            connect_timeout: parse_seconds(
                "connect_timeout",
                src.get(&raw.connect_timeout, "connect_timeout")?,
                5.0,
                0.001,
            )?,
            response_timeout: parse_seconds(
                "response_timeout",
                src.get(&raw.response_timeout, "response_timeout")?,
                30.0,
                0.001,
            )?,
            drain_timeout: parse_seconds(
                "drain_timeout",
                src.get(&raw.drain_timeout, "drain_timeout")?,
                10.0,
                0.0,
            )?,
            worker_threads: match src.get(&raw.worker_threads, "worker_threads")? {
                None => None,
                Some(text) if text.trim() == "auto" => None,
                Some(text) => Some(parse_count("worker_threads", Some(text), 1, 1)?),
            },
            allowed_origins: src
                .get(&raw.allowed_origins, "allowed_origins")?
                .map(|s| {
                    s.split(',')
                        .map(str::trim)
                        .filter(|o| !o.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            store: parse_store(&src, raw)?,
            limits: parse_limits(&src, raw)?,
        };
        if config.ttl.as_secs_f64().fract() != 0.0 {
            return Err(ConfigError::new(
                "--ttl",
                "must be a whole number of seconds",
            ));
        }
        drop(config.layer()?);
        Ok(config)
    }

    /// The PKCE layer these settings describe.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for a path or origin the layer refuses.
    pub fn layer(&self) -> Result<PkceLayer, ConfigError> {
        self.policy(PkceLayer::strict().capacity(self.max_entries))
    }

    /// These settings' policy applied to `layer`, whatever its store.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for a path or origin the layer refuses.
    pub fn policy<St: Store>(&self, layer: PkceLayer<St>) -> Result<PkceLayer<St>, ConfigError> {
        let layer = layer
            .authorize_path(&self.authorize_path)
            .map_err(|e| ConfigError::new("--authorize-path", e.to_string()))?
            .token_path(&self.token_path)
            .map_err(|e| ConfigError::new("--token-path", e.to_string()))?
            .requirement(self.requirement)
            .allow_plain(self.allow_plain)
            .strip_pkce_params(self.strip_pkce_params)
            .max_token_body(self.max_token_body)
            .ttl(self.ttl)
            .map_err(|e| ConfigError::new("--ttl", e.to_string()))?;
        self.allowed_origins
            .iter()
            .try_fold(layer, |layer, origin| {
                layer
                    .allowed_origin(origin)
                    .map_err(|e| ConfigError::new("--allowed-origins", e.to_string()))
            })
    }

    /// The settings as TOML, for `pkce-proxy check`.
    pub fn to_toml(&self) -> String {
        let upstream = format!(
            "{}://{}{}",
            self.upstream.scheme, self.upstream.authority, self.upstream.base_path
        );
        let origins: Vec<String> = self
            .allowed_origins
            .iter()
            .map(|o| format!("{o:?}"))
            .collect();
        format!(
            "upstream = {upstream:?}\nlisten = \"{}\"\nadmin_listen = \"{}\"\n\
             authorize_path = {:?}\ntoken_path = {:?}\npkce = \"{}\"\nallow_plain = {}\n\
             strip_pkce_params = {}\nttl = {}\nmax_entries = {}\nmax_pending_per_source = {}\n\
             max_token_body = {}\n\
             trusted_proxies = {}\nproxy_protocol = {}\nlog_format = \"{}\"\nconnect_timeout = {}\n\
             response_timeout = {}\ndrain_timeout = {}\nallowed_origins = [{}]\n{}",
            self.listen,
            self.admin_listen,
            self.authorize_path,
            self.token_path,
            match self.requirement {
                Requirement::Required => "required",
                Requirement::Optional => "optional",
            },
            self.allow_plain,
            self.strip_pkce_params,
            self.ttl.as_secs(),
            self.max_entries,
            self.max_pending_per_source,
            self.max_token_body,
            self.trusted_proxies,
            self.proxy_protocol,
            match self.log_format {
                LogFormat::Pretty => "pretty",
                LogFormat::Json => "json",
            },
            self.connect_timeout.as_secs_f64(),
            self.response_timeout.as_secs_f64(),
            self.drain_timeout.as_secs_f64(),
            origins.join(", "),
            match &self.store {
                StoreSetting::Memory => "store = \"memory\"\n".to_owned(),
                StoreSetting::Redis {
                    url,
                    prefix,
                    timeout,
                    tls,
                } => format!(
                    "store = {:?}\nredis_prefix = {prefix:?}\nredis_timeout = {}\n{}",
                    redact_url(url),
                    timeout.as_secs_f64(),
                    tls.as_ref().map(RedisTlsFiles::to_toml).unwrap_or_default(),
                ),
            },
        ) + &match &self.tls {
            Some(tls) => format!(
                "tls_cert = {}\ntls_key = {}\n",
                toml_path(&tls.cert),
                toml_path(&tls.key)
            ),
            None => String::new(),
        } + &match self.worker_threads {
            Some(n) => format!("worker_threads = {n}\n"),
            None => "worker_threads = \"auto\"\n".to_owned(),
        } + &self.upstream_tls_toml()
            + &self.limits.to_toml()
    }

    /// The upstream's TLS settings that were given, as TOML.
    fn upstream_tls_toml(&self) -> String {
        let Some(tls) = &self.upstream_tls else {
            return String::new();
        };
        let path = |p: &PathBuf| toml_path(p);
        let mut out = String::new();
        if let Some(ca) = &tls.ca {
            out += &format!("upstream_ca = {}\n", path(ca));
        }
        if let Some((cert, key)) = &tls.client_identity {
            out += &format!(
                "upstream_client_cert = {}\nupstream_client_key = {}\n",
                path(cert),
                path(key)
            );
        }
        if let Some(name) = &tls.server_name {
            out += &format!(
                "upstream_server_name = {}\n",
                toml::Value::String(name.clone())
            );
        }
        out
    }

    /// The number of runtime worker threads: the setting, or the CPUs this
    /// process may run on.
    pub fn runtime_threads(&self) -> usize {
        self.worker_threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn raw(args: &[&str]) -> RawSettings {
        let mut argv = vec!["pkce-proxy"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap().settings
    }

    fn err(args: &[&str]) -> ConfigError {
        Config::resolve(&raw(args)).unwrap_err()
    }

    #[test]
    fn defaults() {
        let c = Config::resolve(&raw(&["--upstream", "http://127.0.0.1:8080"])).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(c.admin_listen, "127.0.0.1:9901".parse().unwrap());
        assert_eq!(c.requirement, Requirement::Required);
        assert!(!c.allow_plain && !c.strip_pkce_params && !c.trust_forwarded);
        assert_eq!(c.ttl, Duration::from_secs(600));
        assert_eq!(c.max_entries, 1_000_000);
        assert_eq!(c.max_token_body, 65_536);
        assert_eq!(c.upstream.host_port(), ("127.0.0.1".to_owned(), 8080));
        assert_eq!(c.worker_threads, None);
        assert!(c.runtime_threads() >= 1);
    }

    #[test]
    fn limits_have_defaults_and_bounds() {
        let c = Config::resolve(&raw(&["--upstream", "http://x"])).unwrap();
        let l = c.limits;
        assert_eq!(
            (
                l.max_connections,
                l.max_upstream_connections,
                l.max_upstream_connections_per_client,
                l.max_idle_upstream_connections,
                l.request_buffer,
                l.request_buffer_total,
                l.h2_max_header_list_size,
                l.h2_max_concurrent_streams,
            ),
            (10_000, 1024, 8, 1024, 65_536, 64 << 20, 65_536, 100)
        );
        assert_eq!(l.upstream_idle_timeout, Duration::from_secs(90));
        assert_eq!(
            (l.head_timeout, l.body_timeout, l.send_timeout),
            (
                Duration::from_secs(30),
                Duration::from_secs(30),
                Duration::from_secs(30)
            )
        );
        assert_eq!(l.h2_idle_timeout, Duration::from_secs(60));
        assert_eq!(
            (l.h2_keepalive_interval, l.h2_keepalive_timeout),
            (Duration::from_secs(20), Duration::from_secs(20))
        );
        // A small upstream bound brings the shares that default above it down.
        let c = Config::resolve(&raw(&[
            "--upstream",
            "http://x",
            "--max-upstream-connections",
            "4",
        ]))
        .unwrap();
        assert_eq!(
            (
                c.limits.max_upstream_connections_per_client,
                c.limits.max_idle_upstream_connections
            ),
            (4, 4)
        );
        let printed: toml::Table = c.to_toml().parse().unwrap();
        assert_eq!(printed["max_upstream_connections"].as_integer(), Some(4));
        assert_eq!(printed["body_timeout"].as_integer(), Some(30));
        for (flag, value) in [
            ("--max-connections", "0"),
            ("--max-connections", "1000001"),
            ("--max-upstream-connections", "0"),
            ("--max-upstream-connections", "65536"),
            ("--max-upstream-connections-per-client", "0"),
            ("--max-upstream-connections-per-client", "1025"),
            ("--max-idle-upstream-connections", "0"),
            ("--max-idle-upstream-connections", "2000"),
            ("--upstream-idle-timeout", "0"),
            ("--head-timeout", "0"),
            ("--head-timeout", "3601"),
            ("--body-timeout", "0"),
            ("--body-timeout", "forever"),
            ("--send-timeout", "0"),
            ("--send-timeout", "1e9"),
            ("--request-buffer", "0"),
            ("--request-buffer", "16777217"),
            ("--request-buffer-total", "65535"),
            ("--request-buffer-total", "17179869185"),
            ("--h2-idle-timeout", "0"),
            ("--h2-keepalive-interval", "0"),
            ("--h2-keepalive-timeout", "-1"),
            ("--h2-max-header-list-size", "0"),
            ("--h2-max-header-list-size", "99999999"),
            ("--h2-max-concurrent-streams", "0"),
            ("--h2-max-concurrent-streams", "10001"),
        ] {
            let e = err(&["--upstream", "http://x", &format!("{flag}={value}")]);
            assert_eq!(e.setting, flag, "{value}: {e}");
        }
    }

    #[test]
    fn worker_threads() {
        let c =
            Config::resolve(&raw(&["--upstream", "http://x", "--worker-threads", "3"])).unwrap();
        assert_eq!((c.worker_threads, c.runtime_threads()), (Some(3), 3));
        let c = Config::resolve(&raw(&[
            "--upstream",
            "http://x",
            "--worker-threads",
            "auto",
        ]))
        .unwrap();
        assert_eq!(c.worker_threads, None);
        assert!(c.to_toml().contains("worker_threads = \"auto\""));
        assert_eq!(
            err(&["--upstream", "http://x", "--worker-threads", "0"]).setting,
            "--worker-threads"
        );
    }

    #[test]
    fn bad_values_name_their_setting() {
        for (args, setting) in [
            (vec![], "--upstream"),
            (vec!["--upstream", "ftp://x"], "--upstream"),
            (vec!["--upstream", "127.0.0.1:8080"], "--upstream"),
            (vec!["--upstream", "http://x/?q=1"], "--upstream"),
            (vec!["--upstream", "http://u:p@x"], "--upstream"),
            (vec!["--upstream", "http://x", "--ttl", "0"], "--ttl"),
            (vec!["--upstream", "http://x", "--ttl", "1.5"], "--ttl"),
            (vec!["--upstream", "http://x", "--ttl", "ten"], "--ttl"),
            (
                vec!["--upstream", "http://x", "--max-entries", "0"],
                "--max-entries",
            ),
            (
                vec!["--upstream", "http://x", "--max-token-body=-1"],
                "--max-token-body",
            ),
            (
                vec!["--upstream", "http://x", "--listen", "localhost"],
                "--listen",
            ),
            (
                vec!["--upstream", "http://x", "--admin-listen", "1.2.3.4:99999"],
                "--admin-listen",
            ),
            (
                vec!["--upstream", "http://x", "--pkce", "sometimes"],
                "--pkce",
            ),
            (
                vec!["--upstream", "http://x", "--allow-plain=maybe"],
                "--allow-plain",
            ),
            (
                vec!["--upstream", "http://x", "--log-format", "xml"],
                "--log-format",
            ),
            (
                vec!["--upstream", "http://x", "--token-path", "token"],
                "--token-path",
            ),
            (
                vec!["--upstream", "http://x", "--authorize-path", "/token"],
                "--authorize-path",
            ),
            (
                vec!["--upstream", "http://x", "--response-timeout", "0"],
                "--response-timeout",
            ),
            (
                vec!["--upstream", "http://x", "--config", "/nonexistent.toml"],
                "--config",
            ),
            (vec!["--upstream", "http://x", "--store", "disk"], "--store"),
            (
                vec!["--upstream", "http://x", "--store", "redis://:pw@[::1"],
                "--store",
            ),
            (
                vec![
                    "--upstream",
                    "http://x",
                    "--store",
                    "redis://r/0",
                    "--redis-prefix",
                    "a}b",
                ],
                "--redis-prefix",
            ),
            (
                vec![
                    "--upstream",
                    "http://x",
                    "--store",
                    "redis://r/0",
                    "--redis-timeout",
                    "0",
                ],
                "--redis-timeout",
            ),
        ] {
            let e = err(&args);
            assert_eq!(e.setting, setting, "{args:?}: {e}");
            assert!(!e.to_string().contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn flags_override_the_file() {
        let dir = std::env::temp_dir().join(format!("pkce-proxy-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("proxy.toml");
        std::fs::write(
            &file,
            "upstream = \"https://as.example:8443/base/\"\nttl = 30\nallow_plain = true\n\
             allowed_origins = [\"https://a.example\", \"https://b.example\"]\n\
             trusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let c = Config::resolve(&raw(&["--config", path, "--ttl", "45"])).unwrap();
        assert_eq!(c.ttl, Duration::from_secs(45));
        assert!(c.allow_plain);
        assert_eq!(c.upstream.base_path, "/base");
        assert_eq!(c.upstream.host_port(), ("as.example".to_owned(), 8443));
        assert_eq!(c.allowed_origins.len(), 2);
        assert!(c.trusted_proxies.contains([10, 9, 8, 7].into()));
        assert!(
            c.trusted_proxies
                .contains(std::net::Ipv6Addr::LOCALHOST.into())
        );
        assert!(!c.trusted_proxies.contains([127, 0, 0, 1].into()));
        assert!(
            c.to_toml()
                .contains("trusted_proxies = [\"10.0.0.0/8\", \"::1/128\"]\n")
        );
        let c = Config::resolve(&raw(&[
            "--config",
            path,
            "--trusted-proxies",
            "192.0.2.0/24",
        ]))
        .unwrap();
        assert!(!c.trusted_proxies.contains([10, 9, 8, 7].into()));
        assert!(c.trusted_proxies.contains([192, 0, 2, 255].into()));
        let c = Config::resolve(&raw(&["--config", path, "--allow-plain=false"])).unwrap();
        assert!(!c.allow_plain);

        std::fs::write(&file, "upstream = \"http://x\"\nttl = \"soon\"\n").unwrap();
        assert_eq!(err(&["--config", path]).setting, "--ttl");
        std::fs::write(&file, "upstream = \"http://x\"\nnot_a_setting = 1\n").unwrap();
        assert_eq!(err(&["--config", path]).setting, "--config");
        std::fs::write(&file, "upstream = [1]\n").unwrap();
        assert_eq!(err(&["--config", path]).setting, "--upstream");
        std::fs::write(&file, "this is not toml").unwrap();
        assert_eq!(err(&["--config", path]).setting, "--config");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn redis_store_settings_and_redacted_credentials() {
        let c = Config::resolve(&raw(&[
            "--upstream",
            "http://x",
            "--store",
            "redis://user:s3cret@redis.internal:6380/2",
            "--redis-timeout",
            "0.25",
        ]))
        .unwrap();
        assert_eq!(
            c.store,
            StoreSetting::Redis {
                url: "redis://user:s3cret@redis.internal:6380/2".into(),
                prefix: "pkce".into(),
                timeout: Duration::from_millis(250),
                tls: None,
            }
        );
        let printed = c.to_toml();
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(
            printed.contains("redis://***@redis.internal:6380/2"),
            "{printed}"
        );
        assert!(!format!("{c:?}").contains("s3cret"));
        let table: toml::Table = printed.parse().unwrap();
        assert_eq!(table["redis_timeout"].as_float(), Some(0.25));

        let refused = err(&["--upstream", "http://x", "--store", "mysql://u:s3cret@db/"]);
        assert!(!refused.to_string().contains("s3cret"), "{refused}");
        assert_eq!(redact_url("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(redact_url("redis://:ab/cd@h/0"), "redis://***@h/0");
        assert_eq!(redact_url("redis://:a?b#c@h/0"), "redis://***@h/0");
        assert_eq!(redact_url("redis:/:pw@h"), "***");
        assert_eq!(redact_url("pw@h"), "***");
        assert_eq!(
            err(&["--upstream", "http://x", "--store", "rediss://h/0#insecure"]).setting,
            "--store"
        );
        assert_eq!(
            Config::resolve(&raw(&["--upstream", "http://x"]))
                .unwrap()
                .store,
            StoreSetting::Memory
        );
    }

    /// A directory of PEM files for the Redis TLS settings: an authority,
    /// a client certificate it signed and its key, another key, and files
    /// that hold no certificate or key.
    struct TlsFiles(PathBuf);

    impl TlsFiles {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "pkce-proxy-redis-tls-{name}-{}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca_key = rcgen::KeyPair::generate().unwrap();
            let ca_cert = ca.self_signed(&ca_key).unwrap();
            let issuer = rcgen::Issuer::new(ca, ca_key);
            let client_key = rcgen::KeyPair::generate().unwrap();
            let client = rcgen::CertificateParams::new(vec!["proxy".to_owned()])
                .unwrap()
                .signed_by(&client_key, &issuer)
                .unwrap();
            for (name, pem) in [
                ("ca.pem", ca_cert.pem()),
                ("client.pem", client.pem()),
                ("client.key", client_key.serialize_pem()),
                (
                    "other.key",
                    rcgen::KeyPair::generate().unwrap().serialize_pem(),
                ),
                ("empty.pem", String::new()),
            ] {
                std::fs::write(dir.join(name), pem).unwrap();
            }
            Self(dir)
        }

        fn path(&self, name: &str) -> String {
            self.0.join(name).to_str().unwrap().to_owned()
        }
    }

    impl Drop for TlsFiles {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn redis_over_tls_takes_an_authority_and_a_client_certificate() {
        let files = TlsFiles::new("good");
        let c = Config::resolve(&raw(&[
            "--upstream",
            "http://x",
            "--store",
            "rediss://:s3cret@redis.internal:6380/0",
            "--redis-ca",
            &files.path("ca.pem"),
            "--redis-client-cert",
            &files.path("client.pem"),
            "--redis-client-key",
            &files.path("client.key"),
        ]))
        .unwrap();
        let want = RedisTlsFiles {
            ca: Some(files.0.join("ca.pem")),
            client: Some((files.0.join("client.pem"), files.0.join("client.key"))),
        };
        let StoreSetting::Redis { tls, url, .. } = &c.store else {
            panic!("{:?}", c.store)
        };
        assert_eq!(tls.as_ref(), Some(&want));
        assert!(url.starts_with("rediss://"));
        assert!(!format!("{c:?}").contains("s3cret"));

        // `check` prints settings that resolve again to the same files.
        let printed = c.to_toml();
        assert!(!printed.contains("s3cret"), "{printed}");
        let table: toml::Table = printed.parse().unwrap();
        assert_eq!(
            table["redis_ca"].as_str(),
            Some(files.path("ca.pem").as_str())
        );
        std::fs::write(files.0.join("printed.toml"), &printed).unwrap();
        let again = Config::resolve(&raw(&["--config", &files.path("printed.toml")])).unwrap();
        let StoreSetting::Redis { tls, .. } = &again.store else {
            panic!("{:?}", again.store)
        };
        assert_eq!(tls.as_ref(), Some(&want));

        // Without --redis-ca, the system's authorities, which a machine
        // without any cannot give.
        match Config::resolve(&raw(&["--upstream", "http://x", "--store", "rediss://h/0"])) {
            Ok(c) => {
                let StoreSetting::Redis { tls, .. } = &c.store else {
                    panic!("{:?}", c.store)
                };
                assert_eq!(tls.as_ref(), Some(&RedisTlsFiles::default()));
                assert!(!c.to_toml().contains("redis_ca"));
            }
            Err(e) => assert!(
                ["--redis-ca", "--store"].contains(&e.setting.as_str()),
                "{e}"
            ),
        }
    }

    #[test]
    fn bad_redis_tls_settings_name_their_setting() {
        let files = TlsFiles::new("bad");
        let (ca, cert, key) = (
            files.path("ca.pem"),
            files.path("client.pem"),
            files.path("client.key"),
        );
        let (other_key, empty, missing) = (
            files.path("other.key"),
            files.path("empty.pem"),
            files.path("missing.pem"),
        );
        let tls = |store: &str, more: &[&str]| {
            let mut args = vec!["--upstream", "http://x", "--store", store];
            args.extend_from_slice(more);
            args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>()
        };
        for (args, setting) in [
            // Only for rediss://.
            (tls("memory", &["--redis-ca", &ca]), "--redis-ca"),
            (tls("redis://h/0", &["--redis-ca", &ca]), "--redis-ca"),
            (
                tls(
                    "redis://h/0",
                    &["--redis-client-cert", &cert, "--redis-client-key", &key],
                ),
                "--redis-client-cert",
            ),
            (
                tls("redis://h/0", &["--redis-client-key", &key]),
                "--redis-client-key",
            ),
            // Files that cannot be read or hold the wrong thing.
            (tls("rediss://h/0", &["--redis-ca", &missing]), "--redis-ca"),
            (tls("rediss://h/0", &["--redis-ca", &empty]), "--redis-ca"),
            (tls("rediss://h/0", &["--redis-ca", &key]), "--redis-ca"),
            (
                tls(
                    "rediss://h/0",
                    &["--redis-client-cert", &empty, "--redis-client-key", &key],
                ),
                "--redis-client-cert",
            ),
            (
                tls(
                    "rediss://h/0",
                    &["--redis-client-cert", &cert, "--redis-client-key", &cert],
                ),
                "--redis-client-key",
            ),
            (
                tls(
                    "rediss://h/0",
                    &["--redis-client-cert", &cert, "--redis-client-key", &missing],
                ),
                "--redis-client-key",
            ),
            // A key that is not the certificate's.
            (
                tls(
                    "rediss://h/0",
                    &[
                        "--redis-client-cert",
                        &cert,
                        "--redis-client-key",
                        &other_key,
                    ],
                ),
                "--redis-client-key",
            ),
            // Both or neither.
            (
                tls("rediss://h/0", &["--redis-client-cert", &cert]),
                "--redis-client-key",
            ),
            (
                tls("rediss://h/0", &["--redis-client-key", &key]),
                "--redis-client-cert",
            ),
        ] {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let e = err(&args);
            assert_eq!(e.setting, setting, "{args:?}: {e}");
            let line = e.to_string();
            assert!(!line.contains('\n'), "one line: {line}");
            assert_eq!(line.matches(setting).count(), 1, "named once: {line}");
        }
    }

    #[test]
    fn printed_settings_read_back() {
        let c =
            Config::resolve(&raw(&["--upstream", "http://127.0.0.1:1/p", "--ttl", "7"])).unwrap();
        let text = c.to_toml();
        let table: toml::Table = text.parse().unwrap();
        assert_eq!(table["ttl"].as_integer(), Some(7));
        assert_eq!(table["upstream"].as_str(), Some("http://127.0.0.1:1/p"));
    }

    #[test]
    fn the_listener_certificate_is_printed_and_read_back() {
        let dir =
            std::env::temp_dir().join(format!("pkce-proxy-config-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        // A name TOML must escape.
        let (cert, key) = (dir.join("a \"b\".crt"), dir.join("a.key"));
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        let c = Config::resolve(&raw(&[
            "--upstream",
            "http://x",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ]))
        .unwrap();
        let tls = c.tls.as_ref().unwrap();
        assert_eq!((&tls.cert, &tls.key), (&cert, &key));
        assert!(!format!("{c:?}").contains("PRIVATE"), "no key in {c:?}");
        let file = dir.join("printed.toml");
        std::fs::write(&file, c.to_toml()).unwrap();
        let again = Config::resolve(&raw(&["--config", file.to_str().unwrap()])).unwrap();
        assert_eq!(again.to_toml(), c.to_toml());
        assert_eq!(again.tls.unwrap().cert, cert);
        assert!(
            Config::resolve(&raw(&["--upstream", "http://x"]))
                .unwrap()
                .tls
                .is_none()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
