//! Packet builders shared by unit tests, property tests, benches and fuzz targets: one
//! definition of each test packet, built with the `wire` emitters, so a fixture carries the
//! same headers and checksums weft itself would write.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::wire::checksum;
use crate::wire::ipv4::{self, Ipv4Repr, Protocol};
use crate::wire::ipv6::{self, next_header, Ipv6Repr};
use crate::wire::tcp::TcpRepr;
use crate::wire::udp::{UdpPacket, HEADER_LEN as UDP_HEADER_LEN};
use crate::wire::{Ipv4Packet, Ipv6Packet, TcpPacket};

/// Source address of the fixture flow (a pod in 10.1.1.0/24).
pub const SRC: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 2);
/// Destination address of the fixture flow (a pod in 10.1.2.0/24).
pub const DST: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 2);
/// Source address of the IPv6 fixture flow (a pod in fd10:0:0:1::/64).
pub const SRC6: Ipv6Addr = Ipv6Addr::new(0xfd10, 0, 0, 1, 0, 0, 0, 2);
/// Destination address of the IPv6 fixture flow (a pod in fd10:0:0:2::/64).
pub const DST6: Ipv6Addr = Ipv6Addr::new(0xfd10, 0, 0, 2, 0, 0, 0, 2);
/// The timestamp option block Linux puts on every segment of a connection: NOP, NOP,
/// timestamps (RFC 7323 section 3) with value 9 and echo reply 3.
pub const TIMESTAMP_OPTIONS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 3];

/// A TCP/IPv4 segment to build with [`Tcp4::build`]: the IPv4 fields that vary between
/// fixtures and the TCP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tcp4<'a> {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// IP identification (GSO counts it up per segment; 0xfff0 shows the wrap).
    pub ident: u16,
    /// The TCP header.
    pub tcp: TcpRepr<'a>,
}

impl Tcp4<'static> {
    /// The fixture flow 10.1.1.2:40000 -> 10.1.2.2:5201 (iperf3's port) with IP ID 0xfff0,
    /// ack 7, window 512 and [`TIMESTAMP_OPTIONS`] (a 32-byte TCP header), carrying `flags`
    /// and sequence number `seq`.
    pub fn new(flags: u8, seq: u32) -> Self {
        Tcp4 {
            src: SRC,
            dst: DST,
            ident: 0xfff0,
            tcp: TcpRepr {
                src_port: 40000,
                dst_port: 5201,
                seq,
                ack: 7,
                flags,
                window: 512,
                options: &TIMESTAMP_OPTIONS,
            },
        }
    }
}

impl Tcp4<'_> {
    /// The packet, `payload` after the headers: a 20-byte IPv4 header (DF, TTL 64) and the
    /// TCP header, both checksums filled.
    pub fn build(&self, payload: &[u8]) -> Vec<u8> {
        let l4_len = self.tcp.header_len() + payload.len();
        let mut b = vec![0u8; ipv4::MIN_HEADER_LEN + l4_len];
        let ip = Ipv4Repr {
            src: self.src,
            dst: self.dst,
            protocol: Protocol::Tcp,
            payload_len: l4_len as u16,
            ttl: 64,
            dscp_ecn: 0,
            ident: self.ident,
            dont_frag: true,
        };
        ip.emit(&mut Ipv4Packet::new_unchecked(&mut b[..]));
        let mut t = TcpPacket::new_unchecked(&mut b[ipv4::MIN_HEADER_LEN..]);
        self.tcp.emit(&mut t);
        t.payload_mut().copy_from_slice(payload);
        t.fill_checksum(tcp4_pseudo_header(self.src, self.dst, l4_len));
        b
    }
}

/// A TCP/IPv6 segment to build with [`Tcp6::build`]: the IPv6 fields that vary between
/// fixtures and the TCP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tcp6<'a> {
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
    /// Traffic class.
    pub traffic_class: u8,
    /// Flow label (20 bits).
    pub flow_label: u32,
    /// The TCP header.
    pub tcp: TcpRepr<'a>,
}

impl Tcp6<'static> {
    /// The IPv6 fixture flow [fd10:0:0:1::2]:40000 -> [fd10:0:0:2::2]:5201 with flow label
    /// 0x5eed5 and the TCP header of [`Tcp4::new`] (ack 7, window 512,
    /// [`TIMESTAMP_OPTIONS`]), carrying `flags` and sequence number `seq`.
    pub fn new(flags: u8, seq: u32) -> Self {
        Tcp6 {
            src: SRC6,
            dst: DST6,
            traffic_class: 0,
            flow_label: 0x5eed5,
            tcp: Tcp4::new(flags, seq).tcp,
        }
    }
}

impl Tcp6<'_> {
    /// The packet, `payload` after the headers: the 40-byte IPv6 header (hop limit 64, TCP
    /// right after it) and the TCP header, its checksum filled.
    pub fn build(&self, payload: &[u8]) -> Vec<u8> {
        let l4_len = self.tcp.header_len() + payload.len();
        let mut b = vec![0u8; ipv6::HEADER_LEN + l4_len];
        let ip = Ipv6Repr {
            src: self.src,
            dst: self.dst,
            next_header: next_header::TCP,
            payload_len: l4_len as u16,
            hop_limit: 64,
            traffic_class: self.traffic_class,
            flow_label: self.flow_label,
        };
        ip.emit(&mut Ipv6Packet::new_unchecked(&mut b[..]));
        let mut t = TcpPacket::new_unchecked(&mut b[ipv6::HEADER_LEN..]);
        self.tcp.emit(&mut t);
        t.payload_mut().copy_from_slice(payload);
        t.fill_checksum(tcp6_pseudo_header(self.src, self.dst, l4_len));
        b
    }
}

/// `len` bytes counting 0, 1, ..., 250 and again: the period is prime, so a payload chunk
/// copied to the wrong place does not match.
pub fn counting(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// The TCP/IPv4 packet most tests use: [`Tcp4::new`]`(flags, seq)` with `payload` bytes of
/// [`counting`], checksums filled, as a peer would send it.
pub fn tcp_packet(payload: usize, flags: u8, seq: u32) -> Vec<u8> {
    Tcp4::new(flags, seq).build(&counting(payload))
}

/// The TCP/IPv6 packet most IPv6 tests use: [`Tcp6::new`]`(flags, seq)` with `payload` bytes
/// of [`counting`], its checksum filled, as a peer would send it.
pub fn tcp6_packet(payload: usize, flags: u8, seq: u32) -> Vec<u8> {
    Tcp6::new(flags, seq).build(&counting(payload))
}

/// A UDP/IPv4 datagram of the fixture flow ([`SRC`]:`sport` -> [`DST`]:7100, IP ID 7) with
/// `payload` bytes counting up from `fill`, both checksums filled.
pub fn udp_packet(payload: usize, sport: u16, fill: u8) -> Vec<u8> {
    let l4_len = UDP_HEADER_LEN + payload;
    let mut b = vec![0u8; ipv4::MIN_HEADER_LEN + l4_len];
    Ipv4Repr {
        src: SRC,
        dst: DST,
        protocol: Protocol::Udp,
        payload_len: l4_len as u16,
        ttl: 64,
        dscp_ecn: 0,
        ident: 7,
        dont_frag: true,
    }
    .emit(&mut Ipv4Packet::new_unchecked(&mut b[..]));
    let mut u = UdpPacket::new_unchecked(&mut b[ipv4::MIN_HEADER_LEN..]);
    u.set_src_port(sport);
    u.set_dst_port(7100);
    u.set_len(l4_len as u16);
    for (i, x) in u.payload_mut().iter_mut().enumerate() {
        *x = fill.wrapping_add(i as u8);
    }
    u.fill_checksum(SRC, DST);
    b
}

/// Recomputes the TCP checksum of a TCP/IPv4 or TCP/IPv6 packet (TCP right after the fixed
/// header) after a test edited it; a packet too short for its headers is left as it is.
pub fn fix_tcp_checksum(packet: &mut [u8]) {
    if ipv6::ip_version(packet) == Some(6) {
        let Ok(ip) = Ipv6Packet::new_checked(&*packet) else {
            return;
        };
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        let l4 = ipv6::HEADER_LEN..ip.packet().len();
        let len = l4.len();
        if let Ok(mut t) = TcpPacket::new_checked(&mut packet[l4]) {
            t.fill_checksum(tcp6_pseudo_header(src, dst, len));
        }
        return;
    }
    let Ok(ip) = Ipv4Packet::new_checked(&*packet) else {
        return;
    };
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let l4 = usize::from(ip.header_len())..usize::from(ip.total_len());
    let len = l4.len();
    if let Ok(mut t) = TcpPacket::new_checked(&mut packet[l4]) {
        t.fill_checksum(tcp4_pseudo_header(src, dst, len));
    }
}

/// The IPv4 pseudo-header sum of a TCP segment of `len` bytes.
fn tcp4_pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, len: usize) -> u64 {
    checksum::pseudo_header(src, dst, Protocol::Tcp.into(), len as u16)
}

/// The IPv6 pseudo-header sum of a TCP segment of `len` bytes.
fn tcp6_pseudo_header(src: Ipv6Addr, dst: Ipv6Addr, len: usize) -> u64 {
    checksum::pseudo_header6(src, dst, next_header::TCP, len as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tcp;

    #[test]
    fn tcp_packet_is_valid_and_counts() {
        let p = tcp_packet(300, tcp::PSH | tcp::ACK, 1000);
        assert_eq!(p.len(), 20 + 32 + 300);
        let ip = Ipv4Packet::new_checked(&p[..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(
            (ip.src_addr(), ip.dst_addr(), ip.ident()),
            (SRC, DST, 0xfff0)
        );
        let t = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(t.verify_checksum(tcp4_pseudo_header(SRC, DST, 332)));
        assert_eq!(
            (t.seq(), t.ack(), t.flags()),
            (1000, 7, tcp::PSH | tcp::ACK)
        );
        assert_eq!(t.options(), &TIMESTAMP_OPTIONS);
        assert_eq!(t.payload()[250..252], [250, 0]);
    }

    #[test]
    fn fix_tcp_checksum_after_an_edit() {
        let mut p = tcp_packet(10, tcp::ACK, 0);
        p[20 + 11] ^= 1;
        fix_tcp_checksum(&mut p);
        let t = TcpPacket::new_checked(&p[20..]).unwrap();
        assert!(t.verify_checksum(tcp4_pseudo_header(SRC, DST, 42)));
        fix_tcp_checksum(&mut p[..30]); // too short: untouched, no panic
        let mut q = tcp6_packet(10, tcp::ACK, 0);
        q[40 + 11] ^= 1;
        fix_tcp_checksum(&mut q);
        let t = TcpPacket::new_checked(&q[40..]).unwrap();
        assert!(t.verify_checksum(tcp6_pseudo_header(SRC6, DST6, 42)));
        fix_tcp_checksum(&mut q[..50]);
    }

    #[test]
    fn tcp6_packet_is_valid_and_counts() {
        let p = tcp6_packet(300, tcp::PSH | tcp::ACK, 1000);
        assert_eq!(p.len(), 40 + 32 + 300);
        let ip = Ipv6Packet::new_checked(&p[..]).unwrap();
        assert_eq!((ip.src_addr(), ip.dst_addr()), (SRC6, DST6));
        assert_eq!((ip.next_header(), ip.hop_limit()), (6, 64));
        assert_eq!((ip.payload_len(), ip.flow_label()), (332, 0x5eed5));
        let t = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(t.verify_checksum(ip.pseudo_header(6, 332)));
        assert_eq!(
            (t.seq(), t.ack(), t.flags()),
            (1000, 7, tcp::PSH | tcp::ACK)
        );
        assert_eq!(t.options(), &TIMESTAMP_OPTIONS);
        assert_eq!(t.payload()[250..252], [250, 0]);
    }
}
