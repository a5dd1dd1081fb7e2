//! End-to-end: a stream of single-lease events (a large cluster's joins and leaves, one
//! etcd request each) is applied in batches: watch events within 50 ms of the last publish
//! share one table snapshot, so the node's work grows with the events, not with events
//! times leases (1,500 single puts published 1,500 tables before). The table still ends
//! exact, and a real peer keeps forwarding throughout. Needs root.

mod harness;

use std::time::{Duration, Instant};

use harness::{require_root, Etcd, Lab, WeftNode};

/// Fake leases put, then deleted, one by one.
const EVENTS: u32 = 1_500;

/// The most snapshots a stream may cost: one at its start, then one per 50 ms window it
/// spans, plus the odd publish of the node's own doings (slack).
fn most_publishes(took: Duration) -> u64 {
    (took.as_millis() / 50) as u64 + 1 + 10
}

#[test]
fn single_lease_events_share_table_publishes() {
    require_root();
    let mut lab = Lab::builder().hosts(2).build();
    let etcd = Etcd::start_in(lab.segment(0));
    // A /8 network, so that the fake leases' 10.x.y.0/24 subnets fit; the nodes take theirs
    // from 10.100.0.0 up, clear of them.
    etcd.put_config(
        r#"{"Network":"10.0.0.0/8","SubnetLen":24,"SubnetMin":"10.100.0.0","Backend":{"Type":"vxlan"}}"#,
    );
    let a = WeftNode::start_with_pod(&mut lab, 0, &etcd, &[]);
    let b = WeftNode::start_with_pod(&mut lab, 1, &etcd, &[]);
    let peers = |n: u64| {
        harness::wait_until(Duration::from_secs(30), || a.metric("weft_leases") == n).is_some()
    };
    assert!(peers(1), "A never saw B");

    for (what, delete, want) in [("puts", false, u64::from(EVENTS) + 1), ("deletes", true, 1)] {
        let before = a.metric("weft_table_publishes_total");
        let t = Instant::now();
        harness::bulk::one_by_one(lab.segment(0), &etcd, 300..300 + EVENTS, delete);
        assert!(
            peers(want),
            "the table never reached {want} leases after the {what}"
        );
        let took = t.elapsed();
        let published = a.metric("weft_table_publishes_total") - before;
        eprintln!("{EVENTS} single-lease {what} in {took:?}: {published} table publishes");
        assert!(
            published <= most_publishes(took),
            "{EVENTS} {what} over {took:?} published {published} tables"
        );
        assert!(published >= 1, "nothing published for the {what}");
    }
    // The real peer was never lost among the fake ones.
    harness::ping_all_pairs(&lab);
    drop(b);
}
