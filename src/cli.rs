//! flanneld's command-line flags that weft shares, with flanneld's names and defaults.
//!
//! Each flag can also be set through the environment as `FLANNELD_<FLAG_UPPER_SNAKE>`
//! (`--etcd-endpoints` -> `FLANNELD_ETCD_ENDPOINTS`), as flanneld allows. Go's flag package
//! also accepts a single dash (`-etcd-prefix=/x`); [`normalize_go_flags`] rewrites those so
//! existing unit files keep working. These are `clap::Args` groups; the subcommands in
//! [`commands`] flatten them.

pub mod commands;

use std::ffi::OsString;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::config::DEFAULT_SUBNET_FILE;
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

    /// IPv6 address accessible by other nodes for inter-host communication (dual stack);
    /// default: the interface's global IPv6 address.
    #[arg(long = "public-ipv6", env = "FLANNELD_PUBLIC_IPV6")]
    pub public_ipv6: Option<Ipv6Addr>,

    /// Interface to use (IP or name) for inter-host communication; repeat to try several.
    #[arg(long = "iface", env = "FLANNELD_IFACE", value_delimiter = ',')]
    pub iface: Vec<String>,

    /// Regex of the interface (its IP, then its name) to use; repeat to try several in order.
    /// Used when no -iface is given.
    #[arg(
        long = "iface-regex",
        env = "FLANNELD_IFACE_REGEX",
        value_delimiter = ','
    )]
    pub iface_regex: Vec<String>,

    /// Use the interface that routes to this IPv4 address (when neither -iface nor
    /// -iface-regex is given).
    #[arg(long = "iface-can-reach", env = "FLANNELD_IFACE_CAN_REACH")]
    pub iface_can_reach: Option<Ipv4Addr>,

    /// Filename where env variables (subnet, MTU, ...) will be written to.
    #[arg(
        long = "subnet-file",
        env = "FLANNELD_SUBNET_FILE",
        default_value = DEFAULT_SUBNET_FILE
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

    /// Masquerade pod traffic leaving the overlay (flannel's FLANNEL-POSTRTG iptables rules,
    /// resynced every -iptables-resync seconds); also written to subnet.env as FLANNEL_IPMASQ.
    #[arg(
        long = "ip-masq",
        env = "FLANNELD_IP_MASQ",
        num_args = 0..=1,
        default_value_t = false,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub ip_masq: bool,

    /// Seconds between rewrites of the iptables rules (masquerade and forward), so a flushed
    /// chain comes back.
    #[arg(
        long = "iptables-resync",
        env = "FLANNELD_IPTABLES_RESYNC",
        default_value_t = 5,
        value_parser = clap::value_parser!(u32).range(1..=86400)
    )]
    pub iptables_resync: u32,

    /// Add FLANNEL-FWD rules accepting the Network in FORWARD (independent of -ip-masq), so
    /// pod traffic crosses hosts whose FORWARD policy is DROP (docker's default).
    #[arg(
        long = "iptables-forward-rules",
        env = "FLANNELD_IPTABLES_FORWARD_RULES",
        num_args = 0..=1,
        default_value_t = true,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub iptables_forward_rules: bool,
}

/// flanneld's glog flags: accepted so a flanneld command line runs unchanged. weft's log
/// verbosity is `-v`; these have no effect (said once at start when set).
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct GlogArgs {
    /// glog's per-module verbosity (accepted, no effect: use -v or RUST_LOG).
    #[arg(long = "vmodule", env = "FLANNELD_VMODULE")]
    pub vmodule: Option<String>,
    /// glog's `file:line` to log a backtrace at (accepted, no effect).
    #[arg(long = "log_backtrace_at", env = "FLANNELD_LOG_BACKTRACE_AT")]
    pub log_backtrace_at: Option<String>,
}

impl GlogArgs {
    /// The glog flags that were given, by name (they have no effect in weft).
    pub fn given(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.vmodule.as_deref().is_some_and(|s| !s.is_empty()) {
            v.push("-vmodule");
        }
        if self
            .log_backtrace_at
            .as_deref()
            .is_some_and(|s| !s.is_empty() && s != ":0")
        {
            v.push("-log_backtrace_at");
        }
        v
    }
}

/// flanneld's kube-subnet-manager flags: weft keeps leases in etcd only, so any of them is
/// refused with one clear sentence instead of a parse error.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct KubeArgs {
    /// Kubernetes subnet manager (not supported: weft uses etcd).
    #[arg(long = "kube-subnet-mgr", env = "FLANNELD_KUBE_SUBNET_MGR", num_args = 0..=1, default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set, hide = true)]
    pub kube_subnet_mgr: bool,
    /// Kubernetes API server URL (not supported).
    #[arg(long = "kube-api-url", env = "FLANNELD_KUBE_API_URL", hide = true)]
    pub kube_api_url: Option<String>,
    /// kubeconfig file (not supported).
    #[arg(
        long = "kubeconfig-file",
        env = "FLANNELD_KUBECONFIG_FILE",
        hide = true
    )]
    pub kubeconfig_file: Option<String>,
    /// Node annotation prefix (not supported).
    #[arg(
        long = "kube-annotation-prefix",
        env = "FLANNELD_KUBE_ANNOTATION_PREFIX",
        hide = true
    )]
    pub kube_annotation_prefix: Option<String>,
    /// Network config path for the kube subnet manager (not supported).
    #[arg(
        long = "net-config-path",
        env = "FLANNELD_NET_CONFIG_PATH",
        hide = true
    )]
    pub net_config_path: Option<String>,
    /// Set the node's NetworkUnavailable condition (not supported).
    #[arg(long = "set-node-network-unavailable", env = "FLANNELD_SET_NODE_NETWORK_UNAVAILABLE", num_args = 0..=1, default_missing_value = "true", hide = true)]
    pub set_node_network_unavailable: Option<String>,
}

impl KubeArgs {
    /// The kube-mode flags that were given, by name.
    pub fn given(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.kube_subnet_mgr {
            v.push("-kube-subnet-mgr");
        }
        for (name, val) in [
            ("-kube-api-url", &self.kube_api_url),
            ("-kubeconfig-file", &self.kubeconfig_file),
            ("-kube-annotation-prefix", &self.kube_annotation_prefix),
            ("-net-config-path", &self.net_config_path),
            (
                "-set-node-network-unavailable",
                &self.set_node_network_unavailable,
            ),
        ] {
            if val.as_deref().is_some_and(|s| !s.is_empty()) {
                v.push(name);
            }
        }
        v
    }
}

impl NodeArgs {
    /// `--subnet-lease-renew-margin` as a duration.
    pub fn renew_margin(&self) -> Duration {
        Duration::from_secs(u64::from(self.subnet_lease_renew_margin) * 60)
    }
}

/// A command-line word Go's flag package would read as a flag but weft does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown flag {0}: weft takes flanneld's etcd-mode flags (see `weft run --help`)")]
pub struct UnknownFlag(pub String);

/// Rewrites Go-style single-dash long flags (`-etcd-prefix=/x`, `-iface eth0`,
/// `-log_backtrace_at=:0`) into clap's `--` form. `known` are the long names clap knows (take
/// them from the command definition); a single-dash word with a longer name that is not among
/// them is an [`UnknownFlag`], named as typed. One-letter flags (`-v=2`, `-h`) and everything
/// after `--` pass unchanged.
pub fn normalize_go_flags<I>(args: I, known: &[String]) -> Result<Vec<OsString>, UnknownFlag>
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
        let Some(s) = a.to_str() else {
            out.push(a);
            continue;
        };
        let name = s
            .strip_prefix('-')
            .filter(|b| !b.starts_with('-'))
            .and_then(|b| b.split('=').next())
            .filter(|n| n.len() > 1 && n.starts_with(|c: char| c.is_ascii_alphabetic()));
        match name {
            Some(n) if known.iter().any(|k| k == n) => out.push(OsString::from(format!("-{s}"))),
            Some(_) => return Err(UnknownFlag(s.split('=').next().unwrap_or(s).to_string())),
            None => out.push(a),
        }
    }
    Ok(out)
}

/// Every long flag name of `cmd` and its subcommands, for [`normalize_go_flags`].
pub fn long_flag_names(cmd: &clap::Command) -> Vec<String> {
    let mut names: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .chain(["help".to_string(), "version".to_string()])
        .collect();
    for sub in cmd.get_subcommands() {
        names.extend(long_flag_names(sub));
    }
    names.sort();
    names.dedup();
    names
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
        #[command(flatten)]
        glog: GlogArgs,
        #[command(flatten)]
        kube: KubeArgs,
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
        assert_eq!(c.node.iptables_resync, 5);
        assert!(c.node.iptables_forward_rules);
        assert!(c.node.iface_regex.is_empty());
        assert_eq!(c.node.iface_can_reach, None);
        assert_eq!(c.node.public_ipv6, None);
        assert!(c.kube.given().is_empty() && c.glog.given().is_empty());

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
            "--iface-regex=^eth",
            "--iface-regex",
            "^ens",
            "--iface-can-reach=192.168.64.2",
            "--public-ipv6=fd77::3",
            "--iptables-resync=7",
            "--iptables-forward-rules=false",
            "--kube-subnet-mgr",
        ])
        .unwrap();
        assert_eq!(c.node.iface_regex, ["^eth", "^ens"]);
        assert_eq!(c.node.iface_can_reach, Some(Ipv4Addr::new(192, 168, 64, 2)));
        assert_eq!(c.node.public_ipv6, Some("fd77::3".parse().unwrap()));
        assert_eq!(c.node.iptables_resync, 7);
        assert!(!c.node.iptables_forward_rules);
        assert_eq!(c.kube.given(), ["-kube-subnet-mgr"]);
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
        std::env::set_var("FLANNELD_IFACE_REGEX", "^eth,^ens");
        std::env::set_var("FLANNELD_IPTABLES_RESYNC", "9");
        std::env::set_var("FLANNELD_IPTABLES_FORWARD_RULES", "false");
        std::env::set_var("FLANNELD_IFACE_CAN_REACH", "10.9.8.1");
        std::env::set_var("FLANNELD_PUBLIC_IPV6", "fd77::9");
        let c = parse(&[]).unwrap();
        assert_eq!(c.node.iface_regex, ["^eth", "^ens"]);
        assert_eq!(c.node.iptables_resync, 9);
        assert!(!c.node.iptables_forward_rules);
        assert_eq!(c.node.iface_can_reach, Some(Ipv4Addr::new(10, 9, 8, 1)));
        assert_eq!(c.node.public_ipv6, Some("fd77::9".parse().unwrap()));
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

        use clap::CommandFactory;
        let mut known = long_flag_names(&Cli::command());
        known.push("healthz-port".into());
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
            &known,
        )
        .unwrap();
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
        let c = Cli::try_parse_from(
            normalize_go_flags(
                ["weft", "-etcd-prefix=/go", "-ip-masq", "-vmodule=x=2"].map(OsString::from),
                &known,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(c.etcd.etcd_prefix, "/go");
        assert!(c.node.ip_masq);
        assert_eq!(c.glog.given(), ["-vmodule"]);
        // An unknown single-dash flag is named whole, as typed.
        let e = normalize_go_flags(["weft", "-iface-regexp=eth"].map(OsString::from), &known)
            .unwrap_err();
        assert_eq!(e.0, "-iface-regexp");
        assert!(e.to_string().contains("unknown flag -iface-regexp"));
    }

    /// The flag names `given()` reports are the groups' own clap flags, every one of them.
    #[test]
    fn given_names_are_the_clap_flags() {
        let longs = |cmd: clap::Command| {
            let mut v: Vec<String> = cmd
                .get_arguments()
                .filter_map(|a| a.get_long().map(|l| format!("-{l}")))
                .collect();
            v.sort();
            v
        };
        let set = Some("x".to_string());
        let kube = KubeArgs {
            kube_subnet_mgr: true,
            kube_api_url: set.clone(),
            kubeconfig_file: set.clone(),
            kube_annotation_prefix: set.clone(),
            net_config_path: set.clone(),
            set_node_network_unavailable: set.clone(),
        };
        let mut given = kube.given();
        given.sort();
        assert_eq!(
            given,
            longs(KubeArgs::augment_args(clap::Command::new("t")))
        );
        let glog = GlogArgs {
            vmodule: set,
            log_backtrace_at: Some("main.go:1".into()),
        };
        let mut given = glog.given();
        given.sort();
        assert_eq!(
            given,
            longs(GlogArgs::augment_args(clap::Command::new("t")))
        );
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
