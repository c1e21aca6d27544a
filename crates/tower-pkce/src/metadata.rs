//! Discovery metadata (RFC 8414, OpenID Connect Discovery 1.0): made to tell
//! the truth about PKCE.

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
