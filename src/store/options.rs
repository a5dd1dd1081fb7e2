//! What the store runs with (flanneld's flags, resolved) and the subnet file it writes
//! from them: used by the start-up sequence and by the running store alike.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use super::subnet_env::SubnetEnv;
use super::{EtcdOptions, StoreError, LEASE_TTL};
use crate::config::NetworkConfig;
use crate::wire::{EthernetAddress, Subnet};

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
