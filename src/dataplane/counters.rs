//! Packet counters shared by the workers and read by ops: totals each way and drops by reason.
//! Workers count into a plain local copy and flush it once per batch (no atomics per packet).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::encap::DropReason;

const REASONS: usize = DropReason::ALL.len();

/// Peers with counters of their own at once (one slot is "other"); more peers than that
/// share the "other" slot, which bounds the metrics' cardinality. A slot is given back when
/// its peer's lease has left the table ([`PeerCounters::sweep`]).
pub const PEER_SLOTS: usize = 1024;

/// How long a departed peer's slot is kept before it can be given back (longer than any
/// worker holds an old table snapshot), unless its last counts are not exported yet.
pub const RETIRE_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a departed peer's slot waits at most for its last counts to be exported (a node
/// nobody scrapes still gives slots back).
pub const EXPORT_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// A slot's key word: no peer yet.
const FREE: u32 = 0;
/// A slot's key word: a worker is writing its peer's address.
const CLAIMING: u32 = 1;
/// A slot's key word: the address is written and the slot is that peer's.
const READY: u32 = 2;
/// A slot's key word: given back; a new peer may claim it, and a search goes on past it.
const DEAD: u32 = 3;
/// How long a worker waits for another to finish claiming a slot before counting under
/// "other" (a claim is two stores: the wait is nanoseconds unless the claimer is preempted).
const CLAIM_SPINS: u32 = 256;

/// The table key of an underlay address: IPv4 as its IPv4-mapped IPv6 address, so both
/// families share the slots (and the "other" slot) without colliding.
#[inline]
fn key_of(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Per-peer packet and byte counts each way, keyed by the peer's underlay address (its
/// PublicIP, or for the IPv6 half of a dual-stack lease its PublicIPv6).
#[derive(Debug, Default)]
pub struct PeerSlot {
    /// [`FREE`], [`CLAIMING`] or [`READY`]; the key below is valid once READY.
    state: AtomicU32,
    key_hi: AtomicU64,
    key_lo: AtomicU64,
    /// Packets sent to the peer.
    pub tx_packets: AtomicU64,
    /// Inner bytes sent to the peer.
    pub tx_bytes: AtomicU64,
    /// Packets received from the peer and accepted.
    pub rx_packets: AtomicU64,
    /// Inner bytes received from the peer and accepted.
    pub rx_bytes: AtomicU64,
}

impl PeerSlot {
    /// Whether the slot is READY and holds `key`.
    #[inline]
    fn holds(&self, key: u128) -> bool {
        self.state.load(Ordering::Acquire) == READY && self.key() == key
    }

    /// The key (meaningful once READY was read with Acquire).
    #[inline]
    fn key(&self) -> u128 {
        (u128::from(self.key_hi.load(Ordering::Relaxed)) << 64)
            | u128::from(self.key_lo.load(Ordering::Relaxed))
    }

    /// Waits (boundedly) for another worker's claim of this slot to complete; false when it
    /// did not.
    fn await_claim(&self) -> bool {
        for _ in 0..CLAIM_SPINS {
            if self.state.load(Ordering::Acquire) == READY {
                return true;
            }
            std::hint::spin_loop();
        }
        false
    }
}

/// A fixed open-addressing table of [`PeerSlot`]s for peers of both families; slots are
/// claimed lock-free on first use (a 128-bit key cannot be swapped in one step, so a slot is
/// reserved by its state word, its key written, then published) and given back by the
/// control plane when their peer's lease has gone ([`PeerCounters::sweep`]): a given-back
/// slot is a tombstone that searches go past and a new peer may claim.
#[derive(Debug)]
pub struct PeerCounters {
    slots: Box<[PeerSlot]>,
    /// Peers that found no slot (counted at each flush of their counts).
    overflow: AtomicU64,
    /// How many times the per-peer series were exported (`/metrics` renders).
    exports: AtomicU64,
    /// Slots of peers whose lease has gone, waiting to be given back (control plane only:
    /// the data path never takes this lock).
    retiring: std::sync::Mutex<Vec<Retiring>>,
}

/// A departed peer's slot on its way back.
#[derive(Debug, Clone)]
pub struct Retiring {
    index: usize,
    key: u128,
    /// The lease's subnet, for the departed peer's last exported series.
    pub subnet: String,
    since: std::time::Instant,
    exports: u64,
}

impl Retiring {
    /// The departed peer's underlay address.
    pub fn ip(&self) -> IpAddr {
        let v6 = std::net::Ipv6Addr::from(self.key);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    }
}

/// What a sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Slots found whose peer's lease has gone.
    pub retired: usize,
    /// Slots given back.
    pub freed: usize,
    /// Slots in use after the sweep.
    pub used: usize,
}

impl Default for PeerCounters {
    fn default() -> Self {
        PeerCounters {
            slots: (0..PEER_SLOTS).map(|_| PeerSlot::default()).collect(),
            overflow: AtomicU64::new(0),
            exports: AtomicU64::new(0),
            retiring: std::sync::Mutex::new(Vec::new()),
        }
    }
}

/// Where a search for a key ended.
enum Probe {
    /// The key's slot.
    Found(usize),
    /// Not there: the slot to claim for it (the first tombstone on the way, else the free
    /// slot that ended the search).
    Claim(usize),
    /// Not there, and no slot to claim.
    Full,
    /// A claim on the way did not complete in time.
    Busy,
}

impl PeerCounters {
    /// The slot of `ip` (IPv4 or IPv6), claimed if new; the shared last slot when the table
    /// is full (counted as overflow), or in the rare case another worker's claim of a slot
    /// on the way does not complete within a few hundred spins.
    pub fn slot(&self, ip: impl Into<IpAddr>) -> &PeerSlot {
        let key = key_of(ip.into());
        for _ in 0..4 {
            let i = match self.probe(key) {
                Probe::Found(i) => return &self.slots[i],
                Probe::Claim(i) => i,
                Probe::Full => {
                    self.overflow.fetch_add(1, Ordering::Relaxed);
                    return self.other();
                }
                Probe::Busy => return self.other(),
            };
            let s = &self.slots[i];
            let seen = s.state.load(Ordering::Acquire);
            if (seen == FREE || seen == DEAD)
                && s.state
                    .compare_exchange(seen, CLAIMING, Ordering::Acquire, Ordering::Acquire)
                    .is_ok()
            {
                s.key_hi.store((key >> 64) as u64, Ordering::Relaxed);
                s.key_lo.store(key as u64, Ordering::Relaxed);
                s.state.store(READY, Ordering::Release);
                return s;
            }
            // Another worker claimed it first (perhaps for this very peer): search again.
        }
        self.other()
    }

    /// Searches for `key` from its home slot.
    fn probe(&self, key: u128) -> Probe {
        let n = PEER_SLOTS - 1; // the last slot is "other"
        let folded = (key >> 64) as u64 ^ key as u64;
        let mut i = (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize % n;
        let mut tombstone = None;
        for _ in 0..n {
            let s = &self.slots[i];
            let mut state = s.state.load(Ordering::Acquire);
            if state == CLAIMING {
                if !s.await_claim() {
                    return Probe::Busy;
                }
                state = READY;
            }
            match state {
                READY if s.key() == key => return Probe::Found(i),
                DEAD => {
                    tombstone.get_or_insert(i);
                }
                FREE => return Probe::Claim(tombstone.unwrap_or(i)),
                _ => {}
            }
            i = (i + 1) % n;
        }
        tombstone.map_or(Probe::Full, Probe::Claim)
    }

    /// The slot of `ip` if it has one (for reading).
    pub fn get(&self, ip: impl Into<IpAddr>) -> Option<&PeerSlot> {
        let key = key_of(ip.into());
        self.slots[..PEER_SLOTS - 1].iter().find(|s| s.holds(key))
    }

    /// The shared slot of peers that found no slot of their own.
    pub fn other(&self) -> &PeerSlot {
        &self.slots[PEER_SLOTS - 1]
    }

    /// How many times a peer's counts found no slot of their own.
    pub fn overflow(&self) -> u64 {
        self.overflow.load(Ordering::Relaxed)
    }

    /// Slots in use.
    pub fn used(&self) -> usize {
        self.slots[..PEER_SLOTS - 1]
            .iter()
            .filter(|s| s.state.load(Ordering::Acquire) == READY)
            .count()
    }

    /// The departed peers whose last counts are still shown, with their slots.
    pub fn retiring(&self) -> Vec<(Retiring, &PeerSlot)> {
        let list = self.retiring.lock().unwrap_or_else(|e| e.into_inner());
        list.iter()
            .map(|r| (r.clone(), &self.slots[r.index]))
            .collect()
    }

    /// Notes that the per-peer series were exported (a `/metrics` render): a departed peer's
    /// slot can go once its last counts were.
    pub fn exported(&self) {
        self.exports.fetch_add(1, Ordering::Relaxed);
    }

    /// Gives back the slots of peers whose lease has gone (control plane, about once a
    /// second): `live` says whether an address is a current lease's (and its subnet). A slot
    /// is first marked retiring; after [`RETIRE_AFTER`], and once its last counts were
    /// exported (or after [`EXPORT_WAIT`] without an export), it is zeroed and given back. A
    /// lease that comes back before keeps its slot and counts.
    pub fn sweep(
        &self,
        now: std::time::Instant,
        live: impl Fn(IpAddr) -> bool,
        subnet_of: impl Fn(IpAddr) -> Option<String>,
    ) -> Swept {
        let mut out = Swept::default();
        let exports = self.exports.load(Ordering::Relaxed);
        let mut list = self.retiring.lock().unwrap_or_else(|e| e.into_inner());
        // Back before it went: keeps its slot.
        list.retain(|r| !live(r.ip()));
        for (i, s) in self.slots[..PEER_SLOTS - 1].iter().enumerate() {
            if s.state.load(Ordering::Acquire) != READY {
                continue;
            }
            let key = s.key();
            if list.iter().any(|r| r.index == i) {
                continue;
            }
            let ip = Retiring {
                index: i,
                key,
                subnet: String::new(),
                since: now,
                exports,
            }
            .ip();
            if !live(ip) {
                out.retired += 1;
                list.push(Retiring {
                    index: i,
                    key,
                    subnet: subnet_of(ip).unwrap_or_default(),
                    since: now,
                    exports,
                });
            }
        }
        list.retain(|r| {
            let age = now.saturating_duration_since(r.since);
            let done = age >= RETIRE_AFTER && (exports > r.exports || age >= EXPORT_WAIT);
            if done {
                let s = &self.slots[r.index];
                for c in [&s.tx_packets, &s.tx_bytes, &s.rx_packets, &s.rx_bytes] {
                    c.store(0, Ordering::Relaxed);
                }
                s.state.store(DEAD, Ordering::Release);
                out.freed += 1;
            }
            !done
        });
        out.used = self.used();
        out
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
    peers: [(IpAddr, u64, u64); LOCAL_PEERS],
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
            peers: [(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0, 0); LOCAL_PEERS],
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

    /// Counts `packets` and `bytes` for the peer at `ip`, a PublicIP or a PublicIPv6
    /// (flushed with the batch; a batch with more peers than fit flushes the oldest early
    /// into `shared`, direction `tx`).
    #[inline]
    pub fn peer(
        &mut self,
        ip: impl Into<IpAddr>,
        packets: u64,
        bytes: u64,
        shared: &Counters,
        tx: bool,
    ) {
        let ip = ip.into();
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

    #[test]
    fn ipv6_peers_count_apart_from_ipv4_and_from_each_other() {
        use std::net::Ipv6Addr;
        let c = Counters::default();
        let mut l = LocalCounters::default();
        // Two IPv6 peers in one /64, differing only in the low bits, and an IPv4 peer.
        let a: Ipv6Addr = "fd77::a".parse().unwrap();
        let b: Ipv6Addr = "fd77::b".parse().unwrap();
        let v4 = Ipv4Addr::new(192, 168, 64, 10);
        l.peer(a, 3, 300, &c, true);
        l.peer(b, 1, 10, &c, true);
        l.peer(v4, 7, 700, &c, true);
        l.peer(a, 2, 200, &c, true);
        l.flush_tx(&c, 13);
        l.peer(IpAddr::V6(b), 5, 50, &c, false);
        l.flush_rx(&c, 5);
        let sa = c.peers.get(a).unwrap();
        assert_eq!(sa.tx_packets.load(Ordering::Relaxed), 5);
        assert_eq!(sa.tx_bytes.load(Ordering::Relaxed), 500);
        let sb = c.peers.get(b).unwrap();
        assert_eq!(sb.tx_packets.load(Ordering::Relaxed), 1);
        assert_eq!(sb.rx_packets.load(Ordering::Relaxed), 5);
        assert_eq!(sb.rx_bytes.load(Ordering::Relaxed), 50);
        assert_eq!(
            c.peers.get(v4).unwrap().tx_packets.load(Ordering::Relaxed),
            7
        );
        assert!(!std::ptr::eq(sa, sb));
        assert!(c
            .peers
            .get("fd77::c".parse::<Ipv6Addr>().unwrap())
            .is_none());
        assert!(c.peers.get(Ipv4Addr::new(192, 168, 64, 11)).is_none());
        // Every IPv6 peer in one /64 (the hash must spread the low bits): slots of their own
        // until the table is full, then "other"; asking again finds the same slot.
        for i in 0..(PEER_SLOTS as u128 + 10) {
            let ip = Ipv6Addr::from(u128::from(a) + 0x100 + i);
            let s = c.peers.slot(ip);
            s.tx_packets.fetch_add(1, Ordering::Relaxed);
            assert!(std::ptr::eq(s, c.peers.slot(ip)));
        }
        // PEER_SLOTS - 1 slots of their own, three already taken (a, b, the IPv4 peer).
        let own = PEER_SLOTS as u64 - 1 - 3;
        let other = c.peers.other().tx_packets.load(Ordering::Relaxed);
        assert_eq!(other, PEER_SLOTS as u64 + 10 - own);
    }

    #[test]
    fn workers_racing_for_new_peers_get_one_slot_each() {
        use std::net::Ipv6Addr;
        let c = Counters::default();
        let base = u128::from("fd77::".parse::<Ipv6Addr>().unwrap());
        std::thread::scope(|t| {
            for _ in 0..4 {
                t.spawn(|| {
                    for _ in 0..50 {
                        for i in 0..200u128 {
                            c.peers
                                .slot(Ipv6Addr::from(base + i))
                                .rx_packets
                                .fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        // Every peer has exactly one slot; nothing was lost (a claim not seen completing in
        // time counts under "other", never in a second slot).
        let mut counted = c.peers.other().rx_packets.load(Ordering::Relaxed);
        for i in 0..200u128 {
            let key = base + i;
            let holders = c.peers.slots.iter().filter(|s| s.holds(key)).count();
            assert_eq!(holders, 1, "peer {i}");
            counted += c
                .peers
                .get(Ipv6Addr::from(key))
                .unwrap()
                .rx_packets
                .load(Ordering::Relaxed);
        }
        assert_eq!(counted, 4 * 50 * 200);
    }

    #[test]
    fn slots_of_departed_peers_are_given_back_after_their_last_export() {
        use std::time::{Duration, Instant};
        let c = Counters::default();
        let ip = |i: u32| Ipv4Addr::from(0x0c00_0000 + i);
        // Fill every slot.
        for i in 0..(PEER_SLOTS as u32 - 1) {
            c.peers
                .slot(ip(i))
                .tx_packets
                .fetch_add(1, Ordering::Relaxed);
        }
        assert_eq!(c.peers.used(), PEER_SLOTS - 1);
        let late = ip(5000);
        assert!(std::ptr::eq(c.peers.slot(late), c.peers.other()));
        assert_eq!(c.peers.overflow(), 1);
        // Every lease but the first ten leaves.
        let live = |a: IpAddr| matches!(a, IpAddr::V4(v) if u32::from(v) < 0x0c00_0000 + 10);
        let label = |_: IpAddr| Some("10.9.0.0/24".to_string());
        let t0 = Instant::now();
        let s = c.peers.sweep(t0, live, label);
        assert_eq!((s.retired, s.freed), (PEER_SLOTS - 11, 0));
        // Shown once more (their last counts), not given back before RETIRE_AFTER...
        assert_eq!(c.peers.retiring().len(), PEER_SLOTS - 11);
        c.peers.exported();
        assert_eq!(
            c.peers
                .sweep(t0 + Duration::from_secs(1), live, label)
                .freed,
            0
        );
        // ...and then they are, zeroed.
        let s = c.peers.sweep(t0 + RETIRE_AFTER, live, label);
        assert_eq!((s.freed, s.used), (PEER_SLOTS - 11, 10));
        assert!(c.peers.retiring().is_empty());
        assert!(c.peers.get(ip(500)).is_none());
        // The live ones kept their slots and counts; new peers get slots again.
        assert_eq!(
            c.peers
                .get(ip(3))
                .unwrap()
                .tx_packets
                .load(Ordering::Relaxed),
            1
        );
        let fresh = c.peers.slot(late);
        assert!(!std::ptr::eq(fresh, c.peers.other()));
        assert_eq!(fresh.tx_packets.load(Ordering::Relaxed), 0);
        assert!(
            std::ptr::eq(fresh, c.peers.slot(late)),
            "found again past tombstones"
        );
        for i in 0..10 {
            assert!(std::ptr::eq(
                c.peers.get(ip(i)).unwrap(),
                c.peers.slot(ip(i))
            ));
        }
    }

    #[test]
    fn a_departed_slot_waits_for_an_export_and_a_returning_lease_keeps_it() {
        use std::time::{Duration, Instant};
        let c = Counters::default();
        let a = Ipv4Addr::new(192, 168, 64, 20);
        c.peers.slot(a).rx_bytes.fetch_add(7, Ordering::Relaxed);
        let t0 = Instant::now();
        let gone = |_: IpAddr| false;
        let label = |_: IpAddr| None;
        assert_eq!(c.peers.sweep(t0, gone, label).retired, 1);
        // Not exported since: kept past RETIRE_AFTER, given back after EXPORT_WAIT.
        assert_eq!(
            c.peers
                .sweep(t0 + Duration::from_secs(60), gone, label)
                .freed,
            0
        );
        // The lease comes back: the slot stays, with its counts.
        let back = |ip: IpAddr| ip == IpAddr::V4(a);
        c.peers.sweep(t0 + Duration::from_secs(61), back, label);
        assert!(c.peers.retiring().is_empty());
        assert_eq!(c.peers.get(a).unwrap().rx_bytes.load(Ordering::Relaxed), 7);
        // Gone again and never exported: given back after EXPORT_WAIT all the same.
        let t1 = t0 + Duration::from_secs(62);
        c.peers.sweep(t1, gone, label);
        assert_eq!(c.peers.sweep(t1 + EXPORT_WAIT, gone, label).freed, 1);
        assert!(c.peers.get(a).is_none());
    }
}
