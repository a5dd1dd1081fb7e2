//! The systemd unit: `systemd-analyze verify` accepts it (with ExecStart pointed at the
//! binary under test), `make install` puts every file where the unit and its
//! Documentation= say (and the installed unit verifies too), and `weft run` sends READY=1 to
//! NOTIFY_SOCKET once ready and STOPPING=1 on SIGTERM (Type=notify). tests/unit_user.rs runs
//! weft with the unit's user, capabilities, credentials and iptables lock.

mod harness;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use harness::{require_root, weft_bin, Etcd, Lab, WeftNode, VXLAN_CONFIG};

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
    // The two setups of DESIGN.md's unit findings: TLS keys as credentials, legacy iptables'
    // lock writable inside ProtectSystem=strict.
    assert!(unit.contains("LoadCredential=etcd:/etc/weft/tls"));
    assert!(unit.contains("ReadWritePaths=-/run/xtables.lock"));
    assert!(!unit.contains("DynamicUser=yes"));
    let env = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/weft.env.example"
    ))
    .expect("systemd/weft.env.example");
    for cred in ["etcd_ca.pem", "etcd_cert.pem", "etcd_key.pem"] {
        assert!(
            env.contains(&format!("=/run/credentials/weft.service/{cred}")),
            "{cred}"
        );
    }
    verify(&unit);
}

/// `systemd-analyze verify` of `unit` with ExecStart= pointed at the binary under test.
fn verify(unit: &str) {
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
fn make_install_puts_every_file_where_the_unit_says() {
    let root = tempfile::tempdir().unwrap();
    let out = Command::new("make")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("--no-print-directory")
        .arg("install")
        .arg(format!("DESTDIR={}", root.path().display()))
        .arg(format!("BIN={}", weft_bin()))
        .output()
        .expect("run make");
    assert!(
        out.status.success(),
        "make install:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let at = |p: &str| root.path().join(p.trim_start_matches('/'));
    for (path, mode) in [
        ("/usr/local/bin/weft", 0o755),
        ("/etc/systemd/system/weft.service", 0o644),
        ("/etc/weft/weft.env.example", 0o644),
        ("/etc/weft/tls", 0o700),
        ("/usr/local/share/doc/weft/README.md", 0o644),
        ("/usr/local/share/doc/weft/docs/operations.md", 0o644),
    ] {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(at(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(meta.permissions().mode() & 0o7777, mode, "{path}");
    }
    let unit = std::fs::read_to_string(at("/etc/systemd/system/weft.service")).unwrap();
    // Every file:// in Documentation= and the ExecStart= binary are installed files.
    for line in unit.lines() {
        if let Some(doc) = line.strip_prefix("Documentation=") {
            for url in doc.split_whitespace() {
                let path = url.strip_prefix("file://").expect("a file:// URL");
                assert!(at(path).is_file(), "Documentation= {url} is not installed");
            }
        }
        if let Some(cmd) = line.strip_prefix("ExecStart=") {
            let bin = cmd.split_whitespace().next().unwrap();
            assert!(at(bin).is_file(), "ExecStart= {bin} is not installed");
        }
    }
    verify(&unit);
    // flanneld and weft never run together on a node: starting one stops the other.
    assert!(unit.contains("\nConflicts=flanneld.service\n"), "{unit}");

    // PREFIX moves the binary and the README, and the unit follows.
    let other = tempfile::tempdir().unwrap();
    let out = Command::new("make")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["--no-print-directory", "install", "PREFIX=/opt/weft"])
        .arg(format!("DESTDIR={}", other.path().display()))
        .arg(format!("BIN={}", weft_bin()))
        .output()
        .expect("run make");
    assert!(out.status.success());
    let unit =
        std::fs::read_to_string(other.path().join("etc/systemd/system/weft.service")).unwrap();
    assert!(unit.contains("ExecStart=/opt/weft/bin/weft run"), "{unit}");
    assert!(
        unit.contains("ExecReload=/opt/weft/bin/weft run --takeover --detach"),
        "{unit}"
    );
    assert!(
        unit.contains("Documentation=file:///opt/weft/share/doc/weft/README.md"),
        "{unit}"
    );
    assert!(other.path().join("opt/weft/bin/weft").is_file());
    assert!(other
        .path()
        .join("opt/weft/share/doc/weft/README.md")
        .is_file());
}

#[test]
fn ready_and_stopping_are_notified() {
    require_root();
    let lab = Lab::builder().hosts(1).build();
    let etcd = Etcd::start_in(lab.segment(0));
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
    assert!(msg.contains(&node.subnet.addr().to_string()), "{msg}");
    let (status, _) = node.stop();
    assert!(status.success());
    let n = sock.recv(&mut buf).expect("STOPPING notification");
    assert_eq!(&buf[..n], b"STOPPING=1");
}

/// With systemd's watchdog on (`WATCHDOG_USEC`), the node pings it (`WATCHDOG=1`) about once
/// a second while its data path makes progress, idle as it is here.
#[test]
fn the_watchdog_is_fed_while_the_data_path_runs() {
    require_root();
    let lab = Lab::builder().hosts(1).build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(VXLAN_CONFIG);
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let env = format!("NOTIFY_SOCKET={}", sock_path.display());
    let node = WeftNode::start_with_env(lab.host(0), &etcd, &[&env, "WATCHDOG_USEC=3000000"], &[]);
    let mut buf = [0u8; 512];
    let start = std::time::Instant::now();
    let mut pings = 0;
    while start.elapsed() < Duration::from_secs(5) {
        let n = sock.recv(&mut buf).expect("a notification");
        if &buf[..n] == b"WATCHDOG=1" {
            pings += 1;
        }
    }
    let (status, log) = node.stop();
    assert!(status.success());
    assert!(
        (3..=7).contains(&pings),
        "{pings} watchdog pings in 5 s:\n{log}"
    );
    assert!(log.contains("systemd watchdog"), "{log}");
}
