//! The control plane's working copy of the remote leases ([`PeerSet`]), the events that
//! change it, and what each batch changed.
//!
//! A lease is an etcd key naming one subnet, or two (dual stack: `10.1.2.0-24&fd10:0:0:2::-64`),
//! and each subnet it names is one half of the set. Two keys can name the same subnet (an
//! IPv6 subnet may sit under any IPv4 part, and `10.1.2.0-24` and `10.1.2.0-24&...` are two
//! keys), whether by mistake or by malice: a subnet is then held by the key created first
//! (lowest etcd create revision, then key order), whichever order events or a listing bring
//! them in, and the other key gives nothing until the holder goes. The node's own key holds
//! its own subnets against every other key. Deleting a key removes only what it holds.

use std::collections::btree_map::{BTreeMap, Entry};
use std::ops::AddAssign;

use super::{LeaseTable, Peer, Peer6};
use crate::wire::{Subnet, Subnet6};

/// A lease's etcd key, as the subnets it names: the IPv4 subnet (flannel's empty `0.0.0.0/0`
/// in an IPv6-only key) and, in a dual-stack or IPv6-only key, the IPv6 subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseKey {
    /// The key's IPv4 part.
    pub subnet: Subnet,
    /// The key's IPv6 part, if it has one.
    pub subnet6: Option<Subnet6>,
}

impl LeaseKey {
    /// flannel's empty IPv4 net, the IPv4 part of an IPv6-only key (`0.0.0.0-0&...`).
    pub const EMPTY_IPV4: Subnet = Subnet::EMPTY;

    /// The key of a plain IPv4 lease (`10.1.2.0-24`).
    pub fn v4(subnet: Subnet) -> LeaseKey {
        LeaseKey {
            subnet,
            subnet6: None,
        }
    }

    /// The key of an IPv6-only lease (`0.0.0.0-0&fd10:0:0:2::-64`).
    pub fn v6_only(subnet6: Subnet6) -> LeaseKey {
        LeaseKey {
            subnet: Self::EMPTY_IPV4,
            subnet6: Some(subnet6),
        }
    }
}

/// One lease as the store judged it: its key, when etcd created it, and the halves it gives
/// (either may be absent: an IPv6-only network has no IPv4 half, an IPv4 key no IPv6 one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The etcd key.
    pub key: LeaseKey,
    /// The key's etcd create revision: of two keys naming one subnet the older holds it.
    pub created: i64,
    /// The IPv4 half.
    pub peer: Option<Peer>,
    /// The IPv6 half.
    pub peer6: Option<Peer6>,
}

/// A change to the set of remote leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerEvent {
    /// A lease key was created or changed.
    Put(Lease),
    /// A lease key was deleted or expired: what it held goes.
    Delete(LeaseKey),
    /// Shorthand: the plain IPv4 key of this peer's subnet was put (created at revision 0).
    Upsert(Peer),
    /// Shorthand: the plain IPv4 key of this subnet was deleted.
    Remove(Subnet),
    /// Shorthand: the IPv6-only key of this peer's subnet was put (created at revision 0).
    Upsert6(Peer6),
    /// Shorthand: the IPv6-only key of this subnet was deleted.
    Remove6(Subnet6),
}

impl PeerEvent {
    /// The event in its long form: a put lease or a deleted key.
    fn into_long(self) -> Result<Lease, LeaseKey> {
        let lease = |key, peer, peer6| Lease {
            key,
            created: 0,
            peer,
            peer6,
        };
        match self {
            PeerEvent::Put(l) => Ok(l),
            PeerEvent::Delete(k) => Err(k),
            PeerEvent::Upsert(p) => Ok(lease(LeaseKey::v4(p.subnet), Some(p), None)),
            PeerEvent::Remove(s) => Err(LeaseKey::v4(s)),
            PeerEvent::Upsert6(p) => Ok(lease(LeaseKey::v6_only(p.subnet), None, Some(p))),
            PeerEvent::Remove6(s) => Err(LeaseKey::v6_only(s)),
        }
    }
}

/// A lease that names a subnet another key holds: it gives nothing while the holder is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clash {
    /// The key that gives nothing.
    pub loser: LeaseKey,
    /// The key holding the subnet (`None`: this node's own lease).
    pub holder: Option<LeaseKey>,
}

/// What applying events changed, for one log line per batch; each family counts apart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Leases that were not there before.
    pub added: usize,
    /// Leases whose contents changed.
    pub updated: usize,
    /// Leases that went away.
    pub removed: usize,
    /// IPv6 halves that were not there before.
    pub added6: usize,
    /// IPv6 halves whose contents changed.
    pub updated6: usize,
    /// IPv6 halves that went away.
    pub removed6: usize,
    /// Keys that name a subnet another key holds, found by this batch (a key that loses a
    /// subnet it held to an older key is among them).
    pub clashes: Vec<Clash>,
}

impl Changes {
    /// Whether nothing changed in either family.
    pub fn is_empty(&self) -> bool {
        self.counts() == Changes::default().counts() && self.clashes.is_empty()
    }

    fn counts(&self) -> [usize; 6] {
        [
            self.added,
            self.updated,
            self.removed,
            self.added6,
            self.updated6,
            self.removed6,
        ]
    }
}

impl AddAssign for Changes {
    fn add_assign(&mut self, o: Changes) {
        self.added += o.added;
        self.updated += o.updated;
        self.removed += o.removed;
        self.added6 += o.added6;
        self.updated6 += o.updated6;
        self.removed6 += o.removed6;
        self.clashes.extend(o.clashes);
    }
}

/// One family's share of [`Changes`].
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    added: usize,
    updated: usize,
    removed: usize,
}

/// A half in the set: the peer, the key holding it and that key's create revision, and when
/// this holder was first seen (seconds on [`now_secs`]'s clock, for the views' AGE).
#[derive(Debug, Clone, Copy)]
struct Held<P> {
    peer: P,
    key: LeaseKey,
    created: i64,
    since: u32,
}

impl<P: PartialEq> PartialEq for Held<P> {
    /// The same holder with the same contents; when it was first seen does not count.
    fn eq(&self, o: &Self) -> bool {
        (self.peer == o.peer) & (self.key == o.key) & (self.created == o.created)
    }
}

/// Seconds since the Unix epoch (saturating in 2106): the clock of first-seen times.
pub(crate) fn now_secs() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
}

impl<P> Held<P> {
    /// Whether this holder came first: created earlier, or at once and earlier in key order.
    fn precedes(&self, created: i64, key: &LeaseKey) -> bool {
        (self.created, &self.key) < (created, key)
    }
}

/// Inserts `v` at `k` and counts it as added or updated (or not at all when unchanged); the
/// same holder keeps when it was first seen.
fn upsert<K: Ord, P: PartialEq>(map: &mut BTreeMap<K, Held<P>>, k: K, v: Held<P>, t: &mut Tally) {
    match map.entry(k) {
        Entry::Vacant(e) => {
            e.insert(v);
            t.added += 1;
        }
        Entry::Occupied(mut e) if *e.get() != v => {
            let since = match e.get().key == v.key {
                true => e.get().since,
                false => v.since,
            };
            e.insert(Held { since, ..v });
            t.updated += 1;
        }
        Entry::Occupied(_) => {}
    }
}

/// Removes the half at `k` if `key` holds it, counting it.
fn release<K: Ord, P>(map: &mut BTreeMap<K, Held<P>>, k: &K, key: &LeaseKey, t: &mut Tally) {
    if map.get(k).is_some_and(|h| h.key == *key) {
        map.remove(k);
        t.removed += 1;
    }
}

/// What turning `old` into `new` adds, updates and removes; a half `new` has from the same
/// holder as `old` keeps `old`'s first-seen time.
fn diff<K: Ord, P: PartialEq>(old: &BTreeMap<K, Held<P>>, new: &mut BTreeMap<K, Held<P>>) -> Tally {
    let mut t = Tally::default();
    for (k, v) in new.iter_mut() {
        match old.get(k) {
            None => t.added += 1,
            Some(o) => {
                if o.key == v.key {
                    v.since = o.since;
                }
                if o != v {
                    t.updated += 1;
                }
            }
        }
    }
    t.removed = old.keys().filter(|k| !new.contains_key(k)).count();
    t
}

/// Both families' tallies and the clashes as one [`Changes`].
fn changes(four: Tally, six: Tally, clashes: Vec<Clash>) -> Changes {
    Changes {
        added: four.added,
        updated: four.updated,
        removed: four.removed,
        added6: six.added,
        updated6: six.updated,
        removed6: six.removed,
        clashes,
    }
}

/// The control plane's mutable view of the remote leases, from which snapshots are built.
/// The IPv6 halves live in their own map, indexed only when the network has IPv6.
#[derive(Debug, Clone)]
pub struct PeerSet {
    prefix_len: u8,
    peers: BTreeMap<Subnet, Held<Peer>>,
    /// The network's IPv6SubnetLen; `None` without IPv6, and IPv6 halves are then ignored.
    prefix_len6: Option<u8>,
    peers6: BTreeMap<Subnet6, Held<Peer6>>,
    /// This node's own key: the subnets it names are held against every other key.
    own: Option<LeaseKey>,
}

/// A batch's counts and clashes while it is applied.
#[derive(Debug, Default)]
struct Batch {
    four: Tally,
    six: Tally,
    clashes: Vec<Clash>,
}

impl PeerSet {
    /// An empty set for leases of `prefix_len` (IPv4 only).
    pub fn new(prefix_len: u8) -> PeerSet {
        PeerSet {
            prefix_len,
            peers: BTreeMap::new(),
            prefix_len6: None,
            peers6: BTreeMap::new(),
            own: None,
        }
    }

    /// This set, also taking IPv6 halves of `prefix_len6` (the network's IPv6SubnetLen).
    pub fn with_ipv6(self, prefix_len6: u8) -> PeerSet {
        PeerSet {
            prefix_len6: Some(prefix_len6),
            ..self
        }
    }

    /// This set, holding the subnets `own` (this node's lease key) names for this node: a
    /// lease of another key naming one of them gives nothing.
    pub fn with_own(self, own: LeaseKey) -> PeerSet {
        PeerSet {
            own: Some(own),
            ..self
        }
    }

    /// Makes `own` this node's key (the node moved to new subnets): whatever another key
    /// held of its subnets goes, reported as clashes with this node.
    pub fn set_own(&mut self, own: LeaseKey) -> Changes {
        self.own = Some(own);
        let mut b = Batch::default();
        let four = self.peers.get(&own.subnet).map(|h| h.key);
        let six = own
            .subnet6
            .and_then(|s6| self.peers6.get(&s6))
            .map(|h| h.key);
        for key in four.into_iter().chain(six).filter(|k| *k != own) {
            b.clashes.push(Clash {
                loser: key,
                holder: None,
            });
            self.release(&key, &mut b);
        }
        changes(b.four, b.six, b.clashes)
    }

    /// An empty set that takes what this one takes (prefix lengths, this node's key).
    pub fn emptied(&self) -> PeerSet {
        PeerSet {
            peers: BTreeMap::new(),
            peers6: BTreeMap::new(),
            ..*self
        }
    }

    /// Applies events in order. Halves whose prefix length differs from the set's (in their
    /// family) are ignored, as are IPv6 halves when the set has no IPv6.
    pub fn apply(&mut self, events: impl IntoIterator<Item = PeerEvent>) -> Changes {
        let mut b = Batch::default();
        for e in events {
            match e.into_long() {
                Ok(lease) => self.put(lease, &mut b),
                Err(key) => self.release(&key, &mut b),
            }
        }
        changes(b.four, b.six, b.clashes)
    }

    /// Replaces the whole set (after a re-list) with what `events` give applied to an empty
    /// set, and reports the difference and the clashes among them.
    pub fn replace(&mut self, events: impl IntoIterator<Item = PeerEvent>) -> Changes {
        let mut next = self.emptied();
        let built = next.apply(events);
        let mut c = self.replace_with(next);
        c.clashes = built.clashes;
        c
    }

    /// Replaces the whole set with `next` (built from [`PeerSet::emptied`]) and reports the
    /// difference (no clashes: `next`'s own applies reported those).
    pub fn replace_with(&mut self, mut next: PeerSet) -> Changes {
        let four = diff(&self.peers, &mut next.peers);
        let six = diff(&self.peers6, &mut next.peers6);
        // Rebuilt from sorted entries, a B-tree's nodes are full; built by inserts in (about)
        // key order, as a listing arrives, they are half empty: 161 bytes a lease instead of
        // about 90 at 65,000 leases (tests/table_memory.rs).
        next.peers = std::mem::take(&mut next.peers).into_iter().collect();
        next.peers6 = std::mem::take(&mut next.peers6).into_iter().collect();
        *self = next;
        changes(four, six, Vec::new())
    }

    /// Puts `l`: its halves, unless a key that came first holds one of their subnets (then
    /// it gives nothing, and loses what it held); keys that came later lose what they held.
    fn put(&mut self, l: Lease, b: &mut Batch) {
        let peer = l.peer.filter(|p| p.subnet.prefix_len() == self.prefix_len);
        let peer6 = l
            .peer6
            .filter(|p| Some(p.subnet.prefix_len()) == self.prefix_len6);
        if let Some(own) = self.own.filter(|own| *own != l.key) {
            let ours4 = peer.is_some_and(|p| p.subnet == own.subnet);
            let ours6 = peer6.is_some_and(|p| Some(p.subnet) == own.subnet6);
            if ours4 || ours6 {
                b.clashes.push(Clash {
                    loser: l.key,
                    holder: None,
                });
                return self.release(&l.key, b);
            }
        }
        let holders = [
            peer.and_then(|p| self.peers.get(&p.subnet))
                .map(|h| (h.key, h.precedes(l.created, &l.key))),
            peer6
                .and_then(|p| self.peers6.get(&p.subnet))
                .map(|h| (h.key, h.precedes(l.created, &l.key))),
        ];
        let others = holders.into_iter().flatten().filter(|(k, _)| *k != l.key);
        let mut displaced = Vec::new();
        for (holder, first) in others {
            if first {
                b.clashes.push(Clash {
                    loser: l.key,
                    holder: Some(holder),
                });
                return self.release(&l.key, b);
            }
            displaced.push(holder);
        }
        for holder in displaced {
            b.clashes.push(Clash {
                loser: holder,
                holder: Some(l.key),
            });
            self.release(&holder, b);
        }
        let (key, created, since) = (l.key, l.created, now_secs());
        match peer {
            Some(peer) => upsert(
                &mut self.peers,
                peer.subnet,
                Held {
                    peer,
                    key,
                    created,
                    since,
                },
                &mut b.four,
            ),
            None => release(&mut self.peers, &key.subnet, &key, &mut b.four),
        }
        match (peer6, key.subnet6) {
            (Some(peer), _) => upsert(
                &mut self.peers6,
                peer.subnet,
                Held {
                    peer,
                    key,
                    created,
                    since,
                },
                &mut b.six,
            ),
            (None, Some(s6)) => release(&mut self.peers6, &s6, &key, &mut b.six),
            (None, None) => {}
        }
    }

    /// Removes what `key` holds.
    fn release(&mut self, key: &LeaseKey, b: &mut Batch) {
        release(&mut self.peers, &key.subnet, key, &mut b.four);
        if let Some(s6) = &key.subnet6 {
            release(&mut self.peers6, s6, key, &mut b.six);
        }
    }

    /// What `key` holds, as the lease that put it (`None` when it holds nothing).
    pub fn lease_of(&self, key: &LeaseKey) -> Option<Lease> {
        let four = self.peers.get(&key.subnet).filter(|h| h.key == *key);
        let six = key
            .subnet6
            .and_then(|s6| self.peers6.get(&s6))
            .filter(|h| h.key == *key);
        let created = four.map(|h| h.created).or(six.map(|h| h.created))?;
        Some(Lease {
            key: *key,
            created,
            peer: four.map(|h| h.peer),
            peer6: six.map(|h| h.peer),
        })
    }

    /// Every lease in the set, each key once with the halves it holds, in key order.
    pub fn leases(&self) -> Vec<Lease> {
        fn of(out: &mut BTreeMap<LeaseKey, Lease>, key: LeaseKey, created: i64) -> &mut Lease {
            out.entry(key).or_insert(Lease {
                key,
                created,
                peer: None,
                peer6: None,
            })
        }
        let mut out = BTreeMap::new();
        for h in self.peers.values() {
            of(&mut out, h.key, h.created).peer = Some(h.peer);
        }
        for h in self.peers6.values() {
            of(&mut out, h.key, h.created).peer6 = Some(h.peer);
        }
        out.into_values().collect()
    }

    /// The peer for `subnet`, if any.
    pub fn get(&self, subnet: &Subnet) -> Option<&Peer> {
        self.peers.get(subnet).map(|h| &h.peer)
    }

    /// The IPv6 peer for `subnet`, if any.
    pub fn get6(&self, subnet: &Subnet6) -> Option<&Peer6> {
        self.peers6.get(subnet).map(|h| &h.peer)
    }

    /// The number of peers.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// The number of IPv6 peers.
    pub fn len6(&self) -> usize {
        self.peers6.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The peers, ordered by subnet.
    pub fn iter(&self) -> impl Iterator<Item = &Peer> + '_ {
        self.peers.values().map(|h| &h.peer)
    }

    /// The IPv6 peers, ordered by subnet.
    pub fn iter6(&self) -> impl Iterator<Item = &Peer6> + '_ {
        self.peers6.values().map(|h| &h.peer)
    }

    /// The IPv6 prefix length this set takes; `None` without IPv6.
    pub fn prefix_len6(&self) -> Option<u8> {
        self.prefix_len6
    }

    /// Builds an immutable snapshot of the current set.
    pub fn snapshot(&self, revision: i64) -> LeaseTable {
        // BTreeMap order is subnet order and keys are unique: no sort needed.
        LeaseTable::build(
            self.prefix_len,
            self.iter().copied().collect(),
            self.prefix_len6,
            self.iter6().copied().collect(),
            revision,
        )
        .with_first_seen(self.peers.values().map(|h| h.since).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::LocalVtep;
    use crate::wire::vxlan::Vni;
    use crate::wire::EthernetAddress;

    fn local() -> LocalVtep {
        LocalVtep {
            vni: Vni::new(1).unwrap(),
            mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
            port: 8472,
        }
    }

    fn s4(s: &str) -> Subnet {
        s.parse().unwrap()
    }

    fn s6(s: &str) -> Subnet6 {
        s.parse().unwrap()
    }

    /// The dual-stack lease `v4&v6` created at `created`, its node at 192.168.64.`n` and
    /// fd77::`n`.
    fn dual(v4: &str, v6: &str, created: i64, n: u8) -> Lease {
        let key = LeaseKey {
            subnet: s4(v4),
            subnet6: Some(s6(v6)),
        };
        Lease {
            key,
            created,
            peer: Some(Peer::new(
                key.subnet,
                std::net::Ipv4Addr::new(192, 168, 64, n),
                None,
                &local(),
            )),
            peer6: Some(Peer6::new(
                s6(v6),
                format!("fd77::{n}").parse().unwrap(),
                None,
                &local(),
            )),
        }
    }

    fn set() -> PeerSet {
        PeerSet::new(24).with_ipv6(64)
    }

    fn holder6(s: &PeerSet, v6: &str) -> Option<LeaseKey> {
        s.peers6.get(&s6(v6)).map(|h| h.key)
    }

    #[test]
    fn the_key_created_first_holds_a_shared_ipv6_subnet_in_any_order() {
        let genuine = dual("10.1.2.0/24", "fd10:0:0:2::/64", 5, 2);
        let claim = dual("10.1.9.0/24", "fd10:0:0:2::/64", 9, 9);
        for order in [[genuine, claim], [claim, genuine]] {
            let mut s = set();
            let c = s.apply(order.map(PeerEvent::Put));
            assert_eq!(holder6(&s, "fd10:0:0:2::/64"), Some(genuine.key));
            assert_eq!(s.get6(&s6("fd10:0:0:2::/64")), genuine.peer6.as_ref());
            // The claim gives nothing at all, not even its own IPv4 subnet.
            assert!(s.get(&s4("10.1.9.0/24")).is_none(), "{order:?}");
            assert_eq!((s.len(), s.len6()), (1, 1));
            assert_eq!(
                c.clashes,
                [Clash {
                    loser: claim.key,
                    holder: Some(genuine.key)
                }]
            );
            // Deleting the claim removes nothing of the holder's.
            let c = s.apply([PeerEvent::Delete(claim.key)]);
            assert_eq!((c.removed, c.removed6), (0, 0));
            assert_eq!(s.lease_of(&genuine.key), Some(genuine));
            // Deleting the holder removes what it held.
            let c = s.apply([PeerEvent::Delete(genuine.key)]);
            assert_eq!((c.removed, c.removed6), (1, 1));
            assert!(s.lease_of(&genuine.key).is_none());
        }
    }

    #[test]
    fn an_older_key_takes_a_subnet_from_a_newer_one_whole() {
        let newer = dual("10.1.3.0/24", "fd10:0:0:3::/64", 10, 3);
        let older = dual("10.1.8.0/24", "fd10:0:0:3::/64", 4, 8);
        let mut s = set();
        s.apply([PeerEvent::Put(newer)]);
        let c = s.apply([PeerEvent::Put(older)]);
        assert_eq!(
            c.clashes,
            [Clash {
                loser: newer.key,
                holder: Some(older.key)
            }]
        );
        // The newer key loses both halves; the older holds both of its own.
        assert!(s.get(&s4("10.1.3.0/24")).is_none());
        assert_eq!(s.lease_of(&older.key), Some(older));
        assert_eq!((c.added, c.removed, c.added6, c.removed6), (1, 1, 1, 1));
        // A re-list in key order (newer first) agrees.
        let c = s.replace([PeerEvent::Put(newer), PeerEvent::Put(older)]);
        assert_eq!(s.lease_of(&older.key), Some(older));
        assert_eq!(c.clashes.len(), 1);
        assert_eq!((c.added, c.removed, c.added6, c.removed6), (0, 0, 0, 0));
    }

    #[test]
    fn a_plain_and_a_dual_key_naming_one_ipv4_subnet_clash_too() {
        let plain = Lease {
            key: LeaseKey::v4(s4("10.1.4.0/24")),
            created: 3,
            peer: dual("10.1.4.0/24", "fd10:0:0:4::/64", 3, 4).peer,
            peer6: None,
        };
        let twin = dual("10.1.4.0/24", "fd10:0:0:7::/64", 7, 7);
        let mut s = set();
        let c = s.apply([PeerEvent::Put(twin), PeerEvent::Put(plain)]);
        assert_eq!(s.get(&s4("10.1.4.0/24")), plain.peer.as_ref());
        assert!(s.get6(&s6("fd10:0:0:7::/64")).is_none());
        assert_eq!(c.clashes.len(), 1);
        // Equal create revisions: key order decides.
        let mut t = set();
        let early = Lease {
            created: 7,
            ..plain
        };
        t.apply([PeerEvent::Put(twin), PeerEvent::Put(early)]);
        assert_eq!(t.get(&s4("10.1.4.0/24")), early.peer.as_ref());
    }

    #[test]
    fn this_nodes_subnets_are_held_against_every_other_key() {
        let own = LeaseKey {
            subnet: s4("10.1.5.0/24"),
            subnet6: Some(s6("fd10:0:0:5::/64")),
        };
        let mut s = set().with_own(own);
        let six = dual("10.1.6.0/24", "fd10:0:0:5::/64", 1, 6);
        let four = dual("10.1.5.0/24", "fd10:0:0:6::/64", 1, 5);
        let c = s.apply([PeerEvent::Put(six), PeerEvent::Put(four)]);
        assert_eq!((s.len(), s.len6()), (0, 0));
        assert!(c.clashes.iter().all(|c| c.holder.is_none()));
        assert_eq!(c.clashes.len(), 2);
        // Moving to new subnets evicts whoever held them.
        let fine = dual("10.1.7.0/24", "fd10:0:0:9::/64", 1, 7);
        s.apply([PeerEvent::Put(fine)]);
        let moved = LeaseKey {
            subnet: s4("10.1.7.0/24"),
            subnet6: Some(s6("fd10:0:0:a::/64")),
        };
        let c = s.set_own(moved);
        assert_eq!((c.removed, c.removed6), (1, 1));
        assert_eq!(
            c.clashes,
            [Clash {
                loser: fine.key,
                holder: None
            }]
        );
        assert!(s.emptied().own == Some(moved));
    }

    #[test]
    fn a_holder_keeps_its_first_seen_time_across_updates_and_relists() {
        let a = dual("10.1.2.0/24", "fd10:0:0:2::/64", 5, 2);
        let mut s = set();
        s.apply([PeerEvent::Put(a)]);
        let subnet = s4("10.1.2.0/24");
        s.peers.get_mut(&subnet).unwrap().since = 100;
        let moved = Lease {
            peer: dual("10.1.2.0/24", "fd10:0:0:2::/64", 5, 7).peer,
            ..a
        };
        let c = s.apply([PeerEvent::Put(moved)]);
        assert_eq!(c.updated, 1);
        assert_eq!(s.peers[&subnet].since, 100, "an update keeps the time");
        s.replace([PeerEvent::Put(moved)]);
        assert_eq!(s.peers[&subnet].since, 100, "a re-list keeps the time");
        let (_, age) = s.snapshot(1).iter_with_age().next().unwrap();
        assert!(age >= u64::from(now_secs() - 100) - 1, "age {age}");
        // Another key holding the subnet is seen anew.
        let other = Lease {
            key: LeaseKey::v4(subnet),
            created: 1,
            ..moved
        };
        s.apply([PeerEvent::Put(other)]);
        assert!(s.peers[&subnet].since >= now_secs() - 1);
        // A table not built from a set knows no ages: 0.
        let t = LeaseTable::from_peers(24, vec![a.peer.unwrap()], 0);
        assert_eq!(t.iter_with_age().next().map(|(_, age)| age), Some(0));
    }

    #[test]
    fn leases_give_each_key_once_with_its_halves() {
        let both = dual("10.1.2.0/24", "fd10:0:0:2::/64", 5, 2);
        let v4 = Lease {
            key: LeaseKey::v4(s4("10.1.3.0/24")),
            created: 6,
            peer: dual("10.1.3.0/24", "fd10:0:0:3::/64", 6, 3).peer,
            peer6: None,
        };
        let v6 = Lease {
            key: LeaseKey::v6_only(s6("fd10:0:0:4::/64")),
            created: 7,
            peer: None,
            peer6: dual("10.1.4.0/24", "fd10:0:0:4::/64", 7, 4).peer6,
        };
        let mut s = set();
        s.apply([v6, both, v4].map(PeerEvent::Put));
        let mut want = vec![both, v4, v6];
        want.sort_by_key(|l| l.key);
        assert_eq!(s.leases(), want);
    }
}
