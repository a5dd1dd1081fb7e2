//! Fuzzes the TCP/IPv6 offload functions: segmentation (GSO_TCPV6), coalescing, the virtio-net
//! header choice and the flow hash. No input may panic; whatever segments coalesces back to
//! the same length; a valid super-packet carrying the input as payload coalesces back to
//! itself but for the TCP checksum.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft::fixtures::Tcp6;
use weft::gro::{Coalescer, Offer};
use weft::gso::{segment_tcp6, segment_tcp6_headers};
use weft::offload::{VnetHdr, GSO_TCPV6, VNET_HDR_LEN};
use weft::wire::tcp::{ACK, PSH};

fuzz_target!(|data: &[u8]| {
    let Some((&m, packet)) = data.split_first() else {
        return;
    };
    let mss = 200 + usize::from(m) * 5;
    round_trip(packet, mss, u32::from(m) << 24, m);
    let mut out = vec![0u8; 200_000];
    if let Ok(t) = segment_tcp6(packet, mss, &[], &mut out) {
        let mut c = Coalescer::new();
        let mut merged_all = true;
        for s in out[..t.total].chunks(t.seg_len) {
            merged_all &= c.offer(s) == Offer::Taken;
        }
        if merged_all && t.count > 1 {
            let total = 40 + usize::from(u16::from_be_bytes([packet[4], packet[5]]));
            let merged = c.flush(1450).expect("open");
            assert_eq!(merged.len() - VNET_HDR_LEN, total);
        }
    }
    let mut hdrs = vec![0u8; 64 * 1024];
    if let (Ok(s), Ok(t)) = (
        segment_tcp6_headers(packet, mss, &[7; 22], &mut hdrs),
        segment_tcp6(packet, mss, &[7; 22], &mut out),
    ) {
        let gathered: Vec<u8> = s
            .parts(&hdrs, packet, 0..s.count)
            .flatten()
            .copied()
            .collect();
        assert_eq!(&gathered[..], &out[..t.total]);
    }
    let mut c = Coalescer::with_udp();
    let _ = c.offer(packet);
    let _ = c.offer(packet);
    let _ = c.flush(1450);
    let _ = weft::encap::flow_hash(packet);
    let _ = weft::encap::outbound_dst6(packet);
    let mut p = packet.to_vec();
    let h = weft::offload::tun_write_hdr(&mut p, 1450);
    // An offload is claimed only for IPv4 or IPv6, with the checksum right after the IP
    // header (the fixed 40 bytes for IPv6, the IHL's for IPv4).
    if h.gso_type != 0 {
        match packet[0] >> 4 {
            6 => assert_eq!(h.csum_start, 40),
            4 => assert_eq!(usize::from(h.csum_start), usize::from(packet[0] & 0xf) * 4),
            v => panic!("an offload claimed for IP version {v}"),
        }
    }
});

/// Segments a valid IPv6 super-packet (the fixture flow, `payload` after its headers) and
/// coalesces the segments: every one merges, and the result is the original but for the TCP
/// checksum, with a GSO_TCPV6 header.
fn round_trip(payload: &[u8], mss: usize, seq: u32, tc: u8) {
    if payload.is_empty() || payload.len() > 60_000 {
        return;
    }
    let mut spec = Tcp6::new(PSH | ACK, seq);
    spec.traffic_class = tc;
    let sp = spec.build(payload);
    let mut out = vec![0u8; 200_000];
    let t = segment_tcp6(&sp, mss, &[], &mut out).expect("a valid super-packet segments");
    let mut c = Coalescer::new();
    for s in out[..t.total].chunks(t.seg_len) {
        assert_eq!(c.offer(s), Offer::Taken);
    }
    let merged = c.flush(1450).expect("open");
    let hdr = VnetHdr::from_bytes(merged).expect("header");
    if t.count > 1 {
        assert_eq!((hdr.gso_type, usize::from(hdr.gso_size)), (GSO_TCPV6, mss));
    }
    let pkt = &merged[VNET_HDR_LEN..];
    assert_eq!(pkt.len(), sp.len());
    // The IPv6 header and the TCP header up to its checksum, then the rest.
    assert_eq!(pkt[..56], sp[..56]);
    assert_eq!(pkt[58..], sp[58..]);
}
