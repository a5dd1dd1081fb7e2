//! The running store: one task that watches the leases, renews ours and publishes tables.
//!
//! Watch protocol: list `<prefix>/subnets/` at revision R, watch from R+1. When the watch
//! breaks (stream error, etcd gone, compaction past our revision) the task lists again and
//! diffs against what it had, so no event is lost and nothing is removed by mistake. While
//! etcd is unreachable the published table stays as it was.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Client, EventType, WatchOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::lease::{self, acquire_lease, read_config, AcquireRequest, OwnLease};
use super::record::{BackendRecord, LeaseRecord};
use super::subnet_env::{read_previous_subnet, SubnetEnv};
use super::{connect, EtcdOptions, Keys, StoreError, LEASE_TTL};
use crate::config::{BackendType, NetworkConfig};
use crate::table::{Changes, LeaseTable, LocalVtep, Peer, PeerEvent, PeerSet, SharedTable};
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
            own_missing: false,
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
    /// `(subnet, mod_revision)` of records already reported as unusable.
    warned: HashSet<(Subnet, i64)>,
    renew_at: Instant,
    own_missing: bool,
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
            let dir = self.keys.subnets_dir();
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
        if self.own_missing {
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

    /// Turns a record into a table entry, if it suits our backend.
    fn peer_for(&mut self, subnet: Subnet, rec: &LeaseRecord, rev: i64) -> Option<Peer> {
        if self.warned.len() > MAX_WARNED {
            // Forgetting only means a bad record may be reported once more.
            self.warned.clear();
        }
        if subnet.prefix_len() != self.config.subnet_len {
            if self.warned.insert((subnet, rev)) {
                tracing::warn!(%subnet, subnet_len = self.config.subnet_len, "ignoring a lease whose prefix length differs from the network's SubnetLen");
            }
            return None;
        }
        let mac = match (self.config.backend.kind, &rec.backend) {
            (BackendType::Vxlan, BackendRecord::Vxlan { vtep_mac, .. }) => Some(*vtep_mac),
            (BackendType::HostGw, BackendRecord::HostGw) | (BackendType::Udp, _) => None,
            (kind, other) => {
                if self.warned.insert((subnet, rev)) {
                    tracing::warn!(%subnet, backend = other.type_name(), ours = kind.as_str(), "ignoring a lease of another backend type");
                }
                return None;
            }
        };
        Some(Peer::new(subnet, rec.public_ip, mac, &self.local))
    }

    fn publish(&mut self, revision: i64, changes: Changes) {
        if revision > 0 {
            self.revision = revision;
        }
        if changes.is_empty() && self.published_once {
            return;
        }
        self.published_once = true;
        self.shared.publish(self.peers.snapshot(self.revision));
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
        let (listed, revision) = lease::list_leases(&mut self.client, &self.keys).await?;
        self.etcd_back();
        let mut own_present = false;
        let mut next = Vec::with_capacity(listed.len());
        for l in listed {
            if l.subnet == self.own.subnet {
                own_present = true;
                continue;
            }
            match &l.record {
                Ok(rec) => {
                    if let Some(p) = self.peer_for(l.subnet, rec, l.mod_revision) {
                        next.push(p);
                    }
                }
                Err(e) => {
                    if self.warned.insert((l.subnet, l.mod_revision)) {
                        tracing::warn!(subnet = %l.subnet, error = %e, "skipping an unreadable lease record");
                    }
                    // An unreadable update never removes what we knew about that subnet.
                    if let Some(p) = self.peers.get(&l.subnet) {
                        next.push(*p);
                    }
                }
            }
        }
        let changes = self.peers.replace(next);
        self.publish(revision, changes);
        if !own_present {
            self.recreate_own().await;
        }
        Ok(revision)
    }

    async fn on_events(&mut self, events: &[etcd_client::Event], revision: i64) {
        let mut batch = Vec::with_capacity(events.len());
        let mut own_deleted = false;
        for ev in events {
            let Some(kv) = ev.kv() else { continue };
            let Some(subnet) = self.keys.parse_subnet_key(kv.key()) else {
                continue;
            };
            if subnet == self.own.subnet {
                if ev.event_type() == EventType::Delete {
                    own_deleted = true;
                }
                continue;
            }
            match ev.event_type() {
                EventType::Delete => batch.push(PeerEvent::Remove(subnet)),
                EventType::Put => match LeaseRecord::parse(kv.value()) {
                    Ok(rec) => {
                        if let Some(p) = self.peer_for(subnet, &rec, kv.mod_revision()) {
                            batch.push(PeerEvent::Upsert(p));
                        }
                    }
                    Err(e) => {
                        if self.warned.insert((subnet, kv.mod_revision())) {
                            tracing::warn!(%subnet, error = %e, "skipping an unreadable lease record");
                        }
                    }
                },
            }
        }
        let changes = self.peers.apply(batch);
        self.publish(revision, changes);
        if own_deleted {
            tracing::warn!(subnet = %self.own.subnet, "this node's lease was deleted from etcd; re-creating it");
            self.recreate_own().await;
        }
    }

    async fn on_timer(&mut self) {
        self.flush_table_log();
        if self.own_missing {
            self.recreate_own().await;
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
        let _ = self.own_tx.send(own);
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
