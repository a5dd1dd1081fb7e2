//! Running the real `weft` binary in a lab: weft nodes started with flanneld's flags (waited
//! for until they serve /status, or not waited for at all), their ops server and CLI, and the
//! cluster set-up and traffic checks most end-to-end tests share.

use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::process::{ExitStatus, Output};
use std::time::{Duration, Instant};

use weft::store::SubnetEnv;
use weft::wire::{Subnet, Subnet6};

use super::etcd::Etcd;
use super::lab::{Host, Lab};
use super::netns::netns_exec_argv;
use super::process::Proc;
use super::traffic::tcp_transfer;

/// The port each weft node serves /metrics and /healthz on (inside its own namespace).
pub const OPS_PORT: u16 = 9474;
/// The network config most tests use: 10.1.0.0/16 over vxlan.
pub const VXLAN_CONFIG: &str = r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan"}}"#;

/// The `weft` binary under test.
pub fn weft_bin() -> &'static str {
    // WEFT_BIN runs another build (e.g. the previous commit's, for before/after benchmarks).
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("WEFT_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_weft").to_string())
    })
}

/// The flags every test node gets: etcd at `endpoint`, `-iface=eth0` and the ops server on
/// 127.0.0.1:[`OPS_PORT`], then `extra`.
fn node_flags(endpoint: &str, extra: &[&str]) -> Vec<String> {
    let mut flags = vec![
        format!("-etcd-endpoints={endpoint}"),
        "-iface=eth0".to_string(),
        "--healthz-ip=127.0.0.1".to_string(),
        format!("--healthz-port={OPS_PORT}"),
    ];
    flags.extend(extra.iter().map(|f| f.to_string()));
    flags
}

/// A `weft run` process that is not waited for: it may be waiting for etcd, or about to fail.
pub struct StartingWeft {
    // Field order is drop order: the process stops before its temp dir goes.
    proc: Option<Proc>,
    ns: String,
    subnet_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl StartingWeft {
    /// Starts `weft run` in `host` against `endpoint` (which need not answer yet), with the
    /// ops server on 127.0.0.1:[`OPS_PORT`], and returns at once.
    pub fn spawn(host: &Host, endpoint: &str, extra: &[&str]) -> StartingWeft {
        let flags = node_flags(endpoint, extra);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        Self::spawn_raw(host, &[], &[], &flags)
    }

    /// [`StartingWeft::spawn`] with extra `NAME=value` environment entries for the process.
    pub fn spawn_with_env(
        host: &Host,
        endpoint: &str,
        env: &[&str],
        extra: &[&str],
    ) -> StartingWeft {
        let flags = node_flags(endpoint, extra);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        Self::spawn_raw(host, env, &[], &flags)
    }

    /// `env RUST_LOG=weft=debug <env> <wrapper> weft run <args> -subnet-file=<temp>` in
    /// `host`, not waited for. An `-subnet-file=<path>` among `args` (a file flanneld
    /// wrote, say) is used instead of the temporary one.
    fn spawn_raw(host: &Host, env: &[&str], wrapper: &[&str], args: &[&str]) -> StartingWeft {
        let dir = tempfile::tempdir().expect("weft tempdir");
        let given = args.iter().find_map(|a| {
            a.strip_prefix("-subnet-file=")
                .or_else(|| a.strip_prefix("--subnet-file="))
        });
        let subnet_file = given.map_or_else(|| dir.path().join("subnet.env"), PathBuf::from);
        let sf = format!("-subnet-file={}", subnet_file.display());
        let mut argv = vec!["env", "RUST_LOG=weft=debug"];
        argv.extend_from_slice(env);
        argv.extend_from_slice(wrapper);
        argv.extend_from_slice(&[weft_bin(), "run"]);
        argv.extend_from_slice(args);
        if given.is_none() {
            argv.push(&sf);
        }
        StartingWeft {
            proc: Some(host.spawn(&argv)),
            ns: host.name().to_string(),
            subnet_file,
            _dir: dir,
        }
    }

    /// The namespace it runs in.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// Its subnet.env (written once it holds a lease).
    pub fn subnet_file(&self) -> &PathBuf {
        &self.subnet_file
    }

    /// GET `path` from its ops server: status code and body.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        ops_get(&self.ns, path)
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.is_running())
    }

    /// The weft process id, `None` once stopped.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// Waits up to `timeout` for it to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.proc.as_mut()?.wait_timeout(timeout)
    }

    /// Stops it (SIGTERM, then SIGKILL) and returns status and stderr.
    pub fn stop(mut self) -> (ExitStatus, String) {
        self.proc.take().expect("running").stop_with_stderr()
    }

    /// Stops it and fails the test with `weft in <ns> <what>` and its stderr.
    fn give_up(self, what: &str) -> ! {
        let ns = self.ns.clone();
        let (_, stderr) = self.stop();
        panic!("weft in {ns} {what}:\n{stderr}");
    }
}

/// A `weft run` process in a host namespace that holds a lease and serves /status.
pub struct WeftNode {
    run: StartingWeft,
    /// The subnet it leased.
    pub subnet: Subnet,
    /// The IPv6 subnet it leased (a dual-stack network), from FLANNEL_IPV6_SUBNET.
    pub subnet6: Option<Subnet6>,
    /// FLANNEL_MTU from its subnet.env.
    pub mtu: u32,
}

/// Describes a [`WeftNode`] before it starts: the usual flags ([`WeftNode::start`]'s) plus
/// what the options add, in the order given.
pub struct WeftNodeBuilder<'a> {
    host: &'a Host,
    etcd: &'a Etcd,
    env: Vec<String>,
    flags: Vec<String>,
}

impl WeftNodeBuilder<'_> {
    /// Appends flags.
    pub fn flags(mut self, flags: &[&str]) -> Self {
        self.flags.extend(flags.iter().map(|f| f.to_string()));
        self
    }

    /// Adds `NAME=value` environment entries for the process.
    pub fn env(mut self, env: &[&str]) -> Self {
        self.env.extend(env.iter().map(|e| e.to_string()));
        self
    }

    /// Passes `-public-ipv6 <addr>`, flanneld's flag for the node's underlay IPv6 address
    /// (a dual-stack lab host's is `Host::addr6`).
    pub fn public_ipv6(mut self, addr: Ipv6Addr) -> Self {
        self.flags.push("-public-ipv6".to_string());
        self.flags.push(addr.to_string());
        self
    }

    /// Starts the node and waits until it is up, as [`WeftNode::start`] does.
    pub fn start(self) -> WeftNode {
        let env: Vec<&str> = self.env.iter().map(String::as_str).collect();
        let flags: Vec<&str> = self.flags.iter().map(String::as_str).collect();
        WeftNode::start_with_env(self.host, self.etcd, &env, &flags)
    }
}

impl WeftNode {
    /// A builder for a node in `host` against `etcd`:
    /// `WeftNode::builder(host, &etcd).public_ipv6(host.addr6()).start()`.
    pub fn builder<'a>(host: &'a Host, etcd: &'a Etcd) -> WeftNodeBuilder<'a> {
        WeftNodeBuilder {
            host,
            etcd,
            env: Vec::new(),
            flags: Vec::new(),
        }
    }

    /// Starts `weft run` in `host` with flanneld-style flags plus `extra`, waits for its
    /// subnet.env (the lease is held and the TUN is about to come up), and returns.
    pub fn start(host: &Host, etcd: &Etcd, extra: &[&str]) -> WeftNode {
        Self::start_with_env(host, etcd, &[], extra)
    }

    /// [`WeftNode::start`] on `lab`'s host `i`, then gives that host a pod in the node's
    /// subnet with the node's MTU (the usual set-up of a cluster test).
    pub fn start_with_pod(lab: &mut Lab, i: usize, etcd: &Etcd, extra: &[&str]) -> WeftNode {
        let node = WeftNode::start(lab.host(i), etcd, extra);
        lab.host_mut(i).add_pod_with_mtu(node.subnet, node.mtu);
        node
    }

    /// Starts weft on host `i` of an IPv6-only network (`-public-ipv6` the host's address)
    /// and attaches a pod on its IPv6 subnet. The pod also gets an address of a host-local
    /// IPv4 subnet (`10.200.<i+1>.0/24`, which no node routes) because the harness's pods
    /// always have one; the overlay carries only IPv6.
    pub fn start_v6only_with_pod(lab: &mut Lab, i: usize, etcd: &Etcd, extra: &[&str]) -> WeftNode {
        let host = lab.host(i);
        let node = WeftNode::builder(host, etcd)
            .public_ipv6(host.addr6())
            .flags(extra)
            .start();
        let s6 = node
            .subnet6
            .expect("an IPv6-only lease (FLANNEL_IPV6_SUBNET)");
        let local4 = format!("10.200.{}.0/24", i + 1).parse().expect("a subnet");
        lab.host_mut(i).add_dual_pod_with_mtu(local4, s6, node.mtu);
        node
    }

    /// A dual-stack node on `lab`'s host `i` (`-public-ipv6` its underlay IPv6 address),
    /// then a dual-stack pod in its two subnets with its MTU.
    pub fn start_dual_with_pod(lab: &mut Lab, i: usize, etcd: &Etcd, extra: &[&str]) -> WeftNode {
        let host = lab.host(i);
        let node = WeftNode::builder(host, etcd)
            .public_ipv6(host.addr6())
            .flags(extra)
            .start();
        let s6 = node
            .subnet6
            .expect("a dual-stack lease (FLANNEL_IPV6_SUBNET)");
        lab.host_mut(i)
            .add_dual_pod_with_mtu(node.subnet, s6, node.mtu);
        node
    }

    /// [`WeftNode::start`] with extra `NAME=value` environment entries for the process.
    pub fn start_with_env(host: &Host, etcd: &Etcd, env: &[&str], extra: &[&str]) -> WeftNode {
        Self::start_wrapped(host, etcd, env, &[], extra)
    }

    /// [`WeftNode::start_with_env`] with `wrapper` (a command that execs its arguments, e.g.
    /// `setpriv ... --`) between the environment and the weft binary.
    pub fn start_wrapped(
        host: &Host,
        etcd: &Etcd,
        env: &[&str],
        wrapper: &[&str],
        extra: &[&str],
    ) -> WeftNode {
        let flags = node_flags(etcd.endpoint(), extra);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        Self::launch(host, env, wrapper, &flags)
    }

    /// Starts `weft run <args> -subnet-file=<temp>` in `host` with only the environment
    /// entries `env` and only the flags given (nothing added but the subnet file), and waits
    /// until it is up. The ops server must be on 127.0.0.1:[`OPS_PORT`] (by flag or env).
    pub fn start_raw(host: &Host, env: &[&str], args: &[&str]) -> WeftNode {
        Self::launch(host, env, &[], args)
    }

    /// `env <env> <wrapper> weft run <args> -subnet-file=<temp>`, waited for until up.
    fn launch(host: &Host, env: &[&str], wrapper: &[&str], args: &[&str]) -> WeftNode {
        let mut run = StartingWeft::spawn_raw(host, env, wrapper, args);
        let end = Instant::now() + Duration::from_secs(20);
        let lease = loop {
            if let Ok(lease) = SubnetEnv::read(&run.subnet_file) {
                break lease;
            }
            if !run.is_running() || Instant::now() > end {
                run.give_up("did not come up");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut node = WeftNode {
            run,
            subnet: lease.subnet,
            subnet6: lease.ipv6.map(|v6| v6.subnet),
            mtu: lease.mtu,
        };
        // Up once /status answers 200: the node publishes its first status after the data
        // path starts (/healthz answers from the first moment, so it says less).
        let end = Instant::now() + Duration::from_secs(10);
        while node.http("/status").is_none() {
            if Instant::now() > end || !node.is_running() {
                node.run.give_up("never served /status");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        node
    }

    /// The weft process id (for CPU accounting from /proc), `None` once stopped.
    pub fn pid(&self) -> Option<u32> {
        self.run.pid()
    }

    /// Sends `sig` to the weft process.
    pub fn signal(&self, sig: libc::c_int) {
        if let Some(p) = &self.run.proc {
            p.signal(sig);
        }
    }

    /// Waits up to `timeout` for the process to exit by itself; its status and stderr.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<(ExitStatus, String)> {
        self.run.wait_exit(timeout)?;
        Some(self.run.proc.take()?.stop_with_stderr())
    }

    /// The subnet.env path.
    pub fn subnet_file(&self) -> &PathBuf {
        self.run.subnet_file()
    }

    /// Runs `weft <args>` in the node's namespace (e.g. `status`); returns the output.
    pub fn weft(&self, args: &[&str]) -> Output {
        let mut tail = vec![weft_bin()];
        tail.extend_from_slice(args);
        Proc::spawn(&netns_exec_argv(&self.run.ns, &tail)).output_within(Duration::from_secs(10))
    }

    /// `weft doctor` in the node's namespace with its subnet file, `-iface=eth0` and etcd at
    /// `endpoint`: whether it passed, and its report.
    pub fn doctor(&self, endpoint: &str) -> (bool, String) {
        let sf = format!("--subnet-file={}", self.subnet_file().display());
        let ep = format!("--etcd-endpoints={endpoint}");
        let out = self.weft(&["doctor", &sf, "--iface=eth0", &ep]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// GET `path` from the node's ops server: status code and body, whatever the code.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        ops_get(&self.run.ns, path)
    }

    /// GET `path` from the node's ops server, `None` when it does not answer 2xx.
    pub fn http(&self, path: &str) -> Option<String> {
        let (code, body) = ops_get(&self.run.ns, path)?;
        (200..300).contains(&code).then_some(body)
    }

    /// One sample from /metrics (`weft_drops_total{reason="wrong_vni"}`), 0 when absent.
    pub fn metric(&self, series: &str) -> u64 {
        let text = self.http("/metrics").unwrap_or_default();
        weft::ops::metrics::sample(&text, series).unwrap_or(0)
    }

    /// Drops counted for `reason`.
    pub fn drops(&self, reason: &str) -> u64 {
        self.metric(&format!("weft_drops_total{{reason=\"{reason}\"}}"))
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.run.is_running()
    }

    /// Sends SIGTERM, waits (SIGKILL after a grace period) and returns status and stderr.
    pub fn stop(self) -> (ExitStatus, String) {
        self.run.stop()
    }
}

/// A two-node cluster, the set-up most end-to-end tests start from: a lab of two hosts, etcd
/// with `config`, a weft node with a pod on each host (both with `flags`), every pod
/// reaching the other. Bind the parts in this order so that the nodes stop before the lab
/// goes: `let (lab, etcd, a, b) = two_node_cluster(...)`.
pub fn two_node_cluster(config: &str, flags: &[&str]) -> (Lab, Etcd, WeftNode, WeftNode) {
    let mut lab = Lab::builder().hosts(2).build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(config);
    let a = WeftNode::start_with_pod(&mut lab, 0, &etcd, flags);
    let b = WeftNode::start_with_pod(&mut lab, 1, &etcd, flags);
    ping_all_pairs(&lab);
    (lab, etcd, a, b)
}

/// The line of a `weft doctor` report for `check`; panics, with the report, without one.
pub fn doctor_line<'a>(report: &'a str, check: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(check))
        .unwrap_or_else(|| panic!("no {check} line:\n{report}"))
}

/// Every pod 0 of a host that has pods pings every other one (after waiting for the path).
pub fn ping_all_pairs(lab: &Lab) {
    let pods: Vec<_> = lab
        .hosts()
        .iter()
        .filter(|h| !h.pods().is_empty())
        .map(|h| h.pod(0))
        .collect();
    for (i, a) in pods.iter().enumerate() {
        for (j, b) in pods.iter().enumerate() {
            if i == j {
                continue;
            }
            assert!(
                a.wait_for_ping(b.addr(), Duration::from_secs(5)),
                "pod {i} cannot reach pod {j}"
            );
            let p = a.ping(b.addr(), 3);
            assert!(p.all_replied(), "pod {i} -> pod {j}:\n{}", p.output);
        }
    }
}

/// [`ping_all_pairs`] over IPv6: every dual-stack pod 0 pings every other one's IPv6
/// address.
pub fn ping_all_pairs6(lab: &Lab) {
    let pods: Vec<_> = lab
        .hosts()
        .iter()
        .filter(|h| !h.pods().is_empty())
        .map(|h| h.pod(0))
        .collect();
    for (i, a) in pods.iter().enumerate() {
        for (j, b) in pods.iter().enumerate() {
            if i == j {
                continue;
            }
            assert!(
                a.wait_for_ping(b.addr6(), Duration::from_secs(5)),
                "pod {i} cannot reach pod {j} over IPv6"
            );
            let p = a.ping(b.addr6(), 3);
            assert!(p.all_replied(), "pod {i} -> pod {j} (IPv6):\n{}", p.output);
        }
    }
}

/// [`transfer`] over IPv6, between the pods' IPv6 addresses.
pub fn transfer6(lab: &Lab, from: usize, to: usize, bytes: u64) {
    let (a, b) = (lab.host(from).pod(0), lab.host(to).pod(0));
    let t = tcp_transfer(a, b, b.addr6(), 5201, bytes, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("IPv6 transfer host {from} -> host {to}: {e}"));
    assert!(t.intact(), "IPv6 transfer {from} -> {to} corrupted: {t:?}");
    assert_eq!(
        t.peer.parse::<Ipv6Addr>().ok(),
        Some(a.addr6()),
        "the server saw another source than the client pod: {}",
        t.peer
    );
    eprintln!(
        "IPv6 transfer {from} -> {to}: {} MB at {:.2} Gbit/s",
        bytes >> 20,
        t.gbit_per_s()
    );
}

/// A checksummed transfer pod(from) -> pod(to); the server must see the client pod's own
/// address (no masquerading between pods).
pub fn transfer(lab: &Lab, from: usize, to: usize, bytes: u64) {
    let (a, b) = (lab.host(from).pod(0), lab.host(to).pod(0));
    let t = tcp_transfer(a, b, b.addr(), 5201, bytes, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("transfer host {from} -> host {to}: {e}"));
    assert!(t.intact(), "transfer {from} -> {to} corrupted: {t:?}");
    assert_eq!(
        t.peer.split(':').next(),
        Some(&*a.addr().to_string()),
        "the server saw another source than the client pod"
    );
    eprintln!(
        "transfer {from} -> {to}: {} MB at {:.2} Gbit/s",
        bytes >> 20,
        t.gbit_per_s()
    );
}

/// GETs `path` from the ops server of the weft in namespace `ns`: the status code and body,
/// whatever the code; `None` when nothing answers.
pub fn ops_get(ns: &str, path: &str) -> Option<(u16, String)> {
    let script = format!(
        "import urllib.request,urllib.error,sys\ntry:\n r=urllib.request.urlopen('http://127.0.0.1:{OPS_PORT}{path}', timeout=2)\n code,body=r.status,r.read()\nexcept urllib.error.HTTPError as e:\n code,body=e.code,e.read()\nexcept Exception:\n sys.exit(1)\nprint(code)\nprint(body.decode(), end='')"
    );
    let out = Proc::spawn(&["ip", "netns", "exec", ns, "python3", "-c", &script])
        .output_within(Duration::from_secs(10));
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (code, body) = text.split_once('\n')?;
    Some((code.trim().parse().ok()?, body.to_string()))
}
