//! A real etcd for tests, in one of two places: on free loopback ports of the test's own
//! namespace ([`Etcd::start`], for tests that talk to it with `etcd_client`), or inside a
//! lab's underlay segment at [`ETCD_IP`]:2379 ([`Etcd::start_in`]), where every host
//! namespace reaches it and tests drive it with `etcdctl`.
//!
//! Either way it has a temporary data dir (with its logs and certificates), optionally serves
//! HTTPS only and requires client certificates (made with the `openssl` CLI), and is killed
//! and reaped on drop, also when it fails to start. `ctl()` and the lease helpers run
//! `etcdctl` where etcd runs, so they work in both places. The async methods talk to etcd
//! from the test's own namespace, so they are for a loopback etcd: `client()`, `restart()`
//! (after `stop()`; both keep the data dir and ports, for outage tests) and `start_hidden()`
//! (another client port, so a test can change data the store under test cannot see).

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use weft::wire::Subnet;

use super::netns::{netns_exec_argv, Netns};
use super::process::Proc;

/// The address a lab's etcd listens on, on the underlay bridge.
pub const ETCD_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 2);

/// flannel's etcd prefix.
pub const PREFIX: &str = "/coreos.com/network";

/// How long etcd may take to answer its first request.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Client certificate material for a TLS etcd.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// CA that signed the server and client certificates (PEM).
    pub ca: PathBuf,
    /// Client certificate (PEM).
    pub cert: PathBuf,
    /// Client key (PEM).
    pub key: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

/// One etcd process and everything it owns.
pub struct Etcd {
    child: Option<Child>,
    /// The namespace it runs in; `None` for the test's own (loopback).
    netns: Option<String>,
    ip: Ipv4Addr,
    client_port: u16,
    peer_port: u16,
    /// While set, etcd serves clients on this port instead (see `start_hidden`).
    hidden_port: Option<u16>,
    endpoint: String,
    tls: Option<TlsFiles>,
    /// Data, logs and certificates (deleted on drop).
    dir: TempDir,
    starts: u32,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

fn etcd_bin() -> String {
    std::env::var("WEFT_ETCD_BIN").unwrap_or_else(|_| "etcd".to_string())
}

impl Etcd {
    /// Starts a plain-HTTP etcd on loopback and waits until it serves requests.
    pub async fn start() -> Etcd {
        let mut e = Self::launch(None, false);
        e.wait_healthy().await;
        e
    }

    /// Starts an HTTPS-only etcd on loopback that requires client certificates.
    pub async fn start_tls() -> Etcd {
        let mut e = Self::launch(None, true);
        e.wait_healthy().await;
        e
    }

    /// Starts etcd in `segment` (a lab's underlay bridge namespace), giving `br0`
    /// [`ETCD_IP`], and waits until it serves requests.
    pub fn start_in(segment: &Netns) -> Etcd {
        let mut e = Self::launch(Some(segment), false);
        e.wait_healthy_blocking();
        e
    }

    /// [`Etcd::start_in`], serving HTTPS only and requiring a client certificate; the server
    /// certificate is valid for [`ETCD_IP`], see [`Etcd::tls`] for the client's files.
    pub fn start_tls_in(segment: &Netns) -> Etcd {
        let mut e = Self::launch(Some(segment), true);
        e.wait_healthy_blocking();
        e
    }

    /// Makes the data dir (and certificates) and starts etcd without waiting for it.
    fn launch(segment: Option<&Netns>, tls: bool) -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir for etcd");
        // Inside a lab namespace nothing else listens, so etcd's usual ports are free.
        let (netns, ip, client_port, peer_port) = match segment {
            Some(seg) => {
                seg.ip(&["addr", "add", &format!("{ETCD_IP}/24"), "dev", "br0"]);
                (Some(seg.name().to_string()), ETCD_IP, 2379, 2380)
            }
            None => (None, Ipv4Addr::LOCALHOST, free_port(), free_port()),
        };
        let tls = tls.then(|| {
            let certs = dir.path().join("certs");
            std::fs::create_dir(&certs).expect("certs dir");
            make_certs(&certs, &ip.to_string())
        });
        let mut e = Etcd {
            child: None,
            netns,
            ip,
            client_port,
            peer_port,
            hidden_port: None,
            endpoint: String::new(),
            tls,
            dir,
            starts: 0,
        };
        e.spawn();
        e
    }

    /// The client URL (`http://127.0.0.1:PORT`, `https://192.168.64.2:2379`, ...).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The TLS client files, for a TLS etcd.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// etcd's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn spawn(&mut self) {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let port = self.hidden_port.unwrap_or(self.client_port);
        self.endpoint = format!("{scheme}://{}:{port}", self.ip);
        let client = &self.endpoint;
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        self.starts += 1;
        let log = File::create(self.dir.path().join(format!("etcd.{}.log", self.starts)))
            .expect("etcd log file");
        let bin = etcd_bin();
        let argv = match &self.netns {
            Some(ns) => netns_exec_argv(ns, &[&bin]),
            None => vec![bin.as_str()],
        };
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..])
            .arg("--name=weft-test")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=weft-test={peer}"))
            .arg("--initial-cluster-state=new")
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("dup log")))
            .stderr(Stdio::from(log));
        if let Some(t) = &self.tls {
            cmd.arg(format!("--cert-file={}", t.server_cert.display()))
                .arg(format!("--key-file={}", t.server_key.display()))
                .arg(format!("--trusted-ca-file={}", t.ca.display()))
                .arg("--client-cert-auth=true");
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot run `{}` ({e}); install etcd (Debian: apt-get install etcd-server) or set WEFT_ETCD_BIN",
                argv.join(" ")
            )
        });
        self.child = Some(child);
    }

    /// Panics, showing the log, if etcd has exited or `deadline` has passed.
    fn assert_starting(&mut self, deadline: Instant) {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                panic!("etcd exited early ({status}); log:\n{}", self.log());
            }
        }
        if Instant::now() > deadline {
            let place = self.netns.as_deref().unwrap_or("the test's namespace");
            panic!(
                "etcd in {place} did not become healthy in {START_TIMEOUT:?}; log:\n{}",
                self.log()
            );
        }
    }

    /// Waits until a loopback etcd answers a KV request from this process (or panics after
    /// 20 s, showing its log).
    pub async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(mut c) = self.client().await {
                if c.get("weft-health-probe", None).await.is_ok() {
                    return;
                }
            }
            self.assert_starting(deadline);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `etcdctl endpoint health` succeeds where etcd runs (or panics after 20 s,
    /// showing its log).
    pub fn wait_healthy_blocking(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.ctl_unchecked(&["endpoint", "health"]).status.success() {
            self.assert_starting(deadline);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A fresh client for a loopback etcd (with the client certificate for TLS).
    pub async fn client(&self) -> Result<etcd_client::Client, etcd_client::Error> {
        let mut o = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5));
        if let Some(t) = &self.tls {
            let read = |p: &Path| std::fs::read(p).expect("read cert");
            o = o.with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(read(&t.ca)))
                    .identity(etcd_client::Identity::from_pem(read(&t.cert), read(&t.key))),
            );
        }
        etcd_client::Client::connect([self.endpoint()], Some(o)).await
    }

    /// The concatenated logs of every run so far.
    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|i| {
                std::fs::read_to_string(self.dir.path().join(format!("etcd.{i}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    /// Kills etcd and reaps it; data dir and ports are kept.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs a loopback etcd on its data dir but on a different client port, so the clients
    /// that know the usual endpoint cannot see it; `endpoint()` and `client()` reach it
    /// meanwhile. `restart()` brings it back on the usual port.
    pub async fn start_hidden(&mut self) {
        self.stop();
        self.hidden_port = Some(free_port());
        self.spawn();
        self.wait_healthy().await;
    }

    /// Starts a loopback etcd again on the same data dir and ports and waits until it is
    /// healthy.
    pub async fn restart(&mut self) {
        self.stop();
        self.hidden_port = None;
        // The kernel may keep the port for a moment after the kill.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpListener::bind((self.ip, self.client_port)).is_err() {
            assert!(Instant::now() < deadline, "client port stays busy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.spawn();
        self.wait_healthy().await;
    }

    /// `etcdctl` (v3) against this etcd, run where etcd runs; whatever happened.
    fn ctl_unchecked(&self, args: &[&str]) -> Output {
        let mut tail = vec![
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
        tail.extend(tls_args.iter().map(String::as_str));
        tail.extend_from_slice(args);
        let argv = match &self.netns {
            Some(ns) => netns_exec_argv(ns, &tail),
            None => tail,
        };
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

    /// Writes the network config under [`PREFIX`].
    pub fn put_config(&self, json: &str) {
        self.ctl(&["put", &format!("{PREFIX}/config"), json]);
    }

    /// Writes a lease record under a fresh etcd lease of `ttl_secs`.
    pub fn put_lease(&self, subnet: Subnet, record: &str, ttl_secs: u32) {
        self.put_with_ttl(&lease_key(subnet), record, ttl_secs);
    }

    /// Writes `value` at the full key `key` (e.g. a dual-stack lease's
    /// `<PREFIX>/subnets/10.1.2.0-24&fd10:0:0:2::-64`) under a fresh etcd lease of `ttl_secs`.
    pub fn put_with_ttl(&self, key: &str, value: &str, ttl_secs: u32) {
        let grant = self.ctl(&["lease", "grant", &ttl_secs.to_string()]);
        let id = grant
            .split_whitespace()
            .nth(1)
            .expect("lease id")
            .to_string();
        self.ctl(&["put", &format!("--lease={id}"), key, value]);
    }

    /// Every key under `prefix` with its value, in key order (`etcdctl get --prefix`).
    pub fn list(&self, prefix: &str) -> Vec<(String, String)> {
        let out = self.ctl(&["get", "--prefix", prefix]);
        let lines: Vec<&str> = out.lines().collect();
        lines
            .chunks(2)
            .filter_map(|kv| match kv {
                [k, v] => Some((k.to_string(), v.to_string())),
                _ => None,
            })
            .collect()
    }

    /// The value stored at the full key `key`, if any.
    pub fn get(&self, key: &str) -> Option<String> {
        let v = self.ctl(&["get", "--print-value-only", key]);
        let v = v.trim();
        (!v.is_empty()).then(|| v.to_string())
    }

    /// Deletes a subnet's lease record.
    pub fn delete_lease(&self, subnet: Subnet) {
        self.ctl(&["del", &lease_key(subnet)]);
    }

    /// The record stored for a subnet, if any.
    pub fn lease(&self, subnet: Subnet) -> Option<String> {
        let v = self.ctl(&["get", "--print-value-only", &lease_key(subnet)]);
        let v = v.trim();
        (!v.is_empty()).then(|| v.to_string())
    }

    /// The `BackendData.VtepMAC` of a subnet's vxlan lease; panics without one.
    pub fn vtep_mac(&self, subnet: Subnet) -> weft::wire::EthernetAddress {
        let rec = self.lease(subnet).expect("lease record");
        let v: serde_json::Value = serde_json::from_str(&rec).expect("lease JSON");
        v["BackendData"]["VtepMAC"]
            .as_str()
            .expect("VtepMAC")
            .parse()
            .expect("MAC")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The etcd key of `subnet`'s lease under [`PREFIX`].
fn lease_key(subnet: Subnet) -> String {
    format!("{PREFIX}/subnets/{}", subnet.key_string())
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl ({e}); TLS tests need the openssl CLI"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A P-256 CA, a server certificate for `server_ip` (and `localhost`) and a client
/// certificate in `dir`, all valid for 1 day.
fn make_certs(dir: &Path, server_ip: &str) -> TlsFiles {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=weft-test-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca);
    std::fs::write(
        dir.join("server.ext"),
        format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:{server_ip},DNS:localhost\n"),
    )
    .expect("write server.ext");
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
    )
    .expect("write client.ext");
    for (name, cn) in [("server", server_ip), ("client", "weft-node")] {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        let ext = format!("{name}.ext");
        let subj = format!("/CN={cn}");
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "1",
                "-extfile",
                &ext,
            ],
        );
    }
    TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("client.pem"),
        key: dir.join("client.key"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
    }
}

/// Fake vxlan leases in bulk on a network in /24s of 10.0.0.0/8 (a /8 config): lease `i` is
/// subnet `10.<i/256>.<i%256>.0/24` with PublicIP 172.16.0.0 + `i` (no host has it: its
/// packets go nowhere) and a VTEP MAC of its own.
pub mod bulk {
    use std::net::Ipv4Addr;

    use super::{Etcd, PREFIX};
    use crate::harness::netns::Netns;

    /// Puts per transaction (etcd's default --max-txn-ops is 128).
    const PER_TXN: usize = 100;

    /// The key of fake lease `i`.
    pub fn key(i: u32) -> String {
        format!("{PREFIX}/subnets/10.{}.{}.0-24", i >> 8, i & 0xff)
    }

    /// The PublicIP of fake lease `i`.
    pub fn public_ip(i: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + i)
    }

    /// An address inside fake lease `i`'s subnet.
    pub fn pod(i: u32) -> Ipv4Addr {
        Ipv4Addr::new(10, (i >> 8) as u8, (i & 0xff) as u8, 1)
    }

    /// The record of fake lease `i`, as flanneld writes it.
    pub fn record(i: u32) -> String {
        let ip = public_ip(i);
        let [_, _, a, b] = ip.octets();
        format!(
            r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0e:f1:00:{:02x}:{a:02x}:{b:02x}"}}}}"#,
            i >> 16
        )
    }

    /// Puts (or with `delete` deletes) fake leases `ids` one request each (a transaction of
    /// one: one watch event per revision), as a large cluster's joins and leaves arrive, from
    /// inside `ns`.
    pub fn one_by_one(ns: &Netns, etcd: &Etcd, ids: impl Iterator<Item = u32>, delete: bool) {
        in_requests_of(ns, etcd, ids, delete, 1);
    }

    /// Puts (or with `delete` deletes) fake leases `ids`, in transactions, from inside `ns`
    /// (the namespace the lab's etcd listens in).
    pub fn apply(ns: &Netns, etcd: &Etcd, ids: impl Iterator<Item = u32>, delete: bool) {
        in_requests_of(ns, etcd, ids, delete, PER_TXN);
    }

    /// Puts or deletes fake leases `ids` from inside `ns`, `per` of them in each transaction.
    fn in_requests_of(
        ns: &Netns,
        etcd: &Etcd,
        ids: impl Iterator<Item = u32>,
        delete: bool,
        per: usize,
    ) {
        let ids: Vec<u32> = ids.collect();
        ns.run(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let mut client = etcd.client().await.expect("etcd client");
                for chunk in ids.chunks(per) {
                    let ops: Vec<etcd_client::TxnOp> = chunk
                        .iter()
                        .map(|&i| match delete {
                            true => etcd_client::TxnOp::delete(key(i), None),
                            false => etcd_client::TxnOp::put(key(i), record(i), None),
                        })
                        .collect();
                    client
                        .txn(etcd_client::Txn::new().and_then(ops))
                        .await
                        .expect("txn");
                }
            });
        });
    }
}
