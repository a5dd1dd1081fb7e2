//! Fuzzes vxlan decapsulation, both the slice form and the in-place buffer form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft::buf::PacketBuf;
use weft::encap::{self, VxlanRx, VXLAN_ENCAP_LEN};
use weft::wire::{EthernetAddress, Vni};

fuzz_target!(|data: &[u8]| {
    let rx = VxlanRx {
        vni: Vni::new(1).expect("1 is a VNI"),
        vtep_mac: EthernetAddress([0x5e, 0xa4, 0x8b, 0x11, 0x22, 0x33]),
    };
    let slice = encap::decap_vxlan(data, &rx);
    if let Ok(inner) = &slice {
        assert_eq!(inner.offset, VXLAN_ENCAP_LEN);
        assert_eq!(
            &data[inner.offset..inner.offset + inner.packet.len()],
            inner.packet
        );
        // Re-encapsulating the accepted inner packet yields an accepted datagram again.
        let header = encap::vxlan_header(rx.vni, EthernetAddress([2, 0, 0, 0, 0, 1]), rx.vtep_mac);
        let mut out = vec![0u8; VXLAN_ENCAP_LEN + inner.packet.len()];
        let again = encap::encap_vxlan_into(inner.packet, &header, &mut out).expect("room");
        assert_eq!(
            encap::decap_vxlan(again, &rx).map(|i| i.packet),
            Ok(inner.packet)
        );
    }
    let mut buf = PacketBuf::new(data.len() + 128, 64);
    buf.fill_from(data).expect("sized to fit");
    let in_place = encap::decap_vxlan_in_place(&mut buf, &rx);
    assert_eq!(in_place.is_ok(), slice.is_ok());
    if let Ok(inner) = slice {
        assert_eq!(buf.as_slice(), inner.packet);
    }
});
