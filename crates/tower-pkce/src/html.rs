//! `form_post` pages (OAuth 2.0 Form Post Response Mode): an HTML form that
//! auto-submits `code` and `state` as inputs to the client.
//!
//! The scan reads `<form>` and `<input>` tags, no more. A page that holds
//! one of our handles is either a delivery read with certainty (one form,
//! one `state` input holding the handle, one `code` or the `error` inputs
//! beside it, and nothing else on the page that a client could read as a
//! code), or a page of the upstream's own that carries the transaction on
//! (a login or consent form posting the handle back), or something that
//! might hand a code out and cannot be read with certainty, which is
//! withheld. Whether a delivery goes to the transaction's client is for
//! the caller to tell, from the form's `action`.

use std::borrow::Cow;
use std::ops::Range;

use crate::handle::{self, Hit, splice};
use crate::loose;

/// What a page is, for the transaction handles it may carry.
#[derive(Debug)]
pub(crate) enum Scan {
    /// No handle in it.
    Clean,
    /// A handle and no code or error: a login or consent page.
    Carrier,
    /// A code or an error for one handle, read with certainty.
    Delivery(Delivery),
    /// A handle beside something a client could read as a code or an
    /// error, not read with certainty: why.
    Uncertain(&'static str),
}

/// A `form_post` delivery read with certainty.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub(crate) hit: Hit<'static>,
    /// The form's `action`, its character references decoded: where the
    /// browser posts the code. `None` when the form has none (it posts to
    /// the page's own address).
    pub(crate) action: Option<String>,
}

/// One attribute of a tag.
struct Attribute {
    name: Range<usize>,
    value: Option<Range<usize>>,
    quoted: bool,
}

/// An `<input>` tag.
struct Input {
    tag: Range<usize>,
    /// The form it stands in, by order on the page; `None` outside a form.
    form: Option<usize>,
    name: String,
    value: String,
    value_range: Range<usize>,
    quoted: bool,
    /// It names its form with a `form` attribute, wherever it stands.
    names_form: bool,
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
                // Past the closing quote; an unclosed one ends the page.
                at = (end + 1).min(page.len());
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

/// The forms of a page (their `action`s) and its inputs.
struct Page {
    actions: Vec<Option<String>>,
    inputs: Vec<Input>,
    /// A `<form>` started while another was open, which a browser ignores:
    /// the inputs after it belong to the first.
    nested: bool,
}

fn read_page(page: &[u8]) -> Page {
    let mut actions = Vec::new();
    let mut inputs = Vec::new();
    let mut form = None;
    let mut nested = false;
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
        if starts_with_ignore_case(page, start, b"<form") && is_tag_end(page.get(start + 5)) {
            let (attrs, end) = attributes(page, start + 5);
            let action = attr(page, &attrs, b"action").map(|a| text(page, a));
            nested |= form.is_some();
            form = Some(actions.len());
            actions.push(action);
            at = end;
            continue;
        }
        if starts_with_ignore_case(page, start, b"</form") {
            form = None;
        } else if starts_with_ignore_case(page, start, b"<input") && is_tag_end(page.get(start + 6))
        {
            let (attrs, end) = attributes(page, start + 6);
            if let Some(input) = input(page, start..end, form, &attrs) {
                inputs.push(input);
            }
            at = end;
            continue;
        }
        at = start + 1;
    }
    Page {
        actions,
        inputs,
        nested,
    }
}

/// How many times `decoded` names a control `name` (lower case), in any
/// letter case and quoting (`name=code`, `NAME = 'code'`), wherever it
/// stands: in a tag the scan reads or not (a comment a browser reads
/// otherwise, a `<textarea>`, a `<button>`, a script).
pub(crate) fn name_tokens(decoded: &[u8], name: &[u8]) -> usize {
    let mut count = 0;
    let mut at = 0;
    while let Some(found) = decoded.get(at..).and_then(|rest| {
        rest.windows(4)
            .position(|w| w.eq_ignore_ascii_case(b"name"))
    }) {
        let start = at + found;
        at = start + 4;
        let before = start.checked_sub(1).and_then(|i| decoded.get(i));
        if before
            .is_some_and(|&b| !(b.is_ascii_whitespace() || matches!(b, b'"' | b'\'' | b'/' | b'<')))
        {
            continue;
        }
        let mut i = at;
        let skip_space = |i: &mut usize| {
            while decoded.get(*i).is_some_and(u8::is_ascii_whitespace) {
                *i += 1;
            }
        };
        skip_space(&mut i);
        if decoded.get(i) != Some(&b'=') {
            continue;
        }
        i += 1;
        skip_space(&mut i);
        if matches!(decoded.get(i), Some(b'"' | b'\'')) {
            i += 1;
        }
        let named = decoded
            .get(i..i + name.len())
            .is_some_and(|n| n.eq_ignore_ascii_case(name));
        let ends = decoded
            .get(i + name.len())
            .is_none_or(|&b| !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-')));
        count += usize::from(named && ends);
    }
    count
}

fn attr<'a>(page: &[u8], attrs: &'a [Attribute], name: &[u8]) -> Option<&'a Attribute> {
    attrs.iter().find(|a| {
        page.get(a.name.clone())
            .is_some_and(|n| n.eq_ignore_ascii_case(name))
    })
}

fn text(page: &[u8], a: &Attribute) -> String {
    a.value
        .clone()
        .and_then(|r| page.get(r))
        .map(|v| unescape(&String::from_utf8_lossy(v)))
        .unwrap_or_default()
}

fn input(
    page: &[u8],
    tag: Range<usize>,
    form: Option<usize>,
    attrs: &[Attribute],
) -> Option<Input> {
    let name = text(page, attr(page, attrs, b"name")?);
    let value_attr = attr(page, attrs, b"value");
    Some(Input {
        name,
        value: value_attr.map(|a| text(page, a)).unwrap_or_default(),
        value_range: value_attr
            .and_then(|a| a.value.clone())
            .unwrap_or(tag.end..tag.end),
        quoted: value_attr.is_some_and(|a| a.quoted),
        names_form: attr(page, attrs, b"form").is_some(),
        form,
        tag,
    })
}

/// Reads `page` for a `form_post` delivery (see the module docs).
pub(crate) fn scan(page: &[u8]) -> Scan {
    if !handle::may_contain(page) {
        return Scan::Clean;
    }
    let decoded = loose::decode(page, true);
    let handles = handle::count_in(&decoded);
    if handles == 0 {
        return Scan::Clean;
    }
    let Page {
        actions,
        inputs,
        nested,
    } = read_page(page);
    // Names in any case: a loose client may fold them.
    let named = |name: &'static str| {
        inputs
            .iter()
            .filter(move |i| i.name.eq_ignore_ascii_case(name))
    };
    let codes: Vec<&Input> = named("code").filter(|i| !i.value.is_empty()).collect();
    let errors: Vec<&Input> = named("error").filter(|i| !i.value.is_empty()).collect();
    let loose_codes = loose::count_params(&decoded, b"code");
    // Every control named `code` or `error` a browser might read is one the
    // scan read: anything else (a `<textarea>`, a comment a browser closes
    // early) is out of its sight.
    let unread = name_tokens(&decoded, b"code") != named("code").count()
        || name_tokens(&decoded, b"error") != named("error").count();
    if codes.is_empty() && errors.is_empty() && loose_codes == 0 && !unread {
        return Scan::Carrier;
    }
    match delivery(&decoded, &actions, &inputs, &codes, &errors) {
        Ok(_) if handles > 1 => Scan::Uncertain("the handle stands more than once"),
        Ok(_) if loose_codes > 0 => Scan::Uncertain("a code stands outside the form's inputs"),
        Ok(_) if unread => Scan::Uncertain("a control named code or error the scan cannot read"),
        Ok(_) if nested || actions.len() != 1 => {
            Scan::Uncertain("a delivery page holds more than its one form")
        }
        Ok(delivery) => Scan::Delivery(delivery),
        Err(why) => Scan::Uncertain(why),
    }
}

fn delivery(
    decoded: &[u8],
    actions: &[Option<String>],
    inputs: &[Input],
    codes: &[&Input],
    errors: &[&Input],
) -> Result<Delivery, &'static str> {
    let mut states = inputs
        .iter()
        .filter(|i| i.name.eq_ignore_ascii_case("state"));
    let state = states.next().ok_or("no state beside the code")?;
    if states.next().is_some() {
        return Err("more than one state input");
    }
    if state.name != "state"
        || codes
            .iter()
            .chain(errors)
            .any(|i| i.name != i.name.to_ascii_lowercase())
    {
        return Err("a name a strict client would not read");
    }
    if !handle::is_handle(&state.value) {
        return Err("the state is not exactly a handle");
    }
    let form = state.form.ok_or("the state stands outside a form")?;
    let beside = |i: &&Input| i.form == Some(form) && !i.names_form;
    if state.names_form || !codes.iter().chain(errors).all(beside) {
        return Err("a code or an error stands outside the state's form");
    }
    if codes.len() > 1 {
        return Err("more than one code");
    }
    if let Some(code) = codes.first()
        && !code.value.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err("the code holds bytes a client may trim");
    }
    if contains_ignore_case(decoded, b"formaction") {
        return Err("a button may post the form elsewhere");
    }
    Ok(Delivery {
        hit: Hit {
            handle: Cow::Owned(state.value.clone()),
            code: codes.first().map(|c| Cow::Owned(c.value.clone())),
            value: state.value_range.clone(),
            whole: state.tag.clone(),
            bare: !state.quoted,
        },
        action: actions.get(form).cloned().flatten(),
    })
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
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
        // A reference is short: looking further for its `;` would make a
        // page of `&`s quadratic.
        let end = rest.as_bytes().iter().take(11).position(|&b| b == b';');
        let decoded = end.and_then(|end| {
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

    const H: &str = "pkce.AAAAAAAAAAAAAAAAAAAAAA";

    fn form_post(state_field: &str) -> String {
        format!(
            "<!DOCTYPE html><html><body onload=\"document.forms[0].submit()\">\
             <form method=\"post\" action=\"https://client.example/cb?a=1&amp;b=2\">\
             <input type=\"hidden\" name=\"code\" value=\"c&amp;1\"/>{state_field}\
             <input type=\"hidden\" name=\"iss\" value=\"https://as\"/></form></body></html>"
        )
    }

    fn delivered(page: &str) -> Delivery {
        match scan(page.as_bytes()) {
            Scan::Delivery(d) => d,
            other => panic!("{page}: {other:?}"),
        }
    }

    #[test]
    fn finds_and_restores() {
        let page = form_post(&format!(
            "<input type=\"hidden\" name=\"state\" value=\"{H}\"/>"
        ));
        let d = delivered(&page);
        assert_eq!(d.hit.handle, H);
        assert_eq!(d.hit.code.as_deref(), Some("c&1"));
        assert_eq!(
            d.action.as_deref(),
            Some("https://client.example/cb?a=1&b=2")
        );
        let out = restore_state(page.as_bytes(), &d.hit, Some("a\"<b>&'c"));
        let want = form_post(
            "<input type=\"hidden\" name=\"state\" value=\"a&quot;&lt;b&gt;&amp;&#39;c\"/>",
        );
        assert_eq!(String::from_utf8(out).unwrap(), want);
        let out = restore_state(page.as_bytes(), &d.hit, None);
        assert_eq!(String::from_utf8(out).unwrap(), form_post(""));
    }

    #[test]
    fn attribute_styles() {
        for field in [
            format!("<INPUT TYPE=HIDDEN NAME=state VALUE={H}>"),
            format!("<input name='state' value='{H}' type='hidden'>"),
            format!("<input\n type = \"hidden\"\n name = \"state\"\n value = \"{H}\" />"),
            format!(
                "<input type=hidden name=state value=\"pkce&#46;{}\">",
                &H[5..]
            ),
            // Letters of the prefix escaped too: no `pkce` as written.
            format!(
                "<input type=hidden name=state value=\"&#112;kce.{}\">",
                &H[5..]
            ),
            format!(
                "<input type=hidden name=state value=\"&#x70;&#107;&#99;&#101;&#46;{}\">",
                &H[5..]
            ),
        ] {
            let page = form_post(&field);
            let d = delivered(&page);
            let out =
                String::from_utf8(restore_state(page.as_bytes(), &d.hit, Some("s t"))).unwrap();
            assert!(!out.contains(&H[5..]), "{out}");
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
        let d = delivered(&page);
        assert_eq!(d.hit.code, None);
        assert_eq!(d.action.as_deref(), Some("/cb"));
    }

    #[test]
    fn a_code_the_user_types_beside_the_handle_is_a_delivery_for_the_caller_to_judge() {
        // An MFA page posting back to the server: the caller finds its
        // action is not the client's and withholds it.
        let page = format!(
            "<form action=/mfa><input type=hidden name=state value={H}><input type=text name=code value=123456></form>"
        );
        assert_eq!(delivered(&page).action.as_deref(), Some("/mfa"));
    }

    #[test]
    fn pages_that_carry_the_handle_alone() {
        for page in [
            // A consent page posting the handle back.
            format!(
                "<form method=post action=/authorize><input type=hidden name=state value={H}><button>Allow</button></form>"
            ),
            // An MFA page: the code is for the user to type.
            format!(
                "<form><input type=hidden name=state value={H}><input name=code value=\"\"></form>"
            ),
            // A login redirect's link.
            format!(
                "<a href=\"/login?next=%2Fauthorize%3Fstate%3D{H}%26response_type%3Dcode\">go</a>"
            ),
        ] {
            assert!(matches!(scan(page.as_bytes()), Scan::Carrier), "{page}");
        }
        for page in [
            "<form><input type=hidden name=code value=c><input type=hidden name=state value=client></form>".to_owned(),
            "<p>How PKCE works: pkce.example?code=1</p>".to_owned(),
        ] {
            assert!(matches!(scan(page.as_bytes()), Scan::Clean), "{page}");
        }
    }

    #[test]
    fn what_cannot_be_read_with_certainty() {
        let state = format!("<input type=hidden name=state value={H}>");
        let code = "<input type=hidden name=code value=c>";
        for page in [
            // Code and handle in different forms.
            format!("<form>{code}</form><form action=/cb>{state}</form>"),
            // Two codes.
            format!("<form action=/cb>{code}{code}{state}</form>"),
            format!("<form action=/cb>{code}<input type=hidden name=code value=d>{state}</form>"),
            // Two states.
            format!("<form action=/cb>{code}{state}{state}</form>"),
            // Names a loose client folds.
            format!("<form action=/cb><input type=hidden name=CODE value=c>{state}</form>"),
            format!("<form action=/cb>{code}<input type=hidden name=State value={H}></form>"),
            // A code outside any form, or naming another form.
            format!("{code}<form action=/cb>{state}</form>"),
            format!("<form action=/cb><input type=hidden name=code value=c form=f>{state}</form>"),
            // A button that posts elsewhere.
            format!(
                "<form action=/cb>{code}{state}<button formaction=https://evil.example>go</button></form>"
            ),
            // A redirect by other means beside the handle.
            format!("<meta http-equiv=refresh content=\"0;url=/cb?code=c&amp;state={H}\">"),
            format!("<script>location = '/cb?code=c&state={H}'</script>"),
            format!("<form action=/cb>{code}{state}</form><script>location='/cb?code=c'</script>"),
            // The handle twice.
            format!("<form action=/cb>{code}{state}</form><a href=\"/x?s={H}\">x</a>"),
            // A control the scan does not read, or hidden from it by a
            // comment that a browser may close otherwise.
            format!(
                "<form><!-- <input type=hidden name=code value=c> --><input type=hidden name=state value={H}></form>"
            ),
            format!("<form action=/cb><script>x='<!--'</script>{code}{state}<!-- --></form>"),
            format!(
                "<form><inputx type=hidden name=code value=c><input type=hidden name=state value={H}></form>"
            ),
            format!("<form action=/cb><textarea name=code>c</textarea>{state}</form>"),
            format!("<form action=/cb><button name=\"code\" value=c>go</button>{state}</form>"),
            format!("<form action=/cb><select name='CODE'><option>c</select>{state}</form>"),
            // A form left open: a browser posts what follows to it.
            format!(
                "<div><form action=/search><input name=q></div><form action=/cb>{code}{state}</form>"
            ),
            format!("<form action=/search></form><form action=/cb>{code}{state}</form>"),
            // The state is more than the handle.
            format!("<form action=/cb>{code}<input type=hidden name=state value=\"{H} \"></form>"),
        ] {
            assert!(
                matches!(scan(page.as_bytes()), Scan::Uncertain(_)),
                "{page}: {:?}",
                scan(page.as_bytes())
            );
        }
    }

    #[test]
    fn names_are_counted_in_any_quoting_and_nowhere_else() {
        for (page, n) in [
            (
                &b"<input name=code><input NAME = 'Code'><x name=\"code\">"[..],
                3,
            ),
            (b"<input username=code name=codes name=code-x>", 0),
            (b"name=code", 1),
        ] {
            assert_eq!(
                name_tokens(page, b"code"),
                n,
                "{}",
                String::from_utf8_lossy(page)
            );
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
            "<form action",
            "<form action='",
            "pkce.AAAAAAAAAAAAAAAAAAAAAA<input name=code value=c",
        ] {
            let _ = scan(page.as_bytes());
        }
    }

    /// Found by the `html` fuzz target: a quote left open at the end of the
    /// page put the end of the state's tag one byte past the page.
    #[test]
    fn an_unclosed_quote_ends_the_tag_at_the_end_of_the_page() {
        let page = format!(
            "<form action=/cb><input type=hidden name=code value=c>\
             <input type=hidden name=state value='{H}' x='open"
        );
        let d = delivered(&page);
        assert_eq!(d.hit.whole.end, page.len());
        let out = restore_state(page.as_bytes(), &d.hit, None);
        assert_eq!(out, page.as_bytes()[..d.hit.whole.start]);
    }
}
