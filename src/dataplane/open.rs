//! The data path's devices: the TUN queues (configured with the lease's address and the
//! overlay MTU), the tunnel-port sockets and the shared send sockets, CPU-local steering, and
//! the one offload probe at start that says what the kernel takes.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;

use tracing::{info, warn};

use crate::sys::iface;
use crate::sys::tun::{Tun, TunError};
use crate::table::SharedTable;

use super::trains::MAX_GSO_SEGMENTS;
use super::{
    Backend, Datapath, DatapathConfig, DatapathError, DatapathInfo, Devices, Ipv4Side, Ipv6Side,
    WorkerIo, MAX_SEND_SOCKETS, MAX_WORKERS,
};

/// Socket buffer size asked for on the underlay UDP sockets.
const SOCKET_BUFFER: i32 = 4 << 20;

/// What `weft run`'s flags ask of the data path.
#[derive(Debug, Clone)]
pub struct DatapathOptions {
    /// `--tun-name`.
    pub tun_name: String,
    /// Keep the TUN device (and its route) when weft exits.
    pub persist_tun: bool,
    /// Packets per I/O batch.
    pub batch_size: usize,
    /// Let the TUN hand over TCP super-packets (TSO4) and unfinished checksums.
    pub tun_offload: bool,
    /// Send segment trains as one UDP_SEGMENT message.
    pub udp_gso: bool,
    /// Receive trains (UDP_GRO) and coalesce TCP segments for the TUN.
    pub udp_gro: bool,
    /// Workers (TUN queues and tunnel sockets); 0 picks one per CPU.
    pub workers: usize,
    /// Send sockets (outer UDP source ports) the workers share; 0 picks four per worker.
    pub source_ports: usize,
    /// Threads per worker: 2 (one per direction) or 1 (both directions).
    pub threads_per_worker: u8,
    /// Pin workers to CPUs and steer packets to the worker of the CPU handling them.
    pub steer_by_cpu: bool,
}

/// Where the data path sits: from the node's lease, the network config and the underlay.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    /// Encapsulation (with our VNI and VTEP MAC for vxlan).
    pub backend: Backend,
    /// The IPv4 half: our subnet (its network address goes on the TUN), the Network (routed
    /// to the TUN) and the underlay address; `None` on an IPv6-only network.
    pub ipv4: Option<Ipv4Side>,
    /// The IPv6 half (its IPv6Network is routed to the TUN too); with no IPv4 half, the only
    /// one.
    pub ipv6: Option<Ipv6Side>,
    /// The TUN's MTU.
    pub tun_mtu: u32,
    /// The underlay interface's MTU at start (the data path then follows it).
    pub underlay_mtu: u32,
    /// The tunnel port (8472 vxlan, 8285 udp by default).
    pub port: u16,
}

/// What the kernel took of the offloads the flags asked for, probed once at start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offloads {
    /// The TUN hands over TCP super-packets with unfinished checksums (TSO4).
    pub tun_tso: bool,
    /// The TUN takes UDP super-packets (USO, Linux 6.2+): received UDP is coalesced too.
    pub tun_uso: bool,
    /// UDP GSO: the most datagrams one send carries (`None`: one datagram per send).
    pub udp_gso: Option<usize>,
    /// The tunnel sockets hand over trains of datagrams (UDP_GRO).
    pub udp_gro: bool,
    /// Received TCP segments are coalesced into super-packets for the TUN (`--udp-gro`).
    pub coalesce: bool,
}

/// Workers to run: `asked`, or for 0 enough to give each CPU this process may use one
/// data-path thread (CPUs / threads per worker), at least 1 and at most 16.
fn worker_count(asked: usize, threads_per_worker: usize) -> usize {
    if asked > 0 {
        return asked.min(MAX_WORKERS);
    }
    let cpus = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1);
    (cpus / threads_per_worker.max(1)).clamp(1, MAX_WORKERS)
}

impl Datapath {
    /// Opens and configures the TUN queues, binds the sockets, probes the offloads and
    /// starts the workers; everything opened belongs to the returned data path.
    pub fn open(
        opts: &DatapathOptions,
        at: &Placement,
        table: SharedTable,
    ) -> Result<Datapath, DatapathError> {
        let tuns = open_tun(opts)?;
        configure_tun(&tuns[0], opts.persist_tun, at)?;
        let (workers, tx) = open_sockets(opts, at, tuns)?;
        Self::run_on(Devices { workers, tx }, opts, at, table)
    }

    /// Runs on devices another process handed over ([`Datapath::stop_keeping_devices`]
    /// there): the TUN keeps its address, routes and MTU; the offloads are probed again and
    /// persistence set as the flags say. Nothing is opened or bound.
    pub fn adopt(
        devices: Devices,
        opts: &DatapathOptions,
        at: &Placement,
        table: SharedTable,
    ) -> Result<Datapath, DatapathError> {
        let first = devices
            .workers
            .first()
            .ok_or(DatapathError::Setup("no TUN queue handed over"))?;
        first.tun.set_persist(opts.persist_tun)?;
        info!(tun = %first.tun.name(), workers = devices.workers.len(), send_sockets = devices.tx.len(), "taking over the running data path's devices");
        Self::run_on(devices, opts, at, table)
    }

    /// Probes the offloads on `devices` and starts the workers on them.
    fn run_on(
        devices: Devices,
        opts: &DatapathOptions,
        at: &Placement,
        table: SharedTable,
    ) -> Result<Datapath, DatapathError> {
        let Devices { workers, tx } = devices;
        let name = workers
            .first()
            .map(|w| w.tun.name().to_string())
            .unwrap_or_default();
        let mut offloads = match workers.first() {
            Some(w) => probe_tun_offloads(&w.tun, opts, at.ipv6.is_some())?,
            None => return Err(DatapathError::Setup("1 to 16 workers are needed")),
        };
        probe_socket_offloads(&mut offloads, &workers, &tx, opts);
        let steered = opts.steer_by_cpu && workers.len() > 1 && steer_by_cpu(&workers);
        info!(
            tun_tso = offloads.tun_tso,
            udp_gso = offloads.udp_gso.is_some(),
            udp_gro = offloads.udp_gro,
            udp_coalescing = offloads.tun_uso,
            "offloads"
        );
        info!(
            addr = ?at.ipv4.map(|v4| SocketAddr::from((v4.local_ip, at.port))),
            addr6 = ?at.ipv6.map(|v6| SocketAddr::from((v6.public_ip, at.port))),
            workers = workers.len(),
            source_ports = tx.len(),
            "underlay sockets bound"
        );
        let info = DatapathInfo {
            tun: name,
            mtu: at.tun_mtu,
            offloads,
            workers: workers.len() as u32,
            threads_per_worker: opts.threads_per_worker,
        };
        let mut cfg = DatapathConfig {
            backend: at.backend,
            ipv4: at.ipv4,
            ipv6: at.ipv6,
            tun_mtu: at.tun_mtu as usize,
            mtu4: 0,
            batch_size: opts.batch_size,
            offloads,
            split: opts.threads_per_worker >= 2,
            pin: steered,
        };
        cfg.fit_underlay(at.underlay_mtu as usize);
        Datapath::start(workers, tx, table, cfg, info, at.underlay_mtu)
    }
}

/// Opens the TUN with one queue per worker, or one queue where multi-queue is refused.
fn open_tun(opts: &DatapathOptions) -> Result<Vec<Tun>, DatapathError> {
    let queues = worker_count(opts.workers, usize::from(opts.threads_per_worker));
    match Tun::open_queues(&opts.tun_name, true, queues) {
        Ok(t) => Ok(t),
        // Not a TUN at all (a tap, a bridge): no other mode opens it.
        Err(e @ TunError::NotTun { .. }) => Err(e.into()),
        // A device left persistent by a run in the other queue mode refuses this one
        // (EINVAL): take it as it is.
        Err(e) if queues > 1 => {
            warn!(error = %crate::error::Chain(&e), queues, "multi-queue TUN refused; running one worker");
            Ok(Tun::open_queues(&opts.tun_name, true, 1)?)
        }
        Err(e) => Tun::open_multi(&opts.tun_name, true, 1).map_err(|_| e.into()),
    }
}

/// Persistence, MTU, address and link state of the TUN.
fn configure_tun(tun: &Tun, persist: bool, at: &Placement) -> Result<(), DatapathError> {
    let name = tun.name();
    let iface_err = |what: &'static str| {
        move |source| DatapathError::Iface {
            iface: name.to_string(),
            what,
            source,
        }
    };
    // A persistent device keeps its address and the Network route while weft restarts, so
    // pod packets wait in (or drop at) the TUN instead of leaking to the default route.
    tun.set_persist(persist)?;
    iface::set_mtu(name, at.tun_mtu).map_err(iface_err("MTU"))?;
    // Our subnet's network address with the Network's prefix: the kernel adds the route for
    // the whole Network via the TUN (flannel's udp backend configures its TUN the same).
    if let Some(v4) = at.ipv4 {
        iface::set_ipv4(name, v4.local_subnet.addr(), v4.network.prefix_len())
            .map_err(iface_err("IPv4 address"))?;
    }
    // The same for IPv6: the IPv6Network is routed to the TUN, our own IPv6 subnet (on the
    // bridge) stays more specific.
    if let Some(v6) = at.ipv6 {
        iface::add_ipv6(name, v6.local_subnet.addr(), v6.network.prefix_len())
            .map_err(iface_err("IPv6 address"))?;
    }
    iface::set_up(name).map_err(iface_err("link up"))?;
    info!(tun = %name, mtu = at.tun_mtu, addr = ?at.ipv4.map(|v4| v4.local_subnet.addr()), route = ?at.ipv4.map(|v4| v4.network), route6 = ?at.ipv6.map(|v6| v6.network), "TUN configured");
    Ok(())
}

/// Asks the TUN for TSO4 (and TSO6 on a dual-stack node: TCP over IPv6 super-packets, which
/// the send side cuts to the IPv6 underlay's size) (kept) and for USO (probed, then turned off
/// again).
fn probe_tun_offloads(
    tun: &Tun,
    opts: &DatapathOptions,
    ipv6: bool,
) -> Result<Offloads, DatapathError> {
    let tso6 = if ipv6 { libc::TUN_F_TSO6 } else { 0 };
    let tso_flags = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | tso6;
    let tso = opts.tun_offload
        && match tun.set_offload(tso_flags) {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %crate::error::Chain(&e), "TUN segmentation offload refused; reading packets one by one");
                false
            }
        };
    // Linux 6.2+ knows USO (TUN_F_USO4 with TUN_F_USO6) and then takes UDP super-packets
    // (GSO_UDP_L4) written to the TUN. Probe by asking for it, then go back to TSO only:
    // with USO on, the TUN could also hand *us* UDP super-packets, which the send path does
    // not segment.
    let uso = opts.udp_gro
        && tun
            .set_offload(tso_flags | libc::TUN_F_USO4 | libc::TUN_F_USO6)
            .is_ok();
    if uso {
        tun.set_offload(if tso { tso_flags } else { 0 })?;
    }
    Ok(Offloads {
        tun_tso: tso,
        tun_uso: uso,
        udp_gso: None,
        udp_gro: false,
        coalesce: opts.udp_gro,
    })
}

/// UDP GSO (the kernel knows `UDP_SEGMENT`, as quinn-udp probes it) on the send sockets and
/// UDP_GRO on every tunnel socket, where the flags ask for them.
fn probe_socket_offloads(
    o: &mut Offloads,
    workers: &[WorkerIo],
    tx: &[UdpSocket],
    opts: &DatapathOptions,
) {
    o.udp_gso = match opts.udp_gso {
        true => tx
            .iter()
            .map(|s| crate::sys::mmsg::udp_gso_max_segments(s.as_fd()))
            .min()
            .flatten()
            .map(|n| n.min(MAX_GSO_SEGMENTS)),
        false => None,
    };
    if opts.udp_gso && o.udp_gso.is_none() {
        warn!("UDP GSO (UDP_SEGMENT) not supported by the kernel; sending datagrams one by one");
    }
    o.udp_gro = opts.udp_gro
        && workers
            .iter()
            .flat_map(|w| std::iter::once(&w.rx).chain(w.rx6.as_ref()))
            .all(|rx| match crate::sys::mmsg::enable_udp_gro(rx.as_fd()) {
                Ok(()) => true,
                Err(e) => {
                    warn!(error = %e, "UDP_GRO refused; receiving datagrams one by one");
                    false
                }
            });
}

/// Binds one tunnel-port socket per TUN queue (a SO_REUSEPORT group when there are several)
/// and the shared send sockets on ephemeral ports (the outer source ports); on a dual-stack
/// node the same again on the PublicIPv6. The send sockets are the IPv4 ones, then as many
/// IPv6 ones. On an IPv6-only network a worker's first tunnel socket is its IPv6 one, and
/// every send socket is IPv6.
fn open_sockets(
    opts: &DatapathOptions,
    at: &Placement,
    tuns: Vec<Tun>,
) -> Result<(Vec<WorkerIo>, Vec<UdpSocket>), DatapathError> {
    let n = tuns.len();
    let ip4 = at.ipv4.map(|v4| IpAddr::V4(v4.local_ip));
    let ip6 = at.ipv6.map(|v6| IpAddr::V6(v6.public_ip));
    let (first, second) = match (ip4, ip6) {
        (Some(a), b) => (a, b),
        (None, Some(a)) => (a, None),
        (None, None) => return Err(DatapathError::Setup("neither an IPv4 nor an IPv6 half")),
    };
    let workers = tuns
        .into_iter()
        .map(|tun| {
            Ok(WorkerIo {
                tun,
                rx: bind_udp(first, at.port, n > 1)?,
                rx6: second.map(|ip| bind_udp(ip, at.port, n > 1)).transpose()?,
            })
        })
        .collect::<Result<Vec<_>, DatapathError>>()?;
    let ports = match opts.source_ports {
        0 => 4 * n,
        k => k,
    }
    .clamp(1, MAX_SEND_SOCKETS);
    let tx = ip4
        .into_iter()
        .chain(ip6)
        .flat_map(|ip| std::iter::repeat_n(ip, ports))
        .map(|ip| bind_udp(ip, 0, false))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((workers, tx))
}

/// A UDP socket on the underlay address: DF off, large buffers.
fn bind_udp(ip: IpAddr, port: u16, reuse_port: bool) -> Result<UdpSocket, DatapathError> {
    let addr = SocketAddr::new(ip, port);
    let sock = crate::sys::bind_udp(addr, reuse_port)
        .map_err(|source| DatapathError::Bind { addr, source })?;
    let fd = sock.as_fd();
    // Outer packets without DF, as Linux's VXLAN device sends them: when the underlay's path
    // MTU falls below what the node started with, full-size packets fragment (here or on a
    // router) instead of being refused or dropped.
    if let Err(e) = crate::sys::set_df_off(fd) {
        warn!(error = %e, "could not clear DF on the underlay socket (IP_PMTUDISC_DONT)");
    }
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if crate::sys::setsockopt_int(fd, libc::SOL_SOCKET, force, SOCKET_BUFFER).is_err() {
            let _ = crate::sys::setsockopt_int(fd, libc::SOL_SOCKET, plain, SOCKET_BUFFER);
        }
    }
    Ok(sock)
}

/// CPU-local steering: the TUN queue and the socket of a packet are those of the CPU that
/// handles it (worker `i` is pinned to CPU `i`); false, with a warning, when the kernel
/// refuses either program.
fn steer_by_cpu(workers: &[WorkerIo]) -> bool {
    use crate::sys::steer;
    let n = workers.len() as u32;
    for rx in std::iter::once(&workers[0].rx).chain(workers[0].rx6.as_ref()) {
        if let Err(e) = steer::reuseport_by_cpu(rx.as_fd(), n) {
            warn!(error = %e, "SO_ATTACH_REUSEPORT_CBPF refused; no CPU-local steering");
            return false;
        }
    }
    if let Err(e) = steer::tun_steer_by_cpu(workers[0].tun.as_fd()) {
        warn!(error = %e, "TUN steering program refused (needs CAP_BPF); no CPU-local steering");
        return false;
    }
    info!(
        workers = n,
        "CPU-local steering: worker i pinned to CPU i, packets steered by CPU"
    );
    true
}
