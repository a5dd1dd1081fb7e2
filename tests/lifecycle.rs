//! End-to-end: what an operator's hands do to a running node. SIGHUP never kills it;
//! SIGTERM and SIGINT stop it with exit 0 at any stage, also while it still waits for etcd;
//! a second weft of the same network in the same namespace refuses to start before it touches
//! etcd, the subnet file or any device, and the first keeps all its traffic. Needs root.

mod harness;

use std::time::{Duration, Instant};

use harness::{
    ping_all_pairs, require_root, transfer, two_node_cluster, weft_bin, Etcd, Lab, VXLAN_CONFIG,
};

const MB: u64 = 1 << 20;

#[test]
fn sighup_leaves_the_node_forwarding() {
    require_root();
    let (lab, _etcd, mut a, _b) = two_node_cluster(VXLAN_CONFIG, &[]);
    for _ in 0..3 {
        a.signal(libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(a.is_running(), "SIGHUP killed weft");
    ping_all_pairs(&lab);
    transfer(&lab, 0, 1, 5 * MB);
    let start = Instant::now();
    a.signal(libc::SIGTERM);
    let (status, log) = a
        .wait_exit(Duration::from_secs(5))
        .expect("weft did not exit after SIGTERM");
    let took = start.elapsed();
    eprintln!("running node: SIGTERM to exit in {took:?}");
    assert!(status.success(), "exit {status:?}:\n{log}");
    assert!(log.contains("SIGHUP ignored"), "{log}");
    assert!(took < Duration::from_millis(1500), "stopping took {took:?}");
}

/// `weft run` in host 0 of `lab` without waiting for anything; `endpoint` is etcd's URL.
fn spawn_weft(lab: &Lab, endpoint: &str, dir: &std::path::Path) -> harness::Proc {
    let ep = format!("-etcd-endpoints={endpoint}");
    let sf = format!("-subnet-file={}", dir.join("subnet.env").display());
    lab.host(0).spawn(&[
        "env",
        "RUST_LOG=weft=debug",
        weft_bin(),
        "run",
        &ep,
        "-iface=eth0",
        &sf,
    ])
}

/// SIGTERM or SIGINT while etcd is unreachable, and while etcd has no network config yet:
/// exit 0, promptly, and nothing written.
#[test]
fn stop_signals_during_start_up_exit_zero() {
    require_root();
    let lab = Lab::builder().hosts(1).build();
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens at the endpoint yet.
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut p = spawn_weft(&lab, "http://192.168.64.2:2379", dir.path());
        std::thread::sleep(Duration::from_millis(800));
        assert!(p.is_running(), "weft gave up waiting for etcd");
        let start = Instant::now();
        p.signal(sig);
        let status = p.wait_timeout(Duration::from_secs(5));
        let took = start.elapsed();
        let out = p.stop();
        let log = String::from_utf8_lossy(&out.stderr);
        eprintln!("waiting for etcd: signal {sig} to exit in {took:?}");
        assert!(
            status.is_some_and(|s| s.success()),
            "signal {sig} while waiting for etcd: {status:?}\n{log}"
        );
        assert!(took < Duration::from_millis(1500), "took {took:?}");
    }
    // etcd up, no config yet.
    let etcd = Etcd::start_in(lab.segment(0));
    let mut p = spawn_weft(&lab, etcd.endpoint(), dir.path());
    std::thread::sleep(Duration::from_millis(1500));
    let start = Instant::now();
    p.signal(libc::SIGTERM);
    let status = p.wait_timeout(Duration::from_secs(5));
    let took = start.elapsed();
    let out = p.stop();
    let log = String::from_utf8_lossy(&out.stderr);
    eprintln!("waiting for the config: SIGTERM to exit in {took:?}");
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM while waiting for the config: {status:?}\n{log}"
    );
    assert!(log.contains("no usable network config yet"), "{log}");
    assert!(!dir.path().join("subnet.env").exists());
}

#[test]
fn second_instance_refuses_before_touching_anything() {
    require_root();
    let (lab, etcd, a, _b) = two_node_cluster(VXLAN_CONFIG, &["--workers=2"]);
    let lease_before = etcd.lease(a.subnet).expect("a's lease");
    let env_before = std::fs::read_to_string(a.subnet_file()).unwrap();
    let rx_before = a.metric("weft_packets_total{direction=\"rx\"}");

    // The mistake: another TUN name, another subnet file, several workers.
    let dir = tempfile::tempdir().unwrap();
    let ep = format!("-etcd-endpoints={}", etcd.endpoint());
    let sf = format!("-subnet-file={}", dir.path().join("subnet.env").display());
    let second = lab.host(0).spawn(&[
        weft_bin(),
        "run",
        &ep,
        "-iface=eth0",
        &sf,
        "--tun-name=weft1",
        "--workers=2",
    ]);
    let out = second.output_within(Duration::from_secs(10));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second weft started:\n{log}");
    assert!(log.contains("another weft already runs"), "{log}");
    assert!(
        !dir.path().join("subnet.env").exists(),
        "the second wrote a subnet file"
    );
    assert!(
        !lab.host(0).ip_ok(&["link", "show", "weft1"]),
        "the second made a TUN"
    );
    assert_eq!(etcd.lease(a.subnet).as_deref(), Some(lease_before.as_str()));
    assert_eq!(
        std::fs::read_to_string(a.subnet_file()).unwrap(),
        env_before
    );

    // The first keeps all its traffic.
    ping_all_pairs(&lab);
    transfer(&lab, 1, 0, 20 * MB);
    assert!(a.metric("weft_packets_total{direction=\"rx\"}") > rx_before + 10_000);
}
