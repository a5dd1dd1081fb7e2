//! What the store runs with (flanneld's flags, resolved) and the subnet file it writes
//! from them: used by the start-up sequence and by the running store alike.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use super::subnet_env::{SubnetEnv, SubnetEnv6};
use super::{EtcdOptions, StoreError, LEASE_TTL};
use crate::config::{ConfigError, NetworkConfig};
use crate::wire::{EthernetAddress, Subnet, Subnet6};

/// A check of the network config before any lease is taken: `Err` refuses the config the
/// same way an invalid one is refused (logged, read again every second until it changes).
pub type ConfigCheck = fn(&NetworkConfig) -> Result<(), ConfigError>;

/// What the store needs to run: flanneld's flags, resolved.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How to reach etcd and which prefix to use.
    pub etcd: EtcdOptions,
    /// This node's underlay address, written as `PublicIP`.
    pub public_ip: Ipv4Addr,
    /// This node's underlay IPv6 address, written as `PublicIPv6` when the network enables
    /// IPv6 (which then requires it).
    pub public_ipv6: Option<Ipv6Addr>,
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
    /// An IPv6 VTEP MAC to use when no existing lease names one (`None`: derive a stable
    /// one).
    pub vtep_mac6: Option<EthernetAddress>,
    /// What the caller refuses in a valid network config (the node: IPv6 until its data
    /// path forwards it); `None` takes every valid config.
    pub config_check: Option<ConfigCheck>,
    /// Where the store keeps its last good state ([`crate::store::state`]); `None` keeps
    /// none.
    pub state_file: Option<PathBuf>,
}

impl StoreOptions {
    /// Options with flanneld's defaults for everything but etcd and the public IP.
    pub fn new(etcd: EtcdOptions, public_ip: Ipv4Addr) -> StoreOptions {
        StoreOptions {
            etcd,
            public_ip,
            public_ipv6: None,
            subnet_file: PathBuf::from("/run/flannel/subnet.env"),
            renew_margin: Duration::from_secs(60 * 60),
            lease_ttl: LEASE_TTL,
            underlay_mtu: 1500,
            ip_masq: false,
            vtep_mac: None,
            vtep_mac6: None,
            config_check: None,
            state_file: None,
        }
    }
}

/// The subnet.env of a node holding `subnet` (and `subnet6`): the IPv6 lines when the
/// network enables IPv6, as flanneld writes them.
pub(super) fn subnet_env(
    opts: &StoreOptions,
    config: &NetworkConfig,
    subnet: Subnet,
    subnet6: Option<Subnet6>,
) -> SubnetEnv {
    let ipv6 = match (&config.ipv6, subnet6) {
        (Some(v6), Some(subnet)) => Some(SubnetEnv6 {
            network: v6.network,
            subnet,
        }),
        _ => None,
    };
    SubnetEnv {
        network: config.network,
        subnet,
        ipv6,
        mtu: config.overlay_mtu(opts.underlay_mtu),
        ip_masq: opts.ip_masq,
    }
}

/// Writes subnet.env for `subnet` and `subnet6` (at start, and when the node had to move to
/// a new subnet).
pub(super) fn write_subnet_env(
    opts: &StoreOptions,
    config: &NetworkConfig,
    subnet: Subnet,
    subnet6: Option<Subnet6>,
) -> Result<(), StoreError> {
    subnet_env(opts, config, subnet, subnet6).write(&opts.subnet_file)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> StoreOptions {
        let mut o = StoreOptions::new(EtcdOptions::default(), Ipv4Addr::new(192, 168, 64, 3));
        o.ip_masq = true;
        o
    }

    #[test]
    fn dual_stack_subnet_env_has_flanneld_ipv6_lines() {
        let cfg = NetworkConfig::parse(
            r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/48","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        let env = subnet_env(
            &opts(),
            &cfg,
            "10.1.2.0/24".parse().unwrap(),
            Some("fd10:0:0:2::/64".parse().unwrap()),
        );
        assert_eq!(
            env.render(),
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.2.1/24\n\
             FLANNEL_IPV6_NETWORK=fd10::/48\nFLANNEL_IPV6_SUBNET=fd10:0:0:2::1/64\n\
             FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
    }

    #[test]
    fn ipv4_only_subnet_env_is_unchanged() {
        let cfg = NetworkConfig::parse(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan"}}"#)
            .unwrap();
        let want = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.2.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
        let s = "10.1.2.0/24".parse().unwrap();
        assert_eq!(subnet_env(&opts(), &cfg, s, None).render(), want);
        // An IPv6 subnet without IPv6 in the config (not a lease weft makes) adds nothing.
        let s6 = Some("fd10:0:0:2::/64".parse().unwrap());
        assert_eq!(subnet_env(&opts(), &cfg, s, s6).render(), want);
    }

    #[test]
    fn ipv6_only_subnet_env_is_flanneld_s() {
        let cfg = NetworkConfig::parse(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd10::/48","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        let env = subnet_env(
            &opts(),
            &cfg,
            cfg.network,
            Some("fd10:0:0:2::/64".parse().unwrap()),
        );
        assert_eq!(
            env.render(),
            "FLANNEL_IPV6_NETWORK=fd10::/48\nFLANNEL_IPV6_SUBNET=fd10:0:0:2::1/64\n\
             FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
    }
}
