//! This node's lease: reading the config, acquiring a subnet, renewing it, re-creating it.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use rand::Rng;
use tokio::time::Instant;

use super::check::is_empty_ipv4;
use super::list::for_each_lease;
use super::record::{BackendRecord, LeaseRecord, RecordError, VxlanV6Record};
use super::vtep::{derive_vtep_mac, derive_vtep_mac6};
use super::{Keys, StoreError};
use crate::config::{BackendType, NetworkConfig};
use crate::wire::{EthernetAddress, Subnet, Subnet6};

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
    read_config_text(client, keys, parse).await.map(|(c, _)| c)
}

/// [`read_config_with`], also giving the config's text as etcd holds it (for the state file).
pub(crate) async fn read_config_text(
    client: &mut Client,
    keys: &Keys,
    parse: fn(&str) -> Result<NetworkConfig, crate::config::ConfigError>,
) -> Result<(NetworkConfig, String), StoreError> {
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
    let text = String::from_utf8_lossy(kv.value()).into_owned();
    let config = parse(&text).map_err(|source| StoreError::ConfigInvalid { key, source })?;
    Ok((config, text))
}

/// One lease key as listed, its subnets read from the key.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    /// The key as stored (deleting a stale lease deletes exactly this key).
    pub key: Vec<u8>,
    pub subnet: Subnet,
    /// The IPv6 subnet of a dual-stack key.
    pub subnet6: Option<Subnet6>,
    pub record: Result<LeaseRecord, RecordError>,
    pub etcd_lease: i64,
}

/// Lists every lease key whose name is a subnet (the acquire step's view: any key, valid
/// record or not, holds its subnets), with the store revision of the read; records are read
/// as `cfg`'s network reads them ([`LeaseRecord::parse_for`]). A key whose IPv6 part flannel
/// would not read still holds its IPv4 subnet here: better a subnet skipped than one handed
/// out twice.
pub(crate) async fn list_leases(
    client: &mut Client,
    keys: &Keys,
    cfg: &NetworkConfig,
) -> Result<(Vec<Listed>, i64), StoreError> {
    let mut listed = Vec::new();
    let revision = for_each_lease(client, keys, |kv| {
        let subnets = keys
            .parse_subnet_key_dual(kv.key())
            .or_else(|| Some((keys.parse_subnet_key(kv.key())?, None)));
        if let Some((subnet, subnet6)) = subnets {
            listed.push(Listed {
                subnet,
                subnet6,
                record: LeaseRecord::parse_for(cfg, kv.value()),
                etcd_lease: kv.lease(),
                key: kv.key().to_vec(),
            });
        }
    })
    .await?;
    Ok((listed, revision))
}

impl Listed {
    /// Whether this key holds `subnet` or `subnet6` (overlapping either counts). flannel's
    /// empty IPv4 net (`0.0.0.0-0`, IPv6-only keys) holds no IPv4 subnet, nor is it held.
    pub(crate) fn holds(&self, subnet: &Subnet, subnet6: Option<&Subnet6>) -> bool {
        (self.holds_ipv4() && !is_empty_ipv4(subnet) && self.subnet.overlaps(subnet))
            || matches!((self.subnet6, subnet6), (Some(a), Some(b)) if a.overlaps(b))
    }

    /// Whether the key's IPv4 part holds any IPv4 subnet (not flannel's empty net).
    fn holds_ipv4(&self) -> bool {
        !is_empty_ipv4(&self.subnet)
    }
}

/// What this node asks for when acquiring its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcquireRequest {
    /// This node's underlay address (`--public-ip`). On an IPv6-only network it is not
    /// used (the record says `"PublicIP":"0.0.0.0"`, as flanneld's) and may be
    /// [`Ipv4Addr::UNSPECIFIED`]; on a network with IPv4 it must be a real address
    /// ([`StoreError::NoPublicIp`] otherwise).
    pub public_ip: Ipv4Addr,
    /// This node's underlay IPv6 address (`--public-ipv6`), written as `PublicIPv6`; needed
    /// when the network enables IPv6, unused otherwise.
    pub public_ipv6: Option<Ipv6Addr>,
    /// The subnet from an existing subnet.env, tried first if free.
    pub previous_subnet: Option<Subnet>,
    /// The IPv6 subnet from an existing subnet.env (`FLANNEL_IPV6_SUBNET`), tried first if
    /// free.
    pub previous_subnet6: Option<Subnet6>,
    /// The lease TTL to ask etcd for (flannel: 24 h).
    pub ttl: Duration,
    /// The VTEP MAC to use when no existing lease names one; `None` derives a stable one.
    pub vtep_mac: Option<EthernetAddress>,
    /// The IPv6 VTEP's MAC to use when no existing lease names one; `None` derives a stable
    /// one, never equal to the IPv4 VTEP's.
    pub vtep_mac6: Option<EthernetAddress>,
}

/// This node's lease as held in etcd.
///
/// On an IPv6-only network (`EnableIPv4: false`) the lease is flanneld's IPv6-only one: key
/// `0.0.0.0-0&fd10:0:0:2::-64`, `subnet` is flannel's empty net `0.0.0.0/0` (what the key
/// says) and only `subnet6` is leased. Code outside the store must read the IPv4 subnet with
/// [`OwnLease::subnet4`], never `subnet`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnLease {
    /// The IPv4 part of the key: the leased subnet, or `0.0.0.0/0` for an IPv6-only lease
    /// (outside the store use [`OwnLease::subnet4`]).
    pub subnet: Subnet,
    /// The leased IPv6 subnet, when the network enables IPv6 (the key is then the dual
    /// `10.1.2.0-24&fd10:0:0:2::-64`, or `0.0.0.0-0&fd10:0:0:2::-64` IPv6-only).
    pub subnet6: Option<Subnet6>,
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
    /// The leased IPv4 subnet; `None` for an IPv6-only lease.
    pub fn subnet4(&self) -> Option<Subnet> {
        (!self.is_ipv6_only()).then_some(self.subnet)
    }

    /// The lease's subnets in words, for logs: `10.1.2.0/24`, `10.1.2.0/24 and
    /// fd10:0:0:2::/64`, or for an IPv6-only lease `fd10:0:0:2::/64` (not the empty IPv4 net
    /// its key holds).
    pub fn subnets(&self) -> String {
        match (self.subnet4(), self.subnet6) {
            (Some(s), Some(s6)) => format!("{s} and {s6}"),
            (None, Some(s6)) => s6.to_string(),
            (s, None) => s.unwrap_or(self.subnet).to_string(),
        }
    }

    /// Whether this is an IPv6-only lease (key `0.0.0.0-0&<IPv6 subnet>`).
    pub fn is_ipv6_only(&self) -> bool {
        is_ipv6_only_pair(&self.subnet, self.subnet6.as_ref())
    }

    /// The VTEP MAC this node advertises (vxlan backend with IPv4 only).
    pub fn vtep_mac(&self) -> Option<EthernetAddress> {
        match self.record.backend {
            BackendRecord::Vxlan { vtep_mac, .. } => Some(vtep_mac),
            _ => None,
        }
    }

    /// The IPv6 VTEP's MAC this node advertises (`BackendV6Data.VtepMAC`: vxlan, dual stack).
    pub fn vtep_mac6(&self) -> Option<EthernetAddress> {
        self.record.backend_v6.map(|d| d.vtep_mac)
    }

    /// The underlay IPv6 address this node advertises (`PublicIPv6`).
    pub fn public_ipv6(&self) -> Option<Ipv6Addr> {
        self.record.public_ipv6
    }

    /// This lease's key as the subnets it names.
    pub fn lease_key(&self) -> crate::table::LeaseKey {
        crate::table::LeaseKey {
            subnet: self.subnet,
            subnet6: self.subnet6,
        }
    }

    /// The etcd key of this lease: `<prefix>/subnets/10.1.2.0-24`, or with an IPv6 subnet
    /// `<prefix>/subnets/10.1.2.0-24&fd10:0:0:2::-64`.
    pub fn key(&self, keys: &Keys) -> String {
        keys.subnet_dual(&self.subnet, self.subnet6.as_ref())
    }
}

/// Whether a key's subnets are an IPv6-only lease's: flannel's empty IPv4 net and an IPv6
/// subnet.
fn is_ipv6_only_pair(subnet: &Subnet, subnet6: Option<&Subnet6>) -> bool {
    subnet6.is_some() && is_empty_ipv4(subnet)
}

/// Whether a lease fits the current config (flannel's `isSubnetConfigCompat`).
fn compatible(cfg: &NetworkConfig, s: &Subnet) -> bool {
    s.prefix_len() == cfg.subnet_len && cfg.network.contains_subnet(s)
}

/// Whether a lease's IPv6 half fits the current config (flannel's
/// `isIPv6SubnetConfigCompat`): without IPv6 it must have none, with IPv6 one of
/// IPv6SubnetLen between IPv6SubnetMin and IPv6SubnetMax.
fn compatible6(cfg: &NetworkConfig, s6: Option<&Subnet6>) -> bool {
    match (&cfg.ipv6, s6) {
        (None, None) => true,
        (Some(v6), Some(s6)) => v6.is_leasable(s6),
        _ => false,
    }
}

/// This node's IPv6 half of a record: its PublicIPv6 and its IPv6 VTEP's MAC.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OwnV6 {
    pub public_ipv6: Ipv6Addr,
    pub vtep_mac: EthernetAddress,
}

/// The record this node writes for the configured backend; `v6` adds `PublicIPv6` and, for
/// vxlan, `BackendV6Data` (flanneld's dual-stack record). On an IPv6-only network it is
/// flanneld's IPv6-only record: `"PublicIP":"0.0.0.0"` and no `BackendData` (`public_ip` and
/// `vtep_mac` are not used).
pub(crate) fn own_record(
    cfg: &NetworkConfig,
    public_ip: Ipv4Addr,
    vtep_mac: EthernetAddress,
    v6: Option<OwnV6>,
) -> LeaseRecord {
    let vni = cfg.backend.vni.get();
    let public_ip = if cfg.enable_ipv4 {
        public_ip
    } else {
        Ipv4Addr::UNSPECIFIED
    };
    let (backend, backend_v6) = match cfg.backend.kind {
        BackendType::Vxlan => (
            if cfg.enable_ipv4 {
                BackendRecord::Vxlan { vni, vtep_mac }
            } else {
                BackendRecord::VxlanIpv6Only
            },
            v6.map(|v6| VxlanV6Record {
                vni,
                vtep_mac: v6.vtep_mac,
            }),
        ),
        BackendType::Udp => (BackendRecord::None, None),
        BackendType::HostGw => (BackendRecord::HostGw, None),
    };
    LeaseRecord {
        public_ip,
        public_ipv6: v6.map(|v6| v6.public_ipv6),
        backend_v6,
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

/// Writes `record` at the key of `subnet` (and `subnet6`) with a fresh grant, whatever is
/// there (reuse, renewal).
pub(crate) async fn put_with_fresh_grant(
    client: &mut Client,
    keys: &Keys,
    (subnet, subnet6): (Subnet, Option<Subnet6>),
    record: LeaseRecord,
    ttl: Duration,
) -> Result<OwnLease, StoreError> {
    let (id, expires_at) = grant(client, ttl).await?;
    let key = keys.subnet_dual(&subnet, subnet6.as_ref());
    let put = client
        .put(
            key.as_str(),
            record.to_json(),
            Some(PutOptions::new().with_lease(id)),
        )
        .await;
    let revision = match put {
        Ok(r) => r.header().map(|h| h.revision()).unwrap_or(0),
        Err(source) => {
            revoke_quietly(client, id).await;
            return Err(StoreError::LeaseRenew { key, source });
        }
    };
    Ok(OwnLease {
        subnet,
        subnet6,
        record,
        etcd_lease: id,
        expires_at,
        revision,
    })
}

/// Creates the key of `subnet` (and `subnet6`) only if no key names `subnet` yet: neither
/// `10.1.2.0-24` nor any `10.1.2.0-24&...`. `Ok(None)` when another node has it.
///
/// An IPv6 subnet can sit under any IPv4 part, so no key comparison can tell it is free;
/// for a dual-stack key, `listed_at` (the revision of the listing the subnets were chosen
/// from) makes the creation fail when any lease key was created since, and the caller
/// chooses again from a fresh listing. An IPv6-only key (`0.0.0.0-0&...`, whose IPv4 part
/// every IPv6-only lease shares) is created only if it does not exist, under the same
/// guard.
pub(crate) async fn create_if_absent(
    client: &mut Client,
    keys: &Keys,
    (subnet, subnet6): (Subnet, Option<Subnet6>),
    record: LeaseRecord,
    ttl: Duration,
    listed_at: i64,
) -> Result<Option<OwnLease>, StoreError> {
    let (id, expires_at) = grant(client, ttl).await?;
    let key = keys.subnet_dual(&subnet, subnet6.as_ref());
    let v4_key = keys.subnet(&subnet);
    let mut free = if is_ipv6_only_pair(&subnet, subnet6.as_ref()) {
        vec![Compare::version(key.as_str(), CompareOp::Equal, 0)]
    } else {
        vec![
            Compare::version(v4_key.as_str(), CompareOp::Equal, 0),
            Compare::version(format!("{v4_key}&"), CompareOp::Equal, 0).with_prefix(),
        ]
    };
    if subnet6.is_some() {
        free.push(
            Compare::create_revision(keys.subnets_dir(), CompareOp::Less, listed_at + 1)
                .with_prefix(),
        );
    }
    let txn = Txn::new().when(free).and_then([TxnOp::put(
        key.as_str(),
        record.to_json(),
        Some(PutOptions::new().with_lease(id)),
    )]);
    match client.txn(txn).await {
        Ok(r) if r.succeeded() => Ok(Some(OwnLease {
            subnet,
            subnet6,
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
            Err(StoreError::LeaseCreate { key, source })
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
    let next = put_with_fresh_grant(
        client,
        keys,
        (own.subnet, own.subnet6),
        own.record.clone(),
        ttl,
    )
    .await?;
    if own.etcd_lease != next.etcd_lease {
        revoke_quietly(client, own.etcd_lease).await;
    }
    Ok(next)
}

/// Acquires this node's lease following flanneld's order: the lease already carrying our
/// PublicIP; else the subnet from subnet.env if free; else a random one of the first 100
/// free subnets from SubnetMin. New keys are created only by a compare-and-create
/// transaction, so two nodes never share a subnet; lost races are retried.
///
/// With IPv6 enabled the lease is dual-stack, as flanneld makes it: an IPv6 subnet is
/// picked the same way alongside (the one from subnet.env's `FLANNEL_IPV6_SUBNET` if free,
/// else a random one of the first 100 free from IPv6SubnetMin), the key is
/// `10.1.2.0-24&fd10:0:0:2::-64` and the record carries `PublicIPv6` and (vxlan)
/// `BackendV6Data`. Every key holds both of its subnets against every node.
///
/// On an IPv6-only network (`EnableIPv4: false`) the lease is IPv6-only, in flanneld's key
/// and record form (`0.0.0.0-0&fd10:0:0:2::-64`, `"PublicIP":"0.0.0.0"`, no `BackendData`),
/// and this node's existing lease is the one naming its PublicIPv6.
pub async fn acquire_lease(
    client: &mut Client,
    keys: &Keys,
    cfg: &NetworkConfig,
    req: &AcquireRequest,
) -> Result<OwnLease, StoreError> {
    let public_ipv6 = match cfg.ipv6 {
        Some(_) => Some(req.public_ipv6.ok_or(StoreError::NoPublicIpv6)?),
        None => None,
    };
    if cfg.enable_ipv4 && req.public_ip.is_unspecified() {
        return Err(StoreError::NoPublicIp);
    }
    // flanneld finds its lease by PublicIP alone, in dual stack too. On an IPv6-only network
    // that is 0.0.0.0 for every node (flanneld's nodes take over each other's leases there):
    // weft finds its lease by PublicIPv6 instead. The config enables IPv6 whenever it
    // disables IPv4, so `public_ipv6` is then known.
    let is_mine = |r: &LeaseRecord| match cfg.enable_ipv4 {
        true => r.public_ip == req.public_ip,
        false => public_ipv6.is_some() && r.public_ipv6 == public_ipv6,
    };
    // Our key's IPv4 part: a subnet of the Network, or on an IPv6-only network flannel's
    // empty net `0.0.0.0-0`.
    let fits4 = |l: &Listed| match cfg.enable_ipv4 {
        true => compatible(cfg, &l.subnet),
        false => is_ipv6_only_pair(&l.subnet, l.subnet6.as_ref()),
    };
    for _ in 0..RACE_RETRIES {
        let (leases, listed_at) = list_leases(client, keys, cfg).await?;

        let mine = leases
            .iter()
            .find(|l| matches!(&l.record, Ok(r) if is_mine(r)));
        if let Some(l) = mine {
            // A key in another form than ours (an IPv6 part flannel would not read) is
            // replaced too: renewing would write a second key beside it.
            let canonical = keys.subnet_dual(&l.subnet, l.subnet6.as_ref());
            if fits4(l)
                && compatible6(cfg, l.subnet6.as_ref())
                && canonical.as_bytes() == l.key.as_slice()
            {
                return reuse_lease(client, keys, cfg, req, public_ipv6, l).await;
            }
            let key = String::from_utf8_lossy(&l.key).into_owned();
            tracing::info!(%key, "this node's old lease does not fit the network config; deleting it");
            client
                .delete(l.key.clone(), None)
                .await
                .map_err(|source| StoreError::LeaseDelete { key, source })?;
            continue;
        }

        let chosen = choose_free_subnets(cfg, req, &leases)?;
        // An IPv6-only node has no IPv4 VTEP (`own_record` writes no BackendData).
        let mac = match cfg.enable_ipv4 {
            true => req
                .vtep_mac
                .unwrap_or_else(|| derive_vtep_mac(req.public_ip, cfg.backend.vni)),
            false => NO_MAC,
        };
        let v6 = public_ipv6.map(|ip6| OwnV6 {
            public_ipv6: ip6,
            vtep_mac: req
                .vtep_mac6
                .unwrap_or_else(|| derive_vtep_mac6(ip6, cfg.backend.vni, mac)),
        });
        let record = own_record(cfg, req.public_ip, mac, v6);
        let pair = (chosen.subnet, chosen.subnet6);
        let created = create_if_absent(client, keys, pair, record, req.ttl, listed_at).await?;
        if let Some(own) = created {
            tracing::info!(
                subnets = %own.subnets(),
                public_ip = %own.record.public_ip,
                public_ipv6 = ?public_ipv6.map(|ip| ip.to_string()),
                reused_previous = chosen.previous,
                reused_previous6 = chosen.previous6,
                "acquired a new lease"
            );
            return Ok(own);
        }
        tracing::debug!(subnet = %chosen.subnet, subnet6 = ?chosen.subnet6.map(|s| s.to_string()), "another node took the subnet first, or created a lease since the listing; trying again");
    }
    Err(StoreError::AcquireRaces {
        attempts: RACE_RETRIES,
    })
}

/// No IPv4 VTEP MAC (an IPv6-only node has no IPv4 VTEP); never a derived MAC, which is
/// always locally administered.
const NO_MAC: EthernetAddress = EthernetAddress([0; 6]);

/// Takes over `l`, the lease that already carries our PublicIP (our PublicIPv6 on an
/// IPv6-only network), with a fresh grant, keeping
/// the VTEP MACs it names (else the requested ones, else derived ones).
async fn reuse_lease(
    client: &mut Client,
    keys: &Keys,
    cfg: &NetworkConfig,
    req: &AcquireRequest,
    public_ipv6: Option<Ipv6Addr>,
    l: &Listed,
) -> Result<OwnLease, StoreError> {
    let (old_mac, old_mac6) = match &l.record {
        Ok(LeaseRecord {
            backend: BackendRecord::Vxlan { vtep_mac, .. },
            backend_v6,
            ..
        }) => (Some(*vtep_mac), backend_v6.map(|d| d.vtep_mac)),
        Ok(LeaseRecord {
            backend: BackendRecord::VxlanIpv6Only,
            backend_v6,
            ..
        }) => (None, backend_v6.map(|d| d.vtep_mac)),
        _ => (None, None),
    };
    let mac = if cfg.enable_ipv4 {
        old_mac
            .or(req.vtep_mac)
            .unwrap_or_else(|| derive_vtep_mac(req.public_ip, cfg.backend.vni))
    } else {
        NO_MAC
    };
    let v6 = public_ipv6.map(|ip6| OwnV6 {
        public_ipv6: ip6,
        vtep_mac: old_mac6
            .or(req.vtep_mac6)
            .unwrap_or_else(|| derive_vtep_mac6(ip6, cfg.backend.vni, mac)),
    });
    let record = own_record(cfg, req.public_ip, mac, v6);
    let own = put_with_fresh_grant(client, keys, (l.subnet, l.subnet6), record, req.ttl).await?;
    revoke_quietly(client, l.etcd_lease).await;
    tracing::info!(
        subnets = %own.subnets(),
        public_ip = %own.record.public_ip,
        public_ipv6 = ?public_ipv6.map(|ip| ip.to_string()),
        "reusing the lease that carries this node's public IP"
    );
    Ok(own)
}

/// The subnets chosen for a new lease, and whether each is the one from subnet.env.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Chosen {
    subnet: Subnet,
    subnet6: Option<Subnet6>,
    previous: bool,
    previous6: bool,
}

/// The subnets to try to create: in each family the one from subnet.env if it fits the
/// config and is free, else a random pick among the first [`PICK_AMONG`] free ones. A key of
/// another prefix length holds every subnet it overlaps. The IPv6 subnet is chosen only
/// when the network enables IPv6.
///
/// flanneld takes the previous subnets only as a pair (and then does not check the IPv6 one
/// is free); here each is taken on its own when free, so a node moving to dual stack keeps
/// its IPv4 subnet and no IPv6 subnet is ever handed out twice. On an IPv6-only network the
/// IPv4 part is the config's empty `0.0.0.0/0`.
fn choose_free_subnets(
    cfg: &NetworkConfig,
    req: &AcquireRequest,
    leases: &[Listed],
) -> Result<Chosen, StoreError> {
    let (subnet, previous) = if cfg.enable_ipv4 {
        choose_free_subnet(cfg, req, leases)?
    } else {
        (cfg.network, false)
    };
    let (subnet6, previous6) = match choose_free_subnet6(cfg, req, leases)? {
        Some((s6, prev)) => (Some(s6), prev),
        None => (None, false),
    };
    Ok(Chosen {
        subnet,
        subnet6,
        previous,
        previous6,
    })
}

/// The IPv4 subnet of a new lease, and whether it is the one from subnet.env.
fn choose_free_subnet(
    cfg: &NetworkConfig,
    req: &AcquireRequest,
    leases: &[Listed],
) -> Result<(Subnet, bool), StoreError> {
    let held = leases.iter().filter(|l| l.holds_ipv4()).map(|l| l.subnet);
    let same_len: HashSet<Subnet> = held
        .clone()
        .filter(|s| s.prefix_len() == cfg.subnet_len)
        .collect();
    let odd: Vec<Subnet> = held.filter(|s| s.prefix_len() != cfg.subnet_len).collect();
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

/// The IPv6 subnet of a new lease and whether it is the one from subnet.env; `None` when
/// the network has no IPv6.
fn choose_free_subnet6(
    cfg: &NetworkConfig,
    req: &AcquireRequest,
    leases: &[Listed],
) -> Result<Option<(Subnet6, bool)>, StoreError> {
    let Some(v6) = &cfg.ipv6 else {
        return Ok(None);
    };
    let held = leases.iter().filter_map(|l| l.subnet6);
    let same_len: HashSet<Subnet6> = held
        .clone()
        .filter(|s| s.prefix_len() == v6.subnet_len)
        .collect();
    let odd: Vec<Subnet6> = held.filter(|s| s.prefix_len() != v6.subnet_len).collect();
    let taken = |s: &Subnet6| same_len.contains(s) || odd.iter().any(|o| o.overlaps(s));

    if let Some(s) = req
        .previous_subnet6
        .filter(|s| v6.is_leasable(s) && !taken(s))
    {
        return Ok(Some((s, true)));
    }
    // Walking from IPv6SubnetMin, a shorter key is stepped over whole, so the walk ends
    // after at most (leases + PICK_AMONG) steps however large the range.
    let shift = 128 - u32::from(v6.subnet_len);
    let min = u128::from(v6.subnet_min);
    let (count, mut n) = (v6.subnet_count(), 0u128);
    let mut free: Vec<Subnet6> = Vec::new();
    while n < count && free.len() < PICK_AMONG {
        let Some(s) = v6.nth_subnet(n) else { break };
        let wider = odd
            .iter()
            .find(|o| o.prefix_len() < v6.subnet_len && o.contains_subnet(&s));
        if let Some(o) = wider {
            match u128::from(o.last_addr()).checked_add(1) {
                Some(next) => n = (next - min) >> shift,
                None => break,
            }
            continue;
        }
        if !taken(&s) {
            free.push(s);
        }
        n += 1;
    }
    if free.is_empty() {
        return Err(StoreError::OutOfIpv6Subnets {
            network: v6.network,
            min: v6.subnet_min,
            max: v6.subnet_max,
            count: v6.subnet_count(),
        });
    }
    Ok(Some((free[rand::rng().random_range(0..free.len())], false)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> NetworkConfig {
        NetworkConfig::parse(json).unwrap()
    }

    fn dual() -> NetworkConfig {
        cfg(
            r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/48","Backend":{"Type":"vxlan"}}"#,
        )
    }

    fn req() -> AcquireRequest {
        AcquireRequest {
            public_ip: Ipv4Addr::new(192, 168, 77, 1),
            public_ipv6: Some("fd77::1".parse().unwrap()),
            previous_subnet: None,
            previous_subnet6: None,
            ttl: Duration::from_secs(60),
            vtep_mac: None,
            vtep_mac6: None,
        }
    }

    fn listed(keys: &Keys, key: &str) -> Listed {
        let key = format!("{}{key}", keys.subnets_dir()).into_bytes();
        let (subnet, subnet6) = keys.parse_subnet_key_dual(&key).unwrap();
        Listed {
            key,
            subnet,
            subnet6,
            record: LeaseRecord::parse(b"{}"),
            etcd_lease: 0,
        }
    }

    #[test]
    fn dual_keys_hold_both_families() {
        let keys = Keys::new("/n");
        // Every IPv4 subnet but 10.1.9.0/24 is held, each by a key naming fd10:0:0:7::/64;
        // 10.1.10.0/24's key also holds fd10::/52 (fd10:0:0:0::/64 to fd10:0:0:fff::/64).
        let mut leases: Vec<Listed> = (1..=255)
            .filter(|i| *i != 9 && *i != 10)
            .map(|i| listed(&keys, &format!("10.1.{i}.0-24&fd10:0:0:7::-64")))
            .collect();
        leases.push(listed(&keys, "10.1.10.0-24&fd10::-52"));
        let c = dual();
        let wide: Subnet6 = "fd10::/52".parse().unwrap();
        for _ in 0..20 {
            let got = choose_free_subnets(&c, &req(), &leases).unwrap();
            assert_eq!(got.subnet, "10.1.9.0/24".parse().unwrap());
            let s6 = got.subnet6.unwrap();
            assert!(
                !wide.overlaps(&s6) && c.ipv6.unwrap().is_leasable(&s6),
                "{s6}"
            );
            assert!(!got.previous && !got.previous6);
        }
        // Without the wide key fd10:0:0:7::/64 is still held, and 10.1.10.0/24 is free too.
        leases.pop();
        for _ in 0..20 {
            let got = choose_free_subnets(&c, &req(), &leases).unwrap();
            assert_ne!(got.subnet6, Some("fd10:0:0:7::/64".parse().unwrap()));
        }
        // All IPv4 subnets held: out of subnets, whatever IPv6 has free.
        leases.push(listed(&keys, "10.1.9.0-24&fd10:0:0:7::-64"));
        leases.push(listed(&keys, "10.1.10.0-24"));
        let e = choose_free_subnets(&c, &req(), &leases).unwrap_err();
        assert!(matches!(e, StoreError::OutOfSubnets { .. }), "{e}");
    }

    #[test]
    fn previous_subnets_are_taken_each_when_free() {
        let keys = Keys::new("/n");
        let c = dual();
        let mut r = req();
        r.previous_subnet = Some("10.1.5.0/24".parse().unwrap());
        r.previous_subnet6 = Some("fd10:0:0:5::/64".parse().unwrap());
        let got = choose_free_subnets(&c, &r, &[]).unwrap();
        assert_eq!(
            got,
            Chosen {
                subnet: "10.1.5.0/24".parse().unwrap(),
                subnet6: Some("fd10:0:0:5::/64".parse().unwrap()),
                previous: true,
                previous6: true,
            }
        );
        // Another node holds the IPv6 one (under another IPv4 subnet): the IPv4 one stays.
        let held = [listed(&keys, "10.1.8.0-24&fd10:0:0:5::-64")];
        let got = choose_free_subnets(&c, &r, &held).unwrap();
        assert!(got.previous && !got.previous6);
        assert_ne!(got.subnet6, r.previous_subnet6);
        // A previous IPv6 subnet outside IPv6SubnetMin..Max (the first one) is not asked for.
        r.previous_subnet6 = Some("fd10::/64".parse().unwrap());
        let got = choose_free_subnets(&c, &r, &[]).unwrap();
        assert!(!got.previous6 && got.subnet6 != r.previous_subnet6);
        // Without IPv6 in the config no IPv6 subnet is chosen, whatever subnet.env said.
        let v4 = cfg(r#"{"Network":"10.1.0.0/16"}"#);
        let got = choose_free_subnets(&v4, &r, &[]).unwrap();
        assert_eq!(got.subnet6, None);
        assert!(got.previous);
    }

    #[test]
    fn a_full_ipv6_range_is_out_of_ipv6_subnets() {
        let keys = Keys::new("/n");
        // fd10::/124 in /126s: three leasable (the first is skipped).
        let c = cfg(r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/124"}"#);
        let v6 = c.ipv6.unwrap();
        assert_eq!((v6.subnet_len, v6.subnet_count()), (126, 3));
        let held: Vec<Listed> = ["4", "8", "c"]
            .iter()
            .enumerate()
            .map(|(i, h)| listed(&keys, &format!("10.1.{}.0-24&fd10::{h}-126", i + 1)))
            .collect();
        let e = choose_free_subnets(&c, &req(), &held).unwrap_err();
        assert!(
            matches!(e, StoreError::OutOfIpv6Subnets { count: 3, .. }),
            "{e}"
        );
        assert!(e.to_string().starts_with("out of IPv6 subnets"), "{e}");
        let got = choose_free_subnets(&c, &req(), &held[..2]).unwrap();
        assert_eq!(got.subnet6, Some("fd10::c/126".parse().unwrap()));
    }

    #[test]
    fn a_huge_range_under_one_wide_key_is_stepped_over() {
        let keys = Keys::new("/n");
        // fd10::/16 in /64s: 2^48 subnets, the first 2^32 of them under one /32 key.
        let c = cfg(
            r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/16","IPv6SubnetLen":64}"#,
        );
        let held = [listed(&keys, "10.1.1.0-24&fd10::-32")];
        let got = choose_free_subnets(&c, &req(), &held).unwrap();
        let s6 = got.subnet6.unwrap();
        assert!(
            !"fd10::/32".parse::<Subnet6>().unwrap().overlaps(&s6),
            "{s6}"
        );
        assert!(c.ipv6.unwrap().is_leasable(&s6));
    }

    #[test]
    fn own_records_are_flanneld_records() {
        let mac: EthernetAddress = "c6:d2:32:6f:8f:44".parse().unwrap();
        let v6 = OwnV6 {
            public_ipv6: "fd77::1".parse().unwrap(),
            vtep_mac: "9e:1a:77:20:4b:01".parse().unwrap(),
        };
        let ip = Ipv4Addr::new(192, 168, 77, 1);
        assert_eq!(
            own_record(&dual(), ip, mac, Some(v6)).to_json(),
            r#"{"PublicIP":"192.168.77.1","PublicIPv6":"fd77::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"BackendV6Data":{"VNI":1,"VtepMAC":"9e:1a:77:20:4b:01"}}"#
        );
        let hg = cfg(
            r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/48","Backend":{"Type":"host-gw"}}"#,
        );
        assert_eq!(
            own_record(&hg, ip, mac, Some(v6)).to_json(),
            r#"{"PublicIP":"192.168.77.1","PublicIPv6":"fd77::1","BackendType":"host-gw"}"#
        );
        let v4 = cfg(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan"}}"#);
        assert_eq!(
            own_record(&v4, ip, mac, None).to_json(),
            r#"{"PublicIP":"192.168.77.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#
        );
    }

    #[test]
    fn compatibility_of_the_ipv6_half_is_flannels() {
        let c = dual();
        assert!(compatible6(&c, Some(&"fd10:0:0:2::/64".parse().unwrap())));
        // No IPv6 half, the first (skipped) subnet, another length, outside the network.
        for bad in [
            None,
            Some("fd10::/64"),
            Some("fd10:0:0:2::/80"),
            Some("fd11::/64"),
        ] {
            let s6 = bad.map(|s| s.parse::<Subnet6>().unwrap());
            assert!(!compatible6(&c, s6.as_ref()), "{bad:?}");
        }
        let v4 = cfg(r#"{"Network":"10.1.0.0/16"}"#);
        assert!(compatible6(&v4, None));
        assert!(!compatible6(&v4, Some(&"fd10:0:0:2::/64".parse().unwrap())));
    }

    fn v6_only() -> NetworkConfig {
        cfg(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd10::/48","Backend":{"Type":"vxlan"}}"#,
        )
    }

    #[test]
    fn ipv6_only_records_are_flanneld_s() {
        let v6 = OwnV6 {
            public_ipv6: "fd77::1".parse().unwrap(),
            vtep_mac: "9e:1a:77:20:4b:01".parse().unwrap(),
        };
        // Whatever IPv4 address and MAC are passed, none is written.
        let ip = Ipv4Addr::new(192, 168, 77, 1);
        let mac: EthernetAddress = "c6:d2:32:6f:8f:44".parse().unwrap();
        let want = r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd77::1","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"9e:1a:77:20:4b:01"}}"#;
        assert_eq!(own_record(&v6_only(), ip, mac, Some(v6)).to_json(), want);
        assert_eq!(
            own_record(&v6_only(), Ipv4Addr::UNSPECIFIED, NO_MAC, Some(v6)).to_json(),
            want
        );
    }

    #[test]
    fn ipv6_only_subnets_are_chosen_in_ipv6_alone() {
        let keys = Keys::new("/n");
        let c = v6_only();
        let mut r = req();
        r.previous_subnet = Some("10.1.5.0/24".parse().unwrap());
        r.previous_subnet6 = Some("fd10:0:0:5::/64".parse().unwrap());
        let held = [
            listed(&keys, "0.0.0.0-0&fd10:0:0:1::-64"),
            listed(&keys, "0.0.0.0-0&fd10:0:0:2::-64"),
        ];
        let got = choose_free_subnets(&c, &r, &held).unwrap();
        assert_eq!(
            got,
            Chosen {
                subnet: "0.0.0.0/0".parse().unwrap(),
                subnet6: r.previous_subnet6,
                previous: false,
                previous6: true,
            }
        );
        // Held previous: a random free one, never a held one.
        r.previous_subnet6 = Some("fd10:0:0:2::/64".parse().unwrap());
        for _ in 0..20 {
            let got = choose_free_subnets(&c, &r, &held).unwrap();
            let s6 = got.subnet6.unwrap();
            assert!(!held.iter().any(|l| l.subnet6 == Some(s6)), "{s6}");
            assert!(!got.previous6);
        }
    }

    #[test]
    fn the_empty_ipv4_net_holds_no_ipv4_subnet() {
        let keys = Keys::new("/n");
        let v6_only_key = listed(&keys, "0.0.0.0-0&fd10:0:0:7::-64");
        let s: Subnet = "10.1.9.0/24".parse().unwrap();
        assert!(!v6_only_key.holds(&s, None));
        assert!(v6_only_key.holds(&s, Some(&"fd10:0:0:7::/64".parse().unwrap())));
        let empty: Subnet = "0.0.0.0/0".parse().unwrap();
        let s6: Subnet6 = "fd10:0:0:8::/64".parse().unwrap();
        assert!(!v6_only_key.holds(&empty, Some(&s6)));
        assert!(listed(&keys, "0.0.0.0-0&fd10:0:0:8::-64").holds(&empty, Some(&s6)));
        // A stray IPv6-only key on a dual-stack network blocks no IPv4 subnet.
        let got = choose_free_subnets(&dual(), &req(), &[v6_only_key]).unwrap();
        assert!(dual().is_leasable(&got.subnet), "{}", got.subnet);
        assert_ne!(got.subnet6, Some("fd10:0:0:7::/64".parse().unwrap()));
    }

    #[test]
    fn own_lease_accessors_tell_ipv6_only_from_dual_stack() {
        let record = own_record(
            &v6_only(),
            Ipv4Addr::UNSPECIFIED,
            NO_MAC,
            Some(OwnV6 {
                public_ipv6: "fd77::1".parse().unwrap(),
                vtep_mac: "9e:1a:77:20:4b:01".parse().unwrap(),
            }),
        );
        let mut own = OwnLease {
            subnet: "0.0.0.0/0".parse().unwrap(),
            subnet6: Some("fd10:0:0:2::/64".parse().unwrap()),
            record,
            etcd_lease: 1,
            expires_at: Instant::now(),
            revision: 1,
        };
        assert!(own.is_ipv6_only());
        assert_eq!(own.subnet4(), None);
        assert_eq!(own.vtep_mac(), None);
        assert_eq!(own.vtep_mac6(), Some("9e:1a:77:20:4b:01".parse().unwrap()));
        assert_eq!(
            own.key(&Keys::new("/n")),
            "/n/subnets/0.0.0.0-0&fd10:0:0:2::-64"
        );
        own.subnet = "10.1.2.0/24".parse().unwrap();
        assert!(!own.is_ipv6_only());
        assert_eq!(own.subnet4(), Some(own.subnet));
    }
}
