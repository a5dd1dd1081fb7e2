//! flanneld's command-line flags that weft shares, with flanneld's names and defaults.
//!
//! Each flag can also be set through the environment as `FLANNELD_<FLAG_UPPER_SNAKE>`
//! (`--etcd-endpoints` -> `FLANNELD_ETCD_ENDPOINTS`), as flanneld allows. Go's flag package
//! also accepts a single dash (`-etcd-prefix=/x`); [`normalize_go_flags`] rewrites those so
//! existing unit files keep working. These are `clap::Args` groups; `main` flattens them.

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::store::{EtcdOptions, DEFAULT_PREFIX};

/// The etcd flags (`--etcd-*`).
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct EtcdArgs {
    /// A comma-delimited list of etcd endpoints.
    #[arg(
        long = "etcd-endpoints",
        env = "FLANNELD_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:4001,http://127.0.0.1:2379"
    )]
    pub etcd_endpoints: Vec<String>,

    /// etcd prefix.
    #[arg(long = "etcd-prefix", env = "FLANNELD_ETCD_PREFIX", default_value = DEFAULT_PREFIX)]
    pub etcd_prefix: String,

    /// SSL key file used to secure etcd communication.
    #[arg(long = "etcd-keyfile", env = "FLANNELD_ETCD_KEYFILE")]
    pub etcd_keyfile: Option<PathBuf>,

    /// SSL certification file used to secure etcd communication.
    #[arg(long = "etcd-certfile", env = "FLANNELD_ETCD_CERTFILE")]
    pub etcd_certfile: Option<PathBuf>,

    /// SSL Certificate Authority file used to secure etcd communication.
    #[arg(long = "etcd-cafile", env = "FLANNELD_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,

    /// Username for BasicAuth to etcd.
    #[arg(long = "etcd-username", env = "FLANNELD_ETCD_USERNAME")]
    pub etcd_username: Option<String>,

    /// Password for BasicAuth to etcd.
    #[arg(
        long = "etcd-password",
        env = "FLANNELD_ETCD_PASSWORD",
        hide_env_values = true
    )]
    pub etcd_password: Option<String>,
}

impl EtcdArgs {
    /// The store's view of these flags. Empty strings count as "not given", as in flanneld.
    pub fn to_options(&self) -> EtcdOptions {
        let path = |p: &Option<PathBuf>| p.clone().filter(|p| !p.as_os_str().is_empty());
        let text = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        EtcdOptions {
            endpoints: self
                .etcd_endpoints
                .iter()
                .map(|e| e.trim().to_string())
                .filter(|e| !e.is_empty())
                .collect(),
            prefix: self.etcd_prefix.clone(),
            keyfile: path(&self.etcd_keyfile),
            certfile: path(&self.etcd_certfile),
            cafile: path(&self.etcd_cafile),
            username: text(&self.etcd_username),
            password: text(&self.etcd_password),
        }
    }
}

/// The node flags the store uses: identity, subnet file, lease renewal.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct NodeArgs {
    /// IP accessible by other nodes for inter-host communication.
    #[arg(long = "public-ip", env = "FLANNELD_PUBLIC_IP")]
    pub public_ip: Option<Ipv4Addr>,

    /// Interface to use (IP or name) for inter-host communication; repeat to try several.
    #[arg(long = "iface", env = "FLANNELD_IFACE", value_delimiter = ',')]
    pub iface: Vec<String>,

    /// Filename where env variables (subnet, MTU, ...) will be written to.
    #[arg(
        long = "subnet-file",
        env = "FLANNELD_SUBNET_FILE",
        default_value = "/run/flannel/subnet.env"
    )]
    pub subnet_file: PathBuf,

    /// Subnet lease renewal margin, in minutes, ranging from 1 to 1439.
    #[arg(
        long = "subnet-lease-renew-margin",
        env = "FLANNELD_SUBNET_LEASE_RENEW_MARGIN",
        default_value_t = 60,
        value_parser = clap::value_parser!(u32).range(1..=1439)
    )]
    pub subnet_lease_renew_margin: u32,

    /// Masquerade pod traffic leaving the overlay (flannel's FLANNEL-POSTRTG/FLANNEL-FWD
    /// iptables rules, resynced every 10 s); also written to subnet.env as FLANNEL_IPMASQ.
    #[arg(
        long = "ip-masq",
        env = "FLANNELD_IP_MASQ",
        num_args = 0..=1,
        default_value_t = false,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub ip_masq: bool,
}

impl NodeArgs {
    /// `--subnet-lease-renew-margin` as a duration.
    pub fn renew_margin(&self) -> Duration {
        Duration::from_secs(u64::from(self.subnet_lease_renew_margin) * 60)
    }
}

/// Every long flag defined here, for [`normalize_go_flags`].
const LONG_FLAGS: &[&str] = &[
    "etcd-endpoints",
    "etcd-prefix",
    "etcd-keyfile",
    "etcd-certfile",
    "etcd-cafile",
    "etcd-username",
    "etcd-password",
    "public-ip",
    "iface",
    "subnet-file",
    "subnet-lease-renew-margin",
    "ip-masq",
];

/// Rewrites Go-style single-dash long flags (`-etcd-prefix=/x`, `-iface eth0`) into clap's
/// `--` form, for the flags in this module and for `extra` names (other modules' flags).
pub fn normalize_go_flags<I>(args: I, extra: &[&str]) -> Vec<OsString>
where
    I: IntoIterator<Item = OsString>,
{
    let mut out = Vec::new();
    let mut passthrough = false;
    for a in args {
        if passthrough {
            out.push(a);
            continue;
        }
        if a == "--" {
            passthrough = true;
            out.push(a);
            continue;
        }
        let rewritten = a.to_str().and_then(|s| {
            let body = s.strip_prefix('-')?;
            if body.starts_with('-') {
                return None;
            }
            let name = body.split('=').next()?;
            let known = LONG_FLAGS.contains(&name) || extra.contains(&name);
            known.then(|| OsString::from(format!("-{s}")))
        });
        out.push(rewritten.unwrap_or(a));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        etcd: EtcdArgs,
        #[command(flatten)]
        node: NodeArgs,
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("weft").chain(args.iter().copied()))
    }

    /// All parsing sits in one test: the environment is process-wide.
    #[test]
    fn flags_defaults_env_and_go_style() {
        for (k, _) in std::env::vars() {
            if k.starts_with("FLANNELD_") {
                std::env::remove_var(k);
            }
        }
        let c = parse(&[]).unwrap();
        assert_eq!(
            c.etcd.etcd_endpoints,
            ["http://127.0.0.1:4001", "http://127.0.0.1:2379"]
        );
        assert_eq!(c.etcd.etcd_prefix, "/coreos.com/network");
        assert_eq!(c.etcd.etcd_keyfile, None);
        assert_eq!(c.node.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
        assert_eq!(c.node.subnet_lease_renew_margin, 60);
        assert_eq!(c.node.renew_margin(), Duration::from_secs(3600));
        assert_eq!(c.node.public_ip, None);
        assert!(c.node.iface.is_empty());
        assert!(!c.node.ip_masq);

        let c = parse(&[
            "--etcd-endpoints=https://10.0.0.1:2379,https://10.0.0.2:2379",
            "--etcd-prefix",
            "/weft/net",
            "--etcd-keyfile=/k.pem",
            "--etcd-certfile=/c.pem",
            "--etcd-cafile=/ca.pem",
            "--etcd-username=u",
            "--etcd-password=p",
            "--public-ip=192.168.64.3",
            "--iface=eth0",
            "--iface",
            "10.0.0.9",
            "--subnet-file=/tmp/s.env",
            "--subnet-lease-renew-margin=1439",
            "--ip-masq",
        ])
        .unwrap();
        let o = c.etcd.to_options();
        assert_eq!(
            o.endpoints,
            ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
        );
        assert_eq!(o.prefix, "/weft/net");
        assert_eq!(o.keyfile, Some(PathBuf::from("/k.pem")));
        assert_eq!(o.certfile, Some(PathBuf::from("/c.pem")));
        assert_eq!(o.cafile, Some(PathBuf::from("/ca.pem")));
        assert_eq!(o.username.as_deref(), Some("u"));
        assert_eq!(o.password.as_deref(), Some("p"));
        assert_eq!(c.node.public_ip, Some(Ipv4Addr::new(192, 168, 64, 3)));
        assert_eq!(c.node.iface, ["eth0", "10.0.0.9"]);
        assert_eq!(c.node.subnet_lease_renew_margin, 1439);
        assert!(c.node.ip_masq);
        assert!(!parse(&["--ip-masq=false"]).unwrap().node.ip_masq);

        for bad in [
            "--subnet-lease-renew-margin=0",
            "--subnet-lease-renew-margin=1440",
            "--public-ip=fc00::1",
            "--public-ip=eth0",
        ] {
            assert!(parse(&[bad]).is_err(), "{bad}");
        }

        std::env::set_var("FLANNELD_ETCD_ENDPOINTS", "http://a:1,http://b:2");
        std::env::set_var("FLANNELD_ETCD_PREFIX", "/env/prefix");
        std::env::set_var("FLANNELD_PUBLIC_IP", "10.9.8.7");
        std::env::set_var("FLANNELD_IFACE", "eth1,eth2");
        std::env::set_var("FLANNELD_SUBNET_FILE", "/env/subnet.env");
        std::env::set_var("FLANNELD_SUBNET_LEASE_RENEW_MARGIN", "5");
        std::env::set_var("FLANNELD_ETCD_CAFILE", "/env/ca.pem");
        std::env::set_var("FLANNELD_IP_MASQ", "true");
        let c = parse(&[]).unwrap();
        assert_eq!(c.etcd.etcd_endpoints, ["http://a:1", "http://b:2"]);
        assert_eq!(c.etcd.etcd_prefix, "/env/prefix");
        assert_eq!(c.node.public_ip, Some(Ipv4Addr::new(10, 9, 8, 7)));
        assert_eq!(c.node.iface, ["eth1", "eth2"]);
        assert_eq!(c.node.subnet_file, PathBuf::from("/env/subnet.env"));
        assert_eq!(c.node.subnet_lease_renew_margin, 5);
        assert_eq!(c.etcd.etcd_cafile, Some(PathBuf::from("/env/ca.pem")));
        assert!(c.node.ip_masq);
        // A flag beats the environment.
        let c = parse(&["--etcd-prefix=/flag"]).unwrap();
        assert_eq!(c.etcd.etcd_prefix, "/flag");
        for (k, _) in std::env::vars() {
            if k.starts_with("FLANNELD_") {
                std::env::remove_var(k);
            }
        }

        let go = normalize_go_flags(
            [
                "weft",
                "-etcd-prefix=/go",
                "-iface",
                "eth0",
                "-v",
                "-healthz-port=1",
                "--public-ip=1.2.3.4",
                "--",
                "-iface",
            ]
            .map(OsString::from),
            &["healthz-port"],
        );
        assert_eq!(
            go,
            [
                "weft",
                "--etcd-prefix=/go",
                "--iface",
                "eth0",
                "-v",
                "--healthz-port=1",
                "--public-ip=1.2.3.4",
                "--",
                "-iface"
            ]
            .map(OsString::from)
        );
        let c = Cli::try_parse_from(normalize_go_flags(
            ["weft", "-etcd-prefix=/go", "-ip-masq"].map(OsString::from),
            &[],
        ))
        .unwrap();
        assert_eq!(c.etcd.etcd_prefix, "/go");
        assert!(c.node.ip_masq);
    }

    #[test]
    fn empty_strings_mean_not_given() {
        let a = EtcdArgs {
            etcd_endpoints: vec![" http://x:1 ".into(), "".into()],
            etcd_prefix: "/p".into(),
            etcd_keyfile: Some(PathBuf::new()),
            etcd_certfile: None,
            etcd_cafile: None,
            etcd_username: Some(String::new()),
            etcd_password: None,
        };
        let o = a.to_options();
        assert_eq!(o.endpoints, ["http://x:1"]);
        assert_eq!(o.keyfile, None);
        assert_eq!(o.username, None);
    }
}
