//! Zero-copy views over packet bytes, one file per header (smoltcp's `wire` pattern).
//!
//! Each `Packet<T: AsRef<[u8]>>` wraps a caller-owned buffer. `new_checked` validates lengths
//! once; after it succeeds no accessor panics. Nothing here does I/O or uses `unsafe`.

pub mod ethernet;
pub mod subnet;
pub mod vxlan;

pub use ethernet::{EtherType, EthernetAddress, EthernetFrame};
pub use subnet::Subnet;
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
