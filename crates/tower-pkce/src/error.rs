//! Rejections: why the middleware answered a request itself, and the
//! response it answered with.

use std::fmt;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

/// Why a request was refused. It is put into the extensions of the
/// rejection response, so that callers can inspect it.
///
/// No variant carries a code, verifier, state or any other request value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rejection {
    /// A malformed percent-encoding, a parameter that is not UTF-8, a name
    /// with a bracket, or a body that is not `name=value` pairs.
    MalformedParameters,
    /// A parameter that RFC 6749 §3.1/§3.2 allows once appeared twice.
    RepeatedParameter(&'static str),
    /// A parameter given in both the query and the body with different values.
    ConflictingParameter(&'static str),
    /// The authorization request has no `client_id` (RFC 6749 §4.1.1).
    MissingClientId,
    /// PKCE is required and the authorization request has no `code_challenge`.
    ChallengeRequired,
    /// `code_challenge_method` was sent without a `code_challenge`.
    MethodWithoutChallenge,
    /// The method is `plain` (explicitly, or by default when absent, RFC 7636
    /// §4.3) and the policy does not allow it.
    PlainNotAllowed,
    /// A `code_challenge_method` other than `S256` or `plain`.
    UnknownMethod,
    /// A `code_challenge` that breaks RFC 7636 §4.2.
    MalformedChallenge,
    /// `request_uri` (PAR) or `request` (a request object) hides the challenge.
    RequestObjectUnsupported,
    /// The transaction handle in `state` is unknown or expired.
    TransactionExpired,
    /// The store is at its capacity bound, and holds no pending
    /// authorization to make room by evicting.
    StoreFull,
    /// The request's [`Source`](crate::Source) holds as many pending
    /// authorizations as the store allows one source: 429, with
    /// `Retry-After`.
    SourceQuota,
    /// The store could not be reached; the middleware fails closed.
    StoreUnavailable,
    /// The upstream issued a code that is already bound.
    CodeReissued,
    /// A request body over the configured bound.
    BodyTooLarge,
    /// A request body that could not be read.
    BodyUnreadable,
    /// A token request whose media type is not `application/x-www-form-urlencoded`.
    UnsupportedMediaType,
    /// A method the endpoint does not accept.
    MethodNotAllowed,
    /// Token parameters in the query string of a token request.
    TokenParametersInQuery,
    /// An `authorization_code` grant without `code`.
    MissingCode,
    /// HTTP Basic and the body name different clients.
    ConflictingClient,
    /// A `client_assertion` whose claims cannot be read.
    MalformedClientAssertion,
    /// The code has no PKCE binding and PKCE is required.
    UnboundCode,
    /// The code was redeemed or burned already.
    CodeSpent,
    /// The code was bound, and its binding's TTL ended before it was
    /// redeemed.
    CodeExpired,
    /// The code was issued to another client.
    ClientMismatch,
    /// The `redirect_uri` differs from the authorization request's.
    RedirectUriMismatch,
    /// The code was bound to a challenge and no `code_verifier` was sent.
    VerifierMissing,
    /// The `code_verifier` breaks RFC 7636 §4.1.
    VerifierMalformed,
    /// The `code_verifier` does not match the challenge.
    VerifierMismatch,
    /// A `code_verifier` for a code issued without a challenge: the PKCE
    /// downgrade of RFC 9700 §4.8.2.
    Downgrade,
    /// A continuation of a transaction (an authorization request whose
    /// `state` is its handle) with another `client_id`, `redirect_uri` or
    /// `code_challenge` than the transaction's.
    ContinuationMismatch,
    /// A `Connection` header that names a field the checks or the framing
    /// depend on, which a proxy would remove before the upstream reads it.
    ConnectionNamesCheckedField,
    /// Trailer fields on a request whose body the middleware checks.
    TrailersNotAllowed,
    /// An upstream response that hands out a code or an error beside a
    /// transaction handle in a way that cannot be read with certainty
    /// (several codes or states, unusual separators, an unreadable page):
    /// withheld, since its code would leave unbound.
    UncertainDelivery,
    /// An upstream response that hands out a code or an error beside a
    /// transaction handle to somewhere other than the transaction's
    /// `redirect_uri`: withheld.
    ForeignDelivery,
    /// An authorization request that carries `code` or `error`, which a
    /// server echoing its request into a page would hand out beside the
    /// transaction handle.
    ResponseParameterInRequest,
    /// A cookie named as a parameter the request is checked by, which a
    /// server reading cookies as parameters (PHP's `$_REQUEST`) would take
    /// over the checked one.
    ParameterInCookie,
    /// A path still percent-encoded after the rounds of decoding that
    /// endpoints are matched on, which a server that decodes again could
    /// read as any endpoint.
    PathEncodedTooDeep,
}

impl Rejection {
    /// The OAuth error code (RFC 6749 §4.1.2.1 and §5.2).
    pub fn error_code(self) -> &'static str {
        use Rejection::*;
        match self {
            StoreFull | SourceQuota | StoreUnavailable | CodeReissued => "temporarily_unavailable",
            UncertainDelivery | ForeignDelivery => "server_error",
            UnboundCode | CodeSpent | CodeExpired | ClientMismatch | RedirectUriMismatch
            | VerifierMissing | VerifierMalformed | VerifierMismatch | Downgrade => "invalid_grant",
            _ => "invalid_request",
        }
    }

    /// The HTTP status of the rejection.
    pub fn status(self) -> StatusCode {
        use Rejection::*;
        match self {
            StoreFull | StoreUnavailable | CodeReissued => StatusCode::SERVICE_UNAVAILABLE,
            SourceQuota => StatusCode::TOO_MANY_REQUESTS,
            UncertainDelivery | ForeignDelivery => StatusCode::BAD_GATEWAY,
            BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// A short, stable name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        use Rejection::*;
        match self {
            MalformedParameters => "malformed_parameters",
            RepeatedParameter(_) => "repeated_parameter",
            ConflictingParameter(_) => "conflicting_parameter",
            MissingClientId => "missing_client_id",
            ChallengeRequired => "challenge_required",
            MethodWithoutChallenge => "method_without_challenge",
            PlainNotAllowed => "plain_not_allowed",
            UnknownMethod => "unknown_method",
            MalformedChallenge => "malformed_challenge",
            RequestObjectUnsupported => "request_object_unsupported",
            TransactionExpired => "transaction_expired",
            StoreFull => "store_full",
            SourceQuota => "source_quota",
            StoreUnavailable => "store_unavailable",
            CodeReissued => "code_reissued",
            BodyTooLarge => "body_too_large",
            BodyUnreadable => "body_unreadable",
            UnsupportedMediaType => "unsupported_media_type",
            MethodNotAllowed => "method_not_allowed",
            TokenParametersInQuery => "token_parameters_in_query",
            MissingCode => "missing_code",
            ConflictingClient => "conflicting_client",
            MalformedClientAssertion => "malformed_client_assertion",
            UnboundCode => "unbound_code",
            CodeSpent => "code_spent",
            CodeExpired => "code_expired",
            ClientMismatch => "client_mismatch",
            RedirectUriMismatch => "redirect_uri_mismatch",
            VerifierMissing => "verifier_missing",
            VerifierMalformed => "verifier_malformed",
            VerifierMismatch => "verifier_mismatch",
            Downgrade => "downgrade",
            ContinuationMismatch => "continuation_mismatch",
            ConnectionNamesCheckedField => "connection_names_checked_field",
            TrailersNotAllowed => "trailers_not_allowed",
            UncertainDelivery => "uncertain_delivery",
            ForeignDelivery => "foreign_delivery",
            ResponseParameterInRequest => "response_parameter_in_request",
            ParameterInCookie => "parameter_in_cookie",
            PathEncodedTooDeep => "path_encoded_too_deep",
        }
    }

    /// A human-readable `error_description`. It names parameters, never their
    /// values.
    pub fn description(self) -> String {
        use Rejection::*;
        match self {
            MalformedParameters => "the request parameters are not well-formed (bad percent-encoding, not UTF-8, a name with a bracket, or not name=value pairs)".into(),
            RepeatedParameter(name) => format!("the parameter {name} must not be repeated"),
            ConflictingParameter(name) => {
                format!("the parameter {name} has different values in the query and the body")
            }
            MissingClientId => "client_id is required".into(),
            ChallengeRequired => "code_challenge is required (PKCE, RFC 7636)".into(),
            MethodWithoutChallenge => "code_challenge_method was sent without code_challenge".into(),
            PlainNotAllowed => {
                "code_challenge_method plain is not allowed; use S256 (a missing method means plain)".into()
            }
            UnknownMethod => "code_challenge_method must be S256".into(),
            MalformedChallenge => {
                "code_challenge is malformed: an S256 challenge is 43 characters of base64url without padding".into()
            }
            RequestObjectUnsupported => {
                "request_uri and request parameters are not supported here; send the parameters in the request".into()
            }
            TransactionExpired => "the sign-in took too long or was already completed; please start it again".into(),
            StoreFull => "too many sign-ins are in progress; please try again shortly".into(),
            SourceQuota => {
                "too many sign-ins are in progress from your network; please try again shortly".into()
            }
            StoreUnavailable => "the service is temporarily unavailable; please try again".into(),
            CodeReissued => "the authorization server issued a code that was already used".into(),
            BodyTooLarge => "the request body is too large".into(),
            BodyUnreadable => "the request body could not be read".into(),
            UnsupportedMediaType => {
                "the token request must be application/x-www-form-urlencoded".into()
            }
            MethodNotAllowed => "the token endpoint accepts only POST".into(),
            TokenParametersInQuery => "token request parameters must be sent in the body, not the query".into(),
            MissingCode => "code is required".into(),
            ConflictingClient => "the client authentication and client_id disagree".into(),
            MalformedClientAssertion => "client_assertion is malformed".into(),
            UnboundCode => "the authorization code was not issued with PKCE".into(),
            CodeSpent => "the authorization code has already been used".into(),
            CodeExpired => "the authorization code has expired".into(),
            ClientMismatch => "the authorization code was issued to another client".into(),
            RedirectUriMismatch => {
                "redirect_uri does not match the authorization request".into()
            }
            VerifierMissing => "code_verifier is required".into(),
            VerifierMalformed => "code_verifier is malformed".into(),
            VerifierMismatch => "code_verifier does not match the code_challenge".into(),
            Downgrade => "code_verifier was sent but the authorization request had no code_challenge".into(),
            ContinuationMismatch => {
                "this request continues a sign-in that was started with another client_id, redirect_uri or code_challenge".into()
            }
            ConnectionNamesCheckedField => {
                "the Connection header must not name a field the request is checked by".into()
            }
            TrailersNotAllowed => "trailer fields are not allowed on this request".into(),
            UncertainDelivery => {
                "the authorization server answered in a way that cannot be checked safely; please start the sign-in again".into()
            }
            ForeignDelivery => {
                "the authorization server sent the result somewhere other than the application's redirect_uri".into()
            }
            ResponseParameterInRequest => {
                "an authorization request must not carry code or error".into()
            }
            ParameterInCookie => {
                "a cookie must not be named as a request parameter".into()
            }
            PathEncodedTooDeep => {
                "the request path is percent-encoded too many times over".into()
            }
        }
    }

    /// The RFC 6749 §5.2 JSON body.
    pub fn json_body(self) -> String {
        let body = serde_json::json!({
            "error": self.error_code(),
            "error_description": self.description(),
        });
        body.to_string()
    }

    /// The response for a token endpoint: RFC 6749 §5.2 JSON with
    /// `Cache-Control: no-store`.
    pub(crate) fn json_response(self) -> Response<Bytes> {
        let mut response = Response::new(Bytes::from(self.json_body()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        no_store(headers);
        retry_after(self, headers);
        if self == Rejection::MethodNotAllowed {
            headers.insert(header::ALLOW, HeaderValue::from_static("POST, OPTIONS"));
        }
        response.extensions_mut().insert(self);
        response
    }

    /// The response for a browser at the authorization endpoint: a small
    /// HTML page, or JSON when `Accept` asks for it. Never a redirect.
    pub(crate) fn page_response(self, wants_json: bool) -> Response<Bytes> {
        if wants_json {
            return self.json_response();
        }
        let (title, lead) = match self {
            Rejection::TransactionExpired => ("Sign-in expired", "The sign-in took too long"),
            Rejection::StoreFull
            | Rejection::SourceQuota
            | Rejection::StoreUnavailable
            | Rejection::CodeReissued => ("Try again", "The sign-in service is busy"),
            Rejection::UncertainDelivery | Rejection::ForeignDelivery => (
                "Sign-in stopped",
                "The sign-in could not be completed safely",
            ),
            _ => (
                "Invalid sign-in request",
                "The application sent an invalid sign-in request",
            ),
        };
        let page = format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title></head>\
             <body><h1>{lead}</h1><p>{}</p><p>Error: <code>{}</code></p></body></html>\n",
            self.description(),
            self.error_code()
        );
        let mut response = Response::new(Bytes::from(page));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        no_store(headers);
        retry_after(self, headers);
        response.extensions_mut().insert(self);
        response
    }
}

/// The `Retry-After` of a [`Rejection::SourceQuota`], in seconds.
///
/// A source at its quota gets room back as soon as one of its sign-ins
/// completes (a code bound, its pending record gone), which for the
/// people behind a shared address takes seconds; the records of one that
/// only starts sign-ins stay until their TTL ends, and no hint helps there.
/// A short, fixed delay serves the first and costs nothing for the second.
pub const SOURCE_QUOTA_RETRY_AFTER: u64 = 10;

fn retry_after(rejection: Rejection, headers: &mut http::HeaderMap) {
    if rejection == Rejection::SourceQuota {
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from(SOURCE_QUOTA_RETRY_AFTER),
        );
    }
}

fn no_store(headers: &mut http::HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error_code(), self.description())
    }
}

impl std::error::Error for Rejection {}

/// A setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// An endpoint path that is not an absolute path.
    Path {
        /// Which setting.
        setting: &'static str,
        /// Why.
        reason: String,
    },
    /// The authorization and token paths normalise to the same path.
    SamePaths,
    /// A duration of zero.
    ZeroTtl,
    /// A maximum of zero failed attempts would burn every code at its first use.
    ZeroFailedAttempts,
    /// An origin that is not a valid header value.
    Origin,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Path { setting, reason } => write!(f, "{setting}: {reason}"),
            Self::SamePaths => f.write_str("authorize_path and token_path must differ"),
            Self::ZeroTtl => f.write_str("ttl must be greater than zero"),
            Self::ZeroFailedAttempts => f.write_str("max_failed_attempts must be at least 1"),
            Self::Origin => f.write_str("allowed origin is not a valid header value"),
        }
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_over_its_quota_gets_429_with_retry_after() {
        let r = Rejection::SourceQuota;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.error_code(), "temporarily_unavailable");
        assert_eq!(r.as_str(), "source_quota");
        for response in [r.json_response(), r.page_response(false)] {
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(response.headers()[header::RETRY_AFTER], "10");
            assert_eq!(response.extensions().get::<Rejection>(), Some(&r));
        }
        let full = Rejection::StoreFull.json_response();
        assert!(!full.headers().contains_key(header::RETRY_AFTER));
    }
}
