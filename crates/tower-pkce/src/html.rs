//! `form_post` pages (OAuth 2.0 Form Post Response Mode): an HTML form that
//! auto-submits `code` and `state` as hidden inputs to the client.
//!
//! The scan reads `<input>` tags and the `<form>` they belong to, no more:
//! a handle counts only beside a hidden, non-empty `code` or `error` in the
//! same form. A login page or an MFA page whose hidden `state` posts the
//! handle back, and whose `code` field is for the user to type, is no hit.

use std::borrow::Cow;
use std::ops::Range;

use crate::handle::{Hit, splice};

/// One attribute of a tag.
struct Attribute {
    name: Range<usize>,
    value: Option<Range<usize>>,
    quoted: bool,
}

/// An `<input>` tag.
struct Input {
    tag: Range<usize>,
    form: usize,
    name: String,
    value: String,
    value_range: Range<usize>,
    quoted: bool,
    hidden: bool,
}

fn starts_with_ignore_case(bytes: &[u8], at: usize, prefix: &[u8]) -> bool {
    bytes
        .get(at..at + prefix.len())
        .is_some_and(|s| s.eq_ignore_ascii_case(prefix))
}

fn is_tag_end(b: Option<&u8>) -> bool {
    matches!(
        b,
        None | Some(b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' | b'/' | b'>')
    )
}

/// Reads the attributes of a tag from `at` (just past its name) to its `>`.
/// Returns them and the index past the tag.
fn attributes(page: &[u8], mut at: usize) -> (Vec<Attribute>, usize) {
    let mut out = Vec::new();
    let is_space = |b: u8| b.is_ascii_whitespace();
    loop {
        while page.get(at).is_some_and(|&b| is_space(b) || b == b'/') {
            at += 1;
        }
        match page.get(at) {
            None => return (out, at),
            Some(b'>') => return (out, at + 1),
            Some(_) => {}
        }
        let name_start = at;
        while page
            .get(at)
            .is_some_and(|&b| !is_space(b) && !matches!(b, b'=' | b'>' | b'/'))
        {
            at += 1;
        }
        let name = name_start..at.max(name_start + 1).min(page.len());
        at = at.max(name_start + 1);
        let mut look = at;
        while page.get(look).is_some_and(|&b| is_space(b)) {
            look += 1;
        }
        if page.get(look) != Some(&b'=') {
            out.push(Attribute {
                name,
                value: None,
                quoted: false,
            });
            continue;
        }
        at = look + 1;
        while page.get(at).is_some_and(|&b| is_space(b)) {
            at += 1;
        }
        match page.get(at) {
            Some(&q @ (b'"' | b'\'')) => {
                let start = at + 1;
                let end = page
                    .get(start..)
                    .and_then(|s| s.iter().position(|&b| b == q))
                    .map_or(page.len(), |i| start + i);
                out.push(Attribute {
                    name,
                    value: Some(start..end),
                    quoted: true,
                });
                at = end + 1;
            }
            _ => {
                let start = at;
                while page.get(at).is_some_and(|&b| !is_space(b) && b != b'>') {
                    at += 1;
                }
                out.push(Attribute {
                    name,
                    value: Some(start..at),
                    quoted: false,
                });
            }
        }
    }
}

fn inputs(page: &[u8]) -> Vec<Input> {
    let mut out = Vec::new();
    let mut form = 0;
    let mut at = 0;
    while let Some(offset) = page
        .get(at..)
        .and_then(|s| s.iter().position(|&b| b == b'<'))
    {
        let start = at + offset;
        if starts_with_ignore_case(page, start, b"<!--") {
            at = page
                .get(start + 4..)
                .and_then(|s| s.windows(3).position(|w| w == b"-->"))
                .map_or(page.len(), |i| start + 4 + i + 3);
            continue;
        }
        let opens_form =
            starts_with_ignore_case(page, start, b"<form") && is_tag_end(page.get(start + 5));
        if opens_form || starts_with_ignore_case(page, start, b"</form") {
            // Inputs on either side of a form boundary belong to different forms.
            form += 1;
        } else if starts_with_ignore_case(page, start, b"<input") && is_tag_end(page.get(start + 6))
        {
            let (attrs, end) = attributes(page, start + 6);
            if let Some(input) = input(page, start..end, form, &attrs) {
                out.push(input);
            }
            at = end;
            continue;
        }
        at = start + 1;
    }
    out
}

fn input(page: &[u8], tag: Range<usize>, form: usize, attrs: &[Attribute]) -> Option<Input> {
    let attr = |name: &[u8]| {
        attrs.iter().find(|a| {
            page.get(a.name.clone())
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
    };
    let text = |a: &Attribute| {
        a.value
            .clone()
            .and_then(|r| page.get(r))
            .map(|v| unescape(&String::from_utf8_lossy(v)))
            .unwrap_or_default()
    };
    let name = text(attr(b"name")?);
    let value_attr = attr(b"value");
    let hidden = attr(b"type").is_some_and(|t| text(t).eq_ignore_ascii_case("hidden"));
    Some(Input {
        name,
        value: value_attr.map(text).unwrap_or_default(),
        value_range: value_attr
            .and_then(|a| a.value.clone())
            .unwrap_or(tag.end..tag.end),
        quoted: value_attr.is_some_and(|a| a.quoted),
        form,
        tag,
        hidden,
    })
}

/// Finds a hidden `state` input holding one of our handles, with a hidden
/// non-empty `code` or `error` input in the same form.
pub(crate) fn find_form_post(
    page: &[u8],
    is_handle: impl Fn(&str) -> bool,
) -> Option<Hit<'static>> {
    let inputs = inputs(page);
    let state = inputs
        .iter()
        .find(|i| i.name == "state" && i.hidden && is_handle(&i.value))?;
    let beside = |name: &str| {
        inputs
            .iter()
            .find(|i| i.form == state.form && i.hidden && i.name == name && !i.value.is_empty())
    };
    let code = beside("code").map(|i| Cow::Owned(i.value.clone()));
    if code.is_none() && beside("error").is_none() {
        return None;
    }
    Some(Hit {
        handle: Cow::Owned(state.value.clone()),
        code,
        value: state.value_range.clone(),
        whole: state.tag.clone(),
        bare: !state.quoted,
    })
}

/// The page with the handle replaced by the client's own `state`, or the
/// `state` input removed when the client sent none.
pub(crate) fn restore_state(page: &[u8], hit: &Hit<'_>, state: Option<&str>) -> Vec<u8> {
    match state {
        Some(state) => {
            let escaped = escape(state);
            let value = if hit.bare {
                format!("\"{escaped}\"")
            } else {
                escaped
            };
            splice(page, &hit.value, value.as_bytes())
        }
        None => splice(page, &hit.whole, b""),
    }
}

/// Escapes text for an attribute value in either kind of quotes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// Decodes the character references an attribute value may hold.
fn unescape(text: &str) -> String {
    if !text.contains('&') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('&') {
        out.push_str(rest.get(..i).unwrap_or_default());
        rest = rest.get(i..).unwrap_or_default();
        let decoded = rest.find(';').filter(|&end| end <= 10).and_then(|end| {
            let entity = rest.get(1..end)?;
            let c = match entity {
                "amp" => '&',
                "quot" => '"',
                "apos" => '\'',
                "lt" => '<',
                "gt" => '>',
                _ => {
                    let number = entity.strip_prefix('#')?;
                    let code = match number.strip_prefix(['x', 'X']) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                        None => number.parse().ok()?,
                    };
                    char::from_u32(code)?
                }
            };
            Some((c, end + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = rest.get(len..).unwrap_or_default();
            }
            None => {
                out.push('&');
                rest = rest.get(1..).unwrap_or_default();
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handle::is_handle;

    const H: &str = "pkce.AAAAAAAAAAAAAAAAAAAAAA";

    fn form_post(state_field: &str) -> String {
        format!(
            "<!DOCTYPE html><html><body onload=\"document.forms[0].submit()\">\
             <form method=\"post\" action=\"https://client.example/cb\">\
             <input type=\"hidden\" name=\"code\" value=\"c&amp;1\"/>{state_field}\
             <input type=\"hidden\" name=\"iss\" value=\"https://as\"/></form></body></html>"
        )
    }

    #[test]
    fn finds_and_restores() {
        let page = form_post(&format!(
            "<input type=\"hidden\" name=\"state\" value=\"{H}\"/>"
        ));
        let hit = find_form_post(page.as_bytes(), is_handle).unwrap();
        assert_eq!(hit.handle, H);
        assert_eq!(hit.code.as_deref(), Some("c&1"));
        let out = restore_state(page.as_bytes(), &hit, Some("a\"<b>&'c"));
        let want = form_post(
            "<input type=\"hidden\" name=\"state\" value=\"a&quot;&lt;b&gt;&amp;&#39;c\"/>",
        );
        assert_eq!(String::from_utf8(out).unwrap(), want);
        let out = restore_state(page.as_bytes(), &hit, None);
        assert_eq!(String::from_utf8(out).unwrap(), form_post(""));
    }

    #[test]
    fn attribute_styles() {
        for field in [
            format!("<INPUT TYPE=HIDDEN NAME=state VALUE={H}>"),
            format!("<input name='state' value='{H}' type='hidden'>"),
            format!("<input\n type = \"hidden\"\n name = \"state\"\n value = \"{H}\" />"),
        ] {
            let page = form_post(&field);
            let hit =
                find_form_post(page.as_bytes(), is_handle).unwrap_or_else(|| panic!("{field}"));
            let out = String::from_utf8(restore_state(page.as_bytes(), &hit, Some("s t"))).unwrap();
            assert!(!out.contains(H), "{out}");
            assert!(out.contains("s t"), "{out}");
            if field.contains("VALUE=pkce") {
                assert!(out.contains("VALUE=\"s t\""), "{out}");
            }
        }
    }

    #[test]
    fn error_beside_handle() {
        let page = format!(
            "<form method=post action=/cb><input type=hidden name=error value=access_denied>\
             <input type=hidden name=state value={H}></form>"
        );
        let hit = find_form_post(page.as_bytes(), is_handle).unwrap();
        assert_eq!(hit.code, None);
    }

    #[test]
    fn pages_that_carry_the_handle_alone_are_no_hit() {
        for page in [
            // A consent page posting the handle back.
            format!("<form method=post action=/authorize><input type=hidden name=state value={H}><button>Allow</button></form>"),
            // An MFA page: the code is typed by the user.
            format!("<form><input type=hidden name=state value={H}><input name=code value=\"\"></form>"),
            format!("<form><input type=hidden name=state value={H}><input type=text name=code value=123456></form>"),
            // Code and handle in different forms.
            format!("<form><input type=hidden name=code value=c></form><form><input type=hidden name=state value={H}></form>"),
            // Commented out.
            format!("<form><!-- <input type=hidden name=code value=c> --><input type=hidden name=state value={H}></form>"),
            // Not a handle.
            "<form><input type=hidden name=code value=c><input type=hidden name=state value=client></form>".to_owned(),
            // <inputx> is not <input>.
            format!("<form><inputx type=hidden name=code value=c><input type=hidden name=state value={H}></form>"),
        ] {
            assert!(find_form_post(page.as_bytes(), is_handle).is_none(), "{page}");
        }
    }

    #[test]
    fn entities() {
        assert_eq!(
            unescape("a&amp;b&#39;&#x27;&quot;&lt;&gt;&apos;"),
            "a&b''\"<>'"
        );
        assert_eq!(unescape("&unknown; & &#xZZ;"), "&unknown; & &#xZZ;");
        assert_eq!(unescape(&escape("&\"'<>é")), "&\"'<>é");
    }

    #[test]
    fn odd_input_does_not_panic() {
        for page in [
            "<input",
            "<input name=",
            "<input name=\"state",
            "<form><input value='x",
            "<",
            "<!--",
            "<input =x>",
            "<input name=state value=>",
        ] {
            let _ = find_form_post(page.as_bytes(), is_handle);
        }
    }
}
