//! Golden VXLAN packets captured from a Linux kernel VXLAN device (proto/golden/): weft's
//! decapsulation accepts them and its encapsulation of the same inner packet matches them
//! byte for byte.

use std::net::Ipv4Addr;

use weft::encap::{self, VxlanRx};
use weft::wire::checksum;
use weft::wire::ipv4::Protocol;
use weft::wire::{EthernetAddress, Ipv4Packet, Vni};

/// One captured datagram: its name, outer source port and UDP payload.
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
