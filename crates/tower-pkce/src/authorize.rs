//! The authorization request: a challenge checked and recorded, the client's
//! `state` replaced by a transaction handle, or a continuation matched.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use http_body::Body;
use tower_service::Service;

use crate::bind::Minted;
use crate::body::{RequestBody, ResponseBody};
use crate::error::Rejection;
use crate::form;
use crate::inspect::{Asked, page};
use crate::policy::{Config, Requirement};
use crate::request::{
    announces_body, connection_names_checked_field, cookie_names_checked_parameter, form_error,
    inert, is_form, read_body, set_content_length,
};
use crate::shared::Shared;
use crate::store::{Challenge, PendingAuthorization, Store, StoreError, StoreKey, fingerprint};
use crate::{Source, handle};

/// The parameters of an authorization request that the policy reads.
const AUTHORIZE_PARAMS: [&str; 9] = [
    "state",
    "code_challenge",
    "code_challenge_method",
    "client_id",
    "redirect_uri",
    "request_uri",
    "request",
    "code",
    "error",
];
const STATE: usize = 0;
const CHALLENGE: usize = 1;
const METHOD: usize = 2;
const CLIENT_ID: usize = 3;
const REDIRECT_URI: usize = 4;
const REQUEST_URI: usize = 5;
const REQUEST: usize = 6;
const CODE: usize = 7;
const ERROR: usize = 8;
const PKCE_PARAMS: [&str; 2] = ["code_challenge", "code_challenge_method"];

type Params<'a> = [Option<Cow<'a, str>>; 9];
type AuthorizeLayout = form::Layout<9>;

/// Merges query and body parameters; a parameter in both must agree.
fn merge<'a>(query: Params<'a>, body: Option<Params<'a>>) -> Result<Params<'a>, Rejection> {
    let Some(body) = body else { return Ok(query) };
    let mut merged = query;
    for (i, from_body) in body.into_iter().enumerate() {
        let Some(slot) = merged.get_mut(i) else {
            continue;
        };
        match (slot.as_ref(), from_body) {
            (Some(q), Some(b)) if *q != b => {
                let name = AUTHORIZE_PARAMS.get(i).copied().unwrap_or("parameter");
                return Err(Rejection::ConflictingParameter(name));
            }
            (None, Some(b)) => *slot = Some(b),
            _ => {}
        }
    }
    Ok(merged)
}

fn get<'p, 'a>(params: &'p Params<'a>, i: usize) -> Option<&'p str> {
    params.get(i).and_then(|p| p.as_deref())
}

pub(crate) fn is_authorize_param(name: &str) -> bool {
    AUTHORIZE_PARAMS.contains(&name) || name.starts_with("code_challenge")
}

enum Authorized {
    /// Forward the request as it is.
    Forward,
    /// Forward the request with this query and body.
    Rewritten {
        query: Option<String>,
        body: Option<String>,
        minted: Minted,
    },
}

/// What an authorization request needs from the store, decided before
/// the store is asked, so that the parsed parameters are not held while it
/// answers.
enum Plan {
    /// Forward the request as it is.
    Forward,
    /// The state is a handle: forward when its transaction is pending and
    /// the request matches it.
    Continuation(Continuation),
    /// Forward the rewritten request, with a new transaction.
    Record {
        query: Option<String>,
        body: Option<String>,
        minted: Minted,
    },
}

fn plan_authorization(config: &Config, query: &str, body: Option<&str>) -> Result<Plan, Rejection> {
    let form::Placed {
        values: from_query,
        layout: query_layout,
    } = form::collect_placed(query, AUTHORIZE_PARAMS, form::Separators::Ampersand, false)
        .map_err(form_error)?;
    let (from_body, body_layout) = match body
        .map(|b| form::collect_placed(b, AUTHORIZE_PARAMS, form::Separators::Ampersand, true))
    {
        Some(Ok(placed)) => (Some(placed.values), Some(placed.layout)),
        Some(Err(e)) => return Err(form_error(e)),
        None => (None, None),
    };
    let client_in_body = from_body
        .as_ref()
        .is_some_and(|b| b.get(CLIENT_ID).is_some_and(Option::is_some));
    let client_in_query = from_query.get(CLIENT_ID).is_some_and(Option::is_some);
    let state_in_body = from_body
        .as_ref()
        .is_some_and(|b| b.get(STATE).is_some_and(Option::is_some));
    let state_in_query = from_query.get(STATE).is_some_and(Option::is_some);
    let params = merge(from_query, from_body)?;
    // A server that echoes its request into a page beside the handle (a
    // consent form) would hand the value out as if it had issued it.
    if get(&params, CODE).is_some() || get(&params, ERROR).is_some() {
        return Err(Rejection::ResponseParameterInRequest);
    }

    if let Some(state) = get(&params, STATE).filter(|s| handle::is_handle(s)) {
        return continuation(config, state, &params).map(Plan::Continuation);
    }

    let client_id = get(&params, CLIENT_ID);
    let requirement = config.requirement_for(client_id);
    if get(&params, REQUEST_URI).is_some() || get(&params, REQUEST).is_some() {
        return match requirement {
            Requirement::Required => Err(Rejection::RequestObjectUnsupported),
            Requirement::Optional => Ok(Plan::Forward),
        };
    }
    let Some(client_id) = client_id else {
        return Err(Rejection::MissingClientId);
    };
    let challenge = config.challenge(get(&params, CHALLENGE), get(&params, METHOD), requirement)?;

    let handle = handle::mint().map_err(|_| Rejection::StoreUnavailable)?;
    let record = PendingAuthorization {
        challenge,
        client: fingerprint(client_id),
        redirect_uri: get(&params, REDIRECT_URI).map(fingerprint),
        state: get(&params, STATE).map(Into::into),
    };

    let remove: &[&str] = if config.strip_pkce_params {
        &PKCE_PARAMS
    } else {
        &[]
    };
    // The handle goes where the client put its state; without one, beside
    // the client_id, where the upstream reads the request from.
    let no_state = !state_in_query && !state_in_body;
    let put_in_query = state_in_query || (no_state && client_in_query);
    let put_in_body = state_in_body || (no_state && client_in_body);
    let edit = |input: &str, layout: Option<&AuthorizeLayout>, set: bool| {
        // Setting the handle alone is a splice where the state stands,
        // found while reading; anything else is a rewrite.
        if set
            && remove.is_empty()
            && let Some(out) =
                layout.and_then(|l| form::set_placed(input, l, STATE, "state", &handle))
        {
            return Ok(out);
        }
        form::edit(
            input,
            set.then_some(("state", handle.as_str())),
            remove,
            form::Separators::Ampersand,
        )
        .map_err(form_error)
    };
    let query = if put_in_query || !remove.is_empty() {
        Some(edit(query, Some(&query_layout), put_in_query)?)
    } else {
        None
    };
    let body = match body {
        Some(b) if put_in_body || !remove.is_empty() => {
            Some(edit(b, body_layout.as_ref(), put_in_body)?)
        }
        _ => None,
    };
    Ok(Plan::Record {
        query,
        body,
        minted: Minted {
            handle,
            record,
            source: None,
        },
    })
}

/// What a continuation says of its transaction: each of these it carries
/// must be the transaction's (invariant I4).
struct Continuation {
    key: StoreKey,
    client: Option<crate::store::Fingerprint>,
    redirect_uri: Option<crate::store::Fingerprint>,
    challenge: Option<Challenge>,
}

fn continuation(
    config: &Config,
    handle: &str,
    params: &Params<'_>,
) -> Result<Continuation, Rejection> {
    // A request object could name another client or redirect_uri than the
    // parameters that are checked here.
    if get(params, REQUEST_URI).is_some() || get(params, REQUEST).is_some() {
        return Err(Rejection::RequestObjectUnsupported);
    }
    let challenge = match get(params, CHALLENGE) {
        Some(_) => config.challenge(
            get(params, CHALLENGE),
            get(params, METHOD),
            Requirement::Optional,
        )?,
        None if get(params, METHOD).is_some() => return Err(Rejection::MethodWithoutChallenge),
        None => None,
    };
    Ok(Continuation {
        key: StoreKey::of(handle),
        client: get(params, CLIENT_ID).map(fingerprint),
        redirect_uri: get(params, REDIRECT_URI).map(fingerprint),
        challenge,
    })
}

impl Continuation {
    /// Whether what the continuation carries is its transaction's: the same
    /// client, the same redirect_uri (one where the transaction had none
    /// is not), the same challenge.
    fn matches(&self, pending: &PendingAuthorization) -> bool {
        self.client.is_none_or(|c| c == pending.client)
            && self
                .redirect_uri
                .is_none_or(|r| pending.redirect_uri == Some(r))
            && self.challenge.is_none_or(|c| pending.challenge == Some(c))
    }
}

async fn check_authorization<St: Store>(
    shared: &Shared<St>,
    query: &str,
    body: Option<&str>,
    source: Option<Source>,
) -> Result<Authorized, Rejection> {
    match plan_authorization(&shared.config, query, body)? {
        Plan::Forward => Ok(Authorized::Forward),
        Plan::Continuation(continuation) => {
            match shared.store.get_pending(&continuation.key).await {
                Ok(Some(pending)) if continuation.matches(&pending) => {
                    tracing::debug!(endpoint = "authorize", "continuation forwarded");
                    Ok(Authorized::Forward)
                }
                Ok(Some(_)) => Err(Rejection::ContinuationMismatch),
                Ok(None) => Err(Rejection::TransactionExpired),
                Err(e) => {
                    tracing::error!(error = %e, "store failed while checking a transaction");
                    Err(Rejection::StoreUnavailable)
                }
            }
        }
        Plan::Record {
            query,
            body,
            mut minted,
        } => {
            // A store that can tell it would refuse (the source at its
            // quota, the store full, or its backend failed a moment ago)
            // refuses before the upstream does any work; otherwise the
            // write after the upstream's answer does.
            match shared.store.admission_hint(source) {
                Ok(()) => {}
                Err(StoreError::Full) => return Err(Rejection::StoreFull),
                Err(StoreError::SourceQuota) => return Err(Rejection::SourceQuota),
                Err(e) => {
                    tracing::warn!(error = %e, "store unavailable; authorization refused");
                    return Err(Rejection::StoreUnavailable);
                }
            }
            minted.source = source;
            Ok(Authorized::Rewritten {
                query,
                body,
                minted,
            })
        }
    }
}

fn with_query(uri: &Uri, query: &str) -> Option<Uri> {
    let path = uri.path();
    let mut pq = String::with_capacity(path.len() + 1 + query.len());
    pq.push_str(path);
    if !query.is_empty() {
        pq.push('?');
        pq.push_str(query);
    }
    let mut parts = uri.clone().into_parts();
    // From the String's own buffer: no copy.
    parts.path_and_query = Some(PathAndQuery::from_maybe_shared(Bytes::from(pq)).ok()?);
    Uri::from_parts(parts).ok()
}

/// The request is taken apart before the `async` block, which then holds
/// the parts alone: an `async fn` would hold the whole request as well, in
/// a future that is boxed (copied whole) and polled on every request.
pub(crate) fn authorize<S, St, ReqBody, ResBody>(
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
    let asked = Asked::of(req.headers(), req.uri());
    let json = asked.wants_json;
    let (mut parts, body) = req.into_parts();
    async move {
        if connection_names_checked_field(&parts.headers) {
            return Ok(reject_authorize(
                Rejection::ConnectionNamesCheckedField,
                json,
            ));
        }
        if cookie_names_checked_parameter(&parts.headers, is_authorize_param) {
            return Ok(reject_authorize(Rejection::ParameterInCookie, json));
        }
        // Whatever the method: a server that reads a form for any method
        // (or for `post`, a method of its own) would read what was not
        // checked.
        let reads_body = announces_body(&parts.headers, &body);
        let (data, body) = if reads_body {
            match read_body(&parts.headers, body, shared.config.max_authorize_body).await {
                Ok(data) => (Some(data), None),
                Err(rejection) => return Ok(reject_authorize(rejection, json)),
            }
        } else {
            (None, Some(body))
        };
        let form_body = match &data {
            Some(d) if !d.is_empty() => {
                if !is_form(&parts.headers) {
                    return Ok(reject_authorize(Rejection::UnsupportedMediaType, json));
                }
                match std::str::from_utf8(d) {
                    Ok(s) => Some(s),
                    _ => return Ok(reject_authorize(Rejection::MalformedParameters, json)),
                }
            }
            _ => None,
        };
        let query = parts.uri.query().unwrap_or("");
        let source = parts.extensions.get::<Source>().copied();
        let outcome = match check_authorization(&shared, query, form_body, source).await {
            Ok(outcome) => outcome,
            Err(rejection) => return Ok(reject_authorize(rejection, json)),
        };
        let (body, minted) = match outcome {
            Authorized::Forward => match (data, body) {
                (Some(d), _) => (RequestBody::buffered(d), None),
                (None, Some(b)) => (RequestBody::inner(b), None),
                (None, None) => (RequestBody::buffered(Bytes::new()), None),
            },
            Authorized::Rewritten {
                query,
                body: new_body,
                minted,
            } => {
                if let Some(q) = query {
                    match with_query(&parts.uri, &q) {
                        Some(uri) => parts.uri = uri,
                        None => return Ok(reject_authorize(Rejection::MalformedParameters, json)),
                    }
                }
                let body = match (new_body, data, body) {
                    (Some(nb), _, _) => {
                        set_content_length(&mut parts.headers, nb.len());
                        RequestBody::buffered(Bytes::from(nb))
                    }
                    (None, Some(d), _) => RequestBody::buffered(d),
                    (None, None, Some(b)) => RequestBody::inner(b),
                    (None, None, None) => RequestBody::buffered(Bytes::new()),
                };
                (body, Some(minted))
            }
        };
        let body = inert(body, &mut parts.headers);
        let response = inner.call(Request::from_parts(parts, body)).await?;
        Ok(shared.inspect_response(response, asked, minted).await)
    }
}

fn reject_authorize<B: Body>(rejection: Rejection, json: bool) -> Response<ResponseBody<B>> {
    tracing::info!(
        endpoint = "authorize",
        reason = rejection.as_str(),
        "request rejected"
    );
    page(rejection, json)
}
