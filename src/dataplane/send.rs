//! The send side of a worker: TUN queue -> [`packet::outbound`] -> trains -> `sendmmsg`, one
//! batch per turn, with buffers allocated once.

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;

use tracing::warn;

use crate::buf::{Batch, PacketBuf, DEFAULT_HEADROOM};
use crate::encap::DropReason;
use crate::offload::{self, VnetHdr, VNET_HDR_LEN};
use crate::sys::mmsg::{Mmsg, SendOutcome};
use crate::sys::tun::Tun;
use crate::table::{LeaseTable, TableReader};
use crate::wire::icmpv4::{self, Unreachable};
use crate::wire::icmpv6;

use super::packet::{self, Outbound, PeerRef, Shape};
use super::trains::{outer_headers, pick_socket, Outgoing, TrainLimit, HEADERS_CAPACITY};
use super::{Counters, DatapathConfig, DatapathError, LocalCounters, Turn, MAX_PACKET};

/// Super-packets read before their trains are sent: 4 x 46 segments pack into 5 messages
/// instead of 8, and the peer still gets the first train after 4 TUN reads, not a batch's.
const SUPER_PACKETS_PER_SEND: usize = 4;

/// The send side of a worker: TUN queue -> underlay, with its buffers (allocated once).
pub(super) struct SendSide {
    reader: TableReader,
    /// The underlay MTU the encoder's sizes were last fitted to.
    underlay_mtu: u32,
    batch: Batch,
    enc: Encoder,
    sender: Sender,
    local: LocalCounters,
}

/// A batch's per-packet work: decide, segment or encapsulate, queue into trains; ICMP
/// replies go straight back to the TUN.
struct Encoder {
    vnet: bool,
    cfg: DatapathConfig,
    /// Send sockets the flows are spread over.
    sockets: usize,
    /// Largest datagram a train may carry in this batch (0: no UDP GSO).
    train_max: usize,
    /// Per slot, the segment headers of its super-packet (TSO only).
    headers: Vec<Box<[u8]>>,
    outs: Outgoing,
    icmp_buf: [u8; VNET_HDR_LEN + icmpv4::MAX_ERROR_LEN],
    icmp6_buf: Box<[u8; VNET_HDR_LEN + icmpv6::MAX_ERROR_LEN]>,
}

/// Sends a batch's trains and learns from what the kernel refused.
struct Sender {
    name: String,
    mmsg: Mmsg,
    /// UDP GSO in use (off after the kernel refused it outright).
    udp_gso: bool,
    /// What the underlay took: the largest datagram a train may carry.
    trains: TrainLimit,
    errors_logged: u32,
}

impl SendSide {
    /// The send side of worker `worker`, spreading flows over `sockets` send sockets.
    pub(super) fn new(
        worker: usize,
        tun: &Tun,
        cfg: &DatapathConfig,
        reader: TableReader,
        sockets: usize,
    ) -> SendSide {
        let n_max = cfg.batch_size.max(1);
        let vnet = tun.has_vnet_hdr();
        let gso_segments = cfg.offloads.udp_gso.unwrap_or(1);
        SendSide {
            reader,
            underlay_mtu: 0,
            batch: Batch::new(n_max, MAX_PACKET + DEFAULT_HEADROOM, DEFAULT_HEADROOM),
            enc: Encoder {
                vnet,
                cfg: *cfg,
                sockets,
                train_max: 0,
                // Segment headers exist only when the TUN hands over TCP super-packets.
                headers: match cfg.offloads.tun_tso {
                    true => (0..n_max)
                        .map(|_| vec![0u8; HEADERS_CAPACITY].into_boxed_slice())
                        .collect(),
                    false => Vec::new(),
                },
                // Room enough that the hot path does not grow them: without GSO one message
                // per segment (46 for a 64 KiB super-packet at MTU 1450; only a tiny MSS needs
                // more, and then they grow once), and a piece per message plus one per slot
                // where a train spans two super-packets.
                outs: Outgoing::with_capacity(n_max * 64, n_max * 65)
                    .with_segment_limit(gso_segments),
                icmp_buf: [0u8; VNET_HDR_LEN + icmpv4::MAX_ERROR_LEN],
                icmp6_buf: Box::new([0u8; VNET_HDR_LEN + icmpv6::MAX_ERROR_LEN]),
            },
            sender: Sender {
                name: format!("weft-dp{worker}"),
                mmsg: Mmsg::new(n_max),
                udp_gso: cfg.offloads.udp_gso.is_some(),
                trains: TrainLimit::new(),
                errors_logged: 0,
            },
            local: LocalCounters::for_worker(worker),
        }
    }

    /// TUN -> lookup -> (segment) -> encapsulate -> sendmmsg, one batch.
    ///
    /// A first packet that is not a super-packet leaves on its own before the batch is read
    /// on: a lone packet (a ping, an ACK, a request) does not wait for the read that finds
    /// the queue empty; under load the rest of the batch still goes out together.
    pub(super) fn run_once(
        &mut self,
        tun: &Tun,
        tx: &[UdpSocket],
        counters: &Counters,
        underlay_mtu: u32,
    ) -> Result<Turn, DatapathError> {
        if underlay_mtu != self.underlay_mtu {
            self.underlay_mtu = underlay_mtu;
            self.enc.cfg.fit_underlay(underlay_mtu as usize);
        }
        let n_max = self.enc.cfg.batch_size.max(1);
        let (bufs, _) = self.batch.slots_mut();
        let table = self.reader.load();
        let mut start = 0;
        let mut drained = false;
        while start < n_max && !drained {
            let (n, empty) =
                read_phase(tun, bufs, start, n_max, self.enc.vnet).map_err(|source| {
                    DatapathError::Io {
                        worker: self.sender.name.clone(),
                        what: "read TUN",
                        source,
                    }
                })?;
            drained = empty;
            if n == start {
                break;
            }
            self.enc.train_max = self.sender.train_max();
            self.enc.outs.clear();
            for (slot, b) in bufs.iter_mut().enumerate().take(n).skip(start) {
                self.enc
                    .packet(slot, b, table, tun, &mut self.local, counters);
            }
            self.sender.send(tx, &self.enc, bufs, &mut self.local);
            start = n;
        }
        self.local.flush_tx(counters, start);
        Ok(Turn {
            taken: start,
            drained,
        })
    }
}

impl Encoder {
    /// One packet of the batch, in `slot`: queued for its peer, answered, or dropped.
    fn packet(
        &mut self,
        slot: usize,
        b: &mut PacketBuf,
        table: &LeaseTable,
        tun: &Tun,
        local: &mut LocalCounters,
        counters: &Counters,
    ) {
        let seg_headers = self.headers.get_mut(slot).map(|h| &mut h[..]);
        match packet::outbound(b, self.vnet, table, &self.cfg, seg_headers) {
            Outbound::Send(p) => {
                // IPv6 peers are reached from the IPv6 send sockets, which follow the IPv4 ones
                // (the only ones on an IPv6-only network).
                let family_base = match p.peer {
                    PeerRef::V6(_) if self.cfg.ipv4.is_some() => self.sockets as u8,
                    _ => 0,
                };
                let sock = pick_socket(p.flow_hash, self.sockets) + family_base;
                let (n, bytes) = (p.datagrams as u64, p.inner_bytes as u64);
                local.packets += n;
                local.bytes += bytes;
                local.peer(p.peer.underlay().ip(), n, bytes, counters, true);
                let (dst, max) = (p.peer.underlay(), self.train_max);
                match p.shape {
                    Shape::Segments(segs) => self.outs.push_segments(slot, segs, dst, sock, max),
                    Shape::Whole => self.outs.push_whole(slot, b.len(), dst, sock, max),
                }
            }
            Outbound::Unreachable { from } => {
                local.drop(DropReason::NoLease);
                self.reply_unreachable(b.as_slice(), from, Unreachable::Net, tun, local);
            }
            Outbound::TooBig { from, mtu } => {
                local.drop(DropReason::TooBig);
                let mtu = u16::try_from(mtu).unwrap_or(u16::MAX);
                let why = Unreachable::FragNeeded { mtu };
                self.reply_unreachable(b.as_slice(), from, why, tun, local);
            }
            Outbound::Unreachable6 { from } => {
                local.drop(DropReason::NoLease);
                self.reply6(b.as_slice(), Icmp6::Unreachable { from }, tun, local);
            }
            Outbound::TooBig6 { from, mtu } => {
                local.drop(DropReason::TooBig);
                self.reply6(b.as_slice(), Icmp6::TooBig { from, mtu }, tun, local);
            }
            Outbound::Ignored => {
                counters.tun_ipv6_ignored.fetch_add(1, Ordering::Relaxed);
            }
            Outbound::Drop(r) => local.drop(r),
        }
    }

    /// Writes an ICMP destination unreachable (`why`) for `packet` from `from` back to the
    /// TUN (behind a zero virtio-net header when the TUN has one: no offload for the reply).
    fn reply_unreachable(
        &mut self,
        packet: &[u8],
        from: std::net::Ipv4Addr,
        why: Unreachable,
        tun: &Tun,
        local: &mut LocalCounters,
    ) {
        let hdr_len = if self.vnet { VNET_HDR_LEN } else { 0 };
        let out = &mut self.icmp_buf[hdr_len..];
        if let Ok(len) = icmpv4::write_unreachable(packet, from, why, out) {
            if tun.write(&self.icmp_buf[..hdr_len + len]).is_ok() {
                local.icmp += 1;
            }
        }
    }

    /// Writes an ICMPv6 error for the IPv6 `packet` back to the TUN (behind a zero virtio-net
    /// header when the TUN has one).
    fn reply6(&mut self, packet: &[u8], what: Icmp6, tun: &Tun, local: &mut LocalCounters) {
        let hdr_len = if self.vnet { VNET_HDR_LEN } else { 0 };
        let out = &mut self.icmp6_buf[hdr_len..];
        let written = match what {
            Icmp6::Unreachable { from } => {
                icmpv6::write_unreachable(packet, from, icmpv6::Unreachable::NoRoute, out)
            }
            Icmp6::TooBig { from, mtu } => {
                let mtu = u32::try_from(mtu).unwrap_or(u32::MAX);
                icmpv6::write_packet_too_big(packet, from, mtu, out)
            }
        };
        if let Ok(len) = written {
            if tun.write(&self.icmp6_buf[..hdr_len + len]).is_ok() {
                local.icmp += 1;
            }
        }
    }
}

/// An ICMPv6 error the send side answers a pod's packet with.
#[derive(Debug, Clone, Copy)]
enum Icmp6 {
    /// Destination unreachable, no route (no lease inside the IPv6Network).
    Unreachable { from: std::net::Ipv6Addr },
    /// Packet too big: the IPv6 underlay carries at most `mtu`-byte pod packets.
    TooBig {
        from: std::net::Ipv6Addr,
        mtu: usize,
    },
}

impl Sender {
    /// The largest datagram this batch's trains may carry (0: no UDP GSO).
    fn train_max(&mut self) -> usize {
        match self.udp_gso {
            true => self.trains.current(),
            false => 0,
        }
    }

    /// One `sendmmsg` per send socket that has messages (usually one: a batch is mostly one
    /// flow).
    fn send(
        &mut self,
        tx: &[UdpSocket],
        enc: &Encoder,
        bufs: &[PacketBuf],
        local: &mut LocalCounters,
    ) {
        for (s, sock) in tx.iter().enumerate() {
            if !enc.outs.uses(s) {
                continue;
            }
            let msgs = enc.outs.messages(s, bufs, &enc.headers);
            let out = self.mmsg.send_gather(sock.as_fd(), msgs);
            local.writes += out.sent as u64;
            if out.split_trains > 0 {
                // Every datagram of a refused train was already resent on its own, in its
                // place; learn so the next batches do not pay a refusal each.
                local.refused_trains += out.split_trains as u64;
                local.refused_train_datagrams += out.split_sent as u64;
                self.learn_refusal(&out);
            }
            if out.failed > 0 {
                local.errors += out.failed as u64;
                if self.errors_logged < 10 {
                    self.errors_logged += 1;
                    warn!(
                        failed = out.failed,
                        errno = out.last_errno,
                        "sendmmsg refused datagrams (logged at most 10 times per worker)"
                    );
                }
            }
        }
    }

    /// The kernel refused a train: UDP GSO itself (EIO: off from now on), or datagrams above
    /// the underlay's path MTU (trains stop above it until the re-probe).
    fn learn_refusal(&mut self, out: &SendOutcome) {
        if out.split_errno == libc::EIO && self.udp_gso {
            self.udp_gso = false;
            warn!(
                errno = out.split_errno,
                "UDP GSO refused by the kernel; sending segments one by one from now on"
            );
            return;
        }
        let seg = usize::from(out.refused_segment);
        let mtu = out.refused_to.and_then(|d| crate::sys::path_mtu(d).ok());
        let outer = out.refused_to.map_or(0, outer_headers);
        let max = self.trains.learn(seg, mtu, outer);
        if self.trains.mtu_is_news(mtu) {
            warn!(
                worker = %self.name,
                errno = out.split_errno,
                peer = ?out.refused_to,
                path_mtu = ?mtu,
                datagram = seg,
                train_max = max,
                "underlay MTU below the datagrams: the kernel refused a UDP GSO train, \
                 resent one by one (fragmented, DF off); larger datagrams leave \
                 one by one, re-probed every 10 s (logged once per MTU)"
            );
        }
    }
}

/// Reads TUN packets into `bufs[start..]` for one send phase; returns the end of what was
/// read and whether the queue was found empty. The first phase (`start` 0) takes one packet
/// unless it is a super-packet; super-packets are bulk: up to [`SUPER_PACKETS_PER_SEND`] are
/// read before any is sent, so their segments pack into full trains, but no more, so the peer
/// starts on them while this side reads on.
fn read_phase(
    tun: &Tun,
    bufs: &mut [PacketBuf],
    start: usize,
    n_max: usize,
    vnet: bool,
) -> io::Result<(usize, bool)> {
    let mut want = if start == 0 { 1 } else { n_max };
    let mut supers = 0;
    let mut n = start;
    while n < want {
        let b = &mut bufs[n];
        b.reset();
        match tun.read(b.recv_space()) {
            Ok(len) => {
                b.set_len(len);
                n += 1;
                let gso = VnetHdr::from_bytes(b.as_slice())
                    .is_some_and(|h| h.gso_type != offload::GSO_NONE);
                if vnet && gso {
                    supers += 1;
                    want = if supers >= SUPER_PACKETS_PER_SEND {
                        n
                    } else {
                        n_max
                    };
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((n, true)),
            Err(e) => return Err(e),
        }
    }
    Ok((n, false))
}
