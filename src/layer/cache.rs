//! A bounded cache of sector bitmaps, so that reading a partially stored
//! block does not read its bitmap from the file again on every read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Most bitmap bytes held at once: a VHDX block of 256 MiB with 512-byte
/// sectors has a 64 KiB bitmap, a VHD block of 2 MiB one of 512 bytes, so
/// this holds at least 128 of the largest and 8192 of the common ones.
pub const MAX_CACHED_BYTES: usize = 8 << 20;
/// Most bitmaps held at once, whatever their size.
pub const MAX_CACHED_BITMAPS: usize = 8192;

/// Sector bitmaps of single blocks, by block number, least recently used
/// dropped first. Writes that change a block's bitmap drop its entry
/// ([`BitmapCache::invalidate`]) before they change it.
#[derive(Debug, Default)]
pub(crate) struct BitmapCache {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Block -> (bitmap, last use).
    entries: HashMap<u64, (Arc<[u8]>, u64)>,
    bytes: usize,
    clock: u64,
}

impl BitmapCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave the map inconsistent: every
        // change below is made whole under the lock.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached bitmap of `block`.
    pub fn get(&self, block: u64) -> Option<Arc<[u8]>> {
        let mut g = self.lock();
        g.clock += 1;
        let now = g.clock;
        g.entries.get_mut(&block).map(|(bits, used)| {
            *used = now;
            bits.clone()
        })
    }

    /// Keep `bits` as the bitmap of `block`, dropping the least recently
    /// used half when the cache is full (one selection per many inserts,
    /// not a scan per insert).
    pub fn insert(&self, block: u64, bits: Arc<[u8]>) {
        if bits.len() > MAX_CACHED_BYTES {
            return;
        }
        let mut g = self.lock();
        g.clock += 1;
        let now = g.clock;
        if let Some((old, _)) = g.entries.insert(block, (bits.clone(), now)) {
            g.bytes -= old.len();
        }
        g.bytes += bits.len();
        // Each round halves the entries; a single entry always fits.
        while g.bytes > MAX_CACHED_BYTES || g.entries.len() > MAX_CACHED_BITMAPS {
            let mut uses: Vec<u64> = g.entries.values().map(|(_, u)| *u).collect();
            let mid = uses.len() / 2;
            let (_, &mut cut, _) = uses.select_nth_unstable(mid);
            g.entries.retain(|_, (_, u)| *u >= cut);
            g.bytes = g.entries.values().map(|(b, _)| b.len()).sum();
        }
    }

    /// Forget the bitmap of `block` (it is about to change).
    pub fn invalidate(&self, block: u64) {
        let mut g = self.lock();
        if let Some((old, _)) = g.entries.remove(&block) {
            g.bytes -= old.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_what_was_inserted_until_invalidated() {
        let c = BitmapCache::default();
        assert!(c.get(3).is_none());
        c.insert(3, Arc::from(vec![0xf0u8; 16]));
        assert_eq!(c.get(3).as_deref(), Some(&[0xf0u8; 16][..]));
        c.invalidate(3);
        assert!(c.get(3).is_none());
    }

    #[test]
    fn stays_within_its_bounds_and_keeps_recent_entries() {
        let c = BitmapCache::default();
        for b in 0..(MAX_CACHED_BITMAPS as u64 + 10) {
            c.insert(b, Arc::from(vec![0u8; 8]));
            // Block 0 is used all the time: it must survive the evictions.
            assert!(c.get(0).is_some(), "block 0 evicted at {b}");
        }
        let g = c.lock();
        assert!(g.entries.len() <= MAX_CACHED_BITMAPS);
        assert_eq!(g.bytes, g.entries.len() * 8);
        drop(g);
        let big = MAX_CACHED_BYTES / 4 + 1;
        for b in 0..8 {
            c.insert(1000 + b, Arc::from(vec![0u8; big]));
        }
        assert!(c.lock().bytes <= MAX_CACHED_BYTES);
        c.insert(99, Arc::from(vec![0u8; MAX_CACHED_BYTES + 1]));
        assert!(
            c.get(99).is_none(),
            "a bitmap larger than the cache is not kept"
        );
    }
}
