//! `subnet.env`: the file flanneld writes for the CNI plugin and for its own next start.
//!
//! ```text
//! FLANNEL_NETWORK=10.1.0.0/16
//! FLANNEL_SUBNET=10.1.2.1/24
//! FLANNEL_MTU=1450
//! FLANNEL_IPMASQ=false
//! ```
//! A dual-stack node adds `FLANNEL_IPV6_NETWORK=fd10::/48` and
//! `FLANNEL_IPV6_SUBNET=fd10:0:0:2::1/64` after `FLANNEL_SUBNET`, as flanneld's
//! `WriteSubnetFile` does. An IPv6-only node (`EnableIPv4: false`) writes no
//! `FLANNEL_NETWORK` and `FLANNEL_SUBNET` lines, only the IPv6 ones, MTU and IPMASQ; its
//! [`SubnetEnv`] holds flannel's empty net `0.0.0.0/0` in `network` and `subnet`.
//! It is written atomically (temporary file in the same directory, then rename), so a reader
//! never sees half a file. It is read only if it is a regular file, and at most
//! [`MAX_SUBNET_ENV_BYTES`] of it: a FIFO or a device at the path is refused (named in the
//! error or the warning), never waited on or read for ever, and the next write replaces it.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::file::{self, FileError};
use super::retry::RepeatLog;
use crate::wire::{Subnet, Subnet6};

/// The most of a subnet.env read: the file is a few hundred bytes.
pub const MAX_SUBNET_ENV_BYTES: u64 = 64 << 10;

/// The contents of a subnet.env file.
///
/// An IPv6-only node's file (no IPv4 lines) has `network` and `subnet` `0.0.0.0/0` and
/// `ipv6` set; read its IPv4 half with [`SubnetEnv::subnet4`] and [`SubnetEnv::network4`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetEnv {
    /// `FLANNEL_NETWORK`: the whole overlay (`0.0.0.0/0` when IPv6-only).
    pub network: Subnet,
    /// The node's lease; written as its first host address, `FLANNEL_SUBNET=10.1.2.1/24`
    /// (`0.0.0.0/0` when IPv6-only).
    pub subnet: Subnet,
    /// The IPv6 half of a dual-stack node (`FLANNEL_IPV6_NETWORK`, `FLANNEL_IPV6_SUBNET`).
    pub ipv6: Option<SubnetEnv6>,
    /// `FLANNEL_MTU`: the MTU pods should use.
    pub mtu: u32,
    /// `FLANNEL_IPMASQ`: whether the node masquerades traffic leaving the overlay.
    pub ip_masq: bool,
}

/// The IPv6 lines of a dual-stack node's subnet.env.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetEnv6 {
    /// `FLANNEL_IPV6_NETWORK`: the whole IPv6 overlay, `fd10::/48`.
    pub network: Subnet6,
    /// The node's IPv6 lease; written as its first host address,
    /// `FLANNEL_IPV6_SUBNET=fd10:0:0:2::1/64`.
    pub subnet: Subnet6,
}

/// Why subnet.env could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SubnetEnvError {
    /// Reading, writing or renaming the file failed.
    #[error("subnet file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The path names something else than a regular file (a FIFO, a device, a directory).
    #[error("subnet file {path} is a {kind}, not a regular file: remove it, or point -subnet-file at a regular file")]
    NotAFile {
        /// The file.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// The file is far larger than any subnet.env.
    #[error("subnet file {path} is larger than {limit} bytes: not a subnet.env")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The most bytes read.
        limit: u64,
    },
    /// A required variable is missing or malformed.
    #[error("subnet file {path}: {var} is missing or malformed")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The variable.
        var: &'static str,
    },
}

impl SubnetEnv {
    /// Whether this is an IPv6-only node's file: no IPv4 network (`0.0.0.0/0`), an IPv6 half.
    pub fn is_ipv6_only(&self) -> bool {
        self.ipv6.is_some() && is_empty_net(&self.network)
    }

    /// The node's IPv4 lease; `None` for an IPv6-only node.
    pub fn subnet4(&self) -> Option<Subnet> {
        (!self.is_ipv6_only()).then_some(self.subnet)
    }

    /// The IPv4 overlay; `None` for an IPv6-only node.
    pub fn network4(&self) -> Option<Subnet> {
        (!self.is_ipv6_only()).then_some(self.network)
    }

    /// The file's text, variables in flanneld's order: NETWORK, SUBNET, IPV6_NETWORK,
    /// IPV6_SUBNET, MTU, IPMASQ (an IPv6-only node's without the first two).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.is_ipv6_only() {
            out.push_str(&format!(
                "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}/{}\n",
                self.network,
                self.subnet.first_host(),
                self.subnet.prefix_len(),
            ));
        }
        if let Some(v6) = &self.ipv6 {
            out.push_str(&format!(
                "FLANNEL_IPV6_NETWORK={}\nFLANNEL_IPV6_SUBNET={}/{}\n",
                v6.network,
                v6.subnet.first_host(),
                v6.subnet.prefix_len(),
            ));
        }
        out.push_str(&format!(
            "FLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.mtu, self.ip_masq
        ));
        out
    }

    /// Writes the file atomically, creating its directory if needed. Whatever else is at the
    /// path (a FIFO, a device node, a symbolic link) is replaced by the regular file, with a
    /// warning; a directory there is an error.
    pub fn write(&self, path: &Path) -> Result<(), SubnetEnvError> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            match file::kind_of(meta.file_type()) {
                None => {}
                Some("directory") => {
                    return Err(SubnetEnvError::NotAFile {
                        path: path.to_path_buf(),
                        kind: "directory",
                    })
                }
                Some(kind) => {
                    let points_to = std::fs::read_link(path).ok();
                    tracing::warn!(path = %path.display(), was = kind, points_to = ?points_to, "the subnet file is not a regular file; replacing it with one (nothing is written into what was there)");
                }
            }
        }
        file::write_atomically(path, self.render().as_bytes()).map_err(|source| {
            SubnetEnvError::Io {
                path: path.to_path_buf(),
                source,
            }
        })
    }

    /// Reads a subnet.env file (as written by flanneld or weft); only a regular file is read.
    pub fn read(path: &Path) -> Result<SubnetEnv, SubnetEnvError> {
        let text = read_text(path)?;
        Self::parse(&text).map_err(|var| SubnetEnvError::Parse {
            path: path.to_path_buf(),
            var,
        })
    }

    /// Parses the file's text; on failure names the bad variable. A file with IPv6 lines
    /// and neither `FLANNEL_NETWORK` nor `FLANNEL_SUBNET` is an IPv6-only node's.
    pub fn parse(text: &str) -> Result<SubnetEnv, &'static str> {
        let var = |name: &str| {
            text.lines()
                .rev()
                .filter_map(|l| l.trim().split_once('='))
                .find(|(k, _)| k.trim() == name)
                .map(|(_, v)| v.trim().trim_matches('"'))
        };
        let no_ipv4 = var("FLANNEL_NETWORK").is_none() && var("FLANNEL_SUBNET").is_none();
        let ipv6_lines =
            var("FLANNEL_IPV6_NETWORK").is_some() || var("FLANNEL_IPV6_SUBNET").is_some();
        let (network, subnet) = if no_ipv4 && ipv6_lines {
            let empty =
                Subnet::containing(Ipv4Addr::UNSPECIFIED, 0).map_err(|_| "FLANNEL_NETWORK")?;
            (empty, empty)
        } else {
            let network = var("FLANNEL_NETWORK")
                .and_then(|v| v.parse::<Subnet>().ok())
                .filter(|n| !is_empty_net(n))
                .ok_or("FLANNEL_NETWORK")?;
            let subnet = var("FLANNEL_SUBNET")
                .and_then(parse_host_cidr)
                .ok_or("FLANNEL_SUBNET")?;
            (network, subnet)
        };
        let mtu = var("FLANNEL_MTU")
            .and_then(|v| v.parse().ok())
            .ok_or("FLANNEL_MTU")?;
        let ip_masq = var("FLANNEL_IPMASQ")
            .and_then(|v| v.parse().ok())
            .ok_or("FLANNEL_IPMASQ")?;
        // Both IPv6 lines or neither: one alone is a broken file.
        let ipv6 = match (var("FLANNEL_IPV6_NETWORK"), var("FLANNEL_IPV6_SUBNET")) {
            (None, None) => None,
            (n, sn) => Some(SubnetEnv6 {
                network: n
                    .and_then(|v| v.parse::<Subnet6>().ok())
                    .ok_or("FLANNEL_IPV6_NETWORK")?,
                subnet: sn.and_then(parse_host_cidr6).ok_or("FLANNEL_IPV6_SUBNET")?,
            }),
        };
        Ok(SubnetEnv {
            network,
            subnet,
            ipv6,
            mtu,
            ip_masq,
        })
    }
}

/// The text of the subnet.env at `path`: a regular file of at most
/// [`MAX_SUBNET_ENV_BYTES`], in UTF-8.
fn read_text(path: &Path) -> Result<String, SubnetEnvError> {
    let bytes = file::read_regular(path, MAX_SUBNET_ENV_BYTES).map_err(|e| {
        let path = path.to_path_buf();
        match e {
            FileError::Io(source) => SubnetEnvError::Io { path, source },
            FileError::NotRegular { kind } => SubnetEnvError::NotAFile { path, kind },
            FileError::TooLarge { limit } => SubnetEnvError::TooLarge { path, limit },
        }
    })?;
    String::from_utf8(bytes).map_err(|e| SubnetEnvError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })
}

/// The warnings of [`previous_var`], each logged once (again after a while if it persists:
/// the node's status reads the file every second).
static PREVIOUS_LOG: Mutex<RepeatLog> = Mutex::new(RepeatLog::new());

/// The value of `var` in the subnet.env at `path`, for asking for the same subnet again. A
/// missing file has none; one that cannot be read (not a regular file, too large,
/// unreadable) has none either, with a warning.
fn previous_var(path: &Path, var: &str) -> Option<String> {
    let text = match read_text(path) {
        Ok(t) => t,
        Err(SubnetEnvError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return None
        }
        Err(e) => {
            let msg = crate::error::Chain(&e).to_string();
            let mut log = PREVIOUS_LOG.lock().unwrap_or_else(|p| p.into_inner());
            if log.should_log(&msg) {
                tracing::warn!(error = %msg, "no previous subnet from the subnet file: the lease is any free subnet, and the file is replaced once it is written");
            }
            return None;
        }
    };
    text.lines()
        .rev()
        .filter_map(|l| l.trim().split_once('='))
        .find(|(k, _)| k.trim() == var)
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
}

/// Reads only the lease from a subnet.env (what flanneld does at start); `None` if the file
/// is missing, is not a regular file (logged) or has no usable `FLANNEL_SUBNET`.
pub fn read_previous_subnet(path: &Path) -> Option<Subnet> {
    parse_host_cidr(&previous_var(path, "FLANNEL_SUBNET")?)
}

/// Reads only the IPv6 lease from a subnet.env (flanneld reads `FLANNEL_IPV6_SUBNET` at
/// start to ask for the same IPv6 subnet again); `None` if the file is missing, is not a
/// regular file (logged) or has no usable `FLANNEL_IPV6_SUBNET`.
pub fn read_previous_ipv6_subnet(path: &Path) -> Option<Subnet6> {
    parse_host_cidr6(&previous_var(path, "FLANNEL_IPV6_SUBNET")?)
}

/// flannel's empty IPv4 net, `0.0.0.0/0`: no IPv4 half.
fn is_empty_net(n: &Subnet) -> bool {
    n.prefix_len() == 0 && n.addr().is_unspecified()
}

/// `fd10:0:0:2::1/64` -> `fd10:0:0:2::/64`.
fn parse_host_cidr6(v: &str) -> Option<Subnet6> {
    let (a, l) = v.split_once('/')?;
    if l.is_empty() || l.len() > 3 || !l.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Subnet6::containing(a.parse::<Ipv6Addr>().ok()?, l.parse().ok()?).ok()
}

/// `10.1.2.1/24` -> `10.1.2.0/24`.
fn parse_host_cidr(v: &str) -> Option<Subnet> {
    let (a, l) = v.split_once('/')?;
    Subnet::containing(a.parse::<Ipv4Addr>().ok()?, l.parse().ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> SubnetEnv {
        SubnetEnv {
            network: "10.1.0.0/16".parse().unwrap(),
            subnet: "10.1.2.0/24".parse().unwrap(),
            ipv6: None,
            mtu: 1450,
            ip_masq: true,
        }
    }

    fn dual() -> SubnetEnv {
        SubnetEnv {
            ipv6: Some(SubnetEnv6 {
                network: "fd10::/48".parse().unwrap(),
                subnet: "fd10:0:0:2::/64".parse().unwrap(),
            }),
            ..env()
        }
    }

    #[test]
    fn dual_stack_render_is_flanneld_order() {
        assert_eq!(
            dual().render(),
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.2.1/24\n\
             FLANNEL_IPV6_NETWORK=fd10::/48\nFLANNEL_IPV6_SUBNET=fd10:0:0:2::1/64\n\
             FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        assert_eq!(SubnetEnv::parse(&dual().render()), Ok(dual()));
    }

    #[test]
    fn dual_stack_round_trip_and_previous_ipv6_subnet() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subnet.env");
        dual().write(&path).unwrap();
        assert_eq!(SubnetEnv::read(&path).unwrap(), dual());
        assert_eq!(
            read_previous_ipv6_subnet(&path),
            Some("fd10:0:0:2::/64".parse().unwrap())
        );
        assert_eq!(read_previous_subnet(&path), Some(env().subnet));
        env().write(&path).unwrap();
        assert_eq!(read_previous_ipv6_subnet(&path), None);
        assert_eq!(
            read_previous_ipv6_subnet(Path::new("/nonexistent/subnet.env")),
            None
        );
    }

    #[test]
    fn ipv6_lines_are_both_or_neither() {
        let base = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.2.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
        assert_eq!(SubnetEnv::parse(base), Ok(env()));
        let with = |extra: &str| SubnetEnv::parse(&format!("{base}{extra}"));
        assert_eq!(
            with("FLANNEL_IPV6_NETWORK=fd10::/48\n"),
            Err("FLANNEL_IPV6_SUBNET")
        );
        assert_eq!(
            with("FLANNEL_IPV6_SUBNET=fd10:0:0:2::1/64\n"),
            Err("FLANNEL_IPV6_NETWORK")
        );
        assert_eq!(
            with("FLANNEL_IPV6_NETWORK=fd10::/48\nFLANNEL_IPV6_SUBNET=10.1.2.1/24\n"),
            Err("FLANNEL_IPV6_SUBNET")
        );
        assert_eq!(
            with("FLANNEL_IPV6_NETWORK=fd10::1/48\nFLANNEL_IPV6_SUBNET=fd10:0:0:2::1/64\n"),
            Err("FLANNEL_IPV6_NETWORK")
        );
        // Order does not matter when reading; quotes are tolerated as for IPv4.
        let e = with("FLANNEL_IPV6_SUBNET=\"fd10:0:0:2::1/64\"\nFLANNEL_IPV6_NETWORK=fd10::/48\n");
        assert_eq!(e, Ok(dual()));
    }

    #[test]
    fn render_is_flannels_format() {
        assert_eq!(
            env().render(),
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.2.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
    }

    #[test]
    fn write_read_round_trip_and_replace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/flannel/subnet.env");
        env().write(&path).unwrap();
        assert_eq!(SubnetEnv::read(&path).unwrap(), env());
        let mut e2 = env();
        e2.subnet = "10.1.9.0/24".parse().unwrap();
        e2.ip_masq = false;
        e2.write(&path).unwrap();
        assert_eq!(SubnetEnv::read(&path).unwrap(), e2);
        assert_eq!(read_previous_subnet(&path), Some(e2.subnet));
        // No temporary files left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn parse_errors_name_the_variable() {
        assert_eq!(SubnetEnv::parse(""), Err("FLANNEL_NETWORK"));
        assert_eq!(
            SubnetEnv::parse("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=x\n"),
            Err("FLANNEL_SUBNET")
        );
        assert_eq!(
            read_previous_subnet(Path::new("/nonexistent/subnet.env")),
            None
        );
        let e = SubnetEnv::read(Path::new("/nonexistent/subnet.env")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/subnet.env"));
    }

    /// `f(path)` on another thread; fails the test if it takes over 2 s (a FIFO open that
    /// waits for a writer, a read of /dev/zero that never ends).
    fn within_2s<T: Send + 'static>(path: &Path, f: impl FnOnce(&Path) -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        let path = path.to_path_buf();
        std::thread::spawn(move || {
            let _ = tx.send(f(&path));
        });
        rx.recv_timeout(std::time::Duration::from_secs(2))
            .expect("reading the subnet file did not return within 2 s")
    }

    #[test]
    fn a_fifo_or_a_device_is_never_read_and_the_write_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("subnet.env");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert_eq!(within_2s(&fifo, read_previous_subnet), None);
        assert_eq!(within_2s(&fifo, read_previous_ipv6_subnet), None);
        let e = within_2s(&fifo, SubnetEnv::read).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "subnet file {} is a FIFO, not a regular file: remove it, or point -subnet-file at a regular file",
                fifo.display()
            )
        );
        // The lease's file replaces the FIFO.
        env().write(&fifo).unwrap();
        assert_eq!(SubnetEnv::read(&fifo).unwrap(), env());

        let zero = dir.path().join("zero.env");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert_eq!(within_2s(&zero, read_previous_subnet), None);
        let e = within_2s(&zero, SubnetEnv::read).unwrap_err();
        assert!(
            matches!(
                e,
                SubnetEnvError::NotAFile {
                    kind: "character device",
                    ..
                }
            ),
            "{e}"
        );
        // The link is replaced; /dev/zero is untouched.
        env().write(&zero).unwrap();
        assert!(std::fs::symlink_metadata(&zero).unwrap().is_file());
        assert_eq!(read_previous_subnet(&zero), Some(env().subnet));

        // A huge regular file is read up to the bound only.
        let big = dir.path().join("big.env");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_SUBNET_ENV_BYTES + 1).unwrap();
        let e = SubnetEnv::read(&big).unwrap_err();
        assert!(matches!(e, SubnetEnvError::TooLarge { .. }), "{e}");
        assert_eq!(read_previous_subnet(&big), None);

        // A directory is neither read nor replaced.
        let sub = dir.path().join("dir.env");
        std::fs::create_dir(&sub).unwrap();
        let e = env().write(&sub).unwrap_err();
        assert!(
            e.to_string().contains("is a directory, not a regular file"),
            "{e}"
        );
        assert!(sub.is_dir());
    }

    fn v6_only() -> SubnetEnv {
        let empty: Subnet = "0.0.0.0/0".parse().unwrap();
        SubnetEnv {
            network: empty,
            subnet: empty,
            ..dual()
        }
    }

    #[test]
    fn ipv6_only_has_no_ipv4_lines() {
        let text = "FLANNEL_IPV6_NETWORK=fd10::/48\nFLANNEL_IPV6_SUBNET=fd10:0:0:2::1/64\n\
                    FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
        assert_eq!(v6_only().render(), text);
        assert_eq!(SubnetEnv::parse(text), Ok(v6_only()));
        assert!(v6_only().is_ipv6_only());
        assert_eq!((v6_only().subnet4(), v6_only().network4()), (None, None));
        assert!(!dual().is_ipv6_only() && !env().is_ipv6_only());
        assert_eq!(dual().subnet4(), Some(env().subnet));
        assert_eq!(env().network4(), Some(env().network));
        // The previous subnets of an IPv6-only file: only the IPv6 one.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subnet.env");
        v6_only().write(&path).unwrap();
        assert_eq!(SubnetEnv::read(&path).unwrap(), v6_only());
        assert_eq!(read_previous_subnet(&path), None);
        assert_eq!(
            read_previous_ipv6_subnet(&path),
            Some("fd10:0:0:2::/64".parse().unwrap())
        );
        // One IPv4 line alone, or no line of either family, is still a broken file.
        let half = format!("FLANNEL_NETWORK=10.1.0.0/16\n{text}");
        assert_eq!(SubnetEnv::parse(&half), Err("FLANNEL_SUBNET"));
        let half = format!("FLANNEL_SUBNET=10.1.2.1/24\n{text}");
        assert_eq!(SubnetEnv::parse(&half), Err("FLANNEL_NETWORK"));
        assert_eq!(
            SubnetEnv::parse("FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"),
            Err("FLANNEL_NETWORK")
        );
        let zero = format!("FLANNEL_NETWORK=0.0.0.0/0\nFLANNEL_SUBNET=0.0.0.1/0\n{text}");
        assert_eq!(SubnetEnv::parse(&zero), Err("FLANNEL_NETWORK"));
    }
}
