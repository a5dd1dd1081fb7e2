//! The node's last good state on disk, so that a restart forwards at once, before etcd
//! answers (or while it cannot be reached at all): the network config, this node's own lease
//! with its expiry, and every remote lease with the etcd revision they reflect.
//!
//! The file sits beside subnet.env (`weft.state` in the same directory, or `--state-file`)
//! and is written atomically (temporary file, fsync, rename) by the store whenever what it
//! holds changed, at most every few seconds, and when the node stops. Its first line is
//! `weft-state <version> <crc32 of the body, hex> <body length>`, its body JSON. A file whose
//! version, length or checksum does not match, that belongs to another prefix or another
//! node (PublicIP), whose own lease has expired, or whose config the node refuses is not used
//! (the log says why); every lease in it passes the same checks as a record read from etcd
//! (it is stored as the record etcd would hold). The same document travels from a running
//! node to the one taking over from it ([`crate::node`]'s takeover).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::check::{self, LeaseProblem};
use super::file::FileError;
use super::lease::OwnLease;
use super::record::{BackendRecord, LeaseRecord, VxlanV6Record};
use super::Keys;
use crate::config::{BackendType, ConfigError, NetworkConfig};
use crate::table::{Lease, LeaseKey, LocalVtep, Peer, Peer6, PeerEvent, PeerSet};

/// A lease as etcd holds it: key, value, create revision.
pub type RawLease = (Vec<u8>, Vec<u8>, i64);

/// The format version this build writes and reads.
pub const STATE_VERSION: u32 = 1;

/// The largest state file read (65,000 leases take about 15 MB).
const MAX_STATE_BYTES: u64 = 256 << 20;

/// The file name beside subnet.env when `--state-file` is not given.
pub const STATE_FILE_NAME: &str = "weft.state";

/// Where the state file goes by default: beside `subnet_file`.
pub fn default_path(subnet_file: &Path) -> PathBuf {
    match subnet_file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.join(STATE_FILE_NAME),
        _ => PathBuf::from(STATE_FILE_NAME),
    }
}

/// Why a state file (or a takeover's state) is not used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing the file failed.
    #[error("state file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Not a regular file (a FIFO, a device, a directory): never opened for reading.
    #[error("state file {0} is not a regular file")]
    NotAFile(PathBuf),
    /// The header line is missing or not weft's.
    #[error("not a weft state file (no `weft-state` header)")]
    NoHeader,
    /// Written by another format version.
    #[error("written in state format {found}, this weft reads {STATE_VERSION}")]
    Version {
        /// The version found.
        found: u32,
    },
    /// The body is shorter or longer than the header says, or larger than any real state.
    #[error("the body is {found} bytes, the header says {expected}")]
    Length {
        /// Bytes the header announces.
        expected: u64,
        /// Bytes found.
        found: u64,
    },
    /// The body's checksum does not match the header's.
    #[error("checksum mismatch (header {expected:08x}, body {found:08x}): the file is damaged")]
    Checksum {
        /// The header's CRC-32.
        expected: u32,
        /// The body's CRC-32.
        found: u32,
    },
    /// The body is not the expected JSON document.
    #[error("the body does not parse: {0}")]
    Body(String),
    /// The state belongs to another etcd prefix.
    #[error("it is for etcd prefix {found}, this node runs {expected}")]
    OtherPrefix {
        /// The prefix the node runs.
        expected: String,
        /// The prefix in the state.
        found: String,
    },
    /// The own lease names another node's PublicIP (or PublicIPv6).
    #[error("its lease is for {found}, this node is {expected}")]
    OtherNode {
        /// This node's address.
        expected: String,
        /// The address in the state's lease.
        found: String,
    },
    /// The own lease ran out before this start.
    #[error("its lease expired {} s ago", .ago.as_secs())]
    Expired {
        /// How long ago.
        ago: Duration,
    },
    /// The stored network config is invalid or refused by the node.
    #[error("its network config is not usable")]
    Config(#[source] ConfigError),
    /// The own lease does not fit the stored config.
    #[error("its own lease {key} does not fit its network config")]
    OwnLease {
        /// The lease's key.
        key: String,
        /// Why.
        #[source]
        source: LeaseProblem,
    },
}

/// The state as it is saved: the JSON body of the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedState {
    /// The etcd prefix of the network.
    pub prefix: String,
    /// The network config's text, as read from etcd.
    pub config: String,
    /// This node's lease.
    pub own: SavedOwn,
    /// The etcd revision the leases reflect.
    pub revision: i64,
    /// Every remote lease: key, record (as etcd holds it), create revision.
    pub leases: Vec<(String, String, i64)>,
}

/// This node's lease as saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedOwn {
    /// The etcd key.
    pub key: String,
    /// The record under it.
    pub record: String,
    /// The etcd lease (TTL) id the key is attached to.
    pub etcd_lease: i64,
    /// The etcd revision of this node's last write of the key.
    pub revision: i64,
    /// When the etcd lease runs out, in milliseconds since the Unix epoch.
    pub expires_unix_ms: u64,
}

/// What a node checks a saved state against before it forwards from it.
#[derive(Debug, Clone)]
pub struct Expect<'a> {
    /// The etcd prefix it runs.
    pub prefix: &'a str,
    /// Its PublicIP.
    pub public_ip: Ipv4Addr,
    /// Its PublicIPv6, if it has one.
    pub public_ipv6: Option<Ipv6Addr>,
    /// The node's own check of a network config (as at a start from etcd).
    pub config_check: Option<super::ConfigCheck>,
}

/// A saved state that passed every check: what the node forwards from.
#[derive(Debug, Clone)]
pub struct Resume {
    /// The network config.
    pub config: NetworkConfig,
    /// The config's text.
    pub config_text: String,
    /// This node's lease.
    pub own: OwnLease,
    /// The etcd revision the leases reflect.
    pub revision: i64,
    /// The usable remote leases, judged as etcd's records are.
    pub leases: Vec<RawLease>,
    /// Saved leases that failed the checks, with why.
    pub rejected: Vec<(String, LeaseProblem)>,
}

impl SavedState {
    /// The state of a running store: its config (and the config's text), own lease, leases
    /// (from `peers`) and revision.
    pub fn capture(
        keys: &Keys,
        config: &NetworkConfig,
        config_text: &str,
        own: &OwnLease,
        peers: &PeerSet,
        revision: i64,
    ) -> SavedState {
        let leases = peers
            .leases()
            .into_iter()
            .map(|l| {
                let key = keys.subnet_dual(&l.key.subnet, l.key.subnet6.as_ref());
                (key, record_of(config, &l).to_json(), l.created)
            })
            .collect();
        SavedState {
            prefix: keys.prefix().to_string(),
            config: config_text.to_string(),
            own: SavedOwn {
                key: own.key(keys),
                record: own.record.to_json(),
                etcd_lease: own.etcd_lease,
                revision: own.revision,
                expires_unix_ms: unix_ms(instant_to_system(own.expires_at)),
            },
            revision,
            leases,
        }
    }

    /// The file's bytes: the header line, then the JSON body.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain strings and integers cannot fail.
        let body = serde_json::to_vec(self).unwrap_or_default();
        let mut out = format!(
            "weft-state {STATE_VERSION} {:08x} {}\n",
            crc32fast::hash(&body),
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(&body);
        out
    }

    /// Reads the file's bytes back, checking header, version, length and checksum.
    pub fn decode(bytes: &[u8]) -> Result<SavedState, StateError> {
        let nl = bytes
            .iter()
            .position(|&b| b == b'\n')
            .filter(|&n| n < 128)
            .ok_or(StateError::NoHeader)?;
        let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| StateError::NoHeader)?;
        let mut words = header.split(' ');
        if words.next() != Some("weft-state") {
            return Err(StateError::NoHeader);
        }
        let mut num = |radix: u32| {
            words
                .next()
                .and_then(|w| u64::from_str_radix(w, radix).ok())
                .ok_or(StateError::NoHeader)
        };
        let version = num(10)?;
        if version != u64::from(STATE_VERSION) {
            return Err(StateError::Version {
                found: u32::try_from(version).unwrap_or(u32::MAX),
            });
        }
        let crc = u32::try_from(num(16)?).map_err(|_| StateError::NoHeader)?;
        let len = num(10)?;
        let body = &bytes[nl + 1..];
        if body.len() as u64 != len {
            return Err(StateError::Length {
                expected: len,
                found: body.len() as u64,
            });
        }
        let found = crc32fast::hash(body);
        if found != crc {
            return Err(StateError::Checksum {
                expected: crc,
                found,
            });
        }
        serde_json::from_slice(body).map_err(|e| StateError::Body(e.to_string()))
    }

    /// Writes the state to `path` atomically: a temporary file in the same directory,
    /// flushed to disk, then renamed over the old one (a reader or a crash sees the old
    /// state or the new, never half of one).
    pub fn write(&self, path: &Path) -> Result<(), StateError> {
        super::file::write_atomically(path, &self.encode()).map_err(|source| StateError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads the state at `path`; `Ok(None)` when there is none. Only a regular file is
    /// opened (a FIFO would block, a device never end), and at most [`MAX_STATE_BYTES`] of
    /// it are read.
    pub fn read(path: &Path) -> Result<Option<SavedState>, StateError> {
        let io = |source| StateError::Io {
            path: path.to_path_buf(),
            source,
        };
        let bytes = match super::file::read_regular(path, MAX_STATE_BYTES) {
            Ok(b) => b,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(FileError::Io(source)) => return Err(io(source)),
            Err(FileError::NotRegular { .. }) => {
                return Err(StateError::NotAFile(path.to_path_buf()))
            }
            Err(FileError::TooLarge { limit }) => {
                return Err(StateError::Length {
                    expected: limit,
                    found: limit + 1,
                })
            }
        };
        Self::decode(&bytes).map(Some)
    }

    /// Checks the state against the node it would start (prefix, PublicIP, expiry, config)
    /// and judges every lease in it as a record from etcd is judged.
    pub fn check(&self, expect: &Expect<'_>, now: SystemTime) -> Result<Resume, StateError> {
        if self.prefix.trim_end_matches('/') != expect.prefix.trim_end_matches('/') {
            return Err(StateError::OtherPrefix {
                expected: expect.prefix.to_string(),
                found: self.prefix.clone(),
            });
        }
        let config = NetworkConfig::parse(&self.config).map_err(StateError::Config)?;
        if let Some(check) = expect.config_check {
            check(&config).map_err(StateError::Config)?;
        }
        let keys = Keys::new(&self.prefix);
        let own_key = || self.own.key.clone();
        let (subnet, subnet6) = keys
            .parse_subnet_key_dual(self.own.key.as_bytes())
            .ok_or_else(|| StateError::OwnLease {
                key: own_key(),
                source: LeaseProblem::BadKey,
            })?;
        let j = check::judge(
            &keys,
            &config,
            self.own.key.as_bytes(),
            self.own.record.as_bytes(),
        );
        let record = j.verdict.map_err(|source| StateError::OwnLease {
            key: own_key(),
            source,
        })?;
        let mine = match config.enable_ipv4 {
            true => record.public_ip == expect.public_ip,
            false => record.public_ipv6.is_some() && record.public_ipv6 == expect.public_ipv6,
        };
        if !mine {
            return Err(StateError::OtherNode {
                expected: addresses(expect.public_ip, expect.public_ipv6),
                found: addresses(record.public_ip, record.public_ipv6),
            });
        }
        let expires = UNIX_EPOCH + Duration::from_millis(self.own.expires_unix_ms);
        if let Err(e) = expires.duration_since(now) {
            return Err(StateError::Expired { ago: e.duration() });
        }
        let (mut leases, mut rejected) = (Vec::new(), Vec::new());
        for (key, value, created) in &self.leases {
            match check::judge(&keys, &config, key.as_bytes(), value.as_bytes()).verdict {
                Ok(_) => leases.push((
                    key.clone().into_bytes(),
                    value.clone().into_bytes(),
                    *created,
                )),
                Err(p) => rejected.push((key.clone(), p)),
            }
        }
        let own = OwnLease {
            subnet,
            subnet6,
            record,
            etcd_lease: self.own.etcd_lease,
            expires_at: system_to_instant(expires, now),
            revision: self.own.revision,
        };
        Ok(Resume {
            config,
            config_text: self.config.clone(),
            own,
            revision: self.revision,
            leases,
            rejected,
        })
    }
}

/// The record etcd holds for `lease` on a network with `config`, as its node wrote it.
fn record_of(config: &NetworkConfig, lease: &Lease) -> LeaseRecord {
    let vni = config.backend.vni.get();
    let backend = match (config.backend.kind, lease.peer.and_then(|p| p.vtep_mac)) {
        (BackendType::Vxlan, Some(vtep_mac)) => BackendRecord::Vxlan { vni, vtep_mac },
        (BackendType::Vxlan, None) => BackendRecord::VxlanIpv6Only,
        (BackendType::Udp, _) => BackendRecord::None,
        (BackendType::HostGw, _) => BackendRecord::HostGw,
    };
    LeaseRecord {
        public_ip: lease.peer.map_or(Ipv4Addr::UNSPECIFIED, |p| p.public_ip),
        public_ipv6: lease.peer6.map(|p| p.public_ip),
        backend,
        backend_v6: lease
            .peer6
            .and_then(|p| p.vtep_mac)
            .map(|vtep_mac| VxlanV6Record { vni, vtep_mac }),
    }
}

/// Peer entries for a judged lease (the store's own judging, for a table built before the
/// store runs): the same halves [`crate::store`]'s watch would give.
pub fn lease_events(
    keys: &Keys,
    config: &NetworkConfig,
    local: &LocalVtep,
    local6: &LocalVtep,
    leases: &[RawLease],
) -> Vec<PeerEvent> {
    let mut out = Vec::with_capacity(leases.len());
    for (key, value, created) in leases {
        let j = check::judge(keys, config, key, value);
        let (Some(subnet), Ok(rec)) = (j.subnet, j.verdict) else {
            continue;
        };
        let peer = config.enable_ipv4.then(|| {
            let mac = match rec.backend {
                BackendRecord::Vxlan { vtep_mac, .. } => Some(vtep_mac),
                _ => None,
            };
            Peer::new(subnet, rec.public_ip, mac, local)
        });
        let peer6 = match (&config.ipv6, j.subnet6, rec.public_ipv6) {
            (Some(_), Some(s6), Some(ip6)) => Some(Peer6::new(
                s6,
                ip6,
                rec.backend_v6.map(|b| b.vtep_mac),
                local6,
            )),
            _ => None,
        };
        out.push(PeerEvent::Put(Lease {
            key: LeaseKey {
                subnet,
                subnet6: j.subnet6,
            },
            created: *created,
            peer,
            peer6,
        }));
    }
    out
}

/// `a.b.c.d` or `a.b.c.d/x::y` for messages.
fn addresses(ip: Ipv4Addr, ip6: Option<Ipv6Addr>) -> String {
    match ip6 {
        Some(v6) => format!("PublicIP {ip}, PublicIPv6 {v6}"),
        None => format!("PublicIP {ip}"),
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The wall-clock time of a tokio instant (deadlines are kept as instants; files need wall
/// clock).
fn instant_to_system(at: tokio::time::Instant) -> SystemTime {
    let (now_i, now_s) = (tokio::time::Instant::now(), SystemTime::now());
    match at.checked_duration_since(now_i) {
        Some(ahead) => now_s + ahead,
        None => now_s - now_i.duration_since(at),
    }
}

/// The tokio instant of a wall-clock time (in the future of `now`).
fn system_to_instant(at: SystemTime, now: SystemTime) -> tokio::time::Instant {
    let ahead = at.duration_since(now).unwrap_or_default();
    tokio::time::Instant::now() + ahead
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan"}}"#;
    const OWN: &str = r#"{"PublicIP":"192.168.64.10","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:0a"}}"#;
    const PEER: &str = r#"{"PublicIP":"192.168.64.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:0b"}}"#;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn saved() -> SavedState {
        SavedState {
            prefix: "/coreos.com/network".into(),
            config: CONFIG.into(),
            own: SavedOwn {
                key: "/coreos.com/network/subnets/10.1.2.0-24".into(),
                record: OWN.into(),
                etcd_lease: 7,
                revision: 40,
                expires_unix_ms: unix_ms(now() + Duration::from_secs(3600)),
            },
            revision: 42,
            leases: vec![
                (
                    "/coreos.com/network/subnets/10.1.3.0-24".into(),
                    PEER.into(),
                    9,
                ),
                // A record no node may have: skipped like etcd's.
                (
                    "/coreos.com/network/subnets/10.1.4.0-24".into(),
                    PEER.replace("192.168.64.11", "127.0.0.1"),
                    10,
                ),
            ],
        }
    }

    fn expect() -> Expect<'static> {
        Expect {
            prefix: "/coreos.com/network",
            public_ip: Ipv4Addr::new(192, 168, 64, 10),
            public_ipv6: None,
            config_check: None,
        }
    }

    #[test]
    fn a_state_round_trips_and_resumes_with_its_usable_leases() {
        let s = saved();
        let bytes = s.encode();
        assert!(bytes.starts_with(b"weft-state 1 "));
        assert_eq!(SavedState::decode(&bytes).unwrap(), s);
        let r = s.check(&expect(), now()).unwrap();
        assert_eq!(r.own.subnet.to_string(), "10.1.2.0/24");
        assert_eq!((r.own.etcd_lease, r.own.revision, r.revision), (7, 40, 42));
        assert_eq!(r.leases.len(), 1);
        assert_eq!(r.rejected.len(), 1);
        assert_eq!(r.rejected[0].1.label(), "public_ip");
        assert!(r.own.expires_at > tokio::time::Instant::now() + Duration::from_secs(3500));
        // A trailing slash on the prefix is the same prefix.
        let slash = Expect {
            prefix: "/coreos.com/network/",
            ..expect()
        };
        assert!(s.check(&slash, now()).is_ok());
    }

    #[test]
    fn damaged_files_are_refused_with_the_reason() {
        let bytes = saved().encode();
        let mut flipped = bytes.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x20;
        assert!(matches!(
            SavedState::decode(&flipped),
            Err(StateError::Checksum { .. })
        ));
        let cut = &bytes[..bytes.len() - 10];
        assert!(matches!(
            SavedState::decode(cut),
            Err(StateError::Length { .. })
        ));
        assert!(matches!(
            SavedState::decode(b"{}"),
            Err(StateError::NoHeader)
        ));
        assert!(matches!(SavedState::decode(b""), Err(StateError::NoHeader)));
        let v2 =
            String::from_utf8(bytes.clone())
                .unwrap()
                .replacen("weft-state 1 ", "weft-state 2 ", 1);
        assert!(matches!(
            SavedState::decode(v2.as_bytes()),
            Err(StateError::Version { found: 2 })
        ));
        // A body that is JSON but not a state, with a right checksum.
        let body = b"[1,2]";
        let mut odd = format!(
            "weft-state 1 {:08x} {}\n",
            crc32fast::hash(body),
            body.len()
        )
        .into_bytes();
        odd.extend_from_slice(body);
        assert!(matches!(SavedState::decode(&odd), Err(StateError::Body(_))));
    }

    #[test]
    fn a_state_of_another_network_node_or_time_is_refused() {
        let s = saved();
        let other_prefix = Expect {
            prefix: "/other/network",
            ..expect()
        };
        let e = s.check(&other_prefix, now()).unwrap_err();
        assert!(matches!(e, StateError::OtherPrefix { .. }), "{e}");
        let other_node = Expect {
            public_ip: Ipv4Addr::new(192, 168, 64, 99),
            ..expect()
        };
        let e = s.check(&other_node, now()).unwrap_err();
        assert!(e.to_string().contains("192.168.64.10"), "{e}");
        let late = now() + Duration::from_secs(7200);
        let e = s.check(&expect(), late).unwrap_err();
        assert_eq!(e.to_string(), "its lease expired 3600 s ago");
        let mut bad = saved();
        bad.config = r#"{"Network":"10.1.0.0/16","SubnetLen":31}"#.into();
        assert!(matches!(
            bad.check(&expect(), now()),
            Err(StateError::Config(_))
        ));
        let refuse: super::super::ConfigCheck = |_| Err(ConfigError::NoIpFamily);
        let refused = Expect {
            config_check: Some(refuse),
            ..expect()
        };
        assert!(matches!(
            s.check(&refused, now()),
            Err(StateError::Config(_))
        ));
        // An own lease outside the config's Network.
        let mut outside = saved();
        outside.own.key = "/coreos.com/network/subnets/10.9.2.0-24".into();
        assert!(matches!(
            outside.check(&expect(), now()),
            Err(StateError::OwnLease { .. })
        ));
    }

    #[test]
    fn files_are_written_atomically_and_only_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE_NAME);
        assert!(SavedState::read(&path).unwrap().is_none());
        saved().write(&path).unwrap();
        assert_eq!(SavedState::read(&path).unwrap(), Some(saved()));
        // No temporary file stays behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(matches!(
            SavedState::read(&fifo),
            Err(StateError::NotAFile(_))
        ));
        assert!(matches!(
            SavedState::read(dir.path()),
            Err(StateError::NotAFile(_)) | Err(StateError::Io { .. })
        ));
        assert_eq!(
            default_path(Path::new("/run/flannel/subnet.env")),
            Path::new("/run/flannel/weft.state")
        );
    }
}
