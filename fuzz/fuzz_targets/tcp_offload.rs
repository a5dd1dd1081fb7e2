//! Fuzzes the offload functions: TCP segmentation (GSO), TCP and UDP coalescing (GRO), checksum
//! completion and the TUN virtio-net header choice. No input may panic; whatever segments,
//! coalesces back to the same payload; a valid super-packet carrying the input as payload
//! coalesces back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft::fixtures::Tcp4;
use weft::gro::{Coalescer, Offer};
use weft::gso::{complete_csum, segment_tcp4, segment_tcp4_headers};
use weft::offload::VNET_HDR_LEN;
use weft::wire::tcp::{ACK, PSH};

fuzz_target!(|data: &[u8]| {
    let Some((&m, packet)) = data.split_first() else {
        return;
    };
    let mss = 200 + usize::from(m) * 5;
    round_trip(packet, mss, u32::from(m) << 24);
    let mut out = vec![0u8; 200_000];
    if let Ok(t) = segment_tcp4(packet, mss, &[], &mut out) {
        let mut c = Coalescer::new();
        let mut merged_all = true;
        for s in out[..t.total].chunks(t.seg_len) {
            merged_all &= c.offer(s) == Offer::Taken;
        }
        if merged_all && t.count > 1 {
            // Every segment merged: the super-packet is the original's length again.
            let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
            let merged = c.flush(1450).expect("open");
            assert_eq!(merged.len() - 10, total);
        }
    }
    // The data path's form: headers apart, payload gathered in place, the same bytes.
    let mut hdrs = vec![0u8; 64 * 1024];
    if let (Ok(s), Ok(t)) = (
        segment_tcp4_headers(packet, mss, &[7; 22], &mut hdrs),
        segment_tcp4(packet, mss, &[7; 22], &mut out),
    ) {
        let gathered: Vec<u8> = s.parts(&hdrs, packet, 0..s.count).flatten().copied().collect();
        assert_eq!(&gathered[..], &out[..t.total]);
    }
    for mut c in [Coalescer::new(), Coalescer::with_udp()] {
        let _ = c.offer(packet);
        let _ = c.offer(packet);
        let _ = c.flush(1450);
    }
    let mut p = packet.to_vec();
    let _ = complete_csum(&mut p, mss % 64, 16);
    let _ = weft::offload::tun_write_hdr(&mut p, 1450);
});

/// Segments a valid super-packet (the fixture flow, `payload` after its headers) and coalesces
/// the segments: every one merges, and the result is the original but for the IP ID and the
/// checksums.
fn round_trip(payload: &[u8], mss: usize, seq: u32) {
    if payload.is_empty() || payload.len() > 60_000 {
        return;
    }
    let sp = Tcp4::new(PSH | ACK, seq).build(payload);
    let mut out = vec![0u8; 200_000];
    let t = segment_tcp4(&sp, mss, &[], &mut out).expect("a valid super-packet segments");
    let mut c = Coalescer::new();
    for s in out[..t.total].chunks(t.seg_len) {
        assert_eq!(c.offer(s), Offer::Taken);
    }
    let merged = c.flush(1450).expect("open");
    let pkt = &merged[VNET_HDR_LEN..];
    assert_eq!(pkt.len(), sp.len());
    // IPv4 fields before the ID, then the TCP header up to its checksum, then the rest.
    assert_eq!(pkt[..4], sp[..4]);
    assert_eq!(pkt[20..36], sp[20..36]);
    assert_eq!(pkt[38..], sp[38..]);
}
