//! Fuzzes the IPv4, UDP, ICMPv4 and IPv6 views: after `new_checked` no accessor may panic;
//! building an ICMP unreachable about any input either refuses or yields a valid packet.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use weft::wire::icmpv4::{self, Unreachable};
use weft::wire::ipv4::Ipv4Repr;
use weft::wire::{Icmpv4Packet, Ipv4Packet, Ipv6Packet, UdpPacket};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Ipv4Packet::new_checked(data) {
        let _ = (
            p.version(),
            p.ident(),
            p.ttl(),
            p.protocol(),
            p.dont_frag(),
            p.more_frags(),
        );
        let _ = (
            p.frag_offset(),
            p.src_addr(),
            p.dst_addr(),
            p.verify_checksum(),
            p.header(),
        );
        let payload = p.payload();
        assert!(payload.len() + usize::from(p.header_len()) == usize::from(p.total_len()));
        if let Ok(repr) = Ipv4Repr::parse(&p) {
            assert_eq!(
                repr.total_len(),
                usize::from(p.total_len()) - (usize::from(p.header_len()) - 20)
            );
        }
        if let Ok(u) = UdpPacket::new_checked(payload) {
            let _ = (
                u.src_port(),
                u.dst_port(),
                u.payload(),
                u.verify_checksum(p.src_addr(), p.dst_addr()),
            );
        }
        if let Ok(i) = Icmpv4Packet::new_checked(payload) {
            let _ = (
                i.msg_type(),
                i.code(),
                i.data(),
                i.verify_checksum(),
                i.is_error(),
                i.next_hop_mtu(),
            );
        }
    }
    if let Ok(p) = Ipv6Packet::new_checked(data) {
        let _ = (p.next_header(), p.hop_limit(), p.src_addr(), p.dst_addr());
    }
    let mut out = [0u8; icmpv4::MAX_ERROR_LEN];
    if let Ok(n) =
        icmpv4::write_unreachable(data, Ipv4Addr::new(10, 1, 1, 0), Unreachable::Net, &mut out)
    {
        let reply = Ipv4Packet::new_checked(&out[..n]).expect("reply parses");
        assert!(reply.verify_checksum());
        assert!(Icmpv4Packet::new_checked(reply.payload())
            .expect("icmp")
            .verify_checksum());
    }
});
