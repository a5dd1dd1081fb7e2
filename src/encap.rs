//! Encapsulation and decapsulation for the vxlan and flannel "udp" backends.
//!
//! Pure functions over caller-owned buffers: no I/O, no allocation. The outer IPv4 and UDP
//! headers are the kernel's job (a UDP socket); what is built here is the UDP payload.
//!
//! * vxlan (RFC 7348): `VXLAN header (8) | inner Ethernet (14, dst = peer VtepMAC,
//!   src = our VtepMAC, type IPv4) | inner IPv4 packet`, sent to port 8472 by default; on a
//!   dual-stack node IPv6 pod packets the same way ([`vxlan_header6`]: type IPv6, the MACs of
//!   the `flannel-v6.<VNI>` devices) over the IPv6 underlay.
//! * udp (flannel's userspace backend): the inner IPv4 packet as-is, port 8285 by default.
//!
//! Receive-side checks follow DESIGN.md in order; every failure is a [`DropReason`], which
//! doubles as the drop counter's label. [`inspect`] explains those checks for one payload.

pub mod inspect;

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::buf::{BufError, PacketBuf};
use crate::wire::ethernet::{self, EthernetRepr};
use crate::wire::ipv4::Protocol;
use crate::wire::vxlan::{self, Vni};
use crate::wire::{ipv6, WireError};
use crate::wire::{EtherType, EthernetAddress, EthernetFrame, Ipv4Packet, Ipv6Packet};
use crate::wire::{Subnet, Subnet6, VxlanPacket};

/// Bytes vxlan puts in front of the inner IPv4 packet inside the UDP payload.
pub const VXLAN_ENCAP_LEN: usize = vxlan::HEADER_LEN + ethernet::HEADER_LEN;

/// Bytes vxlan adds on the underlay: outer IPv4 (20) + UDP (8) + VXLAN (8) + Ethernet (14).
pub const VXLAN_OVERHEAD: usize = 20 + 8 + VXLAN_ENCAP_LEN;

/// Bytes vxlan adds on the IPv6 underlay: outer IPv6 (40) + UDP (8) + VXLAN (8) + Ethernet
/// (14); flanneld sizes `flannel-v6.<VNI>` as the underlay MTU less this.
pub const VXLAN6_OVERHEAD: usize = 40 + 8 + VXLAN_ENCAP_LEN;

/// Bytes the udp backend adds on the underlay: outer IPv4 (20) + UDP (8).
pub const UDP_OVERHEAD: usize = 20 + 8;

/// The ready-to-copy bytes vxlan prepends for one peer: VXLAN header + inner Ethernet header.
pub type VxlanHeader = [u8; VXLAN_ENCAP_LEN];

/// Builds the bytes to prepend for a peer: I flag and `vni`, then Ethernet
/// `dst = peer_mac, src = local_mac, type = IPv4`, exactly as a Linux VXLAN device sends.
pub fn vxlan_header(
    vni: Vni,
    local_mac: EthernetAddress,
    peer_mac: EthernetAddress,
) -> VxlanHeader {
    header_for(vni, local_mac, peer_mac, EtherType::Ipv4)
}

/// The IPv6 twin of [`vxlan_header`]: inner EtherType IPv6 (0x86DD), as flannel's
/// `flannel-v6.<VNI>` device sends; the MACs are those of the two IPv6 VTEPs.
pub fn vxlan_header6(
    vni: Vni,
    local_mac: EthernetAddress,
    peer_mac: EthernetAddress,
) -> VxlanHeader {
    header_for(vni, local_mac, peer_mac, EtherType::Ipv6)
}

/// VXLAN header with the I flag and `vni`, then the inner Ethernet header.
fn header_for(
    vni: Vni,
    local_mac: EthernetAddress,
    peer_mac: EthernetAddress,
    ethertype: EtherType,
) -> VxlanHeader {
    let mut h = [0u8; VXLAN_ENCAP_LEN];
    h[..vxlan::HEADER_LEN].copy_from_slice(&vxlan::header_bytes(vni));
    let eth = EthernetRepr {
        src: local_mac,
        dst: peer_mac,
        ethertype,
    };
    h[vxlan::HEADER_LEN..].copy_from_slice(&eth.to_bytes());
    h
}

/// Why a packet was dropped; a small `Copy` value that is also the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Receive: the UDP payload is shorter than the VXLAN and inner Ethernet headers.
    Truncated,
    /// Receive: the VXLAN I flag is not set.
    BadFlags,
    /// Receive: the VNI is not ours.
    WrongVni,
    /// Receive: the inner Ethernet destination is not our VTEP MAC.
    WrongInnerMac,
    /// Receive: an IPv6 inner frame or packet over the IPv4 underlay (flannel carries IPv6
    /// pods over IPv6 only), or on a node without IPv6.
    InnerIpv6,
    /// Receive: an IPv4 inner frame or packet over the IPv6 underlay (flannel-v6 carries
    /// IPv6 only).
    InnerIpv4,
    /// Receive: the inner frame is neither IPv4 nor IPv6 (e.g. ARP).
    InnerNotIp,
    /// The inner IP packet is shorter than its header or length field claims.
    InnerTruncated,
    /// The inner IP header is invalid (version, header length, total length).
    InnerMalformed,
    /// The inner IPv4 header checksum is wrong.
    InnerBadChecksum,
    /// Receive: the underlay sender holds no current lease.
    UnknownSender,
    /// Receive: the inner source lies outside the sender's subnet (spoofing).
    SpoofedSource,
    /// Receive: the inner destination lies outside our subnet.
    NotForUs,
    /// Receive: a TCP segment or UDP datagram about to be coalesced fails its checksum
    /// (coalescing would hand the kernel a fresh partial checksum and launder the corruption).
    InnerL4Checksum,
    /// Send: no lease covers the destination.
    NoLease,
    /// Send: the TUN handed over an IPv6 packet on a node without IPv6 (or with the udp
    /// backend, which carries IPv4 only).
    OutboundIpv6,
    /// Send: the TUN handed over a packet that is not valid IPv4 (or, to
    /// [`outbound_dst6`], not valid IPv6).
    OutboundMalformed,
    /// Send: an IPv6 packet larger than the IPv6 underlay carries once encapsulated
    /// (answered with ICMPv6 packet too big).
    TooBig,
    /// Send: the TUN handed over an IPv4 packet on an IPv6-only network (`EnableIPv4:
    /// false`), which carries no IPv4 between nodes.
    OutboundIpv4,
}

impl DropReason {
    /// Every reason, for registering counters up front.
    pub const ALL: [DropReason; 19] = [
        DropReason::Truncated,
        DropReason::BadFlags,
        DropReason::WrongVni,
        DropReason::WrongInnerMac,
        DropReason::InnerIpv6,
        DropReason::InnerIpv4,
        DropReason::InnerNotIp,
        DropReason::InnerTruncated,
        DropReason::InnerMalformed,
        DropReason::InnerBadChecksum,
        DropReason::UnknownSender,
        DropReason::SpoofedSource,
        DropReason::NotForUs,
        DropReason::InnerL4Checksum,
        DropReason::NoLease,
        DropReason::OutboundIpv6,
        DropReason::OutboundMalformed,
        DropReason::TooBig,
        DropReason::OutboundIpv4,
    ];

    /// The metrics label (`reason="wrong_vni"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::BadFlags => "bad_flags",
            DropReason::WrongVni => "wrong_vni",
            DropReason::WrongInnerMac => "wrong_inner_mac",
            DropReason::InnerIpv6 => "inner_ipv6",
            DropReason::InnerIpv4 => "inner_ipv4",
            DropReason::InnerNotIp => "inner_not_ip",
            DropReason::InnerTruncated => "inner_truncated",
            DropReason::InnerMalformed => "inner_malformed",
            DropReason::InnerBadChecksum => "inner_bad_checksum",
            DropReason::UnknownSender => "unknown_sender",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::NotForUs => "not_for_us",
            DropReason::InnerL4Checksum => "inner_l4_checksum",
            DropReason::NoLease => "no_lease",
            DropReason::OutboundIpv6 => "outbound_ipv6",
            DropReason::OutboundMalformed => "outbound_malformed",
            DropReason::TooBig => "too_big",
            DropReason::OutboundIpv4 => "outbound_ipv4",
        }
    }

    /// The position of this reason in [`ALL`](Self::ALL), for array-indexed counters.
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl core::fmt::Display for DropReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a receiving VTEP accepts: its VNI and its own VTEP MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanRx {
    /// The VNI of this network.
    pub vni: Vni,
    /// This node's VTEP MAC.
    pub vtep_mac: EthernetAddress,
}

/// A validated inner IPv4 packet inside a received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inner<'a> {
    /// Offset of the inner packet within the datagram.
    pub offset: usize,
    /// The inner IPv4 packet, up to its total length (trailing padding excluded).
    pub packet: &'a [u8],
    /// Inner source address.
    pub src: Ipv4Addr,
    /// Inner destination address.
    pub dst: Ipv4Addr,
}

/// Validates an inner IPv4 packet: header length, total length, version, header checksum.
fn check_ipv4(packet: &[u8]) -> Result<Ipv4Packet<&[u8]>, DropReason> {
    match ipv6::ip_version(packet) {
        Some(4) => {}
        Some(6) => return Err(DropReason::InnerIpv6),
        Some(_) => return Err(DropReason::InnerMalformed),
        None => return Err(DropReason::InnerTruncated),
    }
    let p = Ipv4Packet::new_checked(packet).map_err(|e| match e {
        WireError::Truncated => DropReason::InnerTruncated,
        WireError::Malformed => DropReason::InnerMalformed,
    })?;
    if !p.verify_checksum() {
        return Err(DropReason::InnerBadChecksum);
    }
    Ok(p)
}

fn inner_at(datagram: &[u8], offset: usize) -> Result<Inner<'_>, DropReason> {
    let p = check_ipv4(&datagram[offset..])?;
    let (src, dst) = (p.src_addr(), p.dst_addr());
    let len = p.total_len() as usize;
    Ok(Inner {
        offset,
        packet: &datagram[offset..offset + len],
        src,
        dst,
    })
}

/// Decapsulates a VXLAN UDP payload: I flag, VNI, inner Ethernet destination and type, then
/// the inner IPv4 header. Reserved VXLAN bits are ignored (RFC 7348 section 5).
pub fn decap_vxlan<'a>(datagram: &'a [u8], rx: &VxlanRx) -> Result<Inner<'a>, DropReason> {
    match vxlan_ethertype(datagram, rx.vni, rx.vtep_mac)? {
        EtherType::Ipv4 => {}
        EtherType::Ipv6 => return Err(DropReason::InnerIpv6),
        _ => return Err(DropReason::InnerNotIp),
    }
    inner_at(datagram, VXLAN_ENCAP_LEN)
}

/// The checks both families' VXLAN share, in DESIGN.md's order: the headers fit, the I flag,
/// `vni`, the inner Ethernet destination `vtep_mac`; returns the inner EtherType.
#[inline]
fn vxlan_ethertype(
    datagram: &[u8],
    vni: Vni,
    vtep_mac: EthernetAddress,
) -> Result<EtherType, DropReason> {
    if datagram.len() < VXLAN_ENCAP_LEN {
        return Err(DropReason::Truncated);
    }
    let vx = VxlanPacket::new_unchecked(datagram);
    if !vx.has_vni() {
        return Err(DropReason::BadFlags);
    }
    if vx.vni() != vni {
        return Err(DropReason::WrongVni);
    }
    let eth = EthernetFrame::new_unchecked(vx.payload());
    if eth.dst_addr() != vtep_mac {
        return Err(DropReason::WrongInnerMac);
    }
    Ok(eth.ethertype())
}

/// A validated inner IPv6 packet inside a received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inner6<'a> {
    /// The inner IPv6 packet, up to its payload length (trailing padding excluded).
    pub packet: &'a [u8],
    /// Inner source address.
    pub src: Ipv6Addr,
    /// Inner destination address.
    pub dst: Ipv6Addr,
}

/// Decapsulates a VXLAN UDP payload that arrived over the IPv6 underlay, as a kernel
/// `flannel-v6.<VNI>` device accepts it: I flag, VNI, inner Ethernet destination `vtep_mac`
/// (our IPv6 VTEP MAC) and type IPv6, then a sane inner IPv6 header (version, payload
/// length within the datagram). Reserved VXLAN bits are ignored (RFC 7348 section 5).
pub fn decap_vxlan6<'a>(
    datagram: &'a [u8],
    vni: Vni,
    vtep_mac: EthernetAddress,
) -> Result<Inner6<'a>, DropReason> {
    match vxlan_ethertype(datagram, vni, vtep_mac)? {
        EtherType::Ipv6 => {}
        EtherType::Ipv4 => return Err(DropReason::InnerIpv4),
        _ => return Err(DropReason::InnerNotIp),
    }
    let packet = &datagram[VXLAN_ENCAP_LEN..];
    match ipv6::ip_version(packet) {
        Some(6) => {}
        Some(4) => return Err(DropReason::InnerIpv4),
        Some(_) => return Err(DropReason::InnerMalformed),
        None => return Err(DropReason::InnerTruncated),
    }
    let p = ipv6::Ipv6Packet::new_checked(packet).map_err(|e| match e {
        WireError::Truncated => DropReason::InnerTruncated,
        WireError::Malformed => DropReason::InnerMalformed,
    })?;
    let len = ipv6::HEADER_LEN + usize::from(p.payload_len());
    Ok(Inner6 {
        packet: &packet[..len],
        src: p.src_addr(),
        dst: p.dst_addr(),
    })
}

/// The last receive checks of an IPv6 inner packet, as [`check_inner_route`] for IPv4:
/// `src_owner` is the PublicIPv6 of the lease whose IPv6 subnet holds the inner source.
#[inline]
pub fn check_inner_route6(
    src_owner: Option<Ipv6Addr>,
    sender: Ipv6Addr,
    dst: Ipv6Addr,
    local_subnet: Subnet6,
) -> Result<(), DropReason> {
    if src_owner != Some(sender) {
        return Err(DropReason::SpoofedSource);
    }
    if !local_subnet.contains(dst) {
        return Err(DropReason::NotForUs);
    }
    Ok(())
}

/// Decapsulates a flannel udp-backend payload: the payload is the inner IPv4 packet.
pub fn decap_udp(datagram: &[u8]) -> Result<Inner<'_>, DropReason> {
    inner_at(datagram, 0)
}

/// The last receive checks, which need the lease table: the inner source must lie in a
/// subnet leased to the sender and the inner destination in ours. `src_owner` is the
/// PublicIP of the lease that holds the inner source (`None`: no lease does). Any lease that
/// names the sender counts, so a second lease with the same PublicIP (a stale record, a typo)
/// never locks the genuine node out.
#[inline]
pub fn check_inner_route(
    src_owner: Option<Ipv4Addr>,
    sender: Ipv4Addr,
    dst: Ipv4Addr,
    local_subnet: Subnet,
) -> Result<(), DropReason> {
    if src_owner != Some(sender) {
        return Err(DropReason::SpoofedSource);
    }
    if !local_subnet.contains(dst) {
        return Err(DropReason::NotForUs);
    }
    Ok(())
}

/// Decapsulates a received VXLAN datagram held in `buf` in place: on success `buf` holds
/// exactly the inner IPv4 packet (the headers are skipped, padding trimmed, nothing copied).
pub fn decap_vxlan_in_place(
    buf: &mut PacketBuf,
    rx: &VxlanRx,
) -> Result<(Ipv4Addr, Ipv4Addr), DropReason> {
    let (offset, len, src, dst) = {
        let i = decap_vxlan(buf.as_slice(), rx)?;
        (i.offset, i.packet.len(), i.src, i.dst)
    };
    buf.advance(offset).map_err(|_| DropReason::Truncated)?;
    buf.truncate(len);
    Ok((src, dst))
}

/// Decapsulates a received udp-backend datagram held in `buf` in place (trims padding).
pub fn decap_udp_in_place(buf: &mut PacketBuf) -> Result<(Ipv4Addr, Ipv4Addr), DropReason> {
    let (len, src, dst) = {
        let i = decap_udp(buf.as_slice())?;
        (i.packet.len(), i.src, i.dst)
    };
    buf.truncate(len);
    Ok((src, dst))
}

/// Encapsulates the inner IPv4 packet in `buf` for vxlan by prepending `header` in place.
#[inline]
pub fn encap_vxlan(buf: &mut PacketBuf, header: &VxlanHeader) -> Result<(), BufError> {
    buf.prepend(VXLAN_ENCAP_LEN)?.copy_from_slice(header);
    Ok(())
}

/// Encapsulates into a separate output buffer (the copying form, for callers without
/// headroom): writes `header | inner` into `out` and returns the written bytes.
pub fn encap_vxlan_into<'o>(
    inner: &[u8],
    header: &VxlanHeader,
    out: &'o mut [u8],
) -> Result<&'o [u8], BufError> {
    let total = VXLAN_ENCAP_LEN + inner.len();
    if out.len() < total {
        return Err(BufError::NoHeadroom {
            need: total,
            have: out.len(),
        });
    }
    out[..VXLAN_ENCAP_LEN].copy_from_slice(header);
    out[VXLAN_ENCAP_LEN..total].copy_from_slice(inner);
    Ok(&out[..total])
}

/// Reads the destination of a packet the TUN handed over, checking it is sane IPv4.
#[inline]
pub fn outbound_dst(packet: &[u8]) -> Result<Ipv4Addr, DropReason> {
    match ipv6::ip_version(packet) {
        Some(4) => {}
        Some(6) => return Err(DropReason::OutboundIpv6),
        _ => return Err(DropReason::OutboundMalformed),
    }
    let p = Ipv4Packet::new_checked(packet).map_err(|_| DropReason::OutboundMalformed)?;
    Ok(p.dst_addr())
}

/// Reads the destination of an IPv6 packet the TUN handed over, checking its fixed header and
/// payload length (`OutboundMalformed` otherwise, an IPv4 packet included).
#[inline]
pub fn outbound_dst6(packet: &[u8]) -> Result<Ipv6Addr, DropReason> {
    let p = Ipv6Packet::new_checked(packet).map_err(|_| DropReason::OutboundMalformed)?;
    Ok(p.dst_addr())
}

/// Whether an IPv6 packet from the TUN is the kernel's own link-local chatter (router
/// solicitation, MLD report, duplicate address detection): its destination is multicast or
/// its source unspecified or link-local. Such packets never belong to a pod's flow.
pub fn is_ipv6_link_chatter(packet: &[u8]) -> bool {
    let Ok(p) = ipv6::Ipv6Packet::new_checked(packet) else {
        return false;
    };
    let (src, dst) = (p.src_addr(), p.dst_addr());
    dst.is_multicast() || src.is_unspecified() || src.is_unicast_link_local()
}

/// A 64-bit multiplier with well-mixed bits (2^64 / golden ratio).
const MIX: u64 = 0x9e37_79b9_7f4a_7c15;

/// A hash of the inner flow (addresses, protocol, and ports of TCP/UDP first fragments; for
/// IPv6, [`flow_hash6`]), used to spread flows over outer UDP source ports (RFC 7348 section
/// 5, "Source Port").
pub fn flow_hash(packet: &[u8]) -> u32 {
    if ipv6::ip_version(packet) == Some(6) {
        return flow_hash6(packet);
    }
    let Ok(p) = Ipv4Packet::new_checked(packet) else {
        return 0;
    };
    let mut h = u64::from(u32::from(p.src_addr())) << 32 | u64::from(u32::from(p.dst_addr()));
    let proto = p.protocol();
    h ^= u64::from(u8::from(proto)) << 56;
    if matches!(proto, Protocol::Tcp | Protocol::Udp) && p.frag_offset() == 0 {
        if let Some(ports) = p.payload().get(..4) {
            h = h.rotate_left(17)
                ^ u64::from(u32::from_be_bytes([ports[0], ports[1], ports[2], ports[3]]));
        }
    }
    // A 64-bit multiplicative mix; the high half is well distributed.
    (h.wrapping_mul(MIX) >> 32) as u32
}

/// The flow hash of an IPv6 packet: addresses, next header, and the ports when TCP or UDP
/// follows the fixed header directly (0 for a packet [`Ipv6Packet::new_checked`] refuses).
/// The flow label is left out: Linux changes it when it re-routes a connection.
pub fn flow_hash6(packet: &[u8]) -> u32 {
    let Ok(p) = Ipv6Packet::new_checked(packet) else {
        return 0;
    };
    let (src, dst) = (u128::from(p.src_addr()), u128::from(p.dst_addr()));
    let nh = p.next_header();
    let mut last = u64::from(nh) << 56;
    if matches!(nh, ipv6::next_header::TCP | ipv6::next_header::UDP) {
        if let Some(ports) = p.payload().get(..4) {
            last ^= u64::from(u32::from_be_bytes([ports[0], ports[1], ports[2], ports[3]]));
        }
    }
    // Each 64-bit word is folded in by a multiply and a rotation, so that no two words cancel.
    let mut h = 0u64;
    for w in [
        (src >> 64) as u64,
        src as u64,
        (dst >> 64) as u64,
        dst as u64,
        last,
    ] {
        h = (h ^ w).wrapping_mul(MIX).rotate_left(23);
    }
    (h.wrapping_mul(MIX) >> 32) as u32
}

/// Maps a flow hash into the source-port range `lo..=hi` as Linux's `udp_flow_src_port` does.
pub fn flow_src_port(hash: u32, lo: u16, hi: u16) -> u16 {
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
    let range = u64::from(hi - lo) + 1;
    lo + ((u64::from(hash) * range) >> 32) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4::Ipv4Repr;

    const LOCAL_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x01]);
    const PEER_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x02]);

    fn vni1() -> Vni {
        Vni::new(1).unwrap()
    }

    fn rx() -> VxlanRx {
        VxlanRx {
            vni: vni1(),
            vtep_mac: PEER_MAC,
        }
    }

    fn ipv4_packet(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 20 + payload.len()];
        Ipv4Repr {
            src: Ipv4Addr::from(src),
            dst: Ipv4Addr::from(dst),
            protocol: Protocol::Udp,
            payload_len: payload.len() as u16,
            ttl: 63,
            dscp_ecn: 0,
            ident: 1,
            dont_frag: true,
        }
        .emit(&mut Ipv4Packet::new_unchecked(&mut b[..]));
        b[20..].copy_from_slice(payload);
        b
    }

    fn encapped(inner: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; VXLAN_ENCAP_LEN + inner.len()];
        let h = vxlan_header(vni1(), LOCAL_MAC, PEER_MAC);
        encap_vxlan_into(inner, &h, &mut out).unwrap();
        out
    }

    fn inner() -> Vec<u8> {
        ipv4_packet(
            [10, 1, 1, 2],
            [10, 1, 2, 2],
            &[0, 1, 0, 2, 0, 12, 0, 0, 1, 2, 3, 4],
        )
    }

    #[test]
    fn header_layout() {
        let h = vxlan_header(Vni::new(0x010203).unwrap(), LOCAL_MAC, PEER_MAC);
        assert_eq!(
            h,
            [
                0x08, 0, 0, 0, 0x01, 0x02, 0x03, 0, // VXLAN
                0x02, 0, 0, 0, 0, 0x02, // dst = peer
                0x02, 0, 0, 0, 0, 0x01, // src = local
                0x08, 0x00,
            ]
        );
        // The IPv6 twin differs in the EtherType only.
        let h6 = vxlan_header6(Vni::new(0x010203).unwrap(), LOCAL_MAC, PEER_MAC);
        assert_eq!(h6[..20], h[..20]);
        assert_eq!(h6[20..], [0x86, 0xdd]);
    }

    #[test]
    fn in_place_round_trip() {
        let inner = inner();
        let mut b = PacketBuf::new(2048, 64);
        b.fill_from(&inner).unwrap();
        encap_vxlan(&mut b, &vxlan_header(vni1(), LOCAL_MAC, PEER_MAC)).unwrap();
        assert_eq!(b.as_slice(), &encapped(&inner)[..]);
        let (src, dst) = decap_vxlan_in_place(&mut b, &rx()).unwrap();
        assert_eq!(b.as_slice(), &inner[..]);
        assert_eq!(src, Ipv4Addr::new(10, 1, 1, 2));
        assert_eq!(dst, Ipv4Addr::new(10, 1, 2, 2));
        assert_eq!(b.headroom(), 64, "decap only moved the start back");
    }

    #[test]
    fn encap_without_headroom_is_an_error() {
        let mut b = PacketBuf::new(64, 8);
        b.fill_from(&inner()).unwrap();
        assert!(encap_vxlan(&mut b, &[0; VXLAN_ENCAP_LEN]).is_err());
        assert!(encap_vxlan_into(&inner(), &[0; VXLAN_ENCAP_LEN], &mut [0u8; 10]).is_err());
    }

    #[test]
    fn padding_is_trimmed() {
        let inner = inner();
        let mut d = encapped(&inner);
        d.extend_from_slice(&[0u8; 18]);
        let i = decap_vxlan(&d, &rx()).unwrap();
        assert_eq!(i.packet, &inner[..]);
        let mut b = PacketBuf::new(2048, 64);
        b.fill_from(&d).unwrap();
        decap_vxlan_in_place(&mut b, &rx()).unwrap();
        assert_eq!(b.as_slice(), &inner[..]);
        let mut u = inner.clone();
        u.extend_from_slice(&[0u8; 5]);
        b.fill_from(&u).unwrap();
        decap_udp_in_place(&mut b).unwrap();
        assert_eq!(b.as_slice(), &inner[..]);
    }

    // Every drop reason, one vector each.

    #[test]
    fn drop_truncated() {
        let d = encapped(&inner());
        assert_eq!(decap_vxlan(&d[..21], &rx()), Err(DropReason::Truncated));
        assert_eq!(decap_vxlan(&[], &rx()), Err(DropReason::Truncated));
    }

    #[test]
    fn drop_bad_flags() {
        let mut d = encapped(&inner());
        d[0] = 0xf7; // every bit but I
        assert_eq!(decap_vxlan(&d, &rx()), Err(DropReason::BadFlags));
        d[0] = 0xff; // reserved bits set but I too: accepted
        assert!(decap_vxlan(&d, &rx()).is_ok());
    }

    #[test]
    fn drop_wrong_vni() {
        let mut d = encapped(&inner());
        d[6] = 2;
        assert_eq!(decap_vxlan(&d, &rx()), Err(DropReason::WrongVni));
    }

    #[test]
    fn drop_wrong_inner_mac() {
        let mut d = encapped(&inner());
        d[8..14].copy_from_slice(&[0xff; 6]);
        assert_eq!(decap_vxlan(&d, &rx()), Err(DropReason::WrongInnerMac));
    }

    #[test]
    fn drop_inner_ipv6_and_not_ip() {
        let mut d = encapped(&inner());
        d[20..22].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(decap_vxlan(&d, &rx()), Err(DropReason::InnerIpv6));
        d[20..22].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(decap_vxlan(&d, &rx()), Err(DropReason::InnerNotIp));
        let mut v6 = inner();
        v6[0] = 0x60;
        assert_eq!(decap_udp(&v6), Err(DropReason::InnerIpv6));
    }

    /// An IPv6 UDP packet fd10:0:0:1::2 -> fd10:0:0:2::3 with `payload`, in VXLAN for
    /// PEER_MAC (type IPv6), with `pad` bytes of trailing padding.
    fn encapped6(payload: &[u8], pad: usize) -> Vec<u8> {
        let mut p = vec![0u8; 40 + payload.len()];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
        p[6] = 17;
        p[7] = 64;
        p[8..24].copy_from_slice(&"fd10:0:0:1::2".parse::<Ipv6Addr>().unwrap().octets());
        p[24..40].copy_from_slice(&"fd10:0:0:2::3".parse::<Ipv6Addr>().unwrap().octets());
        p[40..].copy_from_slice(payload);
        let mut d = vxlan_header(vni1(), LOCAL_MAC, PEER_MAC).to_vec();
        d[20..22].copy_from_slice(&[0x86, 0xdd]);
        d.extend_from_slice(&p);
        d.extend(std::iter::repeat_n(0, pad));
        d
    }

    #[test]
    fn ipv6_inner_is_checked_and_trimmed() {
        let d = encapped6(b"hello", 7);
        let i = decap_vxlan6(&d, vni1(), PEER_MAC).unwrap();
        assert_eq!(i.packet, &d[22..22 + 45]);
        assert_eq!(i.src, "fd10:0:0:1::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(i.dst, "fd10:0:0:2::3".parse::<Ipv6Addr>().unwrap());
        // The IPv4 VTEP MAC is not the IPv6 one; another VNI; IPv4 or ARP inside.
        assert_eq!(
            decap_vxlan6(&d, vni1(), LOCAL_MAC),
            Err(DropReason::WrongInnerMac)
        );
        let vni2 = Vni::new(2).unwrap();
        assert_eq!(decap_vxlan6(&d, vni2, PEER_MAC), Err(DropReason::WrongVni));
        let v4 = encapped(&inner());
        assert_eq!(
            decap_vxlan6(&v4, vni1(), PEER_MAC),
            Err(DropReason::InnerIpv4)
        );
        let mut odd = d.clone();
        odd[20..22].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(
            decap_vxlan6(&odd, vni1(), PEER_MAC),
            Err(DropReason::InnerNotIp)
        );
        // Type IPv6 but an IPv4 header; a bad version; a payload length past the end.
        let mut lie = d.clone();
        lie[22] = 0x45;
        assert_eq!(
            decap_vxlan6(&lie, vni1(), PEER_MAC),
            Err(DropReason::InnerIpv4)
        );
        lie[22] = 0x70;
        assert_eq!(
            decap_vxlan6(&lie, vni1(), PEER_MAC),
            Err(DropReason::InnerMalformed)
        );
        let mut long = d.clone();
        long[26..28].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(
            decap_vxlan6(&long, vni1(), PEER_MAC),
            Err(DropReason::InnerTruncated)
        );
        assert_eq!(
            decap_vxlan6(&d[..50], vni1(), PEER_MAC),
            Err(DropReason::InnerTruncated)
        );
        assert_eq!(
            decap_vxlan6(&d[..21], vni1(), PEER_MAC),
            Err(DropReason::Truncated)
        );
        let mut flags = d.clone();
        flags[0] = 0;
        assert_eq!(
            decap_vxlan6(&flags, vni1(), PEER_MAC),
            Err(DropReason::BadFlags)
        );
    }

    #[test]
    fn ipv6_inner_route_checks() {
        let sender: Ipv6Addr = "fd77::1".parse().unwrap();
        let local: Subnet6 = "fd10:0:0:2::/64".parse().unwrap();
        let mine: Ipv6Addr = "fd10:0:0:2::9".parse().unwrap();
        assert_eq!(
            check_inner_route6(Some(sender), sender, mine, local),
            Ok(())
        );
        assert_eq!(
            check_inner_route6(Some("fd77::2".parse().unwrap()), sender, mine, local),
            Err(DropReason::SpoofedSource)
        );
        assert_eq!(
            check_inner_route6(None, sender, mine, local),
            Err(DropReason::SpoofedSource)
        );
        assert_eq!(
            check_inner_route6(
                Some(sender),
                sender,
                "fd10:0:0:3::1".parse().unwrap(),
                local
            ),
            Err(DropReason::NotForUs)
        );
    }

    #[test]
    fn drop_inner_truncated() {
        let d = encapped(&inner());
        assert_eq!(
            decap_vxlan(&d[..22], &rx()),
            Err(DropReason::InnerTruncated)
        );
        assert_eq!(
            decap_vxlan(&d[..30], &rx()),
            Err(DropReason::InnerTruncated)
        );
        assert_eq!(
            decap_vxlan(&d[..d.len() - 1], &rx()),
            Err(DropReason::InnerTruncated)
        );
        assert_eq!(decap_udp(&[]), Err(DropReason::InnerTruncated));
    }

    #[test]
    fn drop_inner_malformed() {
        let mut d = encapped(&inner());
        d[22] = 0x55; // version 5
        assert_eq!(decap_vxlan(&d, &rx()), Err(DropReason::InnerMalformed));
        let mut d = encapped(&inner());
        d[22] = 0x44; // IHL 4
        assert_eq!(decap_vxlan(&d, &rx()), Err(DropReason::InnerMalformed));
        let mut u = inner();
        u[2..4].copy_from_slice(&10u16.to_be_bytes()); // total < header
        assert_eq!(decap_udp(&u), Err(DropReason::InnerMalformed));
    }

    #[test]
    fn drop_inner_bad_checksum() {
        let mut d = encapped(&inner());
        d[22 + 8] ^= 0x01; // TTL changed without fixing the checksum
        assert_eq!(decap_vxlan(&d, &rx()), Err(DropReason::InnerBadChecksum));
    }

    #[test]
    fn drop_spoofed_source_and_not_for_us() {
        let sender = Ipv4Addr::new(192, 168, 64, 1);
        let local: Subnet = "10.1.2.0/24".parse().unwrap();
        let good = inner();
        let i = decap_udp(&good).unwrap();
        assert_eq!(
            check_inner_route(Some(sender), sender, i.dst, local),
            Ok(())
        );
        // The source's lease names another node, or no lease holds it.
        let other = Ipv4Addr::new(192, 168, 64, 3);
        for owner in [Some(other), None] {
            assert_eq!(
                check_inner_route(owner, sender, i.dst, local),
                Err(DropReason::SpoofedSource)
            );
        }
        let elsewhere = ipv4_packet([10, 1, 1, 2], [10, 1, 4, 2], &[]);
        let i = decap_udp(&elsewhere).unwrap();
        assert_eq!(
            check_inner_route(Some(sender), sender, i.dst, local),
            Err(DropReason::NotForUs)
        );
    }

    #[test]
    fn outbound_checks() {
        assert_eq!(outbound_dst(&inner()), Ok(Ipv4Addr::new(10, 1, 2, 2)));
        let mut v6 = inner();
        v6[0] = 0x60;
        assert_eq!(outbound_dst(&v6), Err(DropReason::OutboundIpv6));
        assert!(!is_ipv6_link_chatter(&v6[..4]));
        // A router solicitation: fe80::1 -> ff02::2 (ICMPv6); a pod's global packet is not.
        let mut rs = [0u8; 48];
        rs[0] = 0x60;
        rs[5] = 8;
        rs[6] = 58;
        rs[8] = 0xfe;
        rs[9] = 0x80;
        rs[23] = 1;
        rs[24] = 0xff;
        rs[25] = 0x02;
        rs[39] = 2;
        assert!(is_ipv6_link_chatter(&rs));
        let mut global = rs;
        global[8..10].copy_from_slice(&[0xfd, 0x10]);
        global[24..26].copy_from_slice(&[0xfd, 0x10]);
        assert!(!is_ipv6_link_chatter(&global));
        assert_eq!(outbound_dst(&[]), Err(DropReason::OutboundMalformed));
        assert_eq!(
            outbound_dst(&inner()[..19]),
            Err(DropReason::OutboundMalformed)
        );
    }

    #[test]
    fn labels_are_unique_and_indexed() {
        let mut seen = std::collections::HashSet::new();
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
            assert!(seen.insert(r.as_str()));
            assert_eq!(r.to_string(), r.as_str());
        }
    }

    #[test]
    fn flow_ports_spread_and_stay_in_range() {
        let mut ports = std::collections::HashSet::new();
        for sport in 0..64u16 {
            let mut udp = [0u8; 8];
            udp[..2].copy_from_slice(&(40000 + sport).to_be_bytes());
            udp[2..4].copy_from_slice(&80u16.to_be_bytes());
            let p = ipv4_packet([10, 1, 1, 2], [10, 1, 2, 2], &udp);
            let port = flow_src_port(flow_hash(&p), 32768, 60999);
            assert!((32768..=60999).contains(&port));
            ports.insert(port);
        }
        assert!(ports.len() > 48, "64 flows hit only {} ports", ports.len());
        let p = inner();
        assert_eq!(flow_hash(&p), flow_hash(&p));
        assert_eq!(flow_hash(&[1, 2, 3]), 0);
        assert_eq!(flow_src_port(u32::MAX, 10, 10), 10);
        assert_eq!(flow_src_port(u32::MAX, 0, u16::MAX), u16::MAX);
    }

    #[test]
    fn outbound_ipv6_destination() {
        let p = crate::fixtures::tcp6_packet(10, crate::wire::tcp::ACK, 0);
        assert_eq!(outbound_dst6(&p), Ok(crate::fixtures::DST6));
        assert_eq!(outbound_dst6(&p[..50]), Err(DropReason::OutboundMalformed));
        assert_eq!(outbound_dst6(&inner()), Err(DropReason::OutboundMalformed));
        assert_eq!(outbound_dst6(&[]), Err(DropReason::OutboundMalformed));
    }

    #[test]
    fn ipv6_flow_ports_spread_and_differ_by_direction() {
        use crate::fixtures::Tcp6;
        let mut ports = std::collections::HashSet::new();
        let mut hashes = std::collections::HashSet::new();
        for sport in 0..64u16 {
            let mut t = Tcp6::new(crate::wire::tcp::ACK, 0);
            t.tcp.src_port = 40000 + sport;
            let p = t.build(&[]);
            let h = flow_hash(&p);
            assert_eq!(h, flow_hash6(&p));
            hashes.insert(h);
            ports.insert(flow_src_port(h, 32768, 60999));
            // The flow label does not move a flow.
            t.flow_label = 0x12345;
            assert_eq!(flow_hash(&t.build(&[])), h);
            // The reverse direction is another flow; so is the next address.
            let (mut r, mut n) = (t, t);
            (r.src, r.dst) = (t.dst, t.src);
            r.tcp.src_port = t.tcp.dst_port;
            r.tcp.dst_port = t.tcp.src_port;
            n.dst = Ipv6Addr::from(u128::from(t.dst) + 1);
            assert_ne!(flow_hash(&r.build(&[])), h);
            assert_ne!(flow_hash(&n.build(&[])), h);
        }
        assert_eq!(hashes.len(), 64);
        assert!(ports.len() > 48, "64 flows hit only {} ports", ports.len());
        assert_eq!(flow_hash(&[0x60, 0, 0]), 0);
        // No ports behind an extension header, and a flow hash still.
        let mut e = crate::fixtures::tcp6_packet(10, crate::wire::tcp::ACK, 0);
        e[6] = ipv6::next_header::DEST_OPTS;
        assert_ne!(flow_hash(&e), 0);
    }
}
