//! IPv6 headers (RFC 8200), only far enough to classify a packet and drop it with a counter.

use std::net::Ipv6Addr;

use super::{Result, WireError};

/// Length of the fixed IPv6 header.
pub const HEADER_LEN: usize = 40;

/// A view of an IPv6 packet's fixed header.
#[derive(Debug, Clone)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wraps a buffer after checking it holds the fixed header and the payload it claims.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Ipv6Packet { buffer };
        let len = p.buffer.as_ref().len();
        if len < HEADER_LEN || len < HEADER_LEN + p.payload_len() as usize {
            return Err(WireError::Truncated);
        }
        if p.version() != 6 {
            return Err(WireError::Malformed);
        }
        Ok(p)
    }

    /// The version field (6).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }

    /// The payload length field.
    pub fn payload_len(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[4], b[5]])
    }

    /// The next-header field.
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[6]
    }

    /// The hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[7]
    }

    /// The source address.
    pub fn src_addr(&self) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buffer.as_ref()[8..24]);
        Ipv6Addr::from(a)
    }

    /// The destination address.
    pub fn dst_addr(&self) -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buffer.as_ref()[24..40]);
        Ipv6Addr::from(a)
    }
}

/// The IP version in the first nibble of a packet, or `None` for an empty buffer.
pub fn ip_version(packet: &[u8]) -> Option<u8> {
    packet.first().map(|b| b >> 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify() {
        let mut b = [0u8; 44];
        b[0] = 0x60;
        b[5] = 4;
        b[6] = 58; // ICMPv6
        b[7] = 64;
        b[23] = 1;
        b[39] = 2;
        let p = Ipv6Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.next_header(), 58);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.src_addr(), "::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.dst_addr(), "::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(ip_version(&b), Some(6));
        assert_eq!(ip_version(&[]), None);
        assert_eq!(
            Ipv6Packet::new_checked(&b[..43]).unwrap_err(),
            WireError::Truncated
        );
        b[0] = 0x40;
        assert_eq!(
            Ipv6Packet::new_checked(&b[..]).unwrap_err(),
            WireError::Malformed
        );
    }
}
