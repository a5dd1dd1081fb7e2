//! The `weft` binary: parse flags, set up logging, dispatch the subcommand, print its errors.
//! The subcommands' flags are in `weft::cli::commands`; what they do is in the library.

use anyhow::{bail, Context, Result};
use clap::Parser;

use weft::cli::commands::{Cli, Command, DoctorArgs, InspectArgs, RunArgs, StatusArgs};
use weft::cli::{long_flag_names, normalize_go_flags};
use weft::encap::inspect;
use weft::host::doctor::{self, Severity};

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
    if a.detach {
        return detach();
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
        tracing::info!(public_ipv6 = %v6, "-public-ipv6 noted; it is advertised only on networks that enable IPv6");
    }
    let opts = a.node_options();
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
        .block_on(weft::node::run(opts, signals.shutdown()))
        .map_err(|e| anyhow::Error::new(e).context("weft run"));
    // Whatever still waits in the runtime (an etcd request in flight, a DNS lookup) must not
    // hold up the exit.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    result
}

/// `weft run --detach`: starts this binary again without `--detach` in a process group of
/// its own, its standard output a pipe to here, and waits until it says it forwards (exit
/// 0) or ends (its failure). Its standard error (the log) is ours.
fn detach() -> Result<()> {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("finding this binary")?;
    let args: Vec<std::ffi::OsString> = std::env::args_os()
        .skip(1)
        .filter(|a| {
            a != "--detach" && a != "-detach" && a != "--detach=true" && a != "-detach=true"
        })
        .collect();
    let mut child = std::process::Command::new(&exe)
        .args(&args)
        .env(weft::ops::DETACHED_ENV, "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let pid = child.id();
    let out = child.stdout.take().context("the child's standard output")?;
    for line in std::io::BufReader::new(out).lines() {
        if line.is_ok_and(|l| l.trim() == weft::ops::READY_LINE) {
            eprintln!("weft: the node (pid {pid}) forwards; detached");
            return Ok(());
        }
    }
    let status = child.wait().context("waiting for the node")?;
    bail!("the node (pid {pid}) ended before it forwarded: {status}")
}

fn status(a: &StatusArgs) -> Result<()> {
    let body = match a.ops_addr() {
        Some(addr) => weft::ops::client::get(addr, "/status")?,
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
    let local = doctor::Local::discover(a.request());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let etcd = rt
        .block_on(weft::store::view::read_view(
            &local.etcd,
            doctor::ETCD_TIMEOUT,
        ))
        .map_err(|e| format!("{:#}", anyhow::Error::new(e)));
    let mut input = local.into_input(etcd);
    input.flanneld = rt.block_on(doctor::gather_flanneld(&input));
    let findings = doctor::run_checks(&input);
    print!("{}", doctor::render(&findings));
    if findings.iter().any(|f| f.severity == Severity::Fail) {
        std::process::exit(1);
    }
    Ok(())
}

fn inspect(a: &InspectArgs) -> Result<()> {
    let payload = inspect::parse_hex(&a.hex)?;
    // Printed before the flags are judged, so a bad --vni still shows what was read.
    println!("payload: {} bytes", payload.len());
    let report = inspect::Report::decode(&payload, &a.receiver().context("--vni")?);
    print!("{report}");
    if report.verdict.is_err() {
        std::process::exit(2);
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
