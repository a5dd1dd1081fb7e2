//! TCP headers (RFC 9293): the segments weft splits (GSO) and merges (GRO) for the TUN. Only
//! the header is read and written here; TCP state is the endpoints' business.
//!
//! Checksums take the pseudo-header as an unfolded partial sum (for IPv4,
//! [`checksum::pseudo_header`]), so the same code serves IPv4 and IPv6.

use super::checksum;
use super::{Result, WireError};

/// Length of a TCP header without options.
pub const MIN_HEADER_LEN: usize = 20;

/// Offset of the checksum field in the header (the virtio-net `csum_offset` of TCP).
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM.start;

/// FIN: no more data from the sender (RFC 9293 section 3.1).
pub const FIN: u8 = 0x01;
/// SYN: synchronize sequence numbers.
pub const SYN: u8 = 0x02;
/// RST: reset the connection.
pub const RST: u8 = 0x04;
/// PSH: push the data to the application.
pub const PSH: u8 = 0x08;
/// ACK: the acknowledgment field is significant.
pub const ACK: u8 = 0x10;
/// URG: the urgent pointer is significant.
pub const URG: u8 = 0x20;
/// ECE: ECN-Echo (RFC 3168 section 6.1).
pub const ECE: u8 = 0x40;
/// CWR: congestion window reduced (RFC 3168 section 6.1).
pub const CWR: u8 = 0x80;

mod field {
    use core::ops::{Range, RangeFrom};
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const SEQ: Range<usize> = 4..8;
    pub const ACK: Range<usize> = 8..12;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT: Range<usize> = 18..20;
    pub const OPTIONS: RangeFrom<usize> = 20..;
}

/// A view of a TCP segment: the header and everything after it in the buffer as payload (TCP
/// has no length field; the IP layer bounds the segment).
#[derive(Debug, Clone)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Self {
        TcpPacket { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks that the fixed header and the header length the data offset claims fit.
    ///
    /// `Truncated` when the buffer is shorter than 20 bytes or the header length;
    /// `Malformed` when the data offset gives fewer than 20 bytes. After this succeeds no
    /// accessor panics.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let hl = usize::from(self.header_len());
        if hl < MIN_HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if len < hl {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// Returns the wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::SRC_PORT];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::DST_PORT];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Sequence number.
    pub fn seq(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::SEQ];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Acknowledgment number.
    pub fn ack(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::ACK];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// The header length in bytes (data offset * 4), options included.
    pub fn header_len(&self) -> u8 {
        (self.buffer.as_ref()[field::DATA_OFF] >> 4) * 4
    }

    /// The flag byte: [`FIN`], [`SYN`], [`RST`], [`PSH`], [`ACK`], [`URG`], [`ECE`], [`CWR`].
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Window size.
    pub fn window(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::WINDOW];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::CHECKSUM];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Urgent pointer.
    pub fn urgent(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::URGENT];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// The options, as raw bytes (padding included).
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[field::OPTIONS.start..usize::from(self.header_len())]
    }

    /// The header, options included.
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..usize::from(self.header_len())]
    }

    /// The bytes after the header, to the end of the buffer.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[usize::from(self.header_len())..]
    }

    /// Whether the checksum is correct over the whole buffer, given the pseudo-header's
    /// unfolded sum `pseudo` (for IPv4, [`checksum::pseudo_header`] with this segment's
    /// length).
    pub fn verify_checksum(&self, pseudo: u64) -> bool {
        checksum::fold(pseudo + checksum::sum(self.buffer.as_ref())) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    /// Sets the source port.
    pub fn set_src_port(&mut self, v: u16) {
        self.buffer.as_mut()[field::SRC_PORT].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the destination port.
    pub fn set_dst_port(&mut self, v: u16) {
        self.buffer.as_mut()[field::DST_PORT].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the sequence number.
    pub fn set_seq(&mut self, v: u32) {
        self.buffer.as_mut()[field::SEQ].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the acknowledgment number.
    pub fn set_ack(&mut self, v: u32) {
        self.buffer.as_mut()[field::ACK].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the header length (a multiple of 4 from 20 to 60); the reserved bits are cleared.
    pub fn set_header_len(&mut self, len: u8) {
        self.buffer.as_mut()[field::DATA_OFF] = (len / 4) << 4;
    }

    /// Sets the flag byte.
    pub fn set_flags(&mut self, v: u8) {
        self.buffer.as_mut()[field::FLAGS] = v;
    }

    /// Sets the window size.
    pub fn set_window(&mut self, v: u16) {
        self.buffer.as_mut()[field::WINDOW].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the checksum field (e.g. to the folded pseudo-header sum a partial checksum is).
    pub fn set_checksum(&mut self, v: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the urgent pointer.
    pub fn set_urgent(&mut self, v: u16) {
        self.buffer.as_mut()[field::URGENT].copy_from_slice(&v.to_be_bytes());
    }

    /// The options, writable.
    pub fn options_mut(&mut self) -> &mut [u8] {
        let hl = usize::from(self.header_len());
        &mut self.buffer.as_mut()[field::OPTIONS.start..hl]
    }

    /// The bytes after the header, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let hl = usize::from(self.header_len());
        &mut self.buffer.as_mut()[hl..]
    }

    /// Computes and writes the checksum over the buffer, given the unfolded sum `rest` of
    /// everything else it covers: the pseudo-header, and any payload that lies elsewhere
    /// (summed with [`checksum::sum`]; it starts at an even offset, as the header length is a
    /// multiple of 4).
    pub fn fill_checksum(&mut self, rest: u64) {
        self.set_checksum(0);
        let c = !checksum::fold(rest + checksum::sum(self.buffer.as_ref()));
        self.set_checksum(c);
    }
}

/// The parsed form of a TCP header. The urgent pointer is left out (weft never sends urgent
/// data): [`emit`](Self::emit) writes 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpRepr<'a> {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number.
    pub ack: u32,
    /// Flag byte ([`FIN`] ... [`CWR`]).
    pub flags: u8,
    /// Window size.
    pub window: u16,
    /// Options as raw bytes: a multiple of 4, at most 40 (padded with NOP or EOL).
    pub options: &'a [u8],
}

impl<'a> TcpRepr<'a> {
    /// Parses a header (checking its length first); the checksum is not verified here, as it
    /// needs the pseudo-header ([`TcpPacket::verify_checksum`]).
    pub fn parse<T: AsRef<[u8]> + ?Sized>(p: &TcpPacket<&'a T>) -> Result<TcpRepr<'a>> {
        p.check_len()?;
        let hl = usize::from(p.header_len());
        let options = &p.buffer.as_ref()[field::OPTIONS.start..hl];
        Ok(TcpRepr {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            seq: p.seq(),
            ack: p.ack(),
            flags: p.flags(),
            window: p.window(),
            options,
        })
    }

    /// Length of the header this describes, options included.
    pub fn header_len(&self) -> usize {
        MIN_HEADER_LEN + self.options.len()
    }

    /// Writes the header with a zero checksum (fill it with [`TcpPacket::fill_checksum`] once
    /// the payload is in place); the buffer must hold at least [`header_len`](Self::header_len)
    /// bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut TcpPacket<T>) {
        p.set_src_port(self.src_port);
        p.set_dst_port(self.dst_port);
        p.set_seq(self.seq);
        p.set_ack(self.ack);
        p.set_header_len(self.header_len() as u8);
        p.set_flags(self.flags);
        p.set_window(self.window);
        p.set_checksum(0);
        p.set_urgent(0);
        p.options_mut().copy_from_slice(self.options);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4::Protocol;
    use std::net::Ipv4Addr;

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 2);
    const DST: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 2);

    /// 10.1.1.2:40000 -> 10.1.2.2:5201, seq 1000, ack 7, PSH ACK, window 512, the timestamp
    /// option block Linux sends (NOP NOP TS val 9 ecr 3), 4 payload bytes, checksum filled.
    static SEGMENT: [u8; 36] = [
        0x9c, 0x40, 0x14, 0x51, 0x00, 0x00, 0x03, 0xe8, 0x00, 0x00, 0x00, 0x07, 0x80, 0x18, 0x02,
        0x00, 0x0b, 0x82, 0x00, 0x00, 0x01, 0x01, 0x08, 0x0a, 0x00, 0x00, 0x00, 0x09, 0x00, 0x00,
        0x00, 0x03, 0xde, 0xad, 0xbe, 0xef,
    ];

    fn pseudo(len: usize) -> u64 {
        checksum::pseudo_header(SRC, DST, Protocol::Tcp.into(), len as u16)
    }

    #[test]
    fn deconstruct() {
        let p = TcpPacket::new_checked(&SEGMENT[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port()), (40000, 5201));
        assert_eq!((p.seq(), p.ack()), (1000, 7));
        assert_eq!(p.header_len(), 32);
        assert_eq!(p.flags(), PSH | ACK);
        assert_eq!(p.window(), 512);
        assert_eq!(p.urgent(), 0);
        assert_eq!(p.options(), &[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 3]);
        assert_eq!(p.header(), &SEGMENT[..32]);
        assert_eq!(p.payload(), &[0xde, 0xad, 0xbe, 0xef]);
        assert!(p.verify_checksum(pseudo(36)));
        assert!(!p.verify_checksum(pseudo(35)));
        assert_eq!(p.checksum(), 0x0b82);
    }

    #[test]
    fn construct_over_junk_and_round_trip() {
        let repr = TcpRepr::parse(&TcpPacket::new_unchecked(&SEGMENT[..])).unwrap();
        assert_eq!(repr.header_len(), 32);
        let mut out = [0xa5u8; 36];
        let mut p = TcpPacket::new_unchecked(&mut out[..]);
        repr.emit(&mut p);
        p.payload_mut().copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        p.fill_checksum(pseudo(36));
        assert_eq!(out, SEGMENT);
    }

    #[test]
    fn payload_elsewhere_sums_in() {
        // The header alone, its payload summed apart: the checksum GSO writes.
        let mut hdr = [0u8; 32];
        hdr.copy_from_slice(&SEGMENT[..32]);
        let mut p = TcpPacket::new_unchecked(&mut hdr[..]);
        p.fill_checksum(pseudo(36) + checksum::sum(&SEGMENT[32..]));
        assert_eq!(p.checksum(), 0x0b82);
    }

    #[test]
    fn setters() {
        let mut b = SEGMENT;
        let mut p = TcpPacket::new_unchecked(&mut b[..]);
        p.set_flags(p.flags() | FIN | CWR);
        p.set_urgent(0x0102);
        p.options_mut()[0] = 0;
        p.set_header_len(20);
        assert_eq!(b[12..14], [0x50, 0x80 | 0x18 | 0x01]);
        assert_eq!(b[18..21], [0x01, 0x02, 0x00]);
        let p = TcpPacket::new_checked(&b[..]).unwrap();
        assert!(p.options().is_empty());
        assert_eq!(p.payload().len(), 16);
    }

    #[test]
    fn flags_are_distinct_bits() {
        let all = [FIN, SYN, RST, PSH, ACK, URG, ECE, CWR];
        assert_eq!(all.iter().fold(0u8, |a, f| a | f), 0xff);
        assert!(all.iter().all(|f| f.count_ones() == 1));
    }

    #[test]
    fn length_errors() {
        assert_eq!(
            TcpPacket::new_checked(&SEGMENT[..19]).unwrap_err(),
            WireError::Truncated
        );
        assert_eq!(
            TcpPacket::new_checked(&SEGMENT[..31]).unwrap_err(),
            WireError::Truncated
        );
        assert!(TcpPacket::new_checked(&SEGMENT[..32]).is_ok());
        let mut short = SEGMENT;
        short[12] = 0x40; // 16-byte header
        assert_eq!(
            TcpPacket::new_checked(&short[..]).unwrap_err(),
            WireError::Malformed
        );
        assert_eq!(
            TcpRepr::parse(&TcpPacket::new_unchecked(&short[..])).unwrap_err(),
            WireError::Malformed
        );
        let mut long = SEGMENT;
        long[12] = 0xf0; // 60-byte header in 36 bytes
        assert_eq!(
            TcpPacket::new_checked(&long[..]).unwrap_err(),
            WireError::Truncated
        );
    }
}
