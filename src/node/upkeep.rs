//! What keeps a running node able to forward, checked once a second and on every netlink
//! change: the TUN's plumbing put back when something took it away ([`Plumbing`]), the
//! underlay address still on an interface, sends to the underlay still succeeding. What is
//! wrong is logged when it changes and given to `/readyz` (503 with the reasons) until it
//! works again.

use std::net::IpAddr;

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::NetworkConfig;
use crate::dataplane::Datapath;
use crate::host::plumbing::{self, Plumbing, Side4, Side6};
use crate::host::Underlay;
use crate::store::OwnLease;
use crate::sys::iface;
use crate::table::LeaseTable;

/// The checks and what they last found.
pub(super) struct Upkeep {
    plumbing: Option<Plumbing>,
    changes: Option<mpsc::Receiver<()>>,
    /// The underlay addresses that must stay on an interface.
    underlay: Vec<IpAddr>,
    iface: String,
    /// Every problem the last check found.
    problems: Vec<String>,
    /// Messages sent and send errors at the last check.
    sent: (u64, u64),
    /// The lease table at the last sweep of the per-peer counters (a departed peer's subnet
    /// is looked up there).
    swept: Option<std::sync::Arc<LeaseTable>>,
    /// Per-peer slot overflows at the last check, and when that was last logged.
    overflow: (u64, Option<std::time::Instant>),
}

impl Upkeep {
    /// The checks for a node running `dp` (none: host-gw, no TUN) with `config` and `own`.
    pub(super) fn new(
        dp: Option<&Datapath>,
        config: &NetworkConfig,
        own: &OwnLease,
        underlay: &Underlay,
    ) -> Upkeep {
        let plumbing = dp.and_then(|dp| {
            let info = dp.info();
            let v4 = own.subnet4().map(|own| Side4 {
                own,
                network: config.network,
            });
            let v6 = config
                .ipv6
                .as_ref()
                .zip(own.subnet6)
                .map(|(v6, own)| Side6 {
                    own,
                    network: v6.network,
                });
            match Plumbing::new(&info.tun, info.mtu, v4, v6) {
                Ok(p) => Some(p),
                Err(e) => {
                    warn!(error = %e, "no netlink socket: the TUN's plumbing is not watched");
                    None
                }
            }
        });
        let changes = match plumbing {
            Some(_) => plumbing::watch_changes()
                .map_err(|e| warn!(error = %e, "no netlink events: the plumbing is checked once a second only"))
                .ok(),
            None => None,
        };
        // The addresses the node was started on (an IPv6 one only if it is local: flanneld
        // may advertise one it was given).
        let mut addrs = vec![IpAddr::V4(underlay.local_ip)];
        if let Some(v6) = underlay.public_ipv6 {
            let local = iface::ipv6_addrs().is_ok_and(|a| a.iter().any(|x| x.addr == v6));
            if local {
                addrs.push(IpAddr::V6(v6));
            }
        }
        Upkeep {
            plumbing,
            changes,
            underlay: addrs,
            iface: underlay.iface.clone(),
            problems: Vec::new(),
            sent: (0, 0),
            swept: None,
            overflow: (0, None),
        }
    }

    /// A netlink change happened (pending forever without a watch).
    pub(super) async fn changed(&mut self) {
        match self.changes.as_mut() {
            Some(rx) => {
                if rx.recv().await.is_none() {
                    self.changes = None;
                }
            }
            None => std::future::pending().await,
        }
    }

    /// What stops the data path now (empty when nothing does).
    pub(super) fn problems(&self) -> &[String] {
        &self.problems
    }

    /// Gives back the per-peer counter slots of leases that left (`table` is the published
    /// lease table), and says when peers find no slot.
    pub(super) fn sweep_counters(
        &mut self,
        dp: Option<&Datapath>,
        table: std::sync::Arc<LeaseTable>,
    ) {
        let Some(dp) = dp else {
            return;
        };
        let peers = &dp.counters().peers;
        let prev = self.swept.clone().unwrap_or_else(|| table.clone());
        let live = |ip: IpAddr| match ip {
            IpAddr::V4(a) => table.lookup_underlay(a).is_some(),
            IpAddr::V6(a) => table.lookup_underlay6(a).is_some(),
        };
        let subnet_of = |ip: IpAddr| match ip {
            IpAddr::V4(a) => prev.lookup_underlay(a).map(|p| p.subnet.to_string()),
            IpAddr::V6(a) => prev.lookup_underlay6(a).map(|p| p.subnet.to_string()),
        };
        let swept = peers.sweep(std::time::Instant::now(), live, subnet_of);
        if swept.freed > 0 {
            tracing::debug!(
                freed = swept.freed,
                used = swept.used,
                "per-peer counter slots given back"
            );
        }
        let overflow = peers.overflow();
        let quiet = self
            .overflow
            .1
            .is_some_and(|at| at.elapsed() < std::time::Duration::from_secs(60));
        if overflow > self.overflow.0 && !quiet {
            warn!(
                slots = crate::dataplane::counters::PEER_SLOTS - 1,
                used = swept.used,
                "every per-peer counter slot is in use: further peers count only in the totals (weft_peer_slots_overflow_total; logged at most once a minute)"
            );
            self.overflow.1 = Some(std::time::Instant::now());
        }
        self.overflow.0 = overflow;
        self.swept = Some(table);
    }

    /// Checks everything, repairing the plumbing; `table` is the published lease table.
    pub(super) async fn check(&mut self, dp: Option<&Datapath>, table: &LeaseTable) {
        let mut problems = Vec::new();
        if let Some(p) = &self.plumbing {
            let f = p.check(table).await;
            plumbing::log_repairs(&f);
            problems.extend(f.broken);
        }
        for addr in &self.underlay {
            let present = match addr {
                IpAddr::V4(a) => iface::ipv4_addrs().is_ok_and(|l| l.iter().any(|x| x.addr == *a)),
                IpAddr::V6(a) => iface::ipv6_addrs().is_ok_and(|l| l.iter().any(|x| x.addr == *a)),
            };
            if !present {
                problems.push(format!(
                    "the underlay address {addr} is on no interface any more (it was on {}): peers' packets to it cannot arrive",
                    self.iface
                ));
            }
        }
        if let Some(dp) = dp {
            let c = dp.counters();
            let now = (
                c.tx_messages.load(std::sync::atomic::Ordering::Relaxed),
                c.tx_errors.load(std::sync::atomic::Ordering::Relaxed),
            );
            if now.1 > self.sent.1 && now.0 == self.sent.0 {
                problems.push(format!(
                    "every send to the underlay failed in the last check ({} errors)",
                    now.1 - self.sent.1
                ));
            }
            self.sent = now;
        }
        if problems != self.problems {
            match problems.is_empty() {
                true => info!("the data path can work again: ready"),
                false => {
                    warn!(problems = %problems.join("; "), "the data path cannot work: not ready")
                }
            }
        }
        self.problems = problems;
    }
}
