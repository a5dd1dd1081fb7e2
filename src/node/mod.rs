//! The node service (`weft run`): it composes the parts in the order the README describes
//! and stops them on one path. The single-instance socket and the ops server come first; then
//! the underlay, the lease (the store), the iptables rules, the data path (TUN <-> UDP
//! workers, [`crate::dataplane`]) and the direct routes (host-gw, DirectRouting:
//! [`crate::host::routes`]); then the node publishes its status once a second until told to
//! stop, its subnet changes or the data path fails. host-gw runs no data path: the kernel
//! forwards along the direct routes; vxlan with `DirectRouting` runs both.

mod handover;
mod status;
pub mod takeover;
mod upkeep;
pub mod watchdog;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tracing::{error, info, warn};

use crate::config::{BackendType, ConfigError, NetworkConfig};
use crate::dataplane::{
    Backend, Datapath, DatapathError, DatapathOptions, Ipv4Side, Ipv6Side, Placement,
};
use crate::encap::VxlanRx;
use crate::error::Chain;
use crate::host::masq::{self, Rules};
use crate::host::routes::{self, RouteError, RouteOptions, RouteSide, RouteTable};
use crate::host::{self, Underlay, UnderlayError};
use crate::ops::status::IptablesState;
use crate::ops::OpsState;
use crate::store::{EtcdOptions, OwnLease, Store, StoreError, StoreHandle, StoreOptions};
use crate::table::{LeaseTable, SharedTable};
use crate::wire::{Subnet, Subnet6};

use status::StatusPublisher;

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
    /// Where to serve /healthz, if anywhere.
    pub healthz: Option<SocketAddr>,
    /// Rewrite docker-style masquerade rules that catch pod-to-pod traffic.
    pub fix_masquerade: bool,
    /// Full reconcile period of the direct routes (host-gw, DirectRouting).
    pub route_resync: Duration,
    /// The data path's flags: TUN, batches, offloads, workers.
    pub datapath: DatapathOptions,
    /// Where the node keeps its last good state (`None`: nowhere): a restart forwards from it
    /// at once, before etcd answers.
    pub state_file: Option<PathBuf>,
    /// Take over from the weft running for this network in this namespace (`--takeover`).
    pub takeover: bool,
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
    /// flanneld runs in this network namespace.
    #[error("flanneld is running in this network namespace (pid {pids:?}): stop it first (systemctl stop flanneld; systemctl disable flanneld), then start weft with the same flags")]
    FlanneldRunning {
        /// Its process ids.
        pids: Vec<u32>,
    },
    /// What flanneld left could not be looked at or removed.
    #[error("clearing what flanneld left")]
    Leftovers(#[from] crate::host::flanneld::LeftoverError),
    /// The vxlan lease carries no VTEP MAC.
    #[error("our vxlan lease has no VtepMAC")]
    NoVtepMac,
    /// The data path could not start or failed.
    #[error("data path")]
    Datapath(#[from] DatapathError),
    /// Serving /healthz failed.
    #[error("binding /healthz on {addr}")]
    Healthz {
        /// Address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The masquerade rules could not be written.
    #[error("writing the masquerade rules (--ip-masq)")]
    Masq(#[from] masq::MasqError),
    /// Our subnet changed under us (someone else took it while we were away).
    #[error("our subnet changed from {old} to {new}; restarting is required")]
    SubnetChanged {
        /// The subnets configured on the TUN (IPv4, IPv6 or both).
        old: String,
        /// The subnets now leased.
        new: String,
    },
    /// Another weft of the same network runs in this network namespace.
    #[error("single instance")]
    Instance(#[from] crate::host::instance::InstanceError),
    /// Taking over from the running weft failed (it carries on).
    #[error("taking over from the running weft (it keeps forwarding)")]
    Takeover(#[from] takeover::TakeoverError),
    /// The state a takeover handed over is not usable.
    #[error("taking over from the running weft (it keeps forwarding): its state")]
    TakeoverState(#[from] crate::store::state::StateError),
}

/// A task that stops when this value goes.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the node until `shutdown` completes or something fails for good. With `--takeover`
/// and a weft running for the same network here, it takes that node's data path over first
/// ([`takeover`]).
pub async fn run(opts: NodeOptions, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
    tokio::pin!(shutdown);
    if opts.takeover {
        if let Some(taker) = handover::ask(&opts)? {
            return handover::take(&opts, taker, &mut shutdown).await;
        }
        info!("--takeover: no weft runs for this network in this namespace; starting normally");
    }
    // Before anything touches etcd, the subnet file, a port or a device.
    let instance = crate::host::instance::InstanceLock::acquire(&opts.etcd.prefix)?;
    tracing::debug!(socket = instance.name(), "single-instance socket held");
    // A flanneld still running here would fight over the lease, the port and the routes.
    let flanneld = crate::host::flanneld::running_flanneld();
    if !flanneld.is_empty() {
        return Err(NodeError::FlanneldRunning { pids: flanneld });
    }
    // The ops server comes first, as flanneld serves healthz before it reads its config:
    // /healthz answers while etcd is out of reach, /readyz says why the node is not ready,
    // and the state is filled in as the node comes up. Dropping the servers stops them.
    let ops_listener = match opts.healthz {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .map_err(|source| NodeError::Healthz { addr, source })?,
        ),
        None => None,
    };
    let base = Base::new(&opts, instance, ops_listener, fresh_ops())?;
    base.ops.set_phase("choosing the underlay interface");
    let underlay = choose_underlay(&opts)?;
    let store = match saved_state(&opts, &underlay) {
        Some(resume) => Store::resume(
            store_options(&opts, &underlay),
            base.ops.table.clone(),
            resume,
        )?,
        None => {
            base.ops
                .set_phase("waiting for etcd: no network config or lease yet");
            tokio::select! {
                s = Store::start(store_options(&opts, &underlay), base.ops.table.clone()) => s?,
                _ = &mut shutdown => {
                    info!("stopped before the node was up");
                    return Ok(());
                }
            }
        }
    };
    // Whatever happens from here on, the store is shut down on this one path.
    let outcome = run_with_lease(&opts, &base, &underlay, &store, &mut shutdown).await;
    store.shutdown().await;
    outcome
}

/// What every node runs beside its lease: the single-instance socket, the ops servers (and
/// a second handle on the ops listener, for a takeover) and the state they read.
struct Base {
    instance: crate::host::instance::InstanceLock,
    /// The ops listener's second handle (the server task holds the first).
    ops_listener: Option<std::net::TcpListener>,
    /// What the ops endpoints read (the published table among it).
    ops: OpsState,
    _http: Option<crate::ops::server::OpsServer>,
    _local: Option<AbortOnDrop>,
}

impl Base {
    /// Serves the ops endpoints on `ops_listener` (`--healthz-port`) and `weft status` on
    /// the instance socket.
    fn new(
        opts: &NodeOptions,
        instance: crate::host::instance::InstanceLock,
        ops_listener: Option<std::net::TcpListener>,
        ops: OpsState,
    ) -> Result<Base, NodeError> {
        let http = match &ops_listener {
            Some(l) => {
                let addr = l.local_addr().ok().or(opts.healthz);
                let serving = l
                    .try_clone()
                    .and_then(|l| crate::ops::server::spawn_on(l, ops.clone()));
                Some(serving.map_err(|source| NodeError::Healthz {
                    addr: addr.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
                    source,
                })?)
            }
            None => None,
        };
        let local = match instance.listener() {
            Ok(l) => Some(AbortOnDrop(tokio::spawn(crate::ops::local::serve(
                l,
                ops.clone(),
            )))),
            Err(e) => {
                warn!(error = %e, "no local status socket: `weft status` needs --healthz-port");
                None
            }
        };
        Ok(Base {
            instance,
            ops_listener,
            ops,
            _http: http,
            _local: local,
        })
    }
}

/// The ops state of a node that is starting: an empty table, no status yet.
fn fresh_ops() -> OpsState {
    OpsState::new(SharedTable::new(LeaseTable::empty(32)))
}

/// Chooses the underlay interface as the flags say, and logs it.
fn choose_underlay(opts: &NodeOptions) -> Result<Underlay, NodeError> {
    let underlay = host::choose_underlay(&opts.underlay)?;
    info!(
        iface = %underlay.iface,
        local_ip = %underlay.local_ip,
        public_ip = %underlay.public_ip,
        public_ipv6 = ?underlay.public_ipv6.map(|ip| ip.to_string()),
        mtu = underlay.mtu,
        "underlay chosen"
    );
    Ok(underlay)
}

/// The state this node saved when it last ran, if it is usable: for this prefix and this
/// node, its lease not expired, its config one the node takes. Why not is logged.
fn saved_state(opts: &NodeOptions, underlay: &Underlay) -> Option<crate::store::state::Resume> {
    use crate::store::state::{Expect, SavedState};
    let path = opts.state_file.as_ref()?;
    let saved = match SavedState::read(path) {
        Ok(Some(s)) => s,
        Ok(None) => return None,
        Err(e) => {
            warn!(path = %path.display(), error = %Chain(&e), "state file not used; starting from etcd");
            return None;
        }
    };
    let expect = Expect {
        prefix: &opts.etcd.prefix,
        public_ip: underlay.public_ip,
        public_ipv6: underlay.public_ipv6,
        config_check: Some(refuse_ipv4_only_backends),
    };
    match saved.check(&expect, std::time::SystemTime::now()) {
        Ok(resume) => {
            info!(
                path = %path.display(),
                subnets = %resume.own.subnets(),
                leases = resume.leases.len(),
                revision = resume.revision,
                "starting from the saved state: forwarding before etcd answers"
            );
            Some(resume)
        }
        Err(e) => {
            warn!(path = %path.display(), error = %Chain(&e), "state file not used; starting from etcd");
            None
        }
    }
}

/// The store's options from the flags and the underlay.
fn store_options(opts: &NodeOptions, underlay: &Underlay) -> StoreOptions {
    let mut s = StoreOptions::new(opts.etcd.clone(), underlay.public_ip);
    s.public_ipv6 = underlay.public_ipv6;
    s.config_check = Some(refuse_ipv4_only_backends);
    s.subnet_file = opts.subnet_file.clone();
    s.renew_margin = opts.renew_margin;
    s.underlay_mtu = underlay.mtu;
    s.ip_masq = opts.ip_masq;
    s.state_file = opts.state_file.clone();
    s
}

/// The node's check of the network config before it takes a lease: a config that enables
/// IPv6 with a backend that carries IPv4 only is refused (logged, read again every second,
/// like an invalid one): the udp backend (flanneld's is IPv4-only too). host-gw carries IPv6
/// along direct IPv6 routes.
fn refuse_ipv4_only_backends(config: &NetworkConfig) -> Result<(), ConfigError> {
    match config.backend.kind {
        BackendType::Vxlan | BackendType::HostGw => Ok(()),
        kind if config.enable_ipv6 => Err(ConfigError::Ipv6Backend {
            backend: kind.as_str(),
        }),
        _ => Ok(()),
    }
}

/// With the lease in hand: the iptables rules, the data path and the routes, then the node
/// serves until it stops; everything started here stops when this returns.
async fn run_with_lease(
    opts: &NodeOptions,
    base: &Base,
    underlay: &Underlay,
    store: &StoreHandle,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<(), NodeError> {
    let config = store.config().clone();
    let own = store.own_lease();
    log_lease(&config, &own);
    base.ops.set_phase("lease acquired; starting the data path");
    // flanneld's VXLAN device, if it left one, holds the port and routes weft needs. It
    // forwards until it goes: with a data path to start, it goes just before that (after the
    // iptables rules), so the pods' gap is only the data path's start; the direct-route
    // reconciler must not see its routes, so with direct routes it goes first.
    let routes_first = direct_routes(&config).is_some();
    if routes_first {
        crate::host::flanneld::clear_leftovers(&config).await?;
    }
    let mut running = Running::prepare(opts, &config, &own, underlay, &base.ops)?;
    if !routes_first {
        crate::host::flanneld::clear_leftovers(&config).await?;
    }
    running.attach(opts, &config, &own, underlay, &base.ops, None)?;
    serve_node(opts, base, underlay, store, running, shutdown).await
}

/// Logs the lease the node runs with.
fn log_lease(config: &NetworkConfig, own: &OwnLease) {
    // On an IPv6-only network the IPv4 half is flannel's empty 0.0.0.0/0: name the IPv6 one.
    info!(subnets = %own.subnets(), network = %config.network, network6 = ?config.ipv6.as_ref().map(|v6| v6.network.to_string()), backend = config.backend.kind.as_str(), "lease acquired");
}

/// With everything running: say so, serve until told to stop (or handed over), then stop.
async fn serve_node(
    opts: &NodeOptions,
    base: &Base,
    underlay: &Underlay,
    store: &StoreHandle,
    mut running: Running,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<(), NodeError> {
    let ops = &base.ops;
    let config = store.config().clone();
    let own = store.own_lease();
    let subnets = own.subnets();
    let dp_info = running.dp.as_ref().map(|d| d.info().clone());
    let status = StatusPublisher::new(ops, &config, underlay, opts, dp_info);
    status.publish(running.dp.as_ref(), store, running.iptables.state, &[]);
    info!("node ready");
    crate::ops::sd_notify(&format!("READY=1\nSTATUS=forwarding for {subnets}"));
    crate::ops::tell_detached_parent();

    let (takeover_tx, takeover_rx) = tokio::sync::mpsc::channel(1);
    *ops.takeover.lock().unwrap_or_else(|e| e.into_inner()) = Some(takeover_tx);
    let ctx = Serving {
        opts,
        base,
        underlay,
        store,
        own: &own,
        status: &status,
    };
    let ended = serve(&ctx, &mut running, takeover_rx, shutdown).await;
    *ops.takeover.lock().unwrap_or_else(|e| e.into_inner()) = None;

    info!("stopping");
    if !matches!(ended, Ended::TakenOver { .. }) {
        crate::ops::sd_notify("STOPPING=1");
    }
    // Alive while it drains, no longer ready.
    ops.set_phase("stopping");
    status.clear();
    running.stop(ended, opts).await
}

/// What the serve loop works with besides the running parts.
struct Serving<'a> {
    opts: &'a NodeOptions,
    base: &'a Base,
    underlay: &'a Underlay,
    store: &'a StoreHandle,
    own: &'a OwnLease,
    status: &'a StatusPublisher<'a>,
}

/// What runs while the node holds its lease: flannel's iptables rules, the data path (none
/// for host-gw) and the direct-route reconciler (host-gw, DirectRouting).
struct Running {
    iptables: Iptables,
    dp: Option<Datapath>,
    routes: Option<Routes>,
}

impl Running {
    /// The iptables rules and the direct-route reconciler (no data path yet:
    /// [`Running::attach`]); what started before a failure stops as the error returns.
    fn prepare(
        opts: &NodeOptions,
        config: &NetworkConfig,
        own: &OwnLease,
        underlay: &Underlay,
        ops: &OpsState,
    ) -> Result<Running, NodeError> {
        // Docker-style rules that masquerade pod-to-pod traffic: warned about, or rewritten.
        if let Some(subnet) = own.subnet4() {
            masq::check_pitfalls(config.network, subnet, opts.fix_masquerade);
        }
        // The iptables rules for the Network (none on an IPv6-only network, as flanneld), and
        // the ip6tables rules for the IPv6Network and our IPv6 subnet.
        let ipv4 = own.subnet4().map(|_| config.network);
        let ipv6 = config.ipv6.as_ref().map(|v6| v6.network).zip(own.subnet6);
        let iptables = Iptables::start(opts, ipv4, own.subnet, ipv6)?;
        let routes = direct_routes(config)
            .map(|only_connected| Routes::start(opts, config, own, underlay, ops, only_connected))
            .transpose()?;
        Ok(Running {
            iptables,
            dp: None,
            routes,
        })
    }

    /// Starts the data path (none for host-gw): on `devices` when a takeover handed them
    /// over, else on devices it opens.
    fn attach(
        &mut self,
        opts: &NodeOptions,
        config: &NetworkConfig,
        own: &OwnLease,
        underlay: &Underlay,
        ops: &OpsState,
        devices: Option<crate::dataplane::Devices>,
    ) -> Result<(), NodeError> {
        let Some(backend) = data_path_backend(config, own)? else {
            return Ok(());
        };
        let at = placement(config, own, underlay, backend);
        let dp = match devices {
            Some(d) => Datapath::adopt(d, &opts.datapath, &at, ops.table.clone())?,
            None => Datapath::open(&opts.datapath, &at, ops.table.clone())?,
        };
        ops.set_counters(dp.counters().clone());
        self.dp = Some(dp);
        Ok(())
    }

    /// The one way down: the route reconciler stops (its routes stay in place, as flanneld
    /// leaves them, so pod traffic keeps flowing across a restart and the next start
    /// reconciles whatever changed meanwhile), then the data path; the outcome is why the
    /// node stopped, or a worker's error.
    async fn stop(self, ended: Ended, opts: &NodeOptions) -> Result<(), NodeError> {
        if let Some(r) = self.routes {
            r.stop().await;
        }
        let had_tun = self.dp.is_some();
        let dp_result = self.dp.map_or(Ok(()), Datapath::stop);
        match ended {
            Ended::Shutdown => {
                dp_result?;
                if opts.datapath.persist_tun && had_tun {
                    info!(tun = %opts.datapath.tun_name, "stopped; the TUN device and its route stay for the next start (--persist-tun)");
                } else {
                    info!("stopped");
                }
                Ok(())
            }
            Ended::Failed(e) => Err(e),
            Ended::TakenOver { pid } => {
                dp_result?;
                info!(pid, "handed over to the new process; exiting");
                Ok(())
            }
            Ended::DatapathFailed => {
                let e = dp_result
                    .err()
                    .unwrap_or(DatapathError::Panicked("unknown".into()));
                error!(error = %Chain(&e), "data path stopped");
                Err(e.into())
            }
        }
    }
}

/// Why the node stopped serving.
enum Ended {
    /// Told to stop.
    Shutdown,
    /// A data-path worker ended.
    DatapathFailed,
    /// Something else failed for good.
    Failed(NodeError),
    /// Another process took the data path over and forwards now.
    TakenOver {
        /// Its process id.
        pid: u32,
    },
}

/// Once a second: resync the iptables rules when due, publish the status, check the data
/// path and tell it the underlay's MTU; and watch our own lease for a subnet change. Until
/// one of those ends it.
async fn serve(
    ctx: &Serving<'_>,
    running: &mut Running,
    mut takeovers: tokio::sync::mpsc::Receiver<std::os::unix::net::UnixStream>,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Ended {
    let Serving {
        opts,
        underlay,
        store,
        own,
        status,
        ..
    } = *ctx;
    let resync_ticks = opts.iptables_resync.as_secs().max(1);
    let mut feeder = WatchdogFeeder::from_env();
    // A takeover whose offer is out (the node forwards meanwhile).
    let mut offering: Option<handover::Offering> = None;
    let mut upkeep = upkeep::Upkeep::new(running.dp.as_ref(), store.config(), own, underlay);
    let mut own_rx = store.subscribe_own_lease();
    let mut store_alive = true;
    let mut ticks: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = &mut *shutdown => return Ended::Shutdown,
            _ = tick.tick() => {
                ticks += 1;
                if ticks % resync_ticks == 0 {
                    running.iptables.resync(store.own_lease().subnet);
                }
                if let Some(dp) = &running.dp {
                    if !dp.is_running() {
                        return Ended::DatapathFailed;
                    }
                    follow_underlay_mtu(dp, &underlay.iface);
                }
                let table = ctx.base.ops.table.load_full();
                upkeep.check(running.dp.as_ref(), &table).await;
                upkeep.sweep_counters(running.dp.as_ref(), table);
                status.publish(running.dp.as_ref(), store, running.iptables.state, upkeep.problems());
                feeder.tick(running.dp.as_ref());
            }
            _ = upkeep.changed() => {
                upkeep.check(running.dp.as_ref(), &ctx.base.ops.table.load_full()).await;
                status.publish(running.dp.as_ref(), store, running.iptables.state, upkeep.problems());
            }
            Some(conn) = takeovers.recv() => {
                if offering.is_some() {
                    takeover::refuse(&conn, "another takeover is under way");
                    continue;
                }
                match handover::offer(ctx, running, conn).await {
                    Ok(task) => offering = Some(task),
                    Err(e) => warn!(error = %Chain(&e), "takeover failed; this node carries on forwarding"),
                }
            }
            answered = offer_answer(&mut offering) => {
                offering = None;
                let given = match answered {
                    Ok((giver, Ok(pid))) => handover::give(ctx, running, giver, pid),
                    Ok((_, Err(e))) => Err(e.into()),
                    Err(e) => {
                        warn!(error = %e, "takeover offer task failed");
                        continue;
                    }
                };
                match given {
                    Ok(pid) => return Ended::TakenOver { pid },
                    Err(e) => warn!(error = %Chain(&e), "takeover failed; this node carries on forwarding"),
                }
            }
            changed = own_rx.changed(), if store_alive => {
                if changed.is_err() {
                    warn!("store task ended; forwarding continues on the last table");
                    store_alive = false;
                    continue;
                }
                let now = own_rx.borrow().clone();
                // The data path, TUN addresses and rules were set up for the old subnets.
                if now.subnet != own.subnet || now.subnet6 != own.subnet6 {
                    return Ended::Failed(NodeError::SubnetChanged {
                        old: own.subnets(),
                        new: now.subnets(),
                    });
                }
            }
        }
    }
}

/// The answer to a takeover offer, when one is out; never otherwise.
async fn offer_answer(
    offering: &mut Option<handover::Offering>,
) -> Result<(takeover::Giver, Result<u32, takeover::TakeoverError>), tokio::task::JoinError> {
    match offering.as_mut() {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}

/// Feeds systemd's watchdog from the serve loop while every data-path thread makes progress.
struct WatchdogFeeder {
    /// Whether systemd asked for pings.
    enabled: bool,
    dog: watchdog::Watchdog,
    /// The stall being reported (logged once per stall).
    stalled: bool,
}

impl WatchdogFeeder {
    fn from_env() -> WatchdogFeeder {
        let interval = watchdog::interval();
        if let Some(i) = interval {
            info!(
                interval_ms = i.as_millis() as u64,
                "systemd watchdog: pinging while every data-path thread makes progress"
            );
        }
        WatchdogFeeder {
            enabled: interval.is_some(),
            dog: watchdog::Watchdog::default(),
            stalled: false,
        }
    }

    /// One tick of the serve loop: ping unless a data-path thread is wedged (host-gw, with no
    /// data path: the tick itself shows the runtime answers).
    fn tick(&mut self, dp: Option<&Datapath>) {
        if !self.enabled {
            return;
        }
        let verdict = match dp {
            Some(dp) => self
                .dog
                .check(&dp.heartbeats(), std::time::Instant::now())
                .map_err(|s| (s, dp.thread_names())),
            None => Ok(()),
        };
        match verdict {
            Ok(()) => {
                if self.stalled {
                    info!("every data-path thread makes progress again; feeding the watchdog");
                    self.stalled = false;
                }
                crate::ops::sd_notify("WATCHDOG=1");
            }
            Err((s, names)) => {
                if !self.stalled {
                    let thread = names.get(s.thread).cloned().unwrap_or_default();
                    error!(%thread, stalled_secs = s.for_.as_secs(), "a data-path thread makes no progress: no longer feeding systemd's watchdog, which will restart weft");
                    self.stalled = true;
                }
            }
        }
    }
}

/// Tells the data path the underlay interface's MTU, logging a change: when it falls below
/// what the pods' MTU needs, pod packets with DF set are answered with ICMP fragmentation
/// needed (packet too big) instead of fragmenting, and TCP super-packets are cut to fit.
fn follow_underlay_mtu(dp: &Datapath, iface: &str) {
    let Ok(mtu) = crate::sys::iface::mtu(iface) else {
        return;
    };
    let was = dp.underlay_mtu();
    if dp.set_underlay_mtu(mtu) {
        let tun = dp.info().mtu;
        warn!(
            iface,
            was,
            now = mtu,
            tun_mtu = tun,
            "underlay MTU changed: pod packets that no longer fit once encapsulated get ICMP \
             fragmentation needed / packet too big (DF set) or fragment (DF clear)"
        );
    }
}

/// The encapsulation the data path runs, or none (host-gw: the kernel forwards).
fn data_path_backend(config: &NetworkConfig, own: &OwnLease) -> Result<Option<Backend>, NodeError> {
    Ok(match config.backend.kind {
        // An IPv6-only lease has only the IPv6 VTEP MAC; the IPv4 one then checks nothing
        // (no IPv4 datagram is accepted without an IPv4 half).
        BackendType::Vxlan => Some(Backend::Vxlan(VxlanRx {
            vni: config.backend.vni,
            vtep_mac: own
                .vtep_mac()
                .or(own.vtep_mac6())
                .ok_or(NodeError::NoVtepMac)?,
        })),
        BackendType::Udp => Some(Backend::Udp),
        BackendType::HostGw => None,
    })
}

/// Whether direct routes are kept, and to which peers: host-gw routes to every peer
/// (`Some(false)`); vxlan with DirectRouting only to peers on our segment (`Some(true)`), more
/// specific than the TUN's Network route, and the tunnel for the rest.
fn direct_routes(config: &NetworkConfig) -> Option<bool> {
    match config.backend.kind {
        BackendType::HostGw => Some(false),
        BackendType::Vxlan if config.backend.direct_routing => Some(true),
        _ => None,
    }
}

/// Where the data path sits, from the config, the lease and the underlay.
fn placement(
    config: &NetworkConfig,
    own: &OwnLease,
    underlay: &Underlay,
    backend: Backend,
) -> Placement {
    let tun_mtu = config.overlay_mtu(underlay.mtu);
    if let Some(m) = config.mtu_mismatch(underlay.mtu) {
        warn!(iface = %underlay.iface, "{m}");
    }
    // The IPv6 half: our IPv6 lease, the IPv6Network, and room for 20 bytes less per packet
    // than IPv4 (a 40-byte outer IPv6 header), as flanneld sizes flannel-v6.<VNI>.
    let ipv6 = match (&config.ipv6, own.subnet6, own.public_ipv6()) {
        (Some(v6), Some(subnet6), Some(public_ip)) => Some(Ipv6Side {
            local_subnet: subnet6,
            network: v6.network,
            public_ip,
            vtep_mac: own.vtep_mac6(),
            mtu: (underlay.mtu as usize).saturating_sub(crate::encap::VXLAN6_OVERHEAD),
        }),
        _ => None,
    };
    // The IPv4 half, unless the network is IPv6-only.
    let ipv4 = own.subnet4().map(|local_subnet| Ipv4Side {
        local_subnet,
        network: config.network,
        local_ip: underlay.local_ip,
    });
    Placement {
        backend,
        ipv4,
        ipv6,
        tun_mtu,
        underlay_mtu: underlay.mtu,
        port: config.backend.port,
    }
}

/// The direct-route reconciler's task.
struct Routes {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Routes {
    /// Opens the route socket and starts reconciling.
    fn start(
        opts: &NodeOptions,
        config: &NetworkConfig,
        own: &OwnLease,
        underlay: &Underlay,
        ops: &OpsState,
        only_connected: bool,
    ) -> Result<Routes, NodeError> {
        let table = RouteTable::open()?;
        // Dual stack: the IPv6 routes, for the IPv6Network from our IPv6 lease.
        let ipv6 = match (&config.ipv6, own.subnet6, own.public_ipv6()) {
            (Some(v6), Some(own_subnet), Some(own_ip)) => Some(RouteSide {
                network: v6.network,
                own_subnet,
                own_ip,
            }),
            _ => None,
        };
        info!(
            protocol = routes::RTPROT_WEFT,
            resync_secs = opts.route_resync.as_secs(),
            same_segment_only = only_connected,
            ipv6 = ipv6.is_some(),
            "managing direct routes"
        );
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let options = RouteOptions {
            direct_only_connected: only_connected,
            underlay_iface: underlay.iface.clone(),
            ipv4: own.subnet4().map(|own_subnet| RouteSide {
                network: config.network,
                own_subnet,
                own_ip: underlay.public_ip,
            }),
            ipv6,
            resync: opts.route_resync,
        };
        let task = tokio::spawn(routes::run(table, ops.table.clone(), options, stop_rx));
        Ok(Routes { stop, task })
    }

    /// Stops reconciling (the routes stay) and waits for the task.
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// flannel's iptables rules (and, on a dual-stack node, the same chains in ip6tables) and
/// their state, rewritten every `--iptables-resync`.
struct Iptables {
    rules: Rules,
    /// The Network; `None` on an IPv6-only network never runs iptables.
    network: Option<Subnet>,
    /// The IPv6Network and our IPv6 subnet, on a dual-stack node; `None` never runs ip6tables.
    ipv6: Option<(Subnet6, Subnet6)>,
    state: IptablesState,
}

impl Iptables {
    /// Writes the rules the flags ask for: iptables for `network` (the Network, unless the
    /// network is IPv6-only) and our `subnet`, ip6tables when `ipv6` (the IPv6Network and our
    /// IPv6 subnet) is given. Without the masquerade rules `--ip-masq` asked for, pods
    /// leaving the overlay would carry their own addresses onto the underlay, so that is
    /// fatal in either family; failing forward rules only warn.
    fn start(
        opts: &NodeOptions,
        network: Option<Subnet>,
        subnet: Subnet,
        ipv6: Option<(Subnet6, Subnet6)>,
    ) -> Result<Iptables, NodeError> {
        let rules = Rules {
            masquerade: opts.ip_masq,
            forward: opts.forward_rules,
        };
        let mut keeper = Iptables {
            rules,
            network,
            ipv6,
            state: IptablesState::Off,
        };
        if !rules.any() {
            return Ok(keeper);
        }
        keeper.state = match keeper.write(subnet) {
            Ok(()) => {
                if let Some(network) = network {
                    info!(network = %network, subnet = %subnet, masquerade = rules.masquerade, forward = rules.forward, "iptables rules written");
                }
                if let Some((network6, subnet6)) = ipv6 {
                    info!(network = %network6, subnet = %subnet6, "ip6tables rules written");
                }
                IptablesState::Ok
            }
            Err(e) if rules.masquerade => return Err(e.into()),
            Err(e) => {
                warn!(error = %Chain(&e), "FLANNEL-FWD forward rules could not be written: where FORWARD's policy is DROP, pod traffic will not cross this host (--iptables-forward-rules=false turns them off)");
                IptablesState::Failed
            }
        };
        Ok(keeper)
    }

    /// Writes both families' rules (for `subnet`, our lease's, and the IPv6 subnet given at
    /// start), each whatever became of the other; the first error, if any.
    fn write(&self, subnet: Subnet) -> Result<(), masq::MasqError> {
        let v4 = match self.network {
            Some(network) => masq::apply(network, subnet, self.rules),
            None => Ok(()),
        };
        let v6 = match self.ipv6 {
            Some((network6, subnet6)) => masq::apply6(network6, subnet6, self.rules),
            None => Ok(()),
        };
        v4.and(v6)
    }

    /// Rewrites the rules (for `subnet`, our lease's); warns once when that starts failing.
    fn resync(&mut self, subnet: Subnet) {
        if !self.rules.any() {
            return;
        }
        self.state = match self.write(subnet) {
            Ok(()) => IptablesState::Ok,
            Err(e) => {
                if self.state != IptablesState::Failed {
                    warn!(error = %Chain(&e), "iptables rules could not be resynced");
                }
                IptablesState::Failed
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_refuses_ipv6_with_an_ipv4_only_backend() {
        let v4 = NetworkConfig::parse(r#"{"Network":"10.1.0.0/16"}"#).unwrap();
        assert_eq!(refuse_ipv4_only_backends(&v4), Ok(()));
        let udp4 = NetworkConfig::parse(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"udp"}}"#);
        assert_eq!(refuse_ipv4_only_backends(&udp4.unwrap()), Ok(()));
        // No Backend means flannel's default, udp: IPv4 only.
        let dflt = NetworkConfig::parse(&format!(
            "{}}}",
            r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/48""#
        ))
        .unwrap();
        assert!(refuse_ipv4_only_backends(&dflt).is_err());
        let dual = r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/48""#;
        let vxlan =
            NetworkConfig::parse(&format!(r#"{dual},"Backend":{{"Type":"vxlan"}}}}"#)).unwrap();
        assert_eq!(refuse_ipv4_only_backends(&vxlan), Ok(()));
        let host_gw =
            NetworkConfig::parse(&format!(r#"{dual},"Backend":{{"Type":"host-gw"}}}}"#)).unwrap();
        assert_eq!(refuse_ipv4_only_backends(&host_gw), Ok(()));
        let udp = NetworkConfig::parse(&format!(r#"{dual},"Backend":{{"Type":"udp"}}}}"#));
        let e = refuse_ipv4_only_backends(&udp.unwrap()).unwrap_err();
        assert_eq!(e, ConfigError::Ipv6Backend { backend: "udp" });
        assert!(e.to_string().contains("carries IPv4 only"), "{e}");
        assert!(e.to_string().contains(r#""EnableIPv6": false"#), "{e}");
        // The node's store options carry the check.
        use clap::Parser;
        let cli = crate::cli::commands::Cli::try_parse_from([
            "weft",
            "run",
            "--subnet-file=/tmp/weft-test/subnet.env",
        ])
        .unwrap();
        let crate::cli::commands::Command::Run(run) = cli.command else {
            panic!("not run")
        };
        let opts = run.node_options();
        let underlay = Underlay {
            iface: "eth0".into(),
            local_ip: "192.168.64.3".parse().unwrap(),
            public_ip: "192.168.64.3".parse().unwrap(),
            public_ipv6: Some("fd77::3".parse().unwrap()),
            mtu: 9000,
        };
        let s = store_options(&opts, &underlay);
        assert_eq!(s.public_ipv6, underlay.public_ipv6);
        assert_eq!(s.subnet_file, PathBuf::from("/tmp/weft-test/subnet.env"));
        assert_eq!(s.underlay_mtu, 9000);
        let check = s.config_check.expect("the node checks the config");
        let udp = NetworkConfig::parse(
            r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/48","Backend":{"Type":"udp"}}"#,
        )
        .unwrap();
        assert_eq!(
            check(&udp),
            Err(ConfigError::Ipv6Backend { backend: "udp" })
        );
        assert_eq!(check(&vxlan), Ok(()));
        assert_eq!(check(&v4), Ok(()));
    }
}
