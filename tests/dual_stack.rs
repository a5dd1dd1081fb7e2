//! The harness's dual-stack half against flannel v0.20.2's contract (DESIGN.md "Dual stack"):
//! two kernel flannel nodes set up as flanneld's vxlan backend sets up a dual-stack node,
//! learning each other from the leases they wrote into a real etcd, carry IPv6 pod traffic
//! (ping6, a checksummed TCP transfer) both ways in VXLAN over an IPv6 underlay, and IPv4
//! still. Also the dual-stack lab's IPv6 routing, the lease record's exact bytes and the weft
//! builder's `-public-ipv6`. Needs root (but the record test).

mod harness;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use harness::{
    lease_json_dual, require_root, tcp_transfer, vtep_mac6_for, Etcd, KernelFlannelNode, Lab,
    WeftNode, PREFIX, VXLAN6_OVERHEAD, VXLAN_CONFIG,
};
use weft::wire::{EthernetAddress, Subnet6};

/// flannel's dual-stack network config (IPv6SubnetLen defaults to 64 for a /48).
const DUAL_STACK_CONFIG: &str = r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/48","Backend":{"Type":"vxlan"}}"#;

const TRANSFER_BYTES: u64 = 20 << 20;

/// A dual-stack lab of two hosts with a dual-stack pod each, etcd holding flannel's
/// dual-stack config, and a dual-stack kernel flannel node on each host that published its
/// lease and applied every other lease it finds in etcd, as flanneld does.
fn dual_stack_pair(offloads: bool) -> (Lab, Etcd, KernelFlannelNode, KernelFlannelNode) {
    let mut lab = Lab::builder().hosts(2).ipv6().build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(DUAL_STACK_CONFIG);
    let mut nodes = Vec::new();
    for i in 0..2 {
        let (s, s6) = (Lab::default_pod_subnet(i), Lab::default_pod_subnet6(i));
        lab.host_mut(i).add_dual_pod(s, s6);
        let node = KernelFlannelNode::builder(s)
            .ipv6(s6)
            .offloads(offloads)
            .install(lab.host(i));
        node.publish(&etcd, 3600);
        nodes.push(node);
    }
    let leases = etcd.list(&format!("{PREFIX}/subnets/"));
    assert_eq!(leases.len(), 2, "{leases:?}");
    for node in &nodes {
        let own = node.lease_key(PREFIX);
        for (key, record) in leases.iter().filter(|(k, _)| *k != own) {
            let tail = key
                .strip_prefix(&format!("{PREFIX}/subnets/"))
                .expect("listed under the prefix");
            node.apply_lease(tail, record);
        }
    }
    let n1 = nodes.pop().expect("two nodes");
    let n0 = nodes.pop().expect("two nodes");
    (lab, etcd, n0, n1)
}

/// The lease flanneld writes, the devices it makes, and IPv6 and IPv4 pod traffic both ways.
fn kernel_dual_stack_nodes_carry_pod_traffic(offloads: bool) {
    require_root();
    let (lab, etcd, n0, n1) = dual_stack_pair(offloads);

    // The lease in etcd: key and record as DESIGN.md gives them.
    let key = format!("{PREFIX}/subnets/10.1.1.0-24&fd10:0:0:1::-64");
    assert_eq!(n0.lease_key(PREFIX), key);
    let record = etcd.get(&key).expect("n0's lease in etcd");
    assert_eq!(
        record,
        r#"{"PublicIP":"192.168.64.10","PublicIPv6":"fd77::a","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:77:66:a8:40:0a"},"BackendV6Data":{"VNI":1,"VtepMAC":"0e:77:76:00:00:0a"}}"#
    );
    assert!(etcd
        .get(&format!("{PREFIX}/subnets/10.1.2.0-24&fd10:0:0:2::-64"))
        .is_some());

    // flannel-v6.1 as flanneld makes it: the kernel picks the MTU (underlay - 70) and keeps
    // its UDP checksum defaults for IPv6.
    let host = lab.host(0);
    assert_eq!(host.addr6(), "fd77::a".parse::<Ipv6Addr>().unwrap());
    assert_eq!(n0.device6(), "flannel-v6.1");
    assert_eq!(n0.mtu6(), host.mtu() - VXLAN6_OVERHEAD);
    let link = host.ip(&["-d", "link", "show", "dev", "flannel-v6.1"]);
    for want in [
        "mtu 1430 ",
        "link/ether 0e:77:76:00:00:0a ",
        "vxlan id 1 ",
        "local fd77::a ",
        "dev eth0 ",
        "dstport 8472 ",
        "nolearning ",
        "noudp6zerocsumtx ",
        "noudp6zerocsumrx ",
    ] {
        assert!(link.contains(want), "flannel-v6.1 lacks {want:?}:\n{link}");
    }
    let link4 = host.ip(&["-d", "link", "show", "dev", "flannel.1"]);
    assert!(
        link4.contains("mtu 1450 ") && link4.contains("local 192.168.64.10 "),
        "{link4}"
    );
    let addr = host.ip(&["-6", "addr", "show", "dev", "flannel-v6.1"]);
    assert!(addr.contains("inet6 fd10:0:0:1::/128 "), "{addr}");
    assert!(
        n0.wait_ipv6_address(Duration::from_secs(5)),
        "fd10:0:0:1:: stayed tentative:\n{addr}"
    );
    assert_eq!(
        n0.peer_state6(n1.subnet6(), n1.vtep_mac6()).len(),
        3,
        "IPv6 neighbour, fdb entry and route for the peer"
    );
    assert_eq!(n0.peer_state(n1.subnet(), n1.vtep_mac()).len(), 3);
    let fdb = host.bridge(&["fdb", "show", "dev", "flannel-v6.1"]);
    assert!(
        fdb.contains("0e:77:76:00:00:0b dst fd77::b "),
        "the v6 VtepMAC -> PublicIPv6 entry:\n{fdb}"
    );
    let features = host.exec(&["ethtool", "-k", "flannel-v6.1"]);
    let features = String::from_utf8_lossy(&features.stdout);
    let tx = if offloads { "on" } else { "off" };
    assert!(
        features.contains(&format!("tx-checksumming: {tx}")),
        "flannel-v6.1 tx-checksumming should be {tx}:\n{features}"
    );

    let (p0, p1) = (lab.host(0).pod(0), lab.host(1).pod(0));
    assert_eq!(p1.addr6(), "fd10:0:0:2::2".parse::<Ipv6Addr>().unwrap());
    for (from, to, what) in [(p0, p1, "pod0 -> pod1"), (p1, p0, "pod1 -> pod0")] {
        let ping = from.ping(to.addr6(), 3);
        assert!(ping.all_replied(), "ping6 {what}:\n{}", ping.output);
        let ping = from.ping(to.addr(), 3);
        assert!(ping.all_replied(), "ping {what}:\n{}", ping.output);
    }

    // The pods' MTU is FLANNEL_MTU (1450) but flannel-v6.1's is 1430: a full-size IPv6
    // packet is refused with Packet Too Big and the pod learns the smaller path MTU.
    let fits = n0.mtu6() - 48;
    let ping = p0.ping_sized(p1.addr6(), 2, fits);
    assert!(ping.all_replied(), "{fits}-byte ping6:\n{}", ping.output);
    let ping = p0.ping_sized(p1.addr6(), 2, fits + 20);
    assert!(
        ping.none_replied(),
        "{}-byte ping6:\n{}",
        fits + 20,
        ping.output
    );
    let route = p0.exec(&["ip", "-6", "route", "get", &p1.addr6().to_string()]);
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(
        route.contains(&format!("mtu {} ", n0.mtu6())),
        "pod0 did not learn flannel-v6.1's MTU: {route}"
    );

    for (i, j, port) in [(0, 1, 5001), (1, 0, 5002)] {
        let (h_from, dev) = (lab.host(i), "flannel-v6.1");
        let (from, to) = (lab.host(i).pod(0), lab.host(j).pod(0));
        let before = h_from.link_stats(dev);
        let t = tcp_transfer(
            from,
            to,
            to.addr6(),
            port,
            TRANSFER_BYTES,
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(t.intact(), "IPv6 transfer corrupted: {t:?}");
        assert_eq!(t.received, TRANSFER_BYTES);
        assert_eq!(t.peer, from.addr6().to_string(), "no NAT between pods");
        let after = h_from.link_stats(dev);
        assert!(
            after.tx_bytes - before.tx_bytes >= TRANSFER_BYTES,
            "the transfer did not go through {dev}: {before:?} -> {after:?}"
        );
        println!(
            "kernel dual stack, offloads {tx}: {} MB over IPv6 {} -> {} at {:.2} Gbit/s",
            TRANSFER_BYTES >> 20,
            from.name(),
            to.addr6(),
            t.gbit_per_s()
        );
    }
    let t = tcp_transfer(p0, p1, p1.addr(), 5003, 4 << 20, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(t.intact(), "IPv4 transfer corrupted: {t:?}");
}

#[test]
fn kernel_dual_stack_nodes_carry_pod_traffic_offloads_on() {
    kernel_dual_stack_nodes_carry_pod_traffic(true);
}

#[test]
fn kernel_dual_stack_nodes_carry_pod_traffic_offloads_off() {
    kernel_dual_stack_nodes_carry_pod_traffic(false);
}

/// Removing a lease's IPv6 half cuts IPv6 between the pods and leaves IPv4 alone; adding it
/// back restores it.
#[test]
fn removing_the_ipv6_half_cuts_only_ipv6() {
    require_root();
    let (lab, _etcd, n0, n1) = dual_stack_pair(true);
    let (p0, p1) = (lab.host(0).pod(0), lab.host(1).pod(0));
    assert!(p0.ping(p1.addr6(), 2).all_replied(), "before removal");

    n0.remove_peer6(n1.subnet6(), n1.public_ip6(), n1.vtep_mac6());
    let left = n0.peer_state6(n1.subnet6(), n1.vtep_mac6());
    assert!(left.is_empty(), "remove_peer6 left {left:?}");
    let ping = p0.ping(p1.addr6(), 2);
    assert!(ping.none_replied(), "ping6 after removal:\n{}", ping.output);
    let ping = p0.ping(p1.addr(), 2);
    assert!(ping.all_replied(), "IPv4 after removal:\n{}", ping.output);

    n0.add_peer6(n1.subnet6(), n1.public_ip6(), n1.vtep_mac6());
    let ping = p0.ping(p1.addr6(), 2);
    assert!(
        ping.all_replied(),
        "ping6 after re-adding:\n{}",
        ping.output
    );
}

/// A dual-stack lab routes IPv6 between its hosts, across the router to segment B and to
/// the outside host; IPv4 works as in any lab.
#[test]
fn dual_stack_lab_routes_ipv6_across_segments() {
    require_root();
    let lab = Lab::builder()
        .hosts(1)
        .outside()
        .segment_b(1)
        .ipv6()
        .build();
    let (a, b) = (lab.host(0), lab.host(1));
    assert_eq!(b.addr6(), "fd77:0:0:1::a".parse::<Ipv6Addr>().unwrap());
    assert_eq!(
        lab.outside().addr6(),
        "fd77::c8".parse::<Ipv6Addr>().unwrap()
    );
    for h in [a, b] {
        assert_eq!(h.sysctl_get("net.ipv6.conf.all.forwarding"), "1");
    }
    for (dst, what) in [
        (a.addr6(), "B -> A"),
        (lab.outside().addr6(), "B -> outside"),
    ] {
        // The first packets wait for neighbour discovery on both segments (and the router's
        // addresses' DAD): wait for the path, then count.
        b.wait_for_ping(dst, std::time::Duration::from_secs(10));
        let ping = b.ping(dst, 2);
        assert!(ping.all_replied(), "{what}:\n{}", ping.output);
    }
    let ping = b.ping(a.addr(), 2);
    assert!(ping.all_replied(), "IPv4 B -> A:\n{}", ping.output);
    let route = b.exec(&["ip", "-6", "route", "get", &a.addr6().to_string()]);
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(
        route.contains("via fd77:0:0:1::1 "),
        "not through the router: {route}"
    );

    // An IPv4-only lab has no IPv6 underlay.
    let plain = Lab::builder().hosts(1).build();
    assert!(!plain.host(0).has_ipv6());
    let addrs = plain
        .host(0)
        .ip(&["-6", "addr", "show", "dev", "eth0", "scope", "global"]);
    assert!(addrs.trim().is_empty(), "{addrs}");
}

/// `WeftNode::builder(..).public_ipv6(..)` hands weft flanneld's `-public-ipv6 <addr>`.
#[test]
fn weft_builder_passes_public_ipv6() {
    require_root();
    let lab = Lab::builder().hosts(1).ipv6().build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(VXLAN_CONFIG);
    let host = lab.host(0);
    let node = WeftNode::builder(host, &etcd)
        .public_ipv6(host.addr6())
        .start();
    let pid = node.pid().expect("running");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("weft's cmdline");
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let at = args
        .iter()
        .position(|a| a == "-public-ipv6")
        .unwrap_or_else(|| panic!("no -public-ipv6 in {args:?}"));
    assert_eq!(args.get(at + 1).map(String::as_str), Some("fd77::a"));
    let (_, stderr) = node.stop();
    assert!(!stderr.contains("error"), "{stderr}");
}

#[test]
fn dual_stack_lease_record_is_flannels_json() {
    // No root needed: the record and key forms from DESIGN.md "Dual stack".
    let mac: EthernetAddress = "c6:d2:32:6f:8f:44".parse().unwrap();
    let mac6: EthernetAddress = "c6:d2:32:6f:8f:66".parse().unwrap();
    let public_ip6: Ipv6Addr = "fd77::1".parse().unwrap();
    assert_eq!(
        lease_json_dual((Ipv4Addr::new(192, 168, 77, 1), mac), (public_ip6, mac6), 1),
        r#"{"PublicIP":"192.168.77.1","PublicIPv6":"fd77::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"BackendV6Data":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:66"}}"#
    );
    let s6 = Lab::default_pod_subnet6(1);
    assert_eq!(s6, "fd10:0:0:2::/64".parse::<Subnet6>().unwrap());
    assert_eq!(
        format!(
            "{}&{}",
            Lab::default_pod_subnet(1).key_string(),
            s6.key_string()
        ),
        "10.1.2.0-24&fd10:0:0:2::-64"
    );
    assert_eq!(vtep_mac6_for(public_ip6).to_string(), "0e:77:76:00:00:01");
    assert_ne!(
        vtep_mac6_for("fd77::a".parse().unwrap()),
        harness::vtep_mac_for(Ipv4Addr::new(192, 168, 64, 10))
    );
}

const MB: u64 = 1 << 20;

/// The key of a weft node's dual-stack lease (`<v4>&<v6>`) and its record, from etcd.
fn dual_lease_of(etcd: &Etcd, s: weft::wire::Subnet, s6: Subnet6) -> (String, serde_json::Value) {
    let key = format!("{PREFIX}/subnets/{}&{}", s.key_string(), s6.key_string());
    let rec = etcd
        .get(&key)
        .unwrap_or_else(|| panic!("no dual-stack lease {key}"));
    let v = serde_json::from_str(&rec).expect("lease JSON");
    (key, v)
}

/// Three dual-stack weft nodes: each leases a subnet in both families, and every pod reaches
/// every other one by ping in both families; checksummed 100 MB TCP transfers over IPv6
/// both ways; a full-size IPv6 packet above the IPv6 underlay's room is answered with Packet
/// Too Big, as flanneld's smaller flannel-v6 device answers it.
#[test]
fn three_weft_nodes_dual_stack() {
    require_root();
    let mut lab = Lab::builder().hosts(3).ipv6().build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(DUAL_STACK_CONFIG);
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(WeftNode::start_dual_with_pod(&mut lab, i, &etcd, &[]));
    }
    for (i, n) in nodes.iter().enumerate() {
        let s6 = n.subnet6.expect("dual stack");
        let (_, rec) = dual_lease_of(&etcd, n.subnet, s6);
        assert_eq!(rec["PublicIPv6"], lab.host(i).addr6().to_string());
        assert_eq!(rec["BackendV6Data"]["VNI"], 1);
        assert_ne!(
            rec["BackendV6Data"]["VtepMAC"],
            rec["BackendData"]["VtepMAC"]
        );
    }
    harness::ping_all_pairs(&lab);
    harness::ping_all_pairs6(&lab);
    // Per-peer counts for the IPv6 half of node 2's lease, on node 0, keyed by its
    // PublicIPv6: the 100 MB each way show in packets and bytes both ways, and in
    // `weft status`'s IPv6 rows.
    let peer6 = |fam: &str, dir: &str| {
        let (s6, ip6) = (nodes[2].subnet6.expect("dual stack"), lab.host(2).addr6());
        nodes[0].metric(&format!(
            "{fam}{{subnet=\"{s6}\",public_ip=\"{ip6}\",direction=\"{dir}\"}}"
        ))
    };
    let before = [
        peer6("weft_peer_packets_total", "tx"),
        peer6("weft_peer_packets_total", "rx"),
    ];
    harness::transfer6(&lab, 0, 2, 100 * MB);
    harness::transfer6(&lab, 2, 0, 100 * MB);
    assert!(
        peer6("weft_peer_bytes_total", "tx") > 100 * MB,
        "IPv6 bytes sent to node 2"
    );
    assert!(
        peer6("weft_peer_bytes_total", "rx") > 100 * MB,
        "IPv6 bytes received from node 2"
    );
    let after = [
        peer6("weft_peer_packets_total", "tx"),
        peer6("weft_peer_packets_total", "rx"),
    ];
    assert!(
        after[0] > before[0] + 1000 && after[1] > before[1] + 1000,
        "IPv6 per-peer packets: {before:?} -> {after:?}"
    );
    let status = nodes[0].http("/status").expect("/status answers");
    let doc: weft::ops::status::StatusDoc = serde_json::from_str(&status).expect("status JSON");
    let row = doc
        .peers6
        .iter()
        .find(|p| p.public_ip == lab.host(2).addr6())
        .expect("node 2's IPv6 half in /status");
    assert!(
        row.tx_packets >= after[0] && row.rx_packets >= after[1],
        "{row:?}"
    );
    harness::transfer(&lab, 1, 0, 20 * MB);
    assert_eq!(nodes[0].metric("weft_leases"), 2);
    assert_eq!(nodes[0].drops("spoofed_source"), 0);
    assert_eq!(nodes[0].drops("outbound_ipv6"), 0);

    // The pods' MTU is FLANNEL_MTU (underlay - 50); IPv6 over the IPv6 underlay has room for
    // 20 bytes less: a larger IPv6 packet gets Packet Too Big and the pod learns the MTU.
    let (p0, p1) = (lab.host(0).pod(0), lab.host(1).pod(0));
    let mtu6 = lab.host(0).mtu() - VXLAN6_OVERHEAD;
    let fits = mtu6 - 48;
    let ping = p0.ping_sized(p1.addr6(), 2, fits);
    assert!(ping.all_replied(), "{fits}-byte ping6:\n{}", ping.output);
    let ping = p0.ping_sized(p1.addr6(), 2, fits + 20);
    assert!(
        ping.none_replied(),
        "{}-byte ping6:\n{}",
        fits + 20,
        ping.output
    );
    let route = p0.exec(&["ip", "-6", "route", "get", &p1.addr6().to_string()]);
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(
        route.contains(&format!("mtu {mtu6} ")),
        "the pod did not learn the IPv6 path MTU: {route}"
    );
    assert!(nodes[0].metric("weft_icmp_unreachable_total") > 0);

    // SIGTERM leaves no device behind, and no IPv6 route either.
    let host = lab.host(2);
    let node = nodes.pop().expect("three nodes");
    let (status, log) = node.stop();
    assert!(status.success(), "weft exited with {status}:\n{log}");
    let routes = host.ip(&["-6", "route", "show"]);
    assert!(
        !routes.contains("fd10::/48"),
        "IPv6 route left behind: {routes}"
    );
}

/// A dual-stack weft node and a dual-stack kernel node set up as flanneld does: both learn
/// each other's lease from etcd; ping in both families and 100 MB TCP over IPv6 both ways.
fn mixed_dual_stack_cluster(kernel_offloads: bool) {
    require_root();
    let mut lab = Lab::builder().hosts(2).ipv6().build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(DUAL_STACK_CONFIG);
    let (ks, ks6) = (Lab::default_pod_subnet(1), Lab::default_pod_subnet6(1));
    let kernel = KernelFlannelNode::builder(ks)
        .ipv6(ks6)
        .offloads(kernel_offloads)
        .install(lab.host(1));
    kernel.publish(&etcd, 3600);
    let node = WeftNode::start_dual_with_pod(&mut lab, 0, &etcd, &[]);
    let s6 = node.subnet6.expect("dual stack");
    let (key, _) = dual_lease_of(&etcd, node.subnet, s6);
    let record = etcd.get(&key).expect("weft's lease");
    let tail = key
        .strip_prefix(&format!("{PREFIX}/subnets/"))
        .expect("under the prefix");
    kernel.apply_lease(tail, &record);
    lab.host_mut(1).add_dual_pod_with_mtu(ks, ks6, kernel.mtu());
    harness::ping_all_pairs(&lab);
    harness::ping_all_pairs6(&lab);
    harness::transfer6(&lab, 0, 1, 100 * MB);
    harness::transfer6(&lab, 1, 0, 100 * MB);
    harness::transfer(&lab, 1, 0, 20 * MB);
    assert_eq!(node.drops("inner_bad_checksum"), 0);
    assert_eq!(node.drops("inner_l4_checksum"), 0);
    assert_eq!(node.metric("weft_tun_write_errors_total"), 0);
}

#[test]
fn mixed_dual_stack_cluster_kernel_offloads_on() {
    mixed_dual_stack_cluster(true);
}

#[test]
fn mixed_dual_stack_cluster_kernel_offloads_off() {
    mixed_dual_stack_cluster(false);
}
