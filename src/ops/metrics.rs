//! Prometheus text exposition of the node's counters.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::dataplane::Counters;
use crate::ops::NodeStatus;

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Renders every counter, the number of leases known and the node's state (when known) in
/// the text format (0.0.4).
pub fn render(c: &Counters, leases: usize, node: Option<&NodeStatus>) -> String {
    let mut o = String::with_capacity(4096);
    let v = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    family(
        &mut o,
        "weft_packets_total",
        "counter",
        "Inner packets forwarded, by direction (tx: TUN to peer, rx: peer to TUN).",
    );
    let _ = writeln!(
        o,
        "weft_packets_total{{direction=\"tx\"}} {}",
        v(&c.tx_packets)
    );
    let _ = writeln!(
        o,
        "weft_packets_total{{direction=\"rx\"}} {}",
        v(&c.rx_packets)
    );
    family(
        &mut o,
        "weft_bytes_total",
        "counter",
        "Inner bytes forwarded, by direction.",
    );
    let _ = writeln!(o, "weft_bytes_total{{direction=\"tx\"}} {}", v(&c.tx_bytes));
    let _ = writeln!(o, "weft_bytes_total{{direction=\"rx\"}} {}", v(&c.rx_bytes));
    family(
        &mut o,
        "weft_drops_total",
        "counter",
        "Packets dropped, by reason.",
    );
    for (r, n) in c.drops_by_reason() {
        let _ = writeln!(o, "weft_drops_total{{reason=\"{}\"}} {n}", r.as_str());
    }
    family(
        &mut o,
        "weft_send_errors_total",
        "counter",
        "Datagrams the kernel refused to send.",
    );
    let _ = writeln!(o, "weft_send_errors_total {}", v(&c.tx_errors));
    family(
        &mut o,
        "weft_tun_write_errors_total",
        "counter",
        "Packets the TUN device refused.",
    );
    let _ = writeln!(o, "weft_tun_write_errors_total {}", v(&c.tun_write_errors));
    family(
        &mut o,
        "weft_icmp_unreachable_total",
        "counter",
        "ICMP destination-unreachable messages sent back to pods.",
    );
    let _ = writeln!(o, "weft_icmp_unreachable_total {}", v(&c.icmp_unreachable));
    family(&mut o, "weft_batch_packets_total", "counter", "Packets handled in I/O batches, by direction (divide by weft_batches_total for the mean batch size).");
    let _ = writeln!(
        o,
        "weft_batch_packets_total{{direction=\"tx\"}} {}",
        v(&c.tx_batch_packets)
    );
    let _ = writeln!(
        o,
        "weft_batch_packets_total{{direction=\"rx\"}} {}",
        v(&c.rx_batch_packets)
    );
    family(
        &mut o,
        "weft_batches_total",
        "counter",
        "I/O batches, by direction.",
    );
    let _ = writeln!(
        o,
        "weft_batches_total{{direction=\"tx\"}} {}",
        v(&c.tx_batches)
    );
    let _ = writeln!(
        o,
        "weft_batches_total{{direction=\"rx\"}} {}",
        v(&c.rx_batches)
    );
    family(
        &mut o,
        "weft_leases",
        "gauge",
        "Remote leases in the table.",
    );
    let _ = writeln!(o, "weft_leases {leases}");
    if let Some(n) = node {
        family(
            &mut o,
            "weft_etcd_connected",
            "gauge",
            "1 when the last etcd request succeeded.",
        );
        let _ = writeln!(o, "weft_etcd_connected {}", u8::from(n.etcd_up));
        family(
            &mut o,
            "weft_lease_expiry_seconds",
            "gauge",
            "Seconds until this node's lease expires unless renewed.",
        );
        let _ = writeln!(o, "weft_lease_expiry_seconds {}", n.lease_expires_in_secs);
        family(
            &mut o,
            "weft_datapath_running",
            "gauge",
            "1 while the data-path workers run.",
        );
        let _ = writeln!(o, "weft_datapath_running {}", u8::from(n.datapath_running));
    }
    o
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
        let mut l = LocalCounters {
            packets: 5,
            bytes: 500,
            ..Default::default()
        };
        l.drop(DropReason::WrongVni);
        l.drop(DropReason::WrongVni);
        l.flush_rx(&c, 7);
        let text = render(&c, 3, None);
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
        assert_eq!(
            sample(&text, "weft_batch_packets_total{direction=\"rx\"}"),
            Some(7)
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
}
