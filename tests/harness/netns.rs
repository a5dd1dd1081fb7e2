//! Real network namespaces for tests: guards that always clean up, a lab topology (underlay
//! segments, hosts with a `cni0` bridge and pods, an outside host, a router to a second
//! segment), a Linux VXLAN node configured the way flanneld's vxlan backend configures it,
//! and traffic helpers (ping, a checksummed TCP transfer, iperf3).
//!
//! Everything shells out to `ip`, `bridge`, `ethtool`, `sysctl`, `ping`, `python3` and
//! `iperf3` (scripts/deps.sh installs them). Every namespace is a [`Netns`] guard whose `Drop`
//! stops the processes inside it and deletes it, so a panicking test leaves nothing behind.
//! Names carry the test process's pid and a counter, so parallel tests never collide.

use std::fmt;
use std::io::Read;
use std::net::Ipv4Addr;
use std::ops::Deref;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a checked command may run before it is killed and the test fails.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a stopped process gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// Linux's default VXLAN UDP port, which flannel's vxlan backend keeps (not IANA's 4789).
pub const FLANNEL_VXLAN_PORT: u16 = 8472;

/// Bytes a VXLAN encapsulation adds over IPv4: outer IPv4 20 + UDP 8 + VXLAN 8 + Ethernet 14.
pub const VXLAN_OVERHEAD: u32 = 50;

/// Fails the test with a clear message unless it runs as root.
pub fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2));
    if euid != Some("0") {
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

// ---------------------------------------------------------------------------------------
// Addresses

/// An IPv4 prefix such as a pod subnet `10.1.2.0/24`; always stored as its network address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Subnet {
    network: Ipv4Addr,
    len: u8,
}

impl Subnet {
    /// The prefix `addr/len`, with host bits cleared.
    pub fn new(addr: Ipv4Addr, len: u8) -> Subnet {
        assert!(len <= 32, "prefix length {len} > 32");
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        Subnet {
            network: Ipv4Addr::from(u32::from(addr) & mask),
            len,
        }
    }

    /// The network address (flannel's VXLAN device address and the remote neighbour's IP).
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// The `n`th address after the network address (`host(1)` is the bridge's address).
    pub fn host(&self, n: u32) -> Ipv4Addr {
        let size = 1u64 << (32 - self.len as u32);
        assert!((n as u64) < size, "{self} has no host number {n}");
        Ipv4Addr::from(u32::from(self.network) + n)
    }

    /// `addr/len` for the `n`th address, as `ip addr add` wants it.
    pub fn host_cidr(&self, n: u32) -> String {
        format!("{}/{}", self.host(n), self.len)
    }

    /// Whether `addr` lies inside this prefix.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        Subnet::new(addr, self.len).network == self.network
    }

    /// flannel's etcd key suffix for this subnet: `10.1.2.0-24`.
    pub fn lease_key(&self) -> String {
        format!("{}-{}", self.network, self.len)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.len)
    }
}

impl FromStr for Subnet {
    type Err = String;
    fn from_str(s: &str) -> Result<Subnet, String> {
        let (a, l) = s.split_once('/').ok_or_else(|| format!("{s:?}: no /len"))?;
        let addr: Ipv4Addr = a.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let len: u8 = l.parse().map_err(|e| format!("{s:?}: {e}"))?;
        if len > 32 {
            return Err(format!("{s:?}: prefix length > 32"));
        }
        Ok(Subnet::new(addr, len))
    }
}

/// An Ethernet address, printed as flannel writes a VtepMAC: lowercase, colon separated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// A stable, locally administered unicast address derived from an IPv4 address.
    pub fn for_ip(ip: Ipv4Addr) -> Mac {
        let o = ip.octets();
        Mac([0x0e, 0x77, 0x66, o[1], o[2], o[3]])
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Mac, String> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(format!("{s:?}: not six octets"));
        }
        let mut m = [0u8; 6];
        for (o, p) in m.iter_mut().zip(parts) {
            *o = u8::from_str_radix(p, 16).map_err(|e| format!("{s:?}: {e}"))?;
        }
        Ok(Mac(m))
    }
}

// ---------------------------------------------------------------------------------------
// Processes

/// A child process that is stopped (SIGTERM, then SIGKILL) and reaped when dropped; its
/// stdout and stderr are collected in the background.
pub struct Proc {
    child: Option<Child>,
    cmd: String,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

fn reader<R: Read + Send + 'static>(r: Option<R>) -> Option<JoinHandle<Vec<u8>>> {
    r.map(|mut r| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    })
}

/// Waits until `cond` holds, polling every 20 ms for at most `timeout`; returns how long it
/// took, `None` on timeout.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `sig` to `pid`; errors (already gone) are ignored.
fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; the pid is one we
    // started (a child, or a process inside a namespace this harness created).
    unsafe {
        libc::kill(pid, sig);
    }
}

impl Proc {
    /// Starts `argv` with stdin closed and stdout/stderr captured; panics if it cannot start.
    pub fn spawn(argv: &[&str]) -> Proc {
        Proc::try_spawn(argv).unwrap_or_else(|e| panic!("cannot start `{}`: {e}", argv.join(" ")))
    }

    /// Starts `argv` with stdin closed and stdout/stderr captured.
    pub fn try_spawn(argv: &[&str]) -> std::io::Result<Proc> {
        let (prog, args) = argv
            .split_first()
            .ok_or_else(|| std::io::Error::other("empty command"))?;
        let mut child = Command::new(prog)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = reader(child.stdout.take());
        let stderr = reader(child.stderr.take());
        Ok(Proc {
            child: Some(child),
            cmd: argv.join(" "),
            stdout,
            stderr,
        })
    }

    /// Sends `sig` (e.g. `libc::SIGHUP`) to the process.
    pub fn signal(&self, sig: libc::c_int) {
        signal(self.pid(), sig);
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The command line, for messages.
    pub fn cmd(&self) -> &str {
        &self.cmd
    }

    /// Whether the process has not exited yet.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running (or was
    /// reaped already).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let end = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(st)) => return Some(st),
                Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(10)),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Waits up to `timeout` for the process to exit and returns its output; on timeout it is
    /// stopped and the returned status says so (not success).
    pub fn output_within(mut self, timeout: Duration) -> Output {
        let status = match self.wait_timeout(timeout) {
            Some(st) => Some(st),
            None => self.terminate(),
        };
        // Unreapable (never seen): report it as killed rather than panic.
        self.collect(status.unwrap_or(ExitStatus::from_raw(libc::SIGKILL)))
    }

    /// Stops the process (SIGTERM, SIGKILL after [`STOP_GRACE`]) and returns its output.
    pub fn stop(mut self) -> Output {
        let status = self
            .terminate()
            .unwrap_or_else(|| panic!("cannot reap `{}`", self.cmd));
        self.collect(status)
    }

    /// SIGTERM, SIGKILL after [`STOP_GRACE`], reap. Never panics: `Drop` uses it.
    fn terminate(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        signal(child.id(), libc::SIGTERM);
        if let Some(st) = self.wait_timeout(STOP_GRACE) {
            return Some(st);
        }
        let child = self.child.as_mut()?;
        let _ = child.kill();
        child.wait().ok()
    }

    fn collect(&mut self, status: ExitStatus) -> Output {
        self.child = None;
        let join = |h: Option<JoinHandle<Vec<u8>>>| -> Vec<u8> {
            let Some(h) = h else { return Vec::new() };
            // A grandchild could keep the pipe open; never hang on it.
            let end = Instant::now() + Duration::from_secs(2);
            while !h.is_finished() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(5));
            }
            if h.is_finished() {
                h.join().unwrap_or_default()
            } else {
                Vec::new()
            }
        };
        Output {
            status,
            stdout: join(self.stdout.take()),
            stderr: join(self.stderr.take()),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

/// Formats a finished command for a failure message.
pub fn describe(cmd: &str, out: &Output) -> String {
    format!(
        "`{cmd}` exited with {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

/// Runs `argv` (in the current namespace) for at most `timeout`; never panics: a command
/// that cannot start reports exit status 127, as a shell would.
pub fn run_unchecked(argv: &[&str], timeout: Duration) -> Output {
    match Proc::try_spawn(argv) {
        Ok(p) => p.output_within(timeout),
        Err(e) => Output {
            status: ExitStatus::from_raw(127 << 8),
            stdout: Vec::new(),
            stderr: format!("cannot start `{}`: {e}", argv.join(" ")).into_bytes(),
        },
    }
}

/// Runs `argv` (in the current namespace); panics with its output unless it succeeds.
pub fn run(argv: &[&str]) -> Output {
    let out = run_unchecked(argv, EXEC_TIMEOUT);
    assert!(out.status.success(), "{}", describe(&argv.join(" "), &out));
    out
}

// ---------------------------------------------------------------------------------------
// Namespaces

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

/// A network namespace this test created; `Drop` stops every process inside it and
/// deletes it.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace `name` (with `lo` up); panics if it exists already.
    pub fn new(name: &str) -> Netns {
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
        let mut v = vec!["ip", "netns", "exec", self.name.as_str()];
        v.extend_from_slice(args);
        v
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

    /// Runs `ip -n <ns> args...` (checked) and returns its stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut argv = vec!["ip", "-n", self.name.as_str()];
        argv.extend_from_slice(args);
        let out = run(&argv);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `ip -n <ns> args...` and reports only whether it succeeded.
    pub fn ip_ok(&self, args: &[&str]) -> bool {
        let mut argv = vec!["ip", "-n", self.name.as_str()];
        argv.extend_from_slice(args);
        run_unchecked(&argv, EXEC_TIMEOUT).status.success()
    }

    /// Runs `bridge -n <ns> args...` (checked) and returns its stdout.
    pub fn bridge(&self, args: &[&str]) -> String {
        let mut argv = vec!["bridge", "-n", self.name.as_str()];
        argv.extend_from_slice(args);
        let out = run(&argv);
        String::from_utf8_lossy(&out.stdout).into_owned()
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
        let end = Instant::now() + STOP_GRACE;
        while Instant::now() < end && !self.pids().is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
        for p in self.pids() {
            signal(p, libc::SIGKILL);
        }
        let end = Instant::now() + STOP_GRACE;
        while Instant::now() < end && !self.pids().is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
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

    // -- traffic helpers; meant to run in pod namespaces, work in any ---------------------

    /// Pings `dst` `count` times (0.2 s apart, 1 s per reply at most).
    pub fn ping(&self, dst: Ipv4Addr, count: u32) -> PingStats {
        self.ping_sized(dst, count, 56)
    }

    /// Pings `dst` with `size` data bytes and the don't-fragment bit (for MTU checks).
    pub fn ping_sized(&self, dst: Ipv4Addr, count: u32, size: u32) -> PingStats {
        let deadline = (count as u64 * 200).div_ceil(1000) + 2;
        let out = self.exec_within(
            &[
                "ping",
                "-n",
                "-q",
                "-M",
                "do",
                "-c",
                &count.to_string(),
                "-i",
                "0.2",
                "-W",
                "1",
                "-w",
                &deadline.to_string(),
                "-s",
                &size.to_string(),
                &dst.to_string(),
            ],
            Duration::from_secs(deadline + 5),
        );
        PingStats::parse(&out)
    }

    /// Pings `dst` once every 0.2 s until a reply comes or `timeout` passes (for paths that
    /// take a while to appear, e.g. while a node learns leases); true if a reply came.
    pub fn wait_for_ping(&self, dst: Ipv4Addr, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            let dst_s = dst.to_string();
            let out = self.exec_within(
                &["ping", "-n", "-q", "-c", "1", "-W", "1", &dst_s],
                Duration::from_secs(3),
            );
            if out.status.success() {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Starts an `iperf3` server for one test on `port`.
    pub fn iperf3_server(&self, port: u16) -> Proc {
        self.spawn(&["iperf3", "-s", "-1", "-p", &port.to_string()])
    }

    /// Runs an `iperf3 -J` client against `dst:port` for `secs` seconds with `extra` flags,
    /// retrying while the server is not listening yet; returns the parsed JSON report.
    pub fn iperf3_client(
        &self,
        dst: Ipv4Addr,
        port: u16,
        secs: u32,
        extra: &[&str],
    ) -> serde_json::Value {
        let (dst, port_s, secs_s) = (dst.to_string(), port.to_string(), secs.to_string());
        let mut args = vec!["iperf3", "-J", "-c", &dst, "-p", &port_s, "-t", &secs_s];
        args.extend_from_slice(extra);
        let give_up = Instant::now() + Duration::from_secs(5);
        loop {
            let out = self.exec_within(&args, Duration::from_secs(secs as u64 + 20));
            let json: serde_json::Value =
                serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
                    panic!("[netns {}] {}", self.name, describe(&args.join(" "), &out))
                });
            match json.get("error").and_then(|e| e.as_str()) {
                None => return json,
                Some(e) if e.contains("unable to connect") && Instant::now() < give_up => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Some(e) => panic!("[netns {}] iperf3 to {dst}:{port}: {e}", self.name),
            }
        }
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

/// The summary of one `ping` run.
#[derive(Clone, Debug)]
pub struct PingStats {
    /// Echo requests sent.
    pub transmitted: u32,
    /// Echo replies received.
    pub received: u32,
    /// Mean round-trip time, when any reply came.
    pub avg_rtt_ms: Option<f64>,
    /// ping's own output, for failure messages.
    pub output: String,
}

impl PingStats {
    fn parse(out: &Output) -> PingStats {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let number_before = |line: &str, word: &str| -> Option<u32> {
            let i = line.find(word)?;
            line[..i]
                .split([' ', ','])
                .rfind(|s| !s.is_empty())?
                .parse()
                .ok()
        };
        let mut s = PingStats {
            transmitted: 0,
            received: 0,
            avg_rtt_ms: None,
            output: text.clone(),
        };
        for line in text.lines() {
            if line.contains("packets transmitted") {
                s.transmitted = number_before(line, " packets transmitted").unwrap_or(0);
                s.received = number_before(line, " received").unwrap_or(0);
            }
            if let Some(rest) = line.strip_prefix("rtt min/avg/max/mdev = ") {
                s.avg_rtt_ms = rest.split('/').nth(1).and_then(|v| v.parse().ok());
            }
        }
        s
    }

    /// Every request got its reply (and at least one was sent).
    pub fn all_replied(&self) -> bool {
        self.transmitted > 0 && self.received == self.transmitted
    }

    /// Requests went out and no reply came back.
    pub fn none_replied(&self) -> bool {
        self.transmitted > 0 && self.received == 0
    }

    /// Lost requests in percent.
    pub fn loss_percent(&self) -> f64 {
        if self.transmitted == 0 {
            return 100.0;
        }
        100.0 * (self.transmitted - self.received) as f64 / self.transmitted as f64
    }
}

// ---------------------------------------------------------------------------------------
// Traffic between namespaces

const TCP_SINK: &str = r#"
import hashlib, socket, sys, time
port, timeout = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
s.listen(1)
s.settimeout(timeout)
c, peer = s.accept()
c.settimeout(timeout)
t0 = time.monotonic()
h, n = hashlib.sha256(), 0
while True:
    b = c.recv(1 << 20)
    if not b:
        break
    h.update(b)
    n += len(b)
elapsed = time.monotonic() - t0
c.close()
print(n, h.hexdigest(), "%.6f" % elapsed, peer[0])
"#;

const TCP_SOURCE: &str = r#"
import hashlib, os, socket, sys, time
dst, port, total, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
give_up = time.monotonic() + 5
while True:
    try:
        c = socket.create_connection((dst, port), timeout=timeout)
        break
    except ConnectionRefusedError:
        if time.monotonic() > give_up:
            raise
        time.sleep(0.05)
h, n = hashlib.sha256(), 0
while n < total:
    chunk = os.urandom(min(1 << 20, total - n))
    h.update(chunk)
    c.sendall(chunk)
    n += len(chunk)
c.shutdown(socket.SHUT_WR)
c.recv(1)
print(n, h.hexdigest())
"#;

/// The result of a checksummed TCP transfer.
#[derive(Clone, Debug)]
pub struct Transfer {
    /// Bytes the client sent.
    pub sent: u64,
    /// Bytes the server received.
    pub received: u64,
    /// SHA-256 of what the client sent.
    pub sent_sha256: String,
    /// SHA-256 of what the server received.
    pub received_sha256: String,
    /// Server-side time from accept to end of stream.
    pub elapsed: Duration,
    /// The source address the server saw (shows masquerading, if any).
    pub peer: String,
}

impl Transfer {
    /// Everything sent arrived, byte for byte.
    pub fn intact(&self) -> bool {
        self.sent == self.received && self.sent_sha256 == self.received_sha256
    }

    /// Goodput in Gbit/s as the server measured it.
    pub fn gbit_per_s(&self) -> f64 {
        self.received as f64 * 8.0 / self.elapsed.as_secs_f64().max(1e-9) / 1e9
    }
}

/// Sends `bytes` of random data over one TCP connection from `client` to `server`
/// (listening on `dst:port`); both ends hash the stream with SHA-256. The whole exchange is
/// bounded by `timeout`; `Err` says which side failed and how.
pub fn tcp_transfer(
    client: &Netns,
    server: &Netns,
    dst: Ipv4Addr,
    port: u16,
    bytes: u64,
    timeout: Duration,
) -> Result<Transfer, String> {
    let secs = format!("{}", timeout.as_secs_f64());
    let sink = server.spawn(&["python3", "-c", TCP_SINK, &port.to_string(), &secs]);
    let src = client.exec_within(
        &[
            "python3",
            "-c",
            TCP_SOURCE,
            &dst.to_string(),
            &port.to_string(),
            &bytes.to_string(),
            &secs,
        ],
        timeout,
    );
    let sink_out = sink.output_within(if src.status.success() {
        Duration::from_secs(5)
    } else {
        Duration::ZERO
    });
    if !src.status.success() || !sink_out.status.success() {
        return Err(format!(
            "transfer {} -> {}:{port} failed\n[client {}] {}\n[server {}] {}",
            client.name(),
            dst,
            client.name(),
            describe("tcp source", &src),
            server.name(),
            describe("tcp sink", &sink_out)
        ));
    }
    let c = String::from_utf8_lossy(&src.stdout).to_string();
    let s = String::from_utf8_lossy(&sink_out.stdout).to_string();
    let c: Vec<&str> = c.split_whitespace().collect();
    let s: Vec<&str> = s.split_whitespace().collect();
    if c.len() != 2 || s.len() != 4 {
        return Err(format!(
            "unexpected transfer reports: client {c:?}, server {s:?}"
        ));
    }
    Ok(Transfer {
        sent: c[0].parse().map_err(|e| format!("client count: {e}"))?,
        sent_sha256: c[1].to_string(),
        received: s[0].parse().map_err(|e| format!("server count: {e}"))?,
        received_sha256: s[1].to_string(),
        elapsed: Duration::from_secs_f64(s[2].parse().map_err(|e| format!("elapsed: {e}"))?),
        peer: s[3].to_string(),
    })
}

/// One TCP stream's throughput as iperf3 measured it.
#[derive(Clone, Copy, Debug)]
pub struct TcpThroughput {
    /// Receiver-side throughput in Gbit/s.
    pub gbit_per_s: f64,
    /// Sender-side retransmitted segments.
    pub retransmits: u64,
}

/// Runs one iperf3 TCP stream from `client` to `server` (reached at `dst`) for `secs`.
pub fn iperf3_tcp(client: &Netns, server: &Netns, dst: Ipv4Addr, secs: u32) -> TcpThroughput {
    let port = 5201;
    let srv = server.iperf3_server(port);
    let json = client.iperf3_client(dst, port, secs, &[]);
    drop(srv.output_within(Duration::from_secs(5)));
    let end = &json["end"];
    TcpThroughput {
        gbit_per_s: end["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or_else(|| panic!("iperf3 report without sum_received: {end}"))
            / 1e9,
        retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
    }
}

/// A UDP packet-rate measurement.
#[derive(Clone, Copy, Debug)]
pub struct UdpRate {
    /// Payload bytes per datagram.
    pub len: u32,
    /// Datagrams per second the client sent.
    pub sent_pps: f64,
    /// Datagrams per second that arrived at the server.
    pub received_pps: f64,
    /// Lost datagrams in percent, as the server counted them.
    pub lost_percent: f64,
}

/// Sends `len`-byte UDP datagrams as fast as iperf3 can from `client` to `server` (reached
/// at `dst`) for `secs`, and reports packets per second on both ends.
pub fn iperf3_udp(client: &Netns, server: &Netns, dst: Ipv4Addr, secs: u32, len: u32) -> UdpRate {
    let port = 5202;
    let srv = server.iperf3_server(port);
    let json = client.iperf3_client(dst, port, secs, &["-u", "-b", "0", "-l", &len.to_string()]);
    drop(srv.output_within(Duration::from_secs(5)));
    // iperf3 >= 3.8 reports both ends: sum_sent (the client's count) and sum_received (the
    // server's; its "packets" is the highest sequence number seen, its bytes what arrived).
    let end = &json["end"];
    let field = |sum: &str, k: &str| {
        end[sum][k]
            .as_f64()
            .unwrap_or_else(|| panic!("iperf3 UDP report without end.{sum}.{k}: {end}"))
    };
    let sent = field("sum_sent", "packets") / field("sum_sent", "seconds").max(1e-9);
    let received =
        field("sum_received", "bytes") / len as f64 / field("sum_received", "seconds").max(1e-9);
    UdpRate {
        len,
        sent_pps: sent,
        received_pps: received,
        lost_percent: field("sum_received", "lost_percent"),
    }
}

// ---------------------------------------------------------------------------------------
// Lab topology

/// The first underlay segment: hosts at .10, .11, ...; the outside host at .200; the router
/// at .1.
pub const SEGMENT_A: Subnet = Subnet {
    network: Ipv4Addr::new(192, 168, 64, 0),
    len: 24,
};

/// The second underlay segment, one router hop away from [`SEGMENT_A`].
pub const SEGMENT_B: Subnet = Subnet {
    network: Ipv4Addr::new(192, 168, 65, 0),
    len: 24,
};

/// A pod in a host: its own namespace with `eth0` on the host's `cni0` bridge.
pub struct Pod {
    ns: Netns,
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
}

impl Pod {
    /// The pod's namespace.
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// The pod's address.
    pub fn addr(&self) -> Ipv4Addr {
        self.ip
    }

    /// Its default gateway (the host's `cni0` address).
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }
}

impl Deref for Pod {
    type Target = Netns;
    fn deref(&self) -> &Netns {
        &self.ns
    }
}

/// A host on an underlay segment: `eth0` joined to the segment's bridge, ip_forward on,
/// rp_filter off; pods are attached later with [`Host::add_pod`].
pub struct Host {
    pods: Vec<Pod>,
    ns: Netns,
    ip: Ipv4Addr,
    segment: Subnet,
    mtu: u32,
    pod_subnet: Option<Subnet>,
}

impl Host {
    /// The host's namespace.
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// Its underlay address (on `eth0`): flannel's PublicIP.
    pub fn addr(&self) -> Ipv4Addr {
        self.ip
    }

    /// The underlay interface's name.
    pub fn iface(&self) -> &'static str {
        "eth0"
    }

    /// The underlay segment it sits on.
    pub fn segment(&self) -> Subnet {
        self.segment
    }

    /// The underlay MTU.
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// The pod subnet given to the first [`Host::add_pod`], if any.
    pub fn pod_subnet(&self) -> Option<Subnet> {
        self.pod_subnet
    }

    /// Attaches a new pod on `subnet` with the overlay MTU (underlay MTU - 50).
    pub fn add_pod(&mut self, subnet: Subnet) -> &Pod {
        let mtu = self.mtu - VXLAN_OVERHEAD;
        self.add_pod_with_mtu(subnet, mtu)
    }

    /// Attaches a new pod: the first call creates `cni0` with `subnet`'s first address; pod
    /// `k` gets address number `k + 2` and a default route via `cni0`.
    pub fn add_pod_with_mtu(&mut self, subnet: Subnet, mtu: u32) -> &Pod {
        let gateway = subnet.host(1);
        match self.pod_subnet {
            None => {
                self.ns.ip(&["link", "add", "cni0", "type", "bridge"]);
                self.ns
                    .ip(&["addr", "add", &subnet.host_cidr(1), "dev", "cni0"]);
                self.ns.ip(&["link", "set", "cni0", "up"]);
                self.pod_subnet = Some(subnet);
            }
            Some(s) => assert_eq!(
                s, subnet,
                "{}: pods of one host share one subnet",
                self.ns.name
            ),
        }
        let k = self.pods.len();
        let ns = Netns::new(&format!("{}p{k}", self.ns.name));
        let port = format!("veth{k}");
        veth_to_bridge(&ns, "eth0", &self.ns, &port, "cni0", mtu);
        let ip = subnet.host(k as u32 + 2);
        ns.ip(&[
            "addr",
            "add",
            &subnet.host_cidr(k as u32 + 2),
            "dev",
            "eth0",
        ]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["route", "add", "default", "via", &gateway.to_string()]);
        self.pods.push(Pod { ns, ip, gateway });
        self.pods.last().expect("just pushed")
    }

    /// Pod number `k`.
    pub fn pod(&self, k: usize) -> &Pod {
        &self.pods[k]
    }

    /// All pods, in the order they were added.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }
}

impl Deref for Host {
    type Target = Netns;
    fn deref(&self) -> &Netns {
        &self.ns
    }
}

/// Describes a [`Lab`] before it is built.
#[derive(Clone, Debug)]
pub struct LabBuilder {
    hosts: usize,
    segment_b_hosts: usize,
    outside: bool,
    mtu: u32,
}

impl LabBuilder {
    /// Hosts on segment A (192.168.64.10, .11, ...).
    pub fn hosts(mut self, n: usize) -> Self {
        self.hosts = n;
        self
    }

    /// Adds an "outside" host (192.168.64.200) with no pods, for masquerade tests.
    pub fn outside(mut self) -> Self {
        self.outside = true;
        self
    }

    /// Adds segment B (192.168.65.0/24) behind a router (.1 on both segments) with `n` hosts
    /// (192.168.65.10, ...), indexed after segment A's hosts.
    pub fn segment_b(mut self, n: usize) -> Self {
        self.segment_b_hosts = n;
        self
    }

    /// The underlay MTU on every link (default 1500).
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = mtu;
        self
    }

    /// Creates every namespace and link; on a panic half way, what exists is deleted.
    pub fn build(self) -> Lab {
        let swept = sweep_stale_labs();
        if !swept.is_empty() {
            eprintln!("harness: deleted namespaces of dead test runs: {swept:?}");
        }
        let prefix = unique_prefix();
        let mut lab = Lab {
            hosts: Vec::new(),
            outside: None,
            router: None,
            segments: Vec::new(),
            prefix: prefix.clone(),
        };
        lab.segments
            .push(segment_ns(&format!("{prefix}u"), self.mtu));
        for i in 0..self.hosts {
            let ip = SEGMENT_A.host(10 + i as u32);
            let h = host_ns(
                &format!("{prefix}h{i}"),
                &lab.segments[0],
                SEGMENT_A,
                ip,
                self.mtu,
            );
            lab.hosts.push(h);
        }
        if self.outside {
            let ip = SEGMENT_A.host(200);
            lab.outside = Some(host_ns(
                &format!("{prefix}o"),
                &lab.segments[0],
                SEGMENT_A,
                ip,
                self.mtu,
            ));
        }
        if self.segment_b_hosts > 0 {
            lab.segments
                .push(segment_ns(&format!("{prefix}v"), self.mtu));
            let r = Netns::new(&format!("{prefix}r"));
            r.sysctl("net.ipv4.ip_forward", "1");
            for (seg_ns, seg, dev) in [
                (&lab.segments[0], SEGMENT_A, "eth0"),
                (&lab.segments[1], SEGMENT_B, "eth1"),
            ] {
                join_segment(&r, dev, seg_ns, "rtr", self.mtu);
                r.ip(&["addr", "add", &seg.host_cidr(1), "dev", dev]);
                r.ip(&["link", "set", dev, "up"]);
            }
            lab.router = Some(r);
            for j in 0..self.segment_b_hosts {
                let i = self.hosts + j;
                let ip = SEGMENT_B.host(10 + j as u32);
                let h = host_ns(
                    &format!("{prefix}h{i}"),
                    &lab.segments[1],
                    SEGMENT_B,
                    ip,
                    self.mtu,
                );
                h.ip(&[
                    "route",
                    "add",
                    &SEGMENT_A.to_string(),
                    "via",
                    &SEGMENT_B.host(1).to_string(),
                ]);
                lab.hosts.push(h);
            }
            let via = SEGMENT_A.host(1).to_string();
            for h in lab.hosts.iter().chain(lab.outside.iter()) {
                if h.segment == SEGMENT_A {
                    h.ip(&["route", "add", &SEGMENT_B.to_string(), "via", &via]);
                }
            }
        }
        lab
    }
}

/// An underlay segment: a namespace holding the bridge `br0`.
fn segment_ns(name: &str, mtu: u32) -> Netns {
    let ns = Netns::new(name);
    ns.ip(&[
        "link",
        "add",
        "br0",
        "mtu",
        &mtu.to_string(),
        "type",
        "bridge",
    ]);
    ns.ip(&["link", "set", "br0", "up"]);
    ns
}

/// Creates `dev` in `ns` as a veth of `mtu` whose peer `port` lives in `peer_ns`, enslaved to
/// its bridge `bridge` and up.
fn veth_to_bridge(ns: &Netns, dev: &str, peer_ns: &Netns, port: &str, bridge: &str, mtu: u32) {
    let mtu = mtu.to_string();
    ns.ip(&[
        "link",
        "add",
        dev,
        "mtu",
        &mtu,
        "type",
        "veth",
        "peer",
        "name",
        port,
        "mtu",
        &mtu,
        "netns",
        peer_ns.name(),
    ]);
    peer_ns.ip(&["link", "set", port, "master", bridge, "up"]);
}

/// Creates `dev` in `ns` as a veth whose peer is a port of `segment`'s `br0`, named
/// `<port>` there plus a short suffix from `ns`'s name so ports never clash.
fn join_segment(ns: &Netns, dev: &str, segment: &Netns, port: &str, mtu: u32) {
    let tail: String = ns
        .name()
        .rsplit('-')
        .next()
        .unwrap_or("x")
        .chars()
        .take(8)
        .collect();
    let port = format!("{port}{tail}");
    veth_to_bridge(ns, dev, segment, &port, "br0", mtu);
}

/// A host namespace on a segment: forwarding on, rp_filter off, `eth0` at `ip`.
fn host_ns(name: &str, segment: &Netns, seg: Subnet, ip: Ipv4Addr, mtu: u32) -> Host {
    let ns = Netns::new(name);
    // Before any interface exists, so new ones inherit "default".
    for key in [
        "net.ipv4.conf.all.rp_filter",
        "net.ipv4.conf.default.rp_filter",
    ] {
        ns.sysctl(key, "0");
    }
    ns.sysctl("net.ipv4.ip_forward", "1");
    join_segment(&ns, "eth0", segment, "p", mtu);
    ns.ip(&["addr", "add", &format!("{ip}/{}", seg.len()), "dev", "eth0"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    Host {
        pods: Vec::new(),
        ns,
        ip,
        segment: seg,
        mtu,
        pod_subnet: None,
    }
}

/// A topology of namespaces (see DESIGN.md "Tests: real parts"); dropping it stops every
/// process in it and deletes every namespace, pods first, underlay last.
pub struct Lab {
    // Field order is drop order.
    hosts: Vec<Host>,
    outside: Option<Host>,
    router: Option<Netns>,
    segments: Vec<Netns>,
    prefix: String,
}

impl Lab {
    /// A builder: `Lab::builder().hosts(2).outside().build()`.
    pub fn builder() -> LabBuilder {
        LabBuilder {
            hosts: 2,
            segment_b_hosts: 0,
            outside: false,
            mtu: 1500,
        }
    }

    /// The pod subnet the tests use for host `i` when nothing else picks one: 10.1.(i+1).0/24.
    pub fn default_pod_subnet(i: usize) -> Subnet {
        Subnet::new(Ipv4Addr::new(10, 1, i as u8 + 1, 0), 24)
    }

    /// The prefix every namespace name of this lab starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Host `i` (segment A first, then segment B).
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// Host `i`, to add pods.
    pub fn host_mut(&mut self, i: usize) -> &mut Host {
        &mut self.hosts[i]
    }

    /// All hosts.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The outside host; panics unless the builder asked for it.
    pub fn outside(&self) -> &Host {
        self.outside.as_ref().expect("lab built without .outside()")
    }

    /// The router between the segments; panics unless the builder asked for segment B.
    pub fn router(&self) -> &Netns {
        self.router
            .as_ref()
            .expect("lab built without .segment_b(n)")
    }

    /// Segment `i`'s namespace (holding `br0`): 0 is A, 1 is B.
    pub fn segment(&self, i: usize) -> &Netns {
        &self.segments[i]
    }

    /// Names of every namespace in the lab.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = Vec::new();
        for h in self.hosts.iter().chain(self.outside.iter()) {
            v.push(h.ns.name.clone());
            v.extend(h.pods.iter().map(|p| p.ns.name.clone()));
        }
        v.extend(self.router.iter().map(|r| r.name.clone()));
        v.extend(self.segments.iter().map(|s| s.name.clone()));
        v
    }

    /// Sets the MTU of every underlay link while the lab runs, as an operator lowering the
    /// path MTU would: each host's and the router's veths, and every port of every segment
    /// bridge (the bridge follows its ports), so the whole path carries at most `mtu`.
    /// Pods and overlay devices are left alone.
    pub fn set_underlay_mtu(&self, mtu: u32) {
        let m = mtu.to_string();
        for seg in &self.segments {
            let ports = seg.ip(&["-o", "link", "show", "master", "br0"]);
            for line in ports.lines() {
                // "5: pabc@if2: <...> mtu 1500 ..." -> "pabc"
                let Some(name) = line.split(':').nth(1) else {
                    continue;
                };
                let name = name.trim().split('@').next().unwrap_or_default();
                if !name.is_empty() {
                    seg.ip(&["link", "set", name, "mtu", &m]);
                }
            }
            seg.ip(&["link", "set", "br0", "mtu", &m]);
        }
        for h in self.hosts.iter().chain(self.outside.iter()) {
            h.ns.ip(&["link", "set", "eth0", "mtu", &m]);
        }
        if let Some(r) = &self.router {
            for dev in ["eth0", "eth1"] {
                r.ip(&["link", "set", dev, "mtu", &m]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// A Linux VXLAN node configured as flanneld's vxlan backend configures it

/// How to set up a [`KernelFlannelNode`]; defaults are flannel's.
#[derive(Clone, Debug)]
pub struct KernelFlannelBuilder {
    subnet: Subnet,
    vni: u32,
    vtep_mac: Option<Mac>,
    offloads: bool,
}

impl KernelFlannelBuilder {
    /// The VNI (default 1); the device is `flannel.<vni>`.
    pub fn vni(mut self, vni: u32) -> Self {
        self.vni = vni;
        self
    }

    /// The VTEP MAC (default: [`Mac::for_ip`] of the host's address; flanneld picks a
    /// random one).
    pub fn vtep_mac(mut self, mac: Mac) -> Self {
        self.vtep_mac = Some(mac);
        self
    }

    /// `false` turns tx checksumming off on `flannel.N` and UDP-tunnel segmentation off on
    /// `eth0`, so the wire carries what a peer on another machine delivers; `true` (default)
    /// keeps the kernel's defaults.
    pub fn offloads(mut self, on: bool) -> Self {
        self.offloads = on;
        self
    }

    /// Creates and configures `flannel.<vni>` in `host`.
    pub fn install(self, host: &Host) -> KernelFlannelNode {
        let node = KernelFlannelNode {
            ns: host.ns.name.clone(),
            iface: host.iface(),
            public_ip: host.addr(),
            subnet: self.subnet,
            vni: self.vni,
            vtep_mac: self.vtep_mac.unwrap_or_else(|| Mac::for_ip(host.addr())),
            mtu: host.mtu() - VXLAN_OVERHEAD,
        };
        let dev = node.device();
        let ns = &host.ns;
        // flanneld: netlink Vxlan{VxlanId, VtepDevIndex=ext iface, SrcAddr=ext addr,
        // Port=0 (so the kernel's 8472), Learning=false, MTU=ext MTU-50, random MAC}.
        ns.ip(&[
            "link",
            "add",
            &dev,
            "address",
            &node.vtep_mac.to_string(),
            "mtu",
            &node.mtu.to_string(),
            "type",
            "vxlan",
            "id",
            &node.vni.to_string(),
            "local",
            &node.public_ip.to_string(),
            "dev",
            node.iface,
            "dstport",
            &FLANNEL_VXLAN_PORT.to_string(),
            "nolearning",
        ]);
        // flanneld sets accept_ra=0 on the device and ignores failure (IPv6 may be off).
        let _ = ns.exec_unchecked(&[
            "sysctl",
            "-q",
            "-w",
            &format!("net/ipv6/conf/{dev}/accept_ra=0"),
        ]);
        // A /32 so no subnet or broadcast route appears; only a source for host traffic.
        ns.ip(&[
            "addr",
            "add",
            &format!("{}/32", node.subnet.network()),
            "dev",
            &dev,
        ]);
        ns.ip(&["link", "set", &dev, "up"]);
        if !self.offloads {
            node.set_offloads(false);
        }
        node
    }
}

/// A host whose overlay is Linux's own VXLAN device set up exactly as flanneld's vxlan
/// backend does it: the reference peer weft must interoperate with.
#[derive(Clone, Debug)]
pub struct KernelFlannelNode {
    ns: String,
    iface: &'static str,
    public_ip: Ipv4Addr,
    subnet: Subnet,
    vni: u32,
    vtep_mac: Mac,
    mtu: u32,
}

impl KernelFlannelNode {
    /// Starts describing a node that owns the lease `subnet`.
    pub fn builder(subnet: Subnet) -> KernelFlannelBuilder {
        KernelFlannelBuilder {
            subnet,
            vni: 1,
            vtep_mac: None,
            offloads: true,
        }
    }

    /// Installs a node with flannel's defaults on `host` for the lease `subnet`.
    pub fn install(host: &Host, subnet: Subnet) -> KernelFlannelNode {
        KernelFlannelNode::builder(subnet).install(host)
    }

    /// The VXLAN device's name: `flannel.<vni>`.
    pub fn device(&self) -> String {
        format!("flannel.{}", self.vni)
    }

    /// The namespace the node lives in.
    pub fn netns(&self) -> &str {
        &self.ns
    }

    /// Its PublicIP (the host's underlay address).
    pub fn public_ip(&self) -> Ipv4Addr {
        self.public_ip
    }

    /// Its lease.
    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    /// Its VNI.
    pub fn vni(&self) -> u32 {
        self.vni
    }

    /// Its VTEP MAC.
    pub fn vtep_mac(&self) -> Mac {
        self.vtep_mac
    }

    /// The VXLAN device's MTU (underlay MTU - 50).
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// flannel's lease record for this node, byte for byte as flanneld writes it to etcd.
    pub fn lease_json(&self) -> String {
        lease_json(self.public_ip, self.vni, self.vtep_mac)
    }

    /// The etcd key of this node's lease under `prefix` (e.g. `/coreos.com/network`).
    pub fn lease_key(&self, prefix: &str) -> String {
        format!("{prefix}/subnets/{}", self.subnet.lease_key())
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut argv = vec!["ip", "-n", self.ns.as_str()];
        argv.extend_from_slice(args);
        String::from_utf8_lossy(&run(&argv).stdout).into_owned()
    }

    fn bridge(&self, args: &[&str]) {
        let mut argv = vec!["bridge", "-n", self.ns.as_str()];
        argv.extend_from_slice(args);
        run(&argv);
    }

    /// What flanneld does when a remote lease appears: a permanent neighbour (the remote
    /// subnet's network IP -> its VtepMAC), a permanent FDB entry (VtepMAC -> PublicIP) and an
    /// onlink route (remote subnet via its network IP on `flannel.N`), in that order.
    pub fn add_peer(&self, subnet: Subnet, public_ip: Ipv4Addr, vtep_mac: Mac) {
        let dev = self.device();
        let (net, mac) = (subnet.network().to_string(), vtep_mac.to_string());
        // netlink NeighSet (create or replace), NUD_PERMANENT.
        self.ip(&[
            "neigh",
            "replace",
            &net,
            "lladdr",
            &mac,
            "dev",
            &dev,
            "nud",
            "permanent",
        ]);
        // netlink NeighSet with AF_BRIDGE, NTF_SELF, NUD_PERMANENT: a replace, not an append.
        self.bridge(&[
            "fdb",
            "replace",
            &mac,
            "dev",
            &dev,
            "dst",
            &public_ip.to_string(),
            "self",
            "permanent",
        ]);
        // netlink RouteReplace, scope universe, RTNH_F_ONLINK; last, so the kernel never ARPs.
        self.ip(&[
            "route",
            "replace",
            &subnet.to_string(),
            "via",
            &net,
            "dev",
            &dev,
            "onlink",
        ]);
    }

    /// What flanneld does when a remote lease goes: deletes the neighbour, the FDB entry and
    /// the route (each attempted even if another fails; panics afterwards if any failed).
    pub fn remove_peer(&self, subnet: Subnet, public_ip: Ipv4Addr, vtep_mac: Mac) {
        let dev = self.device();
        let (net, mac, pip) = (
            subnet.network().to_string(),
            vtep_mac.to_string(),
            public_ip.to_string(),
        );
        let prefix = subnet.to_string();
        let ns = self.ns.as_str();
        let cmds: [Vec<&str>; 3] = [
            vec!["ip", "-n", ns, "neigh", "del", &net, "dev", &dev],
            vec![
                "bridge", "-n", ns, "fdb", "del", &mac, "dev", &dev, "dst", &pip, "self",
            ],
            vec![
                "ip", "-n", ns, "route", "del", &prefix, "via", &net, "dev", &dev, "onlink",
            ],
        ];
        let failures: Vec<String> = cmds
            .iter()
            .map(|c| (c, run_unchecked(c, EXEC_TIMEOUT)))
            .filter(|(_, o)| !o.status.success())
            .map(|(c, o)| describe(&c.join(" "), &o))
            .collect();
        assert!(failures.is_empty(), "remove_peer: {}", failures.join("\n"));
    }

    /// [`KernelFlannelNode::add_peer`] with another node's lease.
    pub fn peer_with(&self, other: &KernelFlannelNode) {
        self.add_peer(other.subnet, other.public_ip, other.vtep_mac);
    }

    /// [`KernelFlannelNode::remove_peer`] with another node's lease.
    pub fn unpeer(&self, other: &KernelFlannelNode) {
        self.remove_peer(other.subnet, other.public_ip, other.vtep_mac);
    }

    /// Turns tx checksum offload on `flannel.N` and UDP-tunnel segmentation on `eth0` on or
    /// off (DESIGN.md "Kernel VXLAN peers over veth").
    pub fn set_offloads(&self, on: bool) {
        let v = if on { "on" } else { "off" };
        let dev = self.device();
        let exec = |args: &[&str]| {
            let mut argv = vec!["ip", "netns", "exec", self.ns.as_str()];
            argv.extend_from_slice(args);
            run(&argv);
        };
        exec(&["ethtool", "-K", &dev, "tx", v]);
        exec(&[
            "ethtool",
            "-K",
            self.iface,
            "tx-udp_tnl-segmentation",
            v,
            "tx-udp_tnl-csum-segmentation",
            v,
        ]);
    }

    /// The neighbour, FDB and route lines on `flannel.N` that mention `subnet` or `mac`
    /// (empty when the peer is fully removed).
    pub fn peer_state(&self, subnet: Subnet, vtep_mac: Mac) -> Vec<String> {
        let dev = self.device();
        let (net, mac) = (subnet.network().to_string(), vtep_mac.to_string());
        let mut lines = Vec::new();
        let neigh = self.ip(&["neigh", "show", "dev", &dev]);
        let fdb = {
            let argv = [
                "bridge",
                "-n",
                self.ns.as_str(),
                "fdb",
                "show",
                "dev",
                dev.as_str(),
            ];
            String::from_utf8_lossy(&run(&argv).stdout).into_owned()
        };
        let routes = self.ip(&["route", "show", "dev", &dev]);
        for l in neigh.lines() {
            if l.split_whitespace().next() == Some(net.as_str()) {
                lines.push(format!("neigh: {l}"));
            }
        }
        for l in fdb.lines() {
            if l.starts_with(&mac) {
                lines.push(format!("fdb: {l}"));
            }
        }
        for l in routes.lines() {
            if l.split_whitespace().next() == Some(subnet.to_string().as_str()) {
                lines.push(format!("route: {l}"));
            }
        }
        lines
    }
}

/// flannel's vxlan lease record: `{"PublicIP":..,"PublicIPv6":null,"BackendType":"vxlan",
/// "BackendData":{"VNI":..,"VtepMAC":".."}}`, keys in flanneld's order.
pub fn lease_json(public_ip: Ipv4Addr, vni: u32, vtep_mac: Mac) -> String {
    format!(
        r#"{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":{vni},"VtepMAC":"{vtep_mac}"}}}}"#
    )
}
