//! The data path: worker threads moving packets between the TUN device and the underlay, in
//! batches, with buffers allocated once.
//!
//! Each worker owns one TUN queue (IFF_MULTI_QUEUE when there are several workers) and one
//! receive socket on the tunnel port (SO_REUSEPORT when there are several). The kernel
//! spreads flows over the TUN queues by flow hash (and keeps a flow on the queue its packets
//! were last written to), and over the sockets by the outer 4-tuple's hash. A worker runs
//! its two directions on two threads (the default: the most throughput) or on one, which
//! sleeps in `poll` on both and drains them turn about: a reply the local stack produces
//! while the worker writes a request to the TUN is then sent without another wake-up, for
//! lower latency and less single-stream throughput (see the README's performance section).
//!
//! * send (TUN -> UDP): read up to a batch of packets, look each destination up in the lease
//!   table snapshot (loaded once per batch), encapsulate in place (or segment a TCP
//!   super-packet: headers written per segment, the payload left where the TUN read put it),
//!   chain what goes to one peer into UDP_SEGMENT trains of equal datagrams gathered by
//!   iovecs, `sendmmsg` the trains. A destination inside the Network without a lease gets an
//!   ICMP net-unreachable back.
//! * receive (UDP -> TUN): `recvmmsg` a batch; per datagram, in DESIGN.md's order: the sender
//!   holds a lease, the VXLAN header and inner Ethernet are ours, the inner IPv4 header is
//!   sane, the inner source lies in the sender's subnet, the inner destination in ours; then
//!   coalesce TCP segments (each one's checksum verified first) and write to the TUN with a
//!   virtio-net header.
//!
//! Outer source ports: the workers share a few send sockets bound to ephemeral ports, and a
//! hash of the inner flow picks one, as Linux VXLAN picks a source port per flow (RFC 7348
//! section 5): the underlay's ECMP and the receivers' SO_REUSEPORT spread flows, and one flow
//! always leaves from one port, so spreading never reorders it.

pub mod counters;

use std::io;
use std::net::{IpAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::buf::{Batch, PacketBuf, DEFAULT_HEADROOM};
use crate::encap::{self, DropReason, VxlanRx};
use crate::gro::{Coalescer, Offer};
use crate::gso;
use crate::offload::{self, VnetHdr, VNET_HDR_LEN};
use crate::sys::mmsg::Mmsg;
use crate::sys::tun::Tun;
use crate::sys::{wait_any_readable, EventFd, Wake};
use crate::table::{SharedTable, TableReader};
use crate::wire::icmpv4::{self, Unreachable};
use crate::wire::Subnet;

pub use counters::{Counters, LocalCounters, MAX_WORKERS};

/// Largest datagram or TUN read a buffer holds (a kernel peer's GSO super-datagram).
const MAX_PACKET: usize = 65535;

/// Most send sockets (outer source ports) the workers share.
pub const MAX_SEND_SOCKETS: usize = 64;

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
    /// Coalesce received UDP datagrams too (the kernel takes GSO_UDP_L4 writes).
    pub coalesce_udp: bool,
    /// Run each direction of a worker on a thread of its own instead of one thread for both.
    pub split: bool,
    /// Pin worker `i`'s threads to the `i`-th CPU this process may use (CPU-local steering).
    pub pin: bool,
}

/// One worker's own devices.
#[derive(Debug)]
pub struct WorkerIo {
    /// Its TUN queue (the device itself when there is one worker).
    pub tun: Tun,
    /// Its socket on the tunnel port (one of a SO_REUSEPORT group when there are several).
    pub rx: UdpSocket,
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
    /// No worker or no send socket was given, or too many send sockets.
    #[error("starting the data path: {0}")]
    Setup(&'static str),
    /// A device read or poll failed in a way that ends the worker.
    #[error("{worker} worker: {what}")]
    Io {
        /// Which worker.
        worker: String,
        /// What failed.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A worker thread panicked.
    #[error("{0} worker panicked")]
    Panicked(String),
}

/// What a worker thread returns.
type WorkerResult = Result<(), DatapathError>;

/// Tells workers to stop: a flag they check between batches and an eventfd that wakes them.
#[derive(Debug)]
struct Stop {
    flag: AtomicBool,
    fd: EventFd,
}

/// The running workers. Dropping it without [`Datapath::stop`] leaves them running.
#[derive(Debug)]
pub struct Datapath {
    stop: Arc<Stop>,
    workers: Vec<(String, JoinHandle<WorkerResult>)>,
    counters: Arc<Counters>,
}

impl Datapath {
    /// Starts one worker per [`WorkerIo`]; all of them send through `tx` (the inner flow's
    /// hash picks the socket, hence the outer source port).
    pub fn start(
        workers: Vec<WorkerIo>,
        tx: Vec<UdpSocket>,
        table: SharedTable,
        cfg: DatapathConfig,
    ) -> Result<Datapath, DatapathError> {
        if workers.is_empty() || workers.len() > MAX_WORKERS {
            return Err(DatapathError::Setup("1 to 16 workers are needed"));
        }
        if tx.is_empty() || tx.len() > MAX_SEND_SOCKETS {
            return Err(DatapathError::Setup("1 to 64 send sockets are needed"));
        }
        let stop = Arc::new(Stop {
            flag: AtomicBool::new(false),
            fd: EventFd::new().map_err(|source| DatapathError::Start {
                what: "eventfd",
                source,
            })?,
        });
        let tx: Arc<[UdpSocket]> = tx.into();
        let counters = Arc::new(Counters::default());
        let n = workers.len();
        let mut handles = Vec::with_capacity(n);
        let cpus = if cfg.pin {
            crate::sys::steer::allowed_cpus()
        } else {
            Vec::new()
        };
        for (i, io) in workers.into_iter().enumerate() {
            crate::sys::set_nonblocking(io.tun.as_fd(), true).map_err(|source| {
                DatapathError::Start {
                    what: "TUN O_NONBLOCK",
                    source,
                }
            })?;
            let send = SendSide::new(i, &io, &cfg, table.reader());
            let recv = RecvSide::new(i, &io, &cfg, table.reader());
            let io = Arc::new(io);
            let spawn = |name: String,
                         f: Box<dyn FnOnce(&str) -> WorkerResult + Send>|
             -> Result<(String, JoinHandle<_>), DatapathError> {
                let n2 = name.clone();
                let pin_to = cfg
                    .pin
                    .then(|| cpus.get(i % cpus.len().max(1)).copied())
                    .flatten();
                let h = std::thread::Builder::new()
                    .name(name.clone())
                    .spawn(move || {
                        if let Some(cpu) = pin_to {
                            if let Err(e) = crate::sys::steer::pin_current_thread(cpu) {
                                warn!(cpu, error = %e, "could not pin the worker");
                            }
                        }
                        f(&n2)
                    })
                    .map_err(|source| DatapathError::Start {
                        what: "worker thread",
                        source,
                    })?;
                Ok((name, h))
            };
            let (io2, tx2, stop2, c2) = (io.clone(), tx.clone(), stop.clone(), counters.clone());
            if cfg.split {
                handles.push(spawn(
                    format!("weft-dp{i}tx"),
                    Box::new(move |name| {
                        let mut send = send;
                        run_one_side(name, io2.tun.as_fd(), &stop2, || {
                            send.run_once(&io2.tun, &tx2, &c2)
                        })
                    }),
                )?);
                let (io2, stop2, c2) = (io.clone(), stop.clone(), counters.clone());
                handles.push(spawn(
                    format!("weft-dp{i}rx"),
                    Box::new(move |name| {
                        let mut recv = recv;
                        run_one_side(name, io2.rx.as_fd(), &stop2, || {
                            recv.run_once(&io2.tun, &io2.rx, &c2)
                        })
                    }),
                )?);
            } else {
                handles.push(spawn(
                    format!("weft-dp{i}"),
                    Box::new(move |name| run_both(name, &io2, send, recv, &tx2, &stop2, &c2)),
                )?);
            }
        }
        counters.workers.store(n, Ordering::Relaxed);
        info!(
            workers = n,
            send_sockets = tx.len(),
            batch = cfg.batch_size,
            mtu = cfg.tun_mtu,
            threads_per_worker = if cfg.split { 2 } else { 1 },
            "data path running"
        );
        Ok(Datapath {
            stop,
            workers: handles,
            counters,
        })
    }

    /// The packet counters.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Whether every worker is still running.
    pub fn is_running(&self) -> bool {
        self.workers.iter().all(|(_, h)| !h.is_finished())
    }

    /// Stops the workers and waits for them; returns the first worker error.
    pub fn stop(self) -> Result<(), DatapathError> {
        self.stop.flag.store(true, Ordering::Release);
        let _ = self.stop.fd.signal();
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

/// Most datagrams one UDP_SEGMENT send may carry (the kernel's UDP_MAX_SEGMENTS).
const MAX_GSO_SEGMENTS: usize = 64;
/// Super-packets read before their trains are sent: 4 x 46 segments pack into 5 messages
/// instead of 8, and the peer still gets the first train after 4 TUN reads, not a batch's.
const SUPER_PACKETS_PER_SEND: usize = 4;
/// Most bytes one UDP_SEGMENT send may carry (a UDP length must fit 16 bits).
const MAX_GSO_BYTES: usize = 65000;
/// Room for the per-segment headers of one super-packet: 64 KiB holds 885 header blocks of
/// 74 bytes (VXLAN + Ethernet, IPv4 and TCP with timestamps), enough for any MSS above 74.
const HEADERS_CAPACITY: usize = 64 * 1024;

/// What one batch turn of a side did.
#[derive(Debug, Clone, Copy)]
struct Turn {
    /// Packets (send side) or buffers (receive side) taken from the queue.
    taken: usize,
    /// The queue was found empty: the side may sleep without another read.
    drained: bool,
}

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
    dst: SocketAddrV4,
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
struct Parts<'a> {
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
struct Outgoing {
    msgs: Vec<Out>,
    pieces: Vec<Piece>,
    /// Per send socket, its last message while that one may take more.
    open: [Option<usize>; MAX_SEND_SOCKETS],
    /// Bit `s` set when socket `s` has a message.
    used: u64,
}

impl Outgoing {
    fn with_capacity(msgs: usize, pieces: usize) -> Outgoing {
        Outgoing {
            msgs: Vec::with_capacity(msgs),
            pieces: Vec::with_capacity(pieces),
            open: [None; MAX_SEND_SOCKETS],
            used: 0,
        }
    }

    fn clear(&mut self) {
        self.msgs.clear();
        self.pieces.clear();
        self.open = [None; MAX_SEND_SOCKETS];
        self.used = 0;
    }

    /// Queues the slot's packet (`len` bytes, encapsulated in place) for `dst` on send socket
    /// `sock`: it joins the socket's open train when that goes to the same peer with
    /// datagrams of the same size (a shorter one joins as the last), else starts one. Only
    /// datagrams of at most `train_max` bytes form trains (0: no UDP GSO).
    fn push_whole(
        &mut self,
        slot: usize,
        len: usize,
        dst: SocketAddrV4,
        sock: u8,
        train_max: usize,
    ) {
        let per_msg = if len <= train_max {
            (MAX_GSO_BYTES / len.max(1)).clamp(1, MAX_GSO_SEGMENTS)
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
    fn push_segments(
        &mut self,
        slot: usize,
        segs: gso::Segments,
        dst: SocketAddrV4,
        sock: u8,
        train_max: usize,
    ) {
        let full = segs.hdr_len + segs.mss;
        let per_msg = if full <= train_max {
            (MAX_GSO_BYTES / full).clamp(1, MAX_GSO_SEGMENTS)
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
        dst: SocketAddrV4,
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

/// The send socket for a flow hash: the hash scaled onto `0..n` (1 <= n <= 64), as Linux
/// scales it onto a source-port range.
fn pick_socket(hash: u32, n: usize) -> u8 {
    encap::flow_src_port(hash, 0, (n.max(1) - 1) as u16) as u8
}

/// The send side of a worker: TUN queue -> underlay, with its buffers (allocated once).
struct SendSide {
    name: String,
    cfg: DatapathConfig,
    vnet: bool,
    reader: TableReader,
    tx_batch: Batch,
    /// Per slot, the segment headers of its super-packet (TSO only).
    headers: Vec<Box<[u8]>>,
    outs: Outgoing,
    tx_mmsg: Mmsg,
    icmp_buf: [u8; VNET_HDR_LEN + icmpv4::MAX_ERROR_LEN],
    udp_gso: bool,
    /// What the underlay took: the largest datagram a train may carry.
    trains: TrainLimit,
    send_errors_logged: u32,
    tx_local: LocalCounters,
}

/// After this long without a refusal, a learned train limit is dropped: the next trains
/// probe whether the underlay took its MTU back up (a refusal costs one syscall).
const TRAIN_LIMIT_REPROBE: Duration = Duration::from_secs(10);

/// Outer IPv4 and UDP headers: a datagram of `n` bytes is an IP packet of `n + 28`.
const OUTER_IP_UDP: usize = 28;

/// The largest datagram a UDP_SEGMENT train may carry, learned from refusals. The kernel
/// refuses a train whose segment plus headers exceeds the MTU it would fragment for (the
/// underlay's path MTU fell below what the node started with); such datagrams then leave
/// one by one, and the kernel fragments them.
#[derive(Debug)]
struct TrainLimit {
    /// Largest datagram in a train (`usize::MAX`: no limit known).
    max: usize,
    /// When the limit was learned (re-probed [`TRAIN_LIMIT_REPROBE`] later).
    since: Option<Instant>,
    /// The path MTU last logged (`Some(None)`: logged, MTU unreadable), so a re-probe that
    /// learns the same does not log again.
    logged_mtu: Option<Option<u32>>,
}

impl TrainLimit {
    fn new() -> TrainLimit {
        TrainLimit {
            max: usize::MAX,
            since: None,
            logged_mtu: None,
        }
    }

    /// The limit to build this batch's trains with; drops a stale one first.
    fn current(&mut self) -> usize {
        if let Some(t) = self.since {
            if t.elapsed() >= TRAIN_LIMIT_REPROBE {
                self.max = usize::MAX;
                self.since = None;
            }
        }
        self.max
    }

    /// A train of `segment`-byte datagrams was refused; `path_mtu` is what the kernel's
    /// routing knows towards its peer, if it could be read. Returns the new limit.
    fn learn(&mut self, segment: usize, path_mtu: Option<u32>) -> usize {
        let below = segment.saturating_sub(1);
        let fits = path_mtu.map_or(below, |m| (m as usize).saturating_sub(OUTER_IP_UDP));
        self.max = self.max.min(below).min(fits);
        self.since = Some(Instant::now());
        self.max
    }
}

/// The receive side of a worker: underlay socket -> TUN queue, with its buffers.
struct RecvSide {
    name: String,
    cfg: DatapathConfig,
    vnet: bool,
    reader: TableReader,
    rx_batch: Batch,
    rx_mmsg: Mmsg,
    gro: Option<Coalescer>,
    single: Vec<u8>,
    rx_local: LocalCounters,
}

/// Sleeps until one of `fds` is readable or the data path stops: `None` for stop, else the
/// readable descriptors (bit `i` for `fds[i]`).
fn sleep_on(name: &str, fds: &[BorrowedFd<'_>], stop: &Stop) -> Result<Option<u32>, DatapathError> {
    match wait_any_readable(fds, &stop.fd, -1) {
        Ok(_) if stop.flag.load(Ordering::Acquire) => Ok(None),
        Ok(Wake::Stop) => Ok(None),
        Ok(Wake::Ready(mask)) => Ok(Some(mask)),
        Ok(Wake::Timeout) => Ok(Some(0)),
        Err(source) => Err(DatapathError::Io {
            worker: name.to_string(),
            what: "poll",
            source,
        }),
    }
}

/// One thread for both directions: a batch each way, turn about, as `poll` reports work.
fn run_both(
    name: &str,
    io: &WorkerIo,
    mut send: SendSide,
    mut recv: RecvSide,
    tx: &[UdpSocket],
    stop: &Stop,
    counters: &Counters,
) -> Result<(), DatapathError> {
    const TUN: u32 = 1;
    const SOCK: u32 = 2;
    let fds = [io.tun.as_fd(), io.rx.as_fd()];
    // Every turn starts with a poll that says which side has work, so no read comes back
    // empty but the one that ends a TUN batch; after a receive that wrote to the TUN, the
    // send side looks too (the local stack may have answered already).
    let mut ready = TUN | SOCK;
    while !stop.flag.load(Ordering::Acquire) {
        let mut wrote = 0;
        if ready & SOCK != 0 {
            wrote = recv.run_once(&io.tun, &io.rx, counters)?.taken;
        }
        if ready & TUN != 0 || wrote > 0 {
            send.run_once(&io.tun, tx, counters)?;
        }
        match sleep_on(name, &fds, stop)? {
            Some(mask) => ready = mask,
            None => break,
        }
    }
    Ok(())
}

/// One direction of a split worker on a thread of its own: runs `batch` (one batch from
/// `fd`) until it finds the queue empty, then sleeps on `fd`.
///
/// (Measured and left out: letting the receive thread also take a turn at the send side
/// after it wrote to the TUN, so replies leave without waking the send thread. Single-stream
/// TCP fell from about 12 to under 10 Gbit/s, the same loss as the one-thread mode, and ping
/// did not improve reliably.)
fn run_one_side(
    name: &str,
    fd: BorrowedFd<'_>,
    stop: &Stop,
    mut batch: impl FnMut() -> Result<Turn, DatapathError>,
) -> Result<(), DatapathError> {
    while !stop.flag.load(Ordering::Acquire) {
        if batch()?.drained && sleep_on(name, &[fd], stop)?.is_none() {
            break;
        }
    }
    Ok(())
}

impl SendSide {
    fn new(worker: usize, io: &WorkerIo, cfg: &DatapathConfig, reader: TableReader) -> SendSide {
        let n_max = cfg.batch_size.max(1);
        SendSide {
            name: format!("weft-dp{worker}"),
            cfg: *cfg,
            vnet: io.tun.has_vnet_hdr(),
            reader,
            tx_batch: Batch::new(n_max, MAX_PACKET + DEFAULT_HEADROOM, DEFAULT_HEADROOM),
            // Segment headers exist only when the TUN hands over TCP super-packets.
            headers: if cfg.tso {
                (0..n_max)
                    .map(|_| vec![0u8; HEADERS_CAPACITY].into_boxed_slice())
                    .collect()
            } else {
                Vec::new()
            },
            // Room enough that the hot path does not grow them: without GSO one message per
            // segment (46 for a 64 KiB super-packet at MTU 1450; only a tiny MSS needs more,
            // and then they grow once), and a piece per message plus one per slot where a
            // train spans two super-packets.
            outs: Outgoing::with_capacity(n_max * 64, n_max * 65),
            tx_mmsg: Mmsg::new(n_max),
            icmp_buf: [0u8; VNET_HDR_LEN + icmpv4::MAX_ERROR_LEN],
            udp_gso: cfg.udp_gso,
            trains: TrainLimit::new(),
            send_errors_logged: 0,
            tx_local: LocalCounters::for_worker(worker),
        }
    }

    /// TUN -> lookup -> (segment) -> encapsulate -> sendmmsg, one batch.
    fn run_once(
        &mut self,
        tun: &Tun,
        tx: &[UdpSocket],
        counters: &Counters,
    ) -> Result<Turn, DatapathError> {
        let cfg = self.cfg;
        let n_max = cfg.batch_size.max(1);
        let vnet = self.vnet;
        let hdr_len = if vnet { VNET_HDR_LEN } else { 0 };
        let (bufs, _) = self.tx_batch.slots_mut();
        let snapshot = self.reader.load();
        let ntx = tx.len();
        // A first packet that is not a super-packet leaves on its own before the batch is
        // read on: a lone packet (a ping, an ACK, a request) does not wait for the read that
        // finds the queue empty; under load the rest of the batch still goes out together.
        let mut start = 0;
        let mut drained = false;
        while start < n_max && !drained {
            let (n, empty) =
                read_phase(tun, bufs, start, n_max, vnet).map_err(|source| DatapathError::Io {
                    worker: self.name.clone(),
                    what: "read TUN",
                    source,
                })?;
            drained = empty;
            if n == start {
                break;
            }
            let local = &mut self.tx_local;
            let headers = &mut self.headers;
            let outs = &mut self.outs;
            let icmp_buf = &mut self.icmp_buf;
            let train_max = if self.udp_gso {
                self.trains.current()
            } else {
                0
            };
            outs.clear();
            for i in start..n {
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
                    Err(DropReason::OutboundIpv6) if encap::is_ipv6_link_chatter(b.as_slice()) => {
                        counters.tun_ipv6_ignored.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
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
                let sock = pick_socket(encap::flow_hash(b.as_slice()), ntx);
                let prefix: &[u8] = match cfg.backend {
                    Backend::Vxlan(_) => &peer.vxlan_header,
                    Backend::Udp => &[],
                };
                if vhdr.gso_type & !offload::GSO_ECN == offload::GSO_TCPV4 && !headers.is_empty() {
                    // A TCP super-packet: write each segment's headers (prefix included) to
                    // the slot's header buffer; the payload is sent from where it lies.
                    let segs = match gso::segment_tcp4_headers(
                        b.as_slice(),
                        usize::from(vhdr.gso_size),
                        prefix,
                        &mut headers[i],
                    ) {
                        Ok(t) => t,
                        Err(_) => {
                            local.drop(DropReason::OutboundMalformed);
                            continue;
                        }
                    };
                    let inner = (segs.total() - segs.count * prefix.len()) as u64;
                    local.packets += segs.count as u64;
                    local.bytes += inner;
                    local.peer(peer.public_ip, segs.count as u64, inner, counters, true);
                    outs.push_segments(i, segs, peer.underlay, sock, train_max);
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
                    outs.push_whole(i, b.len(), peer.underlay, sock, train_max);
                }
            }
            // One sendmmsg per send socket that has packets (usually one: a batch is mostly
            // one flow).
            for (s, sock) in tx.iter().enumerate() {
                if outs.used & (1 << s) == 0 {
                    continue;
                }
                let out = self.tx_mmsg.send_gather(
                    sock.as_fd(),
                    outs.msgs
                        .iter()
                        .filter(|o| usize::from(o.sock) == s)
                        .map(|o| {
                            (
                                Parts::new(o, &outs.pieces, bufs, headers),
                                o.dst,
                                o.gso_size(),
                            )
                        }),
                );
                local.writes += out.sent as u64;
                if out.split_trains > 0 {
                    // Every datagram of a refused train was already resent on its own, in
                    // its place; learn so the next batches do not pay a refusal each.
                    local.refused_trains += out.split_trains as u64;
                    local.refused_train_datagrams += out.split_sent as u64;
                    if out.split_errno == libc::EIO && self.udp_gso {
                        self.udp_gso = false;
                        warn!(
                            errno = out.split_errno,
                            "UDP GSO refused by the kernel; sending segments one by one from now on"
                        );
                    } else {
                        let seg = usize::from(out.refused_segment);
                        let mtu = out.refused_to.and_then(|d| crate::sys::path_mtu(d).ok());
                        let max = self.trains.learn(seg, mtu);
                        if self.trains.logged_mtu != Some(mtu) {
                            self.trains.logged_mtu = Some(mtu);
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
                if out.failed > 0 {
                    local.errors += out.failed as u64;
                    if self.send_errors_logged < 10 {
                        self.send_errors_logged += 1;
                        warn!(
                            failed = out.failed,
                            errno = out.last_errno,
                            "sendmmsg refused datagrams (logged at most 10 times per worker)"
                        );
                    }
                }
            }
            start = n;
        }
        self.tx_local.flush_tx(counters, start);
        Ok(Turn {
            taken: start,
            drained,
        })
    }
}

impl RecvSide {
    fn new(worker: usize, io: &WorkerIo, cfg: &DatapathConfig, reader: TableReader) -> RecvSide {
        let n_max = cfg.batch_size.max(1);
        let vnet = io.tun.has_vnet_hdr();
        RecvSide {
            name: format!("weft-dp{worker}"),
            cfg: *cfg,
            vnet,
            reader,
            rx_batch: Batch::new(n_max, MAX_PACKET + DEFAULT_HEADROOM, DEFAULT_HEADROOM),
            rx_mmsg: Mmsg::new(n_max),
            // Coalescing needs the virtio-net header to hand super-packets to the TUN.
            gro: (vnet && cfg.coalesce).then(|| {
                if cfg.coalesce_udp {
                    Coalescer::with_udp()
                } else {
                    Coalescer::new()
                }
            }),
            single: vec![0u8; VNET_HDR_LEN + MAX_PACKET],
            rx_local: LocalCounters::for_worker(worker),
        }
    }

    /// recvmmsg (trains with UDP_GRO) -> receive checks per datagram -> coalesce -> TUN, one
    /// batch.
    fn run_once(
        &mut self,
        tun: &Tun,
        sock: &UdpSocket,
        counters: &Counters,
    ) -> Result<Turn, DatapathError> {
        let cfg = self.cfg;
        let vnet = self.vnet;
        let (bufs, meta) = self.rx_batch.slots_mut();
        let cap = bufs.len().min(meta.len());
        let n = match self.rx_mmsg.recv(sock.as_fd(), bufs, meta) {
            Ok(n) => n,
            Err(e) => {
                return Err(DatapathError::Io {
                    worker: self.name.clone(),
                    what: "recvmmsg",
                    source: e,
                })
            }
        };
        if n == 0 {
            return Ok(Turn {
                taken: 0,
                drained: true,
            });
        }
        let local = &mut self.rx_local;
        let gro = &mut self.gro;
        let single = &mut self.single;
        let snapshot = self.reader.load();
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
                let src_owner = snapshot.lookup(inner.src).map(|p| p.public_ip);
                if let Err(r) =
                    encap::check_inner_route(src_owner, sender, inner.dst, cfg.local_subnet)
                {
                    local.drop(r);
                    continue;
                }
                let p = inner.packet;
                if let Some(c) = gro.as_mut() {
                    let mut offer = c.offer(p);
                    if offer == Offer::FlushFirst {
                        flush_to_tun(c, tun, cfg.tun_mtu, local);
                        offer = c.offer(p);
                    }
                    match offer {
                        Offer::Taken => {
                            local.peer(peer.public_ip, 1, p.len() as u64, counters, false);
                            continue;
                        }
                        Offer::BadChecksum => {
                            local.drop(DropReason::InnerL4Checksum);
                            continue;
                        }
                        Offer::Alone | Offer::FlushFirst => {
                            flush_to_tun(c, tun, cfg.tun_mtu, local)
                        }
                    }
                }
                local.peer(peer.public_ip, 1, p.len() as u64, counters, false);
                // Alone: copy behind a virtio-net header (or write as is without one).
                if vnet {
                    let buf = &mut single[..VNET_HDR_LEN + p.len()];
                    buf[VNET_HDR_LEN..].copy_from_slice(p);
                    let hdr = offload::tun_write_hdr(&mut buf[VNET_HDR_LEN..], cfg.tun_mtu);
                    buf[..VNET_HDR_LEN].copy_from_slice(&hdr.to_bytes());
                    tun_write(tun, buf, 1, p.len(), local);
                } else {
                    tun_write(tun, p, 1, p.len(), local);
                }
            }
        }
        if let Some(c) = gro.as_mut() {
            flush_to_tun(c, tun, cfg.tun_mtu, local);
        }
        local.flush_rx(counters, n);
        // A non-blocking recvmmsg returns fewer than it may only when the queue ran dry.
        Ok(Turn {
            taken: n,
            drained: n < cap,
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gso::tests::tcp_packet;
    use std::net::Ipv4Addr;

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
        let peer = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 2), 8472);
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
        let a = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 2), 8472);
        let b = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 3), 8472);
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
        let a = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 2), 8472);
        let b = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 3), 8472);
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
        let a = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 2), 8472);
        let (_bufs, _headers, segs) = super_packets(&[46 * 1398]);
        let full = segs[0].hdr_len + 1398;
        let mut t = TrainLimit::new();
        assert_eq!(t.current(), usize::MAX);
        // A refused train of full-size datagrams on a 1400-byte path: 1372 bytes fit.
        assert_eq!(t.learn(full, Some(1400)), 1400 - OUTER_IP_UDP);
        // An unreadable path MTU still stops trains of the refused size.
        assert_eq!(TrainLimit::new().learn(full, None), full - 1);
        // A path MTU that does not explain the refusal does not raise the limit above it.
        assert_eq!(TrainLimit::new().learn(full, Some(9000)), full - 1);
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
