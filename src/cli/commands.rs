//! The `weft` command line: the subcommands and their flags (clap), and what each turns into
//! for the library (`weft run`'s [`NodeOptions`], `weft doctor`'s [`DoctorRequest`], ...).
//! The flanneld flag groups they share are in the parent module; `main` parses, sets up
//! logging and dispatches.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use super::{EtcdArgs, GlogArgs, KubeArgs, NodeArgs};
use crate::config::{BackendType, DEFAULT_TUN_NAME};
use crate::dataplane::DatapathOptions;
use crate::encap::inspect::Receiver;
use crate::host::doctor::DoctorRequest;
use crate::host::UnderlaySpec;
use crate::node::NodeOptions;
use crate::wire::vxlan::VniRangeError;
use crate::wire::{EthernetAddress, Vni};

/// weft: a userspace VXLAN overlay router, compatible with flannel.
#[derive(Debug, Parser)]
#[command(name = "weft", version, about, long_about = None)]
pub struct Cli {
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// weft's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the node service: takes a subnet lease in etcd, configures the TUN device and
    /// carries pod traffic to and from the other nodes until SIGTERM. Takes flanneld's flags.
    Run(Box<RunArgs>),
    /// Shows the running node's lease, its lease table, etcd and data-path state. Without
    /// flags it asks the weft running in this network namespace over its instance socket (no
    /// port needed); --healthz-port asks a node's ops port instead.
    Status(StatusArgs),
    /// Checks this host for what breaks an overlay (ip_forward, rp_filter, FORWARD policy, the
    /// docker masquerade pitfall, bridge netfilter, MTUs) and prints each finding with its fix.
    /// Exits 1 when something is broken.
    Doctor(Box<DoctorArgs>),
    /// Decodes one tunnel payload (hex, e.g. from `tcpdump -x`) and says whether weft's
    /// receive checks would accept it, and if not, the drop reason.
    Inspect(InspectArgs),
}

/// `weft run`'s flags: flanneld's, then weft's own.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The etcd flags.
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// The node flags.
    #[command(flatten)]
    pub node: NodeArgs,
    /// glog's flags (accepted, no effect).
    #[command(flatten)]
    pub glog: GlogArgs,
    /// The kube subnet manager's flags (refused).
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Print the version and exit (flanneld's -version).
    #[arg(long = "version")]
    pub version: bool,
    /// Name of the TUN device weft creates.
    #[arg(long = "tun-name", env = "WEFT_TUN_NAME", default_value = DEFAULT_TUN_NAME)]
    pub tun_name: String,
    /// Address to serve /healthz on (with --healthz-port).
    #[arg(
        long = "healthz-ip",
        env = "FLANNELD_HEALTHZ_IP",
        default_value = "0.0.0.0"
    )]
    pub healthz_ip: IpAddr,
    /// Port to serve /healthz on; 0 disables it (flanneld's default).
    #[arg(
        long = "healthz-port",
        env = "FLANNELD_HEALTHZ_PORT",
        default_value_t = 0
    )]
    pub healthz_port: u16,
    /// Packets per I/O batch (recvmmsg/sendmmsg, TUN reads per wake-up).
    #[arg(long = "batch-size", env = "WEFT_BATCH_SIZE", default_value_t = crate::buf::BATCH_SIZE as u16,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub batch_size: u16,
    /// Keep the TUN device and its route when weft exits, so a restart does not let pod
    /// traffic leak to the default route meanwhile (the next start takes the device back).
    #[arg(long = "persist-tun", env = "WEFT_PERSIST_TUN", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub persist_tun: bool,
    /// Rewrite docker-style `-s <pod subnet> -j MASQUERADE` rules so they spare the overlay
    /// (`! -d <Network>`); without it weft only warns about them.
    #[arg(long = "fix-masquerade", env = "WEFT_FIX_MASQUERADE", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub fix_masquerade: bool,
    /// Let the TUN hand over 64 KiB TCP super-packets, segmented in userspace (TSO).
    #[arg(long = "tun-offload", env = "WEFT_TUN_OFFLOAD", default_value_t = true, action = clap::ArgAction::Set)]
    pub tun_offload: bool,
    /// Send each segmented super-packet as one UDP_SEGMENT message (UDP GSO).
    #[arg(long = "udp-gso", env = "WEFT_UDP_GSO", default_value_t = true, action = clap::ArgAction::Set)]
    pub udp_gso: bool,
    /// Receive datagram trains (UDP_GRO) and coalesce TCP segments for the TUN.
    #[arg(long = "udp-gro", env = "WEFT_UDP_GRO", default_value_t = true, action = clap::ArgAction::Set)]
    pub udp_gro: bool,
    /// Seconds between full reconciles of the direct routes (host-gw, vxlan DirectRouting), so
    /// a route removed by hand comes back.
    #[arg(long = "route-resync-secs", env = "WEFT_ROUTE_RESYNC_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=86400))]
    pub route_resync_secs: u32,
    /// Data-path workers, each with its own TUN queue (IFF_MULTI_QUEUE) and tunnel socket
    /// (SO_REUSEPORT); 0 gives every CPU one data-path thread: CPUs / threads per worker
    /// (at least 1, at most 16).
    #[arg(long = "workers", env = "WEFT_WORKERS", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=16))]
    pub workers: u16,
    /// Outer UDP source ports (send sockets) that flows are hashed over; 0 picks four per
    /// worker.
    #[arg(long = "source-ports", env = "WEFT_SOURCE_PORTS", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=64))]
    pub source_ports: u16,
    /// Threads per worker: 2 (a send and a receive thread: more throughput) or 1 (both
    /// directions on one thread: a wake-up less per request and reply, lower latency).
    #[arg(long = "threads-per-worker", env = "WEFT_THREADS_PER_WORKER", default_value_t = 2,
          value_parser = clap::value_parser!(u8).range(1..=2))]
    pub threads_per_worker: u8,
    /// Pin worker i to CPU i and steer each packet (TUN queue and socket) to the worker of
    /// the CPU handling it, so waking a worker is a local context switch (needs CAP_BPF).
    #[arg(long = "steer-by-cpu", env = "WEFT_STEER_BY_CPU", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub steer_by_cpu: bool,
    /// Where to keep the node's last good state (config, own lease, lease table), so that a
    /// restart forwards at once, before etcd answers; default `weft.state` beside the subnet
    /// file; `none` keeps no state.
    #[arg(long = "state-file", env = "WEFT_STATE_FILE")]
    pub state_file: Option<PathBuf>,
    /// Take over from the weft running for this etcd prefix in this network namespace: its
    /// TUN queues and sockets are handed over while it runs, so no packet is lost; it exits
    /// once this one forwards. Without a running weft, start normally.
    #[arg(long = "takeover", env = "WEFT_TAKEOVER", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub takeover: bool,
    /// Run the node as a child process in the background and return once it forwards (exit
    /// 0), or when it failed (its exit status): `ExecReload=weft run --takeover --detach`
    /// makes `systemctl reload` the upgrade.
    #[arg(long = "detach", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub detach: bool,
    /// Log verbosity like flanneld's -v: 0 info, 1-2 debug, 3+ trace (RUST_LOG overrides).
    #[arg(short = 'v', long = "v", env = "FLANNELD_V", default_value_t = 0)]
    pub verbosity: u8,
}

impl RunArgs {
    /// What the node runs with.
    /// The state file: `--state-file`, `none` for none, else beside the subnet file.
    pub fn state_file(&self) -> Option<PathBuf> {
        match &self.state_file {
            Some(p) if p.as_os_str() == "none" || p.as_os_str().is_empty() => None,
            Some(p) => Some(p.clone()),
            None => Some(crate::store::state::default_path(&self.node.subnet_file)),
        }
    }

    /// The node's options from the flags.
    pub fn node_options(&self) -> NodeOptions {
        NodeOptions {
            etcd: self.etcd.to_options(),
            underlay: UnderlaySpec {
                ifaces: self.node.iface.clone(),
                iface_regex: self.node.iface_regex.clone(),
                iface_can_reach: self.node.iface_can_reach,
                public_ip: self.node.public_ip,
                public_ipv6: self.node.public_ipv6,
            },
            iptables_resync: Duration::from_secs(u64::from(self.node.iptables_resync)),
            forward_rules: self.node.iptables_forward_rules,
            subnet_file: self.node.subnet_file.clone(),
            renew_margin: self.node.renew_margin(),
            ip_masq: self.node.ip_masq,
            healthz: (self.healthz_port != 0)
                .then(|| SocketAddr::new(self.healthz_ip, self.healthz_port)),
            fix_masquerade: self.fix_masquerade,
            route_resync: Duration::from_secs(u64::from(self.route_resync_secs)),
            state_file: self.state_file(),
            takeover: self.takeover,
            datapath: DatapathOptions {
                tun_name: self.tun_name.clone(),
                persist_tun: self.persist_tun,
                batch_size: usize::from(self.batch_size),
                tun_offload: self.tun_offload,
                udp_gso: self.udp_gso,
                udp_gro: self.udp_gro,
                workers: usize::from(self.workers),
                source_ports: usize::from(self.source_ports),
                threads_per_worker: self.threads_per_worker,
                steer_by_cpu: self.steer_by_cpu,
            },
        }
    }
}

/// `weft status`'s flags.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The node's ops address (0.0.0.0 means this host: 127.0.0.1 is asked); only with
    /// --healthz-port.
    #[arg(
        long = "healthz-ip",
        env = "FLANNELD_HEALTHZ_IP",
        default_value = "127.0.0.1"
    )]
    pub healthz_ip: IpAddr,
    /// Ask the node's ops port (`weft run --healthz-port`) instead of the weft running in
    /// this network namespace.
    #[arg(long = "healthz-port", env = "FLANNELD_HEALTHZ_PORT")]
    pub healthz_port: Option<u16>,
    /// The etcd prefix of the node to ask (one weft per prefix runs in a namespace).
    #[arg(long = "etcd-prefix", env = "FLANNELD_ETCD_PREFIX", default_value = crate::store::DEFAULT_PREFIX)]
    pub etcd_prefix: String,
    /// Print the raw JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
}

impl StatusArgs {
    /// The node's ops address to ask, when a port is given (0 counts as none); the
    /// unspecified address means this host.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        let ip = match self.healthz_ip {
            IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            other => other,
        };
        self.healthz_port
            .filter(|p| *p != 0)
            .map(|port| SocketAddr::new(ip, port))
    }
}

/// `weft doctor`'s flags.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// The etcd flags.
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// The node's subnet.env (network, subnet, pod MTU); default: the running node's, else
    /// /run/flannel/subnet.env.
    #[arg(long = "subnet-file", env = "FLANNELD_SUBNET_FILE")]
    pub subnet_file: Option<PathBuf>,
    /// The TUN device weft runs; default: the running node's, else weft0.
    #[arg(long = "tun-name", env = "WEFT_TUN_NAME")]
    pub tun_name: Option<String>,
    /// The underlay interface (name or address); default: the default route's.
    #[arg(long = "iface", env = "FLANNELD_IFACE", value_delimiter = ',')]
    pub iface: Vec<String>,
    /// The backend when etcd cannot say (its config's Backend.Type wins).
    #[arg(long, value_enum, default_value = "vxlan")]
    backend: DoctorBackend,
}

impl DoctorArgs {
    /// What the doctor is asked to look at. Whether `--etcd-endpoints` was given is read
    /// from the process's own command line and environment: only then does it beat the
    /// running node's endpoints.
    pub fn request(&self) -> DoctorRequest {
        let endpoints_given = std::env::var_os("FLANNELD_ETCD_ENDPOINTS").is_some()
            || std::env::args().any(|w| w.trim_start_matches('-').starts_with("etcd-endpoints"));
        DoctorRequest {
            etcd: self.etcd.to_options(),
            endpoints_given,
            subnet_file: self.subnet_file.clone(),
            tun_name: self.tun_name.clone(),
            iface: self.iface.clone(),
            backend: self.backend.kind(),
        }
    }
}

// The value enums are private and their variants undocumented on purpose: clap turns a doc
// comment on a variant into per-value help, which changes how `--help` lays out every flag.

/// The backend `weft doctor` assumes when etcd cannot say.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum DoctorBackend {
    Vxlan,
    Udp,
    #[value(name = "host-gw")]
    HostGw,
}

impl DoctorBackend {
    /// The config's name for it.
    fn kind(self) -> BackendType {
        match self {
            DoctorBackend::Vxlan => BackendType::Vxlan,
            DoctorBackend::Udp => BackendType::Udp,
            DoctorBackend::HostGw => BackendType::HostGw,
        }
    }
}

/// The payload formats `weft inspect` reads: vxlan (VXLAN header, inner Ethernet frame) or
/// udp (flannel's udp backend: the inner IPv4 packet alone).
#[derive(Debug, Clone, Copy, ValueEnum)]
enum InspectBackend {
    Vxlan,
    Udp,
}

/// `weft inspect`'s arguments.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The UDP payload as hex (spaces and colons are ignored).
    pub hex: String,
    /// Backend format of the payload.
    #[arg(long, value_enum, default_value = "vxlan")]
    backend: InspectBackend,
    /// The receiving node's VNI.
    #[arg(long, default_value_t = 1)]
    pub vni: u32,
    /// The receiving node's VTEP MAC; defaults to the frame's own destination.
    #[arg(long)]
    pub vtep_mac: Option<EthernetAddress>,
}

impl InspectArgs {
    /// The receiving node the payload is judged for; only vxlan reads `--vni`.
    pub fn receiver(&self) -> Result<Receiver, VniRangeError> {
        Ok(match self.backend {
            InspectBackend::Vxlan => Receiver::Vxlan {
                vni: Vni::new(self.vni)?,
                vtep_mac: self.vtep_mac,
            },
            InspectBackend::Udp => Receiver::Udp,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use clap::error::ErrorKind;
    use clap::CommandFactory;

    use super::*;
    use crate::cli::{long_flag_names, normalize_go_flags};

    /// Every long flag of every subcommand, written Go's way (`-name`), reaches clap as that
    /// flag: flanneld unit files keep working whatever flag is added later.
    #[test]
    fn every_long_flag_is_accepted_in_go_form() {
        let mut cli = Cli::command();
        cli.build();
        let known = long_flag_names(&cli);
        let mut checked = 0;
        for sub in cli.get_subcommands() {
            for arg in sub.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                let words = ["weft", sub.get_name(), &format!("-{long}")].map(OsString::from);
                let args = normalize_go_flags(words, &known)
                    .unwrap_or_else(|e| panic!("{} -{long}: {e}", sub.get_name()));
                // One-letter names (`-v`) pass unchanged: clap reads them as the short flag.
                if long.len() > 1 {
                    assert_eq!(args[2], format!("--{long}").as_str());
                }
                // A flag that wants a value may complain about the missing value, never
                // about being unknown.
                if let Err(e) = Cli::command().try_get_matches_from(&args) {
                    assert!(
                        !matches!(e.kind(), ErrorKind::UnknownArgument),
                        "{} -{long}: {e}",
                        sub.get_name()
                    );
                }
                checked += 1;
            }
        }
        assert!(checked > 40, "only {checked} flags seen");
    }

    #[test]
    fn run_flags_become_node_options() {
        let cli = Cli::try_parse_from([
            "weft",
            "run",
            "--healthz-port=8471",
            "--iface=eth1",
            "--iptables-resync=7",
            "--workers=3",
            "--public-ipv6=fd77::3",
        ])
        .unwrap();
        let Command::Run(a) = cli.command else {
            panic!("not run")
        };
        let o = a.node_options();
        assert_eq!(o.healthz, Some("0.0.0.0:8471".parse().unwrap()));
        assert_eq!(o.underlay.ifaces, ["eth1"]);
        assert_eq!(o.underlay.public_ipv6, Some("fd77::3".parse().unwrap()));
        assert_eq!(o.iptables_resync, Duration::from_secs(7));
        assert_eq!(o.datapath.workers, 3);
        assert_eq!(o.datapath.tun_name, "weft0");
    }

    #[test]
    fn status_asks_this_host_for_the_unspecified_address() {
        let status = |args: &[&str]| {
            let cli = Cli::try_parse_from(["weft", "status"].iter().chain(args)).unwrap();
            let Command::Status(a) = cli.command else {
                panic!("not status")
            };
            a.ops_addr()
        };
        assert_eq!(
            status(&["--healthz-ip=0.0.0.0", "--healthz-port=9"]),
            Some("127.0.0.1:9".parse().unwrap())
        );
        assert_eq!(
            status(&["--healthz-ip=10.0.0.1", "--healthz-port=9"]),
            Some("10.0.0.1:9".parse().unwrap())
        );
        assert_eq!(status(&["--healthz-port=0"]), None);
    }
}
