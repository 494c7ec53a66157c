//! Compacting a dynamic or differencing VHD in place (see
//! [`crate::compact`]).
//!
//! The BAT is written in place, so each batch of changes goes: moved
//! blocks copied, flush, BAT sectors written, flush. There are two
//! batches: the dropped blocks first, then every move (copies land only
//! in space the first batch freed, see [`crate::compact::plan_moves`]);
//! the BAT itself may then move down (see `move_table_down`). A
//! BAT sector is written whole (the device's atomic unit), and each entry
//! in it points either at the old copy, still intact, or at the new one,
//! durable. The file is cut last: the footer is written at the new end and
//! made durable before the length changes, so the file always ends in a
//! footer.

use std::collections::BTreeMap;

use super::dynamic_header::HEADER_SIZE;
use super::footer::{FOOTER_SIZE, VhdType};
use super::geometry::SECTOR;
use super::{VhdDisk, bat};
use crate::VirtualDisk;
use crate::compact::{
    CompactReport, Freed, Mode, copy_blocks, fixed_refused, par_map, plan_moves, punch, reads_zero,
};
use crate::error::Result;
use crate::fixed::FixedStruct;
use crate::io::io_err;
use crate::layer::parent_read;

impl VhdDisk {
    /// Compact this image in place (opened writable with its parent).
    pub(crate) fn compact(mut self, mode: Mode) -> Result<CompactReport> {
        if self.vhd_type() == VhdType::Fixed {
            return Err(fixed_refused("VHD"));
        }
        self.ensure_writable()?;
        let size_before = self.storage.len().map_err(io_err("VHD file", 0))?;
        let mut report = CompactReport {
            size_before,
            size_after: size_before,
            ..CompactReport::default()
        };
        let sparse = self.sparse.as_ref().expect("sparse");
        let span = sparse.bitmap_size + sparse.block_size;
        let mut live: Vec<(u32, usize)> = sparse
            .bat
            .iter()
            .enumerate()
            .filter(|&(_, &e)| e != bat::UNUSED)
            .map(|(i, &e)| (e, i))
            .collect();
        live.sort_unstable();
        let drop = par_map(live.len(), |k, buf| self.droppable(live[k].1 as u64, buf))?;
        let mut freed = Freed::default();
        let mut pending: BTreeMap<usize, u32> = BTreeMap::new();
        let mut kept: Vec<(u64, usize)> = Vec::new();
        for (&(entry, block), drop) in live.iter().zip(drop) {
            let src = u64::from(entry) * SECTOR;
            if drop {
                pending.insert(block, bat::UNUSED);
                freed.add(src, span);
                report.blocks_dropped += 1;
            } else {
                kept.push((src, block));
            }
        }
        let dropped = freed.merged();
        self.commit_entries(&mut pending)?;
        if mode == Mode::Quick {
            (report.bytes_punched, report.punch_refused) = punch(self.storage.as_ref(), &dropped)?;
            return Ok(report);
        }
        let blocks: Vec<(u64, u64)> = kept.iter().map(|&(s, _)| (s, span)).collect();
        let plan = plan_moves(&blocks, &self.reserved(), SECTOR);
        let copies: Vec<(u64, u64, u64)> = plan
            .moves
            .iter()
            .map(|&(k, to)| (kept[k].0, to, span))
            .collect();
        copy_blocks(self.storage.as_ref(), "VHD block", &copies)?;
        for &(k, to) in &plan.moves {
            pending.insert(kept[k].1, (to / SECTOR) as u32);
            report.blocks_moved += 1;
        }
        self.commit_entries(&mut pending)?;
        let mut placed = blocks;
        for &(k, to) in &plan.moves {
            placed[k].0 = to;
        }
        let end = self.move_table_down(&placed)?;
        self.cut(end.div_ceil(SECTOR) * SECTOR)?;
        report.size_after = self.storage.len().map_err(io_err("VHD file", 0))?;
        Ok(report)
    }

    /// When the BAT is the last structure in the file (a grow moved it
    /// past the blocks) and moving it down shortens the file, move it:
    /// into the lowest free space below it that holds it, or, when only
    /// the table's own space would make that space big enough, first to
    /// the end of the file (the footer moved past it first, as when a
    /// block is appended) and from there down. Each move writes a copy to
    /// free space and makes it durable, then switches the dynamic
    /// header's first sector (table offset and checksum both lie in it:
    /// one atomic write) and makes that durable; only then is the old
    /// table's space free. `placed` are the blocks where they now durably
    /// lie. Returns where the file may end.
    fn move_table_down(&mut self, placed: &[(u64, u64)]) -> Result<u64> {
        let sparse = self.sparse.as_ref().expect("sparse");
        let bytes = bat::table_bytes(sparse.header.max_table_entries);
        let old = sparse.header.table_offset;
        let mut taken: Vec<(u64, u64)> = self
            .reserved()
            .into_iter()
            .filter(|&r| r != (old, old + bytes))
            .chain(placed.iter().map(|&(o, l)| (o, o + l)))
            .collect();
        taken.sort_unstable();
        let others_end = taken.iter().map(|&(_, e)| e).max().unwrap_or(0);
        if old + bytes <= others_end {
            return Ok(others_end);
        }
        // The lowest free sector-aligned place that holds the table and
        // lies wholly below `table`.
        let below = |table: u64| {
            let mut covered = 0u64;
            for &(s, e) in taken.iter().chain([&(u64::MAX, u64::MAX)]) {
                let at = covered.div_ceil(SECTOR) * SECTOR;
                if at.saturating_add(bytes) <= s.min(table) {
                    return Some(at);
                }
                covered = covered.max(e);
                if covered >= table {
                    break;
                }
            }
            None
        };
        let to = match below(old) {
            Some(to) => to,
            None if others_end.div_ceil(SECTOR) * SECTOR + bytes < old + bytes => {
                // Only the table's own space makes room: hop past the end.
                let hop = self.sparse.as_ref().expect("sparse").next_free;
                let fb = self.footer.to_bytes();
                self.storage
                    .write_at(&fb, hop + bytes)
                    .map_err(io_err("VHD footer", hop + bytes))?;
                self.storage.flush().map_err(io_err("VHD file", 0))?;
                let sparse = self.sparse.as_mut().expect("sparse");
                sparse.next_free = hop + bytes;
                self.data_end = hop + bytes;
                self.copy_table(hop)?;
                match below(hop) {
                    Some(to) => to,
                    None => return Ok(hop + bytes),
                }
            }
            None => return Ok(old + bytes),
        };
        self.copy_table(to)?;
        Ok(others_end.max(to + bytes))
    }

    /// Write a copy of the BAT at `to` (free space) and make it durable,
    /// then point the dynamic header at it and make that durable.
    fn copy_table(&mut self, to: u64) -> Result<()> {
        let sparse = self.sparse.as_mut().expect("sparse");
        let table = sparse.header.table_offset;
        let mut raw = vec![0u8; bat::table_bytes(sparse.header.max_table_entries) as usize];
        self.storage
            .read_at_or_zero(&mut raw, table)
            .map_err(io_err("VHD block allocation table", table))?;
        self.storage
            .write_at(&raw, to)
            .map_err(io_err("VHD block allocation table", to))?;
        self.storage.flush().map_err(io_err("VHD file", 0))?;
        let mut header = sparse.header.clone();
        header.table_offset = to;
        header.checksum = header.compute_checksum();
        let b = header.to_bytes();
        let at = sparse.header_offset;
        self.storage
            .write_at(&b[..SECTOR as usize], at)
            .map_err(io_err("VHD dynamic header", at))?;
        self.storage.flush().map_err(io_err("VHD file", 0))?;
        sparse.header = header;
        Ok(())
    }

    /// Ranges of the file that are not blocks: the footer copy, the
    /// dynamic header, the BAT and the parent locators' data.
    fn reserved(&self) -> Vec<(u64, u64)> {
        let sparse = self.sparse.as_ref().expect("sparse");
        let h = &sparse.header;
        let mut v = vec![
            (0, FOOTER_SIZE as u64),
            (
                sparse.header_offset,
                sparse.header_offset + HEADER_SIZE as u64,
            ),
            (
                h.table_offset,
                h.table_offset + bat::table_bytes(h.max_table_entries),
            ),
        ];
        for e in h.parent_locators.iter().filter(|e| e.is_used()) {
            let len = u64::from(e.platform_data_length.max(e.platform_data_space));
            v.push((
                e.platform_data_offset,
                e.platform_data_offset
                    .saturating_add(len.div_ceil(SECTOR) * SECTOR),
            ));
        }
        v
    }

    /// Whether stored block `block` can stop being stored without changing
    /// what the disk reads: it reads as zeros, and, in a differencing
    /// disk, so does the parent there (the block then falls through to
    /// it); or no sector of it is present.
    fn droppable(&self, block: u64, buf: &mut Vec<u8>) -> Result<bool> {
        let sparse = self.sparse.as_ref().expect("sparse");
        let bs = sparse.block_size;
        let pos = block * bs;
        let Some(left) = self.virtual_size().checked_sub(pos).filter(|&l| l > 0) else {
            // An entry past the end of the disk holds nothing it reads.
            return Ok(true);
        };
        let len = bs.min(left);
        if self.is_differencing() {
            let entry = sparse.bat[block as usize];
            let at = sparse.block_file_offset(entry);
            let mut bits = vec![0u8; sparse.bitmap_size as usize];
            self.storage
                .read_at_or_zero(&mut bits, at)
                .map_err(io_err("VHD sector bitmap", at))?;
            if crate::disk::is_zero(&bits) {
                return Ok(true);
            }
            let parent = |b: &mut [u8], o: u64| parent_read(self.parent.as_ref(), b, o);
            if !reads_zero(parent, pos, len, buf)? {
                return Ok(false);
            }
        }
        reads_zero(|b, o| self.read_at(b, o), pos, len, buf)
    }

    /// Make the moved blocks durable, then write the BAT sectors holding
    /// the `pending` entries and make them durable.
    fn commit_entries(&mut self, pending: &mut BTreeMap<usize, u32>) -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        self.storage.flush().map_err(io_err("VHD file", 0))?;
        let sparse = self.sparse.as_mut().expect("sparse");
        for (&block, &entry) in pending.iter() {
            sparse.bat[block] = entry;
            self.bitmap_cache.invalidate(block as u64);
        }
        let per_sector = (SECTOR / bat::ENTRY_SIZE) as usize;
        let mut sectors: Vec<usize> = pending.keys().map(|b| b / per_sector).collect();
        sectors.dedup();
        let table = sparse.header.table_offset;
        for s in sectors {
            let first = s * per_sector;
            let off = bat::entry_offset(table, first);
            // The whole sector, entries past the table's end kept as read.
            let mut bytes = vec![0u8; SECTOR as usize];
            self.storage
                .read_at_or_zero(&mut bytes, off)
                .map_err(io_err("VHD block allocation table", off))?;
            for (i, e) in bytes.chunks_exact_mut(4).enumerate() {
                if let Some(v) = sparse.bat.get(first + i) {
                    e.copy_from_slice(&v.to_be_bytes());
                }
            }
            self.storage
                .write_at(&bytes, off)
                .map_err(io_err("VHD block allocation table", off))?;
        }
        self.storage.flush().map_err(io_err("VHD file", 0))?;
        pending.clear();
        Ok(())
    }

    /// End the file at `end` (past every block and structure) with the
    /// footer: written there and made durable first, then the length cut.
    fn cut(&mut self, end: u64) -> Result<()> {
        let sparse = self.sparse.as_mut().expect("sparse");
        if end >= sparse.next_free {
            return Ok(());
        }
        let fb = self.footer.to_bytes();
        self.storage
            .write_at(&fb, end)
            .map_err(io_err("VHD footer", end))?;
        self.storage.flush().map_err(io_err("VHD file", 0))?;
        let len = end + FOOTER_SIZE as u64;
        self.storage.set_len(len).map_err(io_err("VHD file", len))?;
        self.storage.flush().map_err(io_err("VHD file", 0))?;
        sparse.next_free = end;
        self.data_end = end;
        Ok(())
    }
}
