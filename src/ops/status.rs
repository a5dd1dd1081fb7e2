//! The node's status as the ops endpoints report it, and its JSON form for `weft status`.

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use crate::dataplane::Counters;
use crate::table::LeaseTable;
use crate::wire::{Subnet, Subnet6};

/// A snapshot of what the node is and does, refreshed once a second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// This node's leased subnet.
    pub subnet: String,
    /// The overlay network.
    pub network: String,
    /// The backend type (`vxlan`, `udp`).
    pub backend: String,
    /// The underlay interface.
    pub iface: String,
    /// The address other nodes send to.
    pub public_ip: Ipv4Addr,
    /// This node's VTEP MAC (vxlan).
    pub vtep_mac: Option<String>,
    /// The TUN device and its MTU.
    pub tun: String,
    /// The TUN's MTU.
    pub mtu: u32,
    /// Whether the last etcd request succeeded.
    pub etcd_up: bool,
    /// Seconds until the lease expires unless renewed.
    pub lease_expires_in_secs: u64,
    /// Whether the data-path workers run.
    pub datapath_running: bool,
    /// Whether subnet.env holds our subnet.
    pub subnet_env_written: bool,
    /// Offloads in force.
    pub offloads: Offloads,
    /// Data-path workers (0 without a data path, e.g. host-gw).
    #[serde(default)]
    pub workers: u32,
    /// Threads per worker (1 or 2).
    #[serde(default)]
    pub threads_per_worker: u8,
    /// Seconds since the node came up.
    pub uptime_secs: u64,
    /// flannel's iptables rules (`--ip-masq`, `--iptables-forward-rules`).
    pub iptables: IptablesState,
    /// Where the node writes subnet.env.
    #[serde(default)]
    pub subnet_file: String,
    /// The etcd endpoints the node uses (for `weft doctor` without flags).
    #[serde(default)]
    pub etcd_endpoints: Vec<String>,
    /// The IPv6 half of a dual-stack node.
    #[serde(default)]
    pub ipv6: Option<NodeStatus6>,
    /// What stops the data path from working now (the TUN's plumbing that could not be put
    /// back, the underlay address gone, every send failing); empty when nothing does.
    #[serde(default)]
    pub problems: Vec<String>,
}

/// The IPv6 half of a dual-stack node, as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus6 {
    /// This node's IPv6 subnet.
    pub subnet: String,
    /// The IPv6Network.
    pub network: String,
    /// The IPv6 address other nodes send to (`PublicIPv6`).
    pub public_ip: Ipv6Addr,
    /// This node's IPv6 VTEP MAC (vxlan).
    pub vtep_mac: Option<String>,
}

/// The IPv6 half of a remote lease, as `/status` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus6 {
    /// The peer's IPv6 subnet.
    pub subnet: String,
    /// Its `PublicIPv6`.
    pub public_ip: Ipv6Addr,
    /// Its IPv6 VTEP MAC (vxlan).
    pub vtep_mac: Option<String>,
    /// Packets sent to its PublicIPv6.
    #[serde(default)]
    pub tx_packets: u64,
    /// Packets received from its PublicIPv6.
    #[serde(default)]
    pub rx_packets: u64,
}

/// Offloads in force on the data path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offloads {
    /// The TUN hands over TCP super-packets (TSO).
    pub tun_tso: bool,
    /// Segment trains leave as one `UDP_SEGMENT` message.
    pub udp_gso: bool,
    /// Trains are received whole (`UDP_GRO`) and coalesced for the TUN.
    pub udp_gro: bool,
}

impl From<&crate::dataplane::Offloads> for Offloads {
    fn from(o: &crate::dataplane::Offloads) -> Offloads {
        Offloads {
            tun_tso: o.tun_tso,
            udp_gso: o.udp_gso.is_some(),
            udp_gro: o.udp_gro,
        }
    }
}

/// The state of flannel's iptables rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IptablesState {
    /// Neither `--ip-masq` nor `--iptables-forward-rules`.
    Off,
    /// Written by the last resync.
    Ok,
    /// The last resync failed.
    Failed,
}

/// One lease as `/status` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The peer's subnet.
    pub subnet: String,
    /// Its underlay address.
    pub public_ip: Ipv4Addr,
    /// Its VTEP MAC (vxlan).
    pub vtep_mac: Option<String>,
    /// Seconds since this node first saw the lease.
    pub age_secs: u64,
    /// Packets sent to it.
    pub tx_packets: u64,
    /// Packets received from it.
    pub rx_packets: u64,
}

/// The whole `/status` document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusDoc {
    /// The node.
    pub node: NodeStatus,
    /// Every remote lease in the table.
    pub peers: Vec<PeerStatus>,
    /// Packets forwarded: sent, received.
    pub packets: [u64; 2],
    /// Drops by reason (only reasons with drops).
    pub drops: Vec<(String, u64)>,
    /// Lease records in etcd that are not used, and why.
    #[serde(default)]
    pub rejected_leases: Vec<RejectedStatus>,
    /// PublicIPs (and PublicIPv6s) that several leases name.
    #[serde(default)]
    pub public_ip_conflicts: Vec<ConflictStatus>,
    /// The IPv6 halves of the remote leases (dual stack), in subnet order.
    #[serde(default)]
    pub peers6: Vec<PeerStatus6>,
    /// Leases that name another VNI than this node's.
    #[serde(default)]
    pub other_vni: Vec<OtherVniStatus>,
}

/// A lease whose record names another VNI than this node runs, as `/status` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OtherVniStatus {
    /// The etcd key.
    pub key: String,
    /// The record's field (`BackendData.VNI`, `BackendV6Data.VNI`).
    pub field: String,
    /// The VNI it names.
    pub vni: u32,
}

/// A lease record the node does not use, as `/status` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RejectedStatus {
    /// The etcd key.
    pub key: String,
    /// The reason's metric label.
    pub reason: String,
    /// The reason in words.
    pub detail: String,
}

/// A PublicIP several leases name, as `/status` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConflictStatus {
    /// The PublicIP (or the PublicIPv6 of several leases' IPv6 halves).
    pub public_ip: IpAddr,
    /// The subnets whose leases name it.
    pub subnets: Vec<String>,
}

impl NodeStatus {
    /// Why the node is not ready to carry traffic (empty when it is).
    pub fn not_ready(&self) -> Vec<String> {
        let mut r = Vec::new();
        if !self.datapath_running {
            r.push("data path not running".to_string());
        }
        if !self.subnet_env_written {
            r.push("subnet.env does not hold our subnet".to_string());
        }
        if self.lease_expires_in_secs == 0 {
            r.push("lease expired".to_string());
        }
        if self.iptables == IptablesState::Failed {
            r.push("iptables rules could not be written".to_string());
        }
        r.extend(self.problems.iter().cloned());
        r
    }

    /// The `/status` JSON: this status, the lease table with per-peer counts and ages, and
    /// the counters.
    pub fn to_json(&self, table: &LeaseTable, counters: &Counters) -> String {
        // Packets sent to and received from an underlay address.
        let packets = |ip: std::net::IpAddr| {
            counters.peers.get(ip).map_or((0, 0), |s| {
                (
                    s.tx_packets.load(Ordering::Relaxed),
                    s.rx_packets.load(Ordering::Relaxed),
                )
            })
        };
        let mut peers: Vec<PeerStatus> = table
            .iter_with_age()
            .map(|(p, age_secs)| {
                let (tx_packets, rx_packets) = packets(p.public_ip.into());
                PeerStatus {
                    subnet: p.subnet.to_string(),
                    public_ip: p.public_ip,
                    vtep_mac: p.vtep_mac.map(|m| m.to_string()),
                    age_secs,
                    tx_packets,
                    rx_packets,
                }
            })
            .collect();
        peers.sort_by_key(|p| p.subnet.parse::<crate::wire::Subnet>().ok());
        let peers6 = table
            .iter6()
            .map(|p| {
                let (tx_packets, rx_packets) = packets(p.public_ip.into());
                PeerStatus6 {
                    subnet: p.subnet.to_string(),
                    public_ip: p.public_ip,
                    vtep_mac: p.vtep_mac.map(|m| m.to_string()),
                    tx_packets,
                    rx_packets,
                }
            })
            .collect();
        let doc = StatusDoc {
            node: self.clone(),
            peers,
            peers6,
            packets: [
                counters.tx_packets.load(Ordering::Relaxed),
                counters.rx_packets.load(Ordering::Relaxed),
            ],
            drops: counters
                .drops_by_reason()
                .filter(|(_, n)| *n > 0)
                .map(|(r, n)| (r.as_str().to_string(), n))
                .collect(),
            rejected_leases: table
                .report()
                .rejected
                .iter()
                .map(|r| RejectedStatus {
                    key: r.key.clone(),
                    reason: r.reason.to_string(),
                    detail: r.detail.clone(),
                })
                .collect(),
            other_vni: table
                .report()
                .other_vni
                .iter()
                .map(|v| OtherVniStatus {
                    key: v.key.clone(),
                    field: v.field.to_string(),
                    vni: v.vni,
                })
                .collect(),
            public_ip_conflicts: table
                .report()
                .conflicts
                .iter()
                .map(|(ip, subnets)| ConflictStatus {
                    public_ip: IpAddr::V4(*ip),
                    subnets: subnets.iter().map(Subnet::to_string).collect(),
                })
                .chain(
                    table
                        .report()
                        .conflicts6
                        .iter()
                        .map(|(ip, subnets)| ConflictStatus {
                            public_ip: IpAddr::V6(*ip),
                            subnets: subnets.iter().map(Subnet6::to_string).collect(),
                        }),
                )
                .collect(),
        };
        serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "NO"
    }
}

impl StatusDoc {
    /// Renders the document for a terminal: the node, then the lease table aligned.
    pub fn render(&self) -> String {
        let n = &self.node;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "node      {} ({} backend) in {}",
            n.subnet, n.backend, n.network
        );
        let _ = writeln!(
            o,
            "underlay  {} on {}, VTEP MAC {}",
            n.public_ip,
            n.iface,
            n.vtep_mac.as_deref().unwrap_or("-")
        );
        if let Some(v6) = &n.ipv6 {
            let _ = writeln!(
                o,
                "ipv6      {} in {}, underlay {}, VTEP MAC {}",
                v6.subnet,
                v6.network,
                v6.public_ip,
                v6.vtep_mac.as_deref().unwrap_or("-")
            );
        }
        let _ = writeln!(o, "tun       {} mtu {}", n.tun, n.mtu);
        let _ = writeln!(
            o,
            "etcd      {}   lease expires in {}s   subnet.env {}   data path {}",
            if n.etcd_up {
                "connected"
            } else {
                "UNREACHABLE (forwarding on the last table)"
            },
            n.lease_expires_in_secs,
            if n.subnet_env_written { "ok" } else { "STALE" },
            if n.datapath_running {
                "running"
            } else {
                "STOPPED"
            }
        );
        let _ = writeln!(
            o,
            "offloads  tun-tso {}  udp-gso {}  udp-gro {}   workers {}x{}   iptables {}   up {}s",
            yes(n.offloads.tun_tso),
            yes(n.offloads.udp_gso),
            yes(n.offloads.udp_gro),
            n.workers,
            n.threads_per_worker,
            match n.iptables {
                IptablesState::Off => "off",
                IptablesState::Ok => "rules ok",
                IptablesState::Failed => "RULES FAILED",
            },
            n.uptime_secs
        );
        let _ = writeln!(
            o,
            "packets   sent {}  received {}",
            self.packets[0], self.packets[1]
        );
        if self.drops.is_empty() {
            let _ = writeln!(o, "drops     none");
        } else {
            let d: Vec<String> = self.drops.iter().map(|(r, c)| format!("{r}={c}")).collect();
            let _ = writeln!(o, "drops     {}", d.join(" "));
        }
        let n = self.peers.len();
        let _ = writeln!(
            o,
            "\n{n} remote {}",
            if n == 1 { "lease" } else { "leases" }
        );
        let w = self
            .peers
            .iter()
            .map(|p| p.subnet.len())
            .max()
            .unwrap_or(6)
            .max(6);
        let _ = writeln!(
            o,
            "{:<w$}  {:<15}  {:<17}  {:>8}  {:>12}  {:>12}",
            "SUBNET", "PUBLIC IP", "VTEP MAC", "AGE", "SENT", "RECEIVED"
        );
        for p in &self.peers {
            let _ = writeln!(
                o,
                "{:<w$}  {:<15}  {:<17}  {:>7}s  {:>12}  {:>12}",
                p.subnet,
                p.public_ip.to_string(),
                p.vtep_mac.as_deref().unwrap_or("-"),
                p.age_secs,
                p.tx_packets,
                p.rx_packets
            );
        }
        if !self.peers6.is_empty() {
            let w = self
                .peers6
                .iter()
                .map(|p| p.subnet.len())
                .max()
                .unwrap_or(11)
                .max(11);
            let _ = writeln!(o, "\n{} remote IPv6 halves", self.peers6.len());
            let _ = writeln!(
                o,
                "{:<w$}  {:<39}  {:<17}  {:>12}  {:>12}",
                "IPV6 SUBNET", "PUBLIC IPV6", "VTEP MAC", "SENT", "RECEIVED"
            );
            for p in &self.peers6 {
                let _ = writeln!(
                    o,
                    "{:<w$}  {:<39}  {:<17}  {:>12}  {:>12}",
                    p.subnet,
                    p.public_ip.to_string(),
                    p.vtep_mac.as_deref().unwrap_or("-"),
                    p.tx_packets,
                    p.rx_packets
                );
            }
        }
        for c in &self.public_ip_conflicts {
            let _ = writeln!(
                o,
                "\nCONFLICT  PublicIP {} is named by the leases of {}: delete the stale record(s)",
                c.public_ip,
                c.subnets.join(", ")
            );
        }
        for v in &self.other_vni {
            let _ = writeln!(
                o,
                "\nVNI       the lease {} names {} {}, not this node's: its node and this one drop each other's packets (weft doctor)",
                v.key, v.field, v.vni
            );
        }
        if !self.rejected_leases.is_empty() {
            let _ = writeln!(
                o,
                "\n{} lease record(s) in etcd not used:",
                self.rejected_leases.len()
            );
            for r in &self.rejected_leases {
                let _ = writeln!(o, "  {}  {}", r.key, r.detail);
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{LocalVtep, Peer};
    use crate::wire::{EthernetAddress, Vni};

    fn status() -> NodeStatus {
        NodeStatus {
            subnet: "10.1.2.0/24".into(),
            network: "10.1.0.0/16".into(),
            backend: "vxlan".into(),
            iface: "eth0".into(),
            public_ip: Ipv4Addr::new(192, 168, 64, 10),
            vtep_mac: Some("02:00:00:00:00:01".into()),
            tun: "weft0".into(),
            mtu: 1450,
            etcd_up: true,
            lease_expires_in_secs: 86000,
            datapath_running: true,
            subnet_env_written: true,
            offloads: Offloads {
                tun_tso: true,
                udp_gso: true,
                udp_gro: true,
            },
            workers: 2,
            threads_per_worker: 2,
            uptime_secs: 5,
            iptables: IptablesState::Off,
            subnet_file: "/run/flannel/subnet.env".into(),
            etcd_endpoints: vec!["http://127.0.0.1:2379".into()],
            ipv6: None,
            problems: Vec::new(),
        }
    }

    #[test]
    fn readiness_reasons() {
        let mut s = status();
        assert!(s.not_ready().is_empty());
        s.datapath_running = false;
        s.subnet_env_written = false;
        assert_eq!(s.not_ready().len(), 2);
    }

    #[test]
    fn json_round_trips_and_renders_aligned() {
        let local = LocalVtep {
            vni: Vni::new(1).unwrap(),
            mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
            port: 8472,
        };
        let peers = vec![
            Peer::new(
                "10.1.30.0/24".parse().unwrap(),
                Ipv4Addr::new(192, 168, 64, 12),
                Some(EthernetAddress([2, 0, 0, 0, 0, 3])),
                &local,
            ),
            Peer::new(
                "10.1.4.0/24".parse().unwrap(),
                Ipv4Addr::new(192, 168, 64, 11),
                Some(EthernetAddress([2, 0, 0, 0, 0, 2])),
                &local,
            ),
        ];
        let table = LeaseTable::from_peers(24, peers, 7);
        let c = Counters::default();
        let json = status().to_json(&table, &c);
        let doc: StatusDoc = serde_json::from_str(&json).unwrap();
        assert_eq!(doc.node, status());
        assert_eq!(doc.peers[0].subnet, "10.1.4.0/24", "sorted by address");
        let text = doc.render();
        assert!(text.contains("2 remote leases"), "{text}");
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("10.1.")).collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0].find("192.168"),
            rows[1].find("192.168"),
            "aligned:\n{text}"
        );
    }
    #[test]
    fn the_ipv6_halves_show_their_own_packet_counts() {
        use crate::dataplane::LocalCounters;
        use crate::table::Peer6;
        let local = LocalVtep {
            vni: Vni::new(1).unwrap(),
            mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
            port: 8472,
        };
        let v4 = Ipv4Addr::new(192, 168, 64, 11);
        let v6: Ipv6Addr = "fd77::b".parse().unwrap();
        let peer = Peer::new("10.1.4.0/24".parse().unwrap(), v4, None, &local);
        let mac6 = Some(EthernetAddress([0x0e, 0x77, 0x76, 0, 0, 0x0b]));
        let peer6 = Peer6::new("fd10:0:0:4::/64".parse().unwrap(), v6, mac6, &local);
        let table = LeaseTable::from_peers_dual(24, vec![peer], 64, vec![peer6], 7);
        let c = Counters::default();
        let mut l = LocalCounters::default();
        l.peer(v4, 1, 100, &c, true);
        l.peer(v6, 12345, 1 << 20, &c, true);
        l.flush_tx(&c, 8);
        l.peer(v6, 678, 1 << 10, &c, false);
        l.flush_rx(&c, 8);
        let json = status().to_json(&table, &c);
        let doc: StatusDoc = serde_json::from_str(&json).unwrap();
        assert_eq!((doc.peers[0].tx_packets, doc.peers[0].rx_packets), (1, 0));
        assert_eq!(
            (doc.peers6[0].tx_packets, doc.peers6[0].rx_packets),
            (12345, 678)
        );
        let text = doc.render();
        let row = text
            .lines()
            .find(|l| l.starts_with("fd10:0:0:4::/64"))
            .unwrap_or_else(|| panic!("no IPv6 row:\n{text}"));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cols,
            [
                "fd10:0:0:4::/64",
                "fd77::b",
                "0e:77:76:00:00:0b",
                "12345",
                "678"
            ],
            "{text}"
        );
        let head = text.lines().find(|l| l.starts_with("IPV6 SUBNET")).unwrap();
        assert_eq!(
            head.find("RECEIVED").map(|i| i + 8),
            Some(row.len()),
            "aligned:\n{text}"
        );
        // A document from a weft without the IPv6 counts still reads.
        let mut old: serde_json::Value = serde_json::from_str(&json).unwrap();
        for k in ["tx_packets", "rx_packets"] {
            old["peers6"][0].as_object_mut().unwrap().remove(k);
        }
        let doc: StatusDoc = serde_json::from_value(old).unwrap();
        assert_eq!(doc.peers6[0].tx_packets, 0);
    }
}
