//! The lab topology: underlay segments (a namespace holding a bridge `br0`), hosts on them
//! with forwarding on and rp_filter off, pods behind a host's `cni0` bridge, an outside host
//! and a router to a second segment. A lab built with [`LabBuilder::ipv6`] is dual stack:
//! every underlay link has an IPv6 address too, hosts and the router forward IPv6, and pods
//! added with [`Host::add_dual_pod`] get an IPv6 address and default route. A [`Lab`] is one
//! value whose `Drop` deletes every namespace in it, pods first, underlay last.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Deref;

use weft::wire::{Subnet, Subnet6};

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

/// The first underlay segment's IPv6 half, fd77::/64: hosts at the same address number as
/// their IPv4 address (`fd77::a` beside 192.168.64.10), the router at `fd77::1`.
pub fn segment6_a() -> Subnet6 {
    underlay6(0)
}

/// The second underlay segment's IPv6 half, fd77:0:0:1::/64.
pub fn segment6_b() -> Subnet6 {
    underlay6(1)
}

/// The IPv6 underlay segment `fd77:0:0:<n>::/64`.
fn underlay6(n: u16) -> Subnet6 {
    Subnet6::new(Ipv6Addr::new(0xfd77, 0, 0, n, 0, 0, 0, 0), 64).expect("a /64 network address")
}

/// Address number `n` of the IPv6 `subnet`; panics past its end.
fn addr6_in(subnet: Subnet6, n: u32) -> Ipv6Addr {
    subnet
        .nth_addr(u128::from(n))
        .unwrap_or_else(|| panic!("{subnet} has no address number {n}"))
}

/// `addr/len` for address number `n` of the IPv6 `subnet`, as `ip addr add` wants it.
fn cidr6_in(subnet: Subnet6, n: u32) -> String {
    format!("{}/{}", addr6_in(subnet, n), subnet.prefix_len())
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
    ip6: Option<Ipv6Addr>,
    gateway6: Option<Ipv6Addr>,
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

    /// The pod's IPv6 address; panics for a pod added without one ([`Host::add_dual_pod`]
    /// gives one).
    pub fn addr6(&self) -> Ipv6Addr {
        self.ip6
            .unwrap_or_else(|| panic!("pod {} has no IPv6 address", self.ns.name()))
    }

    /// Its IPv6 default gateway (the host's `cni0` IPv6 address), if it has IPv6.
    pub fn gateway6(&self) -> Option<Ipv6Addr> {
        self.gateway6
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
    ip6: Option<Ipv6Addr>,
    mtu: u32,
    pod_subnet: Option<Subnet>,
    pod_subnet6: Option<Subnet6>,
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

    /// Its underlay IPv6 address (on `eth0`): flannel's PublicIPv6; panics unless the lab was
    /// built with [`LabBuilder::ipv6`].
    pub fn addr6(&self) -> Ipv6Addr {
        self.ip6
            .unwrap_or_else(|| panic!("{}: lab built without .ipv6()", self.ns.name()))
    }

    /// Whether the host has an IPv6 underlay address.
    pub fn has_ipv6(&self) -> bool {
        self.ip6.is_some()
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

    /// The IPv6 pod subnet given to the first [`Host::add_dual_pod`], if any.
    pub fn pod_subnet6(&self) -> Option<Subnet6> {
        self.pod_subnet6
    }

    /// Attaches a new pod on `subnet` with the overlay MTU (underlay MTU - 50).
    pub fn add_pod(&mut self, subnet: Subnet) -> &Pod {
        let mtu = self.mtu - VXLAN_OVERHEAD;
        self.add_pod_with_mtu(subnet, mtu)
    }

    /// Attaches a new pod: the first call creates `cni0` with `subnet`'s first address; pod
    /// `k` gets address number `k + 2` and a default route via `cni0`.
    pub fn add_pod_with_mtu(&mut self, subnet: Subnet, mtu: u32) -> &Pod {
        self.attach_pod(subnet, None, mtu)
    }

    /// Attaches a new dual-stack pod on `subnet` and `subnet6` with flannel's MTU for both
    /// families (underlay MTU - 50, FLANNEL_MTU; the kernel's `flannel-v6.N` is 20 bytes
    /// smaller, and IPv6 path MTU discovery covers the difference).
    pub fn add_dual_pod(&mut self, subnet: Subnet, subnet6: Subnet6) -> &Pod {
        let mtu = self.mtu - VXLAN_OVERHEAD;
        self.add_dual_pod_with_mtu(subnet, subnet6, mtu)
    }

    /// [`Host::add_pod_with_mtu`] with an IPv6 half: `cni0` also gets `subnet6`'s `::1`,
    /// pod `k` its address number `k + 2` and an IPv6 default route via `cni0`. Needs a lab
    /// built with [`LabBuilder::ipv6`] (the host forwards IPv6).
    pub fn add_dual_pod_with_mtu(&mut self, subnet: Subnet, subnet6: Subnet6, mtu: u32) -> &Pod {
        assert!(
            self.has_ipv6(),
            "{}: IPv6 pods need a lab built with .ipv6()",
            self.ns.name()
        );
        self.attach_pod(subnet, Some(subnet6), mtu)
    }

    /// Creates `cni0` on the first call (with `subnet`'s and `subnet6`'s first addresses) and
    /// pod number `k` with address number `k + 2` of each, and default routes via `cni0`.
    fn attach_pod(&mut self, subnet: Subnet, subnet6: Option<Subnet6>, mtu: u32) -> &Pod {
        let gateway = addr_in(subnet, 1);
        let gateway6 = subnet6.map(|s| addr6_in(s, 1));
        match self.pod_subnet {
            None => {
                self.ns.ip(&["link", "add", "cni0", "type", "bridge"]);
                self.ns
                    .ip(&["addr", "add", &cidr_in(subnet, 1), "dev", "cni0"]);
                if let Some(s6) = subnet6 {
                    self.ns.ip(&[
                        "-6",
                        "addr",
                        "add",
                        &cidr6_in(s6, 1),
                        "dev",
                        "cni0",
                        "nodad",
                    ]);
                }
                self.ns.ip(&["link", "set", "cni0", "up"]);
                self.pod_subnet = Some(subnet);
                self.pod_subnet6 = subnet6;
            }
            Some(s) => assert_eq!(
                (s, self.pod_subnet6),
                (subnet, subnet6),
                "{}: pods of one host share one subnet (and one IPv6 subnet, or none)",
                self.ns.name()
            ),
        }
        let k = self.pods.len();
        let n = k as u32 + 2;
        let ns = Netns::new(&format!("{}p{k}", self.ns.name()));
        let port = format!("veth{k}");
        veth_to_bridge(&ns, "eth0", &self.ns, &port, "cni0", mtu);
        let ip = addr_in(subnet, n);
        ns.ip(&["addr", "add", &cidr_in(subnet, n), "dev", "eth0"]);
        let ip6 = subnet6.map(|s6| {
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &cidr6_in(s6, n),
                "dev",
                "eth0",
                "nodad",
            ]);
            addr6_in(s6, n)
        });
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&["route", "add", "default", "via", &gateway.to_string()]);
        if let Some(gw6) = gateway6 {
            ns.ip(&["-6", "route", "add", "default", "via", &gw6.to_string()]);
        }
        self.pods.push(Pod {
            ns,
            ip,
            gateway,
            ip6,
            gateway6,
        });
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
    ipv6: bool,
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

    /// Makes the underlay dual stack: every host, the outside host and the router also get
    /// an IPv6 address (without duplicate address detection, so usable at once) on
    /// [`segment6_a`] (`fd77::a` for 192.168.64.10) or [`segment6_b`], and IPv6 forwarding
    /// is on in hosts and the router.
    pub fn ipv6(mut self) -> Self {
        self.ipv6 = true;
        self
    }

    /// The IPv6 address (and segment) of address number `n` on segment `seg`, if dual stack.
    fn v6(&self, seg: Subnet6, n: u32) -> Option<(Subnet6, Ipv6Addr)> {
        self.ipv6.then(|| (seg, addr6_in(seg, n)))
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
            let n = 10 + i as u32;
            let v6 = self.v6(segment6_a(), n);
            lab.hosts.push(host_ns(
                &name,
                &lab.segments[0],
                (a, addr_in(a, n)),
                v6,
                self.mtu,
            ));
        }
        if self.outside {
            let (ip, v6) = (addr_in(a, 200), self.v6(segment6_a(), 200));
            let name = format!("{prefix}o");
            lab.outside = Some(host_ns(&name, &lab.segments[0], (a, ip), v6, self.mtu));
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
        let (a6, b6) = (segment6_a(), segment6_b());
        let r = Netns::new(&format!("{prefix}r"));
        r.sysctl("net.ipv4.ip_forward", "1");
        if self.ipv6 {
            r.sysctl("net.ipv6.conf.all.forwarding", "1");
        }
        let sides = [
            (&lab.segments[0], a, a6, "eth0"),
            (&lab.segments[1], b, b6, "eth1"),
        ];
        for (seg_ns, seg, seg6, dev) in sides {
            join_segment(&r, dev, seg_ns, "rtr", self.mtu);
            r.ip(&["addr", "add", &cidr_in(seg, 1), "dev", dev]);
            if self.ipv6 {
                r.ip(&["-6", "addr", "add", &cidr6_in(seg6, 1), "dev", dev, "nodad"]);
            }
            r.ip(&["link", "set", dev, "up"]);
        }
        lab.router = Some(r);
        for j in 0..self.segment_b_hosts {
            let name = format!("{prefix}h{}", self.hosts + j);
            let n = 10 + j as u32;
            let v6 = self.v6(b6, n);
            let h = host_ns(&name, &lab.segments[1], (b, addr_in(b, n)), v6, self.mtu);
            h.ip(&[
                "route",
                "add",
                &a.to_string(),
                "via",
                &addr_in(b, 1).to_string(),
            ]);
            if self.ipv6 {
                let via6 = addr6_in(b6, 1).to_string();
                h.ip(&["-6", "route", "add", &a6.to_string(), "via", &via6]);
            }
            lab.hosts.push(h);
        }
        let (via, via6) = (addr_in(a, 1).to_string(), addr6_in(a6, 1).to_string());
        for h in lab.hosts.iter().chain(lab.outside.iter()) {
            if h.segment == a {
                h.ip(&["route", "add", &b.to_string(), "via", &via]);
                if self.ipv6 {
                    h.ip(&["-6", "route", "add", &b6.to_string(), "via", &via6]);
                }
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

/// A host namespace on a segment: forwarding on, rp_filter off, `eth0` at `ip` on `seg`
/// and, for a dual-stack lab, at `v6`'s address too (IPv6 forwarding on as well).
fn host_ns(
    name: &str,
    segment: &Netns,
    (seg, ip): (Subnet, Ipv4Addr),
    v6: Option<(Subnet6, Ipv6Addr)>,
    mtu: u32,
) -> Host {
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
    if let Some((seg6, ip6)) = v6 {
        ns.sysctl("net.ipv6.conf.all.forwarding", "1");
        let cidr = format!("{ip6}/{}", seg6.prefix_len());
        ns.ip(&["-6", "addr", "add", &cidr, "dev", "eth0", "nodad"]);
    }
    ns.ip(&["link", "set", "eth0", "up"]);
    Host {
        pods: Vec::new(),
        ns,
        ip,
        segment: seg,
        ip6: v6.map(|(_, ip6)| ip6),
        mtu,
        pod_subnet: None,
        pod_subnet6: None,
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
            ipv6: false,
        }
    }

    /// The pod subnet the tests use for host `i` when nothing else picks one: 10.1.(i+1).0/24.
    pub fn default_pod_subnet(i: usize) -> Subnet {
        Subnet::new(Ipv4Addr::new(10, 1, i as u8 + 1, 0), 24).expect("a /24 network address")
    }

    /// The IPv6 pod subnet beside [`Lab::default_pod_subnet`]: fd10:0:0:(i+1)::/64 (host 1's
    /// lease is `10.1.2.0/24` and `fd10:0:0:2::/64`, DESIGN.md's example).
    pub fn default_pod_subnet6(i: usize) -> Subnet6 {
        Subnet6::new(Ipv6Addr::new(0xfd10, 0, 0, i as u16 + 1, 0, 0, 0, 0), 64)
            .expect("a /64 network address")
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
