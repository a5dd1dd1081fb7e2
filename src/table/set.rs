//! The control plane's working copy of the remote leases ([`PeerSet`]), the events that
//! change it, and what each batch changed.

use std::collections::btree_map::{BTreeMap, Entry};
use std::ops::AddAssign;

use super::{LeaseTable, Peer, Peer6};
use crate::wire::{Subnet, Subnet6};

/// A change to the set of remote leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerEvent {
    /// A lease was created or changed.
    Upsert(Peer),
    /// A lease was deleted or expired.
    Remove(Subnet),
    /// A lease's IPv6 half was created or changed.
    Upsert6(Peer6),
    /// A lease's IPv6 half was deleted or expired.
    Remove6(Subnet6),
}

/// What applying events changed, for one log line per batch; each family counts apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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
}

impl Changes {
    /// Whether nothing changed in either family.
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
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
    }
}

/// One family's share of [`Changes`].
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    added: usize,
    updated: usize,
    removed: usize,
}

/// Inserts `v` at `k` and counts it as added or updated (or not at all when unchanged).
fn upsert<K: Ord, V: PartialEq>(map: &mut BTreeMap<K, V>, k: K, v: V, t: &mut Tally) {
    match map.entry(k) {
        Entry::Vacant(e) => {
            e.insert(v);
            t.added += 1;
        }
        Entry::Occupied(mut e) if *e.get() != v => {
            e.insert(v);
            t.updated += 1;
        }
        Entry::Occupied(_) => {}
    }
}

/// What turning `old` into `new` adds, updates and removes.
fn diff<K: Ord, V: PartialEq>(old: &BTreeMap<K, V>, new: &BTreeMap<K, V>) -> Tally {
    let mut t = Tally::default();
    for (k, v) in new {
        match old.get(k) {
            None => t.added += 1,
            Some(o) if o != v => t.updated += 1,
            Some(_) => {}
        }
    }
    t.removed = old.keys().filter(|k| !new.contains_key(k)).count();
    t
}

/// Both families' tallies as one [`Changes`].
fn changes(four: Tally, six: Tally) -> Changes {
    Changes {
        added: four.added,
        updated: four.updated,
        removed: four.removed,
        added6: six.added,
        updated6: six.updated,
        removed6: six.removed,
    }
}

/// The control plane's mutable view of the remote leases, from which snapshots are built.
/// The IPv6 halves live in their own map, indexed only when the network has IPv6.
#[derive(Debug, Clone)]
pub struct PeerSet {
    prefix_len: u8,
    peers: BTreeMap<Subnet, Peer>,
    /// The network's IPv6SubnetLen; `None` without IPv6, and IPv6 events are then ignored.
    prefix_len6: Option<u8>,
    peers6: BTreeMap<Subnet6, Peer6>,
}

impl PeerSet {
    /// An empty set for leases of `prefix_len` (IPv4 only).
    pub fn new(prefix_len: u8) -> PeerSet {
        PeerSet {
            prefix_len,
            peers: BTreeMap::new(),
            prefix_len6: None,
            peers6: BTreeMap::new(),
        }
    }

    /// This set, also taking IPv6 halves of `prefix_len6` (the network's IPv6SubnetLen).
    pub fn with_ipv6(self, prefix_len6: u8) -> PeerSet {
        PeerSet {
            prefix_len6: Some(prefix_len6),
            ..self
        }
    }

    /// Applies events in order. Peers whose prefix length differs from the set's (in their
    /// family) are ignored, as are IPv6 halves when the set has no IPv6.
    pub fn apply(&mut self, events: impl IntoIterator<Item = PeerEvent>) -> Changes {
        let (mut four, mut six) = (Tally::default(), Tally::default());
        for e in events {
            match e {
                PeerEvent::Upsert(p) if p.subnet.prefix_len() == self.prefix_len => {
                    upsert(&mut self.peers, p.subnet, p, &mut four);
                }
                PeerEvent::Upsert6(p) if Some(p.subnet.prefix_len()) == self.prefix_len6 => {
                    upsert(&mut self.peers6, p.subnet, p, &mut six);
                }
                PeerEvent::Upsert(_) | PeerEvent::Upsert6(_) => {}
                PeerEvent::Remove(s) => {
                    four.removed += usize::from(self.peers.remove(&s).is_some());
                }
                PeerEvent::Remove6(s) => {
                    six.removed += usize::from(self.peers6.remove(&s).is_some());
                }
            }
        }
        changes(four, six)
    }

    /// Replaces the IPv4 half (after a re-list) and reports the difference; the IPv6 half is
    /// [`PeerSet::replace6`]'s.
    pub fn replace(&mut self, peers: impl IntoIterator<Item = Peer>) -> Changes {
        let mut next = PeerSet::new(self.prefix_len);
        next.apply(peers.into_iter().map(PeerEvent::Upsert));
        let four = diff(&self.peers, &next.peers);
        self.peers = next.peers;
        changes(four, Tally::default())
    }

    /// Replaces the IPv6 half (after a re-list) and reports the difference.
    pub fn replace6(&mut self, peers: impl IntoIterator<Item = Peer6>) -> Changes {
        let mut next = BTreeMap::new();
        for p in peers {
            if Some(p.subnet.prefix_len()) == self.prefix_len6 {
                upsert(&mut next, p.subnet, p, &mut Tally::default());
            }
        }
        let six = diff(&self.peers6, &next);
        self.peers6 = next;
        changes(Tally::default(), six)
    }

    /// The peer for `subnet`, if any.
    pub fn get(&self, subnet: &Subnet) -> Option<&Peer> {
        self.peers.get(subnet)
    }

    /// The IPv6 peer for `subnet`, if any.
    pub fn get6(&self, subnet: &Subnet6) -> Option<&Peer6> {
        self.peers6.get(subnet)
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
        self.peers.values()
    }

    /// The IPv6 peers, ordered by subnet.
    pub fn iter6(&self) -> impl Iterator<Item = &Peer6> + '_ {
        self.peers6.values()
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
            self.peers.values().copied().collect(),
            self.prefix_len6,
            self.peers6.values().copied().collect(),
            revision,
        )
    }
}
