//! Per-packet costs of the packet layer: vxlan encap and decap, udp decap, and the send and
//! receive paths around them, on 64-byte and 1400-byte inner packets.
//! Run: `cargo bench --bench packet`. Criterion reports time per packet and packets/s.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use weft::buf::PacketBuf;
use weft::encap::{self, VxlanRx, VXLAN_ENCAP_LEN};
use weft::wire::ipv4::{Ipv4Repr, Protocol};
use weft::wire::{EthernetAddress, Ipv4Packet, Subnet, Vni};

const LOCAL: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x01]);
const PEER: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x02]);

fn inner(len: usize) -> Vec<u8> {
    let mut b = vec![0x5au8; len];
    Ipv4Repr {
        src: Ipv4Addr::new(10, 1, 1, 2),
        dst: Ipv4Addr::new(10, 1, 2, 2),
        protocol: Protocol::Udp,
        payload_len: (len - 20) as u16,
        ttl: 64,
        dscp_ecn: 0,
        ident: 1,
        dont_frag: true,
    }
    .emit(&mut Ipv4Packet::new_unchecked(&mut b[..]));
    b
}

fn packet_layer(c: &mut Criterion) {
    let vni = Vni::new(1).unwrap();
    let header = encap::vxlan_header(vni, LOCAL, PEER);
    let rx = VxlanRx {
        vni,
        vtep_mac: PEER,
    };
    let sender: Subnet = "10.1.1.0/24".parse().unwrap();
    let ours: Subnet = "10.1.2.0/24".parse().unwrap();

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

        // Send path minus the table lookup and syscall: classify, flow port, encap.
        g.bench_function("send_path", |bench| {
            bench.iter(|| {
                let dst = encap::outbound_dst(black_box(b.as_slice())).unwrap();
                let port = encap::flow_src_port(encap::flow_hash(b.as_slice()), 32768, 60999);
                encap::encap_vxlan(&mut b, &header).unwrap();
                b.advance(VXLAN_ENCAP_LEN).unwrap();
                black_box((dst, port))
            })
        });

        // Receive path minus the table lookup and syscall: decap in place, source and
        // destination subnet checks.
        g.bench_function("receive_path", |bench| {
            bench.iter(|| {
                let i = encap::decap_vxlan(black_box(d.as_slice()), &rx).unwrap();
                encap::check_inner_route(i.src, i.dst, sender, ours).unwrap();
                encap::decap_vxlan_in_place(&mut d, &rx).unwrap();
                d.prepend(VXLAN_ENCAP_LEN).unwrap();
            })
        });
        g.finish();
    }
}

criterion_group!(benches, packet_layer);
criterion_main!(benches);
