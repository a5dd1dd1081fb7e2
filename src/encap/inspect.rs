//! `weft inspect`: what weft's receive checks make of one tunnel payload, layer by layer.
//!
//! It sits beside the decapsulation it explains so that both can never disagree: the verdict
//! is [`decap_vxlan`]/[`decap_udp`]'s own, the layers are read with the same `wire` views. Pure
//! like the rest of `encap`: bytes (or their hex) in, a [`Report`] out, no I/O.

use std::fmt;
use std::net::Ipv4Addr;
use std::num::ParseIntError;

use super::{decap_udp, decap_vxlan, DropReason, VxlanRx};
use crate::wire::ipv4::Protocol;
use crate::wire::{EtherType, EthernetAddress, EthernetFrame, Ipv4Packet, Vni, VxlanPacket};

/// Why a hex payload could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HexError {
    /// The digits do not pair up into bytes.
    #[error("hex payload has an odd number of digits ({0})")]
    OddLength(usize),
    /// Two characters that are not a hex byte.
    #[error("bad hex digits {digits:?} at offset {offset}")]
    BadDigits {
        /// The two characters.
        digits: String,
        /// Where they start among the digits.
        offset: usize,
        /// Why they are not a byte.
        #[source]
        source: ParseIntError,
    },
}

/// Reads a payload written as hex, e.g. by `tcpdump -x`; whitespace and colons are ignored.
pub fn parse_hex(s: &str) -> Result<Vec<u8>, HexError> {
    let digits: String = s
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':')
        .collect();
    if digits.len() % 2 != 0 {
        return Err(HexError::OddLength(digits.len()));
    }
    digits
        .as_bytes()
        .chunks(2)
        .enumerate()
        .map(|(i, pair)| {
            // Pairs of bytes, not of chars: a stray non-ASCII character is reported, not
            // split in the middle.
            let text = String::from_utf8_lossy(pair);
            u8::from_str_radix(&text, 16).map_err(|source| HexError::BadDigits {
                digits: text.into_owned(),
                offset: 2 * i,
                source,
            })
        })
        .collect()
}

/// The receiving node a payload is judged for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receiver {
    /// A vxlan node: its VNI, and its VTEP MAC (`None`: whatever the frame is sent to).
    Vxlan {
        /// The network's VNI.
        vni: Vni,
        /// The node's VTEP MAC.
        vtep_mac: Option<EthernetAddress>,
    },
    /// A udp-backend node (the payload is the inner packet).
    Udp,
}

/// The VXLAN header as found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanLayer {
    /// The flags byte.
    pub flags: u8,
    /// Whether the I flag (VNI valid) is set.
    pub has_vni: bool,
    /// The VNI field.
    pub vni: Vni,
}

/// The inner Ethernet header as found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetLayer {
    /// Source MAC (the sender's VTEP).
    pub src: EthernetAddress,
    /// Destination MAC (the receiver's VTEP).
    pub dst: EthernetAddress,
    /// The EtherType.
    pub ethertype: EtherType,
}

/// The inner IPv4 header of an accepted payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Layer {
    /// Source address (a pod).
    pub src: Ipv4Addr,
    /// Destination address (a pod).
    pub dst: Ipv4Addr,
    /// The transport protocol.
    pub protocol: Protocol,
    /// Total length.
    pub total_len: u16,
    /// Time to live.
    pub ttl: u8,
}

/// What the receive checks make of one payload: each layer that could be read, and the
/// verdict. Displays as `weft inspect` prints it, one line per layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// The VXLAN header (vxlan payloads of at least 8 bytes).
    pub vxlan: Option<VxlanLayer>,
    /// The inner Ethernet header (vxlan payloads long enough to hold one).
    pub ethernet: Option<EthernetLayer>,
    /// The inner IPv4 header (accepted payloads).
    pub ipv4: Option<Ipv4Layer>,
    /// Accepted, or why the node drops the payload.
    pub verdict: Result<(), DropReason>,
}

impl Report {
    /// Runs the receive checks of `rx` over `payload` and describes what they saw.
    pub fn decode(payload: &[u8], rx: &Receiver) -> Report {
        let mut report = Report {
            vxlan: None,
            ethernet: None,
            ipv4: None,
            verdict: Ok(()),
        };
        let inner = match *rx {
            Receiver::Vxlan { vni, vtep_mac } => {
                if let Ok(vx) = VxlanPacket::new_checked(payload) {
                    report.vxlan = Some(VxlanLayer {
                        flags: vx.flags(),
                        has_vni: vx.has_vni(),
                        vni: vx.vni(),
                    });
                    report.ethernet =
                        EthernetFrame::new_checked(vx.payload())
                            .ok()
                            .map(|eth| EthernetLayer {
                                src: eth.src_addr(),
                                dst: eth.dst_addr(),
                                ethertype: eth.ethertype(),
                            });
                }
                // Without --vtep-mac the frame's own destination: only the other checks judge.
                let vtep_mac = vtep_mac.unwrap_or_else(|| {
                    payload
                        .get(8..14)
                        .map(EthernetAddress::from_bytes)
                        .unwrap_or_default()
                });
                decap_vxlan(payload, &VxlanRx { vni, vtep_mac }).map(|i| i.packet)
            }
            Receiver::Udp => decap_udp(payload).map(|i| i.packet),
        };
        match inner {
            Ok(packet) => {
                report.ipv4 = Ipv4Packet::new_checked(packet).ok().map(|ip| Ipv4Layer {
                    src: ip.src_addr(),
                    dst: ip.dst_addr(),
                    protocol: ip.protocol(),
                    total_len: ip.total_len(),
                    ttl: ip.ttl(),
                });
            }
            Err(reason) => report.verdict = Err(reason),
        }
        report
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(vx) = &self.vxlan {
            let i = if vx.has_vni { "set" } else { "clear" };
            writeln!(
                f,
                "vxlan:   flags {:#04x} (I {i}), vni {}",
                vx.flags, vx.vni
            )?;
        }
        if let Some(eth) = &self.ethernet {
            writeln!(
                f,
                "inner:   ethernet {} -> {}, type {:?}",
                eth.src, eth.dst, eth.ethertype
            )?;
        }
        if let Some(ip) = &self.ipv4 {
            writeln!(
                f,
                "inner:   ipv4 {} -> {}, {:?}, {} bytes, ttl {}",
                ip.src, ip.dst, ip.protocol, ip.total_len, ip.ttl
            )?;
        }
        match self.verdict {
            Ok(()) => writeln!(f, "verdict: accepted"),
            Err(reason) => writeln!(f, "verdict: dropped ({reason})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encap::VXLAN_ENCAP_LEN;

    /// A vxlan payload as a Linux VXLAN device sent it (proto/golden, udp-5000): VNI 1, inner
    /// Ethernet c6:d2:32:6f:8f:44 -> 5e:a4:8b:11:22:33, UDP 10.1.15.0 -> 10.1.16.2.
    const VXLAN_UDP: &str = "08000000000001005ea48b112233c6d2326f8f4408004500002fdc98400040112b220a010f000a0110029c411388001b896b7765667420676f6c64656e20766563746f720a";

    fn vxlan(vni: u32, vtep_mac: Option<EthernetAddress>) -> Receiver {
        Receiver::Vxlan {
            vni: Vni::new(vni).unwrap(),
            vtep_mac,
        }
    }

    #[test]
    fn hex_with_separators_and_errors() {
        assert_eq!(parse_hex("08:00 0a\n0B").unwrap(), [8, 0, 10, 11]);
        assert_eq!(parse_hex("").unwrap(), [] as [u8; 0]);
        let e = parse_hex("abc").unwrap_err();
        assert_eq!(e.to_string(), "hex payload has an odd number of digits (3)");
        let e = parse_hex("00zz").unwrap_err();
        assert_eq!(e.to_string(), "bad hex digits \"zz\" at offset 2");
        assert!(std::error::Error::source(&e).is_some());
        // A multi-byte character is an error, not a panic.
        assert!(parse_hex("aé0").is_err());
        assert!(parse_hex("éé").is_err());
    }

    #[test]
    fn accepted_vxlan_payload_shows_every_layer() {
        let payload = parse_hex(VXLAN_UDP).unwrap();
        let r = Report::decode(&payload, &vxlan(1, None));
        assert_eq!(r.verdict, Ok(()));
        assert_eq!(
            r.to_string(),
            "vxlan:   flags 0x08 (I set), vni 1\n\
             inner:   ethernet c6:d2:32:6f:8f:44 -> 5e:a4:8b:11:22:33, type Ipv4\n\
             inner:   ipv4 10.1.15.0 -> 10.1.16.2, Udp, 47 bytes, ttl 64\n\
             verdict: accepted\n"
        );
    }

    #[test]
    fn dropped_payloads_name_the_reason() {
        let payload = parse_hex(VXLAN_UDP).unwrap();
        let r = Report::decode(&payload, &vxlan(2, None));
        assert_eq!(r.verdict, Err(DropReason::WrongVni));
        assert!(r.ipv4.is_none());
        assert!(r.to_string().ends_with("verdict: dropped (wrong_vni)\n"));
        let other_mac = EthernetAddress::from_bytes(&[2, 0, 0, 0, 0, 1]);
        let r = Report::decode(&payload, &vxlan(1, Some(other_mac)));
        assert_eq!(r.verdict, Err(DropReason::WrongInnerMac));
        // Too short for any header: no layer, just the verdict.
        let r = Report::decode(&[8, 0], &vxlan(1, None));
        assert_eq!(r.to_string(), "verdict: dropped (truncated)\n");
    }

    #[test]
    fn udp_payload_is_the_inner_packet() {
        let payload = parse_hex(VXLAN_UDP).unwrap();
        let r = Report::decode(&payload[VXLAN_ENCAP_LEN..], &Receiver::Udp);
        assert_eq!(
            r.to_string(),
            "inner:   ipv4 10.1.15.0 -> 10.1.16.2, Udp, 47 bytes, ttl 64\nverdict: accepted\n"
        );
        // The VXLAN payload read as udp: its first nibble is no IP version.
        let r = Report::decode(&payload, &Receiver::Udp);
        assert_eq!(r.verdict, Err(DropReason::InnerMalformed));
    }
}
