//! The `Location` of a response: where a code leaves in its query (the
//! default `response_mode`) or its fragment (`response_mode=fragment`).
//!
//! The `Location` is read as bytes: an old server may write obs-text
//! (latin-1, raw UTF-8) in it, and only the parameters need to be text. A
//! `Location` that carries one of our handles is either a delivery read
//! with certainty, a page of the upstream's own that carries the
//! transaction on (a login redirect, a `next=` holding the original
//! request), or something that might hand a code out and cannot be read
//! with certainty, which is withheld.

use std::borrow::Cow;
use std::ops::Range;

use crate::form::encode;
use crate::handle::{self, Hit};
use crate::loose;
use crate::path::hex;

/// What a `Location` is, for the transaction handles it may carry.
#[derive(Debug)]
pub(crate) enum Scan<'a> {
    /// No handle in it.
    Clean,
    /// A handle and no code or error: the upstream's own page goes on with
    /// the transaction.
    Carrier,
    /// A code or an error for one handle, read with certainty.
    Delivery(Delivery<'a>),
    /// A handle beside something a client could read as a code or an
    /// error, not read with certainty: why.
    Uncertain(&'static str),
}

/// A delivery read with certainty.
#[derive(Debug)]
pub(crate) struct Delivery<'a> {
    pub(crate) hit: Hit<'a>,
    /// Where the delivery's first parameter stands: the target the client
    /// is sent to ends at one of the `?`, `&` or `#` before it.
    pub(crate) params_at: usize,
}

/// One `name=value` pair of a component, as it stands.
struct Pair {
    /// The whole pair.
    whole: Range<usize>,
    /// Its value.
    value: Range<usize>,
    /// The component: 0 for the query, 1 for the fragment.
    component: u8,
}

/// Reads `location` for a delivery (see the module docs).
pub(crate) fn scan(location: &[u8]) -> Scan<'_> {
    if !handle::may_contain(location) {
        return Scan::Clean;
    }
    let decoded = loose::decode(location, false);
    let handles = handle::count_in(&decoded);
    if handles == 0 {
        return Scan::Clean;
    }
    let [codes, errors] = loose::count_params_of(&decoded, [b"code", b"error"]);
    if codes == 0 && errors == 0 {
        return Scan::Carrier;
    }
    match delivery(location, codes) {
        Ok(delivery) if handles == 1 => Scan::Delivery(delivery),
        Ok(_) => Scan::Uncertain("the handle stands more than once"),
        Err(why) => Scan::Uncertain(why),
    }
}

/// The delivery in `location`, which a loose reading found to mention a
/// handle and `codes` code parameters, or why it is not one with certainty.
fn delivery(location: &[u8], codes: usize) -> Result<Delivery<'_>, &'static str> {
    let fragment_at = crate::scan::find(location, b'#');
    let before_fragment = fragment_at.unwrap_or(location.len());
    let query_at = location
        .get(..before_fragment)
        .and_then(|s| crate::scan::find(s, b'?'));
    let mut components: [Option<Range<usize>>; 2] = [None, None];
    if let Some(q) = query_at {
        components[0] = Some(q + 1..before_fragment);
    }
    if let Some(f) = fragment_at {
        let fragment = f + 1..location.len();
        if location
            .get(fragment.clone())
            .is_some_and(|f| f.contains(&b'#'))
        {
            return Err("a second '#'");
        }
        components[1] = Some(fragment);
    }
    let mut states = (0, None);
    let mut codes_read = (0, None);
    // Bit `c` set: an error stands in component `c`.
    let mut errors = 0u8;
    for (component, range) in (0u8..).zip(components) {
        let Some(range) = range else {
            continue;
        };
        let mut start = range.start;
        for raw in location
            .get(range.clone())
            .unwrap_or_default()
            .split(|&b| b == b'&')
        {
            let whole = start..start + raw.len();
            start = whole.end + 1;
            let eq = raw.iter().position(|&b| b == b'=');
            let name = decode_exact(raw.get(..eq.unwrap_or(raw.len())).unwrap_or_default());
            let value = match eq {
                Some(eq) => whole.start + eq + 1..whole.end,
                None => whole.end..whole.end,
            };
            let pair = Pair {
                whole,
                value,
                component,
            };
            let counted = match name.as_deref() {
                Some(b"state") => &mut states,
                Some(b"code") => &mut codes_read,
                Some(b"error") => {
                    errors |= 1 << component;
                    continue;
                }
                _ => continue,
            };
            counted.0 += 1;
            counted.1 = Some(pair);
        }
    }
    if states.0 > 1 {
        return Err("more than one state");
    }
    if codes_read.0 > 1 {
        return Err("more than one code");
    }
    let code = codes_read.1;
    let state = states.1.ok_or("no state beside the code")?;
    let value_of = |pair: &Pair| -> Option<Cow<'_, str>> {
        match decode_exact(location.get(pair.value.clone()).unwrap_or_default())? {
            Cow::Borrowed(v) => std::str::from_utf8(v).ok().map(Cow::Borrowed),
            Cow::Owned(v) => String::from_utf8(v).ok().map(Cow::Owned),
        }
    };
    let handle = value_of(&state)
        .filter(|h| handle::is_handle(h))
        .ok_or("the state is not exactly a handle")?;
    let code_value = match &code {
        Some(pair) => {
            if pair.component != state.component {
                return Err("the code and the state stand in different components");
            }
            let value = value_of(pair).ok_or("the code does not decode")?;
            if value.is_empty() || !value.bytes().all(is_code_byte) {
                return Err("the code holds bytes a client may split on");
            }
            Some(value)
        }
        None => None,
    };
    // Every code a loose client would read is the one read here.
    if codes != usize::from(code.is_some()) {
        return Err("a code stands where a strict reading does not see it");
    }
    if code.is_none() && errors & (1 << state.component) == 0 {
        return Err("an error stands apart from the state");
    }
    let params_at = code
        .as_ref()
        .map_or(state.whole.start, |c| c.whole.start.min(state.whole.start));
    Ok(Delivery {
        hit: Hit {
            handle,
            code: code_value,
            value: state.value.clone(),
            whole: cut(location, &state.whole),
            bare: false,
        },
        params_at,
    })
}

/// The bytes of a code that no client splits or trims on: visible ASCII
/// but the delimiters of a URL's query and fragment.
fn is_code_byte(b: u8) -> bool {
    b.is_ascii_graphic() && !matches!(b, b'#' | b'?' | b';' | b'&' | b'"' | b'\'' | b'<' | b'>')
}

/// Percent-decodes a name or value: `None` for a malformed escape.
fn decode_exact(raw: &[u8]) -> Option<Cow<'_, [u8]>> {
    if !raw.iter().any(|&b| b == b'%' || b == b'+') {
        return Some(Cow::Borrowed(raw));
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter();
    while let Some(&b) = bytes.next() {
        out.push(match b {
            b'+' => b' ',
            b'%' => {
                let hi = bytes.next().and_then(|&h| hex(h))?;
                let lo = bytes.next().and_then(|&l| hex(l))?;
                hi << 4 | lo
            }
            b => b,
        });
    }
    Some(Cow::Owned(out))
}

/// What to cut to remove the pair `whole`: the pair with one `&` beside
/// it, or the pair alone when it is the only one of its component.
fn cut(location: &[u8], whole: &Range<usize>) -> Range<usize> {
    if location.get(whole.end) == Some(&b'&') {
        whole.start..whole.end + 1
    } else if whole.start > 0 && location.get(whole.start - 1) == Some(&b'&') {
        whole.start - 1..whole.end
    } else {
        whole.clone()
    }
}

/// The targets `location` may be read as sending the client to: what
/// stands before its first `?`, before each `&` of its query (for a
/// redirect_uri with a query of its own), and before its `#`, when these
/// come ahead of the delivery's parameters. An `&` before the query ends
/// no target: a browser reads it as part of the authority or the path.
pub(crate) fn targets<'a>(
    location: &'a [u8],
    delivery: &Delivery<'_>,
) -> impl Iterator<Item = &'a [u8]> {
    let ahead = location.get(..delivery.params_at).unwrap_or_default();
    let fragment = crate::scan::find(ahead, b'#');
    let query = crate::scan::find(
        ahead
            .get(..fragment.unwrap_or(ahead.len()))
            .unwrap_or_default(),
        b'?',
    );
    let ampersands = query.into_iter().flat_map(move |q| {
        ahead
            .iter()
            .enumerate()
            .take(fragment.unwrap_or(ahead.len()))
            .skip(q + 1)
            .filter(|(_, b)| **b == b'&')
            .map(|(i, _)| i)
    });
    query
        .into_iter()
        .chain(ampersands)
        .chain(fragment)
        .filter_map(|i| location.get(..i))
}

/// `location` with the handle replaced by the client's own `state`, or the
/// `state` parameter removed when the client sent none. Nothing else
/// changes.
pub(crate) fn restore_state(location: &[u8], hit: &Hit<'_>, state: Option<&str>) -> Vec<u8> {
    let (cut, with) = match state {
        Some(state) => (&hit.value, encode(state)),
        None => (&hit.whole, Cow::Borrowed("")),
    };
    handle::splice(location, cut, with.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "pkce.AAAAAAAAAAAAAAAAAAAAAA";

    fn delivered(location: &str) -> Delivery<'_> {
        match scan(location.as_bytes()) {
            Scan::Delivery(d) => d,
            other => panic!("{location}: {other:?}"),
        }
    }

    fn restored(location: &str, state: Option<&str>) -> String {
        let d = delivered(location);
        String::from_utf8(restore_state(location.as_bytes(), &d.hit, state)).unwrap()
    }

    #[test]
    fn query_code_and_state() {
        let loc = format!("https://client.example/cb?code=abc&state={H}&iss=https%3A%2F%2Fas");
        let d = delivered(&loc);
        assert_eq!(d.hit.handle, H);
        assert_eq!(d.hit.code.as_deref(), Some("abc"));
        assert_eq!(
            restored(&loc, Some("client s&=é")),
            "https://client.example/cb?code=abc&state=client%20s%26%3D%C3%A9&iss=https%3A%2F%2Fas"
        );
        let targets: Vec<&[u8]> = targets(loc.as_bytes(), &d).collect();
        assert_eq!(targets, [&b"https://client.example/cb"[..]]);
    }

    #[test]
    fn the_targets_are_what_stands_before_the_query_its_ampersands_and_the_fragment() {
        let loc = format!("https://c.example/cb?x=1&y=2#frag=1&code=c&state={H}");
        let d = delivered(&loc);
        let targets: Vec<String> = targets(loc.as_bytes(), &d)
            .map(|t| String::from_utf8(t.to_vec()).unwrap())
            .collect();
        assert_eq!(
            targets,
            [
                "https://c.example/cb",
                "https://c.example/cb?x=1",
                "https://c.example/cb?x=1&y=2",
            ]
        );
    }

    #[test]
    fn an_ampersand_before_the_query_ends_no_target() {
        for loc in [
            format!("https://client.example&@evil.example/?code=c&state={H}"),
            format!("https://client.example/cb&/../evil?code=c&state={H}"),
        ] {
            let d = delivered(&loc);
            let targets: Vec<&[u8]> = targets(loc.as_bytes(), &d).collect();
            assert_eq!(targets.len(), 1, "{loc}");
            assert!(targets[0].contains(&b'&'), "{loc}");
        }
    }

    #[test]
    fn state_removed_when_client_sent_none() {
        for (loc, want) in [
            (format!("/cb?code=c&state={H}&iss=x"), "/cb?code=c&iss=x"),
            (format!("/cb?code=c&state={H}"), "/cb?code=c"),
            (format!("/cb?state={H}&code=c"), "/cb?code=c"),
            (format!("/cb#state={H}&code=c"), "/cb#code=c"),
        ] {
            assert_eq!(restored(&loc, None), want, "{loc}");
        }
    }

    #[test]
    fn fragment() {
        let loc = format!("myapp:/cb?keep=1#code=xyz&state={H}");
        assert_eq!(delivered(&loc).hit.code.as_deref(), Some("xyz"));
        assert_eq!(
            restored(&loc, Some("s")),
            "myapp:/cb?keep=1#code=xyz&state=s"
        );
    }

    #[test]
    fn error_redirect() {
        let loc = format!("/cb?error=access_denied&state={H}");
        assert_eq!(delivered(&loc).hit.code, None);
        assert_eq!(restored(&loc, Some("s")), "/cb?error=access_denied&state=s");
    }

    #[test]
    fn obs_text_is_kept_byte_for_byte() {
        let mut loc = b"https://client.example/caf\xe9/cb?code=c1&state=".to_vec();
        loc.extend_from_slice(H.as_bytes());
        let Scan::Delivery(d) = scan(&loc) else {
            panic!("latin-1 location not read");
        };
        assert_eq!(d.hit.code.as_deref(), Some("c1"));
        let out = restore_state(&loc, &d.hit, Some("s"));
        assert_eq!(out, b"https://client.example/caf\xe9/cb?code=c1&state=s");
    }

    #[test]
    fn encoded_names_and_values() {
        let loc = format!("/cb?c%6Fde=a%2Bb&st%61te={}", H.replace('.', "%2E"));
        assert_eq!(delivered(&loc).hit.code.as_deref(), Some("a+b"));
        assert_eq!(restored(&loc, Some("s")), "/cb?c%6Fde=a%2Bb&st%61te=s");
        // The prefix's letters escaped: no `pkce` as written.
        for handle in [H.replacen('p', "%70", 1), H.replace("pkce", "%70%6B%63%65")] {
            let loc = format!("/cb?code=c1&state={handle}");
            assert_eq!(delivered(&loc).hit.code.as_deref(), Some("c1"), "{loc}");
            assert_eq!(restored(&loc, Some("s")), "/cb?code=c1&state=s");
        }
    }

    #[test]
    fn carriers_and_clean_locations() {
        for loc in [
            format!("/login?state={H}"),
            format!(
                "/accounts/login/?next=/o/authorize/%3Fresponse_type%3Dcode%26state%3D{H}%26code_challenge%3Dx"
            ),
            format!("/interaction/1?x={}", H.replace('.', "%252E")),
        ] {
            assert!(matches!(scan(loc.as_bytes()), Scan::Carrier), "{loc}");
        }
        for loc in ["/cb?code=c&state=client", "/login", "/pkce/docs?code=1"] {
            assert!(matches!(scan(loc.as_bytes()), Scan::Clean), "{loc}");
        }
    }

    #[test]
    fn what_cannot_be_read_with_certainty() {
        for loc in [
            format!("/cb#?code=c&state={H}"),
            format!("/cb?code=c&code=d&state={H}"),
            format!("/cb?code=c&state={H}#code=d"),
            format!("/cb?code=c&state={H}#state={H}"),
            format!("/cb?code=c#state={H}"),
            format!("/cb?code=c;state={H}"),
            format!("/cb?code=c&state={H};x"),
            format!("/cb?code=&state={H}"),
            format!("/cb?code=c&state={H}x"),
            format!("/cb?code=c&state={H}&state={H}"),
            format!("/cb?code=c&STATE={H}"),
            format!("/cb?CODE=c&state={H}"),
            format!("/cb?code=c%23x&state={H}"),
            format!("/cb#state={H}&code=c#x"),
            format!("/cb?x=%26code%3Dc&state={H}"),
            format!("/cb?code=c&state={H}&next=%3Fstate%3D{H}"),
            format!("/cb?state={H}&error=e#error=f&code=c"),
            format!("/cb?state={H}#error=x"),
        ] {
            assert!(
                matches!(scan(loc.as_bytes()), Scan::Uncertain(_)),
                "{loc}: {:?}",
                scan(loc.as_bytes())
            );
        }
    }
}
