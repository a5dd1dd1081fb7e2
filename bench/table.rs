//! Lease-table costs: lookup at 10, 1,000 and 65,000 leases (hits over 1,024 destinations,
//! hits spread over every lease, misses, underlay lookups), IPv4 under `lookup/` and the same
//! walks by IPv6 destination and PublicIPv6 under `lookup6/` (/64 subnets, the 64-bit key) and
//! `lookup6_long/` (/80 subnets, the 128-bit key) on dual-stack tables; and applying 1,000
//! etcd events to a 65,000-lease table then building and publishing the new snapshot,
//! IPv4-only and dual-stack.
//!
//! The `lookup*` walks hand the address over by value through `black_box`, which for a
//! 16-byte IPv6 address means a vector store the lookup then reads back in 8-byte halves
//! (store forwarding on the critical path); `lookup_mem/` and `lookup6_mem/` read the address
//! from memory behind an opaque reference instead, as the data path reads it from a packet.

use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use weft::table::{LocalVtep, Peer, Peer6, PeerEvent, PeerSet, SharedTable};
use weft::wire::{Subnet, Subnet6, Vni};

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

/// The IPv6 subnet of lease `i` at `prefix_len` (64 or more): fd10:0:0:i::, with `i` just
/// above the host bits.
fn subnet6(i: u32, prefix_len: u8) -> Ipv6Addr {
    let n = u128::from(i) << (128 - u32::from(prefix_len));
    Ipv6Addr::from(0xfd10u128 << 112 | n)
}

/// The PublicIPv6 of lease `i`'s node: fd77::x:y.
fn public6(i: u32) -> Ipv6Addr {
    Ipv6Addr::from(0xfd77u128 << 112 | u128::from(i))
}

/// The IPv6 half of lease `i`, owned by node fd77::x:y.
fn peer6(i: u32, prefix_len: u8) -> Peer6 {
    let local6 = LocalVtep {
        mac: "0a:00:00:00:00:06".parse().expect("mac"),
        ..local()
    };
    Peer6::new(
        Subnet6::new(subnet6(i, prefix_len), prefix_len).expect("subnet6"),
        public6(i),
        Some(weft::wire::EthernetAddress([
            0x0e,
            0,
            0,
            6,
            (i >> 8) as u8,
            i as u8,
        ])),
        &local6,
    )
}

/// `n` dual-stack leases: [`peer`] and [`peer6`] for each.
fn dual_set_of(n: u32, prefix_len6: u8) -> PeerSet {
    let mut s = PeerSet::new(24).with_ipv6(prefix_len6);
    s.apply((0..n).flat_map(|i| {
        [
            PeerEvent::Upsert(peer(i)),
            PeerEvent::Upsert6(peer6(i, prefix_len6)),
        ]
    }));
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

/// The IPv6 twin of [`lookup`]: the same walks over the same leases, by IPv6 destination and
/// by PublicIPv6, on a dual-stack table with IPv6 subnets of `prefix_len6`.
fn lookup6_group(c: &mut Criterion, name: &str, prefix_len6: u8) {
    let mut g = c.benchmark_group(name);
    for n in [10u32, 1_000, 65_000] {
        let table = dual_set_of(n, prefix_len6).snapshot(0);
        let dsts: Vec<Ipv6Addr> = (0..1024u32)
            .map(|k| {
                let i = k.wrapping_mul(2_654_435_761) % n;
                Ipv6Addr::from(u128::from(subnet6(i, prefix_len6)) | u128::from(k & 0xff))
            })
            .collect();
        let mut k = 0usize;
        g.bench_function(format!("hit/{n}"), |b| {
            b.iter(|| {
                k = (k + 1) & 1023;
                black_box(table.lookup6(black_box(dsts[k])))
            })
        });
        let spread: Vec<Ipv6Addr> = (0..65_536u32)
            .map(|k| {
                let i = k.wrapping_mul(2_654_435_761) % n;
                Ipv6Addr::from(u128::from(subnet6(i, prefix_len6)) | 7)
            })
            .collect();
        let mut j = 0usize;
        g.bench_function(format!("hit_spread/{n}"), |b| {
            b.iter(|| {
                j = (j + 1) & 65_535;
                black_box(table.lookup6(black_box(spread[j])))
            })
        });
        let miss: Ipv6Addr = "fd11::1".parse().expect("addr");
        g.bench_function(format!("miss/{n}"), |b| {
            b.iter(|| black_box(table.lookup6(black_box(miss))))
        });
        let srcs: Vec<Ipv6Addr> = (0..1024u32)
            .map(|k| public6(k.wrapping_mul(2_654_435_761) % n))
            .collect();
        g.bench_function(format!("underlay/{n}"), |b| {
            b.iter(|| {
                k = (k + 1) & 1023;
                black_box(table.lookup_underlay6(black_box(srcs[k])))
            })
        });
    }
    g.finish();
}

fn lookup6(c: &mut Criterion) {
    lookup6_group(c, "lookup6", 64);
}

fn lookup6_long(c: &mut Criterion) {
    lookup6_group(c, "lookup6_long", 80);
}

/// Hits and underlay lookups in both families with the address read through an opaque
/// reference (see the module comment), at 1,000 and 65,000 leases.
fn lookup_mem(c: &mut Criterion) {
    for n in [1_000u32, 65_000] {
        let table = dual_set_of(n, 64).snapshot(0);
        let walk = |k: u32| k.wrapping_mul(2_654_435_761) % n;
        let dsts: Vec<Ipv4Addr> = (0..1024u32)
            .map(|k| Ipv4Addr::from(0x0a00_0000 | (walk(k) << 8) | (k & 0xff)))
            .collect();
        let srcs: Vec<Ipv4Addr> = (0..1024u32)
            .map(|k| Ipv4Addr::from(0xac10_0000 + walk(k)))
            .collect();
        let dsts6: Vec<Ipv6Addr> = (0..1024u32)
            .map(|k| Ipv6Addr::from(u128::from(subnet6(walk(k), 64)) | u128::from(k & 0xff)))
            .collect();
        let srcs6: Vec<Ipv6Addr> = (0..1024u32).map(|k| public6(walk(k))).collect();
        let mut k = 0usize;
        let mut g = c.benchmark_group("lookup_mem");
        g.bench_function(format!("hit/{n}"), |b| {
            b.iter(|| {
                k = (k + 1) & 1023;
                black_box(table.lookup(*black_box(&dsts[k])))
            })
        });
        g.bench_function(format!("underlay/{n}"), |b| {
            b.iter(|| {
                k = (k + 1) & 1023;
                black_box(table.lookup_underlay(*black_box(&srcs[k])))
            })
        });
        g.finish();
        let mut g = c.benchmark_group("lookup6_mem");
        g.bench_function(format!("hit/{n}"), |b| {
            b.iter(|| {
                k = (k + 1) & 1023;
                black_box(table.lookup6(*black_box(&dsts6[k])))
            })
        });
        g.bench_function(format!("underlay/{n}"), |b| {
            b.iter(|| {
                k = (k + 1) & 1023;
                black_box(table.lookup_underlay6(*black_box(&srcs6[k])))
            })
        });
        g.finish();
    }
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
    // The same 1,000 lease changes on a dual-stack set, each removing or adding the lease's
    // IPv6 half too (2,000 PeerEvents).
    let base = dual_set_of(65_000, 64);
    let shared = SharedTable::new(base.snapshot(0));
    let events: Vec<PeerEvent> = (0..500u32)
        .flat_map(|i| {
            [
                PeerEvent::Remove(peer(i * 97).subnet),
                PeerEvent::Remove6(peer6(i * 97, 64).subnet),
            ]
        })
        .chain(
            (65_000..65_500u32)
                .flat_map(|i| [PeerEvent::Upsert(peer(i)), PeerEvent::Upsert6(peer6(i, 64))]),
        )
        .collect();
    g.bench_function("1000_events_to_65000_dual_stack_leases", |b| {
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

criterion_group!(
    benches,
    lookup,
    lookup6,
    lookup6_long,
    lookup_mem,
    apply_events
);
criterion_main!(benches);
