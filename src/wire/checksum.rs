//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).

use std::net::{Ipv4Addr, Ipv6Addr};

/// The ones'-complement sum of `data` as big-endian 16-bit words (an odd last byte padded
/// with zero), folded to 16 bits and returned in a u64 so callers can add more sums (e.g.
/// [`pseudo_header`]) before the final [`fold`].
///
/// The words are summed in native byte order, 32 bits at a time into a 64-bit accumulator
/// (no overflow for any length an IPv4 header can describe), and the folded result is
/// byte-swapped to big-endian at the end: the ones'-complement sum commutes with swapping the
/// bytes of every word (RFC 1071, section 2.B). Without per-word swaps the loop vectorizes.
pub fn sum(data: &[u8]) -> u64 {
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        acc += u64::from(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
    }
    let rest = chunks.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    acc += u64::from(u32::from_ne_bytes(tail));
    u64::from(u16::from_be(fold(acc)))
}

/// Folds an accumulator into a 16-bit ones'-complement sum (not inverted).
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The Internet checksum of `data`: the inverted, folded ones'-complement sum.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data))
}

/// The unfolded sum of the IPv4 pseudo-header (RFC 768, RFC 793) for `proto` and `len`.
pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: u16) -> u64 {
    u64::from(u32::from(src)) + u64::from(u32::from(dst)) + u64::from(proto) + u64::from(len)
}

/// The unfolded sum of the IPv6 upper-layer pseudo-header (RFC 8200 section 8.1): source and
/// destination, the upper-layer packet length `len` as 32 bits, and `next_header` (the
/// upper-layer protocol, not an extension header's). Add the upper-layer packet's
/// [`sum`] and [`fold`], as with [`pseudo_header`].
pub fn pseudo_header6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, len: u32) -> u64 {
    addr6_sum(src) + addr6_sum(dst) + u64::from(len) + u64::from(next_header)
}

/// An IPv6 address as the sum of its four big-endian 32-bit words: a 32-bit word `hi:lo` is
/// `hi * 2^16 + lo`, which [`fold`] reduces to `hi + lo`, as for the IPv4 addresses in
/// [`pseudo_header`].
fn addr6_sum(a: Ipv6Addr) -> u64 {
    let v = u128::from(a);
    u64::from(v as u32)
        + u64::from((v >> 32) as u32)
        + u64::from((v >> 64) as u32)
        + u64::from((v >> 96) as u32)
}

/// Updates a checksum after one 16-bit word changed from `old` to `new` (RFC 1624, eqn. 3).
pub fn update(csum: u16, old: u16, new: u16) -> u16 {
    // HC' = ~(~HC + ~m + m')
    !fold(u64::from(!csum) + u64::from(!old) + u64::from(new))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the sum of these words is 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(fold(sum(&[0x12, 0x34, 0x56])), 0x1234 + 0x5600);
        assert_eq!(fold(sum(&[])), 0);
    }

    /// RFC 1071 the slow way: big-endian 16-bit words, end-around carry.
    fn reference(data: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        for pair in data.chunks(2) {
            let w = u32::from(pair[0]) << 8 | u32::from(*pair.get(1).unwrap_or(&0));
            acc += w;
            acc = (acc & 0xffff) + (acc >> 16);
        }
        acc as u16
    }

    #[test]
    fn native_order_sum_matches_the_reference() {
        let mut x: u32 = 0x1234_5678;
        let data: Vec<u8> = (0..3001)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        for len in (0..64).chain([1447, 1448, 1500, 3000, 3001]) {
            let d = &data[..len];
            let want = reference(d);
            let got = fold(sum(d));
            // 0x0000 and 0xffff are the same number in ones' complement.
            assert!(
                got == want || (got, want) == (0, 0xffff) || (got, want) == (0xffff, 0),
                "len {len}: {got:#x} != {want:#x}"
            );
        }
        assert_eq!(fold(sum(&[0xff; 64])), 0xffff);
        // Sums of pieces at even offsets add up to the sum of the whole.
        let whole = fold(sum(&data[..1500]));
        let parts = fold(sum(&data[..600]) + sum(&data[600..1500]));
        assert_eq!(whole, parts);
    }

    #[test]
    fn ipv6_pseudo_header_matches_the_layout() {
        // RFC 8200 section 8.1: src (16), dst (16), length (4), three zero bytes, next header.
        let src: Ipv6Addr = "fd10:0:0:1::2".parse().unwrap();
        let dst: Ipv6Addr = "fd10:0:0:2:8000:ffff:1234:abcd".parse().unwrap();
        let ones = Ipv6Addr::from(u128::MAX);
        for (src, dst, nh, len) in [
            (src, dst, 6u8, 1440u32),
            (dst, src, 58, 8),
            (src, dst, 17, 0x0001_0010),
            (ones, ones, 255, u32::MAX),
        ] {
            let mut layout = Vec::new();
            layout.extend_from_slice(&src.octets());
            layout.extend_from_slice(&dst.octets());
            layout.extend_from_slice(&len.to_be_bytes());
            layout.extend_from_slice(&[0, 0, 0, nh]);
            assert_eq!(
                fold(pseudo_header6(src, dst, nh, len)),
                fold(sum(&layout)),
                "next header {nh}, length {len}"
            );
        }
    }

    #[test]
    fn incremental_matches_full() {
        let mut hdr = [
            0x45u8, 0x00, 0x00, 0x54, 0x12, 0x34, 0x40, 0x00, 0x40, 0x01, 0x00, 0x00, 10, 1, 2, 3,
            10, 1, 3, 4,
        ];
        let c = checksum(&hdr);
        hdr[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(checksum(&hdr), 0);
        // Decrement TTL: word at offset 8 changes.
        let old = u16::from_be_bytes([hdr[8], hdr[9]]);
        hdr[8] -= 1;
        let new = u16::from_be_bytes([hdr[8], hdr[9]]);
        let c2 = update(c, old, new);
        hdr[10..12].copy_from_slice(&c2.to_be_bytes());
        assert_eq!(checksum(&hdr), 0);
    }
}
