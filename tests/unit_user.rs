//! weft run the way systemd/weft.service runs it: uid 0 holding only CAP_NET_ADMIN and
//! CAP_NET_RAW (what AmbientCapabilities=/CapabilityBoundingSet= leave it, applied here with
//! `setpriv`), a TLS-only etcd whose client key is root-owned 0600 and reached through a
//! credentials-style copy (what LoadCredential= makes), and `--ip-masq`; once on
//! iptables-legacy and once on iptables-nft, chosen by a directory of `iptables*` symlinks
//! first in weft's PATH. Plus the reason the unit is not DynamicUser=: a non-root uid with
//! the same capabilities cannot take legacy iptables' lock.

mod harness;

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::{require_root, Etcd, Lab, WeftNode, VXLAN_CONFIG};

/// The unit's capabilities, as setpriv spells them.
const CAPS: &str = "-all,+net_admin,+net_raw";
/// CAP_NET_ADMIN (12) and CAP_NET_RAW (13) as a /proc/<pid>/status mask.
const CAP_MASK: u64 = (1 << 12) | (1 << 13);

/// A directory whose `iptables`, `iptables-restore` and `iptables-save` are the `backend`
/// ("legacy" or "nft") variants; `None` when this machine lacks them.
fn backend_dir(backend: &str) -> Option<tempfile::TempDir> {
    let dir = tempfile::tempdir().expect("backend dir");
    for tool in ["iptables", "iptables-restore", "iptables-save"] {
        let variant = tool.replacen("iptables", &format!("iptables-{backend}"), 1);
        let target = ["/usr/sbin", "/sbin", "/usr/bin"]
            .iter()
            .map(|d| Path::new(d).join(&variant))
            .find(|p| p.exists())?;
        symlink(&target, dir.path().join(tool)).expect("symlink");
    }
    Some(dir)
}

/// Copies the client files as LoadCredential= does: a directory only the service's user
/// (root) may enter, files 0400; returns (ca, cert, key) paths inside it.
fn credentials(etcd: &Etcd, dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let tls = etcd.tls().expect("TLS etcd");
    // The original key as an admin keeps it: root-owned, 0600.
    std::fs::set_permissions(&tls.key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let creds = dir.join("weft.service");
    std::fs::create_dir(&creds).unwrap();
    let mut out = Vec::new();
    for (src, name) in [
        (&tls.ca, "etcd_ca.pem"),
        (&tls.cert, "etcd_cert.pem"),
        (&tls.key, "etcd_key.pem"),
    ] {
        let dst = creds.join(name);
        std::fs::copy(src, &dst).unwrap();
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o400)).unwrap();
        out.push(dst);
    }
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o500)).unwrap();
    (out[0].clone(), out[1].clone(), out[2].clone())
}

/// A capability mask line (`CapEff:`) of a process.
fn cap_mask(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("{field} missing in /proc/{pid}/status"))
        .trim();
    u64::from_str_radix(hex, 16).unwrap()
}

fn as_the_unit(backend: &str) {
    require_root();
    let Some(bin) = backend_dir(backend) else {
        eprintln!("skipped: iptables-{backend} is not installed (apt-get install iptables)");
        return;
    };
    let mut lab = Lab::builder().hosts(2).build();
    let etcd = Etcd::start_tls_in(lab.segment(0));
    etcd.put_config(VXLAN_CONFIG);
    let creds = tempfile::tempdir().unwrap();
    let (ca, cert, key) = credentials(&etcd, creds.path());
    let path = format!(
        "PATH={}:/usr/sbin:/usr/bin:/sbin:/bin",
        bin.path().display()
    );
    let (inh, amb, bset) = (
        format!("--inh-caps={CAPS}"),
        "--ambient-caps=+net_admin,+net_raw".to_string(),
        format!("--bounding-set={CAPS}"),
    );
    let wrapper = ["setpriv", &inh, &amb, &bset, "--no-new-privs", "--"];
    let (ca, cert, key) = (
        format!("-etcd-cafile={}", ca.display()),
        format!("-etcd-certfile={}", cert.display()),
        format!("-etcd-keyfile={}", key.display()),
    );
    let extra = ["--ip-masq", &ca, &cert, &key];
    let mut nodes = Vec::new();
    for i in 0..2 {
        let node = WeftNode::start_wrapped(lab.host(i), &etcd, &[&path], &wrapper, &extra);
        lab.host_mut(i).add_pod_with_mtu(node.subnet, node.mtu);
        nodes.push(node);
    }

    // The process holds exactly the unit's capabilities.
    for n in &nodes {
        let pid = n.pid().expect("running");
        for field in ["CapEff:", "CapPrm:", "CapBnd:"] {
            assert_eq!(
                cap_mask(pid, field),
                CAP_MASK,
                "{field} of weft ({backend})"
            );
        }
    }

    // Its masquerade chains went through the chosen backend.
    let nat = lab.host(0).exec(&[
        &format!("iptables-{backend}"),
        "-w",
        "5",
        "-t",
        "nat",
        "-S",
        "FLANNEL-POSTRTG",
    ]);
    let nat = String::from_utf8_lossy(&nat.stdout);
    assert!(
        nat.contains(&format!("-s {} -d 10.1.0.0/16", nodes[0].subnet)),
        "{backend}: {nat}"
    );
    assert!(nat.contains("-j MASQUERADE"), "{backend}: {nat}");

    // Pods on the two nodes reach each other both ways.
    let (pa, pb) = (lab.host(0).pod(0), lab.host(1).pod(0));
    assert!(
        pa.wait_for_ping(pb.addr(), Duration::from_secs(10)),
        "{backend}: pod a -> pod b"
    );
    assert!(
        pb.ping(pa.addr(), 3).all_replied(),
        "{backend}: pod b -> pod a"
    );
    for n in &nodes {
        assert!(n.http("/readyz").is_some(), "{backend}: not ready");
    }
    for n in nodes {
        let (status, stderr) = n.stop();
        assert!(status.success(), "{backend}: {status}\n{stderr}");
    }
}

#[test]
fn unit_user_on_iptables_legacy() {
    as_the_unit("legacy");
}

#[test]
fn unit_user_on_iptables_nft() {
    as_the_unit("nft");
}

/// Why the unit runs as uid 0 without capabilities rather than DynamicUser=: with the same
/// capabilities a non-root uid cannot open the root-owned 0600 /run/xtables.lock (nor create
/// it in /run), so legacy iptables refuses; iptables-nft takes no lock and works.
#[test]
fn non_root_uid_cannot_take_the_legacy_xtables_lock() {
    require_root();
    let lab = Lab::builder().hosts(1).build();
    let host = lab.host(0);
    // Make sure the lock exists as iptables leaves it (root, 0600).
    host.exec(&["iptables-legacy", "-w", "5", "-t", "nat", "-S"]);
    let (inh, bset) = (
        format!("--inh-caps={CAPS}"),
        format!("--bounding-set={CAPS}"),
    );
    let run = |backend: &str| {
        host.exec_unchecked(&[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            &inh,
            "--ambient-caps=+net_admin,+net_raw",
            &bset,
            "--",
            &format!("iptables-{backend}"),
            "-w",
            "5",
            "-t",
            "nat",
            "-S",
        ])
    };
    let legacy = run("legacy");
    assert!(!legacy.status.success(), "legacy iptables worked as nobody");
    assert!(
        String::from_utf8_lossy(&legacy.stderr).contains("lock"),
        "{}",
        String::from_utf8_lossy(&legacy.stderr)
    );
    if backend_dir("nft").is_some() {
        let nft = run("nft");
        assert!(
            nft.status.success(),
            "{}",
            String::from_utf8_lossy(&nft.stderr)
        );
    }
}
