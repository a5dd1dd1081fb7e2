//! Outgoing trains: how a batch's datagrams are chained into UDP_SEGMENT messages (equal
//! datagrams to one peer from one send socket, gathered by iovecs without copying), the
//! learned limit on a train's datagram size, and the choice of send socket per flow.
//! Pure bookkeeping: no I/O.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::buf::PacketBuf;
use crate::encap;
use crate::gso;

use super::MAX_SEND_SOCKETS;

/// Send sockets a batch may use: [`MAX_SEND_SOCKETS`] per address family.
const SOCKET_SLOTS: usize = 2 * MAX_SEND_SOCKETS;

/// Most datagrams one UDP_SEGMENT send may carry (the kernel's UDP_MAX_SEGMENTS).
pub(super) use crate::offload::UDP_MAX_SEGMENTS as MAX_GSO_SEGMENTS;
/// Most bytes one UDP_SEGMENT send may carry (a UDP length must fit 16 bits).
const MAX_GSO_BYTES: usize = 65000;
/// Room for the per-segment headers of one super-packet: 64 KiB holds 885 header blocks of
/// 74 bytes (VXLAN + Ethernet, IPv4 and TCP with timestamps), enough for any MSS above 74.
pub(super) const HEADERS_CAPACITY: usize = 64 * 1024;

/// What a piece of a message is.
#[derive(Debug, Clone, Copy)]
enum What {
    /// The slot's packet, encapsulated in place: one datagram.
    Whole,
    /// Segments `first..first + n` of the slot's super-packet (headers in the slot's header
    /// buffer, payload left in the slot).
    Segments {
        segs: gso::Segments,
        first: usize,
        n: usize,
    },
}

/// One link in the chain of pieces a message carries.
#[derive(Debug, Clone, Copy)]
struct Piece {
    slot: usize,
    what: What,
    /// The message's next piece.
    next: Option<usize>,
}

/// One outgoing message: a train of datagrams, every one `seg_len` bytes but the last, from
/// `pieces[head]` along `next` to `pieces[tail]`; so one UDP_SEGMENT message carries them even
/// when they come from several packets or super-packets (of one or several flows to one
/// peer). A train of one is a plain datagram.
#[derive(Debug, Clone, Copy)]
struct Out {
    head: usize,
    tail: usize,
    /// Datagrams so far.
    count: usize,
    /// Bytes of a full datagram (the UDP_SEGMENT size).
    seg_len: usize,
    /// May take more: no short datagram yet, and room left.
    open: bool,
    dst: SocketAddr,
    /// Index of the send socket (outer source port) of the packets' flows.
    sock: u8,
}

impl Out {
    /// The UDP_SEGMENT size to send with (0: one datagram).
    fn gso_size(&self) -> u16 {
        if self.count > 1 {
            self.seg_len as u16
        } else {
            0
        }
    }
}

/// The slices of one outgoing message, in order.
pub(super) struct Parts<'a> {
    pieces: &'a [Piece],
    bufs: &'a [PacketBuf],
    headers: &'a [Box<[u8]>],
    next: Option<usize>,
    whole: Option<&'a [u8]>,
    segments: Option<gso::SegmentParts<'a>>,
}

impl<'a> Parts<'a> {
    fn new(o: &Out, pieces: &'a [Piece], bufs: &'a [PacketBuf], headers: &'a [Box<[u8]>]) -> Self {
        Parts {
            pieces,
            bufs,
            headers,
            next: Some(o.head),
            whole: None,
            segments: None,
        }
    }
}

impl<'a> Iterator for Parts<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            if let Some(part) = self.whole.take() {
                return Some(part);
            }
            if let Some(part) = self.segments.as_mut().and_then(Iterator::next) {
                return Some(part);
            }
            let p = self.pieces.get(self.next?)?;
            self.next = p.next;
            let packet = self.bufs.get(p.slot)?.as_slice();
            match p.what {
                What::Whole => self.whole = Some(packet),
                What::Segments { segs, first, n } => {
                    self.segments =
                        Some(segs.parts(self.headers.get(p.slot)?, packet, first..first + n))
                }
            }
        }
    }
}

/// A batch's outgoing messages and the pieces of their trains.
#[derive(Debug)]
pub(super) struct Outgoing {
    msgs: Vec<Out>,
    pieces: Vec<Piece>,
    /// Per send socket (the IPv4 ones, then the IPv6 ones), its last message while that one
    /// may take more.
    open: [Option<usize>; SOCKET_SLOTS],
    /// Bit `s` set when socket `s` has a message.
    used: u128,
    /// Most datagrams per train (the kernel's limit, probed at start).
    max_segments: usize,
}

impl Outgoing {
    pub(super) fn with_capacity(msgs: usize, pieces: usize) -> Outgoing {
        Outgoing {
            msgs: Vec::with_capacity(msgs),
            pieces: Vec::with_capacity(pieces),
            open: [None; SOCKET_SLOTS],
            used: 0,
            max_segments: MAX_GSO_SEGMENTS,
        }
    }

    /// At most `n` datagrams per train (1 to [`MAX_GSO_SEGMENTS`]).
    pub(super) fn with_segment_limit(mut self, n: usize) -> Outgoing {
        self.max_segments = n.clamp(1, MAX_GSO_SEGMENTS);
        self
    }

    pub(super) fn clear(&mut self) {
        self.msgs.clear();
        self.pieces.clear();
        self.open = [None; SOCKET_SLOTS];
        self.used = 0;
    }

    /// Whether send socket `s` has a message in this batch.
    pub(super) fn uses(&self, s: usize) -> bool {
        self.used & (1 << s) != 0
    }

    /// Socket `s`'s messages, in order: the slices of each, its peer and its UDP_SEGMENT size.
    pub(super) fn messages<'a>(
        &'a self,
        s: usize,
        bufs: &'a [PacketBuf],
        headers: &'a [Box<[u8]>],
    ) -> impl Iterator<Item = (Parts<'a>, SocketAddr, u16)> + 'a {
        self.msgs
            .iter()
            .filter(move |o| usize::from(o.sock) == s)
            .map(move |o| {
                (
                    Parts::new(o, &self.pieces, bufs, headers),
                    o.dst,
                    o.gso_size(),
                )
            })
    }

    /// Queues the slot's packet (`len` bytes, encapsulated in place) for `dst` on send socket
    /// `sock`: it joins the socket's open train when that goes to the same peer with
    /// datagrams of the same size (a shorter one joins as the last), else starts one. Only
    /// datagrams of at most `train_max` bytes form trains (0: no UDP GSO).
    pub(super) fn push_whole(
        &mut self,
        slot: usize,
        len: usize,
        dst: SocketAddr,
        sock: u8,
        train_max: usize,
    ) {
        let per_msg = if len <= train_max {
            (MAX_GSO_BYTES / len.max(1)).clamp(1, self.max_segments)
        } else {
            1
        };
        let o = self.train_for(dst, sock, per_msg, len, |seg_len| len <= seg_len);
        let short = len < self.msgs[o].seg_len;
        self.append(o, slot, What::Whole, 1, per_msg, short);
    }

    /// Queues the segments of the super-packet in `slot` for `dst` on send socket `sock`:
    /// they join the socket's open train while it goes to the same peer with the same
    /// segment size and has room (up to 64 datagrams or [`MAX_GSO_BYTES`]), then fill new
    /// trains; a short last segment closes its train. A batch of super-packets so goes out
    /// in full trains, not in one full and one short message each (a 64 KiB super-packet is
    /// more than one UDP datagram can carry once every segment has its headers). One
    /// segment per message without UDP GSO or when a full segment is above `train_max`.
    pub(super) fn push_segments(
        &mut self,
        slot: usize,
        segs: gso::Segments,
        dst: SocketAddr,
        sock: u8,
        train_max: usize,
    ) {
        let full = segs.hdr_len + segs.mss;
        let per_msg = if full <= train_max {
            (MAX_GSO_BYTES / full).clamp(1, self.max_segments)
        } else {
            1
        };
        let short_tail = segs.payload_len % segs.mss != 0 || segs.payload_len == 0;
        let mut first = 0;
        while first < segs.count {
            let o = self.train_for(dst, sock, per_msg, full, |seg_len| seg_len == full);
            let n = (per_msg - self.msgs[o].count).min(segs.count - first);
            let what = What::Segments { segs, first, n };
            first += n;
            self.append(o, slot, what, n, per_msg, first == segs.count && short_tail);
        }
    }

    /// The socket's open train when it goes to `dst`, has room and `fits` its datagram
    /// size; else a new train of `seg_len`-byte datagrams.
    fn train_for(
        &mut self,
        dst: SocketAddr,
        sock: u8,
        per_msg: usize,
        seg_len: usize,
        fits: impl Fn(usize) -> bool,
    ) -> usize {
        let open = self.open[usize::from(sock)].filter(|&o| {
            let m = &self.msgs[o];
            m.open && m.dst == dst && m.count < per_msg && fits(m.seg_len)
        });
        open.unwrap_or_else(|| {
            self.used |= 1 << sock;
            let at = self.pieces.len();
            self.msgs.push(Out {
                head: at,
                tail: at,
                count: 0,
                seg_len,
                open: true,
                dst,
                sock,
            });
            self.msgs.len() - 1
        })
    }

    /// Appends a piece of `n` datagrams to train `o`; `short` (a datagram below the train's
    /// size) or a full train closes it.
    fn append(&mut self, o: usize, slot: usize, what: What, n: usize, per_msg: usize, short: bool) {
        let at = self.pieces.len();
        self.pieces.push(Piece {
            slot,
            what,
            next: None,
        });
        let m = &mut self.msgs[o];
        if m.count > 0 {
            self.pieces[m.tail].next = Some(at);
        } else {
            m.head = at;
        }
        m.tail = at;
        m.count += n;
        m.open = m.open && !short && m.count < per_msg;
        self.open[usize::from(m.sock)] = m.open.then_some(o);
    }
}

/// The send socket for a flow hash: the hash scaled onto `0..n` (1 <= n <= 64), as Linux
/// scales it onto a source-port range.
pub(super) fn pick_socket(hash: u32, n: usize) -> u8 {
    encap::flow_src_port(hash, 0, (n.max(1) - 1) as u16) as u8
}

/// After this long without a refusal, a learned train limit is dropped: the next trains
/// probe whether the underlay took its MTU back up (a refusal costs one syscall).
const TRAIN_LIMIT_REPROBE: Duration = Duration::from_secs(10);

/// Outer IPv4 and UDP headers: a datagram of `n` bytes is an IP packet of `n + 28`.
const OUTER_IP_UDP: usize = 28;
/// Outer IPv6 and UDP headers: a datagram of `n` bytes is an IP packet of `n + 48`.
const OUTER_IP6_UDP: usize = 48;

/// The outer IP and UDP header bytes in front of a datagram to `dst`.
pub(super) fn outer_headers(dst: SocketAddr) -> usize {
    match dst {
        SocketAddr::V4(_) => OUTER_IP_UDP,
        SocketAddr::V6(_) => OUTER_IP6_UDP,
    }
}

/// The largest datagram a UDP_SEGMENT train may carry, learned from refusals. The kernel
/// refuses a train whose segment plus headers exceeds the MTU it would fragment for (the
/// underlay's path MTU fell below what the node started with); such datagrams then leave
/// one by one, and the kernel fragments them.
#[derive(Debug)]
pub(super) struct TrainLimit {
    /// Largest datagram in a train (`usize::MAX`: no limit known).
    max: usize,
    /// When the limit was learned (re-probed [`TRAIN_LIMIT_REPROBE`] later).
    since: Option<Instant>,
    /// The path MTU last logged (`Some(None)`: logged, MTU unreadable), so a re-probe that
    /// learns the same does not log again.
    logged_mtu: Option<Option<u32>>,
}

impl TrainLimit {
    pub(super) fn new() -> TrainLimit {
        TrainLimit {
            max: usize::MAX,
            since: None,
            logged_mtu: None,
        }
    }

    /// The limit to build this batch's trains with; drops a stale one first.
    pub(super) fn current(&mut self) -> usize {
        if let Some(t) = self.since {
            if t.elapsed() >= TRAIN_LIMIT_REPROBE {
                self.max = usize::MAX;
                self.since = None;
            }
        }
        self.max
    }

    /// Whether `path_mtu` differs from the one last logged (and remembers it): a re-probe
    /// that learns the same is not logged again.
    pub(super) fn mtu_is_news(&mut self, path_mtu: Option<u32>) -> bool {
        let news = self.logged_mtu != Some(path_mtu);
        self.logged_mtu = Some(path_mtu);
        news
    }

    /// A train of `segment`-byte datagrams was refused; `path_mtu` is what the kernel's
    /// routing knows towards its peer, if it could be read, and `outer` the bytes of outer
    /// IP and UDP headers towards it. Returns the new limit.
    pub(super) fn learn(&mut self, segment: usize, path_mtu: Option<u32>, outer: usize) -> usize {
        let below = segment.saturating_sub(1);
        let fits = path_mtu.map_or(below, |m| (m as usize).saturating_sub(outer));
        self.max = self.max.min(below).min(fits);
        self.since = Some(Instant::now());
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::tcp_packet;

    /// Super-packets with `payloads` bytes each (MSS 1398), their slots and header buffers.
    fn super_packets(payloads: &[usize]) -> (Vec<PacketBuf>, Vec<Box<[u8]>>, Vec<gso::Segments>) {
        let mut bufs = Vec::new();
        let mut headers = Vec::new();
        let mut segs = Vec::new();
        for (i, &len) in payloads.iter().enumerate() {
            let mut b = PacketBuf::new(70_000, 0);
            b.fill_from(&tcp_packet(len, 0x10, 1000 * i as u32))
                .unwrap();
            let mut h = vec![0u8; HEADERS_CAPACITY].into_boxed_slice();
            segs.push(gso::segment_tcp4_headers(b.as_slice(), 1398, &[0x77; 22], &mut h).unwrap());
            bufs.push(b);
            headers.push(h);
        }
        (bufs, headers, segs)
    }

    /// The bytes message `m` carries.
    fn bytes(o: &Outgoing, m: usize, bufs: &[PacketBuf], headers: &[Box<[u8]>]) -> Vec<u8> {
        Parts::new(&o.msgs[m], &o.pieces, bufs, headers)
            .flatten()
            .copied()
            .collect()
    }

    /// The copied train of every segment of `slot`.
    fn train(
        bufs: &[PacketBuf],
        headers: &[Box<[u8]>],
        segs: &[gso::Segments],
        slot: usize,
    ) -> Vec<u8> {
        let s = segs[slot];
        s.parts(&headers[slot], bufs[slot].as_slice(), 0..s.count)
            .flatten()
            .copied()
            .collect()
    }

    #[test]
    fn super_packets_pack_into_full_trains() {
        let peer = SocketAddr::from(([192, 168, 1, 2], 8472));
        // 46 full segments each: alone, each would need a message of 44 and one of 2.
        let (bufs, headers, segs) = super_packets(&[46 * 1398, 46 * 1398, 46 * 1398]);
        let full = segs[0].hdr_len + 1398;
        assert_eq!(MAX_GSO_BYTES / full, 44);
        let mut o = Outgoing::with_capacity(4, 4);
        for (slot, s) in segs.iter().enumerate() {
            o.push_segments(slot, *s, peer, 0, usize::MAX);
        }
        let counts: Vec<usize> = o.msgs.iter().map(|m| m.count).collect();
        assert_eq!(counts, [44, 44, 44, 6], "138 segments in 4 messages, not 6");
        assert!(o
            .msgs
            .iter()
            .all(|m| usize::from(m.gso_size()) == full && m.sock == 0));
        // In order, byte for byte, the three trains one after another.
        let sent: Vec<u8> = (0..o.msgs.len())
            .flat_map(|m| bytes(&o, m, &bufs, &headers))
            .collect();
        let expect: Vec<u8> = (0..3)
            .flat_map(|s| train(&bufs, &headers, &segs, s))
            .collect();
        assert_eq!(sent, expect);
        // Every message but the last is exactly 44 full segments.
        assert_eq!(bytes(&o, 1, &bufs, &headers).len(), 44 * full);
    }

    #[test]
    fn short_tails_slots_and_peers_end_a_train() {
        let a = SocketAddr::from(([192, 168, 1, 2], 8472));
        let b = SocketAddr::from(([192, 168, 1, 3], 8472));
        let (bufs, headers, segs) =
            super_packets(&[3 * 1398 - 100, 2 * 1398, 2 * 1398, 1398, 4000]);
        let full = segs[0].hdr_len + 1398;
        let mut o = Outgoing::with_capacity(8, 8);
        o.push_segments(0, segs[0], a, 0, usize::MAX); // short tail: closed
        o.push_segments(1, segs[1], a, 0, usize::MAX); // new train
        o.push_whole(3, 100, a, 1, usize::MAX); // another socket: socket 0's train stays open
        o.push_segments(3, segs[3], a, 0, usize::MAX); // joins slot 1's train
        o.push_segments(2, segs[2], b, 0, usize::MAX); // other peer: new train
        o.push_whole(4, 100, a, 0, usize::MAX); // a smaller packet: a train of its own
        o.push_segments(4, segs[4], a, 0, usize::MAX); // may not overtake it: new train
        let shape: Vec<(usize, usize, u8)> = o
            .msgs
            .iter()
            .map(|m| (m.count, m.seg_len, m.sock))
            .collect();
        assert_eq!(
            shape,
            [
                (3, full, 0),
                (3, full, 0),
                (1, 100, 1),
                (2, full, 0),
                (1, 100, 0),
                (3, full, 0)
            ]
        );
        let joined: Vec<u8> = [1, 3]
            .iter()
            .flat_map(|&s| train(&bufs, &headers, &segs, s))
            .collect();
        assert_eq!(bytes(&o, 1, &bufs, &headers), joined);
        assert_eq!(bytes(&o, 2, &bufs, &headers), bufs[3].as_slice());
        // Without UDP GSO every segment is a message of its own.
        let mut o = Outgoing::with_capacity(8, 8);
        o.push_segments(0, segs[0], a, 0, 0);
        o.push_segments(1, segs[1], a, 0, 0);
        assert_eq!(o.msgs.len(), 5);
        assert!(o.msgs.iter().all(|m| m.gso_size() == 0));
    }

    #[test]
    fn equal_packets_to_one_peer_form_trains() {
        let a = SocketAddr::from(([192, 168, 1, 2], 8472));
        let b = SocketAddr::from(([192, 168, 1, 3], 8472));
        let bufs: Vec<PacketBuf> = (0..8u8)
            .map(|i| {
                let mut p = PacketBuf::new(256, 0);
                p.fill_from(&vec![i; if i == 5 { 60 } else { 114 }])
                    .unwrap();
                p
            })
            .collect();
        let mut o = Outgoing::with_capacity(8, 8);
        for (i, p) in bufs.iter().enumerate() {
            // Packet 6 goes to another peer; packet 5 is shorter: it ends its train.
            let dst = if i == 6 { b } else { a };
            o.push_whole(i, p.len(), dst, 0, usize::MAX);
        }
        let shape: Vec<(usize, usize, u16)> = o
            .msgs
            .iter()
            .map(|m| (m.count, m.seg_len, m.gso_size()))
            .collect();
        assert_eq!(shape, [(6, 114, 114), (1, 114, 0), (1, 114, 0)]);
        let first: Vec<u8> = (0..6).flat_map(|i| bufs[i].as_slice().to_vec()).collect();
        assert_eq!(bytes(&o, 0, &bufs, &[]), first);
        // At most 64 datagrams per train, fewer when they are large.
        let big: Vec<PacketBuf> = (0..100)
            .map(|_| {
                let mut p = PacketBuf::new(2048, 0);
                p.fill_from(&[7u8; 1472]).unwrap();
                p
            })
            .collect();
        let mut o = Outgoing::with_capacity(8, 8);
        for i in 0..100 {
            o.push_whole(i, 1472, a, 0, usize::MAX);
        }
        let counts: Vec<usize> = o.msgs.iter().map(|m| m.count).collect();
        assert_eq!(counts, [44, 44, 12]);
        assert_eq!(bytes(&o, 2, &big, &[]).len(), 12 * 1472);
        let mut o = Outgoing::with_capacity(8, 8);
        for i in 0..100 {
            o.push_whole(i, 114, a, 0, usize::MAX);
        }
        assert_eq!(o.msgs.iter().map(|m| m.count).collect::<Vec<_>>(), [64, 36]);
    }

    #[test]
    fn trains_stop_above_the_learned_limit_and_the_limit_expires() {
        let a = SocketAddr::from(([192, 168, 1, 2], 8472));
        let (_bufs, _headers, segs) = super_packets(&[46 * 1398]);
        let full = segs[0].hdr_len + 1398;
        let mut t = TrainLimit::new();
        assert_eq!(t.current(), usize::MAX);
        // A refused train of full-size datagrams on a 1400-byte path: 1372 bytes fit.
        assert_eq!(t.learn(full, Some(1400), OUTER_IP_UDP), 1400 - OUTER_IP_UDP);
        // An unreadable path MTU still stops trains of the refused size.
        assert_eq!(TrainLimit::new().learn(full, None, OUTER_IP_UDP), full - 1);
        // A path MTU that does not explain the refusal does not raise the limit above it.
        assert_eq!(
            TrainLimit::new().learn(full, Some(9000), OUTER_IP_UDP),
            full - 1
        );
        let max = t.current();
        let mut o = Outgoing::with_capacity(64, 64);
        o.push_segments(0, segs[0], a, 0, max);
        assert_eq!(o.msgs.len(), 46, "one message per segment above the limit");
        assert!(o.msgs.iter().all(|m| m.gso_size() == 0));
        // Small datagrams (ACKs) still ride in trains below the limit.
        for i in 0..10 {
            o.push_whole(i, 114, a, 0, max);
        }
        assert_eq!(o.msgs.last().map(|m| m.count), Some(10));
        // Once the re-probe time has passed, the limit is gone.
        t.since = Instant::now().checked_sub(TRAIN_LIMIT_REPROBE);
        assert_eq!(t.current(), usize::MAX);
        assert_eq!(t.since, None);
    }

    #[test]
    fn socket_pick_covers_the_range_and_is_stable() {
        for n in [1usize, 2, 3, 8, 64] {
            let mut seen = vec![false; n];
            for h in (0..4096u32).map(|i| i.wrapping_mul(0x9E37_79B9)) {
                let s = usize::from(pick_socket(h, n));
                assert!(s < n);
                assert_eq!(pick_socket(h, n), s as u8);
                seen[s] = true;
            }
            assert!(seen.iter().all(|&x| x), "every socket used for n={n}");
        }
        assert_eq!(pick_socket(u32::MAX, 64), 63);
    }
}
