//! ICMPv6 (RFC 4443): views, and the destination-unreachable and packet-too-big errors weft
//! writes back into the TUN when it cannot forward an IPv6 packet.

use std::net::Ipv6Addr;

use super::checksum;
use super::ipv6::{self, next_header, Ipv6Packet, Ipv6Repr};
use super::{Result, WireError};

/// Length of the ICMPv6 header (type, code, checksum, 4 bytes of message body).
pub const HEADER_LEN: usize = 8;

/// Largest error message: RFC 4443 section 2.4(c) keeps it within the IPv6 minimum MTU.
pub const MAX_ERROR_LEN: usize = ipv6::MIN_MTU;

/// Hop limit of the errors weft writes (Linux's default for IPv6).
const ERROR_HOP_LIMIT: u8 = 64;

/// ICMPv6 message types weft reads or writes (RFC 4443 section 2.1, RFC 4861 section 4).
pub mod msg_type {
    /// Destination unreachable.
    pub const DEST_UNREACHABLE: u8 = 1;
    /// Packet too big.
    pub const PACKET_TOO_BIG: u8 = 2;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u8 = 3;
    /// Parameter problem.
    pub const PARAMETER_PROBLEM: u8 = 4;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 128;
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 129;
    /// Router solicitation.
    pub const ROUTER_SOLICIT: u8 = 133;
    /// Router advertisement.
    pub const ROUTER_ADVERT: u8 = 134;
    /// Neighbor solicitation.
    pub const NEIGHBOR_SOLICIT: u8 = 135;
    /// Neighbor advertisement.
    pub const NEIGHBOR_ADVERT: u8 = 136;
    /// Redirect (never answered with an error, RFC 4443 section 2.4(e.2)).
    pub const REDIRECT: u8 = 137;
}

/// Why a packet could not be delivered, as sent back in a destination-unreachable message
/// (RFC 4443 section 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreachable {
    /// Code 0: no route to the destination (no lease for its subnet).
    NoRoute,
    /// Code 1: communication with the destination administratively prohibited.
    AdminProhibited,
    /// Code 3: address unreachable.
    Address,
    /// Code 4: port unreachable.
    Port,
}

impl Unreachable {
    fn code(self) -> u8 {
        match self {
            Unreachable::NoRoute => 0,
            Unreachable::AdminProhibited => 1,
            Unreachable::Address => 3,
            Unreachable::Port => 4,
        }
    }
}

/// A view of an ICMPv6 message.
#[derive(Debug, Clone)]
pub struct Icmpv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv6Packet<T> {
    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        Icmpv6Packet { buffer }
    }

    /// Wraps a buffer after checking it holds the 8-byte header.
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Icmpv6Packet { buffer })
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

    /// The MTU of a packet-too-big message (bytes 4..8).
    pub fn mtu(&self) -> u32 {
        let b = self.buffer.as_ref();
        u32::from_be_bytes([b[4], b[5], b[6], b[7]])
    }

    /// The echo identifier (bytes 4..6).
    pub fn echo_ident(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[4], b[5]])
    }

    /// The echo sequence number (bytes 6..8).
    pub fn echo_seq(&self) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_be_bytes([b[6], b[7]])
    }

    /// The bytes after the header (for errors: the quoted original packet).
    pub fn data(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    /// Whether the checksum over the whole message and the pseudo-header for `src` and `dst`
    /// is correct.
    pub fn verify_checksum(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        let b = self.buffer.as_ref();
        let pseudo = checksum::pseudo_header6(src, dst, next_header::ICMPV6, b.len() as u32);
        checksum::fold(pseudo + checksum::sum(b)) == 0xffff
    }

    /// Whether this is an error message (types 0 to 127, RFC 4443 section 2.1), which must
    /// never trigger another error.
    pub fn is_error(&self) -> bool {
        self.msg_type() < 128
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv6Packet<T> {
    /// Sets the message type.
    pub fn set_msg_type(&mut self, v: u8) {
        self.buffer.as_mut()[0] = v;
    }

    /// Sets the message code.
    pub fn set_code(&mut self, v: u8) {
        self.buffer.as_mut()[1] = v;
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, v: u16) {
        self.buffer.as_mut()[2..4].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the 4-byte message body after the checksum (the MTU of a packet-too-big, zero for
    /// a destination-unreachable).
    pub fn set_mtu(&mut self, v: u32) {
        self.buffer.as_mut()[4..8].copy_from_slice(&v.to_be_bytes());
    }

    /// The bytes after the header, writable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }

    /// Computes and writes the checksum over the whole buffer and the pseudo-header for `src`
    /// and `dst`.
    pub fn fill_checksum(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        self.set_checksum(0);
        let b = self.buffer.as_ref();
        let pseudo = checksum::pseudo_header6(src, dst, next_header::ICMPV6, b.len() as u32);
        let c = !checksum::fold(pseudo + checksum::sum(b));
        self.set_checksum(c);
    }
}

/// Why no ICMPv6 error may be sent for a packet (RFC 4443 section 2.4(e)).
///
/// Unlike ICMPv4 there is no fragment rule: RFC 4443 answers non-initial fragments too, and
/// one cannot be part of an ICMPv6 error, which always fits the minimum MTU unfragmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoReply {
    /// The offending packet is not a parseable IPv6 packet (extension headers included).
    #[error("offending packet is not IPv6")]
    NotIpv6,
    /// The offending packet is itself an ICMPv6 error or a redirect.
    #[error("offending packet is an ICMPv6 error or redirect")]
    IcmpError,
    /// The offending source does not name a single node (unspecified, multicast, loopback).
    #[error("offending source is not a unicast host")]
    BadSource,
    /// The offending destination is multicast (allowed for packet too big only).
    #[error("offending destination is multicast")]
    GroupDestination,
    /// The output buffer is too small.
    #[error("output buffer too small")]
    NoRoom,
}

/// Writes an IPv6 packet carrying an ICMPv6 destination-unreachable about `offending` into
/// `out`.
///
/// The reply comes from `from` (the node's gateway address on the TUN) and goes to the
/// offending packet's source; it quotes as much of the offending packet as fits in 1280
/// bytes. Returns the reply's length, or why no reply may be sent.
pub fn write_unreachable(
    offending: &[u8],
    from: Ipv6Addr,
    why: Unreachable,
    out: &mut [u8],
) -> core::result::Result<usize, NoReply> {
    let error = Error {
        msg_type: msg_type::DEST_UNREACHABLE,
        code: why.code(),
        body: 0,
    };
    write_error(offending, from, error, out)
}

/// Writes an IPv6 packet carrying an ICMPv6 packet-too-big about `offending` into `out`,
/// telling its source that the next link carries at most `mtu` bytes (RFC 4443 section 3.2,
/// RFC 8201).
///
/// As [`write_unreachable`], except that a multicast destination gets a reply too (RFC 4443
/// section 2.4(e.3)), so multicast path MTU discovery works.
pub fn write_packet_too_big(
    offending: &[u8],
    from: Ipv6Addr,
    mtu: u32,
    out: &mut [u8],
) -> core::result::Result<usize, NoReply> {
    let error = Error {
        msg_type: msg_type::PACKET_TOO_BIG,
        code: 0,
        body: mtu,
    };
    write_error(offending, from, error, out)
}

/// The ICMPv6 error to write: its type, code and 4-byte body.
struct Error {
    msg_type: u8,
    code: u8,
    body: u32,
}

fn write_error(
    offending: &[u8],
    from: Ipv6Addr,
    error: Error,
    out: &mut [u8],
) -> core::result::Result<usize, NoReply> {
    let orig = Ipv6Packet::new_checked(offending).map_err(|_| NoReply::NotIpv6)?;
    let (src, dst) = (orig.src_addr(), orig.dst_addr());
    if src.is_unspecified() || src.is_multicast() || src.is_loopback() {
        return Err(NoReply::BadSource);
    }
    if dst.is_multicast() && error.msg_type != msg_type::PACKET_TOO_BIG {
        return Err(NoReply::GroupDestination);
    }
    let upper = orig.upper_layer().map_err(|_| NoReply::NotIpv6)?;
    if upper.next_header == next_header::ICMPV6 && !upper.non_initial_fragment {
        // An ICMPv6 message whose type lies past the packet's end cannot be told apart from
        // an error: no reply either.
        let is_error_or_redirect = orig
            .packet()
            .get(upper.offset)
            .is_none_or(|&t| t < 128 || t == msg_type::REDIRECT);
        if is_error_or_redirect {
            return Err(NoReply::IcmpError);
        }
    }
    let quoted = orig.packet();
    let quote_len = quoted
        .len()
        .min(MAX_ERROR_LEN - ipv6::HEADER_LEN - HEADER_LEN);
    let icmp_len = HEADER_LEN + quote_len;
    let total = ipv6::HEADER_LEN + icmp_len;
    if out.len() < total {
        return Err(NoReply::NoRoom);
    }
    let out = &mut out[..total];
    let repr = Ipv6Repr {
        src: from,
        dst: src,
        next_header: next_header::ICMPV6,
        payload_len: icmp_len as u16,
        hop_limit: ERROR_HOP_LIMIT,
        traffic_class: 0,
        flow_label: 0,
    };
    repr.emit(&mut Ipv6Packet::new_unchecked(&mut out[..]));
    let mut icmp = Icmpv6Packet::new_unchecked(&mut out[ipv6::HEADER_LEN..]);
    icmp.set_msg_type(error.msg_type);
    icmp.set_code(error.code);
    icmp.set_mtu(error.body);
    icmp.data_mut().copy_from_slice(&quoted[..quote_len]);
    icmp.fill_checksum(from, src);
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: Ipv6Addr = Ipv6Addr::new(0xfd10, 0, 0, 1, 0, 0, 0, 2);
    const GONE: Ipv6Addr = Ipv6Addr::new(0xfd10, 0, 0, 9, 0, 0, 0, 2);
    const GW: Ipv6Addr = Ipv6Addr::new(0xfd10, 0, 0, 1, 0, 0, 0, 0);

    /// An ICMPv6 message of type `t` from `src` to `dst`, `data_len` bytes after its header,
    /// behind the extension headers `ext` (the first one's type is `first`).
    fn icmp6(src: Ipv6Addr, dst: Ipv6Addr, t: u8, data_len: usize, ext: (u8, &[u8])) -> Vec<u8> {
        let (first, ext) = ext;
        let icmp_len = HEADER_LEN + data_len;
        let mut b = vec![0xa5u8; 40 + ext.len() + icmp_len];
        Ipv6Repr {
            src,
            dst,
            next_header: if ext.is_empty() { 58 } else { first },
            payload_len: (ext.len() + icmp_len) as u16,
            hop_limit: 64,
            traffic_class: 0,
            flow_label: 0,
        }
        .emit(&mut Ipv6Packet::new_unchecked(&mut b[..]));
        b[40..40 + ext.len()].copy_from_slice(ext);
        let mut icmp = Icmpv6Packet::new_unchecked(&mut b[40 + ext.len()..]);
        icmp.set_msg_type(t);
        icmp.set_code(0);
        icmp.set_mtu(0x0001_0002);
        icmp.fill_checksum(src, dst);
        b
    }

    fn echo_request(src: Ipv6Addr, dst: Ipv6Addr, data_len: usize) -> Vec<u8> {
        icmp6(src, dst, msg_type::ECHO_REQUEST, data_len, (0, &[]))
    }

    /// Checks a reply's IPv6 and ICMPv6 headers and checksum; returns its ICMPv6 part.
    fn reply(out: &[u8]) -> Icmpv6Packet<&[u8]> {
        let ip = Ipv6Packet::new_checked(out).unwrap();
        assert_eq!(ip.packet().len(), out.len());
        let repr = Ipv6Repr::parse(&ip).unwrap();
        assert_eq!((repr.src, repr.dst), (GW, POD));
        assert_eq!((repr.next_header, repr.hop_limit), (58, 64));
        let icmp = Icmpv6Packet::new_checked(&out[40..]).unwrap();
        assert!(icmp.verify_checksum(GW, POD));
        assert!(icmp.is_error());
        icmp
    }

    #[test]
    fn echo_request_view() {
        let req = echo_request(POD, GONE, 4);
        let icmp = Icmpv6Packet::new_checked(&req[40..]).unwrap();
        assert_eq!((icmp.msg_type(), icmp.code()), (128, 0));
        assert_eq!((icmp.echo_ident(), icmp.echo_seq()), (1, 2));
        assert_eq!(icmp.data(), &[0xa5; 4]);
        assert!(icmp.verify_checksum(POD, GONE));
        assert!(!icmp.verify_checksum(POD, GW));
        assert!(!icmp.is_error());
        assert_eq!(
            Icmpv6Packet::new_checked(&req[40..47]).unwrap_err(),
            WireError::Truncated
        );
    }

    #[test]
    fn unreachable_reply_is_well_formed() {
        let req = echo_request(POD, GONE, 56);
        let mut out = [0xa5u8; 1400];
        let n = write_unreachable(&req, GW, Unreachable::NoRoute, &mut out).unwrap();
        assert_eq!(n, 40 + 8 + req.len());
        let icmp = reply(&out[..n]);
        assert_eq!((icmp.msg_type(), icmp.code(), icmp.mtu()), (1, 0, 0));
        assert_eq!(icmp.data(), &req[..]);
        let n = write_unreachable(&req, GW, Unreachable::Port, &mut out).unwrap();
        assert_eq!(reply(&out[..n]).code(), 4);
    }

    #[test]
    fn packet_too_big_carries_mtu_and_quote_is_bounded() {
        let req = echo_request(POD, GONE, 1400);
        let mut out = [0u8; 2000];
        let n = write_packet_too_big(&req, GW, 1430, &mut out).unwrap();
        assert_eq!(n, MAX_ERROR_LEN);
        let icmp = reply(&out[..n]);
        assert_eq!((icmp.msg_type(), icmp.code(), icmp.mtu()), (2, 0, 1430));
        assert_eq!(icmp.data(), &req[..MAX_ERROR_LEN - 48]);
        // Trailing padding after the payload length is not quoted.
        let mut padded = echo_request(POD, GONE, 8);
        let len = padded.len();
        padded.extend_from_slice(&[0; 20]);
        let n = write_packet_too_big(&padded, GW, 1430, &mut out).unwrap();
        assert_eq!(reply(&out[..n]).data(), &padded[..len]);
    }

    #[test]
    fn never_reply_to_errors_redirects_or_bad_sources() {
        let mut out = [0u8; 1400];
        let req = echo_request(POD, GONE, 8);
        let mut err = [0u8; 1400];
        let n = write_unreachable(&req, GW, Unreachable::Address, &mut err).unwrap();
        for write in [write_unreachable_net, write_ptb] {
            assert_eq!(write(&err[..n], &mut out), Err(NoReply::IcmpError));
        }
        let redirect = icmp6(POD, GONE, msg_type::REDIRECT, 32, (0, &[]));
        assert_eq!(
            write_unreachable_net(&redirect, &mut out),
            Err(NoReply::IcmpError)
        );
        // An error behind a destination-options header is still an error.
        let hidden = icmp6(POD, GONE, 3, 8, (60, &[58, 0, 1, 4, 0, 0, 0, 0]));
        assert_eq!(
            write_unreachable_net(&hidden, &mut out),
            Err(NoReply::IcmpError)
        );
        // ... and an echo request behind one is not.
        let echo = icmp6(POD, GONE, 128, 8, (60, &[58, 0, 1, 4, 0, 0, 0, 0]));
        assert!(write_unreachable_net(&echo, &mut out).is_ok());
        let mcast: Ipv6Addr = "ff02::1".parse().unwrap();
        for src in [Ipv6Addr::UNSPECIFIED, mcast, Ipv6Addr::LOCALHOST] {
            let p = echo_request(src, GONE, 8);
            assert_eq!(write_unreachable_net(&p, &mut out), Err(NoReply::BadSource));
            assert_eq!(write_ptb(&p, &mut out), Err(NoReply::BadSource));
        }
        assert_eq!(
            write_unreachable_net(&req[..39], &mut out),
            Err(NoReply::NotIpv6)
        );
        let mut v4 = req.clone();
        v4[0] = 0x45;
        assert_eq!(write_ptb(&v4, &mut out), Err(NoReply::NotIpv6));
        // A routing header that runs past the payload.
        let broken = icmp6(POD, GONE, 128, 0, (43, &[58, 4, 0, 0, 0, 0, 0, 0]));
        assert_eq!(write_ptb(&broken, &mut out), Err(NoReply::NotIpv6));
        assert_eq!(
            write_unreachable_net(&req, &mut out[..100]),
            Err(NoReply::NoRoom)
        );
    }

    #[test]
    fn multicast_destination_gets_only_packet_too_big() {
        let mut out = [0u8; 1400];
        let p = echo_request(POD, "ff05::2".parse().unwrap(), 8);
        assert_eq!(
            write_unreachable_net(&p, &mut out),
            Err(NoReply::GroupDestination)
        );
        let n = write_ptb(&p, &mut out).unwrap();
        assert_eq!(reply(&out[..n]).msg_type(), msg_type::PACKET_TOO_BIG);
    }

    #[test]
    fn non_initial_fragments_get_replies() {
        // Fragment header, offset 1448, next header ICMPv6; the bytes after it are data.
        let frag = [58, 0, 0x05, 0xa8, 0, 0, 0, 1];
        let p = icmp6(POD, GONE, 1, 8, (44, &frag));
        let mut out = [0u8; 1400];
        let n = write_unreachable_net(&p, &mut out).unwrap();
        assert_eq!(reply(&out[..n]).data(), &p[..]);
        // An initial fragment of an ICMPv6 error is still an error.
        let first = [58, 0, 0, 1, 0, 0, 0, 1];
        let p = icmp6(POD, GONE, 1, 8, (44, &first));
        assert_eq!(write_unreachable_net(&p, &mut out), Err(NoReply::IcmpError));
        // An ICMPv6 header cut off before its type: treated as an error, no reply.
        let cut = icmp6(POD, GONE, 128, 0, (60, &[58, 0, 1, 4, 0, 0, 0, 0]));
        let mut ext_only = cut[..48].to_vec();
        ext_only[4..6].copy_from_slice(&8u16.to_be_bytes());
        assert_eq!(
            write_unreachable_net(&ext_only, &mut out),
            Err(NoReply::IcmpError)
        );
    }

    fn write_unreachable_net(p: &[u8], out: &mut [u8]) -> core::result::Result<usize, NoReply> {
        write_unreachable(p, GW, Unreachable::NoRoute, out)
    }

    fn write_ptb(p: &[u8], out: &mut [u8]) -> core::result::Result<usize, NoReply> {
        write_packet_too_big(p, GW, 1280, out)
    }
}
