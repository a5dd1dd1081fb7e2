//! End-to-end: a node left as flanneld leaves it swaps to weft started with the same flags,
//! nothing cleaned by hand. vxlan: `flannel.1` (with its FDB, neighbours and routes, holding
//! UDP 8472), the lease in flanneld's form, its subnet.env, a pod on cni0; weft removes the
//! device (and says what it held), keeps the subnet, the VTEP MAC and the pod's address, and
//! the pod reaches a weft peer and a kernel-flannel peer both ways. host-gw: flanneld's routes
//! (protocol boot) that match a lease exactly are adopted (protocol 87) and follow the lease
//! when it moves to another PublicIP. A 10 ms ping stream from a peer's pod measures the gap.
//! A flanneld process in the namespace makes weft refuse to start (one in another namespace
//! does not); `weft doctor` names flanneld, its device and the routes weft does not own.
//! Needs root.

mod harness;

use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::{
    doctor_line, ping_all_pairs, require_root, transfer, weft_bin, Etcd, Host, KernelFlannelNode,
    Lab, Netns, Proc, StartingWeft, WeftNode, VXLAN_CONFIG,
};
use weft::wire::Subnet;

const HOST_GW: &str = r#"{"Network":"10.1.0.0/16","Backend":{"Type":"host-gw"}}"#;
const MB: u64 = 1 << 20;

/// Pings in a stream: 10 ms apart, for this many.
const STREAM: u32 = 1_200;

fn subnet(s: &str) -> Subnet {
    s.parse().expect("a subnet")
}

/// subnet.env as flanneld v0.20.2 writes it, in `dir`.
fn flanneld_subnet_env(dir: &Path, subnet: Subnet, mtu: u32) -> PathBuf {
    let path = dir.join("subnet.env");
    let first = std::net::Ipv4Addr::from(u32::from(subnet.addr()) + 1);
    std::fs::write(
        &path,
        format!(
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET={first}/{}\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=false\n",
            subnet.prefix_len()
        ),
    )
    .expect("writing subnet.env");
    path
}

/// `ping -D -i 0.01` from `pod` to `dst`, [`STREAM`] of them, in the background.
fn ping_stream(pod: &Netns, dst: std::net::Ipv4Addr) -> Proc {
    pod.spawn(&[
        "ping",
        "-n",
        "-D",
        "-i",
        "0.01",
        "-W",
        "1",
        "-c",
        &STREAM.to_string(),
        &dst.to_string(),
    ])
}

/// The longest time between two replies of a [`ping_stream`] (its start and end count as
/// replies only through the first and last reply) and how many were lost.
fn gap_and_lost(ping: Proc) -> (Duration, u32, String) {
    let out = ping.output_within(Duration::from_secs(60));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let stamps: Vec<f64> = text
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('['))
        .filter_map(|l| l.split(']').next())
        .filter_map(|t| t.parse().ok())
        .collect();
    let gap = stamps
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(0.0f64, f64::max);
    let lost = STREAM.saturating_sub(stamps.len() as u32);
    (Duration::from_secs_f64(gap), lost, text)
}

/// `weft doctor` in `host` (weft not running there): whether it passed, and the report.
fn doctor(host: &Host, etcd: &Etcd, subnet_file: &Path) -> (bool, String) {
    let sf = format!("--subnet-file={}", subnet_file.display());
    let ep = format!("--etcd-endpoints={}", etcd.endpoint());
    let out = host.exec_unchecked(&[weft_bin(), "doctor", &sf, "--iface=eth0", &ep]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// vxlan: host 0 is left as flanneld leaves it, host 1 runs weft, host 2 runs kernel
/// flannel. weft on host 0 with flanneld's flags takes over without a hand cleaning.
#[test]
fn a_flanneld_vxlan_node_swaps_to_weft() {
    require_root();
    let mut lab = Lab::builder().hosts(3).build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(VXLAN_CONFIG);
    let (s0, s2) = (subnet("10.1.200.0/24"), subnet("10.1.201.0/24"));
    let k0 = KernelFlannelNode::install(lab.host(0), s0);
    k0.publish(&etcd, 86_400);
    let k2 = KernelFlannelNode::install(lab.host(2), s2);
    k2.publish(&etcd, 86_400);
    let w1 = WeftNode::start(lab.host(1), &etcd, &[]);
    let w1_mac = etcd.vtep_mac(w1.subnet);
    // What flanneld on hosts 0 and 2 did with the others' leases.
    k0.add_peer(s2, lab.host(2).addr(), k2.vtep_mac());
    k0.add_peer(w1.subnet, lab.host(1).addr(), w1_mac);
    k2.add_peer(s0, lab.host(0).addr(), k0.vtep_mac());
    k2.add_peer(w1.subnet, lab.host(1).addr(), w1_mac);
    let dir = tempfile::tempdir().expect("tempdir");
    let sf = flanneld_subnet_env(dir.path(), s0, k0.mtu());
    lab.host_mut(0).add_pod_with_mtu(s0, k0.mtu());
    lab.host_mut(1).add_pod_with_mtu(w1.subnet, w1.mtu);
    lab.host_mut(2).add_pod_with_mtu(s2, k2.mtu());
    ping_all_pairs(&lab);
    let pod0 = lab.host(0).pod(0).addr();
    let record_before = etcd.lease(s0).expect("flanneld's lease");

    // flanneld stopped (nothing runs on host 0 now): doctor names what it left.
    let (ok, report) = doctor(lab.host(0), &etcd, &sf);
    assert!(!ok, "{report}");
    let dev = doctor_line(&report, "flannel_devices");
    assert!(dev.starts_with("FAIL"), "{report}");
    assert!(
        dev.contains("flannel.1 (flanneld's, holds UDP port 8472, 2 route(s) inside the Network"),
        "{report}"
    );
    assert!(
        report.contains("start weft (it removes flannel.1 on start), or ip link delete flannel.1"),
        "{report}"
    );
    let routes = doctor_line(&report, "foreign_routes");
    assert!(
        routes.starts_with("WARN") && routes.contains(&format!("{s2} via")),
        "{report}"
    );
    assert!(
        doctor_line(&report, "flanneld").starts_with("ok"),
        "{report}"
    );
    assert!(
        doctor_line(&report, "udp_port").contains("UDP 8472 is held by the VXLAN device flannel.1"),
        "{report}"
    );

    // The swap, under a 10 ms ping stream from the weft peer's pod.
    let ping = ping_stream(lab.host(1).pod(0), pod0);
    std::thread::sleep(Duration::from_secs(2));
    let sfa = format!("-subnet-file={}", sf.display());
    let w0 = WeftNode::start(lab.host(0), &etcd, &[&sfa]);
    let (gap, lost, out) = gap_and_lost(ping);
    eprintln!("vxlan swap: longest gap {gap:?}, {lost} of {STREAM} pings lost");
    assert!(gap < Duration::from_secs(1), "gap {gap:?}:\n{out}");

    // Same subnet, same VTEP MAC (the kernel peer's neighbour entries stay right), same pod.
    assert_eq!(w0.subnet, s0);
    assert_eq!(etcd.vtep_mac(s0), k0.vtep_mac(), "{record_before}");
    assert_eq!(lab.host(0).pod(0).addr(), pod0);
    assert!(
        !lab.host(0).ip_ok(&["link", "show", "flannel.1"]),
        "flannel.1 is still there"
    );
    ping_all_pairs(&lab);
    transfer(&lab, 0, 2, 10 * MB);
    transfer(&lab, 2, 0, 10 * MB);
    transfer(&lab, 0, 1, 10 * MB);
    let (ok, report) = w0.doctor(etcd.endpoint());
    assert!(
        doctor_line(&report, "flannel_devices").starts_with("ok"),
        "{ok} {report}"
    );
    let (status, log) = w0.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("removed the VXLAN device flanneld left behind")
            && log.contains("device=flannel.1")
            && log.contains("UDP port 8472"),
        "the log does not name the device and what it held:\n{log}"
    );
    drop(w1);
}

/// The routes flanneld's host-gw backend keeps on a node: each peer's subnet via its
/// PublicIP on eth0 (its netlink library writes protocol boot, as `ip route add` does).
fn flanneld_host_gw_routes(host: &Host, peers: &[(Subnet, std::net::Ipv4Addr)]) {
    for (s, ip) in peers {
        host.ip(&[
            "route",
            "add",
            &s.to_string(),
            "via",
            &ip.to_string(),
            "dev",
            "eth0",
        ]);
    }
}

fn host_gw_record(ip: std::net::Ipv4Addr) -> String {
    format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"host-gw"}}"#)
}

/// host-gw: host 0 and host 2 are flanneld host-gw nodes (routes, leases, subnet.env), host 1
/// runs weft. weft on host 0 adopts flanneld's routes; host 2's lease moves to another
/// PublicIP and the adopted route follows it.
#[test]
fn a_flanneld_host_gw_node_swaps_to_weft() {
    require_root();
    let mut lab = Lab::builder().hosts(3).build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(HOST_GW);
    let (s0, s2) = (subnet("10.1.200.0/24"), subnet("10.1.201.0/24"));
    let (ip0, ip2) = (lab.host(0).addr(), lab.host(2).addr());
    etcd.put_lease(s0, &host_gw_record(ip0), 86_400);
    etcd.put_lease(s2, &host_gw_record(ip2), 86_400);
    let w1 = WeftNode::start(lab.host(1), &etcd, &[]);
    let ip1 = lab.host(1).addr();
    flanneld_host_gw_routes(lab.host(0), &[(s2, ip2), (w1.subnet, ip1)]);
    flanneld_host_gw_routes(lab.host(2), &[(s0, ip0), (w1.subnet, ip1)]);
    let dir = tempfile::tempdir().expect("tempdir");
    let mtu = lab.host(0).mtu();
    let sf = flanneld_subnet_env(dir.path(), s0, mtu);
    lab.host_mut(0).add_pod_with_mtu(s0, mtu);
    lab.host_mut(1).add_pod_with_mtu(w1.subnet, w1.mtu);
    lab.host_mut(2).add_pod_with_mtu(s2, mtu);
    ping_all_pairs(&lab);
    let pod0 = lab.host(0).pod(0).addr();

    let ping = ping_stream(lab.host(1).pod(0), pod0);
    std::thread::sleep(Duration::from_secs(2));
    let sfa = format!("-subnet-file={}", sf.display());
    let w0 = WeftNode::start(lab.host(0), &etcd, &["--route-resync-secs=1", &sfa]);
    let (gap, lost, out) = gap_and_lost(ping);
    eprintln!("host-gw swap: longest gap {gap:?}, {lost} of {STREAM} pings lost");
    assert!(gap < Duration::from_secs(1), "gap {gap:?}:\n{out}");
    assert_eq!(w0.subnet, s0);

    // Both of flanneld's routes are weft's now.
    let route = |s: Subnet| lab.host(0).ip(&["-4", "route", "show", &s.to_string()]);
    let adopted = harness::wait_until(Duration::from_secs(5), || {
        route(s2).contains(&format!("via {ip2}"))
            && route(s2).contains("proto 87")
            && route(w1.subnet).contains("proto 87")
    });
    assert!(
        adopted.is_some(),
        "not adopted: {:?} {:?}",
        route(s2),
        route(w1.subnet)
    );
    ping_all_pairs(&lab);

    // Host 2's lease moves to another of its addresses: the adopted route follows.
    let moved: std::net::Ipv4Addr = "192.168.64.50".parse().expect("an address");
    lab.host(2)
        .ip(&["addr", "add", &format!("{moved}/24"), "dev", "eth0"]);
    etcd.put_lease(s2, &host_gw_record(moved), 86_400);
    let followed = harness::wait_until(Duration::from_secs(10), || {
        let r = route(s2);
        r.contains(&format!("via {moved}")) && r.contains("proto 87")
    });
    assert!(followed.is_some(), "the route stayed: {:?}", route(s2));
    ping_all_pairs(&lab);
    let (status, log) = w0.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("adopted a route flanneld left"),
        "no adoption in the log:\n{log}"
    );
    drop(w1);
}

/// A process named flanneld in host 0's namespace: weft there refuses to start and says so,
/// doctor names it; weft on host 1 (another namespace) starts.
#[test]
fn a_running_flanneld_is_refused() {
    require_root();
    let lab = Lab::builder().hosts(2).build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(VXLAN_CONFIG);
    // A stand-in: the kernel names a process after its executable.
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = dir.path().join("flanneld");
    std::fs::copy("/bin/sleep", &exe).expect("copying sleep");
    let exe = exe.to_string_lossy().into_owned();
    let flanneld = lab.host(0).spawn(&[&exe, "60"]);
    let pid = flanneld.pid();
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map_or(true, |c| c.trim() != "flanneld")
    {
        assert!(std::time::Instant::now() < until, "the stand-in never ran");
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut p = StartingWeft::spawn(lab.host(0), etcd.endpoint(), &[]);
    let status = p.wait_exit(Duration::from_secs(15));
    let log = p.stop().1;
    assert!(status.is_some_and(|s| !s.success()), "{status:?}\n{log}");
    assert!(
        log.contains(&format!(
            "flanneld is running in this network namespace (pid [{pid}])"
        )) && log.contains("systemctl stop flanneld"),
        "{log}"
    );
    assert!(
        etcd.list("/coreos.com/network/subnets").is_empty(),
        "a lease was taken"
    );

    let sf = dir.path().join("subnet.env");
    let (ok, report) = doctor(lab.host(0), &etcd, &sf);
    assert!(!ok, "{report}");
    let l = doctor_line(&report, "flanneld");
    assert!(
        l.starts_with("FAIL") && l.contains(&pid.to_string()),
        "{report}"
    );
    assert!(
        report.contains("systemctl stop flanneld && systemctl disable flanneld"),
        "{report}"
    );

    // Another namespace's flanneld is not this node's business.
    let b = WeftNode::start(lab.host(1), &etcd, &[]);
    drop(b);
    drop(flanneld);
}

/// Dual stack: host 0 left as a dual-stack flanneld vxlan node leaves it (`flannel.1` and
/// `flannel-v6.1`, the dual-stack lease, subnet.env with its IPv6 lines, a dual-stack pod),
/// host 1 runs weft. weft on host 0 removes both devices and the pods reach each other in
/// both families.
#[test]
fn a_dual_stack_flanneld_node_swaps_to_weft() {
    require_root();
    let mut lab = Lab::builder().hosts(2).ipv6().build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(
        r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/48","Backend":{"Type":"vxlan"}}"#,
    );
    let (s0, s6) = (
        subnet("10.1.200.0/24"),
        "fd10:0:0:c8::/64".parse().expect("a /64"),
    );
    let k0 = KernelFlannelNode::builder(s0).ipv6(s6).install(lab.host(0));
    k0.publish(&etcd, 86_400);
    let w1 = WeftNode::start_dual_with_pod(&mut lab, 1, &etcd, &[]);
    let w1_s6 = w1.subnet6.expect("dual stack");
    let key = format!(
        "{}/subnets/{}&{}",
        harness::PREFIX,
        w1.subnet.key_string(),
        w1_s6.key_string()
    );
    let record = etcd.get(&key).expect("weft's lease");
    let tail = key
        .strip_prefix(&format!("{}/subnets/", harness::PREFIX))
        .expect("under the prefix");
    k0.apply_lease(tail, &record);
    let dir = tempfile::tempdir().expect("tempdir");
    let sf = dir.path().join("subnet.env");
    let first6 = std::net::Ipv6Addr::from(u128::from(s6.addr()) + 1);
    std::fs::write(
        &sf,
        format!(
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.200.1/24\nFLANNEL_IPV6_NETWORK=fd10::/48\nFLANNEL_IPV6_SUBNET={first6}/64\nFLANNEL_MTU={}\nFLANNEL_IPMASQ=false\n",
            k0.mtu()
        ),
    )
    .expect("subnet.env");
    lab.host_mut(0).add_dual_pod_with_mtu(s0, s6, k0.mtu());
    harness::ping_all_pairs(&lab);
    harness::ping_all_pairs6(&lab);

    let sfa = format!("-subnet-file={}", sf.display());
    let w0 = WeftNode::builder(lab.host(0), &etcd)
        .public_ipv6(lab.host(0).addr6())
        .flags(&[&sfa])
        .start();
    assert_eq!((w0.subnet, w0.subnet6), (s0, Some(s6)));
    for dev in ["flannel.1", "flannel-v6.1"] {
        assert!(
            !lab.host(0).ip_ok(&["link", "show", dev]),
            "{dev} is still there"
        );
    }
    harness::ping_all_pairs(&lab);
    harness::ping_all_pairs6(&lab);
    harness::transfer6(&lab, 0, 1, 10 * MB);
    let (status, log) = w0.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("device=flannel.1") && log.contains("device=flannel-v6.1"),
        "the log does not name both devices:\n{log}"
    );
    drop(w1);
}
