//! End-to-end: a flanneld v0.20.2 node swaps in weft. A full flanneld etcd-mode command line
//! (Go's single-dash spelling, glog flags included), and the same settings as `FLANNELD_*`
//! variables, each take effect; `-version`, kube-mode and unknown flags answer plainly; a
//! dual-stack config is refused until the data path forwards IPv6; the FLANNEL-FWD rules come
//! without `-ip-masq`, so pods cross hosts whose FORWARD policy is DROP. Needs root.

mod harness;

use std::time::{Duration, Instant};

use harness::{
    ping_all_pairs, require_root, run_unchecked, transfer, two_node_cluster, weft_bin, Etcd, Host,
    Lab, StartingWeft, WeftNode, PREFIX, VXLAN_CONFIG,
};

const MB: u64 = 1 << 20;

fn iptables(host: &Host, args: &[&str]) -> (bool, String) {
    let mut argv = vec!["iptables", "-w", "5"];
    argv.extend_from_slice(args);
    let out = host.ns().exec_unchecked(&argv);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Checks what the command line asked for took effect on a node started in `lab`'s host 0.
fn check_settings(lab: &Lab, etcd: &Etcd, node: WeftNode) {
    let host = lab.host(0);
    // -iface-regex: the first pattern matches nothing, the second eth0.
    let status = node.http("/status").expect("/status");
    assert!(status.contains("\"iface\": \"eth0\""), "{status}");
    // -public-ip is what the lease advertises.
    let lease = etcd.lease(node.subnet).expect("lease");
    assert!(
        lease.contains(&format!("\"PublicIP\":\"{}\"", host.addr())),
        "{lease}"
    );
    // -ip-masq=false and -iptables-forward-rules (default true): FLANNEL-FWD only.
    let (ok, fwd) = iptables(host, &["-S", "FLANNEL-FWD"]);
    assert!(
        ok && fwd.contains("-s 10.1.0.0/16") && fwd.contains("-j ACCEPT"),
        "{fwd}"
    );
    let (nat, _) = iptables(host, &["-t", "nat", "-S", "FLANNEL-POSTRTG"]);
    assert!(!nat, "FLANNEL-POSTRTG exists without -ip-masq");
    // -iptables-resync=1: a flushed chain comes back within a couple of seconds.
    iptables(host, &["-F", "FLANNEL-FWD"]);
    let end = Instant::now() + Duration::from_secs(5);
    while !iptables(host, &["-S", "FLANNEL-FWD"])
        .1
        .contains("-j ACCEPT")
    {
        assert!(Instant::now() < end, "FLANNEL-FWD not resynced");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, log) = node.stop();
    assert!(log.contains("glog flags accepted and ignored"), "{log}");
    assert!(log.contains("-public-ipv6 noted"), "{log}");
    // -v=2 raises weft's verbosity only: no library debug lines.
    assert!(
        log.contains("DEBUG weft"),
        "-v=2 gave no debug lines:\n{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("DEBUG") && !l.contains("DEBUG weft")),
        "library debug lines with -v=2:\n{log}"
    );
}

#[test]
fn full_flanneld_command_line_takes_effect() {
    require_root();
    let lab = Lab::builder().hosts(1).build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(VXLAN_CONFIG);
    let host = lab.host(0);
    let ep = format!("-etcd-endpoints={}", etcd.endpoint());
    let prefix = format!("-etcd-prefix={PREFIX}");
    let public_ip = format!("-public-ip={}", host.addr());
    let node = WeftNode::start_raw(
        host,
        // The harness's RUST_LOG would override -v.
        &["RUST_LOG="],
        &[
            &ep,
            &prefix,
            "-iface-regex=^nomatch",
            "-iface-regex=^eth",
            "-iface-can-reach=192.168.64.2",
            &public_ip,
            "-public-ipv6=fd77::10",
            "-subnet-lease-renew-margin=1439",
            "-ip-masq=false",
            "-iptables-resync=1",
            "-iptables-forward-rules=true",
            "-healthz-ip=127.0.0.1",
            "-healthz-port=9474",
            "-v=2",
            "-vmodule=main=3",
            "-log_backtrace_at=main.go:100",
        ],
    );
    check_settings(&lab, &etcd, node);
}

#[test]
fn the_same_settings_as_flanneld_environment_variables() {
    require_root();
    let lab = Lab::builder().hosts(1).build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(VXLAN_CONFIG);
    let host = lab.host(0);
    let ep = format!("FLANNELD_ETCD_ENDPOINTS={}", etcd.endpoint());
    let prefix = format!("FLANNELD_ETCD_PREFIX={PREFIX}");
    let public_ip = format!("FLANNELD_PUBLIC_IP={}", host.addr());
    let node = WeftNode::start_raw(
        host,
        &[
            &ep,
            &prefix,
            "FLANNELD_IFACE_REGEX=^nomatch,^eth",
            "FLANNELD_IFACE_CAN_REACH=192.168.64.2",
            &public_ip,
            "FLANNELD_PUBLIC_IPV6=fd77::10",
            "FLANNELD_SUBNET_LEASE_RENEW_MARGIN=1439",
            "FLANNELD_IP_MASQ=false",
            "FLANNELD_IPTABLES_RESYNC=1",
            "FLANNELD_IPTABLES_FORWARD_RULES=true",
            "FLANNELD_HEALTHZ_IP=127.0.0.1",
            "FLANNELD_HEALTHZ_PORT=9474",
            "FLANNELD_V=2",
            "FLANNELD_VMODULE=main=3",
            "FLANNELD_LOG_BACKTRACE_AT=main.go:100",
            // The harness's RUST_LOG would override -v.
            "RUST_LOG=",
        ],
        &[],
    );
    check_settings(&lab, &etcd, node);
}

#[test]
fn iface_can_reach_picks_the_interface_that_routes_there() {
    require_root();
    let lab = Lab::builder().hosts(1).build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(VXLAN_CONFIG);
    let ep = format!("-etcd-endpoints={}", etcd.endpoint());
    let node = WeftNode::start_raw(
        lab.host(0),
        &[],
        &[
            &ep,
            "-iface-can-reach=192.168.64.2",
            "-healthz-ip=127.0.0.1",
            "-healthz-port=9474",
        ],
    );
    let status = node.http("/status").expect("/status");
    assert!(status.contains("\"iface\": \"eth0\""), "{status}");
}

/// A flanneld v0.20.2 dual-stack network config with the udp backend (IPv4 only, in
/// flanneld too): `weft run` refuses it with the config error's words, takes no lease and
/// writes no subnet.env meanwhile, and comes up once the config is IPv4-only.
#[test]
fn weft_run_refuses_a_dual_stack_udp_config_and_takes_no_lease() {
    require_root();
    let lab = Lab::builder().hosts(1).build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(
        r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/48","Backend":{"Type":"udp"}}"#,
    );
    let mut weft = StartingWeft::spawn(lab.host(0), etcd.endpoint(), &["-public-ipv6=fd77::10"]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        weft.is_running(),
        "weft gave up on a config that may change"
    );
    assert!(!weft.subnet_file().exists());
    let leases = etcd.ctl(&[
        "get",
        "--prefix",
        "--keys-only",
        &format!("{PREFIX}/subnets/"),
    ]);
    assert!(leases.trim().is_empty(), "a lease was taken: {leases}");

    etcd.put_config(VXLAN_CONFIG);
    let until = Instant::now() + Duration::from_secs(10);
    while !weft.subnet_file().exists() {
        assert!(weft.is_running(), "weft exited");
        assert!(
            Instant::now() < until,
            "not up 10 s after the config became IPv4-only"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, log) = weft.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("udp backend carries IPv4 only"), "{log}");
}

#[test]
fn version_kube_mode_and_unknown_flags_answer_plainly() {
    let run = |args: &[&str]| {
        let mut argv = vec![weft_bin(), "run"];
        argv.extend_from_slice(args);
        let out = run_unchecked(&argv, Duration::from_secs(10));
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = run(&["-version"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("weft "), "{out}");
    let (code, _, err) = run(&["-kube-subnet-mgr", "-kube-api-url=https://k:6443"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("the kube subnet manager is not supported")
            && err.contains("-kube-subnet-mgr -kube-api-url"),
        "{err}"
    );
    assert!(!err.contains("stack backtrace"), "{err}");
    let (code, _, err) = run(&["-iface-regexp=eth"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("unknown flag -iface-regexp"), "{err}");
}

/// Both hosts drop forwarded packets by default (docker's FORWARD policy). Without -ip-masq,
/// weft's default FLANNEL-FWD rules carry pod traffic across; with
/// -iptables-forward-rules=false nothing does (the policy really drops).
#[test]
fn forward_rules_without_ip_masq_carry_pods_across_a_drop_policy() {
    require_root();
    let mut lab = Lab::builder().hosts(2).build();
    for i in 0..2 {
        iptables(lab.host(i), &["-P", "FORWARD", "DROP"]);
    }
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(VXLAN_CONFIG);
    let a = WeftNode::start_with_pod(&mut lab, 0, &etcd, &[]);
    let b = WeftNode::start_with_pod(&mut lab, 1, &etcd, &[]);
    ping_all_pairs(&lab);
    transfer(&lab, 0, 1, 5 * MB);
    transfer(&lab, 1, 0, 5 * MB);
    drop((a, b));

    // The same cluster without forward rules: the DROP policy stops the pods.
    for i in 0..2 {
        iptables(lab.host(i), &["-F", "FLANNEL-FWD"]);
    }
    let _a = WeftNode::start(lab.host(0), &etcd, &["-iptables-forward-rules=false"]);
    let _b = WeftNode::start(lab.host(1), &etcd, &["-iptables-forward-rules=false"]);
    let (pa, pb) = (lab.host(0).pod(0), lab.host(1).pod(0));
    assert!(
        !pa.wait_for_ping(pb.addr(), Duration::from_secs(2)),
        "pods reached each other through a DROP policy without forward rules"
    );
}

/// `weft status` and `weft doctor` without flags talk to the weft running in their own
/// network namespace, with two nodes side by side; without a node, doctor still checks the
/// host and says "weft is not running" as one finding.
#[test]
fn status_and_doctor_without_flags_find_their_own_node() {
    require_root();
    let (lab, _etcd, a, b) = two_node_cluster(VXLAN_CONFIG, &[]);
    for (node, other) in [(&a, &b), (&b, &a)] {
        let out = node.weft(&["status"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("weft status:\n{text}");
        let first = text.lines().next().unwrap_or("");
        assert!(first.contains(&node.subnet.to_string()), "{text}");
        assert!(text.contains("1 remote lease\n"), "{text}");
        assert!(text.contains(&other.subnet.to_string()), "{text}");
        let doc = node.weft(&["doctor"]);
        let report = String::from_utf8_lossy(&doc.stdout);
        for check in ["node", "etcd", "routes", "mtu", "lease_records"] {
            let line = report
                .lines()
                .find(|l| l.split_whitespace().nth(1) == Some(check))
                .unwrap_or_else(|| panic!("no {check} line:\n{report}"));
            assert!(line.starts_with("ok"), "{report}");
        }
    }
    // The kernel's IPv6 chatter on the TUN (router solicitations, MLD) is not a drop.
    assert_eq!(a.drops("outbound_ipv6"), 0);
    eprintln!(
        "IPv6 link chatter ignored on node a: {}",
        a.metric("weft_tun_ipv6_ignored_total")
    );
    let json = a.weft(&["status", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).expect("status JSON");
    assert_eq!(doc["node"]["offloads"]["tun_tso"], serde_json::json!(true));
    assert_eq!(doc["node"]["iptables"], serde_json::json!("ok"));

    let (status, _) = b.stop();
    assert!(status.success());
    let out = run_in(lab.host(1), &["status"]);
    assert_eq!(out.0, Some(1));
    assert!(
        out.2
            .contains("weft is not running in this network namespace"),
        "{}",
        out.2
    );
    assert!(!out.2.contains("backtrace"), "{}", out.2);
    let out = run_in(lab.host(1), &["doctor", "--backend", "host-gw"]);
    assert_eq!(out.0, Some(1), "{}", out.1);
    assert!(
        out.1.contains("FAIL  node") && out.1.contains("weft is not running"),
        "{}",
        out.1
    );
    assert!(
        out.1.contains("ip_forward"),
        "host checks still run:\n{}",
        out.1
    );
    drop(a);
}

/// Runs `weft <args>` in `host`: exit code, stdout, stderr.
fn run_in(host: &Host, args: &[&str]) -> (Option<i32>, String, String) {
    let mut argv = vec![weft_bin()];
    argv.extend_from_slice(args);
    let out = host.ns().exec_unchecked(&argv);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
