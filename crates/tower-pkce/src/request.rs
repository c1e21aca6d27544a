//! Reading a request as the upstream would: its media type, its body, and
//! the fields that could make it read otherwise than it was checked.

use bytes::Bytes;
use http::Request;
use http::header::{self, HeaderMap, HeaderValue};
use http_body::Body;

use crate::body::{RequestBody, RequestBodyError, collect_request};
use crate::error::Rejection;
use crate::form::{self, FormError};

pub(crate) fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("json") && !a.contains("text/html"))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether a request body is a form the middleware reads exactly as any
/// upstream would: `application/x-www-form-urlencoded` in UTF-8 (or ASCII),
/// with no content coding. Another charset or a compressed body could hold
/// parameters the upstream sees and the middleware does not.
pub(crate) fn is_form(headers: &HeaderMap) -> bool {
    // Servers differ on which of several fields they read.
    if headers
        .get_all(header::CONTENT_TYPE)
        .iter()
        .nth(1)
        .is_some()
    {
        return false;
    }
    let coded = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"));
    if coded {
        return false;
    }
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    // A header value that passed to_str is visible ASCII, spaces and tabs:
    // the byte-wise trims below trim what str::trim would.
    let mut parts = ct.as_bytes().split(|&b| b == b';');
    let essence = parts.next().unwrap_or_default().trim_ascii();
    if !essence.eq_ignore_ascii_case(b"application/x-www-form-urlencoded") {
        return false;
    }
    parts.all(|param| {
        let (name, value) = match param.iter().position(|&b| b == b'=') {
            Some(eq) => param.split_at(eq),
            None => (param, &b""[..]),
        };
        let value = value.get(1..).unwrap_or_default().trim_ascii();
        // Every quote at either end goes, as str::trim_matches('"') does.
        let start = value.iter().position(|&b| b != b'"').unwrap_or(value.len());
        let end = value
            .iter()
            .rposition(|&b| b != b'"')
            .map_or(start, |i| i + 1);
        let value = value.get(start..end).unwrap_or_default();
        !name.trim_ascii().eq_ignore_ascii_case(b"charset")
            || [&b"utf-8"[..], b"utf8", b"us-ascii"]
                .iter()
                .any(|c| value.eq_ignore_ascii_case(c))
    })
}

/// Narrows `Accept-Encoding` to the codings the middleware can decode, so
/// that a page carrying a code is never compressed past its reach (a
/// `zstd` form_post would leave unbound).
pub(crate) fn restrict_accept_encoding(headers: &mut HeaderMap) {
    const DECODABLE: [&str; 5] = ["gzip", "x-gzip", "deflate", "br", "identity"];
    let Some(value) = headers.get(header::ACCEPT_ENCODING) else {
        return;
    };
    let Ok(text) = value.to_str() else {
        headers.remove(header::ACCEPT_ENCODING);
        return;
    };
    let known = |item: &str| {
        let coding = item.split(';').next().unwrap_or("").trim();
        DECODABLE.iter().any(|d| d.eq_ignore_ascii_case(coding))
    };
    if text.split(',').all(known) {
        return;
    }
    let kept: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|i| known(i))
        .collect();
    let narrowed = if kept.is_empty() {
        "identity".to_owned()
    } else {
        kept.join(", ")
    };
    match HeaderValue::from_str(&narrowed) {
        Ok(v) => headers.insert(header::ACCEPT_ENCODING, v),
        Err(_) => headers.remove(header::ACCEPT_ENCODING),
    };
}

/// Whether a request announces a body. A CORS preflight has none; an
/// OPTIONS request with one is no preflight, and an upstream that does not
/// route by method could read a token request from it.
pub(crate) fn has_body<B: Body>(req: &Request<B>) -> bool {
    announces_body(req.headers(), req.body())
}

pub(crate) fn announces_body<B: Body>(headers: &HeaderMap, body: &B) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || content_length(headers).is_some_and(|n| n > 0)
        || !body.is_end_stream() && body.size_hint().upper() != Some(0)
}

/// Whether `Connection` names a field that the checks or the framing read.
/// A proxy on the way to the upstream removes what `Connection` names, so
/// the upstream would not receive the request that was checked (RFC 9110
/// §7.6.1).
pub(crate) fn connection_names_checked_field(headers: &HeaderMap) -> bool {
    const CHECKED: [&[u8]; 6] = [
        b"authorization",
        b"host",
        b"content-type",
        b"content-length",
        b"transfer-encoding",
        b"cookie",
    ];
    headers.get_all(header::CONNECTION).iter().any(|value| {
        value.as_bytes().split(|&b| b == b',').any(|token| {
            let token = token.trim_ascii();
            CHECKED.iter().any(|f| token.eq_ignore_ascii_case(f))
        })
    })
}

/// A checked form body as it is forwarded: every byte outside visible ASCII
/// percent-encoded, which a form parser reads back to the same parameters,
/// so that no byte of it can start a request line or end a line for a
/// server that leaves the body unread and reads on (invariant I1).
pub(crate) fn inert<B>(body: RequestBody<B>, headers: &mut HeaderMap) -> RequestBody<B> {
    let Some(escaped) = body.as_buffered().and_then(|d| form::escape_unsafe(d)) else {
        return body;
    };
    set_content_length(headers, escaped.len());
    RequestBody::buffered(Bytes::from(escaped))
}

/// Whether a `Cookie` field names a parameter that `checked` says the
/// request is checked by: a server that reads cookies as parameters (PHP's
/// `$_REQUEST` with cookies in `variables_order`, last one winning) would
/// take it over the checked one. Names are read as a form's are (decoded,
/// folded; a bracket starts PHP's array syntax).
pub(crate) fn cookie_names_checked_parameter(
    headers: &HeaderMap,
    checked: impl Fn(&str) -> bool,
) -> bool {
    headers.get_all(header::COOKIE).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b';' || b == b',')
            .any(|pair| {
                let name = pair
                    .split(|&b| b == b'=')
                    .next()
                    .unwrap_or_default()
                    .trim_ascii();
                let name = crate::loose::decode(name, false);
                let name = String::from_utf8_lossy(&name);
                let base = name.split('[').next().unwrap_or_default();
                checked(&form::fold(base))
            })
    })
}

pub(crate) fn set_content_length(headers: &mut HeaderMap, len: usize) {
    headers.remove(header::TRANSFER_ENCODING);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
}

/// Reads a request body up to `limit` bytes.
pub(crate) async fn read_body<B: Body<Data = Bytes>>(
    headers: &HeaderMap,
    body: B,
    limit: usize,
) -> Result<Bytes, Rejection> {
    if content_length(headers).is_some_and(|n| n > limit as u64) {
        return Err(Rejection::BodyTooLarge);
    }
    collect_request(body, limit).await.map_err(|e| match e {
        RequestBodyError::TooLarge => Rejection::BodyTooLarge,
        RequestBodyError::Unreadable => Rejection::BodyUnreadable,
        RequestBodyError::Trailers => Rejection::TrailersNotAllowed,
    })
}

pub(crate) fn form_error(e: FormError) -> Rejection {
    match e {
        FormError::Malformed | FormError::Bracketed | FormError::NotPairs => {
            Rejection::MalformedParameters
        }
        FormError::Repeated(name) => Rejection::RepeatedParameter(name),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::authorize::is_authorize_param;
    use crate::token::is_token_query_param;

    /// `is_form` as it was written over `str`, to hold the byte-wise one to.
    fn is_form_by_str(headers: &HeaderMap) -> bool {
        let coded = headers
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"));
        let Some(ct) = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .filter(|_| !coded)
        else {
            return false;
        };
        let mut parts = ct.split(';');
        let essence = parts.next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return false;
        }
        parts.all(|param| {
            let (name, value) = param.split_once('=').unwrap_or((param, ""));
            !name.trim().eq_ignore_ascii_case("charset")
                || matches!(
                    value.trim().trim_matches('"').to_ascii_lowercase().as_str(),
                    "utf-8" | "utf8" | "us-ascii"
                )
        })
    }

    #[test]
    fn cookies_named_as_checked_parameters_are_found() {
        for (cookie, named) in [
            ("session=abc; code=x", true),
            ("Code=x", true),
            ("c%6Fde=x", true),
            ("code[0]=x", true),
            ("grant.type=authorization_code", true),
            ("client_assertion_type=x", true),
            ("session=abc; theme=dark", false),
            ("qrcode=x", false),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::COOKIE, HeaderValue::from_str(cookie).unwrap());
            assert_eq!(
                cookie_names_checked_parameter(&headers, is_token_query_param),
                named,
                "{cookie}"
            );
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("sid=1; STATE=x"));
        assert!(cookie_names_checked_parameter(&headers, is_authorize_param));
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("code_challenge_method=x"),
        );
        assert!(cookie_names_checked_parameter(&headers, is_authorize_param));
    }

    #[test]
    fn form_content_types() {
        for ct in [
            "application/x-www-form-urlencoded",
            " Application/X-WWW-Form-URLEncoded ",
            "application/x-www-form-urlencoded;charset=UTF-8",
            "application/x-www-form-urlencoded; charset=\"utf8\"",
            "application/x-www-form-urlencoded; charset=\"\"us-ascii\"\"",
            "application/x-www-form-urlencoded; charset=\t\"UTF-8\" ",
            "application/x-www-form-urlencoded; charset",
            "application/x-www-form-urlencoded; charset=",
            "application/x-www-form-urlencoded; charset=latin1",
            "application/x-www-form-urlencoded; charset=utf-8; charset=latin1",
            "application/x-www-form-urlencoded; x=1; CHARSET = utf-8",
            "application/x-www-form-urlencoded; charset=\"utf-8",
            "application/x-www-form-urlencoded;;",
            "application/x-www-form-urlencoded=; a",
            "application/json",
            "multipart/form-data; boundary=x",
            "",
            ";",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            assert_eq!(is_form(&headers), is_form_by_str(&headers), "{ct:?}");
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            assert!(!is_form(&headers), "{ct:?}");
        }
        assert!(!is_form(&HeaderMap::new()));
    }
}
