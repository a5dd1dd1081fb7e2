//! The lease table: every remote node's lease, as an immutable snapshot the data plane reads
//! without locks or allocation.
//!
//! The control plane keeps a [`PeerSet`] (an ordered map, cheap to change), builds a
//! [`LeaseTable`] from it after each batch of etcd events and publishes it through a
//! [`SharedTable`] (RCU via `arc-swap`). Workers hold a [`TableReader`] and load the current
//! snapshot once per batch of packets.
//!
//! All leases share one prefix length (the network's SubnetLen), so finding the peer for a
//! destination is "mask, hash, compare" in a small open-addressing table (`index`).
//!
//! Dual stack: the IPv6 halves of the leases ([`Peer6`]: IPv6 subnet, `PublicIPv6`, the VTEP
//! MAC of the node's `flannel-v6.<VNI>` device) sit in a second peer array of the snapshot
//! with indexes of their own, so an IPv4 [`Peer`] and the IPv4 lookups are the same with or
//! without IPv6. IPv6 subnets share the network's IPv6SubnetLen too; up to /64 (flannel's
//! default) the upper 64 bits of the address are the whole key, longer prefixes (flannel
//! allows up to /127) take a 128-bit key.

mod index;
mod set;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::sync::Arc;

use arc_swap::{ArcSwap, Cache};

use crate::encap::{self, VxlanHeader, VXLAN_ENCAP_LEN};
use crate::wire::vxlan::Vni;
use crate::wire::{EthernetAddress, Subnet, Subnet6};
use index::{fold, position, Index, Key128};

pub use set::{Changes, Clash, Lease, LeaseKey, PeerEvent, PeerSet};

/// Length of the precomputed VXLAN + inner Ethernet header (8 + 14 bytes).
pub const ENCAP_HEADER_LEN: usize = VXLAN_ENCAP_LEN;

/// What this node contributes to every encapsulated frame: VNI, our VTEP MAC, UDP port.
///
/// For IPv6 peers the caller passes the MAC of our IPv6 VTEP (`flannel-v6.<VNI>` has a MAC of
/// its own); VNI and port are the network's in both families.
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

/// The IPv6 half of one remote node's lease, with everything encapsulation needs precomputed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer6 {
    /// The node's IPv6 pod subnet.
    pub subnet: Subnet6,
    /// The node's IPv6 underlay address (`PublicIPv6` in its lease).
    pub public_ip: Ipv6Addr,
    /// Where to send its encapsulated IPv6 packets: `PublicIPv6` and backend port.
    pub underlay: SocketAddrV6,
    /// The VTEP MAC of the node's `flannel-v6.<VNI>` device (`BackendV6Data`); `None` for
    /// backends without one.
    pub vtep_mac: Option<EthernetAddress>,
    /// VXLAN header + inner Ethernet header (dst = the peer's IPv6 VTEP MAC, src = ours,
    /// IPv6). All zeros when `vtep_mac` is `None`.
    pub vxlan_header: VxlanHeader,
}

impl Peer6 {
    /// Builds an IPv6 peer entry and precomputes its encapsulation header; `local.mac` is the
    /// MAC of our IPv6 VTEP.
    pub fn new(
        subnet: Subnet6,
        public_ip: Ipv6Addr,
        vtep_mac: Option<EthernetAddress>,
        local: &LocalVtep,
    ) -> Peer6 {
        let vxlan_header = match vtep_mac {
            Some(mac) => encap::vxlan_header6(local.vni, local.mac, mac),
            None => [0u8; ENCAP_HEADER_LEN],
        };
        Peer6 {
            subnet,
            public_ip,
            underlay: SocketAddrV6::new(public_ip, local.port, 0, 0),
            vtep_mac,
            vxlan_header,
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
    /// PublicIPv6s that several leases' IPv6 halves name (this node's own included), with
    /// their IPv6 subnets.
    pub conflicts6: Vec<(Ipv6Addr, Vec<Subnet6>)>,
    /// Usable vxlan leases that name another VNI than this node's, in key order: their
    /// nodes and this one drop each other's packets.
    pub other_vni: Vec<OtherVni>,
}

/// A vxlan lease whose record names another VNI than the network config's (a cluster in
/// the middle of a `Backend.VNI` change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherVni {
    /// The etcd key.
    pub key: String,
    /// The record's field: `BackendData.VNI` or `BackendV6Data.VNI`.
    pub field: &'static str,
    /// The VNI the record names.
    pub vni: u32,
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
    /// PublicIPs that several peers name, with their subnets (both sorted); found while the
    /// underlay index is built, so a table without any costs nothing more.
    shared: Box<[(Ipv4Addr, Vec<Subnet>)]>,
    /// The IPv6 half, empty in an IPv4-only table.
    six: Half6,
    /// When each peer's lease was first seen (seconds since the Unix epoch), in `peers`'
    /// order; empty when not known (a table not built from a [`PeerSet`]). For the views.
    first_seen: Box<[u32]>,
    revision: i64,
    /// How many snapshots were published before this one (set by [`SharedTable::publish`]).
    generation: u64,
    report: Arc<LeaseReport>,
}

/// The IPv6 half of a snapshot: its own peer array and indexes.
#[derive(Debug, Clone)]
struct Half6 {
    /// The IPv6 subnets' prefix length; `None` when the network has no IPv6.
    prefix_len: Option<u8>,
    /// IPv6 peers ordered by subnet.
    peers: Box<[Peer6]>,
    by_subnet: Subnets6,
    /// PublicIPv6s that several IPv6 peers name, with their IPv6 subnets (both sorted).
    shared: Box<[(Ipv6Addr, Vec<Subnet6>)]>,
    /// Keyed by the whole `PublicIPv6`, hashed folded to 64 bits.
    by_underlay: Index<Key128>,
}

/// The IPv6 subnet index, keyed by the masked destination.
#[derive(Debug, Clone)]
enum Subnets6 {
    /// Prefixes of at most 64 bits: the upper 64 bits of the address, masked, are the key and
    /// the subnet number (the key shifted down by `host_bits`) is what is hashed.
    Short {
        /// Netmask of the prefix over the upper 64 bits.
        netmask: u64,
        /// `64 - prefix_len`.
        host_bits: u32,
        index: Index<u64>,
    },
    /// Prefixes of 65 to 128 bits: the whole masked address is the key. The upper 64 bits
    /// are all prefix; what is hashed is them XOR the lower half's prefix bits shifted down,
    /// so consecutive subnets of one /64 differ in the low bits as in the short case.
    Long {
        /// Netmask of the prefix over the lower 64 bits.
        netmask: u64,
        /// `128 - prefix_len`, below 64.
        host_bits: u32,
        index: Index<Key128>,
    },
}

impl Subnets6 {
    /// An empty index for `n` subnets of `prefix_len` (at most 128).
    fn with_capacity_for(prefix_len: u8, n: usize) -> Subnets6 {
        let mask = Subnet6::mask_bits(prefix_len);
        if prefix_len <= 64 {
            Subnets6::Short {
                netmask: (mask >> 64) as u64,
                host_bits: 64 - u32::from(prefix_len),
                index: Index::with_capacity_for(n),
            }
        } else {
            Subnets6::Long {
                netmask: mask as u64,
                host_bits: 128 - u32::from(prefix_len),
                index: Index::with_capacity_for(n),
            }
        }
    }

    /// Indexes the subnet at `addr` (host bits clear) unless present.
    fn insert(&mut self, addr: Ipv6Addr, pos: u32) {
        let bits = u128::from(addr);
        match self {
            Subnets6::Short {
                host_bits, index, ..
            } => {
                let key = (bits >> 64) as u64;
                index.insert(key, key.checked_shr(*host_bits).unwrap_or(0), pos);
            }
            Subnets6::Long {
                host_bits, index, ..
            } => {
                let key = Key128::from(bits);
                index.insert(key, key.hi ^ (key.lo >> *host_bits), pos);
            }
        }
    }

    /// The position of the subnet holding `dst`.
    #[inline(always)]
    fn find(&self, dst: Ipv6Addr) -> Option<u32> {
        let bits = u128::from(dst);
        match self {
            Subnets6::Short {
                netmask,
                host_bits,
                index,
            } => {
                let key = (bits >> 64) as u64 & netmask;
                index.find(key, key.checked_shr(*host_bits).unwrap_or(0))
            }
            Subnets6::Long {
                netmask,
                host_bits,
                index,
            } => {
                let (hi, lo) = ((bits >> 64) as u64, bits as u64 & netmask);
                index.find(Key128 { hi, lo }, hi ^ (lo >> *host_bits))
            }
        }
    }
}

/// The addresses that several peers name, from the positions whose underlay insert found
/// the address taken (`again`): `of(pos)` gives the address, the peer's subnet and the
/// subnet of the peer the index holds for it. Sorted by address, each with its subnets sorted.
fn group_shared<A: Ord + Copy, S: Ord + Copy>(
    again: &[u32],
    of: impl Fn(u32) -> (A, S, S),
) -> Box<[(A, Vec<S>)]> {
    if again.is_empty() {
        return Box::default();
    }
    let mut by_ip: std::collections::BTreeMap<A, Vec<S>> = std::collections::BTreeMap::new();
    for &pos in again {
        let (ip, subnet, first) = of(pos);
        let subnets = by_ip.entry(ip).or_insert_with(|| vec![first]);
        subnets.push(subnet);
    }
    by_ip
        .into_iter()
        .map(|(ip, mut subnets)| {
            subnets.sort_unstable();
            subnets.dedup();
            (ip, subnets)
        })
        .collect()
}

impl Half6 {
    /// Builds from IPv6 peers already filtered to `prefix_len`, sorted and unique by subnet.
    fn build(prefix_len: Option<u8>, peers: Vec<Peer6>) -> Half6 {
        let prefix_len = prefix_len.map(|l| l.min(128));
        // Without IPv6 the index is empty and its netmask irrelevant: every lookup misses.
        let mut by_subnet = Subnets6::with_capacity_for(prefix_len.unwrap_or(0), peers.len());
        let mut by_underlay = Index::with_capacity_for(peers.len());
        let mut again = Vec::new();
        for (pos, p) in peers.iter().enumerate() {
            let pos = position(pos);
            by_subnet.insert(p.subnet.addr(), pos);
            let ip = u128::from(p.public_ip);
            if !by_underlay.insert(Key128::from(ip), fold(ip), pos) {
                again.push(pos);
            }
        }
        let shared = group_shared(&again, |pos| {
            let p = &peers[pos as usize];
            let ip = u128::from(p.public_ip);
            let first = by_underlay.find(Key128::from(ip), fold(ip)).unwrap_or(pos);
            (p.public_ip, p.subnet, peers[first as usize].subnet)
        });
        Half6 {
            prefix_len,
            peers: peers.into_boxed_slice(),
            by_subnet,
            shared,
            by_underlay,
        }
    }
}

impl LeaseTable {
    /// An empty table for leases of `prefix_len`.
    pub fn empty(prefix_len: u8) -> LeaseTable {
        Self::build(prefix_len, Vec::new(), None, Vec::new(), 0)
    }

    /// An empty dual-stack table: leases of `prefix_len`, IPv6 halves of `prefix_len6`.
    pub fn empty_dual(prefix_len: u8, prefix_len6: u8) -> LeaseTable {
        Self::build(prefix_len, Vec::new(), Some(prefix_len6), Vec::new(), 0)
    }

    /// Builds a table from peers whose subnets all have `prefix_len`; others are skipped, and
    /// of two peers with the same subnet the first is kept. `revision` is the etcd revision
    /// the snapshot reflects (informational).
    pub fn from_peers(prefix_len: u8, peers: Vec<Peer>, revision: i64) -> LeaseTable {
        Self::from_unsorted(prefix_len, peers, None, Vec::new(), revision)
    }

    /// As [`LeaseTable::from_peers`], with an IPv6 half built the same way from `peers6`:
    /// those whose subnets have `prefix_len6` are kept, the first of two with one subnet.
    pub fn from_peers_dual(
        prefix_len: u8,
        peers: Vec<Peer>,
        prefix_len6: u8,
        peers6: Vec<Peer6>,
        revision: i64,
    ) -> LeaseTable {
        Self::from_unsorted(prefix_len, peers, Some(prefix_len6), peers6, revision)
    }

    /// Filters, sorts and de-duplicates each family's peers, then builds.
    fn from_unsorted(
        prefix_len: u8,
        mut peers: Vec<Peer>,
        prefix_len6: Option<u8>,
        mut peers6: Vec<Peer6>,
        revision: i64,
    ) -> LeaseTable {
        peers.retain(|p| p.subnet.prefix_len() == prefix_len);
        peers.sort_by_key(|p| p.subnet);
        peers.dedup_by_key(|p| p.subnet);
        peers6.retain(|p| Some(p.subnet.prefix_len()) == prefix_len6);
        peers6.sort_by_key(|p| p.subnet);
        peers6.dedup_by_key(|p| p.subnet);
        Self::build(prefix_len, peers, prefix_len6, peers6, revision)
    }

    /// Builds from peers already filtered to their family's prefix length, sorted and unique
    /// by subnet.
    fn build(
        prefix_len: u8,
        peers: Vec<Peer>,
        prefix_len6: Option<u8>,
        peers6: Vec<Peer6>,
        revision: i64,
    ) -> LeaseTable {
        let prefix_len = prefix_len.min(32);
        let host_bits = 32 - u32::from(prefix_len);
        let mut by_subnet = Index::with_capacity_for(peers.len());
        let mut by_underlay = Index::with_capacity_for(peers.len());
        let mut again = Vec::new();
        for (pos, p) in peers.iter().enumerate() {
            let pos = position(pos);
            let key = u32::from(p.subnet.addr());
            by_subnet.insert(key, key.checked_shr(host_bits).unwrap_or(0), pos);
            let ip = u32::from(p.public_ip);
            if !by_underlay.insert(ip, ip, pos) {
                again.push(pos);
            }
        }
        let shared = group_shared(&again, |pos| {
            let p = &peers[pos as usize];
            let ip = u32::from(p.public_ip);
            let first = by_underlay.find(ip, ip).unwrap_or(pos);
            (p.public_ip, p.subnet, peers[first as usize].subnet)
        });
        LeaseTable {
            prefix_len,
            netmask: Subnet::mask_bits(prefix_len),
            host_bits,
            peers: peers.into_boxed_slice(),
            by_subnet,
            by_underlay,
            shared,
            six: Half6::build(prefix_len6, peers6),
            first_seen: Box::default(),
            revision,
            generation: 0,
            report: Arc::default(),
        }
    }

    /// This snapshot with the first-seen time of each peer, in peer order.
    fn with_first_seen(mut self, first_seen: Box<[u32]>) -> LeaseTable {
        if first_seen.len() == self.peers.len() {
            self.first_seen = first_seen;
        }
        self
    }

    /// The peers, ordered by subnet, each with how long ago (seconds) its lease was first
    /// seen by this process (0 when not known).
    pub fn iter_with_age(&self) -> impl ExactSizeIterator<Item = (&Peer, u64)> + '_ {
        let now = set::now_secs();
        self.peers.iter().enumerate().map(move |(i, p)| {
            let since = self.first_seen.get(i).copied().unwrap_or(now);
            (p, u64::from(now.saturating_sub(since)))
        })
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

    /// The IPv6 peer whose subnet holds `dst` (send path, IPv6). O(1), no allocation.
    #[inline]
    pub fn lookup6(&self, dst: Ipv6Addr) -> Option<&Peer6> {
        let pos = self.six.by_subnet.find(dst)?;
        self.six.peers.get(pos as usize)
    }

    /// An IPv6 peer whose lease has `src` as its `PublicIPv6` (receive path, IPv6). If
    /// several carry the same address, the one with the lowest IPv6 subnet answers; which
    /// inner sources that sender may use is answered by [`LeaseTable::lookup6`].
    #[inline]
    pub fn lookup_underlay6(&self, src: Ipv6Addr) -> Option<&Peer6> {
        let key = u128::from(src);
        let pos = self.six.by_underlay.find(Key128::from(key), fold(key))?;
        self.six.peers.get(pos as usize)
    }

    /// The IPv6 peers, ordered by subnet.
    pub fn iter6(&self) -> impl ExactSizeIterator<Item = &Peer6> + '_ {
        self.six.peers.iter()
    }

    /// The number of IPv6 peers.
    pub fn len6(&self) -> usize {
        self.six.peers.len()
    }

    /// The prefix length every IPv6 subnet in this table has; `None` in an IPv4-only table.
    pub fn prefix_len6(&self) -> Option<u8> {
        self.six.prefix_len
    }

    /// The etcd revision this snapshot reflects (0 if unknown).
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// PublicIPs that several peers name, with their subnets, sorted (found while building).
    pub fn shared_public_ips(&self) -> &[(Ipv4Addr, Vec<Subnet>)] {
        &self.shared
    }

    /// PublicIPv6s that several IPv6 peers name, with their IPv6 subnets, sorted.
    pub fn shared_public_ips6(&self) -> &[(Ipv6Addr, Vec<Subnet6>)] {
        &self.six.shared
    }

    /// How many snapshots were published before this one: the store's table builds.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

impl<'a> IntoIterator for &'a LeaseTable {
    type Item = &'a Peer;
    type IntoIter = std::slice::Iter<'a, Peer>;

    fn into_iter(self) -> Self::IntoIter {
        self.peers.iter()
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
    pub fn publish(&self, mut table: LeaseTable) {
        // One writer (the store): no race between this load and the store.
        table.generation = self.inner.load().generation + 1;
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
    use std::collections::BTreeMap;

    /// `size_of::<Peer>()` before the IPv6 half: it must not grow.
    const PEER_SIZE: usize = 44;

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
    fn public_ips_several_peers_name_are_found_while_building() {
        let t = LeaseTable::from_peers(
            24,
            vec![
                peer("10.1.5.0/24", "192.168.64.9", None),
                peer("10.1.3.0/24", "192.168.64.4", None),
                peer("10.1.2.0/24", "192.168.64.9", None),
                peer("10.1.7.0/24", "192.168.64.9", None),
                peer("10.1.4.0/24", "192.168.64.4", None),
                peer("10.1.6.0/24", "192.168.64.6", None),
            ],
            0,
        );
        let s = |x: &str| x.parse::<Subnet>().unwrap();
        assert_eq!(
            t.shared_public_ips(),
            [
                (
                    Ipv4Addr::new(192, 168, 64, 4),
                    vec![s("10.1.3.0/24"), s("10.1.4.0/24")]
                ),
                (
                    Ipv4Addr::new(192, 168, 64, 9),
                    vec![s("10.1.2.0/24"), s("10.1.5.0/24"), s("10.1.7.0/24")]
                ),
            ]
        );
        assert!(
            LeaseTable::from_peers(24, vec![peer("10.1.5.0/24", "192.168.64.9", None)], 0)
                .shared_public_ips()
                .is_empty()
        );
        assert!(t.shared_public_ips6().is_empty());
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
        let c = s.replace([
            PeerEvent::Upsert(b2),
            PeerEvent::Upsert(peer("10.1.4.0/24", "192.168.64.6", None)),
        ]);
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
    fn peer_keeps_its_size() {
        // The IPv4 entry the send path copies headers from: the IPv6 half lives apart.
        assert_eq!(std::mem::size_of::<Peer>(), PEER_SIZE);
    }

    const LOCAL_MAC6: &str = "0a:00:00:00:00:06";

    /// Our IPv6 VTEP: the network's VNI and port, the MAC of `flannel-v6.1`.
    fn local6() -> LocalVtep {
        LocalVtep {
            mac: LOCAL_MAC6.parse().unwrap(),
            ..local()
        }
    }

    fn peer6(subnet: &str, ip: &str, mac: Option<&str>) -> Peer6 {
        Peer6::new(
            subnet.parse().unwrap(),
            ip.parse().unwrap(),
            mac.map(|m| m.parse().unwrap()),
            &local6(),
        )
    }

    fn v6(a: &str) -> Ipv6Addr {
        a.parse().unwrap()
    }

    #[test]
    fn header6_is_vxlan_then_ethernet_ipv6() {
        let p = peer6("fd10:0:0:2::/64", "fd77::3", Some("c6:d2:32:6f:8f:46"));
        assert_eq!(
            p.vxlan_header,
            [
                0x08, 0, 0, 0, 0, 0, 1, 0, // VXLAN, I flag, VNI 1
                0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x46, // dst: the peer's IPv6 VTEP
                0x0a, 0, 0, 0, 0, 6, // src: our IPv6 VTEP
                0x86, 0xdd, // IPv6
            ]
        );
        assert_eq!(p.underlay.to_string(), "[fd77::3]:8472");
        let none = peer6("fd10:0:0:3::/64", "fd77::4", None);
        assert_eq!(none.vxlan_header, [0; ENCAP_HEADER_LEN]);
    }

    #[test]
    fn lookup6_and_underlay6() {
        let t = LeaseTable::from_peers_dual(
            24,
            vec![peer("10.1.2.0/24", "192.168.64.3", None)],
            64,
            vec![
                peer6("fd10:0:0:3::/64", "fd77::4", None),
                peer6("fd10:0:0:2::/64", "fd77::3", None),
                peer6("fd10:0:0:9::/80", "fd77::9", None), // wrong prefix: skipped
                peer6("fd10:0:0:2::/64", "fd77::99", None), // duplicate: first kept
                peer6("fd10:0:0:7::/64", "fd77::3", None), // same PublicIPv6 as :2::
            ],
            7,
        );
        assert_eq!((t.len(), t.len6()), (1, 3));
        assert_eq!(t.prefix_len6(), Some(64));
        assert_eq!(t.revision(), 7);
        let p = t.lookup6(v6("fd10:0:0:2:abcd::77")).unwrap();
        assert_eq!(p.public_ip, v6("fd77::3"));
        let last = t.lookup6(v6("fd10:0:0:3:ffff:ffff:ffff:ffff")).unwrap();
        assert_eq!(last.public_ip, v6("fd77::4"));
        for miss in [
            "fd10:0:0:4::1",
            "fd10:0:0:9::1",
            "fd11:0:0:2::1",
            "::",
            "::ffff:10.1.2.1",
        ] {
            assert!(t.lookup6(v6(miss)).is_none(), "{miss}");
        }
        // Of two leases with one PublicIPv6, the lowest subnet answers.
        let u = t.lookup_underlay6(v6("fd77::3")).unwrap();
        assert_eq!(u.subnet.to_string(), "fd10:0:0:2::/64");
        assert_eq!(
            t.lookup_underlay6(v6("fd77::4"))
                .unwrap()
                .subnet
                .to_string(),
            "fd10:0:0:3::/64"
        );
        assert!(t.lookup_underlay6(v6("fd77::9")).is_none());
        assert!(t.lookup_underlay6(v6("fd77::99")).is_none());
        let order: Vec<String> = t.iter6().map(|p| p.subnet.to_string()).collect();
        assert_eq!(
            order,
            ["fd10:0:0:2::/64", "fd10:0:0:3::/64", "fd10:0:0:7::/64"]
        );
        // The IPv4 half is what an IPv4-only table of the same leases holds.
        let t4 = LeaseTable::from_peers(24, vec![peer("10.1.2.0/24", "192.168.64.3", None)], 7);
        for d in ["10.1.2.1", "10.1.3.1"] {
            let d: Ipv4Addr = d.parse().unwrap();
            assert_eq!(t.lookup(d), t4.lookup(d));
        }
        assert_eq!(t4.prefix_len6(), None);
        assert_eq!(t4.len6(), 0);
        assert!(t4.lookup6(v6("fd10:0:0:2::1")).is_none());
        assert!(t4.lookup_underlay6(v6("fd77::3")).is_none());
        let e = LeaseTable::empty_dual(24, 64);
        assert_eq!((e.prefix_len(), e.prefix_len6()), (24, Some(64)));
        assert!(e.lookup6(v6("fd10:0:0:2::1")).is_none());
        assert!(LeaseTable::empty(24).lookup6(v6("::")).is_none());
    }

    #[test]
    fn lookup6_at_every_key_width() {
        // Each side of the 64-bit boundary, the extremes, and flannel's longest (/127).
        for (len, subnet, inside, outside) in [
            (0u8, "::", "2001:db8::1", None),
            (1, "8000::", "ffff::1", Some("7fff::1")),
            (48, "fd10:0:1::", "fd10:0:1:ffff::1", Some("fd10:0:2::")),
            (
                63,
                "fd10:0:0:2::",
                "fd10:0:0:3:ffff::",
                Some("fd10:0:0:4::"),
            ),
            (64, "fd10:0:0:2::", "fd10:0:0:2::1", Some("fd10:0:0:3::")),
            (
                65,
                "fd10:0:0:2:8000::",
                "fd10:0:0:2:ffff::",
                Some("fd10:0:0:2:7fff::"),
            ),
            (
                80,
                "fd10:0:0:2:1::",
                "fd10:0:0:2:1:ffff::",
                Some("fd10:0:0:2:2::"),
            ),
            (120, "fd10::100", "fd10::1ff", Some("fd10::200")),
            (127, "fd10::2", "fd10::3", Some("fd10::4")),
            (128, "fd10::1", "fd10::1", Some("fd10::2")),
        ] {
            let p = peer6(&format!("{subnet}/{len}"), "fd77::1", None);
            let t = LeaseTable::from_peers_dual(24, Vec::new(), len, vec![p], 0);
            assert_eq!(t.lookup6(v6(inside)), Some(&p), "/{len} holds {inside}");
            assert_eq!(t.lookup6(v6(subnet)), Some(&p), "/{len} holds {subnet}");
            if let Some(o) = outside {
                assert!(t.lookup6(v6(o)).is_none(), "/{len} does not hold {o}");
            }
            assert_eq!(t.lookup_underlay6(v6("fd77::1")), Some(&p));
        }
    }

    #[test]
    fn peer_set6_events_and_replace() {
        let mut s = PeerSet::new(24).with_ipv6(64);
        assert_eq!(s.prefix_len6(), Some(64));
        let a = peer6("fd10:0:0:2::/64", "fd77::3", None);
        let b = peer6("fd10:0:0:3::/64", "fd77::4", None);
        let b2 = peer6("fd10:0:0:3::/64", "fd77::5", None);
        let v4 = peer("10.1.2.0/24", "192.168.64.3", None);
        let c = s.apply([
            PeerEvent::Upsert6(a),
            PeerEvent::Upsert6(b),
            PeerEvent::Upsert(v4),
            PeerEvent::Upsert6(peer6("fd10:0:0:8::/80", "fd77::8", None)), // wrong prefix
        ]);
        assert_eq!((c.added, c.updated, c.removed), (1, 0, 0));
        assert_eq!((c.added6, c.updated6, c.removed6), (2, 0, 0));
        let c = s.apply([
            PeerEvent::Upsert6(b2),
            PeerEvent::Upsert6(a),
            PeerEvent::Remove6("fd10:0:0:9::/64".parse().unwrap()),
            // An IPv4 removal leaves the IPv6 half alone.
            PeerEvent::Remove("10.1.2.0/24".parse().unwrap()),
        ]);
        assert_eq!((c.added6, c.updated6, c.removed6), (0, 1, 0));
        assert_eq!((c.added, c.updated, c.removed), (0, 0, 1));
        let t = s.snapshot(3);
        assert_eq!((t.len(), t.len6()), (0, 2));
        assert_eq!(
            t.lookup6(v6("fd10:0:0:3::1")).unwrap().public_ip,
            v6("fd77::5")
        );
        assert_eq!(t.lookup_underlay6(v6("fd77::5")), Some(&b2));
        assert!(t.lookup_underlay6(v6("fd77::4")).is_none());
        // A re-list replaces the whole set, counting each family's difference.
        let c4 = peer6("fd10:0:0:4::/64", "fd77::6", None);
        let c = s.replace([PeerEvent::Upsert6(b2), PeerEvent::Upsert6(c4)]);
        assert_eq!((c.added6, c.updated6, c.removed6), (1, 0, 1));
        assert_eq!((c.added, c.updated, c.removed), (0, 0, 0));
        assert!(s.get6(&"fd10:0:0:2::/64".parse().unwrap()).is_none());
        assert_eq!(s.len6(), 2);
        let c = s.replace([
            PeerEvent::Upsert(v4),
            PeerEvent::Upsert6(b2),
            PeerEvent::Upsert6(c4),
        ]);
        assert_eq!((c.added, c.added6, c.removed6), (1, 0, 0));
        assert_eq!((s.len(), s.len6()), (1, 2));
        let c = s.apply([PeerEvent::Remove6(b2.subnet)]);
        assert_eq!(c.removed6, 1);
        assert!(!c.is_empty());
        let mut sum = Changes::default();
        sum += c;
        sum += Changes {
            added: 2,
            ..Changes::default()
        };
        assert_eq!((sum.added, sum.removed6), (2, 1));
        // Without IPv6 the set takes no IPv6 halves.
        let mut s4 = PeerSet::new(24);
        let c = s4.apply([PeerEvent::Upsert6(a)]);
        assert!(c.is_empty());
        assert_eq!(s4.replace([PeerEvent::Upsert6(a)]), Changes::default());
        assert_eq!(s4.len6(), 0);
        assert_eq!(s4.snapshot(1).prefix_len6(), None);
    }

    #[test]
    fn shared_table_readers_see_ipv6_publishes() {
        let shared = SharedTable::new(LeaseTable::empty_dual(24, 64));
        let mut r = shared.reader();
        assert_eq!(r.load().len6(), 0);
        let mut s = PeerSet::new(24).with_ipv6(64);
        s.apply([PeerEvent::Upsert6(peer6(
            "fd10:0:0:2::/64",
            "fd77::3",
            None,
        ))]);
        shared.publish(s.snapshot(1));
        assert!(r.load().lookup6(v6("fd10:0:0:2::1")).is_some());
        assert_eq!(shared.load_full().len6(), 1);
    }

    #[test]
    fn large_table6_all_found() {
        // fd10::/48 split into /64s: 65,536 leases, node i at fd77::<i>.
        let subnet = |i: u32| (0xfd10_0000_0000_0000u128 | u128::from(i)) << 64;
        let ip = |i: u32| Ipv6Addr::from(0xfd77u128 << 112 | u128::from(i));
        let peers: Vec<Peer6> = (0..65_536u32)
            .map(|i| {
                Peer6::new(
                    Subnet6::new(Ipv6Addr::from(subnet(i)), 64).unwrap(),
                    ip(i),
                    None,
                    &local6(),
                )
            })
            .collect();
        let t = LeaseTable::from_peers_dual(24, Vec::new(), 64, peers, 0);
        assert_eq!(t.len6(), 65_536);
        for i in (0..65_536u32).step_by(97) {
            let dst = Ipv6Addr::from(subnet(i) | 0x42);
            assert_eq!(t.lookup6(dst).unwrap().public_ip, ip(i));
            assert_eq!(
                t.lookup_underlay6(ip(i)).unwrap().subnet.addr(),
                Ipv6Addr::from(subnet(i))
            );
        }
        assert!(t.lookup6(v6("fd11::1")).is_none());
        assert!(t.lookup_underlay6(v6("fd77::1:0:0")).is_none());
    }

    /// One IPv6 table against a linear scan of its leases: lease `(n, host, skew)` has
    /// subnet number `n` just above the host bits of `prefix_len` inside `base` (so several
    /// leases may claim one subnet), PublicIPv6 fd77::`host`, and a prefix length off by
    /// `skew` when that is not 0 (skipped by the table).
    fn check_lookup6(
        prefix_len: u8,
        base: u128,
        leases: &[(u32, u8, i8)],
        probes: &[(u128, u32)],
    ) -> Result<(), TestCaseError> {
        let host_bits = 128 - u32::from(prefix_len);
        let net = |n: u32| (base | (u128::from(n) << host_bits)) & Subnet6::mask_bits(prefix_len);
        let public = |host: u8| Ipv6Addr::from(0xfd77u128 << 112 | u128::from(host));
        let peers: Vec<Peer6> = leases
            .iter()
            .map(|&(n, host, skew)| {
                let len = prefix_len.saturating_add_signed(skew);
                let subnet = Subnet6::containing(Ipv6Addr::from(net(n)), len).unwrap();
                Peer6::new(subnet, public(host), None, &local6())
            })
            .collect();
        let table = LeaseTable::from_peers_dual(24, Vec::new(), prefix_len, peers.clone(), 0);
        let mut naive: Vec<Peer6> = Vec::new();
        for p in &peers {
            if p.subnet.prefix_len() == prefix_len && !naive.iter().any(|q| q.subnet == p.subnet) {
                naive.push(*p);
            }
        }
        prop_assert_eq!(table.len6(), naive.len());
        let candidates = probes
            .iter()
            .map(|&(bits, n)| {
                // Inside subnet n, with random host bits.
                Ipv6Addr::from(net(n) | (bits & !Subnet6::mask_bits(prefix_len)))
            })
            .chain(probes.iter().map(|&(bits, _)| Ipv6Addr::from(bits)))
            .chain(
                peers
                    .iter()
                    .flat_map(|p| [p.subnet.addr(), p.subnet.last_addr()]),
            );
        for dst in candidates {
            let want = naive.iter().find(|p| p.subnet.contains(dst));
            prop_assert_eq!(table.lookup6(dst), want, "dst {}", dst);
        }
        for host in 0..=255u8 {
            let src = public(host);
            let want = naive
                .iter()
                .filter(|p| p.public_ip == src)
                .min_by_key(|p| p.subnet);
            prop_assert_eq!(table.lookup_underlay6(src), want, "src {}", src);
        }
        Ok(())
    }

    /// Leases for [`check_lookup6`]: few subnet numbers and hosts, so duplicates are common.
    fn leases6() -> impl Strategy<Value = Vec<(u32, u8, i8)>> {
        proptest::collection::vec(
            (
                0u32..256,
                any::<u8>(),
                prop_oneof![8 => Just(0i8), 1 => Just(-1i8), 1 => Just(1i8)],
            ),
            0..300,
        )
    }

    fn probes6() -> impl Strategy<Value = Vec<(u128, u32)>> {
        proptest::collection::vec((any::<u128>(), 0u32..256), 1..100)
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
        #[test]
        fn lookup6_short_prefixes_agree_with_linear_scan(
            prefix_len in 48u8..=64,
            base in any::<u128>(),
            leases in leases6(),
            probes in probes6(),
        ) {
            check_lookup6(prefix_len, base, &leases, &probes)?;
        }

        #[test]
        fn lookup6_long_prefixes_agree_with_linear_scan(
            prefix_len in 65u8..=120,
            base in any::<u128>(),
            leases in leases6(),
            probes in probes6(),
        ) {
            check_lookup6(prefix_len, base, &leases, &probes)?;
        }

        #[test]
        fn peer_set6_snapshot_agrees_with_events(
            ops in proptest::collection::vec((any::<bool>(), 0u32..64, any::<u8>()), 0..200),
        ) {
            let mut set = PeerSet::new(24).with_ipv6(64);
            let mut naive: BTreeMap<Subnet6, Peer6> = BTreeMap::new();
            let subnet = |n: u32| (0xfd10_0000_0000_0000u128 | u128::from(n)) << 64;
            for (add, n, ip) in ops {
                let subnet = Subnet6::new(Ipv6Addr::from(subnet(n)), 64).unwrap();
                if add {
                    let ip = Ipv6Addr::from(0xfd77u128 << 112 | u128::from(ip));
                    let p = Peer6::new(subnet, ip, None, &local6());
                    set.apply([PeerEvent::Upsert6(p)]);
                    naive.insert(subnet, p);
                } else {
                    set.apply([PeerEvent::Remove6(subnet)]);
                    naive.remove(&subnet);
                }
            }
            let t = set.snapshot(0);
            prop_assert_eq!(t.len6(), naive.len());
            prop_assert_eq!(t.len(), 0);
            for n in 0..64u32 {
                let dst = Ipv6Addr::from(subnet(n) | 9);
                let want = naive.values().find(|p| p.subnet.contains(dst));
                prop_assert_eq!(t.lookup6(dst), want);
            }
        }
    }
}
