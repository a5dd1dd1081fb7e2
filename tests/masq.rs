//! `--ip-masq` on real iptables in namespaces: pod-to-pod traffic across nodes keeps the
//! pod's source address, traffic to a host outside the overlay is masqueraded to the node's
//! address, and a flushed chain comes back on the next resync.

mod harness;

use std::time::{Duration, Instant};

use harness::{require_root, tcp_transfer, Etcd, Lab, WeftNode, VXLAN_CONFIG};

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
