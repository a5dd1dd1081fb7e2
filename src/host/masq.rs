//! flannel's iptables rules. `FLANNEL-FWD` (`--iptables-forward-rules`, on by default, as in
//! flanneld, whether or not `--ip-masq` is set) accepts the Network in FORWARD, so pod traffic
//! crosses hosts whose FORWARD policy is DROP (docker's default). The masquerade rules
//! (`--ip-masq`): pod traffic leaving the overlay is masqueraded
//! to the node's address, pod-to-pod traffic keeps its source IP (the docker-style pitfall
//! this avoids: a plain `-s <pod subnet> -j MASQUERADE` rewrites pod-to-remote-pod traffic
//! too). Chains `FLANNEL-POSTRTG` (nat, from POSTROUTING) and `FLANNEL-FWD` (filter, from
//! FORWARD), the same names and rules as flanneld, so either can take over from the other.
//!
//! A dual-stack node keeps the same two chains in ip6tables for the IPv6Network and its IPv6
//! subnet ([`apply6`]), as flanneld does: the same names, comments and rules as for IPv4
//! (multicast is `ff00::/8`), and `ForwardRules` on the IPv6Network. (flanneld v0.20.2's
//! `MasqIP6Rules` lists the same RETURN and MASQUERADE cases in its older order, without the
//! two subnet RETURNs first; weft keeps one layout for both families, the one its IPv4 rules
//! have.) Each family is written by its own binaries ([`Family`]); an IPv4-only node never
//! runs ip6tables.
//!
//! Applied with `iptables-restore --noflush`: declaring a chain flushes it, so the whole
//! chain is replaced in one transaction and rules of a previous network or subnet vanish.
//! iptables (legacy or nft backend, whichever the host uses) rather than nftables directly:
//! kube-proxy and every CNI on the host speak iptables, and mixing both layers on one node
//! makes rule order impossible to reason about.
//!
//! Also the docker-style pitfall itself in rules weft does not own: `weft run` warns about it
//! at start, or rewrites it with `--fix-masquerade` ([`check_pitfalls`]); `weft doctor`
//! reports it ([`masquerade_pitfalls`]). Every `iptables`, `ip6tables` and `*-restore`
//! command goes through one helper.

use std::fmt::Display;
use std::io::Write;
use std::process::{Command, Output, Stdio};

use tracing::{info, warn};

use crate::wire::{Subnet, Subnet6};

/// The nat chain, as flanneld names it (in iptables and ip6tables alike).
pub const NAT_CHAIN: &str = "FLANNEL-POSTRTG";
/// The filter chain, as flanneld names it (in iptables and ip6tables alike).
pub const FWD_CHAIN: &str = "FLANNEL-FWD";
/// kube-proxy's masquerade mark: packets it marked are its business.
const KUBE_MARK: &str = "0x4000/0x4000";
/// What the IPv4 masquerade rule leaves alone: multicast.
const MULTICAST4: &str = "224.0.0.0/4";
/// What the IPv6 masquerade rule leaves alone: multicast, as flanneld's `MasqIP6Rules`.
const MULTICAST6: &str = "ff00::/8";

/// Why the rules could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum MasqError {
    /// An iptables command could not run.
    #[error("running {cmd} (is iptables installed?)")]
    Spawn {
        /// The command.
        cmd: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An iptables command failed.
    #[error("{cmd} failed: {stderr}")]
    Failed {
        /// The command.
        cmd: &'static str,
        /// What it printed.
        stderr: String,
    },
}

/// Which address family's tables a command works on: each has its own binaries and its own
/// tables in the kernel, so rules of one never match packets of the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4: `iptables`, `iptables-restore`.
    V4,
    /// IPv6: `ip6tables`, `ip6tables-restore`.
    V6,
}

impl Family {
    /// The command that lists, checks and edits single rules.
    pub const fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    /// The command that loads a whole table transaction.
    pub const fn restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }
}

/// Which of flannel's chains weft keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// `FLANNEL-POSTRTG` (`--ip-masq`).
    pub masquerade: bool,
    /// `FLANNEL-FWD` (`--iptables-forward-rules`).
    pub forward: bool,
}

impl Rules {
    /// Whether there is anything to write.
    pub fn any(&self) -> bool {
        self.masquerade || self.forward
    }
}

/// The `iptables-restore` input that (re)writes the chains `rules` asks for, for `network` and
/// this node's `subnet`; `random_fully` adds `--random-fully` to the MASQUERADE rules.
pub fn restore_text(network: Subnet, subnet: Subnet, rules: Rules, random_fully: bool) -> String {
    restore_text_of(network, subnet, MULTICAST4, rules, random_fully)
}

/// The `ip6tables-restore` input that (re)writes the chains `rules` asks for, for the
/// IPv6Network `network` and this node's IPv6 `subnet`: the IPv4 rules' layout and
/// `ForwardRules` on the IPv6Network; `random_fully` as in [`restore_text`].
pub fn restore_text6(
    network: Subnet6,
    subnet: Subnet6,
    rules: Rules,
    random_fully: bool,
) -> String {
    restore_text_of(network, subnet, MULTICAST6, rules, random_fully)
}

/// Either family's restore input: the same chains and rule layout, with that family's
/// multicast range left unmasqueraded.
fn restore_text_of(
    network: impl Display,
    subnet: impl Display,
    multicast: &str,
    rules: Rules,
    random_fully: bool,
) -> String {
    let mut out = String::new();
    if rules.masquerade {
        out.push_str(&nat_text(&network, &subnet, multicast, random_fully));
    }
    if rules.forward {
        out.push_str(&forward_text(network));
    }
    out
}

/// The nat chain: pod to pod (our subnet to the Network and back) and traffic from outside
/// to our subnet keep their sources; leaving the Network (but for `multicast`) and the
/// host's own traffic into it are masqueraded.
fn nat_text(
    network: &dyn Display,
    subnet: &dyn Display,
    multicast: &str,
    random_fully: bool,
) -> String {
    let rf = if random_fully { " --random-fully" } else { "" };
    let (n, s) = (network.to_string(), subnet.to_string());
    format!(
        "*nat\n\
         :{NAT_CHAIN} - [0:0]\n\
         -A {NAT_CHAIN} -m mark --mark {KUBE_MARK} -m comment --comment \"flanneld masq\" -j RETURN\n\
         -A {NAT_CHAIN} -s {s} -d {n} -m comment --comment \"flanneld masq\" -j RETURN\n\
         -A {NAT_CHAIN} -s {n} -d {s} -m comment --comment \"flanneld masq\" -j RETURN\n\
         -A {NAT_CHAIN} ! -s {n} -d {s} -m comment --comment \"flanneld masq\" -j RETURN\n\
         -A {NAT_CHAIN} -s {n} ! -d {multicast} -m comment --comment \"flanneld masq\" -j MASQUERADE{rf}\n\
         -A {NAT_CHAIN} ! -s {n} -d {n} -m comment --comment \"flanneld masq\" -j MASQUERADE{rf}\n\
         COMMIT\n"
    )
}

/// flanneld's `ForwardRules`, the same for either family's network.
fn forward_text(network: impl Display) -> String {
    let n = network.to_string();
    format!(
        "*filter\n\
         :{FWD_CHAIN} - [0:0]\n\
         -A {FWD_CHAIN} -s {n} -m comment --comment \"flanneld forward\" -j ACCEPT\n\
         -A {FWD_CHAIN} -d {n} -m comment --comment \"flanneld forward\" -j ACCEPT\n\
         COMMIT\n"
    )
}

/// The one helper every iptables call goes through: runs `cmd -w 5 <args>` (waiting up to
/// 5 s for the xtables lock that kube-proxy and others take), feeding it `input` when given,
/// and returns what it printed; only failing to start it at all is an error.
fn xtables(cmd: &'static str, args: &[&str], input: Option<&str>) -> Result<Output, MasqError> {
    let spawn = |source| MasqError::Spawn { cmd, source };
    let mut command = Command::new(cmd);
    command.args(["-w", "5"]).args(args);
    let Some(text) = input else {
        return command.stdin(Stdio::null()).output().map_err(spawn);
    };
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(text.as_bytes()).map_err(spawn)?;
    }
    child.wait_with_output().map_err(spawn)
}

/// `<family's iptables> <args>`.
fn iptables(family: Family, args: &[&str]) -> Result<Output, MasqError> {
    xtables(family.iptables(), args, None)
}

/// A failed run of `cmd` as an error carrying what it printed.
fn failed(cmd: &'static str, out: &Output) -> MasqError {
    MasqError::Failed {
        cmd,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    }
}

/// `table`'s `chain` of `family` as `iptables -S` prints it (`-P ...` and `-A ...` lines).
pub fn list_rules(family: Family, table: &str, chain: &str) -> Result<String, MasqError> {
    let out = iptables(family, &["-t", table, "-S", chain])?;
    if !out.status.success() {
        return Err(failed(family.iptables(), &out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Feeds `text` to `<family's iptables-restore> -w 5 --noflush`.
fn restore(family: Family, text: &str) -> Result<(), MasqError> {
    let cmd = family.restore();
    let out = xtables(cmd, &["--noflush"], Some(text))?;
    if out.status.success() {
        return Ok(());
    }
    Err(failed(cmd, &out))
}

/// Makes sure `table`'s `from` chain jumps to `to` (first), adding the jump when missing.
fn ensure_jump(
    family: Family,
    table: &str,
    from: &str,
    to: &str,
    comment: &str,
) -> Result<(), MasqError> {
    let rule = ["-m", "comment", "--comment", comment, "-j", to];
    let mut check = vec!["-t", table, "-C", from];
    check.extend_from_slice(&rule);
    // `iptables -C` answers "not found" with a failure: that is an answer, not an error.
    if !iptables(family, &check)?.status.success() {
        let mut insert = vec!["-t", table, "-I", from, "1"];
        insert.extend_from_slice(&rule);
        if !iptables(family, &insert)?.status.success() {
            return Err(MasqError::Failed {
                cmd: family.iptables(),
                stderr: format!("could not insert the jump from {table}/{from} to {to}"),
            });
        }
    }
    Ok(())
}

/// Writes the chains `rules` asks for (atomically replacing what they held) and their jumps.
/// Uses `--random-fully` when this iptables and kernel take it, else plain MASQUERADE.
pub fn apply(network: Subnet, subnet: Subnet, rules: Rules) -> Result<(), MasqError> {
    apply_family(Family::V4, rules, |rf| {
        restore_text(network, subnet, rules, rf)
    })
}

/// [`apply`] for a dual-stack node's IPv6 half: the same chains in ip6tables, for the
/// IPv6Network `network` and this node's IPv6 `subnet` ([`restore_text6`]).
pub fn apply6(network: Subnet6, subnet: Subnet6, rules: Rules) -> Result<(), MasqError> {
    apply_family(Family::V6, rules, |rf| {
        restore_text6(network, subnet, rules, rf)
    })
}

/// Loads `text(true)` (with `--random-fully`), else `text(false)`, into `family`'s tables,
/// then makes sure POSTROUTING and FORWARD jump to the chains written.
fn apply_family(
    family: Family,
    rules: Rules,
    text: impl Fn(bool) -> String,
) -> Result<(), MasqError> {
    if !rules.any() {
        return Ok(());
    }
    if restore(family, &text(true)).is_err() {
        restore(family, &text(false))?;
    }
    if rules.masquerade {
        ensure_jump(family, "nat", "POSTROUTING", NAT_CHAIN, "flanneld masq")?;
    }
    if rules.forward {
        ensure_jump(family, "filter", "FORWARD", FWD_CHAIN, "flanneld forward")?;
    }
    Ok(())
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

/// Warns about rules that masquerade pod-to-pod traffic (docker's default), each with its
/// fix; with `fix` (`--fix-masquerade`) rewrites them instead. An iptables that cannot be
/// read means nothing to report.
pub fn check_pitfalls(network: Subnet, subnet: Subnet, fix: bool) {
    let Ok(post) = list_rules(Family::V4, "nat", "POSTROUTING") else {
        return;
    };
    let bad = masquerade_pitfalls(&post, subnet, network);
    if bad.is_empty() {
        return;
    }
    if fix {
        match fix_masquerade(&bad, network) {
            Ok(fixed) => {
                for r in fixed {
                    info!(rule = %r, "masquerade rule rewritten to spare the overlay");
                }
            }
            Err(e) => {
                warn!(error = %crate::error::Chain(&e), "could not rewrite the masquerade rules")
            }
        }
        return;
    }
    for r in bad {
        warn!(rule = %r, fix = %fixed_rule(&r, network), "this rule masquerades pod-to-pod traffic: remote pods will see the node's address; add `! -d {network}` or run with --fix-masquerade");
    }
}

/// Rewrites each pitfall rule in the nat POSTROUTING chain (append the fixed one, delete the
/// old). Returns the rules rewritten; a rule iptables refuses is skipped with its reason.
fn fix_masquerade(bad: &[String], network: Subnet) -> Result<Vec<String>, MasqError> {
    let mut fixed = Vec::new();
    for rule in bad {
        let new = fixed_rule(rule, network);
        // Add the fixed rule before removing the old one: never a moment without either.
        if edit_nat("-A", &new)? && edit_nat("-D", rule)? {
            fixed.push(new);
        }
    }
    Ok(fixed)
}

/// Appends (`-A`) or deletes (`-D`) an `-A <chain> ...` rule of the nat table; whether
/// iptables took it.
fn edit_nat(op: &str, rule: &str) -> Result<bool, MasqError> {
    let mut args = vec!["-t", "nat", op];
    args.extend(rule.trim_start_matches("-A ").split_whitespace());
    let out = iptables(Family::V4, &args)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        warn!(rule = %rule, op, stderr = %stderr.trim(), "iptables refused a masquerade rule change");
    }
    Ok(out.status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_docker_rule_and_fixes_it() {
        let n: Subnet = "10.1.0.0/16".parse().unwrap();
        let s: Subnet = "10.1.2.0/24".parse().unwrap();
        let post = "-P POSTROUTING ACCEPT\n\
-A POSTROUTING -s 10.1.2.0/24 ! -o docker0 -j MASQUERADE\n\
-A POSTROUTING -s 10.1.2.0/24 ! -d 10.1.0.0/16 -j MASQUERADE\n\
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE\n\
-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n";
        let bad = masquerade_pitfalls(post, s, n);
        assert_eq!(
            bad,
            ["-A POSTROUTING -s 10.1.2.0/24 ! -o docker0 -j MASQUERADE"]
        );
        assert_eq!(
            fixed_rule(&bad[0], n),
            "-A POSTROUTING -s 10.1.2.0/24 ! -o docker0 ! -d 10.1.0.0/16 -j MASQUERADE"
        );
        assert!(masquerade_pitfalls(&fixed_rule(&bad[0], n), s, n).is_empty());
    }

    #[test]
    fn rules_follow_flannel() {
        let both = Rules {
            masquerade: true,
            forward: true,
        };
        let t = restore_text(
            "10.1.0.0/16".parse().unwrap(),
            "10.1.2.0/24".parse().unwrap(),
            both,
            true,
        );
        let rules: Vec<&str> = t.lines().filter(|l| l.starts_with("-A")).collect();
        assert_eq!(rules.len(), 8);
        assert!(rules[1].contains("-s 10.1.2.0/24 -d 10.1.0.0/16") && rules[1].ends_with("RETURN"));
        assert!(rules[3].contains("! -s 10.1.0.0/16 -d 10.1.2.0/24"));
        assert!(rules[4].contains("-s 10.1.0.0/16 ! -d 224.0.0.0/4"));
        assert!(rules[4].ends_with("MASQUERADE --random-fully"));
        assert!(rules[5].contains("! -s 10.1.0.0/16 -d 10.1.0.0/16"));
        assert!(rules[6].contains("FLANNEL-FWD -s 10.1.0.0/16") && rules[6].ends_with("ACCEPT"));
        assert!(t.contains(":FLANNEL-POSTRTG - [0:0]") && t.contains(":FLANNEL-FWD - [0:0]"));
        assert_eq!(t.matches("COMMIT").count(), 2);
        let plain = restore_text(
            "10.1.0.0/16".parse().unwrap(),
            "10.1.2.0/24".parse().unwrap(),
            both,
            false,
        );
        assert!(!plain.contains("random-fully"));
        // Forward rules alone (flanneld's default without -ip-masq): no nat table at all.
        let fwd = restore_text(
            "10.1.0.0/16".parse().unwrap(),
            "10.1.2.0/24".parse().unwrap(),
            Rules {
                masquerade: false,
                forward: true,
            },
            true,
        );
        assert!(!fwd.contains("*nat") && fwd.contains(":FLANNEL-FWD - [0:0]"));
        assert_eq!(fwd.lines().filter(|l| l.starts_with("-A")).count(), 2);
    }

    #[test]
    fn ipv4_text_is_unchanged() {
        let both = Rules {
            masquerade: true,
            forward: true,
        };
        let t = restore_text(
            "10.1.0.0/16".parse().unwrap(),
            "10.1.2.0/24".parse().unwrap(),
            both,
            true,
        );
        assert_eq!(
            t,
            "*nat\n\
:FLANNEL-POSTRTG - [0:0]\n\
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"flanneld masq\" -j RETURN\n\
-A FLANNEL-POSTRTG -s 10.1.2.0/24 -d 10.1.0.0/16 -m comment --comment \"flanneld masq\" -j RETURN\n\
-A FLANNEL-POSTRTG -s 10.1.0.0/16 -d 10.1.2.0/24 -m comment --comment \"flanneld masq\" -j RETURN\n\
-A FLANNEL-POSTRTG ! -s 10.1.0.0/16 -d 10.1.2.0/24 -m comment --comment \"flanneld masq\" -j RETURN\n\
-A FLANNEL-POSTRTG -s 10.1.0.0/16 ! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully\n\
-A FLANNEL-POSTRTG ! -s 10.1.0.0/16 -d 10.1.0.0/16 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully\n\
COMMIT\n\
*filter\n\
:FLANNEL-FWD - [0:0]\n\
-A FLANNEL-FWD -s 10.1.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT\n\
-A FLANNEL-FWD -d 10.1.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT\n\
COMMIT\n"
        );
    }

    #[test]
    fn ipv6_rules_mirror_the_ipv4_ones() {
        let (n, s): (Subnet6, Subnet6) = (
            "fd10::/48".parse().unwrap(),
            "fd10:0:0:2::/64".parse().unwrap(),
        );
        let both = Rules {
            masquerade: true,
            forward: true,
        };
        // The IPv4 layout and ForwardRules on the IPv6Network, flanneld's comments.
        assert_eq!(
            restore_text6(n, s, both, true),
            "*nat\n\
:FLANNEL-POSTRTG - [0:0]\n\
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"flanneld masq\" -j RETURN\n\
-A FLANNEL-POSTRTG -s fd10:0:0:2::/64 -d fd10::/48 -m comment --comment \"flanneld masq\" -j RETURN\n\
-A FLANNEL-POSTRTG -s fd10::/48 -d fd10:0:0:2::/64 -m comment --comment \"flanneld masq\" -j RETURN\n\
-A FLANNEL-POSTRTG ! -s fd10::/48 -d fd10:0:0:2::/64 -m comment --comment \"flanneld masq\" -j RETURN\n\
-A FLANNEL-POSTRTG -s fd10::/48 ! -d ff00::/8 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully\n\
-A FLANNEL-POSTRTG ! -s fd10::/48 -d fd10::/48 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully\n\
COMMIT\n\
*filter\n\
:FLANNEL-FWD - [0:0]\n\
-A FLANNEL-FWD -s fd10::/48 -m comment --comment \"flanneld forward\" -j ACCEPT\n\
-A FLANNEL-FWD -d fd10::/48 -m comment --comment \"flanneld forward\" -j ACCEPT\n\
COMMIT\n"
        );
        let plain = restore_text6(n, s, both, false);
        assert!(!plain.contains("random-fully"));
        assert_eq!(plain.matches("-j MASQUERADE\n").count(), 2);
        let fwd = restore_text6(
            n,
            s,
            Rules {
                masquerade: false,
                forward: true,
            },
            true,
        );
        assert!(!fwd.contains("*nat") && fwd.starts_with("*filter\n"));
        let masq_only = restore_text6(
            n,
            s,
            Rules {
                masquerade: true,
                forward: false,
            },
            false,
        );
        assert!(!masq_only.contains("*filter") && masq_only.starts_with("*nat\n"));
        assert_eq!(
            (Family::V6.iptables(), Family::V6.restore()),
            ("ip6tables", "ip6tables-restore")
        );
        assert_eq!(
            (Family::V4.iptables(), Family::V4.restore()),
            ("iptables", "iptables-restore")
        );
    }
}
