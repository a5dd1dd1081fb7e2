//! IPv6 headers (RFC 8200): the fixed header of the inner packets weft routes, the walk over
//! extension headers to the upper layer, and the upper-layer pseudo-header sum.

use std::net::Ipv6Addr;

use super::checksum;
use super::{Result, WireError};

/// Length of the fixed IPv6 header.
pub const HEADER_LEN: usize = 40;

/// The minimum link MTU every IPv6 link carries (RFC 8200 section 5).
pub const MIN_MTU: usize = 1280;

/// Next-header values weft looks at (IANA "Assigned Internet Protocol Numbers").
pub mod next_header {
    /// Hop-by-Hop Options (RFC 8200 section 4.3).
    pub const HOP_BY_HOP: u8 = 0;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// Routing header (RFC 8200 section 4.4).
    pub const ROUTING: u8 = 43;
    /// Fragment header (RFC 8200 section 4.5).
    pub const FRAGMENT: u8 = 44;
    /// Encapsulating Security Payload (RFC 4303): opaque, ends the walk.
    pub const ESP: u8 = 50;
    /// Authentication Header (RFC 4302).
    pub const AH: u8 = 51;
    /// ICMPv6 (RFC 4443).
    pub const ICMPV6: u8 = 58;
    /// No next header (RFC 8200 section 4.7).
    pub const NO_NEXT: u8 = 59;
    /// Destination Options (RFC 8200 section 4.6).
    pub const DEST_OPTS: u8 = 60;
    /// Mobility header (RFC 6275).
    pub const MOBILITY: u8 = 135;
    /// Host Identity Protocol (RFC 7401).
    pub const HIP: u8 = 139;
    /// Shim6 (RFC 5533).
    pub const SHIM6: u8 = 140;
}

/// Whether `nh` names an IPv6 extension header (RFC 8200 section 4, RFC 7045's list) rather
/// than an upper-layer protocol.
pub fn is_extension_header(nh: u8) -> bool {
    use next_header::*;
    matches!(
        nh,
        HOP_BY_HOP | ROUTING | FRAGMENT | ESP | AH | DEST_OPTS | MOBILITY | HIP | SHIM6 | 253 | 254
    )
}

mod field {
    use core::ops::Range;
    pub const VER_TC_FLOW: Range<usize> = 0..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: Range<usize> = 8..24;
    pub const DST: Range<usize> = 24..40;
}

/// A view of an IPv6 packet's fixed header and the payload it claims.
#[derive(Debug, Clone)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv6Packet { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks that the fixed header and the payload length it claims fit the buffer and that
    /// the version is 6.
    ///
    /// `Truncated` when the buffer is shorter than 40 bytes or the header plus the payload
    /// length; `Malformed` when the version is not 6. After this succeeds no accessor panics.
    /// The buffer may be longer (link-layer padding); [`payload`](Self::payload) stops at the
    /// payload length. A jumbogram (payload length 0, RFC 2675) reads as an empty payload.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN || len < HEADER_LEN + usize::from(self.payload_len()) {
            return Err(WireError::Truncated);
        }
        if self.version() != 6 {
            return Err(WireError::Malformed);
        }
        Ok(())
    }

    /// Returns the wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn first_word(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VER_TC_FLOW];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// The version field (6).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }

    /// The traffic class (DSCP and ECN, RFC 8200 section 7).
    pub fn traffic_class(&self) -> u8 {
        (self.first_word() >> 20) as u8
    }

    /// The 20-bit flow label (RFC 6437).
    pub fn flow_label(&self) -> u32 {
        self.first_word() & 0x000f_ffff
    }

    /// The payload length field: the bytes after the fixed header, extension headers included.
    pub fn payload_len(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::LENGTH];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// The next-header field: the first extension header or the upper-layer protocol.
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    /// The hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    /// The source address.
    pub fn src_addr(&self) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buffer.as_ref()[field::SRC]);
        Ipv6Addr::from(a)
    }

    /// The destination address.
    pub fn dst_addr(&self) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buffer.as_ref()[field::DST]);
        Ipv6Addr::from(a)
    }

    /// The fixed header.
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..HEADER_LEN]
    }

    /// The bytes after the fixed header, up to the payload length.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + usize::from(self.payload_len())]
    }

    /// The header and payload, up to the payload length (without link-layer padding).
    pub fn packet(&self) -> &[u8] {
        &self.buffer.as_ref()[..HEADER_LEN + usize::from(self.payload_len())]
    }

    /// The unfolded pseudo-header sum (RFC 8200 section 8.1) of an upper-layer packet of
    /// `len` bytes and protocol `next_header` carried in this packet, for
    /// [`TcpPacket::verify_checksum`](super::tcp::TcpPacket::verify_checksum) and its
    /// kin.
    pub fn pseudo_header(&self, next_header: u8, len: u32) -> u64 {
        checksum::pseudo_header6(self.src_addr(), self.dst_addr(), next_header, len)
    }

    /// Walks the extension headers (RFC 8200 section 4) to the upper-layer header.
    ///
    /// `Truncated` when an extension header runs past the payload. The walk stops at the first
    /// header that is not Hop-by-Hop, Routing, Destination Options, Fragment or AH (ESP and
    /// unknown protocols are "upper layer" here), and after the Fragment header of a
    /// non-initial fragment, whose following bytes are no header.
    pub fn upper_layer(&self) -> Result<UpperLayer> {
        use next_header::*;
        let payload = self.payload();
        let mut nh = self.next_header();
        let mut at = 0usize;
        loop {
            let len = match nh {
                HOP_BY_HOP | ROUTING | DEST_OPTS => {
                    let l = payload.get(at + 1).ok_or(WireError::Truncated)?;
                    (usize::from(*l) + 1) * 8
                }
                AH => {
                    let l = payload.get(at + 1).ok_or(WireError::Truncated)?;
                    (usize::from(*l) + 2) * 4
                }
                FRAGMENT => 8,
                _ => {
                    return Ok(UpperLayer {
                        next_header: nh,
                        offset: HEADER_LEN + at,
                        non_initial_fragment: false,
                    })
                }
            };
            let ext = payload.get(at..at + len).ok_or(WireError::Truncated)?;
            let this = nh;
            nh = ext[0];
            at += len;
            if this == FRAGMENT && u16::from_be_bytes([ext[2], ext[3]]) & 0xfff8 != 0 {
                return Ok(UpperLayer {
                    next_header: nh,
                    offset: HEADER_LEN + at,
                    non_initial_fragment: true,
                });
            }
        }
    }
}

/// Where a packet's upper-layer header lies, found by [`Ipv6Packet::upper_layer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpperLayer {
    /// The upper-layer protocol (TCP, UDP, ICMPv6, ...).
    pub next_header: u8,
    /// Offset of the upper-layer header from the start of the packet.
    pub offset: usize,
    /// The packet is a fragment other than the first: what follows the Fragment header is
    /// the middle of the upper-layer packet, not its header.
    pub non_initial_fragment: bool,
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    fn set_first_word(&mut self, w: u32) {
        self.buffer.as_mut()[field::VER_TC_FLOW].copy_from_slice(&w.to_be_bytes());
    }

    /// Sets version 6, keeping the traffic class and flow label.
    pub fn set_version(&mut self) {
        let w = self.first_word();
        self.set_first_word(0x6000_0000 | (w & 0x0fff_ffff));
    }

    /// Sets the traffic class.
    pub fn set_traffic_class(&mut self, v: u8) {
        let w = self.first_word();
        self.set_first_word((w & 0xf00f_ffff) | u32::from(v) << 20);
    }

    /// Sets the flow label (the low 20 bits of `v`).
    pub fn set_flow_label(&mut self, v: u32) {
        let w = self.first_word();
        self.set_first_word((w & 0xfff0_0000) | (v & 0x000f_ffff));
    }

    /// Sets the payload length field.
    pub fn set_payload_len(&mut self, v: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the next-header field.
    pub fn set_next_header(&mut self, v: u8) {
        self.buffer.as_mut()[field::NEXT_HEADER] = v;
    }

    /// Sets the hop limit.
    pub fn set_hop_limit(&mut self, v: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = v;
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&a.octets());
    }

    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&a.octets());
    }

    /// The bytes after the fixed header, up to the payload length, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = HEADER_LEN + usize::from(self.payload_len());
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

/// The parsed form of an IPv6 fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Repr {
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
    /// The next-header field.
    pub next_header: u8,
    /// Payload length in bytes (extension headers included).
    pub payload_len: u16,
    /// Hop limit.
    pub hop_limit: u8,
    /// Traffic class.
    pub traffic_class: u8,
    /// Flow label (20 bits).
    pub flow_label: u32,
}

impl Ipv6Repr {
    /// Parses a checked packet's fixed header.
    pub fn parse<T: AsRef<[u8]>>(p: &Ipv6Packet<T>) -> Result<Ipv6Repr> {
        if p.version() != 6 {
            return Err(WireError::Malformed);
        }
        Ok(Ipv6Repr {
            src: p.src_addr(),
            dst: p.dst_addr(),
            next_header: p.next_header(),
            payload_len: p.payload_len(),
            hop_limit: p.hop_limit(),
            traffic_class: p.traffic_class(),
            flow_label: p.flow_label(),
        })
    }

    /// Total length of the packet this header describes.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + usize::from(self.payload_len)
    }

    /// Writes the 40-byte fixed header; the buffer must hold at least 40 bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Ipv6Packet<T>) {
        p.set_first_word(
            0x6000_0000 | u32::from(self.traffic_class) << 20 | (self.flow_label & 0x000f_ffff),
        );
        p.set_payload_len(self.payload_len);
        p.set_next_header(self.next_header);
        p.set_hop_limit(self.hop_limit);
        p.set_src_addr(self.src);
        p.set_dst_addr(self.dst);
    }
}

/// The IP version in the first nibble of a packet, or `None` for an empty buffer.
pub fn ip_version(packet: &[u8]) -> Option<u8> {
    packet.first().map(|b| b >> 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ICMPv6 echo request fd10:0:0:1::2 -> fd10:0:0:2::2 as ping sends it, traffic class
    /// 0xb8 (EF), flow label 0x12345, hop limit 64, 4 bytes of payload after the header.
    static PACKET: [u8; 44] = [
        0x6b, 0x81, 0x23, 0x45, 0x00, 0x04, 58, 64, 0xfd, 0x10, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0,
        0, 2, 0xfd, 0x10, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2, 0xde, 0xad, 0xbe, 0xef,
    ];

    fn src() -> Ipv6Addr {
        "fd10:0:0:1::2".parse().unwrap()
    }

    fn dst() -> Ipv6Addr {
        "fd10:0:0:2::2".parse().unwrap()
    }

    #[test]
    fn deconstruct() {
        let p = Ipv6Packet::new_checked(&PACKET[..]).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!(p.traffic_class(), 0xb8);
        assert_eq!(p.flow_label(), 0x12345);
        assert_eq!(p.payload_len(), 4);
        assert_eq!(p.next_header(), next_header::ICMPV6);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!((p.src_addr(), p.dst_addr()), (src(), dst()));
        assert_eq!(p.header(), &PACKET[..40]);
        assert_eq!(p.payload(), &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(p.packet(), &PACKET[..]);
        assert_eq!(ip_version(&PACKET), Some(6));
        assert_eq!(ip_version(&[]), None);
        assert_eq!(
            p.upper_layer(),
            Ok(UpperLayer {
                next_header: 58,
                offset: 40,
                non_initial_fragment: false
            })
        );
    }

    #[test]
    fn construct_over_junk_and_round_trip() {
        let repr = Ipv6Repr::parse(&Ipv6Packet::new_checked(&PACKET[..]).unwrap()).unwrap();
        assert_eq!(repr.total_len(), 44);
        let mut out = [0xa5u8; 44];
        let mut p = Ipv6Packet::new_unchecked(&mut out[..]);
        repr.emit(&mut p);
        p.payload_mut().copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(out, PACKET);
    }

    #[test]
    fn setters_touch_only_their_bits() {
        let mut b = PACKET;
        let mut p = Ipv6Packet::new_unchecked(&mut b[..]);
        p.set_traffic_class(0x01);
        assert_eq!((p.version(), p.flow_label()), (6, 0x12345));
        p.set_flow_label(0xfff_ffff); // only 20 bits land
        assert_eq!((p.traffic_class(), p.flow_label()), (0x01, 0xfffff));
        p.set_hop_limit(1);
        p.set_next_header(next_header::TCP);
        p.set_payload_len(3);
        p.set_src_addr(dst());
        p.set_dst_addr(src());
        assert_eq!(b[..8], [0x60, 0x1f, 0xff, 0xff, 0, 3, 6, 1]);
        let p = Ipv6Packet::new_checked(&b[..]).unwrap();
        assert_eq!((p.src_addr(), p.dst_addr()), (dst(), src()));
        assert_eq!(p.payload().len(), 3, "padding is not payload");
        let mut v = [0u8; 40];
        let mut p = Ipv6Packet::new_unchecked(&mut v[..]);
        p.set_flow_label(7);
        p.set_version();
        assert_eq!(v[..4], [0x60, 0, 0, 7]);
    }

    #[test]
    fn length_errors() {
        assert_eq!(
            Ipv6Packet::new_checked(&PACKET[..39]).unwrap_err(),
            WireError::Truncated
        );
        assert_eq!(
            Ipv6Packet::new_checked(&PACKET[..43]).unwrap_err(),
            WireError::Truncated
        );
        let mut b = PACKET;
        b[0] = 0x40;
        assert_eq!(
            Ipv6Packet::new_checked(&b[..]).unwrap_err(),
            WireError::Malformed
        );
        assert_eq!(
            Ipv6Repr::parse(&Ipv6Packet::new_unchecked(&b[..])).unwrap_err(),
            WireError::Malformed
        );
    }

    #[test]
    fn pseudo_header_is_the_checksum_modules() {
        let p = Ipv6Packet::new_checked(&PACKET[..]).unwrap();
        assert_eq!(
            p.pseudo_header(58, 4),
            checksum::pseudo_header6(src(), dst(), 58, 4)
        );
    }

    /// A packet whose payload is `ext` (extension headers, then 8 upper-layer bytes).
    fn with_extensions(first: u8, ext: &[u8]) -> Vec<u8> {
        let mut b = PACKET[..40].to_vec();
        b[6] = first;
        b.extend_from_slice(ext);
        let len = b.len() as u16 - 40;
        b[4..6].copy_from_slice(&len.to_be_bytes());
        b
    }

    #[test]
    fn walks_extension_headers() {
        use next_header::*;
        // Hop-by-hop (8 bytes, PadN), destination options (16 bytes), AH (12 bytes), a first
        // fragment (offset 0, M set), then TCP.
        let mut ext = vec![DEST_OPTS, 0, 1, 4, 0, 0, 0, 0];
        ext.extend_from_slice(&[AH, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        ext.extend_from_slice(&[FRAGMENT, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        ext.extend_from_slice(&[TCP, 0, 0x00, 0x01, 0, 0, 0, 9]);
        ext.extend_from_slice(&[0; 8]);
        let b = with_extensions(HOP_BY_HOP, &ext);
        let p = Ipv6Packet::new_checked(&b[..]).unwrap();
        assert_eq!(
            p.upper_layer(),
            Ok(UpperLayer {
                next_header: TCP,
                offset: 40 + 8 + 16 + 12 + 8,
                non_initial_fragment: false
            })
        );
        // A non-initial fragment stops the walk at its Fragment header.
        let frag = with_extensions(FRAGMENT, &[ROUTING, 0, 0x05, 0x00, 0, 0, 0, 9, 1, 2]);
        let p = Ipv6Packet::new_checked(&frag[..]).unwrap();
        assert_eq!(
            p.upper_layer(),
            Ok(UpperLayer {
                next_header: ROUTING,
                offset: 48,
                non_initial_fragment: true
            })
        );
        // An extension header running past the payload.
        for cut in [0, 1, 7] {
            let t = with_extensions(ROUTING, &[TCP, 0, 0, 0, 0, 0, 0, 0][..cut]);
            let p = Ipv6Packet::new_checked(&t[..]).unwrap();
            assert_eq!(p.upper_layer(), Err(WireError::Truncated), "cut {cut}");
        }
        // ESP and no-next-header end the walk as they are.
        let esp = with_extensions(ESP, &[0; 8]);
        let p = Ipv6Packet::new_checked(&esp[..]).unwrap();
        assert_eq!(p.upper_layer().unwrap().next_header, ESP);
        assert!(is_extension_header(ESP) && is_extension_header(FRAGMENT));
        assert!(!is_extension_header(TCP) && !is_extension_header(ICMPV6));
        assert!(!is_extension_header(NO_NEXT));
    }
}
