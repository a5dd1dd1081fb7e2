//! Lease-table costs: lookup at 10, 1,000 and 65,000 leases (hits over 1,024 destinations,
//! hits spread over every lease, misses, underlay lookups), and applying
//! 1,000 etcd events to a 65,000-lease table then building and publishing the new snapshot.

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use weft::table::{LocalVtep, Peer, PeerEvent, PeerSet, SharedTable};
use weft::wire::{Subnet, Vni};

fn local() -> LocalVtep {
    LocalVtep {
        vni: Vni::new(1).expect("vni"),
        mac: "0a:00:00:00:00:01".parse().expect("mac"),
        port: 8472,
    }
}

/// Lease `i` of a 10.0.0.0/8 network split into /24s, owned by node 172.16.x.y.
fn peer(i: u32) -> Peer {
    Peer::new(
        Subnet::new(Ipv4Addr::from(0x0a00_0000 | (i << 8)), 24).expect("subnet"),
        Ipv4Addr::from(0xac10_0000 + i),
        Some(weft::wire::EthernetAddress([
            0x0e,
            0,
            0,
            0,
            (i >> 8) as u8,
            i as u8,
        ])),
        &local(),
    )
}

fn set_of(n: u32) -> PeerSet {
    let mut s = PeerSet::new(24);
    s.apply((0..n).map(|i| PeerEvent::Upsert(peer(i))));
    s
}

fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("lookup");
    for n in [10u32, 1_000, 65_000] {
        let table = set_of(n).snapshot(0);
        // 1,024 destinations spread over the leases, walked in a fixed pseudo-random order.
        let dsts: Vec<Ipv4Addr> = (0..1024u32)
            .map(|k| {
                let i = k.wrapping_mul(2_654_435_761) % n;
                Ipv4Addr::from(0x0a00_0000 | (i << 8) | (k & 0xff))
            })
            .collect();
        let mut k = 0usize;
        g.bench_function(format!("hit/{n}"), |b| {
            b.iter(|| {
                k = (k + 1) & 1023;
                black_box(table.lookup(black_box(dsts[k])))
            })
        });
        // Every lease in a scattered order: shows the cost once the table outgrows the cache.
        let spread: Vec<Ipv4Addr> = (0..65_536u32)
            .map(|k| {
                let i = k.wrapping_mul(2_654_435_761) % n;
                Ipv4Addr::from(0x0a00_0000 | (i << 8) | 7)
            })
            .collect();
        let mut j = 0usize;
        g.bench_function(format!("hit_spread/{n}"), |b| {
            b.iter(|| {
                j = (j + 1) & 65_535;
                black_box(table.lookup(black_box(spread[j])))
            })
        });
        let miss = Ipv4Addr::new(11, 0, 0, 1);
        g.bench_function(format!("miss/{n}"), |b| {
            b.iter(|| black_box(table.lookup(black_box(miss))))
        });
        let srcs: Vec<Ipv4Addr> = (0..1024u32)
            .map(|k| Ipv4Addr::from(0xac10_0000 + k.wrapping_mul(2_654_435_761) % n))
            .collect();
        g.bench_function(format!("underlay/{n}"), |b| {
            b.iter(|| {
                k = (k + 1) & 1023;
                black_box(table.lookup_underlay(black_box(srcs[k])))
            })
        });
    }
    g.finish();
}

fn apply_events(c: &mut Criterion) {
    let base = set_of(65_000);
    let shared = SharedTable::new(base.snapshot(0));
    // 1,000 events: 500 removals of existing leases, 500 new leases.
    let events: Vec<PeerEvent> = (0..500u32)
        .map(|i| PeerEvent::Remove(peer(i * 97).subnet))
        .chain((65_000..65_500u32).map(|i| PeerEvent::Upsert(peer(i))))
        .collect();
    let mut g = c.benchmark_group("apply");
    g.sample_size(20);
    g.bench_function("1000_events_to_65000_leases", |b| {
        b.iter_batched(
            || base.clone(),
            |mut set| {
                set.apply(events.iter().copied());
                shared.publish(set.snapshot(1));
                set
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, lookup, apply_events);
criterion_main!(benches);
