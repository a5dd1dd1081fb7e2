//! Packet counters shared by the workers and read by ops: totals each way and drops by reason.
//! Workers count into a plain local copy and flush it once per batch (no atomics per packet).

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::encap::DropReason;

const REASONS: usize = DropReason::ALL.len();

/// Peers with counters of their own; more peers than this share the last slot ("other"),
/// which bounds the metrics' cardinality.
pub const PEER_SLOTS: usize = 1024;

/// Per-peer packet and byte counts each way, keyed by the peer's underlay address.
#[derive(Debug, Default)]
pub struct PeerSlot {
    ip: AtomicU32,
    /// Packets sent to the peer.
    pub tx_packets: AtomicU64,
    /// Inner bytes sent to the peer.
    pub tx_bytes: AtomicU64,
    /// Packets received from the peer and accepted.
    pub rx_packets: AtomicU64,
    /// Inner bytes received from the peer and accepted.
    pub rx_bytes: AtomicU64,
}

/// A fixed open-addressing table of [`PeerSlot`]s; slots are claimed lock-free on first use.
#[derive(Debug)]
pub struct PeerCounters {
    slots: Box<[PeerSlot]>,
}

impl Default for PeerCounters {
    fn default() -> Self {
        PeerCounters {
            slots: (0..PEER_SLOTS).map(|_| PeerSlot::default()).collect(),
        }
    }
}

impl PeerCounters {
    /// The slot of `ip`, claimed if new; the shared last slot when the table is full.
    pub fn slot(&self, ip: Ipv4Addr) -> &PeerSlot {
        let key = u32::from(ip).max(1);
        let n = PEER_SLOTS - 1; // the last slot is "other"
        let mut i = (key.wrapping_mul(0x9E37_79B9) >> 22) as usize % n;
        for _ in 0..n {
            let s = &self.slots[i];
            match s.ip.load(Ordering::Relaxed) {
                k if k == key => return s,
                0 => match s
                    .ip
                    .compare_exchange(0, key, Ordering::Relaxed, Ordering::Relaxed)
                {
                    Ok(_) => return s,
                    Err(k) if k == key => return s,
                    Err(_) => {}
                },
                _ => {}
            }
            i = (i + 1) % n;
        }
        &self.slots[n]
    }

    /// The slot of `ip` if it has one (for reading).
    pub fn get(&self, ip: Ipv4Addr) -> Option<&PeerSlot> {
        let key = u32::from(ip).max(1);
        self.slots[..PEER_SLOTS - 1]
            .iter()
            .find(|s| s.ip.load(Ordering::Relaxed) == key)
    }

    /// The shared slot of peers that found no slot of their own.
    pub fn other(&self) -> &PeerSlot {
        &self.slots[PEER_SLOTS - 1]
    }
}

/// Local per-peer counts of one batch: (peer, packets, bytes); a handful of peers per batch.
const LOCAL_PEERS: usize = 8;

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
    /// Writes to the TUN (a coalesced super-packet is one write for many packets).
    pub tun_writes: AtomicU64,
    /// Messages sent to the underlay (a train of datagrams is one message).
    pub tx_messages: AtomicU64,
    /// ICMP unreachable messages written back to the TUN.
    pub icmp_unreachable: AtomicU64,
    /// IPv6 link-local chatter the kernel sends on the TUN (router solicitations, MLD
    /// reports, DAD): not pod traffic, so ignored rather than counted as drops.
    pub tun_ipv6_ignored: AtomicU64,
    /// UDP_SEGMENT trains the kernel refused (segment plus headers above the MTU it
    /// fragments for, or no GSO): each was resent datagram by datagram.
    pub tx_refused_trains: AtomicU64,
    /// Datagrams of refused trains sent one by one (the kernel fragments those above the
    /// path MTU).
    pub tx_refused_train_datagrams: AtomicU64,
    /// Sum of batch sizes, and batches, each way (mean batch size = sum / count).
    pub tx_batch_packets: AtomicU64,
    /// Number of send batches.
    pub tx_batches: AtomicU64,
    /// Sum of receive batch sizes.
    pub rx_batch_packets: AtomicU64,
    /// Number of receive batches.
    pub rx_batches: AtomicU64,
    /// Per-peer counts.
    pub peers: PeerCounters,
    /// Per-worker packet counts (how evenly flows spread), the first `workers` in use.
    pub per_worker: [WorkerSlot; MAX_WORKERS],
    /// Workers running.
    pub workers: AtomicUsize,
    drops: [AtomicU64; REASONS],
}

/// Most data-path workers.
pub const MAX_WORKERS: usize = 16;

/// Packets one worker forwarded each way.
#[derive(Debug, Default)]
pub struct WorkerSlot {
    /// Packets read from its TUN queue and sent.
    pub tx_packets: AtomicU64,
    /// Packets received on its socket and written to the TUN.
    pub rx_packets: AtomicU64,
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
#[derive(Debug, Clone)]
pub struct LocalCounters {
    /// Packets forwarded.
    pub packets: u64,
    /// Inner bytes forwarded.
    pub bytes: u64,
    /// Send or write errors.
    pub errors: u64,
    /// ICMP errors generated.
    pub icmp: u64,
    /// Writes to the TUN (receive side) or messages to the underlay (send side).
    pub writes: u64,
    /// Trains the kernel refused and that were resent datagram by datagram (send side).
    pub refused_trains: u64,
    /// Datagrams of those trains sent one by one (send side).
    pub refused_train_datagrams: u64,
    /// Drops by reason.
    pub drops: [u64; REASONS],
    peers: [(Ipv4Addr, u64, u64); LOCAL_PEERS],
    n_peers: usize,
    worker: usize,
}

impl Default for LocalCounters {
    fn default() -> Self {
        LocalCounters {
            packets: 0,
            bytes: 0,
            errors: 0,
            icmp: 0,
            writes: 0,
            refused_trains: 0,
            refused_train_datagrams: 0,
            drops: [0; REASONS],
            peers: [(Ipv4Addr::UNSPECIFIED, 0, 0); LOCAL_PEERS],
            n_peers: 0,
            worker: 0,
        }
    }
}

impl LocalCounters {
    /// Counts for worker `worker` (below [`MAX_WORKERS`]; larger numbers count as the last).
    pub fn for_worker(worker: usize) -> LocalCounters {
        LocalCounters {
            worker: worker.min(MAX_WORKERS - 1),
            ..LocalCounters::default()
        }
    }

    /// Counts one drop.
    #[inline]
    pub fn drop(&mut self, r: DropReason) {
        self.drops[r.index()] += 1;
    }

    /// Counts `packets` and `bytes` for the peer at `ip` (flushed with the batch; a batch
    /// with more peers than fit flushes the oldest early into `shared`, direction `tx`).
    #[inline]
    pub fn peer(&mut self, ip: Ipv4Addr, packets: u64, bytes: u64, shared: &Counters, tx: bool) {
        if let Some(e) = self.peers[..self.n_peers].iter_mut().find(|e| e.0 == ip) {
            e.1 += packets;
            e.2 += bytes;
            return;
        }
        if self.n_peers == LOCAL_PEERS {
            self.flush_peers(shared, tx);
        }
        self.peers[self.n_peers] = (ip, packets, bytes);
        self.n_peers += 1;
    }

    fn flush_peers(&mut self, c: &Counters, tx: bool) {
        for &(ip, packets, bytes) in &self.peers[..self.n_peers] {
            let s = c.peers.slot(ip);
            let (p, b) = if tx {
                (&s.tx_packets, &s.tx_bytes)
            } else {
                (&s.rx_packets, &s.rx_bytes)
            };
            p.fetch_add(packets, Ordering::Relaxed);
            b.fetch_add(bytes, Ordering::Relaxed);
        }
        self.n_peers = 0;
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
        c.per_worker[self.worker]
            .tx_packets
            .fetch_add(self.packets, Ordering::Relaxed);
        c.tx_bytes.fetch_add(self.bytes, Ordering::Relaxed);
        c.tx_errors.fetch_add(self.errors, Ordering::Relaxed);
        c.icmp_unreachable.fetch_add(self.icmp, Ordering::Relaxed);
        c.tx_messages.fetch_add(self.writes, Ordering::Relaxed);
        self.writes = 0;
        if self.refused_trains != 0 || self.refused_train_datagrams != 0 {
            c.tx_refused_trains
                .fetch_add(self.refused_trains, Ordering::Relaxed);
            c.tx_refused_train_datagrams
                .fetch_add(self.refused_train_datagrams, Ordering::Relaxed);
            self.refused_trains = 0;
            self.refused_train_datagrams = 0;
        }
        c.tx_batch_packets
            .fetch_add(batch as u64, Ordering::Relaxed);
        c.tx_batches.fetch_add(1, Ordering::Relaxed);
        self.flush_drops(c);
        self.flush_peers(c, true);
        self.packets = 0;
        self.bytes = 0;
        self.errors = 0;
        self.icmp = 0;
    }

    /// Adds the receive side's counts to `c` and zeroes them; `batch` is the batch size.
    pub fn flush_rx(&mut self, c: &Counters, batch: usize) {
        c.rx_packets.fetch_add(self.packets, Ordering::Relaxed);
        c.per_worker[self.worker]
            .rx_packets
            .fetch_add(self.packets, Ordering::Relaxed);
        c.rx_bytes.fetch_add(self.bytes, Ordering::Relaxed);
        c.tun_write_errors.fetch_add(self.errors, Ordering::Relaxed);
        c.tun_writes.fetch_add(self.writes, Ordering::Relaxed);
        self.writes = 0;
        c.rx_batch_packets
            .fetch_add(batch as u64, Ordering::Relaxed);
        c.rx_batches.fetch_add(1, Ordering::Relaxed);
        self.flush_drops(c);
        self.flush_peers(c, false);
        self.packets = 0;
        self.bytes = 0;
        self.errors = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_counts_flush_per_direction_and_overflow_to_other() {
        let c = Counters::default();
        let mut l = LocalCounters::default();
        let a = Ipv4Addr::new(192, 168, 64, 11);
        for _ in 0..3 {
            l.peer(a, 2, 100, &c, true);
        }
        // More peers than the local array holds: flushed early, nothing lost.
        for i in 0..20u8 {
            l.peer(Ipv4Addr::new(10, 0, 0, i + 1), 1, 10, &c, true);
        }
        l.flush_tx(&c, 1);
        let s = c.peers.get(a).unwrap();
        assert_eq!(s.tx_packets.load(Ordering::Relaxed), 6);
        assert_eq!(s.tx_bytes.load(Ordering::Relaxed), 300);
        assert_eq!(s.rx_packets.load(Ordering::Relaxed), 0);
        let total: u64 = (0..20u8)
            .map(|i| {
                c.peers
                    .get(Ipv4Addr::new(10, 0, 0, i + 1))
                    .unwrap()
                    .tx_packets
                    .load(Ordering::Relaxed)
            })
            .sum();
        assert_eq!(total, 20);
        l.peer(a, 1, 50, &c, false);
        l.flush_rx(&c, 1);
        assert_eq!(c.peers.get(a).unwrap().rx_bytes.load(Ordering::Relaxed), 50);
        // Past PEER_SLOTS - 1 distinct peers, the rest share "other".
        for i in 0..(PEER_SLOTS as u32 + 10) {
            c.peers
                .slot(Ipv4Addr::from(0x0b00_0000 + i))
                .tx_packets
                .fetch_add(1, Ordering::Relaxed);
        }
        assert!(c.peers.other().tx_packets.load(Ordering::Relaxed) >= 10);
    }
}
