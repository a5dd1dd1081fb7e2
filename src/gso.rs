//! TCP segmentation in userspace (GSO): splits a TCP/IPv4 super-packet that the TUN handed
//! over with a virtio-net GSO header into MSS-sized segments with correct IPv4 and TCP headers
//! and checksums, each prefixed (VXLAN + inner Ethernet) and laid back to back, so one
//! `sendmsg` with UDP_SEGMENT carries the whole train. Also completes partial checksums.
//! Pure functions: no I/O, no allocation.

use crate::wire::checksum;
use crate::wire::ipv4::Protocol;
use crate::wire::Ipv4Packet;

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

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

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

/// Segments a TCP/IPv4 super-packet into `mss`-byte payloads, each written to `out` as
/// `prefix | IPv4 header | TCP header | payload` with its own total length, IP ID (+1 per
/// segment), sequence number and checksums; FIN and PSH stay on the last segment only, CWR on
/// the first only. A packet whose payload fits in one segment yields one segment.
pub fn segment_tcp4(
    packet: &[u8],
    mss: usize,
    prefix: &[u8],
    out: &mut [u8],
) -> Result<Train, GsoError> {
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
    let total = usize::from(ip.total_len());
    let l4 = &packet[hl..total];
    if l4.len() < 20 {
        return Err(GsoError::BadTcpHeader);
    }
    let thl = usize::from(l4[12] >> 4) * 4;
    if thl < 20 || thl > l4.len() {
        return Err(GsoError::BadTcpHeader);
    }
    let headers = hl + thl;
    let payload = &packet[headers..total];
    let count = payload.len().div_ceil(mss).max(1);
    let seg_len = prefix.len() + headers + mss.min(payload.len());
    let needed = prefix.len() * count + headers * count + payload.len();
    if out.len() < needed {
        return Err(GsoError::NoRoom);
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let id0 = ip.ident();
    let seq0 = u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]);
    let flags0 = l4[13];
    let mut pos = 0;
    for i in 0..count {
        let chunk = if payload.is_empty() {
            &payload[..0]
        } else {
            let a = i * mss;
            &payload[a..(a + mss).min(payload.len())]
        };
        let seg = &mut out[pos..pos + prefix.len() + headers + chunk.len()];
        seg[..prefix.len()].copy_from_slice(prefix);
        let pkt = &mut seg[prefix.len()..];
        pkt[..headers].copy_from_slice(&packet[..headers]);
        pkt[headers..].copy_from_slice(chunk);
        {
            let mut v = Ipv4Packet::new_unchecked(&mut pkt[..]);
            v.set_total_len((headers + chunk.len()) as u16);
            v.set_ident(id0.wrapping_add(i as u16));
            v.fill_checksum();
        }
        let tcp = &mut pkt[hl..];
        tcp[4..8].copy_from_slice(&seq0.wrapping_add((i * mss) as u32).to_be_bytes());
        let mut flags = flags0;
        if i + 1 < count {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            flags &= !TCP_CWR;
        }
        tcp[13] = flags;
        tcp[16] = 0;
        tcp[17] = 0;
        let l4_len = tcp.len() as u16;
        let acc = checksum::pseudo_header(src, dst, 6, l4_len) + checksum::sum(tcp);
        tcp[16..18].copy_from_slice(&(!checksum::fold(acc)).to_be_bytes());
        pos += seg.len();
    }
    Ok(Train {
        count,
        seg_len,
        total: pos,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire::ipv4::Ipv4Repr;
    use std::net::Ipv4Addr;

    /// A TCP/IPv4 packet with `payload` bytes (a counting pattern) and the given flags.
    pub(crate) fn tcp_packet(payload: usize, flags: u8, seq: u32) -> Vec<u8> {
        let thl = 32; // with a 12-byte timestamp option block
        let mut b = vec![0u8; 20 + thl + payload];
        Ipv4Repr {
            src: Ipv4Addr::new(10, 1, 1, 2),
            dst: Ipv4Addr::new(10, 1, 2, 2),
            protocol: Protocol::Tcp,
            payload_len: (thl + payload) as u16,
            ttl: 64,
            dscp_ecn: 0,
            ident: 0xfff0,
            dont_frag: true,
        }
        .emit(&mut Ipv4Packet::new_unchecked(&mut b[..]));
        let t = &mut b[20..];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&5201u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&7u32.to_be_bytes());
        t[12] = ((thl / 4) as u8) << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&512u16.to_be_bytes());
        t[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 3]);
        for (i, byte) in t[thl..].iter_mut().enumerate() {
            *byte = (i % 251) as u8;
        }
        b
    }

    fn tcp_ok(seg: &[u8]) -> bool {
        let ip = Ipv4Packet::new_checked(seg).unwrap();
        let l4 = ip.payload();
        let acc = checksum::pseudo_header(ip.src_addr(), ip.dst_addr(), 6, l4.len() as u16)
            + checksum::sum(l4);
        ip.verify_checksum() && checksum::fold(acc) == 0xffff
    }

    #[test]
    fn splits_with_headers_and_checksums() {
        let p = tcp_packet(3000, 0x18 | TCP_FIN | TCP_CWR, 1000); // PSH ACK FIN CWR
        let prefix = [0xaa; 22];
        let mut out = vec![0xa5u8; 8000];
        let t = segment_tcp4(&p, 1400, &prefix, &mut out).unwrap();
        assert_eq!(t.count, 3);
        assert_eq!(t.seg_len, 22 + 52 + 1400);
        assert_eq!(t.total, 3 * (22 + 52) + 3000);
        let segs: Vec<&[u8]> = out[..t.total].chunks(t.seg_len).collect();
        let mut payload = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert_eq!(&s[..22], &prefix);
            let ip = &s[22..];
            assert!(tcp_ok(ip), "segment {i} checksums");
            let v = Ipv4Packet::new_checked(ip).unwrap();
            assert_eq!(v.ident(), 0xfff0u16.wrapping_add(i as u16));
            let tcp = v.payload();
            let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
            assert_eq!(seq, 1000 + 1400 * i as u32);
            let flags = tcp[13];
            assert_eq!(flags & TCP_FIN != 0, i == 2, "FIN only last");
            assert_eq!(flags & TCP_PSH != 0, i == 2, "PSH only last");
            assert_eq!(flags & TCP_CWR != 0, i == 0, "CWR only first");
            assert_eq!(&tcp[20..32], &p[40..52], "options copied");
            payload.extend_from_slice(&tcp[32..]);
        }
        assert_eq!(payload, &p[52..]);
    }

    #[test]
    fn small_packet_is_one_segment() {
        let p = tcp_packet(100, 0x10, 5);
        let mut out = vec![0u8; 400];
        let t = segment_tcp4(&p, 1400, &[], &mut out).unwrap();
        assert_eq!((t.count, t.total, t.seg_len), (1, p.len(), p.len()));
        assert!(tcp_ok(&out[..t.total]));
        let bare = tcp_packet(0, 0x10, 5);
        let t = segment_tcp4(&bare, 1400, &[], &mut out).unwrap();
        assert_eq!((t.count, t.total), (1, 52));
    }

    #[test]
    fn errors() {
        let p = tcp_packet(3000, 0x10, 0);
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
        bad[32] = 0x40; // TCP header length 16
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
        let mut p = tcp_packet(500, 0x18, 9);
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
        p[36..38].copy_from_slice(&partial.to_be_bytes());
        complete_csum(&mut p, 20, 16).unwrap();
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
}
