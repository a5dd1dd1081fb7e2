//! This node's lease: reading the config, acquiring a subnet, renewing it, re-creating it.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use rand::Rng;
use tokio::time::Instant;

use super::record::{BackendRecord, LeaseRecord, RecordError};
use super::vtep::derive_vtep_mac;
use super::{Keys, StoreError};
use crate::config::{BackendType, NetworkConfig};
use crate::wire::{EthernetAddress, Subnet};

/// How many lost create races in a row before giving up (flannel: 10).
const RACE_RETRIES: u32 = 10;

/// How many free subnets the random pick chooses among (flannel: 100).
const PICK_AMONG: usize = 100;

/// Reads and validates `<prefix>/config`.
pub async fn read_config(client: &mut Client, keys: &Keys) -> Result<NetworkConfig, StoreError> {
    read_config_with(client, keys, NetworkConfig::parse).await
}

/// Reads `<prefix>/config` and validates it with `parse` (the node's [`NetworkConfig::parse`],
/// or [`NetworkConfig::parse_dual_stack`] for a reader that takes dual-stack configs).
pub(crate) async fn read_config_with(
    client: &mut Client,
    keys: &Keys,
    parse: fn(&str) -> Result<NetworkConfig, crate::config::ConfigError>,
) -> Result<NetworkConfig, StoreError> {
    let key = keys.config();
    let resp = client
        .get(key.as_str(), None)
        .await
        .map_err(|source| StoreError::ConfigRead {
            key: key.clone(),
            source,
        })?;
    let kv = resp
        .kvs()
        .first()
        .ok_or_else(|| StoreError::ConfigMissing { key: key.clone() })?;
    let text = String::from_utf8_lossy(kv.value());
    parse(&text).map_err(|source| StoreError::ConfigInvalid { key, source })
}

/// One key under `<prefix>/subnets/` as listed, unjudged.
#[derive(Debug, Clone)]
pub(crate) struct RawLease {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub etcd_lease: i64,
    pub mod_revision: i64,
}

/// One lease key as listed, its subnet read from the key.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    pub subnet: Subnet,
    pub record: Result<LeaseRecord, RecordError>,
    pub etcd_lease: i64,
}

/// Lists every key under the subnets prefix; returns them and the store revision of the read.
pub(crate) async fn list_raw(
    client: &mut Client,
    keys: &Keys,
) -> Result<(Vec<RawLease>, i64), StoreError> {
    let dir = keys.subnets_dir();
    let resp = client
        .get(dir.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|source| StoreError::LeaseList {
            prefix: dir.clone(),
            source,
        })?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
    let listed = resp
        .kvs()
        .iter()
        .map(|kv| RawLease {
            key: kv.key().to_vec(),
            value: kv.value().to_vec(),
            etcd_lease: kv.lease(),
            mod_revision: kv.mod_revision(),
        })
        .collect();
    Ok((listed, revision))
}

/// Lists every lease key whose name is a subnet (the acquire step's view: any key, valid
/// record or not, holds its subnet).
pub(crate) async fn list_leases(
    client: &mut Client,
    keys: &Keys,
) -> Result<Vec<Listed>, StoreError> {
    let (raw, _) = list_raw(client, keys).await?;
    Ok(raw
        .into_iter()
        .filter_map(|kv| {
            Some(Listed {
                subnet: keys.parse_subnet_key(&kv.key)?,
                record: LeaseRecord::parse(&kv.value),
                etcd_lease: kv.etcd_lease,
            })
        })
        .collect())
}

/// What this node asks for when acquiring its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcquireRequest {
    /// This node's underlay address (`--public-ip`).
    pub public_ip: Ipv4Addr,
    /// The subnet from an existing subnet.env, tried first if free.
    pub previous_subnet: Option<Subnet>,
    /// The lease TTL to ask etcd for (flannel: 24 h).
    pub ttl: Duration,
    /// The VTEP MAC to use when no existing lease names one; `None` derives a stable one.
    pub vtep_mac: Option<EthernetAddress>,
}

/// This node's lease as held in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnLease {
    /// The leased subnet.
    pub subnet: Subnet,
    /// The record stored under the subnet's key.
    pub record: LeaseRecord,
    /// The etcd lease ID the key is attached to.
    pub etcd_lease: i64,
    /// When the etcd lease runs out unless renewed.
    pub expires_at: Instant,
    /// The etcd revision of our last write of the key: watch events for the key at or
    /// before it are our own writes or older, never an overwrite to repair.
    pub revision: i64,
}

impl OwnLease {
    /// The VTEP MAC this node advertises (vxlan backend only).
    pub fn vtep_mac(&self) -> Option<EthernetAddress> {
        match self.record.backend {
            BackendRecord::Vxlan { vtep_mac, .. } => Some(vtep_mac),
            _ => None,
        }
    }
}

/// Whether a lease fits the current config (flannel's `isSubnetConfigCompat`).
fn compatible(cfg: &NetworkConfig, s: &Subnet) -> bool {
    s.prefix_len() == cfg.subnet_len && cfg.network.contains_subnet(s)
}

/// The record this node writes for the configured backend.
pub(crate) fn own_record(
    cfg: &NetworkConfig,
    public_ip: Ipv4Addr,
    vtep_mac: EthernetAddress,
) -> LeaseRecord {
    let backend = match cfg.backend.kind {
        BackendType::Vxlan => BackendRecord::Vxlan {
            vni: cfg.backend.vni.get(),
            vtep_mac,
        },
        BackendType::Udp => BackendRecord::None,
        BackendType::HostGw => BackendRecord::HostGw,
    };
    LeaseRecord {
        public_ip,
        public_ipv6: None,
        backend_v6: None,
        backend,
    }
}

fn ttl_secs(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(1)
}

async fn grant(client: &mut Client, ttl: Duration) -> Result<(i64, Instant), StoreError> {
    let secs = ttl_secs(ttl);
    let start = Instant::now();
    let g = client
        .lease_grant(secs, None)
        .await
        .map_err(|source| StoreError::LeaseGrant {
            ttl_secs: secs,
            source,
        })?;
    let granted = u64::try_from(g.ttl()).unwrap_or(0);
    Ok((g.id(), start + Duration::from_secs(granted)))
}

/// Best effort: an etcd lease that no key uses any more would otherwise linger for its TTL.
pub(crate) async fn revoke_quietly(client: &mut Client, id: i64) {
    if id != 0 {
        if let Err(e) = client.lease_revoke(id).await {
            tracing::debug!(lease = id, error = %crate::error::Chain(&e), "revoking an unused etcd lease failed");
        }
    }
}

/// Writes `record` at `subnet`'s key with a fresh grant, whatever is there (reuse, renewal).
pub(crate) async fn put_with_fresh_grant(
    client: &mut Client,
    keys: &Keys,
    subnet: Subnet,
    record: LeaseRecord,
    ttl: Duration,
) -> Result<OwnLease, StoreError> {
    let (id, expires_at) = grant(client, ttl).await?;
    let put = client
        .put(
            keys.subnet(&subnet),
            record.to_json(),
            Some(PutOptions::new().with_lease(id)),
        )
        .await;
    let revision = match put {
        Ok(r) => r.header().map(|h| h.revision()).unwrap_or(0),
        Err(source) => {
            revoke_quietly(client, id).await;
            return Err(StoreError::LeaseRenew { subnet, source });
        }
    };
    Ok(OwnLease {
        subnet,
        record,
        etcd_lease: id,
        expires_at,
        revision,
    })
}

/// Creates `subnet`'s key only if it does not exist; `Ok(None)` when another node has it.
pub(crate) async fn create_if_absent(
    client: &mut Client,
    keys: &Keys,
    subnet: Subnet,
    record: LeaseRecord,
    ttl: Duration,
) -> Result<Option<OwnLease>, StoreError> {
    let (id, expires_at) = grant(client, ttl).await?;
    let key = keys.subnet(&subnet);
    let txn = Txn::new()
        .when([Compare::version(key.as_str(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key.as_str(),
            record.to_json(),
            Some(PutOptions::new().with_lease(id)),
        )]);
    match client.txn(txn).await {
        Ok(r) if r.succeeded() => Ok(Some(OwnLease {
            subnet,
            record,
            etcd_lease: id,
            expires_at,
            revision: r.header().map(|h| h.revision()).unwrap_or(0),
        })),
        Ok(_) => {
            revoke_quietly(client, id).await;
            Ok(None)
        }
        Err(source) => {
            revoke_quietly(client, id).await;
            Err(StoreError::LeaseCreate { subnet, source })
        }
    }
}

/// Renews `own` with a fresh grant (same record) and retires the old grant.
pub(crate) async fn renew(
    client: &mut Client,
    keys: &Keys,
    own: &OwnLease,
    ttl: Duration,
) -> Result<OwnLease, StoreError> {
    let next = put_with_fresh_grant(client, keys, own.subnet, own.record.clone(), ttl).await?;
    if own.etcd_lease != next.etcd_lease {
        revoke_quietly(client, own.etcd_lease).await;
    }
    Ok(next)
}

/// Acquires this node's lease following flanneld's order: the lease already carrying our
/// PublicIP; else the subnet from subnet.env if free; else a random one of the first 100
/// free subnets from SubnetMin. New keys are created only by a compare-and-create
/// transaction, so two nodes never share a subnet; lost races are retried.
pub async fn acquire_lease(
    client: &mut Client,
    keys: &Keys,
    cfg: &NetworkConfig,
    req: &AcquireRequest,
) -> Result<OwnLease, StoreError> {
    for _ in 0..RACE_RETRIES {
        let leases = list_leases(client, keys).await?;

        let mine = leases
            .iter()
            .find(|l| matches!(&l.record, Ok(r) if r.public_ip == req.public_ip));
        if let Some(l) = mine {
            if compatible(cfg, &l.subnet) {
                return reuse_lease(client, keys, cfg, req, l).await;
            }
            tracing::info!(subnet = %l.subnet, "this node's old lease does not fit the network config; deleting it");
            client
                .delete(keys.subnet(&l.subnet), None)
                .await
                .map_err(|source| StoreError::LeaseDelete {
                    subnet: l.subnet,
                    source,
                })?;
            continue;
        }

        let (chosen, reused_previous) = choose_free_subnet(cfg, req, &leases)?;
        let mac = req
            .vtep_mac
            .unwrap_or_else(|| derive_vtep_mac(req.public_ip, cfg.backend.vni));
        let record = own_record(cfg, req.public_ip, mac);
        if let Some(own) = create_if_absent(client, keys, chosen, record, req.ttl).await? {
            tracing::info!(subnet = %own.subnet, public_ip = %req.public_ip, reused_previous, "acquired a new lease");
            return Ok(own);
        }
        tracing::debug!(subnet = %chosen, "another node took the subnet first; trying again");
    }
    Err(StoreError::AcquireRaces {
        attempts: RACE_RETRIES,
    })
}

/// Takes over `l`, the lease that already carries our PublicIP, with a fresh grant, keeping
/// the VTEP MAC it names (else the requested one, else a derived one).
async fn reuse_lease(
    client: &mut Client,
    keys: &Keys,
    cfg: &NetworkConfig,
    req: &AcquireRequest,
    l: &Listed,
) -> Result<OwnLease, StoreError> {
    let old_mac = match &l.record {
        Ok(LeaseRecord {
            backend: BackendRecord::Vxlan { vtep_mac, .. },
            ..
        }) => Some(*vtep_mac),
        _ => None,
    };
    let mac = old_mac
        .or(req.vtep_mac)
        .unwrap_or_else(|| derive_vtep_mac(req.public_ip, cfg.backend.vni));
    let record = own_record(cfg, req.public_ip, mac);
    let own = put_with_fresh_grant(client, keys, l.subnet, record, req.ttl).await?;
    revoke_quietly(client, l.etcd_lease).await;
    tracing::info!(subnet = %own.subnet, public_ip = %req.public_ip, "reusing the lease that carries this node's public IP");
    Ok(own)
}

/// The subnet to try to create, and whether it is the one from subnet.env: that one if it
/// fits the config and is free, else a random pick among the first [`PICK_AMONG`] free ones.
/// A key of another prefix length holds every subnet it overlaps.
fn choose_free_subnet(
    cfg: &NetworkConfig,
    req: &AcquireRequest,
    leases: &[Listed],
) -> Result<(Subnet, bool), StoreError> {
    let same_len: HashSet<Subnet> = leases
        .iter()
        .filter(|l| l.subnet.prefix_len() == cfg.subnet_len)
        .map(|l| l.subnet)
        .collect();
    let odd: Vec<Subnet> = leases
        .iter()
        .filter(|l| l.subnet.prefix_len() != cfg.subnet_len)
        .map(|l| l.subnet)
        .collect();
    let taken = |s: &Subnet| same_len.contains(s) || odd.iter().any(|o| o.overlaps(s));

    if let Some(s) = req
        .previous_subnet
        .filter(|s| compatible(cfg, s) && !taken(s))
    {
        return Ok((s, true));
    }
    let free: Vec<Subnet> = cfg
        .subnets()
        .filter(|s| !taken(s))
        .take(PICK_AMONG)
        .collect();
    if free.is_empty() {
        return Err(StoreError::OutOfSubnets {
            network: cfg.network,
            min: cfg.subnet_min,
            max: cfg.subnet_max,
            count: cfg.subnet_count(),
        });
    }
    Ok((free[rand::rng().random_range(0..free.len())], false))
}
