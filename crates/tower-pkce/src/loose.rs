//! A response read the way the loosest client would read it: decoded at
//! every level a client might decode, so that a handle or a code in an
//! unusual spelling is still seen. This reading never binds anything; it
//! only tells whether a response that the strict readers (`location`,
//! `html`) did not take for a certain delivery may still hand a code out,
//! in which case it is withheld (invariant I2).

use std::borrow::Cow;

use crate::path::hex;

/// How many rounds of percent-decoding a client might apply: a value
/// encoded twice (`%252E`) is still read.
const ROUNDS: usize = 3;

/// `bytes` with percent-escapes decoded, again and again while that
/// changes anything (at most [`ROUNDS`] times), and, for `html`, the
/// character references that can spell a delimiter. Invalid escapes stay
/// as they are: this is a reading for suspicion, not for use.
pub(crate) fn decode(bytes: &[u8], html: bool) -> Cow<'_, [u8]> {
    let mut current = Cow::Borrowed(bytes);
    for _ in 0..ROUNDS {
        let decoded = decode_once(&current, html);
        match decoded {
            Some(next) => current = Cow::Owned(next),
            None => break,
        }
    }
    // A URL parser drops tabs and line breaks (WHATWG URL), and PHP ends a
    // name at a NUL: `co<TAB>de=` and `code%00=` are `code=` to them. In a
    // page they separate attributes, as a space does.
    if current
        .iter()
        .any(|&b| matches!(b, b'\t' | b'\r' | b'\n' | 0))
    {
        let owned = current.into_owned();
        current = Cow::Owned(if html {
            owned
                .into_iter()
                .map(|b| {
                    if matches!(b, b'\t' | b'\r' | b'\n' | 0) {
                        b' '
                    } else {
                        b
                    }
                })
                .collect()
        } else {
            owned
                .into_iter()
                .filter(|b| !matches!(b, b'\t' | b'\r' | b'\n' | 0))
                .collect()
        });
    }
    current
}

/// One round; `None` when nothing would change.
fn decode_once(bytes: &[u8], html: bool) -> Option<Vec<u8>> {
    let is_escape = |b: u8| b == b'%' || b == b'+' || (html && b == b'&');
    let first = bytes.iter().position(|&b| is_escape(b))?;
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(bytes.get(..first).unwrap_or_default());
    let mut changed = false;
    let mut i = first;
    while let Some(&b) = bytes.get(i) {
        if b == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).and_then(|&h| hex(h)),
                bytes.get(i + 2).and_then(|&l| hex(l)),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
            changed = true;
            continue;
        }
        if b == b'+' {
            out.push(b' ');
            i += 1;
            changed = true;
            continue;
        }
        if html
            && b == b'&'
            && let Some((c, len)) = reference(bytes.get(i..).unwrap_or_default())
        {
            out.push(c);
            i += len;
            changed = true;
            continue;
        }
        // Plain bytes up to the next escape go in one copy.
        let run = bytes
            .get(i + 1..)
            .unwrap_or_default()
            .iter()
            .position(|&b| is_escape(b))
            .map_or(bytes.len(), |p| i + 1 + p);
        out.extend_from_slice(bytes.get(i..run).unwrap_or_default());
        i = run;
    }
    changed.then_some(out)
}

/// A character reference for an ASCII character at the start of `bytes`
/// (`&amp;`, `&#61;`, `&#x3D;`, `&equals;`, ...): the character and the
/// reference's length. Only what can spell a URL's delimiters matters here.
fn reference(bytes: &[u8]) -> Option<(u8, usize)> {
    let end = bytes.iter().take(12).position(|&b| b == b';')?;
    let name = bytes.get(1..end)?;
    let named: &[(&[u8], u8)] = &[
        (b"amp", b'&'),
        (b"equals", b'='),
        (b"quest", b'?'),
        (b"num", b'#'),
        (b"period", b'.'),
        (b"semi", b';'),
        (b"sol", b'/'),
        (b"colon", b':'),
        (b"quot", b'"'),
        (b"apos", b'\''),
        (b"lt", b'<'),
        (b"gt", b'>'),
    ];
    if let Some((_, c)) = named.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
        return Some((*c, end + 1));
    }
    let number = name.strip_prefix(b"#")?;
    let value = match number.split_first() {
        Some((b'x' | b'X', hex_digits)) => {
            u32::from_str_radix(std::str::from_utf8(hex_digits).ok()?, 16).ok()?
        }
        _ => std::str::from_utf8(number).ok()?.parse().ok()?,
    };
    let c = u8::try_from(value).ok().filter(u8::is_ascii)?;
    Some((c, end + 1))
}

/// How many times a parameter `name` (lower case) is given a value in
/// `decoded`, in any letter case: `name=` where the byte before `name` is
/// not a letter, digit, `_` or `-` (so `qrcode=` and `auth_code=` do not
/// count, while `?code=`, `&code=` and `#?code=` do).
pub(crate) fn count_params(decoded: &[u8], name: &[u8]) -> usize {
    let [count] = count_params_of(decoded, [name]);
    count
}

/// [`count_params`] for several names, in one pass.
pub(crate) fn count_params_of<const N: usize>(decoded: &[u8], names: [&[u8]; N]) -> [usize; N] {
    // From each `=`, which is rare, back to the name.
    let mut counts = [0; N];
    let mut at = 0;
    while let Some(found) = decoded
        .get(at..)
        .and_then(|rest| crate::scan::find(rest, b'='))
    {
        let eq = at + found;
        at = eq + 1;
        for (count, name) in counts.iter_mut().zip(names) {
            let Some(start) = eq.checked_sub(name.len()) else {
                continue;
            };
            let named = decoded
                .get(start..eq)
                .is_some_and(|n| n.eq_ignore_ascii_case(name));
            let bounded = start == 0
                || decoded
                    .get(start - 1)
                    .is_some_and(|&b| !b.is_ascii_alphanumeric() && b != b'_' && b != b'-');
            *count += usize::from(named && bounded);
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_level_a_client_might() {
        assert_eq!(&*decode(b"a%252Eb", false), b"a.b");
        assert_eq!(&*decode(b"x%3Dy+z", false), b"x=y z");
        assert_eq!(&*decode(b"code&#61;1&amp;x&#x3D;2", true), b"code=1&x=2");
        assert_eq!(&*decode(b"code&#61;1", false), b"code&#61;1");
        assert_eq!(&*decode(b"bad%zz%2", false), b"bad%zz%2");
        assert_eq!(&*decode(b"?co\tde=1&code%00=2", false), b"?code=1&code=2");
        assert_eq!(&*decode(b"<input\nname=code>", true), b"<input name=code>");
        assert!(matches!(decode(b"plain", false), Cow::Borrowed(_)));
    }

    #[test]
    fn counts_parameters_as_a_loose_client_reads_them() {
        for (text, n) in [
            (&b"/cb?code=1&state=x"[..], 1),
            (b"/cb#?code=1&state=x", 1),
            (b"/cb?CODE=1;code=2", 2),
            (b"code=1", 1),
            (b"/cb?qrcode=1&auth_code=2&code-x=3&codes=4", 0),
            (b"response_type=code&code_challenge=x", 0),
        ] {
            assert_eq!(
                count_params(text, b"code"),
                n,
                "{}",
                String::from_utf8_lossy(text)
            );
        }
    }
}
