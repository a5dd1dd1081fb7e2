//! A one-shot read of a network for `weft doctor`: its config (dual-stack ones included) and
//! every lease under it, judged as the node judges them. Reads only; no lease is taken, nothing is watched.

use std::time::Duration;

use super::list::for_each_lease;
use super::{connect, judge_all, lease, EtcdOptions, Keys, LeaseView, StoreError};
use crate::config::NetworkConfig;

/// What etcd says about one network.
#[derive(Debug, Clone)]
pub struct NetworkView {
    /// `<prefix>/config`, parsed and validated.
    pub config: NetworkConfig,
    /// Every record under `<prefix>/subnets/`, judged.
    pub leases: LeaseView,
}

/// Why the network could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// etcd did not answer in time.
    #[error("no answer within {} s from {endpoints}", after.as_secs())]
    Timeout {
        /// The endpoints asked, comma-separated.
        endpoints: String,
        /// How long the read was given.
        after: Duration,
    },
    /// Connecting, reading the config or listing the leases failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Reads the network `opts` names, giving up after `timeout`.
pub async fn read_view(opts: &EtcdOptions, timeout: Duration) -> Result<NetworkView, ViewError> {
    match tokio::time::timeout(timeout, read(opts)).await {
        Ok(view) => Ok(view?),
        Err(_) => Err(ViewError::Timeout {
            endpoints: opts.endpoints.join(","),
            after: timeout,
        }),
    }
}

async fn read(opts: &EtcdOptions) -> Result<NetworkView, StoreError> {
    let keys = Keys::new(&opts.prefix);
    let mut client = connect(opts).await?;
    // Dual-stack configs too: doctor checks a flanneld node's IPv6 half as well.
    let config =
        lease::read_config_with(&mut client, &keys, NetworkConfig::parse_dual_stack).await?;
    let mut raw = Vec::new();
    for_each_lease(&mut client, &keys, |kv| {
        raw.push((kv.key().to_vec(), kv.value().to_vec(), kv.create_revision()));
    })
    .await?;
    let leases = judge_all(
        &keys,
        &config,
        raw.iter().map(|(k, v, c)| (k.as_slice(), v.as_slice(), *c)),
    );
    Ok(NetworkView { config, leases })
}
