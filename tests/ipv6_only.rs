//! IPv6-only networks (`EnableIPv4: false`) end to end, vxlan and host-gw: real weft nodes,
//! real etcd, namespaces.
//! Each node leases only an IPv6 subnet, under flannel's key for one
//! (`0.0.0.0-0&fd10:0:0:2::-64`, `"PublicIP":"0.0.0.0"`, no `BackendData`), writes
//! subnet.env without the IPv4 lines, and carries IPv6 pods only: no IPv4 address or route on
//! its TUN, no iptables rules (ip6tables only), no IPv4 tunnel socket. A restarted node finds
//! its lease again by its PublicIPv6 (flanneld's etcd mode looks by PublicIP, which every
//! IPv6-only node writes as 0.0.0.0). Needs root.

mod harness;

use std::time::Duration;

use harness::{require_root, Etcd, Lab, WeftNode, PREFIX};

/// An IPv6-only vxlan network (IPv6SubnetLen defaults to 64 for a /48).
const V6_ONLY: &str = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd10::/48","Backend":{"Type":"vxlan"}}"#;

const MB: u64 = 1 << 20;

/// `iptables`-family command `cmd` in `host`: whether the chain `-S` lists exists.
fn chain_exists(host: &harness::Host, cmd: &str, table: &str, chain: &str) -> bool {
    let out = host
        .ns()
        .exec_unchecked(&[cmd, "-w", "5", "-t", table, "-S", chain]);
    eprintln!(
        "{cmd} -t {table} -S {chain}: {} {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.status.success()
}

#[test]
fn three_weft_nodes_ipv6_only() {
    require_root();
    let mut lab = Lab::builder().hosts(3).ipv6().build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(V6_ONLY);
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(WeftNode::start_v6only_with_pod(
            &mut lab,
            i,
            &etcd,
            &["-ip-masq"],
        ));
    }

    let leases = etcd.list(&format!("{PREFIX}/subnets/"));
    assert_eq!(leases.len(), 3, "{leases:?}");
    for (i, n) in nodes.iter().enumerate() {
        let s6 = n.subnet6.expect("an IPv6 subnet");
        // The lease: flannel's key for an IPv6-only lease, and its record.
        let key = format!("{PREFIX}/subnets/0.0.0.0-0&{}", s6.key_string());
        let rec = etcd
            .get(&key)
            .unwrap_or_else(|| panic!("no lease {key} in {leases:?}"));
        let rec: serde_json::Value = serde_json::from_str(&rec).expect("lease JSON");
        assert_eq!(rec["PublicIP"], "0.0.0.0", "{rec}");
        assert_eq!(rec["PublicIPv6"], lab.host(i).addr6().to_string(), "{rec}");
        assert_eq!(rec["BackendType"], "vxlan", "{rec}");
        assert!(rec.get("BackendData").is_none(), "{rec}");
        assert_eq!(rec["BackendV6Data"]["VNI"], 1, "{rec}");

        // subnet.env: flanneld's IPv6-only form.
        let env = std::fs::read_to_string(n.subnet_file()).expect("subnet.env");
        assert_eq!(
            env,
            format!(
                "FLANNEL_IPV6_NETWORK=fd10::/48\nFLANNEL_IPV6_SUBNET={}/64\nFLANNEL_MTU={}\nFLANNEL_IPMASQ=true\n",
                s6.first_host(),
                n.mtu
            )
        );

        // The TUN carries IPv6 only: the IPv6Network routed to it, no IPv4 address.
        let host = lab.host(i);
        let a4 = host.ip(&["-4", "addr", "show", "dev", "weft0"]);
        assert!(a4.trim().is_empty(), "IPv4 on the TUN:\n{a4}");
        let r6 = host.ip(&["-6", "route", "show", "fd10::/48"]);
        assert!(r6.contains("dev weft0"), "no IPv6Network route: {r6}");
        let r4 = host.ip(&["-4", "route", "show", "dev", "weft0"]);
        assert!(r4.trim().is_empty(), "IPv4 routes to the TUN:\n{r4}");
        // No IPv4 tunnel socket: only [::]-family sockets on 8472.
        let ss = host.exec(&["ss", "-Hnlu", "sport", "= :8472"]);
        let ss = String::from_utf8_lossy(&ss.stdout).into_owned();
        assert!(
            ss.contains(&format!("[{}]:8472", host.addr6())) && !ss.contains("."),
            "tunnel sockets: {ss}"
        );

        // -ip-masq writes the ip6tables chains only, as flanneld skips IPv4 there.
        assert!(chain_exists(host, "ip6tables", "nat", "FLANNEL-POSTRTG"));
        assert!(!chain_exists(host, "iptables", "nat", "FLANNEL-POSTRTG"));
        assert!(!chain_exists(host, "iptables", "filter", "FLANNEL-FWD"));

        // /status: no IPv4 half, the IPv6 half, both peers' IPv6 halves.
        let status: serde_json::Value =
            serde_json::from_str(&n.http("/status").expect("/status")).expect("JSON");
        assert_eq!(status["node"]["subnet"], "-", "{status}");
        assert_eq!(status["node"]["ipv6"]["subnet"], s6.to_string(), "{status}");
        assert_eq!(status["node"]["subnet_env_written"], true, "{status}");
        assert_eq!(
            status["peers6"].as_array().map(Vec::len),
            Some(2),
            "{status}"
        );
        assert_eq!(
            status["peers"].as_array().map(Vec::len),
            Some(0),
            "{status}"
        );
    }

    harness::ping_all_pairs6(&lab);
    harness::transfer6(&lab, 0, 2, 100 * MB);
    harness::transfer6(&lab, 2, 0, 100 * MB);
    for n in &nodes {
        for reason in ["spoofed_source", "unknown_sender", "outbound_ipv6"] {
            assert_eq!(n.drops(reason), 0, "{reason}");
        }
        assert_eq!(
            n.metric("weft_lease_conflicts"),
            0,
            "every PublicIP is 0.0.0.0"
        );
    }

    // IPv4 routed to the TUN by hand (the node routes none) is dropped and counted, never
    // sent: the network carries no IPv4 between nodes.
    let (h0, p0, p2) = (lab.host(0), lab.host(0).pod(0), lab.host(2).pod(0));
    h0.ip(&["route", "add", "10.200.3.0/24", "dev", "weft0"]);
    let ping = p0.ping(p2.addr(), 2);
    assert!(ping.none_replied(), "IPv4 crossed:\n{}", ping.output);
    assert!(
        nodes[0].drops("outbound_ipv4") >= 2,
        "not counted as outbound_ipv4"
    );
    h0.ip(&["route", "del", "10.200.3.0/24", "dev", "weft0"]);

    // A restart without subnet.env finds the same lease by PublicIPv6 (not by the PublicIP
    // every IPv6-only node shares), and the pods talk again.
    let old = nodes.remove(1);
    let s6 = old.subnet6;
    let env_path = old.subnet_file().clone();
    let (status, stderr) = old.stop();
    assert!(status.success(), "{stderr}");
    let _ = std::fs::remove_file(&env_path);
    let again = WeftNode::builder(lab.host(1), &etcd)
        .public_ipv6(lab.host(1).addr6())
        .flags(&["-ip-masq"])
        .start();
    assert_eq!(again.subnet6, s6, "a restarted node took another lease");
    assert_eq!(etcd.list(&format!("{PREFIX}/subnets/")).len(), 3);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (a, b) = (lab.host(0).pod(0), lab.host(1).pod(0));
        if a.ping(b.addr6(), 1).all_replied() || std::time::Instant::now() > deadline {
            break;
        }
    }
    harness::ping_all_pairs6(&lab);
}

/// A udp-backend IPv6-only network is refused, naming the fix, like a dual-stack one (the
/// udp backend carries IPv4 only, as flanneld's).
#[test]
fn ipv6_only_with_the_udp_backend_is_refused() {
    require_root();
    let lab = Lab::builder().hosts(1).ipv6().build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd10::/48","Backend":{"Type":"udp"}}"#,
    );
    let host = lab.host(0);
    let addr6 = host.addr6().to_string();
    let mut run = harness::StartingWeft::spawn(host, etcd.endpoint(), &["-public-ipv6", &addr6]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(run.is_running(), "the node waits for a config it can run");
    assert!(!run.subnet_file().exists(), "a lease was taken");
    let (_, stderr) = run.stop();
    assert!(stderr.contains("udp backend carries IPv4 only"), "{stderr}");
    assert!(etcd.list(&format!("{PREFIX}/subnets/")).is_empty());
}

/// `-iface` given as the underlay's IPv6 address picks the interface by IPv6 (no interface
/// has that IPv4 address); its IPv4 address still serves the IPv4 half, so a dual-stack
/// node runs as with `-iface=eth0`, advertising both addresses.
#[test]
fn iface_given_as_an_ipv6_address() {
    require_root();
    let mut lab = Lab::builder().hosts(2).ipv6().build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(
        r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/48","Backend":{"Type":"vxlan"}}"#,
    );
    let host = lab.host(0);
    let endpoints = format!("-etcd-endpoints={}", etcd.endpoint());
    let iface = format!("-iface={}", host.addr6());
    let ops = format!("--healthz-port={}", harness::OPS_PORT);
    let n0 = WeftNode::start_raw(
        host,
        &[],
        &[&endpoints, &iface, "--healthz-ip=127.0.0.1", &ops],
    );
    let status: serde_json::Value =
        serde_json::from_str(&n0.http("/status").expect("/status")).expect("JSON");
    let node = &status["node"];
    assert_eq!(node["iface"], "eth0", "{status}");
    assert_eq!(node["public_ip"], host.addr().to_string(), "{status}");
    assert_eq!(
        node["ipv6"]["public_ip"],
        host.addr6().to_string(),
        "{status}"
    );
    let s6 = n0.subnet6.expect("a dual-stack lease");
    let key = format!(
        "{PREFIX}/subnets/{}&{}",
        n0.subnet.key_string(),
        s6.key_string()
    );
    let rec: serde_json::Value =
        serde_json::from_str(&etcd.get(&key).expect("the lease")).expect("JSON");
    assert_eq!(rec["PublicIP"], host.addr().to_string(), "{rec}");
    assert_eq!(rec["PublicIPv6"], host.addr6().to_string(), "{rec}");
    // And it forwards: a dual-stack peer's pod answers in both families.
    lab.host_mut(0).add_dual_pod_with_mtu(n0.subnet, s6, n0.mtu);
    let _n1 = WeftNode::start_dual_with_pod(&mut lab, 1, &etcd, &[]);
    harness::ping_all_pairs(&lab);
    harness::ping_all_pairs6(&lab);
}

/// An IPv6-only host-gw network: each node routes the other's IPv6 subnet via its
/// PublicIPv6 (protocol 87) and adds no IPv4 route; pods ping over IPv6.
#[test]
fn ipv6_only_host_gw() {
    require_root();
    let mut lab = Lab::builder().hosts(2).ipv6().build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd10::/48","Backend":{"Type":"host-gw"}}"#,
    );
    let nodes: Vec<WeftNode> = (0..2)
        .map(|i| WeftNode::start_v6only_with_pod(&mut lab, i, &etcd, &[]))
        .collect();
    for (i, j) in [(0, 1), (1, 0)] {
        let host = lab.host(i);
        let peer6 = nodes[j].subnet6.expect("an IPv6 subnet");
        let want = format!("{peer6} via {} dev eth0 ", lab.host(j).addr6());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let routes = loop {
            let r = host.ip(&["-6", "route", "show", "proto", "87"]);
            if r.contains(&want) || std::time::Instant::now() > deadline {
                break r;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            routes.contains(&want),
            "host {i}: want {want:?} in\n{routes}"
        );
        let v4 = host.ip(&["-4", "route", "show", "proto", "87"]);
        assert!(
            v4.trim().is_empty(),
            "IPv4 routes on an IPv6-only network:\n{v4}"
        );
    }
    harness::ping_all_pairs6(&lab);
}
