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

use std::io::Write;
use std::process::{Command, Stdio};

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

fn run(cmd: &'static str, args: &[&str], stdin: Option<&str>) -> Result<bool, MasqError> {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| MasqError::Spawn { cmd, source })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|source| MasqError::Spawn { cmd, source })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| MasqError::Spawn { cmd, source })?;
    if out.status.success() {
        return Ok(true);
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if stdin.is_none() {
        // `iptables -C` answers "not found" with a failure: that is an answer, not an error.
        return Ok(false);
    }
    Err(MasqError::Failed { cmd, stderr })
}

/// Makes sure `table`'s `from` chain jumps to `to` (first), adding the jump when missing.
fn ensure_jump(table: &str, from: &str, to: &str, comment: &str) -> Result<(), MasqError> {
    let rule = ["-m", "comment", "--comment", comment, "-j", to];
    let mut check = vec!["-w", "5", "-t", table, "-C", from];
    check.extend_from_slice(&rule);
    if !run("iptables", &check, None)? {
        let mut insert = vec!["-w", "5", "-t", table, "-I", from, "1"];
        insert.extend_from_slice(&rule);
        if !run("iptables", &insert, None)? {
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
    let args = ["-w", "5", "--noflush"];
    if run(
        "iptables-restore",
        &args,
        Some(&restore_text(network, subnet, rules, true)),
    )
    .is_err()
    {
        run(
            "iptables-restore",
            &args,
            Some(&restore_text(network, subnet, rules, false)),
        )?;
    }
    if rules.masquerade {
        ensure_jump("nat", "POSTROUTING", NAT_CHAIN, "flanneld masq")?;
    }
    if rules.forward {
        ensure_jump("filter", "FORWARD", FWD_CHAIN, "flanneld forward")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
