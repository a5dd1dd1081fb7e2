//! A real etcd for tests: free loopback ports, a temporary data dir, killed and reaped on drop.
//!
//! `Etcd::start()` runs plain HTTP; `Etcd::start_tls()` generates a CA, a server and a client
//! certificate with the `openssl` CLI and serves HTTPS only, requiring client certificates.
//! `stop()` / `restart()` keep the data dir and ports, for outage tests; `start_hidden()` runs
//! it on another client port so a test can change data the store under test cannot see.

#![allow(dead_code)]

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

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

impl TlsFiles {
    /// Makes a CA, a server certificate valid for `server_ips` and a client certificate in
    /// `dir` (for an etcd that listens elsewhere than 127.0.0.1, e.g. inside a lab).
    pub fn make(dir: &Path, server_ips: &[&str]) -> TlsFiles {
        make_certs_for(dir, server_ips)
    }

    /// The server certificate (PEM).
    pub fn server_cert(&self) -> &Path {
        &self.server_cert
    }

    /// The server key (PEM).
    pub fn server_key(&self) -> &Path {
        &self.server_key
    }
}

/// One etcd process and everything it owns.
pub struct Etcd {
    child: Option<Child>,
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    /// While set, etcd serves clients on this port instead (see `start_hidden`).
    hidden_port: Option<u16>,
    tls: Option<TlsFiles>,
    /// Holds the certificates (deleted on drop).
    _certs: Option<TempDir>,
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
    /// Starts a plain-HTTP etcd and waits until it serves requests.
    pub async fn start() -> Etcd {
        Self::launch(None).await
    }

    /// Starts an HTTPS-only etcd that requires client certificates.
    pub async fn start_tls() -> Etcd {
        let certs = tempfile::tempdir().expect("tempdir for certificates");
        let tls = make_certs(certs.path());
        Self::launch(Some((tls, certs))).await
    }

    async fn launch(tls: Option<(TlsFiles, TempDir)>) -> Etcd {
        let (tls, certs) = match tls {
            Some((t, d)) => (Some(t), Some(d)),
            None => (None, None),
        };
        let mut e = Etcd {
            child: None,
            dir: tempfile::tempdir().expect("tempdir for etcd"),
            client_port: free_port(),
            peer_port: free_port(),
            hidden_port: None,
            tls,
            _certs: certs,
            starts: 0,
        };
        e.spawn();
        e.wait_healthy().await;
        e
    }

    /// The client URL (`http://127.0.0.1:PORT` or `https://...`).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let port = self.hidden_port.unwrap_or(self.client_port);
        format!("{scheme}://127.0.0.1:{port}")
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
        let data = self.dir.path().join("data");
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        self.starts += 1;
        let log = File::create(self.dir.path().join(format!("etcd.{}.log", self.starts)))
            .expect("etcd log file");
        let mut cmd = Command::new(etcd_bin());
        cmd.arg("--name=weft-test")
            .arg(format!("--data-dir={}", data.display()))
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
                etcd_bin()
            )
        });
        self.child = Some(child);
    }

    /// Waits until etcd answers a KV request (or panics after 20 s, showing its log).
    pub async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("etcd exited early ({status}); log:\n{}", self.log());
                }
            }
            if let Ok(mut c) = self.client().await {
                if c.get("weft-health-probe", None).await.is_ok() {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!("etcd did not become healthy in 20 s; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A fresh client for this etcd (with the client certificate for TLS).
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

    /// Runs etcd on its data dir but on a different client port, so the clients that know
    /// the usual endpoint cannot see it; `endpoint()` and `client()` reach it meanwhile.
    /// `restart()` brings it back on the usual port.
    pub async fn start_hidden(&mut self) {
        self.stop();
        self.hidden_port = Some(free_port());
        self.spawn();
        self.wait_healthy().await;
    }

    /// Starts etcd again on the same data dir and ports and waits until it is healthy.
    pub async fn restart(&mut self) {
        self.stop();
        self.hidden_port = None;
        // The kernel may keep the port for a moment after the kill.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpListener::bind(("127.0.0.1", self.client_port)).is_err() {
            assert!(Instant::now() < deadline, "client port stays busy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.spawn();
        self.wait_healthy().await;
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
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

/// A P-256 CA, a server certificate for 127.0.0.1 and a client certificate, all for 1 day.
fn make_certs(dir: &Path) -> TlsFiles {
    make_certs_for(dir, &["127.0.0.1"])
}

/// [`make_certs`] with the server certificate valid for `server_ips`.
fn make_certs_for(dir: &Path, server_ips: &[&str]) -> TlsFiles {
    let san: Vec<String> = server_ips.iter().map(|ip| format!("IP:{ip}")).collect();
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
        format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName={},DNS:localhost\n", san.join(",")),
    )
    .expect("write server.ext");
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
    )
    .expect("write client.ext");
    let server_cn = server_ips.first().copied().unwrap_or("127.0.0.1");
    for (name, cn) in [("server", server_cn), ("client", "weft-node")] {
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
