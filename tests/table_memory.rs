//! What the lease table costs in memory per lease, counted by a global allocator that tracks
//! live bytes: the store's working copy ([`PeerSet`]) and the snapshot the data path reads
//! ([`LeaseTable`]), at 65,000 leases (a /8 in /24s). The IPv6 half costs nothing on an IPv4
//! network. Run with `--no-capture` to see the numbers; the bounds pin them. No root needed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicIsize, Ordering};

use weft::table::{Lease, LeaseKey, LocalVtep, Peer, PeerEvent, PeerSet};
use weft::wire::{EthernetAddress, Subnet, Vni};

struct Counting;

/// Bytes allocated and not yet freed, by every thread (the test runs alone in its binary).
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts bytes.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

const LEASES: u32 = 65_000;

/// Lease `i`: 10.x.y.0/24 from subnet 200 on, a distinct PublicIP and VTEP MAC.
fn lease(i: u32, local: &LocalVtep) -> Lease {
    let n = i + 200;
    let subnet = Subnet::new(Ipv4Addr::from(0x0a00_0000 | (n << 8)), 24).unwrap();
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + i);
    let [_, b, c, d] = ip.octets();
    let mac = EthernetAddress([0x0e, 0xf1, 0, b, c, d]);
    Lease {
        key: LeaseKey::v4(subnet),
        created: i64::from(i) + 10,
        peer: Some(Peer::new(subnet, ip, Some(mac), local)),
        peer6: None,
    }
}

#[test]
fn bytes_per_lease_at_65000_ipv4_leases() {
    let local = LocalVtep {
        vni: Vni::new(1).unwrap(),
        mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
        port: 8472,
    };
    let leases: Vec<PeerEvent> = (0..LEASES)
        .map(|i| PeerEvent::Put(lease(i, &local)))
        .collect();
    let per = |bytes: isize| bytes as f64 / f64::from(LEASES);

    // As a re-list builds it: applied one by one into a fresh set that replaces the old.
    let before = live();
    let mut set = PeerSet::new(24);
    let mut next = set.emptied();
    for l in &leases {
        next.apply([*l]);
    }
    set.replace_with(next);
    let set_bytes = live() - before;

    let before = live();
    let table = set.snapshot(1);
    let table_bytes = live() - before;

    // The same leases on a dual-stack set, IPv4 halves only: nothing more.
    let before = live();
    let mut dual = PeerSet::new(24).with_ipv6(64);
    dual.replace(leases.iter().copied());
    let dual_table = dual.snapshot(1);
    let dual_bytes = live() - before;

    eprintln!(
        "{LEASES} IPv4 leases: PeerSet {:.0} B/lease, LeaseTable {:.0} B/lease (Peer is {} B); \
         on a dual-stack set {:.0} B/lease for both",
        per(set_bytes),
        per(table_bytes),
        std::mem::size_of::<Peer>(),
        per(dual_bytes),
    );
    assert_eq!(table.len(), LEASES as usize);
    assert_eq!(dual_table.len(), LEASES as usize);
    assert!(
        per(set_bytes) <= 100.0,
        "PeerSet: {:.0} B/lease",
        per(set_bytes)
    );
    assert!(
        per(table_bytes) <= 90.0,
        "LeaseTable: {:.0} B/lease",
        per(table_bytes)
    );
    assert!(
        dual_bytes <= set_bytes + table_bytes + 4096,
        "an IPv6 half with no IPv6 leases costs {} bytes",
        dual_bytes - set_bytes - table_bytes
    );
}
