//! IPv6 subnets (`fd10:0:0:2::/64`): the IPv6 half of a dual-stack lease and of the network.
//!
//! The same shape as the IPv4 [`Subnet`](super::Subnet), over `u128` arithmetic. flannel keys
//! a dual-stack lease as `10.1.2.0-24&fd10:0:0:2::-64`; the part after `&` is
//! [`Subnet6::key_string`].

use core::fmt;
use core::str::FromStr;
use std::net::Ipv6Addr;

/// An IPv6 network: an address whose host bits are zero, and a prefix length of 0..=128.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subnet6 {
    addr: Ipv6Addr,
    prefix_len: u8,
}

/// Why an IPv6 subnet could not be built or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Subnet6Error {
    /// The prefix length is above 128.
    #[error("prefix length {0} is above 128")]
    PrefixLen(u8),
    /// The address has bits set below the prefix.
    #[error("{addr}/{prefix_len} has host bits set; did you mean {}/{prefix_len}?", Subnet6::mask_addr(*.addr, *.prefix_len))]
    HostBits {
        /// The address given.
        addr: Ipv6Addr,
        /// The prefix length given.
        prefix_len: u8,
    },
    /// The text is not `addr/len`.
    #[error("{0:?} is not an IPv6 subnet like fd10::/48")]
    Syntax(String),
}

impl Subnet6 {
    /// Builds a subnet; the address must have no host bits set.
    pub fn new(addr: Ipv6Addr, prefix_len: u8) -> Result<Self, Subnet6Error> {
        if prefix_len > 128 {
            return Err(Subnet6Error::PrefixLen(prefix_len));
        }
        if Self::mask_addr(addr, prefix_len) != addr {
            return Err(Subnet6Error::HostBits { addr, prefix_len });
        }
        Ok(Subnet6 { addr, prefix_len })
    }

    /// Builds the subnet of `prefix_len` that contains `addr` (host bits cleared).
    pub fn containing(addr: Ipv6Addr, prefix_len: u8) -> Result<Self, Subnet6Error> {
        if prefix_len > 128 {
            return Err(Subnet6Error::PrefixLen(prefix_len));
        }
        Ok(Subnet6 {
            addr: Self::mask_addr(addr, prefix_len),
            prefix_len,
        })
    }

    /// The netmask of a prefix length (0..=128; longer counts as 128) as an integer.
    #[inline]
    pub const fn mask_bits(prefix_len: u8) -> u128 {
        if prefix_len == 0 {
            0
        } else if prefix_len >= 128 {
            u128::MAX
        } else {
            u128::MAX << (128 - prefix_len as u32)
        }
    }

    fn mask_addr(addr: Ipv6Addr, prefix_len: u8) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(addr) & Self::mask_bits(prefix_len))
    }

    /// The network address.
    #[inline]
    pub const fn addr(&self) -> Ipv6Addr {
        self.addr
    }

    /// The prefix length.
    #[inline]
    pub const fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `ip` lies inside this subnet.
    #[inline]
    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        u128::from(ip) & Self::mask_bits(self.prefix_len) == u128::from(self.addr)
    }

    /// Whether `other` lies entirely inside this subnet.
    pub fn contains_subnet(&self, other: &Subnet6) -> bool {
        other.prefix_len >= self.prefix_len && self.contains(other.addr)
    }

    /// Whether the two subnets share any address.
    pub fn overlaps(&self, other: &Subnet6) -> bool {
        self.contains_subnet(other) || other.contains_subnet(self)
    }

    /// The network address plus one (`fd10:0:0:2::1` for `fd10:0:0:2::/64`), as flanneld
    /// writes `FLANNEL_IPV6_SUBNET`; a /128 is its own address.
    pub fn first_host(&self) -> Ipv6Addr {
        self.nth_addr(1).unwrap_or(self.addr)
    }

    /// The last address of the subnet.
    pub fn last_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.addr) | !Self::mask_bits(self.prefix_len))
    }

    /// The address `n` places after the network address, or `None` when the subnet has
    /// fewer than `n + 1` addresses.
    pub fn nth_addr(&self, n: u128) -> Option<Ipv6Addr> {
        // n below the host part's size fits in the clear low bits, so OR cannot carry.
        (n & Self::mask_bits(self.prefix_len) == 0)
            .then(|| Ipv6Addr::from(u128::from(self.addr) | n))
    }

    /// How many `/len` subnets this subnet holds, or `None` when `len` is shorter than this
    /// prefix, above 128, or the count (2^128, a /0 cut into /128s) does not fit a `u128`.
    pub fn subnet_count(&self, len: u8) -> Option<u128> {
        if len < self.prefix_len || len > 128 {
            return None;
        }
        1u128.checked_shl(u32::from(len - self.prefix_len))
    }

    /// The `n`-th `/len` subnet inside this one, counting from 0 at the network address
    /// (`nth_subnet(64, 2)` of `fd10::/48` is `fd10:0:0:2::/64`), or `None` when there is
    /// no such subnet.
    pub fn nth_subnet(&self, len: u8, n: u128) -> Option<Subnet6> {
        if len < self.prefix_len || len > 128 {
            return None;
        }
        let width = u32::from(len - self.prefix_len);
        // n must fit in the bits between the two prefixes.
        if width < 128 && n >> width != 0 {
            return None;
        }
        // len 0 leaves only n = 0 (checked above), whose shift by 128 is 0 too.
        let offset = n.checked_shl(128 - u32::from(len)).unwrap_or(0);
        Some(Subnet6 {
            addr: Ipv6Addr::from(u128::from(self.addr) | offset),
            prefix_len: len,
        })
    }

    /// Where `sub` sits among this subnet's `/sub.prefix_len()` subnets (the inverse of
    /// [`nth_subnet`](Self::nth_subnet)), or `None` when it does not lie inside.
    pub fn subnet_index(&self, sub: &Subnet6) -> Option<u128> {
        if !self.contains_subnet(sub) {
            return None;
        }
        let offset = u128::from(sub.addr) - u128::from(self.addr);
        // A /0 inside a /0 is at 0; its shift by 128 would overflow.
        Some(
            offset
                .checked_shr(128 - u32::from(sub.prefix_len))
                .unwrap_or(0),
        )
    }

    /// flannel's etcd key form: `fd10:0:0:2::-64`, the address as Go's `net.IP.String()`
    /// writes it (RFC 5952, as `Ipv6Addr`'s `Display` does), `-`, the prefix length.
    ///
    /// Go writes an IPv4-mapped address (`::ffff:a.b.c.d`) as bare `a.b.c.d`, and flannel's
    /// key pattern reads neither; such subnets are not valid flannel IPv6 networks.
    pub fn key_string(&self) -> String {
        format!("{}-{}", self.addr, self.prefix_len)
    }

    /// Parses flannel's etcd key form `fd10:0:0:2::-64`.
    pub fn from_key_str(s: &str) -> Result<Self, Subnet6Error> {
        let (a, l) = s
            .rsplit_once('-')
            .ok_or_else(|| Subnet6Error::Syntax(s.to_string()))?;
        Self::parse_parts(s, a, l)
    }

    fn parse_parts(whole: &str, a: &str, l: &str) -> Result<Self, Subnet6Error> {
        let syntax = || Subnet6Error::Syntax(whole.to_string());
        let addr: Ipv6Addr = a.parse().map_err(|_| syntax())?;
        if l.is_empty() || l.len() > 3 || !l.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let len: u8 = l.parse().map_err(|_| syntax())?;
        Subnet6::new(addr, len)
    }
}

impl fmt::Display for Subnet6 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Subnet6 {
    type Err = Subnet6Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| Subnet6Error::Syntax(s.to_string()))?;
        Self::parse_parts(s, a, l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s6(s: &str) -> Subnet6 {
        s.parse().unwrap()
    }

    fn ip6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn parse_and_display() {
        let s = s6("fd10:0:0:2::/64");
        assert_eq!(s.to_string(), "fd10:0:0:2::/64");
        assert_eq!(s.key_string(), "fd10:0:0:2::-64");
        assert_eq!(Subnet6::from_key_str("fd10:0:0:2::-64").unwrap(), s);
        assert_eq!(s.first_host(), ip6("fd10:0:0:2::1"));
        assert_eq!(s.last_addr(), ip6("fd10:0:0:2:ffff:ffff:ffff:ffff"));
        // Written the long way, shown the short way (RFC 5952, as Go prints it).
        let n = s6("FD10:0000:0000:0000:0000:0000:0000:0000/48");
        assert_eq!(n.to_string(), "fd10::/48");
        assert_eq!(s6("fc00::/7").key_string(), "fc00::-7");
        // A single zero group is not compressed; the first of equal runs is.
        assert_eq!(s6("fd10:0:1:0:0:1::/96").key_string(), "fd10:0:1::1:0:0-96");
        assert_eq!(s6("fd10:1:0:2::/64").key_string(), "fd10:1:0:2::-64");
        assert_eq!(s6("::/0").to_string(), "::/0");
    }

    #[test]
    fn rejects_bad_text() {
        assert!(matches!(
            "fd10::1/64".parse::<Subnet6>(),
            Err(Subnet6Error::HostBits { .. })
        ));
        assert_eq!(
            "fd10::/129".parse::<Subnet6>(),
            Err(Subnet6Error::PrefixLen(129))
        );
        for bad in [
            "fd10::",
            "fd10::/",
            "fd10::/+4",
            "fd10::/0064",
            "10.1.0.0/16",
            "fd10::/x",
        ] {
            assert!(
                matches!(bad.parse::<Subnet6>(), Err(Subnet6Error::Syntax(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            Subnet6::from_key_str("fd10:0:0:2::/64"),
            Err(Subnet6Error::Syntax(_))
        ));
        let msg = "fd10::1/64".parse::<Subnet6>().unwrap_err().to_string();
        assert!(msg.contains("did you mean fd10::/64"), "{msg}");
        assert_eq!(
            Subnet6::containing(ip6("fd10::1"), 64).unwrap(),
            s6("fd10::/64")
        );
        assert_eq!(
            Subnet6::containing(ip6("fd10::1"), 200),
            Err(Subnet6Error::PrefixLen(200))
        );
    }

    #[test]
    fn containment() {
        let net = s6("fd10::/48");
        let sub = s6("fd10:0:0:2::/64");
        assert!(net.contains_subnet(&sub));
        assert!(!sub.contains_subnet(&net));
        assert!(net.overlaps(&sub) && sub.overlaps(&net));
        assert!(!sub.overlaps(&s6("fd10:0:0:3::/64")));
        assert!(sub.contains(ip6("fd10:0:0:2::77")));
        assert!(!sub.contains(ip6("fd10:0:0:3::1")));
        assert!(s6("::/0").contains(ip6("2001:db8::1")));
        let host = s6("fd10::1/128");
        assert!(host.contains(ip6("fd10::1")));
        assert!(!host.contains(ip6("fd10::2")));
        assert_eq!(host.first_host(), ip6("fd10::1"));
        assert_eq!(host.last_addr(), ip6("fd10::1"));
    }

    #[test]
    fn nth_addr_stays_inside() {
        let s = s6("fd10:0:0:2::/64");
        assert_eq!(s.nth_addr(0), Some(s.addr()));
        assert_eq!(s.nth_addr(u128::from(u64::MAX)), Some(s.last_addr()));
        assert_eq!(s.nth_addr(1u128 << 64), None);
        let host = s6("fd10::1/128");
        assert_eq!(host.nth_addr(0), Some(host.addr()));
        assert_eq!(host.nth_addr(1), None);
        assert_eq!(
            s6("::/0").nth_addr(u128::MAX),
            Some(Ipv6Addr::from(u128::MAX))
        );
    }

    #[test]
    fn nth_subnet_and_index() {
        let net = s6("fd10::/48");
        assert_eq!(net.subnet_count(64), Some(1 << 16));
        assert_eq!(net.subnet_count(48), Some(1));
        assert_eq!(net.subnet_count(47), None);
        assert_eq!(net.subnet_count(129), None);
        assert_eq!(s6("::/0").subnet_count(127), Some(1 << 127));
        assert_eq!(s6("::/0").subnet_count(128), None);
        assert_eq!(net.nth_subnet(64, 0), Some(s6("fd10::/64")));
        assert_eq!(net.nth_subnet(64, 2), Some(s6("fd10:0:0:2::/64")));
        assert_eq!(net.nth_subnet(64, 0xffff), Some(s6("fd10:0:0:ffff::/64")));
        assert_eq!(net.nth_subnet(64, 0x1_0000), None);
        assert_eq!(net.nth_subnet(47, 0), None);
        assert_eq!(net.nth_subnet(48, 0), Some(net));
        assert_eq!(net.nth_subnet(48, 1), None);
        assert_eq!(net.nth_subnet(128, 5), Some(s6("fd10::5/128")));
        let all = s6("::/0");
        assert_eq!(
            all.nth_subnet(128, u128::MAX),
            Some(s6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"))
        );
        assert_eq!(all.nth_subnet(0, 0), Some(all));
        assert_eq!(all.nth_subnet(1, 1), Some(s6("8000::/1")));
        for n in [0u128, 1, 2, 77, 0xffff] {
            let sub = net.nth_subnet(64, n).unwrap();
            assert!(net.contains_subnet(&sub));
            assert_eq!(net.subnet_index(&sub), Some(n));
        }
        assert_eq!(net.subnet_index(&s6("fd11::/64")), None);
        assert_eq!(net.subnet_index(&s6("fd00::/8")), None);
        assert_eq!(all.subnet_index(&all), Some(0));
        assert_eq!(all.subnet_index(&s6("::5/128")), Some(5));
    }
}
