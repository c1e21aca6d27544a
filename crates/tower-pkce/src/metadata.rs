//! Discovery metadata (RFC 8414, OpenID Connect Discovery 1.0): made to tell
//! the truth about PKCE. The metadata step: a discovery document the
//! upstream serves is rewritten to advertise the challenge methods accepted.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body::Body;
use tower_service::Service;

use crate::body::{Collected, RequestBody, ResponseBody, collect_bounded, frames_of};
use crate::coding;
use crate::inspect::{Asked, needs_inspection};
use crate::request::set_content_length;
use crate::shared::Shared;
use crate::store::Store;

/// The fields of pushed authorization requests (RFC 9126 §5), removed while
/// PAR is not supported: a PAR request would hide the challenge.
const PAR_FIELDS: [&str; 2] = [
    "pushed_authorization_request_endpoint",
    "require_pushed_authorization_requests",
];

/// Sets `code_challenge_methods_supported` to `methods` in a metadata
/// document, and removes the PAR fields when `drop_par` is set. Every other
/// field is kept, in its order.
///
/// Returns `None` when `json` is not a JSON object, so that the caller
/// hands the body on unchanged.
pub(crate) fn rewrite_metadata(json: &[u8], methods: &[&str], drop_par: bool) -> Option<Vec<u8>> {
    let serde_json::Value::Object(mut doc) = serde_json::from_slice(json).ok()? else {
        return None;
    };
    doc.insert(
        "code_challenge_methods_supported".to_owned(),
        serde_json::Value::from(methods),
    );
    if drop_par {
        for field in PAR_FIELDS {
            doc.shift_remove(field);
        }
    }
    serde_json::to_vec(&doc).ok()
}

pub(crate) async fn discovery<S, St, ReqBody, ResBody>(
    shared: Arc<Shared<St>>,
    mut inner: S,
    req: Request<ReqBody>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
    St: Store,
    ReqBody: Body<Data = Bytes>,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    let is_head = req.method() == Method::HEAD;
    let asked = Asked::of(req.headers(), req.uri());
    let response = inner.call(req.map(RequestBody::inner)).await?;
    if needs_inspection(&response) {
        return Ok(shared.inspect_response(response, asked, None).await);
    }
    let (mut parts, body) = response.into_parts();
    if parts.status != StatusCode::OK {
        return Ok(Response::from_parts(parts, ResponseBody::inner(body)));
    }
    if is_head {
        parts.headers.remove(header::ETAG);
        parts.headers.remove(header::CONTENT_LENGTH);
        return Ok(Response::from_parts(parts, ResponseBody::inner(body)));
    }
    let limit = shared.config.metadata_limit;
    let (data, trailers) = match collect_bounded(body, limit).await {
        Collected::Complete { data, trailers } => (data, trailers),
        Collected::Over { frames, rest } => {
            return Ok(Response::from_parts(
                parts,
                ResponseBody::replay(frames, None, Some(rest)),
            ));
        }
        Collected::Failed { frames, error } => {
            return Ok(Response::from_parts(
                parts,
                ResponseBody::replay(frames, Some(error), None),
            ));
        }
    };
    let decoded = match parts
        .headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
    {
        None => Ok(Cow::Borrowed(&data[..])),
        Some(enc) => coding::decode_content(enc, &data, limit).map(Cow::Owned),
    };
    let rewritten = decoded
        .ok()
        .and_then(|d| rewrite_metadata(&d, shared.config.methods_supported(), true));
    match rewritten {
        Some(json) => {
            parts.headers.remove(header::CONTENT_ENCODING);
            parts.headers.remove(header::ETAG);
            set_content_length(&mut parts.headers, json.len());
            tracing::debug!("discovery metadata rewritten");
            Ok(Response::from_parts(
                parts,
                ResponseBody::full(Bytes::from(json)),
            ))
        }
        None => Ok(Response::from_parts(
            parts,
            ResponseBody::replay(frames_of(data, trailers), None, None),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_methods_and_keeps_the_rest_in_order() {
        let doc = br#"{"issuer":"https://as","token_endpoint":"https://as/token","code_challenge_methods_supported":["plain"],"pushed_authorization_request_endpoint":"https://as/par","require_pushed_authorization_requests":false,"x":{"y":[1,2]}}"#;
        let out = rewrite_metadata(doc, &["S256"], true).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"issuer":"https://as","token_endpoint":"https://as/token","code_challenge_methods_supported":["S256"],"x":{"y":[1,2]}}"#
        );
    }

    #[test]
    fn adds_methods_when_absent() {
        let out = rewrite_metadata(br#"{"issuer":"i"}"#, &["S256", "plain"], false).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"issuer":"i","code_challenge_methods_supported":["S256","plain"]}"#
        );
    }

    #[test]
    fn not_an_object() {
        for doc in [&b"[]"[..], b"not json", b"", b"\"x\""] {
            assert!(rewrite_metadata(doc, &["S256"], true).is_none());
        }
    }
}
