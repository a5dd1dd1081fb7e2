//! The VXLAN header (RFC 7348 section 5): 8 bytes before the inner Ethernet frame.
//!
//! ```text
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! ```
//! Receivers check the I flag and ignore the reserved bits; senders write them as zero.

use core::fmt;

use super::{Result, WireError};

/// The I flag: the VNI is valid (RFC 7348 section 5). Must be set.
pub const FLAG_I: u8 = 0x08;

/// Length of the VXLAN header.
pub const HEADER_LEN: usize = 8;

/// The UDP port Linux and flannel use for VXLAN by default (not the IANA 4789).
pub const LINUX_DEFAULT_PORT: u16 = 8472;

/// A 24-bit VXLAN Network Identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vni(u32);

/// The value does not fit in 24 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("VNI {0} is outside 0..=16777215 (24 bits)")]
pub struct VniRangeError(pub u32);

impl Vni {
    /// The largest VNI.
    pub const MAX: u32 = 0x00ff_ffff;

    /// Builds a VNI; it must fit in 24 bits.
    pub const fn new(v: u32) -> core::result::Result<Vni, VniRangeError> {
        if v > Self::MAX {
            Err(VniRangeError(v))
        } else {
            Ok(Vni(v))
        }
    }

    /// The numeric value.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

mod field {
    use core::ops::{Range, RangeFrom};
    pub const FLAGS: usize = 0;
    pub const VNI: Range<usize> = 4..7;
    pub const PAYLOAD: RangeFrom<usize> = 8..;
}

/// A view of a VXLAN header and its payload (the inner Ethernet frame).
#[derive(Debug, Clone)]
pub struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    /// Wraps a buffer without checking its length.
    pub const fn new_unchecked(buffer: T) -> Self {
        VxlanPacket { buffer }
    }

    /// Wraps a buffer after checking it holds a whole header.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks that the buffer holds a whole header.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(WireError::Truncated)
        } else {
            Ok(())
        }
    }

    /// The flags byte.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Whether the I flag (valid VNI) is set; the other flag bits are reserved and ignored.
    pub fn has_vni(&self) -> bool {
        self.flags() & FLAG_I != 0
    }

    /// The VNI field.
    pub fn vni(&self) -> Vni {
        let b = &self.buffer.as_ref()[field::VNI];
        Vni(u32::from_be_bytes([0, b[0], b[1], b[2]]))
    }

    /// The inner Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanPacket<T> {
    /// Writes the whole header: I flag, `vni`, every reserved bit zero.
    pub fn emit_header(&mut self, vni: Vni) {
        self.buffer.as_mut()[..HEADER_LEN].copy_from_slice(&header_bytes(vni));
    }
}

/// The 8 header bytes for `vni`, as a sender writes them.
pub const fn header_bytes(vni: Vni) -> [u8; HEADER_LEN] {
    let v = vni.0.to_be_bytes();
    [FLAG_I, 0, 0, 0, v[1], v[2], v[3], 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deconstruct() {
        let bytes = [0x08, 0, 0, 0, 0x00, 0x00, 0x01, 0, 0xee];
        let p = VxlanPacket::new_checked(&bytes[..]).unwrap();
        assert!(p.has_vni());
        assert_eq!(p.vni(), Vni::new(1).unwrap());
        assert_eq!(p.payload(), &[0xee]);
    }

    #[test]
    fn reserved_bits_ignored() {
        let bytes = [0xff, 0xff, 0xff, 0xff, 0x12, 0x34, 0x56, 0xff];
        let p = VxlanPacket::new_checked(&bytes[..]).unwrap();
        assert!(p.has_vni());
        assert_eq!(p.vni().get(), 0x123456);
        let no_i = [0xf7, 0, 0, 0, 0, 0, 1, 0];
        assert!(!VxlanPacket::new_checked(&no_i[..]).unwrap().has_vni());
    }

    #[test]
    fn construct_over_junk() {
        let mut buf = [0xa5u8; 8];
        VxlanPacket::new_unchecked(&mut buf[..]).emit_header(Vni::new(0xabcdef).unwrap());
        assert_eq!(buf, [0x08, 0, 0, 0, 0xab, 0xcd, 0xef, 0]);
    }

    #[test]
    fn vni_range_and_truncation() {
        assert!(Vni::new(Vni::MAX).is_ok());
        assert_eq!(Vni::new(1 << 24), Err(VniRangeError(1 << 24)));
        assert_eq!(
            VxlanPacket::new_checked(&[0x08u8; 7][..]).unwrap_err(),
            WireError::Truncated
        );
    }
}
