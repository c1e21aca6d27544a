//! Looking for a byte in the short strings of a request or a response
//! (form values, a `Location`) eight bytes a step. `memchr` is faster on
//! long inputs, but on these its dispatch costs more than the search, and
//! `str::find` goes byte by byte.

const ONES: u64 = u64::from_le_bytes([0x01; 8]);
const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);

/// The high bit of each byte of `word` that is zero. Bits above the first
/// zero byte may be set wrongly (a borrow carries into them), so only the
/// lowest set bit is exact: enough to find the first match.
fn zero_bytes(word: u64) -> u64 {
    word.wrapping_sub(ONES) & !word & HIGHS
}

/// Whether any byte of `word` is `byte`. The byte order of `word` does not
/// matter for the question "any?".
pub(crate) fn has_byte(word: u64, byte: u8) -> bool {
    zero_bytes(word ^ (ONES * u64::from(byte))) != 0
}

/// Where `byte` first stands in `haystack`. The last word is padded with
/// zeros, and hits in the padding are masked off.
pub(crate) fn find(haystack: &[u8], byte: u8) -> Option<usize> {
    let spread = ONES * u64::from(byte);
    let hits = |word: [u8; 8]| zero_bytes(u64::from_le_bytes(word) ^ spread);
    let mut chunks = haystack.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let found = hits(word);
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let tail = chunks.remainder();
    if tail.is_empty() {
        return None;
    }
    let mut word = [0u8; 8];
    word.get_mut(..tail.len())?.copy_from_slice(tail);
    // A tail is one to seven bytes, so the shift stays below 64.
    let valid = (1u64 << (8 * tail.len())) - 1;
    let found = hits(word) & valid;
    (found != 0).then(|| at + (found.trailing_zeros() / 8) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_match_at_every_position() {
        // Bytes that differ from the needle by one (a borrow) and 0x00 and
        // 0x80 around it are where word tricks go wrong.
        let fillers = [b'x', b'&' - 1, b'&' + 1, 0x00, 0x80, 0xff, b'%'];
        for len in 0..40 {
            for filler in fillers {
                for first in 0..=len {
                    for second in [first, first + 1, len] {
                        let mut hay = vec![filler; len];
                        if let Some(b) = hay.get_mut(first) {
                            *b = b'&';
                        }
                        if let Some(b) = hay.get_mut(second) {
                            *b = b';';
                        }
                        let want1 = hay.iter().position(|&b| b == b'&');
                        assert_eq!(find(&hay, b'&'), want1, "{hay:?}");
                        let want2 = hay.iter().position(|&b| b == b';');
                        assert_eq!(find(&hay, b';'), want2, "{hay:?}");
                        assert_eq!(find(&hay, 0), hay.iter().position(|&b| b == 0), "{hay:?}");
                    }
                }
            }
        }
    }
}
