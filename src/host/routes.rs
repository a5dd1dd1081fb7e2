//! Direct routes to remote pod subnets (flannel's host-gw, and vxlan's `DirectRouting`):
//! `<subnet> via <PublicIP>` in the main table, one per lease, kept in step with the lease
//! table over rtnetlink.
//!
//! Every route weft installs carries the protocol number [`RTPROT_WEFT`] (87, shown by
//! `ip route` as `proto 87`), so a reconcile only ever lists, replaces and deletes routes with
//! that number, and only inside the Network; it leaves every other route alone and never
//! replaces a route it did not create (a connected route, the default route, the underlay's),
//! whatever a lease in etcd asks for. Reconciling is "dump ours, diff against
//! the wanted set, replace what is missing or wrong, delete what is no longer wanted"; the
//! pure part ([`wanted_routes`], [`plan`]) is separate from the netlink part
//! ([`RouteTable`]) so it can be unit-tested without a kernel.
//!
//! Routes stay in place when weft stops (flanneld does the same): a restart must not
//! blackhole pod traffic, and the first reconcile after the restart removes whatever went
//! stale in between.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, RouteMessageBuilder};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::sys::iface;
use crate::table::{LeaseTable, SharedTable};
use crate::wire::Subnet;

/// The route protocol number (`rtm_protocol`) of every route weft installs. 87 is `'W'`; it is
/// not assigned in iproute2's `rt_protos` (which reserves 0-18, 42, 99, 186-192). Name it for
/// `ip route` with `echo "87 weft" >> /etc/iproute2/rt_protos`.
pub const RTPROT_WEFT: u8 = 87;

/// How often the reconciler looks for a newly published lease table.
pub const TABLE_POLL: Duration = Duration::from_millis(200);

/// Which peers get a direct route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectPolicy {
    /// host-gw: every peer.
    All,
    /// vxlan `DirectRouting`: peers whose PublicIP lies in one of these connected prefixes
    /// (the underlay interface's own subnets); the rest stay on the tunnel.
    Connected(Vec<Subnet>),
}

impl DirectPolicy {
    fn admits(&self, gateway: Ipv4Addr) -> bool {
        match self {
            DirectPolicy::All => true,
            DirectPolicy::Connected(prefixes) => prefixes.iter().any(|p| p.contains(gateway)),
        }
    }
}

/// The routes a lease table asks for: remote subnet -> its node's PublicIP. Only subnets
/// inside the Network count (the store already refuses others; this is the second line).
/// Leases that carry our own subnet or our own address are skipped (a stale lease of ours
/// must not route our pods away).
pub fn wanted_routes(
    table: &LeaseTable,
    policy: &DirectPolicy,
    network: Subnet,
    own_subnet: Subnet,
    own_ip: Ipv4Addr,
) -> BTreeMap<Subnet, Ipv4Addr> {
    table
        .iter()
        .filter(|p| network.contains_subnet(&p.subnet))
        .filter(|p| p.subnet != own_subnet && p.public_ip != own_ip)
        .filter(|p| !p.public_ip.is_unspecified() && policy.admits(p.public_ip))
        .map(|p| (p.subnet, p.public_ip))
        .collect()
}

/// The main table as a reconcile sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MainRoutes {
    /// Our routes (protocol 87) inside the Network: subnet -> gateway.
    pub ours: BTreeMap<Subnet, Ipv4Addr>,
    /// Destinations of every other route in the main table (never replaced or removed).
    pub foreign: BTreeSet<Subnet>,
}

/// What a reconcile has to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutePlan {
    /// Routes to add (missing) or replace (ours, with another gateway).
    pub install: Vec<(Subnet, Ipv4Addr)>,
    /// Routes of ours to delete (no lease wants them any more), with their current gateway.
    pub remove: Vec<(Subnet, Ipv4Addr)>,
    /// Wanted routes not installed because a route weft does not own has that destination.
    pub blocked: Vec<(Subnet, Ipv4Addr)>,
}

impl RoutePlan {
    /// Whether the kernel already matches (as far as weft may change it).
    pub fn is_empty(&self) -> bool {
        self.install.is_empty() && self.remove.is_empty()
    }
}

/// Diffs the main table (`current`) against the routes we want.
pub fn plan(current: &MainRoutes, wanted: &BTreeMap<Subnet, Ipv4Addr>) -> RoutePlan {
    let (blocked, missing): (Vec<_>, Vec<_>) = wanted
        .iter()
        .filter(|(s, gw)| current.ours.get(s) != Some(gw))
        .map(|(s, gw)| (*s, *gw))
        .partition(|(s, _)| current.foreign.contains(s) && !current.ours.contains_key(s));
    RoutePlan {
        install: missing,
        remove: current
            .ours
            .iter()
            .filter(|(s, _)| !wanted.contains_key(s))
            .map(|(s, gw)| (*s, *gw))
            .collect(),
        blocked,
    }
}

/// Why a route operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// Opening the rtnetlink socket failed.
    #[error("opening an rtnetlink socket")]
    Open(#[source] std::io::Error),
    /// Listing the routes failed.
    #[error("listing IPv4 routes")]
    Dump(#[source] rtnetlink::Error),
    /// Adding or replacing a route failed (e.g. the gateway is not on a connected network).
    #[error("adding route {subnet} via {gateway}")]
    Install {
        /// Destination.
        subnet: Subnet,
        /// Gateway.
        gateway: Ipv4Addr,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// Deleting a route failed.
    #[error("deleting route {subnet} via {gateway}")]
    Remove {
        /// Destination.
        subnet: Subnet,
        /// Gateway.
        gateway: Ipv4Addr,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// Listing the interface addresses (for `DirectRouting`) failed.
    #[error("listing interface addresses")]
    Addrs(#[source] std::io::Error),
}

/// The main routing table of this network namespace, as far as weft's routes go.
#[derive(Debug, Clone)]
pub struct RouteTable {
    handle: Handle,
}

fn route_message(subnet: Subnet, gateway: Ipv4Addr) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(subnet.addr(), subnet.prefix_len())
        .gateway(gateway)
        .protocol(RouteProtocol::from(RTPROT_WEFT))
        .build()
}

/// How a dumped route counts for a reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// One of ours: IPv4 unicast in the main table, protocol 87, with a gateway.
    Ours(Subnet, Ipv4Addr),
    /// Any other IPv4 route in the main table, by destination.
    Foreign(Subnet),
}

/// Classifies a dumped route; `None` for routes outside the main table or not IPv4.
fn classify(msg: &RouteMessage) -> Option<Kind> {
    let h = &msg.header;
    if h.address_family != AddressFamily::Inet {
        return None;
    }
    let mut table = u32::from(h.table);
    let (mut dst, mut gw) = (Ipv4Addr::UNSPECIFIED, None);
    for a in &msg.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let subnet = Subnet::containing(dst, h.destination_prefix_length).ok()?;
    match gw {
        Some(gw) if u8::from(h.protocol) == RTPROT_WEFT && h.kind == RouteType::Unicast => {
            Some(Kind::Ours(subnet, gw))
        }
        _ => Some(Kind::Foreign(subnet)),
    }
}

/// `(subnet, gateway)` of a dumped route if it is one of ours.
#[cfg(test)]
fn ours(msg: &RouteMessage) -> Option<(Subnet, Ipv4Addr)> {
    match classify(msg)? {
        Kind::Ours(s, gw) => Some((s, gw)),
        Kind::Foreign(_) => None,
    }
}

impl RouteTable {
    /// Opens an rtnetlink socket; its connection runs as a task on the current tokio runtime.
    pub fn open() -> Result<RouteTable, RouteError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(RouteError::Open)?;
        tokio::spawn(conn);
        Ok(RouteTable { handle })
    }

    /// The main table: our routes inside `network`, and every other route's destination.
    /// A route of ours outside the Network (left by an older weft) counts as foreign: it is
    /// never touched.
    pub async fn main_routes(&self, network: Subnet) -> Result<MainRoutes, RouteError> {
        let req = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let msgs: Vec<RouteMessage> = self
            .handle
            .route()
            .get(req)
            .execute()
            .try_collect()
            .await
            .map_err(RouteError::Dump)?;
        let mut out = MainRoutes::default();
        for kind in msgs.iter().filter_map(classify) {
            match kind {
                Kind::Ours(s, gw) if network.contains_subnet(&s) => {
                    out.ours.insert(s, gw);
                }
                Kind::Ours(s, _) | Kind::Foreign(s) => {
                    out.foreign.insert(s);
                }
            }
        }
        Ok(out)
    }

    /// Adds `subnet via gateway`. `replace` replaces our own route to that prefix; without it
    /// the kernel refuses (EEXIST) when any route to exactly that prefix exists, so a route
    /// weft does not own is never overwritten, even one that appeared since the last dump.
    pub async fn install(
        &self,
        subnet: Subnet,
        gateway: Ipv4Addr,
        replace: bool,
    ) -> Result<(), RouteError> {
        let add = self.handle.route().add(route_message(subnet, gateway));
        let add = if replace { add.replace() } else { add };
        add.execute().await.map_err(|source| RouteError::Install {
            subnet,
            gateway,
            source,
        })
    }

    /// Deletes our route `subnet via gateway`.
    pub async fn remove(&self, subnet: Subnet, gateway: Ipv4Addr) -> Result<(), RouteError> {
        self.handle
            .route()
            .del(route_message(subnet, gateway))
            .execute()
            .await
            .map_err(|source| RouteError::Remove {
                subnet,
                gateway,
                source,
            })
    }

    /// Brings our routes inside `network` in line with `wanted`. Every step is tried; the
    /// first failure is returned after the rest ran, so one unreachable gateway does not hold
    /// up the others.
    pub async fn reconcile(
        &self,
        network: Subnet,
        wanted: &BTreeMap<Subnet, Ipv4Addr>,
    ) -> Result<RoutePlan, RouteError> {
        let current = self.main_routes(network).await?;
        let p = plan(&current, wanted);
        let mut first_err = None;
        for &(subnet, gateway) in &p.remove {
            match self.remove(subnet, gateway).await {
                Ok(()) => info!(%subnet, %gateway, "route removed"),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        for &(subnet, gateway) in &p.install {
            let replace = current.ours.contains_key(&subnet);
            match self.install(subnet, gateway, replace).await {
                Ok(()) => info!(%subnet, %gateway, "route installed"),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(p),
        }
    }
}

/// What the route reconciler needs to know about this node.
#[derive(Debug, Clone)]
pub struct RouteOptions {
    /// host-gw (every peer) or DirectRouting (same-segment peers only).
    pub direct_only_connected: bool,
    /// The underlay interface (its prefixes decide "same segment").
    pub underlay_iface: String,
    /// The Network: no route outside it is ever made or touched.
    pub network: Subnet,
    /// Our own subnet (never routed away).
    pub own_subnet: Subnet,
    /// Our own PublicIP.
    pub own_ip: Ipv4Addr,
    /// Full reconcile period, also without table changes (`--route-resync-secs`).
    pub resync: Duration,
}

fn policy(opts: &RouteOptions) -> Result<DirectPolicy, RouteError> {
    if !opts.direct_only_connected {
        return Ok(DirectPolicy::All);
    }
    let prefixes = iface::ipv4_addrs()
        .map_err(RouteError::Addrs)?
        .into_iter()
        .filter(|a| a.name == opts.underlay_iface)
        .filter_map(|a| Subnet::containing(a.addr, a.prefix_len).ok())
        .collect();
    Ok(DirectPolicy::Connected(prefixes))
}

/// Keeps the direct routes in step with the published lease table until `stop` turns true:
/// reconciles when a new table is published (polled every [`TABLE_POLL`]) and every
/// `opts.resync`, so a deleted lease's route goes within a poll and a route removed by hand
/// comes back within a resync. Failures are logged (at most once per resync period while they
/// repeat) and retried at the next resync.
pub async fn run(
    routes: RouteTable,
    table: SharedTable,
    opts: RouteOptions,
    mut stop: watch::Receiver<bool>,
) {
    let mut poll = tokio::time::interval(TABLE_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut resync = tokio::time::interval(opts.resync.max(Duration::from_millis(100)));
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen: Option<Arc<LeaseTable>> = None;
    let mut failing = false;
    let mut blocked = Vec::new();
    loop {
        let full = tokio::select! {
            _ = stop.changed() => return,
            _ = poll.tick() => false,
            _ = resync.tick() => true,
        };
        if *stop.borrow() {
            return;
        }
        let now = table.load_full();
        if !full && seen.as_ref().is_some_and(|s| Arc::ptr_eq(s, &now)) {
            continue;
        }
        seen = Some(now.clone());
        let result = match policy(&opts) {
            Ok(pol) => {
                let wanted = wanted_routes(&now, &pol, opts.network, opts.own_subnet, opts.own_ip);
                routes
                    .reconcile(opts.network, &wanted)
                    .await
                    .map(|p| (p, wanted.len()))
            }
            Err(e) => Err(e),
        };
        match result {
            Ok((p, n)) => {
                if p.blocked != blocked {
                    for (subnet, gateway) in &p.blocked {
                        warn!(%subnet, %gateway, "not routing this lease: a route weft does not own has that destination; weft never replaces it");
                    }
                    blocked = p.blocked.clone();
                }
                if failing {
                    info!(routes = n, "routes reconciled again");
                }
                failing = false;
                if !p.is_empty() {
                    info!(
                        routes = n,
                        installed = p.install.len(),
                        removed = p.remove.len(),
                        "routes reconciled"
                    );
                } else {
                    debug!(routes = n, "routes in place");
                }
            }
            Err(e) => {
                // On a table change log every time (it is a new state); on resync only when
                // the failure is new, so a permanent error logs once per change.
                if !failing || !full {
                    warn!(error = %crate::error::Chain(&e), "route reconcile failed; retrying at the next resync");
                }
                failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{LocalVtep, Peer};
    use crate::wire::vxlan::Vni;
    use crate::wire::EthernetAddress;

    fn sn(a: [u8; 4], len: u8) -> Subnet {
        Subnet::new(Ipv4Addr::from(a), len).unwrap()
    }

    fn table(peers: &[([u8; 4], [u8; 4])]) -> LeaseTable {
        let local = LocalVtep {
            vni: Vni::new(1).unwrap(),
            mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
            port: 8472,
        };
        let peers = peers
            .iter()
            .map(|(s, ip)| Peer::new(sn(*s, 24), Ipv4Addr::from(*ip), None, &local))
            .collect();
        LeaseTable::from_peers(24, peers, 1)
    }

    #[test]
    fn host_gw_routes_every_peer_but_us() {
        let t = table(&[
            ([10, 1, 1, 0], [192, 168, 64, 10]),
            ([10, 1, 2, 0], [192, 168, 64, 11]),
            ([10, 1, 3, 0], [192, 168, 65, 10]),
            // A stale lease with our address and one with our subnet.
            ([10, 1, 4, 0], [192, 168, 64, 12]),
            ([10, 1, 5, 0], [192, 168, 64, 13]),
        ]);
        let w = wanted_routes(
            &t,
            &DirectPolicy::All,
            sn([10, 1, 0, 0], 16),
            sn([10, 1, 5, 0], 24),
            Ipv4Addr::new(192, 168, 64, 12),
        );
        let want: BTreeMap<_, _> = [
            (sn([10, 1, 1, 0], 24), Ipv4Addr::new(192, 168, 64, 10)),
            (sn([10, 1, 2, 0], 24), Ipv4Addr::new(192, 168, 64, 11)),
            (sn([10, 1, 3, 0], 24), Ipv4Addr::new(192, 168, 65, 10)),
        ]
        .into();
        assert_eq!(w, want);
    }

    #[test]
    fn direct_routing_only_connected_peers() {
        let t = table(&[
            ([10, 1, 1, 0], [192, 168, 64, 10]),
            ([10, 1, 3, 0], [192, 168, 65, 10]),
        ]);
        let pol = DirectPolicy::Connected(vec![sn([192, 168, 64, 0], 24)]);
        let w = wanted_routes(
            &t,
            &pol,
            sn([10, 1, 0, 0], 16),
            sn([10, 1, 9, 0], 24),
            Ipv4Addr::new(192, 168, 64, 11),
        );
        assert_eq!(w.len(), 1);
        assert_eq!(
            w.get(&sn([10, 1, 1, 0], 24)),
            Some(&Ipv4Addr::new(192, 168, 64, 10))
        );
        let none = DirectPolicy::Connected(Vec::new());
        assert!(wanted_routes(
            &t,
            &none,
            sn([10, 1, 0, 0], 16),
            sn([10, 1, 9, 0], 24),
            Ipv4Addr::new(192, 168, 64, 11)
        )
        .is_empty());
    }

    #[test]
    fn plan_adds_replaces_and_removes() {
        let gw = |d| Ipv4Addr::new(192, 168, 64, d);
        let current = MainRoutes {
            ours: [
                (sn([10, 1, 1, 0], 24), gw(10)), // kept
                (sn([10, 1, 2, 0], 24), gw(11)), // gateway moved
                (sn([10, 1, 3, 0], 24), gw(12)), // lease gone
            ]
            .into(),
            foreign: BTreeSet::new(),
        };
        let wanted: BTreeMap<_, _> = [
            (sn([10, 1, 1, 0], 24), gw(10)),
            (sn([10, 1, 2, 0], 24), gw(21)),
            (sn([10, 1, 4, 0], 24), gw(13)), // new lease
        ]
        .into();
        let p = plan(&current, &wanted);
        assert_eq!(
            p.install,
            vec![
                (sn([10, 1, 2, 0], 24), gw(21)),
                (sn([10, 1, 4, 0], 24), gw(13))
            ]
        );
        assert_eq!(p.remove, vec![(sn([10, 1, 3, 0], 24), gw(12))]);
        assert!(p.blocked.is_empty());
        let settled = MainRoutes {
            ours: wanted.clone(),
            foreign: BTreeSet::new(),
        };
        assert!(plan(&settled, &wanted).is_empty());
    }

    #[test]
    fn routes_weft_does_not_own_are_never_replaced() {
        let gw = |d| Ipv4Addr::new(192, 168, 64, d);
        // A connected or static route to 10.1.7.0/24 exists; a lease asks for it too.
        let current = MainRoutes {
            ours: BTreeMap::new(),
            foreign: [sn([10, 1, 7, 0], 24)].into(),
        };
        let wanted: BTreeMap<_, _> = [
            (sn([10, 1, 7, 0], 24), gw(10)),
            (sn([10, 1, 8, 0], 24), gw(11)),
        ]
        .into();
        let p = plan(&current, &wanted);
        assert_eq!(p.install, vec![(sn([10, 1, 8, 0], 24), gw(11))]);
        assert_eq!(p.blocked, vec![(sn([10, 1, 7, 0], 24), gw(10))]);
        assert!(p.remove.is_empty());
    }

    #[test]
    fn leases_outside_the_network_want_no_route() {
        // The underlay's own prefix and a public prefix, as hostile leases.
        let t = table(&[
            ([192, 168, 77, 0], [192, 168, 77, 91]),
            ([8, 8, 8, 0], [192, 168, 77, 92]),
            ([10, 1, 1, 0], [192, 168, 77, 10]),
        ]);
        let w = wanted_routes(
            &t,
            &DirectPolicy::All,
            sn([10, 1, 0, 0], 16),
            sn([10, 1, 5, 0], 24),
            Ipv4Addr::new(192, 168, 77, 12),
        );
        assert_eq!(
            w.keys().copied().collect::<Vec<_>>(),
            vec![sn([10, 1, 1, 0], 24)]
        );
    }

    #[test]
    fn other_routes_in_the_main_table_are_foreign() {
        let mine = route_message(sn([10, 1, 2, 0], 24), Ipv4Addr::new(192, 168, 64, 11));
        let mut kernel = mine.clone();
        kernel.header.protocol = RouteProtocol::Kernel;
        kernel
            .attributes
            .retain(|a| !matches!(a, RouteAttribute::Gateway(_)));
        assert_eq!(
            classify(&kernel),
            Some(Kind::Foreign(sn([10, 1, 2, 0], 24)))
        );
        let mut elsewhere = mine;
        elsewhere.header.table = 100;
        assert_eq!(classify(&elsewhere), None);
    }

    #[test]
    fn only_our_protocol_in_main_table_counts() {
        let mine = route_message(sn([10, 1, 2, 0], 24), Ipv4Addr::new(192, 168, 64, 11));
        assert_eq!(
            ours(&mine),
            Some((sn([10, 1, 2, 0], 24), Ipv4Addr::new(192, 168, 64, 11)))
        );
        let mut other = mine.clone();
        other.header.protocol = RouteProtocol::Static;
        assert_eq!(ours(&other), None);
        let mut elsewhere = mine.clone();
        elsewhere.header.table = 100;
        assert_eq!(ours(&elsewhere), None);
        let mut no_gw = mine;
        no_gw
            .attributes
            .retain(|a| !matches!(a, RouteAttribute::Gateway(_)));
        assert_eq!(ours(&no_gw), None);
    }
}
