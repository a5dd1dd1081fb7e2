//! A host whose overlay is Linux's own VXLAN device, set up exactly as flanneld's vxlan
//! backend sets it up (device, neighbour, FDB entry and route per peer), and flannel's lease
//! record for it: the reference peer weft must interoperate with. Deliberately written from
//! flannel's behaviour rather than from weft's code, so the two can disagree.
//!
//! A dual-stack node (flannel v0.20.2, `EnableIPv6`) has a second device, `flannel-v6.<VNI>`,
//! with its own MAC, carrying IPv6 pod traffic in VXLAN over IPv6 UDP between the nodes'
//! PublicIPv6 addresses, and one lease `10.1.2.0-24&fd10:0:0:2::-64` whose record adds
//! `PublicIPv6` and `BackendV6Data`.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use weft::wire::{EthernetAddress, Subnet, Subnet6};

use super::etcd::{Etcd, PREFIX};
use super::lab::Host;
use super::netns::{bridge_in, ip_in, netns_exec_argv};
use super::process::{describe, run, run_unchecked, wait_until, EXEC_TIMEOUT};

/// Linux's default VXLAN UDP port, which flannel's vxlan backend keeps (not IANA's 4789).
pub const FLANNEL_VXLAN_PORT: u16 = 8472;

/// Bytes a VXLAN encapsulation adds over IPv4: outer IPv4 20 + UDP 8 + VXLAN 8 + Ethernet 14.
pub const VXLAN_OVERHEAD: u32 = 50;

/// Bytes a VXLAN encapsulation adds over IPv6: outer IPv6 40 + UDP 8 + VXLAN 8 + Ethernet 14.
/// The kernel sizes `flannel-v6.N` by it (underlay MTU - 70), while flanneld's FLANNEL_MTU
/// stays underlay MTU - 50 for both families.
pub const VXLAN6_OVERHEAD: u32 = 70;

/// How to set up a [`KernelFlannelNode`]; defaults are flannel's.
#[derive(Clone, Debug)]
pub struct KernelFlannelBuilder {
    subnet: Subnet,
    vni: u32,
    vtep_mac: Option<EthernetAddress>,
    offloads: bool,
    subnet6: Option<Subnet6>,
    vtep_mac6: Option<EthernetAddress>,
}

impl KernelFlannelBuilder {
    /// The VNI (default 1); the device is `flannel.<vni>`.
    pub fn vni(mut self, vni: u32) -> Self {
        self.vni = vni;
        self
    }

    /// The VTEP MAC (default: [`vtep_mac_for`] the host's address; flanneld picks a random
    /// one).
    pub fn vtep_mac(mut self, mac: EthernetAddress) -> Self {
        self.vtep_mac = Some(mac);
        self
    }

    /// `false` turns tx checksumming off on `flannel.N` (and `flannel-v6.N`) and UDP-tunnel
    /// segmentation off on `eth0`, so the wire carries what a peer on another machine
    /// delivers; `true` (default) keeps the kernel's defaults.
    pub fn offloads(mut self, on: bool) -> Self {
        self.offloads = on;
        self
    }

    /// Makes the node dual stack with the IPv6 lease `subnet6`: flanneld's `EnableIPv6` half,
    /// `flannel-v6.<vni>` from the host's IPv6 address (the lab must be built with
    /// `.ipv6()`).
    pub fn ipv6(mut self, subnet6: Subnet6) -> Self {
        self.subnet6 = Some(subnet6);
        self
    }

    /// The IPv6 device's VTEP MAC (default: [`vtep_mac6_for`] the host's IPv6 address;
    /// flanneld picks a second random one).
    pub fn vtep_mac6(mut self, mac: EthernetAddress) -> Self {
        self.vtep_mac6 = Some(mac);
        self
    }

    /// Creates and configures `flannel.<vni>` in `host` (and `flannel-v6.<vni>` when dual
    /// stack).
    pub fn install(self, host: &Host) -> KernelFlannelNode {
        let mut node = KernelFlannelNode {
            ns: host.name().to_string(),
            iface: host.iface(),
            public_ip: host.addr(),
            subnet: self.subnet,
            vni: self.vni,
            vtep_mac: self.vtep_mac.unwrap_or_else(|| vtep_mac_for(host.addr())),
            mtu: host.mtu() - VXLAN_OVERHEAD,
            v6: None,
        };
        let dev = node.device();
        let ns = host.ns();
        // flanneld: netlink Vxlan{VxlanId, VtepDevIndex=ext iface, SrcAddr=ext addr,
        // Port=0 (so the kernel's 8472), Learning=false, random MAC}. v0.20.2 gives no MTU and
        // the kernel takes the underlay's minus 50; given here explicitly, the same value.
        ns.ip(&[
            "link",
            "add",
            &dev,
            "address",
            &node.vtep_mac.to_string(),
            "mtu",
            &node.mtu.to_string(),
            "type",
            "vxlan",
            "id",
            &node.vni.to_string(),
            "local",
            &node.public_ip.to_string(),
            "dev",
            node.iface,
            "dstport",
            &FLANNEL_VXLAN_PORT.to_string(),
            "nolearning",
        ]);
        // flanneld sets accept_ra=0 on the device and ignores failure (IPv6 may be off).
        let _ = ns.exec_unchecked(&[
            "sysctl",
            "-q",
            "-w",
            &format!("net/ipv6/conf/{dev}/accept_ra=0"),
        ]);
        // A /32 so no subnet or broadcast route appears; only a source for host traffic.
        ns.ip(&[
            "addr",
            "add",
            &format!("{}/32", node.subnet.addr()),
            "dev",
            &dev,
        ]);
        ns.ip(&["link", "set", &dev, "up"]);
        if let Some(subnet6) = self.subnet6 {
            let public_ip6 = host.addr6();
            let vtep_mac6 = self.vtep_mac6.unwrap_or_else(|| vtep_mac6_for(public_ip6));
            node.v6 = Some(install_v6(&node, host, subnet6, public_ip6, vtep_mac6));
        }
        if !self.offloads {
            node.set_offloads(false);
        }
        node
    }
}

/// flanneld's IPv6 half on `host`: `flannel-v6.<vni>` made as the IPv4 device is (the same
/// netlink call with the underlay's IPv6 address as its source), its /128 address, up.
fn install_v6(
    node: &KernelFlannelNode,
    host: &Host,
    subnet6: Subnet6,
    public_ip6: Ipv6Addr,
    vtep_mac6: EthernetAddress,
) -> KernelFlannelV6 {
    let dev6 = node.device6();
    let ns = host.ns();
    // flanneld: the same netlink Vxlan as for IPv4 but SrcAddr = the IPv6 ext address, named
    // flannel-v6.<VNI>, its own random MAC; no MTU given, so the kernel sets the underlay's
    // minus its IPv6 headroom (70); UDP_ZERO_CSUM6_TX and _RX sent as 0, the kernel's
    // defaults that iproute2 keeps by saying nothing (checksummed IPv6 UDP on send, zero
    // checksums refused on receive).
    ns.ip(&[
        "link",
        "add",
        &dev6,
        "address",
        &vtep_mac6.to_string(),
        "type",
        "vxlan",
        "id",
        &node.vni.to_string(),
        "local",
        &public_ip6.to_string(),
        "dev",
        node.iface,
        "dstport",
        &FLANNEL_VXLAN_PORT.to_string(),
        "nolearning",
    ]);
    let _ = ns.exec_unchecked(&[
        "sysctl",
        "-q",
        "-w",
        &format!("net/ipv6/conf/{dev6}/accept_ra=0"),
    ]);
    // ConfigureIPv6: the lease's network address as a /128 (no NODAD: the kernel runs
    // duplicate address detection, see `wait_ipv6_address`), then up.
    ns.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{}/128", subnet6.addr()),
        "dev",
        &dev6,
    ]);
    ns.ip(&["link", "set", &dev6, "up"]);
    let out = ns.ip(&["-j", "link", "show", "dev", &dev6]);
    let json: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("[netns {}] ip -j link show {dev6}: {e}: {out}", ns.name()));
    let mtu6 = json[0]["mtu"]
        .as_u64()
        .and_then(|m| u32::try_from(m).ok())
        .unwrap_or_else(|| panic!("[netns {}] {dev6} without an MTU: {out}", ns.name()));
    KernelFlannelV6 {
        public_ip6,
        subnet6,
        vtep_mac6,
        mtu6,
    }
}

/// The IPv6 half of a dual-stack [`KernelFlannelNode`].
#[derive(Clone, Debug)]
struct KernelFlannelV6 {
    public_ip6: Ipv6Addr,
    subnet6: Subnet6,
    vtep_mac6: EthernetAddress,
    mtu6: u32,
}

/// A host whose overlay is Linux's own VXLAN device set up exactly as flanneld's vxlan
/// backend does it: the reference peer weft must interoperate with.
#[derive(Clone, Debug)]
pub struct KernelFlannelNode {
    ns: String,
    iface: &'static str,
    public_ip: Ipv4Addr,
    subnet: Subnet,
    vni: u32,
    vtep_mac: EthernetAddress,
    mtu: u32,
    v6: Option<KernelFlannelV6>,
}

impl KernelFlannelNode {
    /// Starts describing a node that owns the lease `subnet`.
    pub fn builder(subnet: Subnet) -> KernelFlannelBuilder {
        KernelFlannelBuilder {
            subnet,
            vni: 1,
            vtep_mac: None,
            offloads: true,
            subnet6: None,
            vtep_mac6: None,
        }
    }

    /// Installs a node with flannel's defaults on `host` for the lease `subnet`.
    pub fn install(host: &Host, subnet: Subnet) -> KernelFlannelNode {
        KernelFlannelNode::builder(subnet).install(host)
    }

    /// The VXLAN device's name: `flannel.<vni>`.
    pub fn device(&self) -> String {
        format!("flannel.{}", self.vni)
    }

    /// The namespace the node lives in.
    pub fn netns(&self) -> &str {
        &self.ns
    }

    /// Its PublicIP (the host's underlay address).
    pub fn public_ip(&self) -> Ipv4Addr {
        self.public_ip
    }

    /// Its lease.
    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    /// Its VNI.
    pub fn vni(&self) -> u32 {
        self.vni
    }

    /// Its VTEP MAC.
    pub fn vtep_mac(&self) -> EthernetAddress {
        self.vtep_mac
    }

    /// The VXLAN device's MTU (underlay MTU - 50).
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// Whether the node is dual stack (built with [`KernelFlannelBuilder::ipv6`]).
    pub fn is_dual_stack(&self) -> bool {
        self.v6.is_some()
    }

    fn v6(&self) -> &KernelFlannelV6 {
        self.v6
            .as_ref()
            .unwrap_or_else(|| panic!("{}: not a dual-stack kernel node", self.ns))
    }

    /// The IPv6 VXLAN device's name: `flannel-v6.<vni>`.
    pub fn device6(&self) -> String {
        format!("flannel-v6.{}", self.vni)
    }

    /// Its PublicIPv6 (the host's underlay IPv6 address); panics unless dual stack.
    pub fn public_ip6(&self) -> Ipv6Addr {
        self.v6().public_ip6
    }

    /// Its IPv6 lease; panics unless dual stack.
    pub fn subnet6(&self) -> Subnet6 {
        self.v6().subnet6
    }

    /// The IPv6 device's VTEP MAC (BackendV6Data's); panics unless dual stack.
    pub fn vtep_mac6(&self) -> EthernetAddress {
        self.v6().vtep_mac6
    }

    /// The IPv6 device's MTU as the kernel set it (underlay MTU - 70); panics unless dual
    /// stack.
    pub fn mtu6(&self) -> u32 {
        self.v6().mtu6
    }

    /// Waits until the kernel's duplicate address detection has finished for the address
    /// on `flannel-v6.N` (flanneld does not wait; only traffic the host itself sources
    /// through the device needs it) and returns whether it did within `timeout`.
    pub fn wait_ipv6_address(&self, timeout: Duration) -> bool {
        let dev6 = self.device6();
        let cidr = format!("{}/128", self.subnet6().addr());
        wait_until(timeout, || {
            let all = ip_in(&self.ns, &["-6", "addr", "show", "dev", &dev6]);
            let tentative = ip_in(&self.ns, &["-6", "addr", "show", "dev", &dev6, "tentative"]);
            all.contains(&cidr) && !tentative.contains(&cidr)
        })
        .is_some()
    }

    /// flannel's lease record for this node, byte for byte as flanneld writes it to etcd
    /// (with `PublicIPv6` and `BackendV6Data` when dual stack).
    pub fn lease_json(&self) -> String {
        match &self.v6 {
            None => lease_json(self.public_ip, self.vni, self.vtep_mac),
            Some(v6) => lease_json_dual(
                (self.public_ip, self.vtep_mac),
                (v6.public_ip6, v6.vtep_mac6),
                self.vni,
            ),
        }
    }

    /// The etcd key of this node's lease under `prefix` (e.g. `/coreos.com/network`):
    /// `.../subnets/10.1.2.0-24`, or `.../subnets/10.1.2.0-24&fd10:0:0:2::-64` when dual
    /// stack.
    pub fn lease_key(&self, prefix: &str) -> String {
        match &self.v6 {
            None => format!("{prefix}/subnets/{}", self.subnet.key_string()),
            Some(v6) => format!(
                "{prefix}/subnets/{}&{}",
                self.subnet.key_string(),
                v6.subnet6.key_string()
            ),
        }
    }

    /// Writes this node's lease into `etcd` as flanneld's AcquireLease does: its record at
    /// its key under [`PREFIX`], attached to an etcd lease of `ttl_secs`.
    pub fn publish(&self, etcd: &Etcd, ttl_secs: u32) {
        etcd.put_with_ttl(&self.lease_key(PREFIX), &self.lease_json(), ttl_secs);
    }

    /// What flanneld's vxlan backend does with a lease it sees in etcd (`key` below
    /// `/subnets/`, e.g. `10.1.2.0-24&fd10:0:0:2::-64`, and its record): the IPv4 half, and
    /// the IPv6 half when the lease has an IPv6 subnet and this node is dual stack. Panics
    /// on a key or record flanneld would not accept.
    pub fn apply_lease(&self, key: &str, record: &str) {
        let (k4, k6) = match key.split_once('&') {
            Some((a, b)) => (a, Some(b)),
            None => (key, None),
        };
        let subnet = Subnet::from_key_str(k4).unwrap_or_else(|e| panic!("key {key}: {e}"));
        let r: serde_json::Value =
            serde_json::from_str(record).unwrap_or_else(|e| panic!("record {record}: {e}"));
        assert_eq!(r["BackendType"], "vxlan", "record {record}");
        let mac = |data: &str| -> EthernetAddress {
            r[data]["VtepMAC"]
                .as_str()
                .and_then(|m| m.parse().ok())
                .unwrap_or_else(|| panic!("record {record}: no {data}.VtepMAC"))
        };
        let public_ip: Ipv4Addr = r["PublicIP"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("record {record}: no PublicIP"));
        self.add_peer(subnet, public_ip, mac("BackendData"));
        if let (Some(k6), true) = (k6, self.is_dual_stack()) {
            let subnet6 = Subnet6::from_key_str(k6).unwrap_or_else(|e| panic!("key {key}: {e}"));
            let public_ip6: Ipv6Addr = r["PublicIPv6"]
                .as_str()
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("record {record}: no PublicIPv6"));
            self.add_peer6(subnet6, public_ip6, mac("BackendV6Data"));
        }
    }

    /// What flanneld does when a remote lease appears: a permanent neighbour (the remote
    /// subnet's network IP -> its VtepMAC), a permanent FDB entry (VtepMAC -> PublicIP) and an
    /// onlink route (remote subnet via its network IP on `flannel.N`), in that order.
    pub fn add_peer(&self, subnet: Subnet, public_ip: Ipv4Addr, vtep_mac: EthernetAddress) {
        let dev = self.device();
        let (net, mac) = (subnet.addr().to_string(), vtep_mac.to_string());
        // netlink NeighSet (create or replace), NUD_PERMANENT.
        ip_in(
            &self.ns,
            &[
                "neigh",
                "replace",
                &net,
                "lladdr",
                &mac,
                "dev",
                &dev,
                "nud",
                "permanent",
            ],
        );
        // netlink NeighSet with AF_BRIDGE, NTF_SELF, NUD_PERMANENT: a replace, not an append.
        bridge_in(
            &self.ns,
            &[
                "fdb",
                "replace",
                &mac,
                "dev",
                &dev,
                "dst",
                &public_ip.to_string(),
                "self",
                "permanent",
            ],
        );
        // netlink RouteReplace, scope universe, RTNH_F_ONLINK; last, so the kernel never ARPs.
        ip_in(
            &self.ns,
            &[
                "route",
                "replace",
                &subnet.to_string(),
                "via",
                &net,
                "dev",
                &dev,
                "onlink",
            ],
        );
    }

    /// What flanneld does when a remote lease goes: deletes the neighbour, the FDB entry and
    /// the route (each attempted even if another fails; panics afterwards if any failed).
    pub fn remove_peer(&self, subnet: Subnet, public_ip: Ipv4Addr, vtep_mac: EthernetAddress) {
        let dev = self.device();
        let (net, mac, pip) = (
            subnet.addr().to_string(),
            vtep_mac.to_string(),
            public_ip.to_string(),
        );
        let prefix = subnet.to_string();
        let ns = self.ns.as_str();
        let cmds: [Vec<&str>; 3] = [
            vec!["ip", "-n", ns, "neigh", "del", &net, "dev", &dev],
            vec![
                "bridge", "-n", ns, "fdb", "del", &mac, "dev", &dev, "dst", &pip, "self",
            ],
            vec![
                "ip", "-n", ns, "route", "del", &prefix, "via", &net, "dev", &dev, "onlink",
            ],
        ];
        let failures: Vec<String> = cmds
            .iter()
            .map(|c| (c, run_unchecked(c, EXEC_TIMEOUT)))
            .filter(|(_, o)| !o.status.success())
            .map(|(c, o)| describe(&c.join(" "), &o))
            .collect();
        assert!(failures.is_empty(), "remove_peer: {}", failures.join("\n"));
    }

    /// The IPv6 half of [`KernelFlannelNode::add_peer`], as flanneld does it for a remote
    /// dual-stack lease: a permanent neighbour (the remote IPv6 subnet's network address ->
    /// its v6 VtepMAC), a permanent FDB entry (v6 VtepMAC -> PublicIPv6) and an onlink route
    /// on `flannel-v6.N`, in that order. Panics unless dual stack.
    pub fn add_peer6(&self, subnet6: Subnet6, public_ip6: Ipv6Addr, vtep_mac6: EthernetAddress) {
        let dev6 = self.device6();
        let _ = self.v6();
        let (net, mac) = (subnet6.addr().to_string(), vtep_mac6.to_string());
        // AddV6ARP: netlink NeighSet, NUD_PERMANENT, RTN_UNICAST.
        ip_in(
            &self.ns,
            &[
                "-6",
                "neigh",
                "replace",
                &net,
                "lladdr",
                &mac,
                "dev",
                &dev6,
                "nud",
                "permanent",
            ],
        );
        // AddV6FDB: netlink NeighSet with AF_BRIDGE, NTF_SELF, NUD_PERMANENT, IPv6 dst.
        bridge_in(
            &self.ns,
            &[
                "fdb",
                "replace",
                &mac,
                "dev",
                &dev6,
                "dst",
                &public_ip6.to_string(),
                "self",
                "permanent",
            ],
        );
        // v6VxlanRoute: RouteReplace, scope universe, RTNH_F_ONLINK; last.
        ip_in(
            &self.ns,
            &[
                "-6",
                "route",
                "replace",
                &subnet6.to_string(),
                "via",
                &net,
                "dev",
                &dev6,
                "onlink",
            ],
        );
    }

    /// The IPv6 half of [`KernelFlannelNode::remove_peer`]: deletes the neighbour, the FDB
    /// entry and the route on `flannel-v6.N` (each attempted even if another fails; panics
    /// afterwards if any failed).
    pub fn remove_peer6(&self, subnet6: Subnet6, public_ip6: Ipv6Addr, vtep_mac6: EthernetAddress) {
        let dev6 = self.device6();
        let (net, mac, pip) = (
            subnet6.addr().to_string(),
            vtep_mac6.to_string(),
            public_ip6.to_string(),
        );
        let prefix = subnet6.to_string();
        let ns = self.ns.as_str();
        let cmds: [Vec<&str>; 3] = [
            vec!["ip", "-n", ns, "-6", "neigh", "del", &net, "dev", &dev6],
            vec![
                "bridge", "-n", ns, "fdb", "del", &mac, "dev", &dev6, "dst", &pip, "self",
            ],
            vec![
                "ip", "-n", ns, "-6", "route", "del", &prefix, "via", &net, "dev", &dev6, "onlink",
            ],
        ];
        let failures: Vec<String> = cmds
            .iter()
            .map(|c| (c, run_unchecked(c, EXEC_TIMEOUT)))
            .filter(|(_, o)| !o.status.success())
            .map(|(c, o)| describe(&c.join(" "), &o))
            .collect();
        assert!(failures.is_empty(), "remove_peer6: {}", failures.join("\n"));
    }

    /// [`KernelFlannelNode::add_peer`] with another node's lease, and
    /// [`KernelFlannelNode::add_peer6`] when both are dual stack (flanneld sets up the IPv6
    /// half only for a lease with an IPv6 subnet, and only with its own IPv6 device).
    pub fn peer_with(&self, other: &KernelFlannelNode) {
        self.add_peer(other.subnet, other.public_ip, other.vtep_mac);
        if let (Some(_), Some(o6)) = (&self.v6, &other.v6) {
            self.add_peer6(o6.subnet6, o6.public_ip6, o6.vtep_mac6);
        }
    }

    /// [`KernelFlannelNode::remove_peer`] with another node's lease (and
    /// [`KernelFlannelNode::remove_peer6`] when both are dual stack).
    pub fn unpeer(&self, other: &KernelFlannelNode) {
        self.remove_peer(other.subnet, other.public_ip, other.vtep_mac);
        if let (Some(_), Some(o6)) = (&self.v6, &other.v6) {
            self.remove_peer6(o6.subnet6, o6.public_ip6, o6.vtep_mac6);
        }
    }

    /// Turns tx checksum offload on `flannel.N` (and `flannel-v6.N`) and UDP-tunnel
    /// segmentation on `eth0` on or off (DESIGN.md "Kernel VXLAN peers over veth").
    pub fn set_offloads(&self, on: bool) {
        let v = if on { "on" } else { "off" };
        let dev = self.device();
        let exec = |args: &[&str]| run(&netns_exec_argv(&self.ns, args));
        exec(&["ethtool", "-K", &dev, "tx", v]);
        if self.v6.is_some() {
            exec(&["ethtool", "-K", &self.device6(), "tx", v]);
        }
        exec(&[
            "ethtool",
            "-K",
            self.iface,
            "tx-udp_tnl-segmentation",
            v,
            "tx-udp_tnl-csum-segmentation",
            v,
        ]);
    }

    /// The neighbour, FDB and route lines on `flannel.N` that mention `subnet` or `mac`
    /// (empty when the peer is fully removed).
    pub fn peer_state(&self, subnet: Subnet, vtep_mac: EthernetAddress) -> Vec<String> {
        let dev = self.device();
        let (net, mac) = (subnet.addr().to_string(), vtep_mac.to_string());
        let mut lines = Vec::new();
        let neigh = ip_in(&self.ns, &["neigh", "show", "dev", &dev]);
        let fdb = bridge_in(&self.ns, &["fdb", "show", "dev", &dev]);
        let routes = ip_in(&self.ns, &["route", "show", "dev", &dev]);
        for l in neigh.lines() {
            if l.split_whitespace().next() == Some(net.as_str()) {
                lines.push(format!("neigh: {l}"));
            }
        }
        for l in fdb.lines() {
            if l.starts_with(&mac) {
                lines.push(format!("fdb: {l}"));
            }
        }
        for l in routes.lines() {
            if l.split_whitespace().next() == Some(subnet.to_string().as_str()) {
                lines.push(format!("route: {l}"));
            }
        }
        lines
    }

    /// The neighbour, FDB and route lines on `flannel-v6.N` that mention `subnet6` or `mac`
    /// (empty when the IPv6 half of the peer is fully removed).
    pub fn peer_state6(&self, subnet6: Subnet6, vtep_mac6: EthernetAddress) -> Vec<String> {
        let dev6 = self.device6();
        let (net, mac, prefix) = (
            subnet6.addr().to_string(),
            vtep_mac6.to_string(),
            subnet6.to_string(),
        );
        let neigh = ip_in(&self.ns, &["-6", "neigh", "show", "dev", &dev6]);
        let fdb = bridge_in(&self.ns, &["fdb", "show", "dev", &dev6]);
        let routes = ip_in(&self.ns, &["-6", "route", "show", "dev", &dev6]);
        let first_is = |l: &str, w: &str| l.split_whitespace().next() == Some(w);
        let mut lines = Vec::new();
        lines.extend(
            neigh
                .lines()
                .filter(|l| first_is(l, &net))
                .map(|l| format!("neigh: {l}")),
        );
        lines.extend(
            fdb.lines()
                .filter(|l| l.starts_with(&mac))
                .map(|l| format!("fdb: {l}")),
        );
        lines.extend(
            routes
                .lines()
                .filter(|l| first_is(l, &prefix))
                .map(|l| format!("route: {l}")),
        );
        lines
    }
}

/// flannel's vxlan lease record: `{"PublicIP":..,"PublicIPv6":null,"BackendType":"vxlan",
/// "BackendData":{"VNI":..,"VtepMAC":".."}}`, keys in flanneld's order.
pub fn lease_json(public_ip: Ipv4Addr, vni: u32, vtep_mac: EthernetAddress) -> String {
    format!(
        r#"{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":{vni},"VtepMAC":"{vtep_mac}"}}}}"#
    )
}

/// flannel's dual-stack vxlan lease record: `{"PublicIP":..,"PublicIPv6":"..",
/// "BackendType":"vxlan","BackendData":{"VNI":..,"VtepMAC":".."},"BackendV6Data":{"VNI":..,
/// "VtepMAC":".."}}` (LeaseAttrs' field order; the same VNI in both halves, each half its
/// device's MAC).
pub fn lease_json_dual(
    (public_ip, vtep_mac): (Ipv4Addr, EthernetAddress),
    (public_ip6, vtep_mac6): (Ipv6Addr, EthernetAddress),
    vni: u32,
) -> String {
    format!(
        r#"{{"PublicIP":"{public_ip}","PublicIPv6":"{public_ip6}","BackendType":"vxlan","BackendData":{{"VNI":{vni},"VtepMAC":"{vtep_mac}"}},"BackendV6Data":{{"VNI":{vni},"VtepMAC":"{vtep_mac6}"}}}}"#
    )
}

/// A stable, locally administered unicast VTEP MAC for the kernel node on `ip`:
/// `0e:77:66` and the address's last three octets (flanneld would pick a random one).
pub fn vtep_mac_for(ip: Ipv4Addr) -> EthernetAddress {
    let o = ip.octets();
    EthernetAddress([0x0e, 0x77, 0x66, o[1], o[2], o[3]])
}

/// A stable, locally administered unicast MAC for the IPv6 device of the kernel node on
/// `ip6`: `0e:77:76` and the address's last three octets (never equal to the IPv4 device's,
/// as flanneld's two random MACs differ).
pub fn vtep_mac6_for(ip6: Ipv6Addr) -> EthernetAddress {
    let o = ip6.octets();
    EthernetAddress([0x0e, 0x77, 0x76, o[13], o[14], o[15]])
}
