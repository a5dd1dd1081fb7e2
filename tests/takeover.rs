//! End-to-end: `weft run --takeover` replaces a running node without the pod network
//! noticing. Under a 2 ms ping stream and a checksummed TCP transfer the new process takes
//! the running node's TUN queues and sockets: no ping is lost, the transfer arrives intact,
//! the old process exits 0, the lease key and subnet stay, the new process serves /status. A
//! new process that dies after taking the descriptors leaves the old one forwarding; one
//! whose flags do not fit is refused and the old one carries on. Needs root.

mod harness;

use std::time::Duration;

use harness::{
    require_root, tcp_transfer, Etcd, Lab, Netns, Proc, StartingWeft, WeftNode, PREFIX,
    VXLAN_CONFIG,
};

const MB: u64 = 1 << 20;

/// `ping -c <count> -i 0.002` from `pod` to `dst`, in the background.
fn fast_pings(pod: &Netns, dst: std::net::Ipv4Addr, count: u32) -> Proc {
    pod.spawn(&[
        "ping",
        "-n",
        "-q",
        "-i",
        "0.002",
        "-W",
        "2",
        "-c",
        &count.to_string(),
        &dst.to_string(),
    ])
}

/// Waits for a [`fast_pings`] run to end: (transmitted, received).
fn ping_counts(ping: Proc) -> (u32, u32, String) {
    let out = ping.output_within(Duration::from_secs(60));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_default()
        .to_string();
    let num = |word: &str| {
        line.split(',')
            .find(|p| p.contains(word))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (num("transmitted"), num("received"), text)
}

/// Two nodes with pods, node 0 started with `flags`; every pod reaches the other.
fn cluster(flags: &[&str]) -> (Lab, Etcd, WeftNode, WeftNode) {
    let mut lab = Lab::builder().hosts(2).build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(VXLAN_CONFIG);
    let a = WeftNode::start_with_pod(&mut lab, 0, &etcd, flags);
    let b = WeftNode::start_with_pod(&mut lab, 1, &etcd, &[]);
    harness::ping_all_pairs(&lab);
    (lab, etcd, a, b)
}

#[test]
fn a_takeover_under_traffic_loses_no_packet() {
    require_root();
    let flags = ["--workers=2"];
    let (lab, etcd, mut a, _b) = cluster(&flags);
    let key = format!("{PREFIX}/subnets/{}", a.subnet.key_string());
    let record = etcd.get(&key).expect("a's lease");
    let (pa, pb) = (lab.host(0).pod(0), lab.host(1).pod(0));

    let mut flags_new = flags.to_vec();
    flags_new.push("--takeover");
    let (new, transfer, pings) = std::thread::scope(|s| {
        // 2,500 pings 2 ms apart (5 s) from b's pod to a's, and 100 MB from a's pod to b's.
        let pings = fast_pings(pb, pa.addr(), 2500);
        let transfer =
            s.spawn(|| tcp_transfer(pa, pb, pb.addr(), 5201, 100 * MB, Duration::from_secs(120)));
        std::thread::sleep(Duration::from_millis(1500));
        let new = StartingWeft::spawn(lab.host(0), etcd.endpoint(), &flags_new);
        (
            new,
            transfer.join().expect("transfer thread"),
            ping_counts(pings),
        )
    });
    let t = transfer.expect("the transfer completes");
    assert!(t.intact(), "the transfer arrived damaged: {t:?}");
    let (sent, got, text) = pings;
    eprintln!(
        "takeover under traffic: {got} of {sent} pings at 2 ms answered; 100 MB at {:.2} Gbit/s",
        t.gbit_per_s()
    );
    assert_eq!(sent, 2500, "{text}");
    assert_eq!(got, sent, "pings lost across the takeover:\n{text}");

    let exited = a.wait_exit(Duration::from_secs(20));
    let (status, old_log) = exited.expect("the old process exits after the takeover");
    assert!(
        status.success(),
        "the old process exits 0: {status:?}\n{old_log}"
    );
    assert!(
        old_log.contains("handed over to the new process"),
        "{old_log}"
    );
    let mut new = new;
    assert!(new.is_running(), "the new process runs");
    let (code, body) = new.get("/status").expect("the new process serves /status");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&a.subnet.to_string()), "{body}");
    assert_eq!(
        etcd.get(&key).as_deref(),
        Some(record.as_str()),
        "the lease is unchanged"
    );
    assert_eq!(
        etcd.list(&format!("{PREFIX}/subnets/")).len(),
        2,
        "no second lease"
    );
    assert!(pa.ping(pb.addr(), 3).all_replied() && pb.ping(pa.addr(), 3).all_replied());
    let (status, log) = new.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("took over from the running weft"), "{log}");
}

#[test]
fn a_new_process_that_dies_with_the_descriptors_leaves_the_old_one_forwarding() {
    require_root();
    let (lab, etcd, mut a, _b) = cluster(&[]);
    let (pa, pb) = (lab.host(0).pod(0), lab.host(1).pod(0));
    let pings = fast_pings(pb, pa.addr(), 1500);
    std::thread::sleep(Duration::from_millis(500));
    let mut new = StartingWeft::spawn_with_env(
        lab.host(0),
        etcd.endpoint(),
        &["WEFT_TAKEOVER_FAILPOINT=after-devices"],
        &["--takeover"],
    );
    let died = new.wait_exit(Duration::from_secs(20));
    assert!(
        died.is_some_and(|s| !s.success()),
        "the new process fails: {died:?}"
    );
    let (sent, got, text) = ping_counts(pings);
    eprintln!("a failed takeover: {got} of {sent} pings at 2 ms answered");
    assert_eq!(got, sent, "pings lost when the takeover failed:\n{text}");
    assert!(a.is_running(), "the old process carries on");
    assert!(pa.ping(pb.addr(), 3).all_replied() && pb.ping(pa.addr(), 3).all_replied());
    assert!(a.http("/status").is_some());
    let (status, log) = a.stop();
    assert!(status.success(), "{log}");
    assert!(
        log.contains("takeover did not complete: forwarding again"),
        "{log}"
    );
}

#[test]
fn a_takeover_whose_flags_do_not_fit_is_refused_and_the_old_node_carries_on() {
    require_root();
    let (lab, etcd, mut a, _b) = cluster(&[]);
    let mut new = StartingWeft::spawn(
        lab.host(0),
        etcd.endpoint(),
        &["--takeover", "--tun-name=weft9"],
    );
    let done = new.wait_exit(Duration::from_secs(20));
    assert!(done.is_some_and(|s| !s.success()), "refused: {done:?}");
    let (_, log) = new.stop();
    assert!(
        log.contains("forwards through weft0, this one is configured for weft9"),
        "{log}"
    );
    assert!(a.is_running());
    let (pa, pb) = (lab.host(0).pod(0), lab.host(1).pod(0));
    assert!(pa.ping(pb.addr(), 3).all_replied());
    // With nothing to take over, --takeover starts normally.
    let (status, _) = a.stop();
    assert!(status.success());
    let again = WeftNode::start(lab.host(0), &etcd, &["--takeover"]);
    assert!(pa.wait_for_ping(pb.addr(), Duration::from_secs(5)));
    let (status, log) = again.stop();
    assert!(status.success());
    assert!(log.contains("no weft runs for this network"), "{log}");
}

/// `weft run --takeover --detach` (the unit's `ExecReload=`): the command returns 0 once the
/// new node forwards, the node keeps running in the background, the old one has exited 0.
#[test]
fn a_detached_takeover_returns_once_the_new_node_forwards() {
    require_root();
    let (lab, etcd, mut a, _b) = cluster(&[]);
    let before: Vec<u32> = lab.host(0).pids();
    let mut reload = StartingWeft::spawn(lab.host(0), etcd.endpoint(), &["--takeover", "--detach"]);
    let done = reload.wait_exit(Duration::from_secs(30));
    assert!(done.is_some_and(|s| s.success()), "{done:?}");
    // The detached node: the weft process in the namespace that was not there before.
    let is_weft = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "weft")
    };
    let pid = lab
        .host(0)
        .pids()
        .into_iter()
        .filter(is_weft)
        .find(|p| !before.contains(p))
        .expect("the detached node runs");
    let node = Detached(pid);
    let old = a.wait_exit(Duration::from_secs(10));
    assert!(old.as_ref().is_some_and(|(s, _)| s.success()), "{old:?}");
    let (code, body) = harness::ops_get(lab.host(0).name(), "/status").expect("the node serves");
    assert_eq!(code, 200, "{body}");
    let (pa, pb) = (lab.host(0).pod(0), lab.host(1).pod(0));
    assert!(pa.ping(pb.addr(), 3).all_replied());
    drop(node);
    // The command's log (shared with the node until it stopped) says it detached.
    let (_, said) = reload.stop();
    assert!(
        said.contains(&format!("the node (pid {pid}) forwards; detached")),
        "{said}"
    );
}

/// A node started detached, stopped by its pid (SIGTERM, then SIGKILL) when dropped.
struct Detached(u32);

impl Drop for Detached {
    fn drop(&mut self) {
        let alive = |pid: u32| std::path::Path::new(&format!("/proc/{pid}")).exists();
        for sig in [libc::SIGTERM, libc::SIGKILL] {
            // SAFETY: kill(2) with plain integers, on the process this test started.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(self.0 as libc::pid_t, sig);
            }
            for _ in 0..100 {
                if !alive(self.0) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The instance socket is an abstract socket (no file permissions): any process in the
/// namespace can connect. A takeover asked by another user is refused, so a TUN queue (every
/// pod's traffic) never goes to it, and the node carries on.
#[test]
fn a_takeover_asked_by_another_user_is_refused() {
    require_root();
    let (lab, _etcd, mut a, _b) = cluster(&[]);
    let script = format!(
        "import socket\ns=socket.socket(socket.AF_UNIX,socket.SOCK_STREAM)\n\
         s.connect('\\0weft{PREFIX}')\ns.sendall(b'takeover 1\\n')\ns.settimeout(5)\n\
         print(s.recv(4096)[8:].decode())"
    );
    let out = lab.host(0).exec(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        // Debian's python3 (deps.sh installs it), not a shim under root's home.
        "/usr/bin/python3",
        "-c",
        &script,
    ]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("only uid 0 may take this node over"),
        "{said}"
    );
    assert!(a.is_running());
    let (pa, pb) = (lab.host(0).pod(0), lab.host(1).pod(0));
    assert!(pa.ping(pb.addr(), 3).all_replied());
    let (_, log) = a.stop();
    assert!(
        log.contains("takeover asked by another user; refused"),
        "{log}"
    );
}
