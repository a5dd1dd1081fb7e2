//! End-to-end: a running node keeps its own plumbing. The Network route through the TUN
//! deleted by hand, the TUN set down, its MTU changed, its address or (dual stack) the
//! IPv6Network route removed: each comes back within a second or two and pods reach each
//! other again; the repair is logged. With the underlay address gone from its interface the
//! node says so on `/readyz` (503 with the reason) and is ready again once the address is
//! back. Needs root.

mod harness;

use std::time::Duration;

use harness::{
    ping_all_pairs, ping_all_pairs6, require_root, two_node_cluster, wait_until, Etcd, Host, Lab,
    WeftNode, VXLAN_CONFIG,
};

const DUAL: &str = r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/48","Backend":{"Type":"vxlan"}}"#;

/// Waits up to 3 s for `cond` on `host`; how long it took.
fn back_within(what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    wait_until(Duration::from_secs(3), &mut cond)
        .unwrap_or_else(|| panic!("{what} did not come back"))
}

fn has_route(host: &Host, family: &str, prefix: &str) -> bool {
    host.ip(&[family, "route", "show", prefix, "dev", "weft0"])
        .contains(prefix.split('/').next().unwrap_or(prefix))
}

#[test]
fn a_node_puts_its_tun_plumbing_back() {
    require_root();
    let (lab, _etcd, a, _b) = two_node_cluster(VXLAN_CONFIG, &[]);
    let h0 = lab.host(0);

    // (Put back within milliseconds of the netlink event: too fast to see it gone here; the
    // log below says it was.)
    h0.ip(&["route", "del", "10.1.0.0/16", "dev", "weft0"]);
    let took = back_within("the Network route", || has_route(h0, "-4", "10.1.0.0/16"));
    eprintln!("Network route back after {took:?}");
    ping_all_pairs(&lab);

    h0.ip(&["link", "set", "weft0", "down"]);
    let took = back_within("the TUN's link", || {
        h0.ip(&["link", "show", "weft0"]).contains(",UP")
    });
    eprintln!("TUN up again after {took:?}");
    // Setting a link down drops its routes: they come back too.
    back_within("the Network route after link down", || {
        has_route(h0, "-4", "10.1.0.0/16")
    });
    ping_all_pairs(&lab);

    h0.ip(&["link", "set", "weft0", "mtu", "1300"]);
    back_within("the TUN's MTU", || {
        h0.ip(&["link", "show", "weft0"]).contains("mtu 1450")
    });

    let addr = format!("{}/16", a.subnet.addr());
    h0.ip(&["addr", "del", &addr, "dev", "weft0"]);
    back_within("the TUN's address", || {
        h0.ip(&["-4", "addr", "show", "dev", "weft0"])
            .contains(&addr)
    });
    back_within("the Network route after the address", || {
        has_route(h0, "-4", "10.1.0.0/16")
    });
    ping_all_pairs(&lab);
    assert!(a.http("/readyz").is_some(), "ready after the repairs");

    let (_, log) = a.stop();
    for what in [
        "the Network route 10.1.0.0/16 dev weft0 was missing: put back",
        "TUN weft0 was down: put back",
        "TUN weft0 MTU was 1300, not 1450: put back",
        "had lost its address",
    ] {
        assert!(log.contains(what), "no log of {what:?}:\n{log}");
    }
}

#[test]
fn a_dual_stack_node_puts_its_ipv6_route_back() {
    require_root();
    let mut lab = Lab::builder().hosts(2).ipv6().build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(DUAL);
    let a = WeftNode::start_dual_with_pod(&mut lab, 0, &etcd, &[]);
    let _b = WeftNode::start_dual_with_pod(&mut lab, 1, &etcd, &[]);
    ping_all_pairs6(&lab);
    let h0 = lab.host(0);
    h0.ip(&["-6", "route", "del", "fd10::/48", "dev", "weft0"]);
    back_within("the IPv6Network route", || has_route(h0, "-6", "fd10::/48"));
    ping_all_pairs6(&lab);
    let (_, log) = a.stop();
    assert!(
        log.contains("the IPv6Network route fd10::/48 dev weft0 was missing: put back"),
        "{log}"
    );
}

#[test]
fn readyz_tells_while_the_underlay_address_is_gone() {
    require_root();
    let (lab, _etcd, a, _b) = two_node_cluster(VXLAN_CONFIG, &[]);
    let h0 = lab.host(0);
    let routes_before = h0.ip(&["-4", "route", "show"]);
    assert_eq!(a.http("/readyz").map(|_| 200), Some(200));
    let addr = format!("{}/24", h0.addr());
    h0.ip(&["addr", "del", &addr, "dev", "eth0"]);
    let not_ready = wait_until(Duration::from_secs(3), || {
        a.get("/readyz")
            .is_some_and(|(code, body)| code == 503 && body.contains("underlay address"))
    });
    let said = a.get("/readyz");
    assert!(not_ready.is_some(), "/readyz did not say why: {said:?}");
    // Back: the address, and the routes that went with it.
    h0.ip(&["addr", "add", &addr, "dev", "eth0"]);
    for line in routes_before.lines().filter(|l| l.contains(" via ")) {
        let args: Vec<&str> = line.split_whitespace().collect();
        let mut cmd = vec!["-4", "route", "replace"];
        cmd.extend(args);
        let _ = h0.ip_ok(&cmd);
    }
    let ready = wait_until(Duration::from_secs(3), || {
        a.get("/readyz").is_some_and(|(code, _)| code == 200)
    });
    assert!(
        ready.is_some(),
        "/readyz stayed 503: {:?}",
        a.get("/readyz")
    );
    ping_all_pairs(&lab);
    let (_, log) = a.stop();
    assert!(
        log.contains("the data path cannot work: not ready"),
        "{log}"
    );
    assert!(log.contains("the data path can work again: ready"), "{log}");
}
