//! [`PkceLayer`]: the middleware's settings.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tower_layer::Layer;

use crate::cors::Origins;
use crate::error::ConfigError;
use crate::path::{self, PathPattern};
use crate::service::{Pkce, Shared};
#[cfg(feature = "memory-store")]
use crate::store::MemoryStore;
use crate::store::Store;

/// Whether a client must use PKCE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// Authorization requests without a `code_challenge` are refused, and so
    /// are token requests for codes the middleware did not bind.
    Required,
    /// Requests without PKCE pass, but a code issued with a challenge still
    /// needs its verifier, and a verifier for a code issued without one is
    /// refused (RFC 9700 §4.8.2).
    Optional,
}

/// Which endpoint a request is for, after path normalisation (see
/// [`PkceLayer::endpoint`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// The authorization endpoint: every method is checked.
    Authorize,
    /// The token endpoint: only POST (and OPTIONS for CORS) is accepted.
    Token,
    /// A discovery metadata document.
    Metadata,
    /// Anything else: passed through, with the response inspected for a
    /// code that leaves with a transaction handle.
    Other,
}

impl Endpoint {
    /// A short, stable name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Authorize => "authorize",
            Self::Token => "token",
            Self::Metadata => "metadata",
            Self::Other => "other",
        }
    }
}

/// Grant types that carry no authorization code (RFC 6749 §4.3, §4.4, §6;
/// RFC 8628; RFC 7523; RFC 7522; RFC 8693; OpenID CIBA).
const DEFAULT_PASSED_GRANTS: [&str; 8] = [
    "refresh_token",
    "client_credentials",
    "password",
    "urn:ietf:params:oauth:grant-type:device_code",
    "urn:ietf:params:oauth:grant-type:jwt-bearer",
    "urn:ietf:params:oauth:grant-type:saml2-bearer",
    "urn:ietf:params:oauth:grant-type:token-exchange",
    "urn:openid:params:grant-type:ciba",
];

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) authorize_path: PathPattern,
    pub(crate) token_path: PathPattern,
    pub(crate) requirement: Requirement,
    pub(crate) client_requirements: HashMap<String, Requirement>,
    pub(crate) allow_plain: bool,
    pub(crate) ttl: Duration,
    pub(crate) max_token_body: usize,
    pub(crate) max_authorize_body: usize,
    pub(crate) max_failed_attempts: u8,
    pub(crate) strip_pkce_params: bool,
    pub(crate) html_scan_limit: usize,
    pub(crate) metadata_limit: usize,
    pub(crate) allowed_origins: Vec<HeaderValue>,
    pub(crate) passed_grants: Vec<String>,
}

impl Config {
    pub(crate) fn endpoint(&self, raw_path: &str) -> Endpoint {
        let normalized = path::normalize(raw_path);
        // A path that decodes to a `?`, `#` or NUL is matched as a server
        // that cuts it there would read it too: over-matching is safe.
        let truncated = path::truncated(raw_path);
        let readings = || std::iter::once(&*normalized).chain(truncated.as_deref());
        if readings().any(|p| self.token_path.matches(p)) {
            Endpoint::Token
        } else if readings().any(|p| self.authorize_path.matches(p)) {
            Endpoint::Authorize
        } else if readings().any(path::is_metadata_path) {
            Endpoint::Metadata
        } else {
            Endpoint::Other
        }
    }

    pub(crate) fn requirement_for(&self, client_id: Option<&str>) -> Requirement {
        client_id
            .and_then(|c| self.client_requirements.get(c).copied())
            .unwrap_or(self.requirement)
    }

    /// The requirement for a code the middleware never bound. When the
    /// token request does not say which client it is, the strictest rule in
    /// force applies.
    pub(crate) fn requirement_for_unbound(&self, client_id: Option<&str>) -> Requirement {
        match client_id {
            Some(c) => self.requirement_for(Some(c)),
            None if self
                .client_requirements
                .values()
                .any(|r| *r == Requirement::Required) =>
            {
                Requirement::Required
            }
            None => self.requirement,
        }
    }

    /// Whether a token request of this grant type passes unchecked: only
    /// grants that carry no authorization code, spelled exactly.
    pub(crate) fn passes_grant(&self, grant_type: &str) -> bool {
        DEFAULT_PASSED_GRANTS.contains(&grant_type)
            || self.passed_grants.iter().any(|g| g == grant_type)
    }

    pub(crate) fn methods_supported(&self) -> &'static [&'static str] {
        if self.allow_plain {
            &["S256", "plain"]
        } else {
            &["S256"]
        }
    }
}

/// Adds PKCE to an OAuth 2.0 authorization server that lacks it.
///
/// The layer holds the settings and the store. It is cheap to clone; clones
/// share the store.
///
/// The default ([`PkceLayer::strict`]) requires PKCE with S256 for every
/// client, at `/authorize` and `/token`, with a [`MemoryStore`].
///
/// ```
/// use std::time::Duration;
/// use tower_pkce::{PkceLayer, Requirement};
///
/// let layer = PkceLayer::strict()
///     .authorize_path("/oauth/authorize")?
///     .token_path("/oauth/token")?
///     .client_requirement("legacy-app", Requirement::Optional)
///     .ttl(Duration::from_secs(300))?
///     .capacity(100_000);
/// # Ok::<(), tower_pkce::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct PkceLayer<
    #[cfg(feature = "memory-store")] St = MemoryStore,
    #[cfg(not(feature = "memory-store"))] St,
> {
    config: Config,
    store: St,
    origins: Arc<Origins>,
}

#[cfg(feature = "memory-store")]
impl Default for PkceLayer {
    fn default() -> Self {
        Self::strict()
    }
}

#[cfg(feature = "memory-store")]
impl PkceLayer {
    /// PKCE required, S256 only, for every client: the OAuth 2.1 rule.
    ///
    /// Paths `/authorize` and `/token`; records live 600 s in a
    /// [`MemoryStore`] of 1,000,000 entries; token bodies up to 64 KiB; a
    /// code is burned after 5 failed attempts.
    pub fn strict() -> Self {
        Self::with_store(MemoryStore::new())
    }

    /// Same as [`PkceLayer::strict`].
    pub fn new() -> Self {
        Self::strict()
    }

    /// Replaces the store with a new [`MemoryStore`] bounded to `capacity`
    /// records (pending authorizations and code bindings together).
    pub fn capacity(self, capacity: usize) -> Self {
        self.store(MemoryStore::builder().capacity(capacity).build())
    }
}

impl<St: Store> PkceLayer<St> {
    /// The strict settings with another store.
    pub fn with_store(store: St) -> Self {
        Self {
            config: Config {
                authorize_path: PathPattern::new("/authorize")
                    .unwrap_or_else(|_| unreachable_path()),
                token_path: PathPattern::new("/token").unwrap_or_else(|_| unreachable_path()),
                requirement: Requirement::Required,
                client_requirements: HashMap::new(),
                allow_plain: false,
                ttl: Duration::from_secs(600),
                max_token_body: 64 * 1024,
                max_authorize_body: 64 * 1024,
                max_failed_attempts: 5,
                strip_pkce_params: false,
                html_scan_limit: 256 * 1024,
                metadata_limit: 1024 * 1024,
                allowed_origins: Vec::new(),
                passed_grants: Vec::new(),
            },
            store,
            origins: Arc::new(Origins::default()),
        }
    }

    /// Uses another store, keeping every setting.
    pub fn store<T: Store>(self, store: T) -> PkceLayer<T> {
        PkceLayer {
            config: self.config,
            store,
            origins: self.origins,
        }
    }

    /// The store.
    pub fn get_store(&self) -> &St {
        &self.store
    }

    /// Which endpoint a request path is for, matched as the middleware
    /// matches it: aliases such as `/TOKEN/` or `/%74oken` count.
    ///
    /// ```
    /// use tower_pkce::{Endpoint, PkceLayer};
    ///
    /// let layer = PkceLayer::strict();
    /// assert_eq!(layer.endpoint("//Token/"), Endpoint::Token);
    /// assert_eq!(layer.endpoint("/token%3f"), Endpoint::Token);
    /// assert_eq!(layer.endpoint("/userinfo"), Endpoint::Other);
    /// ```
    pub fn endpoint(&self, path: &str) -> Endpoint {
        self.config.endpoint(path)
    }

    /// The authorization endpoint's path. Every method there is checked, and
    /// aliases (`/AUTHORIZE`, `/authorize/`, `//authorize`, `%2Fauthorize`) are
    /// matched too.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Path`] unless `path` is absolute with no query.
    pub fn authorize_path(mut self, path: &str) -> Result<Self, ConfigError> {
        self.config.authorize_path = pattern("authorize_path", path)?;
        self.check_paths()
    }

    /// The token endpoint's path, matched like
    /// [`authorize_path`](Self::authorize_path).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Path`] unless `path` is absolute with no query.
    pub fn token_path(mut self, path: &str) -> Result<Self, ConfigError> {
        self.config.token_path = pattern("token_path", path)?;
        self.check_paths()
    }

    fn check_paths(self) -> Result<Self, ConfigError> {
        if self.config.authorize_path == self.config.token_path {
            return Err(ConfigError::SamePaths);
        }
        Ok(self)
    }

    /// Whether PKCE is required for clients without their own rule.
    ///
    /// # Warning
    ///
    /// [`Requirement::Optional`] lets clients that send no challenge through
    /// without PKCE, as the upstream did before.
    pub fn requirement(mut self, requirement: Requirement) -> Self {
        self.config.requirement = requirement;
        self
    }

    /// A rule for one `client_id` that overrides [`requirement`](Self::requirement).
    pub fn client_requirement(
        mut self,
        client_id: impl Into<String>,
        requirement: Requirement,
    ) -> Self {
        self.config
            .client_requirements
            .insert(client_id.into(), requirement);
        self
    }

    /// Accepts `code_challenge_method=plain` (and a missing method, which
    /// means plain, RFC 7636 §4.3). Off by default.
    ///
    /// # Warning
    ///
    /// RFC 9700 §2.1.1: plain protects nothing once the authorization request
    /// leaks. Allow it only for clients that cannot compute SHA-256.
    pub fn allow_plain(mut self, allow: bool) -> Self {
        self.config.allow_plain = allow;
        self
    }

    /// How long a pending authorization, and then a code binding, lives.
    /// Default: 600 s.
    ///
    /// # Errors
    ///
    /// [`ConfigError::ZeroTtl`] for a zero duration.
    pub fn ttl(mut self, ttl: Duration) -> Result<Self, ConfigError> {
        if ttl.is_zero() {
            return Err(ConfigError::ZeroTtl);
        }
        self.config.ttl = ttl;
        Ok(self)
    }

    /// The largest token request body read, in bytes; larger ones get 413.
    /// Default: 65,536.
    pub fn max_token_body(mut self, bytes: usize) -> Self {
        self.config.max_token_body = bytes;
        self
    }

    /// The largest form body read at the authorization endpoint; larger ones
    /// get 413. Default: 65,536.
    pub fn max_authorize_body(mut self, bytes: usize) -> Self {
        self.config.max_authorize_body = bytes;
        self
    }

    /// How many failed token requests a code survives before it is burned.
    /// A failure never removes the PKCE requirement from a code. Default: 5.
    ///
    /// # Errors
    ///
    /// [`ConfigError::ZeroFailedAttempts`] for 0.
    pub fn max_failed_attempts(mut self, attempts: u8) -> Result<Self, ConfigError> {
        if attempts == 0 {
            return Err(ConfigError::ZeroFailedAttempts);
        }
        self.config.max_failed_attempts = attempts;
        Ok(self)
    }

    /// Removes `code_challenge`, `code_challenge_method` and `code_verifier`
    /// before forwarding, for upstreams that reject unknown parameters or
    /// check PKCE by other rules. Off by default: they are forwarded.
    pub fn strip_pkce_params(mut self, strip: bool) -> Self {
        self.config.strip_pkce_params = strip;
        self
    }

    /// The largest `text/html` response scanned for a `form_post` code, in
    /// bytes (after decompression). Larger pages pass unchanged. Default:
    /// 262,144.
    pub fn html_scan_limit(mut self, bytes: usize) -> Self {
        self.config.html_scan_limit = bytes;
        self
    }

    /// A browser origin allowed to read the token endpoint's rejections
    /// (CORS). Origins are also learned from the upstream's own
    /// `Access-Control-Allow-Origin` answers at the token endpoint.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Origin`] when `origin` is not a valid header value.
    pub fn allowed_origin(mut self, origin: &str) -> Result<Self, ConfigError> {
        let value = HeaderValue::from_str(origin).map_err(|_| ConfigError::Origin)?;
        self.config.allowed_origins.push(value);
        Ok(self)
    }
}

impl<St: Store> PkceLayer<St> {
    /// A further grant type that passes the token endpoint unchecked, for
    /// an upstream's own extension grants. Token requests whose grant type
    /// is missing or unknown are checked as `authorization_code` grants, and
    /// so is any request that carries a `code`. The standard grants without
    /// a code (`refresh_token`, `client_credentials`, `password`, device
    /// code, JWT and SAML bearer, token exchange, CIBA) pass already.
    ///
    /// # Warning
    ///
    /// Name only grants under which the upstream redeems no authorization
    /// code.
    pub fn pass_grant_type(mut self, grant_type: impl Into<String>) -> Self {
        self.config.passed_grants.push(grant_type.into());
        self
    }
}

fn pattern(setting: &'static str, path: &str) -> Result<PathPattern, ConfigError> {
    PathPattern::new(path).map_err(|e| ConfigError::Path {
        setting,
        reason: e.to_string(),
    })
}

#[cold]
fn unreachable_path() -> PathPattern {
    // The defaults are constant absolute paths; this branch cannot run, and
    // if it did, matching the root would over-match, which is the safe side.
    PathPattern::root()
}

impl<S, St: Store> Layer<S> for PkceLayer<St> {
    type Service = Pkce<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        self.store.start_maintenance();
        Pkce::from_shared(
            inner,
            Arc::new(Shared {
                config: self.config.clone(),
                store: self.store.clone(),
                origins: self.origins.clone(),
            }),
        )
    }
}
