//! flannel's iptables rules. `FLANNEL-FWD` (`--iptables-forward-rules`, on by default, as in
//! flanneld, whether or not `--ip-masq` is set) accepts the Network in FORWARD, so pod traffic
//! crosses hosts whose FORWARD policy is DROP (docker's default). The masquerade rules
//! (`--ip-masq`): pod traffic leaving the overlay is masqueraded
//! to the node's address, pod-to-pod traffic keeps its source IP (the docker-style pitfall
//! this avoids: a plain `-s <pod subnet> -j MASQUERADE` rewrites pod-to-remote-pod traffic
//! too). Chains `FLANNEL-POSTRTG` (nat, from POSTROUTING) and `FLANNEL-FWD` (filter, from
//! FORWARD), the same names and rules as flanneld, so either can take over from the other.
//!
//! Applied with `iptables-restore --noflush`: declaring a chain flushes it, so the whole
//! chain is replaced in one transaction and rules of a previous network or subnet vanish.
//! iptables (legacy or nft backend, whichever the host uses) rather than nftables directly:
//! kube-proxy and every CNI on the host speak iptables, and mixing both layers on one node
//! makes rule order impossible to reason about.
//!
//! Also the docker-style pitfall itself in rules weft does not own: `weft run` warns about it
//! at start, or rewrites it with `--fix-masquerade` ([`check_pitfalls`]); `weft doctor`
//! reports it ([`masquerade_pitfalls`]). Every `iptables` command goes through one helper.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use tracing::{info, warn};

use crate::wire::Subnet;

/// The nat chain, as flanneld names it.
pub const NAT_CHAIN: &str = "FLANNEL-POSTRTG";
/// The filter chain, as flanneld names it.
pub const FWD_CHAIN: &str = "FLANNEL-FWD";
/// kube-proxy's masquerade mark: packets it marked are its business.
const KUBE_MARK: &str = "0x4000/0x4000";

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
    let mut out = String::new();
    if rules.masquerade {
        out.push_str(&nat_text(network, subnet, random_fully));
    }
    if rules.forward {
        out.push_str(&forward_text(network));
    }
    out
}

fn nat_text(network: Subnet, subnet: Subnet, random_fully: bool) -> String {
    let rf = if random_fully { " --random-fully" } else { "" };
    let (n, s) = (network.to_string(), subnet.to_string());
    format!(
        "*nat\n\
         :{NAT_CHAIN} - [0:0]\n\
         -A {NAT_CHAIN} -m mark --mark {KUBE_MARK} -m comment --comment \"flanneld masq\" -j RETURN\n\
         -A {NAT_CHAIN} -s {s} -d {n} -m comment --comment \"flanneld masq\" -j RETURN\n\
         -A {NAT_CHAIN} -s {n} -d {s} -m comment --comment \"flanneld masq\" -j RETURN\n\
         -A {NAT_CHAIN} ! -s {n} -d {s} -m comment --comment \"flanneld masq\" -j RETURN\n\
         -A {NAT_CHAIN} -s {n} ! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" -j MASQUERADE{rf}\n\
         -A {NAT_CHAIN} ! -s {n} -d {n} -m comment --comment \"flanneld masq\" -j MASQUERADE{rf}\n\
         COMMIT\n"
    )
}

fn forward_text(network: Subnet) -> String {
    let n = network.to_string();
    format!(
        "*filter\n\
         :{FWD_CHAIN} - [0:0]\n\
         -A {FWD_CHAIN} -s {n} -m comment --comment \"flanneld forward\" -j ACCEPT\n\
         -A {FWD_CHAIN} -d {n} -m comment --comment \"flanneld forward\" -j ACCEPT\n\
         COMMIT\n"
    )
}

/// Runs `iptables -w 5 <args>` (waiting up to 5 s for the xtables lock that kube-proxy and
/// others take) and returns what it printed; only failing to start it at all is an error.
fn iptables(args: &[&str]) -> Result<Output, MasqError> {
    Command::new("iptables")
        .args(["-w", "5"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| MasqError::Spawn {
            cmd: "iptables",
            source,
        })
}

/// `table`'s `chain` as `iptables -S` prints it (`-P ...` and `-A ...` lines).
pub fn list_rules(table: &str, chain: &str) -> Result<String, MasqError> {
    let out = iptables(&["-t", table, "-S", chain])?;
    if !out.status.success() {
        return Err(MasqError::Failed {
            cmd: "iptables",
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Feeds `text` to `iptables-restore -w 5 --noflush`.
fn iptables_restore(text: &str) -> Result<(), MasqError> {
    let cmd = "iptables-restore";
    let mut child = Command::new(cmd)
        .args(["-w", "5", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| MasqError::Spawn { cmd, source })?;
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(text.as_bytes())
            .map_err(|source| MasqError::Spawn { cmd, source })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| MasqError::Spawn { cmd, source })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(MasqError::Failed { cmd, stderr })
}

/// Makes sure `table`'s `from` chain jumps to `to` (first), adding the jump when missing.
fn ensure_jump(table: &str, from: &str, to: &str, comment: &str) -> Result<(), MasqError> {
    let rule = ["-m", "comment", "--comment", comment, "-j", to];
    let mut check = vec!["-t", table, "-C", from];
    check.extend_from_slice(&rule);
    // `iptables -C` answers "not found" with a failure: that is an answer, not an error.
    if !iptables(&check)?.status.success() {
        let mut insert = vec!["-t", table, "-I", from, "1"];
        insert.extend_from_slice(&rule);
        if !iptables(&insert)?.status.success() {
            return Err(MasqError::Failed {
                cmd: "iptables",
                stderr: format!("could not insert the jump from {table}/{from} to {to}"),
            });
        }
    }
    Ok(())
}

/// Writes the chains `rules` asks for (atomically replacing what they held) and their jumps.
/// Uses `--random-fully` when this iptables and kernel take it, else plain MASQUERADE.
pub fn apply(network: Subnet, subnet: Subnet, rules: Rules) -> Result<(), MasqError> {
    if !rules.any() {
        return Ok(());
    }
    if iptables_restore(&restore_text(network, subnet, rules, true)).is_err() {
        iptables_restore(&restore_text(network, subnet, rules, false))?;
    }
    if rules.masquerade {
        ensure_jump("nat", "POSTROUTING", NAT_CHAIN, "flanneld masq")?;
    }
    if rules.forward {
        ensure_jump("filter", "FORWARD", FWD_CHAIN, "flanneld forward")?;
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
    let Ok(post) = list_rules("nat", "POSTROUTING") else {
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
    let out = iptables(&args)?;
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
}
