//! Golden VXLAN packets captured from a Linux kernel VXLAN device (proto/golden/): weft's
//! decapsulation accepts them and its encapsulation of the same inner packet matches them
//! byte for byte. The VXLAN-over-IPv6 vectors of a kernel dual-stack pair's `flannel-v6.1`
//! are checked for their format, outer header included: the facts weft's IPv6 data path must
//! match.

use std::net::{Ipv4Addr, Ipv6Addr};

use weft::encap::{self, VxlanRx};
use weft::table::{LeaseTable, LocalVtep, Peer6};
use weft::wire::checksum;
use weft::wire::ipv4::Protocol;
use weft::wire::{
    EtherType, EthernetAddress, EthernetFrame, Ipv4Packet, Ipv6Packet, UdpPacket, Vni, VxlanPacket,
};

/// One captured datagram: its name, outer source port and UDP payload (for the IPv6
/// vectors, the whole outer IPv6 packet).
struct Golden {
    name: String,
    src_port: u16,
    payload: Vec<u8>,
}

/// Parses the line format of proto/golden/*.txt.
fn parse_golden(text: &str) -> Vec<Golden> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut it = l.split_whitespace();
            let name = it.next().expect("name").to_string();
            let src_port = it.next().expect("port").parse().expect("port number");
            let hex = it.next().expect("hex");
            let payload = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex byte"))
                .collect();
            Golden {
                name,
                src_port,
                payload,
            }
        })
        .collect()
}

const SENDER_MAC: EthernetAddress = EthernetAddress([0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44]);
const RECEIVER_MAC: EthernetAddress = EthernetAddress([0x5e, 0xa4, 0x8b, 0x11, 0x22, 0x33]);

/// Checks every vector: decap accepts it, the inner addresses are the lab's, and weft's encap
/// of the inner packet reproduces the payload. Returns the inner packets.
fn check_vectors(vectors: &[Golden]) -> Vec<Vec<u8>> {
    let vni = Vni::new(1).unwrap();
    let rx = VxlanRx {
        vni,
        vtep_mac: RECEIVER_MAC,
    };
    let header = encap::vxlan_header(vni, SENDER_MAC, RECEIVER_MAC);
    let mut inners = Vec::new();
    for g in vectors {
        let inner = encap::decap_vxlan(&g.payload, &rx)
            .unwrap_or_else(|r| panic!("{}: kernel packet dropped as {r}", g.name));
        assert_eq!(inner.src, Ipv4Addr::new(10, 1, 15, 0), "{}", g.name);
        assert_eq!(inner.dst, Ipv4Addr::new(10, 1, 16, 2), "{}", g.name);
        assert_eq!(
            inner.offset + inner.packet.len(),
            g.payload.len(),
            "{}: kernel adds no padding",
            g.name
        );
        let mut out = vec![0xa5u8; g.payload.len()];
        let ours = encap::encap_vxlan_into(inner.packet, &header, &mut out).unwrap();
        assert_eq!(ours, &g.payload[..], "{}: weft's encap differs", g.name);
        // The inner packet is also a valid flannel udp-backend payload.
        assert_eq!(encap::decap_udp(inner.packet).unwrap().packet, inner.packet);
        inners.push(inner.packet.to_vec());
    }
    inners
}

/// Whether the inner TCP/UDP checksum field holds the partial value (folded pseudo-header).
fn l4_checksum_is_partial(inner: &[u8]) -> Option<bool> {
    let ip = Ipv4Packet::new_checked(inner).ok()?;
    let off = match ip.protocol() {
        Protocol::Udp => 6,
        Protocol::Tcp => 16,
        _ => return None,
    };
    let l4 = ip.payload();
    let field = u16::from_be_bytes([l4[off], l4[off + 1]]);
    let pseudo = checksum::pseudo_header(
        ip.src_addr(),
        ip.dst_addr(),
        u8::from(ip.protocol()),
        l4.len() as u16,
    );
    Some(field == checksum::fold(pseudo))
}

#[test]
fn kernel_vectors_offloads_off() {
    let v = parse_golden(include_str!(
        "../proto/golden/kernel-vxlan-offloads-off.txt"
    ));
    assert_eq!(v.len(), 4);
    let inners = check_vectors(&v);
    for (g, inner) in v.iter().zip(&inners) {
        assert_ne!(l4_checksum_is_partial(inner), Some(true), "{}", g.name);
    }
}

#[test]
fn kernel_vectors_offloads_on() {
    let v = parse_golden(include_str!("../proto/golden/kernel-vxlan-offloads-on.txt"));
    assert_eq!(v.len(), 4);
    let inners = check_vectors(&v);
    let partial: Vec<_> = v
        .iter()
        .zip(&inners)
        .filter(|(_, i)| l4_checksum_is_partial(i) == Some(true))
        .map(|(g, _)| g.name.as_str())
        .collect();
    assert_eq!(partial, ["udp-5000", "tcp-syn-80"]);
}

#[test]
fn per_flow_source_ports() {
    let v = parse_golden(include_str!(
        "../proto/golden/kernel-vxlan-offloads-off.txt"
    ));
    assert_eq!(v[0].src_port, v[1].src_port, "one ICMP flow, one port");
}

/// Fails with a clear message when the suite does not run as root.
fn require_root(what: &str) {
    let out = std::process::Command::new("id")
        .arg("-u")
        .output()
        .expect("run id -u");
    let uid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        uid, "0",
        "{what} needs root (network namespaces): run `make test` as root"
    );
}

/// Captures afresh from this machine's kernel (both offload settings) and checks weft
/// against what it emits now, so a kernel that changed its VXLAN output is noticed.
#[test]
fn live_kernel_capture_matches_weft_encap() {
    require_root("live_kernel_capture_matches_weft_encap");
    let dir = tempfile::tempdir().unwrap();
    for setting in ["off", "on"] {
        let out = dir.path().join(format!("golden-{setting}.txt"));
        let status = std::process::Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/proto/capture-golden.sh"
        ))
        .arg(&out)
        .arg(setting)
        .status()
        .expect("run proto/capture-golden.sh");
        assert!(status.success(), "capture-golden.sh {setting} failed");
        let v = parse_golden(&std::fs::read_to_string(&out).unwrap());
        assert_eq!(v.len(), 4, "offloads {setting}");
        check_vectors(&v);
    }
}

// ---- VXLAN over IPv6: the `flannel-v6.1` device of a kernel dual-stack pair ----

/// The sender's and the receiver's `flannel-v6.1` MACs in proto/capture-golden6.sh.
const SENDER6_MAC: EthernetAddress = EthernetAddress([0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x66]);
const RECEIVER6_MAC: EthernetAddress = EthernetAddress([0x5e, 0xa4, 0x8b, 0x11, 0x22, 0x66]);

/// The sender's and receiver's underlay (PublicIPv6) addresses.
const SENDER6_UNDERLAY: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2);
const RECEIVER6_UNDERLAY: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 3);

/// The inner source (the sender's `flannel-v6.1` address: its IPv6 lease's network address)
/// and destination (a "pod" in the receiver's lease fd10:0:0:16::/64).
const INNER6_SRC: Ipv6Addr = Ipv6Addr::new(0xfd10, 0, 0, 0x15, 0, 0, 0, 0);
const INNER6_DST: Ipv6Addr = Ipv6Addr::new(0xfd10, 0, 0, 0x16, 0, 0, 0, 2);

/// The source ports a kernel VXLAN device with the default `srcport 0 0` picks from: the
/// namespace's ip_local_port_range (32768 60999 by default), upper end excluded
/// (`udp_flow_src_port` scales the flow hash into `max - min` values).
const KERNEL_SRC_PORTS: std::ops::Range<u16> = 32768..60999;

/// The IPv6 traffic class: the 8 bits after the version.
fn traffic_class(ip6: &[u8]) -> u8 {
    (ip6[0] << 4) | (ip6[1] >> 4)
}

/// The IPv6 flow label: the low 20 bits of the first word.
fn flow_label(ip6: &[u8]) -> u32 {
    u32::from_be_bytes([0, ip6[1] & 0x0f, ip6[2], ip6[3]])
}

/// The folded (not inverted) sum of the IPv6 pseudo-header (RFC 8200 section 8.1).
fn pseudo_header6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, len: u32) -> u16 {
    let mut p = [0u8; 40];
    p[..16].copy_from_slice(&src.octets());
    p[16..32].copy_from_slice(&dst.octets());
    p[32..36].copy_from_slice(&len.to_be_bytes());
    p[39] = next_header;
    checksum::fold(checksum::sum(&p))
}

/// How an upper-layer checksum field (of `l4` inside `ip6`) relates to its segment.
#[derive(Debug, PartialEq, Eq)]
enum L4Checksum {
    /// The complete checksum: the segment sums to 0xffff with its pseudo-header.
    Complete,
    /// The kernel's partial value: the field holds the folded pseudo-header sum.
    Partial,
    /// An outer checksum that is complete for the packet once its inner partial checksum is
    /// completed (Linux's local checksum offload: the outer sum is computed in advance for
    /// the inner checksum the device was to fill in, which over a veth never happens).
    CompleteAfterInner,
    /// None of these.
    Wrong,
}

/// The complete checksum for the segment `l4` whose checksum field sits at `field`.
fn complete_checksum6(src: Ipv6Addr, dst: Ipv6Addr, nh: u8, l4: &[u8], field: usize) -> u16 {
    let mut zeroed = l4.to_vec();
    zeroed[field..field + 2].fill(0);
    let pseudo = pseudo_header6(src, dst, nh, l4.len() as u32);
    !checksum::fold(u64::from(pseudo) + checksum::sum(&zeroed))
}

/// Classifies the checksum of the upper-layer segment `l4` (next header `nh`) sent from
/// `src` to `dst`, whose checksum field sits at `field`.
fn l4_checksum6(src: Ipv6Addr, dst: Ipv6Addr, nh: u8, l4: &[u8], field: usize) -> L4Checksum {
    let pseudo = pseudo_header6(src, dst, nh, l4.len() as u32);
    let value = u16::from_be_bytes([l4[field], l4[field + 1]]);
    if checksum::fold(u64::from(pseudo) + checksum::sum(l4)) == 0xffff {
        L4Checksum::Complete
    } else if value == pseudo {
        L4Checksum::Partial
    } else {
        L4Checksum::Wrong
    }
}

/// What one captured VXLAN-over-IPv6 packet showed, beyond what [`check_vectors6`] asserts.
#[derive(Debug)]
struct Outer6 {
    /// The outer UDP checksum field's kind (never zero).
    udp_checksum: L4Checksum,
    /// The outer traffic class.
    traffic_class: u8,
    /// The inner packet's TCP/UDP checksum kind, if it is TCP or UDP.
    inner_l4: Option<L4Checksum>,
}

/// Checks every captured outer IPv6 packet against flanneld's IPv6 set-up: outer IPv6 from
/// PublicIPv6 to PublicIPv6, flow label 0, hop limit 64; UDP from a kernel source port to
/// 8472 with a non-zero checksum; VXLAN I flag and VNI 1; inner Ethernet between the two
/// `flannel-v6.1` MACs with type 0x86dd and no padding; the inner IPv6 packet between the
/// leases. Returns what differs by vector.
fn check_vectors6(vectors: &[Golden]) -> Vec<Outer6> {
    let mut seen = Vec::new();
    for g in vectors {
        let n = g.name.as_str();
        let pkt = &g.payload;
        let ip = Ipv6Packet::new_checked(&pkt[..]).unwrap_or_else(|e| panic!("{n}: {e}"));
        assert_eq!(ip.payload_len() as usize + 40, pkt.len(), "{n}: no padding");
        assert_eq!(ip.next_header(), 17, "{n}: outer next header is UDP");
        assert_eq!(ip.hop_limit(), 64, "{n}: outer hop limit (vxlan ttl auto)");
        assert_eq!(flow_label(pkt), 0, "{n}: outer flow label");
        assert_eq!(ip.src_addr(), SENDER6_UNDERLAY, "{n}");
        assert_eq!(ip.dst_addr(), RECEIVER6_UNDERLAY, "{n}");
        let udp_bytes = &pkt[40..];
        let udp = UdpPacket::new_checked(udp_bytes).unwrap_or_else(|e| panic!("{n}: {e}"));
        assert_eq!(udp.src_port(), g.src_port, "{n}");
        assert!(
            KERNEL_SRC_PORTS.contains(&udp.src_port()),
            "{n}: source port {} outside {KERNEL_SRC_PORTS:?}",
            udp.src_port()
        );
        assert_eq!(udp.dst_port(), 8472, "{n}: flannel's VXLAN port");
        assert_eq!(udp.len() as usize, udp_bytes.len(), "{n}: UDP length");
        assert_ne!(udp.checksum(), 0, "{n}: IPv6 UDP checksum is never zero");

        let vxlan = VxlanPacket::new_checked(udp.payload()).unwrap_or_else(|e| panic!("{n}: {e}"));
        assert_eq!(vxlan.flags(), 0x08, "{n}: I flag only");
        assert_eq!(vxlan.vni(), Vni::new(1).unwrap(), "{n}");
        assert_eq!(
            &udp.payload()[..8],
            &[8, 0, 0, 0, 0, 0, 1, 0],
            "{n}: reserved bits"
        );
        // weft's VXLAN + Ethernet header for the same peer, but for the EtherType.
        let header = encap::vxlan_header(Vni::new(1).unwrap(), SENDER6_MAC, RECEIVER6_MAC);
        assert_eq!(
            &udp.payload()[..20],
            &header[..20],
            "{n}: VXLAN header and MACs"
        );
        let eth =
            EthernetFrame::new_checked(vxlan.payload()).unwrap_or_else(|e| panic!("{n}: {e}"));
        assert_eq!(
            eth.dst_addr(),
            RECEIVER6_MAC,
            "{n}: the receiver's flannel-v6 MAC"
        );
        assert_eq!(
            eth.src_addr(),
            SENDER6_MAC,
            "{n}: the sender's flannel-v6 MAC"
        );
        assert_eq!(eth.ethertype(), EtherType::Ipv6, "{n}");

        let inner_bytes = eth.payload();
        let inner = Ipv6Packet::new_checked(inner_bytes).unwrap_or_else(|e| panic!("{n}: {e}"));
        assert_eq!(
            inner.payload_len() as usize + 40,
            inner_bytes.len(),
            "{n}: the kernel adds no padding"
        );
        assert_eq!(inner.src_addr(), INNER6_SRC, "{n}");
        assert_eq!(inner.dst_addr(), INNER6_DST, "{n}");
        let l4 = &inner_bytes[40..];
        let (src, dst, nh) = (inner.src_addr(), inner.dst_addr(), inner.next_header());
        let field = match nh {
            58 => 2,
            17 => 6,
            6 => 16,
            other => panic!("{n}: unexpected inner next header {other}"),
        };
        let inner_l4 = l4_checksum6(src, dst, nh, l4, field);
        assert_ne!(inner_l4, L4Checksum::Wrong, "{n}: inner checksum");
        if nh == 58 {
            assert_eq!(l4[0], 128, "{n}: an echo request");
            // ICMPv6 checksums are always complete (raw sockets, no offload).
            assert_eq!(inner_l4, L4Checksum::Complete, "{n}");
        }
        let mut udp_checksum = l4_checksum6(ip.src_addr(), ip.dst_addr(), 17, udp_bytes, 6);
        if udp_checksum == L4Checksum::Wrong && inner_l4 == L4Checksum::Partial {
            // Complete the inner checksum in a copy and look again.
            let at = 40 + 8 + 8 + 14 + 40 + field;
            let mut fixed = pkt.clone();
            let sum = complete_checksum6(src, dst, nh, l4, field);
            fixed[at..at + 2].copy_from_slice(&sum.to_be_bytes());
            if l4_checksum6(ip.src_addr(), ip.dst_addr(), 17, &fixed[40..], 6)
                == L4Checksum::Complete
            {
                udp_checksum = L4Checksum::CompleteAfterInner;
            }
        }
        assert_ne!(udp_checksum, L4Checksum::Wrong, "{n}: outer UDP checksum");
        let inner_l4 = (nh != 58).then_some(inner_l4);
        let expect_tc = if n.contains("ect0") { 0xba } else { 0 };
        assert_eq!(
            traffic_class(inner_bytes),
            expect_tc,
            "{n}: inner traffic class"
        );
        seen.push(Outer6 {
            udp_checksum,
            traffic_class: traffic_class(pkt),
            inner_l4,
        });
    }
    assert_eq!(
        vectors.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(),
        [
            "icmp6-echo-56",
            "icmp6-echo-1372",
            "udp-5000",
            "udp-5001-ef-ect0",
            "tcp-syn-80"
        ]
    );
    // One ICMPv6 flow, one source port.
    assert_eq!(vectors[0].src_port, vectors[1].src_port);
    // The outer traffic class carries the inner ECN bits (RFC 6040) but not its DSCP.
    let tcs: Vec<u8> = seen.iter().map(|o| o.traffic_class).collect();
    assert_eq!(tcs, [0, 0, 0, 0x02, 0]);
    seen
}

#[test]
fn kernel_vxlan6_vectors_offloads_off() {
    let v = parse_golden(include_str!(
        "../proto/golden/kernel-vxlan6-offloads-off.txt"
    ));
    for (g, o) in v.iter().zip(check_vectors6(&v)) {
        // What a kernel on another machine puts on the wire: every checksum complete.
        assert_eq!(o.udp_checksum, L4Checksum::Complete, "{}", g.name);
        assert_ne!(o.inner_l4, Some(L4Checksum::Partial), "{}", g.name);
    }
}

#[test]
fn kernel_vxlan6_vectors_offloads_on() {
    let v = parse_golden(include_str!(
        "../proto/golden/kernel-vxlan6-offloads-on.txt"
    ));
    let seen = check_vectors6(&v);
    let partial = |f: fn(&Outer6) -> bool| -> Vec<&str> {
        v.iter()
            .zip(&seen)
            .filter(|(_, o)| f(o))
            .map(|(g, _)| g.name.as_str())
            .collect()
    };
    // Inner TCP/UDP checksums are left partial (offloaded), as over IPv4.
    assert_eq!(
        partial(|o| o.inner_l4 == Some(L4Checksum::Partial)),
        ["udp-5000", "udp-5001-ef-ect0", "tcp-syn-80"]
    );
    // The outer UDP checksum crosses the veth as the partial value when the inner one is
    // complete; beside an inner partial checksum it is computed in advance for the inner
    // checksum the device should have filled in (local checksum offload).
    assert_eq!(
        partial(|o| o.udp_checksum == L4Checksum::Partial),
        ["icmp6-echo-56", "icmp6-echo-1372"]
    );
    assert_eq!(
        partial(|o| o.udp_checksum == L4Checksum::CompleteAfterInner),
        ["udp-5000", "udp-5001-ef-ect0", "tcp-syn-80"]
    );
}

/// The sender's and the receiver's IPv6 leases in proto/capture-golden6.sh.
const SENDER6_SUBNET: &str = "fd10:0:0:15::/64";
const RECEIVER6_SUBNET: &str = "fd10:0:0:16::/64";

/// The lease table of one end of the capture's pair: the other end's IPv6 half (its subnet,
/// PublicIPv6 and `flannel-v6.1` MAC), built as the data path builds its peers.
fn table6(local_mac: EthernetAddress, peer: (&str, Ipv6Addr, EthernetAddress)) -> LeaseTable {
    let local = LocalVtep {
        vni: Vni::new(1).unwrap(),
        mac: local_mac,
        port: 8472,
    };
    let peer6 = Peer6::new(peer.0.parse().unwrap(), peer.1, Some(peer.2), &local);
    LeaseTable::from_peers_dual(24, Vec::new(), 64, vec![peer6], 1)
}

/// weft against the kernel's `flannel-v6.1`, byte for byte: the receiver's weft decapsulates
/// each captured packet with `decap_vxlan6` and accepts it by its receive checks; the
/// sender's weft encapsulates the captured inner packet for the peer its table gives (VXLAN
/// over IPv6: header from `Peer6`, as `dataplane::packet::outbound6` prepends it) and the
/// result is compared with the whole captured outer packet.
///
/// weft writes the UDP payload (VXLAN header, inner Ethernet header, inner packet) and picks
/// the datagram's destination (the peer's PublicIPv6 and port) and source address (its
/// PublicIPv6, the socket's bind address); those bytes are compared unmasked, as the IPv4
/// golden test compares the UDP payload. The rest of the outer IPv6 and UDP headers the
/// kernel writes for weft's UDP socket, so, as the IPv4 vectors (UDP payload only) leave them
/// out, they are masked here, each for its reason:
/// - UDP source port (bytes 40..42): weft picks its send socket by its own inner flow hash,
///   the kernel device by the skb hash, so the ports differ; only the property both share,
///   one port per flow, is checked.
/// - UDP checksum (bytes 46..48): the kernel computes it for weft's socket, and it covers the
///   source port (`check_vectors6` checks the captured one).
/// - Traffic class and flow label (bytes 0..4 less the version nibble) and hop limit (byte
///   7): the socket's defaults, not weft's bytes. (A kernel VXLAN device copies the inner ECN
///   bits into the outer traffic class; weft's socket sets none, over IPv4 as over IPv6.)
fn check_weft_against_vectors6(vectors: &[Golden]) {
    let vni = Vni::new(1).unwrap();
    let sender = table6(
        SENDER6_MAC,
        (RECEIVER6_SUBNET, RECEIVER6_UNDERLAY, RECEIVER6_MAC),
    );
    let receiver = table6(
        RECEIVER6_MAC,
        (SENDER6_SUBNET, SENDER6_UNDERLAY, SENDER6_MAC),
    );
    let receiver_subnet = RECEIVER6_SUBNET.parse().unwrap();
    let mut flows = Vec::new();
    for g in vectors {
        let n = g.name.as_str();
        let captured = &g.payload;
        let udp_payload = &captured[40 + 8..];

        // Receive: weft's decapsulation and receive checks accept the kernel's packet.
        let inner = encap::decap_vxlan6(udp_payload, vni, RECEIVER6_MAC)
            .unwrap_or_else(|r| panic!("{n}: kernel packet dropped as {r}"));
        assert_eq!((inner.src, inner.dst), (INNER6_SRC, INNER6_DST), "{n}");
        assert_eq!(
            encap::VXLAN_ENCAP_LEN + inner.packet.len(),
            udp_payload.len(),
            "{n}"
        );
        let owner = receiver.lookup6(inner.src).map(|p| p.public_ip);
        assert_eq!(
            encap::check_inner_route6(owner, SENDER6_UNDERLAY, inner.dst, receiver_subnet),
            Ok(()),
            "{n}: receive checks"
        );

        // Send: the peer weft's table gives for the inner destination, and its encapsulation.
        let peer = sender
            .lookup6(inner.dst)
            .expect("the receiver's IPv6 lease");
        let mut payload = vec![0u8; udp_payload.len()];
        let ours = encap::encap_vxlan_into(inner.packet, &peer.vxlan_header, &mut payload)
            .unwrap_or_else(|e| panic!("{n}: {e}"));
        assert_eq!(ours.len(), udp_payload.len(), "{n}");

        // The whole outer packet as weft's socket sends it, the kernel's fields masked.
        let mut weft = vec![0u8; 48 + ours.len()];
        weft[0] = 0x60; // version 6
        weft[4..6].copy_from_slice(&((8 + ours.len()) as u16).to_be_bytes());
        weft[6] = 17; // a UDP socket
        weft[8..24].copy_from_slice(&SENDER6_UNDERLAY.octets()); // bound to PublicIPv6
        weft[24..40].copy_from_slice(&peer.underlay.ip().octets());
        weft[42..44].copy_from_slice(&peer.underlay.port().to_be_bytes());
        weft[44..46].copy_from_slice(&((8 + ours.len()) as u16).to_be_bytes());
        weft[48..].copy_from_slice(ours);
        let mask = |p: &[u8]| {
            let mut m = p.to_vec();
            m[0] &= 0xf0; // the traffic class's high nibble (the version stays) ...
            m[1..4].fill(0); // ... its low nibble and the flow label
            m[7] = 0; // hop limit
            m[40..42].fill(0); // UDP source port
            m[46..48].fill(0); // UDP checksum
            m
        };
        assert_eq!(
            mask(&weft),
            mask(captured),
            "{n}: weft's IPv6 encapsulation differs from the kernel's"
        );
        flows.push(encap::flow_hash(inner.packet));
    }
    // One flow, one source port, as the kernel's two echoes share one.
    assert_eq!(flows[0], flows[1], "the two echoes are one flow");
    assert_eq!(vectors[0].src_port, vectors[1].src_port);
}

#[test]
fn weft_encap6_matches_kernel_vectors_offloads_off() {
    let v = parse_golden(include_str!(
        "../proto/golden/kernel-vxlan6-offloads-off.txt"
    ));
    assert_eq!(v.len(), 5);
    check_weft_against_vectors6(&v);
}

#[test]
fn weft_encap6_matches_kernel_vectors_offloads_on() {
    // Inner checksums left partial by the kernel pass through weft unchanged, byte for byte.
    let v = parse_golden(include_str!(
        "../proto/golden/kernel-vxlan6-offloads-on.txt"
    ));
    assert_eq!(v.len(), 5);
    check_weft_against_vectors6(&v);
}

/// Captures afresh from this machine's kernel (both offload settings) and checks that its
/// VXLAN-over-IPv6 output still has the stored vectors' format.
#[test]
fn live_kernel_capture6_matches_golden_format() {
    require_root("live_kernel_capture6_matches_golden_format");
    let dir = tempfile::tempdir().unwrap();
    for setting in ["off", "on"] {
        let out = dir.path().join(format!("golden6-{setting}.txt"));
        let status = std::process::Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/proto/capture-golden6.sh"
        ))
        .arg(&out)
        .arg(setting)
        .status()
        .expect("run proto/capture-golden6.sh");
        assert!(status.success(), "capture-golden6.sh {setting} failed");
        let v = parse_golden(&std::fs::read_to_string(&out).unwrap());
        let seen = check_vectors6(&v);
        if setting == "off" {
            assert!(seen.iter().all(|o| o.udp_checksum == L4Checksum::Complete
                && o.inner_l4 != Some(L4Checksum::Partial)));
        }
    }
}
