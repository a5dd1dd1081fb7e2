//! Running the real `weft` binary in a lab: an etcd inside the underlay namespace (so every
//! host namespace reaches it), weft nodes started with flanneld's flags, and readers for their
//! subnet.env and /metrics.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{ExitStatus, Output};
use std::time::{Duration, Instant};

use super::etcd::TlsFiles;
use super::netns::{tcp_transfer, Host, Lab, Netns, Proc, Subnet};

/// The address etcd listens on, on the underlay bridge.
pub const ETCD_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 2);
/// The port each weft node serves /metrics and /healthz on (inside its own namespace).
pub const OPS_PORT: u16 = 9474;
/// flannel's etcd prefix.
pub const PREFIX: &str = "/coreos.com/network";
/// The network config most tests use: 10.1.0.0/16 over vxlan.
pub const VXLAN_CONFIG: &str = r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan"}}"#;

/// An etcd server running inside a lab namespace (the underlay segment), with its data dir.
pub struct NsEtcd {
    proc: Option<Proc>,
    ns: String,
    endpoint: String,
    tls: Option<TlsFiles>,
    _dir: tempfile::TempDir,
}

impl NsEtcd {
    /// Starts etcd in `segment` (the underlay bridge's namespace), giving `br0` [`ETCD_IP`].
    pub fn start(segment: &Netns) -> NsEtcd {
        Self::launch(segment, false)
    }

    /// [`NsEtcd::start`], serving HTTPS only and requiring a client certificate; the
    /// certificates (server valid for [`ETCD_IP`]) live in its temp dir, see [`NsEtcd::tls`].
    pub fn start_tls(segment: &Netns) -> NsEtcd {
        Self::launch(segment, true)
    }

    fn launch(segment: &Netns, tls: bool) -> NsEtcd {
        segment.ip(&["addr", "add", &format!("{ETCD_IP}/24"), "dev", "br0"]);
        let dir = tempfile::tempdir().expect("etcd tempdir");
        let tls = tls.then(|| {
            let certs = dir.path().join("certs");
            std::fs::create_dir(&certs).expect("certs dir");
            TlsFiles::make(&certs, &[&ETCD_IP.to_string()])
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoint = format!("{scheme}://{ETCD_IP}:2379");
        let data = format!("--data-dir={}", dir.path().join("data").display());
        let client = format!("--listen-client-urls={endpoint}");
        let adv = format!("--advertise-client-urls={endpoint}");
        let tls_args: Vec<String> = tls
            .iter()
            .flat_map(|t| {
                [
                    format!("--cert-file={}", t.server_cert().display()),
                    format!("--key-file={}", t.server_key().display()),
                    format!("--trusted-ca-file={}", t.ca.display()),
                    "--client-cert-auth=true".to_string(),
                ]
            })
            .collect();
        let mut argv = vec![
            "etcd",
            "--name=lab",
            &data,
            &client,
            &adv,
            "--listen-peer-urls=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=lab=http://127.0.0.1:2380",
            "--log-level=warn",
            "--logger=zap",
        ];
        argv.extend(tls_args.iter().map(String::as_str));
        let proc = segment.spawn(&argv);
        let e = NsEtcd {
            proc: Some(proc),
            ns: segment.name().to_string(),
            endpoint,
            tls,
            _dir: dir,
        };
        let end = Instant::now() + Duration::from_secs(20);
        while !e.ctl_unchecked(&["endpoint", "health"]).status.success() {
            assert!(
                Instant::now() < end,
                "etcd in {} did not become healthy",
                e.ns
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        e
    }

    /// The client URL the weft nodes use.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The client certificate files of a TLS etcd ([`NsEtcd::start_tls`]).
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    fn ctl_unchecked(&self, args: &[&str]) -> Output {
        let mut argv = vec![
            "ip",
            "netns",
            "exec",
            &self.ns,
            "env",
            "ETCDCTL_API=3",
            "etcdctl",
            "--endpoints",
            &self.endpoint,
        ];
        let tls_args: Vec<String> = self
            .tls
            .iter()
            .flat_map(|t| {
                [
                    format!("--cacert={}", t.ca.display()),
                    format!("--cert={}", t.cert.display()),
                    format!("--key={}", t.key.display()),
                ]
            })
            .collect();
        argv.extend(tls_args.iter().map(String::as_str));
        argv.extend_from_slice(args);
        Proc::spawn(&argv).output_within(Duration::from_secs(20))
    }

    /// Runs `etcdctl` (v3) against this etcd; panics on failure; returns stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = self.ctl_unchecked(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes the network config.
    pub fn put_config(&self, json: &str) {
        self.ctl(&["put", &format!("{PREFIX}/config"), json]);
    }

    /// Writes a lease record under a fresh etcd lease of `ttl_secs`.
    pub fn put_lease(&self, subnet: Subnet, record: &str, ttl_secs: u32) {
        let grant = self.ctl(&["lease", "grant", &ttl_secs.to_string()]);
        let id = grant
            .split_whitespace()
            .nth(1)
            .expect("lease id")
            .to_string();
        self.ctl(&[
            "put",
            &format!("--lease={id}"),
            &format!("{PREFIX}/subnets/{}", subnet.lease_key()),
            record,
        ]);
    }

    /// Deletes a subnet's lease record.
    pub fn delete_lease(&self, subnet: Subnet) {
        self.ctl(&["del", &format!("{PREFIX}/subnets/{}", subnet.lease_key())]);
    }

    /// The record stored for a subnet, if any.
    pub fn lease(&self, subnet: Subnet) -> Option<String> {
        let v = self.ctl(&[
            "get",
            "--print-value-only",
            &format!("{PREFIX}/subnets/{}", subnet.lease_key()),
        ]);
        let v = v.trim();
        (!v.is_empty()).then(|| v.to_string())
    }
}

impl Drop for NsEtcd {
    fn drop(&mut self) {
        drop(self.proc.take());
    }
}

/// The `weft` binary under test.
pub fn weft_bin() -> &'static str {
    // WEFT_BIN runs another build (e.g. the previous commit's, for before/after benchmarks).
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("WEFT_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_weft").to_string())
    })
}

/// A `weft run` process in a host namespace.
pub struct WeftNode {
    proc: Option<Proc>,
    ns: String,
    subnet_file: PathBuf,
    /// The subnet it leased.
    pub subnet: Subnet,
    /// FLANNEL_MTU from its subnet.env.
    pub mtu: u32,
    _dir: tempfile::TempDir,
}

/// Reads `FLANNEL_SUBNET` and `FLANNEL_MTU` from a subnet.env.
pub fn read_subnet_env(text: &str) -> Option<(Subnet, u32)> {
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .map(str::to_string)
    };
    let subnet = get("FLANNEL_SUBNET")?;
    let (addr, len) = subnet.split_once('/')?;
    let mtu = get("FLANNEL_MTU")?.parse().ok()?;
    Some((Subnet::new(addr.parse().ok()?, len.parse().ok()?), mtu))
}

impl WeftNode {
    /// Starts `weft run` in `host` with flanneld-style flags plus `extra`, waits for its
    /// subnet.env (the lease is held and the TUN is about to come up), and returns.
    pub fn start(host: &Host, etcd: &NsEtcd, extra: &[&str]) -> WeftNode {
        Self::start_with_env(host, etcd, &[], extra)
    }

    /// [`WeftNode::start`] on `lab`'s host `i`, then gives that host a pod in the node's
    /// subnet with the node's MTU (the usual set-up of a cluster test).
    pub fn start_with_pod(lab: &mut Lab, i: usize, etcd: &NsEtcd, extra: &[&str]) -> WeftNode {
        let node = WeftNode::start(lab.host(i), etcd, extra);
        lab.host_mut(i).add_pod_with_mtu(node.subnet, node.mtu);
        node
    }

    /// [`WeftNode::start`] with extra `NAME=value` environment entries for the process.
    pub fn start_with_env(host: &Host, etcd: &NsEtcd, env: &[&str], extra: &[&str]) -> WeftNode {
        Self::start_wrapped(host, etcd, env, &[], extra)
    }

    /// [`WeftNode::start_with_env`] with `wrapper` (a command that execs its arguments, e.g.
    /// `setpriv ... --`) between the environment and the weft binary.
    pub fn start_wrapped(
        host: &Host,
        etcd: &NsEtcd,
        env: &[&str],
        wrapper: &[&str],
        extra: &[&str],
    ) -> WeftNode {
        let endpoints = format!("-etcd-endpoints={}", etcd.endpoint());
        let port = format!("--healthz-port={OPS_PORT}");
        let mut args = vec![
            endpoints.as_str(),
            "-iface=eth0",
            "--healthz-ip=127.0.0.1",
            &port,
        ];
        args.extend_from_slice(extra);
        Self::launch(host, env, wrapper, &args)
    }

    /// Starts `weft run <args> -subnet-file=<temp>` in `host` with only the environment
    /// entries `env` and only the flags given (nothing added but the subnet file), and waits
    /// until it is up. The ops server must be on 127.0.0.1:[`OPS_PORT`] (by flag or env).
    pub fn start_raw(host: &Host, env: &[&str], args: &[&str]) -> WeftNode {
        Self::launch(host, env, &[], args)
    }

    /// `env <env> <wrapper> weft run <args> -subnet-file=<temp>`, waited for until up.
    fn launch(host: &Host, env: &[&str], wrapper: &[&str], args: &[&str]) -> WeftNode {
        let dir = tempfile::tempdir().expect("weft tempdir");
        let subnet_file = dir.path().join("subnet.env");
        let sf = format!("-subnet-file={}", subnet_file.display());
        let mut argv = vec!["env", "RUST_LOG=weft=debug"];
        argv.extend_from_slice(env);
        argv.extend_from_slice(wrapper);
        argv.extend_from_slice(&[weft_bin(), "run"]);
        argv.extend_from_slice(args);
        argv.push(&sf);
        let mut proc = host.spawn(&argv);
        let end = Instant::now() + Duration::from_secs(20);
        let (subnet, mtu) = loop {
            if let Some(v) = std::fs::read_to_string(&subnet_file)
                .ok()
                .and_then(|t| read_subnet_env(&t))
            {
                break v;
            }
            if !proc.is_running() || Instant::now() > end {
                let out = proc.stop();
                panic!(
                    "weft in {} did not come up:\n{}",
                    host.name(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let node = WeftNode {
            proc: Some(proc),
            ns: host.name().to_string(),
            subnet_file,
            subnet,
            mtu,
            _dir: dir,
        };
        // Up once /status answers 200: the node publishes its first status after the data
        // path starts (/healthz answers from the first moment, so it says less).
        let end = Instant::now() + Duration::from_secs(10);
        let mut node = node;
        while node.http("/status").is_none() {
            if Instant::now() > end || !node.is_running() {
                let out = node.proc.take().expect("running").stop();
                panic!(
                    "weft in {} never served /status:\n{}",
                    node.ns,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        node
    }

    /// The weft process id (for CPU accounting from /proc), `None` once stopped.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// Sends `sig` to the weft process.
    pub fn signal(&self, sig: libc::c_int) {
        if let Some(p) = &self.proc {
            p.signal(sig);
        }
    }

    /// Waits up to `timeout` for the process to exit by itself; its status and stderr.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<(ExitStatus, String)> {
        self.proc.as_mut()?.wait_timeout(timeout)?;
        let out = self.proc.take()?.stop();
        Some((
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// The subnet.env path.
    pub fn subnet_file(&self) -> &PathBuf {
        &self.subnet_file
    }

    /// Runs `weft <args>` in the node's namespace (e.g. `status`); returns the output.
    pub fn weft(&self, args: &[&str]) -> Output {
        let mut argv = vec!["ip", "netns", "exec", &self.ns, weft_bin()];
        argv.extend_from_slice(args);
        Proc::spawn(&argv).output_within(Duration::from_secs(10))
    }

    /// `weft doctor` in the node's namespace with its subnet file, `-iface=eth0` and etcd at
    /// `endpoint`: whether it passed, and its report.
    pub fn doctor(&self, endpoint: &str) -> (bool, String) {
        let sf = format!("--subnet-file={}", self.subnet_file.display());
        let ep = format!("--etcd-endpoints={endpoint}");
        let out = self.weft(&["doctor", &sf, "--iface=eth0", &ep]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// GET `path` from the node's ops server, `None` when it does not answer 200.
    pub fn http(&self, path: &str) -> Option<String> {
        let script = format!(
            "import urllib.request,sys\ntry:\n print(urllib.request.urlopen('http://127.0.0.1:{OPS_PORT}{path}', timeout=2).read().decode(), end='')\nexcept Exception as e:\n sys.exit(1)"
        );
        let out = Proc::spawn(&["ip", "netns", "exec", &self.ns, "python3", "-c", &script])
            .output_within(Duration::from_secs(10));
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
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
        self.proc.as_mut().is_some_and(|p| p.is_running())
    }

    /// Sends SIGTERM, waits (SIGKILL after a grace period) and returns status and stderr.
    pub fn stop(mut self) -> (ExitStatus, String) {
        let out = self.proc.take().expect("running").stop();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for WeftNode {
    fn drop(&mut self) {
        drop(self.proc.take());
    }
}

/// A two-node cluster, the set-up most end-to-end tests start from: a lab of two hosts, etcd
/// with `config`, a weft node with a pod on each host (both with `flags`), every pod
/// reaching the other. Bind the parts in this order so that the nodes stop before the lab
/// goes: `let (lab, etcd, a, b) = two_node_cluster(...)`.
pub fn two_node_cluster(config: &str, flags: &[&str]) -> (Lab, NsEtcd, WeftNode, WeftNode) {
    let mut lab = Lab::builder().hosts(2).build();
    let etcd = NsEtcd::start(lab.segment(0));
    etcd.put_config(config);
    let a = WeftNode::start_with_pod(&mut lab, 0, &etcd, flags);
    let b = WeftNode::start_with_pod(&mut lab, 1, &etcd, flags);
    ping_all_pairs(&lab);
    (lab, etcd, a, b)
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

/// A `weft run` process that is not waited for: it may be waiting for etcd, or about to fail.
pub struct StartingWeft {
    proc: Option<Proc>,
    ns: String,
    subnet_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl StartingWeft {
    /// Starts `weft run` in `host` against `endpoint` (which need not answer yet), with the
    /// ops server on 127.0.0.1:[`OPS_PORT`], and returns at once.
    pub fn spawn(host: &Host, endpoint: &str, extra: &[&str]) -> StartingWeft {
        let dir = tempfile::tempdir().expect("weft tempdir");
        let subnet_file = dir.path().join("subnet.env");
        let endpoints = format!("-etcd-endpoints={endpoint}");
        let sf = format!("-subnet-file={}", subnet_file.display());
        let port = format!("--healthz-port={OPS_PORT}");
        let mut argv = vec![
            "env",
            "RUST_LOG=weft=debug",
            weft_bin(),
            "run",
            &endpoints,
            "-iface=eth0",
            &sf,
            "--healthz-ip=127.0.0.1",
            &port,
        ];
        argv.extend_from_slice(extra);
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

    /// Waits up to `timeout` for it to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.proc.as_mut()?.wait_timeout(timeout)
    }

    /// Stops it (SIGTERM, then SIGKILL) and returns status and stderr.
    pub fn stop(mut self) -> (ExitStatus, String) {
        let out = self.proc.take().expect("running").stop();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for StartingWeft {
    fn drop(&mut self) {
        drop(self.proc.take());
    }
}
