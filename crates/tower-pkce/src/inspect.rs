//! Inspecting the upstream's responses: finding a code that leaves with a
//! transaction handle, binding it, putting the client's state back, and
//! writing the pending record of a transaction that goes on.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, Uri};
use http_body::{Body, Frame};

use crate::bind::Minted;
use crate::body::{Collected, ResponseBody, Watch, collect_bounded, frames_of};
use crate::delivery::reaches_client;
use crate::error::Rejection;
use crate::request::{set_content_length, wants_json};
use crate::shared::Shared;
use crate::store::{PendingAuthorization, Store};
use crate::{coding, handle, html, location};

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Looks at every upstream response for a code that leaves with a handle.
pub(crate) trait Inspect<B: Body>: Send + Sync {
    fn needs_inspection(&self, response: &Response<B>) -> bool;
    fn inspect(
        self: Arc<Self>,
        response: Response<B>,
        asked: Asked,
    ) -> BoxFuture<Response<ResponseBody<B>>>;
}

impl<St, B> Inspect<B> for Shared<St>
where
    St: Store,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Send + 'static,
{
    fn needs_inspection(&self, response: &Response<B>) -> bool {
        needs_inspection(response)
    }

    fn inspect(
        self: Arc<Self>,
        response: Response<B>,
        asked: Asked,
    ) -> BoxFuture<Response<ResponseBody<B>>> {
        Box::pin(async move { self.inspect_response(response, asked, None).await })
    }
}

/// Whether a response may hand a code out: a `Location` that may hold a
/// handle, a `Refresh`, or a page. Every response passes here, whatever
/// its path: a path the upstream routes otherwise than the layer reads it
/// could answer with a delivery.
pub(crate) fn needs_inspection<B: Body>(response: &Response<B>) -> bool {
    let headers = response.headers();
    headers
        .get(header::LOCATION)
        .is_some_and(|l| handle::may_contain(l.as_bytes()))
        || headers.contains_key(REFRESH)
        || may_be_html(headers, response.body())
}

impl<St: Store> Shared<St> {
    /// The upstream's answer to any request, with the code it hands out
    /// bound and the client's state put back; for an authorization request
    /// whose transaction goes on (`minted`, not completed by this answer),
    /// its pending record written. What might hand a code out beside a
    /// handle and cannot be read with certainty is withheld (invariant I2).
    /// The response is taken apart before the `async` block, as
    /// [`authorize`] does with the request.
    pub(crate) fn inspect_response<'a, B>(
        &'a self,
        response: Response<B>,
        asked: Asked,
        minted: Option<Minted>,
    ) -> impl Future<Output = Response<ResponseBody<B>>> + 'a
    where
        B: Body<Data = Bytes> + Send + 'static,
    {
        let (parts, body) = response.into_parts();
        async move {
            let mut minted = minted;
            let inspected = self.inspect_parts(parts, body, &asked, &mut minted).await;
            let response = match inspected {
                Ok(response) => response,
                Err(rejection) => return page(rejection, asked.wants_json),
            };
            let Some(own) = minted.take() else {
                return response;
            };
            match self.record_pending(own).await {
                Ok(()) => response,
                Err(rejection) => page(rejection, asked.wants_json),
            }
        }
    }

    async fn inspect_parts<B>(
        &self,
        mut parts: http::response::Parts,
        body: B,
        asked: &Asked,
        minted: &mut Option<Minted>,
    ) -> Result<Response<ResponseBody<B>>, Rejection>
    where
        B: Body<Data = Bytes> + Send + 'static,
    {
        if parts
            .headers
            .get_all(REFRESH)
            .iter()
            .any(|r| hands_out_code(r.as_bytes()))
        {
            return Err(withheld(Rejection::UncertainDelivery, "a Refresh header"));
        }
        let mut locations = parts.headers.get_all(header::LOCATION).iter();
        if locations.next().is_some()
            && locations.next().is_some()
            && parts
                .headers
                .get_all(header::LOCATION)
                .iter()
                .any(|l| handle::may_contain(l.as_bytes()))
        {
            return Err(withheld(Rejection::UncertainDelivery, "several Locations"));
        }
        if let Some(location) = parts.headers.get(header::LOCATION).cloned() {
            let bytes = location.as_bytes();
            match location::scan(bytes) {
                // On the answer to the transaction's own request, a code
                // without its handle (the state dropped or cut short) would
                // leave unbound.
                location::Scan::Clean if minted.is_some() && shows_code(bytes, false) => {
                    return Err(withheld(
                        Rejection::UncertainDelivery,
                        "a code without the transaction's handle",
                    ));
                }
                location::Scan::Clean | location::Scan::Carrier => {}
                location::Scan::Uncertain(why) => {
                    return Err(withheld(Rejection::UncertainDelivery, why));
                }
                location::Scan::Delivery(delivery) => {
                    let hit = &delivery.hit;
                    let to_client = |p: &PendingAuthorization| {
                        reaches_client(
                            p.redirect_uri,
                            location::targets(bytes, &delivery),
                            asked.host.as_ref(),
                        )
                    };
                    let state = self
                        .complete_transaction(&hit.handle, hit.code.as_deref(), to_client, minted)
                        .await?;
                    let restored = location::restore_state(bytes, hit, state.as_deref());
                    let value = HeaderValue::from_bytes(&restored)
                        .map_err(|_| withheld(Rejection::UncertainDelivery, "unwritable"))?;
                    parts.headers.insert(header::LOCATION, value);
                    if parts.status.is_redirection() {
                        // A redirect's body is a hint for clients that do not
                        // follow it, and it holds the code and the handle as
                        // they were: it goes.
                        parts.headers.remove(header::CONTENT_ENCODING);
                        parts.headers.remove(header::ETAG);
                        set_content_length(&mut parts.headers, 0);
                        return Ok(Response::from_parts(
                            parts,
                            ResponseBody::full(Bytes::new()),
                        ));
                    }
                }
            }
        }
        if !may_be_html(&parts.headers, &body) {
            return Ok(Response::from_parts(parts, ResponseBody::inner(body)));
        }
        // Boxed: a page's reading holds much across its awaits, and every
        // request's future would otherwise be that large.
        Box::pin(self.inspect_page(parts, body, asked, minted)).await
    }

    /// [`inspect_parts`](Self::inspect_parts) for a page a browser may
    /// render.
    async fn inspect_page<B>(
        &self,
        mut parts: http::response::Parts,
        body: B,
        asked: &Asked,
        minted: &mut Option<Minted>,
    ) -> Result<Response<ResponseBody<B>>, Rejection>
    where
        B: Body<Data = Bytes> + Send + 'static,
    {
        let limit = self.config.html_scan_limit;
        // Every field: servers and browsers differ on which of several they read.
        let encoding: Vec<String> = parts
            .headers
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
            .filter(|v| !v.is_empty() && !v.eq_ignore_ascii_case("identity"))
            .collect();
        let encoding = (!encoding.is_empty()).then(|| encoding.join(", "));
        let decoder = || match encoding.as_deref() {
            None => Ok(None),
            Some(coding) => coding::Streaming::new(coding).map(Some).ok_or_else(|| {
                withheld(
                    Rejection::UncertainDelivery,
                    "a page in a coding that cannot be read",
                )
            }),
        };
        let (data, trailers) = match collect_bounded(body, limit).await {
            Collected::Complete { data, trailers } => (data, trailers),
            Collected::Over { frames, rest } => {
                let Some(watch) = watched(&frames, decoder()?) else {
                    return Err(withheld(
                        Rejection::UncertainDelivery,
                        "a page larger than the scan bound shows a handle or a code",
                    ));
                };
                return Ok(Response::from_parts(
                    parts,
                    ResponseBody::watched(frames, rest, watch),
                ));
            }
            Collected::Failed { frames, error } => {
                if watched(&frames, decoder()?).is_none() {
                    return Err(withheld(
                        Rejection::UncertainDelivery,
                        "a page that failed half-way shows a handle or a code",
                    ));
                }
                return Ok(Response::from_parts(
                    parts,
                    ResponseBody::replay(frames, Some(error), None),
                ));
            }
        };
        let decoded: Cow<'_, [u8]> = match &encoding {
            None => Cow::Borrowed(&data),
            Some(enc) => match coding::decode_content(enc, &data, limit) {
                Ok(decoded) => Cow::Owned(decoded),
                Err(coding::CodingError::TooLarge) => {
                    // Decoded past the bound: watched as a page that large
                    // would be, and handed on as it came.
                    let mut watch = Watch::new(decoder()?);
                    if watch.sees(&data) || watch.sees_at_end() {
                        return Err(withheld(
                            Rejection::UncertainDelivery,
                            "a page larger than the scan bound shows a handle or a code",
                        ));
                    }
                    return Ok(Response::from_parts(
                        parts,
                        ResponseBody::replay(frames_of(data, trailers), None, None),
                    ));
                }
                Err(e) => {
                    // A browser may render what does not decode here (a
                    // gzip stream with bytes after it, a wrong checksum).
                    tracing::debug!(error = %e, "html response does not decode");
                    return Err(withheld(
                        Rejection::UncertainDelivery,
                        "a page whose coding does not decode",
                    ));
                }
            },
        };
        if let Some(utf8) = utf16_as_utf8(&parts.headers, &decoded) {
            // Read, but not rewritten: a handle in it is withheld.
            if !matches!(html::scan(utf8.as_bytes()), html::Scan::Clean) {
                return Err(withheld(Rejection::UncertainDelivery, "a UTF-16 page"));
            }
            return Ok(Response::from_parts(
                parts,
                ResponseBody::replay(frames_of(data, trailers), None, None),
            ));
        }
        let delivery = match html::scan(&decoded) {
            html::Scan::Clean if minted.is_some() && shows_code(&decoded, true) => {
                return Err(withheld(
                    Rejection::UncertainDelivery,
                    "a code without the transaction's handle",
                ));
            }
            html::Scan::Clean | html::Scan::Carrier => {
                return Ok(Response::from_parts(
                    parts,
                    ResponseBody::replay(frames_of(data, trailers), None, None),
                ));
            }
            html::Scan::Uncertain(why) => {
                return Err(withheld(Rejection::UncertainDelivery, why));
            }
            html::Scan::Delivery(delivery) => delivery,
        };
        let hit = &delivery.hit;
        let action = delivery.action.as_deref().map(str::as_bytes);
        let to_client = |p: &PendingAuthorization| {
            reaches_client(p.redirect_uri, action.into_iter(), asked.host.as_ref())
        };
        let state = self
            .complete_transaction(&hit.handle, hit.code.as_deref(), to_client, minted)
            .await?;
        let page = html::restore_state(&decoded, hit, state.as_deref());
        parts.headers.remove(header::CONTENT_ENCODING);
        parts.headers.remove(header::ETAG);
        set_content_length(&mut parts.headers, page.len());
        Ok(Response::from_parts(
            parts,
            ResponseBody::full(Bytes::from(page)),
        ))
    }
}

/// A watch that has seen `frames`, the start of a page, or `None` when
/// they show a handle or a code.
fn watched(
    frames: &std::collections::VecDeque<Frame<Bytes>>,
    decoder: Option<coding::Streaming>,
) -> Option<Watch> {
    let mut watch = Watch::new(decoder);
    let seen = frames
        .iter()
        .filter_map(Frame::data_ref)
        .any(|d| watch.sees(d));
    (!seen).then_some(watch)
}

/// Whether `bytes` (a `Location`, or a page when `html`) hands a code out,
/// read as the loosest client would.
fn shows_code(bytes: &[u8], html: bool) -> bool {
    let decoded = crate::loose::decode(bytes, html);
    crate::loose::count_params(&decoded, b"code") > 0
        || html && crate::html::name_tokens(&decoded, b"code") > 0
}

/// A page in UTF-16 (by its byte order mark, which a browser heeds over
/// any charset, or by its charset), in UTF-8 for reading; `None` for any
/// other page.
fn utf16_as_utf8(headers: &HeaderMap, page: &[u8]) -> Option<String> {
    let charset_utf16 = headers.get(header::CONTENT_TYPE).is_some_and(|ct| {
        let ct = ct.as_bytes().to_ascii_lowercase();
        [&b"utf-16"[..], b"ucs-2"]
            .iter()
            .any(|c| ct.windows(c.len()).any(|w| w == *c))
    });
    let big_endian = match page {
        [0xfe, 0xff, ..] => true,
        [0xff, 0xfe, ..] => false,
        [0xef, 0xbb, 0xbf, ..] => return None,
        _ if charset_utf16 => headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|ct| ct.as_bytes().to_ascii_lowercase().ends_with(b"be")),
        _ => return None,
    };
    let units = page.chunks_exact(2).map(|pair| match pair {
        [a, b] if big_endian => u16::from_be_bytes([*a, *b]),
        [a, b] => u16::from_le_bytes([*a, *b]),
        _ => 0,
    });
    Some(
        char::decode_utf16(units)
            .map(|c| c.unwrap_or('\u{fffd}'))
            .collect(),
    )
}

/// What the request that a response answers tells its inspection.
#[derive(Debug, Clone, Default)]
pub(crate) struct Asked {
    /// Refusals are JSON.
    pub(crate) wants_json: bool,
    /// The authority the client addressed: a delivery to the client never
    /// goes back to it (see [`reaches_client`]).
    host: Option<HeaderValue>,
}

impl Asked {
    pub(crate) fn of(headers: &HeaderMap, uri: &Uri) -> Self {
        Self {
            wants_json: wants_json(headers),
            host: headers.get(header::HOST).cloned().or_else(|| {
                uri.authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            }),
        }
    }
}

const REFRESH: header::HeaderName = header::HeaderName::from_static("refresh");

/// Whether a header value (a `Refresh`) hands a code out beside a handle.
fn hands_out_code(value: &[u8]) -> bool {
    let decoded = crate::loose::decode(value, false);
    crate::handle::count_in(&decoded) > 0 && crate::loose::count_params(&decoded, b"code") > 0
}

fn withheld(rejection: Rejection, why: &str) -> Rejection {
    tracing::warn!(
        reason = rejection.as_str(),
        why,
        "upstream response may hand out a code unbound; withheld"
    );
    rejection
}

/// Whether a response may be a page a browser renders as HTML: anything
/// but one `Content-Type` of a kind a browser never renders so (several
/// fields or a list: a browser takes the last it can read), or no type and
/// a body a browser would sniff.
fn may_be_html<B: Body>(headers: &HeaderMap, body: &B) -> bool {
    let mut types = headers.get_all(header::CONTENT_TYPE).iter();
    let Some(only) = types.next() else {
        return !body.is_end_stream() && body.size_hint().exact() != Some(0);
    };
    types.next().is_some() || !never_rendered(only.as_bytes())
}

/// Whether a `Content-Type` value is of a kind a browser never renders as
/// a page (and never sniffs into one).
fn never_rendered(value: &[u8]) -> bool {
    const NEVER: [&[u8]; 14] = [
        b"application/json",
        b"text/plain",
        b"text/css",
        b"text/csv",
        b"text/javascript",
        b"application/javascript",
        b"application/ecmascript",
        b"application/octet-stream",
        b"application/pdf",
        b"application/zip",
        b"application/gzip",
        b"application/wasm",
        b"application/jwt",
        b"application/x-www-form-urlencoded",
    ];
    if value.contains(&b',') {
        return false;
    }
    let essence = value
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let starts = |prefix: &[u8]| {
        essence
            .get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
    };
    let ends = |suffix: &[u8]| {
        essence
            .len()
            .checked_sub(suffix.len())
            .and_then(|i| essence.get(i..))
            .is_some_and(|s| s.eq_ignore_ascii_case(suffix))
    };
    NEVER.iter().any(|n| essence.eq_ignore_ascii_case(n))
        || ends(b"+json")
        || (starts(b"image/") && !essence.eq_ignore_ascii_case(b"image/svg+xml"))
        || starts(b"audio/")
        || starts(b"video/")
        || starts(b"font/")
}

pub(crate) fn page<B: Body>(rejection: Rejection, wants_json: bool) -> Response<ResponseBody<B>> {
    rejection.page_response(wants_json).map(ResponseBody::full)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_types_a_browser_never_renders_as_a_page() {
        for never in [
            &b"application/json"[..],
            b"Application/JSON; charset=utf-8",
            b"text/plain",
            b"application/problem+json",
            b"image/png",
            b"font/woff2",
        ] {
            assert!(never_rendered(never), "{}", String::from_utf8_lossy(never));
        }
        for may in [
            &b"text/html"[..],
            b"application/xhtml+xml",
            b"text/xml",
            b"image/svg+xml",
            b"text/plain, text/html",
            b"html",
            b"unknown/unknown",
            b"*/*",
            b"",
        ] {
            assert!(!never_rendered(may), "{}", String::from_utf8_lossy(may));
        }
    }
}
