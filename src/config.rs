//! flannel's network config (`<prefix>/config` in etcd): parsing, defaults and validation.
//!
//! The rules follow flanneld's `subnet.ParseConfig` + `CheckNetworkConfig`, including Go's
//! `encoding/json` habits: object keys match field names case-insensitively, unknown keys are
//! ignored, a later duplicate key wins and `null` leaves a field as it was. Error messages
//! start with flannel's wording and then say how to fix the config.
//!
//! Dual stack (`EnableIPv6`, `IPv6Network`, `IPv6SubnetLen`, `IPv6SubnetMin/Max`) and
//! IPv6-only (`EnableIPv4: false`) configs are parsed and checked like IPv4-only ones; the
//! node (`weft run`) refuses `EnableIPv6` with a backend that does not carry IPv6
//! ([`ConfigError::Ipv6Backend`]), and the store refuses IPv6-only networks.
//!
//! Decoding each field (its JSON type, its text, the Backend section's defaults) is in
//! `config/decode.rs`; the rules between fields and the defaults that follow from them are
//! here, in `validate`.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::wire::vxlan::{Vni, VniRangeError};
use crate::wire::{Subnet, Subnet6};

mod decode;
pub(crate) mod gojson;

use decode::{parse_backend, Raw};
use gojson::GoObject;

/// flannel's default port for the udp backend.
pub const UDP_DEFAULT_PORT: u16 = 8285;

/// The default VNI of the vxlan backend.
pub const VXLAN_DEFAULT_VNI: u32 = 1;

/// flanneld's default `--subnet-file`, where the node writes subnet.env.
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";

/// The TUN device weft creates unless `--tun-name` says otherwise.
pub const DEFAULT_TUN_NAME: &str = "weft0";

/// Which backend the network uses (`Backend.Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendType {
    /// VXLAN encapsulation (`"vxlan"`), flannel's usual choice.
    Vxlan,
    /// flannel's own UDP encapsulation (`"udp"`), the default when no Backend is given.
    Udp,
    /// Plain routes via the peer's public IP (`"host-gw"`).
    HostGw,
}

impl BackendType {
    /// The name flannel uses in the config and in lease records.
    pub const fn as_str(self) -> &'static str {
        match self {
            BackendType::Vxlan => "vxlan",
            BackendType::Udp => "udp",
            BackendType::HostGw => "host-gw",
        }
    }

    fn parse(s: &str) -> Result<Self, ConfigError> {
        // flanneld looks backends up by exact name.
        match s {
            "vxlan" => Ok(BackendType::Vxlan),
            "udp" => Ok(BackendType::Udp),
            "host-gw" => Ok(BackendType::HostGw),
            other => Err(ConfigError::UnsupportedBackend(other.to_string())),
        }
    }
}

/// The `Backend` section, with flannel's defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    /// `Backend.Type`.
    pub kind: BackendType,
    /// `Backend.VNI` (vxlan only; default 1).
    pub vni: Vni,
    /// `Backend.Port`: UDP port of the encapsulation (vxlan 8472, udp 8285; 0 for host-gw).
    pub port: u16,
    /// `Backend.MTU`, if set: overrides the MTU derived from the underlay interface.
    pub mtu: Option<u32>,
    /// `Backend.DirectRouting` (vxlan): route directly to peers on the same L2 segment.
    pub direct_routing: bool,
    /// `Backend.GBP` (vxlan): VXLAN Group Based Policy extension.
    pub gbp: bool,
}

/// A validated flannel network config.
///
/// The IPv4 fields (`network` to `subnet_max`) hold flannel's zero values (`0.0.0.0/0`,
/// 0, `0.0.0.0`) when `enable_ipv4` is false, as flanneld's own struct does; such a config
/// leases no IPv4 subnet ([`subnet_count`](Self::subnet_count) is 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// `Network`: the whole overlay, e.g. `10.1.0.0/16`.
    pub network: Subnet,
    /// `SubnetLen`: the prefix length of every node's lease.
    pub subnet_len: u8,
    /// `SubnetMin`: network address of the lowest subnet handed out.
    pub subnet_min: Ipv4Addr,
    /// `SubnetMax`: network address of the highest subnet handed out.
    pub subnet_max: Ipv4Addr,
    /// `EnableIPv4` (default true; false makes an IPv6-only network).
    pub enable_ipv4: bool,
    /// `EnableIPv6` (default false); `ipv6` is set exactly when this is true.
    pub enable_ipv6: bool,
    /// The IPv6 half (`IPv6Network` and its subnets) when `EnableIPv6` is true.
    pub ipv6: Option<Ipv6Config>,
    /// The `Backend` section.
    pub backend: Backend,
}

/// The IPv6 half of a dual-stack (or IPv6-only) config, with flannel's defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Config {
    /// `IPv6Network`: the whole IPv6 overlay, e.g. `fd10::/48`.
    pub network: Subnet6,
    /// `IPv6SubnetLen`: the prefix length of every node's IPv6 lease.
    pub subnet_len: u8,
    /// `IPv6SubnetMin`: network address of the lowest IPv6 subnet handed out.
    pub subnet_min: Ipv6Addr,
    /// `IPv6SubnetMax`: network address of the highest IPv6 subnet handed out.
    pub subnet_max: Ipv6Addr,
}

impl Ipv6Config {
    /// The number of IPv6 subnets between IPv6SubnetMin and IPv6SubnetMax, inclusive
    /// (at most 2^126, so it fits).
    pub fn subnet_count(&self) -> u128 {
        let (min, max) = (u128::from(self.subnet_min), u128::from(self.subnet_max));
        if max < min {
            return 0;
        }
        ((max - min) >> (128 - u32::from(self.subnet_len))) + 1
    }

    /// The `n`-th leasable IPv6 subnet counting from IPv6SubnetMin, or `None` past
    /// IPv6SubnetMax.
    pub fn nth_subnet(&self, n: u128) -> Option<Subnet6> {
        if n >= self.subnet_count() {
            return None;
        }
        let first = Subnet6::new(self.subnet_min, self.subnet_len).ok()?;
        let index = self.network.subnet_index(&first)?.checked_add(n)?;
        self.network.nth_subnet(self.subnet_len, index)
    }

    /// Whether `subnet` is one this config may hand out: in IPv6Network, of IPv6SubnetLen,
    /// in range.
    pub fn is_leasable(&self, subnet: &Subnet6) -> bool {
        subnet.prefix_len() == self.subnet_len
            && self.network.contains_subnet(subnet)
            && subnet.addr() >= self.subnet_min
            && subnet.addr() <= self.subnet_max
    }
}

/// Why a network config was rejected. Each message names the field and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The text is not JSON, or not a JSON object.
    #[error("network config is not a JSON object: {0}; write it like {{\"Network\": \"10.1.0.0/16\", \"Backend\": {{\"Type\": \"vxlan\"}}}}")]
    Json(String),
    /// A field holds a value of the wrong type or outside its range.
    #[error("network config field {field}: {problem}")]
    Field {
        /// The field, e.g. `Backend.Port`.
        field: &'static str,
        /// What is wrong and what is expected.
        problem: String,
    },
    /// `Network` is missing or is `0.0.0.0/0`.
    #[error("please define a correct Network parameter in the flannel config: set \"Network\" to the overlay CIDR, e.g. \"10.1.0.0/16\"")]
    MissingNetwork,
    /// `SubnetLen` is 31 or 32.
    #[error(
        "SubnetLen must be less than /31: got /{0}; set \"SubnetLen\" to 30 or less (24 is usual)"
    )]
    SubnetLenTooLong(u64),
    /// `SubnetLen` leaves fewer than four subnets in `Network`.
    #[error("network must be able to accommodate at least four subnets: {network} with SubnetLen /{subnet_len} does not; set \"SubnetLen\" to at least {min} or use a larger Network")]
    TooFewSubnets {
        /// The Network.
        network: Subnet,
        /// The SubnetLen given.
        subnet_len: u64,
        /// The smallest SubnetLen that works.
        min: u8,
    },
    /// `Network` is smaller than /28 and no SubnetLen was given.
    #[error("network is too small. Minimum useful network prefix is /28: {0} is smaller; use a /28 or larger Network")]
    NetworkTooSmall(Subnet),
    /// `SubnetMin` lies outside `Network`.
    #[error("SubnetMin is not in the range of the Network: {addr} is outside {network}; pick an address inside it or drop SubnetMin")]
    SubnetMinOutside {
        /// The SubnetMin given.
        addr: Ipv4Addr,
        /// The Network.
        network: Subnet,
    },
    /// `SubnetMax` lies outside `Network`.
    #[error("SubnetMax is not in the range of the Network: {addr} is outside {network}; pick an address inside it or drop SubnetMax")]
    SubnetMaxOutside {
        /// The SubnetMax given.
        addr: Ipv4Addr,
        /// The Network.
        network: Subnet,
    },
    /// `SubnetMin` is not a network address of a SubnetLen subnet.
    #[error("SubnetMin is not on a SubnetLen boundary: {addr}; with SubnetLen /{subnet_len} use {aligned}")]
    SubnetMinUnaligned {
        /// The SubnetMin given.
        addr: Ipv4Addr,
        /// The SubnetLen in force.
        subnet_len: u8,
        /// The boundary at or below it.
        aligned: Ipv4Addr,
    },
    /// `SubnetMax` is not a network address of a SubnetLen subnet.
    #[error("SubnetMax is not on a SubnetLen boundary: {addr}; with SubnetLen /{subnet_len} use {aligned}")]
    SubnetMaxUnaligned {
        /// The SubnetMax given.
        addr: Ipv4Addr,
        /// The SubnetLen in force.
        subnet_len: u8,
        /// The boundary at or below it.
        aligned: Ipv4Addr,
    },
    /// `SubnetMin` lies above `SubnetMax`, so no subnet can ever be leased.
    #[error("SubnetMin {min} is above SubnetMax {max}: no subnet could be leased; swap them or drop one")]
    SubnetRangeEmpty {
        /// The SubnetMin in force.
        min: Ipv4Addr,
        /// The SubnetMax in force.
        max: Ipv4Addr,
    },
    /// `Backend.Type` names a backend weft does not implement.
    #[error("Backend.Type {0:?} is not supported; use \"vxlan\", \"udp\" or \"host-gw\"")]
    UnsupportedBackend(String),
    /// `Backend.VNI` does not fit in 24 bits. The value is told in the message (so the
    /// warning about a changed config names it), hence not also a `#[source]`.
    #[error("Backend.VNI: {0}; use a VNI from 0 to 16777215 (flannel's default is 1)")]
    Vni(VniRangeError),
    /// `EnableIPv6` is true with a backend that carries IPv4 only (the udp backend, as
    /// flanneld's): the node refuses it at start.
    #[error("EnableIPv6 is true but the {backend} backend carries IPv4 only (flanneld's does too); use \"Backend\": {{\"Type\": \"vxlan\"}} (or host-gw) for a dual-stack network, or set \"EnableIPv6\": false")]
    Ipv6Backend {
        /// The backend's type name.
        backend: &'static str,
    },
    /// `EnableIPv4` and `EnableIPv6` are both false: the network would carry nothing.
    #[error("EnableIPv4 and EnableIPv6 are both false, so the network carries nothing; set \"EnableIPv4\": true or drop it")]
    NoIpFamily,
    /// `EnableIPv6` is true and `IPv6Network` is missing or `::/0`.
    #[error("please define a correct IPv6Network parameter in the flannel config: set \"IPv6Network\" to the IPv6 overlay CIDR, e.g. \"fd10::/48\", or set \"EnableIPv6\": false")]
    MissingIpv6Network,
    /// `IPv6SubnetLen` is 127 or 128.
    #[error("SubnetLen must be less than /127: IPv6SubnetLen is /{0}; set \"IPv6SubnetLen\" to 126 or less (64 is usual)")]
    Ipv6SubnetLenTooLong(u64),
    /// `IPv6SubnetLen` leaves fewer than four subnets in `IPv6Network`.
    #[error("network must be able to accommodate at least four subnets: IPv6Network {network} with IPv6SubnetLen /{subnet_len} does not; set \"IPv6SubnetLen\" to at least {min} or use a larger IPv6Network")]
    TooFewIpv6Subnets {
        /// The IPv6Network.
        network: Subnet6,
        /// The IPv6SubnetLen given.
        subnet_len: u64,
        /// The smallest IPv6SubnetLen that works.
        min: u8,
    },
    /// `IPv6Network` is smaller than /124 and no IPv6SubnetLen was given.
    #[error("IPv6Network is too small. Minimum useful network prefix is /124: {0} is smaller; use a /124 or larger IPv6Network")]
    Ipv6NetworkTooSmall(Subnet6),
    /// `IPv6SubnetMin` lies outside `IPv6Network`.
    #[error("IPv6SubnetMin is not in the range of the IPv6Network: {addr} is outside {network}; pick an address inside it or drop IPv6SubnetMin")]
    Ipv6SubnetMinOutside {
        /// The IPv6SubnetMin given.
        addr: Ipv6Addr,
        /// The IPv6Network.
        network: Subnet6,
    },
    /// `IPv6SubnetMax` lies outside `IPv6Network`.
    #[error("IPv6SubnetMax is not in the range of the IPv6Network: {addr} is outside {network}; pick an address inside it or drop IPv6SubnetMax")]
    Ipv6SubnetMaxOutside {
        /// The IPv6SubnetMax given.
        addr: Ipv6Addr,
        /// The IPv6Network.
        network: Subnet6,
    },
    /// `IPv6SubnetMin` is not a network address of an IPv6SubnetLen subnet.
    #[error("IPv6SubnetMin is not on a SubnetLen boundary: {addr}; with IPv6SubnetLen /{subnet_len} use {aligned}")]
    Ipv6SubnetMinUnaligned {
        /// The IPv6SubnetMin given.
        addr: Ipv6Addr,
        /// The IPv6SubnetLen in force.
        subnet_len: u8,
        /// The boundary at or below it.
        aligned: Ipv6Addr,
    },
    /// `IPv6SubnetMax` is not a network address of an IPv6SubnetLen subnet.
    #[error("IPv6SubnetMax is not on a SubnetLen boundary: {addr}; with IPv6SubnetLen /{subnet_len} use {aligned}")]
    Ipv6SubnetMaxUnaligned {
        /// The IPv6SubnetMax given.
        addr: Ipv6Addr,
        /// The IPv6SubnetLen in force.
        subnet_len: u8,
        /// The boundary at or below it.
        aligned: Ipv6Addr,
    },
    /// `IPv6SubnetMin` lies above `IPv6SubnetMax`, so no IPv6 subnet can ever be leased.
    #[error("IPv6SubnetMin {min} is above IPv6SubnetMax {max}: no IPv6 subnet could be leased; swap them or drop one")]
    Ipv6SubnetRangeEmpty {
        /// The IPv6SubnetMin in force.
        min: Ipv6Addr,
        /// The IPv6SubnetMax in force.
        max: Ipv6Addr,
    },
}

impl NetworkConfig {
    /// Parses and validates the JSON text stored at `<prefix>/config` with flannel's rules
    /// for both families: IPv4-only, dual-stack and IPv6-only configs.
    pub fn parse(text: &str) -> Result<NetworkConfig, ConfigError> {
        let root = GoObject::parse(text).map_err(ConfigError::Json)?;
        validate(Raw::from_object(&root)?)
    }

    /// The same as [`parse`](Self::parse), which took over its job of accepting dual-stack
    /// and IPv6-only configs when the node's refusal of them moved to the node.
    pub fn parse_dual_stack(text: &str) -> Result<NetworkConfig, ConfigError> {
        Self::parse(text)
    }

    /// The number of subnets between SubnetMin and SubnetMax, inclusive (0 when IPv4 is off).
    pub fn subnet_count(&self) -> u64 {
        let (min, max) = (u32::from(self.subnet_min), u32::from(self.subnet_max));
        if !self.enable_ipv4 || max < min {
            return 0;
        }
        (u64::from(max - min) >> (32 - u32::from(self.subnet_len))) + 1
    }

    /// The leasable subnets from SubnetMin to SubnetMax, in address order.
    pub fn subnets(&self) -> impl Iterator<Item = Subnet> + '_ {
        let step = 1u64 << (32 - u32::from(self.subnet_len));
        let min = u64::from(u32::from(self.subnet_min));
        (0..self.subnet_count()).filter_map(move |i| {
            let addr = u32::try_from(min + i * step).ok()?;
            Subnet::new(Ipv4Addr::from(addr), self.subnet_len).ok()
        })
    }

    /// Bytes the backend's encapsulation adds to an inner packet (vxlan 50: outer IPv4,
    /// UDP, VXLAN and inner Ethernet; udp 28; host-gw 0).
    pub fn encap_overhead(&self) -> u32 {
        match self.backend.kind {
            BackendType::Vxlan => 50,
            BackendType::Udp => 28,
            BackendType::HostGw => 0,
        }
    }

    /// The MTU pods get (`FLANNEL_MTU`): `Backend.MTU` or the underlay MTU, less the
    /// encapsulation overhead (vxlan 50, udp 28, host-gw 0), as flanneld computes it.
    pub fn overlay_mtu(&self, underlay_mtu: u32) -> u32 {
        self.backend
            .mtu
            .unwrap_or(underlay_mtu)
            .saturating_sub(self.encap_overhead())
    }

    /// A `Backend.MTU` that makes full-size packets larger than the underlay interface
    /// carries (the pod MTU plus the encapsulation overhead exceeds the interface's MTU),
    /// or `None` when it fits or is not set. Worth a warning, not a refusal: weft still
    /// forwards them (outer DF off, the kernel fragments), only slower.
    pub fn mtu_mismatch(&self, underlay_mtu: u32) -> Option<MtuMismatch> {
        let backend_mtu = self.backend.mtu?;
        let pod_mtu = self.overlay_mtu(underlay_mtu);
        let outer = pod_mtu + self.encap_overhead();
        (outer > underlay_mtu).then_some(MtuMismatch {
            backend_mtu,
            pod_mtu,
            overhead: self.encap_overhead(),
            underlay_mtu,
        })
    }

    /// What differs from `older`, one `Field old -> new` item per changed field (for the log
    /// line when the config in etcd changes under a running node).
    pub fn changes_since(&self, older: &NetworkConfig) -> Vec<String> {
        let mut out = Vec::new();
        let mut diff = |field: &str, old: String, new: String| {
            if old != new {
                out.push(format!("{field} {old} -> {new}"));
            }
        };
        let opt = |v: Option<u32>| v.map_or_else(|| "unset".to_string(), |m| m.to_string());
        diff(
            "Network",
            older.network.to_string(),
            self.network.to_string(),
        );
        diff(
            "SubnetLen",
            older.subnet_len.to_string(),
            self.subnet_len.to_string(),
        );
        diff(
            "SubnetMin",
            older.subnet_min.to_string(),
            self.subnet_min.to_string(),
        );
        diff(
            "SubnetMax",
            older.subnet_max.to_string(),
            self.subnet_max.to_string(),
        );
        diff(
            "EnableIPv4",
            older.enable_ipv4.to_string(),
            self.enable_ipv4.to_string(),
        );
        diff(
            "EnableIPv6",
            older.enable_ipv6.to_string(),
            self.enable_ipv6.to_string(),
        );
        let (o6, n6) = (older.ipv6.as_ref(), self.ipv6.as_ref());
        let v6 = |c: Option<&Ipv6Config>, f: fn(&Ipv6Config) -> String| {
            c.map_or_else(|| "unset".to_string(), f)
        };
        diff(
            "IPv6Network",
            v6(o6, |c| c.network.to_string()),
            v6(n6, |c| c.network.to_string()),
        );
        diff(
            "IPv6SubnetLen",
            v6(o6, |c| c.subnet_len.to_string()),
            v6(n6, |c| c.subnet_len.to_string()),
        );
        diff(
            "IPv6SubnetMin",
            v6(o6, |c| c.subnet_min.to_string()),
            v6(n6, |c| c.subnet_min.to_string()),
        );
        diff(
            "IPv6SubnetMax",
            v6(o6, |c| c.subnet_max.to_string()),
            v6(n6, |c| c.subnet_max.to_string()),
        );
        let (o, n) = (&older.backend, &self.backend);
        diff(
            "Backend.Type",
            o.kind.as_str().into(),
            n.kind.as_str().into(),
        );
        diff(
            "Backend.VNI",
            o.vni.get().to_string(),
            n.vni.get().to_string(),
        );
        diff("Backend.Port", o.port.to_string(), n.port.to_string());
        diff("Backend.MTU", opt(o.mtu), opt(n.mtu));
        diff(
            "Backend.DirectRouting",
            o.direct_routing.to_string(),
            n.direct_routing.to_string(),
        );
        diff("Backend.GBP", o.gbp.to_string(), n.gbp.to_string());
        out
    }

    /// Whether `subnet` is one this config may hand out: in Network, of SubnetLen, in range.
    pub fn is_leasable(&self, subnet: &Subnet) -> bool {
        self.enable_ipv4
            && subnet.prefix_len() == self.subnet_len
            && self.network.contains_subnet(subnet)
            && subnet.addr() >= self.subnet_min
            && subnet.addr() <= self.subnet_max
    }
}

/// `Backend.MTU` set above what the underlay interface carries (see
/// [`NetworkConfig::mtu_mismatch`]); its `Display` is the start-up warning with the fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MtuMismatch {
    /// The configured `Backend.MTU`.
    pub backend_mtu: u32,
    /// The MTU pods and the TUN get from it.
    pub pod_mtu: u32,
    /// The backend's encapsulation overhead.
    pub overhead: u32,
    /// The underlay interface's MTU.
    pub underlay_mtu: u32,
}

impl std::fmt::Display for MtuMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Backend.MTU {} exceeds the underlay interface MTU {}: pods get MTU {}, and a \
             full-size packet plus {} bytes of encapsulation ({}) is larger than the underlay \
             carries, so outer packets are fragmented (slower, and lost where fragments are \
             dropped); fix: set Backend.MTU to at most {} or drop it to follow the interface",
            self.backend_mtu,
            self.underlay_mtu,
            self.pod_mtu,
            self.overhead,
            self.pod_mtu + self.overhead,
            self.underlay_mtu,
        )
    }
}

/// flannel's `CheckNetworkConfig` plus its defaults: for each enabled family the rules
/// between fields (SubnetLen against Network, SubnetMin/SubnetMax inside it and in order),
/// then the Backend section. The IPv4 half is checked first, as flanneld does.
fn validate(raw: Raw) -> Result<NetworkConfig, ConfigError> {
    if !raw.enable_ipv4 && !raw.enable_ipv6 {
        return Err(ConfigError::NoIpFamily);
    }
    let (network, subnet_len, subnet_min, subnet_max) = if raw.enable_ipv4 {
        let network = match raw.network {
            Some(n) if !(n.prefix_len() == 0 && n.addr() == Ipv4Addr::UNSPECIFIED) => n,
            _ => return Err(ConfigError::MissingNetwork),
        };
        let subnet_len = subnet_len_for(network, raw.subnet_len)?;
        let (subnet_min, subnet_max) =
            subnet_range(network, subnet_len, raw.subnet_min, raw.subnet_max)?;
        (network, subnet_len, subnet_min, subnet_max)
    } else {
        // flanneld leaves the IPv4 half at Go's zero values and never looks at it.
        let zero = Subnet::containing(Ipv4Addr::UNSPECIFIED, 0)
            .map_err(|_| ConfigError::MissingNetwork)?;
        (zero, 0, Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED)
    };
    let ipv6 = if raw.enable_ipv6 {
        Some(validate_ipv6(&raw)?)
    } else {
        None
    };
    let backend = parse_backend(raw.backend.as_ref())?;
    Ok(NetworkConfig {
        network,
        subnet_len,
        subnet_min,
        subnet_max,
        enable_ipv4: raw.enable_ipv4,
        enable_ipv6: raw.enable_ipv6,
        ipv6,
        backend,
    })
}

/// The IPv6 half of `CheckNetworkConfig`: IPv6Network present, IPv6SubnetLen given or
/// defaulted (64 for a /62 or shorter IPv6Network, else its prefix + 2), IPv6SubnetMin/Max
/// inside it, on a boundary and in order.
fn validate_ipv6(raw: &Raw) -> Result<Ipv6Config, ConfigError> {
    let network = match raw.ipv6_network.clone().transpose()? {
        Some(n) if !(n.prefix_len() == 0 && n.addr().is_unspecified()) => n,
        _ => return Err(ConfigError::MissingIpv6Network),
    };
    let subnet_len = ipv6_subnet_len_for(network, raw.ipv6_subnet_len)?;
    let min = raw.ipv6_subnet_min.clone().transpose()?;
    let max = raw.ipv6_subnet_max.clone().transpose()?;
    let (subnet_min, subnet_max) = ipv6_subnet_range(network, subnet_len, min, max)?;
    Ok(Ipv6Config {
        network,
        subnet_len,
        subnet_min,
        subnet_max,
    })
}

/// The IPv6SubnetLen in force: the one given (0: none), checked against `network`, or
/// flannel's default (/64 for networks of /62 or larger, else two bits longer).
fn ipv6_subnet_len_for(network: Subnet6, given: u64) -> Result<u8, ConfigError> {
    let plen = network.prefix_len();
    if given == 0 {
        return match plen {
            125.. => Err(ConfigError::Ipv6NetworkTooSmall(network)),
            ..=62 => Ok(64),
            _ => Ok(plen + 2),
        };
    }
    if given > 126 {
        return Err(ConfigError::Ipv6SubnetLenTooLong(given));
    }
    if given < u64::from(plen) + 2 {
        return Err(ConfigError::TooFewIpv6Subnets {
            network,
            subnet_len: given,
            min: plen + 2,
        });
    }
    // Checked above: 1..=126.
    Ok(given as u8)
}

/// IPv6SubnetMin and IPv6SubnetMax in force: the ones given (`::` counts as not set, as
/// flannel's `IsEmpty`), else the second and the last subnet of `network`; both inside it,
/// on an IPv6SubnetLen boundary and in order.
fn ipv6_subnet_range(
    network: Subnet6,
    subnet_len: u8,
    min: Option<Ipv6Addr>,
    max: Option<Ipv6Addr>,
) -> Result<(Ipv6Addr, Ipv6Addr), ConfigError> {
    let mask = Subnet6::mask_bits(subnet_len);
    let aligned = |a: Ipv6Addr| Ipv6Addr::from(u128::from(a) & mask);
    let subnet_min = match min.filter(|a| !a.is_unspecified()) {
        // subnet_len >= prefix + 2, so the second subnet exists.
        None => network
            .nth_subnet(subnet_len, 1)
            .map_or(network.addr(), |s| s.addr()),
        Some(a) if !network.contains(a) => {
            return Err(ConfigError::Ipv6SubnetMinOutside { addr: a, network })
        }
        Some(a) => a,
    };
    let subnet_max = match max.filter(|a| !a.is_unspecified()) {
        None => aligned(network.last_addr()),
        Some(a) if !network.contains(a) => {
            return Err(ConfigError::Ipv6SubnetMaxOutside { addr: a, network })
        }
        Some(a) => a,
    };
    if aligned(subnet_min) != subnet_min {
        return Err(ConfigError::Ipv6SubnetMinUnaligned {
            addr: subnet_min,
            subnet_len,
            aligned: aligned(subnet_min),
        });
    }
    if aligned(subnet_max) != subnet_max {
        return Err(ConfigError::Ipv6SubnetMaxUnaligned {
            addr: subnet_max,
            subnet_len,
            aligned: aligned(subnet_max),
        });
    }
    if subnet_min > subnet_max {
        return Err(ConfigError::Ipv6SubnetRangeEmpty {
            min: subnet_min,
            max: subnet_max,
        });
    }
    Ok((subnet_min, subnet_max))
}

/// The SubnetLen in force: the one given (0: none), checked against `network`, or flannel's
/// default (/24 for networks of /22 or larger, else two bits longer than the network).
fn subnet_len_for(network: Subnet, given: u64) -> Result<u8, ConfigError> {
    let plen = network.prefix_len();
    if given == 0 {
        return match plen {
            29.. => Err(ConfigError::NetworkTooSmall(network)),
            ..=22 => Ok(24),
            _ => Ok(plen + 2),
        };
    }
    if given > 30 {
        return Err(ConfigError::SubnetLenTooLong(given));
    }
    if given < u64::from(plen) + 2 {
        return Err(ConfigError::TooFewSubnets {
            network,
            subnet_len: given,
            min: plen + 2,
        });
    }
    // Checked above: 1..=30.
    Ok(given as u8)
}

/// SubnetMin and SubnetMax in force: the ones given (Go treats 0.0.0.0 as "not set"), else
/// the second and the last subnet of `network`; both inside it, on a SubnetLen boundary and
/// in order.
fn subnet_range(
    network: Subnet,
    subnet_len: u8,
    min: Option<Ipv4Addr>,
    max: Option<Ipv4Addr>,
) -> Result<(Ipv4Addr, Ipv4Addr), ConfigError> {
    let size = 1u32 << (32 - u32::from(subnet_len));
    let net = u32::from(network.addr());
    let mask = Subnet::mask_bits(subnet_len);

    let subnet_min = match min.filter(|a| !a.is_unspecified()) {
        None => Ipv4Addr::from(net.wrapping_add(size)),
        Some(a) if !network.contains(a) => {
            return Err(ConfigError::SubnetMinOutside { addr: a, network })
        }
        Some(a) => a,
    };
    let subnet_max = match max.filter(|a| !a.is_unspecified()) {
        None => Ipv4Addr::from(u32::from(network.last_addr()) & mask),
        Some(a) if !network.contains(a) => {
            return Err(ConfigError::SubnetMaxOutside { addr: a, network })
        }
        Some(a) => a,
    };
    if u32::from(subnet_min) & mask != u32::from(subnet_min) {
        return Err(ConfigError::SubnetMinUnaligned {
            addr: subnet_min,
            subnet_len,
            aligned: Ipv4Addr::from(u32::from(subnet_min) & mask),
        });
    }
    if u32::from(subnet_max) & mask != u32::from(subnet_max) {
        return Err(ConfigError::SubnetMaxUnaligned {
            addr: subnet_max,
            subnet_len,
            aligned: Ipv4Addr::from(u32::from(subnet_max) & mask),
        });
    }
    if u32::from(subnet_min) > u32::from(subnet_max) {
        return Err(ConfigError::SubnetRangeEmpty {
            min: subnet_min,
            max: subnet_max,
        });
    }
    Ok((subnet_min, subnet_max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parsing_never_panics(text in "\\PC{0,120}") {
            let _ = NetworkConfig::parse(&text);
            let _ = NetworkConfig::parse_dual_stack(&text);
        }

        #[test]
        fn valid_configs_keep_their_invariants(
            addr in any::<u32>(),
            plen in 1u8..=28,
            extra in 0u8..=8,
            set_len in any::<bool>(),
        ) {
            let network = Subnet::containing(Ipv4Addr::from(addr), plen).unwrap();
            let len = (plen + 2 + extra).min(30);
            let text = if set_len {
                format!(r#"{{"Network":"{network}","SubnetLen":{len}}}"#)
            } else {
                format!(r#"{{"Network":"{network}"}}"#)
            };
            match NetworkConfig::parse(&text) {
                Ok(c) => {
                    prop_assert!(c.subnet_len >= plen + 2 && c.subnet_len <= 30);
                    prop_assert!(c.subnet_count() >= 3);
                    let first = c.subnets().next().unwrap();
                    prop_assert!(c.is_leasable(&first));
                    prop_assert_ne!(first.addr(), network.addr());
                    let last = Subnet::new(c.subnet_max, c.subnet_len).unwrap();
                    prop_assert!(c.is_leasable(&last));
                    prop_assert_eq!(last.last_addr(), network.last_addr());
                }
                // Only the all-zero network is refused here.
                Err(e) => prop_assert_eq!(e, ConfigError::MissingNetwork),
            }
        }
    }

    fn parse(s: &str) -> NetworkConfig {
        NetworkConfig::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> ConfigError {
        NetworkConfig::parse(s).expect_err(s)
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn backend_mtu_above_the_underlay_is_a_mismatch() {
        let vx = |mtu: &str| {
            parse(&format!(
                r#"{{"Network":"10.1.0.0/16","Backend":{{"Type":"vxlan"{mtu}}}}}"#
            ))
        };
        // The reported case: 9000 on a 1500 underlay.
        let m = vx(r#","MTU":9000"#).mtu_mismatch(1500).expect("mismatch");
        assert_eq!(
            m,
            MtuMismatch {
                backend_mtu: 9000,
                pod_mtu: 8950,
                overhead: 50,
                underlay_mtu: 1500
            }
        );
        let line = m.to_string();
        for want in [
            "Backend.MTU 9000",
            "underlay interface MTU 1500",
            "at most 1500",
        ] {
            assert!(line.contains(want), "{want:?} in {line}");
        }
        // Equal or below fits; no Backend.MTU follows the interface.
        assert_eq!(vx(r#","MTU":1500"#).mtu_mismatch(1500), None);
        assert_eq!(vx(r#","MTU":1400"#).mtu_mismatch(1500), None);
        assert_eq!(vx("").mtu_mismatch(1500), None);
        assert_eq!(vx("").mtu_mismatch(1400), None);
        assert!(vx(r#","MTU":1501"#).mtu_mismatch(1500).is_some());
        // udp: 28 bytes of overhead, same rule.
        let u = parse(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"udp","MTU":1600}}"#);
        let m = u.mtu_mismatch(1500).expect("mismatch");
        assert_eq!((m.pod_mtu, m.overhead), (1572, 28));
        assert_eq!(u.mtu_mismatch(9000), None);
    }

    #[test]
    fn defaults_for_a_slash_16() {
        let c = parse(r#"{"Network":"10.1.0.0/16"}"#);
        assert_eq!(c.network.to_string(), "10.1.0.0/16");
        assert_eq!(c.subnet_len, 24);
        assert_eq!(c.subnet_min, ip("10.1.1.0"));
        assert_eq!(c.subnet_max, ip("10.1.255.0"));
        assert!(c.enable_ipv4 && !c.enable_ipv6);
        assert_eq!(c.backend.kind, BackendType::Udp);
        assert_eq!(c.backend.port, 8285);
        assert_eq!(c.backend.mtu, None);
        assert_eq!(c.overlay_mtu(1500), 1472);
        assert_eq!(c.subnet_count(), 255);
        assert_eq!(c.subnets().count(), 255);
        assert_eq!(c.subnets().next().unwrap().to_string(), "10.1.1.0/24");
        assert_eq!(c.subnets().last().unwrap().to_string(), "10.1.255.0/24");
    }

    #[test]
    fn subnet_len_defaults_by_prefix() {
        assert_eq!(parse(r#"{"Network":"10.0.0.0/8"}"#).subnet_len, 24);
        assert_eq!(parse(r#"{"Network":"10.0.0.0/22"}"#).subnet_len, 24);
        let c = parse(r#"{"Network":"10.0.0.0/23"}"#);
        assert_eq!(c.subnet_len, 25);
        assert_eq!(c.subnet_min, ip("10.0.0.128"));
        assert_eq!(c.subnet_max, ip("10.0.1.128"));
        let c = parse(r#"{"Network":"10.0.0.0/28"}"#);
        assert_eq!(c.subnet_len, 30);
        assert_eq!(c.subnet_min, ip("10.0.0.4"));
        assert_eq!(c.subnet_max, ip("10.0.0.12"));
        assert_eq!(c.subnet_count(), 3);
    }

    #[test]
    fn explicit_range_and_len() {
        let c = parse(
            r#"{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.10.0.0","SubnetMax":"10.99.0.0"}"#,
        );
        assert_eq!(c.subnet_len, 20);
        assert_eq!(c.subnet_min, ip("10.10.0.0"));
        assert_eq!(c.subnet_max, ip("10.99.0.0"));
        assert!(c.is_leasable(&"10.10.16.0/20".parse().unwrap()));
        assert!(!c.is_leasable(&"10.9.0.0/20".parse().unwrap()));
        assert!(!c.is_leasable(&"10.10.0.0/24".parse().unwrap()));
    }

    #[test]
    fn backend_defaults() {
        let c = parse(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan"}}"#);
        assert_eq!(c.backend.kind, BackendType::Vxlan);
        assert_eq!(c.backend.vni.get(), 1);
        assert_eq!(c.backend.port, 8472);
        assert!(!c.backend.direct_routing && !c.backend.gbp);
        assert_eq!(c.overlay_mtu(1500), 1450);
        let c = parse(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"udp"}}"#);
        assert_eq!(c.backend.port, 8285);
        let c = parse(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"host-gw"}}"#);
        assert_eq!(c.backend.kind, BackendType::HostGw);
        assert_eq!(c.backend.port, 0);
        assert_eq!(c.overlay_mtu(1500), 1500);
        // Go's json decodes `null` as "leave as is": a null Backend is no Backend.
        let c = parse(r#"{"Network":"10.1.0.0/16","Backend":null}"#);
        assert_eq!(c.backend.kind, BackendType::Udp);
    }

    #[test]
    fn backend_fields() {
        let c = parse(
            r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan","VNI":42,"Port":4789,"MTU":1400,"DirectRouting":true,"GBP":true}}"#,
        );
        assert_eq!(c.backend.vni.get(), 42);
        assert_eq!(c.backend.port, 4789);
        assert_eq!(c.backend.mtu, Some(1400));
        assert_eq!(c.overlay_mtu(9000), 1350);
        assert!(c.backend.direct_routing && c.backend.gbp);
        let c = parse(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan","MTU":0}}"#);
        assert_eq!(c.backend.mtu, None);
        assert_eq!(
            c.mtu_mismatch(1500),
            None,
            "no Backend.MTU: follows the interface"
        );
    }

    #[test]
    fn keys_are_case_insensitive_and_unknown_keys_ignored() {
        let c = parse(
            r#"{"network":"10.5.0.0/16","SUBNETLEN":26,"subnetmin":"10.5.1.0","Flavour":"mint",
                "backend":{"type":"vxlan","vni":7,"port":9000,"directrouting":true,"Extra":[1,2]}}"#,
        );
        assert_eq!(c.network.to_string(), "10.5.0.0/16");
        assert_eq!(c.subnet_len, 26);
        assert_eq!(c.subnet_min, ip("10.5.1.0"));
        assert_eq!(c.backend.kind, BackendType::Vxlan);
        assert_eq!(c.backend.vni.get(), 7);
        assert_eq!(c.backend.port, 9000);
        assert!(c.backend.direct_routing);
    }

    #[test]
    fn later_duplicate_wins_and_null_keeps() {
        let c = parse(r#"{"Network":"10.1.0.0/16","network":"10.2.0.0/16"}"#);
        assert_eq!(c.network.to_string(), "10.2.0.0/16");
        let c = parse(r#"{"Network":"10.1.0.0/16","network":null}"#);
        assert_eq!(c.network.to_string(), "10.1.0.0/16");
    }

    #[test]
    fn network_host_bits_are_dropped_like_go() {
        let c = parse(r#"{"Network":"10.1.2.3/16"}"#);
        assert_eq!(c.network.to_string(), "10.1.0.0/16");
    }

    #[test]
    fn missing_or_bad_network() {
        assert_eq!(err(r#"{}"#), ConfigError::MissingNetwork);
        assert_eq!(
            err(r#"{"Network":"0.0.0.0/0"}"#),
            ConfigError::MissingNetwork
        );
        let e = err(r#"{"Network":"10.1.0.0"}"#);
        assert!(
            matches!(
                e,
                ConfigError::Field {
                    field: "Network",
                    ..
                }
            ),
            "{e}"
        );
        let e = err(r#"{"Network":"10.1.0.0/33"}"#);
        assert!(
            matches!(
                e,
                ConfigError::Field {
                    field: "Network",
                    ..
                }
            ),
            "{e}"
        );
        let e = err(r#"{"Network":16}"#);
        assert!(e.to_string().contains("Network"), "{e}");
        assert!(e.to_string().contains("10.1.0.0/16"), "{e}");
        assert!(err(r#"{"Network":"#)
            .to_string()
            .contains("not a JSON object"));
        assert!(matches!(err(r#"[1]"#), ConfigError::Json(_)));
        assert!(err("{}")
            .to_string()
            .contains("please define a correct Network"));
    }

    #[test]
    fn subnet_len_too_long() {
        let e = err(r#"{"Network":"10.1.0.0/16","SubnetLen":31}"#);
        assert_eq!(e, ConfigError::SubnetLenTooLong(31));
        assert!(e.to_string().starts_with("SubnetLen must be less than /31"));
        assert!(e.to_string().contains("30 or less"));
        let e = err(r#"{"Network":"10.1.0.0/16","SubnetLen":-1}"#);
        assert!(
            matches!(
                e,
                ConfigError::Field {
                    field: "SubnetLen",
                    ..
                }
            ),
            "{e}"
        );
        let e = err(r#"{"Network":"10.1.0.0/16","SubnetLen":"24"}"#);
        assert!(
            matches!(
                e,
                ConfigError::Field {
                    field: "SubnetLen",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn too_few_subnets() {
        let e = err(r#"{"Network":"10.1.0.0/16","SubnetLen":17}"#);
        assert!(
            matches!(
                e,
                ConfigError::TooFewSubnets {
                    subnet_len: 17,
                    min: 18,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e
            .to_string()
            .starts_with("network must be able to accommodate at least four subnets"));
        assert!(e.to_string().contains("at least 18"));
        // Exactly four is enough.
        assert_eq!(
            parse(r#"{"Network":"10.1.0.0/16","SubnetLen":18}"#).subnet_count(),
            3
        );
    }

    #[test]
    fn network_too_small() {
        let e = err(r#"{"Network":"10.1.0.0/29"}"#);
        assert_eq!(
            e,
            ConfigError::NetworkTooSmall("10.1.0.0/29".parse().unwrap())
        );
        assert!(e
            .to_string()
            .contains("Minimum useful network prefix is /28"));
    }

    #[test]
    fn subnet_min_max_outside() {
        let e = err(r#"{"Network":"10.1.0.0/16","SubnetMin":"10.2.0.0"}"#);
        assert!(matches!(e, ConfigError::SubnetMinOutside { .. }), "{e}");
        assert!(e
            .to_string()
            .starts_with("SubnetMin is not in the range of the Network"));
        let e = err(r#"{"Network":"10.1.0.0/16","SubnetMax":"11.0.0.0"}"#);
        assert!(matches!(e, ConfigError::SubnetMaxOutside { .. }), "{e}");
        let e = err(r#"{"Network":"10.1.0.0/16","SubnetMin":"ten"}"#);
        assert!(
            matches!(
                e,
                ConfigError::Field {
                    field: "SubnetMin",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn subnet_min_max_unaligned() {
        let e = err(r#"{"Network":"10.1.0.0/16","SubnetMin":"10.1.1.5"}"#);
        assert_eq!(
            e,
            ConfigError::SubnetMinUnaligned {
                addr: ip("10.1.1.5"),
                subnet_len: 24,
                aligned: ip("10.1.1.0")
            }
        );
        assert!(e.to_string().contains("use 10.1.1.0"));
        let e = err(r#"{"Network":"10.1.0.0/16","SubnetMax":"10.1.9.128"}"#);
        assert!(matches!(e, ConfigError::SubnetMaxUnaligned { .. }), "{e}");
        assert!(e
            .to_string()
            .starts_with("SubnetMax is not on a SubnetLen boundary: 10.1.9.128"));
    }

    #[test]
    fn subnet_min_above_max_is_rejected() {
        // Found by fuzz/network_config (unknown keys ignored, udp by default).
        let crash = r#"{"Network": "10.244.0.0/16", "Subn": 26, "SubnetMin": "10.244.1.0", "SubnetMax": "10.244.0.0", "Enabckend": {"Type": "e\b\b",  "GBP": false}}"#;
        let e = NetworkConfig::parse(crash).unwrap_err();
        assert!(matches!(e, ConfigError::SubnetRangeEmpty { .. }), "{e:?}");
        assert!(e.to_string().contains("swap them"), "{e}");
    }

    #[test]
    fn backend_errors() {
        let e = err(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"wireguard"}}"#);
        assert_eq!(e, ConfigError::UnsupportedBackend("wireguard".into()));
        // flanneld matches backend names exactly.
        let e = err(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"VXLAN"}}"#);
        assert!(matches!(e, ConfigError::UnsupportedBackend(_)));
        let e = err(r#"{"Network":"10.1.0.0/16","Backend":{}}"#);
        assert_eq!(e, ConfigError::UnsupportedBackend(String::new()));
        let e = err(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#);
        assert!(matches!(e, ConfigError::Vni(_)), "{e}");
        let e = err(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan","Port":70000}}"#);
        assert!(
            matches!(
                e,
                ConfigError::Field {
                    field: "Backend.Port",
                    ..
                }
            ),
            "{e}"
        );
        let e = err(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan","MTU":100}}"#);
        assert!(
            matches!(
                e,
                ConfigError::Field {
                    field: "Backend.MTU",
                    ..
                }
            ),
            "{e}"
        );
        let e = err(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan","GBP":"yes"}}"#);
        assert!(
            matches!(
                e,
                ConfigError::Field {
                    field: "Backend.GBP",
                    ..
                }
            ),
            "{e}"
        );
        let e = err(r#"{"Network":"10.1.0.0/16","Backend":"vxlan"}"#);
        assert!(
            matches!(
                e,
                ConfigError::Field {
                    field: "Backend",
                    ..
                }
            ),
            "{e}"
        );
    }

    fn ip6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn dual(s: &str) -> NetworkConfig {
        NetworkConfig::parse_dual_stack(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn dual_err(s: &str) -> ConfigError {
        NetworkConfig::parse_dual_stack(s).expect_err(s)
    }

    #[test]
    fn ip_families() {
        // Parsed and valid (the node refuses IPv6 at start, until its data path forwards it).
        let both = r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}"#;
        assert!(parse(both).enable_ipv6);
        assert_eq!(parse(both), dual(both));
        let v6_only = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48"}"#;
        let c = parse(v6_only);
        assert!(!c.enable_ipv4 && c.enable_ipv6 && c.ipv6.is_some());
        // Neither family: nothing to carry.
        let e = err(r#"{"Network":"10.1.0.0/16","EnableIPv4":false}"#);
        assert_eq!(e, ConfigError::NoIpFamily);
        assert!(e.to_string().contains(r#""EnableIPv4": true"#), "{e}");
        // IPv6 fields with EnableIPv6 off are read (a malformed one is refused, as Go's
        // decoder does) but not used.
        let c = parse(r#"{"Network":"10.1.0.0/16","EnableIPv6":false,"IPv6Network":"fc00::/48"}"#);
        assert_eq!(c.ipv6, None);
        assert!(!c.enable_ipv6);
        let c = parse(
            r#"{"Network":"10.1.0.0/16","IPv6Network":"10.2.0.0/16","IPv6SubnetMin":"10.2.0.0"}"#,
        );
        assert_eq!(c.ipv6, None);
        let e = err(r#"{"Network":"10.1.0.0/16","IPv6Network":"fc00::"}"#);
        assert!(
            matches!(
                e,
                ConfigError::Field {
                    field: "IPv6Network",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn dual_stack_defaults() {
        let c = dual(
            r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/48","Backend":{"Type":"vxlan"}}"#,
        );
        assert!(c.enable_ipv4 && c.enable_ipv6);
        assert_eq!(c.network.to_string(), "10.1.0.0/16");
        assert_eq!(c.subnet_len, 24);
        let v6 = c.ipv6.expect("ipv6 half");
        assert_eq!(v6.network.to_string(), "fd10::/48");
        assert_eq!(v6.subnet_len, 64);
        assert_eq!(v6.subnet_min, ip6("fd10:0:0:1::"));
        assert_eq!(v6.subnet_max, ip6("fd10:0:0:ffff::"));
        assert_eq!(v6.subnet_count(), 0xffff);
        assert_eq!(v6.nth_subnet(0).unwrap().to_string(), "fd10:0:0:1::/64");
        assert_eq!(v6.nth_subnet(1).unwrap().key_string(), "fd10:0:0:2::-64");
        assert_eq!(
            v6.nth_subnet(0xfffe).unwrap().to_string(),
            "fd10:0:0:ffff::/64"
        );
        assert_eq!(v6.nth_subnet(0xffff), None);
        assert!(v6.is_leasable(&"fd10:0:0:2::/64".parse().unwrap()));
        assert!(!v6.is_leasable(&"fd10::/64".parse().unwrap()));
        assert!(!v6.is_leasable(&"fd10:0:0:2::/80".parse().unwrap()));
        assert!(!v6.is_leasable(&"fd11::/64".parse().unwrap()));
        // Keys are case-insensitive and host bits dropped, as Go's decoder and ParseCIDR do.
        let c = dual(r#"{"network":"10.1.0.0/16","enableipv6":true,"ipv6network":"fd10::1/48"}"#);
        assert_eq!(c.ipv6.unwrap().network.to_string(), "fd10::/48");
    }

    #[test]
    fn flannels_own_ipv6_examples() {
        // flannel subnet/config_test.go TestIPv6ConfigDefaults.
        let c = dual(r#"{ "enableIPv6": true, "ipv6Network": "fc00::/48", "enableIPv4": false }"#);
        assert!(!c.enable_ipv4 && c.enable_ipv6);
        let v6 = c.ipv6.unwrap();
        assert_eq!(v6.network.to_string(), "fc00::/48");
        assert_eq!(v6.subnet_min, ip6("fc00:0:0:1::"));
        assert_eq!(v6.subnet_max, ip6("fc00:0:0:ffff::"));
        assert_eq!(v6.subnet_len, 64);
        // IPv6-only: no IPv4 subnet to lease.
        assert_eq!(c.subnet_count(), 0);
        assert_eq!(c.subnets().count(), 0);
        assert!(!c.is_leasable(&"0.0.0.0/0".parse().unwrap()));
        // TestIPv6ConfigOverrides.
        let c = dual(
            r#"{ "EnableIPv6": true, "IPv6Network": "fc00::/48", "IPv6SubnetMin": "fc00:0:0:1::", "IPv6SubnetMax": "fc00:0:0:f::", "IPv6SubnetLen": 124, "enableIPv4": false }"#,
        );
        let v6 = c.ipv6.unwrap();
        assert_eq!(v6.subnet_min, ip6("fc00:0:0:1::"));
        assert_eq!(v6.subnet_max, ip6("fc00:0:0:f::"));
        assert_eq!(v6.subnet_len, 124);
    }

    #[test]
    fn ipv6_subnet_len_defaults_by_prefix() {
        let len = |net: &str| {
            dual(&format!(
                r#"{{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"{net}"}}"#
            ))
            .ipv6
            .unwrap()
        };
        assert_eq!(len("fd00::/8").subnet_len, 64);
        assert_eq!(len("fd10::/62").subnet_len, 64);
        let c = len("fd10::/63");
        assert_eq!(c.subnet_len, 65);
        assert_eq!(c.subnet_min, ip6("fd10::8000:0:0:0"));
        assert_eq!(c.subnet_max, ip6("fd10:0:0:1:8000::"));
        let c = len("fd10::/124");
        assert_eq!(c.subnet_len, 126);
        assert_eq!(c.subnet_min, ip6("fd10::4"));
        assert_eq!(c.subnet_max, ip6("fd10::c"));
        assert_eq!(c.subnet_count(), 3);
        let e = dual_err(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd10::/125"}"#);
        assert_eq!(
            e,
            ConfigError::Ipv6NetworkTooSmall("fd10::/125".parse().unwrap())
        );
        assert!(e
            .to_string()
            .starts_with("IPv6Network is too small. Minimum useful network prefix is /124"));
        // The whole space but one bit works; ::/0 is "not set".
        assert_eq!(len("8000::/1").subnet_max, ip6("ffff:ffff:ffff:ffff::"));
    }

    #[test]
    fn ipv6_network_missing_or_bad() {
        let v6 = |rest: &str| format!(r#"{{"Network":"10.1.0.0/16","EnableIPv6":true{rest}}}"#);
        let e = dual_err(&v6(""));
        assert_eq!(e, ConfigError::MissingIpv6Network);
        assert!(e
            .to_string()
            .starts_with("please define a correct IPv6Network parameter in the flannel config"));
        assert!(e.to_string().contains("fd10::/48"), "{e}");
        assert_eq!(
            dual_err(&v6(r#","IPv6Network":"::/0""#)),
            ConfigError::MissingIpv6Network
        );
        assert_eq!(
            dual_err(&v6(r#","IPv6Network":null"#)),
            ConfigError::MissingIpv6Network
        );
        for bad in [
            r#""fd10::""#,
            r#""fd10::/129""#,
            r#""fd10::/x""#,
            r#""zz::/48""#,
            "48",
        ] {
            let e = dual_err(&v6(&format!(r#","IPv6Network":{bad}"#)));
            assert!(
                matches!(
                    e,
                    ConfigError::Field {
                        field: "IPv6Network",
                        ..
                    }
                ),
                "{bad}: {e}"
            );
            assert!(e.to_string().contains("fd10::/48"), "{bad}: {e}");
        }
        // An IPv4 CIDR where the IPv6 one belongs.
        let e = dual_err(&v6(r#","IPv6Network":"10.2.0.0/16""#));
        assert!(
            matches!(
                e,
                ConfigError::Field {
                    field: "IPv6Network",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("is an IPv4 CIDR"), "{e}");
        // The IPv4 half is checked first, as flanneld does.
        let e = dual_err(r#"{"EnableIPv6":true,"IPv6Network":"fd10::/48"}"#);
        assert_eq!(e, ConfigError::MissingNetwork);
    }

    #[test]
    fn ipv6_subnet_len_checks() {
        let v6 = |len: &str| {
            format!(
                r#"{{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/48","IPv6SubnetLen":{len}}}"#
            )
        };
        let e = dual_err(&v6("127"));
        assert_eq!(e, ConfigError::Ipv6SubnetLenTooLong(127));
        assert!(
            e.to_string()
                .starts_with("SubnetLen must be less than /127"),
            "{e}"
        );
        assert!(e.to_string().contains("IPv6SubnetLen"), "{e}");
        assert_eq!(dual(&v6("126")).ipv6.unwrap().subnet_len, 126);
        let e = dual_err(&v6("49"));
        assert_eq!(
            e,
            ConfigError::TooFewIpv6Subnets {
                network: "fd10::/48".parse().unwrap(),
                subnet_len: 49,
                min: 50
            }
        );
        assert!(e
            .to_string()
            .starts_with("network must be able to accommodate at least four subnets"));
        assert!(e.to_string().contains("at least 50"), "{e}");
        assert_eq!(dual(&v6("50")).ipv6.unwrap().subnet_count(), 3);
        for bad in ["-1", "\"64\"", "64.5"] {
            let e = dual_err(&v6(bad));
            assert!(
                matches!(
                    e,
                    ConfigError::Field {
                        field: "IPv6SubnetLen",
                        ..
                    }
                ),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn ipv6_subnet_min_max_checks() {
        let v6 = |rest: &str| {
            format!(
                r#"{{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/48"{rest}}}"#
            )
        };
        let c = dual(&v6(
            r#","IPv6SubnetMin":"fd10:0:0:10::","IPv6SubnetMax":"fd10:0:0:20::""#,
        ))
        .ipv6
        .unwrap();
        assert_eq!(
            (c.subnet_min, c.subnet_max),
            (ip6("fd10:0:0:10::"), ip6("fd10:0:0:20::"))
        );
        assert_eq!(c.subnet_count(), 0x11);
        // "::" is flannel's empty value: the default applies.
        let c = dual(&v6(r#","IPv6SubnetMin":"::""#)).ipv6.unwrap();
        assert_eq!(c.subnet_min, ip6("fd10:0:0:1::"));
        let e = dual_err(&v6(r#","IPv6SubnetMin":"fd11::""#));
        assert!(matches!(e, ConfigError::Ipv6SubnetMinOutside { .. }), "{e}");
        assert!(e
            .to_string()
            .starts_with("IPv6SubnetMin is not in the range of the IPv6Network"));
        let e = dual_err(&v6(r#","IPv6SubnetMax":"fd11::""#));
        assert!(matches!(e, ConfigError::Ipv6SubnetMaxOutside { .. }), "{e}");
        assert!(e.to_string().contains("drop IPv6SubnetMax"), "{e}");
        let e = dual_err(&v6(r#","IPv6SubnetMin":"fd10:0:0:1::5""#));
        assert_eq!(
            e,
            ConfigError::Ipv6SubnetMinUnaligned {
                addr: ip6("fd10:0:0:1::5"),
                subnet_len: 64,
                aligned: ip6("fd10:0:0:1::")
            }
        );
        assert!(e
            .to_string()
            .starts_with("IPv6SubnetMin is not on a SubnetLen boundary: fd10:0:0:1::5"));
        assert!(e.to_string().contains("use fd10:0:0:1::"), "{e}");
        let e = dual_err(&v6(r#","IPv6SubnetMax":"fd10:0:0:9:8000::""#));
        assert!(
            matches!(e, ConfigError::Ipv6SubnetMaxUnaligned { .. }),
            "{e}"
        );
        let e = dual_err(&v6(
            r#","IPv6SubnetMin":"fd10:0:0:20::","IPv6SubnetMax":"fd10:0:0:10::""#,
        ));
        assert!(matches!(e, ConfigError::Ipv6SubnetRangeEmpty { .. }), "{e}");
        assert!(e.to_string().contains("swap them"), "{e}");
        let e = dual_err(&v6(r#","IPv6SubnetMin":"ten""#));
        assert!(
            matches!(
                e,
                ConfigError::Field {
                    field: "IPv6SubnetMin",
                    ..
                }
            ),
            "{e}"
        );
        let e = dual_err(&v6(r#","IPv6SubnetMax":"10.1.0.0""#));
        assert!(
            matches!(
                e,
                ConfigError::Field {
                    field: "IPv6SubnetMax",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("is an IPv4 address"), "{e}");
    }

    #[test]
    fn changes_since_names_each_changed_field() {
        let a = NetworkConfig::parse(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan"}}"#)
            .unwrap();
        let b = NetworkConfig::parse(
            r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan","MTU":1400,"VNI":2}}"#,
        )
        .unwrap();
        assert!(a.changes_since(&a).is_empty());
        assert_eq!(
            b.changes_since(&a),
            vec![
                "Backend.VNI 1 -> 2".to_string(),
                "Backend.MTU unset -> 1400".to_string()
            ]
        );
        let c = dual(
            r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/48","Backend":{"Type":"vxlan"}}"#,
        );
        let d = dual(
            r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fd10::/48","IPv6SubnetLen":80,"IPv6SubnetMin":"fd10:0:0:1::","IPv6SubnetMax":"fd10:0:0:2::","Backend":{"Type":"vxlan"}}"#,
        );
        assert_eq!(
            c.changes_since(&a),
            vec![
                "EnableIPv6 false -> true".to_string(),
                "IPv6Network unset -> fd10::/48".to_string(),
                "IPv6SubnetLen unset -> 64".to_string(),
                "IPv6SubnetMin unset -> fd10:0:0:1::".to_string(),
                "IPv6SubnetMax unset -> fd10:0:0:ffff::".to_string(),
            ]
        );
        assert_eq!(
            d.changes_since(&c),
            vec![
                "IPv6SubnetLen 64 -> 80".to_string(),
                "IPv6SubnetMax fd10:0:0:ffff:: -> fd10:0:0:2::".to_string(),
            ]
        );
    }
}
