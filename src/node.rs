//! The node service (`weft run`): choose the underlay, take a lease, configure the TUN,
//! bind the UDP socket, run the data path until told to stop, then stop cleanly. host-gw
//! runs no data path: the kernel forwards along the direct routes weft keeps in step with the
//! leases ([`crate::host::routes`]); vxlan with `DirectRouting` runs both.

use std::future::Future;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use tracing::{error, info, warn};

use crate::config::BackendType;
use crate::dataplane::{Backend, Datapath, DatapathConfig, DatapathError, WorkerIo, MAX_WORKERS};
use crate::encap::VxlanRx;
use crate::host::routes::{self, RouteError, RouteOptions, RouteTable};
use crate::host::{self, Underlay, UnderlayError};
use crate::ops::NodeStatus;
use crate::store::subnet_env::read_previous_subnet;
use crate::store::{EtcdOptions, OwnLease, Store, StoreError, StoreOptions};
use crate::sys::iface;
use crate::sys::tun::{Tun, TunError};
use crate::table::{LeaseTable, SharedTable};

/// Socket buffer size asked for on the underlay UDP socket.
const SOCKET_BUFFER: i32 = 4 << 20;

/// Everything `weft run` needs, resolved from flags.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// etcd endpoints, prefix and credentials.
    pub etcd: EtcdOptions,
    /// How to pick the underlay: `--iface`, `--iface-regex`, `--iface-can-reach`,
    /// `--public-ip`.
    pub underlay: host::UnderlaySpec,
    /// `--iptables-resync`: how often the iptables rules are rewritten.
    pub iptables_resync: Duration,
    /// `--iptables-forward-rules`: FLANNEL-FWD accepts the Network in FORWARD.
    pub forward_rules: bool,
    /// `--subnet-file`.
    pub subnet_file: PathBuf,
    /// `--subnet-lease-renew-margin`.
    pub renew_margin: Duration,
    /// `--ip-masq` (written to subnet.env).
    pub ip_masq: bool,
    /// `--tun-name`.
    pub tun_name: String,
    /// Packets per I/O batch.
    pub batch_size: usize,
    /// Where to serve /healthz, if anywhere.
    pub healthz: Option<SocketAddr>,
    /// Keep the TUN device (and its route) when weft exits, for restarts without a leak.
    pub persist_tun: bool,
    /// Rewrite docker-style masquerade rules that catch pod-to-pod traffic.
    pub fix_masquerade: bool,
    /// Let the TUN hand over TCP super-packets (TSO4) and unfinished checksums.
    pub tun_offload: bool,
    /// Send segment trains as one UDP_SEGMENT message.
    pub udp_gso: bool,
    /// Receive trains (UDP_GRO) and coalesce TCP segments for the TUN.
    pub udp_gro: bool,
    /// Full reconcile period of the direct routes (host-gw, DirectRouting).
    pub route_resync: Duration,
    /// Data-path workers (TUN queues and tunnel sockets); 0 picks one per CPU.
    pub workers: usize,
    /// Send sockets (outer UDP source ports) the workers share; 0 picks four per worker.
    pub source_ports: usize,
    /// Threads per worker: 2 (one per direction) or 1 (both directions).
    pub threads_per_worker: u8,
    /// Pin workers to CPUs and steer packets to the worker of the CPU handling them.
    pub steer_by_cpu: bool,
}

/// Why the node could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// No underlay interface or address.
    #[error("choosing the underlay interface")]
    Underlay(#[from] UnderlayError),
    /// The store (etcd, lease) failed in a way retrying does not fix.
    #[error("subnet lease")]
    Store(#[from] StoreError),
    /// The direct routes (host-gw, DirectRouting) could not be managed.
    #[error("direct routes")]
    Routes(#[from] RouteError),
    /// The vxlan lease carries no VTEP MAC.
    #[error("our vxlan lease has no VtepMAC")]
    NoVtepMac,
    /// Opening the TUN device failed.
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
        source: std::io::Error,
    },
    /// Binding the underlay UDP socket failed.
    #[error("binding UDP {addr} (is another flanneld or weft running on it?)")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Serving /healthz failed.
    #[error("binding /healthz on {addr}")]
    Healthz {
        /// Address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The data path failed.
    #[error("data path")]
    Datapath(#[from] DatapathError),
    /// The masquerade rules could not be written.
    #[error("writing the masquerade rules (--ip-masq)")]
    Masq(#[from] crate::host::masq::MasqError),
    /// Our subnet changed under us (someone else took it while we were away).
    #[error("our subnet changed from {old} to {new}; restarting is required")]
    SubnetChanged {
        /// The subnet configured on the TUN.
        old: String,
        /// The subnet now leased.
        new: String,
    },
    /// Another weft of the same network runs in this network namespace.
    #[error("single instance")]
    Instance(#[from] crate::host::instance::InstanceError),
}

fn iface_err(iface: &str, what: &'static str) -> impl FnOnce(std::io::Error) -> NodeError {
    let iface = iface.to_string();
    move |source| NodeError::Iface {
        iface,
        what,
        source,
    }
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

/// CPU-local steering: the TUN queue and the socket of a packet are those of the CPU that
/// handles it (worker `i` is pinned to CPU `i`); false, with a warning, when the kernel
/// refuses either program.
fn steer_by_cpu(workers: &[WorkerIo]) -> bool {
    use crate::sys::steer;
    let n = workers.len() as u32;
    if let Err(e) = steer::reuseport_by_cpu(workers[0].rx.as_raw_fd(), n) {
        warn!(error = %e, "SO_ATTACH_REUSEPORT_CBPF refused; no CPU-local steering");
        return false;
    }
    if let Err(e) = steer::tun_steer_by_cpu(workers[0].tun.as_raw_fd()) {
        warn!(error = %e, "TUN steering program refused (needs CAP_BPF); no CPU-local steering");
        return false;
    }
    info!(
        workers = n,
        "CPU-local steering: worker i pinned to CPU i, packets steered by CPU"
    );
    true
}

/// Binds one tunnel-port socket per TUN queue (a SO_REUSEPORT group when there are several)
/// and the shared send sockets on ephemeral ports (the outer source ports).
fn open_workers(
    opts: &NodeOptions,
    underlay: &Underlay,
    port: u16,
    tuns: Vec<Tun>,
) -> Result<(Vec<WorkerIo>, Vec<UdpSocket>), NodeError> {
    let n = tuns.len();
    let mut workers = Vec::with_capacity(n);
    for tun in tuns {
        let rx = bind_udp(underlay, port, n > 1)?;
        workers.push(WorkerIo { tun, rx });
    }
    let ports = match opts.source_ports {
        0 => 4 * n,
        k => k,
    }
    .clamp(1, crate::dataplane::MAX_SEND_SOCKETS);
    let tx = (0..ports)
        .map(|_| bind_udp(underlay, 0, false))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((workers, tx))
}

fn bind_udp(underlay: &Underlay, port: u16, reuse_port: bool) -> Result<UdpSocket, NodeError> {
    let addr = SocketAddr::from((underlay.local_ip, port));
    let sock = crate::sys::bind_udp4(SocketAddrV4::new(underlay.local_ip, port), reuse_port)
        .map_err(|source| NodeError::Bind { addr, source })?;
    let fd = sock.as_raw_fd();
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

/// Warns about rules that masquerade pod-to-pod traffic (docker's default), with the fix;
/// rewrites them when asked to.
fn check_masquerade_pitfall(network: crate::wire::Subnet, subnet: crate::wire::Subnet, fix: bool) {
    crate::host::masq::check_pitfalls(network, subnet, fix);
}

/// What the data path runs with, for status reports.
struct DpInfo {
    tun: String,
    mtu: u32,
    offloads: crate::ops::status::Offloads,
    workers: u32,
    threads_per_worker: u8,
}

/// Opens the TUN, binds the UDP socket and starts the forwarding threads.
fn start_datapath(
    opts: &NodeOptions,
    underlay: &Underlay,
    config: &crate::config::NetworkConfig,
    own: &OwnLease,
    backend: Backend,
    shared: &SharedTable,
) -> Result<(Datapath, DpInfo), NodeError> {
    let tun_mtu = config.overlay_mtu(underlay.mtu);
    if let Some(m) = config.mtu_mismatch(underlay.mtu) {
        warn!(iface = %underlay.iface, "{m}");
    }

    let queues = worker_count(opts.workers, usize::from(opts.threads_per_worker));
    let tuns = match Tun::open_queues(&opts.tun_name, true, queues) {
        Ok(t) => t,
        // A device left persistent by a run in the other queue mode refuses this one
        // (EINVAL): take it as it is.
        Err(e) if queues > 1 => {
            warn!(error = %e, queues, "multi-queue TUN refused; running one worker");
            Tun::open_queues(&opts.tun_name, true, 1)?
        }
        Err(e) => match Tun::open_multi(&opts.tun_name, true, 1) {
            Ok(t) => t,
            Err(_) => return Err(e.into()),
        },
    };
    let tun = &tuns[0];
    let name = tun.name().to_string();
    // A persistent device keeps its address and the Network route while weft restarts, so
    // pod packets wait in (or drop at) the TUN instead of leaking to the default route.
    tun.set_persist(opts.persist_tun)?;
    iface::set_mtu(&name, tun_mtu).map_err(iface_err(&name, "MTU"))?;
    // Our subnet's network address with the Network's prefix: the kernel adds the route
    // for the whole Network via the TUN (flannel's udp backend configures its TUN the same).
    iface::set_ipv4(&name, own.subnet.addr(), config.network.prefix_len())
        .map_err(iface_err(&name, "IPv4 address"))?;
    iface::set_up(&name).map_err(iface_err(&name, "link up"))?;
    info!(tun = %name, mtu = tun_mtu, addr = %own.subnet.addr(), route = %config.network, "TUN configured");

    let tso = opts.tun_offload
        && match tun.set_offload(libc::TUN_F_CSUM | libc::TUN_F_TSO4) {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %e, "TUN segmentation offload refused; reading packets one by one");
                false
            }
        };

    // Linux 6.2+ knows USO (TUN_F_USO4 with TUN_F_USO6) and then takes UDP super-packets
    // (GSO_UDP_L4) written to the TUN. Probe by asking for it, then go back to TSO only:
    // with USO on, the TUN could also hand *us* UDP super-packets, which the send path does
    // not segment.
    let uso = opts.udp_gro
        && tun
            .set_offload(
                libc::TUN_F_CSUM
                    | libc::TUN_F_TSO4
                    | crate::offload::TUN_F_USO4
                    | crate::offload::TUN_F_USO6,
            )
            .is_ok();
    if uso {
        let back = if tso {
            libc::TUN_F_CSUM | libc::TUN_F_TSO4
        } else {
            0
        };
        tun.set_offload(back)?;
    }
    let (workers, tx) = open_workers(opts, underlay, config.backend.port, tuns)?;
    let steered = opts.steer_by_cpu && workers.len() > 1 && steer_by_cpu(&workers);
    let gro = opts.udp_gro
        && workers.iter().all(
            |w| match crate::sys::mmsg::enable_udp_gro(w.rx.as_raw_fd()) {
                Ok(()) => true,
                Err(e) => {
                    warn!(error = %e, "UDP_GRO refused; receiving datagrams one by one");
                    false
                }
            },
        );
    info!(
        tun_tso = tso,
        udp_gso = opts.udp_gso,
        udp_gro = gro,
        udp_coalescing = uso,
        "offloads"
    );
    info!(
        addr = %SocketAddr::from((underlay.local_ip, config.backend.port)),
        workers = workers.len(),
        source_ports = tx.len(),
        "underlay sockets bound"
    );

    let info = DpInfo {
        tun: name,
        mtu: tun_mtu,
        offloads: crate::ops::status::Offloads {
            tun_tso: tso,
            udp_gso: opts.udp_gso,
            udp_gro: gro,
        },
        workers: workers.len() as u32,
        threads_per_worker: opts.threads_per_worker,
    };
    let dp = Datapath::start(
        workers,
        tx,
        shared.clone(),
        DatapathConfig {
            backend,
            local_subnet: own.subnet,
            network: config.network,
            tun_mtu: tun_mtu as usize,
            batch_size: opts.batch_size,
            tso,
            udp_gso: opts.udp_gso,
            coalesce: opts.udp_gro,
            coalesce_udp: uso,
            split: opts.threads_per_worker >= 2,
            pin: steered,
        },
    )?;
    Ok((dp, info))
}

/// A task that stops when this value goes.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the node until `shutdown` completes or something fails for good.
pub async fn run(opts: NodeOptions, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
    tokio::pin!(shutdown);
    // Before anything touches etcd, the subnet file, a port or a device.
    let instance = crate::host::instance::InstanceLock::acquire(&opts.etcd.prefix)?;
    tracing::debug!(socket = instance.name(), "single-instance socket held");
    // The ops server comes first, as flanneld serves healthz before it reads its config:
    // /healthz answers while etcd is out of reach, /readyz says why the node is not ready,
    // and the state is filled in as the node comes up. Dropping `_ops` stops it.
    let shared = SharedTable::new(LeaseTable::empty(32));
    let ops_state = crate::ops::OpsState::new(shared.clone());
    let _ops = match opts.healthz {
        Some(addr) => Some(
            crate::ops::spawn(addr, ops_state.clone())
                .await
                .map_err(|source| NodeError::Healthz { addr, source })?,
        ),
        None => None,
    };
    // `weft status` without flags asks the instance socket.
    let _local_status = match instance.listener() {
        Ok(l) => Some(AbortOnDrop(tokio::spawn(crate::ops::local::serve(
            l,
            ops_state.clone(),
        )))),
        Err(e) => {
            warn!(error = %e, "no local status socket: `weft status` needs --healthz-port");
            None
        }
    };
    ops_state.set_phase("choosing the underlay interface");
    let underlay = host::choose_underlay(&opts.underlay)?;
    info!(iface = %underlay.iface, local_ip = %underlay.local_ip, public_ip = %underlay.public_ip, mtu = underlay.mtu, "underlay chosen");

    ops_state.set_phase("waiting for etcd: no network config or lease yet");
    let mut sopts = StoreOptions::new(opts.etcd.clone(), underlay.public_ip);
    sopts.subnet_file = opts.subnet_file.clone();
    sopts.renew_margin = opts.renew_margin;
    sopts.underlay_mtu = underlay.mtu;
    sopts.ip_masq = opts.ip_masq;
    let store = tokio::select! {
        s = Store::start(sopts, shared.clone()) => s?,
        _ = &mut shutdown => {
            info!("stopped before the node was up");
            return Ok(());
        }
    };
    let config = store.config().clone();
    let own = store.own_lease();
    info!(subnet = %own.subnet, network = %config.network, backend = config.backend.kind.as_str(), "lease acquired");
    ops_state.set_phase("lease acquired; starting the data path");

    // host-gw: direct routes to every peer and no data path; vxlan + DirectRouting: direct
    // routes to peers on our segment (more specific than the TUN's Network route) and the
    // tunnel for the rest.
    let backend = match config.backend.kind {
        BackendType::Vxlan => Some(Backend::Vxlan(VxlanRx {
            vni: config.backend.vni,
            vtep_mac: own.vtep_mac().ok_or(NodeError::NoVtepMac)?,
        })),
        BackendType::Udp => Some(Backend::Udp),
        BackendType::HostGw => None,
    };
    let direct = match config.backend.kind {
        BackendType::HostGw => Some(false),
        BackendType::Vxlan if config.backend.direct_routing => Some(true),
        _ => None,
    };

    check_masquerade_pitfall(config.network, own.subnet, opts.fix_masquerade);
    let rules = crate::host::masq::Rules {
        masquerade: opts.ip_masq,
        forward: opts.forward_rules,
    };
    use crate::ops::status::IptablesState;
    let iptables = std::cell::Cell::new(IptablesState::Off);
    match crate::host::masq::apply(config.network, own.subnet, rules) {
        Ok(()) if rules.any() => {
            iptables.set(IptablesState::Ok);
            info!(network = %config.network, subnet = %own.subnet, masquerade = rules.masquerade, forward = rules.forward, "iptables rules written")
        }
        Ok(()) => {}
        // --ip-masq was asked for: without it pods leaving the overlay would carry their own
        // addresses onto the underlay, so refuse to run.
        Err(e) if rules.masquerade => {
            store.shutdown().await;
            return Err(e.into());
        }
        Err(e) => {
            iptables.set(IptablesState::Failed);
            warn!(error = %e, "FLANNEL-FWD forward rules could not be written: where FORWARD's policy is DROP, pod traffic will not cross this host (--iptables-forward-rules=false turns them off)");
        }
    }

    let (dp, dp_info) = match backend {
        Some(b) => {
            let (dp, info) = start_datapath(&opts, &underlay, &config, &own, b, &shared)?;
            (Some(dp), Some(info))
        }
        None => (None, None),
    };
    let (route_stop, route_stop_rx) = tokio::sync::watch::channel(false);
    let route_task = match direct {
        Some(only_connected) => {
            let table = match RouteTable::open() {
                Ok(t) => t,
                Err(e) => {
                    if let Some(dp) = dp {
                        let _ = dp.stop();
                    }
                    store.shutdown().await;
                    return Err(e.into());
                }
            };
            info!(
                protocol = routes::RTPROT_WEFT,
                resync_secs = opts.route_resync.as_secs(),
                same_segment_only = only_connected,
                "managing direct routes"
            );
            Some(tokio::spawn(routes::run(
                table,
                shared.clone(),
                RouteOptions {
                    direct_only_connected: only_connected,
                    network: config.network,
                    underlay_iface: underlay.iface.clone(),
                    own_subnet: own.subnet,
                    own_ip: underlay.public_ip,
                    resync: opts.route_resync,
                },
                route_stop_rx,
            )))
        }
        None => None,
    };
    if let Some(d) = &dp {
        ops_state.set_counters(d.counters().clone());
    }
    let stop_all = |dp: Option<Datapath>| {
        let _ = route_stop.send(true);
        dp.map(|d| d.stop())
    };
    let status_cell: Arc<ArcSwapOption<NodeStatus>> = ops_state.status.clone();
    let resync_ticks = opts.iptables_resync.as_secs().max(1);
    let started = Instant::now();
    let snapshot_status = |dp: Option<&Datapath>, store: &crate::store::StoreHandle| {
        let own = store.own_lease();
        Arc::new(NodeStatus {
            subnet: own.subnet.to_string(),
            network: config.network.to_string(),
            backend: config.backend.kind.as_str().to_string(),
            iface: underlay.iface.clone(),
            public_ip: underlay.public_ip,
            vtep_mac: own.vtep_mac().map(|m| m.to_string()),
            tun: dp_info
                .as_ref()
                .map_or_else(|| "-".to_string(), |i| i.tun.clone()),
            mtu: dp_info.as_ref().map_or(underlay.mtu, |i| i.mtu),
            etcd_up: store.etcd_reachable(),
            lease_expires_in_secs: own
                .expires_at
                .saturating_duration_since(tokio::time::Instant::now())
                .as_secs(),
            // host-gw has no data path: the kernel forwards.
            datapath_running: dp.is_none_or(|d| d.is_running()),
            subnet_env_written: read_previous_subnet(&opts.subnet_file) == Some(own.subnet),
            offloads: dp_info.as_ref().map(|i| i.offloads).unwrap_or_default(),
            workers: dp_info.as_ref().map_or(0, |i| i.workers),
            threads_per_worker: dp_info.as_ref().map_or(0, |i| i.threads_per_worker),
            iptables: iptables.get(),
            subnet_file: opts.subnet_file.display().to_string(),
            etcd_endpoints: opts.etcd.endpoints.clone(),
            uptime_secs: started.elapsed().as_secs(),
        })
    };
    status_cell.store(Some(snapshot_status(dp.as_ref(), &store)));
    // When each current lease was first seen, for `weft status`'s AGE column.
    let peer_seen: Arc<std::sync::Mutex<std::collections::HashMap<crate::wire::Subnet, Instant>>> =
        ops_state.peer_seen.clone();
    let note_peers =
        |seen: &std::sync::Mutex<std::collections::HashMap<crate::wire::Subnet, Instant>>| {
            let table = shared.load_full();
            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.retain(|s, _| table.lookup(s.addr()).is_some_and(|p| p.subnet == *s));
            for p in table.iter() {
                seen.entry(p.subnet).or_insert_with(Instant::now);
            }
        };
    note_peers(&peer_seen);
    info!("node ready");
    crate::ops::sd_notify(&format!("READY=1\nSTATUS=forwarding for {}", own.subnet));

    let mut own_rx = store.subscribe_own_lease();
    let mut store_alive = true;
    let mut ticks: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let outcome = loop {
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            _ = tick.tick() => {
                ticks += 1;
                if rules.any() && ticks % resync_ticks == 0 {
                    let subnet = store.own_lease().subnet;
                    let state = match crate::host::masq::apply(config.network, subnet, rules) {
                        Ok(()) => IptablesState::Ok,
                        Err(e) => {
                            if iptables.get() != IptablesState::Failed {
                                warn!(error = %e, "iptables rules could not be resynced");
                            }
                            IptablesState::Failed
                        }
                    };
                    iptables.set(state);
                }
                status_cell.store(Some(snapshot_status(dp.as_ref(), &store)));
                note_peers(&peer_seen);
                if dp.as_ref().is_some_and(|d| !d.is_running()) {
                    break Err(None);
                }
            }
            changed = own_rx.changed(), if store_alive => {
                if changed.is_err() {
                    warn!("store task ended; forwarding continues on the last table");
                    store_alive = false;
                    continue;
                }
                let now = own_rx.borrow().subnet;
                if now != own.subnet {
                    break Err(Some(NodeError::SubnetChanged { old: own.subnet.to_string(), new: now.to_string() }));
                }
            }
        }
    };
    info!("stopping");
    crate::ops::sd_notify("STOPPING=1");
    // Alive while it drains, no longer ready.
    ops_state.set_phase("stopping");
    status_cell.store(None);
    // Direct routes stay in place (as flanneld leaves them): pod traffic keeps flowing
    // across a restart, and the next start reconciles whatever changed meanwhile.
    let dp_result = stop_all(dp).unwrap_or(Ok(()));
    if let Some(t) = route_task {
        let _ = t.await;
    }
    store.shutdown().await;
    match outcome {
        Ok(()) => {
            dp_result?;
            if opts.persist_tun && dp_info.is_some() {
                info!(tun = %opts.tun_name, "stopped; the TUN device and its route stay for the next start (--persist-tun)");
            } else {
                info!("stopped");
            }
            Ok(())
        }
        Err(Some(e)) => Err(e),
        Err(None) => {
            let e = dp_result
                .err()
                .unwrap_or(DatapathError::Panicked("unknown".into()));
            error!(error = %e, "data path stopped");
            Err(e.into())
        }
    }
}
