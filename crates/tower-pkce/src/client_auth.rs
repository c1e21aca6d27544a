//! Which client a token request speaks for: `client_id`, HTTP Basic, or a
//! client assertion.

use std::borrow::Cow;

use http::header::{self, HeaderMap};

use crate::error::Rejection;
use crate::form;

/// The client a token request speaks for: the body's `client_id`, the HTTP
/// Basic user (RFC 6749 §2.3.1), or a client assertion's `sub` (RFC 7523
/// §3). Where more than one is present they must agree.
pub(crate) fn client_of<'p>(
    headers: &HeaderMap,
    client_id: Option<&'p str>,
    client_assertion: Option<&str>,
) -> Result<Option<Cow<'p, str>>, Rejection> {
    let mut client: Option<Cow<'p, str>> = client_id.map(Cow::Borrowed);
    let mut agree = |other: String| -> Result<(), Rejection> {
        match &client {
            Some(c) if **c != *other => Err(Rejection::ConflictingClient),
            Some(_) => Ok(()),
            None => {
                client = Some(Cow::Owned(other));
                Ok(())
            }
        }
    };
    if let Some(user) = basic_user(headers)? {
        agree(user)?;
    }
    if let Some(assertion) = client_assertion {
        agree(assertion_subject(assertion)?)?;
    }
    Ok(client)
}

fn basic_user(headers: &HeaderMap) -> Result<Option<String>, Rejection> {
    use base64::Engine;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| Rejection::MalformedParameters)?
        .trim();
    let Some((scheme, credentials)) = value.split_once(' ') else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let decoded = LENIENT
        .decode(credentials.trim())
        .map_err(|_| Rejection::MalformedParameters)?;
    let decoded = String::from_utf8(decoded).map_err(|_| Rejection::MalformedParameters)?;
    let user = decoded.split_once(':').map_or(decoded.as_str(), |(u, _)| u);
    let user = form::decode(user).map_err(|_| Rejection::MalformedParameters)?;
    Ok(Some(user.into_owned()))
}

/// The `sub` claim of a JWT client assertion, read without verifying the
/// signature: the upstream verifies it, and the proxy only needs to know
/// which client the request claims to be.
fn assertion_subject(assertion: &str) -> Result<String, Rejection> {
    use base64::Engine;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let payload = assertion
        .split('.')
        .nth(1)
        .ok_or(Rejection::MalformedClientAssertion)?;
    let bytes = LENIENT
        .decode(payload)
        .map_err(|_| Rejection::MalformedClientAssertion)?;
    let claims: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| Rejection::MalformedClientAssertion)?;
    claims
        .get("sub")
        .and_then(|s| s.as_str())
        .map(str::to_owned)
        .ok_or(Rejection::MalformedClientAssertion)
}
