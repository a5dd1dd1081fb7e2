//! End-to-end, the IPv6 half of `tests/trust.rs`: on a dual-stack network, lease records
//! whose IPv4 half is fine but whose IPv6 half is hostile or mistaken (an IPv6 subnet outside
//! the IPv6Network or of another length, unusable PublicIPv6s, a PublicIPv6 inside the
//! overlay, a missing PublicIPv6 or BackendV6Data, a multicast IPv6 VTEP MAC, IPv6 key parts
//! flannel cannot read, an IPv6-only key) change no route in either family and no peer, with
//! host-gw and with vxlan DirectRouting; each is counted under its `weft_leases_rejected`
//! reason and listed by `weft status`, `weft doctor` and the log. A second lease naming the
//! genuine peer's PublicIPv6 is a reported conflict that adds only its own routes and leaves
//! the genuine peer working, with direct routes and through the IPv6 tunnel. The genuine peer
//! keeps carrying pod traffic in both families throughout (ping, checksummed transfers). A
//! second lease naming the genuine peer's IPv6 subnet does not take it over (the key created
//! first holds a subnet). Real weft, real etcd, network namespaces. Needs root.

mod harness;

use std::time::Duration;

use harness::{
    ping_all_pairs, ping_all_pairs6, require_root, transfer, transfer6, wait_until, Etcd, Host,
    Lab, WeftNode, OPS_PORT, PREFIX,
};
use weft::ops::status::StatusDoc;
use weft::store::LeaseProblem;
use weft::wire::Subnet6;

const HOST_GW_DUAL: &str = r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/48","Backend":{"Type":"host-gw"}}"#;
const VXLAN_DIRECT_DUAL: &str = r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/48","Backend":{"Type":"vxlan","DirectRouting":true}}"#;
const VXLAN_DUAL: &str = r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/48","Backend":{"Type":"vxlan"}}"#;
const MB: u64 = 1 << 20;

/// A host's main routing table of one family (`-4`, `-6`), one line per route, sorted, with
/// the volatile `expires <n>sec` parts left out.
fn main_table(host: &Host, family: &str) -> Vec<String> {
    let mut v: Vec<String> = host
        .ip(&[family, "route", "show", "table", "main"])
        .lines()
        .map(|l| {
            let mut words = Vec::new();
            let mut it = l.split_whitespace();
            while let Some(w) = it.next() {
                if w == "expires" {
                    it.next();
                } else {
                    words.push(w);
                }
            }
            words.join(" ")
        })
        .filter(|l| !l.is_empty())
        .collect();
    v.sort();
    v
}

/// Both main tables of `host`: IPv4, IPv6.
fn main_tables(host: &Host) -> (Vec<String>, Vec<String>) {
    (main_table(host, "-4"), main_table(host, "-6"))
}

/// The line of weft's route (protocol 87) to `dst` in a [`main_table`], if any.
fn route_line(table: &[String], dst: &str) -> Option<String> {
    table
        .iter()
        .find(|l| l.split_whitespace().next() == Some(dst) && l.contains("proto 87"))
        .cloned()
}

/// The main-table line of weft's route (protocol 87) to `dst` in `family`, if any.
fn weft_route(host: &Host, family: &str, dst: &str) -> Option<String> {
    route_line(&main_table(host, family), dst)
}

/// The node's `/status` document.
fn status_doc(node: &WeftNode) -> StatusDoc {
    let text = node.http("/status").expect("/status answers");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("/status JSON: {e}\n{text}"))
}

/// One remote lease half as the node sees it: subnet, public address, VTEP MAC.
type PeerRow = (String, String, Option<String>);

/// The node's remote peers (IPv4 halves, IPv6 halves) from `/status`.
fn peers(node: &WeftNode) -> (Vec<PeerRow>, Vec<PeerRow>) {
    let doc = status_doc(node);
    let four = doc
        .peers
        .iter()
        .map(|p| {
            (
                p.subnet.clone(),
                p.public_ip.to_string(),
                p.vtep_mac.clone(),
            )
        })
        .collect();
    let six = doc
        .peers6
        .iter()
        .map(|p| {
            (
                p.subnet.clone(),
                p.public_ip.to_string(),
                p.vtep_mac.clone(),
            )
        })
        .collect();
    (four, six)
}

/// `weft_leases_rejected` for every reason weft knows, in its order.
fn rejected_counts(node: &WeftNode) -> Vec<(&'static str, u64)> {
    let text = node.http("/metrics").unwrap_or_default();
    LeaseProblem::LABELS
        .iter()
        .map(|&reason| {
            let series = format!("weft_leases_rejected{{reason=\"{reason}\"}}");
            let n = weft::ops::metrics::sample(&text, &series)
                .unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"));
            (reason, n)
        })
        .collect()
}

/// `weft status` of the node, as text.
fn weft_status(node: &WeftNode) -> String {
    let out = node.weft(&["status", "--healthz-port", &OPS_PORT.to_string()]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The IPv6 half of a lease record.
#[derive(Clone, Copy)]
enum V6<'a> {
    /// `PublicIPv6` is this text; a vxlan record has a good `BackendV6Data`.
    Ip(&'a str),
    /// `PublicIPv6` is `null`.
    NullIp,
    /// A good `PublicIPv6`, but a vxlan record without `BackendV6Data`.
    NoV6Data,
    /// A good `PublicIPv6`, `BackendV6Data.VtepMAC` this MAC.
    VtepMac(&'a str),
}

/// A dual-stack record of `backend` ("host-gw" or "vxlan") with PublicIP `ip` and the IPv6
/// half `v6`; vxlan records carry VNI 1 and unicast VTEP MACs (both halves) unless `v6` says
/// otherwise.
fn record(backend: &str, ip: &str, v6: V6<'_>) -> String {
    const GOOD_IP6: &str = "fd77::91";
    let ip6 = match v6 {
        V6::Ip(a) => format!("\"{a}\""),
        V6::NullIp => "null".to_string(),
        V6::NoV6Data | V6::VtepMac(_) => format!("\"{GOOD_IP6}\""),
    };
    if backend == "host-gw" {
        return format!(r#"{{"PublicIP":"{ip}","PublicIPv6":{ip6},"BackendType":"host-gw"}}"#);
    }
    let v6_data = match v6 {
        V6::NoV6Data => String::new(),
        V6::VtepMac(mac) => format!(r#","BackendV6Data":{{"VNI":1,"VtepMAC":"{mac}"}}"#),
        _ => r#","BackendV6Data":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:46"}"#.to_string(),
    };
    format!(
        r#"{{"PublicIP":"{ip}","PublicIPv6":{ip6},"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}{v6_data}}}"#
    )
}

/// One hostile record: the key under `subnets/`, the value, the reason weft must give.
struct Hostile {
    key: &'static str,
    value: String,
    reason: &'static str,
}

/// Records whose IPv4 half would be a usable lease (a subnet inside the Network above the
/// 100 that nodes pick from, a free underlay PublicIP) and whose IPv6 half is not, each with
/// the reason `src/store/check.rs` gives it. The vxlan-only ones (BackendV6Data) come with a
/// vxlan `backend`.
fn hostile_records(backend: &str) -> Vec<Hostile> {
    let h = |key, v6, reason| Hostile {
        key,
        value: record(backend, "192.168.64.91", v6),
        reason,
    };
    let mut v = vec![
        // An IPv6 subnet outside the IPv6Network fd10::/48.
        h(
            "10.1.201.0-24&fd99:0:0:1::-64",
            V6::Ip("fd77::91"),
            "outside_network_v6",
        ),
        // PublicIPv6s no node can have on the underlay.
        h(
            "10.1.202.0-24&fd10:0:0:ca::-64",
            V6::Ip("::1"),
            "public_ipv6",
        ),
        h(
            "10.1.203.0-24&fd10:0:0:cb::-64",
            V6::Ip("fe80::1"),
            "public_ipv6",
        ),
        h(
            "10.1.204.0-24&fd10:0:0:cc::-64",
            V6::Ip("ff02::1"),
            "public_ipv6",
        ),
        h(
            "10.1.210.0-24&fd10:0:0:d2::-64",
            V6::Ip("::"),
            "public_ipv6",
        ),
        // IPv4 text reads as the IPv4-mapped ::ffff:192.168.64.11 (Go's ParseIP).
        h(
            "10.1.211.0-24&fd10:0:0:d3::-64",
            V6::Ip("192.168.64.11"),
            "public_ipv6",
        ),
        // The underlay inside the overlay: encapsulated packets would loop.
        h(
            "10.1.205.0-24&fd10:0:0:cd::-64",
            V6::Ip("fd10:0:0:ff::1"),
            "public_ipv6",
        ),
        // IPv6 key parts flannel cannot read: not hex, host bits set, upper case, length
        // beyond 127.
        h("10.1.207.0-24&fd10:zz::-64", V6::Ip("fd77::91"), "bad_key"),
        h(
            "10.1.209.0-24&fd10:0:0:d1::5-64",
            V6::Ip("fd77::91"),
            "bad_key",
        ),
        h(
            "10.1.213.0-24&FD10:0:0:d5::-64",
            V6::Ip("fd77::91"),
            "bad_key",
        ),
        h(
            "10.1.215.0-24&fd10:0:0:d7::-129",
            V6::Ip("fd77::91"),
            "bad_key",
        ),
        // IPv6 subnets of another length than IPv6SubnetLen (64): a /63, the whole network.
        h(
            "10.1.208.0-24&fd10:0:0:d0::-63",
            V6::Ip("fd77::91"),
            "prefix_len_v6",
        ),
        h(
            "10.1.214.0-24&fd10::-48",
            V6::Ip("fd77::91"),
            "prefix_len_v6",
        ),
        // A dual-stack key without a PublicIPv6.
        h("10.1.212.0-24&fd10:0:0:d4::-64", V6::NullIp, "missing_v6"),
        // A PublicIPv6 that is no address at all: the record does not read.
        h(
            "10.1.216.0-24&fd10:0:0:d8::-64",
            V6::Ip("fd77::zz"),
            "unreadable",
        ),
        // flanneld's IPv6-only key form on a network with IPv4 (its IPv4 part is flannel's
        // empty net, the one key here whose IPv4 part is not an unused /24).
        h(
            "0.0.0.0-0&fd10:0:0:d9::-64",
            V6::Ip("fd77::91"),
            "ipv6_only_lease",
        ),
    ];
    if backend == "vxlan" {
        v.push(h(
            "10.1.217.0-24&fd10:0:0:da::-64",
            V6::NoV6Data,
            "missing_v6",
        ));
        v.push(h(
            "10.1.218.0-24&fd10:0:0:db::-64",
            V6::VtepMac("33:33:00:00:00:01"),
            "vtep_mac_v6",
        ));
    }
    v
}

/// A dual-stack lab of two hosts, etcd with `config`, a dual-stack weft node with a pod on
/// each host (both with `flags`), every pod reaching the other in both families, and node
/// a's direct routes (protocol 87) to b in both families when `direct` (host-gw,
/// DirectRouting). Bind in this order so the nodes stop before the lab goes.
fn dual_cluster(config: &str, flags: &[&str], direct: bool) -> (Lab, Etcd, WeftNode, WeftNode) {
    let mut lab = Lab::builder().hosts(2).ipv6().build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(config);
    let a = WeftNode::start_dual_with_pod(&mut lab, 0, &etcd, flags);
    let b = WeftNode::start_dual_with_pod(&mut lab, 1, &etcd, flags);
    ping_all_pairs6(&lab);
    ping_all_pairs(&lab);
    if direct {
        let b6 = b.subnet6.expect("a dual-stack lease").to_string();
        let b4 = b.subnet.to_string();
        let h0 = lab.host(0);
        assert!(
            wait_until(Duration::from_secs(5), || {
                weft_route(h0, "-6", &b6).is_some() && weft_route(h0, "-4", &b4).is_some()
            })
            .is_some(),
            "no direct routes to the genuine peer: {:?}",
            main_tables(h0)
        );
    }
    (lab, etcd, a, b)
}

/// The genuine peer carries pod traffic both ways in both families.
fn genuine_peer_works(lab: &Lab) {
    ping_all_pairs6(lab);
    ping_all_pairs(lab);
    transfer6(lab, 0, 1, 5 * MB);
    transfer6(lab, 1, 0, 5 * MB);
}

/// Hostile IPv6 halves change nothing: both main tables as before (weft's genuine routes
/// included), one peer in each family as before, every record counted under its reason and
/// listed; then a stale lease naming the genuine peer's PublicIPv6 adds its own routes only,
/// is reported as a conflict, and the genuine peer keeps working.
fn hostile_ipv6_leases_change_nothing(config: &str, backend: &str) {
    require_root();
    let (lab, etcd, a, b) = dual_cluster(config, &["--route-resync-secs=1"], true);
    let h0 = lab.host(0);
    let before = main_tables(h0);
    let peers_before = peers(&a);
    assert_eq!(
        (peers_before.0.len(), peers_before.1.len()),
        (1, 1),
        "{peers_before:?}"
    );

    let hostile = hostile_records(backend);
    for r in &hostile {
        etcd.ctl(&["put", &format!("{PREFIX}/subnets/{}", r.key), &r.value]);
    }
    // Several route resyncs and table polls later:
    std::thread::sleep(Duration::from_secs(3));
    let after = main_tables(h0);
    assert_eq!(
        after.1, before.1,
        "a hostile IPv6 lease changed the IPv6 routing table"
    );
    assert_eq!(
        after.0, before.0,
        "a hostile IPv6 lease changed the IPv4 routing table"
    );
    assert_eq!(
        a.metric("weft_leases"),
        1,
        "only the genuine peer is a lease"
    );
    assert_eq!(
        peers(&a),
        peers_before,
        "a hostile IPv6 lease changed a peer"
    );
    assert_eq!(a.metric("weft_lease_conflicts"), 0);

    // Each record under its reason: the metric per reason (every other reason 0) ...
    let mut want: Vec<(&str, u64)> = LeaseProblem::LABELS.iter().map(|&l| (l, 0)).collect();
    for r in &hostile {
        let slot = want
            .iter_mut()
            .find(|(l, _)| *l == r.reason)
            .unwrap_or_else(|| panic!("weft has no reason label {:?}", r.reason));
        slot.1 += 1;
    }
    let doc = status_doc(&a);
    assert_eq!(
        rejected_counts(&a),
        want,
        "weft_leases_rejected by reason; /status rejected_leases: {:#?}",
        doc.rejected_leases
    );
    // ... and /status per key.
    let mut listed: Vec<(String, String)> = doc
        .rejected_leases
        .iter()
        .map(|r| (r.key.clone(), r.reason.clone()))
        .collect();
    listed.sort();
    let mut expected: Vec<(String, String)> = hostile
        .iter()
        .map(|r| (format!("{PREFIX}/subnets/{}", r.key), r.reason.to_string()))
        .collect();
    expected.sort();
    assert_eq!(listed, expected, "/status rejected_leases");

    // The genuine peer keeps working both ways, in both families.
    genuine_peer_works(&lab);
    transfer(&lab, 0, 1, 5 * MB);

    // The views list what was skipped: weft status and weft doctor.
    let text = weft_status(&a);
    assert!(
        text.contains(&format!(
            "{} lease record(s) in etcd not used",
            hostile.len()
        )) && text.contains("subnets/10.1.201.0-24&fd99:0:0:1::-64")
            && text.contains("IPv6 subnet fd99:0:0:1::/64 lies outside the IPv6Network fd10::/48")
            && text.contains("PublicIPv6 ::1 is the loopback address"),
        "{text}"
    );
    let (_, report) = a.doctor(etcd.endpoint());
    assert!(
        report.contains("lease_records")
            && report.contains("subnets/10.1.204.0-24&fd10:0:0:cc::-64"),
        "{report}"
    );

    // A stale lease names the genuine peer's PublicIPv6 (its IPv4 half a free PublicIP); its
    // IPv4 and IPv6 subnets sort before every other lease's. A conflict: reported, and
    // routed like any usable lease, but the genuine routes and peer stay as they are.
    let b_ip6 = lab.host(1).addr6().to_string();
    let stale_key = "10.1.0.0-24&fd10::-64";
    let stale_ip = "192.168.64.96";
    etcd.ctl(&[
        "put",
        &format!("{PREFIX}/subnets/{stale_key}"),
        &record(backend, stale_ip, V6::Ip(&b_ip6)),
    ]);
    assert!(
        wait_until(Duration::from_secs(5), || a.metric("weft_leases") == 2).is_some(),
        "the stale lease never reached the table"
    );
    // Both tables as before plus the stale lease's two routes: the genuine ones (as they
    // were before any hostile record) with its own subnets and IPv4 PublicIP.
    let b6 = b.subnet6.expect("a dual-stack lease");
    let genuine6 = route_line(&before.1, &b6.to_string()).expect("b's IPv6 route before");
    let genuine4 = route_line(&before.0, &b.subnet.to_string()).expect("b's IPv4 route before");
    let mut want6 = before.1.clone();
    want6.push(genuine6.replacen(&b6.to_string(), "fd10::/64", 1));
    want6.sort();
    let mut want4 = before.0.clone();
    want4.push(
        genuine4
            .replacen(&b.subnet.to_string(), "10.1.0.0/24", 1)
            .replacen(&lab.host(1).addr().to_string(), stale_ip, 1),
    );
    want4.sort();
    let settled = wait_until(Duration::from_secs(4), || {
        main_tables(h0) == (want4.clone(), want6.clone())
    });
    assert!(
        settled.is_some(),
        "with a stale lease naming b's PublicIPv6, want IPv4 {want4:#?}\nIPv6 {want6:#?}\nhave {:#?}",
        main_tables(h0)
    );
    let (four, six) = peers(&a);
    assert!(
        four.contains(&peers_before.0[0]),
        "b's IPv4 peer changed: {four:?}"
    );
    assert!(
        six.contains(&peers_before.1[0]),
        "b's IPv6 peer changed: {six:?}"
    );
    assert_eq!(a.metric("weft_lease_conflicts"), 1);
    let text = weft_status(&a);
    assert!(
        text.contains(&format!(
            "CONFLICT  PublicIP {b_ip6} is named by the leases of fd10::/64, {b6}"
        )),
        "{text}"
    );
    genuine_peer_works(&lab);

    let (_, log) = a.stop();
    assert!(
        log.contains("skipping a lease record from etcd")
            && log.contains("fd99:0:0:1::/64")
            && log.contains("10.1.207.0-24&fd10:zz::-64"),
        "no log line for the skipped IPv6 records:\n{log}"
    );
    assert!(
        log.contains("several leases name one PublicIPv6"),
        "no log line for the conflict:\n{log}"
    );
    drop(b);
}

#[test]
fn hostile_ipv6_leases_change_no_route_with_host_gw() {
    hostile_ipv6_leases_change_nothing(HOST_GW_DUAL, "host-gw");
}

#[test]
fn hostile_ipv6_leases_change_no_route_with_direct_routing() {
    hostile_ipv6_leases_change_nothing(VXLAN_DIRECT_DUAL, "vxlan");
}

/// Through the IPv6 tunnel (vxlan without DirectRouting): a stale lease names node b's
/// PublicIPv6 and sorts before b's own in both families, so the receive path's lookup by
/// sender answers the stale lease for b's packets; the inner-source check must still accept
/// b's pod, and a's packets must still go to b's VTEP. IPv6 traffic flows both ways, nothing
/// is dropped as spoofed, and the conflict is reported.
#[test]
fn duplicate_public_ipv6_leaves_the_ipv6_tunnel_working() {
    require_root();
    let (lab, etcd, a, b) = dual_cluster(VXLAN_DUAL, &[], false);
    let peers_before = peers(&a);
    let b_ip6 = lab.host(1).addr6();
    etcd.ctl(&[
        "put",
        &format!("{PREFIX}/subnets/10.1.0.0-24&fd10::-64"),
        &record("vxlan", "192.168.64.96", V6::Ip(&b_ip6.to_string())),
    ]);
    assert!(
        wait_until(Duration::from_secs(5), || a.metric("weft_leases") == 2).is_some(),
        "the stale lease never reached the table"
    );
    let (four, six) = peers(&a);
    assert_eq!(six.len(), 2, "{six:?}");
    assert!(
        four.contains(&peers_before.0[0]),
        "b's IPv4 peer changed: {four:?}"
    );
    assert!(
        six.contains(&peers_before.1[0]),
        "b's IPv6 peer changed: {six:?}"
    );
    assert_eq!(
        six[0].0, "fd10::/64",
        "the stale lease sorts first: {six:?}"
    );

    genuine_peer_works(&lab);
    assert_eq!(
        a.drops("spoofed_source"),
        0,
        "a dropped b's packets as spoofed"
    );
    assert_eq!(
        b.drops("spoofed_source"),
        0,
        "b dropped a's packets as spoofed"
    );
    assert_eq!(a.metric("weft_lease_conflicts"), 1);
    let b6: Subnet6 = b.subnet6.expect("a dual-stack lease");
    let text = weft_status(&a);
    assert!(
        text.contains(&format!(
            "CONFLICT  PublicIP {b_ip6} is named by the leases of fd10::/64, {b6}"
        )),
        "{text}"
    );
    // b sees the stale lease name its own PublicIPv6: reported there too.
    assert_eq!(b.metric("weft_lease_conflicts"), 1);
    let (_, report) = a.doctor(etcd.endpoint());
    assert!(
        report.contains("public_ip_conflict")
            && report.contains(&format!("PublicIPv6 {b_ip6}"))
            && report.contains("10.1.0.0-24&fd10::-64"),
        "{report}"
    );
    let (_, log) = a.stop();
    assert!(log.contains("several leases name one PublicIPv6"), "{log}");
    drop(b);
}

/// A record under a fresh IPv4 key that names the genuine peer's IPv6 subnet with another
/// PublicIPv6 (an IPv6 subnet can sit under any IPv4 part, so etcd's keys do not keep two
/// leases from naming one): it must not take over b's IPv6 subnet, and deleting it must not
/// take b's IPv6 half away. The same for a record naming a's own IPv6 subnet. Both are
/// refused as `subnet_taken` and listed with their holder. (Before the fix the newer record
/// won: a's IPv6 route to b's subnet moved to the claimer and IPv6 traffic to b was lost,
/// and deleting the claim removed b's IPv6 half.)
#[test]
fn a_lease_claiming_a_live_ipv6_subnet_changes_no_route() {
    require_root();
    let (lab, etcd, a, b) = dual_cluster(HOST_GW_DUAL, &["--route-resync-secs=1"], true);
    let h0 = lab.host(0);
    let b6 = b.subnet6.expect("a dual-stack lease");
    let genuine6 = weft_route(h0, "-6", &b6.to_string()).expect("b's IPv6 route");
    let peers_before = peers(&a);
    let claim = format!("{PREFIX}/subnets/10.1.219.0-24&{}", b6.key_string());
    etcd.ctl(&[
        "put",
        &claim,
        &record("host-gw", "192.168.64.97", V6::Ip("fd77::97")),
    ]);
    // And one naming a's own IPv6 subnet.
    let a6 = a.subnet6.expect("a dual-stack lease");
    let own_claim = format!("{PREFIX}/subnets/10.1.220.0-24&{}", a6.key_string());
    etcd.ctl(&[
        "put",
        &own_claim,
        &record("host-gw", "192.168.64.96", V6::Ip("fd77::96")),
    ]);
    // Several route resyncs and table polls later:
    std::thread::sleep(Duration::from_secs(3));
    let six = peers(&a).1;
    assert_eq!(
        weft_route(h0, "-6", &b6.to_string()).as_deref(),
        Some(genuine6.as_str()),
        "a second lease naming b's IPv6 subnet moved b's IPv6 route; IPv6 peers {six:?}, \
         /status rejected {:?}, weft_lease_conflicts {}",
        status_doc(&a).rejected_leases,
        a.metric("weft_lease_conflicts")
    );
    assert_eq!(six, peers_before.1, "b's IPv6 peer changed");
    assert_eq!(peers(&a).0, peers_before.0, "an IPv4 peer changed");
    assert_eq!(
        a.metric("weft_leases_rejected{reason=\"subnet_taken\"}"),
        2,
        "both claims refused as subnet_taken; /status rejected {:?}",
        status_doc(&a).rejected_leases
    );
    let rejected = status_doc(&a).rejected_leases;
    let listed = |key: &str, holder: &str| {
        rejected
            .iter()
            .any(|r| format!("{r:?}").contains(key) && format!("{r:?}").contains(holder))
    };
    assert!(
        listed("10.1.219.0-24", &b6.key_string()) && listed("10.1.220.0-24", "own lease"),
        "each claim is listed with its holder: {rejected:?}"
    );
    genuine_peer_works(&lab);

    // The claims go: b's IPv6 half stays.
    etcd.ctl(&["del", &claim]);
    etcd.ctl(&["del", &own_claim]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        weft_route(h0, "-6", &b6.to_string()).as_deref(),
        Some(genuine6.as_str()),
        "deleting the claim took b's IPv6 route away"
    );
    assert_eq!(
        peers(&a).1,
        peers_before.1,
        "deleting the claim changed b's IPv6 peer"
    );
    assert_eq!(
        a.metric("weft_leases_rejected{reason=\"subnet_taken\"}"),
        0,
        "deleted claims are no longer listed"
    );
    ping_all_pairs6(&lab);
    drop((a, b));
}
