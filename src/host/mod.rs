//! Everything about the host the node runs on: which interface and address carry the
//! underlay, the direct routes of host-gw and DirectRouting ([`routes`]), and (later) masquerade
//! rules and sysctls.

pub mod doctor;
pub mod flanneld;
pub mod instance;
pub mod masq;
pub mod plumbing;

use std::net::{Ipv4Addr, Ipv6Addr};

pub mod routes;

use crate::sys::iface::{self, IfAddr, IfAddr6};

/// The interface and address the overlay runs over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    /// Interface name (`eth0`).
    pub iface: String,
    /// The interface's IPv4 address (what the UDP socket binds).
    pub local_ip: Ipv4Addr,
    /// The address other nodes send to (`PublicIP`; the interface address unless
    /// `--public-ip` says otherwise, e.g. behind NAT).
    pub public_ip: Ipv4Addr,
    /// The IPv6 address other nodes send to (`PublicIPv6`, used when the network enables
    /// IPv6): `--public-ipv6`, else the interface's first global-scope unicast IPv6 address,
    /// else none.
    pub public_ipv6: Option<Ipv6Addr>,
    /// The interface's MTU.
    pub mtu: u32,
}

/// Why no underlay could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum UnderlayError {
    /// Listing interfaces failed.
    #[error("listing interfaces")]
    List(#[source] std::io::Error),
    /// No `--iface` entry matches a local interface name or address.
    #[error("none of --iface {0:?} names a local interface or IPv4 address; check `ip -4 addr`")]
    NoIface(Vec<String>),
    /// An `--iface` entry names an interface that exists but has no IPv4 address (nor a
    /// global IPv6 one to choose the underlay by instead).
    #[error("--iface {iface}: the interface exists but has no IPv4 address: give it one (ip addr add <address>/<length> dev {iface}), pass --iface of an interface that has one, or pass --public-ip=<an IPv4 address of this host> instead of --iface")]
    IfaceNoIpv4 {
        /// The interface.
        iface: String,
    },
    /// No `--iface-regex` entry matches a local interface address or name.
    #[error("none of --iface-regex {0:?} matches a local IPv4 address or interface name; check `ip -4 addr`")]
    NoIfaceRegex(Vec<String>),
    /// An `--iface-regex` entry is not a regular expression.
    #[error("--iface-regex {pattern:?} is not a valid regular expression: {problem}")]
    BadRegex {
        /// The pattern.
        pattern: String,
        /// What the regex parser said.
        problem: String,
    },
    /// No route reaches the `--iface-can-reach` address.
    #[error("no route reaches --iface-can-reach {0}; check `ip route get {0}`")]
    Unreachable(Ipv4Addr),
    /// No default route, so no interface to pick automatically.
    #[error(
        "no --iface given and no IPv4 default route to pick one from; pass --iface=<name or IP>"
    )]
    NoDefaultRoute,
    /// The chosen interface has no IPv4 address.
    #[error("interface {0} has no IPv4 address")]
    NoAddress(String),
    /// Reading the MTU failed.
    #[error("reading the MTU of {iface}")]
    Mtu {
        /// Interface.
        iface: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The IPv4 route the kernel's main table holds for `dst` (longest prefix, lowest metric):
/// `(interface, gateway or None)`, from /proc/net/route.
pub fn route_for(dst: std::net::Ipv4Addr) -> Option<(String, Option<std::net::Ipv4Addr>)> {
    let text = std::fs::read_to_string("/proc/net/route").ok()?;
    route_in(&text, dst)
}

pub(crate) fn route_in(
    text: &str,
    dst: std::net::Ipv4Addr,
) -> Option<(String, Option<std::net::Ipv4Addr>)> {
    let d = u32::from(dst);
    let hex = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::from_be);
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dest, gw, mask) = (hex(f.get(1)?)?, hex(f.get(2)?)?, hex(f.get(7)?)?);
            let metric: u32 = f.get(6)?.parse().ok()?;
            (d & mask == dest).then(|| (mask.count_ones(), std::cmp::Reverse(metric), f[0], gw))
        })
        .max_by_key(|(len, metric, _, _)| (*len, *metric))
        .map(|(_, _, dev, gw)| {
            let gw = (gw != 0).then(|| std::net::Ipv4Addr::from(gw));
            (dev.to_string(), gw)
        })
}

/// The interface of the IPv4 default route, from `/proc/net/route` (lowest metric).
pub fn default_route_iface() -> Option<String> {
    let text = std::fs::read_to_string("/proc/net/route").ok()?;
    parse_default_route(&text)
}

fn parse_default_route(text: &str) -> Option<String> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
            if f.len() < 8 || f[1] != "00000000" || f[7] != "00000000" {
                return None;
            }
            let metric: u32 = f[6].parse().ok()?;
            Some((metric, f[0].to_string()))
        })
        .min()
        .map(|(_, name)| name)
}

/// The interface of the IPv6 default route with the lowest metric (from
/// `/proc/net/ipv6_route`), for a host without an IPv4 one.
pub fn default_route6_iface() -> Option<String> {
    let text = std::fs::read_to_string("/proc/net/ipv6_route").ok()?;
    parse_default_route6(&text)
}

fn parse_default_route6(text: &str) -> Option<String> {
    const RTF_UP: u32 = 0x1;
    const RTF_REJECT: u32 = 0x200;
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // dst dst_len src src_len next_hop metric refcnt use flags iface
            if f.len() < 10 || f[1] != "00" || f[0].bytes().any(|b| b != b'0') {
                return None;
            }
            let flags = u32::from_str_radix(f[8], 16).ok()?;
            if flags & RTF_UP == 0 || flags & RTF_REJECT != 0 || f[9] == "lo" {
                return None;
            }
            let metric = u32::from_str_radix(f[5], 16).ok()?;
            Some((metric, f[9].to_string()))
        })
        .min()
        .map(|(_, name)| name)
}

/// How to pick the underlay interface: flanneld's `-iface`, `-iface-regex`,
/// `-iface-can-reach` and `-public-ip`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnderlaySpec {
    /// `--iface` entries (names or addresses), tried in order.
    pub ifaces: Vec<String>,
    /// `--iface-regex` entries, tried in order, each first against every interface address,
    /// then against every interface name (flanneld's order).
    pub iface_regex: Vec<String>,
    /// `--iface-can-reach`: the interface of the route to this address.
    pub iface_can_reach: Option<Ipv4Addr>,
    /// `--public-ip`: the address advertised to other nodes.
    pub public_ip: Option<Ipv4Addr>,
    /// `--public-ipv6`: the IPv6 address advertised to other nodes (dual stack).
    pub public_ipv6: Option<Ipv6Addr>,
}

/// Whether `ip` has global scope, as the kernel scopes addresses: not the unspecified,
/// loopback or a multicast address, not link-local (fe80::/10) or site-local (fec0::/10),
/// not IPv4-mapped. Unique local addresses (fc00::/7) are global in this sense.
fn is_global_scope(ip: Ipv6Addr) -> bool {
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || ip.is_unicast_link_local()
        || ip.segments()[0] & 0xffc0 == 0xfec0
        || ip.to_ipv4_mapped().is_some())
}

/// The first global-scope unicast IPv6 address of interface `name`: the IPv6 counterpart of
/// the interface's IPv4 address, what `PublicIPv6` defaults to.
fn global_ipv6_of(addrs: &[IfAddr6], name: &str) -> Option<Ipv6Addr> {
    addrs
        .iter()
        .find(|a| a.name == name && is_global_scope(a.addr))
        .map(|a| a.addr)
}

/// The first interface address (of either family) matched by `patterns`, each tried first
/// against every address (`addr` gives its text), then against every interface name.
fn by_regex<'a, T>(
    addrs: &'a [T],
    patterns: &[String],
    addr: impl Fn(&T) -> String,
    name: impl Fn(&T) -> &str,
) -> Result<&'a T, UnderlayError> {
    for pattern in patterns {
        let re = regex::Regex::new(pattern).map_err(|e| UnderlayError::BadRegex {
            pattern: pattern.clone(),
            problem: e.to_string(),
        })?;
        let hit = addrs
            .iter()
            .find(|a| re.is_match(&addr(a)))
            .or_else(|| addrs.iter().find(|a| re.is_match(name(a))));
        if let Some(a) = hit {
            return Ok(a);
        }
    }
    Err(UnderlayError::NoIfaceRegex(patterns.to_vec()))
}

/// [`by_regex`] over IPv4 interface addresses.
fn by_regex4(addrs: &[IfAddr], patterns: &[String]) -> Result<IfAddr, UnderlayError> {
    by_regex(addrs, patterns, |a| a.addr.to_string(), |a| &a.name).cloned()
}

/// Picks the underlay as flanneld does: the first `--iface` entry (name or address) that
/// matches; else the first `--iface-regex` that matches; else the interface that routes to
/// `--iface-can-reach`; else the interface holding `--public-ip`; else the default route's
/// interface. `public_ip` overrides the advertised address; `public_ipv6` is the advertised
/// IPv6 address, else the chosen interface's global one.
///
/// When no interface qualifies by IPv4 (a host without IPv4, or `-iface` given as an IPv6
/// address) the same choice is made over IPv6 addresses instead ([`choose_underlay6`]); an
/// interface without an IPv4 address then gives no IPv4 underlay (`0.0.0.0`), which only an
/// IPv6-only network (`EnableIPv4: false`) accepts.
pub fn choose_underlay(spec: &UnderlaySpec) -> Result<Underlay, UnderlayError> {
    match choose_underlay4(spec) {
        Ok(u) => Ok(u),
        Err(e) => match choose_underlay6(spec)? {
            Some(u) => {
                tracing::info!(iface = %u.iface, reason = %e, "no interface qualifies by IPv4; chose the underlay by IPv6");
                Ok(u)
            }
            None => Err(e),
        },
    }
}

/// [`choose_underlay`] by IPv4 address (flanneld's choice on an IPv4 or dual-stack network).
fn choose_underlay4(spec: &UnderlaySpec) -> Result<Underlay, UnderlayError> {
    let (ifaces, public_ip) = (&spec.ifaces, spec.public_ip);
    let addrs = iface::ipv4_addrs().map_err(UnderlayError::List)?;
    let found: IfAddr = if !ifaces.is_empty() {
        ifaces
            .iter()
            .find_map(|want| {
                let by_ip = want.parse::<Ipv4Addr>().ok();
                addrs
                    .iter()
                    .find(|a| Some(a.addr) == by_ip || a.name == *want)
                    .cloned()
            })
            .ok_or_else(|| no_iface(ifaces, |name| nix::net::if_::if_nametoindex(name).is_ok()))?
    } else if !spec.iface_regex.is_empty() {
        by_regex4(&addrs, &spec.iface_regex)?
    } else if let Some(dst) = spec.iface_can_reach {
        let (name, _) = route_for(dst).ok_or(UnderlayError::Unreachable(dst))?;
        addrs
            .iter()
            .find(|a| a.name == name)
            .cloned()
            .ok_or(UnderlayError::NoAddress(name))?
    } else if let Some(ip) = public_ip.filter(|ip| addrs.iter().any(|a| a.addr == *ip)) {
        addrs
            .iter()
            .find(|a| a.addr == ip)
            .cloned()
            .ok_or(UnderlayError::NoDefaultRoute)?
    } else {
        let name = default_route_iface().ok_or(UnderlayError::NoDefaultRoute)?;
        addrs
            .iter()
            .find(|a| a.name == name)
            .cloned()
            .ok_or(UnderlayError::NoAddress(name))?
    };
    let mtu = iface::mtu(&found.name).map_err(|source| UnderlayError::Mtu {
        iface: found.name.clone(),
        source,
    })?;
    let public_ipv6 = match spec.public_ipv6 {
        Some(ip) => Some(ip),
        None => global_ipv6_of(
            &iface::ipv6_addrs().map_err(UnderlayError::List)?,
            &found.name,
        ),
    };
    Ok(Underlay {
        iface: found.name,
        local_ip: found.addr,
        public_ip: public_ip.unwrap_or(found.addr),
        public_ipv6,
        mtu,
    })
}

/// Why no `--iface` entry gave an IPv4 underlay: the first entry that names an interface
/// that `exists` (without an IPv4 address, or it would have been chosen), else none names
/// anything here.
fn no_iface(ifaces: &[String], exists: impl Fn(&str) -> bool) -> UnderlayError {
    let named = ifaces
        .iter()
        .find(|want| want.parse::<std::net::IpAddr>().is_err() && exists(want));
    match named {
        Some(iface) => UnderlayError::IfaceNoIpv4 {
            iface: iface.clone(),
        },
        None => UnderlayError::NoIface(ifaces.to_vec()),
    }
}

/// The underlay chosen over IPv6 addresses, when no interface qualifies by IPv4 (a host
/// without IPv4, or an `-iface` given as an IPv6 address), in flanneld's order: an `--iface` entry naming an interface or one of its IPv6 addresses; an
/// `--iface-regex` matching an IPv6 address or an interface name; the interface holding
/// `--public-ipv6`; the IPv6 default route's interface. `None` when nothing has a global IPv6
/// address to advertise (the IPv4 error then stands).
fn choose_underlay6(spec: &UnderlaySpec) -> Result<Option<Underlay>, UnderlayError> {
    let addrs = iface::ipv6_addrs().map_err(UnderlayError::List)?;
    let global: Vec<&IfAddr6> = addrs.iter().filter(|a| is_global_scope(a.addr)).collect();
    let name = if !spec.ifaces.is_empty() {
        spec.ifaces.iter().find_map(|want| {
            let by_ip = want.parse::<Ipv6Addr>().ok();
            global
                .iter()
                .find(|a| Some(a.addr) == by_ip || a.name == *want)
                .map(|a| a.name.clone())
        })
    } else if !spec.iface_regex.is_empty() {
        match by_regex(
            &global,
            &spec.iface_regex,
            |a| a.addr.to_string(),
            |a| &a.name,
        ) {
            Ok(a) => Some(a.name.clone()),
            Err(UnderlayError::NoIfaceRegex(_)) => None,
            Err(e) => return Err(e),
        }
    } else if let Some(ip) = spec.public_ipv6 {
        global.iter().find(|a| a.addr == ip).map(|a| a.name.clone())
    } else {
        default_route6_iface()
    };
    let Some(name) = name else {
        return Ok(None);
    };
    let Some(public_ipv6) = spec.public_ipv6.or_else(|| global_ipv6_of(&addrs, &name)) else {
        return Ok(None);
    };
    let mtu = iface::mtu(&name).map_err(|source| UnderlayError::Mtu {
        iface: name.clone(),
        source,
    })?;
    // The interface chosen by IPv6 may still have an IPv4 address (an `-iface` given as an
    // IPv6 address on a dual-stack host): the IPv4 half then uses it, as flanneld does.
    let local_ip = iface::ipv4_addrs()
        .map_err(UnderlayError::List)?
        .into_iter()
        .find(|a| a.name == name)
        .map_or(Ipv4Addr::UNSPECIFIED, |a| a.addr);
    Ok(Some(Underlay {
        iface: name,
        local_ip,
        public_ip: spec.public_ip.unwrap_or(local_ip),
        public_ipv6: Some(public_ipv6),
        mtu,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_default_route_lowest_metric_up_not_rejecting() {
        let z = "00000000000000000000000000000000";
        let text = format!(
            "{z} 00 {z} 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eth1\n\
{z} 00 {z} 00 fe800000000000000000000000000001 00000100 00000001 00000000 00000003 eth0\n\
{z} 00 {z} 00 {z} ffffffff 00000001 00000000 00200200 lo\n\
fd770000000000000000000000000000 40 {z} 00 {z} 00000100 00000001 00000000 00000001 eth2\n"
        );
        assert_eq!(parse_default_route6(&text), Some("eth0".to_string()));
        let only_reject = format!("{z} 00 {z} 00 {z} 00000001 00000001 00000000 00000201 eth0\n");
        assert_eq!(parse_default_route6(&only_reject), None);
        assert_eq!(parse_default_route6(""), None);
    }

    #[test]
    fn default_route_lowest_metric() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth1\t00000000\t0140A8C0\t0003\t0\t0\t200\t00000000\t0\t0\t0\n\
eth0\t00000000\t0140A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
eth0\t0040A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(parse_default_route(text), Some("eth0".to_string()));
        assert_eq!(parse_default_route("Iface\tDestination\n"), None);
    }

    #[test]
    fn loopback_by_name_and_address() {
        let spec = |ifaces: &[&str], public_ip| UnderlaySpec {
            ifaces: ifaces.iter().map(|s| s.to_string()).collect(),
            public_ip,
            ..UnderlaySpec::default()
        };
        let by_name = choose_underlay(&spec(&["lo"], None)).unwrap();
        assert_eq!(by_name.local_ip, Ipv4Addr::LOCALHOST);
        assert!(by_name.mtu > 0);
        let by_ip =
            choose_underlay(&spec(&["127.0.0.1"], Some(Ipv4Addr::new(192, 0, 2, 1)))).unwrap();
        assert_eq!(by_ip.iface, "lo");
        assert_eq!(by_ip.public_ip, Ipv4Addr::new(192, 0, 2, 1));
        assert!(matches!(
            choose_underlay(&spec(&["no-such-if0"], None)),
            Err(UnderlayError::NoIface(_))
        ));
    }

    #[test]
    fn public_ipv6_defaults_to_the_interfaces_global_address() {
        let a = |name: &str, addr: &str| IfAddr6 {
            name: name.into(),
            addr: addr.parse().unwrap(),
            prefix_len: 64,
        };
        let addrs = vec![
            a("lo", "::1"),
            a("eth0", "fe80::1"),
            a("eth0", "fec0::1"),
            a("eth1", "2001:db8::1"),
            a("eth0", "fd77::10"),
            a("eth0", "2001:db8::10"),
        ];
        assert_eq!(
            global_ipv6_of(&addrs, "eth0"),
            Some("fd77::10".parse().unwrap())
        );
        assert_eq!(global_ipv6_of(&addrs, "lo"), None);
        assert_eq!(global_ipv6_of(&addrs[..3], "eth0"), None);
        assert_eq!(global_ipv6_of(&addrs, "eth9"), None);
        for not_global in [
            "::",
            "::1",
            "ff02::1",
            "fe80::9",
            "fecf::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(
                !is_global_scope(not_global.parse().unwrap()),
                "{not_global}"
            );
        }
        for global in ["fd00::1", "fc00::1", "2001:db8::1", "64:ff9b::a00:1"] {
            assert!(is_global_scope(global.parse().unwrap()), "{global}");
        }
    }

    #[test]
    fn public_ipv6_flag_wins_and_loopback_has_none() {
        let spec = |public_ipv6| UnderlaySpec {
            ifaces: vec!["lo".into()],
            public_ipv6,
            ..UnderlaySpec::default()
        };
        // lo holds only ::1, which has host scope.
        assert_eq!(choose_underlay(&spec(None)).unwrap().public_ipv6, None);
        let given = "fd77::3".parse().unwrap();
        assert_eq!(
            choose_underlay(&spec(Some(given))).unwrap().public_ipv6,
            Some(given)
        );
    }

    #[test]
    fn regexes_match_addresses_then_names_in_order() {
        let addrs = vec![
            IfAddr {
                name: "eth0".into(),
                addr: Ipv4Addr::new(192, 168, 64, 10),
                prefix_len: 24,
            },
            IfAddr {
                name: "ens5".into(),
                addr: Ipv4Addr::new(10, 0, 0, 7),
                prefix_len: 16,
            },
        ];
        let pats = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(by_regex4(&addrs, &pats(&["^ens"])).unwrap().name, "ens5");
        assert_eq!(by_regex4(&addrs, &pats(&[r"^10\."])).unwrap().name, "ens5");
        // The first pattern that matches anything wins.
        assert_eq!(
            by_regex4(&addrs, &pats(&["^wlan", "^eth"])).unwrap().name,
            "eth0"
        );
        assert!(matches!(
            by_regex4(&addrs, &pats(&["^wlan"])),
            Err(UnderlayError::NoIfaceRegex(_))
        ));
        assert!(matches!(
            by_regex4(&addrs, &pats(&["("])),
            Err(UnderlayError::BadRegex { .. })
        ));
    }

    #[test]
    fn an_iface_that_exists_without_ipv4_is_named_with_the_fix() {
        let given = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let exists = |name: &str| name == "dummy0" || name == "eth1";
        let e = no_iface(&given(&["nope0", "dummy0", "eth1"]), exists);
        assert!(
            matches!(&e, UnderlayError::IfaceNoIpv4 { iface } if iface == "dummy0"),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "--iface dummy0: the interface exists but has no IPv4 address: give it one (ip addr \
             add <address>/<length> dev dummy0), pass --iface of an interface that has one, or \
             pass --public-ip=<an IPv4 address of this host> instead of --iface"
        );
        // Addresses and names of no interface: nothing here matches.
        let e = no_iface(&given(&["192.0.2.1", "nope0"]), exists);
        assert!(matches!(e, UnderlayError::NoIface(_)), "{e}");
    }
}
