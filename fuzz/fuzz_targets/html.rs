//! The `form_post` page scanner (`html.rs`: scan, restore_state,
//! name_tokens). The input is a page.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_pkce::fuzzing::{PageScan, count_handles, is_handle, loose_decode, scan_page};

const STATE: &str = "a\"<b>&'c";
const ESCAPED: &str = "a&quot;&lt;b&gt;&amp;&#39;c";

fuzz_target!(|page: &[u8]| {
    let scan = scan_page(page);
    // Only a delivery has properties of its own to check here; the others
    // are judged by the service (a handle whose letters are escaped,
    // `&#112;kce.`, is read since the quick check lets escapes through).
    let PageScan::Delivery(delivery) = scan else {
        return;
    };
    let hit = delivery.hit();
    assert!(is_handle(hit.handle()));
    if let Some(code) = hit.code() {
        assert!(code.bytes().all(|b| b.is_ascii_graphic()));
    }
    let (value, whole) = (hit.value(), hit.whole());
    assert!(whole.start <= value.start && value.end <= whole.end && whole.end <= page.len());

    // Only the state's value changes, or only its input goes.
    let restored = delivery.restore_state(page, Some(STATE));
    let written = if hit.bare() {
        format!("\"{ESCAPED}\"")
    } else {
        ESCAPED.to_owned()
    };
    let want = [&page[..value.start], written.as_bytes(), &page[value.end..]].concat();
    assert_eq!(restored, want);
    assert_eq!(count_handles(&loose_decode(&restored, true)), 0);
    let removed = delivery.restore_state(page, None);
    assert_eq!(removed, [&page[..whole.start], &page[whole.end..]].concat());
    // No copy of the handle is left on either side of the removed input.
    // (The text on the two sides may join into anything, even the
    // handle's own text if the page held all but its last character before
    // the input and that character after it: nothing a reader of the page
    // did not have.)
    let handle = hit.handle().as_bytes();
    for side in [&page[..whole.start], &page[whole.end..]] {
        let decoded = loose_decode(side, true);
        assert!(!decoded.windows(handle.len()).any(|w| w == handle));
    }
});
