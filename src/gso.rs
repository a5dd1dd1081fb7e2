//! TCP segmentation in userspace (GSO): splits a TCP/IPv4 or TCP/IPv6 super-packet that the
//! TUN handed over with a virtio-net GSO header into MSS-sized segments with correct IP and
//! TCP headers and checksums, each prefixed (VXLAN + inner Ethernet) and laid back to back, so
//! one `sendmsg` with UDP_SEGMENT carries the whole train. Also completes partial checksums.
//! Pure functions: no I/O, no allocation.

use crate::wire::checksum;
use crate::wire::ipv4::Protocol;
use crate::wire::ipv6::{self, next_header};
use crate::wire::tcp::{self, TcpPacket};
use crate::wire::{Ipv4Packet, Ipv6Packet};

/// Why a packet could not be segmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GsoError {
    /// Not a whole TCP/IPv4 packet (or a fragment).
    #[error("not a TCP/IPv4 packet")]
    NotTcp4,
    /// The TCP header length is invalid.
    #[error("bad TCP header length")]
    BadTcpHeader,
    /// The segment size is zero.
    #[error("segment size 0")]
    ZeroMss,
    /// The output buffer cannot hold every segment.
    #[error("output too small")]
    NoRoom,
    /// The checksum position lies outside the packet.
    #[error("checksum offset outside the packet")]
    BadCsumOffset,
    /// Not a whole TCP/IPv6 packet.
    #[error("not a TCP/IPv6 packet")]
    NotTcp6,
    /// An IPv6 packet with extension headers (TCP must follow the fixed header directly).
    #[error("IPv6 extension headers")]
    Ipv6ExtensionHeaders,
}

/// A train of segments written back to back: every one but the last is `seg_len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Train {
    /// Number of segments.
    pub count: usize,
    /// Length of each segment but the last (prefix included).
    pub seg_len: usize,
    /// Total bytes written.
    pub total: usize,
}

/// Completes a partial checksum (virtio `NEEDS_CSUM`): the field at `start + offset` holds the
/// pseudo-header sum; the Internet checksum of `packet[start..]` replaces it.
pub fn complete_csum(packet: &mut [u8], start: usize, offset: usize) -> Result<(), GsoError> {
    let at = start.checked_add(offset).ok_or(GsoError::BadCsumOffset)?;
    if at + 2 > packet.len() || start > packet.len() {
        return Err(GsoError::BadCsumOffset);
    }
    let c = checksum::checksum(&packet[start..]);
    packet[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// A super-packet segmented in place ([`segment_tcp4_headers`]): each segment's headers sit
/// in a header buffer, block after block, while its payload stays in the super-packet, so a
/// gathering send carries `header block i | payload chunk i` for every segment without
/// copying a payload byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    /// Number of segments.
    pub count: usize,
    /// Bytes of each header block: prefix, IP header and TCP header.
    pub hdr_len: usize,
    /// Where the payload starts in the super-packet.
    pub payload_at: usize,
    /// Payload bytes of the whole super-packet.
    pub payload_len: usize,
    /// Payload bytes per segment (the last may carry fewer).
    pub mss: usize,
}

impl Segments {
    /// Length on the wire of each segment but the last (header block included).
    pub fn seg_len(&self) -> usize {
        self.hdr_len + self.mss.min(self.payload_len)
    }

    /// Bytes of all segments together.
    pub fn total(&self) -> usize {
        self.count * self.hdr_len + self.payload_len
    }

    /// The payload range of segment `i` within the super-packet.
    fn chunk(&self, i: usize) -> std::ops::Range<usize> {
        let a = (i * self.mss).min(self.payload_len);
        let b = (a + self.mss).min(self.payload_len);
        self.payload_at + a..self.payload_at + b
    }

    /// The byte slices of segments `segs`, in wire order (header block, payload chunk, next
    /// header block, ...): `hdrs` is the buffer the headers were written to and `packet` the
    /// super-packet. Empty payload chunks are left out.
    pub fn parts<'a>(
        self,
        hdrs: &'a [u8],
        packet: &'a [u8],
        segs: std::ops::Range<usize>,
    ) -> SegmentParts<'a> {
        SegmentParts {
            s: self,
            hdrs,
            packet,
            next: segs.start,
            end: segs.end.min(self.count),
            payload_next: false,
        }
    }
}

/// The slices of some segments of a [`Segments`] train, in wire order ([`Segments::parts`]).
#[derive(Debug, Clone)]
pub struct SegmentParts<'a> {
    s: Segments,
    hdrs: &'a [u8],
    packet: &'a [u8],
    next: usize,
    end: usize,
    payload_next: bool,
}

impl<'a> Iterator for SegmentParts<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        while self.next < self.end {
            let i = self.next;
            if self.payload_next {
                self.payload_next = false;
                self.next += 1;
                let chunk = self.packet.get(self.s.chunk(i)).unwrap_or(&[]);
                if !chunk.is_empty() {
                    return Some(chunk);
                }
            } else {
                self.payload_next = true;
                let h = self.s.hdr_len;
                return self.hdrs.get(i * h..(i + 1) * h);
            }
        }
        None
    }
}

/// The IP header of a super-packet, as segmentation rewrites it per segment.
#[derive(Clone, Copy)]
enum Ip {
    /// IPv4: each segment gets its total length, IP ID (+1 per segment) and header checksum.
    V4 {
        /// IP ID of the first segment.
        id0: u16,
    },
    /// IPv6 (no extension headers): each segment gets its payload length.
    V6,
}

/// What segmentation needs to know of a TCP super-packet, read once.
struct Plan<'a> {
    packet: &'a [u8],
    prefix: &'a [u8],
    mss: usize,
    /// Number of segments.
    count: usize,
    /// IP header length.
    hl: usize,
    /// IP + TCP header length.
    headers: usize,
    /// End of the IP packet (its total length).
    end: usize,
    ip: Ip,
    /// The pseudo-header sum of every segment but its TCP length: addresses and protocol.
    pseudo: u64,
    seq0: u32,
    flags0: u8,
}

/// Checks that `packet` is a whole, unfragmented TCP/IPv4 packet and plans its segments.
fn plan<'a>(packet: &'a [u8], mss: usize, prefix: &'a [u8]) -> Result<Plan<'a>, GsoError> {
    if mss == 0 {
        return Err(GsoError::ZeroMss);
    }
    let ip = Ipv4Packet::new_checked(packet).map_err(|_| GsoError::NotTcp4)?;
    if ip.version() != 4
        || ip.protocol() != Protocol::Tcp
        || ip.more_frags()
        || ip.frag_offset() != 0
    {
        return Err(GsoError::NotTcp4);
    }
    let hl = usize::from(ip.header_len());
    let end = usize::from(ip.total_len());
    let t = TcpPacket::new_checked(ip.payload()).map_err(|_| GsoError::BadTcpHeader)?;
    let thl = usize::from(t.header_len());
    Ok(Plan {
        packet,
        prefix,
        mss,
        count: (end - hl - thl).div_ceil(mss).max(1),
        hl,
        headers: hl + thl,
        end,
        ip: Ip::V4 { id0: ip.ident() },
        pseudo: checksum::pseudo_header(ip.src_addr(), ip.dst_addr(), Protocol::Tcp.into(), 0),
        seq0: t.seq(),
        flags0: t.flags(),
    })
}

/// Checks that `packet` is a whole TCP/IPv6 packet, TCP right after the fixed header, and
/// plans its segments.
fn plan6<'a>(packet: &'a [u8], mss: usize, prefix: &'a [u8]) -> Result<Plan<'a>, GsoError> {
    if mss == 0 {
        return Err(GsoError::ZeroMss);
    }
    let ip = Ipv6Packet::new_checked(packet).map_err(|_| GsoError::NotTcp6)?;
    match ip.next_header() {
        next_header::TCP => {}
        nh if ipv6::is_extension_header(nh) => return Err(GsoError::Ipv6ExtensionHeaders),
        _ => return Err(GsoError::NotTcp6),
    }
    let hl = ipv6::HEADER_LEN;
    let end = ip.packet().len();
    let t = TcpPacket::new_checked(ip.payload()).map_err(|_| GsoError::BadTcpHeader)?;
    let thl = usize::from(t.header_len());
    Ok(Plan {
        packet,
        prefix,
        mss,
        count: (end - hl - thl).div_ceil(mss).max(1),
        hl,
        headers: hl + thl,
        end,
        ip: Ip::V6,
        pseudo: ip.pseudo_header(next_header::TCP, 0),
        seq0: t.seq(),
        flags0: t.flags(),
    })
}

impl Plan<'_> {
    /// Where the segments' headers and payloads go.
    fn segments(&self) -> Segments {
        Segments {
            count: self.count,
            hdr_len: self.prefix.len() + self.headers,
            payload_at: self.headers,
            payload_len: self.end - self.headers,
            mss: self.mss,
        }
    }

    /// Writes segment `i`'s header block (`prefix | IP header | TCP header`) into `block`:
    /// the IP length (and for IPv4 the IP ID, +1 per segment, and the header checksum),
    /// sequence number, flags (FIN and PSH on the last segment only, CWR on the first only)
    /// and the TCP checksum, over the header block and the payload chunk, read where it lies.
    fn write_header(&self, i: usize, block: &mut [u8]) {
        let p = self;
        let chunk = &p.packet[p.segments().chunk(i)];
        let last = i + 1 == p.count;
        let seq_off = i * p.mss;
        block[..p.prefix.len()].copy_from_slice(p.prefix);
        let pkt = &mut block[p.prefix.len()..];
        pkt.copy_from_slice(&p.packet[..p.headers]);
        let l4_len = p.headers - p.hl + chunk.len();
        match p.ip {
            Ip::V4 { id0 } => {
                let mut v = Ipv4Packet::new_unchecked(&mut pkt[..]);
                v.set_total_len((p.headers + chunk.len()) as u16);
                v.set_ident(id0.wrapping_add(i as u16));
                v.fill_checksum();
            }
            Ip::V6 => Ipv6Packet::new_unchecked(&mut pkt[..]).set_payload_len(l4_len as u16),
        }
        let mut t = TcpPacket::new_unchecked(&mut pkt[p.hl..]);
        t.set_seq(p.seq0.wrapping_add(seq_off as u32));
        let mut flags = p.flags0;
        if !last {
            flags &= !(tcp::FIN | tcp::PSH);
        }
        if i > 0 {
            flags &= !tcp::CWR;
        }
        t.set_flags(flags);
        // The TCP header length is a multiple of 4, so the chunk starts at an even offset of the
        // segment and its sum adds to the header's as it is.
        t.fill_checksum(p.pseudo + l4_len as u64 + checksum::sum(chunk));
    }

    /// Writes every segment's header block into `hdrs`, one after another.
    fn write_headers(&self, hdrs: &mut [u8]) -> Result<Segments, GsoError> {
        let s = self.segments();
        if hdrs.len() < s.count * s.hdr_len {
            return Err(GsoError::NoRoom);
        }
        for (i, block) in hdrs.chunks_exact_mut(s.hdr_len).take(s.count).enumerate() {
            self.write_header(i, block);
        }
        Ok(s)
    }

    /// Writes every segment whole (`header block | payload chunk`) into `out`, back to back.
    fn write_train(&self, out: &mut [u8]) -> Result<Train, GsoError> {
        let s = self.segments();
        if out.len() < s.total() {
            return Err(GsoError::NoRoom);
        }
        let mut pos = 0;
        for i in 0..s.count {
            let chunk = &self.packet[s.chunk(i)];
            let seg = &mut out[pos..pos + s.hdr_len + chunk.len()];
            let (block, body) = seg.split_at_mut(s.hdr_len);
            self.write_header(i, block);
            body.copy_from_slice(chunk);
            pos += seg.len();
        }
        Ok(Train {
            count: s.count,
            seg_len: s.seg_len(),
            total: pos,
        })
    }
}

/// Segments a TCP/IPv4 super-packet into `mss`-byte payloads without moving them: writes
/// each segment's header block (`prefix | IPv4 header | TCP header`, with its own total
/// length, IP ID, sequence number, flags and checksums, as [`segment_tcp4`] does) into
/// `hdrs`, one after another, and says where the payload chunks are. A packet whose payload
/// fits in one segment yields one segment.
pub fn segment_tcp4_headers(
    packet: &[u8],
    mss: usize,
    prefix: &[u8],
    hdrs: &mut [u8],
) -> Result<Segments, GsoError> {
    plan(packet, mss, prefix)?.write_headers(hdrs)
}

/// Segments a TCP/IPv4 super-packet into `mss`-byte payloads, each written to `out` as
/// `prefix | IPv4 header | TCP header | payload` with its own total length, IP ID (+1 per
/// segment), sequence number and checksums; FIN and PSH stay on the last segment only, CWR on
/// the first only. A packet whose payload fits in one segment yields one segment. (The data
/// path sends from [`segment_tcp4_headers`] instead, without this copy of the payload.)
pub fn segment_tcp4(
    packet: &[u8],
    mss: usize,
    prefix: &[u8],
    out: &mut [u8],
) -> Result<Train, GsoError> {
    plan(packet, mss, prefix)?.write_train(out)
}

/// Segments a TCP/IPv6 super-packet (virtio `GSO_TCPV6`) into `mss`-byte payloads without
/// moving them, as [`segment_tcp4_headers`] does for IPv4: each header block is
/// `prefix | IPv6 header | TCP header` with its own payload length, sequence number, flags
/// and TCP checksum (over the IPv6 pseudo-header). TCP must follow the fixed header directly:
/// extension headers are [`GsoError::Ipv6ExtensionHeaders`].
pub fn segment_tcp6_headers(
    packet: &[u8],
    mss: usize,
    prefix: &[u8],
    hdrs: &mut [u8],
) -> Result<Segments, GsoError> {
    plan6(packet, mss, prefix)?.write_headers(hdrs)
}

/// Segments a TCP/IPv6 super-packet into `mss`-byte payloads, each written whole to `out`
/// (`prefix | IPv6 header | TCP header | payload`), as [`segment_tcp4`] does for IPv4.
pub fn segment_tcp6(
    packet: &[u8],
    mss: usize,
    prefix: &[u8],
    out: &mut [u8],
) -> Result<Train, GsoError> {
    plan6(packet, mss, prefix)?.write_train(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{tcp6_packet, tcp_packet, Tcp6};
    use crate::wire::tcp::{ACK, CWR, FIN, PSH};

    fn tcp_ok(seg: &[u8]) -> bool {
        let ip = Ipv4Packet::new_checked(seg).unwrap();
        let l4 = ip.payload();
        let pseudo = checksum::pseudo_header(ip.src_addr(), ip.dst_addr(), 6, l4.len() as u16);
        ip.verify_checksum() && TcpPacket::new_checked(l4).unwrap().verify_checksum(pseudo)
    }

    #[test]
    fn splits_with_headers_and_checksums() {
        let p = tcp_packet(3000, PSH | ACK | FIN | CWR, 1000);
        let prefix = [0xaa; 22];
        let mut out = vec![0xa5u8; 8000];
        let t = segment_tcp4(&p, 1400, &prefix, &mut out).unwrap();
        assert_eq!(t.count, 3);
        assert_eq!(t.seg_len, 22 + 52 + 1400);
        assert_eq!(t.total, 3 * (22 + 52) + 3000);
        let segs: Vec<&[u8]> = out[..t.total].chunks(t.seg_len).collect();
        let original = TcpPacket::new_checked(&p[20..]).unwrap();
        let mut payload = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert_eq!(&s[..22], &prefix);
            let ip = &s[22..];
            assert!(tcp_ok(ip), "segment {i} checksums");
            let v = Ipv4Packet::new_checked(ip).unwrap();
            assert_eq!(v.ident(), 0xfff0u16.wrapping_add(i as u16));
            let tcp = TcpPacket::new_checked(v.payload()).unwrap();
            assert_eq!(tcp.seq(), 1000 + 1400 * i as u32);
            let flags = tcp.flags();
            assert_eq!(flags & FIN != 0, i == 2, "FIN only last");
            assert_eq!(flags & PSH != 0, i == 2, "PSH only last");
            assert_eq!(flags & CWR != 0, i == 0, "CWR only first");
            assert_eq!(tcp.options(), original.options(), "options copied");
            payload.extend_from_slice(tcp.payload());
        }
        assert_eq!(payload, original.payload());
    }
    /// `segment_tcp{4,6}` or `segment_tcp{4,6}_headers`: (packet, mss, prefix, out).
    type Segmenter<R> = fn(&[u8], usize, &[u8], &mut [u8]) -> Result<R, GsoError>;

    /// Segments `p` both ways, as a copied train (`copy`) and as headers plus payload parts
    /// (`headers`): the counts agree, all parts gather to the train's bytes, and any middle
    /// run of segments to its stretch of the train. Returns the train for further checks.
    fn gathers_to_the_train(
        p: &[u8],
        mss: usize,
        prefix: &[u8],
        copy: Segmenter<Train>,
        headers: Segmenter<Segments>,
        what: &str,
    ) -> (Vec<u8>, Train) {
        let mut copied = vec![0u8; 140_000];
        let t = copy(p, mss, prefix, &mut copied).unwrap();
        let mut hdrs = vec![0u8; 64 * 1024];
        let s = headers(p, mss, prefix, &mut hdrs).unwrap();
        assert_eq!(
            (s.count, s.seg_len(), s.total()),
            (t.count, t.seg_len, t.total),
            "{what}"
        );
        let gathered: Vec<u8> = s.parts(&hdrs, p, 0..s.count).flatten().copied().collect();
        assert_eq!(gathered, &copied[..t.total], "{what}");
        if s.count > 2 {
            let mid: Vec<u8> = s
                .parts(&hdrs, p, 1..s.count - 1)
                .flatten()
                .copied()
                .collect();
            assert_eq!(mid, &copied[t.seg_len..(s.count - 1) * t.seg_len], "{what}");
            assert!(s.parts(&hdrs, p, 1..s.count - 1).all(|x| !x.is_empty()));
        }
        (copied, t)
    }

    #[test]
    fn headers_and_parts_gather_the_copied_train() {
        let prefix = [0x5a; 22];
        for (payload, mss) in [
            (3000, 1400),
            (2800, 1400),
            (100, 1400),
            (0, 1400),
            (65483, 1448),
        ] {
            let p = tcp_packet(payload, PSH | ACK | FIN, 77);
            let what = format!("payload {payload} mss {mss}");
            gathers_to_the_train(&p, mss, &prefix, segment_tcp4, segment_tcp4_headers, &what);
        }
        let p = tcp_packet(3000, ACK, 0);
        assert_eq!(
            segment_tcp4_headers(&p, 1400, &prefix, &mut [0; 100]),
            Err(GsoError::NoRoom)
        );
        assert_eq!(
            segment_tcp4_headers(&p, 0, &prefix, &mut [0; 1000]),
            Err(GsoError::ZeroMss)
        );
        assert_eq!(
            segment_tcp4_headers(&p[..30], 1400, &prefix, &mut [0; 1000]),
            Err(GsoError::NotTcp4)
        );
    }

    #[test]
    fn small_packet_is_one_segment() {
        let p = tcp_packet(100, ACK, 5);
        let mut out = vec![0u8; 400];
        let t = segment_tcp4(&p, 1400, &[], &mut out).unwrap();
        assert_eq!((t.count, t.total, t.seg_len), (1, p.len(), p.len()));
        assert!(tcp_ok(&out[..t.total]));
        let bare = tcp_packet(0, ACK, 5);
        let t = segment_tcp4(&bare, 1400, &[], &mut out).unwrap();
        assert_eq!((t.count, t.total), (1, 52));
    }

    #[test]
    fn errors() {
        let p = tcp_packet(3000, ACK, 0);
        assert_eq!(
            segment_tcp4(&p, 0, &[], &mut [0; 9000]),
            Err(GsoError::ZeroMss)
        );
        assert_eq!(
            segment_tcp4(&p, 1400, &[], &mut [0; 100]),
            Err(GsoError::NoRoom)
        );
        assert_eq!(
            segment_tcp4(&p[..10], 1400, &[], &mut [0; 100]),
            Err(GsoError::NotTcp4)
        );
        let mut bad = p.clone();
        TcpPacket::new_unchecked(&mut bad[20..]).set_header_len(16);
        assert_eq!(
            segment_tcp4(&bad, 1400, &[], &mut [0; 9000]),
            Err(GsoError::BadTcpHeader)
        );
        let mut udp = p.clone();
        udp[9] = 17;
        assert_eq!(
            segment_tcp4(&udp, 1400, &[], &mut [0; 9000]),
            Err(GsoError::NotTcp4)
        );
    }

    #[test]
    fn completes_partial_checksum() {
        let mut p = tcp_packet(500, PSH | ACK, 9);
        let full = {
            let mut out = vec![0u8; 1000];
            let t = segment_tcp4(&p, 1400, &[], &mut out).unwrap();
            out.truncate(t.total);
            out
        };
        let ip = Ipv4Packet::new_checked(&p[..]).unwrap();
        let partial = checksum::fold(checksum::pseudo_header(
            ip.src_addr(),
            ip.dst_addr(),
            6,
            532,
        ));
        TcpPacket::new_unchecked(&mut p[20..]).set_checksum(partial);
        complete_csum(&mut p, 20, tcp::CHECKSUM_OFFSET).unwrap();
        assert_eq!(p, full);
        assert_eq!(
            complete_csum(&mut p, 20, 1000),
            Err(GsoError::BadCsumOffset)
        );
        assert_eq!(
            complete_csum(&mut p, usize::MAX, 16),
            Err(GsoError::BadCsumOffset)
        );
    }

    /// Whether an IPv6 segment's TCP checksum verifies; its IPv6 header parses.
    fn tcp6_ok(seg: &[u8]) -> bool {
        let ip = Ipv6Packet::new_checked(seg).unwrap();
        assert_eq!(
            ip.packet().len(),
            seg.len(),
            "payload length covers the segment"
        );
        let l4 = ip.payload();
        let pseudo = ip.pseudo_header(6, l4.len() as u32);
        TcpPacket::new_checked(l4).unwrap().verify_checksum(pseudo)
    }

    #[test]
    fn splits_ipv6_with_headers_and_checksums() {
        let mut spec = Tcp6::new(PSH | ACK | FIN | CWR, u32::MAX - 1000);
        spec.traffic_class = 0x2a;
        let p = spec.build(&crate::fixtures::counting(3000));
        let prefix = [0xaa; 22];
        let mut out = vec![0xa5u8; 8000];
        let t = segment_tcp6(&p, 1400, &prefix, &mut out).unwrap();
        assert_eq!((t.count, t.seg_len), (3, 22 + 72 + 1400));
        assert_eq!(t.total, 3 * (22 + 72) + 3000);
        let original = TcpPacket::new_checked(&p[40..]).unwrap();
        let mut payload = Vec::new();
        for (i, s) in out[..t.total].chunks(t.seg_len).enumerate() {
            assert_eq!(&s[..22], &prefix);
            let ip = &s[22..];
            assert!(tcp6_ok(ip), "segment {i} checksum");
            // Everything in the IPv6 header but the payload length is the original's.
            assert_eq!((&ip[..4], &ip[6..40]), (&p[..4], &p[6..40]));
            let v = Ipv6Packet::new_checked(ip).unwrap();
            assert_eq!(v.traffic_class(), 0x2a);
            let tcp = TcpPacket::new_checked(v.payload()).unwrap();
            assert_eq!(tcp.seq(), (u32::MAX - 1000).wrapping_add(1400 * i as u32));
            let flags = tcp.flags();
            assert_eq!(flags & FIN != 0, i == 2, "FIN only last");
            assert_eq!(flags & PSH != 0, i == 2, "PSH only last");
            assert_eq!(flags & CWR != 0, i == 0, "CWR only first");
            assert_eq!(flags & ACK, ACK);
            assert_eq!(tcp.options(), original.options(), "options copied");
            payload.extend_from_slice(tcp.payload());
        }
        assert_eq!(payload, original.payload());
    }

    #[test]
    fn ipv6_headers_and_parts_gather_the_copied_train() {
        let prefix = [0x5a; 22];
        for (payload, mss) in [
            (3000, 1400),
            (2800, 1400),
            (100, 1400),
            (0, 1400),
            (65463, 1428),
        ] {
            let p = tcp6_packet(payload, PSH | ACK | FIN, 77);
            let what = format!("payload {payload} mss {mss}");
            let (copied, t) =
                gathers_to_the_train(&p, mss, &prefix, segment_tcp6, segment_tcp6_headers, &what);
            for seg in copied[..t.total].chunks(t.seg_len) {
                assert!(tcp6_ok(&seg[22..]));
            }
        }
        let p = tcp6_packet(100, ACK, 5);
        let t = segment_tcp6(&p, 1400, &[], &mut [0u8; 400]).unwrap();
        assert_eq!((t.count, t.total, t.seg_len), (1, p.len(), p.len()));
    }

    #[test]
    fn ipv6_errors() {
        let p = tcp6_packet(3000, ACK, 0);
        let mut big = [0u8; 9000];
        assert_eq!(
            segment_tcp6_headers(&p, 0, &[], &mut big),
            Err(GsoError::ZeroMss)
        );
        assert_eq!(
            segment_tcp6_headers(&p, 1400, &[0; 22], &mut [0; 200]),
            Err(GsoError::NoRoom)
        );
        assert_eq!(
            segment_tcp6(&p, 1400, &[], &mut [0; 3000]),
            Err(GsoError::NoRoom)
        );
        for cut in [10, 39, 41, p.len() - 1] {
            assert_eq!(
                segment_tcp6_headers(&p[..cut], 1400, &[], &mut big),
                Err(GsoError::NotTcp6),
                "cut at {cut}"
            );
        }
        // An IPv4 packet is not TCP/IPv6, and the IPv4 segmenter refuses IPv6.
        assert_eq!(
            segment_tcp6_headers(&tcp_packet(100, ACK, 0), 1400, &[], &mut big),
            Err(GsoError::NotTcp6)
        );
        assert_eq!(
            segment_tcp4_headers(&p, 1400, &[], &mut big),
            Err(GsoError::NotTcp4)
        );
        let mut udp = p.clone();
        udp[6] = 17;
        assert_eq!(
            segment_tcp6(&udp, 1400, &[], &mut big),
            Err(GsoError::NotTcp6)
        );
        for ext in [0u8, 43, 44, 60] {
            let mut e = p.clone();
            e[6] = ext;
            assert_eq!(
                segment_tcp6(&e, 1400, &[], &mut big),
                Err(GsoError::Ipv6ExtensionHeaders),
                "next header {ext}"
            );
        }
        let mut bad = p.clone();
        TcpPacket::new_unchecked(&mut bad[40..]).set_header_len(16);
        assert_eq!(
            segment_tcp6(&bad, 1400, &[], &mut big),
            Err(GsoError::BadTcpHeader)
        );
    }
}
