//! The node's VTEP MAC: stable across restarts without any state of its own.

use std::net::Ipv4Addr;

use crate::wire::{EthernetAddress, Vni};

/// Derives a locally administered unicast MAC from the node's public IP and the VNI.
///
/// The same inputs always give the same MAC (FNV-1a over a fixed tag, the address and the
/// VNI), so a restarted node keeps its MAC and peers' neighbour entries stay valid. A MAC
/// found in the node's existing lease takes precedence over this one (see `store`).
pub fn derive_vtep_mac(public_ip: Ipv4Addr, vni: Vni) -> EthernetAddress {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for b in b"weft-vtep"
        .iter()
        .chain(public_ip.octets().iter())
        .chain(vni.get().to_be_bytes().iter())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(PRIME);
    }
    let b = h.to_be_bytes();
    // Locally administered (bit 1 set), unicast (bit 0 clear).
    EthernetAddress([(b[0] | 0x02) & !0x01, b[1], b[2], b[3], b[4], b[5]])
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
}
