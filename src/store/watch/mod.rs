//! The running store: one task that watches the leases, renews ours and publishes tables.
//!
//! Watch protocol: list `<prefix>/subnets/` at revision R, watch from R+1. When the watch
//! breaks (stream error, etcd gone, compaction past our revision) the task lists again and
//! diffs against what it had, so no event is lost and nothing is removed by mistake. While
//! etcd is unreachable the published table stays as it was.
//!
//! This file owns the loop, the task's handle and the dispatch of watch events; the steps
//! live beside it: [`publish`] (records -> peers -> the published table and its report),
//! [`own`] (keeping this node's lease: renew, restore, re-create) and [`config_change`]
//! (the network config changing under a running node).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, WatchOptions, WatchResponse, WatchStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::check::{check_key_families, LeaseProblem};
use super::lease::OwnLease;
use super::list::for_each_lease;
use super::options::StoreOptions;
use super::retry::{Backoff, RepeatLog};
use super::state::SavedState;
use super::{Keys, StoreError};
use crate::config::NetworkConfig;
use crate::table::{Changes, LeaseKey, LeaseReport, LocalVtep, PeerEvent, PeerSet, SharedTable};

mod config_change;
mod own;
mod publish;
mod save;

use save::StateKeeper;

/// How soon a failed re-creation of our deleted lease is tried again.
const RECREATE_RETRY: Duration = Duration::from_millis(500);
/// At most one "lease table updated" line per this interval; changes in between are summed.
const TABLE_LOG_EVERY: Duration = Duration::from_secs(1);
/// At most one table published per this interval while watch events stream in (the first
/// event after a quiet spell goes out at once).
const PUBLISH_EVERY: Duration = Duration::from_millis(50);

/// A running store. Dropping it (or [`StoreHandle::shutdown`]) stops the task; the lease
/// stays in etcd until it expires, so a restarted node gets it back.
#[derive(Debug)]
pub struct StoreHandle {
    config: NetworkConfig,
    own: watch::Receiver<OwnLease>,
    etcd_up: watch::Receiver<bool>,
    /// Asks the task for its state (a takeover hands it over).
    state: mpsc::Sender<oneshot::Sender<SavedState>>,
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

    /// The store's state as the state file holds it (for a takeover); `None` when the task
    /// has ended.
    pub async fn saved_state(&self) -> Option<SavedState> {
        let (tx, rx) = oneshot::channel();
        self.state.send(tx).await.ok()?;
        rx.await.ok()
    }

    /// Stops the task (which writes the state file a last time) and waits for it.
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

/// What the store task starts from.
pub(super) struct Start {
    pub(super) keys: Keys,
    pub(super) config: NetworkConfig,
    /// The config's text, as etcd holds it (for the state file).
    pub(super) config_text: String,
    pub(super) opts: StoreOptions,
    pub(super) own: OwnLease,
    /// A saved state's leases and their revision: published at once, before etcd answers.
    pub(super) resumed: Option<(Vec<super::state::RawLease>, i64)>,
}

/// Starts the task that keeps `own` and follows every other lease; its table goes to
/// `shared`. Without a `client` (a start from a saved state) it connects first, in the
/// background. Returns the handle that stops it.
pub(super) fn spawn(client: Option<Client>, start: Start, shared: SharedTable) -> StoreHandle {
    let Start {
        keys,
        config,
        config_text,
        opts,
        own,
        resumed,
    } = start;
    let local = LocalVtep {
        vni: config.backend.vni,
        mac: own.vtep_mac().unwrap_or_default(),
        port: config.backend.port,
    };
    // The IPv6 half's entries carry our IPv6 VTEP MAC (flannel-v6's device has its own).
    let local6 = LocalVtep {
        mac: own.vtep_mac6().unwrap_or_default(),
        ..local
    };
    let peers = match &config.ipv6 {
        Some(v6) => PeerSet::new(config.subnet_len).with_ipv6(v6.subnet_len),
        None => PeerSet::new(config.subnet_len),
    }
    .with_own(own.lease_key());
    let (own_tx, own_rx) = watch::channel(own.clone());
    let (up_tx, up_rx) = watch::channel(client.is_some());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (state_tx, state_rx) = mpsc::channel(4);
    let state_path = opts.state_file.clone();
    let mut runner = Runner {
        renew_at: own::renew_deadline(&own, &opts),
        client,
        keys,
        config: config.clone(),
        config_text,
        opts,
        local,
        local6,
        peers,
        own,
        own_tx,
        up_tx,
        shared,
        warned: HashSet::new(),
        other_vni: BTreeMap::new(),
        rejected: BTreeMap::new(),
        report: Arc::default(),
        own_missing: false,
        own_damaged: false,
        etcd_log: RepeatLog::default(),
        published_once: false,
        revision: 0,
        unlogged: Changes::default(),
        logged_at: None,
        state: StateKeeper::new(state_path),
        state_rx,
        check_config: false,
        published_at: None,
        pending: Changes::default(),
        publish_due: None,
    };
    if let Some((leases, revision)) = resumed {
        let events = super::state::lease_events(
            &runner.keys,
            &runner.config,
            &runner.local,
            &runner.local6,
            &leases,
        );
        let changes = runner.peers.apply(events);
        runner.publish(revision, changes);
        // The config may have changed in etcd while this node was away: said once etcd
        // answers.
        runner.check_config = true;
    }
    let task = tokio::spawn(runner.run(stop_rx));
    StoreHandle {
        config,
        own: own_rx,
        etcd_up: up_rx,
        state: state_tx,
        stop: Some(stop_tx),
        task: Some(task),
    }
}

/// Why the watch loop stopped reading a stream.
enum Wake {
    Stop,
    Timer,
    Message(Result<Option<WatchResponse>, etcd_client::Error>),
    StateRequest(oneshot::Sender<SavedState>),
}

/// How following one watch stream ended.
#[derive(Debug, PartialEq, Eq)]
enum Followed {
    /// The store is stopping.
    Stop,
    /// The stream broke or fell behind: list again and watch anew.
    Relist,
}

/// The watch task's state: our lease, the peers, and what has been published and logged.
struct Runner {
    /// `None` until the first connection of a store started from a saved state.
    client: Option<Client>,
    keys: Keys,
    config: NetworkConfig,
    /// The config's text as etcd held it when the node started.
    config_text: String,
    opts: StoreOptions,
    local: LocalVtep,
    /// What the IPv6 half's entries are built with (our IPv6 VTEP MAC).
    local6: LocalVtep,
    peers: PeerSet,
    own: OwnLease,
    own_tx: watch::Sender<OwnLease>,
    up_tx: watch::Sender<bool>,
    shared: SharedTable,
    /// `(key, mod_revision)` of records already reported as unusable.
    warned: HashSet<(String, i64)>,
    /// Usable vxlan leases naming another VNI than ours, by key: `(field, vni)` each.
    other_vni: BTreeMap<String, Vec<(&'static str, u32)>>,
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
    /// The state file: whether and when to write it.
    state: StateKeeper,
    /// Requests for the current state.
    state_rx: mpsc::Receiver<oneshot::Sender<SavedState>>,
    /// Started from a saved state: compare etcd's config with ours once it answers.
    check_config: bool,
    /// When the last table went out.
    published_at: Option<Instant>,
    /// Changes applied but not published yet, and when they will be.
    pending: Changes,
    publish_due: Option<Instant>,
}

impl Runner {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        self.follow_etcd(&mut stop).await;
        // The last state, for the next start.
        self.save_state(true).await;
    }

    /// Lists and watches until `stop` fires, through every outage.
    async fn follow_etcd(&mut self, stop: &mut watch::Receiver<bool>) {
        let mut backoff = Backoff::new();
        loop {
            let mut stream = match self.open_watch().await {
                Ok(s) => s,
                Err(why) => {
                    self.etcd_lost(&why);
                    if self.wait_or_stop(backoff.next_delay(), stop).await {
                        return;
                    }
                    continue;
                }
            };
            let opened = Instant::now();
            if self.follow(&mut stream, stop).await == Followed::Stop {
                return;
            }
            // A watch that breaks at once again and again must not spin.
            if opened.elapsed() < Duration::from_secs(1) {
                if self.wait_or_stop(backoff.next_delay(), stop).await {
                    return;
                }
            } else {
                backoff.reset();
            }
        }
    }

    /// Waits `delay` (etcd out of reach), answering state requests meanwhile; true when
    /// `stop` fired.
    async fn wait_or_stop(&mut self, delay: Duration, stop: &mut watch::Receiver<bool>) -> bool {
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = stop.changed() => return true,
                _ = tokio::time::sleep_until(until) => return false,
                Some(reply) = self.state_rx.recv() => {
                    let _ = reply.send(self.capture_state());
                }
            }
        }
    }

    /// Lists every lease (publishing the result) and opens a watch from just after the
    /// listing; on failure, why etcd counts as lost.
    async fn open_watch(&mut self) -> Result<WatchStream, String> {
        let mut client = match self.client.clone() {
            Some(c) => c,
            None => {
                let c = super::connect(&self.opts.etcd)
                    .await
                    .map_err(|e| crate::error::Chain(&e).to_string())?;
                self.client = Some(c.clone());
                c
            }
        };
        let since = match self.resync().await {
            Ok(rev) => rev + 1,
            Err(e) => return Err(crate::error::Chain(&e).to_string()),
        };
        if self.check_config {
            self.check_config = false;
            self.compare_config(&mut client).await;
        }
        let dir = self.keys.root();
        let opts = WatchOptions::new().with_prefix().with_start_revision(since);
        client
            .watch(dir.as_str(), Some(opts))
            .await
            .map_err(|e| format!("opening the watch: {e}"))
    }

    /// Reads `stream`, running the timer between messages, until it breaks or `stop` fires.
    async fn follow(
        &mut self,
        stream: &mut WatchStream,
        stop: &mut watch::Receiver<bool>,
    ) -> Followed {
        loop {
            let deadline = self.next_deadline();
            let wake = tokio::select! {
                _ = stop.changed() => Wake::Stop,
                _ = tokio::time::sleep_until(deadline) => Wake::Timer,
                m = stream.message() => Wake::Message(m),
                Some(reply) = self.state_rx.recv() => Wake::StateRequest(reply),
            };
            match wake {
                Wake::Stop => return Followed::Stop,
                Wake::StateRequest(reply) => {
                    let _ = reply.send(self.capture_state());
                }
                Wake::Timer => {
                    self.publish_if_due();
                    self.on_timer().await;
                    self.save_state(false).await;
                }
                Wake::Message(Ok(Some(resp))) => {
                    if resp.compact_revision() > 0 || resp.canceled() {
                        tracing::warn!(
                            compact_revision = resp.compact_revision(),
                            reason = resp.cancel_reason(),
                            "lease watch fell behind etcd compaction or was canceled; re-listing"
                        );
                        return Followed::Relist;
                    }
                    self.etcd_back();
                    let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
                    if self.on_events(resp.events(), rev).await {
                        return Followed::Relist;
                    }
                }
                Wake::Message(Ok(None)) => {
                    self.etcd_lost("the lease watch stream ended");
                    return Followed::Relist;
                }
                Wake::Message(Err(e)) => {
                    self.etcd_lost(&format!("the lease watch failed: {e}"));
                    return Followed::Relist;
                }
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
        if let Some(due) = self.state.due(self.peers.len()) {
            at = at.min(due);
        }
        if let Some(due) = self.publish_due {
            at = at.min(due);
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

    /// Lists every lease (page by page, judging each record as it arrives into a fresh set),
    /// diffs against the current set, publishes; returns the revision.
    async fn resync(&mut self) -> Result<i64, StoreError> {
        // Clones: the listing's callback needs `self` for judging.
        let Some(mut client) = self.client.clone() else {
            return Ok(self.revision);
        };
        let keys = self.keys.clone();
        let own_key = self.own.key(&self.keys);
        let mut own_kv = None;
        let mut next = self.peers.emptied();
        let mut clashes = Vec::new();
        self.rejected.clear();
        self.other_vni.clear();
        let revision = for_each_lease(&mut client, &keys, |kv| {
            if kv.key() == own_key.as_bytes() {
                own_kv = Some((kv.value().to_vec(), kv.lease(), kv.mod_revision()));
                return;
            }
            let lease = match self.judge(
                kv.key(),
                kv.value(),
                kv.mod_revision(),
                kv.create_revision(),
            ) {
                Ok(lease) => Some(lease),
                // An unusable update never removes what we knew about that key.
                Err(key) => key.and_then(|k| self.peers.lease_of(&k)),
            };
            if let Some(lease) = lease {
                clashes.extend(next.apply([PeerEvent::Put(lease)]).clashes);
            }
        })
        .await?;
        self.etcd_back();
        let mut changes = self.peers.replace_with(next);
        changes.clashes = clashes;
        self.publish(revision, changes);
        match own_kv {
            None => self.recreate_own().await,
            Some((value, etcd_lease, rev)) if !self.is_own(&value, etcd_lease, rev) => {
                self.restore_own(&value).await
            }
            Some(_) => {}
        }
        // Memory the listing and the old set used is returned to the system (glibc keeps
        // freed heap otherwise, and a re-list of 65,000 leases frees tens of MB).
        crate::sys::release_free_memory();
        Ok(revision)
    }

    /// Applies one watch response: peers changed in one batch and one publish, then the
    /// config change is reported and our own key repaired if someone touched it. True when
    /// the leases must be listed again: a deleted key held a subnet that another key was
    /// refused, and that key is judged anew only by a listing.
    async fn on_events(&mut self, events: &[etcd_client::Event], revision: i64) -> bool {
        let mut batch = Vec::with_capacity(events.len());
        let mut own_deleted = false;
        let mut own_overwritten: Option<Vec<u8>> = None;
        let own_key = self.own.key(&self.keys);
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
            batch.extend(self.peer_event(ev.event_type(), kv));
        }
        let deletes = batch.iter().any(|e| matches!(e, PeerEvent::Delete(_)));
        let changes = self.peers.apply(batch);
        let freed = changes.removed + changes.removed6 > 0;
        self.publish_soon(revision, changes);
        if own_deleted {
            tracing::warn!(subnets = %self.own.subnets(), "this node's lease was deleted from etcd; re-creating it");
            self.recreate_own().await;
        } else if let Some(value) = own_overwritten {
            self.restore_own(&value).await;
        }
        let refused = self
            .rejected
            .values()
            .any(|p| matches!(p, LeaseProblem::SubnetTaken { .. }));
        if deletes && freed && refused {
            tracing::info!("a lease that held a subnet another key was refused is gone; listing the leases again");
            return true;
        }
        false
    }

    /// What an event on another node's key does to the peer set: nothing, the lease put, or
    /// the key deleted.
    fn peer_event(&mut self, kind: EventType, kv: &etcd_client::KeyValue) -> Option<PeerEvent> {
        match kind {
            EventType::Delete => {
                let name = String::from_utf8_lossy(kv.key());
                self.rejected.remove(name.as_ref());
                self.other_vni.remove(name.as_ref());
                // A key that does not fit the network's families was never a peer: deleting
                // it removes nothing. Any other key releases what it holds, and only that.
                match self.keys.parse_subnet_key_dual(kv.key()) {
                    Some((subnet, subnet6)) => {
                        // A refused key is listed under its canonical name (see `publish`).
                        self.rejected
                            .remove(&self.keys.subnet_dual(&subnet, subnet6.as_ref()));
                        check_key_families(&self.config, subnet, subnet6)
                            .ok()
                            .map(|()| PeerEvent::Delete(LeaseKey { subnet, subnet6 }))
                    }
                    None => None,
                }
            }
            EventType::Put => self
                .judge(
                    kv.key(),
                    kv.value(),
                    kv.mod_revision(),
                    kv.create_revision(),
                )
                .ok()
                .map(PeerEvent::Put),
        }
    }
}
