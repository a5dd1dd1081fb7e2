//! Starting the store: connect to etcd, wait for a usable network config, acquire this node's
//! lease, write subnet.env, then hand over to the watch task. Each step retries what etcd
//! being down or not yet configured makes fail, and gives up only on what retrying cannot fix.

use std::time::Duration;

use etcd_client::Client;

use super::lease::{acquire_lease, read_config_text, AcquireRequest, OwnLease};
use super::options::{write_subnet_env, ConfigCheck, StoreOptions};
use super::retry::{Backoff, RepeatLog};
use super::subnet_env::{read_previous_ipv6_subnet, read_previous_subnet};
use super::watch::{self, StoreHandle};
use super::{connect, EtcdOptions, Keys, StoreError};
use crate::config::NetworkConfig;
use crate::table::{LeaseTable, SharedTable};

/// How often a missing or invalid network config is read again.
const CONFIG_RETRY: Duration = Duration::from_secs(1);

/// Entry point: see [`Store::start`].
#[derive(Debug)]
pub struct Store;

impl Store {
    /// Connects, waits for a valid network config (retrying every second, logging why),
    /// acquires this node's lease, writes subnet.env and starts watching and renewing.
    /// Remote leases are published into `shared`. Returns once the lease is held.
    ///
    /// Fails only on problems retrying cannot fix: bad TLS/endpoint setup, no free subnet.
    pub async fn start(opts: StoreOptions, shared: SharedTable) -> Result<StoreHandle, StoreError> {
        let mut client = connect_until_up(&opts.etcd).await?;
        let keys = Keys::new(&opts.etcd.prefix);
        let (config, config_text) =
            read_config_until_valid(&mut client, &keys, opts.config_check).await;
        tracing::info!(
            network = %config.network,
            subnet_len = config.subnet_len,
            ipv6_network = ?config.ipv6.map(|v6| v6.network.to_string()),
            backend = config.backend.kind.as_str(),
            "network config loaded"
        );
        let own = acquire_until_held(&mut client, &keys, &config, &opts).await?;
        write_subnet_env(&opts, &config, own.subnet, own.subnet6)?;
        shared.publish(match &config.ipv6 {
            Some(v6) => LeaseTable::empty_dual(config.subnet_len, v6.subnet_len),
            None => LeaseTable::empty(config.subnet_len),
        });
        let start = watch::Start {
            keys,
            config,
            config_text,
            opts,
            own,
            resumed: None,
        };
        Ok(watch::spawn(Some(client), start, shared))
    }

    /// Starts from a saved state (a state file, or a running node's handover) without
    /// waiting for etcd: the state's leases are published into `shared` at once, subnet.env
    /// is written, and the store connects to etcd in the background, then reconciles (our
    /// lease kept or re-created under the same key, the leases listed anew) as a store that
    /// lost etcd for a while does.
    pub fn resume(
        opts: StoreOptions,
        shared: SharedTable,
        resume: super::state::Resume,
    ) -> Result<StoreHandle, StoreError> {
        let keys = Keys::new(&opts.etcd.prefix);
        let super::state::Resume {
            config,
            config_text,
            own,
            revision,
            leases,
            rejected,
        } = resume;
        write_subnet_env(&opts, &config, own.subnet, own.subnet6)?;
        for (key, problem) in &rejected {
            tracing::warn!(%key, reason = problem.label(), error = %problem, "skipping a lease from the state file");
        }
        let start = watch::Start {
            keys,
            config,
            config_text,
            opts,
            own,
            resumed: Some((leases, revision)),
        };
        Ok(watch::spawn(None, start, shared))
    }
}

/// Connects to etcd, retrying (with backoff, logging each new reason) while the failure is
/// one that etcd coming up can fix.
pub(super) async fn connect_until_up(etcd: &EtcdOptions) -> Result<Client, StoreError> {
    let mut log = RepeatLog::default();
    let mut backoff = Backoff::new();
    loop {
        match connect(etcd).await {
            Ok(c) => return Ok(c),
            Err(e) if e.is_transient() => {
                let msg = crate::error::Chain(&e).to_string();
                if log.should_log(&msg) {
                    tracing::warn!(error = %msg, "cannot reach etcd yet; retrying");
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Reads `<prefix>/config` every [`CONFIG_RETRY`] until it holds a valid network config
/// that `check` (if any) accepts: a missing, broken or refused config is an operator's job
/// to fix, so this never gives up. Returns the config and its text.
async fn read_config_until_valid(
    client: &mut Client,
    keys: &Keys,
    check: Option<ConfigCheck>,
) -> (NetworkConfig, String) {
    let mut log = RepeatLog::default();
    loop {
        let read = read_config_text(client, keys, NetworkConfig::parse)
            .await
            .and_then(|(c, text)| match check {
                Some(check) => {
                    check(&c)
                        .map(|()| (c, text))
                        .map_err(|source| StoreError::ConfigInvalid {
                            key: keys.config(),
                            source,
                        })
                }
                None => Ok((c, text)),
            });
        match read {
            Ok(c) => return c,
            Err(e) => {
                let msg = crate::error::Chain(&e).to_string();
                if log.should_log(&msg) {
                    tracing::warn!(error = %msg, "no usable network config yet; retrying every second");
                }
                tokio::time::sleep(CONFIG_RETRY).await;
            }
        }
    }
}

/// Acquires this node's lease (preferring the subnets of an existing subnet.env), retrying
/// with backoff while etcd fails in a way that can pass.
async fn acquire_until_held(
    client: &mut Client,
    keys: &Keys,
    config: &NetworkConfig,
    opts: &StoreOptions,
) -> Result<OwnLease, StoreError> {
    let req = AcquireRequest {
        public_ip: opts.public_ip,
        public_ipv6: opts.public_ipv6,
        previous_subnet: read_previous_subnet(&opts.subnet_file),
        previous_subnet6: read_previous_ipv6_subnet(&opts.subnet_file),
        ttl: opts.lease_ttl,
        vtep_mac: opts.vtep_mac,
        vtep_mac6: opts.vtep_mac6,
    };
    let mut log = RepeatLog::default();
    let mut backoff = Backoff::new();
    loop {
        match acquire_lease(client, keys, config, &req).await {
            Ok(own) => return Ok(own),
            Err(e) if e.is_transient() => {
                let msg = crate::error::Chain(&e).to_string();
                if log.should_log(&msg) {
                    tracing::warn!(error = %msg, "acquiring a lease failed; retrying");
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => return Err(e),
        }
    }
}
