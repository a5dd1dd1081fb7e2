//! Everything about the host the node runs on: which interface and address carry the
//! underlay, the direct routes of host-gw and DirectRouting ([`routes`]), and (later) masquerade
//! rules and sysctls.

pub mod doctor;
pub mod instance;
pub mod masq;

use std::net::Ipv4Addr;

pub mod routes;

use crate::sys::iface::{self, IfAddr};

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

/// Picks the underlay as flanneld does: the first `--iface` entry (name or address) that
/// matches, else the default route's interface; `public_ip` overrides the advertised address.
pub fn choose_underlay(
    ifaces: &[String],
    public_ip: Option<Ipv4Addr>,
) -> Result<Underlay, UnderlayError> {
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
            .ok_or_else(|| UnderlayError::NoIface(ifaces.to_vec()))?
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
    Ok(Underlay {
        iface: found.name,
        local_ip: found.addr,
        public_ip: public_ip.unwrap_or(found.addr),
        mtu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let by_name = choose_underlay(&["lo".to_string()], None).unwrap();
        assert_eq!(by_name.local_ip, Ipv4Addr::LOCALHOST);
        assert!(by_name.mtu > 0);
        let by_ip = choose_underlay(
            &["127.0.0.1".to_string()],
            Some(Ipv4Addr::new(192, 0, 2, 1)),
        )
        .unwrap();
        assert_eq!(by_ip.iface, "lo");
        assert_eq!(by_ip.public_ip, Ipv4Addr::new(192, 0, 2, 1));
        assert!(matches!(
            choose_underlay(&["no-such-if0".to_string()], None),
            Err(UnderlayError::NoIface(_))
        ));
    }
}
