//! End-to-end: direct routes. A host-gw cluster of three weft nodes (kernel forwarding along
//! `<subnet> via <PublicIP> proto 87`, pod source addresses kept, routes following the leases
//! and repaired after a hand edit), and a vxlan `DirectRouting` cluster where two nodes share a
//! segment (direct route) and a third sits one router hop away (encapsulated). Needs root.

mod harness;

use std::net::Ipv4Addr;
use std::time::Duration;

use harness::{
    ping_all_pairs, require_root, segment_a, segment_b, transfer, wait_until, Etcd, Host, Lab,
    WeftNode,
};
use weft::wire::Subnet;

const HOST_GW: &str = r#"{"Network":"10.1.0.0/16","Backend":{"Type":"host-gw"}}"#;
const VXLAN_DIRECT: &str =
    r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#;
const MB: u64 = 1 << 20;
/// weft's route protocol number (`weft::host::routes::RTPROT_WEFT`).
const PROTO: &str = "87";

/// weft's routes in `host`: (destination, gateway), from `ip route show proto 87`.
fn weft_routes(host: &Host) -> Vec<(String, String)> {
    host.ip(&["-4", "route", "show", "proto", PROTO])
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let via = f.iter().position(|w| *w == "via")?;
            Some((f.first()?.to_string(), f.get(via + 1)?.to_string()))
        })
        .collect()
}

fn has_route(host: &Host, subnet: Subnet) -> bool {
    let s = subnet.to_string();
    weft_routes(host).iter().any(|(d, _)| *d == s)
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
