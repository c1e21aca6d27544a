//! Entry points for the fuzz targets in `fuzz/` at the repository root,
//! built only with the `fuzzing` feature, and not part of the API: thin
//! wrappers over the crate's parsers of untrusted bytes, which are
//! crate-private. Nothing here checks anything of its own; the targets
//! assert the properties.

use std::borrow::Cow;
use std::ops::Range;

use crate::{coding, form, handle, html, location, loose, path};

/// The base64url text of a handle's shape, for building inputs: the prefix
/// and 22 characters of `fill`.
pub fn handle_like(fill: char) -> String {
    let mut out = String::from(handle::PREFIX);
    out.extend(std::iter::repeat_n(fill, 22));
    out
}

/// Whether `value` has the exact shape of a handle.
pub fn is_handle(value: &str) -> bool {
    handle::is_handle(value)
}

/// How many handles a loose reading of `decoded` holds.
pub fn count_handles(decoded: &[u8]) -> usize {
    handle::count_in(decoded)
}

/// Why a form could not be read (a copy of the crate's own error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormError {
    /// A bad percent-encoding, or bytes that are not UTF-8 once decoded.
    Malformed,
    /// A parameter asked for appeared more than once.
    Repeated(&'static str),
    /// A name with a bracket.
    Bracketed,
    /// Not `name=value` pairs of plain names.
    NotPairs,
}

impl From<form::FormError> for FormError {
    fn from(e: form::FormError) -> Self {
        match e {
            form::FormError::Malformed => Self::Malformed,
            form::FormError::Repeated(name) => Self::Repeated(name),
            form::FormError::Bracketed => Self::Bracketed,
            form::FormError::NotPairs => Self::NotPairs,
        }
    }
}

fn separators(semicolons: bool) -> form::Separators {
    if semicolons {
        form::Separators::AmpersandOrSemicolon
    } else {
        form::Separators::Ampersand
    }
}

/// One pair of a form as it stands, undecoded.
#[derive(Debug, Clone, Copy)]
pub struct RawPair<'a>(form::RawPair<'a>);

impl<'a> RawPair<'a> {
    /// The whole pair.
    pub fn raw(&self) -> &'a str {
        self.0.raw
    }

    /// Its name, undecoded.
    pub fn name(&self) -> &'a str {
        self.0.name
    }

    /// Its value, undecoded.
    pub fn value(&self) -> &'a str {
        self.0.value
    }

    /// Where the pair starts in the input.
    pub fn start(&self) -> usize {
        self.0.start
    }

    /// The name, decoded and folded as a loose server reads it.
    ///
    /// # Errors
    ///
    /// As the crate's form reading.
    pub fn decoded_name(&self) -> Result<Cow<'a, str>, FormError> {
        form::name_of(self.0).map_err(FormError::from)
    }

    /// The value, decoded.
    ///
    /// # Errors
    ///
    /// As the crate's form reading.
    pub fn decoded_value(&self) -> Result<Cow<'a, str>, FormError> {
        form::value_of(self.0).map_err(FormError::from)
    }
}

/// The non-empty pairs of a form.
pub fn form_pairs(input: &str, semicolons: bool) -> Vec<RawPair<'_>> {
    form::raw_pairs(input, separators(semicolons))
        .map(RawPair)
        .collect()
}

/// Decodes one form component.
///
/// # Errors
///
/// As the crate's form reading.
pub fn form_decode(raw: &str) -> Result<Cow<'_, str>, FormError> {
    form::decode(raw).map_err(FormError::from)
}

/// Encodes a value for a query or a form.
pub fn form_encode(value: &str) -> Cow<'_, str> {
    form::encode(value)
}

/// A form with every byte outside visible ASCII percent-encoded, or `None`
/// when it has none.
pub fn form_escape_unsafe(input: &[u8]) -> Option<Vec<u8>> {
    form::escape_unsafe(input)
}

/// The parameters `names` read from a form, and where they stand.
#[derive(Debug)]
pub struct Placed<'a, const N: usize>(form::Placed<'a, N>);

impl<const N: usize> Placed<'_, N> {
    /// The decoded values, in the order of the names asked for.
    pub fn values(&self) -> &[Option<Cow<'_, str>>; N] {
        &self.0.values
    }

    /// `input` (the form read) with parameter `index` set to `value`
    /// under `name`, without reading it again; `None` when only an edit
    /// can write it.
    pub fn set(&self, input: &str, index: usize, name: &str, value: &str) -> Option<String> {
        form::set_placed(input, &self.0.layout, index, name, value)
    }
}

/// Reads the parameters `names` from `input`.
///
/// # Errors
///
/// As the crate's form reading.
pub fn form_collect<'a, const N: usize>(
    input: &'a str,
    names: [&'static str; N],
    semicolons: bool,
    pairs_only: bool,
) -> Result<Placed<'a, N>, FormError> {
    form::collect_placed(input, names, separators(semicolons), pairs_only)
        .map(Placed)
        .map_err(FormError::from)
}

/// Rewrites a form: `set` where it stands (or appended), `remove` dropped.
///
/// # Errors
///
/// As the crate's form reading.
pub fn form_edit(
    input: &str,
    set: Option<(&str, &str)>,
    remove: &[&str],
    semicolons: bool,
) -> Result<String, FormError> {
    form::edit(input, set, remove, separators(semicolons)).map_err(FormError::from)
}

/// The canonical form of a request path.
pub fn normalize_path(raw: &str) -> Cow<'_, str> {
    path::normalize(raw)
}

/// Whether the layer refuses a path as encoded more times than it decodes.
pub fn path_encoded_too_deep(raw: &str) -> bool {
    path::encoded_too_deep(raw)
}

/// Whether a normalised path is a discovery metadata document.
pub fn is_metadata_path(normalized: &str) -> bool {
    path::is_metadata_path(normalized)
}

/// An endpoint path, as the layer keeps it.
#[derive(Debug, Clone)]
pub struct PathPattern(path::PathPattern);

impl PathPattern {
    /// The pattern of an endpoint path; `None` where the layer's settings
    /// refuse it.
    pub fn new(path: &str) -> Option<Self> {
        path::PathPattern::new(path).ok().map(Self)
    }

    /// Whether a normalised path is this endpoint.
    pub fn matches(&self, normalized: &str) -> bool {
        self.0.matches(normalized)
    }
}

/// A handle found beside a code or an error, as a scan read it.
#[derive(Debug, Clone, Copy)]
pub struct HitView<'h> {
    hit: &'h handle::Hit<'h>,
}

impl HitView<'_> {
    /// The handle, decoded.
    pub fn handle(&self) -> &str {
        &self.hit.handle
    }

    /// The code beside it; `None` for an error.
    pub fn code(&self) -> Option<&str> {
        self.hit.code.as_deref()
    }

    /// Where the `state` value is written.
    pub fn value(&self) -> Range<usize> {
        self.hit.value.clone()
    }

    /// What is cut when the client sent no `state`.
    pub fn whole(&self) -> Range<usize> {
        self.hit.whole.clone()
    }

    /// The value is an unquoted attribute.
    pub fn bare(&self) -> bool {
        self.hit.bare
    }
}

/// What a `Location` is, for the handles it may carry.
#[derive(Debug)]
pub enum LocationScan<'a> {
    /// No handle.
    Clean,
    /// A handle and no code or error.
    Carrier,
    /// A delivery read with certainty.
    Delivery(LocationDelivery<'a>),
    /// Withheld: why.
    Uncertain(&'static str),
}

/// A delivery in a `Location`.
#[derive(Debug)]
pub struct LocationDelivery<'a>(location::Delivery<'a>);

impl LocationDelivery<'_> {
    /// The handle and code.
    pub fn hit(&self) -> HitView<'_> {
        HitView { hit: &self.0.hit }
    }

    /// Where the delivery's first parameter stands.
    pub fn params_at(&self) -> usize {
        self.0.params_at
    }

    /// The targets `location` may be read as sending the client to.
    pub fn targets<'l>(&self, location: &'l [u8]) -> Vec<&'l [u8]> {
        location::targets(location, &self.0).collect()
    }

    /// `location` with the client's `state` put back (or removed).
    pub fn restore_state(&self, location: &[u8], state: Option<&str>) -> Vec<u8> {
        location::restore_state(location, &self.0.hit, state)
    }
}

/// Reads a `Location` for a delivery.
pub fn scan_location(location: &[u8]) -> LocationScan<'_> {
    match location::scan(location) {
        location::Scan::Clean => LocationScan::Clean,
        location::Scan::Carrier => LocationScan::Carrier,
        location::Scan::Delivery(d) => LocationScan::Delivery(LocationDelivery(d)),
        location::Scan::Uncertain(why) => LocationScan::Uncertain(why),
    }
}

/// What a page is, for the handles it may carry.
#[derive(Debug)]
pub enum PageScan {
    /// No handle.
    Clean,
    /// A handle and no code or error.
    Carrier,
    /// A `form_post` delivery read with certainty.
    Delivery(PageDelivery),
    /// Withheld: why.
    Uncertain(&'static str),
}

/// A `form_post` delivery.
#[derive(Debug)]
pub struct PageDelivery(html::Delivery);

impl PageDelivery {
    /// The handle and code.
    pub fn hit(&self) -> HitView<'_> {
        HitView { hit: &self.0.hit }
    }

    /// The form's `action`, decoded.
    pub fn action(&self) -> Option<&str> {
        self.0.action.as_deref()
    }

    /// `page` with the client's `state` put back (or the input removed).
    pub fn restore_state(&self, page: &[u8], state: Option<&str>) -> Vec<u8> {
        html::restore_state(page, &self.0.hit, state)
    }
}

/// Reads a page for a `form_post` delivery.
pub fn scan_page(page: &[u8]) -> PageScan {
    match html::scan(page) {
        html::Scan::Clean => PageScan::Clean,
        html::Scan::Carrier => PageScan::Carrier,
        html::Scan::Delivery(d) => PageScan::Delivery(PageDelivery(d)),
        html::Scan::Uncertain(why) => PageScan::Uncertain(why),
    }
}

/// How many times a page names a control `name`.
pub fn name_tokens(decoded: &[u8], name: &[u8]) -> usize {
    html::name_tokens(decoded, name)
}

/// A response read the way the loosest client reads it.
pub fn loose_decode(bytes: &[u8], html: bool) -> Cow<'_, [u8]> {
    loose::decode(bytes, html)
}

/// How many times a loose reading gives parameter `name` a value.
pub fn count_params(decoded: &[u8], name: &[u8]) -> usize {
    loose::count_params(decoded, name)
}

/// Why a body could not be decoded (a copy of the crate's own error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodingError {
    /// An unknown coding.
    Unsupported,
    /// More decoded bytes than the bound.
    TooLarge,
    /// Not valid for its coding.
    Corrupt,
}

impl From<coding::CodingError> for CodingError {
    fn from(e: coding::CodingError) -> Self {
        match e {
            coding::CodingError::Unsupported => Self::Unsupported,
            coding::CodingError::TooLarge => Self::TooLarge,
            coding::CodingError::Corrupt => Self::Corrupt,
        }
    }
}

/// Decodes a body by its `Content-Encoding` into at most `limit` bytes.
///
/// # Errors
///
/// As the crate's decoding.
pub fn decode_content(encoding: &str, data: &[u8], limit: usize) -> Result<Vec<u8>, CodingError> {
    coding::decode_content(encoding, data, limit).map_err(CodingError::from)
}

/// A decoder fed a coded body a piece at a time.
#[derive(Debug)]
pub struct Streaming(coding::Streaming);

impl Streaming {
    /// A decoder for one coding; `None` for none it knows.
    pub fn new(encoding: &str) -> Option<Self> {
        coding::Streaming::new(encoding).map(Self)
    }

    /// Decodes `data`, handing what comes out to `seen` until it says stop.
    ///
    /// # Errors
    ///
    /// As the crate's decoding.
    pub fn feed(
        &mut self,
        data: &[u8],
        seen: &mut impl FnMut(&[u8]) -> bool,
    ) -> Result<bool, CodingError> {
        self.0.feed(data, seen).map_err(CodingError::from)
    }

    /// Decodes what is left at the end of the body.
    ///
    /// # Errors
    ///
    /// As the crate's decoding.
    pub fn finish(&mut self, seen: &mut impl FnMut(&[u8]) -> bool) -> Result<bool, CodingError> {
        self.0.finish(seen).map_err(CodingError::from)
    }
}

/// The Redis store's record codec.
#[cfg(feature = "redis-store")]
pub mod redis {
    pub use crate::store::redis_fuzzing::{
        decode_binding, decode_pending, encode_binding, encode_pending, redemption_bulk,
        redemption_int,
    };
}
