//! Content codings: decoding a compressed response body so that it can be
//! scanned or edited, with a bound against decompression bombs.

use std::fmt;
use std::io::Read;

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CodingError {
    /// A coding this module does not know.
    Unsupported,
    /// The decoded body is larger than the bound.
    TooLarge,
    /// The body is not valid for its coding.
    Corrupt,
}

impl fmt::Display for CodingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unsupported => "unsupported content coding",
            Self::TooLarge => "decoded body over the size bound",
            Self::Corrupt => "corrupt compressed body",
        })
    }
}

impl std::error::Error for CodingError {}

/// Decodes `data` by the `Content-Encoding` header value `encoding` (a list,
/// applied in order, so undone in reverse), into at most `limit` bytes.
///
/// # Errors
///
/// [`CodingError`] for an unknown coding, a corrupt body, or more than
/// `limit` decoded bytes.
pub(crate) fn decode_content(
    encoding: &str,
    data: &[u8],
    limit: usize,
) -> Result<Vec<u8>, CodingError> {
    let mut body = data.to_vec();
    for coding in encoding.rsplit(',') {
        let coding = coding.trim();
        body = match coding.to_ascii_lowercase().as_str() {
            "" | "identity" => continue,
            "gzip" | "x-gzip" => read_bounded(flate2::read::MultiGzDecoder::new(&body[..]), limit)?,
            "deflate" => {
                // RFC 9110 §8.4.1.2 says zlib; some servers send raw deflate.
                read_bounded(flate2::read::ZlibDecoder::new(&body[..]), limit).or_else(|_| {
                    read_bounded(flate2::read::DeflateDecoder::new(&body[..]), limit)
                })?
            }
            "br" => read_bounded(brotli::Decompressor::new(&body[..], 4096), limit)?,
            _ => return Err(CodingError::Unsupported),
        };
    }
    if body.len() > limit {
        return Err(CodingError::TooLarge);
    }
    Ok(body)
}

fn read_bounded(reader: impl Read, limit: usize) -> Result<Vec<u8>, CodingError> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|_| CodingError::Corrupt)?;
    if out.len() > limit {
        return Err(CodingError::TooLarge);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const PAGE: &[u8] = b"<form><input type=hidden name=code value=c></form>";

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn brotli(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            w.write_all(data).unwrap();
        }
        out
    }

    #[test]
    fn each_coding() {
        assert_eq!(decode_content("gzip", &gzip(PAGE), 1024).unwrap(), PAGE);
        assert_eq!(decode_content("X-GZIP", &gzip(PAGE), 1024).unwrap(), PAGE);
        assert_eq!(decode_content("deflate", &zlib(PAGE), 1024).unwrap(), PAGE);
        assert_eq!(
            decode_content("deflate", &raw_deflate(PAGE), 1024).unwrap(),
            PAGE
        );
        assert_eq!(decode_content("br", &brotli(PAGE), 1024).unwrap(), PAGE);
        assert_eq!(decode_content("identity", PAGE, 1024).unwrap(), PAGE);
        assert_eq!(
            decode_content("gzip, br", &brotli(&gzip(PAGE)), 1024).unwrap(),
            PAGE
        );
    }

    #[test]
    fn bounds_and_errors() {
        let bomb = gzip(&vec![b'a'; 1 << 20]);
        assert_eq!(
            decode_content("gzip", &bomb, 4096),
            Err(CodingError::TooLarge)
        );
        assert_eq!(
            decode_content("gzip", b"not gzip", 4096),
            Err(CodingError::Corrupt)
        );
        assert_eq!(
            decode_content("zstd", PAGE, 4096),
            Err(CodingError::Unsupported)
        );
        assert_eq!(
            decode_content("identity", PAGE, 3),
            Err(CodingError::TooLarge)
        );
    }
}
