//! The compatibility contract as data: weft reads every fixture in `proto/records/` and writes
//! lease records back byte for byte; the JSON Schemas in `proto/schema/` cover every key.

use std::path::{Path, PathBuf};

use weft::config::{BackendType, NetworkConfig};
use weft::store::{BackendRecord, LeaseRecord, VxlanV6Record};

fn proto(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("proto")
        .join(rel)
}

fn fixtures(prefix: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(proto("records"))
        .expect("proto/records")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with(prefix) && name.ends_with(".json")
        })
        .map(|p| {
            (
                p.display().to_string(),
                std::fs::read(&p).expect("read fixture"),
            )
        })
        .collect();
    out.sort();
    out
}

fn schema(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(proto(&format!("schema/{name}"))).expect("schema");
    serde_json::from_str(&text).expect("schema is JSON")
}

#[test]
fn lease_fixtures_round_trip_byte_for_byte() {
    let all = fixtures("lease-");
    assert!(all.len() >= 4, "{all:?}");
    let props = schema("lease-record.schema.json")["properties"].clone();
    for (path, bytes) in all {
        let rec = LeaseRecord::parse(&bytes).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(
            rec.to_json().as_bytes(),
            &bytes[..],
            "{path}: not written back identically"
        );
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
        for key in v.as_object().expect("object").keys() {
            assert!(
                props.get(key).is_some(),
                "{path}: {key} missing from the schema"
            );
        }
    }
}

#[test]
fn lease_fixture_contents() {
    let vx = LeaseRecord::parse(&std::fs::read(proto("records/lease-vxlan.json")).expect("read"))
        .expect("parse");
    assert_eq!(vx.public_ip.to_string(), "192.168.64.3");
    assert_eq!(
        vx.backend,
        BackendRecord::Vxlan {
            vni: 1,
            vtep_mac: "c6:d2:32:6f:8f:44".parse().expect("mac")
        }
    );
    let udp = LeaseRecord::parse(&std::fs::read(proto("records/lease-udp.json")).expect("read"))
        .expect("parse");
    assert_eq!(udp.backend, BackendRecord::None);
    let hg = LeaseRecord::parse(&std::fs::read(proto("records/lease-host-gw.json")).expect("read"))
        .expect("parse");
    assert_eq!(hg.backend, BackendRecord::HostGw);
    let dual =
        LeaseRecord::parse(&std::fs::read(proto("records/lease-vxlan-dual.json")).expect("read"))
            .expect("parse");
    assert_eq!(dual.public_ipv6, Some("fd77::1".parse().expect("ipv6")));
    assert_eq!(
        dual.backend_v6,
        Some(VxlanV6Record {
            vni: 1,
            vtep_mac: "9e:1a:77:20:4b:01".parse().expect("mac")
        })
    );
}

#[test]
fn config_fixtures_parse_and_match_the_schema() {
    let all = fixtures("config-");
    assert!(all.len() >= 3, "{all:?}");
    let s = schema("network-config.schema.json");
    let props = s["properties"].as_object().expect("properties").clone();
    let backend_props = s["properties"]["Backend"]["properties"]
        .as_object()
        .expect("Backend properties")
        .clone();
    for (path, bytes) in all {
        let text = String::from_utf8(bytes).expect("utf-8");
        NetworkConfig::parse(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        for (k, val) in v.as_object().expect("object") {
            assert!(props.contains_key(k), "{path}: {k} missing from the schema");
            if k == "Backend" {
                for bk in val.as_object().expect("Backend object").keys() {
                    assert!(
                        backend_props.contains_key(bk),
                        "{path}: Backend.{bk} missing"
                    );
                }
            }
        }
    }
    let full = NetworkConfig::parse(
        &std::fs::read_to_string(proto("records/config-vxlan-full.json")).expect("read"),
    )
    .expect("parse");
    assert_eq!(full.subnet_len, 26);
    assert_eq!(full.backend.kind, BackendType::Vxlan);
    assert!(full.backend.direct_routing);
    let udp = NetworkConfig::parse(
        &std::fs::read_to_string(proto("records/config-udp-default.json")).expect("read"),
    )
    .expect("parse");
    assert_eq!(udp.backend.kind, BackendType::Udp);
    assert_eq!(udp.backend.port, 8285);
}
