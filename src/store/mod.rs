//! The etcd subnet store: flannel's etcd contract (v3 API) on tokio.
//!
//! It owns everything weft keeps in etcd: reading the network config at `<prefix>/config`,
//! acquiring and renewing this node's lease at `<prefix>/subnets/<net>-<len>` (dual stack:
//! `<net>-<len>&<net6>-<len6>`; IPv6-only: `0.0.0.0-0&<net6>-<len6>`), and watching every other node's lease. Remote leases flow
//! one way: watch events -> [`PeerSet`] -> an immutable [`LeaseTable`] published into the
//! [`SharedTable`] the data plane reads.
//!
//! [`PeerSet`]: crate::table::PeerSet
//! [`LeaseTable`]: crate::table::LeaseTable
//! [`SharedTable`]: crate::table::SharedTable

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::config::ConfigError;
use crate::wire::{Subnet, Subnet6};

pub mod check;
mod file;
mod lease;
mod list;
mod options;
pub mod record;
mod retry;
mod start;
pub mod state;
pub mod subnet_env;
pub mod view;
pub mod vtep;
mod watch;

pub use check::{
    check_lease, judge, judge_all, vni_mismatches, Judged, LeaseProblem, LeaseView, VniMismatch,
};
pub use lease::{acquire_lease, read_config, AcquireRequest, OwnLease};
pub use options::{ConfigCheck, StoreOptions};
pub use record::{BackendRecord, LeaseRecord, RecordError, VxlanV6Record};
pub use start::Store;
pub use subnet_env::{
    read_previous_ipv6_subnet, read_previous_subnet, SubnetEnv, SubnetEnv6, SubnetEnvError,
};
pub use vtep::{derive_vtep_mac, derive_vtep_mac6};
pub use watch::StoreHandle;

/// flanneld's default etcd prefix.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";

/// How long a lease lives in etcd before it must be renewed (flannel: 24 h).
pub const LEASE_TTL: Duration = Duration::from_secs(24 * 3600);

/// The etcd keys of one flannel network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (a trailing `/` is ignored, like Go's `path.Join`).
    pub fn new(prefix: &str) -> Keys {
        let p = prefix.trim_end_matches('/');
        Keys {
            prefix: if p.is_empty() {
                String::new()
            } else {
                p.to_string()
            },
        }
    }

    /// The prefix, without a trailing `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>/config`.
    pub fn config(&self) -> String {
        format!("{}/config", self.prefix)
    }

    /// `<prefix>/`: every key of this network (the watch covers the config and the leases).
    pub fn root(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// `<prefix>/subnets/`: the prefix every lease key starts with.
    pub fn subnets_dir(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    /// `<prefix>/subnets/10.1.2.0-24`.
    pub fn subnet(&self, s: &Subnet) -> String {
        format!("{}/subnets/{}", self.prefix, s.key_string())
    }

    /// The subnet a lease key names; dual-stack keys (`10.1.2.0-24&fc00::-64`) give their
    /// IPv4 part. `None` for keys that are not leases of this prefix.
    pub fn parse_subnet_key(&self, key: &[u8]) -> Option<Subnet> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(&self.subnets_dir())?;
        let v4 = rest.split('&').next()?;
        Subnet::from_key_str(v4).ok()
    }

    /// `<prefix>/subnets/10.1.2.0-24&fd10:0:0:2::-64` (flannel's `MakeSubnetKey`): the IPv4
    /// key, then `&` and the IPv6 key when the lease has an IPv6 subnet.
    pub fn subnet_dual(&self, s: &Subnet, s6: Option<&Subnet6>) -> String {
        match s6 {
            Some(s6) => format!(
                "{}/subnets/{}&{}",
                self.prefix,
                s.key_string(),
                s6.key_string()
            ),
            None => self.subnet(s),
        }
    }

    /// Both subnets a lease key names, read as flannel's `ParseSubnetKey` does: the IPv6 part
    /// after `&` is lower-case hex and `:` only, with a prefix length of at most 127, and
    /// `::-0` means no IPv6 subnet. `None` when the key is not a lease of this prefix or
    /// either part is bad (flannel skips such keys whole).
    pub fn parse_subnet_key_dual(&self, key: &[u8]) -> Option<(Subnet, Option<Subnet6>)> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(&self.subnets_dir())?;
        let (v4, v6) = match rest.split_once('&') {
            Some((v4, v6)) => (v4, Some(v6)),
            None => (rest, None),
        };
        let s = Subnet::from_key_str(v4).ok()?;
        let Some(v6) = v6 else {
            return Some((s, None));
        };
        let (addr, len) = v6.rsplit_once('-')?;
        let flannel_addr = !addr.is_empty()
            && addr
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b':');
        let flannel_len = !len.is_empty()
            && len.bytes().all(|b| b.is_ascii_digit())
            && len.parse::<u8>().is_ok_and(|l| l <= 127);
        if !flannel_addr || !flannel_len {
            return None;
        }
        let s6 = Subnet6::from_key_str(v6).ok()?;
        // flannel's IP6Net.Empty(): the all-zero net is "no IPv6 subnet".
        if s6.prefix_len() == 0 && s6.addr().is_unspecified() {
            return Some((s, None));
        }
        Some((s, Some(s6)))
    }
}

/// How to reach etcd: flanneld's `--etcd-*` flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdOptions {
    /// Endpoint URLs (`http://127.0.0.1:2379`, `https://...`).
    pub endpoints: Vec<String>,
    /// The key prefix (`--etcd-prefix`).
    pub prefix: String,
    /// Client key file (PEM) for TLS.
    pub keyfile: Option<PathBuf>,
    /// Client certificate file (PEM) for TLS.
    pub certfile: Option<PathBuf>,
    /// CA certificate file (PEM) that signed etcd's server certificate.
    pub cafile: Option<PathBuf>,
    /// User name for etcd authentication.
    pub username: Option<String>,
    /// Password for etcd authentication.
    pub password: Option<String>,
}

/// Everything that can go wrong in the store, named after what failed; the underlying
/// error is the `source()`, not part of the message.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Building the etcd client failed (bad endpoint URL, TLS setup, authentication).
    #[error("connecting to etcd at {endpoints}")]
    EtcdConnect {
        /// The endpoints tried.
        endpoints: String,
        /// The client's error.
        #[source]
        source: etcd_client::Error,
    },
    /// A TLS file given on the command line could not be read.
    #[error("reading etcd TLS file {path}")]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Only one of `--etcd-certfile` and `--etcd-keyfile` was given.
    #[error("--etcd-certfile and --etcd-keyfile must be given together")]
    TlsIncomplete,
    /// Reading `<prefix>/config` failed.
    #[error("reading network config {key}")]
    ConfigRead {
        /// The key.
        key: String,
        /// The client's error.
        #[source]
        source: etcd_client::Error,
    },
    /// `<prefix>/config` does not exist.
    #[error("network config not found at {key}; create it, e.g. etcdctl put {key} '{{\"Network\": \"10.1.0.0/16\", \"Backend\": {{\"Type\": \"vxlan\"}}}}'")]
    ConfigMissing {
        /// The key.
        key: String,
    },
    /// `<prefix>/config` exists but is not a valid flannel config.
    #[error("network config at {key} is invalid")]
    ConfigInvalid {
        /// The key.
        key: String,
        /// What is wrong with it.
        #[source]
        source: ConfigError,
    },
    /// Listing the leases failed.
    #[error("listing leases under {prefix}")]
    LeaseList {
        /// The key prefix.
        prefix: String,
        /// The client's error.
        #[source]
        source: etcd_client::Error,
    },
    /// Granting an etcd lease (the TTL behind a subnet lease) failed.
    #[error("granting an etcd lease of {ttl_secs} s")]
    LeaseGrant {
        /// The TTL asked for.
        ttl_secs: i64,
        /// The client's error.
        #[source]
        source: etcd_client::Error,
    },
    /// Creating this node's lease key failed.
    #[error("creating lease {key}")]
    LeaseCreate {
        /// The lease's etcd key (it names both subnets of a dual-stack or IPv6-only lease).
        key: String,
        /// The client's error.
        #[source]
        source: etcd_client::Error,
    },
    /// Re-writing this node's lease (reuse or renewal) failed.
    #[error("renewing lease {key}")]
    LeaseRenew {
        /// The lease's etcd key.
        key: String,
        /// The client's error.
        #[source]
        source: etcd_client::Error,
    },
    /// Deleting a stale lease of this node failed.
    #[error("deleting stale lease {key}")]
    LeaseDelete {
        /// The lease's etcd key.
        key: String,
        /// The client's error.
        #[source]
        source: etcd_client::Error,
    },
    /// Every subnet between SubnetMin and SubnetMax is leased.
    #[error("out of subnets: all {count} subnets of {network} from {min} to {max} are leased; widen SubnetMin/SubnetMax or the Network, or delete stale leases")]
    OutOfSubnets {
        /// The Network.
        network: Subnet,
        /// SubnetMin.
        min: Ipv4Addr,
        /// SubnetMax.
        max: Ipv4Addr,
        /// How many subnets the range holds.
        count: u64,
    },
    /// Every IPv6 subnet between IPv6SubnetMin and IPv6SubnetMax is leased.
    #[error("out of IPv6 subnets: all {count} IPv6 subnets of {network} from {min} to {max} are leased; widen IPv6SubnetMin/IPv6SubnetMax or the IPv6Network, or delete stale leases")]
    OutOfIpv6Subnets {
        /// The IPv6Network.
        network: Subnet6,
        /// IPv6SubnetMin.
        min: Ipv6Addr,
        /// IPv6SubnetMax.
        max: Ipv6Addr,
        /// How many IPv6 subnets the range holds.
        count: u128,
    },
    /// The network enables IPv6 but this node has no underlay IPv6 address to advertise.
    #[error("the network config enables IPv6 but this node has no IPv6 address to advertise as PublicIPv6: pass -public-ipv6=<address>, or give the underlay interface a global IPv6 address")]
    NoPublicIpv6,
    /// The network has IPv4 but this node has no underlay IPv4 address to advertise (the
    /// request's `public_ip` is `0.0.0.0`, which only an IPv6-only network accepts).
    #[error("the network config enables IPv4 but this node has no IPv4 address to advertise as PublicIP: pass -public-ip=<address>, or give the underlay interface an IPv4 address")]
    NoPublicIp,
    /// Other nodes kept winning the race for the chosen subnets.
    #[error("lost the race for a free subnet {attempts} times in a row; try again")]
    AcquireRaces {
        /// How many attempts were made.
        attempts: u32,
    },
    /// Writing subnet.env failed.
    #[error(transparent)]
    SubnetFile(#[from] SubnetEnvError),
}

impl StoreError {
    /// Whether retrying later can help (etcd unreachable) as opposed to a setup problem.
    pub fn is_transient(&self) -> bool {
        if let StoreError::EtcdConnect { source, .. } = self {
            // With a user name, connecting authenticates at once: etcd may just be down.
            return matches!(
                source,
                etcd_client::Error::GRpcStatus(_)
                    | etcd_client::Error::TransportError(_)
                    | etcd_client::Error::IoError(_)
            );
        }
        matches!(
            self,
            StoreError::ConfigRead { .. }
                | StoreError::LeaseList { .. }
                | StoreError::LeaseGrant { .. }
                | StoreError::LeaseCreate { .. }
                | StoreError::LeaseRenew { .. }
                | StoreError::LeaseDelete { .. }
                | StoreError::AcquireRaces { .. }
        )
    }
}

/// The most of an etcd TLS file read (a CA bundle of every public root is about 200 KB).
const MAX_TLS_FILE_BYTES: u64 = 4 << 20;

/// Reads a TLS file: only a regular file (a FIFO there would block the start), bounded.
fn read_tls_file(path: &Path) -> Result<Vec<u8>, StoreError> {
    file::read_regular(path, MAX_TLS_FILE_BYTES).map_err(|e| StoreError::TlsFile {
        path: path.to_path_buf(),
        source: match e {
            file::FileError::Io(source) => source,
            other => std::io::Error::other(other),
        },
    })
}

/// Connects to etcd. TLS is used for `https://` endpoints, with the CA and the client
/// certificate from the options; the connection itself is made lazily, so this succeeds
/// while etcd is down and requests fail (and are retried) until it is back.
pub async fn connect(opts: &EtcdOptions) -> Result<Client, StoreError> {
    let mut co = ConnectOptions::new()
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(10))
        .with_require_leader(true);
    if let (Some(u), Some(p)) = (&opts.username, &opts.password) {
        if !u.is_empty() {
            // etcd tokens expire; re-authenticate instead of failing every request after.
            co = co
                .with_user(u.clone(), p.clone())
                .with_auto_token_refresh(true);
        }
    }
    let any_https = opts.endpoints.iter().any(|e| e.starts_with("https://"));
    let (cert, key) = (&opts.certfile, &opts.keyfile);
    if cert.is_some() != key.is_some() {
        return Err(StoreError::TlsIncomplete);
    }
    if any_https {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &opts.cafile {
            tls = tls.ca_certificate(Certificate::from_pem(read_tls_file(ca)?));
        }
        if let (Some(c), Some(k)) = (cert, key) {
            tls = tls.identity(Identity::from_pem(read_tls_file(c)?, read_tls_file(k)?));
        }
        co = co.with_tls(tls);
    } else if opts.cafile.is_some() || cert.is_some() {
        tracing::warn!("etcd TLS files given but no https:// endpoint; connecting without TLS");
    }
    Client::connect(&opts.endpoints, Some(co))
        .await
        .map_err(|source| StoreError::EtcdConnect {
            endpoints: opts.endpoints.join(","),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let k = Keys::new("/coreos.com/network/");
        assert_eq!(k.config(), "/coreos.com/network/config");
        let s: Subnet = "10.1.2.0/24".parse().unwrap();
        assert_eq!(k.subnet(&s), "/coreos.com/network/subnets/10.1.2.0-24");
        assert_eq!(k.parse_subnet_key(k.subnet(&s).as_bytes()), Some(s));
        assert_eq!(
            k.parse_subnet_key(b"/coreos.com/network/subnets/10.1.2.0-24&fc00::-64"),
            Some(s)
        );
        assert_eq!(
            k.parse_subnet_key(b"/coreos.com/network/subnets/junk"),
            None
        );
        assert_eq!(k.parse_subnet_key(b"/other/subnets/10.1.2.0-24"), None);
        assert_eq!(k.parse_subnet_key(b"/coreos.com/network/config"), None);
    }

    #[test]
    fn dual_stack_keys() {
        let k = Keys::new("/coreos.com/network");
        let s: Subnet = "10.1.2.0/24".parse().unwrap();
        let s6: Subnet6 = "fd10:0:0:2::/64".parse().unwrap();
        let key = k.subnet_dual(&s, Some(&s6));
        assert_eq!(
            key,
            "/coreos.com/network/subnets/10.1.2.0-24&fd10:0:0:2::-64"
        );
        assert_eq!(k.parse_subnet_key_dual(key.as_bytes()), Some((s, Some(s6))));
        // The IPv4 view of the same key is unchanged.
        assert_eq!(k.parse_subnet_key(key.as_bytes()), Some(s));
        // Without an IPv6 subnet the key is the IPv4 one.
        assert_eq!(k.subnet_dual(&s, None), k.subnet(&s));
        assert_eq!(
            k.parse_subnet_key_dual(k.subnet(&s).as_bytes()),
            Some((s, None))
        );
        // flannel's IP6Net.Empty() is no IPv6 subnet.
        assert_eq!(
            k.parse_subnet_key_dual(b"/coreos.com/network/subnets/10.1.2.0-24&::-0"),
            Some((s, None))
        );
        // Go writes RFC 5952 text: the longest zero run compressed, lower case.
        let s6: Subnet6 = "fd10:0:0:0:1::/80".parse().unwrap();
        assert_eq!(
            k.subnet_dual(&s, Some(&s6)),
            "/coreos.com/network/subnets/10.1.2.0-24&fd10::1:0:0:0-80"
        );
    }

    #[test]
    fn dual_stack_keys_outside_flannels_pattern_are_not_leases() {
        let k = Keys::new("/coreos.com/network");
        for bad in [
            "10.1.2.0-24&junk",
            "10.1.2.0-24&FD10:0:0:2::-64", // flannel's pattern is lower case
            "10.1.2.0-24&fd10:0:0:2::-128", // ParseUint(.., 7): at most 127
            "10.1.2.0-24&fd10:0:0:2::-",
            "10.1.2.0-24&fd10:0:0:2::",
            "10.1.2.0-24&-64",
            "10.1.2.0-24&fd10:0:0:2::1-64", // host bits, like 10.1.2.7-24
            "10.1.2.0-24&::ffff:10.0.0.0-120", // Go writes it dotted; the pattern has no dots
            "10.1.2.0-24&fd10:0:0:2::-64&x",
            "10.1.2.0-24&fd10:0:0:2::-+64",
            "junk&fd10:0:0:2::-64",
        ] {
            let key = format!("/coreos.com/network/subnets/{bad}");
            assert_eq!(k.parse_subnet_key_dual(key.as_bytes()), None, "{bad}");
        }
        assert_eq!(
            k.parse_subnet_key_dual(b"/other/subnets/10.1.2.0-24&fd10:0:0:2::-64"),
            None
        );
        // The widest flannel accepts.
        let key = b"/coreos.com/network/subnets/10.1.2.0-24&fd10:0:0:2::-127";
        assert!(k
            .parse_subnet_key_dual(key)
            .is_some_and(|(_, s6)| s6.is_some()));
    }

    #[test]
    fn a_tls_file_that_is_a_fifo_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("ca.pem");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || {
            let _ = tx.send(read_tls_file(&path).map(|_| ()));
        });
        let e = rx
            .recv_timeout(Duration::from_secs(2))
            .expect("reading a FIFO as a TLS file blocked")
            .unwrap_err();
        assert_eq!(
            crate::error::Chain(&e).to_string(),
            format!(
                "reading etcd TLS file {}: is a FIFO, not a regular file",
                fifo.display()
            )
        );
    }

    #[test]
    fn errors_carry_their_cause_in_the_chain_not_the_message() {
        use std::error::Error as _;
        let e = StoreError::TlsFile {
            path: PathBuf::from("/etc/weft/ca.pem"),
            source: std::io::Error::other("boom"),
        };
        assert_eq!(e.to_string(), "reading etcd TLS file /etc/weft/ca.pem");
        assert_eq!(e.source().map(|s| s.to_string()).as_deref(), Some("boom"));
        let e = StoreError::ConfigInvalid {
            key: "/n/config".into(),
            source: ConfigError::MissingNetwork,
        };
        assert_eq!(e.to_string(), "network config at /n/config is invalid");
        assert!(e.source().is_some());
        // subnet.env errors pass through as they are.
        let e = StoreError::from(crate::store::SubnetEnvError::Io {
            path: PathBuf::from("/run/flannel/subnet.env"),
            source: std::io::Error::other("boom"),
        });
        assert_eq!(e.to_string(), "subnet file /run/flannel/subnet.env");
        assert_eq!(e.source().map(|s| s.to_string()).as_deref(), Some("boom"));
    }
}
