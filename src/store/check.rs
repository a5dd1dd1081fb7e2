//! The one validation point for leases read from etcd.
//!
//! etcd is shared by every node and by people with `etcdctl`, so a record is data from
//! outside: a lease counts only if its key names a subnet of the configured prefix length
//! inside the Network, its `PublicIP` is a usable unicast address and (vxlan) its VTEP MAC is
//! a unicast MAC. The store, the route reconciler, `/status` and `weft doctor` all judge leases
//! with [`check_lease`], so what the data path skips is exactly what the views report.
//!
//! Two leases may also name the same PublicIP (a stale record, a typo, a node that moved):
//! [`conflicts`] finds them so they can be reported; the data path keeps both working.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::record::{BackendRecord, LeaseRecord, RecordError};
use super::Keys;
use crate::config::{BackendType, NetworkConfig};
use crate::wire::Subnet;

/// One key under `<prefix>/subnets/` as judged by [`judge`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    /// The subnet the key names, if it names one.
    pub subnet: Option<Subnet>,
    /// The usable record, or why the lease is not used.
    pub verdict: Result<LeaseRecord, LeaseProblem>,
}

/// Reads and judges one etcd key/value under the subnets prefix: key syntax, record syntax,
/// then [`check_lease`].
pub fn judge(keys: &Keys, cfg: &NetworkConfig, key: &[u8], value: &[u8]) -> Judged {
    let Some(subnet) = keys.parse_subnet_key(key) else {
        return Judged {
            subnet: None,
            verdict: Err(LeaseProblem::BadKey),
        };
    };
    let verdict = LeaseRecord::parse(value)
        .map_err(LeaseProblem::Unreadable)
        .and_then(|rec| check_lease(cfg, subnet, &rec).map(|()| rec));
    Judged {
        subnet: Some(subnet),
        verdict,
    }
}

/// Why a lease from etcd is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseProblem {
    /// A key under `<prefix>/subnets/` that does not name a subnet (`10.1.2.0-24`).
    #[error("the key does not name a subnet like 10.1.2.0-24")]
    BadKey,
    /// The record does not parse.
    #[error("{0}")]
    Unreadable(RecordError),
    /// The subnet lies (partly) outside the Network.
    #[error("subnet {subnet} lies outside the Network {network}")]
    OutsideNetwork {
        /// The lease's subnet.
        subnet: Subnet,
        /// The configured Network.
        network: Subnet,
    },
    /// The subnet's prefix length is not the configured SubnetLen.
    #[error("subnet {subnet} is not a /{subnet_len} (the network's SubnetLen)")]
    PrefixLen {
        /// The lease's subnet.
        subnet: Subnet,
        /// The configured SubnetLen.
        subnet_len: u8,
    },
    /// The PublicIP is not an address a node can have on the underlay.
    #[error("PublicIP {ip} is {why}, not a usable unicast address")]
    PublicIp {
        /// The record's PublicIP.
        ip: Ipv4Addr,
        /// What kind of address it is.
        why: &'static str,
    },
    /// The vxlan VTEP MAC is a multicast, broadcast or all-zero address.
    #[error("VtepMAC {0} is not a unicast MAC")]
    VtepMac(crate::wire::EthernetAddress),
    /// The record belongs to another backend type than the network's.
    #[error("the lease is for backend {theirs:?}, the network runs {ours}")]
    OtherBackend {
        /// The record's `BackendType` (`""` for none).
        theirs: String,
        /// The configured backend.
        ours: &'static str,
    },
}

impl LeaseProblem {
    /// The `reason` label of the `weft_leases_rejected` metric.
    pub fn label(&self) -> &'static str {
        match self {
            LeaseProblem::BadKey => "bad_key",
            LeaseProblem::Unreadable(_) => "unreadable",
            LeaseProblem::OutsideNetwork { .. } => "outside_network",
            LeaseProblem::PrefixLen { .. } => "prefix_len",
            LeaseProblem::PublicIp { .. } => "public_ip",
            LeaseProblem::VtepMac(_) => "vtep_mac",
            LeaseProblem::OtherBackend { .. } => "other_backend",
        }
    }

    /// Every label, in a fixed order (so the metric shows zeros too).
    pub const LABELS: [&'static str; 7] = [
        "bad_key",
        "unreadable",
        "outside_network",
        "prefix_len",
        "public_ip",
        "vtep_mac",
        "other_backend",
    ];
}

/// Why `ip` cannot be a node's underlay address, if it cannot.
pub fn unusable_public_ip(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_broadcast() {
        Some("the broadcast address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if ip.is_link_local() {
        Some("a link-local address")
    } else if ip.octets()[0] >= 240 {
        Some("in the reserved 240.0.0.0/4 block")
    } else if ip.octets()[0] == 0 {
        Some("in 0.0.0.0/8 (this network)")
    } else {
        None
    }
}

/// Judges one lease: `subnet` from its key, `record` its parsed value. `Ok` means the lease
/// may become a table entry, a peer and (host-gw, DirectRouting) a route.
pub fn check_lease(
    cfg: &NetworkConfig,
    subnet: Subnet,
    record: &LeaseRecord,
) -> Result<(), LeaseProblem> {
    if subnet.prefix_len() != cfg.subnet_len {
        return Err(LeaseProblem::PrefixLen {
            subnet,
            subnet_len: cfg.subnet_len,
        });
    }
    if !cfg.network.contains_subnet(&subnet) {
        return Err(LeaseProblem::OutsideNetwork {
            subnet,
            network: cfg.network,
        });
    }
    if let Some(why) = unusable_public_ip(record.public_ip) {
        return Err(LeaseProblem::PublicIp {
            ip: record.public_ip,
            why,
        });
    }
    match (cfg.backend.kind, &record.backend) {
        (BackendType::Vxlan, BackendRecord::Vxlan { vtep_mac, .. }) => {
            if !vtep_mac.is_unicast() {
                return Err(LeaseProblem::VtepMac(*vtep_mac));
            }
            Ok(())
        }
        (BackendType::HostGw, BackendRecord::HostGw) | (BackendType::Udp, _) => Ok(()),
        (kind, other) => Err(LeaseProblem::OtherBackend {
            theirs: other.type_name().to_string(),
            ours: kind.as_str(),
        }),
    }
}

/// Every lease under the subnets prefix, judged: what a view (`weft doctor`) shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseView {
    /// Usable leases: subnet and PublicIP, in key order.
    pub usable: Vec<(Subnet, Ipv4Addr)>,
    /// Keys not used, and why.
    pub rejected: Vec<(String, LeaseProblem)>,
    /// PublicIPs that several usable leases name, with their keys.
    pub conflicts: Vec<(Ipv4Addr, Vec<String>)>,
}

/// Judges a whole listing of `(key, value)` pairs under the subnets prefix.
pub fn judge_all<'a>(
    keys: &Keys,
    cfg: &NetworkConfig,
    kvs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> LeaseView {
    let mut view = LeaseView::default();
    for (key, value) in kvs {
        let j = judge(keys, cfg, key, value);
        match (j.subnet, j.verdict) {
            (Some(subnet), Ok(rec)) => view.usable.push((subnet, rec.public_ip)),
            (_, Err(p)) => view
                .rejected
                .push((String::from_utf8_lossy(key).into_owned(), p)),
            (None, Ok(_)) => {}
        }
    }
    view.conflicts = conflicts(view.usable.iter().copied())
        .into_iter()
        .map(|(ip, subnets)| (ip, subnets.iter().map(|s| keys.subnet(s)).collect()))
        .collect();
    view
}

/// PublicIPs that more than one lease names, with the subnets that name them, in address
/// order. `leases` are the usable leases (this node's own among them).
pub fn conflicts(
    leases: impl IntoIterator<Item = (Subnet, Ipv4Addr)>,
) -> BTreeMap<Ipv4Addr, Vec<Subnet>> {
    let mut by_ip: BTreeMap<Ipv4Addr, Vec<Subnet>> = BTreeMap::new();
    for (subnet, ip) in leases {
        by_ip.entry(ip).or_default().push(subnet);
    }
    by_ip.retain(|_, subnets| {
        subnets.sort();
        subnets.len() > 1
    });
    by_ip
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> NetworkConfig {
        NetworkConfig::parse(json).unwrap()
    }

    fn rec(json: &str) -> LeaseRecord {
        LeaseRecord::parse(json.as_bytes()).unwrap()
    }

    const VXLAN: &str = r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan"}}"#;
    const GOOD: &str = r#"{"PublicIP":"192.168.77.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;

    #[test]
    fn a_genuine_lease_passes() {
        let c = cfg(VXLAN);
        assert_eq!(
            check_lease(&c, "10.1.2.0/24".parse().unwrap(), &rec(GOOD)),
            Ok(())
        );
    }

    #[test]
    fn subnets_outside_the_network_or_of_another_length_are_refused() {
        let c = cfg(VXLAN);
        let r = rec(GOOD);
        for (s, label) in [
            ("192.168.77.0/24", "outside_network"),
            ("8.8.8.0/24", "outside_network"),
            ("10.1.0.0/16", "prefix_len"),
            ("10.1.2.0/25", "prefix_len"),
            ("10.0.0.0/8", "prefix_len"),
        ] {
            let e = check_lease(&c, s.parse().unwrap(), &r).unwrap_err();
            assert_eq!(e.label(), label, "{s}: {e}");
        }
    }

    #[test]
    fn unusable_public_ips_are_refused() {
        let c = cfg(VXLAN);
        for ip in [
            "127.0.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "169.254.1.1",
            "240.0.0.1",
            "0.1.2.3",
        ] {
            let r = rec(&GOOD.replace("192.168.77.2", ip));
            let e = check_lease(&c, "10.1.2.0/24".parse().unwrap(), &r).unwrap_err();
            assert_eq!(e.label(), "public_ip", "{ip}");
            assert!(e.to_string().contains(ip), "{e}");
        }
        // 0.0.0.0 never parses at all.
        assert!(LeaseRecord::parse(GOOD.replace("192.168.77.2", "0.0.0.0").as_bytes()).is_err());
    }

    #[test]
    fn multicast_and_zero_vtep_macs_are_refused() {
        let c = cfg(VXLAN);
        for mac in [
            "ff:ff:ff:ff:ff:ff",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
        ] {
            let r = rec(&GOOD.replace("c6:d2:32:6f:8f:44", mac));
            let e = check_lease(&c, "10.1.2.0/24".parse().unwrap(), &r).unwrap_err();
            assert_eq!(e.label(), "vtep_mac", "{mac}");
        }
    }

    #[test]
    fn backend_must_match() {
        let hostgw = cfg(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"host-gw"}}"#);
        let e = check_lease(&hostgw, "10.1.2.0/24".parse().unwrap(), &rec(GOOD)).unwrap_err();
        assert_eq!(e.label(), "other_backend");
        // The udp backend reads any record's PublicIP (flannel's udp nodes write no type).
        let udp = cfg(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"udp"}}"#);
        assert_eq!(
            check_lease(&udp, "10.1.2.0/24".parse().unwrap(), &rec(GOOD)),
            Ok(())
        );
    }

    #[test]
    fn labels_cover_every_problem() {
        let c = cfg(VXLAN);
        let e = check_lease(&c, "8.8.8.0/24".parse().unwrap(), &rec(GOOD)).unwrap_err();
        assert!(LeaseProblem::LABELS.contains(&e.label()));
        assert!(LeaseProblem::LABELS.contains(&LeaseProblem::BadKey.label()));
    }

    #[test]
    fn judge_reads_key_then_record_then_checks() {
        let c = cfg(VXLAN);
        let keys = Keys::new("/coreos.com/network");
        let j = judge(
            &keys,
            &c,
            b"/coreos.com/network/subnets/10.1.2.0-24",
            GOOD.as_bytes(),
        );
        assert_eq!(j.subnet, Some("10.1.2.0/24".parse().unwrap()));
        assert!(j.verdict.is_ok());
        for key in ["subnets/10.1.2.7-24", "subnets/junk", "subnets/10.1.2.0-99"] {
            let k = format!("/coreos.com/network/{key}");
            let j = judge(&keys, &c, k.as_bytes(), GOOD.as_bytes());
            assert_eq!(j.verdict, Err(LeaseProblem::BadKey), "{key}");
        }
        let j = judge(&keys, &c, b"/coreos.com/network/subnets/10.1.2.0-24", b"{");
        assert_eq!(j.verdict.unwrap_err().label(), "unreadable");
        let j = judge(
            &keys,
            &c,
            b"/coreos.com/network/subnets/8.8.8.0-24",
            GOOD.as_bytes(),
        );
        assert_eq!(j.verdict.unwrap_err().label(), "outside_network");
    }

    #[test]
    fn judge_all_sorts_leases_into_usable_rejected_and_conflicts() {
        let c = cfg(VXLAN);
        let keys = Keys::new("/p");
        let dup = GOOD.replace("c6:d2:32:6f:8f:44", "c6:d2:32:6f:8f:45");
        let kvs: Vec<(&[u8], &[u8])> = vec![
            (b"/p/subnets/10.1.2.0-24", GOOD.as_bytes()),
            (b"/p/subnets/10.1.3.0-24", dup.as_bytes()),
            (b"/p/subnets/192.168.77.0-24", GOOD.as_bytes()),
            (b"/p/subnets/odd", GOOD.as_bytes()),
        ];
        let v = judge_all(&keys, &c, kvs);
        assert_eq!(v.usable.len(), 2);
        let reasons: Vec<_> = v.rejected.iter().map(|(_, p)| p.label()).collect();
        assert_eq!(reasons, ["outside_network", "bad_key"]);
        assert_eq!(
            v.conflicts,
            vec![(
                "192.168.77.2".parse().unwrap(),
                vec![
                    "/p/subnets/10.1.2.0-24".to_string(),
                    "/p/subnets/10.1.3.0-24".to_string()
                ]
            )]
        );
    }

    #[test]
    fn conflicts_group_leases_by_public_ip() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let sn = |s: &str| s.parse::<Subnet>().unwrap();
        let c = conflicts([
            (sn("10.1.3.0/24"), ip("192.168.77.2")),
            (sn("10.1.2.0/24"), ip("192.168.77.2")),
            (sn("10.1.4.0/24"), ip("192.168.77.4")),
        ]);
        assert_eq!(c.len(), 1);
        assert_eq!(
            c[&ip("192.168.77.2")],
            vec![sn("10.1.2.0/24"), sn("10.1.3.0/24")]
        );
    }
}
