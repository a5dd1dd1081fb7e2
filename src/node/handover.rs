//! The node's side of a takeover ([`super::takeover`] has the exchange): a new process
//! taking over a running node's data path at start ([`ask`], [`take`], [`complete`]), and a
//! running node giving it away from its serve loop ([`give`]).

use std::future::Future;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::SystemTime;

use tracing::{info, warn};

use super::takeover::{Giver, Offer, TakeoverError, Taker, PROTOCOL};
use super::{
    choose_underlay, data_path_backend, placement, refuse_ipv4_only_backends, serve_node,
    store_options, Base, NodeError, NodeOptions, Running, Serving,
};
use crate::dataplane::Datapath;
use crate::error::Chain;
use crate::host::instance::InstanceLock;
use crate::host::Underlay;
use crate::store::state::{Expect, SavedState};
use crate::store::Store;

/// Runs a blocking step of the exchange (bounded by its timeouts) without holding up the
/// runtime's other tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Asks the weft running for this network here to hand over; `None` when none runs.
pub(super) fn ask(opts: &NodeOptions) -> Result<Option<Taker>, NodeError> {
    Ok(Taker::connect(&opts.etcd.prefix)?)
}

/// Whether this process can take over what `offer` describes: the same TUN device and the
/// same underlay addresses (its devices and lease are bound to them).
fn compatible(opts: &NodeOptions, underlay: &Underlay, offer: &Offer) -> Result<(), String> {
    if offer.protocol != PROTOCOL {
        return Err(format!(
            "the running weft speaks takeover protocol {}, this one {PROTOCOL}",
            offer.protocol
        ));
    }
    if offer.prefix.trim_end_matches('/') != opts.etcd.prefix.trim_end_matches('/') {
        return Err(format!(
            "the running weft serves etcd prefix {}, this one {}",
            offer.prefix, opts.etcd.prefix
        ));
    }
    if let Some(tun) = &offer.tun {
        if *tun != opts.datapath.tun_name {
            return Err(format!(
                "the running weft forwards through {tun}, this one is configured for {} (--tun-name)",
                opts.datapath.tun_name
            ));
        }
    }
    if offer.public_ip != underlay.public_ip || offer.public_ipv6 != underlay.public_ipv6 {
        return Err(format!(
            "the running weft's PublicIP is {} (PublicIPv6 {:?}), this one chose {} (PublicIPv6 {:?}) on {}",
            offer.public_ip, offer.public_ipv6, underlay.public_ip, underlay.public_ipv6, underlay.iface
        ));
    }
    Ok(())
}

/// The new process, from the running node's offer until this one serves in its place.
pub(super) async fn take(
    opts: &NodeOptions,
    mut taker: Taker,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<(), NodeError> {
    let underlay = match choose_underlay(opts) {
        Ok(u) => u,
        Err(e) => {
            taker.abort(&Chain(&e).to_string());
            return Err(e);
        }
    };
    let (offer, state) = blocking(|| taker.receive_offer())?;
    info!(pid = offer.pid, version = %offer.weft_version, tun = ?offer.tun, "the running weft offers its data path");
    if let Err(why) = compatible(opts, &underlay, &offer) {
        taker.abort(&why);
        return Err(TakeoverError::Refused(why).into());
    }
    let expect = Expect {
        prefix: &opts.etcd.prefix,
        public_ip: underlay.public_ip,
        public_ipv6: underlay.public_ipv6,
        config_check: Some(refuse_ipv4_only_backends),
    };
    let resume = match SavedState::decode(&state).and_then(|s| s.check(&expect, SystemTime::now()))
    {
        Ok(r) => r,
        Err(e) => {
            taker.abort(&format!("its state is not usable: {}", Chain(&e)));
            return Err(e.into());
        }
    };
    // Everything that does not need the devices happens while the running node still
    // forwards: the store (the state's table published), the iptables rules, the routes.
    let ops = super::fresh_ops();
    let store = match Store::resume(store_options(opts, &underlay), ops.table.clone(), resume) {
        Ok(s) => s,
        Err(e) => {
            taker.abort(&Chain(&e).to_string());
            return Err(e.into());
        }
    };
    let outcome = take_devices(opts, taker, &offer, &underlay, ops, &store, shutdown).await;
    store.shutdown().await;
    outcome
}

/// From the store running to serving: the rules and routes, then the devices (the running
/// node stops its workers for as short a time as it takes this one to start its own).
async fn take_devices(
    opts: &NodeOptions,
    mut taker: Taker,
    offer: &Offer,
    underlay: &Underlay,
    ops: crate::ops::OpsState,
    store: &crate::store::StoreHandle,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<(), NodeError> {
    let config = store.config().clone();
    let own = store.own_lease();
    super::log_lease(&config, &own);
    let mut running = match Running::prepare(opts, &config, &own, underlay, &ops) {
        Ok(r) => r,
        Err(e) => {
            taker.abort(&Chain(&e).to_string());
            return Err(e);
        }
    };
    let received = blocking(|| taker.accept())?;
    failpoint("after-devices");
    let attached = running.attach(opts, &config, &own, underlay, &ops, received.devices);
    if let Err(e) = attached {
        taker.abort(&Chain(&e).to_string());
        return Err(e);
    }
    complete(taker, &mut running)?;
    // The node serves from here: its instance socket and ops listener are the old one's.
    let instance = InstanceLock::adopt(received.instance, &opts.etcd.prefix)?;
    let ops_listener = match (opts.healthz, received.ops) {
        (Some(addr), Some(l)) if offer.healthz == Some(addr) => Some(l),
        (Some(addr), _) => Some(
            std::net::TcpListener::bind(addr)
                .map_err(|source| NodeError::Healthz { addr, source })?,
        ),
        (None, _) => None,
    };
    if let Some(path) = &offer.notify_socket {
        crate::ops::inherit_notify_socket(path);
    }
    if let Some(usec) = offer.watchdog_usec {
        super::watchdog::inherit_interval(std::time::Duration::from_micros(usec));
    }
    crate::ops::sd_notify(&format!("MAINPID={}", std::process::id()));
    let base = Base::new(opts, instance, ops_listener, ops)?;
    serve_node(opts, &base, underlay, store, running, shutdown).await
}

/// Fault injection for the tests of a takeover that fails half-way: with
/// `WEFT_TAKEOVER_FAILPOINT=<name>` the process dies at the point `name` (as a crash would:
/// no clean-up, its descriptors closed by the kernel).
fn failpoint(name: &str) {
    if std::env::var("WEFT_TAKEOVER_FAILPOINT").is_ok_and(|v| v == name) {
        tracing::error!(failpoint = name, "WEFT_TAKEOVER_FAILPOINT: dying here");
        std::process::exit(101);
    }
}

/// The new process's data path runs on the handed-over devices: tell the running node and
/// wait for it to let go. `Err`: it did not, and may forward again, so this one stops.
pub(super) fn complete(mut taker: Taker, running: &mut Running) -> Result<(), NodeError> {
    if let Err(e) = blocking(|| taker.forwarding()) {
        if let Some(dp) = running.dp.take() {
            // Stop our workers at once; our copies of the descriptors close with them.
            let _ = dp.stop();
        }
        return Err(e.into());
    }
    info!("took over from the running weft: forwarding on its devices");
    Ok(())
}

/// A takeover offer on its way: the exchange until the new process has accepted (it runs on
/// a thread of its own; the node forwards and serves meanwhile).
pub(super) type Offering = tokio::task::JoinHandle<(Giver, Result<u32, TakeoverError>)>;

/// The running node, steps 2 and 3: offers its data path and state to the process that asked
/// on `conn`. The returned task ends when the new process accepted (its pid) or refused.
pub(super) async fn offer(
    ctx: &Serving<'_>,
    running: &Running,
    conn: UnixStream,
) -> Result<Offering, NodeError> {
    let giver = Giver::new(conn);
    let Some(state) = ctx.store.saved_state().await else {
        let why = "its store is not running";
        super::takeover::refuse(giver.conn(), why);
        return Err(TakeoverError::Refused(why.into()).into());
    };
    let offer = Offer {
        protocol: PROTOCOL,
        weft_version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        prefix: ctx.opts.etcd.prefix.clone(),
        tun: running.dp.as_ref().map(|d| d.info().tun.clone()),
        workers: running.dp.as_ref().map_or(0, |d| d.info().workers as usize),
        iface: ctx.underlay.iface.clone(),
        public_ip: ctx.underlay.public_ip,
        public_ipv6: ctx.underlay.public_ipv6,
        healthz: ctx
            .base
            .ops_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok()),
        notify_socket: crate::ops::notify_socket().map(|p| p.to_string_lossy().into_owned()),
        watchdog_usec: super::watchdog::interval().map(|d| d.as_micros() as u64),
    };
    let bytes = state.encode();
    Ok(tokio::task::spawn_blocking(move || {
        let mut giver = giver;
        let accepted = giver.offer(&offer, &bytes);
        (giver, accepted)
    }))
}

/// The running node, steps 4 to 6, once the new process (`pid`) accepted: stops its workers,
/// hands the devices over and waits (at most a few seconds) until the new one forwards.
/// `Ok(pid)`: this node must exit. On `Err` it forwards as before, its workers running again
/// on its own descriptors.
pub(super) fn give(
    ctx: &Serving<'_>,
    running: &mut Running,
    mut giver: Giver,
    pid: u32,
) -> Result<u32, NodeError> {
    info!(pid, "a new process takes over: handing the data path over");
    let devices = match running.dp.take() {
        Some(dp) => Some(dp.stop_keeping_devices()?),
        None => None,
    };
    let ops_fd = ctx.base.ops_listener.as_ref().map(|l| l.as_fd());
    let given = blocking(|| giver.hand_over(devices.as_ref(), ops_fd, ctx.base.instance.fd()));
    match given {
        Ok(()) => {
            crate::ops::sd_notify(&format!("MAINPID={pid}"));
            Ok(pid)
        }
        Err(e) => {
            if let Some(d) = devices {
                let config = ctx.store.config();
                let own = ctx.store.own_lease();
                if let Some(backend) = data_path_backend(config, &own)? {
                    let at = placement(config, &own, ctx.underlay, backend);
                    let dp =
                        Datapath::adopt(d, &ctx.opts.datapath, &at, ctx.base.ops.table.clone())?;
                    ctx.base.ops.set_counters(dp.counters().clone());
                    running.dp = Some(dp);
                    warn!("the takeover did not complete: forwarding again on this node's own devices");
                }
            }
            Err(e.into())
        }
    }
}
