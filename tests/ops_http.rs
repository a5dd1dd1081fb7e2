//! The ops port speaks HTTP/1.1 to clients that are not polite: requests split across TCP
//! segments, HEAD, methods it does not serve, query strings, oversized headers, connections
//! that never send a request. And it answers from the first moment: /healthz is 200 and
//! /readyz 503 (with the reason) while etcd is still out of reach. Real binary, real etcd,
//! one lab namespace per test. Needs root.

mod harness;

use std::time::{Duration, Instant};

use harness::{
    ops_get, require_root, Etcd, Lab, Proc, StartingWeft, WeftNode, ETCD_IP, OPS_PORT, VXLAN_CONFIG,
};

/// A raw TCP client run inside a namespace: sends each chunk (hex) with `pause` seconds
/// between them, optionally `pad` bytes of extra headers before the final blank line of the
/// last chunk, then reads until EOF. Prints JSON: how the read ended, the bytes received,
/// seconds taken.
const RAW_CLIENT: &str = r#"
import json, socket, sys, time
port, pause, pad = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
chunks = [bytes.fromhex(c) for c in sys.argv[4:]]
if pad:
    filler = b''.join(b'X-Pad-%d: %s\r\n' % (i, b'a' * 90) for i in range(pad // 100 + 1))[:pad]
    filler = filler[:filler.rfind(b'\r\n') + 2] if b'\r\n' in filler else filler
    last = chunks[-1]
    assert last.endswith(b'\r\n\r\n')
    chunks[-1] = last[:-2] + filler + b'\r\n'
t0 = time.time()
s = socket.create_connection(('127.0.0.1', port), timeout=10)
sent = 'ok'
try:
    for i, c in enumerate(chunks):
        if i:
            time.sleep(pause)
        s.sendall(c)
except OSError as e:
    sent = type(e).__name__
data, end = b'', 'eof'
try:
    while True:
        b = s.recv(65536)
        if not b:
            break
        data += b
except ConnectionResetError:
    end = 'reset'
except socket.timeout:
    end = 'timeout'
print(json.dumps({'sent': sent, 'end': end, 'resp': data.decode('latin-1'), 'secs': time.time() - t0}))
"#;

/// What the raw client saw.
#[derive(Debug)]
struct Raw {
    sent: String,
    end: String,
    resp: String,
    secs: f64,
}

impl Raw {
    /// The status code of the response, if one came.
    fn code(&self) -> Option<u16> {
        let line = self.resp.lines().next()?;
        line.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
    }

    fn header(&self, name: &str) -> Option<&str> {
        let (head, _) = self.resp.split_once("\r\n\r\n")?;
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn body(&self) -> &str {
        self.resp.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Sends `chunks` to the ops port of namespace `ns` with `pause` between them (and `pad`
/// bytes of extra headers) and returns what came back.
fn raw(ns: &str, chunks: &[&str], pause: f64, pad: usize) -> Raw {
    let port = OPS_PORT.to_string();
    let pause = pause.to_string();
    let pad = pad.to_string();
    let hexes: Vec<String> = chunks.iter().map(|c| hex(c)).collect();
    let mut argv = vec![
        "ip", "netns", "exec", ns, "python3", "-c", RAW_CLIENT, &port, &pause, &pad,
    ];
    argv.extend(hexes.iter().map(String::as_str));
    let out = Proc::spawn(&argv).output_within(Duration::from_secs(30));
    assert!(
        out.status.success(),
        "raw client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("raw client prints JSON");
    Raw {
        sent: v["sent"].as_str().unwrap_or_default().to_string(),
        end: v["end"].as_str().unwrap_or_default().to_string(),
        resp: v["resp"].as_str().unwrap_or_default().to_string(),
        secs: v["secs"].as_f64().unwrap_or_default(),
    }
}

fn request(method: &str, path: &str) -> String {
    format!("{method} {path} HTTP/1.1\r\nHost: weft\r\nConnection: close\r\n\r\n")
}

fn assert_healthy(ns: &str) {
    let r = raw(ns, &[&request("GET", "/healthz")], 0.0, 0);
    assert_eq!(r.code(), Some(200), "{r:?}");
}

#[test]
fn ops_port_speaks_http() {
    require_root();
    let lab = Lab::builder().hosts(1).build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(VXLAN_CONFIG);
    let node = WeftNode::start(lab.host(0), &etcd, &[]);
    let ns = lab.host(0).name();

    // A request line split across two TCP segments, half a second apart.
    let r = raw(
        ns,
        &["GE", "T /healthz HTTP/1.1\r\nHost: weft\r\n\r\n"],
        0.5,
        0,
    );
    assert_eq!(r.code(), Some(200), "split request: {r:?}");
    assert!(r.secs >= 0.5, "the request was sent in two parts: {r:?}");

    // HEAD: the headers of GET, Content-Length included, and no body.
    let get = raw(ns, &[&request("GET", "/metrics")], 0.0, 0);
    assert_eq!(get.code(), Some(200), "{get:?}");
    let head = raw(ns, &[&request("HEAD", "/metrics")], 0.0, 0);
    assert_eq!(head.code(), Some(200), "{head:?}");
    let len: usize = head
        .header("content-length")
        .unwrap_or_else(|| panic!("HEAD without Content-Length: {head:?}"))
        .parse()
        .expect("numeric Content-Length");
    assert!(len > 100, "HEAD /metrics announces the GET body: {head:?}");
    assert_eq!(head.body(), "", "HEAD carries no body");
    assert!(get.body().contains("weft_packets_total"), "{get:?}");

    // Methods it does not serve.
    for (method, path) in [
        ("POST", "/healthz"),
        ("DELETE", "/metrics"),
        ("PUT", "/status"),
    ] {
        let r = raw(ns, &[&request(method, path)], 0.0, 0);
        assert_eq!(r.code(), Some(405), "{method} {path}: {r:?}");
        let allow = r.header("allow").unwrap_or_default();
        assert!(
            allow.contains("GET") && allow.contains("HEAD"),
            "{method} {path}: {r:?}"
        );
    }
    let r = raw(ns, &[&request("GET", "/nowhere")], 0.0, 0);
    assert_eq!(r.code(), Some(404), "{r:?}");

    // A query string does not change the route.
    let r = raw(ns, &[&request("GET", "/metrics?x=1")], 0.0, 0);
    assert_eq!(r.code(), Some(200), "{r:?}");
    assert!(r.body().contains("weft_packets_total"), "{r:?}");
    let r = raw(ns, &[&request("GET", "/healthz?verbose")], 0.0, 0);
    assert_eq!(r.code(), Some(200), "{r:?}");

    // 10 KB of headers: a clean 431 (or 400), not a reset.
    let r = raw(ns, &[&request("GET", "/healthz")], 0.0, 10_000);
    assert!(
        matches!(r.code(), Some(431 | 400)),
        "10 KB of headers: {r:?}"
    );
    assert_eq!((&*r.sent, &*r.end), ("ok", "eof"), "a clean close: {r:?}");
    assert_healthy(ns);
    // 100 KB: 431 / 400, or the connection is closed; the server keeps serving.
    let r = raw(ns, &[&request("GET", "/healthz")], 0.0, 100_000);
    assert!(
        matches!(r.code(), Some(431 | 400)) || (r.code().is_none() && r.end != "timeout"),
        "100 KB of headers: {r:?}"
    );
    assert_healthy(ns);

    // `weft status` still reads the node.
    let out = node.weft(&["status", "--healthz-port", &OPS_PORT.to_string()]);
    assert!(
        out.status.success(),
        "weft status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("remote leases"));
    let (status, log) = node.stop();
    assert!(status.success(), "{log}");
}

/// Opens `idle` connections that send nothing and one that trickles a header byte a second,
/// then asks /healthz on a fresh connection; prints JSON: the probe's status line and how
/// long it took, and how long until the server closed the idle and the trickling ones.
const IDLE_CLIENTS: &str = r#"
import json, socket, sys, time, threading
port, idle = int(sys.argv[1]), int(sys.argv[2])
conns = [socket.create_connection(('127.0.0.1', port), timeout=30) for _ in range(idle)]
slow = socket.create_connection(('127.0.0.1', port), timeout=30)
slow.sendall(b'GET /healthz HTTP/1.1\r\n')
slow_closed = [None]
t0 = time.time()
def trickle():
    try:
        for i in range(60):
            slow.sendall(b'X')
            time.sleep(1)
    except OSError:
        slow_closed[0] = time.time() - t0
threading.Thread(target=trickle, daemon=True).start()
time.sleep(0.3)
p0 = time.time()
probe = socket.create_connection(('127.0.0.1', port), timeout=20)
probe.sendall(b'GET /healthz HTTP/1.1\r\nHost: weft\r\nConnection: close\r\n\r\n')
resp = b''
try:
    while True:
        b = probe.recv(4096)
        if not b:
            break
        resp += b
except OSError:
    pass
probe_secs = time.time() - p0
# How long until the server closed each idle connection (EOF or reset).
closed = []
for c in conns:
    c.settimeout(max(0.1, 30 - (time.time() - t0)))
    try:
        c.recv(1)
        closed.append(time.time() - t0)
    except ConnectionResetError:
        closed.append(time.time() - t0)
    except socket.timeout:
        closed.append(None)
deadline = time.time() + 20
while slow_closed[0] is None and time.time() < deadline:
    time.sleep(0.2)
print(json.dumps({'probe': resp.decode('latin-1').split('\r\n')[0], 'probe_secs': probe_secs,
                  'idle_closed': closed, 'slow_closed': slow_closed[0]}))
"#;

#[test]
fn idle_and_slow_connections_do_not_starve_probes() {
    require_root();
    let lab = Lab::builder().hosts(1).build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(VXLAN_CONFIG);
    let node = WeftNode::start(lab.host(0), &etcd, &[]);
    let ns = lab.host(0).name();

    let sockets = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| {
                d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                    .filter(|l| l.to_string_lossy().starts_with("socket:"))
                    .count()
            })
            .unwrap_or(0)
    };
    let pid = node.pid().expect("running");
    let before = sockets(pid);
    // More idle connections than the server holds at once (64).
    let clients = Proc::spawn(&[
        "ip",
        "netns",
        "exec",
        ns,
        "python3",
        "-c",
        IDLE_CLIENTS,
        &OPS_PORT.to_string(),
        "100",
    ]);
    std::thread::sleep(Duration::from_millis(1500));
    let held = sockets(pid).saturating_sub(before);
    let out = clients.output_within(Duration::from_secs(90));
    assert!(
        out.status.success(),
        "idle clients: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    eprintln!("{v}");
    assert!(
        v["probe"].as_str().unwrap_or_default().contains(" 200 "),
        "the probe was not answered: {v}"
    );
    let probe_secs = v["probe_secs"].as_f64().unwrap_or(f64::MAX);
    assert!(probe_secs < 3.0, "the probe waited {probe_secs:.1} s: {v}");
    // The server held at most its limit of them at once.
    assert!(held <= 64, "{held} ops connections open at once (limit 64)");
    // Idle connections do not stay open forever: each is closed by the server.
    let closed = v["idle_closed"].as_array().expect("idle_closed");
    assert!(
        closed.iter().all(|c| c.as_f64().is_some_and(|s| s < 20.0)),
        "idle connections left open: {v}"
    );
    // A client that trickles its headers is cut off by the header timeout.
    let slow = v["slow_closed"].as_f64();
    assert!(
        slow.is_some_and(|s| s < 15.0),
        "a trickling client kept its connection: {v}"
    );
    assert_healthy(ns);
    let (status, log) = node.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn healthz_answers_before_etcd_is_reachable() {
    require_root();
    let lab = Lab::builder().hosts(1).build();
    // Nothing listens at etcd's address yet (it is not even assigned).
    let endpoint = format!("http://{ETCD_IP}:2379");
    let mut weft = StartingWeft::spawn(lab.host(0), &endpoint, &[]);

    let until = Instant::now() + Duration::from_secs(5);
    let health = loop {
        if let Some(r) = weft.get("/healthz") {
            break r;
        }
        assert!(weft.is_running(), "weft exited without etcd");
        assert!(
            Instant::now() < until,
            "/healthz did not answer within 5 s while etcd is unreachable"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(health.0, 200, "{health:?}");
    // Still waiting a while later: alive, not ready, and it says why.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(weft.get("/healthz").map(|r| r.0), Some(200));
    let ready = weft.get("/readyz").expect("/readyz answers");
    assert_eq!(ready.0, 503, "{ready:?}");
    assert!(ready.1.contains("etcd"), "the reason names etcd: {ready:?}");
    let status = weft.get("/status").expect("/status answers");
    assert_eq!(status.0, 503, "{status:?}");
    assert!(!status.1.trim().is_empty(), "/status says why: {status:?}");
    let metrics = weft.get("/metrics").expect("/metrics answers");
    assert_eq!(metrics.0, 200, "{metrics:?}");
    assert!(metrics.1.contains("weft_packets_total"), "{metrics:?}");
    assert!(!weft.subnet_file().exists());

    // etcd comes up with a config: the node becomes ready.
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(VXLAN_CONFIG);
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let r = weft.get("/readyz");
        if r.as_ref().is_some_and(|r| r.0 == 200) {
            break;
        }
        assert!(weft.is_running(), "weft exited");
        assert!(Instant::now() < until, "never ready: {r:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = weft.get("/status").expect("/status answers");
    assert_eq!(status.0, 200, "{status:?}");
    assert!(status.1.contains("\"subnet\""), "{status:?}");
    assert!(weft.subnet_file().exists());
    let (code, log) = weft.stop();
    assert!(code.success(), "{log}");
}

#[test]
fn taken_ops_port_fails_start_before_etcd() {
    require_root();
    let lab = Lab::builder().hosts(1).build();
    let ns = lab.host(0).name();
    // Someone else holds the ops port.
    let holder = lab.host(0).spawn(&[
        "python3",
        "-c",
        "import socket,sys,time\ns=socket.socket()\ns.bind(('127.0.0.1',int(sys.argv[1])))\ns.listen()\ntime.sleep(120)",
        &OPS_PORT.to_string(),
    ]);
    let until = Instant::now() + Duration::from_secs(5);
    while !port_taken(ns) {
        assert!(Instant::now() < until, "the holder did not bind");
        std::thread::sleep(Duration::from_millis(100));
    }
    // etcd is unreachable: a node that checks its ops port first fails at once.
    let endpoint = format!("http://{ETCD_IP}:2379");
    let mut weft = StartingWeft::spawn(lab.host(0), &endpoint, &[]);
    let exited = weft.wait_exit(Duration::from_secs(5));
    let (status, log) = weft.stop();
    assert!(
        exited.is_some(),
        "weft kept waiting for etcd with its ops port taken:\n{log}"
    );
    assert!(!status.success(), "{log}");
    assert!(log.contains("binding /healthz"), "{log}");
    drop(holder);
}

/// Whether something listens on the ops port in `ns`.
fn port_taken(ns: &str) -> bool {
    let out = Proc::spawn(&["ip", "netns", "exec", ns, "ss", "-Htln"])
        .output_within(Duration::from_secs(5));
    String::from_utf8_lossy(&out.stdout).contains(&format!("127.0.0.1:{OPS_PORT}"))
}

#[test]
fn accept_errors_at_the_open_files_limit_are_logged_rate_limited() {
    require_root();
    let lab = Lab::builder().hosts(1).build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(VXLAN_CONFIG);
    let node = WeftNode::start(lab.host(0), &etcd, &[]);
    let ns = lab.host(0).name();
    let pid = node.pid().expect("running").to_string();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count();
    // No room for another descriptor: every accept fails with EMFILE (soft limit only).
    let prlimit = |soft: String| {
        let out = Proc::spawn(&["prlimit", "--pid", &pid, &format!("--nofile={soft}:")])
            .output_within(Duration::from_secs(5));
        assert!(out.status.success(), "prlimit: {out:?}");
    };
    prlimit(open.to_string());
    // Twenty connections wait in the backlog for six seconds.
    let out = Proc::spawn(&[
        "ip",
        "netns",
        "exec",
        ns,
        "python3",
        "-c",
        "import socket,sys,time\ncs=[socket.create_connection(('127.0.0.1',int(sys.argv[1])),timeout=5) for _ in range(20)]\ntime.sleep(6)",
        &OPS_PORT.to_string(),
    ])
    .output_within(Duration::from_secs(20));
    assert!(out.status.success(), "clients: {out:?}");
    prlimit("1024".to_string());
    let until = Instant::now() + Duration::from_secs(5);
    while ops_get(ns, "/healthz").map(|r| r.0) != Some(200) {
        assert!(
            Instant::now() < until,
            "/healthz gone after the limit was raised"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, log) = node.stop();
    assert!(status.success(), "{log}");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ops accept failed"))
        .collect();
    assert!(
        (1..=3).contains(&lines.len()),
        "{} accept-failure lines in six seconds:\n{}",
        lines.len(),
        lines.join("\n")
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("suppressed=") && !l.contains("suppressed=0")),
        "the later line counts the failures not logged:\n{}",
        lines.join("\n")
    );
}
