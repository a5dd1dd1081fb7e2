//! The lease table: every remote node's lease, as an immutable snapshot the data plane reads
//! without locks or allocation.
//!
//! The control plane keeps a [`PeerSet`] (an ordered map, cheap to change), builds a
//! [`LeaseTable`] from it after each batch of etcd events and publishes it through a
//! [`SharedTable`] (RCU via `arc-swap`). Workers hold a [`TableReader`] and load the current
//! snapshot once per batch of packets.
//!
//! All leases share one prefix length (the network's SubnetLen), so finding the peer for a
//! destination is "mask, hash, compare" in a small open-addressing table: power-of-two
//! capacity, load factor at most 1/2, linear probing, Fibonacci (multiplicative) hashing.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use arc_swap::{ArcSwap, Cache};

use crate::encap::{self, VxlanHeader, VXLAN_ENCAP_LEN};
use crate::wire::vxlan::Vni;
use crate::wire::{EthernetAddress, Subnet};

/// Length of the precomputed VXLAN + inner Ethernet header (8 + 14 bytes).
pub const ENCAP_HEADER_LEN: usize = VXLAN_ENCAP_LEN;

/// What this node contributes to every encapsulated frame: VNI, our VTEP MAC, UDP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalVtep {
    /// The network's VNI.
    pub vni: Vni,
    /// Our VTEP MAC (source of the inner Ethernet header).
    pub mac: EthernetAddress,
    /// The backend's UDP port, which every peer listens on too.
    pub port: u16,
}

/// One remote node's lease, with everything encapsulation needs precomputed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The node's pod subnet.
    pub subnet: Subnet,
    /// The node's underlay address (`PublicIP` in its lease).
    pub public_ip: Ipv4Addr,
    /// Where to send its encapsulated packets: public IP and backend port.
    pub underlay: SocketAddrV4,
    /// The node's VTEP MAC (vxlan backend); `None` for the udp and host-gw backends.
    pub vtep_mac: Option<EthernetAddress>,
    /// VXLAN header + inner Ethernet header (dst = peer VTEP MAC, src = ours, IPv4), ready to
    /// copy in front of the inner IP packet. All zeros when `vtep_mac` is `None`.
    pub vxlan_header: VxlanHeader,
}

impl Peer {
    /// Builds a peer entry and precomputes its encapsulation header.
    pub fn new(
        subnet: Subnet,
        public_ip: Ipv4Addr,
        vtep_mac: Option<EthernetAddress>,
        local: &LocalVtep,
    ) -> Peer {
        let vxlan_header = match vtep_mac {
            Some(mac) => encap::vxlan_header(local.vni, local.mac, mac),
            None => [0u8; ENCAP_HEADER_LEN],
        };
        Peer {
            subnet,
            public_ip,
            underlay: SocketAddrV4::new(public_ip, local.port),
            vtep_mac,
            vxlan_header,
        }
    }
}

/// Marks an empty slot of the hash index.
const EMPTY: u32 = u32::MAX;

/// Fibonacci hashing: multiply by 2^32/phi and keep the top `bits` bits.
#[inline(always)]
fn fib_hash(key: u32, shift: u32) -> usize {
    (key.wrapping_mul(0x9E37_79B9) >> shift) as usize
}

/// An open-addressing index from a `u32` key to a position in the peer array.
#[derive(Debug, Clone)]
struct Index {
    /// `(key, position)`; position `EMPTY` marks a free slot.
    slots: Box<[(u32, u32)]>,
    /// `32 - log2(capacity)`: how far to shift the hash.
    shift: u32,
    /// `capacity - 1`.
    mask: usize,
}

impl Index {
    fn with_capacity_for(n: usize) -> Index {
        let cap = (n.saturating_mul(2)).max(8).next_power_of_two();
        Index {
            slots: vec![(0, EMPTY); cap].into_boxed_slice(),
            shift: 32 - cap.trailing_zeros(),
            mask: cap - 1,
        }
    }

    /// Inserts `key` unless present; returns whether it was inserted.
    fn insert(&mut self, key: u32, hashed: u32, pos: u32) -> bool {
        let mut i = fib_hash(hashed, self.shift);
        loop {
            let slot = &mut self.slots[i];
            if slot.1 == EMPTY {
                *slot = (key, pos);
                return true;
            }
            if slot.0 == key {
                return false;
            }
            i = (i + 1) & self.mask;
        }
    }

    #[inline(always)]
    fn find(&self, key: u32, hashed: u32) -> Option<u32> {
        let mut i = fib_hash(hashed, self.shift);
        // The load factor is at most 1/2, so an empty slot always ends the probe.
        loop {
            let (k, pos) = self.slots[i];
            if pos == EMPTY {
                return None;
            }
            if k == key {
                return Some(pos);
            }
            i = (i + 1) & self.mask;
        }
    }
}

/// A lease record the store does not use, as the views (`/status`, metrics) list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedLease {
    /// The etcd key.
    pub key: String,
    /// The metric label of the reason (`outside_network`, `public_ip`, ...).
    pub reason: &'static str,
    /// The reason in words.
    pub detail: String,
}

/// What the store skipped or found doubtful when it built a snapshot. The data path never
/// reads it; the views do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseReport {
    /// Records under the subnets prefix that are not used, in key order.
    pub rejected: Vec<RejectedLease>,
    /// PublicIPs that several leases name (this node's own included), with their subnets.
    pub conflicts: Vec<(Ipv4Addr, Vec<Subnet>)>,
}

/// An immutable snapshot of the remote leases, indexed by subnet and by underlay address.
#[derive(Debug, Clone)]
pub struct LeaseTable {
    prefix_len: u8,
    /// Netmask of `prefix_len` as a host-order integer.
    netmask: u32,
    /// Shift that turns a masked address into its subnet number (`32 - prefix_len`).
    host_bits: u32,
    /// Peers ordered by subnet.
    peers: Box<[Peer]>,
    by_subnet: Index,
    by_underlay: Index,
    revision: i64,
    report: Arc<LeaseReport>,
}

impl LeaseTable {
    /// An empty table for leases of `prefix_len`.
    pub fn empty(prefix_len: u8) -> LeaseTable {
        Self::build(prefix_len, Vec::new(), 0)
    }

    /// Builds a table from peers whose subnets all have `prefix_len`; others are skipped, and
    /// of two peers with the same subnet the first is kept. `revision` is the etcd revision
    /// the snapshot reflects (informational).
    pub fn from_peers(prefix_len: u8, mut peers: Vec<Peer>, revision: i64) -> LeaseTable {
        peers.retain(|p| p.subnet.prefix_len() == prefix_len);
        peers.sort_by_key(|p| p.subnet);
        peers.dedup_by_key(|p| p.subnet);
        Self::build(prefix_len, peers, revision)
    }

    /// Builds from peers already filtered to `prefix_len`, sorted and unique by subnet.
    fn build(prefix_len: u8, peers: Vec<Peer>, revision: i64) -> LeaseTable {
        let prefix_len = prefix_len.min(32);
        let host_bits = 32 - u32::from(prefix_len);
        let mut by_subnet = Index::with_capacity_for(peers.len());
        let mut by_underlay = Index::with_capacity_for(peers.len());
        for (pos, p) in peers.iter().enumerate() {
            // At most a few hundred thousand peers: positions fit in u32 well below EMPTY.
            let pos = u32::try_from(pos).unwrap_or(EMPTY - 1);
            let key = u32::from(p.subnet.addr());
            by_subnet.insert(key, key.checked_shr(host_bits).unwrap_or(0), pos);
            let ip = u32::from(p.public_ip);
            by_underlay.insert(ip, ip, pos);
        }
        LeaseTable {
            prefix_len,
            netmask: Subnet::mask_bits(prefix_len),
            host_bits,
            peers: peers.into_boxed_slice(),
            by_subnet,
            by_underlay,
            revision,
            report: Arc::default(),
        }
    }

    /// This snapshot with the store's report of skipped and conflicting leases attached.
    pub fn with_report(mut self, report: Arc<LeaseReport>) -> LeaseTable {
        self.report = report;
        self
    }

    /// What the store skipped or found doubtful when it built this snapshot.
    pub fn report(&self) -> &LeaseReport {
        &self.report
    }

    /// The peer whose subnet holds `dst` (send path). O(1), no allocation.
    #[inline]
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<&Peer> {
        let key = u32::from(dst) & self.netmask;
        let pos = self
            .by_subnet
            .find(key, key.checked_shr(self.host_bits).unwrap_or(0))?;
        self.peers.get(pos as usize)
    }

    /// A peer whose lease has `src` as its public IP (receive path). If several leases
    /// carry the same public IP, the one with the lowest subnet answers; which inner sources
    /// that sender may use is answered by [`LeaseTable::lookup`] of the source.
    #[inline]
    pub fn lookup_underlay(&self, src: Ipv4Addr) -> Option<&Peer> {
        let key = u32::from(src);
        let pos = self.by_underlay.find(key, key)?;
        self.peers.get(pos as usize)
    }

    /// The peers, ordered by subnet.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Peer> + '_ {
        self.peers.iter()
    }

    /// The number of peers.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether there are no peers.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The prefix length every lease in this table has.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The etcd revision this snapshot reflects (0 if unknown).
    pub fn revision(&self) -> i64 {
        self.revision
    }
}

impl<'a> IntoIterator for &'a LeaseTable {
    type Item = &'a Peer;
    type IntoIter = std::slice::Iter<'a, Peer>;

    fn into_iter(self) -> Self::IntoIter {
        self.peers.iter()
    }
}

/// A change to the set of remote leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerEvent {
    /// A lease was created or changed.
    Upsert(Peer),
    /// A lease was deleted or expired.
    Remove(Subnet),
}

/// What applying events changed, for one log line per batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changes {
    /// Leases that were not there before.
    pub added: usize,
    /// Leases whose contents changed.
    pub updated: usize,
    /// Leases that went away.
    pub removed: usize,
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added == 0 && self.updated == 0 && self.removed == 0
    }
}

/// The control plane's mutable view of the remote leases, from which snapshots are built.
#[derive(Debug, Clone)]
pub struct PeerSet {
    prefix_len: u8,
    peers: BTreeMap<Subnet, Peer>,
}

impl PeerSet {
    /// An empty set for leases of `prefix_len`.
    pub fn new(prefix_len: u8) -> PeerSet {
        PeerSet {
            prefix_len,
            peers: BTreeMap::new(),
        }
    }

    /// Applies events in order. Peers whose prefix length differs from the set's are ignored.
    pub fn apply(&mut self, events: impl IntoIterator<Item = PeerEvent>) -> Changes {
        let mut c = Changes::default();
        for e in events {
            match e {
                PeerEvent::Upsert(p) if p.subnet.prefix_len() == self.prefix_len => {
                    match self.peers.insert(p.subnet, p) {
                        None => c.added += 1,
                        Some(old) if old != p => c.updated += 1,
                        Some(_) => {}
                    }
                }
                PeerEvent::Upsert(_) => {}
                PeerEvent::Remove(s) => {
                    if self.peers.remove(&s).is_some() {
                        c.removed += 1;
                    }
                }
            }
        }
        c
    }

    /// Replaces the whole set (after a re-list) and reports the difference.
    pub fn replace(&mut self, peers: impl IntoIterator<Item = Peer>) -> Changes {
        let mut next = PeerSet::new(self.prefix_len);
        next.apply(peers.into_iter().map(PeerEvent::Upsert));
        let mut c = Changes::default();
        for (s, p) in &next.peers {
            match self.peers.get(s) {
                None => c.added += 1,
                Some(old) if old != p => c.updated += 1,
                Some(_) => {}
            }
        }
        c.removed = self
            .peers
            .keys()
            .filter(|s| !next.peers.contains_key(s))
            .count();
        *self = next;
        c
    }

    /// The peer for `subnet`, if any.
    pub fn get(&self, subnet: &Subnet) -> Option<&Peer> {
        self.peers.get(subnet)
    }

    /// The number of peers.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The peers, ordered by subnet.
    pub fn iter(&self) -> impl Iterator<Item = &Peer> + '_ {
        self.peers.values()
    }

    /// Builds an immutable snapshot of the current set.
    pub fn snapshot(&self, revision: i64) -> LeaseTable {
        // BTreeMap order is subnet order and keys are unique: no sort needed.
        LeaseTable::build(
            self.prefix_len,
            self.peers.values().copied().collect(),
            revision,
        )
    }
}

/// The published lease table: one writer (the store) swaps snapshots in, any number of readers.
#[derive(Debug, Clone)]
pub struct SharedTable {
    inner: Arc<ArcSwap<LeaseTable>>,
}

impl SharedTable {
    /// A shared table that starts with `table`.
    pub fn new(table: LeaseTable) -> SharedTable {
        SharedTable {
            inner: Arc::new(ArcSwap::from_pointee(table)),
        }
    }

    /// Makes `table` the current snapshot; readers see it on their next load.
    pub fn publish(&self, table: LeaseTable) {
        self.inner.store(Arc::new(table));
    }

    /// The current snapshot (lock-free; meant for the control plane and tests).
    pub fn load_full(&self) -> Arc<LeaseTable> {
        self.inner.load_full()
    }

    /// A per-worker reader whose loads cost one atomic read when nothing changed.
    pub fn reader(&self) -> TableReader {
        TableReader {
            cache: Cache::new(Arc::clone(&self.inner)),
        }
    }
}

/// A worker's handle on the [`SharedTable`]: call [`TableReader::load`] once per batch.
pub struct TableReader {
    cache: Cache<Arc<ArcSwap<LeaseTable>>, Arc<LeaseTable>>,
}

impl TableReader {
    /// The current snapshot; refreshed only when a new one was published.
    #[inline]
    pub fn load(&mut self) -> &LeaseTable {
        self.cache.load()
    }
}

impl core::fmt::Debug for TableReader {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TableReader").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn local() -> LocalVtep {
        LocalVtep {
            vni: Vni::new(1).unwrap(),
            mac: "0a:00:00:00:00:01".parse().unwrap(),
            port: 8472,
        }
    }

    fn peer(subnet: &str, ip: &str, mac: Option<&str>) -> Peer {
        Peer::new(
            subnet.parse().unwrap(),
            ip.parse().unwrap(),
            mac.map(|m| m.parse().unwrap()),
            &local(),
        )
    }

    #[test]
    fn header_is_vxlan_then_ethernet() {
        let p = peer("10.1.2.0/24", "192.168.64.3", Some("c6:d2:32:6f:8f:44"));
        assert_eq!(
            p.vxlan_header,
            [
                0x08, 0, 0, 0, 0, 0, 1, 0, // VXLAN, I flag, VNI 1
                0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44, // dst: peer VTEP
                0x0a, 0, 0, 0, 0, 1, // src: ours
                0x08, 0x00, // IPv4
            ]
        );
        assert_eq!(p.underlay.to_string(), "192.168.64.3:8472");
        let udp = peer("10.1.3.0/24", "192.168.64.4", None);
        assert_eq!(udp.vxlan_header, [0; ENCAP_HEADER_LEN]);
    }

    #[test]
    fn lookup_and_underlay() {
        let t = LeaseTable::from_peers(
            24,
            vec![
                peer("10.1.3.0/24", "192.168.64.4", None),
                peer("10.1.2.0/24", "192.168.64.3", None),
                peer("10.1.9.0/25", "192.168.64.9", None), // wrong prefix: skipped
                peer("10.1.2.0/24", "192.168.64.99", None), // duplicate: first kept
            ],
            7,
        );
        assert_eq!(t.len(), 2);
        assert_eq!(t.revision(), 7);
        let p = t.lookup("10.1.2.77".parse().unwrap()).unwrap();
        assert_eq!(p.public_ip.to_string(), "192.168.64.3");
        assert_eq!(
            t.lookup("10.1.3.255".parse().unwrap()).unwrap().public_ip,
            "192.168.64.4".parse::<Ipv4Addr>().unwrap()
        );
        assert!(t.lookup("10.1.4.1".parse().unwrap()).is_none());
        assert!(t.lookup("10.1.9.1".parse().unwrap()).is_none());
        let u = t.lookup_underlay("192.168.64.4".parse().unwrap()).unwrap();
        assert_eq!(u.subnet.to_string(), "10.1.3.0/24");
        assert!(t.lookup_underlay("192.168.64.9".parse().unwrap()).is_none());
        let order: Vec<String> = t.iter().map(|p| p.subnet.to_string()).collect();
        assert_eq!(order, ["10.1.2.0/24", "10.1.3.0/24"]);
        assert!(LeaseTable::empty(24)
            .lookup("10.1.2.1".parse().unwrap())
            .is_none());
    }

    #[test]
    fn peer_set_events_and_replace() {
        let mut s = PeerSet::new(24);
        let a = peer("10.1.2.0/24", "192.168.64.3", None);
        let b = peer("10.1.3.0/24", "192.168.64.4", None);
        let b2 = peer("10.1.3.0/24", "192.168.64.5", None);
        let c = s.apply([PeerEvent::Upsert(a), PeerEvent::Upsert(b)]);
        assert_eq!((c.added, c.updated, c.removed), (2, 0, 0));
        let c = s.apply([
            PeerEvent::Upsert(b2),
            PeerEvent::Upsert(a),
            PeerEvent::Remove("10.1.9.0/24".parse().unwrap()),
        ]);
        assert_eq!((c.added, c.updated, c.removed), (0, 1, 0));
        let t = s.snapshot(3);
        assert_eq!(
            t.lookup("10.1.3.1".parse().unwrap()).unwrap().public_ip,
            "192.168.64.5".parse::<Ipv4Addr>().unwrap()
        );
        let c = s.replace([b2, peer("10.1.4.0/24", "192.168.64.6", None)]);
        assert_eq!((c.added, c.updated, c.removed), (1, 0, 1));
        assert!(s.get(&"10.1.2.0/24".parse().unwrap()).is_none());
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn shared_table_readers_see_publishes() {
        let shared = SharedTable::new(LeaseTable::empty(24));
        let mut r = shared.reader();
        assert!(r.load().is_empty());
        let mut s = PeerSet::new(24);
        s.apply([PeerEvent::Upsert(peer("10.1.2.0/24", "192.168.64.3", None))]);
        shared.publish(s.snapshot(1));
        assert_eq!(r.load().len(), 1);
        assert_eq!(shared.load_full().revision(), 1);
    }

    #[test]
    fn large_table_all_found() {
        // A /8 split into /24s: 65,536 leases.
        let peers: Vec<Peer> = (0..65_536u32)
            .map(|i| {
                Peer::new(
                    Subnet::new(Ipv4Addr::from(0x0a00_0000 | (i << 8)), 24).unwrap(),
                    Ipv4Addr::from(0xc0a8_0000 + i),
                    None,
                    &local(),
                )
            })
            .collect();
        let t = LeaseTable::from_peers(24, peers, 0);
        assert_eq!(t.len(), 65_536);
        for i in (0..65_536u32).step_by(97) {
            let dst = Ipv4Addr::from(0x0a00_0000 | (i << 8) | 0x42);
            assert_eq!(
                t.lookup(dst).unwrap().public_ip,
                Ipv4Addr::from(0xc0a8_0000 + i)
            );
            assert!(t.lookup_underlay(Ipv4Addr::from(0xc0a8_0000 + i)).is_some());
        }
        assert!(t.lookup("11.0.0.1".parse().unwrap()).is_none());
    }

    proptest! {
        #[test]
        fn lookup_agrees_with_linear_scan(
            prefix_len in 16u8..=30,
            subnets in proptest::collection::vec(any::<u32>(), 0..300),
            ips in proptest::collection::vec(any::<u8>(), 0..300),
            probes in proptest::collection::vec(any::<u32>(), 1..200),
        ) {
            let mask = Subnet::mask_bits(prefix_len);
            // Keep every address inside 10.0.0.0/8 so probes hit often.
            let peers: Vec<Peer> = subnets
                .iter()
                .zip(ips.iter().chain(std::iter::repeat(&0)))
                .map(|(s, ip)| {
                    let addr = Ipv4Addr::from((0x0a00_0000 | (s & 0x00ff_ffff)) & mask);
                    Peer::new(
                        Subnet::new(addr, prefix_len).unwrap(),
                        Ipv4Addr::new(192, 168, 0, *ip),
                        None,
                        &local(),
                    )
                })
                .collect();
            let table = LeaseTable::from_peers(prefix_len, peers.clone(), 0);
            let mut naive: Vec<Peer> = Vec::new();
            for p in &peers {
                if !naive.iter().any(|q| q.subnet == p.subnet) {
                    naive.push(*p);
                }
            }
            prop_assert_eq!(table.len(), naive.len());
            let candidates = probes
                .iter()
                .map(|p| Ipv4Addr::from(0x0a00_0000 | (p & 0x00ff_ffff)))
                .chain(peers.iter().map(|p| p.subnet.last_addr()))
                .chain(probes.iter().map(|p| Ipv4Addr::from(*p)));
            for dst in candidates {
                let want = naive.iter().find(|p| p.subnet.contains(dst));
                prop_assert_eq!(table.lookup(dst), want);
            }
            for ip in 0..=255u8 {
                let src = Ipv4Addr::new(192, 168, 0, ip);
                let want = naive
                    .iter()
                    .filter(|p| p.public_ip == src)
                    .min_by_key(|p| p.subnet);
                prop_assert_eq!(table.lookup_underlay(src), want);
            }
        }

        #[test]
        fn peer_set_snapshot_agrees_with_events(
            ops in proptest::collection::vec((any::<bool>(), 0u32..64, any::<u8>()), 0..200),
        ) {
            let mut set = PeerSet::new(24);
            let mut naive: BTreeMap<Subnet, Peer> = BTreeMap::new();
            for (add, n, ip) in ops {
                let subnet = Subnet::new(Ipv4Addr::from(0x0a01_0000 | (n << 8)), 24).unwrap();
                if add {
                    let p = Peer::new(subnet, Ipv4Addr::new(192, 168, 1, ip), None, &local());
                    set.apply([PeerEvent::Upsert(p)]);
                    naive.insert(subnet, p);
                } else {
                    set.apply([PeerEvent::Remove(subnet)]);
                    naive.remove(&subnet);
                }
            }
            let t = set.snapshot(0);
            prop_assert_eq!(t.len(), naive.len());
            for n in 0..64u32 {
                let dst = Ipv4Addr::from(0x0a01_0000 | (n << 8) | 9);
                let want = naive.values().find(|p| p.subnet.contains(dst));
                prop_assert_eq!(t.lookup(dst), want);
            }
        }
    }
}
