//! What flanneld leaves on a node it ran on, and whether it still runs: weft starts in its
//! place without anything cleaned by hand.
//!
//! flanneld's vxlan backend leaves its kernel device behind on purpose (`flannel.<VNI>`, and
//! `flannel-v6.<VNI>` with IPv6) so that the kernel keeps forwarding while flanneld restarts.
//! That device holds the VXLAN port (weft's bind then fails) and a route per peer subnet
//! (which would send pod traffic into a device nobody feeds). A device is taken for
//! flanneld's only when everything about it says so: type vxlan, flanneld's name for its VNI
//! (`flannel.1` has VNI 1), and the network config's VNI and port (flannel's 8472 when weft
//! runs another backend). Such a device that holds the port or a route inside the Network is
//! removed, and the log names it and what it held; any other device with a flannel name is
//! reported and left alone. flanneld's host-gw routes are [`super::routes`]' business (adopted
//! when they match a lease exactly).
//!
//! A flanneld still running in this network namespace would fight weft for the lease, the
//! port and the routes: weft refuses to start. It is found in /proc (a process named
//! `flanneld` whose network namespace is ours). Under the systemd unit's
//! `ProtectProc=invisible`, root processes that hold more capabilities than weft are hidden
//! from it, so there the unit's `Conflicts=flanneld.service` is what stops flanneld first, and
//! `weft doctor` (run as root) reports one started by other means.

use std::collections::BTreeSet;
use std::net::IpAddr;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, RouteMessageBuilder};

use crate::config::{BackendType, NetworkConfig};

/// flannel's VXLAN port when the config names none (the kernel's default for flanneld's
/// device, which passes port 0).
pub const FLANNEL_VXLAN_PORT: u16 = 8472;

/// Why looking at or removing what flanneld left failed.
#[derive(Debug, thiserror::Error)]
pub enum LeftoverError {
    /// Opening the rtnetlink socket failed.
    #[error("opening an rtnetlink socket")]
    Open(#[source] std::io::Error),
    /// Listing the interfaces or routes failed.
    #[error("listing {what}")]
    Dump {
        /// `interfaces`, `IPv4 routes` or `IPv6 routes`.
        what: &'static str,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// Deleting a device failed.
    #[error("deleting flanneld's device {name} (delete it by hand: ip link delete {name})")]
    Delete {
        /// The device.
        name: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
}

/// An interface whose name is flannel's, as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlannelDevice {
    /// Its name (`flannel.1`, `flannel-v6.1`, ...).
    pub name: String,
    /// Its interface index.
    pub index: u32,
    /// Its link kind (`vxlan`, or what else it is).
    pub kind: String,
    /// Its VXLAN ID, for a vxlan device.
    pub vni: Option<u32>,
    /// Its VXLAN destination port, for a vxlan device.
    pub port: Option<u16>,
    /// The routes through it inside the Network (IPv6Network), as `ip route` writes them.
    pub routes: Vec<String>,
}

/// What is to be done with a device of flannel's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// flanneld's, and in the way (it holds the port or routes inside the Network): remove.
    Remove,
    /// flanneld's, but it holds nothing weft needs: left alone.
    Harmless,
    /// Not certainly flanneld's: reported, never touched; the reason.
    NotFlanneld(String),
}

/// What weft expects of a device flanneld made for this network config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// The VNI flanneld's device has: the config's (vxlan), else any (the name says).
    pub vni: Option<u32>,
    /// The port it has: the config's (vxlan), else flannel's 8472.
    pub port: u16,
    /// The UDP port weft binds (0: none, host-gw).
    pub tunnel_port: u16,
}

impl Expected {
    /// What flanneld's device looks like under `config`, and the port weft will bind.
    pub fn from_config(config: &NetworkConfig) -> Expected {
        match config.backend.kind {
            BackendType::Vxlan => Expected {
                vni: Some(config.backend.vni.get()),
                port: config.backend.port,
                tunnel_port: config.backend.port,
            },
            _ => Expected {
                vni: None,
                port: FLANNEL_VXLAN_PORT,
                tunnel_port: config.backend.port,
            },
        }
    }
}

/// The VNI a flannel device name stands for: `flannel.7` and `flannel-v6.7` give 7.
pub fn vni_of_name(name: &str) -> Option<u32> {
    let n = name
        .strip_prefix("flannel-v6.")
        .or_else(|| name.strip_prefix("flannel."))?;
    // Only the kernel's spelling of a number: no sign, no leading zero.
    if n.is_empty() || (n.len() > 1 && n.starts_with('0')) || !n.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    n.parse().ok()
}

/// Whether `name` is one flanneld gives its devices (or looks like one).
pub fn has_flannel_name(name: &str) -> bool {
    name.starts_with("flannel.") || name.starts_with("flannel-v6.")
}

/// Judges one device of flannel's name against what flanneld would have made.
pub fn judge(dev: &FlannelDevice, want: &Expected) -> Verdict {
    let Some(name_vni) = vni_of_name(&dev.name) else {
        return Verdict::NotFlanneld(format!(
            "{} is not a name flanneld gives (flannel.<VNI> or flannel-v6.<VNI>)",
            dev.name
        ));
    };
    if dev.kind != "vxlan" {
        return Verdict::NotFlanneld(format!(
            "{} is a {} device, flanneld's are vxlan",
            dev.name, dev.kind
        ));
    }
    if dev.vni != Some(name_vni) {
        return Verdict::NotFlanneld(format!(
            "{} has VNI {}, flanneld's would have {name_vni}",
            dev.name,
            dev.vni.map_or("none".to_string(), |v| v.to_string())
        ));
    }
    if let Some(vni) = want.vni.filter(|&v| v != name_vni) {
        return Verdict::NotFlanneld(format!(
            "{} has VNI {name_vni}, the network config's Backend.VNI is {vni}",
            dev.name
        ));
    }
    if dev.port != Some(want.port) {
        return Verdict::NotFlanneld(format!(
            "{} uses UDP port {}, flanneld's would use {}",
            dev.name,
            dev.port.map_or("none".to_string(), |p| p.to_string()),
            want.port
        ));
    }
    let holds_port = want.tunnel_port != 0 && dev.port == Some(want.tunnel_port);
    if holds_port || !dev.routes.is_empty() {
        Verdict::Remove
    } else {
        Verdict::Harmless
    }
}

/// What a device held, in words, for the log: `UDP port 8472, 2 routes inside the Network
/// (10.1.3.0/24, 10.1.4.0/24)`.
pub fn held(dev: &FlannelDevice) -> String {
    let mut parts = Vec::new();
    if let Some(p) = dev.port {
        parts.push(format!("UDP port {p}"));
    }
    if dev.routes.is_empty() {
        parts.push("no route inside the Network".to_string());
    } else {
        parts.push(format!(
            "{} route(s) inside the Network ({})",
            dev.routes.len(),
            dev.routes.join(", ")
        ));
    }
    parts.join(", ")
}

/// What flanneld left here, as `weft doctor` reports it: the flannel-named devices (each
/// with its routes inside `nets`) and the routes inside `nets` that weft does not own (see
/// [`routes_not_ours`]), from one dump of the interfaces and one of the routes.
pub async fn survey(
    nets: &[IpNet],
    tun: &str,
    own: &[IpNet],
) -> Result<(Vec<FlannelDevice>, Vec<String>), LeftoverError> {
    let handle = open()?;
    let links = dump_links(&handle).await?;
    let routes = dump_routes(&handle).await?;
    Ok((
        devices(&links, &routes, nets),
        routes_not_ours(&links, &routes, nets, tun, own),
    ))
}

/// Removes the flanneld devices in weft's way (see the module's rules) and logs each, and
/// warns about every flannel-named device it leaves alone; the devices removed. The routes
/// are listed only when a flannel-named device is there (a start without one costs one
/// interface dump).
pub async fn clear_leftovers(config: &NetworkConfig) -> Result<Vec<FlannelDevice>, LeftoverError> {
    let handle = open()?;
    let links = dump_links(&handle).await?;
    if !links.iter().any(|l| describe(l).is_some()) {
        return Ok(Vec::new());
    }
    let routes = dump_routes(&handle).await?;
    let devices = devices(&links, &routes, &networks(config));
    let want = Expected::from_config(config);
    let mut removed = Vec::new();
    for dev in devices {
        match judge(&dev, &want) {
            Verdict::Remove => {
                handle
                    .link()
                    .del(dev.index)
                    .execute()
                    .await
                    .map_err(|source| LeftoverError::Delete {
                        name: dev.name.clone(),
                        source,
                    })?;
                tracing::warn!(device = %dev.name, vni = ?dev.vni, held = %held(&dev), "removed the VXLAN device flanneld left behind: weft carries this node's pod traffic from now on");
                removed.push(dev);
            }
            Verdict::Harmless => {
                tracing::info!(device = %dev.name, held = %held(&dev), "flanneld's VXLAN device is here but holds nothing weft needs; left alone (ip link delete {} removes it)", dev.name);
            }
            Verdict::NotFlanneld(why) => {
                tracing::warn!(device = %dev.name, kind = %dev.kind, held = %held(&dev), reason = %why, "an interface with a flannel name that weft cannot tell is flanneld's: not touched; if it holds weft's port or routes, delete it by hand");
            }
        }
    }
    Ok(removed)
}

/// A network, in either family, for matching routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    /// Its address.
    pub addr: IpAddr,
    /// Its prefix length.
    pub len: u8,
}

impl IpNet {
    /// Whether the prefix `addr/len` lies inside this network.
    pub fn holds(&self, addr: IpAddr, len: u8) -> bool {
        if len < self.len {
            return false;
        }
        match (self.addr, addr) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// The config's networks: the Network (when it has IPv4) and the IPv6Network.
pub fn networks(config: &NetworkConfig) -> Vec<IpNet> {
    let mut out = Vec::new();
    if config.enable_ipv4 {
        out.push(IpNet {
            addr: IpAddr::V4(config.network.addr()),
            len: config.network.prefix_len(),
        });
    }
    if let Some(v6) = &config.ipv6 {
        out.push(IpNet {
            addr: IpAddr::V6(v6.network.addr()),
            len: v6.network.prefix_len(),
        });
    }
    out
}

fn open() -> Result<Handle, LeftoverError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(LeftoverError::Open)?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Every interface of this network namespace.
async fn dump_links(handle: &Handle) -> Result<Vec<LinkMessage>, LeftoverError> {
    handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|source| LeftoverError::Dump {
            what: "interfaces",
            source,
        })
}

/// A route from a dump, as far as these checks look at it.
#[derive(Debug, Clone)]
struct Route {
    /// Its table (the attribute's, which holds tables above 255, else the header's).
    table: u32,
    /// Whether it is a unicast route.
    unicast: bool,
    /// Its protocol number.
    protocol: u8,
    /// Destination and prefix length.
    dst: IpAddr,
    len: u8,
    /// Gateway and output interface, if it has them.
    gw: Option<IpAddr>,
    oif: Option<u32>,
}

impl Route {
    /// Whether it is in the main table.
    fn in_main(&self) -> bool {
        self.table == u32::from(rtnetlink::packet_route::route::RouteHeader::RT_TABLE_MAIN)
    }
}

/// The routes of both families with a destination.
async fn dump_routes(handle: &Handle) -> Result<Vec<Route>, LeftoverError> {
    let mut out = Vec::new();
    for (family, what) in [
        (AddressFamily::Inet, "IPv4 routes"),
        (AddressFamily::Inet6, "IPv6 routes"),
    ] {
        let req = match family {
            AddressFamily::Inet6 => RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
            _ => RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        };
        let msgs: Vec<RouteMessage> = handle
            .route()
            .get(req)
            .execute()
            .try_collect()
            .await
            .map_err(|source| LeftoverError::Dump { what, source })?;
        out.extend(msgs.iter().filter_map(parse_route));
    }
    Ok(out)
}

/// A dumped route's [`Route`]; `None` without a destination.
fn parse_route(r: &RouteMessage) -> Option<Route> {
    let h = &r.header;
    let mut table = u32::from(h.table);
    let (mut dst, mut gw, mut oif) = (None, None, None);
    let addr = |a: &RouteAddress| match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    };
    for a in &r.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(d) => dst = addr(d),
            RouteAttribute::Gateway(g) => gw = addr(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    Some(Route {
        table,
        unicast: h.kind == rtnetlink::packet_route::route::RouteType::Unicast,
        protocol: u8::from(h.protocol),
        dst: dst?,
        len: h.destination_prefix_length,
        gw,
        oif,
    })
}

/// The flannel-named interfaces among `links`, each with the main table's unicast routes
/// through it inside `nets` (the device's own address, in table local, is the device, not a
/// route through it).
fn devices(links: &[LinkMessage], routes: &[Route], nets: &[IpNet]) -> Vec<FlannelDevice> {
    let mut devices: Vec<FlannelDevice> = links.iter().filter_map(describe).collect();
    let indexes: BTreeSet<u32> = devices.iter().map(|d| d.index).collect();
    for r in routes.iter().filter(|r| r.in_main() && r.unicast) {
        let Some(oif) = r.oif.filter(|i| indexes.contains(i)) else {
            continue;
        };
        if !nets.iter().any(|n| n.holds(r.dst, r.len)) {
            continue;
        }
        if let Some(d) = devices.iter_mut().find(|d| d.index == oif) {
            d.routes.push(format!("{}/{}", r.dst, r.len));
        }
    }
    devices
}

/// A flannel-named interface from a link dump (routes not filled in); `None` for others.
fn describe(msg: &LinkMessage) -> Option<FlannelDevice> {
    let mut name = None;
    let mut kind = None;
    let (mut vni, mut port) = (None, None);
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => kind = Some(kind_name(k)),
                        LinkInfo::Data(InfoData::Vxlan(v)) => {
                            for x in v {
                                match x {
                                    InfoVxlan::Id(id) => vni = Some(*id),
                                    InfoVxlan::Port(p) => port = Some(*p),
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let name = name.filter(|n| has_flannel_name(n))?;
    Some(FlannelDevice {
        name,
        index: msg.header.index,
        kind: kind.unwrap_or_else(|| "plain".to_string()),
        vni,
        port,
        routes: Vec::new(),
    })
}

fn kind_name(k: &InfoKind) -> String {
    match k {
        InfoKind::Vxlan => "vxlan".to_string(),
        other => other.to_string(),
    }
}

/// The routes in the main tables inside `nets` that weft does not own (not protocol 87, not
/// through the TUN `tun`, not to a prefix inside this node's own subnets `own`), as
/// `ip route` writes them: flanneld's leftovers, or routes someone else made.
fn routes_not_ours(
    links: &[LinkMessage],
    routes: &[Route],
    nets: &[IpNet],
    tun: &str,
    own: &[IpNet],
) -> Vec<String> {
    let name_of = |index: u32| {
        links
            .iter()
            .find(|l| l.header.index == index)
            .and_then(|l| {
                l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                })
            })
    };
    let mut out = Vec::new();
    for r in routes {
        let dev = r.oif.and_then(name_of);
        let skip = !r.in_main()
            || r.protocol == super::routes::RTPROT_WEFT
            || dev.as_deref() == Some(tun)
            || !nets.iter().any(|n| n.holds(r.dst, r.len))
            || own.iter().any(|n| n.holds(r.dst, r.len));
        if skip {
            continue;
        }
        let mut text = format!("{}/{}", r.dst, r.len);
        if let Some(gw) = r.gw {
            text.push_str(&format!(" via {gw}"));
        }
        if let Some(dev) = dev {
            text.push_str(&format!(" dev {dev}"));
        }
        text.push_str(&format!(" proto {}", protocol_name(r.protocol)));
        out.push(text);
    }
    out
}

/// iproute2's name of a route protocol number.
fn protocol_name(p: u8) -> String {
    match p {
        2 => "kernel".into(),
        3 => "boot".into(),
        4 => "static".into(),
        n => n.to_string(),
    }
}

/// The pids of processes named `flanneld` in this network namespace (other than this one).
/// Processes /proc does not show (another pid namespace, `hidepid`) are not found.
pub fn running_flanneld() -> Vec<u32> {
    let ours = std::fs::read_link("/proc/self/ns/net").ok();
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim_end() == "flanneld")
        })
        .filter(|pid| {
            // A process whose namespace cannot be read is counted: better a refusal that
            // names it than two agents on one node.
            match (&ours, std::fs::read_link(format!("/proc/{pid}/ns/net"))) {
                (Some(a), Ok(b)) => *a == b,
                _ => true,
            }
        })
        .collect();
    pids.sort_unstable();
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(name: &str, kind: &str, vni: Option<u32>, port: Option<u16>) -> FlannelDevice {
        FlannelDevice {
            name: name.into(),
            index: 7,
            kind: kind.into(),
            vni,
            port,
            routes: Vec::new(),
        }
    }

    const VXLAN: Expected = Expected {
        vni: Some(1),
        port: 8472,
        tunnel_port: 8472,
    };

    #[test]
    fn names_flanneld_gives() {
        assert_eq!(vni_of_name("flannel.1"), Some(1));
        assert_eq!(vni_of_name("flannel-v6.4096"), Some(4096));
        for bad in [
            "flannel.",
            "flannel.01",
            "flannel.+1",
            "flannel.x",
            "flannel1",
            "cni0",
        ] {
            assert_eq!(vni_of_name(bad), None, "{bad}");
        }
        assert!(has_flannel_name("flannel.x"));
        assert!(!has_flannel_name("weft0"));
    }

    #[test]
    fn only_what_is_certainly_flanneld_is_removed() {
        // flanneld's device holding weft's port.
        assert_eq!(
            judge(&dev("flannel.1", "vxlan", Some(1), Some(8472)), &VXLAN),
            Verdict::Remove
        );
        // Another VNI than the config's, a VNI that is not its name's, another port, not
        // vxlan, an odd name: reported, not touched.
        for (d, why) in [
            (
                dev("flannel.2", "vxlan", Some(2), Some(8472)),
                "Backend.VNI is 1",
            ),
            (dev("flannel.1", "vxlan", Some(9), Some(8472)), "has VNI 9"),
            (
                dev("flannel.1", "vxlan", Some(1), Some(4789)),
                "UDP port 4789",
            ),
            (dev("flannel.1", "bridge", None, None), "a bridge device"),
            (
                dev("flannel.x", "vxlan", Some(1), Some(8472)),
                "not a name flanneld gives",
            ),
        ] {
            match judge(&d, &VXLAN) {
                Verdict::NotFlanneld(r) => assert!(r.contains(why), "{r}"),
                v => panic!("{d:?}: {v:?}"),
            }
        }
        // weft on host-gw: flanneld's old vxlan device holds no port of weft's; with routes
        // inside the Network it goes, without it stays.
        let hostgw = Expected {
            vni: None,
            port: 8472,
            tunnel_port: 0,
        };
        let mut d = dev("flannel.1", "vxlan", Some(1), Some(8472));
        assert_eq!(judge(&d, &hostgw), Verdict::Harmless);
        d.routes.push("10.1.3.0/24".into());
        assert_eq!(judge(&d, &hostgw), Verdict::Remove);
        assert_eq!(
            held(&d),
            "UDP port 8472, 1 route(s) inside the Network (10.1.3.0/24)"
        );
    }

    #[test]
    fn networks_hold_their_prefixes_only() {
        let n = IpNet {
            addr: "10.1.0.0".parse().unwrap(),
            len: 16,
        };
        assert!(n.holds("10.1.3.0".parse().unwrap(), 24));
        assert!(n.holds("10.1.0.0".parse().unwrap(), 16));
        assert!(!n.holds("10.0.0.0".parse().unwrap(), 8));
        assert!(!n.holds("10.2.3.0".parse().unwrap(), 24));
        assert!(!n.holds("fd10::".parse().unwrap(), 64));
        let n6 = IpNet {
            addr: "fd10::".parse().unwrap(),
            len: 48,
        };
        assert!(n6.holds("fd10:0:0:3::".parse().unwrap(), 64));
        assert!(!n6.holds("fd11::".parse().unwrap(), 64));
    }

    #[test]
    fn this_process_is_never_flanneld() {
        assert!(!running_flanneld().contains(&std::process::id()));
    }
}
