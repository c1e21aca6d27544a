//! Endpoint matching on normalised paths.
//!
//! Real routers are loose: they serve `/token/`, `/TOKEN`, `//token`,
//! `/%74oken`, `/a/../token` and `/token;jsessionid=1` as `/token`, and a
//! Spring MVC server with suffix matching serves `/token.json` too. An alias
//! that slips past the middleware is a complete PKCE bypass, so paths are
//! normalised before they are compared, erring on the side of matching.
//!
//! Encoded characters that end a path or a name for some server count as
//! an alias too. A server that decodes before it splits the target reads
//! `/token%3fx` as `/token` with a query, `/token%23x` as `/token` with a
//! fragment, and a C string ends at `%00`; one that trims reads `/token%20`
//! or `/token%0a` as `/token`. So a path is matched twice, as written and
//! cut at its first decoded `?`, `#` or NUL ([`truncated`]), and white space
//! and control characters at either end of a segment are ignored.

use std::borrow::Cow;
use std::fmt;

/// How many rounds of percent-decoding are applied, for servers that decode
/// twice (`%2574` is `%74` is `t`).
const DECODE_ROUNDS: usize = 3;

/// The canonical form of a request path: percent-decoded (every escape, not
/// only unreserved ones), `\` read as `/`, `;params` removed from every
/// segment, empty and `.` segments dropped, `..` applied, lower-cased, with
/// no trailing slash. The root is `/`.
///
/// Most request paths are canonical already; they are borrowed, not copied.
pub(crate) fn normalize(raw: &str) -> Cow<'_, str> {
    if is_canonical(raw) {
        Cow::Borrowed(raw)
    } else {
        Cow::Owned(rewrite(raw))
    }
}

/// Whether [`rewrite`] would give `raw` back unchanged: nothing to decode,
/// no `\` or `;`, no upper case, no white space or control character
/// (which [`canonical`] trims from a segment's ends), and no empty, `.` or
/// `..` segment.
fn is_canonical(raw: &str) -> bool {
    let Some(rest) = raw.strip_prefix('/') else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    // One pass over the bytes; `dots` counts a segment's bytes while they
    // are all dots, and is `None` once another byte is seen.
    let mut dots = Some(0_usize);
    for &b in rest.as_bytes() {
        match b {
            b'%' | b'\\' | b';' | b'A'..=b'Z' | 0..=b' ' | 0x7f => return false,
            b'/' => {
                if matches!(dots, Some(0..=2)) {
                    return false;
                }
                dots = Some(0);
            }
            b'.' => dots = dots.map(|n| n + 1),
            _ => dots = None,
        }
    }
    !matches!(dots, Some(0..=2))
}

/// The other reading of a path: cut at its first decoded `?`, `#` or NUL,
/// then normalised as [`normalize`] does; `None` when decoding yields none
/// of them (always, for a path without `%`).
pub(crate) fn truncated(raw: &str) -> Option<String> {
    if !raw.contains('%') {
        return None;
    }
    let bytes = decode_rounds(raw);
    let end = bytes.iter().position(|&b| matches!(b, b'?' | b'#' | 0))?;
    Some(canonical(&bytes[..end]))
}

/// Whether a path is still percent-encoded after the rounds of decoding
/// that [`normalize`] applies. To a server that decodes once more it could
/// be any endpoint, so the middleware refuses it rather than guess.
pub(crate) fn encoded_too_deep(raw: &str) -> bool {
    raw.contains('%') && {
        let bytes = decode_rounds(raw);
        percent_decode_lenient(&bytes) != bytes
    }
}

fn rewrite(raw: &str) -> String {
    canonical(&decode_rounds(raw))
}

fn decode_rounds(raw: &str) -> Vec<u8> {
    let mut bytes = raw.as_bytes().to_vec();
    for _ in 0..DECODE_ROUNDS {
        if !bytes.contains(&b'%') {
            break;
        }
        let decoded = percent_decode_lenient(&bytes);
        if decoded == bytes {
            break;
        }
        bytes = decoded;
    }
    bytes
}

fn canonical(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes).to_ascii_lowercase();
    let mut segments: Vec<&str> = Vec::new();
    for segment in text.split(['/', '\\']) {
        let segment = segment
            .split(';')
            .next()
            .unwrap_or("")
            .trim_matches(|c: char| c.is_ascii_whitespace() || c.is_ascii_control());
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(text.len() + 1);
    if segments.is_empty() {
        out.push('/');
    }
    for s in segments {
        out.push('/');
        out.push_str(s);
    }
    out
}

/// Decodes every valid `%XX` escape; an invalid one stays as it is.
fn percent_decode_lenient(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&b) = input.get(i) {
        if b == b'%'
            && let (Some(hi), Some(lo)) = (
                input.get(i + 1).and_then(|h| hex(*h)),
                input.get(i + 2).and_then(|l| hex(*l)),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(b);
        i += 1;
    }
    out
}

pub(crate) fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether a normalised path is a discovery metadata document:
/// `.well-known/openid-configuration` or
/// `.well-known/oauth-authorization-server` on any prefix, and the RFC 8414
/// §3.1 form with the issuer's path after it.
pub(crate) fn is_metadata_path(normalized: &str) -> bool {
    if !normalized.contains("/.well-known/") {
        return false;
    }
    let mut segments = normalized.split('/');
    while let Some(segment) = segments.next() {
        if segment == ".well-known" {
            return matches!(
                segments.next(),
                Some("openid-configuration" | "oauth-authorization-server")
            );
        }
    }
    false
}

/// An endpoint path, kept normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathPattern(String);

/// Why a path cannot be an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathError {
    NotAbsolute,
    HasQuery,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotAbsolute => "must be an absolute path starting with /",
            Self::HasQuery => "must not contain a query (?) or fragment (#)",
        })
    }
}

impl PathPattern {
    pub(crate) fn new(path: &str) -> Result<Self, PathError> {
        if !path.starts_with('/') {
            return Err(PathError::NotAbsolute);
        }
        if path.contains(['?', '#']) {
            return Err(PathError::HasQuery);
        }
        Ok(Self(normalize(path).into_owned()))
    }

    pub(crate) fn root() -> Self {
        Self("/".to_owned())
    }

    /// Whether a normalised path is this endpoint: the same path, or the
    /// same with a `.suffix` on its last segment (Spring MVC's suffix
    /// pattern matching serves `/token.json` as `/token`).
    pub(crate) fn matches(&self, normalized: &str) -> bool {
        match normalized.strip_prefix(self.0.as_str()) {
            Some("") => true,
            Some(rest) => self.0 != "/" && rest.starts_with('.') && !rest.contains('/'),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_normalise_to_one_path() {
        for alias in [
            "/token",
            "/token/",
            "/TOKEN",
            "/Token",
            "//token",
            "///token//",
            "/%74oken",
            "/%2574oken",
            "/%2Ftoken",
            "/%2ftoken",
            "/a/../token",
            "/a/b/../../token",
            "/../token",
            "/./token",
            "/token/.",
            "/token;jsessionid=1",
            "/token;a=b/",
            "\\token",
            "/x/..%2Ftoken",
            "/token%3Bx=1",
            // White space and controls at the ends of a segment, which a
            // server that trims ignores.
            "/token%20",
            "/token%09",
            "/token%0a",
            "/token%0D%0A",
            "/%20token",
            "/token%2520",
            "/token%20/",
            "/token%00",
        ] {
            assert_eq!(normalize(alias), "/token", "{alias}");
        }
    }

    #[test]
    fn a_path_that_decodes_to_a_query_fragment_or_nul_is_read_cut_there_too() {
        for (raw, cut) in [
            ("/token%3f", "/token"),
            ("/token%3Fgrant_type=x", "/token"),
            ("/token%23", "/token"),
            ("/token%23frag/x", "/token"),
            ("/token%00.php", "/token"),
            ("/token%253f", "/token"),
            ("/TOKEN/%3F/../x", "/token"),
            ("/a%3f/../token", "/a"),
            ("/%3f", "/"),
        ] {
            assert_eq!(truncated(raw).as_deref(), Some(cut), "{raw}");
        }
        // As written, the same paths read otherwise.
        assert_eq!(normalize("/token%3fx"), "/token?x");
        assert_eq!(normalize("/a%3f/../token"), "/token");
        for raw in ["/token", "/Token/", "/to%6ben", "/a%2fb", "/%zz"] {
            assert_eq!(truncated(raw), None, "{raw}");
        }
    }

    #[test]
    fn canonical_paths_are_borrowed_and_agree_with_the_rewrite() {
        for path in [
            "/",
            "",
            "/token",
            "/a/b",
            "/a/b.json",
            "/oauth/token",
            "/é/x",
            "/a-b_c~d",
            "/token/",
            "//token",
            "/Token",
            "/%74oken",
            "/a/./b",
            "/a/../b",
            "/.",
            "/..",
            "/a;b",
            "\\token",
            "/a\\b",
            "token",
            "/.well-known/openid-configuration",
            "/...",
            "/a..b",
            "/.x",
            "/token\u{1}",
            "/\0\0token",
            "/token ",
            "/a b",
            "/token\u{7f}",
        ] {
            assert_eq!(normalize(path), rewrite(path), "{path:?}");
            if is_canonical(path) {
                assert_eq!(rewrite(path), path, "{path:?}");
                assert!(matches!(normalize(path), Cow::Borrowed(_)), "{path:?}");
            }
        }
        assert!(is_canonical("/token") && is_canonical("/") && !is_canonical("/token/"));
    }

    #[test]
    fn other_paths_stay_apart() {
        assert_eq!(normalize("/"), "/");
        assert_eq!(normalize(""), "/");
        assert_eq!(normalize("/a/b"), "/a/b");
        assert_eq!(normalize("/tokens"), "/tokens");
        assert_eq!(normalize("/oauth/Token/"), "/oauth/token");
        // An invalid escape stays as it is.
        assert_eq!(normalize("/%zztoken"), "/%zztoken");
        assert_eq!(normalize("/token%"), "/token%");
    }

    #[test]
    fn patterns_match_aliases_and_suffixes_only() {
        let p = PathPattern::new("/oauth/token").unwrap();
        for yes in [
            "/oauth/token",
            "/OAuth/Token/",
            "/oauth//token",
            "/oauth/token.json",
        ] {
            assert!(p.matches(&normalize(yes)), "{yes}");
        }
        for no in [
            "/token",
            "/oauth/tokens",
            "/oauth/token/x",
            "/oauth/token/x.json",
            "/",
        ] {
            assert!(!p.matches(&normalize(no)), "{no}");
        }
        assert!(PathPattern::root().matches("/"));
        assert!(!PathPattern::root().matches("/.x"));
    }

    #[test]
    fn patterns_are_checked() {
        assert_eq!(PathPattern::new("token"), Err(PathError::NotAbsolute));
        assert_eq!(PathPattern::new(""), Err(PathError::NotAbsolute));
        assert_eq!(PathPattern::new("/token?x"), Err(PathError::HasQuery));
        assert_eq!(
            PathPattern::new("/Token/").unwrap(),
            PathPattern::new("/token").unwrap()
        );
    }

    #[test]
    fn metadata_paths() {
        for yes in [
            "/.well-known/openid-configuration",
            "/.well-known/openid-configuration/",
            "/tenant/.well-known/openid-configuration",
            "/.well-known/oauth-authorization-server",
            "/.well-known/oauth-authorization-server/tenant/a",
            "/.WELL-KNOWN/OpenID-Configuration",
            "/%2Ewell-known/openid-configuration",
        ] {
            assert!(is_metadata_path(&normalize(yes)), "{yes}");
        }
        for no in [
            "/.well-known/jwks.json",
            "/well-known/openid-configuration",
            "/openid-configuration",
            "/.well-known",
        ] {
            assert!(!is_metadata_path(&normalize(no)), "{no}");
        }
    }
}
