//! Fuzzes flannel udp-backend decapsulation and the outbound classification of TUN packets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft::buf::PacketBuf;
use weft::encap;

fuzz_target!(|data: &[u8]| {
    let slice = encap::decap_udp(data);
    if let Ok(inner) = &slice {
        assert_eq!(inner.offset, 0);
        assert!(inner.packet.len() <= data.len());
        assert_eq!(encap::outbound_dst(inner.packet), Ok(inner.dst));
    }
    let mut buf = PacketBuf::new(data.len() + 128, 64);
    buf.fill_from(data).expect("sized to fit");
    assert_eq!(encap::decap_udp_in_place(&mut buf).is_ok(), slice.is_ok());
    let _ = encap::outbound_dst(data);
    let _ = encap::flow_src_port(encap::flow_hash(data), 32768, 60999);
});
