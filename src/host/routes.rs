//! Direct routes to remote pod subnets (flannel's host-gw, and vxlan's `DirectRouting`):
//! `<subnet> via <PublicIP>` in the main table, one per lease, kept in step with the lease
//! table over rtnetlink; on a dual-stack network also `<IPv6 subnet> via <PublicIPv6>` in the
//! main IPv6 table, as flanneld v0.20.2's host-gw and DirectRouting do.
//!
//! Every route weft installs carries the protocol number [`RTPROT_WEFT`] (87, shown by
//! `ip route` as `proto 87`), so a reconcile only ever lists, replaces and deletes routes with
//! that number, and only inside the Network (the IPv6Network for IPv6); it leaves every other
//! route alone and never replaces a route it did not create (a connected route, the default
//! route, the underlay's), whatever a lease in etcd asks for. Reconciling is "dump ours, diff
//! against the wanted set, replace what is missing or wrong, delete what is no longer wanted";
//! the pure part ([`wanted_routes`], [`plan`]) is separate from the netlink part
//! ([`RouteTable`]) so it can be unit-tested without a kernel. Both are written once, over
//! [`RoutePrefix`], which [`Subnet`] (IPv4) and [`Subnet6`] (IPv6) implement; each family is
//! reconciled on its own, so a failure in one does not hold up the other.
//!
//! Routes stay in place when weft stops (flanneld does the same): a restart must not
//! blackhole pod traffic, and the first reconcile after the restart removes whatever went
//! stale in between.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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

use crate::store::check::unusable_public_ipv6;
use crate::sys::iface;
use crate::table::{LeaseTable, SharedTable};
use crate::wire::{Subnet, Subnet6};

/// The route protocol number (`rtm_protocol`) of every route weft installs. 87 is `'W'`; it is
/// not assigned in iproute2's `rt_protos` (which reserves 0-18, 42, 99, 186-192). Name it for
/// `ip route` with `echo "87 weft" >> /etc/iproute2/rt_protos`.
pub const RTPROT_WEFT: u8 = 87;

/// How often the reconciler looks for a newly published lease table.
pub const TABLE_POLL: Duration = Duration::from_millis(200);

/// A destination prefix of one address family, as the direct routes use it: [`Subnet`] for
/// IPv4 (the Network, the leases' subnets) and [`Subnet6`] for IPv6 (the IPv6Network, the
/// leases' IPv6 subnets). What differs between the families is here; the wanted set, the plan
/// and the netlink part are written once over it.
pub trait RoutePrefix: Copy + Ord + fmt::Debug + fmt::Display + Send + Sync + 'static {
    /// The family's address: a route's gateway, a node's PublicIP or PublicIPv6.
    type Addr: Copy + Ord + fmt::Debug + fmt::Display + Into<IpAddr> + Send + Sync + 'static;
    /// The family's name in logs and errors (`IPv4`, `IPv6`).
    const FAMILY: &'static str;
    /// The family as rtnetlink names it.
    const ADDRESS_FAMILY: AddressFamily;
    /// The unspecified address: the destination of a dumped route that carries none.
    const UNSPECIFIED: Self::Addr;

    /// Whether `addr` lies in this prefix.
    fn holds(&self, addr: Self::Addr) -> bool;
    /// Whether `other` lies wholly in this prefix.
    fn holds_prefix(&self, other: &Self) -> bool;
    /// The prefix of `prefix_len` bits around `addr` (host bits cleared); `None` when the
    /// length is beyond the family's.
    fn around(addr: Self::Addr, prefix_len: u8) -> Option<Self>;
    /// The network address and the prefix length.
    fn parts(&self) -> (Self::Addr, u8);
    /// Whether a lease's public address can be the gateway of a direct route (a route
    /// without an output interface, so never a link-local IPv6 address).
    fn usable_gateway(addr: Self::Addr) -> bool;
    /// The remote leases' halves of this family in `table`: (subnet, public address).
    fn leases(table: &LeaseTable) -> impl Iterator<Item = (Self, Self::Addr)> + '_;
    /// The address in a route attribute, when it is of this family.
    fn from_route_address(addr: &RouteAddress) -> Option<Self::Addr>;
    /// The route `self via gateway` with weft's protocol, in the main table.
    fn route_message(self, gateway: Self::Addr) -> RouteMessage;
    /// A request that dumps every route of this family.
    fn dump_request() -> RouteMessage;
    /// The on-link prefixes of interface `iface` (the networks of its addresses).
    fn connected_prefixes(iface: &str) -> io::Result<Vec<Self>>;
}

impl RoutePrefix for Subnet {
    type Addr = Ipv4Addr;
    const FAMILY: &'static str = "IPv4";
    const ADDRESS_FAMILY: AddressFamily = AddressFamily::Inet;
    const UNSPECIFIED: Ipv4Addr = Ipv4Addr::UNSPECIFIED;

    fn holds(&self, addr: Ipv4Addr) -> bool {
        self.contains(addr)
    }

    fn holds_prefix(&self, other: &Subnet) -> bool {
        self.contains_subnet(other)
    }

    fn around(addr: Ipv4Addr, prefix_len: u8) -> Option<Subnet> {
        Subnet::containing(addr, prefix_len).ok()
    }

    fn parts(&self) -> (Ipv4Addr, u8) {
        (self.addr(), self.prefix_len())
    }

    fn usable_gateway(addr: Ipv4Addr) -> bool {
        !addr.is_unspecified()
    }

    fn leases(table: &LeaseTable) -> impl Iterator<Item = (Subnet, Ipv4Addr)> + '_ {
        table.iter().map(|p| (p.subnet, p.public_ip))
    }

    fn from_route_address(addr: &RouteAddress) -> Option<Ipv4Addr> {
        match addr {
            RouteAddress::Inet(a) => Some(*a),
            _ => None,
        }
    }

    fn route_message(self, gateway: Ipv4Addr) -> RouteMessage {
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(self.addr(), self.prefix_len())
            .gateway(gateway)
            .protocol(RouteProtocol::from(RTPROT_WEFT))
            .build()
    }

    fn dump_request() -> RouteMessage {
        RouteMessageBuilder::<Ipv4Addr>::new().build()
    }

    fn connected_prefixes(iface: &str) -> io::Result<Vec<Subnet>> {
        Ok(iface::ipv4_addrs()?
            .into_iter()
            .filter(|a| a.name == iface)
            .filter_map(|a| Subnet::containing(a.addr, a.prefix_len).ok())
            .collect())
    }
}

impl RoutePrefix for Subnet6 {
    type Addr = Ipv6Addr;
    const FAMILY: &'static str = "IPv6";
    const ADDRESS_FAMILY: AddressFamily = AddressFamily::Inet6;
    const UNSPECIFIED: Ipv6Addr = Ipv6Addr::UNSPECIFIED;

    fn holds(&self, addr: Ipv6Addr) -> bool {
        self.contains(addr)
    }

    fn holds_prefix(&self, other: &Subnet6) -> bool {
        self.contains_subnet(other)
    }

    fn around(addr: Ipv6Addr, prefix_len: u8) -> Option<Subnet6> {
        Subnet6::containing(addr, prefix_len).ok()
    }

    fn parts(&self) -> (Ipv6Addr, u8) {
        (self.addr(), self.prefix_len())
    }

    /// The store's own test for a PublicIPv6: no unspecified, loopback, multicast,
    /// link-local (it would need an output interface) or IPv4-mapped gateway.
    fn usable_gateway(addr: Ipv6Addr) -> bool {
        unusable_public_ipv6(addr).is_none()
    }

    fn leases(table: &LeaseTable) -> impl Iterator<Item = (Subnet6, Ipv6Addr)> + '_ {
        table.iter6().map(|p| (p.subnet, p.public_ip))
    }

    fn from_route_address(addr: &RouteAddress) -> Option<Ipv6Addr> {
        match addr {
            RouteAddress::Inet6(a) => Some(*a),
            _ => None,
        }
    }

    fn route_message(self, gateway: Ipv6Addr) -> RouteMessage {
        RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(self.addr(), self.prefix_len())
            .gateway(gateway)
            .protocol(RouteProtocol::from(RTPROT_WEFT))
            .build()
    }

    fn dump_request() -> RouteMessage {
        RouteMessageBuilder::<Ipv6Addr>::new().build()
    }

    /// Link-local prefixes (fe80::/64 on every interface) are left out: no lease's
    /// PublicIPv6 can be link-local.
    fn connected_prefixes(iface: &str) -> io::Result<Vec<Subnet6>> {
        Ok(iface::ipv6_addrs()?
            .into_iter()
            .filter(|a| a.name == iface && !a.addr.is_unicast_link_local())
            .filter_map(|a| Subnet6::containing(a.addr, a.prefix_len).ok())
            .collect())
    }
}

/// Which peers get a direct route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectPolicy<N: RoutePrefix = Subnet> {
    /// host-gw: every peer.
    All,
    /// vxlan `DirectRouting`: peers whose PublicIP (PublicIPv6) lies in one of these connected
    /// prefixes (the underlay interface's own subnets of that family); the rest stay on the
    /// tunnel.
    Connected(Vec<N>),
}

impl<N: RoutePrefix> DirectPolicy<N> {
    fn admits(&self, gateway: N::Addr) -> bool {
        match self {
            DirectPolicy::All => true,
            DirectPolicy::Connected(prefixes) => prefixes.iter().any(|p| p.holds(gateway)),
        }
    }
}

/// The routes a lease table asks for in one family: remote subnet -> its node's public
/// address. Only subnets inside the Network (IPv6Network) count (the store already refuses
/// others; this is the second line). Leases that carry our own subnet or our own address are
/// skipped (a stale lease of ours must not route our pods away), and so are public addresses
/// that cannot be a gateway.
pub fn wanted_routes<N: RoutePrefix>(
    table: &LeaseTable,
    policy: &DirectPolicy<N>,
    network: N,
    own_subnet: N,
    own_ip: N::Addr,
) -> BTreeMap<N, N::Addr> {
    N::leases(table)
        .filter(|(subnet, _)| network.holds_prefix(subnet))
        .filter(|(subnet, ip)| *subnet != own_subnet && *ip != own_ip)
        .filter(|(_, ip)| N::usable_gateway(*ip) && policy.admits(*ip))
        .collect()
}

/// The main table of one family as a reconcile sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MainRoutes<N: RoutePrefix = Subnet> {
    /// Our routes (protocol 87) inside the Network: subnet -> gateway.
    pub ours: BTreeMap<N, N::Addr>,
    /// Destinations of every other route in the main table (never replaced or removed,
    /// except as [`MainRoutes::flanneld`] says).
    pub foreign: BTreeSet<N>,
    /// Routes inside the Network that look like flanneld's host-gw routes (unicast, a
    /// gateway, protocol `boot`, which its netlink library writes): subnet -> gateway. One
    /// that a lease asks for exactly (its subnet via its PublicIP) is adopted.
    pub flanneld: BTreeMap<N, N::Addr>,
}

impl<N: RoutePrefix> Default for MainRoutes<N> {
    fn default() -> Self {
        MainRoutes {
            ours: BTreeMap::new(),
            foreign: BTreeSet::new(),
            flanneld: BTreeMap::new(),
        }
    }
}

/// What a reconcile of one family has to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePlan<N: RoutePrefix = Subnet> {
    /// Routes to add (missing) or replace (ours, with another gateway).
    pub install: Vec<(N, N::Addr)>,
    /// Routes of ours to delete (no lease wants them any more), with their current gateway.
    pub remove: Vec<(N, N::Addr)>,
    /// Wanted routes not installed because a route weft does not own has that destination.
    pub blocked: Vec<(N, N::Addr)>,
    /// flanneld's routes that are exactly what a lease asks for: made weft's own (protocol
    /// 87) in place, so they follow the lease from then on.
    pub adopt: Vec<(N, N::Addr)>,
}

impl<N: RoutePrefix> Default for RoutePlan<N> {
    fn default() -> Self {
        RoutePlan {
            install: Vec::new(),
            remove: Vec::new(),
            blocked: Vec::new(),
            adopt: Vec::new(),
        }
    }
}

impl<N: RoutePrefix> RoutePlan<N> {
    /// Whether the kernel already matches (as far as weft may change it).
    pub fn is_empty(&self) -> bool {
        self.install.is_empty() && self.remove.is_empty() && self.adopt.is_empty()
    }
}

/// Diffs one family's main table (`current`) against the routes we want.
pub fn plan<N: RoutePrefix>(
    current: &MainRoutes<N>,
    wanted: &BTreeMap<N, N::Addr>,
) -> RoutePlan<N> {
    let (adopt, rest): (Vec<_>, Vec<_>) = wanted
        .iter()
        .filter(|(s, gw)| current.ours.get(s) != Some(gw))
        .map(|(s, gw)| (*s, *gw))
        .partition(|(s, gw)| !current.ours.contains_key(s) && current.flanneld.get(s) == Some(gw));
    let (blocked, missing): (Vec<_>, Vec<_>) = rest
        .into_iter()
        .partition(|(s, _)| current.foreign.contains(s) && !current.ours.contains_key(s));
    RoutePlan {
        adopt,
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
    #[error("listing {family} routes")]
    Dump {
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// Adding or replacing a route failed (e.g. the gateway is not on a connected network).
    #[error("adding route {destination}/{prefix_len} via {gateway}")]
    Install {
        /// Destination network address.
        destination: IpAddr,
        /// Destination prefix length.
        prefix_len: u8,
        /// Gateway.
        gateway: IpAddr,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// Deleting a route failed.
    #[error("deleting route {destination}/{prefix_len} via {gateway}")]
    Remove {
        /// Destination network address.
        destination: IpAddr,
        /// Destination prefix length.
        prefix_len: u8,
        /// Gateway.
        gateway: IpAddr,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// Listing the interface addresses (for `DirectRouting`) failed.
    #[error("listing interface addresses")]
    Addrs(#[source] std::io::Error),
}

/// The main routing tables (IPv4 and IPv6) of this network namespace, as far as weft's
/// routes go.
#[derive(Debug, Clone)]
pub struct RouteTable {
    handle: Handle,
}

/// How a dumped route counts for a reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind<N: RoutePrefix> {
    /// One of ours: unicast in the main table, protocol 87, with a gateway.
    Ours(N, N::Addr),
    /// Unicast in the main table, protocol `boot`, with a gateway: how flanneld's host-gw
    /// (and DirectRouting) routes look.
    Flanneld(N, N::Addr),
    /// Any other route of the family in the main table, by destination.
    Foreign(N),
}

/// Classifies a dumped route; `None` for routes outside the main table or of another family.
fn classify<N: RoutePrefix>(msg: &RouteMessage) -> Option<Kind<N>> {
    let h = &msg.header;
    if h.address_family != N::ADDRESS_FAMILY {
        return None;
    }
    let mut table = u32::from(h.table);
    let (mut dst, mut gw) = (N::UNSPECIFIED, None);
    for a in &msg.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(d) => {
                if let Some(d) = N::from_route_address(d) {
                    dst = d;
                }
            }
            RouteAttribute::Gateway(g) => {
                if let Some(g) = N::from_route_address(g) {
                    gw = Some(g);
                }
            }
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let subnet = N::around(dst, h.destination_prefix_length)?;
    match gw {
        Some(gw) if u8::from(h.protocol) == RTPROT_WEFT && h.kind == RouteType::Unicast => {
            Some(Kind::Ours(subnet, gw))
        }
        Some(gw) if h.protocol == RouteProtocol::Boot && h.kind == RouteType::Unicast => {
            Some(Kind::Flanneld(subnet, gw))
        }
        _ => Some(Kind::Foreign(subnet)),
    }
}

/// `(subnet, gateway)` of a dumped route if it is one of ours.
#[cfg(test)]
fn ours<N: RoutePrefix>(msg: &RouteMessage) -> Option<(N, N::Addr)> {
    match classify::<N>(msg)? {
        Kind::Ours(s, gw) => Some((s, gw)),
        Kind::Foreign(_) | Kind::Flanneld(..) => None,
    }
}

impl RouteTable {
    /// Opens an rtnetlink socket; its connection runs as a task on the current tokio runtime.
    pub fn open() -> Result<RouteTable, RouteError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(RouteError::Open)?;
        tokio::spawn(conn);
        Ok(RouteTable { handle })
    }

    /// The main table of `network`'s family: our routes inside `network`, and every other
    /// route's destination. A route of ours outside the Network (left by an older weft)
    /// counts as foreign: it is never touched.
    pub async fn main_routes<N: RoutePrefix>(
        &self,
        network: N,
    ) -> Result<MainRoutes<N>, RouteError> {
        let msgs: Vec<RouteMessage> = self
            .handle
            .route()
            .get(N::dump_request())
            .execute()
            .try_collect()
            .await
            .map_err(|source| RouteError::Dump {
                family: N::FAMILY,
                source,
            })?;
        let mut out = MainRoutes::default();
        for kind in msgs.iter().filter_map(classify::<N>) {
            match kind {
                Kind::Ours(s, gw) if network.holds_prefix(&s) => {
                    out.ours.insert(s, gw);
                }
                Kind::Flanneld(s, gw) => {
                    if network.holds_prefix(&s) {
                        out.flanneld.insert(s, gw);
                    }
                    out.foreign.insert(s);
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
    pub async fn install<N: RoutePrefix>(
        &self,
        subnet: N,
        gateway: N::Addr,
        replace: bool,
    ) -> Result<(), RouteError> {
        let add = self.handle.route().add(subnet.route_message(gateway));
        let add = if replace { add.replace() } else { add };
        add.execute().await.map_err(|source| {
            let (destination, prefix_len) = subnet.parts();
            RouteError::Install {
                destination: destination.into(),
                prefix_len,
                gateway: gateway.into(),
                source,
            }
        })
    }

    /// Deletes our route `subnet via gateway`.
    pub async fn remove<N: RoutePrefix>(
        &self,
        subnet: N,
        gateway: N::Addr,
    ) -> Result<(), RouteError> {
        self.handle
            .route()
            .del(subnet.route_message(gateway))
            .execute()
            .await
            .map_err(|source| {
                let (destination, prefix_len) = subnet.parts();
                RouteError::Remove {
                    destination: destination.into(),
                    prefix_len,
                    gateway: gateway.into(),
                    source,
                }
            })
    }

    /// Brings our routes inside `network` (of its family) in line with `wanted`. Every step
    /// is tried; the first failure is returned after the rest ran, so one unreachable gateway
    /// does not hold up the others.
    pub async fn reconcile<N: RoutePrefix>(
        &self,
        network: N,
        wanted: &BTreeMap<N, N::Addr>,
    ) -> Result<RoutePlan<N>, RouteError> {
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
        for &(subnet, gateway) in &p.adopt {
            match self.install(subnet, gateway, true).await {
                Ok(()) => {
                    info!(%subnet, %gateway, protocol = RTPROT_WEFT, "adopted a route flanneld left (exactly this lease's subnet via its PublicIP) as weft's own: it follows the lease from now on")
                }
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

/// One family's part of what the reconciler needs to know about this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSide<N: RoutePrefix> {
    /// The Network (IPv6Network): no route outside it is ever made or touched.
    pub network: N,
    /// Our own subnet of this family (never routed away).
    pub own_subnet: N,
    /// Our own PublicIP (PublicIPv6).
    pub own_ip: N::Addr,
}

/// What the route reconciler needs to know about this node.
#[derive(Debug, Clone)]
pub struct RouteOptions {
    /// host-gw (every peer) or DirectRouting (same-segment peers only).
    pub direct_only_connected: bool,
    /// The underlay interface (its prefixes decide "same segment").
    pub underlay_iface: String,
    /// The IPv4 routes: the Network, our subnet and PublicIP. `None` (an IPv6-only network)
    /// never touches the IPv4 table.
    pub ipv4: Option<RouteSide<Subnet>>,
    /// On a dual-stack or IPv6-only network, the IPv6 routes: the IPv6Network, our IPv6 subnet and
    /// PublicIPv6. `None` never touches the IPv6 table.
    pub ipv6: Option<RouteSide<Subnet6>>,
    /// Full reconcile period, also without table changes (`--route-resync-secs`).
    pub resync: Duration,
}

fn policy<N: RoutePrefix>(opts: &RouteOptions) -> Result<DirectPolicy<N>, RouteError> {
    if !opts.direct_only_connected {
        return Ok(DirectPolicy::All);
    }
    let prefixes = N::connected_prefixes(&opts.underlay_iface).map_err(RouteError::Addrs)?;
    Ok(DirectPolicy::Connected(prefixes))
}

/// Keeps the direct routes in step with the published lease table until `stop` turns true:
/// reconciles when a new table is published (polled every [`TABLE_POLL`]) and every
/// `opts.resync`, so a deleted lease's route goes within a poll and a route removed by hand
/// comes back within a resync. Each family given (`opts.ipv4`, `opts.ipv6`) is reconciled on
/// its own. Failures are logged (at most once per resync period while they
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
    let mut v4 = opts.ipv4.map(Keeper::new);
    let mut v6 = opts.ipv6.map(Keeper::new);
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
        if let Some(v4) = v4.as_mut() {
            v4.pass(&routes, &now, &opts, full).await;
        }
        if let Some(v6) = v6.as_mut() {
            v6.pass(&routes, &now, &opts, full).await;
        }
    }
}

/// One family's reconcile state across passes of [`run`].
struct Keeper<N: RoutePrefix> {
    side: RouteSide<N>,
    /// The last pass failed.
    failing: bool,
    /// The wanted routes a foreign route blocked at the last pass (warned about once).
    blocked: Vec<(N, N::Addr)>,
}

impl<N: RoutePrefix> Keeper<N> {
    fn new(side: RouteSide<N>) -> Keeper<N> {
        Keeper {
            side,
            failing: false,
            blocked: Vec::new(),
        }
    }

    /// Reconciles this family's routes with `table`; `full` for a resync (not a table change).
    async fn pass(
        &mut self,
        routes: &RouteTable,
        table: &LeaseTable,
        opts: &RouteOptions,
        full: bool,
    ) {
        let family = N::FAMILY;
        let side = self.side;
        let result = match policy::<N>(opts) {
            Ok(pol) => {
                let wanted = wanted_routes(table, &pol, side.network, side.own_subnet, side.own_ip);
                routes
                    .reconcile(side.network, &wanted)
                    .await
                    .map(|p| (p, wanted.len()))
            }
            Err(e) => Err(e),
        };
        match result {
            Ok((p, n)) => {
                if p.blocked != self.blocked {
                    for (subnet, gateway) in &p.blocked {
                        warn!(%subnet, %gateway, "not routing this lease: a route weft does not own has that destination; weft never replaces it");
                    }
                    self.blocked = p.blocked.clone();
                }
                if self.failing {
                    info!(family, routes = n, "routes reconciled again");
                }
                self.failing = false;
                if !p.is_empty() {
                    info!(
                        family,
                        routes = n,
                        installed = p.install.len(),
                        removed = p.remove.len(),
                        "routes reconciled"
                    );
                } else {
                    debug!(family, routes = n, "routes in place");
                }
            }
            Err(e) => {
                // On a table change log every time (it is a new state); on resync only when
                // the failure is new, so a permanent error logs once per change.
                if !self.failing || !full {
                    warn!(family, error = %crate::error::Chain(&e), "route reconcile failed; retrying at the next resync");
                }
                self.failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{LocalVtep, Peer, Peer6};
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
            ..MainRoutes::default()
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
            ..MainRoutes::default()
        };
        assert!(plan(&settled, &wanted).is_empty());
    }

    #[test]
    fn flanneld_routes_a_lease_asks_for_exactly_are_adopted() {
        let gw = |d| Ipv4Addr::new(192, 168, 64, d);
        // flanneld left 10.1.7.0/24 via .10 (the lease's), 10.1.8.0/24 via .99 (not the
        // lease's gateway) and 10.1.9.0/24 via .12 (no lease): only the first is adopted.
        let theirs: BTreeMap<_, _> = [
            (sn([10, 1, 7, 0], 24), gw(10)),
            (sn([10, 1, 8, 0], 24), gw(99)),
            (sn([10, 1, 9, 0], 24), gw(12)),
        ]
        .into();
        let current = MainRoutes {
            ours: BTreeMap::new(),
            foreign: theirs.keys().copied().collect(),
            flanneld: theirs,
        };
        let wanted: BTreeMap<_, _> = [
            (sn([10, 1, 7, 0], 24), gw(10)),
            (sn([10, 1, 8, 0], 24), gw(11)),
        ]
        .into();
        let p = plan(&current, &wanted);
        assert_eq!(p.adopt, vec![(sn([10, 1, 7, 0], 24), gw(10))]);
        assert_eq!(p.blocked, vec![(sn([10, 1, 8, 0], 24), gw(11))]);
        assert!(p.install.is_empty() && p.remove.is_empty());
        // Once adopted it is ours, and follows the lease like any other.
        let adopted = MainRoutes {
            ours: [(sn([10, 1, 7, 0], 24), gw(10))].into(),
            foreign: [sn([10, 1, 8, 0], 24), sn([10, 1, 9, 0], 24)].into(),
            flanneld: [
                (sn([10, 1, 8, 0], 24), gw(99)),
                (sn([10, 1, 9, 0], 24), gw(12)),
            ]
            .into(),
        };
        let moved: BTreeMap<_, _> = [(sn([10, 1, 7, 0], 24), gw(20))].into();
        let p = plan(&adopted, &moved);
        assert_eq!(p.install, vec![(sn([10, 1, 7, 0], 24), gw(20))]);
        assert!(p.adopt.is_empty());
    }

    #[test]
    fn routes_weft_does_not_own_are_never_replaced() {
        let gw = |d| Ipv4Addr::new(192, 168, 64, d);
        // A connected or static route to 10.1.7.0/24 exists; a lease asks for it too.
        let current = MainRoutes {
            ours: BTreeMap::new(),
            foreign: [sn([10, 1, 7, 0], 24)].into(),
            ..MainRoutes::default()
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
        let mine = sn([10, 1, 2, 0], 24).route_message(Ipv4Addr::new(192, 168, 64, 11));
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
        assert_eq!(classify::<Subnet>(&elsewhere), None);
    }

    #[test]
    fn only_our_protocol_in_main_table_counts() {
        let mine = sn([10, 1, 2, 0], 24).route_message(Ipv4Addr::new(192, 168, 64, 11));
        assert_eq!(
            ours(&mine),
            Some((sn([10, 1, 2, 0], 24), Ipv4Addr::new(192, 168, 64, 11)))
        );
        let mut other = mine.clone();
        other.header.protocol = RouteProtocol::Static;
        assert_eq!(ours::<Subnet>(&other), None);
        let mut elsewhere = mine.clone();
        elsewhere.header.table = 100;
        assert_eq!(ours::<Subnet>(&elsewhere), None);
        let mut no_gw = mine;
        no_gw
            .attributes
            .retain(|a| !matches!(a, RouteAttribute::Gateway(_)));
        assert_eq!(ours::<Subnet>(&no_gw), None);
    }

    fn sn6(s: &str) -> Subnet6 {
        s.parse().unwrap()
    }

    fn ip6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    /// A dual-stack table: IPv4 leases (`/24`) and IPv6 halves (`/64`).
    fn table_dual(peers: &[([u8; 4], [u8; 4])], peers6: &[(&str, &str)]) -> LeaseTable {
        let local = LocalVtep {
            vni: Vni::new(1).unwrap(),
            mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
            port: 8472,
        };
        let peers = peers
            .iter()
            .map(|(s, ip)| Peer::new(sn(*s, 24), Ipv4Addr::from(*ip), None, &local))
            .collect();
        let peers6 = peers6
            .iter()
            .map(|(s, ip)| Peer6::new(sn6(s), ip6(ip), None, &local))
            .collect();
        LeaseTable::from_peers_dual(24, peers, 64, peers6, 1)
    }

    #[test]
    fn host_gw_routes_every_ipv6_half_but_ours() {
        let t = table_dual(
            &[
                ([10, 1, 1, 0], [192, 168, 64, 10]),
                ([10, 1, 2, 0], [192, 168, 64, 11]),
            ],
            &[
                ("fd10:0:0:1::/64", "fd77::a"),
                ("fd10:0:0:2::/64", "fd77::b"),
                ("fd10:0:0:3::/64", "2001:db8:5::10"),
                // A stale lease with our PublicIPv6, one with our IPv6 subnet.
                ("fd10:0:0:4::/64", "fd77::c"),
                ("fd10:0:0:5::/64", "fd77::d"),
                // Outside the IPv6Network.
                ("fd11:0:0:1::/64", "fd77::e"),
                // Public addresses no route can go via.
                ("fd10:0:0:6::/64", "fe80::1"),
                ("fd10:0:0:7::/64", "ff02::1"),
                ("fd10:0:0:8::/64", "::"),
                ("fd10:0:0:9::/64", "::1"),
                ("fd10:0:0:a::/64", "::ffff:192.168.64.10"),
            ],
        );
        let w = wanted_routes(
            &t,
            &DirectPolicy::All,
            sn6("fd10::/48"),
            sn6("fd10:0:0:5::/64"),
            ip6("fd77::c"),
        );
        let want: BTreeMap<_, _> = [
            (sn6("fd10:0:0:1::/64"), ip6("fd77::a")),
            (sn6("fd10:0:0:2::/64"), ip6("fd77::b")),
            (sn6("fd10:0:0:3::/64"), ip6("2001:db8:5::10")),
        ]
        .into();
        assert_eq!(w, want);
        // The IPv4 half of the same table is routed as before, on its own.
        let w4 = wanted_routes(
            &t,
            &DirectPolicy::All,
            sn([10, 1, 0, 0], 16),
            sn([10, 1, 9, 0], 24),
            Ipv4Addr::new(192, 168, 64, 12),
        );
        assert_eq!(
            w4.keys().copied().collect::<Vec<_>>(),
            vec![sn([10, 1, 1, 0], 24), sn([10, 1, 2, 0], 24)]
        );
        // An IPv4-only table wants no IPv6 route.
        let v4_only = table(&[([10, 1, 1, 0], [192, 168, 64, 10])]);
        assert!(wanted_routes(
            &v4_only,
            &DirectPolicy::All,
            sn6("fd10::/48"),
            sn6("fd10:0:0:5::/64"),
            ip6("fd77::c"),
        )
        .is_empty());
    }

    #[test]
    fn direct_routing_ipv6_only_connected_peers() {
        let t = table_dual(
            &[],
            &[
                ("fd10:0:0:1::/64", "fd77::a"),
                ("fd10:0:0:3::/64", "fd77:0:0:2::a"),
            ],
        );
        let pol = DirectPolicy::Connected(vec![sn6("fd77::/64")]);
        let w = wanted_routes(
            &t,
            &pol,
            sn6("fd10::/48"),
            sn6("fd10:0:0:9::/64"),
            ip6("fd77::b"),
        );
        let want: BTreeMap<_, _> = [(sn6("fd10:0:0:1::/64"), ip6("fd77::a"))].into();
        assert_eq!(w, want);
        let none = DirectPolicy::Connected(Vec::new());
        assert!(wanted_routes(
            &t,
            &none,
            sn6("fd10::/48"),
            sn6("fd10:0:0:9::/64"),
            ip6("fd77::b"),
        )
        .is_empty());
    }

    #[test]
    fn ipv6_plan_adds_replaces_removes_and_never_replaces_foreign_routes() {
        let current = MainRoutes {
            ours: [
                (sn6("fd10:0:0:1::/64"), ip6("fd77::a")), // kept
                (sn6("fd10:0:0:2::/64"), ip6("fd77::b")), // gateway moved
                (sn6("fd10:0:0:3::/64"), ip6("fd77::c")), // lease gone
            ]
            .into(),
            // A route of another protocol to a prefix a lease asks for.
            foreign: [sn6("fd10:0:0:7::/64"), sn6("::/0")].into(),
            ..MainRoutes::default()
        };
        let wanted: BTreeMap<_, _> = [
            (sn6("fd10:0:0:1::/64"), ip6("fd77::a")),
            (sn6("fd10:0:0:2::/64"), ip6("fd77::1b")),
            (sn6("fd10:0:0:4::/64"), ip6("fd77::d")), // new lease
            (sn6("fd10:0:0:7::/64"), ip6("fd77::e")),
        ]
        .into();
        let p = plan(&current, &wanted);
        assert_eq!(
            p.install,
            vec![
                (sn6("fd10:0:0:2::/64"), ip6("fd77::1b")),
                (sn6("fd10:0:0:4::/64"), ip6("fd77::d"))
            ]
        );
        assert_eq!(p.remove, vec![(sn6("fd10:0:0:3::/64"), ip6("fd77::c"))]);
        assert_eq!(p.blocked, vec![(sn6("fd10:0:0:7::/64"), ip6("fd77::e"))]);
        let settled = MainRoutes {
            ours: [
                (sn6("fd10:0:0:1::/64"), ip6("fd77::a")),
                (sn6("fd10:0:0:2::/64"), ip6("fd77::1b")),
                (sn6("fd10:0:0:4::/64"), ip6("fd77::d")),
            ]
            .into(),
            foreign: current.foreign.clone(),
            ..MainRoutes::default()
        };
        let p = plan(&settled, &wanted);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(p.blocked.len(), 1);
    }

    #[test]
    fn ipv6_route_message_is_ours_in_the_main_ipv6_table() {
        let mine = sn6("fd10:0:0:2::/64").route_message(ip6("fd77::b"));
        assert_eq!(mine.header.address_family, AddressFamily::Inet6);
        assert_eq!(mine.header.destination_prefix_length, 64);
        assert_eq!(mine.header.table, RouteHeader::RT_TABLE_MAIN);
        assert_eq!(u8::from(mine.header.protocol), RTPROT_WEFT);
        assert_eq!(
            ours::<Subnet6>(&mine),
            Some((sn6("fd10:0:0:2::/64"), ip6("fd77::b")))
        );
        // Each family reads only its own routes.
        assert_eq!(classify::<Subnet>(&mine), None);
        let v4 = sn([10, 1, 2, 0], 24).route_message(Ipv4Addr::new(192, 168, 64, 11));
        assert_eq!(classify::<Subnet6>(&v4), None);
        // Another protocol, or no gateway: foreign; another table: not counted.
        let mut kernel = mine.clone();
        kernel.header.protocol = RouteProtocol::Kernel;
        assert_eq!(
            classify::<Subnet6>(&kernel),
            Some(Kind::Foreign(sn6("fd10:0:0:2::/64")))
        );
        let mut no_gw = mine.clone();
        no_gw
            .attributes
            .retain(|a| !matches!(a, RouteAttribute::Gateway(_)));
        assert_eq!(ours::<Subnet6>(&no_gw), None);
        let mut elsewhere = mine;
        elsewhere.header.table = 100;
        assert_eq!(classify::<Subnet6>(&elsewhere), None);
        // The default route carries no destination.
        let default = RouteMessageBuilder::<Ipv6Addr>::new()
            .gateway(ip6("fd77::1"))
            .build();
        assert_eq!(
            classify::<Subnet6>(&default),
            Some(Kind::Foreign(sn6("::/0")))
        );
    }

    #[test]
    fn errors_name_the_route_in_either_family() {
        let e = RouteError::Install {
            destination: ip6("fd10:0:0:2::").into(),
            prefix_len: 64,
            gateway: ip6("fd77::b").into(),
            source: rtnetlink::Error::RequestFailed,
        };
        assert_eq!(e.to_string(), "adding route fd10:0:0:2::/64 via fd77::b");
        let e = RouteError::Dump {
            family: Subnet6::FAMILY,
            source: rtnetlink::Error::RequestFailed,
        };
        assert_eq!(e.to_string(), "listing IPv6 routes");
    }
}
