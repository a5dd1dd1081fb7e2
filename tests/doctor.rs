//! `weft doctor` finds each fault it claims to, each created in a namespace, and says the fix;
//! `weft run --fix-masquerade` rewrites a docker-style rule so pods keep their source address.
//! With a dual-stack network (in etcd, or in subnet.env) it also checks IPv6 forwarding and
//! ip6tables' FORWARD policy.

mod harness;

use std::time::Duration;

use harness::{
    doctor_line, require_root, tcp_transfer, weft_bin, Etcd, Host, Lab, WeftNode, VXLAN_CONFIG,
};

fn doctor_with(node: &WeftNode, endpoint: &str) -> (bool, String) {
    node.doctor(endpoint)
}

fn doctor(node: &WeftNode) -> (bool, String) {
    doctor_with(node, "http://192.168.64.2:2379")
}

#[test]
fn doctor_finds_each_fault_and_its_fix() {
    require_root();
    let mut lab = Lab::builder().hosts(2).build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(VXLAN_CONFIG);
    // Without weft's FLANNEL-FWD rules, so that a FORWARD policy of DROP is a fault to find.
    let a = WeftNode::start(lab.host(0), &etcd, &["-iptables-forward-rules=false"]);
    let b = WeftNode::start(lab.host(1), &etcd, &[]);
    lab.host_mut(0).add_pod_with_mtu(a.subnet, a.mtu);
    let host = lab.host(0);

    let (ok, report) = doctor(&a);
    assert!(ok, "a healthy node:\n{report}");
    assert!(!report.contains("ipv6_"), "IPv4-only network:\n{report}");
    for check in [
        "etcd",
        "udp_port",
        "routes",
        "ip_forward",
        "forward_policy",
        "masquerade",
        "mtu",
    ] {
        assert!(doctor_line(&report, check).starts_with("ok"), "{report}");
    }

    // etcd out of reach.
    let (ok, report) = doctor_with(&a, "http://192.168.64.2:1");
    assert!(!ok, "{report}");
    assert!(doctor_line(&report, "etcd").starts_with("FAIL"), "{report}");

    // The Network route through the TUN is gone (B's lease has no route) and the TUN's MTU
    // is below what pods were told (FLANNEL_MTU). A running node puts both back at once
    // (tests/upkeep.rs), so the faults are made on a node that hangs (SIGSTOP): what doctor
    // is for then. Its status query times out; the host checks still run.
    let route = format!("{} dev weft0", "10.1.0.0/16");
    a.signal(libc::SIGSTOP);
    host.ip(&["route", "del", "10.1.0.0/16", "dev", "weft0"]);
    host.ip(&["link", "set", "weft0", "mtu", "1400"]);
    let (ok, report) = doctor(&a);
    a.signal(libc::SIGCONT);
    assert!(!ok, "{report}");
    assert!(
        doctor_line(&report, "routes").starts_with("FAIL"),
        "{report}"
    );
    assert!(
        report.contains(&b.subnet.to_string()),
        "names the lease:\n{report}"
    );
    assert!(doctor_line(&report, "mtu").starts_with("FAIL"), "{report}");
    assert!(report.contains("give pods MTU 1400"), "{report}");
    // Running again, the node repairs both by itself.
    let mtu = format!("mtu {} ", a.mtu);
    let repaired = harness::wait_until(Duration::from_secs(10), || {
        host.ip(&["route", "show"]).contains(&route)
            && host.ip(&["link", "show", "weft0"]).contains(&mtu)
    });
    assert!(repaired.is_some(), "{}", host.ip(&["route", "show"]));

    // Three faults at once: forwarding off, FORWARD dropping, docker's masquerade rule.
    host.sysctl("net.ipv4.ip_forward", "0");
    host.exec(&["iptables", "-P", "FORWARD", "DROP"]);
    let rule = [
        "-s",
        &a.subnet.to_string(),
        "!",
        "-o",
        "cni0",
        "-j",
        "MASQUERADE",
    ];
    let mut add = vec!["iptables", "-t", "nat", "-A", "POSTROUTING"];
    add.extend_from_slice(&rule);
    host.exec(&add);
    let (ok, report) = doctor(&a);
    assert!(!ok, "doctor must exit 1:\n{report}");
    assert!(
        doctor_line(&report, "ip_forward").starts_with("FAIL"),
        "{report}"
    );
    assert!(
        report.contains("sysctl -w net.ipv4.ip_forward=1"),
        "{report}"
    );
    assert!(
        doctor_line(&report, "forward_policy").starts_with("FAIL"),
        "{report}"
    );
    assert!(
        doctor_line(&report, "masquerade").starts_with("FAIL"),
        "{report}"
    );
    assert!(
        report.contains("! -d 10.1.0.0/16"),
        "the exact fix:\n{report}"
    );

    // Bridge netfilter off, where the kernel has it (br_netfilter loaded): a warning.
    if std::path::Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() {
        host.sysctl("net.bridge.bridge-nf-call-iptables", "0");
        let (_, report) = doctor(&a);
        assert!(
            doctor_line(&report, "bridge_nf_call_iptables").starts_with("WARN"),
            "{report}"
        );
        host.sysctl("net.bridge.bridge-nf-call-iptables", "1");
    } else {
        eprintln!(
            "br_netfilter not loaded on this kernel: the bridge-nf fault cannot be made here"
        );
    }

    // Strict rp_filter is a warning, not a failure.
    host.sysctl("net.ipv4.ip_forward", "1");
    host.exec(&["iptables", "-P", "FORWARD", "ACCEPT"]);
    let mut del = vec!["iptables", "-t", "nat", "-D", "POSTROUTING"];
    del.extend_from_slice(&rule);
    host.exec(&del);
    host.sysctl("net.ipv4.conf.all.rp_filter", "1");
    let (ok, report) = doctor(&a);
    assert!(ok, "{report}");
    assert!(
        doctor_line(&report, "rp_filter").starts_with("WARN"),
        "{report}"
    );

    // weft stopped and something else holds its UDP port.
    // The node's subnet.env goes with its temporary dir: keep a copy for the doctor.
    let keep = std::fs::read_to_string(a.subnet_file()).expect("subnet.env");
    let (status, _) = a.stop();
    assert!(status.success());
    let dir = tempfile::tempdir().unwrap();
    let sf = dir.path().join("subnet.env");
    std::fs::write(&sf, keep).expect("subnet.env");
    let squatter = host.spawn(&[
        "python3",
        "-c",
        "import socket,time; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 8472)); time.sleep(30)",
    ]);
    // Python may take longer than a fixed pause to start on a loaded machine: wait for the
    // socket itself.
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&host.exec(&["ss", "-Huln"]).stdout).contains(":8472 ") {
        assert!(
            std::time::Instant::now() < until,
            "the squatter never bound"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let sfa = format!("--subnet-file={}", sf.display());
    let out = host.exec_unchecked(&[
        harness::weft_bin(),
        "doctor",
        &sfa,
        "--iface=eth0",
        "--etcd-endpoints=http://192.168.64.2:2379",
    ]);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "{report}");
    assert!(
        doctor_line(&report, "udp_port").starts_with("FAIL"),
        "{report}"
    );
    assert!(report.contains("held by another process"), "{report}");
    assert!(doctor_line(&report, "tun").starts_with("FAIL"), "{report}");
    drop(squatter);
}

#[test]
fn fix_masquerade_keeps_pod_source_addresses() {
    require_root();
    let mut lab = Lab::builder().hosts(2).build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(VXLAN_CONFIG);
    // Node A's subnet is known only once it runs: start, add the rule, restart with the fix.
    let a = WeftNode::start(lab.host(0), &etcd, &[]);
    let subnet = a.subnet;
    let (status, _) = a.stop();
    assert!(status.success());
    let host = lab.host(0);
    host.exec(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        &subnet.to_string(),
        "!",
        "-o",
        "cni0",
        "-j",
        "MASQUERADE",
    ]);
    let a = WeftNode::start(lab.host(0), &etcd, &["--fix-masquerade"]);
    assert_eq!(a.subnet, subnet, "a restarted node keeps its subnet");
    let b = WeftNode::start(lab.host(1), &etcd, &[]);
    lab.host_mut(0).add_pod_with_mtu(a.subnet, a.mtu);
    lab.host_mut(1).add_pod_with_mtu(b.subnet, b.mtu);
    let post = lab
        .host(0)
        .exec(&["iptables", "-t", "nat", "-S", "POSTROUTING"]);
    let post = String::from_utf8_lossy(&post.stdout);
    // iptables prints the matches in its own order; the rule must now spare the overlay.
    let masq: Vec<&str> = post.lines().filter(|l| l.contains("MASQUERADE")).collect();
    assert_eq!(masq.len(), 1, "{post}");
    for part in [
        &format!("-s {subnet}") as &str,
        "! -o cni0",
        "! -d 10.1.0.0/16",
    ] {
        assert!(masq[0].contains(part), "{part} missing: {post}");
    }
    let (pa, pb) = (lab.host(0).pod(0), lab.host(1).pod(0));
    assert!(pa.wait_for_ping(pb.addr(), Duration::from_secs(5)));
    let t = tcp_transfer(pa, pb, pb.addr(), 5401, 1 << 20, Duration::from_secs(30)).unwrap();
    assert!(t.intact());
    assert_eq!(t.peer.split(':').next(), Some(&*pa.addr().to_string()));
}

/// flannel's dual-stack network config.
const DUAL_STACK_CONFIG: &str = r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/48","Backend":{"Type":"vxlan"}}"#;

/// `weft doctor` in `host` (no weft running there) with `args`: its report.
fn doctor_in(host: &Host, args: &[&str]) -> String {
    let mut argv = vec![weft_bin(), "doctor", "--iface=eth0"];
    argv.extend_from_slice(args);
    let out = host.exec_unchecked(&argv);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn doctor_checks_the_ipv6_half_of_a_dual_stack_network() {
    require_root();
    let lab = Lab::builder().hosts(1).ipv6().build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(DUAL_STACK_CONFIG);
    let host = lab.host(0);
    let dir = tempfile::tempdir().unwrap();
    // No subnet.env: the IPv6Network comes from etcd's config.
    let missing = format!("--subnet-file={}", dir.path().join("none.env").display());
    let ep = format!("--etcd-endpoints={}", etcd.endpoint());
    let args = [missing.as_str(), ep.as_str()];

    let report = doctor_in(host, &args);
    assert!(
        doctor_line(&report, "etcd").starts_with("ok"),
        "a dual-stack config is read:\n{report}"
    );
    assert!(
        doctor_line(&report, "ipv6_forwarding").starts_with("ok"),
        "{report}"
    );
    assert!(
        doctor_line(&report, "ipv6_forward_policy").starts_with("ok"),
        "{report}"
    );

    // IPv6 forwarding off.
    host.sysctl("net.ipv6.conf.all.forwarding", "0");
    let report = doctor_in(host, &args);
    let l = doctor_line(&report, "ipv6_forwarding");
    assert!(l.starts_with("FAIL") && l.contains("fd10::/48"), "{report}");
    assert!(
        report.contains("sysctl -w net.ipv6.conf.all.forwarding=1"),
        "{report}"
    );
    assert!(
        doctor_line(&report, "ip_forward").starts_with("ok"),
        "IPv4 is on:\n{report}"
    );
    host.sysctl("net.ipv6.conf.all.forwarding", "1");

    // ip6tables' FORWARD drops and nothing accepts the IPv6Network; IPv4's still accepts.
    host.exec(&["ip6tables", "-w", "5", "-P", "FORWARD", "DROP"]);
    let report = doctor_in(host, &args);
    assert!(
        doctor_line(&report, "ipv6_forward_policy").starts_with("FAIL"),
        "{report}"
    );
    let fix =
        "ip6tables -A FORWARD -s fd10::/48 -j ACCEPT; ip6tables -A FORWARD -d fd10::/48 -j ACCEPT";
    assert!(report.contains(fix), "the exact fix:\n{report}");
    assert!(
        doctor_line(&report, "forward_policy").starts_with("ok"),
        "{report}"
    );
    // The fix as printed mends it.
    for rule in fix.split("; ") {
        let mut argv = vec!["ip6tables", "-w", "5"];
        argv.extend(rule.split_whitespace().skip(1));
        host.exec(&argv);
    }
    let report = doctor_in(host, &args);
    let l = doctor_line(&report, "ipv6_forward_policy");
    assert!(
        l.starts_with("ok") && l.contains("DROP, IPv6 overlay accepted"),
        "{report}"
    );

    // subnet.env's IPv6 lines name the IPv6Network when etcd cannot be asked.
    let sf = dir.path().join("subnet.env");
    std::fs::write(
        &sf,
        "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.1.1/24\nFLANNEL_IPV6_NETWORK=fd20::/48\nFLANNEL_IPV6_SUBNET=fd20:0:0:1::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
    )
    .unwrap();
    let sfa = format!("--subnet-file={}", sf.display());
    let report = doctor_in(host, &[&sfa, "--etcd-endpoints=http://192.168.64.2:1"]);
    assert!(doctor_line(&report, "etcd").starts_with("FAIL"), "{report}");
    assert!(
        doctor_line(&report, "ipv6_forward_policy").starts_with("FAIL"),
        "{report}"
    );
    assert!(
        report.contains("ip6tables -A FORWARD -s fd20::/48 -j ACCEPT"),
        "{report}"
    );
}
