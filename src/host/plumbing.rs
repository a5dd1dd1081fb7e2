//! The node's own plumbing, kept as the direct routes are kept: the TUN's link state, MTU and
//! addresses, and the route of the Network (and the IPv6Network) through it. Someone deleting
//! the route by hand, setting the TUN down or changing its MTU would cut every pod off
//! without stopping weft; [`Plumbing::check`] finds that and puts it back, once a second and
//! at once on every netlink link, address or route change ([`watch_changes`]). What it cannot
//! put back, and an underlay address that went away, it reports: `/readyz` then says 503 with
//! the reason until it works again.
//!
//! Checks are cheap: two interface ioctls, one address listing, and a route lookup (`ip route
//! get`) of one Network address no lease holds, so a host with a large routing table costs
//! no more than a small one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::{StreamExt, TryStreamExt};
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage, RouteProtocol, RouteScope};
use rtnetlink::{Handle, RouteMessageBuilder};
use tokio::sync::mpsc;
use tracing::warn;

use crate::sys::iface;
use crate::table::LeaseTable;
use crate::wire::{Subnet, Subnet6};

/// The TUN's IPv4 side: its address (our subnet's network address, with the Network's
/// prefix, so the kernel routes the Network to it) and the Network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Side4 {
    /// Our subnet (its network address is the TUN's address; its hosts are not the TUN's).
    pub own: Subnet,
    /// The Network.
    pub network: Subnet,
}

/// The TUN's IPv6 side, as [`Side4`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Side6 {
    /// Our IPv6 subnet.
    pub own: Subnet6,
    /// The IPv6Network.
    pub network: Subnet6,
}

/// What one check found: what it put back, and what is still broken.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    /// Repairs made, in words (logged by the caller).
    pub repaired: Vec<String>,
    /// Problems left, in words (`/readyz` reasons).
    pub broken: Vec<String>,
}

/// The plumbing of one TUN.
#[derive(Debug)]
pub struct Plumbing {
    tun: String,
    mtu: u32,
    v4: Option<Side4>,
    v6: Option<Side6>,
    handle: Handle,
}

impl Plumbing {
    /// The plumbing of `tun` (MTU `mtu`) with its IPv4 and IPv6 sides; opens an rtnetlink
    /// socket whose connection runs on the current tokio runtime.
    pub fn new(
        tun: &str,
        mtu: u32,
        v4: Option<Side4>,
        v6: Option<Side6>,
    ) -> std::io::Result<Plumbing> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Plumbing {
            tun: tun.to_string(),
            mtu,
            v4,
            v6,
            handle,
        })
    }

    /// Checks every part and puts back what it can. `table` says which Network addresses
    /// leases hold (direct routes may take those elsewhere).
    pub async fn check(&self, table: &LeaseTable) -> Findings {
        let mut f = Findings::default();
        let tun = &self.tun;
        match iface::is_up(tun) {
            Ok(true) => {}
            Ok(false) => fix(&mut f, format!("TUN {tun} was down"), iface::set_up(tun)),
            Err(e) => {
                f.broken
                    .push(format!("TUN {tun} is gone or unreadable: {e}"));
                return f;
            }
        }
        match iface::mtu(tun) {
            Ok(m) if m == self.mtu => {}
            Ok(m) => fix(
                &mut f,
                format!("TUN {tun} MTU was {m}, not {}", self.mtu),
                iface::set_mtu(tun, self.mtu),
            ),
            Err(e) => f.broken.push(format!("TUN {tun} MTU unreadable: {e}")),
        }
        if let Some(v4) = self.v4 {
            self.check4(v4, table, &mut f).await;
        }
        if let Some(v6) = self.v6 {
            self.check6(v6, table, &mut f).await;
        }
        f
    }

    async fn check4(&self, v4: Side4, table: &LeaseTable, f: &mut Findings) {
        let tun = &self.tun;
        let addr = v4.own.addr();
        let has = iface::ipv4_addrs()
            .map(|a| a.iter().any(|x| x.name == *tun && x.addr == addr))
            .unwrap_or(false);
        if !has {
            let what = format!(
                "TUN {tun} had lost its address {addr}/{}",
                v4.network.prefix_len()
            );
            fix(f, what, iface::set_ipv4(tun, addr, v4.network.prefix_len()));
        }
        let Some(probe) = probe4(v4, table) else {
            return;
        };
        let Ok(index) = nix::net::if_::if_nametoindex(tun.as_str()) else {
            return;
        };
        match self.route_oif(IpAddr::V4(probe)).await {
            Some(oif) if oif == index => {}
            _ => {
                let route = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(v4.network.addr(), v4.network.prefix_len())
                    .output_interface(index)
                    .pref_source(addr)
                    .scope(RouteScope::Link)
                    .protocol(RouteProtocol::Kernel)
                    .build();
                let what = format!("the Network route {} dev {tun} was missing", v4.network);
                let done = self.add_route(route).await;
                fix(f, what, done);
            }
        }
    }

    async fn check6(&self, v6: Side6, table: &LeaseTable, f: &mut Findings) {
        let tun = &self.tun;
        let addr = v6.own.addr();
        let has = iface::ipv6_addrs()
            .map(|a| a.iter().any(|x| x.name == *tun && x.addr == addr))
            .unwrap_or(false);
        if !has {
            let what = format!(
                "TUN {tun} had lost its address {addr}/{}",
                v6.network.prefix_len()
            );
            fix(f, what, iface::add_ipv6(tun, addr, v6.network.prefix_len()));
        }
        let Some(probe) = probe6(v6, table) else {
            return;
        };
        let Ok(index) = nix::net::if_::if_nametoindex(tun.as_str()) else {
            return;
        };
        match self.route_oif(IpAddr::V6(probe)).await {
            Some(oif) if oif == index => {}
            _ => {
                let route = RouteMessageBuilder::<Ipv6Addr>::new()
                    .destination_prefix(v6.network.addr(), v6.network.prefix_len())
                    .output_interface(index)
                    .protocol(RouteProtocol::Kernel)
                    .build();
                let what = format!("the IPv6Network route {} dev {tun} was missing", v6.network);
                let done = self.add_route(route).await;
                fix(f, what, done);
            }
        }
    }

    /// The output interface of the route the kernel picks for `dst` (`ip route get`); `None`
    /// when it has none (unreachable) or the lookup failed.
    async fn route_oif(&self, dst: IpAddr) -> Option<u32> {
        let msg = match dst {
            IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(a, 32)
                .build(),
            IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(a, 128)
                .build(),
        };
        let reply: Option<RouteMessage> = self
            .handle
            .route()
            .get(msg)
            .execute()
            .take(1)
            .try_collect::<Vec<_>>()
            .await
            .ok()?
            .into_iter()
            .next();
        reply?.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        })
    }

    async fn add_route(&self, route: RouteMessage) -> std::io::Result<()> {
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(std::io::Error::other)
    }
}

/// Records the outcome of a repair of `what`.
fn fix(f: &mut Findings, what: String, done: std::io::Result<()>) {
    match done {
        Ok(()) => f.repaired.push(format!("{what}: put back")),
        Err(e) => f
            .broken
            .push(format!("{what} and could not be put back: {e}")),
    }
}

/// An IPv4 address of the Network that routes through the TUN when all is well: in no
/// lease's subnet (a direct route may take those) and not in ours (the bridge has those). The
/// highest subnets are tried first (leases are handed out from the lowest).
fn probe4(v4: Side4, table: &LeaseTable) -> Option<Ipv4Addr> {
    let (net, len) = (
        u64::from(u32::from(v4.network.addr())),
        v4.network.prefix_len(),
    );
    let sub_len = table.prefix_len().clamp(len, 31);
    let size = 1u64 << (32 - u32::from(sub_len));
    let count = 1u64 << (u32::from(sub_len) - u32::from(len));
    (0..count.min(64)).find_map(|k| {
        let a = Ipv4Addr::from((net + (count - 1 - k) * size + 1) as u32);
        let free = table.lookup(a).is_none() && !v4.own.contains(a);
        free.then_some(a)
    })
}

/// [`probe4`] for the IPv6Network.
fn probe6(v6: Side6, table: &LeaseTable) -> Option<Ipv6Addr> {
    let (net, len) = (u128::from(v6.network.addr()), v6.network.prefix_len());
    let sub_len = table.prefix_len6().unwrap_or(64).max(len).min(127);
    let size = 1u128 << (128 - u32::from(sub_len));
    let count = 1u128 << (u32::from(sub_len - len).min(64));
    (0..count.min(64)).find_map(|k| {
        let a = Ipv6Addr::from(net.wrapping_add((count - 1 - k) * size) | 1);
        let free = table.lookup6(a).is_none() && !v6.own.contains(a);
        free.then_some(a)
    })
}

/// Netlink change events (links, and addresses and routes of both families) in this
/// namespace, as pokes: the caller checks its plumbing at once instead of at its next tick.
/// The channel holds one poke; more arriving meanwhile are one.
pub fn watch_changes() -> std::io::Result<mpsc::Receiver<()>> {
    use rtnetlink::constants::{
        RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE, RTMGRP_LINK,
    };
    use rtnetlink::sys::AsyncSocket;
    let (mut conn, handle, mut messages) = rtnetlink::new_connection()?;
    let groups = RTMGRP_LINK
        | RTMGRP_IPV4_IFADDR
        | RTMGRP_IPV4_ROUTE
        | RTMGRP_IPV6_IFADDR
        | RTMGRP_IPV6_ROUTE;
    conn.socket_mut()
        .socket_mut()
        .bind(&rtnetlink::sys::SocketAddr::new(0, groups))?;
    tokio::spawn(conn);
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        // The connection lives as long as a handle to it does.
        let _handle = handle;
        while messages.next().await.is_some() {
            if tx.is_closed() {
                return;
            }
            let _ = tx.try_send(());
        }
    });
    Ok(rx)
}

/// Logs what a check repaired, each repair as it happens.
pub fn log_repairs(f: &Findings) {
    for r in &f.repaired {
        warn!(repair = %r, "the node's plumbing was changed under it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{LocalVtep, Peer};
    use crate::wire::{EthernetAddress, Vni};

    #[test]
    fn the_probe_address_is_in_the_network_and_in_no_lease() {
        let local = LocalVtep {
            vni: Vni::new(1).unwrap(),
            mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
            port: 8472,
        };
        let s = |t: &str| t.parse::<Subnet>().unwrap();
        let peer = |t: &str| Peer::new(s(t), Ipv4Addr::new(192, 168, 64, 9), None, &local);
        let v4 = Side4 {
            own: s("10.1.2.0/24"),
            network: s("10.1.0.0/16"),
        };
        let empty = LeaseTable::empty(24);
        assert_eq!(probe4(v4, &empty), Some(Ipv4Addr::new(10, 1, 255, 1)));
        // The top subnet leased (a direct route may take it): the next one down.
        let t = LeaseTable::from_peers(24, vec![peer("10.1.255.0/24")], 1);
        assert_eq!(probe4(v4, &t), Some(Ipv4Addr::new(10, 1, 254, 1)));
        // Our own subnet at the top is skipped too.
        let top = Side4 {
            own: s("10.1.255.0/24"),
            ..v4
        };
        assert_eq!(probe4(top, &empty), Some(Ipv4Addr::new(10, 1, 254, 1)));
        let v6 = Side6 {
            own: "fd10:0:0:2::/64".parse().unwrap(),
            network: "fd10::/48".parse().unwrap(),
        };
        let p = probe6(v6, &LeaseTable::empty_dual(24, 64)).unwrap();
        assert!(v6.network.contains(p) && !v6.own.contains(p), "{p}");
    }
}
