//! Helpers the fuzz targets share.

/// `data` cut into pieces whose lengths follow from `seed`: 0 keeps it
/// whole, any other seed gives pieces of 1 to 64 bytes from a small
/// generator, so that one input always gives the same cuts.
pub fn pieces(seed: u8, data: &[u8]) -> Vec<&[u8]> {
    if seed == 0 {
        return vec![data];
    }
    let mut state = u32::from(seed).wrapping_mul(0x9E37_79B9) | 1;
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        // xorshift32
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let len = (state % 64) as usize + 1;
        let (piece, tail) = rest.split_at(len.min(rest.len()));
        out.push(piece);
        rest = tail;
    }
    out
}

/// `parts` joined.
pub fn joined(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_input_in_order() {
        let data: Vec<u8> = (0..=255).collect();
        for seed in 0..=255 {
            let cut = pieces(seed, &data);
            assert_eq!(joined(&cut), data);
            assert!(cut.iter().all(|p| !p.is_empty()));
        }
        assert_eq!(pieces(0, &data).len(), 1);
        assert!(pieces(7, &data).len() > 1);
    }
}
