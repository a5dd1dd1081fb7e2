//! End-to-end: a node comes back without etcd. It keeps its last good state (config, own
//! lease, lease table) in a state file; killed with SIGKILL while etcd is frozen (SIGSTOP),
//! it starts again and forwards from that state at once, and when etcd answers again it
//! still holds the same lease. A state file that is damaged, from another network or node,
//! expired, or not a regular file is refused with a log line, and the node starts from etcd
//! as usual. Needs root.

mod harness;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harness::{
    ping_all_pairs, require_root, wait_until, Etcd, Lab, Netns, Proc, StartingWeft, WeftNode,
    PREFIX, VXLAN_CONFIG,
};
use weft::store::state::SavedState;

/// Freezes a process with SIGSTOP; SIGCONT when dropped, on every path.
struct Frozen(u32);

impl Frozen {
    fn new(pid: u32) -> Frozen {
        signal(pid, libc::SIGSTOP);
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(self.0, libc::SIGCONT);
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) with plain integers, on a process this test started.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

fn epoch_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A ping stream (`ping -D`, every 10 ms) from `pod` to `dst`, stopped with SIGINT.
fn ping_stream(pod: &Netns, dst: std::net::Ipv4Addr) -> Proc {
    pod.spawn(&["ping", "-n", "-D", "-i", "0.01", &dst.to_string()])
}

/// Stops a [`ping_stream`]: the epoch times of its replies.
fn replies(ping: Proc) -> Vec<f64> {
    ping.signal(libc::SIGINT);
    let out = ping.output_within(Duration::from_secs(5));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect()
}

/// `/status`'s `node.etcd_up`.
fn etcd_up(status: &str) -> Option<bool> {
    let v: serde_json::Value = serde_json::from_str(status).ok()?;
    v["node"]["etcd_up"].as_bool()
}

/// The value of `key` in etcd.
fn lease_value(etcd: &Etcd, key: &str) -> Option<String> {
    etcd.get(key)
}

#[test]
fn sigkill_with_etcd_frozen_forwards_from_the_state_file() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("weft.state");
    let flag = format!("--state-file={}", state.display());
    let mut lab = Lab::builder().hosts(2).build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(VXLAN_CONFIG);
    let a = WeftNode::start_with_pod(&mut lab, 0, &etcd, &[&flag]);
    let _b = WeftNode::start_with_pod(&mut lab, 1, &etcd, &[]);
    ping_all_pairs(&lab);
    let key = format!("{PREFIX}/subnets/{}", a.subnet.key_string());
    let record = lease_value(&etcd, &key).expect("a's lease");
    // The state is written within a few seconds of a change; wait until it holds b.
    let saved = wait_until(Duration::from_secs(10), || {
        SavedState::read(&state)
            .ok()
            .flatten()
            .is_some_and(|s| s.leases.len() == 1)
    });
    assert!(
        saved.is_some(),
        "no state file with b's lease at {}",
        state.display()
    );

    let frozen = Frozen::new(etcd.pid().expect("etcd runs"));
    let mut a = a;
    a.signal(libc::SIGKILL);
    assert!(
        a.wait_exit(Duration::from_secs(5)).is_some(),
        "a did not die"
    );
    let (pa, pb) = (lab.host(0).pod(0), lab.host(1).pod(0));
    let ping = ping_stream(pa, pb.addr());
    std::thread::sleep(Duration::from_millis(300));
    let started = epoch_secs();
    let again = StartingWeft::spawn(lab.host(0), etcd.endpoint(), &[&flag]);
    std::thread::sleep(Duration::from_secs(2));
    let got = replies(ping);
    let first = got
        .iter()
        .copied()
        .find(|&t| t > started)
        .map(|t| t - started);
    eprintln!(
        "SIGKILL, etcd frozen: first forwarded ping {} after the start",
        first.map_or("never".into(), |s| format!("{:.0} ms", s * 1000.0))
    );
    assert!(
        first.is_some_and(|s| s < 1.0),
        "no ping forwarded within 1 s of the start with etcd frozen ({first:?})"
    );
    let (code, body) = again.get("/status").expect("status answers");
    assert_eq!(code, 200, "{body}");
    assert_eq!(etcd_up(&body), Some(false), "{body}");

    // etcd comes back: the node reconciles and keeps its lease.
    drop(frozen);
    let up = wait_until(Duration::from_secs(20), || {
        again
            .get("/status")
            .is_some_and(|(_, b)| etcd_up(&b) == Some(true))
    });
    assert!(up.is_some(), "the node never saw etcd again");
    let kept = lease_value(&etcd, &key).expect("a's lease is still in etcd");
    let ip = |r: &str| r.split("\"PublicIP\":").nth(1).map(|s| s[..16].to_string());
    assert_eq!(
        ip(&kept),
        ip(&record),
        "the same node holds the key: {kept}"
    );
    let others = etcd.list(&format!("{PREFIX}/subnets/"));
    assert_eq!(others.len(), 2, "no second lease for a: {others:?}");
    assert!(pa.ping(pb.addr(), 3).all_replied());
    let (status, log) = again.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("starting from the saved state") && log.contains("etcd reachable again"),
        "{log}"
    );
}

/// Starts a node with `--state-file=<path>` (etcd up): it must come up from etcd and say why
/// the state was not used.
fn refused(lab: &Lab, etcd: &Etcd, path: &Path, why: &str) {
    let flag = format!("--state-file={}", path.display());
    let node = WeftNode::start(lab.host(0), etcd, &[&flag]);
    let (status, log) = node.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("state file not used") && log.contains(why),
        "no refusal naming {why:?} for {}:\n{log}",
        path.display()
    );
    assert!(!log.contains("starting from the saved state"), "{log}");
}

#[test]
fn unusable_state_files_are_refused_with_a_log_line() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("weft.state");
    let mut lab = Lab::builder().hosts(2).build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(VXLAN_CONFIG);
    let _b = WeftNode::start_with_pod(&mut lab, 1, &etcd, &[]);
    let a = WeftNode::start(
        lab.host(0),
        &etcd,
        &[&format!("--state-file={}", good.display())],
    );
    let (status, _) = a.stop();
    assert!(status.success());
    let saved = SavedState::read(&good)
        .expect("readable")
        .expect("written at stop");
    let write = |name: &str, s: &SavedState| {
        let p = dir.path().join(name);
        s.write(&p).expect("write");
        p
    };

    let damaged = dir.path().join("damaged.state");
    let mut bytes = std::fs::read(&good).expect("state");
    let n = bytes.len() - 5;
    bytes[n] ^= 0x01;
    std::fs::write(&damaged, &bytes).expect("write");
    refused(&lab, &etcd, &damaged, "checksum mismatch");

    let foreign = write(
        "foreign.state",
        &SavedState {
            prefix: "/other/network".into(),
            ..saved.clone()
        },
    );
    refused(
        &lab,
        &etcd,
        &foreign,
        "it is for etcd prefix /other/network",
    );

    let mut other = saved.clone();
    other.own.record = other.own.record.replace("192.168.64.10", "192.168.64.99");
    let other = write("other-node.state", &other);
    refused(
        &lab,
        &etcd,
        &other,
        "its lease is for PublicIP 192.168.64.99",
    );

    let mut expired = saved.clone();
    expired.own.expires_unix_ms = 1_000;
    let expired = write("expired.state", &expired);
    refused(&lab, &etcd, &expired, "its lease expired");

    let fifo = dir.path().join("fifo.state");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    refused(&lab, &etcd, &fifo, "not a regular file");
}
