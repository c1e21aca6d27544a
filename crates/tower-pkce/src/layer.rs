//! [`PkceLayer`]: the middleware's settings.

use std::sync::{Arc, Once};
use std::time::Duration;

use http::{HeaderValue, Request};
use tower_layer::Layer;

use crate::cors::Origins;
use crate::error::ConfigError;
use crate::path::PathPattern;
use crate::policy::{Classified, Config, Endpoint, Requirement};
use crate::service::Pkce;
use crate::shared::Shared;
#[cfg(feature = "memory-store")]
use crate::store::MemoryStore;
use crate::store::Store;

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
    config: Arc<Config>,
    store: Arc<StoreSlot<St>>,
    /// Done once the store's maintenance started (see
    /// [`Shared::start_maintenance`]); a new store gets a new one.
    maintenance: Arc<Once>,
    origins: Arc<Origins>,
}

/// The layer's store: the one it was given, or the default [`MemoryStore`]
/// built the first time it is needed, so that setting another store never
/// builds one to throw away.
#[derive(Debug)]
enum StoreSlot<St> {
    Given(St),
    #[cfg(feature = "memory-store")]
    Default {
        store: std::sync::OnceLock<St>,
        build: fn(Option<usize>) -> St,
        capacity: Option<usize>,
    },
}

impl<St> StoreSlot<St> {
    fn get(&self) -> &St {
        match self {
            Self::Given(store) => store,
            #[cfg(feature = "memory-store")]
            Self::Default {
                store,
                build,
                capacity,
            } => store.get_or_init(|| build(*capacity)),
        }
    }
}

#[cfg(feature = "memory-store")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory-store")))]
impl Default for PkceLayer {
    fn default() -> Self {
        Self::strict()
    }
}

#[cfg(feature = "memory-store")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory-store")))]
impl PkceLayer {
    /// PKCE required, S256 only, for every client: the OAuth 2.1 rule.
    ///
    /// Paths `/authorize` and `/token`; records live 600 s in a
    /// [`MemoryStore`] of 1,000,000 entries; token bodies up to 64 KiB; a
    /// code is burned after 5 failed attempts.
    pub fn strict() -> Self {
        Self::with_slot(Self::memory_store(None))
    }

    /// Same as [`PkceLayer::strict`].
    pub fn new() -> Self {
        Self::strict()
    }

    /// Replaces the store with a new [`MemoryStore`] bounded to `capacity`
    /// records (pending authorizations and code bindings together).
    pub fn capacity(self, capacity: usize) -> Self {
        PkceLayer {
            store: Arc::new(Self::memory_store(Some(capacity))),
            maintenance: Arc::new(Once::new()),
            ..self
        }
    }

    fn memory_store(capacity: Option<usize>) -> StoreSlot<MemoryStore> {
        StoreSlot::Default {
            store: std::sync::OnceLock::new(),
            build: |capacity| match capacity {
                Some(capacity) => MemoryStore::builder().capacity(capacity).build(),
                None => MemoryStore::new(),
            },
            capacity,
        }
    }
}

impl<St: Store> PkceLayer<St> {
    /// The strict settings with another store.
    pub fn with_store(store: St) -> Self {
        Self::with_slot(StoreSlot::Given(store))
    }

    fn with_slot(store: StoreSlot<St>) -> Self {
        Self {
            config: Arc::new(Config::strict()),
            store: Arc::new(store),
            maintenance: Arc::new(Once::new()),
            origins: Arc::new(Origins::default()),
        }
    }

    /// Uses another store, keeping every setting.
    pub fn store<T: Store>(self, store: T) -> PkceLayer<T> {
        PkceLayer {
            config: self.config,
            store: Arc::new(StoreSlot::Given(store)),
            maintenance: Arc::new(Once::new()),
            origins: self.origins,
        }
    }

    /// The store.
    pub fn get_store(&self) -> &St {
        self.store.get()
    }

    /// The settings, to change: shared with no service once changed.
    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
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

    /// Which endpoint a request is for, as [`endpoint`](Self::endpoint)
    /// finds it, and the request marked with the answer, for code that must
    /// know the endpoint before the layer sees the request (metrics, a
    /// refusal of its own) without classifying it twice.
    ///
    /// The layer's services trust the mark only when it was made with this
    /// layer's settings (the layer or a clone of it); a mark from a layer
    /// configured otherwise, or an [`Endpoint`] a caller put in the
    /// extensions, is ignored and the request classified again. Either
    /// way the service puts the [`Endpoint`] it acted on in the request's
    /// extensions, where the inner service reads it.
    ///
    /// Classify the request once its path is final: the service takes the
    /// mark over the path.
    ///
    /// ```
    /// use http::Request;
    /// use tower_pkce::{Endpoint, PkceLayer};
    ///
    /// let layer = PkceLayer::strict();
    /// let mut request = Request::post("/token").body(()).unwrap();
    /// assert_eq!(layer.classify(&mut request), Endpoint::Token);
    /// ```
    pub fn classify<B>(&self, req: &mut Request<B>) -> Endpoint {
        let endpoint = self.config.endpoint(req.uri().path());
        req.extensions_mut()
            .insert(Classified::new(endpoint, &self.config));
        endpoint
    }

    /// The authorization endpoint's path. Every method there is checked, and
    /// aliases (`/AUTHORIZE`, `/authorize/`, `//authorize`, `%2Fauthorize`) are
    /// matched too.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Path`] unless `path` is absolute with no query.
    pub fn authorize_path(mut self, path: &str) -> Result<Self, ConfigError> {
        self.config_mut().authorize_path = pattern("authorize_path", path)?;
        self.check_paths()
    }

    /// The token endpoint's path, matched like
    /// [`authorize_path`](Self::authorize_path).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Path`] unless `path` is absolute with no query.
    pub fn token_path(mut self, path: &str) -> Result<Self, ConfigError> {
        self.config_mut().token_path = pattern("token_path", path)?;
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
        self.config_mut().requirement = requirement;
        self
    }

    /// A rule for one `client_id` that overrides [`requirement`](Self::requirement).
    pub fn client_requirement(
        mut self,
        client_id: impl Into<String>,
        requirement: Requirement,
    ) -> Self {
        self.config_mut()
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
        self.config_mut().allow_plain = allow;
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
        self.config_mut().ttl = ttl;
        Ok(self)
    }

    /// The largest token request body read, in bytes; larger ones get 413.
    /// Default: 65,536.
    pub fn max_token_body(mut self, bytes: usize) -> Self {
        self.config_mut().max_token_body = bytes;
        self
    }

    /// The largest form body read at the authorization endpoint; larger ones
    /// get 413. Default: 65,536.
    pub fn max_authorize_body(mut self, bytes: usize) -> Self {
        self.config_mut().max_authorize_body = bytes;
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
        self.config_mut().max_failed_attempts = attempts;
        Ok(self)
    }

    /// Removes `code_challenge`, `code_challenge_method` and `code_verifier`
    /// before forwarding, for upstreams that reject unknown parameters or
    /// check PKCE by other rules. Off by default: they are forwarded.
    pub fn strip_pkce_params(mut self, strip: bool) -> Self {
        self.config_mut().strip_pkce_params = strip;
        self
    }

    /// The largest `text/html` response scanned for a `form_post` code, in
    /// bytes (after decompression). Larger pages pass unchanged. Default:
    /// 262,144.
    pub fn html_scan_limit(mut self, bytes: usize) -> Self {
        self.config_mut().html_scan_limit = bytes;
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
        self.config_mut().allowed_origins.push(value);
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
        self.config_mut().passed_grants.push(grant_type.into());
        self
    }
}

fn pattern(setting: &'static str, path: &str) -> Result<PathPattern, ConfigError> {
    PathPattern::new(path).map_err(|e| ConfigError::Path {
        setting,
        reason: e.to_string(),
    })
}

impl<S, St: Store> Layer<S> for PkceLayer<St> {
    type Service = Pkce<S, St>;

    /// Wraps `inner`, with no side effects: the store's maintenance (the
    /// sweep of expired records) starts on the first request served inside
    /// a Tokio runtime, once for the layer and its clones.
    fn layer(&self, inner: S) -> Self::Service {
        Pkce::from_shared(
            inner,
            Arc::new(Shared {
                config: self.config.clone(),
                store: self.get_store().clone(),
                origins: self.origins.clone(),
                maintenance: self.maintenance.clone(),
            }),
        )
    }
}

#[cfg(all(test, feature = "memory-store"))]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::Full;
    use tower::{ServiceExt, service_fn};
    use tower_layer::Layer;

    use super::{PkceLayer, StoreSlot};
    use crate::RequestBody;
    use crate::store::MemoryStore;

    async fn ok(_: Request<RequestBody<Full<Bytes>>>) -> Result<Response<Full<Bytes>>, Infallible> {
        Ok(Response::new(Full::default()))
    }

    /// The sweeper is the only task a layer can spawn: the runtime's count
    /// of live tasks shows whether it started.
    #[tokio::test(flavor = "current_thread")]
    async fn layer_starts_nothing_and_the_first_request_starts_the_sweeper_once() {
        let tasks = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        let layer = PkceLayer::strict();
        let services: Vec<_> = (0..1000).map(|_| layer.layer(service_fn(ok))).collect();
        assert_eq!(tasks(), 0);
        for service in services {
            let request = Request::get("/userinfo").body(Full::default()).unwrap();
            service.oneshot(request).await.unwrap();
        }
        assert_eq!(tasks(), 1);
        for _ in 0..1000 {
            let _ = layer.layer(service_fn(ok));
        }
        assert_eq!(tasks(), 1);
    }

    #[test]
    fn layer_outside_a_runtime_starts_nothing_and_does_not_panic() {
        let layer = PkceLayer::strict();
        for _ in 0..1000 {
            let _ = layer.layer(service_fn(ok));
        }
    }

    #[test]
    fn setting_a_store_builds_no_default_one() {
        let layer = PkceLayer::strict().capacity(3);
        let unbuilt = |slot: &StoreSlot<MemoryStore>| matches!(slot, StoreSlot::Default { store, .. } if store.get().is_none());
        assert!(unbuilt(&layer.store));
        let given = MemoryStore::builder().capacity(7).build();
        let replaced = layer.clone().store(given);
        assert!(matches!(&*replaced.store, StoreSlot::Given(_)));
        assert_eq!(replaced.get_store().capacity(), 7);
        assert!(unbuilt(&layer.store));
        // The default is built once, with the capacity set, and clones of
        // the layer share it.
        let clone = layer.clone();
        assert_eq!(clone.get_store().capacity(), 3);
        assert!(std::ptr::eq(layer.get_store(), clone.get_store()));
    }
}
