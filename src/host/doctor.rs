//! `weft doctor`: checks the host for the misconfigurations that break an overlay and says
//! how to fix each, one function per check. What the checks look at ([`DoctorInput`]) comes
//! from the flags ([`DoctorRequest`]), the weft running in this namespace and this host
//! ([`Local`]), and etcd ([`crate::store::view`]). A network with an IPv6 half (subnet.env's
//! FLANNEL_IPV6_NETWORK, else etcd's IPv6Network) adds the IPv6 checks: forwarding and the
//! ip6tables FORWARD policy; without one, doctor never runs ip6tables.

use std::path::PathBuf;
use std::time::Duration;

use super::flanneld::FlannelDevice;
use super::masq::{self, fixed_rule, masquerade_pitfalls, Family};
use crate::config::{BackendType, DEFAULT_SUBNET_FILE, DEFAULT_TUN_NAME, UDP_DEFAULT_PORT};
use crate::encap::{UDP_OVERHEAD, VXLAN_OVERHEAD};
use crate::ops::local::LocalStatusError;
use crate::ops::status::StatusDoc;
use crate::store::view::NetworkView;
use crate::store::{EtcdOptions, LeaseView, SubnetEnv};
use crate::wire::vxlan::LINUX_DEFAULT_PORT;
use crate::wire::{Subnet, Subnet6};

/// How long the doctor waits for etcd's answer.
pub const ETCD_TIMEOUT: Duration = Duration::from_secs(5);

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Fine.
    Ok,
    /// Works, but something is off.
    Warn,
    /// Breaks traffic.
    Fail,
}

/// One check's outcome: what was checked, what was found, and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Short name of the check.
    pub check: &'static str,
    /// The verdict.
    pub severity: Severity,
    /// What was found.
    pub detail: String,
    /// What to do about it (empty when fine).
    pub fix: String,
}

fn finding(check: &'static str, severity: Severity, detail: String, fix: String) -> Finding {
    Finding {
        check,
        severity,
        detail,
        fix,
    }
}

/// A finding that needs no fix.
fn fine(check: &'static str, detail: impl Into<String>) -> Finding {
    finding(check, Severity::Ok, detail.into(), String::new())
}

fn sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/{path}"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Whether some socket on this host is bound to UDP `port` (from /proc/net/udp).
pub fn udp_port_bound(port: u16) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/net/udp") else {
        return false;
    };
    udp_port_in(&text, port)
}

fn udp_port_in(proc_net_udp: &str, port: u16) -> bool {
    proc_net_udp.lines().skip(1).any(|l| {
        l.split_whitespace()
            .nth(1)
            .and_then(|local| local.split_once(':'))
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            == Some(port)
    })
}

/// What `weft doctor` was asked to look at; `None` (or empty) where the flags say nothing and
/// the running node's values, then the defaults, fill in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoctorRequest {
    /// etcd endpoints, prefix and credentials.
    pub etcd: EtcdOptions,
    /// Whether the endpoints were given (flag or environment) rather than defaulted: only
    /// then do they beat the running node's.
    pub endpoints_given: bool,
    /// `--subnet-file`.
    pub subnet_file: Option<PathBuf>,
    /// `--tun-name`.
    pub tun_name: Option<String>,
    /// `--iface`: the underlay interface (name or address); empty: the default route's.
    pub iface: Vec<String>,
    /// `--backend`: the backend when etcd cannot say.
    pub backend: BackendType,
}

/// This host as found before etcd is asked: whether weft runs here, its subnet.env, TUN
/// name and underlay MTU, and the etcd to ask.
#[derive(Debug, Clone)]
pub struct Local {
    /// Whether a weft of this network runs in this namespace.
    pub running: bool,
    /// The etcd to ask: the flags', else the running node's endpoints.
    pub etcd: EtcdOptions,
    /// The TUN device name.
    pub tun: String,
    /// subnet.env, if it could be read.
    pub env: Option<SubnetEnv>,
    /// The underlay interface's MTU, if one was found.
    pub underlay_mtu: Option<u32>,
    /// The backend assumed when etcd cannot say.
    pub backend: BackendType,
}

impl Local {
    /// Asks the weft running in this namespace where its files and etcd are (flags win),
    /// then reads subnet.env and finds the underlay.
    pub fn discover(req: DoctorRequest) -> Local {
        let socket = super::instance::socket_name(&req.etcd.prefix);
        let answer = crate::ops::local::fetch(&socket);
        let running = !matches!(answer, Err(LocalStatusError::NotRunning(_)));
        let node = answer
            .ok()
            .and_then(|body| serde_json::from_str::<StatusDoc>(&body).ok())
            .map(|doc| doc.node);
        let subnet_file = req
            .subnet_file
            .or_else(|| node.as_ref().map(|n| n.subnet_file.clone().into()))
            .unwrap_or_else(|| DEFAULT_SUBNET_FILE.into());
        let tun = req
            .tun_name
            .or_else(|| node.as_ref().map(|n| n.tun.clone()).filter(|t| t != "-"))
            .unwrap_or_else(|| DEFAULT_TUN_NAME.into());
        let mut etcd = req.etcd;
        if let Some(n) = node
            .as_ref()
            .filter(|n| !req.endpoints_given && !n.etcd_endpoints.is_empty())
        {
            etcd.endpoints = n.etcd_endpoints.clone();
        }
        // Without subnet.env (weft not running, never ran) every host check still runs.
        let env = SubnetEnv::read(&subnet_file).ok();
        let underlay = super::choose_underlay(&super::UnderlaySpec {
            ifaces: req.iface,
            ..Default::default()
        });
        Local {
            running,
            etcd,
            tun,
            env,
            underlay_mtu: underlay.ok().map(|u| u.mtu),
            backend: req.backend,
        }
    }

    /// What the checks look at, given etcd's answer (or why there is none); etcd's config
    /// says which backend runs, else [`Local::backend`] with its default port.
    pub fn into_input(self, etcd: Result<NetworkView, String>) -> DoctorInput {
        let (kind, port) = match &etcd {
            Ok(view) => (view.config.backend.kind, view.config.backend.port),
            Err(_) => (self.backend, default_port(self.backend)),
        };
        let ipv6_only = self.env.map_or_else(
            || matches!(&etcd, Ok(view) if !view.config.enable_ipv4),
            |e| e.is_ipv6_only(),
        );
        DoctorInput {
            running: self.running,
            ipv6_only,
            network: self
                .env
                .and_then(|e| e.network4())
                .or_else(|| etcd.as_ref().ok().map(|view| view.config.network))
                .filter(|_| !ipv6_only),
            network6: self
                .env
                .and_then(|e| e.ipv6)
                .map(|v6| v6.network)
                .or_else(|| {
                    let view = etcd.as_ref().ok()?;
                    view.config.ipv6.map(|v6| v6.network)
                }),
            subnet: self.env.and_then(|e| e.subnet4()),
            pod_mtu: self.env.map(|e| e.mtu),
            tun: self.tun,
            underlay_mtu: self.underlay_mtu,
            overhead: match kind {
                BackendType::Vxlan => VXLAN_OVERHEAD as u32,
                BackendType::Udp => UDP_OVERHEAD as u32,
                BackendType::HostGw => 0,
            },
            tunnel: kind != BackendType::HostGw,
            port,
            subnet6: self.env.and_then(|e| e.ipv6).map(|v6| v6.subnet),
            vni: match &etcd {
                Ok(view) if kind == BackendType::Vxlan => Some(view.config.backend.vni.get()),
                _ => None,
            },
            etcd: etcd.map(|view| view.leases),
            flanneld: FlanneldLeft::default(),
        }
    }
}

/// flannel's port for `kind` when the config names none (0: host-gw has no tunnel).
fn default_port(kind: BackendType) -> u16 {
    match kind {
        BackendType::Vxlan => LINUX_DEFAULT_PORT,
        BackendType::Udp => UDP_DEFAULT_PORT,
        BackendType::HostGw => 0,
    }
}

/// What `weft doctor` looks at.
#[derive(Debug, Clone)]
pub struct DoctorInput {
    /// Whether a weft of this network runs in this namespace (its instance socket is held).
    pub running: bool,
    /// The network is IPv6-only (etcd's config says `EnableIPv4: false`): the IPv4 checks
    /// (forwarding, rp_filter, FORWARD policy, masquerade) do not apply.
    pub ipv6_only: bool,
    /// The overlay network (subnet.env's, else etcd's config), if known; none on an
    /// IPv6-only network.
    pub network: Option<Subnet>,
    /// The IPv6Network of a dual-stack network (subnet.env's, else etcd's config), if any.
    pub network6: Option<Subnet6>,
    /// This node's subnet (subnet.env), if known.
    pub subnet: Option<Subnet>,
    /// FLANNEL_MTU (the pods' MTU), if known.
    pub pod_mtu: Option<u32>,
    /// The TUN device name.
    pub tun: String,
    /// The underlay interface's MTU, if known.
    pub underlay_mtu: Option<u32>,
    /// The encapsulation overhead of the backend (vxlan 50, udp 28, host-gw 0).
    pub overhead: u32,
    /// Whether the backend runs a TUN data path (vxlan, udp) rather than routes only.
    pub tunnel: bool,
    /// The backend's UDP port.
    pub port: u16,
    /// What etcd said: every lease, judged as the node judges them, or why it could not be
    /// asked.
    pub etcd: Result<LeaseView, String>,
    /// This node's IPv6 subnet (subnet.env), if any.
    pub subnet6: Option<Subnet6>,
    /// The config's VNI (vxlan), when etcd could say.
    pub vni: Option<u32>,
    /// What flanneld runs or left here ([`gather_flanneld`]; empty until gathered).
    pub flanneld: FlanneldLeft,
}

/// What flanneld runs or left in this network namespace, as `weft doctor` found it.
#[derive(Debug, Clone, Default)]
pub struct FlanneldLeft {
    /// Processes named flanneld in this network namespace.
    pub pids: Vec<u32>,
    /// Interfaces with flannel's names, or why they could not be listed.
    pub devices: Vec<FlannelDevice>,
    /// Routes inside the Network (IPv6Network) that weft does not own.
    pub routes: Vec<String>,
    /// Why the devices or routes could not be listed.
    pub error: Option<String>,
}

/// Looks for flanneld in this namespace: its process, its devices, routes inside the
/// networks that weft does not own (rtnetlink: run inside a tokio runtime).
pub async fn gather_flanneld(i: &DoctorInput) -> FlanneldLeft {
    use super::flanneld::{self, IpNet};
    use std::net::IpAddr;
    let v4 = |s: Subnet| IpNet {
        addr: IpAddr::V4(s.addr()),
        len: s.prefix_len(),
    };
    let v6 = |s: Subnet6| IpNet {
        addr: IpAddr::V6(s.addr()),
        len: s.prefix_len(),
    };
    let nets: Vec<IpNet> = i
        .network
        .map(v4)
        .into_iter()
        .chain(i.network6.map(v6))
        .collect();
    let own: Vec<IpNet> = i
        .subnet
        .map(v4)
        .into_iter()
        .chain(i.subnet6.map(v6))
        .collect();
    let mut out = FlanneldLeft {
        pids: flanneld::running_flanneld(),
        ..FlanneldLeft::default()
    };
    match flanneld::survey(&nets, &i.tun, &own).await {
        Ok((devices, routes)) => {
            out.devices = devices;
            out.routes = routes;
        }
        Err(e) => out.error = Some(crate::error::Chain(&e).to_string()),
    }
    out
}

impl DoctorInput {
    /// The network for fixes to name, a placeholder when unknown.
    fn network_text(&self) -> String {
        self.network
            .map_or_else(|| "<Network>".to_string(), |n| n.to_string())
    }
}

/// Runs every check against this host (network namespace), in the order they print.
pub fn run_checks(i: &DoctorInput) -> Vec<Finding> {
    let v4 = !i.ipv6_only;
    let mut out = vec![node(i), flanneld_process(i)];
    out.extend(v4.then(ip_forward));
    out.extend(ipv6_forwarding(i));
    out.extend(
        v4.then(|| [rp_filter(i), forward_policy(i)])
            .into_iter()
            .flatten(),
    );
    out.extend(ipv6_forward_policy(i));
    out.extend(v4.then(|| masquerade(i)));
    out.extend([bridge_nf_call_iptables(), etcd(i)]);
    out.extend(udp_port(i));
    if let Ok(view) = &i.etcd {
        out.extend(lease_findings(view));
    }
    out.extend(routes(i));
    out.extend(flannel_devices(i));
    out.extend(routes_not_ours(i));
    out.extend(tun_mtu(i));
    out
}

/// flanneld must not run beside weft.
fn flanneld_process(i: &DoctorInput) -> Finding {
    if i.flanneld.pids.is_empty() {
        return fine("flanneld", "no flanneld process in this network namespace");
    }
    let pids: Vec<String> = i.flanneld.pids.iter().map(u32::to_string).collect();
    finding(
        "flanneld",
        Severity::Fail,
        format!(
            "flanneld runs in this network namespace (pid {}): it and weft fight over the lease, the tunnel port and the routes",
            pids.join(", ")
        ),
        format!(
            "systemctl stop flanneld && systemctl disable flanneld (or kill {}), then systemctl restart weft",
            pids.join(" ")
        ),
    )
}

/// Devices flanneld left: weft removes its own on start; others are only reported.
fn flannel_devices(i: &DoctorInput) -> Option<Finding> {
    use super::flanneld::{held, judge, Expected, Verdict, FLANNEL_VXLAN_PORT};
    if let Some(e) = &i.flanneld.error {
        return Some(finding(
            "flannel_devices",
            Severity::Warn,
            format!("could not look for flanneld's devices and routes: {e}"),
            "run weft doctor as root".into(),
        ));
    }
    if i.flanneld.devices.is_empty() {
        return Some(fine("flannel_devices", "no flannel.<VNI> device"));
    }
    let want = Expected {
        vni: i.vni,
        port: if i.vni.is_some() {
            i.port
        } else {
            FLANNEL_VXLAN_PORT
        },
        tunnel_port: if i.tunnel { i.port } else { 0 },
    };
    let mut severity = Severity::Warn;
    let mut details = Vec::new();
    let mut fixes = Vec::new();
    for d in &i.flanneld.devices {
        match judge(d, &want) {
            Verdict::Remove => {
                severity = Severity::Fail;
                details.push(format!("{} (flanneld's, holds {})", d.name, held(d)));
                fixes.push(if i.running {
                    format!("ip link delete {} (weft removes it when it starts: systemctl restart weft)", d.name)
                } else {
                    format!("start weft (it removes {} on start), or ip link delete {}", d.name, d.name)
                });
            }
            Verdict::Harmless => {
                details.push(format!("{} (flanneld's, holds nothing weft needs)", d.name));
                fixes.push(format!(
                    "ip link delete {} when flanneld is gone for good",
                    d.name
                ));
            }
            Verdict::NotFlanneld(why) => {
                details.push(format!(
                    "{} (not certainly flanneld's: {why}; weft leaves it alone)",
                    d.name
                ));
                fixes.push(format!(
                    "if it is left from flanneld: ip link delete {}",
                    d.name
                ));
            }
        }
    }
    Some(finding(
        "flannel_devices",
        severity,
        details.join("; "),
        fixes.join("; "),
    ))
}

/// Routes inside the Network that weft does not own: flanneld's leftovers or someone else's.
fn routes_not_ours(i: &DoctorInput) -> Option<Finding> {
    if i.flanneld.error.is_some() || (i.network.is_none() && i.network6.is_none()) {
        return None;
    }
    let routes = &i.flanneld.routes;
    let Some(first) = routes.first() else {
        return Some(fine(
            "foreign_routes",
            "no route inside the Network that weft does not own",
        ));
    };
    const SHOWN: usize = 8;
    let mut list = routes
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if routes.len() > SHOWN {
        list.push_str(&format!("; and {} more", routes.len() - SHOWN));
    }
    let dst = first.split_whitespace().next().unwrap_or(first);
    Some(finding(
        "foreign_routes",
        Severity::Warn,
        format!(
            "{} route(s) inside the Network that weft does not own: {list}",
            routes.len()
        ),
        format!(
            "each one that nothing else on this host needs: ip route del <its destination> (e.g. ip route del {dst}); flanneld's host-gw routes that match a lease exactly (its subnet via its PublicIP) are adopted by weft when it runs host-gw or DirectRouting; routes through a flannel.<VNI> device go with the device"
        ),
    ))
}

/// Whether weft runs here at all.
fn node(i: &DoctorInput) -> Finding {
    if i.running {
        return fine("node", "weft runs in this network namespace");
    }
    finding(
        "node",
        Severity::Fail,
        "weft is not running in this network namespace".into(),
        "start it (systemctl start weft, or weft run ...) and read its log; the checks below still describe this host".into(),
    )
}

/// The host must forward between the TUN and the pods.
fn ip_forward() -> Finding {
    match sysctl("net/ipv4/ip_forward").as_deref() {
        Some("1") => fine("ip_forward", "on"),
        v => finding(
            "ip_forward",
            Severity::Fail,
            format!("net.ipv4.ip_forward is {}", v.unwrap_or("unreadable")),
            "sysctl -w net.ipv4.ip_forward=1 (and persist it in /etc/sysctl.d/)".into(),
        ),
    }
}

/// With an IPv6Network the host must forward IPv6 too.
fn ipv6_forwarding(i: &DoctorInput) -> Option<Finding> {
    let net6 = i.network6?;
    Some(match sysctl("net/ipv6/conf/all/forwarding").as_deref() {
        Some("1") => fine("ipv6_forwarding", "on"),
        v => finding(
            "ipv6_forwarding",
            Severity::Fail,
            format!(
                "net.ipv6.conf.all.forwarding is {}: IPv6 pod traffic ({net6}) is not forwarded",
                v.unwrap_or("unreadable (IPv6 disabled?)")
            ),
            "sysctl -w net.ipv6.conf.all.forwarding=1 (and persist it in /etc/sysctl.d/; an interface that takes its address from router advertisements then needs accept_ra=2)".into(),
        ),
    })
}

/// Strict reverse-path filtering drops packets that arrive on the TUN but route elsewhere.
fn rp_filter(i: &DoctorInput) -> Finding {
    let rp = |dev: &str| sysctl(&format!("net/ipv4/conf/{dev}/rp_filter"));
    let strict = [("all", rp("all")), (i.tun.as_str(), rp(&i.tun))]
        .into_iter()
        .filter(|(_, v)| v.as_deref() == Some("1"))
        .map(|(d, _)| d.to_string())
        .collect::<Vec<_>>();
    if strict.is_empty() {
        return fine("rp_filter", "not strict");
    }
    finding(
        "rp_filter",
        Severity::Warn,
        format!("strict reverse-path filtering on {}", strict.join(", ")),
        format!(
            "sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.{}.rp_filter=2 (loose)",
            i.tun
        ),
    )
}

/// A FORWARD policy of DROP (docker's) needs rules that accept the overlay.
fn forward_policy(i: &DoctorInput) -> Finding {
    forward_policy_of(Family::V4, "forward_policy", &i.network_text())
}

/// The same for IPv6: ip6tables' FORWARD policy of DROP needs rules that accept the
/// IPv6Network, or IPv6 pod traffic dies on this host.
fn ipv6_forward_policy(i: &DoctorInput) -> Option<Finding> {
    let net6 = i.network6?;
    Some(forward_policy_of(
        Family::V6,
        "ipv6_forward_policy",
        &net6.to_string(),
    ))
}

/// `family`'s FORWARD chain: a DROP policy with neither FLANNEL-FWD's jump nor an ACCEPT of
/// `network` fails `check`.
fn forward_policy_of(family: Family, check: &'static str, network: &str) -> Finding {
    let Ok(fwd) = masq::list_rules(family, "filter", "FORWARD") else {
        return iptables_unreadable(family, check);
    };
    let drops = fwd.lines().any(|l| l == "-P FORWARD DROP");
    let accepts =
        fwd.contains("-j FLANNEL-FWD") || fwd.contains(&format!("-s {network} -j ACCEPT"));
    let (cmd, overlay) = match family {
        Family::V4 => ("iptables", "the overlay"),
        Family::V6 => ("ip6tables", "the IPv6 overlay"),
    };
    if drops && !accepts {
        let policy = match family {
            Family::V4 => "FORWARD policy",
            Family::V6 => "ip6tables FORWARD policy",
        };
        return finding(
            check,
            Severity::Fail,
            format!("{policy} is DROP and nothing accepts {overlay}"),
            format!("run weft with its default --iptables-forward-rules=true (adds FLANNEL-FWD) or: {cmd} -A FORWARD -s {network} -j ACCEPT; {cmd} -A FORWARD -d {network} -j ACCEPT"),
        );
    }
    fine(
        check,
        match (drops, family) {
            (false, _) => "ACCEPT",
            (true, Family::V4) => "DROP, overlay accepted",
            (true, Family::V6) => "DROP, IPv6 overlay accepted",
        },
    )
}

fn iptables_unreadable(family: Family, check: &'static str) -> Finding {
    finding(
        check,
        Severity::Warn,
        format!("{} not readable", family.iptables()),
        "install iptables, run as root".into(),
    )
}

/// The docker-style masquerade rule that hides pods behind the node's address.
fn masquerade(i: &DoctorInput) -> Finding {
    let Some((subnet, net)) = i.subnet.zip(i.network) else {
        return finding(
            "masquerade",
            Severity::Warn,
            "not checked: this node's subnet is unknown (no subnet.env)".into(),
            "start weft, or pass --subnet-file".into(),
        );
    };
    let Ok(post) = masq::list_rules(Family::V4, "nat", "POSTROUTING") else {
        return iptables_unreadable(Family::V4, "masquerade");
    };
    let bad = masquerade_pitfalls(&post, subnet, net);
    if bad.is_empty() {
        return fine("masquerade", "no rule masquerades pod-to-pod traffic");
    }
    let fixes: Vec<String> = bad.iter().map(|r| fixed_rule(r, net)).collect();
    finding(
        "masquerade",
        Severity::Fail,
        format!(
            "pods reach remote pods with the node's address because of: {}",
            bad.join(" | ")
        ),
        format!(
            "add `! -d {net}`: {} (or run weft with --fix-masquerade)",
            fixes.join(" | ")
        ),
    )
}

/// Bridged pod traffic must pass iptables for kube-proxy's rules.
fn bridge_nf_call_iptables() -> Finding {
    match sysctl("net/bridge/bridge-nf-call-iptables").as_deref() {
        Some("1") | None => fine("bridge_nf_call_iptables", "on or bridge netfilter not loaded"),
        Some(v) => finding(
            "bridge_nf_call_iptables",
            Severity::Warn,
            format!("net.bridge.bridge-nf-call-iptables is {v}: kube-proxy rules skip bridged pod traffic"),
            "modprobe br_netfilter; sysctl -w net.bridge.bridge-nf-call-iptables=1".into(),
        ),
    }
}

/// Whether etcd answered.
fn etcd(i: &DoctorInput) -> Finding {
    match &i.etcd {
        Ok(view) => fine("etcd", format!("reachable, {} leases", view.usable.len())),
        Err(e) => finding(
            "etcd",
            Severity::Fail,
            format!("unreachable: {e}"),
            "check --etcd-endpoints and the TLS files; weft keeps forwarding on its last table meanwhile".into(),
        ),
    }
}

/// The tunnel port must be weft's: bound while the TUN exists, free while it does not.
fn udp_port(i: &DoctorInput) -> Option<Finding> {
    if !i.tunnel {
        return None;
    }
    let tun_up = crate::sys::iface::mtu(&i.tun).is_ok();
    let bound = udp_port_bound(i.port);
    Some(match (tun_up, bound) {
        (true, true) | (false, false) => fine(
            "udp_port",
            format!(
                "UDP {} {}",
                i.port,
                if bound { "bound by weft" } else { "free" }
            ),
        ),
        (false, true) => match i
            .flanneld
            .devices
            .iter()
            .find(|d| d.kind == "vxlan" && d.port == Some(i.port))
        {
            Some(d) => finding(
                "udp_port",
                Severity::Fail,
                format!("UDP {} is held by the VXLAN device {}", i.port, d.name),
                format!(
                    "start weft (it removes flanneld's device on start), or ip link delete {}",
                    d.name
                ),
            ),
            None => finding(
                "udp_port",
                Severity::Fail,
                format!(
                    "UDP {} is held by another process while weft is not running",
                    i.port
                ),
                format!(
                    "stop whatever holds it (another weft or flanneld?): ss -ulpn 'sport = :{}'",
                    i.port
                ),
            ),
        },
        (true, false) => finding(
            "udp_port",
            Severity::Fail,
            format!(
                "{} exists but nothing listens on UDP {}: the data path is down",
                i.tun, i.port
            ),
            "restart weft; see its log".into(),
        ),
    })
}

/// Findings about the records themselves: the ones the node skips, and PublicIPs that several
/// leases name.
fn lease_findings(view: &LeaseView) -> Vec<Finding> {
    let mut out = Vec::new();
    if view.rejected.is_empty() {
        out.push(fine(
            "lease_records",
            "every record under subnets/ is usable",
        ));
    } else {
        let list: Vec<String> = view
            .rejected
            .iter()
            .map(|(k, p)| format!("{k} ({p})"))
            .collect();
        let keys: Vec<&str> = view.rejected.iter().map(|(k, _)| k.as_str()).collect();
        out.push(finding(
            "lease_records",
            Severity::Warn,
            format!(
                "{} record(s) skipped by every weft node: {}",
                view.rejected.len(),
                list.join("; ")
            ),
            format!("correct or delete them: etcdctl del {}", keys.join(" ")),
        ));
    }
    let named = |ip: &dyn std::fmt::Display, keys: &[String], what: &str| {
        finding(
            "public_ip_conflict",
            Severity::Warn,
            format!("{what} {ip} is named by {}", keys.join(" and ")),
            "delete the stale record (the node at that address rewrites its own): etcdctl del <stale key>".into(),
        )
    };
    for (ip, keys) in &view.conflicts {
        out.push(named(ip, keys, "PublicIP"));
    }
    for (ip, keys) in &view.conflicts6 {
        out.push(named(ip, keys, "PublicIPv6"));
    }
    out.extend(vni_mismatch(view));
    out
}

/// Leases that name another VNI than the network config: their nodes run another
/// `Backend.VNI` (a cluster in the middle of a change), and each side drops what the other
/// sends. (The port cannot be compared: flannel's records do not carry it.)
fn vni_mismatch(view: &LeaseView) -> Option<Finding> {
    let first = view.vni_mismatches.first()?;
    let list: Vec<String> = view
        .vni_mismatches
        .iter()
        .map(|m| format!("{} ({} {})", m.key, m.field, m.vni))
        .collect();
    Some(finding(
        "vni",
        Severity::Fail,
        format!(
            "{} lease(s) name another VNI than the network config's Backend.VNI {}: {}; their nodes and the rest drop each other's packets",
            list.len(),
            first.expected,
            list.join(", ")
        ),
        format!(
            "make Backend.VNI the same everywhere: restart the nodes of those leases (they then run the config's VNI {}); or, if the config's VNI is the mistake, set it back in the network config and restart the nodes that run {}",
            first.expected, first.expected
        ),
    ))
}

/// Every remote lease must route through weft (the TUN, or the peer as gateway for
/// host-gw); checked only while weft runs and its own subnet is known.
fn routes(i: &DoctorInput) -> Option<Finding> {
    let (Ok(view), Some(own)) = (&i.etcd, i.subnet.filter(|_| i.running)) else {
        return None;
    };
    let leases = &view.usable;
    let missing: Vec<String> = leases
        .iter()
        .filter(|(s, _)| *s != own)
        .filter(|(s, ip)| match super::route_for(s.first_host()) {
            Some((dev, gw)) => !(dev == i.tun || gw == Some(*ip)),
            None => true,
        })
        .map(|(s, _)| s.to_string())
        .collect();
    if missing.is_empty() {
        return Some(fine(
            "routes",
            format!(
                "a route to each of {} remote leases",
                leases.len().saturating_sub(1)
            ),
        ));
    }
    Some(finding(
        "routes",
        Severity::Fail,
        format!("no route through weft to {}", missing.join(", ")),
        if i.tunnel {
            format!(
                "restart weft (it routes {} into {}), or remove the route that hides it",
                i.network_text(),
                i.tun
            )
        } else {
            "wait for the next route resync (--route-resync-secs) or restart weft".into()
        },
    ))
}

/// The TUN must exist (tunnel backends), fit the underlay with the overhead, and carry what
/// the pods send.
fn tun_mtu(i: &DoctorInput) -> Option<Finding> {
    let tun_mtu = crate::sys::iface::mtu(&i.tun).ok();
    Some(match (tun_mtu, i.underlay_mtu) {
        (None, _) if !i.tunnel => return None,
        (None, _) => finding(
            "tun",
            Severity::Fail,
            format!("{} does not exist", i.tun),
            "start weft run (is it running in this namespace?)".into(),
        ),
        (Some(t), Some(u)) if t + i.overhead > u => finding(
            "mtu",
            Severity::Fail,
            format!(
                "{} MTU {t} + {} overhead exceeds the underlay MTU {u}",
                i.tun, i.overhead
            ),
            format!(
                "set Backend.MTU or the underlay MTU so that the overlay MTU is at most {}",
                u.saturating_sub(i.overhead)
            ),
        ),
        (Some(t), _) if i.pod_mtu.is_some_and(|p| p > t) => finding(
            "mtu",
            Severity::Fail,
            format!(
                "pods use MTU {} but {} carries {t}",
                i.pod_mtu.unwrap_or_default(),
                i.tun
            ),
            format!("give pods MTU {t} (FLANNEL_MTU)"),
        ),
        (Some(t), _) => fine(
            "mtu",
            format!(
                "{} MTU {t}, pods {}",
                i.tun,
                i.pod_mtu
                    .map_or_else(|| "unknown".to_string(), |p| p.to_string())
            ),
        ),
    })
}

/// Renders findings for a terminal, worst first within the original order.
pub fn render(findings: &[Finding]) -> String {
    let mut s = String::new();
    for f in findings {
        let tag = match f.severity {
            Severity::Ok => "ok  ",
            Severity::Warn => "WARN",
            Severity::Fail => "FAIL",
        };
        s.push_str(&format!("{tag}  {:<24} {}\n", f.check, f.detail));
        if !f.fix.is_empty() {
            s.push_str(&format!("      {:<24} fix: {}\n", "", f.fix));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NetworkConfig;

    #[test]
    fn proc_parsers() {
        let udp = "  sl  local_address rem_address   st\n   0: 0B40A8C0:2118 00000000:0000 07\n";
        assert!(udp_port_in(udp, 8472));
        assert!(!udp_port_in(udp, 8285));
        let routes = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n\
eth0\t00000000\t0140A8C0\t0003\t0\t0\t0\t00000000\n\
weft0\t0000010A\t00000000\t0001\t0\t0\t0\t0000FFFF\n\
eth0\t0003010A\t0B40A8C0\t0003\t0\t0\t0\t00FFFFFF\n";
        let ip = |s: &str| s.parse::<std::net::Ipv4Addr>().unwrap();
        assert_eq!(
            crate::host::route_in(routes, ip("10.1.2.7")),
            Some(("weft0".into(), None))
        );
        assert_eq!(
            crate::host::route_in(routes, ip("10.1.3.7")),
            Some(("eth0".into(), Some(ip("192.168.64.11"))))
        );
        assert_eq!(
            crate::host::route_in(routes, ip("8.8.8.8")),
            Some(("eth0".into(), Some(ip("192.168.64.1"))))
        );
    }

    fn local(backend: BackendType) -> Local {
        Local {
            running: true,
            etcd: EtcdOptions::default(),
            tun: "weft0".into(),
            env: None,
            underlay_mtu: Some(1500),
            backend,
        }
    }

    #[test]
    fn without_etcd_the_backend_flag_decides_port_and_overhead() {
        let cases = [
            (BackendType::Vxlan, 8472, 50, true),
            (BackendType::Udp, 8285, 28, true),
            (BackendType::HostGw, 0, 0, false),
        ];
        for (backend, port, overhead, tunnel) in cases {
            let i = local(backend).into_input(Err("down".into()));
            assert_eq!((i.port, i.overhead, i.tunnel), (port, overhead, tunnel));
            assert_eq!((i.network, i.subnet, i.pod_mtu), (None, None, None));
            assert_eq!(i.network_text(), "<Network>");
        }
    }

    #[test]
    fn etcd_and_lease_findings() {
        let mut i = local(BackendType::Vxlan).into_input(Err("no answer within 5 s".into()));
        let f = etcd(&i);
        assert_eq!(f.severity, Severity::Fail);
        assert_eq!(f.detail, "unreachable: no answer within 5 s");
        assert!(routes(&i).is_none(), "no routes check without etcd");
        let ip = "192.168.64.3".parse().unwrap();
        let view = LeaseView {
            usable: vec![("10.1.2.0/24".parse().unwrap(), ip)],
            rejected: vec![("/p/subnets/x".into(), crate::store::LeaseProblem::BadKey)],
            conflicts: vec![(ip, vec!["/p/subnets/a".into(), "/p/subnets/b".into()])],
            ..LeaseView::default()
        };
        let found = lease_findings(&view);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].severity, Severity::Warn);
        assert_eq!(
            found[0].detail,
            "1 record(s) skipped by every weft node: /p/subnets/x (the key does not name a subnet like 10.1.2.0-24)"
        );
        assert_eq!(
            found[0].fix,
            "correct or delete them: etcdctl del /p/subnets/x"
        );
        assert_eq!(
            found[1].detail,
            "PublicIP 192.168.64.3 is named by /p/subnets/a and /p/subnets/b"
        );
        i.etcd = Ok(view);
        assert_eq!(etcd(&i).detail, "reachable, 1 leases");
        // A lease of another VNI.
        let odd = LeaseView {
            vni_mismatches: vec![crate::store::VniMismatch {
                key: "/p/subnets/10.1.3.0-24".into(),
                field: "BackendData.VNI",
                vni: 2,
                expected: 1,
            }],
            ..LeaseView::default()
        };
        let found = lease_findings(&odd);
        let vni = found
            .iter()
            .find(|f| f.check == "vni")
            .expect("a vni finding");
        assert_eq!(vni.severity, Severity::Fail);
        assert_eq!(
            vni.detail,
            "1 lease(s) name another VNI than the network config's Backend.VNI 1: \
             /p/subnets/10.1.3.0-24 (BackendData.VNI 2); their nodes and the rest drop each \
             other's packets"
        );
        assert!(
            vni.fix
                .starts_with("make Backend.VNI the same everywhere: restart the nodes"),
            "{}",
            vni.fix
        );
        let clean = lease_findings(&LeaseView::default());
        assert_eq!(
            clean,
            [fine(
                "lease_records",
                "every record under subnets/ is usable"
            )]
        );
    }

    #[test]
    fn the_ipv6_network_comes_from_subnet_env_else_etcd() {
        let dual = NetworkConfig::parse_dual_stack(
            r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/48","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        let view = |config: &NetworkConfig| NetworkView {
            config: config.clone(),
            leases: LeaseView::default(),
        };
        let i = local(BackendType::Vxlan).into_input(Ok(view(&dual)));
        assert_eq!(i.network6, Some("fd10::/48".parse().unwrap()));

        // subnet.env's IPv6 lines win over etcd's, as its IPv4 ones do.
        let mut l = local(BackendType::Vxlan);
        l.env = Some(SubnetEnv {
            network: "10.1.0.0/16".parse().unwrap(),
            subnet: "10.1.2.0/24".parse().unwrap(),
            ipv6: Some(crate::store::subnet_env::SubnetEnv6 {
                network: "fd20::/48".parse().unwrap(),
                subnet: "fd20:0:0:2::/64".parse().unwrap(),
            }),
            mtu: 1450,
            ip_masq: false,
        });
        let i = l.into_input(Ok(view(&dual)));
        assert_eq!(i.network6, Some("fd20::/48".parse().unwrap()));

        // IPv4 only: no IPv6 check runs (and none touches ip6tables or IPv6 sysctls).
        let v4 = NetworkConfig::parse(r#"{"Network":"10.1.0.0/16"}"#).unwrap();
        let i = local(BackendType::Vxlan).into_input(Ok(view(&v4)));
        assert_eq!(i.network6, None);
        assert!(ipv6_forwarding(&i).is_none() && ipv6_forward_policy(&i).is_none());
        let i = local(BackendType::Vxlan).into_input(Err("down".into()));
        assert_eq!(i.network6, None);
    }

    #[test]
    fn renders_fixes() {
        let f = [finding(
            "ip_forward",
            Severity::Fail,
            "off".into(),
            "turn it on".into(),
        )];
        let t = render(&f);
        assert!(t.starts_with("FAIL  ip_forward"), "{t}");
        assert!(t.contains("fix: turn it on"), "{t}");
    }
}
