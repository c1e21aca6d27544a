//! The token request: the code's binding redeemed and checked against the
//! verifier, client and `redirect_uri`, and restored when the upstream
//! certainly did not redeem the code.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use tower_service::Service;

use crate::body::{RequestBody, ResponseBody};
use crate::client_auth::client_of;
use crate::error::Rejection;
use crate::form;
use crate::inspect::{Asked, needs_inspection};
use crate::policy::Requirement;
use crate::progress::{ForwardProgress, Progress};
use crate::request::{
    connection_names_checked_field, cookie_names_checked_parameter, form_error, inert, is_form,
    read_body, set_content_length,
};
use crate::shared::Shared;
use crate::store::{CodeBinding, Redemption, Store, StoreKey, fingerprint};

/// The parameters of a token request that the checks read.
const TOKEN_PARAMS: [&str; 6] = [
    "grant_type",
    "code",
    "code_verifier",
    "client_id",
    "redirect_uri",
    "client_assertion",
];
const T_GRANT: usize = 0;
const T_CODE: usize = 1;
const T_VERIFIER: usize = 2;
const T_CLIENT: usize = 3;
const T_REDIRECT: usize = 4;
const T_ASSERTION: usize = 5;
/// Token parameters that a server merging the query into the body (servlet
/// and PHP style) would read from the query string, where they would
/// override what was checked. Names are folded as [`form::name_of`] reads
/// them; `client_assertion` stands for every name that starts with it.
const TOKEN_QUERY_PARAMS: [&str; 6] = [
    "code",
    "code_verifier",
    "grant_type",
    "redirect_uri",
    "client_id",
    "client_assertion",
];

pub(crate) fn is_token_query_param(name: &str) -> bool {
    TOKEN_QUERY_PARAMS.contains(&name) || name.starts_with("client_assertion")
}
/// Token requests are read as a server that also splits on `;` would.
const TOKEN_SEPARATORS: form::Separators = form::Separators::AmpersandOrSemicolon;

/// A token request that passed, and the binding it redeemed (if any), to be
/// restored should the upstream fail.
struct Admitted {
    body: Bytes,
    redeemed: Option<(StoreKey, CodeBinding)>,
    changed: bool,
}

/// Refuses a token request's query that holds a token parameter, in any
/// spelling a server merging query and body would read.
fn check_token_query(query: Option<&str>) -> Result<(), Rejection> {
    let Some(query) = query else {
        return Ok(());
    };
    for pair in form::raw_pairs(query, TOKEN_SEPARATORS) {
        let name = form::name_of(pair).map_err(|_| Rejection::MalformedParameters)?;
        if is_token_query_param(&name) {
            return Err(Rejection::TokenParametersInQuery);
        }
    }
    Ok(())
}

async fn check_token<St: Store>(
    shared: &Shared<St>,
    headers: &HeaderMap,
    query: Option<&str>,
    data: Bytes,
) -> Result<Admitted, Rejection> {
    let config = &shared.config;
    check_token_query(query)?;
    let text = std::str::from_utf8(&data).map_err(|_| Rejection::MalformedParameters)?;
    let params = form::collect(text, TOKEN_PARAMS, TOKEN_SEPARATORS, true).map_err(form_error)?;
    let param = |i: usize| params.get(i).and_then(|p| p.as_deref());
    // Only grants known to carry no code pass unchecked; a missing grant
    // type, any spelling a lenient upstream could read as
    // authorization_code, or a request with a code is checked.
    let other_grant = param(T_GRANT).is_some_and(|g| config.passes_grant(g));
    if other_grant && param(T_CODE).is_none() {
        return Ok(Admitted {
            body: data.clone(),
            redeemed: None,
            changed: false,
        });
    }
    let code = param(T_CODE)
        .filter(|c| !c.is_empty())
        .ok_or(Rejection::MissingCode)?;
    let client = client_of(headers, param(T_CLIENT), param(T_ASSERTION))?;
    let verifier = param(T_VERIFIER);
    let key = StoreKey::of(code);

    let binding = match shared.store.redeem(&key).await {
        Ok(Redemption::Redeemed(binding)) => binding,
        Ok(Redemption::Spent) => return Err(Rejection::CodeSpent),
        Ok(Redemption::Expired) => return Err(Rejection::CodeExpired),
        Ok(Redemption::Missing) => {
            return match config.requirement_for_unbound(client.as_deref()) {
                Requirement::Required => Err(Rejection::UnboundCode),
                Requirement::Optional => {
                    tracing::debug!(endpoint = "token", "unbound code forwarded (optional mode)");
                    Ok(Admitted {
                        body: data.clone(),
                        redeemed: None,
                        changed: false,
                    })
                }
            };
        }
        Err(e) => {
            tracing::error!(error = %e, "store failed while redeeming a code");
            return Err(Rejection::StoreUnavailable);
        }
    };

    if let Err(rejection) = check_binding(&binding, client.as_deref(), param(T_REDIRECT), verifier)
    {
        let failures = binding.failures.saturating_add(1);
        if failures >= config.max_failed_attempts {
            tracing::warn!(failures, "code burned after repeated failed attempts");
        } else if let Err(e) = shared
            .store
            .restore(
                &key,
                CodeBinding {
                    failures,
                    ..binding
                },
            )
            .await
        {
            tracing::error!(error = %e, "store failed while counting a failed attempt; code stays spent");
        }
        return Err(rejection);
    }

    let (body, changed) = if config.strip_pkce_params && verifier.is_some() {
        match form::edit(text, None, &["code_verifier"], TOKEN_SEPARATORS) {
            Ok(stripped) => (Bytes::from(stripped), true),
            Err(e) => return Err(form_error(e)),
        }
    } else {
        (data.clone(), false)
    };
    tracing::info!(
        endpoint = "token",
        method = binding.challenge.map_or("none", |c| c.method.as_str()),
        "code verified"
    );
    Ok(Admitted {
        body,
        redeemed: Some((key, binding)),
        changed,
    })
}

fn check_binding(
    binding: &CodeBinding,
    client: Option<&str>,
    redirect_uri: Option<&str>,
    verifier: Option<&str>,
) -> Result<(), Rejection> {
    if client.map(fingerprint) != Some(binding.client) {
        return Err(Rejection::ClientMismatch);
    }
    // RFC 6749 §4.1.3: the redirect_uri must match where the authorization
    // request had one.
    if let (Some(uri), Some(recorded)) = (redirect_uri, binding.redirect_uri)
        && fingerprint(uri) != recorded
    {
        return Err(Rejection::RedirectUriMismatch);
    }
    match (&binding.challenge, verifier) {
        (None, None) => Ok(()),
        (None, Some(_)) => Err(Rejection::Downgrade),
        (Some(_), None) => Err(Rejection::VerifierMissing),
        (Some(challenge), Some(verifier)) => {
            if crate::pkce::check_unreserved(verifier).is_err() {
                return Err(Rejection::VerifierMalformed);
            }
            if crate::pkce::verify_digest(verifier, &challenge.digest) {
                Ok(())
            } else {
                Err(Rejection::VerifierMismatch)
            }
        }
    }
}

/// A redeemed binding on its way to the upstream. It goes back to the store
/// only when the upstream certainly did not redeem the code (invariant I6):
/// nothing of the request reached it, or it answered with a 5xx. After a
/// timeout, a lost connection or a cancelled request that may have reached
/// it, the code stays spent: the client starts the sign-in again, and no
/// code is ever forwarded twice.
struct RestoreGuard<St: Store> {
    store: St,
    key: StoreKey,
    binding: Option<CodeBinding>,
    progress: ForwardProgress,
}

impl<St: Store> RestoreGuard<St> {
    /// Settles the binding once the inner service answered (`Some(status)`)
    /// or failed (`None`).
    async fn settle(mut self, status: Option<StatusCode>) {
        let answered_5xx = status.is_some_and(|s| s.is_server_error());
        let unredeemed = match self.progress.get() {
            Progress::NotSent => true,
            Progress::Unanswered => false,
            _ => answered_5xx,
        };
        let Some(binding) = self.binding.take() else {
            return;
        };
        if unredeemed {
            restore_binding(&self.store, &self.key, binding, "upstream did not redeem").await;
        } else if answered_5xx || status.is_none() {
            tracing::warn!(
                "upstream may have redeemed the code before failing; binding stays spent"
            );
        }
    }
}

async fn restore_binding<St: Store>(store: &St, key: &StoreKey, binding: CodeBinding, why: &str) {
    match store.restore(key, binding).await {
        Ok(()) => tracing::warn!(why, "code binding restored for a retry"),
        Err(e) => tracing::error!(error = %e, why, "store failed while restoring a code binding"),
    }
}

impl<St: Store> Drop for RestoreGuard<St> {
    fn drop(&mut self) {
        let Some(binding) = self.binding.take() else {
            return;
        };
        if self.progress.get() != Progress::NotSent {
            tracing::warn!(
                "token request cancelled after it may have reached the upstream; binding stays spent"
            );
            return;
        }
        let store = self.store.clone();
        let key = self.key;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                drop(runtime.spawn(async move {
                    restore_binding(&store, &key, binding, "token request cancelled unsent").await;
                }));
            }
            Err(_) => tracing::error!(
                "token request cancelled outside a runtime; code binding not restored"
            ),
        }
    }
}

/// Takes the request apart before the `async` block, as [`authorize`] does.
pub(crate) fn token<S, St, ReqBody, ResBody>(
    shared: Arc<Shared<St>>,
    mut inner: S,
    req: Request<ReqBody>,
) -> impl Future<Output = Result<Response<ResponseBody<ResBody>>, S::Error>>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
    St: Store,
    ReqBody: Body<Data = Bytes>,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    let origin = req.headers().get(header::ORIGIN).cloned();
    let asked = Asked::of(req.headers(), req.uri());
    let (mut parts, body) = req.into_parts();
    async move {
        let answer = |response: Response<ResBody>| async {
            shared.origins.learn(origin.as_ref(), response.headers());
            if needs_inspection(&response) {
                shared.inspect_response(response, asked, None).await
            } else {
                response.map(ResponseBody::inner)
            }
        };
        let reject = |rejection: Rejection| {
            tracing::info!(
                endpoint = "token",
                reason = rejection.as_str(),
                "request rejected"
            );
            Ok(shared
                .token_rejection(rejection, origin.as_ref())
                .map(ResponseBody::full))
        };
        if parts.method == Method::OPTIONS {
            // A server that does not route by method reads a preflight's
            // query as a token request.
            if let Err(rejection) = check_token_query(parts.uri.query()) {
                return reject(rejection);
            }
            if cookie_names_checked_parameter(&parts.headers, is_token_query_param) {
                return reject(Rejection::ParameterInCookie);
            }
            let request = Request::from_parts(parts, RequestBody::inner(body));
            let response = inner.call(request).await?;
            return Ok(answer(response).await);
        }
        if connection_names_checked_field(&parts.headers) {
            return reject(Rejection::ConnectionNamesCheckedField);
        }
        if cookie_names_checked_parameter(&parts.headers, is_token_query_param) {
            return reject(Rejection::ParameterInCookie);
        }
        if !is_form(&parts.headers) {
            return reject(Rejection::UnsupportedMediaType);
        }
        let data = match read_body(&parts.headers, body, shared.config.max_token_body).await {
            Ok(data) => data,
            Err(rejection) => return reject(rejection),
        };
        let admitted = match check_token(&shared, &parts.headers, parts.uri.query(), data).await {
            Ok(admitted) => admitted,
            Err(rejection) => return reject(rejection),
        };
        if admitted.changed {
            set_content_length(&mut parts.headers, admitted.body.len());
        }
        let guard = admitted.redeemed.map(|(key, binding)| {
            let progress = ForwardProgress::default();
            parts.extensions.insert(progress.clone());
            RestoreGuard {
                store: shared.store.clone(),
                key,
                binding: Some(binding),
                progress,
            }
        });
        let body = inert(RequestBody::buffered(admitted.body), &mut parts.headers);
        let request = Request::from_parts(parts, body);
        let result = inner.call(request).await;
        if let Some(guard) = guard {
            guard
                .settle(result.as_ref().ok().map(Response::status))
                .await;
        }
        Ok(answer(result?).await)
    }
}
