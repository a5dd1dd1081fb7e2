//! End-to-end: per-peer counters follow the lease table. 1,100 leases with traffic fill
//! every per-peer slot (the overflow is counted and logged); once they leave, their slots
//! are given back (after their last counts were exported), and 50 new peers with traffic and
//! the live peer all have series of their own again. Needs root.

mod harness;

use std::time::Duration;

use harness::{bulk, require_root, wait_until, Etcd, Lab, Netns, WeftNode};

/// A /8 in /24s: room for thousands of leases. The nodes take subnets from 10.100.0.0 up,
/// clear of the fake leases (10.0.x to 10.5.x).
const CONFIG: &str = r#"{"Network":"10.0.0.0/8","SubnetLen":24,"SubnetMin":"10.100.0.0","Backend":{"Type":"vxlan"}}"#;

/// One UDP datagram from `pod` into each of fake leases `ids`.
fn traffic_to(pod: &Netns, ids: impl Iterator<Item = u32>) {
    let dsts: Vec<String> = ids.map(|i| bulk::pod(i).to_string()).collect();
    let script = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         for d in {dsts:?}:\n    s.sendto(b'x', (d, 9))\n"
    );
    pod.exec(&["python3", "-c", &script]);
}

fn series_for(metrics: &str, ip: std::net::Ipv4Addr) -> bool {
    metrics.contains(&format!("public_ip=\"{ip}\",direction=\"tx\""))
}

#[test]
fn per_peer_slots_follow_the_table() {
    require_root();
    let mut lab = Lab::builder().hosts(2).build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(CONFIG);
    let a = WeftNode::start_with_pod(&mut lab, 0, &etcd, &[]);
    let b = WeftNode::start_with_pod(&mut lab, 1, &etcd, &[]);
    harness::ping_all_pairs(&lab);
    let pod = lab.host(0).pod(0);

    let first = 200..1300u32;
    bulk::apply(lab.segment(0), &etcd, first.clone(), false);
    let learned = wait_until(Duration::from_secs(30), || a.metric("weft_leases") >= 1101);
    assert!(learned.is_some(), "leases: {}", a.metric("weft_leases"));
    traffic_to(pod, first.clone());
    let full = wait_until(Duration::from_secs(10), || {
        a.metric("weft_peer_slots_overflow_total") > 0
    });
    assert!(full.is_some(), "no overflow counted");
    assert_eq!(a.metric("weft_peer_slots_used"), 1023);

    // They all leave: their slots come back once the node has exported their last counts.
    bulk::apply(lab.segment(0), &etcd, first, true);
    let gone = wait_until(Duration::from_secs(30), || a.metric("weft_leases") == 1);
    assert!(gone.is_some(), "leases: {}", a.metric("weft_leases"));
    // (Each /metrics read is an export.)
    let freed = wait_until(Duration::from_secs(15), || {
        a.metric("weft_peer_slots_used") <= 2
    });
    assert!(
        freed.is_some(),
        "slots used: {}",
        a.metric("weft_peer_slots_used")
    );

    // 50 new peers with traffic, and the live one: every one has its series.
    let next = 2000..2050u32;
    bulk::apply(lab.segment(0), &etcd, next.clone(), false);
    let learned = wait_until(Duration::from_secs(30), || a.metric("weft_leases") == 51);
    assert!(learned.is_some());
    traffic_to(pod, next.clone());
    assert!(pod.ping(lab.host(1).pod(0).addr(), 3).all_replied());
    let seen = wait_until(Duration::from_secs(10), || {
        let m = a.http("/metrics").unwrap_or_default();
        next.clone().all(|i| series_for(&m, bulk::public_ip(i)))
            && series_for(&m, lab.host(1).addr())
    });
    let m = a.http("/metrics").unwrap_or_default();
    let missing: Vec<u32> = next
        .filter(|&i| !series_for(&m, bulk::public_ip(i)))
        .collect();
    assert!(
        seen.is_some(),
        "no series for {} of the new peers ({missing:?}) or for the live peer",
        missing.len()
    );
    let (_, log) = a.stop();
    assert!(
        log.contains("every per-peer counter slot is in use"),
        "{log}"
    );
    drop(b);
}
