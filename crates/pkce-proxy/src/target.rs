//! What a request names: the path of its target and the host in `Host`
//! (or HTTP/2's `:authority`), checked before the request is served, on
//! both protocols. Each check is one pass over the bytes, with no
//! allocation unless the path holds an encoded `%` (`%25`), which may
//! decode again.

use std::net::Ipv6Addr;

/// Why a `Host` or `:authority` is refused.
pub(crate) const INVALID_HOST: &str =
    "invalid Host: a host name, an IPv4 address or an [IPv6] literal, with an optional port";
/// Why a path with a `%` not followed by two hex digits is refused.
pub(crate) const MALFORMED_ESCAPE: &str = "malformed percent-encoding in the request path";
/// Why a path with a control character, raw or encoded, is refused.
pub(crate) const CONTROL_IN_PATH: &str = "a control character in the request path";
/// Why a path that does not decode to UTF-8 (an overlong form such as
/// `%c0%ae` among others) is refused.
pub(crate) const PATH_NOT_UTF8: &str = "the request path is not UTF-8 once decoded";
/// Why a path that still holds an escape after every round of decoding is
/// refused: a server that decodes once more reads a path the PKCE layer
/// never matched (`/%25252574oken` is `/token` on the fourth round).
pub(crate) const ENCODED_TOO_DEEP: &str =
    "the request path is percent-encoded more times than the proxy decodes";

/// How many rounds of decoding a path is checked through, for servers that
/// decode twice (`%2500` is `%00` is NUL): as many as the PKCE layer applies
/// before it matches a path.
const DECODE_ROUNDS: usize = 3;

/// Whether `value` is a `Host` the proxy forwards (RFC 9112 §3.2, RFC 3986
/// §3.2.2): a host and an optional port, nothing else (no userinfo, no
/// path, no space).
///
/// Stricter than RFC 3986 on purpose: a registered name is
/// letters, digits, `-`, `.`, `_` and `~` (every DNS name and IPv4
/// address), without the sub-delimiters and percent-encoding the grammar
/// also allows. No resolvable host needs them, and they are what breaks out
/// of the URLs, headers and pages an upstream builds from `Host`. A port
/// is at most 65535.
pub(crate) fn check_host(value: &[u8]) -> bool {
    let (host_ok, port) = match value.strip_prefix(b"[") {
        Some(literal) => {
            let Some(end) = literal.iter().position(|&b| b == b']') else {
                return false;
            };
            let port = match &literal[end + 1..] {
                [] => None,
                [b':', port @ ..] => Some(port),
                _ => return false,
            };
            (ip_literal(&literal[..end]), port)
        }
        None => {
            let (host, port) = match value.iter().position(|&b| b == b':') {
                Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
                None => (value, None),
            };
            let host_ok = !host.is_empty()
                && host
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
            (host_ok, port)
        }
    };
    host_ok && port.is_none_or(port_ok)
}

/// RFC 3986 `port` (`*DIGIT`, so possibly empty), at most 65535.
fn port_ok(port: &[u8]) -> bool {
    port.len() <= 5
        && port
            .iter()
            .try_fold(0u32, |n, &d| {
                d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
            })
            .is_some_and(|n| n <= u32::from(u16::MAX))
}

/// The inside of an RFC 3986 `IP-literal`: an IPv6 address with no zone.
/// `IPvFuture` (`[v1.x]`) is refused: nothing resolves it, and the `http`
/// crate, hence HTTP/2's `:authority`, refuses it too.
fn ip_literal(inside: &[u8]) -> bool {
    std::str::from_utf8(inside).is_ok_and(|text| text.parse::<Ipv6Addr>().is_ok())
}

/// Checks a request path (without its query): every `%` starts a valid
/// escape, and neither the path nor what it decodes to holds a control
/// character (`%00`–`%1f`, `%7f`) or bytes that are not UTF-8 (an overlong
/// `%c0%ae`, a lone `%ff`, a surrogate), through as many rounds of decoding
/// as the PKCE layer applies. A server that decodes such a path may cut it
/// at a NUL, end a line at a LF, or fold an overlong dot into `..`: then it
/// serves a path other than the one the proxy matched.
pub(crate) fn check_path(path: &[u8]) -> Result<(), &'static str> {
    let mut utf8 = Utf8::default();
    let mut encoded_percent = false;
    let mut i = 0;
    while let Some(&b) = path.get(i) {
        let byte = if b == b'%' {
            let (Some(hi), Some(lo)) = (
                path.get(i + 1).copied().and_then(hex),
                path.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(MALFORMED_ESCAPE);
            };
            i += 3;
            hi << 4 | lo
        } else {
            i += 1;
            b
        };
        if byte < 0x20 || byte == 0x7f {
            return Err(CONTROL_IN_PATH);
        }
        encoded_percent |= byte == b'%';
        if !utf8.push(byte) {
            return Err(PATH_NOT_UTF8);
        }
    }
    if !utf8.is_complete() {
        return Err(PATH_NOT_UTF8);
    }
    if encoded_percent {
        return check_decoded_again(path);
    }
    Ok(())
}

/// The rounds after the first, for a path with `%25` in it (rare: this one
/// allocates). Later rounds decode leniently, as a server would: `100%25`
/// is a path that ends in `%`, not a malformed one.
fn check_decoded_again(path: &[u8]) -> Result<(), &'static str> {
    let mut bytes = decode(path);
    for _ in 1..DECODE_ROUNDS {
        if !bytes.contains(&b'%') {
            break;
        }
        let decoded = decode(&bytes);
        if decoded == bytes {
            break;
        }
        if decoded.iter().any(|&b| b < 0x20 || b == 0x7f) {
            return Err(CONTROL_IN_PATH);
        }
        if std::str::from_utf8(&decoded).is_err() {
            return Err(PATH_NOT_UTF8);
        }
        bytes = decoded;
    }
    if decode(&bytes) != bytes {
        return Err(ENCODED_TOO_DEEP);
    }
    Ok(())
}

/// Decodes every valid `%XX` escape; an invalid one stays as it is.
fn decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&b) = input.get(i) {
        if b == b'%'
            && let (Some(hi), Some(lo)) = (
                input.get(i + 1).copied().and_then(hex),
                input.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(b);
        i += 1;
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// UTF-8 validation one byte at a time (the Unicode Standard's table 3-7),
/// so that decoded bytes need no buffer: overlong forms, surrogates and
/// code points past U+10FFFF are refused as `std::str::from_utf8` refuses
/// them.
#[derive(Debug, Clone, Copy)]
struct Utf8 {
    /// Continuation bytes still owed.
    owed: u8,
    /// The range the next continuation byte must fall in.
    low: u8,
    high: u8,
}

impl Default for Utf8 {
    fn default() -> Self {
        Self {
            owed: 0,
            low: 0x80,
            high: 0xbf,
        }
    }
}

impl Utf8 {
    fn push(&mut self, b: u8) -> bool {
        if self.owed > 0 {
            if !(self.low..=self.high).contains(&b) {
                return false;
            }
            self.owed -= 1;
            (self.low, self.high) = (0x80, 0xbf);
            return true;
        }
        (self.owed, self.low, self.high) = match b {
            0x00..=0x7f => return true,
            0xc2..=0xdf => (1, 0x80, 0xbf),
            0xe0 => (2, 0xa0, 0xbf),
            0xe1..=0xec | 0xee..=0xef => (2, 0x80, 0xbf),
            0xed => (2, 0x80, 0x9f),
            0xf0 => (3, 0x90, 0xbf),
            0xf1..=0xf3 => (3, 0x80, 0xbf),
            0xf4 => (3, 0x80, 0x8f),
            _ => return false,
        };
        true
    }

    fn is_complete(&self) -> bool {
        self.owed == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for good in [
            &b"example.com"[..],
            b"login.example.com:8443",
            b"LOCALHOST",
            b"127.0.0.1",
            b"127.0.0.1:80",
            b"a_b-c~d",
            b"[::1]",
            b"[::1]:8080",
            b"[2001:db8::1]",
            b"[::ffff:192.0.2.1]:443",
            b"host:",
            b"host:65535",
        ] {
            assert!(check_host(good), "{}", String::from_utf8_lossy(good));
        }
        for bad in [
            &b""[..],
            b"a b",
            b" a",
            b"a\t",
            b"user@host",
            b"user:pw@host",
            b"host/path",
            b"host?x",
            b"host#x",
            b"host:65536",
            b"host:123456",
            b"host:8a",
            b"host:80:80",
            b":80",
            b"[::1",
            b"[::1]x",
            b"[::1]:x",
            b"[fe80::1%25eth0]",
            b"[1.2.3.4]",
            b"[]",
            b"[v1.fe80::a]",
            b"[v7.a:b]",
            b"[v1.]",
            b"[v.a]",
            b"ex%61mple.com",
            b"a'b",
            b"a\"b",
            b"a(b)",
            b"a;b",
            b"a,b",
            b"a=b",
            b"a&b",
            b"a\\b",
            b"\xc3\xa9.example",
        ] {
            assert!(!check_host(bad), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn paths() {
        for good in [
            &b"/"[..],
            b"*",
            b"/a/b.json",
            b"/p%20q",
            b"/%41%42",
            b"/token%3f",
            b"/token%23",
            b"/token%20",
            b"/caf%C3%A9",
            b"/%F0%9F%98%80",
            b"/100%25",
            b"/%25zz",
            b"/%252F",
            b"/%25252F",
            b"/100%252525",
            b"/a;b=c",
        ] {
            assert_eq!(
                check_path(good),
                Ok(()),
                "{}",
                String::from_utf8_lossy(good)
            );
        }
        for (bad, why) in [
            (&b"/token%00"[..], CONTROL_IN_PATH),
            (b"/token%09", CONTROL_IN_PATH),
            (b"/token%0a", CONTROL_IN_PATH),
            (b"/token%0D", CONTROL_IN_PATH),
            (b"/a%1fb", CONTROL_IN_PATH),
            (b"/a%7F", CONTROL_IN_PATH),
            (b"/a\x01", CONTROL_IN_PATH),
            // Encoded twice: a server that decodes twice reads a control.
            (b"/token%2500", CONTROL_IN_PATH),
            (b"/token%250a", CONTROL_IN_PATH),
            (b"/token%25%30%30", CONTROL_IN_PATH),
            (b"/token%252500", CONTROL_IN_PATH),
            (b"/%c0%ae%c0%ae/token", PATH_NOT_UTF8),
            (b"/%C0%AF", PATH_NOT_UTF8),
            (b"/%e0%80%ae", PATH_NOT_UTF8),
            (b"/%ed%a0%80", PATH_NOT_UTF8),
            (b"/%f4%90%80%80", PATH_NOT_UTF8),
            (b"/%ff", PATH_NOT_UTF8),
            (b"/caf%e9", PATH_NOT_UTF8),
            (b"/%c3", PATH_NOT_UTF8),
            (b"/%c3x", PATH_NOT_UTF8),
            (b"/%25c0%25ae", PATH_NOT_UTF8),
            (b"/a%zz", MALFORMED_ESCAPE),
            (b"/a%", MALFORMED_ESCAPE),
            (b"/a%2", MALFORMED_ESCAPE),
            (b"/a%%41", MALFORMED_ESCAPE),
            (b"/%25252574oken", ENCODED_TOO_DEEP),
            (b"/%2525252F", ENCODED_TOO_DEEP),
        ] {
            assert_eq!(
                check_path(bad),
                Err(why),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn utf8_is_validated_as_the_standard_library_validates_it() {
        let valid = |bytes: &[u8]| {
            let mut utf8 = Utf8::default();
            bytes.iter().all(|&b| utf8.push(b)) && utf8.is_complete()
        };
        // Every sequence of up to two bytes, and every three-byte sequence
        // whose bytes come from the boundaries of the table's ranges.
        for a in 0..=255u8 {
            assert_eq!(valid(&[a]), std::str::from_utf8(&[a]).is_ok(), "{a:x}");
            for b in 0..=255u8 {
                let s = [a, b];
                assert_eq!(valid(&s), std::str::from_utf8(&s).is_ok(), "{s:x?}");
            }
        }
        let edges = [
            0x00, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1, 0xc2, 0xdf, 0xe0, 0xe1,
            0xec, 0xed, 0xee, 0xef, 0xf0, 0xf1, 0xf3, 0xf4, 0xf5, 0xff,
        ];
        for a in edges {
            for b in edges {
                for c in edges {
                    for d in [0x80, 0xbf, 0x41] {
                        for s in [&[a, b, c][..], &[a, b, c, d]] {
                            assert_eq!(valid(s), std::str::from_utf8(s).is_ok(), "{s:x?}");
                        }
                    }
                }
            }
        }
    }
}
