//! Coalescing in userspace (GRO): consecutive in-order segments of one TCP/IPv4 or TCP/IPv6
//! flow, and (when the kernel takes UDP super-packets, USO) consecutive equal-sized datagrams
//! of one UDP/IPv4 flow, decapsulated from a received batch, are merged into one super-packet
//! that the TUN takes with a virtio-net GSO header, so the kernel handles one packet where it
//! would handle forty. Every segment's checksum is verified before it is merged. Pure code over
//! caller-owned buffers; the flow table is one open super-packet (segments of a train arrive
//! back to back).

use crate::offload::{
    VnetHdr, F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, UDP_MAX_SEGMENTS as MAX_UDP_SEGMENTS,
    VNET_HDR_LEN,
};
use crate::wire::checksum;
use crate::wire::ipv4::Protocol;
use crate::wire::ipv6::{self, next_header};
use crate::wire::tcp::{self, TcpPacket};
use crate::wire::{Ipv4Packet, Ipv6Packet, UdpPacket};

/// Largest super-packet: an IPv4 packet's total-length field (IPv6 super-packets are held to
/// the same 64 KiB, as the kernel's GRO does without BIG TCP).
const MAX_IP: usize = 65535;

/// What the caller must do with a packet offered to the coalescer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Merged into the open super-packet (or opened a new one): nothing else to do.
    Taken,
    /// Not mergeable: flush the open super-packet first, then write this packet alone.
    Alone,
    /// Mergeable but not with the open one: flush it, then offer the packet again.
    FlushFirst,
    /// A data segment whose TCP checksum is wrong: drop it. (Merged, it would reach the
    /// kernel under a fresh partial checksum and its corruption would go unnoticed.)
    BadChecksum,
}

/// One open super-packet being built: `[virtio-net header | IPv4 or IPv6 | TCP | payload...]`
/// (or UDP/IPv4).
#[derive(Debug)]
pub struct Coalescer {
    buf: Box<[u8]>,
    /// Bytes of the open packet after the virtio-net header; 0 when none is open.
    len: usize,
    /// IP + TCP (UDP) header length of the open packet.
    headers: usize,
    /// Payload size of its first segment (the GSO segment size).
    seg: usize,
    /// Segments merged.
    count: usize,
    /// The sequence number the next segment must carry.
    next_seq: u32,
    /// Whether the open packet may take more (a short segment or PSH closes it).
    closed: bool,
    /// What the open packet is.
    kind: Kind,
    /// Merge UDP datagrams too (the TUN takes GSO_UDP_L4).
    uso: bool,
}

/// The protocols of an open super-packet: one value, so that one compare tells whether a
/// segment may join it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// TCP/IPv4.
    Tcp4,
    /// TCP/IPv6.
    Tcp6,
    /// UDP/IPv4.
    Udp4,
}

impl Kind {
    /// TCP over IPv6 if `v6`, else over IPv4.
    const fn tcp(v6: bool) -> Kind {
        if v6 {
            Kind::Tcp6
        } else {
            Kind::Tcp4
        }
    }
}

impl Default for Coalescer {
    fn default() -> Self {
        Coalescer::new()
    }
}

/// A whole, unfragmented TCP/IPv4 packet: its IPv4 header length and a checked view of its
/// TCP segment, or `None`.
fn tcp_view(p: &[u8]) -> Option<(usize, TcpPacket<&[u8]>)> {
    let ip = Ipv4Packet::new_checked(p).ok()?;
    if ip.protocol() != Protocol::Tcp || ip.more_frags() || ip.frag_offset() != 0 {
        return None;
    }
    let hl = usize::from(ip.header_len());
    let l4 = p.get(hl..usize::from(ip.total_len()))?;
    Some((hl, TcpPacket::new_checked(l4).ok()?))
}

/// A whole TCP/IPv6 packet of at most 64 KiB, exactly as long as its payload length says, TCP
/// right after the fixed header: a checked view of its TCP segment, or `None`.
fn tcp6_view(p: &[u8]) -> Option<TcpPacket<&[u8]>> {
    let ip = Ipv6Packet::new_checked(p).ok()?;
    if ip.next_header() != next_header::TCP || ip.packet().len() != p.len() || p.len() > MAX_IP {
        return None;
    }
    TcpPacket::new_checked(&p[ipv6::HEADER_LEN..]).ok()
}

/// [`l4_checksum_ok`] for a TCP segment right after an IPv6 header.
fn tcp6_checksum_ok(p: &[u8], field: u16) -> bool {
    let l4 = &p[ipv6::HEADER_LEN..];
    let pseudo = Ipv6Packet::new_unchecked(p).pseudo_header(next_header::TCP, l4.len() as u32);
    field == checksum::fold(pseudo) || checksum::fold(pseudo + checksum::sum(l4)) == 0xffff
}

/// Whether two TCP/IPv6 packets belong to one flow as far as merging goes: version, traffic
/// class, flow label, next header, hop limit and addresses equal (all of the fixed header but
/// the payload length, as the kernel's IPv6 GRO asks), and the ports.
fn same_ip6_flow(open: &[u8], p: &[u8]) -> bool {
    open[0..4] == p[0..4] && open[6..ipv6::HEADER_LEN + 4] == p[6..ipv6::HEADER_LEN + 4]
}

/// Whether the transport checksum `field` of a whole IPv4 packet `p` (IPv4 header `hl`
/// bytes, protocol `proto`) verifies, or holds the partial value (the folded pseudo-header
/// sum) that a Linux sender leaves when the packet never met a device that completes
/// checksums: a kernel VXLAN peer over veth or another virtual link. The kernel itself accepts
/// such packets on those links, so rejecting them would break those peers; anything else must
/// verify.
fn l4_checksum_ok(p: &[u8], hl: usize, proto: Protocol, field: u16) -> bool {
    let l4 = &p[hl..];
    let ip = Ipv4Packet::new_unchecked(p);
    let pseudo =
        checksum::pseudo_header(ip.src_addr(), ip.dst_addr(), proto.into(), l4.len() as u16);
    field == checksum::fold(pseudo) || checksum::fold(pseudo + checksum::sum(l4)) == 0xffff
}

/// Whether two IPv4 packets of the same header length `hl` belong to one flow as far as
/// merging goes: version/IHL, DSCP/ECN, DF, TTL, protocol, addresses and options equal, and
/// the transport ports (the first 4 bytes after the IPv4 header).
fn same_ip_flow(open: &[u8], p: &[u8], hl: usize) -> bool {
    open[0..2] == p[0..2]
        && open[6] & 0x40 == p[6] & 0x40
        && open[8..10] == p[8..10]
        && open[12..hl + 4] == p[12..hl + 4]
}

/// The IPv4 header length of a whole, unfragmented UDP/IPv4 packet whose UDP length
/// matches, or `None`.
fn udp_view(p: &[u8]) -> Option<usize> {
    let ip = Ipv4Packet::new_checked(p).ok()?;
    if ip.protocol() != Protocol::Udp || ip.more_frags() || ip.frag_offset() != 0 {
        return None;
    }
    let hl = usize::from(ip.header_len());
    let l4 = p.get(hl..usize::from(ip.total_len()))?;
    if l4.len() < 8 || usize::from(u16::from_be_bytes([l4[4], l4[5]])) != l4.len() {
        return None;
    }
    Some(hl)
}

impl Coalescer {
    /// A coalescer with room for one 64 KiB super-packet and its virtio-net header.
    pub fn new() -> Coalescer {
        Coalescer {
            buf: vec![0u8; VNET_HDR_LEN + MAX_IP].into_boxed_slice(),
            len: 0,
            headers: 0,
            seg: 0,
            count: 0,
            next_seq: 0,
            closed: false,
            kind: Kind::Tcp4,
            uso: false,
        }
    }

    /// A coalescer that also merges UDP datagrams (only when the kernel takes GSO_UDP_L4
    /// writes, Linux 6.2+).
    pub fn with_udp() -> Coalescer {
        Coalescer {
            uso: true,
            ..Coalescer::new()
        }
    }

    /// Whether a super-packet is open.
    pub fn is_open(&self) -> bool {
        self.len > 0
    }

    /// Inner bytes of the open super-packet as its segments carried them (headers counted
    /// once per segment), 0 when none is open.
    pub fn wire_bytes(&self) -> usize {
        if self.len > 0 {
            self.len + (self.count - 1) * self.headers
        } else {
            0
        }
    }

    /// Segments in the open super-packet (0 when none is open).
    pub fn segments(&self) -> usize {
        if self.len > 0 {
            self.count
        } else {
            0
        }
    }

    /// Offers one validated inner IPv4 or IPv6 packet (exactly its total length).
    pub fn offer(&mut self, p: &[u8]) -> Offer {
        match p.first() {
            Some(b) if b >> 4 == 6 => self.offer_tcp::<true>(p),
            _ if self.uso && p.len() > 9 && p[9] == 17 => self.offer_udp(p),
            _ => self.offer_tcp::<false>(p),
        }
    }

    /// Offers a TCP/IPv4 (`V6`: TCP/IPv6) segment.
    #[inline(always)]
    fn offer_tcp<const V6: bool>(&mut self, p: &[u8]) -> Offer {
        let view = if V6 {
            tcp6_view(p).map(|t| (ipv6::HEADER_LEN, t))
        } else {
            tcp_view(p)
        };
        let Some((hl, t)) = view else {
            return Offer::Alone;
        };
        let headers = hl + usize::from(t.header_len());
        let flags = t.flags();
        let payload = p.len() - headers;
        // Only plain data segments merge; control segments go alone.
        if payload == 0
            || flags & (tcp::SYN | tcp::FIN | tcp::RST | tcp::URG) != 0
            || flags & tcp::ACK == 0
        {
            return Offer::Alone;
        }
        let checksum_ok = if V6 {
            tcp6_checksum_ok(p, t.checksum())
        } else {
            l4_checksum_ok(p, hl, Protocol::Tcp, t.checksum())
        };
        if !checksum_ok {
            return Offer::BadChecksum;
        }
        let psh = flags & tcp::PSH != 0;
        if self.len == 0 {
            let next_seq = t.seq().wrapping_add(payload as u32);
            self.open(Kind::tcp(V6), p, headers, payload, next_seq, psh);
            return Offer::Taken;
        }
        if self.kind != Kind::tcp(V6) || !self.matches::<V6>(p, hl, &t, payload) {
            return Offer::FlushFirst;
        }
        let at = VNET_HDR_LEN + self.len;
        self.buf[at..at + payload].copy_from_slice(&p[headers..]);
        self.len += payload;
        self.count += 1;
        self.next_seq = self.next_seq.wrapping_add(payload as u32);
        if psh {
            let mut open = TcpPacket::new_unchecked(&mut self.buf[VNET_HDR_LEN + hl..]);
            open.set_flags(open.flags() | tcp::PSH);
        }
        if payload < self.seg || psh {
            self.closed = true;
        }
        Offer::Taken
    }

    /// Offers a UDP/IPv4 datagram: merged when it continues the open UDP flow with the same
    /// payload size (a shorter one is merged and closes the packet).
    fn offer_udp(&mut self, p: &[u8]) -> Offer {
        let Some(hl) = udp_view(p) else {
            return Offer::Alone;
        };
        let headers = hl + 8;
        let payload = p.len() - headers;
        if payload == 0 {
            return Offer::Alone;
        }
        // A zero UDP checksum means none (allowed over IPv4).
        let field = UdpPacket::new_unchecked(&p[hl..]).checksum();
        if field != 0 && !l4_checksum_ok(p, hl, Protocol::Udp, field) {
            return Offer::BadChecksum;
        }
        if self.len == 0 {
            self.open(Kind::Udp4, p, headers, payload, 0, false);
            return Offer::Taken;
        }
        let open = &self.buf[VNET_HDR_LEN..VNET_HDR_LEN + self.headers];
        let same_flow = self.kind == Kind::Udp4
            && self.has_room(headers, payload)
            && self.count < MAX_UDP_SEGMENTS
            && same_ip_flow(open, p, hl);
        if !same_flow {
            return Offer::FlushFirst;
        }
        let at = VNET_HDR_LEN + self.len;
        self.buf[at..at + payload].copy_from_slice(&p[headers..]);
        self.len += payload;
        self.count += 1;
        if payload < self.seg {
            self.closed = true;
        }
        Offer::Taken
    }

    /// Opens a `kind` super-packet with `p` (`headers` bytes of headers, then `payload`),
    /// expecting `next_seq` next (TCP) and closed at once if `closed`.
    fn open(
        &mut self,
        kind: Kind,
        p: &[u8],
        headers: usize,
        payload: usize,
        next_seq: u32,
        closed: bool,
    ) {
        self.buf[VNET_HDR_LEN..VNET_HDR_LEN + p.len()].copy_from_slice(p);
        self.len = p.len();
        self.headers = headers;
        self.seg = payload;
        self.count = 1;
        self.kind = kind;
        self.next_seq = next_seq;
        self.closed = closed;
    }

    /// Whether the open packet may take a segment with these header and payload sizes: not
    /// closed, same headers, no longer than the segment size, and within 64 KiB.
    fn has_room(&self, headers: usize, payload: usize) -> bool {
        !self.closed
            && headers == self.headers
            && payload <= self.seg
            && self.len + payload <= MAX_IP
    }

    /// Whether TCP segment `t` of `p` (IP header `hl` bytes, IPv6 if `V6`) continues the open
    /// packet of the same IP version: room for it, no CWR, the same IP fields and ports, the
    /// next sequence number, and ack, window and options equal.
    #[inline(always)]
    fn matches<const V6: bool>(
        &self,
        p: &[u8],
        hl: usize,
        t: &TcpPacket<&[u8]>,
        payload: usize,
    ) -> bool {
        let headers = hl + usize::from(t.header_len());
        if !self.has_room(headers, payload) || t.flags() & tcp::CWR != 0 {
            return false;
        }
        let open = &self.buf[VNET_HDR_LEN..VNET_HDR_LEN + self.headers];
        let same_flow = if V6 {
            same_ip6_flow(open, p)
        } else {
            same_ip_flow(open, p, hl)
        };
        if !same_flow {
            return false;
        }
        // Same IP header (length included) and same total header length: the open TCP
        // header is as long as this one.
        let o = TcpPacket::new_unchecked(&open[hl..]);
        t.seq() == self.next_seq
            && t.ack() == o.ack()
            && t.window() == o.window()
            && t.options() == o.options()
    }

    /// Closes the open super-packet and returns it with its virtio-net header in front,
    /// ready for one TUN write; `None` when nothing is open. A single segment is returned
    /// unchanged (with the header [`crate::offload::tun_write_hdr`] chooses).
    pub fn flush(&mut self, tun_mtu: usize) -> Option<&[u8]> {
        if self.len == 0 {
            return None;
        }
        let len = std::mem::take(&mut self.len);
        let pkt = &mut self.buf[VNET_HDR_LEN..VNET_HDR_LEN + len];
        let hdr = if self.count == 1 {
            crate::offload::tun_write_hdr(pkt, tun_mtu)
        } else if self.kind == Kind::Tcp6 {
            let hl = ipv6::HEADER_LEN;
            let l4_len = len - hl;
            let mut ip = Ipv6Packet::new_unchecked(&mut pkt[..]);
            ip.set_payload_len(l4_len as u16);
            let partial = checksum::fold(ip.pseudo_header(next_header::TCP, l4_len as u32));
            // CWR segments never merge, so the ECN flag is never needed.
            TcpPacket::new_unchecked(&mut pkt[hl..]).set_checksum(partial);
            VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: GSO_TCPV6,
                hdr_len: self.headers as u16,
                gso_size: self.seg as u16,
                csum_start: hl as u16,
                csum_offset: tcp::CHECKSUM_OFFSET as u16,
            }
        } else {
            let (hl, src, dst) = {
                let mut ip = Ipv4Packet::new_unchecked(&mut pkt[..]);
                ip.set_total_len(len as u16);
                ip.fill_checksum();
                (usize::from(ip.header_len()), ip.src_addr(), ip.dst_addr())
            };
            let l4_len = (len - hl) as u16;
            let udp = self.kind == Kind::Udp4;
            let proto = if udp { Protocol::Udp } else { Protocol::Tcp };
            let partial = checksum::fold(checksum::pseudo_header(src, dst, proto.into(), l4_len));
            let l4 = &mut pkt[hl..];
            let (csum_offset, gso_type) = if udp {
                // The UDP length covers the whole super-packet too; the kernel rewrites it
                // (and adjusts the checksum) for each datagram it cuts.
                let mut u = UdpPacket::new_unchecked(l4);
                u.set_len(l4_len);
                u.set_checksum(partial);
                (6, GSO_UDP_L4)
            } else {
                // CWR segments never merge, so the ECN flag is never needed.
                TcpPacket::new_unchecked(l4).set_checksum(partial);
                (tcp::CHECKSUM_OFFSET, GSO_TCPV4)
            };
            VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type,
                hdr_len: self.headers as u16,
                gso_size: self.seg as u16,
                csum_start: hl as u16,
                csum_offset: csum_offset as u16,
            }
        };
        self.buf[..VNET_HDR_LEN].copy_from_slice(&hdr.to_bytes());
        Some(&self.buf[..VNET_HDR_LEN + len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{fix_tcp_checksum, tcp6_packet, tcp_packet, udp_packet, Tcp6};
    use crate::gso::{segment_tcp4, segment_tcp6};
    use crate::offload::GSO_NONE;
    use crate::wire::tcp::{ACK, FIN, PSH, RST, SYN};

    /// The TCP header of an IPv4 packet with a 20-byte header, writable.
    fn tcp_mut(p: &mut [u8]) -> TcpPacket<&mut [u8]> {
        TcpPacket::new_unchecked(&mut p[20..])
    }

    fn segments(p: &[u8], mss: usize) -> Vec<Vec<u8>> {
        let mut out = vec![0u8; 70000];
        let t = segment_tcp4(p, mss, &[], &mut out).unwrap();
        out[..t.total]
            .chunks(t.seg_len)
            .map(|c| c.to_vec())
            .collect()
    }

    #[test]
    fn segment_then_coalesce_restores_the_super_packet() {
        let original = tcp_packet(20_000, ACK | PSH, 77);
        let segs = segments(&original, 1398);
        assert_eq!(segs.len(), 15);
        let mut c = Coalescer::new();
        for s in &segs {
            assert_eq!(c.offer(s), Offer::Taken);
        }
        assert_eq!(c.segments(), 15);
        assert_eq!(c.wire_bytes(), segs.iter().map(Vec::len).sum::<usize>());
        let out = c.flush(1450).unwrap().to_vec();
        let hdr = VnetHdr::from_bytes(&out).unwrap();
        assert_eq!(hdr.gso_type, GSO_TCPV4);
        assert_eq!((hdr.gso_size, hdr.hdr_len, hdr.csum_start), (1398, 52, 20));
        let pkt = &out[VNET_HDR_LEN..];
        assert_eq!(pkt.len(), original.len());
        // Everything but the IP ID/checksum and the TCP checksum (now partial) is the original.
        assert_eq!(&pkt[20 + 20..], &original[20 + 20..]);
        assert_eq!(&pkt[..4], &original[..4]);
        assert!(Ipv4Packet::new_checked(pkt).unwrap().verify_checksum());
        assert_eq!(&pkt[20..36], &original[20..36]);
        assert!(!c.is_open());
        assert_eq!((c.segments(), c.wire_bytes()), (0, 0));
        assert!(c.flush(1450).is_none());
    }

    #[test]
    fn gaps_other_flows_and_control_segments_split() {
        let p = tcp_packet(5000, ACK, 1000);
        let segs = segments(&p, 1000);
        let mut c = Coalescer::new();
        assert_eq!(c.offer(&segs[0]), Offer::Taken);
        // A gap (segment 2 before 1) cannot merge.
        assert_eq!(c.offer(&segs[2]), Offer::FlushFirst);
        assert_eq!(c.offer(&segs[1]), Offer::Taken);
        // Another flow (other port) cannot merge.
        let mut other = segs[2].clone();
        tcp_mut(&mut other).set_src_port(40001);
        fix_tcp_checksum(&mut other);
        assert_eq!(c.offer(&other), Offer::FlushFirst);
        // SYN, FIN, RST and pure ACKs go alone.
        for f in [SYN | ACK, FIN | ACK, RST | ACK] {
            assert_eq!(c.offer(&tcp_packet(10, f, 0)), Offer::Alone);
        }
        assert_eq!(c.offer(&tcp_packet(0, ACK, 6000)), Offer::Alone);
        // Non-TCP goes alone.
        let mut udp = segs[2].clone();
        udp[9] = 17;
        assert_eq!(c.offer(&udp), Offer::Alone);
        let out = c.flush(1450).unwrap();
        let hdr = VnetHdr::from_bytes(out).unwrap();
        assert_eq!(out.len() - VNET_HDR_LEN, 52 + 2000);
        assert_eq!((hdr.gso_type, hdr.gso_size), (GSO_TCPV4, 1000));
    }

    #[test]
    fn short_segment_or_psh_closes() {
        let p = tcp_packet(2500, ACK | PSH, 0);
        let segs = segments(&p, 1000); // 1000, 1000, 500 (PSH on the last)
        let mut c = Coalescer::new();
        for s in &segs {
            assert_eq!(c.offer(s), Offer::Taken);
        }
        let next = tcp_packet(1000, ACK, 2500);
        assert_eq!(c.offer(&next), Offer::FlushFirst);
        let out = c.flush(1450).unwrap();
        let merged = TcpPacket::new_checked(&out[VNET_HDR_LEN + 20..]).unwrap();
        assert_eq!(merged.flags() & PSH, PSH);
    }

    #[test]
    fn single_segment_flushes_as_itself() {
        let p = tcp_packet(100, ACK, 5);
        let mut c = Coalescer::new();
        assert_eq!(c.offer(&p), Offer::Taken);
        let out = c.flush(1450).unwrap();
        assert_eq!(&out[VNET_HDR_LEN..], &p[..]);
        assert_eq!(VnetHdr::from_bytes(out).unwrap().gso_type, GSO_NONE);
    }

    #[test]
    fn corrupt_segments_are_refused_not_merged() {
        let p = tcp_packet(3000, ACK, 0);
        let mut segs = segments(&p, 1000);
        let mut c = Coalescer::new();
        assert_eq!(c.offer(&segs[0]), Offer::Taken);
        // One flipped payload bit: the segment's own checksum no longer verifies.
        segs[1][60] ^= 0x04;
        assert_eq!(c.offer(&segs[1]), Offer::BadChecksum);
        // The open packet is untouched, and the next segment leaves a gap.
        assert_eq!(c.segments(), 1);
        assert_eq!(c.offer(&segs[2]), Offer::FlushFirst);
        // A partial checksum (a kernel peer over a virtual link) is accepted.
        let mut partial = segs[2].clone();
        let (src, dst) = ([10, 1, 1, 2].into(), [10, 1, 2, 2].into());
        let pseudo = checksum::fold(checksum::pseudo_header(
            src,
            dst,
            6,
            (partial.len() - 20) as u16,
        ));
        tcp_mut(&mut partial).set_checksum(pseudo);
        let mut c2 = Coalescer::new();
        assert_eq!(c2.offer(&partial), Offer::Taken);
        // A bad checksum on the first segment is refused too.
        let mut c = Coalescer::new();
        let mut first = segs[0].clone();
        let mut t = tcp_mut(&mut first);
        t.set_checksum(t.checksum() ^ 0xff00);
        assert_eq!(c.offer(&first), Offer::BadChecksum);
        assert!(!c.is_open());
    }

    /// A UDP/IPv4 datagram with a valid checksum: `payload` bytes after the given ports.
    #[test]
    fn udp_datagrams_merge_into_a_uso_super_packet() {
        let mut c = Coalescer::with_udp();
        let d: Vec<Vec<u8>> = (0..5).map(|i| udp_packet(200, 40000, i)).collect();
        for p in &d[..4] {
            assert_eq!(c.offer(p), Offer::Taken);
        }
        // A shorter datagram is merged and closes the packet.
        let short = udp_packet(50, 40000, 9);
        assert_eq!(c.offer(&short), Offer::Taken);
        assert_eq!(c.offer(&d[4]), Offer::FlushFirst);
        assert_eq!(c.segments(), 5);
        let out = c.flush(1450).unwrap().to_vec();
        let hdr = VnetHdr::from_bytes(&out).unwrap();
        assert_eq!(hdr.gso_type, GSO_UDP_L4);
        assert_eq!(
            (hdr.gso_size, hdr.hdr_len, hdr.csum_start, hdr.csum_offset),
            (200, 28, 20, 6)
        );
        assert_eq!(hdr.flags, F_NEEDS_CSUM);
        let pkt = &out[VNET_HDR_LEN..];
        assert_eq!(pkt.len(), 28 + 4 * 200 + 50);
        assert!(Ipv4Packet::new_checked(pkt).unwrap().verify_checksum());
        assert_eq!(
            usize::from(u16::from_be_bytes([pkt[24], pkt[25]])),
            pkt.len() - 20
        );
        for (i, p) in d[..4].iter().enumerate() {
            assert_eq!(&pkt[28 + i * 200..28 + (i + 1) * 200], &p[28..]);
        }
        assert_eq!(&pkt[28 + 800..], &short[28..]);
    }

    #[test]
    fn udp_flows_sizes_and_checksums_split() {
        let mut c = Coalescer::with_udp();
        assert_eq!(c.offer(&udp_packet(200, 40000, 0)), Offer::Taken);
        // Another source port: another flow.
        assert_eq!(c.offer(&udp_packet(200, 40001, 0)), Offer::FlushFirst);
        // A larger datagram cannot follow a smaller segment size.
        assert_eq!(c.offer(&udp_packet(300, 40000, 0)), Offer::FlushFirst);
        // TCP after UDP: flush first.
        let tcp = tcp_packet(100, ACK, 0);
        assert_eq!(c.offer(&tcp), Offer::FlushFirst);
        // A corrupt datagram is refused; a zero checksum (none, IPv4) is fine.
        let mut bad = udp_packet(200, 40000, 1);
        bad[40] ^= 1;
        assert_eq!(c.offer(&bad), Offer::BadChecksum);
        let mut none = udp_packet(200, 40000, 2);
        none[26] = 0;
        none[27] = 0;
        assert_eq!(c.offer(&none), Offer::Taken);
        // Without USO, UDP goes alone.
        assert_eq!(
            Coalescer::new().offer(&udp_packet(200, 40000, 0)),
            Offer::Alone
        );
        // Empty datagrams go alone.
        assert_eq!(c.offer(&udp_packet(0, 40000, 0)), Offer::Alone);
    }

    #[test]
    fn different_options_or_ack_split() {
        let a = tcp_packet(1000, ACK, 0);
        let mut b = tcp_packet(1000, ACK, 1000);
        tcp_mut(&mut b).options_mut()[11] ^= 1; // timestamp echo differs
        fix_tcp_checksum(&mut b);
        let mut c = Coalescer::new();
        assert_eq!(c.offer(&a), Offer::Taken);
        assert_eq!(c.offer(&b), Offer::FlushFirst);
        let mut d = tcp_packet(1000, ACK, 1000);
        tcp_mut(&mut d).set_ack(6); // ack differs
        fix_tcp_checksum(&mut d);
        assert_eq!(c.offer(&d), Offer::FlushFirst);
    }

    /// The TCP header of an IPv6 packet (TCP right after the fixed header), writable.
    fn tcp6_mut(p: &mut [u8]) -> TcpPacket<&mut [u8]> {
        TcpPacket::new_unchecked(&mut p[40..])
    }

    fn segments6(p: &[u8], mss: usize) -> Vec<Vec<u8>> {
        let mut out = vec![0u8; 70000];
        let t = segment_tcp6(p, mss, &[], &mut out).unwrap();
        out[..t.total]
            .chunks(t.seg_len)
            .map(|c| c.to_vec())
            .collect()
    }

    #[test]
    fn ipv6_segment_then_coalesce_restores_the_super_packet() {
        let original = tcp6_packet(20_000, ACK | PSH, 77);
        let segs = segments6(&original, 1378);
        assert_eq!(segs.len(), 15);
        let mut c = Coalescer::new();
        for s in &segs {
            assert_eq!(c.offer(s), Offer::Taken);
        }
        assert_eq!(c.wire_bytes(), segs.iter().map(Vec::len).sum::<usize>());
        let out = c.flush(1450).unwrap().to_vec();
        let hdr = VnetHdr::from_bytes(&out).unwrap();
        assert_eq!(
            hdr,
            VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: GSO_TCPV6,
                hdr_len: 72,
                gso_size: 1378,
                csum_start: 40,
                csum_offset: 16,
            }
        );
        let pkt = &out[VNET_HDR_LEN..];
        // Everything but the TCP checksum (now the partial value) is the original.
        assert_eq!(pkt.len(), original.len());
        assert_eq!(&pkt[..40 + 16], &original[..40 + 16]);
        assert_eq!(&pkt[40 + 18..], &original[40 + 18..]);
        let ip = Ipv6Packet::new_checked(pkt).unwrap();
        let partial = checksum::fold(ip.pseudo_header(6, ip.payload_len().into()));
        assert_eq!(tcp6_mut(&mut pkt.to_vec()).checksum(), partial);
        assert!(!c.is_open());
    }

    #[test]
    fn ipv6_flows_versions_and_header_fields_split() {
        let p = tcp6_packet(5000, ACK, 1000);
        let segs = segments6(&p, 1000);
        let mut c = Coalescer::new();
        assert_eq!(c.offer(&segs[0]), Offer::Taken);
        assert_eq!(c.offer(&segs[2]), Offer::FlushFirst, "a gap");
        // Another port, traffic class, hop limit, flow label or address: another flow.
        let edits: [fn(&mut Vec<u8>); 5] = [
            |s| tcp6_mut(s).set_src_port(40001),
            |s| Ipv6Packet::new_unchecked(&mut s[..]).set_traffic_class(4),
            |s| Ipv6Packet::new_unchecked(&mut s[..]).set_hop_limit(63),
            |s| Ipv6Packet::new_unchecked(&mut s[..]).set_flow_label(1),
            |s| s[39] ^= 1,
        ];
        for (i, edit) in edits.iter().enumerate() {
            let mut other = segs[1].clone();
            edit(&mut other);
            fix_tcp_checksum(&mut other);
            assert_eq!(c.offer(&other), Offer::FlushFirst, "edit {i}");
        }
        // An IPv4 segment after an IPv6 one, and the other way round.
        assert_eq!(c.offer(&tcp_packet(1000, ACK, 2000)), Offer::FlushFirst);
        assert_eq!(c.offer(&segs[1]), Offer::Taken);
        assert_eq!(c.segments(), 2);
        let out = c.flush(1450).unwrap();
        assert_eq!(VnetHdr::from_bytes(out).unwrap().gso_type, GSO_TCPV6);
        assert_eq!(c.offer(&tcp_packet(1000, ACK, 0)), Offer::Taken);
        assert_eq!(c.offer(&segs[0]), Offer::FlushFirst);
        c.flush(1450);
        // Control segments, pure ACKs and extension headers go alone.
        for f in [SYN | ACK, FIN | ACK, RST | ACK] {
            assert_eq!(c.offer(&tcp6_packet(10, f, 0)), Offer::Alone);
        }
        assert_eq!(c.offer(&tcp6_packet(0, ACK, 0)), Offer::Alone);
        let mut ext = segs[0].clone();
        ext[6] = ipv6::next_header::DEST_OPTS;
        assert_eq!(c.offer(&ext), Offer::Alone);
        let mut padded = segs[0].clone();
        padded.push(0);
        assert_eq!(c.offer(&padded), Offer::Alone);
        assert!(!c.is_open());
    }

    #[test]
    fn ipv6_short_segment_psh_and_corruption() {
        let p = tcp6_packet(2500, ACK | PSH, 0);
        let mut segs = segments6(&p, 1000); // 1000, 1000, 500 (PSH on the last)
        let mut c = Coalescer::new();
        assert_eq!(c.offer(&segs[0]), Offer::Taken);
        segs[1][100] ^= 0x10;
        assert_eq!(c.offer(&segs[1]), Offer::BadChecksum);
        segs[1][100] ^= 0x10;
        for s in &segs[1..] {
            assert_eq!(c.offer(s), Offer::Taken);
        }
        assert_eq!(c.offer(&tcp6_packet(1000, ACK, 2500)), Offer::FlushFirst);
        let out = c.flush(1450).unwrap();
        let merged = TcpPacket::new_checked(&out[VNET_HDR_LEN + 40..]).unwrap();
        assert_eq!(merged.flags() & PSH, PSH);
        // A partial checksum (a kernel peer over a virtual link) is accepted.
        let mut partial = tcp6_packet(1000, ACK, 0);
        let ip = Ipv6Packet::new_checked(&partial[..]).unwrap();
        let pseudo = checksum::fold(ip.pseudo_header(6, 1032));
        tcp6_mut(&mut partial).set_checksum(pseudo);
        assert_eq!(Coalescer::new().offer(&partial), Offer::Taken);
        // A single IPv6 segment flushes as itself.
        let one = tcp6_packet(100, ACK, 5);
        let mut c = Coalescer::with_udp();
        assert_eq!(c.offer(&one), Offer::Taken);
        let out = c.flush(1450).unwrap();
        assert_eq!(&out[VNET_HDR_LEN..], &one[..]);
        assert_eq!(VnetHdr::from_bytes(out).unwrap().gso_type, GSO_NONE);
    }

    #[test]
    fn ipv6_super_packet_stays_within_64k() {
        // 47 segments of 1400 bytes would pass 65,535 bytes: the 47th opens a new packet.
        let spec = Tcp6::new(ACK, 0);
        let mut c = Coalescer::new();
        let mut seq = 0u32;
        let mut taken = 0;
        loop {
            let mut s = spec;
            s.tcp.seq = seq;
            let seg = s.build(&[7u8; 1400]);
            match c.offer(&seg) {
                Offer::Taken => taken += 1,
                other => {
                    assert_eq!(other, Offer::FlushFirst);
                    break;
                }
            }
            seq = seq.wrapping_add(1400);
        }
        assert_eq!(taken, (65535 - 72) / 1400);
        let out = c.flush(1450).unwrap();
        assert!(out.len() - VNET_HDR_LEN <= 65535);
        assert!(Ipv6Packet::new_checked(&out[VNET_HDR_LEN..]).is_ok());
    }
}
