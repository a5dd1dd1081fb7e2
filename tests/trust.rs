//! End-to-end: what weft takes from etcd is not trusted. Hostile or mistaken lease records
//! (outside the Network, the underlay's own prefix, unusable PublicIPs, odd keys) change no
//! route and no peer while a genuine peer keeps working, with host-gw and with vxlan
//! DirectRouting; a second lease naming a live node's PublicIP leaves both directions
//! working; a node whose own lease is overwritten writes it back; a config change while
//! running is logged with what changed. Needs root.

mod harness;

use std::time::Duration;

use harness::{
    ping_all_pairs, require_root, transfer, two_node_cluster, wait_until, Etcd, Host, OPS_PORT,
    PREFIX, VXLAN_CONFIG,
};
use weft::wire::Subnet;

const HOST_GW: &str = r#"{"Network":"10.1.0.0/16","Backend":{"Type":"host-gw"}}"#;
const VXLAN_DIRECT: &str =
    r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#;
const MB: u64 = 1 << 20;

/// The host's main IPv4 routing table, one line per route, sorted.
fn main_table(host: &Host) -> Vec<String> {
    let mut v: Vec<String> = host
        .ip(&["-4", "route", "show", "table", "main"])
        .lines()
        .map(|l| l.trim().to_string())
        .collect();
    v.sort();
    v
}

fn vxlan_record(ip: &str, mac: &str) -> String {
    format!(
        r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
    )
}

/// Writes hostile records: the underlay's own prefix, a public prefix, PublicIPs no node can
/// have, a key of the wrong length, keys that are no subnet. The subnets inside the Network
/// lie above the 100 that nodes pick from (SubnetMin 10.1.1.0), so none is a node's own.
fn put_hostile_leases(etcd: &Etcd, backend: &str) {
    let rec = |ip: &str| match backend {
        "host-gw" => format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"host-gw"}}"#),
        _ => vxlan_record(ip, "c6:d2:32:6f:8f:44"),
    };
    let put = |key: &str, value: &str| {
        etcd.ctl(&["put", &format!("{PREFIX}/subnets/{key}"), value]);
    };
    put("192.168.64.0-24", &rec("192.168.64.91"));
    put("8.8.8.0-24", &rec("192.168.64.92"));
    put("10.1.201.0-24", &rec("127.0.0.1"));
    put("10.1.202.0-24", &rec("255.255.255.255"));
    put("10.1.203.0-24", &rec("224.0.0.5"));
    put("10.1.204.0-24", &rec("169.254.3.3"));
    put("10.1.0.0-16", &rec("192.168.64.93"));
    put("10.1.205.7-24", &rec("192.168.64.94"));
    put("junk", &rec("192.168.64.95"));
    put("10.1.206.0-24", "{not json");
}

/// Hostile records change nothing: the main table is as before (weft's one genuine route
/// included), the node keeps one peer, every record is counted and listed.
fn hostile_leases_change_nothing(config: &str, backend: &str) {
    require_root();
    let (lab, etcd, a, b) = two_node_cluster(config, &["--route-resync-secs=1"]);
    assert!(
        wait_until(Duration::from_secs(5), || main_table(lab.host(0))
            .iter()
            .any(
                |l| l.starts_with(&b.subnet.to_string()) && l.contains("proto 87")
            ))
        .is_some(),
        "no direct route to the genuine peer: {:?}",
        main_table(lab.host(0))
    );
    let before = main_table(lab.host(0));

    put_hostile_leases(&etcd, backend);
    // Several route resyncs and table polls later:
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        main_table(lab.host(0)),
        before,
        "a hostile lease changed the routing table"
    );
    assert_eq!(
        a.metric("weft_leases"),
        1,
        "only the genuine peer is a lease"
    );
    let rejected = |reason: &str| a.metric(&format!("weft_leases_rejected{{reason=\"{reason}\"}}"));
    let counts = [
        rejected("outside_network"),
        rejected("public_ip"),
        rejected("prefix_len"),
        rejected("bad_key"),
        rejected("unreadable"),
    ];
    assert_eq!(
        counts,
        [2, 4, 1, 2, 1],
        "rejected by reason (outside_network, public_ip, prefix_len, bad_key, unreadable); /status:\n{}",
        a.http("/status").unwrap_or_default()
    );
    // The genuine peer keeps working both ways.
    ping_all_pairs(&lab);
    transfer(&lab, 0, 1, 5 * MB);
    transfer(&lab, 1, 0, 5 * MB);

    // The views list what was skipped: /status (weft status) and weft doctor.
    let status = a.weft(&["status", "--healthz-port", &OPS_PORT.to_string()]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("10 lease record(s) in etcd not used")
            && text.contains("subnets/192.168.64.0-24")
            && text.contains("lies outside the Network"),
        "{text}"
    );
    let (_, report) = a.doctor(etcd.endpoint());
    assert!(
        report.contains("lease_records") && report.contains("subnets/8.8.8.0-24"),
        "{report}"
    );
    let (_, log) = a.stop();
    assert!(
        log.contains("skipping a lease record from etcd") && log.contains("8.8.8.0/24"),
        "no log line for the skipped records:\n{log}"
    );
    drop(b);
}

#[test]
fn hostile_leases_change_no_route_with_host_gw() {
    hostile_leases_change_nothing(HOST_GW, "host-gw");
}

#[test]
fn hostile_leases_change_no_route_with_direct_routing() {
    hostile_leases_change_nothing(VXLAN_DIRECT, "vxlan");
}

/// A stale lease names node b's PublicIP and sorts before b's own: traffic still flows both
/// ways and the conflict is reported.
#[test]
fn duplicate_public_ip_leaves_both_directions_working() {
    require_root();
    let (lab, etcd, a, b) = two_node_cluster(VXLAN_CONFIG, &[]);
    // 10.1.0.0/24 is inside the Network and below SubnetMin: it sorts before every lease.
    let stale = Subnet::new("10.1.0.0".parse().unwrap(), 24).unwrap();
    let b_ip = lab.host(1).addr().to_string();
    etcd.put_lease(stale, &vxlan_record(&b_ip, "c6:d2:32:6f:8f:77"), 3600);
    assert!(
        wait_until(Duration::from_secs(5), || a.metric("weft_leases") == 2).is_some(),
        "the stale lease never reached the table"
    );
    ping_all_pairs(&lab);
    transfer(&lab, 0, 1, 5 * MB);
    transfer(&lab, 1, 0, 5 * MB);
    assert_eq!(a.drops("spoofed_source"), 0);
    assert_eq!(a.metric("weft_lease_conflicts"), 1);
    let status = a.weft(&["status", "--healthz-port", &OPS_PORT.to_string()]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains(&format!("CONFLICT  PublicIP {b_ip}")),
        "{text}"
    );
    let (_, report) = a.doctor(etcd.endpoint());
    assert!(
        report.contains("public_ip_conflict") && report.contains("10.1.0.0-24"),
        "{report}"
    );
    let (_, log) = a.stop();
    assert!(log.contains("several leases name one PublicIP"), "{log}");
    drop(b);
}

/// Overwrite node b's lease with garbage, then with another PublicIP: each time b writes its
/// own record back (on an etcd lease, so with a TTL) within 5 s and traffic resumes.
#[test]
fn overwritten_own_lease_is_written_back() {
    require_root();
    let (lab, etcd, a, b) = two_node_cluster(VXLAN_CONFIG, &[]);
    let original = etcd.lease(b.subnet).expect("b's lease");
    let key = format!("{PREFIX}/subnets/{}", b.subnet.key_string());
    let lease_id = || -> String {
        let out = etcd.ctl(&["get", &key, "-w", "fields"]);
        out.lines()
            .find_map(|l| l.strip_prefix("\"Lease\" : "))
            .unwrap_or("0")
            .trim()
            .to_string()
    };
    for overwrite in [
        "garbage".to_string(),
        vxlan_record("192.168.64.99", "c6:d2:32:6f:8f:99"),
    ] {
        etcd.ctl(&["put", &key, &overwrite]);
        let took = wait_until(Duration::from_secs(5), || {
            etcd.lease(b.subnet).as_deref() == Some(&original) && lease_id() != "0"
        });
        assert!(
            took.is_some(),
            "b's lease was not written back after {overwrite:?}: {:?}",
            etcd.lease(b.subnet)
        );
        eprintln!("overwrite {overwrite:?} repaired in {took:?}");
        ping_all_pairs(&lab);
    }
    transfer(&lab, 0, 1, 5 * MB);
    // A config change while running is logged with what changed (and not applied).
    etcd.put_config(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan","MTU":1400}}"#);
    std::thread::sleep(Duration::from_millis(500));
    let (_, log) = b.stop();
    assert!(
        log.contains("this node's lease was overwritten in etcd"),
        "{log}"
    );
    assert!(
        log.contains("network config changed in etcd") && log.contains("Backend.MTU unset -> 1400"),
        "{log}"
    );
    drop(a);
}
