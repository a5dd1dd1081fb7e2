//! Packet counters shared by the workers and read by ops: totals each way and drops by reason.
//! Workers count into a plain local copy and flush it once per batch (no atomics per packet).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::encap::DropReason;

const REASONS: usize = DropReason::ALL.len();

/// Totals since start, readable at any time.
#[derive(Debug, Default)]
pub struct Counters {
    /// Packets read from the TUN and sent to a peer.
    pub tx_packets: AtomicU64,
    /// Inner bytes of those packets.
    pub tx_bytes: AtomicU64,
    /// Packets received from peers and written to the TUN.
    pub rx_packets: AtomicU64,
    /// Inner bytes of those packets.
    pub rx_bytes: AtomicU64,
    /// Datagrams the kernel refused to send.
    pub tx_errors: AtomicU64,
    /// Packets the TUN refused.
    pub tun_write_errors: AtomicU64,
    /// ICMP unreachable messages written back to the TUN.
    pub icmp_unreachable: AtomicU64,
    /// Sum of batch sizes, and batches, each way (mean batch size = sum / count).
    pub tx_batch_packets: AtomicU64,
    /// Number of send batches.
    pub tx_batches: AtomicU64,
    /// Sum of receive batch sizes.
    pub rx_batch_packets: AtomicU64,
    /// Number of receive batches.
    pub rx_batches: AtomicU64,
    drops: [AtomicU64; REASONS],
}

impl Counters {
    /// Drops so far for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()].load(Ordering::Relaxed)
    }

    /// Every reason with its count.
    pub fn drops_by_reason(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|r| (*r, self.drops(*r)))
    }
}

/// A worker's uncontended counts, flushed into [`Counters`] once per batch.
#[derive(Debug, Default, Clone)]
pub struct LocalCounters {
    /// Packets forwarded.
    pub packets: u64,
    /// Inner bytes forwarded.
    pub bytes: u64,
    /// Send or write errors.
    pub errors: u64,
    /// ICMP errors generated.
    pub icmp: u64,
    /// Drops by reason.
    pub drops: [u64; REASONS],
}

impl LocalCounters {
    /// Counts one drop.
    #[inline]
    pub fn drop(&mut self, r: DropReason) {
        self.drops[r.index()] += 1;
    }

    fn flush_drops(&mut self, c: &Counters) {
        for (i, n) in self.drops.iter_mut().enumerate() {
            if *n != 0 {
                c.drops[i].fetch_add(*n, Ordering::Relaxed);
                *n = 0;
            }
        }
    }

    /// Adds the send side's counts to `c` and zeroes them; `batch` is the batch size.
    pub fn flush_tx(&mut self, c: &Counters, batch: usize) {
        c.tx_packets.fetch_add(self.packets, Ordering::Relaxed);
        c.tx_bytes.fetch_add(self.bytes, Ordering::Relaxed);
        c.tx_errors.fetch_add(self.errors, Ordering::Relaxed);
        c.icmp_unreachable.fetch_add(self.icmp, Ordering::Relaxed);
        c.tx_batch_packets
            .fetch_add(batch as u64, Ordering::Relaxed);
        c.tx_batches.fetch_add(1, Ordering::Relaxed);
        self.flush_drops(c);
        self.packets = 0;
        self.bytes = 0;
        self.errors = 0;
        self.icmp = 0;
    }

    /// Adds the receive side's counts to `c` and zeroes them; `batch` is the batch size.
    pub fn flush_rx(&mut self, c: &Counters, batch: usize) {
        c.rx_packets.fetch_add(self.packets, Ordering::Relaxed);
        c.rx_bytes.fetch_add(self.bytes, Ordering::Relaxed);
        c.tun_write_errors.fetch_add(self.errors, Ordering::Relaxed);
        c.rx_batch_packets
            .fetch_add(batch as u64, Ordering::Relaxed);
        c.rx_batches.fetch_add(1, Ordering::Relaxed);
        self.flush_drops(c);
        self.packets = 0;
        self.bytes = 0;
        self.errors = 0;
    }
}
