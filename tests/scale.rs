//! Measurements at scale, not checks (ignored by default, run by hand; the README names the
//! command): a node starting on a network of 65,000 leases (a /8 in /24s, IPv4 only), how
//! soon it forwards to a real peer and how much memory it holds. Needs root.
//!
//! `cargo nextest run --profile ci --run-ignored only -E 'binary(scale)' --no-capture`
//! (`WEFT_BIN` runs another build, for before/after pairs; `WEFT_SCALE_LEASES` changes the
//! count.)

mod harness;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harness::{require_root, Etcd, Lab, StartingWeft, WeftNode};

/// A /8 in /24s: 65,535 leasable subnets from SubnetMin 10.0.1.0.
const CONFIG: &str = r#"{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#;

/// Log lines that mark the steps of a start.
const MILESTONES: &[&str] = &[
    "underlay chosen",
    "network config loaded",
    "lease acquired",
    "TUN configured",
    "data path running",
    "lease table updated",
    "node ready",
    "leases listed",
];

/// `VmRSS` and `VmHWM` (peak) of `pid`, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn epoch_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `name` from the environment as a number, else `default`.
fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The first `[epoch] ... bytes from` line of `ping -D` output: when the first reply came.
fn first_reply(ping_out: &str) -> Option<f64> {
    ping_out
        .lines()
        .find(|l| l.contains("bytes from"))
        .and_then(|l| l.strip_prefix('['))
        .and_then(|l| l.split(']').next())
        .and_then(|t| t.parse().ok())
}

#[test]
#[ignore = "measurement; prints numbers"]
fn measure_start_on_65000_leases() {
    require_root();
    let n: u32 = env_u32("WEFT_SCALE_LEASES", 65_000);
    let mut lab = Lab::builder().hosts(2).build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(CONFIG);
    // Node 0 takes its lease and gets a pod, then stops (its lease stays); node 1 is the
    // real peer it must reach.
    let a = WeftNode::start_with_pod(&mut lab, 0, &etcd, &[]);
    let b = WeftNode::start_with_pod(&mut lab, 1, &etcd, &[]);
    harness::ping_all_pairs(&lab);
    let _ = a.stop();

    let t = Instant::now();
    harness::bulk::apply(lab.segment(0), &etcd, 200..200 + n, false);
    eprintln!("{n} leases written in {:.1} s", t.elapsed().as_secs_f64());
    // Node 1 learns them all before node 0 starts, so the peer is ready.
    let learned = harness::wait_until(Duration::from_secs(60), || {
        b.metric("weft_leases") >= u64::from(n)
    });
    assert!(learned.is_some(), "node 1 did not learn the leases");

    let (pa, pb) = (lab.host(0).pod(0), lab.host(1).pod(0));
    let dst = pb.addr().to_string();
    // No -w: with a deadline, ping stops at the first error (net unreachable while the node
    // is down). It runs until SIGINT.
    let ping = pa.spawn(&["ping", "-n", "-D", "-i", "0.01", &dst]);
    std::thread::sleep(Duration::from_millis(200));
    let started = epoch_secs();
    let node = StartingWeft::spawn(lab.host(0), etcd.endpoint(), &[]);
    let up = harness::wait_until(Duration::from_secs(20), || {
        node.get("/status").is_some_and(|(code, _)| code == 200)
    });
    if up.is_none() {
        let (_, log) = node.stop();
        panic!("node 0 never served /status:\n{log}");
    }
    std::thread::sleep(Duration::from_secs(3));
    let pid = node.pid().expect("running");
    let (rss, hwm) = rss_kib(pid);
    let leases = node
        .get("/metrics")
        .and_then(|(_, m)| weft::ops::metrics::sample(&m, "weft_leases"))
        .unwrap_or(0);
    // SIGINT: ping flushes what it printed (its stdout is a pipe, block-buffered) and exits.
    ping.signal(libc::SIGINT);
    let out = ping.output_within(Duration::from_secs(5));
    let text = String::from_utf8_lossy(&out.stdout);
    let first = first_reply(&text).map(|at| at - started);
    eprintln!(
        "start on {leases} leases: /status after {:.3} s, first forwarded ping after {}, \
         RSS {:.1} MiB (peak {:.1} MiB)",
        up.map_or(0.0, |d| d.as_secs_f64()),
        first.map_or("none".to_string(), |s| format!("{s:.3} s")),
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
    );
    assert!(
        first.is_some(),
        "no ping got through:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(leases >= u64::from(n), "node 0 holds {leases} leases");
    // Where the start-up time went: the node's own milestones.
    let (_, log) = node.stop();
    for line in log
        .lines()
        .filter(|l| MILESTONES.iter().any(|m| l.contains(m)))
    {
        eprintln!("  {line}");
    }
    drop(b);
}

/// Not a check: what single-lease events cost the node. A writer puts `WEFT_SCALE_EVENTS`
/// (default 10,000) leases one by one, as joins arrive in a large cluster, then deletes them
/// one by one; prints the node's CPU seconds for each and how long the writer took.
/// `WEFT_SCALE_BASE` leases are put in bulk first (each publish rebuilds the table of all).
/// `WEFT_BIN=target/release/weft cargo nextest run --profile ci --run-ignored only -E 'test(single_lease)' --no-capture`
#[test]
#[ignore = "measurement; prints numbers"]
fn measure_single_lease_events() {
    require_root();
    let n: u32 = env_u32("WEFT_SCALE_EVENTS", 10_000);
    // Leases already there (in bulk) before the single events: what each publish rebuilds.
    let base: u32 = env_u32("WEFT_SCALE_BASE", 0);
    let mut lab = Lab::builder().hosts(2).build();
    let etcd = Etcd::start_in(lab.segment(0));
    // The node's own subnet clear of the fake leases (10.0.200.0 to 10.253.x.0).
    etcd.put_config(
        r#"{"Network":"10.0.0.0/8","SubnetLen":24,"SubnetMin":"10.254.0.0","Backend":{"Type":"vxlan"}}"#,
    );
    let a = WeftNode::start_with_pod(&mut lab, 0, &etcd, &[]);
    let pid = a.pid().expect("running");
    // Fake lease i is 10.<i / 256>.<i % 256>.0/24: the events take 200.., the base 11,000..
    assert!(
        n <= 10_000 && base <= 54_000,
        "at most 10,000 events beside 54,000 leases"
    );
    if base > 0 {
        harness::bulk::apply(lab.segment(0), &etcd, 11_000..11_000 + base, false);
        let seen = harness::wait_until(Duration::from_secs(120), || {
            a.metric("weft_leases") == u64::from(base)
        });
        assert!(seen.is_some(), "the {base} leases never arrived");
    }
    for (what, delete) in [("puts", false), ("deletes", true)] {
        let cpu0 = harness::process_cpu_secs(pid);
        let t = Instant::now();
        harness::bulk::one_by_one(lab.segment(0), &etcd, 200..200 + n, delete);
        let wrote = t.elapsed().as_secs_f64();
        let want = u64::from(base) + if delete { 0 } else { u64::from(n) };
        let caught =
            harness::wait_until(Duration::from_secs(120), || a.metric("weft_leases") == want);
        let cpu = harness::process_cpu_secs(pid) - cpu0;
        eprintln!(
            "{n} single-lease {what} beside {base} leases: writer {wrote:.1} s, node caught up {:.1} s after, node CPU {cpu:.2} s",
            caught.map_or(f64::NAN, |d| d.as_secs_f64())
        );
    }
    drop(a);
}
