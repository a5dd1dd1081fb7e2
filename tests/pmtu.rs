//! End-to-end: the underlay's MTU falls below what the nodes started with. Two weft vxlan
//! nodes come up on a 1500-byte underlay (pods get 1450), carry traffic, then every underlay
//! link drops to 1400, so a pod packet fits only up to 1350 bytes once encapsulated. weft
//! then acts as a router would: a larger pod packet with DF set is answered with ICMP
//! "fragmentation needed" (next-hop MTU 1350), so the pod's path MTU and TCP's MSS adapt;
//! one without DF still crosses (the outer packet fragments, as through Linux's VXLAN
//! device); TCP super-packets are cut into segments that fit. Checked with pings of every
//! DF mode both ways and a checksummed TCP transfer both ways, with offloads on and off.
//! Needs root.

mod harness;

use std::net::Ipv4Addr;
use std::time::Duration;

use harness::{
    ping_all_pairs, require_root, tcp_transfer, wait_until, Etcd, Lab, Netns, WeftNode,
    VXLAN_CONFIG,
};

const MB: u64 = 1 << 20;

/// Flags that turn every offload off (TUN TSO, UDP GSO, UDP GRO + coalescing).
const NO_OFFLOADS: &[&str] = &["--tun-offload=false", "--udp-gso=false", "--udp-gro=false"];

/// One ping of `size` data bytes from `pod` to `dst` with ping's path-MTU mode `mode`
/// (`do`: DF set, never fragment; `dont`: DF clear; `want`: DF set, fragment locally once
/// the path MTU is known): whether a reply came, and what ping printed.
fn ping_mode(pod: &Netns, dst: Ipv4Addr, size: u32, mode: &str) -> (bool, String) {
    let out = pod.exec_within(
        &[
            "ping",
            "-n",
            "-c",
            "1",
            "-W",
            "1",
            "-M",
            mode,
            "-s",
            &size.to_string(),
            &dst.to_string(),
        ],
        Duration::from_secs(5),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Two nodes with `flags`; the underlay falls from 1500 to 1400 under traffic. Then, both
/// ways: a 1388-byte ping with DF gets "fragmentation needed" with MTU 1350 (and the pod's
/// kernel remembers it), the same ping without DF is answered, a default ping (fragmenting
/// at the learned path MTU) is answered, and a 5 MB transfer arrives intact. Returns the
/// nodes' `too_big` drops.
fn full_size_packets_after_a_lower_underlay_mtu(flags: &[&str]) -> Vec<u64> {
    require_root();
    let mut lab = Lab::builder().hosts(2).build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(VXLAN_CONFIG);
    let nodes: Vec<WeftNode> = (0..2)
        .map(|i| WeftNode::start_with_pod(&mut lab, i, &etcd, flags))
        .collect();
    assert!(nodes.iter().all(|n| n.mtu == 1450), "pods get 1450");
    ping_all_pairs(&lab);
    for (a, b) in [(0, 1), (1, 0)] {
        let (pa, pb) = (lab.host(a).pod(0), lab.host(b).pod(0));
        let p = pa.ping_sized(pb.addr(), 3, 1360);
        assert!(p.all_replied(), "before: {a} -> {b}:\n{}", p.output);
    }

    lab.set_underlay_mtu(1400);

    for (a, b) in [(0, 1), (1, 0)] {
        let (pa, pb) = (lab.host(a).pod(0), lab.host(b).pod(0));
        // Within a second the node notices the new MTU and says so to DF senders.
        let mut last = String::new();
        let told = wait_until(Duration::from_secs(5), || {
            let (replied, text) = ping_mode(pa, pb.addr(), 1360, "do");
            last = text;
            !replied && last.contains("mtu") && last.contains("1350")
        });
        assert!(
            told.is_some(),
            "a 1388-byte DF ping {a} -> {b} got no fragmentation needed (MTU 1350):\n{last}"
        );
        // The pod's kernel learned the path MTU towards the other pod.
        let route = pa.ip(&["route", "get", &pb.addr().to_string()]);
        assert!(route.contains("mtu 1350"), "{a} -> {b}: {route}");
        let (ok, text) = ping_mode(pa, pb.addr(), 1300, "do");
        assert!(ok, "1328 bytes fit, {a} -> {b}:\n{text}");
        let (ok, text) = ping_mode(pa, pb.addr(), 1360, "dont");
        assert!(
            ok,
            "1388 bytes without DF cross fragmented, {a} -> {b}:\n{text}"
        );
        let (ok, text) = ping_mode(pa, pb.addr(), 1360, "want");
        assert!(ok, "1388 bytes fragmented by the pod, {a} -> {b}:\n{text}");
    }
    for (a, b) in [(0, 1), (1, 0)] {
        let (pa, pb) = (lab.host(a).pod(0), lab.host(b).pod(0));
        let t = tcp_transfer(pa, pb, pb.addr(), 5201, 5 * MB, Duration::from_secs(40))
            .unwrap_or_else(|e| panic!("transfer {a} -> {b} after the MTU drop: {e}"));
        assert!(t.intact(), "transfer {a} -> {b} corrupted: {t:?}");
        eprintln!(
            "after the MTU drop, transfer {a} -> {b}: 5 MB at {:.3} Gbit/s",
            t.gbit_per_s()
        );
    }
    let too_big: Vec<u64> = nodes.iter().map(|n| n.drops("too_big")).collect();
    let (_, log) = nodes.into_iter().next().expect("node 0").stop();
    assert!(
        log.contains("underlay MTU changed") && log.contains("now=1400"),
        "the MTU change is logged:\n{log}"
    );
    too_big
}

#[test]
fn lower_underlay_mtu_with_offloads() {
    let too_big = full_size_packets_after_a_lower_underlay_mtu(&[]);
    // The DF pings each node answered with fragmentation needed were counted.
    assert!(too_big.iter().all(|&n| n > 0), "too_big drops: {too_big:?}");
}

#[test]
fn lower_underlay_mtu_without_offloads() {
    let too_big = full_size_packets_after_a_lower_underlay_mtu(NO_OFFLOADS);
    assert!(too_big.iter().all(|&n| n > 0), "too_big drops: {too_big:?}");
}

/// The IPv6 half follows the underlay too: on a dual-stack lab lowered from 1500 to 1400, a
/// pod's 1348-byte IPv6 packet (above 1400 - 70) is answered with packet too big, MTU 1330,
/// and a 1328-byte one crosses.
#[test]
fn lower_underlay_mtu_over_ipv6() {
    require_root();
    let mut lab = Lab::builder().hosts(2).ipv6().build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(
        r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/48","Backend":{"Type":"vxlan"}}"#,
    );
    let _nodes: Vec<WeftNode> = (0..2)
        .map(|i| WeftNode::start_dual_with_pod(&mut lab, i, &etcd, &[]))
        .collect();
    harness::ping_all_pairs6(&lab);
    let (pa, pb) = (lab.host(0).pod(0), lab.host(1).pod(0));
    assert!(
        pa.ping_sized(pb.addr6(), 2, 1300).all_replied(),
        "1348 bytes fit at first"
    );
    lab.set_underlay_mtu(1400);
    let ping6 = |size: u32| {
        let out = pa.exec_within(
            &[
                "ping",
                "-n",
                "-c",
                "1",
                "-W",
                "1",
                "-s",
                &size.to_string(),
                &pb.addr6().to_string(),
            ],
            Duration::from_secs(5),
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let mut last = String::new();
    let told = wait_until(Duration::from_secs(5), || {
        let (replied, text) = ping6(1300);
        last = text;
        !replied && last.contains("1330")
    });
    assert!(told.is_some(), "no packet too big with MTU 1330:\n{last}");
    let (ok, text) = ping6(1280);
    assert!(ok, "1328 bytes fit:\n{text}");
}

/// Two weft nodes with pods on a lab whose underlay is 1400 bytes: either started at 1500
/// and lowered (pods keep 1450) or started at 1400 (pods get 1350). Returns single-stream
/// TCP Gbit/s pod 0 -> pod 1.
fn tcp_on_a_1400_underlay(lowered: bool, flags: &[&str]) -> f64 {
    require_root();
    let mut lab = Lab::builder()
        .hosts(2)
        .mtu(if lowered { 1500 } else { 1400 })
        .build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(VXLAN_CONFIG);
    let _nodes: Vec<WeftNode> = (0..2)
        .map(|i| WeftNode::start_with_pod(&mut lab, i, &etcd, flags))
        .collect();
    ping_all_pairs(&lab);
    if lowered {
        lab.set_underlay_mtu(1400);
        // The nodes read the underlay's MTU once a second.
        std::thread::sleep(Duration::from_millis(1500));
    }
    let (a, b) = (lab.host(0).pod(0), lab.host(1).pod(0));
    harness::iperf3_tcp(a, b, b.addr(), 5).gbit_per_s
}

/// Not a check: single-stream TCP over a 1400-byte underlay with pods at 1450 (the
/// underlay lowered under them) beside pods at 1350 (sized for it from the start).
/// `cargo nextest run --profile ci --run-ignored only -E 'binary(pmtu)' --no-capture`
#[test]
#[ignore = "measurement; prints numbers"]
fn measure_lowered_against_fitting() {
    for (name, flags) in [("offloads on", &[][..]), ("offloads off", NO_OFFLOADS)] {
        let lowered = tcp_on_a_1400_underlay(true, flags);
        let fit = tcp_on_a_1400_underlay(false, flags);
        eprintln!(
            "{name}: pods 1450 on a lowered 1400 underlay: {lowered:.2} Gbit/s; \
             pods 1350 from the start: {fit:.2} Gbit/s"
        );
    }
}
