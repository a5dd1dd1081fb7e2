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
//!
//! The files: `open` (devices, sockets, the offload probe), `worker` (threads, stop,
//! [`Datapath`]), `send` and `recv` (one batch each way), `packet` (the per-packet decisions,
//! pure), `trains` (how datagrams are chained into UDP_SEGMENT messages), `counters`.

pub mod counters;
mod open;
pub mod packet;
mod recv;
mod send;
mod trains;
mod worker;

use std::io;
use std::net::{SocketAddr, UdpSocket};

use crate::encap::VxlanRx;
use crate::sys::tun::{Tun, TunError};
use crate::wire::{EthernetAddress, Subnet, Subnet6};

pub use counters::{Counters, LocalCounters, MAX_WORKERS};
pub use open::{DatapathOptions, Offloads, Placement};

pub use worker::{Datapath, IDLE_BEAT};

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

/// The IPv4 half of the node: IPv4 pod traffic in VXLAN (or flannel's udp format) over IPv4
/// UDP between the nodes' PublicIPs. Absent on an IPv6-only network (`EnableIPv4: false`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Side {
    /// Our lease's subnet (inner IPv4 destinations must lie in it; its network address goes
    /// on the TUN).
    pub local_subnet: Subnet,
    /// The whole overlay Network (routed to the TUN; no lease inside it -> ICMP unreachable).
    pub network: Subnet,
    /// The underlay IPv4 address the tunnel sockets bind to.
    pub local_ip: std::net::Ipv4Addr,
}

/// The IPv6 half of a dual-stack node: IPv6 pod traffic in VXLAN over IPv6 UDP between the
/// nodes' PublicIPv6 addresses, as flanneld's `flannel-v6.<VNI>` device carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Side {
    /// Our lease's IPv6 subnet (inner IPv6 destinations must lie in it).
    pub local_subnet: Subnet6,
    /// The IPv6Network (no lease inside it -> ICMPv6 unreachable).
    pub network: Subnet6,
    /// Our PublicIPv6: the IPv6 tunnel sockets bind to it.
    pub public_ip: std::net::Ipv6Addr,
    /// Our IPv6 VTEP MAC (vxlan): the inner destination MAC of IPv6 frames sent to us.
    pub vtep_mac: Option<EthernetAddress>,
    /// The largest IPv6 pod packet that fits the IPv6 underlay once encapsulated (the
    /// underlay MTU less 70 bytes, as flanneld sizes `flannel-v6.<VNI>`; the send side
    /// follows the underlay's MTU): larger ones are answered with ICMPv6 packet too big, TCP
    /// super-packets are cut to fit.
    pub mtu: usize,
}

/// Everything the workers need besides the devices and the table.
#[derive(Debug, Clone, Copy)]
pub struct DatapathConfig {
    /// Encapsulation.
    pub backend: Backend,
    /// The IPv4 half (`None` on an IPv6-only network: IPv4 pod packets are dropped).
    pub ipv4: Option<Ipv4Side>,
    /// The IPv6 half of a dual-stack or IPv6-only node (`None`: IPv6 pod packets are dropped).
    pub ipv6: Option<Ipv6Side>,
    /// The TUN's MTU (segment size for TCP super-packets written to it).
    pub tun_mtu: usize,
    /// The largest IPv4 pod packet that fits the underlay once encapsulated (the underlay's
    /// MTU less the encapsulation), as of this batch: the send side follows the underlay's
    /// MTU ([`Datapath::set_underlay_mtu`]). A larger packet with DF set is answered with
    /// ICMP fragmentation needed, as a router would, so the pod's TCP lowers its MSS; one
    /// without DF is sent, and the outer packet fragments; TCP super-packets are cut into
    /// segments that fit.
    pub mtu4: usize,
    /// Packets per batch.
    pub batch_size: usize,
    /// What the kernel takes (probed at start).
    pub offloads: Offloads,
    /// Run each direction of a worker on a thread of its own instead of one thread for both.
    pub split: bool,
    /// Pin worker `i`'s threads to the `i`-th CPU this process may use (CPU-local steering).
    pub pin: bool,
}

impl DatapathConfig {
    /// How many address families the node carries (1 or 2): the send sockets hold one set
    /// per family, the IPv4 set first.
    pub fn families(&self) -> usize {
        usize::from(self.ipv4.is_some()) + usize::from(self.ipv6.is_some())
    }

    /// Sizes the pod packets that fit an underlay of `mtu` bytes once encapsulated, in each
    /// family ([`DatapathConfig::mtu4`], [`Ipv6Side::mtu`]).
    pub fn fit_underlay(&mut self, mtu: usize) {
        let overhead = match self.backend {
            Backend::Vxlan(_) => crate::encap::VXLAN_OVERHEAD,
            Backend::Udp => crate::encap::UDP_OVERHEAD,
        };
        self.mtu4 = mtu.saturating_sub(overhead);
        if let Some(v6) = &mut self.ipv6 {
            v6.mtu = mtu.saturating_sub(crate::encap::VXLAN6_OVERHEAD);
        }
    }
}

/// What the data path runs with, for status reports.
#[derive(Debug, Clone)]
pub struct DatapathInfo {
    /// The TUN device's name.
    pub tun: String,
    /// Its MTU.
    pub mtu: u32,
    /// The offloads in use.
    pub offloads: Offloads,
    /// Workers (TUN queues).
    pub workers: u32,
    /// Threads per worker.
    pub threads_per_worker: u8,
}

/// A data path's open devices, outside any worker thread: what a handover passes to the
/// process taking over ([`Datapath::stop_keeping_devices`], [`Datapath::adopt`]).
#[derive(Debug)]
pub struct Devices {
    /// Each worker's TUN queue and tunnel sockets.
    pub workers: Vec<WorkerIo>,
    /// The send sockets: the IPv4 ones, then (dual stack) as many IPv6 ones.
    pub tx: Vec<UdpSocket>,
}

/// One worker's own devices.
#[derive(Debug)]
pub struct WorkerIo {
    /// Its TUN queue (the device itself when there is one worker).
    pub tun: Tun,
    /// Its socket on the tunnel port (one of a SO_REUSEPORT group when there are several):
    /// the IPv4 one, or on an IPv6-only network the IPv6 one (receive tells the families
    /// apart by the sender's address).
    pub rx: UdpSocket,
    /// Its IPv6 socket on the tunnel port, on a dual-stack node.
    pub rx6: Option<UdpSocket>,
}

impl WorkerIo {
    /// Second descriptors for the same open queue and sockets.
    fn try_clone(&self) -> io::Result<WorkerIo> {
        Ok(WorkerIo {
            tun: self.tun.try_clone()?,
            rx: self.rx.try_clone()?,
            rx6: self.rx6.as_ref().map(UdpSocket::try_clone).transpose()?,
        })
    }
}

/// What one batch turn of a side did.
#[derive(Debug, Clone, Copy)]
struct Turn {
    /// Packets (send side) or buffers (receive side) taken from the queue.
    taken: usize,
    /// The queue was found empty: the side may sleep without another read.
    drained: bool,
}

/// Why the data path could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// Opening or setting up the TUN device failed.
    #[error("TUN device")]
    Tun(#[from] TunError),
    /// Configuring the TUN interface failed.
    #[error("configuring {iface}: {what}")]
    Iface {
        /// Interface.
        iface: String,
        /// What was being set.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Binding an underlay UDP socket failed.
    #[error("binding UDP {addr} (is another flanneld or weft running on it?)")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
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
