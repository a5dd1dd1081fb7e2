//! From etcd records to the table the data plane reads: judging each record (logging an
//! unusable one once), the report of rejected and conflicting leases that rides with each
//! snapshot, publishing, and the rate-limited "lease table updated" line.

use std::sync::Arc;

use tokio::time::Instant;

use super::{Runner, PUBLISH_EVERY, TABLE_LOG_EVERY};
use crate::store::check::{self, LeaseProblem};
use crate::store::record::BackendRecord;
use crate::table::{
    Changes, Clash, Lease, LeaseKey, LeaseReport, LeaseTable, OtherVni, Peer, Peer6, RejectedLease,
};
use crate::wire::{Subnet, Subnet6};

/// How many reported-bad records to remember before starting afresh.
const MAX_WARNED: usize = 10_000;

impl Runner {
    /// Records that the lease under `key` is not used, logging it once per key and revision.
    fn reject(&mut self, key: String, rev: i64, problem: LeaseProblem) {
        if self.warned.len() > MAX_WARNED {
            // Forgetting only means a bad record may be reported once more.
            self.warned.clear();
        }
        self.other_vni.remove(&key);
        if self.warned.insert((key.clone(), rev)) {
            tracing::warn!(%key, revision = rev, reason = problem.label(), error = %problem, "skipping a lease record from etcd");
        }
        self.rejected.insert(key, problem);
    }

    /// Judges one key/value from etcd (`created` is the key's etcd create revision): the
    /// lease it gives, with its IPv4 half (none on an IPv6-only network) and, on a network
    /// with IPv6 whose key names an IPv6 subnet, its IPv6 half; or `Err` after recording why
    /// not. `Err` carries the key if it names subnets that fit the network, so that a bad
    /// update of a known lease keeps what we knew (one bad record never removes a working
    /// peer).
    pub(super) fn judge(
        &mut self,
        key: &[u8],
        value: &[u8],
        rev: i64,
        created: i64,
    ) -> Result<Lease, Option<LeaseKey>> {
        let j = check::judge(&self.keys, &self.config, key, value);
        let name = String::from_utf8_lossy(key).into_owned();
        match (j.subnet, j.verdict) {
            (Some(subnet), Ok(rec)) => {
                self.rejected.remove(&name);
                self.note_vni(name, rev, check::vni_mismatches(&self.config, &rec));
                let four = self.config.enable_ipv4.then(|| {
                    let mac = match rec.backend {
                        BackendRecord::Vxlan { vtep_mac, .. } => Some(vtep_mac),
                        _ => None,
                    };
                    Peer::new(subnet, rec.public_ip, mac, &self.local)
                });
                // check_lease_v6 made sure a dual-stack key's record has its IPv6 half.
                let six = match (&self.config.ipv6, j.subnet6, rec.public_ipv6) {
                    (Some(_), Some(s6), Some(ip6)) => {
                        let mac6 = rec.backend_v6.map(|b| b.vtep_mac);
                        Some(Peer6::new(s6, ip6, mac6, &self.local6))
                    }
                    _ => None,
                };
                Ok(Lease {
                    key: LeaseKey {
                        subnet,
                        subnet6: j.subnet6,
                    },
                    created,
                    peer: four,
                    peer6: six,
                })
            }
            (subnet, Err(problem)) => {
                self.reject(name, rev, problem);
                Err(subnet.map(|subnet| LeaseKey {
                    subnet,
                    subnet6: j.subnet6,
                }))
            }
            (None, Ok(_)) => Err(None),
        }
    }

    /// Remembers whether the usable lease under `key` names another VNI than ours, warning
    /// once per key and revision when it does.
    fn note_vni(&mut self, key: String, rev: i64, odd: Vec<(&'static str, u32)>) {
        if odd.is_empty() {
            self.other_vni.remove(&key);
            return;
        }
        if self.other_vni.get(&key) != Some(&odd) {
            let vnis: Vec<String> = odd.iter().map(|(f, v)| format!("{f} {v}")).collect();
            tracing::warn!(%key, revision = rev, theirs = %vnis.join(", "), ours = self.config.backend.vni.get(), "a lease names another VNI than this node's Backend.VNI: its node and this one drop each other's packets; run every node with one Backend.VNI (weft doctor says which)");
        }
        self.other_vni.insert(key, odd);
    }

    /// Records the keys that name a subnet another key holds (`clashes` from the peer set)
    /// as unused. They are listed under their canonical key, which is the key as stored
    /// unless its IPv6 part was written in a longer form.
    fn refuse(&mut self, clashes: Vec<Clash>) {
        for c in clashes {
            let name = self
                .keys
                .subnet_dual(&c.loser.subnet, c.loser.subnet6.as_ref());
            let holder = match c.holder {
                Some(k) => format!(
                    "the lease {}",
                    self.keys.subnet_dual(&k.subnet, k.subnet6.as_ref())
                ),
                None => "this node's own lease".to_string(),
            };
            self.reject(name, 0, LeaseProblem::SubnetTaken { holder });
        }
    }

    /// The report for the next snapshot `table`: rejected records, leases of another VNI,
    /// and PublicIPs that several usable leases name (ours among them: the table found the
    /// others while building its underlay index, so this costs O(conflicts), not
    /// O(leases)). A new or changed conflict is logged.
    fn build_report(&self, table: &LeaseTable) -> LeaseReport {
        let rejected = self
            .rejected
            .iter()
            .map(|(key, p)| RejectedLease {
                key: key.clone(),
                reason: p.label(),
                detail: p.to_string(),
            })
            .collect();
        // On an IPv6-only network our lease's IPv4 half is flannel's empty net, no address.
        let own4 = self.own.subnet4().map(|s| (s, self.own.record.public_ip));
        let conflicts = with_own(table.shared_public_ips(), own4, |ip| {
            table.lookup_underlay(ip).map(|p| p.subnet)
        });
        for (ip, subnets) in &conflicts {
            if !self.report.conflicts.contains(&(*ip, subnets.clone())) {
                let list: Vec<String> = subnets.iter().map(Subnet::to_string).collect();
                let ours = own4.is_some_and(|(_, own)| *ip == own);
                tracing::warn!(public_ip = %ip, subnets = %list.join(","), names_this_node = ours, "several leases name one PublicIP: packets from it are accepted for any of them, packets to them all go there; delete the stale record(s)");
            }
        }
        let own6 = self.own.subnet6.zip(self.own.public_ipv6());
        let conflicts6 = with_own(table.shared_public_ips6(), own6, |ip| {
            table.lookup_underlay6(ip).map(|p| p.subnet)
        });
        for (ip, subnets) in &conflicts6 {
            if !self.report.conflicts6.contains(&(*ip, subnets.clone())) {
                let list: Vec<String> = subnets.iter().map(Subnet6::to_string).collect();
                let ours = own6.is_some_and(|(_, own)| *ip == own);
                tracing::warn!(public_ipv6 = %ip, subnets6 = %list.join(","), names_this_node = ours, "several leases name one PublicIPv6: IPv6 packets from it are accepted for any of them, packets to them all go there; delete the stale record(s)");
            }
        }
        let other_vni = self
            .other_vni
            .iter()
            .flat_map(|(key, odd)| {
                odd.iter().map(|&(field, vni)| OtherVni {
                    key: key.clone(),
                    field,
                    vni,
                })
            })
            .collect();
        LeaseReport {
            rejected,
            conflicts,
            conflicts6,
            other_vni,
        }
    }

    /// Publishes a new snapshot at `revision` (0: unchanged) unless nothing changed, and
    /// counts `changes` towards the next "lease table updated" line.
    pub(super) fn publish(&mut self, revision: i64, mut changes: Changes) {
        if revision > 0 {
            self.revision = revision;
        }
        self.refuse(std::mem::take(&mut changes.clashes));
        changes += std::mem::take(&mut self.pending);
        self.publish_due = None;
        // The new snapshot, when the peers changed; otherwise the report is judged against
        // the table already out (the same peers), and a snapshot is built only if it differs.
        let fresh = (!changes.is_empty() || !self.published_once)
            .then(|| self.peers.snapshot(self.revision));
        let report = match &fresh {
            Some(t) => self.build_report(t),
            None => self.build_report(&self.shared.load_full()),
        };
        if changes.is_empty() && self.published_once && report == *self.report {
            return;
        }
        self.published_once = true;
        self.published_at = Some(Instant::now());
        self.state.changed();
        self.report = Arc::new(report);
        let snapshot = fresh.unwrap_or_else(|| self.peers.snapshot(self.revision));
        self.shared
            .publish(snapshot.with_report(self.report.clone()));
        self.unlogged += changes;
        self.flush_table_log();
    }

    /// Publishes `changes` (watch events) at once when no table went out within
    /// [`PUBLISH_EVERY`], else with whatever else arrives until then: a stream of single-lease
    /// events (a large cluster's joins, renewals, leaves) costs a table build per interval,
    /// not per event, and the first event of a quiet spell is not held back. Keys that name
    /// a held subnet are refused at once either way.
    pub(super) fn publish_soon(&mut self, revision: i64, mut changes: Changes) {
        if revision > 0 {
            self.revision = revision;
        }
        self.refuse(std::mem::take(&mut changes.clashes));
        self.pending += changes;
        let now = Instant::now();
        let due = self.published_at.map_or(now, |at| at + PUBLISH_EVERY);
        if due <= now {
            let pending = std::mem::take(&mut self.pending);
            self.publish(0, pending);
        } else {
            self.publish_due = Some(due);
        }
    }

    /// Publishes what waits, once its time has come.
    pub(super) fn publish_if_due(&mut self) {
        if self.publish_due.is_some_and(|at| at <= Instant::now()) {
            let pending = std::mem::take(&mut self.pending);
            self.publish(0, pending);
        }
    }

    /// Writes the summed table changes as one line, at most once per [`TABLE_LOG_EVERY`], so
    /// a burst of events gives one line, not one per event.
    pub(super) fn flush_table_log(&mut self) {
        let due = self
            .logged_at
            .is_none_or(|at| at.elapsed() >= TABLE_LOG_EVERY);
        if !due || (self.unlogged.is_empty() && self.logged_at.is_some()) {
            return;
        }
        let c = std::mem::take(&mut self.unlogged);
        self.logged_at = Some(Instant::now());
        tracing::info!(
            added = c.added,
            updated = c.updated,
            removed = c.removed,
            peers = self.peers.len(),
            added6 = c.added6,
            updated6 = c.updated6,
            removed6 = c.removed6,
            peers6 = self.peers.len6(),
            revision = self.revision,
            "lease table updated"
        );
    }
}

/// The PublicIP(v6)s several leases name: those among the peers (`shared`, sorted by
/// address), and the one this node's own lease (`own`: subnet and address) shares with a
/// peer, whose subnet `holder` gives. Sorted by address, each with its subnets sorted.
fn with_own<A: Ord + Copy, S: Ord + Copy>(
    shared: &[(A, Vec<S>)],
    own: Option<(S, A)>,
    holder: impl Fn(A) -> Option<S>,
) -> Vec<(A, Vec<S>)> {
    let mut out = shared.to_vec();
    if let Some((subnet, ip)) = own {
        match out.binary_search_by_key(&ip, |(a, _)| *a) {
            Ok(i) => {
                out[i].1.push(subnet);
                out[i].1.sort_unstable();
            }
            Err(i) => {
                if let Some(peer) = holder(ip) {
                    let mut subnets = vec![peer, subnet];
                    subnets.sort_unstable();
                    out.insert(i, (ip, subnets));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::with_own;

    #[test]
    fn the_own_lease_joins_the_conflicts_it_shares() {
        let shared = vec![(2u8, vec![20u8, 21]), (5, vec![50, 52])];
        // Ours shares 5 with two peers, then 3 with one peer (holder), then nobody's.
        assert_eq!(
            with_own(&shared, Some((51, 5)), |_| None),
            [(2, vec![20, 21]), (5, vec![50, 51, 52])]
        );
        assert_eq!(
            with_own(&shared, Some((31, 3)), |ip| (ip == 3).then_some(30)),
            [(2, vec![20, 21]), (3, vec![30, 31]), (5, vec![50, 52])]
        );
        assert_eq!(with_own(&shared, Some((9, 9)), |_| None), shared);
        assert_eq!(with_own(&shared, None, |_| Some(1)), shared);
    }
}
