//! What the proxy checks in a request before the PKCE layer sees it:
//! refusals (`CONNECT`, bodies where the method has none, heads hyper
//! parsed), hop-by-hop fields removed, and the client behind trusted proxies.

use std::net::IpAddr;

use http::{HeaderMap, Method, Request, header};
use tower_pkce::Rejection;

use crate::forward::{self, ClientBody};
use crate::h1;
use crate::trusted_proxies::TrustedProxies;

/// A request the screen refuses: its one-line reason, and the layer's name
/// for it when it has one (for the metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Refused(pub(super) &'static str, pub(super) Option<Rejection>);

/// Whether a request announces a body: a length above zero, or (with no
/// length) a body not known to be at its end. An HTTP/2 request whose
/// headers did not end the stream counts, even if an empty DATA frame
/// would have ended it.
pub(super) fn announces_body(headers: &HeaderMap, body: &ClientBody) -> bool {
    use http_body::Body as _;
    let mut zero = false;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        if h1::body::parse_length(value.as_bytes()) != Some(0) {
            return true;
        }
        zero = true;
    }
    !zero && !body.is_end_stream()
}

/// Refuses what must reach neither the PKCE layer nor the upstream, then
/// removes the hop-by-hop fields, before the layer sees the request, so
/// that its checks apply to exactly what is forwarded (I5). HTTP/1.1
/// requests that `http1` parsed were screened for `CONNECT` and bodies
/// already, before their body was read; those that hyper parsed (HTTP/2,
/// and HTTP/1.1 over TLS) are here.
pub(super) fn screen(req: &mut Request<ClientBody>) -> Result<(), Refused> {
    let method = req.method();
    if method == Method::CONNECT {
        return Err(Refused(h1::server::CONNECT_REFUSED, None));
    }
    if req.version() == http::Version::HTTP_2 || req.body().is_from_hyper() {
        screen_hyper(req).map_err(|why| Refused(why, None))?;
    }
    if let Some(why) = h1::server::body_refused(method)
        && announces_body(req.headers(), req.body())
    {
        return Err(Refused(why, None));
    }
    if forward::underscore_aliases_a_field(req.headers()) {
        return Err(Refused(
            "a header name with '_' that a server may read as Content-Length, Host, Authorization or another field the proxy sets or checks",
            None,
        ));
    }
    if forward::connection_names_checked_field(req.headers()) {
        return Err(Refused(
            "the Connection header must not name Authorization, Host, Content-Type, Content-Length, Transfer-Encoding or Cookie",
            Some(Rejection::ConnectionNamesCheckedField),
        ));
    }
    forward::remove_hop_by_hop(req.headers_mut());
    Ok(())
}

/// What `http1` checks in an HTTP/1.1 head, for a request whose head
/// hyper parsed: the path, the host (`:authority` or an absolute target,
/// and a `Host` field, which must name the same one; RFC 9113 §8.3.1), and
/// `Content-Length`; in HTTP/1.1, exactly one `Host` field (RFC 9112 §3.2)
/// and `chunked` as the only transfer coding (hyper takes any coding list
/// that ends with it, and the proxy decodes none of the others).
///
/// hyper itself refuses conflicting lengths, `Transfer-Encoding` in
/// HTTP/1.0 and a coding list not ending in `chunked`. A request with both
/// `Transfer-Encoding` and `Content-Length`, which `http1` refuses, hyper
/// reads by its coding and closes the connection after; it removes the
/// length before the request comes here.
pub(super) fn screen_hyper(req: &Request<ClientBody>) -> Result<(), &'static str> {
    crate::target::check_path(req.uri().path().as_bytes())?;
    let h2 = req.version() == http::Version::HTTP_2;
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(if h2 {
            "a request needs at most one Host header"
        } else {
            "a request needs exactly one Host header"
        });
    }
    if host.is_none() && req.version() == http::Version::HTTP_11 {
        return Err("a request needs exactly one Host header");
    }
    let authority = req.uri().authority().map(|a| a.as_str().as_bytes());
    for named in [authority, host.map(http::HeaderValue::as_bytes)]
        .into_iter()
        .flatten()
    {
        if !crate::target::check_host(named) {
            return Err(crate::target::INVALID_HOST);
        }
    }
    if let (Some(authority), Some(host)) = (authority, host)
        && !authority.eq_ignore_ascii_case(host.as_bytes())
    {
        return Err(if h2 {
            "the Host header and :authority name different hosts"
        } else {
            "the Host header and the request target name different hosts"
        });
    }
    let mut codings = req.headers().get_all(header::TRANSFER_ENCODING).iter();
    if let Some(coding) = codings.next()
        && (codings.next().is_some()
            || !coding
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked"))
    {
        return Err("only the chunked transfer coding is supported");
    }
    if req
        .headers()
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .any(|value| h1::body::parse_length(value.as_bytes()).is_none())
    {
        return Err("invalid Content-Length");
    }
    Ok(())
}

/// The client behind a trusted proxy: the rightmost address of
/// `X-Forwarded-For` that is not itself a trusted proxy (each proxy appends
/// the address it saw, so what lies left of the first untrusted one was
/// written by the client and proves nothing). Past an entry that is not an
/// address, the last trusted hop reached stands for the client.
pub(super) fn forwarded_client(
    headers: &HeaderMap,
    peer: IpAddr,
    trusted: &TrustedProxies,
) -> IpAddr {
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .rev()
        .flat_map(|value| value.as_bytes().rsplit(|&b| b == b','));
    let mut client = peer;
    for hop in hops {
        let Some(ip) = std::str::from_utf8(hop)
            .ok()
            .and_then(|hop| hop.trim().parse::<IpAddr>().ok())
        else {
            break;
        };
        client = ip.to_canonical();
        if !trusted.contains(client) {
            break;
        }
    }
    client
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn the_client_is_the_rightmost_untrusted_forwarded_address() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let peer: IpAddr = [10, 0, 0, 1].into();
        let client = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append("x-forwarded-for", v.parse().unwrap());
            }
            forwarded_client(&headers, peer, &trusted).to_string()
        };
        assert_eq!(client(&[]), "10.0.0.1");
        assert_eq!(
            client(&["192.0.2.9, 198.51.100.7, 10.1.1.1"]),
            "198.51.100.7"
        );
        assert_eq!(
            client(&["192.0.2.9", "198.51.100.7 , 10.1.1.1"]),
            "198.51.100.7"
        );
        assert_eq!(client(&["10.2.2.2, 10.1.1.1"]), "10.2.2.2");
        assert_eq!(client(&["::ffff:192.0.2.1"]), "192.0.2.1");
        // Garbage stops the walk at the last trusted hop.
        assert_eq!(client(&["192.0.2.9, junk, 10.1.1.1"]), "10.1.1.1");
        assert_eq!(client(&["junk"]), "10.0.0.1");
    }

    fn request(method: Method, fields: &[(&str, &str)], body: ClientBody) -> Request<ClientBody> {
        let mut req = Request::new(body);
        *req.method_mut() = method;
        for (name, value) in fields {
            req.headers_mut().append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_str(value).unwrap(),
            );
        }
        req
    }

    #[test]
    fn connect_and_bodies_where_the_method_has_none_are_refused() {
        let mut connect = request(Method::CONNECT, &[], ClientBody::empty());
        assert_eq!(
            screen(&mut connect),
            Err(Refused(h1::server::CONNECT_REFUSED, None))
        );
        for method in [
            Method::GET,
            Method::HEAD,
            Method::DELETE,
            Method::OPTIONS,
            Method::TRACE,
        ] {
            let why = h1::server::body_refused(&method).unwrap();
            for (fields, body) in [
                (&[("content-length", "5")][..], ClientBody::empty()),
                (&[], ClientBody::full(Bytes::from_static(b"x"))),
                (
                    &[("content-length", "0"), ("content-length", "1")],
                    ClientBody::empty(),
                ),
                (&[("content-length", "zero")], ClientBody::empty()),
            ] {
                let mut req = request(method.clone(), fields, body);
                assert_eq!(
                    screen(&mut req),
                    Err(Refused(why, None)),
                    "{method} {fields:?}"
                );
            }
            for fields in [&[][..], &[("content-length", "0")]] {
                let mut req = request(method.clone(), fields, ClientBody::empty());
                assert_eq!(screen(&mut req), Ok(()), "{method} {fields:?}");
            }
        }
        let mut post = request(
            Method::POST,
            &[("content-length", "1")],
            ClientBody::full(Bytes::from_static(b"x")),
        );
        assert_eq!(screen(&mut post), Ok(()));
    }

    #[test]
    fn http2_requests_are_held_to_what_http1_checks_in_a_head() {
        use crate::target::{CONTROL_IN_PATH, INVALID_HOST, PATH_NOT_UTF8};
        let h2 = |uri: &str, fields: &[(&str, &str)]| {
            let mut req = request(Method::GET, fields, ClientBody::empty());
            *req.version_mut() = http::Version::HTTP_2;
            *req.uri_mut() = uri.parse().unwrap();
            req
        };
        for (mut req, why) in [
            (h2("http://user@h/x", &[]), INVALID_HOST),
            (h2("http://h/x", &[("host", "a b")]), INVALID_HOST),
            (
                h2("http://h/x", &[("host", "h"), ("host", "h")]),
                "a request needs at most one Host header",
            ),
            (
                h2("http://h/x", &[("host", "other")]),
                "the Host header and :authority name different hosts",
            ),
            (h2("http://h/token%00", &[]), CONTROL_IN_PATH),
            (h2("http://h/%c0%ae", &[]), PATH_NOT_UTF8),
            (
                h2("http://h/x", &[("content-length", "9223372036854775808")]),
                "invalid Content-Length",
            ),
        ] {
            assert_eq!(screen(&mut req), Err(Refused(why, None)), "{req:?}");
        }
        for mut req in [
            h2("http://h/x", &[]),
            h2("http://H:8080/x", &[("host", "h:8080")]),
            h2("/x", &[("host", "[::1]")]),
            h2("http://h/token%3f", &[("content-length", "0")]),
        ] {
            assert_eq!(screen(&mut req), Ok(()), "{req:?}");
        }
        // HTTP/1.1 heads were checked by `http1` already.
        let mut req = request(Method::GET, &[("host", "a b")], ClientBody::empty());
        assert_eq!(screen(&mut req), Ok(()));
    }

    #[test]
    fn connection_may_not_name_a_checked_field_and_names_go_before_the_layer() {
        let mut req = request(
            Method::POST,
            &[
                ("connection", "keep-alive"),
                ("connection", "x-a, Authorization"),
            ],
            ClientBody::empty(),
        );
        assert_eq!(
            screen(&mut req).map_err(|Refused(_, rejection)| rejection),
            Err(Some(Rejection::ConnectionNamesCheckedField))
        );
        let mut req = request(
            Method::GET,
            &[
                ("connection", "x-foo, close"),
                ("x-foo", "1"),
                ("te", "trailers"),
                ("keep-alive", "timeout=5"),
                ("host", "h"),
            ],
            ClientBody::empty(),
        );
        assert_eq!(screen(&mut req), Ok(()));
        let left: Vec<&str> = req.headers().keys().map(http::HeaderName::as_str).collect();
        assert_eq!(left, ["host", "te"]);
    }
}
