//! The lab topology: underlay segments (a namespace holding a bridge `br0`), hosts on them
//! with forwarding on and rp_filter off, pods behind a host's `cni0` bridge, an outside host
//! and a router to a second segment. A [`Lab`] is one value whose `Drop` deletes every
//! namespace in it, pods first, underlay last.

use std::net::Ipv4Addr;
use std::ops::Deref;

use weft::wire::Subnet;

use super::kernel_flannel::VXLAN_OVERHEAD;
use super::netns::{sweep_stale_labs, unique_prefix, Netns};

/// The first underlay segment, 192.168.64.0/24: hosts at .10, .11, ...; the outside host at
/// .200; the router at .1.
pub fn segment_a() -> Subnet {
    underlay(64)
}

/// The second underlay segment, 192.168.65.0/24, one router hop away from [`segment_a`].
pub fn segment_b() -> Subnet {
    underlay(65)
}

/// The underlay segment `192.168.<third>.0/24`.
fn underlay(third: u8) -> Subnet {
    Subnet::new(Ipv4Addr::new(192, 168, third, 0), 24).expect("a /24 network address")
}

/// Address number `n` of `subnet` (1 is a bridge's or a router's); panics past its end.
fn addr_in(subnet: Subnet, n: u32) -> Ipv4Addr {
    subnet
        .nth_addr(n)
        .unwrap_or_else(|| panic!("{subnet} has no address number {n}"))
}

/// `addr/len` for address number `n` of `subnet`, as `ip addr add` wants it.
fn cidr_in(subnet: Subnet, n: u32) -> String {
    format!("{}/{}", addr_in(subnet, n), subnet.prefix_len())
}

/// A pod in a host: its own namespace with `eth0` on the host's `cni0` bridge.
pub struct Pod {
    ns: Netns,
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
}

impl Pod {
    /// The pod's namespace.
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// The pod's address.
    pub fn addr(&self) -> Ipv4Addr {
        self.ip
    }

    /// Its default gateway (the host's `cni0` address).
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }
}

impl Deref for Pod {
    type Target = Netns;
    fn deref(&self) -> &Netns {
        &self.ns
    }
}

/// A host on an underlay segment: `eth0` joined to the segment's bridge, ip_forward on,
/// rp_filter off; pods are attached later with [`Host::add_pod`].
pub struct Host {
    pods: Vec<Pod>,
    ns: Netns,
    ip: Ipv4Addr,
    segment: Subnet,
    mtu: u32,
    pod_subnet: Option<Subnet>,
}

impl Host {
    /// The host's namespace.
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// Its underlay address (on `eth0`): flannel's PublicIP.
    pub fn addr(&self) -> Ipv4Addr {
        self.ip
    }

    /// The underlay interface's name.
    pub fn iface(&self) -> &'static str {
        "eth0"
    }

    /// The underlay segment it sits on.
    pub fn segment(&self) -> Subnet {
        self.segment
    }

    /// The underlay MTU.
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// The pod subnet given to the first [`Host::add_pod`], if any.
    pub fn pod_subnet(&self) -> Option<Subnet> {
        self.pod_subnet
    }

    /// Attaches a new pod on `subnet` with the overlay MTU (underlay MTU - 50).
    pub fn add_pod(&mut self, subnet: Subnet) -> &Pod {
        let mtu = self.mtu - VXLAN_OVERHEAD;
        self.add_pod_with_mtu(subnet, mtu)
    }

    /// Attaches a new pod: the first call creates `cni0` with `subnet`'s first address; pod
    /// `k` gets address number `k + 2` and a default route via `cni0`.
    pub fn add_pod_with_mtu(&mut self, subnet: Subnet, mtu: u32) -> &Pod {
        let gateway = addr_in(subnet, 1);
        match self.pod_subnet {
            None => {
                self.ns.ip(&["link", "add", "cni0", "type", "bridge"]);
                self.ns
                    .ip(&["addr", "add", &cidr_in(subnet, 1), "dev", "cni0"]);
                self.ns.ip(&["link", "set", "cni0", "up"]);
                self.pod_subnet = Some(subnet);
            }
            Some(s) => assert_eq!(
                s,
                subnet,
                "{}: pods of one host share one subnet",
                self.ns.name()
            ),
        }
        let k = self.pods.len();
        let ns = Netns::new(&format!("{}p{k}", self.ns.name()));
        let port = format!("veth{k}");
        veth_to_bridge(&ns, "eth0", &self.ns, &port, "cni0", mtu);
        let ip = addr_in(subnet, k as u32 + 2);
        ns.ip(&["addr", "add", &cidr_in(subnet, k as u32 + 2), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["route", "add", "default", "via", &gateway.to_string()]);
        self.pods.push(Pod { ns, ip, gateway });
        self.pods.last().expect("just pushed")
    }

    /// Pod number `k`.
    pub fn pod(&self, k: usize) -> &Pod {
        &self.pods[k]
    }

    /// All pods, in the order they were added.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }
}

impl Deref for Host {
    type Target = Netns;
    fn deref(&self) -> &Netns {
        &self.ns
    }
}

/// Describes a [`Lab`] before it is built.
#[derive(Clone, Debug)]
pub struct LabBuilder {
    hosts: usize,
    segment_b_hosts: usize,
    outside: bool,
    mtu: u32,
}

impl LabBuilder {
    /// Hosts on segment A (192.168.64.10, .11, ...).
    pub fn hosts(mut self, n: usize) -> Self {
        self.hosts = n;
        self
    }

    /// Adds an "outside" host (192.168.64.200) with no pods, for masquerade tests.
    pub fn outside(mut self) -> Self {
        self.outside = true;
        self
    }

    /// Adds segment B (192.168.65.0/24) behind a router (.1 on both segments) with `n` hosts
    /// (192.168.65.10, ...), indexed after segment A's hosts.
    pub fn segment_b(mut self, n: usize) -> Self {
        self.segment_b_hosts = n;
        self
    }

    /// The underlay MTU on every link (default 1500).
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = mtu;
        self
    }

    /// Creates every namespace and link; on a panic half way, what exists is deleted.
    pub fn build(self) -> Lab {
        let swept = sweep_stale_labs();
        if !swept.is_empty() {
            eprintln!("harness: deleted namespaces of dead test runs: {swept:?}");
        }
        let prefix = unique_prefix();
        let mut lab = Lab {
            hosts: Vec::new(),
            outside: None,
            router: None,
            segments: Vec::new(),
            prefix: prefix.clone(),
        };
        let a = segment_a();
        lab.segments
            .push(segment_ns(&format!("{prefix}u"), self.mtu));
        for i in 0..self.hosts {
            let name = format!("{prefix}h{i}");
            let ip = addr_in(a, 10 + i as u32);
            lab.hosts
                .push(host_ns(&name, &lab.segments[0], a, ip, self.mtu));
        }
        if self.outside {
            let ip = addr_in(a, 200);
            let name = format!("{prefix}o");
            lab.outside = Some(host_ns(&name, &lab.segments[0], a, ip, self.mtu));
        }
        if self.segment_b_hosts > 0 {
            self.add_segment_b(&mut lab);
        }
        lab
    }

    /// Segment B's bridge, the router between it and segment A, segment B's hosts, and the
    /// routes each segment's hosts need to reach the other.
    fn add_segment_b(&self, lab: &mut Lab) {
        let (a, b, prefix) = (segment_a(), segment_b(), lab.prefix.clone());
        lab.segments
            .push(segment_ns(&format!("{prefix}v"), self.mtu));
        let r = Netns::new(&format!("{prefix}r"));
        r.sysctl("net.ipv4.ip_forward", "1");
        for (seg_ns, seg, dev) in [(&lab.segments[0], a, "eth0"), (&lab.segments[1], b, "eth1")] {
            join_segment(&r, dev, seg_ns, "rtr", self.mtu);
            r.ip(&["addr", "add", &cidr_in(seg, 1), "dev", dev]);
            r.ip(&["link", "set", dev, "up"]);
        }
        lab.router = Some(r);
        for j in 0..self.segment_b_hosts {
            let name = format!("{prefix}h{}", self.hosts + j);
            let ip = addr_in(b, 10 + j as u32);
            let h = host_ns(&name, &lab.segments[1], b, ip, self.mtu);
            h.ip(&[
                "route",
                "add",
                &a.to_string(),
                "via",
                &addr_in(b, 1).to_string(),
            ]);
            lab.hosts.push(h);
        }
        let via = addr_in(a, 1).to_string();
        for h in lab.hosts.iter().chain(lab.outside.iter()) {
            if h.segment == a {
                h.ip(&["route", "add", &b.to_string(), "via", &via]);
            }
        }
    }
}

/// An underlay segment: a namespace holding the bridge `br0`.
fn segment_ns(name: &str, mtu: u32) -> Netns {
    let ns = Netns::new(name);
    ns.ip(&[
        "link",
        "add",
        "br0",
        "mtu",
        &mtu.to_string(),
        "type",
        "bridge",
    ]);
    ns.ip(&["link", "set", "br0", "up"]);
    ns
}

/// Creates `dev` in `ns` as a veth of `mtu` whose peer `port` lives in `peer_ns`, enslaved to
/// its bridge `bridge` and up.
fn veth_to_bridge(ns: &Netns, dev: &str, peer_ns: &Netns, port: &str, bridge: &str, mtu: u32) {
    let mtu = mtu.to_string();
    ns.ip(&[
        "link",
        "add",
        dev,
        "mtu",
        &mtu,
        "type",
        "veth",
        "peer",
        "name",
        port,
        "mtu",
        &mtu,
        "netns",
        peer_ns.name(),
    ]);
    peer_ns.ip(&["link", "set", port, "master", bridge, "up"]);
}

/// Creates `dev` in `ns` as a veth whose peer is a port of `segment`'s `br0`, named
/// `<port>` there plus a short suffix from `ns`'s name so ports never clash.
fn join_segment(ns: &Netns, dev: &str, segment: &Netns, port: &str, mtu: u32) {
    let tail: String = ns
        .name()
        .rsplit('-')
        .next()
        .unwrap_or("x")
        .chars()
        .take(8)
        .collect();
    let port = format!("{port}{tail}");
    veth_to_bridge(ns, dev, segment, &port, "br0", mtu);
}

/// A host namespace on a segment: forwarding on, rp_filter off, `eth0` at `ip`.
fn host_ns(name: &str, segment: &Netns, seg: Subnet, ip: Ipv4Addr, mtu: u32) -> Host {
    let ns = Netns::new(name);
    // Before any interface exists, so new ones inherit "default".
    for key in [
        "net.ipv4.conf.all.rp_filter",
        "net.ipv4.conf.default.rp_filter",
    ] {
        ns.sysctl(key, "0");
    }
    ns.sysctl("net.ipv4.ip_forward", "1");
    join_segment(&ns, "eth0", segment, "p", mtu);
    ns.ip(&[
        "addr",
        "add",
        &format!("{ip}/{}", seg.prefix_len()),
        "dev",
        "eth0",
    ]);
    ns.ip(&["link", "set", "eth0", "up"]);
    Host {
        pods: Vec::new(),
        ns,
        ip,
        segment: seg,
        mtu,
        pod_subnet: None,
    }
}

/// A topology of namespaces (see DESIGN.md "Tests: real parts"); dropping it stops every
/// process in it and deletes every namespace, pods first, underlay last.
pub struct Lab {
    // Field order is drop order.
    hosts: Vec<Host>,
    outside: Option<Host>,
    router: Option<Netns>,
    segments: Vec<Netns>,
    prefix: String,
}

impl Lab {
    /// A builder: `Lab::builder().hosts(2).outside().build()`.
    pub fn builder() -> LabBuilder {
        LabBuilder {
            hosts: 2,
            segment_b_hosts: 0,
            outside: false,
            mtu: 1500,
        }
    }

    /// The pod subnet the tests use for host `i` when nothing else picks one: 10.1.(i+1).0/24.
    pub fn default_pod_subnet(i: usize) -> Subnet {
        Subnet::new(Ipv4Addr::new(10, 1, i as u8 + 1, 0), 24).expect("a /24 network address")
    }

    /// The prefix every namespace name of this lab starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Host `i` (segment A first, then segment B).
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// Host `i`, to add pods.
    pub fn host_mut(&mut self, i: usize) -> &mut Host {
        &mut self.hosts[i]
    }

    /// All hosts.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The outside host; panics unless the builder asked for it.
    pub fn outside(&self) -> &Host {
        self.outside.as_ref().expect("lab built without .outside()")
    }

    /// The router between the segments; panics unless the builder asked for segment B.
    pub fn router(&self) -> &Netns {
        self.router
            .as_ref()
            .expect("lab built without .segment_b(n)")
    }

    /// Segment `i`'s namespace (holding `br0`): 0 is A, 1 is B.
    pub fn segment(&self, i: usize) -> &Netns {
        &self.segments[i]
    }

    /// Names of every namespace in the lab.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = Vec::new();
        for h in self.hosts.iter().chain(self.outside.iter()) {
            v.push(h.ns.name().to_string());
            v.extend(h.pods.iter().map(|p| p.ns.name().to_string()));
        }
        v.extend(self.router.iter().map(|r| r.name().to_string()));
        v.extend(self.segments.iter().map(|s| s.name().to_string()));
        v
    }

    /// Sets the MTU of every underlay link while the lab runs, as an operator lowering the
    /// path MTU would: each host's and the router's veths, and every port of every segment
    /// bridge (the bridge follows its ports), so the whole path carries at most `mtu`.
    /// Pods and overlay devices are left alone.
    pub fn set_underlay_mtu(&self, mtu: u32) {
        let m = mtu.to_string();
        for seg in &self.segments {
            let ports = seg.ip(&["-o", "link", "show", "master", "br0"]);
            for line in ports.lines() {
                // "5: pabc@if2: <...> mtu 1500 ..." -> "pabc"
                let Some(name) = line.split(':').nth(1) else {
                    continue;
                };
                let name = name.trim().split('@').next().unwrap_or_default();
                if !name.is_empty() {
                    seg.ip(&["link", "set", name, "mtu", &m]);
                }
            }
            seg.ip(&["link", "set", "br0", "mtu", &m]);
        }
        for h in self.hosts.iter().chain(self.outside.iter()) {
            h.ns.ip(&["link", "set", "eth0", "mtu", &m]);
        }
        if let Some(r) = &self.router {
            for dev in ["eth0", "eth1"] {
                r.ip(&["link", "set", dev, "mtu", &m]);
            }
        }
    }
}
