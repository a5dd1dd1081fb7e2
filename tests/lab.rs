//! Tests of the namespace harness itself: two Linux VXLAN nodes configured as flanneld does
//! carry pod traffic both ways (offloads on and off), removing a peer cuts it, and a lab
//! leaves no namespace or process behind even when the test body panics. Needs root.

mod harness;

use std::net::Ipv4Addr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use harness::{
    iperf3_tcp, iperf3_udp, lease_json, netns_add, netns_list, require_root, run, sweep_stale_labs,
    tcp_transfer, vtep_mac_for, KernelFlannelNode, Lab,
};
use weft::wire::{EthernetAddress, Subnet};

const TRANSFER_BYTES: u64 = 100 << 20;

/// Two hosts on one underlay, one pod each, each host a kernel flannel node peered with the
/// other.
fn two_kernel_nodes(offloads: bool) -> (Lab, KernelFlannelNode, KernelFlannelNode) {
    let mut lab = Lab::builder().hosts(2).build();
    let (s0, s1) = (Lab::default_pod_subnet(0), Lab::default_pod_subnet(1));
    lab.host_mut(0).add_pod(s0);
    lab.host_mut(1).add_pod(s1);
    let n0 = KernelFlannelNode::builder(s0)
        .offloads(offloads)
        .install(lab.host(0));
    let n1 = KernelFlannelNode::builder(s1)
        .offloads(offloads)
        .install(lab.host(1));
    n0.peer_with(&n1);
    n1.peer_with(&n0);
    (lab, n0, n1)
}

fn kernel_nodes_carry_pod_traffic(offloads: bool) {
    require_root();
    let started = Instant::now();
    let (lab, n0, n1) = two_kernel_nodes(offloads);

    // The device is what flanneld creates.
    let link = lab.host(0).ip(&["-d", "link", "show", "dev", "flannel.1"]);
    for want in [
        "mtu 1450 ",
        "link/ether 0e:77:66:a8:40:0a ",
        "vxlan id 1 ",
        "local 192.168.64.10 ",
        "dev eth0 ",
        "dstport 8472 ",
        "nolearning ",
    ] {
        assert!(link.contains(want), "flannel.1 lacks {want:?}:\n{link}");
    }
    let lease: serde_json::Value = serde_json::from_str(&n0.lease_json()).unwrap();
    assert_eq!(lease["PublicIP"], "192.168.64.10");
    assert_eq!(lease["BackendData"]["VtepMAC"], "0e:77:66:a8:40:0a");
    assert_eq!(
        n0.lease_key("/coreos.com/network"),
        "/coreos.com/network/subnets/10.1.1.0-24"
    );
    let addr = lab.host(0).ip(&["-4", "addr", "show", "dev", "flannel.1"]);
    assert!(addr.contains("inet 10.1.1.0/32 "), "{addr}");
    assert_eq!(
        n0.peer_state(n1.subnet(), n1.vtep_mac()).len(),
        3,
        "neighbour, fdb entry and route for the peer"
    );
    let features = lab.host(0).exec(&["ethtool", "-k", "flannel.1"]);
    let features = String::from_utf8_lossy(&features.stdout);
    let tx = if offloads { "on" } else { "off" };
    assert!(
        features.contains(&format!("tx-checksumming: {tx}")),
        "flannel.1 tx-checksumming should be {tx}:\n{features}"
    );

    let (p0, p1) = (lab.host(0).pod(0), lab.host(1).pod(0));
    let ping = p0.ping(p1.addr(), 3);
    assert!(ping.all_replied(), "pod0 -> pod1:\n{}", ping.output);
    let ping = p1.ping(p0.addr(), 3);
    assert!(ping.all_replied(), "pod1 -> pod0:\n{}", ping.output);

    let sizes = lab.host(1).count_udp_sizes(8472, lab.host(1).mtu());
    let before = lab.host(0).link_stats("flannel.1");
    let t = tcp_transfer(
        p0,
        p1,
        p1.addr(),
        5001,
        TRANSFER_BYTES,
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(t.intact(), "transfer corrupted: {t:?}");
    assert_eq!(t.received, TRANSFER_BYTES);
    assert_eq!(t.peer, p0.addr().to_string(), "no NAT between pods");
    let after = lab.host(0).link_stats("flannel.1");
    assert!(
        after.tx_bytes - before.tx_bytes >= TRANSFER_BYTES,
        "the transfer did not go through flannel.1: {before:?} -> {after:?}"
    );

    // DESIGN.md "Kernel VXLAN peers over veth", fact 1: with offloads on, UDP-tunnel GSO
    // crosses the veth unsegmented; offloads(false) gives what a real wire carries.
    let (small, large) = sizes.read();
    assert!(small > 0, "no VXLAN datagrams counted at host1");
    if offloads {
        assert!(
            large > 0,
            "expected GSO super-packets above the MTU with offloads on"
        );
    } else {
        assert_eq!(large, 0, "datagrams above the MTU with offloads off");
    }

    let tcp = iperf3_tcp(p0, p1, p1.addr(), 2);
    let udp = iperf3_udp(p0, p1, p1.addr(), 2, 64);
    assert!(tcp.gbit_per_s > 0.05, "{tcp:?}");
    assert!(udp.received_pps > 1000.0, "{udp:?}");
    println!(
        "kernel VXLAN, offloads {tx}: 100 MB transfer {:.2} Gbit/s (python), VXLAN datagrams \
         at host1 <= MTU {small}, > MTU {large}; iperf3 TCP {:.2} Gbit/s ({} retransmits); UDP \
         64 B sent {:.0} pps, received {:.0} pps ({:.1}% lost); ping rtt {:.3} ms; test took \
         {:.1} s",
        t.gbit_per_s(),
        tcp.gbit_per_s,
        tcp.retransmits,
        udp.sent_pps,
        udp.received_pps,
        udp.lost_percent,
        ping.avg_rtt_ms.unwrap_or(f64::NAN),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn kernel_nodes_carry_pod_traffic_offloads_on() {
    kernel_nodes_carry_pod_traffic(true);
}

#[test]
fn kernel_nodes_carry_pod_traffic_offloads_off() {
    kernel_nodes_carry_pod_traffic(false);
}

#[test]
fn remove_peer_makes_pod_unreachable() {
    require_root();
    let (lab, n0, n1) = two_kernel_nodes(true);
    let (p0, p1) = (lab.host(0).pod(0), lab.host(1).pod(0));
    let ping = p0.ping(p1.addr(), 2);
    assert!(ping.all_replied(), "before removal:\n{}", ping.output);

    n0.unpeer(&n1);
    let left = n0.peer_state(n1.subnet(), n1.vtep_mac());
    assert!(left.is_empty(), "remove_peer left {left:?}");
    let ping = p0.ping(p1.addr(), 2);
    assert!(
        ping.none_replied(),
        "pod0 -> pod1 after removal:\n{}",
        ping.output
    );
    // Requests from pod1 still arrive, but host0 has no way back.
    let ping = p1.ping(p0.addr(), 2);
    assert!(
        ping.none_replied(),
        "pod1 -> pod0 after removal:\n{}",
        ping.output
    );

    // Adding it again restores the path: the failure above came from the removal.
    n0.peer_with(&n1);
    let ping = p0.ping(p1.addr(), 2);
    assert!(ping.all_replied(), "after re-adding:\n{}", ping.output);
}

#[test]
fn lab_drop_removes_everything_even_on_panic() {
    require_root();
    let mut names = Vec::new();
    let mut prefix = String::new();
    let mut existed = false;
    let mut router_hop = None;
    let mut stray_pid = 0u32;
    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut lab = Lab::builder().hosts(1).outside().segment_b(1).build();
        lab.host_mut(0).add_pod(Lab::default_pod_subnet(0));
        names = lab.namespaces();
        prefix = lab.prefix().to_string();
        let listed = netns_list();
        existed = names.iter().all(|n| listed.contains(n));
        // Segment B's host reaches segment A's host and the outside host through the router.
        let (a, b) = (lab.host(0), lab.host(1));
        router_hop = Some((
            b.ping(a.addr(), 2),
            b.ping(lab.outside().addr(), 2),
            b.exec(&["ip", "route", "get", &a.addr().to_string()]),
        ));
        // A process no guard owns: only the namespace's own cleanup can stop it.
        let out = lab.host(0).pod(0).exec(&[
            "sh",
            "-c",
            "sleep 300 </dev/null >/dev/null 2>&1 & echo $!",
        ]);
        stray_pid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        panic!("deliberate panic inside a lab");
    }));
    let msg = result.expect_err("the closure panics");
    assert_eq!(
        msg.downcast_ref::<&str>().copied(),
        Some("deliberate panic inside a lab"),
        "the lab panicked before the deliberate panic"
    );

    assert_eq!(names.len(), 7, "h0, h0p0, h1, o, r, u, v: {names:?}");
    assert!(
        existed,
        "the lab's namespaces were not all listed while it lived"
    );
    let listed = netns_list();
    let left: Vec<&String> = listed.iter().filter(|n| n.starts_with(&prefix)).collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    for n in &names {
        assert!(!listed.contains(n), "{n} left behind");
    }
    // Dead means gone from /proc, or a zombie waiting for init to reap it.
    let alive = || {
        std::fs::read_to_string(format!("/proc/{stray_pid}/stat"))
            .map(|st| {
                st.rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().next())
                    != Some("Z")
            })
            .unwrap_or(false)
    };
    let gone_by = Instant::now() + Duration::from_secs(2);
    while alive() && Instant::now() < gone_by {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !alive(),
        "process {stray_pid} started in a pod outlived the lab"
    );

    let (to_a, to_outside, route) = router_hop.expect("router checks ran");
    assert!(to_a.all_replied(), "segment B -> A:\n{}", to_a.output);
    assert!(
        to_outside.all_replied(),
        "segment B -> outside:\n{}",
        to_outside.output
    );
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(
        route.contains("via 192.168.65.1 "),
        "not through the router: {route}"
    );
}

#[test]
fn kernel_nodes_one_router_hop_apart() {
    require_root();
    let mut lab = Lab::builder().hosts(1).segment_b(1).build();
    let (s0, s1) = (Lab::default_pod_subnet(0), Lab::default_pod_subnet(1));
    lab.host_mut(0).add_pod(s0);
    lab.host_mut(1).add_pod(s1);
    assert_eq!(lab.host(1).addr(), Ipv4Addr::new(192, 168, 65, 10));
    let n0 = KernelFlannelNode::install(lab.host(0), s0);
    let n1 = KernelFlannelNode::install(lab.host(1), s1);
    n0.peer_with(&n1);
    n1.peer_with(&n0);
    let (p0, p1) = (lab.host(0).pod(0), lab.host(1).pod(0));
    let ping = p0.ping(p1.addr(), 3);
    assert!(ping.all_replied(), "pod A -> pod B:\n{}", ping.output);
    let ping = p1.ping(p0.addr(), 3);
    assert!(ping.all_replied(), "pod B -> pod A:\n{}", ping.output);
    // The encapsulated packets crossed the router: it forwarded both ways.
    let r = lab.router().link_stats("eth1");
    assert!(r.tx_packets >= 6 && r.rx_packets >= 6, "router eth1: {r:?}");
}

#[test]
fn stale_lab_namespaces_are_swept() {
    require_root();
    // pid 0x7fffffff exceeds any pid_max, so its "owner" is certainly gone.
    let name = format!("wt7fffffff-{}-x", std::process::id());
    // The harness's retrying add: a bare `ip netns add` lost the iproute2 race on
    // /run/netns to a parallel test once.
    netns_add(&name);
    let swept = sweep_stale_labs();
    let listed = netns_list();
    if listed.contains(&name) {
        run(&["ip", "netns", "del", &name]);
        panic!("{name} survived the sweep");
    }
    // A concurrent lab build may have swept it first.
    assert!(swept.contains(&name) || !listed.contains(&name));
    // Our own (live) labs are never swept.
    let lab = Lab::builder().hosts(1).build();
    assert!(sweep_stale_labs()
        .iter()
        .all(|n| !n.starts_with(lab.prefix())));
    let listed = netns_list();
    assert!(lab.namespaces().iter().all(|n| listed.contains(n)));
}

#[test]
fn lease_record_is_flannels_json() {
    // No root needed: the exact record from DESIGN.md.
    let mac: EthernetAddress = "c6:d2:32:6f:8f:44".parse().unwrap();
    assert_eq!(
        lease_json(Ipv4Addr::new(192, 168, 64, 3), 1, mac),
        r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#
    );
    let s = Subnet::containing(Ipv4Addr::new(10, 1, 2, 7), 24).unwrap();
    assert_eq!(s.to_string(), "10.1.2.0/24");
    assert_eq!(s.key_string(), "10.1.2.0-24");
    assert_eq!(s.nth_addr(1), Some(Ipv4Addr::new(10, 1, 2, 1)));
    assert!(s.contains(Ipv4Addr::new(10, 1, 2, 255)));
    assert!(!s.contains(Ipv4Addr::new(10, 1, 3, 0)));
    assert_eq!(
        vtep_mac_for(Ipv4Addr::new(192, 168, 64, 10)).to_string(),
        "0e:77:66:a8:40:0a"
    );
}
