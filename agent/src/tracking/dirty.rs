//! The dirty map: one bit per chunk of the device.
//!
//! Bits are atomics so that the tracker can set them while the pre-copier
//! clears them on another thread. The pre-copier clears a bit *before* it
//! reads the chunk: a write that completes after the clear sets it again,
//! so a chunk is never left clean with stale data.

use std::sync::atomic::{AtomicU64, Ordering};

pub struct DirtyMap {
    chunk_size: u64,
    device_size: u64,
    chunks: u64,
    words: Vec<AtomicU64>,
}

impl DirtyMap {
    /// A clean map for a device of `device_size` bytes.
    pub fn new(device_size: u64, chunk_size: u32) -> Self {
        let chunk_size = chunk_size as u64;
        let chunks = device_size.div_ceil(chunk_size);
        let words = (0..chunks.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        DirtyMap {
            chunk_size,
            device_size,
            chunks,
            words,
        }
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }
    pub fn chunks(&self) -> u64 {
        self.chunks
    }
    pub fn device_size(&self) -> u64 {
        self.device_size
    }

    /// Marks every chunk touched by `[offset, offset+len)`; returns how many
    /// were clean before.
    pub fn mark_range(&self, offset: u64, len: u64) -> u64 {
        if len == 0 || offset >= self.device_size {
            return 0;
        }
        let first = offset / self.chunk_size;
        let last = ((offset + len - 1) / self.chunk_size).min(self.chunks - 1);
        let mut newly = 0;
        for c in first..=last {
            if self.set(c) {
                newly += 1;
            }
        }
        newly
    }

    /// Marks chunk `c`; true if it was clean.
    pub fn set(&self, c: u64) -> bool {
        let bit = 1u64 << (c % 64);
        self.words[(c / 64) as usize].fetch_or(bit, Ordering::AcqRel) & bit == 0
    }

    /// Clears chunk `c`; true if it was dirty.
    pub fn clear(&self, c: u64) -> bool {
        let bit = 1u64 << (c % 64);
        self.words[(c / 64) as usize].fetch_and(!bit, Ordering::AcqRel) & bit != 0
    }

    pub fn is_dirty(&self, c: u64) -> bool {
        self.words[(c / 64) as usize].load(Ordering::Acquire) & (1u64 << (c % 64)) != 0
    }

    /// Marks the whole device (after a loss: everything must be resynced).
    pub fn mark_all(&self) {
        for (i, w) in self.words.iter().enumerate() {
            let base = i as u64 * 64;
            let n = (self.chunks - base).min(64);
            let mask = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
            w.fetch_or(mask, Ordering::AcqRel);
        }
    }

    /// Number of 64-bit words of the map (for saving it).
    pub fn word_count(&self) -> usize {
        self.words.len()
    }

    /// Word `i` of the map: chunks `64 i ..= 64 i + 63`, bit 0 first.
    pub fn word(&self, i: usize) -> u64 {
        self.words[i].load(Ordering::Acquire)
    }

    /// Marks the chunks set in `v` in word `i` (bits past the device's
    /// last chunk are ignored).
    pub fn or_word(&self, i: usize, v: u64) {
        let base = i as u64 * 64;
        let n = (self.chunks - base).min(64);
        let mask = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
        self.words[i].fetch_or(v & mask, Ordering::AcqRel);
    }

    /// Number of dirty chunks.
    pub fn count(&self) -> u64 {
        self.words
            .iter()
            .map(|w| w.load(Ordering::Acquire).count_ones() as u64)
            .sum()
    }

    /// Dirty chunk indices, in order.
    pub fn dirty_chunks(&self) -> Vec<u64> {
        self.iter_dirty().collect()
    }

    /// Dirty chunk indices, in order, one word read at a time: nothing is
    /// allocated however many chunks are dirty (all of them, in a resync).
    pub fn iter_dirty(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(i, w)| {
            let mut v = w.load(Ordering::Acquire);
            std::iter::from_fn(move || {
                if v == 0 {
                    return None;
                }
                let b = v.trailing_zeros() as u64;
                v &= v - 1;
                Some(i as u64 * 64 + b)
            })
        })
    }
}

/// Chunks dirtied recently: two bitsets, rotated every `hot_delay / 2`; a
/// chunk is hot while it is set in either. Pre-copy waits for hot chunks,
/// so a journal block rewritten many times a second is copied once it
/// settles (or at the next point), not on every write.
pub struct HotMap {
    sets: [DirtyMap; 2],
    cur: std::sync::atomic::AtomicUsize,
}

impl HotMap {
    pub fn new(device_size: u64, chunk_size: u32) -> Self {
        HotMap {
            sets: [
                DirtyMap::new(device_size, chunk_size),
                DirtyMap::new(device_size, chunk_size),
            ],
            cur: std::sync::atomic::AtomicUsize::new(0),
        }
    }
    pub fn mark_range(&self, offset: u64, len: u64) {
        self.sets[self.cur.load(Ordering::Acquire)].mark_range(offset, len);
    }
    pub fn is_hot(&self, c: u64) -> bool {
        self.sets[0].is_dirty(c) || self.sets[1].is_dirty(c)
    }
    /// Forgets the older half.
    pub fn rotate(&self) {
        let next = 1 - self.cur.load(Ordering::Acquire);
        for w in &self.sets[next].words {
            w.store(0, Ordering::Release);
        }
        self.cur.store(next, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mark_clear_count() {
        let m = DirtyMap::new(10 * 65536 + 100, 65536);
        assert_eq!(m.chunks(), 11);
        assert_eq!(m.mark_range(65535, 2), 2);
        assert_eq!(m.mark_range(65536, 10), 0);
        assert_eq!(m.dirty_chunks(), vec![0, 1]);
        assert!(m.clear(0) && !m.clear(0));
        m.mark_range(10 * 65536, 1 << 30); // clipped to the last chunk
        assert_eq!(m.dirty_chunks(), vec![1, 10]);
        m.mark_all();
        assert_eq!(m.count(), 11);
    }
}
