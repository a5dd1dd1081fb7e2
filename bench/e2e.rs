//! End-to-end benchmark: the same two-host namespace topology built four times: Linux kernel
//! VXLAN configured as flanneld does (with its default offloads, and with them off as a
//! wire-like reference), weft vxlan, and weft host-gw (no overlay: kernel routes via the peer),
//! measured with the same tools in the same run and printed side by side, with the underlay
//! itself (host to host, in the host-gw lab) as the ceiling.
//!
//! Run: `cargo bench --bench e2e` (root; about three minutes). Set `WEFT_E2E_SECS` to change
//! the length of each iperf3 run (default 10).

#[path = "../tests/harness/mod.rs"]
mod harness;

use std::net::Ipv4Addr;
use std::time::Duration;

use harness::netns::{iperf3_tcp, iperf3_udp, require_root, KernelFlannelNode, Lab, Netns, Subnet};
use harness::weft::{NsEtcd, WeftNode, VXLAN_CONFIG};

#[derive(Debug, Default, Clone, Copy)]
struct Numbers {
    tcp1: f64,
    tcp4: f64,
    udp64_pps: f64,
    ping_ms: f64,
}

fn tcp_streams(client: &Netns, server: &Netns, dst: Ipv4Addr, secs: u32, streams: u32) -> f64 {
    if streams == 1 {
        return iperf3_tcp(client, server, dst, secs).gbit_per_s;
    }
    let srv = server.iperf3_server(5203);
    let json = client.iperf3_client(dst, 5203, secs, &["-P", &streams.to_string()]);
    drop(srv.output_within(Duration::from_secs(5)));
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("iperf3 sum_received")
        / 1e9
}

fn measure(lab: &Lab, secs: u32) -> Numbers {
    measure_between(lab.host(0).pod(0), lab.host(1).pod(0), b_addr(lab), secs)
}

fn b_addr(lab: &Lab) -> Ipv4Addr {
    lab.host(1).pod(0).addr()
}

fn measure_between(a: &Netns, b: &Netns, dst: Ipv4Addr, secs: u32) -> Numbers {
    assert!(
        a.wait_for_ping(dst, Duration::from_secs(5)),
        "{dst} unreachable"
    );
    let tcp1 = tcp_streams(a, b, dst, secs, 1);
    let tcp4 = tcp_streams(a, b, dst, secs, 4);
    let udp = iperf3_udp(a, b, dst, secs.min(5), 64);
    let ping = a.ping(dst, 50);
    Numbers {
        tcp1,
        tcp4,
        udp64_pps: udp.received_pps,
        ping_ms: ping.avg_rtt_ms.unwrap_or(f64::NAN),
    }
}

fn kernel(offloads: bool, secs: u32) -> Numbers {
    let mut lab = Lab::builder().hosts(2).build();
    let s0 = Subnet::new(Ipv4Addr::new(10, 1, 1, 0), 24);
    let s1 = Subnet::new(Ipv4Addr::new(10, 1, 2, 0), 24);
    let k0 = KernelFlannelNode::builder(s0)
        .offloads(offloads)
        .install(lab.host(0));
    let k1 = KernelFlannelNode::builder(s1)
        .offloads(offloads)
        .install(lab.host(1));
    k0.peer_with(&k1);
    k1.peer_with(&k0);
    lab.host_mut(0).add_pod_with_mtu(s0, k0.mtu());
    lab.host_mut(1).add_pod_with_mtu(s1, k1.mtu());
    measure(&lab, secs)
}

fn weft(secs: u32) -> Numbers {
    let mut lab = Lab::builder().hosts(2).build();
    let etcd = NsEtcd::start(lab.segment(0));
    etcd.put_config(VXLAN_CONFIG);
    let n0 = WeftNode::start(lab.host(0), &etcd, &[]);
    let n1 = WeftNode::start(lab.host(1), &etcd, &[]);
    lab.host_mut(0).add_pod_with_mtu(n0.subnet, n0.mtu);
    lab.host_mut(1).add_pod_with_mtu(n1.subnet, n1.mtu);
    measure(&lab, secs)
}

/// weft host-gw pod to pod, then host to host over the same underlay (the ceiling).
fn weft_host_gw(secs: u32) -> (Numbers, Numbers) {
    let mut lab = Lab::builder().hosts(2).build();
    let etcd = NsEtcd::start(lab.segment(0));
    etcd.put_config(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"host-gw"}}"#);
    let n0 = WeftNode::start(lab.host(0), &etcd, &[]);
    let n1 = WeftNode::start(lab.host(1), &etcd, &[]);
    lab.host_mut(0).add_pod_with_mtu(n0.subnet, n0.mtu);
    lab.host_mut(1).add_pod_with_mtu(n1.subnet, n1.mtu);
    let pods = measure(&lab, secs);
    let (h0, h1) = (lab.host(0), lab.host(1));
    let underlay = measure_between(h0, h1, h1.addr(), secs);
    (pods, underlay)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass nothing: skip then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    require_root();
    let secs: u32 = std::env::var("WEFT_E2E_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    eprintln!("e2e: kernel VXLAN (default offloads) ...");
    let k = kernel(true, secs);
    eprintln!("e2e: kernel VXLAN (offloads off, wire-like) ...");
    let kw = kernel(false, secs);
    eprintln!("e2e: weft ...");
    let w = weft(secs);
    eprintln!("e2e: weft host-gw, then the bare underlay ...");
    let (hg, u) = weft_host_gw(secs);
    println!();
    println!("end-to-end, two hosts on one bridge, pod to pod, {secs} s per TCP run");
    println!(
        "{:<28} {:>12} {:>12} {:>11} {:>17} {:>13} {:>13}",
        "", "kernel VXLAN", "weft", "weft/kernel", "kernel, offl. off", "weft host-gw", "underlay"
    );
    let row = |name: &str, f: fn(&Numbers) -> f64| {
        println!(
            "{:<28} {:>12.2} {:>12.2} {:>10.2}x {:>17.2} {:>13.2} {:>13.2}",
            name,
            f(&k),
            f(&w),
            f(&w) / f(&k),
            f(&kw),
            f(&hg),
            f(&u)
        );
    };
    row("TCP, 1 stream (Gbit/s)", |n| n.tcp1);
    row("TCP, 4 streams (Gbit/s)", |n| n.tcp4);
    row("UDP 64 B (kpps received)", |n| n.udp64_pps / 1e3);
    row("ping RTT (ms, lower wins)", |n| n.ping_ms);
}
