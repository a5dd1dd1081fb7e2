//! Lease records: the JSON value flanneld stores at `<prefix>/subnets/<net>-<len>`.
//!
//! flanneld marshals Go's `lease.LeaseAttrs` (`PublicIP`, `PublicIPv6`, then `BackendType`,
//! `BackendData` and `BackendV6Data` when not empty). We read records tolerantly (Go's
//! case-insensitive keys, unknown keys ignored) and write them byte for byte as flanneld does.

use std::net::Ipv4Addr;

use crate::config::gojson::{GoObject, GoValue};
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
            BackendRecord::Vxlan { .. } => "vxlan",
            BackendRecord::HostGw => "host-gw",
            BackendRecord::Other(s) => s,
        }
    }
}

/// A node's lease record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// `PublicIP`: the node's underlay address.
    pub public_ip: Ipv4Addr,
    /// `PublicIPv6` as text, if the record has one (weft writes `null`).
    pub public_ipv6: Option<String>,
    /// `BackendType` and `BackendData`.
    pub backend: BackendRecord,
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
    /// A vxlan record lacks a valid `BackendData` (`VNI`, `VtepMAC`).
    #[error("vxlan lease record has bad BackendData: {0}")]
    BackendData(String),
    /// A field has the wrong JSON type.
    #[error("lease record field {0} has the wrong type")]
    FieldType(&'static str),
}

impl LeaseRecord {
    /// Parses a record the way flanneld's Go decoder would, then checks what weft needs.
    pub fn parse(bytes: &[u8]) -> Result<LeaseRecord, RecordError> {
        let text = std::str::from_utf8(bytes).map_err(|e| RecordError::Json(e.to_string()))?;
        let o = GoObject::parse(text).map_err(RecordError::Json)?;
        let public_ip = match o.get("PublicIP") {
            Some(GoValue::String(s)) => s
                .parse::<Ipv4Addr>()
                .map_err(|_| RecordError::PublicIp(format!("{s:?} is not an IPv4 address")))?,
            Some(_) => return Err(RecordError::FieldType("PublicIP")),
            None => return Err(RecordError::PublicIp("missing".into())),
        };
        if public_ip.is_unspecified() {
            return Err(RecordError::PublicIp("0.0.0.0".into()));
        }
        let public_ipv6 = match o.get("PublicIPv6") {
            Some(GoValue::String(s)) => Some(s.clone()),
            Some(_) => return Err(RecordError::FieldType("PublicIPv6")),
            None => None,
        };
        let backend_type = match o.get("BackendType") {
            Some(GoValue::String(s)) => s.as_str(),
            Some(_) => return Err(RecordError::FieldType("BackendType")),
            None => "",
        };
        let backend = match backend_type {
            "" => BackendRecord::None,
            "host-gw" => BackendRecord::HostGw,
            "vxlan" => {
                let data = o
                    .get("BackendData")
                    .and_then(GoValue::as_object)
                    .ok_or_else(|| RecordError::BackendData("missing".into()))?;
                let vni = data
                    .get("VNI")
                    .and_then(GoValue::as_u64)
                    .and_then(|v| u32::try_from(v).ok())
                    .unwrap_or(0);
                let mac = data
                    .get("VtepMAC")
                    .and_then(GoValue::as_str)
                    .ok_or_else(|| RecordError::BackendData("no VtepMAC".into()))?;
                let vtep_mac = mac
                    .parse::<EthernetAddress>()
                    .map_err(|e| RecordError::BackendData(e.to_string()))?;
                BackendRecord::Vxlan { vni, vtep_mac }
            }
            other => BackendRecord::Other(other.to_string()),
        };
        Ok(LeaseRecord {
            public_ip,
            public_ipv6,
            backend,
        })
    }

    /// The record as flanneld writes it, byte for byte.
    pub fn to_json(&self) -> String {
        let v6 = match &self.public_ipv6 {
            Some(s) => serde_json::Value::String(s.clone()).to_string(),
            None => "null".to_string(),
        };
        let mut out = format!(
            "{{\"PublicIP\":\"{}\",\"PublicIPv6\":{}",
            self.public_ip, v6
        );
        match &self.backend {
            BackendRecord::None => {}
            BackendRecord::Vxlan { vni, vtep_mac } => out.push_str(&format!(
                ",\"BackendType\":\"vxlan\",\"BackendData\":{{\"VNI\":{vni},\"VtepMAC\":\"{vtep_mac}\"}}"
            )),
            BackendRecord::HostGw => out.push_str(",\"BackendType\":\"host-gw\""),
            BackendRecord::Other(t) => out.push_str(&format!(
                ",\"BackendType\":{}",
                serde_json::Value::String(t.clone())
            )),
        }
        out.push('}');
        out
    }
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
        ) {
            let backend = match kind {
                0 => BackendRecord::None,
                1 => BackendRecord::Vxlan { vni, vtep_mac: EthernetAddress(mac) },
                2 => BackendRecord::HostGw,
                _ if other == "vxlan" || other == "host-gw" => BackendRecord::HostGw,
                _ => BackendRecord::Other(other),
            };
            let r = LeaseRecord { public_ip: Ipv4Addr::from(ip), public_ipv6: None, backend };
            let text = r.to_json();
            prop_assert_eq!(LeaseRecord::parse(text.as_bytes()), Ok(r));
            // And it is the JSON Go would produce: valid, with the same members.
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            prop_assert!(v.get("PublicIPv6").is_some_and(|x| x.is_null()));
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
        assert_eq!(r.to_json(), dual);
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
}
