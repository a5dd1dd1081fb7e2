//! End-to-end benchmark: the same two-host namespace topology built four times: Linux kernel
//! VXLAN configured as flanneld does (with its default offloads, and with them off as a
//! wire-like reference), weft vxlan, and weft host-gw (no overlay: kernel routes via the peer),
//! measured with the same tools in the same run and printed side by side, with the underlay
//! itself (host to host, in the host-gw lab) as the ceiling. The kernel and weft vxlan labs are
//! dual stack (flanneld's `flannel-v6.<VNI>` beside `flannel.<VNI>`, weft's one TUN), and TCP
//! over IPv6 (1 stream, pod to pod in VXLAN over the IPv6 underlay) is measured beside IPv4.
//!
//! CPU cost: around each TCP run the bench samples the whole machine's busy time from
//! /proc/stat (user, system, irq, softirq: everything but idle and iowait) and, for weft, the
//! weft processes' own utime + stime from /proc/<pid>/stat; it prints CPU-milliseconds per
//! Gbit delivered. The kernel VXLAN data path runs in softirq and in the iperf3 processes, so
//! the machine total is the comparable figure; the weft column also says how much of it was
//! weft's own threads.
//!
//! Run: `cargo bench --bench e2e` (root; about three minutes). Environment:
//! * `WEFT_E2E_SECS`: length of each iperf3 run (default 10);
//! * `WEFT_E2E_ROUNDS`: measure every column this many times, in turn, and print each round
//!   and the median per cell (default 1; this VM's runs vary by about 10%);
//! * `WEFT_E2E_ONLY=weft`: measure weft alone (the other columns print NaN);
//! * `WEFT_E2E_ARGS`: extra flags for the weft nodes (e.g. `--workers=1`);
//! * `WEFT_E2E_METRICS`: print both weft nodes' non-zero metrics after the weft run;
//! * `WEFT_E2E_WAKEUPS`: around weft's 1-stream TCP runs (IPv4, then IPv6) print, for each
//!   node, each data-path thread's context switches (voluntary: it slept and was woken;
//!   involuntary: preempted) and CPU time, with the batches each direction handled, so
//!   wake-ups per batch show where a packet train waits; with `WEFT_E2E_PERF=<dir>` also
//!   `perf record -g` of each node during those runs (`<dir>/ipv4-sender.data` ...);
//! * `WEFT_BIN`: another weft build (e.g. the previous commit's) for a before/after pair;
//! * `WEFT_E2E_IPV4_ONLY`: the weft lab is IPv4-only (for a `WEFT_BIN` older than dual
//!   stack; its TCP over IPv6 prints NaN).

#[path = "../tests/harness/mod.rs"]
mod harness;

use std::net::Ipv4Addr;
use std::time::Duration;

use harness::{
    clk_tck, iperf3_tcp, iperf3_udp, process_cpu_secs, require_root, Etcd, KernelFlannelNode, Lab,
    Netns, WeftNode,
};

#[derive(Debug, Default, Clone, Copy)]
struct Numbers {
    tcp1: f64,
    /// TCP over IPv6, 1 stream (NaN where the lab has no IPv6 pods).
    tcp6_1: f64,
    tcp4: f64,
    udp64_pps: f64,
    /// 64-byte datagrams/s the client managed to send (received < sent: loss on the path).
    udp64_sent_pps: f64,
    ping_ms: f64,
    /// Machine CPU-ms per Gbit delivered, 1 and 4 TCP streams.
    cpu1: f64,
    cpu4: f64,
    /// Of that, the weft processes' own CPU-ms per Gbit (0 for the kernel).
    weft_cpu1: f64,
    weft_cpu4: f64,
}

/// Busy (non-idle, non-iowait) CPU seconds of the whole machine since boot.
fn machine_busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let line = stat.lines().next().expect("cpu line");
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is inside user already)
    let busy: u64 = v
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    busy as f64 / clk_tck()
}

/// CPU seconds spent by the machine and by `pids` while `f` ran, and `f`'s result.
fn with_cpu<T>(pids: &[u32], f: impl FnOnce() -> T) -> (T, f64, f64) {
    let procs = |pids: &[u32]| pids.iter().map(|&p| process_cpu_secs(p)).sum::<f64>();
    let (m0, p0) = (machine_busy_secs(), procs(pids));
    let t = f();
    let (m1, p1) = (machine_busy_secs(), procs(pids));
    (t, m1 - m0, p1 - p0)
}

fn tcp_streams(client: &Netns, server: &Netns, dst: Ipv4Addr, secs: u32, streams: u32) -> f64 {
    if streams == 1 {
        return iperf3_tcp(client, server, dst, secs).gbit_per_s;
    }
    let srv = server.iperf3_server(5203);
    let json = client.iperf3_client(dst, 5203, secs, &["-P", &streams.to_string()]);
    drop(srv.output_within(Duration::from_secs(5)));
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("iperf3 sum_received")
        / 1e9
}

fn measure(lab: &Lab, secs: u32, pids: &[u32]) -> Numbers {
    measure_with(lab, secs, pids, &[])
}

/// [`measure`], with the wake-up breakdown of `nodes` (sender, receiver) around the 1-stream
/// TCP runs when `WEFT_E2E_WAKEUPS` is set.
fn measure_with(lab: &Lab, secs: u32, pids: &[u32], nodes: &[&WeftNode]) -> Numbers {
    let (a, b) = (lab.host(0).pod(0), lab.host(1).pod(0));
    let wakeups = std::env::var_os("WEFT_E2E_WAKEUPS").is_some() && !nodes.is_empty();
    if wakeups {
        let dst = b_addr(lab);
        assert!(
            a.wait_for_ping(dst, Duration::from_secs(5)),
            "{dst} unreachable"
        );
        settle();
        let before = Wakeups::sample(nodes);
        let perf = profile(nodes, "ipv4");
        let t = iperf3_tcp(a, b, dst, secs);
        drop(perf);
        Wakeups::sample(nodes).print_since(
            &before,
            &format!(
                "TCP over IPv4, 1 stream, {:.2} Gbit/s, {} retransmits",
                t.gbit_per_s, t.retransmits
            ),
        );
    }
    let mut n = measure_between(a, b, b_addr(lab), secs, pids);
    if lab.host(1).has_ipv6() {
        let dst6 = b.addr6();
        assert!(
            a.wait_for_ping(dst6, Duration::from_secs(5)),
            "{dst6} unreachable"
        );
        settle();
        let before = wakeups.then(|| Wakeups::sample(nodes));
        let perf = wakeups.then(|| profile(nodes, "ipv6"));
        let t = iperf3_tcp(a, b, dst6, secs);
        n.tcp6_1 = t.gbit_per_s;
        drop(perf);
        if let Some(before) = before {
            Wakeups::sample(nodes).print_since(
                &before,
                &format!(
                    "TCP over IPv6, 1 stream, {:.2} Gbit/s, {} retransmits",
                    n.tcp6_1, t.retransmits
                ),
            );
        }
    }
    n
}

/// With `WEFT_E2E_PERF=<dir>`: `perf record -g` of both weft nodes into
/// `<dir>/<what>-{sender,receiver}.data` until the returned guard drops (SIGINT lets perf
/// write its file). Read with `perf report -i <file> --comm weft-dp0tx --no-children`.
fn profile(nodes: &[&WeftNode], what: &str) -> Profile {
    let Some(dir) = std::env::var_os("WEFT_E2E_PERF") else {
        return Profile(Vec::new());
    };
    let _ = std::fs::create_dir_all(&dir);
    nodes
        .iter()
        .zip(["sender", "receiver"])
        .filter_map(|(n, role)| {
            let out = std::path::Path::new(&dir).join(format!("{what}-{role}.data"));
            std::process::Command::new("perf")
                .args(["record", "-q", "-F", "999", "-g", "-p"])
                .arg(n.pid()?.to_string())
                .arg("-o")
                .arg(out)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .ok()
        })
        .collect::<Vec<_>>()
        .into()
}

/// Stops [`profile`]'s perf processes (SIGINT, then waits for them to write their files).
struct Profile(Vec<std::process::Child>);

impl From<Vec<std::process::Child>> for Profile {
    fn from(v: Vec<std::process::Child>) -> Profile {
        Profile(v)
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let _ = c.wait();
        }
    }
}

/// Per-thread scheduler counts of the weft nodes and their batch counters, at one moment.
struct Wakeups {
    /// (node, thread name) -> (voluntary, involuntary context switches, seconds on a CPU,
    /// seconds runnable but waiting for one: /proc/<tid>/schedstat).
    threads: std::collections::BTreeMap<(usize, String), (u64, u64, f64, f64)>,
    /// When it was taken.
    at: std::time::Instant,
    /// node -> (tx batches, their messages, rx batches, their messages, packets sent,
    /// packets received, drops of every reason).
    batches: Vec<[u64; 7]>,
}

impl Wakeups {
    fn sample(nodes: &[&WeftNode]) -> Wakeups {
        let mut threads = std::collections::BTreeMap::new();
        let mut batches = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            let pid = n.pid().expect("running");
            for task in std::fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let dir = task.path();
                let name = std::fs::read_to_string(dir.join("comm"))
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                if !name.starts_with("weft-dp") {
                    continue;
                }
                let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
                let field = |f: &str| {
                    status
                        .lines()
                        .find_map(|l| l.strip_prefix(f))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0u64)
                };
                // schedstat: nanoseconds on a CPU, nanoseconds waiting on a run queue, slices.
                let sched = std::fs::read_to_string(dir.join("schedstat")).unwrap_or_default();
                let ns: Vec<f64> = sched
                    .split_whitespace()
                    .map(|x| x.parse::<f64>().unwrap_or(0.0) / 1e9)
                    .collect();
                let e = threads.entry((i, name)).or_insert((0, 0, 0.0, 0.0));
                e.0 += field("voluntary_ctxt_switches:");
                e.1 += field("nonvoluntary_ctxt_switches:");
                e.2 += ns.first().copied().unwrap_or(0.0);
                e.3 += ns.get(1).copied().unwrap_or(0.0);
            }
            let m = |s: &str| n.metric(s);
            batches.push([
                m(r#"weft_batches_total{direction="tx"}"#),
                m(r#"weft_batch_packets_total{direction="tx"}"#),
                m(r#"weft_batches_total{direction="rx"}"#),
                m(r#"weft_batch_packets_total{direction="rx"}"#),
                m(r#"weft_packets_total{direction="tx"}"#),
                m(r#"weft_packets_total{direction="rx"}"#),
                n.http("/metrics")
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.starts_with("weft_drops_total{"))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                    .sum(),
            ]);
        }
        Wakeups {
            threads,
            batches,
            at: std::time::Instant::now(),
        }
    }

    fn print_since(&self, before: &Wakeups, what: &str) {
        let wall = self.at.duration_since(before.at).as_secs_f64();
        eprintln!("wake-ups during {what} ({wall:.1} s):");
        for (i, role) in ["sender", "receiver"].iter().enumerate() {
            let (Some(b1), Some(b0)) = (self.batches.get(i), before.batches.get(i)) else {
                continue;
            };
            let d: Vec<u64> = (0..7).map(|k| b1[k] - b0[k]).collect();
            eprintln!(
                "  {role}: tx {} batches ({:.1} TUN reads, {:.1} packets sent each), rx {} batches ({:.1} socket messages, {:.1} packets delivered each), {} drops",
                d[0],
                d[1] as f64 / d[0].max(1) as f64,
                d[4] as f64 / d[0].max(1) as f64,
                d[2],
                d[3] as f64 / d[2].max(1) as f64,
                d[5] as f64 / d[2].max(1) as f64,
                d[6]
            );
            for ((node, name), (v1, n1, c1, w1)) in
                self.threads.iter().filter(|((n, _), _)| *n == i)
            {
                let (v0, n0, c0, w0) = before
                    .threads
                    .get(&(*node, name.clone()))
                    .copied()
                    .unwrap_or_default();
                let batches = if name.ends_with("tx") { d[0] } else { d[2] };
                let (on, waiting) = (c1 - c0, w1 - w0);
                eprintln!(
                    "    {name}: on a CPU {on:.2} s, runnable but waiting {waiting:.2} s, asleep {:.2} s; {} woken, {} preempted; {:.2} wake-ups per {} batch",
                    (wall - on - waiting).max(0.0),
                    v1 - v0,
                    n1 - n0,
                    (v1 - v0) as f64 / batches.max(1) as f64,
                    if name.ends_with("tx") { "tx" } else { "rx" },
                );
            }
        }
    }
}

fn b_addr(lab: &Lab) -> Ipv4Addr {
    lab.host(1).pod(0).addr()
}

/// Waits (at most 20 s) until the whole machine is less than 15% busy over 300 ms. The
/// previous lab's namespaces are torn down by kernel workers after they are deleted, and that
/// work would otherwise land in this lab's first measurement.
fn settle() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let b0 = machine_busy_secs();
        std::thread::sleep(Duration::from_millis(300));
        let share = (machine_busy_secs() - b0) / (0.3 * cpus);
        if share < 0.15 {
            return;
        }
        if std::time::Instant::now() > deadline {
            eprintln!(
                "e2e: the machine is still {:.0}% busy; measuring anyway",
                share * 100.0
            );
            return;
        }
    }
}

fn measure_between(a: &Netns, b: &Netns, dst: Ipv4Addr, secs: u32, pids: &[u32]) -> Numbers {
    assert!(
        a.wait_for_ping(dst, Duration::from_secs(5)),
        "{dst} unreachable"
    );
    settle();
    // CPU-ms per Gbit delivered: CPU seconds * 1000 / (Gbit/s * seconds).
    let per_gbit = |cpu: f64, gbit_s: f64| cpu * 1e3 / (gbit_s * f64::from(secs)).max(1e-9);
    let (tcp1, m1, w1) = with_cpu(pids, || tcp_streams(a, b, dst, secs, 1));
    let (tcp4, m4, w4) = with_cpu(pids, || tcp_streams(a, b, dst, secs, 4));
    let udp = iperf3_udp(a, b, dst, secs.min(5), 64);
    let ping = a.ping(dst, 50);
    Numbers {
        tcp1,
        tcp6_1: f64::NAN,
        tcp4,
        udp64_pps: udp.received_pps,
        udp64_sent_pps: udp.sent_pps,
        ping_ms: ping.avg_rtt_ms.unwrap_or(f64::NAN),
        cpu1: per_gbit(m1, tcp1),
        cpu4: per_gbit(m4, tcp4),
        weft_cpu1: per_gbit(w1, tcp1),
        weft_cpu4: per_gbit(w4, tcp4),
    }
}

fn kernel(offloads: bool, secs: u32) -> Numbers {
    let mut lab = Lab::builder().hosts(2).ipv6().build();
    let mut nodes = Vec::new();
    for i in 0..2 {
        let (s, s6) = (Lab::default_pod_subnet(i), Lab::default_pod_subnet6(i));
        let k = KernelFlannelNode::builder(s)
            .ipv6(s6)
            .offloads(offloads)
            .install(lab.host(i));
        lab.host_mut(i).add_dual_pod_with_mtu(s, s6, k.mtu());
        nodes.push(k);
    }
    nodes[0].peer_with(&nodes[1]);
    nodes[1].peer_with(&nodes[0]);
    measure(&lab, secs, &[])
}

/// flannel's dual-stack vxlan config.
const DUAL_STACK_VXLAN: &str = r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/48","Backend":{"Type":"vxlan"}}"#;

fn weft(secs: u32, extra: &[&str]) -> Numbers {
    let ipv4_only = std::env::var_os("WEFT_E2E_IPV4_ONLY").is_some();
    let mut lab = match ipv4_only {
        true => Lab::builder().hosts(2).build(),
        false => Lab::builder().hosts(2).ipv6().build(),
    };
    let etcd = Etcd::start_in(lab.segment(0));
    let start = match ipv4_only {
        true => {
            etcd.put_config(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan"}}"#);
            WeftNode::start_with_pod
        }
        false => {
            etcd.put_config(DUAL_STACK_VXLAN);
            WeftNode::start_dual_with_pod
        }
    };
    let n0 = start(&mut lab, 0, &etcd, extra);
    let n1 = start(&mut lab, 1, &etcd, extra);
    let pids: Vec<u32> = [n0.pid(), n1.pid()].into_iter().flatten().collect();
    let numbers = measure_with(&lab, secs, &pids, &[&n0, &n1]);
    if std::env::var_os("WEFT_E2E_METRICS").is_some() {
        for (name, n) in [("sender", &n0), ("receiver", &n1)] {
            let text = n.http("/metrics").unwrap_or_default();
            for l in text
                .lines()
                .filter(|l| !l.starts_with('#') && !l.contains(" 0"))
            {
                eprintln!("{name}: {l}");
            }
        }
    }
    numbers
}

/// weft host-gw pod to pod, then host to host over the same underlay (the ceiling).
fn weft_host_gw(secs: u32) -> (Numbers, Numbers) {
    let mut lab = Lab::builder().hosts(2).build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"host-gw"}}"#);
    let _n0 = WeftNode::start_with_pod(&mut lab, 0, &etcd, &[]);
    let _n1 = WeftNode::start_with_pod(&mut lab, 1, &etcd, &[]);
    let pods = measure(&lab, secs, &[]);
    let (h0, h1) = (lab.host(0), lab.host(1));
    let underlay = measure_between(h0, h1, h1.addr(), secs, &[]);
    (pods, underlay)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass nothing: skip then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    require_root();
    let secs: u32 = std::env::var("WEFT_E2E_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    // WEFT_E2E_ONLY=weft measures weft alone (while iterating; the other columns print NaN).
    let only_weft = std::env::var("WEFT_E2E_ONLY").is_ok_and(|v| v == "weft");
    let skipped = Numbers {
        tcp1: f64::NAN,
        tcp6_1: f64::NAN,
        tcp4: f64::NAN,
        udp64_pps: f64::NAN,
        udp64_sent_pps: f64::NAN,
        ping_ms: f64::NAN,
        cpu1: f64::NAN,
        cpu4: f64::NAN,
        weft_cpu1: f64::NAN,
        weft_cpu4: f64::NAN,
    };
    let rounds: usize = std::env::var("WEFT_E2E_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1);
    let extra_s = std::env::var("WEFT_E2E_ARGS").unwrap_or_default();
    let extra: Vec<&str> = extra_s.split_whitespace().collect();
    // Each round measures every column once, in turn, so slow drifts of the VM touch all.
    let mut all: Vec<[Numbers; 5]> = Vec::new();
    for round in 1..=rounds {
        let (k, kw) = if only_weft {
            (skipped, skipped)
        } else {
            eprintln!("e2e round {round}/{rounds}: kernel VXLAN (default offloads) ...");
            let k = kernel(true, secs);
            eprintln!("e2e round {round}/{rounds}: kernel VXLAN (offloads off, wire-like) ...");
            (k, kernel(false, secs))
        };
        eprintln!("e2e round {round}/{rounds}: weft {extra_s} ...");
        let w = weft(secs, &extra);
        let (hg, u) = if only_weft {
            (skipped, skipped)
        } else {
            eprintln!("e2e round {round}/{rounds}: weft host-gw, then the bare underlay ...");
            weft_host_gw(secs)
        };
        all.push([k, w, kw, hg, u]);
        if rounds > 1 {
            print_table(
                &format!("round {round}"),
                secs,
                &extra_s,
                &all[all.len() - 1..],
            );
        }
    }
    let title = if rounds > 1 {
        format!("median of {rounds} rounds")
    } else {
        "one round".to_string()
    };
    print_table(&title, secs, &extra_s, &all);
}

/// Prints the comparison table of the median, per cell, over `rounds`.
fn print_table(title: &str, secs: u32, extra_s: &str, rounds: &[[Numbers; 5]]) {
    let median = |col: usize, f: fn(&Numbers) -> f64| {
        let mut v: Vec<f64> = rounds.iter().map(|r| f(&r[col])).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    println!();
    println!("end-to-end ({title}), two hosts on one bridge, pod to pod, {secs} s per TCP run; weft flags: [{extra_s}]");
    println!(
        "{:<28} {:>12} {:>12} {:>11} {:>17} {:>13} {:>13}",
        "", "kernel VXLAN", "weft", "weft/kernel", "kernel, offl. off", "weft host-gw", "underlay"
    );
    let row = |name: &str, f: fn(&Numbers) -> f64| {
        let (k, w) = (median(0, f), median(1, f));
        println!(
            "{:<28} {:>12.2} {:>12.2} {:>10.2}x {:>17.2} {:>13.2} {:>13.2}",
            name,
            k,
            w,
            w / k,
            median(2, f),
            median(3, f),
            median(4, f)
        );
    };
    row("TCP, 1 stream (Gbit/s)", |n| n.tcp1);
    row("TCP/IPv6, 1 stream (Gbit/s)", |n| n.tcp6_1);
    row("TCP, 4 streams (Gbit/s)", |n| n.tcp4);
    row("UDP 64 B (kpps received)", |n| n.udp64_pps / 1e3);
    row("UDP 64 B (kpps sent)", |n| n.udp64_sent_pps / 1e3);
    row("ping RTT (ms, lower wins)", |n| n.ping_ms);
    row("CPU-ms/Gbit, 1 stream", |n| n.cpu1);
    row("CPU-ms/Gbit, 4 streams", |n| n.cpu4);
    println!(
        "of which weft's own threads: {:.1} CPU-ms/Gbit (1 stream), {:.1} (4 streams)",
        median(1, |n| n.weft_cpu1),
        median(1, |n| n.weft_cpu4)
    );
    println!(
        "TCP over IPv6 / over IPv4, 1 stream: weft {:.2}x, kernel VXLAN {:.2}x",
        median(1, |n| n.tcp6_1) / median(1, |n| n.tcp1),
        median(0, |n| n.tcp6_1) / median(0, |n| n.tcp1)
    );
}
