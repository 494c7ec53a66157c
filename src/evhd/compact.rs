//! Compacting an unlocked container in place (see [`crate::compact`]).
//!
//! Three steps, each ending in a commit or a cut that leaves the content
//! as it was:
//!
//! 1. every stored block is decrypted and, when its plaintext is all
//!    zeros, its entry becomes unallocated (slot 0, as a write of zeros
//!    makes it); one journaled commit;
//! 2. with `n` blocks still stored, each block in a slot above `n` is
//!    copied (ciphertext as it is: the AAD binds the block index and
//!    generation, not the slot) into a slot at most `n` that the committed
//!    table does not use, and one commit switches the entries and lowers
//!    the slot count to `n`. The copies go only where nothing committed
//!    points, so a crash before the commit leaves the old table valid;
//! 3. the file is cut after slot `n`.
//!
//! Quick mode stops after step 1 and punches holes over every free slot.
//! The journal and table stay where they are.

use super::table::ENTRIES_PER_PAGE;
use super::{DATA, EvhdDisk};
use crate::compact::{CompactReport, Mode, copy_blocks, punch};
use crate::disk::{VirtualDisk, is_zero};
use crate::error::Result;
use crate::io::io_err;

/// Blocks decrypted at a time while looking for zero blocks.
const SCAN_BLOCKS: u64 = 64;

impl EvhdDisk {
    /// Compact this container in place (opened writable).
    pub(crate) fn compact(mut self, mode: Mode) -> Result<CompactReport> {
        let r = self.compact_inner(mode);
        if r.is_err() {
            self.abandon();
        }
        r
    }

    fn compact_inner(&mut self, mode: Mode) -> Result<CompactReport> {
        self.ensure_writable()?;
        self.refuse_damaged("compact")?;
        const S: &str = "EVHD file";
        let size_before = self.image.storage.len().map_err(io_err(S, 0))?;
        let mut report = CompactReport {
            size_before,
            size_after: size_before,
            ..CompactReport::default()
        };
        self.commit()?;
        report.blocks_dropped = self.drop_zero_blocks()?;
        if mode == Mode::Quick {
            let ranges = self.free_ranges();
            (report.bytes_punched, report.punch_refused) =
                punch(self.image.storage.as_ref(), &ranges)?;
            self.close()?;
            return Ok(report);
        }
        report.blocks_moved = self.pack()?;
        self.truncate_data()?;
        report.size_after = self.image.storage.len().map_err(io_err(S, 0))?;
        self.close()?;
        Ok(report)
    }

    /// Store whole block `block` as `data` even when it is all zeros, as
    /// writers that keep zero blocks allocated leave them (the format
    /// allows both); tests of compact make such images with it.
    #[doc(hidden)]
    pub fn store_block(&mut self, block: u64, data: &[u8]) -> Result<()> {
        self.ensure_writable()?;
        let bs = self.block_size();
        if data.len() as u64 != bs || block >= self.state.entries.len() as u64 {
            return Err(crate::error::Error::invalid_argument(format!(
                "block {block} of {} bytes; the disk has {} blocks of {bs} bytes",
                data.len(),
                self.state.entries.len()
            )));
        }
        self.check_page(block)?;
        let mut ct = vec![0u8; bs as usize];
        self.seal(&[(block, data)], &mut ct, true)
    }

    /// Unallocate every stored block whose plaintext is all zeros and
    /// commit; how many.
    fn drop_zero_blocks(&mut self) -> Result<u64> {
        let bs = self.block_size() as usize;
        let blocks = self.state.entries.len() as u64;
        let mut buf = vec![0u8; SCAN_BLOCKS as usize * bs];
        let mut zero = Vec::new();
        let mut b = 0;
        while b < blocks {
            let n = (blocks - b).min(SCAN_BLOCKS);
            if (b..b + n).any(|i| self.state.entries[i as usize].slot != 0) {
                let piece = &mut buf[..n as usize * bs];
                self.read_full_blocks(b, piece)?;
                for (i, plain) in piece.chunks(bs).enumerate() {
                    let block = b + i as u64;
                    if self.state.entries[block as usize].slot != 0 && is_zero(plain) {
                        zero.push(block);
                    }
                }
            }
            b += n;
        }
        buf.fill(0);
        let st = &mut self.state;
        for &b in &zero {
            let e = &mut st.entries[b as usize];
            let old = e.slot;
            *e = super::table::Entry {
                generation: e.generation + 1,
                ..Default::default()
            };
            st.release(old);
            st.dirty.insert(b / ENTRIES_PER_PAGE as u64);
        }
        self.commit()?;
        Ok(zero.len() as u64)
    }

    /// The file ranges of the free slots, merged where they touch.
    fn free_ranges(&self) -> Vec<(u64, u64)> {
        let h = &self.image.header;
        let bs = self.block_size();
        let mut v: Vec<(u64, u64)> = Vec::new();
        for &s in &self.state.free {
            let Some(o) = h.slot_offset(s) else { continue };
            match v.last_mut() {
                Some(last) if last.1 == o => last.1 = o + bs,
                _ => v.push((o, o + bs)),
            }
        }
        v
    }

    /// Move the blocks stored above slot `n` (the number of stored blocks)
    /// into the free slots below it and commit with `n` slots; how many
    /// moved. Needs a committed state (no pending changes).
    pub(super) fn pack(&mut self) -> Result<u64> {
        let bs = self.block_size();
        let n = self.state.entries.iter().filter(|e| e.slot != 0).count() as u64;
        let mut movers: Vec<(u64, u64)> = self
            .state
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.slot > n)
            .map(|(b, e)| (e.slot, b as u64))
            .collect();
        movers.sort_unstable();
        // Free slots up to n: exactly as many as there are movers.
        let holes: Vec<u64> = self
            .state
            .free
            .iter()
            .copied()
            .take_while(|&s| s <= n)
            .collect();
        let storage = self.image.storage.clone();
        // Every hole is a free slot below every mover's: the copies are
        // disjoint and may go in any order.
        let mut copies = Vec::with_capacity(movers.len().min(holes.len()));
        for (&(slot, b), &to_slot) in movers.iter().zip(&holes) {
            let from = self.slot_file_offset(b, slot)?;
            let to = self.slot_file_offset(b, to_slot)?;
            copies.push((from, to, bs));
        }
        copy_blocks(storage.as_ref(), DATA, &copies)?;
        for (&(_, b), &to_slot) in movers.iter().zip(&holes) {
            let st = &mut self.state;
            st.entries[b as usize].slot = to_slot;
            st.dirty.insert(b / ENTRIES_PER_PAGE as u64);
        }
        let moved = movers.len().min(holes.len()) as u64;
        if self.image.header.slot_count != n && moved == movers.len() as u64 {
            self.image.header.slot_count = n;
            self.state.header_dirty = true;
        }
        self.commit()?;
        self.reset_slots();
        Ok(moved)
    }

    /// Cut the file after the last slot (both header copies counting no
    /// more slots first).
    pub(super) fn truncate_data(&mut self) -> Result<()> {
        let h = &self.image.header;
        let end = h.data_offset + h.slot_count * self.block_size();
        let s = self.image.storage.as_ref();
        let len = s.len().map_err(io_err(DATA, end))?;
        if len > end {
            // The older header copy still counts the slots before the
            // pack: one more commit writes the current header over it, so
            // that both copies fit the shorter file.
            self.state.header_dirty = true;
            self.commit()?;
            let s = self.image.storage.as_ref();
            s.set_len(end).map_err(io_err(DATA, end))?;
            s.flush().map_err(io_err(DATA, end))?;
        }
        Ok(())
    }
}
