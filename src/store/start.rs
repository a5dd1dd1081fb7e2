//! Starting the store: connect to etcd, wait for a usable network config, acquire this node's
//! lease, write subnet.env, then hand over to the watch task. Each step retries what etcd
//! being down or not yet configured makes fail, and gives up only on what retrying cannot fix.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use etcd_client::Client;

use super::lease::{acquire_lease, read_config, AcquireRequest, OwnLease};
use super::retry::{Backoff, RepeatLog};
use super::subnet_env::{read_previous_subnet, SubnetEnv};
use super::watch::{self, StoreHandle};
use super::{connect, EtcdOptions, Keys, StoreError, LEASE_TTL};
use crate::config::NetworkConfig;
use crate::table::{LeaseTable, SharedTable};
use crate::wire::{EthernetAddress, Subnet};

/// How often a missing or invalid network config is read again.
const CONFIG_RETRY: Duration = Duration::from_secs(1);

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

impl Store {
    /// Connects, waits for a valid network config (retrying every second, logging why),
    /// acquires this node's lease, writes subnet.env and starts watching and renewing.
    /// Remote leases are published into `shared`. Returns once the lease is held.
    ///
    /// Fails only on problems retrying cannot fix: bad TLS/endpoint setup, no free subnet.
    pub async fn start(opts: StoreOptions, shared: SharedTable) -> Result<StoreHandle, StoreError> {
        let mut client = connect_until_up(&opts.etcd).await?;
        let keys = Keys::new(&opts.etcd.prefix);
        let config = read_config_until_valid(&mut client, &keys).await;
        tracing::info!(network = %config.network, subnet_len = config.subnet_len, backend = config.backend.kind.as_str(), "network config loaded");
        let own = acquire_until_held(&mut client, &keys, &config, &opts).await?;
        write_subnet_env(&opts, &config, own.subnet)?;
        shared.publish(LeaseTable::empty(config.subnet_len));
        Ok(watch::spawn(client, keys, config, opts, own, shared))
    }
}

/// Connects to etcd, retrying (with backoff, logging each new reason) while the failure is
/// one that etcd coming up can fix.
async fn connect_until_up(etcd: &EtcdOptions) -> Result<Client, StoreError> {
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

/// Reads `<prefix>/config` every [`CONFIG_RETRY`] until it holds a valid network config:
/// a missing or broken config is an operator's job to fix, so this never gives up.
async fn read_config_until_valid(client: &mut Client, keys: &Keys) -> NetworkConfig {
    let mut log = RepeatLog::default();
    loop {
        match read_config(client, keys).await {
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

/// Acquires this node's lease (preferring the subnet of an existing subnet.env), retrying
/// with backoff while etcd fails in a way that can pass.
async fn acquire_until_held(
    client: &mut Client,
    keys: &Keys,
    config: &NetworkConfig,
    opts: &StoreOptions,
) -> Result<OwnLease, StoreError> {
    let req = AcquireRequest {
        public_ip: opts.public_ip,
        previous_subnet: read_previous_subnet(&opts.subnet_file),
        ttl: opts.lease_ttl,
        vtep_mac: opts.vtep_mac,
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

/// Writes subnet.env for `subnet` (at start, and when the node had to move to a new subnet).
pub(super) fn write_subnet_env(
    opts: &StoreOptions,
    config: &NetworkConfig,
    subnet: Subnet,
) -> Result<(), StoreError> {
    let env = SubnetEnv {
        network: config.network,
        subnet,
        // The IPv6 lines come with dual-stack leases; the node refuses EnableIPv6 until then.
        ipv6: None,
        mtu: config.overlay_mtu(opts.underlay_mtu),
        ip_masq: opts.ip_masq,
    };
    env.write(&opts.subnet_file)?;
    Ok(())
}
