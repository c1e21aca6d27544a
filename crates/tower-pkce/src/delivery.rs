//! Where a code leaves to: whether a delivery goes to the transaction's own
//! client, read as a browser reads its target.

use http::HeaderValue;

/// Whether a delivery whose targets (`location::targets`, or a form's
/// action) are these goes to the transaction's own client (invariant I3):
/// to the `redirect_uri` it recorded; without one, to a URI that leaves the
/// server the client addressed (a page of the upstream's own, such as a
/// consent form echoing a `code`, is no delivery).
pub(crate) fn reaches_client<'t>(
    recorded: Option<crate::store::Fingerprint>,
    mut targets: impl Iterator<Item = &'t [u8]>,
    host: Option<&HeaderValue>,
) -> bool {
    match recorded {
        Some(uri) => targets.any(|t| {
            crate::store::fingerprint(t) == uri
                || std::str::from_utf8(t).is_err()
                    && crate::store::fingerprint(latin1_to_utf8(t)) == uri
        }),
        None => targets.next().is_some_and(|t| leaves_the_server(t, host)),
    }
}

/// `bytes` read as latin-1, in UTF-8: what an old server that writes its
/// headers in latin-1 made of a `redirect_uri` it received in UTF-8.
fn latin1_to_utf8(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// Whether `target` is an absolute URI (RFC 3986 §4.3) whose authority, if
/// it has one, is not `host`, read as a browser reads it: a special scheme
/// (`https:`) needs no `//`, `\\` stands for `/`, and a default port is
/// no port.
fn leaves_the_server(target: &[u8], host: Option<&HeaderValue>) -> bool {
    let Some(colon) = target.iter().position(|&b| b == b':') else {
        return false;
    };
    let scheme = target.get(..colon).unwrap_or_default();
    let is_scheme = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !is_scheme {
        return false;
    }
    let default_port: Option<&[u8]> = match scheme.to_ascii_lowercase().as_slice() {
        b"http" | b"ws" => Some(b"80"),
        b"https" | b"wss" => Some(b"443"),
        b"ftp" => Some(b"21"),
        b"file" => Some(b""),
        _ => None,
    };
    let rest = target.get(colon + 1..).unwrap_or_default();
    let rest = match default_port {
        Some(_) => {
            let slashes = rest
                .iter()
                .take_while(|&&b| b == b'/' || b == b'\\')
                .count();
            rest.get(slashes..).unwrap_or_default()
        }
        // A scheme of an application's own (`com.example.app:/cb`).
        None => match rest.strip_prefix(b"//") {
            Some(rest) => rest,
            None => return true,
        },
    };
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#' | b'\\'))
        .unwrap_or(rest.len());
    let authority = rest.get(..end).unwrap_or_default();
    let authority = authority.rsplit(|&b| b == b'@').next().unwrap_or(authority);
    if authority.is_empty() {
        return false;
    }
    let same = |host: &HeaderValue| {
        normal_authority(host.as_bytes(), default_port) == normal_authority(authority, default_port)
    };
    !host.is_some_and(same)
}

/// An authority in lower case, without a trailing dot on its host or a
/// port that is the scheme's default.
fn normal_authority(authority: &[u8], default_port: Option<&[u8]>) -> Vec<u8> {
    let lower = authority.to_ascii_lowercase();
    let split = lower.iter().rposition(|&b| b == b':').and_then(|i| {
        let port = lower.get(i + 1..)?;
        let host = lower.get(..i)?;
        (port.iter().all(u8::is_ascii_digit) && !port.contains(&b']')).then_some((host, port))
    });
    let (host, port) = split.unwrap_or((&lower, &[]));
    let mut out = host.strip_suffix(b".").unwrap_or(host).to_vec();
    if !port.is_empty() && Some(port) != default_port {
        out.push(b':');
        out.extend_from_slice(port);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_reaches_the_client_only_at_its_redirect_uri() {
        let r = crate::store::fingerprint("https://client.example/caf\u{e9}/cb");
        let reaches = |target: &[u8]| reaches_client(Some(r), std::iter::once(target), None);
        assert!(reaches("https://client.example/caf\u{e9}/cb".as_bytes()));
        // An old server's latin-1 of the same URI.
        assert!(reaches(b"https://client.example/caf\xe9/cb"));
        for target in [
            &b"https://client.example/caf%C3%A9/cb"[..],
            b"https://client.example/caf\xe9/cb/",
            b"https://client.example/cafe/cb",
        ] {
            assert!(!reaches(target), "{}", String::from_utf8_lossy(target));
        }
        let host = HeaderValue::from_static("AS.example:8443");
        let leaves = |target: &[u8]| leaves_the_server(target, Some(&host));
        for target in [
            &b"https://client.example/cb"[..],
            b"com.example.app:/cb",
            b"https://as.example:8443@client.example/cb",
            // A browser reads the host `cb` here.
            b"https:///cb",
        ] {
            assert!(leaves(target), "{}", String::from_utf8_lossy(target));
        }
        let default = HeaderValue::from_static("as.example:443");
        for target in [
            &b"https://as.example/authorize"[..],
            b"https:as.example/authorize",
            b"https:\\\\AS.example./authorize",
            b"https://as.example:443/authorize",
        ] {
            assert!(
                !leaves_the_server(target, Some(&default)),
                "{}",
                String::from_utf8_lossy(target)
            );
        }
        assert!(leaves_the_server(b"http://as.example/cb", Some(&default)));
        for target in [
            &b"/cb"[..],
            b"cb?x=a:b",
            b"https://as.example:8443/cb",
            b"HTTPS://AS.EXAMPLE:8443/cb",
            b"https://user@as.example:8443/cb",
            b"https://as.example:8443\\@evil.example/cb",
        ] {
            assert!(!leaves(target), "{}", String::from_utf8_lossy(target));
        }
    }
}
