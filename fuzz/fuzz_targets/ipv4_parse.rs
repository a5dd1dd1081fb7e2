//! Fuzzes the IPv4, UDP, TCP, ICMPv4 and IPv6 views: after `new_checked` no accessor may
//! panic; a TCP header parses and emits back (checksum and urgent pointer aside); building an
//! ICMP unreachable about any input either refuses or yields a valid packet.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use weft::wire::checksum;
use weft::wire::icmpv4::{self, Unreachable};
use weft::wire::ipv4::Ipv4Repr;
use weft::wire::tcp::TcpRepr;
use weft::wire::{Icmpv4Packet, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket};

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
        if let Ok(t) = TcpPacket::new_checked(payload) {
            let _ = (
                t.src_port(),
                t.dst_port(),
                t.seq(),
                t.ack(),
                t.flags(),
                t.window(),
            );
            let _ = (t.checksum(), t.urgent(), t.header(), t.payload());
            let pseudo =
                checksum::pseudo_header(p.src_addr(), p.dst_addr(), 6, payload.len() as u16);
            let _ = t.verify_checksum(pseudo);
            let repr = TcpRepr::parse(&t).expect("a checked header parses");
            assert_eq!(repr.header_len(), usize::from(t.header_len()));
            let mut out = vec![0u8; repr.header_len()];
            repr.emit(&mut TcpPacket::new_unchecked(&mut out[..]));
            // Everything but the reserved bits, checksum and urgent pointer comes back.
            assert_eq!(out[..12], t.header()[..12]);
            assert_eq!(out[12] >> 4, t.header()[12] >> 4);
            assert_eq!(out[13..16], t.header()[13..16]);
            assert_eq!(out[20..], *t.options());
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
