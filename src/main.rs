//! The `weft` binary: parse flags, set up logging, dispatch the subcommand.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use weft::encap::{self, VxlanRx};
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
    /// Decodes one tunnel payload (hex, e.g. from `tcpdump -x`) and says whether weft's
    /// receive checks would accept it, and if not, the drop reason.
    Inspect(InspectArgs),
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

fn main() -> Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Command::Inspect(a) => inspect(a),
    }
}
