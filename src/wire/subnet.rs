//! IPv4 subnets (`10.1.2.0/24`): the unit a node leases and the key of the lease table.

use core::fmt;
use core::str::FromStr;
use std::net::Ipv4Addr;

/// An IPv4 network: an address whose host bits are zero, and a prefix length of 0..=32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subnet {
    addr: Ipv4Addr,
    prefix_len: u8,
}

/// Why a subnet could not be built or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubnetError {
    /// The prefix length is above 32.
    #[error("prefix length {0} is above 32")]
    PrefixLen(u8),
    /// The address has bits set below the prefix.
    #[error("{addr}/{prefix_len} has host bits set; did you mean {}/{prefix_len}?", Subnet::mask_addr(*.addr, *.prefix_len))]
    HostBits {
        /// The address given.
        addr: Ipv4Addr,
        /// The prefix length given.
        prefix_len: u8,
    },
    /// The text is not `a.b.c.d/len`.
    #[error("{0:?} is not an IPv4 subnet like 10.1.0.0/16")]
    Syntax(String),
}

impl Subnet {
    /// `0.0.0.0/0`: flannel's empty net, the IPv4 part of an IPv6-only lease key.
    pub const EMPTY: Subnet = Subnet {
        addr: Ipv4Addr::UNSPECIFIED,
        prefix_len: 0,
    };

    /// Builds a subnet; the address must have no host bits set.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Result<Self, SubnetError> {
        if prefix_len > 32 {
            return Err(SubnetError::PrefixLen(prefix_len));
        }
        if Self::mask_addr(addr, prefix_len) != addr {
            return Err(SubnetError::HostBits { addr, prefix_len });
        }
        Ok(Subnet { addr, prefix_len })
    }

    /// Builds the subnet of `prefix_len` that contains `addr` (host bits cleared).
    pub fn containing(addr: Ipv4Addr, prefix_len: u8) -> Result<Self, SubnetError> {
        if prefix_len > 32 {
            return Err(SubnetError::PrefixLen(prefix_len));
        }
        Ok(Subnet {
            addr: Self::mask_addr(addr, prefix_len),
            prefix_len,
        })
    }

    /// The netmask of a prefix length as a host-order integer.
    #[inline]
    pub const fn mask_bits(prefix_len: u8) -> u32 {
        if prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - prefix_len as u32)
        }
    }

    fn mask_addr(addr: Ipv4Addr, prefix_len: u8) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(addr) & Self::mask_bits(prefix_len.min(32)))
    }

    /// The network address.
    #[inline]
    pub const fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    #[inline]
    pub const fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The netmask as an address (`255.255.255.0` for /24).
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(Self::mask_bits(self.prefix_len))
    }

    /// Whether `ip` lies inside this subnet.
    #[inline]
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask_bits(self.prefix_len) == u32::from(self.addr)
    }

    /// Whether `other` lies entirely inside this subnet.
    pub fn contains_subnet(&self, other: &Subnet) -> bool {
        other.prefix_len >= self.prefix_len && self.contains(other.addr)
    }

    /// Whether the two subnets share any address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.contains_subnet(other) || other.contains_subnet(self)
    }

    /// The first host address (`10.1.2.1` for `10.1.2.0/24`), as flannel writes in subnet.env.
    pub fn first_host(&self) -> Ipv4Addr {
        if self.prefix_len >= 31 {
            self.addr
        } else {
            Ipv4Addr::from(u32::from(self.addr) + 1)
        }
    }

    /// The last address of the subnet (broadcast for prefixes below /31).
    pub fn last_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !Self::mask_bits(self.prefix_len))
    }

    /// The number of addresses in the subnet.
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix_len as u32)
    }

    /// The address `n` places after the network address (`nth_addr(1)` of `10.1.2.0/24` is
    /// `10.1.2.1`), or `None` when the subnet has fewer than `n + 1` addresses.
    pub fn nth_addr(&self, n: u32) -> Option<Ipv4Addr> {
        // The network address has its low (32 - prefix_len) bits clear, so any n below
        // size() fits in them and the addition cannot carry out of the prefix.
        (u64::from(n) < self.size()).then(|| Ipv4Addr::from(u32::from(self.addr) | n))
    }

    /// flannel's etcd key form: `10.1.2.0-24`.
    pub fn key_string(&self) -> String {
        format!("{}-{}", self.addr, self.prefix_len)
    }

    /// Parses flannel's etcd key form `10.1.2.0-24`.
    pub fn from_key_str(s: &str) -> Result<Self, SubnetError> {
        let (a, l) = s
            .rsplit_once('-')
            .ok_or_else(|| SubnetError::Syntax(s.to_string()))?;
        Self::parse_parts(s, a, l)
    }

    fn parse_parts(whole: &str, a: &str, l: &str) -> Result<Self, SubnetError> {
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| SubnetError::Syntax(whole.to_string()))?;
        let len: u8 = l
            .parse()
            .map_err(|_| SubnetError::Syntax(whole.to_string()))?;
        Subnet::new(addr, len)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Subnet {
    type Err = SubnetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| SubnetError::Syntax(s.to_string()))?;
        Self::parse_parts(s, a, l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        let s: Subnet = "10.1.2.0/24".parse().unwrap();
        assert_eq!(s.to_string(), "10.1.2.0/24");
        assert_eq!(s.key_string(), "10.1.2.0-24");
        assert_eq!(Subnet::from_key_str("10.1.2.0-24").unwrap(), s);
        assert_eq!(s.first_host(), Ipv4Addr::new(10, 1, 2, 1));
        assert_eq!(s.last_addr(), Ipv4Addr::new(10, 1, 2, 255));
        assert_eq!(s.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(s.size(), 256);
    }

    #[test]
    fn rejects_bad_text() {
        assert!(matches!(
            "10.1.2.1/24".parse::<Subnet>(),
            Err(SubnetError::HostBits { .. })
        ));
        assert_eq!(
            "10.1.2.0/33".parse::<Subnet>(),
            Err(SubnetError::PrefixLen(33))
        );
        assert!(matches!(
            "10.1.2.0".parse::<Subnet>(),
            Err(SubnetError::Syntax(_))
        ));
        assert!(matches!(
            Subnet::from_key_str("10.1.2.0/24"),
            Err(SubnetError::Syntax(_))
        ));
        let msg = "10.1.2.1/24".parse::<Subnet>().unwrap_err().to_string();
        assert!(msg.contains("did you mean 10.1.2.0/24"), "{msg}");
    }

    #[test]
    fn containment() {
        let net: Subnet = "10.1.0.0/16".parse().unwrap();
        let sub: Subnet = "10.1.2.0/24".parse().unwrap();
        assert!(net.contains_subnet(&sub));
        assert!(!sub.contains_subnet(&net));
        assert!(net.overlaps(&sub) && sub.overlaps(&net));
        assert!(sub.contains(Ipv4Addr::new(10, 1, 2, 77)));
        assert!(!sub.contains(Ipv4Addr::new(10, 1, 3, 1)));
        let zero: Subnet = "0.0.0.0/0".parse().unwrap();
        assert!(zero.contains(Ipv4Addr::new(1, 2, 3, 4)));
        let host: Subnet = "10.0.0.1/32".parse().unwrap();
        assert!(host.contains(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(host.first_host(), Ipv4Addr::new(10, 0, 0, 1));
    }

    #[test]
    fn nth_addr_stays_inside() {
        let s: Subnet = "10.1.2.0/24".parse().unwrap();
        assert_eq!(s.nth_addr(0), Some(Ipv4Addr::new(10, 1, 2, 0)));
        assert_eq!(s.nth_addr(1), Some(s.first_host()));
        assert_eq!(s.nth_addr(255), Some(s.last_addr()));
        assert_eq!(s.nth_addr(256), None);
        let host: Subnet = "10.0.0.1/32".parse().unwrap();
        assert_eq!(host.nth_addr(0), Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(host.nth_addr(1), None);
        let all: Subnet = "0.0.0.0/0".parse().unwrap();
        assert_eq!(all.nth_addr(u32::MAX), Some(Ipv4Addr::BROADCAST));
    }
}
