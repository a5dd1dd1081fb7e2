//! Prometheus text exposition of the node's counters.

use std::fmt::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::dataplane::Counters;
use crate::ops::NodeStatus;
use crate::table::LeaseTable;

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A family of one unlabelled sample.
fn single(o: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    family(o, name, kind, help);
    let _ = writeln!(o, "{name} {value}");
}

/// A counter family with a `direction` label (tx, rx).
fn by_direction(o: &mut String, name: &str, help: &str, tx: &AtomicU64, rx: &AtomicU64) {
    family(o, name, "counter", help);
    for (dir, n) in [("tx", tx), ("rx", rx)] {
        let _ = writeln!(
            o,
            "{name}{{direction=\"{dir}\"}} {}",
            n.load(Ordering::Relaxed)
        );
    }
}

/// Renders every counter, the leases known with their per-peer counts, and the node's state
/// (when known) in the text format (0.0.4). Per-peer series exist only for current leases
/// (at most [`crate::dataplane::counters::PEER_SLOTS`] of them), so cardinality is bounded.
pub fn render(c: &Counters, table: &LeaseTable, node: Option<&NodeStatus>) -> String {
    let mut o = String::with_capacity(4096);
    by_direction(
        &mut o,
        "weft_packets_total",
        "Inner packets forwarded, by direction (tx: TUN to peer, rx: peer to TUN).",
        &c.tx_packets,
        &c.rx_packets,
    );
    per_worker(&mut o, c);
    by_direction(
        &mut o,
        "weft_bytes_total",
        "Inner bytes forwarded, by direction.",
        &c.tx_bytes,
        &c.rx_bytes,
    );
    family(
        &mut o,
        "weft_drops_total",
        "counter",
        "Packets dropped, by reason.",
    );
    for (r, n) in c.drops_by_reason() {
        let _ = writeln!(o, "weft_drops_total{{reason=\"{}\"}} {n}", r.as_str());
    }
    let counters = [
        ("weft_send_errors_total", "Datagrams the kernel refused to send.", &c.tx_errors),
        ("weft_tun_write_errors_total", "Packets the TUN device refused.", &c.tun_write_errors),
        ("weft_tun_writes_total", "Writes to the TUN; rx packets / writes is how many packets coalescing merged per write.", &c.tun_writes),
        ("weft_tx_messages_total", "Messages sent to the underlay; tx packets / messages is how many datagrams a train carried.", &c.tx_messages),
        ("weft_tx_refused_trains_total", "UDP_SEGMENT trains the kernel refused (a datagram above the underlay MTU, or no GSO), each resent datagram by datagram.", &c.tx_refused_trains),
        ("weft_tx_refused_train_datagrams_total", "Datagrams of refused trains sent one by one (the kernel fragments those above the path MTU).", &c.tx_refused_train_datagrams),
        ("weft_icmp_unreachable_total", "ICMP destination-unreachable messages sent back to pods.", &c.icmp_unreachable),
        ("weft_tun_ipv6_ignored_total", "IPv6 link-local chatter of the kernel on the TUN (router solicitations, MLD), ignored.", &c.tun_ipv6_ignored),
    ];
    for (name, help, n) in counters {
        single(&mut o, name, "counter", help, n.load(Ordering::Relaxed));
    }
    by_direction(&mut o, "weft_batch_packets_total", "Packets handled in I/O batches, by direction (divide by weft_batches_total for the mean batch size).", &c.tx_batch_packets, &c.rx_batch_packets);
    by_direction(
        &mut o,
        "weft_batches_total",
        "I/O batches, by direction.",
        &c.tx_batches,
        &c.rx_batches,
    );
    leases(&mut o, table);
    peers(&mut o, c, table);
    if let Some(n) = node {
        let gauges = [
            (
                "weft_etcd_connected",
                "1 when the last etcd request succeeded.",
                u64::from(n.etcd_up),
            ),
            (
                "weft_lease_expiry_seconds",
                "Seconds until this node's lease expires unless renewed.",
                n.lease_expires_in_secs,
            ),
            (
                "weft_datapath_running",
                "1 while the data-path workers run.",
                u64::from(n.datapath_running),
            ),
        ];
        for (name, help, value) in gauges {
            single(&mut o, name, "gauge", help, value);
        }
    }
    o
}

/// Inner packets per data-path worker, by direction.
fn per_worker(o: &mut String, c: &Counters) {
    family(
        o,
        "weft_worker_packets_total",
        "counter",
        "Inner packets forwarded by each data-path worker (TUN queue and socket), by direction.",
    );
    let workers = c.workers.load(Ordering::Relaxed).min(c.per_worker.len());
    for (i, w) in c.per_worker[..workers].iter().enumerate() {
        for (dir, n) in [("tx", &w.tx_packets), ("rx", &w.rx_packets)] {
            let _ = writeln!(
                o,
                "weft_worker_packets_total{{worker=\"{i}\",direction=\"{dir}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
    }
}

/// The lease table: remote leases, records not used by reason, PublicIP conflicts.
fn leases(o: &mut String, table: &LeaseTable) {
    single(
        o,
        "weft_leases",
        "gauge",
        "Remote leases in the table.",
        table.len() as u64,
    );
    family(
        o,
        "weft_leases_rejected",
        "gauge",
        "Lease records in etcd not used, by reason (see weft status or weft doctor).",
    );
    let report = table.report();
    for reason in crate::store::LeaseProblem::LABELS {
        let n = report
            .rejected
            .iter()
            .filter(|r| r.reason == reason)
            .count();
        let _ = writeln!(o, "weft_leases_rejected{{reason=\"{reason}\"}} {n}");
    }
    single(
        o,
        "weft_lease_conflicts",
        "gauge",
        "PublicIPs (and PublicIPv6s) that more than one lease names.",
        (report.conflicts.len() + report.conflicts6.len()) as u64,
    );
    single(
        o,
        "weft_table_publishes_total",
        "counter",
        "Lease table snapshots published to the data path (watch events within 50 ms share one).",
        table.generation(),
    );
    single(
        o,
        "weft_leases_other_vni",
        "gauge",
        "Usable vxlan leases whose record names another VNI than this node's (their packets and ours are dropped).",
        report.other_vni.len() as u64,
    );
}

/// Packets and bytes to and from each current remote lease, by direction: IPv4 leases by
/// subnet and PublicIP, then (dual stack) their IPv6 halves by IPv6 subnet and PublicIPv6.
fn peers(o: &mut String, c: &Counters, table: &LeaseTable) {
    let mut rows: Vec<(String, IpAddr)> = Vec::with_capacity(table.len() + table.len6());
    let mut v4: Vec<_> = table.iter().map(|p| (p.subnet, p.public_ip)).collect();
    v4.sort();
    rows.extend(
        v4.into_iter()
            .map(|(s, ip)| (s.to_string(), IpAddr::V4(ip))),
    );
    let mut v6: Vec<_> = table.iter6().map(|p| (p.subnet, p.public_ip)).collect();
    v6.sort();
    rows.extend(
        v6.into_iter()
            .map(|(s, ip)| (s.to_string(), IpAddr::V6(ip))),
    );
    let families = [
        (
            "weft_peer_packets_total",
            "Packets to and from each remote lease (each half of a dual-stack one), by direction.",
        ),
        (
            "weft_peer_bytes_total",
            "Inner bytes to and from each remote lease (each half of a dual-stack one), by direction.",
        ),
    ];
    // Leases that left since the last export: their last counts, once more.
    let retiring = c.peers.retiring();
    for (k, (name, help)) in families.into_iter().enumerate() {
        family(o, name, "counter", help);
        let current = rows
            .iter()
            .filter_map(|(subnet, ip)| Some((subnet.as_str(), *ip, c.peers.get(*ip)?)));
        let departed = retiring
            .iter()
            .map(|(r, s)| (r.subnet.as_str(), r.ip(), *s));
        for (subnet, ip, s) in current.chain(departed) {
            let pair = match k {
                0 => [("tx", &s.tx_packets), ("rx", &s.rx_packets)],
                _ => [("tx", &s.tx_bytes), ("rx", &s.rx_bytes)],
            };
            for (dir, a) in pair {
                let _ = writeln!(
                    o,
                    "{name}{{subnet=\"{subnet}\",public_ip=\"{ip}\",direction=\"{dir}\"}} {}",
                    a.load(Ordering::Relaxed)
                );
            }
        }
    }
    c.peers.exported();
    family(
        o,
        "weft_peer_slots_used",
        "gauge",
        "Per-peer counter slots in use (a slot is given back a few seconds after its lease left, once its last counts were exported).",
    );
    let _ = writeln!(o, "weft_peer_slots_used {}", c.peers.used());
    family(
        o,
        "weft_peer_slots",
        "gauge",
        "Per-peer counter slots: peers beyond this many at once count only in the totals.",
    );
    let _ = writeln!(
        o,
        "weft_peer_slots {}",
        crate::dataplane::counters::PEER_SLOTS - 1
    );
    family(
        o,
        "weft_peer_slots_overflow_total",
        "counter",
        "Times a peer's counts found no per-peer slot free (they count only in the totals).",
    );
    let _ = writeln!(o, "weft_peer_slots_overflow_total {}", c.peers.overflow());
}

/// Reads one sample (`name{labels} value` or `name value`) from exposition text.
pub fn sample(text: &str, series: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::LocalCounters;
    use crate::encap::DropReason;

    #[test]
    fn renders_every_reason_and_parses_back() {
        let c = Counters::default();
        let mut l = LocalCounters::default();
        l.packets += 5;
        l.bytes += 500;
        l.drop(DropReason::WrongVni);
        l.drop(DropReason::WrongVni);
        l.flush_rx(&c, 7);
        let local = crate::table::LocalVtep {
            vni: crate::wire::Vni::new(1).unwrap(),
            mac: crate::wire::EthernetAddress([2, 0, 0, 0, 0, 1]),
            port: 8472,
        };
        let peers = (1..=3u8)
            .map(|i| {
                crate::table::Peer::new(
                    format!("10.1.{i}.0/24").parse().unwrap(),
                    std::net::Ipv4Addr::new(192, 168, 64, i),
                    None,
                    &local,
                )
            })
            .collect();
        let table = LeaseTable::from_peers(24, peers, 1);
        l.peer(std::net::Ipv4Addr::new(192, 168, 64, 2), 4, 40, &c, false);
        l.flush_rx(&c, 1);
        c.workers.store(2, std::sync::atomic::Ordering::Relaxed);
        let mut w1 = LocalCounters::for_worker(1);
        w1.packets += 3;
        w1.writes += 2;
        w1.refused_trains += 1;
        w1.refused_train_datagrams += 44;
        w1.flush_tx(&c, 3);
        let text = render(&c, &table, None);
        assert_eq!(sample(&text, "weft_tx_messages_total"), Some(2));
        assert_eq!(sample(&text, "weft_tx_refused_trains_total"), Some(1));
        assert_eq!(
            sample(&text, "weft_tx_refused_train_datagrams_total"),
            Some(44)
        );
        assert_eq!(
            sample(
                &text,
                "weft_worker_packets_total{worker=\"0\",direction=\"rx\"}"
            ),
            Some(5)
        );
        assert_eq!(
            sample(
                &text,
                "weft_worker_packets_total{worker=\"1\",direction=\"tx\"}"
            ),
            Some(3)
        );
        assert_eq!(
            sample(
                &text,
                "weft_worker_packets_total{worker=\"2\",direction=\"tx\"}"
            ),
            None
        );
        assert_eq!(
            sample(&text, "weft_peer_packets_total{subnet=\"10.1.2.0/24\",public_ip=\"192.168.64.2\",direction=\"rx\"}"),
            Some(4)
        );
        assert_eq!(
            sample(&text, "weft_peer_bytes_total{subnet=\"10.1.2.0/24\",public_ip=\"192.168.64.2\",direction=\"rx\"}"),
            Some(40)
        );
        assert_eq!(
            sample(&text, "weft_packets_total{direction=\"rx\"}"),
            Some(5)
        );
        assert_eq!(
            sample(&text, "weft_bytes_total{direction=\"rx\"}"),
            Some(500)
        );
        assert_eq!(
            sample(&text, "weft_drops_total{reason=\"wrong_vni\"}"),
            Some(2)
        );
        // Two receive batches were flushed: 7 packets, then 1.
        assert_eq!(
            sample(&text, "weft_batch_packets_total{direction=\"rx\"}"),
            Some(8)
        );
        assert_eq!(
            sample(&text, "weft_batches_total{direction=\"rx\"}"),
            Some(2)
        );
        assert_eq!(sample(&text, "weft_leases"), Some(3));
        for r in DropReason::ALL {
            let s = format!("weft_drops_total{{reason=\"{}\"}}", r.as_str());
            assert!(sample(&text, &s).is_some(), "{s}");
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<u64>().is_ok(), "{line}");
        }
    }
    #[test]
    fn the_ipv6_half_of_a_lease_has_its_own_peer_series() {
        use std::net::{Ipv4Addr, Ipv6Addr};
        let local = crate::table::LocalVtep {
            vni: crate::wire::Vni::new(1).unwrap(),
            mac: crate::wire::EthernetAddress([2, 0, 0, 0, 0, 1]),
            port: 8472,
        };
        let v4 = Ipv4Addr::new(192, 168, 64, 11);
        let v6: Ipv6Addr = "fd77::b".parse().unwrap();
        let peer = crate::table::Peer::new("10.1.2.0/24".parse().unwrap(), v4, None, &local);
        let peer6 = crate::table::Peer6::new("fd10:0:0:2::/64".parse().unwrap(), v6, None, &local);
        let table = LeaseTable::from_peers_dual(24, vec![peer], 64, vec![peer6], 1);
        let c = Counters::default();
        let mut l = LocalCounters::default();
        l.peer(v4, 2, 200, &c, true);
        l.peer(v6, 3, 3000, &c, true);
        l.flush_tx(&c, 5);
        l.peer(v6, 4, 400, &c, false);
        l.flush_rx(&c, 4);
        let text = render(&c, &table, None);
        let series = |fam: &str, subnet: &str, ip: &str, dir: &str| {
            let s = format!("{fam}{{subnet=\"{subnet}\",public_ip=\"{ip}\",direction=\"{dir}\"}}");
            sample(&text, &s)
        };
        let p = "weft_peer_packets_total";
        let b = "weft_peer_bytes_total";
        assert_eq!(
            series(p, "fd10:0:0:2::/64", "fd77::b", "tx"),
            Some(3),
            "{text}"
        );
        assert_eq!(series(b, "fd10:0:0:2::/64", "fd77::b", "tx"), Some(3000));
        assert_eq!(series(p, "fd10:0:0:2::/64", "fd77::b", "rx"), Some(4));
        assert_eq!(series(b, "fd10:0:0:2::/64", "fd77::b", "rx"), Some(400));
        // The IPv4 half counts only its own traffic.
        assert_eq!(series(p, "10.1.2.0/24", "192.168.64.11", "tx"), Some(2));
        assert_eq!(series(p, "10.1.2.0/24", "192.168.64.11", "rx"), Some(0));
    }
}
