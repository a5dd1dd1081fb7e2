//! The per-packet path allocates nothing: encap, decap, receive checks and pool recycling run
//! under a counting global allocator that must see zero allocations.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::Ipv4Addr;

use weft::buf::PacketBuf;
use weft::encap::{self, VxlanRx};
use weft::wire::ipv4::{Ipv4Repr, Protocol};
use weft::wire::{EthernetAddress, Ipv4Packet, Subnet, Vni};

struct Counting;

thread_local! {
    // Per thread, so the test harness's own threads cannot disturb the count.
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

fn allocs() -> usize {
    ALLOCS.with(|c| c.get())
}

// SAFETY: forwards to the system allocator unchanged; only counts calls.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn per_packet_path_allocates_nothing() {
    let vni = Vni::new(1).unwrap();
    let local = EthernetAddress([2, 0, 0, 0, 0, 1]);
    let peer = EthernetAddress([2, 0, 0, 0, 0, 2]);
    let header = encap::vxlan_header(vni, local, peer);
    let rx = VxlanRx {
        vni,
        vtep_mac: peer,
    };
    let sender_ip = Ipv4Addr::new(192, 168, 64, 1);
    let local_vtep = weft::table::LocalVtep {
        vni,
        mac: local,
        port: 8472,
    };
    let leases = weft::table::LeaseTable::from_peers(
        24,
        vec![weft::table::Peer::new(
            "10.1.1.0/24".parse().unwrap(),
            sender_ip,
            Some(peer),
            &local_vtep,
        )],
        1,
    );
    let ours: Subnet = "10.1.2.0/24".parse().unwrap();
    let mut inner = vec![0u8; 1400];
    Ipv4Repr {
        src: Ipv4Addr::new(10, 1, 1, 2),
        dst: Ipv4Addr::new(10, 1, 2, 2),
        protocol: Protocol::Udp,
        payload_len: 1380,
        ttl: 64,
        dscp_ecn: 0,
        ident: 1,
        dont_frag: true,
    }
    .emit(&mut Ipv4Packet::new_unchecked(&mut inner[..]));
    let mut slot = PacketBuf::new(2048, 64);

    let probe = allocs();
    drop(std::hint::black_box(vec![0u8; 16]));
    assert_eq!(
        allocs() - probe,
        1,
        "the counter sees this thread's allocations"
    );
    let before = allocs();
    for _ in 0..10_000 {
        let b = &mut slot;
        b.reset();
        b.fill_from(&inner).unwrap();
        let dst = encap::outbound_dst(b.as_slice()).unwrap();
        assert!(ours.contains(dst));
        let _port = encap::flow_src_port(encap::flow_hash(b.as_slice()), 32768, 60999);
        encap::encap_vxlan(b, &header).unwrap();
        let i = encap::decap_vxlan(b.as_slice(), &rx).unwrap();
        let sender = leases.lookup_underlay(sender_ip).unwrap();
        let owner = leases.lookup(i.src).map(|p| p.public_ip);
        encap::check_inner_route(owner, sender.public_ip, i.dst, ours).unwrap();
        encap::decap_vxlan_in_place(b, &rx).unwrap();
    }
    let after = allocs();
    assert_eq!(after - before, 0, "allocations on the per-packet path");
}
