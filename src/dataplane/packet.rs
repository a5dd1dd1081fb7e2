//! The per-packet decisions of the data path, as functions of a packet and the lease table
//! snapshot alone (no I/O, no allocation): what becomes of a packet read from the TUN (sent
//! whole or in segments to a peer, answered with ICMP, ignored or dropped), and whether a
//! datagram from the underlay is accepted. The send and receive sides do the I/O around
//! them; unit tests and the zero-allocation test drive them directly.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::buf::PacketBuf;
use crate::encap::{self, DropReason, VxlanHeader};
use crate::gso;
use crate::offload::{self, VnetHdr, VNET_HDR_LEN};
use crate::table::{LeaseTable, Peer, Peer6};
use crate::wire::ipv6::Ipv6Packet;
use crate::wire::tcp::TcpPacket;
use crate::wire::Ipv4Packet;
use crate::wire::{Subnet, Subnet6};

use super::{Backend, DatapathConfig, Ipv4Side, Ipv6Side};

/// What leaves for a peer: a datagram encapsulated in place, or a TCP super-packet's
/// segments (headers written per segment, the payload left where it lies).
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    /// The buffer now holds one datagram.
    Whole,
    /// The segments of the super-packet, their headers in the slot's header buffer.
    Segments(gso::Segments),
}

/// The lease a destination lies in: its IPv4 half, or (dual stack) its IPv6 half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRef<'t> {
    /// An IPv4 destination's lease.
    V4(&'t Peer),
    /// An IPv6 destination's lease (its IPv6 half).
    V6(&'t Peer6),
}

impl PeerRef<'_> {
    /// Where its datagrams go: the PublicIP (or PublicIPv6) and the tunnel port.
    #[inline]
    pub fn underlay(&self) -> SocketAddr {
        match self {
            PeerRef::V4(p) => SocketAddr::V4(p.underlay),
            PeerRef::V6(p) => SocketAddr::V6(p.underlay),
        }
    }

    /// The VXLAN and inner Ethernet header it gets.
    #[inline]
    pub fn vxlan_header(&self) -> &VxlanHeader {
        match self {
            PeerRef::V4(p) => &p.vxlan_header,
            PeerRef::V6(p) => &p.vxlan_header,
        }
    }
}

/// A packet for a peer.
#[derive(Debug, Clone, Copy)]
pub struct ToPeer<'t> {
    /// The lease the destination lies in.
    pub peer: PeerRef<'t>,
    /// The inner flow's hash (picks the send socket, hence the outer source port).
    pub flow_hash: u32,
    /// Whole or segmented.
    pub shape: Shape,
    /// Datagrams it makes.
    pub datagrams: usize,
    /// Inner bytes (IP packets, without encapsulation).
    pub inner_bytes: usize,
}

/// What becomes of a packet read from the TUN.
#[derive(Debug, Clone, Copy)]
pub enum Outbound<'t> {
    /// Send it to a peer.
    Send(ToPeer<'t>),
    /// No lease for a destination inside the Network (a `no_lease` drop): answer with an
    /// ICMP net-unreachable from `from`.
    Unreachable {
        /// The reply's source: the missing subnet's network address.
        from: Ipv4Addr,
    },
    /// No lease for an IPv6 destination inside the IPv6Network (a `no_lease` drop): answer
    /// with an ICMPv6 destination unreachable (no route) from `from`.
    Unreachable6 {
        /// The reply's source: the missing IPv6 subnet's network address.
        from: Ipv6Addr,
    },
    /// An IPv4 packet with DF set, larger than the underlay carries once encapsulated (a
    /// `too_big` drop): answer with ICMP fragmentation needed, so the pod lowers its path MTU.
    TooBig {
        /// The reply's source: the destination's subnet's network address.
        from: Ipv4Addr,
        /// The next-hop MTU to report.
        mtu: usize,
    },
    /// An IPv6 packet larger than the IPv6 underlay carries once encapsulated (a
    /// `too_big` drop): answer with ICMPv6 packet too big, so the pod lowers its path MTU.
    TooBig6 {
        /// The reply's source: the destination's IPv6 subnet's network address.
        from: Ipv6Addr,
        /// The MTU to report.
        mtu: usize,
    },
    /// IPv6 link chatter the kernel sends on any new interface: not a drop.
    Ignored,
    /// Dropped for this reason.
    Drop(DropReason),
}

/// Decides on the TUN packet in `b` (behind a virtio-net header when `vnet`) and prepares it:
/// strips the virtio-net header, looks the destination up, and either writes the segment
/// headers of a TCP super-packet into `seg_headers` (none: the TUN hands over no
/// super-packets) or completes a deferred checksum and encapsulates in place.
pub fn outbound<'t>(
    b: &mut PacketBuf,
    vnet: bool,
    table: &'t LeaseTable,
    cfg: &DatapathConfig,
    seg_headers: Option<&mut [u8]>,
) -> Outbound<'t> {
    let vhdr = match vnet {
        true => VnetHdr::from_bytes(b.as_slice()).unwrap_or_default(),
        false => VnetHdr::default(),
    };
    if b.advance(if vnet { VNET_HDR_LEN } else { 0 }).is_err() {
        return Outbound::Drop(DropReason::OutboundMalformed);
    }
    let dst = match encap::outbound_dst(b.as_slice()) {
        Ok(d) => d,
        Err(DropReason::OutboundIpv6) if encap::is_ipv6_link_chatter(b.as_slice()) => {
            return Outbound::Ignored
        }
        Err(DropReason::OutboundIpv6) => match (&cfg.ipv6, &cfg.backend) {
            (Some(v6), Backend::Vxlan(_)) => return outbound6(b, &vhdr, table, v6, seg_headers),
            _ => return Outbound::Drop(DropReason::OutboundIpv6),
        },
        Err(r) => return Outbound::Drop(r),
    };
    let Some(v4) = &cfg.ipv4 else {
        return Outbound::Drop(DropReason::OutboundIpv4);
    };
    let Some(peer) = table.lookup(dst) else {
        return no_lease(dst, table, v4);
    };
    let flow_hash = encap::flow_hash(b.as_slice());
    let prefix: &[u8] = match cfg.backend {
        Backend::Vxlan(_) => &peer.vxlan_header,
        Backend::Udp => &[],
    };
    let gso = vhdr.gso_type & !offload::GSO_ECN;
    let shape = match seg_headers {
        Some(h) if gso == offload::GSO_TCPV4 => {
            // Segments that would not fit the underlay once encapsulated are cut smaller: a
            // smaller segment size than the TUN asked for is still valid TCP, and nothing is
            // lost while the pod's path MTU is still the old one.
            let fits = tcp4_headers_len(b.as_slice())
                .map_or(usize::MAX, |hl| cfg.mtu4.saturating_sub(hl).max(1));
            let mss = usize::from(vhdr.gso_size).min(fits);
            match gso::segment_tcp4_headers(b.as_slice(), mss, prefix, h) {
                Ok(segs) => Shape::Segments(segs),
                Err(_) => return Outbound::Drop(DropReason::OutboundMalformed),
            }
        }
        _ if vhdr.gso_type != offload::GSO_NONE => {
            return Outbound::Drop(DropReason::OutboundMalformed)
        }
        // Too large for the underlay once encapsulated: with DF, tell the sender as a router
        // would; without, send it and let the outer packet fragment, as Linux's VXLAN does.
        _ if b.len() > cfg.mtu4 && dont_frag(b.as_slice()) => {
            return Outbound::TooBig {
                from: peer.subnet.addr(),
                mtu: cfg.mtu4,
            }
        }
        _ => {
            if let Err(r) = finish_whole(b, &vhdr, prefix) {
                return Outbound::Drop(r);
            }
            Shape::Whole
        }
    };
    send(PeerRef::V4(peer), flow_hash, shape, prefix.len(), b.len())
}

/// [`outbound`] for an IPv6 packet on a dual-stack vxlan node: the IPv6 half of the
/// destination's lease, VXLAN over the IPv6 underlay. A packet that would not fit the IPv6
/// underlay once encapsulated is answered with packet too big; a TCP super-packet is cut
/// into segments that fit (a smaller segment size than the TUN asked for is still valid TCP).
fn outbound6<'t>(
    b: &mut PacketBuf,
    vhdr: &VnetHdr,
    table: &'t LeaseTable,
    v6: &Ipv6Side,
    seg_headers: Option<&mut [u8]>,
) -> Outbound<'t> {
    let Ok(ip) = Ipv6Packet::new_checked(b.as_slice()) else {
        return Outbound::Drop(DropReason::OutboundMalformed);
    };
    let dst = ip.dst_addr();
    let Some(peer) = table.lookup6(dst) else {
        return no_lease6(dst, table, v6);
    };
    let flow_hash = encap::flow_hash(b.as_slice());
    let prefix = &peer.vxlan_header;
    let gso = vhdr.gso_type & !offload::GSO_ECN;
    let shape = match seg_headers {
        Some(h) if gso == offload::GSO_TCPV6 => {
            let hdr_len = usize::from(vhdr.hdr_len).max(60);
            let fits = v6.mtu.saturating_sub(hdr_len).max(1);
            let mss = usize::from(vhdr.gso_size).min(fits);
            match gso::segment_tcp6_headers(b.as_slice(), mss, prefix, h) {
                Ok(segs) => Shape::Segments(segs),
                Err(_) => return Outbound::Drop(DropReason::OutboundMalformed),
            }
        }
        _ if vhdr.gso_type != offload::GSO_NONE => {
            return Outbound::Drop(DropReason::OutboundMalformed)
        }
        _ if b.len() > v6.mtu => {
            return Outbound::TooBig6 {
                from: peer.subnet.addr(),
                mtu: v6.mtu,
            }
        }
        _ => {
            if let Err(r) = finish_whole(b, vhdr, prefix) {
                return Outbound::Drop(r);
            }
            Shape::Whole
        }
    };
    send(PeerRef::V6(peer), flow_hash, shape, prefix.len(), b.len())
}

/// The bytes of IPv4 and TCP headers in front of a TCP/IPv4 packet's payload, if it parses.
fn tcp4_headers_len(packet: &[u8]) -> Option<usize> {
    let ip = Ipv4Packet::new_checked(packet).ok()?;
    let ihl = usize::from(ip.header_len());
    let tcp = TcpPacket::new_checked(packet.get(ihl..)?).ok()?;
    Some(ihl + usize::from(tcp.header_len()))
}

/// Whether an IPv4 packet carries DF (a packet that does not parse: no).
fn dont_frag(packet: &[u8]) -> bool {
    Ipv4Packet::new_checked(packet).is_ok_and(|ip| ip.dont_frag())
}

/// The packet leaves for `peer` as `shape`, each datagram behind a `prefix_len`-byte
/// encapsulation (a whole packet is `len` bytes with it).
fn send(
    peer: PeerRef<'_>,
    flow_hash: u32,
    shape: Shape,
    prefix_len: usize,
    len: usize,
) -> Outbound<'_> {
    let (datagrams, inner_bytes) = match shape {
        Shape::Segments(s) => (s.count, s.total() - s.count * prefix_len),
        Shape::Whole => (1, len - prefix_len),
    };
    Outbound::Send(ToPeer {
        peer,
        flow_hash,
        shape,
        datagrams,
        inner_bytes,
    })
}

/// An IPv6 destination without a lease: inside the IPv6Network (and not ours) it gets an
/// ICMPv6 destination unreachable from the missing subnet's network address, as for IPv4;
/// elsewhere it is dropped quietly.
fn no_lease6<'t>(dst: Ipv6Addr, table: &LeaseTable, v6: &Ipv6Side) -> Outbound<'t> {
    if v6.network.contains(dst) && !v6.local_subnet.contains(dst) {
        let len = table.prefix_len6().unwrap_or(v6.local_subnet.prefix_len());
        let from = Subnet6::containing(dst, len)
            .map(|s| s.addr())
            .unwrap_or(dst);
        return Outbound::Unreachable6 { from };
    }
    Outbound::Drop(DropReason::NoLease)
}

/// A destination without a lease: inside the Network (and not ours) it gets an ICMP
/// net-unreachable from the missing subnet's network address (where its node's VTEP would
/// be: never one of this host's own addresses, which the kernel would drop as a martian
/// arriving on the TUN); elsewhere it is dropped quietly.
fn no_lease<'t>(dst: Ipv4Addr, table: &LeaseTable, v4: &Ipv4Side) -> Outbound<'t> {
    if v4.network.contains(dst) && !v4.local_subnet.contains(dst) {
        let from = Subnet::containing(dst, table.prefix_len())
            .map(|s| s.addr())
            .unwrap_or(dst);
        return Outbound::Unreachable { from };
    }
    Outbound::Drop(DropReason::NoLease)
}

/// Completes a checksum the TUN left to us, then puts `prefix` (the peer's VXLAN header; the
/// udp backend's is empty: it sends the bare IP packet) in front in place. A buffer without
/// headroom, which the data path never hands over, is counted as malformed rather than lost
/// silently.
fn finish_whole(b: &mut PacketBuf, vhdr: &VnetHdr, prefix: &[u8]) -> Result<(), DropReason> {
    if vhdr.flags & offload::F_NEEDS_CSUM != 0 {
        gso::complete_csum(
            b.as_mut_slice(),
            usize::from(vhdr.csum_start),
            usize::from(vhdr.csum_offset),
        )
        .map_err(|_| DropReason::OutboundMalformed)?;
    }
    match prefix.len() {
        0 => Ok(()),
        n => b
            .prepend(n)
            .map(|at| at.copy_from_slice(prefix))
            .map_err(|_| DropReason::OutboundMalformed),
    }
}

/// Whether a datagram `sender` sent is accepted, in DESIGN.md's order: the encapsulation is
/// ours (VNI, VTEP MAC, inner Ethernet), the inner IPv4 header is sane, a lease naming
/// `sender` holds the inner source, and the inner destination is in our subnet. Returns
/// the inner IP packet. (That `sender` holds a lease at all is checked once per train.)
pub fn inbound<'a>(
    datagram: &'a [u8],
    sender: Ipv4Addr,
    table: &LeaseTable,
    cfg: &DatapathConfig,
) -> Result<&'a [u8], DropReason> {
    let Some(v4) = &cfg.ipv4 else {
        return Err(DropReason::UnknownSender);
    };
    let inner = match &cfg.backend {
        Backend::Vxlan(rx) => encap::decap_vxlan(datagram, rx)?,
        Backend::Udp => encap::decap_udp(datagram)?,
    };
    let src_owner = table.lookup(inner.src).map(|p| p.public_ip);
    encap::check_inner_route(src_owner, sender, inner.dst, v4.local_subnet)?;
    Ok(inner.packet)
}

/// [`inbound`] for a datagram from an IPv6 `sender` on a dual-stack vxlan node: flannel-v6's
/// encapsulation (our IPv6 VTEP MAC, type IPv6), a sane inner IPv6 header, the inner source
/// in the IPv6 subnet of a lease naming `sender` as its PublicIPv6, the inner destination in
/// our IPv6 subnet. Nothing else arrives over the IPv6 underlay.
pub fn inbound6<'a>(
    datagram: &'a [u8],
    sender: Ipv6Addr,
    table: &LeaseTable,
    cfg: &DatapathConfig,
) -> Result<&'a [u8], DropReason> {
    let (Some(v6), Backend::Vxlan(rx)) = (&cfg.ipv6, &cfg.backend) else {
        return Err(DropReason::UnknownSender);
    };
    let vtep_mac = v6.vtep_mac.ok_or(DropReason::WrongInnerMac)?;
    let inner = encap::decap_vxlan6(datagram, rx.vni, vtep_mac)?;
    let src_owner = table.lookup6(inner.src).map(|p| p.public_ip);
    encap::check_inner_route6(src_owner, sender, inner.dst, v6.local_subnet)?;
    Ok(inner.packet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::DEFAULT_HEADROOM;
    use crate::fixtures::tcp_packet;
    use crate::table::LocalVtep;
    use crate::wire::{EthernetAddress, Vni};

    const A_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 1);
    const B_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 2);

    fn mac(n: u8) -> EthernetAddress {
        EthernetAddress([2, 0, 0, 0, 0, n])
    }

    /// Node `me` (1: 10.1.1.0/24 at A_IP, 2: 10.1.2.0/24 at B_IP) with the other as its peer.
    fn node(me: u8, backend_vxlan: bool) -> (DatapathConfig, LeaseTable) {
        let vni = Vni::new(1).unwrap();
        let local = LocalVtep {
            vni,
            mac: mac(me),
            port: 8472,
        };
        let other = 3 - me;
        let (ip, subnet) = match other {
            1 => (A_IP, "10.1.1.0/24"),
            _ => (B_IP, "10.1.2.0/24"),
        };
        let peer = Peer::new(subnet.parse().unwrap(), ip, Some(mac(other)), &local);
        let backend = match backend_vxlan {
            true => Backend::Vxlan(encap::VxlanRx {
                vni,
                vtep_mac: mac(me),
            }),
            false => Backend::Udp,
        };
        let cfg = DatapathConfig {
            backend,
            ipv4: Some(Ipv4Side {
                local_subnet: format!("10.1.{me}.0/24").parse().unwrap(),
                network: "10.1.0.0/16".parse().unwrap(),
                local_ip: Ipv4Addr::UNSPECIFIED,
            }),
            ipv6: None,
            tun_mtu: 1450,
            mtu4: 0,
            batch_size: 8,
            offloads: Default::default(),
            split: true,
            pin: false,
        };
        let mut cfg = cfg;
        cfg.fit_underlay(1500);
        (cfg, LeaseTable::from_peers(24, vec![peer], 1))
    }

    /// A buffer holding `packet` behind `vhdr` (with headroom for the encapsulation).
    fn buf(vhdr: Option<VnetHdr>, packet: &[u8]) -> PacketBuf {
        let mut b = PacketBuf::new(70_000, DEFAULT_HEADROOM);
        let mut bytes = vhdr.map(|h| h.to_bytes().to_vec()).unwrap_or_default();
        bytes.extend_from_slice(packet);
        b.fill_from(&bytes).unwrap();
        b
    }

    /// A 10.1.1.2 -> `dst` TCP packet with 100 payload bytes.
    fn to(dst: Ipv4Addr) -> Vec<u8> {
        let mut p = tcp_packet(100, 0x18, 1);
        let mut ip = crate::wire::Ipv4Packet::new_unchecked(&mut p[..]);
        ip.set_dst_addr(dst);
        ip.fill_checksum();
        p
    }

    #[test]
    fn a_packet_for_a_peer_is_encapsulated_in_place() {
        let (cfg, table) = node(1, true);
        let inner = tcp_packet(100, 0x18, 1);
        let mut b = buf(None, &inner);
        let Outbound::Send(p) = outbound(&mut b, false, &table, &cfg, None) else {
            panic!("not sent");
        };
        assert!(matches!(p.shape, Shape::Whole));
        assert_eq!(p.peer.underlay().ip(), B_IP);
        assert_eq!((p.datagrams, p.inner_bytes), (1, inner.len()));
        assert_eq!(p.flow_hash, encap::flow_hash(&inner));
        assert_eq!(
            &b.as_slice()[..p.peer.vxlan_header().len()],
            &p.peer.vxlan_header()[..]
        );
        assert_eq!(&b.as_slice()[p.peer.vxlan_header().len()..], &inner[..]);
        // The receiving node accepts what was sent, from the sender's address only.
        let (rx_cfg, rx_table) = node(2, true);
        assert_eq!(
            inbound(b.as_slice(), A_IP, &rx_table, &rx_cfg),
            Ok(&inner[..])
        );
        assert_eq!(
            inbound(b.as_slice(), B_IP, &rx_table, &rx_cfg),
            Err(DropReason::SpoofedSource)
        );
        // Node 1 is not the destination.
        assert_eq!(
            inbound(b.as_slice(), B_IP, &table, &cfg),
            Err(DropReason::WrongInnerMac)
        );
    }

    /// A 10.1.1.2 -> 10.1.2.2 TCP packet of `len` bytes with DF set or clear.
    fn sized(len: usize, df: bool) -> Vec<u8> {
        // The fixture's TCP header carries 12 bytes of options: 52 bytes of headers.
        let mut p = tcp_packet(len - 52, 0x18, 1);
        assert_eq!(p.len(), len);
        let mut ip = crate::wire::Ipv4Packet::new_unchecked(&mut p[..]);
        ip.set_dont_frag_only(df);
        ip.fill_checksum();
        p
    }

    #[test]
    fn a_packet_over_the_underlay_gets_frag_needed_with_df_and_leaves_without() {
        let (mut cfg, table) = node(1, true);
        // A 1450-byte pod packet fits a 1500-byte underlay; after it falls to 1400, 1350 fit.
        let mut b = buf(None, &sized(1450, true));
        assert!(matches!(
            outbound(&mut b, false, &table, &cfg, None),
            Outbound::Send(_)
        ));
        cfg.fit_underlay(1400);
        assert_eq!(cfg.mtu4, 1350);
        let full = sized(1450, true);
        let mut b = buf(None, &full);
        match outbound(&mut b, false, &table, &cfg, None) {
            Outbound::TooBig { from, mtu } => {
                assert_eq!((from, mtu), (Ipv4Addr::new(10, 1, 2, 0), 1350));
            }
            o => panic!("{o:?}"),
        }
        // The reply the send side writes: fragmentation needed, next-hop MTU 1350.
        let mut out = [0u8; crate::wire::icmpv4::MAX_ERROR_LEN];
        let why = crate::wire::icmpv4::Unreachable::FragNeeded { mtu: 1350 };
        let n = crate::wire::icmpv4::write_unreachable(
            &full,
            Ipv4Addr::new(10, 1, 2, 0),
            why,
            &mut out,
        )
        .unwrap();
        assert_eq!((out[20], out[21]), (3, 4));
        assert_eq!(u16::from_be_bytes([out[26], out[27]]), 1350);
        assert!(n > 28);
        // Exactly the limit still leaves; without DF any size leaves (the outer fragments).
        let mut b = buf(None, &sized(1350, true));
        assert!(matches!(
            outbound(&mut b, false, &table, &cfg, None),
            Outbound::Send(_)
        ));
        let mut b = buf(None, &sized(1450, false));
        assert!(matches!(
            outbound(&mut b, false, &table, &cfg, None),
            Outbound::Send(_)
        ));
        // The udp backend adds 28 bytes, not 50.
        let (mut udp, udp_table) = node(1, false);
        udp.fit_underlay(1400);
        assert_eq!(udp.mtu4, 1372);
        let mut b = buf(None, &sized(1372, true));
        assert!(matches!(
            outbound(&mut b, false, &udp_table, &udp, None),
            Outbound::Send(_)
        ));
    }

    #[test]
    fn a_super_packet_is_cut_to_what_the_underlay_carries() {
        let (mut cfg, table) = node(1, true);
        cfg.fit_underlay(1400);
        let inner = tcp_packet(4 * 1398, 0x18, 1);
        let vhdr = VnetHdr {
            flags: offload::F_NEEDS_CSUM,
            gso_type: offload::GSO_TCPV4,
            hdr_len: 52,
            gso_size: 1398,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut headers = vec![0u8; super::super::trains::HEADERS_CAPACITY];
        let mut b = buf(Some(vhdr), &inner);
        let Outbound::Send(p) = outbound(&mut b, true, &table, &cfg, Some(&mut headers)) else {
            panic!("not sent");
        };
        let Shape::Segments(segs) = p.shape else {
            panic!("not segmented");
        };
        // 52 bytes of headers: 1298-byte payloads, 5 segments of at most 1350 bytes.
        assert_eq!(segs.count, 5);
        assert_eq!(segs.seg_len() - p.peer.vxlan_header().len(), 1350);
    }

    #[test]
    fn the_udp_backend_sends_the_bare_packet() {
        let (cfg, table) = node(1, false);
        let inner = tcp_packet(10, 0x10, 1);
        let mut b = buf(None, &inner);
        assert!(matches!(
            outbound(&mut b, false, &table, &cfg, None),
            Outbound::Send(ToPeer {
                shape: Shape::Whole,
                datagrams: 1,
                ..
            })
        ));
        assert_eq!(b.as_slice(), &inner[..]);
        let (rx_cfg, rx_table) = node(2, false);
        assert_eq!(inbound(&inner, A_IP, &rx_table, &rx_cfg), Ok(&inner[..]));
    }

    #[test]
    fn a_tcp_super_packet_is_segmented_by_headers() {
        let (cfg, table) = node(1, true);
        let inner = tcp_packet(3 * 1398 + 10, 0x18, 1);
        let vhdr = VnetHdr {
            flags: offload::F_NEEDS_CSUM,
            gso_type: offload::GSO_TCPV4,
            hdr_len: 52,
            gso_size: 1398,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut headers = vec![0u8; super::super::trains::HEADERS_CAPACITY];
        let mut b = buf(Some(vhdr), &inner);
        let Outbound::Send(p) = outbound(&mut b, true, &table, &cfg, Some(&mut headers)) else {
            panic!("not sent");
        };
        let Shape::Segments(segs) = p.shape else {
            panic!("not segmented");
        };
        assert_eq!((segs.count, p.datagrams), (4, 4));
        assert_eq!(p.inner_bytes, inner.len() + 3 * 52);
        // The payload stays where the TUN read put it.
        assert_eq!(b.as_slice(), &inner[..]);
        // Without header buffers (no TSO), a super-packet is malformed input.
        let mut b = buf(Some(vhdr), &inner);
        assert!(matches!(
            outbound(&mut b, true, &table, &cfg, None),
            Outbound::Drop(DropReason::OutboundMalformed)
        ));
    }

    #[test]
    fn destinations_without_a_lease() {
        let (cfg, table) = node(1, true);
        // Inside the Network: ICMP from the missing subnet's network address.
        let mut b = buf(None, &to(Ipv4Addr::new(10, 1, 9, 7)));
        assert!(matches!(
            outbound(&mut b, false, &table, &cfg, None),
            Outbound::Unreachable { from } if from == Ipv4Addr::new(10, 1, 9, 0)
        ));
        // Our own subnet and outside the Network: dropped quietly.
        for dst in [Ipv4Addr::new(10, 1, 1, 9), Ipv4Addr::new(8, 8, 8, 8)] {
            let mut b = buf(None, &to(dst));
            assert!(matches!(
                outbound(&mut b, false, &table, &cfg, None),
                Outbound::Drop(DropReason::NoLease)
            ));
        }
    }

    #[test]
    fn ipv6_chatter_is_ignored_and_other_ipv6_dropped() {
        let (cfg, table) = node(1, true);
        let mut v6 = vec![0u8; 48];
        v6[0] = 0x60;
        v6[4..6].copy_from_slice(&8u16.to_be_bytes());
        v6[6] = 58;
        v6[24] = 0xff; // destination ff02::2
        v6[25] = 0x02;
        v6[39] = 2;
        let mut b = buf(None, &v6);
        assert!(matches!(
            outbound(&mut b, false, &table, &cfg, None),
            Outbound::Ignored
        ));
        v6[8] = 0xfd; // a global source, a unicast destination
        v6[23] = 1;
        v6[24] = 0xfd;
        let mut b = buf(None, &v6);
        assert!(matches!(
            outbound(&mut b, false, &table, &cfg, None),
            Outbound::Drop(DropReason::OutboundIpv6)
        ));
    }

    #[test]
    fn short_or_odd_virtio_headers_are_malformed() {
        let (cfg, table) = node(1, true);
        let mut b = buf(None, &[0u8; 4]);
        assert!(matches!(
            outbound(&mut b, true, &table, &cfg, None),
            Outbound::Drop(DropReason::OutboundMalformed)
        ));
        let udp_gso = VnetHdr {
            gso_type: offload::GSO_UDP_L4,
            gso_size: 1000,
            ..Default::default()
        };
        let mut b = buf(Some(udp_gso), &tcp_packet(2000, 0x10, 1));
        let mut headers = vec![0u8; 1024];
        assert!(matches!(
            outbound(&mut b, true, &table, &cfg, Some(&mut headers)),
            Outbound::Drop(DropReason::OutboundMalformed)
        ));
    }
}
