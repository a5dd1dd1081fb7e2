//! End-to-end: the real `weft` binary on real namespaces with a real etcd. Three-node
//! clusters for both backends, a mixed cluster with a Linux-kernel VXLAN node configured as
//! flanneld does (its offloads off and on), spoofed and malformed datagrams, nodes joining and
//! leaving under traffic, and SIGTERM leaving nothing behind. Needs root.

mod harness;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use harness::{
    ping_all_pairs, require_root, transfer, Etcd, KernelFlannelNode, Lab, WeftNode, VXLAN_CONFIG,
};
use weft::wire::Subnet;

const VXLAN: &str = VXLAN_CONFIG;
const UDP: &str = r#"{"Network":"10.1.0.0/16","Backend":{"Type":"udp"}}"#;
const MB: u64 = 1 << 20;

/// Flags that turn every offload off (TUN TSO, UDP GSO, UDP GRO + coalescing).
const NO_OFFLOADS: &[&str] = &["--tun-offload=false", "--udp-gso=false", "--udp-gro=false"];

fn three_weft_nodes(config: &str, flags: &[&str]) {
    require_root();
    let mut lab = Lab::builder().hosts(3).build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(config);
    let mut nodes = Vec::new();
    for i in 0..3 {
        let n = WeftNode::start_with_pod(&mut lab, i, &etcd, flags);
        nodes.push(n);
    }
    let subnets: Vec<_> = nodes.iter().map(|n| n.subnet).collect();
    assert!(subnets[0] != subnets[1] && subnets[1] != subnets[2] && subnets[0] != subnets[2]);
    ping_all_pairs(&lab);
    transfer(&lab, 0, 2, 100 * MB);
    transfer(&lab, 1, 0, 100 * MB);
    assert!(nodes[2].metric("weft_packets_total{direction=\"rx\"}") > 1000);
    assert_eq!(nodes[0].metric("weft_leases"), 2);
    // Per-peer counters: node 0 sent 100 MB to node 2 and received 100 MB from node 1.
    let peer = |i: usize, dir: &str| {
        format!(
            "weft_peer_packets_total{{subnet=\"{}\",public_ip=\"{}\",direction=\"{dir}\"}}",
            subnets[i],
            lab.host(i).addr()
        )
    };
    assert!(nodes[0].metric(&peer(2, "tx")) > 1000);
    assert!(nodes[0].metric(&peer(1, "rx")) > 1000);
    assert_eq!(nodes[0].metric("weft_etcd_connected"), 1);
    assert_eq!(nodes[0].metric("weft_datapath_running"), 1);
    assert!(nodes[0].metric("weft_lease_expiry_seconds") > 80_000);

    // `weft status` reads the running node: its subnet and every peer, aligned.
    assert_eq!(nodes[0].http("/readyz").as_deref(), Some("ready\n"));
    let out = nodes[0].weft(&["status", "--healthz-port", &harness::OPS_PORT.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "weft status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("node      {}", subnets[0])),
        "{text}"
    );
    assert!(text.contains("2 remote leases"), "{text}");
    assert!(text.contains("workers "), "{text}");
    for (i, s) in subnets.iter().enumerate().skip(1) {
        let row = text
            .lines()
            .find(|l| l.starts_with(&s.to_string()))
            .unwrap_or_else(|| panic!("no row for {s}:\n{text}"));
        assert!(row.contains(&lab.host(i).addr().to_string()), "{row}");
        // SUBNET, PUBLIC IP, VTEP MAC, AGE, SENT, RECEIVED
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols.len(), 6, "{row}");
        let (sent, received): (u64, u64) = (cols[4].parse().unwrap(), cols[5].parse().unwrap());
        assert!(sent + received > 0, "{row}");
    }

    // Not ready once subnet.env no longer holds our subnet; ready again when restored.
    let env_text = std::fs::read_to_string(nodes[1].subnet_file()).expect("subnet.env");
    std::fs::remove_file(nodes[1].subnet_file()).expect("rm subnet.env");
    let until = Instant::now() + Duration::from_secs(3);
    while nodes[1].http("/readyz").is_some() {
        assert!(
            Instant::now() < until,
            "/readyz stayed ready without subnet.env"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(nodes[1].subnet_file(), env_text).expect("restore subnet.env");
    let until = Instant::now() + Duration::from_secs(3);
    while nodes[1].http("/readyz").is_none() {
        assert!(
            Instant::now() < until,
            "/readyz not ready after restoring subnet.env"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // SIGTERM: exits cleanly and leaves no device or route behind.
    let host = lab.host(2);
    let node = nodes.pop().expect("three nodes");
    let (status, log) = node.stop();
    assert!(status.success(), "weft exited with {status}:\n{log}");
    assert!(log.contains("stopped"), "{log}");
    assert!(
        !host.ip_ok(&["link", "show", "weft0"]),
        "weft0 left behind after SIGTERM"
    );
    let routes = host.ip(&["route", "show"]);
    assert!(
        !routes.contains("10.1.0.0/16"),
        "route left behind: {routes}"
    );
}

#[test]
fn three_weft_nodes_vxlan() {
    three_weft_nodes(VXLAN, &[]);
}

#[test]
fn three_weft_nodes_vxlan_one_worker_one_thread() {
    // A single-queue TUN, one socket, both directions on one thread.
    three_weft_nodes(VXLAN, &["--workers=1", "--threads-per-worker=1"]);
}

/// Two workers per node: 32 TCP flows spread over both TUN queues on the sender (the
/// kernel's flow hash) and, through per-flow outer source ports, over both SO_REUSEPORT
/// sockets on the receiver.
#[test]
fn flows_spread_over_workers() {
    require_root();
    let mut lab = Lab::builder().hosts(2).build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(VXLAN);
    let flags = ["--workers=2", "--source-ports=16"];
    let a = WeftNode::start_with_pod(&mut lab, 0, &etcd, &flags);
    let b = WeftNode::start_with_pod(&mut lab, 1, &etcd, &flags);
    let (pa, pb) = (lab.host(0).pod(0), lab.host(1).pod(0));
    assert!(pa.wait_for_ping(pb.addr(), Duration::from_secs(5)));
    let srv = pb.iperf3_server(5210);
    let json = pa.iperf3_client(pb.addr(), 5210, 2, &["-P", "32"]);
    drop(srv.output_within(Duration::from_secs(5)));
    // (iperf3 stops on time, so its sent and received sums differ by what was in flight;
    // integrity is the checksummed transfers' job.)
    let received = json["end"]["sum_received"]["bytes"]
        .as_u64()
        .expect("sum_received");
    assert!(received > 10 * MB, "32 flows moved only {received} bytes");
    let worker = |n: &WeftNode, i: usize, dir: &str| {
        n.metric(&format!(
            "weft_worker_packets_total{{worker=\"{i}\",direction=\"{dir}\"}}"
        ))
    };
    for i in 0..2 {
        assert!(
            worker(&a, i, "tx") > 100,
            "sender worker {i} idle: {:?}",
            a.http("/metrics")
        );
        assert!(
            worker(&b, i, "rx") > 100,
            "receiver worker {i} idle: {:?}",
            b.http("/metrics")
        );
    }
    assert_eq!(b.drops("inner_l4_checksum"), 0);
}

/// CPU-local steering (`--steer-by-cpu`): both BPF programs attach, workers are pinned, and
/// traffic flows both ways, checksummed, with one thread per worker.
#[test]
fn cpu_steered_workers_forward() {
    require_root();
    let mut lab = Lab::builder().hosts(2).build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(VXLAN);
    let flags = ["--workers=2", "--threads-per-worker=1", "--steer-by-cpu"];
    let a = WeftNode::start_with_pod(&mut lab, 0, &etcd, &flags);
    let b = WeftNode::start_with_pod(&mut lab, 1, &etcd, &flags);
    ping_all_pairs(&lab);
    transfer(&lab, 0, 1, 50 * MB);
    transfer(&lab, 1, 0, 50 * MB);
    for node in [a, b] {
        let (status, log) = node.stop();
        assert!(status.success(), "{log}");
        assert!(
            log.contains("CPU-local steering"),
            "steering did not take:\n{log}"
        );
        assert!(!log.contains("could not pin"), "{log}");
    }
}

/// Sends `count` UDP datagrams of `size` bytes (a sequence number, then a pattern derived
/// from it) to `dst:7100`, 50 per `sendto` with UDP_SEGMENT: the pod's kernel cuts them into
/// datagrams that reach the TUN together, so batches hold runs of one flow.
const SEND_SEQ_UDP: &str = r#"
import socket, struct, sys, time
dst, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
pattern = bytes(k & 0xff for k in range(256 + size))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(17, 103, size)  # SOL_UDP, UDP_SEGMENT
for start in range(0, count, 50):
    burst = b"".join(struct.pack("!I", i) + pattern[i & 0xff:(i & 0xff) + size - 4]
                     for i in range(start, min(start + 50, count)))
    s.sendto(burst, (dst, 7100))
    time.sleep(0.002)
"#;

/// Receives on port 7100 until `count` datagrams came or 1 s passes without one; prints
/// "<received> <intact> <in order>".
const RECV_SEQ_UDP: &str = r#"
import socket, struct, sys
count, size = int(sys.argv[1]), int(sys.argv[2])
pattern = bytes(k & 0xff for k in range(256 + size))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE
s.bind(("0.0.0.0", 7100))
print("ready", flush=True)
s.settimeout(5)
got = intact = ordered = 0
last = -1
while got < count:
    try:
        b = s.recv(65536)
    except socket.timeout:
        break
    s.settimeout(1)
    got += 1
    i = struct.unpack("!I", b[:4])[0]
    if len(b) == size and b[4:] == pattern[i & 0xff:(i & 0xff) + size - 4]:
        intact += 1
    if i > last:
        ordered += 1
    last = i
print(got, intact, ordered)
"#;

/// UDP datagrams of one flow are merged into GSO_UDP_L4 super-packets for the TUN (Linux
/// 6.2+) and arrive each intact, in order and complete; fewer TUN writes than datagrams.
#[test]
fn udp_datagrams_coalesce_and_arrive_intact() {
    require_root();
    let mut lab = Lab::builder().hosts(2).build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(VXLAN);
    let a = WeftNode::start_with_pod(&mut lab, 0, &etcd, &[]);
    let b = WeftNode::start_with_pod(&mut lab, 1, &etcd, &[]);
    let (pa, pb) = (lab.host(0).pod(0), lab.host(1).pod(0));
    assert!(pa.wait_for_ping(pb.addr(), Duration::from_secs(5)));
    let (count, size) = ("20000", "200");
    let writes_before = b.metric("weft_tun_writes_total");
    let rx_before = b.metric("weft_packets_total{direction=\"rx\"}");
    let mut receiver = pb.spawn(&["python3", "-u", "-c", RECV_SEQ_UDP, count, size]);
    std::thread::sleep(Duration::from_millis(300));
    let sent = pa.exec_within(
        &[
            "python3",
            "-c",
            SEND_SEQ_UDP,
            &pb.addr().to_string(),
            count,
            size,
        ],
        Duration::from_secs(30),
    );
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let _ = receiver.wait_timeout(Duration::from_secs(10));
    let out = receiver.stop();
    let text = String::from_utf8_lossy(&out.stdout);
    let nums: Vec<u64> = text
        .lines()
        .last()
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    assert_eq!(
        nums,
        vec![20000, 20000, 20000],
        "received, intact, in order:\n{text}"
    );
    let writes = b.metric("weft_tun_writes_total") - writes_before;
    let rx = b.metric("weft_packets_total{direction=\"rx\"}") - rx_before;
    eprintln!(
        "{rx} datagrams in {writes} TUN writes; sender: {} packets in {} messages, batches {}/{}, receiver batches {}/{}",
        a.metric("weft_packets_total{direction=\"tx\"}"),
        a.metric("weft_tx_messages_total"),
        a.metric("weft_batch_packets_total{direction=\"tx\"}"),
        a.metric("weft_batches_total{direction=\"tx\"}"),
        b.metric("weft_batch_packets_total{direction=\"rx\"}"),
        b.metric("weft_batches_total{direction=\"rx\"}"),
    );
    assert!(rx >= 20000);
    assert_eq!(b.drops("inner_l4_checksum"), 0);
    assert_eq!(b.metric("weft_tun_write_errors_total"), 0);
    let (_, log) = b.stop();
    let offloads = log.lines().find(|l| l.contains("offloads")).unwrap_or("");
    if kernel_has_uso() {
        assert!(offloads.contains("udp_coalescing=true"), "{offloads}");
        assert!(
            writes * 2 < rx,
            "{rx} datagrams took {writes} writes: no UDP coalescing"
        );
    }
}

/// Whether the running kernel takes UDP super-packets on a TUN (Linux 6.2+).
fn kernel_has_uso() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut it = release
        .trim()
        .split(['.', '-'])
        .map(|x| x.parse::<u32>().unwrap_or(0));
    let (major, minor) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (major, minor) >= (6, 2)
}

#[test]
fn three_weft_nodes_vxlan_offloads_off() {
    three_weft_nodes(VXLAN, NO_OFFLOADS);
}

#[test]
fn three_weft_nodes_udp_backend() {
    three_weft_nodes(UDP, &[]);
}

/// A weft node and a kernel VXLAN node configured as flanneld does, both directions.
fn mixed_cluster(kernel_offloads: bool, weft_flags: &[&str]) {
    require_root();
    let mut lab = Lab::builder().hosts(2).build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(VXLAN);
    let ksub = Subnet::new(Ipv4Addr::new(10, 1, 200, 0), 24).expect("a /24");
    let kernel = KernelFlannelNode::builder(ksub)
        .offloads(kernel_offloads)
        .install(lab.host(1));
    etcd.put_lease(ksub, &kernel.lease_json(), 3600);
    let node = WeftNode::start(lab.host(0), &etcd, weft_flags);
    kernel.add_peer(node.subnet, lab.host(0).addr(), etcd.vtep_mac(node.subnet));
    lab.host_mut(0).add_pod_with_mtu(node.subnet, node.mtu);
    lab.host_mut(1).add_pod_with_mtu(ksub, kernel.mtu());
    ping_all_pairs(&lab);
    transfer(&lab, 0, 1, 50 * MB);
    transfer(&lab, 1, 0, 50 * MB);
    assert_eq!(node.drops("inner_bad_checksum"), 0);
    assert_eq!(node.metric("weft_tun_write_errors_total"), 0);
}

#[test]
fn mixed_cluster_kernel_offloads_off() {
    mixed_cluster(false, &[]);
}

#[test]
fn mixed_cluster_kernel_offloads_on() {
    mixed_cluster(true, &[]);
}

#[test]
fn mixed_cluster_two_workers() {
    // The kernel node's per-flow source ports spread over weft's SO_REUSEPORT sockets.
    mixed_cluster(true, &["--workers=2"]);
}

#[test]
fn mixed_cluster_kernel_offloads_on_weft_offloads_off() {
    mixed_cluster(true, NO_OFFLOADS);
}

/// Sends hand-made VXLAN datagrams from `from` (a namespace) to `dst:8472`.
const SEND_VXLAN: &str = r#"
import socket, struct, sys
src_ip, dst, vni, mac, inner_src, inner_dst, count = sys.argv[1:8]
bad_l4 = len(sys.argv) > 8
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
payload = b"spoof-test"
udp = struct.pack("!HHHH", 40000, 7000, 8 + len(payload), 0) + payload
if bad_l4:
    # A UDP checksum that is present but wrong (the right one with two bits flipped).
    pseudo = socket.inet_aton(inner_src) + socket.inet_aton(inner_dst) + struct.pack("!BBH", 0, 17, len(udp))
    good = csum(pseudo + udp) or 0xffff
    udp = udp[:6] + struct.pack("!H", good ^ 0x0101) + udp[8:]
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0x4000, 64, 17, 0,
                 socket.inet_aton(inner_src), socket.inet_aton(inner_dst))
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
eth = bytes.fromhex(mac.replace(":", "")) + bytes.fromhex("020000000001") + b"\x08\x00"
vx = struct.pack("!BBBB", 0x08, 0, 0, 0) + struct.pack("!I", int(vni) << 8)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src_ip, 0))
for _ in range(int(count)):
    s.sendto(vx + eth + ip + udp, (dst, 8472))
"#;

/// Counts UDP datagrams arriving on port 7000 for `secs` seconds; prints the count.
const COUNT_UDP: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 7000))
s.settimeout(0.1)
n, end = 0, time.time() + float(sys.argv[1])
while time.time() < end:
    try:
        s.recv(2048); n += 1
    except socket.timeout:
        pass
print(n)
"#;

#[test]
fn spoofed_and_malformed_vxlan_is_dropped_and_counted() {
    require_root();
    let mut lab = Lab::builder().hosts(2).outside().build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(VXLAN);
    let a = WeftNode::start(lab.host(0), &etcd, &[]);
    let b = WeftNode::start(lab.host(1), &etcd, &[]);
    lab.host_mut(0).add_pod_with_mtu(a.subnet, a.mtu);
    let pod = lab.host(0).pod(0).addr();
    let a_ip = lab.host(0).addr().to_string();
    let b_ip = lab.host(1).addr().to_string();
    let out_ip = lab.outside().addr().to_string();
    let mac = etcd.vtep_mac(a.subnet).to_string();
    let pod_s = pod.to_string();
    let b_pod = b.subnet.nth_addr(2).expect("a /24").to_string();
    let counter = lab.host(0).pod(0).spawn(&["python3", "-c", COUNT_UDP, "6"]);
    std::thread::sleep(Duration::from_millis(300));
    let send = |ns: &harness::Netns, src: &str, vni: &str, mac: &str, isrc: &str, n: &str| {
        ns.exec(&[
            "python3", "-c", SEND_VXLAN, src, &a_ip, vni, mac, isrc, &pod_s, n,
        ]);
    };
    // A sender that holds no lease.
    send(lab.outside(), &out_ip, "1", &mac, &b_pod, "20");
    // A lease holder with the wrong VNI, the wrong inner MAC, a spoofed inner source.
    send(lab.host(1), &b_ip, "2", &mac, &b_pod, "20");
    send(lab.host(1), &b_ip, "1", "02:de:ad:be:ef:00", &b_pod, "20");
    send(lab.host(1), &b_ip, "1", &mac, "10.1.250.9", "20");
    // A valid envelope around a UDP datagram whose checksum is wrong.
    lab.host(1).exec(&[
        "python3", "-c", SEND_VXLAN, &b_ip, &a_ip, "1", &mac, &b_pod, &pod_s, "20", "bad-l4",
    ]);
    // And, as the control, 5 valid datagrams that must arrive.
    send(lab.host(1), &b_ip, "1", &mac, &b_pod, "5");
    let got = counter.output_within(Duration::from_secs(15));
    let received: u32 = String::from_utf8_lossy(&got.stdout)
        .trim()
        .parse()
        .expect("count");
    assert_eq!(received, 5, "only the valid datagrams reach the pod");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(a.drops("unknown_sender"), 20);
    assert_eq!(a.drops("wrong_vni"), 20);
    assert_eq!(a.drops("wrong_inner_mac"), 20);
    assert_eq!(a.drops("spoofed_source"), 20);
    // With UDP coalescing (Linux 6.2+) weft checks the datagram itself; without, the kernel
    // drops it behind the TUN. Either way it never reaches the pod.
    if kernel_has_uso() {
        assert_eq!(a.drops("inner_l4_checksum"), 20);
    }
}

#[test]
fn nodes_join_and_leave_under_traffic() {
    require_root();
    let mut lab = Lab::builder().hosts(3).build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(VXLAN);
    let a = WeftNode::start_with_pod(&mut lab, 0, &etcd, &[]);
    let _b = WeftNode::start_with_pod(&mut lab, 1, &etcd, &[]);
    ping_all_pairs(&lab);

    // Join: C's lease reaches A's table within 1 s of C holding it.
    let c = WeftNode::start(lab.host(2), &etcd, &[]);
    let held = Instant::now();
    while a.metric("weft_leases") < 2 {
        assert!(
            held.elapsed() < Duration::from_secs(1),
            "A did not see C within 1 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("join visible on A after {:?}", held.elapsed());
    lab.host_mut(2).add_pod_with_mtu(c.subnet, c.mtu);
    let c_pod = lab.host(2).pod(0).addr();
    let a_pod = lab.host(0).pod(0);
    assert!(a_pod.wait_for_ping(c_pod, Duration::from_secs(2)));

    // Leave: C stops and its lease is deleted; A answers with ICMP unreachable within 1 s.
    let traffic = a_pod.spawn(&["ping", "-i", "0.05", "-c", "120", &c_pod.to_string()]);
    std::thread::sleep(Duration::from_millis(300));
    let (status, _) = c.stop();
    assert!(status.success());
    let icmp_before = a.metric("weft_icmp_unreachable_total");
    etcd.delete_lease(Subnet::containing(lab.host(2).pod(0).gateway(), 24).expect("a /24"));
    let deleted = Instant::now();
    while a.metric("weft_icmp_unreachable_total") == icmp_before {
        assert!(
            deleted.elapsed() < Duration::from_secs(1),
            "no ICMP unreachable within 1 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("leave answered by ICMP after {:?}", deleted.elapsed());
    let out = traffic.output_within(Duration::from_secs(15));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Destination Net Unreachable"), "{text}");
    assert_eq!(a.metric("weft_leases"), 1);
    assert!(a.drops("no_lease") > 0);
    // The cluster that remains still works.
    let b_pod = lab.host(1).pod(0).addr();
    assert!(a_pod.ping(b_pod, 3).all_replied());
}

/// Restarting a node (SIGTERM, start again) keeps its subnet; with --persist-tun the TUN and
/// its route stay meanwhile. Prints the measured gap in a 100-per-second ping stream.
#[test]
fn restart_keeps_subnet_and_traffic_resumes() {
    require_root();
    let mut lab = Lab::builder().hosts(2).build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(VXLAN);
    let a = WeftNode::start_with_pod(&mut lab, 0, &etcd, &["--persist-tun", "--workers=2"]);
    let _b = WeftNode::start_with_pod(&mut lab, 1, &etcd, &[]);
    let (pa, pb) = (lab.host(0).pod(0), lab.host(1).pod(0));
    assert!(pa.wait_for_ping(pb.addr(), Duration::from_secs(5)));
    let subnet = a.subnet;

    let pings = pa.spawn(&[
        "ping",
        "-i",
        "0.01",
        "-c",
        "500",
        "-W",
        "1",
        &pb.addr().to_string(),
    ]);
    std::thread::sleep(Duration::from_millis(1000));
    let restart = Instant::now();
    let (status, _) = a.stop();
    assert!(status.success());
    assert!(
        lab.host(0).ip_ok(&["link", "show", "weft0"]),
        "--persist-tun keeps weft0"
    );
    let routes = lab.host(0).ip(&["route", "show"]);
    assert!(
        routes.contains("10.1.0.0/16 dev weft0"),
        "and its route: {routes}"
    );
    let a = WeftNode::start(lab.host(0), &etcd, &["--persist-tun", "--workers=2"]);
    eprintln!("restart took {:?} (SIGTERM to ready)", restart.elapsed());
    assert_eq!(a.subnet, subnet, "a restarted node keeps its subnet");
    let out = pings.output_within(Duration::from_secs(20));
    let text = String::from_utf8_lossy(&out.stdout);
    let replied: Vec<u32> = text
        .lines()
        .filter_map(|l| {
            l.split("icmp_seq=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    let last = replied.iter().copied().max().unwrap_or(0);
    assert!(
        last >= 490,
        "traffic did not resume after the restart:\n{text}"
    );
    let lost = 500 - replied.len();
    eprintln!(
        "restart gap: {lost} of 500 pings at 10 ms lost = about {} ms",
        lost * 10
    );

    // The persistent device is multi-queue now; a one-worker run takes it as it is (a plain
    // single-queue open of it fails with EINVAL).
    let (status, _) = a.stop();
    assert!(status.success());
    let a = WeftNode::start(lab.host(0), &etcd, &["--persist-tun", "--workers=1"]);
    assert!(
        pa.wait_for_ping(pb.addr(), Duration::from_secs(5)),
        "one worker on the persisted multi-queue device"
    );
    assert!(a.metric("weft_worker_packets_total{worker=\"0\",direction=\"tx\"}") > 0);
}
