//! The `Location` of a redirect: where a code leaves in its query (the
//! default `response_mode`) or its fragment (`response_mode=fragment`).

use std::borrow::Cow;
use std::ops::Range;

use crate::form::{Separators, decode, encode, raw_pairs, value_of};
use crate::handle::Hit;

/// Finds a `state` that is one of our handles, with a `code` or an `error`
/// beside it in the same component (query or fragment) of `location`.
///
/// A `Location` that carries the handle alone (a login page's URL, a
/// `next=` parameter holding the original request) is no hit: the flow is
/// still going on.
pub(crate) fn find_code_redirect(
    location: &str,
    is_handle: impl Fn(&str) -> bool,
) -> Option<Hit<'_>> {
    let (before_fragment, fragment) = match crate::scan::find(location.as_bytes(), b'#') {
        Some(i) => (i, Some(i + 1)),
        None => (location.len(), None),
    };
    let query = location
        .get(..before_fragment)
        .and_then(|s| crate::scan::find(s.as_bytes(), b'?'))
        .map(|i| i + 1..before_fragment);
    let fragment = fragment.map(|start| start..location.len());
    [query, fragment]
        .into_iter()
        .flatten()
        .find_map(|component| find_in(location, component, &is_handle))
}

/// A `state` pair holding a handle: its index among the pairs, where the
/// whole pair and its value stand, and the handle.
type StatePair<'a> = (usize, Range<usize>, Range<usize>, Cow<'a, str>);

fn find_in<'a>(
    input: &'a str,
    component: Range<usize>,
    is_handle: &impl Fn(&str) -> bool,
) -> Option<Hit<'a>> {
    let offset = component.start;
    let text = input.get(component)?;
    // The last state that is a handle: its pair's ordinal, place and value.
    let mut state: Option<StatePair<'a>> = None;
    let mut code = None;
    let mut error = false;
    let mut pairs = 0;
    for pair in raw_pairs(text, Separators::Ampersand) {
        let i = pairs;
        pairs += 1;
        let Ok(name) = decode(pair.name) else {
            continue;
        };
        match name.as_ref() {
            "state" => {
                if let Some(v) = value_of(pair).ok().filter(|v| is_handle(v)) {
                    let end = offset + pair.start + pair.raw.len();
                    let whole = offset + pair.start..end;
                    let value = end - pair.value.len()..end;
                    state = Some((i, whole, value, v));
                }
            }
            "code" => {
                code = value_of(pair).ok().filter(|v| !v.is_empty());
            }
            "error" => error |= value_of(pair).is_ok_and(|v| !v.is_empty()),
            _ => {}
        }
    }
    let (i, whole, value, handle) = state?;
    if code.is_none() && !error {
        return None;
    }
    // Cut the parameter with one of the `&` around it.
    let whole = if i + 1 < pairs {
        whole.start..whole.end + 1
    } else if i > 0 {
        whole.start - 1..whole.end
    } else {
        whole
    };
    Some(Hit {
        handle,
        code,
        value,
        whole,
        bare: false,
    })
}

/// `location` with the handle replaced by the client's own `state`, or the
/// `state` parameter removed when the client sent none. Nothing else
/// changes.
pub(crate) fn restore_state(location: &str, hit: &Hit<'_>, state: Option<&str>) -> String {
    let (cut, with) = match state {
        Some(state) => (&hit.value, encode(state)),
        None => (&hit.whole, Cow::Borrowed("")),
    };
    // The cut falls on ASCII boundaries, so both sides are whole strings.
    let (Some(head), Some(tail)) = (location.get(..cut.start), location.get(cut.end..)) else {
        return String::new();
    };
    let mut out = String::with_capacity(head.len() + with.len() + tail.len());
    out.push_str(head);
    out.push_str(&with);
    out.push_str(tail);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handle::is_handle;

    const H: &str = "pkce.AAAAAAAAAAAAAAAAAAAAAA";

    fn restored<'a>(location: &'a str, state: Option<&str>) -> Option<(Hit<'a>, String)> {
        let hit = find_code_redirect(location, is_handle)?;
        let out = restore_state(location, &hit, state);
        Some((hit, out))
    }

    #[test]
    fn query_code_and_state() {
        let loc = format!("https://client.example/cb?code=abc&state={H}&iss=https%3A%2F%2Fas");
        let (hit, out) = restored(&loc, Some("client s&=é")).unwrap();
        assert_eq!(hit.handle, H);
        assert_eq!(hit.code.as_deref(), Some("abc"));
        assert_eq!(
            out,
            "https://client.example/cb?code=abc&state=client%20s%26%3D%C3%A9&iss=https%3A%2F%2Fas"
        );
    }

    #[test]
    fn state_removed_when_client_sent_none() {
        for (loc, want) in [
            (format!("/cb?code=c&state={H}&iss=x"), "/cb?code=c&iss=x"),
            (format!("/cb?code=c&state={H}"), "/cb?code=c"),
            (format!("/cb?state={H}&code=c"), "/cb?code=c"),
            (format!("/cb#state={H}&code=c"), "/cb#code=c"),
        ] {
            let (_, out) = restored(&loc, None).unwrap();
            assert_eq!(out, want, "{loc}");
        }
    }

    #[test]
    fn fragment() {
        let loc = format!("myapp:/cb?keep=1#code=xyz&state={H}");
        let (hit, out) = restored(&loc, Some("s")).unwrap();
        assert_eq!(hit.code.as_deref(), Some("xyz"));
        assert_eq!(out, "myapp:/cb?keep=1#code=xyz&state=s");
    }

    #[test]
    fn error_redirect() {
        let loc = format!("/cb?error=access_denied&state={H}");
        let (hit, out) = restored(&loc, Some("s")).unwrap();
        assert_eq!(hit.code, None);
        assert_eq!(out, "/cb?error=access_denied&state=s");
    }

    #[test]
    fn handle_alone_is_no_hit() {
        for loc in [
            format!("/login?state={H}"),
            format!("/accounts/login/?next=/o/authorize/%3Fstate%3D{H}%26code%3Dx"),
            format!("/cb?code=&state={H}"),
            format!("/cb?code=c&state={H}x"),
            "/cb?code=c&state=client".to_owned(),
            format!("/cb?code=c#state={H}"),
        ] {
            assert!(find_code_redirect(&loc, is_handle).is_none(), "{loc}");
        }
    }

    #[test]
    fn encoded_names_and_values() {
        let loc = format!("/cb?c%6Fde=a%2Bb&st%61te={}", H.replace('.', "%2E"));
        let (hit, out) = restored(&loc, Some("s")).unwrap();
        assert_eq!(hit.code.as_deref(), Some("a+b"));
        assert_eq!(out, "/cb?c%6Fde=a%2Bb&st%61te=s");
    }
}
