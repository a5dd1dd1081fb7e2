//! The `weft` binary: parse flags, set up logging, dispatch the subcommand.

use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use weft::cli::{long_flag_names, normalize_go_flags, EtcdArgs, GlogArgs, KubeArgs, NodeArgs};
use weft::encap::{self, VxlanRx};
use weft::node::{self, NodeOptions};
use weft::wire::{EthernetAddress, EthernetFrame, Ipv4Packet, Vni, VxlanPacket};

/// weft: a userspace VXLAN overlay router, compatible with flannel.
#[derive(Debug, Parser)]
#[command(name = "weft", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the node service: takes a subnet lease in etcd, configures the TUN device and
    /// carries pod traffic to and from the other nodes until SIGTERM. Takes flanneld's flags.
    Run(Box<RunArgs>),
    /// Shows the running node's lease, its lease table, etcd and data-path state, read from
    /// the node's /status endpoint (the same --healthz-ip/--healthz-port as `weft run`).
    Status(StatusArgs),
    /// Checks this host for what breaks an overlay (ip_forward, rp_filter, FORWARD policy, the
    /// docker masquerade pitfall, bridge netfilter, MTUs) and prints each finding with its fix.
    /// Exits 1 when something is broken.
    Doctor(Box<DoctorArgs>),
    /// Decodes one tunnel payload (hex, e.g. from `tcpdump -x`) and says whether weft's
    /// receive checks would accept it, and if not, the drop reason.
    Inspect(InspectArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    etcd: EtcdArgs,
    #[command(flatten)]
    node: NodeArgs,
    #[command(flatten)]
    glog: GlogArgs,
    #[command(flatten)]
    kube: KubeArgs,
    /// Print the version and exit (flanneld's -version).
    #[arg(long = "version")]
    version: bool,
    /// Name of the TUN device weft creates.
    #[arg(long = "tun-name", env = "WEFT_TUN_NAME", default_value = "weft0")]
    tun_name: String,
    /// Address to serve /healthz on (with --healthz-port).
    #[arg(
        long = "healthz-ip",
        env = "FLANNELD_HEALTHZ_IP",
        default_value = "0.0.0.0"
    )]
    healthz_ip: IpAddr,
    /// Port to serve /healthz on; 0 disables it (flanneld's default).
    #[arg(
        long = "healthz-port",
        env = "FLANNELD_HEALTHZ_PORT",
        default_value_t = 0
    )]
    healthz_port: u16,
    /// Packets per I/O batch (recvmmsg/sendmmsg, TUN reads per wake-up).
    #[arg(long = "batch-size", env = "WEFT_BATCH_SIZE", default_value_t = weft::buf::BATCH_SIZE as u16,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    batch_size: u16,
    /// Keep the TUN device and its route when weft exits, so a restart does not let pod
    /// traffic leak to the default route meanwhile (the next start takes the device back).
    #[arg(long = "persist-tun", env = "WEFT_PERSIST_TUN", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    persist_tun: bool,
    /// Rewrite docker-style `-s <pod subnet> -j MASQUERADE` rules so they spare the overlay
    /// (`! -d <Network>`); without it weft only warns about them.
    #[arg(long = "fix-masquerade", env = "WEFT_FIX_MASQUERADE", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    fix_masquerade: bool,
    /// Let the TUN hand over 64 KiB TCP super-packets, segmented in userspace (TSO).
    #[arg(long = "tun-offload", env = "WEFT_TUN_OFFLOAD", default_value_t = true, action = clap::ArgAction::Set)]
    tun_offload: bool,
    /// Send each segmented super-packet as one UDP_SEGMENT message (UDP GSO).
    #[arg(long = "udp-gso", env = "WEFT_UDP_GSO", default_value_t = true, action = clap::ArgAction::Set)]
    udp_gso: bool,
    /// Receive datagram trains (UDP_GRO) and coalesce TCP segments for the TUN.
    #[arg(long = "udp-gro", env = "WEFT_UDP_GRO", default_value_t = true, action = clap::ArgAction::Set)]
    udp_gro: bool,
    /// Seconds between full reconciles of the direct routes (host-gw, vxlan DirectRouting), so
    /// a route removed by hand comes back.
    #[arg(long = "route-resync-secs", env = "WEFT_ROUTE_RESYNC_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=86400))]
    route_resync_secs: u32,
    /// Data-path workers, each with its own TUN queue (IFF_MULTI_QUEUE) and tunnel socket
    /// (SO_REUSEPORT); 0 gives every CPU one data-path thread: CPUs / threads per worker
    /// (at least 1, at most 16).
    #[arg(long = "workers", env = "WEFT_WORKERS", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=16))]
    workers: u16,
    /// Outer UDP source ports (send sockets) that flows are hashed over; 0 picks four per
    /// worker.
    #[arg(long = "source-ports", env = "WEFT_SOURCE_PORTS", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=64))]
    source_ports: u16,
    /// Threads per worker: 2 (a send and a receive thread: more throughput) or 1 (both
    /// directions on one thread: a wake-up less per request and reply, lower latency).
    #[arg(long = "threads-per-worker", env = "WEFT_THREADS_PER_WORKER", default_value_t = 2,
          value_parser = clap::value_parser!(u8).range(1..=2))]
    threads_per_worker: u8,
    /// Pin worker i to CPU i and steer each packet (TUN queue and socket) to the worker of
    /// the CPU handling it, so waking a worker is a local context switch (needs CAP_BPF).
    #[arg(long = "steer-by-cpu", env = "WEFT_STEER_BY_CPU", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    steer_by_cpu: bool,
    /// Log verbosity like flanneld's -v: 0 info, 1-2 debug, 3+ trace (RUST_LOG overrides).
    #[arg(short = 'v', long = "v", env = "FLANNELD_V", default_value_t = 0)]
    verbosity: u8,
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// The node's ops address (0.0.0.0 means this host: 127.0.0.1 is asked); only with
    /// --healthz-port.
    #[arg(
        long = "healthz-ip",
        env = "FLANNELD_HEALTHZ_IP",
        default_value = "127.0.0.1"
    )]
    healthz_ip: IpAddr,
    /// Ask the node's ops port (`weft run --healthz-port`) instead of the weft running in
    /// this network namespace.
    #[arg(long = "healthz-port", env = "FLANNELD_HEALTHZ_PORT")]
    healthz_port: Option<u16>,
    /// The etcd prefix of the node to ask (one weft per prefix runs in a namespace).
    #[arg(long = "etcd-prefix", env = "FLANNELD_ETCD_PREFIX", default_value = weft::store::DEFAULT_PREFIX)]
    etcd_prefix: String,
    /// Print the raw JSON document instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct DoctorArgs {
    #[command(flatten)]
    etcd: EtcdArgs,
    /// The node's subnet.env (network, subnet, pod MTU); default: the running node's, else
    /// /run/flannel/subnet.env.
    #[arg(long = "subnet-file", env = "FLANNELD_SUBNET_FILE")]
    subnet_file: Option<std::path::PathBuf>,
    /// The TUN device weft runs; default: the running node's, else weft0.
    #[arg(long = "tun-name", env = "WEFT_TUN_NAME")]
    tun_name: Option<String>,
    /// The underlay interface (name or address); default: the default route's.
    #[arg(long = "iface", env = "FLANNELD_IFACE", value_delimiter = ',')]
    iface: Vec<String>,
    /// The backend when etcd cannot say (its config's Backend.Type wins).
    #[arg(long, value_enum, default_value = "vxlan")]
    backend: DoctorBackend,
}

/// What etcd says for the doctor: the network config and every lease, judged as the node
/// judges them.
async fn doctor_etcd(
    args: &EtcdArgs,
) -> Result<(weft::config::NetworkConfig, weft::store::LeaseView)> {
    let opts = args.to_options();
    let keys = weft::store::Keys::new(&opts.prefix);
    let mut client = weft::store::connect(&opts).await?;
    let config = weft::store::read_config(&mut client, &keys).await?;
    let resp = client
        .get(
            keys.subnets_dir(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await?;
    let view = weft::store::judge_all(
        &keys,
        &config,
        resp.kvs().iter().map(|kv| (kv.key(), kv.value())),
    );
    Ok((config, view))
}

/// The backend `weft doctor` assumes when etcd cannot say.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum DoctorBackend {
    Vxlan,
    Udp,
    #[value(name = "host-gw")]
    HostGw,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Backend {
    Vxlan,
    Udp,
}

#[derive(Debug, clap::Args)]
struct InspectArgs {
    /// The UDP payload as hex (spaces and colons are ignored).
    hex: String,
    /// Backend format of the payload.
    #[arg(long, value_enum, default_value = "vxlan")]
    backend: Backend,
    /// The receiving node's VNI.
    #[arg(long, default_value_t = 1)]
    vni: u32,
    /// The receiving node's VTEP MAC; defaults to the frame's own destination.
    #[arg(long)]
    vtep_mac: Option<EthernetAddress>,
}

fn parse_hex(s: &str) -> Result<Vec<u8>> {
    let digits: String = s
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':')
        .collect();
    if digits.len() % 2 != 0 {
        bail!("hex payload has an odd number of digits ({})", digits.len());
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&digits[i..i + 2], 16)
                .with_context(|| format!("bad hex digits {:?} at offset {i}", &digits[i..i + 2]))
        })
        .collect()
}

fn inspect(a: &InspectArgs) -> Result<()> {
    let data = parse_hex(&a.hex)?;
    println!("payload: {} bytes", data.len());
    let verdict = match a.backend {
        Backend::Vxlan => {
            let vni = Vni::new(a.vni).context("--vni")?;
            if let Ok(vx) = VxlanPacket::new_checked(&data[..]) {
                println!(
                    "vxlan:   flags {:#04x} (I {}), vni {}",
                    vx.flags(),
                    if vx.has_vni() { "set" } else { "clear" },
                    vx.vni()
                );
                if let Ok(eth) = EthernetFrame::new_checked(vx.payload()) {
                    println!(
                        "inner:   ethernet {} -> {}, type {:?}",
                        eth.src_addr(),
                        eth.dst_addr(),
                        eth.ethertype()
                    );
                }
            }
            let mac = match a.vtep_mac {
                Some(m) => m,
                None => data
                    .get(8..14)
                    .map(EthernetAddress::from_bytes)
                    .unwrap_or_default(),
            };
            encap::decap_vxlan(&data, &VxlanRx { vni, vtep_mac: mac }).map(|i| i.packet)
        }
        Backend::Udp => encap::decap_udp(&data).map(|i| i.packet),
    };
    match verdict {
        Ok(inner) => {
            if let Ok(ip) = Ipv4Packet::new_checked(inner) {
                println!(
                    "inner:   ipv4 {} -> {}, {:?}, {} bytes, ttl {}",
                    ip.src_addr(),
                    ip.dst_addr(),
                    ip.protocol(),
                    ip.total_len(),
                    ip.ttl()
                );
            }
            println!("verdict: accepted");
            Ok(())
        }
        Err(reason) => {
            println!("verdict: dropped ({reason})");
            std::process::exit(2);
        }
    }
}

fn init_tracing(verbosity: u8) {
    // -v raises weft's own verbosity only: the libraries under it (tonic, hyper, tower, h2)
    // stay at warnings, or their debug lines drown weft's. RUST_LOG overrides everything.
    let level = match verbosity {
        0 => "info",
        1 | 2 => "info,weft=debug",
        _ => "info,weft=trace",
    };
    // An empty RUST_LOG (`RUST_LOG=` in an environment file) counts as unset.
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The signals `weft run` handles, registered before anything else happens so that none of
/// them can take the default action (SIGHUP's is to terminate) at any stage.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Registers the handlers; needs a tokio runtime context.
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Completes on SIGTERM or SIGINT. SIGHUP is logged and ignored: weft has nothing to
    /// reload (the network config is read at start; restart to apply a change), and a
    /// terminal hang-up or a stray `kill -HUP` must not take the node's TUN down.
    async fn shutdown(mut self) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return tracing::info!("SIGTERM: stopping"),
                _ = self.int.recv() => return tracing::info!("SIGINT: stopping"),
                _ = self.hup.recv() => tracing::info!("SIGHUP ignored: weft reads its configuration at start; restart it to apply a change"),
            }
        }
    }
}

fn run(a: &RunArgs) -> Result<()> {
    if a.version {
        println!("weft {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    let kube = a.kube.given();
    if !kube.is_empty() {
        bail!(
            "{} {}: the kube subnet manager is not supported; weft keeps leases in etcd (use -etcd-endpoints)",
            if kube.len() == 1 { "flag" } else { "flags" },
            kube.join(" ")
        );
    }
    init_tracing(a.verbosity);
    let glog = a.glog.given();
    if !glog.is_empty() {
        tracing::info!(flags = %glog.join(" "), "glog flags accepted and ignored: weft's verbosity is -v (or RUST_LOG)");
    }
    if let Some(v6) = a.node.public_ipv6 {
        tracing::info!(public_ipv6 = %v6, "-public-ipv6 noted; this network runs IPv4 only");
    }
    let opts = NodeOptions {
        etcd: a.etcd.to_options(),
        underlay: weft::host::UnderlaySpec {
            ifaces: a.node.iface.clone(),
            iface_regex: a.node.iface_regex.clone(),
            iface_can_reach: a.node.iface_can_reach,
            public_ip: a.node.public_ip,
        },
        iptables_resync: std::time::Duration::from_secs(u64::from(a.node.iptables_resync)),
        forward_rules: a.node.iptables_forward_rules,
        subnet_file: a.node.subnet_file.clone(),
        renew_margin: a.node.renew_margin(),
        ip_masq: a.node.ip_masq,
        tun_name: a.tun_name.clone(),
        batch_size: usize::from(a.batch_size),
        healthz: (a.healthz_port != 0).then(|| SocketAddr::new(a.healthz_ip, a.healthz_port)),
        fix_masquerade: a.fix_masquerade,
        persist_tun: a.persist_tun,
        tun_offload: a.tun_offload,
        udp_gso: a.udp_gso,
        udp_gro: a.udp_gro,
        route_resync: std::time::Duration::from_secs(u64::from(a.route_resync_secs)),
        workers: usize::from(a.workers),
        source_ports: usize::from(a.source_ports),
        threads_per_worker: a.threads_per_worker,
        steer_by_cpu: a.steer_by_cpu,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("weft-ctl")
        .build()
        .context("starting the tokio runtime")?;
    let signals = {
        let _ctx = rt.enter();
        Signals::install().context("installing the signal handlers")?
    };
    let result = rt
        .block_on(node::run(opts, signals.shutdown()))
        .map_err(|e| anyhow::Error::new(e).context("weft run"));
    // Whatever still waits in the runtime (an etcd request in flight, a DNS lookup) must not
    // hold up the exit.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    result
}

/// GETs `path` from a node's ops server over HTTP/1.1 (hyper's client); returns the body of
/// a 200 answer, or an error naming the status and the node's reason.
fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async {
        let stream = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        .map_err(|_| anyhow::anyhow!("no answer within 3 s"))
        .and_then(|r| r.map_err(anyhow::Error::from))
        .with_context(|| {
            format!("connecting to the node at {addr} (is `weft run --healthz-port` set?)")
        })?;
        let exchange = async {
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let req = hyper::Request::get(path)
                .header(hyper::header::HOST, addr.to_string())
                .body(Empty::<Bytes>::new())?;
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
        };
        let (status, body) = tokio::time::timeout(std::time::Duration::from_secs(5), exchange)
            .await
            .map_err(|_| anyhow::anyhow!("{path}: no answer from {addr} within 5 s"))?
            .with_context(|| format!("{path} from {addr}"))?;
        if status != hyper::StatusCode::OK {
            bail!("{path}: {status}: {}", body.trim());
        }
        Ok(body)
    })
}

fn status(a: &StatusArgs) -> Result<()> {
    let ip = match a.healthz_ip {
        IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        other => other,
    };
    let body = match a.healthz_port.filter(|p| *p != 0) {
        Some(port) => http_get(SocketAddr::new(ip, port), "/status")?,
        None => weft::ops::local::fetch(&weft::host::instance::socket_name(&a.etcd_prefix))?,
    };
    if a.json {
        println!("{body}");
        return Ok(());
    }
    let doc: weft::ops::status::StatusDoc =
        serde_json::from_str(&body).context("parsing the node's /status")?;
    print!("{}", doc.render());
    Ok(())
}

fn doctor(a: &DoctorArgs) -> Result<()> {
    use weft::host::doctor::{self, DoctorInput, Severity};
    // The weft running in this namespace says where its files and etcd are; flags win.
    let local = weft::ops::local::fetch(&weft::host::instance::socket_name(&a.etcd.etcd_prefix));
    let running = !matches!(
        local,
        Err(weft::ops::local::LocalStatusError::NotRunning(_))
    );
    let node = local
        .ok()
        .and_then(|body| serde_json::from_str::<weft::ops::status::StatusDoc>(&body).ok())
        .map(|doc| doc.node);
    let subnet_file = a
        .subnet_file
        .clone()
        .or_else(|| node.as_ref().map(|n| n.subnet_file.clone().into()))
        .unwrap_or_else(|| "/run/flannel/subnet.env".into());
    let tun_name = a
        .tun_name
        .clone()
        .or_else(|| node.as_ref().map(|n| n.tun.clone()).filter(|t| t != "-"))
        .unwrap_or_else(|| "weft0".into());
    let mut etcd_args = a.etcd.clone();
    let endpoints_given = std::env::var_os("FLANNELD_ETCD_ENDPOINTS").is_some()
        || std::env::args().any(|w| w.trim_start_matches('-').starts_with("etcd-endpoints"));
    if let Some(n) = node
        .as_ref()
        .filter(|n| !endpoints_given && !n.etcd_endpoints.is_empty())
    {
        etcd_args.etcd_endpoints = n.etcd_endpoints.clone();
    }
    // Without subnet.env (weft not running, never ran) every host check still runs.
    let env = weft::store::subnet_env::SubnetEnv::read(&subnet_file).ok();
    let underlay = weft::host::choose_underlay(&weft::host::UnderlaySpec {
        ifaces: a.iface.clone(),
        ..Default::default()
    })
    .ok();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let etcd = rt.block_on(async {
        match tokio::time::timeout(std::time::Duration::from_secs(5), doctor_etcd(&etcd_args)).await
        {
            Ok(r) => r.map_err(|e| format!("{e:#}")),
            Err(_) => Err(format!(
                "no answer within 5 s from {}",
                etcd_args.etcd_endpoints.join(",")
            )),
        }
    });
    use weft::config::BackendType;
    let (kind, port) = match &etcd {
        Ok((c, _)) => (c.backend.kind, c.backend.port),
        Err(_) => match a.backend {
            DoctorBackend::Vxlan => (BackendType::Vxlan, 8472),
            DoctorBackend::Udp => (BackendType::Udp, 8285),
            DoctorBackend::HostGw => (BackendType::HostGw, 0),
        },
    };
    let input = DoctorInput {
        running,
        network: env
            .as_ref()
            .map(|e| e.network)
            .or_else(|| etcd.as_ref().ok().map(|(c, _)| c.network)),
        subnet: env.as_ref().map(|e| e.subnet),
        pod_mtu: env.as_ref().map(|e| e.mtu),
        tun: tun_name,
        underlay_mtu: underlay.map(|u| u.mtu),
        overhead: match kind {
            BackendType::Vxlan => encap::VXLAN_OVERHEAD as u32,
            BackendType::Udp => encap::UDP_OVERHEAD as u32,
            BackendType::HostGw => 0,
        },
        tunnel: kind != BackendType::HostGw,
        port,
        etcd: etcd.map(|(_, view)| view),
    };
    let findings = doctor::run_checks(&input);
    print!("{}", doctor::render(&findings));
    if findings.iter().any(|f| f.severity == Severity::Fail) {
        std::process::exit(1);
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    use clap::CommandFactory;
    let known = long_flag_names(&Cli::command());
    let args = match normalize_go_flags(std::env::args_os(), &known) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args);
    let result = match &cli.command {
        Command::Run(a) => run(a),
        Command::Status(a) => status(a),
        Command::Doctor(a) => doctor(a),
        Command::Inspect(a) => inspect(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line with the whole chain of causes, no backtrace: this is for a person.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
