//! Network namespaces for tests: the [`Netns`] guard, whose `Drop` stops every process inside
//! it and deletes it (so a panicking test leaves nothing behind), the `ip`/`bridge`/`sysctl`
//! helpers that run inside one, and the sweep that removes namespaces of test runs that were
//! killed before their guards could run.
//!
//! Names carry the test process's pid and a counter ([`unique_prefix`]), so parallel tests
//! never collide and a dead run's namespaces can be told from a live one's.

use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::process::{
    describe, run, run_unchecked, signal, wait_until, Proc, EXEC_TIMEOUT, STOP_GRACE,
};

/// Fails the test with a clear message unless it runs as root with the tools the lab shells
/// out to (`ip`, `bridge`, `ethtool`, `sysctl`, `ping`, `python3`, `iperf3`; scripts/deps.sh
/// installs them).
pub fn require_root() {
    if !weft::sys::is_root() {
        panic!(
            "this test needs root (it creates network namespaces, veth pairs and VXLAN \
             devices): run it as root, e.g. `sudo -E cargo test --test lab`"
        );
    }
    for tool in [
        "ip", "bridge", "ethtool", "sysctl", "ping", "python3", "iperf3",
    ] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "`{tool}` is not installed: run scripts/deps.sh (as root)"
        );
    }
}

/// Names of the network namespaces that exist now (`ip netns list`).
pub fn netns_list() -> Vec<String> {
    let out = run(&["ip", "netns", "list"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// A name prefix no namespace has yet: `wt<pid in hex>-<counter>-`.
pub fn unique_prefix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let pid = std::process::id();
    let existing = netns_list();
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let p = format!("wt{pid:x}-{n}-");
        if !existing.iter().any(|e| e.starts_with(&p)) {
            return p;
        }
    }
}

/// The pid encoded in a lab namespace name (`wt<pid in hex>-<counter>-...`), if it is one.
fn lab_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("wt")?;
    let (pid, rest) = rest.split_once('-')?;
    let (n, _) = rest.split_once('-')?;
    n.parse::<u32>().ok()?;
    u32::from_str_radix(pid, 16).ok()
}

/// Deletes lab namespaces whose creating test process is gone (killed by a runner's timeout
/// or a signal, so no `Drop` ran), stopping what still runs inside them; returns their
/// names. Namespaces of live processes are left alone.
pub fn sweep_stale_labs() -> Vec<String> {
    let mut swept = Vec::new();
    for name in netns_list() {
        let Some(pid) = lab_owner(&name) else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        drop(Netns { name: name.clone() });
        swept.push(name);
    }
    swept
}

/// `ip netns exec <ns> args...`: the command line that runs `args` inside namespace `ns`.
pub fn netns_exec_argv<'a>(ns: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    v
}

/// Runs `ip -n <ns> args...` (checked) and returns its stdout.
pub fn ip_in(ns: &str, args: &[&str]) -> String {
    let mut argv = vec!["ip", "-n", ns];
    argv.extend_from_slice(args);
    String::from_utf8_lossy(&run(&argv).stdout).into_owned()
}

/// Runs `bridge -n <ns> args...` (checked) and returns its stdout.
pub fn bridge_in(ns: &str, args: &[&str]) -> String {
    let mut argv = vec!["bridge", "-n", ns];
    argv.extend_from_slice(args);
    String::from_utf8_lossy(&run(&argv).stdout).into_owned()
}

/// A network namespace this test created; `Drop` stops every process inside it and
/// deletes it.
pub struct Netns {
    name: String,
}

/// `ip netns add name`, panicking on failure; the namespace is not deleted when done (see
/// [`Netns::new`] for one that is).
pub fn netns_add(name: &str) {
    // Parallel first uses of /run/netns can race in iproute2; one retry covers it.
    let mut out = run_unchecked(&["ip", "netns", "add", name], EXEC_TIMEOUT);
    if !out.status.success() && !netns_list().iter().any(|n| n == name) {
        std::thread::sleep(Duration::from_millis(50));
        out = run_unchecked(&["ip", "netns", "add", name], EXEC_TIMEOUT);
    }
    assert!(
        out.status.success(),
        "{}",
        describe(&format!("ip netns add {name}"), &out)
    );
}

impl Netns {
    /// Creates the namespace `name` (with `lo` up); panics if it exists already.
    pub fn new(name: &str) -> Netns {
        netns_add(name);
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn argv<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        netns_exec_argv(&self.name, args)
    }

    /// Runs `args` inside the namespace; panics with stdout/stderr unless it succeeds within
    /// [`EXEC_TIMEOUT`].
    pub fn exec(&self, args: &[&str]) -> Output {
        let out = self.exec_unchecked(args);
        assert!(
            out.status.success(),
            "[netns {}] {}",
            self.name,
            describe(&args.join(" "), &out)
        );
        out
    }

    /// Runs `args` inside the namespace and returns whatever happened (killed after
    /// [`EXEC_TIMEOUT`]).
    pub fn exec_unchecked(&self, args: &[&str]) -> Output {
        self.exec_within(args, EXEC_TIMEOUT)
    }

    /// Runs `args` inside the namespace for at most `timeout`; never panics on failure.
    pub fn exec_within(&self, args: &[&str], timeout: Duration) -> Output {
        run_unchecked(&self.argv(args), timeout)
    }

    /// Starts `args` inside the namespace as a guarded background process.
    pub fn spawn(&self, args: &[&str]) -> Proc {
        Proc::spawn(&self.argv(args))
    }

    /// Calls `f` (weft's library code under test) on a thread of its own that has joined this
    /// namespace: what it reads of the network, and every command it spawns (iptables ...),
    /// is this namespace's. The thread ends with `f`, so the test's own threads never move;
    /// a panic in `f` is the test's.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            let joined = scope.spawn(|| {
                let ns =
                    std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("joining {path}: {e}"));
                f()
            });
            joined
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Runs `ip -n <ns> args...` (checked) and returns its stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        ip_in(&self.name, args)
    }

    /// Runs `ip -n <ns> args...` and reports only whether it succeeded.
    pub fn ip_ok(&self, args: &[&str]) -> bool {
        let mut argv = vec!["ip", "-n", self.name.as_str()];
        argv.extend_from_slice(args);
        run_unchecked(&argv, EXEC_TIMEOUT).status.success()
    }

    /// Runs `bridge -n <ns> args...` (checked) and returns its stdout.
    pub fn bridge(&self, args: &[&str]) -> String {
        bridge_in(&self.name, args)
    }

    /// Sets a sysctl inside the namespace (`key` in dotted or slashed form).
    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")]);
    }

    /// Reads a sysctl inside the namespace.
    pub fn sysctl_get(&self, key: &str) -> String {
        let out = self.exec(&["sysctl", "-n", key]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Pids of the processes whose network namespace is this one.
    pub fn pids(&self) -> Vec<u32> {
        let out = run_unchecked(&["ip", "netns", "pids", &self.name], EXEC_TIMEOUT);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Stops every process inside the namespace: SIGTERM, then SIGKILL after [`STOP_GRACE`].
    /// Only this harness puts processes into its namespaces, so all of them are ours.
    pub fn stop_all(&self) {
        let pids = self.pids();
        if pids.is_empty() {
            return;
        }
        for &p in &pids {
            signal(p, libc::SIGTERM);
        }
        wait_until(STOP_GRACE, || self.pids().is_empty());
        for p in self.pids() {
            signal(p, libc::SIGKILL);
        }
        wait_until(STOP_GRACE, || self.pids().is_empty());
    }

    /// Byte and packet counters of interface `dev` (`ip -s -j link show`).
    pub fn link_stats(&self, dev: &str) -> LinkStats {
        let out = self.ip(&["-s", "-j", "link", "show", "dev", dev]);
        let json: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("[netns {}] ip -j link show {dev}: {e}: {out}", self.name));
        let s = &json[0]["stats64"];
        let n = |dir: &str, k: &str| s[dir][k].as_u64().unwrap_or(0);
        LinkStats {
            rx_bytes: n("rx", "bytes"),
            rx_packets: n("rx", "packets"),
            tx_bytes: n("tx", "bytes"),
            tx_packets: n("tx", "packets"),
        }
    }

    /// Starts counting UDP datagrams that arrive for local port `port`, split by IP total
    /// length at `limit` (e.g. the underlay MTU: larger ones are GSO super-packets that
    /// crossed a veth unsegmented). The iptables rules live as long as the namespace.
    pub fn count_udp_sizes(&self, port: u16, limit: u32) -> UdpSizeCounter<'_> {
        let chain = format!("WT_UDP_{port}");
        let (port_s, small, large) = (
            port.to_string(),
            format!("0:{limit}"),
            format!("{}:65535", limit + 1),
        );
        self.exec(&["iptables", "-w", "-N", &chain]);
        for len in [&small, &large] {
            self.exec(&[
                "iptables", "-w", "-A", &chain, "-m", "length", "--length", len, "-j", "RETURN",
            ]);
        }
        self.exec(&[
            "iptables", "-w", "-I", "INPUT", "-p", "udp", "--dport", &port_s, "-j", &chain,
        ]);
        UdpSizeCounter { ns: self, chain }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.stop_all();
        for attempt in 0..5 {
            let out = run_unchecked(&["ip", "netns", "del", &self.name], EXEC_TIMEOUT);
            if out.status.success() {
                return;
            }
            if attempt == 4 {
                eprintln!(
                    "harness: {}",
                    describe(&format!("ip netns del {}", self.name), &out)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Interface counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
}

/// iptables counters of UDP datagrams by size; see [`Netns::count_udp_sizes`].
pub struct UdpSizeCounter<'a> {
    ns: &'a Netns,
    chain: String,
}

impl UdpSizeCounter<'_> {
    /// Datagrams counted so far: (at most the limit, above the limit).
    pub fn read(&self) -> (u64, u64) {
        let out = self.ns.exec(&["iptables", "-w", "-nvxL", &self.chain]);
        let text = String::from_utf8_lossy(&out.stdout);
        let pkts: Vec<u64> = text
            .lines()
            .filter(|l| l.contains("length"))
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        assert_eq!(pkts.len(), 2, "unexpected iptables listing:\n{text}");
        (pkts[0], pkts[1])
    }
}
