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
//!
//! Dual stack: a peer may also carry an IPv6 half (its IPv6 subnet, `PublicIPv6` and the VTEP
//! MAC of its `flannel-v6.<VNI>` device). All IPv6 subnets share the network's IPv6SubnetLen,
//! so the snapshot holds two more indexes of the same kind keyed by the masked IPv6
//! destination and by the IPv6 underlay address; [`LeaseTable::lookup6`] is the same
//! "mask, hash, compare" on a 128-bit key, folded to 32 bits for the hash.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::sync::Arc;

use arc_swap::{ArcSwap, Cache};

use crate::encap::{self, VxlanHeader, VXLAN_ENCAP_LEN};
use crate::wire::ethernet::EthernetRepr;
use crate::wire::vxlan::{self, Vni};
use crate::wire::{EtherType, EthernetAddress, Subnet};

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
    /// The node's IPv6 pod subnet as (network address, prefix length), host bits clear;
    /// `None` for a node without an IPv6 lease. (A plain pair until `wire` has an IPv6 subnet
    /// type.)
    pub subnet6: Option<(Ipv6Addr, u8)>,
    /// The node's IPv6 underlay address (`PublicIPv6` in its lease).
    pub public_ipv6: Option<Ipv6Addr>,
    /// Where to send its IPv6 pod traffic: `PublicIPv6` and the backend port.
    pub underlay6: Option<SocketAddrV6>,
    /// The VTEP MAC of the node's `flannel-v6.<VNI>` device (`BackendV6Data`).
    pub vtep_mac6: Option<EthernetAddress>,
    /// VXLAN header + inner Ethernet header (dst = peer's IPv6 VTEP MAC, src = our IPv6 VTEP
    /// MAC, IPv6) for IPv6 inner packets. All zeros when `vtep_mac6` is `None`.
    pub vxlan_header6: VxlanHeader,
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
            subnet6: None,
            public_ipv6: None,
            underlay6: None,
            vtep_mac6: None,
            vxlan_header6: [0u8; ENCAP_HEADER_LEN],
        }
    }

    /// This peer with its IPv6 half: the IPv6 subnet (host bits are cleared, a prefix length
    /// above 128 counts as 128), its `PublicIPv6`, and the VTEP MAC from its `BackendV6Data`.
    /// `local_mac6` is the MAC of our own IPv6 VTEP; VNI and port are `local`'s, as flanneld
    /// gives both its devices the network's VNI and port.
    pub fn with_ipv6(
        mut self,
        subnet6: (Ipv6Addr, u8),
        public_ipv6: Option<Ipv6Addr>,
        vtep_mac6: Option<EthernetAddress>,
        local_mac6: EthernetAddress,
        local: &LocalVtep,
    ) -> Peer {
        let prefix_len = subnet6.1.min(128);
        let addr = u128::from(subnet6.0) & mask6(prefix_len);
        self.subnet6 = Some((Ipv6Addr::from(addr), prefix_len));
        self.public_ipv6 = public_ipv6;
        self.underlay6 = public_ipv6.map(|ip| SocketAddrV6::new(ip, local.port, 0, 0));
        self.vtep_mac6 = vtep_mac6;
        self.vxlan_header6 = match vtep_mac6 {
            Some(mac) => vxlan_header6(local.vni, local_mac6, mac),
            None => [0u8; ENCAP_HEADER_LEN],
        };
        self
    }
}

/// The IPv6 twin of [`encap::vxlan_header`]: the same VXLAN header, inner EtherType IPv6, as
/// a kernel `flannel-v6` device sends.
fn vxlan_header6(vni: Vni, local_mac: EthernetAddress, peer_mac: EthernetAddress) -> VxlanHeader {
    let mut h = [0u8; ENCAP_HEADER_LEN];
    h[..vxlan::HEADER_LEN].copy_from_slice(&vxlan::header_bytes(vni));
    let eth = EthernetRepr {
        src: local_mac,
        dst: peer_mac,
        ethertype: EtherType::Ipv6,
    };
    h[vxlan::HEADER_LEN..].copy_from_slice(&eth.to_bytes());
    h
}

/// The netmask of an IPv6 prefix length (at most 128) as an integer.
#[inline]
const fn mask6(prefix_len: u8) -> u128 {
    if prefix_len == 0 {
        0
    } else {
        u128::MAX << (128 - prefix_len as u32)
    }
}

/// Folds a 128-bit key to the 32 bits the Fibonacci hash takes; every key bit counts.
#[inline(always)]
fn fold6(key: u128) -> u32 {
    let x = (key as u64) ^ ((key >> 64) as u64);
    (x as u32) ^ ((x >> 32) as u32)
}

/// A 128-bit index key as two halves: a slot is then 24 bytes, where `u128`'s 16-byte
/// alignment would make it 32.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Key6 {
    hi: u64,
    lo: u64,
}

impl From<u128> for Key6 {
    #[inline(always)]
    fn from(k: u128) -> Key6 {
        Key6 {
            hi: (k >> 64) as u64,
            lo: k as u64,
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

/// An open-addressing index from a key (`u32` for IPv4, [`Key6`] for IPv6) to a position in
/// the peer array.
#[derive(Debug, Clone)]
struct Index<K> {
    /// `(key, position)`; position `EMPTY` marks a free slot.
    slots: Box<[(K, u32)]>,
    /// `32 - log2(capacity)`: how far to shift the hash.
    shift: u32,
    /// `capacity - 1`.
    mask: usize,
}

impl<K: Copy + Default + Eq> Index<K> {
    fn with_capacity_for(n: usize) -> Index<K> {
        let cap = (n.saturating_mul(2)).max(8).next_power_of_two();
        Index {
            slots: vec![(K::default(), EMPTY); cap].into_boxed_slice(),
            shift: 32 - cap.trailing_zeros(),
            mask: cap - 1,
        }
    }

    /// Inserts `key` unless present; returns whether it was inserted.
    fn insert(&mut self, key: K, hashed: u32, pos: u32) -> bool {
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
    fn find(&self, key: K, hashed: u32) -> Option<u32> {
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

/// An immutable snapshot of the remote leases, indexed by subnet and by underlay address, in
/// each family.
#[derive(Debug, Clone)]
pub struct LeaseTable {
    prefix_len: u8,
    /// Netmask of `prefix_len` as a host-order integer.
    netmask: u32,
    /// Shift that turns a masked address into its subnet number (`32 - prefix_len`).
    host_bits: u32,
    /// Peers ordered by subnet.
    peers: Box<[Peer]>,
    by_subnet: Index<u32>,
    by_underlay: Index<u32>,
    /// The IPv6 subnets' prefix length; `None` when the network has no IPv6.
    prefix_len6: Option<u8>,
    /// Netmask of `prefix_len6` (zero without IPv6: the empty index then answers).
    netmask6: u128,
    /// `128 - prefix_len6`.
    host_bits6: u32,
    by_subnet6: Index<Key6>,
    by_underlay6: Index<Key6>,
    revision: i64,
    report: Arc<LeaseReport>,
}

impl LeaseTable {
    /// An empty table for leases of `prefix_len`.
    pub fn empty(prefix_len: u8) -> LeaseTable {
        Self::build(prefix_len, None, Vec::new(), 0)
    }

    /// An empty dual-stack table for leases of `prefix_len` and IPv6 leases of `prefix_len6`.
    pub fn empty_dual(prefix_len: u8, prefix_len6: u8) -> LeaseTable {
        Self::build(prefix_len, Some(prefix_len6), Vec::new(), 0)
    }

    /// Builds a table from peers whose subnets all have `prefix_len`; others are skipped, and
    /// of two peers with the same subnet the first is kept. `revision` is the etcd revision
    /// the snapshot reflects (informational).
    pub fn from_peers(prefix_len: u8, peers: Vec<Peer>, revision: i64) -> LeaseTable {
        Self::from_peers_inner(prefix_len, None, peers, revision)
    }

    /// As [`LeaseTable::from_peers`], and also indexes the IPv6 half (subnet and `PublicIPv6`)
    /// of every kept peer whose IPv6 subnet has `prefix_len6`. Of two kept peers with the same IPv6 subnet (or the same
    /// `PublicIPv6`), the one with the lower IPv4 subnet answers.
    pub fn from_peers_dual(
        prefix_len: u8,
        prefix_len6: u8,
        peers: Vec<Peer>,
        revision: i64,
    ) -> LeaseTable {
        Self::from_peers_inner(prefix_len, Some(prefix_len6), peers, revision)
    }

    fn from_peers_inner(
        prefix_len: u8,
        prefix_len6: Option<u8>,
        mut peers: Vec<Peer>,
        revision: i64,
    ) -> LeaseTable {
        peers.retain(|p| p.subnet.prefix_len() == prefix_len);
        peers.sort_by_key(|p| p.subnet);
        peers.dedup_by_key(|p| p.subnet);
        Self::build(prefix_len, prefix_len6, peers, revision)
    }

    /// Builds from peers already filtered to `prefix_len`, sorted and unique by subnet.
    fn build(
        prefix_len: u8,
        prefix_len6: Option<u8>,
        peers: Vec<Peer>,
        revision: i64,
    ) -> LeaseTable {
        let prefix_len = prefix_len.min(32);
        let host_bits = 32 - u32::from(prefix_len);
        let prefix_len6 = prefix_len6.map(|l| l.min(128));
        let netmask6 = prefix_len6.map_or(0, mask6);
        let host_bits6 = 128 - u32::from(prefix_len6.unwrap_or(0));
        let mut by_subnet = Index::with_capacity_for(peers.len());
        let mut by_underlay = Index::with_capacity_for(peers.len());
        // Only IPv6 halves of the network's IPv6SubnetLen are indexed, as for IPv4.
        let indexed6 = |p: &Peer| prefix_len6.is_some() && p.subnet6.map(|s| s.1) == prefix_len6;
        let n6 = peers.iter().filter(|p| indexed6(p)).count();
        let mut by_subnet6 = Index::with_capacity_for(n6);
        let mut by_underlay6 = Index::with_capacity_for(n6);
        for (pos, p) in peers.iter().enumerate() {
            // At most a few hundred thousand peers: positions fit in u32 well below EMPTY.
            let pos = u32::try_from(pos).unwrap_or(EMPTY - 1);
            let key = u32::from(p.subnet.addr());
            by_subnet.insert(key, key.checked_shr(host_bits).unwrap_or(0), pos);
            let ip = u32::from(p.public_ip);
            by_underlay.insert(ip, ip, pos);
            if !indexed6(p) {
                continue;
            }
            if let Some((addr, _)) = p.subnet6 {
                let key = u128::from(addr);
                let hashed = fold6(key.checked_shr(host_bits6).unwrap_or(0));
                by_subnet6.insert(Key6::from(key), hashed, pos);
            }
            if let Some(ip) = p.public_ipv6 {
                let key = u128::from(ip);
                by_underlay6.insert(Key6::from(key), fold6(key), pos);
            }
        }
        LeaseTable {
            prefix_len,
            netmask: Subnet::mask_bits(prefix_len),
            host_bits,
            peers: peers.into_boxed_slice(),
            by_subnet,
            by_underlay,
            prefix_len6,
            netmask6,
            host_bits6,
            by_subnet6,
            by_underlay6,
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

    /// The peer whose IPv6 subnet holds `dst` (send path, IPv6). O(1), no allocation.
    #[inline]
    pub fn lookup6(&self, dst: Ipv6Addr) -> Option<&Peer> {
        let key = u128::from(dst) & self.netmask6;
        let hashed = fold6(key.checked_shr(self.host_bits6).unwrap_or(0));
        let pos = self.by_subnet6.find(Key6::from(key), hashed)?;
        self.peers.get(pos as usize)
    }

    /// A peer whose lease has `src` as its `PublicIPv6` (receive path, IPv6). If several
    /// leases carry the same `PublicIPv6`, the one with the lowest IPv4 subnet answers; which
    /// inner sources it may use is answered by [`LeaseTable::lookup6`] of the source.
    #[inline]
    pub fn lookup_underlay6(&self, src: Ipv6Addr) -> Option<&Peer> {
        let key = u128::from(src);
        let pos = self.by_underlay6.find(Key6::from(key), fold6(key))?;
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

    /// The prefix length of the IPv6 subnets this table indexes; `None` without IPv6.
    pub fn prefix_len6(&self) -> Option<u8> {
        self.prefix_len6
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
    /// The network's IPv6SubnetLen when it has IPv6.
    prefix_len6: Option<u8>,
    peers: BTreeMap<Subnet, Peer>,
}

impl PeerSet {
    /// An empty set for leases of `prefix_len`.
    pub fn new(prefix_len: u8) -> PeerSet {
        PeerSet {
            prefix_len,
            prefix_len6: None,
            peers: BTreeMap::new(),
        }
    }

    /// An empty dual-stack set: leases of `prefix_len`, whose IPv6 halves of `prefix_len6`
    /// its snapshots index too.
    pub fn dual(prefix_len: u8, prefix_len6: u8) -> PeerSet {
        PeerSet {
            prefix_len6: Some(prefix_len6),
            ..PeerSet::new(prefix_len)
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
        let mut next = PeerSet {
            prefix_len: self.prefix_len,
            prefix_len6: self.prefix_len6,
            peers: BTreeMap::new(),
        };
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
            self.prefix_len6,
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

    const LOCAL_MAC6: &str = "0a:00:00:00:00:06";

    fn dual(
        subnet: &str,
        ip: &str,
        subnet6: (&str, u8),
        ip6: Option<&str>,
        mac6: Option<&str>,
    ) -> Peer {
        peer(subnet, ip, None).with_ipv6(
            (subnet6.0.parse().unwrap(), subnet6.1),
            ip6.map(|a| a.parse().unwrap()),
            mac6.map(|m| m.parse().unwrap()),
            LOCAL_MAC6.parse().unwrap(),
            &local(),
        )
    }

    fn v6(a: &str) -> Ipv6Addr {
        a.parse().unwrap()
    }

    #[test]
    fn ipv6_half_header_and_underlay() {
        let p = dual(
            "10.1.2.0/24",
            "192.168.77.3",
            ("fd10:0:0:2::77", 64), // host bits are cleared
            Some("fd77::3"),
            Some("c6:d2:32:6f:8f:46"),
        );
        assert_eq!(
            p.vxlan_header6,
            [
                0x08, 0, 0, 0, 0, 0, 1, 0, // VXLAN, I flag, VNI 1
                0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x46, // dst: peer's IPv6 VTEP
                0x0a, 0, 0, 0, 0, 6, // src: our IPv6 VTEP
                0x86, 0xdd, // IPv6
            ]
        );
        assert_eq!(p.subnet6, Some((v6("fd10:0:0:2::"), 64)));
        assert_eq!(p.public_ipv6, Some(v6("fd77::3")));
        assert_eq!(p.underlay6.unwrap().to_string(), "[fd77::3]:8472");
        assert_eq!(p.vtep_mac6, Some("c6:d2:32:6f:8f:46".parse().unwrap()));
        // The IPv4 half is what `Peer::new` made.
        assert_eq!(p.vxlan_header, [0; ENCAP_HEADER_LEN]);
        assert_eq!(p.underlay.to_string(), "192.168.77.3:8472");

        let v4_only = peer("10.1.3.0/24", "192.168.77.4", Some("c6:d2:32:6f:8f:44"));
        assert_eq!(v4_only.subnet6, None);
        assert_eq!(v4_only.public_ipv6, None);
        assert_eq!(v4_only.underlay6, None);
        assert_eq!(v4_only.vtep_mac6, None);
        assert_eq!(v4_only.vxlan_header6, [0; ENCAP_HEADER_LEN]);

        let no_mac = dual("10.1.4.0/24", "192.168.77.5", ("fd10::", 200), None, None);
        assert_eq!(no_mac.vxlan_header6, [0; ENCAP_HEADER_LEN]);
        assert_eq!(no_mac.subnet6, Some((v6("fd10::"), 128)));
        assert_eq!(no_mac.underlay6, None);
    }

    #[test]
    fn lookup6_and_underlay6() {
        let peers = vec![
            dual(
                "10.1.3.0/24",
                "192.168.77.4",
                ("fd10:0:0:3::", 64),
                Some("fd77::4"),
                None,
            ),
            dual(
                "10.1.2.0/24",
                "192.168.77.3",
                ("fd10:0:0:2::", 64),
                Some("fd77::3"),
                None,
            ),
            // IPv6 prefix other than the network's: the IPv4 half is kept, the IPv6 one not.
            dual(
                "10.1.5.0/24",
                "192.168.77.6",
                ("fd10:0:0:5::", 80),
                Some("fd77::6"),
                None,
            ),
            // The same IPv6 subnet and PublicIPv6 as 10.1.2.0/24: the lower IPv4 subnet wins.
            dual(
                "10.1.7.0/24",
                "192.168.77.8",
                ("fd10:0:0:2::", 64),
                Some("fd77::3"),
                None,
            ),
            // IPv4 only.
            peer("10.1.4.0/24", "192.168.77.5", None),
            // Wrong IPv4 prefix: skipped with its IPv6 half.
            dual(
                "10.1.9.0/25",
                "192.168.77.9",
                ("fd10:0:0:9::", 64),
                Some("fd77::9"),
                None,
            ),
        ];
        let t = LeaseTable::from_peers_dual(24, 64, peers.clone(), 3);
        assert_eq!(t.len(), 5);
        assert_eq!(t.prefix_len6(), Some(64));
        let hit = t.lookup6(v6("fd10:0:0:2:abcd::1")).unwrap();
        assert_eq!(hit.subnet.to_string(), "10.1.2.0/24");
        let last = t.lookup6(v6("fd10:0:0:3:ffff:ffff:ffff:ffff")).unwrap();
        assert_eq!(last.subnet.to_string(), "10.1.3.0/24");
        assert!(t.lookup6(v6("fd10:0:0:4::1")).is_none());
        assert!(t.lookup6(v6("fd10:0:0:5::1")).is_none());
        assert!(t.lookup6(v6("fd10:0:0:9::1")).is_none());
        assert!(t.lookup6(v6("::")).is_none());
        let u = t.lookup_underlay6(v6("fd77::3")).unwrap();
        assert_eq!(u.subnet.to_string(), "10.1.2.0/24");
        assert_eq!(
            t.lookup_underlay6(v6("fd77::4")).unwrap().public_ip,
            "192.168.77.4".parse::<Ipv4Addr>().unwrap()
        );
        assert!(t.lookup_underlay6(v6("fd77::6")).is_none());
        assert!(t.lookup_underlay6(v6("fd77::9")).is_none());
        assert!(t.lookup_underlay6(v6("fd77::5")).is_none());
        // The IPv4 half answers exactly as in an IPv4-only table.
        let t4 = LeaseTable::from_peers(24, peers, 3);
        assert_eq!(t4.prefix_len6(), None);
        for d in [
            "10.1.2.1",
            "10.1.4.9",
            "10.1.5.255",
            "10.1.7.3",
            "10.1.9.1",
            "10.1.8.1",
        ] {
            let d: Ipv4Addr = d.parse().unwrap();
            assert_eq!(t.lookup(d), t4.lookup(d));
        }
        // Without IPv6 in the network, no IPv6 lookup answers.
        assert!(t4.lookup6(v6("fd10:0:0:2::1")).is_none());
        assert!(t4.lookup_underlay6(v6("fd77::3")).is_none());
        let e = LeaseTable::empty_dual(24, 64);
        assert_eq!(e.prefix_len6(), Some(64));
        assert!(e.lookup6(v6("fd10:0:0:2::1")).is_none());
        assert!(LeaseTable::empty(24).lookup6(v6("::")).is_none());
    }

    #[test]
    fn lookup6_at_the_prefix_extremes() {
        for (len, inside, outside) in [
            (0u8, "2001:db8::1", None),
            (128, "fd10::1", Some("fd10::2")),
            (1, "fd10::1", Some("::1")),
        ] {
            let subnet6 = if len == 0 { "::" } else { "fd10::1" };
            let t = LeaseTable::from_peers_dual(
                24,
                len,
                vec![dual(
                    "10.1.2.0/24",
                    "192.168.77.3",
                    (subnet6, len),
                    None,
                    None,
                )],
                0,
            );
            assert!(t.lookup6(v6(inside)).is_some(), "/{len} holds {inside}");
            if let Some(o) = outside {
                assert!(t.lookup6(v6(o)).is_none(), "/{len} does not hold {o}");
            }
        }
    }

    #[test]
    fn peer_set_dual_snapshot() {
        let mut s = PeerSet::dual(24, 64);
        let a = dual(
            "10.1.2.0/24",
            "192.168.77.3",
            ("fd10:0:0:2::", 64),
            Some("fd77::3"),
            None,
        );
        let a2 = dual(
            "10.1.2.0/24",
            "192.168.77.3",
            ("fd10:0:0:2::", 64),
            Some("fd77::33"),
            None,
        );
        let c = s.apply([PeerEvent::Upsert(a)]);
        assert_eq!((c.added, c.updated, c.removed), (1, 0, 0));
        // A change in the IPv6 half alone is an update.
        let c = s.apply([PeerEvent::Upsert(a2)]);
        assert_eq!((c.added, c.updated, c.removed), (0, 1, 0));
        let t = s.snapshot(2);
        assert_eq!(t.prefix_len6(), Some(64));
        assert_eq!(t.lookup6(v6("fd10:0:0:2::5")), Some(&a2));
        assert_eq!(t.lookup_underlay6(v6("fd77::33")), Some(&a2));
        assert!(t.lookup_underlay6(v6("fd77::3")).is_none());
        let c = s.replace([a]);
        assert_eq!((c.added, c.updated, c.removed), (0, 1, 0));
        assert_eq!(s.snapshot(3).lookup_underlay6(v6("fd77::3")), Some(&a));
        // An IPv4-only set's snapshots index no IPv6.
        let mut s4 = PeerSet::new(24);
        s4.apply([PeerEvent::Upsert(a)]);
        assert!(s4.snapshot(1).lookup6(v6("fd10:0:0:2::5")).is_none());
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

    #[test]
    fn large_table_all_found6() {
        // fd10::/48 split into /64s, 65,536 leases, each node at fd77::<i>.
        let subnet6 = |i: u32| Ipv6Addr::from((0xfd10_0000_0000_0000u128 | u128::from(i)) << 64);
        let ip6 = |i: u32| Ipv6Addr::from(0xfd77u128 << 112 | u128::from(i));
        let peers: Vec<Peer> = (0..65_536u32)
            .map(|i| {
                Peer::new(
                    Subnet::new(Ipv4Addr::from(0x0a00_0000 | (i << 8)), 24).unwrap(),
                    Ipv4Addr::from(0xc0a8_0000 + i),
                    None,
                    &local(),
                )
                .with_ipv6(
                    (subnet6(i), 64),
                    Some(ip6(i)),
                    None,
                    LOCAL_MAC6.parse().unwrap(),
                    &local(),
                )
            })
            .collect();
        let t = LeaseTable::from_peers_dual(24, 64, peers, 0);
        assert_eq!(t.len(), 65_536);
        for i in (0..65_536u32).step_by(97) {
            let dst = Ipv6Addr::from(u128::from(subnet6(i)) | 0x42);
            assert_eq!(t.lookup6(dst).unwrap().public_ipv6, Some(ip6(i)));
            assert_eq!(
                t.lookup_underlay6(ip6(i)).unwrap().subnet6.unwrap().0,
                subnet6(i)
            );
        }
        assert!(t.lookup6(v6("fd11::1")).is_none());
        assert!(t.lookup_underlay6(v6("fd77::1:0:0")).is_none());
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
        fn lookup6_agrees_with_linear_scan(
            prefix_len6 in 1u8..=128,
            // (IPv4 subnet number, IPv6 subnet number, PublicIPv6 host, which IPv6 half)
            leases in proptest::collection::vec(
                (0u32..128, 0u32..64, any::<u8>(), 0u8..4),
                0..200,
            ),
            probes in proptest::collection::vec((any::<u128>(), 0u32..64), 1..100),
        ) {
            let host_bits = 128 - u32::from(prefix_len6);
            // IPv6 subnets of fd10::/16 (the number sits just above the host bits), so that
            // several leases may claim one subnet.
            let base = 0xfd10u128 << 112;
            let net6 = |n: u32| (base | u128::from(n).checked_shl(host_bits).unwrap_or(0))
                & mask6(prefix_len6);
            let peers: Vec<Peer> = leases
                .iter()
                .map(|&(n4, n6, host, kind)| {
                    let p = Peer::new(
                        Subnet::new(Ipv4Addr::from(0x0a01_0000 | (n4 << 8)), 24).unwrap(),
                        Ipv4Addr::new(192, 168, 0, host),
                        None,
                        &local(),
                    );
                    let public6 = Some(Ipv6Addr::from(0xfd77u128 << 112 | u128::from(host)));
                    match kind {
                        // IPv4 only.
                        0 => p,
                        // An IPv6 prefix other than the network's: not indexed.
                        1 => p.with_ipv6(
                            (Ipv6Addr::from(net6(n6)), prefix_len6 - 1),
                            public6,
                            None,
                            LOCAL_MAC6.parse().unwrap(),
                            &local(),
                        ),
                        // No PublicIPv6.
                        2 => p.with_ipv6(
                            (Ipv6Addr::from(net6(n6)), prefix_len6),
                            None,
                            None,
                            LOCAL_MAC6.parse().unwrap(),
                            &local(),
                        ),
                        _ => p.with_ipv6(
                            (Ipv6Addr::from(net6(n6)), prefix_len6),
                            public6,
                            None,
                            LOCAL_MAC6.parse().unwrap(),
                            &local(),
                        ),
                    }
                })
                .collect();
            let table = LeaseTable::from_peers_dual(24, prefix_len6, peers.clone(), 0);
            // The model: first lease per IPv4 subnet, in IPv4 subnet order, scanned in full.
            let mut naive: Vec<Peer> = Vec::new();
            for p in &peers {
                if !naive.iter().any(|q| q.subnet == p.subnet) {
                    naive.push(*p);
                }
            }
            naive.sort_by_key(|p| p.subnet);
            let indexed: Vec<&Peer> = naive
                .iter()
                .filter(|p| p.subnet6.is_some_and(|s| s.1 == prefix_len6))
                .collect();
            prop_assert_eq!(table.len(), naive.len());
            let contains = |p: &Peer, dst: Ipv6Addr| {
                p.subnet6.is_some_and(|(a, l)| u128::from(dst) & mask6(l) == u128::from(a))
            };
            let candidates = probes
                .iter()
                .map(|&(bits, n6)| {
                    // Inside subnet n6 with random host bits, then fully random.
                    let host = bits & !mask6(prefix_len6);
                    Ipv6Addr::from(net6(n6) | host)
                })
                .chain(probes.iter().map(|&(bits, _)| Ipv6Addr::from(bits)))
                .chain(peers.iter().filter_map(|p| p.subnet6.map(|s| s.0)));
            for dst in candidates {
                let want = indexed.iter().copied().find(|p| contains(p, dst));
                prop_assert_eq!(table.lookup6(dst), want, "dst {}", dst);
            }
            for host in 0..=255u8 {
                let src = Ipv6Addr::from(0xfd77u128 << 112 | u128::from(host));
                let want = indexed
                    .iter()
                    .copied()
                    .filter(|p| p.public_ipv6 == Some(src))
                    .min_by_key(|p| p.subnet);
                prop_assert_eq!(table.lookup_underlay6(src), want, "src {}", src);
            }
            // The IPv4 half is untouched by the IPv6 one.
            for n4 in 0..128u32 {
                let dst = Ipv4Addr::from(0x0a01_0000 | (n4 << 8) | 1);
                prop_assert_eq!(table.lookup(dst), naive.iter().find(|p| p.subnet.contains(dst)));
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
