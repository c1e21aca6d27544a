//! Transaction handles: the opaque values that stand in for the client's
//! `state` while the upstream handles an authorization request.

use std::borrow::Cow;
use std::ops::Range;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Every handle starts with this; it is how responses that may carry one
/// are recognised cheaply.
pub(crate) const PREFIX: &str = "pkce.";
const RANDOM_BYTES: usize = 16;
const ENCODED_LEN: usize = 22;

const LEN: usize = PREFIX.len() + ENCODED_LEN;

/// A handle this middleware minted. It has a fixed length, so its text is
/// kept inline, with no allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Handle([u8; LEN]);

impl Handle {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub(crate) fn as_str(&self) -> &str {
        // Always ASCII: the prefix and base64url.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::ops::Deref for Handle {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Handle([redacted])")
    }
}

/// How many bytes of the operating system's randomness a thread fetches at
/// once: 32 handles' worth. A `getrandom` call costs about 450 ns here
/// whatever its size up to a few hundred bytes, several percent of an
/// authorization request's CPU, where one call for 32 handles costs 2 µs.
const POOL_BYTES: usize = RANDOM_BYTES * 32;

/// Randomness fetched from the operating system and not used yet. Each
/// handle takes its bytes and zeroes them, so memory holds only bytes no
/// handle was made of. The pool is per thread; the proxy never forks, and a
/// process that forks after minting handles would share the rest of the
/// pool with its child.
struct Pool {
    bytes: [u8; POOL_BYTES],
    next: usize,
}

thread_local! {
    static POOL: std::cell::RefCell<Pool> = const {
        std::cell::RefCell::new(Pool { bytes: [0; POOL_BYTES], next: POOL_BYTES })
    };
}

/// 128 bits from the operating system's random number generator, by way of
/// the thread's pool.
fn random_bytes() -> Result<[u8; RANDOM_BYTES], getrandom::Error> {
    POOL.with(|pool| {
        let Ok(mut pool) = pool.try_borrow_mut() else {
            // Only reachable if minting ever re-entered itself.
            let mut bytes = [0u8; RANDOM_BYTES];
            getrandom::fill(&mut bytes)?;
            return Ok(bytes);
        };
        let Pool { bytes, next } = &mut *pool;
        if *next + RANDOM_BYTES > POOL_BYTES {
            getrandom::fill(bytes)?;
            *next = 0;
        }
        let mut out = [0u8; RANDOM_BYTES];
        if let Some(taken) = bytes.get_mut(*next..*next + RANDOM_BYTES) {
            out.copy_from_slice(taken);
            taken.fill(0);
        }
        *next += RANDOM_BYTES;
        Ok(out)
    })
}

/// A fresh handle: the prefix and 128 bits from the operating system's
/// random number generator, base64url-encoded.
pub(crate) fn mint() -> Result<Handle, getrandom::Error> {
    let bytes = random_bytes()?;
    let mut handle = [0u8; LEN];
    handle[..PREFIX.len()].copy_from_slice(PREFIX.as_bytes());
    let encoded = &mut handle[PREFIX.len()..];
    match URL_SAFE_NO_PAD.encode_slice(bytes, encoded) {
        Ok(ENCODED_LEN) => Ok(Handle(handle)),
        // 16 bytes always encode to 22 characters.
        _ => Err(getrandom::Error::UNEXPECTED),
    }
}

/// The base64url alphabet, byte by byte.
static BASE64URL: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = matches!(b as u8, b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_');
        b += 1;
    }
    table
};

/// Whether `value` has the exact shape of a handle this middleware mints.
pub(crate) fn is_handle(value: &str) -> bool {
    value.len() == LEN
        && value
            .as_bytes()
            .split_at_checked(PREFIX.len())
            .is_some_and(|(prefix, encoded)| {
                prefix == PREFIX.as_bytes() && encoded.iter().all(|&b| BASE64URL[usize::from(b)])
            })
}

/// Whether `bytes` may contain a handle: a fast check before parsing. It
/// looks for `pkce` alone, so that a handle written as `pkce%2E…` or
/// `pkce&#46;…` is not missed, and lets through anything with an escape
/// that could spell a letter of it (`%70kce.…`, `&#112;kce.…`): such text
/// is read the slow way.
pub(crate) fn may_contain(bytes: &[u8]) -> bool {
    const STEM: &[u8] = b"pkce";
    bytes.windows(STEM.len()).any(|w| w == STEM)
        || bytes.windows(3).any(|w| match w {
            [b'%', h, l] => h.is_ascii_hexdigit() && l.is_ascii_hexdigit(),
            [b'&', b'#', _] => true,
            _ => false,
        })
}

/// How many handles `decoded` holds (see `loose::decode`): the prefix and
/// at least the encoded length of base64url after it. Anything longer
/// counts too: a reading for suspicion errs towards seeing a handle.
pub(crate) fn count_in(decoded: &[u8]) -> usize {
    let prefix = PREFIX.as_bytes();
    let mut count = 0;
    let mut at = 0;
    // From each `p`, to the prefix and the encoded bytes after it.
    while let Some(found) = decoded
        .get(at..)
        .and_then(|rest| crate::scan::find(rest, b'p'))
    {
        let start = at + found;
        at = start + 1;
        if decoded.get(start..start + prefix.len()) != Some(prefix) {
            continue;
        }
        let encoded = decoded
            .get(start + prefix.len()..)
            .unwrap_or_default()
            .iter()
            .take_while(|&&b| BASE64URL[usize::from(b)])
            .count();
        count += usize::from(encoded >= ENCODED_LEN);
        at = start + prefix.len();
    }
    count
}

/// A handle found beside a code or an error where a response hands them to
/// the client (a `Location`, a `form_post` page). The values borrow from
/// the response unless they had to be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hit<'a> {
    /// The handle, decoded.
    pub(crate) handle: Cow<'a, str>,
    /// The code beside it, or `None` when an `error` stands there instead.
    pub(crate) code: Option<Cow<'a, str>>,
    /// Where the `state` value is written, to put the client's back.
    pub(crate) value: Range<usize>,
    /// What to cut when the client sent no `state`: the whole parameter.
    pub(crate) whole: Range<usize>,
    /// The value is written without quotes (an HTML attribute only).
    pub(crate) bare: bool,
}

/// `input` with `range` replaced by `with`.
pub(crate) fn splice(input: &[u8], range: &Range<usize>, with: &[u8]) -> Vec<u8> {
    let head = input.get(..range.start).unwrap_or_default();
    let tail = input.get(range.end..).unwrap_or_default();
    let mut out = Vec::with_capacity(head.len() + with.len() + tail.len());
    out.extend_from_slice(head);
    out.extend_from_slice(with);
    out.extend_from_slice(tail);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn minted_handles_are_handles_and_unique() {
        let a = mint().unwrap();
        let b = mint().unwrap();
        assert!(is_handle(&a), "{}", a.as_str());
        assert_ne!(a, b);
        assert!(may_contain(format!("x?state={}", a.as_str()).as_bytes()));
        assert_eq!(format!("{a:?}"), "Handle([redacted])");
    }

    #[test]
    fn handles_stay_unique_across_refills_of_the_pool() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..(POOL_BYTES / RANDOM_BYTES) * 5 + 3 {
            let handle = mint().unwrap();
            assert!(is_handle(&handle));
            assert!(seen.insert(handle.as_str().to_owned()), "handle repeated");
        }
        POOL.with(|pool| {
            let pool = pool.borrow();
            let used = pool.bytes.get(..pool.next).unwrap();
            assert!(used.iter().all(|&b| b == 0), "used bytes are zeroed");
            assert!(pool.next < POOL_BYTES);
        });
    }

    #[test]
    fn lookalikes_are_not_handles() {
        let h = mint().unwrap();
        assert!(!is_handle(&h[..h.len() - 1]));
        assert!(!is_handle(&format!("{}A", h.as_str())));
        assert!(!is_handle(&h.replacen("pkce.", "pkce_", 1)));
        assert!(!is_handle(&format!("pkce.{}", "+".repeat(22))));
        assert!(!is_handle("client-state"));
        assert!(!is_handle(""));
        assert!(!may_contain(b"state=abc"));
        assert!(may_contain(b"state=%70kce.x"));
        assert!(may_contain(b"value=&#112;kce.x"));
        assert!(!may_contain(b"state=100% & more"));
    }

    #[test]
    fn handles_are_counted_wherever_they_stand() {
        let h = mint().unwrap();
        let h = h.as_str();
        assert_eq!(count_in(format!("a={h}&b={h}x").as_bytes()), 2);
        assert_eq!(count_in(format!("{h}{h}").as_bytes()), 2);
        assert_eq!(count_in(&h.as_bytes()[..h.len() - 1]), 0);
        assert_eq!(count_in(b"pkce.pkce."), 0);
    }
}
