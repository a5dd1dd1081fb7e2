//! The data path: two dedicated threads per node moving packets between the TUN device and
//! the UDP socket, in batches, with buffers allocated once.
//!
//! * send (TUN -> UDP): read up to a batch of packets, look each destination up in the lease
//!   table snapshot (loaded once per batch), encapsulate in place, `sendmmsg` the batch. A
//!   destination inside the Network without a lease gets an ICMP net-unreachable back.
//! * receive (UDP -> TUN): `recvmmsg` a batch; per datagram, in DESIGN.md's order: the sender
//!   holds a lease, the VXLAN header and inner Ethernet are ours, the inner IPv4 header is
//!   sane, the inner source lies in the sender's subnet, the inner destination in ours; then
//!   write it to the TUN with a virtio-net header (partial checksums, TCP super-packets).
//!
//! The outer UDP source port is the socket's bound port (8472 for vxlan) for every flow: one
//! socket per node, as flannel's udp backend does. Linux receivers do not care; per-flow
//! source ports need several sockets and come with the multi-queue work.

pub mod counters;

use std::io;
use std::net::{IpAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use tracing::{info, warn};

use crate::buf::{Batch, DEFAULT_HEADROOM};
use crate::encap::{self, DropReason, VxlanRx};
use crate::gro::{Coalescer, Offer};
use crate::gso;
use crate::offload::{self, VnetHdr, VNET_HDR_LEN};
use crate::sys::mmsg::Mmsg;
use crate::sys::tun::Tun;
use crate::sys::{wait_readable, EventFd, Wake};
use crate::table::SharedTable;
use crate::wire::icmpv4::{self, Unreachable};
use crate::wire::Subnet;

pub use counters::{Counters, LocalCounters};

/// Largest datagram or TUN read a buffer holds (a kernel peer's GSO super-datagram).
const MAX_PACKET: usize = 65535;

/// How the node encapsulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// VXLAN (RFC 7348) with this node's VNI and VTEP MAC.
    Vxlan(VxlanRx),
    /// flannel's udp backend: bare IPv4 packets in UDP.
    Udp,
}

/// Everything the workers need besides the devices and the table.
#[derive(Debug, Clone, Copy)]
pub struct DatapathConfig {
    /// Encapsulation.
    pub backend: Backend,
    /// This node's pod subnet (inner destinations must lie in it).
    pub local_subnet: Subnet,
    /// The whole overlay network (no lease inside it -> ICMP unreachable).
    pub network: Subnet,
    /// The TUN's MTU (segment size for TCP super-packets written to it).
    pub tun_mtu: usize,
    /// Packets per batch.
    pub batch_size: usize,
    /// The TUN hands over TCP super-packets (TUNSETOFFLOAD TSO4 took): segment them.
    pub tso: bool,
    /// Send segment trains with one UDP_SEGMENT message each (turned off on the first refusal).
    pub udp_gso: bool,
    /// Coalesce received TCP segments into super-packets for the TUN.
    pub coalesce: bool,
}

/// Why the data path could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// Creating the stop eventfd or a worker thread failed.
    #[error("starting the data path: {what}")]
    Start {
        /// What failed.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A device read or poll failed in a way that ends the worker.
    #[error("{worker} worker: {what}")]
    Io {
        /// Which worker.
        worker: &'static str,
        /// What failed.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A worker thread panicked.
    #[error("{0} worker panicked")]
    Panicked(&'static str),
}

/// The running workers. Dropping it without [`Datapath::stop`] leaves them running.
#[derive(Debug)]
pub struct Datapath {
    stop: Arc<EventFd>,
    workers: Vec<(&'static str, JoinHandle<Result<(), DatapathError>>)>,
    counters: Arc<Counters>,
}

impl Datapath {
    /// Starts the send and receive workers.
    pub fn start(
        tun: Arc<Tun>,
        sock: Arc<UdpSocket>,
        table: SharedTable,
        cfg: DatapathConfig,
    ) -> Result<Datapath, DatapathError> {
        let stop = Arc::new(EventFd::new().map_err(|source| DatapathError::Start {
            what: "eventfd",
            source,
        })?);
        crate::sys::set_nonblocking(tun.as_raw_fd(), true).map_err(|source| {
            DatapathError::Start {
                what: "TUN O_NONBLOCK",
                source,
            }
        })?;
        let counters = Arc::new(Counters::default());
        let mut workers = Vec::new();
        {
            let (tun, sock, table, stop, counters) = (
                tun.clone(),
                sock.clone(),
                table.clone(),
                stop.clone(),
                counters.clone(),
            );
            let h = std::thread::Builder::new()
                .name("weft-send".into())
                .spawn(move || send_loop(&tun, &sock, &table, &cfg, &stop, &counters))
                .map_err(|source| DatapathError::Start {
                    what: "send thread",
                    source,
                })?;
            workers.push(("send", h));
        }
        {
            let (stop2, counters2) = (stop.clone(), counters.clone());
            let h = std::thread::Builder::new()
                .name("weft-recv".into())
                .spawn(move || recv_loop(&tun, &sock, &table, &cfg, &stop2, &counters2))
                .map_err(|source| DatapathError::Start {
                    what: "receive thread",
                    source,
                })?;
            workers.push(("receive", h));
        }
        info!(
            batch = cfg.batch_size,
            mtu = cfg.tun_mtu,
            "data path running"
        );
        Ok(Datapath {
            stop,
            workers,
            counters,
        })
    }

    /// The packet counters.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Whether every worker is still running.
    pub fn is_running(&self) -> bool {
        self.workers.iter().all(|(_, h)| !h.is_finished())
    }

    /// Stops the workers and waits for them; returns the first worker error.
    pub fn stop(self) -> Result<(), DatapathError> {
        let _ = self.stop.signal();
        let mut first = Ok(());
        for (name, h) in self.workers {
            let r = h.join().unwrap_or(Err(DatapathError::Panicked(name)));
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

fn io_err(worker: &'static str, what: &'static str) -> impl FnOnce(io::Error) -> DatapathError {
    move |source| DatapathError::Io {
        worker,
        what,
        source,
    }
}

/// Most datagrams one UDP_SEGMENT send may carry (the kernel's UDP_MAX_SEGMENTS).
const MAX_GSO_SEGMENTS: usize = 64;
/// Most bytes one UDP_SEGMENT send may carry (a UDP length must fit 16 bits).
const MAX_GSO_BYTES: usize = 65000;
/// Room for a segmented 64 KiB super-packet: payload plus per-segment headers.
const TRAIN_CAPACITY: usize = 128 * 1024;

/// Where one outgoing message's bytes are: an in-place slot or a segment train.
#[derive(Debug, Clone, Copy)]
struct Out {
    train: bool,
    slot: usize,
    start: usize,
    len: usize,
    seg: u16,
    dst: SocketAddrV4,
}

/// TUN -> lookup -> (segment) -> encapsulate -> sendmmsg.
fn send_loop(
    tun: &Tun,
    sock: &UdpSocket,
    table: &SharedTable,
    cfg: &DatapathConfig,
    stop: &EventFd,
    counters: &Counters,
) -> Result<(), DatapathError> {
    let n_max = cfg.batch_size.max(1);
    let mut batch = Batch::new(n_max, MAX_PACKET + DEFAULT_HEADROOM, DEFAULT_HEADROOM);
    // Segment trains exist only when the TUN hands over TCP super-packets.
    let mut trains: Vec<Box<[u8]>> = if cfg.tso {
        (0..n_max)
            .map(|_| vec![0u8; TRAIN_CAPACITY].into_boxed_slice())
            .collect()
    } else {
        Vec::new()
    };
    // At most two messages per super-packet (MAX_GSO_BYTES), or one per segment without GSO.
    let mut outs: Vec<Out> = Vec::with_capacity(n_max * 64);
    let mut mmsg = Mmsg::new(n_max);
    let mut reader = table.reader();
    let mut local = LocalCounters::default();
    let mut icmp_buf = [0u8; VNET_HDR_LEN + icmpv4::MAX_ERROR_LEN];
    let vnet = tun.has_vnet_hdr();
    let hdr_len = if vnet { VNET_HDR_LEN } else { 0 };
    let mut udp_gso = cfg.udp_gso;
    let mut send_errors_logged = 0u32;
    loop {
        match wait_readable(tun.as_raw_fd(), stop, -1).map_err(io_err("send", "poll TUN"))? {
            Wake::Stop => return Ok(()),
            Wake::Timeout => continue,
            Wake::Ready => {}
        }
        let (bufs, _) = batch.slots_mut();
        let mut n = 0;
        while n < n_max {
            let b = &mut bufs[n];
            b.reset();
            match tun.read(b.recv_space()) {
                Ok(len) => {
                    b.set_len(len);
                    n += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(io_err("send", "read TUN")(e)),
            }
        }
        if n == 0 {
            continue;
        }
        let snapshot = reader.load();
        outs.clear();
        for i in 0..n {
            let b = &mut bufs[i];
            let vhdr = if vnet {
                VnetHdr::from_bytes(b.as_slice()).unwrap_or_default()
            } else {
                VnetHdr::default()
            };
            if b.advance(hdr_len).is_err() {
                local.drop(DropReason::OutboundMalformed);
                continue;
            }
            let dst = match encap::outbound_dst(b.as_slice()) {
                Ok(d) => d,
                Err(r) => {
                    local.drop(r);
                    continue;
                }
            };
            let Some(peer) = snapshot.lookup(dst) else {
                local.drop(DropReason::NoLease);
                if cfg.network.contains(dst) && !cfg.local_subnet.contains(dst) {
                    // The reply comes from the missing subnet's network address (where its
                    // node's VTEP would be): never one of this host's own addresses, which
                    // the kernel would drop as a martian arriving on the TUN.
                    let from = Subnet::containing(dst, snapshot.prefix_len())
                        .map(|s| s.addr())
                        .unwrap_or(dst);
                    let out = &mut icmp_buf[hdr_len..];
                    if let Ok(len) =
                        icmpv4::write_unreachable(b.as_slice(), from, Unreachable::Net, out)
                    {
                        // The vnet header stays zero: no offload for the reply.
                        if tun.write(&icmp_buf[..hdr_len + len]).is_ok() {
                            local.icmp += 1;
                        }
                    }
                }
                continue;
            };
            let prefix: &[u8] = match cfg.backend {
                Backend::Vxlan(_) => &peer.vxlan_header,
                Backend::Udp => &[],
            };
            if vhdr.gso_type & !offload::GSO_ECN == offload::GSO_TCPV4 && !trains.is_empty() {
                // A TCP super-packet: segment it into the slot's train, prefix each segment.
                let train = &mut trains[i];
                let t = match gso::segment_tcp4(
                    b.as_slice(),
                    usize::from(vhdr.gso_size),
                    prefix,
                    train,
                ) {
                    Ok(t) => t,
                    Err(_) => {
                        local.drop(DropReason::OutboundMalformed);
                        continue;
                    }
                };
                let inner = (t.total - t.count * prefix.len()) as u64;
                local.packets += t.count as u64;
                local.bytes += inner;
                local.peer(peer.public_ip, t.count as u64, inner, counters, true);
                let per_msg = if udp_gso {
                    (MAX_GSO_BYTES / t.seg_len).clamp(1, MAX_GSO_SEGMENTS)
                } else {
                    1
                };
                let mut off = 0;
                while off < t.total {
                    let len = (per_msg * t.seg_len).min(t.total - off);
                    let seg = if per_msg > 1 && len > t.seg_len {
                        t.seg_len as u16
                    } else {
                        0
                    };
                    outs.push(Out {
                        train: true,
                        slot: i,
                        start: off,
                        len,
                        seg,
                        dst: peer.underlay,
                    });
                    off += len;
                }
                continue;
            }
            if vhdr.gso_type != offload::GSO_NONE {
                local.drop(DropReason::OutboundMalformed);
                continue;
            }
            if vhdr.flags & offload::F_NEEDS_CSUM != 0
                && gso::complete_csum(
                    b.as_mut_slice(),
                    usize::from(vhdr.csum_start),
                    usize::from(vhdr.csum_offset),
                )
                .is_err()
            {
                local.drop(DropReason::OutboundMalformed);
                continue;
            }
            let len = b.len();
            let ok = match cfg.backend {
                Backend::Vxlan(_) => encap::encap_vxlan(b, &peer.vxlan_header).is_ok(),
                Backend::Udp => true,
            };
            if ok {
                local.packets += 1;
                local.bytes += len as u64;
                local.peer(peer.public_ip, 1, len as u64, counters, true);
                outs.push(Out {
                    train: false,
                    slot: i,
                    start: 0,
                    len: b.len(),
                    seg: 0,
                    dst: peer.underlay,
                });
            }
        }
        let gso_used = outs.iter().any(|o| o.seg > 0);
        let out = mmsg.send(
            sock.as_raw_fd(),
            outs.iter().map(|o| {
                let bytes: &[u8] = if o.train {
                    &trains[o.slot][o.start..o.start + o.len]
                } else {
                    bufs[o.slot].as_slice()
                };
                (bytes, o.dst, o.seg)
            }),
        );
        if out.failed > 0 {
            local.errors += out.failed as u64;
            if gso_used && matches!(out.last_errno, libc::EIO | libc::EINVAL) && udp_gso {
                udp_gso = false;
                warn!(
                    errno = out.last_errno,
                    "UDP GSO refused by the kernel; sending segments one by one from now on"
                );
            } else if send_errors_logged < 10 {
                send_errors_logged += 1;
                warn!(
                    failed = out.failed,
                    errno = out.last_errno,
                    "sendmmsg refused datagrams (logged at most 10 times)"
                );
            }
        }
        local.flush_tx(counters, n);
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

/// recvmmsg (trains with UDP_GRO) -> receive checks per datagram -> coalesce -> TUN.
fn recv_loop(
    tun: &Tun,
    sock: &UdpSocket,
    table: &SharedTable,
    cfg: &DatapathConfig,
    stop: &EventFd,
    counters: &Counters,
) -> Result<(), DatapathError> {
    let n_max = cfg.batch_size.max(1);
    let mut batch = Batch::new(n_max, MAX_PACKET + DEFAULT_HEADROOM, DEFAULT_HEADROOM);
    let mut mmsg = Mmsg::new(n_max);
    let mut reader = table.reader();
    let mut local = LocalCounters::default();
    let vnet = tun.has_vnet_hdr();
    // Coalescing needs the virtio-net header to hand super-packets to the TUN.
    let mut gro = (vnet && cfg.coalesce).then(Coalescer::new);
    let mut single = vec![0u8; VNET_HDR_LEN + MAX_PACKET];
    loop {
        match wait_readable(sock.as_raw_fd(), stop, -1).map_err(io_err("receive", "poll UDP"))? {
            Wake::Stop => return Ok(()),
            Wake::Timeout => continue,
            Wake::Ready => {}
        }
        let (bufs, meta) = batch.slots_mut();
        let n = mmsg
            .recv(sock.as_raw_fd(), bufs, meta)
            .map_err(io_err("receive", "recvmmsg"))?;
        if n == 0 {
            continue;
        }
        let snapshot = reader.load();
        for i in 0..n {
            let IpAddr::V4(sender) = meta[i].addr.ip() else {
                local.drop(DropReason::UnknownSender);
                continue;
            };
            let data = bufs[i].as_slice();
            let seg = match usize::from(meta[i].segment_size) {
                0 => data.len().max(1),
                s => s,
            };
            let Some(peer) = snapshot.lookup_underlay(sender) else {
                for _ in data.chunks(seg) {
                    local.drop(DropReason::UnknownSender);
                }
                continue;
            };
            for datagram in data.chunks(seg) {
                let inner = match &cfg.backend {
                    Backend::Vxlan(rx) => encap::decap_vxlan(datagram, rx),
                    Backend::Udp => encap::decap_udp(datagram),
                };
                let inner = match inner {
                    Ok(x) => x,
                    Err(r) => {
                        local.drop(r);
                        continue;
                    }
                };
                if let Err(r) =
                    encap::check_inner_route(inner.src, inner.dst, peer.subnet, cfg.local_subnet)
                {
                    local.drop(r);
                    continue;
                }
                let p = inner.packet;
                local.peer(peer.public_ip, 1, p.len() as u64, counters, false);
                if let Some(c) = gro.as_mut() {
                    let mut offer = c.offer(p);
                    if offer == Offer::FlushFirst {
                        flush_to_tun(c, tun, cfg.tun_mtu, &mut local);
                        offer = c.offer(p);
                    }
                    if offer == Offer::Taken {
                        continue;
                    }
                    flush_to_tun(c, tun, cfg.tun_mtu, &mut local);
                }
                // Alone: copy behind a virtio-net header (or write as is without one).
                if vnet {
                    let buf = &mut single[..VNET_HDR_LEN + p.len()];
                    buf[VNET_HDR_LEN..].copy_from_slice(p);
                    let hdr = offload::tun_write_hdr(&mut buf[VNET_HDR_LEN..], cfg.tun_mtu);
                    buf[..VNET_HDR_LEN].copy_from_slice(&hdr.to_bytes());
                    tun_write(tun, buf, 1, p.len(), &mut local);
                } else {
                    tun_write(tun, p, 1, p.len(), &mut local);
                }
            }
        }
        if let Some(c) = gro.as_mut() {
            flush_to_tun(c, tun, cfg.tun_mtu, &mut local);
        }
        local.flush_rx(counters, n);
    }
}
