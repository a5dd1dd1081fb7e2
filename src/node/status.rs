//! The node's status as `/status`, `/readyz` and `weft status` see it: a [`NodeStatus`]
//! snapshot published once a second, and when each remote lease was first seen.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::config::NetworkConfig;
use crate::dataplane::{Datapath, DatapathInfo};
use crate::host::Underlay;
use crate::ops::status::{IptablesState, NodeStatus6, Offloads};
use crate::ops::{NodeStatus, OpsState};
use crate::store::subnet_env::{read_previous_ipv6_subnet, read_previous_subnet};
use crate::store::StoreHandle;

/// Publishes the node's status into the ops state.
pub(super) struct StatusPublisher<'a> {
    ops: &'a OpsState,
    config: &'a NetworkConfig,
    underlay: &'a Underlay,
    subnet_file: &'a Path,
    etcd_endpoints: &'a [String],
    /// What the data path runs with (none for host-gw).
    datapath: Option<DatapathInfo>,
    started: Instant,
}

impl<'a> StatusPublisher<'a> {
    /// A publisher for a node with this config and underlay.
    pub(super) fn new(
        ops: &'a OpsState,
        config: &'a NetworkConfig,
        underlay: &'a Underlay,
        opts: &'a super::NodeOptions,
        datapath: Option<DatapathInfo>,
    ) -> StatusPublisher<'a> {
        StatusPublisher {
            ops,
            config,
            underlay,
            subnet_file: &opts.subnet_file,
            etcd_endpoints: &opts.etcd.endpoints,
            datapath,
            started: Instant::now(),
        }
    }

    /// Publishes a fresh snapshot and notes the leases seen.
    pub(super) fn publish(
        &self,
        dp: Option<&Datapath>,
        store: &StoreHandle,
        iptables: IptablesState,
        problems: &[String],
    ) {
        let mut s = self.snapshot(dp, store, iptables);
        s.problems = problems.to_vec();
        self.ops.status.store(Some(Arc::new(s)));
    }

    /// Withdraws the status (the node is stopping: alive, no longer ready).
    pub(super) fn clear(&self) {
        self.ops.status.store(None);
    }

    fn snapshot(
        &self,
        dp: Option<&Datapath>,
        store: &StoreHandle,
        iptables: IptablesState,
    ) -> NodeStatus {
        let own = store.own_lease();
        let info = self.datapath.as_ref();
        // An IPv6-only network has no IPv4 half: "-" rather than flannel's empty 0.0.0.0/0.
        let v4 = self.config.enable_ipv4;
        let or_dash = |s: String| if v4 { s } else { "-".to_string() };
        let env_written = match v4 {
            true => read_previous_subnet(self.subnet_file) == Some(own.subnet),
            false => {
                own.subnet6.is_some() && read_previous_ipv6_subnet(self.subnet_file) == own.subnet6
            }
        };
        NodeStatus {
            subnet: or_dash(own.subnet.to_string()),
            network: or_dash(self.config.network.to_string()),
            backend: self.config.backend.kind.as_str().to_string(),
            iface: self.underlay.iface.clone(),
            public_ip: self.underlay.public_ip,
            vtep_mac: own.vtep_mac().map(|m| m.to_string()),
            tun: info.map_or_else(|| "-".to_string(), |i| i.tun.clone()),
            mtu: info.map_or(self.underlay.mtu, |i| i.mtu),
            etcd_up: store.etcd_reachable(),
            lease_expires_in_secs: own
                .expires_at
                .saturating_duration_since(tokio::time::Instant::now())
                .as_secs(),
            // host-gw has no data path: the kernel forwards.
            datapath_running: dp.is_none_or(Datapath::is_running),
            subnet_env_written: env_written,
            offloads: info
                .map(|i| Offloads::from(&i.offloads))
                .unwrap_or_default(),
            workers: info.map_or(0, |i| i.workers),
            threads_per_worker: info.map_or(0, |i| i.threads_per_worker),
            iptables,
            subnet_file: self.subnet_file.display().to_string(),
            etcd_endpoints: self.etcd_endpoints.to_vec(),
            ipv6: match (&self.config.ipv6, own.subnet6, own.public_ipv6()) {
                (Some(v6), Some(subnet), Some(public_ip)) => Some(NodeStatus6 {
                    subnet: subnet.to_string(),
                    network: v6.network.to_string(),
                    public_ip,
                    vtep_mac: own.vtep_mac6().map(|m| m.to_string()),
                }),
                _ => None,
            },
            uptime_secs: self.started.elapsed().as_secs(),
            problems: Vec::new(),
        }
    }
}
