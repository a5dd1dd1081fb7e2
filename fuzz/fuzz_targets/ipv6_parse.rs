//! Fuzzes the IPv6 and ICMPv6 views: after `new_checked` no accessor may panic; the fixed
//! header parses and emits back; the extension-header walk stays inside the packet; building
//! an ICMPv6 error about any input either refuses or yields a valid packet within 1280 bytes
//! that quotes the input.
#![no_main]

use std::net::Ipv6Addr;

use libfuzzer_sys::fuzz_target;
use weft::wire::icmpv6::{self, Unreachable};
use weft::wire::ipv6::{self, next_header, Ipv6Repr};
use weft::wire::{Icmpv6Packet, Ipv6Packet, TcpPacket, UdpPacket};

const GW: Ipv6Addr = Ipv6Addr::new(0xfd10, 0, 0, 1, 0, 0, 0, 0);

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Ipv6Packet::new_checked(data) {
        let _ = (
            p.version(),
            p.traffic_class(),
            p.flow_label(),
            p.hop_limit(),
        );
        let _ = (p.src_addr(), p.dst_addr(), p.header());
        let payload = p.payload();
        assert_eq!(payload.len(), usize::from(p.payload_len()));
        assert_eq!(p.packet().len(), ipv6::HEADER_LEN + payload.len());
        let repr = Ipv6Repr::parse(&p).expect("a checked header parses");
        let mut out = [0u8; ipv6::HEADER_LEN];
        repr.emit(&mut Ipv6Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, p.header());
        if let Ok(u) = p.upper_layer() {
            assert!(u.offset >= ipv6::HEADER_LEN && u.offset <= p.packet().len());
            // The walk goes through every header it knows, up to a non-initial fragment.
            let walked = [
                next_header::HOP_BY_HOP,
                next_header::ROUTING,
                next_header::DEST_OPTS,
                next_header::FRAGMENT,
                next_header::AH,
            ];
            assert!(u.non_initial_fragment || !walked.contains(&u.next_header));
            let l4 = &p.packet()[u.offset..];
            let pseudo = p.pseudo_header(u.next_header, l4.len() as u32);
            if let Ok(t) = TcpPacket::new_checked(l4) {
                let _ = (t.src_port(), t.dst_port(), t.seq(), t.flags(), t.payload());
                let _ = t.verify_checksum(pseudo);
            }
            if let Ok(u) = UdpPacket::new_checked(l4) {
                let _ = (u.src_port(), u.dst_port(), u.payload());
            }
            if let Ok(i) = Icmpv6Packet::new_checked(l4) {
                let _ = (
                    i.msg_type(),
                    i.code(),
                    i.mtu(),
                    i.echo_ident(),
                    i.echo_seq(),
                );
                let _ = (
                    i.data(),
                    i.is_error(),
                    i.verify_checksum(p.src_addr(), p.dst_addr()),
                );
            }
        }
    }
    let mut out = [0u8; icmpv6::MAX_ERROR_LEN];
    for ptb in [false, true] {
        let r = if ptb {
            icmpv6::write_packet_too_big(data, GW, 1280, &mut out)
        } else {
            icmpv6::write_unreachable(data, GW, Unreachable::NoRoute, &mut out)
        };
        if let Ok(n) = r {
            assert!(n <= icmpv6::MAX_ERROR_LEN);
            let reply = Ipv6Packet::new_checked(&out[..n]).expect("reply parses");
            assert_eq!(reply.packet().len(), n);
            assert_eq!(reply.next_header(), next_header::ICMPV6);
            let icmp = Icmpv6Packet::new_checked(reply.payload()).expect("icmpv6");
            assert!(icmp.is_error());
            assert!(icmp.verify_checksum(GW, reply.dst_addr()));
            let quoted = icmp.data();
            assert_eq!(quoted, &data[..quoted.len()]);
        }
    }
});
