//! The receive side of a worker: `recvmmsg` (trains with UDP_GRO) -> [`packet::inbound`] per
//! datagram -> coalescing -> TUN writes with a virtio-net header, one batch per turn.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
use std::os::fd::AsFd;

use crate::buf::{Batch, DEFAULT_HEADROOM};
use crate::encap::DropReason;
use crate::gro::{Coalescer, Offer};
use crate::offload::{self, VNET_HDR_LEN};
use crate::sys::mmsg::Mmsg;
use crate::sys::tun::Tun;
use crate::table::TableReader;

use super::packet;
use super::{Counters, DatapathConfig, DatapathError, LocalCounters, Turn, MAX_PACKET};

/// The receive side of a worker: underlay socket -> TUN queue, with its buffers.
pub(super) struct RecvSide {
    name: String,
    cfg: DatapathConfig,
    reader: TableReader,
    batch: Batch,
    mmsg: Mmsg,
    to_tun: ToTun,
    local: LocalCounters,
}

/// The sender of a datagram, once a lease was found that names it.
#[derive(Debug, Clone, Copy)]
enum From {
    /// An IPv4 sender (a lease's PublicIP).
    V4(Ipv4Addr),
    /// An IPv6 sender (a dual-stack peer's PublicIPv6).
    V6(Ipv6Addr),
}

impl From {
    /// The sender's address, which its per-peer counters go under.
    #[inline]
    fn ip(self) -> IpAddr {
        match self {
            From::V4(s) => IpAddr::V4(s),
            From::V6(s) => IpAddr::V6(s),
        }
    }
}

/// Where accepted packets go: into the coalescer's super-packets, or one by one.
struct ToTun {
    vnet: bool,
    mtu: usize,
    gro: Option<Coalescer>,
    /// A lone packet behind its virtio-net header.
    single: Vec<u8>,
}

impl RecvSide {
    /// The receive side of worker `worker`, writing to `tun`.
    pub(super) fn new(
        worker: usize,
        tun: &Tun,
        cfg: &DatapathConfig,
        reader: TableReader,
    ) -> RecvSide {
        let n_max = cfg.batch_size.max(1);
        let vnet = tun.has_vnet_hdr();
        // Coalescing needs the virtio-net header to hand super-packets to the TUN; UDP
        // datagrams are coalesced too where the TUN takes UDP super-packets (USO).
        let gro = (vnet && cfg.offloads.coalesce).then(|| match cfg.offloads.tun_uso {
            true => Coalescer::with_udp(),
            false => Coalescer::new(),
        });
        RecvSide {
            name: format!("weft-dp{worker}"),
            cfg: *cfg,
            reader,
            batch: Batch::new(n_max, MAX_PACKET + DEFAULT_HEADROOM, DEFAULT_HEADROOM),
            mmsg: Mmsg::new(n_max),
            to_tun: ToTun {
                vnet,
                mtu: cfg.tun_mtu,
                gro,
                single: vec![0u8; VNET_HDR_LEN + MAX_PACKET],
            },
            local: LocalCounters::for_worker(worker),
        }
    }

    /// recvmmsg -> receive checks per datagram -> coalesce -> TUN, one batch.
    pub(super) fn run_once(
        &mut self,
        tun: &Tun,
        sock: &UdpSocket,
        counters: &Counters,
    ) -> Result<Turn, DatapathError> {
        let (bufs, meta) = self.batch.slots_mut();
        let cap = bufs.len().min(meta.len());
        let n = self
            .mmsg
            .recv(sock.as_fd(), bufs, meta)
            .map_err(|source| DatapathError::Io {
                worker: self.name.clone(),
                what: "recvmmsg",
                source,
            })?;
        if n == 0 {
            return Ok(Turn {
                taken: 0,
                drained: true,
            });
        }
        let table = self.reader.load();
        let local = &mut self.local;
        for (buf, m) in bufs.iter().zip(meta.iter()).take(n) {
            let data = buf.as_slice();
            // A GRO train: datagrams of `segment_size` bytes, the last maybe shorter.
            let seg = match usize::from(m.segment_size) {
                0 => data.len().max(1),
                s => s,
            };
            // Who sent it: a lease must name the sender (its PublicIP, or on a dual-stack
            // node its PublicIPv6).
            let from = match m.addr.ip() {
                IpAddr::V4(s) => table.lookup_underlay(s).map(|_| From::V4(s)),
                IpAddr::V6(s) => table.lookup_underlay6(s).map(|_| From::V6(s)),
            };
            let Some(from) = from else {
                for _ in data.chunks(seg) {
                    local.drop(DropReason::UnknownSender);
                }
                continue;
            };
            for datagram in data.chunks(seg) {
                let inner = match from {
                    From::V4(s) => packet::inbound(datagram, s, table, &self.cfg),
                    From::V6(s) => packet::inbound6(datagram, s, table, &self.cfg),
                };
                match inner {
                    Ok(p) => {
                        let delivered = self.to_tun.deliver(tun, p, local);
                        if delivered {
                            local.peer(from.ip(), 1, p.len() as u64, counters, false);
                        }
                    }
                    Err(r) => local.drop(r),
                }
            }
        }
        self.to_tun.flush(tun, local);
        local.flush_rx(counters, n);
        // A non-blocking recvmmsg returns fewer than it may only when the queue ran dry.
        Ok(Turn {
            taken: n,
            drained: n < cap,
        })
    }
}

impl ToTun {
    /// Hands one accepted packet on: into the open super-packet, or (when it cannot join)
    /// after it, or alone behind a virtio-net header (as is without one). False when the
    /// coalescer found its L4 checksum bad (dropped and counted).
    fn deliver(&mut self, tun: &Tun, p: &[u8], local: &mut LocalCounters) -> bool {
        if let Some(c) = self.gro.as_mut() {
            let mut offer = c.offer(p);
            if offer == Offer::FlushFirst {
                flush_to_tun(c, tun, self.mtu, local);
                offer = c.offer(p);
            }
            match offer {
                Offer::Taken => return true,
                Offer::BadChecksum => {
                    local.drop(DropReason::InnerL4Checksum);
                    return false;
                }
                Offer::Alone | Offer::FlushFirst => flush_to_tun(c, tun, self.mtu, local),
            }
        }
        if self.vnet {
            let buf = &mut self.single[..VNET_HDR_LEN + p.len()];
            buf[VNET_HDR_LEN..].copy_from_slice(p);
            let hdr = offload::tun_write_hdr(&mut buf[VNET_HDR_LEN..], self.mtu);
            buf[..VNET_HDR_LEN].copy_from_slice(&hdr.to_bytes());
            tun_write(tun, buf, 1, p.len(), local);
        } else {
            tun_write(tun, p, 1, p.len(), local);
        }
        true
    }

    /// Writes the open super-packet, if any.
    fn flush(&mut self, tun: &Tun, local: &mut LocalCounters) {
        if let Some(c) = self.gro.as_mut() {
            flush_to_tun(c, tun, self.mtu, local);
        }
    }
}

/// Writes one packet (already prefixed with its virtio-net header when the TUN has one)
/// that carries `segments` wire packets and `inner_len` inner bytes.
fn tun_write(
    tun: &Tun,
    bytes: &[u8],
    segments: usize,
    inner_len: usize,
    local: &mut LocalCounters,
) {
    local.writes += 1;
    match tun.write(bytes) {
        Ok(_) => {
            local.packets += segments as u64;
            local.bytes += inner_len as u64;
        }
        Err(_) => local.errors += 1,
    }
}

/// Writes the coalescer's open super-packet, if any, to the TUN.
fn flush_to_tun(c: &mut Coalescer, tun: &Tun, mtu: usize, local: &mut LocalCounters) {
    let (segments, bytes) = (c.segments(), c.wire_bytes());
    if let Some(out) = c.flush(mtu) {
        tun_write(tun, out, segments, bytes, local);
    }
}
