//! Zero-copy views over packet bytes, one file per header (smoltcp's `wire` pattern).
//!
//! Each `Packet<T: AsRef<[u8]>>` wraps a caller-owned buffer. `new_checked` validates lengths
//! once; after it succeeds no accessor panics. Nothing here does I/O or uses `unsafe`.

pub mod checksum;
pub mod ethernet;
pub mod icmpv4;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod subnet;
pub mod subnet6;
pub mod tcp;
pub mod udp;
pub mod vxlan;

pub use ethernet::{EtherType, EthernetAddress, EthernetFrame};
pub use icmpv4::Icmpv4Packet;
pub use icmpv6::Icmpv6Packet;
pub use ipv4::Ipv4Packet;
pub use ipv6::Ipv6Packet;
pub use subnet::Subnet;
pub use subnet6::Subnet6;
pub use tcp::TcpPacket;
pub use udp::UdpPacket;
pub use vxlan::{Vni, VxlanPacket};

/// Why a byte buffer could not be read as a given header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The buffer is shorter than the header or the length a header field claims.
    #[error("truncated packet")]
    Truncated,
    /// A field holds a value the protocol does not allow.
    #[error("malformed packet")]
    Malformed,
}

/// Result of a `wire` operation.
pub type Result<T> = core::result::Result<T, WireError>;
