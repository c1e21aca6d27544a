//! The peers whose `X-Forwarded-*` fields are kept (`--trusted-proxies`):
//! a load balancer in front says who its client was and how it came in.
//! From any other peer those fields are the client's own word, and are
//! replaced.

use std::fmt;
use std::net::IpAddr;

/// A list of address blocks (CIDR), parsed and checked once at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    blocks: Vec<Block>,
}

/// One address block: its network address and prefix length. An IPv4
/// block is kept as its IPv4-mapped IPv6 block, so that a peer on a
/// dual-stack socket (`::ffff:10.0.0.1`) matches it as `10.0.0.1` would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Block {
    network: u128,
    prefix: u8,
}

impl TrustedProxies {
    /// No peer is trusted: every `X-Forwarded-*` field is replaced.
    pub fn none() -> Self {
        Self::default()
    }

    /// Every peer is trusted (the deprecated `--trust-forwarded`).
    pub fn all() -> Self {
        Self {
            blocks: vec![Block {
                network: 0,
                prefix: 0,
            }],
        }
    }

    /// Parses a comma-separated list of blocks (`10.0.0.0/8`,
    /// `fd00::/8`) or single addresses (`192.0.2.7`, `::1`). A block with
    /// bits set past its prefix is refused: `10.1.2.3/8` is more likely a
    /// mistake than a way to write `10.0.0.0/8`.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut blocks = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            blocks.push(Block::parse(item)?);
        }
        Ok(Self { blocks })
    }

    /// Whether `peer` is in one of the blocks.
    pub fn contains(&self, peer: IpAddr) -> bool {
        let address = mapped(peer);
        self.blocks.iter().any(|b| b.contains(address))
    }

    /// Whether no peer is trusted.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}

impl fmt::Display for TrustedProxies {
    /// The blocks as a TOML list of strings.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, block) in self.blocks.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "\"{block}\"")?;
        }
        f.write_str("]")
    }
}

/// The prefix of `::ffff:0:0/96`, under which IPv4 addresses are mapped.
const V4_MAPPED: u128 = 0xffff_u128 << 32;

fn mapped(address: IpAddr) -> u128 {
    match address {
        IpAddr::V4(v4) => V4_MAPPED | u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn mask(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl Block {
    fn parse(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or a CIDR block"))?;
        let width: u8 = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(p) => match p.parse::<u8>() {
                // Digits only: u8's parser would take a sign.
                Ok(n) if n <= width && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => {
                    return Err(format!(
                        "{text:?} has a prefix length that is not 0 to {width}"
                    ));
                }
            },
        };
        let prefix = if address.is_ipv4() {
            prefix + 96
        } else {
            prefix
        };
        let network = mapped(address);
        if network & !mask(prefix) != 0 {
            return Err(format!(
                "{text:?} has address bits set past its prefix length; write the block's \
                 first address"
            ));
        }
        Ok(Self { network, prefix })
    }

    fn contains(self, address: u128) -> bool {
        address & mask(self.prefix) == self.network
    }
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix >= 96 && self.network & mask(96) == V4_MAPPED {
            // The low 32 bits are the IPv4 address; the cast keeps them.
            let v4 = std::net::Ipv4Addr::from(self.network as u32);
            write!(f, "{v4}/{}", self.prefix - 96)
        } else {
            write!(
                f,
                "{}/{}",
                std::net::Ipv6Addr::from(self.network),
                self.prefix
            )
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_and_single_addresses_match_what_they_cover() {
        let t = TrustedProxies::parse("10.0.0.0/8, 192.0.2.7 ,fd00::/8,::1").unwrap();
        for inside in ["10.0.0.1", "10.255.255.255", "192.0.2.7", "fd12::1", "::1"] {
            assert!(t.contains(ip(inside)), "{inside}");
        }
        for outside in ["11.0.0.1", "192.0.2.8", "fe80::1", "::2", "127.0.0.1"] {
            assert!(!t.contains(ip(outside)), "{outside}");
        }
        // A dual-stack socket's view of an IPv4 peer.
        assert!(t.contains(ip("::ffff:10.1.2.3")));
        assert!(!t.contains(ip("::ffff:11.1.2.3")));
        assert_eq!(
            t.to_string(),
            r#"["10.0.0.0/8", "192.0.2.7/32", "fd00::/8", "::1/128"]"#
        );
    }

    #[test]
    fn an_ipv4_block_does_not_cover_ipv6_addresses_beyond_its_own() {
        let t = TrustedProxies::parse("0.0.0.0/0").unwrap();
        assert!(t.contains(ip("203.0.113.9")));
        assert!(!t.contains(ip("2001:db8::1")));
        assert!(!t.contains(ip("::")));
    }

    #[test]
    fn all_and_none() {
        assert!(TrustedProxies::all().contains(ip("2001:db8::1")));
        assert!(TrustedProxies::all().contains(ip("127.0.0.1")));
        assert!(!TrustedProxies::none().contains(ip("127.0.0.1")));
        assert!(TrustedProxies::parse(" , ").unwrap().is_empty());
        assert_eq!(
            TrustedProxies::parse("::/0").unwrap().to_string(),
            r#"["::/0"]"#
        );
    }

    #[test]
    fn mistakes_are_refused_with_the_entry_named() {
        for bad in [
            "10.0.0.0/33",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0.0/",
            "::/129",
            "10.1.2.3/8",
            "fd00::1/8",
            "localhost",
            "10.0.0.0/8/8",
            "10.0.0",
            "[::1]",
        ] {
            let e = TrustedProxies::parse(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }
}
