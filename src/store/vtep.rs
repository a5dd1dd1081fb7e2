//! The node's VTEP MACs: stable across restarts without any state of their own.
//!
//! A dual-stack vxlan node has two VTEPs (flanneld's `flannel.<VNI>` and `flannel-v6.<VNI>`),
//! so two MACs: one derived from the public IPv4 address, one from the public IPv6 address.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::wire::{EthernetAddress, Vni};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a over `bytes`, continuing from `h`.
fn fnv1a<'a>(mut h: u64, bytes: impl IntoIterator<Item = &'a u8>) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// A locally administered (bit 1 set), unicast (bit 0 clear) MAC from a hash.
fn local_unicast(h: u64) -> EthernetAddress {
    let b = h.to_be_bytes();
    EthernetAddress([(b[0] | 0x02) & !0x01, b[1], b[2], b[3], b[4], b[5]])
}

/// Derives a locally administered unicast MAC from the node's public IP and the VNI.
///
/// The same inputs always give the same MAC (FNV-1a over a fixed tag, the address and the
/// VNI), so a restarted node keeps its MAC and peers' neighbour entries stay valid. A MAC
/// found in the node's existing lease takes precedence over this one (see `store`).
pub fn derive_vtep_mac(public_ip: Ipv4Addr, vni: Vni) -> EthernetAddress {
    let h = fnv1a(
        FNV_OFFSET,
        b"weft-vtep"
            .iter()
            .chain(public_ip.octets().iter())
            .chain(vni.get().to_be_bytes().iter()),
    );
    local_unicast(h)
}

/// Derives the MAC of the IPv6 VTEP (`BackendV6Data.VtepMAC`) from the node's public IPv6
/// address and the VNI, never equal to `v4_mac`, the IPv4 VTEP's MAC.
///
/// Stable like [`derive_vtep_mac`] (FNV-1a over its own tag, the address and the VNI); in
/// the rare case the hash lands on `v4_mac` it is hashed on, which is just as stable.
pub fn derive_vtep_mac6(
    public_ipv6: Ipv6Addr,
    vni: Vni,
    v4_mac: EthernetAddress,
) -> EthernetAddress {
    let mut h = fnv1a(
        FNV_OFFSET,
        b"weft-vtep6"
            .iter()
            .chain(public_ipv6.octets().iter())
            .chain(vni.get().to_be_bytes().iter()),
    );
    loop {
        let mac = local_unicast(h);
        if mac != v4_mac {
            return mac;
        }
        h = fnv1a(h, b"again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_local_unicast_and_distinct() {
        let vni = Vni::new(1).unwrap();
        let a = derive_vtep_mac(Ipv4Addr::new(192, 168, 64, 3), vni);
        assert_eq!(a, derive_vtep_mac(Ipv4Addr::new(192, 168, 64, 3), vni));
        assert!(a.is_local() && a.is_unicast());
        // Pinned: a change here would change every node's MAC on upgrade.
        assert_eq!(a.to_string(), "ba:b2:99:8e:8e:7b");
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000u32 {
            let m = derive_vtep_mac(Ipv4Addr::from(0xc0a8_0000 + i), vni);
            assert!(m.is_local() && m.is_unicast());
            seen.insert(m);
        }
        assert_eq!(seen.len(), 1000);
        assert_ne!(
            a,
            derive_vtep_mac(Ipv4Addr::new(192, 168, 64, 3), Vni::new(2).unwrap())
        );
    }

    #[test]
    fn v6_mac_is_stable_local_unicast_and_never_the_v4_one() {
        let vni = Vni::new(1).unwrap();
        let ip6: Ipv6Addr = "fd77::3".parse().unwrap();
        let v4 = derive_vtep_mac(Ipv4Addr::new(192, 168, 64, 3), vni);
        let m = derive_vtep_mac6(ip6, vni, v4);
        assert_eq!(m, derive_vtep_mac6(ip6, vni, v4));
        assert!(m.is_local() && m.is_unicast());
        assert_ne!(m, v4);
        // Pinned: a change here would change every dual-stack node's IPv6 VTEP MAC.
        assert_eq!(m.to_string(), "0e:59:6e:aa:8b:a6");
        assert_ne!(m, derive_vtep_mac6(ip6, Vni::new(2).unwrap(), v4));
        // Even when the IPv4 MAC is exactly what the IPv6 hash gives, they differ.
        let clash = derive_vtep_mac6(ip6, vni, m);
        assert_ne!(clash, m);
        assert!(clash.is_local() && clash.is_unicast());
        assert_eq!(clash, derive_vtep_mac6(ip6, vni, m));
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000u128 {
            let m = derive_vtep_mac6(Ipv6Addr::from(0xfd77_u128 << 112 | i), vni, v4);
            assert!(m.is_local() && m.is_unicast() && m != v4);
            seen.insert(m);
        }
        assert_eq!(seen.len(), 1000);
    }
}
