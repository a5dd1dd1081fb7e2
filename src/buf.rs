//! Packet buffers with headroom and fixed-size I/O batches (allocated once per worker).
//!
//! A [`PacketBuf`] keeps its packet at `data[head..tail]`. Reading from a device or socket
//! fills the bytes from `head` on; encapsulation [`prepend`](PacketBuf::prepend)s headers into
//! the headroom in front; decapsulation [`advance`](PacketBuf::advance)s `head` past them.
//! The payload never moves, and nothing on that path allocates.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// Headroom reserved in front of every packet: VXLAN (8) + inner Ethernet (14), the
/// virtio-net header of an offloading TUN (12), and an outer IPv4 + UDP header (28) for a
/// raw-socket path, rounded up to a cache line.
pub const DEFAULT_HEADROOM: usize = 64;

/// Default buffer capacity (headroom included): one 64 KiB super-packet and its headers.
pub const DEFAULT_CAPACITY: usize = 65536 + DEFAULT_HEADROOM;

/// Batch size of the I/O layer, as wireguard-go uses.
pub const BATCH_SIZE: usize = 128;

/// Why a buffer operation could not be done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BufError {
    /// Not enough headroom left to prepend the header.
    #[error("not enough headroom: need {need}, have {have}")]
    NoHeadroom {
        /// Bytes asked for.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The packet is shorter than the bytes to strip or keep.
    #[error("packet too short: need {need}, have {have}")]
    TooShort {
        /// Bytes asked for.
        need: usize,
        /// Bytes held.
        have: usize,
    },
}

/// One packet buffer: fixed storage with the packet at `data[head..tail]`.
#[derive(Debug)]
pub struct PacketBuf {
    data: Box<[u8]>,
    reserved: usize,
    head: usize,
    tail: usize,
}

impl PacketBuf {
    /// Allocates a buffer of `capacity` bytes whose packets start after `headroom` bytes.
    ///
    /// # Panics
    /// If `headroom` is not below `capacity` (a construction-time programming error).
    pub fn new(capacity: usize, headroom: usize) -> PacketBuf {
        assert!(headroom < capacity, "headroom must leave room for a packet");
        PacketBuf {
            data: vec![0u8; capacity].into_boxed_slice(),
            reserved: headroom,
            head: headroom,
            tail: headroom,
        }
    }

    /// Empties the buffer and restores the full headroom.
    #[inline]
    pub fn reset(&mut self) {
        self.head = self.reserved;
        self.tail = self.reserved;
    }

    /// The packet bytes.
    #[inline]
    pub fn as_slice(&self) -> &[u8] {
        &self.data[self.head..self.tail]
    }

    /// The packet bytes, writable.
    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.data[self.head..self.tail]
    }

    /// The packet length.
    #[inline]
    pub fn len(&self) -> usize {
        self.tail - self.head
    }

    /// Whether the buffer holds no packet bytes.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.tail == self.head
    }

    /// Bytes free in front of the packet.
    #[inline]
    pub fn headroom(&self) -> usize {
        self.head
    }

    /// Bytes free after the packet.
    #[inline]
    pub fn tailroom(&self) -> usize {
        self.data.len() - self.tail
    }

    /// The writable space from the packet start to the end of storage, for a read call;
    /// follow with [`set_len`](Self::set_len).
    #[inline]
    pub fn recv_space(&mut self) -> &mut [u8] {
        &mut self.data[self.head..]
    }

    /// Sets the packet length after a read into [`recv_space`](Self::recv_space); clamped
    /// to the storage.
    #[inline]
    pub fn set_len(&mut self, len: usize) {
        self.tail = (self.head + len).min(self.data.len());
    }

    /// Grows the packet by `n` bytes in front and returns them for the caller to fill.
    #[inline]
    pub fn prepend(&mut self, n: usize) -> Result<&mut [u8], BufError> {
        if n > self.head {
            return Err(BufError::NoHeadroom {
                need: n,
                have: self.head,
            });
        }
        self.head -= n;
        Ok(&mut self.data[self.head..self.head + n])
    }

    /// Strips `n` bytes from the front of the packet.
    #[inline]
    pub fn advance(&mut self, n: usize) -> Result<(), BufError> {
        if n > self.len() {
            return Err(BufError::TooShort {
                need: n,
                have: self.len(),
            });
        }
        self.head += n;
        Ok(())
    }

    /// Shortens the packet to `len` bytes (no-op when already shorter).
    #[inline]
    pub fn truncate(&mut self, len: usize) {
        if len < self.len() {
            self.tail = self.head + len;
        }
    }

    /// Replaces the contents with a copy of `bytes`, at the full headroom.
    pub fn fill_from(&mut self, bytes: &[u8]) -> Result<(), BufError> {
        self.reset();
        let room = self.data.len() - self.head;
        if bytes.len() > room {
            return Err(BufError::TooShort {
                need: bytes.len(),
                have: room,
            });
        }
        self.data[self.head..self.head + bytes.len()].copy_from_slice(bytes);
        self.tail = self.head + bytes.len();
        Ok(())
    }
}

/// Per-slot metadata of a batch: the remote address and, for a GRO read or GSO send, the
/// segment size (quinn-udp's `RecvMeta`/`Transmit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Sender on receive, destination on send.
    pub addr: SocketAddr,
    /// Size of each segment when the buffer carries several datagrams; 0 means one.
    pub segment_size: u16,
}

impl Default for Meta {
    fn default() -> Self {
        Meta {
            addr: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
            segment_size: 0,
        }
    }
}

/// A fixed set of buffers and their metadata, filled and drained as a unit by batched I/O.
#[derive(Debug)]
pub struct Batch {
    bufs: Vec<PacketBuf>,
    meta: Vec<Meta>,
    len: usize,
}

impl Batch {
    /// Allocates a batch of `size` buffers (each `capacity` bytes with `headroom`).
    pub fn new(size: usize, capacity: usize, headroom: usize) -> Batch {
        Batch {
            bufs: (0..size)
                .map(|_| PacketBuf::new(capacity, headroom))
                .collect(),
            meta: vec![Meta::default(); size],
            len: 0,
        }
    }

    /// How many slots the batch has.
    pub fn capacity(&self) -> usize {
        self.bufs.len()
    }

    /// How many slots hold packets.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no slot holds a packet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Empties every slot, restoring full headroom.
    pub fn clear(&mut self) {
        for b in &mut self.bufs[..self.len] {
            b.reset();
        }
        self.len = 0;
    }

    /// Marks the first `n` slots (at most the capacity) as holding packets.
    pub fn set_len(&mut self, n: usize) {
        self.len = n.min(self.bufs.len());
    }

    /// Every slot, filled or not, with its metadata: what a receive call fills.
    pub fn slots_mut(&mut self) -> (&mut [PacketBuf], &mut [Meta]) {
        (&mut self.bufs, &mut self.meta)
    }

    /// The filled slots.
    pub fn packets(&self) -> (&[PacketBuf], &[Meta]) {
        (&self.bufs[..self.len], &self.meta[..self.len])
    }

    /// The filled slots, writable.
    pub fn packets_mut(&mut self) -> (&mut [PacketBuf], &mut [Meta]) {
        (&mut self.bufs[..self.len], &mut self.meta[..self.len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepend_advance_round_trip() {
        let mut b = PacketBuf::new(256, 64);
        b.fill_from(b"inner").unwrap();
        assert_eq!((b.headroom(), b.len()), (64, 5));
        b.prepend(3).unwrap().copy_from_slice(b"hdr");
        assert_eq!(b.as_slice(), b"hdrinner");
        assert_eq!(b.headroom(), 61);
        b.advance(3).unwrap();
        assert_eq!(b.as_slice(), b"inner");
        b.truncate(2);
        assert_eq!(b.as_slice(), b"in");
        b.truncate(10);
        assert_eq!(b.as_slice(), b"in");
    }

    #[test]
    fn bounds_are_errors_not_panics() {
        let mut b = PacketBuf::new(16, 4);
        assert_eq!(
            b.prepend(5).unwrap_err(),
            BufError::NoHeadroom { need: 5, have: 4 }
        );
        assert_eq!(
            b.advance(1).unwrap_err(),
            BufError::TooShort { need: 1, have: 0 }
        );
        assert!(b.fill_from(&[0u8; 13]).is_err());
        b.fill_from(&[1u8; 12]).unwrap();
        assert_eq!(b.tailroom(), 0);
        b.set_len(100);
        assert_eq!(b.len(), 12);
    }

    #[test]
    fn recv_space_then_set_len() {
        let mut b = PacketBuf::new(32, 8);
        let space = b.recv_space();
        assert_eq!(space.len(), 24);
        space[..4].copy_from_slice(b"abcd");
        b.set_len(4);
        assert_eq!(b.as_slice(), b"abcd");
    }

    #[test]
    fn batch_slots() {
        let mut batch = Batch::new(4, 128, 32);
        assert_eq!(batch.capacity(), 4);
        let (bufs, meta) = batch.slots_mut();
        bufs[0].fill_from(b"one").unwrap();
        meta[0].segment_size = 3;
        batch.set_len(9);
        assert_eq!(batch.len(), 4);
        batch.set_len(1);
        assert_eq!(batch.packets().0[0].as_slice(), b"one");
        batch.clear();
        assert!(batch.is_empty());
        assert!(batch.slots_mut().0[0].is_empty());
    }
}
