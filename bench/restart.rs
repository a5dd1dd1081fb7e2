//! Restart budget: what pod traffic loses when weft is replaced or restarted, on the two-host
//! lab the e2e benchmark uses. Four ways, each under a ping stream (pod 1 -> pod 0, one ping
//! every 1 ms asked for; a loaded 2-CPU machine manages about one every 2-3 ms) and
//! a running TCP stream (iperf3, pod 0 -> pod 1, 0.1 s intervals):
//!
//! * `takeover`: `weft run --takeover` beside the running node;
//! * `sigterm`: SIGTERM, then the same command again;
//! * `sigkill`: SIGKILL, then the same command again (etcd up);
//! * `sigkill, etcd down`: etcd frozen (SIGSTOP), SIGKILL, the same command again; etcd
//!   thawed at the end.
//!
//! Node 0 runs with `--persist-tun` (as the systemd unit does) and a state file. Printed per
//! way: pings lost (of those sent), the longest gap between two answered pings, the longest
//! TCP stall (consecutive 0.1 s intervals with under 1% of the stream's median rate), and the
//! time from the new process's start to the first ping answered after the gap.
//!
//! Run: `cargo bench --bench restart` (root; about two minutes). Environment:
//! * `WEFT_RESTART_ROUNDS`: rounds of every way (default 3), medians printed;
//! * `WEFT_RESTART_ONLY`: only the ways whose name starts with this (`takeover`, `SIGKILL`);
//! * `WEFT_RESTART_METRICS`: print the new node's drop and error counters after each run;
//! * `WEFT_BIN`: another weft build for a before/after pair; a build without `--takeover`
//!   and `--state-file` skips the takeover and uses neither flag.

#[path = "../tests/harness/mod.rs"]
mod harness;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harness::{require_root, weft_bin, Etcd, Lab, Proc, StartingWeft, WeftNode, VXLAN_CONFIG};

/// Seconds of traffic per run; the event comes at [`EVENT_AT`].
const RUN_SECS: u32 = 8;
const EVENT_AT: Duration = Duration::from_millis(2500);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Way {
    Takeover,
    Sigterm,
    Sigkill,
    SigkillEtcdDown,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::Takeover => "takeover",
            Way::Sigterm => "SIGTERM restart",
            Way::Sigkill => "SIGKILL restart",
            Way::SigkillEtcdDown => "SIGKILL restart, etcd down",
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone, Copy)]
struct Budget {
    sent: u32,
    lost: u32,
    /// Longest gap between answered pings, ms.
    gap_ms: f64,
    /// Longest TCP stall, s.
    stall_s: f64,
    /// From the new process's start to the first ping answered after the gap, ms (0: no
    /// gap; NaN: never).
    first_ms: f64,
}

fn epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) with plain integers, on a process this bench started.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Whether the weft under test knows the takeover and the state file.
fn supports_takeover() -> bool {
    std::process::Command::new(weft_bin())
        .args(["run", "--help"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--takeover"))
}

/// Stops a `ping -D` run (SIGINT: it prints its replies and exits): the answered pings'
/// epoch times, and how many pings up to the last answered one were sent (those in flight at
/// the stop are not counted: they were cut off, not lost).
fn ping_result(ping: Proc) -> (Vec<f64>, u32) {
    ping.signal(libc::SIGINT);
    let out = ping.output_within(Duration::from_secs(10));
    let text = String::from_utf8_lossy(&out.stdout);
    let replies: Vec<(f64, u32)> = text
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| {
            let t = l.strip_prefix('[')?.split(']').next()?.parse().ok()?;
            let seq = l
                .split("icmp_seq=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some((t, seq))
        })
        .collect();
    // Pings sent after the last answered one: in flight at the stop if only one or two,
    // else lost (the path never came back).
    let answered = replies.iter().map(|r| r.1).max().unwrap_or(0);
    let transmitted: u32 = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(answered);
    let sent = match transmitted.saturating_sub(answered) {
        0..=2 => answered,
        _ => transmitted,
    };
    if std::env::var_os("WEFT_RESTART_METRICS").is_some() {
        let got: std::collections::HashSet<u32> = replies.iter().map(|r| r.1).collect();
        let missing: Vec<u32> = (1..=sent).filter(|s| !got.contains(s)).collect();
        println!("  missing pings: {missing:?}");
    }
    (replies.into_iter().map(|r| r.0).collect(), sent)
}

/// The longest run of 0.1 s intervals under 1% of the median rate, in seconds, from iperf3's
/// text report (`-f m`: Mbits/sec); intervals missing at the end (the stream died) count as
/// stalled.
fn longest_stall(iperf: &str) -> f64 {
    let mut rates: Vec<f64> = iperf
        .lines()
        .filter(|l| l.contains("Mbits/sec") && !l.contains("sender") && !l.contains("receiver"))
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let at = w.iter().position(|x| *x == "Mbits/sec")?;
            w.get(at.checked_sub(1)?)?.parse().ok()
        })
        .collect();
    if rates.is_empty() {
        return f64::NAN;
    }
    rates.resize(rates.len().max(RUN_SECS as usize * 10), 0.0);
    // The stream's own rate: the median before the event.
    let before = (EVENT_AT.as_millis() / 100) as usize;
    let mut sorted = rates[..before.min(rates.len())].to_vec();
    sorted.sort_by(f64::total_cmp);
    let low = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0) * 0.01;
    let (mut run, mut worst) = (0usize, 0usize);
    for r in rates {
        run = if r < low { run + 1 } else { 0 };
        worst = worst.max(run);
    }
    worst as f64 * 0.1
}

/// One run of `way`.
fn measure(way: Way, takeover: bool) -> Budget {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = format!("--state-file={}", dir.path().join("weft.state").display());
    let mut flags = vec!["--persist-tun"];
    if takeover {
        flags.push(&state);
    }
    let mut lab = Lab::builder().hosts(2).build();
    let etcd = Etcd::start_in(lab.segment(0));
    etcd.put_config(VXLAN_CONFIG);
    let a = WeftNode::start_with_pod(&mut lab, 0, &etcd, &flags);
    let _b = WeftNode::start_with_pod(&mut lab, 1, &etcd, &[]);
    harness::ping_all_pairs(&lab);
    // Let the state file catch up with the table.
    std::thread::sleep(Duration::from_secs(3));
    let (p0, p1) = (lab.host(0).pod(0), lab.host(1).pod(0));
    let ping = p1.spawn(&["ping", "-n", "-D", "-i", "0.001", &p0.addr().to_string()]);
    let server = p1.spawn(&["iperf3", "-s", "-1", "-p", "5201"]);
    std::thread::sleep(Duration::from_millis(200));
    let (iperf, started) = std::thread::scope(|s| {
        let client = s.spawn(|| {
            // Text output flushed per interval, not JSON: a stream on a path that never comes
            // back is cut off at the end of the run and its intervals so far still count.
            let out = p0.exec_within(
                &[
                    "iperf3",
                    "-c",
                    &p1.addr().to_string(),
                    "-p",
                    "5201",
                    "-t",
                    &RUN_SECS.to_string(),
                    "-i",
                    "0.1",
                    "--forceflush",
                    "-f",
                    "m",
                ],
                Duration::from_secs(u64::from(RUN_SECS) + 2),
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        });
        std::thread::sleep(EVENT_AT);
        let mut frozen = None;
        let mut a = Some(a);
        let started;
        let node = match way {
            Way::Takeover => {
                let mut t = flags.clone();
                t.push("--takeover");
                started = epoch();
                StartingWeft::spawn(lab.host(0), etcd.endpoint(), &t)
            }
            Way::Sigterm => {
                let _ = a.take().map(WeftNode::stop);
                started = epoch();
                StartingWeft::spawn(lab.host(0), etcd.endpoint(), &flags)
            }
            Way::Sigkill | Way::SigkillEtcdDown => {
                if way == Way::SigkillEtcdDown {
                    let pid = etcd.pid().expect("etcd runs");
                    signal(pid, libc::SIGSTOP);
                    frozen = Some(pid);
                }
                if let Some(mut n) = a.take() {
                    n.signal(libc::SIGKILL);
                    let _ = n.wait_exit(Duration::from_secs(5));
                }
                started = epoch();
                StartingWeft::spawn(lab.host(0), etcd.endpoint(), &flags)
            }
        };
        let json = client.join().expect("iperf3 thread");
        if let Some(pid) = frozen {
            signal(pid, libc::SIGCONT);
        }
        if std::env::var_os("WEFT_RESTART_METRICS").is_some() {
            let m = node.get("/metrics").map(|(_, b)| b).unwrap_or_default();
            for l in m
                .lines()
                .filter(|l| !l.starts_with('#') && !l.ends_with(" 0"))
            {
                if l.contains("drop") || l.contains("error") || l.contains("icmp") {
                    println!("  new node: {l}");
                }
            }
        }
        drop(node);
        drop(a);
        (json, started)
    });
    drop(server.output_within(Duration::from_secs(5)));
    let stopped = epoch();
    let (mut times, sent) = ping_result(ping);
    // A path that never came back: the gap runs to the stop.
    if times.last().is_some_and(|&t| t < started) {
        times.push(stopped);
    }
    let lost = sent.saturating_sub(times.len() as u32);
    // The longest gap between answered pings, and the first answered after the start that
    // ends a gap of 10 ms or more (the path coming back).
    let mut gap = 0.0f64;
    let mut back = None;
    for w in times.windows(2) {
        gap = gap.max(w[1] - w[0]);
        if back.is_none() && w[1] > started && w[1] - w[0] >= 0.01 {
            back = Some(w[1]);
        }
    }
    let first_ms = match back {
        Some(t) if t < stopped => (t - started) * 1000.0,
        // Only the stop ended the gap: never (within the run).
        Some(_) => f64::NAN,
        None => 0.0,
    };
    Budget {
        sent,
        lost,
        gap_ms: gap * 1000.0,
        stall_s: longest_stall(&iperf),
        first_ms,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // cargo bench passes --bench; nothing else is taken.
    require_root();
    let rounds: usize = std::env::var("WEFT_RESTART_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let takeover = supports_takeover();
    println!("weft: {} (takeover and state file: {takeover})", weft_bin());
    let ways = [
        Way::Takeover,
        Way::Sigterm,
        Way::Sigkill,
        Way::SigkillEtcdDown,
    ];
    let mut all: Vec<(Way, Vec<Budget>)> = ways.iter().map(|&w| (w, Vec::new())).collect();
    for round in 1..=rounds {
        for (way, results) in all.iter_mut() {
            if *way == Way::Takeover && !takeover {
                continue;
            }
            let only = std::env::var("WEFT_RESTART_ONLY").unwrap_or_default();
            if !only.is_empty() && !way.name().starts_with(&only) {
                continue;
            }
            let b = measure(*way, takeover);
            println!(
                "round {round} {:<28} lost {:>5} of {:>5} pings at 1 ms, longest gap {:>7.1} ms, \
                 longest TCP stall {:>4.1} s, first forwarded {:>7.1} ms after the start",
                way.name(),
                b.lost,
                b.sent,
                b.gap_ms,
                b.stall_s,
                b.first_ms
            );
            results.push(b);
        }
    }
    println!("\nmedians of {rounds} rounds:");
    println!(
        "| way | pings lost (1 ms) | longest gap | longest TCP stall | first forwarded after the start |"
    );
    println!("|---|---|---|---|---|");
    for (way, r) in &all {
        if r.is_empty() {
            println!("| {} | not supported | | | |", way.name());
            continue;
        }
        let m = |f: fn(&Budget) -> f64| median(r.iter().map(f).collect());
        println!(
            "| {} | {:.0} | {:.1} ms | {:.1} s | {:.0} ms |",
            way.name(),
            m(|b| f64::from(b.lost)),
            m(|b| b.gap_ms),
            m(|b| b.stall_s),
            m(|b| b.first_ms)
        );
    }
}
