//! `--ip-masq` on real iptables in namespaces: pod-to-pod traffic across nodes keeps the
//! pod's source address, traffic to a host outside the overlay is masqueraded to the node's
//! address, and a flushed chain comes back on the next resync. The IPv6 half on real
//! ip6tables: flanneld v0.20.2's chains land in ip6tables' nat and filter tables (and
//! nowhere in iptables), a rewrite restores what was deleted, and with those rules IPv6 pod
//! traffic keeps its source inside the IPv6Network and is masqueraded leaving it. An
//! IPv4-only node never runs ip6tables.

mod harness;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use harness::{
    require_root, tcp_transfer, weft_bin, Etcd, Host, KernelFlannelNode, Lab, WeftNode,
    VXLAN_CONFIG,
};
use weft::host::masq::{self, Rules};
use weft::wire::Subnet6;

/// The IPv6Network of the dual-stack tests (DESIGN.md's example).
fn network6() -> Subnet6 {
    "fd10::/48".parse().expect("an IPv6 network")
}

/// Both of flannel's chains, as `--ip-masq` with the default forward rules asks.
const BOTH: Rules = Rules {
    masquerade: true,
    forward: true,
};

/// `<cmd> -w 5 -t <table> -S [chain]` in `host`: the rules as lines.
fn list(host: &Host, cmd: &str, table: &str, chain: &str) -> Vec<String> {
    let mut args = vec![cmd, "-w", "5", "-t", table, "-S"];
    if !chain.is_empty() {
        args.push(chain);
    }
    let out = host.exec(&args);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The `-A` lines of `text` (an iptables-restore input) for `chain`.
fn appends<'a>(text: &'a str, chain: &str) -> Vec<&'a str> {
    let head = format!("-A {chain} ");
    text.lines().filter(|l| l.starts_with(&head)).collect()
}

#[test]
fn pod_ip_kept_across_nodes_and_masqueraded_outside() {
    require_root();
    let mut lab = Lab::builder().hosts(2).outside().build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(VXLAN_CONFIG);
    let a = WeftNode::start_with_pod(&mut lab, 0, &etcd, &["--ip-masq"]);
    let _b = WeftNode::start_with_pod(&mut lab, 1, &etcd, &["--ip-masq"]);
    let (pa, pb) = (lab.host(0).pod(0), lab.host(1).pod(0));
    assert!(pa.wait_for_ping(pb.addr(), Duration::from_secs(5)));

    // The chains are flannel's.
    let nat = lab
        .host(0)
        .exec(&["iptables", "-t", "nat", "-S", "FLANNEL-POSTRTG"]);
    let nat = String::from_utf8_lossy(&nat.stdout);
    assert!(
        nat.contains(&format!("-s {} -d 10.1.0.0/16", a.subnet)),
        "{nat}"
    );
    assert!(nat.contains("-j MASQUERADE"), "{nat}");
    let post = lab
        .host(0)
        .exec(&["iptables", "-t", "nat", "-S", "POSTROUTING"]);
    assert!(String::from_utf8_lossy(&post.stdout).contains("-j FLANNEL-POSTRTG"));

    // Pod to remote pod: B sees A's pod address.
    let t = tcp_transfer(pa, pb, pb.addr(), 5301, 1 << 20, Duration::from_secs(30)).unwrap();
    assert!(t.intact());
    assert_eq!(
        t.peer.split(':').next(),
        Some(&*pa.addr().to_string()),
        "pod IP kept"
    );

    // Pod to a host outside the overlay: it sees node A's address.
    let outside = lab.outside();
    let t = tcp_transfer(
        pa,
        outside,
        outside.addr(),
        5302,
        1 << 20,
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(t.intact());
    assert_eq!(
        t.peer.split(':').next(),
        Some(&*lab.host(0).addr().to_string()),
        "masqueraded to the node"
    );

    // Someone flushes the chain: the resync (every 10 s) writes it again.
    lab.host(0)
        .exec(&["iptables", "-t", "nat", "-F", "FLANNEL-POSTRTG"]);
    let flushed = Instant::now();
    loop {
        let out = lab
            .host(0)
            .exec(&["iptables", "-t", "nat", "-S", "FLANNEL-POSTRTG"]);
        if String::from_utf8_lossy(&out.stdout).contains("MASQUERADE") {
            break;
        }
        assert!(
            flushed.elapsed() < Duration::from_secs(15),
            "rules not restored"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(a.http("/readyz").is_some());
}

#[test]
fn ipv6_rules_land_in_ip6tables_and_a_rewrite_restores_them() {
    require_root();
    let lab = Lab::builder().hosts(1).ipv6().build();
    let host = lab.host(0);
    let (n6, s6) = (network6(), Lab::default_pod_subnet6(0));
    host.run(|| masq::apply6(n6, s6, BOTH))
        .unwrap_or_else(|e| panic!("apply6: {e}"));

    // nat: FLANNEL-POSTRTG holds the IPv4 rules' layout for the IPv6 prefixes, POSTROUTING
    // jumps to it first. --random-fully where this ip6tables and kernel take it, on both MASQUERADEs.
    let nat = list(host, "ip6tables", "nat", "FLANNEL-POSTRTG");
    let random_fully = nat.iter().any(|l| l.ends_with("--random-fully"));
    let want = masq::restore_text6(n6, s6, BOTH, random_fully);
    assert_eq!(nat[0], "-N FLANNEL-POSTRTG");
    assert_eq!(nat[1..], appends(&want, "FLANNEL-POSTRTG"), "{nat:#?}");
    assert_eq!(nat.len(), 7);
    assert!(nat[5].contains("-s fd10::/48 ! -d ff00::/8") && nat[5].contains("MASQUERADE"));
    assert!(nat[4].contains("! -s fd10::/48 -d fd10:0:0:1::/64") && nat[4].ends_with("RETURN"));
    let post = list(host, "ip6tables", "nat", "POSTROUTING");
    assert_eq!(
        post[1], "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG",
        "{post:#?}"
    );
    // filter: FLANNEL-FWD accepts the IPv6Network both ways, FORWARD jumps to it first.
    let fwd = list(host, "ip6tables", "filter", "FLANNEL-FWD");
    assert_eq!(fwd[1..], appends(&want, "FLANNEL-FWD"), "{fwd:#?}");
    assert_eq!(
        fwd[1],
        "-A FLANNEL-FWD -s fd10::/48 -m comment --comment \"flanneld forward\" -j ACCEPT"
    );
    let forward = list(host, "ip6tables", "filter", "FORWARD");
    assert_eq!(
        forward[1], "-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD",
        "{forward:#?}"
    );
    // IPv4's tables are another family's: nothing of flannel's there.
    for table in ["nat", "filter"] {
        let v4 = list(host, "iptables", table, "");
        assert!(
            v4.iter().all(|l| !l.contains("FLANNEL")),
            "{table}: {v4:#?}"
        );
    }

    // Someone deletes a masquerade rule and the FORWARD jump, and leaves a stale rule of
    // another subnet in the chain: the next rewrite (what every resync runs) puts back
    // exactly flannel's rules.
    host.exec(&[
        "ip6tables",
        "-w",
        "5",
        "-t",
        "nat",
        "-D",
        "FLANNEL-POSTRTG",
        "3",
    ]);
    host.exec(&[
        "ip6tables",
        "-w",
        "5",
        "-D",
        "FORWARD",
        "-m",
        "comment",
        "--comment",
        "flanneld forward",
        "-j",
        "FLANNEL-FWD",
    ]);
    host.exec(&[
        "ip6tables",
        "-w",
        "5",
        "-t",
        "nat",
        "-A",
        "FLANNEL-POSTRTG",
        "-d",
        "fd10:0:0:9::/64",
        "-j",
        "RETURN",
    ]);
    assert_ne!(list(host, "ip6tables", "nat", "FLANNEL-POSTRTG"), nat);
    assert!(list(host, "ip6tables", "filter", "FORWARD")
        .iter()
        .all(|l| !l.contains("FLANNEL-FWD")));
    host.run(|| masq::apply6(n6, s6, BOTH))
        .unwrap_or_else(|e| panic!("apply6 again: {e}"));
    assert_eq!(list(host, "ip6tables", "nat", "FLANNEL-POSTRTG"), nat);
    assert_eq!(list(host, "ip6tables", "nat", "POSTROUTING"), post);
    assert_eq!(list(host, "ip6tables", "filter", "FLANNEL-FWD"), fwd);
    assert_eq!(list(host, "ip6tables", "filter", "FORWARD"), forward);
    // The jumps are ensured, not added again.
    let jumps = list(host, "ip6tables", "nat", "POSTROUTING")
        .iter()
        .filter(|l| l.ends_with("-j FLANNEL-POSTRTG"))
        .count();
    assert_eq!(jumps, 1);
}

#[test]
fn ipv6_pod_ip_kept_inside_the_ipv6_network_and_masqueraded_outside() {
    require_root();
    // Two dual-stack kernel flannel nodes (flanneld's flannel-v6.1 data path) with a pod
    // each, an outside host; weft's ip6tables rules on both hosts, FORWARD dropping, so
    // IPv6 pod traffic crosses only by FLANNEL-FWD.
    let mut lab = Lab::builder().hosts(2).outside().ipv6().build();
    let mut nodes = Vec::new();
    for i in 0..2 {
        let (s, s6) = (Lab::default_pod_subnet(i), Lab::default_pod_subnet6(i));
        lab.host_mut(i).add_dual_pod(s, s6);
        nodes.push(KernelFlannelNode::builder(s).ipv6(s6).install(lab.host(i)));
    }
    nodes[0].peer_with(&nodes[1]);
    nodes[1].peer_with(&nodes[0]);
    for (i, node) in nodes.iter().enumerate() {
        let host = lab.host(i);
        host.run(|| masq::apply6(network6(), node.subnet6(), BOTH))
            .unwrap_or_else(|e| panic!("apply6 on host {i}: {e}"));
        host.exec(&["ip6tables", "-w", "5", "-P", "FORWARD", "DROP"]);
    }
    let (pa, pb) = (lab.host(0).pod(0), lab.host(1).pod(0));
    assert!(
        pa.wait_for_ping(pb.addr6(), Duration::from_secs(5)),
        "pod a -> pod b over IPv6"
    );

    // Pod to remote pod: B sees A's pod address.
    let t = tcp_transfer(pa, pb, pb.addr6(), 5311, 1 << 20, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(t.intact());
    assert_eq!(t.peer, pa.addr6().to_string(), "pod IPv6 address kept");

    // Pod to a host outside the IPv6Network: it sees node A's underlay address (it has no
    // route back to the pods, so unmasqueraded traffic would not even connect).
    let outside = lab.outside();
    let t = tcp_transfer(
        pa,
        outside,
        outside.addr6(),
        5312,
        1 << 20,
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(t.intact());
    assert_eq!(
        t.peer,
        lab.host(0).addr6().to_string(),
        "masqueraded to the node"
    );
}

/// A directory whose `name`s run the real tool after appending their command line to
/// `<dir>/calls`: which of them a process found first in its PATH ran, and how.
fn tripwires(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tripwire dir");
    let calls = dir.path().join("calls");
    for name in names {
        let real = ["/usr/sbin", "/sbin", "/usr/bin"]
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{name} is not installed (scripts/deps.sh)"));
        let script = format!(
            "#!/bin/sh\necho \"{name} $*\" >> {}\nexec {} \"$@\"\n",
            calls.display(),
            real.display()
        );
        let path = dir.path().join(name);
        std::fs::write(&path, script).expect("tripwire");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    dir
}

#[test]
fn an_ipv4_only_node_never_runs_ip6tables() {
    require_root();
    let lab = Lab::builder().hosts(1).build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(VXLAN_CONFIG);
    let wires = tripwires(&[
        "iptables",
        "iptables-restore",
        "ip6tables",
        "ip6tables-restore",
        "ip6tables-save",
    ]);
    let path = format!(
        "PATH={}:/usr/sbin:/usr/bin:/sbin:/bin",
        wires.path().display()
    );
    let node = WeftNode::start_with_env(
        lab.host(0),
        &etcd,
        &[&path],
        &["--ip-masq", "-iptables-resync=1"],
    );
    // A few resyncs, and doctor (IPv4-only network) with the same PATH.
    std::thread::sleep(Duration::from_secs(3));
    let sf = format!("--subnet-file={}", node.subnet_file().display());
    let ep = format!("--etcd-endpoints={}", etcd.endpoint());
    let out =
        lab.host(0)
            .exec_unchecked(&["env", &path, weft_bin(), "doctor", &sf, "--iface=eth0", &ep]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("forward_policy"), "{report}");
    assert!(!report.contains("ipv6_"), "{report}");
    let calls = std::fs::read_to_string(wires.path().join("calls")).unwrap_or_default();
    // The tripwires were in the way: iptables ran through them, for the rules and resyncs.
    let restores = calls
        .lines()
        .filter(|l| l.starts_with("iptables-restore "))
        .count();
    assert!(
        restores >= 2,
        "rules and resyncs went through PATH:\n{calls}"
    );
    assert!(
        calls.lines().all(|l| !l.starts_with("ip6tables")),
        "an IPv4-only node ran ip6tables:\n{calls}"
    );
    for table in ["nat", "filter"] {
        let v6 = list(lab.host(0), "ip6tables", table, "");
        assert!(
            v6.iter().all(|l| !l.contains("FLANNEL")),
            "{table}: {v6:#?}"
        );
    }
    assert!(node.http("/readyz").is_some());
}
