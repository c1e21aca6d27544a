//! The request as the upstream gets it: its target under the upstream's
//! base path, hop-by-hop fields removed, the proxy's `Host` and
//! `X-Forwarded-*` fields, and whether its connection may serve another.

use bytes::Bytes;
use http::Request;
use http::Uri;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use tower_pkce::{Endpoint, RequestBody};

use super::{ClientBody, Forwarder};
use crate::h1::client::{HeaderOverrides, Reuse};

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded. `Trailer` is
/// end to end: it announces the trailers that follow. A `static`, so that
/// it is built once and not at every use.
pub(super) static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::UPGRADE,
];

pub(super) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(super) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(super) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Whether `name` is in [`HOP_BY_HOP`] or is `Transfer-Encoding`: a match
/// on the (lower-case) name, cheaper than comparing with each in turn.
pub(super) fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "upgrade"
            | "transfer-encoding"
    )
}

/// The fields the PKCE checks or the message's framing depend on: a
/// `Connection` header that names one is refused (see
/// [`connection_names_checked_field`]).
pub(super) const CHECKED_FIELDS: [&[u8]; 6] = [
    b"authorization",
    b"host",
    b"content-type",
    b"content-length",
    b"transfer-encoding",
    b"cookie",
];

/// The names a `Connection` field lists (RFC 9110 §7.6.1), trimmed: over
/// every `Connection` field, since the list may be split across several.
pub(super) fn connection_names(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|name| !name.is_empty())
}

/// Whether a `Connection` field names a field that the checks or the
/// framing depend on (in any letter case). Removing such a field, as hop
/// by hop, would forward a request other than the one checked (I5), and
/// no honest client asks for it: the request is refused instead.
pub(crate) fn connection_names_checked_field(headers: &HeaderMap) -> bool {
    connection_names(headers).any(|name| {
        CHECKED_FIELDS
            .iter()
            .any(|checked| name.eq_ignore_ascii_case(checked))
    })
}

/// Fields a server that reads `_` as `-` in names (CGI's `HTTP_*`
/// variables, PHP, some Rack servers) would take a `Content_Length` or an
/// `X_Forwarded_For` for: the framing, the hop-by-hop fields, what the
/// checks read and what the proxy sets.
pub(super) const UNDERSCORE_ALIASED: [&[u8]; 18] = [
    b"content-length",
    b"transfer-encoding",
    b"host",
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"upgrade",
    b"expect",
    b"authorization",
    b"proxy-authorization",
    b"cookie",
    b"content-type",
    b"content-encoding",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
];

/// Whether a field's name, with `_` read as `-`, is one of
/// [`UNDERSCORE_ALIASED`]: the request is refused, as nginx drops such
/// names by default, since the upstream may read it as that field while the
/// proxy read it as another.
pub(crate) fn underscore_aliases_a_field(headers: &HeaderMap) -> bool {
    headers.keys().any(|name| {
        let name = name.as_str().as_bytes();
        name.contains(&b'_')
            && UNDERSCORE_ALIASED.iter().any(|aliased| {
                aliased.len() == name.len()
                    && aliased
                        .iter()
                        .zip(name)
                        .all(|(&a, &n)| a == n || (a == b'-' && n == b'_'))
            })
    })
}

/// Removes hop-by-hop headers, including those named in `Connection`, and
/// keeps `TE: trailers`.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names, then nothing to do.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    // Only the names of fields present are copied out: the usual
    // `Connection: keep-alive` or `close` costs no allocation.
    let named: Vec<HeaderName> = connection_names(headers)
        .filter(|name| std::str::from_utf8(name).is_ok_and(|name| headers.contains_key(name)))
        .filter_map(|name| HeaderName::from_bytes(name).ok())
        .collect();
    // `TE: trailers` says the client takes trailers; it is passed on so that
    // the upstream sends them.
    let trailers_ok = headers
        .get(header::TE)
        .is_some_and(|te| te.as_bytes().trim_ascii().eq_ignore_ascii_case(b"trailers"));
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    if trailers_ok {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    // A transfer coding overrides any length (RFC 9112 §6.3); the message
    // is framed again on the other side, by its size or as chunked.
    if headers.remove(header::TRANSFER_ENCODING).is_some() {
        headers.remove(header::CONTENT_LENGTH);
    }
}

/// Whether the upstream connection that `body`'s request goes on may serve
/// another request after it (I1), for both transports; when not, the
/// upstream is told `Connection: close` and the connection is closed after
/// the response.
///
/// A legacy upstream may answer without reading a body (on a path that
/// takes none, or after an early error). What it left unread is then read
/// as the start of the next request on the connection, and a body is the
/// client's to write: it can hold a whole request, one the proxy never
/// checked (a `POST /token` with a stolen code). So a request with a body
/// retires its connection, except a token request whose body the PKCE
/// layer read whole and checked and whose every byte is visible ASCII
/// (0x21..=0x7E, which the layer makes of every body it checked): that one
/// keeps it only after a 2xx answer, since an upstream that redeemed or
/// refreshed read the whole request, while one that refused early may have
/// left the body to spoil the next request's first line. An answer to HEAD
/// retires its connection too: a naive server writes the GET body after it,
/// late, where the next request's answer would be read.
pub(crate) fn reusable_after<B>(endpoint: Endpoint, req: &Request<RequestBody<B>>) -> Reuse
where
    B: http_body::Body<Data = Bytes>,
{
    use http_body::Body as _;
    if req.method() == http::Method::HEAD {
        return Reuse::Never;
    }
    let body = req.body();
    if body.is_end_stream() || body.size_hint().exact() == Some(0) {
        return Reuse::Clean;
    }
    let checked = endpoint == Endpoint::Token
        && body
            .as_buffered()
            .is_some_and(|data| data.iter().all(|b| matches!(b, 0x21..=0x7e)));
    if checked {
        Reuse::Succeeded
    } else {
        Reuse::Never
    }
}

impl Forwarder {
    /// The request target as the upstream takes it: origin form (path and
    /// query), under the upstream's base path.
    pub(super) fn upstream_uri(&self, uri: &Uri) -> Option<Uri> {
        let upstream = &self.shared.upstream;
        if upstream.base_path.is_empty()
            && let Some(pq) = uri.path_and_query()
        {
            return Some(Uri::from(pq.clone()));
        }
        let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let mut pq = String::with_capacity(upstream.base_path.len() + path_and_query.len());
        pq.push_str(&upstream.base_path);
        pq.push_str(path_and_query);
        Uri::try_from(pq).ok()
    }

    /// The proxy's own header fields for `req`: `Host` when it has none,
    /// and the `X-Forwarded-*` fields, which replace the client's unless
    /// the client is trusted.
    pub(super) fn forwarded_headers(
        &self,
        req: &Request<RequestBody<ClientBody>>,
    ) -> HeaderOverrides {
        let headers = req.headers();
        let mut overrides = HeaderOverrides::default();
        let host = headers.get(header::HOST).cloned().or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        if !headers.contains_key(header::HOST) {
            // HTTP/2 carries the host in :authority; HTTP/1.1 upstreams need Host.
            if let Some(host) = host.as_ref().or(self.shared.upstream_host.as_ref()) {
                overrides.set(header::HOST, Some(host.clone()));
            }
        }
        let trusted = self.conn.trusted;
        let client = self.conn.client_ip.as_ref();
        let forwarded_for = match (client, trusted, headers.get(&X_FORWARDED_FOR)) {
            (Some(ip), true, Some(prior)) => {
                let mut joined = Vec::with_capacity(prior.len() + 2 + ip.len());
                joined.extend_from_slice(prior.as_bytes());
                joined.extend_from_slice(b", ");
                joined.extend_from_slice(ip.as_bytes());
                HeaderValue::from_bytes(&joined).ok()
            }
            (Some(ip), _, _) => Some(ip.clone()),
            (None, _, _) => None,
        };
        if forwarded_for.is_some() || !trusted {
            overrides.set(X_FORWARDED_FOR, forwarded_for);
        }
        if !(trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
            overrides.set(X_FORWARDED_PROTO, Some(self.conn.proto.clone()));
        }
        if !(trusted && headers.contains_key(&X_FORWARDED_HOST)) {
            overrides.set(X_FORWARDED_HOST, host);
        }
        overrides
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn underscore_spellings_of_the_fields_that_matter_are_found() {
        for (name, aliased) in [
            ("content_length", true),
            ("x_forwarded_for", true),
            ("transfer_encoding", true),
            ("x_custom_field", false),
            ("content-length", false),
            ("contentlength", false),
            ("content_length_x", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("1"));
            assert_eq!(underscore_aliases_a_field(&h), aliased, "{name}");
        }
    }

    #[test]
    fn the_quick_check_knows_every_hop_by_hop_header() {
        for name in HOP_BY_HOP.iter().chain([&header::TRANSFER_ENCODING]) {
            assert!(is_hop_by_hop(name), "{name}");
        }
        assert!(!is_hop_by_hop(&header::TRAILER));
        assert!(!is_hop_by_hop(&header::HOST));
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-custom"),
        );
        h.insert("x-custom", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers, deflate"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("100"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn hop_by_hop_names_are_read_across_fields_and_cases() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        h.append(
            header::CONNECTION,
            HeaderValue::from_static(" X-One ,,x-two"),
        );
        h.insert("x-one", HeaderValue::from_static("1"));
        h.insert("x-two", HeaderValue::from_static("2"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::HOST, HeaderValue::from_static("h"));
        assert!(!connection_names_checked_field(&h));
        remove_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["host", "te"], "{h:?}");
        assert_eq!(h[header::TE], "trailers");
    }

    #[test]
    fn a_connection_header_naming_a_checked_field_is_found() {
        for (values, found) in [
            (&["authorization"][..], true),
            (&["keep-alive, HOST"], true),
            (&["x-a", " Content-Type "], true),
            (&["content-length"], true),
            (&["close,transfer-encoding"], true),
            (&["Cookie"], true),
            (&["keep-alive", "close, x-foo"], false),
            (&["hosts, authorization-x"], false),
            (&[""], false),
        ] {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::CONNECTION, HeaderValue::from_static(v));
            }
            assert_eq!(connection_names_checked_field(&h), found, "{values:?}");
        }
        assert!(!connection_names_checked_field(&HeaderMap::new()));
    }
}
