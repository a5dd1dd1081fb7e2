//! The data path's per-packet work allocates nothing: the functions the workers call for each
//! packet (`dataplane::packet::outbound` with segmentation and encapsulation, `inbound` with
//! decapsulation and the receive checks, the coalescer, the virtio-net header) run under a
//! counting global allocator that must see zero allocations once the buffers exist. The IPv6
//! packet functions (segmentation, coalescing, flow hash, virtio-net header, ICMPv6 errors)
//! the lease table's lookups and the per-peer counting in both families are held to the same.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{Ipv4Addr, Ipv6Addr};

use weft::buf::{PacketBuf, DEFAULT_HEADROOM};
use weft::dataplane::packet::{self, Outbound, Shape};
use weft::dataplane::{Backend, DatapathConfig, Ipv4Side, Offloads};
use weft::encap::VxlanRx;
use weft::fixtures::{tcp6_packet, tcp_packet};
use weft::gro::{Coalescer, Offer};
use weft::offload::{self, VnetHdr, VNET_HDR_LEN};
use weft::table::{LeaseTable, LocalVtep, Peer, Peer6, PeerEvent, PeerSet, SharedTable};
use weft::wire::icmpv6;
use weft::wire::tcp::{ACK, PSH};
use weft::wire::{EthernetAddress, Subnet6, Vni};

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

const A: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 1);
const B: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 2);

/// Node `me` (1: 10.1.1.0/24 at A, 2: 10.1.2.0/24 at B), the other one its only peer.
fn node(me: u8) -> (DatapathConfig, LeaseTable) {
    let vni = Vni::new(1).unwrap();
    let mac = |n: u8| EthernetAddress([2, 0, 0, 0, 0, n]);
    let local = LocalVtep {
        vni,
        mac: mac(me),
        port: 8472,
    };
    let (other, ip) = if me == 1 { (2, B) } else { (1, A) };
    let peer = Peer::new(
        format!("10.1.{other}.0/24").parse().unwrap(),
        ip,
        Some(mac(other)),
        &local,
    );
    let cfg = DatapathConfig {
        backend: Backend::Vxlan(VxlanRx {
            vni,
            vtep_mac: mac(me),
        }),
        ipv4: Some(Ipv4Side {
            local_subnet: format!("10.1.{me}.0/24").parse().unwrap(),
            network: "10.1.0.0/16".parse().unwrap(),
            local_ip: std::net::Ipv4Addr::UNSPECIFIED,
        }),
        ipv6: None,
        tun_mtu: 1450,
        mtu4: 1450,
        batch_size: 64,
        offloads: Offloads {
            tun_tso: true,
            coalesce: true,
            ..Offloads::default()
        },
        split: true,
        pin: false,
    };
    (cfg, LeaseTable::from_peers(24, vec![peer], 1))
}

#[test]
fn per_packet_path_allocates_nothing() {
    let (tx_cfg, tx_table) = node(1);
    let (rx_cfg, rx_table) = node(2);
    // What the TUN hands over: ACK-sized and MSS-sized packets, and a super-packet.
    let mss = 1398;
    let small = tcp_packet(0, ACK, 1);
    let full = tcp_packet(mss, PSH | ACK, 1);
    let jumbo = tcp_packet(20 * mss, PSH | ACK, 1);
    let gso = VnetHdr {
        flags: offload::F_NEEDS_CSUM,
        gso_type: offload::GSO_TCPV4,
        hdr_len: 52,
        gso_size: mss as u16,
        csum_start: 20,
        csum_offset: 16,
    };
    let plain = VnetHdr::default().to_bytes();
    let with_hdr = |hdr: [u8; VNET_HDR_LEN], p: &[u8]| [&hdr[..], p].concat();
    let reads = [
        with_hdr(plain, &small),
        with_hdr(plain, &full),
        with_hdr(gso.to_bytes(), &jumbo),
    ];
    // The worker's buffers, allocated once.
    let mut slot = PacketBuf::new(70_000, DEFAULT_HEADROOM);
    let mut headers = vec![0u8; 64 * 1024];
    let mut coalescer = Coalescer::new();
    let mut tun_buf = vec![0u8; VNET_HDR_LEN + 65_535];

    let probe = allocs();
    drop(std::hint::black_box(vec![0u8; 16]));
    assert_eq!(
        allocs() - probe,
        1,
        "the counter sees this thread's allocations"
    );

    let before = allocs();
    let (mut sent, mut delivered) = (0usize, 0usize);
    for round in 0..3_000 {
        let read = &reads[round % reads.len()];
        slot.reset();
        slot.fill_from(read).unwrap();
        let Outbound::Send(p) =
            packet::outbound(&mut slot, true, &tx_table, &tx_cfg, Some(&mut headers[..]))
        else {
            panic!("round {round}: not sent");
        };
        sent += p.datagrams;
        if let Shape::Segments(_) = p.shape {
            // Segments leave from the header buffer and the payload in place (the trains'
            // iovecs); the receive side below takes the whole datagrams.
            continue;
        }
        // The datagram as the peer receives it: checks, then coalescing, then the TUN write.
        let inner = packet::inbound(slot.as_slice(), A, &rx_table, &rx_cfg).unwrap();
        match coalescer.offer(inner) {
            Offer::Taken => {}
            _ => {
                let out = &mut tun_buf[..VNET_HDR_LEN + inner.len()];
                out[VNET_HDR_LEN..].copy_from_slice(inner);
                let hdr = offload::tun_write_hdr(&mut out[VNET_HDR_LEN..], rx_cfg.tun_mtu);
                out[..VNET_HDR_LEN].copy_from_slice(&hdr.to_bytes());
            }
        }
        if let Some(super_packet) = coalescer.flush(rx_cfg.tun_mtu) {
            std::hint::black_box(super_packet);
        }
        delivered += 1;
    }
    let after = allocs();
    assert_eq!(after - before, 0, "allocations on the per-packet path");
    assert_eq!(
        sent,
        1_000 * (1 + 1 + 20),
        "every packet and segment was sent"
    );
    assert_eq!(delivered, 2_000);
}

#[test]
fn ipv6_packet_functions_allocate_nothing() {
    let mss = 1378;
    let small = tcp6_packet(0, ACK, 1);
    let full = tcp6_packet(mss, PSH | ACK, 1);
    let jumbo = tcp6_packet(20 * mss, PSH | ACK, 1);
    let prefix = [0x11u8; 22];
    // The buffers a worker holds, allocated once.
    let mut headers = vec![0u8; 64 * 1024];
    let mut train = vec![0u8; 70_000];
    let mut coalescer = Coalescer::new();
    let mut tun_buf = vec![0u8; VNET_HDR_LEN + 65_535];
    let mut icmp = [0u8; icmpv6::MAX_ERROR_LEN];
    let gw = "fd10:0:0:2::".parse().unwrap();

    let before = allocs();
    let (mut segments, mut merged, mut hashes) = (0usize, 0usize, 0u32);
    for _ in 0..1_000 {
        for p in [&small, &full, &jumbo] {
            hashes ^= weft::encap::flow_hash(p);
            let dst = weft::encap::outbound_dst6(p).unwrap();
            std::hint::black_box(dst);
            let out = &mut tun_buf[..VNET_HDR_LEN + p.len()];
            out[VNET_HDR_LEN..].copy_from_slice(p);
            let hdr = offload::tun_write_hdr(&mut out[VNET_HDR_LEN..], 1450);
            out[..VNET_HDR_LEN].copy_from_slice(&hdr.to_bytes());
        }
        let s = weft::gso::segment_tcp6_headers(&jumbo, mss, &prefix, &mut headers).unwrap();
        segments += s.parts(&headers, &jumbo, 0..s.count).count();
        // The receive side: the train's segments coalesce back into one super-packet.
        let t = weft::gso::segment_tcp6(&jumbo, mss, &[], &mut train).unwrap();
        for seg in train[..t.total].chunks(t.seg_len) {
            assert_eq!(coalescer.offer(seg), Offer::Taken);
        }
        merged += coalescer.flush(1450).map_or(0, <[u8]>::len);
        let n = icmpv6::write_packet_too_big(&full, gw, 1450, &mut icmp).unwrap();
        std::hint::black_box(&icmp[..n]);
    }
    let after = allocs();
    assert_eq!(after - before, 0, "allocations on the IPv6 packet path");
    assert_eq!(segments, 1_000 * 40, "20 headers and 20 payloads per train");
    assert_eq!(merged, 1_000 * (VNET_HDR_LEN + jumbo.len()));
    std::hint::black_box(hashes);
}

#[test]
fn table_lookups_allocate_nothing_in_either_family() {
    let local = LocalVtep {
        vni: Vni::new(1).unwrap(),
        mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
        port: 8472,
    };
    let local6 = LocalVtep {
        mac: EthernetAddress([2, 0, 0, 0, 6, 1]),
        ..local
    };
    let mac = |i: u32, six: u8| EthernetAddress([2, 0, 0, six, (i >> 8) as u8, i as u8]);
    let subnet6 = |i: u32| (0xfd10_0000_0000_0000u128 | u128::from(i)) << 64;
    let public6 = |i: u32| Ipv6Addr::from(0xfd77u128 << 112 | u128::from(i));
    // /64 subnets take the 64-bit key, /96 ones (inside the same /64s) the 128-bit key.
    let tables: Vec<SharedTable> = [64u8, 96]
        .into_iter()
        .map(|len6| {
            let mut set = PeerSet::new(24).with_ipv6(len6);
            set.apply((0..1_000u32).flat_map(|i| {
                let v4 = Peer::new(
                    format!("10.{}.{}.0/24", i >> 8, i & 0xff).parse().unwrap(),
                    Ipv4Addr::from(0xac10_0000 + i),
                    Some(mac(i, 0)),
                    &local,
                );
                let v6 = Peer6::new(
                    Subnet6::new(Ipv6Addr::from(subnet6(i)), len6).unwrap(),
                    public6(i),
                    Some(mac(i, 6)),
                    &local6,
                );
                [PeerEvent::Upsert(v4), PeerEvent::Upsert6(v6)]
            }));
            SharedTable::new(set.snapshot(1))
        })
        .collect();
    let mut readers: Vec<_> = tables.iter().map(SharedTable::reader).collect();
    for r in &mut readers {
        r.load();
    }

    let before = allocs();
    let mut found = 0usize;
    for i in 0..4_000u32 {
        let table = readers[(i & 1) as usize].load();
        let n = i % 1_100; // the last 100 miss
        let dst4 = Ipv4Addr::from(0x0a00_0000 | (n << 8) | 9);
        let dst6 = Ipv6Addr::from(subnet6(n) | 9);
        let hits = [
            table.lookup(std::hint::black_box(dst4)).is_some(),
            table
                .lookup_underlay(std::hint::black_box(Ipv4Addr::from(0xac10_0000 + n)))
                .is_some(),
            table.lookup6(std::hint::black_box(dst6)).is_some(),
            table
                .lookup_underlay6(std::hint::black_box(public6(n)))
                .is_some(),
        ];
        found += hits.iter().filter(|h| **h).count();
    }
    assert_eq!(allocs() - before, 0, "allocations in table lookups");
    // 3 full rounds of 1,100 and 700 more: 3,700 hits in each of the four lookups.
    assert_eq!(found, 4 * 3_700);
}

#[test]
fn per_peer_counting_allocates_nothing_in_either_family() {
    use std::sync::atomic::Ordering;
    use weft::dataplane::{Counters, LocalCounters};
    // The shared counters (their slot table) and a worker's local counts, allocated once.
    let counters = Counters::default();
    let mut local = LocalCounters::for_worker(0);
    let base6 = u128::from("fd77::".parse::<Ipv6Addr>().unwrap());

    let before = allocs();
    for round in 0..200u32 {
        // A batch to more peers than the local counts hold (early flushes), in both
        // families; the first round claims every peer's slot.
        for i in 0..12u32 {
            local.peer(Ipv4Addr::from(0xc0a8_4000 + i), 1, 100, &counters, true);
            local.peer(
                Ipv6Addr::from(base6 + u128::from(i)),
                2,
                200,
                &counters,
                true,
            );
        }
        local.flush_tx(&counters, 36);
        local.peer(
            Ipv6Addr::from(base6 + u128::from(round % 12)),
            1,
            10,
            &counters,
            false,
        );
        local.flush_rx(&counters, 1);
    }
    assert_eq!(allocs() - before, 0, "allocations in per-peer counting");
    let six = counters.peers.get(Ipv6Addr::from(base6 + 3)).unwrap();
    assert_eq!(six.tx_packets.load(Ordering::Relaxed), 400);
    assert_eq!(six.rx_packets.load(Ordering::Relaxed), 200 / 12 + 1);
    let four = counters.peers.get(Ipv4Addr::from(0xc0a8_4003)).unwrap();
    assert_eq!(four.tx_bytes.load(Ordering::Relaxed), 200 * 100);
}
