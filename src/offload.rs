//! Offload metadata for packets weft writes into the TUN: the virtio-net header
//! (IFF_VNET_HDR) that lets the kernel finish a partial checksum or segment a TCP
//! super-packet, so kernel VXLAN peers whose offloads cross a veth unsegmented still work
//! (DESIGN.md, "Kernel VXLAN peers over veth").

use crate::wire::checksum;
use crate::wire::ipv4::Protocol;
use crate::wire::ipv6::{self, next_header};
use crate::wire::tcp::{self, TcpPacket};
use crate::wire::{Ipv4Packet, Ipv6Packet, UdpPacket};

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the kernel must complete the checksum at csum_start +
/// csum_offset, whose field holds the pseudo-header sum.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV6`: a TCP/IPv6 super-packet.
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_UDP_L4`: a UDP super-packet (USO), split into datagrams of
/// `gso_size` payload bytes each.
pub const GSO_UDP_L4: u8 = 5;
/// `VIRTIO_NET_HDR_GSO_ECN`: the TCP super-packet carries CWR.
pub const GSO_ECN: u8 = 0x80;

/// Most datagrams one UDP super-packet carries, in either direction: the kernel's
/// `UDP_MAX_SEGMENTS` (64; Linux 6.9 raised it to 128, so 64 holds on every kernel with UDP
/// GSO). The limit of a UDP_SEGMENT send and of a USO super-packet written to the TUN.
pub const UDP_MAX_SEGMENTS: usize = 64;

/// Length of the header as the TUN exchanges it (no mergeable-buffer count).
pub const VNET_HDR_LEN: usize = 10;

/// The virtio-net header (legacy layout, native byte order as the TUN uses by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    /// `F_NEEDS_CSUM` or 0.
    pub flags: u8,
    /// `GSO_*`.
    pub gso_type: u8,
    /// Length of the headers (IP + TCP) copied in front of each segment.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts (the L4 header).
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// The header as the TUN expects it in front of a packet.
    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }

    /// Reads a header the TUN handed over; `None` when `b` is shorter than the header.
    pub fn from_bytes(b: &[u8]) -> Option<VnetHdr> {
        let b = b.get(..VNET_HDR_LEN)?;
        let u = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }
}

/// Chooses the virtio-net header for an inner IPv4 or IPv6 packet about to be written to the
/// TUN, whose MTU is `mtu`:
/// * a TCP or UDP packet whose checksum field holds the partial value (the folded
///   pseudo-header sum, as a kernel peer leaves it) gets `F_NEEDS_CSUM`;
/// * a TCP packet larger than `mtu` becomes a `GSO_TCPV4` (`GSO_TCPV6`) super-packet the
///   kernel segments (its checksum field is set to the partial value first if it held a full
///   checksum);
/// * anything else gets the empty header, as does an IPv6 packet with extension headers or an
///   IPv4 fragment.
///
/// May rewrite the TCP checksum field of `packet`; never panics on any input.
pub fn tun_write_hdr(packet: &mut [u8], mtu: usize) -> VnetHdr {
    match ipv6::ip_version(packet) {
        Some(6) => return tun_write_hdr6(packet, mtu),
        Some(4) => {}
        // Neither family: no offload is claimed for what the kernel will not parse.
        _ => return VnetHdr::default(),
    }
    let Ok(ip) = Ipv4Packet::new_checked(&*packet) else {
        return VnetHdr::default();
    };
    if ip.more_frags() || ip.frag_offset() != 0 {
        return VnetHdr::default();
    }
    let l4 = L4 {
        start: usize::from(ip.header_len()),
        end: usize::from(ip.total_len()),
        tcp: match ip.protocol() {
            Protocol::Tcp => true,
            Protocol::Udp => false,
            _ => return VnetHdr::default(),
        },
    };
    let partial = checksum::fold(checksum::pseudo_header(
        ip.src_addr(),
        ip.dst_addr(),
        u8::from(ip.protocol()),
        l4.len() as u16,
    ));
    l4.hdr(packet, partial, mtu, GSO_TCPV4)
}

/// [`tun_write_hdr`] for an IPv6 packet: TCP or UDP right after the fixed header.
fn tun_write_hdr6(packet: &mut [u8], mtu: usize) -> VnetHdr {
    let Ok(ip) = Ipv6Packet::new_checked(&*packet) else {
        return VnetHdr::default();
    };
    let nh = ip.next_header();
    let l4 = L4 {
        start: ipv6::HEADER_LEN,
        end: ip.packet().len(),
        tcp: match nh {
            next_header::TCP => true,
            next_header::UDP => false,
            _ => return VnetHdr::default(),
        },
    };
    let partial = checksum::fold(ip.pseudo_header(nh, l4.len() as u32));
    l4.hdr(packet, partial, mtu, GSO_TCPV6)
}

/// Where the TCP segment or UDP datagram of an IP packet lies.
struct L4 {
    /// Offset of the transport header (the IP header length).
    start: usize,
    /// End of the IP packet.
    end: usize,
    /// TCP (else UDP).
    tcp: bool,
}

impl L4 {
    fn len(&self) -> usize {
        self.end - self.start
    }

    /// The header for the packet `packet` whose transport checksum's partial value is
    /// `partial`; a TCP super-packet becomes `gso_type`.
    fn hdr(&self, packet: &mut [u8], partial: u16, mtu: usize, gso_type: u8) -> VnetHdr {
        let (csum_offset, min_l4) = match self.tcp {
            true => (tcp::CHECKSUM_OFFSET, tcp::MIN_HEADER_LEN),
            false => (6, 8),
        };
        if self.len() < min_l4 {
            return VnetHdr::default();
        }
        let needs_csum = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_NONE,
            hdr_len: 0,
            gso_size: 0,
            csum_start: self.start as u16,
            csum_offset: csum_offset as u16,
        };
        let l4 = &mut packet[self.start..self.end];
        if self.tcp && self.end > mtu {
            return tcp_super_packet_hdr(l4, self.start, partial, mtu, needs_csum, gso_type);
        }
        let field = if self.tcp {
            TcpPacket::new_unchecked(&*l4).checksum()
        } else {
            UdpPacket::new_unchecked(&*l4).checksum()
        };
        // A UDP checksum of zero means "none" (RFC 768), never a partial value.
        if field == partial && (self.tcp || field != 0) {
            return needs_csum;
        }
        VnetHdr::default()
    }
}

/// The `gso_type` (`GSO_TCPV4` or `GSO_TCPV6`) header (`needs_csum` with GSO added) for TCP
/// segment `l4` after an IP header of `hl` bytes, the packet larger than `mtu`; sets the
/// checksum field to the partial value `partial` the kernel needs for GSO. The empty header
/// when the TCP header length is invalid or leaves no payload under `mtu`.
fn tcp_super_packet_hdr(
    l4: &mut [u8],
    hl: usize,
    partial: u16,
    mtu: usize,
    needs_csum: VnetHdr,
    gso_type: u8,
) -> VnetHdr {
    let Ok(mut t) = TcpPacket::new_checked(l4) else {
        return VnetHdr::default();
    };
    let hdr_len = hl + usize::from(t.header_len());
    if hdr_len >= mtu {
        return VnetHdr::default();
    }
    if t.checksum() != partial {
        t.set_checksum(partial);
    }
    let ecn = if t.flags() & tcp::CWR != 0 {
        GSO_ECN
    } else {
        0
    };
    VnetHdr {
        gso_type: gso_type | ecn,
        hdr_len: hdr_len as u16,
        gso_size: (mtu - hdr_len) as u16,
        ..needs_csum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::Tcp4;
    use crate::wire::ipv4::Ipv4Repr;
    use std::net::Ipv4Addr;

    fn packet(proto: Protocol, l4: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 20 + l4.len()];
        Ipv4Repr {
            src: Ipv4Addr::new(10, 1, 15, 0),
            dst: Ipv4Addr::new(10, 1, 16, 2),
            protocol: proto,
            payload_len: l4.len() as u16,
            ttl: 64,
            dscp_ecn: 0,
            ident: 1,
            dont_frag: true,
        }
        .emit(&mut Ipv4Packet::new_unchecked(&mut b[..]));
        b[20..].copy_from_slice(l4);
        b
    }

    fn partial_of(p: &[u8]) -> u16 {
        let ip = Ipv4Packet::new_checked(p).unwrap();
        checksum::fold(checksum::pseudo_header(
            ip.src_addr(),
            ip.dst_addr(),
            u8::from(ip.protocol()),
            ip.payload().len() as u16,
        ))
    }

    /// A PSH ACK segment with a 20-byte TCP header, `payload` zero bytes and the given checksum
    /// field (the partial value when `None`).
    fn tcp(payload: usize, csum: Option<u16>) -> Vec<u8> {
        let mut t = Tcp4::new(tcp::PSH | tcp::ACK, 0);
        t.tcp.options = &[];
        let mut p = t.build(&vec![0; payload]);
        let c = csum.unwrap_or_else(|| partial_of(&p));
        tcp_mut(&mut p).set_checksum(c);
        p
    }

    /// The TCP header of an IPv4 packet with a 20-byte header, writable.
    fn tcp_mut(p: &mut [u8]) -> TcpPacket<&mut [u8]> {
        TcpPacket::new_unchecked(&mut p[20..])
    }

    #[test]
    fn header_bytes_round_trip() {
        let h = VnetHdr {
            flags: 1,
            gso_type: 1,
            hdr_len: 52,
            gso_size: 1398,
            csum_start: 20,
            csum_offset: 16,
        };
        assert_eq!(VnetHdr::from_bytes(&h.to_bytes()), Some(h));
        assert_eq!(VnetHdr::from_bytes(&[0; 9]), None);
    }

    #[test]
    fn a_packet_of_neither_family_gets_no_offload() {
        // Found by fuzz/tcp6_offload: an IPv4-shaped packet with version 0 (and 24 bytes of
        // header) was given a NEEDS_CSUM header as if it were IPv4.
        let mut p = packet(Protocol::Udp, &[0x9c, 0x41, 0x13, 0x88, 0, 0x1b, 0, 0]);
        p.extend_from_slice(b"weft golden vector\n");
        let total = p.len() as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum();
        let partial = partial_of(&p);
        p[26..28].copy_from_slice(&partial.to_be_bytes());
        let h = tun_write_hdr(&mut p.clone(), 1450);
        assert_eq!((h.flags, h.csum_start), (1, 20));
        for version in [0u8, 5, 7, 15] {
            p[0] = version << 4 | 5;
            assert_eq!(
                tun_write_hdr(&mut p, 1450),
                VnetHdr::default(),
                "version {version}"
            );
        }
    }

    #[test]
    fn partial_udp_gets_needs_csum() {
        // The kernel-captured UDP datagram from proto/golden (offloads on): field = 0x3330.
        let mut p = packet(Protocol::Udp, &[0x9c, 0x41, 0x13, 0x88, 0, 0x1b, 0, 0]);
        p.extend_from_slice(b"weft golden vector\n");
        let total = p.len() as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum();
        let partial = partial_of(&p);
        assert_eq!(partial, 0x3330);
        p[26..28].copy_from_slice(&partial.to_be_bytes());
        let h = tun_write_hdr(&mut p, 1450);
        assert_eq!(
            (h.flags, h.gso_type, h.csum_start, h.csum_offset),
            (1, 0, 20, 6)
        );
    }

    #[test]
    fn complete_checksums_get_empty_header() {
        let mut p = tcp(100, Some(0x1234));
        assert_eq!(tun_write_hdr(&mut p, 1450), VnetHdr::default());
        let mut u = packet(Protocol::Udp, &[0, 1, 0, 2, 0, 8, 0, 0]); // zero = no checksum
        assert_eq!(tun_write_hdr(&mut u, 1450), VnetHdr::default());
        let mut icmp = packet(Protocol::Icmp, &[8, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(tun_write_hdr(&mut icmp, 1450), VnetHdr::default());
    }

    #[test]
    fn partial_tcp_within_mtu_gets_needs_csum() {
        let mut p = tcp(100, None);
        let h = tun_write_hdr(&mut p, 1450);
        assert_eq!((h.flags, h.gso_type, h.csum_offset), (1, 0, 16));
    }

    #[test]
    fn tcp_super_packet_becomes_gso() {
        let mut p = tcp(7000, None);
        let h = tun_write_hdr(&mut p, 1450);
        assert_eq!(h.gso_type, GSO_TCPV4);
        assert_eq!((h.hdr_len, h.gso_size), (40, 1410));
        assert_eq!(h.flags, F_NEEDS_CSUM);
        // A full checksum is replaced by the partial value the kernel needs for GSO.
        let mut q = tcp(7000, Some(0xbeef));
        let h2 = tun_write_hdr(&mut q, 1450);
        assert_eq!(h2, h);
        assert_eq!(tcp_mut(&mut q).checksum(), partial_of(&q));
        // CWR set: the ECN GSO bit follows.
        let mut e = tcp(7000, None);
        let mut t = tcp_mut(&mut e);
        t.set_flags(t.flags() | tcp::CWR);
        assert_eq!(tun_write_hdr(&mut e, 1450).gso_type, GSO_TCPV4 | GSO_ECN);
    }

    #[test]
    fn malformed_input_gets_empty_header() {
        assert_eq!(tun_write_hdr(&mut [], 1450), VnetHdr::default());
        let mut p = tcp(7000, None);
        tcp_mut(&mut p).set_header_len(4);
        assert_eq!(tun_write_hdr(&mut p, 1450), VnetHdr::default());
        let mut short = packet(Protocol::Tcp, &[0u8; 10]);
        assert_eq!(tun_write_hdr(&mut short, 1450), VnetHdr::default());
        let mut frag = tcp(100, None);
        frag[6] = 0x20;
        assert_eq!(tun_write_hdr(&mut frag, 1450), VnetHdr::default());
    }

    /// A TCP/IPv6 fixture segment with a 20-byte TCP header, `payload` zero bytes and the
    /// given checksum field (the partial value when `None`).
    fn tcp6(payload: usize, csum: Option<u16>) -> Vec<u8> {
        let mut t = crate::fixtures::Tcp6::new(tcp::PSH | tcp::ACK, 0);
        t.tcp.options = &[];
        let mut p = t.build(&vec![0; payload]);
        let c = csum.unwrap_or_else(|| partial6_of(&p));
        TcpPacket::new_unchecked(&mut p[40..]).set_checksum(c);
        p
    }

    fn partial6_of(p: &[u8]) -> u16 {
        let ip = Ipv6Packet::new_checked(p).unwrap();
        checksum::fold(ip.pseudo_header(ip.next_header(), ip.payload().len() as u32))
    }

    /// A UDP/IPv6 datagram fd10:0:0:1::2 -> fd10:0:0:2::2 with 8 payload bytes and the
    /// checksum field `csum`.
    fn udp6(csum: u16) -> Vec<u8> {
        let mut p = tcp6(0, Some(0));
        p.truncate(40 + 16);
        p[4..6].copy_from_slice(&16u16.to_be_bytes());
        p[6] = 17;
        let mut u = UdpPacket::new_unchecked(&mut p[40..]);
        u.set_len(16);
        u.set_checksum(csum);
        p
    }

    #[test]
    fn ipv6_partial_checksums_get_needs_csum() {
        let mut p = tcp6(100, None);
        let h = tun_write_hdr(&mut p, 1450);
        assert_eq!(
            (h.flags, h.gso_type, h.csum_start, h.csum_offset),
            (F_NEEDS_CSUM, GSO_NONE, 40, 16)
        );
        let partial = partial6_of(&udp6(0));
        let mut u = udp6(partial);
        let h = tun_write_hdr(&mut u, 1450);
        assert_eq!(
            (h.flags, h.csum_start, h.csum_offset),
            (F_NEEDS_CSUM, 40, 6)
        );
        let mut full = tcp6(100, Some(0x1234));
        assert_eq!(tun_write_hdr(&mut full, 1450), VnetHdr::default());
        let mut u0 = udp6(0);
        assert_eq!(tun_write_hdr(&mut u0, 1450), VnetHdr::default());
    }

    #[test]
    fn ipv6_tcp_super_packet_becomes_gso_tcpv6() {
        let mut p = tcp6(7000, None);
        let h = tun_write_hdr(&mut p, 1450);
        assert_eq!(
            h,
            VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: GSO_TCPV6,
                hdr_len: 60,
                gso_size: 1390,
                csum_start: 40,
                csum_offset: 16,
            }
        );
        let mut q = tcp6(7000, Some(0xbeef));
        assert_eq!(tun_write_hdr(&mut q, 1450), h);
        assert_eq!(
            TcpPacket::new_unchecked(&q[40..]).checksum(),
            partial6_of(&q)
        );
        let mut e = tcp6(7000, None);
        let mut t = TcpPacket::new_unchecked(&mut e[40..]);
        t.set_flags(t.flags() | tcp::CWR);
        assert_eq!(tun_write_hdr(&mut e, 1450).gso_type, GSO_TCPV6 | GSO_ECN);
    }

    #[test]
    fn ipv6_extension_headers_and_malformed_input_get_empty_header() {
        let mut p = tcp6(7000, None);
        p[6] = next_header::HOP_BY_HOP;
        assert_eq!(tun_write_hdr(&mut p, 1450), VnetHdr::default());
        let mut icmp = tcp6(100, None);
        icmp[6] = next_header::ICMPV6;
        assert_eq!(tun_write_hdr(&mut icmp, 1450), VnetHdr::default());
        let mut short = tcp6(7000, None);
        assert_eq!(tun_write_hdr(&mut short[..100], 1450), VnetHdr::default());
        let mut bad = tcp6(7000, None);
        TcpPacket::new_unchecked(&mut bad[40..]).set_header_len(4);
        assert_eq!(tun_write_hdr(&mut bad, 1450), VnetHdr::default());
        let mut tiny = tcp6(0, None);
        tiny.truncate(40 + 10);
        tiny[4..6].copy_from_slice(&10u16.to_be_bytes());
        assert_eq!(tun_write_hdr(&mut tiny, 1450), VnetHdr::default());
    }
}
