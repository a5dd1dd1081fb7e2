//! The one validation point for leases read from etcd.
//!
//! etcd is shared by every node and by people with `etcdctl`, so a record is data from
//! outside: a lease counts only if its key names a subnet of the configured prefix length
//! inside the Network, its `PublicIP` is a usable unicast address and (vxlan) its VTEP MAC is
//! a unicast MAC. The store, the route reconciler, `/status` and `weft doctor` all judge leases
//! with [`check_lease`], so what the data path skips is exactly what the views report.
//!
//! A dual-stack key (`10.1.2.0-24&fd10:0:0:2::-64`) also has an IPv6 half, judged by
//! [`check_lease_v6`] when the network has IPv6: the IPv6 subnet of IPv6SubnetLen inside
//! IPv6Network, a usable unicast `PublicIPv6` and (vxlan) a unicast `BackendV6Data.VtepMAC`.
//! As in flanneld, an IPv4-only key in a dual-stack network is an IPv4-only lease (it gets
//! no IPv6 route), and the IPv6 half of a key is ignored when the network has no IPv6.
//!
//! On an IPv6-only network (`EnableIPv4: false`) a lease key is flanneld's
//! `0.0.0.0-0&fd10:0:0:2::-64` and only its IPv6 half counts: [`check_key_families`] refuses
//! a key with a real IPv4 part (or none of IPv6) there, and a `0.0.0.0-0&...` key on a network
//! with IPv4; the record is read with [`LeaseRecord::parse_ipv6_only`] and judged by
//! [`check_lease_v6`] alone (plus its backend type).
//!
//! Two leases may also name the same PublicIP (or PublicIPv6) (a stale record, a typo, a node that moved):
//! [`conflicts`] finds them so they can be reported; the data path keeps both working.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::record::{BackendRecord, LeaseRecord, RecordError};
use super::Keys;
use crate::config::{BackendType, NetworkConfig};
use crate::wire::{EthernetAddress, Subnet, Subnet6};

/// One key under `<prefix>/subnets/` as judged by [`judge`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    /// The subnet the key names, if it names one.
    pub subnet: Option<Subnet>,
    /// The IPv6 subnet a dual-stack key names.
    pub subnet6: Option<Subnet6>,
    /// The usable record, or why the lease is not used.
    pub verdict: Result<LeaseRecord, LeaseProblem>,
}

/// Reads and judges one etcd key/value under the subnets prefix: key syntax (flannel's, so a
/// key whose IPv6 part is bad is no lease at all), the key's fit to the network's families
/// ([`check_key_families`]; a key that does not fit names no subnet here), record syntax
/// ([`LeaseRecord::parse_for`]), then [`check_lease`] (IPv4 half, or only the backend type
/// on an IPv6-only network) and [`check_lease_v6`].
pub fn judge(keys: &Keys, cfg: &NetworkConfig, key: &[u8], value: &[u8]) -> Judged {
    let Some((subnet, subnet6)) = keys.parse_subnet_key_dual(key) else {
        return Judged {
            subnet: None,
            subnet6: None,
            verdict: Err(LeaseProblem::BadKey),
        };
    };
    if let Err(problem) = check_key_families(cfg, subnet, subnet6) {
        return Judged {
            subnet: None,
            subnet6: None,
            verdict: Err(problem),
        };
    }
    let verdict = LeaseRecord::parse_for(cfg, value)
        .map_err(LeaseProblem::Unreadable)
        .and_then(|rec| {
            if cfg.enable_ipv4 {
                check_lease(cfg, subnet, &rec)
            } else {
                check_backend(cfg, &rec)
            }
            .map(|()| rec)
        })
        .and_then(|rec| check_lease_v6(cfg, subnet6, &rec).map(|()| rec));
    Judged {
        subnet: Some(subnet),
        subnet6,
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
    /// The IPv6 subnet lies (partly) outside the IPv6Network.
    #[error("IPv6 subnet {subnet} lies outside the IPv6Network {network}")]
    OutsideNetworkV6 {
        /// The lease's IPv6 subnet.
        subnet: Subnet6,
        /// The configured IPv6Network.
        network: Subnet6,
    },
    /// The IPv6 subnet's prefix length is not the configured IPv6SubnetLen.
    #[error("IPv6 subnet {subnet} is not a /{subnet_len} (the network's IPv6SubnetLen)")]
    PrefixLenV6 {
        /// The lease's IPv6 subnet.
        subnet: Subnet6,
        /// The configured IPv6SubnetLen.
        subnet_len: u8,
    },
    /// The key names an IPv6 subnet but the record lacks what reaching it needs.
    #[error("the lease has an IPv6 subnet but no {0}")]
    MissingV6(&'static str),
    /// The PublicIPv6 is not an address a node can have on the underlay.
    #[error("PublicIPv6 {ip} is {why}, not a usable unicast address")]
    PublicIpv6 {
        /// The record's PublicIPv6.
        ip: Ipv6Addr,
        /// What kind of address it is.
        why: &'static str,
    },
    /// The vxlan IPv6 VTEP MAC (`BackendV6Data.VtepMAC`) is not a unicast MAC.
    #[error("BackendV6Data VtepMAC {0} is not a unicast MAC")]
    VtepMacV6(EthernetAddress),
    /// A key of flanneld's IPv6-only form (`0.0.0.0-0&...`) on a network with IPv4.
    #[error("the key is an IPv6-only lease (0.0.0.0-0&...), but the network has IPv4 (EnableIPv4 is not false)")]
    Ipv6OnlyLease,
    /// A key with an IPv4 subnet, or without an IPv6 one, on an IPv6-only network.
    #[error(
        "the network is IPv6-only (EnableIPv4 false): a lease key must be 0.0.0.0-0&<IPv6 subnet>"
    )]
    NotIpv6Only,
    /// The key names a subnet (in either family) that another lease key holds: the one
    /// created first, or this node's own lease. Two keys can name one subnet (an IPv6 subnet
    /// may sit under any IPv4 part); only the holder's lease is used.
    #[error("it names a subnet that {holder} holds (two lease keys may not share a subnet; the one created first keeps it): delete the stale or mistaken key")]
    SubnetTaken {
        /// `the lease <key>` of the holder, or `this node's own lease`.
        holder: String,
    },
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
            LeaseProblem::OutsideNetworkV6 { .. } => "outside_network_v6",
            LeaseProblem::PrefixLenV6 { .. } => "prefix_len_v6",
            LeaseProblem::MissingV6(_) => "missing_v6",
            LeaseProblem::PublicIpv6 { .. } => "public_ipv6",
            LeaseProblem::VtepMacV6(_) => "vtep_mac_v6",
            LeaseProblem::Ipv6OnlyLease => "ipv6_only_lease",
            LeaseProblem::NotIpv6Only => "not_ipv6_only",
            LeaseProblem::SubnetTaken { .. } => "subnet_taken",
        }
    }

    /// Every label, in a fixed order (so the metric shows zeros too).
    pub const LABELS: [&'static str; 15] = [
        "bad_key",
        "unreadable",
        "outside_network",
        "prefix_len",
        "public_ip",
        "vtep_mac",
        "other_backend",
        "outside_network_v6",
        "prefix_len_v6",
        "missing_v6",
        "public_ipv6",
        "vtep_mac_v6",
        "ipv6_only_lease",
        "not_ipv6_only",
        "subnet_taken",
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

/// Why `ip` cannot be a node's underlay IPv6 address, if it cannot.
pub fn unusable_public_ipv6(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("the loopback address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if ip.is_unicast_link_local() {
        Some("a link-local address (fe80::/10)")
    } else if ip.to_ipv4_mapped().is_some() {
        Some("an IPv4-mapped address")
    } else {
        None
    }
}

/// The IPv4 part of flanneld's IPv6-only lease keys: `0.0.0.0-0`, flannel's empty net.
pub fn is_empty_ipv4(subnet: &Subnet) -> bool {
    subnet.prefix_len() == 0 && subnet.addr().is_unspecified()
}

/// Whether a key's subnets fit the network's families: on an IPv6-only network the key must
/// be `0.0.0.0-0&<IPv6 subnet>`; on a network with IPv4 it must not be `0.0.0.0-0&...`.
pub fn check_key_families(
    cfg: &NetworkConfig,
    subnet: Subnet,
    subnet6: Option<Subnet6>,
) -> Result<(), LeaseProblem> {
    match (cfg.enable_ipv4, is_empty_ipv4(&subnet)) {
        (false, true) if subnet6.is_some() => Ok(()),
        (false, _) => Err(LeaseProblem::NotIpv6Only),
        (true, true) => Err(LeaseProblem::Ipv6OnlyLease),
        (true, false) => Ok(()),
    }
}

/// Judges the IPv6 half of a lease: `subnet6` from its key, `record` its parsed value. `Ok`
/// when the network has no IPv6 (flanneld ignores the half then) or the key has no IPv6
/// subnet (an IPv4-only lease, as flanneld treats it).
pub fn check_lease_v6(
    cfg: &NetworkConfig,
    subnet6: Option<Subnet6>,
    record: &LeaseRecord,
) -> Result<(), LeaseProblem> {
    let (Some(v6), Some(subnet)) = (cfg.ipv6.as_ref(), subnet6) else {
        return Ok(());
    };
    if subnet.prefix_len() != v6.subnet_len {
        return Err(LeaseProblem::PrefixLenV6 {
            subnet,
            subnet_len: v6.subnet_len,
        });
    }
    if !v6.network.contains_subnet(&subnet) {
        return Err(LeaseProblem::OutsideNetworkV6 {
            subnet,
            network: v6.network,
        });
    }
    let ip = record
        .public_ipv6
        .ok_or(LeaseProblem::MissingV6("PublicIPv6"))?;
    if let Some(why) = unusable_public_ipv6(ip) {
        return Err(LeaseProblem::PublicIpv6 { ip, why });
    }
    if v6.network.contains(ip) {
        // Encapsulated packets to it would be routed into the overlay again.
        return Err(LeaseProblem::PublicIpv6 {
            ip,
            why: "inside the IPv6Network",
        });
    }
    if let BackendRecord::Vxlan { .. } | BackendRecord::VxlanIpv6Only = record.backend {
        // flanneld's vxlan backend skips a dual-stack lease whose BackendV6Data it cannot read.
        let data = record
            .backend_v6
            .ok_or(LeaseProblem::MissingV6("BackendV6Data"))?;
        if !data.vtep_mac.is_unicast() {
            return Err(LeaseProblem::VtepMacV6(data.vtep_mac));
        }
    }
    Ok(())
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
    check_backend(cfg, record)
}

/// Judges a record's backend against the network's: its type, and (vxlan with IPv4) the
/// VTEP MAC of `BackendData`. An IPv6-only vxlan record has no `BackendData`; its VTEP is
/// [`check_lease_v6`]'s.
fn check_backend(cfg: &NetworkConfig, record: &LeaseRecord) -> Result<(), LeaseProblem> {
    match (cfg.backend.kind, &record.backend) {
        (BackendType::Vxlan, BackendRecord::Vxlan { vtep_mac, .. }) => {
            if cfg.enable_ipv4 && !vtep_mac.is_unicast() {
                return Err(LeaseProblem::VtepMac(*vtep_mac));
            }
            Ok(())
        }
        (BackendType::Vxlan, BackendRecord::VxlanIpv6Only) if !cfg.enable_ipv4 => Ok(()),
        (BackendType::HostGw, BackendRecord::HostGw) | (BackendType::Udp, _) => Ok(()),
        (kind, other) => Err(LeaseProblem::OtherBackend {
            theirs: other.type_name().to_string(),
            ours: kind.as_str(),
        }),
    }
}

/// A usable vxlan lease that names another VNI than the network config's `Backend.VNI`: its
/// node runs another VNI (a cluster in the middle of a VNI change), so each side drops the
/// other's packets. Only the VNI can be compared: flannel's lease records do not carry the
/// port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VniMismatch {
    /// The lease's key.
    pub key: String,
    /// The record's field: `BackendData.VNI`, or `BackendV6Data.VNI` for the IPv6 half.
    pub field: &'static str,
    /// The VNI the record names.
    pub vni: u32,
    /// The network config's `Backend.VNI`.
    pub expected: u32,
}

/// The VNIs of a vxlan `record` that are not the network config's `Backend.VNI`, as
/// `(field, vni)`: `BackendData.VNI` (when the network has IPv4) and `BackendV6Data.VNI`
/// (when it has IPv6). Nothing for the other backends, which have no VNI.
pub fn vni_mismatches(cfg: &NetworkConfig, record: &LeaseRecord) -> Vec<(&'static str, u32)> {
    if cfg.backend.kind != BackendType::Vxlan {
        return Vec::new();
    }
    let expected = cfg.backend.vni.get();
    let four = match record.backend {
        BackendRecord::Vxlan { vni, .. } if cfg.enable_ipv4 => Some(("BackendData.VNI", vni)),
        _ => None,
    };
    let six = match (&cfg.ipv6, record.backend_v6) {
        (Some(_), Some(v6)) => Some(("BackendV6Data.VNI", v6.vni)),
        _ => None,
    };
    four.into_iter()
        .chain(six)
        .filter(|&(_, vni)| vni != expected)
        .collect()
}

/// Every lease under the subnets prefix, judged: what a view (`weft doctor`) shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseView {
    /// Usable leases' IPv4 halves: subnet and PublicIP, in subnet order (none on an IPv6-only
    /// network).
    pub usable: Vec<(Subnet, Ipv4Addr)>,
    /// Keys not used, and why.
    pub rejected: Vec<(String, LeaseProblem)>,
    /// PublicIPs that several usable leases name, with their keys.
    pub conflicts: Vec<(Ipv4Addr, Vec<String>)>,
    /// Usable leases' IPv6 halves: IPv6 subnet and PublicIPv6, in subnet order (when the
    /// network has IPv6).
    pub usable6: Vec<(Subnet6, Ipv6Addr)>,
    /// PublicIPv6s that several usable leases name, with their keys.
    pub conflicts6: Vec<(Ipv6Addr, Vec<String>)>,
    /// Usable vxlan leases whose VNI is not the network config's, in key order.
    pub vni_mismatches: Vec<VniMismatch>,
}

/// Judges a whole listing of `(key, value, create revision)` under the subnets prefix, as the
/// node does: of two keys naming one subnet (in either family) the one created first holds
/// it, and the other is `subnet_taken` (see [`crate::table::PeerSet`]).
pub fn judge_all<'a>(
    keys: &Keys,
    cfg: &NetworkConfig,
    kvs: impl IntoIterator<Item = (&'a [u8], &'a [u8], i64)>,
) -> LeaseView {
    let mut view = LeaseView::default();
    // Usable leases in (create revision, key) order, then admitted while their subnets are
    // free: the node's own rule.
    let mut usable = Vec::new();
    for (key, value, created) in kvs {
        let j = judge(keys, cfg, key, value);
        match (j.subnet, j.verdict) {
            (Some(subnet), Ok(rec)) => {
                let lease = crate::table::LeaseKey {
                    subnet,
                    subnet6: j.subnet6,
                };
                usable.push((created, lease, key, rec));
            }
            (_, Err(p)) => view
                .rejected
                .push((String::from_utf8_lossy(key).into_owned(), p)),
            (None, Ok(_)) => {}
        }
    }
    usable.sort_by_key(|u| (u.0, u.1));
    let mut held4: BTreeMap<Subnet, crate::table::LeaseKey> = BTreeMap::new();
    let mut held6: BTreeMap<Subnet6, crate::table::LeaseKey> = BTreeMap::new();
    // The key of each usable IPv6 half, to name the keys of a PublicIPv6 conflict.
    let mut keys6: BTreeMap<Subnet6, String> = BTreeMap::new();
    for (_, lease, key, rec) in usable {
        let four = cfg.enable_ipv4.then_some(lease.subnet);
        let six = cfg.ipv6.as_ref().and(lease.subnet6);
        let holder = four
            .and_then(|s| held4.get(&s))
            .or_else(|| six.and_then(|s| held6.get(&s)));
        if let Some(h) = holder {
            let holder = format!(
                "the lease {}",
                keys.subnet_dual(&h.subnet, h.subnet6.as_ref())
            );
            let name = String::from_utf8_lossy(key).into_owned();
            view.rejected
                .push((name, LeaseProblem::SubnetTaken { holder }));
            continue;
        }
        let name = String::from_utf8_lossy(key);
        for (field, vni) in vni_mismatches(cfg, &rec) {
            view.vni_mismatches.push(VniMismatch {
                key: name.clone().into_owned(),
                field,
                vni,
                expected: cfg.backend.vni.get(),
            });
        }
        if let Some(s) = four {
            held4.insert(s, lease);
            view.usable.push((s, rec.public_ip));
        }
        if let (Some(s6), Some(ip6)) = (six, rec.public_ipv6) {
            held6.insert(s6, lease);
            view.usable6.push((s6, ip6));
            keys6.insert(s6, keys.subnet_dual(&lease.subnet, Some(&s6)));
        }
    }
    // Subnet order; the VNI mismatches in key order.
    view.vni_mismatches
        .sort_by(|a, b| (&a.key, a.field).cmp(&(&b.key, b.field)));
    view.usable.sort();
    view.usable6.sort();
    view.conflicts = conflicts(view.usable.iter().copied())
        .into_iter()
        .map(|(ip, subnets)| (ip, subnets.iter().map(|s| keys.subnet(s)).collect()))
        .collect();
    view.conflicts6 = conflicts(view.usable6.iter().copied())
        .into_iter()
        .map(|(ip, subnets)| {
            let named = subnets.iter().filter_map(|s| keys6.get(s).cloned());
            (ip, named.collect())
        })
        .collect();
    view
}

/// Underlay addresses (PublicIPs, or PublicIPv6s) that more than one lease names, with the
/// subnets that name them, in address order. `leases` are the usable leases (this node's own
/// among them) as `(subnet, address)`.
pub fn conflicts<S: Ord, A: Ord>(leases: impl IntoIterator<Item = (S, A)>) -> BTreeMap<A, Vec<S>> {
    let mut by_ip: BTreeMap<A, Vec<S>> = BTreeMap::new();
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
        NetworkConfig::parse_dual_stack(json).unwrap()
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
        let v = judge_all(&keys, &c, kvs.into_iter().map(|(k, v)| (k, v, 0)));
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
    fn judge_all_gives_a_shared_subnet_to_the_key_created_first() {
        let keys = Keys::new("/p");
        let other = DUAL
            .replace("fd77::2", "fd77::9")
            .replace("192.168.77.2", "192.168.77.9");
        let genuine: &[u8] = b"/p/subnets/10.1.2.0-24&fd10:0:0:2::-64";
        let claim: &[u8] = b"/p/subnets/10.1.1.0-24&fd10:0:0:2::-64";
        // The claim sorts first in the listing but was created later.
        let kvs = vec![(claim, other.as_bytes(), 9), (genuine, DUAL.as_bytes(), 4)];
        let v = judge_all(&keys, &cfg(DUAL_CFG), kvs);
        assert_eq!(
            v.usable6,
            vec![(
                "fd10:0:0:2::/64".parse().unwrap(),
                "fd77::2".parse().unwrap()
            )]
        );
        assert_eq!(
            v.usable,
            vec![(
                "10.1.2.0/24".parse().unwrap(),
                "192.168.77.2".parse().unwrap()
            )]
        );
        assert_eq!(v.rejected.len(), 1);
        let (key, problem) = &v.rejected[0];
        assert_eq!(key, "/p/subnets/10.1.1.0-24&fd10:0:0:2::-64");
        assert_eq!(problem.label(), "subnet_taken");
        assert!(
            problem.to_string().contains("10.1.2.0-24&fd10:0:0:2::-64"),
            "{problem}"
        );
    }

    const DUAL_CFG: &str = r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/48","Backend":{"Type":"vxlan"}}"#;
    const DUAL: &str = r#"{"PublicIP":"192.168.77.2","PublicIPv6":"fd77::2","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"BackendV6Data":{"VNI":1,"VtepMAC":"9e:1a:77:20:4b:01"}}"#;
    const DUAL_KEY: &[u8] = b"/p/subnets/10.1.2.0-24&fd10:0:0:2::-64";

    fn judge_dual(cfg_json: &str, key: &[u8], value: &str) -> Result<(), &'static str> {
        let j = judge(&Keys::new("/p"), &cfg(cfg_json), key, value.as_bytes());
        j.verdict.map(|_| ()).map_err(|p| p.label())
    }

    #[test]
    fn a_genuine_dual_stack_lease_passes() {
        let j = judge(&Keys::new("/p"), &cfg(DUAL_CFG), DUAL_KEY, DUAL.as_bytes());
        assert_eq!(j.subnet, Some("10.1.2.0/24".parse().unwrap()));
        assert_eq!(j.subnet6, Some("fd10:0:0:2::/64".parse().unwrap()));
        assert!(j.verdict.is_ok(), "{:?}", j.verdict);
    }

    #[test]
    fn ipv6_subnets_outside_the_network_or_of_another_length_are_refused() {
        for (key, label) in [
            ("10.1.2.0-24&fd11:0:0:2::-64", "outside_network_v6"),
            ("10.1.2.0-24&fd10:0:0:2::-80", "prefix_len_v6"),
            ("10.1.2.0-24&fd10::-48", "prefix_len_v6"),
            ("10.1.2.0-24&fd00::-8", "prefix_len_v6"),
        ] {
            let k = format!("/p/subnets/{key}");
            assert_eq!(
                judge_dual(DUAL_CFG, k.as_bytes(), DUAL),
                Err(label),
                "{key}"
            );
        }
        // The IPv4 half is still judged first.
        let k = b"/p/subnets/8.8.8.0-24&fd10:0:0:2::-64";
        assert_eq!(judge_dual(DUAL_CFG, k, DUAL), Err("outside_network"));
    }

    #[test]
    fn unusable_public_ipv6s_are_refused() {
        for ip in ["::", "::1", "ff02::1", "fe80::1", "febf::1", "10.0.0.7"] {
            let v = DUAL.replace("fd77::2", ip);
            let r = LeaseRecord::parse(v.as_bytes()).unwrap();
            let e = check_lease_v6(&cfg(DUAL_CFG), Some("fd10:0:0:2::/64".parse().unwrap()), &r)
                .unwrap_err();
            assert_eq!(e.label(), "public_ipv6", "{ip}: {e}");
            assert!(e.to_string().starts_with("PublicIPv6 "), "{e}");
        }
        // Global and unique-local addresses are fine; fec0::/10 is not link-local.
        for ip in ["2001:db8::7", "fd77::2", "fec0::1"] {
            assert_eq!(unusable_public_ipv6(ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[test]
    fn a_dual_stack_key_needs_public_ipv6_and_v6_vtep() {
        let no_ip = DUAL.replace(r#""fd77::2""#, "null");
        assert_eq!(judge_dual(DUAL_CFG, DUAL_KEY, &no_ip), Err("missing_v6"));
        let no_data = DUAL
            .split(r#","BackendV6Data""#)
            .next()
            .unwrap()
            .to_string()
            + "}";
        assert_eq!(judge_dual(DUAL_CFG, DUAL_KEY, &no_data), Err("missing_v6"));
        for mac in [
            "ff:ff:ff:ff:ff:ff",
            "33:33:00:00:00:01",
            "00:00:00:00:00:00",
        ] {
            let v = DUAL.replace("9e:1a:77:20:4b:01", mac);
            assert_eq!(
                judge_dual(DUAL_CFG, DUAL_KEY, &v),
                Err("vtep_mac_v6"),
                "{mac}"
            );
        }
    }

    #[test]
    fn mixed_stacks_are_judged_as_flanneld_does() {
        // An IPv4-only lease in a dual-stack network: an IPv4-only peer.
        let k = b"/p/subnets/10.1.2.0-24";
        assert_eq!(judge_dual(DUAL_CFG, k, GOOD), Ok(()));
        // A dual-stack lease in an IPv4-only network: its IPv6 half is not looked at.
        let bad_v6 = DUAL.replace("fd77::2", "fe80::2");
        assert_eq!(judge_dual(VXLAN, DUAL_KEY, &bad_v6), Ok(()));
        assert_eq!(
            judge_dual(VXLAN, b"/p/subnets/10.1.2.0-24&fd11::-64", GOOD),
            Ok(())
        );
        // But a key whose IPv6 part flannel cannot read is no lease in either.
        for cfg_json in [VXLAN, DUAL_CFG] {
            let k = b"/p/subnets/10.1.2.0-24&FD10:0:0:2::-64";
            assert_eq!(judge_dual(cfg_json, k, DUAL), Err("bad_key"));
        }
    }

    #[test]
    fn ipv6_labels_are_listed() {
        let s6: Subnet6 = "fd10::/64".parse().unwrap();
        for p in [
            LeaseProblem::OutsideNetworkV6 {
                subnet: s6,
                network: s6,
            },
            LeaseProblem::PrefixLenV6 {
                subnet: s6,
                subnet_len: 64,
            },
            LeaseProblem::MissingV6("PublicIPv6"),
            LeaseProblem::PublicIpv6 {
                ip: Ipv6Addr::LOCALHOST,
                why: "the loopback address",
            },
            LeaseProblem::VtepMacV6(EthernetAddress([0xff; 6])),
        ] {
            assert!(LeaseProblem::LABELS.contains(&p.label()), "{p}");
        }
        let mut labels = LeaseProblem::LABELS.to_vec();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), LeaseProblem::LABELS.len());
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

    const V6_ONLY_CFG: &str = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd10::/48","Backend":{"Type":"vxlan"}}"#;
    const V6_ONLY: &str = r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd77::2","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"9e:1a:77:20:4b:01"}}"#;
    const V6_ONLY_KEY: &[u8] = b"/p/subnets/0.0.0.0-0&fd10:0:0:2::-64";

    #[test]
    fn an_ipv6_only_lease_passes_on_an_ipv6_only_network() {
        let j = judge(
            &Keys::new("/p"),
            &cfg(V6_ONLY_CFG),
            V6_ONLY_KEY,
            V6_ONLY.as_bytes(),
        );
        assert_eq!(j.subnet, Some("0.0.0.0/0".parse().unwrap()));
        assert_eq!(j.subnet6, Some("fd10:0:0:2::/64".parse().unwrap()));
        assert!(j.verdict.is_ok(), "{:?}", j.verdict);
        // A dual-stack node's record under an IPv6-only key: its IPv4 half is ignored.
        assert_eq!(judge_dual(V6_ONLY_CFG, V6_ONLY_KEY, DUAL), Ok(()));
    }

    #[test]
    fn keys_that_do_not_fit_the_network_s_families_are_refused() {
        for key in [
            "10.1.2.0-24&fd10:0:0:2::-64",
            "0.0.0.0-0",
            "10.1.2.0-24",
            "0.0.0.0-8&fd10:0:0:2::-64",
        ] {
            let k = format!("/p/subnets/{key}");
            let j = judge(
                &Keys::new("/p"),
                &cfg(V6_ONLY_CFG),
                k.as_bytes(),
                V6_ONLY.as_bytes(),
            );
            assert_eq!(j.verdict, Err(LeaseProblem::NotIpv6Only), "{key}");
            assert_eq!((j.subnet, j.subnet6), (None, None), "{key}");
        }
        for c in [DUAL_CFG, VXLAN] {
            let j = judge(&Keys::new("/p"), &cfg(c), V6_ONLY_KEY, DUAL.as_bytes());
            assert_eq!(j.verdict, Err(LeaseProblem::Ipv6OnlyLease), "{c}");
            assert_eq!((j.subnet, j.subnet6), (None, None));
        }
        assert!(LeaseProblem::LABELS.contains(&LeaseProblem::NotIpv6Only.label()));
        assert!(LeaseProblem::LABELS.contains(&LeaseProblem::Ipv6OnlyLease.label()));
    }

    #[test]
    fn ipv6_only_leases_get_the_ipv6_checks() {
        let no_data = V6_ONLY
            .split(r#","BackendV6Data""#)
            .next()
            .unwrap()
            .to_string()
            + "}";
        let no_ip6 = V6_ONLY.replace(r#""fd77::2""#, "null");
        let hg = r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd77::2","BackendType":"host-gw"}"#;
        for (value, label) in [
            (no_data.as_str(), "missing_v6"),
            (no_ip6.as_str(), "missing_v6"),
            (&V6_ONLY.replace("fd77::2", "fe80::2"), "public_ipv6"),
            // The underlay inside the overlay: encapsulated packets would loop.
            (&V6_ONLY.replace("fd77::2", "fd10:0:0:9::1"), "public_ipv6"),
            (
                &V6_ONLY.replace("9e:1a:77:20:4b:01", "33:33:00:00:00:01"),
                "vtep_mac_v6",
            ),
            (hg, "other_backend"),
            ("{", "unreadable"),
        ] {
            assert_eq!(
                judge_dual(V6_ONLY_CFG, V6_ONLY_KEY, value),
                Err(label),
                "{value}"
            );
        }
        for (key, label) in [
            ("0.0.0.0-0&fd11:0:0:2::-64", "outside_network_v6"),
            ("0.0.0.0-0&fd10:0:0:2::-80", "prefix_len_v6"),
        ] {
            let k = format!("/p/subnets/{key}");
            assert_eq!(
                judge_dual(V6_ONLY_CFG, k.as_bytes(), V6_ONLY),
                Err(label),
                "{key}"
            );
        }
        // The same underlay check on a dual-stack network.
        let inside = DUAL.replace("fd77::2", "fd10::7");
        assert_eq!(judge_dual(DUAL_CFG, DUAL_KEY, &inside), Err("public_ipv6"));
        // host-gw on an IPv6-only host-gw network is fine.
        let hg_cfg = V6_ONLY_CFG.replace("vxlan", "host-gw");
        assert_eq!(judge_dual(&hg_cfg, V6_ONLY_KEY, hg), Ok(()));
    }

    #[test]
    fn judge_all_reports_ipv6_halves_and_public_ipv6_conflicts() {
        let keys = Keys::new("/p");
        let c = cfg(V6_ONLY_CFG);
        let other = V6_ONLY.replace("9e:1a:77:20:4b:01", "9e:1a:77:20:4b:02");
        let third = V6_ONLY.replace("fd77::2", "fd77::3");
        let kvs: Vec<(&[u8], &[u8])> = vec![
            (b"/p/subnets/0.0.0.0-0&fd10:0:0:2::-64", V6_ONLY.as_bytes()),
            (b"/p/subnets/0.0.0.0-0&fd10:0:0:3::-64", other.as_bytes()),
            (b"/p/subnets/0.0.0.0-0&fd10:0:0:4::-64", third.as_bytes()),
            (b"/p/subnets/10.1.2.0-24&fd10:0:0:5::-64", DUAL.as_bytes()),
        ];
        let v = judge_all(&keys, &c, kvs.into_iter().map(|(k, v)| (k, v, 0)));
        assert!(v.usable.is_empty(), "no IPv4 halves: {:?}", v.usable);
        assert!(
            v.conflicts.is_empty(),
            "0.0.0.0 is no PublicIP: {:?}",
            v.conflicts
        );
        assert_eq!(v.usable6.len(), 3);
        let reasons: Vec<_> = v.rejected.iter().map(|(_, p)| p.label()).collect();
        assert_eq!(reasons, ["not_ipv6_only"]);
        assert_eq!(
            v.conflicts6,
            vec![(
                "fd77::2".parse().unwrap(),
                vec![
                    "/p/subnets/0.0.0.0-0&fd10:0:0:2::-64".to_string(),
                    "/p/subnets/0.0.0.0-0&fd10:0:0:3::-64".to_string()
                ]
            )]
        );
        // Dual stack: both halves, each family's conflicts.
        let dup = DUAL.replace("c6:d2:32:6f:8f:44", "c6:d2:32:6f:8f:45");
        let kvs: Vec<(&[u8], &[u8])> = vec![
            (DUAL_KEY, DUAL.as_bytes()),
            (b"/p/subnets/10.1.3.0-24&fd10:0:0:3::-64", dup.as_bytes()),
        ];
        let v = judge_all(
            &keys,
            &cfg(DUAL_CFG),
            kvs.into_iter().map(|(k, v)| (k, v, 0)),
        );
        assert_eq!((v.usable.len(), v.usable6.len()), (2, 2));
        assert_eq!((v.conflicts.len(), v.conflicts6.len()), (1, 1));
    }

    #[test]
    fn judge_all_lists_leases_of_another_vni() {
        let keys = Keys::new("/p");
        let vni2 = GOOD
            .replace("\"VNI\":1", "\"VNI\":2")
            .replace("192.168.77.2", "192.168.77.3");
        let kvs: Vec<(&[u8], &[u8])> = vec![
            (b"/p/subnets/10.1.3.0-24", vni2.as_bytes()),
            (b"/p/subnets/10.1.2.0-24", GOOD.as_bytes()),
        ];
        let v = judge_all(
            &keys,
            &cfg(VXLAN),
            kvs.clone().into_iter().map(|(k, v)| (k, v, 0)),
        );
        // Still usable (the record is well formed); listed as another VNI.
        assert_eq!(v.usable.len(), 2);
        assert_eq!(
            v.vni_mismatches,
            [VniMismatch {
                key: "/p/subnets/10.1.3.0-24".into(),
                field: "BackendData.VNI",
                vni: 2,
                expected: 1,
            }]
        );
        // With Backend.VNI 2 it is the other lease that differs.
        let c2 = cfg(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan","VNI":2}}"#);
        let v = judge_all(&keys, &c2, kvs.into_iter().map(|(k, v)| (k, v, 0)));
        let odd: Vec<_> = v
            .vni_mismatches
            .iter()
            .map(|m| (m.key.as_str(), m.vni, m.expected))
            .collect();
        assert_eq!(odd, [("/p/subnets/10.1.2.0-24", 1, 2)]);
        // Dual stack: each half's VNI; host-gw has none.
        let dual = DUAL.replace(
            "\"BackendV6Data\":{\"VNI\":1",
            "\"BackendV6Data\":{\"VNI\":7",
        );
        let r = rec(&dual);
        assert_eq!(
            vni_mismatches(&cfg(DUAL_CFG), &r),
            [("BackendV6Data.VNI", 7)]
        );
        let hostgw = cfg(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"host-gw"}}"#);
        assert!(vni_mismatches(&hostgw, &rec(&vni2)).is_empty());
    }
}
