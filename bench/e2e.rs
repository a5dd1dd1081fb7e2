//! End-to-end benchmark: the same two-host namespace topology built twice (three times with
//! the wire-like kernel setting), once with Linux kernel VXLAN configured as flanneld does and
//! once with weft, measured with the same tools in the same run and printed side by side.
//!
//! Run: `cargo bench --bench e2e` (root; about two minutes). Set `WEFT_E2E_SECS` to change
//! the length of each iperf3 run (default 10).

#[path = "../tests/harness/mod.rs"]
mod harness;

use std::net::Ipv4Addr;
use std::time::Duration;

use harness::netns::{iperf3_tcp, iperf3_udp, require_root, KernelFlannelNode, Lab, Netns, Subnet};
use harness::weft::{NsEtcd, WeftNode};

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
    let (a, b) = (lab.host(0).pod(0), lab.host(1).pod(0));
    assert!(
        a.wait_for_ping(b.addr(), Duration::from_secs(5)),
        "pods cannot reach each other"
    );
    let tcp1 = tcp_streams(a, b, b.addr(), secs, 1);
    let tcp4 = tcp_streams(a, b, b.addr(), secs, 4);
    let udp = iperf3_udp(a, b, b.addr(), secs.min(5), 64);
    let ping = a.ping(b.addr(), 50);
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
    etcd.put_config(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan"}}"#);
    let n0 = WeftNode::start(lab.host(0), &etcd, &[]);
    let n1 = WeftNode::start(lab.host(1), &etcd, &[]);
    lab.host_mut(0).add_pod_with_mtu(n0.subnet, n0.mtu);
    lab.host_mut(1).add_pod_with_mtu(n1.subnet, n1.mtu);
    measure(&lab, secs)
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
    println!();
    println!("end-to-end, two hosts on one bridge, pod to pod, {secs} s per TCP run");
    println!(
        "{:<28} {:>14} {:>14} {:>10} {:>18}",
        "", "kernel VXLAN", "weft", "weft/kernel", "kernel, offl. off"
    );
    let row = |name: &str, k: f64, w: f64, kw: f64, unit: &str| {
        println!(
            "{:<28} {:>10.2} {unit:<3} {:>10.2} {unit:<3} {:>9.2}x {:>14.2} {unit:<3}",
            name,
            k,
            w,
            w / k,
            kw
        );
    };
    row("TCP, 1 stream (Gbit/s)", k.tcp1, w.tcp1, kw.tcp1, "");
    row("TCP, 4 streams (Gbit/s)", k.tcp4, w.tcp4, kw.tcp4, "");
    row(
        "UDP 64 B (kpps received)",
        k.udp64_pps / 1e3,
        w.udp64_pps / 1e3,
        kw.udp64_pps / 1e3,
        "",
    );
    row(
        "ping RTT (ms, lower wins)",
        k.ping_ms,
        w.ping_ms,
        kw.ping_ms,
        "",
    );
}
