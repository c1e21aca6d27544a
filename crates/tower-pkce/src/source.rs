//! [`Source`]: where an authorization request comes from, for the
//! per-source quota on pending authorizations.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// The client address an authorization request comes from, as the layer
/// counts it against a store's per-source quota on pending authorizations
/// (see [`MemoryStoreBuilder::max_pending_per_source`]).
///
/// An IPv4 address is one source. IPv6 addresses are grouped by their /64
/// prefix, because a single host is routinely given a whole /64 and can
/// pick any address in it; an IPv4-mapped IPv6 address is its IPv4 address.
///
/// The layer reads it from the request's extensions at the authorization
/// endpoint. Whoever serves the layer sets it, from the address of the
/// client after any trusted proxies (never from a header an untrusted
/// client controls). A request without one is subject to no per-source
/// quota: unknown sources are not lumped together, which would let one of
/// them lock the others out.
///
/// ```
/// use std::net::IpAddr;
/// use tower_pkce::Source;
///
/// let a = Source::new("2001:db8::1".parse::<IpAddr>().unwrap());
/// let b = Source::new("2001:db8::ffff:2".parse::<IpAddr>().unwrap());
/// assert_eq!(a, b);
/// assert_eq!(a.to_string(), "2001:db8::/64");
/// ```
///
/// [`MemoryStoreBuilder::max_pending_per_source`]: crate::store::MemoryStoreBuilder::max_pending_per_source
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    /// The source that `ip` belongs to.
    pub fn new(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !u128::from(u64::MAX);
                Self(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
        }
    }

    /// The source's address: the IPv4 address, or the first address of the
    /// IPv6 /64.
    pub fn addr(&self) -> IpAddr {
        self.0
    }
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        Self::new(ip)
    }
}

/// The form is part of the Redis layout: `RedisStore` names a source's set of
/// pending records with it, so replicas of one prefix must agree on it.
impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Source({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(s: &str) -> Source {
        Source::new(s.parse().unwrap())
    }

    #[test]
    fn ipv4_is_one_address_and_ipv6_a_slash_64() {
        assert_ne!(source("192.0.2.1"), source("192.0.2.2"));
        assert_eq!(source("192.0.2.1").to_string(), "192.0.2.1");
        assert_eq!(source("2001:db8:1:2::1"), source("2001:db8:1:2:ffff::9"));
        assert_ne!(source("2001:db8:1:2::1"), source("2001:db8:1:3::1"));
        assert_eq!(
            source("2001:db8:1:2:3:4:5:6").to_string(),
            "2001:db8:1:2::/64"
        );
        // A mapped address is the IPv4 client it maps.
        assert_eq!(source("::ffff:192.0.2.1"), source("192.0.2.1"));
    }
}
