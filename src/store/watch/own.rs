//! Keeping this node's lease while the store runs: renewing it before it expires, writing
//! our record back when someone overwrites the key, and re-creating the key when it is
//! deleted (moving to a new subnet, and rewriting subnet.env, if another node took ours).
//! A dual-stack lease keeps its one key (`10.1.2.0-24&fd10:0:0:2::-64`) through all of it,
//! and so does an IPv6-only one (`0.0.0.0-0&fd10:0:0:2::-64`).

use std::time::Duration;

use tokio::time::Instant;

use super::Runner;
use crate::store::lease::{self, acquire_lease, AcquireRequest, OwnLease};
use crate::store::options::{write_subnet_env, StoreOptions};
use crate::store::record::LeaseRecord;
use crate::wire::{Subnet, Subnet6};

/// How soon a failed renewal is tried again.
const RENEW_RETRY: Duration = Duration::from_secs(60);

/// When to renew: `margin` before expiry, or half-way when the TTL is shorter than that.
pub(super) fn renew_deadline(own: &OwnLease, opts: &StoreOptions) -> Instant {
    let lead = if opts.renew_margin < opts.lease_ttl {
        opts.renew_margin
    } else {
        opts.lease_ttl / 2
    };
    own.expires_at
        .checked_sub(lead)
        .unwrap_or_else(Instant::now)
}

impl Runner {
    /// Whether the value of our key at `rev` is ours: our record on our etcd lease, or a
    /// write at or before our last one (so an old event never triggers a repair).
    pub(super) fn is_own(&self, value: &[u8], etcd_lease: i64, rev: i64) -> bool {
        rev <= self.own.revision
            || (etcd_lease == self.own.etcd_lease
                && LeaseRecord::parse(value).is_ok_and(|r| r == self.own.record))
    }

    /// The timer: the table log line that is due, repairs that failed before, the renewal.
    pub(super) async fn on_timer(&mut self) {
        self.flush_table_log();
        if self.own_missing {
            self.recreate_own().await;
        }
        if self.own_damaged {
            self.restore_own(b"").await;
        }
        if Instant::now() >= self.renew_at {
            self.renew_own().await;
        }
    }

    /// Renews our lease with a fresh grant; on failure tries again in [`RENEW_RETRY`].
    async fn renew_own(&mut self) {
        // Only after a listing succeeded, so the client exists.
        let Some(mut client) = self.client.clone() else {
            return;
        };
        match lease::renew(&mut client, &self.keys, &self.own, self.opts.lease_ttl).await {
            Ok(next) => {
                tracing::info!(subnet = %next.subnet, "lease renewed");
                self.set_own(next);
            }
            Err(e) => {
                tracing::warn!(error = %crate::error::Chain(&e), "renewing the lease failed; retrying in a minute");
                self.renew_at = Instant::now() + RENEW_RETRY;
            }
        }
    }

    fn set_own(&mut self, own: OwnLease) {
        self.state.changed();
        self.renew_at = renew_deadline(&own, &self.opts);
        self.own = own.clone();
        self.own_missing = false;
        self.own_damaged = false;
        let _ = self.own_tx.send(own);
    }

    /// Someone overwrote our key (another PublicIP, garbage, our record without our TTL): the
    /// node owns its lease, so write our record back with a fresh grant and retire the old one.
    /// On failure the next timer tick tries again.
    pub(super) async fn restore_own(&mut self, found: &[u8]) {
        // Only after a listing succeeded, so the client exists.
        let Some(mut client) = self.client.clone() else {
            return;
        };
        if !self.own_damaged {
            let found = String::from_utf8_lossy(&found[..found.len().min(200)]).into_owned();
            tracing::warn!(subnets = %self.own.subnets(), found = %found, "this node's lease was overwritten in etcd; writing this node's record back");
        }
        let old = self.own.etcd_lease;
        match lease::put_with_fresh_grant(
            &mut client,
            &self.keys,
            (self.own.subnet, self.own.subnet6),
            self.own.record.clone(),
            self.opts.lease_ttl,
        )
        .await
        {
            Ok(own) => {
                lease::revoke_quietly(&mut client, old).await;
                tracing::info!(subnets = %own.subnets(), "this node's lease record restored");
                self.set_own(own);
            }
            Err(e) => {
                tracing::warn!(error = %crate::error::Chain(&e), "restoring this node's lease failed; retrying");
                self.own_damaged = true;
            }
        }
    }

    /// Our key is gone (etcd data loss, expiry, an operator): take the same key back at
    /// once; if another node got either subnet first, acquire a new lease and rewrite
    /// subnet.env.
    pub(super) async fn recreate_own(&mut self) {
        // Only after a listing succeeded, so the client exists.
        let Some(mut client) = self.client.clone() else {
            return;
        };
        let (subnet, subnet6) = (self.own.subnet, self.own.subnet6);
        // A dual-stack key is re-created from a listing (see `create_if_absent`): our IPv6
        // subnet may have gone to a key under another IPv4 subnet.
        let mut listed_at = 0;
        if subnet6.is_some() {
            match lease::list_leases(&mut client, &self.keys, &self.config).await {
                Ok((leases, rev)) => {
                    if leases.iter().any(|l| l.holds(&subnet, subnet6.as_ref())) {
                        return self.reacquire_own(subnet, subnet6).await;
                    }
                    listed_at = rev;
                }
                Err(e) => {
                    tracing::warn!(%subnet, error = %crate::error::Chain(&e), "re-creating this node's lease failed; retrying");
                    self.own_missing = true;
                    return;
                }
            }
        }
        let created = lease::create_if_absent(
            &mut client,
            &self.keys,
            (subnet, subnet6),
            self.own.record.clone(),
            self.opts.lease_ttl,
            listed_at,
        )
        .await;
        match created {
            Ok(Some(own)) => {
                tracing::info!(%subnet, subnet6 = ?subnet6.map(|s| s.to_string()), "re-created this node's lease");
                self.set_own(own);
            }
            Ok(None) => self.reacquire_own(subnet, subnet6).await,
            Err(e) => {
                tracing::warn!(%subnet, error = %crate::error::Chain(&e), "re-creating this node's lease failed; retrying");
                self.own_missing = true;
            }
        }
    }

    /// Another node holds our old key: acquire a lease as at start (the old subnets are
    /// asked for first); a new subnet means a new subnet.env and one peer fewer if we had it.
    async fn reacquire_own(&mut self, subnet: Subnet, subnet6: Option<Subnet6>) {
        // Only after a listing succeeded, so the client exists.
        let Some(mut client) = self.client.clone() else {
            return;
        };
        let req = AcquireRequest {
            public_ip: self.opts.public_ip,
            public_ipv6: self.opts.public_ipv6,
            previous_subnet: self.own.subnet4(),
            previous_subnet6: subnet6,
            ttl: self.opts.lease_ttl,
            vtep_mac: self.own.vtep_mac(),
            vtep_mac6: self.own.vtep_mac6(),
        };
        match acquire_lease(&mut client, &self.keys, &self.config, &req).await {
            Ok(own) => {
                if own.subnet != subnet || own.subnet6 != subnet6 {
                    tracing::warn!(
                        old = %subnet,
                        new = %own.subnet,
                        old6 = ?subnet6.map(|s| s.to_string()),
                        new6 = ?own.subnet6.map(|s| s.to_string()),
                        "this node's lease was taken by another node; moved to a new subnet"
                    );
                    let env = write_subnet_env(&self.opts, &self.config, own.subnet, own.subnet6);
                    if let Err(e) = env {
                        tracing::error!(error = %crate::error::Chain(&e), "writing subnet.env failed");
                    }
                    // Whatever another key held of our new subnets is no peer any more.
                    let changes = self.peers.set_own(own.lease_key());
                    self.publish(self.revision, changes);
                }
                self.set_own(own);
            }
            Err(e) => {
                tracing::warn!(error = %crate::error::Chain(&e), "re-acquiring this node's lease failed; retrying");
                self.own_missing = true;
            }
        }
    }
}
