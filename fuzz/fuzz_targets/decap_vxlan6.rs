//! Fuzzes the IPv6 underlay's receive checks: VXLAN decapsulation of a `flannel-v6` datagram
//! and the inner route check, as `inbound6` applies them to every received datagram.
#![no_main]

use std::net::Ipv6Addr;

use libfuzzer_sys::fuzz_target;
use weft::encap::{self, VXLAN_ENCAP_LEN};
use weft::wire::{EthernetAddress, Ipv6Packet, Subnet6, Vni};

fuzz_target!(|data: &[u8]| {
    let vni = Vni::new(1).expect("1 is a VNI");
    let mac = EthernetAddress([0x5e, 0xa4, 0x8b, 0x11, 0x22, 0x66]);
    let Ok(inner) = encap::decap_vxlan6(data, vni, mac) else {
        return;
    };
    // The inner packet is the datagram's bytes after the encapsulation, padding trimmed.
    assert!(VXLAN_ENCAP_LEN + inner.packet.len() <= data.len());
    assert_eq!(
        &data[VXLAN_ENCAP_LEN..VXLAN_ENCAP_LEN + inner.packet.len()],
        inner.packet
    );
    let p = Ipv6Packet::new_checked(inner.packet).expect("an accepted inner packet parses");
    assert_eq!((p.src_addr(), p.dst_addr()), (inner.src, inner.dst));
    // Re-encapsulating it (as weft sends) is accepted again, byte for byte.
    let header = encap::vxlan_header6(vni, EthernetAddress([2, 0, 0, 0, 0, 1]), mac);
    let mut out = vec![0u8; VXLAN_ENCAP_LEN + inner.packet.len()];
    let again = encap::encap_vxlan_into(inner.packet, &header, &mut out).expect("room");
    assert_eq!(
        encap::decap_vxlan6(again, vni, mac).map(|i| i.packet),
        Ok(inner.packet)
    );
    // The route check accepts exactly: the source's owner is the sender, the destination ours.
    let ours: Subnet6 = "fd10:0:0:2::/64".parse().expect("a subnet");
    let sender = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2);
    let verdict = encap::check_inner_route6(Some(sender), sender, inner.dst, ours);
    assert_eq!(verdict.is_ok(), ours.contains(inner.dst));
    assert!(encap::check_inner_route6(None, sender, inner.dst, ours).is_err());
});
