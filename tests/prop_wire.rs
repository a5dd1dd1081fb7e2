//! Property tests of the packet layer: encap then decap is the identity for every valid
//! inner packet, segmenting then coalescing gives the super-packet back (IPv4 and IPv6), and
//! no input makes any parser panic.

use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use weft::buf::PacketBuf;
use weft::encap::{self, VxlanRx};
use weft::wire::icmpv4::{self, Unreachable};
use weft::wire::icmpv6;
use weft::wire::ipv4::{Ipv4Repr, Protocol};
use weft::wire::{EthernetAddress, Ipv4Packet, Subnet, Vni};

fn ipv4_packet(src: u32, dst: u32, proto: u8, ttl: u8, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 20 + payload.len()];
    Ipv4Repr {
        src: Ipv4Addr::from(src),
        dst: Ipv4Addr::from(dst),
        protocol: Protocol::from(proto),
        payload_len: payload.len() as u16,
        ttl,
        dscp_ecn: 0,
        ident: (src ^ dst) as u16,
        dont_frag: true,
    }
    .emit(&mut Ipv4Packet::new_unchecked(&mut b[..]));
    b[20..].copy_from_slice(payload);
    b
}

fn mac() -> impl Strategy<Value = EthernetAddress> {
    any::<[u8; 6]>().prop_map(|mut m| {
        m[0] = (m[0] | 0x02) & !0x01;
        EthernetAddress(m)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn vxlan_encap_then_decap_is_identity(
        src in any::<u32>(), dst in any::<u32>(), proto in any::<u8>(), ttl in any::<u8>(),
        payload in proptest::collection::vec(any::<u8>(), 0..1480),
        vni in 0u32..=Vni::MAX, local in mac(), peer in mac(), pad in 0usize..32,
    ) {
        let inner = ipv4_packet(src, dst, proto, ttl, &payload);
        let vni = Vni::new(vni).unwrap();
        let mut buf = PacketBuf::new(2048, 64);
        buf.fill_from(&inner).unwrap();
        encap::encap_vxlan(&mut buf, &encap::vxlan_header(vni, local, peer)).unwrap();
        let wire_len = buf.len();
        buf.set_len(wire_len + pad); // trailing padding must be ignored
        let rx = VxlanRx { vni, vtep_mac: peer };
        let (s, d) = encap::decap_vxlan_in_place(&mut buf, &rx).unwrap();
        prop_assert_eq!(buf.as_slice(), &inner[..]);
        prop_assert_eq!((u32::from(s), u32::from(d)), (src, dst));
    }

    #[test]
    fn udp_backend_round_trip(
        src in any::<u32>(), dst in any::<u32>(),
        payload in proptest::collection::vec(any::<u8>(), 0..1480),
    ) {
        let inner = ipv4_packet(src, dst, 17, 64, &payload);
        let i = encap::decap_udp(&inner).unwrap();
        prop_assert_eq!(i.packet, &inner[..]);
        prop_assert_eq!(encap::outbound_dst(&inner), Ok(Ipv4Addr::from(dst)));
    }

    #[test]
    fn decap_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let rx = VxlanRx { vni: Vni::new(1).unwrap(), vtep_mac: EthernetAddress([2, 0, 0, 0, 0, 2]) };
        let _ = encap::decap_vxlan(&data, &rx);
        let _ = encap::decap_udp(&data);
        let _ = encap::outbound_dst(&data);
        let _ = encap::flow_hash(&data);
        let mut buf = PacketBuf::new(data.len() + 128, 64);
        buf.fill_from(&data).unwrap();
        let _ = encap::decap_vxlan_in_place(&mut buf, &rx);
        let mut out = [0u8; 600];
        let _ = icmpv4::write_unreachable(&data, Ipv4Addr::new(10, 1, 1, 0), Unreachable::Net, &mut out);
        let _ = encap::outbound_dst6(&data);
        let _ = encap::flow_hash6(&data);
        let mut out6 = [0u8; icmpv6::MAX_ERROR_LEN];
        let gw = Ipv6Addr::new(0xfd10, 0, 0, 1, 0, 0, 0, 0);
        let _ = icmpv6::write_unreachable(&data, gw, icmpv6::Unreachable::NoRoute, &mut out6);
        let _ = icmpv6::write_packet_too_big(&data, gw, 1280, &mut out6);
    }

    #[test]
    fn mutated_valid_datagrams_never_panic(
        payload in proptest::collection::vec(any::<u8>(), 0..200),
        flips in proptest::collection::vec((0usize..260, any::<u8>()), 1..8),
        cut in 0usize..260,
    ) {
        let inner = ipv4_packet(0x0a01_0102, 0x0a01_0202, 6, 64, &payload);
        let rx = VxlanRx { vni: Vni::new(1).unwrap(), vtep_mac: EthernetAddress([2, 0, 0, 0, 0, 2]) };
        let mut d = vec![0u8; 22 + inner.len()];
        encap::encap_vxlan_into(&inner, &encap::vxlan_header(rx.vni, EthernetAddress([2, 0, 0, 0, 0, 1]), rx.vtep_mac), &mut d).unwrap();
        for (i, v) in flips {
            if let Some(b) = d.get_mut(i) { *b ^= v; }
        }
        d.truncate(cut.min(d.len()));
        if let Ok(i) = encap::decap_vxlan(&d, &rx) {
            prop_assert!(Ipv4Packet::new_checked(i.packet).unwrap().verify_checksum());
        }
    }

    #[test]
    fn subnet_contains_agrees_with_masking(addr in any::<u32>(), len in 0u8..=32, probe in any::<u32>()) {
        let s = Subnet::containing(Ipv4Addr::from(addr), len).unwrap();
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
        prop_assert_eq!(s.contains(Ipv4Addr::from(probe)), probe & mask == addr & mask);
        prop_assert_eq!(s.to_string().parse::<Subnet>().unwrap(), s);
        prop_assert_eq!(Subnet::from_key_str(&s.key_string()).unwrap(), s);
    }

    #[test]
    fn ttl_decrement_keeps_header_valid(
        src in any::<u32>(), dst in any::<u32>(), ttl in 1u8..=255,
    ) {
        let mut p = ipv4_packet(src, dst, 1, ttl, &[]);
        let mut v = Ipv4Packet::new_unchecked(&mut p[..]);
        prop_assert_eq!(v.decrement_ttl(), ttl - 1);
        prop_assert!(v.verify_checksum());
    }
}

mod tcp_offload {
    use super::*;
    use weft::fixtures::{Tcp4, Tcp6};
    use weft::gro::{Coalescer, Offer};
    use weft::gso::{segment_tcp4, segment_tcp6, segment_tcp6_headers};
    use weft::offload::{VnetHdr, GSO_TCPV4, GSO_TCPV6, VNET_HDR_LEN};
    use weft::wire::icmpv6::{self, Icmpv6Packet};
    use weft::wire::ipv6::Ipv6Packet;
    use weft::wire::tcp::{ACK, PSH};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Segmenting a super-packet and coalescing the segments gives back its payload,
        /// headers and a GSO header whose segment size is the MSS.
        #[test]
        fn segment_then_coalesce(
            payload in proptest::collection::vec(any::<u8>(), 1..20_000),
            mss in 500usize..1500, seq in any::<u32>(), psh in any::<bool>(),
        ) {
            let flags = ACK | if psh { PSH } else { 0 };
            let p = Tcp4::new(flags, seq).build(&payload);
            let mut out = vec![0u8; 40_000];
            let t = segment_tcp4(&p, mss, &[], &mut out).unwrap();
            prop_assert_eq!(t.count, payload.len().div_ceil(mss));
            let mut c = Coalescer::new();
            for s in out[..t.total].chunks(t.seg_len) {
                prop_assert_eq!(c.offer(s), Offer::Taken);
            }
            let merged = c.flush(1450).unwrap().to_vec();
            let hdr = VnetHdr::from_bytes(&merged).unwrap();
            let pkt = &merged[VNET_HDR_LEN..];
            prop_assert_eq!(pkt.len(), p.len());
            prop_assert_eq!(&pkt[40..], &p[40..]);
            prop_assert_eq!(&pkt[20..36], &p[20..36]);
            if t.count > 1 {
                prop_assert_eq!(hdr.gso_type, GSO_TCPV4);
                prop_assert_eq!(usize::from(hdr.gso_size), mss);
            }
        }

        /// The same for TCP over IPv6 (traffic class and flow label carried through): the
        /// merged packet is the original but for the TCP checksum, now the partial value.
        #[test]
        fn segment_then_coalesce_ipv6(
            payload in proptest::collection::vec(any::<u8>(), 1..20_000),
            mss in 500usize..1500, seq in any::<u32>(), psh in any::<bool>(),
            tc in any::<u8>(), flow in 0u32..1 << 20,
        ) {
            let flags = ACK | if psh { PSH } else { 0 };
            let mut spec = Tcp6::new(flags, seq);
            (spec.traffic_class, spec.flow_label) = (tc, flow);
            let p = spec.build(&payload);
            let mut out = vec![0u8; 40_000];
            let t = segment_tcp6(&p, mss, &[], &mut out).unwrap();
            prop_assert_eq!(t.count, payload.len().div_ceil(mss));
            let mut c = Coalescer::new();
            for s in out[..t.total].chunks(t.seg_len) {
                prop_assert_eq!(c.offer(s), Offer::Taken);
            }
            let merged = c.flush(1450).unwrap().to_vec();
            let hdr = VnetHdr::from_bytes(&merged).unwrap();
            let pkt = &merged[VNET_HDR_LEN..];
            prop_assert_eq!(pkt.len(), p.len());
            prop_assert_eq!(&pkt[..56], &p[..56]);
            prop_assert_eq!(&pkt[58..], &p[58..]);
            if t.count > 1 {
                prop_assert_eq!(hdr.gso_type, GSO_TCPV6);
                prop_assert_eq!(usize::from(hdr.gso_size), mss);
                prop_assert_eq!((hdr.csum_start, hdr.hdr_len), (40, 72));
            }
        }

        /// IPv6 header-only segmentation gathers to the copied train, as for IPv4.
        #[test]
        fn header_segments_gather_to_the_train_ipv6(
            payload in proptest::collection::vec(any::<u8>(), 0..20_000),
            mss in 1usize..3000, seq in any::<u32>(), prefix_len in 0usize..60,
        ) {
            let p = Tcp6::new(PSH | ACK, seq).build(&payload);
            let prefix = vec![0x42u8; prefix_len];
            let mut out = vec![0u8; 200_000];
            let mut hdrs = vec![0u8; 64 * 1024];
            let copied = segment_tcp6(&p, mss, &prefix, &mut out);
            let gathered = segment_tcp6_headers(&p, mss, &prefix, &mut hdrs);
            match (copied, gathered) {
                (Ok(t), Ok(s)) => {
                    prop_assert_eq!((t.count, t.seg_len, t.total), (s.count, s.seg_len(), s.total()));
                    let bytes: Vec<u8> = s.parts(&hdrs, &p, 0..s.count).flatten().copied().collect();
                    prop_assert_eq!(&bytes[..], &out[..t.total]);
                }
                (Ok(_), Err(e)) => prop_assert_eq!(e, weft::gso::GsoError::NoRoom),
                (Err(a), Err(b)) => prop_assert!(a == b || b == weft::gso::GsoError::NoRoom),
                (Err(e), Ok(_)) => prop_assert!(false, "copy failed ({e}) where headers did not"),
            }
        }

        /// A valid TCP/IPv6 packet with bytes flipped and cut: no offload function, parser or
        /// ICMPv6 writer panics, and an ICMPv6 error written about it is valid.
        #[test]
        fn mutated_ipv6_packets_never_panic(
            payload in proptest::collection::vec(any::<u8>(), 0..3000),
            flips in proptest::collection::vec((0usize..120, any::<u8>()), 0..6),
            cut in 0usize..3100, mss in 0usize..2000,
        ) {
            let mut p = Tcp6::new(PSH | ACK, 1).build(&payload);
            for (i, v) in flips {
                if let Some(b) = p.get_mut(i) { *b ^= v; }
            }
            p.truncate(cut.max(1));
            let mut out = vec![0u8; 12_000];
            let _ = segment_tcp6(&p, mss, &[0; 22], &mut out);
            if let Ok(s) = segment_tcp6_headers(&p, mss, &[0; 22], &mut out) {
                let _ = s.parts(&out, &p, 0..s.count + 1).count();
            }
            let mut c = Coalescer::new();
            let _ = c.offer(&p);
            let _ = c.offer(&p);
            let _ = c.flush(1450);
            let _ = weft::encap::flow_hash(&p);
            let _ = weft::encap::outbound_dst6(&p);
            let mut d = p.clone();
            let _ = weft::offload::tun_write_hdr(&mut d, 1450);
            if let Ok(ip) = Ipv6Packet::new_checked(&p[..]) {
                let _ = (ip.traffic_class(), ip.flow_label(), ip.payload(), ip.upper_layer());
            }
            let gw = Ipv6Addr::new(0xfd10, 0, 0, 1, 0, 0, 0, 0);
            let mut reply = [0u8; icmpv6::MAX_ERROR_LEN];
            if let Ok(n) = icmpv6::write_packet_too_big(&p, gw, 1280, &mut reply) {
                let ip = Ipv6Packet::new_checked(&reply[..n]).unwrap();
                prop_assert_eq!(ip.packet().len(), n);
                let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
                prop_assert!(icmp.verify_checksum(gw, ip.dst_addr()));
            }
        }

        /// The data path's header-only segmentation, its parts gathered in order, is byte
        /// for byte the copied train.
        #[test]
        fn header_segments_gather_to_the_train(
            payload in proptest::collection::vec(any::<u8>(), 0..20_000),
            mss in 1usize..3000, seq in any::<u32>(), prefix_len in 0usize..60,
        ) {
            let p = Tcp4::new(PSH | ACK, seq).build(&payload);
            let prefix = vec![0x42u8; prefix_len];
            let mut out = vec![0u8; 200_000];
            let mut hdrs = vec![0u8; 64 * 1024];
            let copied = segment_tcp4(&p, mss, &prefix, &mut out);
            let gathered = weft::gso::segment_tcp4_headers(&p, mss, &prefix, &mut hdrs);
            match (copied, gathered) {
                (Ok(t), Ok(s)) => {
                    prop_assert_eq!((t.count, t.seg_len, t.total), (s.count, s.seg_len(), s.total()));
                    let bytes: Vec<u8> = s.parts(&hdrs, &p, 0..s.count).flatten().copied().collect();
                    prop_assert_eq!(&bytes[..], &out[..t.total]);
                }
                // Only room may differ: the header buffer is smaller than the train's.
                (Ok(_), Err(e)) => prop_assert_eq!(e, weft::gso::GsoError::NoRoom),
                (Err(a), Err(b)) => prop_assert!(a == b || b == weft::gso::GsoError::NoRoom),
                (Err(e), Ok(_)) => prop_assert!(false, "copy failed ({e}) where headers did not"),
            }
        }

        /// Neither offload function panics on any input.
        #[test]
        fn offload_functions_never_panic(
            data in proptest::collection::vec(any::<u8>(), 0..3000), mss in 0usize..2000,
        ) {
            let mut out = vec![0u8; 8000];
            let _ = segment_tcp4(&data, mss, &[0; 22], &mut out);
            if let Ok(s) = weft::gso::segment_tcp4_headers(&data, mss, &[0; 22], &mut out) {
                let _ = s.parts(&out, &data, 0..s.count + 1).count();
            }
            let _ = segment_tcp6(&data, mss, &[0; 22], &mut out);
            if let Ok(s) = segment_tcp6_headers(&data, mss, &[0; 22], &mut out) {
                let _ = s.parts(&out, &data, 0..s.count + 1).count();
            }
            for mut c in [Coalescer::new(), Coalescer::with_udp()] {
                let _ = c.offer(&data);
                let _ = c.offer(&data);
                let _ = c.flush(1450);
            }
            let mut d = data.clone();
            let _ = weft::gso::complete_csum(&mut d, mss, 16);
            let _ = weft::offload::tun_write_hdr(&mut d, 1450);
        }
    }
}
