//! The form reader and editor (`form.rs`: raw_pairs, collect_placed, edit,
//! set_placed, decode, encode, escape_unsafe).
//!
//! Input: a flags byte (bit 0: `;` separates too; bit 1: pairs only; bit 2:
//! set a parameter; bits 3-5: which), a byte whose bits name parameters to
//! remove, then the form; a BEL (0x07) in it starts the value to set.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_pkce::fuzzing::{
    FormError, RawPair, form_collect, form_decode, form_edit, form_encode, form_escape_unsafe,
    form_pairs,
};

const NAMES: [&str; 8] = [
    "state",
    "code",
    "client_id",
    "grant_type",
    "redirect_uri",
    "code_verifier",
    "code_challenge",
    "scope",
];

type Read<'a> = Vec<(Result<String, FormError>, Result<String, FormError>)>;

fn read(form: &str, semicolons: bool) -> Read<'_> {
    form_pairs(form, semicolons)
        .iter()
        .map(|p| {
            (
                p.decoded_name().map(|n| n.into_owned()),
                p.decoded_value().map(|v| v.into_owned()),
            )
        })
        .collect()
}

fn is_separator(b: u8, semicolons: bool) -> bool {
    b == b'&' || (semicolons && b == b';')
}

fn check_pairs(form: &str, semicolons: bool, pairs: &[RawPair<'_>]) {
    let mut at = 0;
    for pair in pairs {
        let raw = pair.raw();
        assert!(!raw.is_empty() && pair.start() >= at);
        assert!(
            form[at..pair.start()]
                .bytes()
                .all(|b| is_separator(b, semicolons))
        );
        assert_eq!(&form[pair.start()..pair.start() + raw.len()], raw);
        assert!(!raw.bytes().any(|b| is_separator(b, semicolons)));
        match raw.split_once('=') {
            Some((name, value)) => assert_eq!((pair.name(), pair.value()), (name, value)),
            None => assert_eq!((pair.name(), pair.value()), (raw, "")),
        }
        at = pair.start() + raw.len();
    }
    assert!(form[at..].bytes().all(|b| is_separator(b, semicolons)));
}

fuzz_target!(|input: &[u8]| {
    let [flags, removing, rest @ ..] = input else {
        return;
    };
    let semicolons = flags & 1 != 0;
    let pairs_only = flags & 2 != 0;
    let text = String::from_utf8_lossy(rest);
    let (form, value) = match text.split_once('\u{7}') {
        Some((form, value)) => (form, value),
        None => (&text[..], "pkce.value"),
    };
    let which = usize::from(flags >> 3) % NAMES.len();
    let name = NAMES[which];
    let set = (flags & 4 != 0).then_some((name, value));
    let remove: Vec<&str> = NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| removing & (1 << i) != 0)
        .map(|(_, n)| *n)
        .collect();

    let pairs = form_pairs(form, semicolons);
    check_pairs(form, semicolons, &pairs);
    for pair in &pairs {
        if let Ok(decoded) = pair.decoded_value() {
            // Strict reading: no NUL comes out of a value.
            assert!(!decoded.contains('\0'), "{:?}", pair.value());
            assert_eq!(form_decode(&form_encode(&decoded)).unwrap(), decoded);
        }
    }

    // The named parameters, as the pairs give them.
    let names = [name, NAMES[(which + 1) % 8], NAMES[(which + 3) % 8]];
    if let Ok(placed) = form_collect(form, names, semicolons, pairs_only) {
        for (i, n) in names.into_iter().enumerate() {
            let found = pairs
                .iter()
                .find(|p| p.decoded_name().is_ok_and(|d| d == n))
                .map(|p| p.decoded_value().unwrap());
            assert_eq!(placed.values()[i], found);
            // Setting in place writes what an edit writes.
            if let Some(out) = placed.set(form, i, n, value) {
                assert_eq!(
                    out,
                    form_edit(form, Some((n, value)), &[], semicolons).unwrap()
                );
            }
        }
    }

    let Ok(edited) = form_edit(form, set, &remove, semicolons) else {
        // Only a name that does not decode stops an edit.
        assert!(pairs.iter().any(|p| p.decoded_name().is_err()));
        return;
    };
    // Every pair neither set nor removed keeps its bytes, in order.
    let kept: Vec<&str> = pairs
        .iter()
        .filter(|p| {
            let n = p.decoded_name().unwrap();
            !remove.contains(&n.as_ref()) && set.is_none_or(|(s, _)| n != s)
        })
        .map(RawPair::raw)
        .collect();
    let out_pairs = form_pairs(&edited, semicolons);
    let others: Vec<&str> = out_pairs
        .iter()
        .filter(|p| set.is_none_or(|(s, _)| p.decoded_name().unwrap() != s))
        .map(RawPair::raw)
        .collect();
    assert_eq!(others, kept);
    if let Some((name, value)) = set {
        // Read back, the parameter set has the value set, once.
        let set_pairs: Vec<_> = out_pairs
            .iter()
            .filter(|p| p.decoded_name().unwrap() == name)
            .collect();
        assert_eq!(set_pairs.len(), 1);
        if !value.contains('\0') {
            assert_eq!(set_pairs[0].decoded_value().unwrap(), value);
        }
    }

    // Escaping keeps every parameter as the reader reads it.
    match form_escape_unsafe(form.as_bytes()) {
        None => assert!(form.bytes().all(|b| b.is_ascii_graphic())),
        Some(escaped) => {
            assert!(escaped.iter().all(u8::is_ascii_graphic));
            let escaped = String::from_utf8(escaped).unwrap();
            assert_eq!(read(&escaped, semicolons), read(form, semicolons));
        }
    }
});
