//! Strict `application/x-www-form-urlencoded` parsing, for query strings and
//! form bodies alike.
//!
//! Strict means: a malformed percent-encoding, a value that is not UTF-8 or
//! holds a NUL anywhere in the input is an error, and so is a repeated
//! parameter that the caller reads (RFC 6749 §3.1 and §3.2: parameters
//! "MUST NOT be included more than once").
//!
//! Names are compared the way the loosest server would read them, so that
//! no spelling reaches the upstream unchecked: after decoding (`st%61te`),
//! in ASCII lower case (ASP.NET), with leading spaces trimmed and ` `, `.`
//! and `[` read as `_` (PHP). Where a server may split on `;` as well as
//! `&` (Django before 3.2, Perl's CGI.pm), the caller says so.

use std::borrow::Cow;

use crate::path::hex;

/// Why a form could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FormError {
    /// A bad percent-encoding, or bytes that are not UTF-8 once decoded.
    Malformed,
    /// A parameter the caller reads appeared more than once.
    Repeated(&'static str),
}

/// One `name=value` pair as it stands in the input, still encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawPair<'a> {
    /// The whole pair, as written.
    pub(crate) raw: &'a str,
    pub(crate) name: &'a str,
    pub(crate) value: &'a str,
}

/// What separates pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Separators {
    /// `&` only, as browsers write it.
    Ampersand,
    /// `&` and `;`, as some servers read it.
    AmpersandOrSemicolon,
}

impl Separators {
    fn matches(self, c: char) -> bool {
        c == '&' || (self == Self::AmpersandOrSemicolon && c == ';')
    }
}

/// The non-empty pairs of `input`, undecoded. A pair without `=` has an
/// empty value.
pub(crate) fn raw_pairs(input: &str, separators: Separators) -> impl Iterator<Item = RawPair<'_>> {
    input
        .split(move |c| separators.matches(c))
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (name, value) = p.split_once('=').unwrap_or((p, ""));
            RawPair {
                raw: p,
                name,
                value,
            }
        })
}

/// Decodes one form component: `+` is a space and `%XX` a byte.
///
/// # Errors
///
/// [`FormError::Malformed`] for a `%` not followed by two hex digits, or a
/// result that is not UTF-8.
pub(crate) fn decode(raw: &str) -> Result<Cow<'_, str>, FormError> {
    if !raw.contains(['%', '+']) {
        return Ok(Cow::Borrowed(raw));
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|h| hex(*h));
                let lo = bytes.get(i + 2).and_then(|l| hex(*l));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(FormError::Malformed);
                };
                out.push(hi << 4 | lo);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    if out.contains(&0) {
        return Err(FormError::Malformed);
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| FormError::Malformed)
}

/// A decoded name as the loosest server reads it (see the module docs).
pub(crate) fn fold(name: &str) -> Cow<'_, str> {
    let name = name.trim_start_matches(' ');
    let plain = |b: u8| !b.is_ascii_uppercase() && !matches!(b, b' ' | b'.' | b'[');
    if name.bytes().all(plain) {
        return Cow::Borrowed(name);
    }
    Cow::Owned(
        name.chars()
            .map(|c| match c {
                ' ' | '.' | '[' => '_',
                c => c.to_ascii_lowercase(),
            })
            .collect(),
    )
}

/// The folded, decoded name of a pair.
pub(crate) fn name_of(pair: RawPair<'_>) -> Result<String, FormError> {
    Ok(fold(&decode(pair.name)?).into_owned())
}

/// Encodes a value for a query or form: every byte but the RFC 3986
/// unreserved characters is percent-encoded.
pub(crate) fn encode(value: &str) -> Cow<'_, str> {
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
    if value.bytes().all(unreserved) {
        return Cow::Borrowed(value);
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if unreserved(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    Cow::Owned(out)
}

/// Reads the parameters named in `names` from `input`, after checking that
/// every name and value in it decodes.
///
/// # Errors
///
/// [`FormError::Malformed`] for any bad encoding, and
/// [`FormError::Repeated`] when one of `names` appears twice.
pub(crate) fn collect<'a, const N: usize>(
    input: &'a str,
    names: [&'static str; N],
    separators: Separators,
) -> Result<[Option<Cow<'a, str>>; N], FormError> {
    let mut found: [Option<Cow<'a, str>>; N] = std::array::from_fn(|_| None);
    for pair in raw_pairs(input, separators) {
        let decoded = decode(pair.name)?;
        let name = fold(&decoded);
        let value = decode(pair.value)?;
        let Some(i) = names.iter().position(|n| *n == name) else {
            continue;
        };
        let (Some(slot), Some(&name)) = (found.get_mut(i), names.get(i)) else {
            continue;
        };
        if slot.is_some() {
            return Err(FormError::Repeated(name));
        }
        *slot = Some(value);
    }
    Ok(found)
}

/// Rewrites `input`: the parameter `set.0` gets the value `set.1` (where it
/// stands, or appended when absent), and every parameter named in `remove`
/// is dropped. Every other pair keeps its bytes.
///
/// # Errors
///
/// [`FormError::Malformed`] when a name does not decode.
pub(crate) fn edit(
    input: &str,
    set: Option<(&str, &str)>,
    remove: &[&str],
    separators: Separators,
) -> Result<String, FormError> {
    let mut out = String::with_capacity(input.len() + 32);
    let mut placed = false;
    for pair in raw_pairs(input, separators) {
        let name = name_of(pair)?;
        if remove.contains(&name.as_str()) {
            continue;
        }
        if !out.is_empty() {
            out.push('&');
        }
        match set {
            Some((set_name, value)) if name.as_str() == set_name => {
                if placed {
                    // A repeat of the parameter being set: drop it so that
                    // only the new value remains.
                    out.pop();
                    continue;
                }
                placed = true;
                out.push_str(pair.name);
                out.push('=');
                out.push_str(&encode(value));
            }
            _ => out.push_str(pair.raw),
        }
    }
    if let Some((name, value)) = set
        && !placed
    {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(&encode(name));
        out.push('=');
        out.push_str(&encode(value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Separators = Separators::Ampersand;
    const S: Separators = Separators::AmpersandOrSemicolon;

    #[test]
    fn decodes_plus_and_escapes() {
        assert_eq!(decode("a+b%20c%26%3D").unwrap(), "a b c&=");
        assert_eq!(decode("%C3%A9").unwrap(), "é");
        assert!(matches!(decode("plain").unwrap(), Cow::Borrowed("plain")));
        for bad in ["%", "%4", "%zz", "%g1", "a%2", "%e9", "%C3"] {
            assert_eq!(decode(bad), Err(FormError::Malformed), "{bad}");
        }
    }

    #[test]
    fn encodes_all_but_unreserved() {
        assert_eq!(encode("pkce.AZaz09-_~"), "pkce.AZaz09-_~");
        assert_eq!(encode("a b&=é/"), "a%20b%26%3D%C3%A9%2F");
        assert_eq!(decode(&encode("x y+z%")).unwrap(), "x y+z%");
    }

    #[test]
    fn collects_named_parameters() {
        let [state, code, missing] = collect(
            "code=abc&st%61te=x+y&other=1&&flag",
            ["state", "code", "nope"],
            A,
        )
        .unwrap();
        assert_eq!(state.as_deref(), Some("x y"));
        assert_eq!(code.as_deref(), Some("abc"));
        assert_eq!(missing, None);
        let [empty] = collect("state=", ["state"], A).unwrap();
        assert_eq!(empty.as_deref(), Some(""));
    }

    #[test]
    fn repeated_and_malformed_are_errors() {
        assert_eq!(
            collect("state=a&state=b", ["state"], A),
            Err(FormError::Repeated("state"))
        );
        assert_eq!(
            collect("state=a&st%61te=b", ["state"], A),
            Err(FormError::Repeated("state"))
        );
        // Repeats of parameters nobody reads are the upstream's business.
        assert!(collect("scope=a&scope=b&state=x", ["state"], A).is_ok());
        for bad in ["state=a&x=%zz", "x=%e9", "%=1", "x=%"] {
            assert_eq!(
                collect(bad, ["state"], A),
                Err(FormError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn edit_sets_in_place_and_keeps_other_bytes() {
        let input = "response_type=code&state=client%20s&scope=a+b&flag";
        assert_eq!(
            edit(input, Some(("state", "pkce.X")), &[], A).unwrap(),
            "response_type=code&state=pkce.X&scope=a+b&flag"
        );
        assert_eq!(
            edit("a=1&empty=", Some(("state", "pkce.X")), &[], A).unwrap(),
            "a=1&empty=&state=pkce.X"
        );
        assert_eq!(
            edit("", Some(("state", "v w")), &[], A).unwrap(),
            "state=v%20w"
        );
    }

    #[test]
    fn edit_removes() {
        let input = "code_challenge=x&a=1&code_challenge_method=S256&state=s";
        assert_eq!(
            edit(input, None, &["code_challenge", "code_challenge_method"], A).unwrap(),
            "a=1&state=s"
        );
        assert_eq!(
            edit(
                input,
                Some(("state", "h")),
                &["code_challenge", "code_challenge_method", "a"],
                A,
            )
            .unwrap(),
            "state=h"
        );
        assert_eq!(edit("x=%zz&%=1", None, &[], A), Err(FormError::Malformed));
    }

    #[test]
    fn names_are_folded_as_loose_servers_read_them() {
        for spelling in [
            "grant_type",
            "Grant_Type",
            "GRANT_TYPE",
            "grant.type",
            "grant+type",
            "grant%20type",
            "grant[type",
            "+grant_type",
            "gr%61nt_type",
        ] {
            let input = format!("{spelling}=authorization_code");
            let [grant] = collect(&input, ["grant_type"], A).unwrap();
            assert_eq!(grant.as_deref(), Some("authorization_code"), "{spelling}");
        }
        assert_eq!(
            collect("code=a&Code=b", ["code"], A),
            Err(FormError::Repeated("code"))
        );
        assert_eq!(fold("client_id"), "client_id");
    }

    #[test]
    fn semicolons_separate_when_asked() {
        let [grant, code] = collect(
            "grant_type=authorization_code;code=C",
            ["grant_type", "code"],
            S,
        )
        .unwrap();
        assert_eq!(grant.as_deref(), Some("authorization_code"));
        assert_eq!(code.as_deref(), Some("C"));
        let [grant, code] = collect(
            "grant_type=authorization_code;code=C",
            ["grant_type", "code"],
            A,
        )
        .unwrap();
        assert_eq!(grant.as_deref(), Some("authorization_code;code=C"));
        assert_eq!(code, None);
    }

    #[test]
    fn nul_is_malformed() {
        assert_eq!(decode("a%00b"), Err(FormError::Malformed));
        assert_eq!(collect("%00code=x", ["code"], A), Err(FormError::Malformed));
    }

    #[test]
    fn raw_pairs_split() {
        let pairs: Vec<_> = raw_pairs("a=1&&b&c=", A)
            .map(|p| (p.name, p.value))
            .collect();
        assert_eq!(pairs, [("a", "1"), ("b", ""), ("c", "")]);
    }
}
