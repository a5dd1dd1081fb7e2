//! End-to-end: direct routes. A host-gw cluster of three weft nodes (kernel forwarding along
//! `<subnet> via <PublicIP> proto 87`, pod source addresses kept, routes following the leases
//! and repaired after a hand edit), and a vxlan `DirectRouting` cluster where two nodes share a
//! segment (direct route) and a third sits one router hop away (encapsulated). The same on a
//! dual-stack lab, where IPv6 pods get `<IPv6 subnet> via <PublicIPv6> proto 87` too. Needs
//! root.

mod harness;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use harness::{
    ping_all_pairs, ping_all_pairs6, require_root, segment_a, segment_b, transfer, transfer6,
    wait_until, Etcd, Host, Lab, WeftNode, PREFIX,
};
use weft::wire::{Subnet, Subnet6};

const HOST_GW: &str = r#"{"Network":"10.1.0.0/16","Backend":{"Type":"host-gw"}}"#;
const VXLAN_DIRECT: &str =
    r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#;
const HOST_GW_DUAL: &str = r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/48","Backend":{"Type":"host-gw"}}"#;
const VXLAN_DIRECT_DUAL: &str = r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/48","Backend":{"Type":"vxlan","DirectRouting":true}}"#;
const MB: u64 = 1 << 20;
/// weft's route protocol number (`weft::host::routes::RTPROT_WEFT`).
const PROTO: &str = "87";

/// weft's routes of one family (`-4`, `-6`) in `host`: (destination, gateway), from
/// `ip <family> route show proto 87`.
fn proto_routes(host: &Host, family: &str) -> Vec<(String, String)> {
    host.ip(&[family, "route", "show", "proto", PROTO])
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let via = f.iter().position(|w| *w == "via")?;
            Some((f.first()?.to_string(), f.get(via + 1)?.to_string()))
        })
        .collect()
}

/// weft's IPv4 routes in `host`.
fn weft_routes(host: &Host) -> Vec<(String, String)> {
    proto_routes(host, "-4")
}

fn has_route(host: &Host, subnet: Subnet) -> bool {
    let s = subnet.to_string();
    weft_routes(host).iter().any(|(d, _)| *d == s)
}

/// weft's IPv6 routes in `host`, parsed and sorted (a line that does not parse fails the
/// comparison it is in).
fn weft_routes6(host: &Host) -> Vec<(Option<Subnet6>, Option<Ipv6Addr>)> {
    let mut r: Vec<_> = proto_routes(host, "-6")
        .into_iter()
        .map(|(d, gw)| (d.parse().ok(), gw.parse().ok()))
        .collect();
    r.sort();
    r
}

fn has_route6(host: &Host, subnet: Subnet6) -> bool {
    weft_routes6(host).iter().any(|(d, _)| *d == Some(subnet))
}

/// The etcd key of a dual-stack lease.
fn dual_key(subnet: Subnet, subnet6: Subnet6) -> String {
    format!(
        "{PREFIX}/subnets/{}&{}",
        subnet.key_string(),
        subnet6.key_string()
    )
}

#[test]
fn host_gw_three_nodes() {
    require_root();
    let mut lab = Lab::builder().hosts(3).build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(HOST_GW);
    let mut nodes = Vec::new();
    for i in 0..3 {
        // Node 0 resyncs every second (the hand-deleted route below comes back quickly).
        let flags: &[&str] = if i == 0 {
            &["--route-resync-secs=1"]
        } else {
            &[]
        };
        let n = WeftNode::start_with_pod(&mut lab, i, &etcd, flags);
        nodes.push(n);
    }
    let subnets: Vec<Subnet> = nodes.iter().map(|n| n.subnet).collect();
    // host-gw: no tunnel, so pods get the underlay MTU, and no TUN device exists.
    assert_eq!(nodes[0].mtu, 1500);
    assert!(!lab.host(0).ip_ok(&["link", "show", "weft0"]));

    // Every host routes every other node's subnet via that node's address, with proto 87.
    for i in 0..3 {
        let mut want: Vec<(String, String)> = (0..3)
            .filter(|&j| j != i)
            .map(|j| (subnets[j].to_string(), lab.host(j).addr().to_string()))
            .collect();
        want.sort();
        let host = lab.host(i);
        let ok = wait_until(Duration::from_secs(5), || {
            let mut have = weft_routes(host);
            have.sort();
            have == want
        });
        assert!(
            ok.is_some(),
            "host {i}: weft routes {:?}, want {want:?}",
            weft_routes(host)
        );
    }
    ping_all_pairs(&lab);
    transfer(&lab, 0, 2, 50 * MB);
    transfer(&lab, 1, 0, 50 * MB);

    // A route of another protocol is never touched, even across resyncs.
    let h0 = lab.host(0);
    h0.ip(&[
        "route",
        "add",
        "10.99.0.0/24",
        "via",
        &lab.host(1).addr().to_string(),
        "proto",
        "static",
    ]);

    // A route deleted by hand comes back at the next resync (1 s on node 0).
    h0.ip(&["route", "del", &subnets[1].to_string()]);
    assert!(!has_route(h0, subnets[1]));
    let back = wait_until(Duration::from_secs(4), || has_route(h0, subnets[1]));
    assert!(back.is_some(), "hand-deleted route did not come back");
    eprintln!("hand-deleted route back after {back:?}");

    // A lease that expires takes its route with it.
    let fake = Subnet::new(Ipv4Addr::new(10, 1, 250, 0), 24).expect("a /24");
    etcd.put_lease(
        fake,
        r#"{"PublicIP":"192.168.64.99","PublicIPv6":null,"BackendType":"host-gw"}"#,
        3,
    );
    assert!(
        wait_until(Duration::from_secs(2), || has_route(h0, fake)).is_some(),
        "no route for a new lease"
    );
    assert!(
        wait_until(Duration::from_secs(8), || !has_route(h0, fake)).is_some(),
        "route of an expired lease lingers"
    );

    // A stopped node leaves its routes in place (like flanneld) ...
    let host2 = lab.host(2);
    let node2 = nodes.pop().expect("three nodes");
    let (status, log) = node2.stop();
    assert!(status.success(), "weft exited with {status}:\n{log}");
    for s in &subnets[..2] {
        assert!(
            has_route(host2, *s),
            "route to {s} removed on SIGTERM:\n{log}"
        );
    }
    // ... and once its lease is deleted, the others drop its route within 1 s.
    etcd.delete_lease(subnets[2]);
    for i in 0..2 {
        let gone = wait_until(Duration::from_secs(3), || {
            !has_route(lab.host(i), subnets[2])
        });
        let gone = gone.unwrap_or_else(|| panic!("host {i} keeps the deleted node's route"));
        assert!(
            gone < Duration::from_secs(1),
            "host {i} dropped the route after {gone:?}"
        );
        eprintln!("host {i}: route of the deleted lease gone after {gone:?}");
    }
    // Two resyncs later, the foreign route is still there and ours are as they should be.
    std::thread::sleep(Duration::from_millis(2200));
    let static_routes = h0.ip(&["-4", "route", "show", "10.99.0.0/24"]);
    assert!(
        static_routes.contains("via 192.168.64.11") && static_routes.contains("proto static"),
        "foreign route changed: {static_routes:?}"
    );
    assert_eq!(
        weft_routes(h0),
        vec![(subnets[1].to_string(), lab.host(1).addr().to_string())]
    );
    assert!(nodes.iter_mut().all(|n| n.is_running()));
}

#[test]
fn direct_routing_two_segments() {
    require_root();
    // Hosts 0 and 1 on segment A; host 2 on segment B, one router hop away.
    let mut lab = Lab::builder().hosts(2).segment_b(1).build();
    let etcd = Etcd::start_in(lab.segment(0));
    // etcd sits on segment A's bridge; route segment B's replies through the router.
    lab.segment(0).ip(&[
        "route",
        "add",
        &segment_b().to_string(),
        "via",
        &segment_a().first_host().to_string(),
    ]);
    etcd.put_config(VXLAN_DIRECT);
    let mut nodes = Vec::new();
    for i in 0..3 {
        let n = WeftNode::start_with_pod(&mut lab, i, &etcd, &[]);
        nodes.push(n);
    }
    let subnets: Vec<Subnet> = nodes.iter().map(|n| n.subnet).collect();
    assert_eq!(lab.host(2).addr(), Ipv4Addr::new(192, 168, 65, 10));

    // Same segment: a direct route each way; across the router: none (the tunnel).
    for (i, j) in [(0, 1), (1, 0)] {
        let want = vec![(subnets[j].to_string(), lab.host(j).addr().to_string())];
        let host = lab.host(i);
        assert!(
            wait_until(Duration::from_secs(5), || weft_routes(host) == want).is_some(),
            "host {i}: weft routes {:?}, want {want:?}",
            weft_routes(host)
        );
    }
    assert!(weft_routes(lab.host(2)).is_empty());
    ping_all_pairs(&lab);

    // 0 -> 1 goes around weft (plain kernel forwarding), 0 -> 2 through the tunnel.
    let rx = |n: &WeftNode| n.metric("weft_packets_total{direction=\"rx\"}");
    let before = (rx(&nodes[1]), rx(&nodes[2]));
    transfer(&lab, 0, 1, 50 * MB);
    let direct = rx(&nodes[1]) - before.0;
    assert!(
        direct < 100,
        "{direct} packets reached node 1 through the tunnel"
    );
    transfer(&lab, 0, 2, 50 * MB);
    let tunneled = rx(&nodes[2]) - before.1;
    assert!(
        tunneled > 1000,
        "only {tunneled} packets reached node 2 through the tunnel"
    );
    // The router carried the tunnel, and host 0 routes nothing else directly.
    let r = lab.router().link_stats("eth1");
    assert!(r.tx_packets > 1000, "router eth1: {r:?}");
    assert_eq!(weft_routes(lab.host(0)).len(), 1);
}

/// Three dual-stack host-gw nodes: IPv6 routes via each peer's PublicIPv6 with proto 87 on
/// every host beside the IPv4 ones, pods reaching each other over IPv6 both ways (ping6 and
/// checksummed transfers from the client pod's own address) and over IPv4 still; a new
/// lease's IPv6 route added and an expired one's removed, a foreign IPv6 route never
/// replaced, a hand-deleted one back after a resync, the routes left on SIGTERM, and a
/// deleted node's IPv6 route gone from the others.
#[test]
fn host_gw_dual_stack_three_nodes() {
    require_root();
    let mut lab = Lab::builder().hosts(3).ipv6().build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(HOST_GW_DUAL);
    let mut nodes = Vec::new();
    for i in 0..3 {
        let flags: &[&str] = if i == 0 {
            &["--route-resync-secs=1"]
        } else {
            &[]
        };
        nodes.push(WeftNode::start_dual_with_pod(&mut lab, i, &etcd, flags));
    }
    let subnets: Vec<Subnet> = nodes.iter().map(|n| n.subnet).collect();
    let subnets6: Vec<Subnet6> = nodes
        .iter()
        .map(|n| n.subnet6.expect("a dual-stack lease"))
        .collect();
    assert_eq!(nodes[0].mtu, 1500);

    for i in 0..3 {
        let host = lab.host(i);
        let mut want6: Vec<_> = (0..3)
            .filter(|&j| j != i)
            .map(|j| (Some(subnets6[j]), Some(lab.host(j).addr6())))
            .collect();
        want6.sort();
        let ok = wait_until(Duration::from_secs(5), || weft_routes6(host) == want6);
        assert!(
            ok.is_some(),
            "host {i}: weft IPv6 routes {:?}, want {want6:?}",
            weft_routes6(host)
        );
        let mut want: Vec<(String, String)> = (0..3)
            .filter(|&j| j != i)
            .map(|j| (subnets[j].to_string(), lab.host(j).addr().to_string()))
            .collect();
        want.sort();
        let mut have = weft_routes(host);
        have.sort();
        assert_eq!(have, want, "host {i}: IPv4 routes");
    }
    ping_all_pairs6(&lab);
    ping_all_pairs(&lab);
    transfer6(&lab, 0, 2, 50 * MB);
    transfer6(&lab, 2, 0, 50 * MB);
    transfer(&lab, 1, 0, 20 * MB);

    // A foreign IPv6 route, and a lease that asks for exactly its destination: the lease's
    // IPv4 route comes, its IPv6 one does not replace the foreign route.
    let h0 = lab.host(0);
    let blocked: Subnet6 = "fd10:0:0:fa::/64".parse().expect("a /64");
    let foreign_via = lab.host(1).addr6().to_string();
    h0.ip(&[
        "-6",
        "route",
        "add",
        &blocked.to_string(),
        "via",
        &foreign_via,
        "proto",
        "static",
    ]);
    let fake_blocked = Subnet::new(Ipv4Addr::new(10, 1, 250, 0), 24).expect("a /24");
    etcd.put_with_ttl(
        &dual_key(fake_blocked, blocked),
        r#"{"PublicIP":"192.168.64.99","PublicIPv6":"fd77::63","BackendType":"host-gw"}"#,
        3600,
    );
    // A lease that comes and expires takes its IPv6 route with it.
    let fake = Subnet::new(Ipv4Addr::new(10, 1, 251, 0), 24).expect("a /24");
    let fake6: Subnet6 = "fd10:0:0:fb::/64".parse().expect("a /64");
    etcd.put_with_ttl(
        &dual_key(fake, fake6),
        r#"{"PublicIP":"192.168.64.98","PublicIPv6":"fd77::62","BackendType":"host-gw"}"#,
        3,
    );
    assert!(
        wait_until(Duration::from_secs(2), || has_route6(h0, fake6)).is_some(),
        "no IPv6 route for a new lease: {:?}",
        weft_routes6(h0)
    );
    assert!(has_route(h0, fake_blocked), "no IPv4 route for the lease");
    assert!(
        !has_route6(h0, blocked),
        "a foreign IPv6 route was replaced"
    );
    assert!(
        wait_until(Duration::from_secs(8), || !has_route6(h0, fake6)).is_some(),
        "IPv6 route of an expired lease lingers"
    );

    // A route deleted by hand comes back at the next resync (1 s on node 0).
    h0.ip(&["-6", "route", "del", &subnets6[1].to_string()]);
    assert!(!has_route6(h0, subnets6[1]));
    let back = wait_until(Duration::from_secs(4), || has_route6(h0, subnets6[1]));
    assert!(back.is_some(), "hand-deleted IPv6 route did not come back");

    // A stopped node leaves its IPv6 routes in place ...
    let host2 = lab.host(2);
    let node2 = nodes.pop().expect("three nodes");
    let (status, log) = node2.stop();
    assert!(status.success(), "weft exited with {status}:\n{log}");
    for s in &subnets6[..2] {
        assert!(
            has_route6(host2, *s),
            "IPv6 route to {s} removed on SIGTERM:\n{log}"
        );
    }
    // ... and once its lease is deleted, the others drop its IPv6 route and its IPv4 one.
    etcd.ctl(&["del", &dual_key(subnets[2], subnets6[2])]);
    for i in 0..2 {
        let host = lab.host(i);
        let gone = wait_until(Duration::from_secs(3), || {
            !has_route6(host, subnets6[2]) && !has_route(host, subnets[2])
        });
        assert!(
            gone.is_some(),
            "host {i} keeps the deleted node's routes: {:?}",
            weft_routes6(host)
        );
    }
    // The foreign route is still as it was, two resyncs later; ours are as they should be.
    std::thread::sleep(Duration::from_millis(2200));
    let foreign = h0.ip(&["-6", "route", "show", &blocked.to_string()]);
    assert!(
        foreign.contains(&format!("via {foreign_via}")) && foreign.contains("proto static"),
        "foreign IPv6 route changed: {foreign:?}"
    );
    assert_eq!(
        weft_routes6(h0),
        vec![(Some(subnets6[1]), Some(lab.host(1).addr6()))]
    );
    // The two nodes left still reach each other over IPv6.
    let p = lab.host(0).pod(0).ping(lab.host(1).pod(0).addr6(), 3);
    assert!(p.all_replied(), "pod 0 -> pod 1 (IPv6):\n{}", p.output);
    assert!(nodes.iter_mut().all(|n| n.is_running()));
}

/// vxlan DirectRouting on a dual-stack lab: the two nodes on segment A route each other's
/// IPv6 subnet directly (and IPv4), the node one router hop away gets no direct route and is
/// reached through the tunnel in both families; IPv6 traffic between the same-segment pods
/// bypasses weft.
#[test]
fn direct_routing_dual_stack_two_segments() {
    require_root();
    let mut lab = Lab::builder().hosts(2).segment_b(1).ipv6().build();
    let etcd = Etcd::start_in(lab.segment(0));
    lab.segment(0).ip(&[
        "route",
        "add",
        &segment_b().to_string(),
        "via",
        &segment_a().first_host().to_string(),
    ]);
    etcd.put_config(VXLAN_DIRECT_DUAL);
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(WeftNode::start_dual_with_pod(&mut lab, i, &etcd, &[]));
    }
    let subnets: Vec<Subnet> = nodes.iter().map(|n| n.subnet).collect();
    let subnets6: Vec<Subnet6> = nodes
        .iter()
        .map(|n| n.subnet6.expect("a dual-stack lease"))
        .collect();

    for (i, j) in [(0, 1), (1, 0)] {
        let host = lab.host(i);
        let want6 = vec![(Some(subnets6[j]), Some(lab.host(j).addr6()))];
        assert!(
            wait_until(Duration::from_secs(5), || weft_routes6(host) == want6).is_some(),
            "host {i}: weft IPv6 routes {:?}, want {want6:?}",
            weft_routes6(host)
        );
        let want = vec![(subnets[j].to_string(), lab.host(j).addr().to_string())];
        assert_eq!(weft_routes(host), want, "host {i}: IPv4 routes");
    }
    assert!(weft_routes6(lab.host(2)).is_empty());
    assert!(weft_routes(lab.host(2)).is_empty());
    ping_all_pairs6(&lab);
    ping_all_pairs(&lab);

    let rx = |n: &WeftNode| n.metric("weft_packets_total{direction=\"rx\"}");
    let before = (rx(&nodes[1]), rx(&nodes[2]));
    transfer6(&lab, 0, 1, 20 * MB);
    let direct = rx(&nodes[1]) - before.0;
    assert!(
        direct < 100,
        "{direct} packets reached node 1 through the tunnel"
    );
    transfer6(&lab, 0, 2, 20 * MB);
    let tunneled = rx(&nodes[2]) - before.1;
    assert!(
        tunneled > 500,
        "only {tunneled} packets reached node 2 through the tunnel"
    );
    assert_eq!(weft_routes6(lab.host(0)).len(), 1);
}
