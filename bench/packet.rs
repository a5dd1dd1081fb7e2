//! Per-packet costs of the packet layer: vxlan encap and decap, udp decap, and the send and
//! receive paths around them, on 64-byte and 1400-byte inner packets; and the offload work
//! per 64 KB TCP super-packet: the Internet checksum, userspace segmentation (GSO) and
//! coalescing (GRO), over IPv4 and (the `*_v6_*` figures) IPv6.
//! Run: `cargo bench --bench packet`. Criterion reports time per packet and packets/s.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use weft::buf::PacketBuf;
use weft::encap::{self, VxlanRx, VXLAN_ENCAP_LEN};
use weft::fixtures;
use weft::gro::{Coalescer, Offer};
use weft::gso;
use weft::table::{LeaseTable, LocalVtep, Peer};
use weft::wire::checksum;
use weft::wire::tcp;
use weft::wire::{EthernetAddress, Ipv4Packet, Subnet, Vni};

const LOCAL: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x01]);
const PEER: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x02]);

/// A UDP/IPv4 packet of `len` bytes in all (the shared fixture).
fn inner(len: usize) -> Vec<u8> {
    weft::fixtures::udp_packet(len - 28, 40000, 0x5a)
}

/// A table of 1,001 leases (/24 each): 1,000 in 10.2.0.0-10.5.231.0 and the sender 10.1.1.0/24.
fn table(vni: Vni) -> LeaseTable {
    let local = LocalVtep {
        vni,
        mac: LOCAL,
        port: 8472,
    };
    let peers = (0..1000u32)
        .map(|i| {
            let subnet = Subnet::new(Ipv4Addr::from(0x0a02_0000 + (i << 8)), 24).unwrap();
            let ip = Ipv4Addr::from(0xc0a8_0000 + i);
            Peer::new(subnet, ip, Some(PEER), &local)
        })
        .chain(std::iter::once(Peer::new(
            "10.1.1.0/24".parse().unwrap(),
            Ipv4Addr::new(192, 168, 64, 11),
            Some(PEER),
            &local,
        )))
        .collect();
    LeaseTable::from_peers(24, peers, 1)
}

fn packet_layer(c: &mut Criterion) {
    let vni = Vni::new(1).unwrap();
    let header = encap::vxlan_header(vni, LOCAL, PEER);
    let rx = VxlanRx {
        vni,
        vtep_mac: PEER,
    };
    let ours: Subnet = "10.1.2.0/24".parse().unwrap();
    let leases = table(vni);
    let sender_ip = Ipv4Addr::new(192, 168, 64, 11);

    for size in [64usize, 1400] {
        let pkt = inner(size);
        let mut g = c.benchmark_group(format!("{size}B"));
        g.throughput(Throughput::Elements(1));
        g.warm_up_time(Duration::from_millis(500));
        g.measurement_time(Duration::from_secs(2));

        // Encap: prepend the peer's 22 ready bytes in place (then step back for the next round).
        let mut b = PacketBuf::new(2048, 64);
        b.fill_from(&pkt).unwrap();
        g.bench_function("vxlan_encap", |bench| {
            bench.iter(|| {
                encap::encap_vxlan(black_box(&mut b), black_box(&header)).unwrap();
                b.advance(VXLAN_ENCAP_LEN).unwrap();
            })
        });

        // Decap: every receive check on the datagram, result borrowing it.
        let mut d = PacketBuf::new(2048, 64);
        d.fill_from(&pkt).unwrap();
        encap::encap_vxlan(&mut d, &header).unwrap();
        let datagram = d.as_slice().to_vec();
        g.bench_function("vxlan_decap", |bench| {
            bench.iter(|| encap::decap_vxlan(black_box(&datagram), black_box(&rx)).unwrap())
        });

        // Decap in place: checks, then move the start (restored for the next round).
        g.bench_function("vxlan_decap_in_place", |bench| {
            bench.iter(|| {
                encap::decap_vxlan_in_place(black_box(&mut d), black_box(&rx)).unwrap();
                d.prepend(VXLAN_ENCAP_LEN).unwrap();
            })
        });

        g.bench_function("udp_decap", |bench| {
            bench.iter(|| encap::decap_udp(black_box(&pkt)).unwrap())
        });

        // The whole send path of one packet as the worker runs it (minus the syscall):
        // classify, look the destination up among 1,000 leases, encapsulate with its header.
        let mut tx = PacketBuf::new(2048, 64);
        let mut out_pkt = pkt.clone();
        out_pkt[16..20].copy_from_slice(&[10, 2, 7, 9]); // a destination that has a lease
        Ipv4Packet::new_unchecked(&mut out_pkt[..]).fill_checksum();
        tx.fill_from(&out_pkt).unwrap();
        g.bench_function("full_send_path", |bench| {
            bench.iter(|| {
                let dst = encap::outbound_dst(black_box(tx.as_slice())).unwrap();
                let peer = leases.lookup(dst).unwrap();
                encap::encap_vxlan(&mut tx, &peer.vxlan_header).unwrap();
                tx.advance(VXLAN_ENCAP_LEN).unwrap();
                black_box(peer.underlay)
            })
        });

        // The whole receive path of one datagram: the sender's lease by underlay address,
        // decapsulation in place, the inner source and destination checks.
        g.bench_function("full_receive_path", |bench| {
            bench.iter(|| {
                let peer = leases.lookup_underlay(black_box(sender_ip)).unwrap();
                let (src, dst) = encap::decap_vxlan_in_place(&mut d, &rx).unwrap();
                let owner = leases.lookup(src).map(|p| p.public_ip);
                encap::check_inner_route(owner, peer.public_ip, dst, ours).unwrap();
                d.prepend(VXLAN_ENCAP_LEN).unwrap();
            })
        });
        g.finish();
    }
}

fn offload(c: &mut Criterion) {
    const MSS: usize = 1398;
    let mut g = c.benchmark_group("offload");
    for len in [1448usize, 65000] {
        let data = vec![0xa7u8; len];
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(format!("checksum_{len}B"), |bench| {
            bench.iter(|| checksum::checksum(black_box(&data)))
        });
    }
    // A 64 KB super-packet: ACK set, a timestamp option block.
    let sp = fixtures::tcp_packet(46 * MSS, tcp::ACK, 1);
    let prefix = [0x11u8; 50];
    let mut train = vec![0u8; 128 * 1024];
    g.throughput(Throughput::Bytes(sp.len() as u64));
    g.bench_function("gso_segment_64KB", |bench| {
        bench.iter(|| gso::segment_tcp4(black_box(&sp), MSS, &prefix, &mut train).unwrap())
    });
    // What the data path does: headers only, the payload sent from where it lies.
    let mut hdrs = vec![0u8; 64 * 1024];
    g.bench_function("gso_headers_64KB", |bench| {
        bench.iter(|| gso::segment_tcp4_headers(black_box(&sp), MSS, &prefix, &mut hdrs).unwrap())
    });
    let t = gso::segment_tcp4(&sp, MSS, &[], &mut train).unwrap();
    let segs: Vec<Vec<u8>> = train[..t.total]
        .chunks(t.seg_len)
        .map(<[u8]>::to_vec)
        .collect();
    let mut co = Coalescer::new();
    g.bench_function("gro_coalesce_64KB", |bench| {
        bench.iter(|| {
            for s in &segs {
                assert_eq!(co.offer(black_box(s)), Offer::Taken);
            }
            co.flush(1450).map(<[u8]>::len)
        })
    });

    // The same over IPv6: 20 bytes more header per segment, so the MSS is 20 bytes less and
    // the super-packet carries as many segments.
    const MSS6: usize = MSS - 20;
    let sp6 = fixtures::tcp6_packet(46 * MSS6, tcp::ACK, 1);
    g.throughput(Throughput::Bytes(sp6.len() as u64));
    g.bench_function("gso_segment_v6_64KB", |bench| {
        bench.iter(|| gso::segment_tcp6(black_box(&sp6), MSS6, &prefix, &mut train).unwrap())
    });
    g.bench_function("gso_headers_v6_64KB", |bench| {
        bench.iter(|| gso::segment_tcp6_headers(black_box(&sp6), MSS6, &prefix, &mut hdrs).unwrap())
    });
    let t6 = gso::segment_tcp6(&sp6, MSS6, &[], &mut train).unwrap();
    let segs6: Vec<Vec<u8>> = train[..t6.total]
        .chunks(t6.seg_len)
        .map(<[u8]>::to_vec)
        .collect();
    g.bench_function("gro_coalesce_v6_64KB", |bench| {
        bench.iter(|| {
            for s in &segs6 {
                assert_eq!(co.offer(black_box(s)), Offer::Taken);
            }
            co.flush(1450).map(<[u8]>::len)
        })
    });
    g.finish();
}

criterion_group!(benches, packet_layer, offload);
criterion_main!(benches);
