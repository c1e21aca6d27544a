//! The `Location` of a redirect: where a code leaves in its query (the
//! default `response_mode`) or its fragment (`response_mode=fragment`).

use std::ops::Range;

use crate::form::{decode, encode};
use crate::handle::{Hit, splice};

/// Finds a `state` that is one of our handles, with a `code` or an `error`
/// beside it in the same component (query or fragment) of `location`.
///
/// A `Location` that carries the handle alone (a login page's URL, a
/// `next=` parameter holding the original request) is no hit: the flow is
/// still going on.
pub(crate) fn find_code_redirect(location: &str, is_handle: impl Fn(&str) -> bool) -> Option<Hit> {
    let (before_fragment, fragment) = match location.find('#') {
        Some(i) => (i, Some(i + 1)),
        None => (location.len(), None),
    };
    let query = location
        .get(..before_fragment)
        .and_then(|s| s.find('?'))
        .map(|i| i + 1..before_fragment);
    let fragment = fragment.map(|start| start..location.len());
    [query, fragment]
        .into_iter()
        .flatten()
        .find_map(|component| find_in(location, component, &is_handle))
}

/// One `name=value` pair of a component, with its place in the whole string.
struct Pair {
    whole: Range<usize>,
    value: Range<usize>,
}

fn pairs(input: &str, component: Range<usize>) -> Vec<Pair> {
    let mut out = Vec::new();
    let mut start = component.start;
    while start <= component.end {
        let end = input
            .get(start..component.end)
            .and_then(|s| s.find('&'))
            .map_or(component.end, |i| start + i);
        if end > start {
            let eq = input.get(start..end).and_then(|s| s.find('='));
            let value = eq.map_or(end..end, |i| start + i + 1..end);
            out.push(Pair {
                whole: start..end,
                value,
            });
        }
        start = end + 1;
    }
    out
}

fn find_in(input: &str, component: Range<usize>, is_handle: &impl Fn(&str) -> bool) -> Option<Hit> {
    let pairs = pairs(input, component);
    let name_of = |p: &Pair| {
        let raw = input.get(p.whole.start..p.value.start)?;
        decode(raw.strip_suffix('=').unwrap_or(raw)).ok()
    };
    let value_of = |p: &Pair| decode(input.get(p.value.clone())?).ok();
    let mut state = None;
    let mut code = None;
    let mut error = false;
    for (i, pair) in pairs.iter().enumerate() {
        let Some(name) = name_of(pair) else { continue };
        match name.as_ref() {
            "state" => {
                if let Some(v) = value_of(pair).filter(|v| is_handle(v)) {
                    state = Some((i, v.into_owned()));
                }
            }
            "code" => {
                code = value_of(pair)
                    .filter(|v| !v.is_empty())
                    .map(|v| v.into_owned())
            }
            "error" => error |= value_of(pair).is_some_and(|v| !v.is_empty()),
            _ => {}
        }
    }
    let (i, handle) = state?;
    if code.is_none() && !error {
        return None;
    }
    let pair = pairs.get(i)?;
    // Cut the parameter with one of the `&` around it.
    let whole = if i + 1 < pairs.len() {
        pair.whole.start..pair.whole.end + 1
    } else if i > 0 {
        pair.whole.start - 1..pair.whole.end
    } else {
        pair.whole.clone()
    };
    Some(Hit {
        handle,
        code,
        value: pair.value.clone(),
        whole,
        bare: false,
    })
}

/// `location` with the handle replaced by the client's own `state`, or the
/// `state` parameter removed when the client sent none. Nothing else
/// changes.
pub(crate) fn restore_state(location: &str, hit: &Hit, state: Option<&str>) -> String {
    let bytes = match state {
        Some(state) => splice(location.as_bytes(), &hit.value, encode(state).as_bytes()),
        None => splice(location.as_bytes(), &hit.whole, b""),
    };
    // Only ASCII is spliced in at ASCII boundaries, so this never loses data.
    String::from_utf8(bytes).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handle::is_handle;

    const H: &str = "pkce.AAAAAAAAAAAAAAAAAAAAAA";

    fn restored(location: &str, state: Option<&str>) -> Option<(Hit, String)> {
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
