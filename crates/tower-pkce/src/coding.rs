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
            // RFC 9110 §8.4.1.2 says zlib; some servers send raw deflate.
            // The header tells which, as it does for browsers: a zlib body
            // that decodes past the bound is too large, not raw deflate.
            "deflate" if is_zlib(&body) => {
                read_bounded(flate2::read::ZlibDecoder::new(&body[..]), limit)?
            }
            "deflate" => read_bounded(flate2::read::DeflateDecoder::new(&body[..]), limit)?,
            "br" => read_bounded(brotli::Decompressor::new(&body[..], 4096), limit)?,
            _ => return Err(CodingError::Unsupported),
        };
    }
    if body.len() > limit {
        return Err(CodingError::TooLarge);
    }
    Ok(body)
}

/// Whether a `deflate` body starts with a zlib header (RFC 1950 §2.2)
/// rather than being the raw deflate that some servers send.
fn is_zlib(start: &[u8]) -> bool {
    match start {
        [cmf, flg, ..] => cmf & 0x0f == 8 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0,
        _ => false,
    }
}

/// A decoder fed a coded body a piece at a time, for watching a page too
/// large to read whole (one coding only).
pub(crate) struct Streaming {
    kind: StreamingKind,
    /// The first bytes of a `deflate` body, until they tell zlib from raw.
    undecided: Option<Vec<u8>>,
}

enum StreamingKind {
    Gzip(flate2::write::MultiGzDecoder<Capped>),
    Zlib(flate2::write::ZlibDecoder<Capped>),
    Deflate(flate2::write::DeflateDecoder<Capped>),
    Brotli(Box<brotli::DecompressorWriter<Capped>>),
}

/// The most a decoder may write for one slice of [`FEED`] coded bytes:
/// twice what deflate can expand it to (1032:1). Brotli can expand a few
/// bytes to many megabytes, and the writer would hold all of it at once.
const MOST_PER_FEED: usize = 2 * 1024 * 1024;

/// Where a decoder writes: a buffer that refuses to grow past
/// [`MOST_PER_FEED`], which makes the decoding fail (and the watched page
/// be cut off) instead of holding a bomb's output in memory.
#[derive(Default)]
struct Capped(Vec<u8>);

impl std::io::Write for Capped {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + data.len() > MOST_PER_FEED {
            return Err(std::io::Error::other("decoded slice over the bound"));
        }
        self.0.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl std::fmt::Debug for Streaming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Streaming").finish_non_exhaustive()
    }
}

/// How much coded input is decoded at a time: a bomb's output is bounded
/// by what a slice this size expands to.
const FEED: usize = 1024;

impl Streaming {
    /// A decoder for the `Content-Encoding` value `encoding`: `None` for a
    /// coding it does not know, or for more than one.
    pub(crate) fn new(encoding: &str) -> Option<Self> {
        let mut codings = encoding
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"));
        let coding = codings.next()?.to_ascii_lowercase();
        if codings.next().is_some() {
            return None;
        }
        let (kind, undecided) = match coding.as_str() {
            "gzip" | "x-gzip" => (
                StreamingKind::Gzip(flate2::write::MultiGzDecoder::new(Capped::default())),
                None,
            ),
            "deflate" => (
                StreamingKind::Zlib(flate2::write::ZlibDecoder::new(Capped::default())),
                Some(Vec::new()),
            ),
            "br" => (
                StreamingKind::Brotli(Box::new(brotli::DecompressorWriter::new(
                    Capped::default(),
                    4096,
                ))),
                None,
            ),
            _ => return None,
        };
        Some(Self { kind, undecided })
    }

    /// Decodes `data`, and hands each piece of what comes out to `seen`,
    /// which says whether to stop.
    ///
    /// # Errors
    ///
    /// [`CodingError::Corrupt`] for a body its coding cannot decode.
    pub(crate) fn feed(
        &mut self,
        data: &[u8],
        seen: &mut impl FnMut(&[u8]) -> bool,
    ) -> Result<bool, CodingError> {
        use std::io::Write;
        let data = match self.undecided.as_mut() {
            Some(start) => {
                start.extend_from_slice(data);
                if start.len() < 2 {
                    return Ok(false);
                }
                if !is_zlib(start) {
                    self.kind = StreamingKind::Deflate(flate2::write::DeflateDecoder::new(
                        Capped::default(),
                    ));
                }
                std::mem::take(start)
            }
            None => data.to_vec(),
        };
        self.undecided = None;
        for piece in data.chunks(FEED) {
            let out = match &mut self.kind {
                StreamingKind::Gzip(d) => d
                    .write_all(piece)
                    .and_then(|()| d.flush())
                    .map(|()| &mut d.get_mut().0),
                StreamingKind::Zlib(d) => d
                    .write_all(piece)
                    .and_then(|()| d.flush())
                    .map(|()| &mut d.get_mut().0),
                StreamingKind::Deflate(d) => d
                    .write_all(piece)
                    .and_then(|()| d.flush())
                    .map(|()| &mut d.get_mut().0),
                StreamingKind::Brotli(d) => d
                    .write_all(piece)
                    .and_then(|()| d.flush())
                    .map(|()| &mut d.get_mut().0),
            }
            .map_err(|_| CodingError::Corrupt)?;
            let stop = !out.is_empty() && seen(out);
            out.clear();
            if stop {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Decodes what the decoder still holds at the end of the body.
    ///
    /// # Errors
    ///
    /// [`CodingError::Corrupt`] for a body cut short or corrupt.
    pub(crate) fn finish(
        &mut self,
        seen: &mut impl FnMut(&[u8]) -> bool,
    ) -> Result<bool, CodingError> {
        use std::io::Write;
        if let Some(start) = self.undecided.take()
            && !start.is_empty()
        {
            return Err(CodingError::Corrupt);
        }
        let out = match &mut self.kind {
            StreamingKind::Gzip(d) => d.try_finish().map(|()| &mut d.get_mut().0),
            StreamingKind::Zlib(d) => d.try_finish().map(|()| &mut d.get_mut().0),
            StreamingKind::Deflate(d) => d.try_finish().map(|()| &mut d.get_mut().0),
            StreamingKind::Brotli(d) => d.flush().map(|()| &mut d.get_mut().0),
        }
        .map_err(|_| CodingError::Corrupt)?;
        let stop = !out.is_empty() && seen(out);
        out.clear();
        Ok(stop)
    }
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
    fn streaming_each_coding_a_piece_at_a_time() {
        let page: Vec<u8> = PAGE.iter().copied().cycle().take(50_000).collect();
        for (coding, coded) in [
            ("gzip", gzip(&page)),
            ("deflate", zlib(&page)),
            ("deflate", raw_deflate(&page)),
            ("br", brotli(&page)),
        ] {
            let mut decoder = Streaming::new(coding).unwrap();
            let mut out = Vec::new();
            let mut seen = |d: &[u8]| {
                out.extend_from_slice(d);
                false
            };
            for chunk in coded.chunks(777) {
                assert!(!decoder.feed(chunk, &mut seen).unwrap());
            }
            assert!(!decoder.finish(&mut seen).unwrap());
            assert!(
                out == page,
                "{coding}: {} bytes of {}",
                out.len(),
                page.len()
            );
        }
        assert!(Streaming::new("zstd").is_none());
        assert!(Streaming::new("gzip, br").is_none());
        let mut decoder = Streaming::new("gzip").unwrap();
        assert_eq!(
            decoder.feed(b"not a gzip stream at all", &mut |_: &[u8]| false),
            Err(CodingError::Corrupt)
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

    /// Found by the `coding` fuzz target: a zlib body that decodes past the
    /// bound was tried again as raw deflate, and read as corrupt (so a
    /// large `deflate` page was withheld, where a large gzip page is
    /// watched and handed on).
    #[test]
    fn a_zlib_body_past_the_bound_is_too_large() {
        let page: Vec<u8> = PAGE.iter().copied().cycle().take(10_000).collect();
        assert_eq!(
            decode_content("deflate", &zlib(&page), 1024),
            Err(CodingError::TooLarge)
        );
        assert_eq!(
            decode_content("deflate", &raw_deflate(&page), 1024),
            Err(CodingError::TooLarge)
        );
        assert_eq!(
            decode_content("deflate", &zlib(&page), 10_000).unwrap(),
            page
        );
    }

    /// 54 bytes of brotli that decode to 64 MiB of zeros.
    const BROTLI_BOMB: [u8; 54] = [
        0xcf, 0xff, 0xff, 0x7f, 0xf8, 0x27, 0x00, 0xe2, 0xb1, 0x40, 0x20, 0xf7, 0xfe, 0x9f, 0xff,
        0xff, 0xff, 0xf0, 0x4f, 0x00, 0xc4, 0x61, 0x01, 0x80, 0xee, 0xfd, 0x3f, 0xff, 0xff, 0xff,
        0xe1, 0x9f, 0x00, 0x88, 0xc3, 0x22, 0x00, 0xdd, 0xfb, 0x7f, 0xfe, 0xff, 0xff, 0xc3, 0x3f,
        0x01, 0x10, 0x87, 0x05, 0x00, 0xba, 0xf7, 0xff, 0x03,
    ];

    /// Found by the `coding_streaming` fuzz target: the streaming decoder
    /// handed on (and held) everything one slice of its input decoded to,
    /// 64 MiB here, and 1 GiB for 841 bytes.
    #[test]
    fn a_streaming_bomb_is_refused_with_its_output_bounded() {
        assert_eq!(
            decode_content("br", &BROTLI_BOMB, 1 << 20),
            Err(CodingError::TooLarge)
        );
        let mut decoder = Streaming::new("br").unwrap();
        let mut most = 0;
        let fed = decoder.feed(&BROTLI_BOMB, &mut |d: &[u8]| {
            most = most.max(d.len());
            false
        });
        assert_eq!(fed, Err(CodingError::Corrupt));
        assert!(most <= MOST_PER_FEED, "{most} bytes handed on at once");
        // Deflate's worst case stays within the bound.
        let zeros = gzip(&vec![0; 4 << 20]);
        let mut decoder = Streaming::new("gzip").unwrap();
        let mut total = 0;
        for chunk in zeros.chunks(700) {
            assert!(
                !decoder
                    .feed(chunk, &mut |d: &[u8]| {
                        total += d.len();
                        false
                    })
                    .unwrap()
            );
        }
        assert!(
            !decoder
                .finish(&mut |d: &[u8]| {
                    total += d.len();
                    false
                })
                .unwrap()
        );
        assert_eq!(total, 4 << 20);
    }
}
