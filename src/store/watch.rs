//! The running store: one task that watches the leases, renews ours and publishes tables.
//!
//! Watch protocol: list `<prefix>/subnets/` at revision R, watch from R+1. When the watch
//! breaks (stream error, etcd gone, compaction past our revision) the task lists again and
//! diffs against what it had, so no event is lost and nothing is removed by mistake. While
//! etcd is unreachable the published table stays as it was.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, WatchOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::check::{self, LeaseProblem};
use super::lease::{self, acquire_lease, read_config, AcquireRequest, OwnLease};
use super::record::{BackendRecord, LeaseRecord};
use super::subnet_env::{read_previous_subnet, SubnetEnv};
use super::{connect, EtcdOptions, Keys, StoreError, LEASE_TTL};
use crate::config::NetworkConfig;
use crate::table::{
    Changes, LeaseReport, LeaseTable, LocalVtep, Peer, PeerEvent, PeerSet, RejectedLease,
    SharedTable,
};
use crate::wire::{EthernetAddress, Subnet};

/// First delay before retrying etcd after a failure; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest delay between etcd retries.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How often a missing or invalid network config is read again.
const CONFIG_RETRY: Duration = Duration::from_secs(1);
/// How soon a failed renewal is tried again.
const RENEW_RETRY: Duration = Duration::from_secs(60);
/// How soon a failed re-creation of our deleted lease is tried again.
const RECREATE_RETRY: Duration = Duration::from_millis(500);
/// A repeated, unchanged warning is logged again after this long.
const REPEAT_LOG: Duration = Duration::from_secs(30);
/// How many reported-bad records to remember before starting afresh.
const MAX_WARNED: usize = 10_000;
/// At most one "lease table updated" line per this interval; changes in between are summed.
const TABLE_LOG_EVERY: Duration = Duration::from_secs(1);

/// What the store needs to run: flanneld's flags, resolved.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How to reach etcd and which prefix to use.
    pub etcd: EtcdOptions,
    /// This node's underlay address, written as `PublicIP`.
    pub public_ip: Ipv4Addr,
    /// Where subnet.env lives (read at start for the previous subnet, then written).
    pub subnet_file: PathBuf,
    /// Renew this long before the lease expires (`--subnet-lease-renew-margin`).
    pub renew_margin: Duration,
    /// The lease TTL to ask for (flannel: 24 h).
    pub lease_ttl: Duration,
    /// The underlay interface's MTU, from which FLANNEL_MTU is derived.
    pub underlay_mtu: u32,
    /// FLANNEL_IPMASQ (`--ip-masq`).
    pub ip_masq: bool,
    /// A VTEP MAC to use when no existing lease names one (`None`: derive a stable one).
    pub vtep_mac: Option<EthernetAddress>,
}

impl StoreOptions {
    /// Options with flanneld's defaults for everything but etcd and the public IP.
    pub fn new(etcd: EtcdOptions, public_ip: Ipv4Addr) -> StoreOptions {
        StoreOptions {
            etcd,
            public_ip,
            subnet_file: PathBuf::from("/run/flannel/subnet.env"),
            renew_margin: Duration::from_secs(60 * 60),
            lease_ttl: LEASE_TTL,
            underlay_mtu: 1500,
            ip_masq: false,
            vtep_mac: None,
        }
    }
}

/// Entry point: see [`Store::start`].
#[derive(Debug)]
pub struct Store;

/// A running store. Dropping it (or [`StoreHandle::shutdown`]) stops the task; the lease
/// stays in etcd until it expires, so a restarted node gets it back.
#[derive(Debug)]
pub struct StoreHandle {
    config: NetworkConfig,
    own: watch::Receiver<OwnLease>,
    etcd_up: watch::Receiver<bool>,
    stop: Option<watch::Sender<bool>>,
    task: Option<JoinHandle<()>>,
}

impl StoreHandle {
    /// The network config in force.
    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// This node's current lease.
    pub fn own_lease(&self) -> OwnLease {
        self.own.borrow().clone()
    }

    /// A receiver that sees every change of this node's lease (re-creation, renewal).
    pub fn subscribe_own_lease(&self) -> watch::Receiver<OwnLease> {
        self.own.clone()
    }

    /// Whether the last etcd request succeeded.
    pub fn etcd_reachable(&self) -> bool {
        *self.etcd_up.borrow()
    }

    /// Stops the task and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for StoreHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
    }
}

/// Logs a recurring warning once per change of its text, and again every [`REPEAT_LOG`].
#[derive(Debug, Default)]
struct RepeatLog {
    last: Option<(String, Instant)>,
}

impl RepeatLog {
    fn should_log(&mut self, msg: &str) -> bool {
        let now = Instant::now();
        match &self.last {
            Some((m, at)) if m == msg && now.duration_since(*at) < REPEAT_LOG => false,
            _ => {
                self.last = Some((msg.to_string(), now));
                true
            }
        }
    }

    fn clear(&mut self) {
        self.last = None;
    }
}

async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.changed() => true,
    }
}

impl Store {
    /// Connects, waits for a valid network config (retrying every second, logging why),
    /// acquires this node's lease, writes subnet.env and starts watching and renewing.
    /// Remote leases are published into `shared`. Returns once the lease is held.
    ///
    /// Fails only on problems retrying cannot fix: bad TLS/endpoint setup, no free subnet.
    pub async fn start(opts: StoreOptions, shared: SharedTable) -> Result<StoreHandle, StoreError> {
        let mut log = RepeatLog::default();
        let mut backoff = MIN_BACKOFF;
        let mut client = loop {
            match connect(&opts.etcd).await {
                Ok(c) => break c,
                Err(e) if e.is_transient() => {
                    let msg = e.to_string();
                    if log.should_log(&msg) {
                        tracing::warn!(error = %msg, "cannot reach etcd yet; retrying");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => return Err(e),
            }
        };
        let keys = Keys::new(&opts.etcd.prefix);
        log.clear();
        let config = loop {
            match read_config(&mut client, &keys).await {
                Ok(c) => break c,
                Err(e) => {
                    let msg = e.to_string();
                    if log.should_log(&msg) {
                        tracing::warn!(error = %msg, "no usable network config yet; retrying every second");
                    }
                    tokio::time::sleep(CONFIG_RETRY).await;
                }
            }
        };
        tracing::info!(network = %config.network, subnet_len = config.subnet_len, backend = config.backend.kind.as_str(), "network config loaded");

        let previous_subnet = read_previous_subnet(&opts.subnet_file);
        let req = AcquireRequest {
            public_ip: opts.public_ip,
            previous_subnet,
            ttl: opts.lease_ttl,
            vtep_mac: opts.vtep_mac,
        };
        backoff = MIN_BACKOFF;
        log.clear();
        let own = loop {
            match acquire_lease(&mut client, &keys, &config, &req).await {
                Ok(own) => break own,
                Err(e) if e.is_transient() => {
                    let msg = e.to_string();
                    if log.should_log(&msg) {
                        tracing::warn!(error = %msg, "acquiring a lease failed; retrying");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => return Err(e),
            }
        };
        write_subnet_env(&opts, &config, own.subnet)?;

        let local = LocalVtep {
            vni: config.backend.vni,
            mac: own.vtep_mac().unwrap_or_default(),
            port: config.backend.port,
        };
        shared.publish(LeaseTable::empty(config.subnet_len));
        let (own_tx, own_rx) = watch::channel(own.clone());
        let (up_tx, up_rx) = watch::channel(true);
        let (stop_tx, stop_rx) = watch::channel(false);
        let runner = Runner {
            renew_at: renew_deadline(&own, &opts),
            client,
            keys,
            config: config.clone(),
            opts,
            local,
            peers: PeerSet::new(config.subnet_len),
            own,
            own_tx,
            up_tx,
            shared,
            warned: HashSet::new(),
            rejected: BTreeMap::new(),
            report: Arc::default(),
            own_missing: false,
            own_damaged: false,
            etcd_log: RepeatLog::default(),
            published_once: false,
            revision: 0,
            unlogged: Changes::default(),
            logged_at: None,
        };
        let task = tokio::spawn(runner.run(stop_rx));
        Ok(StoreHandle {
            config,
            own: own_rx,
            etcd_up: up_rx,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }
}

fn write_subnet_env(
    opts: &StoreOptions,
    config: &NetworkConfig,
    subnet: Subnet,
) -> Result<(), StoreError> {
    let env = SubnetEnv {
        network: config.network,
        subnet,
        mtu: config.overlay_mtu(opts.underlay_mtu),
        ip_masq: opts.ip_masq,
    };
    env.write(&opts.subnet_file)?;
    Ok(())
}

/// When to renew: `margin` before expiry, or half-way when the TTL is shorter than that.
fn renew_deadline(own: &OwnLease, opts: &StoreOptions) -> Instant {
    let lead = if opts.renew_margin < opts.lease_ttl {
        opts.renew_margin
    } else {
        opts.lease_ttl / 2
    };
    own.expires_at
        .checked_sub(lead)
        .unwrap_or_else(Instant::now)
}

/// Why the watch loop stopped reading a stream.
enum Wake {
    Stop,
    Timer,
    Message(Result<Option<etcd_client::WatchResponse>, etcd_client::Error>),
}

struct Runner {
    client: Client,
    keys: Keys,
    config: NetworkConfig,
    opts: StoreOptions,
    local: LocalVtep,
    peers: PeerSet,
    own: OwnLease,
    own_tx: watch::Sender<OwnLease>,
    up_tx: watch::Sender<bool>,
    shared: SharedTable,
    /// `(key, mod_revision)` of records already reported as unusable.
    warned: HashSet<(String, i64)>,
    /// Records under the subnets prefix that are not used, by key.
    rejected: BTreeMap<String, LeaseProblem>,
    /// The report attached to the last published table.
    report: Arc<LeaseReport>,
    renew_at: Instant,
    own_missing: bool,
    /// Our key was overwritten and writing our record back failed: retry on the timer.
    own_damaged: bool,
    etcd_log: RepeatLog,
    published_once: bool,
    /// The etcd revision the published table reflects.
    revision: i64,
    /// Table changes not yet reported in a log line.
    unlogged: Changes,
    /// When the last "lease table updated" line was written.
    logged_at: Option<Instant>,
}

impl Runner {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let since = match self.resync().await {
                Ok(rev) => rev + 1,
                Err(e) => {
                    self.etcd_lost(&e.to_string());
                    if sleep_or_stop(backoff, &mut stop).await {
                        return;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            let dir = self.keys.root();
            let opts = WatchOptions::new().with_prefix().with_start_revision(since);
            let mut stream = match self.client.watch(dir.as_str(), Some(opts)).await {
                Ok(s) => s,
                Err(e) => {
                    self.etcd_lost(&format!("opening the watch: {e}"));
                    if sleep_or_stop(backoff, &mut stop).await {
                        return;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            let opened = Instant::now();
            loop {
                let deadline = self.next_deadline();
                let wake = tokio::select! {
                    _ = stop.changed() => Wake::Stop,
                    _ = tokio::time::sleep_until(deadline) => Wake::Timer,
                    m = stream.message() => Wake::Message(m),
                };
                match wake {
                    Wake::Stop => return,
                    Wake::Timer => self.on_timer().await,
                    Wake::Message(Ok(Some(resp))) => {
                        if resp.compact_revision() > 0 || resp.canceled() {
                            tracing::warn!(
                                compact_revision = resp.compact_revision(),
                                reason = resp.cancel_reason(),
                                "lease watch fell behind etcd compaction or was canceled; re-listing"
                            );
                            break;
                        }
                        self.etcd_back();
                        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
                        self.on_events(resp.events(), rev).await;
                    }
                    Wake::Message(Ok(None)) => {
                        self.etcd_lost("the lease watch stream ended");
                        break;
                    }
                    Wake::Message(Err(e)) => {
                        self.etcd_lost(&format!("the lease watch failed: {e}"));
                        break;
                    }
                }
            }
            // A watch that breaks at once again and again must not spin.
            if opened.elapsed() < Duration::from_secs(1) {
                if sleep_or_stop(backoff, &mut stop).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            } else {
                backoff = MIN_BACKOFF;
            }
        }
    }

    fn next_deadline(&self) -> Instant {
        let mut at = self.renew_at;
        if self.own_missing || self.own_damaged {
            at = at.min(Instant::now() + RECREATE_RETRY);
        }
        if let (false, Some(logged)) = (self.unlogged.is_empty(), self.logged_at) {
            at = at.min(logged + TABLE_LOG_EVERY);
        }
        at
    }

    fn etcd_lost(&mut self, why: &str) {
        if *self.up_tx.borrow() {
            tracing::warn!(error = %why, peers = self.peers.len(), "etcd unreachable; keeping the current lease table and retrying");
            self.etcd_log.should_log(why);
            let _ = self.up_tx.send(false);
        } else if self.etcd_log.should_log(why) {
            tracing::warn!(error = %why, "etcd still unreachable");
        }
    }

    fn etcd_back(&mut self) {
        if !*self.up_tx.borrow() {
            tracing::info!("etcd reachable again");
            self.etcd_log.clear();
            let _ = self.up_tx.send(true);
        }
    }

    /// Records that the lease under `key` is not used, logging it once per key and revision.
    fn reject(&mut self, key: String, rev: i64, problem: LeaseProblem) {
        if self.warned.len() > MAX_WARNED {
            // Forgetting only means a bad record may be reported once more.
            self.warned.clear();
        }
        if self.warned.insert((key.clone(), rev)) {
            tracing::warn!(%key, revision = rev, reason = problem.label(), error = %problem, "skipping a lease record from etcd");
        }
        self.rejected.insert(key, problem);
    }

    /// Judges one key/value from etcd: the peer it gives, or `None` after recording why not.
    /// `Err` carries the subnet the key names, if any, so that a bad update of a known lease
    /// keeps what we knew (one bad record never removes a working peer).
    fn judge(&mut self, key: &[u8], value: &[u8], rev: i64) -> Result<Peer, Option<Subnet>> {
        let j = check::judge(&self.keys, &self.config, key, value);
        let name = String::from_utf8_lossy(key).into_owned();
        match (j.subnet, j.verdict) {
            (Some(subnet), Ok(rec)) => {
                self.rejected.remove(&name);
                let mac = match rec.backend {
                    BackendRecord::Vxlan { vtep_mac, .. } => Some(vtep_mac),
                    _ => None,
                };
                Ok(Peer::new(subnet, rec.public_ip, mac, &self.local))
            }
            (subnet, Err(problem)) => {
                self.reject(name, rev, problem);
                Err(subnet)
            }
            (None, Ok(_)) => Err(None),
        }
    }

    /// The report for the next snapshot: rejected records, and PublicIPs that several usable
    /// leases name (ours among them). A new or changed conflict is logged.
    fn build_report(&self) -> LeaseReport {
        let rejected = self
            .rejected
            .iter()
            .map(|(key, p)| RejectedLease {
                key: key.clone(),
                reason: p.label(),
                detail: p.to_string(),
            })
            .collect();
        let conflicts: Vec<(Ipv4Addr, Vec<Subnet>)> = check::conflicts(
            self.peers
                .iter()
                .map(|p| (p.subnet, p.public_ip))
                .chain([(self.own.subnet, self.own.record.public_ip)]),
        )
        .into_iter()
        .collect();
        for (ip, subnets) in &conflicts {
            if !self
                .report
                .conflicts
                .iter()
                .any(|(i, s)| i == ip && s == subnets)
            {
                let list: Vec<String> = subnets.iter().map(Subnet::to_string).collect();
                let ours = *ip == self.own.record.public_ip;
                tracing::warn!(public_ip = %ip, subnets = %list.join(","), names_this_node = ours, "several leases name one PublicIP: packets from it are accepted for any of them, packets to them all go there; delete the stale record(s)");
            }
        }
        LeaseReport {
            rejected,
            conflicts,
        }
    }

    fn publish(&mut self, revision: i64, changes: Changes) {
        if revision > 0 {
            self.revision = revision;
        }
        let report = self.build_report();
        if changes.is_empty() && self.published_once && report == *self.report {
            return;
        }
        self.published_once = true;
        self.report = Arc::new(report);
        self.shared.publish(
            self.peers
                .snapshot(self.revision)
                .with_report(self.report.clone()),
        );
        self.unlogged.added += changes.added;
        self.unlogged.updated += changes.updated;
        self.unlogged.removed += changes.removed;
        self.flush_table_log();
    }

    /// Writes the summed table changes as one line, at most once per [`TABLE_LOG_EVERY`], so
    /// a burst of events gives one line, not one per event.
    fn flush_table_log(&mut self) {
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
            revision = self.revision,
            "lease table updated"
        );
    }

    /// Lists every lease, diffs against the current set, publishes; returns the revision.
    async fn resync(&mut self) -> Result<i64, StoreError> {
        let (listed, revision) = lease::list_raw(&mut self.client, &self.keys).await?;
        self.etcd_back();
        let own_key = self.keys.subnet(&self.own.subnet);
        let mut own_kv = None;
        let mut next = Vec::with_capacity(listed.len());
        self.rejected.clear();
        for kv in listed {
            if kv.key == own_key.as_bytes() {
                own_kv = Some(kv);
                continue;
            }
            match self.judge(&kv.key, &kv.value, kv.mod_revision) {
                Ok(p) => next.push(p),
                // An unusable update never removes what we knew about that subnet.
                Err(Some(subnet)) => next.extend(self.peers.get(&subnet).copied()),
                Err(None) => {}
            }
        }
        let changes = self.peers.replace(next);
        self.publish(revision, changes);
        match own_kv {
            None => self.recreate_own().await,
            Some(kv) if !self.is_own(&kv.value, kv.etcd_lease, kv.mod_revision) => {
                self.restore_own(&kv.value).await
            }
            Some(_) => {}
        }
        Ok(revision)
    }

    /// Whether the value of our key at `rev` is ours: our record on our etcd lease, or a
    /// write at or before our last one (so an old event never triggers a repair).
    fn is_own(&self, value: &[u8], etcd_lease: i64, rev: i64) -> bool {
        rev <= self.own.revision
            || (etcd_lease == self.own.etcd_lease
                && LeaseRecord::parse(value).is_ok_and(|r| r == self.own.record))
    }

    async fn on_events(&mut self, events: &[etcd_client::Event], revision: i64) {
        let mut batch = Vec::with_capacity(events.len());
        let mut own_deleted = false;
        let mut own_overwritten: Option<Vec<u8>> = None;
        let own_key = self.keys.subnet(&self.own.subnet);
        let config_key = self.keys.config();
        let subnets_dir = self.keys.subnets_dir();
        for ev in events {
            let Some(kv) = ev.kv() else { continue };
            if kv.key() == config_key.as_bytes() {
                self.on_config_event(ev.event_type(), kv.value());
                continue;
            }
            if !kv.key().starts_with(subnets_dir.as_bytes()) {
                continue;
            }
            if kv.key() == own_key.as_bytes() {
                match ev.event_type() {
                    EventType::Delete => own_deleted = true,
                    EventType::Put => {
                        if !self.is_own(kv.value(), kv.lease(), kv.mod_revision()) {
                            own_overwritten = Some(kv.value().to_vec());
                        }
                    }
                }
                continue;
            }
            match ev.event_type() {
                EventType::Delete => {
                    self.rejected
                        .remove(String::from_utf8_lossy(kv.key()).as_ref());
                    if let Some(subnet) = self.keys.parse_subnet_key(kv.key()) {
                        batch.push(PeerEvent::Remove(subnet));
                    }
                }
                EventType::Put => {
                    if let Ok(p) = self.judge(kv.key(), kv.value(), kv.mod_revision()) {
                        batch.push(PeerEvent::Upsert(p));
                    }
                }
            }
        }
        let changes = self.peers.apply(batch);
        self.publish(revision, changes);
        if own_deleted {
            tracing::warn!(subnet = %self.own.subnet, "this node's lease was deleted from etcd; re-creating it");
            self.recreate_own().await;
        } else if let Some(value) = own_overwritten {
            self.restore_own(&value).await;
        }
    }

    /// The network config changed in etcd while we run: say what changed. The node keeps the
    /// config it started with (as flanneld does); a restart applies the new one.
    fn on_config_event(&mut self, kind: EventType, value: &[u8]) {
        let now = match kind {
            EventType::Delete => Err("it was deleted".to_string()),
            EventType::Put => std::str::from_utf8(value)
                .map_err(|e| e.to_string())
                .and_then(|t| NetworkConfig::parse(t).map_err(|e| e.to_string())),
        };
        match now {
            Ok(next) => {
                let changes = next.changes_since(&self.config);
                if changes.is_empty() {
                    tracing::info!("network config rewritten in etcd without a change");
                } else {
                    tracing::warn!(changes = %changes.join(", "), "network config changed in etcd; this node keeps running with the config it started with: restart it to apply the change");
                }
            }
            Err(why) => {
                tracing::warn!(error = %why, "network config in etcd is no longer usable; this node keeps running with the config it started with");
            }
        }
    }

    async fn on_timer(&mut self) {
        self.flush_table_log();
        if self.own_missing {
            self.recreate_own().await;
        }
        if self.own_damaged {
            self.restore_own(b"").await;
        }
        if Instant::now() >= self.renew_at {
            match lease::renew(&mut self.client, &self.keys, &self.own, self.opts.lease_ttl).await {
                Ok(next) => {
                    tracing::info!(subnet = %next.subnet, "lease renewed");
                    self.set_own(next);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "renewing the lease failed; retrying in a minute");
                    self.renew_at = Instant::now() + RENEW_RETRY;
                }
            }
        }
    }

    fn set_own(&mut self, own: OwnLease) {
        self.renew_at = renew_deadline(&own, &self.opts);
        self.own = own.clone();
        self.own_missing = false;
        self.own_damaged = false;
        let _ = self.own_tx.send(own);
    }

    /// Someone overwrote our key (another PublicIP, garbage, our record without our TTL): the
    /// node owns its lease, so write our record back with a fresh grant and retire the old one.
    /// On failure the next timer tick tries again.
    async fn restore_own(&mut self, found: &[u8]) {
        if !self.own_damaged {
            let found = String::from_utf8_lossy(&found[..found.len().min(200)]).into_owned();
            tracing::warn!(subnet = %self.own.subnet, found = %found, "this node's lease was overwritten in etcd; writing this node's record back");
        }
        let old = self.own.etcd_lease;
        match lease::put_with_fresh_grant(
            &mut self.client,
            &self.keys,
            self.own.subnet,
            self.own.record.clone(),
            self.opts.lease_ttl,
        )
        .await
        {
            Ok(own) => {
                lease::revoke_quietly(&mut self.client, old).await;
                tracing::info!(subnet = %own.subnet, "this node's lease record restored");
                self.set_own(own);
            }
            Err(e) => {
                tracing::warn!(error = %e, "restoring this node's lease failed; retrying");
                self.own_damaged = true;
            }
        }
    }

    /// Our key is gone (etcd data loss, expiry, an operator): take the same subnet back at
    /// once; if another node got it first, acquire a new one and rewrite subnet.env.
    async fn recreate_own(&mut self) {
        let subnet = self.own.subnet;
        let created = lease::create_if_absent(
            &mut self.client,
            &self.keys,
            subnet,
            self.own.record.clone(),
            self.opts.lease_ttl,
        )
        .await;
        match created {
            Ok(Some(own)) => {
                tracing::info!(%subnet, "re-created this node's lease");
                self.set_own(own);
            }
            Ok(None) => {
                let req = AcquireRequest {
                    public_ip: self.opts.public_ip,
                    previous_subnet: Some(subnet),
                    ttl: self.opts.lease_ttl,
                    vtep_mac: self.own.vtep_mac(),
                };
                match acquire_lease(&mut self.client, &self.keys, &self.config, &req).await {
                    Ok(own) => {
                        if own.subnet != subnet {
                            tracing::warn!(old = %subnet, new = %own.subnet, "this node's subnet was taken by another node; moved to a new subnet");
                            if let Err(e) = write_subnet_env(&self.opts, &self.config, own.subnet) {
                                tracing::error!(error = %e, "writing subnet.env failed");
                            }
                            let changes = self.peers.apply([PeerEvent::Remove(own.subnet)]);
                            self.publish(self.revision, changes);
                        }
                        self.set_own(own);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "re-acquiring this node's lease failed; retrying");
                        self.own_missing = true;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(%subnet, error = %e, "re-creating this node's lease failed; retrying");
                self.own_missing = true;
            }
        }
    }
}
