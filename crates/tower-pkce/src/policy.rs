//! The policy: the settings ([`Config`]), which endpoint a request is for,
//! who must use PKCE, and which challenges are accepted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use crate::error::Rejection;
use crate::path::{self, PathPattern};
use crate::pkce::ChallengeMethod;
use crate::store::Challenge;

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
/// [`PkceLayer::endpoint`](crate::PkceLayer::endpoint)).
///
/// The layer's service puts the endpoint it acted on in the request's
/// extensions before calling the inner service, replacing any a caller put
/// there: the inner service reads it with
/// `req.extensions().get::<Endpoint>()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
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
    /// The strict settings (see `PkceLayer::strict`).
    pub(crate) fn strict() -> Self {
        Self {
            authorize_path: PathPattern::new("/authorize").unwrap_or_else(|_| unreachable_path()),
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
        }
    }

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

impl Config {
    /// Checks an authorization request's `code_challenge` and
    /// `code_challenge_method` against the policy.
    pub(crate) fn challenge(
        &self,
        challenge: Option<&str>,
        method: Option<&str>,
        requirement: Requirement,
    ) -> Result<Option<Challenge>, Rejection> {
        let Some(value) = challenge else {
            if method.is_some() {
                return Err(Rejection::MethodWithoutChallenge);
            }
            return match requirement {
                Requirement::Required => Err(Rejection::ChallengeRequired),
                Requirement::Optional => Ok(None),
            };
        };
        // RFC 7636 §4.3: a missing method means plain.
        let method = match method {
            None => ChallengeMethod::Plain,
            Some(name) => ChallengeMethod::parse(name).map_err(|_| Rejection::UnknownMethod)?,
        };
        if method == ChallengeMethod::Plain && !self.allow_plain {
            return Err(Rejection::PlainNotAllowed);
        }
        let digest = crate::pkce::challenge_digest(value, method)
            .map_err(|_| Rejection::MalformedChallenge)?;
        Ok(Some(Challenge { method, digest }))
    }
}

#[cold]
fn unreachable_path() -> PathPattern {
    // The defaults are constant absolute paths; this branch cannot run, and
    // if it did, matching the root would over-match, which is the safe side.
    PathPattern::root()
}

/// A request's endpoint as `PkceLayer::classify` found it, and the settings
/// it was found by: a service trusts it only from its own settings. Only
/// this crate can make one, so a client or a caller cannot choose the
/// endpoint a request is checked as.
#[derive(Debug, Clone)]
pub(crate) struct Classified {
    endpoint: Endpoint,
    config: Arc<Config>,
}

impl Classified {
    pub(crate) fn new(endpoint: Endpoint, config: &Arc<Config>) -> Self {
        Self {
            endpoint,
            config: config.clone(),
        }
    }

    /// Whether the mark was made with these very settings.
    pub(crate) fn is_from(&self, config: &Arc<Config>) -> bool {
        Arc::ptr_eq(&self.config, config)
    }

    pub(crate) fn endpoint(&self) -> Endpoint {
        self.endpoint
    }
}
