//! The config object read field by field as flanneld's Go structs decode it: each field's
//! JSON type checked and its text parsed ([`Raw`]), and the `Backend` section decoded with
//! its defaults and ranges. Rules that relate fields to each other are in the parent's
//! validation.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::gojson::{GoObject, GoValue};
use super::{Backend, BackendType, ConfigError, UDP_DEFAULT_PORT, VXLAN_DEFAULT_VNI};
use crate::wire::vxlan::{Vni, LINUX_DEFAULT_PORT};
use crate::wire::{Subnet, Subnet6};

/// An IPv6 field's value, or the complaint kept for later: Go's decoder takes IPv4 text in
/// an IPv6 field without error, so it is refused only when IPv6 is enabled.
pub(super) type Deferred<T> = Result<T, ConfigError>;

/// The config as Go would decode it, before defaults and checks.
#[derive(Debug, Default)]
pub(super) struct Raw {
    /// `Network`, host bits dropped.
    pub(super) network: Option<Subnet>,
    /// `SubnetLen` (0: not given).
    pub(super) subnet_len: u64,
    /// `SubnetMin`.
    pub(super) subnet_min: Option<Ipv4Addr>,
    /// `SubnetMax`.
    pub(super) subnet_max: Option<Ipv4Addr>,
    /// `EnableIPv4` (true unless given).
    pub(super) enable_ipv4: bool,
    /// `EnableIPv6`.
    pub(super) enable_ipv6: bool,
    /// `IPv6Network`, host bits dropped.
    pub(super) ipv6_network: Option<Deferred<Subnet6>>,
    /// `IPv6SubnetLen` (0: not given).
    pub(super) ipv6_subnet_len: u64,
    /// `IPv6SubnetMin`.
    pub(super) ipv6_subnet_min: Option<Deferred<Ipv6Addr>>,
    /// `IPv6SubnetMax`.
    pub(super) ipv6_subnet_max: Option<Deferred<Ipv6Addr>>,
    /// The `Backend` object, decoded by [`parse_backend`].
    pub(super) backend: Option<GoObject>,
}

fn field_err(field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field,
        problem: problem.into(),
    }
}

fn want_bool(field: &'static str, v: &GoValue) -> Result<bool, ConfigError> {
    v.as_bool()
        .ok_or_else(|| field_err(field, format!("expected true or false, got {}", v.kind())))
}

fn want_uint(field: &'static str, v: &GoValue) -> Result<u64, ConfigError> {
    v.as_u64().ok_or_else(|| {
        field_err(
            field,
            format!("expected a whole number >= 0, got {}", v.describe()),
        )
    })
}

/// A string field; `expected` says what kind of string, for the message.
fn want_str<'v>(
    field: &'static str,
    v: &'v GoValue,
    expected: &str,
) -> Result<&'v str, ConfigError> {
    v.as_str()
        .ok_or_else(|| field_err(field, format!("expected {expected}, got {}", v.kind())))
}

fn want_ipv4(field: &'static str, v: &GoValue) -> Result<Ipv4Addr, ConfigError> {
    let s = want_str(field, v, "an IPv4 address string")?;
    s.parse()
        .map_err(|_| field_err(field, format!("{s:?} is not an IPv4 address like 10.1.5.0")))
}

/// An IPv6 address field (`IPv6SubnetMin/Max`): text Go's `net.ParseIP` rejects is an
/// error now; IPv4 text is deferred (see [`Deferred`]).
fn want_ipv6(field: &'static str, v: &GoValue) -> Result<Deferred<Ipv6Addr>, ConfigError> {
    let s = want_str(field, v, "an IPv6 address string")?;
    match s.parse::<IpAddr>() {
        Ok(IpAddr::V6(a)) => Ok(Ok(a)),
        Ok(IpAddr::V4(_)) => Ok(Err(field_err(
            field,
            format!("{s:?} is an IPv4 address; use an IPv6 one like fd10:0:0:10::"),
        ))),
        Err(_) => Err(field_err(
            field,
            format!("{s:?} is not an IPv6 address like fd10:0:0:10::"),
        )),
    }
}

/// `IPv6Network`: text Go's `net.ParseCIDR` rejects is an error now; an IPv4 CIDR is
/// deferred (see [`Deferred`]). Host bits are dropped, as Go does.
fn want_cidr6(field: &'static str, v: &GoValue) -> Result<Deferred<Subnet6>, ConfigError> {
    let s = want_str(field, v, "a CIDR string like \"fd10::/48\"")?;
    let Some((a, l)) = s.split_once('/') else {
        return Err(field_err(
            field,
            format!("{s:?} is not an IPv6 CIDR like \"fd10::/48\""),
        ));
    };
    if parse_cidr(s).is_some() {
        return Ok(Err(field_err(
            field,
            format!("{s:?} is an IPv4 CIDR; use an IPv6 one like \"fd10::/48\""),
        )));
    }
    let len_ok = !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit());
    match (a.parse::<Ipv6Addr>(), l.parse::<u8>()) {
        (Ok(addr), Ok(len)) if len_ok => Subnet6::containing(addr, len).map(Ok).map_err(|_| {
            field_err(
                field,
                format!("{s:?} has a prefix length above 128; use one like \"fd10::/48\""),
            )
        }),
        _ => Err(field_err(
            field,
            format!("{s:?} is not an IPv6 CIDR like \"fd10::/48\""),
        )),
    }
}

fn want_cidr(field: &'static str, v: &GoValue) -> Result<Subnet, ConfigError> {
    let s = want_str(field, v, "a CIDR string like \"10.1.0.0/16\"")?;
    parse_cidr(s).ok_or_else(|| {
        field_err(
            field,
            format!("{s:?} is not an IPv4 CIDR like \"10.1.0.0/16\""),
        )
    })
}

impl Raw {
    /// Decodes the top-level object; absent and `null` fields keep Go's zero values.
    pub(super) fn from_object(o: &GoObject) -> Result<Raw, ConfigError> {
        let mut raw = Raw {
            enable_ipv4: true,
            ..Raw::default()
        };
        if let Some(v) = o.get("Network") {
            raw.network = Some(want_cidr("Network", v)?);
        }
        if let Some(v) = o.get("SubnetLen") {
            raw.subnet_len = want_uint("SubnetLen", v)?;
        }
        if let Some(v) = o.get("SubnetMin") {
            raw.subnet_min = Some(want_ipv4("SubnetMin", v)?);
        }
        if let Some(v) = o.get("SubnetMax") {
            raw.subnet_max = Some(want_ipv4("SubnetMax", v)?);
        }
        if let Some(v) = o.get("EnableIPv4") {
            raw.enable_ipv4 = want_bool("EnableIPv4", v)?;
        }
        if let Some(v) = o.get("EnableIPv6") {
            raw.enable_ipv6 = want_bool("EnableIPv6", v)?;
        }
        if let Some(v) = o.get("IPv6Network") {
            raw.ipv6_network = Some(want_cidr6("IPv6Network", v)?);
        }
        if let Some(v) = o.get("IPv6SubnetLen") {
            raw.ipv6_subnet_len = want_uint("IPv6SubnetLen", v)?;
        }
        if let Some(v) = o.get("IPv6SubnetMin") {
            raw.ipv6_subnet_min = Some(want_ipv6("IPv6SubnetMin", v)?);
        }
        if let Some(v) = o.get("IPv6SubnetMax") {
            raw.ipv6_subnet_max = Some(want_ipv6("IPv6SubnetMax", v)?);
        }
        if let Some(v) = o.get("Backend") {
            let b = v.as_object().ok_or_else(|| {
                field_err(
                    "Backend",
                    format!(
                        "expected an object like {{\"Type\": \"vxlan\"}}, got {}",
                        v.kind()
                    ),
                )
            })?;
            raw.backend = Some(b.clone());
        }
        Ok(raw)
    }
}

/// Parses `a.b.c.d/len` the way Go's `net.ParseCIDR` + flannel do: host bits are dropped.
fn parse_cidr(s: &str) -> Option<Subnet> {
    let (a, l) = s.split_once('/')?;
    let addr: Ipv4Addr = a.parse().ok()?;
    if l.is_empty() || l.len() > 2 || !l.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let len: u8 = l.parse().ok()?;
    Subnet::containing(addr, len).ok()
}

/// The `Backend` section with flannel's defaults; no section at all means udp.
pub(super) fn parse_backend(o: Option<&GoObject>) -> Result<Backend, ConfigError> {
    let Some(o) = o else {
        return Ok(Backend {
            kind: BackendType::Udp,
            vni: Vni::new(VXLAN_DEFAULT_VNI).map_err(ConfigError::Vni)?,
            port: UDP_DEFAULT_PORT,
            mtu: None,
            direct_routing: false,
            gbp: false,
        });
    };
    let kind = match o.get("Type") {
        Some(v) => BackendType::parse(want_str("Backend.Type", v, "a string like \"vxlan\"")?)?,
        None => BackendType::parse("")?,
    };
    let vni = match o.get("VNI") {
        Some(v) => want_uint("Backend.VNI", v)?,
        None => u64::from(VXLAN_DEFAULT_VNI),
    };
    let vni = Vni::new(u32::try_from(vni).unwrap_or(u32::MAX)).map_err(ConfigError::Vni)?;
    let port = backend_port(o, kind)?;
    let mtu = backend_mtu(o)?;
    let flag = |key: &str, field: &'static str| match o.get(key) {
        Some(v) => want_bool(field, v),
        None => Ok(false),
    };
    let direct_routing = flag("DirectRouting", "Backend.DirectRouting")?;
    let gbp = flag("GBP", "Backend.GBP")?;
    Ok(Backend {
        kind,
        vni,
        port,
        mtu,
        direct_routing,
        gbp,
    })
}

/// `Backend.Port`, or the backend's default port when it is 0 or absent (host-gw has none).
fn backend_port(o: &GoObject, kind: BackendType) -> Result<u16, ConfigError> {
    let port = match o.get("Port") {
        Some(v) => {
            let p = want_uint("Backend.Port", v)?;
            u16::try_from(p).map_err(|_| {
                field_err(
                    "Backend.Port",
                    format!("{p} is not a UDP port; use 1 to 65535 or drop it"),
                )
            })?
        }
        None => 0,
    };
    Ok(match (kind, port) {
        (BackendType::Vxlan, 0) => LINUX_DEFAULT_PORT,
        (BackendType::Udp, 0) => UDP_DEFAULT_PORT,
        (BackendType::HostGw, _) => 0,
        (_, p) => p,
    })
}

/// `Backend.MTU`: `None` when absent or 0 (follow the interface), else 576 to 65535.
fn backend_mtu(o: &GoObject) -> Result<Option<u32>, ConfigError> {
    let Some(v) = o.get("MTU") else {
        return Ok(None);
    };
    let m = want_uint("Backend.MTU", v)?;
    match u32::try_from(m) {
        Ok(0) => Ok(None),
        Ok(m) if (576..=65535).contains(&m) => Ok(Some(m)),
        _ => Err(field_err(
            "Backend.MTU",
            format!(
                "{m} is not a usable MTU; use 576 to 65535, or drop it to follow the interface"
            ),
        )),
    }
}
