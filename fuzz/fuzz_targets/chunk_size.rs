//! The chunk-size line parser (`wire::parse_chunk_size`): the input is the
//! bytes at the start of a chunk.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pkce_proxy::fuzzing::parse_chunk_size;

fuzz_target!(|data: &[u8]| {
    match parse_chunk_size(data) {
        Ok(Some((used, size))) => {
            assert!((3..=data.len()).contains(&used));
            assert_eq!(&data[used - 2..used], b"\r\n");
            let line = &data[..used - 2];
            assert!(!line.contains(&b'\r') && !line.contains(&b'\n'));
            // Leading zeros are taken (as hyper and nginx take them); the
            // value fits in a signed 64-bit length.
            let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
            assert!(digits >= 1);
            let zeros = line[..digits].iter().take_while(|&&b| b == b'0').count();
            assert!(digits - zeros <= 16);
            let text = std::str::from_utf8(&line[zeros.min(digits - 1)..digits]).unwrap();
            assert_eq!(u64::from_str_radix(text, 16).unwrap(), size);
            assert!(size <= i64::MAX as u64);
            // Whatever follows the line changes nothing, and every prefix
            // of it waits for more.
            let mut longer = data[..used].to_vec();
            longer.extend_from_slice(b"0\r\n\r\n");
            assert_eq!(parse_chunk_size(&longer), Ok(Some((used, size))));
            for cut in [0, 1, used / 2, used - 2, used - 1] {
                assert_eq!(parse_chunk_size(&data[..cut]), Ok(None), "prefix {cut}");
            }
        }
        Ok(None) => {
            // Waiting is only for a line not all there: no line end yet
            // (or a CR at the very end), and not too long.
            let end = data.iter().position(|&b| b == b'\r' || b == b'\n');
            assert!(end.is_none() || end == Some(data.len() - 1) && data.ends_with(b"\r"));
            assert!(data.len() <= 4 * 1024 + 1);
        }
        Err(_) => {
            // A refused line stays refused whatever comes after it.
            let mut longer = data.to_vec();
            longer.extend_from_slice(b"\r\n");
            assert!(parse_chunk_size(&longer).is_err());
        }
    }
});
