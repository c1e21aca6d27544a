//! The PROXY protocol (versions 1 and 2, as HAProxy specifies them), which
//! a TCP load balancer (AWS NLB, HAProxy in TCP mode) puts before the first
//! byte of its client's stream to say who that client is.
//!
//! It is read only from `--trusted-proxies`, when `--proxy-protocol` is on,
//! and there it is required: a trusted peer that does not send it is
//! closed. Any other peer's stream is HTTP from its first byte, so a client
//! that sends a header of its own gets a 400 like any malformed request.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The twelve bytes that start a version 2 header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 line, CR LF included.
const V1_MAX: usize = 107;

/// Who the load balancer says the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// A TCP client at this address.
    Client(SocketAddr),
    /// The load balancer speaks for itself (a v2 `LOCAL` command, such as
    /// a health check, or v1 `UNKNOWN`): the connection's own peer is the
    /// client, and vouches for nothing it says about others.
    Balancer,
}

/// Why a header was refused; the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refused(pub(crate) &'static str);

/// Reads exactly the header from `stream`, and nothing after it.
pub(crate) async fn read_header(stream: &mut TcpStream) -> Result<Source, Refused> {
    let io = |_| Refused("the connection ended before the header did");
    let mut start = [0u8; 8];
    stream.read_exact(&mut start).await.map_err(io)?;
    if start == V2_SIGNATURE[..8] {
        let mut rest = [0u8; 8];
        stream.read_exact(&mut rest).await.map_err(io)?;
        let mut header = [0u8; 16];
        header[..8].copy_from_slice(&start);
        header[8..].copy_from_slice(&rest);
        let len = v2_length(&header)?;
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).await.map_err(io)?;
        return parse_v2(&header, &body);
    }
    if !start.starts_with(b"PROXY ") {
        return Err(Refused("no PROXY protocol header from a trusted proxy"));
    }
    let mut line = Vec::with_capacity(V1_MAX);
    line.extend_from_slice(&start);
    // A balancer sends the line in one segment: one peek finds its end. A
    // line that comes in pieces is read a byte at a time, so that not one
    // byte of the HTTP stream after it is taken.
    let mut peeked = [0u8; V1_MAX - 8];
    let n = stream.peek(&mut peeked).await.map_err(io)?;
    if let Some(end) = find_crlf(&line, &peeked[..n]) {
        let take = end + 2 - line.len();
        let mut tail = vec![0u8; take];
        stream.read_exact(&mut tail).await.map_err(io)?;
        line.extend_from_slice(&tail);
    } else {
        while !line.ends_with(b"\r\n") {
            if line.len() >= V1_MAX {
                return Err(Refused("PROXY protocol v1 line too long"));
            }
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.map_err(io)?;
            line.push(byte[0]);
        }
    }
    parse_v1(&line)
}

/// Where the CR LF that ends the line starts, counted in `line` followed by
/// `more`, within the longest line.
fn find_crlf(line: &[u8], more: &[u8]) -> Option<usize> {
    let mut joined = line.to_vec();
    joined.extend_from_slice(more);
    joined.truncate(V1_MAX);
    joined.windows(2).position(|w| w == b"\r\n")
}

/// The length of what follows a version 2 header's 16 bytes.
fn v2_length(header: &[u8; 16]) -> Result<usize, Refused> {
    if header[..12] != V2_SIGNATURE[..] {
        return Err(Refused("malformed PROXY protocol v2 signature"));
    }
    if header[12] >> 4 != 2 {
        return Err(Refused("PROXY protocol version other than 2"));
    }
    Ok(usize::from(u16::from_be_bytes([header[14], header[15]])))
}

/// A version 2 header: `header` is its fixed 16 bytes, `body` the
/// addresses and any TLVs after them (which are not read).
pub(crate) fn parse_v2(header: &[u8; 16], body: &[u8]) -> Result<Source, Refused> {
    let len = v2_length(header)?;
    if body.len() != len {
        return Err(Refused("PROXY protocol v2 length mismatch"));
    }
    match header[12] & 0x0f {
        0x0 => return Ok(Source::Balancer),
        0x1 => {}
        _ => return Err(Refused("unknown PROXY protocol v2 command")),
    }
    let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
    match header[13] {
        // TCP over IPv4: source, destination, source port, destination port.
        0x11 if len >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Ok(Source::Client(SocketAddr::new(IpAddr::V4(ip), port(8))))
        }
        0x21 if len >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            let ip = Ipv6Addr::from(octets);
            Ok(Source::Client(SocketAddr::new(IpAddr::V6(ip), port(32))))
        }
        0x11 | 0x21 => Err(Refused("PROXY protocol v2 addresses cut short")),
        // A client the balancer cannot name (UDP, a UNIX socket, or
        // unspecified) would be served as the balancer itself, which is
        // trusted: refused instead.
        _ => Err(Refused(
            "PROXY protocol v2 for a client other than TCP over IPv4 or IPv6",
        )),
    }
}

/// A version 1 line, CR LF included: `PROXY TCP4 <src> <dst> <sport>
/// <dport>`, the same with `TCP6`, or `PROXY UNKNOWN` and anything.
pub(crate) fn parse_v1(line: &[u8]) -> Result<Source, Refused> {
    let malformed = Refused("malformed PROXY protocol v1 line");
    let text = line
        .strip_suffix(b"\r\n")
        .and_then(|l| std::str::from_utf8(l).ok())
        .ok_or(malformed)?;
    if line.len() > V1_MAX {
        return Err(Refused("PROXY protocol v1 line too long"));
    }
    let mut fields = text.split(' ');
    if fields.next() != Some("PROXY") {
        return Err(malformed);
    }
    let family = fields.next().ok_or(malformed)?;
    if family == "UNKNOWN" {
        return Ok(Source::Balancer);
    }
    let (src, dst, sport, dport) = match (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) {
        (Some(a), Some(b), Some(c), Some(d), None) => (a, b, c, d),
        _ => return Err(malformed),
    };
    let address = |text: &str| -> Result<IpAddr, Refused> {
        match family {
            "TCP4" => text.parse::<Ipv4Addr>().map(IpAddr::V4),
            "TCP6" => text.parse::<Ipv6Addr>().map(IpAddr::V6),
            _ => return Err(malformed),
        }
        .map_err(|_| malformed)
    };
    let port = |text: &str| -> Result<u16, Refused> {
        // Digits only, and no leading zero, as the specification asks.
        let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
        if !digits || (text.len() > 1 && text.starts_with('0')) {
            return Err(malformed);
        }
        text.parse().map_err(|_| malformed)
    };
    let source = address(src)?;
    address(dst)?;
    let source_port = port(sport)?;
    port(dport)?;
    Ok(Source::Client(SocketAddr::new(source, source_port)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> ([u8; 16], Vec<u8>) {
        let mut header = [0u8; 16];
        header[..12].copy_from_slice(V2_SIGNATURE);
        header[12] = 0x20 | command;
        header[13] = family;
        header[14..].copy_from_slice(&(body.len() as u16).to_be_bytes());
        (header, body.to_vec())
    }

    #[test]
    fn version_1_lines() {
        let ok = |line: &str| parse_v1(line.as_bytes());
        assert_eq!(
            ok("PROXY TCP4 192.0.2.1 198.51.100.2 51000 443\r\n"),
            Ok(Source::Client("192.0.2.1:51000".parse().unwrap()))
        );
        assert_eq!(
            ok("PROXY TCP6 2001:db8::1 2001:db8::2 65535 443\r\n"),
            Ok(Source::Client("[2001:db8::1]:65535".parse().unwrap()))
        );
        assert_eq!(ok("PROXY UNKNOWN\r\n"), Ok(Source::Balancer));
        assert_eq!(
            ok("PROXY UNKNOWN ffff:f::1 ffff:f::2 1 2\r\n"),
            Ok(Source::Balancer)
        );
        for bad in [
            "PROXY TCP4 192.0.2.1 198.51.100.2 51000 443\n",
            "PROXY TCP4 192.0.2.1 198.51.100.2 51000\r\n",
            "PROXY TCP4 192.0.2.1 198.51.100.2 51000 443 x\r\n",
            "PROXY TCP4 2001:db8::1 198.51.100.2 51000 443\r\n",
            "PROXY TCP6 192.0.2.1 2001:db8::2 51000 443\r\n",
            "PROXY TCP4 192.0.2.1 198.51.100.2 051000 443\r\n",
            "PROXY TCP4 192.0.2.1 198.51.100.2 65536 443\r\n",
            "PROXY TCP4 192.0.2.1 198.51.100.2 +1 443\r\n",
            "PROXY TCP4  192.0.2.1 198.51.100.2 1 443\r\n",
            "PROXY UDP4 192.0.2.1 198.51.100.2 1 443\r\n",
            "PROXY\r\n",
            "proxy TCP4 192.0.2.1 198.51.100.2 1 443\r\n",
        ] {
            assert!(ok(bad).is_err(), "{bad:?}");
        }
        let long = format!("PROXY UNKNOWN {}\r\n", "x".repeat(100));
        assert!(ok(&long).is_err());
    }

    #[test]
    fn version_2_headers() {
        let mut tcp4 = vec![192, 0, 2, 1, 198, 51, 100, 2];
        tcp4.extend_from_slice(&51000u16.to_be_bytes());
        tcp4.extend_from_slice(&443u16.to_be_bytes());
        let (h, b) = v2(1, 0x11, &tcp4);
        assert_eq!(
            parse_v2(&h, &b),
            Ok(Source::Client("192.0.2.1:51000".parse().unwrap()))
        );
        // TLVs after the addresses (AWS adds its own) are skipped.
        let mut with_tlv = tcp4.clone();
        with_tlv.extend_from_slice(&[0xea, 0, 3, 1, 2, 3]);
        let (h, b) = v2(1, 0x11, &with_tlv);
        assert_eq!(
            parse_v2(&h, &b),
            Ok(Source::Client("192.0.2.1:51000".parse().unwrap()))
        );
        let mut tcp6 = Vec::new();
        tcp6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        tcp6.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        tcp6.extend_from_slice(&7u16.to_be_bytes());
        tcp6.extend_from_slice(&443u16.to_be_bytes());
        let (h, b) = v2(1, 0x21, &tcp6);
        assert_eq!(
            parse_v2(&h, &b),
            Ok(Source::Client("[2001:db8::1]:7".parse().unwrap()))
        );
        // LOCAL: the balancer's own connection, whatever the family.
        let (h, b) = v2(0, 0x00, &[]);
        assert_eq!(parse_v2(&h, &b), Ok(Source::Balancer));
        // Refused: cut short, UDP, UNIX, unspecified with PROXY, an
        // unknown command, another version, a wrong signature.
        for (h, b) in [
            v2(1, 0x11, &tcp4[..11]),
            v2(1, 0x21, &tcp6[..35]),
            v2(1, 0x12, &tcp4),
            v2(1, 0x31, &[0; 216]),
            v2(1, 0x00, &[]),
            v2(2, 0x11, &tcp4),
        ] {
            assert!(parse_v2(&h, &b).is_err(), "{h:?}");
        }
        let (mut h, b) = v2(1, 0x11, &tcp4);
        h[12] = 0x11;
        assert!(parse_v2(&h, &b).is_err());
        let (mut h, b) = v2(1, 0x11, &tcp4);
        h[11] = b'X';
        assert!(parse_v2(&h, &b).is_err());
        let (h, _) = v2(1, 0x11, &tcp4);
        assert!(parse_v2(&h, &tcp4[..4]).is_err());
    }

    #[tokio::test]
    async fn the_header_is_read_to_its_end_and_not_a_byte_further() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut tcp4 = vec![192, 0, 2, 1, 198, 51, 100, 2];
        tcp4.extend_from_slice(&51000u16.to_be_bytes());
        tcp4.extend_from_slice(&443u16.to_be_bytes());
        let (h, b) = v2(1, 0x11, &tcp4);
        let mut v2_bytes = h.to_vec();
        v2_bytes.extend_from_slice(&b);
        type Case = (Vec<Vec<u8>>, Result<Source, Refused>);
        let cases: Vec<Case> = vec![
            (
                vec![b"PROXY TCP4 192.0.2.9 198.51.100.2 5 443\r\nGET / HTTP/1.1\r\n".to_vec()],
                Ok(Source::Client("192.0.2.9:5".parse().unwrap())),
            ),
            // In pieces: read a byte at a time past the first peek.
            (
                vec![
                    b"PROXY TCP4 192.0.2.9 ".to_vec(),
                    b"198.51.100.2 5 443\r".to_vec(),
                    b"\nGET / HTTP/1.1\r\n".to_vec(),
                ],
                Ok(Source::Client("192.0.2.9:5".parse().unwrap())),
            ),
            (
                vec![v2_bytes.clone(), b"GET / HTTP/1.1\r\n".to_vec()],
                Ok(Source::Client("192.0.2.1:51000".parse().unwrap())),
            ),
            (
                vec![b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()],
                Err(Refused("no PROXY protocol header from a trusted proxy")),
            ),
        ];
        for (pieces, want) in cases {
            let writer = tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                for piece in pieces {
                    s.write_all(&piece).await.unwrap();
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                s
            });
            let (mut stream, _) = listener.accept().await.unwrap();
            let got = read_header(&mut stream).await;
            assert_eq!(got, want);
            let _keep = writer.await.unwrap();
            if got.is_ok() {
                let mut next = [0u8; 4];
                stream.read_exact(&mut next).await.unwrap();
                assert_eq!(&next, b"GET ");
            }
        }
    }
}
