//! End-to-end: set-up mistakes that used to hang weft, blow up its memory or fail with a
//! message that did not say what was wrong. A subnet file that is a FIFO or a link to
//! /dev/zero is never read (the start neither hangs nor grows; SIGTERM stops it) and is
//! replaced by the lease's file; a tap or a bridge holding the TUN's name, and an -iface
//! without an IPv4 address, are named with their fix; `weft doctor` names a peer lease of
//! another VNI. Every interface is made inside a lab host's namespace. Needs root.

mod harness;

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use harness::{
    doctor_line, ops_get, require_root, weft_bin, Etcd, Host, Lab, Proc, WeftNode, OPS_PORT,
    VXLAN_CONFIG,
};

/// How long a start (etcd there, config there) may take before the test calls it hung.
const START: Duration = Duration::from_secs(15);

/// The most RSS a starting node may reach (it peaks around 40 MiB on this lab; reading
/// /dev/zero went past 2 GiB in 3 s).
const MAX_RSS_KIB: u64 = 200 * 1024;

/// `weft run` in `host` against `etcd` with `subnet_file` and `extra` flags, the ops server
/// on 127.0.0.1:[`OPS_PORT`]; not waited for.
fn spawn_weft(host: &Host, etcd: &Etcd, subnet_file: &Path, extra: &[&str]) -> Proc {
    let ep = format!("-etcd-endpoints={}", etcd.endpoint());
    let sf = format!("-subnet-file={}", subnet_file.display());
    let port = format!("--healthz-port={OPS_PORT}");
    let mut argv = vec![
        "env",
        "RUST_LOG=weft=debug",
        weft_bin(),
        "run",
        &ep,
        &sf,
        "--healthz-ip=127.0.0.1",
        &port,
    ];
    if !extra.iter().any(|f| f.starts_with("-iface")) {
        argv.push("-iface=eth0");
    }
    argv.extend_from_slice(extra);
    host.spawn(&argv)
}

/// Whether `path` is now a regular file holding a subnet.env (never opened while it is
/// anything else: the old code under test would hang on a FIFO here too).
fn written(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file())
        && weft::store::SubnetEnv::read(path).is_ok()
}

/// `VmRSS` of `pid` in KiB, `None` once it is gone.
fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Waits up to [`START`] until the node serves /status with its subnet file written,
/// SIGKILLing it at once if its RSS passes [`MAX_RSS_KIB`] (checked every 20 ms); the
/// largest RSS seen, or why not.
fn wait_up(p: &mut Proc, ns: &str, subnet_file: &Path) -> Result<u64, String> {
    let end = Instant::now() + START;
    let mut peak = 0;
    let mut next_probe = Instant::now();
    loop {
        if let Some(rss) = rss_kib(p.pid()) {
            peak = peak.max(rss);
            if rss > MAX_RSS_KIB {
                p.signal(libc::SIGKILL);
                return Err(format!("RSS reached {rss} KiB while starting"));
            }
        }
        if !p.is_running() {
            return Err("weft exited while starting".into());
        }
        if Instant::now() >= next_probe {
            if written(subnet_file) && ops_get(ns, "/status").is_some_and(|(c, _)| c == 200) {
                return Ok(peak);
            }
            next_probe = Instant::now() + Duration::from_millis(250);
        }
        if Instant::now() > end {
            return Err(format!("not up within {START:?} (hung?)"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM, then how it ended within 3 s (`None`: still running, SIGKILLed) and its log.
fn sigterm(mut p: Proc) -> (Option<ExitStatus>, Duration, String) {
    let start = Instant::now();
    p.signal(libc::SIGTERM);
    let status = p.wait_timeout(Duration::from_secs(3));
    let took = start.elapsed();
    if status.is_none() {
        p.signal(libc::SIGKILL);
    }
    let log = String::from_utf8_lossy(&p.stop().stderr).into_owned();
    (status, took, log)
}

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o644))
        .unwrap_or_else(|e| panic!("mkfifo {}: {e}", path.display()));
}

/// A lab of one host with etcd and the vxlan config, and a temporary directory for files.
fn one_host() -> (Lab, Etcd, tempfile::TempDir) {
    let lab = Lab::builder().hosts(1).build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(VXLAN_CONFIG);
    (lab, etcd, tempfile::tempdir().expect("tempdir"))
}

/// A FIFO at -subnet-file: the node starts (the FIFO is not read for a previous subnet, and
/// the lease's file replaces it) and SIGTERM stops it with exit 0; SIGTERM early in a start
/// with a FIFO there also stops it with exit 0 (the old code hung in open(2) and ignored it).
#[test]
fn a_fifo_subnet_file_does_not_hang_the_start() {
    require_root();
    let (lab, etcd, dir) = one_host();
    let host = lab.host(0);

    let fifo = dir.path().join("subnet.env");
    mkfifo(&fifo);
    let mut p = spawn_weft(host, &etcd, &fifo, &[]);
    let up = wait_up(&mut p, host.name(), &fifo);
    let (status, took, log) = sigterm(p);
    let peak = up.unwrap_or_else(|e| panic!("with a FIFO subnet file: {e}:\n{log}"));
    eprintln!("FIFO subnet file: up, peak RSS {peak} KiB; SIGTERM to exit in {took:?}");
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM: {status:?}\n{log}"
    );
    assert!(
        log.contains(&format!(
            "subnet file {} is a FIFO, not a regular file",
            fifo.display()
        )),
        "the FIFO is not named in the log:\n{log}"
    );
    assert!(log.contains("replacing it with one"), "{log}");
    assert!(std::fs::symlink_metadata(&fifo).unwrap().is_file());

    // SIGTERM one second into a start with a FIFO there: exit 0, promptly.
    let fifo = dir.path().join("early").join("subnet.env");
    std::fs::create_dir_all(fifo.parent().unwrap()).unwrap();
    mkfifo(&fifo);
    let p = spawn_weft(host, &etcd, &fifo, &[]);
    std::thread::sleep(Duration::from_secs(1));
    let (status, took, log) = sigterm(p);
    eprintln!("FIFO subnet file: SIGTERM 1 s into the start to exit in {took:?}");
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM during the start: {status:?} after {took:?}\n{log}"
    );
}

/// -subnet-file a symbolic link to /dev/zero: the node starts with a small RSS (the device is
/// never read), the link is replaced by the lease's file and /dev/zero is left alone.
#[test]
fn a_subnet_file_linked_to_dev_zero_is_not_read() {
    require_root();
    let (lab, etcd, dir) = one_host();
    let host = lab.host(0);
    let link: PathBuf = dir.path().join("subnet.env");
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    let mut p = spawn_weft(host, &etcd, &link, &[]);
    let up = wait_up(&mut p, host.name(), &link);
    let (status, _, log) = sigterm(p);
    let peak = up.unwrap_or_else(|e| panic!("with a subnet file linked to /dev/zero: {e}:\n{log}"));
    eprintln!("/dev/zero subnet file: up, peak RSS {peak} KiB");
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{log}");
    assert!(
        log.contains("is a character device, not a regular file"),
        "{log}"
    );
    assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata("/dev/zero")
        .unwrap()
        .file_type()
        .is_char_device());
}

/// Starts weft in `host` and returns its exit status and log once it exits by itself
/// (within [`START`]; a node still running then fails the test).
fn start_expecting_failure(host: &Host, etcd: &Etcd, dir: &Path, extra: &[&str]) -> String {
    let mut p = spawn_weft(host, etcd, &dir.join("subnet.env"), extra);
    let status = p.wait_timeout(START);
    let log = String::from_utf8_lossy(&p.stop().stderr).into_owned();
    assert!(
        status.is_some_and(|s| !s.success()),
        "expected weft to fail at start: {status:?}\n{log}"
    );
    log
}

/// A tap, then a bridge, named like the TUN (weft0): the error says an interface of that name
/// exists, what it is, and the fix (the old one: `TUNSETIFF weft0 failed: Invalid argument`).
#[test]
fn a_tap_or_bridge_holding_the_tun_name_is_named() {
    require_root();
    let (lab, etcd, dir) = one_host();
    let host = lab.host(0);
    host.ip(&["tuntap", "add", "dev", "weft0", "mode", "tap"]);
    let log = start_expecting_failure(host, &etcd, dir.path(), &[]);
    assert!(
        log.contains("an interface named weft0 exists and is a TAP device, not a TUN device"),
        "{log}"
    );
    assert!(
        log.contains("pass --tun-name=<another name>, or delete it (ip link delete weft0)"),
        "{log}"
    );
    assert!(
        !log.contains("multi-queue TUN refused"),
        "a tap is not a queue-mode mismatch:\n{log}"
    );
    host.ip(&["link", "delete", "weft0"]);

    host.ip(&["link", "add", "weft0", "type", "bridge"]);
    let log = start_expecting_failure(host, &etcd, dir.path(), &[]);
    assert!(
        log.contains("an interface named weft0 exists and is a bridge, not a TUN device"),
        "{log}"
    );
    host.ip(&["link", "delete", "weft0"]);
}

/// -iface of an interface with no IPv4 address (a veth end: this lab's kernel has no dummy
/// driver): the error says the interface exists but has no IPv4 address, and the fixes (the
/// old one: none of --iface names a local interface).
#[test]
fn an_iface_without_ipv4_is_named_with_the_fix() {
    require_root();
    let (lab, etcd, dir) = one_host();
    let host = lab.host(0);
    host.ip(&[
        "link", "add", "wtdummy0", "type", "veth", "peer", "name", "wtdummy1",
    ]);
    host.ip(&["link", "set", "wtdummy0", "up"]);
    let log = start_expecting_failure(host, &etcd, dir.path(), &["-iface=wtdummy0"]);
    assert!(
        log.contains("--iface wtdummy0: the interface exists but has no IPv4 address"),
        "{log}"
    );
    assert!(
        log.contains("ip addr add <address>/<length> dev wtdummy0"),
        "{log}"
    );
    assert!(log.contains("--public-ip="), "{log}");
    // A name no interface has keeps its own message.
    let log = start_expecting_failure(host, &etcd, dir.path(), &["-iface=wtnone0"]);
    assert!(log.contains("none of --iface"), "{log}");
}

/// A mixed cluster mid-change: B took its lease with Backend.VNI 2, then the config went to
/// VNI 1 and A started. `weft doctor` on A names B's lease and its VNI, with the fix; doctor on
/// B names B's own lease (B is the odd node).
#[test]
fn doctor_names_a_peer_lease_of_another_vni() {
    require_root();
    let lab = Lab::builder().hosts(2).build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan","VNI":2}}"#);
    let b = WeftNode::start(lab.host(1), &etcd, &[]);
    etcd.put_config(VXLAN_CONFIG);
    let a = WeftNode::start(lab.host(0), &etcd, &[]);
    let b_key = format!("{}-{}", b.subnet.addr(), b.subnet.prefix_len());
    assert!(
        etcd.lease(b.subnet)
            .is_some_and(|r| r.contains(r#""VNI":2"#)),
        "B's lease: {:?}",
        etcd.lease(b.subnet)
    );

    let (ok, report) = a.doctor(etcd.endpoint());
    assert!(!ok, "doctor passed a mixed-VNI cluster:\n{report}");
    let vni = doctor_line(&report, "vni");
    assert!(vni.starts_with("FAIL"), "{report}");
    assert!(
        vni.contains("another VNI than the network config's Backend.VNI 1"),
        "{report}"
    );
    assert!(
        vni.contains(&format!("{b_key} (BackendData.VNI 2)")),
        "{report}"
    );
    let a_key = format!("{}-{}", a.subnet.addr(), a.subnet.prefix_len());
    assert!(!vni.contains(&a_key), "A runs the config's VNI:\n{report}");
    assert!(
        report.contains(
            "fix: make Backend.VNI the same everywhere: restart the nodes of those leases"
        ),
        "{report}"
    );

    let (_, report) = b.doctor(etcd.endpoint());
    let vni = doctor_line(&report, "vni");
    assert!(vni.contains(&b_key), "{report}");

    // The running node A says so too: a metric, a /status entry, a warning in its log.
    assert_eq!(a.metric("weft_leases_other_vni"), 1);
    let status = a.http("/status").expect("/status");
    let doc: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    let odd = &doc["other_vni"];
    assert_eq!(odd.as_array().map(Vec::len), Some(1), "{status}");
    assert!(
        odd[0]["key"].as_str().is_some_and(|k| k.ends_with(&b_key)),
        "{status}"
    );
    assert_eq!(odd[0]["vni"], 2, "{status}");
    // B's record put again with the config's VNI (as B's node would after a restart): A
    // counts it no more.
    let b_subnet = b.subnet;
    drop(b);
    let record = etcd.lease(b_subnet).expect("B's lease");
    etcd.put_lease(b_subnet, &record.replace(r#""VNI":2"#, r#""VNI":1"#), 600);
    let gone = harness::wait_until(Duration::from_secs(10), || {
        a.metric("weft_leases_other_vni") == 0
    });
    assert!(gone.is_some(), "still counted after B's record says VNI 1");
    let log = a.stop().1;
    assert!(
        log.contains("a lease names another VNI than this node's Backend.VNI"),
        "{log}"
    );
}
