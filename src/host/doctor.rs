//! `weft doctor`: checks the host for the misconfigurations that break an overlay and says
//! how to fix each. Also the docker-style masquerade pitfall, which `weft run` warns about at
//! start and can rewrite with `--fix-masquerade`.

use std::process::Command;

use crate::wire::Subnet;

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

fn sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/{path}"))
        .ok()
        .map(|s| s.trim().to_string())
}

fn iptables_s(table: &str, chain: &str) -> Option<String> {
    let out = Command::new("iptables")
        .args(["-w", "5", "-t", table, "-S", chain])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A POSTROUTING rule that masquerades everything from the pod subnet that leaves through
/// another interface than the bridge (docker's default) also rewrites pod-to-remote-pod
/// traffic. Returns the offending rules (`-A POSTROUTING ...` lines).
pub fn masquerade_pitfalls(postrouting: &str, subnet: Subnet, network: Subnet) -> Vec<String> {
    let src = format!("-s {subnet}");
    let src_net = format!("-s {network}");
    let excl = format!("! -d {network}");
    postrouting
        .lines()
        .filter(|l| l.starts_with("-A POSTROUTING"))
        .filter(|l| l.contains("-j MASQUERADE"))
        .filter(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let has = |pat: &str| {
                let p: Vec<&str> = pat.split_whitespace().collect();
                words.windows(p.len()).any(|w| w == p.as_slice())
            };
            (has(&src) || has(&src_net)) && !has(&excl) && !l.contains("-d ")
        })
        .map(str::to_string)
        .collect()
}

/// The same rule, restricted to traffic leaving the overlay (`! -d <Network>`).
pub fn fixed_rule(rule: &str, network: Subnet) -> String {
    match rule.find(" -j MASQUERADE") {
        Some(at) => format!("{} ! -d {network}{}", &rule[..at], &rule[at..]),
        None => rule.to_string(),
    }
}

/// Rewrites every pitfall rule in the nat POSTROUTING chain (delete, append the fixed one).
/// Returns the rules rewritten.
pub fn fix_masquerade(subnet: Subnet, network: Subnet) -> std::io::Result<Vec<String>> {
    let Some(post) = iptables_s("nat", "POSTROUTING") else {
        return Ok(Vec::new());
    };
    let mut fixed = Vec::new();
    for rule in masquerade_pitfalls(&post, subnet, network) {
        let new = fixed_rule(&rule, network);
        let args = |r: &str, op: &str| -> Vec<String> {
            let mut v = vec![
                "-w".into(),
                "5".into(),
                "-t".into(),
                "nat".into(),
                op.into(),
            ];
            v.extend(
                r.trim_start_matches("-A ")
                    .split_whitespace()
                    .map(str::to_string),
            );
            v
        };
        let ok = |a: Vec<String>| -> std::io::Result<bool> {
            Ok(Command::new("iptables").args(a).status()?.success())
        };
        // Add the fixed rule before removing the old one: never a moment without either.
        if ok(args(&new, "-A"))? && ok(args(&rule, "-D"))? {
            fixed.push(new);
        }
    }
    Ok(fixed)
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

/// What `weft doctor` looks at.
#[derive(Debug, Clone)]
pub struct DoctorInput {
    /// Whether a weft of this network runs in this namespace (its instance socket is held).
    pub running: bool,
    /// The overlay network (subnet.env's, else etcd's config), if known.
    pub network: Option<Subnet>,
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
    pub etcd: Result<crate::store::LeaseView, String>,
}

/// Runs every check against this host (network namespace).
pub fn run_checks(i: &DoctorInput) -> Vec<Finding> {
    let mut out = Vec::new();
    if i.running {
        out.push(finding(
            "node",
            Severity::Ok,
            "weft runs in this network namespace".into(),
            String::new(),
        ));
    } else {
        out.push(finding(
            "node",
            Severity::Fail,
            "weft is not running in this network namespace".into(),
            "start it (systemctl start weft, or weft run ...) and read its log; the checks below still describe this host".into(),
        ));
    }
    let network = i
        .network
        .map_or_else(|| "<Network>".to_string(), |n| n.to_string());
    match sysctl("net/ipv4/ip_forward").as_deref() {
        Some("1") => out.push(finding(
            "ip_forward",
            Severity::Ok,
            "on".into(),
            String::new(),
        )),
        v => out.push(finding(
            "ip_forward",
            Severity::Fail,
            format!("net.ipv4.ip_forward is {}", v.unwrap_or("unreadable")),
            "sysctl -w net.ipv4.ip_forward=1 (and persist it in /etc/sysctl.d/)".into(),
        )),
    }
    let rp = |dev: &str| sysctl(&format!("net/ipv4/conf/{dev}/rp_filter"));
    let strict = [("all", rp("all")), (i.tun.as_str(), rp(&i.tun))]
        .into_iter()
        .filter(|(_, v)| v.as_deref() == Some("1"))
        .map(|(d, _)| d.to_string())
        .collect::<Vec<_>>();
    if strict.is_empty() {
        out.push(finding(
            "rp_filter",
            Severity::Ok,
            "not strict".into(),
            String::new(),
        ));
    } else {
        out.push(finding(
            "rp_filter",
            Severity::Warn,
            format!("strict reverse-path filtering on {}", strict.join(", ")),
            format!(
                "sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.{}.rp_filter=2 (loose)",
                i.tun
            ),
        ));
    }
    match iptables_s("filter", "FORWARD") {
        Some(fwd) => {
            let drops = fwd.lines().any(|l| l == "-P FORWARD DROP");
            let accepts =
                fwd.contains("-j FLANNEL-FWD") || fwd.contains(&format!("-s {network} -j ACCEPT"));
            if drops && !accepts {
                out.push(finding(
                    "forward_policy",
                    Severity::Fail,
                    "FORWARD policy is DROP and nothing accepts the overlay".into(),
                    format!("run weft with its default --iptables-forward-rules=true (adds FLANNEL-FWD) or: iptables -A FORWARD -s {network} -j ACCEPT; iptables -A FORWARD -d {network} -j ACCEPT"),
                ));
            } else {
                out.push(finding(
                    "forward_policy",
                    Severity::Ok,
                    if drops {
                        "DROP, overlay accepted".into()
                    } else {
                        "ACCEPT".into()
                    },
                    String::new(),
                ));
            }
        }
        None => out.push(finding(
            "forward_policy",
            Severity::Warn,
            "iptables not readable".into(),
            "install iptables, run as root".into(),
        )),
    }
    match (iptables_s("nat", "POSTROUTING"), i.subnet.zip(i.network)) {
        (_, None) => out.push(finding(
            "masquerade",
            Severity::Warn,
            "not checked: this node's subnet is unknown (no subnet.env)".into(),
            "start weft, or pass --subnet-file".into(),
        )),
        (Some(post), Some((subnet, net))) => {
            let bad = masquerade_pitfalls(&post, subnet, net);
            if bad.is_empty() {
                out.push(finding(
                    "masquerade",
                    Severity::Ok,
                    "no rule masquerades pod-to-pod traffic".into(),
                    String::new(),
                ));
            } else {
                let fixes: Vec<String> = bad.iter().map(|r| fixed_rule(r, net)).collect();
                out.push(finding(
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
                ));
            }
        }
        (None, Some(_)) => out.push(finding(
            "masquerade",
            Severity::Warn,
            "iptables not readable".into(),
            "install iptables, run as root".into(),
        )),
    }
    match sysctl("net/bridge/bridge-nf-call-iptables").as_deref() {
        Some("1") | None => out.push(finding("bridge_nf_call_iptables", Severity::Ok, "on or bridge netfilter not loaded".into(), String::new())),
        Some(v) => out.push(finding(
            "bridge_nf_call_iptables",
            Severity::Warn,
            format!("net.bridge.bridge-nf-call-iptables is {v}: kube-proxy rules skip bridged pod traffic"),
            "modprobe br_netfilter; sysctl -w net.bridge.bridge-nf-call-iptables=1".into(),
        )),
    }
    match &i.etcd {
        Ok(view) => out.push(finding("etcd", Severity::Ok, format!("reachable, {} leases", view.usable.len()), String::new())),
        Err(e) => out.push(finding(
            "etcd",
            Severity::Fail,
            format!("unreachable: {e}"),
            "check --etcd-endpoints and the TLS files; weft keeps forwarding on its last table meanwhile".into(),
        )),
    }
    let tun_up = crate::sys::iface::mtu(&i.tun).is_ok();
    if i.tunnel {
        let bound = udp_port_bound(i.port);
        match (tun_up, bound) {
            (true, true) | (false, false) => out.push(finding(
                "udp_port",
                Severity::Ok,
                format!(
                    "UDP {} {}",
                    i.port,
                    if bound { "bound by weft" } else { "free" }
                ),
                String::new(),
            )),
            (false, true) => out.push(finding(
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
            )),
            (true, false) => out.push(finding(
                "udp_port",
                Severity::Fail,
                format!(
                    "{} exists but nothing listens on UDP {}: the data path is down",
                    i.tun, i.port
                ),
                "restart weft; see its log".into(),
            )),
        }
    }
    if let Ok(view) = &i.etcd {
        lease_findings(view, &mut out);
    }
    if let (Ok(view), Some(own)) = (&i.etcd, i.subnet.filter(|_| i.running)) {
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
            out.push(finding(
                "routes",
                Severity::Ok,
                format!(
                    "a route to each of {} remote leases",
                    leases.len().saturating_sub(1)
                ),
                String::new(),
            ));
        } else {
            out.push(finding(
                "routes",
                Severity::Fail,
                format!("no route through weft to {}", missing.join(", ")),
                if i.tunnel {
                    format!(
                        "restart weft (it routes {network} into {}), or remove the route that hides it",
                        i.tun
                    )
                } else {
                    "wait for the next route resync (--route-resync-secs) or restart weft".into()
                },
            ));
        }
    }
    let tun_mtu = crate::sys::iface::mtu(&i.tun).ok();
    match (tun_mtu, i.underlay_mtu) {
        (None, _) if !i.tunnel => {}
        (None, _) => out.push(finding(
            "tun",
            Severity::Fail,
            format!("{} does not exist", i.tun),
            "start weft run (is it running in this namespace?)".into(),
        )),
        (Some(t), Some(u)) if t + i.overhead > u => out.push(finding(
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
        )),
        (Some(t), _) if i.pod_mtu.is_some_and(|p| p > t) => out.push(finding(
            "mtu",
            Severity::Fail,
            format!(
                "pods use MTU {} but {} carries {t}",
                i.pod_mtu.unwrap_or_default(),
                i.tun
            ),
            format!("give pods MTU {t} (FLANNEL_MTU)"),
        )),
        (Some(t), _) => out.push(finding(
            "mtu",
            Severity::Ok,
            format!(
                "{} MTU {t}, pods {}",
                i.tun,
                i.pod_mtu
                    .map_or_else(|| "unknown".to_string(), |p| p.to_string())
            ),
            String::new(),
        )),
    }
    out
}

/// Findings about the records themselves: the ones the node skips, and PublicIPs that several
/// leases name.
fn lease_findings(view: &crate::store::LeaseView, out: &mut Vec<Finding>) {
    if view.rejected.is_empty() {
        out.push(finding(
            "lease_records",
            Severity::Ok,
            "every record under subnets/ is usable".into(),
            String::new(),
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
    for (ip, keys) in &view.conflicts {
        out.push(finding(
            "public_ip_conflict",
            Severity::Warn,
            format!("PublicIP {ip} is named by {}", keys.join(" and ")),
            "delete the stale record (the node at that address rewrites its own): etcdctl del <stale key>".into(),
        ));
    }
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

    fn n() -> Subnet {
        "10.1.0.0/16".parse().unwrap()
    }
    fn s() -> Subnet {
        "10.1.2.0/24".parse().unwrap()
    }

    #[test]
    fn finds_the_docker_rule_and_fixes_it() {
        let post = "-P POSTROUTING ACCEPT\n\
-A POSTROUTING -s 10.1.2.0/24 ! -o docker0 -j MASQUERADE\n\
-A POSTROUTING -s 10.1.2.0/24 ! -d 10.1.0.0/16 -j MASQUERADE\n\
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE\n\
-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n";
        let bad = masquerade_pitfalls(post, s(), n());
        assert_eq!(
            bad,
            ["-A POSTROUTING -s 10.1.2.0/24 ! -o docker0 -j MASQUERADE"]
        );
        assert_eq!(
            fixed_rule(&bad[0], n()),
            "-A POSTROUTING -s 10.1.2.0/24 ! -o docker0 ! -d 10.1.0.0/16 -j MASQUERADE"
        );
        assert!(masquerade_pitfalls(&fixed_rule(&bad[0], n()), s(), n()).is_empty());
    }

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
