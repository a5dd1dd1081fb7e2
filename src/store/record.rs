//! Lease records: the JSON value flanneld stores at `<prefix>/subnets/<net>-<len>`.
//!
//! flanneld marshals Go's `lease.LeaseAttrs` (`PublicIP`, `PublicIPv6`, then `BackendType`,
//! `BackendData` and `BackendV6Data` when not empty). We read records tolerantly (Go's
//! case-insensitive keys, unknown keys ignored) and write them byte for byte as flanneld does.
//!
//! A dual-stack node (key `10.1.2.0-24&fd10:0:0:2::-64`) adds its underlay IPv6 address as
//! `PublicIPv6` and, with vxlan, `BackendV6Data`: the VNI and the MAC of its second VTEP
//! (`flannel-v6.<VNI>`), in the same form as `BackendData`.
//!
//! An IPv6-only node (key `0.0.0.0-0&fd10:0:0:2::-64`) writes `"PublicIP":"0.0.0.0"` and,
//! with vxlan, only `BackendV6Data` (flanneld's vxlan backend fills `BackendData` only when it
//! has an IPv4 device). Such a record is read with [`LeaseRecord::parse_ipv6_only`], which
//! ignores the IPv4 half; [`LeaseRecord::parse`] (IPv4 and dual-stack networks) refuses it.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::config::gojson::{GoObject, GoValue};
use crate::config::NetworkConfig;
use crate::wire::EthernetAddress;

/// The backend part of a lease record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendRecord {
    /// No `BackendType` (flannel's udp backend writes none).
    None,
    /// `"BackendType":"vxlan"` with its `BackendData`.
    Vxlan {
        /// `BackendData.VNI`.
        vni: u32,
        /// `BackendData.VtepMAC`: the node's VTEP MAC.
        vtep_mac: EthernetAddress,
    },
    /// `"BackendType":"vxlan"` without `BackendData`: an IPv6-only node's record, whose only
    /// VTEP is in [`LeaseRecord::backend_v6`].
    VxlanIpv6Only,
    /// `"BackendType":"host-gw"` (no data).
    HostGw,
    /// Any other backend type, kept by name (e.g. `ipip`, `wireguard`).
    Other(String),
}

impl BackendRecord {
    /// The `BackendType` string, `""` when absent.
    pub fn type_name(&self) -> &str {
        match self {
            BackendRecord::None => "",
            BackendRecord::Vxlan { .. } | BackendRecord::VxlanIpv6Only => "vxlan",
            BackendRecord::HostGw => "host-gw",
            BackendRecord::Other(s) => s,
        }
    }
}

/// The vxlan `BackendV6Data` of a dual-stack lease: the node's IPv6 VTEP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanV6Record {
    /// `BackendV6Data.VNI`.
    pub vni: u32,
    /// `BackendV6Data.VtepMAC`: the MAC of the node's IPv6 VTEP (not the IPv4 one's).
    pub vtep_mac: EthernetAddress,
}

/// A node's lease record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// `PublicIP`: the node's underlay address.
    pub public_ip: Ipv4Addr,
    /// `PublicIPv6`: the node's underlay IPv6 address; `None` is written as `null`.
    pub public_ipv6: Option<Ipv6Addr>,
    /// `BackendType` and `BackendData`.
    pub backend: BackendRecord,
    /// `BackendV6Data` of a vxlan record; read and written only with a vxlan `backend`
    /// (`Vxlan` or `VxlanIpv6Only`).
    pub backend_v6: Option<VxlanV6Record>,
}

/// Why a lease record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Not a JSON object.
    #[error("lease record is not a JSON object: {0}")]
    Json(String),
    /// `PublicIP` is missing or not an IPv4 address.
    #[error("lease record has no usable PublicIP: {0}")]
    PublicIp(String),
    /// `PublicIPv6` is not an IP address.
    #[error("lease record has a bad PublicIPv6: {0}")]
    PublicIpv6(String),
    /// A vxlan record lacks a valid `BackendData` (`VNI`, `VtepMAC`).
    #[error("vxlan lease record has bad BackendData: {0}")]
    BackendData(String),
    /// A vxlan record has a `BackendV6Data` without a valid `VtepMAC`.
    #[error("vxlan lease record has bad BackendV6Data: {0}")]
    BackendV6Data(String),
    /// A field has the wrong JSON type.
    #[error("lease record field {0} has the wrong type")]
    FieldType(&'static str),
}

impl LeaseRecord {
    /// Parses a record the way flanneld's Go decoder would, then checks what weft needs on a
    /// network with IPv4 (IPv4-only or dual stack): a usable `PublicIP` and, for vxlan, a
    /// valid `BackendData`.
    pub fn parse(bytes: &[u8]) -> Result<LeaseRecord, RecordError> {
        let o = object(bytes)?;
        let public_ip = match o.get("PublicIP") {
            Some(GoValue::String(s)) => parse_public_ip(s)?,
            Some(_) => return Err(RecordError::FieldType("PublicIP")),
            None => return Err(RecordError::PublicIp("missing".into())),
        };
        if public_ip.is_unspecified() {
            return Err(RecordError::PublicIp("0.0.0.0".into()));
        }
        let public_ipv6 = public_ipv6(&o)?;
        let (backend, backend_v6) = match backend_type(&o)? {
            "vxlan" => {
                let data = o
                    .get("BackendData")
                    .and_then(GoValue::as_object)
                    .ok_or_else(|| RecordError::BackendData("missing".into()))?;
                let (vni, vtep_mac) = vxlan_data(data).map_err(RecordError::BackendData)?;
                (BackendRecord::Vxlan { vni, vtep_mac }, backend_v6(&o)?)
            }
            other => (other_backend(other), None),
        };
        Ok(LeaseRecord {
            public_ip,
            public_ipv6,
            backend,
            backend_v6,
        })
    }

    /// Parses a record on an IPv6-only network (`EnableIPv4: false`), where only its IPv6
    /// half counts: `PublicIP` must still be IPv4 text, as Go's decoder needs, but may be
    /// `0.0.0.0` or missing, and `BackendData` is not read (a vxlan record is
    /// [`BackendRecord::VxlanIpv6Only`]). Whether `PublicIPv6` and `BackendV6Data` are there
    /// is [`check_lease_v6`](super::check::check_lease_v6)'s to judge.
    pub fn parse_ipv6_only(bytes: &[u8]) -> Result<LeaseRecord, RecordError> {
        let o = object(bytes)?;
        let public_ip = match o.get("PublicIP") {
            Some(GoValue::String(s)) => parse_public_ip(s)?,
            Some(_) => return Err(RecordError::FieldType("PublicIP")),
            None => Ipv4Addr::UNSPECIFIED,
        };
        let public_ipv6 = public_ipv6(&o)?;
        let (backend, backend_v6) = match backend_type(&o)? {
            "vxlan" => (BackendRecord::VxlanIpv6Only, backend_v6(&o)?),
            other => (other_backend(other), None),
        };
        Ok(LeaseRecord {
            public_ip,
            public_ipv6,
            backend,
            backend_v6,
        })
    }

    /// Parses a record as the network `cfg` reads it: [`parse_ipv6_only`] on an IPv6-only
    /// network, else [`parse`].
    ///
    /// [`parse`]: LeaseRecord::parse
    /// [`parse_ipv6_only`]: LeaseRecord::parse_ipv6_only
    pub fn parse_for(cfg: &NetworkConfig, bytes: &[u8]) -> Result<LeaseRecord, RecordError> {
        if cfg.enable_ipv4 {
            Self::parse(bytes)
        } else {
            Self::parse_ipv6_only(bytes)
        }
    }

    /// The record as flanneld writes it, byte for byte.
    pub fn to_json(&self) -> String {
        let v6 = match self.public_ipv6 {
            // Go's net.IP.String writes an IPv4-mapped address as bare a.b.c.d.
            Some(ip) => match ip.to_ipv4_mapped() {
                Some(v4) => format!("\"{v4}\""),
                None => format!("\"{ip}\""),
            },
            None => "null".to_string(),
        };
        let mut out = format!(
            "{{\"PublicIP\":\"{}\",\"PublicIPv6\":{}",
            self.public_ip, v6
        );
        match &self.backend {
            BackendRecord::None => {}
            BackendRecord::Vxlan { vni, vtep_mac } => {
                out.push_str(&format!(
                    ",\"BackendType\":\"vxlan\",\"BackendData\":{{\"VNI\":{vni},\"VtepMAC\":\"{vtep_mac}\"}}"
                ));
                self.push_backend_v6(&mut out);
            }
            BackendRecord::VxlanIpv6Only => {
                out.push_str(",\"BackendType\":\"vxlan\"");
                self.push_backend_v6(&mut out);
            }
            BackendRecord::HostGw => out.push_str(",\"BackendType\":\"host-gw\""),
            BackendRecord::Other(t) => out.push_str(&format!(
                ",\"BackendType\":{}",
                serde_json::Value::String(t.clone())
            )),
        }
        out.push('}');
        out
    }

    /// Appends `,"BackendV6Data":{...}` when the record has one.
    fn push_backend_v6(&self, out: &mut String) {
        if let Some(VxlanV6Record { vni, vtep_mac }) = self.backend_v6 {
            out.push_str(&format!(
                ",\"BackendV6Data\":{{\"VNI\":{vni},\"VtepMAC\":\"{vtep_mac}\"}}"
            ));
        }
    }
}

/// The record's JSON object.
fn object(bytes: &[u8]) -> Result<GoObject, RecordError> {
    let text = std::str::from_utf8(bytes).map_err(|e| RecordError::Json(e.to_string()))?;
    GoObject::parse(text).map_err(RecordError::Json)
}

/// `PublicIP` text as an IPv4 address.
fn parse_public_ip(s: &str) -> Result<Ipv4Addr, RecordError> {
    s.parse::<Ipv4Addr>()
        .map_err(|_| RecordError::PublicIp(format!("{s:?} is not an IPv4 address")))
}

/// `PublicIPv6`, `None` when absent or `null`.
fn public_ipv6(o: &GoObject) -> Result<Option<Ipv6Addr>, RecordError> {
    match o.get("PublicIPv6") {
        Some(GoValue::String(s)) => Ok(Some(parse_public_ipv6(s)?)),
        Some(_) => Err(RecordError::FieldType("PublicIPv6")),
        None => Ok(None),
    }
}

/// `BackendType`, `""` when absent.
fn backend_type(o: &GoObject) -> Result<&str, RecordError> {
    match o.get("BackendType") {
        Some(GoValue::String(s)) => Ok(s.as_str()),
        Some(_) => Err(RecordError::FieldType("BackendType")),
        None => Ok(""),
    }
}

/// A backend other than vxlan, by its `BackendType`.
fn other_backend(backend_type: &str) -> BackendRecord {
    match backend_type {
        "" => BackendRecord::None,
        "host-gw" => BackendRecord::HostGw,
        other => BackendRecord::Other(other.to_string()),
    }
}

/// A vxlan record's `BackendV6Data`, `None` when absent.
fn backend_v6(o: &GoObject) -> Result<Option<VxlanV6Record>, RecordError> {
    match o.get("BackendV6Data") {
        None => Ok(None),
        Some(GoValue::Object(d6)) => {
            let (vni, vtep_mac) = vxlan_data(d6).map_err(RecordError::BackendV6Data)?;
            Ok(Some(VxlanV6Record { vni, vtep_mac }))
        }
        Some(_) => Err(RecordError::FieldType("BackendV6Data")),
    }
}

/// Reads `PublicIPv6` as flannel's `ip.ParseIP6` does: any IP text, IPv4 text becoming the
/// IPv4-mapped address (which Go writes back as IPv4 text).
fn parse_public_ipv6(s: &str) -> Result<Ipv6Addr, RecordError> {
    if let Ok(ip) = s.parse::<Ipv6Addr>() {
        return Ok(ip);
    }
    s.parse::<Ipv4Addr>()
        .map(|v4| v4.to_ipv6_mapped())
        .map_err(|_| RecordError::PublicIpv6(format!("{s:?} is not an IP address")))
}

/// `VNI` (0 when absent, as Go leaves it) and `VtepMAC` of a vxlan `BackendData` or
/// `BackendV6Data`; the error says what is wrong.
fn vxlan_data(data: &GoObject) -> Result<(u32, EthernetAddress), String> {
    let vni = data
        .get("VNI")
        .and_then(GoValue::as_u64)
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(0);
    let mac = data
        .get("VtepMAC")
        .and_then(GoValue::as_str)
        .ok_or_else(|| "no VtepMAC".to_string())?;
    let vtep_mac = mac.parse::<EthernetAddress>().map_err(|e| e.to_string())?;
    Ok((vni, vtep_mac))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_record_round_trips(
            ip in any::<u32>().prop_filter("not 0.0.0.0", |ip| *ip != 0),
            kind in 0u8..4,
            vni in 0u32..=0x00ff_ffff,
            mac in any::<[u8; 6]>(),
            other in "[a-z][a-z0-9-]{0,10}",
            ipv6 in proptest::option::of(any::<u128>()),
            v6 in proptest::option::of((0u32..=0x00ff_ffff, any::<[u8; 6]>())),
        ) {
            let backend = match kind {
                0 => BackendRecord::None,
                1 => BackendRecord::Vxlan { vni, vtep_mac: EthernetAddress(mac) },
                2 => BackendRecord::HostGw,
                _ if other == "vxlan" || other == "host-gw" => BackendRecord::HostGw,
                _ => BackendRecord::Other(other),
            };
            // BackendV6Data exists only beside a vxlan BackendData.
            let backend_v6 = match (&backend, v6) {
                (BackendRecord::Vxlan { .. }, Some((vni, mac))) => {
                    Some(VxlanV6Record { vni, vtep_mac: EthernetAddress(mac) })
                }
                _ => None,
            };
            let public_ipv6 = ipv6.map(Ipv6Addr::from);
            let r = LeaseRecord { public_ip: Ipv4Addr::from(ip), public_ipv6, backend, backend_v6 };
            let text = r.to_json();
            prop_assert_eq!(LeaseRecord::parse(text.as_bytes()), Ok(r.clone()));
            // And it is the JSON Go would produce: valid, with the same members in Go's order.
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            match public_ipv6 {
                None => prop_assert!(v.get("PublicIPv6").is_some_and(|x| x.is_null())),
                Some(_) => prop_assert!(v.get("PublicIPv6").is_some_and(|x| x.is_string())),
            }
            prop_assert_eq!(v.get("BackendV6Data").is_some(), r.backend_v6.is_some());
            if r.backend_v6.is_some() {
                prop_assert!(text.find("\"BackendData\"") < text.find("\"BackendV6Data\""));
            }
        }

        #[test]
        fn parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = LeaseRecord::parse(&bytes);
        }
    }

    const VXLAN: &str = r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;

    #[test]
    fn vxlan_round_trip() {
        let r = LeaseRecord::parse(VXLAN.as_bytes()).unwrap();
        assert_eq!(r.public_ip, Ipv4Addr::new(192, 168, 64, 3));
        assert_eq!(
            r.backend,
            BackendRecord::Vxlan {
                vni: 1,
                vtep_mac: "c6:d2:32:6f:8f:44".parse().unwrap()
            }
        );
        assert_eq!(r.to_json(), VXLAN);
    }

    #[test]
    fn udp_and_host_gw() {
        let udp = r#"{"PublicIP":"10.0.0.7","PublicIPv6":null}"#;
        let r = LeaseRecord::parse(udp.as_bytes()).unwrap();
        assert_eq!(r.backend, BackendRecord::None);
        assert_eq!(r.to_json(), udp);
        let hg = r#"{"PublicIP":"10.0.0.7","PublicIPv6":null,"BackendType":"host-gw"}"#;
        let r = LeaseRecord::parse(hg.as_bytes()).unwrap();
        assert_eq!(r.backend, BackendRecord::HostGw);
        assert_eq!(r.to_json(), hg);
    }

    #[test]
    fn tolerant_reading() {
        let r = LeaseRecord::parse(
            br#"{"publicip":"10.0.0.7","backendtype":"vxlan","backenddata":{"vni":3,"vtepmac":"0A:0B:0C:0D:0E:0F"},"Extra":1}"#,
        )
        .unwrap();
        assert_eq!(r.public_ip, Ipv4Addr::new(10, 0, 0, 7));
        assert_eq!(r.public_ipv6, None);
        assert_eq!(r.backend.type_name(), "vxlan");
        let dual = r#"{"PublicIP":"10.0.0.7","PublicIPv6":"fc00::7","BackendType":"wireguard"}"#;
        let r = LeaseRecord::parse(dual.as_bytes()).unwrap();
        assert_eq!(r.backend, BackendRecord::Other("wireguard".into()));
        assert_eq!(r.public_ipv6, Some("fc00::7".parse().unwrap()));
        assert_eq!(r.to_json(), dual);
    }

    const DUAL: &str = r#"{"PublicIP":"192.168.77.1","PublicIPv6":"fd77::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"BackendV6Data":{"VNI":1,"VtepMAC":"9e:1a:77:20:4b:01"}}"#;

    #[test]
    fn dual_stack_vxlan_round_trip() {
        let r = LeaseRecord::parse(DUAL.as_bytes()).unwrap();
        assert_eq!(r.public_ipv6, Some("fd77::1".parse().unwrap()));
        assert_eq!(
            r.backend_v6,
            Some(VxlanV6Record {
                vni: 1,
                vtep_mac: "9e:1a:77:20:4b:01".parse().unwrap()
            })
        );
        assert_eq!(r.to_json(), DUAL);
        // Without BackendV6Data (a node whose IPv6 VTEP is not up yet) it is simply absent.
        let no_v6 = DUAL
            .split(r#","BackendV6Data""#)
            .next()
            .unwrap()
            .to_string()
            + "}";
        let r = LeaseRecord::parse(no_v6.as_bytes()).unwrap();
        assert_eq!(r.backend_v6, None);
        assert_eq!(r.to_json(), no_v6);
    }

    #[test]
    fn public_ipv6_is_read_as_go_reads_it() {
        let with = |v6: &str| DUAL.replace(r#""fd77::1""#, v6);
        // Go's net.IP text: any case in, RFC 5952 out.
        let r = LeaseRecord::parse(with(r#""FD77:0:0::1""#).as_bytes()).unwrap();
        assert_eq!(r.public_ipv6, Some("fd77::1".parse().unwrap()));
        assert_eq!(r.to_json(), DUAL);
        // IPv4 text is the IPv4-mapped address, written back as Go writes it.
        let mapped = with(r#""10.0.0.7""#);
        let r = LeaseRecord::parse(mapped.as_bytes()).unwrap();
        assert_eq!(r.public_ipv6, Some("::ffff:10.0.0.7".parse().unwrap()));
        assert_eq!(r.to_json(), mapped);
        // null is no address.
        let r = LeaseRecord::parse(with("null").as_bytes()).unwrap();
        assert_eq!(r.public_ipv6, None);
        for bad in [r#""""#, r#""fd77::g""#, r#""fd77::1/64""#] {
            let e = LeaseRecord::parse(with(bad).as_bytes()).unwrap_err();
            assert!(matches!(e, RecordError::PublicIpv6(_)), "{bad}: {e}");
            assert!(e.to_string().contains("PublicIPv6"), "{e}");
        }
        let e = LeaseRecord::parse(with("7").as_bytes()).unwrap_err();
        assert_eq!(e, RecordError::FieldType("PublicIPv6"));
    }

    #[test]
    fn bad_backend_v6_data_is_named() {
        for (bad, want) in [
            (r#"{"VNI":1}"#, "no VtepMAC"),
            (r#"{"VNI":1,"VtepMAC":"zz"}"#, ""),
        ] {
            let text = DUAL.replace(r#"{"VNI":1,"VtepMAC":"9e:1a:77:20:4b:01"}"#, bad);
            let e = LeaseRecord::parse(text.as_bytes()).unwrap_err();
            assert!(matches!(e, RecordError::BackendV6Data(_)), "{bad}: {e}");
            assert!(e.to_string().contains("BackendV6Data"), "{e}");
            assert!(e.to_string().contains(want), "{e}");
        }
        let text = DUAL.replace(r#"{"VNI":1,"VtepMAC":"9e:1a:77:20:4b:01"}"#, "[]");
        assert_eq!(
            LeaseRecord::parse(text.as_bytes()),
            Err(RecordError::FieldType("BackendV6Data"))
        );
        // Another backend's BackendV6Data (wireguard's keys) is not vxlan's to judge.
        let wg = r#"{"PublicIP":"10.0.0.7","PublicIPv6":"fd77::7","BackendType":"wireguard","BackendV6Data":{"PublicKey":"k"}}"#;
        let r = LeaseRecord::parse(wg.as_bytes()).unwrap();
        assert_eq!(r.backend_v6, None);
    }

    #[test]
    fn rejects_unusable_records() {
        for bad in [
            &b"not json"[..],
            b"[]",
            b"{}",
            br#"{"PublicIP":"10.0.0"}"#,
            br#"{"PublicIP":7}"#,
            br#"{"PublicIP":"0.0.0.0"}"#,
            br#"{"PublicIP":"10.0.0.7","BackendType":"vxlan"}"#,
            br#"{"PublicIP":"10.0.0.7","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"zz"}}"#,
            b"\xff\xfe",
        ] {
            assert!(LeaseRecord::parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    const V6_ONLY: &str = r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd77::1","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"9e:1a:77:20:4b:01"}}"#;

    #[test]
    fn ipv6_only_records_are_flanneld_s_and_read_only_on_ipv6_only_networks() {
        let r = LeaseRecord::parse_ipv6_only(V6_ONLY.as_bytes()).unwrap();
        assert_eq!(
            r,
            LeaseRecord {
                public_ip: Ipv4Addr::UNSPECIFIED,
                public_ipv6: Some("fd77::1".parse().unwrap()),
                backend: BackendRecord::VxlanIpv6Only,
                backend_v6: Some(VxlanV6Record {
                    vni: 1,
                    vtep_mac: "9e:1a:77:20:4b:01".parse().unwrap()
                }),
            }
        );
        assert_eq!(r.backend.type_name(), "vxlan");
        assert_eq!(r.to_json(), V6_ONLY);
        // On a network with IPv4 it is what it always was: no PublicIP, no BackendData.
        assert_eq!(
            LeaseRecord::parse(V6_ONLY.as_bytes()),
            Err(RecordError::PublicIp("0.0.0.0".into()))
        );
        let with_ip = V6_ONLY.replace("0.0.0.0", "10.0.0.7");
        let e = LeaseRecord::parse(with_ip.as_bytes()).unwrap_err();
        assert!(matches!(e, RecordError::BackendData(_)), "{e}");
        // The IPv4 half is ignored: a dual-stack record's BackendData, a real PublicIP, none.
        let r = LeaseRecord::parse_ipv6_only(DUAL.as_bytes()).unwrap();
        assert_eq!(r.backend, BackendRecord::VxlanIpv6Only);
        assert_eq!(r.public_ipv6, Some("fd77::1".parse().unwrap()));
        let bad_data = DUAL.replace(r#""VtepMAC":"c6:d2:32:6f:8f:44""#, r#""VtepMAC":"zz""#);
        assert!(LeaseRecord::parse(bad_data.as_bytes()).is_err());
        assert!(LeaseRecord::parse_ipv6_only(bad_data.as_bytes()).is_ok());
        let no_ip = r#"{"PublicIPv6":"fd77::1","BackendType":"host-gw"}"#;
        let r = LeaseRecord::parse_ipv6_only(no_ip.as_bytes()).unwrap();
        assert_eq!(
            (r.public_ip, r.backend),
            (Ipv4Addr::UNSPECIFIED, BackendRecord::HostGw)
        );
        // What Go's decoder would refuse is still refused.
        for bad in [
            r#"{"PublicIP":"fd77::1","PublicIPv6":"fd77::1"}"#,
            r#"{"PublicIP":0,"PublicIPv6":"fd77::1"}"#,
            r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd77::g"}"#,
            r#"{"PublicIP":"0.0.0.0","BackendType":"vxlan","BackendV6Data":{"VNI":1}}"#,
            "[]",
        ] {
            assert!(
                LeaseRecord::parse_ipv6_only(bad.as_bytes()).is_err(),
                "{bad}"
            );
        }
    }
}
