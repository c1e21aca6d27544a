//! Property tests of the parsers' invariants, over generated inputs (the
//! fuzz targets in `fuzz/` search the same ground by coverage).

use proptest::prelude::*;
use proptest::sample::select;

use crate::form::{self, Separators};
use crate::path::{PathPattern, normalize};
use crate::{handle, location, loose};

const A: Separators = Separators::Ampersand;

/// Text with the characters a form parser must mind written as they are:
/// separators, escapes, controls, NUL, spaces, non-ASCII.
fn wild_text() -> impl Strategy<Value = String> {
    const SPECIAL: &[char] = &[
        '\0', '\t', '\r', '\n', ' ', '%', '+', '&', '=', ';', '[', '.', 'A', 'é', '\u{7f}',
    ];
    prop::collection::vec(prop_oneof![2 => any::<char>(), 3 => select(SPECIAL)], 0..24)
        .prop_map(|chars| chars.into_iter().collect())
}

/// A string of 0 to `max` characters drawn from `chars`.
fn text_of(chars: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(select(chars), 0..=max).prop_map(|parts| parts.concat())
}

/// Path segments as routers meet them: names, dots, escapes (some twice
/// over), parameters, backslashes and non-ASCII.
fn path() -> impl Strategy<Value = String> {
    const ATOMS: &[&str] = &[
        "token",
        "oauth",
        "Authorize",
        "a",
        "B",
        ".",
        "..",
        "",
        "%2F",
        "%2f",
        "%2e",
        "%2E%2e",
        "%74",
        "%2574",
        "%252F",
        "%7E",
        ";p=1",
        ";",
        "\\",
        "é",
        "%C3%A9",
        "%",
        "%zz",
        ".json",
    ];
    (
        any::<bool>(),
        prop::collection::vec(text_of(ATOMS, 3), 0..6),
    )
        .prop_map(|(rooted, segments)| {
            let joined = segments.join("/");
            if rooted { format!("/{joined}") } else { joined }
        })
}

/// A spelling a loose router serves as `path` (which has no `%`): letters
/// in any case, characters escaped once or twice, slashes doubled, dot
/// segments and `;params` added, a trailing slash.
fn alias_of(path: &'static str) -> impl Strategy<Value = String> {
    let len = path.len();
    (
        prop::collection::vec(0u8..6, len),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(move |(choices, prefix, trailing)| {
            let mut out = String::new();
            if prefix {
                out.push_str("/x/..");
            }
            for (c, choice) in path.chars().zip(choices) {
                match (c, choice) {
                    ('/', 0) => out.push_str("//"),
                    ('/', 1) => out.push_str("/./"),
                    ('/', 2) => out.push_str(";v=1/"),
                    ('/', _) => out.push('/'),
                    (c, 0) => out.push(c.to_ascii_uppercase()),
                    (c, 1) => out.push_str(&format!("%{:02X}", u32::from(c))),
                    (c, 2) => out.push_str(&format!("%25{:02x}", u32::from(c))),
                    (c, _) => out.push(c),
                }
            }
            if trailing {
                out.push('/');
            }
            out
        })
}

proptest! {
    #[test]
    fn normalizing_twice_changes_nothing(raw in path()) {
        // The middleware refuses a path encoded more times than normalize
        // decodes; every other one normalises once for all.
        prop_assume!(!crate::path::encoded_too_deep(&raw));
        let once = normalize(&raw).into_owned();
        prop_assert_eq!(normalize(&once), once.as_str());
    }

    #[test]
    fn matching_is_alike_for_every_spelling_of_a_path(
        raw in path(),
        upper in any::<bool>(),
        trailing in any::<bool>(),
        dots in any::<bool>(),
        params in any::<bool>(),
    ) {
        let mut alias = if upper { raw.to_ascii_uppercase() } else { raw.clone() };
        if dots {
            alias = format!("/x/.././{alias}");
        }
        if params {
            alias.push_str(";jsessionid=1");
        }
        if trailing {
            alias.push('/');
        }
        prop_assert_eq!(normalize(&alias), normalize(&raw));
        for endpoint in ["/token", "/oauth/token", "/authorize", "/"] {
            let pattern = PathPattern::new(endpoint).unwrap();
            prop_assert_eq!(
                pattern.matches(&normalize(&alias)),
                pattern.matches(&normalize(&raw))
            );
        }
    }

    #[test]
    fn every_spelling_of_an_endpoint_matches_it(alias in alias_of("/oauth/token")) {
        let pattern = PathPattern::new("/oauth/token").unwrap();
        prop_assert!(pattern.matches(&normalize(&alias)), "{alias:?} -> {:?}", normalize(&alias));
    }
}

/// Forms of plain pairs, names in the spellings a loose server folds and
/// values encoded as a client encodes them.
fn form() -> impl Strategy<Value = (String, Vec<String>)> {
    const NAMES: &[&str] = &[
        "state",
        "st%61te",
        "STATE",
        "code",
        "client_id",
        "Client.Id",
        "scope",
        "x",
        "redirect_uri",
    ];
    prop::collection::vec((select(NAMES), wild_text()), 0..6).prop_map(|pairs| {
        let raw: Vec<String> = pairs
            .iter()
            .map(|(name, value)| format!("{name}={}", form::encode(value)))
            .collect();
        (raw.join("&"), raw)
    })
}

fn read(
    input: &str,
) -> Vec<(
    Result<String, form::FormError>,
    Result<String, form::FormError>,
)> {
    form::raw_pairs(input, A)
        .map(|p| {
            (
                form::name_of(p).map(|n| n.into_owned()),
                form::value_of(p).map(|v| v.into_owned()),
            )
        })
        .collect()
}

proptest! {
    #[test]
    fn a_state_set_reads_back(
        (input, _) in form(),
        value in wild_text().prop_filter("no NUL", |v| !v.contains('\0')),
    ) {
        // A form the reader takes (a NUL in a value is malformed).
        prop_assume!(!input.contains("%00"));
        let edited = form::edit(&input, Some(("state", &value)), &[], A).unwrap();
        let [state] = form::collect(&edited, ["state"], A, false).unwrap();
        prop_assert_eq!(state.as_deref(), Some(value.as_str()));
        // Set in place, without reading the form again, it is the same.
        if let Ok(placed) = form::collect_placed(&input, ["state"], A, false)
            && let Some(set) = form::set_placed(&input, &placed.layout, 0, "state", &value)
        {
            prop_assert_eq!(set, edited);
        }
    }

    #[test]
    fn removing_parameters_keeps_every_other_pair_as_it_was(
        (input, raw) in form(),
        remove in prop::sample::subsequence(vec!["state", "code", "client_id", "scope"], 0..4),
    ) {
        let edited = form::edit(&input, None, &remove, A).unwrap();
        let kept: Vec<&str> = raw
            .iter()
            .map(String::as_str)
            .filter(|pair| {
                let name = form::raw_pairs(pair, A).next().map(|p| form::name_of(p).unwrap());
                !name.is_some_and(|n| remove.contains(&n.as_ref()))
            })
            .collect();
        prop_assert_eq!(edited, kept.join("&"));
    }

    #[test]
    fn escaping_a_body_keeps_its_parameters(input in wild_text()) {
        match form::escape_unsafe(input.as_bytes()) {
            None => prop_assert!(input.bytes().all(|b| b.is_ascii_graphic())),
            Some(escaped) => {
                prop_assert!(escaped.iter().all(u8::is_ascii_graphic));
                let escaped = String::from_utf8(escaped).unwrap();
                prop_assert_eq!(read(&escaped), read(&input));
            }
        }
    }

    #[test]
    fn escaping_a_form_of_pairs_keeps_its_parameters((input, _) in form(), noise in wild_text()) {
        // Pairs with bytes a server may split or trim on, written as they are.
        let input = format!("{input}&noise={noise}");
        let escaped = form::escape_unsafe(input.as_bytes()).unwrap_or_else(|| input.clone().into_bytes());
        let escaped = String::from_utf8(escaped).unwrap();
        prop_assert_eq!(read(&escaped), read(&input));
    }
}

const BASE64URL: &[&str] = &[
    "A", "Z", "a", "z", "0", "9", "-", "_", "Q", "w", "E", "r", "T", "y", "U", "i",
];

/// A handle's text: the prefix and 22 characters of base64url.
fn handle_text() -> impl Strategy<Value = String> {
    prop::collection::vec(select(BASE64URL), 22).prop_map(|c| format!("pkce.{}", c.concat()))
}

/// A `Location` that delivers a code (or an error) beside a handle, among
/// other parameters, in its query or its fragment.
fn delivery() -> impl Strategy<Value = String> {
    const OTHER: &[&str] = &[
        "iss=https%3A%2F%2Flogin.example",
        "session_state=a.b",
        "x=",
        "scope=openid+email",
        "keep=1",
        "é=%C3%A9",
        "flag",
    ];
    (
        handle_text(),
        prop::collection::vec(select(BASE64URL), 1..20),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(select(OTHER), 0..4),
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
    )
        .prop_map(
            |(handle, code, error, fragment, mut others, at_code, at_state)| {
                let given = if error {
                    "error=access_denied".to_owned()
                } else {
                    format!("code={}", code.concat())
                };
                others.insert(at_code.index(others.len() + 1), &given);
                let state = format!("state={handle}");
                others.insert(at_state.index(others.len() + 1), &state);
                let params = others.join("&");
                if fragment {
                    format!("https://client.example/cb?a=1#{params}")
                } else {
                    format!("https://client.example/cb?{params}")
                }
            },
        )
}

proptest! {
    #[test]
    fn a_location_rewrite_changes_only_the_state(
        location in delivery(),
        client_state in prop::option::of(any::<String>()),
    ) {
        let bytes = location.as_bytes();
        let location::Scan::Delivery(delivery) = location::scan(bytes) else {
            return Err(TestCaseError::fail(format!("not a delivery: {location}")));
        };
        let hit = &delivery.hit;
        prop_assert!(handle::is_handle(&hit.handle));
        prop_assert_eq!(&location[hit.value.clone()], &*hit.handle);
        let restored = location::restore_state(bytes, hit, client_state.as_deref());
        match &client_state {
            Some(state) => {
                // Every byte outside the state's value is kept.
                prop_assert!(restored.starts_with(&bytes[..hit.value.start]));
                prop_assert!(restored.ends_with(&bytes[hit.value.end..]));
                let middle = &restored[hit.value.start..restored.len() - (bytes.len() - hit.value.end)];
                let encoded = form::encode(state);
                prop_assert_eq!(middle, encoded.as_bytes());
            }
            None => {
                let mut want = bytes[..hit.whole.start].to_vec();
                want.extend_from_slice(&bytes[hit.whole.end..]);
                prop_assert_eq!(&restored, &want);
            }
        }
    }

    #[test]
    fn a_loose_reading_never_hides_a_handle(
        parts in prop::collection::vec(
            prop_oneof![
                handle_text(),
                select(&[
                    "pkce", "pkce.", ".", "%2E", "%252E", "&#46;", "&#x2E;", "&period;", "%70",
                    "&#112;", "\t", "\n", "\0", "+", "%", "&", "&amp;", ";", "=", "code=", "A",
                    "%41", "%2541", "é", "%C3",
                ][..])
                .prop_map(str::to_owned),
            ],
            0..12,
        ),
        html in any::<bool>(),
    ) {
        let text = parts.concat();
        let decoded = loose::decode(text.as_bytes(), html);
        prop_assert!(handle::count_in(&decoded) >= handle::count_in(text.as_bytes()));
    }
}

#[test]
fn a_path_encoded_four_times_is_refused_not_normalised() {
    use crate::path::encoded_too_deep;
    assert!(encoded_too_deep("/%25252574oken"));
    assert!(!encoded_too_deep("/%252574oken"));
    assert_eq!(normalize("/%252574oken"), "/token");
    // An escape that is not one stays as it is, at any depth.
    assert!(!encoded_too_deep("/100%25zz"));
}
