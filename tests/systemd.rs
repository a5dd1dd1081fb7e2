//! The systemd unit: `systemd-analyze verify` accepts it (with ExecStart pointed at the
//! binary under test), and `weft run` sends READY=1 to NOTIFY_SOCKET once ready and
//! STOPPING=1 on SIGTERM (Type=notify).

mod harness;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use harness::netns::{require_root, Lab};
use harness::weft::{weft_bin, NsEtcd, WeftNode, VXLAN_CONFIG};

#[test]
fn unit_file_verifies() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("systemd-analyze missing: apt-get install systemd (scripts/deps.sh does)");
    }
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/weft.service"))
            .expect("systemd/weft.service");
    assert!(unit.contains("Type=notify"));
    assert!(unit.contains("AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weft.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/weft", weft_bin())).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("run systemd-analyze");
    let err = String::from_utf8_lossy(&out.stderr);
    // Only complaints about this unit count (the host's other units are not ours to judge).
    let ours: Vec<&str> = err.lines().filter(|l| l.contains("weft.service")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify:\n{err}"
    );
}

#[test]
fn ready_and_stopping_are_notified() {
    require_root();
    let lab = Lab::builder().hosts(1).build();
    let etcd = NsEtcd::start(lab.segment(0));
    etcd.put_config(VXLAN_CONFIG);
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let env = format!("NOTIFY_SOCKET={}", sock_path.display());
    let node = WeftNode::start_with_env(lab.host(0), &etcd, &[&env], &[]);
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("READY notification");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.starts_with("READY=1"), "{msg}");
    assert!(msg.contains(&node.subnet.network().to_string()), "{msg}");
    let (status, _) = node.stop();
    assert!(status.success());
    let n = sock.recv(&mut buf).expect("STOPPING notification");
    assert_eq!(&buf[..n], b"STOPPING=1");
}
