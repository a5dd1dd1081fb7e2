//! A host whose overlay is Linux's own VXLAN device, set up exactly as flanneld's vxlan
//! backend sets it up (device, neighbour, FDB entry and route per peer), and flannel's lease
//! record for it: the reference peer weft must interoperate with. Deliberately written from
//! flannel's behaviour rather than from weft's code, so the two can disagree.

use std::net::Ipv4Addr;

use weft::wire::{EthernetAddress, Subnet};

use super::lab::Host;
use super::netns::{bridge_in, ip_in, netns_exec_argv};
use super::process::{describe, run, run_unchecked, EXEC_TIMEOUT};

/// Linux's default VXLAN UDP port, which flannel's vxlan backend keeps (not IANA's 4789).
pub const FLANNEL_VXLAN_PORT: u16 = 8472;

/// Bytes a VXLAN encapsulation adds over IPv4: outer IPv4 20 + UDP 8 + VXLAN 8 + Ethernet 14.
pub const VXLAN_OVERHEAD: u32 = 50;

/// How to set up a [`KernelFlannelNode`]; defaults are flannel's.
#[derive(Clone, Debug)]
pub struct KernelFlannelBuilder {
    subnet: Subnet,
    vni: u32,
    vtep_mac: Option<EthernetAddress>,
    offloads: bool,
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

    /// `false` turns tx checksumming off on `flannel.N` and UDP-tunnel segmentation off on
    /// `eth0`, so the wire carries what a peer on another machine delivers; `true` (default)
    /// keeps the kernel's defaults.
    pub fn offloads(mut self, on: bool) -> Self {
        self.offloads = on;
        self
    }

    /// Creates and configures `flannel.<vni>` in `host`.
    pub fn install(self, host: &Host) -> KernelFlannelNode {
        let node = KernelFlannelNode {
            ns: host.name().to_string(),
            iface: host.iface(),
            public_ip: host.addr(),
            subnet: self.subnet,
            vni: self.vni,
            vtep_mac: self.vtep_mac.unwrap_or_else(|| vtep_mac_for(host.addr())),
            mtu: host.mtu() - VXLAN_OVERHEAD,
        };
        let dev = node.device();
        let ns = host.ns();
        // flanneld: netlink Vxlan{VxlanId, VtepDevIndex=ext iface, SrcAddr=ext addr,
        // Port=0 (so the kernel's 8472), Learning=false, MTU=ext MTU-50, random MAC}.
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
        if !self.offloads {
            node.set_offloads(false);
        }
        node
    }
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
}

impl KernelFlannelNode {
    /// Starts describing a node that owns the lease `subnet`.
    pub fn builder(subnet: Subnet) -> KernelFlannelBuilder {
        KernelFlannelBuilder {
            subnet,
            vni: 1,
            vtep_mac: None,
            offloads: true,
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

    /// flannel's lease record for this node, byte for byte as flanneld writes it to etcd.
    pub fn lease_json(&self) -> String {
        lease_json(self.public_ip, self.vni, self.vtep_mac)
    }

    /// The etcd key of this node's lease under `prefix` (e.g. `/coreos.com/network`).
    pub fn lease_key(&self, prefix: &str) -> String {
        format!("{prefix}/subnets/{}", self.subnet.key_string())
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

    /// [`KernelFlannelNode::add_peer`] with another node's lease.
    pub fn peer_with(&self, other: &KernelFlannelNode) {
        self.add_peer(other.subnet, other.public_ip, other.vtep_mac);
    }

    /// [`KernelFlannelNode::remove_peer`] with another node's lease.
    pub fn unpeer(&self, other: &KernelFlannelNode) {
        self.remove_peer(other.subnet, other.public_ip, other.vtep_mac);
    }

    /// Turns tx checksum offload on `flannel.N` and UDP-tunnel segmentation on `eth0` on or
    /// off (DESIGN.md "Kernel VXLAN peers over veth").
    pub fn set_offloads(&self, on: bool) {
        let v = if on { "on" } else { "off" };
        let dev = self.device();
        let exec = |args: &[&str]| run(&netns_exec_argv(&self.ns, args));
        exec(&["ethtool", "-K", &dev, "tx", v]);
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
}

/// flannel's vxlan lease record: `{"PublicIP":..,"PublicIPv6":null,"BackendType":"vxlan",
/// "BackendData":{"VNI":..,"VtepMAC":".."}}`, keys in flanneld's order.
pub fn lease_json(public_ip: Ipv4Addr, vni: u32, vtep_mac: EthernetAddress) -> String {
    format!(
        r#"{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":{vni},"VtepMAC":"{vtep_mac}"}}}}"#
    )
}

/// A stable, locally administered unicast VTEP MAC for the kernel node on `ip`:
/// `0e:77:66` and the address's last three octets (flanneld would pick a random one).
pub fn vtep_mac_for(ip: Ipv4Addr) -> EthernetAddress {
    let o = ip.octets();
    EthernetAddress([0x0e, 0x77, 0x66, o[1], o[2], o[3]])
}
