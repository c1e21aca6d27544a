//! Path normalisation and endpoint matching (`path.rs`: normalize,
//! PathPattern, is_metadata_path). The input is a request path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_pkce::fuzzing::{PathPattern, is_metadata_path, normalize_path, path_encoded_too_deep};

const ENDPOINTS: [&str; 5] = ["/token", "/authorize", "/oauth/token", "/o/authorize/", "/"];

fuzz_target!(|data: &[u8]| {
    let raw = String::from_utf8_lossy(data);
    let normalized = normalize_path(&raw);
    let n: &str = &normalized;
    assert!(n.starts_with('/'));
    assert!(n == "/" || !n.ends_with('/'), "{n:?}");
    assert!(!n.contains("//"));
    assert!(
        !n.bytes()
            .any(|b| b.is_ascii_uppercase() || b == b'\\' || b == b';')
    );
    assert!(n.split('/').all(|s| s != "." && s != ".."));
    // A path encoded more times than normalize decodes is refused by the
    // layer (and by the sidecar's target check); every other one
    // normalises once for all.
    if !path_encoded_too_deep(&raw) {
        assert_eq!(normalize_path(n), n, "not idempotent");
    }

    // Spellings a loose router serves alike normalise alike.
    let aliases = [
        raw.to_ascii_uppercase(),
        raw.to_ascii_lowercase(),
        format!("{raw}/"),
        format!("/{raw}"),
        format!("/./{raw}"),
        format!("/x/../{raw}"),
        format!("{raw};jsessionid=1"),
    ];
    for alias in &aliases {
        assert_eq!(normalize_path(alias), n, "{alias:?}");
    }

    // Matching follows the normalised path, whatever the spelling of the
    // endpoint; a match is the endpoint or the endpoint with a suffix.
    for endpoint in ENDPOINTS {
        let pattern = PathPattern::new(endpoint).unwrap();
        let matched = pattern.matches(n);
        for spelling in [
            endpoint.to_ascii_uppercase(),
            format!("{endpoint}/"),
            format!("/{endpoint}"),
        ] {
            assert_eq!(PathPattern::new(&spelling).unwrap().matches(n), matched);
        }
        if matched {
            let canonical = normalize_path(endpoint);
            let rest = n.strip_prefix(&*canonical).unwrap();
            assert!(rest.is_empty() || (rest.starts_with('.') && !rest.contains('/')));
        }
    }
    if is_metadata_path(n) {
        assert!(n.contains("/.well-known/"));
    }
});
