//! ICMPv4 (RFC 792): views, and the destination-unreachable and fragmentation-needed replies
//! weft writes back into the TUN when it cannot forward a packet.

use std::net::Ipv4Addr;

use super::checksum;
use super::ipv4::{self, Ipv4Packet, Ipv4Repr, Protocol};
use super::{Result, WireError};

/// Length of the ICMP header (type, code, checksum, 4 bytes of rest-of-header).
pub const HEADER_LEN: usize = 8;

/// Largest error reply: RFC 1812 section 4.3.2.3 keeps ICMP errors within 576 bytes.
pub const MAX_ERROR_LEN: usize = 576;

/// ICMP message types weft reads or writes.
pub mod msg_type {
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 0;
    /// Destination unreachable.
    pub const DEST_UNREACHABLE: u8 = 3;
    /// Source quench (deprecated, still an error message).
    pub const SOURCE_QUENCH: u8 = 4;
    /// Redirect.
    pub const REDIRECT: u8 = 5;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 8;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u8 = 11;
    /// Parameter problem.
    pub const PARAMETER_PROBLEM: u8 = 12;
}

/// Why a packet could not be delivered, as sent back in a destination-unreachable message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// Code 0: no route to the destination network (no lease for its subnet).
    Net,
    /// Code 1: the destination host is unreachable.
    Host,
    /// Code 4: fragmentation needed and DF set; carries the next-hop MTU (RFC 1191).
    FragNeeded {
        /// The largest packet the next hop carries.
        mtu: u16,
    },
    /// Code 13: communication administratively prohibited.
    AdminProhibited,
}

impl Unreachable {
    fn code(self) -> u8 {
        match self {
            Unreachable::Net => 0,
            Unreachable::Host => 1,
            Unreachable::FragNeeded { .. } => 4,
            Unreachable::AdminProhibited => 13,
        }
    }
}

/// A view of an ICMPv4 message.
#[derive(Debug, Clone)]
pub struct Icmpv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv4Packet<T> {
    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        Icmpv4Packet { buffer }
    }

    /// Wraps a buffer after checking it holds the 8-byte header.
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Icmpv4Packet { buffer })
    }

    /// Message type.
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[0]
    }

    /// Message code.
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[1]
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[2], b[3]])
    }

    /// The next-hop MTU of a fragmentation-needed message (bytes 6..8).
    pub fn next_hop_mtu(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[6], b[7]])
    }

    /// The echo identifier (bytes 4..6).
    pub fn echo_ident(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[4], b[5]])
    }

    /// The echo sequence number (bytes 6..8).
    pub fn echo_seq(&self) -> u16 {
        self.next_hop_mtu()
    }

    /// The bytes after the header (for errors: the quoted original packet).
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    /// Whether the checksum over the whole message is correct.
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(self.buffer.as_ref())) == 0xffff
    }

    /// Whether this is an error message (which must never trigger another error).
    pub fn is_error(&self) -> bool {
        matches!(
            self.msg_type(),
            msg_type::DEST_UNREACHABLE
                | msg_type::SOURCE_QUENCH
                | msg_type::REDIRECT
                | msg_type::TIME_EXCEEDED
                | msg_type::PARAMETER_PROBLEM
        )
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv4Packet<T> {
    /// Computes and writes the checksum over the whole buffer.
    pub fn fill_checksum(&mut self) {
        let b = self.buffer.as_mut();
        b[2] = 0;
        b[3] = 0;
        let c = checksum::checksum(b);
        b[2..4].copy_from_slice(&c.to_be_bytes());
    }
}

/// Why no ICMP error may be sent for a packet (RFC 1122 section 3.2.2, RFC 1812 4.3.2.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoReply {
    /// The offending packet is not a parseable IPv4 packet.
    #[error("offending packet is not IPv4")]
    NotIpv4,
    /// The offending packet is itself an ICMP error.
    #[error("offending packet is an ICMP error")]
    IcmpError,
    /// The offending packet is a non-initial fragment.
    #[error("offending packet is a non-initial fragment")]
    Fragment,
    /// The offending source is not a unicast host (zero, broadcast, multicast, loopback).
    #[error("offending source is not a unicast host")]
    BadSource,
    /// The offending destination is broadcast or multicast.
    #[error("offending destination is broadcast or multicast")]
    GroupDestination,
    /// The output buffer is too small.
    #[error("output buffer too small")]
    NoRoom,
}

/// Writes an IPv4 packet carrying an ICMP destination-unreachable about `offending` into `out`.
///
/// The reply comes from `from` (the node's gateway address on the TUN) and goes to the
/// offending packet's source; it quotes as much of the offending packet as fits in 576
/// bytes. Returns the reply's length, or why no reply may be sent.
pub fn write_unreachable(
    offending: &[u8],
    from: Ipv4Addr,
    why: Unreachable,
    out: &mut [u8],
) -> core::result::Result<usize, NoReply> {
    let orig = Ipv4Packet::new_checked(offending).map_err(|_| NoReply::NotIpv4)?;
    if orig.version() != 4 {
        return Err(NoReply::NotIpv4);
    }
    if orig.frag_offset() != 0 {
        return Err(NoReply::Fragment);
    }
    let src = orig.src_addr();
    let dst = orig.dst_addr();
    if src.is_unspecified() || src.is_broadcast() || src.is_multicast() || src.is_loopback() {
        return Err(NoReply::BadSource);
    }
    if dst.is_broadcast() || dst.is_multicast() {
        return Err(NoReply::GroupDestination);
    }
    if orig.protocol() == Protocol::Icmp {
        if let Ok(icmp) = Icmpv4Packet::new_checked(orig.payload()) {
            if icmp.is_error() {
                return Err(NoReply::IcmpError);
            }
        }
    }
    let quoted = orig.packet();
    let quote_len = quoted
        .len()
        .min(MAX_ERROR_LEN - ipv4::MIN_HEADER_LEN - HEADER_LEN);
    let icmp_len = HEADER_LEN + quote_len;
    let total = ipv4::MIN_HEADER_LEN + icmp_len;
    if out.len() < total {
        return Err(NoReply::NoRoom);
    }
    let out = &mut out[..total];
    let repr = Ipv4Repr {
        src: from,
        dst: src,
        protocol: Protocol::Icmp,
        payload_len: icmp_len as u16,
        ttl: 64,
        dscp_ecn: 0,
        ident: 0,
        dont_frag: false,
    };
    repr.emit(&mut Ipv4Packet::new_unchecked(&mut out[..]));
    let icmp = &mut out[ipv4::MIN_HEADER_LEN..];
    icmp[0] = msg_type::DEST_UNREACHABLE;
    icmp[1] = why.code();
    icmp[2..6].fill(0);
    let mtu = match why {
        Unreachable::FragNeeded { mtu } => mtu,
        _ => 0,
    };
    icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    icmp[HEADER_LEN..].copy_from_slice(&quoted[..quote_len]);
    Icmpv4Packet::new_unchecked(icmp).fill_checksum();
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_request(src: Ipv4Addr, dst: Ipv4Addr, data_len: usize) -> Vec<u8> {
        let total = 20 + 8 + data_len;
        let mut b = vec![0xa5u8; total];
        let repr = Ipv4Repr {
            src,
            dst,
            protocol: Protocol::Icmp,
            payload_len: (8 + data_len) as u16,
            ttl: 64,
            dscp_ecn: 0,
            ident: 7,
            dont_frag: true,
        };
        repr.emit(&mut Ipv4Packet::new_unchecked(&mut b[..]));
        let icmp = &mut b[20..];
        icmp[0] = msg_type::ECHO_REQUEST;
        icmp[1] = 0;
        icmp[4..8].copy_from_slice(&[0, 1, 0, 2]);
        Icmpv4Packet::new_unchecked(icmp).fill_checksum();
        b
    }

    const POD: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 2);
    const GONE: Ipv4Addr = Ipv4Addr::new(10, 1, 9, 2);
    const GW: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 0);

    #[test]
    fn unreachable_reply_is_well_formed() {
        let req = echo_request(POD, GONE, 56);
        let mut out = [0xa5u8; 600];
        let n = write_unreachable(&req, GW, Unreachable::Net, &mut out).unwrap();
        assert_eq!(n, 20 + 8 + req.len());
        let ip = Ipv4Packet::new_checked(&out[..n]).unwrap();
        let repr = Ipv4Repr::parse(&ip).unwrap();
        assert_eq!((repr.src, repr.dst), (GW, POD));
        assert_eq!(repr.protocol, Protocol::Icmp);
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!((icmp.msg_type(), icmp.code()), (3, 0));
        assert!(icmp.is_error());
        assert_eq!(icmp.data(), &req[..]);
    }

    #[test]
    fn frag_needed_carries_mtu_and_quote_is_bounded() {
        let req = echo_request(POD, GONE, 1400);
        let mut out = [0u8; 2000];
        let n =
            write_unreachable(&req, GW, Unreachable::FragNeeded { mtu: 1450 }, &mut out).unwrap();
        assert_eq!(n, MAX_ERROR_LEN);
        let ip = Ipv4Packet::new_checked(&out[..n]).unwrap();
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert_eq!((icmp.code(), icmp.next_hop_mtu()), (4, 1450));
        assert!(icmp.verify_checksum());
        assert_eq!(icmp.data(), &req[..MAX_ERROR_LEN - 28]);
    }

    #[test]
    fn never_reply_to_errors_fragments_groups() {
        let mut out = [0u8; 600];
        let req = echo_request(POD, GONE, 8);
        let mut err = [0u8; 600];
        let n = write_unreachable(&req, GW, Unreachable::Host, &mut err).unwrap();
        assert_eq!(
            write_unreachable(&err[..n], GW, Unreachable::Net, &mut out),
            Err(NoReply::IcmpError)
        );
        let mut frag = req.clone();
        frag[6..8].copy_from_slice(&1u16.to_be_bytes());
        assert_eq!(
            write_unreachable(&frag, GW, Unreachable::Net, &mut out),
            Err(NoReply::Fragment)
        );
        let bcast = echo_request(POD, Ipv4Addr::BROADCAST, 8);
        assert_eq!(
            write_unreachable(&bcast, GW, Unreachable::Net, &mut out),
            Err(NoReply::GroupDestination)
        );
        let zero_src = echo_request(Ipv4Addr::UNSPECIFIED, GONE, 8);
        assert_eq!(
            write_unreachable(&zero_src, GW, Unreachable::Net, &mut out),
            Err(NoReply::BadSource)
        );
        assert_eq!(
            write_unreachable(&req[..10], GW, Unreachable::Net, &mut out),
            Err(NoReply::NotIpv4)
        );
        assert_eq!(
            write_unreachable(&req, GW, Unreachable::Net, &mut out[..30]),
            Err(NoReply::NoRoom)
        );
    }
}
