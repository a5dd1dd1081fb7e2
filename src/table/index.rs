//! The lease table's hash index: open addressing from a key (a masked destination or an
//! underlay address) to a position in a peer array.
//!
//! Power-of-two capacity, load factor at most 1/2, linear probing, Fibonacci
//! (multiplicative) hashing. The index is generic over its key: `u32` for IPv4, `u64` for
//! IPv6 prefixes of at most 64 bits (the upper half of the address is the whole key) and
//! [`Key128`] for longer prefixes and IPv6 underlay addresses. The caller hashes: it passes
//! the word whose bits vary most (the subnet number, or a folded address).

/// Marks an empty slot.
pub(super) const EMPTY: u32 = u32::MAX;

/// The word a key is hashed through.
pub(super) trait Word: Copy {
    /// Width in bits, from which the shift that keeps the top bits is derived.
    const BITS: u32;

    /// Fibonacci hashing: multiply by 2^BITS/phi and keep the bits above `shift`.
    fn fib_hash(self, shift: u32) -> usize;
}

impl Word for u32 {
    const BITS: u32 = 32;

    #[inline(always)]
    fn fib_hash(self, shift: u32) -> usize {
        (self.wrapping_mul(0x9E37_79B9) >> shift) as usize
    }
}

impl Word for u64 {
    const BITS: u32 = 64;

    #[inline(always)]
    fn fib_hash(self, shift: u32) -> usize {
        (self.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> shift) as usize
    }
}

/// A key the index can hold: compared whole, hashed through [`Key::Word`].
pub(super) trait Key: Copy + Eq {
    /// What the caller hashes for this key.
    type Word: Word;
    /// The key stored in empty slots (never compared: an empty slot ends a probe first).
    const FILL: Self;
}

impl Key for u32 {
    type Word = u32;
    const FILL: u32 = 0;
}

impl Key for u64 {
    type Word = u64;
    const FILL: u64 = 0;
}

/// A 128-bit key as two halves: a slot is then 24 bytes, where `u128`'s 16-byte alignment
/// would make it 32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Key128 {
    /// The upper 64 bits (network order's first eight bytes).
    pub(super) hi: u64,
    /// The lower 64 bits.
    pub(super) lo: u64,
}

impl Key for Key128 {
    type Word = u64;
    const FILL: Key128 = Key128 { hi: 0, lo: 0 };
}

impl From<u128> for Key128 {
    #[inline(always)]
    fn from(k: u128) -> Key128 {
        Key128 {
            hi: (k >> 64) as u64,
            lo: k as u64,
        }
    }
}

/// Folds 128 bits to the 64 the hash takes; every bit counts.
#[inline(always)]
pub(super) fn fold(x: u128) -> u64 {
    (x as u64) ^ ((x >> 64) as u64)
}

/// An open-addressing index from a key to a position in a peer array.
#[derive(Debug, Clone)]
pub(super) struct Index<K> {
    /// `(key, position)`; position `EMPTY` marks a free slot.
    slots: Box<[(K, u32)]>,
    /// `Word::BITS - log2(capacity)`: how far to shift the hash.
    shift: u32,
    /// `capacity - 1`.
    mask: usize,
}

impl<K: Key> Index<K> {
    /// An empty index with room for `n` keys at a load factor of at most 1/2.
    pub(super) fn with_capacity_for(n: usize) -> Index<K> {
        let cap = (n.saturating_mul(2)).max(8).next_power_of_two();
        Index {
            slots: vec![(K::FILL, EMPTY); cap].into_boxed_slice(),
            shift: K::Word::BITS - cap.trailing_zeros(),
            mask: cap - 1,
        }
    }

    /// Inserts `key` unless present; returns whether it was inserted.
    pub(super) fn insert(&mut self, key: K, hashed: K::Word, pos: u32) -> bool {
        let mut i = hashed.fib_hash(self.shift);
        loop {
            let slot = &mut self.slots[i];
            if slot.1 == EMPTY {
                *slot = (key, pos);
                return true;
            }
            if slot.0 == key {
                return false;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// The position stored for `key`, which hashes through `hashed`.
    #[inline(always)]
    pub(super) fn find(&self, key: K, hashed: K::Word) -> Option<u32> {
        let mut i = hashed.fib_hash(self.shift);
        // The load factor is at most 1/2, so an empty slot always ends the probe.
        loop {
            let (k, pos) = self.slots[i];
            if pos == EMPTY {
                return None;
            }
            if k == key {
                return Some(pos);
            }
            i = (i + 1) & self.mask;
        }
    }
}

/// A peer array position as the index stores it. At most a few hundred thousand peers:
/// positions fit in `u32` well below [`EMPTY`].
pub(super) fn position(pos: usize) -> u32 {
    u32::try_from(pos).unwrap_or(EMPTY - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_stay_small() {
        assert_eq!(std::mem::size_of::<(u32, u32)>(), 8);
        assert_eq!(std::mem::size_of::<(u64, u32)>(), 16);
        assert_eq!(std::mem::size_of::<(Key128, u32)>(), 24);
    }

    #[test]
    fn colliding_keys_probe_on() {
        // Every key hashes to the same slot: each is still found, the absent one is not.
        let mut idx: Index<Key128> = Index::with_capacity_for(4);
        for k in 0..4u128 {
            assert!(idx.insert(Key128::from(k << 100 | k), 0, k as u32));
        }
        assert!(!idx.insert(Key128::from(2u128 << 100 | 2), 0, 9));
        for k in 0..4u128 {
            assert_eq!(idx.find(Key128::from(k << 100 | k), 0), Some(k as u32));
        }
        assert_eq!(idx.find(Key128::from(5), 0), None);
        let mut idx: Index<u64> = Index::with_capacity_for(0);
        assert!(idx.insert(7, 1, 0));
        assert_eq!(idx.find(7, 1), Some(0));
        assert_eq!(idx.find(8, 1), None);
    }
}
