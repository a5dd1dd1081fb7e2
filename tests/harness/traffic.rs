//! Traffic between namespaces, meant to run in pods (they work in any namespace): ping and
//! its summary, a checksummed TCP transfer (python3 on both ends hashes the stream), and
//! iperf3 TCP throughput and UDP packet rates. Each takes an IPv4 or an IPv6 destination
//! (`ping` is ping6 for an IPv6 address).

use std::net::IpAddr;
use std::process::Output;
use std::time::{Duration, Instant};

use super::netns::Netns;
use super::process::{describe, Proc};

/// Traffic helpers on any namespace (pods are where tests use them).
impl Netns {
    /// Pings `dst` (IPv4 or IPv6) `count` times (0.2 s apart, 1 s per reply at most).
    pub fn ping(&self, dst: impl Into<IpAddr>, count: u32) -> PingStats {
        self.ping_sized(dst, count, 56)
    }

    /// Pings `dst` with `size` data bytes and fragmentation forbidden (IPv4's don't-fragment
    /// bit; an IPv6 sender never fragments either), for MTU checks.
    pub fn ping_sized(&self, dst: impl Into<IpAddr>, count: u32, size: u32) -> PingStats {
        let dst: IpAddr = dst.into();
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
    pub fn wait_for_ping(&self, dst: impl Into<IpAddr>, timeout: Duration) -> bool {
        let dst: IpAddr = dst.into();
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
        dst: impl Into<IpAddr>,
        port: u16,
        secs: u32,
        extra: &[&str],
    ) -> serde_json::Value {
        let dst: IpAddr = dst.into();
        let (dst, port_s, secs_s) = (dst.to_string(), port.to_string(), secs.to_string());
        let mut args = vec!["iperf3", "-J", "-c", &dst, "-p", &port_s, "-t", &secs_s];
        args.extend_from_slice(extra);
        let give_up = Instant::now() + Duration::from_secs(5);
        loop {
            let out = self.exec_within(&args, Duration::from_secs(secs as u64 + 20));
            let json: serde_json::Value =
                serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
                    panic!(
                        "[netns {}] {}",
                        self.name(),
                        describe(&args.join(" "), &out)
                    )
                });
            match json.get("error").and_then(|e| e.as_str()) {
                None => return json,
                Some(e) if e.contains("unable to connect") && Instant::now() < give_up => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Some(e) => panic!("[netns {}] iperf3 to {dst}:{port}: {e}", self.name()),
            }
        }
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

const TCP_SINK: &str = r#"
import hashlib, socket, sys, time
port, timeout, family = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
if family == "6":
    s = socket.socket(socket.AF_INET6)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
else:
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
/// (listening on `dst:port`, IPv4 or IPv6); both ends hash the stream with SHA-256. The
/// whole exchange is bounded by `timeout`; `Err` says which side failed and how.
pub fn tcp_transfer(
    client: &Netns,
    server: &Netns,
    dst: impl Into<IpAddr>,
    port: u16,
    bytes: u64,
    timeout: Duration,
) -> Result<Transfer, String> {
    let dst: IpAddr = dst.into();
    let secs = format!("{}", timeout.as_secs_f64());
    let family = if dst.is_ipv6() { "6" } else { "4" };
    let sink = server.spawn(&["python3", "-c", TCP_SINK, &port.to_string(), &secs, family]);
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
pub fn iperf3_tcp(
    client: &Netns,
    server: &Netns,
    dst: impl Into<IpAddr>,
    secs: u32,
) -> TcpThroughput {
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
pub fn iperf3_udp(
    client: &Netns,
    server: &Netns,
    dst: impl Into<IpAddr>,
    secs: u32,
    len: u32,
) -> UdpRate {
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
