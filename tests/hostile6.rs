//! Hostile datagrams on the IPv6 tunnel socket of a dual-stack weft node (real weft, real
//! etcd, namespaces): from lab hosts, VXLAN-over-IPv6 datagrams to the node's
//! PublicIPv6:8472 that flanneld's `flannel-v6.1` would not deliver (wrong VNI, the IPv4
//! VTEP's MAC, truncated headers, IPv4 inside, a spoofed inner source, a sender that holds no
//! lease, a destination that is not ours, a zero UDP checksum) never reach the pod and are
//! counted by their reason; the node stays up and its pods still reach each other. Needs
//! root.

mod harness;

use std::net::Ipv6Addr;
use std::time::Duration;

use harness::{require_root, Etcd, Lab, Netns, WeftNode, PREFIX};
use weft::wire::{Subnet, Subnet6};

/// flannel's dual-stack network config.
const DUAL_STACK_CONFIG: &str = r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/48","Backend":{"Type":"vxlan"}}"#;

/// Sends `count` hand-made VXLAN-over-IPv6 datagrams from `src` to `[dst]:8472`, each
/// carrying a UDP datagram to port 7000 (checksums complete) from `inner_src` to
/// `inner_dst`, shaped by `kind`:
/// good, bad-flags, vxlan-trunc (4 bytes of VXLAN header), eth-trunc (VXLAN and 10 bytes of
/// Ethernet), ip6-trunc (VXLAN, Ethernet and 20 bytes of IPv6 header), ip6-short (an IPv6
/// payload length beyond the datagram), ipv4-inner (Ethernet type IPv4 and an IPv4 packet),
/// ipv4-as-ipv6 (Ethernet type IPv6 around an IPv4 packet), zero-csum (the outer UDP
/// checksum left zero: UDP_NO_CHECK6_TX).
const SEND_VXLAN6: &str = r#"
import socket, struct, sys
src, dst, vni, mac, kind, inner_src, inner_dst, count = sys.argv[1:9]
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
payload = b"hostile6-test"
if kind.startswith("ipv4"):
    s4, d4 = "10.1.2.9", "10.1.1.2"
    udp = struct.pack("!HHHH", 40000, 7000, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0x4000, 64, 17, 0,
                     socket.inet_aton(s4), socket.inet_aton(d4))
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:] + udp
    etype = b"\x08\x00" if kind == "ipv4-inner" else b"\x86\xdd"
else:
    s6, d6 = socket.inet_pton(socket.AF_INET6, inner_src), socket.inet_pton(socket.AF_INET6, inner_dst)
    udp = struct.pack("!HHHH", 40000, 7000, 8 + len(payload), 0) + payload
    pseudo = s6 + d6 + struct.pack("!IxxxB", len(udp), 17)
    udp = udp[:6] + struct.pack("!H", csum(pseudo + udp) or 0xffff) + udp[8:]
    plen = len(udp) + (100 if kind == "ip6-short" else 0)
    ip = struct.pack("!IHBB", 0x60000000, plen, 17, 64) + s6 + d6 + udp
    etype = b"\x86\xdd"
eth = bytes.fromhex(mac.replace(":", "")) + bytes.fromhex("020000000001") + etype
flags = 0x00 if kind == "bad-flags" else 0x08
vx = struct.pack("!BBBB", flags, 0, 0, 0) + struct.pack("!I", int(vni) << 8)
frame = vx + eth + ip
if kind == "vxlan-trunc": frame = vx[:4]
if kind == "eth-trunc": frame = vx + eth[:10]
if kind == "ip6-trunc": frame = vx + eth + ip[:20]
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
if kind == "zero-csum":
    s.setsockopt(socket.IPPROTO_UDP, 101, 1)  # UDP_NO_CHECK6_TX
s.bind((src, 0))
for _ in range(int(count)):
    s.sendto(frame, (dst, 8472))
"#;

/// Counts UDP datagrams arriving on [::]:7000 for `secs` seconds; prints the count.
const COUNT_UDP6: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::", 7000))
s.settimeout(0.1)
n, end = 0, time.time() + float(sys.argv[1])
while time.time() < end:
    try:
        s.recv(2048); n += 1
    except socket.timeout:
        pass
print(n)
"#;

/// The IPv6 VTEP MAC (BackendV6Data) and the IPv4 one (BackendData) of a weft node's
/// dual-stack lease.
fn vtep_macs(etcd: &Etcd, s: Subnet, s6: Subnet6) -> (String, String) {
    let key = format!("{PREFIX}/subnets/{}&{}", s.key_string(), s6.key_string());
    let rec = etcd.get(&key).unwrap_or_else(|| panic!("no lease {key}"));
    let v: serde_json::Value = serde_json::from_str(&rec).expect("lease JSON");
    let mac = |k: &str| v[k]["VtepMAC"].as_str().expect("VtepMAC").to_string();
    (mac("BackendV6Data"), mac("BackendData"))
}

/// A counter of the kernel's IPv6 UDP statistics (/proc/net/snmp6) in `ns`.
fn snmp6(ns: &Netns, name: &str) -> u64 {
    let out = ns.exec(&["cat", "/proc/net/snmp6"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(char::is_whitespace)?;
            (k == name).then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

#[test]
fn hostile_ipv6_datagrams_are_dropped_and_counted() {
    require_root();
    let mut lab = Lab::builder().hosts(2).outside().ipv6().build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(DUAL_STACK_CONFIG);
    let mut a = WeftNode::start_dual_with_pod(&mut lab, 0, &etcd, &[]);
    let b = WeftNode::start_dual_with_pod(&mut lab, 1, &etcd, &[]);
    let (a6, b6) = (
        a.subnet6.expect("dual stack"),
        b.subnet6.expect("dual stack"),
    );
    let (mac6, mac4) = vtep_macs(&etcd, a.subnet, a6);
    let (p0, p1) = (lab.host(0).pod(0), lab.host(1).pod(0));
    assert!(p1.wait_for_ping(p0.addr6(), Duration::from_secs(5)));

    let a_ip6 = lab.host(0).addr6().to_string();
    let b_ip6 = lab.host(1).addr6().to_string();
    let out_ip6 = lab.outside().addr6().to_string();
    let pod = p0.addr6().to_string();
    // An inner source in B's IPv6 subnet (B's pod), and addresses no lease of B's holds.
    let b_pod = p1.addr6().to_string();
    let nobody = Ipv6Addr::from(u128::from(a6.addr()) + (0x90 << 64) + 9).to_string();
    let a_own = Ipv6Addr::from(u128::from(a6.addr()) + 0x99).to_string();
    let b_other = Ipv6Addr::from(u128::from(b6.addr()) + 7).to_string();

    let counter = p0.spawn(&["python3", "-c", COUNT_UDP6, "8"]);
    std::thread::sleep(Duration::from_millis(300));
    let send = |ns: &Netns, src: &str, vni: &str, mac: &str, kind: &str, isrc: &str, idst: &str| {
        ns.exec(&[
            "python3",
            "-c",
            SEND_VXLAN6,
            src,
            &a_ip6,
            vni,
            mac,
            kind,
            isrc,
            idst,
            "20",
        ]);
    };
    let (h1, out): (&Netns, &Netns) = (lab.host(1), lab.outside());
    let csum_errors = snmp6(lab.host(0), "Udp6InCsumErrors");
    let hostile: &[(&Netns, &str, &str, &str, &str, &str, &str)] = &[
        // (from, src, VNI, inner MAC, kind, inner source, inner destination)
        (out, &out_ip6, "1", &mac6, "good", &b_pod, &pod),
        (h1, &b_ip6, "2", &mac6, "good", &b_pod, &pod),
        (h1, &b_ip6, "1", &mac4, "good", &b_pod, &pod),
        (h1, &b_ip6, "1", "02:de:ad:be:ef:00", "good", &b_pod, &pod),
        (h1, &b_ip6, "1", &mac6, "bad-flags", &b_pod, &pod),
        (h1, &b_ip6, "1", &mac6, "vxlan-trunc", &b_pod, &pod),
        (h1, &b_ip6, "1", &mac6, "eth-trunc", &b_pod, &pod),
        (h1, &b_ip6, "1", &mac6, "ip6-trunc", &b_pod, &pod),
        (h1, &b_ip6, "1", &mac6, "ip6-short", &b_pod, &pod),
        (h1, &b_ip6, "1", &mac6, "ipv4-inner", &b_pod, &pod),
        (h1, &b_ip6, "1", &mac6, "ipv4-as-ipv6", &b_pod, &pod),
        (h1, &b_ip6, "1", &mac6, "good", &nobody, &pod),
        (h1, &b_ip6, "1", &mac6, "good", &a_own, &pod),
        (h1, &b_ip6, "1", &mac6, "good", &b_pod, &b_other),
        (h1, &b_ip6, "1", &mac6, "zero-csum", &b_pod, &pod),
    ];
    for (ns, src, vni, mac, kind, isrc, idst) in hostile {
        send(ns, src, vni, mac, kind, isrc, idst);
    }
    // The control: 5 valid datagrams, which must arrive.
    h1.exec(&[
        "python3",
        "-c",
        SEND_VXLAN6,
        &b_ip6,
        &a_ip6,
        "1",
        &mac6,
        "good",
        &b_pod,
        &pod,
        "5",
    ]);
    let got = counter.output_within(Duration::from_secs(20));
    let received: u32 = String::from_utf8_lossy(&got.stdout)
        .trim()
        .parse()
        .expect("count");
    assert_eq!(received, 5, "only the valid datagrams reach the pod");
    std::thread::sleep(Duration::from_millis(200));

    let expect = [
        ("unknown_sender", 20),
        ("wrong_vni", 20),
        // Our IPv4 VTEP's MAC and a stranger's.
        ("wrong_inner_mac", 40),
        ("bad_flags", 20),
        // VXLAN or Ethernet header cut short.
        ("truncated", 40),
        // An IPv6 header cut short, a payload length beyond the datagram.
        ("inner_truncated", 40),
        // IPv4 inside, by EtherType or by version.
        ("inner_ipv4", 40),
        // An inner source no lease of the sender's holds, or our own subnet.
        ("spoofed_source", 40),
        ("not_for_us", 20),
    ];
    let mut text = String::new();
    for (reason, n) in expect {
        let got = a.drops(reason);
        if got != n {
            text += &format!("{reason}: {got}, want {n}\n");
        }
    }
    // Every other reason stays at zero.
    for r in weft::encap::DropReason::ALL {
        let name = r.as_str();
        if !expect.iter().any(|(e, _)| *e == name) && a.drops(name) != 0 {
            text += &format!("{name}: {}, want 0\n", a.drops(name));
        }
    }
    assert!(text.is_empty(), "drops by reason:\n{text}");
    // A zero UDP checksum over IPv6: flanneld's flannel-v6.1 (noudp6zerocsumrx) does not
    // take it, nor does weft's socket: the kernel drops it before weft sees it.
    assert!(
        snmp6(lab.host(0), "Udp6InCsumErrors") >= csum_errors + 20,
        "the zero-checksum datagrams were not refused by the kernel"
    );

    // The node is up and the pods still reach each other in both families.
    assert!(a.is_running(), "weft exited");
    assert!(p1.ping(p0.addr6(), 3).all_replied());
    assert!(p0.ping(p1.addr6(), 3).all_replied());
    assert!(p0.ping(p1.addr(), 3).all_replied());
    // The accepted control datagrams count for B's IPv6 half.
    let series = format!(
        "weft_peer_packets_total{{subnet=\"{b6}\",public_ip=\"{b_ip6}\",direction=\"rx\"}}"
    );
    assert!(a.metric(&series) >= 5, "{series}");
}
